//! Migrations agent to agent.
//!
//! The source agent (asked by an operator) takes a slot of its host's
//! migration budget and the target's (in the order of the hosts' names, so
//! two hosts migrating to each other cannot each hold one slot and wait for
//! the other), has the target agent prepare a receiving VMM with a fresh
//! token, and tells its VMM to send. The engine's handoff decides where the
//! VM runs; the agents then confirm it on both sides (`finish_incoming`).
//! When the engine reports the outcome in doubt, the source agent asks the
//! target agent whether its VMM runs the VM — the second path that resolves
//! it — and ends or resumes the paused source accordingly.
//!
//! One migration per VM: a second request for a VM that is migrating gets
//! 409 at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::vmm::{Record, VmDir};
use super::{Agent, Failure, Vm};
use crate::api::{IncomingState, MigrateProgress, MigrateResult, Peer, Prepared, Request, VmSpec};
use crate::client::{Client, ClientError};
use crate::migration::fault::{self, Fault};
use crate::migration::{GO_TIMEOUT, MigrationOptions, Token};
use crate::vmm::control::{ControlClient, ControlError, Reply, Request as VmmRequest};
use crate::vmm::process::chain;

/// How long the source waits for the target to decide an in-doubt handoff:
/// the receiver gives up on a missing Go after GO_TIMEOUT.
/// How much console output follows a VM to its new host.
const CONSOLE_HISTORY: u64 = 1 << 20;

const DECIDE_TIMEOUT: Duration = Duration::from_secs(GO_TIMEOUT.as_secs() + 20);

impl Agent {
    fn peer(&self, target: &Peer) -> Client {
        Client::new(&target.name, &target.address, Arc::clone(&self.tls_client))
    }

    /// Moves `name` to `target`; progress goes to `progress` as it happens.
    pub fn migrate_out(
        self: &Arc<Self>,
        name: &str,
        target: &Peer,
        mut options: MigrationOptions,
        progress: &mut dyn FnMut(MigrateProgress),
    ) -> Result<MigrateResult, Failure> {
        if target.name == self.config.name {
            return Err(Failure::new(409, format!("{name} runs on {} already", target.name)));
        }
        let (dir, spec, pid) = self.claim(name, &target.name)?;
        let started = Instant::now();
        let result = self.run_migration(&dir, &spec, target, &mut options, started, progress);
        let mut vms = self.vms();
        match &result {
            Ok(_) => {
                // The source VMM ends itself after the target confirmed; the
                // name and its files are freed only once it has, so a VM
                // coming back here cannot meet the old VMM's files.
                drop(vms);
                let deadline = Instant::now() + Duration::from_secs(30);
                while super::vmm::alive(pid) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if let Some(vm) = self.vms().remove(name) {
                    vm.dir.remove();
                }
                return result;
            }
            Err(failure) => {
                if let Some(vm) = vms.get_mut(name) {
                    vm.migrating_to = None;
                    vm.record.note = Some(format!("migration to {} failed: {}", target.name, failure.message));
                    let _ = vm.dir.save(&vm.record);
                }
            }
        }
        result
    }

    /// Marks the VM as leaving, or says why it cannot. The mark is taken
    /// first, under the lock, so that two claims cannot both pass; the VMM is
    /// asked whether it runs without the lock, and the mark is dropped again
    /// if it does not.
    fn claim(&self, name: &str, target: &str) -> Result<(VmDir, VmSpec, u32), Failure> {
        let (dir, spec, pid) = {
            let mut vms = self.vms();
            let vm: &mut Vm = vms.get_mut(name).ok_or_else(|| Failure::not_found(name))?;
            if let Some(other) = &vm.migrating_to {
                return Err(Failure::new(
                    409,
                    format!("{name} is already migrating to {other}; one migration per VM at a time"),
                ));
            }
            if vm.record.incoming {
                return Err(Failure::new(409, format!("{name} is still arriving on this host")));
            }
            let Some(pid) = vm.record.pid else {
                return Err(not_running(name));
            };
            vm.migrating_to = Some(target.to_string());
            (vm.dir.clone(), vm.record.spec.clone(), pid)
        };
        let running = dir
            .status()
            .is_some_and(|s| s.pid == pid && s.state == Some(crate::vmm::RunState::Running) && s.in_doubt.is_none());
        // The mark is ours: no other claim passes it, and a VM being claimed
        // cannot be stopped or destroyed.
        let mut vms = self.vms();
        let vm = vms.get_mut(name).ok_or_else(|| not_running(name))?;
        if running && vm.record.pid == Some(pid) {
            vm.record.note = None;
            Ok((dir, spec, pid))
        } else {
            vm.migrating_to = None;
            Err(not_running(name))
        }
    }

