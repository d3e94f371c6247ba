//! The dashboard's sampler: every `http.sample_interval_ms` it reads the server's counters
//! (throughput, latency over the last interval, WAL, disk, snapshot, state totals) and the
//! SKUs that took holds since the last sample, and publishes an immutable [`Sample`] on a watch
//! channel. The admin API and every open dashboard read the newest sample; nobody waits for it.
//!
//! Sell rates: each active SKU keeps a short history (`http.trend_samples` samples) of its
//! units-ever-held count, drawn as its trend. Its slope over the last 10 samples is the current
//! sell rate (units held per minute), which projects the sell-out time from the units
//! available ("at the current rate, sells out in 4 min"). A SKU with no new holds for a whole history
//! drops out; at most `http.activity_skus_max` SKUs are followed (the least recently active
//! drop out first; of SKUs that start selling in the same sample, the busiest are taken).
//! The engine reports only the SKUs that changed since the previous sample
//! (`Engine::sample_activity`), so a sample costs what the traffic changed, not the size of
//! the catalogue.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::engine::{Engine, Summary};
use crate::metrics::WindowSnapshot;
use crate::server::Shared;
use crate::wal::Health;

/// The sell rate of one active SKU.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Trend {
    /// Units held per minute, over the last 10 samples (the current rate).
    pub rate_per_min: f64,
    /// Units held per minute in each sampling interval, oldest first.
    pub trend: Vec<f64>,
    /// At the current sell rate, seconds until nothing is available (0 when sold out; `None`
    /// when not selling). Pessimistic: units that come back (releases, expiries) are not
    /// counted against it.
    pub sells_out_in_s: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct WalStatus {
    pub durable_lsn: u64,
    pub fsync: String,
    pub bytes_per_s: f64,
    pub fsyncs_per_s: f64,
    /// Mean fdatasync time over the last interval, when there was one.
    pub fsync_avg_ms: Option<f64>,
    pub segments_created: u64,
}

/// The server's health figures at one moment (`GET /api/v1/status`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    pub version: &'static str,
    /// `ok`, or `read_only` while writes are refused.
    pub state: &'static str,
    /// Why the server is read-only.
    pub state_detail: Option<&'static str>,
    pub now_ms: u64,
    pub uptime_s: u64,
    /// Length of the interval the rates below cover.
    pub interval_s: f64,
    pub ops_per_s: f64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub connections: i64,
    /// SKUs, reservations, open holds, paused SKUs and unit totals.
    #[serde(flatten)]
    pub totals: Summary,
    pub wal: WalStatus,
    pub disk_free_bytes: Option<u64>,
    pub snapshot_lsn: u64,
    pub snapshot_age_s: f64,
    pub active_skus: usize,
}

/// One published sample.
#[derive(Debug, Default)]
pub struct Sample {
    pub status: Status,
    /// Sell rates of the SKUs followed.
    pub activity: HashMap<Bytes, Trend>,
    /// The followed SKUs, highest sell rate first.
    pub top: Vec<Bytes>,
}

struct Track {
    /// (time, units ever held), oldest first.
    history: VecDeque<(u64, u64)>,
    last_change_ms: u64,
    available: u64,
    /// When the engine last reported the SKU (it reports only SKUs that changed).
    read_ms: u64,
}

/// A SKU that took holds and is not followed yet, ordered by the units it took.
type Candidate = Reverse<(u64, Bytes, u64, u64, u64)>;

/// Follows the active SKUs between samples.
struct Tracker {
    tracks: HashMap<Bytes, Track, ahash::RandomState>,
    /// When the previous sample was taken (`None` before the first).
    last_ms: Option<u64>,
    samples: usize,
    max: usize,
}

impl Tracker {
    fn new(samples: usize, max: usize) -> Tracker {
        Tracker { tracks: HashMap::default(), last_ms: None, samples, max }
    }

