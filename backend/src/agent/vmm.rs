//! One VM's files on its host and the VMM process that runs it.
//!
//! Each VM has a directory under `<state_dir>/vms/<name>/`: `vm.json` (its
//! spec, the VMM's pid and the migration it is in, rewritten atomically),
//! `vmm.json` (the VMM's own record: the handoff it passed and how it ended,
//! see [`crate::runtime::record`]), `control.sock`, `console.log` and
//! `console.history.log` (see [`super::console`]), `vmm.log` (the
//! VMM's messages, for people only) and, while it is arriving, `token`
//! (0600). VMMs run in their own process group, so they outlive the agent;
//! a restarted agent finds them through these files.

use crate::runtime::launch::{Launch, LaunchStart};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::api::{Peer, VmSpec};
use crate::migration::{Timeouts, Token};
use crate::runtime::control::{ControlClient, Reply, Request, VmStatus};
use crate::runtime::record::VmmRecord;

/// How long a new VMM may take to open its control socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a VMM has to answer `status` before it counts as silent.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Error)]
pub enum VmmError {
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the VMM")]
    Spawn(#[source] std::io::Error),
    #[error("the VMM exited before it was ready: {0}")]
    Exited(String),
    #[error("the VMM did not come up within {} s", START_TIMEOUT.as_secs())]
    Timeout,
}

/// What survives an agent restart, in `vm.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub spec: VmSpec,
    /// The VMM's pid while it should be running.
    pub pid: Option<u32>,
    /// The VMM was started to receive the VM by this migration, and the VM
    /// is not confirmed as this host's yet.
    #[serde(default)]
    pub arrival: Option<Arrival>,
    /// The VM is leaving by this migration: set when the migration claims
    /// it, cleared once its outcome is known. While it is set, the VM may
    /// run on the target, and nothing here may start it.
    #[serde(default)]
    pub departure: Option<Departure>,
    /// Why the VM does not run here, when it ended here.
    #[serde(default)]
    pub ended: Option<Ended>,
    /// The last migration that did not move the VM, for people.
    #[serde(default)]
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arrival {
    pub id: String,
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Departure {
    pub id: String,
    pub target: Peer,
}

/// How a VM ended on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ended {
    /// Its VMM died (killed, or failed) while it held the VM: nothing runs
    /// it any more. Otherwise the guest ended it, or it was stopped.
    pub lost: bool,
    /// What was observed, for people.
    pub detail: String,
}

impl Record {
    /// Why the VM cannot be started, stopped or migrated now: a migration
    /// holds it (until the migration settles, the VM may run on its target).
    pub fn held_by_migration(&self) -> Option<String> {
        let name = &self.spec.name;
        if let Some(departure) = &self.departure {
            return Some(format!(
                "{name} is already migrating to {} (migration {}); until that has settled, {name} \
                 cannot be started, stopped or migrated here",
                departure.target.name, departure.id
            ));
        }
        self.arrival
            .as_ref()
            .map(|arrival| format!("{name} is still arriving on this host (migration {})", arrival.id))
    }

    pub fn new(spec: VmSpec) -> Self {
        Self {
            spec,
            pid: None,
            arrival: None,
            departure: None,
            ended: None,
            note: None,
        }
    }
}

/// A VMM as the agent finds it, from structured state only.
#[derive(Debug, Clone)]
pub enum Observed {
    /// It answers its control socket.
    Answers(VmStatus),
    /// It is alive and does not answer: stopped (SIGSTOP), or hung; with
    /// the record it has written so far.
    Silent { stopped: bool, record: Option<VmmRecord> },
    /// It is gone, and left this record (none: it was killed before it
    /// could write one, or it never started).
    Gone(Option<VmmRecord>),
}

/// A VM a receiving VMM waits for: on `ip`, carrying `token`.
#[derive(Debug)]
pub struct Arriving<'a> {
    pub name: &'a str,
    pub ip: std::net::IpAddr,
    pub token: Token,
    /// The agents' id of the migration.
    pub migration: &'a str,
    pub timeouts: &'a Timeouts,
    /// The images it may open (this host checked them).
    pub allowed_disks: Vec<PathBuf>,
    /// CPU features this host hides from its guests.
    pub hide_cpu: Vec<String>,
    /// This host's bridge for each network.
    pub bridges: &'a crate::vmm::devices::virtio::Bridges,
    /// TLS streams only, from the source host it names; none: plaintext.
    pub tls: Option<crate::migration::tls::TlsPeer>,
}

