//! `vmig vm`: one VM on this host, in its own VMM process.

mod cluster;
mod console;
mod control;
mod run;
mod send;

use anyhow::Result;
use clap::Subcommand;

use crate::exit::Exit;

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Define a VM on a host of the cluster and boot it.
    Create(cluster::CreateArgs),
    /// Boot a defined VM on its host.
    Start(cluster::NameArgs),
    /// Stop a VM (its definition stays).
    Stop(cluster::NameArgs),
    /// Stop a VM and forget it.
    Destroy(cluster::NameArgs),
    /// Show a VM's definition, state and counters.
    Show(cluster::NameArgs),
    /// Print a VM's serial console; follow it live across migrations (--follow) or attach to it (--attach, detach with Ctrl-]).
    Console(console::ConsoleArgs),
    /// Insert or eject the medium of a VM's CD/DVD drive.
    Cdrom(cluster::CdromArgs),
    /// Run a VM in the foreground: this process is its VMM.
    Run(Box<run::RunArgs>),
    /// Show a running VMM's state.
    Status(control::ControlArgs),
    /// Show a running VMM's counters (exits, resident memory, console bytes).
    Stats(control::ControlArgs),
    /// Pause a running VM's vCPUs.
    Pause(control::ControlArgs),
    /// Resume a paused VM.
    Resume(control::ControlArgs),
    /// Save a paused VM's complete state and memory into a directory.
    Save(control::SaveArgs),
    /// Stop a VM and end its VMM process.
    Shutdown(control::ControlArgs),
    /// Live-migrate a running VM to a VMM waiting with `vm run --incoming`.
    Send(send::SendArgs),
}

pub fn exec(command: VmCommand, inventory: Option<&std::path::Path>) -> Result<Exit> {
    use vmig_backend::runtime::control::Request;
    match command {
        VmCommand::Create(args) => cluster::create(&args, inventory),
        VmCommand::Start(args) => cluster::lifecycle(&args, inventory, cluster::Lifecycle::Start),
        VmCommand::Stop(args) => cluster::lifecycle(&args, inventory, cluster::Lifecycle::Stop),
        VmCommand::Destroy(args) => cluster::lifecycle(&args, inventory, cluster::Lifecycle::Destroy),
        VmCommand::Show(args) => cluster::show(&args, inventory),
        VmCommand::Console(args) => console::exec(&args, inventory),
        VmCommand::Cdrom(args) => cluster::cdrom(&args, inventory),
        VmCommand::Run(args) => run::exec(&args),
        VmCommand::Status(args) => control::exec(&args, &Request::Status),
        VmCommand::Stats(args) => control::exec(&args, &Request::Stats),
        VmCommand::Pause(args) => control::exec(&args, &Request::Pause),
        VmCommand::Resume(args) => control::exec(&args, &Request::Resume),
        VmCommand::Shutdown(args) => control::exec(&args, &Request::Shutdown),
        VmCommand::Save(args) => control::exec_save(&args),
        VmCommand::Send(args) => send::exec(&args),
    }
}
