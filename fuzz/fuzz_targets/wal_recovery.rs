//! The WAL record scanner and the whole recovery (segments, torn tails, corruption detection,
//! replay into the engine) over an in-memory directory.
//!
//! Input: byte 0 picks the shape. Even: the rest is the body of segment 1 after a valid header
//! (raw bytes). Odd: a valid log of a few records, then the rest of the input as (offset, xor)
//! pairs damaging it. Checks: no panic; the scanner never reads past the data; a recovery that
//! succeeds leaves a log that recovers again to exactly the same state with nothing left to
//! truncate (cutting a torn tail is complete and idempotent).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use stockd::engine::{Command, EngineConfig};
use stockd::wal::record::{encode_record, scan, RECORD_ALIGN};
use stockd::wal::segment::{segment_name, SegmentHeader, SEGMENT_HEADER_BYTES};
use stockd::wal::{recover, MemStorage, RecoverOptions};
use stockd_protocol::{Line, Reserve};

const SEGMENT_BYTES: usize = 8192;

fn valid_log() -> Vec<u8> {
    let mut records = BytesMut::new();
    let commands = [
        Command::SetStock { sku: "a".into(), on_hand: 5, expected: None },
        Command::SetSafetyStock { sku: "a".into(), safety_stock: 1 },
        Command::Reserve(Reserve {
            id: "r1".into(),
            ttl_ms: 100,
            channel: "web".into(),
            customer: "c".into(),
            lines: vec![Line::new("a", 2)],
        }),
        Command::Release { id: "r1".into() },
    ];
    for (i, command) in commands.iter().enumerate() {
        encode_record(&mut records, i as u64 + 1, 1_000 + i as u64, command);
    }
    records.to_vec()
}

fuzz_target!(|data: &[u8]| {
    let Some((&shape, rest)) = data.split_first() else { return };
    let mut segment = SegmentHeader { index: 1, first_lsn: 1 }.encode().to_vec();
    if shape % 2 == 0 {
        segment.extend_from_slice(rest);
    } else {
        segment.extend_from_slice(&valid_log());
        segment.resize(SEGMENT_BYTES, 0);
        for pair in rest.chunks_exact(3) {
            let at = u16::from_le_bytes([pair[0], pair[1]]) as usize % SEGMENT_BYTES;
            segment[at] ^= pair[2];
        }
    }
    segment.resize(segment.len().max(SEGMENT_BYTES), 0);
    for offset in (SEGMENT_HEADER_BYTES..segment.len()).step_by(RECORD_ALIGN) {
        let _ = scan(&segment, offset);
    }
    let storage = MemStorage::new();
    storage.put(&segment_name(1), segment);
    let config = EngineConfig::default();
    let Ok(first) = recover(&storage, &config, RecoverOptions::default()) else { return };
    let again = recover(&storage, &config, RecoverOptions::default())
        .expect("a log that recovered once recovers again");
    assert_eq!(again.last_lsn, first.last_lsn);
    assert!(again.truncated.is_none(), "truncation left something behind: {:?}", again.truncated);
    assert!(again.engine.image() == first.engine.image(), "the second recovery differs");
});
