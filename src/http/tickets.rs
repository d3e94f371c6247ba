//! After-sales endpoints: return tickets (`/api/v1/tickets`), parcel scans, unmatched parcels
//! and the SLA report (`/api/v1/aftersales/...`). Reference: `docs/API.md`.
//!
//! A change is applied by the engine (which checks it against the order and the stock), its
//! log record is made durable, the audit log records it (actor, ticket, state before and
//! after), and only then is it answered, like every stock change.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::api::{make_durable_and_audit, page_limit, ready_for_changes, ApiError};
use super::AppState;
use crate::aftersales::sla::{self, Overdue, Report};
use crate::aftersales::{
    AftersalesCommand, OpenTicket, Scanned, Step, Ticket, TicketError, TicketKind, TicketState,
};
use crate::audit::NewEntry;
use crate::engine::{Command, TicketOutcome};

type ApiResult<T> = Result<Json<T>, ApiError>;

impl From<TicketError> for ApiError {
    fn from(error: TicketError) -> ApiError {
        let status = match &error {
            TicketError::Invalid(_) => StatusCode::BAD_REQUEST,
            TicketError::NotFound(_) | TicketError::UnknownOrder(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::CONFLICT,
        };
        ApiError::new(status, error.code(), error.to_string())
    }
}

/// A ticket with its service-level position.
#[derive(Debug, Serialize)]
pub struct TicketView {
    #[serde(flatten)]
    pub ticket: Ticket,
    /// Over its current stage's limit (`null`: not overdue).
    pub overdue: Option<Overdue>,
}

fn view(app: &AppState, ticket: Ticket, now_ms: u64) -> TicketView {
    let overdue = sla::overdue(&ticket, &app.shared.config.aftersales, now_ms);
    TicketView { ticket, overdue }
}

/// Applies a command, waits for its log record to be durable, audits it.
async fn run(
    app: &AppState,
    command: AftersalesCommand,
    audit: impl FnOnce(&TicketOutcome) -> (String, Value, Value, String),
) -> Result<(TicketOutcome, u64), ApiError> {
    let shared = app.shared.clone();
    ready_for_changes(&shared)?;
    let now_ms = shared.clock.now_ms();
    let actor = match &command {
        AftersalesCommand::Open(open) => open.actor.clone(),
        AftersalesCommand::Move { actor, .. } | AftersalesCommand::Scan { actor, .. } => {
            actor.clone()
        }
    };
    let action = match &command {
        AftersalesCommand::Open(_) => "ticket_open",
        AftersalesCommand::Move { .. } => "ticket_move",
        AftersalesCommand::Scan { .. } => "parcel_scan",
    };
    let command = Command::Aftersales(Box::new(command));
    let Command::Aftersales(inner) = &command else { unreachable!("built above") };
    let mut logged = None;
    let outcome = shared
        .engine
        .aftersales(inner, now_ms, || logged = Some(shared.wal.append(now_ms, &command)))?;
    let lsn = match logged {
        None => return Ok((outcome, now_ms)),
        Some(Ok(lsn)) => lsn,
        Some(Err(_)) => return Err(ApiError::read_only(shared.wal.health())),
    };
    let (target, before, after, reason) = audit(&outcome);
    let entry = NewEntry { at_ms: now_ms, actor, action, target, reason, before, after, lsn };
    make_durable_and_audit(&shared, vec![entry]).await?;
    Ok((outcome, now_ms))
}

fn state_json(ticket: &Ticket) -> Value {
    json!({ "state": ticket.state.name() })
}

/// `POST /api/v1/tickets`: opens a ticket (201), or answers an idempotent repeat (200).
pub async fn open(
    State(app): State<AppState>,
    body: Result<Json<OpenTicket>, JsonRejection>,
) -> Result<(StatusCode, Json<TicketView>), ApiError> {
    let Json(body) = body?;
    let reason = body.reason.clone();
    let (outcome, now_ms) = run(&app, AftersalesCommand::Open(body), |outcome| {
        let TicketOutcome::Opened { ticket, .. } = outcome else { unreachable!("an open") };
        (ticket.id.clone(), Value::Null, state_json(ticket), reason)
    })
    .await?;
    let TicketOutcome::Opened { ticket, created } = outcome else { unreachable!("an open") };
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(view(&app, ticket, now_ms))))
}

