//! virtio-blk (virtio 1.x, section 5.2) over a raw image file: a read-write
//! disk, or a read-only CD/DVD drive whose medium can be changed.
//!
//! An image is held under an open-file-description lock for as long as the
//! VMM may write it — a write lock for a disk, a read lock for a medium — so
//! two VMMs can never write one image, on one host or (with a file system
//! whose locks are cluster-wide, like NFS) on two. A migration's source
//! gives its locks up only once its vCPUs are paused and its writes are on
//! stable storage ([`Backing`] is dropped after a sync), and the target takes
//! them before its vCPUs may run.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};

use super::queue::Chain;
use crate::vmm::memory::GuestMemory;

pub const SECTOR_SIZE: u64 = 512;
/// Largest data transfer of one request; larger ones fail with an I/O error.
pub const MAX_REQUEST_BYTES: u64 = 4 << 20;

/// Feature bits (section 5.2.3).
pub const F_RO: u64 = 1 << 5;
pub const F_FLUSH: u64 = 1 << 9;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
const ID_BYTES: usize = 20;

/// What kind of drive a guest sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskKind {
    /// Read-write disk.
    Disk,
    /// Read-only CD/DVD drive; its medium can be inserted and ejected.
    Cdrom,
}

/// One drive of a machine, as it travels with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskConfig {
    pub kind: DiskKind,
    /// The image; for a CD/DVD drive, the medium (kept when ejected, so
    /// that it can be reconnected).
    pub path: PathBuf,
    /// A CD/DVD drive with its medium in; a disk always is.
    pub connected: bool,
}

impl DiskConfig {
    pub fn read_only(&self) -> bool {
        self.kind == DiskKind::Cdrom
    }

    /// Whether the VMM holds the image open.
    pub fn attached(&self) -> bool {
        self.kind == DiskKind::Disk || self.connected
    }
}

#[derive(Debug, Error)]
pub enum DiskError {
    #[error("cannot open disk image {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "disk image {path} is in use by another VMM (it holds the image's lock); \
         two VMMs may never write one disk"
    )]
    Locked { path: PathBuf },
    #[error("cannot lock disk image {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("disk image {path} is {size} bytes, not a whole number of {SECTOR_SIZE}-byte sectors")]
    Unaligned { path: PathBuf, size: u64 },
    #[error("disk image {path} is empty")]
    Empty { path: PathBuf },
    #[error("disk image {path} is {found} bytes here; the VM had {expected}")]
    SizeChanged { path: PathBuf, found: u64, expected: u64 },
    #[error("cannot write disk image {path} to stable storage")]
    Sync {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl DiskError {
    /// Stable machine code.
    pub fn code(&self) -> &'static str {
        match self {
            DiskError::Open { .. } => "disk_open",
            DiskError::Locked { .. } => "disk_locked",
            DiskError::Lock { .. } => "disk_lock",
            DiskError::Unaligned { .. } | DiskError::Empty { .. } => "disk_size",
            DiskError::SizeChanged { .. } => "disk_size_changed",
            DiskError::Sync { .. } => "disk_sync",
        }
    }
}

/// An open, locked image.
#[derive(Debug)]
pub struct Backing {
    file: File,
    path: PathBuf,
    size: u64,
    read_only: bool,
}

