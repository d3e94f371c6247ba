//! The log writer: appends from every connection, one writer thread, group commit.
//!
//! `append` runs inside the engine's `on_change` callback, with the engine's shard locks held:
//! it assigns the next LSN and encodes the record into a shared, bounded buffer, so the log's
//! order is exactly the order in which changes were applied. The writer thread repeatedly takes
//! the whole buffer, writes it into the current segment with one positional write, makes it
//! durable with one `fdatasync` (mode `always`), and publishes the new durable LSN; every reply
//! waiting for an LSN up to it is then released. Many connections share each `fdatasync`.
//!
//! Failures: a failed write or `fdatasync` marks the log failed for good (read-only server); it
//! is never retried, and nothing after the last durable LSN is ever acknowledged. A full disk
//! (no spare segment can be prepared) makes the log `no_space`: writes are refused, buffered
//! records wait, and everything resumes once a segment could be prepared again.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use parking_lot::{Condvar, Mutex};
use thiserror::Error;
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::record::{encode_unsealed, record_bytes, seal, RECORD_HEADER_BYTES};
use super::segment::{
    is_recycled, is_spare, parse_spare_name, segment_name, spare_name, SegmentHeader,
    SEGMENT_HEADER_BYTES,
};
use super::storage::{Storage, StorageFile};
use super::waiters::Waiters;
use crate::engine::Command;

/// When records are made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncMode {
    /// `fdatasync` before every acknowledgement (group commit). The default.
    Always,
    /// Acknowledge once written to the OS; `fdatasync` at this interval. A crash of the machine
    /// (not of the process) may lose the last interval.
    Interval(Duration),
    /// Acknowledge once written to the OS; never `fdatasync`.
    Never,
}

#[derive(Clone, Debug)]
pub struct WalConfig {
    pub segment_bytes: u64,
    pub fsync: FsyncMode,
}

/// Whether the log accepts writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Health {
    Ok = 0,
    /// No spare segment could be prepared (disk full); resumes when one can.
    NoSpace = 1,
    /// A write or sync failed; the log accepts nothing more until restart.
    Failed = 2,
}

/// What the writer has made durable so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub durable_lsn: u64,
    pub health: Health,
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum WalError {
    #[error("the write-ahead log failed ({0}); writes are refused until restart")]
    Failed(String),
    #[error("the disk is full; writes are refused until space is freed")]
    NoSpace,
    #[error("the write-ahead log is closed")]
    Closed,
}

/// Where the writer continues after recovery.
pub struct Tail {
    /// LSN of the next record.
    pub next_lsn: u64,
    /// The segment to append to, if any, and the offset after its last record.
    pub current: Option<OpenSegment>,
    /// Index for the next new segment.
    pub next_index: u64,
}

pub struct OpenSegment {
    pub index: u64,
    pub file: Box<dyn StorageFile>,
    pub offset: u64,
}

/// Counters for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct WalStats {
    pub bytes_written: AtomicU64,
    pub records_written: AtomicU64,
    pub fsyncs: AtomicU64,
    pub fsync_nanos_total: AtomicU64,
    pub segments_created: AtomicU64,
}

struct Pending {
    buf: BytesMut,
    next_lsn: u64,
    closing: bool,
    /// The writer leaves the buffer alone while this is set (see [`Wal::hold`]).
    held: bool,
}

struct Inner {
    pending: Mutex<Pending>,
    wake_writer: Condvar,
    room: Condvar,
    /// The last LSN made durable; only the writer thread raises it.
    durable_lsn: AtomicU64,
    /// Tasks waiting for records to become durable (see [`Wal::durable`]).
    waiters: Mutex<Waiters>,
    /// The same progress for observers (see [`Wal::subscribe`]).
    progress: watch::Sender<Progress>,
    health: AtomicU8,
    /// Set once the writer has stopped: nothing more will become durable.
    closed: AtomicBool,
    failure: Mutex<Option<String>>,
    /// The preparer's last error, while it cannot prepare a spare segment.
    prepare_error: Mutex<Option<String>>,
    stats: WalStats,
}

