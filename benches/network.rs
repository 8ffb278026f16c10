//! Network continuity through live migration, vmig beside QEMU in one run:
//! one lab whose two hosts are network namespaces on a switch bridge
//! (`vmig lab up --network netns`, see `src/lab/netns.rs`), and the same test
//! guest (256 MiB, 1 vCPU, the same command line) moved back and forth
//! between them by each engine in turn:
//! - vmig: `vmig migrate web HOST`, the VMM's card on a TAP in the host's br0;
//! - QEMU: the microvm machine (virtio-mmio, virtio-net on a TAP in the
//!   host's br0, the same MAC on both sides), a fresh `-incoming` target on
//!   the other host for each move (a QEMU process cannot take a VM back),
//!   migrated over QMP with its bandwidth cap lifted as "qemu best" in
//!   benches/migrate.rs does, and its default announce-self.
//!
//! Around each move a real `ping -D -i 0.01` from the client namespace,
//! started 1 s before and stopped 1 s after, gives the pings lost and the
//! longest gap between two replies; a TCP connection from this namespace to
//! the guest's echo server, open across all of an engine's moves, times a
//! 32-byte round trip every 5 ms, classified before, during and after each
//! move. Beside them: the longest gap of a ping run with no move (this
//! machine's floor) and the guest's own longest stall (its heartbeats'
//! `maxgap_us`) while pinged. Prints medians and maxima, and vmig/QEMU of the
//! median longest gap; each move's figures go to stderr as it ends.
//! `VMIG_NET_BENCH_RUNS=N`: N moves per engine (default 6); `VMIG_NET_BENCH_STREAMS=N`:
//! vmig's migration streams (default 2, vmig's own default). Without `ping`
//! there are no ping figures, and without QEMU no QEMU row.
//! Run with `cargo bench --bench network`.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/qemu.rs"]
mod qemu;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use common::lab::{Lab, complete_lines, migrated, text};
use common::{Heartbeat, VMIG};
use qemu::{Process, Qmp};

const QEMU: &str = "qemu-system-x86_64";
/// The guest's workload for both engines; each adds only `ip=`.
const WORKLOAD: &str = "fill=64M dirty=16M rate=10 hb=100";
const MEMORY_MIB: u64 = 256;
const DEFAULT_RUNS: usize = 6;
const HOSTS: [&str; 2] = ["hostA", "hostB"];
/// ping starts this long before each move and stops this long after it; the
/// TCP round trips in these margins are "before" and "after".
const MARGIN: Duration = Duration::from_secs(1);
const PING_INTERVAL: &str = "0.01";
/// A ping run with no move, for the longest gap this machine gives anyway.
const FLOOR_WINDOW: Duration = Duration::from_secs(3);
const ECHO_EVERY: Duration = Duration::from_millis(5);
const ECHO_BYTES: usize = 32;
/// A round trip that takes longer is a broken connection.
const ECHO_LIMIT: Duration = Duration::from_secs(10);
/// Booting and filling 64 MiB on nested KVM, and a move.
const BOOT_LIMIT: Duration = Duration::from_secs(60);
const MIGRATE_LIMIT: Duration = Duration::from_secs(60);
/// QEMU's card's TAP in each host's namespace (names are per namespace).
const QEMU_TAP: &str = "qemutap0";
/// Where microvm plugs its first virtio device: QEMU does not put it on a
/// PVH kernel's command line itself (testguest/README.md).
const MICROVM_VIRTIO: &str = "virtio_mmio.device=512@0xfeb02e00:28";
/// "qemu best" of benches/migrate.rs: far above what the lab's links move.
const QEMU_UNCAPPED_BPS: u64 = 100 << 30;
const QEMU_MIGRATION_PORT: u16 = 4460;

/// Seconds since the epoch: ping's `-D` stamps are on this clock.
fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}

fn max(values: &[f64]) -> Option<f64> {
    values.iter().copied().max_by(f64::total_cmp)
}

// ---------------------------------------------------------------------------
// ping from the client namespace

