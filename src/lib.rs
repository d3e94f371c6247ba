//! stockd: a high-throughput inventory reservation server.
//!
//! The library holds everything; `main.rs` only calls [`cli::main`]. Subsystems:
//! [`engine`] (the pure state machine), [`server`] (TCP, connections, sweeper), [`config`],
//! [`clock`], [`limits`] and [`cli`] (the `stockd` command: server and client subcommands).

pub mod aftersales;
pub mod alerting;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod engine;
pub mod heap;
pub mod http;
pub mod journal;
pub mod limits;
pub mod metrics;
pub mod pacer;
pub mod server;
pub mod snapshot;
pub mod sync;
pub mod wal;
pub mod wms;
