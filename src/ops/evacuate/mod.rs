//! Evacuating a host for maintenance, as the operator library does it:
//! snapshot the cluster, plan every VM's move at once (each VM's own
//! prechecks against every host, then [`super::placement`] over the whole
//! set), and say up front what stays and why; then run the plan
//! ([`execute`]) within the hosts' migration budgets, re-checking each VM
//! just before it moves, and verify every VM against the snapshot at the
//! end.
//!
//! An evacuation is a run of its own in the agents' journals: the source's
//! journal of runs keeps its plan, the VMs it stopped and its end, the
//! source's cordon names it, and each migration carries its id. So an
//! interrupted evacuation is found again and resumed ([`unfinished`]),
//! lifting the cordon ends its pending steps, and [`super::rollback`]
//! undoes it.

pub mod execute;
pub mod moves;
pub mod stale;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use vmig_backend::api::{Maintenance, Request, RunEntry, RunEvent, VmState};
use vmig_backend::migration::MigrationOptions;

use super::cluster::{Cluster, ClusterError, Located};
use super::code::Code;
use super::placement::{self, Policy};
use super::precheck::{self, Checks, PrecheckError, Skip};
use super::run::RunError;

pub use self::execute::{Report, Status, VmResult, execute};
pub use self::moves::{Note, Observer, OnError};

/// The plan file's format (`vmig evacuate -o`, `vmig apply`).
pub const FORMAT: u32 = 1;
/// How long an evacuation may take unless told otherwise: after it, moves
/// not started are not, and those in flight are cancelled.
pub const DEADLINE: Duration = Duration::from_secs(3600);
/// Moves at once unless told otherwise.
pub const PARALLEL: usize = 2;
/// The most moves at once.
pub const PARALLEL_MAX: usize = 16;

/// Rules the planner applies itself, over the whole plan (capacity is
/// spent as VMs are placed; a group is kept apart across the plan), or
/// that describe the moment rather than the move (budgets: the schedule
/// waits for them). A VM's verdict for a host counts without them.
const PLANNER_RULES: [&str; 4] = [
    "capacity.memory",
    "redundancy.chassis",
    "host.cordoned",
    "concurrency.budget",
];

#[derive(Debug, Error)]
pub enum EvacuateError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Precheck(#[from] PrecheckError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("{0}")]
    Invalid(String),
    /// `vmig apply`: the cluster is not what the plan was made from.
    #[error("the plan is stale: the cluster changed since it was made ({}); make a new one", .0.join("; "))]
    Stale(Vec<String>),
    /// The plan's host is being evacuated by another run.
    #[error("{host} is being evacuated by run {run}, which has not ended; re-run its command to resume it")]
    Busy { host: String, run: String },
}

impl EvacuateError {
    pub fn code(&self) -> Code {
        match self {
            EvacuateError::Cluster(e) => e.code(),
            EvacuateError::Precheck(e) => e.code(),
            EvacuateError::Run(e) => e.code(),
            EvacuateError::Invalid(_) => Code::Invalid,
            EvacuateError::Stale(_) | EvacuateError::Busy { .. } => Code::Conflict,
        }
    }
}

/// How an evacuation runs: what the operator chose.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Only these hosts may take VMs (empty: any other host).
    #[serde(default)]
    pub to: Vec<String>,
    pub parallel: usize,
    pub on_error: OnError,
    pub deadline_s: u64,
    /// Move despite warnings (never despite an error).
    #[serde(default)]
    pub force: bool,
    /// Rules not checked.
    #[serde(default)]
    pub skip: Vec<String>,
    pub migration: MigrationOptions,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            to: Vec::new(),
            parallel: PARALLEL,
            on_error: OnError::Continue,
            deadline_s: DEADLINE.as_secs(),
            force: false,
            skip: Vec::new(),
            migration: MigrationOptions::default(),
        }
    }
}

impl Settings {
    pub fn validate(&self) -> Result<(), EvacuateError> {
        if !(1..=PARALLEL_MAX).contains(&self.parallel) {
            return Err(EvacuateError::Invalid(format!(
                "parallel: {} is not between 1 and {PARALLEL_MAX}",
                self.parallel
            )));
        }
        if self.deadline_s == 0 {
            return Err(EvacuateError::Invalid("deadline: must be more than 0".into()));
        }
        self.migration
            .validate()
            .map_err(|e| EvacuateError::Invalid(format!("invalid migration option {e}")))?;
        self.skip_rules()?;
        Ok(())
    }

