//! The reservation engine: a pure state machine, `apply(command, now) -> reply`, with no I/O and
//! no clock of its own. The server, the WAL replay and the tests all drive it the same way.
//!
//! State is sharded: every SKU and every reservation lives in the shard its id hashes to, each
//! shard behind its own mutex, so connections on different cores touching different SKUs do not
//! contend. An operation locks every shard it touches in ascending index order, so two
//! operations can never deadlock, and performs all its checks before its first change, so a
//! rejection changes nothing. Two operations that touch a common shard are ordered by that
//! shard's lock; operations on disjoint shards commute. The order in which the `on_change`
//! callback runs (it runs while the locks are held) is therefore a valid serial order of every
//! state change: that is the order the write-ahead log records.
//!
//! Guarantees, checked by the property test against a reference model (`tests/it/engine_model.rs`):
//! a new hold never takes a SKU past `reserved + committed + safety_stock <= on_hand +
//! preorder room`, nor a location past its own stock (`locations.rs`);
//! a multi-line reserve holds all lines or none; a retried reserve with the same id and content
//! returns the original result; a hold is never counted once `now >= expires_at`, whether or not
//! the sweep has run.

mod aftersales;
mod capture;
mod captured;
mod command;
pub mod image;
mod lifecycle;
mod limits;
mod locations;
mod reserve;
mod shard;
mod stock;
mod view;

use std::sync::atomic::AtomicBool;

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;
use smallvec::SmallVec;
use stockd_protocol::{OpReply, ReservationReply, ReserveAtReply, ResultCode, SkuInfo, SkuReply};

use crate::aftersales::Aftersales;

pub use aftersales::{Outcome as TicketOutcome, REPLACEMENT_CHANNEL};
pub use capture::Capture;
pub use captured::Captured;
pub use command::{Command, Touches};
pub use image::{Image, ImageError, LineImage, ReservationImage, SkuImage};
use locations::Placement;
use shard::{Locked, Shard};
pub use view::{HoldRow, SkuFilter, SkuHolds, SkuPage, SkuRow, Summary};

/// Engine settings (the `[engine]` section of the configuration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Number of shards, a power of two.
    pub shards: usize,
    /// Hold duration used when a reserve asks for `ttl_ms = 0`.
    pub ttl_ms_default: u32,
    /// Longest a hold may last from its creation, extensions included.
    pub hold_ms_max: u64,
    /// How long a released or expired reservation is remembered, so that retries with its id
    /// stay idempotent. After that the id may be reused.
    pub retention_ms: u64,
    /// How long a shipped reservation is remembered: what return tickets are checked against,
    /// so it is the return window.
    pub shipped_retention_ms: u64,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            shards: 64,
            ttl_ms_default: 10 * 60 * 1000,
            hold_ms_max: 60 * 60 * 1000,
            retention_ms: 24 * 60 * 60 * 1000,
            shipped_retention_ms: 30 * 24 * 60 * 60 * 1000,
        }
    }
}

/// The in-memory inventory state and the rules that change it.
pub struct Engine {
    shards: Box<[CachePadded<Mutex<Shard>>]>,
    shard_mask: usize,
    hasher: ahash::RandomState,
    config: EngineConfig,
    /// Return tickets. Taken before any shard lock, never while holding one.
    aftersales: Mutex<Aftersales>,
    /// The activity sampler's totals between calls. Taken before any shard lock.
    sampling: Mutex<view::Sampling>,
    /// The alert evaluator's low-stock SKUs between calls. Taken before any shard lock.
    low_stock: Mutex<view::LowStock>,
    /// A capture of the state is running (`capture`).
    capturing: AtomicBool,
}

