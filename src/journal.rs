//! A small durable journal for the companion modules' state (order sync, alerting): JSON
//! entries appended one per line and `fdatasync`ed, folded into the module's state when the
//! server starts, and compacted by rewriting the folded state when the file has grown well past
//! it.
//!
//! # File format (version 1)
//!
//! UTF-8 text in the data directory, one JSON object per line, each ending with `\n`. Every
//! object has `"v": 1` (the format version) and `"kind"`, naming the entry type; the other
//! fields belong to the module that owns the file (documented there). Readers skip nothing: a
//! complete line that does not parse, or has another version, is damage and the server refuses
//! to start, naming the file and line (moving the file aside starts the module afresh; the
//! stock state never depends on it). A last line without its `\n` was cut short by a crash
//! before it was acknowledged, and is dropped.
//!
//! A rewrite writes `NAME.tmp`, syncs it, renames it over `NAME` and syncs the directory, so a
//! crash leaves either the old file or the new one. Appends then go to the new file through the
//! handle it was written with (no reopening, which could fail and leave appends going to the
//! replaced file). If the directory sync fails, the rename may not survive a crash, and with it
//! anything appended to the new file: the journal then refuses every append (its owner reports
//! the error) until the server restarts and reads whichever file is there.

use std::io;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::wal::{Storage, StorageFile};

/// The format version of every journal line.
pub const JOURNAL_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    #[error("{file}: {source}")]
    Io { file: String, source: io::Error },
    #[error(
        "{file} line {line} is damaged ({problem}); move the file aside to start this module's \
         state afresh"
    )]
    Corrupt { file: String, line: usize, problem: String },
}

impl JournalError {
    /// Damage at the entry of index `index` (0-based; line numbers start at 1) of `file`: for
    /// the journal itself and for the owners that fold its entries.
    pub fn corrupt(file: &str, index: usize, problem: String) -> JournalError {
        JournalError::Corrupt { file: file.to_string(), line: index + 1, problem }
    }
}

#[derive(Serialize)]
struct Versioned<'a, T> {
    v: u32,
    #[serde(flatten)]
    entry: &'a T,
}

#[derive(Deserialize)]
struct Version {
    v: u32,
}

/// An open journal file. Not synchronised: its owner serialises appends.
pub struct Journal {
    name: String,
    file: Box<dyn StorageFile>,
    end: u64,
    /// Lines in the file, to decide when to compact.
    lines: usize,
    /// Set when a rewrite's directory sync failed: appends are refused from then on.
    broken: Option<String>,
}

impl Journal {
    /// Opens (or creates) `name` and returns it with every complete entry, oldest first.
    pub fn open<T: DeserializeOwned>(
        storage: &dyn Storage,
        name: &str,
    ) -> Result<(Journal, Vec<T>), JournalError> {
        let io = |source| JournalError::Io { file: name.to_string(), source };
        let exists = storage.list().map_err(io)?.iter().any(|n| n == name);
        if !exists {
            let file = storage.create(name).map_err(io)?;
            storage.sync_dir().map_err(io)?;
            let journal = Journal { name: name.into(), file, end: 0, lines: 0, broken: None };
            return Ok((journal, Vec::new()));
        }
        let contents = storage.read(name).map_err(io)?;
        let mut entries = Vec::new();
        let mut complete = 0usize;
        for (index, line) in contents.split_inclusive(|b| *b == b'\n').enumerate() {
            if line.last() != Some(&b'\n') {
                break; // torn: never acknowledged
            }
            let corrupt = |problem| JournalError::corrupt(name, index, problem);
            let version: Version =
                serde_json::from_slice(line).map_err(|e| corrupt(e.to_string()))?;
            if version.v != JOURNAL_VERSION {
                return Err(corrupt(format!(
                    "format version {} is not {JOURNAL_VERSION}",
                    version.v
                )));
            }
            entries.push(serde_json::from_slice(line).map_err(|e| corrupt(e.to_string()))?);
            complete += line.len();
        }
        let torn = contents.len() > complete;
        drop(contents);
        let mut file = storage.open(name).map_err(io)?;
        if torn {
            file.set_len(complete as u64).map_err(io)?;
            file.sync_data().map_err(io)?;
        }
        let lines = entries.len();
        let end = complete as u64;
        Ok((Journal { name: name.into(), file, end, lines, broken: None }, entries))
    }

    /// Appends entries in one write and one `fdatasync`. Blocking.
    pub fn append<T: Serialize>(&mut self, entries: &[T]) -> Result<(), JournalError> {
        if entries.is_empty() {
            return Ok(());
        }
        if let Some(why) = &self.broken {
            let source = io::Error::other(format!("not durable since a compaction: {why}"));
            return Err(JournalError::Io { file: self.name.clone(), source });
        }
        let bytes = encode(entries);
        self.file
            .write_at(self.end, &bytes)
            .and_then(|()| self.file.sync_data())
            .map_err(|source| JournalError::Io { file: self.name.clone(), source })?;
        self.end += bytes.len() as u64;
        self.lines += entries.len();
        Ok(())
    }

    /// Lines in the file.
    pub fn lines(&self) -> usize {
        self.lines
    }