/// The files of one VM.
#[derive(Debug, Clone)]
pub struct VmDir {
    pub path: PathBuf,
}

impl VmDir {
    pub fn new(state_dir: &Path, name: &str) -> Self {
        Self {
            path: state_dir.join("vms").join(name),
        }
    }

    pub fn control(&self) -> PathBuf {
        self.path.join("control.sock")
    }

    pub fn console(&self) -> PathBuf {
        self.path.join("console.log")
    }

    /// Console output from the hosts the VM ran on before this one (see
    /// [`super::console`]).
    pub fn history(&self) -> PathBuf {
        self.path.join("console.history.log")
    }

    pub fn log(&self) -> PathBuf {
        self.path.join("vmm.log")
    }

    fn token(&self) -> PathBuf {
        self.path.join("token")
    }

    /// The VMM's record (see [`crate::runtime::record`]).
    pub fn vmm_record(&self) -> PathBuf {
        self.path.join("vmm.json")
    }

    /// The record left by the VMM with `pid`, if it left one.
    pub fn vmm_record_of(&self, pid: u32) -> Option<VmmRecord> {
        VmmRecord::load(&self.vmm_record()).filter(|r| r.pid == pid)
    }

    /// Looks at the VMM with `pid`: does it answer, is it stopped, or what
    /// did it leave? A stopped process is not asked (it could not answer).
    pub fn observe(&self, pid: u32) -> Observed {
        if !alive(pid) {
            return Observed::Gone(self.vmm_record_of(pid));
        }
        let silent = || Observed::Silent {
            stopped: stopped(pid),
            record: self.vmm_record_of(pid),
        };
        if stopped(pid) {
            return silent();
        }
        match self.status() {
            Some(status) if status.pid == pid => Observed::Answers(status),
            _ if !alive(pid) => Observed::Gone(self.vmm_record_of(pid)),
            _ => silent(),
        }
    }

    fn record_path(&self) -> PathBuf {
        self.path.join("vm.json")
    }

