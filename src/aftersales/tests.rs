//! The ticket rules through the engine: lifecycle, every illegal step, over-return, scans,
//! stock effects, exchange, SLA figures, and the snapshot image.

use bytes::Bytes;
use stockd_protocol::{Confirm, Line as WireLine, Reserve, ResultCode};

use super::sla::{self, SlaConfig, Stage};
use super::*;
use crate::engine::{Command, Engine, EngineConfig, TicketOutcome as Outcome};

const HOUR_MS: u64 = 3_600_000;

/// An engine with SKUs a (10 on hand) and b (5), and order o1 confirmed for 3 a + 2 b.
fn engine() -> Engine {
    let engine = Engine::new(EngineConfig { shards: 4, ..EngineConfig::default() });
    for (sku, on_hand) in [("a", 10), ("b", 5)] {
        let set = Command::SetStock { sku: Bytes::from(sku), on_hand, expected: None };
        engine.apply(&set, 0, || {});
    }
    order(&engine, "o1", &[("a", 3), ("b", 2)]);
    engine
}

fn order(engine: &Engine, id: &str, lines: &[(&str, u32)]) {
    let lines: Vec<WireLine> = lines
        .iter()
        .map(|(sku, qty)| WireLine { sku: Bytes::from(sku.to_string()), qty: *qty })
        .collect();
    let reserve = Command::Reserve(Reserve {
        id: Bytes::from(id.to_string()),
        ttl_ms: 0,
        channel: Bytes::new(),
        customer: Bytes::from_static(b"c1"),
        lines,
    });
    engine.apply(&reserve, 0, || {});
    let confirm = Command::Confirm(Confirm { id: Bytes::from(id.to_string()), lines: Vec::new() });
    engine.apply(&confirm, 0, || {});
}

fn open(kind: TicketKind, order: &str, lines: &[(&str, u32)]) -> AftersalesCommand {
    AftersalesCommand::Open(OpenTicket {
        id: String::new(),
        kind,
        order: order.into(),
        lines: lines.iter().map(|(sku, qty)| Line { sku: sku.to_string(), qty: *qty }).collect(),
        customer: "c1".into(),
        reason: "too small".into(),
        tracking: String::new(),
        actor: "cs-anna".into(),
    })
}

fn step(ticket: &str, step: Step) -> AftersalesCommand {
    AftersalesCommand::Move {
        ticket: ticket.into(),
        step,
        actor: "wh-bo".into(),
        note: String::new(),
    }
}

/// Applies a command, counting log appends; panics on an error.
fn run(engine: &Engine, command: &AftersalesCommand, now_ms: u64) -> (Outcome, bool) {
    let mut logged = false;
    let outcome = engine.aftersales(command, now_ms, || logged = true).expect("applies");
    (outcome, logged)
}

fn refused(engine: &Engine, command: &AftersalesCommand, now_ms: u64) -> TicketError {
    let mut logged = false;
    let error = engine.aftersales(command, now_ms, || logged = true).expect_err("refused");
    assert!(!logged, "a refusal logs nothing");
    error
}

fn opened(engine: &Engine, command: &AftersalesCommand, now_ms: u64) -> Ticket {
    match run(engine, command, now_ms) {
        (Outcome::Opened { ticket, created: true }, true) => ticket,
        other => panic!("not opened: {other:?}"),
    }
}

fn on_hand(engine: &Engine, sku: &str) -> u64 {
    engine.query_sku(sku.as_bytes(), 0).info.on_hand
}

fn inspect(lines: &[(&str, u32, u32)]) -> Step {
    Step::Inspected {
        lines: lines
            .iter()
            .map(|(sku, restockable, damaged)| Inspection {
                sku: sku.to_string(),
                restockable: *restockable,
                damaged: *damaged,
                location: String::new(),
            })
            .collect(),
    }
}

