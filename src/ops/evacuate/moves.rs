//! Running a list of moves (an evacuation's steps, a rollback's): several
//! at once, within each host's migration budget (its cost limit, less what
//! others use, for moves out and in alike), each VM's prechecks re-run by
//! the migrate flow just before it starts, every move tried once (a VM
//! that cannot move is reported, never retried in a loop), a deadline
//! after which nothing new starts and what is in flight is cancelled, and
//! a hold (an uncordon) that ends the moves not started.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::execute::{Status, VmResult};
use super::{SnapHost, Snapshot};
use crate::ops::cluster::Cluster;
use crate::ops::code::{Code, describe};
use crate::ops::migrate::{self as flow, MigrateError, Outcome, Plan, Progress};
use crate::ops::precheck::Skip;
use crate::ops::run::Run;
use vmig_backend::migration::MigrationOptions;

/// What a failed move does to the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// The other moves go on (the default).
    Continue,
    /// No move starts after it; those in flight end as they end.
    Stop,
}

impl OnError {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "continue" => Ok(OnError::Continue),
            "stop" => Ok(OnError::Stop),
            other => Err(format!("{other:?} is neither \"continue\" nor \"stop\"")),
        }
    }
}

/// Where an evacuation's (or rollback's) news goes: the front end's bars,
/// JSON lines or a runbook's log.
pub trait Observer: Sync {
    /// A move starts (under a dry run: is planned); its events go to what
    /// this returns.
    fn migration(&self, plan: &Plan, dry_run: bool) -> Box<dyn Progress>;
    fn note(&self, note: &Note);
}

/// What the operator is told besides the moves' own progress.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Note {
    /// The plan, before anything happens: `kind` is `evacuate` (of host
    /// `of`) or `rollback` (of run `of`); `stopped` counts VMs to stop (to
    /// start again, for a rollback), `left` those that stay (are skipped).
    Planned {
        run: String,
        kind: &'static str,
        of: String,
        steps: usize,
        stopped: usize,
        left: usize,
    },
    /// An unfinished run of the same host was found and is resumed.
    Resuming { run: String, found: Vec<String> },
    /// A VM is done with (moved, stopped, left, failed, ...).
    Result(VmResult),
    /// Something happened to a host (cordoned, uncordoned).
    Host { host: String, what: String },
}

/// One move to make: `vm` from `from` to `to`, or (`watch`) an interrupted
/// run's migration to follow to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub vm: String,
    pub from: String,
    pub to: String,
    pub memory_bytes: u64,
    pub watch: Option<String>,
    /// Rules this move's prechecks leave out besides the schedule's (a dry
    /// run's rollback: the cordon it would lift first).
    pub skip: Vec<&'static str>,
    /// Moves (by VM) of this list that must have ended before it starts.
    pub after: Vec<String>,
}

/// How the moves run.
pub struct Schedule<'a> {
    pub parallel: usize,
    pub on_error: OnError,
    pub deadline: Instant,
    /// The run id the migrations are journaled under.
    pub run_id: &'a str,
    pub options: MigrationOptions,
    pub force: bool,
    pub skip: Skip,
    /// Asked before each move starts: a reason ends the moves not started.
    pub hold: &'a (dyn Fn() -> Option<String> + Sync),
    /// The moves were prechecked by their plan just now: a dry run plans
    /// them without checking each again (a real run always does).
    pub planned: bool,
}

impl std::fmt::Debug for Schedule<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schedule")
            .field("parallel", &self.parallel)
            .field("run_id", &self.run_id)
            .finish_non_exhaustive()
    }
}

/// The rule the schedule keeps to itself: moves start within the hosts'
/// budgets, and one that must wait queues at its agent, so a warning that
/// it would queue is not a reason to leave the VM behind.
pub const SCHEDULED: &str = "concurrency.budget";

/// How often the schedule looks at the clock and Ctrl-C while moves are
/// in flight.
const TICK: Duration = Duration::from_millis(200);
/// How often it asks the hold (an agent's facts) while it cannot start more.
const HOLD_EVERY: Duration = Duration::from_secs(1);

/// Each host's budget as this schedule spends it.
#[derive(Debug, Default)]
struct Budget {
    /// Cost units others use (at the snapshot).
    others: BTreeMap<String, u32>,
    limit: BTreeMap<String, u32>,
    cost: BTreeMap<String, u32>,
    ours: BTreeMap<String, u32>,
}

impl Budget {
    fn of(hosts: &[SnapHost]) -> Self {
        let mut budget = Budget::default();
        for host in hosts {
            budget.others.insert(host.name.clone(), host.cost_in_use);
            budget.limit.insert(host.name.clone(), host.cost_limit.max(1));
            budget.cost.insert(host.name.clone(), host.cost.max(1));
        }
        budget
    }