impl Inner {
    fn health(&self) -> Health {
        match self.health.load(Ordering::Acquire) {
            0 => Health::Ok,
            1 => Health::NoSpace,
            _ => Health::Failed,
        }
    }

    /// Changes the health, except that `Failed` is final.
    fn set_health(&self, health: Health) {
        let failed = Health::Failed as u8;
        let changed = self.health.fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
            (h != failed).then_some(health as u8)
        });
        if changed.is_ok() {
            self.progress.send_modify(|p| p.health = health);
            self.wake_all();
        }
    }

    /// Publishes that every record up to `lsn` is durable and wakes the tasks waiting for
    /// them (first the LSN, then the waiters: see `waiters`).
    fn publish_durable(&self, lsn: u64) {
        if self.durable_lsn.fetch_max(lsn, Ordering::AcqRel) >= lsn {
            return;
        }
        let reached = self.waiters.lock().reached(lsn);
        reached.into_iter().for_each(Waker::wake);
        self.progress.send_modify(|p| p.durable_lsn = p.durable_lsn.max(lsn));
    }

    fn wake_all(&self) {
        let all = self.waiters.lock().all();
        all.into_iter().for_each(Waker::wake);
    }

    /// How a wait for record `lsn` ends, if it ends now.
    fn outcome(&self, lsn: u64) -> Option<Result<(), WalError>> {
        if self.durable_lsn.load(Ordering::Acquire) >= lsn {
            return Some(Ok(()));
        }
        match self.health() {
            Health::NoSpace => Some(Err(WalError::NoSpace)),
            Health::Failed => Some(Err(WalError::Failed("records were not made durable".into()))),
            Health::Ok if self.closed.load(Ordering::Acquire) => Some(Err(WalError::Closed)),
            Health::Ok => None,
        }
    }

    fn fail(&self, what: String) {
        error!(error = %what, "write-ahead log failed: refusing all writes until restart");
        *self.failure.lock() = Some(what);
        self.set_health(Health::Failed);
        self.room.notify_all();
    }
}

/// The write-ahead log, open for appending.
pub struct Wal {
    inner: Arc<Inner>,
    writer: Mutex<Option<JoinHandle<()>>>,
    preparer: Mutex<Option<JoinHandle<()>>>,
    recycle: Sender<String>,
    /// Dropped to stop the preparer (it waits on the other end, so it stops at once).
    stop_preparer: Mutex<Option<Sender<()>>>,
}

