//! After-sales: return, exchange and refund-only tickets, each linked to the confirmed order
//! (reservation) it is about, moved through a fixed state machine by named actors, with the
//! returned parcels scanned in, restockable units put back on hand and damaged ones counted.
//!
//! Tickets are part of the engine's state (`Engine::aftersales`): every change is one
//! write-ahead log record (payload: `wal::record`, opcode `0x82`), applied under the same locks
//! as the stock it moves, so a restock and the ticket step that caused it are durable together
//! or not at all, and replay rebuilds both. Snapshots carry the tickets (`AftersalesImage`).
//! This module is the pure part: the tickets, the rules of each step and the checks; the
//! engine supplies what it needs from the reservations and SKUs (`engine/aftersales.rs`).
//!
//! State machine (any other step is refused with `illegal_transition`, naming the allowed
//! ones):
//!
//! ```text
//! requested -> approved | rejected
//! approved -> awaiting_return            (return, exchange)
//! approved -> refunded                   (refund_only: no goods come back)
//! awaiting_return -> received            (by a scan of the tracking number or order id, or by hand)
//! received -> inspected                  (per line: restockable and damaged units, all accounted for)
//! inspected -> refunded                  (return)
//! inspected -> exchanged                 (exchange: a confirmed replacement reservation is made)
//! rejected | refunded | exchanged -> closed
//! ```
//!
//! A ticket may claim at most what its order confirmed, less what the order's other tickets
//! (those not rejected) already claim: `over_return` otherwise.

pub mod sla;

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Most lines on one ticket (and in one inspection or replacement).
pub const TICKET_LINES_MAX: usize = 64;
/// Longest ticket id, order id, SKU, customer reference, tracking number, actor or location.
pub const TICKET_TAG_BYTES_MAX: usize = 64;
/// Longest ticket id: its exchange's reservation id (`exchange:` + id) must fit
/// `ID_BYTES_MAX`.
pub const TICKET_ID_BYTES_MAX: usize = 55;
/// Longest reason or note.
pub const TICKET_TEXT_BYTES_MAX: usize = 500;
/// Most tickets kept: a bound on memory (about 1 KiB each) and on snapshot size.
pub const TICKETS_MAX: usize = 1_000_000;
/// Most unmatched parcels kept for follow-up; the oldest are dropped beyond it.
pub const PARCELS_MAX: usize = 10_000;
/// Steps recorded on one ticket (the longest path is 7 steps; the rest is headroom).
const HISTORY_MAX: usize = 16;

/// Largest command as JSON: what one log record carries (checked by `check_command`; escaping
/// can make a command longer than its fields).
pub const COMMAND_JSON_BYTES_MAX: usize = 60 * 1024;

const _: () =
    assert!("exchange:".len() + TICKET_ID_BYTES_MAX <= stockd_protocol::limits::ID_BYTES_MAX);

#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum TicketKind {
    Return,
    Exchange,
    RefundOnly,
}

#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum TicketState {
    Requested,
    Approved,
    Rejected,
    AwaitingReturn,
    Received,
    Inspected,
    Refunded,
    Exchanged,
    Closed,
}

impl TicketState {
    pub const ALL: [TicketState; 9] = [
        TicketState::Requested,
        TicketState::Approved,
        TicketState::Rejected,
        TicketState::AwaitingReturn,
        TicketState::Received,
        TicketState::Inspected,
        TicketState::Refunded,
        TicketState::Exchanged,
        TicketState::Closed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TicketState::Requested => "requested",
            TicketState::Approved => "approved",
            TicketState::Rejected => "rejected",
            TicketState::AwaitingReturn => "awaiting_return",
            TicketState::Received => "received",
            TicketState::Inspected => "inspected",
            TicketState::Refunded => "refunded",
            TicketState::Exchanged => "exchanged",
            TicketState::Closed => "closed",
        }
    }

    /// The states a ticket of `kind` may go to from this one.
    pub fn next(self, kind: TicketKind) -> &'static [TicketState] {
        use TicketState::*;
        match (self, kind) {
            (Requested, _) => &[Approved, Rejected],
            (Approved, TicketKind::RefundOnly) => &[Refunded],
            (Approved, _) => &[AwaitingReturn],
            (AwaitingReturn, _) => &[Received],
            (Received, _) => &[Inspected],
            (Inspected, TicketKind::Return) => &[Refunded],
            (Inspected, TicketKind::Exchange) => &[Exchanged],
            (Inspected, TicketKind::RefundOnly) => &[],
            (Rejected | Refunded | Exchanged, _) => &[Closed],
            (Closed, _) => &[],
        }
    }

    /// Not closed.
    pub fn is_open(self) -> bool {
        !matches!(self, TicketState::Closed)
    }

    /// In a stage with a time limit (see `sla`): waiting for a decision, a parcel or a refund.
    pub fn is_timed(self) -> bool {
        use TicketState::*;
        matches!(self, Requested | Approved | AwaitingReturn | Received | Inspected)
    }
}

