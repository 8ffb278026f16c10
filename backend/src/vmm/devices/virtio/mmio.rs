//! The virtio-mmio transport (virtio 1.x, section 4.2, version 2 registers)
//! for block devices, and the bus that routes the guest's MMIO accesses to
//! them.
//!
//! Requests are served on the vCPU thread that wrote `QueueNotify`, so when
//! every vCPU is paused no request is in flight: the pause of a migration's
//! switchover drains the devices by construction. A driver that breaks the
//! rules (rings outside memory, loops) gets `DEVICE_NEEDS_RESET`, never a
//! panic.

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;

use super::block::{Block, BlockCounters, DiskConfig, DiskError};
use super::queue::{Queue, QueueState};
use crate::vmm::memory::GuestMemory;

/// Where the first device's registers are; each takes one page.
pub const MMIO_BASE: u64 = 0xd000_0000;
pub const MMIO_SIZE: u64 = 0x1000;
/// The interrupt line of each device slot (ISA lines nothing else uses).
pub const IRQS: [u32; 4] = [5, 6, 7, 10];
/// Most virtio devices a VM has.
pub const MAX_DEVICES: usize = IRQS.len();

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const DEVICE_BLOCK: u32 = 2;
const VENDOR: u32 = 0x6769_6d76; // "vmig"
const F_VERSION_1: u64 = 1 << 32;

const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_NEEDS_RESET: u32 = 64;
const INT_USED_BUFFER: u32 = 1;
const INT_CONFIG_CHANGE: u32 = 2;

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
    pub queue: QueueState,
    /// Sectors the guest was told the medium has.
    pub capacity: u64,
    pub counters: BlockCounters,
}

/// One virtio-mmio block device.
#[derive(Debug)]
pub struct MmioBlock {
    block: Block,
    queue: Queue,
    state: TransportState,
    irq: EventFd,
    memory: GuestMemory,
}

impl MmioBlock {
    fn new(config: DiskConfig, irq: EventFd, memory: GuestMemory) -> Self {
        MmioBlock {
            block: Block::new(config),
            queue: Queue::new(),
            state: TransportState::default(),
            irq,
            memory,
        }
    }

    fn device_features(&self) -> u64 {
        F_VERSION_1 | self.block.features()
    }

