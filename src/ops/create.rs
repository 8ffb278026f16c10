//! Defining a VM in the cluster: where it goes, that its name is free, and
//! the CPU it sees (`cpu = "baseline"`: only the features every host offers,
//! like vMotion's EVC, so that it can move to any host of the cluster).

use thiserror::Error;
use vmig_backend::api::{HostFacts, Request, VmInfo, VmSpec};

use super::cluster::{Cluster, ClusterError};
use super::code::Code;

#[derive(Debug, Error)]
pub enum CreateError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("a VM named {vm} exists on {host} already")]
    Exists { vm: String, host: String },
    #[error(
        "no host could be asked where {vm} should go, or every host is cordoned or lacks a bridge for its networks"
    )]
    NoHost { vm: String },
    /// A baseline needs every host's features: one did not answer.
    #[error("cannot compute the cluster's CPU baseline: {host} did not answer ({detail})")]
    Baseline { host: String, detail: String },
    #[error("cpu: {0:?} is neither \"host\" nor \"baseline\"")]
    CpuMode(String),
}

impl CreateError {
    pub fn code(&self) -> Code {
        match self {
            CreateError::Cluster(e) => e.code(),
            CreateError::Exists { .. } => Code::Conflict,
            CreateError::NoHost { .. } | CreateError::Baseline { .. } => Code::Unreachable,
            CreateError::CpuMode(_) => Code::Invalid,
        }
    }
}

/// The features `host` offers that some host of `all` does not: what a VM
/// on `host` must not see to be able to move anywhere among `all`.
pub fn baseline_hide(host: &HostFacts, all: &[HostFacts]) -> Vec<String> {
    host.cpu_features
        .iter()
        .filter(|f| all.iter().any(|other| !other.cpu_features.contains(f)))
        .cloned()
        .collect()
}

/// Defines `spec` on `host` (default: the host with the most memory free)
/// and, with `start`, boots it.
pub fn create(cluster: &Cluster, mut spec: VmSpec, host: Option<&str>, start: bool) -> Result<VmInfo, CreateError> {
    let baseline = match spec.cpu.as_deref() {
        None | Some("host") => false,
        Some("baseline") => true,
        Some(other) => return Err(CreateError::CpuMode(other.to_string())),
    };
    if let Ok(found) = cluster.locate(&spec.name) {
        return Err(CreateError::Exists {
            vm: spec.name,
            host: found.host.name,
        });
    }
    let answers = cluster.hosts();
    let target = match host {
        Some(name) => cluster.host(name)?.clone(),
        None => answers
            .iter()
            .filter_map(|a| {
                a.facts
                    .as_ref()
                    .ok()
                    .filter(|f| f.cordon.is_none())
                    // A host that bridges every network the VM's cards are on.
                    .filter(|f| spec.nics.iter().all(|nic| f.bridged_networks.contains(&nic.network)))
                    .map(|f| (&a.host, f.memory_available_bytes))
            })
            .max_by_key(|(_, free)| *free)
            .map(|(host, _)| host.clone())
            .ok_or_else(|| CreateError::NoHost { vm: spec.name.clone() })?,
    };
    if baseline {
        let mut all = Vec::new();
        for answer in &answers {
            match &answer.facts {
                Ok(facts) => all.push(facts.clone()),
                Err(e) => {
                    return Err(CreateError::Baseline {
                        host: answer.host.name.clone(),
                        detail: e.to_string(),
                    });
                }
            }
        }
        let here = all
            .iter()
            .find(|f| f.name == target.name)
            .ok_or_else(|| CreateError::NoHost { vm: spec.name.clone() })?;
        spec.cpu_hide = baseline_hide(here, &all);
    }
    let info = cluster
        .client(&target)
        .call(Request::CreateVm { spec, start })
        .map_err(ClusterError::from)?;
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(features: &[&str]) -> HostFacts {
        let mut facts: HostFacts = serde_json::from_value(serde_json::json!({
            "name": "h", "agent_version": "0", "api_version": 1, "migration_protocol": 4,
            "cpu_vendor": "v", "cpu_model": "m", "cpu_features": [], "pmu_version": 0,
            "memory_total_bytes": 0, "memory_available_bytes": 0, "chassis": null,
            "management_families": [], "migration_address": "", "link_speed_mbps": 1,
            "networks": [], "storage": [], "vms": 0, "migration_cost_in_use": 0,
            "migration_cost_limit": 8, "migrations_queued": 0
        }))
        .unwrap();
        facts.cpu_features = features.iter().map(|f| f.to_string()).collect();
        facts
    }

    #[test]
    fn the_baseline_hides_what_any_host_lacks() {
        let a = host(&["sse2", "avx2", "gfni"]);
        let b = host(&["sse2", "avx2"]);
        let c = host(&["sse2", "gfni"]);
        assert_eq!(baseline_hide(&a, &[a.clone(), b.clone(), c.clone()]), ["avx2", "gfni"]);
        assert_eq!(baseline_hide(&b, &[a.clone(), b.clone()]), Vec::<String>::new());
        assert_eq!(baseline_hide(&a, std::slice::from_ref(&a)), Vec::<String>::new());
    }
}
