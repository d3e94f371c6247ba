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
/// Requests one connection executes before it waits for durability and writes their replies:
/// a client that pipelines without reading its replies stops being served (the write blocks)
/// instead of growing the server's memory.
pub const CONNECTION_REPLIES_PER_ROUND_MAX: usize = 1024;
/// How long a refused connection (over the connection limit) may take to receive its
/// `overloaded` error before it is dropped.
pub const REFUSE_WRITE_TIMEOUT_MS: u64 = 1000;

/// Log segment size bounds: a segment holds many maximal records (64 KiB each), and one
/// segment is zeroed in the background in well under a second.
pub const SEGMENT_BYTES_MIN: u64 = 1024 * 1024;
pub const SEGMENT_BYTES_MAX: u64 = 1024 * 1024 * 1024;
/// How often the snapshotter checks whether a snapshot is due.
pub const SNAPSHOT_CHECK_MS: u64 = 200;

const _: () =
    assert!(SEGMENT_BYTES_MIN as usize >= 16 * crate::wal::record::RECORD_PAYLOAD_BYTES_MAX);
const _: () = assert!(FRAME_BODY_BYTES_MIN <= FRAME_BODY_BYTES_MAX);
const _: () = assert!(SWEEP_BATCH_MAX > 0 && SHARDS_MAX.is_power_of_two());
// A snapshot's load numbers each reservation's shard in 16 bits (`engine::image`).
const _: () = assert!(SHARDS_MAX <= 1 << 16);
const _: () = assert!(CONNECTION_REPLIES_PER_ROUND_MAX > 0);
