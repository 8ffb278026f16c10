//! The migrate flow as the operator sees it: start a migration by id on the
//! source's agent, follow it to its outcome, cancel it on request, and tell
//! the truth about where the VM is when the connection to the agent fails.
//!
//! The source's agent drives the migration; this side only watches. When
//! the watch breaks (the agent died, restarted, stopped, or the link to it
//! did), the flow asks again by id: the source's agent (`watch_migration`),
//! else the target's (`migration`: did the VM arrive there?). It reports a
//! migration as in doubt only when neither could say within
//! [`patience`], naming the command that shows the answer later.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use thiserror::Error;
use vmig_backend::api::{self, Cancelled, IncomingState, MigrateProgress, MigrateResult, MigrationInfo, Peer, Request};
use vmig_backend::client::{Client, ClientError};
use vmig_backend::migration::MigrationOptions;

use super::cluster::{Cluster, ClusterError, Located};
use super::code::Code;
use super::precheck::{self, Finding, PrecheckError, Verdict};
use super::run::{Change, Go, Run, RunError};

/// Findings in one line: `rule: message; rule: message`.
fn findings(list: &[Finding]) -> String {
    list.iter()
        .map(|f| format!("{}: {}", f.rule, f.message))
        .collect::<Vec<_>>()
        .join("; ")
}
use crate::inventory::HostEntry;

/// How long a watch waits for the agent's next line before it counts the
/// connection as lost (agents send one at least every second).
const SILENCE: Duration = Duration::from_secs(10);
/// How often a lost migration is asked about again.
const RETRY: Duration = Duration::from_millis(500);

/// One migration to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub id: String,
    pub vm: String,
    pub source: HostEntry,
    pub target: HostEntry,
    pub options: MigrationOptions,
    /// The VM as its source listed it when the plan was made.
    pub info: Option<api::VmInfo>,
    /// Move despite the prechecks' warnings (never despite an error).
    pub force: bool,
    /// Rules not to check (the operator takes their risk).
    pub skip: precheck::Skip,
    /// The run its journal entries name, when not the [`Run`]'s own (an
    /// evacuation inside a runbook is a run of its own).
    pub run_id: Option<String>,
    /// Probe this address (the VM's) during the move, every so often.
    pub ping: Option<(std::net::IpAddr, Duration)>,
}

impl Plan {
    /// How its prechecks are taken.
    pub fn checks(&self) -> precheck::Checks {
        precheck::Checks {
            skip: self.skip.clone(),
            options: self.options.clone(),
        }
    }

    /// The change this plan makes.
    pub fn change(&self) -> Change {
        Change::Migrate {
            vm: self.vm.clone(),
            from: self.source.name.clone(),
            to: self.target.name.clone(),
        }
    }
}

/// Checks a migration of `vm` to `host` before anything is asked of an
/// agent that changes anything: the options, the target's name, where the
/// VM is (one request per host), and that it is not there already.
pub fn plan(cluster: &Cluster, vm: &str, host: &str, options: MigrationOptions) -> Result<Plan, MigrateError> {
    options.validate().map_err(MigrateError::Options)?;
    let target = cluster.host(host)?.clone();
    let Located { host: source, info } = cluster.locate(vm)?;
    if source.name == target.name {
        return Err(MigrateError::AlreadyThere {
            vm: vm.to_string(),
            host: target.name,
        });
    }
    Ok(Plan {
        id: new_id(),
        vm: vm.to_string(),
        source,
        target,
        options,
        info: Some(info),
        force: false,
        skip: precheck::Skip::default(),
        run_id: None,
        ping: None,
    })
}

/// How a migration that did not fail ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The VM runs on its target.
    Moved(Box<MigrateResult>),
    /// A dry run: nothing was asked; the plan holds the move.
    Planned,
}

/// Where one migration's events go, to its end (a bar, JSON lines, a
/// runbook's output).
pub trait Progress {
    fn event(&mut self, event: &Event);
    fn done(&mut self, outcome: &Result<Outcome, MigrateError>);
}

/// What happens, as it happens.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A line of the agent's progress.
    Progress(MigrateProgress),
    /// A cancel was asked and the source's agent answered.
    Cancel { accepted: bool },
    /// The watch broke; the flow asks again (`host` is who it asks).
    Asking { host: String, why: String },
    /// The prechecks passed (perhaps with warnings, when forced).
    Checked(Box<Verdict>),
}

