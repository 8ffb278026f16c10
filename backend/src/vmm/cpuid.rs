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

/// Masks that hide the named features (as in /proc/cpuinfo, see
/// [`FEATURES`]) from guests; an unknown name is refused.
pub fn hiding(names: &[String]) -> Result<Vec<CpuidMask>, String> {
    let registers = [Register::Eax, Register::Ebx, Register::Ecx, Register::Edx];
    names
        .iter()
        .map(|name| {
            FEATURES
                .iter()
                .find(|(.., n)| n == name)
                .map(|&(leaf, index, reg, bit, _)| CpuidMask {
                    leaf,
                    index,
                    register: registers[reg],
                    clear: 1 << bit,
                })
                .ok_or_else(|| format!("{name:?} is not a CPU feature vmig knows"))
        })
        .collect()
}

/// `entries` with `masks` applied: what a host that hides features offers.
pub fn masked(entries: &[kvm_cpuid_entry2], masks: &[CpuidMask]) -> Vec<kvm_cpuid_entry2> {
    let mut entries = entries.to_vec();
    for entry in &mut entries {
        apply_masks(entry, masks);
    }
    entries
}

/// Clears in `entry` the bits of the masks that name its leaf and subleaf.
fn apply_masks(entry: &mut kvm_cpuid_entry2, masks: &[CpuidMask]) {
    for mask in masks
        .iter()
        .filter(|m| m.leaf == entry.function && m.index == entry.index)
    {
        let register = match mask.register {
            Register::Eax => &mut entry.eax,
            Register::Ebx => &mut entry.ebx,
            Register::Ecx => &mut entry.ecx,
            Register::Edx => &mut entry.edx,
        };
        *register &= !mask.clear;
    }
}

/// The architectural performance-monitoring leaf (virtual PMU).
pub const LEAF_PMU: u32 = 0xa;

/// Masks that hide the virtual PMU: leaf 0xA reads all zeros, so the guest
/// finds no performance counters (a VM started without `pmu`).
pub fn pmu_hidden() -> Vec<CpuidMask> {
    [Register::Eax, Register::Ebx, Register::Ecx, Register::Edx]
        .into_iter()
        .map(|register| CpuidMask {
            leaf: LEAF_PMU,
            index: 0,
            register,
            clear: u32::MAX,
        })
        .collect()
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
        apply_masks(entry, masks);
    }
    CpuId::from_entries(&entries).map_err(CpuidError::Build)
}

/// CPUID feature bits by the names /proc/cpuinfo uses: (leaf, subleaf,
/// register 0..=3 for eax..edx, bit, name).
pub const FEATURES: &[(u32, u32, usize, u32, &str)] = &[
    (1, 0, 3, 0, "fpu"),
    (1, 0, 3, 4, "tsc"),
    (1, 0, 3, 5, "msr"),
    (1, 0, 3, 6, "pae"),
    (1, 0, 3, 8, "cx8"),
    (1, 0, 3, 9, "apic"),
    (1, 0, 3, 15, "cmov"),
    (1, 0, 3, 19, "clflush"),
    (1, 0, 3, 23, "mmx"),
    (1, 0, 3, 24, "fxsr"),
    (1, 0, 3, 25, "sse"),
    (1, 0, 3, 26, "sse2"),
    (1, 0, 2, 0, "pni"),
    (1, 0, 2, 1, "pclmulqdq"),
    (1, 0, 2, 9, "ssse3"),
    (1, 0, 2, 12, "fma"),
    (1, 0, 2, 13, "cx16"),
    (1, 0, 2, 15, "pdcm"),
    (1, 0, 2, 19, "sse4_1"),
    (1, 0, 2, 20, "sse4_2"),
    (1, 0, 2, 21, "x2apic"),
    (1, 0, 2, 22, "movbe"),
    (1, 0, 2, 23, "popcnt"),
    (1, 0, 2, 24, "tsc_deadline_timer"),
    (1, 0, 2, 25, "aes"),
    (1, 0, 2, 26, "xsave"),
    (1, 0, 2, 28, "avx"),
    (1, 0, 2, 29, "f16c"),
    (1, 0, 2, 30, "rdrand"),
    (7, 0, 1, 0, "fsgsbase"),
    (7, 0, 1, 3, "bmi1"),
    (7, 0, 1, 5, "avx2"),
    (7, 0, 1, 7, "smep"),
    (7, 0, 1, 8, "bmi2"),
    (7, 0, 1, 9, "erms"),
    (7, 0, 1, 10, "invpcid"),
    (7, 0, 1, 16, "avx512f"),
    (7, 0, 1, 17, "avx512dq"),
    (7, 0, 1, 18, "rdseed"),
    (7, 0, 1, 19, "adx"),
    (7, 0, 1, 20, "smap"),
    (7, 0, 1, 23, "clflushopt"),
    (7, 0, 1, 24, "clwb"),
    (7, 0, 1, 28, "avx512cd"),
    (7, 0, 1, 29, "sha_ni"),
    (7, 0, 1, 30, "avx512bw"),
    (7, 0, 1, 31, "avx512vl"),
    (7, 0, 2, 1, "avx512vbmi"),
    (7, 0, 2, 2, "umip"),
    (7, 0, 2, 3, "pku"),
    (7, 0, 2, 8, "gfni"),
    (7, 0, 2, 9, "vaes"),
    (7, 0, 2, 10, "vpclmulqdq"),
    (7, 0, 2, 22, "rdpid"),
    (7, 0, 3, 4, "fsrm"),
    (7, 0, 3, 26, "ibrs"),
    (7, 0, 3, 31, "ssbd"),
    (0xd, 1, 0, 0, "xsaveopt"),
    (0xd, 1, 0, 1, "xsavec"),
    (0xd, 1, 0, 3, "xsaves"),
    (0x8000_0001, 0, 2, 0, "lahf_lm"),
    (0x8000_0001, 0, 2, 5, "abm"),
    (0x8000_0001, 0, 2, 6, "sse4a"),
    (0x8000_0001, 0, 2, 8, "3dnowprefetch"),
    (0x8000_0001, 0, 3, 11, "syscall"),
    (0x8000_0001, 0, 3, 20, "nx"),
    (0x8000_0001, 0, 3, 26, "pdpe1gb"),
    (0x8000_0001, 0, 3, 27, "rdtscp"),
    (0x8000_0001, 0, 3, 29, "lm"),
];

