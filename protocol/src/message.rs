//! Message bodies: every request and reply, their encoding and their strict decoding.
//!
//! Body layouts are specified in `PROTOCOL.md`. Strings are a `u8` length followed by that many
//! bytes. Decoding checks every length against [`crate::limits`] before it allocates, rejects
//! trailing bytes, and never recurses (batches cannot nest).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::code::ResultCode;
use crate::frame::{encode_frame, Header, FLAG_REPLY};
use crate::limits::{
    API_KEY_BYTES_MAX, BATCH_OPS_MAX, ERROR_MESSAGE_BYTES_MAX, ID_BYTES_MAX, INCOMING_PER_SKU_MAX,
    LINES_PER_RESERVATION_MAX, LOCATIONS_PER_SKU_MAX, LOCATION_BYTES_MAX, QUOTAS_PER_SKU_MAX,
    REFERENCE_BYTES_MAX, RESERVE_AT_LINES_PER_BATCH_MAX, SKU_BYTES_MAX, SPLIT_LOCATIONS_MAX,
    TAG_BYTES_MAX,
};

/// Frame opcodes. Requests and their replies share the opcode; replies set the reply flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    Hello = 0x01,
    Ping = 0x02,
    Reserve = 0x10,
    Confirm = 0x11,
    Release = 0x12,
    Extend = 0x13,
    Ship = 0x14,
    ReserveAt = 0x15,
    SetStock = 0x20,
    AdjustStock = 0x21,
    SetSafetyStock = 0x22,
    SetLimits = 0x23,
    SetLocation = 0x24,
    AdjustLocation = 0x25,
    SetIncoming = 0x26,
    ReceiveIncoming = 0x27,
    SetPreorder = 0x28,
    DeleteSku = 0x29,
    QuerySku = 0x30,
    QueryReservation = 0x31,
    QueryLimits = 0x32,
    QueryLocations = 0x33,
    Batch = 0x40,
    Error = 0x7f,
}

impl Opcode {
    /// Decodes a wire value; unknown values are `None`.
    pub fn from_u8(value: u8) -> Option<Opcode> {
        Some(match value {
            0x01 => Opcode::Hello,
            0x02 => Opcode::Ping,
            0x10 => Opcode::Reserve,
            0x11 => Opcode::Confirm,
            0x12 => Opcode::Release,
            0x13 => Opcode::Extend,
            0x14 => Opcode::Ship,
            0x15 => Opcode::ReserveAt,
            0x20 => Opcode::SetStock,
            0x21 => Opcode::AdjustStock,
            0x22 => Opcode::SetSafetyStock,
            0x23 => Opcode::SetLimits,
            0x24 => Opcode::SetLocation,
            0x25 => Opcode::AdjustLocation,
            0x26 => Opcode::SetIncoming,
            0x27 => Opcode::ReceiveIncoming,
            0x28 => Opcode::SetPreorder,
            0x29 => Opcode::DeleteSku,
            0x30 => Opcode::QuerySku,
            0x31 => Opcode::QueryReservation,
            0x32 => Opcode::QueryLimits,
            0x33 => Opcode::QueryLocations,
            0x40 => Opcode::Batch,
            0x7f => Opcode::Error,
            _ => return None,
        })
    }

    /// True for operations that never change state (their replies are reads too).
    pub fn is_read_only(self) -> bool {
        matches!(
            self,
            Opcode::Ping
                | Opcode::QuerySku
                | Opcode::QueryReservation
                | Opcode::QueryLimits
                | Opcode::QueryLocations
        )
    }

    /// The snake_case name used in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Opcode::Hello => "hello",
            Opcode::Ping => "ping",
            Opcode::Reserve => "reserve",
            Opcode::Confirm => "confirm",
            Opcode::Release => "release",
            Opcode::Extend => "extend",
            Opcode::Ship => "ship",
            Opcode::ReserveAt => "reserve_at",
            Opcode::SetStock => "set_stock",
            Opcode::AdjustStock => "adjust_stock",
            Opcode::SetSafetyStock => "set_safety_stock",
            Opcode::SetLimits => "set_limits",
            Opcode::SetLocation => "set_location",
            Opcode::AdjustLocation => "adjust_location",
            Opcode::SetIncoming => "set_incoming",
            Opcode::ReceiveIncoming => "receive_incoming",
            Opcode::SetPreorder => "set_preorder",
            Opcode::DeleteSku => "delete_sku",
            Opcode::QuerySku => "query_sku",
            Opcode::QueryReservation => "query_reservation",
            Opcode::QueryLimits => "query_limits",
            Opcode::QueryLocations => "query_locations",
            Opcode::Batch => "batch",
            Opcode::Error => "error",
        }
    }
}

/// Why a body could not be decoded; `code` is what the peer is told.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{code}: {message}")]
pub struct DecodeError {
    pub code: ResultCode,
    pub message: String,
}

impl DecodeError {
    fn malformed(message: impl Into<String>) -> DecodeError {
        DecodeError { code: ResultCode::Malformed, message: message.into() }
    }
    fn too_large(message: impl Into<String>) -> DecodeError {
        DecodeError { code: ResultCode::TooLarge, message: message.into() }
    }
}

/// One line of a reservation: a SKU and a quantity.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Line {
    pub sku: Bytes,
    pub qty: u32,
}

impl Line {
    pub fn new(sku: impl Into<Bytes>, qty: u32) -> Line {
        Line { sku: sku.into(), qty }
    }
}

/// `RESERVE`: hold stock for every line, or for none.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reserve {
    /// Client-chosen reservation id, the idempotency key (1..=64 bytes).
    pub id: Bytes,
    /// Hold duration; 0 means the server's default.
    pub ttl_ms: u32,
    /// Sales channel, empty for none.
    pub channel: Bytes,
    /// Customer id, empty for none.
    pub customer: Bytes,
    pub lines: Vec<Line>,
}

/// `RESERVE_AT`: a reserve that names or lets the server choose the locations stock is taken
/// from, and whose reply lists them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ReserveAt {
    pub reserve: Reserve,
    /// Take every line from this location; empty lets the server choose per line.
    pub location: Bytes,
    /// When the server chooses: a line that no single location can serve may be split across
    /// up to `SPLIT_LOCATIONS_MAX` locations.
    pub split: bool,
}

/// `CONFIRM`: turn a hold into a sale, fully (no lines) or partially (lines with smaller
/// quantities; what is not confirmed goes back to stock).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Confirm {
    pub id: Bytes,
    pub lines: Vec<Line>,
}

/// `HELLO`: the first frame on every connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub min_version: u16,
    pub max_version: u16,
    pub api_key: Bytes,
    pub client_name: Bytes,
}

/// How much of a SKU one sales channel may hold and sell at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuotaLimit {
    /// A fixed number of units.
    Units(u64),
    /// A share of the sellable stock (`on_hand` plus the preorder room, minus `safety_stock`), in basis points (0..=10 000).
    BasisPoints(u16),
}

impl QuotaLimit {
    /// A share given in percent (0 to 100, to a hundredth); `None` outside that range.
    pub fn from_percent(percent: f64) -> Option<QuotaLimit> {
        (0.0..=100.0)
            .contains(&percent)
            .then(|| QuotaLimit::BasisPoints((percent * 100.0).round() as u16))
    }

    /// The share in percent, for a share; `None` for units.
    pub fn percent(self) -> Option<f64> {
        match self {
            QuotaLimit::BasisPoints(basis) => Some(f64::from(basis) / 100.0),
            QuotaLimit::Units(_) => None,
        }
    }
}

