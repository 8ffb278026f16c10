//! The VMM process: one VM, its control socket, its console, and a loop that
//! reacts to the guest, the operator, signals and migrations until the VM ends.
//!
//! With `--record FILE` the process keeps a [`super::record`] for its agent:
//! the handoff it passed, and how it ended.
//!
//! SIGINT, SIGTERM and `shutdown` stop the VM; during an outgoing migration
//! they first cancel it (the VM stays here, then stops) unless its switchover
//! has begun, in which case the VMM waits for the outcome: a VM that moved
//! is left to run on the target. A receiving VMM that has not committed
//! gives its VM up at once; one that has committed stops the VM it took. A
//! second signal stops the VMM at once.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Sender, channel};

use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};

use super::control::{
    self, ControlError, Failure, IncomingStatus, MAX_MEMORY_READ, MigrationEnd, Reply, Request, Response, VmStatus,
};
use super::event::{NotReceived, StopReason, VmmEvent};
use super::incoming::{self, Receiving};
use super::outgoing::{self, Ended, Outgoing};
use super::record::{Exit, RecordFile};
use crate::migration::transport::{self, TransportError};
use crate::migration::{Timeouts, Token};
use crate::vmm::snapshot::{self, SnapshotError};
use crate::vmm::{MachineConfig, RunState, Start, Vm, VmError};

/// Where the guest's serial console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Console {
    Stdout,
    File(PathBuf),
    Discard,
}

/// How the VMM process gets its VM.
#[derive(Debug)]
pub enum Launch {
    /// Build it here: boot a kernel or restore a snapshot.
    New { machine: MachineConfig, start: Start },
    /// Wait on `url` (`tcp:HOST:PORT`) for a live migration to bring it;
    /// with a token, only from the sender that was given it. `migration`
    /// is the agents' id for it, for the record.
    Incoming {
        url: String,
        token: Option<Token>,
        migration: Option<String>,
        timeouts: Timeouts,
        /// The images the arriving VM may open; it is refused if it names another.
        allowed_disks: Vec<PathBuf>,
        /// CPU features this host hides from guests.
        hide_cpu: Vec<crate::vmm::cpuid::CpuidMask>,
        /// TLS streams only, from the source host it names; none: plaintext.
        tls: Option<crate::migration::tls::ServerSide>,
    },
}

/// Everything the VMM process needs to run one VM.
#[derive(Debug)]
pub struct VmmOptions {
    /// The VM's name (logs, migration peers).
    pub name: String,
    pub launch: Launch,
    pub console: Console,
    pub control: Option<PathBuf>,
    /// Where to keep the VMM's record for its agent.
    pub record: Option<PathBuf>,
    /// This host's bridge for each network (the VM's cards are plugged in there).
    pub bridges: crate::vmm::devices::virtio::Bridges,
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
    #[error("cannot write the VMM's record")]
    Record(#[source] std::io::Error),
    #[error("cannot run the VM")]
    Vm(#[from] VmError),
    #[error("cannot listen for an incoming migration")]
    Listen(#[from] TransportError),
    #[error("{}", if .0.committed {
        format!("the VM taken by live migration was lost: {}", .0.detail)
    } else {
        format!("incoming migration failed, nothing runs here: {}", .0.detail)
    })]
    Incoming(NotReceived),
}

/// What a started VMM process tells its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    /// Where it waits for an incoming migration (the port chosen if 0 was given).
    pub incoming: Option<std::net::SocketAddr>,
}

/// Runs a VM until it stops, is migrated away, or the operator ends it;
/// returns why. `on_ready` is called once the control socket answers. The
/// record, if any, says how it ended.
pub fn run(options: VmmOptions, on_ready: impl FnOnce(&Ready)) -> Result<StopReason, ProcessError> {
    let record = RecordFile::create(options.record.clone()).map_err(ProcessError::Record)?;
    let ended = run_vm(options, &record, on_ready);
    let exit = match &ended {
        Ok(stop) => Exit::Stopped { stop: stop.clone() },
        Err(ProcessError::Incoming(not)) if !not.committed => Exit::NotReceived {
            code: not.code.clone(),
            detail: not.detail.clone(),
        },
        Err(error) => Exit::Failed { detail: chain(error) },
    };
    let _ = record.update(|r| r.exit = Some(exit));
    ended
}