/// One returned SKU of a ticket; `restockable` and `damaged` are set by the inspection.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct TicketLine {
    pub sku: String,
    pub qty: u32,
    pub restockable: u32,
    pub damaged: u32,
    /// Where the restockable units went back (SKUs kept per location); empty otherwise.
    pub location: String,
}

/// One step of a ticket's history.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct Transition {
    pub to: TicketState,
    pub at_ms: u64,
    pub actor: String,
    pub note: String,
}

#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct Ticket {
    pub id: String,
    pub kind: TicketKind,
    /// The reservation (order) the goods were sold under.
    pub order: String,
    pub customer: String,
    pub reason: String,
    pub tracking: String,
    pub lines: Vec<TicketLine>,
    pub state: TicketState,
    pub created_at_ms: u64,
    /// Every step, the creation (`requested`) first.
    pub history: Vec<Transition>,
    /// What the parcel was matched by when it was scanned in.
    pub received_via: String,
    /// The replacement's reservation id (exchange), once made.
    pub replacement: String,
    pub replacement_lines: Vec<Line>,
}

impl Ticket {
    /// Whether this ticket counts against its order's returnable units.
    fn claims(&self) -> bool {
        !self.history.iter().any(|t| t.to == TicketState::Rejected)
    }
}

/// A SKU and a quantity.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct Line {
    pub sku: String,
    pub qty: u32,
}

/// A scanned parcel no ticket matched, kept for follow-up.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct Parcel {
    pub seq: u64,
    pub code: String,
    pub at_ms: u64,
    pub actor: String,
    pub note: String,
}

/// Opening a ticket. An empty `id` gets the next `RMA-nnnnnnnn`; a given id makes the request
/// idempotent (the same request again returns the ticket, a different one is `id_conflict`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenTicket {
    #[serde(default)]
    pub id: String,
    pub kind: TicketKind,
    pub order: String,
    pub lines: Vec<Line>,
    #[serde(default)]
    pub customer: String,
    pub reason: String,
    #[serde(default)]
    pub tracking: String,
    pub actor: String,
}

/// What an inspection found for one SKU of the ticket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inspection {
    pub sku: String,
    pub restockable: u32,
    pub damaged: u32,
    /// Required for a SKU kept per location when units are restocked.
    #[serde(default)]
    pub location: String,
}

/// The step a ticket is moved by, with what that step needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "to", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    Approved,
    Rejected,
    AwaitingReturn {
        #[serde(default)]
        tracking: String,
    },
    Received {
        #[serde(default)]
        via: String,
    },
    Inspected {
        lines: Vec<Inspection>,
    },
    Refunded,
    Exchanged {
        lines: Vec<Line>,
    },
    Closed,
}

impl Step {
    pub fn state(&self) -> TicketState {
        match self {
            Step::Approved => TicketState::Approved,
            Step::Rejected => TicketState::Rejected,
            Step::AwaitingReturn { .. } => TicketState::AwaitingReturn,
            Step::Received { .. } => TicketState::Received,
            Step::Inspected { .. } => TicketState::Inspected,
            Step::Refunded => TicketState::Refunded,
            Step::Exchanged { .. } => TicketState::Exchanged,
            Step::Closed => TicketState::Closed,
        }
    }
}

