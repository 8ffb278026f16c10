//! Running an evacuation's plan: cordon the host under the run's name,
//! journal the plan on it, stop the VMs whose policy says so, make the
//! moves ([`super::moves`]), then verify every VM against the snapshot and
//! journal the end. An interrupted run journals no end, so that running
//! the same command again finds it and resumes it ([`evacuate`]).

use std::time::Instant;

use serde::Serialize;
use vmig_backend::api::{Cordon, Maintenance, Request, RunEvent, VmState};

use super::moves::{Move, Note, Observer, Schedule, run_moves};
use super::{EvacuateError, Evacuation, Settings, Snapshot, Unfinished, stale, unfinished};
use crate::ops::cluster::{Cluster, ClusterError};
use crate::ops::code::{Code, describe};
use crate::ops::history::{self, Query};
use crate::ops::run::{Change, Go, Run};

/// What became of one VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// It runs on its target now.
    Moved,
    /// A dry run: it would move.
    Planned,
    /// Shut down for the maintenance (policy `stop`); or, in a rollback,
    /// started again.
    Stopped,
    Started,
    /// Never moved (policy `pin`).
    Pinned,
    /// The plan found no host for it, or it is not running (`rule` says).
    Left,
    /// Its prechecks refused the move just before it (`rule` says).
    Blocked,
    /// It did not converge in time (its time limit, or the evacuation's
    /// deadline): it stays on its source.
    Slow,
    /// The move failed (`code` says); it stays on its source unless the
    /// code says otherwise.
    Failed,
    /// Not started: the deadline, Ctrl-C, an uncordon, an earlier failure
    /// under `on_error = stop`, or it was elsewhere already.
    NotStarted,
    /// A rollback left it: moved again or deleted since (`message` says).
    Skipped,
}

/// One VM's result, as every front end gives it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VmResult {
    pub vm: String,
    pub from: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<Code>,
    /// The precheck rule that kept it, when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Its migration's id, when one ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<f64>,
    /// Where it runs (or is defined) at the end, verified by asking the
    /// agents; None when no host lists it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub now_on: Option<String>,
}

impl VmResult {
    pub fn new(vm: &str, from: &str, to: Option<&str>) -> Self {
        VmResult {
            vm: vm.to_string(),
            from: from.to_string(),
            to: to.map(str::to_string),
            status: Status::Left,
            code: None,
            rule: None,
            message: None,
            id: None,
            downtime_ms: None,
            total_ms: None,
            now_on: None,
        }
    }

    /// The run did not let it happen (no consent, declined, interrupted).
    pub fn refused_by(self, error: &crate::ops::run::RunError) -> Self {
        VmResult {
            status: Status::NotStarted,
            code: Some(error.code()),
            message: Some(error.to_string()),
            ..self
        }
    }

    /// What an agent's answer to a stop or start makes of it: `status`
    /// (with `message`) when it did, failed with the error's code when not.
    pub fn after<T>(self, answer: Result<T, ClusterError>, status: Status, message: &str) -> Self {
        match answer {
            Ok(_) => VmResult {
                status,
                message: Some(message.to_string()),
                ..self
            },
            Err(e) => VmResult {
                status: Status::Failed,
                code: Some(e.code()),
                message: Some(describe(&e)),
                ..self
            },
        }
    }

    /// It ended as it should: moved (or would), stopped or started, pinned.
    pub fn ok(&self) -> bool {
        matches!(
            self.status,
            Status::Moved | Status::Planned | Status::Stopped | Status::Started | Status::Pinned
        )
    }
}

impl std::fmt::Display for VmResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = serde_json::to_value(self.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        write!(f, "{} {}", self.vm, status.replace('_', " "))?;
        match (&self.to, self.status) {
            (Some(to), Status::Moved | Status::Planned) => write!(f, " {} → {to}", self.from)?,
            _ => write!(f, " (on {})", self.now_on.as_deref().unwrap_or(&self.from))?,
        }
        if let Some(ms) = self.downtime_ms {
            write!(f, ", downtime {ms:.1} ms")?;
        }
        if let Some(rule) = &self.rule {
            write!(f, " [{rule}]")?;
        }
        if let Some(message) = &self.message {
            write!(f, ": {message}")?;
        }
        Ok(())
    }
}

