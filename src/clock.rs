//! The server's clock. Deadlines are always computed from this clock, never from a client's.
//!
//! Time is UTC milliseconds since the Unix epoch, read from the system clock but never allowed
//! to go backwards: if the system clock steps back (NTP correction, VM migration), the clock
//! holds its last value until real time catches up, so a hold can never be extended or
//! resurrected by a clock step.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A monotonic-safe UTC millisecond clock.
#[derive(Debug, Default)]
pub struct Clock {
    last_ms: AtomicU64,
}

impl Clock {
    pub fn new() -> Clock {
        Clock::default()
    }

    /// Milliseconds since the Unix epoch, never smaller than any value returned before.
    pub fn now_ms(&self) -> u64 {
        let wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.observe(wall_ms)
    }

    fn observe(&self, wall_ms: u64) -> u64 {
        self.last_ms.fetch_max(wall_ms, Ordering::AcqRel).max(wall_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_goes_backwards() {
        let clock = Clock::new();
        assert_eq!(clock.observe(1_000), 1_000);
        assert_eq!(clock.observe(900), 1_000, "a step back holds the last value");
        assert_eq!(clock.observe(1_001), 1_001);
        assert!(clock.now_ms() >= 1_001);
    }
}
