//! Scenarios: what each simulated client sends next, and the ledger of what it was told.
//!
//! - `flash-sale`: a few hot SKUs with fixed stock; each buyer reserves 1-2 units; of the holds
//!   granted, a share is confirmed, a share released, and the rest left to expire.
//! - `checkout`: steady checkout over many SKUs (1M by default) with multi-line orders.
//! - `mixed`: a configurable mix of reserve, confirm, release and query.
//! - `sold-out`: stock is zero: every reserve is rejected (the fast path).
//!
//! With `--buyers`, every reserve names one of that many customers; with `--channels`, one of
//! those sales channels. With limits set (`--max-per-buyer`, `--quota`), the server's
//! `buyer_limit_exceeded` and `channel_quota_exceeded` answers are expected, and the ledger
//! keeps per (SKU, customer) and (SKU, channel) what each was granted, for the verdict.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};
use clap::ValueEnum;
use serde::Serialize;
use stockd_protocol::{Confirm, Line, Op, OpReply, Reserve, ResultCode, SkuLimits};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    FlashSale,
    Checkout,
    Mixed,
    SoldOut,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::FlashSale => "flash-sale",
            Scenario::Checkout => "checkout",
            Scenario::Mixed => "mixed",
            Scenario::SoldOut => "sold-out",
        }
    }
}

/// Weights of the `mixed` scenario.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Mix {
    pub reserve: u32,
    pub confirm: u32,
    pub release: u32,
    pub query: u32,
}

/// What a workload needs to know.
#[derive(Clone, Debug)]
pub struct Workload {
    pub scenario: Scenario,
    pub prefix: String,
    pub skus: u64,
    pub ttl_ms: u32,
    pub confirm_share: f64,
    pub release_share: f64,
    pub lines_max: u32,
    pub mix: Mix,
    /// Distinct customers (0: reserves name none).
    pub buyers: u64,
    /// Sales channels reserves are spread over (empty: the channel `loadtest`).
    pub channels: Vec<Bytes>,
    /// Limits set on every SKU (none when default).
    pub limits: SkuLimits,
}

impl Workload {
    pub fn sku_name(&self, index: u64) -> Bytes {
        Bytes::from(format!("{}-sku-{index}", self.prefix))
    }
}

/// Writes a worker's names (reservation ids, SKU and customer names: a prefix and a number)
/// one after another into a buffer of its own, and hands each out as a [`Bytes`] view of it:
/// one allocation per [`NAME_CHUNK`] bytes of names instead of a `format!` (and its string) per
/// name, which was a sixth of the load generator's CPU in batch runs.
#[derive(Default)]
pub struct Names {
    buf: BytesMut,
}

/// Bytes of names per allocation.
const NAME_CHUNK: usize = 64 * 1024;

impl Names {
    /// `{prefix}{number}` (`prefix` ends in its own separator).
    pub fn make(&mut self, prefix: &[u8], number: u64) -> Bytes {
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(number).as_bytes();
        let len = prefix.len() + digits.len();
        if self.buf.capacity() < len {
            self.buf = BytesMut::with_capacity(NAME_CHUNK.max(len));
        }
        self.buf.put_slice(prefix);
        self.buf.put_slice(digits);
        self.buf.split().freeze()
    }
}

/// Replies counted by operation and result code: an array, not a map keyed by names, because
/// every reply of a run is counted.
#[derive(Clone, Debug)]
pub struct Codes {
    counts: Box<[[u64; 256]; OPS.len()]>,
}

/// The operations the scenarios send.
#[derive(Clone, Copy, Debug)]
enum Sends {
    Reserve,
    Confirm,
    Release,
    Query,
}

/// Their names in the result, in the order of [`Sends`].
const OPS: [&str; 4] = ["reserve", "confirm", "release", "query"];

impl Default for Codes {
    fn default() -> Codes {
        Codes { counts: Box::new([[0; 256]; OPS.len()]) }
    }
}

