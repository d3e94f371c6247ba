//! Snapshots: the engine's whole state at a log position, so recovery replays only the log
//! after it.
//!
//! A snapshot file `snap-<lsn, 20 digits>.snap` is a 64-byte header followed by the state image
//! serialised with rkyv (validated with bytecheck on load, never trusted blindly):
//!
//! ```text
//! offset  size  field
//!      0     8  magic        b"STKDSNAP"
//!      8     4  version      u32, 6 (1 to 5 are still read)
//!     12     4  reserved     zero
//!     16     8  lsn          u64, last log record included
//!     24     8  now_ms       u64, latest server time seen in the state
//!     32     8  body_len     u64
//!     40     4  body_crc32c  u32
//!     44    16  reserved     zero
//!     60     4  header_crc32c of bytes 0..60
//!     64        body: parts, each an rkyv archive of an `engine::Image` of some of the rows
//! ```
//!
//! The body's framing is in `part`: parts appended in order are the image, and keep every
//! archive under rkyv's 2 GiB reach (version 5 and earlier bodies were one archive, which
//! could not be written past about 19 million reservations).
//!
//! The image's rows come in no particular order (the engine's own, since it is cheapest to
//! write), except that `allocations` come grouped by reservation and in the order of
//! `reservations`, which loading relies on. Files written sorted by id, as before, load the
//! same way.
//!
//! The server's snapshots are written from a capture of the live state (`engine::Captured`),
//! whose reservations are serialised straight from the engine's own as they were at the cut:
//! the same bytes as the image of that state (a unit test compares them byte for byte).
//!
//! Writing: a `.tmp` file is written (the body streamed from offset 64 as it is serialised,
//! then the header with its length and checksum) and synced, renamed to its final name, and
//! the directory is synced. Loading: the file is memory-mapped, both checksums and every
//! part's archive are validated, and the state is checked for consistency as it is rebuilt
//! (SKUs first, then reservations a few parts at a time, see `part`). The two
//! newest snapshots are kept; if the newest is damaged, recovery falls back to the older one
//! and the longer log.
//!
//! Versions: 2 added SKU limits (`SkuImage::limits`); 3 added locations, deliveries and
//! preorder allowances, and the allocations of reservation lines (`Image::locations`,
//! `supplies`, `allocations`); 4 added return tickets and unmatched parcels
//! (`Image::aftersales`); 5 added deleted SKUs (`Image::deleted_skus`); 6 split the body into
//! parts. Version 1 files (no limits) are read through `engine::image::ImageV1`, version 2
//! files through `ImageV2`, version 3 through `ImageV3`, version 4 through `ImageV4`, version 5
//! as one archive of `Image`; the next snapshot writes the current version.

use std::io;

pub mod part;

use rkyv::rancor;
use rkyv::util::AlignedVec;
use tracing::warn;

use crate::aftersales::AftersalesImage;
use crate::engine::image::{load_threads, ImageLoader};
use crate::engine::image::{
    ArchivedImage, ArchivedImageV1, ArchivedImageV2, ArchivedImageV3, ArchivedImageV4, ImageV1,
    ImageV2, ImageV3, ImageV4,
};
use crate::engine::{Captured, Engine, EngineConfig, Image};
use crate::wal::storage::Storage;

pub const SNAPSHOT_MAGIC: [u8; 8] = *b"STKDSNAP";
pub const SNAPSHOT_VERSION: u32 = 6;
pub const SNAPSHOT_HEADER_BYTES: usize = 64;
/// Snapshots kept on disk.
pub const SNAPSHOTS_KEPT: usize = 2;

pub fn snapshot_name(lsn: u64) -> String {
    format!("snap-{lsn:020}.snap")
}

fn parse_snapshot_name(name: &str) -> Option<u64> {
    name.strip_prefix("snap-")?.strip_suffix(".snap")?.parse().ok()
}

/// Snapshot file names on disk, newest first.
pub fn list(storage: &dyn Storage) -> io::Result<Vec<(u64, String)>> {
    let mut snapshots: Vec<(u64, String)> = storage
        .list()?
        .into_iter()
        .filter_map(|name| parse_snapshot_name(&name).map(|lsn| (lsn, name)))
        .collect();
    snapshots.sort_unstable_by_key(|s| std::cmp::Reverse(s.0));
    Ok(snapshots)
}

/// Writes a snapshot of `image` at `lsn` durably and returns its file name.
///
/// The body is serialised straight into the file, 1 MiB at a time, and checksummed on the way;
/// the header, which holds its length and checksum, is written last. The serialised body is
/// never whole in memory: it is about as large as the image itself, and building it in one
/// buffer meant growing that buffer by copies while the image was still held.
pub fn write(storage: &dyn Storage, lsn: u64, now_ms: u64, image: &Image) -> io::Result<String> {
    write_split(storage, lsn, now_ms, image, &part::Caps::default())
}

/// [`write`] with parts of at most `caps` rows (tests split small images).
fn write_split(
    storage: &dyn Storage,
    lsn: u64,
    now_ms: u64,
    image: &Image,
    caps: &part::Caps,
) -> io::Result<String> {
    let no_tickets = AftersalesImage::default();
    let parts = image.parts(caps, &no_tickets);
    write_with(storage, lsn, now_ms, SNAPSHOT_VERSION, |out| write_parts(&parts, out))
}

