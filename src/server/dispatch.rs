//! Maps a decoded operation onto the engine: state changes through `Engine::apply`, reads
//! through the query methods. One clock reading per frame, so every operation of a batch sees
//! the same `now`.

use stockd_protocol::{Op, OpReply, ResultCode};

use crate::engine::{Command, Engine};

/// Executes one operation at `now_ms` and returns its reply.
pub fn execute(engine: &Engine, op: Op, now_ms: u64) -> OpReply {
    match Command::from_op(op) {
        Ok(command) => engine.apply(&command, now_ms, || {}),
        Err(Op::QuerySku { sku }) => OpReply::QuerySku(engine.query_sku(&sku, now_ms)),
        Err(Op::QueryReservation { id }) => {
            OpReply::QueryReservation(engine.query_reservation(&id, now_ms))
        }
        Err(Op::Ping) => OpReply::Ping(ResultCode::Ok),
        Err(other) => unreachable!("Command::from_op returns only read operations: {other:?}"),
    }
}