/// A change to the after-sales state: what the write-ahead log records (as JSON, see
/// `wal::record`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum AftersalesCommand {
    Open(OpenTicket),
    Move {
        ticket: String,
        step: Step,
        actor: String,
        #[serde(default)]
        note: String,
    },
    /// A parcel arrived: it receives the ticket its code (tracking number, else order id)
    /// matches, or is recorded as unmatched.
    Scan {
        code: String,
        actor: String,
        #[serde(default)]
        note: String,
    },
}

impl AftersalesCommand {
    /// The SKUs whose stock the command may change (restock, replacement).
    pub fn stock_skus(&self) -> Vec<&str> {
        match self {
            AftersalesCommand::Move { step: Step::Inspected { lines }, .. } => {
                lines.iter().filter(|l| l.restockable > 0).map(|l| l.sku.as_str()).collect()
            }
            AftersalesCommand::Move { step: Step::Exchanged { lines }, .. } => {
                lines.iter().map(|l| l.sku.as_str()).collect()
            }
            _ => Vec::new(),
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TicketError {
    #[error("{0}")]
    Invalid(String),
    #[error("no ticket {0:?}")]
    NotFound(String),
    #[error("order {0:?} is not known (never reserved, or finished longer ago than the engine remembers)")]
    UnknownOrder(String),
    #[error("order {order:?} is {state}: only confirmed or shipped orders can be returned")]
    NotSold { order: String, state: &'static str },
    #[error(
        "order {order:?} confirmed {sold} of SKU {sku:?} and its other tickets claim {claimed}: \
         {asked} more cannot be returned"
    )]
    OverReturn { order: String, sku: String, sold: u32, claimed: u32, asked: u32 },
    #[error("ticket {id} is {from}; it can go to {allowed}, not {to}")]
    IllegalTransition { id: String, from: &'static str, to: &'static str, allowed: String },
    #[error("ticket {0:?} exists with different content")]
    IdConflict(String),
    #[error("the stock change was refused for SKU {sku:?}: {code}")]
    Stock { sku: String, code: &'static str },
    #[error("{0} tickets are kept at most")]
    TooMany(usize),
}

impl TicketError {
    /// The stable error code the API answers with.
    pub fn code(&self) -> &'static str {
        match self {
            TicketError::Invalid(_) => "invalid_argument",
            TicketError::NotFound(_) => "not_found",
            TicketError::UnknownOrder(_) => "unknown_order",
            TicketError::NotSold { .. } => "not_sold",
            TicketError::OverReturn { .. } => "over_return",
            TicketError::IllegalTransition { .. } => "illegal_transition",
            TicketError::IdConflict(_) => "id_conflict",
            TicketError::Stock { code, .. } => code,
            TicketError::TooMany(_) => "too_many_tickets",
        }
    }
}

fn invalid(message: impl Into<String>) -> TicketError {
    TicketError::Invalid(message.into())
}

fn check_tag(name: &str, value: &str, required: bool) -> Result<(), TicketError> {
    if value.len() > TICKET_TAG_BYTES_MAX || (required && value.trim().is_empty()) {
        let range = if required { "1" } else { "0" };
        return Err(invalid(format!("{name} must have {range}..={TICKET_TAG_BYTES_MAX} bytes")));
    }
    Ok(())
}

fn check_text(name: &str, value: &str, required: bool) -> Result<(), TicketError> {
    if value.len() > TICKET_TEXT_BYTES_MAX || (required && value.trim().is_empty()) {
        let range = if required { "1" } else { "0" };
        return Err(invalid(format!("{name} must have {range}..={TICKET_TEXT_BYTES_MAX} bytes")));
    }
    Ok(())
}

/// Checks a list of lines: 1..=64 of them, each SKU once with a quantity of at least 1.
pub fn check_lines(name: &str, lines: &[Line]) -> Result<(), TicketError> {
    if lines.is_empty() || lines.len() > TICKET_LINES_MAX {
        return Err(invalid(format!("{name} must have 1..={TICKET_LINES_MAX} lines")));
    }
    for (index, line) in lines.iter().enumerate() {
        check_tag("sku", &line.sku, true)?;
        if line.qty == 0 {
            return Err(invalid(format!("{name}[{index}]: qty must be at least 1")));
        }
        if lines[..index].iter().any(|l| l.sku == line.sku) {
            return Err(invalid(format!("{name}: SKU {:?} listed twice", line.sku)));
        }
    }
    Ok(())
}

/// Checks everything about a command that does not depend on the state.
pub fn check_command(command: &AftersalesCommand) -> Result<(), TicketError> {
    check_fields(command)?;
    let json = serde_json::to_vec(command).expect("a command serialises");
    if json.len() > COMMAND_JSON_BYTES_MAX {
        return Err(invalid(format!("the request is over {COMMAND_JSON_BYTES_MAX} bytes")));
    }
    Ok(())
}

fn check_fields(command: &AftersalesCommand) -> Result<(), TicketError> {
    match command {
        AftersalesCommand::Open(open) => {
            if open.id.len() > TICKET_ID_BYTES_MAX {
                return Err(invalid(format!("id must have at most {TICKET_ID_BYTES_MAX} bytes")));
            }
            check_tag("order", &open.order, true)?;
            check_tag("customer", &open.customer, false)?;
            check_tag("tracking", &open.tracking, false)?;
            check_tag("actor", &open.actor, true)?;
            check_text("reason", &open.reason, true)?;
            check_lines("lines", &open.lines)
        }
        AftersalesCommand::Move { ticket, step, actor, note } => {
            if ticket.is_empty() || ticket.len() > TICKET_ID_BYTES_MAX {
                return Err(invalid(format!("ticket must have 1..={TICKET_ID_BYTES_MAX} bytes")));
            }
            check_tag("actor", actor, true)?;
            check_text("note", note, false)?;
            match step {
                Step::AwaitingReturn { tracking } => check_tag("tracking", tracking, false),
                Step::Received { via } => check_tag("via", via, false),
                Step::Inspected { lines } => {
                    if lines.is_empty() || lines.len() > TICKET_LINES_MAX {
                        return Err(invalid(format!(
                            "an inspection must have 1..={TICKET_LINES_MAX} lines"
                        )));
                    }
                    for line in lines {
                        check_tag("sku", &line.sku, true)?;
                        check_tag("location", &line.location, false)?;
                    }
                    Ok(())
                }
                Step::Exchanged { lines } => check_lines("replacement lines", lines),
                Step::Approved | Step::Rejected | Step::Refunded | Step::Closed => Ok(()),
            }
        }
        AftersalesCommand::Scan { code, actor, note } => {
            check_tag("code", code, true)?;
            check_tag("actor", actor, true)?;
            check_text("note", note, false)
        }
    }
}

/// What an order sold, as the engine reports it for a new ticket.
pub enum Sold {
    /// Confirmed (or shipped) units per SKU.
    Lines(Vec<(String, u32)>),
    /// The order exists but sold nothing returnable (held, released, expired).
    Not(&'static str),
    Unknown,
}

/// The outcome of a scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scanned {
    /// The ticket the parcel belongs to, now received.
    Ticket { ticket: Box<Ticket> },
    /// No ticket matched: the parcel is recorded for follow-up.
    Unmatched { parcel: Parcel },
}

/// All tickets, with the indexes scans and returns are checked by.
#[derive(Debug, Default)]
pub struct Aftersales {
    tickets: BTreeMap<String, Ticket>,
    by_tracking: HashMap<String, String>,
    by_order: HashMap<String, Vec<String>>,
    /// Unmatched parcels, oldest first.
    parcels: Vec<Parcel>,
    /// Damaged units returned per SKU (the sum over inspected tickets).
    damaged: HashMap<String, u64>,
    /// Sequence of generated ticket ids and of parcels.
    next_seq: u64,
}

/// The after-sales part of a snapshot (format version 4). The indexes and damaged counts are
/// rebuilt from the tickets on load.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct AftersalesImage {
    pub tickets: Vec<Ticket>,
    pub parcels: Vec<Parcel>,
    pub next_seq: u64,
}

impl Aftersales {
    pub fn ticket(&self, id: &str) -> Option<&Ticket> {
        self.tickets.get(id)
    }

