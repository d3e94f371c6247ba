//! Following the log from outside the engine: the commands of the durable records after a
//! given LSN, read through memory maps. The order sync uses it to learn which SKUs changed
//! since it last pushed stock to a channel, with no cost on the request path and across
//! restarts (the position it reached is kept in its own journal).

use super::record::{scan, Record, Scan};
use super::recovery::{list_segments, RecoveryError};
use super::segment::{SegmentHeader, SEGMENT_HEADER_BYTES};
use super::storage::Storage;
use crate::engine::Command;

/// What a read found.
#[derive(Debug, PartialEq, Eq)]
pub enum Followed {
    /// Every record in `(after, up_to]` was passed on; the last LSN seen.
    Read { last_lsn: u64 },
    /// The log no longer holds the record after `after` (its segment was recycled once a
    /// snapshot covered it): the caller must start from the whole state.
    Gone,
}

/// Calls `f` with every record whose LSN is in `(after, up_to]`, in order. `up_to` must be
/// durable: records past it may still be in flight and are not read.
pub fn follow(
    storage: &dyn Storage,
    after: u64,
    up_to: u64,
    mut f: impl FnMut(u64, &Command),
) -> Result<Followed, RecoveryError> {
    if up_to <= after {
        return Ok(Followed::Read { last_lsn: after });
    }
    let segments = list_segments(storage)?;
    let mut last = after;
    let mut firsts = Vec::with_capacity(segments.len());
    for (_, name) in &segments {
        // A segment recycled between the listing and this read is gone: start again later.
        let Ok(data) = storage.read(name) else { return Ok(Followed::Gone) };
        let first = SegmentHeader::decode(&data)
            .map(|h| h.first_lsn)
            .map_err(|reason| RecoveryError::Invalid { file: name.clone(), reason })?;
        firsts.push(first);
    }
    if firsts.first().is_none_or(|first| *first > after + 1) {
        return Ok(Followed::Gone);
    }
    for (at, (_, name)) in segments.iter().enumerate() {
        if firsts.get(at + 1).is_some_and(|next| *next <= last + 1) {
            continue; // every record in this segment was passed on already
        }
        let Ok(data) = storage.read(name) else { return Ok(Followed::Gone) };
        let mut offset = SEGMENT_HEADER_BYTES;
        while let Ok(Scan::Record { record, next, .. }) = scan(&data, offset) {
            let Record { lsn, command, .. } = record;
            offset = next;
            if lsn <= last {
                continue;
            }
            if lsn != last + 1 || lsn > up_to {
                // A recycled segment being reused, or records not yet durable: stop here.
                return Ok(Followed::Read { last_lsn: last });
            }
            f(lsn, &command);
            last = lsn;
            if last == up_to {
                return Ok(Followed::Read { last_lsn: last });
            }
        }
    }
    Ok(Followed::Read { last_lsn: last })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::wal::writer::Tail;
    use crate::wal::{FsyncMode, MemStorage, Wal, WalConfig};

    fn set(sku: &str, on_hand: u64) -> Command {
        Command::SetStock { sku: Bytes::from(sku.to_string()), on_hand, expected: None }
    }

    fn sku_of(command: &Command) -> String {
        match command {
            Command::SetStock { sku, .. } => String::from_utf8_lossy(sku).into_owned(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn follows_durable_records_after_a_position() {
        let storage = Arc::new(MemStorage::new());
        let config = WalConfig { segment_bytes: 1 << 20, fsync: FsyncMode::Always };
        let tail = Tail { next_lsn: 1, current: None, next_index: 1 };
        let wal = Wal::start(storage.clone(), config, tail).unwrap();
        for (n, sku) in ["a", "b", "c", "d"].iter().enumerate() {
            wal.append(1, &set(sku, n as u64)).unwrap();
        }
        wal.durable(4).await.unwrap();
        let mut seen = Vec::new();
        let read = follow(&*storage, 1, 3, |lsn, c| seen.push((lsn, sku_of(c)))).unwrap();
        assert_eq!(read, Followed::Read { last_lsn: 3 });
        assert_eq!(seen, vec![(2, "b".to_string()), (3, "c".to_string())]);
        seen.clear();
        let read = follow(&*storage, 3, 99, |lsn, c| seen.push((lsn, sku_of(c)))).unwrap();
        assert_eq!(read, Followed::Read { last_lsn: 4 }, "stops at the end of the log");
        assert_eq!(seen, vec![(4, "d".to_string())]);
        let read = follow(&*storage, 4, 4, |_, _| panic!("nothing to read")).unwrap();
        assert_eq!(read, Followed::Read { last_lsn: 4 });
        wal.close();
    }

    #[test]
    fn a_missing_start_is_gone() {
        let storage = MemStorage::new();
        assert_eq!(follow(&storage, 0, 5, |_, _| {}).unwrap(), Followed::Gone);
    }
}
