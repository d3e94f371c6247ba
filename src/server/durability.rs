//! The server's durability duties: opening the data directory with recovery, the background
//! snapshotter, and the final snapshot on clean shutdown.
//!
//! Snapshots are captured from the live engine without stopping traffic
//! (`Engine::capture`, whose module doc says how): the cut is taken with every shard locked for
//! a moment, at the log's last appended record, and the capture then images the state as it
//! was at the cut about a thousand entries at a time while commands go on. The snapshot is
//! written only once the log has made that record durable, so a snapshot never holds a change
//! that a crash could take back out of the log. Old snapshots are then pruned and log segments
//! that no kept snapshot needs are handed to the WAL for reuse.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use tracing::{info, warn};

use super::Shared;
use crate::clock::Clock;
use crate::config::Config;
use crate::engine::{Captured, Engine};
use crate::limits::SNAPSHOT_CHECK_MS;
use crate::snapshot;
use crate::wal::recovery::{segment_infos, SegmentInfo};
use crate::wal::segment::recycle_name;
use crate::wal::{Health, Storage, Wal};

/// Captures `engine`'s state, lets `durable` wait until the log has made the cut's record
/// durable (it gets the LSN and answers whether it is), writes the snapshot, prunes old
/// snapshots and recycles log segments no longer needed. Returns the snapshot's LSN; `None`
/// when nothing was logged after `last_snapshot_lsn`.
pub fn take_snapshot(
    storage: &dyn Storage,
    wal: &Wal,
    engine: &Engine,
    clock: &Clock,
    last_snapshot_lsn: u64,
    durable: impl FnOnce(u64) -> bool,
) -> anyhow::Result<Option<u64>> {
    let (capture, (lsn, now_ms)) = engine.capture(|| (wal.last_lsn(), clock.now_ms()));
    if lsn <= last_snapshot_lsn {
        return Ok(None);
    }
    let captured = capture.finish();
    if !durable(lsn) {
        anyhow::bail!("the log did not make record {lsn} durable; no snapshot of it");
    }
    write_snapshot(storage, wal, lsn, now_ms, &captured)?;
    Ok(Some(lsn))
}

/// Writes a captured state as the snapshot at `lsn` (which must be durable in the log), prunes
/// old snapshots and recycles log segments no longer needed.
pub fn write_snapshot(
    storage: &dyn Storage,
    wal: &Wal,
    lsn: u64,
    now_ms: u64,
    captured: &Captured,
) -> anyhow::Result<()> {
    snapshot::write_captured(storage, lsn, now_ms, captured)?;
    finish_snapshot(storage, wal, &segment_infos(storage)?)?;
    Ok(())
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

/// When the next snapshot is due: after `snapshot_every_records` records, and at least
/// `snapshot_growth_percent` of the state's size at the last snapshot; or after the interval
/// (with at least one record). See `default.toml`.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotPolicy {
    pub every_records: u64,
    pub growth_percent: u64,
    pub interval: Duration,
}

impl SnapshotPolicy {
    pub fn of(config: &Config) -> SnapshotPolicy {
        let storage = &config.storage;
        SnapshotPolicy {
            every_records: storage.snapshot_every_records,
            growth_percent: storage.snapshot_growth_percent,
            interval: Duration::from_millis(storage.snapshot_interval_ms),
        }
    }

    /// `records` were logged since the last snapshot, which held `entities` SKUs and
    /// reservations and was taken `elapsed` ago.
    pub fn due(&self, records: u64, entities: u64, elapsed: Duration) -> bool {
        let proportional = u128::from(entities) * u128::from(self.growth_percent) / 100;
        let proportional = u64::try_from(proportional).unwrap_or(u64::MAX);
        let enough = records >= self.every_records.max(proportional);
        enough || (records > 0 && elapsed >= self.interval)
    }
}

/// Takes a snapshot when enough records or time have accumulated, until `stop` fires.
pub(super) fn snapshot_loop(shared: Arc<Shared>, stop: Receiver<()>) {
    let storage = &*shared.storage;
    let policy = SnapshotPolicy::of(&shared.config);
    let mut last_time = Instant::now();
    // The state's size at the last snapshot (at first, what recovery loaded).
    let mut entities = shared.engine.entities();
    loop {
        match stop.recv_timeout(Duration::from_millis(SNAPSHOT_CHECK_MS)) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let progress = shared.wal.progress();
        let last_lsn = *shared.snapshot_lsn.borrow();
        let since = progress.durable_lsn.saturating_sub(last_lsn);
        let due = policy.due(since, entities, last_time.elapsed());
        if !due || progress.health == Health::Failed {
            continue;
        }
        let started = Instant::now();
        let durable = |lsn| wait_durable(&shared.wal, lsn, &stop);
        match take_snapshot(storage, &shared.wal, &shared.engine, &shared.clock, last_lsn, durable)
        {
            Ok(None) => {}
            Ok(Some(lsn)) => {
                shared.snapshot_lsn.send_replace(lsn);
                shared
                    .snapshot_at_ms
                    .store(shared.clock.now_ms(), std::sync::atomic::Ordering::Relaxed);
                last_time = Instant::now();
                entities = shared.engine.entities();
                info!(
                    lsn,
                    entities,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "snapshot written"
                );
            }
            Err(e) => warn!(error = %format!("{e:#}"), "snapshot failed; will retry"),
        }
    }
}

/// Waits until the log has made record `lsn` durable: true then; false if the log failed or
/// `stop` fired first. (The record was appended before the capture started, so it is usually
/// durable long before the capture ends.)
fn wait_durable(wal: &Wal, lsn: u64, stop: &Receiver<()>) -> bool {
    loop {
        let progress = wal.progress();
        if progress.durable_lsn >= lsn {
            return true;
        }
        if progress.health == Health::Failed {
            return false;
        }
        match stop.recv_timeout(Duration::from_millis(1)) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return false,
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
/// past `last_snapshot_lsn`, snapshots `engine` (which must have stopped changing, with no
/// capture running) at the final durable LSN and prunes old snapshots. Returns the new
/// snapshot's LSN. Written from a capture, as the snapshotter writes: an [`Image`] of millions
/// of reservations is a second copy of the state, several GiB of it, at shutdown.
///
/// [`Image`]: crate::engine::Image
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
    let (capture, ()) = engine.capture(|| ());
    snapshot::write_captured(storage, progress.durable_lsn, now_ms, &capture.finish())?;
    snapshot::prune(storage)?;
    Ok(Some(progress.durable_lsn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_state_waits_for_records_in_proportion_to_its_size() {
        let policy = SnapshotPolicy {
            every_records: 1_000,
            growth_percent: 100,
            interval: Duration::from_secs(300),
        };
        let soon = Duration::from_secs(1);
        // A small state: the record count alone decides.
        assert!(!policy.due(999, 10, soon));
        assert!(policy.due(1_000, 10, soon));
        // 5 000 SKUs and reservations: 5 000 records first.
        assert!(!policy.due(4_999, 5_000, soon));
        assert!(policy.due(5_000, 5_000, soon));
        // The interval applies regardless, once anything was logged.
        assert!(policy.due(1, 5_000, Duration::from_secs(300)));
        assert!(!policy.due(0, 5_000, Duration::from_secs(3_000)));
        // 0 turns the proportional rule off; huge states do not overflow.
        let plain = SnapshotPolicy { growth_percent: 0, ..policy };
        assert!(plain.due(1_000, 5_000, soon));
        assert!(!policy.due(u64::MAX - 1, u64::MAX, soon));
    }
}
