//! The audit log: an append-only journal of administrative changes (who, when, what, why,
//! before and after), kept next to the write-ahead log and never rewritten.
//!
//! # File format (version 1)
//!
//! `audit.jsonl` in the data directory: UTF-8 text, one JSON object per line, each line ending
//! with `\n`. Fields: `v` (format version, 1), `seq` (1, 2, 3, ... without gaps), `at_ms` (UTC
//! milliseconds), `actor`, `action` (`set_stock`, `adjust_stock`, `set_safety_stock`),
//! `target` (the SKU), `reason`, `before` and `after` (objects with the changed figures), `lsn`
//! (the write-ahead-log record of the change, 0 for changes outside it: keys, approvals),
//! `key` (optional: the id of the API key that made the change). Unknown fields are ignored by readers of the
//! same major version.
//!
//! An entry is appended and `fdatasync`ed after the change's log record is durable and before
//! the change is acknowledged. A line cut short by a crash (no final `\n`) was never
//! acknowledged: it is dropped when the file is opened. A complete line that does not parse, or
//! a gap in `seq`, is damage: the server refuses to start and names the line, rather than
//! appending after it. (Moving the file aside starts a new journal; nothing in it is needed to
//! recover the stock state.)
//!
//! One window is not closed: a crash after the change's log record is durable and before its
//! audit line is, leaves a durable change without its entry (it was never acknowledged to the
//! caller, who will see a connection error and may retry).

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::wal::{Storage, StorageFile};

/// The journal's file name in the data directory.
pub const AUDIT_FILE: &str = "audit.jsonl";
/// The format version written in every entry.
pub const AUDIT_VERSION: u32 = 1;
/// Entries kept in memory for the API (the file keeps all of them).
const RECENT_MAX: usize = 10_000;

/// One administrative change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub v: u32,
    pub seq: u64,
    pub at_ms: u64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub reason: String,
    pub before: Value,
    pub after: Value,
    pub lsn: u64,
    /// The API key that made the change (absent before keys existed, and for changes made by
    /// the server itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// What an append records; the journal adds the version and sequence number.
#[derive(Clone, Debug)]
pub struct NewEntry {
    pub at_ms: u64,
    pub actor: String,
    pub action: &'static str,
    pub target: String,
    pub reason: String,
    pub before: Value,
    pub after: Value,
    pub lsn: u64,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    #[error("{file}: {source}")]
    Io { file: &'static str, source: io::Error },
    #[error(
        "{file} line {line} is damaged ({problem}); move the file aside to start a new audit \
         journal"
    )]
    Corrupt { file: &'static str, line: usize, problem: String },
    #[error("the audit journal failed earlier ({0}); administrative changes are refused")]
    Failed(String),
}

struct Journal {
    file: Box<dyn StorageFile>,
    end: u64,
    next_seq: u64,
    recent: VecDeque<Arc<AuditEntry>>,
    /// Set for good after a failed write: no change may go unaudited.
    failed: Option<String>,
}

impl Journal {
    /// The newest `limit` entries kept in memory that match `filter`, newest first.
    fn newest(&self, filter: &AuditFilter, limit: usize) -> Vec<Arc<AuditEntry>> {
        self.recent
            .iter()
            .rev()
            .filter(|entry| filter.matches(entry))
            .take(limit)
            .cloned()
            .collect()
    }
}

/// The open journal. Appends are serialised; each one is durable when `append` returns.
pub struct AuditLog {
    journal: Mutex<Journal>,
}

impl AuditLog {
    /// Opens (or creates) the journal, checks every line and drops a torn last line.
    pub fn open(storage: &dyn Storage) -> Result<AuditLog, AuditError> {
        let io = |source| AuditError::Io { file: AUDIT_FILE, source };
        let exists = storage.list().map_err(io)?.iter().any(|name| name == AUDIT_FILE);
        if !exists {
            let file = storage.create(AUDIT_FILE).map_err(io)?;
            storage.sync_dir().map_err(io)?;
            return Ok(AuditLog::with(file, 0, Vec::new()));
        }
        let contents = storage.read(AUDIT_FILE).map_err(io)?;
        let (entries, complete) = parse(&contents)?;
        let torn = contents.len() as u64 > complete;
        drop(contents);
        let mut file = storage.open(AUDIT_FILE).map_err(io)?;
        if torn {
            file.set_len(complete).map_err(io)?;
            file.sync_data().map_err(io)?;
        }
        Ok(AuditLog::with(file, complete, entries))
    }

