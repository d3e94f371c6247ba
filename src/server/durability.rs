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
    /// Where the record after `last_lsn` starts in the log (segment index, offset), so the
    /// next replay reads on from there instead of rereading the segment from its start.
    resume: Option<(u64, u64)>,
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
            // The copy is never swept nor viewed: no deadline indexes, no lists of changes.
            r.engine.replay_only();
            let unchanged = r.last_lsn == r.snapshot_lsn;
            let shadow = Shadow {
                engine: r.engine,
                last_lsn: r.last_lsn,
                max_now_ms: r.max_now_ms,
                resume: r.tail_segment.map(|(index, _, offset)| (index, offset)),
            };
            (shadow, r.segments, unchanged)
        }),
        Some(mut s) => {
            replay(storage, &s.engine, s.last_lsn, s.max_now_ms, s.resume, options).map(|r| {
                let unchanged = r.records == 0;
                (s.last_lsn, s.max_now_ms) = (r.last_lsn, r.max_now_ms);
                s.resume = r.tail_segment.map(|(index, _, offset)| (index, offset));
                (s, r.segments, unchanged)
            })
        }
    };
    let (built, segments, unchanged) = result?;
    let lsn = built.last_lsn;
    if !unchanged {
        snapshot::write(storage, lsn, built.max_now_ms, &built.engine.snapshot_image())?;
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
    // The state's size at the last snapshot (about: the live state's when it was written; at
    // first, what recovery loaded).
    let mut entities = shared.engine.entities();
    let mut shadow = None;
    loop {
        match stop.recv_timeout(Duration::from_millis(SNAPSHOT_CHECK_MS)) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let progress = shared.wal.progress();
        let since = progress.durable_lsn.saturating_sub(*shared.snapshot_lsn.borrow());
        let due = policy.due(since, entities, last_time.elapsed());
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
    snapshot::write(storage, progress.durable_lsn, now_ms, &engine.snapshot_image())?;
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
