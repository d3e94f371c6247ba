//! Commands: every way the engine's state can change. Wire operations map onto them one to one;
//! `Expire` and `Forget` are produced by the server's sweep, `Aftersales` by the ticket API. The write-ahead log records
//! commands with the time they were applied, and replaying them reproduces the state.

use bytes::Bytes;
use stockd_protocol::{Confirm, Op, Reserve, ReserveAt, SkuLimits};

use crate::aftersales::AftersalesCommand;

/// What a command changes (see [`Command::touches`]).
#[derive(Debug)]
pub enum Touches<'a> {
    Sku(&'a Bytes),
    Lines(&'a [stockd_protocol::Line]),
    Reservation(&'a Bytes),
    /// SKUs named by an after-sales step (restocked or replaced).
    Skus(Vec<Bytes>),
    /// Forgetting a finished reservation changes no stock.
    Nothing,
}

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
    ReserveAt(ReserveAt),
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
    SetLocation {
        sku: Bytes,
        location: Bytes,
        on_hand: u64,
        priority: u32,
        expected: Option<u64>,
    },
    AdjustLocation {
        sku: Bytes,
        location: Bytes,
        delta: i64,
        expected: Option<u64>,
    },
    SetIncoming {
        sku: Bytes,
        location: Bytes,
        reference: Bytes,
        qty: u64,
        eta_ms: u64,
    },
    ReceiveIncoming {
        sku: Bytes,
        location: Bytes,
        reference: Bytes,
        qty: u64,
    },
    SetPreorder {
        sku: Bytes,
        preorder_max: u64,
    },
    /// Delete a SKU nothing holds or has committed (`DELETE_SKU`).
    DeleteSku {
        sku: Bytes,
    },
    /// A change to the return tickets (and the stock a step restocks or replaces).
    Aftersales(Box<AftersalesCommand>),
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
    /// What the command changes: the SKUs it names, or the reservation whose SKUs it changes.
    pub fn touches(&self) -> Touches<'_> {
        match self {
            Command::Reserve(r) => Touches::Lines(&r.lines),
            Command::ReserveAt(r) => Touches::Lines(&r.reserve.lines),
            Command::Confirm(c) => Touches::Reservation(&c.id),
            Command::Release { id }
            | Command::Extend { id, .. }
            | Command::Ship { id }
            | Command::Expire { id } => Touches::Reservation(id),
            Command::Forget { .. } => Touches::Nothing,
            Command::Aftersales(command) => Touches::Skus(
                command
                    .stock_skus()
                    .into_iter()
                    .map(|sku| Bytes::copy_from_slice(sku.as_bytes()))
                    .collect(),
            ),
            Command::SetStock { sku, .. }
            | Command::AdjustStock { sku, .. }
            | Command::SetSafetyStock { sku, .. }
            | Command::SetLimits { sku, .. }
            | Command::SetLocation { sku, .. }
            | Command::AdjustLocation { sku, .. }
            | Command::SetIncoming { sku, .. }
            | Command::ReceiveIncoming { sku, .. }
            | Command::SetPreorder { sku, .. }
            | Command::DeleteSku { sku } => Touches::Sku(sku),
        }
    }

    /// The wire operation this command was made from (`None` for `Expire`, `Forget` and
    /// `Aftersales`).
    pub fn to_op(&self) -> Option<Op> {
        Some(match self.clone() {
            Command::Reserve(r) => Op::Reserve(r),
            Command::Confirm(c) => Op::Confirm(c),
            Command::Release { id } => Op::Release { id },
            Command::Extend { id, ttl_ms } => Op::Extend { id, ttl_ms },
            Command::Ship { id } => Op::Ship { id },
            Command::ReserveAt(r) => Op::ReserveAt(r),
            Command::SetStock { sku, on_hand, expected } => Op::SetStock { sku, on_hand, expected },
            Command::AdjustStock { sku, delta, expected } => {
                Op::AdjustStock { sku, delta, expected }
            }
            Command::SetSafetyStock { sku, safety_stock } => {
                Op::SetSafetyStock { sku, safety_stock }
            }
            Command::SetLimits { sku, limits } => Op::SetLimits { sku, limits },
            Command::SetLocation { sku, location, on_hand, priority, expected } => {
                Op::SetLocation { sku, location, on_hand, priority, expected }
            }
            Command::AdjustLocation { sku, location, delta, expected } => {
                Op::AdjustLocation { sku, location, delta, expected }
            }
            Command::SetIncoming { sku, location, reference, qty, eta_ms } => {
                Op::SetIncoming { sku, location, reference, qty, eta_ms }
            }
            Command::ReceiveIncoming { sku, location, reference, qty } => {
                Op::ReceiveIncoming { sku, location, reference, qty }
            }
            Command::SetPreorder { sku, preorder_max } => Op::SetPreorder { sku, preorder_max },
            Command::DeleteSku { sku } => Op::DeleteSku { sku },
            Command::Expire { .. } | Command::Forget { .. } | Command::Aftersales(_) => {
                return None
            }
        })
    }

    /// The command for a state-changing wire operation; `None` for read-only operations.
    pub fn from_op(op: Op) -> Option<Command> {
        Some(match op {
            Op::Reserve(r) => Command::Reserve(r),
            Op::Confirm(c) => Command::Confirm(c),
            Op::Release { id } => Command::Release { id },
            Op::Extend { id, ttl_ms } => Command::Extend { id, ttl_ms },
            Op::Ship { id } => Command::Ship { id },
            Op::ReserveAt(r) => Command::ReserveAt(r),
            Op::SetStock { sku, on_hand, expected } => Command::SetStock { sku, on_hand, expected },
            Op::AdjustStock { sku, delta, expected } => {
                Command::AdjustStock { sku, delta, expected }
            }
            Op::SetSafetyStock { sku, safety_stock } => {
                Command::SetSafetyStock { sku, safety_stock }
            }
            Op::SetLimits { sku, limits } => Command::SetLimits { sku, limits },
            Op::SetLocation { sku, location, on_hand, priority, expected } => {
                Command::SetLocation { sku, location, on_hand, priority, expected }
            }
            Op::AdjustLocation { sku, location, delta, expected } => {
                Command::AdjustLocation { sku, location, delta, expected }
            }
            Op::SetIncoming { sku, location, reference, qty, eta_ms } => {
                Command::SetIncoming { sku, location, reference, qty, eta_ms }
            }
            Op::ReceiveIncoming { sku, location, reference, qty } => {
                Command::ReceiveIncoming { sku, location, reference, qty }
            }
            Op::SetPreorder { sku, preorder_max } => Command::SetPreorder { sku, preorder_max },
            Op::DeleteSku { sku } => Command::DeleteSku { sku },
            Op::Ping
            | Op::QuerySku { .. }
            | Op::QueryReservation { .. }
            | Op::QueryLimits { .. }
            | Op::QueryLocations { .. } => return None,
        })
    }
}
