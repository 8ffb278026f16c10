//! A run: one `vmig` invocation or one runbook. Its id travels with every
//! migration it starts (to the agents and their journals), and it decides
//! whether a change may happen. Dry run and consent are enforced here, not
//! by the script: under a dry run no change happens and each is added to
//! the plan; without consent (no terminal and no `--yes`) the first change
//! is refused before it happens; Ctrl-C or SIGTERM refuses every change
//! after it and cancels the migrations that look at [`Run::cancel`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use thiserror::Error;

use super::code::Code;

/// Whether changes may go ahead.
pub enum Consent {
    /// `--yes`, or a command that names its one change itself.
    Given,
    /// No terminal to ask on and no `--yes`: every change is refused.
    Missing,
    /// On a terminal: the front end asks once, at the first change.
    Ask(Box<dyn Fn(&Change) -> bool + Send + Sync>),
}

impl std::fmt::Debug for Consent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Consent::Given => "Given",
            Consent::Missing => "Missing",
            Consent::Ask(_) => "Ask",
        })
    }
}

/// A change to the cluster (or outside it) that a run makes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Change {
    /// Live-migrate `vm` from host `from` to host `to`.
    Migrate { vm: String, from: String, to: String },
    /// Run an operator's hook command.
    Exec { command: Vec<String> },
    /// Cordon `host` (it takes no new VMs), or lift its cordon.
    Cordon { host: String, on: bool },
    /// Shut `vm` down on `host` for maintenance (its policy is `stop`).
    Stop { vm: String, host: String },
    /// Start `vm` again on `host` (a rollback of its stop).
    Start { vm: String, host: String },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Migrate { vm, from, to } => write!(f, "migrate {vm} from {from} to {to}"),
            Change::Exec { command } => write!(f, "run `{}`", command.join(" ")),
            Change::Cordon { host, on: true } => write!(f, "cordon {host}"),
            Change::Cordon { host, on: false } => write!(f, "uncordon {host}"),
            Change::Stop { vm, host } => write!(f, "stop {vm} on {host}"),
            Change::Start { vm, host } => write!(f, "start {vm} on {host}"),
        }
    }
}

/// What the caller of [`Run::change`] does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Go {
    /// Make the change.
    Ahead,
    /// A dry run: the change is in the plan; make nothing.
    DryRun,
}

#[derive(Debug, Error)]
pub enum RunError {
    #[error("refusing to {0} without --yes: there is no terminal to ask on; nothing was changed")]
    NoConsent(Change),
    #[error("not confirmed: did not {0}; nothing was changed")]
    Declined(Change),
    #[error("the run was interrupted (Ctrl-C or SIGTERM): did not {0}")]
    Interrupted(Change),
}

impl RunError {
    pub fn code(&self) -> Code {
        match self {
            RunError::NoConsent(_) => Code::Invalid,
            RunError::Declined(_) => Code::Cancelled,
            RunError::Interrupted(_) => Code::Interrupted,
        }
    }
}

#[derive(Debug)]
pub struct Run {
    pub id: String,
    pub dry_run: bool,
    consent: Consent,
    /// The operator's answer, once asked.
    answered: Mutex<Option<bool>>,
    /// Every change made (or, in a dry run, planned), in order.
    changes: Mutex<Vec<Change>>,
    cancel: Arc<AtomicBool>,
}

impl Run {
    /// A run whose migrations stop when `cancel` is set.
    pub fn new(dry_run: bool, consent: Consent, cancel: Arc<AtomicBool>) -> Self {
        Self {
            id: new_id(),
            dry_run,
            consent,
            answered: Mutex::new(None),
            changes: Mutex::new(Vec::new()),
            cancel,
        }
    }

    /// Whether `change` may go ahead now; a change that may is recorded.
    pub fn change(&self, change: Change) -> Result<Go, RunError> {
        if self.interrupted() {
            return Err(RunError::Interrupted(change));
        }
        if self.dry_run {
            self.record(change);
            return Ok(Go::DryRun);
        }
        match &self.consent {
            Consent::Given => {}
            Consent::Missing => return Err(RunError::NoConsent(change)),
            Consent::Ask(ask) => {
                // One question per run, at its first change: the operator
                // at the terminal agrees to the runbook, not to each step.
                let mut answered = self.answered.lock().unwrap_or_else(PoisonError::into_inner);
                let yes = *answered.get_or_insert_with(|| ask(&change));
                if !yes {
                    return Err(RunError::Declined(change));
                }
            }
        }
        self.record(change);
        Ok(Go::Ahead)
    }

    /// May a question be answered yes without asking (`--yes`)?
    pub fn consent(&self) -> &Consent {
        &self.consent
    }

    fn record(&self, change: Change) {
        self.changes.lock().unwrap_or_else(PoisonError::into_inner).push(change);
    }

    /// The changes made, or under a dry run planned, so far.
    pub fn changes(&self) -> Vec<Change> {
        self.changes.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Set by Ctrl-C or SIGTERM: the run's migrations cancel.
    pub fn cancel(&self) -> &Arc<AtomicBool> {
        &self.cancel
    }

    pub fn interrupted(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
}

/// A fresh run id: `r-` and 16 hex digits.
pub fn new_id() -> String {
    let id = vmig_backend::agent::migrations::new_id();
    format!("r-{}", id.trim_start_matches("m-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn migrate() -> Change {
        Change::Migrate {
            vm: "vm1".into(),
            from: "hostA".into(),
            to: "hostB".into(),
        }
    }

    #[test]
    fn a_dry_run_plans_and_changes_nothing() {
        let run = Run::new(true, Consent::Missing, Arc::default());
        assert_eq!(run.change(migrate()).unwrap(), Go::DryRun);
        assert_eq!(run.changes(), vec![migrate()]);
    }

    #[test]
    fn without_consent_every_change_is_refused() {
        let run = Run::new(false, Consent::Missing, Arc::default());
        let error = run.change(migrate()).unwrap_err();
        assert_eq!(error.code(), Code::Invalid);
        assert!(run.changes().is_empty());
    }

    #[test]
    fn the_operator_is_asked_once() {
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&asked);
        let consent = Consent::Ask(Box::new(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
            true
        }));
        let run = Run::new(false, consent, Arc::default());
        assert_eq!(run.change(migrate()).unwrap(), Go::Ahead);
        assert_eq!(run.change(migrate()).unwrap(), Go::Ahead);
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        let declined = Run::new(false, Consent::Ask(Box::new(|_| false)), Arc::default());
        assert_eq!(declined.change(migrate()).unwrap_err().code(), Code::Cancelled);
    }

    #[test]
    fn an_interrupted_run_changes_nothing_more() {
        let run = Run::new(false, Consent::Given, Arc::new(AtomicBool::new(true)));
        assert_eq!(run.change(migrate()).unwrap_err().code(), Code::Interrupted);
        assert!(run.id.starts_with("r-") && run.id.len() == 18);
    }
}