/// How an evacuation or rollback ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The run (as the journals name it).
    pub run: String,
    /// `evacuate` or `rollback`.
    pub kind: &'static str,
    /// The evacuated host, or the run rolled back.
    pub of: String,
    pub dry_run: bool,
    /// It resumed an interrupted run.
    pub resumed: bool,
    /// Evacuation: the host holds no running VM that could move. Rollback:
    /// every VM that could go back did.
    pub complete: bool,
    pub vms: Vec<VmResult>,
    pub elapsed_ms: u64,
}

impl Report {
    /// The VMs that did not end as they should, for the summary.
    pub fn not_ok(&self) -> impl Iterator<Item = &VmResult> {
        self.vms.iter().filter(|v| !v.ok())
    }

    pub fn count(&self, status: Status) -> usize {
        self.vms.iter().filter(|v| v.status == status).count()
    }
}

/// Plans and runs the evacuation of `host` in `run`. An evacuation of the
/// host that began and did not end is resumed (its run id kept, nothing
/// moved twice: its VMs are planned again from where they are now, its
/// migrations in flight followed). `nested`: the run is a runbook's, and
/// the evacuation gets a run id of its own (so that it can be rolled back
/// alone).
pub fn evacuate(
    run: &Run,
    cluster: &Cluster,
    host: &str,
    settings: &Settings,
    nested: bool,
    observer: &dyn Observer,
) -> Result<Report, EvacuateError> {
    settings.validate()?;
    let host = cluster.host(host)?.name.clone();
    let found = unfinished(cluster, &host)?;
    let (id, parent) = match &found {
        Some(open) => (open.evacuation.run.clone(), open.evacuation.parent.clone()),
        None if nested => (crate::ops::run::new_id(), Some(run.id.clone())),
        None => (run.id.clone(), None),
    };
    let plan = super::plan(cluster, &host, settings, &id, parent.as_deref())?;
    if let Some(open) = &found {
        observer.note(&Note::Resuming {
            run: id.clone(),
            found: found_of(cluster, open, &plan),
        });
    }
    execute(run, cluster, &plan, found.as_ref(), observer)
}

/// Runs a saved plan (`vmig apply`): refused when the cluster changed
/// since it was made (the changes named), or when another evacuation of
/// its host is unfinished; the same plan's unfinished run is resumed.
pub fn apply(
    run: &Run,
    cluster: &Cluster,
    plan: &Evacuation,
    observer: &dyn Observer,
) -> Result<Report, EvacuateError> {
    if plan.format != super::FORMAT {
        return Err(EvacuateError::Invalid(format!(
            "the plan's format is {}; this vmig reads format {}",
            plan.format,
            super::FORMAT
        )));
    }
    plan.settings.validate()?;
    cluster.host(&plan.host)?;
    let found = unfinished(cluster, &plan.host)?;
    if let Some(open) = &found
        && open.evacuation.run != plan.run
    {
        return Err(EvacuateError::Busy {
            host: plan.host.clone(),
            run: open.evacuation.run.clone(),
        });
    }
    let now = Snapshot::take(cluster);
    let changes = stale::changes(plan, &now);
    if !changes.is_empty() {
        return Err(EvacuateError::Stale(changes));
    }
    if let Some(open) = &found {
        observer.note(&Note::Resuming {
            run: plan.run.clone(),
            found: found_of(cluster, open, plan),
        });
    }
    execute(run, cluster, plan, found.as_ref(), observer)
}

/// What an unfinished run had done, in sentences.
fn found_of(cluster: &Cluster, open: &Unfinished, plan: &Evacuation) -> Vec<String> {
    let mut found = vec![format!(
        "run {} began evacuating {}{} and did not end",
        open.evacuation.run,
        open.evacuation.host,
        open.by.as_deref().map_or_else(String::new, |by| format!(" (by {by})"))
    )];
    let (records, _) = history::history(
        cluster,
        &Query {
            run: Some(open.evacuation.run.clone()),
            ..Query::default()
        },
    );
    for record in records {
        let to = record.to.as_deref().unwrap_or("?");
        found.push(match record.outcome.as_str() {
            "moved" => format!("it moved {} to {to}", record.vm),
            "running" => format!("its move of {} to {to} is still in flight: followed", record.vm),
            other => format!("its move of {} to {to} ended {other}", record.vm),
        });
    }
    for vm in &open.stopping {
        found.push(format!("it stopped {vm}"));
    }
    found.push(format!(
        "{} VM(s) still on {} are planned again",
        plan.steps.len() + plan.stopped.len(),
        plan.host
    ));
    found
}

