//! A polling virtio-blk driver on the virtio-mmio transport (version 2), run
//! from ring 3: no interrupts, one request in flight, the queue in the
//! image's own memory (identity-mapped, so its addresses are physical).
//!
//! Devices are announced on the command line as Linux takes them:
//! `virtio_mmio.device=4K@0xd0000000:5`.

use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{Ordering, fence};

const MAGIC: u32 = 0x7472_6976;
const DEVICE_BLOCK: u32 = 2;

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC: u64 = 0x080;
const REG_QUEUE_DRIVER: u64 = 0x090;
const REG_QUEUE_DEVICE: u64 = 0x0a0;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const REG_CONFIG: u64 = 0x100;

const STATUS_ACK: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_NEEDS_RESET: u32 = 64;
const F_RO: u32 = 1 << 5;

const DESC_NEXT: u16 = 1;
const DESC_WRITE: u16 = 2;
const AVAIL_NO_INTERRUPT: u16 = 1;

const QUEUE_SIZE: u16 = 8;
pub const SECTOR: u64 = 512;
/// One request's data: 64 KiB.
pub const CHUNK: usize = 64 << 10;
/// Polls of the used ring before a request is given up.
const POLLS: u32 = 10_000_000;

/// Most devices the command line may announce.
pub const MAX_DEVICES: usize = 4;

#[repr(C)]
#[derive(Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

#[repr(C)]
struct Avail {
    flags: u16,
    idx: u16,
    ring: [u16; QUEUE_SIZE as usize],
    used_event: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct UsedElem {
    id: u32,
    len: u32,
}

#[repr(C)]
struct Used {
    flags: u16,
    idx: u16,
    ring: [UsedElem; QUEUE_SIZE as usize],
    avail_event: u16,
}

/// Everything one device's queue needs, in one page-aligned block.
#[repr(C, align(4096))]
pub struct QueueMem {
    desc: [Desc; QUEUE_SIZE as usize],
    avail: Avail,
    used: Used,
    header: [u8; 16],
    status: u8,
    pub data: [u8; CHUNK],
}

impl QueueMem {
    pub const fn new() -> Self {
        QueueMem {
            desc: [Desc {
                addr: 0,
                len: 0,
                flags: 0,
                next: 0,
            }; QUEUE_SIZE as usize],
            avail: Avail {
                flags: 0,
                idx: 0,
                ring: [0; QUEUE_SIZE as usize],
                used_event: 0,
            },
            used: Used {
                flags: 0,
                idx: 0,
                ring: [UsedElem { id: 0, len: 0 }; QUEUE_SIZE as usize],
                avail_event: 0,
            },
            header: [0; 16],
            status: 0,
            data: [0; CHUNK],
        }
    }
}

/// Why a request did not succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoError {
    /// The device answered with an error status.
    Status(u8),
    /// The device never answered, or wants a reset.
    Device,
}

/// One driven virtio-blk device.
pub struct Blk {
    base: u64,
    pub read_only: bool,
    queue: &'static mut QueueMem,
    next_avail: u16,
    last_used: u16,
}

fn reg(base: u64, offset: u64) -> u32 {
    // SAFETY: `base` is a virtio-mmio device window from the command line,
    // identity-mapped and user-accessible (MMIO: every access exits to the VMM).
    unsafe { read_volatile((base + offset) as *const u32) }
}

fn set(base: u64, offset: u64, value: u32) {
    // SAFETY: as `reg`.
    unsafe { write_volatile((base + offset) as *mut u32, value) }
}

/// What the device at `base` is, if it is a virtio-blk device we can drive.
pub fn probe(base: u64) -> bool {
    reg(base, REG_MAGIC) == MAGIC && reg(base, REG_VERSION) == 2 && reg(base, REG_DEVICE_ID) == DEVICE_BLOCK
}

/// Whether the virtio-blk device at `base` is read-only (None: not one).
pub fn read_only(base: u64) -> Option<bool> {
    if !probe(base) {
        return None;
    }
    set(base, REG_DEVICE_FEATURES_SEL, 0);
    Some(reg(base, REG_DEVICE_FEATURES) & F_RO != 0)
}

