//! Durability: recovery from the log and snapshots, torn tails, corruption, storage failures.
//! Faults are injected through the in-memory storage; the crash test with the real binary and
//! `kill -9` is `tests/it/crash.rs`.

use crate::common;

use std::sync::Arc;

use bytes::Bytes;
use common::{test_config, TestServer, T0};
use stockd::clock::Clock;
use stockd::engine::{Command, Engine, EngineConfig, Image};
use stockd::server::Server;
use stockd::snapshot;
use stockd::wal::record::{scan, Scan};
use stockd::wal::recovery::{list_segments, replay};
use stockd::wal::segment::SEGMENT_HEADER_BYTES;
use stockd::wal::writer::Tail;
use stockd::wal::{
    recover, repair, FsyncMode, Health, MemStorage, RecoverOptions, RecoveryError, Wal, WalConfig,
};
use stockd_protocol::{Line, Op, Reserve, ResultCode};

fn engine_config() -> EngineConfig {
    EngineConfig { shards: 4, ..EngineConfig::default() }
}

fn wal_config() -> WalConfig {
    WalConfig { segment_bytes: 1024 * 1024, fsync: FsyncMode::Always }
}

/// `n` commands that each change the state: stock for a few SKUs, then reserves.
fn commands(n: usize) -> Vec<(u64, Command)> {
    (0..n)
        .map(|i| {
            let now = T0 + i as u64;
            let command = if i < 4 {
                Command::SetStock {
                    sku: format!("sku-{i}").into(),
                    on_hand: 1_000_000,
                    expected: None,
                }
            } else {
                Command::Reserve(Reserve {
                    id: format!("order-{i}").into(),
                    ttl_ms: 0,
                    channel: Bytes::new(),
                    customer: Bytes::new(),
                    lines: vec![Line::new(format!("sku-{}", i % 4), 1 + (i % 3) as u32)],
                })
            };
            (now, command)
        })
        .collect()
}

/// The state after applying the first `k` commands.
fn reference(commands: &[(u64, Command)], k: usize) -> Image {
    let engine = Engine::new(engine_config());
    for (now, command) in &commands[..k] {
        let mut changed = false;
        engine.apply(command, *now, || changed = true);
        assert!(changed, "test commands all change state");
    }
    engine.image()
}

fn fresh_tail() -> Tail {
    Tail { next_lsn: 1, current: None, next_index: 1 }
}

/// Applies and logs the commands through a real WAL on `storage`, each acknowledged (durable)
/// before the next is applied, as a client waiting for every reply would see it.
fn write_log(storage: &MemStorage, commands: &[(u64, Command)]) {
    let engine = Engine::new(engine_config());
    let wal = Wal::start(Arc::new(storage.clone()), wal_config(), fresh_tail()).expect("start");
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    for (now, command) in commands {
        let mut lsn = 0;
        engine.apply(command, *now, || {
            lsn = wal.append(*now, command).expect("append");
        });
        runtime.block_on(wal.durable(lsn)).expect("durable");
    }
    let progress = wal.close();
    assert_eq!(progress.durable_lsn, commands.len() as u64);
}

fn recover_mem(storage: &MemStorage) -> Result<stockd::wal::Recovered, RecoveryError> {
    recover(storage, &engine_config(), RecoverOptions::default())
}

/// Offsets of every record in a segment's bytes.
fn record_offsets(data: &[u8]) -> Vec<(usize, usize)> {
    let mut offsets = Vec::new();
    let mut offset = SEGMENT_HEADER_BYTES;
    while let Ok(Scan::Record { next, .. }) = scan(data, offset) {
        offsets.push((offset, next));
        offset = next;
    }
    offsets
}

#[test]
fn log_replay_reproduces_the_state() {
    let commands = commands(500);
    let storage = MemStorage::new();
    write_log(&storage, &commands);
    let recovered = recover_mem(&storage).expect("recover");
    assert_eq!(recovered.last_lsn, 500);
    assert_eq!(recovered.records_replayed, 500);
    assert_eq!(recovered.engine.image(), reference(&commands, 500));
    assert_eq!(recovered.max_now_ms, T0 + 499);
}

