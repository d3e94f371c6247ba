//! One shard's state (SKUs, reservations, and their time indexes) and the set of shard locks
//! an operation holds.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use bytes::Bytes;
use indexmap::IndexMap;
use parking_lot::MutexGuard;
use smallvec::SmallVec;
use stockd_protocol::{ReservationInfo, ReservationLine, ReservationState, ResultCode, SkuInfo};

use super::capture::Copying;
use super::limits::{Counted, Limits};
use super::locations::{Locations, Supply};
use super::{Command, Image};

/// Interned id bytes, shared between the maps, the time indexes and reservation lines.
pub(super) type Key = Arc<[u8]>;

/// Held units by deadline: what tells, at any time, how many of a total of held units have
/// lapsed (their deadline passed) without waiting for the sweep, which keeps the lapsed range
/// short.
///
/// Most SKUs of a large catalogue hold units at one or two deadlines at a time, and those are
/// kept in place ([`Deadlines::Few`]): no allocation, and the same size as an empty tree with
/// its earliest deadline beside it. A SKU with more deadlines (a hot one, with hundreds of
/// thousands) keeps a tree, and its earliest deadline beside it, so that most reads learn
/// that nothing has lapsed without reaching into the tree: a reserve on a hot SKU, and the
/// dashboard's sampler, which reads every SKU every second. A tree goes back in place once
/// one deadline is left (not at two, so that a SKU going between two and three deadlines does
/// not allocate and free a tree each time).
#[derive(Debug, Clone)]
pub(super) struct HeldByDeadline(Deadlines);

#[derive(Debug, Clone)]
enum Deadlines {
    /// `len` (0 to 2) deadlines, earliest first, with their units.
    Few { len: u8, at_ms: [u64; 2], units: [u32; 2] },
    /// More deadlines, or more units at one than a `u32` counts.
    Many(Box<Tree>),
}

#[derive(Debug, Clone)]
struct Tree {
    units: BTreeMap<u64, u64>,
    /// The earliest key of `units` (never empty).
    earliest_ms: u64,
}

impl Default for HeldByDeadline {
    fn default() -> HeldByDeadline {
        HeldByDeadline(Deadlines::Few { len: 0, at_ms: [0; 2], units: [0; 2] })
    }
}

/// Equal when the same units are held at the same deadlines, however they are kept.
impl PartialEq for HeldByDeadline {
    fn eq(&self, other: &HeldByDeadline) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for HeldByDeadline {}

impl HeldByDeadline {
    pub fn add(&mut self, qty: u64, expires_at_ms: u64) {
        if let Deadlines::Few { len, at_ms, units } = &mut self.0 {
            let n = usize::from(*len);
            let small = u32::try_from(qty).ok();
            match at_ms[..n].iter().position(|at| *at == expires_at_ms) {
                Some(i) => {
                    if let Some(sum) = small.and_then(|qty| units[i].checked_add(qty)) {
                        units[i] = sum;
                        return;
                    }
                }
                None if n < 2 => {
                    if let Some(qty) = small {
                        let i = at_ms[..n].iter().take_while(|at| **at < expires_at_ms).count();
                        at_ms.copy_within(i..n, i + 1);
                        units.copy_within(i..n, i + 1);
                        (at_ms[i], units[i]) = (expires_at_ms, qty);
                        *len += 1;
                        return;
                    }
                }
                None => {}
            }
            let earliest_ms = if n == 0 { u64::MAX } else { at_ms[0] };
            let units = self.iter().collect();
            self.0 = Deadlines::Many(Box::new(Tree { units, earliest_ms }));
        }
        let Deadlines::Many(tree) = &mut self.0 else { unreachable!("moved to a tree above") };
        *tree.units.entry(expires_at_ms).or_default() += qty;
        tree.earliest_ms = tree.earliest_ms.min(expires_at_ms);
    }

    /// Takes back `qty` units added with this deadline; panics if they were not.
    pub fn remove(&mut self, qty: u64, expires_at_ms: u64) {
        match &mut self.0 {
            Deadlines::Few { len, at_ms, units } => {
                let n = usize::from(*len);
                let i = at_ms[..n]
                    .iter()
                    .position(|at| *at == expires_at_ms)
                    .expect("held units have their deadline");
                assert!(u64::from(units[i]) >= qty, "held units are accounted for");
                units[i] -= qty as u32;
                if units[i] == 0 {
                    at_ms.copy_within(i + 1..n, i);
                    units.copy_within(i + 1..n, i);
                    *len -= 1;
                }
            }
            Deadlines::Many(tree) => {
                let slot =
                    tree.units.get_mut(&expires_at_ms).expect("held units have their deadline");
                assert!(*slot >= qty, "held units are accounted for");
                *slot -= qty;
                if *slot == 0 {
                    tree.units.remove(&expires_at_ms);
                    if expires_at_ms == tree.earliest_ms {
                        tree.earliest_ms =
                            tree.units.first_key_value().map_or(u64::MAX, |(at, _)| *at);
                    }
                }
                if tree.units.len() > 1 {
                    return;
                }
                match tree.units.first_key_value() {
                    None => *self = HeldByDeadline::default(),
                    Some((&at, &left)) => {
                        if let Ok(left) = u32::try_from(left) {
                            self.0 = Deadlines::Few { len: 1, at_ms: [at, 0], units: [left, 0] };
                        }
                    }
                }
            }
        }
    }

    /// Units whose deadline has passed at `now_ms`.
    pub fn lapsed(&self, now_ms: u64) -> u64 {
        match &self.0 {
            Deadlines::Few { len, at_ms, units } => (0..usize::from(*len))
                .take_while(|i| at_ms[*i] <= now_ms)
                .map(|i| u64::from(units[i]))
                .sum(),
            Deadlines::Many(tree) if tree.earliest_ms > now_ms => 0,
            Deadlines::Many(tree) => tree.units.range(..=now_ms).map(|(_, qty)| qty).sum(),
        }
    }

