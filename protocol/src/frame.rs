//! The fixed 32-byte frame header and the frame decoder.
//!
//! ```text
//! offset  size  field
//!      0     4  magic          b"STKD"
//!      4     2  version        u16, 1
//!      6     1  opcode         u8
//!      7     1  flags          u8, bit 0 = reply; other bits zero
//!      8     8  request_id     u64, chosen by the client, echoed in the reply
//!     16     4  body_len       u32, bytes following the header
//!     20     4  body_crc32c    u32, CRC32C (Castagnoli) of the body
//!     24     4  reserved       zero
//!     28     4  header_crc32c  u32, CRC32C of bytes 0..28
//! ```
//!
//! The decoder checks a whole frame is buffered before it parses it; an incomplete frame is not
//! an error. Errors that leave the byte stream in sync (bad body checksum, non-zero reserved
//! bits) are recoverable: the frame has been consumed and decoding may continue. Errors in the
//! header itself (magic, version, header checksum, size) are fatal for the connection.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;
use tokio_util::codec::Decoder;

use crate::limits::FRAME_BODY_BYTES_MAX;
use crate::PROTOCOL_VERSION;

/// The four magic bytes that open every frame.
pub const MAGIC: [u8; 4] = *b"STKD";
/// Size of the fixed header.
pub const HEADER_BYTES: usize = 32;
/// Flag bit set on every frame sent by the server.
pub const FLAG_REPLY: u8 = 0x01;
const FLAGS_KNOWN: u8 = FLAG_REPLY;

/// A decoded, checksum-verified header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u16,
    pub opcode: u8,
    pub flags: u8,
    pub request_id: u64,
    pub body_len: u32,
}

/// A frame whose header and body checksums are valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawFrame {
    pub header: Header,
    pub body: Bytes,
}

/// Why a frame was refused.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("bad magic bytes {0:02x?}")]
    BadMagic([u8; 4]),
    #[error("header checksum mismatch")]
    HeaderChecksum,
    #[error("unsupported protocol version {version}")]
    UnsupportedVersion { version: u16, request_id: u64 },
    #[error("frame body of {body_len} bytes exceeds the limit of {limit} bytes")]
    TooLarge { request_id: u64, body_len: u32, limit: u32 },
    #[error("body checksum mismatch")]
    BodyChecksum { request_id: u64 },
    #[error("reserved header bytes or flag bits are not zero")]
    ReservedNotZero { request_id: u64 },
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// Fatal errors leave the stream out of sync: the connection must be closed.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, FrameError::BodyChecksum { .. } | FrameError::ReservedNotZero { .. })
    }

    /// The request id from the header, when the header could be trusted.
    pub fn request_id(&self) -> u64 {
        match self {
            FrameError::UnsupportedVersion { request_id, .. }
            | FrameError::TooLarge { request_id, .. }
            | FrameError::BodyChecksum { request_id }
            | FrameError::ReservedNotZero { request_id } => *request_id,
            _ => 0,
        }
    }

    /// The result code reported to the peer in an `ERROR` frame.
    pub fn code(&self) -> crate::ResultCode {
        use crate::ResultCode;
        match self {
            FrameError::UnsupportedVersion { .. } => ResultCode::UnsupportedVersion,
            FrameError::TooLarge { .. } => ResultCode::TooLarge,
            _ => ResultCode::Malformed,
        }
    }
}

/// Appends one frame to `buf`: the header, then whatever `write_body` writes, then patches the
/// length and both checksums. No intermediate buffer is allocated.
pub fn encode_frame(
    buf: &mut BytesMut,
    opcode: u8,
    flags: u8,
    request_id: u64,
    write_body: impl FnOnce(&mut BytesMut),
) {
    let start = buf.len();
    buf.reserve(HEADER_BYTES);
    buf.put_slice(&MAGIC);
    buf.put_u16_le(PROTOCOL_VERSION);
    buf.put_u8(opcode);
    buf.put_u8(flags);
    buf.put_u64_le(request_id);
    buf.put_bytes(0, 16);
    write_body(buf);
    let body_len = u32::try_from(buf.len() - start - HEADER_BYTES).expect("body fits in u32");
    let body_crc = crc32c::crc32c(&buf[start + HEADER_BYTES..]);
    let header = &mut buf[start..start + HEADER_BYTES];
    header[16..20].copy_from_slice(&body_len.to_le_bytes());
    header[20..24].copy_from_slice(&body_crc.to_le_bytes());
    let header_crc = crc32c::crc32c(&header[..28]);
    header[28..32].copy_from_slice(&header_crc.to_le_bytes());
}