impl Wal {
    /// Starts the writer and the segment preparer after recovery. `recyclable` lists old
    /// segment files that may be zeroed and reused.
    ///
    /// Syncs the tail segment first: what recovery read may be only in the page cache (a
    /// process crash after a write whose sync never came), and new records will say that
    /// everything before them is durable.
    pub fn start(storage: Arc<dyn Storage>, config: WalConfig, mut tail: Tail) -> io::Result<Wal> {
        assert!(
            config.segment_bytes as usize
                >= SEGMENT_HEADER_BYTES + record_bytes(super::record::RECORD_PAYLOAD_BYTES_MAX),
            "a segment holds at least one maximal record"
        );
        if let Some(current) = tail.current.as_mut() {
            current.file.sync_data()?;
        }
        let durable_lsn = tail.next_lsn - 1;
        let (progress, _) = watch::channel(Progress { durable_lsn, health: Health::Ok });
        let inner = Arc::new(Inner {
            pending: Mutex::new(Pending {
                buf: BytesMut::with_capacity(1 << 20),
                next_lsn: tail.next_lsn,
                closing: false,
                held: false,
            }),
            wake_writer: Condvar::new(),
            room: Condvar::new(),
            durable_lsn: AtomicU64::new(durable_lsn),
            waiters: Mutex::new(Waiters::default()),
            progress,
            health: AtomicU8::new(Health::Ok as u8),
            closed: AtomicBool::new(false),
            failure: Mutex::new(None),
            prepare_error: Mutex::new(None),
            stats: WalStats::default(),
        });
        // A rendezvous channel: the preparer holds one ready spare until the writer takes it,
        // so exactly one spare segment sits on disk.
        let (spare_tx, spare_rx) = bounded::<Spare>(0);
        let (recycle_tx, recycle_rx) = bounded::<String>(1024);
        // New spares are numbered after every spare already on disk, so no rename can land on
        // a file that is still queued for reuse.
        let mut spare_serial = 0;
        for name in storage.list()? {
            spare_serial = spare_serial.max(parse_spare_name(&name).unwrap_or(0));
            // Spares prepared before a restart carry no data but may be partly zeroed: they are
            // zeroed again and reused, like recycled segments.
            if is_recycled(&name) || is_spare(&name) {
                let _ = recycle_tx.try_send(name);
            }
        }
        let (stop_preparer, stop) = bounded::<()>(0);
        let preparer = {
            let (storage, inner) = (storage.clone(), inner.clone());
            let bytes = config.segment_bytes;
            std::thread::Builder::new().name("stockd-wal-prepare".into()).spawn(move || {
                prepare_loop(&*storage, bytes, &inner, &spare_tx, &recycle_rx, &stop, spare_serial)
            })?
        };
        let writer = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("stockd-wal-writer".into())
                .spawn(move || Writer::new(storage, config, tail, inner, spare_rx).run())?
        };
        Ok(Wal {
            inner,
            writer: Mutex::new(Some(writer)),
            preparer: Mutex::new(Some(preparer)),
            recycle: recycle_tx,
            stop_preparer: Mutex::new(Some(stop_preparer)),
        })
    }

    /// Logs a command applied at `now_ms` and returns its LSN. Called with the engine's locks
    /// held, in the order changes are applied.
    ///
    /// The change is already applied in memory when this runs, so a refusal leaves memory ahead
    /// of the log: any refusal therefore fails the log for good (read-only until restart, no
    /// snapshot of the live state), and recovery rebuilds a state the log fully describes.
    pub fn append(&self, now_ms: u64, command: &Command) -> Result<u64, WalError> {
        let mut pending = self.inner.pending.lock();
        loop {
            let refused = match self.inner.health() {
                Health::Failed => return Err(self.failed_error()),
                _ if pending.closing => Some(WalError::Closed),
                // Over the bound while no segment can be prepared: refuse rather than block.
                Health::NoSpace if pending.buf.len() >= PENDING_BYTES_MAX => {
                    Some(WalError::NoSpace)
                }
                _ => None,
            };
            if let Some(error) = refused {
                drop(pending);
                self.inner.fail(format!("a change could not be logged: {error}"));
                return Err(error);
            }
            if pending.buf.len() < PENDING_BYTES_MAX {
                break;
            }
            self.inner.room.wait(&mut pending);
        }
        let lsn = pending.next_lsn;
        pending.next_lsn += 1;
        encode_unsealed(&mut pending.buf, lsn, now_ms, command);
        drop(pending);
        self.inner.wake_writer.notify_one();
        Ok(lsn)
    }

    fn failed_error(&self) -> WalError {
        WalError::Failed(self.inner.failure.lock().clone().unwrap_or_default())
    }

    /// Holds the writer back until the guard is dropped, so every record appended meanwhile is
    /// written with one write and made durable with one sync: a group commit of exactly those
    /// records. The deterministic simulator uses it to make group commits reproducible; the
    /// server never does. Appends still block once the buffer's bound is reached, so hold only
    /// for a few records.
    pub fn hold(&self) -> WriterHold<'_> {
        self.inner.pending.lock().held = true;
        WriterHold { inner: &self.inner }
    }

    /// The LSN of the last appended record (durable or not).
    pub fn last_lsn(&self) -> u64 {
        self.inner.pending.lock().next_lsn - 1
    }

    pub fn health(&self) -> Health {
        self.inner.health()
    }

    /// Progress updates, to watch the log (tests, tools). Replies wait with
    /// [`Wal::durable`], which wakes only the waiters a commit reached.
    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.inner.progress.subscribe()
    }

    pub fn progress(&self) -> Progress {
        let durable_lsn = self.inner.durable_lsn.load(Ordering::Acquire);
        Progress { durable_lsn, health: self.inner.health() }
    }

    pub fn stats(&self) -> &WalStats {
        &self.inner.stats
    }

    /// Hands an old segment file (already renamed to a recycle name) to the preparer.
    pub fn recycle(&self, name: String) {
        let _ = self.recycle.try_send(name);
    }

    /// Waits until every record up to `lsn` is durable, or the log cannot accept writes or
    /// has closed (then the records may never become durable, and nothing depending on them
    /// may be acknowledged). The task is woken by the commit that reaches `lsn`, not by
    /// earlier ones.
    pub fn durable(&self, lsn: u64) -> Durable<'_> {
        Durable { inner: &self.inner, lsn, key: None }
    }

    /// Writes and syncs everything appended, then stops the threads; later appends are
    /// refused. Returns the final progress.
    pub fn close(&self) -> Progress {
        self.inner.pending.lock().closing = true;
        self.inner.wake_writer.notify_one();
        self.inner.room.notify_all();
        if let Some(writer) = self.writer.lock().take() {
            let _ = writer.join();
        }
        self.inner.closed.store(true, Ordering::Release);
        self.inner.wake_all();
        drop(self.stop_preparer.lock().take());
        if let Some(preparer) = self.preparer.lock().take() {
            let _ = preparer.join();
        }
        self.progress()
    }
}