    fn run_migration(
        self: &Arc<Self>,
        dir: &VmDir,
        spec: &VmSpec,
        target: &Peer,
        options: &mut MigrationOptions,
        started: Instant,
        progress: &mut dyn FnMut(MigrateProgress),
    ) -> Result<MigrateResult, Failure> {
        let peer = self.peer(target);
        let token = Token::random().map_err(|e| Failure::new(500, format!("no random token: {e}")))?;
        let me = self.config.name.clone();
        let cost = self.config.migration_cost();
        // Slots in name order; the target's is held by its prepared receiver.
        let prepare = |progress: &mut dyn FnMut(MigrateProgress)| {
            peer.call_with_progress::<Prepared>(
                Request::PrepareIncoming {
                    spec: spec.clone(),
                    token,
                    source: me.clone(),
                },
                progress,
            )
            .map_err(|e| from_client(&e))
        };
        let (slot, prepared) = if me < target.name {
            let slot = self.slots.acquire(cost, |position| {
                progress(MigrateProgress::Queued {
                    host: me.clone(),
                    position,
                });
            });
            (slot, prepare(progress)?)
        } else {
            let prepared = prepare(progress)?;
            let slot = self.slots.acquire(cost, |position| {
                progress(MigrateProgress::Queued {
                    host: me.clone(),
                    position,
                });
            });
            (slot, prepared)
        };
        let queued_ms = started.elapsed().as_millis() as u64;
        progress(MigrateProgress::Prepared {
            target: target.name.clone(),
        });
        options.token = token;
        let outcome = send(dir, &prepared.url, options, progress);
        let finish = |migrated: bool| {
            peer.call::<serde_json::Value>(Request::FinishIncoming {
                name: spec.name.clone(),
                migrated,
                console: if migrated {
                    dir.console_tail(CONSOLE_HISTORY)
                } else {
                    String::new()
                },
            })
        };
        let result = match outcome {
            Ok(report) => {
                if fault::injected_in_agent(&me, Fault::AgentExitBeforeFinish) {
                    std::process::exit(70);
                }
                let _ = finish(true);
                Ok(MigrateResult {
                    vm: spec.name.clone(),
                    source: me,
                    target: target.name.clone(),
                    queued_ms,
                    report: Some(report),
                    note: None,
                })
            }
            Err(SendError::InDoubt(message)) => self.resolve(dir, spec, &peer, &message).map(|()| {
                let _ = finish(true);
                MigrateResult {
                    vm: spec.name.clone(),
                    source: me,
                    target: target.name.clone(),
                    queued_ms,
                    report: None,
                    note: Some(format!(
                        "the handoff was in doubt; {} confirmed that the VM runs there",
                        target.name
                    )),
                }
            }),
            Err(SendError::Failed(message)) => {
                let _ = finish(false);
                Err(Failure::new(
                    500,
                    format!("{message}; {} keeps running on {me}", spec.name),
                ))
            }
        };
        drop(slot);
        result
    }

    /// Settles an in-doubt handoff by asking the target agent.
    fn resolve(&self, dir: &VmDir, spec: &VmSpec, peer: &Client, doubt: &str) -> Result<(), Failure> {
        let deadline = Instant::now() + DECIDE_TIMEOUT;
        loop {
            let state = peer.call::<IncomingState>(Request::IncomingState {
                name: spec.name.clone(),
            });
            match state {
                Ok(IncomingState::Running) => {
                    // The target runs it: end the paused copy here.
                    let _ = dir.request(&VmmRequest::Shutdown);
                    return Ok(());
                }
                Ok(IncomingState::Gone) => {
                    let resumed = dir.request(&VmmRequest::Resume);
                    let _ = peer.call::<serde_json::Value>(Request::FinishIncoming {
                        name: spec.name.clone(),
                        migrated: false,
                        console: String::new(),
                    });
                    return Err(match resumed {
                        Ok(_) => Failure::new(
                            500,
                            format!(
                                "the handoff failed ({doubt}); {} did not run the VM, so it resumed here",
                                peer.host
                            ),
                        ),
                        Err(e) => Failure::new(
                            500,
                            format!("the handoff failed and resuming here failed: {}", chain(&e)),
                        ),
                    });
                }
                Ok(IncomingState::Undecided) | Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                _ => {
                    return Err(Failure::new(
                        500,
                        format!(
                            "in doubt: {doubt}; {} could not say whether it runs the VM. \
                             {} stays paused here; run `vmig vms` once {} answers",
                            peer.host, spec.name, peer.host
                        ),
                    ));
                }
            }
        }
    }

