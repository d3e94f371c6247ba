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
//! - Pending requests survive a restart (`approvals.jsonl`, see `crate::auth::approvals`);
//!   [`Deferred`] is kept there as `StoredDeferred`.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::api::{
    make_durable_and_audit, ApiError, Attribution, ACTOR_BYTES_MAX, REASON_BYTES_MAX,
};
use super::supply::{apply_prepared, Prepared};
use super::{blocking, AppState};
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

/// How a [`Deferred`] is kept in `approvals.jsonl` (`crate::auth::approvals`): the actor and
/// reason, and per change its SKU and either the command, as the binary protocol's operation
/// (opcode, and its body in hex, as `PROTOCOL.md` specifies), with the audit action and
/// target, or why it was refused.
#[derive(Serialize, Deserialize)]
struct StoredDeferred {
    actor: String,
    reason: String,
    changes: Vec<StoredChange>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum StoredChange {
    Apply { sku: String, target: String, action: String, opcode: u8, body: String },
    Refused { sku: String, message: String },
}

/// The audit actions a deferred change may carry (`supply::Item::command`, the single-change
/// endpoints).
const ACTIONS: [&str; 10] = [
    "set_stock",
    "adjust_stock",
    "set_safety_stock",
    "set_limits",
    "set_location",
    "adjust_location",
    "set_incoming",
    "receive_incoming",
    "set_preorder",
    "delete_sku",
];

impl Serialize for Deferred {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let changes = self
            .prepared
            .iter()
            .map(|(sku, change)| match change {
                Ok((target, command, action)) => {
                    // Refused here (the request then fails) rather than when the file is read.
                    if !ACTIONS.contains(action) {
                        let problem = format!("{action} cannot be kept for approval");
                        return Err(serde::ser::Error::custom(problem));
                    }
                    let op = command.to_op().ok_or_else(|| {
                        serde::ser::Error::custom(format!("{action} is not a wire operation"))
                    })?;
                    let mut body = bytes::BytesMut::new();
                    op.encode_body(&mut body);
                    Ok(StoredChange::Apply {
                        sku: sku.clone(),
                        target: target.clone(),
                        action: action.to_string(),
                        opcode: op.opcode() as u8,
                        body: hex::encode(body),
                    })
                }
                Err(refused) => Ok(StoredChange::Refused {
                    sku: sku.clone(),
                    message: refused.message().into(),
                }),
            })
            .collect::<Result<Vec<_>, S::Error>>()?;
        let who = &self.who;
        StoredDeferred { actor: who.actor.clone(), reason: who.reason.clone(), changes }
            .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Deferred {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let stored = StoredDeferred::deserialize(deserializer)?;
        let prepared = stored
            .changes
            .into_iter()
            .map(|change| match change {
                StoredChange::Apply { sku, target, action, opcode, body } => {
                    let action = ACTIONS
                        .into_iter()
                        .find(|known| *known == action)
                        .ok_or_else(|| D::Error::custom(format!("unknown action {action:?}")))?;
                    let body = hex::decode(&body).map_err(D::Error::custom)?;
                    let op = stockd_protocol::Op::decode(opcode, body.into())
                        .map_err(|e| D::Error::custom(format!("{action} on {sku}: {e}")))?;
                    let command = Command::from_op(op)
                        .ok_or_else(|| D::Error::custom(format!("{action}: not a change")))?;
                    Ok((sku, Ok((target, command, action))))
                }
                StoredChange::Refused { sku, message } => {
                    Ok((sku, Err(ApiError::invalid(message))))
                }
            })
            .collect::<Result<Vec<Prepared>, D::Error>>()?;
        let who = Attribution { actor: stored.actor, reason: stored.reason };
        Ok(Deferred { prepared, who })
    }
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
    let requested = blocking(shared, move |shared| {
        shared.approvals.request(request, &requester, deferred, now_ms, expiry_ms)
    })
    .await;
    let view = match requested {
        Ok(view) => view,
        Err(e @ ApprovalError::Full) => {
            return ApiError::new(StatusCode::TOO_MANY_REQUESTS, "overloaded", e.to_string())
        }
        Err(e) => return refusal(e),
    };
    let states = (Value::Null, view_json(&view));
    let audited = entry(now_ms, &actor, "approval_request", &view, view.reason.clone(), states);
    if let Err(e) = make_durable_and_audit(shared, vec![audited]).await {
        // Not audited: not pending either.
        let id = view.id.clone();
        let _ = blocking(shared, move |shared| {
            shared.approvals.reject(&*shared.storage, &id, |_| true)
        })
        .await;
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
    let expired =
        blocking(shared, |shared| shared.approvals.expire(&*shared.storage, shared.clock.now_ms()))
            .await
            .map_err(refusal)?;
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
        ApprovalError::Storage(_) | ApprovalError::Random(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::CONFLICT,
    };
    let code = match error {
        ApprovalError::NotFound(_) => "not_found",
        ApprovalError::Expired(_) => "expired",
        ApprovalError::OwnRequest | ApprovalError::NotYours => "forbidden",
        ApprovalError::Storage(_) | ApprovalError::Random(_) => "approvals_unavailable",
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
    let taken = {
        let approver = approver.clone();
        blocking(shared, move |shared| {
            shared.approvals.approve(&*shared.storage, &id, &approver, now_ms)
        })
        .await
    };
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
        move |view: &PendingView| caller.role == Role::Admin || view.requested_by == *caller.key_id;
    let view = blocking(shared, move |shared| shared.approvals.reject(&*shared.storage, &id, may))
        .await
        .map_err(refusal)?;
    let states = (view_json(&view), Value::Null);
    let now_ms = shared.clock.now_ms();
    let audited = entry(now_ms, &body.actor, "approval_reject", &view, body.note, states);
    make_durable_and_audit(shared, vec![audited]).await?;
    Ok(Json(json!({ "rejected": view })))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::http::supply::{prepare, Item};

    /// Every kind of change a request may hold, and a refused one, read back from the form
    /// kept in `approvals.jsonl` as the same commands, actions, targets and refusal.
    #[test]
    fn deferred_changes_are_kept_and_read_back_exactly() {
        let items = json!([
            { "op": "set_stock", "sku": "A", "on_hand": 0, "expected": 7 },
            { "op": "adjust_stock", "sku": "A", "delta": -5000 },
            { "op": "set_safety_stock", "sku": "A", "safety_stock": 3 },
            { "op": "set_limits", "sku": "A", "max_per_buyer": 2, "shared_pool": true,
              "quotas": [{ "channel": "live", "percent": 40.0 }, { "channel": "web", "units": 9 }] },
            { "op": "set_location", "sku": "A", "location": "east", "on_hand": 0, "priority": 2 },
            { "op": "adjust_location", "sku": "A", "location": "east", "delta": -9 },
            { "op": "set_incoming", "sku": "A", "location": "east", "reference": "PO-1", "qty": 4,
              "eta_ms": 1_900_000_000_000u64 },
            { "op": "receive_incoming", "sku": "A", "location": "east", "reference": "PO-1" },
            { "op": "set_preorder", "sku": "A", "preorder_max": 10 },
            { "op": "delete_sku", "sku": "A" },
            { "op": "adjust_stock", "sku": "B", "delta": 0 },
        ]);
        let items: Vec<Item> = serde_json::from_value(items).expect("items");
        let who = Attribution { actor: "bob".into(), reason: "season end".into() };
        let deferred = Deferred { prepared: prepare(items), who };
        let text = serde_json::to_string(&deferred).expect("serialises");
        let back: Deferred = serde_json::from_str(&text).expect("reads back");
        assert_eq!((back.who.actor.as_str(), back.who.reason.as_str()), ("bob", "season end"));
        assert_eq!(back.prepared.len(), deferred.prepared.len());
        let mut actions = Vec::new();
        for ((sku, kept), (sku_back, read)) in deferred.prepared.iter().zip(&back.prepared) {
            assert_eq!(sku, sku_back);
            match (kept, read) {
                (Ok((target, command, action)), Ok((target_back, command_back, action_back))) => {
                    assert_eq!((target, action), (target_back, action_back));
                    assert_eq!(command, command_back);
                    actions.push(*action);
                }
                (Err(kept), Err(read)) => assert_eq!(kept.message(), read.message()),
                _ => panic!("{sku}: {kept:?} read back as {read:?}"),
            }
        }
        assert_eq!(actions, ACTIONS, "every kind of change, in order");
    }
}