/// A wait for durability; see [`Wal::durable`].
pub struct Durable<'a> {
    inner: &'a Inner,
    lsn: u64,
    /// Where its waker was left, while it waits.
    key: Option<(u64, u64)>,
}

impl Future for Durable<'_> {
    type Output = Result<(), WalError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.inner;
        if let Some(outcome) = inner.outcome(self.lsn) {
            // Whatever ended the wait takes out (or has taken out) every waker it ended.
            self.key = None;
            return Poll::Ready(outcome);
        }
        let mut waiters = inner.waiters.lock();
        if let Some(outcome) = inner.outcome(self.lsn) {
            self.key = None;
            return Poll::Ready(outcome);
        }
        self.key = Some(waiters.register(self.key, self.lsn, cx.waker()));
        Poll::Pending
    }
}

impl Drop for Durable<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.inner.waiters.lock().remove(key);
        }
    }
}

/// Keeps the writer waiting; see [`Wal::hold`].
pub struct WriterHold<'a> {
    inner: &'a Inner,
}

impl Drop for WriterHold<'_> {
    fn drop(&mut self) {
        self.inner.pending.lock().held = false;
        self.inner.wake_writer.notify_one();
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.close();
    }
}

/// Bound on records waiting for the writer: about a second of peak traffic.
pub const PENDING_BYTES_MAX: usize = 16 * 1024 * 1024;

/// How long the preparer waits before trying again to make a spare segment (disk full).
const PREPARE_RETRY: Duration = Duration::from_millis(200);

/// A prepared, zeroed segment file under its temporary name.
struct Spare {
    name: String,
    file: Box<dyn StorageFile>,
}

struct Writer {
    storage: Arc<dyn Storage>,
    config: WalConfig,
    inner: Arc<Inner>,
    current: Option<OpenSegment>,
    next_index: u64,
    spares: Receiver<Spare>,
    unsynced: bool,
    last_sync: Instant,
    /// The last LSN written, and the last one made durable: records carry the latter.
    written_lsn: u64,
    synced_lsn: u64,
}

impl Writer {
    fn new(
        storage: Arc<dyn Storage>,
        config: WalConfig,
        tail: Tail,
        inner: Arc<Inner>,
        spares: Receiver<Spare>,
    ) -> Writer {
        Writer {
            storage,
            config,
            inner,
            current: tail.current,
            next_index: tail.next_index,
            spares,
            unsynced: false,
            last_sync: Instant::now(),
            written_lsn: tail.next_lsn - 1,
            synced_lsn: tail.next_lsn - 1,
        }
    }

