//! The sweeper: expires holds past their deadline and forgets finished reservations past their
//! retention, on an idle server too, logging each as a WAL record. Expiry is already exact for
//! every read and write without it; the sweep returns held units' bookkeeping to the SKUs and
//! bounds memory. Nobody waits for these records: the next reply that depends on them waits
//! for their durability like any other.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tracing::debug;

use super::Shared;
use crate::engine::Command;
use crate::limits::SWEEP_BATCH_MAX;
use crate::wal::Health;

pub(super) async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let period = Duration::from_millis(shared.config.engine.sweep_interval_ms);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        // Expiry is a logged change like any other; a read-only server stops sweeping (reads
        // stay exact without the sweep).
        while shared.wal.health() == Health::Ok {
            let now_ms = shared.clock.now_ms();
            let due = shared.engine.due(now_ms, SWEEP_BATCH_MAX);
            let (mut applied, mut expired) = (0usize, 0u64);
            for command in &due {
                shared.engine.apply(command, now_ms, || {
                    applied += 1;
                    expired += u64::from(matches!(command, Command::Expire { .. }));
                    let _ = shared.wal.append(now_ms, command);
                });
            }
            if applied > 0 {
                shared.metrics.expired(expired);
                debug!(applied, expired, "sweep");
            }
            if due.len() < SWEEP_BATCH_MAX {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
}
