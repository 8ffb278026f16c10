//! A split virtqueue (virtio 1.x, section 2.7) as the device sees it.
//!
//! The driver owns the memory the queue lives in and may write anything
//! there at any time, so every address and index read from it is checked:
//! a descriptor chain that leaves guest memory, loops, or is longer than the
//! queue is refused with [`QueueError`], never followed.

use serde::{Deserialize, Serialize};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};

use crate::vmm::memory::GuestMemory;

/// Largest queue the device offers.
pub const MAX_QUEUE_SIZE: u16 = 256;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;
/// The driver asks for no interrupt when buffers are used.
const AVAIL_F_NO_INTERRUPT: u16 = 1;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum QueueError {
    #[error("the queue's ring at {addr:#x} is outside guest memory")]
    Ring { addr: u64 },
    #[error("descriptor {index} is out of the queue of {size}")]
    Index { index: u16, size: u16 },
    #[error("a descriptor chain is longer than the queue of {size} (a loop?)")]
    ChainTooLong { size: u16 },
    #[error("the driver made {pending} buffers available in a queue of {size}")]
    TooManyAvailable { pending: u16, size: u16 },
    #[error("indirect descriptors were not offered")]
    Indirect,
}

/// One guest buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: u64,
    pub len: u32,
    /// Device-writable (the driver reads it).
    pub write: bool,
}

/// The buffers the driver made available under one head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub head: u16,
    pub segments: Vec<Segment>,
}

/// What the driver configured, and where the device is in the rings:
/// everything a migration must carry for the queue to continue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    pub size: u16,
    pub ready: bool,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    /// The next avail ring entry the device will take.
    pub next_avail: u16,
    /// The next used ring entry the device will fill.
    pub next_used: u16,
}

/// A queue the driver set up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Queue {
    pub state: QueueState,
}

impl Queue {
    pub fn new() -> Self {
        Queue {
            state: QueueState {
                size: MAX_QUEUE_SIZE,
                ..QueueState::default()
            },
        }
    }

    /// Back to what a device reset leaves.
    pub fn reset(&mut self) {
        *self = Queue::new();
    }

    /// Whether the driver's configuration can be used: a power-of-two size
    /// within the maximum (split rings need not be, but every driver we know
    /// uses one, and it keeps the index arithmetic plain).
    pub fn valid(&self) -> bool {
        let s = &self.state;
        s.ready && s.size > 0 && s.size <= MAX_QUEUE_SIZE && s.size.is_power_of_two()
    }

    fn avail_idx(&self, memory: &GuestMemory) -> Result<u16, QueueError> {
        let addr = self.state.avail.wrapping_add(2);
        read::<u16>(memory, addr)
    }

    /// The next chain the driver made available, if any.
    pub fn pop(&mut self, memory: &GuestMemory) -> Result<Option<Chain>, QueueError> {
        let size = self.state.size;
        let avail_idx = self.avail_idx(memory)?;
        let pending = avail_idx.wrapping_sub(self.state.next_avail);
        if pending == 0 {
            return Ok(None);
        }
        if pending > size {
            return Err(QueueError::TooManyAvailable { pending, size });
        }
        let slot = u64::from(self.state.next_avail % size);
        let head = read::<u16>(memory, self.state.avail.wrapping_add(4 + 2 * slot))?;
        let chain = self.chain(memory, head)?;
        self.state.next_avail = self.state.next_avail.wrapping_add(1);
        Ok(Some(chain))
    }

    fn chain(&self, memory: &GuestMemory, head: u16) -> Result<Chain, QueueError> {
        let size = self.state.size;
        let mut segments = Vec::new();
        let mut index = head;
        loop {
            if index >= size {
                return Err(QueueError::Index { index, size });
            }
            if segments.len() >= usize::from(size) {
                return Err(QueueError::ChainTooLong { size });
            }
            let at = self.state.desc.wrapping_add(16 * u64::from(index));
            let addr = read::<u64>(memory, at)?;
            let len = read::<u32>(memory, at + 8)?;
            let flags = read::<u16>(memory, at + 12)?;
            let next = read::<u16>(memory, at + 14)?;
            if flags & DESC_F_INDIRECT != 0 {
                return Err(QueueError::Indirect);
            }
            segments.push(Segment {
                addr,
                len,
                write: flags & DESC_F_WRITE != 0,
            });
            if flags & DESC_F_NEXT == 0 {
                return Ok(Chain { head, segments });
            }
            index = next;
        }
    }

    /// Returns a chain to the driver with `len` bytes written into it;
    /// says whether the driver wants an interrupt for it.
    pub fn push_used(&mut self, memory: &GuestMemory, head: u16, len: u32) -> Result<bool, QueueError> {
        let size = self.state.size;
        let slot = u64::from(self.state.next_used % size);
        let entry = self.state.used.wrapping_add(4 + 8 * slot);
        write(memory, entry, u32::from(head))?;
        write(memory, entry + 4, len)?;
        self.state.next_used = self.state.next_used.wrapping_add(1);
        // The element is in place before the index that publishes it (the
        // guest may read it from another CPU).
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        write(memory, self.state.used.wrapping_add(2), self.state.next_used)?;
        let flags = read::<u16>(memory, self.state.avail)?;
        Ok(flags & AVAIL_F_NO_INTERRUPT == 0)
    }
}

