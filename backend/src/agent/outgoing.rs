//! Migrations agent to agent: the source's side.
//!
//! A `migrate` request claims the VM (the claim, with the migration's id and
//! target, is written to the VM's record before anything else happens, so it
//! survives the agent) and starts the migration on a thread of its own:
//!
//! 1. **Prepare.** Take a slot of this host's migration budget and have the
//!    target's agent prepare a receiving VMM with a fresh token (in the
//!    order of the hosts' names, so two hosts migrating to each other cannot
//!    each hold one slot and wait for the other). While this host's slot is
//!    still to come after the target prepared, keepalives keep the
//!    receiver waiting. A cancel here leaves at once.
//! 2. **Copy.** The VMM sends the VM; its progress goes to the watchers.
//! 3. **Settle.** The VMM's answer, or, when it has none (it died, the link
//!    to it broke, the handoff is in doubt), what it left and what the
//!    target says, decide where the VM is ([`super::judge`]). A decision
//!    is acted on: the copy that must never run again is ended, both agents
//!    record the end, the journal keeps it. When the target cannot say
//!    within the settle time, the outcome is reported in doubt and the VM
//!    stays unstartable here; the settler ([`super::settle`]) keeps asking.
//!
//! One migration per VM: a second request for a VM that is migrating gets
//! 409 at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::config::Encryption;
use super::journal::Event;
use super::judge::{self, SourceVerdict};
use super::migrations::{self, Cancel, Migration};
use super::vmm::{Departure, Ended, Observed, VmDir};
use super::{Agent, Failure, Vm};
use crate::api::{
    Code, IncomingState, MigrateProgress, MigrateResult, MigrationOutcome, MigrationPhase, Peer, Prepared, Request,
    VmSpec,
};
use crate::client::{Client, ClientError};
use crate::migration::fault::{self, Fault, Hold};
use crate::migration::tls::{ClientSide, TlsPeer};
use crate::migration::{MigrationOptions, Report, Token, gate};
use crate::runtime::control::{ControlClient, ControlError, Failure as VmmFailure, Reply, Request as VmmRequest};
use crate::runtime::process::chain;
use crate::vmm::RunState;

/// How long a call to the target's agent waits for its next line.
const PEER_PATIENCE: Duration = Duration::from_secs(15);
/// How long the source waits for its old VMM to exit once the VM moved.
const EXIT_WAIT: Duration = Duration::from_secs(30);

/// A VM claimed for a migration.
#[derive(Debug, Clone)]
pub(super) struct Claim {
    pub name: String,
    pub dir: VmDir,
    pub spec: VmSpec,
    pub pid: u32,
    pub target: Peer,
}

/// What the copy phase came to.
enum Copied {
    /// It never reached the VMM; the VM was not touched.
    NotStarted {
        code: Code,
        status: u16,
        message: String,
        /// The target may hold a receiving VMM for it.
        prepared: bool,
    },
    /// The VMM moved the VM.
    Moved(Box<Report>),
    /// The VMM says it did not move (and why).
    Stayed(VmmFailure),
    /// The VMM has no answer (the handoff is in doubt, it died, or the link
    /// to it broke): the facts decide.
    Unknown,
}

/// How often a migration waiting for a storage root's budget looks again.
const STORAGE_POLL: Duration = Duration::from_millis(100);

impl Agent {
    fn peer(&self, target: &Peer) -> Client {
        Client::new(&target.name, &target.address, Arc::clone(&self.tls_client))
            .from_address(Some(self.config.api_address.ip()))
            .patience(Some(PEER_PATIENCE))
    }

