//! The server's clock. Deadlines are always computed from this clock, never from a client's.
//!
//! Time is UTC milliseconds since the Unix epoch, read from the system clock but never allowed
//! to go backwards: if the system clock steps back (NTP correction, VM migration), the clock
//! holds its last value until real time catches up, so a hold can never be extended or
//! resurrected by a clock step. Tests use a manual clock that only moves when told to.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug)]
enum Source {
    System,
    Manual(AtomicU64),
}

/// A monotonic-safe UTC millisecond clock.
#[derive(Debug)]
pub struct Clock {
    last_ms: AtomicU64,
    source: Source,
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::system()
    }
}

impl Clock {
    /// The system clock, guarded against steps backwards.
    pub fn system() -> Clock {
        Clock { last_ms: AtomicU64::new(0), source: Source::System }
    }

    /// A clock that reads `start_ms` until moved with [`Clock::advance_ms`].
    pub fn manual(start_ms: u64) -> Clock {
        Clock { last_ms: AtomicU64::new(0), source: Source::Manual(AtomicU64::new(start_ms)) }
    }

    /// Moves a manual clock forward. Panics on the system clock: only tests move time.
    pub fn advance_ms(&self, ms: u64) {
        match &self.source {
            Source::Manual(now) => {
                now.fetch_add(ms, Ordering::AcqRel);
            }
            Source::System => panic!("the system clock cannot be moved"),
        }
    }

    /// Never read earlier than `ms` from now on: after recovery, the clock must not run behind
    /// the times already recorded in the log.
    pub fn not_before(&self, ms: u64) {
        self.last_ms.fetch_max(ms, Ordering::AcqRel);
    }

    /// Milliseconds since the Unix epoch, never smaller than any value returned before.
    pub fn now_ms(&self) -> u64 {
        let source_ms = match &self.source {
            Source::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            Source::Manual(now) => now.load(Ordering::Acquire),
        };
        self.observe(source_ms)
    }

    fn observe(&self, source_ms: u64) -> u64 {
        self.last_ms.fetch_max(source_ms, Ordering::AcqRel).max(source_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_goes_backwards() {
        let clock = Clock::system();
        assert_eq!(clock.observe(1_000), 1_000);
        assert_eq!(clock.observe(900), 1_000, "a step back holds the last value");
        assert_eq!(clock.observe(1_001), 1_001);
        assert!(clock.now_ms() >= 1_001);
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = Clock::manual(5_000);
        assert_eq!(clock.now_ms(), 5_000);
        assert_eq!(clock.now_ms(), 5_000);
        clock.advance_ms(250);
        assert_eq!(clock.now_ms(), 5_250);
    }
}