#[test]
fn a_torn_tail_is_truncated_at_every_byte_offset_and_writing_continues() {
    let commands = commands(40);
    let storage = MemStorage::new();
    write_log(&storage, &commands);
    let (_, segment) = list_segments(&storage).expect("list").pop().expect("one segment");
    let files = storage.files();
    let data = files.iter().find(|(name, _)| *name == segment).expect("segment").1.clone();
    let (last_start, last_end) = *record_offsets(&data).last().expect("records");
    let before = reference(&commands, 39);
    let after = reference(&commands, 40);
    for cut in last_start..last_end {
        let damaged = MemStorage::new();
        for (name, bytes) in &files {
            damaged.put(name, bytes.clone());
        }
        damaged.with_file(&segment, |bytes| bytes[cut..last_end].fill(0));
        let recovered = recover_mem(&damaged).unwrap_or_else(|e| panic!("cut {cut}: {e}"));
        // Cutting only trailing zero bytes leaves the record whole.
        let whole = recovered.last_lsn == 40;
        assert!(whole || recovered.last_lsn == 39, "cut {cut}");
        assert_eq!(recovered.engine.image(), if whole { after.clone() } else { before.clone() });
        assert_eq!(recovered.truncated.is_some(), !whole && cut > last_start, "cut {cut}");
        // The writer continues after the truncation point, and everything reads back.
        let tail = recovered.tail(&damaged).expect("tail");
        let wal = Wal::start(Arc::new(damaged.clone()), wal_config(), tail).expect("start");
        let extra = Command::SetStock { sku: "after".into(), on_hand: 1, expected: None };
        let engine = recovered.engine;
        engine.apply(&extra, T0 + 1_000, || {
            wal.append(T0 + 1_000, &extra).expect("append");
        });
        wal.close();
        let again = recover_mem(&damaged).expect("recover after continuing");
        assert_eq!(again.last_lsn, recovered.last_lsn + 1, "cut {cut}");
        assert_eq!(again.engine.image(), engine.image());
        assert!(again.truncated.is_none());
    }
}

#[test]
fn a_flipped_bit_in_the_middle_refuses_to_start_until_repaired() {
    let commands = commands(60);
    let storage = MemStorage::new();
    write_log(&storage, &commands);
    let (_, segment) = list_segments(&storage).expect("list").pop().expect("segment");
    let data = storage.with_file(&segment, |bytes| bytes.clone()).expect("file");
    let offsets = record_offsets(&data);
    let (start, _) = offsets[30];
    storage.with_file(&segment, |bytes| bytes[start + 40] ^= 0x04);
    match recover_mem(&storage) {
        Err(e @ RecoveryError::Corrupt { .. }) => {
            let message = e.to_string();
            assert!(message.contains(&segment), "names the file: {message}");
            assert!(message.contains(&format!("offset {start}")), "names the offset: {message}");
        }
        Err(other) => panic!("expected corruption, got {other}"),
        Ok(_) => panic!("a corrupt log must not be accepted"),
    }
    let done = repair(&storage, &engine_config()).expect("repair").expect("something repaired");
    assert!(done.contains(&segment), "{done}");
    let recovered = recover_mem(&storage).expect("recover after repair");
    assert_eq!(recovered.last_lsn, 30);
    assert_eq!(recovered.engine.image(), reference(&commands, 30));
    assert_eq!(repair(&storage, &engine_config()).expect("repair"), None, "nothing left to repair");
}

/// Opens the writer where `recovered` ends.
fn continue_log(storage: &MemStorage, recovered: &stockd::wal::Recovered) -> Wal {
    let tail = recovered.tail(storage).expect("tail");
    Wal::start(Arc::new(storage.clone()), wal_config(), tail).expect("start")
}

