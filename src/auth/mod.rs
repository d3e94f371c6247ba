//! Who may do what: API keys with roles, checked on both sides (the TCP handshake and the
//! HTTP bearer token), rate limits, two-person approval of dangerous changes, and TLS.
//!
//! # Roles and permissions
//!
//! Every operation belongs to one [`Permission`] class; a key's [`Role`] grants a fixed set of
//! classes (least privilege; the table is [`Role::allows`] and README "Security"):
//!
//! | class      | what                                                        | roles                  |
//! |------------|-------------------------------------------------------------|------------------------|
//! | `read`     | queries: stock, reservations, tickets, channels, alerts     | all                    |
//! | `checkout` | reserve, confirm, release, extend, ship                     | checkout, admin        |
//! | `sync`     | stock feeds (counts, incoming), channel sync, WMS feed      | sync, ops, admin       |
//! | `stock`    | adjustments, safety stock, limits, preorder, approvals list | ops, admin             |
//! | `operate`  | return tickets and parcels, alert acknowledgement          | ops, admin             |
//! | `audit`    | reading the audit log                                       | readonly, ops, admin   |
//! | `admin`    | keys, approving dangerous changes                           | admin                  |
//!
//! Customer identifiers (on holds, reservations and tickets) are shown only to roles that
//! serve customers: checkout, ops and admin ([`Role::sees_customers`]).
//!
//! With `auth.enabled = false` (a development switch; the server logs a warning) every request
//! acts as the built-in `dev` principal with the admin role.

pub mod approvals;
pub mod keys;
pub mod tls;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use stockd_protocol::Op;

pub use keys::{AuthError, KeyError, KeyRecord, KeyStore, KEYS_FILE};

/// A key's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Checkout,
    Sync,
    Ops,
    Admin,
    Readonly,
}

/// A class of operations (see the module documentation for the table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    Read,
    Checkout,
    Sync,
    Stock,
    Operate,
    Audit,
    Admin,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Checkout, Role::Sync, Role::Ops, Role::Admin, Role::Readonly];

    pub fn name(self) -> &'static str {
        match self {
            Role::Checkout => "checkout",
            Role::Sync => "sync",
            Role::Ops => "ops",
            Role::Admin => "admin",
            Role::Readonly => "readonly",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.name() == text)
    }

    /// Whether this role may perform operations of class `permission`.
    pub fn allows(self, permission: Permission) -> bool {
        use Permission as P;
        match self {
            Role::Admin => true,
            Role::Ops => {
                matches!(permission, P::Read | P::Sync | P::Stock | P::Operate | P::Audit)
            }
            Role::Sync => matches!(permission, P::Read | P::Sync),
            Role::Checkout => matches!(permission, P::Read | P::Checkout),
            Role::Readonly => matches!(permission, P::Read | P::Audit),
        }
    }

    /// Whether this role is shown customer identifiers.
    pub fn sees_customers(self) -> bool {
        matches!(self, Role::Checkout | Role::Ops | Role::Admin)
    }
}

impl Permission {
    pub fn name(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Checkout => "checkout",
            Permission::Sync => "sync",
            Permission::Stock => "stock",
            Permission::Operate => "operate",
            Permission::Audit => "audit",
            Permission::Admin => "admin",
        }
    }

    /// The class of a protocol operation.
    pub fn of_op(op: &Op) -> Permission {
        match op {
            Op::Ping
            | Op::QuerySku { .. }
            | Op::QueryReservation { .. }
            | Op::QueryLimits { .. }
            | Op::QueryLocations { .. } => Permission::Read,
            Op::Reserve(_)
            | Op::ReserveAt(_)
            | Op::Confirm(_)
            | Op::Release { .. }
            | Op::Extend { .. }
            | Op::Ship { .. } => Permission::Checkout,
            Op::SetStock { .. }
            | Op::SetLocation { .. }
            | Op::SetIncoming { .. }
            | Op::ReceiveIncoming { .. } => Permission::Sync,
            Op::AdjustStock { .. }
            | Op::AdjustLocation { .. }
            | Op::SetSafetyStock { .. }
            | Op::SetLimits { .. }
            | Op::SetPreorder { .. }
            | Op::DeleteSku { .. } => Permission::Stock,
        }
    }
}

/// Requests per second and key (HTTP).
pub type KeyedLimiter = governor::DefaultKeyedRateLimiter<Arc<str>>;
/// Operations per second on one connection (TCP).
pub type DirectLimiter = governor::DefaultDirectRateLimiter;

/// A per-key limiter allowing `per_second` (with bursts of as many); `None` for 0 (no limit).
pub fn keyed_limiter(per_second: u32) -> Option<KeyedLimiter> {
    std::num::NonZeroU32::new(per_second)
        .map(|n| governor::RateLimiter::keyed(governor::Quota::per_second(n)))
}

/// A limiter allowing `per_second` (with bursts of as many); `None` for 0 (no limit).
pub fn direct_limiter(per_second: u32) -> Option<DirectLimiter> {
    std::num::NonZeroU32::new(per_second)
        .map(|n| governor::RateLimiter::direct(governor::Quota::per_second(n)))
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The key's id (`dev` when authentication is off).
    pub key_id: Arc<str>,
    pub name: Arc<str>,
    pub role: Role,
}

impl Principal {
    /// The caller of every request when authentication is off.
    pub fn dev() -> Principal {
        Principal { key_id: "dev".into(), name: "development (auth off)".into(), role: Role::Admin }
    }

    pub fn allows(&self, permission: Permission) -> bool {
        self.role.allows(permission)
    }
}

tokio::task_local! {
    /// The caller of the HTTP request being handled (set by the authentication layer).
    static CALLER: Principal;
}

/// Runs `future` (an HTTP request's handling) as `principal`.
pub async fn acting_as<F: std::future::Future>(principal: Principal, future: F) -> F::Output {
    CALLER.scope(principal, future).await
}

/// The caller of the HTTP request being handled, if any.
pub fn caller() -> Option<Principal> {
    CALLER.try_with(Principal::clone).ok()
}

/// The caller of the HTTP request being handled, or the `dev` principal outside one (the guard
/// sets `dev` itself when authentication is off).
pub fn acting() -> Principal {
    caller().unwrap_or_else(Principal::dev)
}

/// What a hidden customer identifier is replaced with.
pub const HIDDEN: &str = "[hidden]";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_grant_exactly_their_classes() {
        use Permission as P;
        let all = [P::Read, P::Checkout, P::Sync, P::Stock, P::Operate, P::Audit, P::Admin];
        let granted = |role: Role| -> Vec<&str> {
            all.iter().filter(|p| role.allows(**p)).map(|p| p.name()).collect()
        };
        assert_eq!(granted(Role::Readonly), ["read", "audit"]);
        assert_eq!(granted(Role::Checkout), ["read", "checkout"]);
        assert_eq!(granted(Role::Sync), ["read", "sync"]);
        assert_eq!(granted(Role::Ops), ["read", "sync", "stock", "operate", "audit"]);
        assert_eq!(granted(Role::Admin).len(), all.len());
        for role in Role::ALL {
            assert_eq!(Role::parse(role.name()), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
        let sees: Vec<_> = Role::ALL.into_iter().filter(|r| r.sees_customers()).collect();
        assert_eq!(sees, [Role::Checkout, Role::Ops, Role::Admin]);
    }
}