/// What one ping run saw.
#[derive(Debug, Clone, Copy)]
struct PingCount {
    /// Probes up to the last one answered.
    sent: u64,
    lost: u64,
    longest_gap_ms: f64,
    /// When the longest gap began: the reply before it (epoch seconds).
    gap_start: f64,
    /// Replies marked DUP!: two copies of the guest answered.
    duplicates: u64,
}

/// iputils `ping -D -i 0.01 ADDR` in a namespace, stopped with SIGINT.
struct Ping {
    process: Process,
}

impl Ping {
    fn start(namespace: &str, address: Ipv4Addr) -> Result<Self, String> {
        let process = Process::spawn(
            Command::new("ip")
                .args(["netns", "exec", namespace, "ping", "-D", "-n", "-i", PING_INTERVAL])
                .arg(address.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
            "ping",
        )?;
        Ok(Ping { process })
    }

    fn stop(mut self) -> Result<PingCount, String> {
        let stopped = now();
        common::lab::signal(self.process.child.id() as i32, libc::SIGINT);
        let mut output = String::new();
        if let Some(mut stdout) = self.process.child.stdout.take() {
            let _ = stdout.read_to_string(&mut output);
        }
        let _ = self.process.child.wait();
        parse_ping(&output, stopped).ok_or_else(|| format!("ping had no answer: {output}"))
    }
}

/// The replies' `-D` stamps and `icmp_seq`s. The probes still in flight
/// when ping was stopped (several when the machine is busy) say nothing
/// about the move, so only the probes up to the last one answered count,
/// and lost are those missing among them (as tests/network.rs counts). The
/// wait from the last reply to `stopped` is a gap too, so a guest that fell
/// silent shows.
fn parse_ping(output: &str, stopped: f64) -> Option<PingCount> {
    let mut replies: Vec<(f64, u64)> = Vec::new();
    let mut duplicates = 0;
    for line in output.lines().filter(|line| line.contains(" bytes from ")) {
        if line.contains("DUP!") {
            duplicates += 1;
            continue;
        }
        let stamp = line.strip_prefix('[')?.split(']').next()?.parse().ok()?;
        let seq = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("icmp_seq="))?
            .parse()
            .ok()?;
        replies.push((stamp, seq));
    }
    replies.sort_by(|a, b| a.0.total_cmp(&b.0));
    let &(last_stamp, _) = replies.last()?;
    let sent = replies.iter().map(|&(_, seq)| seq).max()?;
    let (gap_start, longest_gap_ms) = replies
        .windows(2)
        .map(|pair| (pair[0].0, (pair[1].0 - pair[0].0) * 1000.0))
        .chain([(last_stamp, (stopped - last_stamp) * 1000.0)])
        .max_by(|a, b| a.1.total_cmp(&b.1))?;
    Some(PingCount {
        sent,
        lost: sent - replies.len() as u64,
        longest_gap_ms,
        gap_start,
        duplicates,
    })
}

fn ping_available() -> bool {
    Command::new("ping")
        .arg("-V")
        .output()
        .is_ok_and(|out| out.status.success())
}

// ---------------------------------------------------------------------------
// TCP echo from this namespace, through the switch

/// One round trip: when it was sent (epoch seconds) and how long it took.
#[derive(Debug, Clone, Copy)]
struct Echo {
    sent: f64,
    rtt_ms: f64,
}

/// A connection to the guest's echo server, timed in a thread until finished.
struct EchoProbe {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<Vec<Echo>, String>>>,
}

impl EchoProbe {
    fn start(address: Ipv4Addr) -> Result<Self, String> {
        let stream = connect(address)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || echo_until(stream, &stop))
        };
        Ok(EchoProbe {
            stop,
            thread: Some(thread),
        })
    }

    /// Every round trip, or what broke the connection.
    fn finish(mut self) -> Result<Vec<Echo>, String> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("finished once");
        thread.join().map_err(|_| "the TCP echo thread panicked".to_string())?
    }
}

