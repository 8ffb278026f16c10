//! The agent API: versioned JSON over mutually authenticated TLS.
//!
//! One request per connection. The client sends one JSON object on one line,
//! `{"v": 1, "op": "...", ...}`; the agent answers with zero or more
//! `{"progress": ...}` lines (long operations: `migrate`) and then exactly one
//! final line, `{"status": 200, "result": ...}` or
//! `{"status": 4xx|5xx, "error": "..."}`. Status codes follow HTTP's meaning:
//! 400 malformed request (nothing changed), 403 the peer's certificate does
//! not allow it, 404 unknown VM, 409 conflicts with the VM's state (already
//! exists, already migrating, not running), 503 the host cannot take it now,
//! 500 the operation failed. A request of another version gets 400 naming the
//! version the agent speaks. Requests marked "host only" are accepted only
//! from certificates with the host role (agents talking to agents).

use serde::{Deserialize, Serialize};

use crate::migration::{MigrationOptions, Progress, Report, Token};
use crate::pki::Role;

/// The API version this build speaks.
pub const API_VERSION: u32 = 1;
/// Longest request line an agent reads.
pub const MAX_REQUEST: usize = 1 << 20;

/// The envelope of every request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u32,
    #[serde(flatten)]
    pub request: Request,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The host's facts and its VMs' summary.
    Host,
    /// Every VM this host runs or holds.
    ListVms,
    /// Defines a VM from its spec and (with `start`) boots it.
    CreateVm {
        spec: VmSpec,
        start: bool,
    },
    StartVm {
        name: String,
    },
    /// Stops the VM's VMM (the definition stays).
    StopVm {
        name: String,
    },
    /// Stops the VM and forgets it, console log included.
    DestroyVm {
        name: String,
    },
    ShowVm {
        name: String,
    },
    /// The last `bytes` of the VM's console log.
    Console {
        name: String,
        bytes: u64,
    },
    /// Live-migrates the VM to `target` (streams progress).
    Migrate {
        name: String,
        target: Peer,
        options: MigrationOptions,
    },
    /// Host only: prepare a receiving VMM for `spec`; answers its address.
    PrepareIncoming {
        spec: VmSpec,
        token: Token,
        source: String,
    },
    /// Host only: the source reports the migration's end; with the VM's
    /// console output so far (its last MiB), so the log moves with the VM.
    FinishIncoming {
        name: String,
        migrated: bool,
        #[serde(default)]
        console: String,
    },
    /// Host only: does the receiving VMM for `name` run its VM?
    IncomingState {
        name: String,
    },
}

/// Another agent, as the operator's inventory knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub name: String,
    /// `HOST:PORT` of its API.
    pub address: String,
}

/// A VM's definition: what `vmig vm create` reads from TOML.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    /// Unique in the cluster; letters, digits, `-`, `_` and `.`.
    pub name: String,
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    /// Guest memory, e.g. "1G" (64M to 1T, a multiple of 2M).
    #[serde(default = "default_memory")]
    pub memory: String,
    /// A kernel path on the host, or `builtin:testguest`.
    pub kernel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    #[serde(default)]
    pub cmdline: String,
    /// VMs of one group must not share a chassis (checked by prechecks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redundancy_group: Option<String>,
}

fn default_vcpus() -> u8 {
    1
}

fn default_memory() -> String {
    "512M".into()
}

impl VmSpec {
    /// Checks what can be checked without a host; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        validate_name(&self.name).map_err(|e| format!("name: {e}"))?;
        if self.vcpus == 0 || self.vcpus > crate::vmm::MAX_VCPUS {
            return Err(format!(
                "vcpus: {} is not between 1 and {}",
                self.vcpus,
                crate::vmm::MAX_VCPUS
            ));
        }
        let bytes = crate::size::parse_size(&self.memory).map_err(|e| format!("memory: {e}"))?;
        crate::vmm::memory::validate_size(bytes).map_err(|e| format!("memory: {e}"))?;
        if self.kernel.is_empty() {
            return Err("kernel: must not be empty".into());
        }
        Ok(())
    }

    pub fn memory_bytes(&self) -> u64 {
        crate::size::parse_size(&self.memory).unwrap_or(0)
    }
}

/// VM and host names: 1 to 63 of letters, digits, `-`, `_`, `.`; not starting with `.` or `-`.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.len() > 63 {
        return Err(format!("{name:?} must be 1 to 63 characters"));
    }
    if name.starts_with(['.', '-']) || !name.chars().all(ok_char) {
        return Err(format!(
            "{name:?} may hold only letters, digits, '-', '_' and '.', and not start with '.' or '-'"
        ));
    }
    Ok(())
}

/// Where a VM is in its life on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// Defined, no VMM.
    Stopped,
    Running,
    Paused,
    /// Leaving for another host.
    Migrating,
    /// Arriving from another host (a receiving VMM waits or receives).
    Incoming,
    /// The guest powered off, crashed or its VMM died.
    Failed,
    /// A migration's outcome is in doubt; the source is paused.
    InDoubt,
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VmState::Stopped => "stopped",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Migrating => "migrating",
            VmState::Incoming => "incoming",
            VmState::Failed => "failed",
            VmState::InDoubt => "in doubt",
        })
    }
}

