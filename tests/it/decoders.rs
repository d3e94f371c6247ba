//! Every decoder of untrusted bytes, fed random and mutated input: it must return a value or a
//! clear error, never panic, never loop, never allocate beyond its limits. (Coverage-guided
//! fuzzing belongs in a cargo-fuzz crate; these run in every CI run.)

use crate::common;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use common::crc32c_reference;
use proptest::prelude::*;
use stockd::config::Config;
use stockd::engine::{Command, Engine, EngineConfig};
use stockd::snapshot;
use stockd::wal::record::{encode_record, scan};
use stockd::wal::segment::{segment_name, SegmentHeader};
use stockd::wal::{recover, MemStorage, RecoverOptions};
use stockd_protocol::frame::Header;
use stockd_protocol::{FrameDecoder, Line, Op, Reply, Request, Reserve};
use tokio_util::codec::Decoder;

fn valid_frames() -> BytesMut {
    let mut buf = BytesMut::new();
    let reserve = Reserve {
        id: "order-1".into(),
        ttl_ms: 5,
        channel: "c".into(),
        customer: "".into(),
        lines: vec![Line::new("a", 1), Line::new("b", 2)],
    };
    Request::Op(Op::Reserve(reserve.clone())).encode(1, &mut buf);
    Request::Batch(vec![Op::Reserve(reserve), Op::Ping, Op::QuerySku { sku: "a".into() }])
        .encode(2, &mut buf);
    buf
}

/// Feeds bytes to the frame decoder in pieces, decoding every frame body as a request and as a
/// reply; only errors are allowed, and a fatal error ends the stream as the server would.
fn decode_stream(bytes: &[u8], piece: usize) {
    let mut decoder = FrameDecoder::new(64 * 1024);
    let mut buf = BytesMut::new();
    for chunk in bytes.chunks(piece.max(1)) {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    let _ = Request::decode(frame.header.opcode, frame.body.clone());
                    let reply_header = Header { flags: 1, ..frame.header };
                    let _ = Reply::decode(&reply_header, frame.body);
                }
                Ok(None) => break,
                Err(e) if e.is_fatal() => return,
                Err(_) => {}
            }
        }
    }
}

fn mutate(mut bytes: Vec<u8>, flips: &[(usize, u8)]) -> Vec<u8> {
    for (at, value) in flips {
        if !bytes.is_empty() {
            let at = at % bytes.len();
            bytes[at] ^= value | 1;
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("STOCKD_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000),
        ..ProptestConfig::default()
    })]

    #[test]
    fn frames_from_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512), piece in 1usize..64) {
        decode_stream(&bytes, piece);
    }

    #[test]
    fn frames_from_mutated_valid_bytes(flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..6), piece in 1usize..64) {
        decode_stream(&mutate(valid_frames().to_vec(), &flips), piece);
    }

    #[test]
    fn bodies_from_random_bytes(opcode in any::<u8>(), body in prop::collection::vec(any::<u8>(), 0..256)) {
        // Directly, past the frame checksums.
        let body = Bytes::from(body);
        let _ = Request::decode(opcode, body.clone());
        let header = Header { version: 1, opcode, flags: 1, request_id: 0, body_len: 0 };
        let _ = Reply::decode(&header, body);
    }

    #[test]
    fn wal_records_from_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512), offset in 0usize..600) {
        let _ = scan(&bytes, offset);
    }

    #[test]
    fn recovery_from_a_damaged_segment(flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4)) {
        let storage = MemStorage::new();
        let mut segment = SegmentHeader { index: 1, first_lsn: 1 }.encode().to_vec();
        let mut records = BytesMut::new();
        let set = Command::SetStock { sku: "a".into(), on_hand: 5, expected: None };
        encode_record(&mut records, 1, 10, &set);
        encode_record(&mut records, 2, 11, &Command::SetSafetyStock { sku: "a".into(), safety_stock: 1 });
        segment.extend_from_slice(&records);
        segment.resize(4096, 0);
        storage.put(&segment_name(1), mutate(segment, &flips));
        // Any outcome but a panic: recovered, truncated, or refused with a message.
        match recover(&storage, &EngineConfig::default(), RecoverOptions::default()) {
            Ok(recovered) => prop_assert!(recovered.last_lsn <= 2),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn snapshots_from_mutated_bytes(flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4)) {
        let storage = MemStorage::new();
        let engine = Engine::new(EngineConfig::default());
        engine.apply(&Command::SetStock { sku: "a".into(), on_hand: 5, expected: None }, 1, || {});
        let name = snapshot::write(&storage, 1, 1, &engine.image()).expect("write");
        let bytes = storage.with_file(&name, |b| b.clone()).expect("file");
        let mutated = mutate(bytes.clone(), &flips);
        let changed = mutated != bytes; // two flips of one byte may cancel out
        storage.put(&name, mutated);
        // Checksums catch any damage; nothing panics.
        let loaded = snapshot::load(&storage, &name, EngineConfig::default());
        prop_assert_eq!(loaded.is_err(), changed);
    }

    #[test]
    fn config_from_random_text(text in "[\\[\\]a-z_=\"0-9\\. \\n]{0,200}") {
        let _ = Config::from_toml(&text, "fuzz");
    }
}

#[test]
fn an_archive_that_passes_the_checksums_but_lies_is_refused() {
    // Valid checksums over a body that is not a valid archive: bytecheck refuses it.
    let storage = Arc::new(MemStorage::new());
    let engine = Engine::new(EngineConfig::default());
    engine.apply(&Command::SetStock { sku: "a".into(), on_hand: 5, expected: None }, 1, || {});
    let name = snapshot::write(&*storage, 1, 1, &engine.image()).expect("write");
    let mut bytes = storage.with_file(&name, |b| b.clone()).expect("file");
    let body = snapshot::SNAPSHOT_HEADER_BYTES;
    for byte in &mut bytes[body..] {
        *byte = 0xff;
    }
    let crc = crc32c_reference(&bytes[body..]);
    bytes[40..44].copy_from_slice(&crc.to_le_bytes());
    let header_crc = crc32c_reference(&bytes[..60]);
    bytes[60..64].copy_from_slice(&header_crc.to_le_bytes());
    storage.put(&name, bytes);
    let err = snapshot::load(&*storage, &name, EngineConfig::default()).err().expect("refused");
    assert!(err.contains("invalid archive") || err.contains("inconsistent"), "{err}");
}
