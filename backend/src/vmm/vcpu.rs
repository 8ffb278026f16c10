//! vCPUs as threads that take messages.
//!
//! Each vCPU thread owns its `VcpuFd` and loops on `KVM_RUN` while running. The
//! VMM talks to it only through [`VcpuHandle`]: a request is queued, then the
//! thread is kicked out of `KVM_RUN` with a real-time signal whose handler sets
//! `immediate_exit`, so a request that races with entry into the guest is never
//! missed. Requests are answered on a channel. State is read and written only
//! while the vCPU is paused, after any pending port I/O has completed.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError, channel};
use std::sync::{Arc, Mutex, Once, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{
    CpuId, KVM_MAX_MSR_ENTRIES, Msrs, Xsave, kvm_cpuid_entry2, kvm_debugregs, kvm_fpu, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_regs, kvm_run, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

use super::devices::PortIoBus;
use super::devices::pvsleep;
use super::devices::virtio::MmioBus;
use super::stop::{StopReason, Stops};

#[derive(Debug, Error)]
pub enum VcpuError {
    #[error("cannot {what} of vCPU {vcpu}")]
    Kvm {
        vcpu: u8,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {vcpu}: KVM rejected MSR {index:#x} on restore")]
    MsrRejected { vcpu: u8, index: u32 },
    #[error("vCPU {vcpu}: cannot build a {what} list")]
    Fam {
        vcpu: u8,
        what: &'static str,
        #[source]
        source: vmm_sys_util::fam::Error,
    },
    #[error("vCPU {vcpu}: saved XSAVE area has {words} words, this host uses {expected}")]
    XsaveSize { vcpu: u8, words: usize, expected: usize },
    #[error("vCPU {vcpu} must be paused for {what}")]
    NotPaused { vcpu: u8, what: &'static str },
    #[error("vCPU {vcpu} thread is gone")]
    Gone { vcpu: u8 },
    #[error("vCPU {vcpu} did not answer within {secs} s")]
    Timeout { vcpu: u8, secs: u64 },
    #[error("cannot start the vCPU {vcpu} thread")]
    Spawn {
        vcpu: u8,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install the vCPU kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
}

/// The x87/SSE state KVM reports through `KVM_GET_FPU` (kvm-bindings has no serde for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FpuState {
    pub fpr: [[u8; 16]; 8],
    pub fcw: u16,
    pub fsw: u16,
    pub ftwx: u8,
    pub last_opcode: u16,
    pub last_ip: u64,
    pub last_dp: u64,
    pub xmm: [[u8; 16]; 16],
    pub mxcsr: u32,
}

impl From<&kvm_fpu> for FpuState {
    fn from(f: &kvm_fpu) -> Self {
        Self {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
        }
    }
}

impl From<&FpuState> for kvm_fpu {
    fn from(f: &FpuState) -> Self {
        kvm_fpu {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
            ..Default::default()
        }
    }
}

/// Everything KVM holds for one vCPU, as plain data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VcpuState {
    pub id: u8,
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub fpu: FpuState,
    /// The XSAVE area as 32-bit words (4 KiB, or more with `KVM_CAP_XSAVE2`).
    pub xsave: Vec<u32>,
    pub xcrs: kvm_xcrs,
    pub lapic: kvm_lapic_state,
    pub msrs: Vec<kvm_msr_entry>,
    pub vcpu_events: kvm_vcpu_events,
    pub debug_regs: kvm_debugregs,
    pub tsc_khz: Option<u32>,
}

/// Exit counters of one vCPU, readable while it runs.
#[derive(Debug, Default)]
pub struct VcpuCounters {
    pub exits: AtomicU64,
    pub io_exits: AtomicU64,
    pub mmio_exits: AtomicU64,
    /// Writes to the paravirtual sleep register (each parked the vCPU).
    pub pv_sleeps: AtomicU64,
    /// The vCPU thread's id (0 until it started), for its scheduler
    /// statistics.
    pub tid: std::sync::atomic::AtomicI32,
}

/// What a vCPU thread needs besides its fd.
#[derive(Debug, Clone)]
pub struct VcpuContext {
    pub bus: Arc<PortIoBus>,
    pub mmio: Arc<MmioBus>,
    pub stops: Stops,
    /// MSRs to save, from `KVM_GET_MSR_INDEX_LIST`.
    pub msr_indices: Arc<Vec<u32>>,
    /// Size in bytes of the XSAVE area (`KVM_CAP_XSAVE2`, at least 4096).
    pub xsave_size: usize,
    /// Where devices ring when they have work for a sleeping guest.
    pub doorbell: Doorbell,
}

/// A vCPU's side of the [`Doorbell`].
#[derive(Debug, Default)]
struct SleepState {
    /// A device rang since the vCPU last asked to sleep.
    pending: AtomicBool,
    /// Parked by the paravirtual sleep register right now.
    sleeping: AtomicBool,
}

/// Ends the paravirtual sleeps of a VM's vCPUs when a device has work for
/// the guest (a frame arrived): a guest that parks itself until its next
/// deadline still answers the network at once. A ring that comes while a
/// vCPU is on its way to sleep is not lost: its next sleep request returns
/// at once instead.
#[derive(Debug, Clone, Default)]
pub struct Doorbell {
    sleepers: Arc<Mutex<Vec<Sleeper>>>,
}

/// A vCPU the [`Doorbell`] wakes: its flags and its request channel.
type Sleeper = (Arc<SleepState>, Sender<Request>);

impl Doorbell {
    fn join(&self, state: Arc<SleepState>, requests: Sender<Request>) {
        self.sleepers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((state, requests));
    }

    /// Wakes every sleeping vCPU (a sleep about to start returns at once).
    pub fn ring(&self) {
        let sleepers = self.sleepers.lock().unwrap_or_else(PoisonError::into_inner);
        for (state, requests) in sleepers.iter() {
            state.pending.store(true, Ordering::SeqCst);
            if state.sleeping.swap(false, Ordering::SeqCst) {
                let _ = requests.send(Request::Wake);
            }
        }
    }
}

enum Request {
    /// Stop at an instruction boundary; with `save`, answer with the state
    /// taken right then, while the thread is still on its CPU.
    Pause {
        save: bool,
    },
    Resume,
    /// Stay off the CPU for this long (auto-converge); not answered.
    Hold(Duration),
    Save,
    Restore(Box<VcpuState>),
    /// A device rang the [`Doorbell`]: end a paravirtual sleep; not answered.
    Wake,
    Finish,
}

enum Reply {
    Done,
    /// Done, and when: a pause's moment out of the guest, a resume's
    /// moment just before it enters the guest again.
    At(Instant),
    /// The state, and when it was taken (a saving pause: when the vCPU
    /// left the guest).
    State(Box<VcpuState>, Instant),
    Failed(VcpuError),
}

/// The VMM's side of one vCPU thread.
#[derive(Debug)]
pub struct VcpuHandle {
    pub id: u8,
    requests: Sender<Request>,
    replies: Receiver<Reply>,
    thread: Option<JoinHandle<()>>,
    pub counters: Arc<VcpuCounters>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Request::Pause { .. } => "Pause",
            Request::Resume => "Resume",
            Request::Save => "Save",
            Request::Restore(_) => "Restore",
            Request::Finish => "Finish",
            Request::Hold(_) => "Hold",
            Request::Wake => "Wake",
        })
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reply::Done => "Done",
            Reply::At(_) => "At",
            Reply::State(..) => "State",
            Reply::Failed(_) => "Failed",
        })
    }
}

