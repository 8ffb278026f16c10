//! How a VM says that it stopped by itself (the guest powered off, reset or
//! faulted) or why it was stopped: [`StopReason`], reported to [`Stops`].

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Why a VM is no longer running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum StopReason {
    /// The guest wrote `code` to the debug-exit port.
    PowerOff { code: u8 },
    /// The guest asked for a reset (i8042 or a KVM system event).
    Reset,
    /// A vCPU triple-faulted.
    TripleFault { vcpu: u8 },
    /// KVM could not run the guest (emulation failure, failed entry, ...).
    GuestError { vcpu: u8, detail: String },
    /// The operator stopped it (control socket or signal).
    Requested,
    /// It was live-migrated and now runs at `target`.
    Migrated { target: String },
}

impl StopReason {
    /// True when the guest ended the way it meant to, with success.
    pub fn is_clean(&self) -> bool {
        matches!(
            self,
            StopReason::PowerOff { code: 0 } | StopReason::Requested | StopReason::Migrated { .. }
        )
    }
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::PowerOff { code } => write!(f, "guest powered off with code {code}"),
            StopReason::Reset => write!(f, "guest requested a reset"),
            StopReason::TripleFault { vcpu } => write!(f, "vCPU {vcpu} triple-faulted"),
            StopReason::GuestError { vcpu, detail } => write!(f, "vCPU {vcpu} stopped: {detail}"),
            StopReason::Requested => write!(f, "stopped on request"),
            StopReason::Migrated { target } => write!(f, "migrated to {target}; it runs there now"),
        }
    }
}

/// Where a VM reports that it stopped: the owner of the VM (a VMM
/// process's main loop) decides what follows.
#[derive(Clone)]
pub struct Stops(Arc<dyn Fn(StopReason) + Send + Sync>);

impl Stops {
    pub fn new(report: impl Fn(StopReason) + Send + Sync + 'static) -> Self {
        Self(Arc::new(report))
    }

    /// Stops reported into a channel (for tests, and owners that wait).
    pub fn channel() -> (Self, std::sync::mpsc::Receiver<StopReason>) {
        let (sender, receiver) = std::sync::mpsc::channel();
        let stops = Self::new(move |reason| {
            let _ = sender.send(reason);
        });
        (stops, receiver)
    }

    pub fn report(&self, reason: StopReason) {
        (self.0)(reason);
    }
}

impl std::fmt::Debug for Stops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stops")
    }
}