#[test]
fn a_return_goes_through_its_whole_life_and_restocks() {
    let engine = engine();
    let ticket = opened(&engine, &open(TicketKind::Return, "o1", &[("a", 2), ("b", 1)]), 10);
    assert_eq!(ticket.id, "RMA-00000001");
    assert_eq!(ticket.state, TicketState::Requested);
    let id = ticket.id.as_str();
    let tracking = Step::AwaitingReturn { tracking: "TRK1".into() };
    for (at, s) in
        [(20, Step::Approved), (30, tracking), (40, Step::Received { via: "hand".into() })]
    {
        run(&engine, &step(id, s), at);
    }
    let (a, b) = (on_hand(&engine, "a"), on_hand(&engine, "b"));
    let (outcome, logged) = run(&engine, &step(id, inspect(&[("a", 2, 0), ("b", 0, 1)])), 50);
    assert!(logged);
    let Outcome::Moved(ticket) = outcome else { panic!("moved") };
    assert_eq!((ticket.lines[0].restockable, ticket.lines[1].damaged), (2, 1));
    assert_eq!(on_hand(&engine, "a"), a + 2, "restockable units are back on hand");
    assert_eq!(on_hand(&engine, "b"), b, "damaged units are not");
    assert_eq!(engine.with_aftersales(|s| (s.damaged("b"), s.damaged("a"))), (1, 0));
    run(&engine, &step(id, Step::Refunded), 60);
    let (Outcome::Moved(ticket), _) = run(&engine, &step(id, Step::Closed), 70) else {
        panic!("moved")
    };
    let states: Vec<(TicketState, u64)> = ticket.history.iter().map(|t| (t.to, t.at_ms)).collect();
    use TicketState::*;
    assert_eq!(
        states,
        [
            (Requested, 10),
            (Approved, 20),
            (AwaitingReturn, 30),
            (Received, 40),
            (Inspected, 50),
            (Refunded, 60),
            (Closed, 70)
        ]
    );
    assert_eq!(ticket.history[1].actor, "wh-bo");
    assert_eq!(ticket.tracking, "TRK1");
}

#[test]
fn every_illegal_step_is_refused_and_names_the_allowed_ones() {
    let all_steps = || {
        vec![
            Step::Approved,
            Step::Rejected,
            Step::AwaitingReturn { tracking: String::new() },
            Step::Received { via: String::new() },
            inspect(&[("a", 1, 0)]),
            Step::Refunded,
            Step::Exchanged { lines: vec![Line { sku: "a".into(), qty: 1 }] },
            Step::Closed,
        ]
    };
    // Walk each kind along its path; at every state try every step the table forbids.
    let paths: [(TicketKind, Vec<Step>); 3] = [
        (
            TicketKind::Return,
            vec![
                Step::Approved,
                Step::AwaitingReturn { tracking: String::new() },
                Step::Received { via: String::new() },
                inspect(&[("a", 1, 0)]),
                Step::Refunded,
                Step::Closed,
            ],
        ),
        (
            TicketKind::Exchange,
            vec![
                Step::Approved,
                Step::AwaitingReturn { tracking: String::new() },
                Step::Received { via: String::new() },
                inspect(&[("a", 1, 0)]),
                Step::Exchanged { lines: vec![Line { sku: "a".into(), qty: 1 }] },
                Step::Closed,
            ],
        ),
        (TicketKind::RefundOnly, vec![Step::Rejected, Step::Closed]),
    ];
    let mut refusals = 0;
    for (kind, path) in paths {
        let engine = engine();
        let id = opened(&engine, &open(kind, "o1", &[("a", 1)]), 0).id;
        for next in path {
            let state = engine.with_aftersales(|s| s.ticket(&id).expect("exists").state);
            for candidate in all_steps() {
                if state.next(kind).contains(&candidate.state()) {
                    continue;
                }
                let error = refused(&engine, &step(&id, candidate.clone()), 1);
                let TicketError::IllegalTransition { from, to, .. } = &error else {
                    panic!("{error}")
                };
                assert_eq!((*from, *to), (state.name(), candidate.state().name()));
                assert_eq!(error.code(), "illegal_transition");
                refusals += 1;
            }
            run(&engine, &step(&id, next), 1);
        }
        let closed = engine.with_aftersales(|s| s.ticket(&id).expect("exists").state);
        assert_eq!(closed, TicketState::Closed);
        let error = refused(&engine, &step(&id, Step::Approved), 2);
        assert!(error.to_string().contains("can go to nothing"), "{error}");
    }
    assert!(refusals > 40, "{refusals} refusals checked");
    // Refund-only skips the parcel: approved goes straight to refunded.
    let engine = engine();
    let id = opened(&engine, &open(TicketKind::RefundOnly, "o1", &[("a", 1)]), 0).id;
    run(&engine, &step(&id, Step::Approved), 1);
    let error = refused(&engine, &step(&id, Step::AwaitingReturn { tracking: String::new() }), 2);
    assert!(error.to_string().contains("can go to refunded"), "{error}");
    run(&engine, &step(&id, Step::Refunded), 2);
}

