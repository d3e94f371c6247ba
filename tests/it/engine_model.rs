//! Property test: the sharded engine against a deliberately simple reference model.
//!
//! The model keeps plain maps and recomputes everything from scratch (held units are summed over
//! live reservations at every read), so it shares none of the engine's indexes. Random operation
//! sequences with time jumps are applied to both; after every step the replies, every SKU's
//! counters, every reservation and the due sweep commands must agree, and the invariants
//! (no oversell on a new hold, conservation of units, idempotent retries, exact expiry, no
//! buyer over the per-buyer limit and no channel over its quota because of a reserve, no
//! location oversold and no preorder above its allowance) are checked directly. Locations are
//! counted from the reservations' allocations at every read.

use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::prelude::*;
use stockd::engine::{Command, Engine, EngineConfig, SkuFilter};
use stockd_protocol::{
    Allocation, ChannelQuota, ChannelUse, Confirm, ExtendReply, IncomingInfo, LimitsReply, Line,
    LocationInfo, LocationsReply, OpReply, QuotaLimit, ReservationInfo, ReservationLine,
    ReservationReply, ReservationState, Reserve, ReserveAt, ReserveAtReply, ReserveReply,
    ResultCode, SkuInfo, SkuLimits, SkuReply,
};

const CONFIG: EngineConfig = EngineConfig {
    shards: 4,
    ttl_ms_default: 100,
    hold_ms_max: 500,
    retention_ms: 300,
    shipped_retention_ms: 300,
};
const SKUS: [&str; 4] = ["a", "b", "c", "unknown"];
const IDS: [&str; 5] = ["r0", "r1", "r2", "r3", "r4"];
const TTLS: [u32; 4] = [0, 50, 200, 600];
const CHANNELS: [&str; 3] = ["", "live", "web"];
const CUSTOMERS: [&str; 3] = ["", "c1", "c2"];
/// "" = let the engine choose (reserve), none (deliveries); five locations exceed the split cap.
const LOCS: [&str; 6] = ["", "w1", "w2", "w3", "w4", "w5"];
const REFS: [&str; 3] = ["po1", "po2", ""];
const SPLIT_MAX: usize = 4;

#[derive(Clone, Debug, Default)]
struct MSku {
    on_hand: u64,
    committed: u64,
    safety: u64,
    /// Quotas sorted by channel; `None` for no limits.
    limits: Option<SkuLimits>,
    /// Location id -> (priority, on hand); `None` for a SKU without locations.
    locs: Option<BTreeMap<Vec<u8>, (u32, u64)>>,
    preorder_max: u64,
    /// (location, reference) -> (qty, eta).
    incoming: BTreeMap<(Vec<u8>, Vec<u8>), (u64, u64)>,
}

impl MSku {
    fn preorder_room(&self) -> u64 {
        if self.preorder_max == 0 {
            return 0;
        }
        self.preorder_max.min(self.incoming.values().map(|(qty, _)| qty).sum())
    }

    fn incoming_at(&self, loc: &[u8]) -> u64 {
        self.incoming.iter().filter(|((l, _), _)| l == loc).map(|(_, (qty, _))| qty).sum()
    }

    /// Locations in the order the engine chooses them.
    fn ordered(&self) -> Vec<(Vec<u8>, u32, u64)> {
        let mut list: Vec<_> = self
            .locs
            .iter()
            .flatten()
            .map(|(id, (p, on_hand))| (id.clone(), *p, *on_hand))
            .collect();
        list.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        list
    }

    fn sum_locations(&mut self) {
        if let Some(locs) = &self.locs {
            self.on_hand = locs.values().map(|(_, n)| n).sum();
        }
    }
}

/// Where `bought` confirmed units of a line with allocations `at` are committed.
fn committed_at(at: &[(Vec<u8>, u32)], bought: u32) -> Vec<(Vec<u8>, u32)> {
    let mut left = bought;
    at.iter()
        .map(|(loc, qty)| {
            let take = left.min(*qty);
            left -= take;
            (loc.clone(), take)
        })
        .collect()
}

/// A quota's allocation and use, the pool and its use: the rules of `src/engine/limits.rs`,
/// computed from scratch.
struct Split {
    quotas: Vec<(u64, u64)>,
    pool: u64,
    pool_used: u64,
}

#[derive(Clone, Debug)]
struct MRes {
    state: ReservationState,
    lines: Vec<(Vec<u8>, u32)>,
    /// Per line, where its units come from.
    at: Vec<Vec<(Vec<u8>, u32)>>,
    confirmed: Vec<u32>,
    ttl_ms: u32,
    channel: Vec<u8>,
    customer: Vec<u8>,
    created: u64,
    expires: u64,
    forget_at: u64,
}

impl MRes {
    fn lapsed(&self, now: u64) -> bool {
        self.state == ReservationState::Held && now >= self.expires
    }
}

#[derive(Default)]
struct Model {
    skus: BTreeMap<Vec<u8>, MSku>,
    res: BTreeMap<Vec<u8>, MRes>,
}

/// Sorted, merged lines; `Err(index)` names the first invalid line in request order.
fn normalize(lines: &[Line], allow_zero: bool) -> Result<Vec<(Vec<u8>, u32, u16)>, u16> {
    if let Some(bad) = lines.iter().position(|l| l.sku.is_empty() || (l.qty == 0 && !allow_zero)) {
        return Err(bad as u16);
    }
    let mut merged: BTreeMap<Vec<u8>, (u32, u16)> = BTreeMap::new();
    for (index, line) in lines.iter().enumerate() {
        let entry = merged.entry(line.sku.to_vec()).or_insert((0, index as u16));
        entry.0 += line.qty;
    }
    Ok(merged.into_iter().map(|(sku, (qty, first))| (sku, qty, first)).collect())
}

impl Model {
    /// Units of `sku` counted for reservations matching `tag`: live holds, and confirmed units
    /// (shipped ones too when `shipped_counts`).
    fn used_by(
        &self,
        sku: &[u8],
        now: u64,
        tag: impl Fn(&MRes) -> bool,
        shipped_counts: bool,
    ) -> u64 {
        let mut used = 0;
        for r in self.res.values().filter(|r| tag(r)) {
            for (i, (line_sku, qty)) in r.lines.iter().enumerate() {
                if line_sku != sku {
                    continue;
                }
                used += match r.state {
                    ReservationState::Held if now < r.expires => u64::from(*qty),
                    ReservationState::Confirmed => u64::from(r.confirmed[i]),
                    ReservationState::Shipped if shipped_counts => u64::from(r.confirmed[i]),
                    _ => 0,
                };
            }
        }
        used
    }

    fn buyer_used(&self, sku: &[u8], customer: &[u8], now: u64) -> u64 {
        self.used_by(sku, now, |r| r.customer == customer, true)
    }

    fn split(&self, sku: &[u8], now: u64) -> Split {
        let s = &self.skus[sku];
        let sellable = (s.on_hand + s.preorder_room()).saturating_sub(s.safety);
        let quotas: Vec<(u64, u64)> = s
            .limits
            .iter()
            .flat_map(|l| &l.quotas)
            .map(|q| {
                let allocation = match q.limit {
                    QuotaLimit::Units(n) => n,
                    QuotaLimit::BasisPoints(b) => sellable * u64::from(b) / 10_000,
                };
                (allocation, self.used_by(sku, now, |r| r.channel == q.channel, false))
            })
            .collect();
        let all_used = self.live_reserved(sku, now) + s.committed;
        let quota_used: u64 = quotas.iter().map(|q| q.1).sum();
        let overflow: u64 = quotas.iter().map(|(a, u)| u.saturating_sub(*a)).sum();
        Split {
            pool: sellable.saturating_sub(quotas.iter().map(|q| q.0).sum()),
            pool_used: all_used - quota_used + overflow,
            quotas,
        }
    }