/// The registers a guest's features are in, which a receiving host must
/// offer (every bit the source offered): (leaf, subleaf, register index,
/// bits that the VMM itself sets or that mirror guest control registers,
/// which are not compared).
pub const FEATURE_REGISTERS: [(u32, u32, usize, u32); 10] = [
    (0x1, 0, 2, (1 << 27) | (1 << 31)), // ecx, minus OSXSAVE and hypervisor
    (0x1, 0, 3, (1 << 9) | (1 << 28)),  // edx, minus APIC (per-vCPU state) and HTT
    (0x7, 0, 1, 0),                     // ebx
    (0x7, 0, 2, 1 << 4),                // ecx, minus OSPKE
    (0x7, 0, 3, 0),                     // edx
    (0x7, 1, 0, 0),                     // eax
    (0xd, 1, 0, 0),                     // eax: XSAVE variants
    (0x8000_0001, 0, 2, 0),             // ecx
    (0x8000_0001, 0, 3, 0),             // edx
    (0x8000_0008, 0, 1, 0),             // ebx
];

/// The names of CPUID registers by index.
pub const REGISTER_NAMES: [&str; 4] = ["eax", "ebx", "ecx", "edx"];

/// The name of a feature bit, when it has one.
pub fn feature_name(leaf: u32, subleaf: u32, register: usize, bit: u32) -> Option<&'static str> {
    FEATURES
        .iter()
        .find(|f| (f.0, f.1, f.2, f.3) == (leaf, subleaf, register, bit))
        .map(|f| f.4)
}

/// The named features a CPUID table offers.
pub fn feature_names(entries: &[kvm_cpuid_entry2]) -> Vec<String> {
    let register = |leaf: u32, sub: u32, reg: usize| {
        entries
            .iter()
            .find(|e| e.function == leaf && e.index == sub)
            .map_or(0, |e| [e.eax, e.ebx, e.ecx, e.edx][reg])
    };
    FEATURES
        .iter()
        .filter(|(leaf, sub, reg, bit, _)| register(*leaf, *sub, *reg) & (1 << bit) != 0)
        .map(|(.., name)| (*name).to_string())
        .collect()
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

    #[test]
    fn every_named_feature_is_in_a_register_a_receiver_compares() {
        for (leaf, sub, reg, bit, name) in FEATURES {
            assert!(
                FEATURE_REGISTERS
                    .iter()
                    .any(|(l, s, r, _)| (l, s, r) == (leaf, sub, reg)),
                "{name} (leaf {leaf:#x}.{sub} {} bit {bit}) is not compared by the receiver",
                REGISTER_NAMES[*reg]
            );
        }
        assert_eq!(feature_name(7, 0, 1, 5), Some("avx2"));
    }
}