/// `500` for units, `40%` for a share: the form `ChannelQuota` parses.
impl std::fmt::Display for QuotaLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self, self.percent()) {
            (_, Some(percent)) => write!(f, "{percent}%"),
            (QuotaLimit::Units(units), None) => write!(f, "{units}"),
            (QuotaLimit::BasisPoints(basis), None) => write!(f, "{basis} basis points"),
        }
    }
}

/// One channel's quota on a SKU.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChannelQuota {
    pub channel: Bytes,
    pub limit: QuotaLimit,
}

impl std::str::FromStr for ChannelQuota {
    type Err = String;

    /// `live=40%` (a share of the sellable stock, to a hundredth of a percent) or `app=500`
    /// (units), as the CLI and the load test take them.
    fn from_str(text: &str) -> Result<ChannelQuota, String> {
        let (channel, value) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?} is not CHANNEL=UNITS or CHANNEL=PERCENT%"))?;
        if channel.is_empty() {
            return Err("the channel is empty".into());
        }
        let limit = match value.strip_suffix('%') {
            Some(percent) => {
                let percent: f64 =
                    percent.parse().map_err(|_| format!("{percent:?} is not a percentage"))?;
                QuotaLimit::from_percent(percent)
                    .ok_or_else(|| format!("{percent}% is not within 0..=100%"))?
            }
            None => {
                QuotaLimit::Units(value.parse().map_err(|_| format!("{value:?} is not a count"))?)
            }
        };
        Ok(ChannelQuota { channel: Bytes::copy_from_slice(channel.as_bytes()), limit })
    }
}

/// The flash-sale limits of a SKU. The default (all zero, no quotas) means no limits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SkuLimits {
    /// Most units one customer may hold and have bought at once; 0 = no limit.
    pub max_per_buyer: u32,
    /// Whether channels with a quota may also take from the stock no quota allocates, once
    /// their own quota is used up.
    pub shared_pool: bool,
    /// Channel quotas, at most 16, each channel once.
    pub quotas: Vec<ChannelQuota>,
}

/// One channel's allocation and use, as reported by `QUERY_LIMITS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelUse {
    pub channel: Bytes,
    /// Units the quota allocates now.
    pub allocation: u64,
    /// Units the channel holds and has committed now.
    pub used: u64,
}

/// Reply to `QUERY_LIMITS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitsReply {
    pub code: ResultCode,
    pub limits: SkuLimits,
    /// Per quota, in the order of `limits.quotas`.
    pub channels: Vec<ChannelUse>,
    /// Units no quota allocates (the pool other channels sell from).
    pub pool: u64,
    /// Units taken from the pool.
    pub pool_used: u64,
}

impl LimitsReply {
    /// A reply with this code and nothing else (unknown SKU, refusals).
    pub fn refused(code: ResultCode) -> LimitsReply {
        LimitsReply {
            code,
            limits: SkuLimits::default(),
            channels: Vec::new(),
            pool: 0,
            pool_used: 0,
        }
    }
}

/// Units of one reservation line taken from one location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    /// Index in the request of the line (the SKU's first line when a SKU appears twice).
    pub line: u16,
    pub location: Bytes,
    pub qty: u32,
}

/// Reply to `RESERVE_AT`: the `RESERVE` reply and, when it is `ok`, where each line was taken
/// from (lines of SKUs without locations have no allocation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReserveAtReply {
    pub reply: ReserveReply,
    pub allocations: Vec<Allocation>,
}

/// One location's counters, as reported by `QUERY_LOCATIONS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocationInfo {
    pub location: Bytes,
    /// Lower goes first when the server chooses.
    pub priority: u32,
    pub on_hand: u64,
    pub reserved: u64,
    pub committed: u64,
    /// Units of incoming deliveries to this location.
    pub incoming: u64,
    /// Units a reserve could take here now (incoming included when the SKU takes preorders;
    /// the SKU's own checks, such as safety stock, still apply).
    pub available: u64,
}

/// One incoming delivery, as reported by `QUERY_LOCATIONS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncomingInfo {
    /// Empty on a SKU without locations.
    pub location: Bytes,
    pub reference: Bytes,
    pub qty: u64,
    /// Expected arrival, UTC ms since the Unix epoch.
    pub eta_ms: u64,
}

/// Reply to `QUERY_LOCATIONS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocationsReply {
    pub code: ResultCode,
    /// Most units that may be sold beyond `on_hand` against incoming stock; 0 = no preorders.
    pub preorder_max: u64,
    /// Units sold beyond `on_hand` now (held or committed).
    pub preordered: u64,
    /// In the order the server chooses them: priority, then id.
    pub locations: Vec<LocationInfo>,
    /// By location, then reference.
    pub incoming: Vec<IncomingInfo>,
}

impl LocationsReply {
    /// A reply with this code and nothing else (unknown SKU, refusals).
    pub fn refused(code: ResultCode) -> LocationsReply {
        LocationsReply {
            code,
            preorder_max: 0,
            preordered: 0,
            locations: Vec::new(),
            incoming: Vec::new(),
        }
    }
}

/// One operation; a frame carries one, or a batch carries many.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Ping,
    Reserve(Reserve),
    Confirm(Confirm),
    Release {
        id: Bytes,
    },
    Extend {
        id: Bytes,
        ttl_ms: u32,
    },
    Ship {
        id: Bytes,
    },
    ReserveAt(ReserveAt),
    SetStock {
        sku: Bytes,
        on_hand: u64,
        expected: Option<u64>,
    },
    AdjustStock {
        sku: Bytes,
        delta: i64,
        expected: Option<u64>,
    },
    SetSafetyStock {
        sku: Bytes,
        safety_stock: u64,
    },
    SetLimits {
        sku: Bytes,
        limits: SkuLimits,
    },
    /// Set one location's physical count and priority, creating it if new.
    SetLocation {
        sku: Bytes,
        location: Bytes,
        on_hand: u64,
        priority: u32,
        expected: Option<u64>,
    },
    /// Add to one location's physical count.
    AdjustLocation {
        sku: Bytes,
        location: Bytes,
        delta: i64,
        expected: Option<u64>,
    },
    /// Record (or replace, or with `qty` 0 remove) an incoming delivery.
    SetIncoming {
        sku: Bytes,
        location: Bytes,
        reference: Bytes,
        qty: u64,
        eta_ms: u64,
    },
    /// Move `qty` units (0 = all) of an incoming delivery into `on_hand`.
    ReceiveIncoming {
        sku: Bytes,
        location: Bytes,
        reference: Bytes,
        qty: u64,
    },
    /// Allow selling up to `preorder_max` units beyond `on_hand` against incoming stock.
    SetPreorder {
        sku: Bytes,
        preorder_max: u64,
    },
    /// Delete a SKU no reservation that is not over names: it is unknown from then on, with
    /// everything set on it, until a stock change creates it again.
    DeleteSku {
        sku: Bytes,
    },
    QuerySku {
        sku: Bytes,
    },
    QueryReservation {
        id: Bytes,
    },
    QueryLimits {
        sku: Bytes,
    },
    QueryLocations {
        sku: Bytes,
    },
}

/// A decoded request frame body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Hello(Hello),
    Op(Op),
    Batch(Vec<Op>),
}

/// Counters of one SKU as seen at the time of the reply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SkuInfo {
    pub on_hand: u64,
    /// Units held by live (unexpired) reservations.
    pub reserved: u64,
    /// Units confirmed but not shipped.
    pub committed: u64,
    pub safety_stock: u64,
    /// `on_hand + preorder room - reserved - committed - safety_stock`, never below zero (the
    /// preorder room is 0 unless the SKU takes preorders, see `QUERY_LOCATIONS`).
    pub available: u64,
    /// Selling is paused because the safety stock has been reached.
    pub paused: bool,
}

