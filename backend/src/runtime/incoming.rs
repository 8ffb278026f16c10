//! A VMM that receives its VM by live migration: the gate on its port, and a
//! thread that takes the sender's VM and reports it to the main loop.

use std::io::Write;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::mpsc::Sender;

use super::event::{NotReceived, VmmEvent};
use super::process::chain;
use super::record::{Handoff, RecordFile, Side};
use crate::migration::gate::{Gate, GateHandle};
use crate::migration::protocol::Outcome;
use crate::migration::{Timeouts, Token, VmSideError, receiver};
use crate::vmm::{Start, Vm};

/// A receiving VMM's view of its migration.
#[derive(Debug)]
pub(super) struct Receiving {
    pub gate: GateHandle,
    pub migration: Option<String>,
}

/// What a receiving VMM was told to expect.
#[derive(Debug)]
pub(super) struct Expect {
    /// The token the sender must present.
    pub token: Option<Token>,
    /// The agents' id of the migration.
    pub migration: Option<String>,
    /// The images the VM may open.
    pub allowed_disks: Vec<std::path::PathBuf>,
    /// CPU features this host hides from guests.
    pub hide_cpu: Vec<crate::vmm::cpuid::CpuidMask>,
    /// This host's bridge for each network: a VM with a card on any other
    /// is refused.
    pub bridges: crate::vmm::devices::virtio::Bridges,
    /// TLS streams only, from the source host it names.
    pub tls: Option<crate::migration::tls::ServerSide>,
}

/// Opens the gate on `listener` and starts the thread that takes the VM;
/// the VM, or why there is none, arrives as [`VmmEvent::Received`].
pub(super) fn start(
    listener: TcpListener,
    expect: Expect,
    timeouts: Timeouts,
    console: Box<dyn Write + Send>,
    events: &Sender<VmmEvent>,
    record: &Arc<RecordFile>,
) -> std::io::Result<Receiving> {
    let Expect {
        token,
        migration,
        allowed_disks,
        hide_cpu,
        bridges,
        tls,
    } = expect;
    let gate = Gate::open(listener, token, timeouts.accept(), tls)?;
    let receiving = Receiving {
        gate: gate.handle(),
        migration: migration.clone(),
    };
    let events = events.clone();
    let record = Arc::clone(record);
    std::thread::Builder::new().name("migrate-in".into()).spawn(move || {
        let received = receive(
            gate,
            timeouts,
            migration.as_deref(),
            (allowed_disks.as_slice(), hide_cpu.as_slice(), &bridges),
            console,
            &events,
            &record,
        );
        let _ = events.send(VmmEvent::Received(received));
    })?;
    Ok(receiving)
}

/// Waits for a sender, checks it, builds the VM it announces and receives it.
fn receive(
    gate: Gate,
    timeouts: Timeouts,
    migration: Option<&str>,
    (allowed_disks, hide_cpu, bridges): (
        &[std::path::PathBuf],
        &[crate::vmm::cpuid::CpuidMask],
        &crate::vmm::devices::virtio::Bridges,
    ),
    console: Box<dyn Write + Send>,
    events: &Sender<VmmEvent>,
    record: &RecordFile,
) -> Result<Vm, NotReceived> {
    let handle = gate.handle();
    let not_received = |code: &str, detail: String| NotReceived {
        code: code.to_string(),
        detail,
        committed: false,
    };
    let incoming = receiver::accept(gate, timeouts).map_err(|e| not_received(e.code(), chain(&e)))?;
    let checked = crate::vmm::open_kvm().map_err(|e| chain(&e)).and_then(|kvm| {
        let supported = crate::vmm::cpuid::supported(&kvm).map_err(|e| chain(&e))?;
        // What this host offers guests: KVM's features less those it hides.
        let masked = crate::vmm::cpuid::masked(supported.as_slice(), hide_cpu);
        let local = kvm_bindings::CpuId::from_entries(&masked).map_err(|e| format!("CPUID: {e:?}"))?;
        let xsave = u32::try_from(kvm.check_extension_int(kvm_ioctls::Cap::Xsave2)).unwrap_or(0);
        let machine = incoming.check(&local, xsave)?;
        // The stream is not trusted to name files on this host.
        if let Some(disk) = machine.disks.iter().find(|d| !allowed_disks.contains(&d.path)) {
            return Err(format!(
                "the VM names drive image {}, which this host's agent did not approve",
                disk.path.display()
            ));
        }
        match machine.nics.iter().find(|n| !bridges.contains_key(&n.network)) {
            Some(nic) => Err(format!(
                "the VM has a card on network {}, which this host does not reach",
                nic.network
            )),
            None => Ok(machine),
        }
    });
    let machine = match checked {
        Ok(machine) => machine,
        Err(reason) => {
            incoming.refuse(&reason);
            return Err(not_received("refused", format!("refused the VM: {reason}")));
        }
    };
    let mut vm = match Vm::create(machine, console, super::event::stops(events), Start::Incoming, bridges) {
        Ok(vm) => vm,
        Err(e) => {
            let reason = chain(&e);
            incoming.refuse(&reason);
            return Err(not_received("refused", reason));
        }
    };
    let session = incoming.hello.session;
    let mut durable = || {
        let handoff = Handoff {
            side: Side::Target,
            migration: migration.map(str::to_string),
            session,
        };
        record
            .hand_over(handoff)
            .map_err(|e| format!("cannot write the VMM's record: {e}"))
    };
    match incoming.receive(&mut vm, &mut durable) {
        Ok(()) => Ok(vm),
        Err(e) => Err(NotReceived {
            code: e.code().to_string(),
            detail: chain(&e),
            committed: handle.outcome(session) == Outcome::Running,
        }),
    }
}

/// The engine's receiving side works on the VM through this.
impl receiver::TargetVm for Vm {
    fn memory(&self) -> &crate::vmm::memory::GuestMemory {
        Vm::memory(self)
    }

    fn restore(&mut self, state: crate::vmm::VmState) -> Result<(), VmSideError> {
        Ok(Vm::restore(self, state)?)
    }

    fn can_resume(&mut self) -> Result<(), VmSideError> {
        // The source gave its drives up before it sent Go.
        self.reacquire_disks()?;
        Ok(Vm::can_resume(self)?)
    }

    fn resume(&mut self) -> Result<std::time::Instant, VmSideError> {
        Ok(Vm::resume(self)?)
    }

    fn halt(&mut self) {
        Vm::halt(self);
    }

    fn begin_switchover(&mut self) {
        Vm::begin_switchover(self);
    }

    fn put_frames(&mut self, frames: crate::vmm::devices::virtio::HeldFrames) {
        self.put_held_frames(frames);
    }

    fn announce(&mut self, options: crate::vmm::AnnounceOptions) {
        Vm::announce(self, options);
    }
}
