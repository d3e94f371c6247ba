//! Alert endpoints: open alerts, their history, acknowledging.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::api::{page_limit, ApiError};
use super::AppState;
use crate::alerting::Alert;

type ApiResult<T> = Result<Json<T>, ApiError>;

/// `GET /api/v1/alerts`: open alerts (firing or acknowledged), critical and oldest first.
pub async fn list(State(app): State<AppState>) -> Json<Value> {
    Json(json!({ "alerts": app.shared.alerts.open_alerts() }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    pub limit: Option<usize>,
}

/// `GET /api/v1/alerts/history`: transitions (fired, acknowledged, escalated, resolved),
/// newest first.
pub async fn history(
    State(app): State<AppState>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> ApiResult<Value> {
    let Query(query) = query?;
    let limit = page_limit(query.limit, 100)?;
    Ok(Json(json!({ "events": app.shared.alerts.history(limit) })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckBody {
    pub actor: String,
}

/// `POST /api/v1/alerts/{id}/ack`: the alert stays open until resolved, but is not escalated.
pub async fn acknowledge(
    State(app): State<AppState>,
    Path(id): Path<u64>,
    body: Result<Json<AckBody>, JsonRejection>,
) -> ApiResult<Alert> {
    let Json(body) = body?;
    if body.actor.trim().is_empty() || body.actor.len() > 128 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "actor must have 1..=128 bytes",
        ));
    }
    let shared = app.shared.clone();
    let acked = tokio::task::spawn_blocking(move || {
        let now_ms = shared.clock.now_ms();
        shared.alerts.acknowledge(&*shared.storage, id, &body.actor, now_ms)
    })
    .await
    .expect("acknowledging does not panic");
    match acked {
        None => {
            Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no open alert {id}")))
        }
        Some(Err(e)) => {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "alerts_unavailable", e.to_string()))
        }
        Some(Ok(alert)) => Ok(Json(alert)),
    }
}