    fn check_limits(&self, sku: &[u8], r: &Reserve, qty: u64, now: u64) -> Result<(), ResultCode> {
        let Some(limits) = &self.skus[sku].limits else { return Ok(()) };
        if limits.max_per_buyer > 0 {
            if r.customer.is_empty() {
                return Err(ResultCode::InvalidArgument);
            }
            if self.buyer_used(sku, &r.customer, now) + qty > u64::from(limits.max_per_buyer) {
                return Err(ResultCode::BuyerLimitExceeded);
            }
        }
        if limits.quotas.is_empty() {
            return Ok(());
        }
        let split = self.split(sku, now);
        let left = split.pool.saturating_sub(split.pool_used);
        let own =
            limits.quotas.iter().position(|q| !r.channel.is_empty() && q.channel == r.channel);
        let fits = match own {
            Some(i) => {
                let (allocation, used) = split.quotas[i];
                let before = used.saturating_sub(allocation);
                let after = (used + qty).saturating_sub(allocation);
                after == before || (limits.shared_pool && after - before <= left)
            }
            None => qty <= left,
        };
        if fits {
            Ok(())
        } else {
            Err(ResultCode::ChannelQuotaExceeded)
        }
    }

    fn limits_reply(&self, sku: &[u8], now: u64) -> LimitsReply {
        let refused = LimitsReply {
            code: ResultCode::UnknownSku,
            limits: SkuLimits::default(),
            channels: vec![],
            pool: 0,
            pool_used: 0,
        };
        let Some(s) = self.skus.get(sku) else { return refused };
        let split = self.split(sku, now);
        let limits = s.limits.clone().unwrap_or_default();
        let channels = limits
            .quotas
            .iter()
            .zip(&split.quotas)
            .map(|(q, (allocation, used))| ChannelUse {
                channel: q.channel.clone(),
                allocation: *allocation,
                used: *used,
            })
            .collect();
        LimitsReply {
            code: ResultCode::Ok,
            limits,
            channels,
            pool: split.pool,
            pool_used: split.pool_used,
        }
    }

    fn live_reserved(&self, sku: &[u8], now: u64) -> u64 {
        self.res
            .values()
            .filter(|r| r.state == ReservationState::Held && now < r.expires)
            .flat_map(|r| &r.lines)
            .filter(|(s, _)| s == sku)
            .map(|(_, qty)| u64::from(*qty))
            .sum()
    }

    fn info(&self, sku: &[u8], now: u64) -> Option<SkuInfo> {
        let s = self.skus.get(sku)?;
        let reserved = self.live_reserved(sku, now);
        let free = (s.on_hand + s.preorder_room()).saturating_sub(reserved + s.committed);
        let available = free.saturating_sub(s.safety);
        Some(SkuInfo {
            on_hand: s.on_hand,
            reserved,
            committed: s.committed,
            safety_stock: s.safety,
            available,
            paused: s.safety > 0 && available == 0,
        })
    }

    fn sku_reply(&self, code: ResultCode, sku: &[u8], now: u64) -> SkuReply {
        SkuReply { code, info: self.info(sku, now).unwrap_or_default() }
    }

    fn reservation(&self, id: &[u8], now: u64) -> ReservationReply {
        let Some(r) = self.res.get(id) else {
            return ReservationReply { code: ResultCode::NotFound, info: None };
        };
        let state = if r.lapsed(now) { ReservationState::Expired } else { r.state };
        let info = ReservationInfo {
            state,
            created_at_ms: r.created,
            expires_at_ms: r.expires,
            channel: Bytes::from(r.channel.clone()),
            customer: Bytes::from(r.customer.clone()),
            lines: r
                .lines
                .iter()
                .enumerate()
                .map(|(i, (sku, qty))| ReservationLine {
                    sku: Bytes::from(sku.clone()),
                    qty_held: *qty,
                    qty_confirmed: r.confirmed.get(i).copied().unwrap_or(0),
                })
                .collect(),
        };
        ReservationReply { code: ResultCode::Ok, info: Some(info) }
    }

    fn resolve_ttl(ttl: u32) -> Option<u64> {
        let ttl = if ttl == 0 { CONFIG.ttl_ms_default } else { ttl };
        (u64::from(ttl) <= CONFIG.hold_ms_max).then_some(u64::from(ttl))
    }

    /// Ends a hold; `confirmed` amounts move to committed.
    fn end(&mut self, id: &[u8], to: ReservationState, confirmed: Option<Vec<u32>>, now: u64) {
        let r = self.res.get_mut(id).unwrap();
        r.state = to;
        if let Some(c) = confirmed {
            for ((sku, _), qty) in r.lines.iter().zip(&c) {
                self.skus.get_mut(sku).unwrap().committed += u64::from(*qty);
            }
            r.confirmed = c;
        }
        if to != ReservationState::Confirmed {
            r.forget_at = now + CONFIG.retention_ms;
        }
    }

    fn finished(state: ReservationState) -> ResultCode {
        match state {
            ReservationState::Confirmed => ResultCode::AlreadyConfirmed,
            ReservationState::Released => ResultCode::AlreadyReleased,
            ReservationState::Expired => ResultCode::Expired,
            ReservationState::Shipped => ResultCode::AlreadyShipped,
            ReservationState::Held => unreachable!(),
        }
    }

    /// Units held (live) or committed at a location, from the reservations' allocations.
    fn loc_taken(&self, sku: &[u8], loc: &[u8], now: u64) -> u64 {
        let mut taken = 0;
        for r in self.res.values() {
            for (i, (line_sku, _)) in r.lines.iter().enumerate() {
                if line_sku != sku {
                    continue;
                }
                let at = match r.state {
                    ReservationState::Held if now < r.expires => r.at[i].clone(),
                    ReservationState::Confirmed => committed_at(&r.at[i], r.confirmed[i]),
                    _ => continue,
                };
                taken +=
                    at.iter().filter(|(l, _)| l == loc).map(|(_, q)| u64::from(*q)).sum::<u64>();
            }
        }
        taken
    }

    fn loc_held(&self, sku: &[u8], loc: &[u8], now: u64) -> u64 {
        let held = |r: &&MRes| r.state == ReservationState::Held && now < r.expires;
        self.res
            .values()
            .filter(held)
            .flat_map(|r| r.lines.iter().zip(&r.at))
            .filter(|((s, _), _)| s == sku)
            .flat_map(|(_, at)| at)
            .filter(|(l, _)| l == loc)
            .map(|(_, q)| u64::from(*q))
            .sum()
    }

    fn loc_room(&self, sku: &[u8], loc: &[u8], now: u64) -> u64 {
        let s = &self.skus[sku];
        let on_hand = s.locs.as_ref().unwrap()[loc].1;
        let incoming = if s.preorder_max > 0 { s.incoming_at(loc) } else { 0 };
        (on_hand + incoming).saturating_sub(self.loc_taken(sku, loc, now))
    }

