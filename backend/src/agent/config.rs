//! The agent's configuration file (TOML, e.g. `/etc/vmig/agent.toml`).
//!
//! ```toml
//! name = "hostA"                       # the host's name in the cluster (required)
//! api_address = "10.0.0.1:7070"        # where the API listens, mutual TLS (required)
//! migration_address = "10.1.0.1"       # IP that receiving VMMs listen on (default: the API's IP)
//! state_dir = "/var/lib/vmig"          # VM definitions, sockets, console logs (default shown)
//! chassis = "rack4-chassis2"           # VMs of one redundancy group must not share one
//! link_speed_mbps = 10000              # the migration link (default 10000)
//! networks = ["prod", "backup"]        # networks this host's VMs can reach
//! migration_encryption = "tls"        # "off": plaintext migration streams, for a dedicated,
//!                                      # trusted migration network (both agents must say "off")
//!
//! [bridges]                            # the host bridge of each network VMs' cards join
//! prod = "br-prod"                     # (a network here is one this host reaches)
//!
//! [[storage]]                          # where VM images may live (repeatable)
//! name = "shared"                      # its name in facts and prechecks
//! path = "/srv/vmig/shared"            # its mount point here
//! shared = true                        # every host with this root sees the same files
//!
//! [tls]                                # from `vmig pki issue --host hostA`
//! cert = "/etc/vmig/hostA.pem"
//! key = "/etc/vmig/hostA.key"
//! ca = "/etc/vmig/ca.pem"
//!
//! [cpu]                                # what this host offers its guests
//! hide = ["avx512f"]                   # features hidden from VMs (a baseline narrower than KVM's)
//! pmu = true                           # offer virtual performance counters (default true)
//!
//! [limits]
//! max_migration_cost = 8               # concurrent migrations by cost; more wait in a queue
//! migration_cost = 2                   # cost of one migration (default: 1 at >= 10 GbE, else 2)
//! max_api_connections = 256            # API connections served at once; more are refused, counted
//!
//! [timeouts]                           # how long a migration's sides wait for each other
//! accept_s = 30                        # a receiving VMM that no sender reached ends (keepalives extend it)
//! stream_s = 30                        # a migration stream on which nothing moves has failed
//! handoff_s = 10                       # the switchover's wait for each answer (and a target's for Go)
//! ```
//!
//! Relative paths are relative to the file's directory. Unknown fields are
//! errors, reported with the file, line and field.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::migration::Timeouts;
use crate::pki::Identity;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `detail` names the line, column and field.
    #[error("{}: {detail}", path.display())]
    Parse { path: PathBuf, detail: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub name: String,
    pub api_address: SocketAddr,
    #[serde(default)]
    pub migration_address: Option<IpAddr>,
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default)]
    pub chassis: Option<String>,
    #[serde(default = "default_link_speed")]
    pub link_speed_mbps: u64,
    /// Memory this host gives its VMs ("64G"): the facts then report it as
    /// the total and it less the memory of the VMs it holds as available.
    /// Without it, the host's own total and available memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_for_vms: Option<String>,
    #[serde(default)]
    pub networks: Vec<String>,
    /// The bridge of each network VMs' cards are plugged into (a TAP per
    /// card); a network listed here is one the host reaches.
    #[serde(default)]
    pub bridges: crate::vmm::devices::virtio::Bridges,
    #[serde(default)]
    pub storage: Vec<super::storage::StorageRoot>,
    pub tls: Identity,
    /// How migration streams are protected; TLS 1.3 with the host
    /// certificates unless both agents of a migration say `off`.
    #[serde(default)]
    pub migration_encryption: Encryption,
    #[serde(default)]
    pub cpu: CpuConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub timeouts: Timeouts,
}

/// How this host's migration streams are protected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encryption {
    /// TLS 1.3, mutually authenticated with the host certificates.
    #[default]
    Tls,
    /// Plaintext, for a dedicated, trusted migration network: taken only
    /// when the other agent says `off` too (the token still authenticates
    /// the sender, but anyone on the link reads the guest's memory).
    Off,
}

