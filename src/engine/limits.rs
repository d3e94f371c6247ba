//! Flash-sale limits, checked inside the atomic reserve: at most N units per buyer, and channel
//! quotas (a fixed number of units or a share of the sellable stock per channel, the rest a
//! pool for every other channel, optionally shared with channels whose quota is used up).
//!
//! # Rules
//!
//! A buyer's **use** of a SKU is the units of that customer's reservations (held and not past
//! their deadline, or confirmed, shipped included) that the server still remembers (see
//! `retention_ms`): released and expired holds give the allowance back. A reserve on a SKU
//! with `max_per_buyer > 0` must name its customer (else `invalid_argument`) and is refused
//! with `buyer_limit_exceeded` if the customer's use plus the line would exceed the limit.
//!
//! A channel's **use** of a SKU is the units its reservations hold (not past their deadline)
//! or have committed and not shipped: quotas split the stock that is on hand now. The
//! **sellable** stock is `on_hand + preorder room - safety_stock` (the preorder room is what
//! may be sold beyond `on_hand` against incoming stock, see `locations.rs`); a quota's **allocation** is its fixed units
//! or its share (rounded down) of the sellable stock; the **pool** is the sellable stock no
//! allocation covers. Use beyond a channel's allocation (possible when stock shrinks, or
//! through the shared pool) counts against the pool, as does all use by channels without a
//! quota (and by reservations without a channel). A reserve by a channel with a quota fits if
//! it stays within the allocation, or, with `shared_pool`, if its overflow fits in what is
//! left of the pool; any other reserve must fit in what is left of the pool. Otherwise it is
//! refused with `channel_quota_exceeded`.
//!
//! The stock checks come first (`sku_paused`, `below_safety_stock`, `insufficient_stock`),
//! then the buyer limit, then the channel quota. Changing the limits recounts every use from
//! the reservations, so the rules hold from the change on whatever was reserved before.
//!
//! # Bookkeeping
//!
//! Uses are kept per SKU, only for SKUs with limits: per buyer (only with `max_per_buyer`) a
//! small list of hold deadlines and a bought count, keyed by the reservation's own interned
//! customer id; per quota a deadline index and a committed count. Holds past their deadline
//! are subtracted when read, like the SKU's own counters, so expiry stays exact without the
//! sweep. Every transition of a reservation (reserve, confirm, release, expiry, extend, ship,
//! forget) updates them through the hooks below.

use std::collections::HashMap;

use smallvec::SmallVec;
use stockd_protocol::{
    ChannelQuota, ChannelUse, LimitsReply, QuotaLimit, ReservationState, ResultCode, SkuLimits,
    SkuReply,
};

use super::shard::{HeldByDeadline, Key, Reservation, Sku};
use super::Engine;

/// A buyer's use of one SKU.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct BuyerUse {
    /// (deadline, units) of each open hold; a buyer rarely has more than one.
    holds: SmallVec<[(u64, u32); 1]>,
    /// Units confirmed (shipped included) by reservations still remembered.
    bought: u64,
}

impl BuyerUse {
    fn live(&self, now_ms: u64) -> u64 {
        let held: u64 =
            self.holds.iter().filter(|(at, _)| *at > now_ms).map(|(_, qty)| u64::from(*qty)).sum();
        held + self.bought
    }

    fn is_empty(&self) -> bool {
        self.holds.is_empty() && self.bought == 0
    }
}

/// A channel's use of one SKU.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct QuotaUse {
    /// Held units by deadline, and their total (lapsed ones included until they end).
    holds: HeldByDeadline,
    held: u64,
    committed: u64,
}

impl QuotaUse {
    /// Like the SKU's own counter: the total minus the (few) holds past their deadline, so a
    /// hot SKU's thousands of live holds are not summed on every reserve.
    fn live(&self, now_ms: u64) -> u64 {
        self.held - self.holds.lapsed(now_ms) + self.committed
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Quota {
    pub channel: Key,
    pub limit: QuotaLimit,
    used: QuotaUse,
}

/// The limits of one SKU and the uses they are checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Limits {
    pub max_per_buyer: u32,
    pub shared_pool: bool,
    /// Sorted by channel.
    pub quotas: Vec<Quota>,
    buyers: HashMap<Key, BuyerUse, ahash::RandomState>,
}

/// The tags a reservation is counted by (shared, interned ids).
#[derive(Clone, Debug, Default)]
pub(super) struct Counted {
    pub channel: Option<Key>,
    pub customer: Option<Key>,
}

impl Limits {
    pub fn new(config: &SkuLimits) -> Limits {
        let mut quotas: Vec<Quota> = config
            .quotas
            .iter()
            .map(|q| Quota {
                channel: Key::from(&q.channel[..]),
                limit: q.limit,
                used: QuotaUse::default(),
            })
            .collect();
        quotas.sort_unstable_by(|a, b| a.channel.cmp(&b.channel));
        Limits {
            max_per_buyer: config.max_per_buyer,
            shared_pool: config.shared_pool,
            quotas,
            buyers: HashMap::default(),
        }
    }

