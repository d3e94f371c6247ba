//! Stock per location, incoming deliveries, and preorders against them.
//!
//! # Locations
//!
//! A SKU either has no locations (all its stock is in one unnamed place, the default) or keeps
//! its stock per location: then `on_hand`, `reserved` and `committed` of the SKU are the sums
//! over its locations, the safety stock, limits and preorder allowance stay per SKU, and every
//! held line records where its units come from. A SKU gets locations when the first one is
//! set; that is refused with `location_conflict` while it has stock, holds, committed units or
//! deliveries not assigned to a location. On a SKU with locations, plain `SET_STOCK` and
//! `ADJUST_STOCK` are refused with `location_required`. Locations are never removed (set one to
//! zero instead), so allocations recorded on reservations always name an existing location.
//!
//! A line is served after the SKU's own checks (stock, safety stock, limits) pass, from:
//! - the named location, if the reserve names one (`unknown_location` if the SKU does not have
//!   it, `insufficient_stock` if it cannot serve the whole line); else
//! - the first location in priority order (lower first, then by id) that can serve the whole
//!   line; else, if the reserve allows splitting, the locations in that order, each giving
//!   what it has, up to `SPLIT_LOCATIONS_MAX` of them; else `insufficient_stock`.
//!
//! A location can serve `on_hand - reserved - committed` units (its live holds; with preorders
//! enabled its incoming units count as on hand). Confirming fewer units than held keeps the
//! first allocated units and gives back the last; shipping takes the committed units out of
//! the same locations.
//!
//! # Incoming stock and preorders
//!
//! A delivery is identified by its location (none on a SKU without locations) and a reference;
//! it has a quantity and an ETA. Setting one again replaces it, setting it to zero removes it,
//! receiving moves units of it into `on_hand` (of its location). With `preorder_max > 0`, the
//! SKU may sell `min(preorder_max, incoming)` units beyond `on_hand`: its sellable stock is
//! `on_hand + min(preorder_max, incoming) - safety_stock`. So units held or committed beyond
//! `on_hand` (the preordered units) never exceed the allowance at the time they are taken;
//! a later cut of the allowance or of a delivery, like a lower physical count, leaves the SKU
//! with nothing available until stock arrives.

use smallvec::SmallVec;
use stockd_protocol::limits::{INCOMING_PER_SKU_MAX, LOCATIONS_PER_SKU_MAX, SPLIT_LOCATIONS_MAX};
use stockd_protocol::{IncomingInfo, LocationInfo, LocationsReply, ResultCode, SkuReply};

use super::shard::{Counters, Key, Sku};
use super::stock::{finish, refused, Changed};
use super::Engine;

/// One location of a SKU.
#[derive(Debug)]
pub(super) struct Location {
    pub id: Key,
    pub priority: u32,
    pub stock: Counters,
}

/// A SKU's locations, in the order they are chosen: priority, then id.
#[derive(Debug, Default)]
pub(super) struct Locations {
    pub list: Vec<Location>,
}

/// One incoming delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Incoming {
    pub location: Option<Key>,
    pub reference: Key,
    pub qty: u64,
    pub eta_ms: u64,
}

/// A SKU's incoming deliveries (by location, then reference) and preorder allowance.
#[derive(Debug, Default)]
pub(super) struct Supply {
    pub preorder_max: u64,
    pub incoming: Vec<Incoming>,
}

impl Supply {
    /// Units on their way (at most `u64::MAX`: quantities are a client's to set).
    pub fn incoming_total(&self) -> u64 {
        self.incoming.iter().fold(0, |sum, i| sum.saturating_add(i.qty))
    }

    /// Units that may be sold beyond `on_hand`.
    pub fn room(&self) -> u64 {
        if self.preorder_max == 0 {
            return 0;
        }
        self.preorder_max.min(self.incoming_total())
    }

    fn incoming_at(&self, location: &[u8]) -> u64 {
        self.incoming
            .iter()
            .filter(|i| i.location.as_deref() == Some(location))
            .fold(0, |sum, i| sum.saturating_add(i.qty))
    }

    fn find(&self, location: Option<&[u8]>, reference: &[u8]) -> Result<usize, usize> {
        self.incoming.binary_search_by(|i| {
            (i.location.as_deref(), &i.reference[..]).cmp(&(location, reference))
        })
    }
}

/// Where a reserve takes its units from.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Placement<'a> {
    /// A named location, or empty to let the engine choose.
    pub location: &'a [u8],
    pub split: bool,
}

