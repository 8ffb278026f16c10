//! `vmig evacuate HOST` and `vmig apply PLAN`: empty a host for
//! maintenance, from a plan made now or saved earlier.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

use crate::cli::UsageError;
use crate::cli::options::MigrationArgs;
use crate::cli::signals;
use crate::exit::Exit;
use crate::ops::cluster::Cluster;
use crate::ops::evacuate::{self, Evacuation, OnError, Report, Settings};
use crate::ops::run::{Consent, Run};
use crate::render::evacuation::EvacuationUi;

const AFTER_HELP: &str = "The plan comes first: every VM of HOST is checked against every other \
    host (the prechecks), then placed with the others at once (memory is spent as VMs are placed, \
    a redundancy group's members stay in distinct chassis, cordoned hosts take none), the biggest \
    first. VMs with maintenance = \"stop\" are shut down (a rollback starts them), \"pin\" ones stay; \
    a VM no host can take is named with the rule that blocks it before anything moves.\n\n\
    Then HOST is cordoned under the run's name, and the moves run, --parallel at once within each \
    host's migration budget, each VM's prechecks re-run just before it moves. Each VM is tried once. \
    `vmig host uncordon HOST` ends the moves not started; past --deadline nothing new starts and \
    moves in flight are cancelled. At the end every VM is looked up where it runs now.\n\n\
    Exit code: 0 when HOST holds no running VM that could move; 13 when VMs were left (each named, \
    with why); 12 when interrupted. Interrupted (Ctrl-C, vmig killed, an agent restarted): run the \
    same command again and it resumes the run from the journal, moving nothing twice. \
    `vmig rollback --last` moves everything back.\n\n\
    Examples:\n  vmig evacuate hostA\n  vmig evacuate hostA --dry-run\n  \
    vmig evacuate hostA --to hostB,hostC --parallel 4\n  vmig evacuate hostA -o plan.json && vmig apply plan.json";

#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct EvacuateArgs {
    /// The host to empty.
    host: String,
    /// Only these hosts may take its VMs (comma-separated; default: any other).
    #[arg(long, value_name = "HOST,...", value_delimiter = ',')]
    to: Vec<String>,
    /// Moves at once (each host's migration budget still holds).
    #[arg(long, value_name = "N", default_value_t = evacuate::PARALLEL)]
    parallel: usize,
    /// After a VM fails to move: `continue` with the others, or `stop` starting new moves.
    #[arg(long, value_name = "WHAT", default_value = "continue", value_parser = ["continue", "stop"])]
    on_error: String,
    /// The most the evacuation may take (`90s`, `30m`, `2h`): then nothing new starts, and
    /// moves in flight are cancelled.
    #[arg(long, value_name = "TIME", default_value = "1h")]
    deadline: String,
    /// Plan, print the plan, move nothing.
    #[arg(long)]
    dry_run: bool,
    /// Write the plan to FILE (JSON) and move nothing; `vmig apply FILE` runs it.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
    /// Move VMs despite the prechecks' warnings (never despite an error).
    #[arg(long)]
    force: bool,
    /// Do not check this precheck rule (repeatable).
    #[arg(long, value_name = "RULE")]
    skip: Vec<String>,
    #[command(flatten)]
    limits: MigrationArgs,
    /// Print events and the report as JSON lines (the default without a terminal).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
#[command(
    after_help = "The plan (from `vmig evacuate HOST -o FILE`) runs as it was made, unless \
    the cluster changed since in a way that matters to it: a VM of its host gone, new, stopped, \
    resized or moved elsewhere; a target gone, cordoned, unreachable or without room for what the \
    plan still sends it; a redundancy group's member moved. Then nothing moves (exit 8), and each \
    change is named: make a new plan. An apply that was interrupted resumes when run again.\n\n\
    Exit codes as `vmig evacuate`.\n\nExample:\n  vmig evacuate hostA -o plan.json\n  vmig apply plan.json"
)]
pub struct ApplyArgs {
    /// The plan file.
    plan: PathBuf,
    /// Print events and the report as JSON lines (the default without a terminal).
    #[arg(long)]
    json: bool,
}