/// Runs `plan` (from [`super::plan`], or a saved one checked by [`apply`]).
pub fn execute(
    run: &Run,
    cluster: &Cluster,
    plan: &Evacuation,
    resumed: Option<&Unfinished>,
    observer: &dyn Observer,
) -> Result<Report, EvacuateError> {
    let started = Instant::now();
    let host = plan.host.clone();
    let source = cluster.host(&host)?.clone();
    let client = cluster.client(&source);
    observer.note(&Note::Planned {
        run: plan.run.clone(),
        kind: "evacuate",
        of: host.clone(),
        steps: plan.steps.len() + plan.in_flight.len(),
        stopped: plan.stopped.len(),
        left: plan.left.len(),
    });
    let mut vms: Vec<VmResult> = Vec::new();
    for left in &plan.left {
        let result = VmResult {
            status: if left.rule == "maintenance.pin" {
                Status::Pinned
            } else {
                Status::Left
            },
            rule: Some(left.rule.clone()),
            message: Some(left.reason.clone()),
            ..VmResult::new(&left.vm, &host, None)
        };
        observer.note(&Note::Result(result.clone()));
        vms.push(result);
    }
    // The plan is journaled first: a run killed from here on is found and
    // resumed (its cordon too).
    if !run.dry_run && resumed.is_none() {
        record(cluster, &host, &plan.run, RunEvent::Evacuating { plan: plan.to_json() })?;
    }
    // The cluster now: the host's cordon, the steps done already, the budgets.
    let now = Snapshot::take(cluster);
    if !now.host(&host).is_some_and(|h| h.reachable) {
        // Its answer is the error: nothing is done to a host that cannot be asked.
        cluster.facts(&host)?;
    }
    // The host takes no new VMs while it is emptied (a cordon already there
    // is left as it is: its run, or its operator, lifts it); lifting the
    // cordon ends the run's pending steps.
    if !now.host(&host).is_some_and(|h| h.cordoned)
        && run.change(Change::Cordon {
            host: host.clone(),
            on: true,
        })? == Go::Ahead
    {
        client
            .call::<Cordon>(Request::Cordon {
                reason: Some(format!("evacuation {}", plan.run)),
                run: Some(plan.run.clone()),
            })
            .map_err(ClusterError::from)?;
        observer.note(&Note::Host {
            host: host.clone(),
            what: "cordoned".into(),
        });
    }
    // Policy `stop`: shut down now, started again by a rollback.
    for vm in &plan.stopped {
        let result = stop(run, cluster, &host, &plan.run, vm);
        observer.note(&Note::Result(result.clone()));
        vms.push(result);
    }
    let moves: Vec<Move> = plan
        .in_flight
        .iter()
        .map(|f| Move {
            vm: f.vm.clone(),
            from: host.clone(),
            to: f.to.clone(),
            memory_bytes: plan.snapshot.vm(&f.vm).map_or(0, |v| v.memory_bytes),
            watch: Some(f.id.clone()),
            skip: Vec::new(),
            after: Vec::new(),
        })
        .chain(plan.steps.iter().map(|s| Move {
            vm: s.vm.clone(),
            from: host.clone(),
            to: s.to.clone(),
            memory_bytes: s.memory_bytes,
            watch: None,
            skip: Vec::new(),
            after: s.after.clone(),
        }))
        .collect();
    // Steps an earlier attempt of this run made already (an apply resumed).
    let (done, moves): (Vec<Move>, Vec<Move>) = moves
        .into_iter()
        .partition(|m| m.watch.is_none() && now.vm(&m.vm).is_some_and(|v| v.host == m.to));
    for step in done {
        let result = VmResult {
            status: Status::Moved,
            message: Some("moved by this run before it was interrupted".into()),
            ..VmResult::new(&step.vm, &host, Some(&step.to))
        };
        observer.note(&Note::Result(result.clone()));
        vms.push(result);
    }
    let hold = || -> Option<String> {
        if run.dry_run {
            return None;
        }
        let facts = cluster.facts(&host).ok()?;
        facts
            .cordon
            .is_none()
            .then(|| format!("{host} was uncordoned, which ends the evacuation's steps not started"))
    };
    let schedule = Schedule {
        parallel: plan.settings.parallel,
        on_error: plan.settings.on_error,
        deadline: started + plan.settings.deadline(),
        run_id: &plan.run,
        options: plan.settings.migration.clone(),
        force: plan.settings.force,
        skip: plan.settings.skip_rules()?.with(&[super::moves::SCHEDULED]),
        hold: &hold,
        planned: true,
    };
    vms.extend(run_moves(run, cluster, &moves, &now, &schedule, observer));
    let complete = if run.dry_run {
        plan.blocked().next().is_none()
    } else {
        verify(cluster, &host, &mut vms)
    };
    let report = Report {
        run: plan.run.clone(),
        kind: "evacuate",
        of: host.clone(),
        dry_run: run.dry_run,
        resumed: resumed.is_some(),
        complete,
        vms,
        elapsed_ms: started.elapsed().as_millis() as u64,
    };
    // An interrupted run journals no end: running it again resumes it.
    if !run.dry_run && !run.interrupted() {
        let outcome = if complete { "complete" } else { "partial" };
        let detail = serde_json::json!({
            "moved": report.count(Status::Moved),
            "left": report.not_ok().map(|v| v.vm.clone()).collect::<Vec<_>>(),
        });
        record(
            cluster,
            &host,
            &plan.run,
            RunEvent::Ended {
                outcome: outcome.into(),
                detail,
            },
        )?;
    }
    Ok(report)
}