impl Drop for EchoProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Waits until the guest answers on its TCP echo port.
fn connect(address: Ipv4Addr) -> Result<TcpStream, String> {
    let deadline = Instant::now() + BOOT_LIMIT;
    loop {
        match TcpStream::connect_timeout(&SocketAddr::from((address, 7)), Duration::from_secs(1)) {
            Ok(stream) => return Ok(stream),
            Err(e) if Instant::now() > deadline => return Err(format!("the guest's echo server never answered: {e}")),
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Sends a numbered message every [`ECHO_EVERY`] and times its echo; any
/// error, or an echo that differs, ends it.
fn echo_until(mut stream: TcpStream, stop: &AtomicBool) -> Result<Vec<Echo>, String> {
    stream.set_read_timeout(Some(ECHO_LIMIT)).map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut echoes = Vec::new();
    let mut back = [0u8; ECHO_BYTES];
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let message = format!("{n:0width$}\n", width = ECHO_BYTES - 1);
        let sent = now();
        let start = Instant::now();
        stream
            .write_all(message.as_bytes())
            .map_err(|e| format!("TCP echo {n}: write: {e}"))?;
        stream
            .read_exact(&mut back)
            .map_err(|e| format!("TCP echo {n}: read: {e}"))?;
        let rtt_ms = start.elapsed().as_secs_f64() * 1000.0;
        if back != message.as_bytes() {
            return Err(format!("TCP echo {n} came back different"));
        }
        echoes.push(Echo { sent, rtt_ms });
        n += 1;
        thread::sleep(ECHO_EVERY);
    }
    Ok(echoes)
}

/// A move's span (epoch seconds): for vmig the `vmig migrate` command, for
/// QEMU from `migrate` to `query-migrate` saying "completed".
#[derive(Debug, Clone, Copy)]
struct Window {
    start: f64,
    end: f64,
}

/// Round-trip times before, during and after the moves.
#[derive(Debug, Default)]
struct Phases {
    before: Vec<f64>,
    during: Vec<f64>,
    after: Vec<f64>,
}

/// A round trip is "during" a move when it overlaps the move's window,
/// "before" or "after" when it lies within [`MARGIN`] of it; the others
/// (between the ping runs) count nowhere.
fn classify(echoes: &[Echo], windows: &[Window]) -> Phases {
    let margin = MARGIN.as_secs_f64();
    let mut phases = Phases::default();
    for echo in echoes {
        let back = echo.sent + echo.rtt_ms / 1000.0;
        for w in windows {
            let phase = if echo.sent <= w.end && back >= w.start {
                &mut phases.during
            } else if echo.sent >= w.start - margin && back < w.start {
                &mut phases.before
            } else if echo.sent > w.end && echo.sent <= w.end + margin {
                &mut phases.after
            } else {
                continue;
            };
            phase.push(echo.rtt_ms);
            break;
        }
    }
    phases
}

// ---------------------------------------------------------------------------
// One engine's moves

/// One migration.
#[derive(Debug, Clone, Copy)]
struct Move {
    window: Window,
    ping: Option<PingCount>,
    /// As the engine reports it.
    downtime_ms: f64,
    total_ms: f64,
    /// The guest's own longest stall while pinged: the largest `maxgap_us`
    /// of its heartbeats then (its loop did not run; the pause is one).
    guest_stall_ms: Option<f64>,
}

/// An engine's moves and its TCP connection's round trips.
#[derive(Debug)]
struct EngineRun {
    moves: Vec<Move>,
    echoes: Result<Vec<Echo>, String>,
    /// Ping over [`FLOOR_WINDOW`] with no move: this machine's noise.
    floor: Option<PingCount>,
    /// Guest console lines starting with ERR or FATAL.
    guest_errors: usize,
}

/// What both engines share: the lab's numbers and whether to ping.
struct Setup {
    net: u8,
    runs: usize,
    ping: bool,
}

impl Setup {
    fn namespace(&self, host: usize) -> String {
        format!("vmiglab{}-{}", self.net, HOSTS[host])
    }

    fn client_namespace(&self) -> String {
        format!("vmiglab{}-client", self.net)
    }

    fn host_ip(&self, host: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.net, host as u8 + 1)
    }

    fn vm_ip(&self, n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.net, 101 + n)
    }

    fn start_ping(&self, address: Ipv4Addr) -> Result<Option<Ping>, String> {
        self.ping
            .then(|| Ping::start(&self.client_namespace(), address))
            .transpose()
    }

    /// Pings `address` over [`FLOOR_WINDOW`] with nothing moving.
    fn floor(&self, address: Ipv4Addr) -> Result<Option<PingCount>, String> {
        let ping = self.start_ping(address)?;
        thread::sleep(FLOOR_WINDOW);
        ping.map(Ping::stop).transpose()
    }
}

