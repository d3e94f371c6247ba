//! The wire codec: encode and decode a single reserve frame and a batch of 1000.
//! Run: `cargo bench -p stockd-bench --bench codec`.

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use stockd_protocol::{FrameDecoder, Line, Op, Request, Reserve};
use tokio_util::codec::Decoder;

fn reserve_op(i: u64) -> Op {
    Op::Reserve(Reserve {
        id: format!("order-{i:010}").into(),
        ttl_ms: 600_000,
        channel: Bytes::from_static(b"live"),
        customer: format!("buyer-{i}").into(),
        lines: vec![Line::new(format!("sku-{:06}", i % 1000), 1)],
    })
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    for (name, request) in [
        ("single_reserve", Request::Op(reserve_op(7))),
        ("batch_1000_reserves", Request::Batch((0..1000).map(reserve_op).collect())),
    ] {
        let ops = match &request {
            Request::Batch(ops) => ops.len() as u64,
            _ => 1,
        };
        group.throughput(Throughput::Elements(ops));
        let mut buf = BytesMut::with_capacity(256 * 1024);
        group.bench_function(format!("encode_{name}"), |b| {
            b.iter(|| {
                buf.clear();
                request.encode(1, &mut buf);
                black_box(buf.len())
            })
        });
        let mut encoded = BytesMut::new();
        request.encode(1, &mut encoded);
        let mut decoder = FrameDecoder::new(u32::MAX);
        group.bench_function(format!("decode_{name}"), |b| {
            b.iter(|| {
                let mut input = encoded.clone();
                let frame = decoder.decode(&mut input).expect("valid").expect("complete");
                black_box(Request::decode(frame.header.opcode, frame.body).expect("decodes"))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