/// Decodes frames from a byte buffer (a `tokio_util` codec, also usable by hand).
#[derive(Clone, Debug)]
pub struct FrameDecoder {
    body_bytes_max: u32,
    /// A header already consumed from the buffer whose body is not fully buffered yet.
    pending: Option<PendingBody>,
}

#[derive(Clone, Copy, Debug)]
struct PendingBody {
    header: Header,
    body_crc: u32,
    /// Reserved bytes or unknown flags were set: skip the body, then report the error.
    reserved_bad: bool,
}

impl FrameDecoder {
    /// A decoder that refuses bodies larger than `body_bytes_max` (capped at the protocol limit).
    pub fn new(body_bytes_max: u32) -> FrameDecoder {
        FrameDecoder { body_bytes_max: body_bytes_max.min(FRAME_BODY_BYTES_MAX), pending: None }
    }

    /// True when part of a frame has been consumed or buffered and more bytes are needed.
    pub fn is_mid_frame(&self, buf: &BytesMut) -> bool {
        self.pending.is_some() || !buf.is_empty()
    }

    fn decode_header(&self, buf: &mut BytesMut) -> Result<Option<PendingBody>, FrameError> {
        if buf.len() < HEADER_BYTES {
            return Ok(None);
        }
        let bytes = &buf[..HEADER_BYTES];
        let magic: [u8; 4] = bytes[0..4].try_into().expect("4 bytes");
        if magic != MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        let header_crc = u32::from_le_bytes(bytes[28..32].try_into().expect("4 bytes"));
        if crc32c::crc32c(&bytes[..28]) != header_crc {
            return Err(FrameError::HeaderChecksum);
        }
        let mut fields = &bytes[4..28];
        let header = Header {
            version: fields.get_u16_le(),
            opcode: fields.get_u8(),
            flags: fields.get_u8(),
            request_id: fields.get_u64_le(),
            body_len: fields.get_u32_le(),
        };
        let body_crc = fields.get_u32_le();
        let reserved = fields.get_u32_le();
        if header.version != PROTOCOL_VERSION {
            return Err(FrameError::UnsupportedVersion {
                version: header.version,
                request_id: header.request_id,
            });
        }
        if header.body_len > self.body_bytes_max {
            return Err(FrameError::TooLarge {
                request_id: header.request_id,
                body_len: header.body_len,
                limit: self.body_bytes_max,
            });
        }
        buf.advance(HEADER_BYTES);
        // The header is intact, so even with reserved bits set the body can be skipped and the
        // stream stays in sync.
        let reserved_bad = reserved != 0 || header.flags & !FLAGS_KNOWN != 0;
        Ok(Some(PendingBody { header, body_crc, reserved_bad }))
    }
}

