//! Every limit of the daemon in one place, each with the reason for its value. Protocol limits
//! (frame size, batch size, lines, id lengths) live in `stockd_protocol::limits` and are
//! re-exported here; the configuration may lower some of them but never raise them.

pub use stockd_protocol::limits::*;

/// Shards of the engine: more than cores x 16 buys nothing, and each shard costs a few hundred
/// bytes even when empty.
pub const SHARDS_MAX: usize = 4096;
/// Smallest frame body a server may be configured with: a maximal single-line reserve fits.
pub const FRAME_BODY_BYTES_MIN: u32 = 1024;
/// Commands the sweeper applies per round before it yields to other tasks, so that a burst of
/// expiries never stalls the runtime for long.
pub const SWEEP_BATCH_MAX: usize = 4096;
/// Bytes buffered for replies on one connection before the server stops reading from it: a
/// client that does not read its replies stops being served instead of growing memory.
pub const CONNECTION_WRITE_BUFFER_BYTES_MAX: usize = 1024 * 1024;
/// How long a refused connection (over the connection limit) may take to receive its
/// `overloaded` error before it is dropped.
pub const REFUSE_WRITE_TIMEOUT_MS: u64 = 1000;

const _: () = assert!(FRAME_BODY_BYTES_MIN <= FRAME_BODY_BYTES_MAX);
const _: () = assert!(SWEEP_BATCH_MAX > 0 && SHARDS_MAX.is_power_of_two());
const _: () = assert!(CONNECTION_WRITE_BUFFER_BYTES_MAX >= 64 * 1024);
