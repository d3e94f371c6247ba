//! The JSON admin API over real HTTP: every endpoint, its bad input, the audit trail of stock
//! changes (durable across a restart), refusal while read-only, and the live event stream.

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use common::{call, get, http_get, http_request, refused, test_config, TestServer, T0, WAIT};
use serde_json::{json, Value};
use stockd::clock::Clock;
use stockd::server::Server;
use stockd::wal::MemStorage;
use stockd_protocol::{Line, Reserve, ResultCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn reserve(id: &str, sku: &str, qty: u32, ttl_ms: u32) -> Reserve {
    Reserve {
        id: Bytes::copy_from_slice(id.as_bytes()),
        ttl_ms,
        channel: Bytes::from_static(b"web"),
        customer: Bytes::from_static(b"c-1"),
        lines: vec![Line::new(Bytes::copy_from_slice(sku.as_bytes()), qty)],
    }
}

fn adjust(delta: i64) -> Value {
    json!({ "delta": delta, "actor": "alice", "reason": "cycle count" })
}

#[tokio::test]
async fn status_reports_the_server_state() {
    let server = TestServer::start(test_config()).await;
    let (status, body) = get(server.http_addr, "/api/v1/status").await;
    assert_eq!(status, 200);
    assert_eq!(body["state"], "ok");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(body["wal"]["fsync"], "always");
    for field in ["skus", "holds_open", "ops_per_s", "connections", "snapshot_age_s"] {
        assert!(body.get(field).is_some(), "{field} missing in {body}");
    }
    server.stop().await;
}

#[tokio::test]
async fn listing_filters_and_pages_in_id_order() {
    let server = TestServer::start(test_config()).await;
    let client = server.client().await;
    for (sku, stock) in [("a-1", 10), ("a-2", 0), ("a-3", 30), ("b-1", 40), ("b-2", 50)] {
        client.set_stock(sku, stock, None).await.unwrap();
    }
    client.set_safety_stock("b-2", 50).await.unwrap();
    let addr = server.http_addr;
    let ids = |body: &Value| -> Vec<String> {
        let rows = body["rows"].as_array().expect("rows");
        rows.iter().map(|r| r["sku"].as_str().unwrap().to_string()).collect()
    };
    let (status, page) = get(addr, "/api/v1/skus?sort=id&limit=2").await;
    assert_eq!(status, 200);
    assert_eq!((ids(&page), page["matched"].as_u64()), (vec!["a-1".into(), "a-2".into()], Some(5)));
    assert_eq!(page["next_after"], "a-2");
    let (_, page) = get(addr, "/api/v1/skus?sort=id&limit=2&after=a-2").await;
    assert_eq!(ids(&page), ["a-3", "b-1"]);
    let (_, page) = get(addr, "/api/v1/skus?sort=id&limit=2&after=b-1").await;
    assert_eq!((ids(&page), &page["next_after"]), (vec!["b-2".to_string()], &Value::Null));
    let (_, page) = get(addr, "/api/v1/skus?sort=id&prefix=b-").await;
    assert_eq!(ids(&page), ["b-1", "b-2"]);
    let (_, page) = get(addr, "/api/v1/skus?sort=id&q=-2").await;
    assert_eq!(ids(&page), ["a-2", "b-2"]);
    let (_, page) = get(addr, "/api/v1/skus?sort=id&available_max=10").await;
    assert_eq!(ids(&page), ["a-1", "a-2", "b-2"]);
    let (_, page) = get(addr, "/api/v1/skus?sort=id&paused=true").await;
    assert_eq!(ids(&page), ["b-2"]);
    let row = &page["rows"][0];
    assert_eq!((row["on_hand"].as_u64(), row["available"].as_u64()), (Some(50), Some(0)));
    assert_eq!((row["safety_stock"].as_u64(), row["paused"].as_bool()), (Some(50), Some(true)));
    // Without holds nothing is active.
    let (_, page) = get(addr, "/api/v1/skus").await;
    assert_eq!((page["sort"].as_str(), ids(&page).len()), (Some("activity"), 0));

    refused(get(addr, "/api/v1/skus?limit=0").await, 400, "invalid_argument");
    refused(get(addr, "/api/v1/skus?limit=1001").await, 400, "invalid_argument");
    refused(get(addr, "/api/v1/skus?sort=price").await, 400, "invalid_argument");
    refused(get(addr, "/api/v1/skus?limit=-4").await, 400, "invalid_argument");
    refused(get(addr, "/api/v1/skus?colour=red").await, 400, "invalid_argument");
    refused(get(addr, "/api/v1/skus?after=a-1").await, 400, "invalid_argument");
    server.stop().await;
}

#[tokio::test]
async fn one_sku_shows_its_open_holds_and_a_reservation_its_lines() {
    let server = TestServer::start(test_config()).await;
    let client = server.client().await;
    client.set_stock("sku", 100, None).await.unwrap();
    client.reserve(reserve("late", "sku", 3, 60_000)).await.unwrap();
    client.reserve(reserve("soon", "sku", 2, 1_000)).await.unwrap();
    client.reserve(reserve("done", "sku", 1, 60_000)).await.unwrap();
    client.release("done").await.unwrap();
    let addr = server.http_addr;

    let (status, sku) = get(addr, "/api/v1/skus/sku").await;
    assert_eq!(status, 200);
    assert_eq!((sku["held"].as_u64(), sku["available"].as_u64()), (Some(5), Some(95)));
    assert_eq!(sku["holds_count"], 2);
    let holds = sku["holds"].as_array().unwrap();
    assert_eq!(
        (holds[0]["reservation"].as_str(), holds[0]["qty"].as_u64()),
        (Some("soon"), Some(2))
    );
    assert_eq!(holds[0]["expires_at_ms"], T0 + 1_000);
    assert_eq!(
        (holds[0]["channel"].as_str(), holds[0]["customer"].as_str()),
        (Some("web"), Some("c-1"))
    );
    assert_eq!(holds[1]["reservation"], "late");
    let (_, cut) = get(addr, "/api/v1/skus/sku?holds_limit=1").await;
    assert_eq!((cut["holds"].as_array().unwrap().len(), cut["holds_count"].as_u64()), (1, Some(2)));

    let (status, reservation) = get(addr, "/api/v1/reservations/late").await;
    assert_eq!(status, 200);
    assert_eq!(reservation["state"], "held");
    assert_eq!(reservation["lines"], json!([{ "sku": "sku", "qty": 3, "confirmed": 0 }]));
    let (_, released) = get(addr, "/api/v1/reservations/done").await;
    assert_eq!(released["state"], "released");

    refused(get(addr, "/api/v1/skus/nope").await, 404, "unknown_sku");
    refused(get(addr, "/api/v1/reservations/nope").await, 404, "not_found");
    let long = "x".repeat(65);
    refused(get(addr, &format!("/api/v1/skus/{long}")).await, 400, "invalid_argument");
    refused(get(addr, &format!("/api/v1/reservations/{long}")).await, 400, "invalid_argument");
    refused(get(addr, "/api/v1/skus/sku?holds_limit=5000").await, 400, "invalid_argument");
    server.stop().await;
}

#[tokio::test]
async fn stock_changes_are_applied_logged_and_audited() {
    let config = test_config();
    let server = TestServer::start(config.clone()).await;
    let client = server.client().await;
    client.set_stock("sku", 10, None).await.unwrap();
    let addr = server.http_addr;

    let (status, changed) =
        call(addr, "POST", "/api/v1/skus/sku/adjustments", Some(adjust(-3))).await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!((changed["changed"].as_bool(), changed["on_hand"].as_u64()), (Some(true), Some(7)));
    assert_eq!(changed["audit_seq"], 2, "after the setup over the protocol");
    let seen = client.query_sku("sku").await.unwrap();
    assert_eq!(seen.info.on_hand, 7, "the binary protocol sees the change");

    let body = json!({ "on_hand": 25, "expected": 7, "actor": "bob", "reason": "delivery" });
    let (status, changed) = call(addr, "PUT", "/api/v1/skus/sku/stock", Some(body)).await;
    assert_eq!((status, changed["on_hand"].as_u64()), (200, Some(25)));
    let body = json!({ "safety_stock": 5, "actor": "bob", "reason": "buffer" });
    let (status, changed) = call(addr, "PUT", "/api/v1/skus/sku/safety-stock", Some(body)).await;
    assert_eq!((status, changed["available"].as_u64()), (200, Some(20)));
    // Setting what is already there changes nothing and is not audited.
    let body = json!({ "safety_stock": 5, "actor": "bob", "reason": "again" });
    let (_, same) = call(addr, "PUT", "/api/v1/skus/sku/safety-stock", Some(body)).await;
    assert_eq!((same["changed"].as_bool(), &same["audit_seq"]), (Some(false), &Value::Null));
    // A new SKU can be created by setting its stock.
    let body = json!({ "on_hand": 4, "actor": "bob", "reason": "new line" });
    let (status, _) = call(addr, "PUT", "/api/v1/skus/fresh/stock", Some(body)).await;
    assert_eq!(status, 200);

    let (_, audit) = get(addr, "/api/v1/audit?target=sku").await;
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 4, "the setup over the protocol and three changes: {audit}");
    let newest = &entries[0];
    assert_eq!(
        (newest["seq"].as_u64(), newest["action"].as_str()),
        (Some(4), Some("set_safety_stock"))
    );
    assert_eq!(
        (newest["actor"].as_str(), newest["reason"].as_str()),
        (Some("bob"), Some("buffer"))
    );
    assert_eq!(newest["before"]["safety_stock"], 0);
    assert_eq!(newest["after"]["safety_stock"], 5);
    let oldest = &entries[2];
    assert_eq!(
        (oldest["before"]["on_hand"].as_u64(), oldest["after"]["on_hand"].as_u64()),
        (Some(10), Some(7))
    );
    assert_eq!(oldest["at_ms"], T0);
    let (_, page) = get(addr, "/api/v1/audit?before_seq=3&limit=1").await;
    assert_eq!(page["entries"][0]["seq"], 2);
    let (_, detail) = get(addr, "/api/v1/skus/sku").await;
    assert_eq!(detail["changes"].as_array().unwrap().len(), 4);
    drop(client);
    server.stop().await;

    // Both the change and its audit entry are durable.
    let server = TestServer::start(config).await;
    let (_, detail) = get(server.http_addr, "/api/v1/skus/sku").await;
    assert_eq!((detail["on_hand"].as_u64(), detail["safety_stock"].as_u64()), (Some(25), Some(5)));
    let (_, audit) = get(server.http_addr, "/api/v1/audit").await;
    assert_eq!(audit["entries"].as_array().unwrap().len(), 5);
    let (_, next) =
        call(server.http_addr, "POST", "/api/v1/skus/sku/adjustments", Some(adjust(1))).await;
    assert_eq!(next["audit_seq"], 6, "the sequence continues after a restart");
    server.stop().await;
}