    /// Every deadline with its units, earliest first.
    fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let (few, many) = match &self.0 {
            Deadlines::Few { len, at_ms, units } => {
                let few = (0..usize::from(*len)).map(|i| (at_ms[i], u64::from(units[i])));
                (Some(few), None)
            }
            Deadlines::Many(tree) => (None, Some(tree.units.iter().map(|(at, qty)| (*at, *qty)))),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }
}

/// Stock counters: of a SKU as a whole, and of each of its locations.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub on_hand: u64,
    /// Units held by reservations in state `Held`, including holds past their deadline that the
    /// sweep has not processed yet (`holds` tells which).
    pub reserved: u64,
    pub committed: u64,
    /// The held units by deadline. Reads subtract the units whose deadline has passed, which
    /// makes expiry exact without waiting for the sweep.
    pub holds: HeldByDeadline,
}

impl Counters {
    pub fn live_reserved(&self, now_ms: u64) -> u64 {
        self.reserved - self.holds.lapsed(now_ms)
    }

    /// Units held (live) or committed.
    pub fn taken(&self, now_ms: u64) -> u64 {
        self.live_reserved(now_ms) + self.committed
    }

    pub fn hold(&mut self, qty: u64, expires_at_ms: u64) {
        self.reserved += qty;
        self.holds.add(qty, expires_at_ms);
    }

    pub fn unhold(&mut self, qty: u64, expires_at_ms: u64) {
        assert!(self.reserved >= qty, "held units are accounted for");
        self.holds.remove(qty, expires_at_ms);
        self.reserved -= qty;
    }

    /// Takes `qty` committed units out of stock (shipping).
    pub fn ship(&mut self, qty: u64) {
        assert!(self.committed >= qty, "committed units are accounted for");
        self.committed -= qty;
        // A physical count set below what was sold leaves nothing more to take out.
        self.on_hand = self.on_hand.saturating_sub(qty);
    }
}

/// One SKU: its counters (as a whole; reachable as `sku.on_hand` and so on), and what is
/// optional per SKU, boxed so that a plain SKU stays small.
#[derive(Debug, Default)]
pub(super) struct Sku {
    pub counters: Counters,
    pub safety_stock: u64,
    /// Units ever held (monotonic, not persisted): the dashboard's sell rate is its slope.
    pub taken_total: u64,
    /// `taken_total` when the activity sampler last looked (see `Engine::sample_activity`).
    pub sampled_taken: u64,
    /// What this SKU added to the sampler's totals when it last looked.
    pub sampled: Contribution,
    /// Bit `w` set: changed since watcher `w` last looked, and listed in its list of changed
    /// SKUs ([`Skus`]).
    pub listed: u8,
    /// Per-buyer limit and channel quotas, with the uses they are checked against.
    pub limits: Option<Box<Limits>>,
    /// Stock per location (when the SKU has locations, `counters` are their sums).
    pub locations: Option<Box<Locations>>,
    /// Incoming deliveries and the preorder allowance.
    pub supply: Option<Box<Supply>>,
    /// Lines naming this SKU of reservations that are not over (held, past their deadline
    /// too until ended, or confirmed and not shipped, with any number of units): a SKU is
    /// deleted only when there are none.
    pub open_lines: u64,
    /// Deleted (`DELETE_SKU`): unknown to every operation, everything else at its default
    /// but the watchers' own fields. The entry stays (positions are stable, and reservations
    /// that are over may still name it) until a stock change creates the SKU again.
    pub deleted: bool,
}

impl Deref for Sku {
    type Target = Counters;
    fn deref(&self) -> &Counters {
        &self.counters
    }
}

impl DerefMut for Sku {
    fn deref_mut(&mut self) -> &mut Counters {
        &mut self.counters
    }
}

/// A SKU's part of the state's totals (`Engine::sample_activity`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Contribution {
    pub on_hand: u64,
    pub held: u64,
    pub committed: u64,
    pub paused: bool,
}

impl Contribution {
    pub fn of(info: &SkuInfo) -> Contribution {
        Contribution {
            on_hand: info.on_hand,
            held: info.reserved,
            committed: info.committed,
            paused: info.paused,
        }
    }
}

impl Sku {
    /// Units that may be sold beyond `on_hand` now: the preorder allowance, up to what is
    /// incoming.
    pub fn preorder_room(&self) -> u64 {
        self.supply.as_deref().map_or(0, Supply::room)
    }

    /// Units that may be sold in all: on hand and preorder room, above the safety stock.
    pub fn sellable(&self) -> u64 {
        (self.on_hand + self.preorder_room()).saturating_sub(self.safety_stock)
    }

    /// Units not held or committed (may be below the safety stock), preorder room included.
    fn free(&self, now_ms: u64) -> u64 {
        (self.on_hand + self.preorder_room()).saturating_sub(self.taken(now_ms))
    }

    pub fn info(&self, now_ms: u64) -> SkuInfo {
        let free = self.free(now_ms);
        let available = free.saturating_sub(self.safety_stock);
        SkuInfo {
            on_hand: self.on_hand,
            reserved: self.live_reserved(now_ms),
            committed: self.committed,
            safety_stock: self.safety_stock,
            available,
            paused: self.safety_stock > 0 && available == 0,
        }
    }

    /// Whether `qty` more units can be held. The rejection order is part of the contract:
    /// a paused SKU says so before anything else; a line that fits in stock but not above the
    /// safety floor is `below_safety_stock`; anything larger is `insufficient_stock`.
    pub fn check_take(&self, qty: u64, now_ms: u64) -> Result<(), ResultCode> {
        let free = self.free(now_ms);
        let available = free.saturating_sub(self.safety_stock);
        if qty <= available {
            Ok(())
        } else if self.safety_stock > 0 && available == 0 {
            Err(ResultCode::SkuPaused)
        } else if qty <= free {
            Err(ResultCode::BelowSafetyStock)
        } else {
            Err(ResultCode::InsufficientStock)
        }
    }

    /// Holds a line: the SKU's counters and those of the locations it is taken from.
    pub fn hold_line(&mut self, line: &HeldLine, expires_at_ms: u64) {
        let qty = u64::from(line.qty);
        self.open_lines += 1;
        self.counters.hold(qty, expires_at_ms);
        self.taken_total += qty;
        for (location, qty) in line.at.iter() {
            self.location_mut(location).stock.hold(u64::from(*qty), expires_at_ms);
        }
    }

