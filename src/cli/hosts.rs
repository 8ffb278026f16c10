//! `vmig hosts`: the cluster's hosts and their facts.

use std::io::Write;
use std::path::Path;

use anyhow::Result;
use clap::Args;
use vmig_backend::api::{HostFacts, Request};
use vmig_backend::size::format_size;

use crate::exit::Exit;
use crate::ops::cluster::Cluster;

#[derive(Debug, Args)]
#[command(after_help = "A host whose agent cannot be asked is listed as unreachable \
    (and the exit code is 5).\n\nExample:\n  vmig hosts --json | jq '.[].cpu_vendor'")]
pub struct HostsArgs {
    /// Print JSON (all facts) instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn exec(args: &HostsArgs, inventory: Option<&Path>) -> Result<Exit> {
    let cluster = Cluster::open(inventory)?;
    let answers = cluster.ask_all::<HostFacts>(&Request::Host);
    let mut exit = Exit::Ok;
    let mut out = std::io::stdout().lock();
    if args.json {
        let list: Vec<serde_json::Value> = answers
            .iter()
            .map(|(host, answer)| match answer {
                Ok(facts) => serde_json::to_value(facts).unwrap_or_default(),
                Err(e) => serde_json::json!({ "name": host.name, "error": format!("{e:#}") }),
            })
            .collect();
        writeln!(out, "{}", serde_json::Value::Array(list))?;
    } else {
        writeln!(
            out,
            "{:<10} {:<22} {:<8} {:>4} {:>10} {:>10} {:<10} {:>9}  CPU",
            "HOST", "ADDRESS", "STATE", "VMS", "MEM FREE", "MEM TOTAL", "CHASSIS", "MIGRATING"
        )?;
        for (host, answer) in &answers {
            match answer {
                Ok(f) => writeln!(
                    out,
                    "{:<10} {:<22} {:<8} {:>4} {:>10} {:>10} {:<10} {:>9}  {}",
                    host.name,
                    host.address,
                    if f.cordon.is_some() { "cordoned" } else { "up" },
                    f.vms,
                    format_size(f.memory_available_bytes),
                    format_size(f.memory_total_bytes),
                    f.chassis.as_deref().unwrap_or("-"),
                    format!("{}/{}", f.migration_cost_in_use, f.migration_cost_limit),
                    f.cpu_model
                )?,
                Err(e) => writeln!(out, "{:<10} {:<22} unreachable: {e:#}", host.name, host.address)?,
            }
        }
        for (host, answer) in &answers {
            if let Ok(HostFacts {
                cordon: Some(cordon), ..
            }) = answer
            {
                writeln!(
                    out,
                    "{} is cordoned{}{}",
                    host.name,
                    cordon.by.as_ref().map(|b| format!(" by {b}")).unwrap_or_default(),
                    cordon.reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default()
                )?;
            }
        }
    }
    if let Some(error) = answers.iter().find_map(|(_, a)| a.as_ref().err()) {
        exit = super::exit_for(error);
    }
    Ok(exit)
}
