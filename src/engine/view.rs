//! Read-only views for the operations surface: a filtered, paged SKU listing, the open holds of
//! one SKU, a summary of the whole state, and activity sampling for the dashboard's sell rates.
//!
//! Each view visits the shards one at a time and holds one shard's lock only while it scans
//! that shard, so traffic is never paused as a whole; a view is therefore not one atomic
//! snapshot across shards, which is what monitoring needs anyway. Costs are linear in the
//! number of SKUs (listing, summary, sampling) or reservations (holds of a SKU); at 1 M SKUs a
//! full scan takes tens of milliseconds spread over 64 short lock holds.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use bytes::Bytes;
use stockd_protocol::{ReservationState, SkuInfo};

use super::shard::{Key, Sku};
use super::Engine;

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
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for (key, sku) in &shard.skus {
                let info = sku.info(now_ms);
                if !filter.matches(key, &info) {
                    continue;
                }
                matched += 1;
                if after.is_some_and(|after| &key[..] <= after) {
                    continue;
                }
                // One more than the page, to know whether another page follows.
                if heap.len() <= limit {
                    heap.push(ById(key.clone(), info));
                } else if heap.peek().is_some_and(|largest| key[..] < largest.0[..]) {
                    heap.pop();
                    heap.push(ById(key.clone(), info));
                }
            }
        }
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
            for (id, r) in &shard.reservations {
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

    /// Totals over every shard.
    pub fn summary(&self, now_ms: u64) -> Summary {
        self.scan(now_ms, |_, _, _| {})
    }

    /// The totals of [`summary`], and `visit(sku, counters, previous, taken_total)` for every
    /// SKU that took holds since the previous call (or ever, on the first call), marking them as
    /// seen; one pass over the state. `taken_total` is the SKU's count of units ever held by
    /// this process (replay included), `previous` its value at the previous call; its slope
    /// over time is the sell rate.
    ///
    /// [`summary`]: Engine::summary
    pub fn sample_activity(
        &self,
        now_ms: u64,
        mut visit: impl FnMut(&[u8], SkuInfo, u64, u64),
    ) -> Summary {
        self.scan(now_ms, |key, sku, info| {
            if sku.taken_total != sku.sampled_taken {
                let previous = std::mem::replace(&mut sku.sampled_taken, sku.taken_total);
                visit(key, info, previous, sku.taken_total);
            }
        })
    }

    /// One pass over every SKU, one shard locked at a time: the totals, and `each(sku, its
    /// state, its counters)`.
    fn scan(&self, now_ms: u64, mut each: impl FnMut(&[u8], &mut Sku, SkuInfo)) -> Summary {
        let mut total = Summary::default();
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            total.skus += shard.skus.len();
            total.reservations += shard.reservations.len();
            // Held reservations are indexed by deadline; the lapsed ones are not open.
            let lapsed = shard.deadlines.due(now_ms).count();
            total.holds_open += shard.deadlines.len() - lapsed;
            for (key, sku) in shard.skus.iter_mut() {
                let info = sku.info(now_ms);
                total.paused_skus += usize::from(info.paused);
                total.on_hand_units += info.on_hand;
                total.held_units += info.reserved;
                total.committed_units += info.committed;
                each(key, sku, info);
            }
        }
        total
    }

    /// The counters and `taken_total` of one SKU, for SKUs the sampler already follows.
    pub fn sku_activity(&self, sku: &[u8], now_ms: u64) -> Option<(SkuInfo, u64)> {
        let shard = self.shards[self.shard_of(sku)].lock();
        shard.skus.get(sku).map(|state| (state.info(now_ms), state.taken_total))
    }
}