    /// Takes one sample of the engine at `now_ms`: the state's totals, and the sell rates.
    ///
    /// The engine reports only the SKUs that changed since the previous sample, so the cost
    /// follows the traffic. A followed SKU it does not report sold nothing and kept its
    /// counters. Of the SKUs not followed yet that took holds, at most `max` (those that took
    /// the most units) are kept as candidates: with more SKUs selling than can be followed,
    /// the busiest are the ones worth showing, and the others cost no copy of their id.
    fn sample(&mut self, engine: &Engine, now_ms: u64) -> (Summary, HashMap<Bytes, Trend>) {
        let first = self.last_ms.is_none();
        let (tracks, max) = (&mut self.tracks, self.max);
        let mut fresh: BinaryHeap<Candidate> = BinaryHeap::new();
        let totals = engine.sample_activity(now_ms, |sku, info, previous, taken| {
            let Some(info) = info else {
                tracks.remove(sku);
                return;
            };
            if first {
                return;
            }
            if let Some(track) = tracks.get_mut(sku) {
                track.history.push_back((now_ms, taken));
                track.available = info.available;
                track.read_ms = now_ms;
                if taken != previous {
                    track.last_change_ms = now_ms;
                }
            } else if taken != previous && max > 0 {
                let took = taken.saturating_sub(previous);
                if fresh.len() == max {
                    if fresh.peek().is_some_and(|least| least.0 .0 >= took) {
                        return;
                    }
                    fresh.pop();
                }
                let id = Bytes::copy_from_slice(sku);
                fresh.push(Reverse((took, id, previous, taken, info.available)));
            }
        });
        let Some(last_ms) = self.last_ms.replace(now_ms) else {
            // The first pass sees everything replayed at startup: a baseline, not activity.
            return (totals, HashMap::new());
        };
        let mut idle = Vec::new();
        for track in self.tracks.values_mut() {
            if track.read_ms != now_ms {
                let taken = track.history.back().map_or(0, |(_, taken)| *taken);
                track.history.push_back((now_ms, taken));
            }
        }
        for Reverse((_, sku, previous, taken, available)) in fresh {
            // A SKU newly active: its count at the previous sample starts the history.
            self.tracks.insert(
                sku,
                Track {
                    history: VecDeque::from([(last_ms, previous), (now_ms, taken)]),
                    last_change_ms: now_ms,
                    available,
                    read_ms: now_ms,
                },
            );
        }
        // A SKU stays followed without new holds for as long as its history reaches back.
        let window_ms = (now_ms - last_ms).max(1) * self.samples as u64;
        for (sku, track) in &mut self.tracks {
            while track.history.len() > self.samples + 1 {
                track.history.pop_front();
            }
            if now_ms.saturating_sub(track.last_change_ms) > window_ms {
                idle.push(sku.clone());
            }
        }
        for sku in idle {
            self.tracks.remove(&sku);
        }
        if self.tracks.len() > self.max {
            let mut by_recency: Vec<(u64, Bytes)> =
                self.tracks.iter().map(|(sku, t)| (t.last_change_ms, sku.clone())).collect();
            let excess = self.tracks.len() - self.max;
            // The `excess` least recently active first (no full sort: after a burst over many
            // SKUs there can be tens of thousands).
            by_recency.select_nth_unstable(excess - 1);
            for (_, sku) in by_recency.into_iter().take(excess) {
                self.tracks.remove(&sku);
            }
        }
        (totals, self.tracks.iter().map(|(sku, track)| (sku.clone(), trend(track))).collect())
    }
}

fn per_min(units: u64, ms: u64) -> f64 {
    if ms == 0 {
        0.0
    } else {
        units as f64 * 60_000.0 / ms as f64
    }
}

/// Sampling intervals the current rate is measured over (10 s at the default interval): long
/// enough to smooth bursts, short enough that a SKU that stopped selling shows it soon.
const RECENT_STEPS: usize = 10;

fn trend(track: &Track) -> Trend {
    let history = &track.history;
    let recent = history.len().saturating_sub(RECENT_STEPS + 1);
    let (first, last) = (history.get(recent), history.back());
    let (Some(&(t0, taken0)), Some(&(t1, taken1))) = (first, last) else {
        return Trend { rate_per_min: 0.0, trend: Vec::new(), sells_out_in_s: None };
    };
    let steps = history.iter().zip(history.iter().skip(1));
    let trend = steps.map(|(a, b)| per_min(b.1 - a.1, b.0 - a.0)).collect();
    let rate_per_min = per_min(taken1 - taken0, t1 - t0);
    let sells_out_in_s = if track.available == 0 {
        Some(0.0)
    } else if rate_per_min > 0.0 {
        Some(track.available as f64 * 60.0 / rate_per_min)
    } else {
        None
    };
    Trend { rate_per_min, trend, sells_out_in_s }
}

/// Counter readings kept between samples to turn totals into rates.
#[derive(Default)]
struct Previous {
    at_ms: u64,
    operations: u64,
    wal_bytes: u64,
    fsyncs: u64,
    fsync_nanos: u64,
    latency: Option<WindowSnapshot>,
}