    /// Moves a held line to a new deadline (an extension: nothing more is taken).
    pub fn rehold_line(&mut self, line: &HeldLine, old_ms: u64, new_ms: u64) {
        self.unhold_line(line, old_ms);
        self.hold_line(line, new_ms);
        self.taken_total -= u64::from(line.qty);
    }

    /// Undoes `hold_line`.
    pub fn unhold_line(&mut self, line: &HeldLine, expires_at_ms: u64) {
        self.open_lines -= 1;
        self.counters.unhold(u64::from(line.qty), expires_at_ms);
        for (location, qty) in line.at.iter() {
            self.location_mut(location).stock.unhold(u64::from(*qty), expires_at_ms);
        }
    }

    /// Commits `bought` units of a line that is no longer held, at the locations
    /// `HeldLine::committed_at` names.
    pub fn commit_line(&mut self, line: &HeldLine, bought: u32) {
        self.open_lines += 1;
        self.counters.committed += u64::from(bought);
        for (location, qty) in line.committed_at(bought) {
            self.location_mut(location).stock.committed += u64::from(qty);
        }
    }

    /// Ships the `bought` committed units of a line.
    pub fn ship_line(&mut self, line: &HeldLine, bought: u32) {
        self.open_lines -= 1;
        self.counters.ship(u64::from(bought));
        for (location, qty) in line.committed_at(bought) {
            self.location_mut(location).stock.ship(u64::from(qty));
        }
        // Each location stops at zero on its own, so the sum is the SKU's count.
        self.sum_locations();
    }
}

/// One line of a stored reservation. Lines are sorted by SKU with duplicates merged.
#[derive(Debug, Clone)]
pub(super) struct HeldLine {
    pub sku: Key,
    pub qty: u32,
    /// Units bought, 0 until the reservation is confirmed (then up to `qty`).
    pub confirmed: u32,
    /// Where the units are taken from, in the order they were allocated (empty for a SKU
    /// without locations). The quantities add up to `qty`.
    pub at: Box<[(Key, u32)]>,
}

impl HeldLine {
    /// Where `bought` confirmed units of this line are committed: the allocations in order,
    /// each up to its quantity, so a partial confirm gives back the last allocated units.
    pub fn committed_at(&self, bought: u32) -> impl Iterator<Item = (&Key, u32)> {
        self.at.iter().scan(bought, |left, (location, qty)| {
            let take = (*left).min(*qty);
            *left -= take;
            Some((location, take))
        })
    }
}

/// A reservation's lines, read as a slice. Most reservations have one line, kept in place
/// (no allocation of its own); more go in a boxed slice.
#[derive(Debug, Clone)]
pub(super) enum Lines {
    One(HeldLine),
    Many(Box<[HeldLine]>),
}

impl Deref for Lines {
    type Target = [HeldLine];

    fn deref(&self) -> &[HeldLine] {
        match self {
            Lines::One(line) => std::slice::from_ref(line),
            Lines::Many(lines) => lines,
        }
    }
}

impl DerefMut for Lines {
    fn deref_mut(&mut self) -> &mut [HeldLine] {
        match self {
            Lines::One(line) => std::slice::from_mut(line),
            Lines::Many(lines) => lines,
        }
    }
}