/// Life-cycle state of a reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReservationState {
    Held = 1,
    Confirmed = 2,
    Released = 3,
    Expired = 4,
    Shipped = 5,
}

impl ReservationState {
    pub fn from_u8(value: u8) -> Option<ReservationState> {
        Some(match value {
            1 => ReservationState::Held,
            2 => ReservationState::Confirmed,
            3 => ReservationState::Released,
            4 => ReservationState::Expired,
            5 => ReservationState::Shipped,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            ReservationState::Held => "held",
            ReservationState::Confirmed => "confirmed",
            ReservationState::Released => "released",
            ReservationState::Expired => "expired",
            ReservationState::Shipped => "shipped",
        }
    }
}

/// One line of a reservation as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservationLine {
    pub sku: Bytes,
    pub qty_held: u32,
    pub qty_confirmed: u32,
}

/// A reservation as seen at the time of the reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservationInfo {
    pub state: ReservationState,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub channel: Bytes,
    pub customer: Bytes,
    pub lines: Vec<ReservationLine>,
}

/// Reply to `RESERVE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReserveReply {
    pub code: ResultCode,
    /// Index (in the request) of the line that failed, for stock rejections.
    pub failed_line: Option<u16>,
    /// Deadline of the hold (UTC ms since the Unix epoch), 0 when nothing is held.
    pub expires_at_ms: u64,
}

/// Reply to `EXTEND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtendReply {
    pub code: ResultCode,
    pub expires_at_ms: u64,
}

/// Reply to the stock operations and `QUERY_SKU`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkuReply {
    pub code: ResultCode,
    pub info: SkuInfo,
}

/// Reply to `QUERY_RESERVATION`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservationReply {
    pub code: ResultCode,
    pub info: Option<ReservationInfo>,
}

/// The reply to one operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpReply {
    Ping(ResultCode),
    Reserve(ReserveReply),
    Confirm(ResultCode),
    Release(ResultCode),
    Extend(ExtendReply),
    Ship(ResultCode),
    ReserveAt(ReserveAtReply),
    SetStock(SkuReply),
    AdjustStock(SkuReply),
    SetSafetyStock(SkuReply),
    SetLimits(SkuReply),
    SetLocation(SkuReply),
    AdjustLocation(SkuReply),
    SetIncoming(SkuReply),
    ReceiveIncoming(SkuReply),
    SetPreorder(SkuReply),
    /// The SKU's counters just before it was deleted.
    DeleteSku(SkuReply),
    QuerySku(SkuReply),
    QueryReservation(ReservationReply),
    QueryLimits(LimitsReply),
    QueryLocations(LocationsReply),
}

/// Reply to `HELLO`, announcing the negotiated version and the server's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HelloReply {
    pub code: ResultCode,
    pub version: u16,
    pub frame_body_bytes_max: u32,
    pub batch_ops_max: u32,
    pub lines_max: u16,
    pub server_time_ms: u64,
}

/// An `ERROR` frame: the request could not be processed at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorReply {
    pub code: ResultCode,
    pub message: String,
}

/// A decoded reply frame body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Hello(HelloReply),
    Op(OpReply),
    Batch(Vec<OpReply>),
    Error(ErrorReply),
}

// ---------------------------------------------------------------------------------------------
// Reading

struct Reader {
    buf: Bytes,
}

impl Reader {
    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.buf.remaining() < n {
            return Err(DecodeError::malformed("body truncated"));
        }
        Ok(())
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.buf.get_u16_le())
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.buf.get_u32_le())
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.need(8)?;
        Ok(self.buf.get_u64_le())
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        self.need(8)?;
        Ok(self.buf.get_i64_le())
    }
    fn bytes(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }
    fn str8(&mut self, max: usize, what: &str) -> Result<Bytes, DecodeError> {
        let len = self.u8()? as usize;
        if len > max {
            return Err(DecodeError::too_large(format!("{what} of {len} bytes exceeds {max}")));
        }
        self.bytes(len)
    }
    fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(DecodeError::malformed(format!("boolean byte {other} is not 0 or 1"))),
        }
    }
    fn expected(&mut self) -> Result<Option<u64>, DecodeError> {
        let present = self.bool()?;
        let value = self.u64()?;
        match (present, value) {
            (true, value) => Ok(Some(value)),
            (false, 0) => Ok(None),
            (false, _) => Err(DecodeError::malformed("expected value set without its flag")),
        }
    }
    fn lines(&mut self) -> Result<Vec<Line>, DecodeError> {
        let count = self.u16()?;
        if count > LINES_PER_RESERVATION_MAX {
            return Err(DecodeError::too_large(format!(
                "{count} lines exceed {LINES_PER_RESERVATION_MAX}"
            )));
        }
        let mut lines = Vec::with_capacity(count as usize);
        for _ in 0..count {
            lines.push(Line { sku: self.str8(SKU_BYTES_MAX, "sku")?, qty: self.u32()? });
        }
        Ok(lines)
    }
    fn sku(&mut self) -> Result<Bytes, DecodeError> {
        self.str8(SKU_BYTES_MAX, "sku")
    }
    fn location(&mut self) -> Result<Bytes, DecodeError> {
        self.str8(LOCATION_BYTES_MAX, "location")
    }
    fn reserve(&mut self) -> Result<Reserve, DecodeError> {
        Ok(Reserve {
            id: self.str8(ID_BYTES_MAX, "reservation id")?,
            ttl_ms: self.u32()?,
            channel: self.str8(TAG_BYTES_MAX, "channel")?,
            customer: self.str8(TAG_BYTES_MAX, "customer")?,
            lines: self.lines()?,
        })
    }
    fn reserve_reply(&mut self) -> Result<ReserveReply, DecodeError> {
        Ok(ReserveReply {
            code: self.code()?,
            failed_line: Some(self.u16()?).filter(|line| *line != NO_LINE),
            expires_at_ms: self.u64()?,
        })
    }
    fn locations_reply(&mut self) -> Result<LocationsReply, DecodeError> {
        let code = self.code()?;
        let preorder_max = self.u64()?;
        let preordered = self.u64()?;
        let count = self.u8()?;
        if count > LOCATIONS_PER_SKU_MAX {
            return Err(DecodeError::too_large(format!(
                "{count} locations exceed {LOCATIONS_PER_SKU_MAX}"
            )));
        }
        let mut locations = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            locations.push(LocationInfo {
                location: self.location()?,
                priority: self.u32()?,
                on_hand: self.u64()?,
                reserved: self.u64()?,
                committed: self.u64()?,
                incoming: self.u64()?,
                available: self.u64()?,
            });
        }
        let count = self.u8()?;
        if count > INCOMING_PER_SKU_MAX {
            return Err(DecodeError::too_large(format!(
                "{count} incoming deliveries exceed {INCOMING_PER_SKU_MAX}"
            )));
        }
        let mut incoming = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            incoming.push(IncomingInfo {
                location: self.location()?,
                reference: self.str8(REFERENCE_BYTES_MAX, "reference")?,
                qty: self.u64()?,
                eta_ms: self.u64()?,
            });
        }
        Ok(LocationsReply { code, preorder_max, preordered, locations, incoming })
    }
    fn limits(&mut self) -> Result<SkuLimits, DecodeError> {
        let max_per_buyer = self.u32()?;
        let shared_pool = self.bool()?;
        let count = self.u8()?;
        if count > QUOTAS_PER_SKU_MAX {
            return Err(DecodeError::too_large(format!(
                "{count} quotas exceed {QUOTAS_PER_SKU_MAX}"
            )));
        }
        let mut quotas = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let channel = self.str8(TAG_BYTES_MAX, "channel")?;
            let limit = match self.u8()? {
                0 => QuotaLimit::Units(self.u64()?),
                // Shares above 10 000 decode (the server refuses them as `invalid_argument`);
                // above a u16 they cannot be represented.
                1 => {
                    let value = self.u64()?;
                    let basis = u16::try_from(value).map_err(|_| {
                        DecodeError::malformed(format!("a share of {value} basis points"))
                    })?;
                    QuotaLimit::BasisPoints(basis)
                }
                other => return Err(DecodeError::malformed(format!("quota kind {other}"))),
            };
            quotas.push(ChannelQuota { channel, limit });
        }
        Ok(SkuLimits { max_per_buyer, shared_pool, quotas })
    }
    fn code(&mut self) -> Result<ResultCode, DecodeError> {
        let value = self.u8()?;
        ResultCode::from_u8(value)
            .ok_or_else(|| DecodeError::malformed(format!("unknown result code {value}")))
    }
    fn finish<T>(self, value: T) -> Result<T, DecodeError> {
        if self.buf.has_remaining() {
            return Err(DecodeError::malformed(format!("{} trailing bytes", self.buf.remaining())));
        }
        Ok(value)
    }
}

