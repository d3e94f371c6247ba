//! WAL records: byte layout, encoding, and a scanner that tells a record from the zeroed end of
//! a segment and from damage.
//!
//! ```text
//! offset  size  field
//!      0     4  payload_len   u32
//!      4     4  crc32c        u32, CRC32C of bytes 8..32+payload_len
//!      8     8  lsn           u64, log sequence number, +1 per record, from 1
//!     16     8  now_ms        u64, the server time the command was applied at
//!     24     1  type          u8, 1 = engine command
//!     25     3  reserved      zero
//!     28     4  synced_gap    u32, see below (record format 2; zero in format 1)
//!     32     n  payload
//!   32+n        zero padding to a multiple of 8 bytes
//! ```
//!
//! `synced_gap` is `lsn - S`, where S is the highest LSN that had been made durable (synced)
//! before this record was written, saturated at `u32::MAX`; 0 means "not known" (format 1,
//! segment version 1). It lets recovery tell a crash from damage: a record is written after
//! everything up to S was durable, so a valid record whose S is at or past a damaged record
//! proves the damaged one had been durable (acknowledged data is corrupt); if no valid record
//! after the damage says so, the damage is a write torn or reordered by the crash (see
//! `recovery`). The writer thread fills in `synced_gap` and the checksum ([`seal`]) when it
//! writes the record, since only it knows S; appending ([`encode_unsealed`]) leaves both zero.
//!
//! The payload of a command record is a one-byte opcode followed by the operation's body in the
//! wire protocol's encoding (`protocol/PROTOCOL.md` section 4), with two internal opcodes:
//! `0x80` EXPIRE and `0x81` FORGET, each followed by the reservation id as `str8`, and `0x82`
//! AFTERSALES: a one-byte version (1) and then the `aftersales::AftersalesCommand` as a JSON
//! object (`{"op":"open"|"move"|"scan", ...}`, the field names of that type; tickets change
//! at human speed, so a self-describing payload costs nothing). Replaying a record is
//! `engine.apply(command, now_ms)`.

use bytes::{BufMut, Bytes, BytesMut};
use stockd_protocol::{Op, Opcode};
use thiserror::Error;

use crate::engine::Command;

pub const RECORD_HEADER_BYTES: usize = 32;
/// Records start at multiples of this, so a scan for valid records after damage checks only
/// aligned offsets.
pub const RECORD_ALIGN: usize = 8;
/// Largest payload: a maximal reserve (64 lines of 64-byte SKUs) is about 5 KiB.
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 64 * 1024;
pub const RECORD_TYPE_COMMAND: u8 = 1;

const OPCODE_EXPIRE: u8 = 0x80;
const OPCODE_FORGET: u8 = 0x81;
const OPCODE_AFTERSALES: u8 = 0x82;
const AFTERSALES_VERSION: u8 = 1;
const _: () = assert!(crate::aftersales::COMMAND_JSON_BYTES_MAX + 2 <= RECORD_PAYLOAD_BYTES_MAX);

/// A decoded record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub lsn: u64,
    pub now_ms: u64,
    pub command: Command,
}

/// What is at an offset of a segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// A valid record, the offset of the next one, and the highest LSN that was durable
    /// before the record was written (`None`: not recorded).
    Record { record: Record, next: usize, synced_lsn: Option<u64> },
    /// Zeros: nothing was written here.
    End,
    /// Not a valid record: a torn write, or damage.
    Invalid(&'static str),
}

/// A record whose checksum is valid but whose content cannot be understood: written by a newer
/// version, or a bug. Never treated as a torn tail.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("record {lsn}: {reason}")]
pub struct RecordError {
    pub lsn: u64,
    pub reason: String,
}

/// Size of a record with this payload length, padding included.
pub fn record_bytes(payload_len: usize) -> usize {
    (RECORD_HEADER_BYTES + payload_len).next_multiple_of(RECORD_ALIGN)
}

