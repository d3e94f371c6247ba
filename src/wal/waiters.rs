//! Tasks waiting for the log to make a record durable, keyed by the LSN each waits for.
//!
//! Each group commit wakes exactly the tasks whose records it made durable (a range of the
//! map), not every waiting task: with one request in flight on each of many connections, a
//! commit of 15 records used to wake every one of the ~50 waiting connections, most of which
//! only went back to sleep. A change of the log's health wakes them all.
//!
//! Lost wake-ups are excluded by the order of the two sides: the writer publishes the durable
//! LSN (an atomic) and then takes the lock to take out the waiters it reached; a waiter takes
//! the lock, checks the durable LSN again and only then leaves its waker. Either the writer's
//! lock comes after the waker was left, or the waiter's check sees the new LSN.

use std::collections::BTreeMap;
use std::task::Waker;

/// Waiting tasks by (LSN, registration id).
#[derive(Default)]
pub(super) struct Waiters {
    next_id: u64,
    waiting: BTreeMap<(u64, u64), Waker>,
}

impl Waiters {
    /// Leaves (or replaces) the waker of the task waiting for `lsn`; returns its key.
    pub(super) fn register(
        &mut self,
        key: Option<(u64, u64)>,
        lsn: u64,
        waker: &Waker,
    ) -> (u64, u64) {
        if let Some(key) = key {
            if let Some(left) = self.waiting.get_mut(&key) {
                if !left.will_wake(waker) {
                    left.clone_from(waker);
                }
                return key;
            }
        }
        self.next_id += 1;
        let key = (lsn, self.next_id);
        self.waiting.insert(key, waker.clone());
        key
    }

    /// Forgets a waiter that stopped waiting before it was woken.
    pub(super) fn remove(&mut self, key: (u64, u64)) {
        self.waiting.remove(&key);
    }

    /// Takes out every waiter for an LSN up to `durable_lsn`.
    pub(super) fn reached(&mut self, durable_lsn: u64) -> Vec<Waker> {
        let Some(((first, _), _)) = self.waiting.first_key_value() else { return Vec::new() };
        if *first > durable_lsn {
            return Vec::new();
        }
        let later = self.waiting.split_off(&(durable_lsn.saturating_add(1), 0));
        std::mem::replace(&mut self.waiting, later).into_values().collect()
    }

    /// Takes out every waiter.
    pub(super) fn all(&mut self) -> Vec<Waker> {
        std::mem::take(&mut self.waiting).into_values().collect()
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn waker() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    #[test]
    fn a_commit_takes_out_exactly_the_waiters_it_reached() {
        let mut waiters = Waiters::default();
        let counts: Vec<_> = (1..=6u64)
            .map(|lsn| {
                let (count, waker) = waker();
                waiters.register(None, lsn, &waker);
                count
            })
            .collect();
        assert!(waiters.reached(0).is_empty());
        waiters.reached(3).into_iter().for_each(Waker::wake);
        let woken: Vec<usize> = counts.iter().map(|c| c.0.load(Ordering::Relaxed)).collect();
        assert_eq!(woken, [1, 1, 1, 0, 0, 0]);
        assert_eq!(waiters.len(), 3);
        assert_eq!(waiters.reached(u64::MAX).len(), 3, "the last LSN is not an overflow");
    }

    #[test]
    fn a_second_poll_replaces_its_waker_and_a_removed_waiter_is_not_woken() {
        let mut waiters = Waiters::default();
        let (first, waker) = waker();
        let key = waiters.register(None, 5, &waker);
        let (second, other) = self::waker();
        assert_eq!(waiters.register(Some(key), 5, &other), key);
        assert_eq!(waiters.len(), 1, "one entry per waiting task");
        waiters.reached(5).into_iter().for_each(Waker::wake);
        assert_eq!(first.0.load(Ordering::Relaxed), 0);
        assert_eq!(second.0.load(Ordering::Relaxed), 1);
        let key = waiters.register(None, 9, &waker);
        waiters.remove(key);
        assert!(waiters.all().is_empty());
    }
}