/// Writes a captured state (see `engine::captured`) as the snapshot at `lsn`: the same file as
/// [`write`] writes for the image of that state.
pub fn write_captured(
    storage: &dyn Storage,
    lsn: u64,
    now_ms: u64,
    captured: &Captured,
) -> io::Result<String> {
    write_captured_split(storage, lsn, now_ms, captured, &part::Caps::default())
}

/// [`write_captured`] with parts of at most `caps` rows.
fn write_captured_split(
    storage: &dyn Storage,
    lsn: u64,
    now_ms: u64,
    captured: &Captured,
    caps: &part::Caps,
) -> io::Result<String> {
    let no_tickets = AftersalesImage::default();
    let parts = captured.parts(caps, &no_tickets);
    write_with(storage, lsn, now_ms, SNAPSHOT_VERSION, |out| write_parts(&parts, out))
}

/// Serialises each part into `out`, each followed by its padding and trailer (see `part`).
///
/// The serialiser keeps the resolvers of a part's rows in its scratch allocator until the rows
/// are written. Its arena is this call's own, freed when it returns: rkyv's default, a
/// per-thread arena kept between calls, would leave the snapshotter thread holding its
/// largest block for good.
fn write_parts<T>(parts: &[T], out: &mut BodyWriter<'_>) -> io::Result<()>
where
    T: for<'a, 'b> rkyv::Serialize<
        rkyv::api::high::HighSerializer<
            rkyv::ser::writer::IoWriter<&'b mut BodyWriter<'a>>,
            rkyv::ser::allocator::ArenaHandle<'b>,
            rancor::Error,
        >,
    >,
{
    use io::Write;
    let mut arena = rkyv::ser::allocator::Arena::new();
    for (index, part) in parts.iter().enumerate() {
        let writer = rkyv::ser::writer::IoWriter::new(&mut *out);
        let writer = rkyv::api::high::to_bytes_in_with_alloc(part, writer, arena.acquire())
            .map_err(io::Error::other)?;
        let len = rkyv::ser::Positional::pos(&writer);
        let index = u32::try_from(index).map_err(io::Error::other)?;
        out.write_all(&[0u8; 16][..part::padding(len)])?;
        out.write_all(&part::trailer(len as u64, index))?;
    }
    Ok(())
}

#[cfg(test)]
fn write_body(
    storage: &dyn Storage,
    lsn: u64,
    now_ms: u64,
    version: u32,
    body: &[u8],
) -> io::Result<String> {
    use io::Write;
    write_with(storage, lsn, now_ms, version, |out| out.write_all(body))
}

/// Streams a snapshot body into the file after the header's room, checksumming it.
struct BodyWriter<'f> {
    file: &'f mut dyn crate::wal::storage::StorageFile,
    at: u64,
    crc: u32,
    pending: Vec<u8>,
    /// The first write error, kept whole (the serialiser only passes on a description).
    error: Option<io::Error>,
}

const BODY_CHUNK: usize = 1 << 20;

impl BodyWriter<'_> {
    fn write_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.crc = crc32c::crc32c_append(self.crc, &self.pending);
        if let Err(e) = self.file.write_at(self.at, &self.pending) {
            let copy = io::Error::new(e.kind(), e.to_string());
            self.error.get_or_insert(e);
            return Err(copy);
        }
        self.at += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }
}

impl io::Write for BodyWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(data);
        if self.pending.len() >= BODY_CHUNK {
            self.write_pending()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_pending()
    }
}

fn write_with<E: std::error::Error + Send + Sync + 'static>(
    storage: &dyn Storage,
    lsn: u64,
    now_ms: u64,
    version: u32,
    body: impl FnOnce(&mut BodyWriter<'_>) -> Result<(), E>,
) -> io::Result<String> {
    let name = snapshot_name(lsn);
    let temp = format!("{name}.tmp");
    let mut file = storage.create(&temp)?;
    let mut out = BodyWriter {
        file: &mut *file,
        at: SNAPSHOT_HEADER_BYTES as u64,
        crc: 0,
        pending: Vec::with_capacity(BODY_CHUNK + 4096),
        error: None,
    };
    let written = body(&mut out).map_err(io::Error::other);
    let written = written.and_then(|()| io::Write::flush(&mut out));
    if let Err(e) = written {
        return Err(out.error.take().unwrap_or(e));
    }
    let (body_len, body_crc) = (out.at - SNAPSHOT_HEADER_BYTES as u64, out.crc);
    let mut header = [0u8; SNAPSHOT_HEADER_BYTES];
    header[0..8].copy_from_slice(&SNAPSHOT_MAGIC);
    header[8..12].copy_from_slice(&version.to_le_bytes());
    header[16..24].copy_from_slice(&lsn.to_le_bytes());
    header[24..32].copy_from_slice(&now_ms.to_le_bytes());
    header[32..40].copy_from_slice(&body_len.to_le_bytes());
    header[40..44].copy_from_slice(&body_crc.to_le_bytes());
    let crc = crc32c::crc32c(&header[..60]);
    header[60..64].copy_from_slice(&crc.to_le_bytes());
    file.write_at(0, &header)?;
    file.sync_data()?;
    drop(file);
    storage.rename(&temp, &name)?;
    storage.sync_dir()?;
    Ok(name)
}