    /// Replaces the whole file with `entries` (the folded state), atomically. Blocking.
    pub fn rewrite<T: Serialize>(
        &mut self,
        storage: &dyn Storage,
        entries: &[T],
    ) -> Result<(), JournalError> {
        let io = |source| JournalError::Io { file: self.name.clone(), source };
        let tmp = format!("{}.tmp", self.name);
        let bytes = encode(entries);
        let mut file = storage.create(&tmp).map_err(io)?;
        file.write_at(0, &bytes).and_then(|()| file.sync_data()).map_err(io)?;
        // Until the rename, the old file and its handle are intact.
        storage.rename(&tmp, &self.name).map_err(io)?;
        // The handle follows its file to the new name: appends go there from now on.
        self.file = file;
        self.end = bytes.len() as u64;
        self.lines = entries.len();
        storage.sync_dir().map_err(|e| {
            self.broken = Some(format!("directory sync after rewrite failed: {e}"));
            io(e)
        })
    }
}

fn encode<T: Serialize>(entries: &[T]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in entries {
        let line = Versioned { v: JOURNAL_VERSION, entry };
        serde_json::to_writer(&mut bytes, &line).expect("a journal entry serialises");
        bytes.push(b'\n');
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::MemStorage;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "kind", rename_all = "snake_case")]
    enum Entry {
        Cursor { channel: String, cursor: String },
        Count { n: u64 },
    }

    fn cursor(c: &str) -> Entry {
        Entry::Cursor { channel: "shop".into(), cursor: c.into() }
    }

    #[test]
    fn appends_survive_and_torn_tails_are_dropped() {
        let storage = MemStorage::new();
        let (mut journal, entries) = Journal::open::<Entry>(&storage, "j.jsonl").unwrap();
        assert!(entries.is_empty());
        journal.append(&[cursor("a"), Entry::Count { n: 2 }]).unwrap();
        journal.append(&[cursor("b")]).unwrap();
        storage.with_file("j.jsonl", |bytes| bytes.extend_from_slice(b"{\"v\":1,\"kind\":\"cou"));
        let (mut journal, entries) = Journal::open::<Entry>(&storage, "j.jsonl").unwrap();
        assert_eq!(entries, vec![cursor("a"), Entry::Count { n: 2 }, cursor("b")]);
        assert_eq!(journal.lines(), 3);
        journal.append(&[cursor("c")]).unwrap();
        let (_, entries) = Journal::open::<Entry>(&storage, "j.jsonl").unwrap();
        assert_eq!(entries.last(), Some(&cursor("c")), "the torn tail was cut before appending");
        assert_eq!(entries.len(), 4);
    }

    #[test]
    fn rewrite_replaces_the_file() {
        let storage = MemStorage::new();
        let (mut journal, _) = Journal::open::<Entry>(&storage, "j.jsonl").unwrap();
        journal.append(&[cursor("a"), cursor("b"), cursor("c")]).unwrap();
        journal.rewrite(&storage, &[cursor("c")]).unwrap();
        journal.append(&[Entry::Count { n: 1 }]).unwrap();
        let (journal, entries) = Journal::open::<Entry>(&storage, "j.jsonl").unwrap();
        assert_eq!(entries, vec![cursor("c"), Entry::Count { n: 1 }]);
        assert_eq!(journal.lines(), 2);
        assert!(!storage.files().iter().any(|(name, _)| name.ends_with(".tmp")));
    }

    #[test]
    fn a_rewrite_whose_directory_sync_failed_refuses_appends() {
        let storage = MemStorage::new();
        let (mut journal, _) = Journal::open::<Entry>(&storage, "j.jsonl").unwrap();
        journal.append(&[cursor("a"), cursor("b")]).unwrap();
        storage.fail_dir_syncs(true);
        assert!(journal.rewrite(&storage, &[cursor("b")]).is_err());
        let err = journal.append(&[cursor("c")]).expect_err("refused");
        assert!(err.to_string().contains("not durable since a compaction"), "{err}");
        storage.fail_dir_syncs(false);
        let (_, entries) = Journal::open::<Entry>(&storage, "j.jsonl").unwrap();
        assert_eq!(entries, vec![cursor("b")], "nothing was appended after the failure");
    }

    #[test]
    fn damage_is_named() {
        let storage = MemStorage::new();
        storage.put("j.jsonl", b"{\"v\":1,\"kind\":\"count\",\"n\":1}\nnot json\n".to_vec());
        let err = Journal::open::<Entry>(&storage, "j.jsonl").err().expect("refused");
        assert!(err.to_string().contains("j.jsonl line 2"), "{err}");
        storage.put("j.jsonl", b"{\"v\":9,\"kind\":\"count\",\"n\":1}\n".to_vec());
        let err = Journal::open::<Entry>(&storage, "j.jsonl").err().expect("refused");
        assert!(err.to_string().contains("version 9"), "{err}");
    }

    #[test]
    fn failed_writes_are_errors() {
        let storage = MemStorage::new();
        let (mut journal, _) = Journal::open::<Entry>(&storage, "j.jsonl").unwrap();
        storage.fail_syncs(true);
        assert!(journal.append(&[cursor("a")]).is_err());
    }
}
