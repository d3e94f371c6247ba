//! The sweeper: expires holds past their deadline and forgets finished reservations past their
//! retention, on an idle server too. Expiry is already exact for every read and write without
//! it; the sweep returns held units' bookkeeping to the SKUs and bounds memory.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tracing::debug;

use super::Shared;
use crate::limits::SWEEP_BATCH_MAX;

pub(super) async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let period = Duration::from_millis(shared.config.engine.sweep_interval_ms);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        loop {
            let now_ms = shared.clock.now_ms();
            let due = shared.engine.due(now_ms, SWEEP_BATCH_MAX);
            let mut applied = 0usize;
            for command in &due {
                shared.engine.apply(command, now_ms, || applied += 1);
            }
            if applied > 0 {
                debug!(applied, "sweep");
            }
            if due.len() < SWEEP_BATCH_MAX {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
}