/// How long a vCPU may take to answer: generous, because a vCPU in the middle
/// of emulating ring-0 code on a nested host can take a while to exit.
const REPLY_TIMEOUT: Duration = Duration::from_secs(20);

thread_local! {
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    KVM_RUN.with(|run| {
        let run = run.get();
        if !run.is_null() {
            // SAFETY: the pointer is this thread's mapped `kvm_run`, set while the
            // thread's `VcpuFd` lives; taking a field's address reads nothing.
            let flag = unsafe { &raw mut (*run).immediate_exit };
            // SAFETY: `flag` points into that live mapping; a volatile byte store
            // is async-signal-safe.
            unsafe { flag.write_volatile(1) };
        }
    });
}

fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

fn install_kick_handler() -> Result<(), VcpuError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(kick_signal(), kick_handler).map_err(VcpuError::Signal);
    });
    result
}

impl VcpuHandle {
    /// Starts the thread for `fd` (whose CPUID was set to `cpuid`), paused.
    pub fn spawn(id: u8, fd: VcpuFd, cpuid: Vec<kvm_cpuid_entry2>, context: VcpuContext) -> Result<Self, VcpuError> {
        install_kick_handler()?;
        let (requests, inbox) = channel();
        let (outbox, replies) = channel();
        let counters = Arc::new(VcpuCounters::default());
        let thread_counters = Arc::clone(&counters);
        let sleep = Arc::new(SleepState::default());
        context.doorbell.join(Arc::clone(&sleep), requests.clone());
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                // Guest code runs at normal priority, below the VMM's threads.
                crate::migration::cpu::set_thread_nice(0);
                thread_counters
                    .tid
                    .store(nix::unistd::gettid().as_raw(), Ordering::Relaxed);
                let mut vcpu = Vcpu {
                    id,
                    fd,
                    cpuid,
                    context,
                    counters: thread_counters,
                    running: false,
                    stopped: false,
                    hold_until: None,
                    sleep,
                    pv_sleeping: false,
                    io_pending: false,
                };
                vcpu.main_loop(&inbox, &outbox);
            })
            .map_err(|source| VcpuError::Spawn { vcpu: id, source })?;
        Ok(Self {
            id,
            requests,
            replies,
            thread: Some(thread),
            counters,
        })
    }

    fn send(&self, request: Request) -> Result<(), VcpuError> {
        self.requests
            .send(request)
            .map_err(|_| VcpuError::Gone { vcpu: self.id })?;
        if let Some(thread) = &self.thread {
            // A failed kick only means the thread already left KVM_RUN or ended.
            let _ = thread.kill(kick_signal());
        }
        Ok(())
    }

    fn wait(&self) -> Result<Reply, VcpuError> {
        match self.replies.recv_timeout(REPLY_TIMEOUT) {
            Ok(Reply::Failed(e)) => Err(e),
            Ok(reply) => Ok(reply),
            Err(RecvTimeoutError::Timeout) => Err(VcpuError::Timeout {
                vcpu: self.id,
                secs: REPLY_TIMEOUT.as_secs(),
            }),
            Err(_) => Err(VcpuError::Gone { vcpu: self.id }),
        }
    }

    /// Asks the vCPU to pause; pair with [`VcpuHandle::wait_done`]. Split so a
    /// whole VM's vCPUs are kicked at once and then awaited.
    pub fn request_pause(&self) -> Result<(), VcpuError> {
        self.send(Request::Pause { save: false })
    }

    /// Asks the vCPU to pause and save its state as it stops; pair with
    /// [`VcpuHandle::wait_state`].
    pub fn request_pause_saving(&self) -> Result<(), VcpuError> {
        self.send(Request::Pause { save: true })
    }

    pub fn request_resume(&self) -> Result<(), VcpuError> {
        self.send(Request::Resume)
    }

    /// Keeps the vCPU out of the guest for `duration` without waiting for it.
    pub fn hold(&self, duration: Duration) -> Result<(), VcpuError> {
        self.send(Request::Hold(duration))
    }

    /// Whether the vCPU's thread is there to take requests.
    pub fn alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|thread| !thread.is_finished())
    }

    pub fn wait_done(&self) -> Result<(), VcpuError> {
        self.wait().map(|_| ())
    }

    /// Waits for a pause or a resume and says when the vCPU left or
    /// (re)entered the guest.
    pub fn wait_at(&self) -> Result<Instant, VcpuError> {
        match self.wait()? {
            Reply::At(at) => Ok(at),
            _ => Ok(Instant::now()),
        }
    }

    /// Asks a paused vCPU for its state; pair with [`VcpuHandle::wait_state`].
    /// Split so that every vCPU saves at once.
    pub fn request_save(&self) -> Result<(), VcpuError> {
        self.send(Request::Save)
    }

    pub fn wait_state(&self) -> Result<VcpuState, VcpuError> {
        self.wait_state_at().map(|(state, _)| state)
    }

    /// The state, and when it was taken: a saving pause's moment out of
    /// the guest.
    pub fn wait_state_at(&self) -> Result<(VcpuState, Instant), VcpuError> {
        match self.wait()? {
            Reply::State(state, at) => Ok((*state, at)),
            _ => Err(VcpuError::Gone { vcpu: self.id }),
        }
    }

    /// Gives a paused vCPU its state; pair with [`VcpuHandle::wait_done`].
    pub fn request_restore(&self, state: VcpuState) -> Result<(), VcpuError> {
        self.send(Request::Restore(Box::new(state)))
    }

    /// Ends the thread (the vCPU fd is closed with it).
    pub fn finish(&mut self) {
        if self.send(Request::Finish).is_ok() {
            let _ = self.wait();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for VcpuHandle {
    fn drop(&mut self) {
        self.finish();
    }
}

/// What one `KVM_RUN` came back with, once served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Served {
    /// A port or MMIO access, now served (its instruction completes on re-entry).
    Access,
    /// A kick or `immediate_exit`: nothing is pending.
    Interrupted,
    /// The guest cannot go on.
    Stopped,
    /// Anything else that needs no action.
    Other,
}

struct Vcpu {
    id: u8,
    fd: VcpuFd,
    /// The CPUID table set on this vCPU.
    cpuid: Vec<kvm_cpuid_entry2>,
    context: VcpuContext,
    counters: Arc<VcpuCounters>,
    running: bool,
    /// Set after a fatal exit: the guest cannot continue, requests still answer.
    stopped: bool,
    /// Auto-converge keeps the vCPU out of the guest until then.
    hold_until: Option<Instant>,
    sleep: Arc<SleepState>,
    /// `hold_until` is a paravirtual sleep (a [`Request::Wake`] ends it),
    /// not auto-converge's hold.
    pv_sleeping: bool,
    /// The last exit was a port or MMIO access that KVM completes only on the
    /// next `KVM_RUN`.
    io_pending: bool,
}

impl Vcpu {
    fn main_loop(&mut self, inbox: &Receiver<Request>, outbox: &Sender<Reply>) {
        KVM_RUN.with(|run| run.set(std::ptr::from_mut(self.fd.get_kvm_run())));
        loop {
            if self.hold_until.is_some_and(|until| until <= Instant::now()) {
                self.end_hold();
            }
            let throttled = self.hold_until.filter(|until| *until > Instant::now());
            let request = if let (true, Some(until)) = (self.running && !self.stopped, throttled) {
                // Held off the CPU by auto-converge, but still answering.
                match inbox.recv_timeout(until.saturating_duration_since(Instant::now())) {
                    Ok(request) => Some(request),
                    Err(RecvTimeoutError::Timeout) => {
                        self.end_hold();
                        None
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else if self.running && !self.stopped {
                match inbox.try_recv() {
                    Ok(request) => Some(request),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => break,
                }
            } else {
                match inbox.recv() {
                    Ok(request) => Some(request),
                    Err(_) => break,
                }
            };
            match request {
                Some(Request::Finish) => {
                    let _ = outbox.send(Reply::Done);
                    break;
                }
                Some(Request::Hold(duration)) => {
                    // No reply: the throttle does not wait for its vCPUs.
                    self.end_hold();
                    self.hold_until = Some(Instant::now() + duration);
                }
                Some(Request::Wake) => {
                    if self.pv_sleeping {
                        self.end_hold();
                    }
                }
                Some(request) => {
                    let reply = self.handle(request);
                    if outbox.send(reply).is_err() {
                        break;
                    }
                }
                None if self.hold_until.is_some_and(|until| until > Instant::now()) => {}
                None => self.run_once(),
            }
        }
        KVM_RUN.with(|run| run.set(std::ptr::null_mut()));
    }

    /// Parks the vCPU for `sleep`, unless a device rang since the last
    /// request (or rings now: the order of the two flags sees to it).
    fn pv_sleep(&mut self, sleep: Duration) {
        if self.sleep.pending.swap(false, Ordering::SeqCst) {
            return;
        }
        self.sleep.sleeping.store(true, Ordering::SeqCst);
        if self.sleep.pending.swap(false, Ordering::SeqCst) {
            self.sleep.sleeping.store(false, Ordering::SeqCst);
            return;
        }
        self.pv_sleeping = true;
        self.hold_until = Some(Instant::now() + sleep);
    }

    fn end_hold(&mut self) {
        self.hold_until = None;
        if self.pv_sleeping {
            self.pv_sleeping = false;
            self.sleep.sleeping.store(false, Ordering::SeqCst);
        }
    }

    fn handle(&mut self, request: Request) -> Reply {
        let result = match request {
            Request::Pause { save } => {
                // Out of the guest since the kick: its last instruction ran
                // a moment ago.
                let left = Instant::now();
                // KVM finishes a served access on the next KVM_RUN before it
                // looks at signals, so after a kick nothing is pending and the
                // extra entry (costly under nested KVM) is skipped.
                if self.running && self.io_pending {
                    self.complete_pending_io();
                }
                self.running = false;
                self.end_hold();
                if save {
                    self.save().map(|s| Reply::State(Box::new(s), left))
                } else {
                    Ok(Reply::At(left))
                }
            }
            Request::Resume => {
                // The next step of this loop enters the guest.
                self.running = true;
                Ok(Reply::At(Instant::now()))
            }
            Request::Save if self.running => Err(VcpuError::NotPaused {
                vcpu: self.id,
                what: "saving state",
            }),
            Request::Save => self.save().map(|s| Reply::State(Box::new(s), Instant::now())),
            Request::Restore(_) if self.running => Err(VcpuError::NotPaused {
                vcpu: self.id,
                what: "restoring state",
            }),
            Request::Restore(state) => {
                self.io_pending = false;
                self.restore(&state).map(|()| Reply::Done)
            }
            Request::Finish | Request::Hold(_) | Request::Wake => Ok(Reply::Done),
        };
        result.unwrap_or_else(Reply::Failed)
    }

    /// Lets KVM finish an instruction whose port or MMIO access userspace just
    /// served, without entering the guest, so the saved registers reflect a
    /// completed instruction. Finishing a `rep outsb` can produce the next
    /// chunk of I/O: serve those exits too, until KVM reports nothing pending.
    fn complete_pending_io(&mut self) {
        const MAX_ROUNDS: usize = 1 << 16;
        for _ in 0..MAX_ROUNDS {
            self.fd.set_kvm_immediate_exit(1);
            let served = self.run_and_serve();
            if served != Served::Access {
                break;
            }
        }
        self.fd.set_kvm_immediate_exit(0);
        self.io_pending = false;
    }

    fn run_once(&mut self) {
        self.io_pending = self.run_and_serve() == Served::Access;
    }

    /// One `KVM_RUN` and the service of its exit. A fatal exit stops the vCPU
    /// and is reported to the VMM.
    fn run_and_serve(&mut self) -> Served {
        let result = self.fd.run();
        self.counters.exits.fetch_add(1, Ordering::Relaxed);
        let stop = match result {
            Ok(VcpuExit::IoOut(port, data)) => {
                self.counters.io_exits.fetch_add(1, Ordering::Relaxed);
                self.context.bus.write(port, data);
                return Served::Access;
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                self.counters.io_exits.fetch_add(1, Ordering::Relaxed);
                self.context.bus.read(port, data);
                return Served::Access;
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                self.counters.mmio_exits.fetch_add(1, Ordering::Relaxed);
                if !pvsleep::read(addr, data) && !self.context.mmio.read(addr, data) {
                    data.fill(0xff);
                }
                return Served::Access;
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                self.counters.mmio_exits.fetch_add(1, Ordering::Relaxed);
                if let Some(sleep) = pvsleep::sleep_request(addr, data) {
                    // Parked like auto-converge's hold: off the CPU, still
                    // answering requests; the write completes on re-entry.
                    self.counters.pv_sleeps.fetch_add(1, Ordering::Relaxed);
                    self.pv_sleep(sleep);
                } else {
                    self.context.mmio.write(addr, data);
                }
                return Served::Access;
            }
            Ok(VcpuExit::Hlt) => None,
            Ok(VcpuExit::Shutdown) => Some(StopReason::TripleFault { vcpu: self.id }),
            Ok(VcpuExit::SystemEvent(kind, _)) => Some(match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => StopReason::Reset,
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => StopReason::PowerOff { code: 0 },
                other => StopReason::GuestError {
                    vcpu: self.id,
                    detail: format!("system event {other}"),
                },
            }),
            Ok(VcpuExit::InternalError) => {
                let suberror = self.fd.get_kvm_run();
                // SAFETY: KVM_EXIT_INTERNAL_ERROR fills the `internal` member of the union.
                let code = unsafe { suberror.__bindgen_anon_1.internal.suberror };
                let what = match code {
                    1 => "emulation failure",
                    2 => "simultaneous exception",
                    3 => "delivery event",
                    _ => "internal error",
                };
                Some(StopReason::GuestError {
                    vcpu: self.id,
                    detail: format!("KVM {what} (suberror {code}) at {}", self.describe_rip()),
                })
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => Some(StopReason::GuestError {
                vcpu: self.id,
                detail: format!("KVM entry failed (reason {reason:#x}, cpu {cpu})"),
            }),
            Ok(other) => Some(StopReason::GuestError {
                vcpu: self.id,
                detail: format!("unexpected exit {other:?}"),
            }),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.fd.set_kvm_immediate_exit(0);
                return Served::Interrupted;
            }
            Err(e) => Some(StopReason::GuestError {
                vcpu: self.id,
                detail: format!("KVM_RUN failed: {e}"),
            }),
        };
        match stop {
            Some(reason) => {
                self.stopped = true;
                self.context.stops.report(reason);
                Served::Stopped
            }
            None => Served::Other,
        }
    }

    fn describe_rip(&self) -> String {
        match self.fd.get_regs() {
            Ok(regs) => format!("rip {:#x}", regs.rip),
            Err(_) => "an unknown rip".to_string(),
        }
    }

    fn kvm(&self, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError + use<> {
        let vcpu = self.id;
        move |source| VcpuError::Kvm { vcpu, what, source }
    }

    fn save(&self) -> Result<VcpuState, VcpuError> {
        let fd = &self.fd;
        // Order as KVM documents it: mp_state first, vcpu_events last.
        let mp_state = fd.get_mp_state().map_err(self.kvm("read MP state"))?;
        let regs = fd.get_regs().map_err(self.kvm("read registers"))?;
        let sregs = fd.get_sregs().map_err(self.kvm("read special registers"))?;
        let fpu = fd.get_fpu().map_err(self.kvm("read FPU"))?;
        let xsave = self.save_xsave()?;
        let xcrs = fd.get_xcrs().map_err(self.kvm("read XCRs"))?;
        let lapic = fd.get_lapic().map_err(self.kvm("read LAPIC"))?;
        let msrs = self.save_msrs()?;
        let debug_regs = fd.get_debug_regs().map_err(self.kvm("read debug registers"))?;
        let tsc_khz = fd.get_tsc_khz().ok();
        // The CPUID this VMM gave the vCPU: KVM_GET_CPUID2 may report more
        // than was set (nested KVMs have been seen to return the host's).
        let cpuid = self.cpuid.clone();
        let vcpu_events = fd.get_vcpu_events().map_err(self.kvm("read events"))?;
        Ok(VcpuState {
            id: self.id,
            cpuid,
            mp_state,
            regs,
            sregs,
            fpu: FpuState::from(&fpu),
            xsave,
            xcrs,
            lapic,
            msrs,
            vcpu_events,
            debug_regs,
            tsc_khz,
        })
    }

    fn save_xsave(&self) -> Result<Vec<u32>, VcpuError> {
        let base_words = size_of::<kvm_xsave>() / 4;
        if self.context.xsave_size <= size_of::<kvm_xsave>() {
            let xsave = self.fd.get_xsave().map_err(self.kvm("read XSAVE"))?;
            return Ok(xsave.region.to_vec());
        }
        let extra = (self.context.xsave_size - size_of::<kvm_xsave>()).div_ceil(4);
        let mut xsave = Xsave::new(extra).map_err(|source| VcpuError::Fam {
            vcpu: self.id,
            what: "XSAVE",
            source,
        })?;
        // SAFETY: `xsave` was allocated with room for `xsave_size` bytes, the size
        // KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) reported for this VM.
        unsafe { self.fd.get_xsave2(&mut xsave) }.map_err(self.kvm("read XSAVE2"))?;
        let mut words = Vec::with_capacity(base_words + extra);
        words.extend_from_slice(&xsave.as_fam_struct_ref().xsave.region);
        words.extend_from_slice(xsave.as_slice());
        Ok(words)
    }

    fn restore_xsave(&self, words: &[u32]) -> Result<(), VcpuError> {
        let base_words = size_of::<kvm_xsave>() / 4;
        let expected = self.context.xsave_size.max(size_of::<kvm_xsave>()).div_ceil(4);
        if words.len() != expected {
            return Err(VcpuError::XsaveSize {
                vcpu: self.id,
                words: words.len(),
                expected,
            });
        }
        if words.len() == base_words {
            let mut xsave = kvm_xsave::default();
            xsave.region.copy_from_slice(words);
            // SAFETY: a full `kvm_xsave` is passed; KVM reads no more than it.
            return unsafe { self.fd.set_xsave(&xsave) }.map_err(self.kvm("set XSAVE"));
        }
        let mut xsave = Xsave::from_entries(&words[base_words..]).map_err(|source| VcpuError::Fam {
            vcpu: self.id,
            what: "XSAVE",
            source,
        })?;
        // SAFETY: the wrapper's buffer holds the header and `words.len() - base_words`
        // trailing words, exactly the KVM_CAP_XSAVE2 size of this VM.
        unsafe {
            xsave
                .as_mut_fam_struct()
                .xsave
                .region
                .copy_from_slice(&words[..base_words]);
        };
        // SAFETY: the buffer is `xsave_size` bytes long, what KVM_SET_XSAVE reads.
        unsafe { self.fd.set_xsave2(&xsave) }.map_err(self.kvm("set XSAVE2"))
    }

    /// Reads every MSR KVM lists, skipping ones this host refuses to read.
    fn save_msrs(&self) -> Result<Vec<kvm_msr_entry>, VcpuError> {
        let mut saved = Vec::with_capacity(self.context.msr_indices.len());
        let mut pending: &[u32] = &self.context.msr_indices;
        while !pending.is_empty() {
            let chunk = &pending[..pending.len().min(KVM_MAX_MSR_ENTRIES)];
            let entries: Vec<kvm_msr_entry> = chunk
                .iter()
                .map(|&index| kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect();
            let mut msrs = Msrs::from_entries(&entries).map_err(|source| VcpuError::Fam {
                vcpu: self.id,
                what: "MSR",
                source,
            })?;
            let read = self.fd.get_msrs(&mut msrs).map_err(self.kvm("read MSRs"))?;
            saved.extend_from_slice(&msrs.as_slice()[..read]);
            // KVM stops at the first MSR it cannot read: skip that one.
            let consumed = if read < chunk.len() { read + 1 } else { read };
            pending = &pending[consumed..];
        }
        Ok(saved)
    }

    fn restore(&mut self, state: &VcpuState) -> Result<(), VcpuError> {
        let fd = &self.fd;
        // The table this vCPU was created with is usually the saved one (same
        // machine config, compatible host): setting it again costs more than
        // any other part of the restore here.
        if self.cpuid != state.cpuid {
            let cpuid = CpuId::from_entries(&state.cpuid).map_err(|source| VcpuError::Fam {
                vcpu: self.id,
                what: "CPUID",
                source,
            })?;
            fd.set_cpuid2(&cpuid).map_err(self.kvm("set CPUID"))?;
            self.cpuid.clone_from(&state.cpuid);
        }
        if let Some(khz) = state.tsc_khz
            && fd.get_tsc_khz().ok() != Some(khz)
        {
            fd.set_tsc_khz(khz).map_err(self.kvm("set TSC frequency"))?;
        }
        fd.set_mp_state(state.mp_state).map_err(self.kvm("set MP state"))?;
        fd.set_regs(&state.regs).map_err(self.kvm("set registers"))?;
        fd.set_sregs(&state.sregs).map_err(self.kvm("set special registers"))?;
        // XSAVE holds the whole FPU state (its legacy region is what KVM_SET_FPU
        // sets), so the separately saved FPU registers need no ioctl of their own.
        self.restore_xsave(&state.xsave)?;
        fd.set_xcrs(&state.xcrs).map_err(self.kvm("set XCRs"))?;
        // The LAPIC goes before the MSRs: the TSC-deadline MSR needs it.
        fd.set_lapic(&state.lapic).map_err(self.kvm("set LAPIC"))?;
        for chunk in state.msrs.chunks(KVM_MAX_MSR_ENTRIES) {
            let msrs = Msrs::from_entries(chunk).map_err(|source| VcpuError::Fam {
                vcpu: self.id,
                what: "MSR",
                source,
            })?;
            let set = fd.set_msrs(&msrs).map_err(self.kvm("set MSRs"))?;
            if set < chunk.len() {
                return Err(VcpuError::MsrRejected {
                    vcpu: self.id,
                    index: chunk[set].index,
                });
            }
        }
        fd.set_debug_regs(&state.debug_regs)
            .map_err(self.kvm("set debug registers"))?;
        fd.set_vcpu_events(&state.vcpu_events).map_err(self.kvm("set events"))?;
        Ok(())
    }
}
