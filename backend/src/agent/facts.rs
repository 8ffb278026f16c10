//! The host's facts for prechecks: measured where they can be (the CPU
//! features KVM offers guests, the PMU, memory), from the config where they
//! cannot (chassis, link speed, networks, storage).

use std::net::IpAddr;

use crate::api::{API_VERSION, HostFacts};
use crate::migration::protocol::PROTOCOL_VERSION;

use super::AgentConfig;

/// Gathers the facts; a fact that cannot be read is left empty, not fatal.
/// `vms` is the memory of each VM the host holds.
pub fn gather(config: &AgentConfig, vms: &[u64], usage: (u32, u32, u32)) -> HostFacts {
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
    let (cpu_features, mut pmu) = kvm_features(&config.cpu.hide);
    if !config.cpu.pmu {
        pmu = Pmu::default();
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = |key: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    let (memory_total, memory_available) = match config.memory_for_vms() {
        Some(total) => (total, total.saturating_sub(vms.iter().sum())),
        None => (mem("MemTotal:"), mem("MemAvailable:")),
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
        pmu_version: pmu.version,
        pmu_counters: pmu.counters,
        pmu_counter_bits: pmu.counter_bits,
        memory_total_bytes: memory_total,
        memory_available_bytes: memory_available,
        chassis: config.chassis.clone(),
        management_families: vec![family(config.api_address.ip())],
        migration_address: config.migration_ip().to_string(),
        link_speed_mbps: config.link_speed_mbps,
        networks: config.reached_networks(),
        bridged_networks: config
            .bridges
            .iter()
            .filter(|(_, bridge)| crate::vmm::devices::virtio::tap::interface_index(bridge).is_some())
            .map(|(network, _)| network.clone())
            .collect(),
        storage: config
            .storage
            .iter()
            .map(|root| crate::api::StorageFacts {
                name: root.name.clone(),
                path: root.path.display().to_string(),
                shared: root.shared,
                max_migrations: if root.shared { root.max_migrations() } else { 0 },
                migrations_in_use: if root.shared { root.slots_in_use() } else { 0 },
            })
            .collect(),
        vms: vms.len(),
        cordon: None,
        throughput_to: Default::default(),
        api_refused: Default::default(),
        migration_cost_in_use: in_use,
        migration_cost_limit: limit,
        migration_cost: config.migration_cost(),
        migrations_queued: queued,
    }
}

/// The features KVM offers guests here, and the architectural PMU version.
/// The virtual PMU KVM offers guests: CPUID.0AH:EAX (version in bits 7:0,
/// general-purpose counters per logical CPU in 15:8, their width in 23:16).
#[derive(Debug, Clone, Copy, Default)]
struct Pmu {
    version: u8,
    counters: u8,
    counter_bits: u8,
}

/// What KVM offers guests here, less the features the config hides.
fn kvm_features(hide: &[String]) -> (Vec<String>, Pmu) {
    let Ok(kvm) = crate::vmm::open_kvm() else {
        return (Vec::new(), Pmu::default());
    };
    let Ok(cpuid) = crate::vmm::cpuid::supported(&kvm) else {
        return (Vec::new(), Pmu::default());
    };
    let masks = crate::vmm::cpuid::hiding(hide).unwrap_or_default();
    let entries = &crate::vmm::cpuid::masked(cpuid.as_slice(), &masks);
    let register = |leaf: u32, sub: u32, reg: usize| {
        entries
            .iter()
            .find(|e| e.function == leaf && e.index == sub)
            .map_or(0, |e| [e.eax, e.ebx, e.ecx, e.edx][reg])
    };
    let names = crate::vmm::cpuid::feature_names(entries);
    // CPUID.0AH:EAX[7:0] is the architectural PMU's version (Intel; AMD's
    // guests see their counters through the same leaf under KVM when offered).
    let eax = register(crate::vmm::cpuid::LEAF_PMU, 0, 0);
    let pmu = Pmu {
        version: (eax & 0xff) as u8,
        counters: ((eax >> 8) & 0xff) as u8,
        counter_bits: ((eax >> 16) & 0xff) as u8,
    };
    (names, pmu)
}