/// The locations one line is taken from.
pub(super) type Allocated = SmallVec<[(Key, u32); 1]>;

impl Sku {
    /// The location with this id. Panics if there is none: allocations only name existing
    /// locations, which are never removed.
    pub fn location_mut(&mut self, id: &[u8]) -> &mut Location {
        let locations = self.locations.as_deref_mut().expect("an allocated SKU has locations");
        locations.list.iter_mut().find(|l| &l.id[..] == id).expect("allocated locations exist")
    }

    /// Units a location can serve now.
    fn location_room(&self, location: &Location, now_ms: u64) -> u64 {
        let incoming = match self.supply.as_deref() {
            Some(supply) if supply.preorder_max > 0 => supply.incoming_at(&location.id),
            _ => 0,
        };
        (location.stock.on_hand + incoming).saturating_sub(location.stock.taken(now_ms))
    }

    /// Chooses the locations a line of `qty` units is taken from (after the SKU's own checks
    /// passed). Empty for a SKU without locations.
    pub fn allocate(
        &self,
        qty: u32,
        placement: Placement<'_>,
        now_ms: u64,
    ) -> Result<Allocated, ResultCode> {
        let Some(locations) = self.locations.as_deref() else {
            return match placement.location {
                [] => Ok(Allocated::new()),
                _ => Err(ResultCode::UnknownLocation),
            };
        };
        let room = |location: &Location| self.location_room(location, now_ms);
        if !placement.location.is_empty() {
            let location = locations
                .list
                .iter()
                .find(|l| &l.id[..] == placement.location)
                .ok_or(ResultCode::UnknownLocation)?;
            return if room(location) >= u64::from(qty) {
                Ok(Allocated::from_elem((location.id.clone(), qty), 1))
            } else {
                Err(ResultCode::InsufficientStock)
            };
        }
        if let Some(location) = locations.list.iter().find(|l| room(l) >= u64::from(qty)) {
            return Ok(Allocated::from_elem((location.id.clone(), qty), 1));
        }
        if placement.split {
            let mut allocated = Allocated::new();
            let mut left = qty;
            for location in locations.list.iter() {
                let take = room(location).min(u64::from(left)) as u32;
                if take == 0 {
                    continue;
                }
                if allocated.len() == SPLIT_LOCATIONS_MAX {
                    break;
                }
                allocated.push((location.id.clone(), take));
                left -= take;
                if left == 0 {
                    return Ok(allocated);
                }
            }
        }
        Err(ResultCode::InsufficientStock)
    }

    /// The SKU's `on_hand` were `location`'s count `on_hand` (added if it is new): none when
    /// that sum does not fit.
    pub fn on_hand_with(&self, location: &[u8], on_hand: u64) -> Option<u64> {
        let list = self.locations.as_deref().map_or(&[][..], |l| &l.list[..]);
        let mut others = list.iter().filter(|l| &l.id[..] != location);
        others.try_fold(on_hand, |sum, l| sum.checked_add(l.stock.on_hand))
    }

    /// Recomputes the SKU's `on_hand` from its locations.
    pub fn sum_locations(&mut self) {
        if let Some(locations) = self.locations.as_deref() {
            self.counters.on_hand = locations.list.iter().map(|l| l.stock.on_hand).sum();
        }
    }

    /// Drops the supply record when it holds nothing.
    pub fn tidy_supply(&mut self) {
        if self.supply.as_deref().is_some_and(|s| s.preorder_max == 0 && s.incoming.is_empty()) {
            self.supply = None;
        }
    }

    /// Whether the SKU can be given its first location: nothing is unassigned.
    fn can_take_locations(&self) -> bool {
        self.on_hand == 0
            && self.reserved == 0
            && self.committed == 0
            && self.supply.as_deref().is_none_or(|s| s.incoming.is_empty())
    }

    /// Checks a delivery's location against the SKU: named (and existing) with locations,
    /// empty without.
    fn delivery_location(&self, location: &[u8]) -> Result<Option<Key>, ResultCode> {
        match (self.locations.as_deref(), location) {
            (None, []) => Ok(None),
            (None, _) => Err(ResultCode::UnknownLocation),
            (Some(_), []) => Err(ResultCode::LocationRequired),
            (Some(locations), _) => locations
                .list
                .iter()
                .find(|l| &l.id[..] == location)
                .map(|l| Some(l.id.clone()))
                .ok_or(ResultCode::UnknownLocation),
        }
    }

