//! `vmig migrate VM HOST`: live-migrate a VM between hosts through their agents.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};
use clap::Args;
use vmig_backend::api::{HostFacts, MigrateProgress, MigrateResult, Request};
use vmig_backend::size::format_size;

use crate::cli::options::MigrationArgs;
use crate::cli::signals;
use crate::cluster::{Cluster, Conflict};
use crate::exit::Exit;
use crate::ops::migrate::{self as flow, Event, MigrateError, Plan};
use crate::progress::{Display, print_report};

#[derive(Debug, Args)]
#[command(
    after_help = "The exit code says where the VM is: 0 on HOST; 1 it did not move (failed, rolled \
    back or cancelled: it stays on its source, and the message says how it is there); 6 in doubt \
    (whether HOST runs it is not known yet; it cannot start on its source until the agents settle it); \
    7 unknown VM or host; 8 the VM is already migrating, already on HOST or not running; 11 lost \
    (the process that ran its only copy died).\n\n\
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
    /// Check that the move could start, and say what it would do; move nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print progress and the result as JSON lines (the default without a terminal).
    #[arg(long)]
    json: bool,
}

pub fn exec(args: &MigrateArgs, inventory: Option<&Path>) -> Result<Exit> {
    let options = args.limits.options()?;
    let cluster = Cluster::open(inventory)?;
    let target = cluster.inventory.host(&args.host)?.clone();
    let located = cluster.locate(&args.vm)?;
    let source = located.host;
    if source.name == target.name {
        return Err(Conflict(format!("{} runs on {} already", args.vm, target.name)).into());
    }
    let json = args.json || !std::io::stderr().is_terminal();
    if args.dry_run {
        let facts: HostFacts = cluster
            .client(&target)
            .call(Request::Host)
            .with_context(|| format!("cannot ask {}", target.name))?;
        let need = located.info.memory_bytes;
        let mut out = std::io::stdout().lock();
        if facts.memory_available_bytes < need {
            anyhow::bail!(
                "{} has {} of memory available; {} needs {}",
                target.name,
                format_size(facts.memory_available_bytes),
                args.vm,
                format_size(need)
            );
        }
        if json {
            writeln!(
                out,
                "{}",
                serde_json::json!({ "dry_run": { "vm": args.vm, "source": source.name, "target": target.name, "state": located.info.state } })
            )?;
        } else {
            writeln!(
                out,
                "would migrate {} ({}, {}) from {} to {}; {} is reachable and has {} available",
                args.vm,
                located.info.state,
                format_size(need),
                source.name,
                target.name,
                target.name,
                format_size(facts.memory_available_bytes)
            )?;
        }
        return Ok(Exit::Ok);
    }
    let plan = Plan {
        id: flow::new_id(),
        vm: args.vm.clone(),
        source,
        target,
        options,
    };
    run(&cluster, &plan, json)
}

/// Runs `plan` with progress on the terminal (or JSON lines), Ctrl-C and
/// SIGTERM cancelling it; reports the outcome and returns its exit code.
pub fn run(cluster: &Cluster, plan: &Plan, json: bool) -> Result<Exit> {
    let interrupts = signals::catch().context("cannot catch Ctrl-C")?;
    let mut display = Display::new(json);
    let mut seen = 0;
    let result = flow::migrate(
        cluster,
        plan,
        &mut |event| {
            let count = interrupts.count.load(Ordering::SeqCst);
            if count > seen {
                seen = count;
                if count == 1 {
                    display.note("cancelling", &serde_json::json!({ "cancelling": { "id": plan.id } }));
                }
            }
            show(&mut display, event);
        },
        &interrupts.cancel,
    );
    display.finish();
    report(plan, result, json)
}

/// Draws one event of a migration.
pub fn show(display: &mut Display, event: &Event) {
    match event {
        Event::Progress(MigrateProgress::Engine(p)) => display.update(p),
        Event::Progress(MigrateProgress::Started { id }) => display.note(
            &format!("migration {id}"),
            &serde_json::json!({ "started": { "id": id } }),
        ),
        Event::Progress(MigrateProgress::Queued { host, position }) => display.note(
            &format!("queued on {host} (#{position})"),
            &serde_json::json!({ "queued": { "host": host, "position": position } }),
        ),
        Event::Progress(MigrateProgress::Prepared { target }) => display.note(
            &format!("{target} ready"),
            &serde_json::json!({ "prepared": { "target": target } }),
        ),
        Event::Progress(MigrateProgress::Waiting { .. }) => display.tick(),
        Event::Progress(MigrateProgress::Cancelling { accepted }) | Event::Cancel { accepted } => {
            let text = if *accepted {
                "cancelling"
            } else {
                "too late to cancel: the switchover has begun; waiting for its outcome"
            };
            display.note(text, &serde_json::json!({ "cancel": { "accepted": accepted } }));
        }
        Event::Asking { host, why } => display.note(
            &format!("asking {host} ({why})"),
            &serde_json::json!({ "asking": { "host": host, "why": why } }),
        ),
    }
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
    let message = format!(
        "migration {} of {} to {}: {:#}",
        plan.id,
        plan.vm,
        plan.target.name,
        anyhow::Error::new(error)
    );
    if json {
        let line = serde_json::json!({ "failed": { "id": plan.id, "vm": plan.vm, "code": code, "message": message } });
        let _ = writeln!(std::io::stdout().lock(), "{line}");
    }
    eprintln!("vmig: {message}");
    Ok(super::exit_for_code(code))
}

fn print_moved(plan: &Plan, result: &MigrateResult, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::json!({ "migrated": result }))?;
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