/// Without API keys (no approval rule applies), `DELETE` deletes at once: refused while a
/// unit is held, then the SKU is gone for the API and the protocol alike, and a bulk request
/// can delete too.
#[tokio::test]
async fn skus_are_deleted_unless_in_use() {
    let server = TestServer::start(test_config()).await;
    let client = server.client().await;
    client.set_stock("old", 4, None).await.unwrap();
    client.set_stock("older", 2, None).await.unwrap();
    assert_eq!(client.reserve(reserve("o-1", "old", 1, 0)).await.unwrap().code, ResultCode::Ok);
    let addr = server.http_addr;
    let body = || Some(json!({ "actor": "alice", "reason": "discontinued" }));

    let (status, refused) = call(addr, "DELETE", "/api/v1/skus/old", body()).await;
    assert_eq!((status, refused["code"].as_str()), (409, Some("sku_in_use")), "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("1 units held"), "{refused}");
    let (status, _) = call(addr, "DELETE", "/api/v1/skus/old", Some(json!({}))).await;
    assert_eq!(status, 400, "actor and reason are required");

    assert_eq!(client.release("o-1").await.unwrap(), ResultCode::Ok);
    let (status, deleted) = call(addr, "DELETE", "/api/v1/skus/old", body()).await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!((deleted["changed"].as_bool(), deleted["on_hand"].as_u64()), (Some(true), Some(0)));
    let (status, again) = call(addr, "DELETE", "/api/v1/skus/old", body()).await;
    assert_eq!((status, again["code"].as_str()), (404, Some("unknown_sku")), "{again}");
    assert_eq!(client.query_sku("old").await.unwrap().code, ResultCode::UnknownSku);
    let (_, listed) = call(addr, "GET", "/api/v1/skus?sort=id", None).await;
    let ids: Vec<&str> =
        listed["rows"].as_array().unwrap().iter().map(|s| s["sku"].as_str().unwrap()).collect();
    assert_eq!(ids, ["older"], "{listed}");

    let bulk = json!({
        "items": [{ "op": "delete_sku", "sku": "older" }, { "op": "delete_sku", "sku": "nope" }],
        "actor": "alice", "reason": "range review"
    });
    let (status, reply) = call(addr, "POST", "/api/v1/bulk", Some(bulk)).await;
    assert_eq!(
        (status, &reply["applied"], &reply["refused"]),
        (200, &json!(1), &json!(1)),
        "{reply}"
    );
    assert_eq!(reply["results"][1]["code"], "unknown_sku");
    assert_eq!(client.query_sku("older").await.unwrap().code, ResultCode::UnknownSku);
    // A stock change creates a deleted SKU again.
    client.set_stock("old", 9, None).await.unwrap();
    assert_eq!(client.query_sku("old").await.unwrap().info.available, 9);
    server.stop().await;
}

#[tokio::test]
async fn bad_changes_get_clear_json_errors_and_change_nothing() {
    let server = TestServer::start(test_config()).await;
    let client = server.client().await;
    client.set_stock("sku", 10, None).await.unwrap();
    let addr = server.http_addr;
    let post = |body: &str| {
        let body = body.to_string();
        async move {
            let (status, _, text) =
                http_request(addr, "POST", "/api/v1/skus/sku/adjustments", Some(&body)).await;
            (status, serde_json::from_str::<Value>(&text).expect("JSON error"))
        }
    };
    let message = refused(post("{\"delta\": -3, \"actor\": \"a\"").await, 400, "malformed");
    assert!(message.contains("JSON"), "{message}");
    refused(post("{\"delta\": -3, \"actor\": \"a\"}").await, 400, "invalid_argument");
    refused(
        post("{\"delta\": \"many\", \"actor\": \"a\", \"reason\": \"r\"}").await,
        400,
        "invalid_argument",
    );
    refused(
        post("{\"delta\": 0, \"actor\": \"a\", \"reason\": \"r\"}").await,
        400,
        "invalid_argument",
    );
    refused(
        post("{\"delta\": 1, \"actor\": \" \", \"reason\": \"r\"}").await,
        400,
        "invalid_argument",
    );
    let long_reason =
        format!("{{\"delta\": 1, \"actor\": \"a\", \"reason\": \"{}\"}}", "r".repeat(600));
    refused(post(&long_reason).await, 400, "invalid_argument");
    refused(
        post("{\"delta\": 1, \"actor\": \"a\", \"reason\": \"r\", \"x\": 1}").await,
        400,
        "invalid_argument",
    );
    let message = refused(
        post("{\"delta\": -11, \"actor\": \"a\", \"reason\": \"r\"}").await,
        400,
        "invalid_argument",
    );
    assert!(message.contains("below zero"), "{message}");
    let stale = "{\"delta\": -1, \"expected\": 9, \"actor\": \"a\", \"reason\": \"r\"}";
    let message = refused(post(stale).await, 409, "expected_mismatch");
    assert!(message.contains("10"), "{message}");
    let negative = json!({ "on_hand": -5, "actor": "a", "reason": "r" });
    refused(
        call(addr, "PUT", "/api/v1/skus/sku/stock", Some(negative)).await,
        400,
        "invalid_argument",
    );
    let negative = json!({ "safety_stock": -1, "actor": "a", "reason": "r" });
    refused(
        call(addr, "PUT", "/api/v1/skus/sku/safety-stock", Some(negative)).await,
        400,
        "invalid_argument",
    );
    refused(
        call(addr, "POST", "/api/v1/skus/nope/adjustments", Some(adjust(1))).await,
        404,
        "unknown_sku",
    );
    let body = json!({ "safety_stock": 1, "actor": "a", "reason": "r" });
    refused(
        call(addr, "PUT", "/api/v1/skus/nope/safety-stock", Some(body)).await,
        404,
        "unknown_sku",
    );
    let long = "s".repeat(65);
    let path = format!("/api/v1/skus/{long}/adjustments");
    refused(call(addr, "POST", &path, Some(adjust(1))).await, 400, "invalid_argument");
    refused(call(addr, "PATCH", "/api/v1/skus/sku", None).await, 405, "method_not_allowed");
    // Without a JSON content type.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let raw = "POST /api/v1/skus/sku/adjustments HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
               Content-Length: 2\r\n\r\n{}";
    stream.write_all(raw.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 415"), "{response}");
    // Oversized bodies are refused before parsing.
    let huge =
        format!("{{\"delta\": 1, \"actor\": \"a\", \"reason\": \"{}\"}}", "r".repeat(100_000));
    assert_eq!(post(&huge).await.0, 413);

    assert_eq!(client.query_sku("sku").await.unwrap().info.on_hand, 10, "nothing changed");
    let (_, audit) = get(addr, "/api/v1/audit").await;
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "only the setup over the protocol is audited: {audit}");
    assert_eq!(entries[0]["reason"], "binary protocol");
    server.stop().await;
}

#[tokio::test]
async fn changes_are_refused_while_the_log_cannot_write() {
    let storage = MemStorage::new();
    let config = test_config();
    let server = Server::bind_with(config.clone(), Clock::manual(T0), Arc::new(storage.clone()))
        .await
        .expect("server starts");
    let server = TestServer::run(server, config);
    let client = server.client().await;
    client.set_stock("sku", 10, None).await.unwrap();
    storage.fail_syncs(true);
    assert_eq!(client.adjust_stock("sku", 1, None).await.unwrap().code, ResultCode::ReadOnly);
    let addr = server.http_addr;
    let message = refused(
        call(addr, "POST", "/api/v1/skus/sku/adjustments", Some(adjust(1))).await,
        503,
        "read_only",
    );
    assert!(message.contains("log failed"), "{message}");
    let (status, detail) = get(addr, "/api/v1/skus/sku").await;
    assert_eq!(status, 200, "reads are still served");
    assert_eq!(detail["sku"], "sku");
    let (_, status) = get(addr, "/api/v1/status").await;
    assert_eq!(status["state"], "ok", "the sample predates the failure");
    server.stop().await;
}

#[tokio::test]
async fn a_failed_audit_write_refuses_later_changes() {
    let storage = MemStorage::new();
    let config = test_config();
    let server = Server::bind_with(config.clone(), Clock::manual(T0), Arc::new(storage.clone()))
        .await
        .expect("server starts");
    let server = TestServer::run(server, config);
    let client = server.client().await;
    client.set_stock("sku", 10, None).await.unwrap();
    // The audit journal alone fails (nothing else writes while syncs fail here).
    storage.fail_syncs(true);
    let probe = stockd::audit::NewEntry {
        at_ms: T0,
        actor: "probe".into(),
        action: "adjust_stock",
        target: "probe".into(),
        reason: "probe".into(),
        before: Value::Null,
        after: Value::Null,
        lsn: 0,
    };
    assert!(server.shared.audit.append(probe).is_err());
    storage.fail_syncs(false);
    let reply =
        call(server.http_addr, "POST", "/api/v1/skus/sku/adjustments", Some(adjust(1))).await;
    let message = refused(reply, 503, "audit_unavailable");
    assert!(message.contains("refused"), "{message}");
    assert_eq!(client.query_sku("sku").await.unwrap().info.on_hand, 10, "nothing changed");
    server.stop().await;
}

/// Reads server-sent events from a raw HTTP connection.
struct Events {
    stream: TcpStream,
    buf: String,
}

impl Events {
    async fn open(addr: SocketAddr, query: &str) -> Events {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET /api/v1/events?{query} HTTP/1.1\r\nHost: x\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        Events { stream, buf: String::new() }
    }

    /// The data of the next `update` event.
    async fn next(&mut self) -> Value {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(start) = self.buf.find("event: update\ndata: ") {
                    let data = &self.buf[start + 20..];
                    if let Some(end) = data.find('\n') {
                        let value = serde_json::from_str(&data[..end]).expect("JSON event");
                        self.buf.drain(..start + 20 + end);
                        return value;
                    }
                }
                let mut chunk = [0u8; 8192];
                let n = self.stream.read(&mut chunk).await.expect("read events");
                assert!(n > 0, "the event stream ended");
                self.buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        })
        .await
        .expect("an event within the wait bound")
    }
}

