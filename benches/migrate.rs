//! Live-migration figures, printed (not asserted): run with `cargo bench --bench migrate`.
//!
//! - this machine's limits: loopback TCP throughput and the rate at which a
//!   process writes into fresh anonymous memory (the target's first touch);
//!   and for each RAM size the null copy (`support/null_copy.rs`): the same
//!   bytes moved by two bare processes from one mapping through loopback TCP
//!   into fresh memory, over two streams at the VMM's priority, with a
//!   spinning thread for each guest vCPU: the full pass is compared with it;
//! - for each RAM size and test-guest workload, a fresh VM migrated from one
//!   `vmig vm run` to another over loopback with `vmig vm send`: the engine's
//!   report beside the guest's own view: the pause it saw at the switchover
//!   (`maxgap_us` of its heartbeats) and the time it lost over the whole
//!   migration (`lost_us`, the sum of its loop gaps over 50 µs, per vCPU,
//!   less what it loses without a migration);
//! - the same with the streams encrypted (TLS 1.3 with host certificates, what
//!   agents do by default) beside plaintext, and "vmig share 0": two streams
//!   at the VMM's priority, above the guest (the CPU policy of before, the
//!   fastest copy a contended guest pays for);
//! - the very same guest migrated by QEMU's live migration, driven over QMP, with
//!   its default parameters, with its bandwidth cap lifted, and so with TLS
//!   (`tls-creds-x509`, the same certificates).
//!
//! Medians over several runs, because this machine is shared and noisy. A row
//! that times out or fails is not repeated. `VMIG_BENCH_QUICK=1`: 1 GiB only,
//! one run per row; `VMIG_BENCH_RUNS=N`: N runs per row; `VMIG_BENCH_VMIG_ONLY=1`:
//! no QEMU rows; `VMIG_BENCH_ENGINES=vmig,vmig-tls,qemu-best,qemu-tls` (any of
//! those, `vmig-fast` and `qemu-default`; `none`: the limits and null copies only): only
//! those rows; `VMIG_BENCH_SIZES=1,4`: these RAM sizes in GiB;
//! `VMIG_BENCH_VCPUS=1,2`: these guest vCPU counts (both by default);
//! `VMIG_BENCH_WORKLOADS=0,1,2`: only these workloads (by index, in the order
//! of the table).

#[path = "support/null_copy.rs"]
mod null_copy;
#[path = "support/qemu.rs"]
mod qemu;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use qemu::{Process, Qmp};
use serde_json::{Value, json};
use vmig_backend::migration::MigrationOptions;
use vmig_backend::runtime::control::{ControlClient, ControlError, Request};

const VMIG: &str = env!("CARGO_BIN_EXE_vmig");
const QEMU: &str = "qemu-system-x86_64";
const MIB: f64 = 1024.0 * 1024.0;
const GIB: u64 = 1 << 30;

/// A migration that has not finished by then is a "timeout" row.
const VMIG_LIMIT: Duration = Duration::from_secs(120);
/// QEMU with its defaults may never converge on a dirtying guest.
const QEMU_DEFAULT_LIMIT: Duration = Duration::from_secs(60);
/// Starting a VMM and filling up to 4 GiB on nested KVM.
const BOOT_LIMIT: Duration = Duration::from_secs(120);
/// How long the workload runs before the migration starts.
const SETTLE: Duration = Duration::from_secs(1);
/// The bandwidth cap that "QEMU best" sets: far above what loopback moves.
const QEMU_UNCAPPED_BPS: u64 = 100 * GIB;

struct Workload {
    name: &'static str,
    cmdline: &'static str,
}

impl Workload {
    fn fills(&self) -> bool {
        self.cmdline.contains("fill=")
    }
}

const WORKLOADS: [Workload; 5] = [
    Workload {
        name: "idle, untouched",
        cmdline: "hb=50",
    },
    Workload {
        name: "idle, all filled",
        cmdline: "hb=50 fill=all",
    },
    Workload {
        name: "256 MiB @ 100 MB/s",
        cmdline: "hb=50 fill=256M dirty=256M rate=100",
    },
    Workload {
        name: "256 MiB @ 1000 MB/s",
        cmdline: "hb=50 fill=256M dirty=256M rate=1000",
    },
    Workload {
        name: "1 GiB @ max",
        cmdline: "hb=50 fill=1G dirty=1G rate=max",
    },
];
const IDLE_FILLED: usize = 1;
/// The benchmark guest's vCPU counts (vmig and QEMU alike).
const GUEST_VCPUS: [usize; 2] = [1, 2];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    Vmig,
    VmigTls,
    /// vmig with the CPU policy of before: two streams, above the guest.
    VmigFast,
    QemuDefault,
    QemuBest,
    QemuTls,
}

impl Engine {
    fn label(self) -> &'static str {
        match self {
            Engine::Vmig => "vmig",
            Engine::VmigTls => "vmig tls",
            Engine::VmigFast => "vmig share 0",
            Engine::QemuDefault => "qemu default",
            Engine::QemuBest => "qemu best",
            Engine::QemuTls => "qemu best tls",
        }
    }

    /// Its name in `VMIG_BENCH_ENGINES`.
    fn key(self) -> &'static str {
        match self {
            Engine::Vmig => "vmig",
            Engine::VmigTls => "vmig-tls",
            Engine::VmigFast => "vmig-fast",
            Engine::QemuDefault => "qemu-default",
            Engine::QemuBest => "qemu-best",
            Engine::QemuTls => "qemu-tls",
        }
    }
}

/// One cluster CA and the certificates of hostA (source) and hostB
/// (target), for vmig's `--tls-*` and, laid out as QEMU wants them, its
/// `tls-creds-x509` directories.
struct Certs {
    _dir: tempfile::TempDir,
    ca: std::path::PathBuf,
    certs: std::path::PathBuf,
    qemu_server: std::path::PathBuf,
    qemu_client: std::path::PathBuf,
}