/// `POST /api/v1/tickets/{id}/transitions`: `{"to": state, "actor", "note", ...}` with what
/// the step needs (`tracking`, `via`, inspected `lines`, replacement `lines`).
pub async fn transition(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<TicketView> {
    let Json(body) = body?;
    let Value::Object(mut fields) = body else {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "malformed", "expected a JSON object"));
    };
    let mut text = |name: &str| match fields.remove(name) {
        None => Ok(String::new()),
        Some(Value::String(text)) => Ok(text),
        Some(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed",
            format!("{name} must be a string"),
        )),
    };
    let (actor, note) = (text("actor")?, text("note")?);
    let step: Step = serde_json::from_value(Value::Object(fields)).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed", format!("bad step: {e}"))
    })?;
    let command = AftersalesCommand::Move { ticket: id, step, actor, note: note.clone() };
    let (outcome, now_ms) = run(&app, command, |outcome| {
        let TicketOutcome::Moved(ticket) = outcome else { unreachable!("a move") };
        // The state it left: the step before the one just recorded.
        let steps = ticket.history.len();
        let before = json!({ "state": ticket.history[steps.saturating_sub(2)].to.name() });
        (ticket.id.clone(), before, state_json(ticket), note)
    })
    .await?;
    let TicketOutcome::Moved(ticket) = outcome else { unreachable!("a move") };
    Ok(Json(view(&app, ticket, now_ms)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanBody {
    pub code: String,
    pub actor: String,
    #[serde(default)]
    pub note: String,
}

/// `POST /api/v1/aftersales/scan`: a parcel arrived. It receives its ticket (matched by
/// tracking number, else by order id) or is recorded as unmatched.
pub async fn scan(
    State(app): State<AppState>,
    body: Result<Json<ScanBody>, JsonRejection>,
) -> ApiResult<Value> {
    let Json(body) = body?;
    let code = body.code.clone();
    let command = AftersalesCommand::Scan { code: body.code, actor: body.actor, note: body.note };
    let (outcome, now_ms) = run(&app, command, |outcome| match outcome {
        TicketOutcome::Scanned(Scanned::Ticket { ticket }) => (
            ticket.id.clone(),
            json!({ "state": TicketState::AwaitingReturn.name() }),
            state_json(ticket),
            format!("parcel {code} scanned"),
        ),
        _ => (
            format!("parcel:{code}"),
            Value::Null,
            json!({ "matched": false }),
            format!("parcel {code} matched no ticket"),
        ),
    })
    .await?;
    let TicketOutcome::Scanned(scanned) = outcome else { unreachable!("a scan") };
    Ok(Json(match scanned {
        Scanned::Ticket { ticket } => {
            json!({ "matched": true, "ticket": view(&app, *ticket, now_ms) })
        }
        Scanned::Unmatched { parcel } => json!({ "matched": false, "parcel": parcel }),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub state: Option<TicketState>,
    pub kind: Option<TicketKind>,
    pub order: Option<String>,
    pub customer: Option<String>,
    /// Only overdue tickets (`true`) or only those on time (`false`).
    pub overdue: Option<bool>,
    /// Only tickets still open (not closed).
    pub open: Option<bool>,
    /// Tickets with ids after this one (paging, in id order).
    pub after: Option<String>,
    pub limit: Option<usize>,
}

/// `GET /api/v1/tickets`: tickets in id order (generated ids are in creation order), filtered;
/// `next_after` continues the listing.
pub async fn list(
    State(app): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Value> {
    let Query(query) = query?;
    let limit = page_limit(query.limit, 50)?;
    let now_ms = app.shared.clock.now_ms();
    let config = &app.shared.config.aftersales;
    let (tickets, matched, next_after) = app.shared.engine.with_aftersales(|state| {
        let mut rows = Vec::new();
        let mut matched = 0usize;
        for ticket in state.tickets_after(query.after.as_deref().unwrap_or("")) {
            let overdue = sla::overdue(ticket, config, now_ms);
            let keep = query.state.is_none_or(|s| s == ticket.state)
                && query.kind.is_none_or(|k| k == ticket.kind)
                && query.order.as_ref().is_none_or(|o| *o == ticket.order)
                && query.customer.as_ref().is_none_or(|c| *c == ticket.customer)
                && query.overdue.is_none_or(|o| o == overdue.is_some())
                && query.open.is_none_or(|o| o == ticket.state.is_open());
            if !keep {
                continue;
            }
            matched += 1;
            if rows.len() < limit {
                rows.push(TicketView { ticket: ticket.clone(), overdue });
            }
        }
        let next_after =
            (matched > rows.len()).then(|| rows.last().map(|r| r.ticket.id.clone())).flatten();
        (rows, matched, next_after)
    });
    Ok(Json(json!({ "tickets": tickets, "matched": matched, "next_after": next_after })))
}

/// `GET /api/v1/tickets/{id}`.
pub async fn get(State(app): State<AppState>, Path(id): Path<String>) -> ApiResult<TicketView> {
    let now_ms = app.shared.clock.now_ms();
    let ticket = app.shared.engine.with_aftersales(|s| s.ticket(&id).cloned());
    let ticket = ticket.ok_or(TicketError::NotFound(id))?;
    Ok(Json(view(&app, ticket, now_ms)))
}

/// `GET /api/v1/aftersales/parcels`: scanned parcels no ticket matched, newest first.
pub async fn parcels(State(app): State<AppState>) -> Json<Value> {
    let parcels = app
        .shared
        .engine
        .with_aftersales(|s| s.parcels().iter().rev().cloned().collect::<Vec<_>>());
    Json(json!({ "parcels": parcels }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    /// Start of the period, UTC ms (default: 30 days before `to_ms`).
    pub from_ms: Option<u64>,
    /// End of the period, exclusive (default: just after now, so now is included).
    pub to_ms: Option<u64>,
}

/// `GET /api/v1/aftersales/report`: per stage, tickets handled in the period, the share within
/// the limit, mean and p90 time, and how many are overdue now.
pub async fn report(
    State(app): State<AppState>,
    query: Result<Query<ReportQuery>, QueryRejection>,
) -> ApiResult<Report> {
    let Query(query) = query?;
    let now_ms = app.shared.clock.now_ms();
    let to_ms = query.to_ms.unwrap_or(now_ms + 1);
    let from_ms = query.from_ms.unwrap_or(to_ms.saturating_sub(30 * 24 * 3_600_000));
    if from_ms >= to_ms {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "from_ms must be before to_ms",
        ));
    }
    let config = &app.shared.config.aftersales;
    let report = app
        .shared
        .engine
        .with_aftersales(|s| sla::report(s.tickets(), config, from_ms, to_ms, now_ms));
    Ok(Json(report))
}
