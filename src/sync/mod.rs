//! Order sync: the sales channels' orders become reservations, and the channels learn the
//! stock they may sell.
//!
//! Per configured channel (`[[channels]]`), a task (see [`channel`]) keeps an OAuth2 access
//! token fresh, pulls the orders changed since a persisted cursor every `poll_interval_ms`,
//! and pushes sellable quantities back when stock changes. Webhooks
//! (`POST /api/v1/channels/{name}/webhook`, HMAC-SHA256 signed) deliver the same orders
//! sooner. Push and pull may both deliver an order: everything here is idempotent on
//! (channel, order id).
//!
//! # From orders to reservations
//!
//! An order's reservation id is `{channel}:{order id}` (when longer than the protocol's 64
//! bytes, `{channel}:#` and the start of the order id's SHA-256). Its holds carry the channel's
//! name as their channel, so quotas apply to marketplace orders too. Each event is applied
//! once, in status order `created` < `paid` < `cancelled`; an event whose status is not past
//! the order's recorded one is a duplicate and changes nothing:
//!
//! | recorded \ event | created        | paid                       | cancelled                 |
//! |------------------|----------------|----------------------------|---------------------------|
//! | (none)           | reserve        | reserve, then confirm      | record `cancelled`        |
//! | held             | duplicate      | confirm                    | release                   |
//! | confirmed        | duplicate      | duplicate                  | noted: stays committed    |
//! | rejected         | duplicate      | reserve again, confirm     | record `cancelled`        |
//!
//! A refusal (unknown SKU, no stock, a hold that expired before payment, ...) is recorded as
//! `rejected` with the result code and a reason, never dropped; `GET
//! /api/v1/channels/{name}/orders?state=rejected` lists them. Each operation is durable in the
//! write-ahead log before the order's record is written to the sync journal (`store`); a crash
//! between the two is repaired by the next delivery, because the engine's operations are
//! idempotent on the reservation id.

pub mod channel;
pub mod store;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use stockd_protocol::limits::{
    ID_BYTES_MAX, LINES_PER_RESERVATION_MAX, SKU_BYTES_MAX, TAG_BYTES_MAX,
};
use stockd_protocol::{Confirm, Line, Op, OpReply, Reserve, ResultCode};
use tracing::{info, warn};

use crate::config::Config;
use crate::journal::JournalError;
use crate::server::Shared;
use crate::wal::Storage;
pub use channel::Channel;
pub use store::{OrderRecord, Pull, Store};

/// Longest order id accepted from a channel.
pub const ORDER_ID_BYTES_MAX: usize = 256;

/// An order as channels deliver it, by webhook or in a pull page. Unknown fields are ignored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: String,
    pub status: Status,
    #[serde(default)]
    pub customer: String,
    pub lines: Vec<OrderLine>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub sku: String,
    pub qty: u32,
}

/// An order's status at the channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Paid,
    Cancelled,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Paid => "paid",
            Status::Cancelled => "cancelled",
        }
    }

    fn parse(name: &str) -> Option<Status> {
        [Status::Created, Status::Paid, Status::Cancelled].into_iter().find(|s| s.name() == name)
    }
}

/// How an order arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Push,
    Pull,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Push => "push",
            Source::Pull => "pull",
        }
    }
}

/// What applying an order event did.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    #[serde(flatten)]
    pub record: OrderRecord,
    /// The event changed nothing: the order was already at or past this status.
    pub duplicate: bool,
}

/// Why an event could not be applied (it may be delivered again).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("the order is invalid: {0}")]
    Invalid(String),
    #[error("the server is read-only; the order was not applied")]
    ReadOnly,
    #[error("the sync journal failed: {0}")]
    Journal(#[from] JournalError),
}

/// The order sync of every configured channel.
pub struct OrderSync {
    pub channels: Vec<Arc<Channel>>,
    pub store: Mutex<Store>,
}

impl OrderSync {
    /// Opens the sync journal and prepares the channels (nothing runs until `channel::run`).
    pub fn open(config: &Config, storage: &dyn Storage) -> Result<OrderSync, JournalError> {
        let store = Store::open(storage, config.sync.pull_log_max, config.sync.order_retention_ms)?;
        let channels = config
            .channels
            .iter()
            .map(|c| Arc::new(Channel::new(c.clone(), store.pushed(&c.name))))
            .collect();
        Ok(OrderSync { channels, store: Mutex::new(store) })
    }

    pub fn channel(&self, name: &str) -> Option<&Arc<Channel>> {
        self.channels.iter().find(|c| c.config.name == name)
    }
}

/// Checks a webhook body's signature: `X-Stockd-Signature: sha256=<hex of HMAC-SHA256(key,
/// body)>`, compared in constant time.
pub fn verify_signature(secret: &str, body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_mac) = header.and_then(|h| h.strip_prefix("sha256=")) else { return false };
    let Ok(mac_bytes) = hex::decode(hex_mac.trim()) else { return false };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    mac.verify_slice(&mac_bytes).is_ok()
}

