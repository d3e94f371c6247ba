//! The stockd wire protocol: frame header, message codec and async clients (pipelined
//! [`Client`], one-request-at-a-time [`SerialClient`]).
//!
//! `PROTOCOL.md` next to this crate is the normative specification; this crate is its reference
//! implementation and the golden vectors in `vectors/` are checked against it by tests. Everything
//! on the wire is little-endian and every size is bounded by a limit in [`limits`].

pub mod client;
pub mod code;
pub mod frame;
pub mod limits;
pub mod message;
pub mod serial;
#[cfg(feature = "tls")]
pub mod tls;

pub use client::{Client, ClientError, ClientOptions, Pool};
pub use code::ResultCode;
pub use frame::{
    encode_frame, FrameDecoder, FrameError, Header, RawFrame, FLAG_REPLY, HEADER_BYTES, MAGIC,
};
pub use message::{
    Allocation, ChannelQuota, ChannelUse, Confirm, DecodeError, ErrorReply, ExtendReply, Hello,
    HelloReply, IncomingInfo, LimitsReply, Line, LocationInfo, LocationsReply, Op, OpReply, Opcode,
    QuotaLimit, Reply, Request, ReservationInfo, ReservationLine, ReservationReply,
    ReservationState, Reserve, ReserveAt, ReserveAtReply, ReserveReply, SkuInfo, SkuLimits,
    SkuReply,
};
pub use serial::SerialClient;

/// The protocol version this crate speaks. A server negotiates the highest version both sides
/// support in the `HELLO` exchange; version 1 is the only one so far.
pub const PROTOCOL_VERSION: u16 = 1;
