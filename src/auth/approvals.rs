//! Two-person approval: a dangerous change (see [`ApprovalConfig`]) is not applied when it is
//! requested; it waits, pending, until a second admin key (not the requester's) approves it,
//! and is dropped if nobody does before it expires. The requester (or any admin) may reject
//! it. Requests, approvals, rejections and expiries are audited by the caller.
//!
//! Pending requests survive a restart: every request, and the end of every request (approved,
//! rejected or expired), is appended to `approvals.jsonl` (a [`crate::journal`] file) and
//! synced before the caller goes on. An approval is recorded as the end of its request before
//! its changes are applied, so a crash in between cannot apply them twice after the restart
//! (at most once: the audit log shows what was applied).
//!
//! # File format (`approvals.jsonl`, journal version 1)
//!
//! One JSON object per line, `"kind"` naming it:
//! - `requested`: `view` (the pending request as `GET /api/v1/approvals` lists it) and `work`
//!   (what approving it does, owned by the caller: `crate::http::approvals::Deferred`);
//! - `ended`: `id`, a request that was approved, rejected or expired.
//!
//! Folded at start, a `requested` with no `ended` is pending again (and expires as usual). A
//! second `requested` with one id is damage; an `ended` for an id not pending is ignored (a
//! step whose sync failed was not taken, but its line may have reached the file). The file is
//! rewritten with the pending requests alone when it holds more than twice as many lines as
//! requests, plus 64.

use std::collections::BTreeMap;

use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::Principal;
use crate::engine::{Command, Engine};
use crate::journal::{Journal, JournalError};
use crate::wal::Storage;

/// The file of the pending requests, in the data directory.
pub const APPROVALS_FILE: &str = "approvals.jsonl";

/// Most requests pending at once.
pub const PENDING_MAX: usize = 1000;

/// When a change needs a second admin's approval. A threshold of 0 turns its rule off.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApprovalConfig {
    /// A change that lowers a SKU's (or location's) on-hand count by more than this many units.
    pub negative_units: u64,
    /// ... or by more than this percentage of its on-hand count, when it removes at least
    /// `percent_min_units` units (so small corrections on small counts need no approval).
    pub negative_percent: u64,
    pub percent_min_units: u64,
    /// A bulk request that sets more than this many SKUs to zero.
    pub zeroed_skus: u64,
    /// Deleting a SKU (`DELETE_SKU`, `DELETE /api/v1/skus/{sku}`).
    pub delete_sku: bool,
    /// How long a request waits for approval.
    pub expiry_ms: u64,
}

impl Default for ApprovalConfig {
    fn default() -> ApprovalConfig {
        ApprovalConfig {
            negative_units: 1000,
            negative_percent: 50,
            percent_min_units: 10,
            zeroed_skus: 20,
            delete_sku: true,
            expiry_ms: 3_600_000,
        }
    }
}

impl ApprovalConfig {
    /// Why lowering on-hand from `on_hand` by `drop` units needs approval, if it does.
    pub fn large_drop(&self, on_hand: u64, drop: u64) -> Option<String> {
        if self.negative_units > 0 && drop > self.negative_units {
            return Some(format!("removes {drop} units (more than {})", self.negative_units));
        }
        let percent = self.negative_percent;
        if percent > 0 && drop >= self.percent_min_units.max(1) && drop * 100 > on_hand * percent {
            return Some(format!("removes {drop} of {on_hand} units (more than {percent}%)"));
        }
        None
    }

    /// Why zeroing `count` SKUs at once needs approval, if it does.
    pub fn many_zeroed(&self, count: u64) -> Option<String> {
        (self.zeroed_skus > 0 && count > self.zeroed_skus)
            .then(|| format!("sets {count} SKUs to zero (more than {})", self.zeroed_skus))
    }
}

