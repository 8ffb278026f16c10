//! The command line: one module per subcommand, each with its clap arguments
//! and an `exec` that validates them and calls the library.

mod agent;
mod audit;
mod cancel;
mod evacuate;
mod generate;
mod history;
mod host;
mod hosts;
mod lab;
mod migrate;
mod options;
mod pki;
mod precheck;
mod rollback;
mod run;
mod signals;
mod testguest;
mod vm;
mod vms;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use vmig_backend::agent::config::ConfigError;
use vmig_backend::client::ClientError;
use vmig_backend::runtime::control::ControlError;
use vmig_backend::vmm::VmError;

use crate::exit::Exit;
use crate::inventory::InventoryError;
use crate::ops::cluster::ClusterError;
use crate::ops::code::Code as OpsCode;
use crate::ops::migrate::MigrateError;

/// Move running KVM virtual machines between hosts, live.
#[derive(Debug, Parser)]
#[command(name = "vmig", version, about, after_help = Exit::table(), propagate_version = true)]
pub struct Cli {
    /// The inventory file (default: $VMIG_INVENTORY, ./vmig.toml,
    /// ~/.config/vmig/vmig.toml, /etc/vmig/vmig.toml, then the local lab's).
    #[arg(long, global = true, value_name = "FILE")]
    inventory: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Live-migrate a VM to another host, with progress.
    Migrate(migrate::MigrateArgs),
    /// Check whether a VM can move to a host (or to each), rule by rule.
    Precheck(precheck::PrecheckArgs),
    /// Empty a host for maintenance: plan every VM's move, cordon it, move them live.
    Evacuate(evacuate::EvacuateArgs),
    /// Run an evacuation plan saved by `vmig evacuate HOST -o FILE`.
    Apply(evacuate::ApplyArgs),
    /// Undo a run: move its VMs back, start those it stopped, lift its cordon.
    Rollback(rollback::RollbackArgs),
    /// Cancel a VM's running migration, and report how it ended.
    Cancel(cancel::CancelArgs),
    /// Run a Lua runbook: scripted maintenance with the same functions, bars or JSON lines.
    Run(run::RunArgs),
    /// Past migrations, from every agent's journal.
    History(history::HistoryArgs),
    /// Who asked the agents for what: every change and refusal, from every agent's trail.
    Audit(audit::AuditArgs),
    /// List the cluster's hosts and their facts.
    Hosts(hosts::HostsArgs),
    /// Maintenance of one host: cordon it (it takes no new VMs) or uncordon it.
    #[command(subcommand)]
    Host(host::HostCommand),
    /// List the cluster's VMs and where they run.
    Vms(vms::VmsArgs),
    /// Manage VMs: in the cluster (create, start, stop, destroy, show, console)
    /// or single VMM processes on this host (run, send, status, ...).
    #[command(subcommand)]
    Vm(vm::VmCommand),
    /// The host daemon: runs VMs and migrates them agent to agent.
    Agent(agent::AgentArgs),
    /// The cluster's certificate authority: create it, issue certificates.
    #[command(subcommand)]
    Pki(pki::PkiCommand),
    /// A local lab: several agents and demo VMs on this machine.
    #[command(subcommand)]
    Lab(lab::LabCommand),
    /// Work with the built-in test guest.
    #[command(subcommand)]
    Testguest(testguest::TestguestCommand),
    /// Write man pages and shell completions (for packagers and the repo).
    #[command(hide = true)]
    Generate(generate::GenerateArgs),
}

/// The clap definition, for generating man pages and completions.
pub fn command() -> clap::Command {
    Cli::command()
}

