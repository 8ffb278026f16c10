//! Migrations agent to agent: the target's side.
//!
//! The source's agent asks for a receiving VMM (`prepare_incoming`): the
//! name is reserved in a record that says which migration is arriving, the
//! journal notes it, a slot of this host's budget is taken (waiting in line
//! while the source still wants it), and a VMM is started that waits for the
//! sender with the migration's token. From then on the VMM's status and
//! record say what became of the VM here ([`super::judge::arrival`]): the
//! settler confirms an arrival once its VMM committed, and forgets a
//! receiver that ended without; `finish_incoming` (the source's word) and
//! `incoming_state` (the source's question) read the same facts. Once the
//! VM's record is gone, the journal answers for it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::config::Encryption;
use super::journal::Event;
use super::judge;
use super::vmm::{Arrival, Ended, Observed, Record, VmDir};
use super::{Agent, Failure, Vm};
use crate::api::{IncomingState, MigrateProgress, MigrationPhase, Prepared, VmSpec};
use crate::migration::Token;
use crate::migration::tls::TlsPeer;
use crate::runtime::process::chain;

/// What the source's agent asks of this host in `prepare_incoming`.
#[derive(Debug, Clone, Copy)]
pub struct Offer<'a> {
    /// What its sender must prove it holds.
    pub token: Token,
    /// The source host: the only one whose streams the receiver takes.
    pub source: &'a str,
    pub id: &'a str,
    /// The source allows plaintext streams.
    pub plaintext: bool,
}

/// How often a waiting `prepare_incoming` tells its caller it still waits.
const WAITING_EVERY: Duration = Duration::from_secs(1);

