//! Rolling a run back: every VM it moved goes back where it came from, the
//! last moved first, with prechecks; VMs it stopped are started again; a
//! cordon it set is lifted. All of it is read from the agents' journals
//! (migrations by run id; the journal of runs for evacuations, their
//! nested runs, and the VMs they stopped), so any operator can roll back
//! any run. A VM moved again or deleted since is skipped and reported (per
//! VM, from the journal), never fought over. The rollback is itself a run:
//! its migrations carry its id, and rolling it back moves them again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use thiserror::Error;
use vmig_backend::api::{HostFacts, Request, RunEvent, VmState};

use super::cluster::{Cluster, ClusterError};
use super::code::{Code, describe};
use super::evacuate::moves::{Move, Note, Observer, Schedule, run_moves};
use super::evacuate::{Report, Settings, Snapshot, Status, VmResult};
use super::history::{self, Query, Record};
use super::run::{Change, Go, Run, RunError};
use super::runs;

#[derive(Debug, Error)]
pub enum RollbackError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Settings(#[from] super::evacuate::EvacuateError),
    #[error("no run {run} in the journals of the hosts that answered{}", unanswered(.missing))]
    NoSuchRun { run: String, missing: Vec<String> },
    #[error("{who} has no run to roll back in the journals of the hosts that answered{}", unanswered(.missing))]
    NoLast { who: String, missing: Vec<String> },
    #[error("cannot tell who the operator is from the inventory's certificate")]
    Identity(#[source] vmig_backend::pki::PkiError),
}

fn unanswered(missing: &[String]) -> String {
    if missing.is_empty() {
        String::new()
    } else {
        format!(" ({} did not answer)", missing.join(", "))
    }
}

impl RollbackError {
    pub fn code(&self) -> Code {
        match self {
            RollbackError::Cluster(e) => e.code(),
            RollbackError::Run(e) => e.code(),
            RollbackError::Settings(e) => e.code(),
            RollbackError::NoSuchRun { .. } | RollbackError::NoLast { .. } => Code::NotFound,
            RollbackError::Identity(_) => Code::Auth,
        }
    }
}

/// What rolling a run back will do.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The run rolled back.
    pub of: String,
    /// It and the runs nested in it (a runbook's evacuations).
    pub runs: Vec<String>,
    /// The moves back, the last moved first.
    pub moves: Vec<Move>,
    /// VMs to start again, and where.
    pub starts: Vec<(String, String)>,
    /// Hosts whose cordon the run set and still holds.
    pub uncordon: Vec<String>,
    /// VMs left as they are, and why.
    pub skipped: Vec<VmResult>,
}

