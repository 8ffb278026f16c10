//! `vmig history`: past migrations, from every agent's journal.

use std::io::Write;
use std::path::Path;

use anyhow::Result;
use clap::Args;

use crate::exit::Exit;
use crate::ops::cluster::Cluster;
use crate::ops::history::{self, Query};
use crate::render::utc;

#[derive(Debug, Args)]
#[command(
    after_help = "Each agent keeps a journal of the migrations it took part in (source and \
    target); this merges them, one line per migration, oldest first. A host that cannot be asked \
    is named on standard error (exit code 5): its side is missing.\n\n\
    Examples:\n  vmig history --since 1d\n  vmig history --vm vm1 --json\n  vmig history --run r-3f2a9c0d1e2b4a5c"
)]
pub struct HistoryArgs {
    /// Only the migrations of this VM.
    #[arg(long, value_name = "VM")]
    vm: Option<String>,
    /// Only the migrations from or to this host.
    #[arg(long, value_name = "HOST")]
    host: Option<String>,
    /// Only the migrations this run started (a runbook's `vmig.run_id`).
    #[arg(long, value_name = "RUN")]
    run: Option<String>,
    /// Only those started since: a duration ago (90s, 30m, 2h, 7d) or seconds since the epoch.
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Print JSON (every field of every record) instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn exec(args: &HistoryArgs, inventory: Option<&Path>) -> Result<Exit> {
    let since_ms = super::since_ms(args.since.as_deref())?;
    let cluster = Cluster::open(inventory)?;
    if let Some(host) = &args.host {
        cluster.host(host)?;
    }
    let query = Query {
        vm: args.vm.clone(),
        host: args.host.clone(),
        run: args.run.clone(),
        since_ms,
        nested: Vec::new(),
    };
    let (records, failed) = history::history(&cluster, &query);
    let mut exit = Exit::Ok;
    for (host, error) in &failed {
        eprintln!("vmig: {}: {error}: its side of the history is missing", host.name);
        exit = super::exit_for(error);
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&records)?)?;
        return Ok(exit);
    }
    writeln!(
        out,
        "{:<19}  {:<18}  {:<10} {:<17} {:<11} {:>9}  {:<8} RUN",
        "STARTED (UTC)", "ID", "VM", "FROM -> TO", "OUTCOME", "DOWNTIME", "BY"
    )?;
    for r in &records {
        let route = format!(
            "{} -> {}",
            r.from.as_deref().unwrap_or("?"),
            r.to.as_deref().unwrap_or("?")
        );
        let downtime = r
            .downtime_ms
            .map_or_else(|| "-".to_string(), |ms| format!("{ms:.1} ms"));
        writeln!(
            out,
            "{:<19}  {:<18}  {:<10} {:<17} {:<11} {:>9}  {:<8} {}",
            r.started_ms.map_or_else(|| "?".to_string(), utc),
            r.id,
            r.vm,
            route,
            r.outcome,
            downtime,
            r.by.as_deref().unwrap_or("-"),
            r.run.as_deref().unwrap_or("-")
        )?;
    }
    Ok(exit)
}
