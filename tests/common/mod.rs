//! Helpers for end-to-end tests: a `vmig vm run` process with its console file
//! and control socket, and the test guest's heartbeat lines.

#![allow(dead_code)]

pub mod capture;
pub mod faults;
pub mod lab;
pub mod netcut;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use vmig_backend::runtime::control::{ControlClient, Reply, Request};

pub const VMIG: &str = env!("CARGO_BIN_EXE_vmig");

/// Generous, because the guest's ring-0 set-up is emulated on nested hosts.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(30);

/// One `HB ...` line of the test guest.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    pub fields: HashMap<String, String>,
}

impl Heartbeat {
    pub fn parse(line: &str) -> Option<Self> {
        let rest = line.trim().strip_prefix("HB ")?;
        let fields = rest
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Some(Self { fields })
    }

    pub fn get(&self, key: &str) -> u64 {
        self.fields
            .get(key)
            .unwrap_or_else(|| panic!("heartbeat lacks {key}: {:?}", self.fields))
            .parse()
            .unwrap_or_else(|_| panic!("heartbeat field {key} is not a number: {:?}", self.fields))
    }

    pub fn seq(&self) -> u64 {
        self.get("seq")
    }
}

/// A VMM process under test; killed when dropped.
pub struct Vmm {
    pub child: Child,
    pub console: PathBuf,
    pub control: PathBuf,
    pub stderr: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Vmm {
    /// Starts `vmig vm run ARGS --console <tmp> --control <tmp>`.
    pub fn start(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, args)
    }

    /// Starts the built-in test guest with `memory`, `vcpus` and its command line.
    pub fn testguest(memory: &str, vcpus: u8, cmdline: &str) -> Self {
        let vcpus = vcpus.to_string();
        Self::start(&[
            "--kernel",
            "builtin:testguest",
            "--memory",
            memory,
            "--vcpus",
            &vcpus,
            "--cmdline",
            cmdline,
        ])
    }

    pub fn start_in(dir: tempfile::TempDir, args: &[&str]) -> Self {
        Self::start_with_env(dir, args, &[])
    }

    pub fn start_with_env(dir: tempfile::TempDir, args: &[&str], env: &[(&str, &str)]) -> Self {
        let console = dir.path().join(format!("console-{}.log", unique()));
        let control = dir.path().join(format!("control-{}.sock", unique()));
        let stderr = dir.path().join(format!("stderr-{}.log", unique()));
        let child = Command::new(VMIG)
            .envs(env.iter().copied())
            .args(["vm", "run"])
            .args(args)
            .arg("--console")
            .arg(&console)
            .arg("--control")
            .arg(&control)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("cannot start vmig");
        let vmm = Self {
            child,
            console,
            control,
            stderr,
            dir,
        };
        vmm.wait_for_socket();
        vmm
    }

