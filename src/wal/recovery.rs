//! Recovery: the newest valid snapshot, then every log record after it, in LSN order.
//!
//! Reading goes through memory maps. The log ends at the first place that is not a valid next
//! record: zeros with nothing after them, or damage. Damage (or zeros followed by data) is a
//! write the crash tore or reordered, unless what follows proves the damaged record had been
//! durable: a later segment, or a valid record written after the damaged one was synced (its
//! `synced_gap` says so, see `record`) or not saying when (format 1). A torn write is cut off:
//! everything from the damage to the last non-zero byte of the segment is zeroed, so neither
//! the writer continuing there nor a later recovery can mistake leftover records of the lost
//! write for new ones. Proven damage to durable data is corruption: recovery refuses with the
//! file and offset, and only `stockd repair` truncates.
//! Every replayed record must change the state exactly as it did when it was logged; one that
//! does not means the log and the engine disagree, and recovery refuses that too.

use std::time::Instant;

use thiserror::Error;
use tracing::{info, warn};

use super::record::{scan, Record, Scan, RECORD_ALIGN};
use super::segment::{parse_segment_name, SegmentHeader, SEGMENT_HEADER_BYTES};
use super::storage::{Contents, Storage, StorageFile};
use super::writer::{OpenSegment, Tail};
use crate::engine::{Engine, EngineConfig};
use crate::snapshot;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RecoveryError {
    #[error("cannot access {file}: {source}")]
    Io { file: String, source: std::io::Error },
    #[error(
        "write-ahead log corrupt: {file} at offset {offset}: {reason}, but valid log data follows \
         ({follows}). Acknowledged operations may be damaged, so stockd will not start. Keep a \
         copy of the data directory; `stockd repair` truncates the log at this point, losing \
         everything after it"
    )]
    Corrupt { file: String, offset: u64, reason: String, follows: String },
    #[error("write-ahead log invalid: {file}: {reason}")]
    Invalid { file: String, reason: String },
}

fn io_error(file: &str) -> impl FnOnce(std::io::Error) -> RecoveryError + '_ {
    move |source| RecoveryError::Io { file: file.to_string(), source }
}

/// How far and how to recover.
#[derive(Clone, Copy, Debug, Default)]
pub struct RecoverOptions {
    /// Stop after this LSN (snapshot building reads only what is durable).
    pub up_to: Option<u64>,
    /// Read-only: leave a torn tail as it is (snapshot building, inspection).
    pub read_only: bool,
}

/// A segment found on disk.
#[derive(Clone, Debug)]
pub struct SegmentInfo {
    pub index: u64,
    pub first_lsn: u64,
    pub name: String,
}

pub struct Recovered {
    pub engine: Engine,
    /// LSN of the last record applied (0 for an empty log).
    pub last_lsn: u64,
    /// Latest server time found in the snapshot and log; the clock must not run behind it.
    pub max_now_ms: u64,
    pub snapshot_lsn: u64,
    pub records_replayed: u64,
    pub segments: Vec<SegmentInfo>,
    /// The segment to continue writing in, and where.
    pub tail_segment: Option<(u64, String, u64)>,
    /// What was truncated at the tail, if anything.
    pub truncated: Option<String>,
}

impl Recovered {
    /// Opens the tail segment for the writer.
    pub fn tail(&self, storage: &dyn Storage) -> Result<Tail, RecoveryError> {
        let current = match &self.tail_segment {
            Some((index, name, offset)) => Some(OpenSegment {
                index: *index,
                file: storage.open(name).map_err(io_error(name))?,
                offset: *offset,
            }),
            None => None,
        };
        let next_index = self.segments.last().map_or(1, |s| s.index + 1);
        Ok(Tail { next_lsn: self.last_lsn + 1, current, next_index })
    }
}

/// Segment files on disk, by index.
pub fn list_segments(storage: &dyn Storage) -> Result<Vec<(u64, String)>, RecoveryError> {
    let names = storage.list().map_err(io_error("data directory"))?;
    let mut segments: Vec<(u64, String)> =
        names.into_iter().filter_map(|n| parse_segment_name(&n).map(|i| (i, n))).collect();
    segments.sort_unstable();
    Ok(segments)
}

/// The segment files on disk with the first LSN each header names, by index.
pub fn segment_infos(storage: &dyn Storage) -> Result<Vec<SegmentInfo>, RecoveryError> {
    list_segments(storage)?
        .into_iter()
        .map(|(index, name)| {
            let (_, header) = read_segment(storage, index, &name)?;
            Ok(SegmentInfo { index, first_lsn: header.first_lsn, name })
        })
        .collect()
}

/// Reads segment file `name`, which must be segment number `index`, and its header.
fn read_segment(
    storage: &dyn Storage,
    index: u64,
    name: &str,
) -> Result<(Contents, SegmentHeader), RecoveryError> {
    let data = storage.read(name).map_err(io_error(name))?;
    let invalid = |reason: String| RecoveryError::Invalid { file: name.to_string(), reason };
    let header = SegmentHeader::decode(&data).map_err(invalid)?;
    if header.index != index {
        return Err(invalid(format!("header says segment {}", header.index)));
    }
    Ok((data, header))
}

