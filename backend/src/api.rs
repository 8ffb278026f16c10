//! The agent API: versioned JSON over mutually authenticated TLS.
//!
//! One request per connection. The client sends one JSON object on one line,
//! `{"v": 1, "op": "...", ...}`; the agent answers with zero or more
//! `{"progress": ...}` lines (long operations: `migrate`, `watch_migration`,
//! `prepare_incoming`) and then exactly one final line,
//! `{"status": 200, "result": ...}` or
//! `{"status": 4xx|5xx, "code": "...", "error": "..."}`. Status codes follow
//! HTTP's meaning: 400 malformed request (nothing changed), 403 the peer's
//! certificate does not allow it, 404 unknown VM or migration, 409 conflicts
//! with the VM's state (already exists, already migrating, not running), 503
//! the host cannot take it now, 500 the operation failed. A request of
//! another version gets 400 naming the version the agent speaks. Requests
//! marked "host only" are accepted only from certificates with the host role
//! (agents talking to agents).
//!
//! The `code` is what callers decide on (see [`Code`]); the message is for
//! people and may change.
//!
//! A migration has an id, chosen by the client (`vmig` makes a random one)
//! or else by the source's agent. A `migrate` request starts it and watches
//! it; a client whose connection drops asks again with `watch_migration`
//! (progress, then the same final line) or `migration` (its state now), on
//! the source's agent or, for whether the VM arrived, the target's; `cancel_migration`
//! stops it unless its switchover has begun. While a migration runs, its
//! watchers get a `{"progress": {"waiting": ...}}` line at least every
//! [`KEEPALIVE_EVERY`], so that a client hears a silent agent. A `migrate`
//! may name the run that asked for it (a `vmig` invocation or a runbook);
//! the source's journal keeps it, with the name in the asking certificate,
//! and `history` answers with the agent's journal entries.
//!
//! A VM's console is one byte stream over its whole life, on every host it
//! ran on, each byte at an absolute offset (see `crate::agent::console`).
//! `console_stream` answers `{"console": ...}` lines ([`ConsoleLine`]) with
//! the bytes from an offset as the guest writes them, a keepalive at least
//! every [`KEEPALIVE_EVERY`], until this host's part of the console is over:
//! the final answer ([`ConsoleEnd`]) says at which offset and why (the VM
//! moved away, stopped, is gone), and a follower asks the VM's new host from
//! there. `console_input` puts bytes into the guest's console input.

use serde::{Deserialize, Serialize};

use crate::migration::{MigrationOptions, Progress, Report, Token};
use crate::pki::Role;

/// The API version this build speaks.
pub const API_VERSION: u32 = 1;
/// Longest request line an agent reads.
pub const MAX_REQUEST: usize = 1 << 20;
/// Longest answer line a client reads: the largest answer is a `history`,
/// at most the two journal files (2 × [`crate::agent::journal::ROTATE_AT`]).
pub const MAX_ANSWER: usize = 64 << 20;
/// The longest a watcher of a running migration goes without a line.
pub const KEEPALIVE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// What an error is, for whoever decides on it; stable across versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// The request is malformed or its arguments invalid; nothing changed.
    Invalid,
    /// The peer's certificate does not allow the request.
    Forbidden,
    /// No such VM or migration.
    NotFound,
    /// The VM's state does not allow it (exists, migrating, not running, in doubt).
    Conflict,
    /// The host cannot take it now, or another agent could not be reached.
    Unavailable,
    /// It failed for another reason (the message says).
    Failed,
    /// A migration failed before its handoff; the VM runs on its source.
    RolledBack,
    /// A migration was cancelled; the VM runs on its source.
    Cancelled,
    /// A migration hit its time limit (`cancel`); the VM runs on its source.
    TimedOut,
    /// The target turned the VM away before anything was sent.
    Refused,
    /// Whether the target runs the VM is not known yet; the source's copy
    /// stays paused and cannot be started. The agents keep asking.
    InDoubt,
    /// The process that ran the VM's only copy died: the VM runs nowhere.
    Lost,
    /// The VM's VMM on its source was stopped during the migration: the VM
    /// is there, stopped, and did not move.
    Stopped,
    /// An answer of a newer agent.
    #[serde(other)]
    Unknown,
}

