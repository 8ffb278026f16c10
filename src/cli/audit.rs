//! `vmig audit`: who asked the agents for what, from every agent's trail.

use std::io::Write;
use std::path::Path;

use anyhow::Result;
use clap::Args;

use crate::exit::Exit;
use crate::ops::audit::{self, Query};
use crate::ops::cluster::Cluster;
use crate::render::utc;

#[derive(Debug, Args)]
#[command(
    after_help = "Each agent records every request that changed something (create, start, stop, \
    destroy, console input, migrate, cancel, CD/DVD, cordon, uncordon, the other host's side of a \
    migration) and every request it refused, with the name in the client's certificate, its \
    address, the VM, the run and migration ids, and the answer's status. A migration has two \
    entries on its source: 202 when it was taken, then its outcome. This merges the trails, oldest \
    first. A host that cannot be asked is named on standard error (exit code 5): its entries are \
    missing.\n\n\
    Examples:\n  vmig audit --since 1d\n  vmig audit --host hostA --by alice --json\n  \
    vmig audit --run r-3f2a9c0d1e2b4a5c"
)]
pub struct AuditArgs {
    /// Only this host's trail.
    #[arg(long, value_name = "HOST")]
    host: Option<String>,
    /// Only requests made with this certificate name (an operator, or a host).
    #[arg(long, value_name = "NAME")]
    by: Option<String>,
    /// Only the requests that name this VM.
    #[arg(long, value_name = "VM")]
    vm: Option<String>,
    /// Only the requests of this run (a runbook's `vmig.run_id`).
    #[arg(long, value_name = "RUN")]
    run: Option<String>,
    /// Only those since: a duration ago (90s, 30m, 2h, 7d) or seconds since the epoch.
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Print JSON (every field of every entry) instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn exec(args: &AuditArgs, inventory: Option<&Path>) -> Result<Exit> {
    let since_ms = super::since_ms(args.since.as_deref())?;
    let cluster = Cluster::open(inventory)?;
    let query = Query {
        host: args.host.clone(),
        by: args.by.clone(),
        vm: args.vm.clone(),
        run: args.run.clone(),
        since_ms,
    };
    let trail = audit::audit(&cluster, &query)?;
    let mut exit = Exit::Ok;
    for (host, error) in &trail.missing {
        eprintln!("vmig: {}: {error}: its audit trail is missing", host.name);
        exit = super::exit_for(error);
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&trail.records)?)?;
        return Ok(exit);
    }
    writeln!(
        out,
        "{:<19}  {:<8} {:<10} {:<17} {:<10} {:>6}  {:<18} {:<18} ERROR",
        "TIME (UTC)", "HOST", "BY", "REQUEST", "VM", "STATUS", "MIGRATION", "RUN"
    )?;
    for record in &trail.records {
        let e = &record.entry;
        writeln!(
            out,
            "{:<19}  {:<8} {:<10} {:<17} {:<10} {:>6}  {:<18} {:<18} {}",
            utc(e.at_ms),
            record.host,
            e.by,
            e.request,
            e.vm.as_deref().unwrap_or("-"),
            e.status,
            e.migration.as_deref().unwrap_or("-"),
            e.run.as_deref().unwrap_or("-"),
            e.error.as_deref().unwrap_or("")
        )?;
    }
    Ok(exit)
}
