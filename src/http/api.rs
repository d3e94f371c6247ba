//! The JSON admin API, `/api/v1/...` (reference: `docs/API.md`).
//!
//! Reads come straight from the engine (exact as of the request) or from the newest sample
//! (status, sell rates). Stock changes go through the same path as the binary protocol's: the
//! engine applies them, the write-ahead log records them, and the reply waits until the record
//! is durable; then the audit log records who made the change and why, with the counters
//! before and after, and only then is the change acknowledged.
//!
//! Every error is JSON `{"code": ..., "message": ...}` with a fitting HTTP status; the codes
//! are the protocol's result-code names where one applies (`unknown_sku`, `read_only`,
//! `expected_mismatch`, `invalid_argument`) plus `malformed` (a body that is not the JSON
//! asked for), `not_found` and `audit_unavailable`.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use stockd_protocol::limits::{ID_BYTES_MAX, SKU_BYTES_MAX};
use stockd_protocol::{LimitsReply, OpReply, QuotaLimit, ResultCode, SkuInfo, SkuLimits, SkuReply};

use super::sampler::{Sample, Trend};
use super::supply::{sku_limits, supply_view, SupplyView};
use super::AppState;
use crate::audit::{AuditEntry, AuditError, AuditFilter, NewEntry};
use crate::auth::approvals;
use crate::engine::{Command, SkuFilter};
use crate::server::Shared;
use crate::wal::{Health, WalError};

/// Most rows one listing returns.
pub const PAGE_MAX: usize = 1000;
const PAGE_DEFAULT: usize = 50;
const HOLDS_DEFAULT: usize = 100;
pub(super) const ACTOR_BYTES_MAX: usize = 128;
pub(super) const REASON_BYTES_MAX: usize = 512;

/// An error reply.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// One more named field of the reply (the pending request of `approval_required`).
    extra: Option<(&'static str, Value)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), extra: None }
    }

    /// Adds a named field to the reply.
    pub fn with(mut self, name: &'static str, value: Value) -> ApiError {
        self.extra = Some((name, value));
        self
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub(super) fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
    }

    fn unknown_sku(sku: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "unknown_sku", format!("no SKU {sku:?}"))
    }

    pub(super) fn read_only(health: Health) -> ApiError {
        let message = match health {
            Health::NoSpace => "the disk is full: changes are refused until space is freed",
            _ => "the write-ahead log failed: changes are refused until restart",
        };
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "read_only", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "code": self.code, "message": self.message });
        if let Some((name, value)) = self.extra {
            body[name] = value;
        }
        (self.status, Json(body)).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        let status = match rejection {
            JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            JsonRejection::BytesRejection(_) => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        // Type errors (a negative quantity, a missing field) are bad arguments; anything that
        // is not JSON at all is malformed.
        let code = match rejection {
            JsonRejection::JsonDataError(_) => "invalid_argument",
            _ => "malformed",
        };
        ApiError::new(status, code, rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        ApiError::invalid(rejection.body_text())
    }
}