impl Code {
    /// The code of a failure that carries only an HTTP-like status.
    pub fn of_status(status: u16) -> Self {
        match status {
            400 => Code::Invalid,
            403 => Code::Forbidden,
            404 => Code::NotFound,
            409 => Code::Conflict,
            503 => Code::Unavailable,
            _ => Code::Failed,
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        f.write_str(&text)
    }
}

/// The envelope of every request.
#[derive(Debug, Clone, Serialize)]
pub struct Envelope {
    pub v: u32,
    #[serde(flatten)]
    pub request: Request,
}

impl Envelope {
    /// Reads one request line strictly: a field the request does not have
    /// (a misspelling, a newer client's option) is refused, and the message
    /// names it, rather than the request running with a default. (serde
    /// cannot refuse unknown fields through `flatten`, so the version is
    /// taken out first and the rest is the request.)
    pub fn decode(line: &str) -> Result<Envelope, String> {
        let mut value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("the request is not JSON: {e}"))?;
        let object = value
            .as_object_mut()
            .ok_or_else(|| "the request is not a JSON object".to_string())?;
        let v = object
            .remove("v")
            .and_then(|v| v.as_u64())
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| "the request has no version (\"v\")".to_string())?;
        if v != API_VERSION {
            return Err(format!(
                "API version {v} is not supported; this agent speaks version {API_VERSION}"
            ));
        }
        let request = serde_json::from_value(value).map_err(|e| format!("malformed request: {e}"))?;
        Ok(Envelope { v, request })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
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
    /// Streams the VM's console from absolute offset `from` (none: the last
    /// `back` bytes this host keeps) as the guest writes it: console lines
    /// ([`ConsoleLine`]), then a [`ConsoleEnd`] once this host's part of
    /// the console is over.
    ConsoleStream {
        name: String,
        #[serde(default)]
        from: Option<u64>,
        #[serde(default)]
        back: u64,
    },
    /// Bytes (hex, at most [`MAX_CONSOLE_INPUT`]) for the VM's console
    /// input, its UART's receive FIFO; answers [`ConsoleAccepted`], how many
    /// it took (the rest is the caller's to offer again). 503 while the VM
    /// migrates or is still arriving: nothing was taken, offer them again
    /// where it runs next; 409 when it does not run here.
    ConsoleInput {
        name: String,
        hex: String,
    },
    /// Live-migrates the VM to `target` (streams progress); `id` names the
    /// migration (the agent makes one when none is given).
    Migrate {
        name: String,
        target: Peer,
        options: MigrationOptions,
        #[serde(default)]
        id: Option<String>,
        /// The run (a `vmig` invocation or a runbook) that asked for it,
        /// kept in the journal.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run: Option<String>,
    },
    /// Watches migration `id` to its end: progress, then the answer its
    /// `migrate` got (or will get).
    WatchMigration {
        id: String,
    },
    /// The entries of this agent's journal (`Vec<JournalEntry>`, oldest
    /// first) at or after `since_ms` (milliseconds since the epoch), of VM
    /// `vm` and of run `run` when given (a run's filter keeps every entry of
    /// the migrations it started).
    History {
        #[serde(default)]
        since_ms: Option<u64>,
        #[serde(default)]
        vm: Option<String>,
        #[serde(default)]
        run: Option<String>,
    },
    /// Where migration `id` is, as this agent knows it ([`MigrationInfo`]).
    Migration {
        id: String,
    },
    /// Cancels the migration of VM `name`, unless its switchover has begun.
    CancelMigration {
        name: String,
    },
    /// Host only: prepare a receiving VMM for `spec`; answers its address.
    PrepareIncoming {
        spec: VmSpec,
        token: Token,
        source: String,
        id: String,
        /// The source's agent allows plaintext streams (its
        /// `migration_encryption = "off"`); they are plaintext only when
        /// the target's agent allows them too.
        #[serde(default)]
        plaintext: bool,
    },
    /// Host only: the source reports the migration's end. Answers the
    /// arrival's [`IncomingState`]. (`console` is no longer sent nor read:
    /// the console's history comes by `console_history`, at its offsets.)
    FinishIncoming {
        name: String,
        id: String,
        migrated: bool,
        #[serde(default)]
        console: String,
    },
    /// Host only: console output that follows VM `name` to this host on
    /// arrival `id` (hex, from absolute offset `from`): the source sends the
    /// end of the console it holds, in order, in parts that fit a request,
    /// before its `finish_incoming`. Answers whether it was kept (the part
    /// continues what is kept, for the VM that arrived by `id`).
    ConsoleHistory {
        name: String,
        id: String,
        from: u64,
        hex: String,
    },
    /// Host only: what became of migration `id` of VM `name` here?
    IncomingState {
        name: String,
        id: String,
    },
    /// What this host finds at each image path (`Vec<DriveProbe>`): the
    /// agent looks itself. Changes nothing.
    ProbeDrives {
        paths: Vec<String>,
    },
    /// Cordons this host: it takes no new VMs (arrivals, creations) until
    /// uncordoned; kept across agent restarts. Answers the `Cordon`.
    Cordon {
        #[serde(default)]
        reason: Option<String>,
        /// The run (an evacuation) the cordon is part of: lifting the cordon
        /// ends that run's pending steps.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run: Option<String>,
    },
    /// Lifts this host's cordon; answers whether there was one.
    Uncordon,
    /// Notes in this (the source's) journal that the prechecks refused
    /// migration `id` of VM `name` to `target`; changes nothing else.
    RecordRefusal {
        id: String,
        name: String,
        target: String,
        #[serde(default)]
        run: Option<String>,
        rules: Vec<String>,
        code: Code,
        message: String,
    },
    /// How fast the VM dirties its memory: its VMM logs dirty pages for
    /// `window_ms` (at most 2000) and counts them; nothing is sent
    /// (`crate::runtime::control::DirtySample`).
    SampleDirtyRate {
        name: String,
        window_ms: u32,
    },
    /// Notes in this host's journal of runs a step of operator run `run`
    /// that concerns this host (an evacuation's plan, a VM stopped for
    /// maintenance, the run's end); changes nothing else.
    RecordRun {
        run: String,
        event: RunEvent,
    },
    /// This host's journal of runs (`Vec<RunEntry>`, oldest first), of run
    /// `run` when given.
    Runs {
        #[serde(default)]
        run: Option<String>,
    },
    /// Inserts `medium` into the VM's CD/DVD drive, or ejects it (`None`);
    /// the definition keeps the change.
    Cdrom {
        name: String,
        #[serde(default)]
        medium: Option<String>,
    },
    /// This host's audit trail (`Vec<AuditEntry>`, oldest first): every
    /// request that changes something, and every refused one, at or after
    /// `since_ms` (milliseconds since the epoch), by `by` when given.
    Audit {
        #[serde(default)]
        since_ms: Option<u64>,
        #[serde(default)]
        by: Option<String>,
    },
}

