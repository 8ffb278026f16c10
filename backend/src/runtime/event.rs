//! What the VMM's main loop reacts to.

pub use crate::vmm::stop::StopReason;

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
    Signal(crate::signals::Signal),
    /// The migration engine needs the source VM paused, resumed or saved.
    Source(
        SourceRequest,
        std::sync::mpsc::Sender<Result<SourceReply, crate::migration::VmSideError>>,
    ),
    /// An outgoing migration ended.
    MigrationEnded(Result<crate::migration::Report, crate::migration::sender::MigrationError>),
    /// An incoming migration ended: the VM runs here, or the attempt failed.
    Received(Result<crate::vmm::Vm, NotReceived>),
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
    /// Hand over what the paused VM's cards received.
    TakeFrames,
}

#[derive(Debug)]
pub enum SourceReply {
    Done,
    /// Paused: when the first vCPU left the guest.
    Paused(std::time::Instant),
    State(Box<crate::vmm::VmState>),
    Frames(crate::vmm::devices::virtio::HeldFrames),
}

/// A VM's stops, reported as events of the main loop.
pub fn stops(events: &std::sync::mpsc::Sender<VmmEvent>) -> crate::vmm::stop::Stops {
    let events = events.clone();
    crate::vmm::stop::Stops::new(move |reason| {
        let _ = events.send(VmmEvent::Stopped(reason));
    })
}
