//! Two-person approval over HTTP (`crate::auth::approvals` has the rules):
//!
//! - A dangerous change (single or bulk) is answered 202 `approval_required` with the pending
//!   request under `approval`, and audited as `approval_request`.
//! - `GET /api/v1/approvals` lists pending requests (ops, admin).
//! - `POST /api/v1/approvals/{id}/approve` (admin, not the requester's key) applies the
//!   changes as a bulk request would and answers its results; audited as `approval_approve`,
//!   and each change is audited as usual with the reason naming the approval.
//! - `POST /api/v1/approvals/{id}/reject` (an admin or the requester) drops it
//!   (`approval_reject`).
//! - Requests past their expiry are dropped and audited as `approval_expire` (at their expiry
//!   time) when the approvals are next looked at.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::api::{
    make_durable_and_audit, ApiError, Attribution, ACTOR_BYTES_MAX, REASON_BYTES_MAX,
};
use super::supply::{apply_prepared, Prepared};
use super::AppState;
use crate::audit::NewEntry;
use crate::auth::approvals::{dangerous, ApprovalError, PendingView, Request};
use crate::auth::{acting, Role};
use crate::engine::Command;
use crate::server::Shared;

/// What an approved request does.
pub struct Deferred {
    prepared: Vec<Prepared>,
    who: Attribution,
}

/// Why a bulk request needs approval, if it does: too many SKUs set to zero, or one item that
/// would on its own.
pub fn bulk_danger(shared: &Shared, prepared: &[Prepared]) -> Option<String> {
    let config = &shared.config.approval;
    let now_ms = shared.clock.now_ms();
    let commands = prepared.iter().filter_map(|(_, c)| c.as_ref().ok());
    let zeroed = commands
        .clone()
        .filter(|(_, command, _)| {
            matches!(
                command,
                Command::SetStock { on_hand: 0, .. } | Command::SetLocation { on_hand: 0, .. }
            )
        })
        .count();
    config.many_zeroed(zeroed as u64).or_else(|| {
        commands.into_iter().find_map(|(sku, command, _)| {
            dangerous(&shared.engine, config, command, now_ms).map(|why| format!("{sku}: {why}"))
        })
    })
}

fn describe(prepared: &[Prepared]) -> Vec<String> {
    prepared
        .iter()
        .map(|(sku, command)| match command {
            Ok((_, command, action)) => format!("{action} {sku}: {command:?}"),
            Err(e) => format!("{sku}: refused ({})", e.message()),
        })
        .collect()
}

fn view_json(view: &PendingView) -> Value {
    serde_json::to_value(view).expect("a pending request serialises")
}

/// The audit entry of an approval step on `view` (no log record: `lsn` 0).
fn entry(
    at_ms: u64,
    actor: &str,
    action: &'static str,
    view: &PendingView,
    reason: String,
    (before, after): (Value, Value),
) -> NewEntry {
    NewEntry {
        at_ms,
        actor: actor.to_string(),
        action,
        target: view.id.clone(),
        reason,
        before,
        after,
        lsn: 0,
    }
}

/// Puts changes on hold for a second admin; returns the 202 reply (as an `ApiError`, since
/// the change was not made).
pub async fn hold(
    shared: &Arc<Shared>,
    prepared: Vec<Prepared>,
    who: Attribution,
    action: &str,
    target: String,
    why: String,
) -> ApiError {
    let requester = acting();
    let now_ms = shared.clock.now_ms();
    let request = Request {
        action: action.to_string(),
        target,
        why: why.clone(),
        reason: who.reason.clone(),
        changes: describe(&prepared),
    };
    let actor = who.actor.clone();
    let expiry_ms = shared.config.approval.expiry_ms;
    let deferred = Deferred { prepared, who };
    let view = match shared.approvals.request(request, &requester, deferred, now_ms, expiry_ms) {
        Ok(view) => view,
        Err(e) => return ApiError::new(StatusCode::TOO_MANY_REQUESTS, "overloaded", e.to_string()),
    };
    let states = (Value::Null, view_json(&view));
    let audited = entry(now_ms, &actor, "approval_request", &view, view.reason.clone(), states);
    if let Err(e) = make_durable_and_audit(shared, vec![audited]).await {
        // Not recorded: not pending either.
        let _ = shared.approvals.reject(&view.id, |_| true);
        return e;
    }
    let message = format!(
        "{why}: waits for a second admin's approval (POST /api/v1/approvals/{}/approve)",
        view.id
    );
    ApiError::new(StatusCode::ACCEPTED, "approval_required", message)
        .with("approval", view_json(&view))
}

