//! Order-sync endpoints: channel status, pull log, order records, the webhook receiver and
//! "sync now".

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::warn;

use super::api::{page_limit, ApiError};
use super::AppState;
use crate::sync::channel::ChannelStatus;
use crate::sync::{apply_order, verify_signature, ApplyError, Channel, Order, Outcome, Source};

/// The header carrying a webhook's signature.
pub const SIGNATURE_HEADER: &str = "x-stockd-signature";

type ApiResult<T> = Result<Json<T>, ApiError>;

fn find(app: &AppState, name: &str) -> Result<std::sync::Arc<Channel>, ApiError> {
    app.shared.sync.channel(name).cloned().ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no channel {name:?}"))
    })
}

pub async fn list(State(app): State<AppState>) -> Json<Value> {
    let channels: Vec<ChannelStatus> =
        app.shared.sync.channels.iter().map(|c| c.status(&app.shared)).collect();
    Json(json!({ "channels": channels }))
}

pub async fn get(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<ChannelStatus> {
    let channel = find(&app, &name)?;
    Ok(Json(channel.status(&app.shared)))
}

/// Runs the channel's round now (token if due, pull, push) and returns its status.
pub async fn sync_now(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<ChannelStatus> {
    let channel = find(&app, &name)?;
    if !channel.sync_now().await {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the channel's task has stopped",
        ));
    }
    Ok(Json(channel.status(&app.shared)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub limit: Option<usize>,
    pub state: Option<String>,
}

pub async fn pulls(
    State(app): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Value> {
    let Query(query) = query?;
    let limit = page_limit(query.limit, 50)?;
    find(&app, &name)?;
    let pulls = app.shared.sync.store.lock().pulls(&name, limit);
    Ok(Json(json!({ "pulls": pulls })))
}

pub async fn orders(
    State(app): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Value> {
    let Query(query) = query?;
    let limit = page_limit(query.limit, 50)?;
    find(&app, &name)?;
    let (orders, matched) =
        app.shared.sync.store.lock().orders(&name, query.state.as_deref(), limit);
    Ok(Json(json!({ "orders": orders, "matched": matched })))
}

pub async fn order(
    State(app): State<AppState>,
    Path((name, order)): Path<(String, String)>,
) -> ApiResult<Value> {
    find(&app, &name)?;
    let record = app.shared.sync.store.lock().order(&name, &order).cloned();
    let record = record.ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no order {order:?}"))
    })?;
    Ok(Json(serde_json::to_value(record).expect("an order record serialises")))
}

/// `POST /api/v1/channels/{name}/webhook`: one order, signed with the channel's key.
pub async fn webhook(
    State(app): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Outcome> {
    let channel = find(&app, &name)?;
    let Some(secret) = channel.webhook_secret() else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            format!("channel {name:?} has no webhook_secret: webhooks are refused"),
        ));
    };
    let signature = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    if !verify_signature(secret, &body, signature) {
        channel.stats.bad_signatures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        warn!(channel = %name, bytes = body.len(), "webhook refused: bad or missing signature");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            format!("the {SIGNATURE_HEADER} header is missing or does not match the body"),
        ));
    }
    let order: Order = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed", format!("not an order: {e}"))
    })?;
    channel.orders_pending(1);
    let outcome = apply_order(&app.shared, &channel, &order, Source::Push).await;
    channel.orders_pending(-1);
    match outcome {
        Ok(outcome) => Ok(Json(outcome)),
        Err(ApplyError::Invalid(why)) => {
            Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", why))
        }
        Err(e @ ApplyError::ReadOnly) => {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "read_only", e.to_string()))
        }
        Err(e @ ApplyError::Journal(_)) => {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "sync_unavailable", e.to_string()))
        }
    }
}