    fn allocate(
        &self,
        sku: &[u8],
        qty: u32,
        location: &[u8],
        split: bool,
        now: u64,
    ) -> Result<Vec<(Vec<u8>, u32)>, ResultCode> {
        let s = &self.skus[sku];
        let Some(locs) = &s.locs else {
            return if location.is_empty() { Ok(vec![]) } else { Err(ResultCode::UnknownLocation) };
        };
        if !location.is_empty() {
            if !locs.contains_key(location) {
                return Err(ResultCode::UnknownLocation);
            }
            return if self.loc_room(sku, location, now) >= u64::from(qty) {
                Ok(vec![(location.to_vec(), qty)])
            } else {
                Err(ResultCode::InsufficientStock)
            };
        }
        let order = s.ordered();
        if let Some((id, _, _)) =
            order.iter().find(|(id, _, _)| self.loc_room(sku, id, now) >= u64::from(qty))
        {
            return Ok(vec![(id.clone(), qty)]);
        }
        if split {
            let with_room: Vec<(Vec<u8>, u64)> = order
                .iter()
                .map(|(id, _, _)| (id.clone(), self.loc_room(sku, id, now)))
                .filter(|(_, room)| *room > 0)
                .take(SPLIT_MAX)
                .collect();
            if with_room.iter().map(|(_, room)| room).sum::<u64>() >= u64::from(qty) {
                let mut left = qty;
                let mut at = vec![];
                for (id, room) in with_room {
                    if left == 0 {
                        break;
                    }
                    let take = room.min(u64::from(left)) as u32;
                    at.push((id, take));
                    left -= take;
                }
                return Ok(at);
            }
        }
        Err(ResultCode::InsufficientStock)
    }

    fn locations_reply(&self, sku: &[u8], now: u64) -> LocationsReply {
        let Some(s) = self.skus.get(sku) else {
            return LocationsReply::refused(ResultCode::UnknownSku);
        };
        let taken = self.live_reserved(sku, now) + s.committed;
        LocationsReply {
            code: ResultCode::Ok,
            preorder_max: s.preorder_max,
            preordered: taken.saturating_sub(s.on_hand),
            locations: s
                .ordered()
                .into_iter()
                .map(|(id, priority, on_hand)| {
                    let held = self.loc_held(sku, &id, now);
                    LocationInfo {
                        location: Bytes::from(id.clone()),
                        priority,
                        on_hand,
                        reserved: held,
                        committed: self.loc_taken(sku, &id, now) - held,
                        incoming: s.incoming_at(&id),
                        available: self.loc_room(sku, &id, now),
                    }
                })
                .collect(),
            incoming: s
                .incoming
                .iter()
                .map(|((loc, reference), (qty, eta))| IncomingInfo {
                    location: Bytes::from(loc.clone()),
                    reference: Bytes::from(reference.clone()),
                    qty: *qty,
                    eta_ms: *eta,
                })
                .collect(),
        }
    }

    /// Whether the SKU may get its first location: nothing unassigned (lapsed holds the sweep
    /// has not ended yet included).
    fn can_take_locations(&self, sku: &[u8]) -> bool {
        let s = &self.skus[sku];
        let held = self
            .res
            .values()
            .filter(|r| r.state == ReservationState::Held)
            .flat_map(|r| &r.lines)
            .any(|(line_sku, _)| line_sku == sku);
        s.on_hand == 0 && s.committed == 0 && !held && s.incoming.is_empty()
    }

    /// A delivery's location checked against the SKU.
    fn delivery_location(&self, sku: &[u8], loc: &[u8]) -> Result<(), ResultCode> {
        match (&self.skus[sku].locs, loc) {
            (None, []) => Ok(()),
            (None, _) => Err(ResultCode::UnknownLocation),
            (Some(_), []) => Err(ResultCode::LocationRequired),
            (Some(locs), _) if locs.contains_key(loc) => Ok(()),
            (Some(_), _) => Err(ResultCode::UnknownLocation),
        }
    }

    fn check(&self, sku: &[u8], qty: u64, now: u64) -> Result<(), ResultCode> {
        let info = self.info(sku, now).ok_or(ResultCode::UnknownSku)?;
        let s = &self.skus[sku];
        let free =
            (info.on_hand + s.preorder_room()).saturating_sub(info.reserved + info.committed);
        if qty <= info.available {
            Ok(())
        } else if info.safety_stock > 0 && info.available == 0 {
            Err(ResultCode::SkuPaused)
        } else if qty <= free {
            Err(ResultCode::BelowSafetyStock)
        } else {
            Err(ResultCode::InsufficientStock)
        }
    }

    fn reserve(
        &mut self,
        r: &Reserve,
        location: &[u8],
        split: bool,
        now: u64,
    ) -> (ReserveReply, Vec<Allocation>, bool) {
        let no = |code, line| {
            (ReserveReply { code, failed_line: line, expires_at_ms: 0 }, vec![], false)
        };
        let report = |at: &[Vec<(Vec<u8>, u32)>], lines: &[(Vec<u8>, u32, u16)]| {
            at.iter()
                .zip(lines)
                .flat_map(|(at, (_, _, first))| {
                    at.iter().map(|(loc, qty)| Allocation {
                        line: *first,
                        location: Bytes::from(loc.clone()),
                        qty: *qty,
                    })
                })
                .collect::<Vec<_>>()
        };
        if r.id.is_empty() || r.lines.is_empty() {
            return no(ResultCode::InvalidArgument, None);
        }
        let Some(ttl) = Self::resolve_ttl(r.ttl_ms) else {
            return no(ResultCode::InvalidArgument, None);
        };
        let lines = match normalize(&r.lines, false) {
            Ok(lines) => lines,
            Err(i) => return no(ResultCode::InvalidArgument, Some(i)),
        };
        if let Some(existing) = self.res.get(&r.id[..]) {
            let same = existing.ttl_ms == r.ttl_ms
                && existing.channel == r.channel
                && existing.customer == r.customer
                && existing
                    .lines
                    .iter()
                    .map(|(s, q)| (s.clone(), *q))
                    .eq(lines.iter().map(|(s, q, _)| (s.clone(), *q)));
            return if same {
                let reply = ReserveReply {
                    code: ResultCode::Ok,
                    failed_line: None,
                    expires_at_ms: existing.expires,
                };
                (reply, report(&existing.at, &lines), false)
            } else {
                no(ResultCode::IdConflict, None)
            };
        }
        let mut at = vec![];
        let mut failures: Vec<(u16, ResultCode)> = vec![];
        for (sku, qty, first) in &lines {
            let wide = u64::from(*qty);
            let checked = self
                .check(sku, wide, now)
                .and_then(|()| self.check_limits(sku, r, wide, now))
                .and_then(|()| self.allocate(sku, *qty, location, split, now));
            match checked {
                Ok(line_at) => at.push(line_at),
                Err(code) => failures.push((*first, code)),
            }
        }
        failures.sort();
        if let Some((index, code)) = failures.first() {
            return no(*code, Some(*index));
        }
        let allocations = report(&at, &lines);
        let expires = now + ttl;
        self.res.insert(
            r.id.to_vec(),
            MRes {
                state: ReservationState::Held,
                lines: lines.into_iter().map(|(s, q, _)| (s, q)).collect(),
                at,
                confirmed: vec![],
                ttl_ms: r.ttl_ms,
                channel: r.channel.to_vec(),
                customer: r.customer.to_vec(),
                created: now,
                expires,
                forget_at: 0,
            },
        );
        let reply =
            ReserveReply { code: ResultCode::Ok, failed_line: None, expires_at_ms: expires };
        (reply, allocations, true)
    }