    /// Starts migration `id` (a fresh one if none) of `name` to `target` on
    /// a thread of its own; its watchers get the progress and the outcome.
    pub fn migrate_out(
        self: &Arc<Self>,
        name: &str,
        target: &Peer,
        mut options: MigrationOptions,
        id: Option<String>,
        run: Option<&str>,
        by: Option<&str>,
    ) -> Result<Arc<Migration>, Failure> {
        if target.name == self.config.name {
            return Err(Failure::new(409, format!("{name} runs on {} already", target.name)));
        }
        // The agents' timeouts, not the client's: both sides must agree.
        options.timeouts = self.config.timeouts;
        options
            .validate()
            .map_err(|e| Failure::new(400, format!("invalid migration options: {e}")))?;
        let id = match id {
            Some(id) if migrations::valid_id(&id) => id,
            Some(id) => {
                return Err(Failure::new(
                    400,
                    format!("{id:?} is not a migration id (1 to 64 letters, digits, '-' and '_')"),
                ));
            }
            None => migrations::new_id(),
        };
        if !self.journal.entries(&id).is_empty() {
            return Err(Failure::new(409, format!("migration id {id} was used already")));
        }
        let migration = self
            .migrations
            .insert(&id, name, &target.name, MigrationPhase::Preparing)
            .ok_or_else(|| Failure::new(409, format!("migration id {id} was used already")))?;
        let claim = match self.claim(name, target, &id) {
            Ok(claim) => claim,
            Err(failure) => {
                self.migrations.remove(&id);
                return Err(failure);
            }
        };
        let _ = self.journal.started(&id, name, &target.name, run, by);
        let span = migration_span(&id, name, run);
        span.in_scope(|| tracing::info!(peer = %target.name, by, "migration taken"));
        let agent = Arc::clone(self);
        let running = Arc::clone(&migration);
        let started = std::thread::Builder::new()
            .name(format!("migrate-{name}"))
            .spawn(move || {
                let _in = span.enter();
                let outcome = agent.depart(&running, &claim, options);
                agent.conclude(&running.id, &claim.name, &claim.target.name, outcome);
            });
        if let Err(e) = started {
            let outcome = MigrationOutcome::failed(500, Code::Failed, format!("cannot start the migration: {e}"));
            self.clear_departure(name, None);
            self.conclude(&id, name, &target.name, outcome);
        }
        Ok(migration)
    }

    /// Marks the VM as leaving (in its record, durably), or says why it
    /// cannot. The mark is taken first, under the lock, so that two claims
    /// cannot both pass; the VMM is asked whether it runs without the lock,
    /// and the mark is dropped again if it does not.
    fn claim(&self, name: &str, target: &Peer, id: &str) -> Result<Claim, Failure> {
        // A VM that arrived a moment ago is confirmed now rather than at the
        // settler's next look.
        let arrival = self.vms().get(name).and_then(|vm| {
            let a = vm.record.arrival.as_ref()?;
            Some((a.id.clone(), a.source.clone(), vm.dir.clone(), vm.record.pid))
        });
        if let Some((arrival, source, dir, pid)) = arrival {
            self.settle_arrival(name, &arrival, &source, &dir, pid);
        }
        let (dir, spec, pid) = {
            let mut vms = self.vms();
            let vm: &mut Vm = vms.get_mut(name).ok_or_else(|| Failure::not_found(name))?;
            if let Some(held) = vm.record.held_by_migration() {
                return Err(Failure::new(409, held));
            }
            let Some(pid) = vm.record.pid else {
                return Err(not_running(name));
            };
            vm.record.departure = Some(Departure {
                id: id.to_string(),
                target: target.clone(),
            });
            vm.dir
                .save(&vm.record)
                .map_err(|e| Failure::new(500, format!("cannot record the migration: {}", chain(&e))))?;
            (vm.dir.clone(), vm.record.spec.clone(), pid)
        };
        let running = dir.status().is_some_and(|s| {
            s.pid == pid && s.state == Some(RunState::Running) && s.in_doubt.is_none() && s.migration.is_none()
        });
        if running {
            self.set_note(name, None);
            Ok(Claim {
                name: name.to_string(),
                dir,
                spec,
                pid,
                target: target.clone(),
            })
        } else {
            self.clear_departure(name, None);
            Err(not_running(name))
        }
    }

