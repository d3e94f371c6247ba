//! stockd's load-test harness: drives a running server over TCP with the project's client in
//! realistic scenarios, measures throughput and latency (hdrhistogram, corrected for
//! coordinated omission in open-loop mode), and ends with a verdict that compares the server's
//! counters with what the clients were told: no oversell, nothing acknowledged missing.

pub mod report;
pub mod run;
pub mod scenario;
pub mod stats;
pub mod verdict;

pub use run::{run, RunConfig};
pub use scenario::Scenario;
