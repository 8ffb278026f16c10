//! `vmig migrate VM HOST`: live-migrate a VM between hosts through their agents.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};
use clap::Args;
use vmig_backend::api::MigrateResult;
use vmig_backend::size::format_size;

use crate::cli::options::MigrationArgs;
use crate::cli::signals;
use crate::exit::Exit;
use crate::ops::cluster::Cluster;
use crate::ops::migrate::{self as flow, MigrateError, Outcome, Plan};
use crate::ops::run::{Consent, Run};
use crate::render::progress::{Display, failed_line, failure_message, migrated_line, print_report};

#[derive(Debug, Args)]
#[command(
    after_help = "The exit code says where the VM is: 0 on HOST; 1 it did not move (failed, rolled \
    back or cancelled: it stays on its source, and the message says how it is there); 6 in doubt \
    (whether HOST runs it is not known yet; it cannot start on its source until the agents settle it); \
    7 unknown VM or host; 8 the VM is already migrating, already on HOST or not running; 11 lost \
    (the process that ran its only copy died).\n\n\
    The prechecks (`vmig precheck`) run first: an error stops the move before anything is \
    asked of the target (exit 1, or 8 when the VM is busy), and a warning needs --force.\n\n\
    Ctrl-C or SIGTERM cancels the migration, unless its switchover has begun: then vmig waits for \
    the outcome and reports it. `vmig cancel VM` does the same from elsewhere.\n\n\
    Examples:\n  vmig migrate vm1 hostB\n  vmig migrate vm1 hostB --downtime-ms 20 --bandwidth 500M --json"
)]
pub struct MigrateArgs {
    /// The VM to move.
    vm: String,
    /// The host to move it to (a name from the inventory).
    host: String,
    #[command(flatten)]
    limits: MigrationArgs,
    /// Check that the move could start (the prechecks), and say what it would do; move nothing.
    #[arg(long)]
    dry_run: bool,
    /// Move despite the prechecks' warnings (never despite an error).
    #[arg(long)]
    force: bool,
    /// Do not check this precheck rule (repeatable; `vmig precheck --help` lists them).
    #[arg(long, value_name = "RULE")]
    skip: Vec<String>,
    /// Probe ADDR (the VM's IPv4 address) with ICMP echo from here during the move, and report
    /// the probes lost and the longest gap between two answers beside the downtime.
    #[arg(long, value_name = "ADDR")]
    ping: Option<std::net::IpAddr>,
    /// With --ping: milliseconds between probes.
    #[arg(long, value_name = "MS", default_value_t = 10, requires = "ping")]
    ping_interval_ms: u64,
    /// Print progress and the result as JSON lines (the default without a terminal).
    #[arg(long)]
    json: bool,
}

pub fn exec(args: &MigrateArgs, inventory: Option<&Path>) -> Result<Exit> {
    let options = args.limits.options()?;
    let skip =
        crate::ops::precheck::Skip::parse(&args.skip).map_err(|e| crate::cli::UsageError(format!("--skip: {e}")))?;
    let cluster = Cluster::open(inventory)?;
    let mut plan = flow::plan(&cluster, &args.vm, &args.host, options)?;
    plan.force = args.force;
    plan.skip = skip;
    if args.ping_interval_ms == 0 {
        return Err(crate::cli::UsageError("--ping-interval-ms: must be at least 1".into()).into());
    }
    plan.ping = args
        .ping
        .map(|address| (address, std::time::Duration::from_millis(args.ping_interval_ms)));
    let json = args.json || !std::io::stderr().is_terminal();
    if args.dry_run {
        return dry_run(&cluster, &plan, json);
    }
    run(&cluster, &plan, json)
}

