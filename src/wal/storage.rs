//! The narrow storage interface the WAL and snapshots use, with two implementations: real files
//! in a directory (positional writes, `fdatasync`, reads through memory maps) and an in-memory
//! directory that can inject faults and simulate power loss. Tests and the deterministic
//! simulator (`tests/it/simulation.rs`) use the second to exercise failure paths without root,
//! a full disk or a power switch.
//!
//! What [`MemStorage`] can do to the code above it:
//! - EIO on every `sync_data` ([`MemStorage::fail_syncs`]) or on the next write
//!   ([`MemStorage::fail_next_write`]);
//! - ENOSPC on allocation while the disk is "full" ([`MemStorage::set_disk_full`]): creating a
//!   zeroed file, or a write that grows a file (rewriting allocated bytes still works, as on a
//!   real file system);
//! - a power cut during the n-th `sync_data` from now ([`MemStorage::cut_power_at_sync`]): that
//!   sync fails, makes nothing durable, and every later write or sync fails until the crash;
//! - a crash: every file reverts to its synced content ([`MemStorage::crash`]), or additionally
//!   keeps any chosen subset of the 512-byte sectors written since its last sync
//!   ([`MemStorage::crash_keeping`]), which models torn and reordered writes.
//!
//! Names (create, rename, remove) are durable at once; the directory sync is not modelled.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Deref;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Bytes of a whole file, read-only.
pub enum Contents {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Deref for Contents {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Contents::Mapped(map) => map,
            Contents::Owned(bytes) => bytes,
        }
    }
}

/// An open file for writing.
pub trait StorageFile: Send {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes written data durable (`fdatasync`).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Cuts the file to `len` bytes (used to drop a torn tail).
    fn set_len(&mut self, len: u64) -> io::Result<()>;
}

/// A directory of files.
pub trait Storage: Send + Sync {
    /// File names in the directory.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Creates (or truncates) a file of `len` bytes, all zero and allocated on disk, and syncs
    /// it. Fails with ENOSPC when the disk is full.
    fn create_zeroed(&self, name: &str, len: u64) -> io::Result<Box<dyn StorageFile>>;
    /// Creates (or truncates) an empty file for sequential writing.
    fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>>;
    /// Opens an existing file for writing.
    fn open(&self, name: &str) -> io::Result<Box<dyn StorageFile>>;
    /// Overwrites an existing file's first `len` bytes with zeros in place (reusing its blocks)
    /// and syncs it.
    fn rezero(&self, name: &str, len: u64) -> io::Result<Box<dyn StorageFile>>;
    /// The whole content of a file (memory-mapped for real files).
    fn read(&self, name: &str) -> io::Result<Contents>;
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Makes creations, renames and removals durable (`fsync` of the directory).
    fn sync_dir(&self) -> io::Result<()>;
    /// Free bytes on the device, when known.
    fn free_bytes(&self) -> Option<u64>;
}

// ---------------------------------------------------------------------------------------------

/// Files in a real directory.
pub struct DirStorage {
    dir: PathBuf,
}

impl DirStorage {
    /// Uses `dir`, creating it if needed.
    pub fn open(dir: &Path) -> io::Result<DirStorage> {
        std::fs::create_dir_all(dir)?;
        Ok(DirStorage { dir: dir.to_path_buf() })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// An exclusive lock on a data directory (`flock` on its `LOCK` file), held by the server for
/// as long as it runs and by offline tools (`stockd keys` without `--http`), so two processes
/// never write one directory. The kernel releases it when the process ends, however it ends.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// The lock file's name in a data directory.
pub const LOCK_FILE: &str = "LOCK";

impl DirLock {
    /// Takes the lock without waiting; fails with `WouldBlock` while another process holds it.
    pub fn acquire(dir: &Path) -> io::Result<DirLock> {
        std::fs::create_dir_all(dir)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(DirLock { _file: file }),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "another stockd process is using this data directory",
            )),
            Err(e) => Err(e.into()),
        }
    }
}

struct DirFile(File);

