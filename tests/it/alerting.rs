//! Alerting end to end with a manual clock: three failed pulls raise an alert that a success
//! resolves, evaluations deduplicate, lasting alerts escalate to the second sink after five
//! minutes unless acknowledged, throttling, token expiry, SKU rules, the read-only rule, and
//! open alerts surviving a restart. Sinks are real HTTP endpoints on 127.0.0.1.

use crate::common;
use crate::common::marketplace;

use std::sync::Arc;

use common::{call, get, test_config, TestServer, T0};
use marketplace::Marketplace;
use serde_json::{json, Value};
use stockd::clock::Clock;
use stockd::config::Config;
use stockd::server::Server;
use stockd::wal::MemStorage;
use stockd_protocol::ResultCode;

fn config_for(market: &Marketplace) -> Config {
    let mut config = test_config();
    config.channels.push(market.channel("shop"));
    config.alerting.sold_out = false;
    config.alerting.disk_free_bytes_min = 0;
    config.alerting.webhook_url = Some(format!("{}/hooks/chat", market.url()));
    config.alerting.escalation_webhook_url = Some(format!("{}/hooks/pager", market.url()));
    config
}

async fn sync_now(server: &TestServer) -> Value {
    let (status, body) = call(server.http_addr, "POST", "/api/v1/channels/shop/sync", None).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Runs an evaluation now and returns the open alerts.
async fn evaluate(server: &TestServer) -> Vec<Value> {
    assert!(server.shared.alerts.pacer.poke().await, "the evaluator runs");
    let (status, body) = get(server.http_addr, "/api/v1/alerts").await;
    assert_eq!(status, 200);
    body["alerts"].as_array().unwrap().clone()
}

fn rules(alerts: &[Value]) -> Vec<(String, String, String)> {
    alerts
        .iter()
        .map(|a| {
            let field = |k: &str| a[k].as_str().unwrap().to_string();
            (field("rule"), field("subject"), field("state"))
        })
        .collect()
}

fn hook(received: &(String, Value)) -> (String, String, String) {
    let (sink, body) = received;
    (
        sink.clone(),
        body["event"].as_str().unwrap().into(),
        body["alert"]["rule"].as_str().unwrap().into(),
    )
}

async fn start(config: Config) -> TestServer {
    let server = TestServer::start(config).await;
    // The startup rounds are over.
    assert!(server.shared.sync.channel("shop").unwrap().pacer.poke().await);
    assert!(server.shared.alerts.pacer.poke().await);
    server
}

#[tokio::test]
async fn three_failed_pulls_alert_once_escalate_after_five_minutes_and_resolve() {
    let market = Marketplace::start().await;
    let server = start(config_for(&market)).await;
    market.market.lock().fail_pulls = true;
    for n in 1..=2 {
        sync_now(&server).await;
        assert!(evaluate(&server).await.is_empty(), "{n} failures are not yet a streak");
    }
    sync_now(&server).await;
    let alerts = evaluate(&server).await;
    assert_eq!(rules(&alerts), vec![("pull_failing".into(), "shop".into(), "firing".into())]);
    assert!(alerts[0]["message"].as_str().unwrap().contains("3 consecutive"), "{}", alerts[0]);
    let id = alerts[0]["id"].as_u64().unwrap();
    assert_eq!(
        hook(&market.hooks_received(1).await[0]),
        ("chat".into(), "fired".into(), "pull_failing".into())
    );

    // Still failing a few minutes on: the same alert, not notified again.
    server.shared.clock.advance_ms(4 * 60_000);
    sync_now(&server).await;
    let alerts = evaluate(&server).await;
    assert_eq!(alerts[0]["id"].as_u64(), Some(id));
    assert!(alerts[0]["message"].as_str().unwrap().contains("4 consecutive"));
    assert_eq!(alerts[0]["escalated_ms"], Value::Null);
    // Past five minutes: escalated to the pager, once.
    server.shared.clock.advance_ms(60_000);
    let alerts = evaluate(&server).await;
    assert_eq!(alerts[0]["escalated_ms"], T0 + 5 * 60_000);
    let received = market.hooks_received(2).await;
    assert_eq!(hook(&received[1]), ("pager".into(), "escalated".into(), "pull_failing".into()));
    server.shared.clock.advance_ms(60_000);
    evaluate(&server).await;

    // A successful pull resolves it.
    market.market.lock().fail_pulls = false;
    sync_now(&server).await;
    assert!(evaluate(&server).await.is_empty());
    let received = market.hooks_received(3).await;
    assert_eq!(received.len(), 3, "fired, escalated, resolved: {received:?}");
    assert_eq!(hook(&received[2]), ("chat".into(), "resolved".into(), "pull_failing".into()));
    let (_, history) = get(server.http_addr, "/api/v1/alerts/history").await;
    let events: Vec<&str> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, vec!["resolved", "escalated", "fired"]);
    server.stop().await;
}