/// Logs `durable` (each acknowledged), then `group` as one group commit whose sync a power cut
/// interrupts; the crash keeps every sector of the group but its first. Returns the offset at
/// which the group starts.
fn lose_most_of_a_group_commit(
    storage: &MemStorage,
    durable: &[(u64, Command)],
    group: &[(u64, Command)],
) -> u64 {
    write_log(storage, durable);
    let recovered = recover_mem(storage).expect("recover");
    let (_, segment, start) = recovered.tail_segment.clone().expect("tail");
    let wal = continue_log(storage, &recovered);
    storage.cut_power_at_sync(1);
    {
        let _hold = wal.hold();
        for (now, command) in group {
            recovered.engine.apply(command, *now, || {
                wal.append(*now, command).expect("append");
            });
        }
    }
    assert_eq!(wal.close().health, Health::Failed, "the sync failed");
    let first_sector = start - start % 512;
    storage.crash_keeping(|name, sector| name == segment && sector != first_sector);
    start
}

/// Found by the simulator: a power cut during a group commit may persist a later sector of the
/// write and lose an earlier one (disks reorder writes). The records that survived were never
/// acknowledged; recovery used to refuse to start ("valid log data follows") after this
/// ordinary power loss. Now the records' `synced_gap` shows they were written before the lost
/// one was durable, so the write is cut off as torn.
#[test]
fn a_group_commit_reordered_by_a_power_cut_is_cut_off_not_refused() {
    let commands = commands(60);
    let storage = MemStorage::new();
    let start = lose_most_of_a_group_commit(&storage, &commands[..20], &commands[20..]);
    let recovered = recover_mem(&storage).expect("a power loss is not corruption");
    assert_eq!(recovered.last_lsn, 20);
    assert_eq!(recovered.engine.image(), reference(&commands, 20));
    let truncated = recovered.truncated.expect("the torn group was cut off");
    assert!(truncated.contains(&format!("offset {start}")), "{truncated}");
}

/// Found by the simulator: zeros followed by data used to end the log without removing the
/// data. A crash that kept the second half of an unacknowledged group commit left records
/// behind the zeros; once the restarted writer had filled the gap with new records, a later
/// recovery read the old records after them and applied operations nobody was ever told about.
#[test]
fn records_left_behind_zeros_by_a_crash_are_never_replayed_later() {
    let commands = commands(30);
    let storage = MemStorage::new();
    lose_most_of_a_group_commit(&storage, &commands[..10], &commands[10..20]);
    let recovered = recover_mem(&storage).expect("recover");
    assert_eq!(recovered.last_lsn, 10);
    assert!(recovered.truncated.is_some(), "the records after the zeros are removed");
    // The restarted node logs five other operations of exactly the same sizes (the ids
    // "again-N" and "order-N" are equally long), so without the cut a scan after them would land
    // on the lost group's sixth record, numbered as the next one.
    let wal = continue_log(&storage, &recovered);
    let mut history = commands[..10].to_vec();
    for (now, command) in &commands[10..15] {
        let Command::Reserve(reserve) = command else { panic!("reserves") };
        let id = String::from_utf8_lossy(&reserve.id).replace("order", "again");
        let command = Command::Reserve(Reserve { id: id.into(), ..reserve.clone() });
        recovered.engine.apply(&command, *now, || {
            wal.append(*now, &command).expect("append");
        });
        history.push((*now, command));
    }
    assert_eq!(wal.close().durable_lsn, 15);
    let again = recover_mem(&storage).expect("recover again");
    assert_eq!(again.last_lsn, 15, "no record of the lost group comes back");
    assert_eq!(again.engine.image(), reference(&history, 15));
}

#[test]
fn a_damaged_snapshot_falls_back_to_the_older_one_and_the_log() {
    let commands = commands(120);
    let storage = MemStorage::new();
    write_log(&storage, &commands);
    for up_to in [40, 80] {
        let options = RecoverOptions { up_to: Some(up_to), read_only: true };
        let partial = recover(&storage, &engine_config(), options).expect("partial");
        assert_eq!(partial.last_lsn, up_to);
        snapshot::write(&storage, up_to, partial.max_now_ms, &partial.engine.image())
            .expect("snap");
    }
    let recovered = recover_mem(&storage).expect("recover");
    assert_eq!((recovered.snapshot_lsn, recovered.records_replayed), (80, 40));
    assert_eq!(recovered.engine.image(), reference(&commands, 120));

    let newest = snapshot::snapshot_name(80);
    storage.with_file(&newest, |bytes| {
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
    });
    let recovered = recover_mem(&storage).expect("recover with the older snapshot");
    assert_eq!((recovered.snapshot_lsn, recovered.records_replayed), (40, 80));
    assert_eq!(recovered.engine.image(), reference(&commands, 120));
}

