//! Prometheus metrics. Counters and histograms are updated on the request path; figures that
//! live elsewhere (WAL statistics, snapshot position, engine sizes, health) are read when
//! `/metrics` is scraped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use stockd_protocol::{Opcode, ResultCode};

use crate::aftersales::{sla, TicketState};
use crate::server::Shared;
use crate::wal::Health;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    op: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelLabels {
    channel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TicketLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelOutcomeLabels {
    channel: String,
    outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    channel_token_expiry: Family<ChannelLabels, Gauge>,
    channel_failed_pulls: Family<ChannelLabels, Gauge>,
    channel_backlog: Family<ChannelLabels, Gauge>,
    channel_orders: Family<ChannelOutcomeLabels, Counter>,
    alerts_firing: Gauge,
    tickets: Family<TicketLabels, Gauge>,
    tickets_overdue: Gauge,
    parcels_unmatched: Gauge,
    operations: Family<OperationLabels, Counter>,
    /// `operations`' counters by opcode and then result code (wire values), each looked up in
    /// the family once: counting an operation is then two indexes and an atomic add, where the
    /// family's lookup hashed both label names under a lock for every operation.
    operation_counters: [OnceLock<Box<[OnceLock<Counter>; 256]>>; 256],
    request_seconds: Histogram,
    commit_wait_seconds: Histogram,
    connections: Gauge,
    wal_bytes: Counter,
    wal_records: Counter,
    wal_fsyncs: Counter,
    wal_segments: Counter,
    wal_fsync_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    wal_durable_lsn: Gauge,
    read_only: Gauge,
    snapshot_lsn: Gauge,
    snapshot_age_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    skus: Gauge,
    reservations: Gauge,
    holds_open: Gauge,
    paused_skus: Gauge,
    expired_holds: Counter,
    disk_free_bytes: Gauge,
    heap_allocated_bytes: Gauge,
    heap_resident_bytes: Gauge,
    /// Every operation answered, for the dashboard's throughput.
    pub operations_total: AtomicU64,
    /// Request latencies, for the dashboard's percentiles over its last interval.
    pub request_window: LatencyWindow,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("stockd");
        // 50 us to about 13 s.
        let latency = || Histogram::new(exponential_buckets(0.000_05, 2.0, 19));
        let operations = Family::<OperationLabels, Counter>::default();
        let request_seconds = latency();
        let commit_wait_seconds = latency();
        registry.register("operations", "Operations by type and result code", operations.clone());
        registry.register(
            "request_seconds",
            "Time from a request's arrival to its reply being sent, durability wait included",
            request_seconds.clone(),
        );
        registry.register(
            "commit_wait_seconds",
            "Time replies waited for the log to become durable",
            commit_wait_seconds.clone(),
        );
        let mut counter = |name: &str, help: &str| {
            let metric = Counter::default();
            registry.register(name, help, metric.clone());
            metric
        };
        let wal_bytes = counter("wal_bytes", "Bytes written to the log");
        let wal_records = counter("wal_records", "Records written to the log");
        let wal_fsyncs = counter("wal_fsyncs", "fdatasync calls on the log");
        let wal_segments = counter("wal_segments", "Log segments started");
        let wal_fsync_seconds = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "wal_fsync_seconds",
            "Time spent in fdatasync on the log",
            wal_fsync_seconds.clone(),
        );
        let snapshot_age_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "snapshot_age_seconds",
            "Time since the newest snapshot written by this process (since start if none)",
            snapshot_age_seconds.clone(),
        );
        let mut gauge = |name: &str, help: &str| {
            let metric = Gauge::default();
            registry.register(name, help, metric.clone());
            metric
        };
        let connections = gauge("connections", "Open client connections");
        let wal_durable_lsn = gauge("wal_durable_lsn", "Last durable log record");
        let read_only = gauge("read_only", "1 while writes are refused");
        let snapshot_lsn = gauge("snapshot_lsn", "Log record of the newest snapshot");
        let skus = gauge("skus", "SKUs stored");
        let reservations = gauge("reservations", "Reservations stored, in every state");
        let holds_open = gauge("holds_open", "Holds not yet confirmed, released or expired");
        let paused_skus =
            gauge("skus_paused", "SKUs with a safety stock and nothing available above it");
        let disk_free_bytes =
            gauge("disk_free_bytes", "Free bytes on the data directory's file system");
        let heap_allocated_bytes =
            gauge("heap_allocated_bytes", "Bytes allocated by the server and not yet freed");
        let heap_resident_bytes = gauge(
            "heap_resident_bytes",
            "Bytes in pages the allocator keeps resident (allocated plus fragmentation and \
             free pages not yet returned)",
        );
        let alerts_firing = gauge("alerts_firing", "Alerts firing (acknowledged or not)");
        let tickets_overdue = gauge("tickets_overdue", "Return tickets over their stage's limit");
        let parcels_unmatched =
            gauge("parcels_unmatched", "Scanned parcels no return ticket matched (kept)");
        let tickets = Family::<TicketLabels, Gauge>::default();
        registry.register("tickets", "Return tickets by state", tickets.clone());
        let channel_token_expiry = Family::<ChannelLabels, Gauge>::default();
        registry.register(
            "channel_token_expiry_seconds",
            "When the channel's access token expires (UTC seconds since the Unix epoch)",
            channel_token_expiry.clone(),
        );
        let channel_failed_pulls = Family::<ChannelLabels, Gauge>::default();
        registry.register(
            "channel_failed_pulls",
            "Consecutive failed order pulls of the channel",
            channel_failed_pulls.clone(),
        );
        let channel_backlog = Family::<ChannelLabels, Gauge>::default();
        registry.register(
            "channel_backlog",
            "Orders being applied plus SKUs waiting to be pushed, per channel",
            channel_backlog.clone(),
        );
        let channel_orders = Family::<ChannelOutcomeLabels, Counter>::default();
        registry.register(
            "channel_orders",
            "Order events from channels by outcome (applied, rejected, duplicate) and refused \
             webhooks (bad_signature), since start",
            channel_orders.clone(),
        );
        let expired_holds = Counter::default();
        registry.register(
            "holds_expired",
            "Holds ended by their deadline (logged by the sweep)",
            expired_holds.clone(),
        );
        Metrics {
            registry,
            channel_token_expiry,
            channel_failed_pulls,
            channel_backlog,
            channel_orders,
            alerts_firing,
            tickets,
            tickets_overdue,
            parcels_unmatched,
            operations,
            operation_counters: [const { OnceLock::new() }; 256],
            request_seconds,
            commit_wait_seconds,
            connections,
            wal_bytes,
            wal_records,
            wal_fsyncs,
            wal_segments,
            wal_fsync_seconds,
            wal_durable_lsn,
            read_only,
            snapshot_lsn,
            snapshot_age_seconds,
            skus,
            reservations,
            holds_open,
            paused_skus,
            expired_holds,
            disk_free_bytes,
            heap_allocated_bytes,
            heap_resident_bytes,
            operations_total: AtomicU64::new(0),
            request_window: LatencyWindow::default(),
        }
    }

    /// Counts holds the sweep expired.
    pub fn expired(&self, holds: u64) {
        self.expired_holds.inc_by(holds);
    }

    /// Counts one operation and its result.
    pub fn operation(&self, op: Opcode, code: ResultCode) {
        let by_code = self.operation_counters[usize::from(op as u8)]
            .get_or_init(|| Box::new([const { OnceLock::new() }; 256]));
        by_code[usize::from(code.as_u8())]
            .get_or_init(|| {
                let labels = OperationLabels { op: op.name(), code: code.name() };
                self.operations.get_or_create(&labels).clone()
            })
            .inc();
        self.operations_total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn request_latency(&self, elapsed: Duration) {
        self.request_seconds.observe(elapsed.as_secs_f64());
        self.request_window.record(elapsed);
    }

    pub fn commit_wait(&self, elapsed: Duration) {
        self.commit_wait_seconds.observe(elapsed.as_secs_f64());
    }

    pub fn connection_opened(&self) {
        self.connections.inc();
    }

    pub fn connection_closed(&self) {
        self.connections.dec();
    }

    /// Open client connections.
    pub fn connections(&self) -> i64 {
        self.connections.get()
    }

    /// The exposition text, with the figures read at scrape time brought up to date.
    pub fn render(&self, shared: &Shared) -> String {
        let stats = shared.wal.stats();
        let catch_up = |counter: &Counter, value: u64| {
            counter.inc_by(value.saturating_sub(counter.get()));
        };
        catch_up(&self.wal_bytes, stats.bytes_written.load(Ordering::Relaxed));
        catch_up(&self.wal_records, stats.records_written.load(Ordering::Relaxed));
        catch_up(&self.wal_fsyncs, stats.fsyncs.load(Ordering::Relaxed));
        catch_up(&self.wal_segments, stats.segments_created.load(Ordering::Relaxed));
        let fsync_seconds = stats.fsync_nanos_total.load(Ordering::Relaxed) as f64 / 1e9;
        self.wal_fsync_seconds.inc_by((fsync_seconds - self.wal_fsync_seconds.get()).max(0.0));
        let progress = shared.wal.progress();
        self.wal_durable_lsn.set(progress.durable_lsn as i64);
        self.read_only.set(i64::from(progress.health != Health::Ok));
        self.snapshot_lsn.set(*shared.snapshot_lsn.borrow() as i64);
        let age_ms =
            shared.clock.now_ms().saturating_sub(shared.snapshot_at_ms.load(Ordering::Relaxed));
        self.snapshot_age_seconds.set(age_ms as f64 / 1000.0);
        let summary = shared.engine.summary(shared.clock.now_ms());
        self.skus.set(summary.skus as i64);
        self.reservations.set(summary.reservations as i64);
        self.holds_open.set(summary.holds_open as i64);
        self.paused_skus.set(summary.paused_skus as i64);
        if let Some(free) = shared.storage.free_bytes() {
            self.disk_free_bytes.set(free as i64);
        }
        if let Some(heap) = crate::heap::stats() {
            self.heap_allocated_bytes.set(heap.allocated as i64);
            self.heap_resident_bytes.set(heap.resident as i64);
        }
        self.alerts_firing.set(shared.alerts.open_alerts().len() as i64);
        let now_ms = shared.clock.now_ms();
        let limits = &shared.config.aftersales;
        let (by_state, overdue, parcels) = shared.engine.with_aftersales(|state| {
            let mut by_state = [0i64; TicketState::ALL.len()];
            let mut overdue = 0i64;
            for ticket in state.tickets() {
                by_state[ticket.state as usize] += 1;
                let late =
                    ticket.state.is_timed() && sla::overdue(ticket, limits, now_ms).is_some();
                overdue += i64::from(late);
            }
            (by_state, overdue, state.parcels().len() as i64)
        });
        for (state, count) in TicketState::ALL.iter().zip(by_state) {
            self.tickets.get_or_create(&TicketLabels { state: state.name() }).set(count);
        }
        self.tickets_overdue.set(overdue);
        self.parcels_unmatched.set(parcels);
        for channel in &shared.sync.channels {
            let status = channel.status(shared);
            let labels = ChannelLabels { channel: status.name.clone() };
            if let Some(at_ms) = status.token_expires_at_ms {
                self.channel_token_expiry.get_or_create(&labels).set((at_ms / 1000) as i64);
            }
            self.channel_failed_pulls.get_or_create(&labels).set(i64::from(status.failed_pulls));
            self.channel_backlog.get_or_create(&labels).set(status.backlog as i64);
            for (outcome, value) in [
                ("applied", status.orders_applied),
                ("rejected", status.orders_rejected),
                ("duplicate", status.orders_duplicate),
                ("bad_signature", status.bad_signatures),
            ] {
                let labels = ChannelOutcomeLabels { channel: status.name.clone(), outcome };
                catch_up(&self.channel_orders.get_or_create(&labels), value);
            }
        }
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

/// A latency histogram made for reading percentiles over an interval: take a [`snapshot`]
/// at the start and at the end, and ask the difference for quantiles. Buckets are log-linear
/// (four per power of two of microseconds, so a reported value is within 19 % of the truth),
/// from 1 us to about 1 minute; recording is one relaxed atomic add.
///
/// [`snapshot`]: LatencyWindow::snapshot
pub struct LatencyWindow {
    buckets: Box<[AtomicU64]>,
}

const WINDOW_OCTAVES: usize = 26;
const WINDOW_STEPS: usize = 4;
const WINDOW_BUCKETS: usize = WINDOW_OCTAVES * WINDOW_STEPS;

impl Default for LatencyWindow {
    fn default() -> LatencyWindow {
        LatencyWindow { buckets: (0..WINDOW_BUCKETS).map(|_| AtomicU64::new(0)).collect() }
    }
}

/// Bucket counts of a [`LatencyWindow`] at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowSnapshot(Vec<u64>);

impl LatencyWindow {
    fn bucket(micros: u64) -> usize {
        if micros < 2 {
            return 0;
        }
        let octave = 63 - micros.leading_zeros() as usize;
        // The two bits below the leading one pick the step within the octave.
        let step = ((micros >> (octave.saturating_sub(2))) & 0b11) as usize;
        let step = if octave < 2 { step << (2 - octave) & 0b11 } else { step };
        (octave * WINDOW_STEPS + step).min(WINDOW_BUCKETS - 1)
    }

    /// The upper bound in microseconds of values counted in bucket `index`.
    fn upper_micros(index: usize) -> u64 {
        let (octave, step) = (index / WINDOW_STEPS, (index % WINDOW_STEPS) as u64);
        let base = 1u64 << octave;
        base + (base * (step + 1)) / WINDOW_STEPS as u64
    }

    pub fn record(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.buckets[Self::bucket(micros)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> WindowSnapshot {
        WindowSnapshot(self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect())
    }
}

impl WindowSnapshot {
    /// The counts recorded after `earlier` was taken.
    pub fn since(&self, earlier: &WindowSnapshot) -> WindowSnapshot {
        WindowSnapshot(self.0.iter().zip(&earlier.0).map(|(a, b)| a.saturating_sub(*b)).collect())
    }

    pub fn count(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The value below which a share `q` (0..=1) of the recorded latencies fall, as the upper
    /// bound of its bucket; `None` if nothing was recorded.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, count) in self.0.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(Duration::from_micros(LatencyWindow::upper_micros(index)));
            }
        }
        unreachable!("the rank is at most the total")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_quantiles_bound_the_recorded_values() {
        let window = LatencyWindow::default();
        let before = window.snapshot();
        for micros in 1..=1000u64 {
            window.record(Duration::from_micros(micros));
        }
        let recorded = window.snapshot().since(&before);
        assert_eq!(recorded.count(), 1000);
        for (q, exact) in [(0.5, 500u64), (0.9, 900), (0.99, 990), (1.0, 1000)] {
            let reported = recorded.quantile(q).expect("values recorded").as_micros() as u64;
            assert!(reported >= exact, "q{q}: {reported} us below the true {exact} us");
            assert!(reported as f64 <= exact as f64 * 1.25 + 1.0, "q{q}: {reported} us too coarse");
        }
        assert_eq!(window.snapshot().since(&window.snapshot()).quantile(0.5), None);
    }

    #[test]
    fn window_buckets_are_ordered_and_cover_their_values() {
        let mut previous = 0;
        for micros in 0..200_000u64 {
            let index = LatencyWindow::bucket(micros);
            assert!(index >= previous, "{micros} us went to an earlier bucket");
            assert!(LatencyWindow::upper_micros(index) >= micros, "{micros} us above its bucket");
            previous = index;
        }
    }
}