/// How a migration did not end with the VM on its target.
#[derive(Debug, Error)]
pub enum MigrateError {
    /// A migration option is out of range (the message names it).
    #[error("invalid migration option {0}")]
    Options(String),
    /// The VM or the target could not be found, or the hosts asked.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("{vm} runs on {host} already")]
    AlreadyThere { vm: String, host: String },
    /// The run did not let it start (dry run aside): no consent, declined,
    /// interrupted.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The prechecks could not be made (a host did not answer).
    #[error(transparent)]
    Precheck(#[from] PrecheckError),
    /// A precheck found an error: nothing was started.
    #[error("{} cannot move to {}: {}", .0.vm, .0.target, findings(&.0.errors))]
    Blocked(Box<Verdict>),
    /// The prechecks found warnings and the move was not forced.
    #[error(
        "{} was not moved to {}: {}; pass --force (force = true in Lua) to move it anyway",
        .0.vm, .0.target, findings(&.0.warnings)
    )]
    Warned(Box<Verdict>),
    /// An agent's answer: a refusal before anything started, or the
    /// migration's outcome.
    #[error("{message}")]
    Outcome { code: api::Code, message: String },
    /// The source's agent could not be reached: nothing was started.
    #[error("nothing was started")]
    NotStarted(#[source] ClientError),
    /// The VM's address could not be probed (`--ping`): nothing was started.
    #[error(transparent)]
    Probe(super::probe::ProbeError),
    /// Neither agent could say what became of the migration in time.
    #[error(
        "the outcome of migration {id} is not known: {detail}; `vmig vms` shows where {vm} runs once the agents answer"
    )]
    Unknown { id: String, vm: String, detail: String },
}

impl MigrateError {
    /// The stable code scripts decide on.
    pub fn code(&self) -> Code {
        match self {
            MigrateError::Options(_) | MigrateError::Probe(_) => Code::Invalid,
            MigrateError::Cluster(e) => e.code(),
            MigrateError::AlreadyThere { .. } => Code::Conflict,
            MigrateError::Run(e) => e.code(),
            MigrateError::Precheck(e) => e.code(),
            MigrateError::Blocked(verdict) => verdict.errors.first().map_or(Code::Refused, |f| f.code()),
            MigrateError::Warned(_) => Code::Refused,
            MigrateError::Outcome { code, .. } => Code::of_api(*code),
            MigrateError::NotStarted(e) => Code::of_client(e),
            MigrateError::Unknown { .. } => Code::InDoubt,
        }
    }
}

/// How long the flow keeps asking about a migration whose watch broke: its
/// time limit, and then the agents' settle time, generously.
pub fn patience(options: &MigrationOptions) -> Duration {
    Duration::from_secs(options.timeout_s) + options.timeouts.handoff() * 4 + options.timeouts.stream() * 2
}

/// A fresh id for a migration this client starts.
pub fn new_id() -> String {
    vmig_backend::agent::migrations::new_id()
}

/// Runs `plan` as part of `run`: once the run lets it (under a dry run it
/// only joins the plan), starts it on the source's agent and follows it to
/// its end. The run's cancel is looked at with every line; once set, the
/// migration is cancelled (unless its switchover has begun: then it ends
/// as it ends).
pub fn migrate(
    run: &Run,
    cluster: &Cluster,
    plan: &Plan,
    on_event: &mut dyn FnMut(&Event),
) -> Result<Outcome, MigrateError> {
    migrate_until(run, cluster, plan, run.cancel(), on_event)
}

/// [`migrate`], cancelled when `cancel` is set (an evacuation's deadline
/// as well as Ctrl-C).
pub fn migrate_until(
    run: &Run,
    cluster: &Cluster,
    plan: &Plan,
    cancel: &Arc<AtomicBool>,
    on_event: &mut dyn FnMut(&Event),
) -> Result<Outcome, MigrateError> {
    // Stage one: nothing moves when a check fails, even in a dry run's plan.
    let verdict = precheck::precheck(cluster, &plan.vm, &plan.target.name, &plan.checks())?;
    on_event(&Event::Checked(Box::new(verdict.clone())));
    let refused = if !verdict.ok {
        Some(MigrateError::Blocked(Box::new(verdict)))
    } else if !verdict.warnings.is_empty() && !plan.force {
        Some(MigrateError::Warned(Box::new(verdict)))
    } else {
        None
    };
    if let Some(refused) = refused {
        if !run.dry_run {
            record_refusal(cluster, plan, &run.id, &refused);
        }
        return Err(refused);
    }
    if run.change(plan.change())? == Go::DryRun {
        return Ok(Outcome::Planned);
    }
    let run_id = plan.run_id.as_deref().unwrap_or(&run.id);
    start(cluster, plan, Some(run_id), on_event, cancel).map(|result| Outcome::Moved(Box::new(result)))
}

