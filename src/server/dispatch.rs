//! Maps a decoded operation onto the engine: state changes through `Engine::apply`, reads
//! through the query methods. One clock reading per frame, so every operation of a batch sees
//! the same `now`.

use stockd_protocol::{Op, OpReply, ResultCode};

use crate::engine::{Command, Engine};

/// Executes one operation at `now_ms` and returns its reply.
pub fn execute(engine: &Engine, op: Op, now_ms: u64) -> OpReply {
    match op {
        Op::Ping => OpReply::Ping(ResultCode::Ok),
        Op::QuerySku { sku } => OpReply::QuerySku(engine.query_sku(&sku, now_ms)),
        Op::QueryReservation { id } => {
            OpReply::QueryReservation(engine.query_reservation(&id, now_ms))
        }
        write => {
            let command = Command::from_op(write).expect("every other operation is a write");
            engine.apply(&command, now_ms, || {})
        }
    }
}