fn run_vm(
    options: VmmOptions,
    record: &Arc<RecordFile>,
    on_ready: impl FnOnce(&Ready),
) -> Result<StopReason, ProcessError> {
    // The VMM's own threads (this loop, control, migration) inherit a higher
    // priority than the guest's vCPU threads, which reset theirs; a
    // migration's pre-copy threads go below them (`migration::cpu`).
    crate::migration::cpu::set_thread_nice(crate::migration::cpu::VMM_NICE);
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
        record: Arc::clone(record),
        migration: None,
        last_migration: None,
        in_doubt: None,
        incoming: None,
        stopping: false,
    };
    let mut ready = Ready { incoming: None };
    match options.launch {
        Launch::New { machine, start } => {
            let mut vm = Vm::create(machine, sink, super::event::stops(&events), start, &options.bridges)?;
            record_console_start(record, &vm).map_err(ProcessError::Record)?;
            vm.resume()?;
            vmm.vm = Some(vm);
        }
        Launch::Incoming {
            url,
            token,
            migration,
            timeouts,
            allowed_disks,
            hide_cpu,
            tls,
        } => {
            let migration_listener = transport::listen(&url)?;
            ready.incoming = migration_listener.local_addr().ok();
            if let Some(addr) = ready.incoming {
                record
                    .update(|r| r.listening = Some(format!("tcp:{addr}")))
                    .map_err(ProcessError::Record)?;
            }
            let receiving = incoming::start(
                migration_listener,
                incoming::Expect {
                    token,
                    migration,
                    allowed_disks,
                    hide_cpu,
                    bridges: options.bridges.clone(),
                    tls,
                },
                timeouts,
                sink,
                &events,
                record,
            )
            .map_err(ProcessError::Thread)?;
            vmm.incoming = Some(receiving);
        }
    }
    let answering = listener.map(|listener| control::serve(listener, events));
    on_ready(&ready);

    let ended = loop {
        let Ok(event) = inbox.recv() else {
            break Ok(StopReason::Requested);
        };
        if let Some(end) = vmm.react(event) {
            break end;
        }
    };
    // Closing the inbox and dropping the VMM end pending requests (and turn
    // new ones away at once); answers already given (a migration's report,
    // a shutdown's ok) reach their askers before the process goes away.
    drop(inbox);
    drop(vmm);
    if let Some(answering) = &answering {
        answering.wait_delivered(std::time::Duration::from_secs(2));
    }
    remove_own_socket(options.control.as_deref(), own_socket);
    ended
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

/// The VMM process's state, owned by its main loop.
struct Vmm {
    vm: Option<Vm>,
    name: String,
    control_path: Option<PathBuf>,
    events: Sender<VmmEvent>,
    record: Arc<RecordFile>,
    migration: Option<Outgoing>,
    last_migration: Option<MigrationEnd>,
    in_doubt: Option<String>,
    incoming: Option<Receiving>,
    /// A stop was asked while a migration or a commit was under way: the VM
    /// stops once that is settled.
    stopping: bool,
}

type End = Result<StopReason, ProcessError>;

