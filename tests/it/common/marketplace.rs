//! A fake marketplace: a real HTTP server on 127.0.0.1 speaking the channel API stockd pulls
//! from and pushes to (`src/sync/channel.rs`), with knobs to make it fail. It also signs and
//! sends webhooks to stockd.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{json, Value};
use stockd::config::ChannelConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub const CLIENT_ID: &str = "stockd-test";
pub const CLIENT_SECRET: &str = "client-secret-1";
pub const WEBHOOK_SECRET: &str = "webhook-secret-1";

#[derive(Default)]
pub struct Market {
    /// (sequence, order JSON); an order changing status is appended again.
    pub orders: Vec<(u64, Value)>,
    pub next_seq: u64,
    /// Tokens the marketplace accepts now.
    pub valid_tokens: HashSet<String>,
    pub tokens_issued: u32,
    /// `expires_in` of new tokens, in seconds.
    pub token_ttl_s: u64,
    /// Answer order pulls with 500 while set.
    pub fail_pulls: bool,
    /// Answer stock pushes with 503 while set.
    pub fail_pushes: bool,
    pub pull_requests: u32,
    /// Every stock push received: (sku, quantity), in order.
    pub pushes: Vec<(String, u64)>,
    /// Refuse token requests with 500 while set.
    pub fail_tokens: bool,
}

pub struct Marketplace {
    pub addr: SocketAddr,
    pub market: Arc<Mutex<Market>>,
    /// Bodies received at `/hooks/{name}` (an alert sink: a chat robot, a pager), in order.
    pub hooks: watch::Sender<Vec<(String, Value)>>,
    task: JoinHandle<()>,
}

async fn hook(
    State(hooks): State<watch::Sender<Vec<(String, Value)>>>,
    Path(name): Path<String>,
    Json(body): Json<Value>,
) -> Json<Value> {
    hooks.send_modify(|received| received.push((name, body)));
    Json(json!({"ok": true}))
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("authorization")?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(str::to_string)
}

fn authorized(market: &Market, headers: &HeaderMap) -> bool {
    bearer(headers).is_some_and(|t| market.valid_tokens.contains(&t))
}

#[derive(Deserialize)]
struct TokenForm {
    grant_type: String,
    client_id: String,
    client_secret: String,
}

async fn token(State(market): State<Arc<Mutex<Market>>>, Form(form): Form<TokenForm>) -> Response {
    let mut market = market.lock();
    if market.fail_tokens {
        return (StatusCode::INTERNAL_SERVER_ERROR, "token service down").into_response();
    }
    if form.grant_type != "client_credentials"
        || form.client_id != CLIENT_ID
        || form.client_secret != CLIENT_SECRET
    {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": "invalid_client"})))
            .into_response();
    }
    market.tokens_issued += 1;
    let token = format!("tok-{}", market.tokens_issued);
    market.valid_tokens.insert(token.clone());
    let ttl = market.token_ttl_s;
    Json(json!({"access_token": token, "token_type": "Bearer", "expires_in": ttl})).into_response()
}

#[derive(Deserialize)]
struct PageQuery {
    cursor: Option<String>,
    limit: usize,
}

async fn orders(
    State(market): State<Arc<Mutex<Market>>>,
    headers: HeaderMap,
    Query(query): Query<PageQuery>,
) -> Response {
    let mut market = market.lock();
    market.pull_requests += 1;
    if !authorized(&market, &headers) {
        return (StatusCode::UNAUTHORIZED, "bad token").into_response();
    }
    if market.fail_pulls {
        return (StatusCode::INTERNAL_SERVER_ERROR, "marketplace down").into_response();
    }
    let after: u64 = query.cursor.as_deref().map_or(0, |c| c.parse().expect("numeric cursor"));
    let newer: Vec<&(u64, Value)> = market.orders.iter().filter(|(seq, _)| *seq > after).collect();
    let page: Vec<&(u64, Value)> = newer.iter().take(query.limit).copied().collect();
    let cursor = page.last().map_or(after, |(seq, _)| *seq);
    let orders: Vec<Value> = page.iter().map(|(_, order)| order.clone()).collect();
    let has_more = newer.len() > page.len();
    Json(json!({"orders": orders, "cursor": cursor.to_string(), "has_more": has_more}))
        .into_response()
}

