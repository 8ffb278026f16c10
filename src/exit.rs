//! vmig's exit codes. They are part of its interface: scripts and cron jobs
//! branch on them, so a code never changes meaning.

use std::process::ExitCode;

use crate::ops::code::Code;

/// Every exit code vmig uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Success.
    Ok = 0,
    /// The operation failed (the message says why); for a migration: the VM
    /// did not move, and the message says where it is.
    Failure = 1,
    /// The command line or an input file is invalid; nothing was done.
    Usage = 2,
    /// KVM is not available: `/dev/kvm` is missing or not accessible.
    KvmUnavailable = 3,
    /// The guest failed: it powered off with a non-zero code, reset, crashed
    /// or could not be run by KVM.
    GuestFailed = 4,
    /// A VMM's control socket or an agent could not be reached.
    Unreachable = 5,
    /// A migration's outcome is in doubt: the source's copy cannot be
    /// started (it stays paused, or its VMM is gone) until the agents settle
    /// it, and the message says how to see the answer.
    InDoubt = 6,
    /// No such VM or host in the cluster.
    NotFound = 7,
    /// The request conflicts with the VM's state: it is already migrating,
    /// already exists, is not running, or its migration is in doubt.
    Conflict = 8,
    /// Authentication failed: a certificate is missing, wrong or refused.
    Auth = 9,
    /// A config or inventory file is missing or malformed (the message names
    /// the file, line and field).
    Config = 10,
    /// The VM is lost: the process that ran its only copy died (the message
    /// says which, and where). Nothing runs it; `vmig vm start` boots it.
    Lost = 11,
    /// Ctrl-C or SIGTERM interrupted a runbook: the migrations in flight
    /// were cancelled (each VM stays on its source unless its switchover had
    /// begun), and nothing more was changed.
    Interrupted = 12,
    /// An evacuation or rollback ended with VMs left where they were (each
    /// named, with why); the others moved.
    Partial = 13,
}

impl Exit {
    /// What each code means: `--help`, the man pages and the README's
    /// table print these rows (a test holds the README to them).
    pub const ROWS: &'static [(Exit, &'static str)] = &[
        (Exit::Ok, "success"),
        (
            Exit::Failure,
            "the operation failed (a migration: the VM did not move; the message says how it is on its source)",
        ),
        (Exit::Usage, "invalid command line or input; nothing was done"),
        (
            Exit::KvmUnavailable,
            "KVM unavailable (/dev/kvm missing or not accessible)",
        ),
        (
            Exit::GuestFailed,
            "the guest failed (non-zero power-off code, reset, crash)",
        ),
        (
            Exit::Unreachable,
            "a VMM control socket or an agent could not be reached",
        ),
        (
            Exit::InDoubt,
            "a migration's outcome is in doubt: the VM cannot start on its source until it is settled (see the message)",
        ),
        (Exit::NotFound, "no such VM or host"),
        (
            Exit::Conflict,
            "conflict: the VM is already migrating, already exists, already on that host, not running, or in doubt",
        ),
        (
            Exit::Auth,
            "authentication failed: a certificate is missing, wrong or refused",
        ),
        (
            Exit::Config,
            "a config or inventory file is missing or malformed (file, line and field named)",
        ),
        (
            Exit::Lost,
            "the VM is lost: the process that ran its only copy died (the message says which, and where)",
        ),
        (
            Exit::Interrupted,
            "a runbook was interrupted (Ctrl-C, SIGTERM): its migrations in flight were cancelled",
        ),
        (
            Exit::Partial,
            "an evacuation or rollback was partial: VMs were left where they were (each named, with why)",
        ),
    ];

    /// The table printed after `--help`.
    pub fn table() -> String {
        let mut table = String::from("Exit codes:");
        for (exit, meaning) in Self::ROWS {
            table.push_str(&format!("\n {:>2}  {meaning}", *exit as u8));
        }
        table
    }

    /// The exit code of an operator error's code: the one mapping, for
    /// every command and for runbooks.
    pub fn of(code: Code) -> Exit {
        match code {
            Code::Invalid => Exit::Usage,
            Code::Config => Exit::Config,
            Code::Auth => Exit::Auth,
            Code::Unreachable => Exit::Unreachable,
            Code::NotFound => Exit::NotFound,
            Code::Conflict => Exit::Conflict,
            Code::InDoubt => Exit::InDoubt,
            Code::Lost => Exit::Lost,
            Code::Interrupted => Exit::Interrupted,
            Code::Partial => Exit::Partial,
            Code::Refused
            | Code::Cancelled
            | Code::TimedOut
            | Code::RolledBack
            | Code::Stopped
            | Code::Failed
            | Code::Script => Exit::Failure,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}
