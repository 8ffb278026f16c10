//! The virtio-mmio transport (virtio 1.x, section 4.2, version 2 registers)
//! for block and network devices, and the bus that routes the guest's MMIO
//! accesses to them.
//!
//! Requests are served on the vCPU thread that wrote `QueueNotify`, so when
//! every vCPU is paused no block request is in flight: the pause of a
//! migration's switchover drains the disks by construction. A network
//! card's receive side has a thread of its own (frames come when they
//! come), and a pause stops it writing guest memory ([`super::net::RxMode`]).
//! A driver that breaks the rules (rings outside memory, loops) gets
//! `DEVICE_NEEDS_RESET`, never a panic.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;

use super::block::{Block, BlockCounters, DiskConfig, DiskError};
use super::net::{Net, NetCounters, NicConfig, RxMode};
use super::queue::{Queue, QueueState};
use super::tap::Tap;
use crate::vmm::memory::GuestMemory;
use crate::vmm::vcpu::Doorbell;

/// Where the first device's registers are; each takes one page.
pub const MMIO_BASE: u64 = 0xd000_0000;
pub const MMIO_SIZE: u64 = 0x1000;
/// The interrupt line of each device slot (ISA lines nothing else uses).
pub const IRQS: [u32; 4] = [5, 6, 7, 10];
/// Most virtio devices a VM has (drives and network cards together).
pub const MAX_DEVICES: usize = IRQS.len();

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const DEVICE_NET: u32 = 1;
const DEVICE_BLOCK: u32 = 2;
const VENDOR: u32 = 0x6769_6d76; // "vmig"
const F_VERSION_1: u64 = 1 << 32;

const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_NEEDS_RESET: u32 = 64;
const INT_USED_BUFFER: u32 = 1;
const INT_CONFIG_CHANGE: u32 = 2;
/// A network card's queues.
const RX: usize = 0;
const TX: usize = 1;

/// Where a device slot's registers begin.
pub fn base(slot: usize) -> u64 {
    MMIO_BASE + MMIO_SIZE * slot as u64
}

/// The Linux command-line token that announces device `slot`.
pub fn cmdline_token(slot: usize) -> String {
    format!("virtio_mmio.device=4K@{:#x}:{}", base(slot), IRQS[slot])
}

/// A device's transport state: what the driver negotiated and configured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    pub status: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub queue_sel: u32,
    pub interrupt_status: u32,
    pub config_generation: u32,
    pub queues: Vec<QueueState>,
}

/// What is behind a device's transport, as it migrates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Card {
    Block {
        disk: DiskConfig,
        /// Sectors the guest was told the medium has.
        capacity: u64,
        counters: BlockCounters,
    },
    Net {
        nic: NicConfig,
        counters: NetCounters,
    },
}

/// A device as it migrates: its card and its transport.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    pub card: Card,
    pub transport: TransportState,
}

impl DeviceState {
    /// The drive, for a block device.
    pub fn disk(&self) -> Option<&DiskConfig> {
        match &self.card {
            Card::Block { disk, .. } => Some(disk),
            Card::Net { .. } => None,
        }
    }
}

/// The device model behind one transport.
#[derive(Debug)]
enum Backend {
    Block(Block),
    Net(Net),
}

/// One virtio-mmio device.
#[derive(Debug)]
struct MmioDevice {
    backend: Backend,
    queues: Vec<Queue>,
    state: TransportState,
    irq: EventFd,
    memory: GuestMemory,
    doorbell: Doorbell,
    /// Wakes a card's receive thread: buffers added, mode changed, the end.
    kick: Option<Arc<EventFd>>,
    /// The receive thread is to end.
    ending: bool,
}

impl MmioDevice {
    fn new(backend: Backend, irq: EventFd, memory: GuestMemory, doorbell: Doorbell) -> Self {
        let queues = match backend {
            Backend::Block(_) => 1,
            Backend::Net(_) => 2,
        };
        MmioDevice {
            backend,
            queues: (0..queues).map(|_| Queue::new()).collect(),
            state: TransportState::default(),
            irq,
            memory,
            doorbell,
            kick: None,
            ending: false,
        }
    }