async fn stock(
    State(market): State<Arc<Mutex<Market>>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mut market = market.lock();
    if !authorized(&market, &headers) {
        return (StatusCode::UNAUTHORIZED, "bad token").into_response();
    }
    if market.fail_pushes {
        return (StatusCode::SERVICE_UNAVAILABLE, "try later").into_response();
    }
    for item in body["items"].as_array().expect("items") {
        let sku = item["sku"].as_str().expect("sku").to_string();
        market.pushes.push((sku, item["quantity"].as_u64().expect("quantity")));
    }
    Json(json!({"ok": true})).into_response()
}

impl Marketplace {
    pub async fn start() -> Marketplace {
        let market = Arc::new(Mutex::new(Market { token_ttl_s: 3600, ..Market::default() }));
        let hooks = watch::Sender::new(Vec::new());
        let router = Router::new()
            .route("/oauth/token", post(token))
            .route("/orders", get(orders))
            .route("/stock", post(stock))
            .with_state(market.clone())
            .route("/hooks/{name}", post(hook).with_state(hooks.clone()));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the marketplace");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.expect("the marketplace serves");
        });
        Marketplace { addr, market, hooks, task }
    }

    /// Waits (bounded) until at least `count` hook bodies have arrived, and returns them all.
    pub async fn hooks_received(&self, count: usize) -> Vec<(String, Value)> {
        let mut rx = self.hooks.subscribe();
        let wait =
            async { rx.wait_for(|received| received.len() >= count).await.map(|r| r.clone()) };
        match tokio::time::timeout(std::time::Duration::from_secs(10), wait).await {
            Ok(Ok(received)) => received,
            _ => panic!("expected {count} hook calls, got {:?}", self.hooks.borrow()),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A channel `name` pulling from this marketplace with its OAuth client, every minute,
    /// without retries and without pushing stock.
    pub fn channel(&self, name: &str) -> ChannelConfig {
        ChannelConfig {
            name: name.into(),
            api_url: self.url(),
            client_id: Some(CLIENT_ID.into()),
            client_secret: Some(CLIENT_SECRET.into()),
            poll_interval_ms: 60_000,
            retries: 0,
            retry_backoff_ms: 1,
            push_stock: false,
            ..ChannelConfig::default()
        }
    }

    /// Adds (or moves to a new status) an order, as a marketplace would.
    pub fn put_order(&self, id: &str, status: &str, lines: &[(&str, u32)]) {
        let mut market = self.market.lock();
        market.next_seq += 1;
        let seq = market.next_seq;
        market.orders.push((seq, order(id, status, lines)));
    }

    /// The last quantity pushed per SKU.
    pub fn pushed(&self) -> HashMap<String, u64> {
        self.market.lock().pushes.iter().cloned().collect()
    }
}

impl Drop for Marketplace {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An order as the channel API carries it.
pub fn order(id: &str, status: &str, lines: &[(&str, u32)]) -> Value {
    let lines: Vec<Value> =
        lines.iter().map(|(sku, qty)| json!({"sku": sku, "qty": qty})).collect();
    json!({"id": id, "status": status, "customer": format!("buyer-{id}"), "lines": lines})
}

/// Sends a webhook to stockd, signed with `secret`: (status, JSON reply).
pub async fn send_webhook(
    http_addr: SocketAddr,
    channel: &str,
    secret: &str,
    body: &Value,
) -> (u16, Value) {
    let body = body.to_string();
    let signature = stockd::sync::sign(secret, body.as_bytes());
    let response = reqwest::Client::new()
        .post(format!("http://{http_addr}/api/v1/channels/{channel}/webhook"))
        .header("content-type", "application/json")
        .header("x-stockd-signature", signature)
        .body(body)
        .send()
        .await
        .expect("webhook sent");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON reply"))
}