    pub fn tickets(&self) -> impl DoubleEndedIterator<Item = &Ticket> {
        self.tickets.values()
    }

    /// Tickets with ids after `after`, in id order.
    pub fn tickets_after<'a>(&'a self, after: &str) -> impl Iterator<Item = &'a Ticket> + 'a {
        use std::ops::Bound::{Excluded, Unbounded};
        self.tickets.range::<str, _>((Excluded(after), Unbounded)).map(|(_, t)| t)
    }

    pub fn parcels(&self) -> &[Parcel] {
        &self.parcels
    }

    /// Damaged units returned for a SKU.
    pub fn damaged(&self, sku: &str) -> u64 {
        self.damaged.get(sku).copied().unwrap_or(0)
    }

    /// Units of `sku` that tickets of `order` other than `except` claim.
    fn claimed(&self, order: &str, sku: &str, except: &str) -> u32 {
        let ids = self.by_order.get(order).map_or(&[][..], Vec::as_slice);
        ids.iter()
            .filter(|id| id.as_str() != except)
            .filter_map(|id| self.tickets.get(id))
            .filter(|t| t.claims())
            .flat_map(|t| t.lines.iter().filter(|l| l.sku == sku))
            .map(|l| l.qty)
            .sum()
    }

    /// Opens a ticket for an order that sold `sold`. Returns the ticket and whether it is new
    /// (false: an idempotent repeat, nothing changed).
    pub fn open(
        &mut self,
        open: &OpenTicket,
        sold: Sold,
        now_ms: u64,
    ) -> Result<(Ticket, bool), TicketError> {
        if let Some(existing) = self.tickets.get(&open.id) {
            let same = existing.kind == open.kind
                && existing.order == open.order
                && existing.customer == open.customer
                && existing.reason == open.reason
                && existing.lines.len() == open.lines.len()
                && existing
                    .lines
                    .iter()
                    .zip(&open.lines)
                    .all(|(a, b)| a.sku == b.sku && a.qty == b.qty);
            return if same {
                Ok((existing.clone(), false))
            } else {
                Err(TicketError::IdConflict(open.id.clone()))
            };
        }
        if self.tickets.len() >= TICKETS_MAX {
            return Err(TicketError::TooMany(TICKETS_MAX));
        }
        let sold = match sold {
            Sold::Lines(lines) => lines,
            Sold::Not(state) => {
                return Err(TicketError::NotSold { order: open.order.clone(), state })
            }
            Sold::Unknown => return Err(TicketError::UnknownOrder(open.order.clone())),
        };
        for line in &open.lines {
            let sold_qty =
                sold.iter().filter(|(sku, _)| *sku == line.sku).map(|(_, qty)| *qty).sum::<u32>();
            let claimed = self.claimed(&open.order, &line.sku, &open.id);
            if u64::from(line.qty) + u64::from(claimed) > u64::from(sold_qty) {
                return Err(TicketError::OverReturn {
                    order: open.order.clone(),
                    sku: line.sku.clone(),
                    sold: sold_qty,
                    claimed,
                    asked: line.qty,
                });
            }
        }
        if !open.tracking.is_empty() && self.by_tracking.contains_key(&open.tracking) {
            return Err(invalid(format!(
                "tracking number {:?} is already on another ticket",
                open.tracking
            )));
        }
        let id = if open.id.is_empty() {
            // Generated ids never collide with each other; a client may have taken one.
            loop {
                self.next_seq += 1;
                let id = format!("RMA-{:08}", self.next_seq);
                if !self.tickets.contains_key(&id) {
                    break id;
                }
            }
        } else {
            open.id.clone()
        };
        let ticket = Ticket {
            id: id.clone(),
            kind: open.kind,
            order: open.order.clone(),
            customer: open.customer.clone(),
            reason: open.reason.clone(),
            tracking: open.tracking.clone(),
            lines: open
                .lines
                .iter()
                .map(|l| TicketLine {
                    sku: l.sku.clone(),
                    qty: l.qty,
                    restockable: 0,
                    damaged: 0,
                    location: String::new(),
                })
                .collect(),
            state: TicketState::Requested,
            created_at_ms: now_ms,
            history: vec![Transition {
                to: TicketState::Requested,
                at_ms: now_ms,
                actor: open.actor.clone(),
                note: open.reason.clone(),
            }],
            received_via: String::new(),
            replacement: String::new(),
            replacement_lines: Vec::new(),
        };
        self.insert(ticket.clone());
        Ok((ticket, true))
    }

