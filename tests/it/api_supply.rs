//! Locations, incoming deliveries, preorders and bulk changes over the JSON admin API: each
//! endpoint, its refusals, the SKU view, one result per bulk item, and audit entries for every
//! applied change.

use crate::common;

use common::{call, get, refused, test_config, TestServer};
use serde_json::{json, Value};

fn who(mut body: Value) -> Value {
    body["actor"] = json!("alice");
    body["reason"] = json!("goods in");
    body
}

#[tokio::test]
async fn locations_deliveries_and_preorders_are_set_shown_and_audited() {
    let server = TestServer::start(test_config()).await;
    let addr = server.http_addr;
    let put = |path: &'static str, body: Value| call(addr, "PUT", path, Some(who(body)));
    let post = |path: &'static str, body: Value| call(addr, "POST", path, Some(who(body)));

    let (status, east) =
        put("/api/v1/skus/tee/locations/east", json!({ "on_hand": 4, "priority": 1 })).await;
    assert_eq!(
        (status, &east["on_hand"], &east["changed"]),
        (200, &json!(4), &json!(true)),
        "{east}"
    );
    let (status, _) =
        put("/api/v1/skus/tee/locations/west", json!({ "on_hand": 6, "priority": 2 })).await;
    assert_eq!(status, 200);
    let (status, adjusted) =
        post("/api/v1/skus/tee/locations/east/adjustments", json!({ "delta": -1, "expected": 4 }))
            .await;
    assert_eq!((status, &adjusted["on_hand"]), (200, &json!(9)), "{adjusted}");
    let (status, delivery) = put(
        "/api/v1/skus/tee/incoming/po-7",
        json!({ "location": "west", "qty": 20, "eta_ms": 1_700_100_000_000u64 }),
    )
    .await;
    assert_eq!((status, &delivery["available"]), (200, &json!(9)), "{delivery}");
    let (status, preorder) = put("/api/v1/skus/tee/preorder", json!({ "preorder_max": 5 })).await;
    assert_eq!((status, &preorder["available"]), (200, &json!(14)), "{preorder}");
    let (status, received) =
        post("/api/v1/skus/tee/incoming/po-7/receipts", json!({ "location": "west", "qty": 8 }))
            .await;
    assert_eq!((status, &received["on_hand"]), (200, &json!(17)), "{received}");

    let (status, view) = get(addr, "/api/v1/skus/tee").await;
    assert_eq!(status, 200);
    let supply = &view["supply"];
    assert_eq!(supply["preorder_max"], 5);
    let locations = supply["locations"].as_array().expect("locations");
    let rows: Vec<(&str, u64, u64)> = locations
        .iter()
        .map(|l| {
            (
                l["location"].as_str().unwrap(),
                l["on_hand"].as_u64().unwrap(),
                l["incoming"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows, [("east", 3, 0), ("west", 14, 12)]);
    assert_eq!(supply["incoming"][0]["reference"], "po-7");
    assert_eq!(supply["incoming"][0]["qty"], 12);
    // Six changes, six audit entries with their actions.
    let actions: Vec<&str> =
        view["changes"].as_array().unwrap().iter().map(|c| c["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        [
            "receive_incoming",
            "set_preorder",
            "set_incoming",
            "adjust_location",
            "set_location",
            "set_location"
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn refusals_name_the_location_problem() {
    let server = TestServer::start(test_config()).await;
    let addr = server.http_addr;
    let client = server.client().await;
    client.set_location("tee", "east", 4, 0, None).await.unwrap();
    client.set_stock("cap", 3, None).await.unwrap();
    let put = |path: &'static str, body: Value| call(addr, "PUT", path, Some(who(body)));
    let post = |path: &'static str, body: Value| call(addr, "POST", path, Some(who(body)));

    let message = refused(
        put("/api/v1/skus/tee/stock", json!({ "on_hand": 1 })).await,
        409,
        "location_required",
    );
    assert!(message.contains("per location"), "{message}");
    refused(
        post("/api/v1/skus/tee/locations/south/adjustments", json!({ "delta": 1 })).await,
        404,
        "unknown_location",
    );
    let message = refused(
        put("/api/v1/skus/cap/locations/east", json!({ "on_hand": 1 })).await,
        409,
        "location_conflict",
    );
    assert!(message.contains("3 units"), "{message}");
    refused(
        put("/api/v1/skus/tee/incoming/po-1", json!({ "qty": 1 })).await,
        409,
        "location_required",
    );
    refused(
        post("/api/v1/skus/tee/incoming/po-1/receipts", json!({ "location": "east" })).await,
        404,
        "not_found",
    );
    refused(
        put("/api/v1/skus/nope/preorder", json!({ "preorder_max": 1 })).await,
        404,
        "unknown_sku",
    );
    let long = "x".repeat(33);
    let body = who(json!({ "on_hand": 1 }));
    refused(
        call(addr, "PUT", &format!("/api/v1/skus/tee/locations/{long}"), Some(body)).await,
        400,
        "invalid_argument",
    );
    // Nothing of it changed the SKUs.
    assert_eq!(client.query_sku("tee").await.unwrap().info.on_hand, 4);
    assert_eq!(client.query_sku("cap").await.unwrap().info.on_hand, 3);
    server.stop().await;
}

#[tokio::test]
async fn a_bulk_request_answers_every_item_and_audits_what_it_applied() {
    let server = TestServer::start(test_config()).await;
    let addr = server.http_addr;
    let client = server.client().await;
    client.set_stock("a", 1, None).await.unwrap();
    let items = json!([
        { "op": "set_stock", "sku": "a", "on_hand": 10 },
        { "op": "set_stock", "sku": "b", "on_hand": 5 },
        { "op": "adjust_stock", "sku": "missing", "delta": 3 },
        { "op": "set_safety_stock", "sku": "b", "safety_stock": 1 },
        { "op": "set_limits", "sku": "a", "max_per_buyer": 2, "quotas": [{ "channel": "live", "percent": 40.0 }] },
        { "op": "set_location", "sku": "c", "location": "east", "on_hand": 7 },
        { "op": "adjust_stock", "sku": "a", "delta": 0 },
        { "op": "set_stock", "sku": "a", "on_hand": 10 },
    ]);
    let (status, reply) =
        call(addr, "POST", "/api/v1/bulk", Some(who(json!({ "items": items })))).await;
    assert_eq!(status, 200, "{reply}");
    let results = reply["results"].as_array().expect("results");
    let codes: Vec<&str> = results.iter().map(|r| r["code"].as_str().unwrap()).collect();
    assert_eq!(codes, ["ok", "ok", "unknown_sku", "ok", "ok", "ok", "invalid_argument", "ok"]);
    assert_eq!((reply["applied"].as_u64(), reply["refused"].as_u64()), (Some(6), Some(2)));
    // The last item asked for what the first had set: ok, but nothing changed or audited.
    assert_eq!((&results[7]["changed"], &results[7]["audit_seq"]), (&json!(false), &Value::Null));
    let seqs: Vec<u64> = results.iter().filter_map(|r| r["audit_seq"].as_u64()).collect();
    assert_eq!(seqs.len(), 5);
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert_eq!(client.query_sku("a").await.unwrap().info.on_hand, 10);
    assert_eq!(client.query_sku("b").await.unwrap().info.safety_stock, 1);
    assert_eq!(client.query_limits("a").await.unwrap().limits.max_per_buyer, 2);
    assert_eq!(client.query_sku("c").await.unwrap().info.on_hand, 7);
    let (_, audit) = get(addr, "/api/v1/audit?limit=10").await;
    let entries = audit["entries"].as_array().unwrap();
    let bulk = entries.iter().filter(|e| e["reason"] != "binary protocol").count();
    assert_eq!(bulk, 5, "the setup over the protocol is audited apart: {audit}");

    // A request that is not a list of known operations changes nothing.
    let unknown = json!({ "items": [{ "op": "set_stock", "sku": "a", "on_hand": 1 }, { "op": "explode", "sku": "a" }] });
    refused(call(addr, "POST", "/api/v1/bulk", Some(who(unknown))).await, 400, "invalid_argument");
    refused(
        call(addr, "POST", "/api/v1/bulk", Some(who(json!({ "items": [] })))).await,
        400,
        "invalid_argument",
    );
    assert_eq!(client.query_sku("a").await.unwrap().info.on_hand, 10);
    server.stop().await;
}

#[tokio::test]
async fn a_wms_feed_sets_counts_and_deliveries_and_a_bad_feed_changes_nothing() {
    let server = TestServer::start(test_config()).await;
    let addr = server.http_addr;
    let located = json!({"on_hand": 1, "priority": 4});
    assert_eq!(
        call(addr, "PUT", "/api/v1/skus/TEE/locations/east", Some(who(located))).await.0,
        200
    );
    let feed = "kind,sku,location,qty,reference,eta\n\
                count,CAP,,40,,\n\
                count,TEE,east,12,,\n\
                incoming,TEE,east,500,PO-7,2026-12-01T08:00:00Z\n\
                count,CAP,east,1,,\n";
    let path = "/api/v1/feeds/wms?actor=wms-bot&reason=nightly%20count";
    let (status, _, body) = common::http_request(addr, "POST", path, Some(feed)).await;
    assert_eq!(status, 200, "{body}");
    let reply: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (reply["applied"].as_u64(), reply["refused"].as_u64()),
        (Some(3), Some(1)),
        "{reply}"
    );
    assert_eq!(reply["results"][3]["code"], "location_conflict", "CAP's 40 units have no location");
    let (_, cap) = get(addr, "/api/v1/skus/CAP").await;
    assert_eq!(cap["on_hand"], 40);
    let (_, tee) = get(addr, "/api/v1/skus/TEE").await;
    let east = &tee["supply"]["locations"][0];
    assert_eq!(
        (east["on_hand"].as_u64(), east["priority"].as_u64()),
        (Some(12), Some(4)),
        "priority kept: {tee}"
    );
    let delivery = &tee["supply"]["incoming"][0];
    assert_eq!(
        (delivery["reference"].as_str(), delivery["qty"].as_u64()),
        (Some("PO-7"), Some(500))
    );
    assert_eq!(delivery["eta_ms"], 1_796_112_000_000u64);
    let (_, audit) = get(addr, "/api/v1/audit?target=CAP").await;
    assert_eq!(audit["entries"][0]["actor"], "wms-bot");

    let bad = "kind,sku,location,qty\ncount,CAP,,41\ncount,CAP,,lots\n";
    let (status, _, body) = common::http_request(addr, "POST", path, Some(bad)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("line 3"), "{body}");
    assert_eq!(get(addr, "/api/v1/skus/CAP").await.1["on_hand"], 40, "nothing applied");
    server.stop().await;
}