impl From<AuditError> for ApiError {
    fn from(error: AuditError) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable", error.to_string())
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// A SKU's counters as the API shows them.
#[derive(Clone, Debug, Serialize)]
pub struct Counters {
    pub on_hand: u64,
    pub available: u64,
    /// Units held by open reservations.
    pub held: u64,
    /// Units confirmed, not yet shipped.
    pub committed: u64,
    /// Reserved but not shipped: held + committed.
    pub unshipped: u64,
    pub safety_stock: u64,
    pub paused: bool,
}

impl From<SkuInfo> for Counters {
    fn from(info: SkuInfo) -> Counters {
        Counters {
            on_hand: info.on_hand,
            available: info.available,
            held: info.reserved,
            committed: info.committed,
            unshipped: info.reserved + info.committed,
            safety_stock: info.safety_stock,
            paused: info.paused,
        }
    }
}

/// One row of the stock board.
#[derive(Clone, Debug, Serialize)]
pub struct SkuRow {
    pub sku: String,
    #[serde(flatten)]
    pub counters: Counters,
    /// Sell rate, when the SKU took holds recently.
    pub activity: Option<Trend>,
}

/// A page of the stock board.
#[derive(Clone, Debug, Serialize)]
pub struct Board {
    pub sort: &'static str,
    pub rows: Vec<SkuRow>,
    pub matched: usize,
    pub next_after: Option<String>,
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Query of `GET /api/v1/skus` and of the dashboard's event stream.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardQuery {
    /// Ids containing this text.
    pub q: Option<String>,
    pub prefix: Option<String>,
    #[serde(default)]
    pub paused: bool,
    pub available_max: Option<u64>,
    /// `activity` (the most active first; the default) or `id` (paged in id order).
    pub sort: Option<String>,
    pub after: Option<String>,
    pub limit: Option<usize>,
}

/// A listing's `limit` (its default when absent), refused outside `1..=PAGE_MAX`.
pub fn page_limit(limit: Option<usize>, default: usize) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(default);
    if !(1..=PAGE_MAX).contains(&limit) {
        return Err(ApiError::invalid(format!("limit must be in 1..={PAGE_MAX}")));
    }
    Ok(limit)
}

/// The stock board for a query, as of now.
pub fn board(app: &AppState, query: &BoardQuery, sample: &Sample) -> Result<Board, ApiError> {
    let limit = page_limit(query.limit, PAGE_DEFAULT)?;
    let non_empty = |s: &Option<String>| s.as_ref().filter(|s| !s.is_empty()).cloned();
    let filter = SkuFilter {
        contains: non_empty(&query.q).map(String::into_bytes),
        prefix: non_empty(&query.prefix).map(String::into_bytes),
        paused_only: query.paused,
        available_max: query.available_max,
    };
    let engine = &app.shared.engine;
    let now_ms = app.shared.clock.now_ms();
    let row = |sku: &[u8], info: SkuInfo| SkuRow {
        sku: text(sku),
        counters: info.into(),
        activity: sample.activity.get(sku).cloned(),
    };
    match query.sort.as_deref().unwrap_or("activity") {
        "activity" => {
            if query.after.is_some() {
                return Err(ApiError::invalid("`after` pages the `id` order only"));
            }
            let mut matched = 0;
            let mut rows = Vec::new();
            for sku in &sample.top {
                let Some((info, _)) = engine.sku_activity(sku, now_ms) else { continue };
                if filter.matches(sku, &info) {
                    matched += 1;
                    if rows.len() < limit {
                        rows.push(row(sku, info));
                    }
                }
            }
            Ok(Board { sort: "activity", rows, matched, next_after: None })
        }
        "id" => {
            let after = query.after.as_deref().map(str::as_bytes);
            let page = engine.list_skus(&filter, after, limit, now_ms);
            Ok(Board {
                sort: "id",
                rows: page.rows.into_iter().map(|r| row(&r.sku, r.info)).collect(),
                matched: page.matched,
                next_after: page.next_after.map(|sku| text(&sku)),
            })
        }
        other => Err(ApiError::invalid(format!("sort {other:?} is not `activity` or `id`"))),
    }
}

pub async fn status(State(app): State<AppState>) -> Json<Value> {
    let sample = app.samples.borrow().clone();
    Json(serde_json::to_value(&sample.status).expect("status serialises"))
}