/// Most bytes one `console_input` carries.
pub const MAX_CONSOLE_INPUT: usize = 4096;

/// A line of a `console_stream`, before its final answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsoleLine {
    /// The console's bytes (hex) from absolute offset `at`.
    Output { at: u64, hex: String },
    /// The bytes from `from` to `to` are kept nowhere this host knows (they
    /// scrolled out of the history that follows a VM, or an agent died
    /// before it handed them on): the stream goes on at `to`.
    Skipped { from: u64, to: u64 },
    /// Nothing new (a keepalive): the stream is at `at` (or, before its
    /// first byte, at the offset asked for).
    Waiting { at: u64 },
}

impl ConsoleLine {
    pub fn output(at: u64, bytes: &[u8]) -> Self {
        ConsoleLine::Output {
            at,
            hex: crate::hex::encode(bytes),
        }
    }
}

/// How a host's part of a VM's console ended: the answer to `console_stream`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleEnd {
    /// The offset after the last byte this host has: where the console
    /// goes on, wherever the VM is now.
    pub at: u64,
    pub reason: ConsoleEndReason,
    /// Where the VM went, when it moved and this host knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsoleEndReason {
    /// The VM migrated away: its console goes on at its new host.
    Moved,
    /// The VM stopped here (or was restarted: a new boot's console starts
    /// again at offset 0).
    Stopped,
    /// This host holds the VM no more (destroyed, or it never arrived).
    Gone,
    /// An answer of a newer agent.
    #[serde(other)]
    Unknown,
}

/// Answer to `console_input`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleAccepted {
    /// Bytes the guest's UART took, from the first on.
    pub accepted: usize,
}

/// What an agent found at an image path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriveProbe {
    pub path: String,
    /// The storage root of the host it lies under.
    pub root: Option<String>,
    /// That root is shared across hosts.
    pub shared: bool,
    pub exists: bool,
    pub size: u64,
    /// `id:HEX` (the image's `user.vmig.id`), else `inode:DEV:INO`.
    pub identity: Option<String>,
    /// A VMM holds the image's lock.
    pub locked: bool,
    /// Why it could not be looked at.
    pub error: Option<String>,
}

/// A host's cordon: it takes no new VMs while it has one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cordon {
    pub reason: Option<String>,
    /// The run (an evacuation) that cordoned the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// The certificate name of who cordoned it.
    pub by: Option<String>,
    /// When (milliseconds since the epoch).
    pub at_ms: u64,
}

/// A storage root as the facts report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageFacts {
    pub name: String,
    pub path: String,
    pub shared: bool,
    /// A shared root's migration budget (declared) and the slots held now
    /// by any host that mounts it (measured from the root's own locks).
    #[serde(default)]
    pub max_migrations: u32,
    #[serde(default)]
    pub migrations_in_use: u32,
}

/// Another agent, as the operator's inventory knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// Read-write disks (raw images on the host's storage roots), by slot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskSpec>,
    /// A read-only CD/DVD drive, in the slot after the disks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cdrom: Option<CdromSpec>,
    /// Virtual performance counters (CPUID leaf 0xA): a target must offer a
    /// PMU at least as capable.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pmu: bool,
    /// A vGPU profile: its frame buffer is copied while the VM is stunned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vgpu: Option<VgpuSpec>,
    /// The CPU it sees: "host" (every feature its host's KVM offers, the
    /// default) or "baseline" (only those every host of the cluster offers,
    /// resolved into `cpu_hide` when it is created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// CPU features hidden from it (names as in /proc/cpuinfo).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpu_hide: Vec<String>,
    /// What host maintenance does with it: "live" (moved live, the
    /// default), "stop" (shut down, started again on return) or "pin"
    /// (never moved).
    #[serde(default, skip_serializing_if = "Maintenance::is_live")]
    pub maintenance: Maintenance,
    /// Network cards (virtio-net), in the slots after the drives: each on a
    /// network a host must reach (its bridge there) for the VM to run there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<NicSpec>,
}