impl Agent {
    /// A receiving VMM for `spec`, holding a slot of this host's budget until
    /// it has the VM or ends. `still_wanted` says whether the source's agent
    /// still waits for the answer.
    pub fn prepare_incoming(
        self: &Arc<Self>,
        spec: &VmSpec,
        offer: &Offer<'_>,
        progress: &mut dyn FnMut(MigrateProgress),
        still_wanted: &dyn Fn() -> bool,
    ) -> Result<Prepared, Failure> {
        let Offer {
            token,
            source,
            id,
            plaintext,
        } = *offer;
        // Plaintext only when both agents opted out of encryption.
        let plaintext = plaintext && self.config.migration_encryption == Encryption::Off;
        let tls = (!plaintext).then(|| TlsPeer {
            identity: self.config.tls.clone(),
            peer: source.to_string(),
        });
        spec.validate()
            .map_err(|e| Failure::new(400, format!("invalid VM spec: {e}")))?;
        if !super::migrations::valid_id(id) {
            return Err(Failure::new(400, format!("{id:?} is not a migration id")));
        }
        self.open_for_new_vms(&spec.name)?;
        // This host's own look at the VM's images, whatever the source says.
        let allowed_disks = super::storage::allowed_for_arrival(&self.config.storage, spec)
            .map_err(|e| Failure::new(409, format!("{} cannot take {}: {e}", self.config.name, spec.name)))?;
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
            let mut record = Record::new(spec.clone());
            record.arrival = Some(Arrival {
                id: id.to_string(),
                source: source.to_string(),
            });
            record.note = Some(format!("arriving from {source}"));
            dir.save(&record).map_err(|e| Failure::new(500, chain(&e)))?;
            vms.insert(name.clone(), Vm::new(dir.clone(), record));
        }
        let _ = self.journal.append(id, &name, source, Event::Prepared);
        let span = tracing::info_span!(parent: None, "migration", migration = %id, vm = %name, %source);
        let _in = span.enter();
        tracing::info!(plaintext, "arrival prepared");
        let host = self.config.name.clone();
        // Both the queue's reports and the keepalives go to the caller.
        let progress = std::cell::RefCell::new(progress);
        let mut last = Instant::now();
        let slot = self.slots.acquire(
            self.config.migration_cost(),
            |position| {
                (progress.borrow_mut())(MigrateProgress::Queued {
                    host: host.clone(),
                    position,
                });
            },
            || {
                if last.elapsed() >= WAITING_EVERY {
                    last = Instant::now();
                    (progress.borrow_mut())(MigrateProgress::Waiting {
                        phase: MigrationPhase::Preparing,
                    });
                }
                still_wanted()
            },
        );
        let Some(slot) = slot else {
            self.forget_arrival(&name, id, source);
            return Err(Failure::new(503, format!("{source} stopped waiting for {host}")));
        };
        let spawned = dir.spawn_incoming(
            &self.exe,
            super::vmm::Arriving {
                name: &name,
                ip: self.config.migration_ip(),
                token,
                migration: id,
                timeouts: &self.config.timeouts,
                allowed_disks,
                hide_cpu: self.config.cpu.hide.clone(),
                bridges: &self.config.bridges,
                tls,
            },
        );
        match spawned {
            Ok((child, url)) => {
                {
                    let mut vms = self.vms();
                    if let Some(vm) = vms.get_mut(&name) {
                        vm.record.pid = Some(child.id());
                        vm.incoming_slot = Some(slot);
                        vm.save();
                    }
                }
                self.reap(child, &name);
                Ok(Prepared {
                    url,
                    accept_s: self.config.timeouts.accept_s,
                    plaintext,
                })
            }
            Err(e) => {
                self.forget_arrival(&name, id, source);
                Err(Failure::new(
                    500,
                    format!("cannot prepare a receiving VMM: {}", chain(&e)),
                ))
            }
        }
    }

    /// An arrival that never got its VM: journaled first, then forgotten.
    fn forget_arrival(&self, name: &str, id: &str, source: &str) {
        tracing::info!(migration = %id, vm = %name, %source, "arrival discarded");
        let _ = self.journal.append(id, name, source, Event::Discarded);
        let mut vms = self.vms();
        if vms
            .get(name)
            .is_some_and(|vm| vm.record.arrival.as_ref().is_some_and(|a| a.id == id))
            && let Some(vm) = vms.remove(name)
        {
            vm.dir.remove();
        }
    }

    /// What became of arrival `id` of `name`, from the VM's record and its
    /// VMM, or the journal once the record is gone.
    pub fn incoming_state(&self, name: &str, id: &str) -> IncomingState {
        let pending = self.vms().get(name).and_then(|vm| {
            let arrival = vm.record.arrival.as_ref().filter(|a| a.id == id)?;
            Some((vm.dir.clone(), vm.record.pid, arrival.source.clone()))
        });
        match pending {
            // Reserved, its VMM not started yet: it cannot have committed.
            Some((_, None, _)) => IncomingState::Undecided,
            Some((dir, Some(pid), _)) => judge::arrival(id, &dir.observe(pid)),
            None => self.journaled_arrival(id),
        }
    }

    /// The journal's word on arrival `id`: it arrived (where the VM is now
    /// is the VM's record's to say), it was lost here, or it never came.
    fn journaled_arrival(&self, id: &str) -> IncomingState {
        let entries = self.journal.entries(id);
        let arrived = |event: &Event| matches!(event, Event::Arrived);
        if entries.iter().any(|e| arrived(&e.event)) {
            IncomingState::Running
        } else if entries.iter().any(|e| e.event == Event::ArrivedLost) {
            IncomingState::Lost
        } else {
            // Discarded, or never prepared here: no VMM here has it or can.
            IncomingState::Gone
        }
    }

    /// The source reports the migration's end; answers what became of the VM here.
    pub fn finish_incoming(&self, name: &str, id: &str, migrated: bool) -> IncomingState {
        let pending = self.vms().get(name).and_then(|vm| {
            let arrival = vm.record.arrival.as_ref().filter(|a| a.id == id)?;
            Some((vm.dir.clone(), vm.record.pid, arrival.source.clone()))
        });
        let Some((dir, pid, source)) = pending else {
            return self.journaled_arrival(id);
        };
        let observed = pid.map_or(Observed::Gone(None), |pid| dir.observe(pid));
        let state = judge::arrival(id, &observed);
        if migrated {
            // The source holds the receiving VMM's `Running`: that VMM has
            // committed to run the VM, even if its main loop has not taken the
            // VM over yet and its status still says it receives.
            return match state {
                IncomingState::Lost | IncomingState::Gone => {
                    self.arrival_lost(name, id, &source);
                    IncomingState::Lost
                }
                IncomingState::Stopped => {
                    self.arrival_stopped(name, id, &source, &dir, pid);
                    IncomingState::Stopped
                }
                IncomingState::Running | IncomingState::Undecided => {
                    self.confirm_arrival(name, id, &source);
                    IncomingState::Running
                }
            };
        }
        match state {
            // It runs here all the same: keep it, never destroy what may be
            // the only copy.
            IncomingState::Running => {
                self.confirm_arrival(name, id, &source);
                self.set_note(name, Some("arrived although the source reported a failure".into()));
                IncomingState::Running
            }
            IncomingState::Lost => {
                self.arrival_lost(name, id, &source);
                IncomingState::Lost
            }
            IncomingState::Stopped => {
                self.arrival_stopped(name, id, &source, &dir, pid);
                IncomingState::Stopped
            }
            // The source never sent Go (it says the VM stays there), so this
            // receiver cannot commit: end it.
            IncomingState::Undecided | IncomingState::Gone => {
                if let Some(pid) = pid {
                    super::vmm::kill(pid);
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while super::vmm::alive(pid) && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                self.forget_arrival(name, id, &source);
                IncomingState::Gone
            }
        }
    }

    /// Ends arrival `id` of `name`: journals `event`, frees the budget's
    /// share it held, and changes the VM's record with `change`.
    fn end_arrival(&self, name: &str, id: &str, source: &str, event: Event, change: impl FnOnce(&mut Record)) {
        let mut vms = self.vms();
        let Some(vm) = vms
            .get_mut(name)
            .filter(|vm| vm.record.arrival.as_ref().is_some_and(|a| a.id == id))
        else {
            return;
        };
        tracing::info!(migration = %id, vm = %name, %source, event = ?event, "arrival ended");
        let _ = self.journal.append(id, name, source, event);
        vm.record.arrival = None;
        vm.record.note = None;
        vm.incoming_slot = None;
        change(&mut vm.record);
        vm.save();
    }

    /// An arrival becomes this host's VM.
    pub(super) fn confirm_arrival(&self, name: &str, id: &str, source: &str) {
        self.end_arrival(name, id, source, Event::Arrived, |_| {});
    }

    /// The VM arrived and its VMM died since: it is lost here.
    pub(super) fn arrival_lost(&self, name: &str, id: &str, source: &str) {
        self.end_arrival(name, id, source, Event::ArrivedLost, |record| {
            record.pid = None;
            record.ended = Some(Ended {
                lost: true,
                detail: format!("its VMM died after it took the VM from {source}"),
            });
        });
    }

    /// The VM arrived and was stopped here since: it is this host's, stopped.
    fn arrival_stopped(&self, name: &str, id: &str, source: &str, dir: &VmDir, pid: Option<u32>) {
        let left = pid.and_then(|pid| dir.vmm_record_of(pid));
        self.end_arrival(name, id, source, Event::Arrived, |record| {
            record.pid = None;
            record.ended = super::ended_of(left.as_ref());
        });
    }

    /// Settles an arrival from its VMM's facts (the settler, every second).
    pub(super) fn settle_arrival(&self, name: &str, id: &str, source: &str, dir: &VmDir, pid: Option<u32>) {
        let Some(pid) = pid else {
            return;
        };
        match judge::arrival(id, &dir.observe(pid)) {
            IncomingState::Running => {
                // Confirmed once the VMM runs the VM (or holds it, committed):
                // a VMM that still receives is left to the source's agent.
                if let Observed::Answers(status) = dir.observe(pid)
                    && status.state.is_none()
                {
                    return;
                }
                self.confirm_arrival(name, id, source);
            }
            IncomingState::Lost => self.arrival_lost(name, id, source),
            IncomingState::Stopped => self.arrival_stopped(name, id, source, dir, Some(pid)),
            IncomingState::Gone => {
                // Ended without a commit, or gave up: nothing runs here.
                if !super::vmm::alive(pid) {
                    self.forget_arrival(name, id, source);
                }
            }
            IncomingState::Undecided => {}
        }
    }

    /// `migration` for a migration this host is the target of.
    pub(super) fn arrival_info(&self, id: &str) -> Option<crate::api::MigrationInfo> {
        let entries = self.journal.entries(id);
        let first = entries.iter().find(|e| e.event == Event::Prepared)?;
        Some(crate::api::MigrationInfo {
            id: id.to_string(),
            vm: first.vm.clone(),
            side: crate::api::MigrationSide::Target,
            peer: first.peer.clone(),
            phase: None::<MigrationPhase>,
            outcome: None,
            arrival: Some(self.incoming_state(&first.vm, id)),
        })
    }
}