impl Vmm {
    /// Handles one event; returns how the process ends when it does.
    fn react(&mut self, event: VmmEvent) -> Option<End> {
        match event {
            VmmEvent::Stopped(reason) => {
                if let Some(vm) = &mut self.vm {
                    vm.mark_stopped();
                }
                Some(Ok(reason))
            }
            VmmEvent::Signal(_) => self.stop_requested(),
            VmmEvent::Received(Ok(vm)) => {
                // After the resume, off the guest's pause: a reader of the
                // console waits for this to place the file's bytes.
                let _ = record_console_start(&self.record, &vm);
                self.vm = Some(vm);
                self.stopping.then(|| self.stop_now())
            }
            VmmEvent::Received(Err(not)) => Some(Err(ProcessError::Incoming(not))),
            VmmEvent::Control(Request::Shutdown, reply) => {
                let _ = reply.send(Response::Ok(Reply::Done));
                self.stop_requested()
            }
            VmmEvent::Control(request, reply) => {
                self.handle(request, &reply);
                None
            }
            VmmEvent::Source(request, reply) => {
                let _ = reply.send(outgoing::handle_source(self.vm.as_mut(), request));
                None
            }
            VmmEvent::MigrationEnded(result) => self.migration_ended(result),
        }
    }

    /// A signal or a `shutdown`: stop now, or once what is under way is settled.
    fn stop_requested(&mut self) -> Option<End> {
        if self.stopping {
            return Some(self.stop_now());
        }
        if let Some(migration) = &self.migration {
            // Before the switchover this cancels it; after, the outcome decides.
            migration.cancel.request();
            self.stopping = true;
            return None;
        }
        if self.vm.is_none()
            && let Some(incoming) = &self.incoming
        {
            if incoming.gate.terminate() {
                return Some(Err(ProcessError::Incoming(NotReceived {
                    code: "terminating".into(),
                    detail: "stopped on request before the VM arrived".into(),
                    committed: false,
                })));
            }
            // Committed: the VM is coming; it is stopped once it is here.
            self.stopping = true;
            return None;
        }
        Some(self.stop_now())
    }

    fn stop_now(&mut self) -> End {
        if let Some(vm) = &mut self.vm {
            let _ = vm.pause();
        }
        Ok(StopReason::Requested)
    }

    fn handle(&mut self, request: Request, reply: &Sender<Response>) {
        let response = match request {
            Request::Migrate { url, options, tls } => match self.start_migration(url, &options, tls, reply.clone()) {
                Ok(()) => return,
                Err(failure) => Response::Error(failure),
            },
            Request::AwaitMigration => match &self.migration {
                Some(migration) => {
                    migration.watch(reply.clone());
                    return;
                }
                None => Response::Error(Failure::new("none", "no migration is running")),
            },
            Request::CancelMigration => match &self.migration {
                Some(migration) if migration.cancel.request() => Response::Ok(Reply::Done),
                Some(_) => Response::Error(Failure::new(
                    "too_late",
                    "the switchover has begun: the migration ends as its handoff decides",
                )),
                None => Response::Error(Failure::new("none", "no migration is running")),
            },
            request => match self.answer(request) {
                Ok(answer) => Response::Ok(answer),
                Err(failure) => Response::Error(failure),
            },
        };
        let _ = reply.send(response);
    }

    fn status(&self) -> VmStatus {
        VmStatus {
            state: self.vm.as_ref().map(Vm::state),
            migrating_to: self.migration.as_ref().map(|m| m.url.clone()),
            migration: self.migration.as_ref().and_then(|m| m.id.clone()),
            in_doubt: self.in_doubt.clone(),
            pid: std::process::id(),
            vcpus: self.vm.as_ref().map_or(0, |vm| vm.machine().vcpus),
            memory_bytes: self.vm.as_ref().map_or(0, |vm| vm.machine().memory_bytes),
            incoming: self.incoming.as_ref().map(|i| IncomingStatus {
                migration: i.migration.clone(),
                phase: i.gate.phase(),
            }),
            last_migration: self.last_migration.clone(),
            handoff: self.record.handoff(),
        }
    }