#[test]
fn more_than_was_sold_cannot_be_returned() {
    let engine = engine();
    let error = refused(&engine, &open(TicketKind::Return, "o1", &[("a", 4)]), 0);
    assert_eq!(error.code(), "over_return");
    assert!(error.to_string().contains("confirmed 3 of SKU \"a\""), "{error}");
    let error = refused(&engine, &open(TicketKind::Return, "o1", &[("c", 1)]), 0);
    assert_eq!(error.code(), "over_return", "a SKU the order did not sell");
    // Two tickets together may not exceed it either; a rejected one gives its units back.
    let first = opened(&engine, &open(TicketKind::Return, "o1", &[("a", 2)]), 0).id;
    let error = refused(&engine, &open(TicketKind::Exchange, "o1", &[("a", 2)]), 0);
    assert!(error.to_string().contains("other tickets claim 2"), "{error}");
    run(&engine, &step(&first, Step::Rejected), 1);
    opened(&engine, &open(TicketKind::Exchange, "o1", &[("a", 3)]), 2);
    // Unknown orders and orders not sold.
    assert_eq!(
        refused(&engine, &open(TicketKind::Return, "nope", &[("a", 1)]), 0).code(),
        "unknown_order"
    );
    let hold = Command::Reserve(Reserve {
        id: Bytes::from_static(b"held"),
        ttl_ms: 0,
        channel: Bytes::new(),
        customer: Bytes::new(),
        lines: vec![WireLine { sku: Bytes::from_static(b"a"), qty: 1 }],
    });
    engine.apply(&hold, 0, || {});
    let error = refused(&engine, &open(TicketKind::Return, "held", &[("a", 1)]), 0);
    assert_eq!(error.code(), "not_sold");
    assert!(error.to_string().contains("is held"), "{error}");
    // Bad input.
    for bad in [
        open(TicketKind::Return, "o1", &[]),
        open(TicketKind::Return, "o1", &[("a", 0)]),
        open(TicketKind::Return, "o1", &[("a", 1), ("a", 1)]),
        open(TicketKind::Return, "", &[("a", 1)]),
    ] {
        assert_eq!(refused(&engine, &bad, 0).code(), "invalid_argument");
    }
}

#[test]
fn a_given_id_makes_opening_idempotent() {
    let engine = engine();
    let mut command = open(TicketKind::Return, "o1", &[("a", 1)]);
    let AftersalesCommand::Open(inner) = &mut command else { unreachable!() };
    inner.id = "shop-77".into();
    let first = opened(&engine, &command, 0);
    let (again, logged) = run(&engine, &command, 5);
    assert!(!logged, "a repeat logs nothing");
    assert!(matches!(again, Outcome::Opened { ticket, created: false } if ticket == first));
    let AftersalesCommand::Open(inner) = &mut command else { unreachable!() };
    inner.lines[0].qty = 2;
    assert_eq!(refused(&engine, &command, 6).code(), "id_conflict");
}