    pub fn load(&self) -> Option<Record> {
        let text = std::fs::read_to_string(self.record_path()).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Writes the record through a temporary file, so a crash leaves the old
    /// or the new one, never half of either.
    pub fn save(&self, record: &Record) -> Result<(), VmmError> {
        let write = |path: &Path, source| VmmError::Write {
            path: path.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(&self.path).map_err(|e| write(&self.path, e))?;
        let tmp = self.path.join("vm.json.tmp");
        let text = serde_json::to_vec_pretty(record).unwrap_or_default();
        std::fs::write(&tmp, text).map_err(|e| write(&tmp, e))?;
        std::fs::rename(&tmp, self.record_path()).map_err(|e| write(&self.record_path(), e))
    }

    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }

    /// Asks the VMM for its status; None when nobody answers.
    pub fn status(&self) -> Option<VmStatus> {
        let mut client = ControlClient::connect(&self.control()).ok()?;
        let _ = client.set_timeout(Some(STATUS_TIMEOUT));
        match client.request(&Request::Status) {
            Ok(Reply::Status(status)) => Some(status),
            _ => None,
        }
    }

    /// One request to the VMM, answered within `timeout`.
    pub fn request(&self, request: &Request) -> Result<Reply, crate::runtime::control::ControlError> {
        let mut client = ControlClient::connect(&self.control())?;
        client.set_timeout(Some(Duration::from_secs(10)))?;
        client.request(request)
    }

    /// The VMM's last message, for people (a failed start's reason); never
    /// used to decide anything.
    pub fn log_tail(&self) -> String {
        tail(&self.log(), 2048)
            .trim()
            .lines()
            .last()
            .unwrap_or_default()
            .to_string()
    }

    /// Starts a VMM that boots `spec`.
    /// `hide_cpu` names the features the host hides from its guests; its
    /// cards go on this host's `bridges`.
    pub fn spawn_boot(
        &self,
        exe: &Path,
        spec: &VmSpec,
        hide_cpu: &[String],
        bridges: &crate::vmm::devices::virtio::Bridges,
    ) -> Result<Child, VmmError> {
        // A boot's console begins again at offset 0: what came before is not its history.
        let _ = std::fs::remove_file(self.history());
        let command = self.command(
            exe,
            &spec.name,
            bridges,
            LaunchStart::Boot {
                kernel: spec.kernel.clone(),
                initrd: spec.initrd.clone(),
                cmdline: spec.cmdline.clone(),
                memory: spec.memory.clone(),
                vcpus: spec.vcpus,
                disks: spec.drives(),
                nics: spec.nic_configs(),
                pmu: spec.pmu,
                hide_cpu: hide_cpu.to_vec(),
            },
        );
        let mut child = self.spawn(command)?;
        self.wait_ready(&mut child, || self.status().is_some())?;
        Ok(child)
    }

    /// Starts a VMM that waits for `arrival`; returns it with its `tcp:` address.
    pub fn spawn_incoming(&self, exe: &Path, arrival: Arriving<'_>) -> Result<(Child, String), VmmError> {
        let Arriving {
            name,
            ip,
            token,
            migration,
            timeouts,
            allowed_disks,
            hide_cpu,
            bridges,
            tls,
        } = arrival;
        let path = self.token();
        let write = |source| VmmError::Write {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.path).map_err(write)?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(write)?;
        file.write_all(token.to_hex().as_bytes()).map_err(write)?;
        let listen = match ip {
            std::net::IpAddr::V4(ip) => format!("tcp:{ip}:0"),
            std::net::IpAddr::V6(ip) => format!("tcp:[{ip}]:0"),
        };
        let command = self.command(
            exe,
            name,
            bridges,
            LaunchStart::Incoming {
                listen,
                token_file: Some(path.clone()),
                migration_id: Some(migration.to_string()),
                timeouts: *timeouts,
                allowed_disks,
                hide_cpu,
                tls,
            },
        );
        let mut child = self.spawn(command)?;
        let pid = child.id();
        let mut url = None;
        self.wait_ready(&mut child, || {
            url = self.vmm_record_of(pid).and_then(|r| r.listening);
            url.is_some() && self.status().is_some()
        })?;
        // It read the token as it started: the file has no use any more.
        let _ = std::fs::remove_file(&path);
        Ok((child, url.unwrap_or_default()))
    }

    fn command(
        &self,
        exe: &Path,
        name: &str,
        bridges: &crate::vmm::devices::virtio::Bridges,
        start: LaunchStart,
    ) -> Command {
        let launch = Launch {
            name: name.to_string(),
            control: Some(self.control()),
            console: Some(self.console()),
            record: Some(self.vmm_record()),
            bridges: bridges.clone(),
            start,
        };
        let mut command = Command::new(exe);
        command.args(launch.args());
        command
    }

    fn spawn(&self, mut command: Command) -> Result<Child, VmmError> {
        let log_path = self.log();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| VmmError::Write {
                path: log_path.clone(),
                source,
            })?;
        let stderr = log.try_clone().map_err(VmmError::Spawn)?;
        let _ = std::fs::remove_file(self.control());
        // A predecessor's record must not be taken for the new VMM's.
        let _ = std::fs::remove_file(self.vmm_record());
        let _ = std::fs::remove_file(crate::runtime::record::marks_path(&self.vmm_record()));
        command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            // Its own process group: a Ctrl-C or a stop of the agent's group
            // does not reach the VMs.
            .process_group(0)
            .spawn()
            .map_err(VmmError::Spawn)
    }

    /// Waits until `ready()` holds or the child exits. A child that does not
    /// become ready is ended and reaped: no zombie is left.
    fn wait_ready(&self, child: &mut Child, mut ready: impl FnMut() -> bool) -> Result<(), VmmError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if ready() {
                return Ok(());
            }
            if let Ok(Some(_)) = child.try_wait() {
                return Err(VmmError::Exited(self.log_tail()));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(VmmError::Timeout);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn tail(path: &Path, bytes: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(bytes)));
    let mut buf = Vec::new();
    let _ = file.take(bytes).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// True while a process with `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// True when process `pid` is stopped (SIGSTOP) or traced.
pub fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['T', 't']))
    })
}

/// Waits until process `pid` has ended (or is a zombie), at most `limit`;
/// then kills it and waits for that.
pub fn wait_gone(pid: u32, limit: Duration) {
    let poll = |limit: Duration| {
        let deadline = Instant::now() + limit;
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    poll(limit);
    if alive(pid) {
        kill(pid);
        poll(Duration::from_secs(1));
    }
}

pub fn kill(pid: u32) {
    let Ok(pid) = i32::try_from(pid) else {
        return;
    };
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
}
