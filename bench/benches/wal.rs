//! WAL append + group commit: `B` records appended, then one wait until they are durable
//! (`fdatasync`, mode `always`), for several batch sizes. Criterion reports the time per batch
//! and records/s; each batch's commit latency also goes into a histogram whose p50/p99 are
//! printed at the end of each size. Run: `cargo bench -p stockd-bench --bench wal`.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hdrhistogram::Histogram;
use stockd::wal::FsyncMode;
use stockd_bench::{open_wal, reserve};

fn group_commit(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let mut group = c.benchmark_group("wal_group_commit");
    group.measurement_time(Duration::from_secs(4)).sample_size(20);
    for batch in [1u64, 16, 256, 4096] {
        let dir = tempfile::tempdir().expect("temp dir");
        let wal = open_wal(dir.path(), FsyncMode::Always, 64 * 1024 * 1024);
        let commands: Vec<_> =
            (0..batch).map(|i| reserve(&format!("order-{i:08}"), "sku-000042", 1)).collect();
        let mut latency = Histogram::<u64>::new(3).expect("histogram");
        group.throughput(Throughput::Elements(batch));
        group.bench_function(BenchmarkId::from_parameter(batch), |b| {
            b.iter_custom(|iterations| {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    let started = Instant::now();
                    let mut lsn = 0;
                    for command in &commands {
                        lsn = wal.append(1, command).expect("append");
                    }
                    runtime.block_on(wal.durable(lsn)).expect("durable");
                    let elapsed = started.elapsed();
                    latency.record(elapsed.as_micros() as u64).expect("record");
                    total += elapsed;
                }
                total
            })
        });
        println!(
            "wal_group_commit/{batch}: commit latency p50 {} us, p99 {} us, {} fsyncs",
            latency.value_at_quantile(0.50),
            latency.value_at_quantile(0.99),
            wal.stats().fsyncs.load(std::sync::atomic::Ordering::Relaxed)
        );
        wal.close();
    }
    group.finish();
}

criterion_group!(benches, group_commit);
criterion_main!(benches);
