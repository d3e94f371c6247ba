//! Paces a background loop (a channel's sync, the alert evaluator): the loop sleeps until its
//! next piece of work is due, or until someone pokes it. `poke` waits for a whole round that
//! started after the poke, so tests that move a manual clock can run the loop's work at a
//! known time and then look at its effects, without sleeping.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};

/// The loop's side and the pokers' side in one.
#[derive(Default)]
pub struct Pacer {
    notify: Notify,
    waiting: Mutex<Vec<oneshot::Sender<()>>>,
    closed: AtomicBool,
}

/// The pokers of one round; dropping it (at the round's end) releases them.
pub struct Round(#[allow(dead_code)] Vec<oneshot::Sender<()>>);

impl Pacer {
    /// Waits `wait` or until poked; returns the round's pokers, to be dropped when the round
    /// is done.
    pub async fn wait(&self, wait: Duration) -> Round {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = self.notify.notified() => {}
        }
        Round(std::mem::take(&mut *self.waiting.lock()))
    }

    /// Runs a round now and returns once it is done; returns false when the loop has ended.
    pub async fn poke(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        {
            let mut waiting = self.waiting.lock();
            if self.closed.load(Ordering::Acquire) {
                return false;
            }
            waiting.push(tx);
        }
        self.notify.notify_one();
        // A round sends nothing: it drops the sender when done.
        let _ = rx.await;
        !self.closed.load(Ordering::Acquire)
    }

    /// The loop has ended: pokes return at once from now on.
    pub fn close(&self) {
        let mut waiting = self.waiting.lock();
        self.closed.store(true, Ordering::Release);
        waiting.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn a_poke_returns_after_a_round_that_started_after_it() {
        let pacer = Arc::new(Pacer::default());
        let rounds = Arc::new(AtomicU32::new(0));
        let task = {
            let (pacer, rounds) = (pacer.clone(), rounds.clone());
            tokio::spawn(async move {
                loop {
                    let round = pacer.wait(Duration::from_secs(3600)).await;
                    let n = rounds.fetch_add(1, Ordering::SeqCst) + 1;
                    if n == 2 {
                        pacer.close();
                        return;
                    }
                    drop(round);
                }
            })
        };
        assert!(pacer.poke().await);
        assert_eq!(rounds.load(Ordering::SeqCst), 1);
        assert!(!pacer.poke().await, "the second round ended the loop");
        assert_eq!(rounds.load(Ordering::SeqCst), 2);
        task.await.unwrap();
        assert!(!pacer.poke().await, "a closed pacer answers at once");
    }
}
