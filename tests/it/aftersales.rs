//! Return tickets through the real server over HTTP: the whole life of a return with its
//! restock, damaged count and audit trail; over-return, illegal steps and bad input; scans by
//! tracking number, by order id and unmatched; an overdue ticket alerting and escalating with
//! controlled time; the SLA report; and tickets surviving a restart. (The engine-level rules,
//! every illegal step and the replay of the log are in `src/aftersales/tests.rs`; the crash of
//! the real binary is in `binary.rs`.)

use crate::common;
use crate::common::marketplace::Marketplace;

use bytes::Bytes;
use common::{call, get, http_get, refused, test_config, TestServer, T0};
use serde_json::{json, Value};
use stockd::clock::Clock;
use stockd_protocol::{Line, Reserve, ResultCode};

const HOUR_MS: u64 = 3_600_000;

/// Stock of TEE (10) and CAP (4), and order O-1 confirmed for 3 TEE + 1 CAP.
async fn seeded(server: &TestServer) {
    let client = server.client().await;
    client.set_stock("TEE", 10, None).await.unwrap();
    client.set_stock("CAP", 4, None).await.unwrap();
    sell(server, "O-1", &[("TEE", 3), ("CAP", 1)]).await;
}

async fn sell(server: &TestServer, order: &str, lines: &[(&str, u32)]) {
    let client = server.client().await;
    let reserve = Reserve {
        id: Bytes::copy_from_slice(order.as_bytes()),
        ttl_ms: 0,
        channel: Bytes::from_static(b"web"),
        customer: Bytes::from_static(b"cust-9"),
        lines: lines
            .iter()
            .map(|(sku, qty)| Line::new(Bytes::copy_from_slice(sku.as_bytes()), *qty))
            .collect(),
    };
    assert_eq!(client.reserve(reserve).await.unwrap().code, ResultCode::Ok);
    assert_eq!(client.confirm(order.to_string(), Vec::new()).await.unwrap(), ResultCode::Ok);
}

fn ticket_body(kind: &str, order: &str, lines: &[(&str, u32)]) -> Value {
    let lines: Vec<Value> =
        lines.iter().map(|(sku, qty)| json!({"sku": sku, "qty": qty})).collect();
    json!({
        "kind": kind, "order": order, "lines": lines, "customer": "cust-9",
        "reason": "does not fit", "actor": "cs-anna",
    })
}

async fn open(server: &TestServer, body: Value) -> Value {
    let (status, ticket) = call(server.http_addr, "POST", "/api/v1/tickets", Some(body)).await;
    assert_eq!(status, 201, "{ticket}");
    ticket
}

async fn step(server: &TestServer, id: &str, body: Value) -> (u16, Value) {
    let path = format!("/api/v1/tickets/{id}/transitions");
    call(server.http_addr, "POST", &path, Some(body)).await
}

async fn moved(server: &TestServer, id: &str, body: Value) -> Value {
    let (status, ticket) = step(server, id, body).await;
    assert_eq!(status, 200, "{ticket}");
    ticket
}

async fn scan(server: &TestServer, code: &str) -> Value {
    let body = json!({ "code": code, "actor": "dock-2" });
    let (status, reply) =
        call(server.http_addr, "POST", "/api/v1/aftersales/scan", Some(body)).await;
    assert_eq!(status, 200, "{reply}");
    reply
}

async fn sku(server: &TestServer, sku: &str) -> Value {
    get(server.http_addr, &format!("/api/v1/skus/{sku}")).await.1
}

