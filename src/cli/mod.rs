//! The command line: one module per subcommand, each with its clap arguments
//! and an `exec` that validates them and calls the library.

mod generate;
mod testguest;
mod vm;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use vmig_backend::vmm::VmError;
use vmig_backend::vmm::control::ControlError;

use crate::exit::Exit;

/// Move running KVM virtual machines between hosts, live.
#[derive(Debug, Parser)]
#[command(name = "vmig", version, about, after_help = Exit::TABLE, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run and control single VMs on this host (one VMM process per VM).
    #[command(subcommand)]
    Vm(vm::VmCommand),
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
    let result = match cli.command {
        Command::Vm(command) => vm::exec(command),
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
    }
    Exit::Failure
}

/// Input that is wrong before anything starts (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);
