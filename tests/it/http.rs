//! The HTTP operations endpoints: health, readiness, Prometheus metrics, JSON errors.

use crate::common;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use common::{http_get, test_config, TestServer, T0};
use stockd::clock::Clock;
use stockd::server::Server;
use stockd::wal::{MemStorage, StorageFile};
use stockd_protocol::{Line, Reserve, ResultCode};

fn reserve(id: &str, qty: u32) -> Reserve {
    Reserve {
        id: Bytes::copy_from_slice(id.as_bytes()),
        ttl_ms: 0,
        channel: Bytes::new(),
        customer: Bytes::new(),
        lines: vec![Line::new("sku", qty)],
    }
}

#[tokio::test]
async fn health_and_readiness() {
    let server = TestServer::start(test_config()).await;
    assert_eq!(http_get(server.http_addr, "/healthz").await.0, 200);
    let (status, _, body) = http_get(server.http_addr, "/readyz").await;
    assert_eq!((status, body.trim()), (200, "ready"));
    let (status, content_type, body) = http_get(server.http_addr, "/nope").await;
    assert_eq!(status, 404);
    assert!(content_type.starts_with("application/json"), "{content_type}");
    let error: serde_json::Value = serde_json::from_str(&body).expect("JSON error");
    assert_eq!(error["code"], "not_found");
    server.stop().await;
}

#[tokio::test]
async fn not_ready_while_read_only() {
    let storage = MemStorage::new();
    let config = test_config();
    let server = Server::bind_with(config.clone(), Clock::manual(T0), Arc::new(storage.clone()))
        .await
        .expect("server starts");
    let server = TestServer::run(server, config);
    let client = server.client().await;
    client.set_stock("sku", 5, None).await.unwrap();
    storage.fail_syncs(true);
    assert_eq!(client.reserve(reserve("r", 1)).await.unwrap().code, ResultCode::ReadOnly);
    let (status, _, body) = http_get(server.http_addr, "/readyz").await;
    assert_eq!(status, 503);
    let error: serde_json::Value = serde_json::from_str(&body).expect("JSON error");
    assert_eq!(error["code"], "read_only");
    assert!(error["message"].as_str().unwrap().contains("log failed"), "{body}");
    assert_eq!(http_get(server.http_addr, "/healthz").await.0, 200, "alive though not ready");
    let (_, _, metrics) = http_get(server.http_addr, "/metrics").await;
    assert!(metrics.lines().any(|l| l == "stockd_read_only 1"), "{metrics}");
    server.stop().await;
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_with_every_family() {
    let server = TestServer::start(test_config()).await;
    let client = server.client().await;
    client.set_stock("sku", 3, None).await.unwrap();
    for i in 0..5 {
        client.reserve(reserve(&format!("r{i}"), 1)).await.unwrap();
    }
    let (status, content_type, text) = http_get(server.http_addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(content_type.contains("openmetrics-text") || content_type.contains("text/plain"));
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition text");
    let mut samples: HashMap<String, Vec<&prometheus_parse::Sample>> = HashMap::new();
    for sample in &scrape.samples {
        samples.entry(sample.metric.clone()).or_default().push(sample);
    }
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        let found = samples.get(name).unwrap_or_else(|| panic!("no {name} in\n{text}"));
        let sample = found
            .iter()
            .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("no {name}{labels:?} in\n{text}"));
        match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name} is not a plain value"),
        }
    };
    assert_eq!(value("stockd_operations_total", &[("op", "reserve"), ("code", "ok")]), 3.0);
    assert_eq!(
        value("stockd_operations_total", &[("op", "reserve"), ("code", "insufficient_stock")]),
        2.0
    );
    assert_eq!(value("stockd_operations_total", &[("op", "set_stock"), ("code", "ok")]), 1.0);
    assert_eq!(value("stockd_connections", &[]), 1.0);
    assert_eq!(value("stockd_skus", &[]), 1.0);
    assert_eq!(value("stockd_reservations", &[]), 3.0);
    assert_eq!(value("stockd_read_only", &[]), 0.0);
    assert_eq!(value("stockd_holds_open", &[]), 3.0);
    assert_eq!(value("stockd_skus_paused", &[]), 0.0);
    assert!(value("stockd_disk_free_bytes", &[]) > 0.0);
    let (allocated, resident) =
        (value("stockd_heap_allocated_bytes", &[]), value("stockd_heap_resident_bytes", &[]));
    assert!(allocated > 0.0 && resident >= allocated, "heap {allocated} of {resident}");
    assert!(value("stockd_wal_records_total", &[]) >= 4.0);
    assert!(value("stockd_wal_fsyncs_total", &[]) >= 1.0);
    assert!(value("stockd_wal_bytes_total", &[]) > 0.0);
    assert!(value("stockd_wal_durable_lsn", &[]) >= 4.0);
    for family in [
        "stockd_wal_segments_total",
        "stockd_wal_fsync_seconds_total",
        "stockd_snapshot_lsn",
        "stockd_snapshot_age_seconds",
        "stockd_holds_expired_total",
    ] {
        assert!(samples.contains_key(family), "{family} missing in\n{text}");
    }
    for histogram in ["stockd_request_seconds", "stockd_commit_wait_seconds"] {
        let count = samples.get(&format!("{histogram}_count")).map(|s| s.len()).unwrap_or(0);
        let is_histogram = scrape.samples.iter().any(|s| {
            s.metric == histogram && matches!(s.value, prometheus_parse::Value::Histogram(_))
        });
        assert!(count > 0 || is_histogram, "{histogram} missing in\n{text}");
    }
    server.stop().await;
}