    /// Runs a claimed migration to its outcome.
    fn depart(self: &Arc<Self>, migration: &Migration, claim: &Claim, options: MigrationOptions) -> MigrationOutcome {
        let started = Instant::now();
        // A share of each shared storage root's budget first: the slots are
        // locks on the roots themselves, seen by every host that mounts them.
        let storage = match self.storage_slots(migration, claim) {
            Ok(slots) => slots,
            Err(outcome) => return *outcome,
        };
        let (copied, slot, queued_ms) = self.copy(migration, claim, options, started);
        let outcome = match copied {
            Copied::NotStarted {
                code,
                status,
                message,
                prepared,
            } => {
                if prepared {
                    let _ = self.finish(claim, false);
                }
                self.clear_departure(
                    &claim.name,
                    Some(format!("migration to {} failed: {message}", claim.target.name)),
                );
                MigrationOutcome::failed(
                    status,
                    code,
                    format!("{message}; {} keeps running on {}", claim.name, self.config.name),
                )
            }
            Copied::Moved(report) => self.moved(claim, Some(*report), false, queued_ms),
            Copied::Stayed(failure) => self.stayed(claim, Some(&failure)),
            Copied::Unknown => {
                migration.advance(MigrationPhase::Settling);
                self.settle_departure(claim, queued_ms, self.settle_time())
            }
        };
        drop(slot);
        drop(storage);
        outcome
    }

    /// Waits for a migration slot of every shared root the VM's images lie
    /// under (a cancel ends the wait; nothing has started then).
    fn storage_slots(
        &self,
        migration: &Migration,
        claim: &Claim,
    ) -> Result<Vec<super::storage::StorageSlot>, Box<MigrationOutcome>> {
        let mut held = Vec::new();
        for root in super::storage::shared_roots_of(&self.config.storage, &claim.spec) {
            let mut told = false;
            loop {
                match root.try_slot() {
                    Ok(Some(slot)) => {
                        held.push(slot);
                        break;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.clear_departure(&claim.name, None);
                        return Err(Box::new(MigrationOutcome::failed(
                            500,
                            Code::Failed,
                            format!("cannot take a migration slot of storage root {}: {e}", root.name),
                        )));
                    }
                }
                if !told {
                    told = true;
                    migration.progress(MigrateProgress::Queued {
                        host: format!("storage {}", root.name),
                        position: root.slots_in_use(),
                    });
                }
                if migration.cancel_asked() {
                    self.clear_departure(&claim.name, None);
                    return Err(Box::new(MigrationOutcome::failed(
                        500,
                        Code::Cancelled,
                        format!("cancelled while waiting for storage root {}'s budget", root.name),
                    )));
                }
                std::thread::sleep(STORAGE_POLL);
            }
        }
        Ok(held)
    }

    /// How long a migration's thread waits for the facts to decide before
    /// it reports the outcome in doubt: long enough for a receiver to give
    /// up on a silent sender, and for a handoff to time out.
    pub(super) fn settle_time(&self) -> Duration {
        let t = &self.config.timeouts;
        t.stream() + t.handoff() * 2 + Duration::from_secs(10)
    }

