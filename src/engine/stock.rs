//! Stock administration: set and adjust the physical count (with an optional check of the
//! expected current value, for read-modify-write without races) and set the safety stock.
//! Setting a value it already has is not a change: nothing is logged for it.

use stockd_protocol::{ResultCode, SkuInfo, SkuReply};

use super::shard::Key;
use super::Engine;

fn refused(code: ResultCode) -> SkuReply {
    SkuReply { code, info: SkuInfo::default() }
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
    ) -> SkuReply {
        if sku.is_empty() {
            return refused(ResultCode::InvalidArgument);
        }
        let mut shard = self.shards[self.shard_of(sku)].lock();
        let current = shard.skus.get(sku).map_or(0, |state| state.on_hand);
        if expected.is_some_and(|expected| expected != current) {
            let info = shard.skus.get(sku).map(|state| state.info(now_ms)).unwrap_or_default();
            return SkuReply { code: ResultCode::ExpectedMismatch, info };
        }
        let (state, created) = match shard.skus.get_mut(sku) {
            Some(state) => (state, false),
            None => (shard.skus.entry(Key::from(sku)).or_default(), true),
        };
        let changed = created || state.on_hand != on_hand;
        state.on_hand = on_hand;
        let info = state.info(now_ms);
        if changed {
            on_change();
        }
        SkuReply { code: ResultCode::Ok, info }
    }

    /// Adds `delta` to `on_hand`; refused if the SKU is unknown or the count would go negative.
    pub(super) fn adjust_stock(
        &self,
        sku: &[u8],
        delta: i64,
        expected: Option<u64>,
        now_ms: u64,
        on_change: impl FnOnce(),
    ) -> SkuReply {
        let mut shard = self.shards[self.shard_of(sku)].lock();
        let Some(state) = shard.skus.get_mut(sku) else {
            return refused(ResultCode::UnknownSku);
        };
        if expected.is_some_and(|expected| expected != state.on_hand) {
            return SkuReply { code: ResultCode::ExpectedMismatch, info: state.info(now_ms) };
        }
        let Some(on_hand) = state.on_hand.checked_add_signed(delta) else {
            return SkuReply { code: ResultCode::InvalidArgument, info: state.info(now_ms) };
        };
        let changed = state.on_hand != on_hand;
        state.on_hand = on_hand;
        let info = state.info(now_ms);
        if changed {
            on_change();
        }
        SkuReply { code: ResultCode::Ok, info }
    }

    pub(super) fn set_safety_stock(
        &self,
        sku: &[u8],
        safety_stock: u64,
        now_ms: u64,
        on_change: impl FnOnce(),
    ) -> SkuReply {
        let mut shard = self.shards[self.shard_of(sku)].lock();
        let Some(state) = shard.skus.get_mut(sku) else {
            return refused(ResultCode::UnknownSku);
        };
        let changed = state.safety_stock != safety_stock;
        state.safety_stock = safety_stock;
        let info = state.info(now_ms);
        if changed {
            on_change();
        }
        SkuReply { code: ResultCode::Ok, info }
    }
}
