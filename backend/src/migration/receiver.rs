//! The target side: accept a VM, treat every byte as hostile, resume only with
//! the complete state and the sender's Go.

use std::io::Read;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::mpsc::{Sender, channel};
use std::time::{Duration, Instant};

use kvm_bindings::CpuId;
use thiserror::Error;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::cpu::{self, Crew};
use super::dirty;
use super::fault::{self, Fault, Hold};
use super::gate::{Gate, GateHandle, NoSender, Phase};
use super::link::Link;
use super::protocol::{
    self, CpuidLeaf, Header, Hello, Kind, MAX_BATCH_RANGES, Outcome, PROTOCOL_VERSION, ProtocolError, RANGE_ENTRY_LEN,
    RANGE_ZERO, Resumed,
};
use super::transport;
use super::{Timeouts, VmSideError};
use crate::vmm::devices::virtio::HeldFrames;
use crate::vmm::memory::GuestMemory;
use crate::vmm::{AnnounceOptions, MachineConfig, VmState, cpuid, memory};

/// How long a receiver that discarded a VM after Ready keeps answering queries.
const LINGER: Duration = Duration::from_secs(15);

#[derive(Debug, Error)]
pub enum ReceiveError {
    #[error("migration stream")]
    Protocol(#[from] ProtocolError),
    #[error("refused the incoming VM: {0}")]
    Refused(String),
    #[error("the machine state is invalid")]
    State(#[source] crate::vmm::state::StateError),
    #[error("the VM could not {action}")]
    Vm {
        action: &'static str,
        #[source]
        source: VmSideError,
    },
    #[error("stream {index}: {detail}")]
    Stream { index: u32, detail: String },
    #[error("no sender came within {waited_s} s")]
    NoSender { waited_s: u64 },
    #[error("no Go from the sender within {waited_s} s; the VM was discarded")]
    NoGo { waited_s: u64 },
    #[error("the VMM is ending")]
    Terminating,
    #[error("injected fault: {0}")]
    Injected(&'static str),
}

impl ReceiveError {
    /// A stable name for what went wrong, for the VMM's record.
    pub fn code(&self) -> &'static str {
        match self {
            ReceiveError::NoSender { .. } => "no_sender",
            ReceiveError::NoGo { .. } => "no_go",
            ReceiveError::Refused(_) => "refused",
            ReceiveError::Terminating => "terminating",
            ReceiveError::Protocol(ProtocolError::PeerAborted(_)) => "aborted",
            _ => "stream",
        }
    }
}

/// What the engine needs from the VMM that will run the VM.
pub trait TargetVm {
    fn memory(&self) -> &GuestMemory;
    fn restore(&mut self, state: VmState) -> Result<(), VmSideError>;
    /// Makes sure `resume` can start every vCPU, taking what the VM needs
    /// that the source held until Go (its drives): done before the commit,
    /// so that once `Running` is sent nothing is left that can fail.
    fn can_resume(&mut self) -> Result<(), VmSideError>;
    /// Returns when the last vCPU was about to enter the guest.
    fn resume(&mut self) -> Result<Instant, VmSideError>;
    /// Stops every vCPU for good: a resume that failed half way must not
    /// leave part of the VM running here while the source resumes.
    fn halt(&mut self);
    /// The source paused: tell the network the VM's cards are here, and
    /// hold what arrives for the guest.
    fn begin_switchover(&mut self);
    /// Frames the source's cards held, for the guest before anything else.
    fn put_frames(&mut self, frames: HeldFrames);
    /// The VM runs here: announce its cards as `options` say (returns at once).
    fn announce(&mut self, options: AnnounceOptions);
}

/// A sender that said Hello and waits for Accept.
#[derive(Debug)]
pub struct Incoming {
    gate: Gate,
    handle: GateHandle,
    control: Link,
    pub hello: Hello,
    timeouts: Timeouts,
    /// The receiving threads, reniced as the phase changes.
    crew: Arc<Crew>,
}

/// Waits at `gate` for the sender's Hello (queries and keepalives are
/// answered meanwhile, by the gate); gives up at the accept deadline.
pub fn accept(gate: Gate, timeouts: Timeouts) -> Result<Incoming, ReceiveError> {
    let handle = gate.handle();
    let (control, hello) = gate.wait_hello().map_err(|why| match why {
        NoSender::Expired(waited) => ReceiveError::NoSender {
            waited_s: waited.as_secs(),
        },
        NoSender::Terminating => ReceiveError::Terminating,
    })?;
    let _ = control.set_read_timeout(Some(timeouts.stream()));
    let _ = control.set_write_timeout(Some(timeouts.stream()));
    Ok(Incoming {
        gate,
        handle,
        control,
        hello,
        timeouts,
        crew: Arc::new(Crew::new(cpu::VMM_NICE)),
    })
}

fn register(leaf: &CpuidLeaf, index: usize) -> u32 {
    [leaf.eax, leaf.ebx, leaf.ecx, leaf.edx][index]
}

/// Checks that this host can give the guest every CPU feature it has now.
pub fn check_cpu(source: &[CpuidLeaf], local: &CpuId) -> Result<(), String> {
    let local: Vec<CpuidLeaf> = local.as_slice().iter().map(CpuidLeaf::from).collect();
    let find = |leaves: &[CpuidLeaf], function: u32, index: u32| {
        leaves
            .iter()
            .find(|l| l.function == function && l.index == index)
            .copied()
    };
    let vendor = |leaves: &[CpuidLeaf]| find(leaves, 0, 0).map(|l| (l.ebx, l.edx, l.ecx));
    if vendor(source) != vendor(&local) {
        return Err("the CPU vendor differs between the hosts".into());
    }
    let mut missing = Vec::new();
    for (function, index, reg, ignore) in cpuid::FEATURE_REGISTERS {
        let Some(wanted) = find(source, function, index) else {
            continue;
        };
        let have = find(&local, function, index).map_or(0, |l| register(&l, reg));
        let lacking = register(&wanted, reg) & !have & !ignore;
        if lacking != 0 {
            let bits: Vec<String> = (0..32)
                .filter(|b| lacking & (1 << b) != 0)
                .map(|b| match cpuid::feature_name(function, index, reg, b) {
                    Some(name) => format!("{b} ({name})"),
                    None => b.to_string(),
                })
                .collect();
            missing.push(format!(
                "leaf {function:#x}.{index} {} bits {}",
                cpuid::REGISTER_NAMES[reg],
                bits.join(",")
            ));
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "this host lacks CPU features the guest uses: {}",
            missing.join("; ")
        ))
    }
}

impl From<&kvm_bindings::kvm_cpuid_entry2> for CpuidLeaf {
    fn from(e: &kvm_bindings::kvm_cpuid_entry2) -> Self {
        CpuidLeaf {
            function: e.function,
            index: e.index,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
        }
    }
}

impl Incoming {
    /// Checks the Hello against this host; the reason is sent to the sender.
    pub fn check(&self, local_cpuid: &CpuId, local_xsave: u32) -> Result<MachineConfig, String> {
        let hello = &self.hello;
        if hello.version != PROTOCOL_VERSION {
            return Err(format!(
                "protocol version {} is not supported (this host speaks {PROTOCOL_VERSION})",
                hello.version
            ));
        }
        memory::validate_size(hello.machine.memory_bytes).map_err(|e| e.to_string())?;
        if hello.machine.vcpus == 0 || hello.machine.vcpus > crate::vmm::MAX_VCPUS {
            return Err(format!("{} vCPUs cannot run here", hello.machine.vcpus));
        }
        if hello.streams == 0 || hello.streams > super::MAX_STREAMS {
            return Err(format!("{} streams requested", hello.streams));
        }
        if hello.xsave_size > local_xsave.max(4096) {
            return Err(format!(
                "the guest's XSAVE area is {} bytes; this host's is {}",
                hello.xsave_size,
                local_xsave.max(4096)
            ));
        }
        check_cpu(&hello.cpuid, local_cpuid)?;
        Ok(hello.machine.clone())
    }

