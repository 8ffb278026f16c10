//! What the VMM's main loop reacts to, and why a VM stopped.

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

/// Everything that wakes the VMM's main loop.
#[derive(Debug)]
pub enum VmmEvent {
    /// The guest (through a device or a vCPU exit) ended the VM.
    Stopped(StopReason),
    /// A request arrived on the control socket; answer on the sender.
    Control(
        super::control::Request,
        std::sync::mpsc::Sender<super::control::Response>,
    ),
    /// SIGINT or SIGTERM.
    Signal(i32),
    /// The migration engine needs the source VM paused, resumed or saved.
    Source(SourceRequest, std::sync::mpsc::Sender<Result<SourceReply, String>>),
    /// An outgoing migration ended.
    MigrationEnded(Result<crate::migration::Report, crate::migration::sender::MigrationError>),
    /// An incoming migration ended: the VM runs here, or the attempt failed.
    Received(Result<super::Vm, NotReceived>),
}

/// Why a receiving VMM holds no VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotReceived {
    /// A stable name ([`crate::migration::receiver::ReceiveError::code`]).
    pub code: String,
    pub detail: String,
    /// It had committed: the VM was this VMM's, and is lost.
    pub committed: bool,
}

/// What the migration engine asks of the source VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceRequest {
    Pause,
    Resume,
    SaveState,
    /// Keep the vCPUs off the CPU for this long (auto-converge).
    Hold(std::time::Duration),
}

#[derive(Debug)]
pub enum SourceReply {
    Done,
    State(Box<super::VmState>),
}