#[tokio::test]
async fn hold_gauges_and_expiries_follow_the_state() {
    let mut config = test_config();
    config.engine.sweep_interval_ms = 10;
    let server = TestServer::start(config).await;
    let client = server.client().await;
    client.set_stock("sku", 10, None).await.unwrap();
    client.set_stock("guarded", 5, None).await.unwrap();
    client.set_safety_stock("guarded", 5).await.unwrap();
    let mut short = reserve("short", 2);
    short.ttl_ms = 1_000;
    client.reserve(short).await.unwrap();
    client.reserve(reserve("long", 1)).await.unwrap();
    let gauge = |text: &str, name: &str| -> String {
        let line = text.lines().find(|l| l.split(' ').next() == Some(name));
        line.unwrap_or_else(|| panic!("no {name} in\n{text}")).split(' ').nth(1).unwrap().into()
    };
    let (_, _, text) = http_get(server.http_addr, "/metrics").await;
    assert_eq!(gauge(&text, "stockd_holds_open"), "2");
    assert_eq!(gauge(&text, "stockd_skus_paused"), "1");
    assert_eq!(gauge(&text, "stockd_holds_expired_total"), "0");
    // Past the short hold's deadline, and once the sweep has logged its expiry.
    let mut progress = server.shared.wal.subscribe();
    let logged = server.shared.wal.last_lsn();
    server.shared.clock.advance_ms(1_000);
    let swept = progress.wait_for(|p| p.durable_lsn > logged);
    tokio::time::timeout(common::WAIT, swept).await.expect("swept in time").expect("log open");
    let (_, _, text) = http_get(server.http_addr, "/metrics").await;
    assert_eq!(gauge(&text, "stockd_holds_open"), "1");
    assert_eq!(gauge(&text, "stockd_holds_expired_total"), "1");
    server.stop().await;
}

/// A data directory whose first listing (the start of recovery) waits until the test lets it
/// go, and says when it started waiting.
struct HeldRecovery {
    inner: MemStorage,
    started: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    release: std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

impl stockd::wal::Storage for HeldRecovery {
    fn list(&self) -> std::io::Result<Vec<String>> {
        if let Some(started) = self.started.lock().unwrap().take() {
            let _ = started.send(());
            let release = self.release.lock().unwrap().take().expect("held once");
            release.recv().expect("the test lets recovery go on");
        }
        self.inner.list()
    }
    fn create_zeroed(&self, name: &str, len: u64) -> std::io::Result<Box<dyn StorageFile>> {
        self.inner.create_zeroed(name, len)
    }
    fn create(&self, name: &str) -> std::io::Result<Box<dyn StorageFile>> {
        self.inner.create(name)
    }
    fn open(&self, name: &str) -> std::io::Result<Box<dyn StorageFile>> {
        self.inner.open(name)
    }
    fn rezero(&self, name: &str, len: u64) -> std::io::Result<Box<dyn StorageFile>> {
        self.inner.rezero(name, len)
    }
    fn read(&self, name: &str) -> std::io::Result<stockd::wal::storage::Contents> {
        self.inner.read(name)
    }
    fn rename(&self, from: &str, to: &str) -> std::io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove(&self, name: &str) -> std::io::Result<()> {
        self.inner.remove(name)
    }
    fn sync_dir(&self) -> std::io::Result<()> {
        self.inner.sync_dir()
    }
    fn free_bytes(&self) -> Option<u64> {
        self.inner.free_bytes()
    }
}

/// While the state is recovered (seconds with millions of reservations), the HTTP port
/// already answers: `/healthz` 200, so that a liveness probe does not kill the process in the
/// middle of its recovery, and `/readyz` and the API 503 `recovering`. Once recovered, the full
/// router answers on the same port.
#[tokio::test]
async fn http_answers_while_the_state_is_recovered() {
    let mut config = test_config();
    // The HTTP address must be known before the server is: take a free port.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    config.http.listen = format!("127.0.0.1:{port}");
    let http_addr = config.http_addr();
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    let storage = HeldRecovery {
        inner: MemStorage::new(),
        started: std::sync::Mutex::new(Some(started_tx)),
        release: std::sync::Mutex::new(Some(release_rx)),
    };
    let binding = tokio::spawn({
        let config = config.clone();
        async move { Server::bind_with(config, Clock::manual(T0), Arc::new(storage)).await }
    });
    started.await.expect("recovery started");

    assert_eq!(http_get(http_addr, "/healthz").await.0, 200, "alive while recovering");
    for path in ["/readyz", "/api/v1/skus", "/"] {
        let (status, content_type, body) = http_get(http_addr, path).await;
        assert_eq!(status, 503, "{path}: {body}");
        assert!(content_type.starts_with("application/json"), "{path}: {content_type}");
        let error: serde_json::Value = serde_json::from_str(&body).expect("JSON error");
        assert_eq!(error["code"], "recovering", "{path}: {body}");
    }

    release.send(()).unwrap();
    let server = binding.await.unwrap().expect("server starts");
    assert_eq!(server.http_addr().unwrap(), http_addr, "the same port all along");
    let server = TestServer::run(server, config);
    let (status, _, body) = http_get(http_addr, "/readyz").await;
    assert_eq!((status, body.trim()), (200, "ready"), "served by the full router once recovered");
    assert_eq!(http_get(http_addr, "/api/v1/skus").await.0, 200);
    server.stop().await;
}
