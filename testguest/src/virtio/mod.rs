//! The virtio-mmio transport (version 2), driven from ring 3: device
//! discovery, status and feature negotiation, queue registration and
//! notification. No interrupts: drivers poll their used rings.
//!
//! Devices are announced on the command line as Linux takes them
//! (`virtio_mmio.device=4K@0xd0000000:5`); each window's DeviceID register
//! says what it is, and the block and network drivers take their own.

pub mod blk;
pub mod queue;

use core::ptr::{read_volatile, write_volatile};

use self::queue::{Queue, Ring};
use crate::serial::Line;

/// Most devices the command line may announce.
pub const MAX_DEVICES: usize = 4;

pub const DEVICE_NET: u32 = 1;
pub const DEVICE_BLOCK: u32 = 2;

/// The one feature every driver here needs: the virtio 1.x layout.
pub const F_VERSION_1: u64 = 1 << 32;

const MAGIC: u32 = 0x7472_6976;

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
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
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

/// One device window, checked to speak virtio-mmio version 2.
#[derive(Clone, Copy, Debug)]
pub struct Transport {
    base: u64,
}

impl Transport {
    /// The device at `base`, if one answers there with the modern layout.
    pub fn probe(base: u64) -> Option<Transport> {
        let transport = Transport { base };
        (transport.reg(REG_MAGIC) == MAGIC && transport.reg(REG_VERSION) == 2).then_some(transport)
    }

    pub fn base(&self) -> u64 {
        self.base
    }

    pub fn device_id(&self) -> u32 {
        self.reg(REG_DEVICE_ID)
    }

    /// The features the device offers.
    pub fn device_features(&self) -> u64 {
        self.set(REG_DEVICE_FEATURES_SEL, 0);
        let low = self.reg(REG_DEVICE_FEATURES);
        self.set(REG_DEVICE_FEATURES_SEL, 1);
        let high = self.reg(REG_DEVICE_FEATURES);
        u64::from(low) | (u64::from(high) << 32)
    }

    /// Resets the device and negotiates the features in `wanted` that it
    /// offers (virtio 1.x section 3.1.1, up to FEATURES_OK); None if it does
    /// not offer VERSION_1 or refuses the choice. The driver then sets up its
    /// queues and calls [`Transport::driver_ok`].
    pub fn negotiate(&self, wanted: u64) -> Option<u64> {
        self.set(REG_STATUS, 0);
        self.set(REG_STATUS, STATUS_ACK | STATUS_DRIVER);
        let features = self.device_features() & (wanted | F_VERSION_1);
        if features & F_VERSION_1 == 0 {
            return None;
        }
        self.set(REG_DRIVER_FEATURES_SEL, 0);
        self.set(REG_DRIVER_FEATURES, features as u32);
        self.set(REG_DRIVER_FEATURES_SEL, 1);
        self.set(REG_DRIVER_FEATURES, (features >> 32) as u32);
        self.set(REG_STATUS, STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK);
        (self.reg(REG_STATUS) & STATUS_FEATURES_OK != 0).then_some(features)
    }

    /// Registers `ring` (reset here) as queue `index`; None if the device's
    /// queue is smaller than `N`.
    pub fn setup_queue<const N: usize>(&self, index: u16, ring: &'static mut Ring<N>) -> Option<Queue<N>> {
        self.set(REG_QUEUE_SEL, u32::from(index));
        if (self.reg(REG_QUEUE_NUM_MAX) as usize) < N {
            return None;
        }
        ring.reset();
        self.set(REG_QUEUE_NUM, N as u32);
        let (desc, avail, used) = ring.addresses();
        for (reg_low, value) in [
            (REG_QUEUE_DESC, desc),
            (REG_QUEUE_DRIVER, avail),
            (REG_QUEUE_DEVICE, used),
        ] {
            self.set(reg_low, value as u32);
            self.set(reg_low + 4, (value >> 32) as u32);
        }
        self.set(REG_QUEUE_READY, 1);
        Some(Queue::new(index, ring))
    }

    /// Tells the device the driver is ready: its queues are live from here.
    pub fn driver_ok(&self) {
        self.set(
            REG_STATUS,
            STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
    }

    /// Tells the device that queue `index` has new available buffers.
    pub fn notify(&self, index: u16) {
        self.set(REG_QUEUE_NOTIFY, u32::from(index));
    }

    /// Whether the device has failed and wants a reset.
    pub fn needs_reset(&self) -> bool {
        self.reg(REG_STATUS) & STATUS_NEEDS_RESET != 0
    }

    /// Acknowledges whatever interrupt the device raised (interrupts are off:
    /// the status is read and cleared by polling).
    pub fn ack_interrupt(&self) {
        let pending = self.reg(REG_INTERRUPT_STATUS);
        if pending != 0 {
            self.set(REG_INTERRUPT_ACK, pending);
        }
    }

    /// Changes whenever the device's configuration changes.
    pub fn config_generation(&self) -> u32 {
        self.reg(REG_CONFIG_GENERATION)
    }

    /// The 32-bit word at `offset` of the device's configuration space.
    pub fn config_u32(&self, offset: u64) -> u32 {
        self.reg(REG_CONFIG + offset)
    }

    /// The byte at `offset` of the device's configuration space.
    pub fn config_u8(&self, offset: u64) -> u8 {
        // SAFETY: as `reg`; byte access is allowed in the configuration space.
        unsafe { read_volatile((self.base + REG_CONFIG + offset) as *const u8) }
    }

    fn reg(&self, offset: u64) -> u32 {
        // SAFETY: `base` is a virtio-mmio device window from the command line,
        // identity-mapped and user-accessible (MMIO: every access exits to the VMM).
        unsafe { read_volatile((self.base + offset) as *const u32) }
    }

    fn set(&self, offset: u64, value: u32) {
        // SAFETY: as `reg`.
        unsafe { write_volatile((self.base + offset) as *mut u32, value) }
    }
}

/// An announced device the guest can talk to, and its place on the command line.
#[derive(Clone, Copy, Debug)]
pub struct Found {
    pub slot: usize,
    pub transport: Transport,
}

/// The announced devices by type, found by reading each window's DeviceID.
#[derive(Debug)]
pub struct Devices {
    found: [Option<(u32, Found)>; MAX_DEVICES],
}

impl Devices {
    /// Probes every window in `bases`, reporting those that are no device
    /// the guest drives (`ERR virtio slot=<n> addr=0x.. device=<id>`, with
    /// id 0 where no version-2 device answers).
    pub fn scan(bases: &[u64]) -> Devices {
        let mut devices = Devices {
            found: [None; MAX_DEVICES],
        };
        for (slot, &base) in bases.iter().enumerate().take(MAX_DEVICES) {
            let transport = Transport::probe(base);
            let id = transport.map_or(0, |t| t.device_id());
            match transport {
                Some(transport) if id == DEVICE_BLOCK || id == DEVICE_NET => {
                    devices.found[slot] = Some((id, Found { slot, transport }));
                }
                _ => {
                    Line::new()
                        .str("ERR virtio slot=")
                        .dec(slot as u64)
                        .str(" addr=")
                        .hex(base)
                        .str(" device=")
                        .dec(u64::from(id))
                        .emit();
                }
            }
        }
        devices
    }

    /// The devices of type `device_id`, in announcement order.
    pub fn of(&self, device_id: u32) -> impl Iterator<Item = Found> + '_ {
        self.found
            .iter()
            .flatten()
            .filter(move |(id, _)| *id == device_id)
            .map(|&(_, found)| found)
    }
}
