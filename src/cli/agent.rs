//! `vmig agent`: the host daemon.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use vmig_backend::agent::{self, Agent, AgentConfig};
use vmig_backend::log;

use crate::exit::Exit;

#[derive(Debug, Args)]
#[command(after_help = "The config file's fields are documented in the README and in \
    contrib/agent.toml. VMs run in their own processes and keep running when the agent \
    stops; a restarted agent adopts them.\n\nExample:\n  vmig agent --config /etc/vmig/agent.toml")]
pub struct AgentArgs {
    /// The agent's config file (TOML).
    #[arg(long, short, value_name = "FILE", default_value = "/etc/vmig/agent.toml")]
    config: PathBuf,
    /// How the log on standard error is written: one event a line, as text
    /// or as JSON objects (for journald or a log shipper); auto is text on a
    /// terminal and JSON otherwise.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Auto, env = "VMIG_LOG_FORMAT")]
    log_format: LogFormat,
    /// The least severe events the log keeps.
    #[arg(long, value_enum, value_name = "LEVEL", default_value_t = LogLevel::Info, env = "VMIG_LOG_LEVEL")]
    log_level: LogLevel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Auto,
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

pub fn exec(args: &AgentArgs) -> Result<Exit> {
    let config = AgentConfig::load(&args.config)?;
    let name = config.name.clone();
    let format = match args.log_format {
        LogFormat::Auto => log::Format::for_stderr(),
        LogFormat::Text => log::Format::Text,
        LogFormat::Json => log::Format::Json,
    };
    let level = match args.log_level {
        LogLevel::Error => tracing::Level::ERROR,
        LogLevel::Warn => tracing::Level::WARN,
        LogLevel::Info => tracing::Level::INFO,
        LogLevel::Debug => tracing::Level::DEBUG,
    };
    log::init(format, level, Some(&name))?;
    let agent = Agent::new(config).with_context(|| format!("agent {name} cannot start"))?;
    let adopted = agent.list().len();
    let journal = agent.journal_opened;
    if journal.dropped > 0 {
        tracing::warn!(
            dropped = journal.dropped,
            kept = journal.entries,
            "the journal had unreadable lines (a write torn by a crash, or damage): dropped"
        );
    }
    agent::serve(&agent, |address| {
        tracing::info!(%address, vms = adopted, "API listening (mutual TLS)");
    })
    .with_context(|| format!("agent {name} failed"))?;
    Ok(Exit::Ok)
}