fn certs() -> &'static Certs {
    static CERTS: std::sync::OnceLock<Certs> = std::sync::OnceLock::new();
    CERTS.get_or_init(|| {
        use vmig_backend::pki::{self, Role};
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ca = dir.path().join("ca");
        pki::init_ca(&ca, "bench").expect("a CA");
        let certs = dir.path().join("certs");
        for name in ["hostA", "hostB"] {
            pki::issue(&ca, Role::Host, name, &["127.0.0.1".into()], &certs).expect("a host certificate");
        }
        let qemu_server = dir.path().join("qemu-server");
        let qemu_client = dir.path().join("qemu-client");
        for (qdir, host, role) in [(&qemu_server, "hostB", "server"), (&qemu_client, "hostA", "client")] {
            std::fs::create_dir_all(qdir).expect("a directory");
            let copy = |from: std::path::PathBuf, to: String| std::fs::copy(from, qdir.join(to)).expect("a copy");
            copy(ca.join("ca.pem"), "ca-cert.pem".into());
            copy(certs.join(format!("{host}.pem")), format!("{role}-cert.pem"));
            copy(certs.join(format!("{host}.key")), format!("{role}-key.pem"));
        }
        Certs {
            ca: ca.join("ca.pem"),
            certs,
            qemu_server,
            qemu_client,
            _dir: dir,
        }
    })
}

/// `--tls-*` for host `me`, expecting `peer`.
fn tls_args(me: &str, peer: &str) -> Vec<String> {
    let certs = certs();
    vec![
        "--tls-cert".into(),
        certs.certs.join(format!("{me}.pem")).display().to_string(),
        "--tls-key".into(),
        certs.certs.join(format!("{me}.key")).display().to_string(),
        "--tls-ca".into(),
        certs.ca.display().to_string(),
        "--tls-peer".into(),
        peer.into(),
    ]
}

#[derive(Debug, Clone, PartialEq)]
enum Status {
    /// The VM runs on the target and the engine switched over on its own terms.
    Converged,
    /// vmig's time limit forced the switchover.
    Forced,
    /// The limit passed; the VM stays on the source.
    TimedOut,
    Failed(String),
}

/// One migration.
#[derive(Debug, Clone)]
struct Sample {
    status: Status,
    total_ms: f64,
    downtime_ms: Option<f64>,
    /// Largest `maxgap_us` of the first two heartbeats on the target.
    guest_gap_ms: Option<f64>,
    /// The time the guest lost per vCPU over the migration, from its
    /// `lost_us`, less its own floor over that span.
    guest_lost_ms: Option<f64>,
    /// Median `maxgap_us` of the source's heartbeats before the migration.
    floor_gap_ms: Option<f64>,
    /// The share of its time the guest lost before the migration, per vCPU.
    floor_lost: Option<f64>,
    bytes: u64,
    rounds: u64,
    throttle_pct: Option<u64>,
    /// vmig's send rate over round 0, the full pass.
    round0_bps: Option<f64>,
    /// Integrity errors the guest reported on the target.
    errors: u64,
    /// vmig's downtime in parts: last pages, state, handoff (ms), and the
    /// bytes of the last round.
    parts: Option<DowntimeParts>,
    /// When and why vmig's pre-copy gave up the guest's share.
    released: Option<String>,
}

#[derive(Debug, Clone, Copy)]
struct DowntimeParts {
    final_pages_ms: f64,
    state_ms: f64,
    handoff_ms: f64,
    final_round_bytes: f64,
    /// Pause asked to the first vCPU out (the downtime the guest misses).
    stop_ms: f64,
    /// The target's `Running` written to its last vCPU in.
    resume_ms: Option<f64>,
    /// The guest's standstill as the VMMs saw it.
    blackout_ms: Option<f64>,
}

impl Sample {
    fn failed(reason: String) -> Self {
        Sample {
            status: Status::Failed(reason),
            total_ms: 0.0,
            downtime_ms: None,
            guest_gap_ms: None,
            guest_lost_ms: None,
            floor_gap_ms: None,
            floor_lost: None,
            bytes: 0,
            rounds: 0,
            throttle_pct: None,
            round0_bps: None,
            errors: 0,
            parts: None,
            released: None,
        }
    }
}

impl Process {
    /// Waits for the process to exit by itself, killing it at `deadline`; returns
    /// its exit status (None when killed) and everything it wrote to stdout.
    fn finish(mut self, deadline: Instant) -> (Option<ExitStatus>, String) {
        let mut stdout = self.child.stdout.take().expect("stdout piped");
        let reader = thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => break None,
            }
        };
        drop(self); // kills it if still running, which closes its stdout
        (status, reader.join().unwrap_or_default())
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind a loopback port");
    listener.local_addr().expect("a bound address").port()
}

fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}

// ---------------------------------------------------------------------------
// Console: heartbeats written by the test guest.

#[derive(Debug, Clone, Copy)]
struct Heartbeat {
    t_ms: u64,
    maxgap_us: u64,
    errors: u64,
    /// The time all vCPUs lost since boot, summed.
    lost_us: u64,
}

fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .and_then(|v| v.parse().ok())
}

/// Complete lines of a console file written so far.
fn console_lines(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(&bytes)
        .split_inclusive('\n')
        .filter(|line| line.ends_with('\n'))
        .map(|line| line.trim_end().to_string())
        .collect()
}

fn heartbeats(path: &Path) -> Vec<Heartbeat> {
    console_lines(path)
        .iter()
        .filter(|line| line.starts_with("HB "))
        .map(|line| Heartbeat {
            t_ms: field(line, "t_ms").unwrap_or(0),
            maxgap_us: field(line, "maxgap_us").unwrap_or(0),
            errors: field(line, "errors").unwrap_or(0),
            lost_us: field(line, "lost_us").unwrap_or(0),
        })
        .collect()
}

