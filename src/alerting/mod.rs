//! Alerting: rules evaluated every `alerting.evaluate_interval_ms` over the server's state,
//! turned into deduplicated alerts with a life cycle, sent to sinks, escalated, and kept.
//!
//! # Rules (alert `rule`, subject)
//!
//! | rule                   | subject | fires while                                          |
//! |------------------------|---------|------------------------------------------------------|
//! | `wal_failed`           | server  | an fsync failed: the server is read-only             |
//! | `disk_full`            | server  | the disk filled up: writes are refused               |
//! | `disk_nearly_full`     | server  | free bytes < `disk_free_bytes_min`                   |
//! | `latency`              | server  | p99 request latency > `latency_p99_ms_max`           |
//! | `pull_failing`         | channel | `pull_failures` consecutive failed pulls             |
//! | `push_failing`         | channel | `pull_failures` consecutive failed stock pushes      |
//! | `token_expiring`       | channel | its token expires within `token_expiry_warn_ms`      |
//! | `backlog`              | channel | orders + SKUs waiting > `backlog_max`                |
//! | `below_safety_stock`   | SKU     | paused by its safety stock                           |
//! | `sold_out`             | SKU     | nothing available (with `sold_out = true`)           |
//! | `low_stock`            | SKU     | 1..=`low_stock_units` available                      |
//! | `sku_alerts_truncated` | server  | more SKUs qualify than `sku_alerts_max`              |
//! | `ticket_overdue`       | ticket  | over its stage's limit (`[aftersales]`, `sla.rs`)     |
//! | `ticket_alerts_truncated` | server | more overdue tickets than `sku_alerts_max`          |
//!
//! # Life cycle
//!
//! An alert is identified by rule and subject: while its condition holds it stays one alert
//! (`firing`, or `acknowledged` once someone acknowledged it), however often it is evaluated.
//! When the condition ends it is `resolved` and moves to the history. Each firing and each
//! resolution is notified to the sinks (the log, and the webhook if configured) unless
//! throttled: an alert that fires again within `throttle_ms` of its last resolution is not
//! notified again, and at most `notifications_per_minute_max` notifications leave per minute
//! (the next one says how many were held back). A firing alert not acknowledged within
//! `escalate_after_ms` (5 minutes) is escalated once: sent to `escalation_webhook_url` (and
//! logged as an error).
//!
//! # Journal
//!
//! `alerts.jsonl` (format: `crate::journal`) holds one `event` entry per transition: `event`
//! (`fired`, `acknowledged`, `escalated`, `resolved`), `at_ms`, and `alert`, the alert after
//! the transition (see [`Alert`]). Folding the events rebuilds the open alerts and the last
//! `history_max` events; the file is rewritten as that when it grows past twice the size.
//!
//! # Webhook body
//!
//! `POST` with `{"event": "fired" | "resolved" | "escalated", "alert": Alert, "suppressed":
//! n}` as JSON; `suppressed` counts notifications held back by the rate limit since the last
//! one sent. Delivery is retried twice, then given up (logged).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::aftersales::{sla, TicketState};
use crate::config::AlertingConfig;
use crate::journal::{Journal, JournalError};
use crate::metrics::WindowSnapshot;
use crate::pacer::Pacer;
use crate::server::Shared;
use crate::wal::{Health, Storage};

/// The journal's file name in the data directory.
pub const ALERTS_FILE: &str = "alerts.jsonl";
const COMPACT_LINES_MIN: usize = 1024;
/// Webhook deliveries waiting at most; beyond, notifications are dropped (and logged).
const OUTBOX_MAX: usize = 1024;

/// One alert.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub id: u64,
    pub rule: String,
    /// The SKU, the channel, or `server`.
    pub subject: String,
    /// `warning` or `critical`.
    pub severity: String,
    /// `firing`, `acknowledged` or `resolved`.
    pub state: String,
    pub message: String,
    pub fired_ms: u64,
    pub last_seen_ms: u64,
    pub resolved_ms: Option<u64>,
    pub acknowledged_ms: Option<u64>,
    pub acknowledged_by: Option<String>,
    pub escalated_ms: Option<u64>,
    /// False when the firing was throttled (not sent to the sinks).
    pub notified: bool,
}

/// A transition of an alert.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    pub event: String,
    pub at_ms: u64,
    pub alert: Alert,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Entry {
    Event(AlertEvent),
}

