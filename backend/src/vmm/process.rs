//! The VMM process: one VM, its control socket, its console, and a loop that
//! reacts to the guest, the operator, signals and migrations until the VM ends.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Sender, channel};

use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};

use super::control::{self, ControlError, MAX_MEMORY_READ, Reply, Request, Response, VmStatus};
use super::event::{SourceReply, SourceRequest, StopReason, VmmEvent};
use super::snapshot::{self, SnapshotError};
use super::{MachineConfig, RunState, Start, Vm, VmError, VmState};
use crate::migration::protocol::CpuidLeaf;
use crate::migration::sender::{self, MigrationError, SourceContext, SourceVm};
use crate::migration::transport::{self, TransportError};
use crate::migration::{MigrationOptions, Report, Token, receiver};

/// Where the guest's serial console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Console {
    Stdout,
    File(PathBuf),
    Discard,
}

/// Scheduling niceness of the VMM's threads other than vCPUs.
const VMM_NICE: i32 = -5;

/// How the VMM process gets its VM.
#[derive(Debug)]
pub enum Launch {
    /// Build it here: boot a kernel or restore a snapshot.
    New { machine: MachineConfig, start: Start },
    /// Wait on `url` (`tcp:HOST:PORT`) for a live migration to bring it.
    /// Receive the VM by live migration; with a token, only from the sender
    /// that was given it.
    Incoming { url: String, token: Option<Token> },
}

/// Everything the VMM process needs to run one VM.
#[derive(Debug)]
pub struct VmmOptions {
    /// The VM's name (logs, migration peers).
    pub name: String,
    pub launch: Launch,
    pub console: Console,
    pub control: Option<PathBuf>,
}

