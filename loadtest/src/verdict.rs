//! The verdict: the server's counters against what the clients were told.
//!
//! For every SKU the run touched: the server's committed units equal the units the clients saw
//! confirmed; its held units lie between the clients' holds that are certainly still live and
//! those that may be (the server's clock is read before and after the queries); held plus
//! committed never exceed on-hand (no oversell), nor the stock the verdict assumes; on-hand is
//! the stock set up. Then acknowledged reservations are spot-checked one by one: confirmed ones
//! must be confirmed, released ones released, held ones held or expired by their deadline (or,
//! told the server's retention with `--retention-ms`, forgotten once it has passed).
//! Every reply the clients could not explain fails the verdict too.
//!
//! With flash-sale limits: no customer holds and has bought more of a SKU than the per-buyer
//! limit; the server's use of each channel's quota lies within what the clients saw granted to
//! that channel; and without a shared pool no channel uses more than its allocation, nor
//! anyone more than the pool.

use bytes::Bytes;
use serde::Serialize;
use stockd_protocol::{Client, ClientOptions, Op, OpReply, ReservationState, SkuLimits};

use crate::run::RunConfig;
use crate::scenario::{HashMap, Ledger, Workload};

/// Reservations spot-checked per kind.
const SPOT_CHECKS: usize = 500;
/// Queries per batch frame.
const QUERY_BATCH: usize = 4096;

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub passed: bool,
    pub checks: Vec<Check>,
}

fn outcome(name: &str, failures: &[String], ok_detail: String) -> Check {
    Check {
        name: name.to_string(),
        passed: failures.is_empty(),
        detail: if failures.is_empty() {
            ok_detail
        } else {
            let shown: Vec<&str> = failures.iter().take(5).map(String::as_str).collect();
            format!("{} failure(s): {}", failures.len(), shown.join("; "))
        },
    }
}

async fn server_time_ms(config: &RunConfig) -> anyhow::Result<u64> {
    let options =
        ClientOptions { api_key: Bytes::from(config.api_key.clone()), ..ClientOptions::default() };
    let stream = crate::run::connect(config, &options).await?;
    let client = Client::over(stream, options).await?;
    Ok(client.hello().server_time_ms)
}

async fn query_all(client: &Client, ops: Vec<Op>) -> anyhow::Result<Vec<OpReply>> {
    let mut replies = Vec::with_capacity(ops.len());
    for chunk in ops.chunks(QUERY_BATCH) {
        replies.extend(client.batch(chunk.to_vec()).await?);
    }
    Ok(replies)
}