/// A network card as the operator declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicSpec {
    /// The network (a name in the hosts' `networks` and `[bridges]`).
    pub network: String,
    /// Its MAC address; none: one derived from the VM's name and the
    /// card's slot (stable for the VM's life, wherever it runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<crate::vmm::devices::virtio::Mac>,
}

/// What an evacuation of its host does with a VM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Maintenance {
    /// Moved live to another host.
    #[default]
    Live,
    /// Shut down for the maintenance, started again on return.
    Stop,
    /// Never moved: the evacuation reports it.
    Pin,
}

impl Maintenance {
    pub fn is_live(&self) -> bool {
        *self == Maintenance::Live
    }

    pub fn name(self) -> &'static str {
        match self {
            Maintenance::Live => "live",
            Maintenance::Stop => "stop",
            Maintenance::Pin => "pin",
        }
    }
}

impl Default for VmSpec {
    fn default() -> Self {
        VmSpec {
            name: String::new(),
            vcpus: default_vcpus(),
            memory: default_memory(),
            kernel: String::new(),
            initrd: None,
            cmdline: String::new(),
            redundancy_group: None,
            disks: Vec::new(),
            cdrom: None,
            pmu: false,
            vgpu: None,
            cpu: None,
            cpu_hide: Vec::new(),
            maintenance: Maintenance::Live,
            nics: Vec::new(),
        }
    }
}

/// A read-write disk: a raw image file on a storage root of the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    /// Absolute path of the image.
    pub path: String,
    /// The size the image must have at least ("1G"); none: whatever it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
}

/// A CD/DVD drive and its medium (an ISO image).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdromSpec {
    /// Absolute path of the medium; kept when ejected, to reconnect it.
    pub path: String,
    /// Whether the medium is in the drive.
    #[serde(default = "default_connected")]
    pub connected: bool,
}

fn default_connected() -> bool {
    true
}

/// A vGPU profile, as the operator declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VgpuSpec {
    /// The vendor's profile name, e.g. "grid_a100-8c".
    pub profile: String,
    /// Its frame buffer ("8G"), copied while the VM is stunned.
    pub framebuffer: String,
}

fn valid_network_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
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
        let slots = self.disks.len() + usize::from(self.cdrom.is_some()) + self.nics.len();
        if slots > crate::vmm::devices::virtio::mmio::MAX_DEVICES {
            return Err(format!(
                "disks: {slots} devices (disks, CD/DVD and network cards); at most {} are supported",
                crate::vmm::devices::virtio::mmio::MAX_DEVICES
            ));
        }
        let mut macs = std::collections::BTreeSet::new();
        for (i, nic) in self.nic_configs().iter().enumerate() {
            if !valid_network_name(&nic.network) {
                return Err(format!(
                    "nics[{i}].network: {:?} is not a network name (letters, digits, -, _ and .)",
                    nic.network
                ));
            }
            if !macs.insert(nic.mac) {
                return Err(format!("nics[{i}].mac: {} is given twice", nic.mac));
            }
        }
        let mut paths = std::collections::BTreeSet::new();
        for (i, disk) in self.disks.iter().enumerate() {
            let field = format!("disks[{i}]");
            check_image_path(&disk.path).map_err(|e| format!("{field}.path: {e}"))?;
            if let Some(size) = &disk.size {
                crate::size::parse_size(size).map_err(|e| format!("{field}.size: {e}"))?;
            }
            if !paths.insert(disk.path.as_str()) {
                return Err(format!("{field}.path: {} is given twice", disk.path));
            }
        }
        if let Some(cdrom) = &self.cdrom {
            check_image_path(&cdrom.path).map_err(|e| format!("cdrom.path: {e}"))?;
            if paths.contains(cdrom.path.as_str()) {
                return Err(format!("cdrom.path: {} is one of the disks", cdrom.path));
            }
        }
        crate::vmm::cpuid::hiding(&self.cpu_hide).map_err(|e| format!("cpu_hide: {e}"))?;
        if let Some(cpu) = self.cpu.as_deref().filter(|c| !matches!(*c, "host" | "baseline")) {
            return Err(format!("cpu: {cpu:?} is neither \"host\" nor \"baseline\""));
        }
        if let Some(vgpu) = &self.vgpu {
            if vgpu.profile.is_empty() {
                return Err("vgpu.profile: must not be empty".into());
            }
            crate::size::parse_size(&vgpu.framebuffer).map_err(|e| format!("vgpu.framebuffer: {e}"))?;
        }
        Ok(())
    }

    pub fn memory_bytes(&self) -> u64 {
        crate::size::parse_size(&self.memory).unwrap_or(0)
    }

    /// The VM's drives as its VMM gets them, by slot: the disks, then the CD/DVD.
    pub fn drives(&self) -> Vec<crate::vmm::devices::virtio::DiskConfig> {
        use crate::vmm::devices::virtio::{DiskConfig, DiskKind};
        let disks = self.disks.iter().map(|d| DiskConfig {
            kind: DiskKind::Disk,
            path: d.path.clone().into(),
            connected: true,
        });
        let cdrom = self.cdrom.iter().map(|c| DiskConfig {
            kind: DiskKind::Cdrom,
            path: c.path.clone().into(),
            connected: c.connected,
        });
        disks.chain(cdrom).collect()
    }

    /// The VM's network cards as its VMM gets them, each with its MAC.
    pub fn nic_configs(&self) -> Vec<crate::vmm::devices::virtio::NicConfig> {
        let first = self.disks.len() + usize::from(self.cdrom.is_some());
        self.nics
            .iter()
            .enumerate()
            .map(|(i, nic)| crate::vmm::devices::virtio::NicConfig {
                network: nic.network.clone(),
                mac: nic.mac.unwrap_or_else(|| {
                    crate::vmm::devices::virtio::Mac::derived(&format!("{}/{}", self.name, first + i))
                }),
            })
            .collect()
    }

    /// The slot of the CD/DVD drive.
    pub fn cdrom_slot(&self) -> Option<usize> {
        self.cdrom.as_ref().map(|_| self.disks.len())
    }
}

