//! The complete state of a machine as plain serde data: the foundation of
//! snapshots and of live migration.

use kvm_bindings::{kvm_clock_data, kvm_irqchip, kvm_pit_state2};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::cpuid::CpuidMask;
use super::devices::DevicesState;
use super::devices::virtio::{DiskConfig, NicConfig};
use super::vcpu::VcpuState;

/// Bumped whenever a field changes meaning; readers refuse other versions.
/// 2: drives in the machine, virtio devices in the device state.
/// 3: the serial state carries the console's absolute offset instead of an
/// unfinished line (console output is no longer held back for a newline).
/// Also 3: network cards in the machine (`nics`), several queues per virtio
/// device, and the card's state beside each drive's.
pub const STATE_FORMAT: u32 = 3;

/// What a machine is: fixed for its lifetime, and travels with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfig {
    pub memory_bytes: u64,
    pub vcpus: u8,
    /// CPUID features hidden from the guest (a compatibility baseline).
    #[serde(default)]
    pub cpuid_masks: Vec<CpuidMask>,
    /// Its drives, one virtio-blk device each, by slot.
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// Its network cards, one virtio-net device each, in the slots after
    /// the drives.
    #[serde(default)]
    pub nics: Vec<NicConfig>,
}

/// In-kernel interrupt controllers and timer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IrqchipState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
}

/// Everything but guest memory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmState {
    pub format: u32,
    pub machine: MachineConfig,
    pub vcpus: Vec<VcpuState>,
    pub irqchip: IrqchipState,
    pub clock: kvm_clock_data,
    pub devices: DevicesState,
}

#[derive(Debug, Error)]
pub enum StateError {
    #[error("cannot encode machine state")]
    Encode(#[source] bincode::Error),
    #[error("machine state is malformed")]
    Decode(#[source] bincode::Error),
    #[error("machine state has format {found}; this vmig reads format {STATE_FORMAT}")]
    Format { found: u32 },
    #[error("machine state lists {found} vCPUs but its config says {expected}")]
    VcpuCount { found: usize, expected: u8 },
}

/// Largest encoded state we accept (bounds a hostile or corrupt input).
pub const MAX_STATE_BYTES: u64 = 64 << 20;

impl VmState {
    pub fn encode(&self) -> Result<Vec<u8>, StateError> {
        bincode::serialize(self).map_err(StateError::Encode)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, StateError> {
        use bincode::Options;
        let state: VmState = bincode::DefaultOptions::new()
            .with_fixint_encoding()
            .allow_trailing_bytes()
            .with_limit(MAX_STATE_BYTES)
            .deserialize(bytes)
            .map_err(StateError::Decode)?;
        if state.format != STATE_FORMAT {
            return Err(StateError::Format { found: state.format });
        }
        if state.vcpus.len() != usize::from(state.machine.vcpus) {
            return Err(StateError::VcpuCount {
                found: state.vcpus.len(),
                expected: state.machine.vcpus,
            });
        }
        Ok(state)
    }
}
