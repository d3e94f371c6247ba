//! Running a load test: set up the SKUs, start `connections x in_flight` workers, warm up,
//! measure for a bounded duration (or request count), wait for every request in flight, and
//! hand the results to the verdict and the report.
//!
//! Closed loop: each worker sends its next request as soon as the previous one is answered.
//! Open loop (`rate`): request `i` is due at `start + i / rate`; its latency is measured from
//! that intended time, so a stalled server is charged for the requests that queued behind the
//! stall (no coordinated omission).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use stockd_protocol::tls::{self, Stream, Tls};
use stockd_protocol::{Client, ClientError, ClientOptions, Op, OpReply, SerialClient, SkuLimits};
use tokio::task::JoinSet;

use crate::report::RunResult;
use crate::scenario::{Ledger, Mix, Scenario, Sent, Worker, Workload};
use crate::stats::Recorder;
use crate::verdict;

/// Operations per setup batch frame.
const SETUP_BATCH: u64 = 4096;

#[derive(Clone, Debug)]
pub struct RunConfig {
    pub server: String,
    /// TLS to the server (`[tls] enabled = true` on the server), else plain TCP.
    pub tls: Option<Tls>,
    /// API key presented in the handshake (a key with the admin role: the harness sets up
    /// stock and reserves).
    pub api_key: String,
    pub scenario: Scenario,
    pub connections: usize,
    pub in_flight: usize,
    /// Operations per request; above 1, requests are batch frames.
    pub batch: usize,
    /// Open loop at this many requests per second; closed loop when `None`.
    pub rate: Option<f64>,
    pub warmup: Duration,
    pub duration: Duration,
    pub requests_max: Option<u64>,
    pub skus: u64,
    pub stock: u64,
    pub ttl_ms: u32,
    pub confirm_share: f64,
    pub release_share: f64,
    pub lines_max: u32,
    pub mix: Mix,
    /// Distinct customers named by reserves (0: none).
    pub buyers: u64,
    /// Sales channels reserves are spread over.
    pub channels: Vec<String>,
    /// Limits set on every SKU.
    pub limits: SkuLimits,
    /// Limits the verdict assumes (defaults to `limits`); looser server limits must fail it.
    pub assume_limits: Option<SkuLimits>,
    /// Prefix of every SKU and reservation id, so runs never collide.
    pub prefix: String,
    /// Stock the verdict assumes (defaults to `stock`); a wrong value must fail the verdict.
    pub assume_stock: Option<u64>,
    /// The server's `engine.retention_ms`: finished reservations older than it may be gone.
    pub retention_ms: Option<u64>,
    pub progress: bool,
    pub seed: u64,
}

/// Creates the scenario's SKUs with their stock, in batch frames.
async fn setup(client: &Client, workload: &Workload, stock: u64) -> anyhow::Result<()> {
    let mut next = 0;
    while next < workload.skus {
        let end = (next + SETUP_BATCH).min(workload.skus);
        let ops = (next..end)
            .map(|i| Op::SetStock { sku: workload.sku_name(i), on_hand: stock, expected: None })
            .collect();
        let replies = client.batch(ops).await.context("setting up stock")?;
        if let Some(bad) = replies.iter().find(|r| !r.code().is_ok()) {
            bail!("setting up stock failed: {}", bad.code());
        }
        if workload.limits != SkuLimits::default() {
            let ops = (next..end)
                .map(|i| Op::SetLimits {
                    sku: workload.sku_name(i),
                    limits: workload.limits.clone(),
                })
                .collect();
            let replies = client.batch(ops).await.context("setting up limits")?;
            if let Some(bad) = replies.iter().find(|r| !r.code().is_ok()) {
                bail!("setting up limits failed: {}", bad.code());
            }
        }
        next = end;
    }
    Ok(())
}

struct Shared {
    stop: AtomicBool,
    measuring_from: Instant,
    measure_until: Instant,
    requests_left: Option<AtomicU64>,
    ticket: AtomicU64,
    ops_done: AtomicU64,
}

