//! A polling virtio-blk driver: one request in flight, its header, data and
//! status beside the queue in one block of the image's memory.

use super::queue::{DESC_NEXT, DESC_WRITE, Desc, Queue, Ring};
use super::{Found, Transport};

const F_RO: u64 = 1 << 5;

const QUEUE_SIZE: usize = 8;
pub const SECTOR: u64 = 512;
/// One request's data: 64 KiB.
pub const CHUNK: usize = 64 << 10;
/// Polls of the used ring before a request is given up.
const POLLS: u32 = 10_000_000;

/// Everything one device's queue needs, in one page-aligned block.
#[repr(C, align(4096))]
pub struct QueueMem {
    ring: Ring<QUEUE_SIZE>,
    header: [u8; 16],
    status: u8,
    pub data: [u8; CHUNK],
}

impl QueueMem {
    pub const fn new() -> Self {
        QueueMem {
            ring: Ring::new(),
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
    transport: Transport,
    pub read_only: bool,
    queue: Queue<QUEUE_SIZE>,
    header: &'static mut [u8; 16],
    status: &'static mut u8,
    data: &'static mut [u8; CHUNK],
}

/// Whether the virtio-blk device `device` is read-only.
pub fn read_only(device: &Found) -> bool {
    device.transport.device_features() & F_RO != 0
}

impl Blk {
    /// Resets and sets up `device` with `mem`.
    pub fn init(device: &Found, mem: &'static mut QueueMem) -> Option<Blk> {
        let transport = device.transport;
        let features = transport.negotiate(F_RO)?;
        let QueueMem {
            ring,
            header,
            status,
            data,
        } = mem;
        let queue = transport.setup_queue(0, ring)?;
        transport.driver_ok();
        Some(Blk {
            transport,
            read_only: features & F_RO != 0,
            queue,
            header,
            status,
            data,
        })
    }

    /// Sectors of the medium now (a consistent read, section 4.2.2.1).
    pub fn capacity(&self) -> u64 {
        loop {
            let before = self.transport.config_generation();
            let low = self.transport.config_u32(0);
            let high = self.transport.config_u32(4);
            if self.transport.config_generation() == before {
                return u64::from(low) | (u64::from(high) << 32);
            }
        }
    }

    /// Changes whenever the device's configuration (the medium) changes.
    pub fn generation(&self) -> u32 {
        self.transport.config_generation()
    }

    pub fn data(&mut self) -> &mut [u8; CHUNK] {
        self.data
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
        self.header[0..4].copy_from_slice(&kind.to_le_bytes());
        self.header[4..8].fill(0);
        self.header[8..16].copy_from_slice(&sector.to_le_bytes());
        *self.status = 0xff;
        let data_flags = if into_memory { DESC_NEXT | DESC_WRITE } else { DESC_NEXT };
        self.queue
            .set_desc(0, Desc::new(self.header.as_ptr(), 16, DESC_NEXT, 1));
        self.queue
            .set_desc(1, Desc::new(self.data.as_ptr(), CHUNK, data_flags, 2));
        let status: *mut u8 = self.status;
        self.queue.set_desc(2, Desc::new(status, 1, DESC_WRITE, 0));
        self.queue.push(0);
        self.transport.notify(self.queue.index);
        let mut polls = 0;
        while self.queue.pop_used().is_none() {
            polls += 1;
            if polls == POLLS || self.transport.needs_reset() {
                return Err(IoError::Device);
            }
            core::hint::spin_loop();
        }
        self.transport.ack_interrupt();
        // SAFETY: the device wrote the status byte before it published the used
        // entry just taken; volatile because the compiler did not see it write.
        match unsafe { core::ptr::read_volatile(status) } {
            0 => Ok(()),
            status => Err(IoError::Status(status)),
        }
    }
}