/// Looks for proof that the damage at `offset` of segment `segments[at]` hit data that had been
/// durable: a later segment (the writer syncs a segment before it starts the next), or a valid
/// record after the damage that was written once the damaged record (`last_lsn + 1`) was
/// durable, or that does not say when it was written (record format 1). Valid records written
/// before that belong to a write the crash tore or reordered, which was never acknowledged.
fn durable_data_after(
    storage: &dyn Storage,
    segments: &[(u64, String)],
    at: usize,
    data: &[u8],
    offset: usize,
    last_lsn: u64,
) -> Option<String> {
    let damaged = last_lsn + 1;
    let mut probe = offset + RECORD_ALIGN;
    while probe + RECORD_ALIGN <= data.len() {
        if let Ok(Scan::Record { record, next, synced_lsn }) = scan(data, probe) {
            if record.lsn > last_lsn {
                match synced_lsn {
                    None => return Some(format!("record {} at offset {probe}", record.lsn)),
                    Some(synced) if synced >= damaged => {
                        return Some(format!(
                            "record {} at offset {probe}, written when records up to {synced} \
                             were durable",
                            record.lsn
                        ))
                    }
                    Some(_) => {
                        probe = next;
                        continue;
                    }
                }
            }
        }
        probe += RECORD_ALIGN;
    }
    segments.get(at + 1).map(|(_, name)| {
        let header = storage.read(name).ok().and_then(|d| SegmentHeader::decode(&d).ok());
        match header {
            Some(h) => format!("segment {name} starting at record {}", h.first_lsn),
            None => format!("segment {name}"),
        }
    })
}

/// A long replay logs its progress every this many records (a few seconds' work).
const PROGRESS_EVERY_RECORDS: u64 = 1_000_000;

/// Recovers the state from `storage`: the newest valid snapshot, then the log after it.
pub fn recover(
    storage: &dyn Storage,
    config: &EngineConfig,
    options: RecoverOptions,
) -> Result<Recovered, RecoveryError> {
    let started = Instant::now();
    let loaded = snapshot::load_latest(storage, config).map_err(io_error("snapshots"))?;
    let (engine, snapshot_lsn, snapshot_now) = match loaded {
        Some(s) => {
            let (skus, reservations) = s.engine.counts();
            let elapsed_ms = started.elapsed().as_millis() as u64;
            info!(lsn = s.lsn, skus, reservations, elapsed_ms, "snapshot loaded");
            (s.engine, s.lsn, s.now_ms)
        }
        None => (Engine::new(config.clone()), 0, 0),
    };
    let replayed = replay(storage, &engine, snapshot_lsn, snapshot_now, options)?;
    engine.shrink_skus();
    info!(
        snapshot_lsn,
        records = replayed.records,
        last_lsn = replayed.last_lsn,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "recovered"
    );
    Ok(Recovered {
        engine,
        last_lsn: replayed.last_lsn,
        max_now_ms: replayed.max_now_ms,
        snapshot_lsn,
        records_replayed: replayed.records,
        segments: replayed.segments,
        tail_segment: replayed.tail_segment,
        truncated: replayed.truncated,
    })
}

/// Where a replay of the log ended.
pub struct Replayed {
    pub last_lsn: u64,
    pub max_now_ms: u64,
    pub records: u64,
    pub segments: Vec<SegmentInfo>,
    pub tail_segment: Option<(u64, String, u64)>,
    pub truncated: Option<String>,
}

