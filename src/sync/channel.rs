//! One channel's task: token refresh, order pulls and stock push-back, against the channel's
//! HTTP API.
//!
//! # The channel API stockd speaks
//!
//! All under the channel's `api_url`, JSON unless said otherwise:
//!
//! - `POST /oauth/token`, form `grant_type=client_credentials&client_id=..&client_secret=..`
//!   → `{"access_token": "...", "expires_in": seconds}` (only with `client_id`). The token is
//!   sent as `Authorization: Bearer ...` on the calls below and refreshed
//!   `token_refresh_margin_ms` before it expires (expiry computed in UTC from the server clock),
//!   and at once when a call is answered 401.
//! - `GET /orders?limit=100[&cursor=C]` → `{"orders": [Order...], "cursor": "C2", "has_more":
//!   bool}`: the orders changed since cursor `C` (all, without one). Pages are applied in
//!   order; the cursor is saved after each page, so a pull that fails half-way resumes there.
//! - `POST /stock` with `{"items": [{"sku": "A", "quantity": 3}, ...]}` (up to 500 items):
//!   the quantities the channel may sell now.
//!
//! Every call has a timeout and is retried `retries` times on a connection error, a timeout,
//! 429 or 5xx, after `retry_backoff_ms`, doubling. A pull that still fails is logged as failed;
//! a push that fails keeps its SKUs for the next round.
//!
//! # Stock push-back
//!
//! The task follows the write-ahead log (`wal::tail`): every durable change names its SKUs (or
//! its reservation, whose SKUs are looked up). At most every `push_debounce_ms` the changed
//! SKUs' sellable quantities are pushed: 0 while a SKU is paused by its safety stock (or sold
//! out), else what is available, capped by the channel's quota room (or, without a quota, by
//! the pool's) when the SKU has quotas. The log position pushed up to is saved in the sync
//! journal, so a restart pushes what changed while the server was down; if the log no longer
//! reaches back that far (or for a new channel), every SKU is pushed once.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use reqwest::{RequestBuilder, StatusCode};
use serde::{Deserialize, Serialize};
use stockd_protocol::ResultCode;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{apply_order, journal, ApplyError, Order, OrderStats, Pull, Source};
use crate::config::ChannelConfig;
use crate::engine::{SkuFilter, Touches};
use crate::pacer::Pacer;
use crate::server::Shared;
use crate::wal::tail::{follow, Followed};

/// Orders asked for per page.
const PAGE_ORDERS: usize = 100;
/// Items per stock push request.
const PUSH_ITEMS_MAX: usize = 500;
/// Longest sleep of the task between checks (rounds are cheap when nothing is due).
const WAKE_MS_MAX: u64 = 1_000;
/// Per-order locks, so two deliveries of one order are applied one after the other while
/// different orders proceed together.
const ORDER_STRIPES: usize = 64;
/// Longest error text kept.
const ERROR_CHARS_MAX: usize = 300;

/// An access token.
#[derive(Clone, Debug)]
struct Token {
    access: String,
    expires_at_ms: u64,
}

#[derive(Debug, Default)]
struct State {
    token: Option<Token>,
    token_refreshed_ms: Option<u64>,
    token_error: Option<String>,
    /// No refresh attempt before this time after a failed one.
    token_retry_ms: u64,
    next_pull_ms: u64,
    /// Pull and push in the next round whatever their schedule ("sync now").
    forced: bool,
    last_pull: Option<Pull>,
    /// The log position the push-back has read up to (`None`: push everything).
    followed_lsn: Option<u64>,
    /// SKUs changed and not yet pushed.
    dirty: HashSet<Bytes>,
    next_push_ms: u64,
    push_failures: u32,
    last_push_ms: Option<u64>,
    push_error: Option<String>,
    pushed_items: u64,
}