pub async fn list_skus(
    State(app): State<AppState>,
    query: Result<Query<BoardQuery>, QueryRejection>,
) -> ApiResult<Board> {
    let Query(query) = query?;
    let sample = app.samples.borrow().clone();
    let task = tokio::task::spawn_blocking(move || board(&app, &query, &sample));
    Ok(Json(task.await.expect("listing does not panic")?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldsQuery {
    pub holds_limit: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct Hold {
    pub reservation: String,
    pub qty: u32,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub channel: String,
    pub customer: String,
}

#[derive(Debug, Serialize)]
pub struct SkuDetail {
    pub sku: String,
    #[serde(flatten)]
    pub counters: Counters,
    pub activity: Option<Trend>,
    /// Open holds, soonest deadline first (cut at `holds_limit`).
    pub holds: Vec<Hold>,
    pub holds_count: usize,
    /// Per-buyer limit and channel quotas with their allocation and use (`null`: none).
    pub limits: Option<LimitsView>,
    /// Locations, incoming deliveries and preorders (`null`: none).
    pub supply: Option<SupplyView>,
    /// Units returned damaged (inspected return tickets); not part of `on_hand`.
    pub damaged: u64,
    /// The newest administrative changes of this SKU.
    pub changes: Vec<Arc<AuditEntry>>,
}

/// A quota as the API reads and writes it: `units` or `percent` (of the sellable stock).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QuotaView {
    pub channel: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub units: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Units the quota allocates now (replies only).
    #[serde(default, skip_deserializing)]
    pub allocation: u64,
    /// Units the channel holds and has committed now (replies only).
    #[serde(default, skip_deserializing)]
    pub used: u64,
}

/// A SKU's limits as the API shows them.
#[derive(Clone, Debug, Serialize)]
pub struct LimitsView {
    pub max_per_buyer: u32,
    pub shared_pool: bool,
    pub quotas: Vec<QuotaView>,
    /// Units no quota allocates, and how many of them are taken.
    pub pool: u64,
    pub pool_used: u64,
}

pub(crate) fn limits_view(reply: &LimitsReply) -> Option<LimitsView> {
    if reply.code != ResultCode::Ok || reply.limits == SkuLimits::default() {
        return None;
    }
    let quotas = reply.limits.quotas.iter().zip(&reply.channels).map(|(q, use_)| {
        let units = match q.limit {
            QuotaLimit::Units(units) => Some(units),
            QuotaLimit::BasisPoints(_) => None,
        };
        let percent = q.limit.percent();
        QuotaView {
            channel: text(&q.channel),
            units,
            percent,
            allocation: use_.allocation,
            used: use_.used,
        }
    });
    Some(LimitsView {
        max_per_buyer: reply.limits.max_per_buyer,
        shared_pool: reply.limits.shared_pool,
        quotas: quotas.collect(),
        pool: reply.pool,
        pool_used: reply.pool_used,
    })
}

fn check_sku(sku: &str) -> Result<(), ApiError> {
    if sku.is_empty() || sku.len() > SKU_BYTES_MAX {
        return Err(ApiError::invalid(format!("a SKU id has 1..={SKU_BYTES_MAX} bytes")));
    }
    Ok(())
}

pub async fn get_sku(
    State(app): State<AppState>,
    Path(sku): Path<String>,
    query: Result<Query<HoldsQuery>, QueryRejection>,
) -> ApiResult<SkuDetail> {
    let Query(query) = query?;
    check_sku(&sku)?;
    let limit = query.holds_limit.unwrap_or(HOLDS_DEFAULT);
    if limit > PAGE_MAX {
        return Err(ApiError::invalid(format!("holds_limit must be at most {PAGE_MAX}")));
    }
    let sample = app.samples.borrow().clone();
    let task = tokio::task::spawn_blocking(move || {
        let now_ms = app.shared.clock.now_ms();
        let found = app.shared.engine.sku_holds(sku.as_bytes(), limit, now_ms);
        let found = found.ok_or_else(|| ApiError::unknown_sku(&sku))?;
        let holds = found.holds.into_iter().map(|h| Hold {
            reservation: text(&h.reservation),
            qty: h.qty,
            created_at_ms: h.created_at_ms,
            expires_at_ms: h.expires_at_ms,
            channel: text(&h.channel),
            customer: text(&h.customer),
        });
        Ok::<_, ApiError>(SkuDetail {
            activity: sample.activity.get(sku.as_bytes()).cloned(),
            counters: found.info.into(),
            holds: holds.collect(),
            holds_count: found.count,
            limits: limits_view(&app.shared.engine.query_limits(sku.as_bytes(), now_ms)),
            supply: supply_view(&app.shared.engine.query_locations(sku.as_bytes(), now_ms)),
            changes: app.shared.audit.recent(Some(&sku), None, 20),
            damaged: app.shared.engine.with_aftersales(|tickets| tickets.damaged(&sku)),
            sku,
        })
    });
    Ok(Json(task.await.expect("a SKU view does not panic")?))
}

pub async fn get_reservation(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Value> {
    if id.is_empty() || id.len() > ID_BYTES_MAX {
        return Err(ApiError::invalid(format!("a reservation id has 1..={ID_BYTES_MAX} bytes")));
    }
    let now_ms = app.shared.clock.now_ms();
    let reply = app.shared.engine.query_reservation(id.as_bytes(), now_ms);
    let info = reply.info.ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no reservation {id:?}"))
    })?;
    let lines: Vec<Value> = info
        .lines
        .iter()
        .map(|l| json!({ "sku": text(&l.sku), "qty": l.qty_held, "confirmed": l.qty_confirmed }))
        .collect();
    Ok(Json(json!({
        "id": id,
        "state": info.state.name(),
        "created_at_ms": info.created_at_ms,
        "expires_at_ms": info.expires_at_ms,
        "channel": text(&info.channel),
        "customer": text(&info.customer),
        "lines": lines,
    })))
}

/// Who makes a change and why: required on every change.
#[derive(Debug, Deserialize)]
pub struct Attribution {
    pub actor: String,
    pub reason: String,
}

impl Attribution {
    pub(super) fn check(&self) -> Result<(), ApiError> {
        for (name, value, max) in
            [("actor", &self.actor, ACTOR_BYTES_MAX), ("reason", &self.reason, REASON_BYTES_MAX)]
        {
            if value.trim().is_empty() || value.len() > max {
                return Err(ApiError::invalid(format!("{name} must have 1..={max} bytes")));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetStockBody {
    pub on_hand: u64,
    pub expected: Option<u64>,
    pub actor: String,
    pub reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdjustBody {
    pub delta: i64,
    pub expected: Option<u64>,
    pub actor: String,
    pub reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafetyStockBody {
    pub safety_stock: u64,
    pub actor: String,
    pub reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteBody {
    pub actor: String,
    pub reason: String,
}

/// The reply to a stock change.
#[derive(Debug, Serialize)]
pub struct Changed {
    pub sku: String,
    /// False when the value was already what was asked (nothing logged or audited).
    pub changed: bool,
    #[serde(flatten)]
    pub counters: Counters,
    /// The audit entry of the change.
    pub audit_seq: Option<u64>,
}

pub async fn set_stock(
    State(app): State<AppState>,
    Path(sku): Path<String>,
    body: Result<Json<SetStockBody>, JsonRejection>,
) -> ApiResult<Changed> {
    let Json(body) = body?;
    let command = Command::SetStock {
        sku: Bytes::from(sku.clone()),
        on_hand: body.on_hand,
        expected: body.expected,
    };
    let who = Attribution { actor: body.actor, reason: body.reason };
    change(app, sku, command, "set_stock", who).await
}

pub async fn adjust_stock(
    State(app): State<AppState>,
    Path(sku): Path<String>,
    body: Result<Json<AdjustBody>, JsonRejection>,
) -> ApiResult<Changed> {
    let Json(body) = body?;
    if body.delta == 0 {
        return Err(ApiError::invalid("delta must not be 0"));
    }
    let command = Command::AdjustStock {
        sku: Bytes::from(sku.clone()),
        delta: body.delta,
        expected: body.expected,
    };
    let who = Attribution { actor: body.actor, reason: body.reason };
    change(app, sku, command, "adjust_stock", who).await
}

pub async fn set_safety_stock(
    State(app): State<AppState>,
    Path(sku): Path<String>,
    body: Result<Json<SafetyStockBody>, JsonRejection>,
) -> ApiResult<Changed> {
    let Json(body) = body?;
    let command =
        Command::SetSafetyStock { sku: Bytes::from(sku.clone()), safety_stock: body.safety_stock };
    let who = Attribution { actor: body.actor, reason: body.reason };
    change(app, sku, command, "set_safety_stock", who).await
}

/// `DELETE /api/v1/skus/{sku}`: deletes a SKU no open reservation names (PROTOCOL.md 4.9);
/// the reply's counters are zero.
pub async fn delete_sku(
    State(app): State<AppState>,
    Path(sku): Path<String>,
    body: Result<Json<DeleteBody>, JsonRejection>,
) -> ApiResult<Changed> {
    let Json(body) = body?;
    let command = Command::DeleteSku { sku: Bytes::from(sku.clone()) };
    let who = Attribution { actor: body.actor, reason: body.reason };
    change(app, sku, command, "delete_sku", who).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsBody {
    #[serde(default)]
    pub max_per_buyer: u32,
    #[serde(default)]
    pub shared_pool: bool,
    #[serde(default)]
    pub quotas: Vec<QuotaView>,
    pub actor: String,
    pub reason: String,
}

pub async fn set_limits(
    State(app): State<AppState>,
    Path(sku): Path<String>,
    body: Result<Json<LimitsBody>, JsonRejection>,
) -> ApiResult<Changed> {
    let Json(body) = body?;
    let limits = sku_limits(body.max_per_buyer, body.shared_pool, &body.quotas)?;
    let command = Command::SetLimits { sku: Bytes::from(sku.clone()), limits };
    let who = Attribution { actor: body.actor, reason: body.reason };
    change(app, sku, command, "set_limits", who).await
}

/// Applies a stock or limits command, waits for its log record to be durable, audits it, and
/// replies.
pub(super) async fn change(
    app: AppState,
    sku: String,
    command: Command,
    action: &'static str,
    who: Attribution,
) -> ApiResult<Changed> {
    who.check()?;
    let shared = app.shared.clone();
    ready_for_changes(&shared)?;
    let now_ms = shared.clock.now_ms();
    if shared.auth_enabled() {
        let config = &shared.config.approval;
        if let Some(why) = approvals::dangerous(&shared.engine, config, &command, now_ms) {
            let changes = vec![(sku.clone(), Ok((sku.clone(), command, action)))];
            return Err(super::approvals::hold(&shared, changes, who, action, sku, why).await);
        }
    }
    let applied = apply_change(&shared, &sku, &command, action, &who, now_ms)?;
    let Some(entry) = applied.entry else {
        return Ok(Json(Changed {
            sku,
            changed: false,
            counters: applied.info.into(),
            audit_seq: None,
        }));
    };
    let mut audited = make_durable_and_audit(&shared, vec![entry]).await?;
    let seq = audited.pop().expect("one entry audited").seq;
    Ok(Json(Changed { sku, changed: true, counters: applied.info.into(), audit_seq: Some(seq) }))
}

/// Refuses changes while the audit log or the write-ahead log cannot take them.
pub(super) fn ready_for_changes(shared: &Shared) -> Result<(), ApiError> {
    shared.audit.check()?;
    match shared.wal.health() {
        Health::Ok => Ok(()),
        health => Err(ApiError::read_only(health)),
    }
}

/// A change applied to the engine and appended to the log (not yet durable).
pub(super) struct Applied {
    pub info: SkuInfo,
    /// The audit entry to write once the log record is durable; `None` when nothing changed.
    pub entry: Option<NewEntry>,
}

/// A stock or limits change applied by the engine, its log record appended from inside the
/// engine (so the log order is the apply order).
pub(crate) struct Logged {
    pub reply: SkuReply,
    /// What the audit log records before and after the change; `None` when nothing changed.
    pub views: Option<(Value, Value)>,
    /// The log append's result (`None` when nothing changed).
    pub lsn: Option<Result<u64, WalError>>,
}

/// Applies a stock or limits change (both protocols use this) and reads the audit views: the
/// counters for stock changes (the "before" taken under the SKU's lock, so exact), the limits
/// for limit changes (read just before; concurrent limit changes are serialised by the engine).
pub(crate) fn apply_logged(shared: &Shared, command: &Command, now_ms: u64) -> Logged {
    let mut lsn = None;
    let mut log = || lsn = Some(shared.wal.append(now_ms, command));
    let (reply, views) = match command {
        Command::SetLimits { sku: id, .. } => {
            let json =
                |reply: &LimitsReply| serde_json::to_value(limits_view(reply)).expect("serialises");
            let before = json(&shared.engine.query_limits(id, now_ms));
            let mut changed = false;
            let reply = match shared.engine.apply(command, now_ms, || {
                changed = true;
                log();
            }) {
                OpReply::SetLimits(reply) => reply,
                other => unreachable!("a limits change answers {other:?}"),
            };
            let after = json(&shared.engine.query_limits(id, now_ms));
            (reply, changed.then_some((before, after)))
        }
        _ => {
            let (reply, before) = shared.engine.change_stock(command, now_ms, log);
            let json =
                |info: SkuInfo| serde_json::to_value(Counters::from(info)).expect("serialises");
            (reply, before.map(|before| (json(before), json(reply.info))))
        }
    };
    Logged { reply, views, lsn }
}

/// Applies one change and appends it to the log; refusals become errors.
pub(super) fn apply_change(
    shared: &Shared,
    sku: &str,
    command: &Command,
    action: &'static str,
    who: &Attribution,
    now_ms: u64,
) -> Result<Applied, ApiError> {
    check_sku(sku)?;
    let Logged { reply, views, lsn } = apply_logged(shared, command, now_ms);
    refusal(command, sku, reply.code, &reply.info)?;
    let Some((before, after)) = views else {
        return Ok(Applied { info: reply.info, entry: None });
    };
    let lsn = match lsn {
        Some(Ok(lsn)) => lsn,
        _ => return Err(ApiError::read_only(shared.wal.health())),
    };
    let entry = NewEntry {
        at_ms: now_ms,
        actor: who.actor.clone(),
        action,
        target: sku.to_string(),
        reason: who.reason.clone(),
        before,
        after,
        lsn,
    };
    Ok(Applied { info: reply.info, entry: Some(entry) })
}

/// The API error for a refused change.
fn refusal(command: &Command, sku: &str, code: ResultCode, info: &SkuInfo) -> Result<(), ApiError> {
    let conflict = |message: String| Err(ApiError::new(StatusCode::CONFLICT, code.name(), message));
    match code {
        ResultCode::Ok => Ok(()),
        ResultCode::UnknownSku => Err(ApiError::unknown_sku(sku)),
        ResultCode::UnknownLocation => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_location",
            format!("SKU {sku:?} has no such location"),
        )),
        ResultCode::NotFound => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("SKU {sku:?} has no such incoming delivery"),
        )),
        ResultCode::ExpectedMismatch => conflict(match command {
            Command::SetLocation { .. } | Command::AdjustLocation { .. } => {
                "the location's on-hand count is not the expected value".into()
            }
            _ => format!("the SKU's on-hand count is {}, not the expected value", info.on_hand),
        }),
        ResultCode::LocationRequired => {
            conflict(format!("SKU {sku:?} keeps its stock per location: change a location instead"))
        }
        ResultCode::LocationConflict => conflict(format!(
            "SKU {sku:?} has {} units on hand (or holds or deliveries) outside any location: \
             bring them to zero before giving it locations",
            info.on_hand
        )),
        ResultCode::TooLarge => {
            conflict("the SKU has the most locations or deliveries it may have".into())
        }
        ResultCode::SkuInUse => conflict(format!(
            "SKU {sku:?} is named by reservations that are not over ({} units held, {} \
             confirmed and not shipped): release, ship or let them expire before deleting it",
            info.reserved, info.committed
        )),
        ResultCode::InvalidArgument => Err(ApiError::invalid(match command {
            Command::SetLimits { .. } => "a quota names an empty or repeated channel",
            Command::ReceiveIncoming { .. } => "more units than the delivery has",
            Command::SetIncoming { .. } | Command::SetLocation { .. } => {
                "an empty location or reference"
            }
            _ => "the change would take the on-hand count below zero",
        })),
        other => conflict(format!("the change was refused: {}", other.name())),
    }
}

/// Waits until the log holds every entry's change durably, then writes the entries to the
/// audit log (one write and sync).
pub(super) async fn make_durable_and_audit(
    shared: &Arc<Shared>,
    entries: Vec<NewEntry>,
) -> Result<Vec<Arc<AuditEntry>>, ApiError> {
    let lsn = entries.iter().map(|e| e.lsn).max().unwrap_or(0);
    if shared.wal.durable(lsn).await.is_err() {
        return Err(ApiError::read_only(shared.wal.health()));
    }
    let shared = shared.clone();
    let key = crate::auth::caller().map(|caller| caller.key_id.to_string());
    let audit = tokio::task::spawn_blocking(move || shared.audit.append_all(entries, key));
    audit.await.expect("an audit append does not panic").map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "audit_unavailable",
            format!(
                "the change is durable but its audit entry could not be written ({e}); \
                 further changes are refused"
            ),
        )
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    pub target: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
    pub before_seq: Option<u64>,
    pub limit: Option<usize>,
    /// `json` (default) or `csv`.
    pub format: Option<String>,
}

/// Most rows one CSV export holds; page further with `before_seq`.
pub const AUDIT_CSV_ROWS_MAX: usize = 100_000;

/// `GET /api/v1/audit`: entries matching the filters, newest first, as JSON or as CSV.
pub async fn audit(
    State(app): State<AppState>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let csv = match query.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => return Err(ApiError::invalid(format!("format {other:?}: json or csv"))),
    };
    let limit = if csv {
        let limit = query.limit.unwrap_or(AUDIT_CSV_ROWS_MAX);
        if !(1..=AUDIT_CSV_ROWS_MAX).contains(&limit) {
            return Err(ApiError::invalid(format!("limit must be in 1..={AUDIT_CSV_ROWS_MAX}")));
        }
        limit
    } else {
        page_limit(query.limit, PAGE_DEFAULT)?
    };
    if query.from_ms.zip(query.to_ms).is_some_and(|(from, to)| from >= to) {
        return Err(ApiError::invalid("from_ms must be before to_ms"));
    }
    let filter = AuditFilter {
        target: query.target,
        actor: query.actor,
        action: query.action,
        from_ms: query.from_ms,
        to_ms: query.to_ms,
        before_seq: query.before_seq,
    };
    let shared = app.shared.clone();
    let entries =
        tokio::task::spawn_blocking(move || shared.audit.query(&*shared.storage, &filter, limit))
            .await
            .expect("an audit query does not panic")?;
    if !csv {
        return Ok(Json(json!({ "entries": entries })).into_response());
    }
    let mut writer = csv::Writer::from_writer(Vec::new());
    let header = [
        "seq", "at", "at_ms", "actor", "action", "target", "reason", "before", "after", "lsn",
        "key",
    ];
    let row = |e: &AuditEntry| {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.at_ms);
        [
            e.seq.to_string(),
            humantime::format_rfc3339_millis(at).to_string(),
            e.at_ms.to_string(),
            e.actor.clone(),
            e.action.clone(),
            e.target.clone(),
            e.reason.clone(),
            e.before.to_string(),
            e.after.to_string(),
            e.lsn.to_string(),
            e.key.clone().unwrap_or_default(),
        ]
    };
    let written = writer
        .write_record(header)
        .and_then(|()| entries.iter().try_for_each(|e| writer.write_record(row(e))));
    written.expect("writing CSV to memory cannot fail");
    let body = writer.into_inner().expect("writing CSV to memory cannot fail");
    let headers = [
        (axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8"),
        (axum::http::header::CONTENT_DISPOSITION, "attachment; filename=\"audit.csv\""),
    ];
    Ok((headers, body).into_response())
}
