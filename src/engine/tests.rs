//! Scenario tests of the engine's rules. The property test against a reference model lives in
//! `tests/it/engine_model.rs`.

use bytes::Bytes;
use stockd_protocol::{Confirm, Line, OpReply, ReservationState, Reserve, ResultCode};

use super::{Command, Engine, EngineConfig};

const T0: u64 = 1_000_000;

fn engine() -> Engine {
    Engine::new(EngineConfig {
        shards: 8,
        ttl_ms_default: 1_000,
        hold_ms_max: 5_000,
        retention_ms: 10_000,
        shipped_retention_ms: 10_000,
    })
}

fn reserve(id: &str, lines: &[(&str, u32)]) -> Command {
    Command::Reserve(Reserve {
        id: Bytes::copy_from_slice(id.as_bytes()),
        ttl_ms: 0,
        channel: Bytes::new(),
        customer: Bytes::new(),
        lines: lines
            .iter()
            .map(|(sku, qty)| Line::new(Bytes::copy_from_slice(sku.as_bytes()), *qty))
            .collect(),
    })
}

fn id(value: &str) -> Bytes {
    Bytes::copy_from_slice(value.as_bytes())
}

/// Applies and reports whether the command changed state.
fn apply(engine: &Engine, command: Command, now: u64) -> (OpReply, bool) {
    let mut changed = false;
    let reply = engine.apply(&command, now, || changed = true);
    (reply, changed)
}

fn stock(engine: &Engine, sku: &str, on_hand: u64) {
    let command = Command::SetStock { sku: id(sku), on_hand, expected: None };
    assert_eq!(apply(engine, command, T0).0.code(), ResultCode::Ok);
}

fn reserved(engine: &Engine, sku: &str, now: u64) -> (u64, u64) {
    let info = engine.query_sku(sku.as_bytes(), now).info;
    (info.reserved, info.available)
}

#[test]
fn multi_line_reserve_is_all_or_nothing() {
    let e = engine();
    stock(&e, "a", 5);
    stock(&e, "b", 1);
    let (reply, changed) = apply(&e, reserve("r1", &[("a", 2), ("b", 2)]), T0);
    let OpReply::Reserve(reply) = reply else { panic!("reserve reply") };
    assert_eq!(reply.code, ResultCode::InsufficientStock);
    assert_eq!(reply.failed_line, Some(1));
    assert!(!changed, "a rejection changes nothing");
    assert_eq!(reserved(&e, "a", T0), (0, 5));
    assert_eq!(e.query_reservation(b"r1", T0).code, ResultCode::NotFound);

    let (reply, _) = apply(&e, reserve("r1", &[("a", 2), ("nope", 1)]), T0);
    let OpReply::Reserve(reply) = reply else { panic!("reserve reply") };
    assert_eq!((reply.code, reply.failed_line), (ResultCode::UnknownSku, Some(1)));
}

#[test]
fn lines_for_one_sku_are_summed() {
    let e = engine();
    stock(&e, "a", 3);
    let (reply, _) = apply(&e, reserve("r1", &[("a", 2), ("a", 2)]), T0);
    assert_eq!(reply.code(), ResultCode::InsufficientStock, "2 + 2 > 3");
    let (reply, _) = apply(&e, reserve("r1", &[("a", 1), ("a", 2)]), T0);
    assert_eq!(reply.code(), ResultCode::Ok);
    assert_eq!(reserved(&e, "a", T0), (3, 0));
    let info = e.query_reservation(b"r1", T0).info.expect("stored");
    assert_eq!(info.lines.len(), 1);
    assert_eq!(info.lines[0].qty_held, 3);
}

#[test]
fn retries_are_idempotent_and_conflicts_detected() {
    let e = engine();
    stock(&e, "a", 10);
    stock(&e, "b", 10);
    let (first, changed) = apply(&e, reserve("r1", &[("a", 2), ("b", 1)]), T0);
    assert!(changed);
    // Same content, lines in another order, later: the original result, nothing changes.
    let (again, changed) = apply(&e, reserve("r1", &[("b", 1), ("a", 2)]), T0 + 10);
    assert_eq!(first, again);
    assert!(!changed);
    assert_eq!(reserved(&e, "a", T0 + 10), (2, 8));
    let (conflict, changed) = apply(&e, reserve("r1", &[("a", 3)]), T0 + 10);
    assert_eq!(conflict.code(), ResultCode::IdConflict);
    assert!(!changed);
}

#[test]
fn expiry_is_exact_before_the_sweep() {
    let e = engine();
    stock(&e, "a", 1);
    assert_eq!(apply(&e, reserve("r1", &[("a", 1)]), T0).0.code(), ResultCode::Ok);
    assert_eq!(reserved(&e, "a", T0 + 999), (1, 0));
    assert_eq!(
        apply(&e, reserve("r2", &[("a", 1)]), T0 + 999).0.code(),
        ResultCode::InsufficientStock
    );
    // At the deadline the hold no longer counts, although no sweep ran.
    assert_eq!(reserved(&e, "a", T0 + 1_000), (0, 1));
    let state = e.query_reservation(b"r1", T0 + 1_000).info.expect("stored").state;
    assert_eq!(state, ReservationState::Expired);
    assert_eq!(apply(&e, reserve("r2", &[("a", 1)]), T0 + 1_000).0.code(), ResultCode::Ok);
    // Confirming the lapsed hold fails and finalises its expiry.
    let confirm = Command::Confirm(Confirm { id: id("r1"), lines: vec![] });
    assert_eq!(apply(&e, confirm, T0 + 1_001), (OpReply::Confirm(ResultCode::Expired), true));
    assert_eq!(reserved(&e, "a", T0 + 1_001), (1, 0), "only r2 is held");
}