fn put_str8(buf: &mut BytesMut, value: &[u8]) {
    let len = u8::try_from(value.len()).expect("string length checked against limits");
    buf.put_u8(len);
    buf.put_slice(value);
}

impl Reserve {
    /// Writes the body of a RESERVE operation, as `Op::Reserve(..).encode_body` does, without
    /// building the operation (the server's log encodes every reserve it applies).
    pub fn encode_body(&self, buf: &mut BytesMut) {
        put_reserve(buf, self);
    }
}

impl Confirm {
    /// Writes the body of a CONFIRM operation (as [`Reserve::encode_body`]).
    pub fn encode_body(&self, buf: &mut BytesMut) {
        put_str8(buf, &self.id);
        put_lines(buf, &self.lines);
    }
}

fn put_reserve(buf: &mut BytesMut, r: &Reserve) {
    put_str8(buf, &r.id);
    buf.put_u32_le(r.ttl_ms);
    put_str8(buf, &r.channel);
    put_str8(buf, &r.customer);
    put_lines(buf, &r.lines);
}

fn put_reserve_reply(buf: &mut BytesMut, r: &ReserveReply) {
    buf.put_u8(r.code.as_u8());
    buf.put_u16_le(r.failed_line.unwrap_or(NO_LINE));
    buf.put_u64_le(r.expires_at_ms);
}

fn put_expected(buf: &mut BytesMut, expected: Option<u64>) {
    buf.put_u8(expected.is_some() as u8);
    buf.put_u64_le(expected.unwrap_or(0));
}

fn put_lines(buf: &mut BytesMut, lines: &[Line]) {
    buf.put_u16_le(u16::try_from(lines.len()).expect("line count checked against limits"));
    for line in lines {
        put_str8(buf, &line.sku);
        buf.put_u32_le(line.qty);
    }
}

fn put_limits(buf: &mut BytesMut, limits: &SkuLimits) {
    buf.put_u32_le(limits.max_per_buyer);
    buf.put_u8(limits.shared_pool as u8);
    buf.put_u8(u8::try_from(limits.quotas.len()).expect("quota count checked against limits"));
    for quota in &limits.quotas {
        put_str8(buf, &quota.channel);
        match quota.limit {
            QuotaLimit::Units(units) => {
                buf.put_u8(0);
                buf.put_u64_le(units);
            }
            QuotaLimit::BasisPoints(basis) => {
                buf.put_u8(1);
                buf.put_u64_le(u64::from(basis));
            }
        }
    }
}

fn unknown_opcode(opcode: u8) -> DecodeError {
    DecodeError { code: ResultCode::UnknownOpcode, message: format!("opcode 0x{opcode:02x}") }
}

// ---------------------------------------------------------------------------------------------
// Operations

impl Op {
    pub fn opcode(&self) -> Opcode {
        match self {
            Op::Ping => Opcode::Ping,
            Op::Reserve(_) => Opcode::Reserve,
            Op::Confirm(_) => Opcode::Confirm,
            Op::Release { .. } => Opcode::Release,
            Op::Extend { .. } => Opcode::Extend,
            Op::Ship { .. } => Opcode::Ship,
            Op::ReserveAt(_) => Opcode::ReserveAt,
            Op::SetStock { .. } => Opcode::SetStock,
            Op::AdjustStock { .. } => Opcode::AdjustStock,
            Op::SetSafetyStock { .. } => Opcode::SetSafetyStock,
            Op::SetLimits { .. } => Opcode::SetLimits,
            Op::SetLocation { .. } => Opcode::SetLocation,
            Op::AdjustLocation { .. } => Opcode::AdjustLocation,
            Op::SetIncoming { .. } => Opcode::SetIncoming,
            Op::ReceiveIncoming { .. } => Opcode::ReceiveIncoming,
            Op::SetPreorder { .. } => Opcode::SetPreorder,
            Op::DeleteSku { .. } => Opcode::DeleteSku,
            Op::QuerySku { .. } => Opcode::QuerySku,
            Op::QueryReservation { .. } => Opcode::QueryReservation,
            Op::QueryLimits { .. } => Opcode::QueryLimits,
            Op::QueryLocations { .. } => Opcode::QueryLocations,
        }
    }

    /// True for operations that never change state.
    pub fn is_read_only(&self) -> bool {
        self.opcode().is_read_only()
    }

    /// Appends the body of this operation.
    pub fn encode_body(&self, buf: &mut BytesMut) {
        match self {
            Op::Ping => {}
            Op::Reserve(r) => put_reserve(buf, r),
            Op::ReserveAt(r) => {
                put_reserve(buf, &r.reserve);
                put_str8(buf, &r.location);
                buf.put_u8(r.split as u8);
            }
            Op::Confirm(c) => c.encode_body(buf),
            Op::Release { id } | Op::Ship { id } | Op::QueryReservation { id } => put_str8(buf, id),
            Op::Extend { id, ttl_ms } => {
                put_str8(buf, id);
                buf.put_u32_le(*ttl_ms);
            }
            Op::SetStock { sku, on_hand, expected } => {
                put_str8(buf, sku);
                buf.put_u64_le(*on_hand);
                put_expected(buf, *expected);
            }
            Op::AdjustStock { sku, delta, expected } => {
                put_str8(buf, sku);
                buf.put_i64_le(*delta);
                put_expected(buf, *expected);
            }
            Op::SetSafetyStock { sku, safety_stock } => {
                put_str8(buf, sku);
                buf.put_u64_le(*safety_stock);
            }
            Op::SetLimits { sku, limits } => {
                put_str8(buf, sku);
                put_limits(buf, limits);
            }
            Op::SetLocation { sku, location, on_hand, priority, expected } => {
                put_str8(buf, sku);
                put_str8(buf, location);
                buf.put_u64_le(*on_hand);
                buf.put_u32_le(*priority);
                put_expected(buf, *expected);
            }
            Op::AdjustLocation { sku, location, delta, expected } => {
                put_str8(buf, sku);
                put_str8(buf, location);
                buf.put_i64_le(*delta);
                put_expected(buf, *expected);
            }
            Op::SetIncoming { sku, location, reference, qty, eta_ms } => {
                put_str8(buf, sku);
                put_str8(buf, location);
                put_str8(buf, reference);
                buf.put_u64_le(*qty);
                buf.put_u64_le(*eta_ms);
            }
            Op::ReceiveIncoming { sku, location, reference, qty } => {
                put_str8(buf, sku);
                put_str8(buf, location);
                put_str8(buf, reference);
                buf.put_u64_le(*qty);
            }
            Op::SetPreorder { sku, preorder_max } => {
                put_str8(buf, sku);
                buf.put_u64_le(*preorder_max);
            }
            Op::QuerySku { sku }
            | Op::QueryLimits { sku }
            | Op::QueryLocations { sku }
            | Op::DeleteSku { sku } => put_str8(buf, sku),
        }
    }