    fn cost(&self, host: &str) -> u32 {
        self.cost.get(host).copied().unwrap_or(1)
    }

    fn room(&self, host: &str) -> u32 {
        let limit = self.limit.get(host).copied().unwrap_or(1);
        limit.saturating_sub(self.others.get(host).copied().unwrap_or(0) + self.ours(host))
    }

    fn ours(&self, host: &str) -> u32 {
        self.ours.get(host).copied().unwrap_or(0)
    }

    /// Whether a move fits both its hosts' budgets now; one move is always
    /// let through when neither host has one of ours (the agents queue it).
    fn fits(&self, step: &Move) -> bool {
        let fits = |host: &str| self.room(host) >= self.cost(host);
        (fits(&step.from) && fits(&step.to)) || (self.ours(&step.from) == 0 && self.ours(&step.to) == 0)
    }

    fn take(&mut self, step: &Move, sign: i64) {
        for host in [&step.from, &step.to] {
            let cost = i64::from(self.cost(host));
            let ours = self.ours.entry(host.clone()).or_default();
            *ours = (i64::from(*ours) + sign * cost).max(0) as u32;
        }
    }
}

/// Runs `moves` (in their order, several at once) and returns each one's
/// result, in the same order.
pub fn run_moves(
    run: &Run,
    cluster: &Cluster,
    moves: &[Move],
    snapshot: &Snapshot,
    schedule: &Schedule<'_>,
    observer: &dyn Observer,
) -> Vec<VmResult> {
    if run.dry_run && schedule.planned {
        return moves
            .iter()
            .map(|step| {
                let result = plan_only(run, cluster, step, observer);
                observer.note(&Note::Result(result.clone()));
                result
            })
            .collect();
    }
    let mut results: Vec<Option<VmResult>> = vec![None; moves.len()];
    let mut budget = Budget::of(&snapshot.hosts);
    let mut pending: Vec<usize> = (0..moves.len()).collect();
    // Per move in flight: its cancel flag.
    let mut flying: BTreeMap<usize, Arc<AtomicBool>> = BTreeMap::new();
    let mut stop_reason: Option<(Code, String)> = None;
    let mut past_deadline = false;
    let (done_tx, done_rx) = mpsc::channel::<(usize, VmResult)>();
    // The hold is asked before a move may start, and at most every
    // HOLD_EVERY while the schedule is full.
    let mut held_at: Option<Instant> = None;
    std::thread::scope(|scope| {
        loop {
            let may_start = flying.len() < schedule.parallel;
            let ask_hold = !pending.is_empty() && (may_start || held_at.is_none_or(|at| at.elapsed() >= HOLD_EVERY));
            if stop_reason.is_none() {
                stop_reason = if run.interrupted() {
                    Some((Code::Interrupted, "the run was interrupted (Ctrl-C or SIGTERM)".into()))
                } else if Instant::now() >= schedule.deadline {
                    past_deadline = true;
                    Some((Code::TimedOut, "the evacuation's deadline passed".into()))
                } else if ask_hold {
                    held_at = Some(Instant::now());
                    (schedule.hold)().map(|why| (Code::Cancelled, why))
                } else {
                    None
                };
            }
            if let Some((code, why)) = &stop_reason {
                // Nothing new starts; a deadline or Ctrl-C cancels what flies.
                for index in pending.drain(..) {
                    let result = not_started(&moves[index], *code, why);
                    observer.note(&Note::Result(result.clone()));
                    results[index] = Some(result);
                }
                if matches!(code, Code::Interrupted | Code::TimedOut) {
                    for cancel in flying.values() {
                        cancel.store(true, Ordering::SeqCst);
                    }
                }
            }
            // Start what fits, in plan order, once the moves it waits for ended.
            while flying.len() < schedule.parallel {
                let ready = |i: usize| {
                    moves[i]
                        .after
                        .iter()
                        .all(|vm| moves.iter().zip(&results).all(|(m, r)| m.vm != *vm || r.is_some()))
                };
                // Waits that can never end (a hand-edited plan) give way:
                // with nothing in flight the first pending move starts, and
                // its prechecks decide.
                let stuck = flying.is_empty() && !pending.iter().any(|&i| ready(i));
                let Some(at) = pending
                    .iter()
                    .position(|&i| (stuck || ready(i)) && budget.fits(&moves[i]))
                else {
                    break;
                };
                let index = pending.remove(at);
                let step = &moves[index];
                budget.take(step, 1);
                let cancel = Arc::new(AtomicBool::new(false));
                flying.insert(index, Arc::clone(&cancel));
                let done = done_tx.clone();
                scope.spawn(move || {
                    let result = one(run, cluster, step, schedule, &cancel, observer);
                    let _ = done.send((index, result));
                });
            }
            if flying.is_empty() && pending.is_empty() {
                break;
            }
            match done_rx.recv_timeout(TICK) {
                Ok((index, mut result)) => {
                    flying.remove(&index);
                    budget.take(&moves[index], -1);
                    if past_deadline && result.status == Status::Failed && result.code == Some(Code::Cancelled) {
                        result.status = Status::Slow;
                        result.message = Some(format!(
                            "still copying at the deadline: cancelled, it stays on {}",
                            result.from
                        ));
                    }
                    let failed = matches!(result.status, Status::Failed | Status::Blocked | Status::Slow);
                    if failed && schedule.on_error == OnError::Stop && stop_reason.is_none() {
                        stop_reason = Some((
                            Code::Failed,
                            format!(
                                "{} did not move, and the run stops at a failure (on_error = stop)",
                                result.vm
                            ),
                        ));
                    }
                    observer.note(&Note::Result(result.clone()));
                    results[index] = Some(result);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
    });
    results
        .into_iter()
        .zip(moves)
        .map(|(result, step)| {
            result.unwrap_or_else(|| not_started(step, Code::Failed, "its thread ended without a result"))
        })
        .collect()
}

/// A dry run's move that its plan checked: it joins the run's plan, and
/// the front end shows it as a planned migration.
fn plan_only(run: &Run, cluster: &Cluster, step: &Move, observer: &dyn Observer) -> VmResult {
    let base = VmResult::new(&step.vm, &step.from, Some(&step.to));
    let Some(plan) = known_plan(cluster, step, "") else {
        return hosts_gone(step, Status::NotStarted);
    };
    match run.change(plan.change()) {
        Ok(_) => {
            observer.migration(&plan, true).done(&Ok(Outcome::Planned));
            VmResult {
                status: Status::Planned,
                ..base
            }
        }
        Err(e) => base.refused_by(&e),
    }
}

/// A migration plan for `step` (its id `id`) from the inventory alone;
/// None when its hosts are no longer there.
fn known_plan(cluster: &Cluster, step: &Move, id: &str) -> Option<Plan> {
    let (Ok(source), Ok(target)) = (cluster.host(&step.from), cluster.host(&step.to)) else {
        return None;
    };
    Some(Plan {
        id: id.to_string(),
        vm: step.vm.clone(),
        source: source.clone(),
        target: target.clone(),
        options: MigrationOptions::default(),
        info: None,
        force: false,
        skip: Skip::default(),
        run_id: None,
        ping: None,
    })
}

/// `step`'s result when its hosts are no longer in the inventory.
fn hosts_gone(step: &Move, status: Status) -> VmResult {
    VmResult {
        status,
        code: Some(Code::NotFound),
        message: Some("its hosts are no longer in the inventory".into()),
        ..VmResult::new(&step.vm, &step.from, Some(&step.to))
    }
}

fn not_started(step: &Move, code: Code, why: &str) -> VmResult {
    VmResult {
        status: Status::NotStarted,
        code: Some(code),
        message: Some(format!("not started: {why}; it stays on {}", step.from)),
        ..VmResult::new(&step.vm, &step.from, Some(&step.to))
    }
}

/// One move, to its end.
fn one(
    run: &Run,
    cluster: &Cluster,
    step: &Move,
    schedule: &Schedule<'_>,
    cancel: &Arc<AtomicBool>,
    observer: &dyn Observer,
) -> VmResult {
    let base = VmResult::new(&step.vm, &step.from, Some(&step.to));
    if let Some(id) = &step.watch {
        return follow(cluster, step, id, base, observer);
    }
    let mut plan = match flow::plan(cluster, &step.vm, &step.to, schedule.options.clone()) {
        Ok(plan) => plan,
        Err(error) => return failed(base, &error),
    };
    if plan.source.name != step.from {
        return VmResult {
            status: Status::NotStarted,
            code: Some(Code::Conflict),
            message: Some(format!(
                "{} runs on {} now, not {}: not moved",
                step.vm, plan.source.name, step.from
            )),
            ..base
        };
    }
    plan.force = schedule.force;
    plan.skip = schedule.skip.with(&step.skip);
    plan.run_id = Some(schedule.run_id.to_string());
    let mut progress = observer.migration(&plan, run.dry_run);
    let outcome = flow::migrate_until(run, cluster, &plan, cancel, &mut |event| progress.event(event));
    progress.done(&outcome);
    match outcome {
        Ok(Outcome::Planned) => VmResult {
            status: Status::Planned,
            ..base
        },
        Ok(Outcome::Moved(result)) => VmResult {
            status: Status::Moved,
            id: Some(result.id.clone()),
            downtime_ms: result.report.as_ref().map(|r| r.downtime_ms),
            total_ms: result.report.as_ref().map(|r| r.total_ms),
            message: result.note.clone(),
            ..base
        },
        Err(error) => failed(base, &error),
    }
}

/// Follows an interrupted run's migration to its end.
fn follow(cluster: &Cluster, step: &Move, id: &str, base: VmResult, observer: &dyn Observer) -> VmResult {
    let Some(plan) = known_plan(cluster, step, id) else {
        return hosts_gone(step, Status::Failed);
    };
    let mut progress = observer.migration(&plan, false);
    let outcome = flow::watch(cluster, &plan, &mut |event| progress.event(event)).map(|r| Outcome::Moved(Box::new(r)));
    progress.done(&outcome);
    match outcome {
        Ok(Outcome::Moved(result)) => VmResult {
            status: Status::Moved,
            id: Some(result.id.clone()),
            downtime_ms: result.report.as_ref().map(|r| r.downtime_ms),
            total_ms: result.report.as_ref().map(|r| r.total_ms),
            message: Some("the interrupted run's migration, followed to its end".into()),
            ..base
        },
        Ok(Outcome::Planned) => base,
        Err(error) => failed(base, &error),
    }
}

/// A move that did not happen: blocked by a rule (its prechecks), slow
/// (its time limit), or failed; the VM stays on its source.
fn failed(base: VmResult, error: &MigrateError) -> VmResult {
    let (status, rule) = match error {
        MigrateError::Blocked(verdict) => (Status::Blocked, verdict.errors.first().map(|f| f.rule.to_string())),
        MigrateError::Warned(verdict) => (Status::Blocked, verdict.warnings.first().map(|f| f.rule.to_string())),
        _ if error.code() == Code::TimedOut => (Status::Slow, None),
        _ => (Status::Failed, None),
    };
    VmResult {
        status,
        code: Some(error.code()),
        rule,
        message: Some(describe(error)),
        ..base
    }
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Note::Planned {
                run,
                kind: "rollback",
                of,
                steps,
                stopped,
                left,
            } => write!(
                f,
                "run {run} rolls back run {of}: {steps} to move back, {stopped} to start, {left} skipped"
            ),
            Note::Planned {
                run,
                of,
                steps,
                stopped,
                left,
                ..
            } => write!(
                f,
                "run {run} evacuates {of}: {steps} to move, {stopped} to stop, {left} staying"
            ),
            Note::Resuming { run, found } => write!(f, "resuming run {run}: {}", found.join("; ")),
            Note::Result(result) => result.fmt(f),
            Note::Host { host, what } => write!(f, "{host} {what}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, limit: u32, in_use: u32, cost: u32) -> SnapHost {
        SnapHost {
            name: name.into(),
            reachable: true,
            free_bytes: 0,
            chassis: None,
            cordoned: false,
            cordon_run: None,
            cost_limit: limit,
            cost_in_use: in_use,
            cost,
        }
    }

    fn step(from: &str, to: &str) -> Move {
        Move {
            vm: format!("{from}-{to}"),
            from: from.into(),
            to: to.into(),
            memory_bytes: 0,
            watch: None,
            skip: Vec::new(),
            after: Vec::new(),
        }
    }

    #[test]
    fn a_move_needs_room_on_both_its_hosts_and_one_always_goes() {
        // A: 4 units, 2 a move (a slow link); B: 2 units, 1 a move.
        let mut budget = Budget::of(&[host("A", 4, 0, 2), host("B", 2, 0, 1), host("C", 8, 8, 1)]);
        let ab = step("A", "B");
        assert!(budget.fits(&ab));
        budget.take(&ab, 1);
        assert!(budget.fits(&ab), "A has 2 left, B 1");
        budget.take(&ab, 1);
        assert!(!budget.fits(&ab), "A and B are full");
        budget.take(&ab, -1);
        assert!(budget.fits(&ab), "a move that ended gives its units back");
        // C is full of others' migrations: the first of ours still goes
        // (its agent queues it), the second waits.
        let mut busy = Budget::of(&[host("B", 8, 0, 1), host("C", 8, 8, 1)]);
        let bc = step("B", "C");
        assert!(busy.fits(&bc));
        busy.take(&bc, 1);
        assert!(!busy.fits(&bc));
    }

    #[test]
    fn on_error_reads_its_two_words() {
        assert_eq!(OnError::parse("stop"), Ok(OnError::Stop));
        assert_eq!(OnError::parse("continue"), Ok(OnError::Continue));
        assert!(OnError::parse("retry").is_err());
    }
}