impl FromIterator<HeldLine> for Lines {
    fn from_iter<I: IntoIterator<Item = HeldLine>>(iter: I) -> Self {
        let mut iter = iter.into_iter();
        let first = iter.next().expect("a reservation has at least one line");
        match iter.next() {
            None => Lines::One(first),
            Some(second) => Lines::Many([first, second].into_iter().chain(iter).collect()),
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Reservation {
    pub state: ReservationState,
    pub lines: Lines,
    /// TTL as requested (0 = default), part of the content compared on retries.
    pub ttl_ms: u32,
    pub channel: Option<Key>,
    pub customer: Option<Key>,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    /// When a finished reservation may be forgotten (0 while not finished).
    pub forget_at_ms: u64,
    /// Its ticket in the shard's deadline index while held, in its retirement index once
    /// finished (see [`TimeIndex`]); unused while confirmed.
    pub ticket: u64,
}

impl Reservation {
    /// The tags per-buyer limits and channel quotas count this reservation by.
    pub fn counted(&self) -> Counted {
        Counted { channel: self.channel.clone(), customer: self.customer.clone() }
    }

    /// Held and past its deadline: to be treated as expired.
    pub fn lapsed(&self, now_ms: u64) -> bool {
        self.state == ReservationState::Held && now_ms >= self.expires_at_ms
    }

    pub fn info(&self, now_ms: u64) -> ReservationInfo {
        let state = if self.lapsed(now_ms) { ReservationState::Expired } else { self.state };
        let bytes = |tag: &Option<Key>| tag.as_deref().map(Bytes::copy_from_slice);
        ReservationInfo {
            state,
            created_at_ms: self.created_at_ms,
            expires_at_ms: self.expires_at_ms,
            channel: bytes(&self.channel).unwrap_or_default(),
            customer: bytes(&self.customer).unwrap_or_default(),
            lines: self
                .lines
                .iter()
                .map(|line| ReservationLine {
                    sku: Bytes::copy_from_slice(&line.sku),
                    qty_held: line.qty,
                    qty_confirmed: line.confirmed,
                })
                .collect(),
        }
    }
}

/// Who follows the SKUs' changes (`Engine::refresh`): each keeps its own list of the SKUs
/// changed since it last looked.
#[derive(Clone, Copy, Debug)]
pub(super) enum Watcher {
    /// The dashboard's sampler (`Engine::sample_activity`).
    Sampler = 0,
    /// The alert evaluator (`Engine::low_stock`).
    Alerts = 1,
}

const WATCHERS: usize = 2;
const LISTED_BY_ALL: u8 = (1 << WATCHERS) - 1;

impl Watcher {
    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// The SKUs of a shard, and which of them changed since each [`Watcher`] last looked.
///
/// SKUs are kept in insertion order, in a dense vector behind a hash index: reading every SKU
/// (listings, a watcher's first pass) walks memory in order, and can stop at a position, drop
/// the lock and go on from there. Entries are never removed, so positions are stable: a
/// deleted SKU stays as an entry marked `deleted` (a tombstone), which lookups by id do not
/// find and positional reads (`slots`, the watchers) must check.
///
/// Every change goes through [`Skus::get_mut`], [`Skus::entry_for_reservation`],
/// [`Skus::get_or_insert`] or [`Skus::insert_new`], which list the SKU for every watcher
/// (once per watcher, until it takes its list): what lets the watchers read only the SKUs
/// that changed instead of all of them. They also first save a SKU a running capture still
/// needs as it is (`super::capture`). The one mutable access that skips the lists is
/// [`Skus::entries_mut`] / [`Skus::entry_mut`], for the watchers' own fields.
#[derive(Debug, Default)]
pub(super) struct Skus {
    map: IndexMap<Key, Sku, ahash::RandomState>,
    /// Entries that are deleted SKUs.
    deleted: usize,
    changed: ChangeLists,
    /// While a capture runs and has not finished this shard: the SKUs' state at the cut
    /// (`super::capture`).
    pub(super) copying: Option<Box<Copying<Image>>>,
}

/// Per watcher, the positions of the SKUs with its bit of `listed` set: one entry per SKU (two
/// for a SKU changed twice while a watcher's first pass went past it, which reads it again), so
/// a list stays bounded by the number of SKUs when its watcher does not run.
#[derive(Debug, Default)]
struct ChangeLists {
    lists: [Vec<usize>; WATCHERS],
}

impl ChangeLists {
    /// Lists the SKU at `index` for the watchers in `bits` that have not listed it yet.
    fn list(&mut self, index: usize, state: &mut Sku, bits: u8) {
        let new = bits & !state.listed;
        if new == 0 {
            return;
        }
        state.listed |= new;
        for (w, list) in self.lists.iter_mut().enumerate() {
            if new & (1 << w) != 0 {
                list.push(index);
            }
        }
    }
}

impl Skus {
    /// A SKU (not a deleted one).
    pub fn get(&self, sku: &[u8]) -> Option<&Sku> {
        self.map.get(sku).filter(|state| !state.deleted)
    }

    /// A SKU (not a deleted one), its position and its stored id: to check it, and then to
    /// change it through [`Skus::entry_at`] without looking it up again (positions stay put
    /// while the shard is locked).
    pub fn find_live(&self, sku: &[u8]) -> Option<(usize, &Key, &Sku)> {
        self.map.get_full(sku).filter(|(_, _, state)| !state.deleted)
    }

    /// A deleted SKU's stored id.
    pub fn deleted_key(&self, sku: &[u8]) -> Option<&Key> {
        self.map.get_key_value(sku).filter(|(_, state)| state.deleted).map(|(key, _)| key)
    }

    /// Entries, deleted SKUs included: positions for chunked reads.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// SKUs that are not deleted.
    pub fn live(&self) -> usize {
        self.map.len() - self.deleted
    }

    /// The entries in position order, deleted SKUs included (check `Sku::deleted`).
    pub fn slots(&self) -> &indexmap::map::Slice<Key, Sku> {
        self.map.as_slice()
    }

    /// A SKU to change (not a deleted one).
    pub fn get_mut(&mut self, sku: &[u8]) -> Option<&mut Sku> {
        let index = self.map.get_index_of(sku)?;
        if self.map[index].deleted {
            return None;
        }
        Some(self.change(index))
    }

    /// The entry of a SKU a stored reservation names, to change: found even when deleted
    /// (only a reservation that is over names a deleted SKU, and changes no count of it).
    pub fn entry_for_reservation(&mut self, sku: &[u8]) -> Option<&mut Sku> {
        let index = self.map.get_index_of(sku)?;
        Some(self.change(index))
    }

    /// A SKU's entry, deleted or not, with its position and stored id (for loading an image,
    /// which then changes it through [`Skus::entry_at`] without a second lookup).
    pub fn find(&self, sku: &[u8]) -> Option<(usize, &Key, &Sku)> {
        self.map.get_full(sku)
    }

    /// The entry at a position [`Skus::find`] or [`Skus::find_live`] gave, about to change.
    pub fn entry_at(&mut self, index: usize) -> &mut Sku {
        self.change(index)
    }

    /// Room for `additional` more SKUs without growing (loading an image of known size).
    pub fn reserve(&mut self, additional: usize) {
        self.map.reserve(additional);
    }

    /// Gives back the spare room of the table (which doubles as it grows, and keeps each
    /// entry's room up to its capacity): once the state is recovered, when few SKUs are added.
    pub fn shrink_to_fit(&mut self) {
        self.map.shrink_to_fit();
    }

    /// The entry at `index`, about to change: saved first for a running capture, and listed
    /// for every watcher.
    fn change(&mut self, index: usize) -> &mut Sku {
        let (key, state) = self.map.get_index_mut(index).expect("a position in range");
        if let Some(copying) = &mut self.copying {
            copying.before_change(index, |rows| rows.push_sku(key, state));
        }
        self.changed.list(index, state, LISTED_BY_ALL);
        state
    }

    /// A SKU to change, created empty if unknown or deleted; and whether it was created.
    pub fn get_or_insert(&mut self, sku: &[u8]) -> (&mut Sku, bool) {
        let (index, new) = match self.map.get_index_of(sku) {
            Some(index) => (index, false),
            None => (self.map.insert_full(Key::from(sku), Sku::default()).0, true),
        };
        let revived = self.map[index].deleted;
        let state = self.change(index);
        if revived {
            state.deleted = false;
            self.deleted -= 1;
        }
        (&mut self.map[index], new || revived)
    }

    /// Deletes a SKU that exists and is not deleted: resets it to a tombstone (see
    /// [`Sku::deleted`]). Returns false if there is no such SKU.
    pub fn delete(&mut self, sku: &[u8]) -> bool {
        let Some(state) = self.get_mut(sku) else { return false };
        // `taken_total` starts again (the sampler drops a deleted SKU's sell rate); what the
        // watchers last read of it is kept, so that they correct their totals.
        *state = Sku {
            deleted: true,
            sampled_taken: state.sampled_taken,
            sampled: state.sampled,
            listed: state.listed,
            ..Sku::default()
        };
        self.deleted += 1;
        true
    }

    /// Adds a new SKU; false (and no change) if an entry with its id exists, deleted or not.
    pub fn insert_new(&mut self, sku: Key, state: Sku) -> bool {
        let deleted = state.deleted;
        match self.map.entry(sku) {
            indexmap::map::Entry::Occupied(_) => false,
            indexmap::map::Entry::Vacant(vacant) => {
                let index = vacant.index();
                let state = vacant.insert(state);
                self.changed.list(index, state, LISTED_BY_ALL);
                self.deleted += usize::from(deleted);
                true
            }
        }
    }

    /// Lists the SKU as changed for `watcher` (time alone changed its counters: holds
    /// lapsed).
    pub fn touch(&mut self, sku: &[u8], watcher: Watcher) {
        if let Some((index, _, state)) = self.map.get_full_mut(sku) {
            self.changed.list(index, state, watcher.bit());
        }
    }

    /// Takes `watcher`'s list of changed SKUs. Their bits stay set until the watcher has read
    /// each (`Sku::listed`), so a change in between is not listed twice.
    pub fn take_changed(&mut self, watcher: Watcher) -> Vec<usize> {
        std::mem::take(&mut self.changed.lists[watcher as usize])
    }

    /// The SKUs at positions `range`, for the watchers, which change only their own fields.
    pub fn entries_mut(
        &mut self,
        range: std::ops::Range<usize>,
    ) -> impl Iterator<Item = (&Key, &mut Sku)> {
        self.map.as_mut_slice()[range].iter_mut()
    }

    /// The SKU at `index`, for the watchers (as `entries_mut`).
    pub fn entry_mut(&mut self, index: usize) -> (&Key, &mut Sku) {
        self.map.get_index_mut(index).expect("SKUs are never removed")
    }
}

impl Sku {
    /// `watcher` has read this SKU as it is now.
    pub fn seen_by(&mut self, watcher: Watcher) {
        self.listed &= !watcher.bit();
    }
}

/// The reservations of a shard.
///
/// Kept in a dense vector behind a hash index, like the SKUs, so that a capture of the state
/// (`super::capture`) can read them about a thousand at a time, dropping the lock in between.
/// That needs positions that stay put while a capture runs: a reservation forgotten then
/// leaves an empty slot (taken again if the same id is reserved anew) instead of having the
/// last one moved into its place, and the empty slots go when the capture has finished the
/// shard.
///
/// Each reservation is shared (`Arc`) and changed copy-on-write: a capture takes a reference
/// to each under the lock and images them after letting go, and a change to one it still
/// holds copies it first. Unshared, a change costs one check of the count.
///
/// Every change goes through [`Reservations::get_mut`], [`Reservations::insert_new`] or
/// [`Reservations::remove`], which first save what a running capture still needs.
#[derive(Debug, Default)]
pub(super) struct Reservations {
    map: IndexMap<Key, Option<Arc<Reservation>>, ahash::RandomState>,
    /// Empty slots in `map` (reservations forgotten while a capture ran).
    empty: usize,
    /// While a capture runs and has not finished this shard: the reservations as they were at
    /// the cut, of those changed since ahead of the capture.
    pub(super) copying: Option<Box<Copying<SavedReservations>>>,
}

/// Reservations as they were at a capture's cut (shared with the live ones until they change).
pub(super) type SavedReservations = Vec<(Key, Arc<Reservation>)>;

impl Reservations {
    pub fn get(&self, id: &[u8]) -> Option<&Reservation> {
        self.map.get(id)?.as_deref()
    }

    /// Room for `additional` more reservations without growing (loading an image of known
    /// size).
    pub fn reserve(&mut self, additional: usize) {
        self.map.reserve(additional);
    }

    /// A reservation and its stored id, shared: to read its lines while changing the SKUs
    /// they name. Drop it before changing the reservation itself, which would otherwise copy
    /// it.
    pub fn shared(&self, id: &[u8]) -> Option<(&Key, Arc<Reservation>)> {
        let (key, slot) = self.map.get_key_value(id)?;
        Some((key, slot.clone()?))
    }

    /// A reservation to change.
    pub fn get_mut(&mut self, id: &[u8]) -> Option<&mut Reservation> {
        let (index, key, slot) = self.map.get_full_mut(id)?;
        let reservation = slot.as_mut()?;
        if let Some(copying) = &mut self.copying {
            copying.before_change(index, |saved| saved.push((key.clone(), reservation.clone())));
        }
        Some(Arc::make_mut(reservation))
    }

    /// Adds a reservation; false (and no change) if one with this id exists.
    pub fn insert_new(&mut self, id: Key, reservation: Reservation) -> bool {
        match self.map.entry(id) {
            indexmap::map::Entry::Vacant(vacant) => {
                vacant.insert(Some(Arc::new(reservation)));
            }
            indexmap::map::Entry::Occupied(mut occupied) => {
                if occupied.get().is_some() {
                    return false;
                }
                // An empty slot: its reservation was forgotten while this capture ran, and
                // what the capture needs of it was saved then.
                *occupied.get_mut() = Some(Arc::new(reservation));
                self.empty -= 1;
            }
        }
        true
    }

    /// Removes a reservation (leaving its slot empty while a capture runs).
    pub fn remove(&mut self, id: &[u8]) -> Option<Arc<Reservation>> {
        let Some(copying) = &mut self.copying else {
            return self.map.swap_remove(id)?;
        };
        let (index, key, slot) = self.map.get_full_mut(id)?;
        let reservation = slot.take()?;
        copying.before_change(index, |saved| saved.push((key.clone(), reservation.clone())));
        self.empty += 1;
        Some(reservation)
    }

    /// Number of reservations.
    pub fn len(&self) -> usize {
        self.map.len() - self.empty
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Reservation)> {
        self.map.iter().filter_map(|(id, slot)| Some((id, slot.as_deref()?)))
    }

    pub fn values(&self) -> impl Iterator<Item = &Reservation> {
        self.map.values().filter_map(|slot| slot.as_deref())
    }

    /// Number of slots (reservations and empty slots): positions are below it.
    pub(super) fn slots(&self) -> usize {
        self.map.len()
    }

    /// The reservations at positions `range` (empty slots skipped), shared, with their
    /// positions.
    pub(super) fn slots_in(
        &self,
        range: std::ops::Range<usize>,
    ) -> impl Iterator<Item = (usize, &Key, &Arc<Reservation>)> + Clone {
        let slots = &self.map.as_slice()[range.clone()];
        range.zip(slots.iter()).filter_map(|(index, (id, slot))| Some((index, id, slot.as_ref()?)))
    }

    /// Drops the empty slots (no capture may be running on this shard).
    pub(super) fn compact(&mut self) {
        debug_assert!(self.copying.is_none());
        if self.empty > 0 {
            self.map.retain(|_, slot| slot.is_some());
            self.empty = 0;
        }
    }
}

impl std::ops::Index<&[u8]> for Reservations {
    type Output = Reservation;
    fn index(&self, id: &[u8]) -> &Reservation {
        self.get(id).expect("the reservation exists")
    }
}

/// A shard: the SKUs and reservations whose ids hash to it.
#[derive(Debug, Default)]
pub(super) struct Shard {
    pub skus: Skus,
    pub reservations: Reservations,
    /// Held reservations of this shard by deadline: what the sweep expires.
    pub deadlines: TimeIndex,
    /// Finished reservations of this shard by forget time.
    pub retired: TimeIndex,
    /// The sales channels its reservations name, shared between them.
    pub channels: Channels,
}

/// Most channel names a shard shares; past that, each reservation keeps its own copy.
pub(super) const CHANNELS_SHARED_MAX: usize = 256;

/// The channel names a shard's reservations share. A storefront sells through a handful of
/// channels ("web", "app", "live"), so rather than an allocation of the name per reservation
/// (32 bytes or more, and one more cold pointer to follow when a snapshot reads it), each
/// takes a reference to the shard's copy. Bounded, so that clients naming a new channel with
/// every order cannot grow it without end; names are never dropped from it (at most 256 per
/// shard, a few KiB).
#[derive(Debug, Default)]
pub(super) struct Channels(HashSet<Key, ahash::RandomState>);

impl Channels {
    /// The tag a reservation keeps for `name` (none for an empty name).
    pub fn tag(&mut self, name: &[u8]) -> Option<Key> {
        if name.is_empty() {
            return None;
        }
        if let Some(shared) = self.0.get(name) {
            return Some(shared.clone());
        }
        let key = Key::from(name);
        if self.0.len() < CHANNELS_SHARED_MAX {
            self.0.insert(key.clone());
        }
        Some(key)
    }
}

impl Shard {
    pub fn collect_due(&self, now_ms: u64, max: usize, out: &mut Vec<Command>) {
        let start = out.len();
        let expired = self.deadlines.due(now_ms);
        out.extend(expired.take(max).map(|id| Command::Expire { id: Bytes::copy_from_slice(id) }));
        let room = max - (out.len() - start);
        let forgotten = self.retired.due(now_ms);
        out.extend(
            forgotten.take(room).map(|id| Command::Forget { id: Bytes::copy_from_slice(id) }),
        );
    }
}

/// Reservations of a shard ordered by a time (deadline, or forget time). Entries are keyed by
/// (time, ticket), where the ticket is a number handed out on insertion and kept in the
/// reservation: finding and ordering entries compares two integers and never reads an id.
/// (Ids live behind pointers; with hundreds of holds sharing each millisecond of a flash sale,
/// comparing them was most of the cost of the index.) Entries with the same time keep their
/// insertion order.
///
/// Holds of one TTL come in deadline order, so most entries are appended to `run`, a deque in
/// key order, at the cost of a push; an entry that would go before the run's last (a shorter
/// TTL than the one before it, or a deadline moved back) goes into the tree `rest`, and reads
/// merge the two. (Every hold went into a tree before: a descent through it per reserve, about
/// a tenth of the reserve path on a hot SKU.) An entry removed from inside the run leaves a
/// hole, dropped once it reaches either end, or by compacting the run once holes outnumber
/// its live entries by more than 64, so that holes never take much more room than entries.
#[derive(Debug, Default)]
pub(super) struct TimeIndex {
    run: VecDeque<Timed>,
    /// Entries of `run` that are not holes.
    run_live: usize,
    rest: BTreeMap<(u64, u64), Key>,
    next_ticket: u64,
}

/// An entry of [`TimeIndex::run`]: its time, its ticket, and its id (none once removed).
#[derive(Debug)]
struct Timed {
    at: u64,
    ticket: u64,
    id: Option<Key>,
}

impl Timed {
    fn key(&self) -> (u64, u64) {
        (self.at, self.ticket)
    }
}

impl TimeIndex {
    /// Adds `id` at time `at`; returns the ticket to remove it with.
    pub fn insert(&mut self, at: u64, id: Key) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        // Tickets only grow, so an entry at the last time or later goes after the last.
        if self.run.back().is_none_or(|last| last.at <= at) {
            self.run.push_back(Timed { at, ticket, id: Some(id) });
            self.run_live += 1;
        } else {
            self.rest.insert((at, ticket), id);
        }
        ticket
    }

    /// Removes the entry added at `at` with `ticket`.
    pub fn remove(&mut self, at: u64, ticket: u64) {
        let key = (at, ticket);
        let found = self.run.binary_search_by(|entry| entry.key().cmp(&key));
        let removed = match found {
            Ok(index) => self.run[index].id.take().is_some(),
            Err(_) => self.rest.remove(&key).is_some(),
        };
        debug_assert!(removed, "the entry was indexed at ({at}, {ticket})");
        if found.is_ok() && removed {
            self.run_live -= 1;
            self.drop_holes();
        }
    }

    /// Drops holes at both ends of the run, and compacts it once holes outnumber live entries.
    fn drop_holes(&mut self) {
        while self.run.front().is_some_and(|entry| entry.id.is_none()) {
            self.run.pop_front();
        }
        while self.run.back().is_some_and(|entry| entry.id.is_none()) {
            self.run.pop_back();
        }
        if self.run.len() > 2 * self.run_live + 64 {
            self.run.retain(|entry| entry.id.is_some());
        }
        // Gives back room once the run fills a quarter of it (a sale's holds ended, say): a
        // tree gave back its nodes as entries went.
        let room = self.run.len().max(256);
        if self.run.capacity() > 4 * room {
            self.run.shrink_to(2 * room);
        }
    }

    /// The ids whose time is at or before `now_ms`, earliest first.
    pub fn due(&self, now_ms: u64) -> impl Iterator<Item = &Key> + '_ {
        self.range(0, now_ms)
    }

    /// The ids whose time is after `after_ms` and at or before `now_ms`.
    pub fn between(&self, after_ms: u64, now_ms: u64) -> impl Iterator<Item = &Key> + '_ {
        (after_ms < now_ms).then(|| self.range(after_ms + 1, now_ms)).into_iter().flatten()
    }

    /// The ids whose time is in `from_ms..=to_ms`, earliest first (the run and the tree
    /// merged in key order).
    fn range(&self, from_ms: u64, to_ms: u64) -> impl Iterator<Item = &Key> + '_ {
        let start = self.run.partition_point(|entry| entry.at < from_ms);
        let run = self
            .run
            .range(start..)
            .take_while(move |entry| entry.at <= to_ms)
            .filter_map(|entry| Some((entry.key(), entry.id.as_ref()?)));
        let rest = (from_ms <= to_ms)
            .then(|| self.rest.range((from_ms, 0)..=(to_ms, u64::MAX)))
            .into_iter()
            .flatten()
            .map(|(key, id)| (*key, id));
        Merged { a: run.peekable(), b: rest.peekable() }.map(|(_, id)| id)
    }

