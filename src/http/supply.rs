//! Locations, incoming deliveries, preorders and bulk changes over the admin API (reference:
//! `docs/API.md`). Every change goes through `api::apply_change` like the single-SKU changes:
//! applied by the engine, logged, durable, audited, then acknowledged.
//!
//! A bulk request applies its items one after another (each atomically, the whole not as a
//! unit), waits once until all of them are durable, writes their audit entries in one append,
//! and answers one result per item: a refused item does not stop the others.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::Json;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use stockd_protocol::limits::{
    LOCATION_BYTES_MAX, QUOTAS_PER_SKU_MAX, REFERENCE_BYTES_MAX, TAG_BYTES_MAX,
};
use stockd_protocol::{ChannelQuota, LocationsReply, QuotaLimit, SkuLimits};

use super::api::{
    apply_change, change, make_durable_and_audit, ready_for_changes, ApiError, Attribution,
    Changed, Counters, QuotaView,
};
use super::AppState;
use crate::engine::Command;
use crate::server::Shared;
use crate::wms::FeedRow;

/// Most items in one bulk request.
pub const BULK_ITEMS_MAX: usize = 10_000;
/// Largest bulk request body.
pub const BULK_BODY_BYTES_MAX: usize = 4 * 1024 * 1024;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A SKU's locations, deliveries and preorder allowance, as the SKU view shows them.
#[derive(Debug, Serialize)]
pub struct SupplyView {
    pub preorder_max: u64,
    /// Units held or committed beyond `on_hand` (sold against incoming stock).
    pub preordered: u64,
    pub locations: Vec<LocationView>,
    pub incoming: Vec<IncomingView>,
}

#[derive(Debug, Serialize)]
pub struct LocationView {
    pub location: String,
    pub priority: u32,
    pub on_hand: u64,
    pub held: u64,
    pub committed: u64,
    pub incoming: u64,
    pub available: u64,
}

#[derive(Debug, Serialize)]
pub struct IncomingView {
    /// Empty on a SKU without locations.
    pub location: String,
    pub reference: String,
    pub qty: u64,
    pub eta_ms: u64,
}

/// `None` for a SKU with no locations, deliveries or preorders.
pub fn supply_view(reply: &LocationsReply) -> Option<SupplyView> {
    if !reply.code.is_ok()
        || (reply.locations.is_empty() && reply.incoming.is_empty() && reply.preorder_max == 0)
    {
        return None;
    }
    Some(SupplyView {
        preorder_max: reply.preorder_max,
        preordered: reply.preordered,
        locations: reply
            .locations
            .iter()
            .map(|l| LocationView {
                location: text(&l.location),
                priority: l.priority,
                on_hand: l.on_hand,
                held: l.reserved,
                committed: l.committed,
                incoming: l.incoming,
                available: l.available,
            })
            .collect(),
        incoming: reply
            .incoming
            .iter()
            .map(|i| IncomingView {
                location: text(&i.location),
                reference: text(&i.reference),
                qty: i.qty,
                eta_ms: i.eta_ms,
            })
            .collect(),
    })
}

fn check_location(location: &str, required: bool) -> Result<(), ApiError> {
    if location.len() > LOCATION_BYTES_MAX || (required && location.is_empty()) {
        return Err(invalid(format!("a location id has 1..={LOCATION_BYTES_MAX} bytes")));
    }
    Ok(())
}

fn check_reference(reference: &str) -> Result<(), ApiError> {
    if reference.is_empty() || reference.len() > REFERENCE_BYTES_MAX {
        return Err(invalid(format!("a delivery reference has 1..={REFERENCE_BYTES_MAX} bytes")));
    }
    Ok(())
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(axum::http::StatusCode::BAD_REQUEST, "invalid_argument", message)
}

