//! `vmig migrate VM HOST`: live-migrate a VM between hosts through their agents.

use std::io::{IsTerminal, Write};
use std::path::Path;

use anyhow::{Context, Result};
use clap::Args;
use vmig_backend::api::{HostFacts, MigrateProgress, MigrateResult, Peer, Request};
use vmig_backend::size::format_size;

use crate::cli::options::MigrationArgs;
use crate::cluster::{Cluster, Conflict};
use crate::exit::Exit;
use crate::progress::{Display, print_report};

#[derive(Debug, Args)]
#[command(
    after_help = "The exit code says where the VM runs: 0 on HOST; 1 still on its source \
    (the migration failed and was rolled back; `vmig vms` says why); 6 in doubt; 7 unknown VM \
    or host; 8 the VM is already migrating, already on HOST or not running.\n\n\
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

impl MigrateArgs {
    /// `vmig migrate VM HOST` with the defaults, for `vmig lab demo`.
    pub fn for_demo(vm: &str, host: &str, json: bool) -> Self {
        use clap::FromArgMatches;
        let mut args: Vec<&str> = vec!["migrate", vm, host];
        if json {
            args.push("--json");
        }
        let command = <Self as Args>::augment_args(clap::Command::new("migrate"));
        let matches = command.get_matches_from(args);
        Self::from_arg_matches(&matches).expect("the defaults parse")
    }
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
    let mut display = Display::new(json);
    let request = Request::Migrate {
        name: args.vm.clone(),
        target: Peer {
            name: target.name.clone(),
            address: target.address.clone(),
        },
        options,
    };
    let result = cluster
        .client(&source)
        .call_with_progress::<MigrateResult>(request, &mut |progress| match progress {
            MigrateProgress::Engine(p) => display.update(&p),
            MigrateProgress::Queued { host, position } => display.note(
                &format!("queued on {host} (#{position})"),
                &serde_json::json!({ "queued": { "host": host, "position": position } }),
            ),
            MigrateProgress::Prepared { target } => display.note(
                &format!("{target} ready"),
                &serde_json::json!({ "prepared": { "target": target } }),
            ),
        });
    display.finish();
    let result = result.with_context(|| format!("{} did not move to {}", args.vm, target.name))?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::json!({ "migrated": result }))?;
        return Ok(Exit::Ok);
    }
    match &result.report {
        Some(report) => {
            drop(out);
            print_report(
                report,
                &format!(
                    "migrated {} from {} to {}: it runs there now",
                    args.vm, source.name, target.name
                ),
                false,
            )?;
        }
        None => writeln!(out, "{} now runs on {}", args.vm, target.name)?,
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
    Ok(Exit::Ok)
}