    pub fn len(&self) -> usize {
        self.run_live + self.rest.len()
    }
}

/// Two iterators in key order merged into one in key order.
struct Merged<A: Iterator, B: Iterator> {
    a: std::iter::Peekable<A>,
    b: std::iter::Peekable<B>,
}

impl<'a, A, B> Iterator for Merged<A, B>
where
    A: Iterator<Item = ((u64, u64), &'a Key)>,
    B: Iterator<Item = ((u64, u64), &'a Key)>,
{
    type Item = ((u64, u64), &'a Key);

    fn next(&mut self) -> Option<Self::Item> {
        match (self.a.peek(), self.b.peek()) {
            (Some((a, _)), Some((b, _))) if b < a => self.b.next(),
            (Some(_), _) => self.a.next(),
            (None, _) => self.b.next(),
        }
    }
}

/// The guards of every shard an operation holds, in ascending shard order.
pub(super) struct Locked<'a> {
    guards: SmallVec<[(usize, MutexGuard<'a, Shard>); 4]>,
}

impl<'a> Locked<'a> {
    pub fn new(guards: SmallVec<[(usize, MutexGuard<'a, Shard>); 4]>) -> Locked<'a> {
        debug_assert!(guards.windows(2).all(|w| w[0].0 < w[1].0), "locks taken in order");
        Locked { guards }
    }

    /// The locked shard with this index. Panics if the operation did not lock it: that is a bug
    /// in the operation, which must name every shard it touches up front.
    pub fn shard(&mut self, index: usize) -> &mut Shard {
        self.guards
            .iter_mut()
            .find(|(i, _)| *i == index)
            .map(|(_, guard)| &mut **guard)
            .expect("operation touches only shards it locked")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::{
        Channels, Deadlines, HeldByDeadline, HeldLine, Key, Lines, Reservation, TimeIndex,
        CHANNELS_SHARED_MAX,
    };

    #[test]
    fn channel_names_are_shared_up_to_the_bound() {
        let mut channels = Channels::default();
        assert_eq!(channels.tag(b""), None);
        let web = channels.tag(b"web").expect("a tag");
        assert!(Arc::ptr_eq(&web, &channels.tag(b"web").expect("a tag")));
        for n in 1..CHANNELS_SHARED_MAX {
            channels.tag(format!("channel-{n}").as_bytes());
        }
        // Full: a new name is a copy of its own each time, the names already there are shared.
        let (one, two) =
            (channels.tag(b"new").expect("a tag"), channels.tag(b"new").expect("a tag"));
        assert_eq!((&one[..], &two[..]), (&b"new"[..], &b"new"[..]));
        assert!(!Arc::ptr_eq(&one, &two));
        assert!(Arc::ptr_eq(&web, &channels.tag(b"web").expect("a tag")));
    }

    /// An add (`true`) or a removal of part of what is held at a deadline.
    type Step = (bool, u64, u64);

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        // Few deadlines, so that they repeat; quantities on both sides of `u32::MAX`.
        let qty = prop_oneof![1u64..5, Just(u64::from(u32::MAX)), Just(1 << 40)];
        prop::collection::vec((any::<bool>(), 0u64..6, qty), 0..60)
    }

    proptest! {
        /// Whichever way the deadlines are kept, every read agrees with a plain map, and a
        /// SKU left with one deadline keeps it in place again.
        #[test]
        fn held_units_by_deadline_agree_with_a_map(steps in steps()) {
            let mut held = HeldByDeadline::default();
            let mut model: BTreeMap<u64, u64> = BTreeMap::new();
            for (add, at, qty) in steps {
                if add {
                    held.add(qty, at);
                    *model.entry(at).or_default() += qty;
                } else if let Some(slot) = model.get_mut(&at) {
                    let qty = qty.min(*slot);
                    held.remove(qty, at);
                    *slot -= qty;
                    if *slot == 0 {
                        model.remove(&at);
                    }
                }
                prop_assert_eq!(held.iter().collect::<Vec<_>>(), model.clone().into_iter().collect::<Vec<_>>());
                for now in 0..7 {
                    prop_assert_eq!(held.lapsed(now), model.range(..=now).map(|(_, q)| q).sum::<u64>());
                }
                if model.len() <= 1 && model.values().all(|q| *q <= u64::from(u32::MAX)) {
                    prop_assert!(matches!(held.0, Deadlines::Few { .. }), "kept in place");
                }
                let mut rebuilt = HeldByDeadline::default();
                model.iter().for_each(|(at, qty)| rebuilt.add(*qty, *at));
                prop_assert_eq!(&held, &rebuilt);
            }
        }
    }

    /// A step on a time index: add an entry at a time (`Some`), or remove the `n`-th entry
    /// still in it (`None`, `n` modulo their number).
    fn time_steps() -> impl Strategy<Value = Vec<(Option<u64>, usize)>> {
        // Mostly times that grow (one TTL), sometimes an earlier one; many removals, so that
        // holes pile up inside the run and get compacted.
        let step = prop_oneof![
            3 => (0u64..3).prop_map(|ahead| (Some(ahead), 0usize)),
            1 => (0u64..40).prop_map(|back| (Some(u64::MAX - back), 0usize)),
            4 => any::<usize>().prop_map(|n| (None, n)),
        ];
        prop::collection::vec(step, 0..400)
    }

    proptest! {
        /// Appended or not, every read of a time index agrees with a plain ordered map of
        /// (time, ticket) to id, in order.
        #[test]
        fn time_index_agrees_with_an_ordered_map(steps in time_steps()) {
            let mut index = TimeIndex::default();
            let mut model: BTreeMap<(u64, u64), Key> = BTreeMap::new();
            let mut clock = 100u64;
            for (n, (at, pick)) in steps.into_iter().enumerate() {
                match at {
                    Some(at) if at >= u64::MAX - 40 => {
                        // Back by up to 40 from the latest time.
                        let at = clock.saturating_sub(u64::MAX - at);
                        let id = Key::from(format!("r{n}").as_bytes());
                        let ticket = index.insert(at, id.clone());
                        model.insert((at, ticket), id);
                    }
                    Some(ahead) => {
                        clock += ahead;
                        let id = Key::from(format!("r{n}").as_bytes());
                        let ticket = index.insert(clock, id.clone());
                        model.insert((clock, ticket), id);
                    }
                    None if model.is_empty() => {}
                    None => {
                        let key = *model.keys().nth(pick % model.len()).expect("in range");
                        model.remove(&key);
                        index.remove(key.0, key.1);
                    }
                }
                prop_assert_eq!(index.len(), model.len());
                prop_assert!(index.run.len() <= 2 * index.run_live + 64, "holes are bounded");
                for now in [0, 90, clock - 20, clock - 1, clock, u64::MAX] {
                    let due: Vec<&Key> = index.due(now).collect();
                    let expected: Vec<&Key> = model.range(..=(now, u64::MAX)).map(|(_, id)| id).collect();
                    prop_assert_eq!(due, expected);
                    for after in [0, 95, clock - 10, now] {
                        let between: Vec<&Key> = index.between(after, now).collect();
                        let expected: Vec<&Key> = model
                            .iter()
                            .filter(|((at, _), _)| *at > after && *at <= now)
                            .map(|(_, id)| id)
                            .collect();
                        prop_assert_eq!(between, expected);
                    }
                }
            }
        }
    }

    #[test]
    fn holds_of_one_ttl_are_appended_and_their_holes_dropped() {
        let mut index = TimeIndex::default();
        let tickets: Vec<u64> =
            (0..10_000u64).map(|n| index.insert(1000 + n / 10, Key::from(&b"r"[..]))).collect();
        assert!(index.rest.is_empty(), "in deadline order: all appended");
        // Removing all but the first leaves holes behind it, compacted as they pile up.
        for (n, ticket) in tickets.iter().enumerate().skip(1) {
            index.remove(1000 + n as u64 / 10, *ticket);
            assert!(index.run.len() <= 2 * index.len() + 64, "compacted at {n}");
        }
        assert_eq!((index.len(), index.run.len()), (1, 1), "the last removals dropped the tail");
        index.remove(1000, tickets[0]);
        assert!(index.run.is_empty() && index.len() == 0);
        assert!(index.run.capacity() <= 4 * 256, "room given back: {}", index.run.capacity());
        // A shorter deadline than the last goes into the tree, and reads merge both in order.
        index.insert(50, Key::from(&b"a"[..]));
        index.insert(40, Key::from(&b"b"[..]));
        index.insert(60, Key::from(&b"c"[..]));
        assert_eq!(index.rest.len(), 1);
        let due: Vec<&[u8]> = index.due(55).map(|id| &id[..]).collect();
        assert_eq!(due, [&b"b"[..], &b"a"[..]]);
    }

    #[test]
    fn two_deadlines_are_kept_in_place_and_a_third_moves_them_to_a_tree() {
        let mut held = HeldByDeadline::default();
        held.add(2, 20);
        held.add(1, 10);
        held.add(4, 20);
        assert!(matches!(held.0, Deadlines::Few { len: 2, at_ms: [10, 20], units: [1, 6] }));
        held.add(1, 30);
        assert!(matches!(held.0, Deadlines::Many(_)));
        assert_eq!(held.lapsed(20), 7);
        held.remove(6, 20);
        assert!(matches!(held.0, Deadlines::Many(_)), "two deadlines stay in the tree");
        held.remove(1, 10);
        assert!(matches!(held.0, Deadlines::Few { len: 1, at_ms: [30, _], units: [1, _] }));
        assert_eq!(std::mem::size_of::<HeldByDeadline>(), 32, "no larger than a tree and a u64");
    }

    #[test]
    fn one_line_is_kept_in_place_and_more_in_a_slice() {
        let line =
            |sku: &[u8], qty| HeldLine { sku: sku.into(), qty, confirmed: 0, at: Box::default() };
        let one: Lines = [line(b"a", 1)].into_iter().collect();
        assert!(matches!(one, Lines::One(_)));
        assert_eq!(one.iter().map(|l| l.qty).collect::<Vec<_>>(), [1]);
        let mut three: Lines = [line(b"a", 1), line(b"b", 2), line(b"c", 3)].into_iter().collect();
        assert!(matches!(three, Lines::Many(_)));
        three[2].confirmed = 3;
        let read: Vec<_> = three.iter().map(|l| (&l.sku[..], l.qty, l.confirmed)).collect();
        assert_eq!(read, [(&b"a"[..], 1, 0), (b"b", 2, 0), (b"c", 3, 3)]);
        // With its count, a reservation takes 128 bytes (jemalloc's size class): one line in
        // place costs no more room than a pointer to the lines did.
        assert!(
            std::mem::size_of::<Reservation>() <= 112,
            "{}",
            std::mem::size_of::<Reservation>()
        );
    }
}
