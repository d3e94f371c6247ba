//! Measures recovery time: builds a data directory with `--skus` SKUs and `--holds` open
//! holds (one record each, written with fsync `never` to save setup time), then times
//! (1) recovery from the log alone and (2) recovery from a snapshot, as the server does at
//! startup.
//!
//! `cargo run --release -p stockd-bench --bin recovery-time -- --skus 1000000 --holds 1000000`
//! (`--channels N`: the holds name N sales channels in turn)

use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use stockd::engine::{Command, Engine, EngineConfig};
use stockd::snapshot;
use stockd::wal::{recover, DirStorage, FsyncMode, RecoverOptions};
use stockd_bench::{open_wal, reserve};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    skus: u64,
    #[arg(long, default_value_t = 1_000_000)]
    holds: u64,
    /// Sales channels the holds name in turn (`channel-0`, `channel-1`, ...); 0 for none.
    #[arg(long, default_value_t = 0)]
    channels: u64,
    /// Data directory (default: a temporary one, removed afterwards).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Only time one recovery of the existing data directory given by `--dir` (left by an
    /// earlier run with `--dir`): for profiling the recovery alone.
    #[arg(long, requires = "dir")]
    recover_only: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let temp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| temp.path().to_path_buf());
    let config = EngineConfig::default();
    if args.recover_only {
        let storage = DirStorage::open(&dir)?;
        let started = Instant::now();
        let recovered = recover(&storage, &config, RecoverOptions::default())?;
        let elapsed = started.elapsed();
        let (skus, reservations) = recovered.engine.counts();
        let heap = stockd::heap::stats().map_or(0, |h| h.allocated);
        println!(
            "recovered {skus} SKUs, {reservations} reservations, {} records replayed, in {:.2} s; \
             {:.0} MiB allocated",
            recovered.records_replayed,
            elapsed.as_secs_f64(),
            heap as f64 / (1024.0 * 1024.0)
        );
        return Ok(());
    }

    let started = Instant::now();
    {
        let engine = Engine::new(config.clone());
        let wal = open_wal(&dir, FsyncMode::Never, 256 * 1024 * 1024);
        let now = 1_700_000_000_000u64;
        let log = |command: &Command| {
            engine.apply(command, now, || {
                wal.append(now, command).expect("append");
            })
        };
        for i in 0..args.skus {
            let sku = format!("sku-{i:07}");
            log(&Command::SetStock { sku: sku.into(), on_hand: 1_000_000, expected: None });
        }
        for i in 0..args.holds {
            let sku = format!("sku-{:07}", i.wrapping_mul(0x9e37_79b9) % args.skus.max(1));
            let mut command = reserve(&format!("order-{i:010}"), &sku, 1);
            if let (Command::Reserve(request), true) = (&mut command, args.channels > 0) {
                request.channel = format!("channel-{}", i % args.channels).into();
            }
            log(&command);
        }
        wal.close();
    }
    println!(
        "setup: {} SKUs, {} holds logged in {:.2} s",
        args.skus,
        args.holds,
        started.elapsed().as_secs_f64()
    );

    let storage = Arc::new(DirStorage::open(&dir)?);
    // The allocator's own count: what the recovered state holds, hash tables' spare room
    // included (the resident size would also count memory the setup freed).
    let heap_before = stockd::heap::stats();
    let started = Instant::now();
    let recovered = recover(&*storage, &config, RecoverOptions::default())?;
    if let (Some(before), Some(after)) = (heap_before, stockd::heap::stats()) {
        let grown = after.allocated.saturating_sub(before.allocated);
        println!(
            "memory of the recovered state: {:.0} MiB allocated, {:.0} bytes per entry (SKUs \
             and holds)",
            grown as f64 / (1024.0 * 1024.0),
            grown as f64 / (args.skus + args.holds).max(1) as f64
        );
    }
    let log_only = started.elapsed();
    println!(
        "recovery from the log alone: {} records in {:.2} s",
        recovered.records_replayed,
        log_only.as_secs_f64()
    );

    // As the server's snapshotter does: capture the state, then write what was captured.
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    fn heap() -> u64 {
        stockd::heap::stats().map_or(0, |h| h.allocated)
    }
    let at_start = heap();
    let started = Instant::now();
    let (capture, ()) = recovered.engine.capture(|| ());
    let captured = capture.finish();
    let captured_in = started.elapsed();
    let capture_holds = heap().saturating_sub(at_start);
    let peak = PeakSampler::start(heap);
    snapshot::write_captured(&*storage, recovered.last_lsn, recovered.max_now_ms, &captured)?;
    let peak = peak.stop();
    drop(captured);
    println!(
        "snapshot memory: the capture held {:.0} MiB, {:.0} MiB at most while writing; {:.0} \
         MiB more stayed allocated after the write",
        mib(capture_holds),
        mib(peak.saturating_sub(at_start)),
        mib(heap().saturating_sub(at_start))
    );
    println!(
        "snapshot written in {:.2} s (captured in {:.2} s)",
        started.elapsed().as_secs_f64(),
        captured_in.as_secs_f64()
    );
    drop(recovered);

    let at_start = heap();
    let peak = PeakSampler::start(heap);
    let started = Instant::now();
    let recovered = recover(&*storage, &config, RecoverOptions::default())?;
    let from_snapshot = started.elapsed();
    let peak = peak.stop();
    let (skus, reservations) = recovered.engine.counts();
    println!(
        "recovery from the snapshot: {skus} SKUs, {reservations} reservations, {} records \
         replayed, in {:.2} s; {:.0} MiB allocated after it, {:.0} MiB at most on the way",
        recovered.records_replayed,
        from_snapshot.as_secs_f64(),
        mib(heap().saturating_sub(at_start)),
        mib(peak.saturating_sub(at_start))
    );
    Ok(())
}

/// The largest of a reading taken every millisecond on a thread of its own, until stopped.
struct PeakSampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl PeakSampler {
    fn start(read: fn() -> u64) -> PeakSampler {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = read();
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(1));
                peak = peak.max(read());
            }
            peak.max(read())
        });
        PeakSampler { stop, thread }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("the sampler does not panic")
    }
}