#[tokio::test]
async fn acknowledged_alerts_do_not_escalate_and_refiring_soon_is_throttled() {
    let market = Marketplace::start().await;
    let mut config = config_for(&market);
    config.alerting.pull_failures = 1;
    let server = start(config).await;
    market.market.lock().fail_pulls = true;
    sync_now(&server).await;
    let alerts = evaluate(&server).await;
    let id = alerts[0]["id"].as_u64().unwrap();
    let path = format!("/api/v1/alerts/{id}/ack");
    let (status, acked) =
        call(server.http_addr, "POST", &path, Some(json!({"actor": "ops-ana"}))).await;
    assert_eq!(status, 200, "{acked}");
    assert_eq!(
        (acked["state"].as_str(), acked["acknowledged_by"].as_str()),
        (Some("acknowledged"), Some("ops-ana"))
    );
    let (status, _) =
        call(server.http_addr, "POST", "/api/v1/alerts/999/ack", Some(json!({"actor": "x"}))).await;
    assert_eq!(status, 404);

    server.shared.clock.advance_ms(10 * 60_000);
    let alerts = evaluate(&server).await;
    assert_eq!(
        (alerts[0]["state"].as_str(), &alerts[0]["escalated_ms"]),
        (Some("acknowledged"), &Value::Null)
    );

    // Resolve, then fail again within the throttle window: a new alert, not notified.
    market.market.lock().fail_pulls = false;
    sync_now(&server).await;
    assert!(evaluate(&server).await.is_empty());
    market.market.lock().fail_pulls = true;
    server.shared.clock.advance_ms(30_000);
    sync_now(&server).await;
    let alerts = evaluate(&server).await;
    assert_eq!(
        (alerts[0]["notified"].as_bool(), alerts[0]["state"].as_str()),
        (Some(false), Some("firing"))
    );
    assert_ne!(alerts[0]["id"].as_u64(), Some(id));
    // Only the first firing and its resolution reached the chat sink.
    let received = market.hooks_received(2).await;
    let events: Vec<_> = received.iter().map(hook).collect();
    assert_eq!(
        events,
        vec![
            ("chat".into(), "fired".into(), "pull_failing".into()),
            ("chat".into(), "resolved".into(), "pull_failing".into()),
        ]
    );
    server.stop().await;
    assert_eq!(market.hooks.borrow().len(), 2);
}

#[tokio::test]
async fn a_token_that_cannot_be_refreshed_alerts_before_it_expires() {
    let market = Marketplace::start().await;
    let server = start(config_for(&market)).await;
    // Token valid for an hour; refreshed from 50 minutes on; alert from 55 minutes on.
    market.market.lock().fail_tokens = true;
    server.shared.clock.advance_ms(51 * 60_000);
    let status = sync_now(&server).await;
    assert!(status["token_error"].as_str().unwrap().contains("500"), "{status}");
    assert!(evaluate(&server).await.is_empty());
    server.shared.clock.advance_ms(5 * 60_000);
    let alerts = evaluate(&server).await;
    assert_eq!(rules(&alerts), vec![("token_expiring".into(), "shop".into(), "firing".into())]);
    market.market.lock().fail_tokens = false;
    server.shared.clock.advance_ms(1_000); // past the retry pause of the last failed refresh
    let status = sync_now(&server).await;
    assert_eq!(status["token_error"], Value::Null, "{status}");
    let alerts = evaluate(&server).await;
    assert!(alerts.is_empty(), "refreshed: resolved {alerts:?}");
    server.stop().await;
}