/// An image path in a spec: absolute, and nothing a `--drive` value or a
/// TOML reader could take for something else.
fn check_image_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} is not an absolute path"));
    }
    if path.contains(['\0', '\n']) || path.split('/').any(|c| c == "..") {
        return Err(format!("{path:?} may not hold NUL, newlines or `..`"));
    }
    Ok(())
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
    /// The guest powered off with an error, reset or crashed.
    Failed,
    /// Its VMM process died (killed, or failed) while it held the VM: it
    /// runs nowhere. It can be started again (from its boot).
    Lost,
    /// Its VMM is alive and does not answer (stopped with SIGSTOP, or hung).
    Unresponsive,
    /// A migration's outcome is not known yet: the copy here is paused or
    /// gone, cannot be started, and the agents keep asking the target.
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
            VmState::Lost => "lost",
            VmState::Unresponsive => "unresponsive",
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
    /// Where it is migrating to, while it is (or while that migration's
    /// outcome is in doubt).
    pub migrating_to: Option<String>,
    /// That migration's id.
    #[serde(default)]
    pub migration: Option<String>,
    /// What became of the last migration that did not move it, or why it
    /// is not running, if it is not.
    pub note: Option<String>,
    /// Its redundancy group (VMs of one group must not share a chassis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redundancy_group: Option<String>,
    /// Its disks, by slot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskSpec>,
    /// Its CD/DVD drive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cdrom: Option<CdromSpec>,
    /// It was started with virtual performance counters.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pmu: bool,
    /// Its vGPU profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vgpu: Option<VgpuSpec>,
    /// CPU features hidden from it (a baseline).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpu_hide: Vec<String>,
    /// What host maintenance does with it.
    #[serde(default, skip_serializing_if = "Maintenance::is_live")]
    pub maintenance: Maintenance,
    /// Its network cards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<NicSpec>,
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
    /// Its general-purpose counters per vCPU.
    #[serde(default)]
    pub pmu_counters: u8,
    /// Their width in bits.
    #[serde(default)]
    pub pmu_counter_bits: u8,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub chassis: Option<String>,
    /// Address families of the management network: "ipv4", "ipv6".
    pub management_families: Vec<String>,
    pub migration_address: String,
    pub link_speed_mbps: u64,
    pub networks: Vec<String>,
    /// The networks whose bridge exists here (measured): the ones a VM's
    /// network card can be plugged into on this host.
    #[serde(default)]
    pub bridged_networks: Vec<String>,
    pub storage: Vec<StorageFacts>,
    pub vms: usize,
    /// The host's cordon, while it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cordon: Option<Cordon>,
    /// The throughput of this host's last migration to each other host
    /// (bytes per second of its full pass, measured), for forecasts.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub throughput_to: std::collections::BTreeMap<String, f64>,
    /// What this agent's API refused since it started.
    #[serde(default)]
    pub api_refused: ApiRefused,
    /// Migrations running (and queued) on this host, by cost.
    pub migration_cost_in_use: u32,
    pub migration_cost_limit: u32,
    /// What one migration to or from this host costs of that budget.
    #[serde(default)]
    pub migration_cost: u32,
    pub migrations_queued: u32,
}

