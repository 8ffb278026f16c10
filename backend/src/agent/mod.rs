//! `vmig agent`: the daemon on every hypervisor host.
//!
//! It runs each VM as its own VMM process (see [`vmm`]), answers the API
//! ([`crate::api`]) over mutual TLS, reports the host's facts and drives live
//! migrations agent to agent ([`migrate`]). Its state is the files under its
//! state directory, so a restarted agent adopts the VMMs that kept running.

pub mod config;
pub mod facts;
mod migrate;
mod server;
pub mod slots;
pub mod vmm;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use thiserror::Error;

pub use config::AgentConfig;
pub use server::serve;

use crate::api::{VmDetail, VmInfo, VmSpec, VmState};
use crate::vmm::RunState;
use crate::vmm::control::{Reply, Request as VmmRequest};
use slots::Slots;
use vmm::{Record, VmDir};

#[derive(Debug, Error)]
pub enum AgentError {
    #[error("cannot use the state directory {}", path.display())]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {address}")]
    Listen {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot find this program to run VMMs with")]
    Exe(#[source] std::io::Error),
    #[error(transparent)]
    Tls(#[from] crate::pki::PkiError),
}

/// How often the agent looks for arrivals that run already (see
/// [`Agent::watch_arrivals`]).
const ARRIVALS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a restarted agent waits for a VMM that runs but does not answer
/// to end, before it judges it.
const ADOPT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A request's failure, with the HTTP-like status the API answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub status: u16,
    pub message: String,
}

impl Failure {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn not_found(name: &str) -> Self {
        Self::new(404, format!("no VM named {name} on this host"))
    }
}

/// The agent's view of one VM.
#[derive(Debug)]
struct Vm {
    dir: VmDir,
    record: Record,
    /// Set while a migration takes it elsewhere.
    migrating_to: Option<String>,
    /// Held while it arrives: the target's share of the migration budget.
    incoming_slot: Option<slots::Slot>,
}

impl Vm {
    /// An arrival becomes this host's VM: its share of the budget is freed.
    fn confirm_arrival(&mut self) {
        self.record.incoming = false;
        self.record.note = None;
        self.incoming_slot = None;
        let _ = self.dir.save(&self.record);
    }

    fn view(&self) -> View {
        View {
            dir: self.dir.clone(),
            record: self.record.clone(),
            migrating_to: self.migrating_to.clone(),
        }
    }
}

/// A copy of what the agent knows of a VM, taken under the lock so that its
/// VMM can be asked for its status without the lock: a VMM that hangs must
/// not stall every other request to the agent.
#[derive(Debug)]
struct View {
    dir: VmDir,
    record: Record,
    migrating_to: Option<String>,
}

/// The agent: its config and the VMs it holds.
#[derive(Debug)]
pub struct Agent {
    pub config: AgentConfig,
    exe: PathBuf,
    vms: Mutex<BTreeMap<String, Vm>>,
    slots: Arc<Slots>,
    tls_client: Arc<rustls::ClientConfig>,
}

impl Agent {
    /// Loads the state directory and adopts the VMMs that still run.
    pub fn new(config: AgentConfig) -> Result<Arc<Self>, AgentError> {
        let vms_dir = config.state_dir.join("vms");
        std::fs::create_dir_all(&vms_dir).map_err(|source| AgentError::StateDir {
            path: vms_dir.clone(),
            source,
        })?;
        let exe = std::env::current_exe().map_err(AgentError::Exe)?;
        let tls_client = crate::pki::client_config(&config.tls)?;
        let slots = Slots::new(config.max_migration_cost());
        let mut vms = BTreeMap::new();
        let entries = std::fs::read_dir(&vms_dir).map_err(|source| AgentError::StateDir {
            path: vms_dir.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let dir = VmDir::new(&config.state_dir, &name);
            let Some(mut record) = dir.load() else {
                continue;
            };
            if let Some(pid) = record.pid {
                // Adopt only the VMM that answers with the pid we started and
                // still holds its VM.
                let mut status = dir.status();
                if status.is_none() && vmm::alive(pid) {
                    // Not answering yet alive: it may be ending (a VMM whose VM
                    // left says so in its log as it exits). Judge it once it has.
                    let deadline = std::time::Instant::now() + ADOPT_WAIT;
                    while vmm::alive(pid) && std::time::Instant::now() < deadline {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    status = dir.status();
                }
                let left = status
                    .as_ref()
                    .is_some_and(|s| matches!(s.stop_reason, Some(crate::vmm::event::StopReason::Migrated { .. })))
                    || dir.log_tail().ends_with(crate::vmm::event::MIGRATED_AWAY);
                let adopted = !left && status.is_some_and(|s| s.pid == pid);
                if !adopted {
                    record.pid = None;
                    if record.incoming {
                        // An arrival that was not confirmed is gone with its VMM.
                        dir.remove();
                        continue;
                    }
                    if left {
                        // It left while the agent was down: it runs elsewhere,
                        // and a record here could only start a second copy.
                        eprintln!("vmig agent: {name} was migrated away while the agent was down");
                        dir.remove();
                        continue;
                    }
                    record.note = Some("its VMM ended while the agent was down".into());
                    let _ = dir.save(&record);
                }
            }
            vms.insert(
                name,
                Vm {
                    dir,
                    record,
                    migrating_to: None,
                    incoming_slot: None,
                },
            );
        }
        let agent = Arc::new(Self {
            config,
            exe,
            vms: Mutex::new(vms),
            slots,
            tls_client,
        });
        agent.watch_arrivals();
        Ok(agent)
    }

    /// Confirms, in the background, arrivals whose source's agent never
    /// reported the end (it died, or its host did): once the receiving VMM
    /// runs the VM, it holds the only copy (the engine's handoff), so the
    /// record stops being an arrival and its share of the budget is freed.
    /// Polled: a VMM has no way to call its agent.
    fn watch_arrivals(self: &Arc<Self>) {
        let agent = Arc::downgrade(self);
        let _ = std::thread::Builder::new().name("arrivals".into()).spawn(move || {
            loop {
                std::thread::sleep(ARRIVALS_EVERY);
                let Some(agent) = agent.upgrade() else {
                    return;
                };
                agent.confirm_arrivals();
            }
        });
    }

    fn confirm_arrivals(&self) {
        let arriving: Vec<(String, VmDir, u32)> = self
            .vms()
            .iter()
            .filter(|(_, vm)| vm.record.incoming)
            .filter_map(|(name, vm)| vm.record.pid.map(|pid| (name.clone(), vm.dir.clone(), pid)))
            .collect();
        for (name, dir, pid) in arriving {
            // Asked without the lock; a VMM that has taken the VM over has a state.
            if !dir.status().is_some_and(|s| s.pid == pid && s.state.is_some()) {
                continue;
            }
            let mut vms = self.vms();
            if let Some(vm) = vms
                .get_mut(&name)
                .filter(|vm| vm.record.incoming && vm.record.pid == Some(pid))
            {
                vm.confirm_arrival();
            }
        }
    }

    fn vms(&self) -> MutexGuard<'_, BTreeMap<String, Vm>> {
        self.vms.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The VM as the API shows it; asks its VMM, so never call it under the lock.
    fn info(&self, vm: &View) -> VmInfo {
        let status = vm.record.pid.and_then(|_| vm.dir.status());
        let state = match (&status, vm.record.pid) {
            (_, None) if vm.record.note.as_deref().is_some_and(|n| n.starts_with("failed")) => VmState::Failed,
            (_, None) => VmState::Stopped,
            (None, Some(_)) => VmState::Failed,
            (Some(s), Some(_)) if s.in_doubt.is_some() => VmState::InDoubt,
            (Some(_), Some(_)) if vm.migrating_to.is_some() => VmState::Migrating,
            (Some(s), Some(_)) => match s.state {
                None => VmState::Incoming,
                Some(RunState::Running) => VmState::Running,
                Some(RunState::Paused | RunState::Created) => VmState::Paused,
                Some(RunState::Stopped) => VmState::Failed,
            },
        };
        VmInfo {
            name: vm.record.spec.name.clone(),
            host: self.config.name.clone(),
            state,
            vcpus: vm.record.spec.vcpus,
            memory_bytes: vm.record.spec.memory_bytes(),
            pid: status.map(|s| s.pid),
            migrating_to: vm.migrating_to.clone(),
            note: vm.record.note.clone(),
        }
    }

    /// A copy of one VM's record, taken under the lock.
    fn view(&self, name: &str) -> Result<View, Failure> {
        self.vms()
            .get(name)
            .map(Vm::view)
            .ok_or_else(|| Failure::not_found(name))
    }

    pub fn list(&self) -> Vec<VmInfo> {
        let views: Vec<View> = self.vms().values().map(Vm::view).collect();
        views.iter().map(|vm| self.info(vm)).collect()
    }

    pub fn show(&self, name: &str) -> Result<VmDetail, Failure> {
        let vm = self.view(name)?;
        let stats = vm.record.pid.and_then(|_| match vm.dir.request(&VmmRequest::Stats) {
            Ok(Reply::Stats(stats)) => Some(stats),
            _ => None,
        });
        Ok(VmDetail {
            info: self.info(&vm),
            spec: vm.record.spec.clone(),
            stats,
            console_path: vm.dir.console().display().to_string(),
        })
    }

    pub fn console(&self, name: &str, bytes: u64) -> Result<String, Failure> {
        let vms = self.vms();
        let vm = vms.get(name).ok_or_else(|| Failure::not_found(name))?;
        Ok(vm.dir.console_tail(bytes.min(16 << 20)))
    }

    pub fn create(self: &Arc<Self>, spec: &VmSpec, start: bool) -> Result<VmInfo, Failure> {
        spec.validate()
            .map_err(|e| Failure::new(400, format!("invalid VM spec: {e}")))?;
        {
            let mut vms = self.vms();
            if vms.contains_key(&spec.name) {
                return Err(Failure::new(
                    409,
                    format!("a VM named {} exists on this host already", spec.name),
                ));
            }
            let dir = VmDir::new(&self.config.state_dir, &spec.name);
            let record = Record {
                spec: spec.clone(),
                pid: None,
                incoming: false,
                note: None,
            };
            dir.save(&record)
                .map_err(|e| Failure::new(500, crate::vmm::process::chain(&e)))?;
            vms.insert(
                spec.name.clone(),
                Vm {
                    dir,
                    record,
                    migrating_to: None,
                    incoming_slot: None,
                },
            );
        }
        if start {
            return self.start(&spec.name);
        }
        Ok(self.info(&self.view(&spec.name)?))
    }

    pub fn start(self: &Arc<Self>, name: &str) -> Result<VmInfo, Failure> {
        let (dir, spec) = {
            let vms = self.vms();
            let vm = vms.get(name).ok_or_else(|| Failure::not_found(name))?;
            if vm.record.pid.is_some_and(vmm::alive) {
                return Err(Failure::new(409, format!("{name} is running already")));
            }
            (vm.dir.clone(), vm.record.spec.clone())
        };
        // The VMM is started without holding the lock: a boot takes a while.
        let child = dir
            .spawn_boot(&self.exe, &spec)
            .map_err(|e| Failure::new(500, format!("cannot start {name}: {}", crate::vmm::process::chain(&e))))?;
        let view = {
            let mut vms = self.vms();
            let vm = vms.get_mut(name).ok_or_else(|| Failure::not_found(name))?;
            vm.record.pid = Some(child.id());
            vm.record.note = None;
            let _ = vm.dir.save(&vm.record);
            vm.view()
        };
        self.reap(child, name);
        Ok(self.info(&view))
    }

    /// Waits for a child VMM in the background, so it never lingers as a
    /// zombie, and notes how it ended.
    fn reap(self: &Arc<Self>, mut child: std::process::Child, name: &str) {
        let agent = Arc::downgrade(self);
        let name = name.to_string();
        let _ = std::thread::Builder::new().name(format!("reap-{name}")).spawn(move || {
            let pid = child.id();
            let status = child.wait();
            let Some(agent) = agent.upgrade() else {
                return;
            };
            let mut vms = agent.vms();
            if let Some(vm) = vms.get_mut(&name)
                && vm.record.pid == Some(pid)
            {
                if vm.record.incoming {
                    // A receiver that ended before it was confirmed held no VM.
                    if let Some(vm) = vms.remove(&name) {
                        vm.dir.remove();
                    }
                    return;
                }
                vm.record.pid = None;
                vm.incoming_slot = None;
                let clean = status.as_ref().is_ok_and(std::process::ExitStatus::success);
                if !clean && vm.migrating_to.is_none() {
                    vm.record.note = Some(format!("failed: {}", vm.dir.log_tail()));
                }
                let _ = vm.dir.save(&vm.record);
            }
        });
    }

    pub fn stop(&self, name: &str) -> Result<VmInfo, Failure> {
        let view = {
            // The shutdown is asked under the lock, so that no start of the
            // same VM can slip in while its VMM ends; a VMM that does not
            // answer within the control timeout is killed.
            let mut vms = self.vms();
            let vm = vms.get_mut(name).ok_or_else(|| Failure::not_found(name))?;
            if let Some(target) = &vm.migrating_to {
                return Err(Failure::new(409, format!("{name} is migrating to {target}")));
            }
            if let Some(pid) = vm.record.pid.take() {
                if vm.dir.request(&VmmRequest::Shutdown).is_err() {
                    vmm::kill(pid);
                }
                vm.record.note = None;
                let _ = vm.dir.save(&vm.record);
            }
            vm.view()
        };
        Ok(self.info(&view))
    }

    pub fn destroy(&self, name: &str) -> Result<(), Failure> {
        self.stop(name)?;
        let mut vms = self.vms();
        if let Some(vm) = vms.remove(name) {
            vm.dir.remove();
        }
        Ok(())
    }
}
