//! The disk workload (`disk=SIZE|all`): on the first read-write virtio-blk
//! disk, write stamped 64 KiB chunks in order, cycling, and before each
//! write read back the chunk about to be overwritten (written one pass
//! earlier); on the first read-only drive (a CD/DVD), read the medium and
//! check it against the medium stamp.
//!
//! Every 8-byte word of a disk chunk is `stamp(offset, generation) ^ nonce`:
//! its byte offset on the disk, the pass that wrote it, and a number drawn at
//! boot, so a write that never reached the disk (or reached another) is
//! caught, even over what an earlier boot left. A medium's words are
//! `stamp(offset, 0) ^ MEDIUM_SEED`, as `vmig testguest medium` writes them.
//!
//! Runs on the BSP only, between heartbeats; a migrated guest continues it
//! from where its memory says it was, which is the point: what it wrote on the
//! source it reads back on the target.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::pattern::stamp;
use crate::serial::Line;
use crate::virtio::Found;
use crate::virtio::blk::{self, Blk, CHUNK, IoError, QueueMem, SECTOR};

/// The medium stamp's seed (even, so stamps stay odd and never zero).
pub const MEDIUM_SEED: u64 = 0x6d65_6469_756d_7632;
const WORDS: usize = CHUNK / 8;
const CHUNK_SECTORS: u64 = CHUNK as u64 / SECTOR;

static mut DISK_QUEUE: QueueMem = QueueMem::new();
static mut CD_QUEUE: QueueMem = QueueMem::new();
static DISK_QUEUE_TAKEN: AtomicBool = AtomicBool::new(false);
static CD_QUEUE_TAKEN: AtomicBool = AtomicBool::new(false);

/// Hands the queue block at `queue` out once (`taken` says whether it was).
fn take(queue: *mut QueueMem, taken: &AtomicBool) -> Option<&'static mut QueueMem> {
    if taken.swap(true, Ordering::AcqRel) {
        return None;
    }
    // SAFETY: `queue` is one of the statics above, and `taken` lets exactly
    // one caller ever have it: the reference is unique for the program's life.
    Some(unsafe { &mut *queue })
}

/// Counters for the heartbeat.
pub static DISK_WRITTEN: AtomicU64 = AtomicU64::new(0);
pub static DISK_VERIFIED: AtomicU64 = AtomicU64::new(0);
pub static DISK_ERRORS: AtomicU64 = AtomicU64::new(0);
pub static CD_VERIFIED: AtomicU64 = AtomicU64::new(0);
pub static CD_ERRORS: AtomicU64 = AtomicU64::new(0);
pub static IO_ERRORS: AtomicU64 = AtomicU64::new(0);

/// Integrity errors are printed only up to this many lines.
const MAX_ERROR_LINES: u64 = 8;
static ERROR_LINES: AtomicU64 = AtomicU64::new(0);

fn report(what: &str, offset: u64, expected: u64, found: u64) {
    if ERROR_LINES.fetch_add(1, Ordering::Relaxed) < MAX_ERROR_LINES {
        Line::new()
            .str("ERR ")
            .str(what)
            .str(" offset=")
            .hex(offset)
            .str(" expected=")
            .hex(expected)
            .str(" found=")
            .hex(found)
            .emit();
    }
}

fn disk_word(offset: u64, generation: u64, nonce: u64) -> u64 {
    stamp(offset, generation) ^ nonce
}

fn medium_word(offset: u64) -> u64 {
    stamp(offset, 0) ^ MEDIUM_SEED
}

/// Checks every word of chunk `chunk` read into `data` against `expected`
/// (of its byte offset); reports the first wrong one, returns how many were.
fn check(data: &[u8; CHUNK], chunk: u64, what: &str, expected: impl Fn(u64) -> u64) -> u64 {
    let base = chunk * CHUNK as u64;
    let mut bad = 0;
    for (i, word) in data.chunks_exact(8).enumerate() {
        let offset = base + 8 * i as u64;
        let found = u64::from_le_bytes(word.try_into().unwrap_or_default());
        let want = expected(offset);
        if found != want {
            if bad == 0 {
                report(what, offset, want, found);
            }
            bad += 1;
        }
    }
    bad
}

/// Integrity errors the disk workload has seen.
pub fn errors() -> u64 {
    DISK_ERRORS.load(Ordering::Relaxed) + CD_ERRORS.load(Ordering::Relaxed)
}

struct DiskRun {
    blk: Blk,
    chunks: u64,
    /// Next chunk to write, and the pass it is in (generation = pass + 1).
    pos: u64,
    pass: u64,
    /// The first pass's last read-back (later passes read `pos`).
    check: u64,
    nonce: u64,
}

impl DiskRun {
    fn expected_generation(&self, chunk: u64) -> Option<u64> {
        if chunk < self.pos {
            Some(self.pass + 1)
        } else if self.pass > 0 {
            Some(self.pass)
        } else {
            None
        }
    }

