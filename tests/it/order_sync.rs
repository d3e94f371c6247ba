//! Order sync end to end, against a fake marketplace served over real HTTP on 127.0.0.1:
//! orders by push and by pull become reservations exactly once, paid confirms, cancelled
//! releases, rejections are recorded, bad signatures are refused, tokens are refreshed ahead
//! of expiry (manual clock), stock is pushed back (0 when paused by safety stock or deleted),
//! and the module's state survives a restart.

use crate::common;
use crate::common::marketplace;

use common::{get, test_config, TestServer, T0};
use marketplace::{order, send_webhook, Marketplace, CLIENT_ID, CLIENT_SECRET, WEBHOOK_SECRET};
use serde_json::Value;
use stockd::clock::Clock;
use stockd::config::{ChannelConfig, Config};
use stockd_protocol::{ReservationState, ResultCode};

fn channel_config(market: &Marketplace) -> ChannelConfig {
    ChannelConfig {
        name: "shop".into(),
        api_url: market.url(),
        client_id: Some(CLIENT_ID.into()),
        client_secret: Some(CLIENT_SECRET.into()),
        webhook_secret: Some(WEBHOOK_SECRET.into()),
        poll_interval_ms: 60_000,
        token_refresh_margin_ms: 600_000,
        hold_ms: 1_800_000,
        retries: 1,
        retry_backoff_ms: 1,
        push_debounce_ms: 1_000,
        ..ChannelConfig::default()
    }
}

fn config_for(market: &Marketplace) -> Config {
    let mut config = test_config();
    config.channels.push(channel_config(market));
    config
}