impl Backing {
    /// Opens and locks `path` (a write lock unless `read_only`).
    pub fn open(path: &Path, read_only: bool) -> Result<Self, DiskError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| DiskError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        lock(&file, path, read_only)?;
        let size = file
            .metadata()
            .map_err(|source| DiskError::Open {
                path: path.to_path_buf(),
                source,
            })?
            .len();
        if size == 0 {
            return Err(DiskError::Empty {
                path: path.to_path_buf(),
            });
        }
        if !size.is_multiple_of(SECTOR_SIZE) {
            return Err(DiskError::Unaligned {
                path: path.to_path_buf(),
                size,
            });
        }
        Ok(Backing {
            file,
            path: path.to_path_buf(),
            size,
            read_only,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Puts every write on stable storage.
    pub fn sync(&self) -> Result<(), DiskError> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data().map_err(|source| DiskError::Sync {
            path: self.path.clone(),
            source,
        })
    }
}

/// An open-file-description lock on the whole file: it belongs to this open
/// file, is released when the file is closed (or the process dies), and
/// conflicts with the same lock taken by any other open of the image.
fn lock(file: &File, path: &Path, read_only: bool) -> Result<(), DiskError> {
    match crate::lockfile::try_lock(file, read_only) {
        Ok(true) => Ok(()),
        Ok(false) => Err(DiskError::Locked {
            path: path.to_path_buf(),
        }),
        Err(source) => Err(DiskError::Lock {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Whether some VMM holds `path` under a lock that excludes a writer.
pub fn is_locked(path: &Path) -> std::io::Result<bool> {
    crate::lockfile::held(&File::open(path)?)
}

/// Counters of one drive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockCounters {
    pub requests: u64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    pub errors: u64,
}

/// What the driver may not do to a request: an answer is still given (an
/// I/O error), but the guest asked for something this device refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Malformed,
    Unsupported,
    Failed,
}

/// The drive behind one virtio-blk device.
#[derive(Debug)]
pub struct Block {
    pub config: DiskConfig,
    backing: Option<Backing>,
    /// Sectors the guest sees (0 with no medium).
    capacity: u64,
    pub counters: BlockCounters,
}

impl Block {
    /// A drive whose image is not open yet (see [`Block::attach`]).
    pub fn new(config: DiskConfig) -> Self {
        Block {
            config,
            backing: None,
            capacity: 0,
            counters: BlockCounters::default(),
        }
    }

    pub fn features(&self) -> u64 {
        let ro = if self.config.read_only() { F_RO } else { 0 };
        ro | F_FLUSH
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Opens and locks the image (nothing for an empty CD/DVD drive). With
    /// `expected`, the image must have that many sectors (a migrated or
    /// restored VM finds its disk as it left it).
    pub fn attach(&mut self, expected: Option<u64>) -> Result<(), DiskError> {
        if !self.config.attached() {
            self.backing = None;
            self.capacity = 0;
            return Ok(());
        }
        if self.backing.is_some() {
            return Ok(());
        }
        let backing = Backing::open(&self.config.path, self.config.read_only())?;
        let sectors = backing.size() / SECTOR_SIZE;
        if let Some(expected) = expected
            && expected != sectors
        {
            return Err(DiskError::SizeChanged {
                path: self.config.path.clone(),
                found: backing.size(),
                expected: expected * SECTOR_SIZE,
            });
        }
        self.capacity = sectors;
        self.backing = Some(backing);
        Ok(())
    }

    /// Syncs and closes the image, giving up its lock; the capacity stays
    /// what the guest knows.
    pub fn detach(&mut self) -> Result<(), DiskError> {
        self.sync()?;
        self.close();
        Ok(())
    }

    /// Puts every write on stable storage.
    pub fn sync(&self) -> Result<(), DiskError> {
        self.backing.as_ref().map_or(Ok(()), Backing::sync)
    }

    /// Closes the image (giving up its lock) without a sync.
    pub fn close(&mut self) {
        self.backing = None;
    }

    pub fn attached(&self) -> bool {
        self.backing.is_some()
    }

    /// Changes a CD/DVD drive's medium: `Some(path)` inserts, `None` ejects.
    pub fn change_medium(&mut self, medium: Option<&Path>) -> Result<(), DiskError> {
        let previous = self.config.clone();
        match medium {
            Some(path) => {
                let backing = Backing::open(path, true)?;
                self.capacity = backing.size() / SECTOR_SIZE;
                self.backing = Some(backing);
                self.config.path = path.to_path_buf();
                self.config.connected = true;
            }
            None => {
                self.backing = None;
                self.capacity = 0;
                self.config.connected = false;
            }
        }
        debug_assert_eq!(previous.kind, self.config.kind);
        Ok(())
    }

    /// Serves one request; returns the bytes written into the chain's
    /// device-writable buffers (the used length).
    pub fn serve(&mut self, memory: &GuestMemory, chain: &Chain) -> u32 {
        self.counters.requests += 1;
        let Some(status_at) = chain.segments.last().filter(|s| s.write && s.len >= 1) else {
            // No status byte to answer in: nothing can be said to the driver.
            self.counters.errors += 1;
            return 0;
        };
        let status_addr = status_at.addr + u64::from(status_at.len) - 1;
        let (status, written) = match self.request(memory, chain) {
            Ok(written) => (S_OK, written),
            Err(Refusal::Unsupported) => (S_UNSUPP, 0),
            Err(Refusal::Malformed | Refusal::Failed) => (S_IOERR, 0),
        };
        if status != S_OK {
            self.counters.errors += 1;
        }
        if memory.write_obj(status, GuestAddress(status_addr)).is_err() {
            self.counters.errors += 1;
            return 0;
        }
        u32::try_from(written + 1).unwrap_or(u32::MAX)
    }

    fn request(&mut self, memory: &GuestMemory, chain: &Chain) -> Result<u64, Refusal> {
        let (readable, writable): (Vec<_>, Vec<_>) = chain.segments.iter().partition(|s| !s.write);
        let mut header = [0u8; 16];
        gather(memory, &readable, &mut header)?;
        let kind = u32::from_le_bytes(header[0..4].try_into().unwrap_or_default());
        let sector = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
        // Data is what lies between the header and the status byte.
        let mut out = Vec::new();
        let mut offset = 16u64;
        for s in &readable {
            let len = u64::from(s.len);
            if offset >= len {
                offset -= len;
                continue;
            }
            out.push((s.addr + offset, len - offset));
            offset = 0;
        }
        let mut into = Vec::new();
        let last = writable.len().saturating_sub(1);
        for (i, s) in writable.iter().enumerate() {
            let len = u64::from(s.len) - u64::from(i == last);
            if len > 0 {
                into.push((s.addr, len));
            }
        }
        match kind {
            T_IN => self.read(memory, sector, &into),
            T_OUT if self.config.read_only() => Err(Refusal::Failed),
            T_OUT => self.write(memory, sector, &out).map(|_| 0),
            T_FLUSH => {
                let backing = self.backing.as_ref().ok_or(Refusal::Failed)?;
                backing.sync().map_err(|_| Refusal::Failed)?;
                Ok(0)
            }
            T_GET_ID => {
                let mut id = [0u8; ID_BYTES];
                let name = self
                    .config
                    .path
                    .file_name()
                    .map(|n| n.as_encoded_bytes())
                    .unwrap_or_default();
                let n = name.len().min(ID_BYTES);
                id[..n].copy_from_slice(&name[..n]);
                scatter(memory, &into, &id).map(|()| ID_BYTES.min(total(&into) as usize) as u64)
            }
            _ => Err(Refusal::Unsupported),
        }
    }

    /// The byte range `[sector, sector + len)` if it lies on the medium.
    fn range(&self, sector: u64, len: u64) -> Result<u64, Refusal> {
        if len > MAX_REQUEST_BYTES || !len.is_multiple_of(SECTOR_SIZE) {
            return Err(Refusal::Malformed);
        }
        let start = sector.checked_mul(SECTOR_SIZE).ok_or(Refusal::Malformed)?;
        let end = start.checked_add(len).ok_or(Refusal::Malformed)?;
        if end > self.capacity * SECTOR_SIZE {
            return Err(Refusal::Failed);
        }
        Ok(start)
    }

    fn read(&mut self, memory: &GuestMemory, sector: u64, into: &[(u64, u64)]) -> Result<u64, Refusal> {
        let len = total(into);
        let start = self.range(sector, len)?;
        let backing = self.backing.as_ref().ok_or(Refusal::Failed)?;
        let mut buffer = vec![0u8; len as usize];
        backing
            .file
            .read_exact_at(&mut buffer, start)
            .map_err(|_| Refusal::Failed)?;
        // Through vm-memory, so the migration's dirty bitmap sees the write.
        scatter(memory, into, &buffer)?;
        self.counters.read_bytes += len;
        Ok(len)
    }

    fn write(&mut self, memory: &GuestMemory, sector: u64, from: &[(u64, u64)]) -> Result<u64, Refusal> {
        let len = total(from);
        let start = self.range(sector, len)?;
        let mut buffer = vec![0u8; len as usize];
        let mut at = 0usize;
        for &(addr, n) in from {
            memory
                .read_slice(&mut buffer[at..at + n as usize], GuestAddress(addr))
                .map_err(|_| Refusal::Malformed)?;
            at += n as usize;
        }
        let backing = self.backing.as_ref().ok_or(Refusal::Failed)?;
        backing.file.write_all_at(&buffer, start).map_err(|_| Refusal::Failed)?;
        self.counters.written_bytes += len;
        Ok(len)
    }
}

fn total(ranges: &[(u64, u64)]) -> u64 {
    ranges.iter().map(|r| r.1).fold(0u64, u64::saturating_add)
}

/// Fills `out` from the start of the readable segments.
fn gather(memory: &GuestMemory, segments: &[&super::queue::Segment], out: &mut [u8]) -> Result<(), Refusal> {
    let mut at = 0usize;
    for s in segments {
        if at == out.len() {
            break;
        }
        let n = (s.len as usize).min(out.len() - at);
        memory
            .read_slice(&mut out[at..at + n], GuestAddress(s.addr))
            .map_err(|_| Refusal::Malformed)?;
        at += n;
    }
    if at < out.len() {
        Err(Refusal::Malformed)
    } else {
        Ok(())
    }
}

/// Writes `bytes` across `ranges` in order.
fn scatter(memory: &GuestMemory, ranges: &[(u64, u64)], bytes: &[u8]) -> Result<(), Refusal> {
    let mut at = 0usize;
    for &(addr, n) in ranges {
        if at == bytes.len() {
            break;
        }
        let n = (n as usize).min(bytes.len() - at);
        memory
            .write_slice(&bytes[at..at + n], GuestAddress(addr))
            .map_err(|_| Refusal::Malformed)?;
        at += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::queue::Segment;
    use super::*;

    fn image(sectors: u64) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(sectors * SECTOR_SIZE).unwrap();
        file
    }

    fn disk(path: &Path) -> Block {
        let mut block = Block::new(DiskConfig {
            kind: DiskKind::Disk,
            path: path.to_path_buf(),
            connected: true,
        });
        block.attach(None).unwrap();
        block
    }

    /// A request as a driver lays it out: header, data, status.
    fn request(memory: &GuestMemory, kind: u32, sector: u64, data_len: u32) -> Chain {
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&kind.to_le_bytes());
        header[8..16].copy_from_slice(&sector.to_le_bytes());
        memory.write_slice(&header, GuestAddress(0x10000)).unwrap();
        let mut segments = vec![Segment {
            addr: 0x10000,
            len: 16,
            write: false,
        }];
        if data_len > 0 {
            segments.push(Segment {
                addr: 0x20000,
                len: data_len,
                write: kind != T_OUT,
            });
        }
        segments.push(Segment {
            addr: 0x30000,
            len: 1,
            write: true,
        });
        Chain { head: 0, segments }
    }

    fn status(memory: &GuestMemory) -> u8 {
        memory.read_obj(GuestAddress(0x30000)).unwrap()
    }

    #[test]
    fn writes_reach_the_image_and_reads_come_back_from_it() {
        let memory = super::super::queue::tests::memory();
        let file = image(16);
        let mut block = disk(file.path());
        memory.write_slice(&[0xab; 1024], GuestAddress(0x20000)).unwrap();
        assert_eq!(block.serve(&memory, &request(&memory, T_OUT, 3, 1024)), 1);
        assert_eq!(status(&memory), S_OK);
        let mut on_disk = [0u8; 1024];
        file.as_file().read_exact_at(&mut on_disk, 3 * 512).unwrap();
        assert_eq!(on_disk, [0xab; 1024]);

        memory.write_slice(&[0; 1024], GuestAddress(0x20000)).unwrap();
        assert_eq!(block.serve(&memory, &request(&memory, T_IN, 3, 1024)), 1025);
        let mut back = [0u8; 1024];
        memory.read_slice(&mut back, GuestAddress(0x20000)).unwrap();
        assert_eq!(back, [0xab; 1024]);
        assert_eq!(block.counters.read_bytes, 1024);
        assert_eq!(block.counters.written_bytes, 1024);
    }

    #[test]
    fn requests_past_the_end_or_unknown_fail_without_touching_the_image() {
        let memory = super::super::queue::tests::memory();
        let file = image(4);
        let mut block = disk(file.path());
        block.serve(&memory, &request(&memory, T_OUT, 3, 1024));
        assert_eq!(status(&memory), S_IOERR, "one sector past the end");
        block.serve(&memory, &request(&memory, T_OUT, u64::MAX / 2, 512));
        assert_eq!(status(&memory), S_IOERR, "an overflowing sector");
        block.serve(&memory, &request(&memory, 99, 0, 0));
        assert_eq!(status(&memory), S_UNSUPP);
        block.serve(&memory, &request(&memory, T_IN, 0, 100));
        assert_eq!(status(&memory), S_IOERR, "not whole sectors");
        assert_eq!(block.counters.errors, 4);
        let mut on_disk = vec![1u8; 4 * 512];
        file.as_file().read_exact_at(&mut on_disk, 0).unwrap();
        assert!(on_disk.iter().all(|&b| b == 0));
    }

    #[test]
    fn a_cdrom_refuses_writes_and_reads_nothing_once_ejected() {
        let memory = super::super::queue::tests::memory();
        let file = image(4);
        let mut cd = Block::new(DiskConfig {
            kind: DiskKind::Cdrom,
            path: file.path().to_path_buf(),
            connected: true,
        });
        cd.attach(None).unwrap();
        assert_eq!(cd.features() & F_RO, F_RO);
        cd.serve(&memory, &request(&memory, T_OUT, 0, 512));
        assert_eq!(status(&memory), S_IOERR);
        cd.serve(&memory, &request(&memory, T_IN, 0, 512));
        assert_eq!(status(&memory), S_OK);
        cd.change_medium(None).unwrap();
        assert_eq!(cd.capacity(), 0);
        cd.serve(&memory, &request(&memory, T_IN, 0, 512));
        assert_eq!(status(&memory), S_IOERR);
        assert!(!cd.config.connected);
        assert_eq!(cd.config.path, file.path(), "the medium is remembered");
    }

    #[test]
    fn one_writer_per_image_and_the_lock_goes_with_the_file() {
        let file = image(4);
        let mut first = disk(file.path());
        assert!(is_locked(file.path()).unwrap());
        let mut second = Block::new(first.config.clone());
        assert!(matches!(second.attach(None), Err(DiskError::Locked { .. })));
        // Readers are kept out too: a CD/DVD of a disk being written.
        assert!(matches!(
            Backing::open(file.path(), true),
            Err(DiskError::Locked { .. })
        ));
        first.detach().unwrap();
        assert!(!is_locked(file.path()).unwrap());
        second.attach(Some(4)).unwrap();
        // The size a migrated VM expects is checked.
        second.detach().unwrap();
        assert!(matches!(second.attach(Some(8)), Err(DiskError::SizeChanged { .. })));
        // Media may be shared by readers.
        let medium = image(4);
        let _a = Backing::open(medium.path(), true).unwrap();
        let _b = Backing::open(medium.path(), true).unwrap();
        assert!(Backing::open(medium.path(), false).is_err());
    }

    #[test]
    fn images_of_no_whole_sector_are_refused() {
        let file = tempfile::NamedTempFile::new().unwrap();
        assert!(matches!(
            Backing::open(file.path(), false),
            Err(DiskError::Empty { .. })
        ));
        file.as_file().set_len(1000).unwrap();
        assert!(matches!(
            Backing::open(file.path(), false),
            Err(DiskError::Unaligned { size: 1000, .. })
        ));
    }
}