fn wait_for_console(path: &Path, prefix: &str, deadline: Instant, vmm: &mut Process) -> Result<(), String> {
    while !console_lines(path).iter().any(|line| line.starts_with(prefix)) {
        vmm.ensure_alive()?;
        if Instant::now() >= deadline {
            return Err(format!("no {prefix:?} line from the guest in time"));
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// What the guest lost before the migration: this machine's noise floor.
struct Floor {
    /// The median `maxgap_us`, in ms.
    gap_ms: Option<f64>,
    /// The share of its time each vCPU lost.
    lost: Option<f64>,
}

/// Waits until the guest has filled memory (or started, when it does not fill)
/// and then runs its workload for [`SETTLE`]; returns what it lost meanwhile.
fn settle(console: &Path, workload: &Workload, vcpus: usize, vmm: &mut Process) -> Result<Floor, String> {
    let ready = if workload.fills() { "FILLED" } else { "HB " };
    wait_for_console(console, ready, Instant::now() + BOOT_LIMIT, vmm)?;
    let before = heartbeats(console).len();
    thread::sleep(SETTLE);
    // The first heartbeat after FILLED may still span the fill.
    let beats: Vec<Heartbeat> = heartbeats(console).into_iter().skip(before + 1).collect();
    let mut gaps: Vec<f64> = beats.iter().map(|hb| hb.maxgap_us as f64 / 1000.0).collect();
    // The median over heartbeat intervals: one hiccup of the host's does
    // not make the floor.
    let mut rates: Vec<f64> = beats
        .windows(2)
        .filter(|pair| pair[1].t_ms > pair[0].t_ms)
        .map(|pair| {
            pair[1].lost_us.saturating_sub(pair[0].lost_us) as f64
                / 1000.0
                / vcpus as f64
                / (pair[1].t_ms - pair[0].t_ms) as f64
        })
        .collect();
    let lost = median(&mut rates);
    Ok(Floor {
        gap_ms: median(&mut gaps),
        lost,
    })
}

/// The time the guest lost per vCPU from `before` (its last heartbeat on
/// the source before the migration began) to its second heartbeat on the
/// target, less what `floor` says it loses anyway over the part of that span
/// outside the migration's `total_ms`.
fn guest_lost(
    before: Option<Heartbeat>,
    target_console: &Path,
    vcpus: usize,
    total_ms: f64,
    floor: &Floor,
) -> Option<f64> {
    let before = before?;
    let after = *heartbeats(target_console).get(1)?;
    let lost_ms = after.lost_us.checked_sub(before.lost_us)? as f64 / 1000.0 / vcpus as f64;
    let outside_ms = (after.t_ms.saturating_sub(before.t_ms) as f64 - total_ms).max(0.0);
    Some((lost_ms - floor.lost.unwrap_or(0.0) * outside_ms).max(0.0))
}

/// The pause the guest saw across the switchover: the largest `maxgap_us` of
/// the first two heartbeats printed on the target (the first one's interval
/// holds the pause), and any integrity errors they report.
fn guest_gap(target_console: &Path) -> (Option<f64>, u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut beats = heartbeats(target_console);
    while beats.len() < 2 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
        beats = heartbeats(target_console);
    }
    let first = &beats[..beats.len().min(2)];
    let gap = first.iter().map(|hb| hb.maxgap_us).max().map(|us| us as f64 / 1000.0);
    let errors = first.iter().map(|hb| hb.errors).max().unwrap_or(0);
    (gap, errors)
}

// ---------------------------------------------------------------------------
// vmig

fn wait_for_control(socket: &Path, vmm: &mut Process) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Any answer, even a refusal, means the VMM serves its socket, which it
        // does only after its migration listener is bound.
        if let Ok(mut client) = ControlClient::connect(socket)
            && matches!(client.request(&Request::Status), Ok(_) | Err(ControlError::Refused(_)))
        {
            return Ok(());
        }
        vmm.ensure_alive()?;
        if Instant::now() >= deadline {
            return Err(format!("{} does not answer on its control socket", vmm.name));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// `vmig vm send`'s flags for [`Engine::VmigFast`].
const FAST: [&str; 4] = ["--guest-share", "0", "--streams", "2"];

fn vmig_run(memory: &str, vcpus: usize, workload: &Workload, tls: bool, extra: &[&str]) -> Result<Sample, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = |name: &str| dir.path().join(name);
    let url = format!("tcp:127.0.0.1:{}", free_port());
    let (target_tls, source_tls) = if tls {
        (tls_args("hostB", "hostA"), tls_args("hostA", "hostB"))
    } else {
        (Vec::new(), Vec::new())
    };
    let mut target = Process::spawn(
        Command::new(VMIG)
            .args(["vm", "run", "--incoming", &url])
            // It waits while the source boots and fills its memory (a
            // filled 4 GiB on one vCPU can take longer than the default).
            .args(["--accept-timeout", "600"])
            .args(&target_tls)
            .arg("--control")
            .arg(path("target.sock"))
            .arg("--console")
            .arg(path("target.log"))
            .stdout(Stdio::null())
            .stderr(log_file(&path("target.err"))?),
        "target vmig",
    )?;
    let mut source = Process::spawn(
        Command::new(VMIG)
            .args([
                "vm",
                "run",
                "--kernel",
                "builtin:testguest",
                "--memory",
                memory,
                "--vcpus",
                &vcpus.to_string(),
            ])
            .args(["--cmdline", workload.cmdline, "--control"])
            .arg(path("source.sock"))
            .arg("--console")
            .arg(path("source.log"))
            .stdout(Stdio::null())
            .stderr(log_file(&path("source.err"))?),
        "source vmig",
    )?;
    wait_for_control(&path("target.sock"), &mut target)?;
    wait_for_control(&path("source.sock"), &mut source)?;
    let floor = settle(&path("source.log"), workload, vcpus, &mut source)?;
    let before = heartbeats(&path("source.log")).last().copied();

    let stderr = std::fs::File::create(path("send.err")).map_err(|e| e.to_string())?;
    let send = Process::spawn(
        Command::new(VMIG)
            .args(["vm", "send", "--json", "--timeout"])
            .arg(VMIG_LIMIT.as_secs().to_string())
            .args(&source_tls)
            .args(extra)
            .arg("--control")
            .arg(path("source.sock"))
            .arg(&url)
            .stdout(Stdio::piped())
            .stderr(stderr),
        "vmig vm send",
    )?;
    // vmig checks its limit between rounds; give the last round time to end.
    let (exit, stdout) = send.finish(Instant::now() + VMIG_LIMIT + Duration::from_secs(15));
    let error = std::fs::read_to_string(path("send.err")).unwrap_or_default();

    let mut report = None;
    let mut failed_code = None;
    let mut last_progress = None;
    let mut round0_bps = None;
    for line in stdout.lines() {
        let Ok(message) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if let Some(migrated) = message.get("migrated") {
            report = Some(migrated.clone());
        } else if let Some(code) = message["failed"]["code"].as_str() {
            failed_code = Some(code.to_string());
        } else if let Some(progress) = message.get("progress") {
            // Without a report (a run cut short), round 0's own progress.
            if progress["phase"] == "precopy"
                && progress["round"] == 0
                && progress["throughput_bps"].as_f64() > Some(0.0)
            {
                round0_bps = progress["throughput_bps"].as_f64();
            }
            last_progress = Some(progress.clone());
        }
    }
    if let Some(full_pass) = report.as_ref().and_then(|r| r["full_pass_bps"].as_f64()) {
        round0_bps = Some(full_pass);
    }
    let number = |value: &Value, key: &str| value[key].as_f64().unwrap_or(0.0);
    let whole = |value: &Value, key: &str| value[key].as_u64().unwrap_or(0);
    match (exit, report) {
        (Some(status), Some(report)) if status.success() => {
            let (guest_gap_ms, errors) = guest_gap(&path("target.log"));
            let total_ms = number(&report, "total_ms");
            Ok(Sample {
                status: if report["forced"] == true {
                    Status::Forced
                } else {
                    Status::Converged
                },
                total_ms,
                downtime_ms: Some(number(&report, "downtime_ms")),
                guest_gap_ms,
                guest_lost_ms: guest_lost(before, &path("target.log"), vcpus, total_ms, &floor),
                floor_gap_ms: floor.gap_ms,
                floor_lost: floor.lost,
                bytes: whole(&report, "bytes_sent"),
                rounds: whole(&report, "rounds"),
                throttle_pct: Some(whole(&report, "max_throttle_pct")),
                round0_bps,
                errors,
                released: report["share_released"]["why"]
                    .as_str()
                    .map(|why| format!("{why} at {:.0} ms", number(&report["share_released"], "at_ms"))),
                parts: Some(DowntimeParts {
                    final_pages_ms: number(&report, "final_pages_ms"),
                    state_ms: number(&report, "state_ms"),
                    handoff_ms: number(&report, "handoff_ms"),
                    final_round_bytes: number(&report, "final_round_bytes"),
                    stop_ms: number(&report, "stop_ms"),
                    resume_ms: report["resume_ms"].as_f64(),
                    blackout_ms: report["blackout_ms"].as_f64(),
                }),
            })
        }
        (exit, _) if exit.is_none() || failed_code.as_deref() == Some("timed_out") => {
            let progress = last_progress.unwrap_or(Value::Null);
            Ok(Sample {
                status: Status::TimedOut,
                total_ms: VMIG_LIMIT.as_secs_f64() * 1000.0,
                bytes: whole(&progress, "bytes_sent"),
                rounds: whole(&progress, "round") + 1,
                throttle_pct: Some(whole(&progress, "throttle_pct")),
                round0_bps,
                floor_gap_ms: floor.gap_ms,
                floor_lost: floor.lost,
                ..Sample::failed(String::new())
            })
        }
        (exit, _) => {
            // Say what became of the VMMs too: the engine's message alone may
            // only tell that the source's control connection closed.
            let vmm = |process: &mut Process, log: &str| {
                let state = match process.child.try_wait() {
                    Ok(Some(status)) => status.to_string(),
                    _ => "still running".to_string(),
                };
                let text = std::fs::read_to_string(path(log)).unwrap_or_default();
                format!(
                    "{} {state}, last words {:?}",
                    process.name,
                    text.lines().last().unwrap_or("")
                )
            };
            thread::sleep(Duration::from_millis(200));
            Err(format!(
                "vmig vm send {}: {} [{}; {}]",
                exit.map_or("killed".into(), |s| s.to_string()),
                error.lines().last().unwrap_or("no message"),
                vmm(&mut source, "source.err"),
                vmm(&mut target, "target.err"),
            ))
        }
    }
}

fn log_file(path: &Path) -> Result<std::fs::File, String> {
    std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// QEMU, driven over QMP

fn qemu_command(kernel: &Path, memory: &str, vcpus: usize, workload: &Workload, serial: &Path, qmp: &Path) -> Command {
    let mut command = Command::new(QEMU);
    command
        .args([
            "-enable-kvm",
            "-cpu",
            "qemu64",
            "-m",
            memory,
            "-smp",
            &vcpus.to_string(),
        ])
        .args(["-nographic", "-nodefaults", "-kernel"])
        .arg(kernel)
        .args(["-append", workload.cmdline, "-serial"])
        .arg(format!("file:{}", serial.display()))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

fn qemu_run(kernel: &Path, memory: &str, vcpus: usize, workload: &Workload, engine: Engine) -> Result<Sample, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = |name: &str| dir.path().join(name);
    let uri = format!("tcp:127.0.0.1:{}", free_port());
    let tls = engine == Engine::QemuTls;
    let creds = |dir: &Path, endpoint: &str| {
        let verify = if endpoint == "server" { ",verify-peer=on" } else { "" };
        format!(
            "tls-creds-x509,id=tls0,dir={},endpoint={endpoint}{verify}",
            dir.display()
        )
    };
    let mut target_command = qemu_command(
        kernel,
        memory,
        vcpus,
        workload,
        &path("target.log"),
        &path("target.qmp"),
    );
    if tls {
        target_command
            .args(["-object", &creds(&certs().qemu_server, "server")])
            .args(["-incoming", "defer"]);
    } else {
        target_command.args(["-incoming", &uri]);
    }
    let mut target = Process::spawn(&mut target_command, "target QEMU")?;
    let mut source_command = qemu_command(
        kernel,
        memory,
        vcpus,
        workload,
        &path("source.log"),
        &path("source.qmp"),
    );
    if tls {
        source_command.args(["-object", &creds(&certs().qemu_client, "client")]);
    }
    let mut source = Process::spawn(&mut source_command, "source QEMU")?;
    // QEMU serves QMP from its main loop, after -incoming is listening.
    let mut target_qmp = Qmp::connect(&path("target.qmp"), &mut target)?;
    if tls {
        target_qmp.execute("migrate-set-parameters", Some(json!({ "tls-creds": "tls0" })))?;
        target_qmp.execute("migrate-incoming", Some(json!({ "uri": uri })))?;
    }
    let mut qmp = Qmp::connect(&path("source.qmp"), &mut source)?;
    let floor = settle(&path("source.log"), workload, vcpus, &mut source)?;
    if tls {
        qmp.execute(
            "migrate-set-parameters",
            Some(json!({ "tls-creds": "tls0", "tls-hostname": "hostB" })),
        )?;
    }

    let limit = if matches!(engine, Engine::QemuBest | Engine::QemuTls) {
        qmp.execute(
            "migrate-set-parameters",
            Some(json!({ "max-bandwidth": QEMU_UNCAPPED_BPS })),
        )?;
        VMIG_LIMIT
    } else {
        QEMU_DEFAULT_LIMIT
    };
    let before = heartbeats(&path("source.log")).last().copied();
    let started = Instant::now();
    qmp.execute("migrate", Some(json!({ "uri": uri })))?;
    let whole = |info: &Value, key: &str| info["ram"][key].as_u64().unwrap_or(0);
    loop {
        thread::sleep(Duration::from_millis(50));
        let info = qmp.execute("query-migrate", None)?;
        match info["status"].as_str().unwrap_or("") {
            "completed" => {
                let (guest_gap_ms, errors) = guest_gap(&path("target.log"));
                let total_ms = info["total-time"].as_f64().unwrap_or(0.0);
                return Ok(Sample {
                    status: Status::Converged,
                    total_ms,
                    downtime_ms: info["downtime"].as_f64(),
                    guest_gap_ms,
                    guest_lost_ms: guest_lost(before, &path("target.log"), vcpus, total_ms, &floor),
                    floor_gap_ms: floor.gap_ms,
                    floor_lost: floor.lost,
                    bytes: whole(&info, "transferred"),
                    rounds: whole(&info, "dirty-sync-count"),
                    throttle_pct: info["cpu-throttle-percentage"].as_u64(),
                    round0_bps: None,
                    errors,
                    parts: None,
                    released: None,
                });
            }
            "failed" | "cancelled" => {
                return Err(format!("QEMU migration {}: {}", info["status"], info["error-desc"]));
            }
            _ if started.elapsed() >= limit => {
                let _ = qmp.execute("migrate_cancel", None);
                return Ok(Sample {
                    status: Status::TimedOut,
                    total_ms: limit.as_secs_f64() * 1000.0,
                    bytes: whole(&info, "transferred"),
                    rounds: whole(&info, "dirty-sync-count"),
                    throttle_pct: info["cpu-throttle-percentage"].as_u64(),
                    floor_gap_ms: floor.gap_ms,
                    floor_lost: floor.lost,
                    ..Sample::failed(String::new())
                });
            }
            _ => {}
        }
    }
}

/// QEMU's own migration parameters, to print what "default" means.
fn qemu_defaults(kernel: &Path) -> Result<String, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let qmp_path = dir.path().join("qmp");
    let mut qemu = Process::spawn(
        &mut qemu_command(kernel, "128M", 1, &WORKLOADS[0], &dir.path().join("log"), &qmp_path),
        "QEMU",
    )?;
    let mut qmp = Qmp::connect(&qmp_path, &mut qemu)?;
    let parameters = qmp.execute("query-migrate-parameters", None)?;
    let capabilities = qmp.execute("query-migrate-capabilities", None)?;
    let enabled: Vec<&str> = capabilities
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["state"] == true)
        .filter_map(|c| c["capability"].as_str())
        .collect();
    Ok(format!(
        "max-bandwidth {:.0} MiB/s, downtime-limit {} ms, capabilities enabled: [{}]",
        parameters["max-bandwidth"].as_f64().unwrap_or(0.0) / MIB,
        parameters["downtime-limit"],
        enabled.join(", ")
    ))
}

fn qemu_version() -> Option<String> {
    let output = Command::new(QEMU).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    Some(text.lines().next()?.trim().to_string())
}

// ---------------------------------------------------------------------------
// This machine's limits

/// Bytes per second moved over loopback TCP by `streams` sender/receiver pairs.
fn loopback_bps(streams: usize) -> f64 {
    const TOTAL: usize = 2 << 30;
    const WRITE: usize = 4 << 20;
    let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind a loopback port");
    let addr = listener.local_addr().expect("a bound address");
    let start = Instant::now();
    let received = thread::scope(|scope| {
        let receiver = scope.spawn(|| {
            let readers: Vec<_> = (0..streams)
                .map(|_| {
                    let (mut stream, _) = listener.accept().expect("accept");
                    scope.spawn(move || {
                        let mut buffer = vec![0u8; WRITE];
                        let mut total = 0;
                        loop {
                            match stream.read(&mut buffer) {
                                Ok(0) => break total,
                                Ok(n) => total += n,
                                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                                Err(e) => panic!("loopback read: {e}"),
                            }
                        }
                    })
                })
                .collect();
            readers.into_iter().map(|r| r.join().expect("reader")).sum::<usize>()
        });
        for _ in 0..streams {
            scope.spawn(move || {
                let mut stream = TcpStream::connect(addr).expect("connect");
                let buffer = vec![0x5au8; WRITE];
                for _ in 0..TOTAL / streams / WRITE {
                    stream.write_all(&buffer).expect("loopback write");
                }
            });
        }
        receiver.join().expect("receiver")
    });
    assert_eq!(received, TOTAL);
    TOTAL as f64 / start.elapsed().as_secs_f64()
}

/// Bytes per second written into 1 GiB of fresh anonymous memory, every page
/// written in full, by `threads` threads.
fn first_touch_bps(threads: usize) -> f64 {
    const LEN: usize = 1 << 30;
    let mut mapping = null_copy::Mapping::new(LEN);
    let memory = mapping.as_mut();
    let start = Instant::now();
    thread::scope(|scope| {
        for part in memory.chunks_mut(LEN / threads) {
            scope.spawn(move || {
                for page in part.chunks_mut(4096) {
                    page.fill(0xa5);
                }
            });
        }
    });
    let elapsed = start.elapsed().as_secs_f64();
    std::hint::black_box(&mapping);
    LEN as f64 / elapsed
}

/// The null copy of `gib` GiB over two streams (what "vmig share 0" opens)
/// with the most guest vCPUs as spinners, median of `runs`; printed.
fn measure_null_copy(gib: u64, vcpus: usize, runs: usize) -> Option<f64> {
    let streams = 2;
    let mut values = Vec::new();
    for _ in 0..runs {
        match null_copy::bps((gib * GIB) as usize, streams, vcpus) {
            Ok(bps) => values.push(bps),
            Err(e) => println!("  null copy of {gib} GiB failed: {e}"),
        }
    }
    let bps = median(&mut values);
    if let Some(bps) = bps {
        println!(
            "Null copy, {gib} GiB, {streams} streams, {vcpus} spinning threads (median of {}): {:.0} MiB/s",
            values.len(),
            bps / MIB
        );
    }
    bps
}

struct Limits {
    loopback: [f64; 2],
    first_touch: [f64; 2],
}

impl Limits {
    /// The lower of the two limits, each at its better parallelism.
    fn bound(&self) -> f64 {
        let best = |pair: [f64; 2]| pair[0].max(pair[1]);
        best(self.loopback).min(best(self.first_touch))
    }
}

fn measure_limits(runs: usize) -> Limits {
    let measure = |f: &dyn Fn(usize) -> f64, n: usize| {
        let mut values: Vec<f64> = (0..runs).map(|_| f(n)).collect();
        median(&mut values).unwrap_or(0.0)
    };
    let limits = Limits {
        loopback: [measure(&loopback_bps, 1), measure(&loopback_bps, 2)],
        first_touch: [measure(&first_touch_bps, 1), measure(&first_touch_bps, 2)],
    };
    println!("This machine's limits (median of {runs}):");
    for (i, n) in [1, 2].iter().enumerate() {
        println!(
            "  loopback TCP, 2 GiB in 4 MiB writes, {n} stream{}   {:8.0} MiB/s",
            if *n == 1 { " " } else { "s" },
            limits.loopback[i] / MIB
        );
    }
    for (i, n) in [1, 2].iter().enumerate() {
        println!(
            "  first touch, 1 GiB fresh anonymous memory, {n} thread{} {:6.0} MiB/s",
            if *n == 1 { " " } else { "s" },
            limits.first_touch[i] / MIB
        );
    }
    println!(
        "  lower of the two                              {:8.0} MiB/s",
        limits.bound() / MIB
    );
    limits
}

// ---------------------------------------------------------------------------
// Rows and tables

struct Row {
    engine: Engine,
    samples: Vec<Sample>,
}

impl Row {
    fn failure(&self) -> Option<&str> {
        self.samples.iter().find_map(|s| match &s.status {
            Status::Failed(reason) => Some(reason.as_str()),
            _ => None,
        })
    }

    fn timed_out(&self) -> bool {
        self.samples.iter().any(|s| s.status == Status::TimedOut)
    }

    /// The median of a figure over the runs that have it.
    fn median(&self, figure: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
        let mut values: Vec<f64> = self.samples.iter().filter_map(figure).collect();
        median(&mut values)
    }

    fn completed(&self) -> bool {
        self.failure().is_none() && !self.timed_out()
    }

    /// A figure that is only meaningful when every run completed.
    fn completed_median(&self, figure: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
        self.completed().then(|| self.median(figure)).flatten()
    }
}

fn measure_row(engine: Engine, kernel: Option<&Path>, gib: u64, vcpus: usize, workload: &Workload, runs: usize) -> Row {
    let memory = format!("{gib}G");
    let mut samples = Vec::new();
    for run in 1..=runs {
        let sample = match engine {
            Engine::Vmig => vmig_run(&memory, vcpus, workload, false, &[]),
            Engine::VmigTls => vmig_run(&memory, vcpus, workload, true, &[]),
            Engine::VmigFast => vmig_run(&memory, vcpus, workload, false, &FAST),
            _ => qemu_run(kernel.expect("an exported guest"), &memory, vcpus, workload, engine),
        }
        .unwrap_or_else(Sample::failed);
        let outcome = match &sample.status {
            Status::Failed(reason) => format!("FAILED: {reason}"),
            Status::TimedOut => format!("timeout after {:.0} s", sample.total_ms / 1000.0),
            _ => format!(
                "{:.0} ms, downtime {:.1} ms, guest gap {:.1} ms, guest lost {:.1} ms{}",
                sample.total_ms,
                sample.downtime_ms.unwrap_or(f64::NAN),
                sample.guest_gap_ms.unwrap_or(f64::NAN),
                sample.guest_lost_ms.unwrap_or(f64::NAN),
                sample
                    .round0_bps
                    .map_or(String::new(), |bps| format!(", round 0 at {:.0} MiB/s", bps / MIB))
                    + &sample
                        .released
                        .as_ref()
                        .map_or(String::new(), |r| format!(", share released ({r})"))
            ),
        };
        eprintln!(
            "  {gib} GiB {vcpus} vCPU  {:<20} {:<12} run {run}/{runs}: {outcome}",
            workload.name,
            engine.label()
        );
        let stop = !matches!(sample.status, Status::Converged | Status::Forced);
        samples.push(sample);
        if stop {
            break;
        }
    }
    Row { engine, samples }
}

fn or_dash(value: Option<f64>, format: impl Fn(f64) -> String) -> String {
    value.map_or("-".to_string(), format)
}

fn format_row(workload: &str, row: &Row) -> String {
    let mut line = format!("{workload:<20} {:<12} ", row.engine.label());
    if let Some(reason) = row.failure() {
        let _ = write!(line, "FAILED: {reason}");
        return line;
    }
    let total = if row.timed_out() {
        format!(">{:.0} s", row.median(|s| Some(s.total_ms)).unwrap_or(0.0) / 1000.0)
    } else {
        or_dash(row.median(|s| Some(s.total_ms)), |ms| {
            if ms < 1000.0 {
                format!("{ms:.0} ms")
            } else {
                format!("{:.2} s", ms / 1000.0)
            }
        })
    };
    let throughput = row.completed_median(|s| Some(s.bytes as f64 / (s.total_ms / 1000.0)));
    let converged = if row.timed_out() {
        "n (timeout)"
    } else if row.samples.iter().any(|s| s.status == Status::Forced) {
        "n (forced)"
    } else {
        "y"
    };
    let errors: u64 = row.samples.iter().map(|s| s.errors).sum();
    let _ = write!(
        line,
        "{total:>9} {:>9} {:>9} {:>10} {:>6} {:>9} {:>10} {:>10} {:>11} {:>6} {:>8}  {converged}",
        or_dash(row.completed_median(|s| s.downtime_ms), |ms| format!("{ms:.1} ms")),
        or_dash(row.completed_median(|s| s.guest_gap_ms), |ms| format!("{ms:.1} ms")),
        or_dash(row.completed_median(|s| s.guest_lost_ms), |ms| format!("{ms:.1} ms")),
        or_dash(row.completed_median(lost_share), |share| format!(
            "{:.1}%",
            share * 100.0
        )),
        or_dash(row.median(|s| s.floor_gap_ms), |ms| format!("{ms:.1} ms")),
        or_dash(row.median(|s| s.floor_lost), |share| format!("{:.2}%", share * 100.0)),
        or_dash(row.median(|s| Some(s.bytes as f64)), format_mib),
        or_dash(throughput, |bps| format!("{:.0} MiB/s", bps / MIB)),
        or_dash(row.median(|s| Some(s.rounds as f64)), |r| format!("{r:.0}")),
        or_dash(row.median(|s| s.throttle_pct.map(|p| p as f64)), |p| format!("{p:.0}%")),
    );
    if errors > 0 {
        let _ = write!(line, "  INTEGRITY ERRORS: {errors}");
    }
    line
}

/// The guest's time lost as a share of the migration's duration.
fn lost_share(sample: &Sample) -> Option<f64> {
    sample
        .guest_lost_ms
        .filter(|_| sample.total_ms > 0.0)
        .map(|lost| lost / sample.total_ms)
}

fn format_mib(bytes: f64) -> String {
    if bytes < 10.0 * MIB {
        format!("{:.1} MiB", bytes / MIB)
    } else {
        format!("{:.0} MiB", bytes / MIB)
    }
}

fn ratio(vmig: Option<f64>, qemu: Option<f64>) -> String {
    match (vmig, qemu) {
        (Some(v), Some(q)) if q > 0.0 => format!("{:.2}x", v / q),
        _ => "-".to_string(),
    }
}

fn print_table(gib: u64, vcpus: usize, runs: usize, rows: &[(&Workload, Vec<Row>)]) {
    println!();
    println!(
        "{gib} GiB RAM, {vcpus} vCPU{} — median of {runs} run{} (a row that times out or fails is not repeated)",
        if vcpus == 1 { "" } else { "s" },
        if runs == 1 { "" } else { "s" }
    );
    println!(
        "{:<20} {:<12} {:>9} {:>9} {:>9} {:>10} {:>6} {:>9} {:>10} {:>10} {:>11} {:>6} {:>8}  converged",
        "workload",
        "engine",
        "total",
        "downtime",
        "guest gap",
        "guest lost",
        "lost %",
        "gap floor",
        "lost floor",
        "sent",
        "throughput",
        "rounds",
        "throttle"
    );
    for (workload, engine_rows) in rows {
        for (i, row) in engine_rows.iter().enumerate() {
            println!("{}", format_row(if i == 0 { workload.name } else { "" }, row));
        }
        let vmig = engine_rows.iter().find(|r| r.engine == Engine::Vmig);
        let best = engine_rows.iter().find(|r| r.engine == Engine::QemuBest);
        if let (Some(vmig), Some(best)) = (vmig, best) {
            let figure = |row: &Row, f: fn(&Sample) -> Option<f64>| row.completed_median(f);
            println!(
                "{:<20} vmig/qemu best: total {}, downtime {}, guest gap {}, guest lost {}",
                "",
                ratio(figure(vmig, |s| Some(s.total_ms)), figure(best, |s| Some(s.total_ms))),
                ratio(figure(vmig, |s| s.downtime_ms), figure(best, |s| s.downtime_ms)),
                ratio(figure(vmig, |s| s.guest_gap_ms), figure(best, |s| s.guest_gap_ms)),
                ratio(figure(vmig, |s| s.guest_lost_ms), figure(best, |s| s.guest_lost_ms)),
            );
        }
    }
    let with_tls = rows
        .iter()
        .any(|(_, engine_rows)| engine_rows.iter().any(|r| r.engine == Engine::VmigTls));
    if with_tls {
        println!();
        println!("What encryption costs (medians; vmig tls / vmig plaintext, and vmig tls against QEMU):");
    }
    for (workload, engine_rows) in rows {
        let find = |engine| engine_rows.iter().find(|r| r.engine == engine && r.completed());
        let (Some(plain), Some(tls)) = (find(Engine::Vmig), find(Engine::VmigTls)) else {
            continue;
        };
        let figure = |row: &Row, f: fn(&Sample) -> Option<f64>| row.completed_median(f);
        let full_pass = |s: &Sample| s.round0_bps;
        let total = |s: &Sample| Some(s.total_ms);
        let downtime = |s: &Sample| s.downtime_ms;
        let extra = match (figure(tls, downtime), figure(plain, downtime)) {
            (Some(t), Some(p)) => format!("{:+.2} ms", t - p),
            _ => "-".into(),
        };
        let mut line = format!(
            "  {:<20} full pass {} of plaintext's, total {}, downtime {extra}",
            workload.name,
            ratio(figure(tls, full_pass), figure(plain, full_pass)),
            ratio(figure(tls, total), figure(plain, total)),
        );
        for (engine, name) in [(Engine::QemuBest, "qemu best"), (Engine::QemuTls, "qemu best tls")] {
            if let Some(qemu) = find(engine) {
                let _ = write!(
                    line,
                    "; total vs {name} {}",
                    ratio(figure(tls, total), figure(qemu, total))
                );
            }
        }
        println!("{line}");
    }
    println!();
    println!(
        "Where vmig's downtime goes (medians): last pages sent while paused, state, handoff (Go to Running); \
         then the guest's view: its vCPUs' stop (pause asked to the first out, not seen by the guest), \
         the target's resume (Running to the last vCPU in), the blackout the VMMs saw (first out to last in), \
         the guest's own gap, and what the guest saw after its vCPUs were back (gap - blackout: its first \
         steps on the new host)"
    );
    for (workload, engine_rows) in rows {
        let Some(vmig) = engine_rows.iter().find(|r| r.engine == Engine::Vmig && r.completed()) else {
            continue;
        };
        let part = |f: fn(&DowntimeParts) -> Option<f64>| vmig.median(|s| s.parts.as_ref().and_then(f));
        let ms = |value: Option<f64>| or_dash(value, |ms| format!("{ms:.2} ms"));
        let after = vmig.median(|s| Some(s.guest_gap_ms? - s.parts.as_ref()?.blackout_ms?));
        println!(
            "  {:<20} last pages {:>6.1} ms ({:>9})   state {:>5.1} ms   handoff {:>5.1} ms   \
             stop {:>8}   resume {:>8}   blackout {:>8}   guest gap {:>8}   after {:>8}",
            workload.name,
            part(|p| Some(p.final_pages_ms)).unwrap_or(f64::NAN),
            format_mib(part(|p| Some(p.final_round_bytes)).unwrap_or(f64::NAN)),
            part(|p| Some(p.state_ms)).unwrap_or(f64::NAN),
            part(|p| Some(p.handoff_ms)).unwrap_or(f64::NAN),
            ms(part(|p| Some(p.stop_ms))),
            ms(part(|p| p.resume_ms)),
            ms(part(|p| p.blackout_ms)),
            ms(vmig.median(|s| s.guest_gap_ms)),
            ms(after),
        );
    }
}

// ---------------------------------------------------------------------------

fn main() {
    // The null copy's receiving process is this program too.
    null_copy::serve_if_asked();
    // `cargo bench` passes --bench; no other argument is read.
    let quick = std::env::var_os("VMIG_BENCH_QUICK").is_some_and(|v| v != "0");
    let (sizes, mut runs): (&[u64], usize) = if quick { (&[1], 1) } else { (&[1, 4], 3) };
    let chosen: Option<Vec<u64>> = std::env::var("VMIG_BENCH_SIZES")
        .ok()
        .map(|list| list.split(',').filter_map(|n| n.trim().parse().ok()).collect());
    let sizes = chosen.as_deref().unwrap_or(sizes);
    if let Some(n) = std::env::var("VMIG_BENCH_RUNS").ok().and_then(|v| v.parse().ok()) {
        runs = n;
    }
    let vmig_only = std::env::var_os("VMIG_BENCH_VMIG_ONLY").is_some_and(|v| v != "0");
    let defaults = MigrationOptions::default();
    println!("vmig live-migration benchmark on {} ({} cores)", hostname(), num_cpus());
    println!(
        "vmig defaults: downtime limit {} ms, streams {}, guest share {}% (pre-copy at nice {}), auto-converge {}",
        defaults.downtime_limit_ms,
        if defaults.streams == 0 {
            "auto".to_string()
        } else {
            defaults.streams.to_string()
        },
        defaults.guest_share,
        vmig_backend::migration::cpu::precopy_nice(defaults.guest_share),
        if defaults.auto_converge { "on" } else { "off" }
    );
    println!("vmig share 0: {}", FAST.join(" "));
    println!();
    let limits = measure_limits(3);

    let qemu = qemu_version().filter(|_| !vmig_only);
    let kernel_dir = tempfile::tempdir().expect("a temporary directory");
    let kernel = kernel_dir.path().join("testguest.elf");
    let qemu = qemu.filter(|_| {
        Command::new(VMIG)
            .args(["testguest", "export"])
            .arg(&kernel)
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    println!();
    match &qemu {
        Some(version) => {
            println!("{version}: -enable-kvm -cpu qemu64 -smp N, guest on serial to a file, QMP");
            match qemu_defaults(&kernel) {
                Ok(defaults) => println!("  qemu default: {defaults}"),
                Err(e) => println!("  qemu default: cannot query ({e})"),
            }
            println!(
                "  qemu best:    max-bandwidth {} GiB/s, the rest default",
                QEMU_UNCAPPED_BPS / GIB
            );
        }
        None if vmig_only => println!("VMIG_BENCH_VMIG_ONLY: vmig rows only"),
        None => println!("{QEMU} not found: vmig rows only"),
    }
    println!(
        "Limits: vmig {} s (its --timeout), qemu default {} s, qemu best {} s.",
        VMIG_LIMIT.as_secs(),
        QEMU_DEFAULT_LIMIT.as_secs(),
        VMIG_LIMIT.as_secs()
    );

    let vcpu_counts: Vec<usize> = std::env::var("VMIG_BENCH_VCPUS").ok().map_or_else(
        || GUEST_VCPUS.to_vec(),
        |list| list.split(',').filter_map(|n| n.trim().parse().ok()).collect(),
    );
    let workloads: Vec<usize> = std::env::var("VMIG_BENCH_WORKLOADS").ok().map_or_else(
        || (0..WORKLOADS.len()).collect(),
        |list| {
            list.split(',')
                .filter_map(|n| n.trim().parse().ok())
                .filter(|&n| n < WORKLOADS.len())
                .collect()
        },
    );
    let mut round0 = Vec::new();
    let mut null_copies = Vec::new();
    for &gib in sizes {
        println!();
        let most_vcpus = vcpu_counts.iter().copied().max().unwrap_or(1);
        null_copies.push((gib, measure_null_copy(gib, most_vcpus, runs.max(2))));
        for &vcpus in &vcpu_counts {
            let mut rows = Vec::new();
            for &index in &workloads {
                let workload = &WORKLOADS[index];
                let mut engine_rows = Vec::new();
                for engine in [Engine::Vmig, Engine::VmigTls, Engine::VmigFast] {
                    if wanted(engine) {
                        engine_rows.push(measure_row(engine, None, gib, vcpus, workload, runs));
                    }
                }
                if qemu.is_some() {
                    for engine in [Engine::QemuDefault, Engine::QemuBest, Engine::QemuTls] {
                        if wanted(engine) {
                            engine_rows.push(measure_row(engine, Some(&kernel), gib, vcpus, workload, runs));
                        }
                    }
                }
                if index == IDLE_FILLED && vcpus == most_vcpus {
                    for engine in [Engine::Vmig, Engine::VmigTls, Engine::VmigFast]
                        .into_iter()
                        .filter(|e| wanted(*e))
                    {
                        let row = engine_rows.iter().find(|r| r.engine == engine);
                        round0.push((gib, engine, row.and_then(|r| r.median(|s| s.round0_bps))));
                    }
                }
                rows.push((workload, engine_rows));
            }
            print_table(gib, vcpus, runs, &rows);
        }
    }

    println!();
    let bound = limits.bound();
    for (gib, engine, bps) in round0 {
        let mode = engine.label();
        let null = null_copies.iter().find(|(g, _)| *g == gib).and_then(|(_, bps)| *bps);
        match (bps, null) {
            (Some(bps), Some(null)) => println!(
                "{mode} round 0 (full pass) on \"idle, all filled\", {gib} GiB: {:.0} MiB/s = {:.0}% of the null copy's {:.0} MiB/s (goal >= 90%); {:.0}% of the lower of loopback and first touch, {:.0} MiB/s",
                bps / MIB,
                bps / null * 100.0,
                null / MIB,
                bps / bound * 100.0,
                bound / MIB
            ),
            (Some(bps), None) => println!(
                "{mode} round 0 (full pass) on \"idle, all filled\", {gib} GiB: {:.0} MiB/s (no null copy figure)",
                bps / MIB
            ),
            (None, _) => println!("{mode} round 0 on \"idle, all filled\", {gib} GiB: no figure (the row failed)"),
        }
    }
    println!();
    println!("Machine: {}, {} cores, {}", hostname(), num_cpus(), kernel_version());
    println!("Date: {}", date());
}

/// Whether `VMIG_BENCH_ENGINES` (when set) lists `engine` (`none`: no
/// rows, only the limits and the null copies).
fn wanted(engine: Engine) -> bool {
    std::env::var("VMIG_BENCH_ENGINES").map_or(true, |list| list.split(',').any(|name| name.trim() == engine.key()))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn num_cpus() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

fn kernel_version() -> String {
    std::fs::read_to_string("/proc/version")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn date() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}