#[derive(Debug, Error)]
pub enum ProcessError {
    #[error("cannot open console file {path}")]
    Console {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket")]
    Control(#[from] ControlError),
    #[error("cannot start a thread")]
    Thread(#[source] std::io::Error),
    #[error("cannot set up signal handling")]
    Signals(#[source] std::io::Error),
    #[error("cannot run the VM")]
    Vm(#[from] VmError),
    #[error("cannot listen for an incoming migration")]
    Listen(#[from] TransportError),
    #[error("incoming migration failed, nothing runs here: {0}")]
    Incoming(String),
}

/// What a started VMM process tells its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    /// Where it waits for an incoming migration (the port chosen if 0 was given).
    pub incoming: Option<std::net::SocketAddr>,
}

/// Runs a VM until it stops, is migrated away, or the operator ends it;
/// returns why. `on_ready` is called once the control socket answers.
pub fn run(options: VmmOptions, on_ready: impl FnOnce(&Ready)) -> Result<StopReason, ProcessError> {
    // The VMM's own threads (this loop, control, migration) inherit a higher
    // priority than the guest's vCPU threads, which reset theirs: on a busy
    // host a pause, a state capture or a handoff then waits microseconds for
    // a CPU, not a scheduler time slice. Without the privilege, all stay equal.
    super::vcpu::set_thread_nice(VMM_NICE);
    let (events, inbox) = channel();
    forward_signals(events.clone())?;
    let listener = options.control.as_deref().map(control::bind).transpose()?;
    // The socket file this process made: only that one is removed at the end,
    // never one a successor VMM has since bound at the same path.
    let own_socket = options.control.as_deref().and_then(socket_identity);
    let sink = console_sink(&options.console)?;
    let mut vmm = Vmm {
        vm: None,
        name: options.name.clone(),
        control_path: options.control.clone(),
        events: events.clone(),
        migration: None,
        in_doubt: None,
    };
    let mut ready = Ready { incoming: None };
    match options.launch {
        Launch::New { machine, start } => {
            let mut vm = Vm::create(machine, sink, events.clone(), start)?;
            vm.resume()?;
            vmm.vm = Some(vm);
        }
        Launch::Incoming { url, token } => {
            let migration_listener = transport::listen(&url)?;
            ready.incoming = migration_listener.local_addr().ok();
            let events = events.clone();
            std::thread::Builder::new()
                .name("migrate-in".into())
                .spawn(move || {
                    let received = receive_incoming(migration_listener, token, sink, &events);
                    let _ = events.send(VmmEvent::Received(received));
                })
                .map_err(ProcessError::Thread)?;
        }
    }
    let answering = listener.map(|listener| control::serve(listener, events));
    on_ready(&ready);

    let stop_reason = loop {
        let Ok(event) = inbox.recv() else {
            break StopReason::Requested;
        };
        match event {
            VmmEvent::Stopped(reason) => {
                if let Some(vm) = &mut vmm.vm {
                    vm.mark_stopped();
                }
                break reason;
            }
            VmmEvent::Signal(_) => break StopReason::Requested,
            VmmEvent::Received(Ok(vm)) => vmm.vm = Some(vm),
            VmmEvent::Received(Err(detail)) => {
                remove_own_socket(options.control.as_deref(), own_socket);
                return Err(ProcessError::Incoming(detail));
            }
            VmmEvent::Control(Request::Shutdown, reply) => {
                if let Some(vm) = &mut vmm.vm {
                    let _ = vm.pause();
                }
                let _ = reply.send(Response::Ok(Reply::Done));
                break StopReason::Requested;
            }
            VmmEvent::Control(request, reply) => vmm.handle(request, &reply),
            VmmEvent::Source(request, reply) => {
                let _ = reply.send(vmm.handle_source(request));
            }
            VmmEvent::MigrationEnded(result) => {
                if let Some(reason) = vmm.migration_ended(result) {
                    break reason;
                }
            }
        }
    };
    // Dropping the VMM ends pending requests; answers already given (a
    // migration's report, a shutdown's ok) reach their askers before the
    // process goes away.
    drop(vmm);
    if let Some(answering) = &answering {
        answering.wait_delivered(std::time::Duration::from_secs(2));
    }
    remove_own_socket(options.control.as_deref(), own_socket);
    Ok(stop_reason)
}

/// (device, inode) of a file.
fn socket_identity(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

fn remove_own_socket(path: Option<&std::path::Path>, own: Option<(u64, u64)>) {
    if let Some(path) = path
        && own.is_some()
        && socket_identity(path) == own
    {
        let _ = std::fs::remove_file(path);
    }
}

/// Waits for a sender, checks it, builds the VM it announces and receives it.
fn receive_incoming(
    listener: std::net::TcpListener,
    token: Option<Token>,
    console: Box<dyn Write + Send>,
    events: &Sender<VmmEvent>,
) -> Result<Vm, String> {
    let incoming = receiver::accept(listener, receiver::Outcomes::default(), token).map_err(|e| chain(&e))?;
    let checked = super::open_kvm().map_err(|e| chain(&e)).and_then(|kvm| {
        let local = super::cpuid::supported(&kvm).map_err(|e| chain(&e))?;
        let xsave = u32::try_from(kvm.check_extension_int(kvm_ioctls::Cap::Xsave2)).unwrap_or(0);
        incoming.check(&local, xsave)
    });
    let machine = match checked {
        Ok(machine) => machine,
        Err(reason) => {
            incoming.refuse(&reason);
            return Err(format!("refused the VM: {reason}"));
        }
    };
    let mut vm = match Vm::create(machine, console, events.clone(), Start::Incoming) {
        Ok(vm) => vm,
        Err(e) => {
            let reason = chain(&e);
            incoming.refuse(&reason);
            return Err(reason);
        }
    };
    incoming.receive(&mut vm).map_err(|e| chain(&e))?;
    Ok(vm)
}

/// An outgoing migration in progress.
struct Outgoing {
    url: String,
    reply: Sender<Response>,
    cancel: Arc<AtomicBool>,
}

/// The VMM process's state, owned by its main loop.
struct Vmm {
    vm: Option<Vm>,
    name: String,
    control_path: Option<PathBuf>,
    events: Sender<VmmEvent>,
    migration: Option<Outgoing>,
    in_doubt: Option<String>,
}

/// The migration engine's view of the source VM: requests to the main loop.
struct ProcessSource {
    events: Sender<VmmEvent>,
}

impl ProcessSource {
    fn ask(&self, request: SourceRequest) -> Result<SourceReply, String> {
        let (reply_to, reply) = channel();
        self.events
            .send(VmmEvent::Source(request, reply_to))
            .map_err(|_| "the VMM is shutting down".to_string())?;
        reply.recv().map_err(|_| "the VMM is shutting down".to_string())?
    }
}

impl SourceVm for ProcessSource {
    fn pause(&self) -> Result<(), String> {
        self.ask(SourceRequest::Pause).map(drop)
    }

    fn resume(&self) -> Result<(), String> {
        self.ask(SourceRequest::Resume).map(drop)
    }

    fn hold(&self, duration: std::time::Duration) -> Result<(), String> {
        self.ask(SourceRequest::Hold(duration)).map(drop)
    }

    fn save_state(&self) -> Result<VmState, String> {
        match self.ask(SourceRequest::SaveState)? {
            SourceReply::State(state) => Ok(*state),
            SourceReply::Done => Err("no state returned".into()),
        }
    }
}

impl Vmm {
    fn handle(&mut self, request: Request, reply: &Sender<Response>) {
        if let Request::Migrate { url, options } = request {
            if let Err(message) = self.start_migration(url, &options, reply.clone()) {
                let _ = reply.send(Response::Error(message));
            }
            return;
        }
        let response = match self.answer(request) {
            Ok(answer) => Response::Ok(answer),
            Err(message) => Response::Error(message),
        };
        let _ = reply.send(response);
    }

    fn answer(&mut self, request: Request) -> Result<Reply, String> {
        let migrating = self.migration.is_some();
        match request {
            Request::Status => {
                return Ok(Reply::Status(VmStatus {
                    state: self.vm.as_ref().map(Vm::state),
                    migrating_to: self.migration.as_ref().map(|m| m.url.clone()),
                    in_doubt: self.in_doubt.clone(),
                    pid: std::process::id(),
                    vcpus: self.vm.as_ref().map_or(0, |vm| vm.machine().vcpus),
                    memory_bytes: self.vm.as_ref().map_or(0, |vm| vm.machine().memory_bytes),
                    stop_reason: None,
                }));
            }
            Request::CancelMigration => {
                let migration = self.migration.as_ref().ok_or("no migration is running")?;
                migration.cancel.store(true, Ordering::SeqCst);
                return Ok(Reply::Done);
            }
            Request::Pause | Request::Resume | Request::Save { .. } | Request::WriteMemory { .. } if migrating => {
                return Err("refused: a migration is in progress (cancel it first)".into());
            }
            _ => {}
        }
        let Some(vm) = self.vm.as_mut() else {
            return Err("no VM here yet: waiting for an incoming migration".into());
        };
        match request {
            Request::Stats => Ok(Reply::Stats(vm.stats())),
            Request::Pause => vm.pause().map(|()| Reply::Done).map_err(|e| chain(&e)),
            Request::Resume => {
                // Resuming an in-doubt source is the operator's decision that
                // the target does not run the VM.
                vm.resume().map_err(|e| chain(&e))?;
                self.in_doubt = None;
                Ok(Reply::Done)
            }
            Request::Save { dir } => snapshot::save(vm, &dir)
                .map(Reply::Saved)
                .map_err(|e: SnapshotError| chain(&e)),
            Request::ReadMemory { gpa, len } => {
                if len > MAX_MEMORY_READ {
                    return Err(format!("at most {MAX_MEMORY_READ} bytes can be read at once"));
                }
                let mut bytes = vec![0u8; len as usize];
                vm.memory()
                    .read_slice(&mut bytes, GuestAddress(gpa))
                    .map(|()| Reply::Memory { hex: to_hex(&bytes) })
                    .map_err(|_| format!("{len} bytes at {gpa:#x} are not all guest memory"))
            }
            Request::WriteMemory { gpa, hex } => {
                if vm.state() != RunState::Paused {
                    return Err(format!("the VM is {}; pause it before writing its memory", vm.state()));
                }
                let bytes = from_hex(&hex).ok_or("hex must be an even number of hex digits")?;
                vm.memory()
                    .write_slice(&bytes, GuestAddress(gpa))
                    .map(|()| Reply::Done)
                    .map_err(|_| format!("{} bytes at {gpa:#x} are not all guest memory", bytes.len()))
            }
            Request::Status | Request::CancelMigration | Request::Shutdown | Request::Migrate { .. } => {
                Err("internal: request handled elsewhere".into())
            }
        }
    }

    fn start_migration(
        &mut self,
        url: String,
        options: &MigrationOptions,
        reply: Sender<Response>,
    ) -> Result<(), String> {
        if self.migration.is_some() {
            return Err("refused: this VM is already migrating".into());
        }
        if let Some(doubt) = &self.in_doubt {
            return Err(format!("refused: an earlier migration is in doubt: {doubt}"));
        }
        let vm = self.vm.as_ref().ok_or("no VM here to migrate")?;
        if vm.state() != RunState::Running {
            return Err(format!("only a running VM migrates live; this one is {}", vm.state()));
        }
        transport::parse_url(&url).map_err(|e| chain(&e))?;
        let cancel = Arc::new(AtomicBool::new(false));
        let context = SourceContext {
            vm_name: self.name.clone(),
            memory: vm.memory().clone(),
            vm_fd: Arc::clone(vm.fd()),
            machine: vm.machine().clone(),
            cpuid: vm.guest_cpuid().iter().map(CpuidLeaf::from).collect(),
            xsave_size: vm.xsave_size() as u32,
            cancel: Arc::clone(&cancel),
        };
        let source = ProcessSource {
            events: self.events.clone(),
        };
        let events = self.events.clone();
        let progress_to = reply.clone();
        let target = url.clone();
        let options = options.clone();
        std::thread::Builder::new()
            .name("migrate-out".into())
            .spawn(move || {
                let result = sender::migrate(&context, &source, &target, &options, &mut |progress| {
                    let _ = progress_to.send(Response::Progress(progress.clone()));
                });
                let _ = events.send(VmmEvent::MigrationEnded(result));
            })
            .map_err(|e| format!("cannot start the migration: {e}"))?;
        self.migration = Some(Outgoing { url, reply, cancel });
        Ok(())
    }

    fn handle_source(&mut self, request: SourceRequest) -> Result<SourceReply, String> {
        let vm = self.vm.as_mut().ok_or("the VM is gone")?;
        match request {
            // A migration's pause: the state is saved next, so the vCPUs
            // take theirs as they stop.
            SourceRequest::Pause => vm.pause_capturing().map(|()| SourceReply::Done).map_err(|e| chain(&e)),
            SourceRequest::Resume => vm.resume().map(|()| SourceReply::Done).map_err(|e| chain(&e)),
            SourceRequest::SaveState => vm
                .save_state()
                .map(|state| SourceReply::State(Box::new(state)))
                .map_err(|e| chain(&e)),
            SourceRequest::Hold(duration) => vm.hold(duration).map(|()| SourceReply::Done).map_err(|e| chain(&e)),
        }
    }

    /// Reports a finished migration; returns a stop reason when the VM left.
    fn migration_ended(&mut self, result: Result<Report, MigrationError>) -> Option<StopReason> {
        let migration = self.migration.take()?;
        match result {
            Ok(report) => {
                let _ = migration.reply.send(Response::Ok(Reply::Migrated(report)));
                // The target runs the VM: this copy must never run again.
                if let Some(vm) = &mut self.vm {
                    vm.mark_migrated();
                }
                Some(StopReason::Migrated { target: migration.url })
            }
            Err(error) => {
                let mut message = chain(&error);
                if error.is_in_doubt() {
                    let control = self
                        .control_path
                        .as_ref()
                        .map_or_else(|| "SOCKET".to_string(), |p| p.display().to_string());
                    message.push_str(&format!(
                        ". Check the target: if it runs the VM, end this copy with \
                         `vmig vm shutdown --control {control}`; if it does not, resume this one with \
                         `vmig vm resume --control {control}`"
                    ));
                    self.in_doubt = Some(message.clone());
                }
                let _ = migration.reply.send(Response::Error(message));
                None
            }
        }
    }
}

fn console_sink(console: &Console) -> Result<Box<dyn Write + Send>, ProcessError> {
    Ok(match console {
        Console::Stdout => Box::new(std::io::stdout()),
        Console::Discard => Box::new(std::io::sink()),
        Console::File(path) => Box::new(File::create(path).map_err(|source| ProcessError::Console {
            path: path.clone(),
            source,
        })?),
    })
}

/// Blocks SIGINT/SIGTERM in this thread (and so in every thread it starts) and
/// turns them into events on a dedicated thread.
fn forward_signals(events: Sender<VmmEvent>) -> Result<(), ProcessError> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t owned by this frame.
    unsafe { libc::sigemptyset(&mut set) };
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `set` is a valid sigset_t owned by this frame.
        unsafe { libc::sigaddset(&mut set, signal) };
    }
    // SAFETY: changes only this thread's mask, with a valid set.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(ProcessError::Signals(std::io::Error::from_raw_os_error(rc)));
    }
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            loop {
                let mut signal = 0;
                // SAFETY: `set` is initialised and `signal` is a valid out-pointer.
                if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
                    continue;
                }
                if events.send(VmmEvent::Signal(signal)).is_err() {
                    return;
                }
            }
        })
        .map_err(ProcessError::Signals)?;
    Ok(())
}

/// An error and its sources on one line, as the operator should see it.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Loads a saved machine for [`Start::Restore`].
pub fn restore_from(dir: &std::path::Path) -> Result<(MachineConfig, Start), SnapshotError> {
    let (state, image) = snapshot::load(dir)?;
    Ok((
        state.machine.clone(),
        Start::Restore {
            state: Box::new(state),
            memory_image: image,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        assert_eq!(from_hex(&to_hex(&[0, 1, 0xab, 0xff])), Some(vec![0, 1, 0xab, 0xff]));
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("zz"), None);
        assert_eq!(from_hex("é1"), None);
    }
}