/// Connections and requests an agent's API refused, by why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiRefused {
    /// Every connection place was taken (`agent::guard::MAX_CONNECTIONS`).
    pub busy: u64,
    /// No request within the deadline (handshake included).
    pub timed_out: u64,
    /// The TLS handshake or the certificate was refused.
    pub tls: u64,
    /// Requests answered 400 (malformed, unknown fields) or 403.
    pub requests: u64,
}

/// A `migrate` request's progress lines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrateProgress {
    /// The migration's id: the first line.
    Started { id: String },
    /// Waiting for a free migration slot on `host` (its cost limit is reached).
    Queued { host: String, position: u32 },
    /// The target prepared its receiving VMM.
    Prepared { target: String },
    /// The engine's own progress.
    Engine(Progress),
    /// Nothing new: the migration is still in this phase (a keepalive).
    Waiting { phase: MigrationPhase },
    /// A cancel was asked; `accepted` is false when the switchover had begun.
    Cancelling { accepted: bool },
}

/// Where a migration is, as its source's agent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationPhase {
    /// Waiting for slots of the hosts' migration budgets, or for the target.
    Preparing,
    /// The engine copies the VM.
    Copying,
    /// The engine is done; the agents settle and record the outcome (asking
    /// the target when the handoff's outcome is not known yet).
    Settling,
    /// It has ended (see its outcome).
    Ended,
}

impl std::fmt::Display for MigrationPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MigrationPhase::Preparing => "preparing",
            MigrationPhase::Copying => "copying",
            MigrationPhase::Settling => "settling",
            MigrationPhase::Ended => "ended",
        })
    }
}

/// One line of an agent's journal of migrations (`journal.jsonl`, and
/// the answer to [`Request::History`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Milliseconds since the epoch.
    pub at_ms: u64,
    /// The migration's id.
    pub id: String,
    pub vm: String,
    /// The other host of the migration.
    pub peer: String,
    pub event: JournalEvent,
    /// The run that asked for it (on the source's `started`), when it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// Who asked for it: the name in the operator's certificate (on the
    /// source's `started`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum JournalEvent {
    /// Source: the VM was claimed for the migration.
    Started,
    /// Source: the migration ended (the outcome its client is told).
    Ended { outcome: Box<MigrationOutcome> },
    /// Target: a receiving VMM is about to be started for it.
    Prepared,
    /// Target: the VM arrived and is this host's.
    Arrived,
    /// Target: the VM arrived and its VMM has since died: it is lost here.
    ArrivedLost,
    /// Target: the receiving VMM ended without ever running the VM.
    Discarded,
    /// Source: the prechecks refused the move; nothing was started.
    Refused {
        /// The ids of the rules that blocked it (errors, or warnings of an
        /// unforced move).
        rules: Vec<String>,
        code: Code,
        message: String,
    },
}

/// One line of an agent's audit trail (`audit.jsonl`, and the answer to
/// [`Request::Audit`]): a request that changes something (or was refused),
/// who made it and what came of it. A migration has two: when its source
/// took it (status 202) and when it ended (the outcome's status).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Milliseconds since the epoch.
    pub at_ms: u64,
    /// The name in the client's certificate.
    pub by: String,
    pub role: Role,
    /// The client's address (none on a migration's end, which no client
    /// reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The request, as its `op`.
    pub request: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    /// The other host: a migration's target, or an arrival's source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<String>,
    /// The answer's status: 200 done, 202 taken (a migration under way),
    /// 4xx refused, 5xx failed.
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<Code>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One line of an agent's journal of runs (`runs.jsonl`, and the answer
/// to [`Request::Runs`]): what an operator's run did that concerns this
/// host, so that a run can be resumed and rolled back from the agents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunEntry {
    /// Milliseconds since the epoch.
    pub at_ms: u64,
    pub run: String,
    /// Who made it: the name in the operator's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    pub event: RunEvent,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
pub enum RunEvent {
    /// An evacuation of this host began, with its plan (the operator's
    /// JSON: the agent keeps it, it does not read it).
    Evacuating { plan: serde_json::Value },
    /// The run is about to stop VM `vm` of this host for maintenance
    /// (policy `stop`): rolling the run back starts it again.
    Stopping { vm: String },
    /// The run's part on this host ended: `outcome` is `complete`,
    /// `partial` or `interrupted`, `detail` the operator's summary.
    Ended {
        outcome: String,
        #[serde(default)]
        detail: serde_json::Value,
    },
}

/// How a migration ended: the final answer its watchers get.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationOutcome {
    pub status: u16,
    pub code: Option<Code>,
    pub message: Option<String>,
    /// When the VM moved.
    pub result: Option<MigrateResult>,
}

impl MigrationOutcome {
    pub fn moved(result: MigrateResult) -> Self {
        Self {
            status: 200,
            code: None,
            message: None,
            result: Some(result),
        }
    }

    pub fn failed(status: u16, code: Code, message: impl Into<String>) -> Self {
        Self {
            status,
            code: Some(code),
            message: Some(message.into()),
            result: None,
        }
    }