/// A condition found by the rules.
#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    pub rule: &'static str,
    pub subject: String,
    pub severity: &'static str,
    pub message: String,
}

struct Inner {
    journal: Journal,
    /// Open alerts (firing or acknowledged) by (rule, subject).
    open: BTreeMap<(String, String), Alert>,
    history: VecDeque<AlertEvent>,
    /// When each (rule, subject) last resolved, for throttling.
    resolved_at: HashMap<(String, String), u64>,
    next_id: u64,
    /// Notifications sent in the current minute, and held back since the last one sent.
    minute: (u64, u32),
    suppressed: u64,
    /// The latency window at the previous evaluation.
    latency: Option<WindowSnapshot>,
}

/// The alerting module.
pub struct Alerting {
    config: AlertingConfig,
    inner: Mutex<Inner>,
    outbox: mpsc::Sender<(String, serde_json::Value)>,
    outbox_rx: Mutex<Option<mpsc::Receiver<(String, serde_json::Value)>>>,
    pub pacer: Pacer,
}

impl Alerting {
    pub fn open(config: &AlertingConfig, storage: &dyn Storage) -> Result<Alerting, JournalError> {
        let (journal, entries) = Journal::open::<Entry>(storage, ALERTS_FILE)?;
        let mut inner = Inner {
            journal,
            open: BTreeMap::new(),
            history: VecDeque::new(),
            resolved_at: HashMap::new(),
            next_id: 1,
            minute: (0, 0),
            suppressed: 0,
            latency: None,
        };
        for Entry::Event(event) in entries {
            inner.fold(event, config.history_max);
        }
        let (outbox, outbox_rx) = mpsc::channel(OUTBOX_MAX);
        Ok(Alerting {
            config: config.clone(),
            inner: Mutex::new(inner),
            outbox,
            outbox_rx: Mutex::new(Some(outbox_rx)),
            pacer: Pacer::default(),
        })
    }

    /// Open alerts, the most severe and oldest first.
    pub fn open_alerts(&self) -> Vec<Alert> {
        let mut alerts: Vec<Alert> = self.inner.lock().open.values().cloned().collect();
        alerts.sort_by(|a, b| {
            (a.severity != "critical", a.fired_ms, a.id).cmp(&(
                b.severity != "critical",
                b.fired_ms,
                b.id,
            ))
        });
        alerts
    }

    /// The newest history events, newest first.
    pub fn history(&self, limit: usize) -> Vec<AlertEvent> {
        self.inner.lock().history.iter().rev().take(limit).cloned().collect()
    }

    /// Acknowledges an open alert: it stays open until resolved but is no longer escalated.
    /// Blocking (a journal write). `None` if no open alert has this id.
    pub fn acknowledge(
        &self,
        storage: &dyn Storage,
        id: u64,
        actor: &str,
        now_ms: u64,
    ) -> Option<Result<Alert, JournalError>> {
        let mut inner = self.inner.lock();
        let mut alert = inner.open.values().find(|a| a.id == id)?.clone();
        if alert.state == "acknowledged" {
            return Some(Ok(alert));
        }
        alert.state = "acknowledged".into();
        alert.acknowledged_ms = Some(now_ms);
        alert.acknowledged_by = Some(actor.to_string());
        let event =
            AlertEvent { event: "acknowledged".into(), at_ms: now_ms, alert: alert.clone() };
        info!(id, rule = %alert.rule, subject = %alert.subject, actor, "alert acknowledged");
        Some(inner.record(storage, vec![event], self.config.history_max).map(|()| alert))
    }

