//! Prometheus metrics. Counters and histograms are updated on the request path; figures that
//! live elsewhere (WAL statistics, snapshot position, engine sizes, health) are read when
//! `/metrics` is scraped.

use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::server::Shared;
use crate::wal::Health;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    op: &'static str,
    code: &'static str,
}

pub struct Metrics {
    registry: Registry,
    operations: Family<OperationLabels, Counter>,
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
        Metrics {
            registry,
            operations,
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
        }
    }

    /// Counts one operation and its result.
    pub fn operation(&self, op: &'static str, code: &'static str) {
        self.operations.get_or_create(&OperationLabels { op, code }).inc();
    }

    pub fn request_latency(&self, elapsed: Duration) {
        self.request_seconds.observe(elapsed.as_secs_f64());
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
        let (skus, reservations) = shared.engine.counts();
        self.skus.set(skus as i64);
        self.reservations.set(reservations as i64);
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}
