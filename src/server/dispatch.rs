//! Maps a decoded operation onto the engine: state changes through `Engine::apply`, logged in
//! the WAL from inside `on_change` (so the log order is the apply order), reads through the
//! query methods. One clock reading per frame, so every operation of a batch sees the same
//! `now`. While the log cannot accept writes, state changes are refused with `read_only`
//! before they touch the engine; reads are still served.

use stockd_protocol::{Op, OpReply, ResultCode};

use super::Shared;
use crate::engine::Command;
use crate::wal::Health;

/// Executes one operation at `now_ms` and returns its reply. The reply may only be sent once
/// the log is durable up to `wal.last_lsn()` as read after this call.
pub fn execute(shared: &Shared, op: Op, now_ms: u64) -> OpReply {
    let opcode = op.opcode();
    let reply = apply(shared, op, now_ms);
    shared.metrics.operation(opcode, reply.code());
    reply
}

fn apply(shared: &Shared, op: Op, now_ms: u64) -> OpReply {
    let engine = &shared.engine;
    match op {
        Op::Ping => OpReply::Ping(ResultCode::Ok),
        Op::QuerySku { sku } => OpReply::QuerySku(engine.query_sku(&sku, now_ms)),
        Op::QueryReservation { id } => {
            OpReply::QueryReservation(engine.query_reservation(&id, now_ms))
        }
        Op::QueryLimits { sku } => OpReply::QueryLimits(engine.query_limits(&sku, now_ms)),
        Op::QueryLocations { sku } => OpReply::QueryLocations(engine.query_locations(&sku, now_ms)),
        write => {
            if shared.wal.health() != Health::Ok {
                return OpReply::refused(write.opcode(), ResultCode::ReadOnly);
            }
            let command = Command::from_op(write).expect("every other operation is a write");
            engine.apply(&command, now_ms, || {
                // A failure here is seen by the connection: the log never becomes durable up
                // to this change, so its reply turns into `read_only`.
                let _ = shared.wal.append(now_ms, &command);
            })
        }
    }
}