/// Notes a refused move in the source's journal, with the rules that
/// refused it (best effort: the refusal stands whether or not it is noted;
/// a dry run notes nothing, since it changes nothing).
fn record_refusal(cluster: &Cluster, plan: &Plan, run: &str, refused: &MigrateError) {
    let (MigrateError::Blocked(verdict) | MigrateError::Warned(verdict)) = refused else {
        return;
    };
    let findings = if verdict.ok { &verdict.warnings } else { &verdict.errors };
    let request = Request::RecordRefusal {
        id: plan.id.clone(),
        name: plan.vm.clone(),
        target: plan.target.name.clone(),
        run: Some(plan.run_id.as_deref().unwrap_or(run).to_string()),
        rules: findings.iter().map(|f| f.rule.to_string()).collect(),
        code: match refused.code() {
            Code::Conflict => api::Code::Conflict,
            _ => api::Code::Refused,
        },
        message: super::code::describe(refused),
    };
    let _ = cluster.client(&plan.source).call::<serde_json::Value>(request);
}

/// Starts `plan` on the source's agent and follows it to its end; `cancel`
/// is looked at with every line.
fn start(
    cluster: &Cluster,
    plan: &Plan,
    run: Option<&str>,
    on_event: &mut dyn FnMut(&Event),
    cancel: &Arc<AtomicBool>,
) -> Result<MigrateResult, MigrateError> {
    let source = cluster.client(&plan.source).patience(Some(SILENCE));
    let request = Request::Migrate {
        name: plan.vm.clone(),
        target: Peer {
            name: plan.target.name.clone(),
            address: plan.target.address.clone(),
        },
        options: plan.options.clone(),
        id: Some(plan.id.clone()),
        run: run.map(str::to_string),
    };
    let prober = match plan.ping {
        Some((address, interval)) => Some(super::probe::Prober::start(address, interval).map_err(MigrateError::Probe)?),
        None => None,
    };
    let mut canceller = Canceller::new(cluster, plan, cancel);
    let mut result = watch_start(cluster, plan, &source, request, on_event, &mut canceller);
    if let (Some(prober), Ok(result)) = (prober, &mut result) {
        result.probe = Some(prober.finish());
    }
    result
}

/// Sends the migrate request and follows it to its end.
fn watch_start(
    cluster: &Cluster,
    plan: &Plan,
    source: &Client,
    request: Request,
    on_event: &mut dyn FnMut(&Event),
    canceller: &mut Canceller<'_>,
) -> Result<MigrateResult, MigrateError> {
    let first = source.call_until::<MigrateResult>(request, &mut |line| {
        on_event(&Event::Progress(line));
        canceller.look(on_event);
        true
    });
    match first {
        Ok(result) => Ok(result),
        Err(ClientError::Status { code, message, .. }) => Err(MigrateError::Outcome { code, message }),
        // Never connected: nothing was asked, nothing started.
        Err(e @ (ClientError::Unreachable { .. } | ClientError::Tls { .. })) => Err(MigrateError::NotStarted(e)),
        Err(e) => follow(cluster, plan, &e.to_string(), on_event, canceller),
    }
}

/// Follows migration `plan.id` after its watch broke (`why`).
pub fn follow(
    cluster: &Cluster,
    plan: &Plan,
    why: &str,
    on_event: &mut dyn FnMut(&Event),
    canceller: &mut Canceller<'_>,
) -> Result<MigrateResult, MigrateError> {
    let deadline = Instant::now() + patience(&plan.options);
    let source = cluster.client(&plan.source).patience(Some(SILENCE));
    let target = cluster.client(&plan.target).patience(Some(SILENCE));
    let mut why = why.to_string();
    let mut unknown_at_source = 0;
    let mut told = String::new();
    loop {
        // Each new reason is told once, not every retry.
        if told != why {
            told.clone_from(&why);
            on_event(&Event::Asking {
                host: plan.source.name.clone(),
                why: why.clone(),
            });
        }
        let watched =
            source.call_until::<MigrateResult>(Request::WatchMigration { id: plan.id.clone() }, &mut |line| {
                on_event(&Event::Progress(line));
                canceller.look(on_event);
                true
            });
        match watched {
            Ok(result) => return Ok(result),
            Err(ClientError::Status {
                code: api::Code::NotFound,
                ..
            }) => {
                // Its agent never took the request (it was lost on the way);
                // asked more than once, in case it restarted that instant.
                unknown_at_source += 1;
                if unknown_at_source >= 3 {
                    return Err(MigrateError::Outcome {
                        code: api::Code::Failed,
                        message: format!(
                            "{}'s agent never received the migration; nothing was started, and {} stays on {}",
                            plan.source.name, plan.vm, plan.source.name
                        ),
                    });
                }
            }
            Err(ClientError::Status { code, message, .. }) => return Err(MigrateError::Outcome { code, message }),
            Err(e) => {
                why = e.to_string();
                // The source's agent cannot say: does the target know?
                if let Some(decided) = ask_target(&target, plan, &why) {
                    return decided;
                }
            }
        }
        canceller.look(on_event);
        if Instant::now() >= deadline {
            return Err(MigrateError::Unknown {
                id: plan.id.clone(),
                vm: plan.vm.clone(),
                detail: format!(
                    "neither {} nor {} could say within {} s ({why})",
                    plan.source.name,
                    plan.target.name,
                    patience(&plan.options).as_secs()
                ),
            });
        }
        std::thread::sleep(RETRY);
    }
}

