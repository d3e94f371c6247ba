//! Read-only views for the operations surface: a filtered, paged SKU listing, the open holds of
//! one SKU, a summary of the whole state, and activity sampling for the dashboard's sell rates.
//!
//! Each view visits the shards one at a time, so traffic is never paused as a whole; a view is
//! therefore not one atomic snapshot across shards, which is what monitoring needs anyway.
//! Costs are linear in the number of SKUs (listing, summary, sampling) or reservations (holds
//! of a SKU). Scans of SKUs hold a shard's lock for at most 512 SKUs at a time
//! (`Engine::visit_skus`): at 1 000 000 SKUs a full scan takes tens of milliseconds, and an
//! operation waits for at most one such chunk of it. The two views asked for every second, the
//! dashboard's activity sample and the alert evaluator's low-stock listing, scan only once:
//! afterwards they read the SKUs that changed since their previous call (`Engine::refresh`).

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeSet, BinaryHeap};

use bytes::Bytes;
use stockd_protocol::{ReservationState, SkuInfo};

use parking_lot::MutexGuard;

use super::shard::{Contribution, Key, Shard, Sku, Watcher};
use super::Engine;

/// SKUs a scan reads per lock hold (see `Engine::visit_skus`): tens of microseconds.
const SCAN_CHUNK: usize = 512;

/// Which SKUs a listing returns. Matching is on the raw id bytes.
#[derive(Clone, Debug, Default)]
pub struct SkuFilter {
    /// Only ids containing this (any position).
    pub contains: Option<Vec<u8>>,
    /// Only ids starting with this.
    pub prefix: Option<Vec<u8>>,
    /// Only paused SKUs (safety stock set and nothing available above it).
    pub paused_only: bool,
    /// Only SKUs with at most this many units available.
    pub available_max: Option<u64>,
}

impl SkuFilter {
    pub fn matches(&self, sku: &[u8], info: &SkuInfo) -> bool {
        self.prefix.as_ref().is_none_or(|p| sku.starts_with(p))
            && self.contains.as_ref().is_none_or(|c| contains(sku, c))
            && (!self.paused_only || info.paused)
            && self.available_max.is_none_or(|max| info.available <= max)
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// One SKU and its counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkuRow {
    pub sku: Bytes,
    pub info: SkuInfo,
}

/// One page of a listing in id order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkuPage {
    pub rows: Vec<SkuRow>,
    /// SKUs matching the filter in all (before and after the cursor).
    pub matched: usize,
    /// Cursor for the next page (`None` on the last page).
    pub next_after: Option<Bytes>,
}

/// One open hold on a SKU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldRow {
    pub reservation: Bytes,
    pub qty: u32,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub channel: Bytes,
    pub customer: Bytes,
}

/// The open holds of one SKU, soonest deadline first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkuHolds {
    pub info: SkuInfo,
    pub holds: Vec<HoldRow>,
    /// Open holds on the SKU in all (`holds` may be cut at the requested limit).
    pub count: usize,
}

/// Totals over the whole state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    pub skus: usize,
    pub reservations: usize,
    /// Reservations in state held whose deadline has not passed.
    pub holds_open: usize,
    pub paused_skus: usize,
    pub on_hand_units: u64,
    pub held_units: u64,
    pub committed_units: u64,
}

impl Summary {
    /// Adds a shard's SKU-independent counts.
    fn add_counts(&mut self, shard: &Shard, now_ms: u64) {
        self.reservations += shard.reservations.len();
        // Held reservations are indexed by deadline; the lapsed ones are not open.
        let lapsed = shard.deadlines.due(now_ms).count();
        self.holds_open += shard.deadlines.len() - lapsed;
    }

    fn add(&mut self, sku: &Contribution) {
        self.paused_skus += usize::from(sku.paused);
        self.on_hand_units += sku.on_hand;
        self.held_units += sku.held;
        self.committed_units += sku.committed;
    }

    fn add_totals(&mut self, totals: &Totals) {
        self.paused_skus += totals.paused_skus;
        self.on_hand_units += totals.on_hand_units;
        self.held_units += totals.held_units;
        self.committed_units += totals.committed_units;
    }
}

/// Runs `body(shard, range)` over the positions `0..len(shard)`, [`SCAN_CHUNK`] at a time,
/// handing the lock to any operation waiting for it between two chunks (fairly: `bump` lets
/// the waiter in before taking the lock back). `len` is read again after each chunk, so
/// positions added meanwhile are covered too.
fn in_chunks(
    shard: &mut MutexGuard<'_, Shard>,
    len: impl Fn(&Shard) -> usize,
    mut body: impl FnMut(&mut Shard, std::ops::Range<usize>),
) {
    let mut at = 0;
    loop {
        let end = len(shard).min(at + SCAN_CHUNK);
        body(shard, at..end);
        at = end;
        if at >= len(shard) {
            return;
        }
        MutexGuard::bump(shard);
    }
}

