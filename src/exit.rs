//! vmig's exit codes. They are part of its interface: scripts and cron jobs
//! branch on them, so a code never changes meaning.

use std::process::ExitCode;

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
}

impl Exit {
    /// The table printed in `--help` and the README.
    pub const TABLE: &'static str = "\
Exit codes:
  0  success
  1  the operation failed (a migration: the VM did not move; the message says where it is)
  2  invalid command line or input; nothing was done
  3  KVM unavailable (/dev/kvm missing or not accessible)
  4  the guest failed (non-zero power-off code, reset, crash)
  5  a VMM control socket or an agent could not be reached
  6  a migration's outcome is in doubt: the VM cannot start on its source until it is settled (see the message)
  7  no such VM or host
  8  conflict: the VM is already migrating, already exists, is not running, or is in doubt
  9  authentication failed: certificate missing, wrong or refused
 10  a config or inventory file is missing or malformed
 11  the VM is lost: the process that ran its only copy died";
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}