fn progress(engine: &str, run: usize, runs: usize, from: usize, to: usize, m: &Move) {
    // Where the longest gap began, from the start of the move's window.
    let ping = m.ping.map_or("no ping".to_string(), |p| {
        format!(
            "ping {} sent, {} lost, longest gap {:.1} ms from {:+.0} ms",
            p.sent,
            p.lost,
            p.longest_gap_ms,
            (p.gap_start - m.window.start) * 1000.0,
        )
    });
    eprintln!(
        "  {engine:<9} move {}/{runs} {}→{}: window {:.0} ms (engine's total {:.0} ms), downtime {:.1} ms, \
         guest stall {:.1} ms, {ping}",
        run + 1,
        HOSTS[from],
        HOSTS[to],
        (m.window.end - m.window.start) * 1000.0,
        m.total_ms,
        m.downtime_ms,
        m.guest_stall_ms.unwrap_or(f64::NAN),
    );
}

/// The last heartbeat's `seq` in a console, if any.
fn last_seq(console: &str) -> Option<u64> {
    complete_lines(console)
        .filter_map(Heartbeat::parse)
        .map(|hb| hb.seq())
        .max()
}

/// The largest `maxgap_us` (in ms) of the heartbeats after `after`.
fn longest_stall(console: &str, after: Option<u64>) -> Option<f64> {
    let gaps: Vec<f64> = complete_lines(console)
        .filter_map(Heartbeat::parse)
        .filter(|hb| after.is_none_or(|seq| hb.seq() > seq))
        .map(|hb| hb.get("maxgap_us") as f64 / 1000.0)
        .collect();
    max(&gaps)
}

fn error_lines(console: &str) -> usize {
    console
        .lines()
        .filter(|line| line.starts_with("ERR") || line.starts_with("FATAL"))
        .count()
}

/// `vmig migrate` of one VM between the lab's hosts, over and over.
fn vmig_engine(lab: &Lab, setup: &Setup) -> Result<EngineRun, String> {
    let address = setup.vm_ip(0);
    let cmdline = format!("{WORKLOAD} ip={address}/24");
    let memory = format!("{MEMORY_MIB}M");
    lab.create_with("web", HOSTS[0], &memory, &cmdline, &["--nic", "lab"]);
    lab.wait_filled("web");
    let echo = EchoProbe::start(address)?;
    let floor = setup.floor(address)?;
    let mut moves = Vec::new();
    let mut frames_carried = 0;
    let mut announce = Value::Null;
    for run in 0..setup.runs {
        let (from, to) = (run % 2, (run + 1) % 2);
        let last_beat = last_seq(&lab.console("web"));
        let ping = setup.start_ping(address)?;
        thread::sleep(MARGIN);
        let start = now();
        let streams = std::env::var("VMIG_NET_BENCH_STREAMS").unwrap_or_else(|_| "2".into());
        let out = lab.run(&["migrate", "web", HOSTS[to], "--json", "--streams", &streams]);
        let end = now();
        if !out.status.success() {
            let stderr = text(&out.stderr);
            return Err(format!(
                "vmig migrate web {}: {}",
                HOSTS[to],
                stderr.lines().last().unwrap_or("no message")
            ));
        }
        let report = migrated(&out)["report"].clone();
        frames_carried += report["frames_carried"].as_u64().unwrap_or(0);
        announce = report["announce"].clone();
        thread::sleep(MARGIN);
        let ping = ping.map(Ping::stop).transpose()?;
        let m = Move {
            window: Window { start, end },
            ping,
            downtime_ms: report["downtime_ms"].as_f64().unwrap_or(f64::NAN),
            total_ms: report["total_ms"].as_f64().unwrap_or(f64::NAN),
            guest_stall_ms: longest_stall(&lab.console("web"), last_beat),
        };
        progress("vmig", run, setup.runs, from, to, &m);
        moves.push(m);
    }
    eprintln!("  vmig      announce as reported: {announce}; frames carried across the pauses: {frames_carried}");
    Ok(EngineRun {
        moves,
        echoes: echo.finish(),
        floor,
        guest_errors: error_lines(&lab.console("web")),
    })
}

