//! `vmig lab`: a cluster of agents on this machine, for trying vmig out.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Args, Subcommand};
use vmig_backend::agent::config::Encryption;
use vmig_backend::api::Request;

use crate::exit::Exit;
use crate::inventory::lab_dir;
use crate::lab::{Lab, LabNetwork, LabOptions};
use crate::lua::Runbook;
use crate::ops::cluster::Cluster;

use super::options::TimeoutArgs;

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Start the lab: agents hostA, hostB, ..., each a network namespace on a shared switch
    /// (or a loopback address), and demo VMs vm1, vm2, ...
    Up(UpArgs),
    /// Bring the lab up if needed and take vm1's host through a maintenance with
    /// runbooks/rolling-maintenance.lua (evacuate, bring back), with progress bars.
    Demo(DirArgs),
    /// Stop every VM and agent of the lab and remove its files.
    Down(DirArgs),
}

#[derive(Debug, Args)]
#[command(
    after_help = "After `vmig lab up`, plain commands use the lab: `vmig hosts`, `vmig vms`, \
    `vmig migrate vm1 hostB`. Running it again restarts agents that stopped; their VMs are adopted."
)]
pub struct UpArgs {
    /// Number of hosts (agents).
    #[arg(long, default_value_t = LabOptions::default().hosts)]
    hosts: usize,
    /// Number of demo VMs, placed round-robin (1 vCPU each, the test guest dirtying memory).
    #[arg(long, default_value_t = LabOptions::default().vms)]
    vms: usize,
    /// Each host's migration cost limit (default: the agent's).
    #[arg(long, value_name = "N")]
    max_migration_cost: Option<u32>,
    /// Migrations the shared storage takes at once, cluster-wide (default 8).
    #[arg(long, value_name = "N")]
    storage_migrations: Option<u32>,
    /// How hosts are networked: `netns` (each host a network namespace with
    /// its own addresses and bridge, on a switch bridge here; VMs get network
    /// cards), `loopback` (loopback addresses, no VM network), or `auto`
    /// (netns where this machine allows it, else loopback).
    #[arg(long, value_name = "MODE", default_value = "auto", value_parser = ["auto", "netns", "loopback"])]
    network: String,
    /// The agents' `migration_encryption`: `tls` (TLS 1.3 streams with the
    /// host certificates) or `off` (plaintext, as for a dedicated trusted
    /// migration network).
    #[arg(long, value_name = "MODE", default_value = "tls", value_parser = ["tls", "off"])]
    migration_encryption: String,
    #[command(flatten)]
    timeouts: TimeoutArgs,
    #[command(flatten)]
    dir: DirArgs,
}

#[derive(Debug, Args)]
pub struct DirArgs {
    /// Where the lab keeps its files (default: $VMIG_LAB_DIR, else ~/.local/state/vmig/lab).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

impl DirArgs {
    fn lab(&self) -> Lab {
        Lab::new(&self.dir.clone().unwrap_or_else(lab_dir))
    }
}

pub fn exec(command: LabCommand) -> Result<Exit> {
    let say = &mut |line: &str| eprintln!("vmig lab: {line}");
    match command {
        LabCommand::Up(args) => {
            let timeouts = args.timeouts.timeouts()?;
            let options = LabOptions {
                hosts: args.hosts,
                vms: args.vms,
                max_migration_cost: args.max_migration_cost,
                storage_migrations: args.storage_migrations,
                timeouts,
                network: match args.network.as_str() {
                    "netns" => LabNetwork::Namespaces,
                    "loopback" => LabNetwork::Loopback,
                    _ => LabNetwork::Auto,
                },
                migration_encryption: if args.migration_encryption == "off" {
                    Encryption::Off
                } else {
                    Encryption::Tls
                },
                ..LabOptions::default()
            };
            let lab = args.dir.lab();
            lab.up(&options, say)?;
            say(&format!("inventory {}", lab.inventory_path().display()));
            Ok(Exit::Ok)
        }
        LabCommand::Demo(args) => demo(&args.lab(), say),
        LabCommand::Down(args) => {
            let ended = args.lab().down()?;
            say(&format!("down: {ended} processes ended, files removed"));
            Ok(Exit::Ok)
        }
    }
}

/// The maintenance runbook, built in: the demo runs it wherever vmig is.
const ROLLING: &str = include_str!("../../runbooks/rolling-maintenance.lua");

/// The main job in one command: the lab up, and the host of vm1 through a
/// maintenance by the runbook an operator would run: cordoned, emptied (its
/// VMs moving live), its maintenance (a hook that does nothing here),
/// uncordoned, and its VMs brought back.
fn demo(lab: &Lab, say: &mut dyn FnMut(&str)) -> Result<Exit> {
    lab.up(&LabOptions::default(), say)?;
    let inventory = lab.inventory_path();
    let cluster = Cluster::open(Some(&inventory))?;
    let vm1 = cluster.locate("vm1")?;
    // Migrate guests that have filled their memory: the interesting case.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (vms, _) = cluster.vms();
    for vm in vms.iter().filter(|vm| vm.host == vm1.host.name) {
        let client = cluster.host_client(&vm.host)?;
        while Instant::now() < deadline {
            let console: String = client.call(Request::Console {
                name: vm.name.clone(),
                bytes: 1 << 20,
            })?;
            if console.contains("FILLED") {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // On the lab's network: a live move of vm1 with its address probed
    // from here all along, as an operator would watch it with ping.
    let vm1 = match lab.net() {
        Some(net) => {
            let to = cluster
                .hosts()
                .iter()
                .map(|h| h.host.name.clone())
                .find(|h| *h != vm1.host.name)
                .unwrap_or_default();
            let address = net.vm_ip(0);
            say(&format!("vmig migrate vm1 {to} --ping {address}"));
            let mut plan = crate::ops::migrate::plan(&cluster, "vm1", &to, Default::default())?;
            plan.ping = Some((address.into(), Duration::from_millis(10)));
            let exit = super::migrate::run(&cluster, &plan, false)?;
            if exit != Exit::Ok {
                return Ok(exit);
            }
            cluster.locate("vm1")?
        }
        None => vm1,
    };
    let host = vm1.host.name.clone();
    let hook = "true";
    say(&format!("vmig run runbooks/rolling-maintenance.lua -- {hook} {host}"));
    let runbook = Runbook::from_source("runbooks/rolling-maintenance.lua", ROLLING.to_string())?;
    // The demo is asked for by name: it needs no question.
    let how = super::run::How {
        yes: true,
        ..Default::default()
    };
    let args = [hook.to_string(), host.clone()];
    let exit = super::run::run(
        &runbook,
        "runbooks/rolling-maintenance.lua",
        &args,
        Some(&inventory),
        &how,
    )?;
    let (vms, _) = cluster.vms();
    for vm in vms {
        say(&format!("{} {} on {}", vm.name, vm.state, vm.host));
    }
    say(&format!(
        "try: vmig evacuate {host}; vmig rollback --last; vmig migrate vm2 {}; vmig lab down",
        cluster.inventory.hosts.last().map_or("hostC", |h| h.name.as_str())
    ));
    Ok(exit)
}