    /// The streams this receiver takes: what the sender opens, or when it
    /// lets the receiver choose, as many as the cores free here allow.
    pub fn streams(&self) -> u32 {
        let hello = &self.hello;
        if !hello.streams_auto {
            return hello.streams;
        }
        let same_machine = !hello.boot_id.is_empty() && hello.boot_id == cpu::boot_id();
        cpu::taken_streams(hello.streams, cpu::free_cores(), same_machine)
    }

    /// Turns the sender away; nothing was sent, nothing changes on either side.
    pub fn refuse(mut self, reason: &str) {
        let _ = protocol::write_frame(&mut self.control, Kind::Abort, 0, reason.as_bytes());
    }

    /// Receives the VM into `vm` (created for the Hello's machine, not yet
    /// running) and resumes it on Go. `durable` is called at the commit,
    /// before `Running` is sent: it writes the decision where this VMM's
    /// agent finds it even if this process dies the next instant. On
    /// success the VM runs and the gate keeps answering queries for the rest
    /// of the process's life.
    pub fn receive(
        mut self,
        vm: &mut dyn TargetVm,
        durable: &mut dyn FnMut() -> Result<(), String>,
    ) -> Result<(), ReceiveError> {
        let session = self.hello.session;
        self.handle.set_outcome(session, Outcome::Discarded);
        self.handle.set_phase(Phase::Receiving);
        let result = self.run(vm, durable);
        // A sender that got Ready may have sent Go and will ask what became
        // of it: a receiver that gives up after Ready stays to answer.
        let outcome = self.handle.outcome(session);
        let asked_later = result.is_err() && outcome == Outcome::Pending;
        // A commit is never taken back, even if the vCPUs then failed to start.
        if result.is_err() && outcome != Outcome::Running {
            self.handle.set_outcome(session, Outcome::Discarded);
        }
        if result.is_err() {
            self.control.shutdown();
            if asked_later {
                std::thread::sleep(LINGER);
            }
        }
        drop(self.gate);
        result
    }