/// Limits as the API takes them, checked and converted.
pub fn sku_limits(
    max_per_buyer: u32,
    shared_pool: bool,
    quotas: &[QuotaView],
) -> Result<SkuLimits, ApiError> {
    if quotas.len() > usize::from(QUOTAS_PER_SKU_MAX) {
        return Err(invalid(format!("at most {QUOTAS_PER_SKU_MAX} quotas")));
    }
    let mut converted = Vec::with_capacity(quotas.len());
    for quota in quotas {
        if quota.channel.is_empty() || quota.channel.len() > TAG_BYTES_MAX {
            return Err(invalid(format!("a channel has 1..={TAG_BYTES_MAX} bytes")));
        }
        let limit = match (quota.units, quota.percent.map(QuotaLimit::from_percent)) {
            (Some(units), None) => QuotaLimit::Units(units),
            (None, Some(Some(share))) => share,
            _ => {
                return Err(invalid(format!(
                    "quota {:?} needs either `units` or `percent` (0 to 100)",
                    quota.channel
                )))
            }
        };
        converted.push(ChannelQuota { channel: Bytes::from(quota.channel.clone()), limit });
    }
    Ok(SkuLimits { max_per_buyer, shared_pool, quotas: converted })
}

/// One change, as a bulk item (`op` names it) and, without `sku` (taken from the path), as the
/// body of the single-change endpoints.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Item {
    SetStock {
        sku: String,
        on_hand: u64,
        expected: Option<u64>,
    },
    AdjustStock {
        sku: String,
        delta: i64,
        expected: Option<u64>,
    },
    SetSafetyStock {
        sku: String,
        safety_stock: u64,
    },
    SetLimits {
        sku: String,
        #[serde(default)]
        max_per_buyer: u32,
        #[serde(default)]
        shared_pool: bool,
        #[serde(default)]
        quotas: Vec<QuotaView>,
    },
    SetLocation {
        sku: String,
        location: String,
        on_hand: u64,
        #[serde(default)]
        priority: u32,
        expected: Option<u64>,
    },
    AdjustLocation {
        sku: String,
        location: String,
        delta: i64,
        expected: Option<u64>,
    },
    SetIncoming {
        sku: String,
        #[serde(default)]
        location: String,
        reference: String,
        qty: u64,
        #[serde(default)]
        eta_ms: u64,
    },
    ReceiveIncoming {
        sku: String,
        #[serde(default)]
        location: String,
        reference: String,
        /// 0 or absent: all of it.
        #[serde(default)]
        qty: u64,
    },
    SetPreorder {
        sku: String,
        preorder_max: u64,
    },
    DeleteSku {
        sku: String,
    },
}

