//! A small KVM virtual machine monitor: one VM, its memory, vCPU threads and
//! legacy devices, with pause/resume and save/restore of the whole machine.

//!
//! It knows nothing of migration or of the process that runs it: the VMM
//! process ([`crate::runtime`]) owns a [`Vm`], and the migration engine
//! works on it through the traits of [`crate::migration`].

pub mod boot;
pub mod cpuid;
pub mod devices;
pub mod layout;
pub mod memory;
pub mod regs;
pub mod snapshot;
pub mod state;
pub mod stop;
pub mod vcpu;

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use kvm_bindings::{
    KVM_CLOCK_REALTIME, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_PIT_SPEAKER_DUMMY,
    kvm_clock_data, kvm_irqchip, kvm_pit_config,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use vmm_sys_util::eventfd::EventFd;

use self::boot::{BootConfig, BootError};
use self::devices::DevicesState;
use self::devices::virtio::net::{Net, RxMode};
use self::devices::virtio::{Bridges, DriveStats, HeldFrames, MmioBus, NicStats, mmio as virtio_mmio};
use self::devices::{PortIoBus, SerialConsole};
use self::memory::{GuestMemory, MemoryError};
use self::regs::RegsError;
use self::state::{IrqchipState, STATE_FORMAT};
pub use self::state::{MachineConfig, VmState};
use self::stop::Stops;
use self::vcpu::{Doorbell, VcpuContext, VcpuError, VcpuHandle, VcpuState};

/// The KVM device node.
pub const KVM_DEVICE: &str = "/dev/kvm";
/// Most vCPUs one VM may have (8-bit xAPIC IDs, one kept for the IOAPIC).
pub const MAX_VCPUS: u8 = boot::mptable::MAX_CPUS;

#[derive(Debug, Error)]
pub enum VmError {
    #[error(
        "cannot open {KVM_DEVICE} (load the kvm module with modprobe kvm_intel or kvm_amd, \
         and run as a user who may read and write {KVM_DEVICE}, e.g. one in the kvm group)"
    )]
    KvmUnavailable {
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("{KVM_DEVICE} lacks required capability {0}")]
    MissingCapability(&'static str),
    #[error("KVM refused to {what}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("{vcpus} vCPUs requested; between 1 and {max} are supported here")]
    VcpuCount { vcpus: u16, max: u16 },
    #[error("guest memory")]
    Memory(#[from] MemoryError),
    #[error("boot")]
    Boot(#[from] BootError),
    #[error("vCPU setup")]
    Regs(#[from] RegsError),
    #[error("vCPU")]
    Vcpu(#[from] VcpuError),
    #[error("CPUID")]
    Cpuid(#[from] cpuid::CpuidError),
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("restored device state is invalid")]
    DeviceState(#[from] devices::serial::SerialStateError),
    #[error("restored virtio state is invalid: {0}")]
    VirtioState(String),
    #[error("{} drives and network cards requested; at most {} are supported", .0, devices::virtio::mmio::MAX_DEVICES)]
    TooManyDisks(usize),
    #[error("network card")]
    Net(#[from] devices::virtio::NetError),
    #[error("drive {slot} is not a CD/DVD drive")]
    NotCdrom { slot: usize },
    #[error("disk")]
    Disk(#[from] devices::virtio::DiskError),
    #[error("the VM is {0}, which does not allow this")]
    WrongState(RunState),
    #[error("vCPU {0} has ended")]
    VcpuEnded(usize),
    #[error(
        "saved machine does not match: it has {saved_memory} bytes and {saved_vcpus} vCPUs, \
         this VM {memory} bytes and {vcpus} vCPUs"
    )]
    ConfigMismatch {
        saved_memory: u64,
        saved_vcpus: u8,
        memory: u64,
        vcpus: u8,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// Where a VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Built, vCPUs not yet started.
    Created,
    Running,
    Paused,
    /// The guest ended (power off, reset, crash); only its state can be read.
    Stopped,
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RunState::Created => "created",
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Stopped => "stopped",
        })
    }
}

/// How a new VM gets its first state.
#[derive(Debug)]
pub enum Start {
    /// Load a kernel and boot it.
    Boot(BootConfig),
    /// Continue a saved machine: its state and an image of its memory.
    Restore {
        state: Box<VmState>,
        memory_image: std::fs::File,
    },
    /// Nothing yet: memory and state arrive by live migration ([`Vm::restore`]).
    Incoming,
}

/// Counters for `stats`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmStats {
    pub state: RunState,
    pub uptime_ms: u64,
    pub vcpus: u8,
    pub memory_bytes: u64,
    /// Guest memory the host actually holds (pages touched so far).
    pub memory_resident_bytes: u64,
    pub exits: u64,
    pub io_exits: u64,
    pub mmio_exits: u64,
    /// Times a vCPU was parked by the paravirtual sleep register.
    #[serde(default)]
    pub pv_sleeps: u64,
    pub console_bytes: u64,
    /// Each drive: its medium, whether the VMM holds it, its counters.
    #[serde(default)]
    pub drives: Vec<DriveStats>,
    /// Each network card: its network, MAC, TAP and counters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<NicStats>,
}

/// How a VM that has just resumed somewhere new tells the network where it
/// is: RARP from each card's MAC, `rounds` times, the first at once, then
/// after `initial_ms`, each gap `step_ms` longer than the one before, at most
/// `max_ms` (QEMU's announce-self has the same four knobs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnounceOptions {
    pub rounds: u32,
    pub initial_ms: u64,
    pub step_ms: u64,
    pub max_ms: u64,
}

impl Default for AnnounceOptions {
    fn default() -> Self {
        AnnounceOptions {
            rounds: 5,
            initial_ms: 50,
            step_ms: 100,
            max_ms: 550,
        }
    }
}

impl AnnounceOptions {
    /// The waits before each round after the first.
    pub fn gaps(&self) -> impl Iterator<Item = std::time::Duration> + use<> {
        let (initial, step, max) = (self.initial_ms, self.step_ms, self.max_ms.max(1));
        (0..u64::from(self.rounds.saturating_sub(1)))
            .map(move |i| std::time::Duration::from_millis(initial.saturating_add(step.saturating_mul(i)).min(max)))
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.rounds > 100 {
            return Err(format!("announce rounds: {} is more than 100", self.rounds));
        }
        if self.max_ms > 60_000 || self.initial_ms > 60_000 || self.step_ms > 60_000 {
            return Err("announce intervals: at most 60000 ms".into());
        }
        Ok(())
    }
}

/// One virtual machine.
#[derive(Debug)]
pub struct Vm {
    // Field order is drop order: vCPU threads end before the VM fd and memory go.
    vcpus: Vec<VcpuHandle>,
    /// vCPU states taken as the vCPUs last paused ([`Vm::pause_capturing`]).
    captured: Option<Vec<VcpuState>>,
    /// When the first vCPU left the guest at the last pause.
    paused_at: Option<Instant>,
    bus: Arc<PortIoBus>,
    mmio: Arc<MmioBus>,
    fd: Arc<VmFd>,
    memory: GuestMemory,
    machine: MachineConfig,
    /// The CPUID the guest sees on vCPU 0 (what a migration target must offer).
    guest_cpuid: Vec<kvm_bindings::kvm_cpuid_entry2>,
    xsave_size: usize,
    state: RunState,
    created: Instant,
    _kvm: Kvm,
}

/// Opens `/dev/kvm` with a message that tells the operator what to do.
pub fn open_kvm() -> Result<Kvm, VmError> {
    Kvm::new().map_err(|source| VmError::KvmUnavailable { source })
}

impl Vm {
    /// Builds a VM and gives it its first state; vCPUs stay paused until
    /// [`Vm::resume`]. Its network cards are plugged into this host's
    /// `bridges`.
    pub fn create(
        machine: MachineConfig,
        console: Box<dyn Write + Send>,
        stops: Stops,
        start: Start,
        bridges: &Bridges,
    ) -> Result<Self, VmError> {
        memory::validate_size(machine.memory_bytes)?;
        let kvm = open_kvm()?;
        let max_vcpus = kvm.get_max_vcpus().min(usize::from(MAX_VCPUS)) as u16;
        if machine.vcpus == 0 || u16::from(machine.vcpus) > max_vcpus {
            return Err(VmError::VcpuCount {
                vcpus: u16::from(machine.vcpus),
                max: max_vcpus,
            });
        }
        for (cap, name) in [
            (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
            (Cap::Pit2, "KVM_CAP_PIT2"),
            (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
            (Cap::Xcrs, "KVM_CAP_XCRS"),
            (Cap::Irqfd, "KVM_CAP_IRQFD"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmError::MissingCapability(name));
            }
        }
        let fd = kvm.create_vm().map_err(kvm_err("create a VM"))?;
        fd.set_tss_address(layout::KVM_TSS_ADDRESS)
            .map_err(kvm_err("set the TSS address"))?;
        fd.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDRESS)
            .map_err(kvm_err("set the identity map address"))?;
        fd.create_irq_chip().map_err(kvm_err("create the irqchip"))?;
        fd.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .map_err(kvm_err("create the PIT"))?;

        let memory = memory::create(machine.memory_bytes)?;
        memory::register_slots(&fd, &memory, false)?;

        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?;
        fd.register_irqfd(&serial_irq, devices::SERIAL_IRQ)
            .map_err(kvm_err("register the serial interrupt"))?;
        let bus = Arc::new(PortIoBus::new(SerialConsole::new(serial_irq, console), stops.clone()));
        let slots = machine.disks.len() + machine.nics.len();
        if slots > virtio_mmio::MAX_DEVICES {
            return Err(VmError::TooManyDisks(slots));
        }
        let mut irqs = Vec::with_capacity(slots);
        for irq in &virtio_mmio::IRQS[..slots] {
            let event = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?;
            fd.register_irqfd(&event, *irq)
                .map_err(kvm_err("register a virtio interrupt"))?;
            irqs.push(event);
        }
        // A migration's target hears nothing meant for the guest until the
        // switchover; any other VM holds its frames until it first runs.
        let rx_mode = match start {
            Start::Incoming => RxMode::Discard,
            _ => RxMode::Hold,
        };
        let mut nets = Vec::with_capacity(machine.nics.len());
        for (index, nic) in machine.nics.iter().enumerate() {
            let tap = format!("vmig{}n{}", std::process::id(), machine.disks.len() + index);
            nets.push(Net::open(nic.clone(), bridges, &tap, rx_mode)?);
        }
        let doorbell = Doorbell::default();
        let mmio = Arc::new(MmioBus::new(&machine.disks, nets, irqs, &memory, &doorbell).map_err(VmError::EventFd)?);

        let supported = cpuid::supported(&kvm)?;
        let mut vcpu_fds: Vec<(VcpuFd, Vec<kvm_bindings::kvm_cpuid_entry2>)> =
            Vec::with_capacity(usize::from(machine.vcpus));
        for id in 0..machine.vcpus {
            let vcpu = fd.create_vcpu(u64::from(id)).map_err(kvm_err("create a vCPU"))?;
            let table = cpuid::for_vcpu(&supported, id, machine.vcpus, &machine.cpuid_masks)?;
            vcpu.set_cpuid2(&table).map_err(kvm_err("set CPUID"))?;
            regs::setup_vcpu_common(&vcpu)?;
            vcpu_fds.push((vcpu, table.as_slice().to_vec()));
        }
        let guest_cpuid = vcpu_fds[0].1.clone();

        let mut restore = None;
        match start {
            Start::Boot(mut config) => {
                mmio.attach(None)?;
                for slot in 0..mmio.len() {
                    config.cmdline.push(' ');
                    config.cmdline.push_str(&virtio_mmio::cmdline_token(slot));
                }
                let entry = boot::load(&memory, &config, machine.vcpus)?;
                regs::setup_boot_vcpu(&vcpu_fds[0].0, &memory, entry)?;
            }
            Start::Restore {
                state,
                mut memory_image,
            } => {
                if state.machine.memory_bytes != machine.memory_bytes || state.machine.vcpus != machine.vcpus {
                    return Err(VmError::ConfigMismatch {
                        saved_memory: state.machine.memory_bytes,
                        saved_vcpus: state.machine.vcpus,
                        memory: machine.memory_bytes,
                        vcpus: machine.vcpus,
                    });
                }
                memory::load_image(&memory, &mut memory_image)?;
                restore = Some(state);
            }
            Start::Incoming => {}
        }

        let xsave_size = usize::try_from(fd.check_extension_int(Cap::Xsave2)).unwrap_or(0);
        let context = VcpuContext {
            bus: Arc::clone(&bus),
            mmio: Arc::clone(&mmio),
            stops,
            msr_indices: Arc::new(
                kvm.get_msr_index_list()
                    .map_err(kvm_err("list MSRs"))?
                    .as_slice()
                    .to_vec(),
            ),
            xsave_size,
            doorbell,
        };
        let mut vcpus = Vec::with_capacity(vcpu_fds.len());
        for (id, (vcpu, cpuid)) in vcpu_fds.into_iter().enumerate() {
            vcpus.push(VcpuHandle::spawn(id as u8, vcpu, cpuid, context.clone())?);
        }

        let mut vm = Vm {
            vcpus,
            captured: None,
            paused_at: None,
            bus,
            mmio,
            fd: Arc::new(fd),
            memory,
            machine,
            guest_cpuid,
            xsave_size,
            state: RunState::Created,
            created: Instant::now(),
            _kvm: kvm,
        };
        if let Some(state) = restore {
            vm.restore(*state)?;
        }
        Ok(vm)
    }

    /// The VM's file descriptor, shared with the migration engine (dirty log).
    pub fn fd(&self) -> &Arc<VmFd> {
        &self.fd
    }

    /// CPUID of vCPU 0 as the guest sees it.
    pub fn guest_cpuid(&self) -> &[kvm_bindings::kvm_cpuid_entry2] {
        &self.guest_cpuid
    }

    /// The vCPU threads' ids (those that started).
    pub fn vcpu_tids(&self) -> Vec<i32> {
        self.vcpus
            .iter()
            .map(|v| v.counters.tid.load(std::sync::atomic::Ordering::Relaxed))
            .filter(|&tid| tid > 0)
            .collect()
    }

    /// Size of this host's XSAVE area for the VM (0 when KVM does not say).
    pub fn xsave_size(&self) -> usize {
        self.xsave_size
    }

    pub fn machine(&self) -> &MachineConfig {
        &self.machine
    }

    pub fn state(&self) -> RunState {
        self.state
    }

    /// Whether [`Vm::resume`] could start it now: created or paused, and
    /// every vCPU thread alive.
    pub fn can_resume(&self) -> Result<(), VmError> {
        if !matches!(self.state, RunState::Created | RunState::Paused) {
            return Err(VmError::WrongState(self.state));
        }
        match self.vcpus.iter().position(|vcpu| !vcpu.alive()) {
            Some(index) => Err(VmError::VcpuEnded(index)),
            None => Ok(()),
        }
    }

    /// Stops it for good: pauses whatever did start; vCPUs that cannot
    /// answer are ended.
    pub fn halt(&mut self) {
        for vcpu in &self.vcpus {
            let _ = vcpu.request_pause();
        }
        for vcpu in &mut self.vcpus {
            if vcpu.wait_done().is_err() {
                vcpu.finish();
            }
        }
        self.state = RunState::Stopped;
    }

    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    /// Starts or continues the vCPUs; returns when the last of them was
    /// about to enter the guest (the guest's standstill ends there).
    pub fn resume(&mut self) -> Result<Instant, VmError> {
        match self.state {
            RunState::Created | RunState::Paused => {}
            other => return Err(VmError::WrongState(other)),
        }
        if !self.mmio.attached() {
            self.reacquire_disks()?;
        }
        self.captured = None;
        for vcpu in &self.vcpus {
            vcpu.request_resume()?;
        }
        let mut entered = None;
        for vcpu in &self.vcpus {
            let at = vcpu.wait_at()?;
            entered = entered.max(Some(at));
        }
        self.state = RunState::Running;
        self.mmio.set_rx_mode(RxMode::Deliver);
        Ok(entered.unwrap_or_else(Instant::now))
    }

    /// A migration's target at the switchover: the source has paused, so
    /// the network is told the cards are here now (one RARP each) and what
    /// arrives is held for the guest; the rest of the announcement follows
    /// the resume ([`Vm::announce`]).
    pub fn begin_switchover(&self) {
        self.mmio.set_rx_mode(RxMode::Hold);
        self.mmio.announce();
    }

    /// Announces the cards from here, as `options` say, on a thread of its
    /// own; the series stops as soon as the VM pauses (another migration
    /// may be taking it elsewhere) or is gone. Returns at once.
    pub fn announce(&self, options: AnnounceOptions) {
        if self.machine.nics.is_empty() || options.rounds == 0 {
            return;
        }
        self.mmio.announce_running();
        let bus = Arc::downgrade(&self.mmio);
        let spawned = std::thread::Builder::new().name("announce".into()).spawn(move || {
            for gap in options.gaps() {
                std::thread::sleep(gap);
                match bus.upgrade() {
                    Some(bus) if bus.announce_running() => {}
                    _ => return,
                }
            }
        });
        // Without a thread the first round went out; the switches learn
        // from the guest's own traffic for the rest.
        drop(spawned);
    }

    /// The frames the paused VM's cards held (for the copy that continues).
    pub fn take_held_frames(&self) -> HeldFrames {
        self.mmio.take_held()
    }

    /// Frames the other copy held, for the guest before anything heard here.
    pub fn put_held_frames(&self, frames: HeldFrames) {
        self.mmio.put_held(frames);
    }

    /// Keeps every vCPU out of the guest for `duration`, without waiting
    /// (auto-converge's throttle).
    pub fn hold(&self, duration: std::time::Duration) -> Result<(), VmError> {
        if self.state != RunState::Running {
            return Err(VmError::WrongState(self.state));
        }
        for vcpu in &self.vcpus {
            vcpu.hold(duration)?;
        }
        Ok(())
    }

    /// Pauses like [`Vm::pause`], and has each vCPU save its state as it
    /// stops, while its thread is still on its CPU: the [`Vm::save_state`]
    /// that follows (a migration's switchover) then need not wake every vCPU
    /// thread again while the guest is stopped. A resume forgets the states.
    /// Returns when the first vCPU left the guest.
    pub fn pause_capturing(&mut self) -> Result<Instant, VmError> {
        match self.state {
            RunState::Running => {}
            RunState::Paused => return Ok(self.paused_at.unwrap_or_else(Instant::now)),
            other => return Err(VmError::WrongState(other)),
        }
        let requested: Vec<_> = self.vcpus.iter().map(VcpuHandle::request_pause_saving).collect();
        let gathered = self.gather(requested);
        self.mmio.set_rx_mode(RxMode::Hold);
        let (states, left) = gathered?;
        self.captured = Some(states);
        self.paused_at = Some(left);
        self.state = RunState::Paused;
        Ok(left)
    }

    /// Stops every vCPU at an instruction boundary; returns when the first
    /// of them left the guest (the guest's standstill begins there).
    pub fn pause(&mut self) -> Result<Instant, VmError> {
        match self.state {
            RunState::Running => {}
            RunState::Paused => return Ok(self.paused_at.unwrap_or_else(Instant::now)),
            other => return Err(VmError::WrongState(other)),
        }
        let left = self.stop_vcpus()?;
        self.state = RunState::Paused;
        Ok(left)
    }

    /// Stops the vCPUs, then the cards' writes into guest memory: from here
    /// nothing changes the guest until it resumes. Returns when the first
    /// vCPU left the guest.
    fn stop_vcpus(&mut self) -> Result<Instant, VmError> {
        for vcpu in &self.vcpus {
            vcpu.request_pause()?;
        }
        let mut result = Ok(());
        let mut left: Option<Instant> = None;
        for vcpu in &self.vcpus {
            match vcpu.wait_at() {
                Ok(at) => left = Some(left.map_or(at, |first| first.min(at))),
                Err(e) => result = result.and(Err(e)),
            }
        }
        self.mmio.set_rx_mode(RxMode::Hold);
        result?;
        let left = left.unwrap_or_else(Instant::now);
        self.paused_at = Some(left);
        Ok(left)
    }

    /// Marks the VM as gone elsewhere: it is stopped here for good (its
    /// console output is all out: the copy that continues goes on from the
    /// saved console offset).
    pub fn mark_migrated(&mut self) {
        self.mark_stopped();
    }

    /// Marks the VM as ended by its guest; vCPUs are parked.
    pub fn mark_stopped(&mut self) {
        if self.state == RunState::Running {
            let _ = self.stop_vcpus();
        }
        self.state = RunState::Stopped;
    }

    /// Saves the machine state; the VM must be paused (or stopped).
    pub fn save_state(&self) -> Result<VmState, VmError> {
        if matches!(self.state, RunState::Running | RunState::Created) {
            return Err(VmError::WrongState(self.state));
        }
        // vCPU states taken as the vCPUs paused serve as they are; otherwise
        // every vCPU saves at once while this thread reads the VM-wide state.
        let requested: Option<Vec<_>> = self
            .captured
            .is_none()
            .then(|| self.vcpus.iter().map(VcpuHandle::request_save).collect());
        let vm_wide = self.save_vm_wide();
        let devices = DevicesState {
            serial: self.bus.save(),
            virtio: self.mmio.save(),
        };
        let vcpus = match requested {
            Some(requested) => self.gather(requested)?.0,
            None => self.captured.clone().unwrap_or_default(),
        };
        let (irqchip, clock) = vm_wide?;
        Ok(VmState {
            format: STATE_FORMAT,
            machine: self.machine.clone(),
            vcpus,
            irqchip,
            clock,
            devices,
        })
    }

    /// Waits for the state of every vCPU asked; each request sent is waited
    /// for, error or not, so that no reply is left for a later request.
    /// With the states, when the first was taken.
    fn gather(&self, requested: Vec<Result<(), VcpuError>>) -> Result<(Vec<VcpuState>, Instant), VmError> {
        let mut states = Vec::with_capacity(self.vcpus.len());
        let mut first: Option<Instant> = None;
        let mut failed = None;
        for (vcpu, request) in self.vcpus.iter().zip(requested) {
            match request.and_then(|()| vcpu.wait_state_at()) {
                Ok((state, at)) => {
                    states.push(state);
                    first = Some(first.map_or(at, |first| first.min(at)));
                }
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        match failed {
            Some(e) => Err(e.into()),
            None => Ok((states, first.unwrap_or_else(Instant::now))),
        }
    }

    fn save_vm_wide(&self) -> Result<(IrqchipState, kvm_clock_data), VmError> {
        let irqchip = IrqchipState {
            pic_master: self.irqchip(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: self.irqchip(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: self.irqchip(KVM_IRQCHIP_IOAPIC)?,
            pit: self.fd.get_pit2().map_err(kvm_err("read the PIT"))?,
        };
        let clock = self.fd.get_clock().map_err(kvm_err("read the KVM clock"))?;
        Ok((irqchip, clock))
    }

    fn irqchip(&self, chip_id: u32) -> Result<kvm_irqchip, VmError> {
        let mut chip = kvm_irqchip {
            chip_id,
            ..Default::default()
        };
        self.fd.get_irqchip(&mut chip).map_err(kvm_err("read the irqchip"))?;
        Ok(chip)
    }

    /// Gives a VM that has never run (booted nothing, or [`Start::Incoming`])
    /// a saved machine state; it is left paused.
    pub fn restore(&mut self, state: VmState) -> Result<(), VmError> {
        if self.state != RunState::Created {
            return Err(VmError::WrongState(self.state));
        }
        if state.machine.memory_bytes != self.machine.memory_bytes || state.machine.vcpus != self.machine.vcpus {
            return Err(VmError::ConfigMismatch {
                saved_memory: state.machine.memory_bytes,
                saved_vcpus: state.machine.vcpus,
                memory: self.machine.memory_bytes,
                vcpus: self.machine.vcpus,
            });
        }
        let VmState {
            vcpus,
            irqchip,
            mut clock,
            devices,
            ..
        } = state;
        self.fd.set_pit2(&irqchip.pit).map_err(kvm_err("restore the PIT"))?;
        for chip in [&irqchip.pic_master, &irqchip.pic_slave, &irqchip.ioapic] {
            self.fd.set_irqchip(chip).map_err(kvm_err("restore the irqchip"))?;
        }
        // Only KVM_CLOCK_REALTIME may be passed back; with it, KVM advances the
        // guest clock by the wall time that passed while the VM was saved.
        clock.flags &= KVM_CLOCK_REALTIME;
        self.fd.set_clock(&clock).map_err(kvm_err("restore the KVM clock"))?;
        self.bus.restore(&devices.serial)?;
        // The drives are taken when the VM first resumes (a migration's
        // target: at its commit, once the source has given them up).
        self.mmio.restore(&devices.virtio).map_err(VmError::VirtioState)?;
        self.machine.disks = self.mmio.disks();
        if let Some(first) = vcpus.first() {
            self.guest_cpuid.clone_from(&first.cpuid);
        }
        // Every vCPU restores at once; each request sent is waited for.
        let requested: Vec<_> = self
            .vcpus
            .iter()
            .zip(vcpus)
            .map(|(vcpu, saved)| vcpu.request_restore(saved))
            .collect();
        let mut failed = None;
        for (vcpu, request) in self.vcpus.iter().zip(requested) {
            if let Err(e) = request.and_then(|()| vcpu.wait_done()) {
                failed.get_or_insert(e);
            }
        }
        if let Some(e) = failed {
            return Err(e.into());
        }
        self.state = RunState::Paused;
        Ok(())
    }

    /// Syncs and closes every drive's image, giving up its lock, for a
    /// migration's target to take. The VM must be paused (no request is in
    /// flight then: requests are served on the vCPU threads).
    pub fn release_disks(&mut self) -> Result<(), VmError> {
        if self.state == RunState::Running {
            return Err(VmError::WrongState(self.state));
        }
        Ok(self.mmio.detach()?)
    }

    /// Takes the drives (after [`Vm::release_disks`], or for a restored or
    /// migrated VM) with the capacities the guest knows; fails if another
    /// VMM holds one now.
    pub fn reacquire_disks(&mut self) -> Result<(), VmError> {
        let capacities: Vec<u64> = MmioBus::capacities(&self.mmio.save());
        Ok(self.mmio.attach(Some(&capacities))?)
    }

    /// Whether every drive that should be open is (a paused VM that gave its
    /// drives up must not resume without them).
    pub fn disks_attached(&self) -> bool {
        self.mmio.attached()
    }

    /// Inserts (`Some`) or ejects (`None`) the medium of CD/DVD drive `slot`.
    pub fn change_medium(&mut self, slot: usize, medium: Option<&std::path::Path>) -> Result<(), VmError> {
        match self.machine.disks.get(slot) {
            Some(disk) if disk.kind == devices::virtio::DiskKind::Cdrom => {}
            _ => return Err(VmError::NotCdrom { slot }),
        }
        let config = self.mmio.change_medium(slot, medium)?;
        self.machine.disks[slot] = config;
        Ok(())
    }

    /// The console's absolute offsets in this process: where its output
    /// began and where it is now (see [`devices::serial::ConsoleOutput`]).
    pub fn console_offsets(&self) -> (u64, u64) {
        self.bus.console_offsets()
    }

    /// Offers bytes to the guest's console input (the UART's receive FIFO);
    /// returns how many it took (the FIFO holds 64). The VM must be one that
    /// runs here (running or paused): a stopped VM takes none.
    pub fn console_input(&self, input: &[u8]) -> Result<usize, VmError> {
        match self.state {
            RunState::Created | RunState::Running | RunState::Paused => Ok(self.bus.console_input(input)),
            RunState::Stopped => Err(VmError::WrongState(self.state)),
        }
    }

    /// Each drive, its medium and counters.
    pub fn drives(&self) -> Vec<DriveStats> {
        self.mmio.stats()
    }

    pub fn stats(&self) -> VmStats {
        let sum = |f: fn(&vcpu::VcpuCounters) -> u64| self.vcpus.iter().map(|v| f(&v.counters)).sum::<u64>();
        use std::sync::atomic::Ordering::Relaxed;
        VmStats {
            state: self.state,
            uptime_ms: self.created.elapsed().as_millis() as u64,
            vcpus: self.machine.vcpus,
            memory_bytes: self.machine.memory_bytes,
            memory_resident_bytes: memory::resident_bytes(&self.memory),
            exits: sum(|c| c.exits.load(Relaxed)),
            io_exits: sum(|c| c.io_exits.load(Relaxed)),
            mmio_exits: sum(|c| c.mmio_exits.load(Relaxed)),
            pv_sleeps: sum(|c| c.pv_sleeps.load(Relaxed)),
            console_bytes: self.bus.console_bytes(),
            drives: self.mmio.stats(),
            nics: self.mmio.nic_stats(),
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        for vcpu in &mut self.vcpus {
            vcpu.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::boot::KernelSource;

    fn boot_testguest(cmdline: &str, vcpus: u8) -> (Vm, std::sync::mpsc::Receiver<stop::StopReason>) {
        let (events, inbox) = Stops::channel();
        let machine = MachineConfig {
            memory_bytes: 128 << 20,
            vcpus,
            cpuid_masks: Vec::new(),
            disks: Vec::new(),
            nics: Vec::new(),
        };
        let boot = BootConfig {
            kernel: KernelSource::from_spec("builtin:testguest").unwrap(),
            initrd: None,
            cmdline: cmdline.to_string(),
        };
        let vm = Vm::create(
            machine,
            Box::new(std::io::sink()),
            events,
            Start::Boot(boot),
            &Bridges::new(),
        )
        .unwrap();
        (vm, inbox)
    }

    /// Runs the guest until its console has printed `bytes` bytes.
    fn run_until_console(vm: &mut Vm, bytes: u64) {
        vm.resume().unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        while vm.stats().console_bytes < bytes {
            assert!(Instant::now() < deadline, "the guest printed nothing");
            std::thread::yield_now();
        }
        vm.pause().unwrap();
    }

    #[test]
    fn machine_state_round_trips_through_encoding_and_a_fresh_vm() {
        let (mut vm, _events) = boot_testguest("hb=5 fill=8M", 2);
        assert_eq!(vm.state(), RunState::Created);
        assert!(matches!(vm.save_state(), Err(VmError::WrongState(RunState::Created))));
        run_until_console(&mut vm, 400);
        let state = vm.save_state().unwrap();
        assert_eq!(state.vcpus.len(), 2);
        assert!(!state.vcpus[0].msrs.is_empty());

        let encoded = state.encode().unwrap();
        let decoded = VmState::decode(&encoded).unwrap();
        assert_eq!(decoded.encode().unwrap(), encoded, "encoding is stable");

        let mut image = tempfile::tempfile().unwrap();
        memory::save_image(vm.memory(), &mut image).unwrap();
        let (events, _inbox) = Stops::channel();
        let restored = Vm::create(
            state.machine.clone(),
            Box::new(std::io::sink()),
            events,
            Start::Restore {
                state: Box::new(decoded),
                memory_image: image,
            },
            &Bridges::new(),
        )
        .unwrap();
        assert_eq!(restored.state(), RunState::Paused);
        let again = restored.save_state().unwrap();
        for (before, after) in state.vcpus.iter().zip(&again.vcpus) {
            assert_eq!(before.regs, after.regs);
            assert_eq!(before.sregs, after.sregs);
            assert_eq!(before.xcrs, after.xcrs);
            assert_eq!(before.mp_state, after.mp_state);
            assert_eq!(before.fpu, after.fpu);
            assert_eq!(before.xsave, after.xsave);
        }
        assert_eq!(state.devices, again.devices);
        assert_eq!(
            bincode::serialize(&state.irqchip.ioapic).unwrap(),
            bincode::serialize(&again.irqchip.ioapic).unwrap()
        );
    }

    #[test]
    fn states_taken_at_a_capturing_pause_serve_until_the_next_resume() {
        let (mut vm, _events) = boot_testguest("hb=5", 2);
        run_until_console(&mut vm, 200);
        vm.resume().unwrap();
        vm.pause_capturing().unwrap();
        assert_eq!(vm.state(), RunState::Paused);
        let captured = vm.save_state().unwrap();
        assert_eq!(captured.vcpus.len(), 2);
        // Paused since: a fresh save sees the very same vCPU state.
        let fresh = {
            let taken = vm.captured.take();
            let state = vm.save_state().unwrap();
            vm.captured = taken;
            state
        };
        for (a, b) in captured.vcpus.iter().zip(&fresh.vcpus) {
            assert_eq!(
                (a.regs.rip, a.regs.rsp, a.regs.rax),
                (b.regs.rip, b.regs.rsp, b.regs.rax)
            );
        }
        // After a resume the guest moved on, and so does the saved state.
        let before = vm.stats().console_bytes;
        vm.resume().unwrap();
        assert!(vm.captured.is_none(), "a resume forgets the captured states");
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        while vm.stats().console_bytes <= before {
            assert!(Instant::now() < deadline, "the guest printed nothing more");
            std::thread::yield_now();
        }
        vm.pause().unwrap();
        let later = vm.save_state().unwrap();
        // The guest's TSC moved on while it ran (the registers may well be
        // back at the same instruction of its polling loop).
        let tsc = |state: &VmState| {
            state
                .vcpus
                .iter()
                .map(|v| v.msrs.iter().find(|m| m.index == 0x10).map(|m| m.data))
                .collect::<Vec<_>>()
        };
        assert!(tsc(&captured).iter().all(Option::is_some), "the TSC is saved");
        assert_ne!(
            tsc(&captured),
            tsc(&later),
            "the state after the guest ran again is not the captured one"
        );
    }

    #[test]
    fn corrupt_or_foreign_state_is_refused() {
        let (mut vm, _events) = boot_testguest("hb=5", 1);
        run_until_console(&mut vm, 200);
        let mut state = vm.save_state().unwrap();
        let encoded = state.encode().unwrap();
        for cut in [0, 10, encoded.len() / 2, encoded.len() - 1] {
            assert!(VmState::decode(&encoded[..cut]).is_err(), "truncated at {cut}");
        }
        state.format = STATE_FORMAT + 1;
        assert!(matches!(
            VmState::decode(&state.encode().unwrap()),
            Err(state::StateError::Format { .. })
        ));
        state.format = STATE_FORMAT;
        state.machine.vcpus = 3;
        assert!(matches!(
            VmState::decode(&state.encode().unwrap()),
            Err(state::StateError::VcpuCount { .. })
        ));
        // A machine of another size cannot take this state.
        state.machine.vcpus = 1;
        let (events, _inbox) = Stops::channel();
        let other = MachineConfig {
            memory_bytes: 256 << 20,
            vcpus: 1,
            cpuid_masks: Vec::new(),
            disks: Vec::new(),
            nics: Vec::new(),
        };
        let result = Vm::create(
            other,
            Box::new(std::io::sink()),
            events,
            Start::Restore {
                state: Box::new(state),
                memory_image: tempfile::tempfile().unwrap(),
            },
            &Bridges::new(),
        );
        assert!(matches!(result, Err(VmError::ConfigMismatch { .. })));
    }
}
