//! Protocol limits. Every size a peer can send is bounded here, so that a decoder never
//! allocates or loops more than these numbers allow. Servers announce their effective limits
//! in the `HELLO` reply; these are the protocol's ceilings.

/// Largest frame body. A batch of `BATCH_OPS_MAX` single-line reserves with maximal ids is
/// about 1.2 MiB, so 4 MiB leaves room for multi-line batches without letting one frame hog memory.
pub const FRAME_BODY_BYTES_MAX: u32 = 4 * 1024 * 1024;
/// Operations in one batch frame: enough to amortise syscalls and fsyncs (thousands), small
/// enough that one batch never stalls other connections for long.
pub const BATCH_OPS_MAX: u32 = 8192;
/// Lines in one reservation: a large real-world basket is well under a hundred lines.
pub const LINES_PER_RESERVATION_MAX: u16 = 64;
/// Bytes in a reservation id (the idempotency key, typically an order number).
pub const ID_BYTES_MAX: usize = 64;
/// Bytes in a SKU id.
pub const SKU_BYTES_MAX: usize = 64;
/// Bytes in a channel or customer id.
pub const TAG_BYTES_MAX: usize = 64;
/// Channel quotas on one SKU.
pub const QUOTAS_PER_SKU_MAX: u8 = 16;
/// Bytes in a location id (a warehouse or store code).
pub const LOCATION_BYTES_MAX: usize = 32;
/// Locations one SKU may be stocked at.
pub const LOCATIONS_PER_SKU_MAX: u8 = 32;
/// Locations one reservation line may be split across (`RESERVE_AT` with the split flag).
pub const SPLIT_LOCATIONS_MAX: usize = 4;
/// Incoming deliveries recorded on one SKU at once.
pub const INCOMING_PER_SKU_MAX: u8 = 32;
/// Bytes in an incoming delivery's reference (a purchase order or ASN number).
pub const REFERENCE_BYTES_MAX: usize = 64;
/// Reservation lines in the `RESERVE_AT` items of one batch: bounds the batch's reply, whose
/// items each list the locations every line was taken from.
pub const RESERVE_AT_LINES_PER_BATCH_MAX: u32 = 8192;
/// Bytes in an API key presented in `HELLO`.
pub const API_KEY_BYTES_MAX: usize = 128;
/// Bytes in an error message sent in an `ERROR` frame.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 1024;

// One maximal reserve line is a length byte, the SKU and a u32; one maximal reserve is its
// fixed fields plus all lines. A batch of single-line reserves must fit in one frame.
const RESERVE_LINE_BYTES_MAX: usize = 1 + SKU_BYTES_MAX + 4;
const RESERVE_ONE_LINE_BYTES_MAX: usize =
    8 + (1 + ID_BYTES_MAX) + 4 + 2 * (1 + TAG_BYTES_MAX) + 2 + RESERVE_LINE_BYTES_MAX;
const _: () =
    assert!(BATCH_OPS_MAX as usize * RESERVE_ONE_LINE_BYTES_MAX <= FRAME_BODY_BYTES_MAX as usize);
// Every string is length-prefixed with one byte.
const _: () = assert!(ID_BYTES_MAX <= u8::MAX as usize);
const _: () = assert!(SKU_BYTES_MAX <= u8::MAX as usize);
const _: () = assert!(TAG_BYTES_MAX <= u8::MAX as usize);
const _: () = assert!(API_KEY_BYTES_MAX <= u8::MAX as usize);

// A batch reply of `RESERVE_AT` items, each line split across the most locations with maximal
// ids, fits in one frame.
const ALLOCATION_BYTES_MAX: usize = 2 + 1 + LOCATION_BYTES_MAX + 4;
const RESERVE_AT_REPLY_FIXED_BYTES: usize = 8 + 1 + 2 + 8 + 2;
const _: () = assert!(
    RESERVE_AT_LINES_PER_BATCH_MAX as usize * SPLIT_LOCATIONS_MAX * ALLOCATION_BYTES_MAX
        + BATCH_OPS_MAX as usize * RESERVE_AT_REPLY_FIXED_BYTES
        <= FRAME_BODY_BYTES_MAX as usize
);
const _: () = assert!(LOCATION_BYTES_MAX <= u8::MAX as usize);
const _: () = assert!(REFERENCE_BYTES_MAX <= u8::MAX as usize);