#[test]
fn scans_match_by_tracking_number_then_order_id_or_are_kept_unmatched() {
    let engine = engine();
    order(&engine, "o2", &[("a", 1)]);
    let by_tracking = opened(&engine, &open(TicketKind::Return, "o1", &[("a", 1)]), 0).id;
    let by_order = opened(&engine, &open(TicketKind::Return, "o2", &[("a", 1)]), 0).id;
    for id in [&by_tracking, &by_order] {
        run(&engine, &step(id, Step::Approved), 1);
    }
    run(&engine, &step(&by_tracking, Step::AwaitingReturn { tracking: "1Z999".into() }), 2);
    run(&engine, &step(&by_order, Step::AwaitingReturn { tracking: String::new() }), 2);
    let scan = |code: &str| AftersalesCommand::Scan {
        code: code.into(),
        actor: "dock-1".into(),
        note: String::new(),
    };
    for (code, id) in [("1Z999", &by_tracking), ("o2", &by_order)] {
        let (Outcome::Scanned(Scanned::Ticket { ticket }), true) = run(&engine, &scan(code), 3)
        else {
            panic!("{code} matched nothing")
        };
        assert_eq!((&ticket.id, ticket.state), (id, TicketState::Received));
        assert_eq!(ticket.received_via, code);
        assert_eq!(ticket.history.last().expect("a step").actor, "dock-1");
    }
    // Scanned again: the ticket is found but already received.
    assert_eq!(refused(&engine, &scan("1Z999"), 4).code(), "illegal_transition");
    let (Outcome::Scanned(Scanned::Unmatched { parcel }), true) =
        run(&engine, &scan("UNKNOWN-9"), 5)
    else {
        panic!("matched")
    };
    assert_eq!((parcel.code.as_str(), parcel.at_ms), ("UNKNOWN-9", 5));
    assert_eq!(engine.with_aftersales(|s| s.parcels().to_vec()), [parcel]);
}

#[test]
fn an_exchange_makes_a_confirmed_replacement_or_changes_nothing() {
    let engine = engine();
    let id = opened(&engine, &open(TicketKind::Exchange, "o1", &[("a", 1)]), 0).id;
    for s in [
        Step::Approved,
        Step::AwaitingReturn { tracking: String::new() },
        Step::Received { via: String::new() },
        inspect(&[("a", 0, 1)]),
    ] {
        run(&engine, &step(&id, s), 1);
    }
    let before = engine.query_sku(b"b", 2).info;
    let too_many = Step::Exchanged { lines: vec![Line { sku: "b".into(), qty: 99 }] };
    let error = refused(&engine, &step(&id, too_many), 2);
    assert_eq!(error.code(), "insufficient_stock");
    assert_eq!(engine.query_sku(b"b", 2).info, before, "a refused exchange changes nothing");
    let (Outcome::Moved(ticket), true) = run(
        &engine,
        &step(&id, Step::Exchanged { lines: vec![Line { sku: "b".into(), qty: 1 }] }),
        3,
    ) else {
        panic!("moved")
    };
    assert_eq!(ticket.replacement, "exchange:RMA-00000001");
    let replacement = engine.query_reservation(ticket.replacement.as_bytes(), 3);
    let info = replacement.info.expect("the replacement exists");
    assert_eq!(info.state, stockd_protocol::ReservationState::Confirmed);
    assert_eq!((&info.channel[..], &info.customer[..]), (&b"aftersales"[..], &b"c1"[..]));
    assert_eq!(info.lines[0].qty_confirmed, 1);
    let after = engine.query_sku(b"b", 3).info;
    assert_eq!(after.committed, before.committed + 1);
    assert_eq!(after.available, before.available - 1);
}