#[test]
fn sweep_expires_due_holds_then_forgets_after_retention() {
    let e = engine();
    stock(&e, "a", 5);
    apply(&e, reserve("r1", &[("a", 2)]), T0);
    assert!(e.due(T0 + 999, 100).is_empty());
    let due = e.due(T0 + 1_000, 100);
    assert_eq!(due, vec![Command::Expire { id: id("r1") }]);
    let (reply, changed) = apply(&e, due[0].clone(), T0 + 1_000);
    assert_eq!((reply.code(), changed), (ResultCode::Ok, true));
    // Applying a stale sweep command again is a no-op.
    assert!(!apply(&e, due[0].clone(), T0 + 1_000).1);
    assert_eq!(e.query_sku(b"a", T0 + 1_000).info.reserved, 0);
    assert_eq!(e.due(T0 + 10_999, 100), vec![]);
    let due = e.due(T0 + 11_000, 100);
    assert_eq!(due, vec![Command::Forget { id: id("r1") }]);
    assert!(apply(&e, due[0].clone(), T0 + 11_000).1);
    assert_eq!(e.counts(), (1, 0));
    // The id can be used again, with any content.
    assert_eq!(apply(&e, reserve("r1", &[("a", 5)]), T0 + 11_000).0.code(), ResultCode::Ok);
}

#[test]
fn safety_stock_pauses_selling() {
    let e = engine();
    stock(&e, "a", 10);
    let set = Command::SetSafetyStock { sku: id("a"), safety_stock: 3 };
    assert!(apply(&e, set, T0).1);
    assert_eq!(reserved(&e, "a", T0), (0, 7));
    let (reply, _) = apply(&e, reserve("r1", &[("a", 8)]), T0);
    assert_eq!(reply.code(), ResultCode::BelowSafetyStock, "fits in stock, not above the floor");
    let (reply, _) = apply(&e, reserve("r1", &[("a", 11)]), T0);
    assert_eq!(reply.code(), ResultCode::InsufficientStock);
    assert_eq!(apply(&e, reserve("r1", &[("a", 7)]), T0).0.code(), ResultCode::Ok);
    let info = e.query_sku(b"a", T0).info;
    assert!(info.paused && info.available == 0);
    assert_eq!(apply(&e, reserve("r2", &[("a", 1)]), T0).0.code(), ResultCode::SkuPaused);
    // Stock coming back resumes selling.
    assert_eq!(apply(&e, Command::Release { id: id("r1") }, T0).0.code(), ResultCode::Ok);
    assert!(!e.query_sku(b"a", T0).info.paused);
    assert_eq!(apply(&e, reserve("r2", &[("a", 1)]), T0).0.code(), ResultCode::Ok);
}

#[test]
fn partial_confirm_returns_the_rest_and_ship_takes_committed_out() {
    let e = engine();
    stock(&e, "a", 10);
    stock(&e, "b", 10);
    apply(&e, reserve("r1", &[("a", 4), ("b", 2)]), T0);
    let partial = Command::Confirm(Confirm { id: id("r1"), lines: vec![Line::new("a", 3)] });
    assert_eq!(apply(&e, partial.clone(), T0), (OpReply::Confirm(ResultCode::Ok), true));
    let a = e.query_sku(b"a", T0).info;
    let b = e.query_sku(b"b", T0).info;
    assert_eq!((a.reserved, a.committed, a.available), (0, 3, 7));
    assert_eq!((b.reserved, b.committed, b.available), (0, 0, 10));
    // The same partial confirm again is idempotent; a different one is not.
    assert_eq!(apply(&e, partial, T0), (OpReply::Confirm(ResultCode::Ok), false));
    let full = Command::Confirm(Confirm { id: id("r1"), lines: vec![] });
    assert_eq!(apply(&e, full, T0).0.code(), ResultCode::AlreadyConfirmed);
    assert_eq!(
        apply(&e, Command::Release { id: id("r1") }, T0).0.code(),
        ResultCode::AlreadyConfirmed
    );
    assert_eq!(
        apply(&e, Command::Ship { id: id("r1") }, T0),
        (OpReply::Ship(ResultCode::Ok), true)
    );
    let a = e.query_sku(b"a", T0).info;
    assert_eq!((a.on_hand, a.committed, a.available), (7, 0, 7));
    assert_eq!(
        apply(&e, Command::Ship { id: id("r1") }, T0),
        (OpReply::Ship(ResultCode::Ok), false)
    );
}

