//! A VMM's outgoing migration: the engine on its own thread, the source VM
//! it drives through the main loop, and everyone waiting for the outcome.

use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex, PoisonError};

use super::control::{Failure, MigrationEnd, Reply, Response};
use super::event::{SourceReply, SourceRequest, VmmEvent};
use super::process::chain;
use super::record::{Handoff, RecordFile, Side};
use crate::migration::protocol::CpuidLeaf;
use crate::migration::sender::{self, Cancel, MigrationError, SourceContext, SourceVm};
use crate::migration::tls::TlsPeer;
use crate::migration::transport;
use crate::migration::{MigrationOptions, Report, VmSideError};
use crate::vmm::{RunState, Vm, VmState};

/// An outgoing migration in progress.
#[derive(Debug)]
pub(super) struct Outgoing {
    pub url: String,
    pub id: Option<String>,
    /// Whoever waits for the outcome: the `migrate` request, and any
    /// `await_migration` (an agent that restarted). Progress goes to each.
    pub watchers: Arc<Mutex<Vec<Sender<Response>>>>,
    pub cancel: Arc<Cancel>,
}

impl Outgoing {
    pub fn watch(&self, reply: Sender<Response>) {
        self.watchers.lock().unwrap_or_else(PoisonError::into_inner).push(reply);
    }

    /// Sends the final response to every watcher.
    pub fn finish(&self, response: &Response) {
        for watcher in self.watchers.lock().unwrap_or_else(PoisonError::into_inner).drain(..) {
            let _ = watcher.send(response.clone());
        }
    }
}

/// Starts migrating `vm` to `url` (over TLS with `tls`) on a thread of its
/// own; its end arrives as [`VmmEvent::MigrationEnded`].
pub(super) fn start(
    vm: &Vm,
    name: &str,
    (url, tls): (String, Option<Box<TlsPeer>>),
    options: &MigrationOptions,
    reply: Sender<Response>,
    events: &Sender<VmmEvent>,
    record: &Arc<RecordFile>,
) -> Result<Outgoing, Failure> {
    if vm.state() != RunState::Running {
        return Err(Failure::new(
            "wrong_state",
            format!("only a running VM migrates live; this one is {}", vm.state()),
        ));
    }
    transport::parse_url(&url).map_err(|e| Failure::new("invalid", chain(&e)))?;
    options.validate().map_err(|e| Failure::new("invalid", e))?;
    let tls = tls
        .map(|tls| tls.client())
        .transpose()
        .map_err(|e| Failure::new("invalid", format!("cannot set up TLS for the streams: {}", chain(&e))))?;
    let cancel = Arc::new(Cancel::default());
    let context = SourceContext {
        vm_name: name.to_string(),
        memory: vm.memory().clone(),
        vm_fd: Arc::clone(vm.fd()),
        machine: vm.machine().clone(),
        cpuid: vm.guest_cpuid().iter().map(CpuidLeaf::from).collect(),
        xsave_size: vm.xsave_size() as u32,
        cancel: Arc::clone(&cancel),
        vcpu_tids: vm.vcpu_tids(),
    };
    let source = ProcessSource {
        events: events.clone(),
        record: Arc::clone(record),
        migration: options.migration_id.clone(),
    };
    let watchers = Arc::new(Mutex::new(vec![reply]));
    let progress_to = Arc::clone(&watchers);
    let events = events.clone();
    let target = url.clone();
    let options = options.clone();
    let id = options.migration_id.clone();
    std::thread::Builder::new()
        .name("migrate-out".into())
        .spawn(move || {
            let result = sender::migrate(&context, &source, &target, &options, tls.as_ref(), &mut |progress| {
                for watcher in progress_to.lock().unwrap_or_else(PoisonError::into_inner).iter() {
                    let _ = watcher.send(Response::Progress(progress.clone()));
                }
            });
            if result.is_ok() {
                // The target runs the VM: what is left here is teardown,
                // which must not take the CPU from the guest's first
                // moments there (on one machine, the same cores).
                crate::migration::cpu::set_process_nice(crate::migration::cpu::TEARDOWN_NICE);
            }
            let _ = events.send(VmmEvent::MigrationEnded(result));
        })
        .map_err(|e| Failure::new("failed", format!("cannot start the migration: {e}")))?;
    Ok(Outgoing {
        url,
        id,
        watchers,
        cancel,
    })
}

/// What a finished migration means for this VMM.
pub(super) enum Ended {
    /// The VM runs on the target now; this copy must never run again.
    Migrated,
    /// It did not move; the failure is what the watchers were told.
    Stayed { failure: Failure, in_doubt: bool },
}