#[test]
fn a_replay_applies_only_the_records_after_its_start_and_up_to_its_end() {
    let commands = commands(120);
    let storage = MemStorage::new();
    write_log(&storage, &commands);
    let options = RecoverOptions { up_to: Some(50), read_only: true };
    let partial = recover(&storage, &engine_config(), options).expect("partial");
    assert_eq!(partial.engine.image(), reference(&commands, 50));
    let options = RecoverOptions { up_to: Some(100), read_only: true };
    let replayed =
        replay(&storage, &partial.engine, 50, partial.max_now_ms, options).expect("replay");
    assert_eq!((replayed.last_lsn, replayed.records), (100, 50));
    assert_eq!(partial.engine.image(), reference(&commands, 100));
}

fn reserve_op(id: &str, sku: &str) -> Op {
    Op::Reserve(Reserve {
        id: Bytes::copy_from_slice(id.as_bytes()),
        ttl_ms: 0,
        channel: Bytes::new(),
        customer: Bytes::new(),
        lines: vec![Line::new(Bytes::copy_from_slice(sku.as_bytes()), 1)],
    })
}

async fn mem_server(storage: &MemStorage) -> TestServer {
    let config = test_config();
    let server = Server::bind_with(config.clone(), Clock::manual(T0), Arc::new(storage.clone()))
        .await
        .expect("server starts");
    TestServer::run(server, config)
}

#[tokio::test]
async fn a_failed_fsync_makes_the_server_read_only_and_never_acknowledges() {
    let storage = MemStorage::new();
    let server = mem_server(&storage).await;
    let client = server.client().await;
    assert_eq!(client.set_stock("a", 10, None).await.unwrap().code, ResultCode::Ok);
    storage.fail_syncs(true);
    let reply = client.call(reserve_op("r1", "a")).await.expect("reply");
    assert_eq!(reply.code(), ResultCode::ReadOnly, "not durable, so not acknowledged");
    assert_eq!(server.shared.wal.health(), Health::Failed);
    // Later writes are refused up front; reads are still served.
    assert_eq!(client.call(reserve_op("r2", "a")).await.unwrap().code(), ResultCode::ReadOnly);
    assert_eq!(client.set_stock("a", 5, None).await.unwrap().code, ResultCode::ReadOnly);
    assert_eq!(client.query_sku("a").await.unwrap().info.on_hand, 10);
    // The log is never retried: syncs working again changes nothing until a restart.
    storage.fail_syncs(false);
    assert_eq!(client.call(reserve_op("r3", "a")).await.unwrap().code(), ResultCode::ReadOnly);
    server.stop().await;
    // The machine loses what was never synced; after a restart only what was acknowledged is
    // there. (Without the power loss the unsynced record might survive: it was in flight and
    // answered `read_only`, and a retry with the same id is idempotent either way.)
    storage.crash();
    let server = mem_server(&storage).await;
    let client = server.client().await;
    assert_eq!(client.query_sku("a").await.unwrap().info.reserved, 0);
    assert_eq!(client.call(reserve_op("r4", "a")).await.unwrap().code(), ResultCode::Ok);
    server.stop().await;
}