    fn with(file: Box<dyn StorageFile>, end: u64, entries: Vec<AuditEntry>) -> AuditLog {
        let next_seq = entries.last().map_or(1, |entry| entry.seq + 1);
        let skip = entries.len().saturating_sub(RECENT_MAX);
        let recent = entries.into_iter().skip(skip).map(Arc::new).collect();
        AuditLog { journal: Mutex::new(Journal { file, end, next_seq, recent, failed: None }) }
    }

    /// Refuses if an earlier append failed (checked before making a change).
    pub fn check(&self) -> Result<(), AuditError> {
        match &self.journal.lock().failed {
            Some(why) => Err(AuditError::Failed(why.clone())),
            None => Ok(()),
        }
    }

    /// Appends one entry and makes it durable. Blocking (a write and an `fdatasync`): call it
    /// off the async runtime's worker threads.
    pub fn append(&self, entry: NewEntry) -> Result<Arc<AuditEntry>, AuditError> {
        let mut entries = self.append_all(vec![entry], None)?;
        Ok(entries.pop().expect("one entry appended"))
    }

    /// Appends entries with consecutive sequence numbers in one write and one `fdatasync`
    /// (a bulk change). Blocking, like `append`.
    /// Appends entries made with API key `key`, in one write and one `fdatasync`.
    pub fn append_all(
        &self,
        new: Vec<NewEntry>,
        key: Option<String>,
    ) -> Result<Vec<Arc<AuditEntry>>, AuditError> {
        let mut journal = self.journal.lock();
        if let Some(why) = &journal.failed {
            return Err(AuditError::Failed(why.clone()));
        }
        let first_seq = journal.next_seq;
        let entries: Vec<AuditEntry> = new
            .into_iter()
            .zip(first_seq..)
            .map(|(entry, seq)| AuditEntry {
                v: AUDIT_VERSION,
                seq,
                at_ms: entry.at_ms,
                actor: entry.actor,
                action: entry.action.to_string(),
                target: entry.target,
                reason: entry.reason,
                before: entry.before,
                after: entry.after,
                lsn: entry.lsn,
                key: key.clone(),
            })
            .collect();
        let mut lines = Vec::new();
        for entry in &entries {
            serde_json::to_writer(&mut lines, entry).expect("an audit entry serialises");
            lines.push(b'\n');
        }
        let end = journal.end;
        let written = journal.file.write_at(end, &lines).and_then(|()| journal.file.sync_data());
        if let Err(e) = written {
            journal.failed = Some(e.to_string());
            return Err(AuditError::Io { file: AUDIT_FILE, source: e });
        }
        journal.end += lines.len() as u64;
        journal.next_seq += entries.len() as u64;
        let entries: Vec<Arc<AuditEntry>> = entries.into_iter().map(Arc::new).collect();
        for entry in &entries {
            if journal.recent.len() == RECENT_MAX {
                journal.recent.pop_front();
            }
            journal.recent.push_back(entry.clone());
        }
        Ok(entries)
    }

    /// The newest entries (up to `limit`) with `seq < before_seq` that concern `target` (all
    /// targets if `None`), newest first. Only the last 10 000 entries are kept in memory.
    pub fn recent(
        &self,
        target: Option<&str>,
        before_seq: Option<u64>,
        limit: usize,
    ) -> Vec<Arc<AuditEntry>> {
        let filter =
            AuditFilter { target: target.map(String::from), before_seq, ..AuditFilter::default() };
        self.journal.lock().newest(&filter, limit)
    }
}