    /// Decodes the body of a single operation with the given opcode.
    pub fn decode(opcode: u8, body: Bytes) -> Result<Op, DecodeError> {
        let mut r = Reader { buf: body };
        let op = match Opcode::from_u8(opcode) {
            Some(Opcode::Ping) => Op::Ping,
            Some(Opcode::Reserve) => Op::Reserve(r.reserve()?),
            Some(Opcode::ReserveAt) => Op::ReserveAt(ReserveAt {
                reserve: r.reserve()?,
                location: r.location()?,
                split: r.bool()?,
            }),
            Some(Opcode::Confirm) => Op::Confirm(Confirm {
                id: r.str8(ID_BYTES_MAX, "reservation id")?,
                lines: r.lines()?,
            }),
            Some(Opcode::Release) => Op::Release { id: r.str8(ID_BYTES_MAX, "reservation id")? },
            Some(Opcode::Extend) => {
                Op::Extend { id: r.str8(ID_BYTES_MAX, "reservation id")?, ttl_ms: r.u32()? }
            }
            Some(Opcode::Ship) => Op::Ship { id: r.str8(ID_BYTES_MAX, "reservation id")? },
            Some(Opcode::SetStock) => Op::SetStock {
                sku: r.str8(SKU_BYTES_MAX, "sku")?,
                on_hand: r.u64()?,
                expected: r.expected()?,
            },
            Some(Opcode::AdjustStock) => Op::AdjustStock {
                sku: r.str8(SKU_BYTES_MAX, "sku")?,
                delta: r.i64()?,
                expected: r.expected()?,
            },
            Some(Opcode::SetSafetyStock) => {
                Op::SetSafetyStock { sku: r.str8(SKU_BYTES_MAX, "sku")?, safety_stock: r.u64()? }
            }
            Some(Opcode::SetLimits) => {
                Op::SetLimits { sku: r.str8(SKU_BYTES_MAX, "sku")?, limits: r.limits()? }
            }
            Some(Opcode::SetLocation) => Op::SetLocation {
                sku: r.sku()?,
                location: r.location()?,
                on_hand: r.u64()?,
                priority: r.u32()?,
                expected: r.expected()?,
            },
            Some(Opcode::AdjustLocation) => Op::AdjustLocation {
                sku: r.sku()?,
                location: r.location()?,
                delta: r.i64()?,
                expected: r.expected()?,
            },
            Some(Opcode::SetIncoming) => Op::SetIncoming {
                sku: r.sku()?,
                location: r.location()?,
                reference: r.str8(REFERENCE_BYTES_MAX, "reference")?,
                qty: r.u64()?,
                eta_ms: r.u64()?,
            },
            Some(Opcode::ReceiveIncoming) => Op::ReceiveIncoming {
                sku: r.sku()?,
                location: r.location()?,
                reference: r.str8(REFERENCE_BYTES_MAX, "reference")?,
                qty: r.u64()?,
            },
            Some(Opcode::SetPreorder) => Op::SetPreorder { sku: r.sku()?, preorder_max: r.u64()? },
            Some(Opcode::DeleteSku) => Op::DeleteSku { sku: r.sku()? },
            Some(Opcode::QuerySku) => Op::QuerySku { sku: r.str8(SKU_BYTES_MAX, "sku")? },
            Some(Opcode::QueryLimits) => Op::QueryLimits { sku: r.str8(SKU_BYTES_MAX, "sku")? },
            Some(Opcode::QueryLocations) => Op::QueryLocations { sku: r.sku()? },
            Some(Opcode::QueryReservation) => {
                Op::QueryReservation { id: r.str8(ID_BYTES_MAX, "reservation id")? }
            }
            Some(Opcode::Hello | Opcode::Batch | Opcode::Error) | None => {
                return Err(unknown_opcode(opcode))
            }
        };
        r.finish(op)
    }
}

/// Batch item header: opcode, one zero byte, a zero u16, and the item's body length.
const BATCH_ITEM_HEADER_BYTES: usize = 8;

fn encode_batch<T>(buf: &mut BytesMut, items: &[T], mut item: impl FnMut(&T, &mut BytesMut) -> u8) {
    buf.put_u32_le(u32::try_from(items.len()).expect("batch size checked against limits"));
    for value in items {
        let start = buf.len();
        buf.put_bytes(0, BATCH_ITEM_HEADER_BYTES);
        let opcode = item(value, buf);
        let len = u32::try_from(buf.len() - start - BATCH_ITEM_HEADER_BYTES).expect("fits u32");
        buf[start] = opcode;
        buf[start + 4..start + 8].copy_from_slice(&len.to_le_bytes());
    }
}

fn decode_batch<T>(
    body: Bytes,
    mut item: impl FnMut(u8, Bytes) -> Result<T, DecodeError>,
) -> Result<Vec<T>, DecodeError> {
    let mut r = Reader { buf: body };
    let count = r.u32()?;
    if count > BATCH_OPS_MAX {
        return Err(DecodeError::too_large(format!("{count} batch ops exceed {BATCH_OPS_MAX}")));
    }
    // Each item takes at least its header, so a count the body cannot hold is refused before
    // anything is allocated for it.
    if (count as usize).saturating_mul(BATCH_ITEM_HEADER_BYTES) > r.buf.remaining() {
        return Err(DecodeError::malformed("batch count exceeds body"));
    }
    let mut items = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let opcode = r.u8()?;
        if r.u8()? != 0 || r.u16()? != 0 {
            return Err(DecodeError::malformed("batch item reserved bytes not zero"));
        }
        let len = r.u32()? as usize;
        items.push(item(opcode, r.bytes(len)?)?);
    }
    r.finish(items)
}

fn check_len(value: &[u8], max: usize, what: &str) -> Result<(), DecodeError> {
    if value.len() > max {
        return Err(DecodeError::too_large(format!(
            "{what} of {} bytes exceeds {max}",
            value.len()
        )));
    }
    Ok(())
}

fn check_reserve(r: &Reserve) -> Result<(), DecodeError> {
    check_len(&r.id, ID_BYTES_MAX, "reservation id")?;
    check_len(&r.channel, TAG_BYTES_MAX, "channel")?;
    check_len(&r.customer, TAG_BYTES_MAX, "customer")?;
    check_lines(&r.lines)
}

/// A batch's `RESERVE_AT` items carry at most `RESERVE_AT_LINES_PER_BATCH_MAX` lines in all.
fn check_reserve_at_lines(ops: &[Op]) -> Result<(), DecodeError> {
    let lines: usize = ops
        .iter()
        .map(|op| match op {
            Op::ReserveAt(r) => r.reserve.lines.len(),
            _ => 0,
        })
        .sum();
    if lines > RESERVE_AT_LINES_PER_BATCH_MAX as usize {
        return Err(DecodeError::too_large(format!(
            "{lines} reserve_at lines in one batch exceed {RESERVE_AT_LINES_PER_BATCH_MAX}"
        )));
    }
    Ok(())
}