/// Why `command` needs a second admin's approval under `config`, if it does: a stock or
/// location count lowered by too much, or a SKU deleted. The current count is read without a
/// lock (a concurrent change may move it a little; the rule is about large changes).
pub fn dangerous(
    engine: &Engine,
    config: &ApprovalConfig,
    command: &Command,
    now_ms: u64,
) -> Option<String> {
    let location_on_hand = |sku: &[u8], location: &[u8]| {
        let reply = engine.query_locations(sku, now_ms);
        reply.locations.iter().find(|l| l.location == location).map_or(0, |l| l.on_hand)
    };
    let (on_hand, drop) = match command {
        Command::AdjustStock { delta, .. } | Command::AdjustLocation { delta, .. }
            if *delta >= 0 =>
        {
            return None;
        }
        Command::AdjustStock { sku, delta, .. } => {
            (engine.query_sku(sku, now_ms).info.on_hand, delta.unsigned_abs())
        }
        Command::AdjustLocation { sku, location, delta, .. } => {
            (location_on_hand(sku, location), delta.unsigned_abs())
        }
        Command::SetStock { sku, on_hand: to, .. } => {
            let from = engine.query_sku(sku, now_ms).info.on_hand;
            (from, from.saturating_sub(*to))
        }
        Command::SetLocation { sku, location, on_hand: to, .. } => {
            let from = location_on_hand(sku, location);
            (from, from.saturating_sub(*to))
        }
        Command::DeleteSku { .. } => {
            return config.delete_sku.then(|| "deletes the SKU".to_string());
        }
        _ => return None,
    };
    config.large_drop(on_hand, drop)
}

/// A request waiting for approval, as listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingView {
    pub id: String,
    pub action: String,
    pub target: String,
    /// Why it needs approval.
    pub why: String,
    pub reason: String,
    /// The changes it would make, one line each.
    pub changes: Vec<String>,
    pub requested_by: String,
    pub requested_name: String,
    pub created_ms: u64,
    pub expires_ms: u64,
}

struct Pending<T> {
    view: PendingView,
    work: T,
}

/// A line of `approvals.jsonl`.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Entry<W> {
    Requested { view: PendingView, work: W },
    Ended { id: String },
}

/// Why an approval step was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApprovalError {
    #[error("no pending request {0}")]
    NotFound(String),
    #[error("request {0} expired before it was approved")]
    Expired(String),
    #[error("the key that requested a change cannot approve it: a second admin must")]
    OwnRequest,
    #[error("only an admin or the requester may reject a request")]
    NotYours,
    #[error("{PENDING_MAX} requests are pending already")]
    Full,
    #[error("cannot read random bytes: {0}")]
    Random(String),
    /// The step could not be recorded, so it was not taken.
    #[error("the approvals file cannot be written: {0}")]
    Storage(String),
}

struct State<T> {
    pending: BTreeMap<String, Pending<T>>,
    /// `None` for a store kept in memory only (tests).
    journal: Option<Journal>,
}

impl<T: Serialize> State<T> {
    /// Appends `entry` (synced); nothing changes in memory when that fails.
    fn record(&mut self, entry: &Entry<&T>) -> Result<(), ApprovalError> {
        let Some(journal) = &mut self.journal else { return Ok(()) };
        journal
            .append(std::slice::from_ref(entry))
            .map_err(|e| ApprovalError::Storage(e.to_string()))
    }

    /// Rewrites the file with the pending requests alone once ended ones dominate it. A failed
    /// rewrite leaves the old file, which folds to the same requests.
    fn compact(&mut self, storage: &dyn Storage) {
        let Some(journal) = &mut self.journal else { return };
        if journal.lines() <= 2 * self.pending.len() + 64 {
            return;
        }
        let entries: Vec<Entry<&T>> = self
            .pending
            .values()
            .map(|p| Entry::Requested { view: p.view.clone(), work: &p.work })
            .collect();
        if let Err(e) = journal.rewrite(storage, &entries) {
            tracing::warn!(error = %e, "compacting {APPROVALS_FILE} failed; it stays as it is");
        }
    }
}

