//! The operator's error codes: one vocabulary for the command line's exit
//! codes, the Lua error values' `code` field and the `code` of JSON lines.
//! A code's name never changes meaning; scripts branch on it.

use std::fmt;

use serde::{Deserialize, Serialize};
use vmig_backend::api;
use vmig_backend::client::ClientError;

/// What went wrong, as a script tells it apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// The arguments or the script are wrong; nothing was done.
    Invalid,
    /// A config or inventory file is missing or malformed.
    Config,
    /// A certificate is missing, wrong or refused.
    Auth,
    /// An agent could not be reached: nothing was asked of it.
    Unreachable,
    /// No such VM, host or migration.
    NotFound,
    /// The VM's state does not allow it (already migrating, already there,
    /// not running, in doubt), or another run holds it.
    Conflict,
    /// The target turned the VM away before anything was sent.
    Refused,
    /// The migration was cancelled; the VM runs on its source.
    Cancelled,
    /// The migration hit its time limit; the VM runs on its source.
    TimedOut,
    /// The migration failed before its handoff; the VM runs on its source.
    RolledBack,
    /// The VM's VMM was stopped during the migration; it did not move.
    Stopped,
    /// It failed for another reason (the message says).
    Failed,
    /// Whether the target runs the VM is not known yet; its source's copy
    /// cannot start until the agents settle it.
    InDoubt,
    /// The process that ran the VM's only copy died: it runs nowhere.
    Lost,
    /// Ctrl-C or SIGTERM stopped a run; the migrations in flight were
    /// cancelled.
    Interrupted,
    /// A runbook's own error: a Lua runtime error, or an `error()` it raised.
    Script,
    /// An evacuation or rollback left VMs where they were (each named,
    /// with why); the others moved.
    Partial,
}

impl Code {
    /// Every code, in the order the documentation lists them.
    pub const ALL: [Code; 17] = [
        Code::Invalid,
        Code::Config,
        Code::Auth,
        Code::Unreachable,
        Code::NotFound,
        Code::Conflict,
        Code::Refused,
        Code::Cancelled,
        Code::TimedOut,
        Code::RolledBack,
        Code::Stopped,
        Code::Failed,
        Code::InDoubt,
        Code::Lost,
        Code::Interrupted,
        Code::Script,
        Code::Partial,
    ];

    /// Its stable name (`not_found`, `in_doubt`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Code::Invalid => "invalid",
            Code::Config => "config",
            Code::Auth => "auth",
            Code::Unreachable => "unreachable",
            Code::NotFound => "not_found",
            Code::Conflict => "conflict",
            Code::Refused => "refused",
            Code::Cancelled => "cancelled",
            Code::TimedOut => "timed_out",
            Code::RolledBack => "rolled_back",
            Code::Stopped => "stopped",
            Code::Failed => "failed",
            Code::InDoubt => "in_doubt",
            Code::Lost => "lost",
            Code::Interrupted => "interrupted",
            Code::Script => "script",
            Code::Partial => "partial",
        }
    }

    /// True when trying the same thing again later may succeed without an
    /// operator changing anything: the agent was unreachable or busy, the
    /// VM was migrating, the migration timed out or rolled back.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            Code::Unreachable | Code::Conflict | Code::TimedOut | Code::RolledBack
        )
    }

    /// The code of an agent's answer.
    pub fn of_api(code: api::Code) -> Self {
        match code {
            api::Code::Invalid => Code::Invalid,
            api::Code::Forbidden => Code::Auth,
            api::Code::NotFound => Code::NotFound,
            api::Code::Conflict => Code::Conflict,
            api::Code::Unavailable => Code::Unreachable,
            api::Code::Failed | api::Code::Unknown => Code::Failed,
            api::Code::RolledBack => Code::RolledBack,
            api::Code::Cancelled => Code::Cancelled,
            api::Code::TimedOut => Code::TimedOut,
            api::Code::Refused => Code::Refused,
            api::Code::InDoubt => Code::InDoubt,
            api::Code::Lost => Code::Lost,
            api::Code::Stopped => Code::Stopped,
        }
    }

    /// The code of a call to an agent that failed.
    pub fn of_client(error: &ClientError) -> Self {
        match error {
            ClientError::Status { code, .. } => Code::of_api(*code),
            ClientError::Tls { .. } => Code::Auth,
            ClientError::Unreachable { .. } => Code::Unreachable,
            ClientError::Aborted { .. } => Code::Cancelled,
            ClientError::Io { .. }
            | ClientError::Closed { .. }
            | ClientError::Silent { .. }
            | ClientError::Protocol { .. } => Code::Failed,
        }
    }
}

/// An error and its causes, as one line (what scripts and JSON lines get):
/// the same words the VMM processes and agents use.
pub fn describe(error: &dyn std::error::Error) -> String {
    vmig_backend::runtime::process::chain(error)
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_serde_names_and_all_is_complete() {
        for code in Code::ALL {
            assert_eq!(serde_json::to_string(&code).unwrap(), format!("\"{}\"", code.name()));
        }
        let mut names: Vec<_> = Code::ALL.iter().map(|c| c.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Code::ALL.len());
    }

    #[test]
    fn every_agent_code_has_an_operator_code() {
        assert_eq!(Code::of_api(api::Code::Forbidden), Code::Auth);
        assert_eq!(Code::of_api(api::Code::InDoubt), Code::InDoubt);
        assert_eq!(Code::of_api(api::Code::Unknown), Code::Failed);
        assert!(Code::Unreachable.retryable() && !Code::Lost.retryable());
    }
}