/// Parses the command line, runs it and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let inventory = cli.inventory.as_deref();
    let result = match cli.command {
        Command::Migrate(args) => migrate::exec(&args, inventory),
        Command::Precheck(args) => precheck::exec(&args, inventory),
        Command::Evacuate(args) => evacuate::exec(&args, inventory),
        Command::Apply(args) => evacuate::apply(&args, inventory),
        Command::Rollback(args) => rollback::exec(&args, inventory),
        Command::Cancel(args) => cancel::exec(&args, inventory),
        Command::Run(args) => run::exec(&args, inventory),
        Command::History(args) => history::exec(&args, inventory),
        Command::Audit(args) => audit::exec(&args, inventory),
        Command::Hosts(args) => hosts::exec(&args, inventory),
        Command::Host(command) => host::exec(command, inventory),
        Command::Vms(args) => vms::exec(&args, inventory),
        Command::Vm(command) => vm::exec(command, inventory),
        Command::Agent(args) => agent::exec(&args),
        Command::Pki(command) => pki::exec(command),
        Command::Lab(command) => lab::exec(command),
        Command::Testguest(command) => testguest::exec(command),
        Command::Generate(args) => generate::exec(&args).map(|()| Exit::Ok),
    };
    match result {
        Ok(exit) => exit.into(),
        Err(error) => {
            if is_broken_pipe(&error) {
                return Exit::Ok.into();
            }
            eprintln!("vmig: {error:#}");
            classify(&error).into()
        }
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// The exit code an error deserves, from the most specific cause in its chain.
fn classify(error: &anyhow::Error) -> Exit {
    for cause in error.chain() {
        if let Some(VmError::KvmUnavailable { .. }) = cause.downcast_ref::<VmError>() {
            return Exit::KvmUnavailable;
        }
        if let Some(ControlError::Connect { .. }) = cause.downcast_ref::<ControlError>() {
            return Exit::Unreachable;
        }
        if cause.downcast_ref::<UsageError>().is_some() {
            return Exit::Usage;
        }
        if cause.downcast_ref::<Conflict>().is_some() {
            return Exit::Conflict;
        }
        if let Some(error) = cause.downcast_ref::<ClusterError>() {
            return Exit::of(error.code());
        }
        if let Some(error) = cause.downcast_ref::<MigrateError>() {
            return Exit::of(error.code());
        }
        if let Some(error) = cause.downcast_ref::<crate::ops::cordon::CordonError>() {
            return Exit::of(error.code());
        }
        if let Some(error) = cause.downcast_ref::<crate::ops::evacuate::EvacuateError>() {
            return Exit::of(error.code());
        }
        if let Some(error) = cause.downcast_ref::<crate::ops::rollback::RollbackError>() {
            return Exit::of(error.code());
        }
        if let Some(error) = cause.downcast_ref::<crate::ops::console::ConsoleError>() {
            return Exit::of(error.code());
        }
        if let Some(error) = cause.downcast_ref::<crate::ops::create::CreateError>() {
            return Exit::of(error.code());
        }
        if let Some(error) = cause.downcast_ref::<crate::ops::precheck::PrecheckError>() {
            return Exit::of(error.code());
        }
        if let Some(error) = cause.downcast_ref::<crate::lua::RunbookError>() {
            return Exit::of(error.code());
        }
        if let Some(error) = cause.downcast_ref::<ClientError>() {
            return exit_for(error);
        }
        if let Some(error) = cause.downcast_ref::<InventoryError>() {
            return match error {
                InventoryError::UnknownHost { .. } => Exit::NotFound,
                _ => Exit::Config,
            };
        }
        if cause.downcast_ref::<ConfigError>().is_some() {
            return Exit::Config;
        }
        if cause.downcast_ref::<vmig_backend::pki::PkiError>().is_some() {
            return Exit::Auth;
        }
        // An agent's certificate problem (its own, a peer's) is transparent
        // in its error: the PKI error itself is not in the chain.
        if let Some(vmig_backend::agent::AgentError::Tls(_)) = cause.downcast_ref::<vmig_backend::agent::AgentError>() {
            return Exit::Auth;
        }
    }
    Exit::Failure
}

/// The exit code for an agent's answer or a failure to get one.
pub fn exit_for(error: &ClientError) -> Exit {
    Exit::of(OpsCode::of_client(error))
}

/// `--since WHEN` as milliseconds since the epoch (see
/// [`crate::ops::history::since`]).
pub fn since_ms(since: Option<&str>) -> Result<Option<u64>, UsageError> {
    since
        .map(|s| crate::ops::history::since(s).map_err(|e| UsageError(format!("--since: {e}"))))
        .transpose()
}

/// Input that is wrong before anything starts (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The request conflicts with where or how the VM is (exit code 8).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Conflict(pub String);