/// "Sync now" over the API: a pull and a push at once; returns the channel's status.
async fn sync_now(server: &TestServer) -> Value {
    let (status, body) =
        common::call(server.http_addr, "POST", "/api/v1/channels/shop/sync", None).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Runs the channel's round now: only what its schedule says is due.
async fn tick(server: &TestServer) -> Value {
    let channel = server.shared.sync.channel("shop").expect("configured").clone();
    assert!(channel.pacer.poke().await, "the channel task runs");
    get(server.http_addr, "/api/v1/channels/shop").await.1
}

async fn stock(server: &TestServer, sku: &str, on_hand: u64) {
    let client = server.client().await;
    assert_eq!(
        client.set_stock(sku.to_string(), on_hand, None).await.unwrap().code,
        ResultCode::Ok
    );
}

async fn reservation(server: &TestServer, id: &str) -> Option<ReservationState> {
    let client = server.client().await;
    client.query_reservation(id.to_string()).await.unwrap().info.map(|i| i.state)
}

async fn available(server: &TestServer, sku: &str) -> u64 {
    server.client().await.query_sku(sku.to_string()).await.unwrap().info.available
}

async fn order_record(server: &TestServer, id: &str) -> Value {
    let (status, record) =
        get(server.http_addr, &format!("/api/v1/channels/shop/orders/{id}")).await;
    assert_eq!(status, 200, "{record}");
    record
}

#[tokio::test]
async fn pushed_and_pulled_orders_become_reservations_exactly_once() {
    let market = Marketplace::start().await;
    let server = TestServer::start(config_for(&market)).await;
    tick(&server).await; // the startup round (a first pull) is over
    stock(&server, "A", 10).await;
    stock(&server, "B", 1).await;

    // Push: created, then a duplicate delivery, then paid.
    let (status, outcome) = send_webhook(
        server.http_addr,
        "shop",
        WEBHOOK_SECRET,
        &order("1001", "created", &[("A", 2)]),
    )
    .await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(
        (outcome["state"].as_str(), outcome["duplicate"].as_bool()),
        (Some("held"), Some(false))
    );
    assert_eq!(outcome["reservation"], "shop:1001");
    let (_, again) = send_webhook(
        server.http_addr,
        "shop",
        WEBHOOK_SECRET,
        &order("1001", "created", &[("A", 2)]),
    )
    .await;
    assert_eq!(again["duplicate"], true);
    assert_eq!(available(&server, "A").await, 8, "held once");

    // Pull delivers the same order (created, then paid) plus new ones.
    market.put_order("1001", "created", &[("A", 2)]);
    market.put_order("1001", "paid", &[("A", 2)]);
    market.put_order("1002", "created", &[("A", 3)]);
    market.put_order("1003", "created", &[("B", 5)]); // not enough stock
    market.put_order("1004", "created", &[("NOPE", 1)]); // unknown SKU
    let status = sync_now(&server).await;
    let pull = &status["last_pull"];
    assert_eq!(pull["status"], "ok", "{status}");
    assert_eq!(pull["fetched"], 5);
    assert_eq!(pull["rejected"], 2);
    assert_eq!(status["cursor"], "5");
    assert_eq!(reservation(&server, "shop:1001").await, Some(ReservationState::Confirmed));
    assert_eq!(reservation(&server, "shop:1002").await, Some(ReservationState::Held));
    assert_eq!(available(&server, "A").await, 5, "10 - 2 confirmed - 3 held: nothing twice");

    let rejected = order_record(&server, "1003").await;
    assert_eq!(
        (rejected["state"].as_str(), rejected["code"].as_str()),
        (Some("rejected"), Some("insufficient_stock"))
    );
    assert!(rejected["reason"].as_str().unwrap().contains("\"B\""), "{rejected}");
    assert_eq!(order_record(&server, "1004").await["code"], "unknown_sku");
    let (_, listed) = get(server.http_addr, "/api/v1/channels/shop/orders?state=rejected").await;
    assert_eq!(listed["matched"], 2);

    // The hold carries the channel.
    let client = server.client().await;
    let info = client.query_reservation("shop:1002").await.unwrap().info.unwrap();
    assert_eq!(&info.channel[..], b"shop");
    assert_eq!(&info.customer[..], b"buyer-1002");

    // Cancelled releases, by push; the later pull of the same event is a duplicate.
    let (_, outcome) = send_webhook(
        server.http_addr,
        "shop",
        WEBHOOK_SECRET,
        &order("1002", "cancelled", &[("A", 3)]),
    )
    .await;
    assert_eq!(outcome["state"], "released");
    assert_eq!(reservation(&server, "shop:1002").await, Some(ReservationState::Released));
    market.put_order("1002", "cancelled", &[("A", 3)]);
    server.shared.clock.advance_ms(60_000);
    let status = tick(&server).await; // the scheduled pull is due
    assert_eq!(status["last_pull"]["fetched"], 1);
    assert_eq!(status["last_pull"]["applied"], 0, "a duplicate changes nothing");
    assert_eq!(available(&server, "A").await, 8);

    // A late "created" after payment changes nothing either.
    let (_, late) = send_webhook(
        server.http_addr,
        "shop",
        WEBHOOK_SECRET,
        &order("1001", "created", &[("A", 2)]),
    )
    .await;
    assert_eq!(
        (late["duplicate"].as_bool(), late["state"].as_str()),
        (Some(true), Some("confirmed"))
    );

    // Every pull is in the log, newest first.
    let (_, pulls) = get(server.http_addr, "/api/v1/channels/shop/pulls").await;
    let pulls = pulls["pulls"].as_array().unwrap().clone();
    let started: Vec<u64> = pulls.iter().map(|p| p["started_ms"].as_u64().unwrap()).collect();
    assert_eq!(started, vec![T0 + 60_000, T0, T0], "scheduled, sync now, at startup");
    server.stop().await;
}

#[tokio::test]
async fn bad_signatures_and_malformed_webhooks_are_refused() {
    let market = Marketplace::start().await;
    let server = TestServer::start(config_for(&market)).await;
    tick(&server).await; // the startup round (a first pull) is over
    stock(&server, "A", 5).await;
    let body = order("77", "created", &[("A", 1)]);
    let (status, reply) = send_webhook(server.http_addr, "shop", "wrong-key", &body).await;
    assert_eq!((status, reply["code"].as_str()), (401, Some("bad_signature")), "{reply}");
    let unsigned = reqwest::Client::new()
        .post(format!("http://{}/api/v1/channels/shop/webhook", server.http_addr))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status().as_u16(), 401);
    assert_eq!(available(&server, "A").await, 5, "nothing applied");
    assert_eq!(reservation(&server, "shop:77").await, None);

    let (status, reply) =
        send_webhook(server.http_addr, "shop", WEBHOOK_SECRET, &serde_json::json!({"id": 1})).await;
    assert_eq!((status, reply["code"].as_str()), (400, Some("malformed")));
    let (status, reply) = send_webhook(server.http_addr, "nope", WEBHOOK_SECRET, &body).await;
    assert_eq!((status, reply["code"].as_str()), (404, Some("not_found")));
    let status = sync_now(&server).await;
    assert_eq!(status["bad_signatures"], 2);
    server.stop().await;
}