pub async fn check(
    client: &Client,
    workload: &Workload,
    config: &RunConfig,
    stock: u64,
    ledger: &Ledger,
) -> anyhow::Result<Verdict> {
    let assume_stock = config.assume_stock.unwrap_or(stock);
    let mut checks = vec![outcome(
        "every reply expected",
        &ledger.unexpected,
        "no error or unexplained result code".into(),
    )];

    // In order: the bit set lists them so.
    let skus: Vec<u64> = ledger.touched.iter().collect();
    let before_ms = server_time_ms(config).await?;
    let ops = skus.iter().map(|s| Op::QuerySku { sku: workload.sku_name(*s) }).collect();
    let replies = query_all(client, ops).await?;
    let after_ms = server_time_ms(config).await?;

    let mut live_min: HashMap<u64, u64> = HashMap::default();
    let mut live_max: HashMap<u64, u64> = HashMap::default();
    for hold in ledger.held.iter() {
        for (sku, qty) in &hold.lines {
            if hold.expires_at_ms > after_ms {
                *live_min.entry(*sku).or_default() += u64::from(*qty);
            }
            if hold.expires_at_ms > before_ms {
                *live_max.entry(*sku).or_default() += u64::from(*qty);
            }
        }
    }
    let (mut accounting, mut oversold, mut assumed, mut stock_changed) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut total_committed, mut total_held) = (0u64, 0u64);
    for (sku, reply) in skus.iter().zip(&replies) {
        let OpReply::QuerySku(reply) = reply else { anyhow::bail!("unexpected reply {reply:?}") };
        let info = reply.info;
        let name = String::from_utf8_lossy(&workload.sku_name(*sku)).into_owned();
        let confirmed = ledger.confirmed.get(sku).copied().unwrap_or(0);
        let (min, max) =
            (live_min.get(sku).copied().unwrap_or(0), live_max.get(sku).copied().unwrap_or(0));
        total_committed += info.committed;
        total_held += info.reserved;
        if info.committed != confirmed || info.reserved < min || info.reserved > max {
            accounting.push(format!(
                "{name}: server held {} committed {}, clients saw held {min}..={max} confirmed {confirmed}",
                info.reserved, info.committed
            ));
        }
        if info.reserved + info.committed > info.on_hand {
            oversold.push(format!(
                "{name}: held {} + committed {} > on hand {}",
                info.reserved, info.committed, info.on_hand
            ));
        }
        if confirmed + min > assume_stock {
            assumed.push(format!(
                "{name}: clients hold {} and confirmed {confirmed} of {assume_stock}",
                min
            ));
        }
        if info.on_hand != stock {
            stock_changed.push(format!("{name}: on hand {} instead of {stock}", info.on_hand));
        }
    }
    let n = skus.len();
    checks.push(outcome(
        "no oversell",
        &oversold,
        format!("held + committed <= on hand for {n} SKUs"),
    ));
    checks.push(outcome(
        "units granted within stock",
        &assumed,
        format!("confirmed + held <= {assume_stock} for {n} SKUs"),
    ));
    checks.push(outcome(
        "server counters match the clients",
        &accounting,
        format!("{total_committed} committed and {total_held} held units agree for {n} SKUs"),
    ));
    checks.push(outcome(
        "stock unchanged",
        &stock_changed,
        format!("on hand {stock} for {n} SKUs"),
    ));

    let limits = config.assume_limits.as_ref().unwrap_or(&workload.limits);
    if *limits != SkuLimits::default() {
        checks.extend(limits_checks(client, workload, limits, config, ledger, &skus).await?);
    }

    // Spot checks: acknowledged reservations are there, in the state the clients were told.
    // Holds keep expiring while the checks run, so these queries get their own clock bracket.
    // With a retention shorter than the run, a finished reservation may have been forgotten
    // (`None`): a released one at any time (when it was released is not recorded), an expired
    // one once its deadline is a retention ago.
    let run_ms = (config.warmup + config.duration).as_millis() as u64;
    let retention_ms = config.retention_ms.filter(|r| *r < run_ms);
    let mut expected: Vec<(bytes::Bytes, Vec<Option<ReservationState>>)> = Vec::new();
    for id in ledger.confirmed_ids.iter().take(SPOT_CHECKS) {
        expected.push((id.clone(), vec![Some(ReservationState::Confirmed)]));
    }
    for id in ledger.released_ids.iter().take(SPOT_CHECKS) {
        let mut states = vec![Some(ReservationState::Released)];
        states.extend(retention_ms.map(|_| None));
        expected.push((id.clone(), states));
    }
    // Spread over all the holds (oldest first), not only the oldest.
    let every = (ledger.held.len() / SPOT_CHECKS).max(1);
    let holds: Vec<(&bytes::Bytes, u64)> = ledger
        .held
        .iter()
        .step_by(every)
        .take(SPOT_CHECKS)
        .map(|h| (&h.id, h.expires_at_ms))
        .collect();
    let mut ids: Vec<bytes::Bytes> = expected.iter().map(|(id, _)| id.clone()).collect();
    ids.extend(holds.iter().map(|(id, _)| (*id).clone()));
    let before_ms = server_time_ms(config).await?;
    let replies =
        query_all(client, ids.into_iter().map(|id| Op::QueryReservation { id }).collect()).await?;
    let after_ms = server_time_ms(config).await?;
    for (id, expires_at_ms) in holds {
        let (held, expired) = (Some(ReservationState::Held), Some(ReservationState::Expired));
        let mut states = if expires_at_ms > after_ms {
            vec![held]
        } else if expires_at_ms <= before_ms {
            vec![expired]
        } else {
            vec![held, expired]
        };
        if retention_ms.is_some_and(|r| expires_at_ms + r <= after_ms) {
            states.push(None);
        }
        expected.push((id.clone(), states));
    }
    let mut missing = Vec::new();
    for ((id, states), reply) in expected.iter().zip(&replies) {
        let state = match reply {
            OpReply::QueryReservation(r) => r.info.as_ref().map(|info| info.state),
            _ => None,
        };
        if !states.contains(&state) {
            missing
                .push(format!("{}: {state:?}, expected {states:?}", String::from_utf8_lossy(id)));
        }
    }
    checks.push(outcome(
        "acknowledged reservations present",
        &missing,
        format!("{} reservations spot-checked", expected.len()),
    ));
    let passed = checks.iter().all(|c| c.passed);
    Ok(Verdict { passed, checks })
}