/// What the target's agent knows of the migration, when that decides it.
fn ask_target(target: &Client, plan: &Plan, why: &str) -> Option<Result<MigrateResult, MigrateError>> {
    let info = target
        .call::<MigrationInfo>(Request::Migration { id: plan.id.clone() })
        .ok()?;
    let (vm, source, target_name) = (&plan.vm, &plan.source.name, &plan.target.name);
    match info.arrival? {
        IncomingState::Running | IncomingState::Stopped => Some(Ok(MigrateResult {
            id: plan.id.clone(),
            vm: vm.clone(),
            source: source.clone(),
            target: target_name.clone(),
            queued_ms: 0,
            report: None,
            probe: None,
            note: Some(format!(
                "{source}'s agent did not answer ({why}); {target_name} says {vm} arrived and is its now"
            )),
        })),
        IncomingState::Lost => Some(Err(MigrateError::Outcome {
            code: api::Code::Lost,
            message: format!(
                "{vm} moved to {target_name}, and its VMM there has died since: {vm} is lost on {target_name}"
            ),
        })),
        // The target gave up and can never run it: the VM did not move. Its
        // state on the source is the source's to say, once it answers.
        IncomingState::Gone => Some(Err(MigrateError::Outcome {
            code: api::Code::Failed,
            message: format!(
                "{vm} did not move: {target_name} never ran it and gave its copy up; {source}'s agent does not \
                 answer ({why}), so whether {vm} still runs there is not known yet (`vmig vms`)"
            ),
        })),
        IncomingState::Undecided => None,
    }
}

/// Hands a requested cancel to the source's agent, once.
#[derive(Debug)]
pub struct Canceller<'a> {
    cluster: &'a Cluster,
    plan: &'a Plan,
    wanted: &'a Arc<AtomicBool>,
    done: bool,
}

impl<'a> Canceller<'a> {
    pub fn new(cluster: &'a Cluster, plan: &'a Plan, wanted: &'a Arc<AtomicBool>) -> Self {
        Self {
            cluster,
            plan,
            wanted,
            done: false,
        }
    }

    /// Sends the cancel if one is wanted and not sent yet.
    pub fn look(&mut self, on_event: &mut dyn FnMut(&Event)) {
        if self.done || !self.wanted.load(Ordering::SeqCst) {
            return;
        }
        let client = self.cluster.client(&self.plan.source).patience(Some(SILENCE));
        if let Ok(answer) = client.call::<Cancelled>(Request::CancelMigration {
            name: self.plan.vm.clone(),
        }) {
            self.done = true;
            on_event(&Event::Cancel {
                accepted: answer.accepted,
            });
        }
    }
}

/// Cancels the running migration of `vm` (on `host`) from anywhere; returns
/// its id and whether the cancel was taken (false: its switchover had begun).
pub fn cancel(cluster: &Cluster, host: &HostEntry, vm: &str) -> Result<Cancelled, ClientError> {
    cluster
        .client(host)
        .patience(Some(SILENCE))
        .call::<Cancelled>(Request::CancelMigration { name: vm.to_string() })
}

/// Follows migration `id` (started elsewhere) to its end, from the start.
pub fn watch(cluster: &Cluster, plan: &Plan, on_event: &mut dyn FnMut(&Event)) -> Result<MigrateResult, MigrateError> {
    let never = Arc::new(AtomicBool::new(false));
    let mut canceller = Canceller::new(cluster, plan, &never);
    follow(cluster, plan, "watching", on_event, &mut canceller)
}
