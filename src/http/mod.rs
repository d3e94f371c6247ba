//! The HTTP operations endpoints, on their own port (`http.listen`): `/healthz` (the process
//! answers), `/readyz` (recovered and accepting writes; 503 while read-only) and `/metrics`
//! (Prometheus / OpenMetrics text). Errors are JSON with a code and a message.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::server::Shared;
use crate::wal::Health;

#[derive(Serialize)]
struct ErrorBody {
    code: &'static str,
    message: String,
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            let body = ErrorBody { code: "not_found", message: "no such endpoint".into() };
            (StatusCode::NOT_FOUND, Json(body))
        })
        .with_state(shared)
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    match shared.wal.health() {
        Health::Ok => "ready\n".into_response(),
        health => {
            let message = match health {
                Health::NoSpace => "the disk is full: writes are refused until space is freed",
                _ => "the write-ahead log failed: writes are refused until restart",
            };
            let body = ErrorBody { code: "read_only", message: message.into() };
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let text = shared.metrics.render(&shared);
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], text).into_response()
}