    /// Target side: a receiving VMM for `spec`, holding a slot of this
    /// host's budget until the source reports the end.
    pub fn prepare_incoming(
        self: &Arc<Self>,
        spec: &VmSpec,
        token: Token,
        source: &str,
        progress: &mut dyn FnMut(MigrateProgress),
    ) -> Result<Prepared, Failure> {
        spec.validate()
            .map_err(|e| Failure::new(400, format!("invalid VM spec: {e}")))?;
        let name = spec.name.clone();
        let dir = VmDir::new(&self.config.state_dir, &name);
        {
            let mut vms = self.vms();
            if vms.contains_key(&name) {
                return Err(Failure::new(
                    409,
                    format!("a VM named {name} exists on {} already", self.config.name),
                ));
            }
            // Reserve the name while the slot and the VMM come.
            let record = Record {
                spec: spec.clone(),
                pid: None,
                incoming: true,
                note: Some(format!("arriving from {source}")),
            };
            dir.save(&record).map_err(|e| Failure::new(500, chain(&e)))?;
            vms.insert(
                name.clone(),
                Vm {
                    dir: dir.clone(),
                    record,
                    migrating_to: None,
                    incoming_slot: None,
                },
            );
        }
        let host = self.config.name.clone();
        let slot = self.slots.acquire(self.config.migration_cost(), |position| {
            progress(MigrateProgress::Queued {
                host: host.clone(),
                position,
            });
        });
        let spawned = dir.spawn_incoming(&self.exe, &name, self.config.migration_ip(), token);
        let mut vms = self.vms();
        match spawned {
            Ok((child, url)) => {
                if let Some(vm) = vms.get_mut(&name) {
                    vm.record.pid = Some(child.id());
                    vm.incoming_slot = Some(slot);
                    let _ = vm.dir.save(&vm.record);
                }
                drop(vms);
                self.reap(child, &name);
                Ok(Prepared { url })
            }
            Err(e) => {
                vms.remove(&name);
                dir.remove();
                Err(Failure::new(
                    500,
                    format!("cannot prepare a receiving VMM: {}", chain(&e)),
                ))
            }
        }
    }

    /// Target side: the source says how the migration ended.
    pub fn finish_incoming(&self, name: &str, migrated: bool, console: &str) -> Result<(), Failure> {
        let (dir, incoming) = {
            let vms = self.vms();
            let vm = vms.get(name).ok_or_else(|| Failure::not_found(name))?;
            (vm.dir.clone(), vm.record.incoming)
        };
        if migrated {
            // The source holds the receiving VMM's `Running`: that VMM has
            // committed to run the VM and it is the only copy, even if its
            // main loop has not taken the VM over yet and a status asked this
            // instant would still say "incoming". Never judge it by that. The
            // agent may have confirmed it already (its VMM ran it): the
            // history is new either way.
            let _ = std::fs::write(dir.history(), console);
            if let Some(vm) = self.vms().get_mut(name).filter(|vm| vm.record.incoming) {
                vm.confirm_arrival();
            }
            return Ok(());
        }
        if !incoming {
            return Ok(());
        }
        // The source says the VM never ran here; check before discarding,
        // without holding the lock while the VMM answers.
        let runs_here = dir.status().is_some_and(|s| s.state.is_some());
        let mut vms = self.vms();
        let Some(vm) = vms.get_mut(name).filter(|vm| vm.record.incoming) else {
            return Ok(());
        };
        vm.incoming_slot = None;
        if runs_here {
            // It runs here all the same: keep it, never destroy a copy that
            // may be the only one.
            vm.record.incoming = false;
            vm.record.note = Some("arrived although the source reported a failure".into());
            let _ = vm.dir.save(&vm.record);
            return Ok(());
        }
        if let Some(pid) = vm.record.pid {
            super::vmm::kill(pid);
        }
        if let Some(vm) = vms.remove(name) {
            vm.dir.remove();
        }
        Ok(())
    }

    /// Target side: whether the receiving VMM runs the VM.
    pub fn incoming_state(&self, name: &str) -> IncomingState {
        let Some((dir, pid)) = self.vms().get(name).map(|vm| (vm.dir.clone(), vm.record.pid)) else {
            return IncomingState::Gone;
        };
        match pid.and_then(|_| dir.status()) {
            Some(status) if status.state.is_some() => IncomingState::Running,
            Some(_) => IncomingState::Undecided,
            None => IncomingState::Gone,
        }
    }
}

fn not_running(name: &str) -> Failure {
    Failure::new(409, format!("{name} is not running; only a running VM migrates live"))
}

enum SendError {
    InDoubt(String),
    Failed(String),
}

/// Has the source VMM send the VM; returns the engine's report.
fn send(
    dir: &VmDir,
    url: &str,
    options: &MigrationOptions,
    progress: &mut dyn FnMut(MigrateProgress),
) -> Result<crate::migration::Report, SendError> {
    let mut client = ControlClient::connect(&dir.control()).map_err(|e| SendError::Failed(chain(&e)))?;
    let request = VmmRequest::Migrate {
        url: url.to_string(),
        options: options.clone(),
    };
    match client.request_with_progress(&request, &mut |p| progress(MigrateProgress::Engine(p.clone()))) {
        Ok(Reply::Migrated(report)) => Ok(report),
        Ok(other) => Err(SendError::Failed(format!("the VMM answered {other:?}"))),
        Err(ControlError::Refused(message)) if message.contains("in doubt") => Err(SendError::InDoubt(message)),
        Err(e) => Err(SendError::Failed(chain(&e))),
    }
}

fn from_client(error: &ClientError) -> Failure {
    match error {
        ClientError::Status { status, message, .. } => Failure::new(*status, message.clone()),
        other => Failure::new(503, chain(other)),
    }
}