/// The pending requests; `T` is the deferred work.
pub struct Approvals<T> {
    state: Mutex<State<T>>,
}

impl<T> Default for Approvals<T> {
    /// A store in memory only.
    fn default() -> Self {
        Approvals { state: Mutex::new(State { pending: BTreeMap::new(), journal: None }) }
    }
}

/// What a request is about.
pub struct Request {
    pub action: String,
    pub target: String,
    pub why: String,
    pub reason: String,
    pub changes: Vec<String>,
}

impl<T: Serialize + DeserializeOwned> Approvals<T> {
    /// Opens (or creates) `approvals.jsonl` in `storage` and returns the requests it leaves
    /// pending, expired ones included (the caller expires them as usual).
    pub fn open(storage: &dyn Storage) -> Result<Approvals<T>, JournalError> {
        let (journal, entries) = Journal::open::<Entry<T>>(storage, APPROVALS_FILE)?;
        let mut pending = BTreeMap::new();
        for (line, entry) in entries.into_iter().enumerate() {
            let corrupt = |problem| JournalError::corrupt(APPROVALS_FILE, line, problem);
            match entry {
                Entry::Requested { view, work } => {
                    let id = view.id.clone();
                    if pending.insert(id.clone(), Pending { view, work }).is_some() {
                        return Err(corrupt(format!("request {id} is made twice")));
                    }
                }
                Entry::Ended { id } => {
                    pending.remove(&id);
                }
            }
        }
        Ok(Approvals { state: Mutex::new(State { pending, journal: Some(journal) }) })
    }
}

impl<T: Serialize> Approvals<T> {
    /// Records a request by `by`; returns what it looks like pending. Blocking (one
    /// `fdatasync`).
    pub fn request(
        &self,
        request: Request,
        by: &Principal,
        work: T,
        now_ms: u64,
        expiry_ms: u64,
    ) -> Result<PendingView, ApprovalError> {
        let mut state = self.state.lock();
        if state.pending.len() >= PENDING_MAX {
            return Err(ApprovalError::Full);
        }
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(|e| ApprovalError::Random(e.to_string()))?;
        let view = PendingView {
            id: format!("ap_{}", hex::encode(random)),
            action: request.action,
            target: request.target,
            why: request.why,
            reason: request.reason,
            changes: request.changes,
            requested_by: by.key_id.to_string(),
            requested_name: by.name.to_string(),
            created_ms: now_ms,
            expires_ms: now_ms.saturating_add(expiry_ms),
        };
        state.record(&Entry::Requested { view: view.clone(), work: &work })?;
        state.pending.insert(view.id.clone(), Pending { view: view.clone(), work });
        Ok(view)
    }

    /// Removes and returns the requests past their expiry (for the audit log). Blocking.
    pub fn expire(
        &self,
        storage: &dyn Storage,
        now_ms: u64,
    ) -> Result<Vec<PendingView>, ApprovalError> {
        let mut state = self.state.lock();
        let expired: Vec<String> = state
            .pending
            .values()
            .filter(|p| p.view.expires_ms <= now_ms)
            .map(|p| p.view.id.clone())
            .collect();
        let mut views = Vec::with_capacity(expired.len());
        for id in expired {
            state.record(&Entry::Ended { id: id.clone() })?;
            views.push(state.pending.remove(&id).expect("listed above").view);
        }
        state.compact(storage);
        Ok(views)
    }

    /// The pending requests, oldest first.
    pub fn list(&self) -> Vec<PendingView> {
        let state = self.state.lock();
        let mut list: Vec<_> = state.pending.values().map(|p| p.view.clone()).collect();
        list.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        list
    }