    pub fn locations_reply(&self, now_ms: u64) -> LocationsReply {
        let supply = self.supply.as_deref();
        let incoming_at = |id: &[u8]| supply.map_or(0, |s| s.incoming_at(id));
        let locations = self.locations.as_deref().map_or(&[][..], |l| &l.list[..]);
        LocationsReply {
            code: ResultCode::Ok,
            preorder_max: supply.map_or(0, |s| s.preorder_max),
            preordered: self.taken(now_ms).saturating_sub(self.on_hand),
            locations: locations
                .iter()
                .map(|l| LocationInfo {
                    location: bytes::Bytes::copy_from_slice(&l.id),
                    priority: l.priority,
                    on_hand: l.stock.on_hand,
                    reserved: l.stock.live_reserved(now_ms),
                    committed: l.stock.committed,
                    incoming: incoming_at(&l.id),
                    available: self.location_room(l, now_ms),
                })
                .collect(),
            incoming: supply
                .map_or(&[][..], |s| &s.incoming[..])
                .iter()
                .map(|i| IncomingInfo {
                    location: i
                        .location
                        .as_deref()
                        .map(bytes::Bytes::copy_from_slice)
                        .unwrap_or_default(),
                    reference: bytes::Bytes::copy_from_slice(&i.reference),
                    qty: i.qty,
                    eta_ms: i.eta_ms,
                })
                .collect(),
        }
    }
}