// ---------------------------------------------------------------------------
// QEMU, driven over QMP (benches/support/qemu.rs)

/// QEMU's part of the lab: the exported guest, a persistent TAP on each
/// host's br0, the QEMU processes' files; the TAPs go when it is dropped
/// (the QEMU processes, dropped before it, are killed by theirs).
struct QemuLab {
    dir: tempfile::TempDir,
    kernel: PathBuf,
    namespaces: [String; 2],
    taps: Vec<String>,
    host_ips: [Ipv4Addr; 2],
    cmdline: String,
    mac: String,
}

impl QemuLab {
    fn new(setup: &Setup, address: Ipv4Addr) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let kernel = dir.path().join("testguest.elf");
        let exported = Command::new(VMIG)
            .args(["testguest", "export"])
            .arg(&kernel)
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !exported {
            return Err("vmig testguest export failed".into());
        }
        let mut lab = QemuLab {
            dir,
            kernel,
            namespaces: [setup.namespace(0), setup.namespace(1)],
            taps: Vec::new(),
            host_ips: [setup.host_ip(0), setup.host_ip(1)],
            cmdline: format!("{WORKLOAD} ip={address}/24 {MICROVM_VIRTIO}"),
            mac: format!("52:54:00:77:{:02x}:02", setup.net),
        };
        for ns in lab.namespaces.clone() {
            ip(&["-n", &ns, "tuntap", "add", QEMU_TAP, "mode", "tap"])?;
            lab.taps.push(ns.clone());
            ip(&["-n", &ns, "link", "set", QEMU_TAP, "master", "br0", "up"])?;
        }
        Ok(lab)
    }

    /// QEMU on `host`'s namespace and TAP, waiting for a migration on
    /// `incoming` or booting the guest; `n` names its files.
    fn start(&self, host: usize, incoming: Option<&str>, n: usize) -> Result<Qemu, String> {
        let file = |suffix: &str| self.dir.path().join(format!("qemu{n}-{}.{suffix}", HOSTS[host]));
        let (serial, socket, stderr) = (file("log"), file("qmp"), file("err"));
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.namespaces[host], QEMU])
            .args(["-M", "microvm", "-enable-kvm", "-cpu", "qemu64"])
            .args(["-m", &MEMORY_MIB.to_string(), "-smp", "1"])
            .args(["-nodefaults", "-no-user-config", "-nographic"])
            .args(["-global", "virtio-mmio.force-legacy=false", "-kernel"])
            .arg(&self.kernel)
            .args(["-append", &self.cmdline, "-netdev"])
            .arg(format!("tap,id=n0,ifname={QEMU_TAP},script=no,downscript=no"))
            .arg("-device")
            .arg(format!("virtio-net-device,netdev=n0,mac={}", self.mac))
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", socket.display()))
            .args(incoming.map(|uri| ["-incoming", uri]).into_iter().flatten())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).map_err(|e| e.to_string())?);
        let mut process = Process::spawn(&mut command, format!("QEMU on {}", HOSTS[host]))?;
        // QEMU serves QMP from its main loop, after -incoming is listening.
        let qmp = Qmp::connect(&socket, &mut process).map_err(|e| {
            let words = std::fs::read_to_string(&stderr).unwrap_or_default();
            format!("{e} ({})", words.trim())
        })?;
        Ok(Qemu {
            process,
            qmp,
            serial,
            host,
        })
    }

    /// The guest's console lines from every QEMU of this lab.
    fn consoles(&self) -> String {
        let mut all = String::new();
        for entry in std::fs::read_dir(self.dir.path()).into_iter().flatten().flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                all.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        all
    }
}

