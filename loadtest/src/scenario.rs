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

use bytes::Bytes;
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
    Reserve { id: Bytes, lines: Vec<(u64, u32)>, channel: Bytes, customer: Bytes },
    Confirm { id: Bytes },
    Release { id: Bytes },
    Query,
}

/// A hold the client was granted and not yet confirmed or released.
#[derive(Clone, Debug)]
pub struct Hold {
    pub lines: Vec<(u64, u32)>,
    pub expires_at_ms: u64,
    pub channel: Bytes,
    pub customer: Bytes,
}

/// The harness's bookkeeping maps: a fast hasher, so that at hundreds of thousands of replies
/// a second the load generator spends its (shared) cores on the load, not on SipHash.
pub type HashMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;
pub type HashSet<K> = std::collections::HashSet<K, ahash::RandomState>;

/// What one worker was told by the server.
#[derive(Default, Debug)]
pub struct Ledger {
    /// Confirmed units per SKU index.
    pub confirmed: HashMap<u64, u64>,
    /// Confirmed units per (SKU index, customer) and per (SKU index, channel).
    pub confirmed_by_buyer: HashMap<(u64, Bytes), u64>,
    pub confirmed_by_channel: HashMap<(u64, Bytes), u64>,
    /// Holds granted and neither confirmed nor released (live, or expired by now).
    pub held: HashMap<Bytes, Hold>,
    /// Reservations confirmed, and released, by id (for spot checks).
    pub confirmed_ids: Vec<Bytes>,
    pub released_ids: Vec<Bytes>,
    /// Every SKU index touched.
    pub touched: HashSet<u64>,
    /// Result codes per operation name.
    pub codes: HashMap<(&'static str, &'static str), u64>,
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
        self.held.extend(other.held);
        self.confirmed_ids.extend(other.confirmed_ids);
        self.released_ids.extend(other.released_ids);
        self.touched.extend(other.touched);
        for (key, count) in other.codes {
            *self.codes.entry(key).or_default() += count;
        }
        self.unexpected.extend(other.unexpected);
    }
}

/// One simulated client's state.
pub struct Worker {
    workload: std::sync::Arc<Workload>,
    rng: Rng,
    tag: String,
    next_id: u64,
    follow_ups: VecDeque<(Bytes, Fate)>,
    pub ledger: Ledger,
}

impl Worker {
    pub fn new(workload: std::sync::Arc<Workload>, worker: usize, seed: u64) -> Worker {
        let tag = format!("{}-w{worker}", workload.prefix);
        Worker {
            workload,
            rng: Rng::new(seed ^ (worker as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            tag,
            next_id: 0,
            follow_ups: VecDeque::new(),
            ledger: Ledger::default(),
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
        let id = Bytes::from(format!("{}-{}", self.tag, self.next_id));
        let channel = if w.channels.is_empty() {
            Bytes::from_static(b"loadtest")
        } else {
            w.channels[self.rng.below(w.channels.len() as u64) as usize].clone()
        };
        let customer = if w.buyers == 0 {
            Bytes::new()
        } else {
            Bytes::from(format!("{}-buyer-{}", w.prefix, self.rng.below(w.buyers)))
        };
        let op = Op::Reserve(Reserve {
            id: id.clone(),
            ttl_ms: w.ttl_ms,
            channel: channel.clone(),
            customer: customer.clone(),
            lines: lines.iter().map(|(s, q)| Line::new(w.sku_name(*s), *q)).collect(),
        });
        (op, Sent::Reserve { id, lines, channel, customer })
    }

    fn follow_up(&mut self, id: Bytes, fate: Fate) -> (Op, Sent) {
        match fate {
            Fate::Confirm => {
                (Op::Confirm(Confirm { id: id.clone(), lines: vec![] }), Sent::Confirm { id })
            }
            _ => (Op::Release { id: id.clone() }, Sent::Release { id }),
        }
    }

    fn next_op(&mut self) -> (Op, Sent) {
        if self.workload.scenario == Scenario::Mixed {
            return self.next_mixed();
        }
        match self.follow_ups.pop_front() {
            Some((id, fate)) => self.follow_up(id, fate),
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
            if let Some((id, _)) = self.follow_ups.pop_front() {
                return self.follow_up(id, fate);
            }
            return self.new_reserve();
        }
        let sku = self.rng.below(self.workload.skus);
        (Op::QuerySku { sku: self.workload.sku_name(sku) }, Sent::Query)
    }

    fn count(&mut self, op: &'static str, code: ResultCode) {
        *self.ledger.codes.entry((op, code.name())).or_default() += 1;
    }

    /// Records the server's answer to a request.
    pub fn on_reply(&mut self, sent: Sent, reply: &OpReply) {
        let code = reply.code();
        match sent {
            Sent::Reserve { id, lines, channel, customer } => {
                self.count("reserve", code);
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
                            self.follow_ups.push_back((id.clone(), fate));
                        }
                        let expires_at_ms = reserve.expires_at_ms;
                        let hold = Hold { lines, expires_at_ms, channel, customer };
                        self.ledger.held.insert(id, hold);
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
            Sent::Confirm { id } => {
                self.count("confirm", code);
                match code {
                    ResultCode::Ok => {
                        if let Some(hold) = self.ledger.held.remove(&id) {
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
            Sent::Release { id } => {
                self.count("release", code);
                match code {
                    ResultCode::Ok => {
                        if self.ledger.held.remove(&id).is_some() {
                            self.ledger.released_ids.push(id);
                        }
                    }
                    ResultCode::Expired => {}
                    other => self.ledger.unexpected.push(format!("release {id:?}: {other}")),
                }
            }
            Sent::Query => self.count("query", code),
        }
    }
}
