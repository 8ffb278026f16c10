//! `vmig agent`: the host daemon.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use vmig_backend::agent::{self, Agent, AgentConfig};

use crate::exit::Exit;

#[derive(Debug, Args)]
#[command(after_help = "The config file's fields are documented in the README and in \
    contrib/agent.toml. VMs run in their own processes and keep running when the agent \
    stops; a restarted agent adopts them.\n\nExample:\n  vmig agent --config /etc/vmig/agent.toml")]
pub struct AgentArgs {
    /// The agent's config file (TOML).
    #[arg(long, short, value_name = "FILE", default_value = "/etc/vmig/agent.toml")]
    config: PathBuf,
}

pub fn exec(args: &AgentArgs) -> Result<Exit> {
    let config = AgentConfig::load(&args.config)?;
    let name = config.name.clone();
    let agent = Agent::new(config).with_context(|| format!("agent {name} cannot start"))?;
    let adopted = agent.list().len();
    let journal = agent.journal_opened;
    if journal.dropped > 0 {
        eprintln!(
            "vmig agent {name}: the journal had {} unreadable line(s) (a write torn by a crash, or damage): \
             dropped; {} entries kept",
            journal.dropped, journal.entries
        );
    }
    agent::serve(&agent, |address| {
        eprintln!("vmig agent {name}: API on {address} (mutual TLS), {adopted} VMs known");
    })
    .with_context(|| format!("agent {name} failed"))?;
    Ok(Exit::Ok)
}
