//! The host's facts for prechecks: measured where they can be (the CPU
//! features KVM offers guests, the PMU, memory), from the config where they
//! cannot (chassis, link speed, networks, storage).

use std::net::IpAddr;

use crate::api::{API_VERSION, HostFacts};
use crate::migration::protocol::PROTOCOL_VERSION;

use super::AgentConfig;

/// CPUID feature bits by the names /proc/cpuinfo uses: (leaf, subleaf,
/// register 0..=3 for eax..edx, bit, name).
const FEATURES: &[(u32, u32, usize, u32, &str)] = &[
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

/// Gathers the facts; a fact that cannot be read is left empty, not fatal.
pub fn gather(config: &AgentConfig, vms: usize, usage: (u32, u32, u32)) -> HostFacts {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        cpuinfo
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.trim() == key)
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    let (cpu_features, pmu_version) = kvm_features();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = |key: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    let family = |ip: IpAddr| if ip.is_ipv4() { "ipv4" } else { "ipv6" }.to_string();
    let (in_use, limit, queued) = usage;
    HostFacts {
        name: config.name.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        api_version: API_VERSION,
        migration_protocol: PROTOCOL_VERSION,
        cpu_vendor: field("vendor_id"),
        cpu_model: field("model name"),
        cpu_features,
        pmu_version,
        memory_total_bytes: mem("MemTotal:"),
        memory_available_bytes: mem("MemAvailable:"),
        chassis: config.chassis.clone(),
        management_families: vec![family(config.api_address.ip())],
        migration_address: config.migration_ip().to_string(),
        link_speed_mbps: config.link_speed_mbps,
        networks: config.networks.clone(),
        storage: config.storage.clone(),
        vms,
        migration_cost_in_use: in_use,
        migration_cost_limit: limit,
        migrations_queued: queued,
    }
}

/// The features KVM offers guests here, and the architectural PMU version.
fn kvm_features() -> (Vec<String>, u8) {
    let Ok(kvm) = crate::vmm::open_kvm() else {
        return (Vec::new(), 0);
    };
    let Ok(cpuid) = crate::vmm::cpuid::supported(&kvm) else {
        return (Vec::new(), 0);
    };
    let entries = cpuid.as_slice();
    let register = |leaf: u32, sub: u32, reg: usize| {
        entries
            .iter()
            .find(|e| e.function == leaf && e.index == sub)
            .map_or(0, |e| [e.eax, e.ebx, e.ecx, e.edx][reg])
    };
    let names = FEATURES
        .iter()
        .filter(|(leaf, sub, reg, bit, _)| register(*leaf, *sub, *reg) & (1 << bit) != 0)
        .map(|(.., name)| (*name).to_string())
        .collect();
    // CPUID.0AH:EAX[7:0] is the architectural PMU's version (Intel; AMD's
    // guests see their counters through the same leaf under KVM when offered).
    let pmu = (register(0xa, 0, 0) & 0xff) as u8;
    (names, pmu)
}
