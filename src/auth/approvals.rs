//! Two-person approval: a dangerous change (see [`ApprovalConfig`]) is not applied when it is
//! requested; it waits, pending, until a second admin key (not the requester's) approves it,
//! and is dropped if nobody does before it expires. The requester (or any admin) may reject
//! it. Requests, approvals, rejections and expiries are audited by the caller.
//!
//! Pending requests live in memory: a restart drops them (nothing was applied, and the
//! audit log shows the request without an approval), so the requester submits again.

use std::collections::BTreeMap;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::Principal;
use crate::engine::{Command, Engine};

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
/// location count lowered by too much. The current count is read without a lock (a
/// concurrent change may move it a little; the rule is about large changes).
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
        _ => return None,
    };
    config.large_drop(on_hand, drop)
}

/// A request waiting for approval, as listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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
}

/// The pending requests; `T` is the deferred work.
pub struct Approvals<T> {
    pending: Mutex<BTreeMap<String, Pending<T>>>,
}

impl<T> Default for Approvals<T> {
    fn default() -> Self {
        Approvals { pending: Mutex::new(BTreeMap::new()) }
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

impl<T> Approvals<T> {
    /// Records a request by `by`; returns what it looks like pending.
    pub fn request(
        &self,
        request: Request,
        by: &Principal,
        work: T,
        now_ms: u64,
        expiry_ms: u64,
    ) -> Result<PendingView, ApprovalError> {
        let mut pending = self.pending.lock();
        if pending.len() >= PENDING_MAX {
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
        pending.insert(view.id.clone(), Pending { view: view.clone(), work });
        Ok(view)
    }

    /// Removes and returns the requests past their expiry (for the audit log).
    pub fn expire(&self, now_ms: u64) -> Vec<PendingView> {
        let mut pending = self.pending.lock();
        let expired: Vec<String> = pending
            .values()
            .filter(|p| p.view.expires_ms <= now_ms)
            .map(|p| p.view.id.clone())
            .collect();
        expired.iter().filter_map(|id| pending.remove(id)).map(|p| p.view).collect()
    }

    /// The pending requests, oldest first.
    pub fn list(&self) -> Vec<PendingView> {
        let mut list: Vec<_> = self.pending.lock().values().map(|p| p.view.clone()).collect();
        list.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        list
    }

    /// Takes a request out for execution by `approver`, who must not be its requester (the
    /// caller checks the admin role).
    pub fn approve(
        &self,
        id: &str,
        approver: &Principal,
        now_ms: u64,
    ) -> Result<(PendingView, T), ApprovalError> {
        let mut pending = self.pending.lock();
        let entry = pending.get(id).ok_or_else(|| ApprovalError::NotFound(id.to_string()))?;
        if entry.view.expires_ms <= now_ms {
            return Err(ApprovalError::Expired(id.to_string()));
        }
        if entry.view.requested_by == *approver.key_id {
            return Err(ApprovalError::OwnRequest);
        }
        let taken = pending.remove(id).expect("present");
        Ok((taken.view, taken.work))
    }

    /// Drops a request without applying it, if `may` allows it given the request.
    pub fn reject(
        &self,
        id: &str,
        may: impl FnOnce(&PendingView) -> bool,
    ) -> Result<PendingView, ApprovalError> {
        let mut pending = self.pending.lock();
        let entry = pending.get(id).ok_or_else(|| ApprovalError::NotFound(id.to_string()))?;
        if !may(&entry.view) {
            return Err(ApprovalError::NotYours);
        }
        Ok(pending.remove(id).expect("present").view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

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
        let approvals = Approvals::<u32>::default();
        let view = approvals.request(request(), &admin("a"), 7, 1000, 500).expect("pending");
        assert_eq!(view.expires_ms, 1500);
        assert_eq!(approvals.approve(&view.id, &admin("a"), 1100), Err(ApprovalError::OwnRequest));
        assert_eq!(approvals.list().len(), 1, "a refused approval leaves it pending");
        let (approved, work) = approvals.approve(&view.id, &admin("b"), 1499).expect("approved");
        assert_eq!((approved.id.as_str(), work), (view.id.as_str(), 7));
        assert!(matches!(
            approvals.approve(&view.id, &admin("b"), 1499),
            Err(ApprovalError::NotFound(_))
        ));

        let late = approvals.request(request(), &admin("a"), 8, 2000, 500).expect("pending");
        assert_eq!(
            approvals.approve(&late.id, &admin("b"), 2500),
            Err(ApprovalError::Expired(late.id.clone()))
        );
        assert_eq!(approvals.expire(2499), vec![]);
        let expired = approvals.expire(2500);
        assert_eq!(expired.len(), 1);
        assert!(approvals.list().is_empty());

        let rejected = approvals.request(request(), &admin("a"), 9, 3000, 500).expect("pending");
        assert_eq!(approvals.reject(&rejected.id, |_| false), Err(ApprovalError::NotYours));
        assert_eq!(approvals.reject(&rejected.id, |_| true).expect("rejected").id, rejected.id);
        assert!(approvals.list().is_empty());
    }
}