/// The signature header value for a body (the fake marketplace and clients use it).
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A channel-scoped id of at most 64 bytes: `{channel}:{value}`, or a digest when too long.
fn scoped(channel: &str, value: &str, max: usize) -> String {
    let plain = format!("{channel}:{value}");
    if plain.len() <= max {
        return plain;
    }
    let digest = hex::encode(Sha256::digest(value.as_bytes()));
    let mut id = format!("{channel}:#{digest}");
    id.truncate(max);
    id
}

/// The reservation id of a channel's order.
pub fn reservation_id(channel: &str, order: &str) -> String {
    scoped(channel, order, ID_BYTES_MAX)
}

fn customer_tag(customer: &str) -> String {
    if customer.len() <= TAG_BYTES_MAX {
        return customer.to_string();
    }
    let digest = hex::encode(Sha256::digest(customer.as_bytes()));
    format!("#{}", &digest[..TAG_BYTES_MAX - 1])
}

fn check_lines(order: &Order) -> Result<Vec<Line>, String> {
    if order.lines.is_empty() || order.lines.len() > usize::from(LINES_PER_RESERVATION_MAX) {
        return Err(format!("an order has 1..={LINES_PER_RESERVATION_MAX} lines"));
    }
    order
        .lines
        .iter()
        .map(|line| {
            if line.sku.is_empty() || line.sku.len() > SKU_BYTES_MAX {
                return Err(format!("SKU {:?} is not 1..={SKU_BYTES_MAX} bytes", line.sku));
            }
            if line.qty == 0 {
                return Err(format!("line for SKU {:?} has quantity 0", line.sku));
            }
            Ok(Line { sku: Bytes::from(line.sku.clone()), qty: line.qty })
        })
        .collect()
}

/// Runs one operation and waits until it is durable.
async fn run_op(shared: &Shared, op: Op) -> Result<OpReply, ApplyError> {
    let now_ms = shared.clock.now_ms();
    let reply = crate::server::execute(shared, op, now_ms);
    if reply.code() == ResultCode::ReadOnly {
        return Err(ApplyError::ReadOnly);
    }
    let lsn = shared.wal.last_lsn();
    shared.wal.durable(lsn).await.map_err(|_| ApplyError::ReadOnly)?;
    Ok(reply)
}

