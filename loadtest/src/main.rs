//! `stockd-loadtest`: drive a running stockd server with a scenario and judge the result.
//!
//! `cargo run --release -p stockd-loadtest -- flash-sale --connections 50 --duration 10`
//! Exit status: 0 when the verdict passes, 2 when it fails, 1 on errors.

// The load generator shares the machine with the server it measures: jemalloc costs it less CPU
// than glibc's malloc with millions of tracked holds.
#[cfg(unix)]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use stockd_loadtest::scenario::Mix;
use stockd_loadtest::{run, RunConfig, Scenario};
use stockd_protocol::tls::Tls;
use stockd_protocol::{ChannelQuota, SkuLimits};

#[derive(Parser, Debug)]
#[command(name = "stockd-loadtest", version, about = "Load-test a running stockd server")]
// A later occurrence of an option wins (scripts add options to a common set).
#[command(args_override_self = true)]
struct Args {
    /// The scenario to run.
    scenario: Scenario,
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:7878")]
    server: String,
    /// Connect over TLS (the server runs with `[tls] enabled = true`), trusting the
    /// certificates in this PEM file: the server's own self-signed certificate or its CA.
    #[arg(long, env = "STOCKD_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// The name the server's certificate must carry (default: the host of --server).
    #[arg(long, requires = "tls_ca")]
    tls_server_name: Option<String>,
    /// API key with the admin role (the harness sets up stock, then reserves); the key a
    /// fresh server prints on its first start will do.
    #[arg(long, env = "STOCKD_API_KEY", default_value = "", hide_env_values = true)]
    api_key: String,
    /// TCP connections.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Requests in flight per connection (pipelining).
    #[arg(long, default_value_t = 1)]
    in_flight: usize,
    /// Operations per request; above 1, requests are batch frames.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Open loop: requests per second (latency measured from the intended send time).
    /// Without it, closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds of warm-up (not measured).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many requests in total (warm-up included).
    #[arg(long)]
    requests: Option<u64>,
    /// SKUs (default: 3 for flash-sale, 1,000,000 for checkout, 10,000 for mixed, 10 for sold-out).
    #[arg(long)]
    skus: Option<u64>,
    /// Stock per SKU (default: 10,000 for flash-sale, 1,000,000,000 otherwise; 0 for sold-out).
    #[arg(long)]
    stock: Option<u64>,
    /// Hold TTL in ms (default: 2,000 for flash-sale so holds expire during the run; 600,000 otherwise).
    #[arg(long)]
    ttl_ms: Option<u32>,
    /// Share of granted holds that are confirmed.
    #[arg(long, default_value_t = 0.5)]
    confirm_share: f64,
    /// Share of granted holds that are released (the rest expire).
    #[arg(long, default_value_t = 0.3)]
    release_share: f64,
    /// Most lines per order in `checkout`.
    #[arg(long, default_value_t = 4)]
    lines_max: u32,
    /// `mixed` weights as reserve,confirm,release,query.
    #[arg(long, default_value = "50,20,10,20", value_parser = parse_mix)]
    mix: Mix,
    /// Distinct customers that reserves name (0: none). Needed with --max-per-buyer.
    #[arg(long, default_value_t = 0)]
    buyers: u64,
    /// Sales channels reserves are spread over, comma-separated (default: `loadtest`).
    #[arg(long, value_delimiter = ',')]
    channels: Vec<String>,
    /// Per-buyer limit set on every SKU (flash-sale limits; the verdict checks it).
    #[arg(long, default_value_t = 0)]
    max_per_buyer: u32,
    /// Channel quota set on every SKU, CHANNEL=UNITS or CHANNEL=PERCENT% (repeatable).
    #[arg(long = "quota")]
    quotas: Vec<ChannelQuota>,
    /// Channels with a quota may also sell from the unallocated pool.
    #[arg(long)]
    shared_pool: bool,
    /// Stock the verdict assumes (to check that a wrong expectation fails).
    #[arg(long)]
    assume_stock: Option<u64>,
    /// The server's `engine.retention_ms`, for runs longer than it: the verdict then accepts
    /// that released and long-expired reservations were forgotten.
    #[arg(long)]
    retention_ms: Option<u64>,
    /// Prefix of SKU and reservation ids (default: unique per run).
    #[arg(long)]
    prefix: Option<String>,
    /// Where to write the JSON result.
    #[arg(long, default_value = "loadtest-result.json")]
    json: PathBuf,
    /// Where to write the HTML report.
    #[arg(long, default_value = "loadtest-report.html")]
    report: PathBuf,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Seed of the request generators.
    #[arg(long)]
    seed: Option<u64>,
    /// Threads that drive the connections. With 1 (the default) every connection runs on one
    /// thread, which costs the least CPU per request: the harness shares the machine with the
    /// server it measures. More threads only help where one thread cannot keep up.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    threads: u16,
}

fn parse_mix(text: &str) -> Result<Mix, String> {
    let parts: Vec<u32> = text
        .split(',')
        .map(|p| p.trim().parse::<u32>().map_err(|e| format!("{p:?}: {e}")))
        .collect::<Result<_, _>>()?;
    let [reserve, confirm, release, query] = parts[..] else {
        return Err("expected four weights: reserve,confirm,release,query".into());
    };
    if reserve == 0 {
        return Err("the reserve weight must be positive".into());
    }
    Ok(Mix { reserve, confirm, release, query })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut builder = match args.threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        threads => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(usize::from(threads));
            builder
        }
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main_async(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn main_async(args: Args) -> anyhow::Result<bool> {
    let scenario = args.scenario;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
    let tls =
        Tls::from_options(args.tls_ca.as_deref(), args.tls_server_name.as_deref(), &args.server)?;
    let config = RunConfig {
        server: args.server,
        tls,
        api_key: args.api_key,
        scenario,
        connections: args.connections,
        in_flight: args.in_flight,
        batch: args.batch,
        rate: args.rate,
        warmup: Duration::from_secs_f64(args.warmup),
        duration: Duration::from_secs_f64(args.duration),
        requests_max: args.requests,
        skus: args.skus.unwrap_or(match scenario {
            Scenario::FlashSale => 3,
            Scenario::Checkout => 1_000_000,
            Scenario::Mixed => 10_000,
            Scenario::SoldOut => 10,
        }),
        stock: args.stock.unwrap_or(match scenario {
            Scenario::FlashSale => 10_000,
            _ => 1_000_000_000,
        }),
        ttl_ms: args.ttl_ms.unwrap_or(match scenario {
            Scenario::FlashSale => 2_000,
            _ => 600_000,
        }),
        confirm_share: args.confirm_share,
        release_share: args.release_share,
        lines_max: args.lines_max,
        mix: args.mix,
        buyers: args.buyers,
        channels: args.channels,
        limits: SkuLimits {
            max_per_buyer: args.max_per_buyer,
            shared_pool: args.shared_pool,
            quotas: args.quotas,
        },
        assume_limits: None,
        prefix: args.prefix.unwrap_or_else(|| format!("lt{:x}", nanos % 0xffff_ffff)),
        assume_stock: args.assume_stock,
        retention_ms: args.retention_ms,
        progress: !args.quiet,
        seed: args.seed.unwrap_or(nanos as u64),
    };
    let result = run(config).await?;
    print!("{}", result.summary());
    std::fs::write(&args.json, result.to_json())?;
    std::fs::write(&args.report, result.to_html())?;
    println!("wrote {} and {}", args.json.display(), args.report.display());
    Ok(result.verdict.passed)
}