    fn read(&self, offset: u64, data: &mut [u8]) {
        if offset >= 0x100 {
            return self.read_config(offset - 0x100, data);
        }
        let s = &self.state;
        let q = &self.queue.state;
        let half = |value: u64, sel: u32| match sel {
            0 => value as u32,
            1 => (value >> 32) as u32,
            _ => 0,
        };
        let value: u32 = match offset {
            0x000 => MAGIC,
            0x004 => VERSION,
            0x008 => DEVICE_BLOCK,
            0x00c => VENDOR,
            0x010 => half(self.device_features(), s.device_features_sel),
            0x034 if s.queue_sel == 0 => u32::from(super::queue::MAX_QUEUE_SIZE),
            0x038 if s.queue_sel == 0 => u32::from(q.size),
            0x044 if s.queue_sel == 0 => u32::from(q.ready),
            0x060 => s.interrupt_status,
            0x070 => s.status,
            0x080 => q.desc as u32,
            0x084 => (q.desc >> 32) as u32,
            0x090 => q.avail as u32,
            0x094 => (q.avail >> 32) as u32,
            0x0a0 => q.used as u32,
            0x0a4 => (q.used >> 32) as u32,
            0x0fc => s.config_generation,
            _ => 0,
        };
        if data.len() == 4 {
            data.copy_from_slice(&value.to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    /// The block configuration space: capacity (u64), then fields we do not offer.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; 0x40];
        config[0..8].copy_from_slice(&self.block.capacity().to_le_bytes());
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
        let s = &mut self.state;
        let q = &mut self.queue.state;
        let set_low = |field: &mut u64, v: u32| *field = (*field & !0xffff_ffff) | u64::from(v);
        let set_high = |field: &mut u64, v: u32| *field = (*field & 0xffff_ffff) | (u64::from(v) << 32);
        // Queue registers may only change while the queue is not live.
        let queue_writable = s.queue_sel == 0 && !q.ready;
        match offset {
            0x014 => s.device_features_sel = value,
            0x020 => match s.driver_features_sel {
                0 => set_low(&mut s.driver_features, value),
                1 => set_high(&mut s.driver_features, value),
                _ => {}
            },
            0x024 => s.driver_features_sel = value,
            0x030 => s.queue_sel = value,
            0x038 if queue_writable => q.size = value.min(0xffff) as u16,
            0x044 if s.queue_sel == 0 => q.ready = value == 1,
            0x050 if value == 0 => self.notify(),
            0x064 => s.interrupt_status &= !value,
            0x070 => self.set_status(value),
            0x080 if queue_writable => set_low(&mut q.desc, value),
            0x084 if queue_writable => set_high(&mut q.desc, value),
            0x090 if queue_writable => set_low(&mut q.avail, value),
            0x094 if queue_writable => set_high(&mut q.avail, value),
            0x0a0 if queue_writable => set_low(&mut q.used, value),
            0x0a4 if queue_writable => set_high(&mut q.used, value),
            _ => {}
        }
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            // Reset: the device forgets the driver, not its medium.
            let capacity = self.state.capacity;
            let counters = self.state.counters;
            self.state = TransportState {
                capacity,
                counters,
                ..TransportState::default()
            };
            self.queue.reset();
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
    }

    /// Serves every request the driver made available.
    fn notify(&mut self) {
        let s = &self.state;
        if s.status & STATUS_DRIVER_OK == 0 || s.status & STATUS_NEEDS_RESET != 0 || !self.queue.valid() {
            return;
        }
        let mut interrupt = false;
        loop {
            let chain = match self.queue.pop(&self.memory) {
                Ok(Some(chain)) => chain,
                Ok(None) => break,
                Err(_) => return self.needs_reset(),
            };
            let used = self.block.serve(&self.memory, &chain);
            match self.queue.push_used(&self.memory, chain.head, used) {
                Ok(wanted) => interrupt |= wanted,
                Err(_) => return self.needs_reset(),
            }
        }
        self.state.counters = self.block.counters;
        if interrupt {
            self.interrupt(INT_USED_BUFFER);
        }
    }

    fn needs_reset(&mut self) {
        self.state.status |= STATUS_NEEDS_RESET;
        self.state.counters = self.block.counters;
        self.interrupt(INT_CONFIG_CHANGE);
    }

    fn interrupt(&mut self, why: u32) {
        self.state.interrupt_status |= why;
        let _ = self.irq.write(1);
    }

    fn save(&self) -> DeviceState {
        let mut transport = self.state.clone();
        transport.queue = self.queue.state.clone();
        transport.capacity = self.block.capacity();
        transport.counters = self.block.counters;
        DeviceState {
            disk: self.block.config.clone(),
            transport,
        }
    }
}

/// A device as it migrates: its drive and its transport.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    pub disk: DiskConfig,
    pub transport: TransportState,
}

/// Counters and medium of one drive, for `stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriveStats {
    pub disk: DiskConfig,
    pub attached: bool,
    pub counters: BlockCounters,
}

/// The virtio devices of one VM, by slot.
#[derive(Debug)]
pub struct MmioBus {
    devices: Vec<Mutex<MmioBlock>>,
}

impl MmioBus {
    /// One device per drive, with its interrupt line; images are not opened
    /// yet ([`MmioBus::attach`]).
    pub fn new(disks: &[DiskConfig], irqs: Vec<EventFd>, memory: &GuestMemory) -> Self {
        let devices = disks
            .iter()
            .zip(irqs)
            .map(|(disk, irq)| Mutex::new(MmioBlock::new(disk.clone(), irq, memory.clone())))
            .collect();
        MmioBus { devices }
    }