#[tokio::test]
async fn sku_rules_follow_the_stock() {
    let mut config = test_config();
    config.alerting.low_stock_units = 3;
    config.alerting.disk_free_bytes_min = 0;
    let server = TestServer::start(config).await;
    let client = server.client().await;
    client.set_stock("LOW", 2, None).await.unwrap();
    client.set_stock("OUT", 0, None).await.unwrap();
    client.set_stock("SAFE", 5, None).await.unwrap();
    client.set_stock("PLENTY", 50, None).await.unwrap();
    assert_eq!(client.set_safety_stock("SAFE", 5).await.unwrap().code, ResultCode::Ok);
    let mut found = rules(&evaluate(&server).await);
    found.sort();
    let expected = [("below_safety_stock", "SAFE"), ("low_stock", "LOW"), ("sold_out", "OUT")];
    let expected: Vec<_> = expected
        .iter()
        .map(|(r, s)| (r.to_string(), s.to_string(), "firing".to_string()))
        .collect();
    assert_eq!(found, expected);
    client.set_stock("LOW", 10, None).await.unwrap();
    client.set_stock("OUT", 10, None).await.unwrap();
    client.set_safety_stock("SAFE", 0).await.unwrap();
    assert!(evaluate(&server).await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn disk_and_write_failures_alert() {
    let mut config = test_config();
    config.alerting.disk_free_bytes_min = u64::MAX;
    config.alerting.sold_out = false;
    let storage = Arc::new(MemStorage::new());
    let server =
        Server::bind_with(config.clone(), Clock::manual(T0), storage.clone()).await.unwrap();
    let server = TestServer::run(server, config);
    let alerts = evaluate(&server).await;
    // MemStorage reports no free-space figure: only a failed write alerts here.
    assert!(rules(&alerts).is_empty(), "{alerts:?}");
    storage.fail_syncs(true);
    let client = server.client().await;
    let reply = client.set_stock("A", 1, None).await;
    assert!(reply.is_err() || reply.unwrap().code == ResultCode::ReadOnly);
    let alerts = evaluate(&server).await;
    assert_eq!(rules(&alerts), vec![("wal_failed".into(), "server".into(), "firing".into())]);
    assert_eq!(alerts[0]["severity"], "critical");
    server.stop().await;

    let mut config = test_config();
    config.alerting.disk_free_bytes_min = u64::MAX;
    let server = TestServer::start(config).await;
    let alerts = evaluate(&server).await;
    assert_eq!(rules(&alerts), vec![("disk_nearly_full".into(), "server".into(), "firing".into())]);
    server.stop().await;
}

#[tokio::test]
async fn open_alerts_and_history_survive_a_restart() {
    let market = Marketplace::start().await;
    let mut config = config_for(&market);
    config.alerting.pull_failures = 1;
    let server = start(config.clone()).await;
    market.market.lock().fail_pulls = true;
    sync_now(&server).await;
    let before = evaluate(&server).await;
    assert_eq!(before.len(), 1);
    server.stop().await;

    let server = TestServer::start_with_clock(config, Clock::manual(T0 + 60_000)).await;
    // The pull streak is kept too, so the alert stays open rather than resolving and refiring.
    let after = evaluate(&server).await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0]["id"], before[0]["id"]);
    assert_eq!(
        (after[0]["fired_ms"].as_u64(), after[0]["state"].as_str()),
        (Some(T0), Some("firing"))
    );
    let (_, history) = get(server.http_addr, "/api/v1/alerts/history").await;
    assert_eq!(history["events"].as_array().unwrap().len(), 1);
    server.stop().await;
}
