//! A lab of agents on this machine (`vmig lab up`) for end-to-end tests and
//! benchmarks: the operator commands as a user types them, the agents' and
//! VMMs' processes, and the test hold points (see
//! `backend/src/migration/fault.rs`) to stop a migration at an exact point.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{BOOT_TIMEOUT, Heartbeat, VMIG};

/// One lab at a time: each runs VMs that keep a core busy, and this machine
/// has two.
static SERIAL: Mutex<()> = Mutex::new(());

/// Holds off every lab of this test binary (their start sweeps stale
/// network cuts) while a test works on the cuts itself.
pub fn exclusive() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A lab in a temporary directory; taken down when dropped.
pub struct Lab {
    pub dir: tempfile::TempDir,
    holds: PathBuf,
    /// The agents (and their VMMs) may hold at armed points.
    holding: bool,
    _serial: MutexGuard<'static, ()>,
}

impl Lab {
    /// Three hosts, the agents' defaults, no test hooks.
    pub fn up(extra: &[&str]) -> Self {
        Self::start(3, extra, &[], false)
    }

    /// A lab of `hosts` agents, no test hooks (hostD on are the hosts that
    /// differ: see `src/lab.rs`).
    pub fn up_hosts(hosts: usize, extra: &[&str]) -> Self {
        Self::start(hosts, extra, &[], false)
    }

    /// A lab of `hosts` agents whose agents, and the VMMs they start, have
    /// `env` set and the hold points armed through [`Lab::arm`].
    pub fn up_with_env(hosts: usize, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start(hosts, extra, env, true)
    }

    fn start(hosts: usize, extra: &[&str], env: &[(&str, &str)], holding: bool) -> Self {
        let serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
        // Every lab's hosts have the same addresses: a cut that a killed
        // run left would cut this lab's links too.
        super::netcut::sweep_stale();
        let dir = tempfile::tempdir().unwrap();
        let holds = dir.path().join("holds");
        std::fs::create_dir_all(&holds).unwrap();
        let lab = Self {
            dir,
            holds,
            holding,
            _serial: serial,
        };
        let hosts = hosts.to_string();
        // Loopback unless a test asks for the network: the link cuts of
        // the fault tests are rules on this namespace's loopback.
        let network: &[&str] = if extra.contains(&"--network") {
            &[]
        } else {
            &["--network", "loopback"]
        };
        let args = [
            &["lab", "up", "--hosts", &hosts, "--vms", "0", "--dir", lab.path()],
            network,
            extra,
        ]
        .concat();
        let out = lab
            .agents_command(&args)
            .envs(env.iter().copied())
            .output()
            .expect("cannot run vmig");
        assert!(out.status.success(), "lab up failed: {}", text(&out.stderr));
        lab
    }

    /// A command that starts agents: they get the hold points if the lab has them.
    fn agents_command(&self, args: &[&str]) -> Command {
        let mut command = self.command(args);
        if self.holding {
            command.env("VMIG_TEST_HOLDS", &self.holds);
        }
        command
    }