    /// Phases 1 and 2: slots, the target's receiver, the VMM's copy.
    fn copy(
        &self,
        migration: &Migration,
        claim: &Claim,
        mut options: MigrationOptions,
        started: Instant,
    ) -> (Copied, Option<super::slots::Slot>, u64) {
        let not_started = |code, status, message: String, prepared| Copied::NotStarted {
            code,
            status,
            message,
            prepared,
        };
        let token = match Token::random() {
            Ok(token) => token,
            Err(e) => {
                return (
                    not_started(Code::Failed, 500, format!("no random token: {e}"), false),
                    None,
                    0,
                );
            }
        };
        let peer = self.peer(&claim.target);
        let cancelled = || not_started(Code::Cancelled, 500, "cancelled".into(), true);
        // Slots in name order; the target's is held by its prepared receiver.
        let mut slot = None;
        if self.config.name < claim.target.name {
            match self.own_slot(migration, None) {
                Some(s) => slot = Some(s),
                None => return (not_started(Code::Cancelled, 500, "cancelled".into(), false), None, 0),
            }
        }
        let request = Request::PrepareIncoming {
            spec: claim.spec.clone(),
            token,
            source: self.config.name.clone(),
            id: migration.id.clone(),
            plaintext: self.config.migration_encryption == Encryption::Off,
        };
        let prepared = peer.call_until::<Prepared>(request, &mut |line| {
            if matches!(line, MigrateProgress::Queued { .. }) {
                migration.progress(line);
            }
            !migration.cancel_asked()
        });
        let prepared = match prepared {
            Ok(prepared) => prepared,
            Err(ClientError::Aborted { .. }) => return (cancelled(), slot, 0),
            Err(e) => {
                let (code, status) = match &e {
                    ClientError::Status { status, code, .. } => (*code, *status),
                    _ => (Code::Unavailable, 503),
                };
                let message = format!("{} could not prepare to receive it: {}", claim.target.name, chain(&e));
                return (not_started(code, status, message, e.answer_lost()), slot, 0);
            }
        };
        // TLS unless both agents opted out (the target decides from the
        // source's word and its own; it never takes plaintext otherwise).
        let tls = (!prepared.plaintext || self.config.migration_encryption != Encryption::Off).then(|| TlsPeer {
            identity: self.config.tls.clone(),
            peer: claim.target.name.clone(),
        });
        if slot.is_none() {
            let keepalive = match tls.as_ref().map(TlsPeer::client).transpose() {
                Ok(keepalive) => keepalive,
                Err(e) => {
                    let message = format!("cannot set up TLS to {}: {}", claim.target.name, chain(&e));
                    return (not_started(Code::Failed, 500, message, true), slot, 0);
                }
            };
            match self.own_slot(migration, Some((&prepared, token, keepalive.as_ref()))) {
                Some(s) => slot = Some(s),
                None if migration.cancel_asked() => return (cancelled(), None, 0),
                None => {
                    let message = format!(
                        "{}'s receiving VMM went away while this host waited for a slot",
                        claim.target.name
                    );
                    return (not_started(Code::Unavailable, 503, message, true), None, 0);
                }
            }
        }
        let queued_ms = started.elapsed().as_millis() as u64;
        migration.progress(MigrateProgress::Prepared {
            target: claim.target.name.clone(),
        });
        fault::hold(Hold::Prepared);
        if !migration.advance(MigrationPhase::Copying) {
            return (cancelled(), slot, queued_ms);
        }
        options.token = token;
        options.migration_id = Some(migration.id.clone());
        let request = VmmRequest::Migrate {
            url: prepared.url.clone(),
            options,
            tls: tls.map(Box::new),
        };
        (self.follow_vmm(migration, claim, &request), slot, queued_ms)
    }

    /// Sends `request` (a migrate, or an await after a restart) to the VM's
    /// VMM and follows it to its answer, forwarding a cancel.
    fn follow_vmm(&self, migration: &Migration, claim: &Claim, request: &VmmRequest) -> Copied {
        let Ok(mut client) = ControlClient::connect(&claim.dir.control()) else {
            return Copied::Unknown;
        };
        let answer = client.request_with_progress(request, &mut |progress| {
            migration.progress(MigrateProgress::Engine(progress.clone()));
            // A cancel the canceller could not hand over yet (the VMM had not
            // started the migration) is handed over now.
            if migration.cancel() == Cancel::Asked {
                forward_cancel(migration, &claim.dir);
            }
        });
        match answer {
            Ok(Reply::Migrated(report)) => Copied::Moved(report),
            Ok(_) => Copied::Unknown,
            Err(ControlError::Refused(failure)) if failure.code == "in_doubt" => Copied::Unknown,
            Err(ControlError::Refused(failure)) => Copied::Stayed(failure),
            Err(_) => Copied::Unknown,
        }
    }