/// A channel's status, as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ChannelStatus {
    pub name: String,
    pub api_url: String,
    pub pull_enabled: bool,
    pub poll_interval_ms: u64,
    pub next_pull_ms: Option<u64>,
    pub last_pull: Option<Pull>,
    pub failed_pulls: u32,
    pub cursor: Option<String>,
    /// `null` for channels without OAuth.
    pub token_expires_at_ms: Option<u64>,
    pub token_refreshed_ms: Option<u64>,
    pub token_error: Option<String>,
    pub push_enabled: bool,
    pub pushed_lsn: Option<u64>,
    pub push_pending_skus: usize,
    pub push_failures: u32,
    pub last_push_ms: Option<u64>,
    pub push_error: Option<String>,
    pub pushed_items: u64,
    /// Orders being applied plus SKUs waiting to be pushed.
    pub backlog: u64,
    pub webhooks: bool,
    pub orders_applied: u64,
    pub orders_rejected: u64,
    pub orders_duplicate: u64,
    pub bad_signatures: u64,
}

/// A configured channel.
pub struct Channel {
    pub config: ChannelConfig,
    webhook_secret: Option<String>,
    client_secret: Option<String>,
    http: reqwest::Client,
    state: Mutex<State>,
    stripes: Vec<tokio::sync::Mutex<()>>,
    /// Orders received and not yet applied.
    pending_orders: AtomicU64,
    pub stats: OrderStats,
    pub pacer: Pacer,
}

fn clip(text: String) -> String {
    if text.chars().count() <= ERROR_CHARS_MAX {
        return text;
    }
    text.chars().take(ERROR_CHARS_MAX).chain("…".chars()).collect()
}

#[derive(Deserialize)]
struct TokenReply {
    access_token: String,
    expires_in: u64,
}

#[derive(Deserialize)]
struct OrdersPage {
    orders: Vec<Order>,
    cursor: Option<String>,
    #[serde(default)]
    has_more: bool,
}

#[derive(Serialize)]
struct StockItem<'a> {
    sku: &'a str,
    quantity: u64,
}