    fn run(
        &mut self,
        vm: &mut dyn TargetVm,
        durable: &mut dyn FnMut() -> Result<(), String>,
    ) -> Result<(), ReceiveError> {
        let streams = self.streams();
        // Pre-copy runs below the guests here too, at the sender's share; the
        // crew is raised when the source pauses.
        self.crew.set(cpu::precopy_nice(self.hello.guest_share));
        self.crew.join();
        protocol::write_frame(&mut self.control, Kind::Accept, u64::from(streams), &[])?;
        let (done_tx, done_rx) = channel::<(u32, Result<u64, String>)>();
        let memory = vm.memory().clone();
        let mut workers = Vec::new();
        let mut worker_streams = Vec::new();
        let deadline = Instant::now() + self.timeouts.stream();
        let mut joined = vec![false; streams as usize];
        joined[0] = true;
        while joined.iter().any(|j| !j) {
            let Some((stream, index)) = self.gate.next_join(deadline) else {
                return Err(ReceiveError::Stream {
                    index: 0,
                    detail: format!("not every stream joined within {} s", self.timeouts.stream_s),
                });
            };
            if index == 0 || index >= streams || joined[index as usize] {
                return Err(ReceiveError::Stream {
                    index,
                    detail: "joined twice or out of range".into(),
                });
            }
            joined[index as usize] = true;
            transport::tune(stream.socket());
            let _ = stream.set_read_timeout(Some(self.timeouts.stream()));
            worker_streams.push(stream.socket().try_clone().map_err(ProtocolError::Io)?);
            let memory = memory.clone();
            let done = done_tx.clone();
            let member = Arc::clone(&self.crew);
            workers.push(
                std::thread::Builder::new()
                    .name(format!("migrate-rx{index}"))
                    .spawn(move || {
                        member.join();
                        stream_loop(index, stream, &memory, &done);
                    })
                    .map_err(ProtocolError::Io)?,
            );
        }
        drop(done_tx);
        // Whatever ends the receive, the streams are closed so their threads end.
        let result = self.transfer(vm, &memory, &done_rx, &mut workers, &worker_streams, durable);
        for stream in &worker_streams {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        for worker in workers {
            let _ = worker.join();
        }
        result
    }

    fn transfer(
        &mut self,
        vm: &mut dyn TargetVm,
        memory: &GuestMemory,
        done_rx: &std::sync::mpsc::Receiver<(u32, Result<u64, String>)>,
        workers: &mut Vec<std::thread::JoinHandle<()>>,
        worker_streams: &[TcpStream],
        durable: &mut dyn FnMut() -> Result<(), String>,
    ) -> Result<(), ReceiveError> {
        let streams = worker_streams.len() as u32 + 1;
        let mut ended: Vec<u64> = vec![u64::MAX; streams as usize];
        // Memory arrived on the control stream since its last RoundEnd.
        let mut round_open = false;
        loop {
            let header = protocol::read_header(&mut self.control)?;
            match header.kind {
                Kind::Memory => {
                    round_open = true;
                    apply_memory(&mut self.control, memory, &header)
                        .map_err(|detail| ReceiveError::Stream { index: 0, detail })?;
                }
                Kind::Release => self.crew.set(cpu::VMM_NICE),
                Kind::Paused => {
                    self.crew.set(cpu::VMM_NICE);
                    vm.begin_switchover();
                }
                Kind::RoundEnd => {
                    round_open = false;
                    let round = header.arg;
                    ended[0] = round;
                    while ended.iter().any(|r| *r != round) {
                        let (index, result) =
                            done_rx
                                .recv_timeout(self.timeouts.stream())
                                .map_err(|_| ReceiveError::Stream {
                                    index: 0,
                                    detail: format!("a stream was silent for {} s", self.timeouts.stream_s),
                                })?;
                        match result {
                            Ok(r) if r == round => ended[index as usize] = r,
                            Ok(r) => {
                                return Err(ReceiveError::Stream {
                                    index,
                                    detail: format!("ended round {r} during round {round}"),
                                });
                            }
                            Err(detail) => return Err(ReceiveError::Stream { index, detail }),
                        }
                    }
                    protocol::write_frame(&mut self.control, Kind::RoundDone, round, &[])?;
                }
                Kind::State => {
                    let payload = protocol::read_payload(&mut self.control, &header)?;
                    // Every stream must have ended the same, last round; then
                    // they are closed, so no page can land after the state.
                    if round_open || ended.iter().any(|r| *r != ended[0] || *r == u64::MAX) {
                        return Err(ReceiveError::Refused(
                            "the state came before the last round ended".into(),
                        ));
                    }
                    // Closed, the streams can deliver nothing more, and each
                    // has ended the last round, so its thread only has to exit.
                    // Joining comes after the restore, keeping those wake-ups
                    // off the way to Ready, unless memory is to be hashed
                    // first (a restore may write to guest memory: a kvmclock
                    // page, for one). Nothing runs before they are gone.
                    for stream in worker_streams {
                        let _ = stream.shutdown(std::net::Shutdown::Both);
                    }
                    // A non-zero argument is the source's content hash (verify_memory).
                    if header.arg != 0 {
                        for worker in workers.drain(..) {
                            let _ = worker.join();
                        }
                        let ours = dirty::content_hash(memory);
                        if ours != header.arg {
                            return Err(ReceiveError::Refused(format!(
                                "guest memory differs from the source's: hash {ours:#x}, source {:#x}",
                                header.arg
                            )));
                        }
                    }
                    let state = VmState::decode(&payload).map_err(ReceiveError::State)?;
                    if state.machine != self.hello.machine {
                        return Err(ReceiveError::Refused(
                            "the state is for another machine than announced".into(),
                        ));
                    }
                    vm.restore(state).map_err(|source| ReceiveError::Vm {
                        action: "restore the state",
                        source,
                    })?;
                    for worker in workers.drain(..) {
                        let _ = worker.join();
                    }
                    if fault::injected() == Some(Fault::CloseBeforeReady) {
                        return Err(ReceiveError::Injected("closed the streams before Ready"));
                    }
                    self.handle.set_outcome(self.hello.session, Outcome::Pending);
                    protocol::write_frame(&mut self.control, Kind::Ready, 0, &[])?;
                    return self.await_go(vm, durable);
                }
                Kind::Abort => {
                    let payload = protocol::read_payload(&mut self.control, &header)?;
                    return Err(ProtocolError::PeerAborted(String::from_utf8_lossy(&payload).into_owned()).into());
                }
                other => {
                    return Err(ProtocolError::Unexpected {
                        expected: Kind::Memory,
                        got: other,
                    }
                    .into());
                }
            }
        }
    }

    /// The one place the VM may start: on Go, and never after giving up.
    fn await_go(
        &mut self,
        vm: &mut dyn TargetVm,
        durable: &mut dyn FnMut() -> Result<(), String>,
    ) -> Result<(), ReceiveError> {
        let waited_s = self.timeouts.handoff_s;
        let _ = self.control.set_read_timeout(Some(self.timeouts.handoff()));
        let fault = fault::injected();
        let received = loop {
            match protocol::read_header(&mut self.control) {
                Ok(header) if header.kind == Kind::Frames => {
                    let payload = protocol::read_payload(&mut self.control, &header)?;
                    vm.put_frames(protocol::decode::<HeldFrames>(Kind::Frames, &payload)?);
                }
                Ok(header) if header.kind == Kind::Go => break Ok(header),
                Ok(header) if header.kind == Kind::Abort => {
                    let payload = protocol::read_payload(&mut self.control, &header)?;
                    break Err(ProtocolError::PeerAborted(
                        String::from_utf8_lossy(&payload).into_owned(),
                    ));
                }
                Ok(header) => {
                    break Err(ProtocolError::Unexpected {
                        expected: Kind::Go,
                        got: header.kind,
                    });
                }
                Err(e) => break Err(e),
            }
        };
        let received = match (received, fault) {
            (Ok(_), Some(Fault::IgnoreGo)) => {
                // As if Go was lost on the way: wait out the rest of the timeout.
                let mut rest = [0u8; 1];
                let _ = self.control.read(&mut rest);
                Err(ProtocolError::Io(std::io::ErrorKind::TimedOut.into()))
            }
            (result, _) => result,
        };
        match received {
            Ok(_) => {}
            Err(ProtocolError::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
            {
                return Err(ReceiveError::NoGo { waited_s });
            }
            Err(e) => return Err(e.into()),
        }
        let go_at = Instant::now();
        fault::hold(Hold::AfterGo);
        if let Err(source) = vm.can_resume() {
            vm.halt();
            return Err(ReceiveError::Vm {
                action: "resume",
                source,
            });
        }
        // The commit: record the decision where the agent will find it, then
        // in the gate (queries), then tell the source, then start the vCPUs.
        // Told first, the source's wake-up does not queue behind vCPUs that
        // spin on every core of a small host (a scheduler tick, 4 ms at
        // HZ=250), and the guest starts as soon.
        let session = self.hello.session;
        if let Err(detail) = self.handle.commit(session, durable) {
            vm.halt();
            return Err(ReceiveError::Vm {
                action: "commit",
                source: detail.into(),
            });
        }
        if fault == Some(Fault::CloseAfterGo) {
            self.control.shutdown();
        } else {
            let _ = protocol::write_frame(&mut self.control, Kind::Running, 0, &[]);
        }
        let running_at = Instant::now();
        if fault == Some(Fault::SlowStart) {
            std::thread::sleep(Duration::from_secs(1));
        }
        let entered = vm.resume();
        if let Ok(entered) = entered {
            // For the sender's report only: it does not wait long for it.
            let resumed = Resumed {
                commit_ns: nanos(running_at - go_at),
                start_ns: nanos(entered.saturating_duration_since(running_at)),
            };
            let _ = protocol::write_frame(&mut self.control, Kind::Resumed, 0, &protocol::encode(&resumed));
        }
        if let Err(source) = entered {
            // Nothing left that could fail was expected to (every vCPU thread
            // was there a moment ago). Stop whatever did start. The record
            // keeps saying committed: a source that heard Running has ended
            // its copy, and one that did not must not resume either, since
            // this one may have run a moment. The VM is lost, as if this
            // host had crashed.
            vm.halt();
            return Err(ReceiveError::Vm {
                action: "resume after the commit",
                source,
            });
        }
        vm.announce(self.hello.announce);
        Ok(())
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Reads pages and round markers from one extra stream.
fn stream_loop(index: u32, mut stream: Link, memory: &GuestMemory, done: &Sender<(u32, Result<u64, String>)>) {
    loop {
        let header = match protocol::read_header(&mut stream) {
            Ok(header) => header,
            Err(e) => {
                let _ = done.send((index, Err(e.to_string())));
                return;
            }
        };
        let result = match header.kind {
            Kind::Memory => apply_memory(&mut stream, memory, &header),
            Kind::RoundEnd => {
                if done.send((index, Ok(header.arg))).is_err() {
                    return;
                }
                Ok(())
            }
            other => Err(format!("unexpected {other:?} frame")),
        };
        if let Err(detail) = result {
            let _ = done.send((index, Err(detail)));
            return;
        }
    }
}

/// For the fuzz target `receiver_stream` (not an API): runs one extra
/// stream's handling, [`stream_loop`], on `bytes` arriving over a loopback
/// TCP connection, into `memory`; what the stream reported (a round's end,
/// or the error that ended it), in order.
#[doc(hidden)]
pub fn fuzz_stream(bytes: &[u8], memory: &GuestMemory) -> std::io::Result<Vec<Result<u64, String>>> {
    let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
    let mut sender = TcpStream::connect(listener.local_addr()?)?;
    let (receiving, _) = listener.accept()?;
    let bytes = bytes.to_vec();
    // A writer of its own: an input larger than the socket's buffers must
    // not wait for a reader that has not started.
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = sender.write_all(&bytes);
        let _ = sender.shutdown(std::net::Shutdown::Write);
    });
    let (done, reports) = channel();
    stream_loop(1, Link::plain(receiving)?, memory, &done);
    drop(done);
    let _ = writer.join();
    Ok(reports.into_iter().map(|(_, report)| report).collect())
}

/// True when `[gpa, gpa + len)` lies inside one guest memory region.
fn in_one_region(memory: &GuestMemory, gpa: u64, len: u64) -> bool {
    memory.find_region(GuestAddress(gpa)).is_some_and(|region| {
        gpa.checked_add(len)
            .is_some_and(|end| end <= region.start_addr().0 + region.len())
    })
}

/// Reads one memory batch straight into guest memory, after checking its
/// whole range table.
fn apply_memory(stream: &mut Link, memory: &GuestMemory, header: &Header) -> Result<(), String> {
    let mut count = [0u8; 4];
    stream.read_exact(&mut count).map_err(|e| e.to_string())?;
    let ranges = u32::from_le_bytes(count);
    if ranges == 0 || ranges > MAX_BATCH_RANGES {
        return Err(format!("memory batch with {ranges} ranges"));
    }
    let table_len = 4 + ranges as usize * RANGE_ENTRY_LEN;
    if table_len as u64 > u64::from(header.len) {
        return Err("range table longer than its frame".into());
    }
    let mut table = vec![0u8; table_len];
    table[..4].copy_from_slice(&count);
    stream.read_exact(&mut table[4..]).map_err(|e| e.to_string())?;
    let (ranges, _) = protocol::decode_ranges(&table, u64::from(header.len), |gpa, len| {
        in_one_region(memory, gpa, len)
    })
    .map_err(|e| e.to_string())?;
    for range in ranges {
        let host = memory
            .get_host_address(GuestAddress(range.gpa))
            .map_err(|_| format!("{:#x} is not guest memory", range.gpa))?;
        if range.flags & RANGE_ZERO != 0 {
            // SAFETY: the range was checked to lie inside one mapped region, and
            // the target VM does not run while it receives.
            unsafe { host.write_bytes(0, range.bytes() as usize) };
            continue;
        }
        // SAFETY: as above; the socket writes exactly `range.bytes()` bytes there.
        unsafe { stream.reader.read_into(host, range.bytes() as usize) }.map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32, ebx: u32, ecx: u32, edx: u32) -> CpuidLeaf {
        CpuidLeaf {
            function,
            index,
            eax: 0,
            ebx,
            ecx,
            edx,
        }
    }

    fn local(leaves: &[CpuidLeaf]) -> CpuId {
        let entries: Vec<kvm_bindings::kvm_cpuid_entry2> = leaves
            .iter()
            .map(|l| kvm_bindings::kvm_cpuid_entry2 {
                function: l.function,
                index: l.index,
                eax: l.eax,
                ebx: l.ebx,
                ecx: l.ecx,
                edx: l.edx,
                ..Default::default()
            })
            .collect();
        CpuId::from_entries(&entries).unwrap()
    }

    #[test]
    fn cpu_features_must_be_a_subset() {
        let vendor = leaf(0, 0, 0x6874_7541, 0x444d_4163, 0x6974_6e65);
        let host = local(&[vendor, leaf(7, 0, 0b1011, 0, 0), leaf(1, 0, 0, 0, 0)]);
        assert!(check_cpu(&[vendor, leaf(7, 0, 0b0011, 0, 0)], &host).is_ok());
        let err = check_cpu(&[vendor, leaf(7, 0, 0b0111, 0, 0)], &host).unwrap_err();
        assert!(err.contains("leaf 0x7.0 ebx bits 2"), "{err}");
        // Bits the VMM sets itself do not count.
        assert!(check_cpu(&[vendor, leaf(1, 0, 0, 1 << 31, 1 << 28)], &host).is_ok());
        let intel = leaf(0, 0, 0x756e_6547, 0x6c65_746e, 0x4965_6e69);
        assert!(check_cpu(&[intel], &host).unwrap_err().contains("vendor"));
    }
}