#[test]
fn restock_to_a_location_needs_the_location() {
    let engine = engine();
    order(&engine, "o3", &[("a", 1)]);
    let id = opened(&engine, &open(TicketKind::Return, "o3", &[("a", 1)]), 0).id;
    for s in [
        Step::Approved,
        Step::AwaitingReturn { tracking: String::new() },
        Step::Received { via: String::new() },
    ] {
        run(&engine, &step(&id, s), 1);
    }
    let mut at = inspect(&[("a", 1, 0)]);
    let Step::Inspected { lines } = &mut at else { unreachable!() };
    lines[0].location = "north".into();
    assert_eq!(refused(&engine, &step(&id, at.clone()), 2).code(), "unknown_location");
    // An inspection must account for every unit, and only the ticket's SKUs.
    assert_eq!(refused(&engine, &step(&id, inspect(&[("a", 0, 0)])), 2).code(), "invalid_argument");
    let extra = inspect(&[("a", 1, 0), ("b", 1, 0)]);
    assert_eq!(refused(&engine, &step(&id, extra), 2).code(), "invalid_argument");
}

#[test]
fn sla_spans_overdue_flags_and_the_report() {
    let config = SlaConfig::default();
    let engine = engine();
    order(&engine, "o2", &[("a", 3)]);
    // t1: reviewed in 1 h, back in 50 h (late), refunded 10 h after receipt.
    let t1 = opened(&engine, &open(TicketKind::Return, "o1", &[("a", 1)]), 0).id;
    for (at_h, s) in [
        (1, Step::Approved),
        (2, Step::AwaitingReturn { tracking: String::new() }),
        (51, Step::Received { via: String::new() }),
        (55, inspect(&[("a", 1, 0)])),
        (61, Step::Refunded),
    ] {
        run(&engine, &step(&t1, s), at_h * HOUR_MS);
    }
    // t2: reviewed in 30 h (late), then waiting for its parcel since.
    let t2 = opened(&engine, &open(TicketKind::Return, "o2", &[("a", 1)]), 0).id;
    run(&engine, &step(&t2, Step::Approved), 30 * HOUR_MS);
    // t3: refund-only, approved at 2 h and refunded at 4 h.
    let t3 = opened(&engine, &open(TicketKind::RefundOnly, "o2", &[("a", 1)]), 0).id;
    run(&engine, &step(&t3, Step::Approved), 2 * HOUR_MS);
    run(&engine, &step(&t3, Step::Refunded), 4 * HOUR_MS);

    let now = 100 * HOUR_MS;
    let tickets = engine.with_aftersales(|s| s.tickets().cloned().collect::<Vec<_>>());
    let t1_spans = sla::spans(&tickets[0]);
    assert_eq!(
        t1_spans
            .iter()
            .map(|s| (s.stage, s.start_ms / HOUR_MS, s.end_ms.map(|e| e / HOUR_MS)))
            .collect::<Vec<_>>(),
        [(Stage::Review, 0, Some(1)), (Stage::Return, 1, Some(51)), (Stage::Refund, 51, Some(61))]
    );
    assert_eq!(sla::overdue(&tickets[0], &config, now), None, "finished");
    let flagged = sla::overdue(&tickets[1], &config, now).expect("t2 is overdue");
    assert_eq!((flagged.stage, flagged.due_at_ms), (Stage::Return, 78 * HOUR_MS));
    assert_eq!(sla::overdue(&tickets[1], &config, 78 * HOUR_MS), None, "due, not over");

    let report = sla::report(tickets.iter(), &config, 0, now, now);
    assert_eq!((report.created, report.handled, report.closed), (3, 3, 0));
    let [review, ret, refund] = &report.stages[..] else { panic!("three stages") };
    // Review: 1 h, 30 h, 2 h -> 2 of 3 within 24 h; mean 11 h; p90 (nearest rank) 30 h.
    assert_eq!((review.handled, review.within_sla), (3, 2));
    assert_eq!((review.mean_ms, review.p90_ms), (11 * HOUR_MS, 30 * HOUR_MS));
    // Return: t1 took 50 h (over 48 h); t2 is still waiting and overdue now.
    assert_eq!((ret.handled, ret.within_sla, ret.overdue_now), (1, 0, 1));
    assert_eq!(ret.within_share, 0.0);
    // Refund: t1 10 h, t3 2 h, both within 24 h.
    assert_eq!((refund.handled, refund.within_sla, refund.mean_ms), (2, 2, 6 * HOUR_MS));
    assert_eq!(refund.within_share, 1.0);
    // A period that holds only t1's refund.
    let late = sla::report(tickets.iter(), &config, 60 * HOUR_MS, 70 * HOUR_MS, now);
    assert_eq!((late.created, late.handled), (0, 1));
    assert_eq!(late.stages[2].handled, 1);
}

