//! Segment files: names, the 64-byte segment header, and preparation of zeroed segments.
//!
//! A segment is a pre-allocated, zero-filled file of `segment_bytes`. Records are appended
//! after the header with positional writes; the zeros after the last record mark the end.
//!
//! ```text
//! offset  size  field
//!      0     8  magic       b"STKDWAL\0"
//!      8     4  version     u32, 2 (1 is still read)
//!     12     4  reserved    zero
//!     16     8  index       u64, 1 for the first segment, +1 for each next one
//!     24     8  first_lsn   u64, LSN of the first record in the segment
//!     32    28  reserved    zero
//!     60     4  crc32c      u32, CRC32C of bytes 0..60
//! ```
//!
//! Version 2 segments hold records of record format 2 (with `synced_gap`). A version 1 segment
//! that a newer stockd continues after an upgrade holds both formats; they read the same, and
//! an older stockd refuses the newer records ("reserved bytes not zero") rather than misread.
//!
//! File names: `wal-<index, 20 digits>.seg` for segments in use, `wal-spare-<n>.tmp` for a
//! prepared segment waiting to be used, `wal-recycle-<index>.tmp` for old segments waiting to
//! be zeroed and reused. `.tmp` files carry no log data: recovery ignores them.

pub const SEGMENT_MAGIC: [u8; 8] = *b"STKDWAL\0";
/// Version 2: records carry `synced_gap` (record format 2, see `record`). Version 1 segments
/// (records with `synced_gap` 0) are still read.
pub const SEGMENT_VERSION: u32 = 2;
pub const SEGMENT_HEADER_BYTES: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub index: u64,
    pub first_lsn: u64,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut bytes = [0u8; SEGMENT_HEADER_BYTES];
        bytes[0..8].copy_from_slice(&SEGMENT_MAGIC);
        bytes[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.index.to_le_bytes());
        bytes[24..32].copy_from_slice(&self.first_lsn.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[..60]);
        bytes[60..64].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// Decodes a header; the error says what is wrong with it.
    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, String> {
        if bytes.len() < SEGMENT_HEADER_BYTES {
            return Err("shorter than a segment header".into());
        }
        let crc = u32::from_le_bytes(bytes[60..64].try_into().expect("4 bytes"));
        if crc32c::crc32c(&bytes[..60]) != crc {
            return Err("segment header checksum mismatch".into());
        }
        if bytes[0..8] != SEGMENT_MAGIC {
            return Err("not a stockd WAL segment".into());
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if !(1..=SEGMENT_VERSION).contains(&version) {
            return Err(format!(
                "segment format version {version}, this stockd reads {SEGMENT_VERSION}"
            ));
        }
        Ok(SegmentHeader {
            index: u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes")),
            first_lsn: u64::from_le_bytes(bytes[24..32].try_into().expect("8 bytes")),
        })
    }
}

pub fn segment_name(index: u64) -> String {
    format!("wal-{index:020}.seg")
}

/// The index of a segment file name, `None` for other files.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_prefix("wal-")?.strip_suffix(".seg")?.parse().ok()
}

pub fn spare_name(serial: u64) -> String {
    format!("wal-spare-{serial:020}.tmp")
}

pub fn is_spare(name: &str) -> bool {
    parse_spare_name(name).is_some()
}

/// The serial of a spare segment file name.
pub fn parse_spare_name(name: &str) -> Option<u64> {
    name.strip_prefix("wal-spare-")?.strip_suffix(".tmp")?.parse().ok()
}

pub fn recycle_name(index: u64) -> String {
    format!("wal-recycle-{index:020}.tmp")
}

pub fn is_recycled(name: &str) -> bool {
    name.starts_with("wal-recycle-") && name.ends_with(".tmp")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_detects_damage() {
        let header = SegmentHeader { index: 7, first_lsn: 1234 };
        let bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
        for bit in 0..SEGMENT_HEADER_BYTES * 8 {
            let mut damaged = bytes;
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(SegmentHeader::decode(&damaged).is_err(), "bit {bit}");
        }
        assert!(SegmentHeader::decode(&[0u8; SEGMENT_HEADER_BYTES]).is_err());
    }

    #[test]
    fn names_sort_by_index() {
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert!(segment_name(9) < segment_name(10));
        assert_eq!(parse_segment_name(&spare_name(1)), None);
        assert!(is_spare(&spare_name(1)) && !is_spare(&recycle_name(1)));
        assert_eq!(parse_spare_name(&spare_name(77)), Some(77));
        assert!(is_recycled(&recycle_name(3)));
    }
}
