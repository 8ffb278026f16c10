//! `vmig vms`: the cluster's VMs and where they run.

use std::io::Write;
use std::path::Path;

use anyhow::Result;
use clap::Args;
use vmig_backend::api::{Request, VmInfo};
use vmig_backend::size::format_size;

use crate::exit::Exit;
use crate::ops::cluster::Cluster;

#[derive(Debug, Args)]
#[command(
    after_help = "Hosts that cannot be asked are named on standard error (exit code 5).\n\n\
    Examples:\n  vmig vms\n  vmig vms --host hostB --json"
)]
pub struct VmsArgs {
    /// Only the VMs of this host.
    #[arg(long, value_name = "HOST")]
    host: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn exec(args: &VmsArgs, inventory: Option<&Path>) -> Result<Exit> {
    let mut cluster = Cluster::open(inventory)?;
    if let Some(host) = &args.host {
        let entry = cluster.inventory.host(host)?.clone();
        cluster.inventory.hosts = vec![entry];
    }
    let mut vms: Vec<VmInfo> = Vec::new();
    let mut exit = Exit::Ok;
    for (host, answer) in cluster.ask_all::<Vec<VmInfo>>(&Request::ListVms) {
        match answer {
            Ok(list) => vms.extend(list),
            Err(e) => {
                eprintln!("vmig: {}: {e:#}", host.name);
                exit = super::exit_for(&e);
            }
        }
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&vms)?)?;
        return Ok(exit);
    }
    writeln!(
        out,
        "{:<12} {:<10} {:<10} {:>5} {:>8} {:>8}  NOTE",
        "VM", "HOST", "STATE", "VCPUS", "MEMORY", "PID"
    )?;
    for vm in &vms {
        let note = match (&vm.migrating_to, &vm.note) {
            (Some(target), _) => format!("to {target}"),
            (None, Some(note)) => note.clone(),
            (None, None) => String::new(),
        };
        writeln!(
            out,
            "{:<12} {:<10} {:<10} {:>5} {:>8} {:>8}  {}",
            vm.name,
            vm.host,
            vm.state.to_string(),
            vm.vcpus,
            format_size(vm.memory_bytes),
            vm.pid.map_or_else(|| "-".to_string(), |p| p.to_string()),
            note
        )?;
    }
    Ok(exit)
}