/// Turns the engine's result into the watchers' answer.
pub(super) fn ended(
    migration: &Outgoing,
    result: Result<Report, MigrationError>,
    control: &str,
) -> (Ended, MigrationEnd) {
    match result {
        Ok(report) => {
            migration.finish(&Response::Ok(Reply::Migrated(Box::new(report.clone()))));
            let end = MigrationEnd {
                migration: migration.id.clone(),
                failure: Failure::new("migrated", "the VM runs on the target"),
            };
            (Ended::Migrated, end)
        }
        Err(error) => {
            let mut message = chain(&error);
            let in_doubt = error.is_in_doubt();
            if in_doubt {
                message.push_str(&format!(
                    ". Check the target: if it runs the VM, end this copy with \
                     `vmig vm shutdown --control {control}`; if it does not, resume this one with \
                     `vmig vm resume --control {control}`"
                ));
            }
            let failure = Failure::new(error.code(), message);
            migration.finish(&Response::Error(failure.clone()));
            let end = MigrationEnd {
                migration: migration.id.clone(),
                failure: failure.clone(),
            };
            (Ended::Stayed { failure, in_doubt }, end)
        }
    }
}

/// The migration engine's view of the source VM: requests to the main loop,
/// and the handoff written straight to the VMM's record.
struct ProcessSource {
    events: Sender<VmmEvent>,
    record: Arc<RecordFile>,
    migration: Option<String>,
}

impl ProcessSource {
    fn ask(&self, request: SourceRequest) -> Result<SourceReply, VmSideError> {
        let (reply_to, reply) = channel();
        self.events
            .send(VmmEvent::Source(request, reply_to))
            .map_err(|_| SourceError::Ending)?;
        reply.recv().map_err(|_| SourceError::Ending)?
    }
}

/// Why the main loop could not do what the engine asked of the source VM.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("the VMM is shutting down")]
    Ending,
    #[error("the VM is gone")]
    NoVm,
    #[error("no state was returned")]
    NoState,
    #[error("cannot write the VMM's record")]
    Record(#[source] std::io::Error),
}

impl SourceVm for ProcessSource {
    fn handoff(&self, session: u64) -> Result<(), VmSideError> {
        let handoff = Handoff {
            side: Side::Source,
            migration: self.migration.clone(),
            session,
        };
        Ok(self.record.hand_over(handoff).map_err(SourceError::Record)?)
    }

    fn pause(&self) -> Result<std::time::Instant, VmSideError> {
        match self.ask(SourceRequest::Pause)? {
            SourceReply::Paused(left) => Ok(left),
            _ => Ok(std::time::Instant::now()),
        }
    }

    fn resume(&self) -> Result<(), VmSideError> {
        self.ask(SourceRequest::Resume).map(drop)
    }

    fn hold(&self, duration: std::time::Duration) -> Result<(), VmSideError> {
        self.ask(SourceRequest::Hold(duration)).map(drop)
    }

    fn save_state(&self) -> Result<VmState, VmSideError> {
        match self.ask(SourceRequest::SaveState)? {
            SourceReply::State(state) => Ok(*state),
            _ => Err(SourceError::NoState.into()),
        }
    }

    fn take_frames(&self) -> Result<crate::vmm::devices::virtio::HeldFrames, VmSideError> {
        match self.ask(SourceRequest::TakeFrames)? {
            SourceReply::Frames(frames) => Ok(frames),
            _ => Ok(Vec::new()),
        }
    }
}

/// How long a source that did not hand its VM over waits for a target's
/// VMM that took the drives at Go (and then failed) to let them go.
const DISKS_BACK_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Takes the drives back for a resume after a migration that did not move
/// the VM; a target that took them at Go gives them up as its VMM ends.
fn take_disks_back(vm: &mut Vm) -> Result<(), crate::vmm::VmError> {
    let deadline = std::time::Instant::now() + DISKS_BACK_WITHIN;
    loop {
        match vm.reacquire_disks() {
            Err(crate::vmm::VmError::Disk(crate::vmm::devices::virtio::DiskError::Locked { .. }))
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// The main loop's side of [`ProcessSource`]'s requests.
pub(super) fn handle_source(vm: Option<&mut Vm>, request: SourceRequest) -> Result<SourceReply, VmSideError> {
    let vm = vm.ok_or(SourceError::NoVm)?;
    Ok(match request {
        // A migration's pause: the state is saved next, so the vCPUs
        // take theirs as they stop.
        // Its drives are synced and given up for the target to take at Go.
        SourceRequest::Pause => {
            let left = vm.pause_capturing()?;
            vm.release_disks().map(|()| SourceReply::Paused(left))?
        }
        SourceRequest::Resume => {
            take_disks_back(vm)?;
            vm.resume()?;
            // The target may have told the network the VM was there: say
            // otherwise (what the cards held meanwhile is delivered first).
            vm.announce(crate::vmm::AnnounceOptions::default());
            SourceReply::Done
        }
        SourceRequest::TakeFrames => SourceReply::Frames(vm.take_held_frames()),
        SourceRequest::SaveState => vm.save_state().map(|state| SourceReply::State(Box::new(state)))?,
        SourceRequest::Hold(duration) => vm.hold(duration).map(|()| SourceReply::Done)?,
    })
}
