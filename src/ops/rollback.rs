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
use vmig_backend::api::{Request, RunEntry, RunEvent, VmState};

use super::cluster::{Cluster, ClusterError};
use super::code::Code;
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

/// What the journals and the agents say now: all [`decide`] looks at.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Every host's journal of runs (host, entry).
    pub journal: Vec<(String, RunEntry)>,
    /// Every migration, both sides merged, oldest first.
    pub records: Vec<Record>,
    /// Where each VM is now: its host, state and memory.
    pub now: BTreeMap<String, (String, VmState, u64)>,
    /// The run each host's cordon names (None: no cordon, or not a run's).
    pub cordon_runs: BTreeMap<String, Option<String>>,
    /// Hosts that did not answer: a VM not found may be on one of them.
    pub unanswered: Vec<String>,
}

/// Plans rolling back run `of`. Changes nothing.
pub fn plan(cluster: &Cluster, of: &str) -> Result<Plan, RollbackError> {
    let (journal, mut missing) = runs::journals(cluster);
    let (records, failed) = history::history(cluster, &Query::default());
    missing.extend(failed.into_iter().map(|(h, _)| h.name));
    missing.sort();
    missing.dedup();
    let (listing, failed) = cluster.listing();
    let unanswered = failed.into_iter().map(|(h, _)| h.name).collect();
    let now = listing
        .into_iter()
        .map(|l| (l.info.name, (l.host.name, l.info.state, l.info.memory_bytes)))
        .collect();
    let cordon_runs = cluster
        .hosts()
        .into_iter()
        .filter_map(|a| {
            let facts = a.facts.ok()?;
            Some((a.host.name, facts.cordon.and_then(|c| c.run)))
        })
        .collect();
    let seen = Seen {
        journal,
        records,
        now,
        cordon_runs,
        unanswered,
    };
    decide(of, &seen).ok_or_else(|| RollbackError::NoSuchRun {
        run: of.to_string(),
        missing,
    })
}