/// Plans rolling back run `of`. Changes nothing.
pub fn plan(cluster: &Cluster, of: &str) -> Result<Plan, RollbackError> {
    let (journal, mut missing) = runs::journals(cluster);
    let runs = runs::family(&journal, of);
    let (records, failed) = history::history(cluster, &Query::default());
    missing.extend(failed.into_iter().map(|(h, _)| h.name));
    missing.sort();
    missing.dedup();
    let ours = |r: &Record| r.run.as_ref().is_some_and(|run| runs.contains(run));
    let known = records.iter().any(ours) || journal.iter().any(|(_, e)| runs.contains(&e.run));
    if !known {
        return Err(RollbackError::NoSuchRun {
            run: of.to_string(),
            missing,
        });
    }
    let (listing, _) = cluster.listing();
    let where_now = |vm: &str| listing.iter().find(|l| l.info.name == vm);
    let ended = |r: &Record| r.ended_ms.or(r.started_ms).unwrap_or(0);
    // Each VM the run moved: from its first move's source to its last
    // move's target.
    let mut moved: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for record in records.iter().filter(|r| r.outcome == "moved" && ours(r)) {
        moved.entry(record.vm.as_str()).or_default().push(record);
    }
    let mut moves: Vec<(u64, Move)> = Vec::new();
    let mut skipped = Vec::new();
    for (vm, list) in moved {
        let (first, last) = (list[0], list[list.len() - 1]);
        let (Some(origin), Some(there)) = (first.from.clone(), last.to.clone()) else {
            continue;
        };
        let base = VmResult::new(vm, &there, Some(&origin));
        let latest = records
            .iter()
            .filter(|r| r.vm == vm && r.outcome == "moved")
            .max_by_key(|r| ended(r));
        if let Some(latest) = latest.filter(|l| l.id != last.id) {
            skipped.push(VmResult {
                status: Status::Skipped,
                message: Some(format!(
                    "moved again since: migration {} (run {}) took it to {}",
                    latest.id,
                    latest.run.as_deref().unwrap_or("?"),
                    latest.to.as_deref().unwrap_or("?")
                )),
                ..base
            });
            continue;
        }
        match where_now(vm) {
            None => skipped.push(VmResult {
                status: Status::Skipped,
                message: Some("deleted since: no host has it".into()),
                ..base
            }),
            Some(l) if l.host.name != there => skipped.push(VmResult {
                status: Status::Skipped,
                message: Some(format!("it is on {} now, not {there}", l.host.name)),
                now_on: Some(l.host.name.clone()),
                ..base
            }),
            Some(l) => moves.push((
                ended(last),
                Move {
                    vm: vm.to_string(),
                    from: there,
                    to: origin,
                    memory_bytes: l.info.memory_bytes,
                    watch: None,
                    skip: Vec::new(),
                    after: Vec::new(),
                },
            )),
        }
    }
    // The last moved goes back first.
    moves.sort_by_key(|m| std::cmp::Reverse(m.0));
    let facts: BTreeMap<String, HostFacts> = cluster
        .hosts()
        .into_iter()
        .filter_map(|a| Some((a.host.name, a.facts.ok()?)))
        .collect();
    let mut uncordon = BTreeSet::new();
    let mut starts = Vec::new();
    for (host, entry) in journal.iter().filter(|(_, e)| runs.contains(&e.run)) {
        match &entry.event {
            RunEvent::Evacuating { .. } => {
                let Some(evacuation) = runs::evacuation(entry) else {
                    continue;
                };
                let before = evacuation
                    .snapshot
                    .host(host)
                    .is_some_and(|h| h.cordoned && !h.cordon_run.as_ref().is_some_and(|r| runs.contains(r)));
                let held = facts
                    .get(host)
                    .and_then(|f| f.cordon.as_ref())
                    .and_then(|c| c.run.as_ref())
                    .is_some_and(|run| runs.contains(run));
                if held && !before {
                    uncordon.insert(host.clone());
                }
            }
            RunEvent::Stopping { vm } => match where_now(vm) {
                Some(l) if l.host.name == *host && l.info.state == VmState::Stopped => {
                    starts.push((vm.clone(), host.clone()));
                }
                Some(l) => skipped.push(VmResult {
                    status: Status::Skipped,
                    message: Some(format!("it is {} on {} now: not started", l.info.state, l.host.name)),
                    now_on: Some(l.host.name.clone()),
                    ..VmResult::new(vm, host, None)
                }),
                None => skipped.push(VmResult {
                    status: Status::Skipped,
                    message: Some("deleted since: no host has it".into()),
                    ..VmResult::new(vm, host, None)
                }),
            },
            RunEvent::Ended { .. } => {}
        }
    }
    Ok(Plan {
        of: of.to_string(),
        runs,
        moves: moves.into_iter().map(|(_, m)| m).collect(),
        starts,
        uncordon: uncordon.into_iter().collect(),
        skipped,
    })
}

/// The latest run the operator (the inventory certificate's name) made
/// that changed something, from the journals; a run nested in a runbook
/// stands for the runbook's.
pub fn last(cluster: &Cluster) -> Result<String, RollbackError> {
    let me = vmig_backend::pki::whoami(&cluster.inventory.operator)
        .map_err(RollbackError::Identity)?
        .name;
    let (journal, mut missing) = runs::journals(cluster);
    let (records, failed) = history::history(cluster, &Query::default());
    missing.extend(failed.into_iter().map(|(h, _)| h.name));
    let mut parent_of: BTreeMap<String, String> = BTreeMap::new();
    let mut latest: Option<(u64, String)> = None;
    let mut consider = |at: u64, run: &str| {
        if latest.as_ref().is_none_or(|(t, _)| at >= *t) {
            latest = Some((at, run.to_string()));
        }
    };
    for (_, entry) in journal.iter().filter(|(_, e)| e.by.as_deref() == Some(me.as_str())) {
        if let Some(evacuation) = runs::evacuation(entry)
            && let Some(parent) = evacuation.parent
        {
            parent_of.insert(evacuation.run.clone(), parent);
        }
        consider(entry.at_ms, &entry.run);
    }
    for record in records
        .iter()
        .filter(|r| r.outcome == "moved" && r.by.as_deref() == Some(me.as_str()))
    {
        if let Some(run) = &record.run {
            consider(record.started_ms.unwrap_or(0), run);
        }
    }
    let (_, run) = latest.ok_or_else(|| RollbackError::NoLast {
        who: me.clone(),
        missing,
    })?;
    Ok(parent_of.get(&run).cloned().unwrap_or(run))
}

