//! Service levels of tickets: how long each stage may take, which tickets are over their limit
//! now, and a report of how a period's tickets were handled.
//!
//! A ticket's life is cut into three timed stages, each from the step that enters it to the
//! step that leaves it, read from the ticket's history (so the figures need no extra state
//! and come out the same after a restart):
//!
//! | stage    | from                                   | until                        | limit (default) |
//! | -------- | -------------------------------------- | ---------------------------- | --------------- |
//! | `review` | requested                              | approved or rejected         | `review_ms` (24 h) |
//! | `return` | approved (return, exchange)            | received                     | `return_ms` (48 h) |
//! | `refund` | received, or approved for refund_only  | refunded or exchanged        | `refund_ms` (24 h) |
//!
//! A ticket is overdue while it is in a stage longer than the stage's limit (a limit of 0 means
//! none). Overdue tickets are flagged in the API and raise a `ticket_overdue` alert through the
//! alerting module (escalated like every alert).

use serde::{Deserialize, Serialize};

use super::{Ticket, TicketKind, TicketState};

/// Limits per stage (the `[aftersales]` section of the configuration).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlaConfig {
    pub review_ms: u64,
    pub return_ms: u64,
    pub refund_ms: u64,
}

impl Default for SlaConfig {
    fn default() -> SlaConfig {
        const HOUR_MS: u64 = 3_600_000;
        SlaConfig { review_ms: 24 * HOUR_MS, return_ms: 48 * HOUR_MS, refund_ms: 24 * HOUR_MS }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Review,
    Return,
    Refund,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::Review, Stage::Return, Stage::Refund];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Review => "review",
            Stage::Return => "return",
            Stage::Refund => "refund",
        }
    }

    fn of(kind: TicketKind, state: TicketState) -> Option<Stage> {
        match (state, kind) {
            (TicketState::Requested, _) => Some(Stage::Review),
            (TicketState::Approved, TicketKind::RefundOnly) => Some(Stage::Refund),
            (TicketState::Approved | TicketState::AwaitingReturn, _) => Some(Stage::Return),
            (TicketState::Received | TicketState::Inspected, _) => Some(Stage::Refund),
            _ => None,
        }
    }
}

impl SlaConfig {
    pub fn limit_ms(&self, stage: Stage) -> u64 {
        match stage {
            Stage::Review => self.review_ms,
            Stage::Return => self.return_ms,
            Stage::Refund => self.refund_ms,
        }
    }
}

/// A stage a ticket went through: entered at `start_ms`, left at `end_ms` (`None`: still in it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub stage: Stage,
    pub start_ms: u64,
    pub end_ms: Option<u64>,
}

/// The timed stages of a ticket, in order.
pub fn spans(ticket: &Ticket) -> Vec<Span> {
    let mut spans: Vec<Span> = Vec::new();
    for step in &ticket.history {
        let stage = Stage::of(ticket.kind, step.to);
        if let Some(span) = spans.last_mut().filter(|s| s.end_ms.is_none()) {
            if Some(span.stage) == stage {
                continue;
            }
            span.end_ms = Some(step.at_ms);
        }
        if let Some(stage) = stage {
            spans.push(Span { stage, start_ms: step.at_ms, end_ms: None });
        }
    }
    spans
}

/// A ticket over its current stage's limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Overdue {
    pub stage: Stage,
    pub due_at_ms: u64,
}

/// Whether `ticket` is over its current stage's limit at `now_ms`.
pub fn overdue(ticket: &Ticket, config: &SlaConfig, now_ms: u64) -> Option<Overdue> {
    let span = spans(ticket).pop().filter(|s| s.end_ms.is_none())?;
    let limit = config.limit_ms(span.stage);
    let due_at_ms = span.start_ms.saturating_add(limit);
    (limit > 0 && now_ms > due_at_ms).then_some(Overdue { stage: span.stage, due_at_ms })
}

/// How one stage was handled in a period.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StageReport {
    pub stage: Stage,
    pub limit_ms: u64,
    /// Tickets that left the stage in the period.
    pub handled: u64,
    pub within_sla: u64,
    /// `within_sla / handled` (1 when nothing was handled).
    pub within_share: f64,
    pub mean_ms: u64,
    /// 90th percentile (nearest rank) of the time spent in the stage.
    pub p90_ms: u64,
    /// Tickets in the stage now and over its limit.
    pub overdue_now: u64,
}

/// The report over `[from_ms, to_ms)`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub from_ms: u64,
    pub to_ms: u64,
    pub created: u64,
    /// Distinct tickets that finished at least one stage in the period.
    pub handled: u64,
    pub closed: u64,
    pub stages: Vec<StageReport>,
}

pub fn report<'a>(
    tickets: impl Iterator<Item = &'a Ticket>,
    config: &SlaConfig,
    from_ms: u64,
    to_ms: u64,
    now_ms: u64,
) -> Report {
    let in_period = |at: u64| from_ms <= at && at < to_ms;
    let mut durations: [Vec<u64>; 3] = Default::default();
    let mut within = [0u64; 3];
    let mut overdue_now = [0u64; 3];
    let (mut created, mut handled, mut closed) = (0, 0, 0);
    for ticket in tickets {
        created += u64::from(in_period(ticket.created_at_ms));
        closed += u64::from(
            ticket.history.iter().any(|t| t.to == TicketState::Closed && in_period(t.at_ms)),
        );
        let mut counted = false;
        for span in spans(ticket) {
            let index = span.stage as usize;
            let limit = config.limit_ms(span.stage);
            match span.end_ms {
                Some(end) if in_period(end) => {
                    let took = end - span.start_ms;
                    durations[index].push(took);
                    within[index] += u64::from(limit == 0 || took <= limit);
                    counted = true;
                }
                None if limit > 0 && now_ms > span.start_ms.saturating_add(limit) => {
                    overdue_now[index] += 1;
                }
                _ => {}
            }
        }
        handled += u64::from(counted);
    }
    let stages = Stage::ALL
        .iter()
        .map(|&stage| {
            let index = stage as usize;
            let times = &mut durations[index];
            times.sort_unstable();
            let count = times.len() as u64;
            let mean_ms = times.iter().sum::<u64>().checked_div(count).unwrap_or(0);
            // Nearest rank: the smallest value with at least 90% of the values at or below it.
            let p90_ms = match count {
                0 => 0,
                n => times[((n * 9).div_ceil(10) as usize).saturating_sub(1)],
            };
            StageReport {
                stage,
                limit_ms: config.limit_ms(stage),
                handled: count,
                within_sla: within[index],
                within_share: if count == 0 { 1.0 } else { within[index] as f64 / count as f64 },
                mean_ms,
                p90_ms,
                overdue_now: overdue_now[index],
            }
        })
        .collect();
    Report { from_ms, to_ms, created, handled, closed, stages }
}