#[test]
fn confirm_rejects_bad_lines() {
    let e = engine();
    stock(&e, "a", 10);
    apply(&e, reserve("r1", &[("a", 2)]), T0);
    for lines in [vec![Line::new("a", 3)], vec![Line::new("z", 1)], vec![Line::new("a", 0)]] {
        let confirm = Command::Confirm(Confirm { id: id("r1"), lines });
        assert_eq!(apply(&e, confirm, T0), (OpReply::Confirm(ResultCode::InvalidArgument), false));
    }
    let unknown = Command::Confirm(Confirm { id: id("zz"), lines: vec![] });
    assert_eq!(apply(&e, unknown, T0).0.code(), ResultCode::NotFound);
    assert_eq!(apply(&e, Command::Ship { id: id("r1") }, T0).0.code(), ResultCode::NotConfirmed);
}

#[test]
fn release_is_idempotent_and_reports_finished_states() {
    let e = engine();
    stock(&e, "a", 10);
    apply(&e, reserve("r1", &[("a", 2)]), T0);
    assert_eq!(
        apply(&e, Command::Release { id: id("r1") }, T0),
        (OpReply::Release(ResultCode::Ok), true)
    );
    assert_eq!(
        apply(&e, Command::Release { id: id("r1") }, T0),
        (OpReply::Release(ResultCode::Ok), false)
    );
    let confirm = Command::Confirm(Confirm { id: id("r1"), lines: vec![] });
    assert_eq!(apply(&e, confirm, T0).0.code(), ResultCode::AlreadyReleased);
    assert_eq!(apply(&e, Command::Release { id: id("none") }, T0).0.code(), ResultCode::NotFound);
    apply(&e, reserve("r2", &[("a", 2)]), T0);
    assert_eq!(
        apply(&e, Command::Release { id: id("r2") }, T0 + 1_000).0.code(),
        ResultCode::Expired
    );
    assert_eq!(reserved(&e, "a", T0 + 1_000), (0, 10));
}

#[test]
fn extend_is_capped_by_the_maximum_hold() {
    let e = engine();
    stock(&e, "a", 10);
    apply(&e, reserve("r1", &[("a", 2)]), T0);
    let extend = |ttl_ms, now| apply(&e, Command::Extend { id: id("r1"), ttl_ms }, now).0;
    let OpReply::Extend(reply) = extend(3_000, T0 + 500) else { panic!("extend reply") };
    assert_eq!((reply.code, reply.expires_at_ms), (ResultCode::Ok, T0 + 3_500));
    let OpReply::Extend(reply) = extend(5_000, T0 + 3_000) else { panic!("extend reply") };
    assert_eq!(reply.expires_at_ms, T0 + 5_000, "capped at created + hold_ms_max");
    assert_eq!(extend(5_001, T0).code(), ResultCode::InvalidArgument);
    assert_eq!(reserved(&e, "a", T0 + 4_999), (2, 8));
    assert_eq!(reserved(&e, "a", T0 + 5_000), (0, 10));
    assert_eq!(extend(1_000, T0 + 5_000).code(), ResultCode::Expired);
}

#[test]
fn stock_changes_check_expected_values() {
    let e = engine();
    stock(&e, "a", 10);
    let set = Command::SetStock { sku: id("a"), on_hand: 20, expected: Some(9) };
    assert_eq!(apply(&e, set, T0).0.code(), ResultCode::ExpectedMismatch);
    let adjust = Command::AdjustStock { sku: id("a"), delta: -4, expected: Some(10) };
    let (OpReply::AdjustStock(reply), true) = apply(&e, adjust, T0) else { panic!("applied") };
    assert_eq!(reply.info.on_hand, 6);
    let below_zero = Command::AdjustStock { sku: id("a"), delta: -7, expected: None };
    let (reply, changed) = apply(&e, below_zero, T0);
    assert_eq!((reply.code(), changed), (ResultCode::InvalidArgument, false));
    assert_eq!(e.query_sku(b"a", T0).info.on_hand, 6);
    let unknown = Command::AdjustStock { sku: id("x"), delta: 1, expected: None };
    assert_eq!(apply(&e, unknown, T0).0.code(), ResultCode::UnknownSku);
    let unknown = Command::SetSafetyStock { sku: id("x"), safety_stock: 1 };
    assert_eq!(apply(&e, unknown, T0).0.code(), ResultCode::UnknownSku);
}

#[test]
fn invalid_reserves_are_refused() {
    let e = engine();
    stock(&e, "a", 10);
    assert_eq!(apply(&e, reserve("", &[("a", 1)]), T0).0.code(), ResultCode::InvalidArgument);
    assert_eq!(apply(&e, reserve("r", &[]), T0).0.code(), ResultCode::InvalidArgument);
    let OpReply::Reserve(reply) = apply(&e, reserve("r", &[("a", 1), ("a", 0)]), T0).0 else {
        panic!("reserve reply")
    };
    assert_eq!((reply.code, reply.failed_line), (ResultCode::InvalidArgument, Some(1)));
    let mut long = reserve("r", &[("a", 1)]);
    if let Command::Reserve(r) = &mut long {
        r.ttl_ms = 5_001;
    }
    assert_eq!(apply(&e, long, T0).0.code(), ResultCode::InvalidArgument);
    assert_eq!(e.counts(), (1, 0));
}