/// Applies to `engine` every log record after `from_lsn` (the last record `engine` already
/// contains; `from_now_ms` is the latest time it has seen). Segments whose records are all at
/// or before `from_lsn` are not scanned.
pub fn replay(
    storage: &dyn Storage,
    engine: &Engine,
    from_lsn: u64,
    from_now_ms: u64,
    options: RecoverOptions,
) -> Result<Replayed, RecoveryError> {
    let segments = list_segments(storage)?;
    let mut infos = Vec::with_capacity(segments.len());
    let mut last_lsn = from_lsn;
    let mut max_now_ms = from_now_ms;
    let mut replayed = 0u64;
    let mut tail_segment = None;
    let mut truncated = None;
    let stop_after = options.up_to.unwrap_or(u64::MAX);

    'segments: for (at, (index, name)) in segments.iter().enumerate() {
        let (data, header) = read_segment(storage, *index, name)?;
        let invalid = |reason: String| RecoveryError::Invalid { file: name.clone(), reason };
        if header.first_lsn > last_lsn + 1 {
            return Err(invalid(format!(
                "starts at record {} but the state so far ends at record {last_lsn} \
                 (missing log or snapshot)",
                header.first_lsn
            )));
        }
        infos.push(SegmentInfo { index: *index, first_lsn: header.first_lsn, name: name.clone() });
        let next = segments.get(at + 1).map(|(_, next)| {
            let data = storage.read(next).map_err(io_error(next))?;
            SegmentHeader::decode(&data)
                .map(|h| h.first_lsn)
                .map_err(|reason| RecoveryError::Invalid { file: next.clone(), reason })
        });
        // The next segment starts at or before the first record not yet applied: every record
        // in this one is already applied.
        if next.transpose()?.is_some_and(|first| first <= from_lsn + 1) {
            continue;
        }
        let mut offset = SEGMENT_HEADER_BYTES;
        loop {
            let scanned = scan(&data, offset).map_err(|e| {
                invalid(format!("offset {offset}: {e} (written by a newer stockd, or corrupt)"))
            })?;
            match scanned {
                Scan::Record { record, next, .. } => {
                    let Record { lsn, now_ms, command } = record;
                    if lsn <= from_lsn {
                        offset = next; // already applied
                        continue;
                    }
                    if lsn != last_lsn + 1 {
                        return Err(invalid(format!(
                            "offset {offset}: record {lsn} where {} was expected",
                            last_lsn + 1
                        )));
                    }
                    if lsn > stop_after {
                        tail_segment = Some((*index, name.clone(), offset as u64));
                        break 'segments;
                    }
                    let mut changed = false;
                    engine.apply(&command, now_ms, || changed = true);
                    if !changed {
                        return Err(invalid(format!(
                            "offset {offset}: record {lsn} does not apply to the recovered state"
                        )));
                    }
                    last_lsn = lsn;
                    max_now_ms = max_now_ms.max(now_ms);
                    replayed += 1;
                    offset = next;
                    if replayed % PROGRESS_EVERY_RECORDS == 0 {
                        info!(records = replayed, lsn, segment = %name, "replaying the log");
                    }
                }
                Scan::End if data[offset..].iter().all(|b| *b == 0) => {
                    tail_segment = Some((*index, name.clone(), offset as u64));
                    break;
                }
                scanned => {
                    // Damage, or zeros with data after them (a crash kept a later sector of a
                    // write but not an earlier one): either way the log ends here unless what
                    // follows proves that acknowledged data was damaged.
                    let reason = match scanned {
                        Scan::Invalid(reason) => reason,
                        _ => "zeros before later data",
                    };
                    if options.up_to.is_some() {
                        // Reading only up to a durable point: what follows may be in flight.
                        tail_segment = Some((*index, name.clone(), offset as u64));
                        break 'segments;
                    }
                    if let Some(follows) =
                        durable_data_after(storage, &segments, at, &data, offset, last_lsn)
                    {
                        return Err(RecoveryError::Corrupt {
                            file: name.clone(),
                            offset: offset as u64,
                            reason: reason.to_string(),
                            follows,
                        });
                    }
                    let end = data.iter().rposition(|b| *b != 0).map_or(offset, |p| p + 1);
                    let what = format!(
                        "{name}: torn record at offset {offset} ({reason}), {} bytes",
                        end - offset
                    );
                    if !options.read_only {
                        let mut file = storage.open(name).map_err(io_error(name))?;
                        zero_range(&mut *file, offset as u64, end as u64)
                            .map_err(io_error(name))?;
                        warn!(truncated = %what, "truncated a torn write at the end of the log");
                    }
                    truncated = Some(what);
                    tail_segment = Some((*index, name.clone(), offset as u64));
                    break 'segments;
                }
            }
        }
    }
    Ok(Replayed {
        last_lsn,
        max_now_ms,
        records: replayed,
        segments: infos,
        tail_segment,
        truncated,
    })
}

fn zero_range(file: &mut dyn StorageFile, from: u64, to: u64) -> std::io::Result<()> {
    if to > from {
        file.write_at(from, &vec![0u8; (to - from) as usize])?;
        file.sync_data()?;
    }
    Ok(())
}

/// Repairs a corrupt log by truncating it at the damage: zeroes the damaged segment from the
/// damaged offset and removes every later segment. Returns what was done, or `None` if the log
/// needed no repair.
pub fn repair(
    storage: &dyn Storage,
    config: &EngineConfig,
) -> Result<Option<String>, RecoveryError> {
    let (file, offset) =
        match recover(storage, config, RecoverOptions { up_to: None, read_only: true }) {
            Ok(_) => return Ok(None),
            Err(RecoveryError::Corrupt { file, offset, .. }) => (file, offset),
            Err(other) => return Err(other),
        };
    let segments = list_segments(storage)?;
    let data_len = storage.read(&file).map_err(io_error(&file))?.len() as u64;
    let mut handle = storage.open(&file).map_err(io_error(&file))?;
    zero_range(&mut *handle, offset, data_len).map_err(io_error(&file))?;
    let mut removed = Vec::new();
    let damaged_index = parse_segment_name(&file).unwrap_or(u64::MAX);
    for (index, name) in segments {
        if index > damaged_index {
            storage.remove(&name).map_err(io_error(&name))?;
            removed.push(name);
        }
    }
    storage.sync_dir().map_err(io_error("data directory"))?;
    Ok(Some(format!(
        "truncated {file} at offset {offset}; removed {} later segment(s){}",
        removed.len(),
        if removed.is_empty() { String::new() } else { format!(": {}", removed.join(", ")) }
    )))
}