/// One line of `vmig vms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmInfo {
    pub name: String,
    pub host: String,
    pub state: VmState,
    pub vcpus: u8,
    pub memory_bytes: u64,
    /// The VMM's process id, while it has one.
    pub pid: Option<u32>,
    /// Where it is migrating to, while it is.
    pub migrating_to: Option<String>,
    /// What became of the last migration that did not move it, if any.
    pub note: Option<String>,
}

/// `vmig vm show`: the definition, the summary and the VMM's own figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmDetail {
    pub info: VmInfo,
    pub spec: VmSpec,
    pub stats: Option<crate::vmm::VmStats>,
    pub console_path: String,
}

/// What an agent knows of its host, measured where it can be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostFacts {
    pub name: String,
    pub agent_version: String,
    pub api_version: u32,
    pub migration_protocol: u32,
    pub cpu_vendor: String,
    pub cpu_model: String,
    /// Feature names (as in /proc/cpuinfo) that KVM offers guests here.
    pub cpu_features: Vec<String>,
    /// Architectural PMU version KVM offers guests (0: none).
    pub pmu_version: u8,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub chassis: Option<String>,
    /// Address families of the management network: "ipv4", "ipv6".
    pub management_families: Vec<String>,
    pub migration_address: String,
    pub link_speed_mbps: u64,
    pub networks: Vec<String>,
    pub storage: Vec<String>,
    pub vms: usize,
    /// Migrations running (and queued) on this host, by cost.
    pub migration_cost_in_use: u32,
    pub migration_cost_limit: u32,
    pub migrations_queued: u32,
}

/// A `migrate` request's progress lines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrateProgress {
    /// Waiting for a free migration slot on `host` (its cost limit is reached).
    Queued { host: String, position: u32 },
    /// The target prepared its receiving VMM.
    Prepared { target: String },
    /// The engine's own progress.
    Engine(Progress),
}

/// The final answer to a successful `migrate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrateResult {
    pub vm: String,
    pub source: String,
    pub target: String,
    /// Time spent queued for a slot before the migration started.
    pub queued_ms: u64,
    /// The engine's report; none when an in-doubt handoff was settled by the agents.
    pub report: Option<Report>,
    pub note: Option<String>,
}

/// Answer to `prepare_incoming`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepared {
    /// `tcp:HOST:PORT` of the receiving VMM.
    pub url: String,
}

/// Answer to `incoming_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncomingState {
    /// The receiving VMM is still waiting or receiving: not decided yet.
    Undecided,
    /// The VM runs here.
    Running,
    /// The receiving VMM gave the VM up (or never had it).
    Gone,
}

/// The final line of every answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An answer line: progress or the final answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Line {
    Progress { progress: MigrateProgress },
    Answer(Answer),
}

/// Which certificate roles may make a request.
pub fn allowed(request: &Request, role: Role) -> bool {
    match request {
        Request::PrepareIncoming { .. } | Request::FinishIncoming { .. } | Request::IncomingState { .. } => {
            role == Role::Host
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_with_their_version() {
        let line = r#"{"v":1,"op":"migrate","name":"vm1","target":{"name":"hostB","address":"127.0.0.1:7070"},"options":{"downtime_limit_ms":50,"bandwidth_limit":null,"timeout_s":600,"timeout_action":"cancel","streams":2,"auto_converge":true}}"#;
        let envelope: Envelope = serde_json::from_str(line).unwrap();
        assert_eq!(envelope.v, 1);
        let Request::Migrate { name, target, options } = &envelope.request else {
            panic!("not a migrate: {envelope:?}");
        };
        assert_eq!((name.as_str(), target.name.as_str()), ("vm1", "hostB"));
        assert_eq!(options.streams, 2);
        let again: Envelope = serde_json::from_str(&serde_json::to_string(&envelope).unwrap()).unwrap();
        assert!(matches!(again.request, Request::Migrate { .. }));
        assert!(serde_json::from_str::<Envelope>(r#"{"v":1,"op":"format_disk"}"#).is_err());
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("vm1").is_ok());
        assert!(validate_name("web-01.prod_a").is_ok());
        for bad in ["", ".hidden", "-x", "a/b", "a b", &"x".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn specs_are_checked_field_by_field() {
        let spec = VmSpec {
            name: "vm1".into(),
            vcpus: 2,
            memory: "1G".into(),
            kernel: "builtin:testguest".into(),
            initrd: None,
            cmdline: String::new(),
            redundancy_group: None,
        };
        assert!(spec.validate().is_ok());
        let bad = VmSpec {
            memory: "3M".into(),
            ..spec.clone()
        };
        assert!(bad.validate().unwrap_err().starts_with("memory:"));
        let bad = VmSpec { vcpus: 0, ..spec };
        assert!(bad.validate().unwrap_err().starts_with("vcpus:"));
    }

    #[test]
    fn only_hosts_prepare_incoming_vms() {
        let request = Request::IncomingState { name: "vm1".into() };
        assert!(allowed(&request, Role::Host));
        assert!(!allowed(&request, Role::Operator));
        assert!(allowed(&Request::ListVms, Role::Operator));
    }
}
