//! A polling virtio-net driver (device type 1) on the virtio-mmio transport:
//! queue 0 receives, queue 1 transmits, every frame behind the 12-byte
//! `virtio_net_hdr_v1`. Only VERSION_1 and MAC are negotiated: no offloads
//! and no mergeable buffers, so the header is all zero on transmit, skipped
//! on receive, and each receive buffer holds a whole frame.
//!
//! Each descriptor owns one buffer for good: receive buffers go back on the
//! available ring as soon as their frame is consumed, transmit buffers are
//! taken back from the used ring before a new frame needs one. The device is
//! notified once per poll for each queue that got new buffers.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::virtio::queue::{DESC_WRITE, Desc, Queue, Ring};
use crate::virtio::{Found, Transport};

const F_MAC: u64 = 1 << 5;
const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;
const RX_SIZE: usize = 64;
pub const TX_SIZE: usize = 32;
/// `struct virtio_net_hdr_v1`: flags, gso_type, hdr_len, gso_size,
/// csum_start, csum_offset, num_buffers.
const HDR_LEN: usize = 12;
/// The largest frame without offloads: 1500 bytes of IP behind the 14-byte
/// Ethernet header.
pub const MAX_FRAME: usize = 1514;
const BUF_LEN: usize = HDR_LEN + MAX_FRAME;

type Buf = [u8; BUF_LEN];

/// Frames received and sent since boot, for the heartbeat.
pub static RX_FRAMES: AtomicU64 = AtomicU64::new(0);
pub static TX_FRAMES: AtomicU64 = AtomicU64::new(0);

/// Both queues and their buffers.
#[repr(C, align(4096))]
pub struct NetMem {
    rx_ring: Ring<RX_SIZE>,
    tx_ring: Ring<TX_SIZE>,
    rx_bufs: [Buf; RX_SIZE],
    tx_bufs: [Buf; TX_SIZE],
}

impl NetMem {
    pub const fn new() -> Self {
        NetMem {
            rx_ring: Ring::new(),
            tx_ring: Ring::new(),
            rx_bufs: [[0; BUF_LEN]; RX_SIZE],
            tx_bufs: [[0; BUF_LEN]; TX_SIZE],
        }
    }
}

/// A frame the device has put in a receive buffer.
#[derive(Clone, Copy, Debug)]
pub struct Received {
    head: u16,
    len: usize,
}

/// The receive queue.
#[derive(Debug)]
pub struct Rx {
    transport: Transport,
    queue: Queue<RX_SIZE>,
    bufs: &'static mut [Buf; RX_SIZE],
    refilled: bool,
}

impl Rx {
    /// Whether a frame is waiting: one load of the used index.
    #[inline]
    pub fn pending(&self) -> bool {
        self.queue.has_used()
    }

    /// The next frame received, until it is given back with [`Rx::release`].
    pub fn next(&mut self) -> Option<Received> {
        loop {
            let done = self.queue.pop_used()?;
            let len = done.len as usize;
            if usize::from(done.head) < RX_SIZE && (HDR_LEN..=BUF_LEN).contains(&len) {
                RX_FRAMES.fetch_add(1, Ordering::Relaxed);
                return Some(Received {
                    head: done.head,
                    len: len - HDR_LEN,
                });
            }
            // Not a frame (shorter than its header): the buffer goes straight back.
            if usize::from(done.head) < RX_SIZE {
                self.recycle(done.head);
            }
        }
    }

    /// The frame's bytes, after its header.
    pub fn frame(&self, frame: &Received) -> &[u8] {
        &self.bufs[usize::from(frame.head)][HDR_LEN..HDR_LEN + frame.len]
    }

    /// Gives a frame's buffer back to the device (notified at [`VirtioNet::flush`]).
    pub fn release(&mut self, frame: &Received) {
        self.recycle(frame.head);
    }

    fn recycle(&mut self, head: u16) {
        self.queue.push(head);
        self.refilled = true;
    }

