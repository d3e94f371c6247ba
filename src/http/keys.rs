//! API key management (admin role): `GET /api/v1/keys`, `POST /api/v1/keys` (the clear key is
//! in this one reply and nowhere else), `POST /api/v1/keys/{id}/revoke`. Both changes are
//! audited (`key_create`, `key_revoke`) with the key's id, name and role, never the key.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::api::{make_durable_and_audit, ApiError, Attribution};
use super::{blocking, AppState};
use crate::audit::NewEntry;
use crate::auth::{KeyError, KeyRecord, Role};

fn key_error(error: KeyError) -> ApiError {
    match error {
        KeyError::BadName => ApiError::invalid(error.to_string()),
        KeyError::NotFound(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", error.to_string())
        }
        KeyError::AlreadyRevoked(_) => {
            ApiError::new(StatusCode::CONFLICT, "already_revoked", error.to_string())
        }
        KeyError::Full => ApiError::new(StatusCode::CONFLICT, "too_many_keys", error.to_string()),
        _ => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "keys_unavailable", error.to_string())
        }
    }
}

/// What the audit log records of a key.
pub fn audit_view(key: &KeyRecord) -> Value {
    json!({ "id": key.id, "name": key.name, "role": key.role, "revoked_ms": key.revoked_ms })
}

/// `GET /api/v1/keys`
pub async fn list(State(app): State<AppState>) -> Json<Value> {
    Json(json!({ "keys": app.shared.keys.list() }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    pub name: String,
    pub role: String,
    pub actor: String,
    pub reason: String,
}

/// `POST /api/v1/keys`: `{"name", "role", "actor", "reason"}` -> 201 with `key` (shown once).
pub async fn create(
    State(app): State<AppState>,
    body: Result<Json<CreateBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(body) = body?;
    let who = Attribution { actor: body.actor, reason: body.reason };
    who.check()?;
    let role = Role::parse(&body.role).ok_or_else(|| {
        ApiError::invalid(format!("role {:?}: checkout, sync, ops, admin or readonly", body.role))
    })?;
    let shared = &app.shared;
    let now_ms = shared.clock.now_ms();
    let creator = crate::auth::acting().key_id.to_string();
    let name = body.name;
    let (record, key) =
        blocking(shared, move |shared| shared.keys.create(&name, role, &creator, now_ms))
            .await
            .map_err(key_error)?;
    let entry = NewEntry {
        at_ms: now_ms,
        actor: who.actor,
        action: "key_create",
        target: record.id.clone(),
        reason: who.reason,
        before: Value::Null,
        after: audit_view(&record),
        lsn: 0,
    };
    make_durable_and_audit(shared, vec![entry]).await?;
    let mut reply = serde_json::to_value(&record).expect("a key record serialises");
    reply["key"] = Value::String(key);
    Ok((StatusCode::CREATED, Json(reply)))
}

/// `POST /api/v1/keys/{id}/revoke`: `{"actor", "reason"}`. Open connections using the key are
/// refused from their next request on.
pub async fn revoke(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<Attribution>, JsonRejection>,
) -> Result<Json<KeyRecord>, ApiError> {
    let Json(who) = body?;
    who.check()?;
    let shared = &app.shared;
    let now_ms = shared.clock.now_ms();
    let by = crate::auth::acting().key_id.to_string();
    let before = {
        let id = id.clone();
        blocking(shared, move |shared| shared.keys.revoke(&id, &by, now_ms))
            .await
            .map_err(key_error)?
    };
    let after = shared.keys.get(&id).expect("a revoked key stays listed");
    let entry = NewEntry {
        at_ms: now_ms,
        actor: who.actor,
        action: "key_revoke",
        target: id,
        reason: who.reason,
        before: audit_view(&before),
        after: audit_view(&after),
        lsn: 0,
    };
    make_durable_and_audit(shared, vec![entry]).await?;
    Ok(Json(after))
}