impl Codes {
    /// Counts a reply to `op`.
    fn add(&mut self, op: Sends, code: ResultCode) {
        self.counts[op as usize][usize::from(code.as_u8())] += 1;
    }

    pub fn merge(&mut self, other: &Codes) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            for (a, b) in mine.iter_mut().zip(theirs) {
                *a += b;
            }
        }
    }

    /// (operation, result code, count) for every pair seen at least once.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &'static str, u64)> + '_ {
        self.counts.iter().zip(OPS).flat_map(|(counts, op)| {
            ResultCode::ALL.iter().filter_map(move |code| {
                let count = counts[usize::from(code.as_u8())];
                (count > 0).then(|| (op, code.name(), count))
            })
        })
    }
}

/// The SKU indexes a run touched, as a bit set (a hash set was a lookup per reply line).
#[derive(Clone, Debug, Default)]
pub struct Touched {
    words: Vec<u64>,
}

impl Touched {
    pub fn insert(&mut self, sku: u64) {
        let word = (sku / 64) as usize;
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        self.words[word] |= 1 << (sku % 64);
    }

    pub fn merge(&mut self, other: &Touched) {
        if other.words.len() > self.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
    }

    /// The SKU indexes, in order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &word)| {
            let mut rest = word;
            std::iter::from_fn(move || {
                (rest != 0).then(|| {
                    let bit = rest.trailing_zeros();
                    rest &= rest - 1;
                    i as u64 * 64 + u64::from(bit)
                })
            })
        })
    }
}

/// A small fast generator (xorshift64*); each worker has its own.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What to do with a granted hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Confirm,
    Release,
    Expire,
}

/// A request sent and what it was for.
#[derive(Clone, Debug)]
pub enum Sent {
    /// `n`: the number in the id (`{tag}-{n}`), which files the hold in the worker's [`Holds`].
    Reserve {
        id: Bytes,
        n: u64,
        lines: Vec<(u64, u32)>,
        channel: Bytes,
        customer: Bytes,
    },
    Confirm {
        id: Bytes,
        n: u64,
    },
    Release {
        id: Bytes,
        n: u64,
    },
    Query,
}

/// A hold the client was granted and not yet confirmed or released.
#[derive(Clone, Debug)]
pub struct Hold {
    pub id: Bytes,
    pub lines: Vec<(u64, u32)>,
    pub expires_at_ms: u64,
    pub channel: Bytes,
    pub customer: Bytes,
}

/// Holds granted and neither confirmed nor released, filed by the number in their id. A worker
/// numbers its ids in order and most holds end in about that order, so a deque indexed by
/// number (minus the first still open) does what a hash map by id did, without hashing ids or
/// rehashing millions of holds (which was a third of the load generator's CPU in long batch
/// runs, where every hold stays open).
#[derive(Default, Debug)]
pub struct Holds {
    /// Number of the hold in `slots[0]`.
    first: u64,
    slots: VecDeque<Option<Box<Hold>>>,
    /// Holds in `slots`.
    filed: usize,
    /// Holds merged in from other workers' books ([`Ledger::merge`]): only listed.
    merged: Vec<Hold>,
}

impl Holds {
    pub fn insert(&mut self, n: u64, hold: Hold) {
        if self.slots.is_empty() {
            self.first = n;
        }
        while n < self.first {
            self.slots.push_front(None);
            self.first -= 1;
        }
        let at = (n - self.first) as usize;
        if at >= self.slots.len() {
            self.slots.resize_with(at + 1, || None);
        }
        let slot = &mut self.slots[at];
        self.filed += usize::from(slot.is_none());
        *slot = Some(Box::new(hold));
    }

