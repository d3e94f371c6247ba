//! Commands: every way the engine's state can change. Wire operations map onto them one to one;
//! `Expire` and `Forget` are produced by the server's sweep. The write-ahead log records
//! commands with the time they were applied, and replaying them reproduces the state.

use bytes::Bytes;
use stockd_protocol::{Confirm, Op, Reserve, SkuLimits};

/// A state-changing command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Reserve(Reserve),
    Confirm(Confirm),
    Release {
        id: Bytes,
    },
    Extend {
        id: Bytes,
        ttl_ms: u32,
    },
    Ship {
        id: Bytes,
    },
    SetStock {
        sku: Bytes,
        on_hand: u64,
        expected: Option<u64>,
    },
    AdjustStock {
        sku: Bytes,
        delta: i64,
        expected: Option<u64>,
    },
    SetSafetyStock {
        sku: Bytes,
        safety_stock: u64,
    },
    /// Replace a SKU's per-buyer limit and channel quotas.
    SetLimits {
        sku: Bytes,
        limits: SkuLimits,
    },
    /// End a hold whose deadline has passed.
    Expire {
        id: Bytes,
    },
    /// Drop a finished reservation whose retention has passed.
    Forget {
        id: Bytes,
    },
}

impl Command {
    /// The command for a state-changing wire operation; `None` for read-only operations.
    pub fn from_op(op: Op) -> Option<Command> {
        Some(match op {
            Op::Reserve(r) => Command::Reserve(r),
            Op::Confirm(c) => Command::Confirm(c),
            Op::Release { id } => Command::Release { id },
            Op::Extend { id, ttl_ms } => Command::Extend { id, ttl_ms },
            Op::Ship { id } => Command::Ship { id },
            Op::SetStock { sku, on_hand, expected } => Command::SetStock { sku, on_hand, expected },
            Op::AdjustStock { sku, delta, expected } => {
                Command::AdjustStock { sku, delta, expected }
            }
            Op::SetSafetyStock { sku, safety_stock } => {
                Command::SetSafetyStock { sku, safety_stock }
            }
            Op::SetLimits { sku, limits } => Command::SetLimits { sku, limits },
            Op::Ping
            | Op::QuerySku { .. }
            | Op::QueryReservation { .. }
            | Op::QueryLimits { .. } => return None,
        })
    }
}