#[tokio::test]
async fn a_return_is_received_by_scan_inspected_restocked_refunded_and_audited() {
    let server = TestServer::start(test_config()).await;
    seeded(&server).await;
    let ticket = open(&server, ticket_body("return", "O-1", &[("TEE", 2), ("CAP", 1)])).await;
    let id = ticket["id"].as_str().unwrap().to_string();
    assert_eq!((id.as_str(), ticket["state"].as_str()), ("RMA-00000001", Some("requested")));
    assert_eq!(ticket["overdue"], Value::Null);

    moved(&server, &id, json!({"to": "approved", "actor": "cs-lead"})).await;
    let awaiting = json!({"to": "awaiting_return", "tracking": "1Z-RET-1", "actor": "cs-lead"});
    assert_eq!(moved(&server, &id, awaiting).await["tracking"], "1Z-RET-1");
    let received = scan(&server, "1Z-RET-1").await;
    assert_eq!(received["matched"], true);
    assert_eq!(received["ticket"]["state"], "received");

    let tee_before = sku(&server, "TEE").await;
    let inspected = json!({
        "to": "inspected", "actor": "qc-li", "note": "cap crushed",
        "lines": [
            {"sku": "TEE", "restockable": 2, "damaged": 0},
            {"sku": "CAP", "restockable": 0, "damaged": 1},
        ],
    });
    moved(&server, &id, inspected).await;
    let (tee, cap) = (sku(&server, "TEE").await, sku(&server, "CAP").await);
    assert_eq!(tee["on_hand"], tee_before["on_hand"].as_u64().unwrap() + 2, "restocked");
    assert_eq!(tee["available"], tee_before["available"].as_u64().unwrap() + 2);
    assert_eq!((cap["on_hand"].as_u64(), cap["damaged"].as_u64()), (Some(4), Some(1)));
    // The binary protocol sees the restock too: it went through the engine and the log.
    let seen = server.client().await.query_sku("TEE").await.unwrap();
    assert_eq!(Some(seen.info.on_hand), tee["on_hand"].as_u64());

    moved(&server, &id, json!({"to": "refunded", "actor": "fin-bo"})).await;
    let closed = moved(&server, &id, json!({"to": "closed", "actor": "cs-anna"})).await;
    let history: Vec<(String, String)> = closed["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["to"].as_str().unwrap().into(), t["actor"].as_str().unwrap().into()))
        .collect();
    let expected = [
        ("requested", "cs-anna"),
        ("approved", "cs-lead"),
        ("awaiting_return", "cs-lead"),
        ("received", "dock-2"),
        ("inspected", "qc-li"),
        ("refunded", "fin-bo"),
        ("closed", "cs-anna"),
    ];
    let expected: Vec<(String, String)> =
        expected.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    assert_eq!(history, expected);
    assert_eq!(closed["received_via"], "1Z-RET-1");

    let (_, audit) = get(server.http_addr, &format!("/api/v1/audit?target={id}")).await;
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 7, "every step is audited: {audit}");
    let inspection = entries.iter().find(|e| e["actor"] == "qc-li").expect("inspection audited");
    assert_eq!(
        (&inspection["before"]["state"], &inspection["after"]["state"], &inspection["reason"]),
        (&json!("received"), &json!("inspected"), &json!("cap crushed"))
    );
    server.stop().await;
}

#[tokio::test]
async fn over_returns_illegal_steps_and_bad_input_get_clear_errors() {
    let server = TestServer::start(test_config()).await;
    seeded(&server).await;
    let addr = server.http_addr;
    let post = |body: Value| call(addr, "POST", "/api/v1/tickets", Some(body));
    let message =
        refused(post(ticket_body("return", "O-1", &[("TEE", 4)])).await, 409, "over_return");
    assert!(message.contains("confirmed 3"), "{message}");
    refused(post(ticket_body("return", "NOPE", &[("TEE", 1)])).await, 404, "unknown_order");
    refused(post(ticket_body("return", "O-1", &[("TEE", 0)])).await, 400, "invalid_argument");
    refused(post(json!({"kind": "swap", "order": "O-1"})).await, 400, "invalid_argument");
    // A held (unpaid) order cannot be returned.
    let client = server.client().await;
    let hold = Reserve {
        id: Bytes::from_static(b"O-HELD"),
        ttl_ms: 0,
        channel: Bytes::new(),
        customer: Bytes::new(),
        lines: vec![Line::new(Bytes::from_static(b"TEE"), 1)],
    };
    client.reserve(hold).await.unwrap();
    let message =
        refused(post(ticket_body("return", "O-HELD", &[("TEE", 1)])).await, 409, "not_sold");
    assert!(message.contains("held"), "{message}");

    let id = open(&server, ticket_body("exchange", "O-1", &[("TEE", 1)])).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    // A second ticket may claim only what is left.
    let message =
        refused(post(ticket_body("return", "O-1", &[("TEE", 3)])).await, 409, "over_return");
    assert!(message.contains("other tickets claim 1"), "{message}");
    let message = refused(
        step(&server, &id, json!({"to": "received", "actor": "x"})).await,
        409,
        "illegal_transition",
    );
    assert!(message.contains("requested; it can go to approved or rejected"), "{message}");
    refused(step(&server, &id, json!({"to": "teleported", "actor": "x"})).await, 400, "malformed");
    refused(step(&server, &id, json!({"to": "approved", "actor": 7})).await, 400, "malformed");
    refused(step(&server, &id, json!({"to": "approved"})).await, 400, "invalid_argument");
    refused(
        step(&server, "RMA-404", json!({"to": "approved", "actor": "x"})).await,
        404,
        "not_found",
    );
    refused(get(addr, "/api/v1/tickets/RMA-404").await, 404, "not_found");
    // Nothing above changed the ticket.
    let (_, ticket) = get(addr, &format!("/api/v1/tickets/{id}")).await;
    assert_eq!(ticket["state"], "requested");
    assert_eq!(ticket["history"].as_array().unwrap().len(), 1);

    // Listing with filters.
    let (_, listed) = get(addr, "/api/v1/tickets?state=requested&kind=exchange").await;
    assert_eq!(listed["matched"], 1);
    let (_, listed) = get(addr, "/api/v1/tickets?kind=return").await;
    assert_eq!(listed["matched"], 0);
    refused(get(addr, "/api/v1/tickets?state=lost").await, 400, "invalid_argument");
    server.stop().await;
}