    fn confirm(&mut self, c: &Confirm, now: u64) -> (ResultCode, bool) {
        let Some(r) = self.res.get(&c.id[..]).cloned() else {
            return (ResultCode::NotFound, false);
        };
        if r.lapsed(now) {
            self.end(&c.id, ReservationState::Expired, None, now);
            return (ResultCode::Expired, true);
        }
        let amounts: Vec<u32> = if c.lines.is_empty() {
            r.lines.iter().map(|(_, q)| *q).collect()
        } else {
            let Ok(requested) = normalize(&c.lines, true) else {
                return (ResultCode::InvalidArgument, false);
            };
            let mut amounts = vec![0; r.lines.len()];
            for (sku, qty, _) in requested {
                let Some(i) = r.lines.iter().position(|(s, _)| *s == sku) else {
                    return (ResultCode::InvalidArgument, false);
                };
                if qty > r.lines[i].1 {
                    return (ResultCode::InvalidArgument, false);
                }
                amounts[i] = qty;
            }
            if amounts.iter().all(|q| *q == 0) {
                return (ResultCode::InvalidArgument, false);
            }
            amounts
        };
        match r.state {
            ReservationState::Held => {
                self.end(&c.id, ReservationState::Confirmed, Some(amounts), now);
                (ResultCode::Ok, true)
            }
            ReservationState::Confirmed | ReservationState::Shipped => {
                let code = if r.confirmed == amounts {
                    ResultCode::Ok
                } else {
                    ResultCode::AlreadyConfirmed
                };
                (code, false)
            }
            state => (Self::finished(state), false),
        }
    }