    /// The answer line it is.
    pub fn answer(&self) -> Answer {
        Answer {
            status: self.status,
            result: self
                .result
                .as_ref()
                .and_then(|r| serde_json::value::to_raw_value(r).ok()),
            error: self.message.clone(),
            code: self.code,
        }
    }
}

/// Answer to `migration`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationInfo {
    pub id: String,
    pub vm: String,
    /// This agent's part in it.
    pub side: MigrationSide,
    /// The other host.
    pub peer: String,
    /// Source side: where it is; its outcome once it ended.
    pub phase: Option<MigrationPhase>,
    pub outcome: Option<MigrationOutcome>,
    /// Target side: what became of the VM here.
    pub arrival: Option<IncomingState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationSide {
    Source,
    Target,
}

/// Answer to `cancel_migration`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancelled {
    pub id: String,
    /// False when the switchover had begun: the migration ends as its
    /// handoff decides (watch it for the outcome).
    pub accepted: bool,
}

/// The final answer to a successful `migrate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrateResult {
    /// The migration's id.
    #[serde(default)]
    pub id: String,
    pub vm: String,
    pub source: String,
    pub target: String,
    /// Time spent queued for a slot before the migration started.
    pub queued_ms: u64,
    /// The engine's report; none when an in-doubt handoff was settled by the agents.
    pub report: Option<Report>,
    pub note: Option<String>,
    /// The operator's probes of the VM's address during the move (`--ping`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeReport>,
}

/// ICMP echo probes of a VM's address from the operator's side while it
/// moved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeReport {
    pub address: String,
    pub interval_ms: f64,
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    /// The longest time between two answers in a row.
    pub longest_gap_ms: f64,
    pub rtt_median_ms: f64,
    pub rtt_max_ms: f64,
}

/// Answer to `prepare_incoming`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepared {
    /// `tcp:HOST:PORT` of the receiving VMM.
    pub url: String,
    /// How long it waits for its sender without a keepalive.
    pub accept_s: u64,
    /// The receiver takes plaintext streams (both agents opted out of
    /// encryption); otherwise TLS 1.3 only.
    #[serde(default)]
    pub plaintext: bool,
}

/// Answer to `incoming_state` and `finish_incoming`: what became of a
/// migration on its target. Decided from the receiving VMM's status, its
/// record and the target's journal, never from a guess: `gone` is only
/// answered when no VMM there has taken the VM, nor ever can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncomingState {
    /// The receiving VMM is waiting, receiving, or does not answer, and has
    /// not committed: not decided yet.
    Undecided,
    /// The target committed: the VM runs there (or did; the source's copy
    /// must never run again).
    Running,
    /// The target committed and its VMM has since died: the VM is lost there
    /// (and the source's copy must never run again either).
    Lost,
    /// The target committed and the VM has since stopped there (its VMM was
    /// stopped on request, or its guest ended): it is the target's, stopped.
    Stopped,
    /// The target never took the VM, and no process there can any more.
    Gone,
}

/// The final line of every answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    pub status: u16,
    /// Kept as JSON text: written (and read) in one pass, however large.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<serde_json::value::RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<Code>,
}

/// An answer line: progress or the final answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Line {
    Progress { progress: MigrateProgress },
    Console { console: ConsoleLine },
    Answer(Answer),
}

