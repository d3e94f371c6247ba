//! Stock administration: set and adjust the physical count (with an optional check of the
//! expected current value, for read-modify-write without races) and set the safety stock.
//! Setting a value it already has is not a change: nothing is logged for it.
//!
//! Each function also returns the SKU's counters from just before a change (`None` when
//! nothing changed), read under the same lock, for the audit log's before/after.

use stockd_protocol::{ResultCode, SkuInfo, SkuReply};

use super::shard::Sku;
use super::Engine;

/// A reply and the counters before the change, if there was one.
pub(super) type Changed = (SkuReply, Option<SkuInfo>);

pub(super) fn refused(code: ResultCode) -> Changed {
    (SkuReply { code, info: SkuInfo::default() }, None)
}

impl Engine {
    /// Sets `on_hand`, creating the SKU if it is new. A count below what is held and committed
    /// is accepted (the physical count is the truth); the SKU then has nothing available.
    pub(super) fn set_stock(
        &self,
        sku: &[u8],
        on_hand: u64,
        expected: Option<u64>,
        now_ms: u64,
        on_change: impl FnOnce(),
    ) -> Changed {
        if sku.is_empty() {
            return refused(ResultCode::InvalidArgument);
        }
        let mut shard = self.shards[self.shard_of(sku)].lock();
        if let Some(state) = shard.skus.get(sku).filter(|state| state.locations.is_some()) {
            let info = state.info(now_ms);
            return (SkuReply { code: ResultCode::LocationRequired, info }, None);
        }
        let current = shard.skus.get(sku).map_or(0, |state| state.on_hand);
        if expected.is_some_and(|expected| expected != current) {
            let info = shard.skus.get(sku).map(|state| state.info(now_ms)).unwrap_or_default();
            return (SkuReply { code: ResultCode::ExpectedMismatch, info }, None);
        }
        let (state, created) = shard.skus.get_or_insert(sku);
        let before = state.info(now_ms);
        let changed = created || state.on_hand != on_hand;
        state.counters.on_hand = on_hand;
        finish(state.info(now_ms), changed.then_some(before), on_change)
    }

    /// Adds `delta` to `on_hand`; refused if the SKU is unknown or the count would go negative.
    pub(super) fn adjust_stock(
        &self,
        sku: &[u8],
        delta: i64,
        expected: Option<u64>,
        now_ms: u64,
        on_change: impl FnOnce(),
    ) -> Changed {
        self.change_sku(sku, now_ms, on_change, |state| {
            if state.locations.is_some() {
                return Err(ResultCode::LocationRequired);
            }
            if expected.is_some_and(|expected| expected != state.on_hand) {
                return Err(ResultCode::ExpectedMismatch);
            }
            let on_hand =
                state.on_hand.checked_add_signed(delta).ok_or(ResultCode::InvalidArgument)?;
            let changed = state.on_hand != on_hand;
            state.counters.on_hand = on_hand;
            Ok(changed)
        })
    }

    pub(super) fn set_safety_stock(
        &self,
        sku: &[u8],
        safety_stock: u64,
        now_ms: u64,
        on_change: impl FnOnce(),
    ) -> Changed {
        self.change_sku(sku, now_ms, on_change, |state| {
            let changed = state.safety_stock != safety_stock;
            state.safety_stock = safety_stock;
            Ok(changed)
        })
    }

    /// Deletes a SKU (see `Sku::deleted`): refused with `sku_in_use` while a reservation that
    /// is not over names it (`Sku::open_lines`; such a reservation may hold or have committed
    /// no unit of it, a confirmed line of 0, and still take its units from its locations).
    /// The reply's counters are zero: the SKU is gone.
    pub(super) fn delete_sku(&self, sku: &[u8], now_ms: u64, on_change: impl FnOnce()) -> Changed {
        let mut shard = self.shards[self.shard_of(sku)].lock();
        let Some(state) = shard.skus.get(sku) else {
            return refused(ResultCode::UnknownSku);
        };
        let before = state.info(now_ms);
        if state.open_lines > 0 {
            return (SkuReply { code: ResultCode::SkuInUse, info: before }, None);
        }
        debug_assert!(state.reserved == 0 && state.committed == 0, "units of open lines");
        assert!(shard.skus.delete(sku), "found above");
        finish(SkuInfo::default(), Some(before), on_change)
    }

    /// Applies `change` to an existing SKU under its shard lock: `Ok(changed)`, or a refusal
    /// answered with the counters as they were (`unknown_sku` for an unknown SKU). A supply
    /// record left empty by the change is dropped.
    pub(super) fn change_sku(
        &self,
        sku: &[u8],
        now_ms: u64,
        on_change: impl FnOnce(),
        change: impl FnOnce(&mut Sku) -> Result<bool, ResultCode>,
    ) -> Changed {
        let mut shard = self.shards[self.shard_of(sku)].lock();
        let Some(state) = shard.skus.get_mut(sku) else {
            return refused(ResultCode::UnknownSku);
        };
        let before = state.info(now_ms);
        let result = change(state);
        state.tidy_supply();
        match result {
            Ok(changed) => finish(state.info(now_ms), changed.then_some(before), on_change),
            Err(code) => (SkuReply { code, info: before }, None),
        }
    }
}

pub(super) fn finish(info: SkuInfo, before: Option<SkuInfo>, on_change: impl FnOnce()) -> Changed {
    if before.is_some() {
        on_change();
    }
    (SkuReply { code: ResultCode::Ok, info }, before)
}