    /// The lab's own temporary directory (tests may put files there).
    pub fn dir_path(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    pub fn inventory(&self) -> PathBuf {
        self.dir.path().join("vmig.toml")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(VMIG);
        command
            .arg("--inventory")
            .arg(self.inventory())
            .args(args)
            .stdin(Stdio::null())
            .env_remove("VMIG_INVENTORY");
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("cannot run vmig")
    }

    /// Runs and expects success; returns standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "vmig {args:?} failed ({:?}): {}",
            out.status.code(),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Restarts agents that are not running (they adopt their VMMs); the
    /// hold points stay armed for them.
    pub fn restart_agents(&self) {
        let out = self
            .agents_command(&["lab", "up", "--dir", self.path()])
            .output()
            .expect("cannot run vmig");
        assert!(out.status.success(), "lab up failed: {}", text(&out.stderr));
    }

    pub fn vms(&self) -> Vec<Value> {
        let out = self.ok(&["vms", "--json"]);
        serde_json::from_str::<Value>(&out).unwrap().as_array().unwrap().clone()
    }

    /// `vmig vms --json`, or None when a host does not answer.
    pub fn try_vms(&self) -> Option<Vec<Value>> {
        let out = self.run(&["vms", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_str::<Value>(&text(&out.stdout))
            .ok()?
            .as_array()
            .cloned()
    }

    pub fn vm(&self, name: &str) -> Value {
        self.vms()
            .into_iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("{name} is not listed"))
    }

    pub fn create(&self, name: &str, host: &str, memory: &str, cmdline: &str) {
        self.create_with(name, host, memory, cmdline, &[]);
    }

    /// [`Lab::create`] with more `vmig vm create` flags.
    pub fn create_with(&self, name: &str, host: &str, memory: &str, cmdline: &str, extra: &[&str]) {
        let args = [
            "vm",
            "create",
            "--name",
            name,
            "--host",
            host,
            "--kernel",
            "builtin:testguest",
            "--memory",
            memory,
            "--cmdline",
            cmdline,
        ];
        self.ok(&[&args[..], extra].concat());
    }

    pub fn console(&self, name: &str) -> String {
        self.ok(&["vm", "console", name, "--bytes", "4M"])
    }

    /// Heartbeats of `name`'s console (earlier hosts included).
    pub fn heartbeats(&self, name: &str) -> Vec<Heartbeat> {
        complete_lines(&self.console(name))
            .filter_map(Heartbeat::parse)
            .collect()
    }

    /// Waits until the guest has printed heartbeat `seq`.
    pub fn wait_for_heartbeat(&self, name: &str, seq: u64) -> Vec<Heartbeat> {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            let beats = self.heartbeats(name);
            if beats.last().is_some_and(|b| b.seq() >= seq) {
                return beats;
            }
            assert!(
                Instant::now() < deadline,
                "{name} never reached heartbeat {seq}: {}",
                self.console(name)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `name`'s console says it filled its memory.
    pub fn wait_filled(&self, name: &str) {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        while !self.console(name).contains("FILLED") {
            assert!(Instant::now() < deadline, "{name} never filled its memory");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn host_dir(&self, host: &str) -> PathBuf {
        self.dir.path().join("hosts").join(host)
    }

    /// The storage every host but hostF mounts.
    pub fn shared_storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// `host`'s own storage root.
    pub fn local_storage(&self, host: &str) -> PathBuf {
        self.host_dir(host).join("local")
    }

    pub fn agent_pid(&self, host: &str) -> i32 {
        let path = self.host_dir(host).join("agent.pid");
        std::fs::read_to_string(path).unwrap().trim().parse().unwrap()
    }

    /// The pid the agent of `host` recorded for `vm`'s VMM, if any.
    pub fn vmm_pid(&self, host: &str, vm: &str) -> Option<i32> {
        let path = self.host_dir(host).join("state/vms").join(vm).join("vm.json");
        let record: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
        record["pid"].as_i64().map(|pid| pid as i32)
    }

    /// The files in `vm`'s directory on `host`.
    pub fn vm_files(&self, host: &str, vm: &str) -> Vec<String> {
        names_in(&self.host_dir(host).join("state/vms").join(vm))
    }

    /// The VMs `host`'s agent keeps files for.
    pub fn vm_dirs(&self, host: &str) -> Vec<String> {
        names_in(&self.host_dir(host).join("state/vms"))
    }

    /// `host`'s address (its IP) and API port, from the inventory.
    pub fn address(&self, host: &str) -> (std::net::IpAddr, u16) {
        let inventory: toml::Value = toml::from_str(&std::fs::read_to_string(self.inventory()).unwrap()).unwrap();
        let entry = inventory["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"].as_str() == Some(host))
            .unwrap_or_else(|| panic!("no host {host}"));
        let address: std::net::SocketAddr = entry["address"].as_str().unwrap().parse().unwrap();
        (address.ip(), address.port())
    }

    /// Arms hold point `point`: the next process to reach it waits there.
    pub fn arm(&self, point: &str) {
        for suffix in ["held", "release"] {
            let _ = std::fs::remove_file(self.holds.join(format!("{point}.{suffix}")));
        }
        std::fs::write(self.holds.join(format!("{point}.arm")), "").unwrap();
    }

    /// Waits until a process holds at `point` (at most `limit`); its pid.
    pub fn wait_held(&self, point: &str, limit: Duration) -> Option<i32> {
        let held = self.holds.join(format!("{point}.held"));
        let deadline = Instant::now() + limit;
        loop {
            if let Some(pid) = std::fs::read_to_string(&held).ok().and_then(|t| t.trim().parse().ok()) {
                return Some(pid);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Lets the process held at `point` go on.
    pub fn release(&self, point: &str) {
        std::fs::write(self.holds.join(format!("{point}.release")), "").unwrap();
    }

    /// Disarms every hold point.
    pub fn disarm_all(&self) {
        for entry in std::fs::read_dir(&self.holds).into_iter().flatten().flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }

    /// Starts `vmig migrate VM HOST --json ARGS` in the background.
    pub fn spawn_migrate(&self, vm: &str, host: &str, extra: &[&str]) -> Child {
        self.command(&[&["migrate", vm, host, "--json"], extra].concat())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.run(&["lab", "down", "--dir", self.path()]);
    }
}

/// The names in directory `dir`, sorted (none when it does not exist).
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Waits until process `pid` has ended (a zombie counts: it runs no more).
pub fn wait_gone(pid: i32) {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    while alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} did not end");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// True while process `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
    })
}

pub fn signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) with plain integers.
    unsafe {
        libc::kill(pid, signal);
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Lines that end in a newline (the last may still be being written).
pub fn complete_lines(text: &str) -> impl Iterator<Item = &str> {
    let end = text.rfind('\n').map_or(0, |i| i + 1);
    text[..end].lines()
}

/// The JSON lines of a command's standard output.
pub fn json_lines(out: &[u8]) -> Vec<Value> {
    text(out).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

pub fn migrated(out: &Output) -> Value {
    json_lines(&out.stdout)
        .into_iter()
        .find_map(|v| v.get("migrated").cloned())
        .unwrap_or_else(|| panic!("no result: {} {}", text(&out.stdout), text(&out.stderr)))
}

/// Every heartbeat exactly once and in order, no integrity error.
pub fn assert_guest_intact(beats: &[Heartbeat], console: &str) {
    assert!(!console.contains("ERR"), "the guest reported an error:\n{console}");
    for (i, beat) in beats.iter().enumerate() {
        assert_eq!(beat.seq(), i as u64, "heartbeat {i} is out of sequence:\n{console}");
        assert_eq!(beat.get("errors"), 0, "integrity errors:\n{console}");
    }
}

impl Lab {
    /// This lab's VMM processes of VM `name` that are alive.
    pub fn vmms_of(&self, name: &str) -> Vec<i32> {
        vmm_processes(name, self.path())
    }
}

/// Processes running `vmig vm run --name NAME` (a VMM of that VM) whose
/// files are under `under`, alive.
pub fn vmm_processes(name: &str, under: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_vmm = args.windows(2).any(|w| w == [b"vm".as_slice(), b"run"])
            && args.windows(2).any(|w| w == [b"--name".as_slice(), name.as_bytes()])
            && args.iter().any(|a| a.starts_with(under.as_bytes()));
        if is_vmm && alive(pid) {
            pids.push(pid);
        }
    }
    pids
}

/// Zombie processes whose parent is `parent`.
pub fn zombies_of(parent: i32) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() == Some(&"Z") && fields.get(1).and_then(|p| p.parse::<i32>().ok()) == Some(parent) {
            pids.push(pid);
        }
    }
    pids
}