/// A worker's connection: its own (one request at a time, the leanest path) with one request
/// in flight per connection, else a pipelined connection shared with the other workers.
enum Connection {
    Own(Box<SerialClient<Stream>>),
    Shared(Client),
}

/// A new connection to the server, over TLS when the run has it.
pub(crate) async fn connect(config: &RunConfig, options: &ClientOptions) -> anyhow::Result<Stream> {
    tls::connect(config.server.as_str(), config.tls.as_ref(), options.connect_timeout)
        .await
        .with_context(|| {
            format!("connecting to {}", tls::describe(&config.server, config.tls.as_ref()))
        })
}

impl Connection {
    async fn send(
        &mut self,
        mut ops: Vec<(Op, Sent)>,
    ) -> Result<Vec<(Sent, OpReply)>, ClientError> {
        if ops.len() == 1 {
            let (op, sent) = ops.pop().expect("one op");
            let reply = match self {
                Connection::Own(client) => client.call(op).await?,
                Connection::Shared(client) => client.call(op).await?,
            };
            return Ok(vec![(sent, reply)]);
        }
        let (requests, sent): (Vec<Op>, Vec<_>) = ops.into_iter().unzip();
        let replies = match self {
            Connection::Own(client) => client.batch(requests).await?,
            Connection::Shared(client) => client.batch(requests).await?,
        };
        Ok(sent.into_iter().zip(replies).collect())
    }
}