/// What rolling back run `of` does, from what is seen (a pure function);
/// None when no journal knows the run.
pub fn decide(of: &str, seen: &Seen) -> Option<Plan> {
    let runs = runs::family(&seen.journal, of);
    let ours = |r: &Record| r.run.as_ref().is_some_and(|run| runs.contains(run));
    let known = seen.records.iter().any(ours) || seen.journal.iter().any(|(_, e)| runs.contains(&e.run));
    if !known {
        return None;
    }
    let ended = |r: &Record| r.ended_ms.or(r.started_ms).unwrap_or(0);
    // Each VM the run moved: from its first move's source to its last
    // move's target.
    let mut moved: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for record in seen.records.iter().filter(|r| r.outcome == "moved" && ours(r)) {
        moved.entry(record.vm.as_str()).or_default().push(record);
    }
    let mut moves: Vec<(u64, Move)> = Vec::new();
    let mut skipped = Vec::new();
    for (vm, mut list) in moved {
        list.sort_by_key(|r| ended(r));
        let (first, last) = (list[0], list[list.len() - 1]);
        let (Some(origin), Some(there)) = (first.from.clone(), last.to.clone()) else {
            continue;
        };
        let base = VmResult::new(vm, &there, Some(&origin));
        let latest = seen
            .records
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
        match seen.now.get(vm) {
            // Not deleted for all we know: a host did not say.
            None if !seen.unanswered.is_empty() => skipped.push(VmResult {
                status: Status::NotStarted,
                code: Some(Code::Unreachable),
                message: Some(format!(
                    "where it is is not known: {} did not answer; not moved",
                    seen.unanswered.join(", ")
                )),
                ..base
            }),
            None => skipped.push(VmResult {
                status: Status::Skipped,
                message: Some("deleted since: no host has it".into()),
                ..base
            }),
            Some((host, ..)) if *host != there => skipped.push(VmResult {
                status: Status::Skipped,
                message: Some(format!("it is on {host} now, not {there}")),
                now_on: Some(host.clone()),
                ..base
            }),
            Some((_, _, memory)) => moves.push((
                ended(last),
                Move {
                    vm: vm.to_string(),
                    from: there,
                    to: origin,
                    memory_bytes: *memory,
                    watch: None,
                    skip: Vec::new(),
                    after: Vec::new(),
                },
            )),
        }
    }
    // The last moved goes back first.
    moves.sort_by_key(|m| std::cmp::Reverse(m.0));
    let mut uncordon = BTreeSet::new();
    let mut starts = Vec::new();
    for (host, entry) in seen.journal.iter().filter(|(_, e)| runs.contains(&e.run)) {
        match &entry.event {
            RunEvent::Evacuating { .. } => {
                let Some(evacuation) = runs::evacuation(entry) else {
                    continue;
                };
                // Cordoned before the run by someone else: not its to lift.
                let before = evacuation
                    .snapshot
                    .host(host)
                    .is_some_and(|h| h.cordoned && !h.cordon_run.as_ref().is_some_and(|r| runs.contains(r)));
                let held = seen
                    .cordon_runs
                    .get(host)
                    .and_then(Option::as_ref)
                    .is_some_and(|run| runs.contains(run));
                if held && !before {
                    uncordon.insert(host.clone());
                }
            }
            RunEvent::Stopping { vm } => match seen.now.get(vm) {
                Some((now, VmState::Stopped, _)) if now == host => {
                    starts.push((vm.clone(), host.clone()));
                }
                Some((now, state, _)) => skipped.push(VmResult {
                    status: Status::Skipped,
                    message: Some(format!("it is {state} on {now} now: not started")),
                    now_on: Some(now.clone()),
                    ..VmResult::new(vm, host, None)
                }),
                None if !seen.unanswered.is_empty() => skipped.push(VmResult {
                    status: Status::NotStarted,
                    code: Some(Code::Unreachable),
                    message: Some(format!(
                        "where it is is not known: {} did not answer; not started",
                        seen.unanswered.join(", ")
                    )),
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
    Some(Plan {
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
    let now = Snapshot::take(cluster);
    let no_hold = || None;
    let schedule = Schedule {
        parallel: settings.parallel,
        on_error: settings.on_error,
        deadline: started + settings.deadline(),
        run_id: &run.id,
        options: settings.migration.clone(),
        force: settings.force,
        skip: settings.skip_rules()?.with(&[super::evacuate::moves::SCHEDULED]),
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
        super::evacuate::execute::locate(cluster, &mut vms);
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
            base.after(started, Status::Started, "started again")
        }
        Err(e) => base.refused_by(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::evacuate::{Evacuation, SnapHost, Snapshot};

    fn moved(id: &str, vm: &str, from: &str, to: &str, run: &str, at: u64) -> Record {
        Record {
            id: id.into(),
            vm: vm.into(),
            from: Some(from.into()),
            to: Some(to.into()),
            run: Some(run.into()),
            by: Some("alice".into()),
            started_ms: Some(at - 1),
            ended_ms: Some(at),
            outcome: "moved".into(),
            code: None,
            message: None,
            downtime_ms: None,
            total_ms: None,
            bytes_sent: None,
            arrival: None,
            rules: Vec::new(),
        }
    }

    fn entry(host: &str, run: &str, event: RunEvent) -> (String, RunEntry) {
        (
            host.into(),
            RunEntry {
                at_ms: 1,
                run: run.into(),
                by: None,
                event,
            },
        )
    }

    /// An evacuation of `host` by `run` nested in `parent`; `cordoned` is
    /// the run whose cordon the host had when it was planned, if any
    /// (`Some(None)`: an operator's).
    fn evacuating(host: &str, run: &str, parent: Option<&str>, cordoned: Option<Option<&str>>) -> (String, RunEntry) {
        let plan = Evacuation {
            format: crate::ops::evacuate::FORMAT,
            run: run.into(),
            parent: parent.map(str::to_string),
            host: host.into(),
            made_ms: 0,
            settings: Default::default(),
            snapshot: Snapshot {
                vms: Vec::new(),
                hosts: vec![SnapHost {
                    name: host.into(),
                    reachable: true,
                    free_bytes: 0,
                    chassis: None,
                    cordoned: cordoned.is_some(),
                    cordon_run: cordoned.flatten().map(str::to_string),
                    cost_limit: 8,
                    cost_in_use: 0,
                    cost: 1,
                }],
            },
            steps: Vec::new(),
            in_flight: Vec::new(),
            stopped: Vec::new(),
            left: Vec::new(),
            unreachable: Vec::new(),
        };
        entry(host, run, RunEvent::Evacuating { plan: plan.to_json() })
    }

    fn now(list: &[(&str, &str, VmState)]) -> BTreeMap<String, (String, VmState, u64)> {
        list.iter()
            .map(|(vm, host, state)| (vm.to_string(), (host.to_string(), *state, 1 << 26)))
            .collect()
    }

    fn moves(plan: &Plan) -> Vec<(&str, &str, &str)> {
        plan.moves
            .iter()
            .map(|m| (m.vm.as_str(), m.from.as_str(), m.to.as_str()))
            .collect()
    }

    #[test]
    fn the_last_moved_goes_back_first_to_where_the_run_found_it() {
        let seen = Seen {
            records: vec![
                moved("m-1", "v1", "A", "B", "r-1", 10),
                moved("m-2", "v2", "A", "C", "r-1", 20),
                moved("m-3", "v1", "B", "D", "r-1", 30),
                moved("m-4", "x", "A", "B", "r-9", 40),
            ],
            now: now(&[("v1", "D", VmState::Running), ("v2", "C", VmState::Running)]),
            ..Seen::default()
        };
        let plan = decide("r-1", &seen).unwrap();
        assert_eq!(moves(&plan), [("v1", "D", "A"), ("v2", "C", "A")]);
        assert!(plan.skipped.is_empty());
        assert!(decide("r-7", &seen).is_none(), "an unknown run");
    }

    #[test]
    fn what_moved_again_or_was_deleted_since_is_skipped_with_why() {
        let seen = Seen {
            records: vec![
                moved("m-1", "v1", "A", "B", "r-1", 10),
                moved("m-2", "v2", "A", "C", "r-1", 20),
                moved("m-3", "v3", "A", "C", "r-1", 25),
                moved("m-4", "v1", "B", "D", "r-2", 30),
            ],
            now: now(&[("v1", "D", VmState::Running), ("v3", "B", VmState::Running)]),
            ..Seen::default()
        };
        let plan = decide("r-1", &seen).unwrap();
        assert!(plan.moves.is_empty(), "{:?}", plan.moves);
        let why: BTreeMap<&str, &str> = plan
            .skipped
            .iter()
            .map(|s| (s.vm.as_str(), s.message.as_deref().unwrap()))
            .collect();
        assert!(
            why["v1"].contains("moved again since: migration m-4 (run r-2)"),
            "{why:?}"
        );
        assert!(why["v2"].contains("deleted since"), "{why:?}");
        assert!(why["v3"].contains("on B now, not C"), "{why:?}");
        // With a host silent, a VM not found is not called deleted.
        let silent = Seen {
            unanswered: vec!["E".into()],
            ..seen
        };
        let plan = decide("r-1", &silent).unwrap();
        let v2 = plan.skipped.iter().find(|s| s.vm == "v2").unwrap();
        assert_eq!(v2.status, Status::NotStarted);
        assert!(v2.message.as_deref().unwrap().contains("E did not answer"));
    }

    #[test]
    fn nested_runs_stops_and_cordons_are_the_runs_own() {
        let seen = Seen {
            journal: vec![
                // A runbook r-1 evacuated A (as r-2, A cordoned by r-1
                // itself) and B (as r-3, B cordoned by an operator before).
                evacuating("A", "r-2", Some("r-1"), Some(Some("r-1"))),
                entry("A", "r-2", RunEvent::Stopping { vm: "batch".into() }),
                entry("A", "r-2", RunEvent::Stopping { vm: "gone".into() }),
                evacuating("B", "r-3", Some("r-1"), Some(None)),
                evacuating("C", "r-8", None, None),
            ],
            records: vec![
                moved("m-1", "v1", "A", "C", "r-2", 10),
                moved("m-2", "v2", "B", "C", "r-3", 20),
            ],
            now: now(&[
                ("v1", "C", VmState::Running),
                ("v2", "C", VmState::Running),
                ("batch", "A", VmState::Stopped),
            ]),
            cordon_runs: BTreeMap::from([
                ("A".to_string(), Some("r-1".to_string())),
                ("B".to_string(), Some("r-3".to_string())),
                ("C".to_string(), Some("r-8".to_string())),
            ]),
            unanswered: Vec::new(),
        };
        let plan = decide("r-1", &seen).unwrap();
        assert_eq!(plan.runs, ["r-1", "r-2", "r-3"]);
        assert_eq!(moves(&plan), [("v2", "C", "B"), ("v1", "C", "A")]);
        assert_eq!(plan.starts, [("batch".to_string(), "A".to_string())]);
        assert_eq!(plan.skipped.len(), 1, "{:?}", plan.skipped);
        assert_eq!(plan.skipped[0].vm, "gone");
        // A's cordon is the runbook's: lifted. B was cordoned before by an
        // operator: kept. C is another run's.
        assert_eq!(plan.uncordon, ["A"]);
        // Rolled back alone, the nested evacuation of A is found too.
        let alone = decide("r-2", &seen).unwrap();
        assert_eq!(moves(&alone), [("v1", "C", "A")]);
        assert_eq!(alone.runs, ["r-2"]);
    }
}