    fn apply(&mut self, command: &Command, now: u64) -> (OpReply, bool) {
        match command {
            Command::Reserve(r) => {
                let (reply, _, changed) = self.reserve(r, b"", false, now);
                (OpReply::Reserve(reply), changed)
            }
            Command::ReserveAt(r) => {
                let (reply, allocations, changed) =
                    self.reserve(&r.reserve, &r.location, r.split, now);
                (OpReply::ReserveAt(ReserveAtReply { reply, allocations }), changed)
            }
            Command::SetLocation { sku, location, on_hand, priority, expected } => {
                let reply = |code, info| OpReply::SetLocation(SkuReply { code, info });
                if sku.is_empty() || location.is_empty() {
                    return (reply(ResultCode::InvalidArgument, SkuInfo::default()), false);
                }
                let info = self.info(sku, now).unwrap_or_default();
                let state = self.skus.get(&sku[..]);
                let existing = state.and_then(|s| s.locs.as_ref()?.get(&location[..]).copied());
                if state.is_some()
                    && existing.is_none()
                    && state.unwrap().locs.is_none()
                    && !self.can_take_locations(sku)
                {
                    return (reply(ResultCode::LocationConflict, info), false);
                }
                if expected.is_some_and(|e| e != existing.map_or(0, |(_, n)| n)) {
                    return (reply(ResultCode::ExpectedMismatch, info), false);
                }
                let changed = existing != Some((*priority, *on_hand));
                let s = self.skus.entry(sku.to_vec()).or_default();
                s.locs
                    .get_or_insert_with(BTreeMap::new)
                    .insert(location.to_vec(), (*priority, *on_hand));
                s.sum_locations();
                (reply(ResultCode::Ok, self.info(sku, now).unwrap()), changed)
            }
            Command::AdjustLocation { sku, location, delta, expected } => {
                let reply = |code, info| OpReply::AdjustLocation(SkuReply { code, info });
                let Some(info) = self.info(sku, now) else {
                    return (reply(ResultCode::UnknownSku, SkuInfo::default()), false);
                };
                let s = self.skus.get_mut(&sku[..]).unwrap();
                let Some(entry) = s.locs.as_mut().and_then(|l| l.get_mut(&location[..])) else {
                    return (reply(ResultCode::UnknownLocation, info), false);
                };
                if expected.is_some_and(|e| e != entry.1) {
                    return (reply(ResultCode::ExpectedMismatch, info), false);
                }
                let Some(new) = entry.1.checked_add_signed(*delta) else {
                    return (reply(ResultCode::InvalidArgument, info), false);
                };
                entry.1 = new;
                s.sum_locations();
                (reply(ResultCode::Ok, self.info(sku, now).unwrap()), *delta != 0)
            }
            Command::SetIncoming { sku, location, reference, qty, eta_ms } => {
                let reply = |code, info| OpReply::SetIncoming(SkuReply { code, info });
                if reference.is_empty() {
                    return (reply(ResultCode::InvalidArgument, SkuInfo::default()), false);
                }
                let Some(info) = self.info(sku, now) else {
                    return (reply(ResultCode::UnknownSku, SkuInfo::default()), false);
                };
                if let Err(code) = self.delivery_location(sku, location) {
                    return (reply(code, info), false);
                }
                let s = self.skus.get_mut(&sku[..]).unwrap();
                let key = (location.to_vec(), reference.to_vec());
                let before = s.incoming.get(&key).copied();
                let changed = match (before, *qty) {
                    (None, 0) => false,
                    (Some(_), 0) => {
                        s.incoming.remove(&key);
                        true
                    }
                    (before, qty) => {
                        s.incoming.insert(key, (qty, *eta_ms));
                        before != Some((qty, *eta_ms))
                    }
                };
                (reply(ResultCode::Ok, self.info(sku, now).unwrap()), changed)
            }
            Command::ReceiveIncoming { sku, location, reference, qty } => {
                let reply = |code, info| OpReply::ReceiveIncoming(SkuReply { code, info });
                let Some(info) = self.info(sku, now) else {
                    return (reply(ResultCode::UnknownSku, SkuInfo::default()), false);
                };
                if let Err(code) = self.delivery_location(sku, location) {
                    return (reply(code, info), false);
                }
                let s = self.skus.get_mut(&sku[..]).unwrap();
                let key = (location.to_vec(), reference.to_vec());
                let Some((left, eta)) = s.incoming.get(&key).copied() else {
                    return (reply(ResultCode::NotFound, info), false);
                };
                let take = if *qty == 0 { left } else { *qty };
                if take > left {
                    return (reply(ResultCode::InvalidArgument, info), false);
                }
                if take == left {
                    s.incoming.remove(&key);
                } else {
                    s.incoming.insert(key, (left - take, eta));
                }
                match &mut s.locs {
                    Some(locs) => {
                        locs.get_mut(&location[..]).unwrap().1 += take;
                        s.sum_locations();
                    }
                    None => s.on_hand += take,
                }
                (reply(ResultCode::Ok, self.info(sku, now).unwrap()), true)
            }
            Command::SetPreorder { sku, preorder_max } => {
                let reply = |code, info| OpReply::SetPreorder(SkuReply { code, info });
                let Some(s) = self.skus.get_mut(&sku[..]) else {
                    return (reply(ResultCode::UnknownSku, SkuInfo::default()), false);
                };
                let changed = s.preorder_max != *preorder_max;
                s.preorder_max = *preorder_max;
                (reply(ResultCode::Ok, self.info(sku, now).unwrap()), changed)
            }
            Command::Confirm(c) => {
                let (code, changed) = self.confirm(c, now);
                (OpReply::Confirm(code), changed)
            }
            Command::Release { id } => {
                let (code, changed) = match self.res.get(&id[..]).cloned() {
                    None => (ResultCode::NotFound, false),
                    Some(r) if r.lapsed(now) => {
                        self.end(id, ReservationState::Expired, None, now);
                        (ResultCode::Expired, true)
                    }
                    Some(r) if r.state == ReservationState::Held => {
                        self.end(id, ReservationState::Released, None, now);
                        (ResultCode::Ok, true)
                    }
                    Some(r) if r.state == ReservationState::Released => (ResultCode::Ok, false),
                    Some(r) => (Self::finished(r.state), false),
                };
                (OpReply::Release(code), changed)
            }
            Command::Extend { id, ttl_ms } => {
                let reply = |code, at| OpReply::Extend(ExtendReply { code, expires_at_ms: at });
                let Some(ttl) = Self::resolve_ttl(*ttl_ms) else {
                    return (reply(ResultCode::InvalidArgument, 0), false);
                };
                match self.res.get(&id[..]).cloned() {
                    None => (reply(ResultCode::NotFound, 0), false),
                    Some(r) if r.lapsed(now) => {
                        self.end(id, ReservationState::Expired, None, now);
                        (reply(ResultCode::Expired, 0), true)
                    }
                    Some(r) if r.state != ReservationState::Held => {
                        (reply(Self::finished(r.state), 0), false)
                    }
                    Some(r) => {
                        let new = (now + ttl).min(r.created + CONFIG.hold_ms_max).max(r.expires);
                        self.res.get_mut(&id[..]).unwrap().expires = new;
                        (reply(ResultCode::Ok, new), new != r.expires)
                    }
                }
            }
            Command::Ship { id } => {
                let (code, changed) = match self.res.get(&id[..]).cloned() {
                    None => (ResultCode::NotFound, false),
                    Some(r) if r.lapsed(now) => {
                        self.end(id, ReservationState::Expired, None, now);
                        (ResultCode::Expired, true)
                    }
                    Some(r) => match r.state {
                        ReservationState::Held => (ResultCode::NotConfirmed, false),
                        ReservationState::Shipped => (ResultCode::Ok, false),
                        ReservationState::Confirmed => {
                            for (((sku, _), qty), at) in r.lines.iter().zip(&r.confirmed).zip(&r.at)
                            {
                                let s = self.skus.get_mut(sku).unwrap();
                                s.committed -= u64::from(*qty);
                                s.on_hand = s.on_hand.saturating_sub(u64::from(*qty));
                                for (loc, c) in committed_at(at, *qty) {
                                    let entry = s.locs.as_mut().unwrap().get_mut(&loc).unwrap();
                                    entry.1 = entry.1.saturating_sub(u64::from(c));
                                }
                                s.sum_locations();
                            }
                            let m = self.res.get_mut(&id[..]).unwrap();
                            m.state = ReservationState::Shipped;
                            m.forget_at = now + CONFIG.retention_ms;
                            (ResultCode::Ok, true)
                        }
                        state => (Self::finished(state), false),
                    },
                };
                (OpReply::Ship(code), changed)
            }
            Command::SetStock { sku, on_hand, expected } => {
                if sku.is_empty() {
                    return (
                        OpReply::SetStock(self.sku_reply(ResultCode::InvalidArgument, b"", now)),
                        false,
                    );
                }
                if self.skus.get(&sku[..]).is_some_and(|s| s.locs.is_some()) {
                    return (
                        OpReply::SetStock(self.sku_reply(ResultCode::LocationRequired, sku, now)),
                        false,
                    );
                }
                let current = self.skus.get(&sku[..]).map_or(0, |s| s.on_hand);
                if expected.is_some_and(|e| e != current) {
                    return (
                        OpReply::SetStock(self.sku_reply(ResultCode::ExpectedMismatch, sku, now)),
                        false,
                    );
                }
                let changed = self.skus.get(&sku[..]).is_none_or(|s| s.on_hand != *on_hand);
                self.skus.entry(sku.to_vec()).or_default().on_hand = *on_hand;
                (OpReply::SetStock(self.sku_reply(ResultCode::Ok, sku, now)), changed)
            }
            Command::AdjustStock { sku, delta, expected } => {
                let Some(s) = self.skus.get(&sku[..]).cloned() else {
                    return (
                        OpReply::AdjustStock(self.sku_reply(ResultCode::UnknownSku, sku, now)),
                        false,
                    );
                };
                if s.locs.is_some() {
                    return (
                        OpReply::AdjustStock(self.sku_reply(
                            ResultCode::LocationRequired,
                            sku,
                            now,
                        )),
                        false,
                    );
                }
                if expected.is_some_and(|e| e != s.on_hand) {
                    return (
                        OpReply::AdjustStock(self.sku_reply(
                            ResultCode::ExpectedMismatch,
                            sku,
                            now,
                        )),
                        false,
                    );
                }
                let Some(new) = s.on_hand.checked_add_signed(*delta) else {
                    return (
                        OpReply::AdjustStock(self.sku_reply(ResultCode::InvalidArgument, sku, now)),
                        false,
                    );
                };
                self.skus.get_mut(&sku[..]).unwrap().on_hand = new;
                (OpReply::AdjustStock(self.sku_reply(ResultCode::Ok, sku, now)), *delta != 0)
            }
            Command::DeleteSku { sku } => {
                let reply = |code, info| OpReply::DeleteSku(SkuReply { code, info });
                if !self.skus.contains_key(&sku[..]) {
                    return (reply(ResultCode::UnknownSku, SkuInfo::default()), false);
                }
                // Named by a reservation that is not over (a hold past its deadline until it
                // is ended; a confirmed line of 0 units too)?
                let open = self.res.values().any(|r| {
                    matches!(r.state, ReservationState::Held | ReservationState::Confirmed)
                        && r.lines.iter().any(|(s, _)| s[..] == sku[..])
                });
                if open {
                    return (reply(ResultCode::SkuInUse, self.info(sku, now).unwrap()), false);
                }
                self.skus.remove(&sku[..]);
                (reply(ResultCode::Ok, SkuInfo::default()), true)
            }
            Command::SetSafetyStock { sku, safety_stock } => {
                let Some(s) = self.skus.get_mut(&sku[..]) else {
                    return (
                        OpReply::SetSafetyStock(self.sku_reply(ResultCode::UnknownSku, sku, now)),
                        false,
                    );
                };
                let changed = s.safety != *safety_stock;
                s.safety = *safety_stock;
                (OpReply::SetSafetyStock(self.sku_reply(ResultCode::Ok, sku, now)), changed)
            }
            Command::SetLimits { sku, limits } => {
                let mut channels: Vec<&Bytes> = limits.quotas.iter().map(|q| &q.channel).collect();
                channels.sort();
                let valid = channels.windows(2).all(|w| w[0] != w[1])
                    && channels.iter().all(|c| !c.is_empty())
                    && limits.quotas.iter().all(|q| match q.limit {
                        QuotaLimit::BasisPoints(b) => b <= 10_000,
                        QuotaLimit::Units(_) => true,
                    });
                if !valid {
                    return (
                        OpReply::SetLimits(SkuReply {
                            code: ResultCode::InvalidArgument,
                            info: SkuInfo::default(),
                        }),
                        false,
                    );
                }
                let Some(s) = self.skus.get_mut(&sku[..]) else {
                    return (
                        OpReply::SetLimits(self.sku_reply(ResultCode::UnknownSku, sku, now)),
                        false,
                    );
                };
                let mut wanted = limits.clone();
                wanted.quotas.sort_by(|a, b| a.channel.cmp(&b.channel));
                let wanted = (wanted != SkuLimits::default()).then_some(wanted);
                let changed = s.limits != wanted;
                s.limits = wanted;
                (OpReply::SetLimits(self.sku_reply(ResultCode::Ok, sku, now)), changed)
            }
            Command::Expire { id } => {
                let (code, changed) = match self.res.get(&id[..]) {
                    None => (ResultCode::NotFound, false),
                    Some(r) if r.lapsed(now) => {
                        self.end(id, ReservationState::Expired, None, now);
                        (ResultCode::Ok, true)
                    }
                    Some(_) => (ResultCode::InvalidArgument, false),
                };
                (OpReply::Release(code), changed)
            }
            Command::Forget { id } => {
                let (code, changed) = match self.res.get(&id[..]) {
                    None => (ResultCode::NotFound, false),
                    Some(r) if r.forget_at != 0 && r.forget_at <= now => {
                        self.res.remove(&id[..]);
                        (ResultCode::Ok, true)
                    }
                    Some(_) => (ResultCode::InvalidArgument, false),
                };
                (OpReply::Release(code), changed)
            }
            // Tickets are checked by their own tests (src/aftersales/tests.rs); the generator
            // here never makes one.
            Command::Aftersales(_) => unreachable!("the model does not generate tickets"),
        }
    }