/// Notes `event` of `run` in `host`'s journal of runs.
pub(crate) fn record(cluster: &Cluster, host: &str, run: &str, event: RunEvent) -> Result<(), ClusterError> {
    cluster
        .host_client(host)?
        .call::<serde_json::Value>(Request::RecordRun {
            run: run.to_string(),
            event,
        })?;
    Ok(())
}

/// Shuts `vm` down on `host` for the maintenance, journaled first.
fn stop(run: &Run, cluster: &Cluster, host: &str, run_id: &str, vm: &str) -> VmResult {
    let base = VmResult::new(vm, host, None);
    let change = Change::Stop {
        vm: vm.to_string(),
        host: host.to_string(),
    };
    let go = match run.change(change) {
        Ok(go) => go,
        Err(e) => return base.refused_by(&e),
    };
    if go == Go::DryRun {
        return VmResult {
            status: Status::Planned,
            message: Some("would be stopped (maintenance = \"stop\")".into()),
            ..base
        };
    }
    let stopped = record(cluster, host, run_id, RunEvent::Stopping { vm: vm.to_string() }).and_then(|()| {
        cluster
            .host_client(host)?
            .call::<serde_json::Value>(Request::StopVm { name: vm.to_string() })
            .map_err(ClusterError::from)
    });
    base.after(
        stopped,
        Status::Stopped,
        "stopped for the maintenance (maintenance = \"stop\"); a rollback starts it",
    )
}

/// Where every VM is now, asked of the agents: each result's `now_on`; and
/// whether `host` is empty of running VMs that could move.
fn verify(cluster: &Cluster, host: &str, vms: &mut [VmResult]) -> bool {
    let (listing, unanswered) = locate(cluster, vms);
    // The evacuated host itself must answer for the run to be complete.
    !unanswered.iter().any(|h| h == host)
        && !listing.iter().any(|l| {
            l.host.name == host
                && matches!(l.info.state, VmState::Running | VmState::Migrating)
                && l.info.maintenance == Maintenance::Live
        })
}

/// Where each VM of `vms` is now (`now_on`), asked of every agent; a moved
/// VM found elsewhere than its target is a failure, and one not found
/// while a host is silent is "not verified". Returns the listing and the
/// hosts that did not answer.
pub(crate) fn locate(cluster: &Cluster, vms: &mut [VmResult]) -> (Vec<crate::ops::cluster::Located>, Vec<String>) {
    let (listing, failed) = cluster.listing();
    let unanswered: Vec<String> = failed.into_iter().map(|(h, _)| h.name).collect();
    for result in vms.iter_mut() {
        result.now_on = listing
            .iter()
            .find(|l| l.info.name == result.vm)
            .map(|l| l.host.name.clone());
        if result.now_on.is_none() && !unanswered.is_empty() {
            // Not found where it was asked: it may be on a host that did
            // not answer. Said, not judged.
            let note = format!("not verified: {} did not answer", unanswered.join(", "));
            result.message = Some(match result.message.take() {
                Some(message) => format!("{message}; {note}"),
                None => note,
            });
            continue;
        }
        // A move reported as done is checked: the VM must be there.
        if result.status == Status::Moved && result.now_on != result.to {
            result.status = Status::Failed;
            result.code = Some(Code::Failed);
            result.message = Some(format!(
                "reported moved, but it is on {} now",
                result.now_on.as_deref().unwrap_or("no host")
            ));
        }
    }
    (listing, unanswered)
}