impl Channel {
    pub fn new(config: ChannelConfig, pushed_lsn: Option<u64>) -> Channel {
        // Validated with the configuration.
        let webhook_secret = config.webhook_secret().ok().flatten();
        let client_secret = config.client_secret().ok().flatten();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.request_timeout_ms))
            .user_agent(concat!("stockd/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client builds");
        let state = State { followed_lsn: pushed_lsn, ..State::default() };
        Channel {
            config,
            webhook_secret,
            client_secret,
            http,
            state: Mutex::new(state),
            stripes: (0..ORDER_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            pending_orders: AtomicU64::new(0),
            stats: OrderStats::default(),
            pacer: Pacer::default(),
        }
    }

    /// Serialises the deliveries of one order.
    pub(super) async fn lock_order(&self, order: &str) -> tokio::sync::MutexGuard<'_, ()> {
        let hash = order.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        self.stripes[(hash % ORDER_STRIPES as u64) as usize].lock().await
    }

    /// The key webhooks must be signed with (`None`: webhooks are refused).
    pub fn webhook_secret(&self) -> Option<&str> {
        self.webhook_secret.as_deref()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.api_url.trim_end_matches('/'))
    }

    fn oauth(&self) -> bool {
        self.config.client_id.is_some()
    }

    /// Runs a round now that pulls and pushes regardless of their schedule, and waits for
    /// it; false when the task has stopped.
    pub async fn sync_now(&self) -> bool {
        self.state.lock().forced = true;
        self.pacer.poke().await
    }

    /// Counts orders entering and leaving the backlog.
    pub fn orders_pending(&self, delta: i64) {
        if delta >= 0 {
            self.pending_orders.fetch_add(delta as u64, Ordering::Relaxed);
        } else {
            self.pending_orders.fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
        }
    }

    pub fn status(&self, shared: &Shared) -> ChannelStatus {
        let store = shared.sync.store.lock();
        let name = &self.config.name;
        let (failed_pulls, cursor) =
            (store.failed_pulls(name), store.cursor(name).map(String::from));
        let last_pull = store.pulls(name, 1).pop();
        drop(store);
        let state = self.state.lock();
        let pull_enabled = self.config.poll_interval_ms > 0;
        let pending = state.dirty.len() as u64 + u64::from(state.followed_lsn.is_none());
        ChannelStatus {
            name: name.clone(),
            api_url: self.config.api_url.clone(),
            pull_enabled,
            poll_interval_ms: self.config.poll_interval_ms,
            next_pull_ms: pull_enabled.then_some(state.next_pull_ms),
            last_pull: last_pull.or_else(|| state.last_pull.clone()),
            failed_pulls,
            cursor,
            token_expires_at_ms: state.token.as_ref().map(|t| t.expires_at_ms),
            token_refreshed_ms: state.token_refreshed_ms,
            token_error: state.token_error.clone(),
            push_enabled: self.config.push_stock,
            pushed_lsn: state.followed_lsn.filter(|_| state.dirty.is_empty()),
            push_pending_skus: state.dirty.len(),
            push_failures: state.push_failures,
            last_push_ms: state.last_push_ms,
            push_error: state.push_error.clone(),
            pushed_items: state.pushed_items,
            backlog: self.pending_orders.load(Ordering::Relaxed)
                + if self.config.push_stock { pending } else { 0 },
            webhooks: self.webhook_secret.is_some(),
            orders_applied: self.stats.applied.load(Ordering::Relaxed),
            orders_rejected: self.stats.rejected.load(Ordering::Relaxed),
            orders_duplicate: self.stats.duplicates.load(Ordering::Relaxed),
            bad_signatures: self.stats.bad_signatures.load(Ordering::Relaxed),
        }
    }

    // -- token -----------------------------------------------------------------------------

    async fn refresh_token(&self, shared: &Shared) -> Result<(), String> {
        let client_id = self.config.client_id.clone().unwrap_or_default();
        let secret = self.client_secret.clone().unwrap_or_default();
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", client_id.as_str()),
            ("client_secret", secret.as_str()),
        ];
        let url = self.url("/oauth/token");
        let response = self.send_retrying(|| self.http.post(&url).form(&form)).await?;
        let reply: TokenReply = response.json().await.map_err(|e| format!("token reply: {e}"))?;
        let now_ms = shared.clock.now_ms();
        let expires_at_ms = now_ms.saturating_add(reply.expires_in.saturating_mul(1000));
        let mut state = self.state.lock();
        state.token = Some(Token { access: reply.access_token, expires_at_ms });
        state.token_refreshed_ms = Some(now_ms);
        state.token_error = None;
        drop(state);
        info!(channel = %self.config.name, expires_at_ms, "channel token refreshed");
        Ok(())
    }

    /// Refreshes the token when it is missing or within the margin of its expiry.
    async fn keep_token(&self, shared: &Shared, now_ms: u64) {
        if !self.oauth() {
            return;
        }
        let due = {
            let state = self.state.lock();
            let refresh_at = state
                .token
                .as_ref()
                .map_or(0, |t| t.expires_at_ms.saturating_sub(self.config.token_refresh_margin_ms));
            now_ms >= refresh_at && now_ms >= state.token_retry_ms
        };
        if !due {
            return;
        }
        if let Err(e) = self.refresh_token(shared).await {
            warn!(channel = %self.config.name, error = %e, "channel token refresh failed");
            let mut state = self.state.lock();
            state.token_error = Some(clip(e));
            state.token_retry_ms = now_ms + 10 * self.config.retry_backoff_ms;
        }
    }

    // -- calls -----------------------------------------------------------------------------

    /// Sends a request, retrying transient failures with a doubling backoff.
    async fn send_retrying(
        &self,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<reqwest::Response, String> {
        let mut backoff = Duration::from_millis(self.config.retry_backoff_ms);
        let mut attempt = 0;
        loop {
            let error = match build().send().await {
                Ok(response) if response.status().is_success() => return Ok(response),
                Ok(response) => {
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    let error = format!("HTTP {status}: {}", body.trim());
                    let transient =
                        status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
                    if !transient {
                        return Err(clip(error));
                    }
                    error
                }
                Err(e) => format!("{e}"),
            };
            if attempt >= self.config.retries {
                return Err(clip(error));
            }
            attempt += 1;
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2);
        }
    }

    /// A call with the channel's token; a 401 refreshes the token and tries once more.
    async fn call(
        &self,
        shared: &Shared,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<reqwest::Response, String> {
        for first in [true, false] {
            if self.oauth() && self.state.lock().token.is_none() {
                self.refresh_token(shared).await?;
            }
            let token = self.state.lock().token.as_ref().map(|t| t.access.clone());
            let result = self
                .send_retrying(|| {
                    let request = build(&self.http);
                    match &token {
                        Some(token) => request.bearer_auth(token),
                        None => request,
                    }
                })
                .await;
            match result {
                // The channel no longer accepts the token: get a new one and try once more.
                Err(e) if first && self.oauth() && e.starts_with("HTTP 401") => {
                    self.state.lock().token = None;
                }
                other => return other,
            }
        }
        Err("the channel refused a freshly issued token (HTTP 401)".into())
    }

    // -- pull ------------------------------------------------------------------------------

    /// Pulls the orders changed since the cursor and applies them; logs the pull.
    pub async fn pull(&self, shared: &Arc<Shared>) -> Pull {
        let started_ms = shared.clock.now_ms();
        let started = Instant::now();
        let name = self.config.name.clone();
        let (mut fetched, mut applied, mut rejected) = (0u64, 0u64, 0u64);
        let mut result = Ok(());
        for _ in 0..shared.config.sync.pages_per_pull_max {
            let cursor = shared.sync.store.lock().cursor(&name).map(String::from);
            let url = self.url("/orders");
            let response = self
                .call(shared, |http| {
                    let mut query = vec![("limit", PAGE_ORDERS.to_string())];
                    if let Some(cursor) = &cursor {
                        query.push(("cursor", cursor.clone()));
                    }
                    http.get(&url).query(&query)
                })
                .await;
            let page = match response {
                Ok(response) => {
                    response.json::<OrdersPage>().await.map_err(|e| format!("orders page: {e}"))
                }
                Err(e) => Err(e),
            };
            let page = match page {
                Ok(page) => page,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            fetched += page.orders.len() as u64;
            self.orders_pending(page.orders.len() as i64);
            let mut remaining = page.orders.len() as i64;
            for order in &page.orders {
                let outcome = apply_order(shared, self, order, Source::Pull).await;
                self.orders_pending(-1);
                remaining -= 1;
                match outcome {
                    Ok(o) if o.duplicate => {}
                    Ok(o) if o.record.state == "rejected" => rejected += 1,
                    Ok(_) => applied += 1,
                    Err(ApplyError::Invalid(why)) => {
                        warn!(channel = %name, error = %why, "pulled an invalid order; skipped");
                        rejected += 1;
                    }
                    Err(e) => {
                        result = Err(e.to_string());
                        break;
                    }
                }
            }
            self.orders_pending(-remaining);
            if result.is_err() {
                break;
            }
            if let Some(cursor) = page.cursor {
                let name = name.clone();
                let saved = journal(shared, move |store, storage, now_ms| {
                    store.set_cursor(storage, &name, cursor, now_ms)
                })
                .await;
                if let Err(e) = saved {
                    result = Err(e.to_string());
                    break;
                }
            }
            if !page.has_more {
                break;
            }
        }
        let pull = Pull {
            channel: name.clone(),
            started_ms,
            duration_ms: started.elapsed().as_millis() as u64,
            fetched,
            applied,
            rejected,
            status: if result.is_ok() { "ok" } else { "error" }.into(),
            error: result.err(),
        };
        match &pull.error {
            None => info!(channel = %name, fetched, applied, rejected, "pulled orders"),
            Some(e) => warn!(channel = %name, error = %e, "order pull failed"),
        }
        self.state.lock().last_pull = Some(pull.clone());
        let logged = pull.clone();
        let log =
            journal(shared, move |store, storage, now_ms| store.add_pull(storage, logged, now_ms))
                .await;
        if let Err(e) = log {
            warn!(channel = %name, error = %e, "cannot log the pull");
        }
        pull
    }

    // -- push ------------------------------------------------------------------------------

    /// Collects the SKUs changed since the last round (or every SKU when starting afresh).
    fn collect_changes(&self, shared: &Shared) {
        let up_to = shared.wal.progress().durable_lsn;
        let followed = self.state.lock().followed_lsn;
        let now_ms = shared.clock.now_ms();
        let mut changed = HashSet::new();
        let followed = match followed {
            Some(after) => {
                let engine = &shared.engine;
                let read =
                    follow(&*shared.storage, after, up_to, |_, command| match command.touches() {
                        Touches::Sku(sku) => {
                            changed.insert(sku.clone());
                        }
                        Touches::Lines(lines) => {
                            changed.extend(lines.iter().map(|l| l.sku.clone()));
                        }
                        Touches::Skus(skus) => changed.extend(skus),
                        Touches::Reservation(id) => {
                            if let Some(info) = engine.query_reservation(id, now_ms).info {
                                changed.extend(info.lines.iter().map(|l| l.sku.clone()));
                            }
                        }
                        Touches::Nothing => {}
                    });
                match read {
                    Ok(Followed::Read { last_lsn }) => Some(last_lsn),
                    Ok(Followed::Gone) => None,
                    Err(e) => {
                        warn!(channel = %self.config.name, error = %e, "cannot read the log");
                        return;
                    }
                }
            }
            None => None,
        };
        let followed = match followed {
            Some(lsn) => lsn,
            None => {
                // Everything: every SKU, as of the log position read before listing.
                let mut after: Option<Bytes> = None;
                loop {
                    let page = shared.engine.list_skus(
                        &SkuFilter::default(),
                        after.as_deref(),
                        1000,
                        now_ms,
                    );
                    changed.extend(page.rows.into_iter().map(|row| row.sku));
                    match page.next_after {
                        Some(next) => after = Some(next),
                        None => break,
                    }
                }
                up_to
            }
        };
        let mut state = self.state.lock();
        state.dirty.extend(changed);
        state.followed_lsn = Some(followed);
    }

    /// What the channel may sell of a SKU now (`None` for an unknown SKU; 0 for a deleted
    /// one, so that the marketplace stops selling it).
    fn sellable(&self, shared: &Shared, sku: &[u8], now_ms: u64) -> Option<u64> {
        let engine = &shared.engine;
        let info = engine.query_sku(sku, now_ms);
        if info.code != ResultCode::Ok {
            return engine.is_deleted(sku).then_some(0);
        }
        let info = info.info;
        if info.paused {
            return Some(0);
        }
        let limits = engine.query_limits(sku, now_ms);
        if limits.code != ResultCode::Ok || limits.limits.quotas.is_empty() {
            return Some(info.available);
        }
        let pool_room = limits.pool.saturating_sub(limits.pool_used);
        let own = limits
            .limits
            .quotas
            .iter()
            .zip(&limits.channels)
            .find(|(quota, _)| quota.channel.as_ref() == self.config.name.as_bytes());
        let room = match own {
            Some((_, used)) => {
                let mine = used.allocation.saturating_sub(used.used);
                if limits.limits.shared_pool {
                    mine + pool_room
                } else {
                    mine
                }
            }
            None => pool_room,
        };
        Some(info.available.min(room))
    }

    /// Pushes the changed SKUs' quantities; on failure they stay queued.
    async fn push(&self, shared: &Arc<Shared>) {
        let now_ms = shared.clock.now_ms();
        let (skus, lsn) = {
            let state = self.state.lock();
            (state.dirty.iter().cloned().collect::<Vec<_>>(), state.followed_lsn)
        };
        let mut items = Vec::with_capacity(skus.len());
        for sku in &skus {
            if let Some(quantity) = self.sellable(shared, sku, now_ms) {
                items.push((String::from_utf8_lossy(sku).into_owned(), quantity));
            }
        }
        items.sort();
        let url = self.url("/stock");
        let mut result = Ok(());
        for chunk in items.chunks(PUSH_ITEMS_MAX) {
            let body: Vec<StockItem> = chunk
                .iter()
                .map(|(sku, quantity)| StockItem { sku, quantity: *quantity })
                .collect();
            let body = serde_json::json!({ "items": body });
            if let Err(e) = self.call(shared, |http| http.post(&url).json(&body)).await {
                result = Err(e);
                break;
            }
        }
        let save = {
            let mut state = self.state.lock();
            match result {
                Ok(()) => {
                    for sku in &skus {
                        state.dirty.remove(sku);
                    }
                    state.push_failures = 0;
                    state.push_error = None;
                    state.last_push_ms = Some(now_ms);
                    state.pushed_items += items.len() as u64;
                    lsn.filter(|_| state.dirty.is_empty())
                }
                Err(e) => {
                    warn!(channel = %self.config.name, error = %e, skus = skus.len(), "stock push failed");
                    state.push_failures += 1;
                    state.push_error = Some(e);
                    None
                }
            }
        };
        if let Some(lsn) = save {
            let name = self.config.name.clone();
            let saved = journal(shared, move |store, storage, now_ms| {
                store.set_pushed(storage, &name, lsn, now_ms)
            })
            .await;
            if let Err(e) = saved {
                warn!(channel = %self.config.name, error = %e, "cannot save the push position");
            }
        }
    }

    // -- the task --------------------------------------------------------------------------

    /// One round: whatever is due now.
    async fn round(self: &Arc<Self>, shared: &Arc<Shared>) {
        let now_ms = shared.clock.now_ms();
        self.keep_token(shared, now_ms).await;
        let forced = std::mem::take(&mut self.state.lock().forced);
        let pull_due = {
            let state = self.state.lock();
            self.config.poll_interval_ms > 0 && (forced || now_ms >= state.next_pull_ms)
        };
        if pull_due {
            self.pull(shared).await;
            self.state.lock().next_pull_ms = now_ms + self.config.poll_interval_ms;
        }
        if self.config.push_stock {
            let push_due = forced || now_ms >= self.state.lock().next_push_ms;
            if push_due {
                let (channel, following) = (self.clone(), shared.clone());
                tokio::task::spawn_blocking(move || channel.collect_changes(&following))
                    .await
                    .expect("following the log does not panic");
                if !self.state.lock().dirty.is_empty() {
                    self.push(shared).await;
                    self.state.lock().next_push_ms = now_ms + self.config.push_debounce_ms;
                }
            }
        }
    }

    /// Time until the next piece of work, by the server clock, bounded.
    fn wait(&self, now_ms: u64) -> Duration {
        let state = self.state.lock();
        let mut due = now_ms + WAKE_MS_MAX;
        if self.config.poll_interval_ms > 0 {
            due = due.min(state.next_pull_ms);
        }
        if self.config.push_stock {
            due = due.min(
                state.next_push_ms.max(now_ms + self.config.push_debounce_ms.min(WAKE_MS_MAX)),
            );
        }
        if let Some(token) = &state.token {
            due = due.min(token.expires_at_ms.saturating_sub(self.config.token_refresh_margin_ms));
        }
        Duration::from_millis(due.saturating_sub(now_ms).max(1))
    }
}

/// Runs a channel's task until `stop` changes.
pub async fn run(channel: Arc<Channel>, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    info!(channel = %channel.config.name, "channel sync started");
    let mut round = None;
    loop {
        channel.round(&shared).await;
        drop(round.take());
        let wait = channel.wait(shared.clock.now_ms());
        tokio::select! {
            r = channel.pacer.wait(wait) => round = Some(r),
            _ = stop.changed() => break,
        }
    }
    channel.pacer.close();
}