/// Drops expired requests and audits them (at their expiry time, by the server).
async fn expire(shared: &Arc<Shared>) -> Result<(), ApiError> {
    let expired = shared.approvals.expire(shared.clock.now_ms());
    if expired.is_empty() {
        return Ok(());
    }
    let entries: Vec<NewEntry> = expired
        .iter()
        .map(|v| {
            let states = (Value::Null, view_json(v));
            entry(v.expires_ms, "stockd", "approval_expire", v, v.reason.clone(), states)
        })
        .collect();
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || shared.audit.append_all(entries, None))
        .await
        .expect("an audit append does not panic")
        .map(|_| ())
        .map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "audit_unavailable", e.to_string())
        })
}

fn refusal(error: ApprovalError) -> ApiError {
    let status = match error {
        ApprovalError::NotFound(_) => StatusCode::NOT_FOUND,
        ApprovalError::Expired(_) => StatusCode::GONE,
        ApprovalError::OwnRequest | ApprovalError::NotYours => StatusCode::FORBIDDEN,
        _ => StatusCode::CONFLICT,
    };
    let code = match error {
        ApprovalError::NotFound(_) => "not_found",
        ApprovalError::Expired(_) => "expired",
        ApprovalError::OwnRequest | ApprovalError::NotYours => "forbidden",
        _ => "conflict",
    };
    ApiError::new(status, code, error.to_string())
}

/// `GET /api/v1/approvals`
pub async fn list(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    expire(&app.shared).await?;
    Ok(Json(json!({ "pending": app.shared.approvals.list() })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    pub actor: String,
    #[serde(default)]
    pub note: String,
}

fn decision(body: Result<Json<DecisionBody>, JsonRejection>) -> Result<DecisionBody, ApiError> {
    let Json(body) = body?;
    let (actor, note) = (body.actor.len(), body.note.len());
    if body.actor.trim().is_empty() || actor > ACTOR_BYTES_MAX || note > REASON_BYTES_MAX {
        return Err(ApiError::invalid(format!(
            "actor must have 1..={ACTOR_BYTES_MAX} bytes and note at most {REASON_BYTES_MAX}"
        )));
    }
    Ok(body)
}

/// `POST /api/v1/approvals/{id}/approve`
pub async fn approve(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<DecisionBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = decision(body)?;
    let shared = &app.shared;
    let approver = acting();
    let now_ms = shared.clock.now_ms();
    let taken = shared.approvals.approve(&id, &approver, now_ms);
    // An expired request is answered as such, then dropped and audited.
    expire(shared).await?;
    let (view, deferred) = taken.map_err(refusal)?;
    let Deferred { prepared, who } = deferred;
    let who = Attribution {
        actor: who.actor,
        reason: format!("{} (approved by {} in {})", who.reason, approver.name, view.id),
    };
    let result = apply_prepared(shared, prepared, who).await?;
    let states =
        (view_json(&view), json!({ "applied": result.applied, "refused": result.refused }));
    let audited = entry(now_ms, &body.actor, "approval_approve", &view, body.note, states);
    make_durable_and_audit(shared, vec![audited]).await?;
    Ok(Json(json!({ "approval": view, "result": result })))
}

/// `POST /api/v1/approvals/{id}/reject`
pub async fn reject(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<DecisionBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = decision(body)?;
    let shared = &app.shared;
    expire(shared).await?;
    let caller = acting();
    let may =
        |view: &PendingView| caller.role == Role::Admin || view.requested_by == *caller.key_id;
    let view = shared.approvals.reject(&id, may).map_err(refusal)?;
    let states = (view_json(&view), Value::Null);
    let now_ms = shared.clock.now_ms();
    let audited = entry(now_ms, &body.actor, "approval_reject", &view, body.note, states);
    make_durable_and_audit(shared, vec![audited]).await?;
    Ok(Json(json!({ "rejected": view })))
}