#[tokio::test]
async fn parcels_match_by_tracking_number_or_order_id_and_strays_are_kept() {
    let server = TestServer::start(test_config()).await;
    seeded(&server).await;
    sell(&server, "O-2", &[("TEE", 1)]).await;
    let a = open(&server, ticket_body("return", "O-1", &[("TEE", 1)])).await;
    let b = open(&server, ticket_body("return", "O-2", &[("TEE", 1)])).await;
    let (a, b) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    for (id, tracking) in [(a, "TRK-A"), (b, "")] {
        moved(&server, id, json!({"to": "approved", "actor": "cs"})).await;
        let body = json!({"to": "awaiting_return", "tracking": tracking, "actor": "cs"});
        moved(&server, id, body).await;
    }
    let by_tracking = scan(&server, "TRK-A").await;
    assert_eq!(
        (&by_tracking["ticket"]["id"], &by_tracking["ticket"]["state"]),
        (&json!(a), &json!("received"))
    );
    let by_order = scan(&server, "O-2").await;
    assert_eq!(
        (&by_order["ticket"]["id"], &by_order["ticket"]["received_via"]),
        (&json!(b), &json!("O-2"))
    );
    let stray = scan(&server, "NO-SUCH-PARCEL").await;
    assert_eq!(
        (&stray["matched"], &stray["parcel"]["code"]),
        (&json!(false), &json!("NO-SUCH-PARCEL"))
    );
    let (_, parcels) = get(server.http_addr, "/api/v1/aftersales/parcels").await;
    let parcels = parcels["parcels"].as_array().unwrap();
    assert_eq!(parcels.len(), 1);
    assert_eq!((&parcels[0]["actor"], &parcels[0]["at_ms"]), (&json!("dock-2"), &json!(T0)));
    // Scanning a parcel whose ticket is already received is refused, and recorded nowhere.
    let body = json!({ "code": "TRK-A", "actor": "dock-2" });
    refused(
        call(server.http_addr, "POST", "/api/v1/aftersales/scan", Some(body)).await,
        409,
        "illegal_transition",
    );
    server.stop().await;
}