/// Which entries a query wants; every field left `None` matches everything.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub target: Option<String>,
    /// The free-text actor or the API key id.
    pub actor: Option<String>,
    pub action: Option<String>,
    /// From this time on (UTC ms, inclusive).
    pub from_ms: Option<u64>,
    /// Before this time (UTC ms, exclusive).
    pub to_ms: Option<u64>,
    /// Entries older than this one (paging).
    pub before_seq: Option<u64>,
}

impl AuditFilter {
    pub fn matches(&self, entry: &AuditEntry) -> bool {
        let is =
            |wanted: &Option<String>, value: &str| wanted.as_deref().is_none_or(|w| w == value);
        is(&self.target, &entry.target)
            && (is(&self.actor, &entry.actor)
                || self.actor.is_some() && self.actor.as_deref() == entry.key.as_deref())
            && is(&self.action, &entry.action)
            && self.from_ms.is_none_or(|from| entry.at_ms >= from)
            && self.to_ms.is_none_or(|to| entry.at_ms < to)
            && self.before_seq.is_none_or(|before| entry.seq < before)
    }
}

impl AuditLog {
    /// The newest `limit` entries matching `filter`, newest first, over the whole journal:
    /// from memory when the newest entries kept there answer it, otherwise by reading
    /// `audit.jsonl` (appends only extend it, so the part written so far is read as of now).
    /// Blocking when it reads the file.
    pub fn query(
        &self,
        storage: &dyn Storage,
        filter: &AuditFilter,
        limit: usize,
    ) -> Result<Vec<Arc<AuditEntry>>, AuditError> {
        let end = {
            let journal = self.journal.lock();
            let found = journal.newest(filter, limit);
            let everything_in_memory = journal.recent.front().is_none_or(|first| first.seq == 1);
            if found.len() == limit || everything_in_memory {
                return Ok(found);
            }
            journal.end
        };
        let io = |source| AuditError::Io { file: AUDIT_FILE, source };
        let contents = storage.read(AUDIT_FILE).map_err(io)?;
        let written =
            usize::try_from(end).map_or(&contents[..], |end| &contents[..end.min(contents.len())]);
        let (entries, _) = parse(written)?;
        Ok(entries
            .into_iter()
            .rev()
            .filter(|e| filter.matches(e))
            .take(limit)
            .map(Arc::new)
            .collect())
    }
}