/// A duration as operators write it: `90s`, `30m`, `2h`, `1d`, or seconds.
pub fn duration(text: &str, flag: &str) -> Result<u64, UsageError> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let value: u64 = number
        .parse()
        .map_err(|_| UsageError(format!("{flag}: {text:?} is not a duration (90s, 30m, 2h)")))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(UsageError(format!("{flag}: {other:?} is not a unit: s, m, h or d"))),
    };
    match value.checked_mul(scale) {
        Some(0) | None => Err(UsageError(format!("{flag}: {text:?} must be more than 0 and sane"))),
        Some(seconds) => Ok(seconds),
    }
}

pub fn exec(args: &EvacuateArgs, inventory: Option<&Path>) -> Result<Exit> {
    let settings = Settings {
        to: args.to.clone(),
        parallel: args.parallel,
        on_error: OnError::parse(&args.on_error).map_err(|e| UsageError(format!("--on-error: {e}")))?,
        deadline_s: duration(&args.deadline, "--deadline")?,
        force: args.force,
        skip: args.skip.clone(),
        migration: args.limits.options()?,
    };
    settings
        .validate()
        .map_err(|e| UsageError(format!("--{}", crate::ops::code::describe(&e))))?;
    let cluster = Cluster::open(inventory)?;
    let json = args.json || !std::io::stderr().is_terminal();
    if let Some(path) = &args.output {
        let plan = evacuate::plan(&cluster, &args.host, &settings, &crate::ops::run::new_id(), None)?;
        let text = serde_json::to_string_pretty(&plan)?;
        std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))?;
        print_plan(&plan, json)?;
        if !json {
            println!(
                "plan written to {}; `vmig apply {}` runs it",
                path.display(),
                path.display()
            );
        }
        return Ok(Exit::Ok);
    }
    let interrupts = signals::catch().context("cannot catch Ctrl-C")?;
    // The command names its change (empty HOST): it needs no other consent.
    let run = Run::new(args.dry_run, Consent::Given, Arc::clone(&interrupts.cancel));
    let ui = EvacuationUi::new(json);
    let report = evacuate::execute::evacuate(&run, &cluster, &args.host, &settings, false, &ui);
    finish(&run, &ui, report)
}

pub fn apply(args: &ApplyArgs, inventory: Option<&Path>) -> Result<Exit> {
    let text = std::fs::read_to_string(&args.plan).with_context(|| format!("cannot read {}", args.plan.display()))?;
    let plan: Evacuation = serde_json::from_str(&text)
        .map_err(|e| UsageError(format!("{}: not an evacuation plan: {e}", args.plan.display())))?;
    let cluster = Cluster::open(inventory)?;
    let json = args.json || !std::io::stderr().is_terminal();
    let interrupts = signals::catch().context("cannot catch Ctrl-C")?;
    let mut run = Run::new(false, Consent::Given, Arc::clone(&interrupts.cancel));
    run.id.clone_from(&plan.run);
    let ui = EvacuationUi::new(json);
    let report = evacuate::execute::apply(&run, &cluster, &plan, &ui);
    finish(&run, &ui, report)
}

/// Prints the report and says what the exit code is.
pub fn finish(run: &Run, ui: &EvacuationUi, report: Result<Report, evacuate::EvacuateError>) -> Result<Exit> {
    let report = report?;
    ui.report(&report);
    Ok(if run.interrupted() {
        Exit::Interrupted
    } else if report.complete {
        Exit::Ok
    } else {
        Exit::Partial
    })
}

/// A plan, as `-o` shows it.
fn print_plan(plan: &Evacuation, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::json!({ "plan": plan }))?;
        return Ok(());
    }
    writeln!(out, "plan {} to evacuate {}:", plan.run, plan.host)?;
    for (n, step) in plan.steps.iter().enumerate() {
        writeln!(
            out,
            "  {}. move {} ({}) to {}",
            n + 1,
            step.vm,
            vmig_backend::size::format_size(step.memory_bytes),
            step.to
        )?;
    }
    for vm in &plan.stopped {
        writeln!(out, "  stop {vm} (maintenance = \"stop\")")?;
    }
    for left in &plan.left {
        writeln!(out, "  leave {} [{}]: {}", left.vm, left.rule, left.reason)?;
    }
    for host in &plan.unreachable {
        writeln!(out, "  {host} did not answer: not used")?;
    }
    Ok(())
}
