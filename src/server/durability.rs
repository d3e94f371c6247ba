//! The server's durability duties: opening the data directory with recovery, the background
//! snapshotter, and the final snapshot on clean shutdown.
//!
//! Snapshots are built without touching the live engine: the snapshotter keeps a private copy
//! of the state, built once by crash recovery (the same code) and then brought up to date by
//! replaying only the durable log records written since, writes it, prunes old snapshots, and
//! hands log segments that no kept snapshot needs to the WAL for reuse. Traffic never pauses
//! for a snapshot; the price is a second copy of the state in memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use tracing::{info, warn};

use super::Shared;
use crate::config::Config;
use crate::engine::Engine;
use crate::limits::SNAPSHOT_CHECK_MS;
use crate::snapshot;
use crate::wal::recovery::{replay, SegmentInfo};
use crate::wal::segment::recycle_name;
use crate::wal::{recover, Health, RecoverOptions, Storage, Wal};

/// The snapshotter's private copy of the state and the log position it reflects.
pub struct Shadow {
    engine: Engine,
    last_lsn: u64,
    max_now_ms: u64,
}

/// Brings `shadow` up to `up_to` (a durable LSN): recovered from disk the first time, then by
/// replaying only the records after it. Writes a snapshot if that added anything, and recycles
/// log segments no longer needed. Returns the snapshot's LSN. On error the shadow is dropped,
/// to be rebuilt from disk next time.
pub fn build_snapshot(
    shadow: &mut Option<Shadow>,
    storage: &dyn Storage,
    config: &Config,
    wal: &Wal,
    up_to: u64,
) -> anyhow::Result<u64> {
    let options = RecoverOptions { up_to: Some(up_to), read_only: true };
    let result = match shadow.take() {
        None => recover(storage, &config.engine_config(), options).map(|r| {
            let unchanged = r.last_lsn == r.snapshot_lsn;
            (
                Shadow { engine: r.engine, last_lsn: r.last_lsn, max_now_ms: r.max_now_ms },
                r.segments,
                unchanged,
            )
        }),
        Some(mut s) => replay(storage, &s.engine, s.last_lsn, s.max_now_ms, options).map(|r| {
            let unchanged = r.records == 0;
            (s.last_lsn, s.max_now_ms) = (r.last_lsn, r.max_now_ms);
            (s, r.segments, unchanged)
        }),
    };
    let (built, segments, unchanged) = result?;
    let lsn = built.last_lsn;
    if !unchanged {
        snapshot::write(storage, lsn, built.max_now_ms, &built.engine.image())?;
        finish_snapshot(storage, wal, &segments)?;
    }
    *shadow = Some(built);
    Ok(lsn)
}

/// Prunes old snapshots and recycles every segment whose records are all covered by the
/// oldest kept snapshot.
pub fn finish_snapshot(
    storage: &dyn Storage,
    wal: &Wal,
    segments: &[SegmentInfo],
) -> std::io::Result<()> {
    let Some(oldest_kept) = snapshot::prune(storage)? else { return Ok(()) };
    let mut recycled = Vec::new();
    for pair in segments.windows(2) {
        if pair[1].first_lsn <= oldest_kept + 1 {
            let name = recycle_name(pair[0].index);
            storage.rename(&pair[0].name, &name)?;
            recycled.push(name);
        }
    }
    if !recycled.is_empty() {
        storage.sync_dir()?;
        for name in recycled {
            wal.recycle(name);
        }
    }
    Ok(())
}

/// Takes a snapshot when enough records or time have accumulated, until `stop` fires.
pub(super) fn snapshot_loop(shared: Arc<Shared>, stop: Receiver<()>) {
    let storage = &*shared.storage;
    let every_records = shared.config.storage.snapshot_every_records;
    let interval = Duration::from_millis(shared.config.storage.snapshot_interval_ms);
    let mut last_time = Instant::now();
    let mut shadow = None;
    loop {
        match stop.recv_timeout(Duration::from_millis(SNAPSHOT_CHECK_MS)) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let progress = shared.wal.progress();
        let since = progress.durable_lsn.saturating_sub(*shared.snapshot_lsn.borrow());
        let due = since >= every_records || (since > 0 && last_time.elapsed() >= interval);
        if !due || progress.health == Health::Failed {
            continue;
        }
        let started = Instant::now();
        let up_to = progress.durable_lsn;
        match build_snapshot(&mut shadow, storage, &shared.config, &shared.wal, up_to) {
            Ok(lsn) => {
                shared.snapshot_lsn.send_replace(lsn);
                shared
                    .snapshot_at_ms
                    .store(shared.clock.now_ms(), std::sync::atomic::Ordering::Relaxed);
                last_time = Instant::now();
                info!(lsn, elapsed_ms = started.elapsed().as_millis() as u64, "snapshot written");
            }
            Err(e) => warn!(error = %format!("{e:#}"), "snapshot failed; will retry"),
        }
    }
}

/// On clean shutdown, with all traffic stopped: closes the log and snapshots the live state.
pub(super) fn final_snapshot(shared: &Shared, last_lsn: u64) {
    let (storage, now_ms) = (&*shared.storage, shared.clock.now_ms());
    match close_with_snapshot(storage, &shared.wal, &shared.engine, now_ms, last_lsn) {
        Ok(Some(lsn)) => info!(lsn, "final snapshot written"),
        Ok(None) => {}
        Err(e) => warn!(error = %e, "final snapshot failed; the log still has everything"),
    }
}

/// Closes the log (writing and syncing what is buffered) and, when it is healthy and durable
/// past `last_snapshot_lsn`, snapshots `engine` (which must have stopped changing) at the
/// final durable LSN and prunes old snapshots. Returns the new snapshot's LSN.
pub fn close_with_snapshot(
    storage: &dyn Storage,
    wal: &Wal,
    engine: &Engine,
    now_ms: u64,
    last_snapshot_lsn: u64,
) -> std::io::Result<Option<u64>> {
    let progress = wal.close();
    if progress.health == Health::Failed || progress.durable_lsn <= last_snapshot_lsn {
        return Ok(None);
    }
    snapshot::write(storage, progress.durable_lsn, now_ms, &engine.image())?;
    snapshot::prune(storage)?;
    Ok(Some(progress.durable_lsn))
}