fn check_lines(lines: &[Line]) -> Result<(), DecodeError> {
    if lines.len() > usize::from(LINES_PER_RESERVATION_MAX) {
        let count = lines.len();
        return Err(DecodeError::too_large(format!(
            "{count} lines exceed {LINES_PER_RESERVATION_MAX}"
        )));
    }
    lines.iter().try_for_each(|line| check_len(&line.sku, SKU_BYTES_MAX, "sku"))
}

impl Op {
    /// Checks the protocol limits a receiver enforces, so a sender can refuse an oversized
    /// request with a clear error instead of sending it (or failing to encode it).
    pub fn check_limits(&self) -> Result<(), DecodeError> {
        match self {
            Op::Ping => Ok(()),
            Op::Reserve(r) => check_reserve(r),
            Op::ReserveAt(r) => {
                check_reserve(&r.reserve)?;
                check_len(&r.location, LOCATION_BYTES_MAX, "location")
            }
            Op::Confirm(c) => {
                check_len(&c.id, ID_BYTES_MAX, "reservation id")?;
                check_lines(&c.lines)
            }
            Op::Release { id }
            | Op::Extend { id, .. }
            | Op::Ship { id }
            | Op::QueryReservation { id } => check_len(id, ID_BYTES_MAX, "reservation id"),
            Op::SetStock { sku, .. }
            | Op::AdjustStock { sku, .. }
            | Op::SetSafetyStock { sku, .. }
            | Op::SetPreorder { sku, .. }
            | Op::DeleteSku { sku }
            | Op::QuerySku { sku }
            | Op::QueryLimits { sku }
            | Op::QueryLocations { sku } => check_len(sku, SKU_BYTES_MAX, "sku"),
            Op::SetLocation { sku, location, .. } | Op::AdjustLocation { sku, location, .. } => {
                check_len(sku, SKU_BYTES_MAX, "sku")?;
                check_len(location, LOCATION_BYTES_MAX, "location")
            }
            Op::SetIncoming { sku, location, reference, .. }
            | Op::ReceiveIncoming { sku, location, reference, .. } => {
                check_len(sku, SKU_BYTES_MAX, "sku")?;
                check_len(location, LOCATION_BYTES_MAX, "location")?;
                check_len(reference, REFERENCE_BYTES_MAX, "reference")
            }
            Op::SetLimits { sku, limits } => {
                check_len(sku, SKU_BYTES_MAX, "sku")?;
                if limits.quotas.len() > usize::from(QUOTAS_PER_SKU_MAX) {
                    let count = limits.quotas.len();
                    return Err(DecodeError::too_large(format!(
                        "{count} quotas exceed {QUOTAS_PER_SKU_MAX}"
                    )));
                }
                limits
                    .quotas
                    .iter()
                    .try_for_each(|q| check_len(&q.channel, TAG_BYTES_MAX, "channel"))
            }
        }
    }
}

impl Request {
    /// Checks every protocol limit of the request (see [`Op::check_limits`]).
    pub fn check_limits(&self) -> Result<(), DecodeError> {
        match self {
            Request::Hello(h) => {
                check_len(&h.api_key, API_KEY_BYTES_MAX, "api key")?;
                check_len(&h.client_name, TAG_BYTES_MAX, "client name")
            }
            Request::Op(op) => op.check_limits(),
            Request::Batch(ops) => {
                if ops.len() > BATCH_OPS_MAX as usize {
                    let count = ops.len();
                    return Err(DecodeError::too_large(format!(
                        "{count} batch ops exceed {BATCH_OPS_MAX}"
                    )));
                }
                ops.iter().try_for_each(Op::check_limits)?;
                check_reserve_at_lines(ops)
            }
        }
    }

    pub fn opcode(&self) -> Opcode {
        match self {
            Request::Hello(_) => Opcode::Hello,
            Request::Op(op) => op.opcode(),
            Request::Batch(_) => Opcode::Batch,
        }
    }

    /// Appends a whole frame carrying this request.
    pub fn encode(&self, request_id: u64, buf: &mut BytesMut) {
        encode_frame(buf, self.opcode() as u8, 0, request_id, |buf| match self {
            Request::Hello(h) => {
                buf.put_u16_le(h.min_version);
                buf.put_u16_le(h.max_version);
                put_str8(buf, &h.api_key);
                put_str8(buf, &h.client_name);
            }
            Request::Op(op) => op.encode_body(buf),
            Request::Batch(ops) => encode_batch(buf, ops, |op, buf| {
                op.encode_body(buf);
                op.opcode() as u8
            }),
        });
    }