    fn wait_for_socket(&self) {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        while ControlClient::connect(&self.control).is_err() {
            assert!(
                Instant::now() < deadline,
                "control socket never came up: {}",
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Starts a VMM that waits for an incoming migration on a free loopback
    /// port; returns it and its `tcp:` address.
    pub fn incoming(env: &[(&str, &str)]) -> (Self, String) {
        Self::incoming_with(&[], env)
    }

    /// [`Vmm::incoming`] with more `vm run` arguments.
    pub fn incoming_with(args: &[&str], env: &[(&str, &str)]) -> (Self, String) {
        let dir = tempfile::tempdir().unwrap();
        let mut all = vec!["--incoming", "tcp:127.0.0.1:0"];
        all.extend_from_slice(args);
        let vmm = Self::start_with_env(dir, &all, env);
        let line = vmm.wait_for_stderr("the incoming address", |l| l.contains("waiting for an incoming VM on "));
        let url = line.rsplit(' ').next().unwrap().to_string();
        (vmm, url)
    }

    /// Waits until a line of the VMM's standard error satisfies `pred`.
    pub fn wait_for_stderr(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            if let Some(line) = self.stderr_text().lines().find(|l| pred(l)) {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {}",
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The VM's state as its VMM reports it (`None` while it waits for one).
    pub fn state(&self) -> Option<vmig_backend::vmm::RunState> {
        match self.request(&Request::Status) {
            Reply::Status(status) => status.state,
            other => panic!("unexpected reply {other:?}"),
        }
    }

    /// Waits until the VMM reports `expected` (a receiver answers Running
    /// to its sender a moment before its main loop holds the VM), at most
    /// `limit`; the state it reported last.
    pub fn wait_state(
        &self,
        expected: vmig_backend::vmm::RunState,
        limit: Duration,
    ) -> Option<vmig_backend::vmm::RunState> {
        let deadline = Instant::now() + limit;
        loop {
            let state = self.state();
            if state == Some(expected) || Instant::now() > deadline {
                return state;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// True once the process has exited.
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    /// Standard error's complete lines.
    pub fn stderr_text(&self) -> String {
        let mut text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        text.truncate(complete);
        text
    }

    /// The console's complete lines (a line still being written is left out).
    pub fn console_text(&self) -> String {
        let mut text = std::fs::read_to_string(&self.console).unwrap_or_default();
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        text.truncate(complete);
        text
    }

    pub fn request(&self, request: &Request) -> Reply {
        let mut client = ControlClient::connect(&self.control).expect("connect to control socket");
        client.set_timeout(Some(Duration::from_secs(30))).unwrap();
        client
            .request(request)
            .unwrap_or_else(|e| panic!("{request:?} failed: {e}"))
    }

    /// The heartbeats so far; every line that mentions one must be whole
    /// (a lost or doubled console byte shows up here).
    pub fn heartbeats(&self) -> Vec<Heartbeat> {
        let text = self.console_text();
        let beats: Vec<Heartbeat> = text.lines().filter_map(Heartbeat::parse).collect();
        let mentions = text.matches("HB seq=").count();
        assert_eq!(beats.len(), mentions, "a heartbeat line is damaged:\n{}", tail(&text));
        // 9 fields, 15 with the disk workload's.
        for beat in &beats {
            assert!(
                matches!(beat.fields.len(), 9 | 15),
                "a heartbeat line is damaged: {:?}",
                beat.fields
            );
        }
        beats
    }

    /// Waits until a console line satisfies `pred`; returns it.
    pub fn wait_for_line(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.console_text().lines().find(|l| pred(l)) {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; console:\n{}\nstderr:\n{}",
                tail(&self.console_text()),
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for a heartbeat satisfying `pred`.
    pub fn wait_for_heartbeat(&self, timeout: Duration, pred: impl Fn(&Heartbeat) -> bool) -> Heartbeat {
        let line = self.wait_for_line("a heartbeat", timeout, |l| {
            Heartbeat::parse(l).is_some_and(|h| pred(&h))
        });
        Heartbeat::parse(&line).unwrap()
    }

    /// Every thread of this VMM on one CPU, and so every thread it starts
    /// later (a thread inherits its creator's CPUs).
    pub fn pin_to(&self, cpu: usize) {
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu).unwrap();
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.child.id())).unwrap();
        for task in tasks {
            let tid: i32 = task.unwrap().file_name().to_str().unwrap().parse().unwrap();
            nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(tid), &set).unwrap();
        }
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "vmig did not exit; console:\n{}",
                tail(&self.console_text())
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The heartbeats of one guest whose console went on from one VMM's file
/// to the next (a restore, migrations): the files' bytes joined, as a line
/// the guest was writing when it paused ends in the next file. Every
/// heartbeat line must be whole, and they come once each, in order, from 0.
pub fn joined_heartbeats(vmms: &[&Vmm]) -> Vec<Heartbeat> {
    let mut text = String::new();
    for vmm in vmms {
        text.push_str(&std::fs::read_to_string(&vmm.console).unwrap_or_default());
    }
    let complete = text.rfind('\n').map_or(0, |i| i + 1);
    text.truncate(complete);
    let beats: Vec<Heartbeat> = text.lines().filter_map(Heartbeat::parse).collect();
    assert_eq!(
        beats.len(),
        text.matches("HB seq=").count(),
        "a heartbeat line is damaged:\n{}",
        tail(&text)
    );
    for (i, beat) in beats.iter().enumerate() {
        assert_eq!(
            beat.seq(),
            i as u64,
            "heartbeat {i} is lost, repeated or out of order across {} consoles:\n{}",
            vmms.len(),
            tail(&text)
        );
    }
    beats
}

pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The outcome of `vmig vm send ... --json`.
#[derive(Debug)]
pub struct Sent {
    pub code: Option<i32>,
    pub lines: Vec<serde_json::Value>,
    pub stderr: String,
}

impl Sent {
    /// The final report, when the VM migrated.
    pub fn report(&self) -> &serde_json::Value {
        self.lines
            .iter()
            .find_map(|l| l.get("migrated"))
            .unwrap_or_else(|| panic!("no report (exit {:?}): {}", self.code, self.stderr))
    }

    /// The failure's stable code, when the VM did not move.
    pub fn failed_code(&self) -> Option<&str> {
        self.lines.iter().find_map(|l| l["failed"]["code"].as_str())
    }

    pub fn progress(&self) -> impl Iterator<Item = &serde_json::Value> {
        self.lines.iter().filter_map(|l| l.get("progress"))
    }
}

/// Runs `vmig vm send --control SOURCE URL --json EXTRA...` to completion.
pub fn send(source: &Vmm, url: &str, extra: &[&str]) -> Sent {
    let output = Command::new(VMIG)
        .args(["vm", "send", "--json", "--control"])
        .arg(&source.control)
        .arg(url)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run vmig vm send");
    Sent {
        code: output.status.code(),
        lines: String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `vmig ARGS` to completion.
pub fn vmig(args: &[&str]) -> std::process::Output {
    Command::new(VMIG)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run vmig")
}

/// Where `scripts/test-deps` puts downloaded test assets.
pub fn assets() -> PathBuf {
    std::env::var_os("VMIG_TEST_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-assets"))
}