/// Units per key: confirmed, plus holds live at `at_ms`.
fn granted(
    confirmed: &HashMap<(u64, Bytes), u64>,
    ledger: &Ledger,
    at_ms: u64,
    key: impl Fn(&crate::scenario::Hold) -> Bytes,
) -> HashMap<(u64, Bytes), u64> {
    let mut units = confirmed.clone();
    for hold in ledger.held.iter().filter(|h| h.expires_at_ms > at_ms) {
        for (sku, qty) in &hold.lines {
            *units.entry((*sku, key(hold))).or_default() += u64::from(*qty);
        }
    }
    units
}

async fn limits_checks(
    client: &Client,
    workload: &Workload,
    limits: &SkuLimits,
    config: &RunConfig,
    ledger: &Ledger,
    skus: &[u64],
) -> anyhow::Result<Vec<Check>> {
    let mut checks = Vec::new();
    let before_ms = server_time_ms(config).await?;
    let ops = skus.iter().map(|s| Op::QueryLimits { sku: workload.sku_name(*s) }).collect();
    let replies = query_all(client, ops).await?;
    let after_ms = server_time_ms(config).await?;
    if limits.max_per_buyer > 0 {
        // Holds that may still be live when the load stopped all coexisted with the
        // confirmations: together they must fit the limit.
        let units = granted(&ledger.confirmed_by_buyer, ledger, before_ms, |h| h.customer.clone());
        let over: Vec<String> = units
            .iter()
            .filter(|(_, units)| **units > u64::from(limits.max_per_buyer))
            .map(|((sku, buyer), units)| {
                format!("{} has {units} of sku {sku}", String::from_utf8_lossy(buyer))
            })
            .collect();
        checks.push(outcome(
            "per-buyer limit kept",
            &over,
            format!("{} (SKU, buyer) pairs within {}", units.len(), limits.max_per_buyer),
        ));
    }
    if limits.quotas.is_empty() {
        return Ok(checks);
    }
    let most = granted(&ledger.confirmed_by_channel, ledger, before_ms, |h| h.channel.clone());
    let least = granted(&ledger.confirmed_by_channel, ledger, after_ms, |h| h.channel.clone());
    let (mut kept, mut matched) = (Vec::new(), Vec::new());
    let mut quotas_seen = 0;
    for (sku, reply) in skus.iter().zip(&replies) {
        let OpReply::QueryLimits(reply) = reply else { anyhow::bail!("unexpected {reply:?}") };
        if reply.pool_used > reply.pool {
            kept.push(format!("sku {sku}: pool {} of {} used", reply.pool_used, reply.pool));
        }
        for channel in &reply.channels {
            quotas_seen += 1;
            let name = String::from_utf8_lossy(&channel.channel).into_owned();
            if !limits.shared_pool && channel.used > channel.allocation {
                kept.push(format!(
                    "sku {sku} {name}: {} used of {}",
                    channel.used, channel.allocation
                ));
            }
            let key = (*sku, channel.channel.clone());
            let (min, max) =
                (least.get(&key).copied().unwrap_or(0), most.get(&key).copied().unwrap_or(0));
            if channel.used < min || channel.used > max {
                matched.push(format!(
                    "sku {sku} {name}: server {} clients {min}..={max}",
                    channel.used
                ));
            }
        }
    }
    checks.push(outcome(
        "channel quotas kept",
        &kept,
        format!("{quotas_seen} quotas within their allocation and the pool"),
    ));
    checks.push(outcome(
        "channel use matches the clients",
        &matched,
        format!("{quotas_seen} quotas agree"),
    ));
    Ok(checks)
}