impl Drop for QemuLab {
    fn drop(&mut self) {
        for ns in &self.taps {
            let _ = ip(&["-n", ns, "link", "del", QEMU_TAP]);
        }
    }
}

/// One QEMU process of the guest (killed when dropped).
struct Qemu {
    process: Process,
    qmp: Qmp,
    serial: PathBuf,
    host: usize,
}

impl Qemu {
    fn console(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    fn wait_filled(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + BOOT_LIMIT;
        loop {
            let console = std::fs::read_to_string(&self.serial).unwrap_or_default();
            if console.lines().any(|line| line.starts_with("FILLED")) {
                return Ok(());
            }
            self.process.ensure_alive()?;
            if Instant::now() >= deadline {
                return Err(format!("the guest under QEMU never filled its memory: {console}"));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Migrates to `uri` and waits for the outcome: `query-migrate`'s
    /// answer once completed.
    fn migrate(&mut self, uri: &str) -> Result<Value, String> {
        self.qmp.execute(
            "migrate-set-parameters",
            Some(json!({ "max-bandwidth": QEMU_UNCAPPED_BPS })),
        )?;
        self.qmp.execute("migrate", Some(json!({ "uri": uri })))?;
        let deadline = Instant::now() + MIGRATE_LIMIT;
        loop {
            thread::sleep(Duration::from_millis(10));
            let info = self.qmp.execute("query-migrate", None)?;
            match info["status"].as_str().unwrap_or("") {
                "completed" => return Ok(info),
                "failed" | "cancelled" => {
                    return Err(format!("QEMU migration {}: {}", info["status"], info["error-desc"]));
                }
                _ if Instant::now() >= deadline => {
                    let _ = self.qmp.execute("migrate_cancel", None);
                    return Err(format!("QEMU migration not done in {} s", MIGRATE_LIMIT.as_secs()));
                }
                _ => {}
            }
        }
    }
}

/// QEMU's announce-self parameters, to print what its default is.
fn qemu_announce(qmp: &mut Qmp) -> String {
    match qmp.execute("query-migrate-parameters", None) {
        Ok(p) => format!(
            "rounds {}, initial {} ms, step {} ms, max {} ms",
            p["announce-rounds"], p["announce-initial"], p["announce-step"], p["announce-max"]
        ),
        Err(e) => format!("cannot query ({e})"),
    }
}

/// The same guest under QEMU: a new target on the other host for each move.
fn qemu_engine(setup: &Setup) -> Result<EngineRun, String> {
    let address = setup.vm_ip(1);
    let lab = QemuLab::new(setup, address)?;
    let mut source = lab.start(0, None, 0)?;
    eprintln!("  qemu      announce-self default: {}", qemu_announce(&mut source.qmp));
    source.wait_filled()?;
    let echo = EchoProbe::start(address)?;
    let floor = setup.floor(address)?;
    let mut moves = Vec::new();
    for run in 0..setup.runs {
        let (from, to) = (source.host, 1 - source.host);
        let port = QEMU_MIGRATION_PORT + run as u16;
        let uri = format!("tcp:{}:{port}", lab.host_ips[to]);
        let target = lab.start(to, Some(&uri), run + 1)?;
        let last_beat = last_seq(&source.console());
        let ping = setup.start_ping(address)?;
        thread::sleep(MARGIN);
        let start = now();
        let info = source.migrate(&uri)?;
        let end = now();
        thread::sleep(MARGIN);
        let ping = ping.map(Ping::stop).transpose()?;
        let consoles = source.console() + &target.console();
        let m = Move {
            window: Window { start, end },
            ping,
            downtime_ms: info["downtime"].as_f64().unwrap_or(f64::NAN),
            total_ms: info["total-time"].as_f64().unwrap_or(f64::NAN),
            guest_stall_ms: longest_stall(&consoles, last_beat),
        };
        progress("qemu", run, setup.runs, from, to, &m);
        moves.push(m);
        // The old source's TAP is the next target's.
        let _ = source.qmp.execute("quit", None);
        source = target;
    }
    let echoes = echo.finish();
    drop(source);
    Ok(EngineRun {
        moves,
        echoes,
        floor,
        guest_errors: error_lines(&lab.consoles()),
    })
}

fn qemu_version() -> Option<String> {
    let output = Command::new(QEMU).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    Some(text.lines().next()?.trim().to_string())
}

/// Runs `ip ARGS`; its stderr is the error.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if !out.status.success() {
        return Err(format!("ip {}: {}", args.join(" "), text(&out.stderr).trim()));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The table

fn pair(values: &[f64], digits: usize) -> String {
    let mut sorted = values.to_vec();
    match (median(&mut sorted), max(values)) {
        (Some(m), Some(x)) => format!("{m:.digits$} / {x:.digits$}"),
        _ => "-".to_string(),
    }
}

/// Median longest gap of an engine's moves.
fn median_gap(run: &EngineRun) -> Option<f64> {
    let mut gaps: Vec<f64> = run
        .moves
        .iter()
        .filter_map(|m| m.ping.map(|p| p.longest_gap_ms))
        .collect();
    median(&mut gaps)
}

/// One line of the table.
fn columns(cells: [&str; 10]) -> String {
    let [engine, moves, gap, floor, lost, downtime, stall, before, during, after] = cells;
    format!(
        "{engine:<6} {moves:>5} {gap:>17} {floor:>8} {lost:>11} {downtime:>15} {stall:>15} {before:>15} {during:>17} \
         {after:>15}"
    )
}

fn print_row(engine: &str, result: &Result<EngineRun, String>) {
    let run = match result {
        Ok(run) => run,
        Err(reason) => {
            println!("{engine:<6} FAILED: {reason}");
            return;
        }
    };
    let pings: Vec<PingCount> = run.moves.iter().filter_map(|m| m.ping).collect();
    let gaps: Vec<f64> = pings.iter().map(|p| p.longest_gap_ms).collect();
    let lost = if pings.is_empty() {
        "-".to_string()
    } else {
        format!(
            "{} / {}",
            pings.iter().map(|p| p.lost).sum::<u64>(),
            pings.iter().map(|p| p.sent).sum::<u64>()
        )
    };
    let downtimes: Vec<f64> = run.moves.iter().map(|m| m.downtime_ms).collect();
    let stalls: Vec<f64> = run.moves.iter().filter_map(|m| m.guest_stall_ms).collect();
    let (before, during, after) = match &run.echoes {
        Ok(echoes) => {
            let windows: Vec<Window> = run.moves.iter().map(|m| m.window).collect();
            let phases = classify(echoes, &windows);
            (pair(&phases.before, 2), pair(&phases.during, 2), pair(&phases.after, 2))
        }
        Err(_) => ("-".into(), "-".into(), "-".into()),
    };
    let floor = run
        .floor
        .map_or("-".to_string(), |f| format!("{:.1}", f.longest_gap_ms));
    println!(
        "{}",
        columns([
            engine,
            &run.moves.len().to_string(),
            &pair(&gaps, 1),
            &floor,
            &lost,
            &pair(&downtimes, 1),
            &pair(&stalls, 1),
            &before,
            &during,
            &after,
        ])
    );
    if let Err(reason) = &run.echoes {
        println!("{:<6} TCP echo FAILED: {reason}", "");
    }
    let duplicates: u64 = pings.iter().map(|p| p.duplicates).sum();
    if duplicates > 0 {
        println!(
            "{:<6} DUPLICATE REPLIES: {duplicates} (two copies of the guest answered)",
            ""
        );
    }
    if run.guest_errors > 0 {
        println!("{:<6} GUEST ERRORS: {} ERR/FATAL console lines", "", run.guest_errors);
    }
}

fn main() {
    // `cargo bench` passes --bench; no other argument is read.
    let runs = std::env::var("VMIG_NET_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(DEFAULT_RUNS);
    println!(
        "vmig network continuity benchmark on {} ({} cores), {runs} moves per engine",
        hostname(),
        num_cpus()
    );
    println!("load average at the start: {}", load_average());
    let ping = ping_available();
    let qemu = qemu_version();
    let lab = Lab::up_hosts(2, &["--network", "netns"]);
    let network = std::fs::read_to_string(lab.dir_path().join("network.toml")).expect("a lab of namespaces");
    let net = network
        .split('=')
        .nth(1)
        .and_then(|n| n.trim().parse().ok())
        .expect("index = N in network.toml");
    let setup = Setup { net, runs, ping };
    println!(
        "lab: hosts as network namespaces on switch vmiglab{net} (10.77.{net}.0/24); guest {MEMORY_MIB} MiB, 1 vCPU, \
         cmdline \"{WORKLOAD} ip=...\" for both engines"
    );
    if ping {
        println!(
            "ping -D -i {PING_INTERVAL} from {} from {:.0} s before each move to {:.0} s after",
            setup.client_namespace(),
            MARGIN.as_secs_f64(),
            MARGIN.as_secs_f64()
        );
    } else {
        println!("ping not found (iputils-ping): no ping figures");
    }
    println!(
        "TCP echo of {ECHO_BYTES} bytes every {} ms from 10.77.{net}.254, one connection across each engine's moves",
        ECHO_EVERY.as_millis()
    );
    match &qemu {
        Some(version) => println!(
            "{version}: -M microvm -cpu qemu64, virtio-net on a TAP in the host's br0, max-bandwidth {} GiB/s, \
             the rest default",
            QEMU_UNCAPPED_BPS >> 30
        ),
        None => println!("{QEMU} not found: vmig only"),
    }

    let vmig = vmig_engine(&lab, &setup);
    // Its vCPU would take a core from QEMU's guest.
    let _ = lab.run(&["vm", "destroy", "web"]);
    let qemu_run = qemu.is_some().then(|| qemu_engine(&setup));

    println!();
    let ms = "median / max ms";
    println!(
        "{}",
        columns([
            "",
            "",
            "longest ping gap",
            "no move",
            "pings lost",
            "downtime",
            "guest stall",
            "TCP RTT before",
            "TCP RTT during",
            "TCP RTT after"
        ])
    );
    println!(
        "{}",
        columns(["engine", "moves", ms, "gap ms", "of sent", ms, ms, ms, ms, ms])
    );
    print_row("vmig", &vmig);
    if let Some(qemu_run) = &qemu_run {
        print_row("qemu", qemu_run);
    }
    let v = vmig.as_ref().ok().and_then(median_gap);
    let q = qemu_run.as_ref().and_then(|r| r.as_ref().ok()).and_then(median_gap);
    match (v, q) {
        (Some(v), Some(q)) if q > 0.0 => {
            println!("vmig/qemu median longest ping gap: {:.2}x ({v:.1} / {q:.1} ms)", v / q);
        }
        _ => println!("vmig/qemu median longest ping gap: -"),
    }
    println!();
    println!("load average at the end: {}", load_average());
    println!("Machine: {}, {} cores, {}", hostname(), num_cpus(), kernel_version());
    println!("Date: {}", date());
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The 1, 5 and 15 minute load averages: what else this machine ran.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
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