fn read<T: vm_memory::ByteValued>(memory: &GuestMemory, addr: u64) -> Result<T, QueueError> {
    memory
        .read_obj(GuestAddress(addr))
        .map_err(|_| QueueError::Ring { addr })
}

fn write<T: vm_memory::ByteValued>(memory: &GuestMemory, addr: u64, value: T) -> Result<(), QueueError> {
    memory
        .write_obj(value, GuestAddress(addr))
        .map_err(|_| QueueError::Ring { addr })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const DESC: u64 = 0x1000;
    pub const AVAIL: u64 = 0x2000;
    pub const USED: u64 = 0x3000;

    pub fn memory() -> GuestMemory {
        crate::vmm::memory::create(64 << 20).unwrap()
    }

    pub fn queue() -> Queue {
        let mut q = Queue::new();
        q.state.size = 8;
        q.state.ready = true;
        q.state.desc = DESC;
        q.state.avail = AVAIL;
        q.state.used = USED;
        q
    }

    /// Writes descriptor `index` as a driver would.
    pub fn put_desc(memory: &GuestMemory, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = DESC + 16 * u64::from(index);
        memory.write_obj(addr, GuestAddress(at)).unwrap();
        memory.write_obj(len, GuestAddress(at + 8)).unwrap();
        memory.write_obj(flags, GuestAddress(at + 12)).unwrap();
        memory.write_obj(next, GuestAddress(at + 14)).unwrap();
    }

    /// Makes `head` available as the driver's `n`th buffer.
    pub fn offer(memory: &GuestMemory, n: u16, head: u16, size: u16) {
        memory
            .write_obj(head, GuestAddress(AVAIL + 4 + 2 * u64::from(n % size)))
            .unwrap();
        memory.write_obj(n.wrapping_add(1), GuestAddress(AVAIL + 2)).unwrap();
    }

    #[test]
    fn a_chain_is_taken_once_and_returned_through_the_used_ring() {
        let memory = memory();
        let mut q = queue();
        assert_eq!(q.pop(&memory).unwrap(), None, "nothing offered yet");
        put_desc(&memory, 0, 0x10000, 16, DESC_F_NEXT, 3);
        put_desc(&memory, 3, 0x20000, 512, DESC_F_NEXT | DESC_F_WRITE, 5);
        put_desc(&memory, 5, 0x30000, 1, DESC_F_WRITE, 0);
        offer(&memory, 0, 0, 8);
        let chain = q.pop(&memory).unwrap().unwrap();
        assert_eq!(chain.head, 0);
        assert_eq!(
            chain.segments,
            [
                Segment {
                    addr: 0x10000,
                    len: 16,
                    write: false
                },
                Segment {
                    addr: 0x20000,
                    len: 512,
                    write: true
                },
                Segment {
                    addr: 0x30000,
                    len: 1,
                    write: true
                },
            ]
        );
        assert_eq!(q.pop(&memory).unwrap(), None, "taken once");
        assert!(
            q.push_used(&memory, 0, 513).unwrap(),
            "interrupts are wanted by default"
        );
        let idx: u16 = memory.read_obj(GuestAddress(USED + 2)).unwrap();
        let id: u32 = memory.read_obj(GuestAddress(USED + 4)).unwrap();
        let len: u32 = memory.read_obj(GuestAddress(USED + 8)).unwrap();
        assert_eq!((idx, id, len), (1, 0, 513));
    }

    #[test]
    fn hostile_rings_are_refused_not_followed() {
        let memory = memory();
        // A loop: 0 → 1 → 0.
        let mut q = queue();
        put_desc(&memory, 0, 0x10000, 16, DESC_F_NEXT, 1);
        put_desc(&memory, 1, 0x10000, 16, DESC_F_NEXT, 0);
        offer(&memory, 0, 0, 8);
        assert_eq!(q.pop(&memory), Err(QueueError::ChainTooLong { size: 8 }));
        // A next index past the queue.
        let mut q = queue();
        put_desc(&memory, 0, 0x10000, 16, DESC_F_NEXT, 200);
        assert_eq!(q.pop(&memory), Err(QueueError::Index { index: 200, size: 8 }));
        // More available than the queue holds.
        let mut q = queue();
        memory.write_obj(100u16, GuestAddress(AVAIL + 2)).unwrap();
        assert_eq!(
            q.pop(&memory),
            Err(QueueError::TooManyAvailable { pending: 100, size: 8 })
        );
        // Rings outside guest memory.
        let mut q = queue();
        q.state.avail = 1 << 40;
        assert!(matches!(q.pop(&memory), Err(QueueError::Ring { .. })));
    }
}