fn write_zeros(file: &File, len: u64) -> io::Result<()> {
    let chunk = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    while offset < len {
        let n = (len - offset).min(chunk.len() as u64) as usize;
        file.write_all_at(&chunk[..n], offset)?;
        offset += n as u64;
    }
    Ok(())
}

impl StorageFile for DirFile {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.write_all_at(data, offset)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

impl Storage for DirStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    fn create_zeroed(&self, name: &str, len: u64) -> io::Result<Box<dyn StorageFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.dir.join(name))?;
        // Writing the zeros (rather than only reserving space) makes every block allocated and
        // initialised, so later writes into the segment never allocate and cannot hit ENOSPC.
        write_zeros(&file, len)?;
        file.sync_all()?;
        Ok(Box::new(DirFile(file)))
    }

    fn rezero(&self, name: &str, len: u64) -> io::Result<Box<dyn StorageFile>> {
        let file = OpenOptions::new().read(true).write(true).open(self.dir.join(name))?;
        write_zeros(&file, len)?;
        file.sync_all()?;
        Ok(Box::new(DirFile(file)))
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        let file =
            OpenOptions::new().write(true).create(true).truncate(true).open(self.dir.join(name))?;
        Ok(Box::new(DirFile(file)))
    }

    fn open(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        let file = OpenOptions::new().read(true).write(true).open(self.dir.join(name))?;
        Ok(Box::new(DirFile(file)))
    }

    fn read(&self, name: &str) -> io::Result<Contents> {
        let file = File::open(self.dir.join(name))?;
        if file.metadata()?.len() == 0 {
            return Ok(Contents::Owned(Vec::new()));
        }
        // SAFETY: stockd's files are only written through positional writes by this process;
        // a mapped range is never truncated while mapped (segments keep their size).
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(Contents::Mapped(map))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.dir.join(from), self.dir.join(to))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.dir.join(name))
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    fn free_bytes(&self) -> Option<u64> {
        let stat = rustix::fs::statvfs(&self.dir).ok()?;
        Some(stat.f_bavail.saturating_mul(stat.f_frsize))
    }
}

// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct MemFileState {
    /// What a read sees.
    live: Vec<u8>,
    /// What survives a crash.
    durable: Vec<u8>,
    /// Writes since the last sync, in order, as (offset, bytes): what a crash may tear.
    unsynced: Vec<(u64, Vec<u8>)>,
}

impl MemFileState {
    fn synced(live: Vec<u8>) -> MemFileState {
        MemFileState { durable: live.clone(), live, unsynced: Vec::new() }
    }

    fn sync(&mut self) {
        self.durable = self.live.clone();
        self.unsynced.clear();
    }
}

/// The unit a disk writes atomically: a crash keeps or loses whole sectors.
pub const SECTOR_BYTES: u64 = 512;

/// A file's content, shared by its directory entry and open handles (like an inode), so a
/// rename does not disturb an open handle.
type MemInode = Arc<Mutex<MemFileState>>;

#[derive(Default)]
struct MemState {
    files: BTreeMap<String, MemInode>,
    /// Fail every `sync_data` from now on with EIO.
    fail_sync: bool,
    /// Fail every `sync_dir` from now on with EIO.
    fail_dir_sync: bool,
    /// Fail allocations with ENOSPC.
    disk_full: bool,
    /// Allocations refused so far.
    enospc: u64,
    /// Fail the next `write_at` with EIO.
    fail_write: bool,
    /// Cut the power at the n-th `sync_data` from now (1 = the next).
    power_cut_in: Option<u64>,
    /// The power is off: every write and sync fails until `crash`.
    powered_off: bool,
    syncs: u64,
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(5)
}

fn enospc() -> io::Error {
    io::Error::from_raw_os_error(28)
}

/// An in-memory directory with fault injection. Clones share the same files.
#[derive(Clone, Default)]
pub struct MemStorage {
    state: Arc<Mutex<MemState>>,
}

fn lock_inode(inode: &MemInode) -> std::sync::MutexGuard<'_, MemFileState> {
    inode.lock().expect("mem file lock")
}