    fn due(&self, now: u64) -> Vec<Command> {
        let mut due: Vec<Command> = self
            .res
            .iter()
            .filter_map(|(id, r)| {
                let id = Bytes::from(id.clone());
                if r.lapsed(now) {
                    Some(Command::Expire { id })
                } else if r.forget_at != 0 && r.forget_at <= now {
                    Some(Command::Forget { id })
                } else {
                    None
                }
            })
            .collect();
        due.sort_by_key(|c| format!("{c:?}"));
        due
    }
}

#[derive(Clone, Debug)]
enum Step {
    SetStock(usize, u64, Option<u64>),
    Adjust(usize, i64, Option<u64>),
    Safety(usize, u64),
    Reserve {
        id: usize,
        lines: Vec<(usize, u32)>,
        ttl: usize,
        channel: usize,
        customer: usize,
    },
    ReserveAt {
        id: usize,
        lines: Vec<(usize, u32)>,
        ttl: usize,
        loc: usize,
        split: bool,
    },
    SetLocation(usize, usize, u64, u32, Option<u64>),
    AdjustLocation(usize, usize, i64, Option<u64>),
    SetIncoming(usize, usize, usize, u64, u64),
    Receive(usize, usize, usize, u64),
    Preorder(usize, u64),
    Delete(usize),
    Limits(usize, SkuLimits),
    Confirm(usize, Option<Vec<(usize, u32)>>),
    Release(usize),
    Extend(usize, usize),
    Ship(usize),
    Advance(u64),
    Sweep,
    /// The dashboard's sampler reads the engine.
    Sample,
    /// Starts a capture of the state for a snapshot, or moves the running one on by this many
    /// entries.
    Capture(usize),
}

fn lines(lines: &[(usize, u32)]) -> Vec<Line> {
    lines.iter().map(|(sku, qty)| Line::new(SKUS[*sku].as_bytes(), *qty)).collect()
}

fn step() -> impl Strategy<Value = Step> {
    let sku = 0..SKUS.len();
    let id = 0..IDS.len();
    let line = (0..SKUS.len(), 0u32..4);
    prop_oneof![
        2 => (0..2usize, 0u64..8, prop::option::weighted(0.2, 0u64..8)).prop_map(|(s, n, e)| Step::SetStock(s, n, e)),
        1 => (sku.clone(), -3i64..4, prop::option::weighted(0.2, 0u64..8)).prop_map(|(s, d, e)| Step::Adjust(s, d, e)),
        1 => (sku.clone(), 0u64..3).prop_map(|(s, n)| Step::Safety(s, n)),
        6 => (id.clone(), prop::collection::vec(line.clone(), 0..4), 0..TTLS.len(), 0..CHANNELS.len(), 0..CUSTOMERS.len())
            .prop_map(|(id, lines, ttl, channel, customer)| Step::Reserve { id, lines, ttl, channel, customer }),
        1 => (0..SKUS.len(), limits()).prop_map(|(s, l)| Step::Limits(s, l)),
        5 => (id.clone(), prop::collection::vec((prop::sample::select(vec![1usize, 2, 2, 2, 3]), 1u32..5), 1..3), 0..3usize, 0..LOCS.len(), any::<bool>())
            .prop_map(|(id, lines, ttl, loc, split)| Step::ReserveAt { id, lines, ttl, loc, split }),
        3 => (1..3usize, 0..LOCS.len(), 0u64..4, 0u32..3, prop::option::weighted(0.2, 0u64..4))
            .prop_map(|(s, l, n, p, e)| Step::SetLocation(s, l, n, p, e)),
        1 => (sku.clone(), 0..LOCS.len(), -2i64..3, prop::option::weighted(0.2, 0u64..4))
            .prop_map(|(s, l, d, e)| Step::AdjustLocation(s, l, d, e)),
        2 => (sku.clone(), 0..LOCS.len(), 0..REFS.len(), 0u64..4, 0u64..3)
            .prop_map(|(s, l, r, n, eta)| Step::SetIncoming(s, l, r, n, eta)),
        2 => (sku.clone(), 0..LOCS.len(), 0..REFS.len(), 0u64..3).prop_map(|(s, l, r, n)| Step::Receive(s, l, r, n)),
        1 => (sku.clone(), 0u64..4).prop_map(|(s, n)| Step::Preorder(s, n)),
        2 => sku.clone().prop_map(Step::Delete),
        3 => (id.clone(), prop::option::of(prop::collection::vec(line, 0..3))).prop_map(|(i, l)| Step::Confirm(i, l)),
        2 => id.clone().prop_map(Step::Release),
        1 => (id.clone(), 0..TTLS.len()).prop_map(|(i, t)| Step::Extend(i, t)),
        1 => id.prop_map(Step::Ship),
        3 => prop::sample::select(vec![0u64, 1, 49, 50, 99, 100, 250, 301]).prop_map(Step::Advance),
        1 => Just(Step::Sweep),
        1 => Just(Step::Sample),
        3 => (1..4usize).prop_map(Step::Capture),
    ]
}

fn limits() -> impl Strategy<Value = SkuLimits> {
    let limit = prop_oneof![
        (0u64..5).prop_map(QuotaLimit::Units),
        prop::sample::select(vec![0u16, 2_500, 5_000, 10_000, 10_001])
            .prop_map(QuotaLimit::BasisPoints),
    ];
    let quota = (prop::sample::select(vec!["live", "web", ""]), limit)
        .prop_map(|(channel, limit)| ChannelQuota { channel: Bytes::from(channel), limit });
    (0u32..4, any::<bool>(), prop::collection::vec(quota, 0..3)).prop_map(
        |(max_per_buyer, shared_pool, quotas)| SkuLimits { max_per_buyer, shared_pool, quotas },
    )
}

