//! `vmig lab`: a cluster of agents on this machine, for trying vmig out.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use vmig_backend::api::{Request, VmInfo};

use crate::cluster::Cluster;
use crate::exit::Exit;
use crate::inventory::lab_dir;
use crate::lab::{Lab, LabOptions};
use crate::ops::migrate::{self as flow, Plan};
use vmig_backend::migration::MigrationOptions;

use super::options::TimeoutArgs;

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Start the lab: agents hostA, hostB, ... on loopback addresses, and demo VMs vm1, vm2, ...
    Up(UpArgs),
    /// Bring the lab up if needed and live-migrate vm1 to the next host, with progress.
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
                timeouts,
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

/// The main job in one command: VMs migrating between hosts live.
fn demo(lab: &Lab, say: &mut dyn FnMut(&str)) -> Result<Exit> {
    lab.up(&LabOptions::default(), say)?;
    let inventory = lab.inventory_path();
    let cluster = Cluster::open(Some(&inventory))?;
    let vm1 = cluster.locate("vm1")?;
    // Migrate a guest that has filled its memory: the interesting case.
    let client = cluster.client(&vm1.host);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let console: String = client.call(Request::Console {
            name: "vm1".into(),
            bytes: 1 << 20,
        })?;
        if console.contains("FILLED") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let hosts = &cluster.inventory.hosts;
    let here = hosts.iter().position(|h| h.name == vm1.host.name).unwrap_or(0);
    let next = hosts[(here + 1) % hosts.len()].name.clone();
    say(&format!("vmig migrate vm1 {next}"));
    let plan = Plan {
        id: flow::new_id(),
        vm: "vm1".into(),
        source: vm1.host.clone(),
        target: cluster.inventory.host(&next)?.clone(),
        options: MigrationOptions::default(),
    };
    let exit = super::migrate::run(&cluster, &plan, !std::io::stderr().is_terminal())?;
    let vms: Vec<VmInfo> = cluster
        .ask_all::<Vec<VmInfo>>(&Request::ListVms)
        .into_iter()
        .filter_map(|(_, list)| list.ok())
        .flatten()
        .collect();
    for vm in vms {
        say(&format!("{} {} on {}", vm.name, vm.state, vm.host));
    }
    say(&format!(
        "try: vmig vms; vmig migrate vm2 {}; vmig vm console vm1; vmig lab down",
        hosts[0].name
    ));
    Ok(exit)
}