    /// Waits for this host's migration slot; None when a cancel came or the
    /// target's receiver went away meanwhile (kept waiting by keepalives).
    fn own_slot(
        &self,
        migration: &Migration,
        receiver: Option<(&Prepared, Token, Option<&ClientSide>)>,
    ) -> Option<super::slots::Slot> {
        let me = self.config.name.clone();
        let every = receiver.map(|(p, _, _)| Duration::from_secs(p.accept_s.max(3)) / 3);
        let mut last = Instant::now();
        self.slots.acquire(
            self.config.migration_cost(),
            |position| {
                migration.progress(MigrateProgress::Queued {
                    host: me.clone(),
                    position,
                });
            },
            || {
                if migration.cancel_asked() {
                    return false;
                }
                if let (Some((prepared, token, tls)), Some(every)) = (receiver, every)
                    && last.elapsed() >= every
                {
                    last = Instant::now();
                    return gate::keepalive_from(
                        &prepared.url,
                        Some(self.config.api_address.ip()),
                        tls,
                        token,
                        Duration::from_secs(2),
                    );
                }
                true
            },
        )
    }

    /// Phase 3 without the VMM's word: judge from the facts, asking the
    /// target, until they decide or `patience` runs out (then in doubt).
    pub(super) fn settle_departure(
        self: &Arc<Self>,
        claim: &Claim,
        queued_ms: u64,
        patience: Duration,
    ) -> MigrationOutcome {
        let deadline = Instant::now() + patience;
        let id = self.departure_id(&claim.name).unwrap_or_default();
        loop {
            let verdict = self.judge_departure(claim, &id);
            match verdict {
                SourceVerdict::Pending | SourceVerdict::AskTarget => {
                    // A VMM that still migrates (its connection to us broke,
                    // or we restarted) is followed again.
                    if let Observed::Answers(status) = claim.dir.observe(claim.pid)
                        && status.migration.as_deref() == Some(id.as_str())
                        && let Some(migration) = self.migrations.get(&id)
                    {
                        migration.advance(MigrationPhase::Copying);
                        let copied = self.follow_vmm(&migration, claim, &VmmRequest::AwaitMigration);
                        migration.advance(MigrationPhase::Settling);
                        match copied {
                            Copied::Moved(report) => return self.moved(claim, Some(*report), false, queued_ms),
                            Copied::Stayed(failure) => return self.stayed(claim, Some(&failure)),
                            _ => {}
                        }
                    }
                    if Instant::now() >= deadline {
                        return self.in_doubt(claim, &id);
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                decided => return self.act(claim, decided, queued_ms),
            }
        }
    }

    /// The facts about departure `id`, asking the target when they need it.
    pub(super) fn judge_departure(&self, claim: &Claim, id: &str) -> SourceVerdict {
        let observed = claim.dir.observe(claim.pid);
        match judge::source(id, &observed, None) {
            SourceVerdict::AskTarget | SourceVerdict::Pending if !matches!(&observed, Observed::Answers(s) if s.migration.as_deref() == Some(id)) =>
            {
                let answer = self
                    .peer(&claim.target)
                    .patience(Some(Duration::from_secs(5)))
                    .call::<IncomingState>(Request::IncomingState {
                        name: claim.name.clone(),
                        id: id.to_string(),
                    })
                    .ok();
                judge::source(id, &claim.dir.observe(claim.pid), answer)
            }
            verdict => verdict,
        }
    }

    /// Acts on a decided verdict; returns the outcome.
    pub(super) fn act(self: &Arc<Self>, claim: &Claim, verdict: SourceVerdict, queued_ms: u64) -> MigrationOutcome {
        let (me, vm, target) = (&self.config.name, &claim.name, &claim.target.name);
        match verdict {
            SourceVerdict::Moved { lost_there } => self.moved(claim, None, lost_there, queued_ms),
            SourceVerdict::ResumeHere => {
                let resumed = claim.dir.request(&VmmRequest::Resume);
                let _ = self.finish(claim, false);
                let message = match resumed {
                    Ok(_) => {
                        format!("the handoff's outcome was in doubt; {target} never ran {vm}, so it resumed on {me}")
                    }
                    Err(e) => format!(
                        "the handoff's outcome was in doubt and {target} never ran {vm}, but resuming it on {me} failed: {}",
                        chain(&e)
                    ),
                };
                self.clear_departure(vm, Some(format!("migration to {target} failed: {message}")));
                MigrationOutcome::failed(500, Code::RolledBack, message)
            }
            SourceVerdict::Stayed { end } => self.stayed(claim, end.as_ref().map(|e| &e.failure)),
            SourceVerdict::Frozen { stopped } => {
                let _ = self.finish(claim, false);
                let how = if stopped {
                    "is stopped (SIGSTOP)"
                } else {
                    "does not answer"
                };
                let message = format!(
                    "{vm} did not move: its VMM on {me} {how}, and {target} gave its copy up; \
                     {vm} stays on {me}, not running until its VMM goes on"
                );
                self.clear_departure(vm, Some(message.clone()));
                MigrationOutcome::failed(500, Code::Failed, message)
            }
            SourceVerdict::EndedHere { lost, clean, detail } => {
                let _ = self.finish(claim, false);
                {
                    let mut vms = self.vms();
                    if let Some(vm) = vms.get_mut(vm) {
                        vm.record.pid = None;
                        vm.record.departure = None;
                        // A VM stopped on request is just stopped.
                        vm.record.ended = (!clean).then(|| Ended {
                            lost,
                            detail: detail.clone(),
                        });
                        vm.record.note = clean.then(|| format!("{detail} during the migration to {target}"));
                        vm.save();
                    }
                }
                if lost {
                    MigrationOutcome::failed(
                        500,
                        Code::Lost,
                        format!(
                            "{detail} on {me} during the migration to {target}, which never ran {vm}: {vm} is lost"
                        ),
                    )
                } else {
                    MigrationOutcome::failed(
                        500,
                        Code::Stopped,
                        format!("{vm} did not move: {detail}; it is stopped on {me}"),
                    )
                }
            }
            SourceVerdict::Pending | SourceVerdict::AskTarget => {
                self.in_doubt(claim, &self.departure_id(vm).unwrap_or_default())
            }
        }
    }

    /// The VM is the target's: end what is left here, tell the target, and
    /// forget the VM once its old VMM is gone.
    fn moved(&self, claim: &Claim, report: Option<Report>, mut lost_there: bool, queued_ms: u64) -> MigrationOutcome {
        let id = self.departure_id(&claim.name).unwrap_or_default();
        if fault::injected_in_agent(&self.config.name, Fault::AgentExitBeforeFinish) {
            std::process::exit(70);
        }
        fault::hold(Hold::Finish);
        // A VMM that reported the move ends by itself (and records it); one
        // that did not (in doubt, stopped, cut off) is ended: the target has
        // the VM, and this copy must never run again.
        let gone_by_itself = report.is_some() && wait_gone(claim.pid, EXIT_WAIT);
        if !gone_by_itself {
            match claim.dir.observe(claim.pid) {
                Observed::Answers(_) => {
                    if claim.dir.request(&VmmRequest::Shutdown).is_err() {
                        super::vmm::kill(claim.pid);
                    }
                }
                Observed::Silent { .. } => super::vmm::kill(claim.pid),
                Observed::Gone(_) => {}
            }
        }
        let there = self.finish(claim, true);
        if there == Some(IncomingState::Lost) {
            lost_there = true;
        }
        // The name and its files are freed only once the old VMM has ended,
        // so a VM coming back here cannot meet them.
        wait_gone(claim.pid, EXIT_WAIT);
        if let Some(vm) = self.vms().remove(&claim.name) {
            vm.dir.remove();
        }
        let (vm, target) = (&claim.name, &claim.target.name);
        if lost_there {
            return MigrationOutcome::failed(
                500,
                Code::Lost,
                format!("{vm} moved to {target}, and its VMM there has died since: {vm} is lost on {target}"),
            );
        }
        let note = if there == Some(IncomingState::Stopped) {
            Some(format!("{vm} has been stopped on {target} since it arrived there"))
        } else {
            report
                .is_none()
                .then(|| format!("its VMM here could not report the move; {target} confirmed that it has {vm}"))
        };
        // A pass the guest's share held back measured the share, not the link.
        if let Some(bps) = report.as_ref().and_then(|r| r.full_speed_bps) {
            self.note_throughput(target, bps);
        }
        MigrationOutcome::moved(MigrateResult {
            id,
            vm: vm.clone(),
            source: self.config.name.clone(),
            target: target.clone(),
            queued_ms,
            report,
            probe: None,
            note,
        })
    }

    /// The VMM says the VM did not move (`failure` says why).
    fn stayed(&self, claim: &Claim, failure: Option<&VmmFailure>) -> MigrationOutcome {
        let _ = self.finish(claim, false);
        let (me, vm) = (&self.config.name, &claim.name);
        let code = match failure.map(|f| f.code.as_str()) {
            Some("cancelled") => Code::Cancelled,
            Some("timed_out") => Code::TimedOut,
            Some("refused") => Code::Refused,
            Some("invalid") => Code::Invalid,
            Some("busy" | "wrong_state") => Code::Conflict,
            Some("not_resumed") => Code::Failed,
            _ => Code::RolledBack,
        };
        let status = match code {
            Code::Invalid => 400,
            Code::Conflict => 409,
            _ => 500,
        };
        let why = failure.map_or_else(|| "it did not move".to_string(), |f| f.message.clone());
        // Say where it is as its VMM says now, not as it was.
        let now = match claim.dir.observe(claim.pid) {
            Observed::Answers(s) if s.state == Some(RunState::Running) => format!("{vm} keeps running on {me}"),
            Observed::Answers(s) => format!(
                "{vm} is on {me}, {}",
                s.state.map_or("without a VM".to_string(), |state| state.to_string())
            ),
            Observed::Silent { .. } => format!("{vm} is on {me}, whose VMM does not answer"),
            Observed::Gone(_) => format!("{vm}'s VMM on {me} has ended since"),
        };
        let message = format!("{why}; {now}");
        self.clear_departure(vm, Some(format!("migration to {} failed: {why}", claim.target.name)));
        MigrationOutcome::failed(status, code, message)
    }

    /// The facts could not decide in time: the VM stays unstartable here and
    /// the settler keeps asking.
    fn in_doubt(&self, claim: &Claim, id: &str) -> MigrationOutcome {
        let (me, vm, target) = (&self.config.name, &claim.name, &claim.target.name);
        let here = match claim.dir.observe(claim.pid) {
            Observed::Answers(_) => format!("its copy on {me} stays paused"),
            Observed::Silent { .. } => format!("its VMM on {me} does not answer"),
            Observed::Gone(_) => format!("its VMM on {me} has ended"),
        };
        let message = format!(
            "the outcome of migration {id} is in doubt: {target} could not say whether it runs {vm}, and {here}; \
             {vm} cannot be started on {me} until {target} answers, which the agents keep asking \
             (`vmig vms` shows where {vm} runs once it is settled)"
        );
        self.set_note(vm, Some(message.clone()));
        MigrationOutcome::failed(500, Code::InDoubt, message)
    }

    /// Tells the target how the migration ended; its answer says what became
    /// of the VM there (none when it could not be asked).
    fn finish(&self, claim: &Claim, migrated: bool) -> Option<IncomingState> {
        let id = self.departure_id(&claim.name)?;
        let peer = self.peer(&claim.target);
        if migrated {
            // The end of the console goes with the VM, before the target
            // hears the migration is over.
            self.hand_console_on(&peer, &claim.name, &claim.dir, claim.pid, &id);
        }
        peer.call::<IncomingState>(Request::FinishIncoming {
            name: claim.name.clone(),
            id,
            migrated,
            console: String::new(),
        })
        .ok()
    }

    /// Records the end of migration `id`: in the journal, and for its watchers.
    pub(super) fn conclude(&self, id: &str, vm: &str, target: &str, outcome: MigrationOutcome) {
        let _ = self.journal.append(
            id,
            vm,
            target,
            Event::Ended {
                outcome: Box::new(outcome.clone()),
            },
        );
        let started = self.journal.entries(id).into_iter().find(|e| e.event == Event::Started);
        let (by, run) = started.map_or((None, None), |e| (e.by, e.run));
        let span = migration_span(id, vm, run.as_deref());
        let _in = span.enter();
        let (status, code, message) = (outcome.status, outcome.code, outcome.message.as_deref());
        match code {
            None => tracing::info!(peer = %target, "migration ended: {vm} moved to {target}"),
            Some(code) => tracing::warn!(peer = %target, %code, "migration ended: {}", message.unwrap_or_default()),
        }
        self.audit.record(&super::audit::ended(
            (id, vm, target),
            (by.as_deref(), run.as_deref()),
            (status, code, message),
        ));
        match self.migrations.get(id) {
            Some(migration) => migration.resettle(outcome),
            None => {
                if let Some(migration) = self.migrations.insert(id, vm, target, MigrationPhase::Settling) {
                    migration.end(outcome);
                }
            }
        }
    }

    fn departure_id(&self, name: &str) -> Option<String> {
        self.vms()
            .get(name)
            .and_then(|vm| vm.record.departure.as_ref().map(|d| d.id.clone()))
    }

    /// The migration is over and the VM is here: it may be started again.
    fn clear_departure(&self, name: &str, note: Option<String>) {
        let mut vms = self.vms();
        if let Some(vm) = vms.get_mut(name) {
            vm.record.departure = None;
            if note.is_some() {
                vm.record.note = note;
            }
            vm.save();
        }
    }

    pub(super) fn set_note(&self, name: &str, note: Option<String>) {
        let mut vms = self.vms();
        if let Some(vm) = vms.get_mut(name) {
            vm.record.note = note;
            vm.save();
        }
    }

    /// Cancels the running migration of `name`, unless its switchover has begun.
    pub fn cancel_migration(&self, name: &str) -> Result<crate::api::Cancelled, Failure> {
        let dir = self.view(name)?.dir;
        let migration = self
            .migrations
            .running(name)
            .ok_or_else(|| Failure::new(409, format!("{name} is not migrating")))?;
        let accepted = match migration.ask_cancel() {
            MigrationPhase::Preparing => true,
            MigrationPhase::Copying => forward_cancel(&migration, &dir),
            MigrationPhase::Settling | MigrationPhase::Ended => false,
        };
        migration.progress(MigrateProgress::Cancelling { accepted });
        Ok(crate::api::Cancelled {
            id: migration.id.clone(),
            accepted,
        })
    }
}

/// Tells the VMM to cancel; true when it took the cancel, or has not started
/// the migration yet (then the migration's thread hands it over).
fn forward_cancel(migration: &Migration, dir: &VmDir) -> bool {
    match dir.request(&VmmRequest::CancelMigration) {
        Ok(_) => {
            migration.cancel_answered(true);
            true
        }
        Err(e) if e.code() == Some("too_late") => {
            migration.cancel_answered(false);
            false
        }
        Err(_) => true,
    }
}

/// Waits up to `limit` for process `pid` to end; true when it did.
/// The span a migration's lines are in: its id, VM and run on each.
pub(super) fn migration_span(id: &str, vm: &str, run: Option<&str>) -> tracing::Span {
    tracing::info_span!(parent: None, "migration", migration = %id, vm = %vm, run)
}

fn wait_gone(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while super::vmm::alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

fn not_running(name: &str) -> Failure {
    Failure::new(409, format!("{name} is not running; only a running VM migrates live"))
}
