//! The HTTP side, on its own port (`http.listen`): the operations dashboard (`/`), the JSON
//! admin API (`/api/v1/...`, see `docs/API.md`), `/healthz` (the process answers), `/readyz`
//! (recovered and accepting writes; 503 while read-only, and while starting: [`starting`]) and `/metrics` (Prometheus /
//! OpenMetrics text). Errors are JSON with a code and a message. Every request passes the
//! `guard` (API key, role, rate limit) first.

pub mod alerts;
pub mod api;
pub mod approvals;
pub mod channels;
pub mod dashboard;
pub mod guard;
pub mod keys;
pub mod sampler;
pub mod starting;
pub mod supply;
pub mod tickets;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use tokio::sync::watch;

use crate::server::Shared;
use crate::wal::Health;
use api::ApiError;
use sampler::Sample;

/// Largest request body the API accepts.
const BODY_BYTES_MAX: usize = 64 * 1024;

/// What every handler sees.
#[derive(Clone)]
pub struct AppState {
    pub shared: Arc<Shared>,
    /// The newest dashboard sample.
    pub samples: watch::Receiver<Arc<Sample>>,
}

pub fn router(shared: Arc<Shared>, samples: watch::Receiver<Arc<Sample>>) -> Router {
    let state = AppState { shared, samples };
    let api = Router::new()
        .route("/status", get(api::status))
        .route("/skus", get(api::list_skus))
        .route("/skus/{sku}", get(api::get_sku).delete(api::delete_sku))
        .route("/skus/{sku}/stock", put(api::set_stock))
        .route("/skus/{sku}/adjustments", post(api::adjust_stock))
        .route("/skus/{sku}/safety-stock", put(api::set_safety_stock))
        .route("/skus/{sku}/limits", put(api::set_limits))
        .route("/skus/{sku}/locations/{location}", put(supply::set_location))
        .route("/skus/{sku}/locations/{location}/adjustments", post(supply::adjust_location))
        .route("/skus/{sku}/incoming/{reference}", put(supply::set_incoming))
        .route("/skus/{sku}/incoming/{reference}/receipts", post(supply::receive_incoming))
        .route("/skus/{sku}/preorder", put(supply::set_preorder))
        .route("/reservations/{id}", get(api::get_reservation))
        .route("/audit", get(api::audit))
        .route("/alerts", get(alerts::list))
        .route("/alerts/history", get(alerts::history))
        .route("/alerts/{id}/ack", post(alerts::acknowledge))
        .route("/channels", get(channels::list))
        .route("/channels/{name}", get(channels::get))
        .route("/channels/{name}/sync", post(channels::sync_now))
        .route("/channels/{name}/pulls", get(channels::pulls))
        .route("/channels/{name}/orders", get(channels::orders))
        .route("/channels/{name}/orders/{order}", get(channels::order))
        .route("/channels/{name}/webhook", post(channels::webhook))
        .route("/tickets", get(tickets::list).post(tickets::open))
        .route("/tickets/{id}", get(tickets::get))
        .route("/tickets/{id}/transitions", post(tickets::transition))
        .route("/aftersales/scan", post(tickets::scan))
        .route("/aftersales/parcels", get(tickets::parcels))
        .route("/aftersales/report", get(tickets::report))
        .route("/events", get(dashboard::events))
        .route("/keys", get(keys::list).post(keys::create))
        .route("/keys/{id}/revoke", post(keys::revoke))
        .route("/approvals", get(approvals::list))
        .route("/approvals/{id}/approve", post(approvals::approve))
        .route("/approvals/{id}/reject", post(approvals::reject))
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .route(
            "/bulk",
            post(supply::bulk).layer(DefaultBodyLimit::max(supply::BULK_BODY_BYTES_MAX)),
        )
        .route(
            "/feeds/wms",
            post(supply::wms_feed).layer(DefaultBodyLimit::max(supply::BULK_BODY_BYTES_MAX)),
        );
    Router::new()
        .route("/", get(dashboard::index))
        .route("/assets/app.js", get(dashboard::script))
        .route("/assets/style.css", get(dashboard::style))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .nest("/api/v1", api)
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method",
            )
        })
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), guard::guard))
        .with_state(state)
}

async fn readyz(State(app): State<AppState>) -> Response {
    match app.shared.wal.health() {
        Health::Ok => "ready\n".into_response(),
        health => {
            let message = match health {
                Health::NoSpace => "the disk is full: writes are refused until space is freed",
                _ => "the write-ahead log failed: writes are refused until restart",
            };
            let body = serde_json::json!({ "code": "read_only", "message": message });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

/// Runs `work` on the blocking pool (changes that append to a journal and sync it).
async fn blocking<R: Send + 'static>(
    shared: &Arc<Shared>,
    work: impl FnOnce(&Shared) -> R + Send + 'static,
) -> R {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || work(&shared)).await.expect("blocking work does not panic")
}

async fn metrics(State(app): State<AppState>) -> Response {
    let shared = app.shared.clone();
    // The scrape reads totals over every shard: off the async workers.
    let text = tokio::task::spawn_blocking(move || shared.metrics.render(&shared))
        .await
        .expect("rendering metrics does not panic");
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], text).into_response()
}