fn command(step: &Step) -> Option<Command> {
    let bytes = |s: &str| Bytes::copy_from_slice(s.as_bytes());
    Some(match step {
        Step::SetStock(s, n, e) => {
            Command::SetStock { sku: bytes(SKUS[*s]), on_hand: *n, expected: *e }
        }
        Step::Adjust(s, d, e) => {
            Command::AdjustStock { sku: bytes(SKUS[*s]), delta: *d, expected: *e }
        }
        Step::Safety(s, n) => Command::SetSafetyStock { sku: bytes(SKUS[*s]), safety_stock: *n },
        Step::Reserve { id, lines: l, ttl, channel, customer } => Command::Reserve(Reserve {
            id: bytes(IDS[*id]),
            ttl_ms: TTLS[*ttl],
            channel: bytes(CHANNELS[*channel]),
            customer: bytes(CUSTOMERS[*customer]),
            lines: lines(l),
        }),
        Step::Limits(s, l) => Command::SetLimits { sku: bytes(SKUS[*s]), limits: l.clone() },
        Step::ReserveAt { id, lines: l, ttl, loc, split } => Command::ReserveAt(ReserveAt {
            reserve: Reserve {
                id: bytes(IDS[*id]),
                ttl_ms: TTLS[*ttl],
                channel: Bytes::new(),
                customer: bytes("c1"),
                lines: lines(l),
            },
            location: bytes(LOCS[*loc]),
            split: *split,
        }),
        Step::SetLocation(s, l, n, p, e) => Command::SetLocation {
            sku: bytes(SKUS[*s]),
            location: bytes(LOCS[*l]),
            on_hand: *n,
            priority: *p,
            expected: *e,
        },
        Step::AdjustLocation(s, l, d, e) => Command::AdjustLocation {
            sku: bytes(SKUS[*s]),
            location: bytes(LOCS[*l]),
            delta: *d,
            expected: *e,
        },
        Step::SetIncoming(s, l, r, n, eta) => Command::SetIncoming {
            sku: bytes(SKUS[*s]),
            location: bytes(LOCS[*l]),
            reference: bytes(REFS[*r]),
            qty: *n,
            eta_ms: *eta,
        },
        Step::Receive(s, l, r, n) => Command::ReceiveIncoming {
            sku: bytes(SKUS[*s]),
            location: bytes(LOCS[*l]),
            reference: bytes(REFS[*r]),
            qty: *n,
        },
        Step::Preorder(s, n) => Command::SetPreorder { sku: bytes(SKUS[*s]), preorder_max: *n },
        Step::Delete(s) => Command::DeleteSku { sku: bytes(SKUS[*s]) },
        Step::Confirm(id, l) => Command::Confirm(Confirm {
            id: bytes(IDS[*id]),
            lines: l.as_deref().map(lines).unwrap_or_default(),
        }),
        Step::Release(id) => Command::Release { id: bytes(IDS[*id]) },
        Step::Extend(id, ttl) => Command::Extend { id: bytes(IDS[*id]), ttl_ms: TTLS[*ttl] },
        Step::Ship(id) => Command::Ship { id: bytes(IDS[*id]) },
        Step::Advance(_) | Step::Sweep | Step::Sample | Step::Capture(_) => return None,
    })
}

fn check_agreement(engine: &Engine, model: &Model, now: u64) -> Result<(), TestCaseError> {
    for sku in SKUS {
        let expected = match model.info(sku.as_bytes(), now) {
            Some(info) => SkuReply { code: ResultCode::Ok, info },
            None => SkuReply { code: ResultCode::UnknownSku, info: SkuInfo::default() },
        };
        prop_assert_eq!(engine.query_sku(sku.as_bytes(), now), expected, "sku {}", sku);
        prop_assert_eq!(
            engine.query_limits(sku.as_bytes(), now),
            model.limits_reply(sku.as_bytes(), now),
            "limits of {}",
            sku
        );
        prop_assert_eq!(
            engine.query_locations(sku.as_bytes(), now),
            model.locations_reply(sku.as_bytes(), now),
            "locations of {}",
            sku
        );
    }
    for id in IDS {
        prop_assert_eq!(
            engine.query_reservation(id.as_bytes(), now),
            model.reservation(id.as_bytes(), now),
            "reservation {}",
            id
        );
    }
    // Conservation: every SKU's reserved and committed units are exactly what live holds and
    // unshipped confirmations account for.
    for (sku, s) in &model.skus {
        let committed: u64 = model
            .res
            .values()
            .filter(|r| r.state == ReservationState::Confirmed)
            .flat_map(|r| r.lines.iter().zip(&r.confirmed))
            .filter(|((line_sku, _), _)| line_sku == sku)
            .map(|(_, qty)| u64::from(*qty))
            .sum();
        prop_assert_eq!(s.committed, committed);
    }
    let mut due = engine.due(now, 10_000);
    due.sort_by_key(|c| format!("{c:?}"));
    prop_assert_eq!(&due, &model.due(now));
    // A snapshot image rebuilds exactly the same state: same image, same answers, same due work.
    let image = engine.image();
    let rebuilt = Engine::from_image(CONFIG, &image).expect("an engine's own image loads");
    prop_assert_eq!(&rebuilt.image(), &image);
    for sku in SKUS {
        prop_assert_eq!(
            rebuilt.query_sku(sku.as_bytes(), now),
            engine.query_sku(sku.as_bytes(), now)
        );
        prop_assert_eq!(
            rebuilt.query_limits(sku.as_bytes(), now),
            engine.query_limits(sku.as_bytes(), now)
        );
        prop_assert_eq!(
            rebuilt.query_locations(sku.as_bytes(), now),
            engine.query_locations(sku.as_bytes(), now)
        );
    }
    let mut rebuilt_due = rebuilt.due(now, 10_000);
    // Loaded on several threads (as a large image is), the engine is the same, down to the
    // order of its due work among equal deadlines.
    let threads = Engine::from_image_threads(CONFIG, &image, 3).expect("loads on 3 threads");
    prop_assert_eq!(&threads.image(), &image);
    prop_assert_eq!(&threads.due(now, 10_000), &rebuilt_due);
    rebuilt_due.sort_by_key(|c| format!("{c:?}"));
    prop_assert_eq!(rebuilt_due, due);
    Ok(())
}

/// A starting state with locations, a delivery and preorders, so that short runs reach them.
fn seed() -> Vec<Step> {
    vec![
        Step::SetStock(0, 5, None),
        Step::SetLocation(2, 1, 2, 1, None),
        Step::SetLocation(2, 2, 1, 0, None),
        Step::SetLocation(2, 3, 3, 2, None),
        Step::SetIncoming(2, 2, 0, 2, 9),
        Step::SetStock(1, 1, None),
        Step::SetIncoming(1, 0, 1, 3, 9),
        Step::Preorder(1, 2),
    ]
}