#[tokio::test]
async fn a_full_disk_refuses_writes_and_resumes_when_space_returns() {
    let storage = MemStorage::new();
    let server = mem_server(&storage).await;
    let client = server.client().await;
    client.set_stock("a", u64::MAX / 2, None).await.unwrap();
    storage.set_disk_full(true);
    // Fill the current segment until the writer needs one that cannot be prepared. The batch
    // caught by that is not acknowledged: its replies are `read_only`, nobody hangs.
    let mut written = 0u64;
    let mut refused_batch = None;
    for round in 0..100 {
        let ops: Vec<Op> = (0..2_000).map(|i| reserve_op(&format!("r-{round}-{i}"), "a")).collect();
        let replies = client.batch(ops.clone()).await.expect("batch");
        if replies.iter().all(|r| r.code() == ResultCode::Ok) {
            written += 2_000;
            continue;
        }
        assert!(replies.iter().all(|r| r.code() == ResultCode::ReadOnly), "all or none");
        refused_batch = Some(ops);
        break;
    }
    let refused_batch = refused_batch.expect("the disk filled up within 100 rounds");
    assert_eq!(server.shared.wal.health(), Health::NoSpace);
    // While full: new writes are refused, reads are served, on every connection.
    let other = server.client().await;
    assert_eq!(other.call(reserve_op("refused", "a")).await.unwrap().code(), ResultCode::ReadOnly);
    assert_eq!(other.query_sku("a").await.unwrap().code, ResultCode::Ok);
    // Space returns: the buffered records are written and writes resume.
    let mut progress = server.shared.wal.subscribe();
    storage.set_disk_full(false);
    // The preparer retries in the background; a generous bound for a busy machine.
    let resumed = progress.wait_for(|p| p.health == Health::Ok);
    let resumed = tokio::time::timeout(std::time::Duration::from_secs(120), resumed).await;
    resumed.expect("writes resume once space is back").expect("log running");
    // Retrying the refused batch is idempotent: whatever became durable answers `ok` again.
    let replies = client.batch(refused_batch).await.expect("retry");
    assert!(replies.iter().all(|r| r.code() == ResultCode::Ok));
    assert_eq!(other.call(reserve_op("after", "a")).await.unwrap().code(), ResultCode::Ok);
    let reserved = client.query_sku("a").await.unwrap().info.reserved;
    assert_eq!(reserved, written + 2_000 + 1, "every hold counted once");
    server.stop().await;
    // Everything acknowledged survives a restart.
    storage.crash();
    let server = mem_server(&storage).await;
    assert_eq!(server.shared.engine.query_sku(b"a", T0).info.reserved, reserved);
    server.stop().await;
}

#[tokio::test]
async fn state_survives_restarts_with_snapshots_and_recycled_segments() {
    let mut config = test_config();
    // Both triggers: by record count while writing, and by time for what remains after it.
    config.storage.snapshot_every_records = 3_000;
    config.storage.snapshot_interval_ms = 100;
    let server = TestServer::start(config.clone()).await;
    let client = server.client().await;
    client.set_stock("a", 1_000_000, None).await.unwrap();
    // Two phases, each eventually covered by a background snapshot.
    for phase in 0..2 {
        for round in 0..6 {
            let ops: Vec<Op> =
                (0..2_000).map(|i| reserve_op(&format!("o-{phase}-{round}-{i}"), "a")).collect();
            let replies = client.batch(ops).await.unwrap();
            assert!(replies.iter().all(|r| r.code() == ResultCode::Ok));
        }
        let durable = server.shared.wal.progress().durable_lsn;
        let mut snapshots = server.shared.snapshot_lsn.subscribe();
        // A generous bound: the snapshot is built by a background thread on a busy machine.
        let taken = snapshots.wait_for(|lsn| *lsn >= durable);
        let taken = tokio::time::timeout(std::time::Duration::from_secs(120), taken).await;
        taken.expect("a background snapshot is taken").expect("server running");
    }
    assert_eq!(snapshot::list(&*server.shared.storage).unwrap().len(), 2);
    let image = server.shared.engine.image();
    server.stop().await;
    let names = std::fs::read_dir(&config.storage.data_dir).unwrap().count();
    assert!(names < 12, "old segments and snapshots are not kept forever ({names} files)");
    let server = TestServer::start(config).await;
    assert_eq!(server.shared.engine.image(), image);
    assert_eq!(server.shared.engine.query_sku(b"a", T0).info.reserved, 24_000);
    server.stop().await;
}