async fn worker(
    mut connection: Connection,
    mut state: Worker,
    config: Arc<RunConfig>,
    shared: Arc<Shared>,
) -> (Worker, Recorder) {
    let mut recorder = Recorder::new(shared.measuring_from);
    let start = shared.measuring_from - config.warmup;
    while !shared.stop.load(Ordering::Relaxed) {
        if let Some(left) = &shared.requests_left {
            if left.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_err()
            {
                break;
            }
        }
        let intended = match config.rate {
            Some(rate) => {
                let ticket = shared.ticket.fetch_add(1, Ordering::Relaxed);
                let due = start + Duration::from_secs_f64(ticket as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                due
            }
            None => Instant::now(),
        };
        let result = connection.send(state.next_ops(config.batch)).await;
        let done = Instant::now();
        let replies = match result {
            Ok(replies) => replies,
            Err(e) => {
                state.ledger.unexpected.push(format!("request failed: {e}"));
                shared.stop.store(true, Ordering::Relaxed);
                break;
            }
        };
        let count = replies.len() as u64;
        for (sent, reply) in replies {
            state.on_reply(sent, &reply);
        }
        shared.ops_done.fetch_add(count, Ordering::Relaxed);
        if intended >= shared.measuring_from {
            recorder.record(done, done.duration_since(intended).as_micros() as u64, count);
        }
        if done >= shared.measure_until {
            break;
        }
    }
    (state, recorder)
}

/// Runs the load test and returns its results, verdict included.
pub async fn run(config: RunConfig) -> anyhow::Result<RunResult> {
    if config.connections == 0 || config.in_flight == 0 || config.batch == 0 || config.skus == 0 {
        bail!("connections, in-flight, batch and skus must be at least 1");
    }
    let judged = config.assume_limits.as_ref().unwrap_or(&config.limits);
    if (config.limits.max_per_buyer > 0 || judged.max_per_buyer > 0) && config.buyers == 0 {
        bail!("--max-per-buyer needs --buyers: a limited SKU is reserved for named customers");
    }
    let config = Arc::new(config);
    let stock = if config.scenario == Scenario::SoldOut { 0 } else { config.stock };
    let workload = Arc::new(Workload {
        scenario: config.scenario,
        prefix: config.prefix.clone(),
        skus: config.skus,
        ttl_ms: config.ttl_ms,
        confirm_share: config.confirm_share,
        release_share: config.release_share,
        lines_max: config.lines_max.max(1),
        mix: config.mix,
        buyers: config.buyers,
        channels: config.channels.iter().map(|c| Bytes::from(c.clone())).collect(),
        limits: config.limits.clone(),
    });
    let options = ClientOptions {
        client_name: Bytes::from_static(b"stockd-loadtest"),
        api_key: Bytes::from(config.api_key.clone()),
        in_flight_max: config.in_flight.max(1),
        ..ClientOptions::default()
    };
    // With one request in flight, every worker has a connection of its own; the setup and the
    // verdict use one more.
    let serial = config.in_flight == 1;
    let mut clients = Vec::with_capacity(config.connections);
    for _ in 0..if serial { 1 } else { config.connections } {
        let stream = connect(&config, &options).await?;
        let client = Client::over(stream, options.clone())
            .await
            .with_context(|| format!("handshake with {}", config.server))?;
        clients.push(client);
    }
    let mut own = Vec::new();
    for _ in 0..if serial { config.connections } else { 0 } {
        let stream = connect(&config, &options).await?;
        let client = SerialClient::over(stream, options.clone())
            .await
            .with_context(|| format!("handshake with {}", config.server))?;
        own.push(Box::new(client));
    }
    let setup_started = Instant::now();
    setup(&clients[0], &workload, stock).await?;
    let setup_time = setup_started.elapsed();

    let now = Instant::now();
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        measuring_from: now + config.warmup,
        measure_until: now + config.warmup + config.duration,
        requests_left: config.requests_max.map(AtomicU64::new),
        ticket: AtomicU64::new(0),
        ops_done: AtomicU64::new(0),
    });
    let connections: Vec<Connection> = match serial {
        true => own.into_iter().map(Connection::Own).collect(),
        false => clients
            .iter()
            .flat_map(|client| (0..config.in_flight).map(|_| Connection::Shared(client.clone())))
            .collect(),
    };
    let mut tasks = JoinSet::new();
    for (id, connection) in connections.into_iter().enumerate() {
        let state = Worker::new(workload.clone(), id, config.seed);
        tasks.spawn(worker(connection, state, config.clone(), shared.clone()));
    }
    let bar = progress_bar(&config);
    let mut ledger = Ledger::default();
    let mut recorder = Recorder::new(shared.measuring_from);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut last_ops = 0;
    let mut last_at = Instant::now();
    loop {
        tokio::select! {
            finished = tasks.join_next() => match finished {
                Some(result) => {
                    let (state, part) = result.context("worker panicked")?;
                    ledger.merge(state.ledger);
                    recorder.merge(&part);
                }
                None => break,
            },
            _ = tick.tick() => {
                let elapsed = now.elapsed();
                let ops = shared.ops_done.load(Ordering::Relaxed);
                let rate = (ops - last_ops) as f64 / last_at.elapsed().as_secs_f64().max(1e-3);
                (last_ops, last_at) = (ops, Instant::now());
                bar.set_position(elapsed.as_millis().min(u128::from(u64::MAX)) as u64);
                let phase = if elapsed < config.warmup { "warm-up" } else { "measuring" };
                bar.set_message(format!("{phase}: {rate:>9.0} ops/s, {ops} ops"));
                // A hard stop: the run must end by itself even if the server stops answering.
                if elapsed > config.warmup + config.duration * 2 + Duration::from_secs(30) {
                    shared.stop.store(true, Ordering::Relaxed);
                }
            }
        }
    }
    bar.finish_and_clear();
    let measured =
        shared.measure_until.min(Instant::now()).saturating_duration_since(shared.measuring_from);
    let verdict = verdict::check(&clients[0], &workload, &config, stock, &ledger).await?;
    Ok(RunResult::new(&config, stock, setup_time, measured, &recorder, &ledger, verdict))
}

fn progress_bar(config: &RunConfig) -> ProgressBar {
    if !config.progress {
        return ProgressBar::hidden();
    }
    let total = (config.warmup + config.duration).as_millis() as u64;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
            .expect("valid template"),
    );
    bar
}