    fn run(mut self) {
        let mut buf = BytesMut::with_capacity(1 << 20);
        loop {
            let (last_lsn, closing) = {
                let mut pending = self.inner.pending.lock();
                while (pending.buf.is_empty() || pending.held) && !pending.closing {
                    match self.config.fsync {
                        FsyncMode::Interval(every) if self.unsynced => {
                            let due = self.last_sync + every;
                            let now = Instant::now();
                            if now >= due
                                || self
                                    .inner
                                    .wake_writer
                                    .wait_for(&mut pending, due - now)
                                    .timed_out()
                            {
                                break;
                            }
                        }
                        _ => self.inner.wake_writer.wait(&mut pending),
                    }
                }
                std::mem::swap(&mut buf, &mut pending.buf);
                self.inner.room.notify_all();
                (pending.next_lsn - 1, pending.closing)
            };
            if !buf.is_empty() {
                if let Err(e) = self.write(&mut buf) {
                    self.inner.fail(format!("write failed: {e}"));
                    return;
                }
                buf.clear();
            }
            let sync_now = match self.config.fsync {
                FsyncMode::Always => true,
                FsyncMode::Interval(every) => closing || self.last_sync.elapsed() >= every,
                FsyncMode::Never => false,
            };
            if sync_now && self.unsynced {
                if let Err(e) = self.sync() {
                    self.inner.fail(format!("fdatasync failed: {e}"));
                    return;
                }
            }
            self.inner.publish_durable(last_lsn);
            if closing && self.inner.pending.lock().buf.is_empty() {
                return;
            }
        }
    }