#[tokio::test]
async fn tokens_are_refreshed_before_they_expire() {
    let market = Marketplace::start().await;
    market.market.lock().token_ttl_s = 3_600;
    let server = TestServer::start(config_for(&market)).await;
    tick(&server).await; // the startup round (a first pull) is over
    let status = sync_now(&server).await;
    assert_eq!(status["token_expires_at_ms"], T0 + 3_600_000);
    assert_eq!(market.market.lock().tokens_issued, 1);

    // 49 minutes later: still more than the 10-minute margin left, no refresh.
    server.shared.clock.advance_ms(49 * 60_000);
    sync_now(&server).await;
    assert_eq!(market.market.lock().tokens_issued, 1);
    // 51 minutes: within the margin, refreshed while the old token is still valid.
    server.shared.clock.advance_ms(2 * 60_000);
    let status = sync_now(&server).await;
    assert_eq!(market.market.lock().tokens_issued, 2);
    assert_eq!(status["token_expires_at_ms"], T0 + 51 * 60_000 + 3_600_000);
    assert_eq!(status["token_refreshed_ms"], T0 + 51 * 60_000);

    // A token the marketplace stops accepting early is replaced on the 401.
    market.market.lock().valid_tokens.clear();
    market.put_order("9", "created", &[("A", 1)]);
    server.shared.clock.advance_ms(60_000);
    let status = sync_now(&server).await;
    assert_eq!(status["last_pull"]["status"], "ok", "{status}");
    assert_eq!(market.market.lock().tokens_issued, 3);

    // The expiry is in the metrics.
    let (_, _, metrics) = common::http_get(server.http_addr, "/metrics").await;
    let expected = format!(
        "stockd_channel_token_expiry_seconds{{channel=\"shop\"}} {}",
        (T0 + 52 * 60_000 + 3_600_000) / 1000
    );
    assert!(metrics.contains(&expected), "{expected} in\n{metrics}");
    server.stop().await;
}