    /// Evaluates every rule once at `now_ms` and applies the transitions. Blocking.
    pub fn evaluate(&self, shared: &Shared, now_ms: u64) {
        let conditions = self.conditions(shared, now_ms);
        let mut inner = self.inner.lock();
        let mut events = Vec::new();
        let mut current: HashMap<(String, String), Condition> = HashMap::new();
        for condition in conditions {
            current.insert((condition.rule.to_string(), condition.subject.clone()), condition);
        }
        // Resolve what no longer holds.
        let gone: Vec<(String, String)> =
            inner.open.keys().filter(|key| !current.contains_key(*key)).cloned().collect();
        for key in gone {
            let mut alert = inner.open.get(&key).cloned().expect("open");
            alert.state = "resolved".into();
            alert.resolved_ms = Some(now_ms);
            events.push(AlertEvent { event: "resolved".into(), at_ms: now_ms, alert });
        }
        // Fire what is new; refresh what continues; escalate what lasts.
        let mut keys: Vec<_> = current.keys().cloned().collect();
        keys.sort();
        for key in keys {
            let condition = &current[&key];
            match inner.open.get(&key).cloned() {
                Some(mut alert) => {
                    alert.last_seen_ms = now_ms;
                    alert.message.clone_from(&condition.message);
                    let lasting =
                        now_ms.saturating_sub(alert.fired_ms) >= self.config.escalate_after_ms;
                    if alert.state == "firing" && alert.escalated_ms.is_none() && lasting {
                        alert.escalated_ms = Some(now_ms);
                        events.push(AlertEvent { event: "escalated".into(), at_ms: now_ms, alert });
                    } else {
                        inner.open.insert(key, alert);
                    }
                }
                None => {
                    let throttled = inner
                        .resolved_at
                        .get(&key)
                        .is_some_and(|at| now_ms.saturating_sub(*at) < self.config.throttle_ms);
                    let alert = Alert {
                        id: inner.next_id,
                        rule: condition.rule.to_string(),
                        subject: condition.subject.clone(),
                        severity: condition.severity.to_string(),
                        state: "firing".into(),
                        message: condition.message.clone(),
                        fired_ms: now_ms,
                        last_seen_ms: now_ms,
                        resolved_ms: None,
                        acknowledged_ms: None,
                        acknowledged_by: None,
                        escalated_ms: None,
                        notified: !throttled,
                    };
                    inner.next_id += 1;
                    events.push(AlertEvent { event: "fired".into(), at_ms: now_ms, alert });
                }
            }
        }
        if events.is_empty() {
            return;
        }
        for event in &events {
            self.notify(&mut inner, event, now_ms);
        }
        if let Err(e) = inner.record(&*shared.storage, events, self.config.history_max) {
            error!(error = %e, "cannot write the alert journal");
        }
    }

    /// Sends one transition to the sinks (log always; webhooks unless throttled).
    fn notify(&self, inner: &mut Inner, event: &AlertEvent, now_ms: u64) {
        let alert = &event.alert;
        let (rule, subject, message) = (&alert.rule, &alert.subject, &alert.message);
        match event.event.as_str() {
            "escalated" => error!(id = alert.id, %rule, %subject, %message, "alert ESCALATED"),
            "fired" if alert.severity == "critical" => {
                error!(id = alert.id, %rule, %subject, %message, "alert fired")
            }
            "fired" => warn!(id = alert.id, %rule, %subject, %message, "alert fired"),
            _ => info!(id = alert.id, %rule, %subject, "alert resolved"),
        }
        let url = match event.event.as_str() {
            "escalated" => self.config.escalation_webhook_url.as_ref(),
            _ => self.config.webhook_url.as_ref(),
        };
        let Some(url) = url else { return };
        if !alert.notified {
            return; // throttled firing, and its resolution
        }
        let minute = now_ms / 60_000;
        if inner.minute.0 != minute {
            inner.minute = (minute, 0);
        }
        if inner.minute.1 >= self.config.notifications_per_minute_max {
            inner.suppressed += 1;
            return;
        }
        inner.minute.1 += 1;
        let body = json!({
            "event": event.event,
            "alert": alert,
            "suppressed": std::mem::take(&mut inner.suppressed),
        });
        if self.outbox.try_send((url.clone(), body)).is_err() {
            warn!(id = alert.id, "alert webhook queue full: notification dropped");
        }
    }