#[test]
fn tickets_survive_the_snapshot_image_and_bad_images_are_refused() {
    let engine = engine();
    let id = opened(&engine, &open(TicketKind::Return, "o1", &[("a", 2)]), 0).id;
    run(&engine, &step(&id, Step::Approved), 1);
    run(
        &engine,
        &AftersalesCommand::Scan {
            code: "lost".into(),
            actor: "dock".into(),
            note: "no label".into(),
        },
        2,
    );
    let image = engine.image();
    assert_eq!(image.aftersales.tickets.len(), 1);
    let loaded = Engine::from_image(EngineConfig { shards: 4, ..EngineConfig::default() }, &image)
        .expect("loads");
    assert_eq!(loaded.image(), image);
    // The rebuilt indexes work: the over-return check sees the loaded ticket.
    let error = refused(&loaded, &open(TicketKind::Return, "o1", &[("a", 2)]), 3);
    assert!(error.to_string().contains("other tickets claim 2"), "{error}");

    let mut bad = image.clone();
    bad.aftersales.tickets[0].state = TicketState::Closed;
    let error = Engine::from_image(EngineConfig::default(), &bad).err().expect("refused");
    assert!(error.to_string().contains("impossible history"), "{error}");
}

#[test]
fn a_replayed_log_gives_the_same_tickets_and_stock() {
    // Every change is one command: applying the logged commands to a fresh engine in order
    // must give the same state, or recovery would diverge.
    let live = engine();
    let replayed = engine();
    let mut log: Vec<(AftersalesCommand, u64)> = Vec::new();
    let mut apply = |command: AftersalesCommand, now_ms: u64| {
        let mut logged = false;
        let _ = live.aftersales(&command, now_ms, || logged = true);
        if logged {
            log.push((command, now_ms));
        }
    };
    apply(open(TicketKind::Exchange, "o1", &[("a", 2)]), 1);
    apply(open(TicketKind::Return, "o1", &[("a", 5)]), 1); // refused
    apply(step("RMA-00000001", Step::Approved), 2);
    // A snapshot's capture started here images the tickets (and stock) as they are now,
    // whatever the later steps change.
    let at_cut = live.image();
    let (capture, ()) = live.capture(|| ());
    apply(step("RMA-00000001", Step::AwaitingReturn { tracking: "T".into() }), 3);
    apply(AftersalesCommand::Scan { code: "T".into(), actor: "d".into(), note: String::new() }, 4);
    apply(step("RMA-00000001", inspect(&[("a", 1, 1)])), 5);
    apply(
        step("RMA-00000001", Step::Exchanged { lines: vec![Line { sku: "b".into(), qty: 1 }] }),
        6,
    );
    assert_eq!(capture.finish().into_image().sorted(), at_cut);
    assert_eq!(log.len(), 6);
    for (command, now_ms) in &log {
        let mut changed = false;
        let code =
            match replayed
                .apply(&Command::Aftersales(Box::new(command.clone())), *now_ms, || changed = true)
            {
                stockd_protocol::OpReply::Release(code) => code,
                other => panic!("{other:?}"),
            };
        assert!(changed && code == ResultCode::Ok, "{command:?} did not replay");
    }
    assert_eq!(replayed.image(), live.image());
}