/// A loaded snapshot.
pub struct Loaded {
    pub engine: Engine,
    pub lsn: u64,
    pub now_ms: u64,
}

/// Loads and validates one snapshot file.
pub fn load(storage: &dyn Storage, name: &str, config: EngineConfig) -> Result<Loaded, String> {
    let data = storage.read(name).map_err(|e| format!("cannot read: {e}"))?;
    if data.len() < SNAPSHOT_HEADER_BYTES {
        return Err("shorter than its header".into());
    }
    let header = &data[..SNAPSHOT_HEADER_BYTES];
    let u64_at = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
    let u32_at = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    if crc32c::crc32c(&header[..60]) != u32_at(60) {
        return Err("header checksum mismatch".into());
    }
    if header[0..8] != SNAPSHOT_MAGIC {
        return Err("not a stockd snapshot".into());
    }
    let version = u32_at(8);
    if !(1..=SNAPSHOT_VERSION).contains(&version) {
        return Err(format!("format version {version}, this stockd reads 1 to {SNAPSHOT_VERSION}"));
    }
    let body_len = usize::try_from(u64_at(32)).map_err(|_| "body length overflows")?;
    let body = data
        .get(SNAPSHOT_HEADER_BYTES..SNAPSHOT_HEADER_BYTES.saturating_add(body_len))
        .ok_or("body truncated")?;
    if crc32c::crc32c(body) != u32_at(40) {
        return Err("body checksum mismatch".into());
    }
    // rkyv needs its archive aligned; a memory map is page-aligned and the body starts at 64,
    // other buffers are copied once.
    let aligned;
    let body = if (body.as_ptr() as usize) % 16 == 0 {
        body
    } else {
        let mut copy = AlignedVec::<16>::with_capacity(body.len());
        copy.extend_from_slice(body);
        aligned = copy;
        &aligned[..]
    };
    if version == SNAPSHOT_VERSION {
        let engine = load_parts(body, config, LOAD_BATCH)?;
        return Ok(Loaded { engine, lsn: u64_at(16), now_ms: u64_at(24) });
    }
    let image = if version == 1 {
        let archived = rkyv::access::<ArchivedImageV1, rancor::Error>(body)
            .map_err(|e| format!("invalid archive: {e}"))?;
        rkyv::deserialize::<ImageV1, rancor::Error>(archived)
            .map_err(|e| format!("cannot deserialise: {e}"))?
            .upgrade()
    } else if version == 2 {
        let archived = rkyv::access::<ArchivedImageV2, rancor::Error>(body)
            .map_err(|e| format!("invalid archive: {e}"))?;
        rkyv::deserialize::<ImageV2, rancor::Error>(archived)
            .map_err(|e| format!("cannot deserialise: {e}"))?
            .upgrade()
    } else if version == 3 {
        let archived = rkyv::access::<ArchivedImageV3, rancor::Error>(body)
            .map_err(|e| format!("invalid archive: {e}"))?;
        rkyv::deserialize::<ImageV3, rancor::Error>(archived)
            .map_err(|e| format!("cannot deserialise: {e}"))?
            .upgrade()
    } else if version == 4 {
        let archived = rkyv::access::<ArchivedImageV4, rancor::Error>(body)
            .map_err(|e| format!("invalid archive: {e}"))?;
        rkyv::deserialize::<ImageV4, rancor::Error>(archived)
            .map_err(|e| format!("cannot deserialise: {e}"))?
            .upgrade()
    } else {
        load_archive(body)?
    };
    let engine = Engine::from_image(config, &image).map_err(|e| e.to_string())?;
    Ok(Loaded { engine, lsn: u64_at(16), now_ms: u64_at(24) })
}

/// Validates and deserialises one archive of an [`Image`] (16-byte aligned).
fn load_archive(archive: &[u8]) -> Result<Image, String> {
    deserialize(access(archive)?)
}

fn access(archive: &[u8]) -> Result<&ArchivedImage, String> {
    rkyv::access::<ArchivedImage, rancor::Error>(archive)
        .map_err(|e| format!("invalid archive: {e}"))
}

fn deserialize(archived: &ArchivedImage) -> Result<Image, String> {
    rkyv::deserialize::<Image, rancor::Error>(archived)
        .map_err(|e| format!("cannot deserialise: {e}"))
}