fn status(shared: &Shared, now_ms: u64, totals: Summary, previous: &mut Previous) -> Status {
    let metrics = &shared.metrics;
    let stats = shared.wal.stats();
    let progress = shared.wal.progress();
    let operations = metrics.operations_total.load(Ordering::Relaxed);
    let wal_bytes = stats.bytes_written.load(Ordering::Relaxed);
    let fsyncs = stats.fsyncs.load(Ordering::Relaxed);
    let fsync_nanos = stats.fsync_nanos_total.load(Ordering::Relaxed);
    let latency = metrics.request_window.snapshot();
    let interval_ms = now_ms.saturating_sub(previous.at_ms).max(1);
    let rate = |now: u64, before: u64| (now - before) as f64 * 1000.0 / interval_ms as f64;
    let window = previous.latency.as_ref().map(|earlier| latency.since(earlier));
    let quantile = |q| {
        let value = window.as_ref()?.quantile(q)?;
        Some(value.as_secs_f64() * 1000.0)
    };
    let new_fsyncs = fsyncs - previous.fsyncs;
    let (state, state_detail) = match progress.health {
        Health::Ok => ("ok", None),
        Health::NoSpace => ("read_only", Some("the disk is full")),
        _ => ("read_only", Some("the write-ahead log failed")),
    };
    let status = Status {
        version: env!("CARGO_PKG_VERSION"),
        state,
        state_detail,
        now_ms,
        uptime_s: now_ms.saturating_sub(shared.started_ms) / 1000,
        interval_s: interval_ms as f64 / 1000.0,
        ops_per_s: rate(operations, previous.operations),
        latency_p50_ms: quantile(0.5),
        latency_p99_ms: quantile(0.99),
        connections: metrics.connections(),
        totals,
        wal: WalStatus {
            durable_lsn: progress.durable_lsn,
            fsync: format!("{:?}", shared.config.storage.fsync).to_lowercase(),
            bytes_per_s: rate(wal_bytes, previous.wal_bytes),
            fsyncs_per_s: rate(fsyncs, previous.fsyncs),
            fsync_avg_ms: (new_fsyncs > 0)
                .then(|| (fsync_nanos - previous.fsync_nanos) as f64 / new_fsyncs as f64 / 1e6),
            segments_created: stats.segments_created.load(Ordering::Relaxed),
        },
        disk_free_bytes: shared.storage.free_bytes(),
        snapshot_lsn: *shared.snapshot_lsn.borrow(),
        snapshot_age_s: now_ms.saturating_sub(shared.snapshot_at_ms.load(Ordering::Relaxed)) as f64
            / 1000.0,
        active_skus: 0,
    };
    *previous = Previous {
        at_ms: now_ms,
        operations,
        wal_bytes,
        fsyncs,
        fsync_nanos,
        latency: Some(latency),
    };
    status
}

/// The sampler between two samples.
pub struct Sampler {
    tracker: Tracker,
    previous: Previous,
}

impl Sampler {
    /// A sampler and its first sample, taken now (blocking: a scan of the state). Taking it
    /// before the HTTP side starts means nobody ever sees an empty sample.
    pub fn start(shared: &Shared) -> (Sampler, Sample) {
        let http = &shared.config.http;
        let previous = Previous { at_ms: shared.started_ms, ..Previous::default() };
        let mut sampler =
            Sampler { tracker: Tracker::new(http.trend_samples, http.activity_skus_max), previous };
        let sample = sampler.sample(shared);
        (sampler, sample)
    }

    fn sample(&mut self, shared: &Shared) -> Sample {
        let now_ms = shared.clock.now_ms();
        // One pass over the state gives both the totals and the SKUs that took holds.
        let (totals, activity) = self.tracker.sample(&shared.engine, now_ms);
        let mut status = status(shared, now_ms, totals, &mut self.previous);
        let mut top: Vec<(f64, Bytes)> =
            activity.iter().map(|(sku, t)| (t.rate_per_min, sku.clone())).collect();
        top.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        status.active_skus = top.len();
        let top = top.into_iter().map(|(_, sku)| sku).collect();
        Sample { status, activity, top }
    }

    /// Samples every `http.sample_interval_ms` until `stop` changes, publishing on `out`.
    /// Dropping `out` at the end closes every live dashboard stream, which lets the HTTP
    /// server finish its graceful shutdown.
    pub async fn run(
        mut self,
        shared: Arc<Shared>,
        out: watch::Sender<Arc<Sample>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let period = Duration::from_millis(shared.config.http.sample_interval_ms);
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => return,
            }
            let shared = shared.clone();
            // The scans take milliseconds at large sizes: off the async workers.
            let taken = tokio::task::spawn_blocking(move || {
                let sample = self.sample(&shared);
                (self, sample)
            })
            .await;
            let Ok((sampler, sample)) = taken else { return };
            self = sampler;
            out.send_replace(Arc::new(sample));
        }
    }
}