    /// Takes a request out for execution by `approver`, who must not be its requester (the
    /// caller checks the admin role). Its end is recorded first. Blocking.
    pub fn approve(
        &self,
        storage: &dyn Storage,
        id: &str,
        approver: &Principal,
        now_ms: u64,
    ) -> Result<(PendingView, T), ApprovalError> {
        let mut state = self.state.lock();
        let entry = state.pending.get(id).ok_or_else(|| ApprovalError::NotFound(id.to_string()))?;
        if entry.view.expires_ms <= now_ms {
            return Err(ApprovalError::Expired(id.to_string()));
        }
        if entry.view.requested_by == *approver.key_id {
            return Err(ApprovalError::OwnRequest);
        }
        state.record(&Entry::Ended { id: id.to_string() })?;
        let taken = state.pending.remove(id).expect("present");
        state.compact(storage);
        Ok((taken.view, taken.work))
    }

    /// Drops a request without applying it, if `may` allows it given the request. Blocking.
    pub fn reject(
        &self,
        storage: &dyn Storage,
        id: &str,
        may: impl FnOnce(&PendingView) -> bool,
    ) -> Result<PendingView, ApprovalError> {
        let mut state = self.state.lock();
        let entry = state.pending.get(id).ok_or_else(|| ApprovalError::NotFound(id.to_string()))?;
        if !may(&entry.view) {
            return Err(ApprovalError::NotYours);
        }
        state.record(&Entry::Ended { id: id.to_string() })?;
        let view = state.pending.remove(id).expect("present").view;
        state.compact(storage);
        Ok(view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;
    use crate::wal::{MemStorage, Storage};

    fn admin(id: &str) -> Principal {
        Principal { key_id: id.into(), name: id.into(), role: Role::Admin }
    }

    fn request() -> Request {
        Request {
            action: "adjust_stock".into(),
            target: "SKU-1".into(),
            why: "big".into(),
            reason: "count".into(),
            changes: vec!["adjust_stock SKU-1 by -5000".into()],
        }
    }

    #[test]
    fn thresholds() {
        let config = ApprovalConfig::default();
        assert_eq!(config.large_drop(1_000_000, 1000), None);
        assert!(config.large_drop(1_000_000, 1001).is_some());
        assert_eq!(config.large_drop(100, 50), None, "exactly half is allowed");
        assert!(config.large_drop(100, 51).is_some());
        assert_eq!(config.large_drop(5, 5), None, "below percent_min_units");
        assert_eq!(config.many_zeroed(20), None);
        assert!(config.many_zeroed(21).is_some());
        let off =
            ApprovalConfig { negative_units: 0, negative_percent: 0, zeroed_skus: 0, ..config };
        assert_eq!(off.large_drop(100, u64::MAX / 1000), None);
        assert_eq!(off.many_zeroed(u64::MAX), None);
    }

    #[test]
    fn a_second_admin_approves_before_expiry() {
        let storage = MemStorage::new();
        let approvals = Approvals::<u32>::open(&storage).expect("open");
        let view = approvals.request(request(), &admin("a"), 7, 1000, 500).expect("pending");
        assert_eq!(view.expires_ms, 1500);
        let own = approvals.approve(&storage, &view.id, &admin("a"), 1100);
        assert_eq!(own, Err(ApprovalError::OwnRequest));
        assert_eq!(approvals.list().len(), 1, "a refused approval leaves it pending");
        let approved = approvals.approve(&storage, &view.id, &admin("b"), 1499).expect("approved");
        assert_eq!((approved.0.id.as_str(), approved.1), (view.id.as_str(), 7));
        assert!(matches!(
            approvals.approve(&storage, &view.id, &admin("b"), 1499),
            Err(ApprovalError::NotFound(_))
        ));

        let late = approvals.request(request(), &admin("a"), 8, 2000, 500).expect("pending");
        assert_eq!(
            approvals.approve(&storage, &late.id, &admin("b"), 2500),
            Err(ApprovalError::Expired(late.id.clone()))
        );
        assert_eq!(approvals.expire(&storage, 2499), Ok(vec![]));
        let expired = approvals.expire(&storage, 2500).expect("expired");
        assert_eq!(expired.len(), 1);
        assert!(approvals.list().is_empty());

        let rejected = approvals.request(request(), &admin("a"), 9, 3000, 500).expect("pending");
        let refused = approvals.reject(&storage, &rejected.id, |_| false);
        assert_eq!(refused, Err(ApprovalError::NotYours));
        let done = approvals.reject(&storage, &rejected.id, |_| true).expect("rejected");
        assert_eq!(done.id, rejected.id);
        assert!(approvals.list().is_empty());
    }

    #[test]
    fn pending_requests_survive_a_reopen_and_ended_ones_do_not() {
        let storage = MemStorage::new();
        let approvals = Approvals::<String>::open(&storage).expect("open");
        let work = |n: u32| format!("work {n}");
        let kept = approvals.request(request(), &admin("a"), work(1), 1000, 500).expect("pending");
        let approved = approvals.request(request(), &admin("a"), work(2), 1001, 500).expect("ok");
        let rejected = approvals.request(request(), &admin("a"), work(3), 1002, 500).expect("ok");
        approvals.approve(&storage, &approved.id, &admin("b"), 1100).expect("approved");
        approvals.reject(&storage, &rejected.id, |_| true).expect("rejected");
        drop(approvals);

        let reopened = Approvals::<String>::open(&storage).expect("reopen");
        assert_eq!(reopened.list(), vec![kept.clone()], "only the open request is back");
        let (view, taken) = reopened.approve(&storage, &kept.id, &admin("b"), 1200).expect("ok");
        assert_eq!((view, taken), (kept.clone(), work(1)), "with its work");
        drop(reopened);
        let again = Approvals::<String>::open(&storage).expect("reopen");
        assert!(again.list().is_empty(), "an approval is never pending again");
    }

    #[test]
    fn the_file_is_compacted_and_a_repeated_request_is_refused_with_its_line() {
        let storage = MemStorage::new();
        let approvals = Approvals::<u32>::open(&storage).expect("open");
        let open = approvals.request(request(), &admin("a"), 1, 0, 10_000).expect("pending");
        for n in 0..100 {
            let view = approvals.request(request(), &admin("a"), n, 0, 10_000).expect("pending");
            approvals.reject(&storage, &view.id, |_| true).expect("rejected");
        }
        let lines = |storage: &MemStorage| {
            storage.read(APPROVALS_FILE).expect("file").split(|b| *b == b'\n').count() - 1
        };
        assert!(lines(&storage) <= 2 + 64, "compacted: {} lines", lines(&storage));
        drop(approvals);
        let reopened = Approvals::<u32>::open(&storage).expect("reopen");
        assert_eq!(reopened.list(), vec![open]);
        drop(reopened);

        let mut file = storage.open(APPROVALS_FILE).expect("open");
        let end = storage.read(APPROVALS_FILE).expect("file").len() as u64;
        let line = lines(&storage) + 1;
        // An end whose sync failed may be in the file without its step taken: ignored.
        let ended = b"{\"v\":1,\"kind\":\"ended\",\"id\":\"ap_unknown\"}\n";
        file.write_at(end, ended).unwrap();
        let reopened = Approvals::<u32>::open(&storage).expect("an unknown end is ignored");
        assert_eq!(reopened.list().len(), 1);
        drop(reopened);
        let again = format!(
            "{}\n",
            std::str::from_utf8(&storage.read(APPROVALS_FILE).unwrap())
                .unwrap()
                .lines()
                .next()
                .unwrap()
        );
        file.write_at(end + ended.len() as u64, again.as_bytes()).unwrap();
        let Err(error) = Approvals::<u32>::open(&storage) else { panic!("damage accepted") };
        let message = error.to_string();
        let at = format!("approvals.jsonl line {}", line + 1);
        assert!(message.contains(&at) && message.contains("made twice"), "{message}");
    }
}