/// The engine a body of parts holds (see `part`). Every part is validated first; then the
/// SKUs, locations, supplies and return tickets of all parts are loaded, then the parts'
/// reservations a few parts at a time: only those are ever in memory as rows beside the
/// engine they go into (the whole image as rows was about as large as the engine again).
fn load_parts(body: &[u8], config: EngineConfig, load_batch: usize) -> Result<Engine, String> {
    let named = |k: usize| move |e: String| format!("part {k}: {e}");
    let parts = part::archives(body)
        .map_err(|e| format!("invalid archive: {e}"))?
        .into_iter()
        .enumerate()
        .map(|(k, archive)| access(&body[archive]).map_err(named(k)))
        .collect::<Result<Vec<_>, _>>()?;
    let rows = |len: fn(&ArchivedImage) -> usize| parts.iter().map(|p| len(p)).sum::<usize>();
    let mut skus = Image {
        skus: Vec::with_capacity(rows(|p| p.skus.len())),
        locations: Vec::with_capacity(rows(|p| p.locations.len())),
        supplies: Vec::with_capacity(rows(|p| p.supplies.len())),
        deleted_skus: Vec::with_capacity(rows(|p| p.deleted_skus.len())),
        ..Image::default()
    };
    for (k, archived) in parts.iter().enumerate() {
        skus.append(deserialize_skus(archived).map_err(named(k))?);
    }
    let ids = parts.iter().flat_map(|p| p.reservations.iter().map(|r| &r.id[..]));
    let threads = load_threads(rows(|p| p.reservations.len()));
    let mut loader = ImageLoader::new(config, &skus, ids, threads).map_err(|e| e.to_string())?;
    // Parts are loaded a few at a time: each load ends when its slowest thread does.
    let mut batch = Image::default();
    let mut first = 0;
    for (k, archived) in parts.iter().enumerate() {
        batch.append(deserialize_reservations(archived).map_err(named(k))?);
        if batch.reservations.len() >= load_batch || k + 1 == parts.len() {
            let parts = if first == k { format!("part {k}") } else { format!("parts {first}-{k}") };
            loader.add(&batch).map_err(|e| format!("{parts}: {e}"))?;
            (batch, first) = (Image::default(), k + 1);
        }
    }
    loader.finish(&skus.aftersales).map_err(|e| e.to_string())
}

/// Reservations loaded at a time from a snapshot's parts (tens of MiB as rows).
const LOAD_BATCH: usize = 1 << 18;

/// A part's rows but its reservations and allocations.
fn deserialize_skus(archived: &ArchivedImage) -> Result<Image, String> {
    let error = |e: rancor::Error| format!("cannot deserialise: {e}");
    Ok(Image {
        skus: rkyv::deserialize::<_, rancor::Error>(&archived.skus).map_err(error)?,
        locations: rkyv::deserialize::<_, rancor::Error>(&archived.locations).map_err(error)?,
        supplies: rkyv::deserialize::<_, rancor::Error>(&archived.supplies).map_err(error)?,
        aftersales: rkyv::deserialize::<_, rancor::Error>(&archived.aftersales).map_err(error)?,
        deleted_skus: rkyv::deserialize::<_, rancor::Error>(&archived.deleted_skus)
            .map_err(error)?,
        ..Image::default()
    })
}

/// A part's reservations and their allocations.
fn deserialize_reservations(archived: &ArchivedImage) -> Result<Image, String> {
    let error = |e: rancor::Error| format!("cannot deserialise: {e}");
    Ok(Image {
        reservations: rkyv::deserialize::<_, rancor::Error>(&archived.reservations)
            .map_err(error)?,
        allocations: rkyv::deserialize::<_, rancor::Error>(&archived.allocations).map_err(error)?,
        ..Image::default()
    })
}

/// Loads the newest valid snapshot, falling back to older ones (with a warning naming the
/// damaged file). `None` when there is no usable snapshot.
pub fn load_latest(storage: &dyn Storage, config: &EngineConfig) -> io::Result<Option<Loaded>> {
    for (_, name) in list(storage)? {
        match load(storage, &name, config.clone()) {
            Ok(loaded) => return Ok(Some(loaded)),
            Err(why) => warn!(file = %name, %why, "snapshot unusable, trying an older one"),
        }
    }
    Ok(None)
}