/// Parses every complete line; returns the entries and the length of the complete lines.
fn parse(contents: &[u8]) -> Result<(Vec<AuditEntry>, u64), AuditError> {
    let mut entries: Vec<AuditEntry> = Vec::new();
    let mut offset = 0usize;
    for (index, line) in contents.split_inclusive(|b| *b == b'\n').enumerate() {
        if line.last() != Some(&b'\n') {
            break; // torn: never acknowledged
        }
        let corrupt =
            |problem: String| AuditError::Corrupt { file: AUDIT_FILE, line: index + 1, problem };
        let entry: AuditEntry = serde_json::from_slice(line).map_err(|e| corrupt(e.to_string()))?;
        if entry.v != AUDIT_VERSION {
            return Err(corrupt(format!("format version {} is not {AUDIT_VERSION}", entry.v)));
        }
        let expected = entries.last().map_or(1, |last| last.seq + 1);
        if entry.seq != expected {
            return Err(corrupt(format!("sequence {} where {expected} was due", entry.seq)));
        }
        offset += line.len();
        entries.push(entry);
    }
    Ok((entries, offset as u64))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::wal::MemStorage;

    fn change(n: u64) -> NewEntry {
        NewEntry {
            at_ms: 1_000 + n,
            actor: "alice".into(),
            action: "adjust_stock",
            target: format!("SKU-{}", n % 2),
            reason: "cycle count".into(),
            before: json!({ "on_hand": n }),
            after: json!({ "on_hand": n + 1 }),
            lsn: n,
        }
    }

    #[test]
    fn queries_filter_by_actor_time_and_target_and_reach_past_the_memory_window() {
        let storage = MemStorage::new();
        let log = AuditLog::open(&storage).unwrap();
        let total = RECENT_MAX as u64 + 50;
        let entries: Vec<NewEntry> = (0..total)
            .map(|n| NewEntry {
                actor: if n < 10 { "bob".into() } else { "alice".into() },
                ..change(n)
            })
            .collect();
        log.append_all(entries, None).unwrap();
        // Bob's entries are older than the newest 10 000 kept in memory: read from the file.
        let bob = AuditFilter { actor: Some("bob".into()), ..AuditFilter::default() };
        let found = log.query(&storage, &bob, 100).unwrap();
        assert_eq!(
            found.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..=10).rev().collect::<Vec<_>>()
        );
        // A time window and a target: [1_004, 1_008) on SKU-0 is n = 4 and 6.
        let window = AuditFilter {
            target: Some("SKU-0".into()),
            from_ms: Some(1_004),
            to_ms: Some(1_008),
            ..AuditFilter::default()
        };
        let found = log.query(&storage, &window, 100).unwrap();
        assert_eq!(found.iter().map(|e| e.at_ms).collect::<Vec<_>>(), [1_006, 1_004]);
        // The newest entries come from memory, and paging continues below them.
        let newest = log.query(&storage, &AuditFilter::default(), 2).unwrap();
        assert_eq!(newest.iter().map(|e| e.seq).collect::<Vec<_>>(), [total, total - 1]);
        let older = AuditFilter { before_seq: Some(3), ..AuditFilter::default() };
        let found = log.query(&storage, &older, 10).unwrap();
        assert_eq!(found.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 1]);
    }

    #[test]
    fn entries_survive_a_crash_and_continue_their_sequence() {
        let storage = MemStorage::new();
        let log = AuditLog::open(&storage).unwrap();
        for n in 0..3 {
            assert_eq!(log.append(change(n)).unwrap().seq, n + 1);
        }
        storage.crash();
        let log = AuditLog::open(&storage).unwrap();
        let all = log.recent(None, None, 10);
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 2, 1]);
        assert_eq!(log.recent(Some("SKU-1"), None, 10).len(), 1);
        assert_eq!(log.recent(None, Some(3), 1)[0].seq, 2);
        assert_eq!(log.append(change(3)).unwrap().seq, 4);
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_overwritten() {
        let storage = MemStorage::new();
        let log = AuditLog::open(&storage).unwrap();
        log.append(change(0)).unwrap();
        drop(log);
        storage.with_file(AUDIT_FILE, |bytes| bytes.extend_from_slice(b"{\"v\":1,\"seq\":2,\"at"));
        let log = AuditLog::open(&storage).unwrap();
        assert_eq!(log.append(change(1)).unwrap().seq, 2);
        drop(log);
        let reopened = AuditLog::open(&storage).unwrap();
        assert_eq!(reopened.recent(None, None, 10).len(), 2);
    }

    #[test]
    fn a_damaged_line_refuses_to_open_and_names_the_line() {
        let storage = MemStorage::new();
        let log = AuditLog::open(&storage).unwrap();
        for n in 0..3 {
            log.append(change(n)).unwrap();
        }
        drop(log);
        storage.with_file(AUDIT_FILE, |bytes| {
            let second = bytes.iter().position(|b| *b == b'\n').unwrap() + 1;
            bytes[second + 2] = b'#';
        });
        let error = AuditLog::open(&storage).err().expect("damage is refused").to_string();
        assert!(error.contains("line 2"), "{error}");
    }

    #[test]
    fn a_failed_sync_refuses_every_later_change() {
        let storage = MemStorage::new();
        let log = AuditLog::open(&storage).unwrap();
        storage.fail_syncs(true);
        assert!(matches!(log.append(change(0)), Err(AuditError::Io { .. })));
        storage.fail_syncs(false);
        assert!(matches!(log.check(), Err(AuditError::Failed(_))));
        assert!(matches!(log.append(change(1)), Err(AuditError::Failed(_))));
    }
}