/// `--dry-run`: the prechecks, and what the move would do; nothing moves.
fn dry_run(cluster: &Cluster, plan: &Plan, json: bool) -> Result<Exit> {
    let verdict = crate::ops::precheck::precheck(cluster, &plan.vm, &plan.target.name, &plan.checks())?;
    let would = verdict.ok && (verdict.warnings.is_empty() || plan.force);
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(
            out,
            "{}",
            serde_json::json!({ "dry_run": { "vm": plan.vm, "source": plan.source.name, "target": plan.target.name, "would_move": would, "precheck": verdict } })
        )?;
    } else {
        for finding in verdict.errors.iter().chain(&verdict.warnings) {
            let word = if finding.severity == crate::ops::precheck::Severity::Error {
                "error"
            } else {
                "warning"
            };
            writeln!(out, "{word:<8} {:<19} {}", finding.rule, finding.message)?;
        }
        let size = plan.info.as_ref().map_or(0, |info| info.memory_bytes);
        let what = format!(
            "{} ({}) from {} to {}",
            plan.vm,
            format_size(size),
            plan.source.name,
            plan.target.name
        );
        match (verdict.ok, verdict.warnings.is_empty() || plan.force) {
            (true, true) => writeln!(out, "would migrate {what}; the prechecks pass")?,
            (true, false) => writeln!(out, "would not migrate {what} without --force: the prechecks warn")?,
            (false, _) => writeln!(out, "would not migrate {what}: a precheck failed")?,
        }
    }
    Ok(if would { Exit::Ok } else { Exit::Failure })
}

/// Runs `plan` with progress on the terminal (or JSON lines), Ctrl-C and
/// SIGTERM cancelling it; reports the outcome and returns its exit code.
pub fn run(cluster: &Cluster, plan: &Plan, json: bool) -> Result<Exit> {
    let interrupts = signals::catch().context("cannot catch Ctrl-C")?;
    // The command names its one change: it needs no other consent.
    let run = Run::new(false, Consent::Given, Arc::clone(&interrupts.cancel));
    let size = plan.info.as_ref().map_or(1, |info| info.memory_bytes);
    let mut display = Display::new(json).tagged(&plan.id, &plan.vm).sized(size);
    let mut seen = 0;
    let result = flow::migrate(&run, cluster, plan, &mut |event| {
        let count = interrupts.count.load(Ordering::SeqCst);
        if count > seen {
            seen = count;
            if count == 1 {
                display.note("cancelling", &serde_json::json!({ "cancelling": { "id": plan.id } }));
            }
        }
        display.show(event);
    });
    if result.is_ok() {
        display.complete();
    }
    display.finish();
    let result = result.map(|outcome| match outcome {
        Outcome::Moved(result) => *result,
        Outcome::Planned => unreachable!("not a dry run"),
    });
    report(plan, result, json)
}

/// Prints a migration's outcome (JSON lines on standard output with
/// `json`; errors also on standard error) and returns its exit code.
pub fn report(plan: &Plan, result: Result<MigrateResult, MigrateError>, json: bool) -> Result<Exit> {
    let error = match result {
        Ok(result) => {
            print_moved(plan, &result, json)?;
            return Ok(Exit::Ok);
        }
        Err(error) => error,
    };
    let code = error.code();
    let message = failure_message(plan, &error);
    if json {
        let _ = writeln!(std::io::stdout().lock(), "{}", failed_line(plan, code, &message));
    }
    eprintln!("vmig: {message}");
    Ok(Exit::of(code))
}

fn print_moved(plan: &Plan, result: &MigrateResult, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", migrated_line(result))?;
        return Ok(());
    }
    match &result.report {
        Some(report) => {
            drop(out);
            print_report(
                report,
                &format!(
                    "migrated {} from {} to {}: it runs there now",
                    plan.vm, plan.source.name, plan.target.name
                ),
                false,
            )?;
        }
        None => writeln!(out, "{} now runs on {}", plan.vm, plan.target.name)?,
    }
    let mut out = std::io::stdout().lock();
    if let Some(probe) = &result.probe {
        writeln!(
            out,
            "  ping {}: {} sent every {} ms, {} lost, longest gap {:.1} ms, round trip median {:.2} ms, max {:.1} ms",
            probe.address,
            probe.sent,
            probe.interval_ms,
            probe.lost,
            probe.longest_gap_ms,
            probe.rtt_median_ms,
            probe.rtt_max_ms
        )?;
    }
    if let Some(note) = &result.note {
        writeln!(out, "  {note}")?;
    }
    if result.queued_ms > 100 {
        writeln!(
            out,
            "  waited {:.1} s for a migration slot",
            result.queued_ms as f64 / 1000.0
        )?;
    }
    Ok(())
}
