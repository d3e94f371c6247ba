//! Shared helpers for stockd's benchmarks: command builders and a WAL on a temporary directory.

use std::sync::Arc;

use bytes::Bytes;
use stockd::engine::Command;
use stockd::wal::writer::Tail;
use stockd::wal::{DirStorage, FsyncMode, Wal, WalConfig};
use stockd_protocol::{Line, Reserve};

/// A single-line reserve of `qty` units of `sku`.
pub fn reserve(id: &str, sku: &str, qty: u32) -> Command {
    Command::Reserve(Reserve {
        id: Bytes::copy_from_slice(id.as_bytes()),
        ttl_ms: 0,
        channel: Bytes::new(),
        customer: Bytes::new(),
        lines: vec![Line::new(Bytes::copy_from_slice(sku.as_bytes()), qty)],
    })
}

/// Resident memory of this process, in bytes (Linux).
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A fresh WAL in `dir`.
pub fn open_wal(dir: &std::path::Path, fsync: FsyncMode, segment_bytes: u64) -> Wal {
    let storage = Arc::new(DirStorage::open(dir).expect("data dir"));
    let tail = Tail { next_lsn: 1, current: None, next_index: 1 };
    Wal::start(storage, WalConfig { segment_bytes, fsync }, tail).expect("start wal")
}
