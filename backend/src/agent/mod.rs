//! `vmig agent`: the daemon on every hypervisor host.
//!
//! It runs each VM as its own VMM process (see [`vmm`]), answers the API
//! ([`crate::api`]) over mutual TLS, reports the host's facts and drives live
//! migrations agent to agent (`outgoing`, `incoming`). Its state is the
//! files under its state directory (VM records, the VMMs' own records, the
//! [`journal`]), so a restarted agent adopts the VMMs that kept running and
//! settles the migrations that were under way (`settle`). Where a VM is,
//! it decides from structured state only ([`judge`]).

pub mod audit;
mod cdrom;
pub mod config;
mod console;
pub mod cordon;
pub mod facts;
pub mod guard;
mod incoming;
pub mod journal;
pub mod judge;
pub mod migrations;
mod outgoing;
mod server;
mod settle;
pub mod slots;
pub mod storage;
pub mod vmm;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use thiserror::Error;

pub use config::AgentConfig;
pub use server::serve;

use crate::api::{Code, VmDetail, VmInfo, VmSpec, VmState};
use crate::runtime::control::{Reply, Request as VmmRequest};
use crate::runtime::record::{Exit, VmmRecord};
use crate::vmm::RunState;
use journal::Journal;
use migrations::Migrations;
use slots::Slots;
use vmm::{Ended, Observed, Record, VmDir};

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

/// A request's failure: the HTTP-like status and the code the API answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub status: u16,
    pub code: Code,
    pub message: String,
}

impl Failure {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            code: Code::of_status(status),
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
    /// Held while it arrives: the target's share of the migration budget.
    incoming_slot: Option<slots::Slot>,
}

impl Vm {
    fn new(dir: VmDir, record: Record) -> Self {
        Self {
            dir,
            record,
            incoming_slot: None,
        }
    }

    fn save(&self) {
        let _ = self.dir.save(&self.record);
    }

    fn view(&self) -> View {
        View {
            dir: self.dir.clone(),
            record: self.record.clone(),
        }
    }
}

/// A copy of what the agent knows of a VM, taken under the lock so that its
/// VMM can be asked for its status without the lock: a VMM that hangs must
/// not stall every other request to the agent.
#[derive(Debug, Clone)]
struct View {
    dir: VmDir,
    record: Record,
}

/// The agent: its config and the VMs it holds.
#[derive(Debug)]
pub struct Agent {
    pub config: AgentConfig,
    exe: PathBuf,
    vms: Mutex<BTreeMap<String, Vm>>,
    slots: Arc<Slots>,
    tls_client: Arc<rustls::ClientConfig>,
    migrations: Migrations,
    journal: Journal,
    /// The journal of operators' runs that concern this host.
    runs: journal::Runs,
    /// Every request that changed something or was refused.
    audit: audit::Audit,
    /// What the journal held when the agent started.
    pub journal_opened: journal::Opened,
    /// VMs whose departure a settler thread is deciding.
    settling: Mutex<std::collections::BTreeSet<String>>,
    /// The full-pass throughput of the last migration to each host (measured).
    throughput: Mutex<BTreeMap<String, f64>>,
    /// The host's cordon (kept in the state directory).
    cordon: Mutex<Option<crate::api::Cordon>>,
    /// What the API refused, for the facts.
    pub api: Arc<guard::ApiCounters>,
}