/// What the sampler keeps between calls (`Engine::sample_activity`).
#[derive(Debug, Default)]
pub(super) struct Sampling {
    /// The previous call's time (`None` before the first).
    last_ms: Option<u64>,
    /// Per shard, the sum of its SKUs' `sampled` contributions.
    shards: Vec<Totals>,
}

/// What the alert evaluator keeps between calls (`Engine::low_stock`).
#[derive(Debug, Default)]
pub(super) struct LowStock {
    last_ms: Option<u64>,
    available_max: u64,
    /// Per shard, the SKUs with at most `available_max` available when last read.
    shards: Vec<BTreeSet<Key>>,
}

/// A shard's totals of SKU counters.
#[derive(Clone, Debug, Default)]
struct Totals {
    paused_skus: usize,
    on_hand_units: u64,
    held_units: u64,
    committed_units: u64,
}

impl Totals {
    /// One SKU's part changes from `old` to `new` (`old` is part of the totals, so nothing
    /// goes below zero).
    fn replace(&mut self, old: &Contribution, new: &Contribution) {
        self.paused_skus = self.paused_skus - usize::from(old.paused) + usize::from(new.paused);
        self.on_hand_units = self.on_hand_units - old.on_hand + new.on_hand;
        self.held_units = self.held_units - old.held + new.held;
        self.committed_units = self.committed_units - old.committed + new.committed;
    }
}

/// A listing entry ordered by id, so that a max-heap keeps the smallest ids seen.
struct ById(Key, SkuInfo);