    pub fn skip_rules(&self) -> Result<Skip, EvacuateError> {
        Ok(Skip::parse(&self.skip)?)
    }

    pub fn deadline(&self) -> Duration {
        Duration::from_secs(self.deadline_s)
    }
}

/// The cluster as the plan saw it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Every VM of the hosts that answered, once each.
    pub vms: Vec<SnapVm>,
    /// Every host of the inventory.
    pub hosts: Vec<SnapHost>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapVm {
    pub name: String,
    pub host: String,
    pub state: VmState,
    pub memory_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Maintenance::is_live")]
    pub maintenance: Maintenance,
    /// The migration it was in, if it was migrating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrating_to: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapHost {
    pub name: String,
    pub reachable: bool,
    #[serde(default)]
    pub free_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chassis: Option<String>,
    #[serde(default)]
    pub cordoned: bool,
    /// The run whose cordon it is, if a run cordoned it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cordon_run: Option<String>,
    /// Its migration budget: the limit, what is in use, what one costs.
    #[serde(default)]
    pub cost_limit: u32,
    #[serde(default)]
    pub cost_in_use: u32,
    #[serde(default)]
    pub cost: u32,
}

impl Snapshot {
    /// Takes one: every host's facts and every VM, asked at once.
    pub fn take(cluster: &Cluster) -> Self {
        let hosts = cluster
            .hosts()
            .into_iter()
            .map(|answer| match answer.facts {
                Ok(f) => SnapHost {
                    name: answer.host.name,
                    reachable: true,
                    free_bytes: f.memory_available_bytes,
                    chassis: f.chassis.clone(),
                    cordoned: f.cordon.is_some(),
                    cordon_run: f.cordon.as_ref().and_then(|c| c.run.clone()),
                    cost_limit: f.migration_cost_limit,
                    cost_in_use: f.migration_cost_in_use,
                    cost: f.migration_cost.max(1),
                },
                Err(_) => SnapHost {
                    name: answer.host.name,
                    reachable: false,
                    free_bytes: 0,
                    chassis: None,
                    cordoned: false,
                    cordon_run: None,
                    cost_limit: 0,
                    cost_in_use: 0,
                    cost: 1,
                },
            })
            .collect();
        let (listing, _) = cluster.listing();
        let vms = listing.iter().map(SnapVm::of).collect();
        Snapshot { vms, hosts }
    }

    pub fn host(&self, name: &str) -> Option<&SnapHost> {
        self.hosts.iter().find(|h| h.name == name)
    }

    pub fn vm(&self, name: &str) -> Option<&SnapVm> {
        self.vms.iter().find(|v| v.name == name)
    }

    /// The VMs `host` holds (not the incoming copies of VMs moving there).
    pub fn on<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a SnapVm> + 'a {
        self.vms
            .iter()
            .filter(move |v| v.host == host && v.state != VmState::Incoming)
    }
}

impl SnapVm {
    fn of(located: &Located) -> Self {
        let info = &located.info;
        SnapVm {
            name: info.name.clone(),
            host: located.host.name.clone(),
            state: info.state,
            memory_bytes: info.memory_bytes,
            group: info.redundancy_group.clone(),
            maintenance: info.maintenance,
            migration: info.migration.clone(),
            migrating_to: info.migrating_to.clone(),
        }
    }
}

/// One move of the plan, in the order they start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub vm: String,
    pub to: String,
    pub memory_bytes: u64,
    /// VMs of its redundancy group in its target's chassis now (on the host
    /// being emptied, which shares it): they must have left before it
    /// arrives, or its prechecks would rightly refuse it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
}

/// A VM the plan leaves where it is, with the rule that keeps it there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Left {
    pub vm: String,
    pub rule: String,
    pub reason: String,
}

/// A VM already migrating when the plan was made (an interrupted run's
/// move): it is followed to its end, not started again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    pub vm: String,
    pub to: String,
    pub id: String,
}

/// An evacuation's plan: what `vmig evacuate -o` writes and `vmig apply`
/// runs, and what the source's journal of runs keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evacuation {
    pub format: u32,
    /// The run id its changes are journaled under.
    pub run: String,
    /// The run (a runbook) it is part of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The host to empty.
    pub host: String,
    /// When it was made (milliseconds since the epoch).
    pub made_ms: u64,
    pub settings: Settings,
    pub snapshot: Snapshot,
    pub steps: Vec<Step>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_flight: Vec<InFlight>,
    /// VMs shut down instead of moved (policy `stop`).
    pub stopped: Vec<String>,
    /// VMs that stay, and why (pinned, no target, not running).
    pub left: Vec<Left>,
    /// Hosts that did not answer (not used as targets).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<String>,
}