    /// Every condition that holds at `now_ms`.
    pub fn conditions(&self, shared: &Shared, now_ms: u64) -> Vec<Condition> {
        let config = &self.config;
        let mut found = Vec::new();
        let mut add = |rule, subject: &str, severity, message: String| {
            found.push(Condition { rule, subject: subject.to_string(), severity, message });
        };
        match shared.wal.health() {
            Health::Ok => {}
            Health::NoSpace => add(
                "disk_full",
                "server",
                "critical",
                "the disk is full: the server refuses writes until space is freed".into(),
            ),
            _ => add(
                "wal_failed",
                "server",
                "critical",
                "an fsync of the write-ahead log failed: the server is read-only until restarted"
                    .into(),
            ),
        }
        if let Some(free) = shared.storage.free_bytes() {
            if free < config.disk_free_bytes_min {
                add(
                    "disk_nearly_full",
                    "server",
                    "warning",
                    format!(
                        "{free} bytes free on the data disk (alert below {})",
                        config.disk_free_bytes_min
                    ),
                );
            }
        }
        if config.latency_p99_ms_max > 0 {
            let now = shared.metrics.request_window.snapshot();
            let mut inner = self.inner.lock();
            if let Some(before) = inner.latency.replace(now.clone()) {
                let p99 = now.since(&before).quantile(0.99);
                if let Some(p99) = p99.filter(|p| p.as_millis() as u64 > config.latency_p99_ms_max)
                {
                    add(
                        "latency",
                        "server",
                        "warning",
                        format!(
                            "p99 request latency {:.1} ms (alert above {} ms)",
                            p99.as_secs_f64() * 1000.0,
                            config.latency_p99_ms_max
                        ),
                    );
                }
            }
        }
        for channel in &shared.sync.channels {
            let status = channel.status(shared);
            let name = status.name.as_str();
            if status.failed_pulls >= config.pull_failures {
                let error = status.last_pull.and_then(|p| p.error).unwrap_or_default();
                add(
                    "pull_failing",
                    name,
                    "critical",
                    format!(
                        "{} consecutive order pulls failed; last error: {error}",
                        status.failed_pulls
                    ),
                );
            }
            if status.push_failures >= config.pull_failures {
                add(
                    "push_failing",
                    name,
                    "critical",
                    format!(
                        "{} consecutive stock pushes failed; last error: {}",
                        status.push_failures,
                        status.push_error.unwrap_or_default()
                    ),
                );
            }
            if let Some(at_ms) = status.token_expires_at_ms {
                if at_ms <= now_ms + config.token_expiry_warn_ms {
                    let left_s = at_ms.saturating_sub(now_ms) / 1000;
                    add(
                        "token_expiring",
                        name,
                        "critical",
                        format!(
                            "the access token expires in {left_s} s and was not refreshed ({})",
                            status.token_error.unwrap_or_else(|| "no error recorded".into())
                        ),
                    );
                }
            }
            if status.backlog > config.backlog_max {
                add(
                    "backlog",
                    name,
                    "warning",
                    format!(
                        "{} orders and SKUs waiting (alert above {})",
                        status.backlog, config.backlog_max
                    ),
                );
            }
        }
        let threshold = config.low_stock_units;
        {
            // Incremental: reads only the SKUs changed since the last evaluation.
            let page = shared.engine.low_stock(threshold, config.sku_alerts_max, now_ms);
            let mut counted = 0usize;
            for row in &page.rows {
                let sku = String::from_utf8_lossy(&row.sku);
                let info = &row.info;
                if info.paused {
                    add(
                        "below_safety_stock",
                        &sku,
                        "warning",
                        format!(
                            "paused: {} on hand, {} held or committed, safety stock {}",
                            info.on_hand,
                            info.reserved + info.committed,
                            info.safety_stock
                        ),
                    );
                } else if info.available == 0 && config.sold_out {
                    add(
                        "sold_out",
                        &sku,
                        "warning",
                        format!("sold out ({} on hand, all taken)", info.on_hand),
                    );
                } else if info.available > 0 && threshold > 0 {
                    add(
                        "low_stock",
                        &sku,
                        "warning",
                        format!("{} available (alert at {threshold})", info.available),
                    );
                } else {
                    continue;
                }
                counted += 1;
            }
            if page.matched > page.rows.len() {
                add(
                    "sku_alerts_truncated",
                    "server",
                    "warning",
                    format!(
                        "{} SKUs are low, sold out or paused; alerts are raised for the first {counted}",
                        page.matched
                    ),
                );
            }
        }
        let (overdue, total) = overdue_tickets(shared, now_ms, config.sku_alerts_max);
        for (id, state, late) in &overdue {
            let over_h = (now_ms - late.due_at_ms) as f64 / 3_600_000.0;
            add(
                "ticket_overdue",
                id,
                "warning",
                format!(
                    "ticket {id} is {} and over its {} stage limit by {over_h:.1} h",
                    state.name(),
                    late.stage.name()
                ),
            );
        }
        if total > overdue.len() {
            add(
                "ticket_alerts_truncated",
                "server",
                "warning",
                format!(
                    "{total} tickets are overdue; alerts are raised for the first {}",
                    overdue.len()
                ),
            );
        }
        found
    }
}