    pub fn remove(&mut self, n: u64) -> Option<Hold> {
        let at = usize::try_from(n.checked_sub(self.first)?).ok()?;
        let hold = self.slots.get_mut(at)?.take()?;
        self.filed -= 1;
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.first += 1;
        }
        Some(*hold)
    }

    pub fn len(&self) -> usize {
        self.filed + self.merged.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = &Hold> {
        self.slots.iter().flatten().map(|hold| &**hold).chain(&self.merged)
    }

    /// Moves `other`'s holds into this book (to be listed, not looked up by number).
    pub fn merge(&mut self, other: Holds) {
        self.merged.extend(other.slots.into_iter().flatten().map(|hold| *hold));
        self.merged.extend(other.merged);
    }
}

/// The harness's bookkeeping maps: a fast hasher, so that at hundreds of thousands of replies
/// a second the load generator spends its (shared) cores on the load, not on SipHash.
pub type HashMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;

/// What one worker was told by the server.
#[derive(Default, Debug)]
pub struct Ledger {
    /// Confirmed units per SKU index.
    pub confirmed: HashMap<u64, u64>,
    /// Confirmed units per (SKU index, customer) and per (SKU index, channel).
    pub confirmed_by_buyer: HashMap<(u64, Bytes), u64>,
    pub confirmed_by_channel: HashMap<(u64, Bytes), u64>,
    /// Holds granted and neither confirmed nor released (live, or expired by now).
    pub held: Holds,
    /// Reservations confirmed, and released, by id (for spot checks).
    pub confirmed_ids: Vec<Bytes>,
    pub released_ids: Vec<Bytes>,
    /// Every SKU index touched.
    pub touched: Touched,
    /// Result codes per operation.
    pub codes: Codes,
    pub unexpected: Vec<String>,
}

impl Ledger {
    pub fn merge(&mut self, other: Ledger) {
        for (sku, units) in other.confirmed {
            *self.confirmed.entry(sku).or_default() += units;
        }
        for (key, units) in other.confirmed_by_buyer {
            *self.confirmed_by_buyer.entry(key).or_default() += units;
        }
        for (key, units) in other.confirmed_by_channel {
            *self.confirmed_by_channel.entry(key).or_default() += units;
        }
        self.held.merge(other.held);
        self.confirmed_ids.extend(other.confirmed_ids);
        self.released_ids.extend(other.released_ids);
        self.touched.merge(&other.touched);
        self.codes.merge(&other.codes);
        self.unexpected.extend(other.unexpected);
    }
}

/// SKUs whose names a worker keeps once made (a flash sale's few hot SKUs are named in every
/// request).
const SKU_NAMES_KEPT: u64 = 4096;

/// One simulated client's state.
pub struct Worker {
    workload: std::sync::Arc<Workload>,
    rng: Rng,
    /// `{prefix}-w{worker}-`, `{prefix}-sku-` and `{prefix}-buyer-`: what names start with.
    id_prefix: Vec<u8>,
    sku_prefix: Vec<u8>,
    buyer_prefix: Vec<u8>,
    names: Names,
    /// Names of the first [`SKU_NAMES_KEPT`] SKUs, made once each.
    sku_names: Vec<Option<Bytes>>,
    next_id: u64,
    follow_ups: VecDeque<(Bytes, u64, Fate)>,
    pub ledger: Ledger,
}

