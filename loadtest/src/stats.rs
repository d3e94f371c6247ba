//! Latency and throughput recording: one recorder per worker (no shared locks on the hot
//! path), merged at the end. Latencies are in microseconds.

use std::time::Instant;

use hdrhistogram::Histogram;

/// Highest latency recorded (one minute); anything above is clamped to it.
const LATENCY_US_MAX: u64 = 60_000_000;

fn histogram(sigfig: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, sigfig).expect("valid histogram bounds")
}

pub struct Recorder {
    start: Instant,
    pub overall: Histogram<u64>,
    pub per_second: Vec<Histogram<u64>>,
    pub ops_per_second: Vec<u64>,
    pub requests: u64,
    pub ops: u64,
}

impl Recorder {
    /// A recorder whose second 0 starts at `start` (the end of the warm-up).
    pub fn new(start: Instant) -> Recorder {
        Recorder {
            start,
            overall: histogram(3),
            per_second: Vec::new(),
            ops_per_second: Vec::new(),
            requests: 0,
            ops: 0,
        }
    }

    /// Records one request carrying `ops` operations that completed at `at`.
    pub fn record(&mut self, at: Instant, latency_us: u64, ops: u64) {
        let latency_us = latency_us.clamp(1, LATENCY_US_MAX);
        self.overall.record(latency_us).expect("clamped into bounds");
        let second = at.saturating_duration_since(self.start).as_secs() as usize;
        while self.per_second.len() <= second {
            self.per_second.push(histogram(2));
            self.ops_per_second.push(0);
        }
        self.per_second[second].record(latency_us).expect("clamped into bounds");
        self.ops_per_second[second] += ops;
        self.requests += 1;
        self.ops += ops;
    }

    pub fn merge(&mut self, other: &Recorder) {
        self.overall.add(&other.overall).expect("same bounds");
        for (second, h) in other.per_second.iter().enumerate() {
            while self.per_second.len() <= second {
                self.per_second.push(histogram(2));
                self.ops_per_second.push(0);
            }
            self.per_second[second].add(h).expect("same bounds");
            self.ops_per_second[second] += other.ops_per_second[second];
        }
        self.requests += other.requests;
        self.ops += other.ops;
    }
}