    fn write_next(&mut self) {
        let generation = self.pass + 1;
        let base = self.pos * CHUNK as u64;
        let data = self.blk.data();
        for i in 0..WORDS {
            let word = disk_word(base + 8 * i as u64, generation, self.nonce);
            data[8 * i..8 * i + 8].copy_from_slice(&word.to_le_bytes());
        }
        match self.blk.write(self.pos * CHUNK_SECTORS) {
            Ok(()) => {
                DISK_WRITTEN.fetch_add(1, Ordering::Relaxed);
                self.pos += 1;
                if self.pos == self.chunks {
                    self.pos = 0;
                    self.pass += 1;
                }
            }
            Err(_) => {
                IO_ERRORS.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Reads back the chunk about to be written again, written one pass ago
    /// (in the first pass, a chunk written earlier in it).
    fn check_next(&mut self) {
        let chunk = if self.pass > 0 {
            self.pos
        } else if self.pos > 0 {
            self.check = (self.check + 7) % self.pos;
            self.check
        } else {
            return;
        };
        let Some(generation) = self.expected_generation(chunk) else {
            return;
        };
        if self.blk.read(chunk * CHUNK_SECTORS).is_err() {
            IO_ERRORS.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let nonce = self.nonce;
        let bad = check(self.blk.data(), chunk, "disk", |offset| {
            disk_word(offset, generation, nonce)
        });
        DISK_ERRORS.fetch_add(bad, Ordering::Relaxed);
        DISK_VERIFIED.fetch_add(1, Ordering::Relaxed);
    }
}

struct CdRun {
    blk: Blk,
    generation: u32,
    chunks: u64,
    pos: u64,
}

impl CdRun {
    fn check_next(&mut self) {
        let generation = self.blk.generation();
        if generation != self.generation {
            self.generation = generation;
            self.chunks = self.blk.capacity() / CHUNK_SECTORS;
            self.pos = 0;
            Line::new()
                .str("BLK medium sectors=")
                .dec(self.chunks * CHUNK_SECTORS)
                .emit();
        }
        if self.chunks == 0 {
            return;
        }
        let chunk = self.pos;
        self.pos = (self.pos + 1) % self.chunks;
        match self.blk.read(chunk * CHUNK_SECTORS) {
            Ok(()) => {}
            // Ejected between the check and the read: not an integrity error.
            Err(IoError::Status(_)) if self.blk.generation() != generation => return,
            Err(_) => {
                IO_ERRORS.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let bad = check(self.blk.data(), chunk, "medium", medium_word);
        CD_ERRORS.fetch_add(bad, Ordering::Relaxed);
        CD_VERIFIED.fetch_add(1, Ordering::Relaxed);
    }
}

/// The disk workload of the BSP.
pub struct DiskWork {
    disk: Option<DiskRun>,
    cd: Option<CdRun>,
    interval_ns: u64,
    next_ns: u64,
}

impl DiskWork {
    /// Sets up the block devices `devices` (reporting each on the console)
    /// and, with `limit`, the workload over up to `limit` bytes of the first
    /// disk (`u64::MAX`: all of it) at `rate` bytes per second (None: as fast
    /// as the device goes).
    pub fn new(devices: impl Iterator<Item = Found>, limit: Option<u64>, rate: Option<u64>, nonce: u64) -> DiskWork {
        let mut work = DiskWork {
            disk: None,
            cd: None,
            interval_ns: 0,
            next_ns: 0,
        };
        for device in devices {
            let (slot, base) = (device.slot as u64, device.transport.base());
            let queue = match (blk::read_only(&device), &work.disk, &work.cd) {
                (false, None, _) => take(&raw mut DISK_QUEUE, &DISK_QUEUE_TAKEN),
                (true, _, None) => take(&raw mut CD_QUEUE, &CD_QUEUE_TAKEN),
                _ => None,
            };
            let Some(queue) = queue else {
                continue;
            };
            let Some(blk) = Blk::init(&device, queue) else {
                Line::new()
                    .str("ERR blk slot=")
                    .dec(slot)
                    .str(" addr=")
                    .hex(base)
                    .emit();
                continue;
            };
            let sectors = blk.capacity();
            Line::new()
                .str("BLK slot=")
                .dec(slot)
                .str(" addr=")
                .hex(base)
                .str(" sectors=")
                .dec(sectors)
                .str(" ro=")
                .dec(u64::from(blk.read_only))
                .emit();
            if blk.read_only {
                work.cd = Some(CdRun {
                    generation: blk.generation(),
                    chunks: sectors / CHUNK_SECTORS,
                    pos: 0,
                    blk,
                });
            } else {
                let bytes = (sectors * SECTOR).min(limit.unwrap_or(0));
                work.disk = Some(DiskRun {
                    blk,
                    chunks: bytes / CHUNK as u64,
                    pos: 0,
                    pass: 0,
                    check: 0,
                    nonce: nonce & !1,
                });
            }
        }
        if limit.is_none() {
            work.disk = None;
            work.cd = None;
        }
        if let Some(rate) = rate.filter(|&r| r > 0) {
            // Each step moves two chunks (a write and a read).
            work.interval_ns = (2 * CHUNK as u64).saturating_mul(1_000_000_000) / rate;
        }
        work
    }

    pub fn active(&self) -> bool {
        self.disk.as_ref().is_some_and(|d| d.chunks > 0) || self.cd.is_some()
    }

    /// One write and one read-back on the disk, one read of the medium,
    /// when due.
    pub fn step(&mut self, now: u64) {
        if now < self.next_ns {
            return;
        }
        self.next_ns = if self.next_ns == 0 { now } else { self.next_ns } + self.interval_ns;
        if self.next_ns < now {
            self.next_ns = now;
        }
        if let Some(disk) = self.disk.as_mut().filter(|d| d.chunks > 0) {
            disk.check_next();
            disk.write_next();
        }
        if let Some(cd) = self.cd.as_mut() {
            cd.check_next();
        }
    }
}