fn encode_payload(command: &Command, buf: &mut BytesMut) {
    let put_id = |buf: &mut BytesMut, id: &Bytes| {
        buf.put_u8(u8::try_from(id.len()).expect("ids are at most 64 bytes"));
        buf.put_slice(id);
    };
    let op = match command {
        Command::Expire { id } => {
            buf.put_u8(OPCODE_EXPIRE);
            return put_id(buf, id);
        }
        Command::Forget { id } => {
            buf.put_u8(OPCODE_FORGET);
            return put_id(buf, id);
        }
        Command::Aftersales(command) => {
            buf.put_u8(OPCODE_AFTERSALES);
            buf.put_u8(AFTERSALES_VERSION);
            let json = serde_json::to_vec(command).expect("a command serialises");
            return buf.put_slice(&json);
        }
        // The commands of the request path, written from the command itself: building an
        // operation to encode would clone its ids and lines (an allocation and reference
        // counts per reserve).
        Command::Reserve(reserve) => {
            buf.put_u8(Opcode::Reserve as u8);
            return reserve.encode_body(buf);
        }
        Command::Confirm(confirm) => {
            buf.put_u8(Opcode::Confirm as u8);
            return confirm.encode_body(buf);
        }
        Command::Release { id } => {
            buf.put_u8(Opcode::Release as u8);
            return put_id(buf, id);
        }
        command => command.to_op().expect("every other command is a wire operation"),
    };
    buf.put_u8(op.opcode() as u8);
    op.encode_body(buf);
}

fn decode_payload(payload: &[u8]) -> Result<Command, String> {
    let (&opcode, body) = payload.split_first().ok_or("empty payload")?;
    if opcode == OPCODE_AFTERSALES {
        let (&version, json) = body.split_first().ok_or("truncated after-sales record")?;
        if version != AFTERSALES_VERSION {
            return Err(format!("after-sales record version {version}, this stockd reads 1"));
        }
        let command = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        return Ok(Command::Aftersales(Box::new(command)));
    }
    if opcode == OPCODE_EXPIRE || opcode == OPCODE_FORGET {
        let (&len, id) = body.split_first().ok_or("truncated id")?;
        if id.len() != usize::from(len) || id.is_empty() {
            return Err("bad id length".into());
        }
        let id = Bytes::copy_from_slice(id);
        return Ok(if opcode == OPCODE_EXPIRE {
            Command::Expire { id }
        } else {
            Command::Forget { id }
        });
    }
    let op = Op::decode(opcode, Bytes::copy_from_slice(body)).map_err(|e| e.to_string())?;
    Command::from_op(op).ok_or_else(|| format!("opcode 0x{opcode:02x} is not a command"))
}