    /// Decodes a request body.
    pub fn decode(opcode: u8, body: Bytes) -> Result<Request, DecodeError> {
        match Opcode::from_u8(opcode) {
            Some(Opcode::Hello) => {
                let mut r = Reader { buf: body };
                let hello = Hello {
                    min_version: r.u16()?,
                    max_version: r.u16()?,
                    api_key: r.str8(API_KEY_BYTES_MAX, "api key")?,
                    client_name: r.str8(TAG_BYTES_MAX, "client name")?,
                };
                r.finish(Request::Hello(hello))
            }
            Some(Opcode::Batch) => {
                let ops = decode_batch(body, Op::decode)?;
                check_reserve_at_lines(&ops)?;
                Ok(Request::Batch(ops))
            }
            _ => Ok(Request::Op(Op::decode(opcode, body)?)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Replies

fn put_sku_reply(buf: &mut BytesMut, reply: &SkuReply) {
    buf.put_u8(reply.code.as_u8());
    let info = &reply.info;
    buf.put_u64_le(info.on_hand);
    buf.put_u64_le(info.reserved);
    buf.put_u64_le(info.committed);
    buf.put_u64_le(info.safety_stock);
    buf.put_u64_le(info.available);
    buf.put_u8(info.paused as u8);
}

fn read_sku_reply(r: &mut Reader) -> Result<SkuReply, DecodeError> {
    Ok(SkuReply {
        code: r.code()?,
        info: SkuInfo {
            on_hand: r.u64()?,
            reserved: r.u64()?,
            committed: r.u64()?,
            safety_stock: r.u64()?,
            available: r.u64()?,
            paused: r.bool()?,
        },
    })
}

const NO_LINE: u16 = u16::MAX;

impl OpReply {
    pub fn opcode(&self) -> Opcode {
        match self {
            OpReply::Ping(_) => Opcode::Ping,
            OpReply::Reserve(_) => Opcode::Reserve,
            OpReply::Confirm(_) => Opcode::Confirm,
            OpReply::Release(_) => Opcode::Release,
            OpReply::Extend(_) => Opcode::Extend,
            OpReply::Ship(_) => Opcode::Ship,
            OpReply::ReserveAt(_) => Opcode::ReserveAt,
            OpReply::SetStock(_) => Opcode::SetStock,
            OpReply::AdjustStock(_) => Opcode::AdjustStock,
            OpReply::SetSafetyStock(_) => Opcode::SetSafetyStock,
            OpReply::SetLimits(_) => Opcode::SetLimits,
            OpReply::SetLocation(_) => Opcode::SetLocation,
            OpReply::AdjustLocation(_) => Opcode::AdjustLocation,
            OpReply::SetIncoming(_) => Opcode::SetIncoming,
            OpReply::ReceiveIncoming(_) => Opcode::ReceiveIncoming,
            OpReply::SetPreorder(_) => Opcode::SetPreorder,
            OpReply::DeleteSku(_) => Opcode::DeleteSku,
            OpReply::QuerySku(_) => Opcode::QuerySku,
            OpReply::QueryReservation(_) => Opcode::QueryReservation,
            OpReply::QueryLimits(_) => Opcode::QueryLimits,
            OpReply::QueryLocations(_) => Opcode::QueryLocations,
        }
    }

    /// The result code of this reply.
    /// The SKU reply inside a stock change, limits change or `QUERY_SKU` reply.
    pub fn sku_reply_mut(&mut self) -> Option<&mut SkuReply> {
        match self {
            OpReply::SetStock(r)
            | OpReply::AdjustStock(r)
            | OpReply::SetSafetyStock(r)
            | OpReply::SetLimits(r)
            | OpReply::SetLocation(r)
            | OpReply::AdjustLocation(r)
            | OpReply::SetIncoming(r)
            | OpReply::ReceiveIncoming(r)
            | OpReply::SetPreorder(r)
            | OpReply::DeleteSku(r)
            | OpReply::QuerySku(r) => Some(r),
            _ => None,
        }
    }

    pub fn code(&self) -> ResultCode {
        match self {
            OpReply::Ping(code)
            | OpReply::Confirm(code)
            | OpReply::Release(code)
            | OpReply::Ship(code) => *code,
            OpReply::Reserve(r) => r.code,
            OpReply::ReserveAt(r) => r.reply.code,
            OpReply::Extend(r) => r.code,
            OpReply::SetStock(r)
            | OpReply::AdjustStock(r)
            | OpReply::SetSafetyStock(r)
            | OpReply::SetLimits(r)
            | OpReply::SetLocation(r)
            | OpReply::AdjustLocation(r)
            | OpReply::SetIncoming(r)
            | OpReply::ReceiveIncoming(r)
            | OpReply::SetPreorder(r)
            | OpReply::DeleteSku(r)
            | OpReply::QuerySku(r) => r.code,
            OpReply::QueryReservation(r) => r.code,
            OpReply::QueryLimits(r) => r.code,
            OpReply::QueryLocations(r) => r.code,
        }
    }

    /// The reply for an operation that was refused as a whole with `code` (read-only mode,
    /// overload, authorization): the same shape as a normal reply, with zeroed details.
    pub fn refused(opcode: Opcode, code: ResultCode) -> OpReply {
        let sku = SkuReply { code, info: SkuInfo::default() };
        let reserve = ReserveReply { code, failed_line: None, expires_at_ms: 0 };
        match opcode {
            Opcode::Reserve => OpReply::Reserve(reserve),
            Opcode::ReserveAt => {
                OpReply::ReserveAt(ReserveAtReply { reply: reserve, allocations: Vec::new() })
            }
            Opcode::Confirm => OpReply::Confirm(code),
            Opcode::Release => OpReply::Release(code),
            Opcode::Extend => OpReply::Extend(ExtendReply { code, expires_at_ms: 0 }),
            Opcode::Ship => OpReply::Ship(code),
            Opcode::SetStock => OpReply::SetStock(sku),
            Opcode::AdjustStock => OpReply::AdjustStock(sku),
            Opcode::SetSafetyStock => OpReply::SetSafetyStock(sku),
            Opcode::SetLimits => OpReply::SetLimits(sku),
            Opcode::SetLocation => OpReply::SetLocation(sku),
            Opcode::AdjustLocation => OpReply::AdjustLocation(sku),
            Opcode::SetIncoming => OpReply::SetIncoming(sku),
            Opcode::ReceiveIncoming => OpReply::ReceiveIncoming(sku),
            Opcode::SetPreorder => OpReply::SetPreorder(sku),
            Opcode::DeleteSku => OpReply::DeleteSku(sku),
            Opcode::QuerySku => OpReply::QuerySku(sku),
            Opcode::QueryLimits => OpReply::QueryLimits(LimitsReply::refused(code)),
            Opcode::QueryLocations => OpReply::QueryLocations(LocationsReply::refused(code)),
            Opcode::QueryReservation => {
                OpReply::QueryReservation(ReservationReply { code, info: None })
            }
            Opcode::Ping | Opcode::Hello | Opcode::Batch | Opcode::Error => OpReply::Ping(code),
        }
    }

    /// Appends the body of this reply.
    pub fn encode_body(&self, buf: &mut BytesMut) {
        match self {
            OpReply::Ping(code)
            | OpReply::Confirm(code)
            | OpReply::Release(code)
            | OpReply::Ship(code) => buf.put_u8(code.as_u8()),
            OpReply::Reserve(r) => put_reserve_reply(buf, r),
            OpReply::ReserveAt(r) => {
                put_reserve_reply(buf, &r.reply);
                let count = u16::try_from(r.allocations.len()).expect("allocations within limits");
                buf.put_u16_le(count);
                for a in &r.allocations {
                    buf.put_u16_le(a.line);
                    put_str8(buf, &a.location);
                    buf.put_u32_le(a.qty);
                }
            }
            OpReply::Extend(r) => {
                buf.put_u8(r.code.as_u8());
                buf.put_u64_le(r.expires_at_ms);
            }
            OpReply::SetStock(r)
            | OpReply::AdjustStock(r)
            | OpReply::SetSafetyStock(r)
            | OpReply::SetLimits(r)
            | OpReply::SetLocation(r)
            | OpReply::AdjustLocation(r)
            | OpReply::SetIncoming(r)
            | OpReply::ReceiveIncoming(r)
            | OpReply::SetPreorder(r)
            | OpReply::DeleteSku(r)
            | OpReply::QuerySku(r) => put_sku_reply(buf, r),
            OpReply::QueryLocations(r) => {
                buf.put_u8(r.code.as_u8());
                buf.put_u64_le(r.preorder_max);
                buf.put_u64_le(r.preordered);
                buf.put_u8(u8::try_from(r.locations.len()).expect("locations within limits"));
                for l in &r.locations {
                    put_str8(buf, &l.location);
                    buf.put_u32_le(l.priority);
                    for value in [l.on_hand, l.reserved, l.committed, l.incoming, l.available] {
                        buf.put_u64_le(value);
                    }
                }
                buf.put_u8(u8::try_from(r.incoming.len()).expect("incoming within limits"));
                for i in &r.incoming {
                    put_str8(buf, &i.location);
                    put_str8(buf, &i.reference);
                    buf.put_u64_le(i.qty);
                    buf.put_u64_le(i.eta_ms);
                }
            }
            OpReply::QueryLimits(r) => {
                buf.put_u8(r.code.as_u8());
                put_limits(buf, &r.limits);
                for used in &r.channels {
                    buf.put_u64_le(used.allocation);
                    buf.put_u64_le(used.used);
                }
                buf.put_u64_le(r.pool);
                buf.put_u64_le(r.pool_used);
            }
            OpReply::QueryReservation(r) => {
                buf.put_u8(r.code.as_u8());
                let Some(info) = &r.info else { return };
                buf.put_u8(info.state as u8);
                buf.put_u64_le(info.created_at_ms);
                buf.put_u64_le(info.expires_at_ms);
                put_str8(buf, &info.channel);
                put_str8(buf, &info.customer);
                buf.put_u16_le(u16::try_from(info.lines.len()).expect("lines within limits"));
                for line in &info.lines {
                    put_str8(buf, &line.sku);
                    buf.put_u32_le(line.qty_held);
                    buf.put_u32_le(line.qty_confirmed);
                }
            }
        }
    }

    /// Decodes the body of a reply to a single operation.
    pub fn decode(opcode: u8, body: Bytes) -> Result<OpReply, DecodeError> {
        let mut r = Reader { buf: body };
        let reply = match Opcode::from_u8(opcode) {
            Some(Opcode::Ping) => OpReply::Ping(r.code()?),
            Some(Opcode::Reserve) => OpReply::Reserve(r.reserve_reply()?),
            Some(Opcode::ReserveAt) => {
                let reply = r.reserve_reply()?;
                let count = r.u16()?;
                let most = usize::from(LINES_PER_RESERVATION_MAX) * SPLIT_LOCATIONS_MAX;
                if usize::from(count) > most {
                    return Err(DecodeError::too_large(format!(
                        "{count} allocations exceed {most}"
                    )));
                }
                let mut allocations = Vec::with_capacity(usize::from(count));
                for _ in 0..count {
                    allocations.push(Allocation {
                        line: r.u16()?,
                        location: r.location()?,
                        qty: r.u32()?,
                    });
                }
                OpReply::ReserveAt(ReserveAtReply { reply, allocations })
            }
            Some(Opcode::Confirm) => OpReply::Confirm(r.code()?),
            Some(Opcode::Release) => OpReply::Release(r.code()?),
            Some(Opcode::Extend) => {
                OpReply::Extend(ExtendReply { code: r.code()?, expires_at_ms: r.u64()? })
            }
            Some(Opcode::Ship) => OpReply::Ship(r.code()?),
            Some(Opcode::SetStock) => OpReply::SetStock(read_sku_reply(&mut r)?),
            Some(Opcode::AdjustStock) => OpReply::AdjustStock(read_sku_reply(&mut r)?),
            Some(Opcode::SetSafetyStock) => OpReply::SetSafetyStock(read_sku_reply(&mut r)?),
            Some(Opcode::SetLimits) => OpReply::SetLimits(read_sku_reply(&mut r)?),
            Some(Opcode::SetLocation) => OpReply::SetLocation(read_sku_reply(&mut r)?),
            Some(Opcode::AdjustLocation) => OpReply::AdjustLocation(read_sku_reply(&mut r)?),
            Some(Opcode::SetIncoming) => OpReply::SetIncoming(read_sku_reply(&mut r)?),
            Some(Opcode::ReceiveIncoming) => OpReply::ReceiveIncoming(read_sku_reply(&mut r)?),
            Some(Opcode::SetPreorder) => OpReply::SetPreorder(read_sku_reply(&mut r)?),
            Some(Opcode::DeleteSku) => OpReply::DeleteSku(read_sku_reply(&mut r)?),
            Some(Opcode::QuerySku) => OpReply::QuerySku(read_sku_reply(&mut r)?),
            Some(Opcode::QueryLocations) => OpReply::QueryLocations(r.locations_reply()?),
            Some(Opcode::QueryLimits) => {
                let code = r.code()?;
                let limits = r.limits()?;
                let mut channels = Vec::with_capacity(limits.quotas.len());
                for quota in &limits.quotas {
                    channels.push(ChannelUse {
                        channel: quota.channel.clone(),
                        allocation: r.u64()?,
                        used: r.u64()?,
                    });
                }
                OpReply::QueryLimits(LimitsReply {
                    code,
                    limits,
                    channels,
                    pool: r.u64()?,
                    pool_used: r.u64()?,
                })
            }
            Some(Opcode::QueryReservation) => {
                let code = r.code()?;
                let info = if r.buf.has_remaining() {
                    let state = r.u8()?;
                    let state = ReservationState::from_u8(state).ok_or_else(|| {
                        DecodeError::malformed(format!("unknown reservation state {state}"))
                    })?;
                    let created_at_ms = r.u64()?;
                    let expires_at_ms = r.u64()?;
                    let channel = r.str8(TAG_BYTES_MAX, "channel")?;
                    let customer = r.str8(TAG_BYTES_MAX, "customer")?;
                    let count = r.u16()?;
                    if count > LINES_PER_RESERVATION_MAX {
                        return Err(DecodeError::too_large("reservation lines"));
                    }
                    let mut lines = Vec::with_capacity(count as usize);
                    for _ in 0..count {
                        lines.push(ReservationLine {
                            sku: r.str8(SKU_BYTES_MAX, "sku")?,
                            qty_held: r.u32()?,
                            qty_confirmed: r.u32()?,
                        });
                    }
                    Some(ReservationInfo {
                        state,
                        created_at_ms,
                        expires_at_ms,
                        channel,
                        customer,
                        lines,
                    })
                } else {
                    None
                };
                OpReply::QueryReservation(ReservationReply { code, info })
            }
            Some(Opcode::Hello | Opcode::Batch | Opcode::Error) | None => {
                return Err(unknown_opcode(opcode))
            }
        };
        r.finish(reply)
    }
}

impl Reply {
    pub fn opcode(&self) -> Opcode {
        match self {
            Reply::Hello(_) => Opcode::Hello,
            Reply::Op(op) => op.opcode(),
            Reply::Batch(_) => Opcode::Batch,
            Reply::Error(_) => Opcode::Error,
        }
    }

    /// Appends a whole reply frame.
    pub fn encode(&self, request_id: u64, buf: &mut BytesMut) {
        encode_frame(buf, self.opcode() as u8, FLAG_REPLY, request_id, |buf| match self {
            Reply::Hello(h) => {
                buf.put_u8(h.code.as_u8());
                buf.put_u16_le(h.version);
                buf.put_u32_le(h.frame_body_bytes_max);
                buf.put_u32_le(h.batch_ops_max);
                buf.put_u16_le(h.lines_max);
                buf.put_u64_le(h.server_time_ms);
            }
            Reply::Op(op) => op.encode_body(buf),
            Reply::Batch(replies) => encode_batch(buf, replies, |reply, buf| {
                reply.encode_body(buf);
                reply.opcode() as u8
            }),
            Reply::Error(e) => {
                buf.put_u8(e.code.as_u8());
                let mut end = e.message.len().min(ERROR_MESSAGE_BYTES_MAX);
                while !e.message.is_char_boundary(end) {
                    end -= 1;
                }
                buf.put_u16_le(end as u16);
                buf.put_slice(&e.message.as_bytes()[..end]);
            }
        });
    }

    /// Decodes a reply frame body, given its header.
    pub fn decode(header: &Header, body: Bytes) -> Result<Reply, DecodeError> {
        if header.flags & FLAG_REPLY == 0 {
            return Err(DecodeError::malformed("reply flag not set"));
        }
        match Opcode::from_u8(header.opcode) {
            Some(Opcode::Hello) => {
                let mut r = Reader { buf: body };
                let hello = HelloReply {
                    code: r.code()?,
                    version: r.u16()?,
                    frame_body_bytes_max: r.u32()?,
                    batch_ops_max: r.u32()?,
                    lines_max: r.u16()?,
                    server_time_ms: r.u64()?,
                };
                r.finish(Reply::Hello(hello))
            }
            Some(Opcode::Batch) => Ok(Reply::Batch(decode_batch(body, OpReply::decode)?)),
            Some(Opcode::Error) => {
                let mut r = Reader { buf: body };
                let code = r.code()?;
                let len = r.u16()? as usize;
                if len > ERROR_MESSAGE_BYTES_MAX {
                    return Err(DecodeError::too_large("error message"));
                }
                let message = String::from_utf8_lossy(&r.bytes(len)?).into_owned();
                r.finish(Reply::Error(ErrorReply { code, message }))
            }
            _ => Ok(Reply::Op(OpReply::decode(header.opcode, body)?)),
        }
    }
}