/// Rolls `plan` back in `run`: lifts the run's cordons, moves the VMs
/// back (as `settings` says: several at once, a deadline), starts the VMs
/// it stopped, and verifies where each is.
pub fn execute(
    run: &Run,
    cluster: &Cluster,
    plan: &Plan,
    settings: &Settings,
    observer: &dyn Observer,
) -> Result<Report, RollbackError> {
    settings.validate()?;
    let started = Instant::now();
    observer.note(&Note::Planned {
        run: run.id.clone(),
        kind: "rollback",
        of: plan.of.clone(),
        steps: plan.moves.len(),
        stopped: plan.starts.len(),
        left: plan.skipped.len(),
    });
    let mut vms = plan.skipped.clone();
    for result in &vms {
        observer.note(&Note::Result(result.clone()));
    }
    for host in &plan.uncordon {
        if run.change(Change::Cordon {
            host: host.clone(),
            on: false,
        })? == Go::Ahead
        {
            cluster
                .host_client(host)?
                .call::<bool>(Request::Uncordon)
                .map_err(ClusterError::from)?;
            observer.note(&Note::Host {
                host: host.clone(),
                what: "uncordoned".into(),
            });
        }
    }
    // A dry run lifts no cordon: its moves are checked as if it had.
    let moves: Vec<Move> = plan
        .moves
        .iter()
        .map(|m| {
            let mut m = m.clone();
            if run.dry_run && plan.uncordon.contains(&m.to) {
                m.skip.push("host.cordoned");
            }
            m
        })
        .collect();
    let (now, _) = Snapshot::take(cluster);
    let no_hold = || None;
    let schedule = Schedule {
        parallel: settings.parallel,
        on_error: settings.on_error,
        deadline: started + settings.deadline(),
        run_id: &run.id,
        options: settings.migration.clone(),
        force: settings.force,
        skip: settings.skip_rules()?,
        hold: &no_hold,
        planned: false,
    };
    vms.extend(run_moves(run, cluster, &moves, &now, &schedule, observer));
    for (vm, host) in &plan.starts {
        let result = start(run, cluster, vm, host);
        observer.note(&Note::Result(result.clone()));
        vms.push(result);
    }
    if !run.dry_run {
        let (listing, _) = cluster.listing();
        for result in &mut vms {
            result.now_on = listing
                .iter()
                .find(|l| l.info.name == result.vm)
                .map(|l| l.host.name.clone());
        }
    }
    let complete = vms.iter().all(|v| v.ok() || v.status == Status::Skipped);
    Ok(Report {
        run: run.id.clone(),
        kind: "rollback",
        of: plan.of.clone(),
        dry_run: run.dry_run,
        resumed: false,
        complete,
        vms,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

fn start(run: &Run, cluster: &Cluster, vm: &str, host: &str) -> VmResult {
    let base = VmResult::new(vm, host, Some(host));
    match run.change(Change::Start {
        vm: vm.to_string(),
        host: host.to_string(),
    }) {
        Ok(Go::DryRun) => VmResult {
            status: Status::Planned,
            message: Some("would be started again".into()),
            ..base
        },
        Ok(Go::Ahead) => {
            let started = cluster.host_client(host).and_then(|client| {
                client
                    .call::<serde_json::Value>(Request::StartVm { name: vm.to_string() })
                    .map_err(ClusterError::from)
            });
            match started {
                Ok(_) => VmResult {
                    status: Status::Started,
                    message: Some("started again".into()),
                    ..base
                },
                Err(e) => VmResult {
                    status: Status::Failed,
                    code: Some(e.code()),
                    message: Some(describe(&e)),
                    ..base
                },
            }
        }
        Err(e) => VmResult {
            status: Status::NotStarted,
            code: Some(e.code()),
            message: Some(e.to_string()),
            ..base
        },
    }
}