    fn device_features(&self) -> u64 {
        F_VERSION_1
            | match &self.backend {
                Backend::Block(block) => block.features(),
                Backend::Net(net) => net.features(),
            }
    }

    fn selected(&self) -> Option<&Queue> {
        self.queues.get(self.state.queue_sel as usize)
    }

    fn read(&self, offset: u64, data: &mut [u8]) {
        if offset >= 0x100 {
            return self.read_config(offset - 0x100, data);
        }
        let s = &self.state;
        let q = self.selected().map(|q| &q.state);
        let half = |value: u64, sel: u32| match sel {
            0 => value as u32,
            1 => (value >> 32) as u32,
            _ => 0,
        };
        let value: u32 = match (offset, q) {
            (0x000, _) => MAGIC,
            (0x004, _) => VERSION,
            (0x008, _) => match self.backend {
                Backend::Block(_) => DEVICE_BLOCK,
                Backend::Net(_) => DEVICE_NET,
            },
            (0x00c, _) => VENDOR,
            (0x010, _) => half(self.device_features(), s.device_features_sel),
            (0x034, Some(_)) => u32::from(super::queue::MAX_QUEUE_SIZE),
            (0x038, Some(q)) => u32::from(q.size),
            (0x044, Some(q)) => u32::from(q.ready),
            (0x060, _) => s.interrupt_status,
            (0x070, _) => s.status,
            (0x080, Some(q)) => q.desc as u32,
            (0x084, Some(q)) => (q.desc >> 32) as u32,
            (0x090, Some(q)) => q.avail as u32,
            (0x094, Some(q)) => (q.avail >> 32) as u32,
            (0x0a0, Some(q)) => q.used as u32,
            (0x0a4, Some(q)) => (q.used >> 32) as u32,
            (0x0fc, _) => s.config_generation,
            _ => 0,
        };
        if data.len() == 4 {
            data.copy_from_slice(&value.to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    /// The configuration space: a drive's capacity (u64), a card's MAC;
    /// then fields we do not offer.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; 0x40];
        match &self.backend {
            Backend::Block(block) => config[0..8].copy_from_slice(&block.capacity().to_le_bytes()),
            Backend::Net(net) => config[0..8].copy_from_slice(&net.config_space()),
        }
        data.fill(0);
        let start = offset as usize;
        if let Some(bytes) = config.get(start..start + data.len()) {
            data.copy_from_slice(bytes);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        let value = u32::from_le_bytes(bytes);
        let set_low = |field: &mut u64, v: u32| *field = (*field & !0xffff_ffff) | u64::from(v);
        let set_high = |field: &mut u64, v: u32| *field = (*field & 0xffff_ffff) | (u64::from(v) << 32);
        let sel = self.state.queue_sel as usize;
        match offset {
            0x014 => self.state.device_features_sel = value,
            0x020 => match self.state.driver_features_sel {
                0 => set_low(&mut self.state.driver_features, value),
                1 => set_high(&mut self.state.driver_features, value),
                _ => {}
            },
            0x024 => self.state.driver_features_sel = value,
            0x030 => self.state.queue_sel = value,
            0x044 => {
                if let Some(q) = self.queues.get_mut(sel) {
                    q.state.ready = value == 1;
                }
            }
            0x050 => self.notify(value as usize),
            0x064 => self.state.interrupt_status &= !value,
            0x070 => self.set_status(value),
            0x038 | 0x080 | 0x084 | 0x090 | 0x094 | 0x0a0 | 0x0a4 => {
                // Queue registers may only change while the queue is not live.
                let Some(q) = self.queues.get_mut(sel).filter(|q| !q.state.ready) else {
                    return;
                };
                let q = &mut q.state;
                match offset {
                    0x038 => q.size = value.min(0xffff) as u16,
                    0x080 => set_low(&mut q.desc, value),
                    0x084 => set_high(&mut q.desc, value),
                    0x090 => set_low(&mut q.avail, value),
                    0x094 => set_high(&mut q.avail, value),
                    0x0a0 => set_low(&mut q.used, value),
                    _ => set_high(&mut q.used, value),
                }
            }
            _ => {}
        }
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            // Reset: the device forgets the driver, not its medium or card.
            self.state = TransportState::default();
            for q in &mut self.queues {
                q.reset();
            }
            return;
        }
        let mut value = value;
        if value & STATUS_FEATURES_OK != 0 {
            let offered = self.device_features();
            let wanted = self.state.driver_features;
            // A driver must take VERSION_1 and nothing we did not offer.
            if wanted & !offered != 0 || wanted & F_VERSION_1 == 0 {
                value &= !STATUS_FEATURES_OK;
            }
        }
        self.state.status = value | (self.state.status & STATUS_NEEDS_RESET);
        if value & STATUS_DRIVER_OK != 0 {
            self.kick();
        }
    }

    /// Whether the driver is ready and `queue` usable.
    fn live(&self, queue: usize) -> bool {
        let s = &self.state;
        s.status & STATUS_DRIVER_OK != 0
            && s.status & STATUS_NEEDS_RESET == 0
            && self.queues.get(queue).is_some_and(Queue::valid)
    }

    /// The driver made buffers available on `queue`.
    fn notify(&mut self, queue: usize) {
        if !self.live(queue) {
            return;
        }
        let result = match &mut self.backend {
            Backend::Block(block) => serve_block(block, &self.memory, &mut self.queues[0]),
            Backend::Net(net) if queue == TX => net.transmit(&self.memory, &mut self.queues[TX]),
            Backend::Net(_) => {
                // Receive buffers: fill them with what waits, and let the
                // receive thread read the TAP again if it had stopped.
                self.kick();
                return self.deliver();
            }
        };
        match result {
            Ok(true) => self.interrupt(INT_USED_BUFFER),
            Ok(false) => {}
            Err(_) => self.needs_reset(),
        }
    }

    /// A card's held frames into the guest's receive buffers.
    fn deliver(&mut self) {
        if !self.live(RX) {
            return;
        }
        let Backend::Net(net) = &mut self.backend else {
            return;
        };
        match net.deliver(&self.memory, &mut self.queues[RX]) {
            Ok(done) => {
                if done.interrupt {
                    self.interrupt(INT_USED_BUFFER);
                }
                if done.frames > 0 {
                    self.doorbell.ring();
                }
            }
            Err(_) => self.needs_reset(),
        }
    }

    fn kick(&self) {
        if let Some(kick) = &self.kick {
            let _ = kick.write(1);
        }
    }

    fn needs_reset(&mut self) {
        self.state.status |= STATUS_NEEDS_RESET;
        self.interrupt(INT_CONFIG_CHANGE);
    }

    fn interrupt(&mut self, why: u32) {
        self.state.interrupt_status |= why;
        let _ = self.irq.write(1);
    }

    fn save(&self) -> DeviceState {
        let mut transport = self.state.clone();
        transport.queues = self.queues.iter().map(|q| q.state.clone()).collect();
        let card = match &self.backend {
            Backend::Block(block) => Card::Block {
                disk: block.config.clone(),
                capacity: block.capacity(),
                counters: block.counters,
            },
            Backend::Net(net) => Card::Net {
                nic: net.config.clone(),
                counters: net.counters,
            },
        };
        DeviceState { card, transport }
    }

    fn block(&mut self) -> Option<&mut Block> {
        match &mut self.backend {
            Backend::Block(block) => Some(block),
            Backend::Net(_) => None,
        }
    }

    fn net(&mut self) -> Option<&mut Net> {
        match &mut self.backend {
            Backend::Net(net) => Some(net),
            Backend::Block(_) => None,
        }
    }
}

/// Serves every request the driver made available on a drive's queue.
fn serve_block(block: &mut Block, memory: &GuestMemory, queue: &mut Queue) -> Result<bool, super::queue::QueueError> {
    let mut interrupt = false;
    while let Some(chain) = queue.pop(memory)? {
        let used = block.serve(memory, &chain);
        interrupt |= queue.push_used(memory, chain.head, used)?;
    }
    Ok(interrupt)
}

type Shared = Arc<Mutex<MmioDevice>>;

fn lock(device: &Shared) -> MutexGuard<'_, MmioDevice> {
    device.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A card's receive thread: reads the TAP while the card can take frames,
/// and delivers them as its mode says.
fn receive_loop(device: &Shared, kick: &EventFd, tap: &Tap) {
    let mut buf = vec![0u8; 65536];
    loop {
        let wants = {
            let mut d = lock(device);
            if d.ending {
                return;
            }
            d.net().is_some_and(|net| net.wants_frames())
        };
        let mut fds = [
            libc::pollfd {
                fd: kick.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if wants { tap.fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is an array of two pollfd structures that outlives the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if fds[0].revents != 0 {
            let _ = kick.read();
        }
        let mut d = lock(device);
        if d.ending {
            return;
        }
        let ready = d.live(RX);
        if fds[1].revents != 0
            && let Some(net) = d.net()
        {
            // A burst at a time, so the guest's own accesses are not kept waiting.
            for _ in 0..64 {
                if !net.wants_frames() {
                    break;
                }
                match tap.read(&mut buf) {
                    Ok(n) => net.arrived(&buf[..n], ready),
                    Err(_) => break,
                }
            }
        }
        d.deliver();
    }
}

/// A card's receive thread and its wake-up.
#[derive(Debug)]
struct Receiver {
    device: Shared,
    kick: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        lock(&self.device).ending = true;
        let _ = self.kick.write(1);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Counters and medium of one drive, for `stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriveStats {
    pub disk: DiskConfig,
    pub attached: bool,
    pub counters: BlockCounters,
}

/// Counters of one network card, for `stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicStats {
    pub nic: NicConfig,
    /// The TAP device on this host.
    pub tap: String,
    pub counters: NetCounters,
    /// Frames waiting for the guest.
    pub held: usize,
}

/// Frames a paused card held, by slot, to carry to the copy that continues.
pub type HeldFrames = Vec<(u32, Vec<Vec<u8>>)>;

/// The virtio devices of one VM, by slot: its drives first, then its cards.
#[derive(Debug)]
pub struct MmioBus {
    /// Held to be dropped: the receive threads end before the devices go.
    _receivers: Vec<Receiver>,
    devices: Vec<Shared>,
}

impl MmioBus {
    /// One device per drive and per card, each with its interrupt line;
    /// images are not opened yet ([`MmioBus::attach`]), the cards' TAPs are
    /// and their receive threads run.
    pub fn new(
        disks: &[DiskConfig],
        nets: Vec<Net>,
        irqs: Vec<EventFd>,
        memory: &GuestMemory,
        doorbell: &Doorbell,
    ) -> std::io::Result<Self> {
        let backends = disks
            .iter()
            .map(|disk| Backend::Block(Block::new(disk.clone())))
            .chain(nets.into_iter().map(Backend::Net));
        let devices: Vec<Shared> = backends
            .zip(irqs)
            .map(|(backend, irq)| {
                Arc::new(Mutex::new(MmioDevice::new(
                    backend,
                    irq,
                    memory.clone(),
                    doorbell.clone(),
                )))
            })
            .collect();
        let mut receivers = Vec::new();
        for (slot, device) in devices.iter().enumerate() {
            let tap = match lock(device).net() {
                Some(net) => net.tap().try_clone()?,
                None => continue,
            };
            let kick = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
            lock(device).kick = Some(Arc::clone(&kick));
            let (thread_device, thread_kick) = (Arc::clone(device), Arc::clone(&kick));
            let thread = std::thread::Builder::new()
                .name(format!("net{slot}-rx"))
                .spawn(move || receive_loop(&thread_device, &thread_kick, &tap))?;
            receivers.push(Receiver {
                device: Arc::clone(device),
                kick,
                thread: Some(thread),
            });
        }
        Ok(MmioBus {
            _receivers: receivers,
            devices,
        })
    }

    fn device(&self, slot: usize) -> Option<MutexGuard<'_, MmioDevice>> {
        self.devices.get(slot).map(lock)
    }

    fn each(&self) -> impl Iterator<Item = MutexGuard<'_, MmioDevice>> {
        self.devices.iter().map(lock)
    }

    fn find(&self, addr: u64) -> Option<(MutexGuard<'_, MmioDevice>, u64)> {
        let slot = addr.checked_sub(MMIO_BASE)? / MMIO_SIZE;
        let device = self.device(usize::try_from(slot).ok()?)?;
        Some((device, (addr - MMIO_BASE) % MMIO_SIZE))
    }

    /// Whether `addr` is one of ours.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((device, offset)) => {
                device.read(offset, data);
                true
            }
            None => false,
        }
    }

    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((mut device, offset)) => {
                device.write(offset, data);
                true
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Opens and locks every connected image. With `expected`, each must
    /// have the capacity the guest was told (by slot; cards have none).
    pub fn attach(&self, expected: Option<&[u64]>) -> Result<(), DiskError> {
        for (slot, mut device) in self.each().enumerate() {
            let want = expected.and_then(|e| e.get(slot).copied());
            if let Some(block) = device.block() {
                block.attach(want.filter(|&sectors| sectors > 0))?;
            }
        }
        Ok(())
    }

    /// Syncs and closes every image, giving up its lock: first all syncs,
    /// then, only if every one succeeded, the closes.
    pub fn detach(&self) -> Result<(), DiskError> {
        for mut device in self.each() {
            if let Some(block) = device.block() {
                block.sync()?;
            }
        }
        for mut device in self.each() {
            if let Some(block) = device.block() {
                block.close();
            }
        }
        Ok(())
    }

    /// Whether every drive that should be open is.
    pub fn attached(&self) -> bool {
        self.each().all(|mut device| {
            device
                .block()
                .is_none_or(|block| block.attached() || !block.config.attached())
        })
    }

    /// Changes the medium of the CD/DVD drive in `slot` and tells the driver.
    pub fn change_medium(&self, slot: usize, medium: Option<&Path>) -> Result<DiskConfig, DiskError> {
        let mut device = self.device(slot).expect("caller checked the slot");
        let block = device.block().expect("caller checked it is a drive");
        block.change_medium(medium)?;
        let config = block.config.clone();
        device.state.config_generation = device.state.config_generation.wrapping_add(1);
        device.interrupt(INT_CONFIG_CHANGE);
        Ok(config)
    }

    /// The drives, by slot (the cards come after them).
    pub fn disks(&self) -> Vec<DiskConfig> {
        self.each()
            .filter_map(|mut device| device.block().map(|block| block.config.clone()))
            .collect()
    }

    pub fn stats(&self) -> Vec<DriveStats> {
        self.each()
            .filter_map(|mut device| {
                device.block().map(|block| DriveStats {
                    disk: block.config.clone(),
                    attached: block.attached(),
                    counters: block.counters,
                })
            })
            .collect()
    }

    pub fn nic_stats(&self) -> Vec<NicStats> {
        self.each()
            .filter_map(|mut device| {
                device.net().map(|net| NicStats {
                    nic: net.config.clone(),
                    tap: net.tap().name().to_string(),
                    counters: net.counters,
                    held: net.held(),
                })
            })
            .collect()
    }

    /// Sets what every card's receive thread does with frames; delivering,
    /// what was held goes to the guest first.
    pub fn set_rx_mode(&self, mode: RxMode) {
        for mut device in self.each() {
            if let Some(net) = device.net() {
                net.mode = mode;
                device.deliver();
                device.kick();
            }
        }
    }

    /// Tells the network each card is here (one RARP each).
    pub fn announce(&self) {
        for mut device in self.each() {
            if let Some(net) = device.net() {
                net.announce();
            }
        }
    }

    /// Announces each card of a VM that runs here; `false` when it does
    /// not (paused: another copy may be about to run elsewhere), and then
    /// nothing is sent. Checked under each card's lock, so no announcement
    /// leaves after a pause has returned.
    pub fn announce_running(&self) -> bool {
        let mut any = false;
        for mut device in self.each() {
            if let Some(net) = device.net()
                && net.mode == RxMode::Deliver
            {
                net.announce();
                any = true;
            }
        }
        any
    }

    /// The frames the cards hold (a paused VM's), leaving none.
    pub fn take_held(&self) -> HeldFrames {
        self.each()
            .enumerate()
            .filter_map(|(slot, mut device)| {
                let frames = device.net()?.take_held();
                (!frames.is_empty()).then_some((slot as u32, frames))
            })
            .collect()
    }

    /// Frames another copy held, ahead of anything heard here.
    pub fn put_held(&self, held: HeldFrames) {
        for (slot, frames) in held {
            if let Some(mut device) = self.device(slot as usize)
                && let Some(net) = device.net()
            {
                net.put_held(frames);
            }
        }
    }

    pub fn save(&self) -> Vec<DeviceState> {
        self.each().map(|device| device.save()).collect()
    }

    /// Takes the saved transports and media (the images are attached by
    /// [`MmioBus::attach`] with the saved capacities).
    pub fn restore(&self, saved: &[DeviceState]) -> Result<(), String> {
        if saved.len() != self.devices.len() {
            return Err(format!(
                "the saved machine has {} virtio devices, this one {}",
                saved.len(),
                self.devices.len()
            ));
        }
        for (slot, saved) in saved.iter().enumerate() {
            let mut device = self.device(slot).expect("slot in range");
            if saved.transport.queues.len() != device.queues.len() {
                return Err(format!(
                    "virtio device {slot} has {} queues saved, {} here",
                    saved.transport.queues.len(),
                    device.queues.len()
                ));
            }
            for q in &saved.transport.queues {
                if q.ready && (q.size == 0 || q.size > super::queue::MAX_QUEUE_SIZE || !q.size.is_power_of_two()) {
                    return Err(format!("virtio device {slot} has a queue of size {}", q.size));
                }
            }
            match (&saved.card, &mut device.backend) {
                (Card::Block { disk, counters, .. }, Backend::Block(block)) => {
                    if disk.kind != block.config.kind || disk.path != block.config.path {
                        return Err(format!(
                            "virtio device {slot} is {} on the saved machine, {} here",
                            disk.path.display(),
                            block.config.path.display()
                        ));
                    }
                    block.config = disk.clone();
                    block.counters = *counters;
                }
                (Card::Net { nic, counters }, Backend::Net(net)) => {
                    if *nic != net.config {
                        return Err(format!(
                            "virtio device {slot} is card {} on {} on the saved machine, {} on {} here",
                            nic.mac, nic.network, net.config.mac, net.config.network
                        ));
                    }
                    net.counters = *counters;
                }
                _ => return Err(format!("virtio device {slot} is another kind of device here")),
            }
            for (queue, state) in device.queues.iter_mut().zip(&saved.transport.queues) {
                queue.state = state.clone();
            }
            device.state = saved.transport.clone();
            device.state.queues.clear();
        }
        Ok(())
    }

    /// The capacity each device's guest was told (for [`MmioBus::attach`];
    /// 0 for a card).
    pub fn capacities(saved: &[DeviceState]) -> Vec<u64> {
        saved
            .iter()
            .map(|d| match d.card {
                Card::Block { capacity, .. } => capacity,
                Card::Net { .. } => 0,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::block::DiskKind;
    use super::super::queue::tests::{AVAIL, DESC, USED, memory, offer, put_desc};
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    fn bus(path: &Path, memory: &GuestMemory) -> MmioBus {
        let disk = DiskConfig {
            kind: DiskKind::Disk,
            path: path.to_path_buf(),
            connected: true,
        };
        let irqs = vec![EventFd::new(libc::EFD_NONBLOCK).unwrap()];
        let bus = MmioBus::new(&[disk], Vec::new(), irqs, memory, &Doorbell::default()).unwrap();
        bus.attach(None).unwrap();
        bus
    }

    fn reg(bus: &MmioBus, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        assert!(bus.read(MMIO_BASE + offset, &mut data));
        u32::from_le_bytes(data)
    }

    fn set(bus: &MmioBus, offset: u64, value: u32) {
        assert!(bus.write(MMIO_BASE + offset, &value.to_le_bytes()));
    }

    /// The driver's side of section 3.1.1, as the test guest does it.
    fn driver_init(bus: &MmioBus) {
        set(bus, 0x070, 0);
        set(bus, 0x070, 1 | 2);
        set(bus, 0x024, 1);
        set(bus, 0x020, 1); // VERSION_1
        set(bus, 0x070, 1 | 2 | 8);
        assert_eq!(reg(bus, 0x070) & 8, 8, "features accepted");
        set(bus, 0x030, 0);
        set(bus, 0x038, 8);
        set(bus, 0x080, DESC as u32);
        set(bus, 0x090, AVAIL as u32);
        set(bus, 0x0a0, USED as u32);
        set(bus, 0x044, 1);
        set(bus, 0x070, 1 | 2 | 8 | 4);
    }

    #[test]
    fn a_driver_finds_the_disk_and_its_writes_survive_save_and_restore() {
        let memory = memory();
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(64 * 512).unwrap();
        let bus = bus(file.path(), &memory);
        assert_eq!(reg(&bus, 0), MAGIC);
        assert_eq!(reg(&bus, 8), DEVICE_BLOCK);
        assert_eq!(reg(&bus, 0x100), 64, "capacity low word");
        let mut nothing = [0u8; 4];
        assert!(!bus.read(MMIO_BASE + 0x1000, &mut nothing), "no second device");
        driver_init(&bus);

        // One write request: header at 0x10000, data at 0x20000, status at 0x30000.
        let mut header = [0u8; 16];
        header[0] = 1; // OUT
        header[8] = 5; // sector 5
        memory.write_slice(&header, GuestAddress(0x10000)).unwrap();
        memory.write_slice(&[7u8; 512], GuestAddress(0x20000)).unwrap();
        put_desc(&memory, 0, 0x10000, 16, 1, 1);
        put_desc(&memory, 1, 0x20000, 512, 1, 2);
        put_desc(&memory, 2, 0x30000, 1, 2, 0);
        offer(&memory, 0, 0, 8);
        set(&bus, 0x050, 0);
        let used: u16 = memory.read_obj(GuestAddress(USED + 2)).unwrap();
        assert_eq!(used, 1);
        assert_eq!(reg(&bus, 0x060) & 1, 1, "used-buffer interrupt");
        let mut sector = [0u8; 512];
        std::os::unix::fs::FileExt::read_exact_at(file.as_file(), &mut sector, 5 * 512).unwrap();
        assert_eq!(sector, [7u8; 512]);

        let saved = bus.save();
        assert_eq!(saved[0].transport.queues[0].next_avail, 1);
        bus.detach().unwrap();
        let again = MmioBus::new(
            &[saved[0].disk().unwrap().clone()],
            Vec::new(),
            vec![EventFd::new(libc::EFD_NONBLOCK).unwrap()],
            &memory,
            &Doorbell::default(),
        )
        .unwrap();
        again.restore(&saved).unwrap();
        again.attach(Some(&MmioBus::capacities(&saved))).unwrap();
        assert_eq!(again.save(), saved, "state round-trips");
        // The restored device continues the rings where they were.
        header[0] = 0; // IN
        memory.write_slice(&header, GuestAddress(0x10000)).unwrap();
        memory.write_slice(&[0u8; 512], GuestAddress(0x20000)).unwrap();
        put_desc(&memory, 1, 0x20000, 512, 1 | 2, 2);
        offer(&memory, 1, 0, 8);
        set(&again, 0x050, 0);
        let used: u16 = memory.read_obj(GuestAddress(USED + 2)).unwrap();
        assert_eq!(used, 2);
        let mut back = [0u8; 512];
        memory.read_slice(&mut back, GuestAddress(0x20000)).unwrap();
        assert_eq!(back, [7u8; 512]);
    }

    #[test]
    fn a_broken_ring_marks_the_device_for_reset() {
        let memory = memory();
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(8 * 512).unwrap();
        let bus = bus(file.path(), &memory);
        driver_init(&bus);
        put_desc(&memory, 0, 0x10000, 16, 1, 0); // loops onto itself
        offer(&memory, 0, 0, 8);
        set(&bus, 0x050, 0);
        assert_eq!(reg(&bus, 0x070) & STATUS_NEEDS_RESET, STATUS_NEEDS_RESET);
        assert_eq!(reg(&bus, 0x060) & INT_CONFIG_CHANGE, INT_CONFIG_CHANGE);
        set(&bus, 0x070, 0);
        assert_eq!(reg(&bus, 0x070), 0, "a reset clears it");
    }

    #[test]
    fn features_not_offered_are_refused() {
        let memory = memory();
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(8 * 512).unwrap();
        let bus = bus(file.path(), &memory);
        set(&bus, 0x070, 3);
        set(&bus, 0x024, 0);
        set(&bus, 0x020, 1 << 29); // EVENT_IDX: not offered
        set(&bus, 0x024, 1);
        set(&bus, 0x020, 1);
        set(&bus, 0x070, 3 | 8);
        assert_eq!(reg(&bus, 0x070) & 8, 0);
    }
}