#[tokio::test]
async fn an_overdue_ticket_is_flagged_alerts_escalates_and_shows_in_the_report() {
    let hooks = Marketplace::start().await;
    let mut config = test_config();
    config.alerting.sold_out = false;
    config.alerting.disk_free_bytes_min = 0;
    config.alerting.webhook_url = Some(format!("{}/hooks/chat", hooks.url()));
    config.alerting.escalation_webhook_url = Some(format!("{}/hooks/pager", hooks.url()));
    let server = TestServer::start(config).await;
    seeded(&server).await;
    let id = open(&server, ticket_body("return", "O-1", &[("TEE", 1)])).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    server.shared.clock.advance_ms(2 * HOUR_MS);
    moved(&server, &id, json!({"to": "approved", "actor": "cs"})).await;
    moved(&server, &id, json!({"to": "awaiting_return", "actor": "cs"})).await;

    let evaluate = || async {
        assert!(server.shared.alerts.pacer.poke().await, "the evaluator runs");
        let (_, alerts) = get(server.http_addr, "/api/v1/alerts").await;
        alerts["alerts"].as_array().unwrap().clone()
    };
    // Exactly at the 48 h limit of the return stage: not yet overdue.
    server.shared.clock.advance_ms(48 * HOUR_MS);
    assert!(evaluate().await.is_empty());
    let (_, ticket) = get(server.http_addr, &format!("/api/v1/tickets/{id}")).await;
    assert_eq!(ticket["overdue"], Value::Null);

    server.shared.clock.advance_ms(1);
    let alerts = evaluate().await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!((&alerts[0]["rule"], &alerts[0]["subject"]), (&json!("ticket_overdue"), &json!(id)));
    assert!(alerts[0]["message"].as_str().unwrap().contains("awaiting_return"), "{alerts:?}");
    let (_, ticket) = get(server.http_addr, &format!("/api/v1/tickets/{id}")).await;
    assert_eq!(ticket["overdue"]["stage"], "return");
    assert_eq!(ticket["overdue"]["due_at_ms"], T0 + 50 * HOUR_MS);
    let (_, overdue) = get(server.http_addr, "/api/v1/tickets?overdue=true").await;
    assert_eq!(overdue["matched"], 1);
    let (_, _, metrics) = http_get(server.http_addr, "/metrics").await;
    for line in [
        "stockd_tickets_overdue 1",
        "stockd_tickets{state=\"awaiting_return\"} 1",
        "stockd_parcels_unmatched 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} not in the metrics:\n{metrics}");
    }
    let chat = hooks.hooks_received(1).await;
    assert_eq!((chat[0].0.as_str(), &chat[0].1["event"]), ("chat", &json!("fired")));

    // Still overdue five minutes later: escalated to the second sink.
    server.shared.clock.advance_ms(5 * 60_000);
    evaluate().await;
    let received = hooks.hooks_received(2).await;
    assert_eq!((received[1].0.as_str(), &received[1].1["event"]), ("pager", &json!("escalated")));

    // The parcel arrives: the alert resolves.
    scan(&server, "O-1").await;
    assert!(evaluate().await.is_empty());

    let (_, report) =
        get(server.http_addr, &format!("/api/v1/aftersales/report?from_ms={T0}")).await;
    let stages = report["stages"].as_array().unwrap();
    let figures = |i: usize| {
        let s = &stages[i];
        (s["stage"].as_str().unwrap().to_string(), s["handled"].as_u64(), s["within_sla"].as_u64())
    };
    assert_eq!(figures(0), ("review".into(), Some(1), Some(1)));
    assert_eq!(figures(1), ("return".into(), Some(1), Some(0)));
    assert_eq!(stages[1]["p90_ms"], 48 * HOUR_MS + 1 + 5 * 60_000);
    assert_eq!((report["created"].as_u64(), report["handled"].as_u64()), (Some(1), Some(1)));
    let bad =
        get(server.http_addr, &format!("/api/v1/aftersales/report?from_ms={T0}&to_ms={T0}")).await;
    refused(bad, 400, "invalid_argument");
    server.stop().await;
}

#[tokio::test]
async fn tickets_parcels_and_damaged_counts_survive_a_restart() {
    let config = test_config();
    let server = TestServer::start(config.clone()).await;
    seeded(&server).await;
    let id = open(&server, ticket_body("exchange", "O-1", &[("TEE", 1)])).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    for body in [
        json!({"to": "approved", "actor": "cs"}),
        json!({"to": "awaiting_return", "tracking": "T-9", "actor": "cs"}),
        json!({"to": "received", "actor": "dock"}),
        json!({"to": "inspected", "actor": "qc", "lines": [{"sku": "TEE", "restockable": 0, "damaged": 1}]}),
        json!({"to": "exchanged", "actor": "cs", "lines": [{"sku": "CAP", "qty": 1}]}),
    ] {
        moved(&server, &id, body).await;
    }
    scan(&server, "STRAY").await;
    let (_, before) = get(server.http_addr, &format!("/api/v1/tickets/{id}")).await;
    assert_eq!(before["replacement"], format!("exchange:{id}"));
    let cap_before = sku(&server, "CAP").await;
    server.stop().await;

    let server = TestServer::start_with_clock(config, Clock::manual(T0 + 1)).await;
    let (_, after) = get(server.http_addr, &format!("/api/v1/tickets/{id}")).await;
    assert_eq!(after, before);
    assert_eq!(sku(&server, "TEE").await["damaged"], 1);
    let cap = sku(&server, "CAP").await;
    assert_eq!(
        (&cap["committed"], &cap["on_hand"]),
        (&cap_before["committed"], &cap_before["on_hand"])
    );
    let (_, parcels) = get(server.http_addr, "/api/v1/aftersales/parcels").await;
    assert_eq!(parcels["parcels"][0]["code"], "STRAY");
    // The tracking index is rebuilt: the number is still taken.
    let second = json!({
        "kind": "return", "order": "O-1", "lines": [{"sku": "TEE", "qty": 1}], "tracking": "T-9",
        "reason": "again", "actor": "cs",
    });
    let message = refused(
        call(server.http_addr, "POST", "/api/v1/tickets", Some(second)).await,
        400,
        "invalid_argument",
    );
    assert!(message.contains("T-9"), "{message}");
    server.stop().await;
}