#[test]
fn listing_pages_through_every_sku_once_in_id_order() {
    let e = engine();
    let mut all: Vec<String> = (0..257).map(|n| format!("sku-{:03x}", n * 7919 % 4096)).collect();
    for sku in &all {
        stock(&e, sku, 1);
    }
    all.sort();
    let filter = super::SkuFilter::default();
    let mut seen = Vec::new();
    let mut after: Option<Bytes> = None;
    loop {
        let page = e.list_skus(&filter, after.as_deref(), 10, T0);
        assert_eq!(page.matched, all.len());
        assert!(page.rows.len() <= 10);
        seen.extend(page.rows.iter().map(|row| String::from_utf8(row.sku.to_vec()).unwrap()));
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, all);
}

#[test]
fn holds_of_a_sku_and_the_summary_count_only_live_holds() {
    let e = engine();
    stock(&e, "a", 10);
    stock(&e, "b", 10);
    apply(&e, reserve("r1", &[("a", 2), ("b", 1)]), T0);
    apply(&e, reserve("r2", &[("a", 3)]), T0 + 100);
    apply(&e, reserve("r3", &[("b", 4)]), T0 + 200);
    apply(&e, Command::Release { id: id("r3") }, T0 + 300);
    let holds = e.sku_holds(b"a", 10, T0 + 300).expect("known SKU");
    assert_eq!(holds.count, 2);
    let ids: Vec<&[u8]> = holds.holds.iter().map(|h| &h.reservation[..]).collect();
    assert_eq!(ids, [&b"r1"[..], b"r2"], "soonest deadline first");
    assert_eq!(holds.holds[1].qty, 3);
    assert!(e.sku_holds(b"nope", 10, T0).is_none());
    let summary = e.summary(T0 + 300);
    assert_eq!((summary.skus, summary.reservations, summary.holds_open), (2, 3, 2));
    assert_eq!((summary.held_units, summary.on_hand_units), (6, 20));
    // r1 lapses at T0 + 1000 (default TTL): no longer open, though not swept yet.
    let lapsed = e.summary(T0 + 1_000);
    assert_eq!((lapsed.holds_open, lapsed.held_units), (1, 3));
    assert_eq!(e.sku_holds(b"b", 10, T0 + 1_000).expect("known").count, 0);
}

#[test]
fn a_split_line_uses_at_most_four_locations_and_locations_follow_the_hold_deadline() {
    let engine = engine();
    for location in ["l1", "l2", "l3", "l4", "l5"] {
        let command = Command::SetLocation {
            sku: id("tee"),
            location: id(location),
            on_hand: 1,
            priority: 0,
            expected: None,
        };
        assert_eq!(apply(&engine, command, T0).0.code(), ResultCode::Ok);
    }
    let split = |order: &str, qty| {
        let Command::Reserve(reserve) = reserve(order, &[("tee", qty)]) else { unreachable!() };
        Command::ReserveAt(stockd_protocol::ReserveAt {
            reserve,
            location: Bytes::new(),
            split: true,
        })
    };
    // Five units exist, one per location, but a line may only be split four ways.
    let (reply, changed) = apply(&engine, split("o1", 5), T0);
    assert_eq!((reply.code(), changed), (ResultCode::InsufficientStock, false));
    let (reply, _) = apply(&engine, split("o1", 4), T0);
    let OpReply::ReserveAt(reply) = reply else { panic!("{reply:?}") };
    let used: Vec<_> = reply.allocations.iter().map(|a| (a.location.clone(), a.qty)).collect();
    assert_eq!(used, [(id("l1"), 1), (id("l2"), 1), (id("l3"), 1), (id("l4"), 1)]);
    // Past the deadline the held units are free again at their locations, before any sweep.
    let later = engine.query_locations(b"tee", T0 + 1_000);
    assert!(later.locations.iter().all(|l| l.reserved == 0 && l.available == 1), "{later:?}");
    let now = engine.query_locations(b"tee", T0);
    assert_eq!(now.locations.iter().map(|l| l.available).sum::<u64>(), 1);
}

/// A capture dropped before it finishes stops saving entries and drops the empty slots of
/// reservations forgotten meanwhile; the next capture starts clean.
#[test]
fn a_capture_dropped_halfway_leaves_the_engine_as_it_was() {
    let e = engine();
    stock(&e, "a", 100);
    for i in 0..40 {
        apply(&e, reserve(&format!("r{i}"), &[("a", 1)]), T0);
        apply(&e, Command::Release { id: id(&format!("r{i}")) }, T0);
    }
    let (mut capture, ()) = e.capture(|| ());
    assert!(!capture.step_by(1));
    // Forgotten while the capture runs: their slots stay, empty, until it ends.
    let late = T0 + 20_000;
    for command in e.due(late, 1_000) {
        assert!(apply(&e, command, late).1);
    }
    assert_eq!(e.counts(), (1, 0));
    drop(capture);
    assert_eq!(e.counts(), (1, 0));
    for shard in e.shards.iter() {
        let shard = shard.lock();
        assert!(shard.skus.copying.is_none() && shard.reservations.copying.is_none());
        assert_eq!(shard.reservations.slots(), 0, "empty slots dropped");
    }
    apply(&e, reserve("again", &[("a", 3)]), late);
    let (capture, ()) = e.capture(|| ());
    assert_eq!(capture.finish().into_image().sorted(), e.image());
}