/// Removes all but the newest `SNAPSHOTS_KEPT` snapshots and leftover temp files; returns the
/// LSN of the oldest snapshot kept (the log before it is no longer needed).
pub fn prune(storage: &dyn Storage) -> io::Result<Option<u64>> {
    for name in storage.list()? {
        if name.starts_with("snap-") && name.ends_with(".snap.tmp") {
            storage.remove(&name)?;
        }
    }
    let snapshots = list(storage)?;
    for (_, name) in snapshots.iter().skip(SNAPSHOTS_KEPT) {
        storage.remove(name)?;
    }
    storage.sync_dir()?;
    Ok(snapshots.iter().take(SNAPSHOTS_KEPT).map(|(lsn, _)| *lsn).min())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Command, EngineConfig};
    use crate::wal::storage::MemStorage;
    use bytes::Bytes;
    use stockd_protocol::{OpReply, ReservationState};

    fn engine_with_state() -> Engine {
        let engine = Engine::new(EngineConfig::default());
        let set = Command::SetStock { sku: "a".into(), on_hand: 7, expected: None };
        engine.apply(&set, 1, || {});
        let reserve = Command::Reserve(stockd_protocol::Reserve {
            id: "r".into(),
            ttl_ms: 0,
            channel: "c".into(),
            customer: "".into(),
            lines: vec![stockd_protocol::Line::new("a", 2)],
        });
        engine.apply(&reserve, 1, || {});
        engine
    }

    /// Gives SKU "a" the locations east and west with these stocks (east first by priority).
    fn east_and_west(engine: &Engine, east: u64, west: u64) {
        for (location, on_hand, priority) in [("east", east, 0), ("west", west, 1)] {
            let (sku, location) = ("a".into(), location.into());
            let set = Command::SetLocation { sku, location, on_hand, priority, expected: None };
            engine.apply(&set, 1, || {});
        }
    }

    #[test]
    fn locations_deliveries_and_allocations_round_trip() {
        let engine = Engine::new(EngineConfig::default());
        let apply = |command: Command| engine.apply(&command, 1, || {});
        east_and_west(&engine, 1, 2);
        let (sku, location, reference) = ("a".into(), "west".into(), "po-7".into());
        apply(Command::SetIncoming { sku, location, reference, qty: 5, eta_ms: 99 });
        let reserve = |id: &str, qty| {
            Command::ReserveAt(stockd_protocol::ReserveAt {
                reserve: stockd_protocol::Reserve {
                    id: Bytes::copy_from_slice(id.as_bytes()),
                    ttl_ms: 0,
                    channel: "".into(),
                    customer: "".into(),
                    lines: vec![stockd_protocol::Line::new("a", qty)],
                },
                location: "".into(),
                split: true,
            })
        };
        let OpReply::ReserveAt(split) = apply(reserve("r1", 3)) else { panic!("reply") };
        assert_eq!(split.allocations.len(), 2, "{split:?}");
        apply(Command::SetPreorder { sku: "a".into(), preorder_max: 2 });
        apply(Command::Confirm(stockd_protocol::Confirm {
            id: "r1".into(),
            lines: vec![stockd_protocol::Line::new("a", 2)],
        }));
        apply(reserve("r2", 1));
        let image = engine.image();
        assert_eq!((image.locations.len(), image.supplies.len()), (2, 1));
        assert_eq!(image.allocations.len(), 3, "{:?}", image.allocations);

        let storage = MemStorage::new();
        let name = write(&storage, 5, 1, &image).expect("write");
        let loaded = load(&storage, &name, EngineConfig::default()).expect("load");
        assert_eq!(loaded.engine.image(), image);
        assert_eq!(loaded.engine.query_locations(b"a", 1), engine.query_locations(b"a", 1));
        assert_eq!(loaded.engine.query_sku(b"a", 1), engine.query_sku(b"a", 1));

        // An image whose allocations do not add up to the line is refused.
        let mut bad = image.clone();
        bad.allocations[0].qty += 1;
        let refused = Engine::from_image(EngineConfig::default(), &bad).err().expect("refused");
        assert!(refused.to_string().contains("allocations"), "{refused}");
        let mut bad = image.clone();
        bad.locations[0].on_hand += 1;
        let refused = Engine::from_image(EngineConfig::default(), &bad).err().expect("refused");
        assert!(refused.to_string().contains("sum of its locations"), "{refused}");
        // Nor do counts whose sum wraps around to the SKU's (found by fuzzing: it overflowed).
        let mut bad = image;
        let on_hand = bad.skus.iter().find(|s| s.sku == b"a").expect("SKU a").on_hand;
        bad.locations[0].on_hand = u64::MAX;
        bad.locations[1].on_hand = on_hand + 1;
        let refused = Engine::from_image(EngineConfig::default(), &bad).err().expect("refused");
        assert!(refused.to_string().contains("sum of its locations"), "{refused}");
    }

    #[test]
    fn a_body_of_several_chunks_round_trips_and_a_full_disk_is_reported_as_such() {
        // 40 000 SKUs with a reservation each: a body of several 1 MiB chunks.
        let engine = Engine::new(EngineConfig::default());
        for n in 0..40_000u32 {
            let sku = Bytes::from(format!("sku-{n:06}"));
            engine.apply(
                &Command::SetStock { sku: sku.clone(), on_hand: 5, expected: None },
                1,
                || {},
            );
            let reserve = Command::Reserve(stockd_protocol::Reserve {
                id: Bytes::from(format!("order-{n:06}")),
                ttl_ms: 0,
                channel: "".into(),
                customer: "".into(),
                lines: vec![stockd_protocol::Line { sku, qty: 1 + n % 3 }],
            });
            engine.apply(&reserve, 1, || {});
        }
        let image = engine.image();
        let storage = MemStorage::new();
        let name = write(&storage, 7, 1, &image).expect("write");
        let bytes = storage.read(&name).expect("read").len();
        assert!(bytes > 3 * BODY_CHUNK, "{bytes} bytes");
        let loaded = load(&storage, &name, EngineConfig::default()).expect("load");
        assert_eq!(loaded.engine.image(), image);
        assert_eq!((loaded.lsn, loaded.now_ms), (7, 1));

        // The disk fills up during the body: the error says so, and no snapshot appears.
        let full = MemStorage::new();
        full.set_disk_full(true);
        let error = write(&full, 8, 1, &image).expect_err("the disk is full");
        assert_eq!(error.raw_os_error(), Some(28), "ENOSPC, not a serialiser error: {error}");
        assert!(list(&full).expect("list").is_empty());
    }

    #[test]
    fn writing_a_snapshot_keeps_no_scratch_memory_afterwards() {
        // Writing 20 000 reservations takes scratch memory for their rows' resolvers. rkyv's
        // per-thread arena would keep its largest block on this thread (each test has a
        // thread of its own) for good.
        let engine = Engine::new(EngineConfig::default());
        let set = Command::SetStock { sku: "a".into(), on_hand: 1 << 30, expected: None };
        engine.apply(&set, 1, || {});
        for n in 0..20_000u32 {
            let reserve = Command::Reserve(stockd_protocol::Reserve {
                id: Bytes::from(format!("order-{n:06}")),
                ttl_ms: 0,
                channel: "".into(),
                customer: "".into(),
                lines: vec![stockd_protocol::Line::new("a", 1)],
            });
            engine.apply(&reserve, 1, || {});
        }
        let storage = MemStorage::new();
        let (capture, ()) = engine.capture(|| ());
        let name = write_captured(&storage, 3, 1, &capture.finish()).expect("write");
        write(&storage, 4, 1, &engine.image()).expect("write");
        let kept = rkyv::util::with_arena(|arena| arena.capacity());
        assert!(kept < 64 << 10, "{kept} bytes of scratch memory kept");
        let loaded = load(&storage, &name, EngineConfig::default()).expect("load");
        assert_eq!(loaded.engine.counts(), (1, 20_000));
    }

    #[test]
    fn a_snapshot_in_the_engines_own_order_loads_to_the_same_state() {
        let engine = Engine::new(EngineConfig::default());
        let apply = |command: Command| engine.apply(&command, 1, || {});
        east_and_west(&engine, 100, 500);
        apply(Command::SetStock { sku: "b".into(), on_hand: 1_000, expected: None });
        // 200 reservations over every shard, each taking 3 units of "a" (all 600 there are, so
        // one reservation is split between the two locations: two allocations of one line)
        // and 1 of "b"; a third confirmed.
        for i in 0..200 {
            let id = format!("order-{i}");
            let reserve = stockd_protocol::Reserve {
                id: Bytes::copy_from_slice(id.as_bytes()),
                ttl_ms: 0,
                channel: "".into(),
                customer: "".into(),
                lines: vec![stockd_protocol::Line::new("a", 3), stockd_protocol::Line::new("b", 1)],
            };
            let at = stockd_protocol::ReserveAt { reserve, location: "".into(), split: true };
            let reply = apply(Command::ReserveAt(at));
            assert!(matches!(&reply, OpReply::ReserveAt(r) if r.reply.code.is_ok()), "{reply:?}");
            if i % 3 == 0 {
                let id = Bytes::copy_from_slice(id.as_bytes());
                apply(Command::Confirm(stockd_protocol::Confirm { id, lines: Vec::new() }));
            }
        }
        let canonical = engine.image();
        let own = engine.snapshot_image();
        assert_eq!(own.allocations.len(), canonical.allocations.len());
        assert_eq!(canonical.allocations.len(), 201, "one line split");
        assert!(canonical
            .reservations
            .iter()
            .any(|r| r.state == ReservationState::Confirmed as u8));
        assert_ne!(own.reservations, canonical.reservations, "not in id order");

        let storage = MemStorage::new();
        let name = write(&storage, 9, 1, &own).expect("write");
        let loaded = load(&storage, &name, EngineConfig::default()).expect("load");
        assert_eq!(loaded.engine.image(), canonical);
    }

    #[test]
    fn limits_round_trip_with_their_uses_recounted() {
        let engine = engine_with_state();
        let limits = stockd_protocol::SkuLimits {
            max_per_buyer: 3,
            shared_pool: true,
            quotas: vec![stockd_protocol::ChannelQuota {
                channel: "c".into(),
                limit: stockd_protocol::QuotaLimit::BasisPoints(5_000),
            }],
        };
        let set = Command::SetLimits { sku: "a".into(), limits };
        engine.apply(&set, 1, || {});
        let storage = MemStorage::new();
        let name = write(&storage, 3, 1, &engine.image()).expect("write");
        let loaded = load(&storage, &name, EngineConfig::default()).expect("load");
        assert_eq!(loaded.engine.image(), engine.image());
        let (before, after) = (engine.query_limits(b"a", 1), loaded.engine.query_limits(b"a", 1));
        assert_eq!(after, before);
        assert_eq!((after.channels[0].allocation, after.channels[0].used), (3, 2));
    }

    #[test]
    fn version_1_to_5_snapshots_are_still_read() {
        let engine = engine_with_state();
        let image = engine.image();
        let v1 = crate::engine::image::ImageV1 {
            skus: image
                .skus
                .iter()
                .map(|s| crate::engine::image::SkuImageV1 {
                    sku: s.sku.clone(),
                    on_hand: s.on_hand,
                    safety_stock: s.safety_stock,
                })
                .collect(),
            reservations: image.reservations.clone(),
        };
        let body = rkyv::to_bytes::<rancor::Error>(&v1).expect("serialise");
        let storage = MemStorage::new();
        let name = write_body(&storage, 8, 1, 1, &body).expect("write");
        let loaded = load(&storage, &name, EngineConfig::default()).expect("a v1 snapshot loads");
        assert_eq!(loaded.engine.image(), image);
        let v2 = crate::engine::image::ImageV2 {
            skus: image.skus.clone(),
            reservations: image.reservations.clone(),
        };
        let body = rkyv::to_bytes::<rancor::Error>(&v2).expect("serialise");
        let name = write_body(&storage, 9, 1, 2, &body).expect("write");
        let loaded = load(&storage, &name, EngineConfig::default()).expect("a v2 snapshot loads");
        assert_eq!(loaded.engine.image(), image);
        let v3 = crate::engine::image::ImageV3 {
            skus: image.skus.clone(),
            reservations: image.reservations.clone(),
            ..Default::default()
        };
        let body = rkyv::to_bytes::<rancor::Error>(&v3).expect("serialise");
        let name = write_body(&storage, 10, 1, 3, &body).expect("write");
        let loaded = load(&storage, &name, EngineConfig::default()).expect("a v3 snapshot loads");
        assert_eq!(loaded.engine.image(), image);
        let v4 = crate::engine::image::ImageV4 {
            skus: image.skus.clone(),
            reservations: image.reservations.clone(),
            ..Default::default()
        };
        let body = rkyv::to_bytes::<rancor::Error>(&v4).expect("serialise");
        let name = write_body(&storage, 11, 1, 4, &body).expect("write");
        let loaded = load(&storage, &name, EngineConfig::default()).expect("a v4 snapshot loads");
        assert_eq!(loaded.engine.image(), image);
        // Version 5: the image as one archive, without parts.
        let body = rkyv::to_bytes::<rancor::Error>(&image).expect("serialise");
        let name = write_body(&storage, 12, 1, 5, &body).expect("write");
        let loaded = load(&storage, &name, EngineConfig::default()).expect("a v5 snapshot loads");
        assert_eq!(loaded.engine.image(), image);
        let future = write_body(&storage, 13, 1, 7, &body).expect("write");
        let refused = load(&storage, &future, EngineConfig::default()).err().expect("refused");
        assert!(refused.contains("format version 7"), "{refused}");
    }

    /// An engine with every kind of row several times: SKUs with locations, deliveries and
    /// limits, a deleted SKU, reservations with allocations, and a return ticket.
    fn engine_with_every_kind_of_row() -> Engine {
        let engine = Engine::new(EngineConfig::default());
        let apply = |command: Command| engine.apply(&command, 1, || {});
        east_and_west(&engine, 10, 20);
        let (sku, location, reference) = ("a".into(), "west".into(), "po-7".into());
        apply(Command::SetIncoming { sku, location, reference, qty: 5, eta_ms: 99 });
        for n in 0..9 {
            let sku = Bytes::from(format!("s{n}"));
            apply(Command::SetStock { sku: sku.clone(), on_hand: 100, expected: None });
            apply(Command::SetPreorder { sku, preorder_max: n });
        }
        // A deleted SKU still named by a reservation that is over.
        let reserve = |id: &str, sku: &str| {
            Command::Reserve(stockd_protocol::Reserve {
                id: Bytes::copy_from_slice(id.as_bytes()),
                ttl_ms: 0,
                channel: "".into(),
                customer: "".into(),
                lines: vec![stockd_protocol::Line {
                    sku: Bytes::copy_from_slice(sku.as_bytes()),
                    qty: 1,
                }],
            })
        };
        apply(reserve("gone", "s8"));
        apply(Command::Release { id: "gone".into() });
        apply(Command::DeleteSku { sku: "s8".into() });
        for n in 0..7 {
            let reserve = Command::ReserveAt(stockd_protocol::ReserveAt {
                reserve: stockd_protocol::Reserve {
                    id: Bytes::from(format!("r{n}")),
                    ttl_ms: 0,
                    channel: "web".into(),
                    customer: "".into(),
                    lines: vec![
                        stockd_protocol::Line::new("a", 2),
                        stockd_protocol::Line::new("s1", 1),
                    ],
                },
                location: "".into(),
                split: true,
            });
            apply(reserve);
        }
        engine
    }

    #[test]
    fn a_state_split_into_many_parts_loads_whole_and_in_order() {
        let engine = engine_with_every_kind_of_row();
        let image = engine.snapshot_image();
        let counts = (image.skus.len(), image.reservations.len(), image.supplies.len());
        assert_eq!(counts, (9, 8, 8), "{image:?}");
        assert_eq!((image.locations.len(), image.deleted_skus.len()), (2, 1));
        assert!(image.allocations.len() >= 7, "{:?}", image.allocations);
        // Two rows of each kind per part: several parts, each kind running out at a
        // different one.
        let caps =
            part::Caps { skus: 2, reservations: 2, locations: 2, supplies: 2, deleted_skus: 2 };
        let parts = image.parts(&caps, &AftersalesImage::default()).len();
        assert!(parts >= 5, "{parts} parts");
        let storage = MemStorage::new();
        let name = write_split(&storage, 3, 1, &image, &caps).expect("write");
        let loaded = load(&storage, &name, EngineConfig::default()).expect("load");
        assert_eq!(loaded.engine.image(), engine.image());
        // Loaded three reservations at a time (two parts, then one), the same engine.
        let file = storage.read(&name).expect("read");
        let body = &file[SNAPSHOT_HEADER_BYTES..];
        let batched = load_parts(body, EngineConfig::default(), 3).expect("load");
        assert_eq!(batched.image(), engine.image());
        // The capture of the same state writes the same parts, byte for byte.
        let (capture, ()) = engine.capture(|| ());
        let captured = capture.finish();
        let from_capture = write_captured_split(&storage, 4, 1, &captured, &caps).expect("write");
        let (a, b) = (storage.read(&name).expect("read"), storage.read(&from_capture).unwrap());
        assert_eq!(a[64..], b[64..]);
        // One part when everything fits.
        let one = image.parts(&part::Caps::default(), &AftersalesImage::default()).len();
        assert_eq!(one, 1);
    }

    #[test]
    fn damaged_part_framing_is_refused_with_a_reason() {
        let image = engine_with_every_kind_of_row().snapshot_image();
        let caps =
            part::Caps { skus: 3, reservations: 3, locations: 3, supplies: 3, deleted_skus: 3 };
        let storage = MemStorage::new();
        let name = write_split(&storage, 3, 1, &image, &caps).expect("write");
        let file = storage.read(&name).expect("read");
        let body = &file[SNAPSHOT_HEADER_BYTES..];
        let archives = part::archives(body).expect("framing");
        assert!(archives.len() >= 3 && archives[0].start == 0);
        assert!(archives.iter().all(|a| a.start % 16 == 0));
        // A trailer claiming more than is there, parts out of order, a torn last part, and
        // no parts at all: each refused, none panics.
        let mut long = body.to_vec();
        let end = long.len();
        long[end - 16..end - 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(part::archives(&long).unwrap_err().contains("does not fit"));
        let mut renumbered = body.to_vec();
        renumbered[end - 8..end - 4].copy_from_slice(&9u32.to_le_bytes());
        assert!(part::archives(&renumbered).unwrap_err().contains("numbered 9"));
        assert!(part::archives(&body[..end - 5]).is_err());
        assert_eq!(part::archives(&[]).unwrap_err(), "no parts");
        // Through `load` (checksums made to match), a bad part is named.
        let mut torn = body.to_vec();
        let root = archives[1].end;
        torn[root - 8..root].fill(0xff);
        let name = write_body(&storage, 9, 1, SNAPSHOT_VERSION, &torn).expect("write");
        let refused = load(&storage, &name, EngineConfig::default()).err().expect("refused");
        assert!(refused.starts_with("part 1: invalid archive"), "{refused}");
        let name = write_body(&storage, 10, 1, SNAPSHOT_VERSION, &renumbered).expect("write");
        let refused = load(&storage, &name, EngineConfig::default()).err().expect("refused");
        assert_eq!(refused, "invalid archive: part 2 is numbered 9");
    }

    #[test]
    fn round_trip_and_damage_detection() {
        let storage = MemStorage::new();
        let engine = engine_with_state();
        let name = write(&storage, 42, 99, &engine.image()).expect("write");
        let loaded = load(&storage, &name, EngineConfig::default()).expect("load");
        assert_eq!((loaded.lsn, loaded.now_ms), (42, 99));
        assert_eq!(loaded.engine.image(), engine.image());

        let len = storage.with_file(&name, |bytes| bytes.len()).expect("file");
        for at in [0, 20, 61, SNAPSHOT_HEADER_BYTES + 3, len - 1] {
            let copy = "copy.snap";
            let mut damaged = storage.with_file(&name, |bytes| bytes.clone()).expect("file");
            damaged[at] ^= 0x10;
            let mut file = storage.create(copy).expect("create");
            file.write_at(0, &damaged).expect("write");
            assert!(load(&storage, copy, EngineConfig::default()).is_err(), "damage at {at}");
        }
    }

    #[test]
    fn newest_damaged_snapshot_falls_back_to_older() {
        let storage = MemStorage::new();
        let engine = engine_with_state();
        write(&storage, 10, 1, &Image::default()).expect("older");
        let newest = write(&storage, 20, 1, &engine.image()).expect("newer");
        storage.with_file(&newest, |bytes| bytes[100] ^= 1);
        let loaded = load_latest(&storage, &EngineConfig::default()).expect("io").expect("one");
        assert_eq!(loaded.lsn, 10);
    }

    #[test]
    fn prune_keeps_two() {
        let storage = MemStorage::new();
        for lsn in [5, 9, 12] {
            write(&storage, lsn, 0, &Image::default()).expect("write");
        }
        assert_eq!(prune(&storage).expect("prune"), Some(9));
        let left: Vec<u64> =
            list(&storage).expect("list").into_iter().map(|(lsn, _)| lsn).collect();
        assert_eq!(left, vec![12, 9]);
    }
}
