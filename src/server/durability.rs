//! The server's durability duties: opening the data directory with recovery, the background
//! snapshotter, and the final snapshot on clean shutdown.
//!
//! Snapshots are built without touching the live engine: the snapshotter recovers a private
//! copy of the state from the latest snapshot and the durable part of the log (the same code
//! as crash recovery), writes it, prunes old snapshots, and hands log segments that no kept
//! snapshot needs to the WAL for reuse. Traffic never pauses for a snapshot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use tracing::{info, warn};

use super::Shared;
use crate::config::Config;
use crate::limits::SNAPSHOT_CHECK_MS;
use crate::snapshot;
use crate::wal::recovery::SegmentInfo;
use crate::wal::segment::recycle_name;
use crate::wal::{recover, Health, RecoverOptions, Storage, Wal};

/// Builds a snapshot at `up_to` (a durable LSN) from disk alone and recycles log segments no
/// longer needed. Returns the snapshot's LSN.
pub fn build_snapshot(
    storage: &dyn Storage,
    config: &Config,
    wal: &Wal,
    up_to: u64,
) -> anyhow::Result<u64> {
    let options = RecoverOptions { up_to: Some(up_to), read_only: true };
    let recovered = recover(storage, &config.engine_config(), options)?;
    if recovered.last_lsn == recovered.snapshot_lsn {
        return Ok(recovered.last_lsn); // nothing new
    }
    snapshot::write(storage, recovered.last_lsn, recovered.max_now_ms, &recovered.engine.image())?;
    finish_snapshot(storage, wal, &recovered.segments)?;
    Ok(recovered.last_lsn)
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
pub(super) fn snapshot_loop(shared: Arc<Shared>, last_lsn: Arc<AtomicU64>, stop: Receiver<()>) {
    let storage = &*shared.storage;
    let every_records = shared.config.storage.snapshot_every_records;
    let interval = Duration::from_millis(shared.config.storage.snapshot_interval_ms);
    let mut last_time = Instant::now();
    loop {
        match stop.recv_timeout(Duration::from_millis(SNAPSHOT_CHECK_MS)) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let progress = shared.wal.progress();
        let since = progress.durable_lsn.saturating_sub(last_lsn.load(Ordering::Acquire));
        let due = since >= every_records || (since > 0 && last_time.elapsed() >= interval);
        if !due || progress.health == Health::Failed {
            continue;
        }
        let started = Instant::now();
        match build_snapshot(storage, &shared.config, &shared.wal, progress.durable_lsn) {
            Ok(lsn) => {
                last_lsn.store(lsn, Ordering::Release);
                last_time = Instant::now();
                info!(lsn, elapsed_ms = started.elapsed().as_millis() as u64, "snapshot written");
            }
            Err(e) => warn!(error = %format!("{e:#}"), "snapshot failed; will retry"),
        }
    }
}

/// On clean shutdown, with all traffic stopped: closes the log and snapshots the live state.
pub(super) fn final_snapshot(shared: &Shared, last_lsn: u64) {
    let progress = shared.wal.close();
    if progress.health == Health::Failed || progress.durable_lsn <= last_lsn {
        return;
    }
    let storage = &*shared.storage;
    let image = shared.engine.image();
    let now_ms = shared.clock.now_ms();
    match snapshot::write(storage, progress.durable_lsn, now_ms, &image)
        .and_then(|_| snapshot::prune(storage))
    {
        Ok(_) => info!(lsn = progress.durable_lsn, "final snapshot written"),
        Err(e) => warn!(error = %e, "final snapshot failed; the log still has everything"),
    }
}