impl Engine {
    /// Sets one location's physical count and priority, creating the SKU and the location if
    /// new. `expected` checks the location's current count (0 for a new one).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn set_location(
        &self,
        sku: &[u8],
        location: &[u8],
        on_hand: u64,
        priority: u32,
        expected: Option<u64>,
        now_ms: u64,
        on_change: impl FnOnce(),
    ) -> Changed {
        if sku.is_empty() || location.is_empty() {
            return refused(ResultCode::InvalidArgument);
        }
        let mut shard = self.shards[self.shard_of(sku)].lock();
        let state = shard.skus.get(sku);
        let existing = state
            .and_then(|s| s.locations.as_deref())
            .and_then(|locations| locations.list.iter().find(|l| &l.id[..] == location));
        let refusal = match (state, existing) {
            (Some(state), None) if state.locations.is_none() && !state.can_take_locations() => {
                Some(ResultCode::LocationConflict)
            }
            (Some(state), None)
                if state
                    .locations
                    .as_deref()
                    .is_some_and(|l| l.list.len() >= usize::from(LOCATIONS_PER_SKU_MAX)) =>
            {
                Some(ResultCode::TooLarge)
            }
            _ if expected.is_some_and(|e| e != existing.map_or(0, |l| l.stock.on_hand)) => {
                Some(ResultCode::ExpectedMismatch)
            }
            // The SKU's count is the sum of its locations': it must fit.
            (Some(state), _) if state.on_hand_with(location, on_hand).is_none() => {
                Some(ResultCode::InvalidArgument)
            }
            _ => None,
        };
        if let Some(code) = refusal {
            let info = state.map(|s| s.info(now_ms)).unwrap_or_default();
            return (SkuReply { code, info }, None);
        }
        let unchanged =
            existing.is_some_and(|l| l.stock.on_hand == on_hand && l.priority == priority);
        let (state, _) = shard.skus.get_or_insert(sku);
        let before = state.info(now_ms);
        let locations = state.locations.get_or_insert_with(Box::default);
        match locations.list.iter_mut().find(|l| &l.id[..] == location) {
            Some(entry) => {
                entry.stock.on_hand = on_hand;
                entry.priority = priority;
            }
            None => {
                let stock = Counters { on_hand, ..Counters::default() };
                locations.list.push(Location { id: Key::from(location), priority, stock });
            }
        }
        locations.list.sort_by(|a, b| (a.priority, &a.id).cmp(&(b.priority, &b.id)));
        state.sum_locations();
        finish(state.info(now_ms), (!unchanged).then_some(before), on_change)
    }

    /// Adds `delta` to one location's physical count.
    pub(super) fn adjust_location(
        &self,
        sku: &[u8],
        location: &[u8],
        delta: i64,
        expected: Option<u64>,
        now_ms: u64,
        on_change: impl FnOnce(),
    ) -> Changed {
        self.change_sku(sku, now_ms, on_change, |state| {
            let entry = state
                .locations
                .as_deref_mut()
                .and_then(|locations| locations.list.iter_mut().find(|l| &l.id[..] == location))
                .ok_or(ResultCode::UnknownLocation)?;
            if expected.is_some_and(|expected| expected != entry.stock.on_hand) {
                return Err(ResultCode::ExpectedMismatch);
            }
            let on_hand =
                entry.stock.on_hand.checked_add_signed(delta).ok_or(ResultCode::InvalidArgument)?;
            // The SKU's count is the sum of its locations': it must fit.
            state.on_hand_with(location, on_hand).ok_or(ResultCode::InvalidArgument)?;
            state.location_mut(location).stock.on_hand = on_hand;
            state.sum_locations();
            Ok(delta != 0)
        })
    }

    /// Records, replaces or (with `qty` 0) removes an incoming delivery.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn set_incoming(
        &self,
        sku: &[u8],
        location: &[u8],
        reference: &[u8],
        qty: u64,
        eta_ms: u64,
        now_ms: u64,
        on_change: impl FnOnce(),
    ) -> Changed {
        if reference.is_empty() {
            return refused(ResultCode::InvalidArgument);
        }
        self.change_sku(sku, now_ms, on_change, |state| {
            let location = state.delivery_location(location)?;
            let supply = state.supply.get_or_insert_with(Box::default);
            Ok(match (supply.find(location.as_deref(), reference), qty) {
                (Err(_), 0) => false,
                (Ok(index), 0) => {
                    supply.incoming.remove(index);
                    true
                }
                (Ok(index), _) => {
                    let entry = &mut supply.incoming[index];
                    let changed = entry.qty != qty || entry.eta_ms != eta_ms;
                    (entry.qty, entry.eta_ms) = (qty, eta_ms);
                    changed
                }
                (Err(_), _) if supply.incoming.len() >= usize::from(INCOMING_PER_SKU_MAX) => {
                    return Err(ResultCode::TooLarge);
                }
                (Err(index), _) => {
                    let reference = Key::from(reference);
                    supply.incoming.insert(index, Incoming { location, reference, qty, eta_ms });
                    true
                }
            })
        })
    }

    /// Moves `qty` units (0 = all) of an incoming delivery into `on_hand`.
    pub(super) fn receive_incoming(
        &self,
        sku: &[u8],
        location: &[u8],
        reference: &[u8],
        qty: u64,
        now_ms: u64,
        on_change: impl FnOnce(),
    ) -> Changed {
        self.change_sku(sku, now_ms, on_change, |state| {
            let location = state.delivery_location(location)?;
            let on_hand = state.on_hand;
            let supply = state.supply.as_deref_mut().ok_or(ResultCode::NotFound)?;
            let index =
                supply.find(location.as_deref(), reference).map_err(|_| ResultCode::NotFound)?;
            let entry = &mut supply.incoming[index];
            let qty = if qty == 0 { entry.qty } else { qty };
            // The SKU's count (a location's is part of it) must fit what is received.
            if qty > entry.qty || on_hand.checked_add(qty).is_none() {
                return Err(ResultCode::InvalidArgument);
            }
            entry.qty -= qty;
            if entry.qty == 0 {
                supply.incoming.remove(index);
            }
            match &location {
                Some(location) => {
                    state.location_mut(location).stock.on_hand += qty;
                    state.sum_locations();
                }
                None => state.counters.on_hand += qty,
            }
            Ok(true)
        })
    }

    /// Sets how many units may be sold beyond `on_hand` against incoming stock.
    pub(super) fn set_preorder(
        &self,
        sku: &[u8],
        preorder_max: u64,
        now_ms: u64,
        on_change: impl FnOnce(),
    ) -> Changed {
        self.change_sku(sku, now_ms, on_change, |state| {
            let supply = state.supply.get_or_insert_with(Box::default);
            let changed = supply.preorder_max != preorder_max;
            supply.preorder_max = preorder_max;
            Ok(changed)
        })
    }

    /// A SKU's locations, incoming deliveries and preorder allowance as of `now_ms`.
    pub fn query_locations(&self, sku: &[u8], now_ms: u64) -> LocationsReply {
        let shard = self.shards[self.shard_of(sku)].lock();
        match shard.skus.get(sku) {
            Some(state) => state.locations_reply(now_ms),
            None => LocationsReply::refused(ResultCode::UnknownSku),
        }
    }
}
