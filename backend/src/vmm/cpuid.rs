//! The CPUID each vCPU sees: what KVM supports, with our topology and
//! hypervisor bits patched in, minus any features a caller masks out (the hook
//! the CPU-compatibility checks use to present a common baseline).

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES, kvm_cpuid_entry2};
use kvm_ioctls::Kvm;
use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CpuidError {
    #[error("cannot read the CPUID KVM supports")]
    Supported(#[source] kvm_ioctls::Error),
    #[error("cannot build the vCPU's CPUID table")]
    Build(#[source] vmm_sys_util::fam::Error),
}

/// Which CPUID output register a mask applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Register {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

/// Feature bits to hide from the guest in one CPUID leaf/subleaf register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuidMask {
    pub leaf: u32,
    pub index: u32,
    pub register: Register,
    pub clear: u32,
}

const LEAF_FEATURES: u32 = 0x1;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_AMD_SIZE: u32 = 0x8000_0008;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;

/// The CPUID KVM supports on this host.
pub fn supported(kvm: &Kvm) -> Result<CpuId, CpuidError> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(CpuidError::Supported)
}

/// The CPUID table for vCPU `index` of `count`, derived from `base`.
pub fn for_vcpu(base: &CpuId, index: u8, count: u8, masks: &[CpuidMask]) -> Result<CpuId, CpuidError> {
    let mut entries: Vec<kvm_cpuid_entry2> = base.as_slice().to_vec();
    let apic_id = u32::from(index);
    let count = u32::from(count);
    let core_shift = 32 - (count.max(1) - 1).leading_zeros();
    for entry in &mut entries {
        match entry.function {
            LEAF_FEATURES => {
                entry.ebx = (entry.ebx & 0x0000_ffff) | (apic_id << 24) | (count << 16);
                entry.ecx |= ECX_HYPERVISOR;
                if count > 1 {
                    entry.edx |= EDX_HTT;
                }
            }
            LEAF_TOPOLOGY => {
                // One thread per core, `count` cores in one package.
                entry.edx = apic_id;
                match entry.index {
                    0 => {
                        entry.eax = 0;
                        entry.ebx = 1;
                        entry.ecx = 1 << 8;
                    }
                    1 => {
                        entry.eax = core_shift;
                        entry.ebx = count;
                        entry.ecx = (2 << 8) | 1;
                    }
                    other => {
                        entry.eax = 0;
                        entry.ebx = 0;
                        entry.ecx = other;
                    }
                }
            }
            LEAF_AMD_SIZE => {
                entry.ecx = (entry.ecx & !0xf0ff) | (core_shift << 12) | (count - 1);
            }
            _ => {}
        }
        for mask in masks {
            if mask.leaf == entry.function && mask.index == entry.index {
                let register = match mask.register {
                    Register::Eax => &mut entry.eax,
                    Register::Ebx => &mut entry.ebx,
                    Register::Ecx => &mut entry.ecx,
                    Register::Edx => &mut entry.edx,
                };
                *register &= !mask.clear;
            }
        }
    }
    CpuId::from_entries(&entries).map_err(CpuidError::Build)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0x0000_00ff,
            edx: 0,
            ..Default::default()
        }
    }

    #[test]
    fn apic_ids_topology_and_masks() {
        let base = CpuId::from_entries(&[entry(1, 0), entry(0xb, 0), entry(0xb, 1), entry(7, 0)]).unwrap();
        let masks = [CpuidMask {
            leaf: 7,
            index: 0,
            register: Register::Ebx,
            clear: 1 << 5,
        }];
        let cpuid = for_vcpu(&base, 2, 4, &masks).unwrap();
        let leaves = cpuid.as_slice();
        assert_eq!(leaves[0].ebx >> 24, 2);
        assert_eq!((leaves[0].ebx >> 16) & 0xff, 4);
        assert_ne!(leaves[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(leaves[0].edx & EDX_HTT, 0);
        assert_eq!(leaves[1].edx, 2);
        assert_eq!(leaves[2].eax, 2);
        assert_eq!(leaves[2].ebx, 4);
        assert_eq!(leaves[3].ebx & (1 << 5), 0);
        assert_eq!(leaves[3].ebx | (1 << 5), 0xffff_ffff);
    }
}