    /// The configuration, quotas in channel order.
    pub fn config(&self) -> SkuLimits {
        SkuLimits {
            max_per_buyer: self.max_per_buyer,
            shared_pool: self.shared_pool,
            quotas: self
                .quotas
                .iter()
                .map(|q| ChannelQuota { channel: q.channel.to_vec().into(), limit: q.limit })
                .collect(),
        }
    }

    fn quota_mut(&mut self, channel: Option<&Key>) -> Option<&mut QuotaUse> {
        let channel = channel?;
        let index = self.quotas.binary_search_by(|q| q.channel.cmp(channel)).ok()?;
        Some(&mut self.quotas[index].used)
    }

    fn buyer_mut(&mut self, customer: Option<&Key>) -> Option<&mut BuyerUse> {
        if self.max_per_buyer == 0 {
            return None;
        }
        let customer = customer?;
        Some(self.buyers.entry(customer.clone()).or_default())
    }

    fn drop_if_empty(&mut self, customer: Option<&Key>) {
        if let Some(customer) = customer {
            if self.buyers.get(customer).is_some_and(BuyerUse::is_empty) {
                self.buyers.remove(customer);
            }
        }
    }

    pub fn hold(&mut self, tags: &Counted, expires_at_ms: u64, qty: u32) {
        if let Some(buyer) = self.buyer_mut(tags.customer.as_ref()) {
            buyer.holds.push((expires_at_ms, qty));
        }
        if let Some(quota) = self.quota_mut(tags.channel.as_ref()) {
            quota.holds.add(u64::from(qty), expires_at_ms);
            quota.held += u64::from(qty);
        }
    }

    pub fn unhold(&mut self, tags: &Counted, expires_at_ms: u64, qty: u32) {
        if let Some(buyer) = self.buyer_mut(tags.customer.as_ref()) {
            let index = buyer
                .holds
                .iter()
                .position(|hold| *hold == (expires_at_ms, qty))
                .expect("a buyer's hold is accounted for");
            buyer.holds.swap_remove(index);
        }
        self.drop_if_empty(tags.customer.as_ref());
        if let Some(quota) = self.quota_mut(tags.channel.as_ref()) {
            quota.holds.remove(u64::from(qty), expires_at_ms);
            quota.held -= u64::from(qty);
        }
    }

    pub fn commit(&mut self, tags: &Counted, qty: u32) {
        if let Some(buyer) = self.buyer_mut(tags.customer.as_ref()) {
            buyer.bought += u64::from(qty);
        }
        self.drop_if_empty(tags.customer.as_ref());
        if let Some(quota) = self.quota_mut(tags.channel.as_ref()) {
            quota.committed += u64::from(qty);
        }
    }

    /// Shipped units leave the channel's use (and the stock on hand); the buyer keeps them.
    pub fn ship(&mut self, tags: &Counted, qty: u32) {
        if let Some(quota) = self.quota_mut(tags.channel.as_ref()) {
            quota.committed -= u64::from(qty);
        }
    }

    /// A shipped reservation forgotten after its retention: the buyer's units with it.
    pub fn forget(&mut self, tags: &Counted, qty: u32) {
        if let Some(buyer) = self.buyer_mut(tags.customer.as_ref()) {
            buyer.bought -= u64::from(qty);
        }
        self.drop_if_empty(tags.customer.as_ref());
    }

    /// Counts one line of an existing reservation (recount after a change of limits, load).
    pub fn count(&mut self, r: &Reservation, index: usize) {
        let tags = r.counted();
        let (qty, confirmed) = (r.lines[index].qty, r.lines[index].confirmed);
        match r.state {
            ReservationState::Held => self.hold(&tags, r.expires_at_ms, qty),
            ReservationState::Confirmed => self.commit(&tags, confirmed),
            ReservationState::Shipped => {
                self.commit(&tags, confirmed);
                self.ship(&tags, confirmed);
            }
            ReservationState::Released | ReservationState::Expired => {}
        }
    }

    /// Per quota (allocation, use), the pool and its use, for `sku` at `now_ms`.
    fn allocations(&self, sku: &Sku, now_ms: u64) -> (Vec<(u64, u64)>, u64, u64) {
        let sellable = sku.sellable();
        let per_quota: Vec<(u64, u64)> = self
            .quotas
            .iter()
            .map(|q| {
                let allocation = match q.limit {
                    QuotaLimit::Units(units) => units,
                    QuotaLimit::BasisPoints(basis) => {
                        (u128::from(sellable) * u128::from(basis) / 10_000) as u64
                    }
                };
                (allocation, q.used.live(now_ms))
            })
            .collect();
        let allocated: u64 = per_quota.iter().map(|(a, _)| *a).fold(0, u64::saturating_add);
        let quota_used: u64 = per_quota.iter().map(|(_, u)| *u).sum();
        let overflow: u64 = per_quota.iter().map(|(a, u)| u.saturating_sub(*a)).sum();
        let total_used = sku.live_reserved(now_ms) + sku.committed;
        let pool = sellable.saturating_sub(allocated);
        let pool_used = total_used.saturating_sub(quota_used) + overflow;
        (per_quota, pool, pool_used)
    }

