//! The write-ahead log: every state change is logged, in the order it was applied, and made
//! durable before it is acknowledged.
//!
//! - [`record`]: the record format (length, CRC32C, LSN, time, type, payload) and scanner.
//! - [`segment`]: pre-allocated, pre-zeroed segment files and their header.
//! - [`writer`]: appends, the writer thread with group commit, fsync modes, failure handling;
//!   `waiters` keeps the replies waiting for durability by the record each waits for.
//! - [`recovery`]: snapshot + log replay, torn-tail truncation, corruption refusal, repair.
//! - [`storage`]: the narrow file interface, with real files and a fault-injecting in-memory
//!   implementation.
//!
//! Writes use positional writes and `fdatasync` into segments whose blocks were allocated and
//! zeroed beforehand; reads (recovery, snapshot building) use memory maps. Format version 1.

pub mod record;
pub mod recovery;
pub mod segment;
pub mod storage;
pub mod tail;
mod waiters;
pub mod writer;

pub use recovery::{recover, repair, RecoverOptions, Recovered, RecoveryError};
pub use storage::{DirLock, DirStorage, MemStorage, Storage, StorageFile, LOCK_FILE};
pub use writer::{Durable, FsyncMode, Health, Progress, Wal, WalConfig, WalError};
