//! stockd's integration tests, built as one test binary: one link of the server, its
//! dependencies and the test helpers instead of one per file, which keeps a clean build's time
//! and disk use down. Each module is one area; run one with `cargo test --test it <module>::`.

mod common;

mod aftersales;
mod alerting;
mod api;
mod api_supply;
mod binary;
mod concurrency;
mod crash;
mod dashboard;
mod decoders;
mod durability;
mod engine_model;
mod hostile;
mod http;
mod limits;
mod locations;
mod operations;
mod order_sync;
mod security;
mod serial_client;
mod simulation;
mod wire_errors;