    /// Whether `qty` more units may be held by this channel and customer (stock already
    /// checked).
    pub fn check(
        &self,
        sku: &Sku,
        channel: &[u8],
        customer: &[u8],
        qty: u64,
        now_ms: u64,
    ) -> Result<(), ResultCode> {
        if self.max_per_buyer > 0 {
            if customer.is_empty() {
                return Err(ResultCode::InvalidArgument);
            }
            let used = self.buyers.get(customer).map_or(0, |b| b.live(now_ms));
            if used + qty > u64::from(self.max_per_buyer) {
                return Err(ResultCode::BuyerLimitExceeded);
            }
        }
        if self.quotas.is_empty() {
            return Ok(());
        }
        let (per_quota, pool, pool_used) = self.allocations(sku, now_ms);
        let left = pool.saturating_sub(pool_used);
        let own = self.quotas.binary_search_by(|q| q.channel[..].cmp(channel)).ok();
        let fits = match own.filter(|_| !channel.is_empty()) {
            Some(index) => {
                let (allocation, used) = per_quota[index];
                let extra =
                    (used + qty).saturating_sub(allocation) - used.saturating_sub(allocation);
                extra == 0 || (self.shared_pool && extra <= left)
            }
            None => qty <= left,
        };
        if fits {
            Ok(())
        } else {
            Err(ResultCode::ChannelQuotaExceeded)
        }
    }
}

impl Limits {
    /// Whether a configuration can be set: unique non-empty channels, shares within 100 %.
    pub fn valid(limits: &SkuLimits) -> bool {
        valid(limits)
    }
}

fn valid(limits: &SkuLimits) -> bool {
    let mut channels: Vec<&[u8]> = limits.quotas.iter().map(|q| &q.channel[..]).collect();
    channels.sort_unstable();
    let unique = channels.windows(2).all(|w| w[0] != w[1]);
    let shares_valid = limits.quotas.iter().all(|q| match q.limit {
        QuotaLimit::BasisPoints(basis) => basis <= 10_000,
        QuotaLimit::Units(_) => true,
    });
    unique && shares_valid && channels.iter().all(|c| !c.is_empty())
}

impl Engine {
    /// Replaces a SKU's limits and recounts every use from the reservations. Locks every shard
    /// (in order): an administrative operation, not meant for traffic.
    pub(super) fn set_limits(
        &self,
        sku: &[u8],
        config: &SkuLimits,
        now_ms: u64,
        on_change: impl FnOnce(),
    ) -> SkuReply {
        let refused = |code| SkuReply { code, info: Default::default() };
        if !valid(config) {
            return refused(ResultCode::InvalidArgument);
        }
        let home = self.shard_of(sku);
        let mut locked = self.lock((0..self.shards.len()).collect());
        let Some(state) = locked.shard(home).skus.get(sku) else {
            return refused(ResultCode::UnknownSku);
        };
        let mut limits = (*config != SkuLimits::default()).then(|| Limits::new(config));
        let current = state.limits.as_deref().map(Limits::config);
        let wanted = limits.as_ref().map(Limits::config);
        if current == wanted {
            return SkuReply { code: ResultCode::Ok, info: state.info(now_ms) };
        }
        if let Some(limits) = &mut limits {
            for index in 0..self.shards.len() {
                for r in locked.shard(index).reservations.values() {
                    if let Ok(line) = r.lines.binary_search_by(|l| l.sku[..].cmp(sku)) {
                        limits.count(r, line);
                    }
                }
            }
        }
        let state = locked.shard(home).skus.get_mut(sku).expect("checked above");
        state.limits = limits.map(Box::new);
        let info = state.info(now_ms);
        on_change();
        SkuReply { code: ResultCode::Ok, info }
    }

    /// A SKU's limits, each quota's allocation and use, and the pool, as of `now_ms`.
    pub fn query_limits(&self, sku: &[u8], now_ms: u64) -> LimitsReply {
        let shard = self.shards[self.shard_of(sku)].lock();
        let Some(state) = shard.skus.get(sku) else {
            return LimitsReply::refused(ResultCode::UnknownSku);
        };
        let Some(limits) = state.limits.as_deref() else {
            let pool = state.sellable();
            let pool_used = state.live_reserved(now_ms) + state.committed;
            return LimitsReply { pool, pool_used, ..LimitsReply::refused(ResultCode::Ok) };
        };
        let (per_quota, pool, pool_used) = limits.allocations(state, now_ms);
        let channels = limits
            .quotas
            .iter()
            .zip(per_quota)
            .map(|(q, (allocation, used))| ChannelUse {
                channel: q.channel.to_vec().into(),
                allocation,
                used,
            })
            .collect();
        LimitsReply { code: ResultCode::Ok, limits: limits.config(), channels, pool, pool_used }
    }

    /// Number of (SKU, buyer) entries kept for per-buyer limits (memory accounting).
    pub fn buyer_entries(&self) -> usize {
        let mut entries = 0;
        self.visit_skus(
            |_| {},
            |_, sku| entries += sku.limits.as_ref().map_or(0, |l| l.buyers.len()),
        );
        entries
    }
}
