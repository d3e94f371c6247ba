//! stockd: a high-throughput inventory reservation server.
//!
//! The library holds everything; `main.rs` only parses the command line. Subsystems:
//! [`engine`] (the pure state machine), [`server`] (TCP, connections, sweeper), [`config`],
//! [`clock`], [`limits`] and [`cli`] (the client commands).

pub mod engine;
