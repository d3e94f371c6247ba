//! The order sync's durable state, in the journal `sync.jsonl` (format: `crate::journal`):
//! per channel the pull cursor, the pull log, the log position up to which stock was pushed,
//! and per order what stockd did with it.
//!
//! # Entries (`kind`)
//!
//! - `cursor`: `channel`, `cursor` (the channel's opaque position after the last page applied).
//! - `pull`: one pull, see [`Pull`].
//! - `order`: the newest record of an order, see [`OrderRecord`] (a later entry for the same
//!   channel and order replaces an earlier one).
//! - `pushed`: `channel`, `lsn` (every change up to this log record was pushed).
//!
//! Folding keeps the last cursor and pushed position per channel, the last `pull_log_max`
//! pulls per channel, and the orders updated within `order_retention_ms`. When the file holds
//! more than twice the folded entries (and at least 1 024 lines), it is rewritten as the
//! folded state.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::journal::{Journal, JournalError};
use crate::wal::Storage;

/// The journal's file name in the data directory.
pub const SYNC_FILE: &str = "sync.jsonl";
const COMPACT_LINES_MIN: usize = 1024;

/// One pull of a channel's orders.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pull {
    pub channel: String,
    /// When it started, UTC milliseconds.
    pub started_ms: u64,
    pub duration_ms: u64,
    /// Orders received.
    pub fetched: u64,
    /// Orders that changed stock (held, confirmed or released).
    pub applied: u64,
    /// Orders recorded as rejected.
    pub rejected: u64,
    /// `ok` or `error`.
    pub status: String,
    pub error: Option<String>,
}

/// What stockd did with an order, as of its latest event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderRecord {
    pub channel: String,
    pub order: String,
    /// The reservation made for it.
    pub reservation: String,
    /// The order's latest status at the channel: `created`, `paid` or `cancelled`.
    pub status: String,
    /// `held`, `confirmed`, `released`, `cancelled` (nothing was held), `rejected`.
    pub state: String,
    /// The result code of the last operation (`ok`, `insufficient_stock`, ...).
    pub code: String,
    /// Why it was rejected, or a note.
    pub reason: Option<String>,
    pub lines: Vec<(String, u32)>,
    pub customer: String,
    /// `push` (webhook) or `pull`.
    pub source: String,
    pub first_ms: u64,
    pub updated_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Entry {
    Cursor { channel: String, cursor: String },
    Pull(Pull),
    Order(OrderRecord),
    Pushed { channel: String, lsn: u64 },
}

/// The folded state and its journal.
pub struct Store {
    journal: Journal,
    cursors: HashMap<String, String>,
    pushed: HashMap<String, u64>,
    pulls: HashMap<String, VecDeque<Pull>>,
    orders: HashMap<(String, String), OrderRecord>,
    pull_log_max: usize,
    retention_ms: u64,
}

impl Store {
    pub fn open(
        storage: &dyn Storage,
        pull_log_max: usize,
        retention_ms: u64,
    ) -> Result<Store, JournalError> {
        let (journal, entries) = Journal::open::<Entry>(storage, SYNC_FILE)?;
        let mut store = Store {
            journal,
            cursors: HashMap::new(),
            pushed: HashMap::new(),
            pulls: HashMap::new(),
            orders: HashMap::new(),
            pull_log_max,
            retention_ms,
        };
        for entry in entries {
            store.fold(entry);
        }
        Ok(store)
    }

    fn fold(&mut self, entry: Entry) {
        match entry {
            Entry::Cursor { channel, cursor } => {
                self.cursors.insert(channel, cursor);
            }
            Entry::Pushed { channel, lsn } => {
                self.pushed.insert(channel, lsn);
            }
            Entry::Pull(pull) => {
                let log = self.pulls.entry(pull.channel.clone()).or_default();
                if log.len() == self.pull_log_max {
                    log.pop_front();
                }
                log.push_back(pull);
            }
            Entry::Order(order) => {
                self.orders.insert((order.channel.clone(), order.order.clone()), order);
            }
        }
    }

    fn record(
        &mut self,
        storage: &dyn Storage,
        entries: Vec<Entry>,
        now_ms: u64,
    ) -> Result<(), JournalError> {
        self.journal.append(&entries)?;
        for entry in entries {
            self.fold(entry);
        }
        let live = self.cursors.len()
            + self.pushed.len()
            + self.pulls.values().map(VecDeque::len).sum::<usize>()
            + self.orders.len();
        if self.journal.lines() > COMPACT_LINES_MIN.max(2 * live) {
            self.compact(storage, now_ms)?;
        }
        Ok(())
    }

    /// Rewrites the journal as the folded state, dropping orders past their retention.
    fn compact(&mut self, storage: &dyn Storage, now_ms: u64) -> Result<(), JournalError> {
        let oldest = now_ms.saturating_sub(self.retention_ms);
        self.orders.retain(|_, order| order.updated_ms >= oldest);
        let mut entries: Vec<Entry> = Vec::new();
        let cursors = self.cursors.iter().map(|(channel, cursor)| Entry::Cursor {
            channel: channel.clone(),
            cursor: cursor.clone(),
        });
        entries.extend(cursors);
        let pushed =
            self.pushed.iter().map(|(c, lsn)| Entry::Pushed { channel: c.clone(), lsn: *lsn });
        entries.extend(pushed);
        entries.extend(self.pulls.values().flatten().cloned().map(Entry::Pull));
        let mut orders: Vec<&OrderRecord> = self.orders.values().collect();
        orders.sort_by_key(|order| order.updated_ms);
        entries.extend(orders.into_iter().cloned().map(Entry::Order));
        self.journal.rewrite(storage, &entries)
    }