fn run(seeded: bool, steps: &[Step]) -> Result<(), TestCaseError> {
    let engine = Engine::new(CONFIG);
    // What recovery does: a copy that replays only the commands that changed the state (what
    // the log records). It must answer and end up the same.
    let shadow = Engine::new(CONFIG);
    let replay = |command: &Command, now: u64, reply: &OpReply| {
        let mut changed = false;
        let replayed = shadow.apply(command, now, || changed = true);
        prop_assert!(changed, "replay of {:?} changed nothing", command);
        prop_assert_eq!(&replayed, reply);
        Ok(())
    };
    let mut model = Model::default();
    let mut now = 1_000_000u64;
    let seed = if seeded { seed() } else { vec![] };
    // Each SKU's counters and units ever held, as the sampler last reported them.
    let mut sampled: BTreeMap<&str, (Option<SkuInfo>, u64)> = BTreeMap::new();
    // A capture of the state (what snapshots store) running while the steps go on, and the
    // state it must end up with: the engine's at its start.
    let mut capture = None;
    for step in seed.iter().chain(steps) {
        match step {
            Step::Advance(dt) => now += dt,
            Step::Capture(entries) => match capture.take() {
                None => capture = Some((engine.capture(|| ()).0, engine.image())),
                Some((mut running, at_cut)) => {
                    if running.step_by(*entries) {
                        prop_assert_eq!(running.finish().into_image().sorted(), at_cut, "capture");
                    } else {
                        capture = Some((running, at_cut));
                    }
                }
            },
            Step::Sample => {
                // The sampler reads only what changed since its last call, yet its totals are
                // those of a full scan, it reports every SKU that took holds, and each SKU it
                // does not report has the counters it was last reported with.
                let mut visited = BTreeMap::new();
                let totals = engine.sample_activity(now, |sku, info, previous, taken| {
                    let sku = String::from_utf8(sku.to_vec()).unwrap();
                    visited.insert(sku, (info, previous, taken));
                });
                prop_assert_eq!(totals, engine.summary(now));
                // The alert evaluator's incremental listing agrees with a full one.
                let filter = SkuFilter { available_max: Some(1), ..SkuFilter::default() };
                let full = engine.list_skus(&filter, None, 2, now);
                let low = engine.low_stock(1, 2, now);
                prop_assert_eq!((low.rows, low.matched), (full.rows, full.matched));
                for sku in SKUS {
                    let (info, taken) = engine.sku_activity(sku.as_bytes(), now).unzip();
                    let taken = taken.unwrap_or(0);
                    let (seen, before) = sampled.insert(sku, (info, taken)).unwrap_or_default();
                    match visited.get(sku) {
                        Some(&(reported, previous, now_taken)) => {
                            prop_assert_eq!((previous, now_taken), (before, taken), "sku {}", sku);
                            prop_assert_eq!(reported, info, "sku {}", sku);
                        }
                        None => {
                            prop_assert_eq!(taken, before, "sku {} took holds unseen", sku);
                            prop_assert_eq!(info, seen, "sku {} changed unseen", sku);
                        }
                    }
                }
            }
            Step::Sweep => {
                for command in engine.due(now, 10_000) {
                    let mut changed = false;
                    let reply = engine.apply(&command, now, || changed = true);
                    if changed {
                        replay(&command, now, &reply)?;
                    }
                    prop_assert_eq!((reply, changed), model.apply(&command, now));
                }
            }
            _ => {
                let command = command(step).expect("an operation step");
                let before: Vec<(Vec<u8>, Split)> =
                    model.skus.keys().map(|sku| (sku.clone(), model.split(sku, now))).collect();
                let taken_at = |sku: &[u8], location: &[u8]| {
                    let reply = engine.query_locations(sku, now);
                    let l = reply.locations.iter().find(|l| l.location[..] == *location);
                    l.map_or(0, |l| l.reserved + l.committed)
                };
                let locations_before: Vec<(Vec<u8>, Bytes, u64)> = SKUS
                    .iter()
                    .flat_map(|sku| {
                        let reply = engine.query_locations(sku.as_bytes(), now);
                        reply.locations.into_iter().map(move |l| {
                            (sku.as_bytes().to_vec(), l.location, l.reserved + l.committed)
                        })
                    })
                    .collect();
                let mut changed = false;
                let reply = engine.apply(&command, now, || changed = true);
                if changed {
                    replay(&command, now, &reply)?;
                }
                let expected = model.apply(&command, now);
                prop_assert_eq!((&reply, changed), (&expected.0, expected.1), "step {:?}", step);
                // No oversell: a new hold never takes a SKU past its safety floor (above which
                // only the preorder allowance may be sold), nor a location past its stock.
                let reserved = match (&command, &reply) {
                    (Command::Reserve(r), OpReply::Reserve(reply)) => Some((r, reply)),
                    (Command::ReserveAt(r), OpReply::ReserveAt(reply)) => {
                        Some((&r.reserve, &reply.reply))
                    }
                    _ => None,
                };
                if let Some((r, reply)) = reserved {
                    if reply.code.is_ok() && changed {
                        for line in &r.lines {
                            let info = engine.query_sku(&line.sku, now).info;
                            let s = &model.skus[&line.sku[..]];
                            prop_assert!(
                                info.reserved + info.committed + info.safety_stock
                                    <= info.on_hand + s.preorder_room(),
                                "oversold {:?}",
                                info
                            );
                            let locations = engine.query_locations(&line.sku, now);
                            prop_assert!(locations.preordered <= s.preorder_room());
                            // A location already over (its count was set below what it had
                            // sold) is not taken from further.
                            for l in &locations.locations {
                                let incoming = if s.preorder_max > 0 { l.incoming } else { 0 };
                                let prior = locations_before
                                    .iter()
                                    .find(|(sku, id, _)| {
                                        sku[..] == line.sku[..] && *id == l.location
                                    })
                                    .map_or(0, |(_, _, taken)| *taken);
                                let taken = taken_at(&line.sku, &l.location);
                                prop_assert!(
                                    taken <= (l.on_hand + incoming).max(prior),
                                    "location oversold {:?}",
                                    l
                                );
                            }
                            let Some(limits) = model.skus[&line.sku[..]].limits.clone() else {
                                continue;
                            };
                            // No buyer over the limit, no channel over its quota, no pool
                            // overdrawn, because of this reserve.
                            if limits.max_per_buyer > 0 {
                                let used = model.buyer_used(&line.sku, &r.customer, now);
                                prop_assert!(used <= u64::from(limits.max_per_buyer));
                            }
                            let after = model.split(&line.sku, now);
                            let prior =
                                &before.iter().find(|(s, _)| s[..] == line.sku[..]).unwrap().1;
                            prop_assert!(after.pool_used <= prior.pool_used.max(after.pool));
                            for (i, q) in limits.quotas.iter().enumerate() {
                                if q.channel == r.channel && !limits.shared_pool {
                                    let (allocation, used) = after.quotas[i];
                                    prop_assert!(used <= allocation.max(prior.quotas[i].1));
                                }
                            }
                        }
                    }
                }
                // Idempotency: the same command again returns the same reply and changes nothing
                // (reserve, release, ship, and confirm of the same quantities).
                if reply.code().is_ok()
                    && !matches!(
                        command,
                        Command::AdjustStock { .. }
                            | Command::AdjustLocation { .. }
                            | Command::ReceiveIncoming { .. }
                            | Command::Extend { .. }
                    )
                {
                    let mut again = false;
                    let retry = engine.apply(&command, now, || again = true);
                    prop_assert!(!again, "retry of {:?} changed state", command);
                    let model_retry = model.apply(&command, now);
                    prop_assert_eq!(&retry, &model_retry.0);
                    if let Command::Reserve(_) | Command::ReserveAt(_) = command {
                        prop_assert_eq!(&retry, &reply);
                    }
                }
            }
        }
        check_agreement(&engine, &model, now)?;
    }
    prop_assert_eq!(shadow.image(), engine.image(), "the replayed copy differs");
    if let Some((running, at_cut)) = capture {
        prop_assert_eq!(running.finish().into_image().sorted(), at_cut, "capture");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("STOCKD_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512),
        ..ProptestConfig::default()
    })]

    #[test]
    fn engine_matches_reference_model(seeded in any::<bool>(), steps in prop::collection::vec(step(), 1..80)) {
        run(seeded, &steps)?;
    }
}