impl Engine {
    /// An empty engine. Panics if `config.shards` is not a power of two (the configuration
    /// loader validates it first).
    pub fn new(config: EngineConfig) -> Engine {
        assert!(config.shards.is_power_of_two(), "shard count must be a power of two");
        Engine {
            shards: (0..config.shards).map(|_| CachePadded::new(Mutex::default())).collect(),
            shard_mask: config.shards - 1,
            // Fixed seeds: shard placement is the same in every process, which keeps runs
            // reproducible; the per-shard maps use randomly seeded hashers.
            hasher: ahash::RandomState::with_seeds(0x5354_4b44, 0x7368_6172, 0x6473, 0x1),
            config,
            aftersales: Mutex::default(),
            sampling: Mutex::default(),
            low_stock: Mutex::default(),
            capturing: AtomicBool::new(false),
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    fn shard_of(&self, key: &[u8]) -> usize {
        self.hasher.hash_one(key) as usize & self.shard_mask
    }

    /// Locks the given shards in ascending order (the one global lock order).
    fn lock(&self, mut shards: SmallVec<[usize; 8]>) -> Locked<'_> {
        shards.sort_unstable();
        shards.dedup();
        Locked::new(shards.into_iter().map(|i| (i, self.shards[i].lock())).collect())
    }

    /// Applies a state-changing command at time `now_ms` (UTC milliseconds). `on_change` runs,
    /// with every touched shard still locked, if and only if the command changed the state.
    ///
    /// The internal commands `Expire` and `Forget` answer with a `Release`-shaped reply whose
    /// code says whether they applied.
    pub fn apply(&self, command: &Command, now_ms: u64, on_change: impl FnOnce()) -> OpReply {
        match command {
            Command::Reserve(r) => {
                OpReply::Reserve(self.reserve(r, Placement::default(), false, now_ms, on_change).0)
            }
            Command::ReserveAt(r) => {
                let placement = Placement { location: &r.location, split: r.split };
                let (reply, allocations) =
                    self.reserve(&r.reserve, placement, true, now_ms, on_change);
                OpReply::ReserveAt(ReserveAtReply { reply, allocations })
            }
            Command::Confirm(c) => OpReply::Confirm(self.confirm(c, now_ms, on_change)),
            Command::Release { id } => OpReply::Release(self.release(id, now_ms, on_change)),
            Command::Extend { id, ttl_ms } => {
                OpReply::Extend(self.extend(id, *ttl_ms, now_ms, on_change))
            }
            Command::Ship { id } => OpReply::Ship(self.ship(id, now_ms, on_change)),
            Command::SetStock { .. } => {
                OpReply::SetStock(self.change_stock(command, now_ms, on_change).0)
            }
            Command::AdjustStock { .. } => {
                OpReply::AdjustStock(self.change_stock(command, now_ms, on_change).0)
            }
            Command::SetSafetyStock { .. } => {
                OpReply::SetSafetyStock(self.change_stock(command, now_ms, on_change).0)
            }
            Command::SetLocation { .. } => {
                OpReply::SetLocation(self.change_stock(command, now_ms, on_change).0)
            }
            Command::AdjustLocation { .. } => {
                OpReply::AdjustLocation(self.change_stock(command, now_ms, on_change).0)
            }
            Command::SetIncoming { .. } => {
                OpReply::SetIncoming(self.change_stock(command, now_ms, on_change).0)
            }
            Command::ReceiveIncoming { .. } => {
                OpReply::ReceiveIncoming(self.change_stock(command, now_ms, on_change).0)
            }
            Command::SetPreorder { .. } => {
                OpReply::SetPreorder(self.change_stock(command, now_ms, on_change).0)
            }
            Command::DeleteSku { .. } => {
                OpReply::DeleteSku(self.change_stock(command, now_ms, on_change).0)
            }
            Command::SetLimits { sku, limits } => {
                OpReply::SetLimits(self.set_limits(sku, limits, now_ms, on_change))
            }
            Command::Aftersales(command) => {
                OpReply::Release(match self.aftersales(command, now_ms, on_change) {
                    Ok(_) => ResultCode::Ok,
                    Err(_) => ResultCode::InvalidArgument,
                })
            }
            Command::Expire { id } => OpReply::Release(self.expire(id, now_ms, on_change)),
            Command::Forget { id } => OpReply::Release(self.forget(id, now_ms, on_change)),
        }
    }

    /// Applies a stock command (`SetStock`, `AdjustStock`, `SetSafetyStock`, `SetLocation`,
    /// `AdjustLocation`, `SetIncoming`, `ReceiveIncoming`, `SetPreorder`, `DeleteSku`) like
    /// [`apply`],
    /// and also returns the SKU's counters from just before the change (`None` if nothing
    /// changed). Panics on any other command.
    ///
    /// [`apply`]: Engine::apply
    pub fn change_stock(
        &self,
        command: &Command,
        now_ms: u64,
        on_change: impl FnOnce(),
    ) -> (SkuReply, Option<SkuInfo>) {
        match command {
            Command::SetStock { sku, on_hand, expected } => {
                self.set_stock(sku, *on_hand, *expected, now_ms, on_change)
            }
            Command::AdjustStock { sku, delta, expected } => {
                self.adjust_stock(sku, *delta, *expected, now_ms, on_change)
            }
            Command::SetSafetyStock { sku, safety_stock } => {
                self.set_safety_stock(sku, *safety_stock, now_ms, on_change)
            }
            Command::SetLocation { sku, location, on_hand, priority, expected } => {
                self.set_location(sku, location, *on_hand, *priority, *expected, now_ms, on_change)
            }
            Command::AdjustLocation { sku, location, delta, expected } => {
                self.adjust_location(sku, location, *delta, *expected, now_ms, on_change)
            }
            Command::SetIncoming { sku, location, reference, qty, eta_ms } => {
                self.set_incoming(sku, location, reference, *qty, *eta_ms, now_ms, on_change)
            }
            Command::ReceiveIncoming { sku, location, reference, qty } => {
                self.receive_incoming(sku, location, reference, *qty, now_ms, on_change)
            }
            Command::SetPreorder { sku, preorder_max } => {
                self.set_preorder(sku, *preorder_max, now_ms, on_change)
            }
            Command::DeleteSku { sku } => self.delete_sku(sku, now_ms, on_change),
            other => panic!("not a stock command: {other:?}"),
        }
    }

    /// Whether `sku` was deleted (`DELETE_SKU`) and not created again since.
    pub fn is_deleted(&self, sku: &[u8]) -> bool {
        self.shards[self.shard_of(sku)].lock().skus.deleted_key(sku).is_some()
    }

    /// The counters of one SKU as of `now_ms`.
    pub fn query_sku(&self, sku: &[u8], now_ms: u64) -> SkuReply {
        let shard = self.shards[self.shard_of(sku)].lock();
        match shard.skus.get(sku) {
            Some(state) => SkuReply { code: ResultCode::Ok, info: state.info(now_ms) },
            None => SkuReply { code: ResultCode::UnknownSku, info: SkuInfo::default() },
        }
    }

    /// One reservation as of `now_ms`: a hold past its deadline shows as expired even before
    /// the sweep has processed it.
    pub fn query_reservation(&self, id: &[u8], now_ms: u64) -> ReservationReply {
        let shard = self.shards[self.shard_of(id)].lock();
        match shard.reservations.get(id) {
            Some(reservation) => {
                ReservationReply { code: ResultCode::Ok, info: Some(reservation.info(now_ms)) }
            }
            None => ReservationReply { code: ResultCode::NotFound, info: None },
        }
    }

    /// Up to `max` internal commands that are due at `now_ms`: expiry of holds past their
    /// deadline, then forgetting finished reservations past their retention. The caller applies
    /// them (and logs them) like any other command; applying a stale one is a harmless no-op.
    pub fn due(&self, now_ms: u64, max: usize) -> Vec<Command> {
        let mut due = Vec::new();
        for shard in self.shards.iter() {
            if due.len() >= max {
                break;
            }
            shard.lock().collect_due(now_ms, max - due.len(), &mut due);
        }
        due
    }

    /// Number of SKUs and of reservations (all states) currently stored.
    pub fn counts(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(skus, reservations), shard| {
            let shard = shard.lock();
            (skus + shard.skus.len(), reservations + shard.reservations.len())
        })
    }

    /// Gives back the spare room of the SKU tables, which a replay grew by doubling (up to
    /// half of their memory): for after recovery. Reservation tables keep theirs, since new
    /// reservations arrive all the time.
    pub fn shrink_skus(&self) {
        for shard in self.shards.iter() {
            shard.lock().skus.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests;