    fn flush(&mut self) {
        if self.refilled {
            self.refilled = false;
            self.transport.notify(RX_QUEUE);
        }
    }
}

/// The transmit queue and which of its buffers are free.
#[derive(Debug)]
pub struct Tx {
    transport: Transport,
    queue: Queue<TX_SIZE>,
    bufs: &'static mut [Buf; TX_SIZE],
    free: [u16; TX_SIZE],
    free_count: usize,
    queued: bool,
}

impl Tx {
    /// Whether a buffer is free for a frame, after taking back those the device sent.
    pub fn has_room(&mut self) -> bool {
        while let Some(done) = self.queue.pop_used() {
            if usize::from(done.head) < TX_SIZE && self.free_count < TX_SIZE {
                self.free[self.free_count] = done.head;
                self.free_count += 1;
            }
        }
        self.free_count > 0
    }

    /// Queues a frame of `len` bytes that `fill` writes (after [`Tx::has_room`]
    /// said a buffer is free; the device is notified at [`VirtioNet::flush`]).
    pub fn send<R>(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> R) -> R {
        self.free_count = self
            .free_count
            .checked_sub(1)
            .expect("a transmit token holds a free buffer");
        let head = self.free[self.free_count];
        let buf = &mut self.bufs[usize::from(head)];
        buf[..HDR_LEN].fill(0);
        let result = fill(&mut buf[HDR_LEN..HDR_LEN + len]);
        self.queue.set_desc(head, Desc::new(buf.as_ptr(), HDR_LEN + len, 0, 0));
        self.queue.push(head);
        self.queued = true;
        TX_FRAMES.fetch_add(1, Ordering::Relaxed);
        result
    }

    fn flush(&mut self) {
        if self.queued {
            self.queued = false;
            self.transport.notify(TX_QUEUE);
        }
    }
}

/// One driven virtio-net device.
#[derive(Debug)]
pub struct VirtioNet {
    pub mac: [u8; 6],
    pub rx: Rx,
    pub tx: Tx,
}

impl VirtioNet {
    /// Resets and sets up `device` with `mem`, every receive buffer offered;
    /// None if it lacks VERSION_1 or a MAC address, or its queues are too small.
    pub fn init(device: &Found, mem: &'static mut NetMem) -> Option<VirtioNet> {
        let transport = device.transport;
        if transport.negotiate(F_MAC)? & F_MAC == 0 {
            return None;
        }
        let NetMem {
            rx_ring,
            tx_ring,
            rx_bufs,
            tx_bufs,
        } = mem;
        let mut rx_queue = transport.setup_queue(RX_QUEUE, rx_ring)?;
        let tx_queue = transport.setup_queue(TX_QUEUE, tx_ring)?;
        for (head, buf) in (0u16..).zip(rx_bufs.iter()) {
            rx_queue.set_desc(head, Desc::new(buf.as_ptr(), BUF_LEN, DESC_WRITE, 0));
            rx_queue.push(head);
        }
        let mac = read_mac(&transport);
        transport.driver_ok();
        transport.notify(RX_QUEUE);
        Some(VirtioNet {
            mac,
            rx: Rx {
                transport,
                queue: rx_queue,
                bufs: rx_bufs,
                refilled: false,
            },
            tx: Tx {
                transport,
                queue: tx_queue,
                bufs: tx_bufs,
                free: core::array::from_fn(|i| i as u16),
                free_count: TX_SIZE,
                queued: false,
            },
        })
    }

    /// Tells the device about the buffers this poll gave it.
    pub fn flush(&mut self) {
        self.rx.flush();
        self.tx.flush();
    }
}

/// The MAC address in the configuration space (a consistent read, section 4.2.2.1).
fn read_mac(transport: &Transport) -> [u8; 6] {
    loop {
        let before = transport.config_generation();
        let mac: [u8; 6] = core::array::from_fn(|i| transport.config_u8(i as u64));
        if transport.config_generation() == before {
            return mac;
        }
    }
}
