//! Memory of per-buyer limits: holds by 1 M distinct customers on one SKU, once without limits
//! and once with `max_per_buyer`, each in a fresh child process (so no freed memory is reused);
//! the difference of resident memory per hold is what a (SKU, buyer) entry costs.
//! Run: `cargo run --release -p stockd-bench --bin buyer-memory [-- --buyers N]`.

use bytes::Bytes;
use clap::Parser;
use stockd::engine::{Command, Engine, EngineConfig};
use stockd_bench::rss_bytes;
use stockd_protocol::{Line, Reserve, SkuLimits};

#[derive(Parser)]
struct Args {
    /// Distinct customers, one hold each.
    #[arg(long, default_value_t = 1_000_000)]
    buyers: u64,
    /// Internal: measure one case in this process and print its growth in bytes.
    #[arg(long, hide = true)]
    case: Option<String>,
}

/// Resident bytes a fresh engine grows by when `buyers` customers each hold one unit.
fn grown(buyers: u64, limits: SkuLimits) -> (u64, usize) {
    let before = rss_bytes().expect("Linux /proc");
    let engine = Engine::new(EngineConfig::default());
    let set = Command::SetStock { sku: "drop".into(), on_hand: buyers * 2, expected: None };
    engine.apply(&set, 1, || {});
    engine.apply(&Command::SetLimits { sku: "drop".into(), limits }, 1, || {});
    for n in 0..buyers {
        let reserve = Command::Reserve(Reserve {
            id: Bytes::from(format!("order-{n:08}")),
            ttl_ms: 0,
            channel: Bytes::new(),
            customer: Bytes::from(format!("customer-{n:08}")),
            lines: vec![Line::new("drop", 1)],
        });
        assert!(engine.apply(&reserve, 1, || {}).code().is_ok());
    }
    let grown = rss_bytes().expect("Linux /proc").saturating_sub(before);
    let entries = engine.buyer_entries();
    drop(engine);
    (grown, entries)
}

fn measure(buyers: u64, case: &str) -> u64 {
    let output = std::process::Command::new(std::env::current_exe().expect("own path"))
        .args(["--buyers", &buyers.to_string(), "--case", case])
        .output()
        .expect("child runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().parse().expect("bytes")
}

fn main() {
    let args = Args::parse();
    if let Some(case) = args.case {
        let limits = match case.as_str() {
            "plain" => SkuLimits::default(),
            _ => SkuLimits { max_per_buyer: 2, ..SkuLimits::default() },
        };
        let (grown, entries) = grown(args.buyers, limits);
        assert_eq!(entries as u64, if case == "plain" { 0 } else { args.buyers });
        println!("{grown}");
        return;
    }
    let plain = measure(args.buyers, "plain");
    let with_limit = measure(args.buyers, "limited");
    let per_entry = with_limit.saturating_sub(plain) as f64 / args.buyers as f64;
    println!(
        "{} holds by distinct customers: {:.0} MiB without limits, {:.0} MiB with max_per_buyer",
        args.buyers,
        plain as f64 / 1048576.0,
        with_limit as f64 / 1048576.0
    );
    println!("per (SKU, buyer) entry: {per_entry:.0} bytes");
}