    fn sync(&mut self) -> io::Result<()> {
        let Some(current) = self.current.as_mut() else { return Ok(()) };
        let started = Instant::now();
        current.file.sync_data()?;
        let stats = &self.inner.stats;
        stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        stats.fsync_nanos_total.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.unsynced = false;
        self.synced_lsn = self.written_lsn;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Writes whole records, starting new segments where the current one is full.
    fn write(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let mut chunk_start = 0;
        let mut pos = 0;
        let mut records = 0u64;
        while pos < buf.len() {
            let payload_len = u32::from_le_bytes(buf[pos..pos + 4].try_into().expect("4 bytes"));
            let len = record_bytes(payload_len as usize);
            debug_assert!(len >= RECORD_HEADER_BYTES);
            let fits = self.current.as_ref().is_some_and(|c| {
                c.offset + (pos - chunk_start + len) as u64 <= self.config.segment_bytes
            });
            if !fits {
                self.write_chunk(&mut buf[chunk_start..pos])?;
                let lsn = u64::from_le_bytes(buf[pos + 8..pos + 16].try_into().expect("8 bytes"));
                self.next_segment(lsn)?;
                chunk_start = pos;
            }
            pos += len;
            records += 1;
        }
        self.write_chunk(&mut buf[chunk_start..])?;
        self.inner.stats.records_written.fetch_add(records, Ordering::Relaxed);
        Ok(())
    }

    /// Seals the chunk's records with the current durable LSN and writes them.
    fn write_chunk(&mut self, chunk: &mut [u8]) -> io::Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        let (mut at, mut last_lsn) = (0, self.written_lsn);
        while at < chunk.len() {
            let (lsn, len) = seal(&mut chunk[at..], Some(self.synced_lsn));
            (at, last_lsn) = (at + len, lsn);
        }
        let current = self.current.as_mut().expect("a segment is open before records are written");
        current.file.write_at(current.offset, chunk)?;
        current.offset += chunk.len() as u64;
        self.unsynced = true;
        self.written_lsn = last_lsn;
        self.inner.stats.bytes_written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Finishes the current segment (durably) and starts the next one at `first_lsn`.
    fn next_segment(&mut self, first_lsn: u64) -> io::Result<()> {
        if self.current.is_some() && self.unsynced && self.config.fsync != FsyncMode::Never {
            self.sync()?;
        }
        let Spare { name, mut file } = self.take_spare()?;
        let index = self.next_index;
        file.write_at(0, &SegmentHeader { index, first_lsn }.encode())?;
        file.sync_data()?;
        self.storage.rename(&name, &segment_name(index))?;
        self.storage.sync_dir()?;
        self.inner.stats.segments_created.fetch_add(1, Ordering::Relaxed);
        self.current = Some(OpenSegment { index, file, offset: SEGMENT_HEADER_BYTES as u64 });
        self.next_index += 1;
        Ok(())
    }

    fn take_spare(&mut self) -> io::Result<Spare> {
        loop {
            match self.spares.recv_timeout(Duration::from_millis(100)) {
                Ok(spare) => {
                    if self.inner.health() == Health::NoSpace {
                        info!("a new log segment is ready: accepting writes again");
                        self.inner.set_health(Health::Ok);
                    }
                    return Ok(spare);
                }
                Err(RecvTimeoutError::Timeout) => {
                    if self.inner.pending.lock().closing {
                        // Shutting down while no segment can be prepared: what is buffered was
                        // never acknowledged, and stays so.
                        return Err(io::Error::other("closing while no log segment is available"));
                    }
                    if let Some(why) = self.inner.prepare_error.lock().clone() {
                        if self.inner.health() == Health::Ok {
                            warn!(error = %why, "no log segment can be prepared: refusing writes");
                            self.inner.set_health(Health::NoSpace);
                        }
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(io::Error::other("segment preparer stopped"));
                }
            }
        }
    }
}

/// Keeps one zeroed spare segment ready, reusing recycled segments when there are any. Stops as
/// soon as `stop`'s sender is dropped.
fn prepare_loop(
    storage: &dyn Storage,
    segment_bytes: u64,
    inner: &Inner,
    spares: &Sender<Spare>,
    recycled: &Receiver<String>,
    stop: &Receiver<()>,
    mut serial: u64,
) {
    let mut reuse: Option<String> = None;
    loop {
        if reuse.is_none() {
            reuse = recycled.try_recv().ok();
        }
        serial += 1;
        let name = spare_name(serial);
        let prepared = match reuse.take() {
            Some(old) => {
                storage.rename(&old, &name).and_then(|()| storage.rezero(&name, segment_bytes))
            }
            None => storage.create_zeroed(&name, segment_bytes),
        };
        match prepared {
            Ok(file) => {
                *inner.prepare_error.lock() = None;
                crossbeam_channel::select! {
                    send(spares, Spare { name, file }) -> sent => if sent.is_err() { return },
                    recv(stop) -> _ => return,
                }
            }
            Err(e) => {
                *inner.prepare_error.lock() = Some(e.to_string());
                let _ = storage.remove(&name);
                // Try again later (space may be freed), unless told to stop meanwhile.
                if stop.recv_timeout(PREPARE_RETRY) != Err(RecvTimeoutError::Timeout) {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::storage::MemStorage;

    fn start(storage: &MemStorage, fsync: FsyncMode) -> Wal {
        let tail = Tail { next_lsn: 1, current: None, next_index: 1 };
        let config = WalConfig { segment_bytes: 1024 * 1024, fsync };
        Wal::start(Arc::new(storage.clone()), config, tail).expect("start")
    }

    fn command(i: u64) -> Command {
        Command::SetStock { sku: format!("s{i}").into(), on_hand: i, expected: None }
    }

    #[test]
    fn appends_get_consecutive_lsns_and_become_durable() {
        let storage = MemStorage::new();
        let wal = start(&storage, FsyncMode::Always);
        for i in 1..=100 {
            assert_eq!(wal.append(i, &command(i)), Ok(i));
        }
        assert_eq!(wal.last_lsn(), 100);
        let progress = wal.close();
        assert_eq!(progress, Progress { durable_lsn: 100, health: Health::Ok });
        assert!(storage.syncs() >= 2, "the segment header and the records were synced");
        assert_eq!(wal.stats().records_written.load(Ordering::Relaxed), 100);
    }

    struct Count(AtomicU64);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Polls `wait` once with a waker that counts its wake-ups.
    fn poll_counted(wait: &mut Durable<'_>) -> (Poll<Result<(), WalError>>, Arc<Count>) {
        let count = Arc::new(Count(AtomicU64::new(0)));
        let waker = Waker::from(count.clone());
        (Pin::new(wait).poll(&mut Context::from_waker(&waker)), count)
    }

    #[test]
    fn a_commit_wakes_only_the_waits_it_reached_and_closing_ends_the_rest() {
        let storage = MemStorage::new();
        let wal = start(&storage, FsyncMode::Always);
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let hold = wal.hold();
        wal.append(1, &command(1)).expect("append");
        let (mut first, mut second) = (wal.durable(1), wal.durable(2));
        let (polled, first_wakes) = poll_counted(&mut first);
        assert!(polled.is_pending());
        let (polled, second_wakes) = poll_counted(&mut second);
        assert!(polled.is_pending());
        drop(hold);
        runtime.block_on(wal.durable(1)).expect("durable");
        assert_eq!(first_wakes.0.load(Ordering::Relaxed), 1, "woken by the commit of record 1");
        assert_eq!(second_wakes.0.load(Ordering::Relaxed), 0, "record 2 was never committed");
        assert!(matches!(poll_counted(&mut first).0, Poll::Ready(Ok(()))));
        wal.close();
        assert_eq!(second_wakes.0.load(Ordering::Relaxed), 1, "closing wakes every waiter");
        assert!(matches!(poll_counted(&mut second).0, Poll::Ready(Err(WalError::Closed))));
        let cancelled = wal.durable(3);
        drop(cancelled);
        assert_eq!(wal.inner.waiters.lock().len(), 0, "nothing left waiting");
    }

    #[test]
    fn mode_never_does_not_sync_records() {
        let storage = MemStorage::new();
        let wal = start(&storage, FsyncMode::Never);
        wal.append(1, &command(1)).expect("append");
        wal.close();
        assert_eq!(wal.stats().fsyncs.load(Ordering::Relaxed), 0);
        storage.crash();
        let data = storage.files().into_iter().find(|(n, _)| n.ends_with(".seg")).expect("seg");
        assert!(data.1[SEGMENT_HEADER_BYTES..].iter().all(|b| *b == 0), "unsynced data is lost");
    }

    #[test]
    fn a_refused_append_fails_the_log_for_good() {
        let storage = MemStorage::new();
        let wal = start(&storage, FsyncMode::Always);
        wal.append(1, &command(1)).expect("append");
        wal.close();
        assert_eq!(wal.append(2, &command(2)), Err(WalError::Closed));
        assert_eq!(wal.health(), Health::Failed, "memory is ahead of the log: read-only");
        assert!(matches!(wal.append(3, &command(3)), Err(WalError::Failed(_))));
    }

    #[test]
    fn stale_spares_are_zeroed_and_reused_and_one_spare_at_most_remains() {
        let storage = MemStorage::new();
        // A spare left by a crash in the middle of its zeroing.
        storage.put(&spare_name(7), vec![0xaa; 1024 * 1024]);
        let wal = start(&storage, FsyncMode::Always);
        wal.append(1, &command(1)).expect("append");
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        runtime.block_on(wal.durable(1)).expect("durable");
        wal.close();
        let files = storage.files();
        let segments: Vec<&(String, Vec<u8>)> =
            files.iter().filter(|(n, _)| n.ends_with(".seg")).collect();
        let spares: Vec<&String> = files.iter().map(|(n, _)| n).filter(|n| is_spare(n)).collect();
        assert_eq!(segments.len(), 1, "{files:?}");
        assert!(spares.len() <= 1, "at most one spare: {spares:?}");
        assert!(spares.iter().all(|n| parse_spare_name(n) > Some(8)), "numbered after: {spares:?}");
        let data = &segments[0].1;
        assert!(!data.contains(&0xaa), "the reused spare was zeroed before use");
    }

    #[test]
    fn a_failed_sync_is_never_retried() {
        let storage = MemStorage::new();
        let wal = start(&storage, FsyncMode::Always);
        wal.append(1, &command(1)).expect("append");
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        runtime.block_on(wal.durable(1)).expect("durable");
        storage.fail_syncs(true);
        wal.append(2, &command(2)).expect("accepted before the failure is known");
        let result = runtime.block_on(wal.durable(2));
        assert!(matches!(result, Err(WalError::Failed(_))), "{result:?}");
        storage.fail_syncs(false);
        assert!(matches!(wal.append(3, &command(3)), Err(WalError::Failed(_))));
        assert_eq!(wal.progress().durable_lsn, 1, "nothing after the failure became durable");
    }
}
