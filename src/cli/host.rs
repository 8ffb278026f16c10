//! `vmig host cordon|uncordon HOST`: a host under maintenance takes no new VMs.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::exit::Exit;
use crate::ops::cluster::Cluster;
use crate::ops::cordon;
use crate::ops::run::{Consent, Run};

#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Cordon a host: it takes no new VMs (migrations to it and creations on
    /// it are refused, by the prechecks and by its agent) until uncordoned.
    /// Its agent keeps the cordon across restarts.
    Cordon(CordonArgs),
    /// Lift a host's cordon.
    Uncordon(HostArgs),
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  vmig host cordon hostA --reason 'firmware update'\n  vmig hosts   # shows it\n  \
    vmig host uncordon hostA"
)]
pub struct CordonArgs {
    #[command(flatten)]
    host: HostArgs,
    /// Why (shown by `vmig hosts`, in prechecks and in refusals).
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
}

#[derive(Debug, Args)]
pub struct HostArgs {
    /// The host (a name from the inventory).
    host: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn exec(command: HostCommand, inventory: Option<&Path>) -> Result<Exit> {
    let cluster = Cluster::open(inventory)?;
    // The command names its one change: consent is given.
    let run = Run::new(false, Consent::Given, Arc::new(AtomicBool::new(false)));
    match command {
        HostCommand::Cordon(args) => {
            let cordon = cordon::cordon(&run, &cluster, &args.host.host, args.reason.as_deref())?;
            if args.host.json {
                println!(
                    "{}",
                    serde_json::json!({ "cordoned": args.host.host, "cordon": cordon })
                );
            } else {
                println!("cordoned {}: it takes no new VMs", args.host.host);
            }
        }
        HostCommand::Uncordon(args) => {
            let had = cordon::uncordon(&run, &cluster, &args.host)?;
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({ "uncordoned": args.host, "was_cordoned": had })
                );
            } else if had {
                println!("uncordoned {}", args.host);
            } else {
                println!("{} was not cordoned", args.host);
            }
        }
    }
    Ok(Exit::Ok)
}