impl Agent {
    /// Loads the state directory; VMMs that still run are adopted, and
    /// migrations that were under way are settled in the background.
    pub fn new(config: AgentConfig) -> Result<Arc<Self>, AgentError> {
        // Before anything is touched: an agent with another's certificate
        // does not start.
        crate::pki::check_host_identity(&config.tls, &config.name)?;
        let state_error = |path: &std::path::Path| {
            let path = path.to_path_buf();
            move |source| AgentError::StateDir { path, source }
        };
        let vms_dir = config.state_dir.join("vms");
        let config_state_dir = config.state_dir.clone();
        std::fs::create_dir_all(&vms_dir).map_err(state_error(&vms_dir))?;
        let (journal, journal_opened) =
            Journal::open_with(&config.state_dir, journal::ROTATE_AT).map_err(state_error(&config.state_dir))?;
        let (runs, _) = journal::Runs::open_runs(&config.state_dir).map_err(state_error(&config.state_dir))?;
        let (audit, _) = audit::Audit::open_audit(&config.state_dir).map_err(state_error(&config.state_dir))?;
        let exe = std::env::current_exe().map_err(AgentError::Exe)?;
        let tls_client = crate::pki::client_config(&config.tls)?;
        let slots = Slots::new(config.max_migration_cost());
        let mut vms = BTreeMap::new();
        let entries = std::fs::read_dir(&vms_dir).map_err(state_error(&vms_dir))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let dir = VmDir::new(&config.state_dir, &name);
            // A directory without a record is a reservation that never
            // became a VM (the agent died in between).
            let Some(record) = dir.load() else {
                dir.remove();
                continue;
            };
            vms.insert(name, Vm::new(dir, record));
        }
        let agent = Arc::new(Self {
            config,
            exe,
            vms: Mutex::new(vms),
            slots,
            tls_client,
            migrations: Migrations::default(),
            journal,
            runs,
            audit,
            journal_opened,
            settling: Mutex::new(std::collections::BTreeSet::new()),
            throughput: Mutex::new(BTreeMap::new()),
            cordon: Mutex::new(cordon::load(&config_state_dir)),
            api: Arc::default(),
        });
        // VMMs that ended while the agent was down, and migrations that were
        // under way, are judged by the settler, as every second after.
        agent.settle_all();
        agent.keep_settling();
        Ok(agent)
    }

    fn vms(&self) -> MutexGuard<'_, BTreeMap<String, Vm>> {
        self.vms.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The VM as the API shows it; asks its VMM, so never call it under the lock.
    fn info(&self, vm: &View) -> VmInfo {
        let record = &vm.record;
        let observed = record.pid.map(|pid| (pid, vm.dir.observe(pid)));
        let migrating = record
            .departure
            .as_ref()
            .filter(|d| self.migrations.get(&d.id).is_some_and(|m| m.outcome().is_none()));
        let state = match (&observed, &record.departure) {
            (_, Some(_)) if migrating.is_some() => VmState::Migrating,
            // A departure nobody drives any more waits for the target's word.
            (_, Some(_)) => VmState::InDoubt,
            (None, None) => match &record.ended {
                Some(Ended { lost: true, .. }) => VmState::Lost,
                Some(_) => VmState::Failed,
                None => VmState::Stopped,
            },
            (Some((_, Observed::Silent { .. })), None) => VmState::Unresponsive,
            // Its end is being judged: say what its record says.
            (Some((_, Observed::Gone(left))), None) => match ended_of(left.as_ref()) {
                Some(Ended { lost: true, .. }) => VmState::Lost,
                Some(_) => VmState::Failed,
                None => VmState::Stopped,
            },
            (Some((_, Observed::Answers(s))), None) if s.in_doubt.is_some() => VmState::InDoubt,
            (Some((_, Observed::Answers(s))), None) => match s.state {
                None => VmState::Incoming,
                Some(RunState::Running) => VmState::Running,
                Some(RunState::Paused | RunState::Created) => VmState::Paused,
                Some(RunState::Stopped) => VmState::Failed,
            },
        };
        // An arrival is shown as what its VMM does once it holds the VM (it
        // runs there, whether or not this agent has confirmed it yet).
        let state = match state {
            VmState::Paused | VmState::Unresponsive if record.arrival.is_some() => VmState::Incoming,
            other => other,
        };
        let note = record
            .note
            .clone()
            .or_else(|| record.ended.as_ref().map(|e| e.detail.clone()))
            .or_else(|| match &observed {
                Some((_, Observed::Silent { stopped: true, .. })) => {
                    Some("its VMM process is stopped (SIGSTOP)".into())
                }
                Some((_, Observed::Silent { stopped: false, .. })) => Some("its VMM does not answer".into()),
                _ => None,
            });
        VmInfo {
            name: record.spec.name.clone(),
            host: self.config.name.clone(),
            state,
            vcpus: record.spec.vcpus,
            memory_bytes: record.spec.memory_bytes(),
            pid: record.pid.filter(|_| !matches!(observed, Some((_, Observed::Gone(_))))),
            migrating_to: record.departure.as_ref().map(|d| d.target.name.clone()),
            migration: record.departure.as_ref().map(|d| d.id.clone()),
            note,
            redundancy_group: record.spec.redundancy_group.clone(),
            disks: record.spec.disks.clone(),
            cdrom: record.spec.cdrom.clone(),
            pmu: record.spec.pmu,
            vgpu: record.spec.vgpu.clone(),
            cpu_hide: record.spec.cpu_hide.clone(),
            maintenance: record.spec.maintenance,
            nics: record.spec.nics.clone(),
        }
    }

    /// A copy of one VM's record, taken under the lock.
    fn view(&self, name: &str) -> Result<View, Failure> {
        self.vms()
            .get(name)
            .map(Vm::view)
            .ok_or_else(|| Failure::not_found(name))
    }

    /// Notes the throughput a migration to `target` reached.
    fn note_throughput(&self, target: &str, bps: f64) {
        if bps.is_finite() && bps > 0.0 {
            self.throughput
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(target.to_string(), bps);
        }
    }

    /// The host's facts, with what its migrations measured.
    pub fn facts(&self) -> crate::api::HostFacts {
        let mut facts = facts::gather(&self.config, &self.vm_memory(), self.slots.usage());
        facts.throughput_to = self.throughput.lock().unwrap_or_else(PoisonError::into_inner).clone();
        facts.cordon = self.cordon_state();
        let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        facts.api_refused = crate::api::ApiRefused {
            busy: count(&self.api.refused_busy),
            timed_out: count(&self.api.timed_out),
            tls: count(&self.api.refused_tls),
            requests: count(&self.api.refused_requests),
        };
        facts
    }

    /// The memory of each VM this host holds (arriving ones included), from
    /// the records alone: no VMM is asked.
    pub fn vm_memory(&self) -> Vec<u64> {
        self.vms().values().map(|vm| vm.record.spec.memory_bytes()).collect()
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

    /// Defines a VM and, with `start`, boots it. A VM whose first start
    /// fails is not kept: the request changed nothing.
    pub fn create(self: &Arc<Self>, spec: &VmSpec, start: bool) -> Result<VmInfo, Failure> {
        spec.validate()
            .map_err(|e| Failure::new(400, format!("invalid VM spec: {e}")))?;
        storage::check_spec(&self.config.storage, spec)
            .map_err(|e| Failure::new(400, format!("invalid VM spec: {e}")))?;
        self.open_for_new_vms(&spec.name)?;
        if spec.pmu {
            let facts = facts::gather(&self.config, &[], (0, 0, 0));
            if facts.pmu_version == 0 {
                let why = if self.config.cpu.pmu {
                    "its KVM offers none (CPUID leaf 0xA)"
                } else {
                    "its agent.toml says [cpu] pmu = false"
                };
                return Err(Failure::new(
                    400,
                    format!(
                        "invalid VM spec: pmu: {} offers no virtual performance counters: {why}",
                        self.config.name
                    ),
                ));
            }
        }
        {
            let mut vms = self.vms();
            if vms.contains_key(&spec.name) {
                return Err(Failure::new(
                    409,
                    format!("a VM named {} exists on this host already", spec.name),
                ));
            }
            let dir = VmDir::new(&self.config.state_dir, &spec.name);
            let record = Record::new(spec.clone());
            dir.save(&record)
                .map_err(|e| Failure::new(500, crate::runtime::process::chain(&e)))?;
            vms.insert(spec.name.clone(), Vm::new(dir, record));
        }
        if start {
            return self.start(&spec.name).inspect_err(|_| {
                let mut vms = self.vms();
                if vms.get(&spec.name).is_some_and(|vm| vm.record.pid.is_none())
                    && let Some(vm) = vms.remove(&spec.name)
                {
                    vm.dir.remove();
                }
            });
        }
        Ok(self.info(&self.view(&spec.name)?))
    }

    pub fn start(self: &Arc<Self>, name: &str) -> Result<VmInfo, Failure> {
        let (dir, spec) = {
            let vms = self.vms();
            let vm = vms.get(name).ok_or_else(|| Failure::not_found(name))?;
            if let Some(held) = vm.record.held_by_migration() {
                return Err(Failure::new(409, held));
            }
            if vm.record.pid.is_some_and(vmm::alive) {
                return Err(Failure::new(409, format!("{name} is running already")));
            }
            (vm.dir.clone(), vm.record.spec.clone())
        };
        // The VMM is started without holding the lock: a boot takes a while.
        // What the host hides from every guest, and what this VM's baseline does.
        let mut hide = self.config.cpu.hide.clone();
        hide.extend(
            spec.cpu_hide
                .iter()
                .filter(|f| !hide.contains(f))
                .cloned()
                .collect::<Vec<_>>(),
        );
        let child = dir
            .spawn_boot(&self.exe, &spec, &hide, &self.config.bridges)
            .map_err(|e| {
                Failure::new(
                    500,
                    format!("cannot start {name}: {}", crate::runtime::process::chain(&e)),
                )
            })?;
        let view = {
            let mut vms = self.vms();
            let vm = vms.get_mut(name).ok_or_else(|| Failure::not_found(name))?;
            vm.record.pid = Some(child.id());
            vm.record.note = None;
            vm.record.ended = None;
            vm.save();
            vm.view()
        };
        tracing::info!(vm = %name, pid = child.id(), "VMM started");
        self.reap(child, name);
        Ok(self.info(&view))
    }

    /// Waits for a child VMM in the background, so it never lingers as a
    /// zombie, and judges how it ended.
    fn reap(self: &Arc<Self>, mut child: std::process::Child, name: &str) {
        let agent = Arc::downgrade(self);
        let name = name.to_string();
        let _ = std::thread::Builder::new().name(format!("reap-{name}")).spawn(move || {
            let pid = child.id();
            let _ = child.wait();
            if let Some(agent) = agent.upgrade() {
                agent.vmm_ended(&name, pid);
            }
        });
    }

    /// The VMM with `pid` of VM `name` has ended: what it left decides.
    /// Arrivals and departures are the settler's (the other host's word
    /// counts there); a VM of this host becomes stopped, failed or lost.
    fn vmm_ended(&self, name: &str, pid: u32) {
        let mut vms = self.vms();
        let Some(vm) = vms.get_mut(name).filter(|vm| vm.record.pid == Some(pid)) else {
            return;
        };
        if vm.record.arrival.is_some() || vm.record.departure.is_some() {
            return;
        }
        let left = vm.dir.vmm_record_of(pid);
        vm.record.pid = None;
        vm.incoming_slot = None;
        vm.record.ended = ended_of(left.as_ref());
        vm.save();
        match &vm.record.ended {
            Some(ended) if ended.lost => tracing::error!(vm = %name, pid, "VMM died: {}", ended.detail),
            Some(ended) => tracing::info!(vm = %name, pid, "VMM ended: {}", ended.detail),
            None => tracing::info!(vm = %name, pid, "VMM ended"),
        }
    }

    pub fn stop(&self, name: &str) -> Result<VmInfo, Failure> {
        let view = {
            // The shutdown is asked under the lock, so that no start of the
            // same VM can slip in while its VMM ends; a VMM that does not
            // answer within the control timeout is killed.
            let mut vms = self.vms();
            let vm = vms.get_mut(name).ok_or_else(|| Failure::not_found(name))?;
            if let Some(held) = vm.record.held_by_migration() {
                return Err(Failure::new(409, held));
            }
            if let Some(pid) = vm.record.pid.take() {
                if vm.dir.request(&VmmRequest::Shutdown).is_err() {
                    vmm::kill(pid);
                }
                vm.record.note = None;
                vm.record.ended = None;
                vm.save();
            }
            vm.view()
        };
        Ok(self.info(&view))
    }

    pub fn destroy(&self, name: &str) -> Result<(), Failure> {
        let pid = self.vms().get(name).and_then(|vm| vm.record.pid);
        self.stop(name)?;
        // The VMM writes its last record as it ends: its directory can only
        // go once it has (else the removal races the write and leaves it).
        if let Some(pid) = pid {
            vmm::wait_gone(pid, DESTROY_WAIT);
        }
        let mut vms = self.vms();
        if let Some(vm) = vms.remove(name) {
            vm.dir.remove();
        }
        Ok(())
    }
}

/// How long a destroyed VM's VMM has to end before it is killed.
const DESTROY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How a VM of this host ended, from its VMM's record (none: killed).
pub(super) fn ended_of(record: Option<&VmmRecord>) -> Option<Ended> {
    match record.and_then(|r| r.exit.as_ref()) {
        None => Some(Ended {
            lost: true,
            detail: "its VMM process died (killed)".into(),
        }),
        Some(Exit::Failed { detail }) => Some(Ended {
            lost: true,
            detail: format!("its VMM failed: {detail}"),
        }),
        Some(Exit::NotReceived { detail, .. }) => Some(Ended {
            lost: true,
            detail: detail.clone(),
        }),
        Some(Exit::Stopped { stop }) if stop.is_clean() => None,
        Some(Exit::Stopped { stop }) => Some(Ended {
            lost: false,
            detail: format!("failed: {stop}"),
        }),
    }
}