    fn insert(&mut self, ticket: Ticket) {
        if !ticket.tracking.is_empty() {
            self.by_tracking.insert(ticket.tracking.clone(), ticket.id.clone());
        }
        self.by_order.entry(ticket.order.clone()).or_default().push(ticket.id.clone());
        for line in &ticket.lines {
            if line.damaged > 0 {
                *self.damaged.entry(line.sku.clone()).or_default() += u64::from(line.damaged);
            }
        }
        self.tickets.insert(ticket.id.clone(), ticket);
    }

    /// Checks that ticket `id` may take `step`, and everything about the step that depends
    /// only on the ticket. Returns the ticket as it is.
    pub fn check_move(&self, id: &str, step: &Step) -> Result<&Ticket, TicketError> {
        let ticket = self.tickets.get(id).ok_or_else(|| TicketError::NotFound(id.to_string()))?;
        let to = step.state();
        let allowed = ticket.state.next(ticket.kind);
        if !allowed.contains(&to) {
            let names: Vec<&str> = allowed.iter().map(|s| s.name()).collect();
            return Err(TicketError::IllegalTransition {
                id: id.to_string(),
                from: ticket.state.name(),
                to: to.name(),
                allowed: if names.is_empty() { "nothing".into() } else { names.join(" or ") },
            });
        }
        if ticket.history.len() >= HISTORY_MAX {
            return Err(invalid(format!("ticket {id} has {HISTORY_MAX} steps already")));
        }
        match step {
            Step::AwaitingReturn { tracking }
                if self.by_tracking.get(tracking).is_some_and(|other| other != id) =>
            {
                return Err(invalid(format!(
                    "tracking number {tracking:?} is already on another ticket"
                )));
            }
            Step::Inspected { lines } => {
                for line in &ticket.lines {
                    let found: Vec<&Inspection> =
                        lines.iter().filter(|l| l.sku == line.sku).collect();
                    let [found] = found[..] else {
                        return Err(invalid(format!(
                            "the inspection must list SKU {:?} exactly once",
                            line.sku
                        )));
                    };
                    if u64::from(found.restockable) + u64::from(found.damaged)
                        != u64::from(line.qty)
                    {
                        return Err(invalid(format!(
                            "SKU {:?}: {} restockable + {} damaged must account for the {} \
                             returned",
                            line.sku, found.restockable, found.damaged, line.qty
                        )));
                    }
                }
                if let Some(extra) =
                    lines.iter().find(|l| !ticket.lines.iter().any(|t| t.sku == l.sku))
                {
                    return Err(invalid(format!("SKU {:?} is not on the ticket", extra.sku)));
                }
            }
            _ => {}
        }
        Ok(ticket)
    }