/// Appends one record (header, payload, padding) to `buf` without its `synced_gap` and
/// checksum: [`seal`] completes it when it is written.
pub fn encode_unsealed(buf: &mut BytesMut, lsn: u64, now_ms: u64, command: &Command) {
    let start = buf.len();
    buf.put_bytes(0, RECORD_HEADER_BYTES);
    encode_payload(command, buf);
    let payload_len = buf.len() - start - RECORD_HEADER_BYTES;
    assert!(payload_len <= RECORD_PAYLOAD_BYTES_MAX, "protocol limits bound every command");
    buf.put_bytes(0, record_bytes(payload_len) - RECORD_HEADER_BYTES - payload_len);
    let header = &mut buf[start..start + RECORD_HEADER_BYTES];
    header[0..4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    header[8..16].copy_from_slice(&lsn.to_le_bytes());
    header[16..24].copy_from_slice(&now_ms.to_le_bytes());
    header[24] = RECORD_TYPE_COMMAND;
}

/// Completes the unsealed record at the start of `record`: `synced_gap` from `synced_lsn` (the
/// highest LSN durable before this write; `None` writes 0, "not known") and the checksum.
/// Returns the record's LSN and length.
pub fn seal(record: &mut [u8], synced_lsn: Option<u64>) -> (u64, usize) {
    let payload_len = u32_at(record, 0) as usize;
    let lsn = u64_at(record, 8);
    let gap = synced_lsn
        .map_or(0, |synced| u32::try_from(lsn.saturating_sub(synced)).unwrap_or(u32::MAX).max(1));
    record[28..32].copy_from_slice(&gap.to_le_bytes());
    let crc = crc32c::crc32c(&record[8..RECORD_HEADER_BYTES + payload_len]);
    record[4..8].copy_from_slice(&crc.to_le_bytes());
    (lsn, record_bytes(payload_len))
}

/// Appends one whole, sealed record with `synced_gap` 0 ("not known"): for tools and tests
/// that write logs without a writer.
pub fn encode_record(buf: &mut BytesMut, lsn: u64, now_ms: u64, command: &Command) {
    let start = buf.len();
    encode_unsealed(buf, lsn, now_ms, command);
    seal(&mut buf[start..], None);
}

fn u32_at(data: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(data: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(data[at..at + 8].try_into().expect("8 bytes"))
}

/// Reads the record at `offset` of `data` (a segment's bytes).
pub fn scan(data: &[u8], offset: usize) -> Result<Scan, RecordError> {
    let rest = &data[offset.min(data.len())..];
    if rest.len() < RECORD_HEADER_BYTES {
        return Ok(if rest.iter().all(|b| *b == 0) { Scan::End } else { Scan::Invalid("short") });
    }
    let header = &rest[..RECORD_HEADER_BYTES];
    if header.iter().all(|b| *b == 0) {
        return Ok(Scan::End);
    }
    let payload_len = u32_at(header, 0) as usize;
    if payload_len == 0 || payload_len > RECORD_PAYLOAD_BYTES_MAX {
        return Ok(Scan::Invalid("bad length"));
    }
    let total = record_bytes(payload_len);
    if total > rest.len() {
        return Ok(Scan::Invalid("runs past the segment"));
    }
    let crc = u32_at(header, 4);
    if crc32c::crc32c(&rest[8..RECORD_HEADER_BYTES + payload_len]) != crc {
        return Ok(Scan::Invalid("checksum mismatch"));
    }
    let lsn = u64_at(header, 8);
    let now_ms = u64_at(header, 16);
    let fail = |reason: String| RecordError { lsn, reason };
    if header[24] != RECORD_TYPE_COMMAND {
        return Err(fail(format!("unknown record type {}", header[24])));
    }
    if header[25..28].iter().any(|b| *b != 0)
        || rest[RECORD_HEADER_BYTES + payload_len..total].iter().any(|b| *b != 0)
    {
        return Err(fail("reserved bytes not zero".into()));
    }
    let command = decode_payload(&rest[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + payload_len])
        .map_err(fail)?;
    let synced_lsn = match u32_at(header, 28) {
        0 => None,
        gap => Some(lsn.saturating_sub(u64::from(gap))),
    };
    Ok(Scan::Record { record: Record { lsn, now_ms, command }, next: offset + total, synced_lsn })
}

#[cfg(test)]
mod tests {
    use super::*;
    use stockd_protocol::{Confirm, Line, Reserve, ReserveAt};

    fn commands() -> Vec<Command> {
        vec![
            Command::Reserve(Reserve {
                id: "order-1".into(),
                ttl_ms: 5,
                channel: "web".into(),
                customer: "c".into(),
                lines: vec![Line::new("a", 1), Line::new("b", 2)],
            }),
            Command::Confirm(Confirm { id: "order-1".into(), lines: vec![Line::new("a", 1)] }),
            Command::Release { id: "r".into() },
            Command::Extend { id: "r".into(), ttl_ms: 9 },
            Command::Ship { id: "r".into() },
            Command::SetStock { sku: "a".into(), on_hand: 3, expected: Some(2) },
            Command::AdjustStock { sku: "a".into(), delta: -3, expected: None },
            Command::SetSafetyStock { sku: "a".into(), safety_stock: 1 },
            Command::ReserveAt(ReserveAt {
                reserve: Reserve {
                    id: "order-2".into(),
                    ttl_ms: 0,
                    channel: "".into(),
                    customer: "".into(),
                    lines: vec![Line::new("a", 2)],
                },
                location: "east".into(),
                split: true,
            }),
            Command::SetLocation {
                sku: "a".into(),
                location: "east".into(),
                on_hand: 4,
                priority: 2,
                expected: Some(1),
            },
            Command::AdjustLocation {
                sku: "a".into(),
                location: "east".into(),
                delta: -1,
                expected: None,
            },
            Command::SetIncoming {
                sku: "a".into(),
                location: "east".into(),
                reference: "po-1".into(),
                qty: 10,
                eta_ms: 77,
            },
            Command::ReceiveIncoming {
                sku: "a".into(),
                location: "east".into(),
                reference: "po-1".into(),
                qty: 3,
            },
            Command::SetPreorder { sku: "a".into(), preorder_max: 5 },
            Command::DeleteSku { sku: "a".into() },
            Command::Expire { id: "r".into() },
            Command::Forget { id: "r".into() },
        ]
    }

    /// The commands written without building an operation are written as the operation would
    /// be: the log's format (the wire body after the opcode) does not depend on the path.
    #[test]
    fn commands_encode_as_their_operations() {
        for command in commands() {
            let mut direct = BytesMut::new();
            encode_payload(&command, &mut direct);
            if let Some(op) = command.to_op() {
                let mut via_op = BytesMut::new();
                via_op.put_u8(op.opcode() as u8);
                op.encode_body(&mut via_op);
                assert_eq!(direct, via_op, "{command:?}");
            }
        }
    }

    #[test]
    fn every_command_round_trips() {
        let mut buf = BytesMut::new();
        for (i, command) in commands().iter().enumerate() {
            encode_record(&mut buf, i as u64 + 1, 1_000 + i as u64, command);
        }
        buf.put_bytes(0, 64);
        let mut offset = 0;
        for (i, command) in commands().into_iter().enumerate() {
            assert_eq!(offset % RECORD_ALIGN, 0);
            let Scan::Record { record, next, .. } = scan(&buf, offset).expect("valid") else {
                panic!("record {i} expected")
            };
            assert_eq!(record, Record { lsn: i as u64 + 1, now_ms: 1_000 + i as u64, command });
            offset = next;
        }
        assert_eq!(scan(&buf, offset), Ok(Scan::End));
    }

    #[test]
    fn a_torn_prefix_never_reads_as_a_different_record() {
        let mut record = BytesMut::new();
        encode_record(&mut record, 7, 7, &commands()[0]);
        let full = match scan(&record, 0) {
            Ok(Scan::Record { record, .. }) => record,
            other => panic!("whole record: {other:?}"),
        };
        let mut accepted = 0;
        for cut in 0..record.len() {
            let mut segment = record[..cut].to_vec();
            segment.resize(record.len() + 64, 0);
            match scan(&segment, 0).expect("no checksum-valid garbage") {
                // A cut through trailing zero bytes (padding, or the high bytes of the last
                // little-endian field) leaves the very same bytes: the same record.
                Scan::Record { record, .. } => {
                    assert_eq!(record, full, "cut at {cut}");
                    accepted += 1;
                }
                Scan::End => assert_eq!(cut, 0, "only an empty prefix reads as the end"),
                Scan::Invalid(_) => {}
            }
        }
        let trailing_zeros = record.iter().rev().take_while(|b| **b == 0).count();
        assert_eq!(accepted, trailing_zeros, "exactly the cuts within trailing zeros are accepted");
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let mut record = BytesMut::new();
        encode_record(&mut record, 7, 7, &commands()[1]);
        let payload_end = RECORD_HEADER_BYTES + u32_at(&record, 0) as usize;
        for bit in 0..payload_end * 8 {
            let mut damaged = record.to_vec();
            damaged[bit / 8] ^= 1 << (bit % 8);
            damaged.resize(record.len() + 64, 0);
            assert!(
                !matches!(scan(&damaged, 0), Ok(Scan::Record { .. })),
                "flipped bit {bit} not detected"
            );
        }
    }

    #[test]
    fn sealing_records_when_earlier_records_were_durable() {
        let synced_of = |synced: Option<u64>| {
            let mut buf = BytesMut::new();
            encode_unsealed(&mut buf, 1_000, 5, &commands()[0]);
            let (lsn, len) = seal(&mut buf, synced);
            assert_eq!((lsn, len), (1_000, buf.len()));
            match scan(&buf, 0).expect("valid") {
                Scan::Record { synced_lsn, .. } => synced_lsn,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(synced_of(None), None, "0 = not known (format 1)");
        assert_eq!(synced_of(Some(998)), Some(998));
        assert_eq!(synced_of(Some(0)), Some(0), "nothing durable yet");
        // Never claims the record itself durable; a huge gap saturates low (safe side).
        assert_eq!(synced_of(Some(1_000)), Some(999));
        let mut buf = BytesMut::new();
        encode_unsealed(&mut buf, u64::from(u32::MAX) + 10, 5, &commands()[0]);
        seal(&mut buf, Some(1));
        let Ok(Scan::Record { synced_lsn, .. }) = scan(&buf, 0) else { panic!("valid") };
        assert_eq!(synced_lsn, Some(10));
        // Unsealed bytes are not a valid record.
        let mut buf = BytesMut::new();
        encode_unsealed(&mut buf, 1, 5, &commands()[0]);
        assert_eq!(scan(&buf, 0), Ok(Scan::Invalid("checksum mismatch")));
    }
}