    fn answer(&mut self, request: Request) -> Result<Reply, Failure> {
        let wrong_state = |message: String| Failure::new("wrong_state", message);
        let migrating = self.migration.is_some();
        match request {
            Request::Status => return Ok(Reply::Status(self.status())),
            Request::Pause
            | Request::Resume
            | Request::Save { .. }
            | Request::WriteMemory { .. }
            | Request::ChangeMedium { .. }
            | Request::SampleDirty { .. }
                if migrating =>
            {
                return Err(wrong_state(
                    "refused: a migration is in progress (cancel it first)".into(),
                ));
            }
            // Input taken now could stay behind in the FIFO of a copy that
            // has paused for the last time: it waits for the outcome.
            Request::ConsoleInput { .. } if migrating => {
                return Err(Failure::new(
                    "busy",
                    "refused: the VM is migrating; its console takes input again where it runs next",
                ));
            }
            _ => {}
        }
        let Some(vm) = self.vm.as_mut() else {
            return Err(wrong_state("no VM here yet: waiting for an incoming migration".into()));
        };
        let failed = |e: &dyn std::error::Error| Failure::new("failed", chain(e));
        match request {
            Request::Stats => Ok(Reply::Stats(vm.stats())),
            Request::Pause => vm.pause().map(|_| Reply::Done).map_err(|e| failed(&e)),
            Request::Resume => {
                // Resuming an in-doubt source is the operator's decision that
                // the target does not run the VM.
                vm.resume().map_err(|e| failed(&e))?;
                self.in_doubt = None;
                Ok(Reply::Done)
            }
            Request::Save { dir } => snapshot::save(vm, &dir)
                .map(Reply::Saved)
                .map_err(|e: SnapshotError| failed(&e)),
            Request::ReadMemory { gpa, len } => {
                if len > MAX_MEMORY_READ {
                    return Err(Failure::new(
                        "invalid",
                        format!("at most {MAX_MEMORY_READ} bytes can be read at once"),
                    ));
                }
                let mut bytes = vec![0u8; len as usize];
                vm.memory()
                    .read_slice(&mut bytes, GuestAddress(gpa))
                    .map(|()| Reply::Memory {
                        hex: crate::hex::encode(&bytes),
                    })
                    .map_err(|_| Failure::new("invalid", format!("{len} bytes at {gpa:#x} are not all guest memory")))
            }
            Request::WriteMemory { gpa, hex } => {
                if vm.state() != RunState::Paused {
                    return Err(wrong_state(format!(
                        "the VM is {}; pause it before writing its memory",
                        vm.state()
                    )));
                }
                let bytes = crate::hex::decode(&hex)
                    .ok_or_else(|| Failure::new("invalid", "hex must be an even number of hex digits"))?;
                vm.memory()
                    .write_slice(&bytes, GuestAddress(gpa))
                    .map(|()| Reply::Done)
                    .map_err(|_| {
                        Failure::new(
                            "invalid",
                            format!("{} bytes at {gpa:#x} are not all guest memory", bytes.len()),
                        )
                    })
            }
            Request::SampleDirty { window_ms } => {
                if window_ms == 0 || window_ms > control::MAX_SAMPLE_MS {
                    return Err(Failure::new(
                        "invalid",
                        format!("the window must be 1 to {} ms", control::MAX_SAMPLE_MS),
                    ));
                }
                if vm.state() != RunState::Running {
                    return Err(wrong_state(format!(
                        "the VM is {}; only a running VM dirties memory",
                        vm.state()
                    )));
                }
                sample_dirty(vm, window_ms)
                    .map(Reply::DirtySample)
                    .map_err(|e| failed(&e))
            }
            Request::ConsoleInput { hex } => {
                let bytes = crate::hex::decode(&hex)
                    .ok_or_else(|| Failure::new("invalid", "hex must be an even number of hex digits"))?;
                vm.console_input(&bytes)
                    .map(|accepted| Reply::ConsoleInput { accepted })
                    .map_err(|e| wrong_state(chain(&e)))
            }
            Request::ChangeMedium { slot, medium } => vm
                .change_medium(slot, medium.as_deref())
                .map(|()| Reply::Done)
                .map_err(|e| match &e {
                    VmError::NotCdrom { .. } => Failure::new("invalid", chain(&e)),
                    VmError::Disk(disk) => Failure::new(disk.code(), chain(&e)),
                    _ => failed(&e),
                }),
            Request::Status
            | Request::CancelMigration
            | Request::AwaitMigration
            | Request::Shutdown
            | Request::Migrate { .. } => Err(Failure::new("failed", "internal: request handled elsewhere")),
        }
    }