    /// Records a step that `check_move` accepted (and whose stock effect, if any, is done).
    pub fn commit_move(
        &mut self,
        id: &str,
        step: &Step,
        actor: &str,
        note: &str,
        now_ms: u64,
    ) -> Ticket {
        let ticket = self.tickets.get_mut(id).expect("checked by check_move");
        match step {
            Step::AwaitingReturn { tracking } if !tracking.is_empty() => {
                if !ticket.tracking.is_empty() {
                    self.by_tracking.remove(&ticket.tracking);
                }
                ticket.tracking = tracking.clone();
                self.by_tracking.insert(tracking.clone(), id.to_string());
            }
            Step::Received { via } => ticket.received_via = via.clone(),
            Step::Inspected { lines } => {
                for line in &mut ticket.lines {
                    let found = lines.iter().find(|l| l.sku == line.sku).expect("checked");
                    line.restockable = found.restockable;
                    line.damaged = found.damaged;
                    line.location = found.location.clone();
                    if found.damaged > 0 {
                        *self.damaged.entry(line.sku.clone()).or_default() +=
                            u64::from(found.damaged);
                    }
                }
            }
            Step::Exchanged { lines } => {
                ticket.replacement = replacement_id(id);
                ticket.replacement_lines = lines.clone();
            }
            _ => {}
        }
        ticket.state = step.state();
        ticket.history.push(Transition {
            to: step.state(),
            at_ms: now_ms,
            actor: actor.to_string(),
            note: note.to_string(),
        });
        ticket.clone()
    }

