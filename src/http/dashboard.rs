//! The operations dashboard: one page and its script and style, embedded in the binary (no
//! CDN, works offline), and the event stream that keeps it live.
//!
//! `GET /api/v1/events` takes the same query as `GET /api/v1/skus` and sends an `update`
//! event (Server-Sent Events) after every sample: `{"status": ..., "board": ..., "changes":
//! [...]}`, the first one at once. The page reopens the stream when its search or sort
//! changes. Streams end when the server shuts down.

use std::convert::Infallible;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use futures_util::Stream;
use serde_json::json;

use super::api::{board, ApiError, BoardQuery};
use super::AppState;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body)
}

pub async fn index() -> impl IntoResponse {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

pub async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", APP_JS)
}

pub async fn style() -> impl IntoResponse {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

/// How many administrative changes each update carries.
const CHANGES_SHOWN: usize = 10;

pub async fn events(
    State(app): State<AppState>,
    query: Result<Query<BoardQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(query) = query?;
    // Bad queries are refused up front, not as an event.
    board(&app, &query, &app.samples.borrow().clone())?;
    let mut samples = app.samples.clone();
    samples.mark_changed();
    let stream = futures_util::stream::unfold((app, query, samples), |state| async move {
        let (app, query, mut samples) = state;
        // Ends when the sampler stops (server shutdown).
        samples.changed().await.ok()?;
        let sample = samples.borrow_and_update().clone();
        let (view_app, view_query) = (app.clone(), query.clone());
        let update = tokio::task::spawn_blocking(move || {
            let board = board(&view_app, &view_query, &sample).ok();
            let changes = view_app.shared.audit.recent(None, None, CHANGES_SHOWN);
            json!({ "status": sample.status, "board": board, "changes": changes })
        })
        .await
        .ok()?;
        let event = Event::default().event("update").json_data(update).ok()?;
        Some((Ok(event), (app, query, samples)))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