#[tokio::test]
async fn stock_is_pushed_back_and_zero_when_paused_by_safety_stock() {
    let market = Marketplace::start().await;
    let server = TestServer::start(config_for(&market)).await;
    tick(&server).await; // the startup round (a first pull) is over
    stock(&server, "A", 10).await;
    stock(&server, "B", 4).await;
    sync_now(&server).await;
    // A new channel gets every SKU once.
    assert_eq!(market.pushed().get("A"), Some(&10));
    assert_eq!(market.pushed().get("B"), Some(&4));

    let (_, outcome) =
        send_webhook(server.http_addr, "shop", WEBHOOK_SECRET, &order("1", "created", &[("A", 3)]))
            .await;
    assert_eq!(outcome["state"], "held");
    server.shared.clock.advance_ms(1_000);
    sync_now(&server).await;
    assert_eq!(market.pushed().get("A"), Some(&7));

    // Safety stock pauses B: the channel is told 0.
    let client = server.client().await;
    let reply = client.set_safety_stock("B", 4).await.unwrap();
    assert!(reply.info.paused);
    let before = market.market.lock().pushes.len();
    server.shared.clock.advance_ms(1_000);
    sync_now(&server).await;
    let pushes = market.market.lock().pushes.clone();
    assert_eq!(&pushes[before..], &[("B".to_string(), 0)], "only what changed is pushed");

    // A failed push is retried with the same SKUs until it goes through.
    market.market.lock().fail_pushes = true;
    client.set_stock("A", 20, None).await.unwrap();
    server.shared.clock.advance_ms(1_000);
    let status = sync_now(&server).await;
    assert_eq!(status["push_failures"], 1);
    assert_eq!(status["push_pending_skus"], 1);
    market.market.lock().fail_pushes = false;
    server.shared.clock.advance_ms(1_000);
    let status = sync_now(&server).await;
    assert_eq!(status["push_failures"], 0);
    assert_eq!(market.pushed().get("A"), Some(&17));

    // A deleted SKU is pushed as 0, so the marketplace stops selling it.
    assert_eq!(client.set_safety_stock("B", 0).await.unwrap().code, ResultCode::Ok);
    server.shared.clock.advance_ms(1_000);
    sync_now(&server).await;
    assert_eq!(market.pushed().get("B"), Some(&4));
    assert_eq!(client.delete_sku("B").await.unwrap().code, ResultCode::Ok);
    server.shared.clock.advance_ms(1_000);
    sync_now(&server).await;
    assert_eq!(market.pushed().get("B"), Some(&0));
    server.stop().await;
}

#[tokio::test]
async fn cursor_pull_log_orders_and_push_position_survive_a_restart() {
    let market = Marketplace::start().await;
    let config = config_for(&market);
    let server = TestServer::start(config.clone()).await;
    tick(&server).await;
    stock(&server, "A", 10).await;
    market.put_order("1", "created", &[("A", 1)]);
    market.put_order("2", "created", &[("A", 1)]);
    let status = sync_now(&server).await;
    assert_eq!(status["cursor"], "2");
    let pushed_lsn = status["pushed_lsn"].clone();
    assert!(pushed_lsn.as_u64().is_some(), "{status}");
    server.stop().await;

    let server = TestServer::start_with_clock(config, Clock::manual(T0 + 600_000)).await;
    tick(&server).await;
    let status = sync_now(&server).await;
    assert_eq!(status["cursor"], "2", "the cursor was kept");
    assert_eq!(status["last_pull"]["fetched"], 0, "nothing fetched twice");
    let (_, pulls) = get(server.http_addr, "/api/v1/channels/shop/pulls").await;
    assert_eq!(pulls["pulls"].as_array().unwrap().len(), 4, "2 per run: at startup, sync now");
    assert_eq!(order_record(&server, "2").await["state"], "held");
    assert_eq!(available(&server, "A").await, 8);
    // Pushes resume from the saved position instead of pushing everything again.
    let pushes_before = market.market.lock().pushes.len();
    server.shared.clock.advance_ms(1_000);
    sync_now(&server).await;
    assert_eq!(market.market.lock().pushes.len(), pushes_before);
    server.stop().await;
}

#[tokio::test]
async fn failing_pulls_are_logged_with_their_error() {
    let market = Marketplace::start().await;
    let server = TestServer::start(config_for(&market)).await;
    tick(&server).await; // the startup round (a first pull) is over
    market.market.lock().fail_pulls = true;
    for n in 1..=3u64 {
        let status = sync_now(&server).await;
        assert_eq!(status["failed_pulls"], n);
        assert!(status["last_pull"]["error"].as_str().unwrap().contains("500"), "{status}");
        server.shared.clock.advance_ms(60_000);
    }
    // The startup pull, then each failed pull tried twice (retries = 1).
    assert_eq!(market.market.lock().pull_requests, 1 + 6);
    market.market.lock().fail_pulls = false;
    let status = sync_now(&server).await;
    assert_eq!(status["failed_pulls"], 0);
    server.stop().await;
}
