//! The `stockd` command: `serve` runs the daemon; the other subcommands are a terminal client
//! for the binary protocol (set stock, reserve, confirm, release, query...) and, over HTTP,
//! for the WMS feed and return tickets.
//!
//! Exit status: 0 when the operation succeeded (`ok`), 3 when the server answered with another
//! result code (printed), 1 for errors (cannot connect, bad arguments, bad configuration).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use stockd_protocol::tls::{self, Tls};
use stockd_protocol::{
    ChannelQuota, Client, ClientOptions, Line, LocationsReply, Op, ReservationInfo, Reserve,
    ReserveAt, ResultCode, SkuInfo, SkuLimits,
};

mod http;
mod keys;
mod tickets;

use crate::config::{Config, LogFormat, DEFAULT_TOML};
use crate::server::Server;

#[derive(Parser, Debug)]
#[command(name = "stockd", version, about = "High-throughput inventory reservation server")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (with the embedded default configuration unless --config is given).
    Serve(ServeArgs),
    /// Print the default configuration file, with every key documented.
    ConfigDefault,
    /// Check the data directory and, if the log is corrupt, truncate it at the damage (after
    /// confirmation). Everything logged after the damage is lost.
    Repair {
        /// Configuration file (for the data directory and engine settings).
        #[arg(long, env = "STOCKD_CONFIG")]
        config: Option<PathBuf>,
        /// Data directory, overriding the configuration.
        #[arg(long, env = "STOCKD_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Set, adjust or read a SKU's stock.
    #[command(subcommand)]
    Stock(StockCommand),
    /// Set or show a SKU's flash-sale limits: per-buyer limit and channel quotas.
    #[command(subcommand)]
    Limits(LimitsCommand),
    /// Send a warehouse (WMS) feed: physical counts and incoming stock, as CSV (the columns
    /// are in the README, "WMS feed"). The file is checked first; a bad row sends nothing.
    WmsImport {
        #[command(flatten)]
        http: http::HttpTarget,
        /// Who sends it (recorded in the audit log).
        #[arg(long)]
        actor: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
        /// The CSV file (`-` for standard input).
        file: PathBuf,
    },
    /// Return tickets: open, move, scan, list, show, report (over HTTP).
    Tickets(tickets::TicketArgs),
    /// API keys: create, list, revoke (over HTTP with an admin key, or --offline).
    Keys(keys::KeyArgs),
    /// Reserve stock: `stockd reserve ORDER-1 SKU-A:2 SKU-B:1`.
    Reserve {
        #[command(flatten)]
        client: ClientArgs,
        /// Reservation id (the idempotency key, e.g. the order number).
        id: String,
        /// Lines as SKU:QTY.
        #[arg(required = true, value_parser = parse_line)]
        lines: Vec<Line>,
        /// Hold duration in milliseconds (0 = the server's default).
        #[arg(long, default_value_t = 0)]
        ttl_ms: u32,
        #[arg(long, default_value = "")]
        channel: String,
        #[arg(long, default_value = "")]
        customer: String,
        /// Take every line from this location (SKUs with locations).
        #[arg(long)]
        location: Option<String>,
        /// Let a line that no single location can serve be split across locations.
        #[arg(long)]
        split: bool,
    },
    /// Confirm a hold, fully or (with SKU:QTY lines) partially.
    Confirm {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
        #[arg(value_parser = parse_line)]
        lines: Vec<Line>,
    },
    /// Release a hold.
    Release {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
    /// Extend a hold to now + TTL (within the server's maximum hold).
    Extend {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
        #[arg(long)]
        ttl_ms: u32,
    },
    /// Ship a confirmed reservation: its units leave on_hand.
    Ship {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
    /// Show one reservation.
    Reservation {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
    /// Check that the server answers.
    Ping {
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand, Debug)]
enum StockCommand {
    /// Set the physical count (creates the SKU if it is new).
    Set {
        #[command(flatten)]
        client: ClientArgs,
        sku: String,
        on_hand: u64,
        /// Only apply if the current count is this value.
        #[arg(long)]
        expected: Option<u64>,
    },
    /// Add a (possibly negative) delta to the physical count.
    Adjust {
        #[command(flatten)]
        client: ClientArgs,
        sku: String,
        #[arg(allow_negative_numbers = true)]
        delta: i64,
        #[arg(long)]
        expected: Option<u64>,
    },
    /// Set the safety stock below which selling pauses.
    Safety {
        #[command(flatten)]
        client: ClientArgs,
        sku: String,
        safety_stock: u64,
    },
    /// Show a SKU's counters.
    Get {
        #[command(flatten)]
        client: ClientArgs,
        sku: String,
    },
    /// Set one location's physical count and priority (lower is chosen first).
    Location {
        #[command(flatten)]
        client: ClientArgs,
        sku: String,
        location: String,
        on_hand: u64,
        #[arg(long, default_value_t = 0)]
        priority: u32,
        /// Only apply if the location's current count is this value.
        #[arg(long)]
        expected: Option<u64>,
    },
    /// Add a (possibly negative) delta to one location's physical count.
    AdjustLocation {
        #[command(flatten)]
        client: ClientArgs,
        sku: String,
        location: String,
        #[arg(allow_negative_numbers = true)]
        delta: i64,
        #[arg(long)]
        expected: Option<u64>,
    },
    /// Record (or replace; QTY 0 removes) an incoming delivery.
    Incoming {
        #[command(flatten)]
        client: ClientArgs,
        sku: String,
        reference: String,
        qty: u64,
        /// Location it arrives at (required on SKUs with locations).
        #[arg(long, default_value = "")]
        location: String,
        /// Expected arrival, UTC milliseconds since the Unix epoch.
        #[arg(long, default_value_t = 0)]
        eta_ms: u64,
    },
    /// Move units of an incoming delivery into on_hand (all of it without QTY).
    Receive {
        #[command(flatten)]
        client: ClientArgs,
        sku: String,
        reference: String,
        #[arg(default_value_t = 0)]
        qty: u64,
        #[arg(long, default_value = "")]
        location: String,
    },
    /// Allow selling up to MAX units beyond on_hand against incoming stock (0 = no preorders).
    Preorder {
        #[command(flatten)]
        client: ClientArgs,
        sku: String,
        preorder_max: u64,
    },
    /// Delete a SKU no open reservation names (held, or confirmed and not shipped; else
    /// `sku_in_use`, with the counters). Where deletions need a second admin's
    /// approval (the default with API keys) this is `forbidden`: ask over HTTP instead
    /// (`DELETE /api/v1/skus/{sku}`, docs/API.md), where the change waits for approval.
    Delete {
        #[command(flatten)]
        client: ClientArgs,
        sku: String,
    },
    /// Show a SKU's locations, incoming deliveries and preorders.
    Locations {
        #[command(flatten)]
        client: ClientArgs,
        sku: String,
    },
    /// Apply many stock changes in batch frames, one result line per row. Each line of FILE
    /// (`-` for stdin) is one change; `#` starts a comment:
    /// `set SKU ON_HAND` | `adjust SKU DELTA` | `safety SKU N` |
    /// `location SKU LOCATION ON_HAND [PRIORITY]` | `incoming SKU LOCATION|- REFERENCE QTY [ETA_MS]` |
    /// `preorder SKU MAX` | `delete SKU`.
    Import {
        #[command(flatten)]
        client: ClientArgs,
        file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum LimitsCommand {
    /// Replace the limits: `stockd limits set DROP-1 --max-per-buyer 2 --quota live=40% --quota
    /// app=500 --shared-pool`. Without options, removes them.
    Set {
        #[command(flatten)]
        client: ClientArgs,
        sku: String,
        /// Most units one customer may hold and have bought at once (0 = no limit).
        #[arg(long, default_value_t = 0)]
        max_per_buyer: u32,
        /// A channel quota, CHANNEL=UNITS or CHANNEL=PERCENT% (repeatable, at most 16).
        #[arg(long = "quota")]
        quotas: Vec<ChannelQuota>,
        /// Let channels with a quota also sell from the unallocated pool once theirs is used.
        #[arg(long)]
        shared_pool: bool,
    },
    /// Show the limits, each channel's allocation and use, and the pool.
    Get {
        #[command(flatten)]
        client: ClientArgs,
        sku: String,
    },
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Configuration file (TOML). Without it the embedded defaults are used.
    #[arg(long, env = "STOCKD_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address, overriding the configuration.
    #[arg(long, env = "STOCKD_LISTEN")]
    listen: Option<String>,
    /// Log filter, overriding the configuration ("info", "debug", ...).
    #[arg(long, env = "STOCKD_LOG")]
    log_level: Option<String>,
    /// Data directory (log and snapshots), overriding the configuration.
    #[arg(long, env = "STOCKD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address of the HTTP endpoints (/healthz, /readyz, /metrics), overriding the configuration.
    #[arg(long, env = "STOCKD_HTTP_LISTEN")]
    http_listen: Option<String>,
    /// Development only: no API keys, every caller is an admin (sets auth.enabled = false).
    #[arg(long)]
    no_auth: bool,
}

#[derive(Args, Debug)]
struct ClientArgs {
    /// Server address.
    #[arg(long, env = "STOCKD_SERVER", default_value = "127.0.0.1:7878")]
    server: String,
    /// API key presented in the handshake.
    #[arg(long, env = "STOCKD_API_KEY", default_value = "", hide_env_values = true)]
    api_key: String,
    /// Connect over TLS (the server runs with `[tls] enabled = true`), trusting the
    /// certificates in this PEM file: the server's own self-signed certificate or its CA.
    #[arg(long, env = "STOCKD_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// The name the server's certificate must carry (default: the host of --server).
    #[arg(long, requires = "tls_ca")]
    tls_server_name: Option<String>,
}

/// A UTC time in milliseconds as RFC 3339 (seconds).
fn fmt_ms(ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(at).to_string()
}

fn parse_line(text: &str) -> Result<Line, String> {
    let (sku, qty) = text.rsplit_once(':').ok_or_else(|| format!("{text:?} is not SKU:QTY"))?;
    let qty = qty.parse::<u32>().map_err(|e| format!("bad quantity in {text:?}: {e}"))?;
    Ok(Line::new(Bytes::copy_from_slice(sku.as_bytes()), qty))
}

/// Entry point of the `stockd` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) if code.is_ok() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(3),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting runtime")
}

fn run(cli: Cli) -> anyhow::Result<ResultCode> {
    match cli.command {
        Command::Serve(args) => serve(args).map(|()| ResultCode::Ok),
        Command::ConfigDefault => {
            print!("{DEFAULT_TOML}");
            Ok(ResultCode::Ok)
        }
        Command::Repair { config, data_dir, yes } => repair(config, data_dir, yes),
        command => runtime()?.block_on(client_command(command)),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Some(level) = args.log_level {
        config.log.level = level;
    }
    if let Some(dir) = args.data_dir {
        config.storage.data_dir = dir;
    }
    if let Some(http) = args.http_listen {
        config.http.listen = http;
    }
    if args.no_auth {
        config.auth.enabled = false;
    }
    config.validate()?;
    init_logging(&config);
    if config.server.batch_scheduling {
        // Before any thread starts: every thread of the process inherits the policy.
        if let Err(e) = batch_scheduling() {
            tracing::warn!(error = %e, "could not switch to SCHED_BATCH scheduling; going on without");
        }
    }
    let runtime = runtime()?;
    runtime.block_on(async {
        let server = Server::bind(config.clone())
            .await
            .with_context(|| format!("binding {}", config.server.listen))?;
        keys::bootstrap(&server.shared())?;
        server.run(shutdown_signal()).await.context("serving")
    })
}

/// Switches the calling thread, and so every thread it starts afterwards, to `SCHED_BATCH`:
/// the scheduler then lets a running thread go on when another one wakes up instead of
/// preempting it, which costs a server whose threads keep waking each other (connections,
/// the log writer) fewer context switches.
#[cfg(target_os = "linux")]
fn batch_scheduling() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid `sched_param`, and pid 0 names the calling thread.
    match unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

#[cfg(not(target_os = "linux"))]
fn batch_scheduling() -> std::io::Result<()> {
    Ok(())
}

fn repair(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    yes: bool,
) -> anyhow::Result<ResultCode> {
    use crate::wal::{recover, DirStorage, RecoverOptions, RecoveryError};
    let mut config = Config::load(config.as_deref())?;
    if let Some(dir) = data_dir {
        config.storage.data_dir = dir;
    }
    let dir = &config.storage.data_dir;
    let _lock = crate::wal::DirLock::acquire(dir)
        .with_context(|| format!("{}: stop the server before repairing", dir.display()))?;
    let storage = DirStorage::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    let engine = config.engine_config();
    let options = RecoverOptions { up_to: None, read_only: true };
    match recover(&storage, &engine, options) {
        Ok(recovered) => {
            println!("the log in {} is intact up to record {}", dir.display(), recovered.last_lsn);
            if let Some(torn) = recovered.truncated {
                println!("a torn write at its end will be truncated at the next start: {torn}");
            }
            return Ok(ResultCode::Ok);
        }
        Err(e @ RecoveryError::Corrupt { .. }) => println!("{e}"),
        Err(e) => bail!("{e}; `repair` only truncates a corrupt log, it cannot fix this"),
    }
    if !yes {
        println!("Type 'truncate' to cut the log at the damage, anything else to stop:");
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer).context("reading the confirmation")?;
        if answer.trim() != "truncate" {
            println!("nothing changed");
            return Ok(ResultCode::InvalidArgument);
        }
    }
    match crate::wal::repair(&storage, &engine)? {
        Some(done) => println!("{done}"),
        None => println!("nothing to repair"),
    }
    Ok(ResultCode::Ok)
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::new(&config.log.level);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(terminate) => terminate,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
    }
}

async fn connect(args: &ClientArgs) -> anyhow::Result<Client> {
    let options = ClientOptions {
        api_key: Bytes::copy_from_slice(args.api_key.as_bytes()),
        client_name: Bytes::from_static(b"stockd-cli"),
        ..ClientOptions::default()
    };
    let tls =
        Tls::from_options(args.tls_ca.as_deref(), args.tls_server_name.as_deref(), &args.server)?;
    let stream = tls::connect(args.server.as_str(), tls.as_ref(), options.connect_timeout)
        .await
        .with_context(|| format!("connecting to {}", tls::describe(&args.server, tls.as_ref())))?;
    Client::over(stream, options).await.with_context(|| format!("handshake with {}", args.server))
}

fn bytes(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

fn print_sku(code: ResultCode, info: &SkuInfo) {
    // The counters say why for these two refusals.
    if code.is_ok() || matches!(code, ResultCode::ExpectedMismatch | ResultCode::SkuInUse) {
        println!(
            "{code} on_hand={} reserved={} committed={} safety_stock={} available={} paused={}",
            info.on_hand,
            info.reserved,
            info.committed,
            info.safety_stock,
            info.available,
            info.paused
        );
    } else {
        println!("{code}");
    }
}

fn print_locations(reply: &LocationsReply) -> anyhow::Result<ResultCode> {
    if !reply.code.is_ok() {
        println!("{}", reply.code);
        return Ok(reply.code);
    }
    println!("ok preorder_max={} preordered={}", reply.preorder_max, reply.preordered);
    for l in &reply.locations {
        println!(
            "  location {} priority={} on_hand={} reserved={} committed={} incoming={} available={}",
            String::from_utf8_lossy(&l.location),
            l.priority,
            l.on_hand,
            l.reserved,
            l.committed,
            l.incoming,
            l.available
        );
    }
    for i in &reply.incoming {
        println!(
            "  incoming {} at {:?} qty={} eta_ms={}",
            String::from_utf8_lossy(&i.reference),
            String::from_utf8_lossy(&i.location),
            i.qty,
            i.eta_ms
        );
    }
    Ok(reply.code)
}

/// One change of an import file, as the operation it sends.
fn import_op(line: &str) -> Result<Option<Op>, String> {
    let line = line.split('#').next().unwrap_or_default().trim();
    let fields: Vec<&str> = line.split_whitespace().collect();
    let Some((&kind, args)) = fields.split_first() else { return Ok(None) };
    let number = |index: usize, what: &str| -> Result<u64, String> {
        let text = args.get(index).ok_or_else(|| format!("{kind}: {what} is missing"))?;
        text.parse().map_err(|_| format!("{kind}: {what} {text:?} is not a count"))
    };
    let text = |index: usize, what: &str| -> Result<Bytes, String> {
        args.get(index).map(|t| bytes(t)).ok_or_else(|| format!("{kind}: {what} is missing"))
    };
    let expect_fields = |min: usize, max: usize| {
        if (min..=max).contains(&args.len()) {
            Ok(())
        } else {
            Err(format!("{kind} takes {min} to {max} fields, not {}", args.len()))
        }
    };
    let op = match kind {
        "set" => {
            expect_fields(2, 2)?;
            Op::SetStock { sku: text(0, "SKU")?, on_hand: number(1, "ON_HAND")?, expected: None }
        }
        "adjust" => {
            expect_fields(2, 2)?;
            let delta =
                args[1].parse().map_err(|_| format!("adjust: {:?} is not a delta", args[1]))?;
            Op::AdjustStock { sku: text(0, "SKU")?, delta, expected: None }
        }
        "safety" => {
            expect_fields(2, 2)?;
            Op::SetSafetyStock { sku: text(0, "SKU")?, safety_stock: number(1, "N")? }
        }
        "location" => {
            expect_fields(3, 4)?;
            let priority = if args.len() == 4 { number(3, "PRIORITY")? } else { 0 };
            Op::SetLocation {
                sku: text(0, "SKU")?,
                location: text(1, "LOCATION")?,
                on_hand: number(2, "ON_HAND")?,
                priority: u32::try_from(priority).map_err(|_| "location: PRIORITY is too large")?,
                expected: None,
            }
        }
        "incoming" => {
            expect_fields(4, 5)?;
            let location = if args[1] == "-" { Bytes::new() } else { text(1, "LOCATION")? };
            Op::SetIncoming {
                sku: text(0, "SKU")?,
                location,
                reference: text(2, "REFERENCE")?,
                qty: number(3, "QTY")?,
                eta_ms: if args.len() == 5 { number(4, "ETA_MS")? } else { 0 },
            }
        }
        "preorder" => {
            expect_fields(2, 2)?;
            Op::SetPreorder { sku: text(0, "SKU")?, preorder_max: number(1, "MAX")? }
        }
        "delete" => {
            expect_fields(1, 1)?;
            Op::DeleteSku { sku: text(0, "SKU")? }
        }
        other => return Err(format!("unknown change {other:?}")),
    };
    op.check_limits().map_err(|e| e.to_string())?;
    Ok(Some(op))
}

/// Sends an import file in batch frames; prints one result per change. The first bad line
/// stops the import before anything is sent.
async fn import(client: &ClientArgs, file: &Path) -> anyhow::Result<ResultCode> {
    let contents = if file == Path::new("-") {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    let mut ops = Vec::new();
    for (number, line) in contents.lines().enumerate() {
        match import_op(line) {
            Ok(Some(op)) => ops.push((number + 1, op)),
            Ok(None) => {}
            Err(e) => bail!("{}:{}: {e}; nothing was sent", file.display(), number + 1),
        }
    }
    let client = connect(client).await?;
    let mut refused = 0usize;
    for chunk in ops.chunks(IMPORT_BATCH) {
        let replies = client.batch(chunk.iter().map(|(_, op)| op.clone()).collect()).await?;
        for ((number, _), reply) in chunk.iter().zip(replies) {
            println!("{}:{number}: {}", file.display(), reply.code());
            refused += usize::from(!reply.code().is_ok());
        }
    }
    println!("{} changes, {} refused", ops.len(), refused);
    Ok(if refused == 0 { ResultCode::Ok } else { ResultCode::InvalidArgument })
}

/// Checks a WMS feed, posts it to `/api/v1/feeds/wms` and prints one result per row.
async fn wms_import(
    http: &http::HttpTarget,
    actor: &str,
    reason: &str,
    file: &Path,
) -> anyhow::Result<ResultCode> {
    let text = if file == Path::new("-") {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    if let Err(e) = crate::wms::parse(&text) {
        bail!("{}: {e}; nothing was sent", file.display());
    }
    let response = http
        .request(reqwest::Method::POST, "/api/v1/feeds/wms")?
        .query(&[("actor", actor), ("reason", reason)])
        .header("content-type", "text/csv")
        .body(text)
        .send()
        .await
        .with_context(|| format!("cannot reach {}", http.http))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.context("the reply is not JSON")?;
    if !status.is_success() {
        bail!("refused ({status}): {} {}", body["code"], body["message"]);
    }
    let results = body["results"].as_array().cloned().unwrap_or_default();
    for (row, result) in results.iter().enumerate() {
        let message = result["message"].as_str().map(|m| format!(" ({m})")).unwrap_or_default();
        println!(
            "{}:{}: {} {}{message}",
            file.display(),
            row + 2,
            result["code"].as_str().unwrap_or("?"),
            result["sku"].as_str().unwrap_or("")
        );
    }
    println!("{} rows, {} refused", results.len(), body["refused"]);
    Ok(if body["refused"] == 0 { ResultCode::Ok } else { ResultCode::InvalidArgument })
}

/// Changes per batch frame of an import.
const IMPORT_BATCH: usize = 1000;

fn print_reservation(info: &ReservationInfo) {
    let text = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
    println!(
        "state={} created_at_ms={} expires_at_ms={} channel={} customer={}",
        info.state.name(),
        info.created_at_ms,
        info.expires_at_ms,
        text(&info.channel),
        text(&info.customer)
    );
    for line in &info.lines {
        println!("  {} held={} confirmed={}", text(&line.sku), line.qty_held, line.qty_confirmed);
    }
}

async fn client_command(command: Command) -> anyhow::Result<ResultCode> {
    let code = match command {
        Command::Serve(_) | Command::ConfigDefault | Command::Repair { .. } => {
            bail!("not a client command")
        }
        Command::Stock(stock) => {
            let reply = match &stock {
                StockCommand::Set { client, sku, on_hand, expected } => {
                    connect(client).await?.set_stock(bytes(sku), *on_hand, *expected).await?
                }
                StockCommand::Adjust { client, sku, delta, expected } => {
                    connect(client).await?.adjust_stock(bytes(sku), *delta, *expected).await?
                }
                StockCommand::Safety { client, sku, safety_stock } => {
                    connect(client).await?.set_safety_stock(bytes(sku), *safety_stock).await?
                }
                StockCommand::Get { client, sku } => {
                    connect(client).await?.query_sku(bytes(sku)).await?
                }
                StockCommand::Location { client, sku, location, on_hand, priority, expected } => {
                    let (sku, location) = (bytes(sku), bytes(location));
                    let client = connect(client).await?;
                    client.set_location(sku, location, *on_hand, *priority, *expected).await?
                }
                StockCommand::AdjustLocation { client, sku, location, delta, expected } => {
                    let (sku, location) = (bytes(sku), bytes(location));
                    connect(client).await?.adjust_location(sku, location, *delta, *expected).await?
                }
                StockCommand::Incoming { client, sku, reference, qty, location, eta_ms } => {
                    let (sku, location, reference) =
                        (bytes(sku), bytes(location), bytes(reference));
                    let client = connect(client).await?;
                    client.set_incoming(sku, location, reference, *qty, *eta_ms).await?
                }
                StockCommand::Receive { client, sku, reference, qty, location } => {
                    let (sku, location, reference) =
                        (bytes(sku), bytes(location), bytes(reference));
                    connect(client).await?.receive_incoming(sku, location, reference, *qty).await?
                }
                StockCommand::Preorder { client, sku, preorder_max } => {
                    connect(client).await?.set_preorder(bytes(sku), *preorder_max).await?
                }
                StockCommand::Delete { client, sku } => {
                    let reply = connect(client).await?.delete_sku(bytes(sku)).await?;
                    if reply.code == ResultCode::Forbidden {
                        eprintln!(
                            "this key may not delete SKUs, or deleting needs a second admin's \
                             approval: DELETE /api/v1/skus/{sku} over HTTP waits for it"
                        );
                    }
                    reply
                }
                StockCommand::Locations { client, sku } => {
                    return print_locations(
                        &connect(client).await?.query_locations(bytes(sku)).await?,
                    );
                }
                StockCommand::Import { client, file } => return import(client, file).await,
            };
            print_sku(reply.code, &reply.info);
            reply.code
        }
        Command::Limits(LimitsCommand::Set { client, sku, max_per_buyer, quotas, shared_pool }) => {
            let limits = SkuLimits { max_per_buyer, shared_pool, quotas };
            let reply = connect(&client).await?.set_limits(bytes(&sku), limits).await?;
            print_sku(reply.code, &reply.info);
            reply.code
        }
        Command::Limits(LimitsCommand::Get { client, sku }) => {
            let reply = connect(&client).await?.query_limits(bytes(&sku)).await?;
            if reply.code.is_ok() {
                println!(
                    "{} max_per_buyer={} shared_pool={} pool={} pool_used={}",
                    reply.code,
                    reply.limits.max_per_buyer,
                    reply.limits.shared_pool,
                    reply.pool,
                    reply.pool_used
                );
                for (quota, used) in reply.limits.quotas.iter().zip(&reply.channels) {
                    println!(
                        "  {} quota={} allocation={} used={}",
                        String::from_utf8_lossy(&quota.channel),
                        quota.limit,
                        used.allocation,
                        used.used
                    );
                }
            } else {
                println!("{}", reply.code);
            }
            reply.code
        }
        Command::Reserve { client, id, lines, ttl_ms, channel, customer, location, split } => {
            let reserve = Reserve {
                id: bytes(&id),
                ttl_ms,
                channel: bytes(&channel),
                customer: bytes(&customer),
                lines,
            };
            let client = connect(&client).await?;
            let reply = if location.is_some() || split {
                let location = bytes(location.as_deref().unwrap_or_default());
                let at = client.reserve_at(ReserveAt { reserve, location, split }).await?;
                for a in &at.allocations {
                    println!(
                        "  line {} from {}: {}",
                        a.line,
                        String::from_utf8_lossy(&a.location),
                        a.qty
                    );
                }
                at.reply
            } else {
                client.reserve(reserve).await?
            };
            match reply.failed_line {
                Some(line) => println!("{} failed_line={line}", reply.code),
                None if reply.code.is_ok() => println!("ok expires_at_ms={}", reply.expires_at_ms),
                None => println!("{}", reply.code),
            }
            reply.code
        }
        Command::WmsImport { http, actor, reason, file } => {
            return wms_import(&http, &actor, &reason, &file).await
        }
        Command::Tickets(args) => return tickets::run(args).await,
        Command::Keys(args) => return keys::run(args).await,
        Command::Confirm { client, id, lines } => {
            let code = connect(&client).await?.confirm(bytes(&id), lines).await?;
            println!("{code}");
            code
        }
        Command::Release { client, id } => {
            let code = connect(&client).await?.release(bytes(&id)).await?;
            println!("{code}");
            code
        }
        Command::Extend { client, id, ttl_ms } => {
            let reply = connect(&client).await?.extend(bytes(&id), ttl_ms).await?;
            if reply.code.is_ok() {
                println!("ok expires_at_ms={}", reply.expires_at_ms);
            } else {
                println!("{}", reply.code);
            }
            reply.code
        }
        Command::Ship { client, id } => {
            let code = connect(&client).await?.ship(bytes(&id)).await?;
            println!("{code}");
            code
        }
        Command::Reservation { client, id } => {
            let reply = connect(&client).await?.query_reservation(bytes(&id)).await?;
            match &reply.info {
                Some(info) => print_reservation(info),
                None => println!("{}", reply.code),
            }
            reply.code
        }
        Command::Ping { client } => {
            let client = connect(&client).await?;
            let code = client.ping().await?;
            println!("{code} protocol_version={}", client.hello().version);
            code
        }
    };
    Ok(code)
}

#[cfg(test)]
mod tests {
    use stockd_protocol::QuotaLimit;

    use super::*;

    #[test]
    fn quotas_parse_as_units_or_percent() {
        let parse_quota = |text: &str| text.parse::<ChannelQuota>();
        let live = parse_quota("live=40%").unwrap();
        assert_eq!((&live.channel[..], live.limit), (&b"live"[..], QuotaLimit::BasisPoints(4_000)));
        assert_eq!(parse_quota("app=12.5%").unwrap().limit, QuotaLimit::BasisPoints(1_250));
        assert_eq!(parse_quota("app=500").unwrap().limit, QuotaLimit::Units(500));
        for bad in ["live", "=5", "live=-1", "live=101%", "live=many", "live=x%"] {
            assert!(parse_quota(bad).is_err(), "{bad} accepted");
        }
    }
}