    pub fn cursor(&self, channel: &str) -> Option<&str> {
        self.cursors.get(channel).map(String::as_str)
    }

    pub fn set_cursor(
        &mut self,
        storage: &dyn Storage,
        channel: &str,
        cursor: String,
        now_ms: u64,
    ) -> Result<(), JournalError> {
        if self.cursor(channel) == Some(cursor.as_str()) {
            return Ok(());
        }
        self.record(storage, vec![Entry::Cursor { channel: channel.into(), cursor }], now_ms)
    }

    pub fn pushed(&self, channel: &str) -> Option<u64> {
        self.pushed.get(channel).copied()
    }

    pub fn set_pushed(
        &mut self,
        storage: &dyn Storage,
        channel: &str,
        lsn: u64,
        now_ms: u64,
    ) -> Result<(), JournalError> {
        if self.pushed(channel) == Some(lsn) {
            return Ok(());
        }
        self.record(storage, vec![Entry::Pushed { channel: channel.into(), lsn }], now_ms)
    }

    pub fn add_pull(
        &mut self,
        storage: &dyn Storage,
        pull: Pull,
        now_ms: u64,
    ) -> Result<(), JournalError> {
        self.record(storage, vec![Entry::Pull(pull)], now_ms)
    }

    /// The newest pulls of a channel (at most `limit`), newest first.
    pub fn pulls(&self, channel: &str, limit: usize) -> Vec<Pull> {
        let Some(log) = self.pulls.get(channel) else { return Vec::new() };
        log.iter().rev().take(limit).cloned().collect()
    }

    /// Consecutive failed pulls at the end of a channel's log.
    pub fn failed_pulls(&self, channel: &str) -> u32 {
        let Some(log) = self.pulls.get(channel) else { return 0 };
        log.iter().rev().take_while(|pull| pull.status != "ok").count() as u32
    }

    pub fn order(&self, channel: &str, order: &str) -> Option<&OrderRecord> {
        self.orders.get(&(channel.to_string(), order.to_string()))
    }

    pub fn put_order(
        &mut self,
        storage: &dyn Storage,
        order: OrderRecord,
        now_ms: u64,
    ) -> Result<(), JournalError> {
        self.record(storage, vec![Entry::Order(order)], now_ms)
    }

    /// A channel's orders, newest update first, optionally only those in one state.
    pub fn orders(
        &self,
        channel: &str,
        state: Option<&str>,
        limit: usize,
    ) -> (Vec<OrderRecord>, usize) {
        let mut matched: Vec<&OrderRecord> = self
            .orders
            .values()
            .filter(|o| o.channel == channel && state.is_none_or(|s| o.state == s))
            .collect();
        let count = matched.len();
        matched.sort_by(|a, b| b.updated_ms.cmp(&a.updated_ms).then_with(|| a.order.cmp(&b.order)));
        (matched.into_iter().take(limit).cloned().collect(), count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::MemStorage;

    fn pull(channel: &str, started_ms: u64, ok: bool) -> Pull {
        Pull {
            channel: channel.into(),
            started_ms,
            duration_ms: 3,
            fetched: 1,
            applied: 1,
            rejected: 0,
            status: if ok { "ok" } else { "error" }.into(),
            error: (!ok).then(|| "HTTP 500".into()),
        }
    }

    fn order(id: &str, state: &str, updated_ms: u64) -> OrderRecord {
        OrderRecord {
            channel: "shop".into(),
            order: id.into(),
            reservation: format!("shop:{id}"),
            status: "created".into(),
            state: state.into(),
            code: "ok".into(),
            reason: None,
            lines: vec![("A".into(), 1)],
            customer: "c".into(),
            source: "pull".into(),
            first_ms: updated_ms,
            updated_ms,
        }
    }

    #[test]
    fn state_survives_reopening_and_compaction_keeps_it() {
        let storage = MemStorage::new();
        let mut store = Store::open(&storage, 3, 1_000).unwrap();
        store.set_cursor(&storage, "shop", "c1".into(), 0).unwrap();
        store.set_cursor(&storage, "shop", "c2".into(), 0).unwrap();
        store.set_pushed(&storage, "shop", 42, 0).unwrap();
        for n in 0..5 {
            store.add_pull(&storage, pull("shop", n, n < 2), n).unwrap();
        }
        store.put_order(&storage, order("1", "held", 10), 10).unwrap();
        store.put_order(&storage, order("1", "confirmed", 20), 20).unwrap();
        store.put_order(&storage, order("2", "rejected", 30), 30).unwrap();
        let check = |store: &Store| {
            assert_eq!(store.cursor("shop"), Some("c2"));
            assert_eq!(store.pushed("shop"), Some(42));
            let pulls = store.pulls("shop", 10);
            assert_eq!(pulls.iter().map(|p| p.started_ms).collect::<Vec<_>>(), vec![4, 3, 2]);
            assert_eq!(store.failed_pulls("shop"), 3);
            assert_eq!(store.order("shop", "1").unwrap().state, "confirmed");
            let (rejected, count) = store.orders("shop", Some("rejected"), 10);
            assert_eq!((rejected.len(), count), (1, 1));
        };
        check(&store);
        let mut store = Store::open(&storage, 3, 1_000).unwrap();
        check(&store);
        store.compact(&storage, 1_015).unwrap();
        let store = Store::open(&storage, 3, 1_000).unwrap();
        assert_eq!(store.journal.lines(), 1 + 1 + 3 + 2);
        check(&store);
        let mut store = store;
        store.compact(&storage, 1_025).unwrap();
        assert!(store.order("shop", "1").is_none(), "past its retention");
        assert!(store.order("shop", "2").is_some());
    }
}