impl PartialEq for ById {
    fn eq(&self, other: &ById) -> bool {
        self.0 == other.0
    }
}
impl Eq for ById {}
impl PartialOrd for ById {
    fn partial_cmp(&self, other: &ById) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ById {
    fn cmp(&self, other: &ById) -> Ordering {
        self.0.cmp(&other.0)
    }
}

impl Engine {
    /// SKUs matching `filter` with ids strictly after `after`, in id order, at most `limit`
    /// (a bounded heap: memory is O(limit) whatever the number of SKUs).
    pub fn list_skus(
        &self,
        filter: &SkuFilter,
        after: Option<&[u8]>,
        limit: usize,
        now_ms: u64,
    ) -> SkuPage {
        let mut matched = 0;
        let mut heap: BinaryHeap<ById> = BinaryHeap::with_capacity(limit + 2);
        self.visit_skus(
            |_| {},
            |key, sku| {
                let info = sku.info(now_ms);
                if !filter.matches(key, &info) {
                    return;
                }
                matched += 1;
                if after.is_some_and(|after| &key[..] <= after) {
                    return;
                }
                // One more than the page, to know whether another page follows.
                if heap.len() <= limit {
                    heap.push(ById(key.clone(), info));
                } else if heap.peek().is_some_and(|largest| key[..] < largest.0[..]) {
                    heap.pop();
                    heap.push(ById(key.clone(), info));
                }
            },
        );
        let mut rows: Vec<SkuRow> = heap
            .into_sorted_vec()
            .into_iter()
            .map(|ById(key, info)| SkuRow { sku: Bytes::copy_from_slice(&key), info })
            .collect();
        let next_after = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|row| row.sku.clone())
        } else {
            None
        };
        SkuPage { rows, matched, next_after }
    }

    /// The counters and open holds of one SKU (`None` if unknown), at most `limit` holds.
    /// Scans every reservation: meant for an operator looking at one SKU, not for traffic.
    pub fn sku_holds(&self, sku: &[u8], limit: usize, now_ms: u64) -> Option<SkuHolds> {
        let info = {
            let shard = self.shards[self.shard_of(sku)].lock();
            shard.skus.get(sku)?.info(now_ms)
        };
        let mut holds = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for (id, r) in shard.reservations.iter() {
                if r.state != ReservationState::Held || r.lapsed(now_ms) {
                    continue;
                }
                let Ok(index) = r.lines.binary_search_by(|line| line.sku[..].cmp(sku)) else {
                    continue;
                };
                let tag = |tag: &Option<Key>| {
                    tag.as_deref().map(Bytes::copy_from_slice).unwrap_or_default()
                };
                holds.push(HoldRow {
                    reservation: Bytes::copy_from_slice(id),
                    qty: r.lines[index].qty,
                    created_at_ms: r.created_at_ms,
                    expires_at_ms: r.expires_at_ms,
                    channel: tag(&r.channel),
                    customer: tag(&r.customer),
                });
            }
        }
        let count = holds.len();
        holds.sort_unstable_by(|a, b| {
            (a.expires_at_ms, &a.reservation).cmp(&(b.expires_at_ms, &b.reservation))
        });
        holds.truncate(limit);
        Some(SkuHolds { info, holds, count })
    }

    /// SKUs plus reservations stored: the size of the state (cheap: one lock per shard).
    pub fn entities(&self) -> u64 {
        let count = |shard: &super::shard::Shard| shard.skus.len() + shard.reservations.len();
        self.shards.iter().map(|shard| count(&shard.lock()) as u64).sum()
    }

    /// Totals over every shard: a full scan, one shard (one chunk of it) locked at a time.
    pub fn summary(&self, now_ms: u64) -> Summary {
        let (mut counts, mut total) = (Summary::default(), Summary::default());
        self.visit_skus(
            |shard| counts.add_counts(shard, now_ms),
            |_, sku| {
                total.add(&Contribution::of(&sku.info(now_ms)));
                total.skus += 1;
            },
        );
        Summary { reservations: counts.reservations, holds_open: counts.holds_open, ..total }
    }

    /// The totals of [`summary`], and `visit(sku, counters, previous, taken_total)` for every
    /// SKU that changed since the previous call (every SKU on the first call; `counters` is
    /// `None` for a SKU deleted since, which adds nothing to the totals). `taken_total`
    /// is the SKU's count of units ever held by this process (replay included), `previous`
    /// its value at the previous call (equal if it took nothing); its slope over time is the
    /// sell rate. A SKU not visited has the counters and `taken_total` it had when last
    /// visited. Meant for one caller (the dashboard's sampler): calls are serialised.
    ///
    /// Only the first call reads every SKU. Later calls read the SKUs that changed since the
    /// previous one (`Skus` lists them as operations change them) and those whose holds
    /// lapsed in between (found in the shards' deadline indexes), and correct the totals kept
    /// per shard by the difference each made: the cost follows the traffic, not the size of
    /// the catalogue. The totals are exactly those of [`summary`] at `now_ms`, which the
    /// engine's tests check after random operations.
    ///
    /// [`summary`]: Engine::summary
    pub fn sample_activity(
        &self,
        now_ms: u64,
        mut visit: impl FnMut(&[u8], Option<SkuInfo>, u64, u64),
    ) -> Summary {
        let mut sampling = self.sampling.lock();
        let sampling = &mut *sampling;
        let last_ms = sampling.last_ms.replace(now_ms);
        sampling.shards.resize(self.shards.len(), Totals::default());
        let mut total = Summary::default();
        let shards = &mut sampling.shards;
        self.refresh(
            Watcher::Sampler,
            last_ms,
            now_ms,
            |_, shard| {
                total.add_counts(shard, now_ms);
                total.skus += shard.skus.live();
            },
            |shard, key, sku| {
                // A deleted SKU's counters are zero: it adds nothing to the totals.
                let info = sku.info(now_ms);
                let now = Contribution::of(&info);
                shards[shard].replace(&sku.sampled, &now);
                sku.sampled = now;
                let previous = std::mem::replace(&mut sku.sampled_taken, sku.taken_total);
                visit(key, (!sku.deleted).then_some(info), previous, sku.taken_total);
            },
        );
        shards.iter().for_each(|totals| total.add_totals(totals));
        total
    }

    /// The SKUs with at most `available_max` units available at `now_ms`, in id order: the
    /// first `limit` of them with their counters, and how many there are in all (`matched`).
    /// What [`list_skus`] with that filter returns, for the alert evaluator, which asks every
    /// second: the SKUs at or below the line are kept between calls, and only the SKUs that
    /// changed since the previous call (or whose holds lapsed) are read again, as in
    /// [`sample_activity`]. A different `available_max` starts over with a full scan. Meant for
    /// one caller; calls are serialised.
    ///
    /// [`list_skus`]: Engine::list_skus
    /// [`sample_activity`]: Engine::sample_activity
    pub fn low_stock(&self, available_max: u64, limit: usize, now_ms: u64) -> SkuPage {
        let mut low = self.low_stock.lock();
        let low = &mut *low;
        if low.available_max != available_max || low.shards.len() != self.shards.len() {
            *low = LowStock {
                last_ms: None,
                available_max,
                shards: vec![BTreeSet::new(); self.shards.len()],
            };
        }
        let last_ms = low.last_ms.replace(now_ms);
        let sets = &mut low.shards;
        self.refresh(
            Watcher::Alerts,
            last_ms,
            now_ms,
            |_, _| {},
            |shard, key, sku| {
                if !sku.deleted && sku.info(now_ms).available <= available_max {
                    sets[shard].insert(key.clone());
                } else {
                    sets[shard].remove(key);
                }
            },
        );
        let matched = sets.iter().map(BTreeSet::len).sum();
        // The first `limit` ids over all shards: a merge of the shards' sorted sets.
        let mut heads: BinaryHeap<Reverse<(&Key, usize)>> = BinaryHeap::new();
        let mut iters: Vec<_> = sets.iter().map(|set| set.iter()).collect();
        for (shard, iter) in iters.iter_mut().enumerate() {
            heads.extend(iter.next().map(|key| Reverse((key, shard))));
        }
        let mut rows = Vec::with_capacity(limit.min(matched));
        while rows.len() < limit {
            let Some(Reverse((key, shard))) = heads.pop() else { break };
            heads.extend(iters[shard].next().map(|key| Reverse((key, shard))));
            let info = self.shards[shard].lock().skus.get(key).map(|sku| sku.info(now_ms));
            // Changed (or deleted) since the refresh above: no longer a row of this listing.
            if let Some(info) = info.filter(|info| info.available <= available_max) {
                rows.push(SkuRow { sku: Bytes::copy_from_slice(key), info });
            }
        }
        let next_after = (matched > rows.len()).then(|| rows.last().map(|r| r.sku.clone()));
        SkuPage { rows, matched, next_after: next_after.flatten() }
    }

    /// Brings `watcher` up to `now_ms` from its previous call at `last_ms` (`None`: never):
    /// `shard_start(shard, its state)` once per shard, then `each(shard, id, sku)` for every
    /// SKU of it that changed since `last_ms`, or whose holds lapsed after `last_ms` (on the
    /// first call, for every SKU). Locks are held as in [`visit_skus`](Engine::visit_skus).
    fn refresh(
        &self,
        watcher: Watcher,
        last_ms: Option<u64>,
        now_ms: u64,
        mut shard_start: impl FnMut(usize, &Shard),
        mut each: impl FnMut(usize, &Key, &mut Sku),
    ) {
        let lapsed = match last_ms {
            Some(last_ms) => self.lapsed_skus(last_ms, now_ms),
            None => vec![Vec::new(); self.shards.len()],
        };
        for (index, (shard, lapsed)) in self.shards.iter().zip(lapsed).enumerate() {
            let mut shard = shard.lock();
            shard_start(index, &shard);
            for key in &lapsed {
                shard.skus.touch(key, watcher);
            }
            let changed = shard.skus.take_changed(watcher);
            let mut read = |key: &Key, sku: &mut Sku| {
                sku.seen_by(watcher);
                each(index, key, sku);
            };
            if last_ms.is_none() {
                // Every SKU; what was listed as changed is read anyway.
                in_chunks(
                    &mut shard,
                    |s| s.skus.len(),
                    |s, range| {
                        s.skus.entries_mut(range).for_each(|(key, sku)| read(key, sku));
                    },
                );
            } else {
                in_chunks(
                    &mut shard,
                    |_| changed.len(),
                    |s, range| {
                        for &position in &changed[range] {
                            let (key, sku) = s.skus.entry_mut(position);
                            read(key, sku);
                        }
                    },
                );
            }
        }
    }

    /// Per shard, the SKUs of holds whose deadline passed after `after_ms`, up to `now_ms`
    /// (time alone changed their counters).
    fn lapsed_skus(&self, after_ms: u64, now_ms: u64) -> Vec<Vec<Key>> {
        let mut lapsed = vec![Vec::new(); self.shards.len()];
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for id in shard.deadlines.between(after_ms, now_ms) {
                let Some(reservation) = shard.reservations.get(id) else { continue };
                for line in reservation.lines.iter() {
                    lapsed[self.shard_of(&line.sku)].push(line.sku.clone());
                }
            }
        }
        lapsed
    }

    /// Visits every SKU: `shard_start(shard)` once per shard, then `each(id, sku)` for each of
    /// its SKUs. A shard's lock is held for at most [`SCAN_CHUNK`] SKUs at a time, then handed
    /// to any operation waiting for it (fairly: `bump` lets the waiter in before the scan
    /// takes the lock back), so a scan of a large catalogue delays an operation by one chunk,
    /// not by a whole shard. SKUs are never removed and new ones are appended, so the scan
    /// goes on at its position and also sees SKUs created while it ran.
    pub(super) fn visit_skus(
        &self,
        mut shard_start: impl FnMut(&Shard),
        mut each: impl FnMut(&Key, &Sku),
    ) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            shard_start(&shard);
            in_chunks(
                &mut shard,
                |s| s.skus.len(),
                |s, range| {
                    let live = s.skus.slots()[range].iter().filter(|(_, sku)| !sku.deleted);
                    live.for_each(|(key, sku)| each(key, sku));
                },
            );
        }
    }

    /// The counters and `taken_total` of one SKU, for SKUs the sampler already follows.
    pub fn sku_activity(&self, sku: &[u8], now_ms: u64) -> Option<(SkuInfo, u64)> {
        let shard = self.shards[self.shard_of(sku)].lock();
        shard.skus.get(sku).map(|state| (state.info(now_ms), state.taken_total))
    }
}