/// Up to `max` overdue tickets (id order) and how many there are in all.
fn overdue_tickets(
    shared: &Shared,
    now_ms: u64,
    max: usize,
) -> (Vec<(String, TicketState, sla::Overdue)>, usize) {
    let limits = &shared.config.aftersales;
    shared.engine.with_aftersales(|state| {
        let mut total = 0;
        let mut first = Vec::new();
        let open = state.tickets().filter(|t| t.state.is_timed());
        for (ticket, late) in open.filter_map(|t| Some((t, sla::overdue(t, limits, now_ms)?))) {
            total += 1;
            if first.len() < max {
                first.push((ticket.id.clone(), ticket.state, late));
            }
        }
        (first, total)
    })
}

impl Inner {
    fn fold(&mut self, event: AlertEvent, history_max: usize) {
        let alert = &event.alert;
        let key = (alert.rule.clone(), alert.subject.clone());
        self.next_id = self.next_id.max(alert.id + 1);
        if alert.state == "resolved" {
            self.open.remove(&key);
            self.resolved_at.insert(key, event.at_ms);
        } else {
            self.open.insert(key, alert.clone());
        }
        if self.history.len() == history_max {
            self.history.pop_front();
        }
        self.history.push_back(event);
    }

    fn record(
        &mut self,
        storage: &dyn Storage,
        events: Vec<AlertEvent>,
        history_max: usize,
    ) -> Result<(), JournalError> {
        let entries: Vec<Entry> = events.iter().cloned().map(Entry::Event).collect();
        let written = self.journal.append(&entries);
        for event in events {
            self.fold(event, history_max);
        }
        written?;
        let live = self.open.len() + self.history.len();
        if self.journal.lines() > COMPACT_LINES_MIN.max(2 * live) {
            // The open alerts' latest events come first, so folding the rewrite reopens them
            // even when the history no longer reaches back to their firing.
            let mut entries: Vec<Entry> = self
                .open
                .values()
                .map(|alert| {
                    Entry::Event(AlertEvent {
                        event: "open".into(),
                        at_ms: alert.last_seen_ms,
                        alert: alert.clone(),
                    })
                })
                .collect();
            entries.extend(self.history.iter().cloned().map(Entry::Event));
            self.journal.rewrite(storage, &entries)?;
        }
        Ok(())
    }
}

/// Delivers webhook notifications, one at a time, retrying twice.
async fn deliver(mut outbox: mpsc::Receiver<(String, serde_json::Value)>) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .user_agent(concat!("stockd/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("an HTTP client builds");
    while let Some((url, body)) = outbox.recv().await {
        let mut delay = Duration::from_millis(200);
        for attempt in 0..3 {
            match http.post(&url).json(&body).send().await {
                Ok(r) if r.status().is_success() => break,
                Ok(r) if attempt == 2 => warn!(%url, status = %r.status(), "alert webhook refused"),
                Err(e) if attempt == 2 => warn!(%url, error = %e, "alert webhook failed"),
                _ => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    }
}

/// Evaluates the rules every `evaluate_interval_ms` (and when poked) until `stop` changes.
pub async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let outbox = shared.alerts.outbox_rx.lock().take();
    let delivery = outbox.map(|rx| tokio::spawn(deliver(rx)));
    let period = Duration::from_millis(shared.alerts.config.evaluate_interval_ms);
    let mut round = None;
    loop {
        let evaluating = shared.clone();
        let evaluated = tokio::task::spawn_blocking(move || {
            let now_ms = evaluating.clock.now_ms();
            evaluating.alerts.evaluate(&evaluating, now_ms);
        })
        .await;
        if evaluated.is_err() {
            error!("alert evaluation panicked");
        }
        drop(round.take());
        tokio::select! {
            r = shared.alerts.pacer.wait(period) => round = Some(r),
            _ = stop.changed() => break,
        }
    }
    shared.alerts.pacer.close();
    if let Some(delivery) = delivery {
        delivery.abort();
    }
}