impl Evacuation {
    /// The VMs it leaves running on the host although they could move: the
    /// plan is partial up front when there are any.
    pub fn blocked(&self) -> impl Iterator<Item = &Left> {
        self.left
            .iter()
            .filter(|l| l.rule != "maintenance.pin" && l.rule != "vm.stable")
    }

    /// The plan as the source's journal keeps it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Plans the evacuation of `host`: every VM it holds, each to a host its
/// own prechecks pass, placed all at once. Changes nothing. `run` names
/// the evacuation (a new id, or the unfinished run being resumed).
pub fn plan(
    cluster: &Cluster,
    host: &str,
    settings: &Settings,
    run: &str,
    parent: Option<&str>,
) -> Result<Evacuation, EvacuateError> {
    settings.validate()?;
    let source = cluster.host(host)?.name.clone();
    for to in &settings.to {
        cluster.host(to)?;
        if *to == source {
            return Err(EvacuateError::Invalid(format!(
                "--to: {to} is the host being evacuated"
            )));
        }
    }
    let snapshot = Snapshot::take(cluster);
    if !snapshot.host(&source).is_some_and(|h| h.reachable) {
        // Its answer is the error: nothing is planned for a host that cannot be asked.
        cluster.facts(&source)?;
    }
    let checks = Checks {
        skip: settings.skip_rules()?,
        options: settings.migration.clone(),
    };
    let mut left = Vec::new();
    let mut in_flight = Vec::new();
    let mut movable = Vec::new();
    for vm in snapshot.on(&source) {
        match vm.state {
            VmState::Running => movable.push(vm),
            VmState::Migrating | VmState::InDoubt => match (&vm.migration, &vm.migrating_to) {
                (Some(id), Some(to)) => in_flight.push(InFlight {
                    vm: vm.name.clone(),
                    to: to.clone(),
                    id: id.clone(),
                }),
                _ => left.push(not_running(vm, &source)),
            },
            _ if vm.maintenance == Maintenance::Pin => left.push(Left {
                vm: vm.name.clone(),
                rule: "maintenance.pin".into(),
                reason: format!("{} is pinned to {source} (maintenance = \"pin\")", vm.name),
            }),
            _ => left.push(not_running(vm, &source)),
        }
    }
    // Each VM's own verdict for every host, the facts asked once for all.
    let live: Vec<String> = movable
        .iter()
        .filter(|vm| vm.maintenance == Maintenance::Live)
        .map(|vm| vm.name.clone())
        .collect();
    let mut refused: BTreeMap<String, Refused> = BTreeMap::new();
    for (name, verdicts) in precheck::precheck_each(cluster, &live, &checks) {
        refused.insert(name, refusals(verdicts?, settings.force));
    }
    let vms: Vec<placement::Vm> = movable
        .iter()
        .map(|vm| placement::Vm {
            name: vm.name.clone(),
            memory_bytes: vm.memory_bytes,
            group: vm.group.clone(),
            policy: match vm.maintenance {
                Maintenance::Live => Policy::Live,
                Maintenance::Stop => Policy::Stop,
                Maintenance::Pin => Policy::Pin,
            },
            refused: refused.remove(&vm.name).unwrap_or_default(),
        })
        .collect();
    let hosts: Vec<placement::Host> = snapshot
        .hosts
        .iter()
        .filter(|h| h.reachable && h.name != source)
        .filter(|h| settings.to.is_empty() || settings.to.contains(&h.name))
        .map(|h| placement::Host {
            name: h.name.clone(),
            free_bytes: h.free_bytes,
            chassis: h.chassis.clone(),
            cordoned: h.cordoned,
        })
        .collect();
    // Where each group has members that stay (on other hosts).
    let placed: Vec<(String, String)> = snapshot
        .vms
        .iter()
        .filter(|v| v.host != source)
        .filter_map(|v| {
            let group = v.group.clone()?;
            let chassis = snapshot.host(&v.host)?.chassis.clone()?;
            Some((group, chassis))
        })
        .collect();
    let planned = placement::plan(&source, &vms, &hosts, &placed);
    let memory = |vm: &str| snapshot.vm(vm).map_or(0, |v| v.memory_bytes);
    let chassis_of = |host: &str| snapshot.host(host).and_then(|h| h.chassis.clone());
    // A move into the source's own chassis waits for its group's members
    // that leave that chassis in the same plan.
    let after = |vm: &str, to: &str| -> Vec<String> {
        let (Some(group), Some(chassis)) = (snapshot.vm(vm).and_then(|v| v.group.clone()), chassis_of(to)) else {
            return Vec::new();
        };
        planned
            .steps
            .iter()
            .filter(|other| other.vm != vm)
            .filter(|other| snapshot.vm(&other.vm).is_some_and(|o| o.group.as_ref() == Some(&group)))
            .filter(|_| chassis_of(&source).as_ref() == Some(&chassis))
            .map(|other| other.vm.clone())
            .collect()
    };
    let steps: Vec<Step> = planned
        .steps
        .iter()
        .map(|s| Step {
            memory_bytes: memory(&s.vm),
            after: after(&s.vm, &s.to),
            vm: s.vm.clone(),
            to: s.to.clone(),
        })
        .collect();
    left.extend(planned.left.into_iter().map(|l| Left {
        vm: l.vm,
        rule: l.rule.to_string(),
        reason: l.reason,
    }));
    left.sort_by(|a, b| a.vm.cmp(&b.vm));
    Ok(Evacuation {
        format: FORMAT,
        run: run.to_string(),
        parent: parent.map(str::to_string),
        host: source,
        made_ms: now_ms(),
        settings: settings.clone(),
        steps,
        in_flight,
        stopped: planned.stopped,
        left,
        unreachable: snapshot
            .hosts
            .iter()
            .filter(|h| !h.reachable)
            .map(|h| h.name.clone())
            .collect(),
        snapshot,
    })
}

fn not_running(vm: &SnapVm, source: &str) -> Left {
    Left {
        vm: vm.name.clone(),
        rule: "vm.stable".into(),
        reason: format!("{} is {} on {source}, not running: it is not moved", vm.name, vm.state),
    }
}

/// The hosts a VM's verdicts refuse, with the rule (those the planner
/// decides over the whole plan aside); warnings refuse unless `force`.
fn refusals(verdicts: BTreeMap<String, precheck::Verdict>, force: bool) -> Refused {
    let mut refused = BTreeMap::new();
    for (host, verdict) in verdicts {
        let own = |f: &&precheck::Finding| !PLANNER_RULES.contains(&f.rule);
        let first = verdict
            .errors
            .iter()
            .find(own)
            .or_else(|| verdict.warnings.iter().find(own).filter(|_| !force));
        if let Some(finding) = first {
            refused.insert(host, finding.rule);
        }
    }
    refused
}

/// The hosts a VM's own prechecks refuse, with the rule that refuses each.
type Refused = BTreeMap<String, &'static str>;

/// An evacuation of `host` that began and has not ended, as its journal of
/// runs keeps it: its plan, and what it recorded since.
#[derive(Debug, Clone)]
pub struct Unfinished {
    pub evacuation: Evacuation,
    pub began_ms: u64,
    pub by: Option<String>,
    /// VMs it stopped.
    pub stopping: Vec<String>,
}

/// The evacuation of `host` that began and has not ended, if there is one.
pub fn unfinished(cluster: &Cluster, host: &str) -> Result<Option<Unfinished>, EvacuateError> {
    let entries: Vec<RunEntry> = cluster
        .host_client(host)?
        .call(Request::Runs { run: None })
        .map_err(ClusterError::from)?;
    let mut open: Option<Unfinished> = None;
    for entry in entries {
        match entry.event {
            RunEvent::Evacuating { plan } => {
                if let Ok(evacuation) = serde_json::from_value::<Evacuation>(plan)
                    && evacuation.host == host
                {
                    open = Some(Unfinished {
                        evacuation,
                        began_ms: entry.at_ms,
                        by: entry.by,
                        stopping: Vec::new(),
                    });
                }
            }
            RunEvent::Stopping { vm } => {
                if let Some(open) = open.as_mut().filter(|o| o.evacuation.run == entry.run) {
                    open.stopping.push(vm);
                }
            }
            RunEvent::Ended { .. } => {
                if open.as_ref().is_some_and(|o| o.evacuation.run == entry.run) {
                    open = None;
                }
            }
        }
    }
    Ok(open)
}