fn not_found() -> io::Error {
    io::Error::from(io::ErrorKind::NotFound)
}

impl MemStorage {
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemState> {
        self.state.lock().expect("mem storage lock")
    }

    fn inode(&self, name: &str) -> io::Result<MemInode> {
        self.lock().files.get(name).cloned().ok_or_else(not_found)
    }

    fn handle(&self, inode: MemInode) -> Box<dyn StorageFile> {
        Box::new(MemFile { storage: self.clone(), inode })
    }

    /// From now on every `sync_data` fails with EIO (as a failing disk would).
    pub fn fail_syncs(&self, fail: bool) {
        self.lock().fail_sync = fail;
    }

    /// From now on every `sync_dir` fails with EIO (renames may not be durable).
    pub fn fail_dir_syncs(&self, fail: bool) {
        self.lock().fail_dir_sync = fail;
    }

    /// From now on allocating fails with ENOSPC (creating a zeroed file, growing a file),
    /// until called with `false`.
    pub fn set_disk_full(&self, full: bool) {
        self.lock().disk_full = full;
    }

    /// Whether the disk is "full".
    pub fn disk_full(&self) -> bool {
        self.lock().disk_full
    }

    /// Allocations refused with ENOSPC so far.
    pub fn enospc_count(&self) -> u64 {
        self.lock().enospc
    }

    /// The next `write_at` (of any file) fails with EIO and writes nothing.
    pub fn fail_next_write(&self) {
        self.lock().fail_write = true;
    }

    /// The power fails during the `n`-th `sync_data` from now (1 = the next): that call makes
    /// nothing durable and returns EIO, and every later write and sync fails too, until
    /// [`MemStorage::crash`] or [`MemStorage::crash_keeping`] "restarts the machine".
    pub fn cut_power_at_sync(&self, n: u64) {
        assert!(n >= 1, "the first sync is 1");
        self.lock().power_cut_in = Some(n);
    }

    /// The power fails now: every later write and sync fails until [`MemStorage::crash`] or
    /// [`MemStorage::crash_keeping`] "restarts the machine".
    pub fn power_off(&self) {
        self.lock().powered_off = true;
    }

    /// Whether the power was cut (and the machine not yet restarted).
    pub fn powered_off(&self) -> bool {
        self.lock().powered_off
    }

    /// Number of successful `sync_data` calls so far.
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// Simulates power loss: every file reverts to its last synced content. Clears every
    /// injected fault but a full disk.
    pub fn crash(&self) {
        self.crash_keeping(|_, _| false);
    }

    /// Simulates power loss that tears the writes in flight: every file reverts to its last
    /// synced content, except that each 512-byte sector written since its last sync, in write
    /// order, survives when `keep(file name, sector offset)` says so. Any subset can survive,
    /// so this models a torn last write (a prefix of sectors kept) as well as a disk that
    /// reorders writes (later sectors kept, earlier ones lost). Files are visited in name
    /// order and sectors in write order, so a seeded `keep` makes the crash reproducible.
    pub fn crash_keeping(&self, mut keep: impl FnMut(&str, u64) -> bool) {
        let mut state = self.lock();
        for (name, inode) in &state.files {
            let mut file = lock_inode(inode);
            let mut survived = file.durable.clone();
            for (offset, data) in std::mem::take(&mut file.unsynced) {
                let mut at = offset;
                let end = offset + data.len() as u64;
                while at < end {
                    let sector_end = ((at / SECTOR_BYTES) + 1) * SECTOR_BYTES;
                    let piece_end = sector_end.min(end);
                    if keep(name, at - at % SECTOR_BYTES) {
                        let piece = &data[(at - offset) as usize..(piece_end - offset) as usize];
                        if survived.len() < piece_end as usize {
                            survived.resize(piece_end as usize, 0);
                        }
                        survived[at as usize..piece_end as usize].copy_from_slice(piece);
                    }
                    at = piece_end;
                }
            }
            file.durable = survived.clone();
            file.live = survived;
        }
        state.fail_sync = false;
        state.fail_write = false;
        state.power_cut_in = None;
        state.powered_off = false;
    }