#[cfg(test)]
mod tests {
    use stockd_protocol::{Line, Reserve};

    use super::*;
    use crate::engine::{Command, EngineConfig};

    fn reserve(engine: &Engine, id: &str, sku: &str, qty: u32, now_ms: u64) {
        let reserve = Reserve {
            id: Bytes::copy_from_slice(id.as_bytes()),
            ttl_ms: 0,
            channel: Bytes::new(),
            customer: Bytes::new(),
            lines: vec![Line { sku: Bytes::copy_from_slice(sku.as_bytes()), qty }],
        };
        engine.apply(&Command::Reserve(reserve), now_ms, || {});
    }

    #[test]
    fn sell_rate_and_sell_out_projection_follow_the_holds() {
        let engine = Engine::new(EngineConfig::default());
        for sku in ["hot", "cold"] {
            let set = Command::SetStock { sku: Bytes::from(sku), on_hand: 1000, expected: None };
            engine.apply(&set, 0, || {});
        }
        reserve(&engine, "before-start", "hot", 5, 0);
        let mut tracker = Tracker::new(10, 100);
        let (totals, first) = tracker.sample(&engine, 0);
        assert!(first.is_empty(), "the first pass is a baseline");
        assert_eq!((totals.skus, totals.held_units, totals.on_hand_units), (2, 5, 2000));
        // 10 units per second on "hot" for 4 seconds.
        let mut rates = HashMap::new();
        for second in 1..=4u64 {
            reserve(&engine, &format!("r{second}"), "hot", 10, second * 1000);
            rates = tracker.sample(&engine, second * 1000).1;
        }
        let hot = &rates[&Bytes::from("hot")];
        // The first second counts too: the baseline sample starts the history.
        assert_eq!(hot.rate_per_min, 600.0);
        assert_eq!(hot.trend, vec![600.0; 4]);
        // 955 available, 10 taken per second.
        assert_eq!(hot.sells_out_in_s, Some(95.5));
        assert!(!rates.contains_key(&Bytes::from("cold")), "no holds, not followed");
        // Quiet for longer than the history: it drops out.
        let quiet = (5..=20).map(|second| tracker.sample(&engine, second * 1000).1).last();
        assert!(quiet.expect("sampled").is_empty());
    }

    #[test]
    fn the_number_of_followed_skus_is_bounded() {
        let engine = Engine::new(EngineConfig::default());
        let mut tracker = Tracker::new(10, 3);
        tracker.sample(&engine, 0);
        for n in 0..6u64 {
            let sku = format!("sku-{n}");
            let set =
                Command::SetStock { sku: Bytes::from(sku.clone()), on_hand: 10, expected: None };
            engine.apply(&set, 0, || {});
            reserve(&engine, &format!("r{n}"), &sku, 1, n * 100);
            let followed = tracker.sample(&engine, n * 100).1;
            assert!(followed.len() <= 3);
            assert!(followed.contains_key(&Bytes::from(sku)), "the newest is kept");
        }
    }

    #[test]
    fn with_more_skus_selling_than_followed_the_busiest_are_kept() {
        let engine = Engine::new(EngineConfig::default());
        for n in 0..5u32 {
            let set =
                Command::SetStock { sku: format!("sku-{n}").into(), on_hand: 100, expected: None };
            engine.apply(&set, 0, || {});
        }
        let mut tracker = Tracker::new(10, 2);
        tracker.sample(&engine, 0);
        // Five SKUs sell in the same second, sku-3 most, then sku-1.
        for (n, qty) in [(0, 1), (1, 7), (2, 2), (3, 9), (4, 3)] {
            reserve(&engine, &format!("r{n}"), &format!("sku-{n}"), qty, 500);
        }
        let followed = tracker.sample(&engine, 1000).1;
        let mut skus: Vec<&Bytes> = followed.keys().collect();
        skus.sort();
        assert_eq!(skus, vec!["sku-1", "sku-3"]);
        // 91 left at 9 units a second. Then the hold is released: no new holds, but the units
        // are back, and the projection follows them (100 available at 9 units over 2 s).
        assert_eq!(followed[&Bytes::from("sku-3")].sells_out_in_s, Some(91.0 * 60.0 / 540.0));
        engine.apply(&Command::Release { id: "r3".into() }, 1500, || {});
        let after = tracker.sample(&engine, 2000).1;
        let sku3 = &after[&Bytes::from("sku-3")];
        assert_eq!(sku3.rate_per_min, 270.0, "9 units over the last 2 s");
        assert_eq!(sku3.sells_out_in_s, Some(100.0 * 60.0 / 270.0), "all 100 available again");
    }
}