impl Decoder for FrameDecoder {
    type Item = RawFrame;
    type Error = FrameError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<RawFrame>, FrameError> {
        let pending = match self.pending.take() {
            Some(pending) => pending,
            None => match self.decode_header(buf)? {
                Some(pending) => pending,
                None => return Ok(None),
            },
        };
        let body_len = pending.header.body_len as usize;
        if buf.len() < body_len {
            buf.reserve(body_len - buf.len());
            self.pending = Some(pending);
            return Ok(None);
        }
        let body = buf.split_to(body_len).freeze();
        let request_id = pending.header.request_id;
        if pending.reserved_bad {
            return Err(FrameError::ReservedNotZero { request_id });
        }
        if crc32c::crc32c(&body) != pending.body_crc {
            return Err(FrameError::BodyChecksum { request_id });
        }
        Ok(Some(RawFrame { header: pending.header, body }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, request_id: u64, body: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        encode_frame(&mut buf, opcode, 0, request_id, |b| b.put_slice(body));
        buf
    }

    #[test]
    fn round_trip_byte_by_byte() {
        let encoded = frame(0x10, 7, b"hello");
        let mut decoder = FrameDecoder::new(1024);
        let mut buf = BytesMut::new();
        for (i, byte) in encoded.iter().enumerate() {
            buf.put_u8(*byte);
            let got = decoder.decode(&mut buf).expect("valid frame");
            if i + 1 < encoded.len() {
                assert!(got.is_none(), "frame complete too early at byte {i}");
            } else {
                let got = got.expect("complete frame");
                assert_eq!(got.header.opcode, 0x10);
                assert_eq!(got.header.request_id, 7);
                assert_eq!(&got.body[..], b"hello");
            }
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn bad_magic_and_header_checksum_are_fatal() {
        let mut buf = frame(0x10, 1, b"x");
        buf[0] = b'X';
        let err = FrameDecoder::new(1024).decode(&mut buf).unwrap_err();
        assert!(matches!(err, FrameError::BadMagic(_)) && err.is_fatal());

        let mut buf = frame(0x10, 1, b"x");
        buf[9] ^= 1;
        let err = FrameDecoder::new(1024).decode(&mut buf).unwrap_err();
        assert!(matches!(err, FrameError::HeaderChecksum) && err.is_fatal());
    }

    #[test]
    fn oversized_body_is_refused_before_buffering() {
        let mut buf = frame(0x10, 3, &[0u8; 100]);
        buf.truncate(HEADER_BYTES);
        let err = FrameDecoder::new(99).decode(&mut buf).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { request_id: 3, body_len: 100, limit: 99 }));
        assert!(err.is_fatal());
        let mut buf = frame(0x10, 3, &[0u8; 100]);
        assert!(FrameDecoder::new(100).decode(&mut buf).expect("at the limit").is_some());
    }

    #[test]
    fn bad_body_checksum_is_recoverable() {
        let mut buf = frame(0x10, 5, b"abc");
        let last = buf.len() - 1;
        buf[last] ^= 0xff;
        buf.extend_from_slice(&frame(0x11, 6, b"ok"));
        let mut decoder = FrameDecoder::new(1024);
        let err = decoder.decode(&mut buf).unwrap_err();
        assert!(matches!(err, FrameError::BodyChecksum { request_id: 5 }) && !err.is_fatal());
        let next = decoder.decode(&mut buf).expect("stream in sync").expect("frame");
        assert_eq!(next.header.request_id, 6);
    }

    #[test]
    fn reserved_bytes_must_be_zero() {
        let mut buf = frame(0x10, 9, b"abcdef");
        buf[24] = 1;
        let crc = crc32c::crc32c(&buf[..28]);
        buf[28..32].copy_from_slice(&crc.to_le_bytes());
        buf.extend_from_slice(&frame(0x11, 10, b""));
        let mut decoder = FrameDecoder::new(1024);
        // Deliver the bad frame in two parts to exercise the pending path.
        let mut part = buf.split_to(HEADER_BYTES + 2);
        assert!(decoder.decode(&mut part).expect("header accepted").is_none());
        part.unsplit(buf);
        let mut buf = part;
        let err = decoder.decode(&mut buf).unwrap_err();
        assert!(matches!(err, FrameError::ReservedNotZero { request_id: 9 }));
        let next = decoder.decode(&mut buf).expect("in sync").expect("frame");
        assert_eq!(next.header.request_id, 10);
    }

    #[test]
    fn wrong_version_is_reported_with_request_id() {
        let mut buf = frame(0x10, 11, b"");
        buf[4] = 9;
        let crc = crc32c::crc32c(&buf[..28]);
        buf[28..32].copy_from_slice(&crc.to_le_bytes());
        let err = FrameDecoder::new(1024).decode(&mut buf).unwrap_err();
        assert!(matches!(err, FrameError::UnsupportedVersion { version: 9, request_id: 11 }));
    }
}