#[tokio::test]
async fn the_event_stream_pushes_live_updates() {
    let mut config = test_config();
    config.http.sample_interval_ms = 20;
    let server = TestServer::start(config).await;
    let client = server.client().await;
    client.set_stock("live", 10, None).await.unwrap();
    let mut events = Events::open(server.http_addr, "sort=id&q=live").await;
    let first = events.next().await;
    assert_eq!(first["status"]["state"], "ok");
    assert_eq!(first["board"]["rows"][0]["available"], 10);
    client.reserve(reserve("r", "live", 4, 0)).await.unwrap();
    loop {
        let update = events.next().await;
        if update["board"]["rows"][0]["available"] == 6 {
            assert_eq!(update["board"]["rows"][0]["unshipped"], 4);
            break;
        }
    }
    // A bad query is refused as a JSON error, not as a stream.
    let (status, content_type, _) = http_get(server.http_addr, "/api/v1/events?limit=0").await;
    assert_eq!((status, content_type.as_str()), (400, "application/json"));
    // Shutdown ends open streams instead of waiting for them.
    server.stop().await;
}

#[tokio::test]
async fn limits_are_set_shown_and_audited() {
    let server = TestServer::start(test_config()).await;
    let client = server.client().await;
    client.set_stock("drop", 100, None).await.unwrap();
    let addr = server.http_addr;
    let body = json!({
        "max_per_buyer": 2,
        "shared_pool": true,
        "quotas": [{ "channel": "live", "percent": 40 }, { "channel": "app", "units": 10 }],
        "actor": "ops-lead",
        "reason": "livestream drop at 20:00",
    });
    let (status, changed) = call(addr, "PUT", "/api/v1/skus/drop/limits", Some(body)).await;
    assert_eq!((status, changed["changed"].as_bool()), (200, Some(true)), "{changed}");
    let mut order = reserve("o1", "drop", 2, 60_000);
    order.channel = Bytes::from_static(b"live");
    assert!(client.reserve(order).await.unwrap().code.is_ok());

    let (_, detail) = get(addr, "/api/v1/skus/drop").await;
    let limits = &detail["limits"];
    assert_eq!(
        (limits["max_per_buyer"].as_u64(), limits["shared_pool"].as_bool()),
        (Some(2), Some(true))
    );
    assert_eq!(
        limits["quotas"],
        json!([
            { "channel": "app", "units": 10, "allocation": 10, "used": 0 },
            { "channel": "live", "percent": 40.0, "allocation": 40, "used": 2 },
        ])
    );
    assert_eq!((limits["pool"].as_u64(), limits["pool_used"].as_u64()), (Some(50), Some(0)));
    let (_, audit) = get(addr, "/api/v1/audit?target=drop").await;
    let entry = &audit["entries"][0];
    assert_eq!((entry["action"].as_str(), &entry["before"]), (Some("set_limits"), &Value::Null));
    assert_eq!(entry["after"]["max_per_buyer"], 2);

    let bad = [
        json!({ "quotas": [{ "channel": "live", "units": 1, "percent": 5 }], "actor": "a", "reason": "r" }),
        json!({ "quotas": [{ "channel": "live", "percent": 140 }], "actor": "a", "reason": "r" }),
        json!({ "quotas": [{ "channel": "", "units": 1 }], "actor": "a", "reason": "r" }),
        json!({ "quotas": [{ "channel": "x", "units": 1 }, { "channel": "x", "units": 2 }], "actor": "a", "reason": "r" }),
        json!({ "max_per_buyer": -1, "actor": "a", "reason": "r" }),
        json!({ "max_per_buyer": 1 }),
    ];
    for body in bad {
        let reply = call(addr, "PUT", "/api/v1/skus/drop/limits", Some(body.clone())).await;
        assert_eq!((reply.0, reply.1["code"].as_str()), (400, Some("invalid_argument")), "{body}");
    }
    let body = json!({ "max_per_buyer": 1, "actor": "a", "reason": "r" });
    refused(call(addr, "PUT", "/api/v1/skus/nope/limits", Some(body)).await, 404, "unknown_sku");
    // Removing the limits.
    let body = json!({ "actor": "ops-lead", "reason": "drop over" });
    let (status, _) = call(addr, "PUT", "/api/v1/skus/drop/limits", Some(body)).await;
    assert_eq!(status, 200);
    let (_, detail) = get(addr, "/api/v1/skus/drop").await;
    assert_eq!(detail["limits"], Value::Null);
    server.stop().await;
}