    fn start_migration(
        &mut self,
        url: String,
        options: &crate::migration::MigrationOptions,
        tls: Option<Box<crate::migration::tls::TlsPeer>>,
        reply: Sender<Response>,
    ) -> Result<(), Failure> {
        if self.migration.is_some() {
            return Err(Failure::new("busy", "refused: this VM is already migrating"));
        }
        if self.stopping {
            return Err(Failure::new("wrong_state", "refused: the VM is stopping"));
        }
        if let Some(doubt) = &self.in_doubt {
            return Err(Failure::new(
                "wrong_state",
                format!("refused: an earlier migration is in doubt: {doubt}"),
            ));
        }
        let vm = self
            .vm
            .as_ref()
            .ok_or_else(|| Failure::new("wrong_state", "no VM here to migrate"))?;
        let migration = outgoing::start(vm, &self.name, (url, tls), options, reply, &self.events, &self.record)?;
        self.migration = Some(migration);
        Ok(())
    }

    /// Reports a finished migration; the process ends when the VM left, or
    /// when a stop was asked meanwhile.
    fn migration_ended(
        &mut self,
        result: Result<crate::migration::Report, crate::migration::sender::MigrationError>,
    ) -> Option<End> {
        let migration = self.migration.take()?;
        let control = self
            .control_path
            .as_ref()
            .map_or_else(|| "SOCKET".to_string(), |p| p.display().to_string());
        let (ended, end) = outgoing::ended(&migration, result, &control);
        match ended {
            Ended::Migrated => {
                // The target runs the VM: this copy must never run again.
                if let Some(vm) = &mut self.vm {
                    vm.mark_migrated();
                }
                Some(Ok(StopReason::Migrated { target: migration.url }))
            }
            Ended::Stayed { failure, in_doubt } => {
                if in_doubt {
                    self.in_doubt = Some(failure.message);
                }
                self.last_migration = Some(end);
                self.stopping.then(|| self.stop_now())
            }
        }
    }
}

/// Notes in the record at which absolute offset of the VM's console this
/// process's console output begins.
fn record_console_start(record: &RecordFile, vm: &Vm) -> std::io::Result<()> {
    let (start, _) = vm.console_offsets();
    record.update(|r| r.console_start = Some(start))
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

/// SIGINT and SIGTERM become events of the main loop.
fn forward_signals(events: Sender<VmmEvent>) -> Result<(), ProcessError> {
    crate::signals::forward(
        &[crate::signals::Signal::SIGINT, crate::signals::Signal::SIGTERM],
        move |signal| events.send(VmmEvent::Signal(signal)).is_ok(),
    )
    .map_err(ProcessError::Signals)
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

/// Turns dirty logging on for `window_ms`, counts what was written, and
/// turns it off again; no migration may run meanwhile (the caller checks).
fn sample_dirty(vm: &Vm, window_ms: u32) -> Result<control::DirtySample, crate::migration::dirty::DirtyError> {
    use crate::migration::dirty;
    let memory = vm.memory();
    dirty::set_logging(vm.fd(), memory, true)?;
    dirty::reset_vmm_bitmap(memory);
    let sampled = dirty::collect(vm.fd(), memory).and_then(|_| {
        std::thread::sleep(std::time::Duration::from_millis(u64::from(window_ms)));
        dirty::collect(vm.fd(), memory)
    });
    let off = dirty::set_logging(vm.fd(), memory, false);
    let dirty_pages = sampled?.count();
    off?;
    Ok(control::DirtySample {
        window_ms,
        dirty_pages,
        resident_pages: dirty::resident_pages(memory).count(),
    })
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