    /// Creates (or replaces) a file with the given durable content.
    pub fn put(&self, name: &str, bytes: Vec<u8>) {
        self.lock()
            .files
            .insert(name.to_string(), Arc::new(Mutex::new(MemFileState::synced(bytes))));
    }

    /// A copy of every file's live content.
    pub fn files(&self) -> Vec<(String, Vec<u8>)> {
        let state = self.lock();
        state.files.iter().map(|(name, f)| (name.clone(), lock_inode(f).live.clone())).collect()
    }

    /// Direct access to a file's live bytes, to damage them in tests (the change is durable).
    pub fn with_file<R>(&self, name: &str, f: impl FnOnce(&mut Vec<u8>) -> R) -> Option<R> {
        let inode = self.inode(name).ok()?;
        let mut file = lock_inode(&inode);
        let result = f(&mut file.live);
        file.sync();
        Some(result)
    }
}

struct MemFile {
    storage: MemStorage,
    inode: MemInode,
}

impl StorageFile for MemFile {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut state = self.storage.lock();
        if state.powered_off || std::mem::take(&mut state.fail_write) {
            return Err(eio());
        }
        let mut file = lock_inode(&self.inode);
        let end = offset as usize + data.len();
        if file.live.len() < end {
            if state.disk_full {
                state.enospc += 1;
                return Err(enospc());
            }
            file.live.resize(end, 0);
        }
        file.live[offset as usize..end].copy_from_slice(data);
        file.unsynced.push((offset, data.to_vec()));
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let mut state = self.storage.lock();
        if let Some(n) = state.power_cut_in {
            if n <= 1 {
                state.power_cut_in = None;
                state.powered_off = true;
            } else {
                state.power_cut_in = Some(n - 1);
            }
        }
        if state.fail_sync || state.powered_off {
            return Err(eio());
        }
        state.syncs += 1;
        lock_inode(&self.inode).sync();
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        if self.storage.lock().powered_off {
            return Err(eio());
        }
        let mut file = lock_inode(&self.inode);
        file.live.resize(len as usize, 0);
        // Not torn: a length change lands whole or not at all; here it lands at the next sync.
        Ok(())
    }
}

impl Storage for MemStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.lock().files.keys().cloned().collect())
    }

    fn create_zeroed(&self, name: &str, len: u64) -> io::Result<Box<dyn StorageFile>> {
        {
            let mut state = self.lock();
            if state.powered_off {
                return Err(eio());
            }
            if state.disk_full {
                state.enospc += 1;
                return Err(enospc());
            }
        }
        self.put(name, vec![0u8; len as usize]);
        Ok(self.handle(self.inode(name)?))
    }

    fn rezero(&self, name: &str, len: u64) -> io::Result<Box<dyn StorageFile>> {
        if self.lock().powered_off {
            return Err(eio());
        }
        let inode = self.inode(name)?;
        *lock_inode(&inode) = MemFileState::synced(vec![0u8; len as usize]);
        Ok(self.handle(inode))
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        if self.lock().powered_off {
            return Err(eio());
        }
        self.put(name, Vec::new());
        Ok(self.handle(self.inode(name)?))
    }

    fn open(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        Ok(self.handle(self.inode(name)?))
    }

    fn read(&self, name: &str) -> io::Result<Contents> {
        Ok(Contents::Owned(lock_inode(&self.inode(name)?).live.clone()))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut state = self.lock();
        if state.powered_off {
            return Err(eio());
        }
        let inode = state.files.remove(from).ok_or_else(not_found)?;
        state.files.insert(to.to_string(), inode);
        Ok(())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut state = self.lock();
        if state.powered_off {
            return Err(eio());
        }
        state.files.remove(name).map(|_| ()).ok_or_else(not_found)
    }

    fn sync_dir(&self) -> io::Result<()> {
        let state = self.lock();
        match state.powered_off || state.fail_dir_sync {
            true => Err(eio()),
            false => Ok(()),
        }
    }

    fn free_bytes(&self) -> Option<u64> {
        None
    }
}