    fn device(&self, slot: usize) -> Option<MutexGuard<'_, MmioBlock>> {
        self.devices
            .get(slot)
            .map(|d| d.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn find(&self, addr: u64) -> Option<(MutexGuard<'_, MmioBlock>, u64)> {
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
    /// have the capacity the guest was told.
    pub fn attach(&self, expected: Option<&[u64]>) -> Result<(), DiskError> {
        for slot in 0..self.devices.len() {
            let mut device = self.device(slot).expect("slot in range");
            let want = expected.and_then(|e| e.get(slot).copied());
            device.block.attach(want.filter(|&sectors| sectors > 0))?;
        }
        Ok(())
    }

    /// Syncs and closes every image, giving up its lock: first all syncs,
    /// then, only if every one succeeded, the closes.
    pub fn detach(&self) -> Result<(), DiskError> {
        for slot in 0..self.devices.len() {
            self.device(slot).expect("slot in range").block.sync()?;
        }
        for slot in 0..self.devices.len() {
            self.device(slot).expect("slot in range").block.close();
        }
        Ok(())
    }

    /// Whether every drive that should be open is.
    pub fn attached(&self) -> bool {
        (0..self.devices.len()).all(|slot| {
            let device = self.device(slot).expect("slot in range");
            device.block.attached() || !device.block.config.attached()
        })
    }

    /// Changes the medium of the CD/DVD drive in `slot` and tells the driver.
    pub fn change_medium(&self, slot: usize, medium: Option<&Path>) -> Result<DiskConfig, DiskError> {
        let mut device = self.device(slot).expect("caller checked the slot");
        device.block.change_medium(medium)?;
        device.state.config_generation = device.state.config_generation.wrapping_add(1);
        device.interrupt(INT_CONFIG_CHANGE);
        Ok(device.block.config.clone())
    }

    pub fn disks(&self) -> Vec<DiskConfig> {
        (0..self.devices.len())
            .map(|slot| self.device(slot).expect("slot in range").block.config.clone())
            .collect()
    }

    pub fn stats(&self) -> Vec<DriveStats> {
        (0..self.devices.len())
            .map(|slot| {
                let device = self.device(slot).expect("slot in range");
                DriveStats {
                    disk: device.block.config.clone(),
                    attached: device.block.attached(),
                    counters: device.block.counters,
                }
            })
            .collect()
    }

    pub fn save(&self) -> Vec<DeviceState> {
        (0..self.devices.len())
            .map(|slot| self.device(slot).expect("slot in range").save())
            .collect()
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
            if saved.disk.kind != device.block.config.kind || saved.disk.path != device.block.config.path {
                return Err(format!(
                    "virtio device {slot} is {} on the saved machine, {} here",
                    saved.disk.path.display(),
                    device.block.config.path.display()
                ));
            }
            let q = &saved.transport.queue;
            if q.ready && (q.size == 0 || q.size > super::queue::MAX_QUEUE_SIZE || !q.size.is_power_of_two()) {
                return Err(format!("virtio device {slot} has a queue of size {}", q.size));
            }
            device.block.config = saved.disk.clone();
            device.block.counters = saved.transport.counters;
            device.queue.state = q.clone();
            device.state = saved.transport.clone();
        }
        Ok(())
    }

    /// The capacity each device's guest was told (for [`MmioBus::attach`]).
    pub fn capacities(saved: &[DeviceState]) -> Vec<u64> {
        saved.iter().map(|d| d.transport.capacity).collect()
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
        let bus = MmioBus::new(&[disk], vec![EventFd::new(libc::EFD_NONBLOCK).unwrap()], memory);
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
        assert_eq!(saved[0].transport.queue.next_avail, 1);
        bus.detach().unwrap();
        let again = MmioBus::new(
            &[saved[0].disk.clone()],
            vec![EventFd::new(libc::EFD_NONBLOCK).unwrap()],
            &memory,
        );
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