#[tokio::test]
async fn the_audit_log_is_queried_by_actor_time_and_target_and_exported_as_csv() {
    let server = TestServer::start(test_config()).await;
    let client = server.client().await;
    client.set_stock("A", 10, None).await.unwrap();
    client.set_stock("B", 10, None).await.unwrap();
    let addr = server.http_addr;
    for (sku, actor) in [("A", "alice"), ("B", "bob"), ("A", "bob")] {
        let body = json!({ "delta": -1, "actor": actor, "reason": "count, \"recount\"" });
        let (status, _) =
            call(addr, "POST", &format!("/api/v1/skus/{sku}/adjustments"), Some(body)).await;
        assert_eq!(status, 200);
        server.shared.clock.advance_ms(1_000);
    }
    let seqs = |body: &Value| -> Vec<u64> {
        body["entries"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect()
    };
    // Entries 1 and 2 are the setup over the protocol.
    assert_eq!(seqs(&get(addr, "/api/v1/audit?actor=bob").await.1), [5, 4]);
    assert_eq!(seqs(&get(addr, "/api/v1/audit?actor=bob&target=A").await.1), [5]);
    let window = format!("/api/v1/audit?from_ms={}&to_ms={}", T0 + 1_000, T0 + 2_000);
    assert_eq!(seqs(&get(addr, &window).await.1), [4]);
    refused(
        get(addr, &format!("/api/v1/audit?from_ms={T0}&to_ms={T0}")).await,
        400,
        "invalid_argument",
    );
    refused(get(addr, "/api/v1/audit?format=xml").await, 400, "invalid_argument");

    let (status, content_type, text) = http_get(addr, "/api/v1/audit?format=csv").await;
    assert_eq!((status, content_type.as_str()), (200, "text/csv; charset=utf-8"));
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(
        header,
        [
            "seq", "at", "at_ms", "actor", "action", "target", "reason", "before", "after", "lsn",
            "key"
        ]
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 5, "two setup changes over the protocol and three adjustments");
    let first = &rows[2];
    assert_eq!(
        (&first[0], &first[1], &first[3], &first[5], &first[10]),
        ("3", "2023-11-14T22:13:20.000Z", "alice", "A", "dev")
    );
    assert_eq!(&first[6], "count, \"recount\"", "quotes and commas survive");
    let before: Value = serde_json::from_str(&first[7]).unwrap();
    assert_eq!(before["on_hand"], 10);
    server.stop().await;
}
