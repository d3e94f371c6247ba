//! The engine alone (no I/O): reserve on one hot SKU, on 1M uniform SKUs, a 4-line reserve,
//! a sold-out rejection, and a reserve + confirm + release cycle; and the operations views
//! at 100 000 SKUs (a dashboard page, the totals, an activity sample).
//! Run: `cargo bench -p stockd-bench --bench engine`.

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use stockd::engine::{Command, Engine, EngineConfig, SkuFilter};
use stockd_bench::reserve;
use stockd_protocol::{Confirm, Line, Reserve};

const SKUS: u64 = 1_000_000;

fn stocked(skus: u64, on_hand: u64) -> Engine {
    let engine = Engine::new(EngineConfig::default());
    for i in 0..skus {
        let command =
            Command::SetStock { sku: format!("sku-{i:07}").into(), on_hand, expected: None };
        engine.apply(&command, 0, || {});
    }
    engine
}

fn engine(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(1));

    let hot = stocked(1, u64::MAX / 2);
    let mut n = 0u64;
    group.bench_function("reserve_hot_sku", |b| {
        b.iter(|| {
            n += 1;
            let command = reserve(&format!("hot-{n}"), "sku-0000000", 1);
            black_box(hot.apply(&command, 1, || {}));
        })
    });

    let uniform = stocked(SKUS, 1_000_000);
    let mut n = 0u64;
    group.bench_function("reserve_1m_uniform_skus", |b| {
        b.iter(|| {
            n += 1;
            let sku = format!("sku-{:07}", n.wrapping_mul(0x9e37_79b9) % SKUS);
            black_box(uniform.apply(&reserve(&format!("u-{n}"), &sku, 1), 1, || {}));
        })
    });

    let mut n = 0u64;
    group.bench_function("reserve_4_lines", |b| {
        b.iter(|| {
            n += 1;
            let lines =
                (0..4).map(|k| Line::new(format!("sku-{:07}", (n * 4 + k) % SKUS), 1)).collect();
            let command = Command::Reserve(Reserve {
                id: format!("m-{n}").into(),
                ttl_ms: 0,
                channel: Bytes::new(),
                customer: Bytes::new(),
                lines,
            });
            black_box(uniform.apply(&command, 1, || {}));
        })
    });

    let sold_out = stocked(1, 0);
    let rejected = reserve("nope", "sku-0000000", 1);
    group.bench_function("sold_out_rejection", |b| {
        b.iter(|| black_box(sold_out.apply(&rejected, 1, || {})))
    });

    let mut n = 0u64;
    group.bench_function("reserve_confirm_release", |b| {
        b.iter(|| {
            n += 1;
            let (a, r) = (format!("c-{n}"), format!("r-{n}"));
            hot.apply(&reserve(&a, "sku-0000000", 1), 1, || {});
            hot.apply(&Command::Confirm(Confirm { id: a.into(), lines: vec![] }), 1, || {});
            hot.apply(&reserve(&r, "sku-0000000", 1), 1, || {});
            black_box(hot.apply(&Command::Release { id: r.into() }, 1, || {}));
        })
    });
    group.finish();
}

/// What the dashboard and `/metrics` cost: each is a full scan, one shard lock at a time.
fn views(c: &mut Criterion) {
    let mut group = c.benchmark_group("views_100k_skus");
    group.sample_size(20);
    let engine = stocked(100_000, 1_000);
    for n in 0..10_000u64 {
        engine.apply(
            &reserve(&format!("v-{n}"), &format!("sku-{:07}", n * 7 % 100_000), 1),
            1,
            || {},
        );
    }
    let all = SkuFilter::default();
    group.bench_function("list_page_of_50", |b| {
        b.iter(|| black_box(engine.list_skus(&all, Some(b"sku-0050000"), 50, 2)))
    });
    let search = SkuFilter { contains: Some(b"99".to_vec()), ..SkuFilter::default() };
    group.bench_function("search_contains", |b| {
        b.iter(|| black_box(engine.list_skus(&search, None, 50, 2)))
    });
    group.bench_function("summary", |b| b.iter(|| black_box(engine.summary(2))));
    group.bench_function("sample_activity_idle", |b| {
        b.iter(|| engine.sample_activity(2, |_, _, _, _| {}))
    });
    group.finish();
}

criterion_group!(benches, engine, views);
criterion_main!(benches);
