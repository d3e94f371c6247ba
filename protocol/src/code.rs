//! Result codes. They are part of the protocol: a value once assigned never changes meaning.
//! Business rejections (sold out, over limit) are result codes in replies, never connection errors.

use std::fmt;

macro_rules! result_codes {
    ($($(#[$doc:meta])* $name:ident = $value:literal, $text:literal;)*) => {
        /// A stable, explicit outcome code carried in every reply.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum ResultCode {
            $($(#[$doc])* $name = $value,)*
        }

        impl ResultCode {
            /// Every code, in wire order.
            pub const ALL: &'static [ResultCode] = &[$(ResultCode::$name,)*];

            /// The code's wire value.
            pub fn as_u8(self) -> u8 {
                self as u8
            }

            /// Decodes a wire value; unknown values are `None`.
            pub fn from_u8(value: u8) -> Option<ResultCode> {
                match value {
                    $($value => Some(ResultCode::$name),)*
                    _ => None,
                }
            }

            /// The stable snake_case name used in logs, metrics and the CLI.
            pub fn name(self) -> &'static str {
                match self {
                    $(ResultCode::$name => $text,)*
                }
            }
        }
    };
}

result_codes! {
    /// The operation was applied (or, for a retry, had already been applied identically).
    Ok = 0, "ok";
    /// Not enough unreserved stock for a line.
    InsufficientStock = 1, "insufficient_stock";
    /// The line would take the SKU below its safety stock.
    BelowSafetyStock = 2, "below_safety_stock";
    /// The SKU has reached its safety stock: selling is paused until stock comes back.
    SkuPaused = 3, "sku_paused";
    /// A line names a SKU the server does not know.
    UnknownSku = 4, "unknown_sku";
    /// A reservation with this id exists with different content.
    IdConflict = 5, "id_conflict";
    /// No reservation with this id.
    NotFound = 6, "not_found";
    /// The reservation is already confirmed (with different quantities, or cannot be released).
    AlreadyConfirmed = 7, "already_confirmed";
    /// The reservation was released.
    AlreadyReleased = 8, "already_released";
    /// The hold passed its deadline.
    Expired = 9, "expired";
    /// The buyer's per-SKU limit would be exceeded.
    BuyerLimitExceeded = 10, "buyer_limit_exceeded";
    /// The channel's quota would be exceeded.
    ChannelQuotaExceeded = 11, "channel_quota_exceeded";
    /// No valid credentials were presented.
    Unauthorized = 12, "unauthorized";
    /// The credentials do not allow this operation.
    Forbidden = 13, "forbidden";
    /// The request could not be decoded.
    Malformed = 14, "malformed";
    /// The request exceeds a protocol limit.
    TooLarge = 15, "too_large";
    /// The server is at a limit (connections, queue depth); retry later.
    Overloaded = 16, "overloaded";
    /// The server accepts no writes (storage failure); reads are still served.
    ReadOnly = 17, "read_only";
    /// A field has a value outside its allowed range (zero quantity, TTL above the maximum...).
    InvalidArgument = 18, "invalid_argument";
    /// An expected-value check on a stock change did not match the current value.
    ExpectedMismatch = 19, "expected_mismatch";
    /// The reservation was already shipped.
    AlreadyShipped = 20, "already_shipped";
    /// Shipping needs a confirmed reservation.
    NotConfirmed = 21, "not_confirmed";
    /// The peer speaks no protocol version the server supports.
    UnsupportedVersion = 22, "unsupported_version";
    /// The opcode is not known to the server.
    UnknownOpcode = 23, "unknown_opcode";
    /// The first frame on a connection must be `HELLO`.
    HandshakeRequired = 24, "handshake_required";
    /// The SKU has no location with this id.
    UnknownLocation = 25, "unknown_location";
    /// The SKU's stock is kept per location: the operation must name one.
    LocationRequired = 26, "location_required";
    /// The SKU has stock, holds or deliveries not assigned to any location, so it cannot be
    /// given locations (bring it to zero first).
    LocationConflict = 27, "location_conflict";
    /// Reservations that are not over (held, or confirmed and not shipped) name the SKU, so
    /// it cannot be deleted.
    SkuInUse = 28, "sku_in_use";
}

impl ResultCode {
    /// True for `Ok`.
    pub fn is_ok(self) -> bool {
        self == ResultCode::Ok
    }
}

impl fmt::Display for ResultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_dense() {
        for (index, code) in ResultCode::ALL.iter().enumerate() {
            assert_eq!(code.as_u8() as usize, index, "codes are numbered densely in order");
            assert_eq!(ResultCode::from_u8(code.as_u8()), Some(*code));
        }
        assert_eq!(ResultCode::from_u8(ResultCode::ALL.len() as u8), None);
        assert_eq!(ResultCode::from_u8(255), None);
    }

    #[test]
    fn names_are_unique_snake_case() {
        let mut names: Vec<_> = ResultCode::ALL.iter().map(|c| c.name()).collect();
        assert!(names.iter().all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ResultCode::ALL.len());
    }
}