    /// The ticket a scanned code belongs to: the one with that tracking number, else the
    /// order's ticket awaiting its return (the oldest, if several).
    pub fn match_scan(&self, code: &str) -> Option<&Ticket> {
        if let Some(ticket) = self.by_tracking.get(code).and_then(|id| self.tickets.get(id)) {
            return Some(ticket);
        }
        let ids = self.by_order.get(code)?;
        let tickets = ids.iter().filter_map(|id| self.tickets.get(id));
        let mut awaiting = tickets.clone().filter(|t| t.state == TicketState::AwaitingReturn);
        awaiting.next().or_else(|| tickets.clone().find(|t| t.state.is_open()))
    }

    /// Records a parcel no ticket matched.
    pub fn record_parcel(&mut self, code: &str, actor: &str, note: &str, now_ms: u64) -> Parcel {
        self.next_seq += 1;
        let parcel = Parcel {
            seq: self.next_seq,
            code: code.to_string(),
            at_ms: now_ms,
            actor: actor.to_string(),
            note: note.to_string(),
        };
        if self.parcels.len() >= PARCELS_MAX {
            self.parcels.remove(0);
        }
        self.parcels.push(parcel.clone());
        parcel
    }

    pub fn image(&self) -> AftersalesImage {
        AftersalesImage {
            tickets: self.tickets.values().cloned().collect(),
            parcels: self.parcels.clone(),
            next_seq: self.next_seq,
        }
    }

    /// Rebuilds the state from a snapshot image, checking that it could have been made.
    pub fn from_image(image: &AftersalesImage) -> Result<Aftersales, String> {
        let mut state = Aftersales { next_seq: image.next_seq, ..Aftersales::default() };
        for ticket in &image.tickets {
            let first = ticket.history.first();
            let consistent = first.is_some_and(|t| t.to == TicketState::Requested)
                && ticket.history.last().is_some_and(|t| t.to == ticket.state)
                && ticket.history.windows(2).all(|w| {
                    w[0].to.next(ticket.kind).contains(&w[1].to) && w[0].at_ms <= w[1].at_ms
                })
                && !ticket.lines.is_empty()
                && ticket
                    .lines
                    .iter()
                    .all(|l| u64::from(l.restockable) + u64::from(l.damaged) <= u64::from(l.qty));
            if !consistent {
                return Err(format!("ticket {:?} has an impossible history or lines", ticket.id));
            }
            if state.tickets.contains_key(&ticket.id) {
                return Err(format!("ticket {:?} twice", ticket.id));
            }
            if !ticket.tracking.is_empty() && state.by_tracking.contains_key(&ticket.tracking) {
                return Err(format!("tracking number {:?} on two tickets", ticket.tracking));
            }
            state.insert(ticket.clone());
        }
        if image.parcels.len() > PARCELS_MAX
            || image.parcels.windows(2).any(|w| w[0].seq >= w[1].seq)
            || image.parcels.last().is_some_and(|p| p.seq > image.next_seq)
        {
            return Err("unmatched parcels out of order".into());
        }
        state.parcels = image.parcels.clone();
        Ok(state)
    }
}

/// The reservation id of an exchange's replacement.
pub fn replacement_id(ticket: &str) -> String {
    format!("exchange:{ticket}")
}

#[cfg(test)]
mod tests;