impl Blk {
    /// Resets and sets up the device (virtio 1.x section 3.1.1) with `queue`.
    pub fn init(base: u64, queue: &'static mut QueueMem) -> Option<Blk> {
        if !probe(base) {
            return None;
        }
        set(base, REG_STATUS, 0);
        set(base, REG_STATUS, STATUS_ACK | STATUS_DRIVER);
        set(base, REG_DEVICE_FEATURES_SEL, 0);
        let features = reg(base, REG_DEVICE_FEATURES);
        set(base, REG_DEVICE_FEATURES_SEL, 1);
        let high = reg(base, REG_DEVICE_FEATURES);
        if high & 1 == 0 {
            return None; // no VERSION_1
        }
        set(base, REG_DRIVER_FEATURES_SEL, 0);
        set(base, REG_DRIVER_FEATURES, features & F_RO);
        set(base, REG_DRIVER_FEATURES_SEL, 1);
        set(base, REG_DRIVER_FEATURES, 1);
        set(base, REG_STATUS, STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK);
        if reg(base, REG_STATUS) & STATUS_FEATURES_OK == 0 {
            return None;
        }
        set(base, REG_QUEUE_SEL, 0);
        if reg(base, REG_QUEUE_NUM_MAX) < u32::from(QUEUE_SIZE) {
            return None;
        }
        *queue = QueueMem::new();
        queue.avail.flags = AVAIL_NO_INTERRUPT;
        set(base, REG_QUEUE_NUM, u32::from(QUEUE_SIZE));
        let addr = |p: *const u8| p as u64;
        let desc = addr((&raw const queue.desc).cast());
        let avail = addr((&raw const queue.avail).cast());
        let used = addr((&raw const queue.used).cast());
        for (reg_low, value) in [
            (REG_QUEUE_DESC, desc),
            (REG_QUEUE_DRIVER, avail),
            (REG_QUEUE_DEVICE, used),
        ] {
            set(base, reg_low, value as u32);
            set(base, reg_low + 4, (value >> 32) as u32);
        }
        set(base, REG_QUEUE_READY, 1);
        set(
            base,
            REG_STATUS,
            STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        Some(Blk {
            base,
            read_only: features & F_RO != 0,
            queue,
            next_avail: 0,
            last_used: 0,
        })
    }

    /// Sectors of the medium now (a consistent read, section 4.2.2.1).
    pub fn capacity(&self) -> u64 {
        loop {
            let before = reg(self.base, REG_CONFIG_GENERATION);
            let low = reg(self.base, REG_CONFIG);
            let high = reg(self.base, REG_CONFIG + 4);
            if reg(self.base, REG_CONFIG_GENERATION) == before {
                return u64::from(low) | (u64::from(high) << 32);
            }
        }
    }

    /// Changes whenever the device's configuration (the medium) changes.
    pub fn generation(&self) -> u32 {
        reg(self.base, REG_CONFIG_GENERATION)
    }

    pub fn data(&mut self) -> &mut [u8; CHUNK] {
        &mut self.queue.data
    }

    /// Reads `CHUNK` bytes at `sector` into [`Blk::data`].
    pub fn read(&mut self, sector: u64) -> Result<(), IoError> {
        self.request(0, sector, true)
    }

    /// Writes [`Blk::data`] to `CHUNK` bytes at `sector`.
    pub fn write(&mut self, sector: u64) -> Result<(), IoError> {
        self.request(1, sector, false)
    }

    fn request(&mut self, kind: u32, sector: u64, into_memory: bool) -> Result<(), IoError> {
        let q = &mut *self.queue;
        q.header[0..4].copy_from_slice(&kind.to_le_bytes());
        q.header[4..8].fill(0);
        q.header[8..16].copy_from_slice(&sector.to_le_bytes());
        q.status = 0xff;
        let data_flags = if into_memory { DESC_NEXT | DESC_WRITE } else { DESC_NEXT };
        q.desc[0] = Desc {
            addr: (&raw const q.header) as u64,
            len: 16,
            flags: DESC_NEXT,
            next: 1,
        };
        q.desc[1] = Desc {
            addr: (&raw const q.data) as u64,
            len: CHUNK as u32,
            flags: data_flags,
            next: 2,
        };
        q.desc[2] = Desc {
            addr: (&raw const q.status) as u64,
            len: 1,
            flags: DESC_WRITE,
            next: 0,
        };
        let slot = usize::from(self.next_avail % QUEUE_SIZE);
        // SAFETY: the rings are this driver's own memory; volatile so the
        // device (another agent) sees each store in order.
        unsafe { write_volatile(&raw mut q.avail.ring[slot], 0) };
        fence(Ordering::SeqCst);
        self.next_avail = self.next_avail.wrapping_add(1);
        // SAFETY: as above.
        unsafe { write_volatile(&raw mut q.avail.idx, self.next_avail) };
        fence(Ordering::SeqCst);
        set(self.base, REG_QUEUE_NOTIFY, 0);
        let mut polls = 0;
        // SAFETY: as above; the device writes the used ring.
        while unsafe { read_volatile(&raw const q.used.idx) } == self.last_used {
            polls += 1;
            if polls == POLLS || reg(self.base, REG_STATUS) & STATUS_NEEDS_RESET != 0 {
                return Err(IoError::Device);
            }
            core::hint::spin_loop();
        }
        fence(Ordering::SeqCst);
        self.last_used = self.last_used.wrapping_add(1);
        // Interrupts are off; the status is read and acknowledged by polling.
        let pending = reg(self.base, REG_INTERRUPT_STATUS);
        if pending != 0 {
            set(self.base, REG_INTERRUPT_ACK, pending);
        }
        // SAFETY: as above.
        match unsafe { read_volatile(&raw const q.status) } {
            0 => Ok(()),
            status => Err(IoError::Status(status)),
        }
    }
}