/// Captures taken while threads keep changing the state image exactly the state at their
/// cut: the commands numbered up to the number read at the cut, replayed in order, give
/// the same image. (The server reads the log's last LSN there.) The threads go on until three
/// captures have seen commands change the state while they ran.
#[test]
fn a_capture_beside_running_commands_images_the_state_at_its_cut() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;

    const CAPTURES: u64 = 3;
    let setup = |e: &Engine| ["a", "b", "c"].iter().for_each(|sku| stock(e, sku, 1 << 40));
    let e = engine();
    setup(&e);
    let seq = AtomicU64::new(0);
    let log = Mutex::new(Vec::new());
    let captured = AtomicU64::new(0);
    let running = AtomicU64::new(3);
    std::thread::scope(|scope| {
        for thread in 0..3u64 {
            let (e, seq, log, captured, running) = (&e, &seq, &log, &captured, &running);
            scope.spawn(move || {
                let mut i = 0u64;
                let mut random = thread + 1; // xorshift: each thread its own sequence
                while (captured.load(Ordering::SeqCst) < CAPTURES || i < 5_000) && i < 10_000_000 {
                    random ^= random << 13;
                    random ^= random >> 7;
                    random ^= random << 17;
                    let r = format!("t{thread}-{}", random % 60);
                    let command = match (random >> 8) % 10 {
                        0..4 => reserve(&r, &[("a", 1), (["b", "c"][(random % 2) as usize], 2)]),
                        4 | 5 => Command::Confirm(Confirm { id: id(&r), lines: vec![] }),
                        6 | 7 => Command::Release { id: id(&r) },
                        8 => Command::Ship { id: id(&r) },
                        _ => Command::Forget { id: id(&r) },
                    };
                    let now = T0 + i * 10;
                    e.apply(&command, now, || {
                        let n = seq.fetch_add(1, Ordering::SeqCst) + 1;
                        log.lock().unwrap().push((n, now, command.clone()));
                    });
                    i += 1;
                }
                running.fetch_sub(1, Ordering::SeqCst);
            });
        }
        let mut captures = 0;
        while running.load(Ordering::SeqCst) > 0 {
            captures += 1;
            assert!(captures < 100_000, "the threads never ran beside a capture");
            let (mut capture, cut) = e.capture(|| seq.load(Ordering::SeqCst));
            while !capture.step_by(1) {
                std::thread::yield_now();
            }
            let image = capture.finish().into_image().sorted();
            let overlapped = seq.load(Ordering::SeqCst) > cut;
            let mut applied: Vec<_> = log.lock().unwrap().clone();
            applied.retain(|(n, _, _)| *n <= cut);
            applied.sort_by_key(|(n, _, _)| *n);
            let replayed = engine();
            setup(&replayed);
            for (n, now, command) in applied {
                assert!(apply(&replayed, command, now).1, "command {n} replays");
            }
            assert_eq!(image, replayed.image(), "capture at {cut}");
            if overlapped {
                captured.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    assert!(captured.load(Ordering::SeqCst) >= CAPTURES);
}

/// A captured state is written as exactly the bytes of its image: reservations with several
/// lines (runs of a repeated SKU among them), channels, customers, confirms, releases and
/// located allocations, most of them released after the capture finished (the capture keeps
/// them as they were).
#[test]
fn a_captured_state_writes_the_snapshot_its_image_writes() {
    use crate::wal::storage::{MemStorage, Storage};
    let e = engine();
    for sku in ["a", "b", "hot"] {
        stock(&e, sku, 1_000);
    }
    let location = Command::SetLocation {
        sku: id("tee"),
        location: id("north"),
        on_hand: 50,
        priority: 0,
        expected: None,
    };
    assert_eq!(apply(&e, location, T0).0.code(), ResultCode::Ok);
    for i in 0..60u32 {
        let mut command = reserve(&format!("r{i}"), &[("hot", 1), ("a", i % 3 + 1), ("tee", 1)]);
        if let Command::Reserve(reserve) = &mut command {
            reserve.channel = id(["", "live", "web"][i as usize % 3]);
            reserve.customer = id(["", "ann", "bob", "cy"][i as usize % 4]);
            reserve.lines.truncate(1 + i as usize % 3);
        }
        assert!(apply(&e, command, T0).1);
        if i % 5 == 0 {
            let confirm = Command::Confirm(Confirm { id: id(&format!("r{i}")), lines: vec![] });
            assert!(apply(&e, confirm, T0).1);
        }
        if i % 7 == 1 && i % 5 != 0 {
            let released = apply(&e, Command::Release { id: id(&format!("r{i}")) }, T0);
            assert!(released.1, "{i}: {released:?}");
        }
    }
    let expected = e.snapshot_image();
    let (capture, ()) = e.capture(|| ());
    let captured = capture.finish();
    for i in 0..60 {
        apply(&e, Command::Release { id: id(&format!("r{i}")) }, T0);
    }
    let storage = MemStorage::new();
    let written = crate::snapshot::write_captured(&storage, 7, T0, &captured).expect("write");
    let imaged = crate::snapshot::write(&storage, 8, T0, &expected).expect("write");
    let (written, imaged) = (storage.read(&written).unwrap(), storage.read(&imaged).unwrap());
    assert!(expected.allocations.len() > 10 && expected.reservations.len() == 60);
    assert_eq!(written[64..], imaged[64..], "the same body, byte for byte");
}

fn delete(engine: &Engine, sku: &str, now: u64) -> (ResultCode, bool) {
    let (reply, changed) = apply(engine, Command::DeleteSku { sku: id(sku) }, now);
    (reply.code(), changed)
}

#[test]
fn a_sku_is_deleted_only_when_no_open_reservation_names_it() {
    let e = engine();
    stock(&e, "a", 10);
    stock(&e, "b", 10);
    assert_eq!(delete(&e, "nope", T0), (ResultCode::UnknownSku, false));
    apply(&e, reserve("r1", &[("a", 2), ("b", 1)]), T0);
    assert_eq!(delete(&e, "a", T0), (ResultCode::SkuInUse, false));
    // A hold past its deadline still counts until the sweep ends it.
    assert_eq!(reserved(&e, "a", T0 + 1_000), (0, 10));
    assert_eq!(delete(&e, "a", T0 + 1_000), (ResultCode::SkuInUse, false));
    let confirm = Command::Confirm(Confirm { id: id("r1"), lines: vec![Line::new("b", 1)] });
    assert_eq!(apply(&e, confirm, T0).0.code(), ResultCode::Ok);
    // "a" was confirmed with 0 units: none of its units is counted, but the reservation is
    // not over (shipping it goes through every line), so it still names "a".
    assert_eq!(reserved(&e, "a", T0), (0, 10));
    assert_eq!(delete(&e, "a", T0), (ResultCode::SkuInUse, false));
    assert_eq!(delete(&e, "b", T0), (ResultCode::SkuInUse, false));
    assert_eq!(apply(&e, Command::Ship { id: id("r1") }, T0).0.code(), ResultCode::Ok);
    assert_eq!(e.query_sku(b"b", T0).info.on_hand, 9);
    let (reply, changed) = apply(&e, Command::DeleteSku { sku: id("a") }, T0);
    assert!(changed);
    let OpReply::DeleteSku(reply) = reply else { panic!("delete reply") };
    assert_eq!((reply.code, reply.info), (ResultCode::Ok, Default::default()), "zero after");
    assert_eq!(delete(&e, "a", T0), (ResultCode::UnknownSku, false), "deleted once");

    // Unknown to every operation on it...
    assert_eq!(e.query_sku(b"a", T0).code, ResultCode::UnknownSku);
    assert!(e.is_deleted(b"a") && !e.is_deleted(b"b") && !e.is_deleted(b"nope"));
    assert_eq!(apply(&e, reserve("r2", &[("a", 1)]), T0).0.code(), ResultCode::UnknownSku);
    let adjust = Command::AdjustStock { sku: id("a"), delta: 1, expected: None };
    assert_eq!(apply(&e, adjust, T0).0.code(), ResultCode::UnknownSku, "not created by +1");
    let safety = Command::SetSafetyStock { sku: id("a"), safety_stock: 1 };
    assert_eq!(apply(&e, safety, T0).0.code(), ResultCode::UnknownSku);
    assert_eq!(e.summary(T0).skus, 1);
    let page = e.list_skus(&Default::default(), None, 10, T0);
    assert_eq!(page.rows.iter().map(|r| &r.sku[..]).collect::<Vec<_>>(), [b"b"]);
    // ... while the shipped reservation naming it is kept, then forgotten.
    assert_eq!(apply(&e, Command::Ship { id: id("r1") }, T0).0.code(), ResultCode::Ok, "retry");
    let info = e.query_reservation(b"r1", T0).info.expect("kept");
    assert_eq!(info.lines.len(), 2, "the reservation still names both SKUs");

    // The image keeps the deleted SKU as an id, and a rebuilt engine is the same.
    let image = e.image();
    assert_eq!(image.deleted_skus, vec![b"a".to_vec()]);
    assert!(image.skus.iter().all(|s| s.sku != b"a"));
    let rebuilt = Engine::from_image(e.config().clone(), &image).expect("loads");
    assert_eq!(rebuilt.image(), image);
    assert!(rebuilt.is_deleted(b"a"));

    let due = e.due(T0 + 10_000, 100);
    assert_eq!(due, vec![Command::Forget { id: id("r1") }]);
    assert!(apply(&e, due[0].clone(), T0 + 10_000).1);

    // A stock change creates it again, empty: nothing of before comes back.
    stock(&e, "a", 3);
    let info = e.query_sku(b"a", T0 + 10_000).info;
    assert_eq!((info.on_hand, info.reserved, info.safety_stock, info.available), (3, 0, 0, 3));
    assert!(!e.is_deleted(b"a"));
    assert!(e.image().deleted_skus.is_empty());
    assert_eq!(e.summary(T0 + 10_000).skus, 2);
}

#[test]
fn a_deleted_sku_loses_its_limits_and_supply() {
    let e = engine();
    stock(&e, "a", 10);
    let limits = stockd_protocol::SkuLimits { max_per_buyer: 2, ..Default::default() };
    assert!(apply(&e, Command::SetLimits { sku: id("a"), limits }, T0).1);
    let preorder = Command::SetPreorder { sku: id("a"), preorder_max: 5 };
    assert!(apply(&e, preorder, T0).1);
    assert_eq!(delete(&e, "a", T0), (ResultCode::Ok, true));
    stock(&e, "a", 1);
    assert_eq!(e.query_limits(b"a", T0).limits, Default::default());
    assert_eq!(e.query_locations(b"a", T0).preorder_max, 0);
    let image = e.image();
    assert!(image.supplies.is_empty() && image.skus[0].limits.is_none());
}

#[test]
fn a_located_line_confirmed_with_no_units_keeps_its_sku_until_shipped() {
    let e = engine();
    let set = Command::SetLocation {
        sku: id("l"),
        location: id("east"),
        on_hand: 5,
        priority: 1,
        expected: None,
    };
    assert!(apply(&e, set, T0).1);
    stock(&e, "b", 5);
    assert_eq!(apply(&e, reserve("r1", &[("l", 2), ("b", 1)]), T0).0.code(), ResultCode::Ok);
    let confirm = Command::Confirm(Confirm { id: id("r1"), lines: vec![Line::new("b", 1)] });
    assert_eq!(apply(&e, confirm, T0).0.code(), ResultCode::Ok);
    // Nothing of "l" is held or committed, yet r1 still names its location: shipping it goes
    // through that allocation, so "l" (and its locations) must stay.
    assert_eq!(reserved(&e, "l", T0), (0, 5));
    assert_eq!(delete(&e, "l", T0), (ResultCode::SkuInUse, false));
    let image = e.image();
    assert_eq!(Engine::from_image(e.config().clone(), &image).expect("loads").image(), image);
    assert_eq!(apply(&e, Command::Ship { id: id("r1") }, T0).0.code(), ResultCode::Ok);
    assert_eq!(delete(&e, "l", T0), (ResultCode::Ok, true));
    let image = e.image();
    assert_eq!(image.deleted_skus, vec![b"l".to_vec()]);
    assert!(image.locations.is_empty() && image.allocations.is_empty());
    assert_eq!(Engine::from_image(e.config().clone(), &image).expect("loads").image(), image);
}

/// A large image's reservations load on several threads, each shard's on one, in the image's
/// order: the engine is the same as one thread builds, down to the order of its due work
/// among holds that share a deadline (their tickets), with limits' counts, located
/// allocations, confirmed and finished reservations and a deleted SKU among them.
#[test]
fn an_image_loads_the_same_on_several_threads() {
    let e = engine();
    for sku in ["a", "b", "hot", "gone"] {
        stock(&e, sku, 100_000);
    }
    let limits = stockd_protocol::SkuLimits { max_per_buyer: 1_000, ..Default::default() };
    assert!(apply(&e, Command::SetLimits { sku: id("a"), limits }, T0).1);
    let location = Command::SetLocation {
        sku: id("tee"),
        location: id("north"),
        on_hand: 5_000,
        priority: 0,
        expected: None,
    };
    assert!(apply(&e, location, T0).1);
    for i in 0..3_000u32 {
        let lines: &[(&str, u32)] = match i % 4 {
            0 => &[("hot", 1)],
            1 => &[("a", 2), ("hot", 1)],
            2 => &[("tee", 1), ("b", 1)],
            _ => &[("gone", 1), ("hot", 1)],
        };
        let mut command = reserve(&format!("r{i}"), lines);
        if let Command::Reserve(reserve) = &mut command {
            reserve.customer = id(["ann", "bob", "cy"][i as usize % 3]);
        }
        // Many holds share each deadline: their order is the order they were indexed in.
        let (reply, changed) = apply(&e, command, T0 + u64::from(i / 500));
        assert!(changed, "{i}: {reply:?}");
        if i % 5 == 0 {
            let confirm = Command::Confirm(Confirm { id: id(&format!("r{i}")), lines: vec![] });
            assert!(apply(&e, confirm, T0).1);
        } else if i % 4 == 3 || i % 7 == 1 {
            assert!(apply(&e, Command::Release { id: id(&format!("r{i}")) }, T0).1);
        }
    }
    // "gone" is named only by reservations that are over (released, or confirmed and shipped).
    for i in (3..3_000).step_by(4).filter(|i| i % 5 == 0) {
        assert!(apply(&e, Command::Ship { id: id(&format!("r{i}")) }, T0).1);
    }
    assert_eq!(delete(&e, "gone", T0), (ResultCode::Ok, true));
    let image = e.image();
    assert!(image.allocations.len() > 500 && image.deleted_skus.len() == 1);

    let one = Engine::from_image_threads(e.config().clone(), &image, 1).expect("loads");
    let due = |engine: &Engine| engine.due(u64::MAX, usize::MAX);
    assert_eq!(one.image(), image);
    // Due to expire or be forgotten: all but the 450 confirmed and not shipped.
    assert_eq!(due(&one).len(), 3_000 - 450);
    for threads in [2, 3, 64] {
        let many = Engine::from_image_threads(e.config().clone(), &image, threads).expect("loads");
        assert_eq!(many.image(), image, "{threads} threads");
        // (Not assert_eq: thousands of commands would be printed.)
        assert!(due(&many) == due(&one), "{threads} threads: the same order of due work");
        assert_eq!(many.query_limits(b"a", T0), one.query_limits(b"a", T0));
    }

    // Damage found by any thread fails the load, with what it found.
    let mut damaged = image.clone();
    damaged.reservations[2_500].lines[0].sku = b"0-nowhere".to_vec();
    let error = Engine::from_image_threads(e.config().clone(), &damaged, 3).err().expect("refused");
    assert!(error.to_string().contains("names an unknown SKU"), "{error}");
}

/// Giving back the SKU tables' spare room (after recovery) keeps every SKU where it was (the
/// listing's order is the tables' order) and the state as it was, and the tables grow again.
#[test]
fn shrinking_the_sku_tables_changes_nothing_but_memory() {
    let e = engine();
    for i in 0..1_000 {
        stock(&e, &format!("sku-{i:04}"), i);
    }
    assert_eq!(apply(&e, reserve("r", &[("sku-0007", 3)]), T0).0.code(), ResultCode::Ok);
    let listed = |e: &Engine| {
        let page = e.list_skus(&Default::default(), None, 2_000, T0);
        page.rows.into_iter().map(|r| r.sku).collect::<Vec<_>>()
    };
    let (image, order) = (e.image(), listed(&e));
    e.shrink_skus();
    assert_eq!(e.image(), image);
    assert_eq!(listed(&e), order);
    stock(&e, "new", 5);
    assert_eq!(
        apply(&e, reserve("r2", &[("new", 2), ("sku-0009", 1)]), T0).0.code(),
        ResultCode::Ok
    );
    assert_eq!(reserved(&e, "new", T0), (2, 3), "reserved, available");
    assert_eq!(reserved(&e, "sku-0007", T0), (3, 4));
}

#[test]
fn reservations_share_their_channel_name_and_keep_it_across_a_snapshot() {
    let e = engine();
    stock(&e, "a", 100);
    // Ten reservations on the same shard, alternating two channels, and one without.
    let ids: Vec<String> = (0..)
        .map(|n| format!("order-{n}"))
        .filter(|id| e.shard_of(id.as_bytes()) == 0)
        .take(11)
        .collect();
    for (n, id) in ids.iter().enumerate() {
        let channel = match n {
            10 => "",
            _ if n % 2 == 0 => "web",
            _ => "live",
        };
        let mut command = reserve(id, &[("a", 1)]);
        let Command::Reserve(request) = &mut command else { unreachable!() };
        request.channel = Bytes::copy_from_slice(channel.as_bytes());
        assert_eq!(apply(&e, command, T0).0.code(), ResultCode::Ok);
    }
    let shared = |e: &Engine| {
        let shard = e.shards[0].lock();
        let channel = |id: &String| shard.reservations.get(id.as_bytes()).unwrap().channel.clone();
        let web = channel(&ids[0]).expect("web");
        let live = channel(&ids[1]).expect("live");
        assert_eq!((&web[..], &live[..]), (&b"web"[..], &b"live"[..]));
        for (n, id) in ids.iter().enumerate().take(10) {
            let same = if n % 2 == 0 { &web } else { &live };
            assert!(std::sync::Arc::ptr_eq(&channel(id).expect("a channel"), same), "{id}");
        }
        assert_eq!(channel(&ids[10]), None);
    };
    shared(&e);
    // A state loaded from its image shares them too.
    let loaded = Engine::from_image(e.config.clone(), &e.image()).expect("load");
    shared(&loaded);
}

#[test]
fn counts_whose_sum_would_not_fit_are_refused_and_change_nothing() {
    let e = engine();
    let set = |location: &str, on_hand| Command::SetLocation {
        sku: id("big"),
        location: id(location),
        on_hand,
        priority: 0,
        expected: None,
    };
    assert_eq!(apply(&e, set("east", u64::MAX - 5), T0).0.code(), ResultCode::Ok);
    let before = e.image();
    // A second location whose count takes the SKU's past u64::MAX.
    let (reply, changed) = apply(&e, set("west", 6), T0);
    assert_eq!((reply.code(), changed), (ResultCode::InvalidArgument, false));
    assert_eq!(apply(&e, set("west", 5), T0).0.code(), ResultCode::Ok);
    let before_adjust = e.image();
    // An adjustment of one location past what the sum can hold.
    let adjust =
        Command::AdjustLocation { sku: id("big"), location: id("west"), delta: 1, expected: None };
    let (reply, changed) = apply(&e, adjust, T0);
    assert_eq!((reply.code(), changed), (ResultCode::InvalidArgument, false));
    assert_eq!(e.image(), before_adjust);
    // Receiving a delivery the count cannot hold: the delivery stays where it was.
    let incoming = Command::SetIncoming {
        sku: id("big"),
        location: id("east"),
        reference: id("po-1"),
        qty: 10,
        eta_ms: T0,
    };
    assert_eq!(apply(&e, incoming, T0).0.code(), ResultCode::Ok);
    let before_receive = e.image();
    let receive = Command::ReceiveIncoming {
        sku: id("big"),
        location: id("east"),
        reference: id("po-1"),
        qty: 0,
    };
    let (reply, changed) = apply(&e, receive, T0);
    assert_eq!((reply.code(), changed), (ResultCode::InvalidArgument, false));
    assert_eq!(e.image(), before_receive);
    assert_ne!(before, before_receive);
}