/// What the host offers its guests of its CPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuConfig {
    /// Feature names (as in /proc/cpuinfo) hidden from every VM here, and
    /// left out of the facts.
    #[serde(default)]
    pub hide: Vec<String>,
    /// Offer virtual performance counters to VMs that ask for them.
    #[serde(default = "default_true")]
    pub pmu: bool,
}

impl Default for CpuConfig {
    fn default() -> Self {
        CpuConfig {
            hide: Vec::new(),
            pmu: true,
        }
    }
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default)]
    pub max_migration_cost: Option<u32>,
    #[serde(default)]
    pub migration_cost: Option<u32>,
    /// API connections served at once; more are refused as they arrive
    /// (default 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_api_connections: Option<usize>,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/vmig")
}

fn default_link_speed() -> u64 {
    10_000
}

/// vMotion's budget: a host takes 8 cost units of migrations at a time.
const DEFAULT_MAX_COST: u32 = 8;

impl AgentConfig {
    /// The networks this host's VMs can reach: those listed, and those it
    /// has a bridge for.
    pub fn reached_networks(&self) -> Vec<String> {
        let mut networks = self.networks.clone();
        for network in self.bridges.keys() {
            if !networks.contains(network) {
                networks.push(network.clone());
            }
        }
        networks
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Self::parse(&text).map_err(|detail| ConfigError::Parse {
            path: path.to_path_buf(),
            detail,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let roots = config.storage.iter_mut().map(|root| &mut root.path);
        for file in [
            &mut config.tls.cert,
            &mut config.tls.key,
            &mut config.tls.ca,
            &mut config.state_dir,
        ]
        .into_iter()
        .chain(roots)
        {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
        Ok(config)
    }

    /// Parses and checks a config's text; the error names line and field.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: Self = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        crate::api::validate_name(&config.name).map_err(|e| format!("field `name`: {e}"))?;
        if let Some(size) = &config.memory_for_vms {
            crate::size::parse_size(size).map_err(|e| format!("field `memory_for_vms`: {e}"))?;
        }
        if config.link_speed_mbps == 0 {
            return Err("field `link_speed_mbps`: must be more than 0".into());
        }
        if config.limits.max_migration_cost == Some(0) || config.limits.migration_cost == Some(0) {
            return Err("section `limits`: costs must be more than 0".into());
        }
        config
            .timeouts
            .validate()
            .map_err(|e| format!("section `timeouts`: {e}"))?;
        crate::vmm::cpuid::hiding(&config.cpu.hide).map_err(|e| format!("section `cpu`: hide: {e}"))?;
        let mut names = std::collections::BTreeSet::new();
        for (i, root) in config.storage.iter().enumerate() {
            crate::api::validate_name(&root.name).map_err(|e| format!("storage[{i}].name: {e}"))?;
            if !names.insert(root.name.as_str()) {
                return Err(format!("storage[{i}].name: {} is given twice", root.name));
            }
            if root.path.as_os_str().is_empty() {
                return Err(format!("storage[{i}].path: must not be empty"));
            }
        }
        Ok(config)
    }

    /// The memory given to VMs, when the config sets it.
    pub fn memory_for_vms(&self) -> Option<u64> {
        self.memory_for_vms
            .as_deref()
            .and_then(|size| crate::size::parse_size(size).ok())
    }

    pub fn migration_ip(&self) -> IpAddr {
        self.migration_address.unwrap_or(self.api_address.ip())
    }

    pub fn max_migration_cost(&self) -> u32 {
        self.limits.max_migration_cost.unwrap_or(DEFAULT_MAX_COST)
    }

    /// A migration's cost: slower links afford fewer at once.
    /// API connections served at once (`[limits] max_api_connections`).
    pub fn max_api_connections(&self) -> usize {
        self.limits
            .max_api_connections
            .unwrap_or(super::guard::MAX_CONNECTIONS)
            .max(1)
    }

    pub fn migration_cost(&self) -> u32 {
        let cost = self
            .limits
            .migration_cost
            .unwrap_or(if self.link_speed_mbps >= 10_000 { 1 } else { 2 });
        cost.min(self.max_migration_cost())
    }
}

/// "line L, column C: message" from a TOML error (the message names the field).
pub fn toml_error(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim_end();
    match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let start = before.rfind('\n').map_or(0, |i| i + 1);
            let column = before.len() - start + 1;
            // A type error points at the value; name the field it belongs to.
            let line_text = text[start..].lines().next().unwrap_or_default();
            let field = line_text
                .split_once('=')
                .map(|(key, _)| key.trim())
                .filter(|k| !k.is_empty());
            match field {
                Some(field) if !message.contains(field) => {
                    format!("line {line}, column {column}: field `{field}`: {message}")
                }
                _ => format!("line {line}, column {column}: {message}"),
            }
        }
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "hostA"
api_address = "127.0.0.1:7070"
chassis = "c1"
link_speed_mbps = 1000

[tls]
cert = "hostA.pem"
key = "hostA.key"
ca = "ca.pem"
"#;

    #[test]
    fn a_good_config_parses_with_defaults() {
        let config = AgentConfig::parse(GOOD).unwrap();
        assert_eq!(config.name, "hostA");
        assert_eq!(config.migration_ip().to_string(), "127.0.0.1");
        assert_eq!(config.state_dir, PathBuf::from("/var/lib/vmig"));
        assert_eq!(config.max_migration_cost(), 8);
        assert_eq!(config.migration_cost(), 2, "1 GbE costs 2");
    }

    #[test]
    fn errors_name_line_and_field() {
        let typo = GOOD.replace("chassis", "chasis");
        let error = AgentConfig::parse(&typo).unwrap_err();
        assert!(error.starts_with("line 4, column 1:"), "{error}");
        assert!(error.contains("chasis"), "{error}");
        let wrong_type = GOOD.replace("1000", "\"fast\"");
        let error = AgentConfig::parse(&wrong_type).unwrap_err();
        assert!(
            error.starts_with("line 5,") && error.contains("link_speed_mbps"),
            "{error}"
        );
        let bad_name = GOOD.replace("\"hostA\"", "\"host A\"");
        assert!(AgentConfig::parse(&bad_name).unwrap_err().contains("`name`"));
        let missing = GOOD.replace("api_address = \"127.0.0.1:7070\"\n", "");
        assert!(AgentConfig::parse(&missing).unwrap_err().contains("api_address"));
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let config = AgentConfig::parse(include_str!("../../../contrib/agent.toml")).unwrap();
        assert_eq!(config.name, "hostA");
        assert_eq!(config.migration_ip().to_string(), "10.1.0.1");
        assert_eq!((config.max_migration_cost(), config.migration_cost()), (8, 1));
        assert_eq!(config.storage.len(), 2);
        assert!(config.storage[0].shared && !config.storage[1].shared);
        assert!(config.cpu.pmu && config.cpu.hide.is_empty());
    }

    #[test]
    fn storage_roots_and_cpu_masks_are_checked() {
        let twice =
            format!("{GOOD}\n[[storage]]\nname = \"a\"\npath = \"/x\"\n[[storage]]\nname = \"a\"\npath = \"/y\"\n");
        assert!(AgentConfig::parse(&twice).unwrap_err().contains("given twice"));
        let unknown = format!("{GOOD}\n[cpu]\nhide = [\"warp_drive\"]\n");
        assert!(AgentConfig::parse(&unknown).unwrap_err().contains("warp_drive"));
        let known = format!("{GOOD}\n[cpu]\nhide = [\"avx2\"]\npmu = false\n");
        let config = AgentConfig::parse(&known).unwrap();
        assert_eq!(
            (config.cpu.hide.as_slice(), config.cpu.pmu),
            (&["avx2".to_string()][..], false)
        );
    }

    #[test]
    fn relative_paths_follow_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, GOOD).unwrap();
        let config = AgentConfig::load(&path).unwrap();
        assert_eq!(config.tls.cert, dir.path().join("hostA.pem"));
        let error = AgentConfig::load(&dir.path().join("none.toml")).unwrap_err();
        assert!(error.to_string().contains("none.toml"));
    }
}
