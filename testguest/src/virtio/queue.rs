//! A split virtqueue (virtio 1.x section 2.7), driver side: the rings live in
//! the image's own memory (identity-mapped, so their addresses are physical),
//! the device reads descriptors and the available ring and writes the used
//! ring. Every store the device must see is volatile and fenced, and so is
//! every load of what it wrote.

use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{Ordering, fence};

pub const DESC_NEXT: u16 = 1;
pub const DESC_WRITE: u16 = 2;
/// Asks the device not to interrupt: the driver polls.
const AVAIL_NO_INTERRUPT: u16 = 1;

/// One buffer (or one part of a chained request) the device may use.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

impl Desc {
    /// A descriptor for `len` bytes at `buf` (identity-mapped: its address is physical).
    pub fn new(buf: *const u8, len: usize, flags: u16, next: u16) -> Desc {
        Desc {
            addr: buf as u64,
            len: len as u32,
            flags,
            next,
        }
    }
}

#[repr(C)]
struct Avail<const N: usize> {
    flags: u16,
    idx: u16,
    ring: [u16; N],
    used_event: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct UsedElem {
    id: u32,
    len: u32,
}

#[repr(C)]
struct Used<const N: usize> {
    flags: u16,
    idx: u16,
    ring: [UsedElem; N],
    avail_event: u16,
}

/// The memory of a queue of `N` entries (a power of two), in one block; the
/// fields' own alignment (16, 2, 4) is what the split layout asks. A new one
/// is all zero, so a static of them stays out of the image file.
#[repr(C, align(16))]
pub struct Ring<const N: usize> {
    desc: [Desc; N],
    avail: Avail<N>,
    used: Used<N>,
}

impl<const N: usize> Ring<N> {
    pub const fn new() -> Self {
        Ring {
            desc: [Desc {
                addr: 0,
                len: 0,
                flags: 0,
                next: 0,
            }; N],
            avail: Avail {
                flags: 0,
                idx: 0,
                ring: [0; N],
                used_event: 0,
            },
            used: Used {
                flags: 0,
                idx: 0,
                ring: [UsedElem { id: 0, len: 0 }; N],
                avail_event: 0,
            },
        }
    }

    /// Back to a fresh queue, before the device is told where it is.
    pub fn reset(&mut self) {
        *self = Ring::new();
        self.avail.flags = AVAIL_NO_INTERRUPT;
    }

    /// Physical addresses of the descriptor table, available and used rings.
    pub fn addresses(&self) -> (u64, u64, u64) {
        (
            (&raw const self.desc) as u64,
            (&raw const self.avail) as u64,
            (&raw const self.used) as u64,
        )
    }
}

/// A buffer chain the device has finished with.
#[derive(Clone, Copy, Debug)]
pub struct Completed {
    /// The chain's first descriptor.
    pub head: u16,
    /// Bytes the device wrote into it.
    pub len: u32,
}

/// The driver's side of one queue: where it is in both rings.
pub struct Queue<const N: usize> {
    pub index: u16,
    ring: &'static mut Ring<N>,
    next_avail: u16,
    last_used: u16,
}

impl<const N: usize> core::fmt::Debug for Queue<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Queue")
            .field("index", &self.index)
            .field("next_avail", &self.next_avail)
            .field("last_used", &self.last_used)
            .finish()
    }
}

impl<const N: usize> Queue<N> {
    /// The driver state for `ring`, registered with the device as queue `index`.
    pub(super) fn new(index: u16, ring: &'static mut Ring<N>) -> Queue<N> {
        Queue {
            index,
            ring,
            next_avail: 0,
            last_used: 0,
        }
    }

    /// Writes descriptor `i` (< N); the device reads it once its chain is made available.
    pub fn set_desc(&mut self, i: u16, desc: Desc) {
        // SAFETY: the table is this queue's own memory; volatile so the store
        // is not merged with or moved past the publication in `push`.
        unsafe { write_volatile(&raw mut self.ring.desc[usize::from(i)], desc) };
    }

    /// Makes the chain starting at descriptor `head` available to the device
    /// (which still has to be notified).
    pub fn push(&mut self, head: u16) {
        let slot = usize::from(self.next_avail) % N;
        // SAFETY: the ring is this queue's own memory; volatile so the device
        // (another agent) sees each store, and in order with the fences.
        unsafe { write_volatile(&raw mut self.ring.avail.ring[slot], head) };
        fence(Ordering::SeqCst);
        self.next_avail = self.next_avail.wrapping_add(1);
        // SAFETY: as above.
        unsafe { write_volatile(&raw mut self.ring.avail.idx, self.next_avail) };
        fence(Ordering::SeqCst);
    }

    /// Whether the device has finished a chain not yet taken: one load of RAM.
    #[inline]
    pub fn has_used(&self) -> bool {
        // SAFETY: the device writes the used index; the ring is this queue's memory.
        unsafe { read_volatile(&raw const self.ring.used.idx) != self.last_used }
    }

    /// The next chain the device has finished with, if any.
    pub fn pop_used(&mut self) -> Option<Completed> {
        if !self.has_used() {
            return None;
        }
        fence(Ordering::SeqCst);
        let slot = usize::from(self.last_used) % N;
        // SAFETY: as `has_used`; the entry is complete once the index covers it.
        let elem = unsafe { read_volatile(&raw const self.ring.used.ring[slot]) };
        self.last_used = self.last_used.wrapping_add(1);
        Some(Completed {
            head: elem.id as u16,
            len: elem.len,
        })
    }
}
