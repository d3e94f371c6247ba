//! The narrow storage interface the WAL and snapshots use, with two implementations: real files
//! in a directory (positional writes, `fdatasync`, reads through memory maps) and an in-memory
//! directory that can inject faults (EIO on sync, ENOSPC on allocation) and simulate a crash by
//! dropping every write that was not synced. Tests use the second to exercise failure paths
//! without root or a full disk.

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
}

#[derive(Default)]
struct MemState {
    files: BTreeMap<String, MemFileState>,
    /// Fail every `sync_data` from now on with EIO.
    fail_sync: bool,
    /// Fail every `create_zeroed` with ENOSPC.
    disk_full: bool,
    syncs: u64,
}

/// An in-memory directory with fault injection. Clones share the same files.
#[derive(Clone, Default)]
pub struct MemStorage {
    state: Arc<Mutex<MemState>>,
}

impl MemStorage {
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemState> {
        self.state.lock().expect("mem storage lock")
    }

    /// From now on every `sync_data` fails with EIO (as a failing disk would).
    pub fn fail_syncs(&self, fail: bool) {
        self.lock().fail_sync = fail;
    }

    /// From now on creating a zeroed file fails with ENOSPC, until called with `false`.
    pub fn set_disk_full(&self, full: bool) {
        self.lock().disk_full = full;
    }

    /// Number of successful `sync_data` calls so far.
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// Simulates power loss: every file reverts to its last synced content.
    pub fn crash(&self) {
        for file in self.lock().files.values_mut() {
            file.live = file.durable.clone();
        }
    }

    /// Direct access to a file's live bytes, to damage them in tests.
    pub fn with_file<R>(&self, name: &str, f: impl FnOnce(&mut Vec<u8>) -> R) -> Option<R> {
        let mut state = self.lock();
        let file = state.files.get_mut(name)?;
        let result = f(&mut file.live);
        file.durable = file.live.clone();
        Some(result)
    }
}

struct MemFile {
    storage: MemStorage,
    name: String,
}

impl StorageFile for MemFile {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut state = self.storage.lock();
        let file = state
            .files
            .get_mut(&self.name)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let end = offset as usize + data.len();
        if file.live.len() < end {
            file.live.resize(end, 0);
        }
        file.live[offset as usize..end].copy_from_slice(data);
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let mut state = self.storage.lock();
        if state.fail_sync {
            return Err(io::Error::from_raw_os_error(5)); // EIO
        }
        state.syncs += 1;
        let file = state
            .files
            .get_mut(&self.name)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        file.durable = file.live.clone();
        Ok(())
    }
}

impl Storage for MemStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.lock().files.keys().cloned().collect())
    }

    fn create_zeroed(&self, name: &str, len: u64) -> io::Result<Box<dyn StorageFile>> {
        let mut state = self.lock();
        if state.disk_full {
            return Err(io::Error::from_raw_os_error(28)); // ENOSPC
        }
        let zeros = vec![0u8; len as usize];
        state.files.insert(name.to_string(), MemFileState { live: zeros.clone(), durable: zeros });
        Ok(Box::new(MemFile { storage: self.clone(), name: name.to_string() }))
    }

    fn rezero(&self, name: &str, len: u64) -> io::Result<Box<dyn StorageFile>> {
        let mut state = self.lock();
        let file =
            state.files.get_mut(name).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        file.live = vec![0u8; len as usize];
        file.durable = file.live.clone();
        Ok(Box::new(MemFile { storage: self.clone(), name: name.to_string() }))
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        self.lock().files.insert(name.to_string(), MemFileState::default());
        Ok(Box::new(MemFile { storage: self.clone(), name: name.to_string() }))
    }

    fn open(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        if !self.lock().files.contains_key(name) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        Ok(Box::new(MemFile { storage: self.clone(), name: name.to_string() }))
    }

    fn read(&self, name: &str) -> io::Result<Contents> {
        let state = self.lock();
        let file = state.files.get(name).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        Ok(Contents::Owned(file.live.clone()))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut state = self.lock();
        let file =
            state.files.remove(from).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        state.files.insert(to.to_string(), file);
        Ok(())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.lock()
            .files
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn sync_dir(&self) -> io::Result<()> {
        Ok(())
    }

    fn free_bytes(&self) -> Option<u64> {
        None
    }
}