impl Item {
    /// The SKU, the command and the audit action name; bad arguments are errors.
    fn command(self) -> Result<(String, Command, &'static str), ApiError> {
        let b = |s: &str| Bytes::copy_from_slice(s.as_bytes());
        Ok(match self {
            Item::SetStock { sku, on_hand, expected } => {
                let command = Command::SetStock { sku: b(&sku), on_hand, expected };
                (sku, command, "set_stock")
            }
            Item::AdjustStock { sku, delta, expected } => {
                if delta == 0 {
                    return Err(invalid("delta must not be 0"));
                }
                let command = Command::AdjustStock { sku: b(&sku), delta, expected };
                (sku, command, "adjust_stock")
            }
            Item::SetSafetyStock { sku, safety_stock } => {
                let command = Command::SetSafetyStock { sku: b(&sku), safety_stock };
                (sku, command, "set_safety_stock")
            }
            Item::SetLimits { sku, max_per_buyer, shared_pool, quotas } => {
                let limits = sku_limits(max_per_buyer, shared_pool, &quotas)?;
                (sku.clone(), Command::SetLimits { sku: b(&sku), limits }, "set_limits")
            }
            Item::SetLocation { sku, location, on_hand, priority, expected } => {
                check_location(&location, true)?;
                let location = b(&location);
                let command =
                    Command::SetLocation { sku: b(&sku), location, on_hand, priority, expected };
                (sku, command, "set_location")
            }
            Item::AdjustLocation { sku, location, delta, expected } => {
                check_location(&location, true)?;
                if delta == 0 {
                    return Err(invalid("delta must not be 0"));
                }
                let location = b(&location);
                let command = Command::AdjustLocation { sku: b(&sku), location, delta, expected };
                (sku, command, "adjust_location")
            }
            Item::SetIncoming { sku, location, reference, qty, eta_ms } => {
                check_location(&location, false)?;
                check_reference(&reference)?;
                let (location, reference) = (b(&location), b(&reference));
                let command =
                    Command::SetIncoming { sku: b(&sku), location, reference, qty, eta_ms };
                (sku, command, "set_incoming")
            }
            Item::ReceiveIncoming { sku, location, reference, qty } => {
                check_location(&location, false)?;
                check_reference(&reference)?;
                let (location, reference) = (b(&location), b(&reference));
                let command = Command::ReceiveIncoming { sku: b(&sku), location, reference, qty };
                (sku, command, "receive_incoming")
            }
            Item::SetPreorder { sku, preorder_max } => {
                let command = Command::SetPreorder { sku: b(&sku), preorder_max };
                (sku, command, "set_preorder")
            }
            Item::DeleteSku { sku } => {
                let command = Command::DeleteSku { sku: b(&sku) };
                (sku, command, "delete_sku")
            }
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocationBody {
    pub on_hand: u64,
    #[serde(default)]
    pub priority: u32,
    pub expected: Option<u64>,
    pub actor: String,
    pub reason: String,
}

/// `PUT /api/v1/skus/{sku}/locations/{location}`
pub async fn set_location(
    State(app): State<AppState>,
    Path((sku, location)): Path<(String, String)>,
    body: Result<Json<LocationBody>, JsonRejection>,
) -> Result<Json<Changed>, ApiError> {
    let Json(body) = body?;
    let item = Item::SetLocation {
        sku,
        location,
        on_hand: body.on_hand,
        priority: body.priority,
        expected: body.expected,
    };
    single(app, item, Attribution { actor: body.actor, reason: body.reason }).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocationAdjustBody {
    pub delta: i64,
    pub expected: Option<u64>,
    pub actor: String,
    pub reason: String,
}

/// `POST /api/v1/skus/{sku}/locations/{location}/adjustments`
pub async fn adjust_location(
    State(app): State<AppState>,
    Path((sku, location)): Path<(String, String)>,
    body: Result<Json<LocationAdjustBody>, JsonRejection>,
) -> Result<Json<Changed>, ApiError> {
    let Json(body) = body?;
    let item = Item::AdjustLocation { sku, location, delta: body.delta, expected: body.expected };
    single(app, item, Attribution { actor: body.actor, reason: body.reason }).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncomingBody {
    #[serde(default)]
    pub location: String,
    pub qty: u64,
    #[serde(default)]
    pub eta_ms: u64,
    pub actor: String,
    pub reason: String,
}

/// `PUT /api/v1/skus/{sku}/incoming/{reference}` (qty 0 removes the delivery)
pub async fn set_incoming(
    State(app): State<AppState>,
    Path((sku, reference)): Path<(String, String)>,
    body: Result<Json<IncomingBody>, JsonRejection>,
) -> Result<Json<Changed>, ApiError> {
    let Json(body) = body?;
    let item = Item::SetIncoming {
        sku,
        location: body.location,
        reference,
        qty: body.qty,
        eta_ms: body.eta_ms,
    };
    single(app, item, Attribution { actor: body.actor, reason: body.reason }).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiveBody {
    #[serde(default)]
    pub location: String,
    #[serde(default)]
    pub qty: u64,
    pub actor: String,
    pub reason: String,
}

/// `POST /api/v1/skus/{sku}/incoming/{reference}/receipts`
pub async fn receive_incoming(
    State(app): State<AppState>,
    Path((sku, reference)): Path<(String, String)>,
    body: Result<Json<ReceiveBody>, JsonRejection>,
) -> Result<Json<Changed>, ApiError> {
    let Json(body) = body?;
    let item = Item::ReceiveIncoming { sku, location: body.location, reference, qty: body.qty };
    single(app, item, Attribution { actor: body.actor, reason: body.reason }).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreorderBody {
    pub preorder_max: u64,
    pub actor: String,
    pub reason: String,
}

/// `PUT /api/v1/skus/{sku}/preorder`
pub async fn set_preorder(
    State(app): State<AppState>,
    Path(sku): Path<String>,
    body: Result<Json<PreorderBody>, JsonRejection>,
) -> Result<Json<Changed>, ApiError> {
    let Json(body) = body?;
    let item = Item::SetPreorder { sku, preorder_max: body.preorder_max };
    single(app, item, Attribution { actor: body.actor, reason: body.reason }).await
}

async fn single(app: AppState, item: Item, who: Attribution) -> Result<Json<Changed>, ApiError> {
    let (sku, command, action) = item.command()?;
    change(app, sku, command, action, who).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkBody {
    pub actor: String,
    pub reason: String,
    pub items: Vec<Item>,
}

/// The result of one bulk item.
#[derive(Debug, Serialize)]
pub struct ItemResult {
    pub sku: String,
    /// `ok`, or the error code (as the single-change endpoints answer it).
    pub code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub changed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counters: Option<Counters>,
    pub audit_seq: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct BulkReply {
    pub applied: usize,
    pub refused: usize,
    pub results: Vec<ItemResult>,
}

/// `POST /api/v1/bulk`
pub async fn bulk(
    State(app): State<AppState>,
    body: Result<Json<BulkBody>, JsonRejection>,
) -> Result<Json<BulkReply>, ApiError> {
    let Json(body) = body?;
    let who = Attribution { actor: body.actor, reason: body.reason };
    let shared = &app.shared;
    if !shared.auth_enabled() {
        return apply_items(shared, body.items, who).await.map(Json);
    }
    // With identities, a dangerous bulk request waits for a second admin as a whole.
    if body.items.is_empty() || body.items.len() > BULK_ITEMS_MAX {
        return Err(invalid(format!("a bulk request has 1..={BULK_ITEMS_MAX} items")));
    }
    let prepared = prepare(body.items);
    match super::approvals::bulk_danger(shared, &prepared) {
        None => apply_prepared(shared, prepared, who).await.map(Json),
        Some(why) => {
            let target = format!("{} items", prepared.len());
            Err(super::approvals::hold(shared, prepared, who, "bulk", target, why).await)
        }
    }
}

/// A bulk item ready to apply: its SKU and its command (or why it is refused).
pub(super) type Prepared = (String, Result<(String, Command, &'static str), ApiError>);

/// Checks bulk items and turns them into commands.
pub(super) fn prepare(items: Vec<Item>) -> Vec<Prepared> {
    items
        .into_iter()
        .map(|item| {
            let sku = match &item {
                Item::SetStock { sku, .. }
                | Item::AdjustStock { sku, .. }
                | Item::SetSafetyStock { sku, .. }
                | Item::SetLimits { sku, .. }
                | Item::SetLocation { sku, .. }
                | Item::AdjustLocation { sku, .. }
                | Item::SetIncoming { sku, .. }
                | Item::ReceiveIncoming { sku, .. }
                | Item::SetPreorder { sku, .. }
                | Item::DeleteSku { sku } => sku.clone(),
            };
            (sku, item.command())
        })
        .collect()
}

/// Applies bulk items one by one (each may be refused on its own), then waits once for the
/// log and writes the audit entries in one append.
pub(super) async fn apply_items(
    shared: &Arc<Shared>,
    items: Vec<Item>,
    who: Attribution,
) -> Result<BulkReply, ApiError> {
    if items.is_empty() || items.len() > BULK_ITEMS_MAX {
        return Err(invalid(format!("a bulk request has 1..={BULK_ITEMS_MAX} items")));
    }
    apply_prepared(shared, prepare(items), who).await
}

/// Applies prepared changes (see [`apply_items`]).
pub(super) async fn apply_prepared(
    shared: &Arc<Shared>,
    prepared: Vec<Prepared>,
    who: Attribution,
) -> Result<BulkReply, ApiError> {
    who.check()?;
    let shared = shared.clone();
    ready_for_changes(&shared)?;
    let apply = {
        let shared = shared.clone();
        move || {
            let now_ms = shared.clock.now_ms();
            let mut results = Vec::with_capacity(prepared.len());
            let mut entries = Vec::new();
            for (sku, command) in prepared {
                let applied = command.and_then(|(sku, command, action)| {
                    apply_change(&shared, &sku, &command, action, &who, now_ms)
                });
                results.push(match applied {
                    Ok(applied) => {
                        let changed = applied.entry.is_some();
                        entries.extend(applied.entry.map(|entry| (results.len(), entry)));
                        ItemResult {
                            sku,
                            code: "ok".into(),
                            message: None,
                            changed,
                            counters: Some(applied.info.into()),
                            audit_seq: None,
                        }
                    }
                    Err(error) => ItemResult {
                        sku,
                        code: error.code().into(),
                        message: Some(error.message().into()),
                        changed: false,
                        counters: None,
                        audit_seq: None,
                    },
                });
            }
            (results, entries)
        }
    };
    // Many engine calls and log appends: off the async workers.
    let (mut results, entries) = tokio::task::spawn_blocking(apply).await.expect("no panic");
    let (indexes, entries): (Vec<usize>, Vec<_>) = entries.into_iter().unzip();
    if !entries.is_empty() {
        let audited = make_durable_and_audit(&shared, entries).await?;
        for (index, entry) in indexes.into_iter().zip(audited) {
            results[index].audit_seq = Some(entry.seq);
        }
    }
    let applied = results.iter().filter(|r| r.code == "ok").count();
    Ok(BulkReply { applied, refused: results.len() - applied, results })
}

/// Who sends a WMS feed and why (query string: the body is the CSV).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedQuery {
    pub actor: String,
    pub reason: String,
}

/// `POST /api/v1/feeds/wms?actor=..&reason=..` with a CSV body (format: `crate::wms`):
/// physical counts and incoming stock, applied as one bulk change.
pub async fn wms_feed(
    State(app): State<AppState>,
    query: Result<axum::extract::Query<FeedQuery>, axum::extract::rejection::QueryRejection>,
    body: String,
) -> Result<Json<BulkReply>, ApiError> {
    let axum::extract::Query(query) = query?;
    let rows = crate::wms::parse(&body).map_err(|e| invalid(format!("WMS feed: {e}")))?;
    if rows.len() > BULK_ITEMS_MAX {
        return Err(invalid(format!("a feed has at most {BULK_ITEMS_MAX} rows")));
    }
    let now_ms = app.shared.clock.now_ms();
    let items = rows
        .into_iter()
        .map(|row| match row {
            FeedRow::Count { sku, location: None, on_hand, .. } => {
                Item::SetStock { sku, on_hand, expected: None }
            }
            FeedRow::Count { sku, location: Some(location), on_hand, priority } => {
                // Keep the location's priority unless the feed gives one.
                let priority = priority.unwrap_or_else(|| {
                    let reply = app.shared.engine.query_locations(sku.as_bytes(), now_ms);
                    let current =
                        reply.locations.iter().find(|l| l.location == location.as_bytes());
                    current.map_or(0, |l| l.priority)
                });
                Item::SetLocation { sku, location, on_hand, priority, expected: None }
            }
            FeedRow::Incoming { sku, location, reference, qty, eta_ms } => {
                Item::SetIncoming { sku, location, reference, qty, eta_ms }
            }
        })
        .collect();
    let who = Attribution { actor: query.actor, reason: query.reason };
    apply_items(&app.shared, items, who).await.map(Json)
}