impl Worker {
    pub fn new(workload: std::sync::Arc<Workload>, worker: usize, seed: u64) -> Worker {
        let prefix = &workload.prefix;
        let kept = workload.skus.min(SKU_NAMES_KEPT) as usize;
        Worker {
            rng: Rng::new(seed ^ (worker as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            id_prefix: format!("{prefix}-w{worker}-").into_bytes(),
            sku_prefix: format!("{prefix}-sku-").into_bytes(),
            buyer_prefix: format!("{prefix}-buyer-").into_bytes(),
            names: Names::default(),
            sku_names: vec![None; kept],
            workload,
            next_id: 0,
            follow_ups: VecDeque::new(),
            ledger: Ledger::default(),
        }
    }

    /// The name of SKU `index` (the same as [`Workload::sku_name`]).
    fn sku_name(&mut self, index: u64) -> Bytes {
        match self.sku_names.get_mut(index as usize) {
            Some(Some(name)) => name.clone(),
            Some(slot) => slot.insert(self.names.make(&self.sku_prefix, index)).clone(),
            None => self.names.make(&self.sku_prefix, index),
        }
    }

    /// The next `count` operations to send (follow-ups first).
    pub fn next_ops(&mut self, count: usize) -> Vec<(Op, Sent)> {
        (0..count).map(|_| self.next_op()).collect()
    }

    fn new_reserve(&mut self) -> (Op, Sent) {
        let w = &self.workload;
        let line_count = match w.scenario {
            Scenario::Checkout => 1 + self.rng.below(u64::from(w.lines_max)),
            _ => 1,
        };
        let mut lines: Vec<(u64, u32)> = Vec::new();
        for _ in 0..line_count {
            let sku = self.rng.below(w.skus);
            if lines.iter().all(|(s, _)| *s != sku) {
                let qty = match w.scenario {
                    Scenario::FlashSale => 1 + self.rng.below(2) as u32,
                    _ => 1,
                };
                lines.push((sku, qty));
            }
        }
        self.next_id += 1;
        let id = self.names.make(&self.id_prefix, self.next_id);
        let channel = if w.channels.is_empty() {
            Bytes::from_static(b"loadtest")
        } else {
            w.channels[self.rng.below(w.channels.len() as u64) as usize].clone()
        };
        let customer = if w.buyers == 0 {
            Bytes::new()
        } else {
            let buyer = self.rng.below(w.buyers);
            self.names.make(&self.buyer_prefix, buyer)
        };
        let op = Op::Reserve(Reserve {
            id: id.clone(),
            ttl_ms: w.ttl_ms,
            channel: channel.clone(),
            customer: customer.clone(),
            lines: lines.iter().map(|(s, q)| Line::new(self.sku_name(*s), *q)).collect(),
        });
        (op, Sent::Reserve { id, n: self.next_id, lines, channel, customer })
    }

    fn follow_up(&mut self, id: Bytes, n: u64, fate: Fate) -> (Op, Sent) {
        match fate {
            Fate::Confirm => {
                (Op::Confirm(Confirm { id: id.clone(), lines: vec![] }), Sent::Confirm { id, n })
            }
            _ => (Op::Release { id: id.clone() }, Sent::Release { id, n }),
        }
    }

    fn next_op(&mut self) -> (Op, Sent) {
        if self.workload.scenario == Scenario::Mixed {
            return self.next_mixed();
        }
        match self.follow_ups.pop_front() {
            Some((id, n, fate)) => self.follow_up(id, n, fate),
            None => self.new_reserve(),
        }
    }

    fn next_mixed(&mut self) -> (Op, Sent) {
        let mix = self.workload.mix;
        let total = mix.reserve + mix.confirm + mix.release + mix.query;
        let pick = self.rng.below(u64::from(total.max(1))) as u32;
        if pick < mix.reserve {
            return self.new_reserve();
        }
        if pick < mix.reserve + mix.confirm + mix.release {
            let fate = if pick < mix.reserve + mix.confirm { Fate::Confirm } else { Fate::Release };
            // Only holds still held are candidates; expired ones would just answer `expired`.
            if let Some((id, n, _)) = self.follow_ups.pop_front() {
                return self.follow_up(id, n, fate);
            }
            return self.new_reserve();
        }
        let sku = self.rng.below(self.workload.skus);
        (Op::QuerySku { sku: self.sku_name(sku) }, Sent::Query)
    }

    /// Records the server's answer to a request.
    pub fn on_reply(&mut self, sent: Sent, reply: &OpReply) {
        let code = reply.code();
        match sent {
            Sent::Reserve { id, n, lines, channel, customer } => {
                self.ledger.codes.add(Sends::Reserve, code);
                for (sku, _) in &lines {
                    self.ledger.touched.insert(*sku);
                }
                let OpReply::Reserve(reserve) = reply else {
                    self.ledger.unexpected.push(format!("{id:?}: reply {reply:?}"));
                    return;
                };
                match code {
                    ResultCode::Ok => {
                        let roll = self.rng.unit();
                        let fate = if roll < self.workload.confirm_share {
                            Fate::Confirm
                        } else if roll < self.workload.confirm_share + self.workload.release_share {
                            Fate::Release
                        } else {
                            Fate::Expire
                        };
                        if fate != Fate::Expire || self.workload.scenario == Scenario::Mixed {
                            self.follow_ups.push_back((id.clone(), n, fate));
                        }
                        let expires_at_ms = reserve.expires_at_ms;
                        self.ledger
                            .held
                            .insert(n, Hold { id, lines, expires_at_ms, channel, customer });
                    }
                    ResultCode::InsufficientStock
                    | ResultCode::BelowSafetyStock
                    | ResultCode::SkuPaused => {}
                    ResultCode::BuyerLimitExceeded if self.workload.limits.max_per_buyer > 0 => {}
                    ResultCode::ChannelQuotaExceeded if !self.workload.limits.quotas.is_empty() => {
                    }
                    other => self.ledger.unexpected.push(format!("reserve {id:?}: {other}")),
                }
            }
            Sent::Confirm { id, n } => {
                self.ledger.codes.add(Sends::Confirm, code);
                match code {
                    ResultCode::Ok => {
                        if let Some(hold) = self.ledger.held.remove(n) {
                            for (sku, qty) in hold.lines {
                                let qty = u64::from(qty);
                                *self.ledger.confirmed.entry(sku).or_default() += qty;
                                let ledger = &mut self.ledger;
                                *ledger
                                    .confirmed_by_buyer
                                    .entry((sku, hold.customer.clone()))
                                    .or_default() += qty;
                                *ledger
                                    .confirmed_by_channel
                                    .entry((sku, hold.channel.clone()))
                                    .or_default() += qty;
                            }
                            self.ledger.confirmed_ids.push(id);
                        }
                    }
                    // The hold outlived its TTL before the buyer paid: it is expired, not held.
                    ResultCode::Expired => {}
                    other => self.ledger.unexpected.push(format!("confirm {id:?}: {other}")),
                }
            }
            Sent::Release { id, n } => {
                self.ledger.codes.add(Sends::Release, code);
                match code {
                    ResultCode::Ok => {
                        if self.ledger.held.remove(n).is_some() {
                            self.ledger.released_ids.push(id);
                        }
                    }
                    ResultCode::Expired => {}
                    other => self.ledger.unexpected.push(format!("release {id:?}: {other}")),
                }
            }
            Sent::Query => self.ledger.codes.add(Sends::Query, code),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(n: u64) -> Hold {
        Hold {
            id: Bytes::from(format!("t-{n}")),
            lines: vec![(n, 1)],
            expires_at_ms: n,
            channel: Bytes::new(),
            customer: Bytes::new(),
        }
    }

    fn ids(holds: &Holds) -> Vec<u64> {
        let mut ids: Vec<u64> = holds.iter().map(|h| h.expires_at_ms).collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn holds_are_found_by_number_in_any_order_and_the_book_drains() {
        let mut holds = Holds::default();
        // Replies out of order, with gaps (refused reserves), and one before the first filed.
        for n in [5, 7, 6, 10, 4] {
            holds.insert(n, hold(n));
        }
        assert_eq!(ids(&holds), [4, 5, 6, 7, 10]);
        assert_eq!(holds.len(), 5);
        assert!(
            holds.remove(8).is_none() && holds.remove(3).is_none() && holds.remove(11).is_none()
        );
        assert_eq!(holds.remove(5).map(|h| h.id), Some(Bytes::from("t-5")));
        assert!(holds.remove(5).is_none(), "a hold ends once");
        for n in [4, 6, 7] {
            assert_eq!(holds.remove(n).map(|h| h.expires_at_ms), Some(n));
        }
        // Everything before 10 has ended: the deque dropped those slots.
        assert_eq!((holds.first, holds.slots.len(), holds.len()), (10, 1, 1));
        assert_eq!(holds.remove(10).map(|h| h.expires_at_ms), Some(10));
        assert!(holds.is_empty() && holds.slots.is_empty());
        // An empty book starts again wherever the next hold is.
        holds.insert(1_000_000, hold(1_000_000));
        assert_eq!((holds.first, holds.slots.len()), (1_000_000, 1));
    }

    #[test]
    fn merged_books_list_every_hold() {
        let (mut a, mut b) = (Holds::default(), Holds::default());
        for n in 1..=3 {
            a.insert(n, hold(n));
            b.insert(n + 10, hold(n + 10));
        }
        a.remove(2);
        b.remove(11);
        let mut merged = Holds::default();
        merged.merge(a);
        merged.merge(b);
        assert_eq!(ids(&merged), [1, 3, 12, 13]);
        assert_eq!(merged.len(), 4);
    }

    #[test]
    fn names_match_the_formatted_ones_across_buffer_chunks() {
        let workload = Workload {
            scenario: Scenario::Checkout,
            prefix: "lt1".into(),
            skus: SKU_NAMES_KEPT + 10,
            ttl_ms: 1000,
            confirm_share: 0.0,
            release_share: 0.0,
            lines_max: 3,
            mix: Mix { reserve: 1, confirm: 0, release: 0, query: 0 },
            buyers: 0,
            channels: Vec::new(),
            limits: SkuLimits::default(),
        };
        let mut worker = Worker::new(std::sync::Arc::new(workload.clone()), 3, 7);
        // Past the kept names and past several buffer chunks; names made earlier stay intact.
        let indexes = [0, 1, 9, 10, SKU_NAMES_KEPT - 1, SKU_NAMES_KEPT, u64::MAX];
        let mut made = Vec::new();
        for round in 0..(3 * NAME_CHUNK / 8) {
            let index = indexes[round % indexes.len()];
            made.push((index, worker.sku_name(index)));
        }
        for (index, name) in &made {
            assert_eq!(name, &workload.sku_name(*index));
        }
        let mut names = Names::default();
        assert_eq!(names.make(b"x-", 0), Bytes::from_static(b"x-0"));
        let long = vec![b'p'; NAME_CHUNK + 5];
        assert_eq!(names.make(&long, 42).len(), NAME_CHUNK + 7, "a name longer than a chunk");
        let (op, _) = worker.new_reserve();
        let Op::Reserve(reserve) = op else { panic!("a reserve") };
        assert_eq!(reserve.id, Bytes::from_static(b"lt1-w3-1"));
    }

    #[test]
    fn codes_and_touched_skus_count_and_merge() {
        let (mut a, mut b) = (Codes::default(), Codes::default());
        a.add(Sends::Reserve, ResultCode::Ok);
        a.add(Sends::Reserve, ResultCode::Ok);
        b.add(Sends::Reserve, ResultCode::InsufficientStock);
        b.add(Sends::Query, ResultCode::Ok);
        a.merge(&b);
        let seen: Vec<_> = a.iter().collect();
        assert_eq!(
            seen,
            [("reserve", "ok", 2), ("reserve", "insufficient_stock", 1), ("query", "ok", 1)]
        );
        let (mut x, mut y) = (Touched::default(), Touched::default());
        for sku in [5, 64, 0, 5, 1_000_003] {
            x.insert(sku);
        }
        y.insert(63);
        y.merge(&x);
        x.merge(&Touched::default());
        assert_eq!(y.iter().collect::<Vec<_>>(), [0, 5, 63, 64, 1_000_003]);
        assert_eq!(x.iter().collect::<Vec<_>>(), [0, 5, 64, 1_000_003]);
    }
}