/// What a step left the order as: state, code, reason.
type Step = (&'static str, ResultCode, Option<String>);

fn refused(code: ResultCode, what: &str, order: &Order, failed_line: Option<u16>) -> Step {
    let line = failed_line.and_then(|at| order.lines.get(usize::from(at)));
    let reason = match line {
        Some(line) => {
            format!("{what} refused: {} (SKU {:?}, {} units)", code.name(), line.sku, line.qty)
        }
        None => format!("{what} refused: {}", code.name()),
    };
    ("rejected", code, Some(reason))
}

async fn reserve(
    shared: &Shared,
    channel: &Channel,
    order: &Order,
    id: &str,
) -> Result<Step, ApplyError> {
    let lines = match check_lines(order) {
        Ok(lines) => lines,
        Err(why) => return Ok(("rejected", ResultCode::InvalidArgument, Some(why))),
    };
    let op = Op::Reserve(Reserve {
        id: Bytes::from(id.to_string()),
        ttl_ms: channel.config.hold_ms,
        channel: Bytes::from(channel.config.name.clone()),
        customer: Bytes::from(customer_tag(&order.customer)),
        lines,
    });
    Ok(match run_op(shared, op).await? {
        OpReply::Reserve(r) if r.code == ResultCode::Ok => ("held", ResultCode::Ok, None),
        OpReply::Reserve(r) => refused(r.code, "reserve", order, r.failed_line),
        other => unreachable!("a reserve answers {other:?}"),
    })
}

async fn confirm(shared: &Shared, order: &Order, id: &str) -> Result<Step, ApplyError> {
    let op = Op::Confirm(Confirm { id: Bytes::from(id.to_string()), lines: Vec::new() });
    Ok(match run_op(shared, op).await?.code() {
        ResultCode::Ok | ResultCode::AlreadyConfirmed => ("confirmed", ResultCode::Ok, None),
        ResultCode::Expired => (
            "rejected",
            ResultCode::Expired,
            Some("paid after its hold expired: the stock went back on sale".into()),
        ),
        code => refused(code, "confirm", order, None),
    })
}

async fn release(shared: &Shared, id: &str, state: &str) -> Result<Step, ApplyError> {
    let op = Op::Release { id: Bytes::from(id.to_string()) };
    Ok(match run_op(shared, op).await?.code() {
        ResultCode::Ok | ResultCode::AlreadyReleased | ResultCode::Expired => {
            ("released", ResultCode::Ok, None)
        }
        ResultCode::AlreadyConfirmed | ResultCode::AlreadyShipped => (
            "confirmed",
            ResultCode::AlreadyConfirmed,
            Some(
                "cancelled after payment: the stock stays committed (handle it as a return)".into(),
            ),
        ),
        code => (
            if state == "held" { "held" } else { "rejected" },
            code,
            Some(format!("release refused: {}", code.name())),
        ),
    })
}

/// Applies one order event of `channel`: see the module documentation.
pub async fn apply_order(
    shared: &Arc<Shared>,
    channel: &Channel,
    order: &Order,
    source: Source,
) -> Result<Outcome, ApplyError> {
    if order.id.is_empty() || order.id.len() > ORDER_ID_BYTES_MAX {
        return Err(ApplyError::Invalid(format!("an order id has 1..={ORDER_ID_BYTES_MAX} bytes")));
    }
    let name = channel.config.name.as_str();
    let _serial = channel.lock_order(&order.id).await;
    let existing = shared.sync.store.lock().order(name, &order.id).cloned();
    if let Some(existing) = &existing {
        let recorded = Status::parse(&existing.status).unwrap_or(Status::Cancelled);
        if order.status <= recorded {
            channel.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            return Ok(Outcome { record: existing.clone(), duplicate: true });
        }
    }
    let id = reservation_id(name, &order.id);
    let state = existing.as_ref().map_or("", |e| e.state.as_str());
    let step = match (state, order.status) {
        (_, Status::Created) => reserve(shared, channel, order, &id).await?,
        ("held", Status::Paid) => confirm(shared, order, &id).await?,
        ("confirmed", Status::Paid) => ("confirmed", ResultCode::Ok, None),
        (_, Status::Paid) => match reserve(shared, channel, order, &id).await? {
            ("held", ..) => confirm(shared, order, &id).await?,
            refused => refused,
        },
        ("held" | "confirmed", Status::Cancelled) => release(shared, &id, state).await?,
        (_, Status::Cancelled) => ("cancelled", ResultCode::Ok, None),
    };
    let (state, code, reason) = step;
    let now_ms = shared.clock.now_ms();
    let record = OrderRecord {
        channel: name.to_string(),
        order: order.id.clone(),
        reservation: id,
        status: order.status.name().to_string(),
        state: state.to_string(),
        code: code.name().to_string(),
        reason,
        lines: order.lines.iter().map(|l| (l.sku.clone(), l.qty)).collect(),
        customer: order.customer.clone(),
        source: source.name().to_string(),
        first_ms: existing.as_ref().map_or(now_ms, |e| e.first_ms),
        updated_ms: now_ms,
    };
    if state == "rejected" {
        warn!(channel = name, order = %order.id, reason = ?record.reason, "order rejected");
        channel.stats.rejected.fetch_add(1, Ordering::Relaxed);
    } else {
        info!(channel = name, order = %order.id, state, "order applied");
        channel.stats.applied.fetch_add(1, Ordering::Relaxed);
    }
    let stored = record.clone();
    journal(shared, move |store, storage, now_ms| store.put_order(storage, stored, now_ms)).await?;
    Ok(Outcome { record, duplicate: false })
}

/// Changes the sync journal off the async workers (a write and an `fdatasync`); `change` gets
/// the store, the storage and the time now.
pub(crate) async fn journal<R: Send + 'static>(
    shared: &Arc<Shared>,
    change: impl FnOnce(&mut Store, &dyn Storage, u64) -> R + Send + 'static,
) -> R {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || {
        let now_ms = shared.clock.now_ms();
        change(&mut shared.sync.store.lock(), &*shared.storage, now_ms)
    })
    .await
    .expect("a journal append does not panic")
}

/// Counters of one channel's orders since the server started.
#[derive(Debug, Default)]
pub struct OrderStats {
    pub applied: AtomicU64,
    pub rejected: AtomicU64,
    pub duplicates: AtomicU64,
    pub bad_signatures: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_with_the_right_key_and_body() {
        let header = sign("k1", b"{\"id\":\"1\"}");
        assert!(verify_signature("k1", b"{\"id\":\"1\"}", Some(&header)));
        assert!(!verify_signature("k2", b"{\"id\":\"1\"}", Some(&header)));
        assert!(!verify_signature("k1", b"{\"id\":\"2\"}", Some(&header)));
        assert!(!verify_signature("k1", b"{\"id\":\"1\"}", None));
        assert!(!verify_signature("k1", b"{\"id\":\"1\"}", Some("sha256=zz")));
        assert!(!verify_signature("k1", b"{\"id\":\"1\"}", Some(&header[7..])));
    }

    #[test]
    fn reservation_ids_fit_the_protocol() {
        assert_eq!(reservation_id("shop", "1001"), "shop:1001");
        let long = "x".repeat(200);
        let id = reservation_id("shop", &long);
        assert_eq!(id.len(), ID_BYTES_MAX);
        assert!(id.starts_with("shop:#"));
        assert_eq!(id, reservation_id("shop", &long), "stable");
        assert_ne!(id, reservation_id("shop", &"y".repeat(200)));
        assert_eq!(customer_tag("c-1"), "c-1");
        assert_eq!(customer_tag(&long).len(), TAG_BYTES_MAX);
    }

    #[test]
    fn statuses_are_ordered_and_named() {
        assert!(Status::Created < Status::Paid && Status::Paid < Status::Cancelled);
        for status in [Status::Created, Status::Paid, Status::Cancelled] {
            assert_eq!(Status::parse(status.name()), Some(status));
        }
    }
}