/// Which certificate roles may make a request.
pub fn allowed(request: &Request, role: Role) -> bool {
    match request {
        Request::PrepareIncoming { .. }
        | Request::FinishIncoming { .. }
        | Request::IncomingState { .. }
        | Request::ConsoleHistory { .. } => role == Role::Host,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_with_their_version() {
        let line = r#"{"v":1,"op":"migrate","name":"vm1","target":{"name":"hostB","address":"127.0.0.1:7070"},"options":{"downtime_limit_ms":50,"bandwidth_limit":null,"timeout_s":600,"timeout_action":"cancel","streams":2,"auto_converge":true}}"#;
        let envelope = Envelope::decode(line).unwrap();
        assert_eq!(envelope.v, 1);
        let Request::Migrate {
            name, target, options, ..
        } = &envelope.request
        else {
            panic!("not a migrate: {envelope:?}");
        };
        assert_eq!((name.as_str(), target.name.as_str()), ("vm1", "hostB"));
        assert_eq!(options.streams, 2);
        let again = Envelope::decode(&serde_json::to_string(&envelope).unwrap()).unwrap();
        assert!(matches!(again.request, Request::Migrate { .. }));
        assert!(Envelope::decode(r#"{"v":1,"op":"format_disk"}"#).is_err());
    }

    #[test]
    fn a_field_no_request_has_is_refused_by_name() {
        let misspelt = r#"{"v":1,"op":"migrate","name":"vm1","target":{"name":"hostB","address":"127.0.0.1:7070"},"options":{"downtime_limit_ms":50,"bandwidth_limit":null,"timeout_s":600,"timeout_action":"cancel","streems":9,"streams":2,"auto_converge":true}}"#;
        let error = Envelope::decode(misspelt).unwrap_err();
        assert!(error.contains("unknown field `streems`"), "{error}");
        let top = r#"{"v":1,"op":"start_vm","name":"vm1","force":true}"#;
        assert!(Envelope::decode(top).unwrap_err().contains("unknown field `force`"));
        let peer = r#"{"v":1,"op":"migrate","name":"vm1","target":{"name":"hostB","address":"a:1","port":2},"options":{"downtime_limit_ms":50,"bandwidth_limit":null,"timeout_s":600,"timeout_action":"cancel","streams":2,"auto_converge":true}}"#;
        assert!(Envelope::decode(peer).unwrap_err().contains("unknown field `port`"));
        assert!(
            Envelope::decode(r#"{"v":2,"op":"host"}"#)
                .unwrap_err()
                .contains("version 2")
        );
        assert!(Envelope::decode(r#"{"op":"host"}"#).is_err(), "no version");
        assert!(Envelope::decode(r#"{"v":1,"op":"host"}"#).is_ok());
    }

    #[test]
    fn codes_are_stable_names() {
        assert_eq!(serde_json::to_string(&Code::InDoubt).unwrap(), r#""in_doubt""#);
        assert_eq!(Code::RolledBack.to_string(), "rolled_back");
        assert_eq!(
            serde_json::from_str::<Code>(r#""something_new""#).unwrap(),
            Code::Unknown
        );
        let answer = MigrationOutcome::failed(500, Code::Lost, "gone").answer();
        let line = serde_json::to_string(&Line::Answer(answer)).unwrap();
        assert!(line.contains(r#""code":"lost""#), "{line}");
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
            ..VmSpec::default()
        };
        assert!(spec.validate().is_ok());
        let bad = VmSpec {
            memory: "3M".into(),
            ..spec.clone()
        };
        assert!(bad.validate().unwrap_err().starts_with("memory:"));
        let bad = VmSpec {
            vcpus: 0,
            ..spec.clone()
        };
        assert!(bad.validate().unwrap_err().starts_with("vcpus:"));
        let disk = |path: &str| DiskSpec {
            path: path.into(),
            size: None,
        };
        let bad = VmSpec {
            disks: vec![disk("images/vm1.img")],
            ..spec.clone()
        };
        assert!(bad.validate().unwrap_err().starts_with("disks[0].path:"));
        let bad = VmSpec {
            disks: vec![disk("/a.img"), disk("/a.img")],
            ..spec.clone()
        };
        assert!(bad.validate().unwrap_err().contains("twice"));
        let bad = VmSpec {
            disks: (0..5).map(|i| disk(&format!("/d{i}.img"))).collect(),
            ..spec.clone()
        };
        assert!(bad.validate().unwrap_err().starts_with("disks:"));
        let good = VmSpec {
            disks: vec![disk("/srv/a.img")],
            cdrom: Some(CdromSpec {
                path: "/srv/tools.iso".into(),
                connected: false,
            }),
            ..spec
        };
        assert!(good.validate().is_ok());
        let drives = good.drives();
        assert_eq!(drives.len(), 2);
        assert_eq!(good.cdrom_slot(), Some(1));
        assert!(!drives[1].connected && drives[1].read_only());
    }

    #[test]
    fn only_hosts_prepare_incoming_vms() {
        let request = Request::IncomingState {
            name: "vm1".into(),
            id: "m-1".into(),
        };
        assert!(allowed(&request, Role::Host));
        assert!(!allowed(&request, Role::Operator));
        assert!(allowed(&Request::ListVms, Role::Operator));
        let history = Request::ConsoleHistory {
            name: "vm1".into(),
            id: "m-1".into(),
            from: 0,
            hex: String::new(),
        };
        assert!(!allowed(&history, Role::Operator), "only agents hand consoles on");
    }

    #[test]
    fn console_lines_are_tagged_and_carry_exact_bytes() {
        let line = Line::Console {
            console: ConsoleLine::output(7, b"vmig login: \xff"),
        };
        let text = serde_json::to_string(&line).unwrap();
        assert!(
            text.starts_with(r#"{"console":{"output":{"at":7,"hex":"766d"#),
            "{text}"
        );
        let end: ConsoleEnd = serde_json::from_str(r#"{"at":9,"reason":"moved","to":"hostB"}"#).unwrap();
        assert_eq!(end.reason, ConsoleEndReason::Moved);
        let newer: ConsoleEnd = serde_json::from_str(r#"{"at":9,"reason":"teleported"}"#).unwrap();
        assert_eq!(newer.reason, ConsoleEndReason::Unknown);
        let request = Envelope::decode(r#"{"v":1,"op":"console_stream","name":"vm1","from":42}"#).unwrap();
        assert!(matches!(
            request.request,
            Request::ConsoleStream {
                from: Some(42),
                back: 0,
                ..
            }
        ));
    }
}
