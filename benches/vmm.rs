//! VMM figures, printed (not asserted): run with `cargo bench --bench vmm`.
//!
//! - time from starting `vmig vm run` to the test guest's first heartbeat;
//! - the VMM process's own memory: RSS beyond the guest pages it holds;
//! - the guest's achieved dirty rate against the requested one;
//! - host CPU of an idle 2-vCPU VM, polling versus parked (`sleep=1`, the
//!   VMM's paravirtual sleep register), with its heartbeat's punctuality.
//!
//! Medians over several runs, because this machine is shared and noisy.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use vmig_backend::runtime::control::{ControlClient, Reply, Request};

const VMIG: &str = env!("CARGO_BIN_EXE_vmig");
const RUNS: usize = 15;

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

fn spawn(args: &[&str], control: Option<&Path>) -> Child {
    let mut command = Command::new(VMIG);
    command
        .args(["vm", "run"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(control) = control {
        command.arg("--control").arg(control);
    }
    command.spawn().expect("cannot start vmig")
}

/// Reads console lines until one satisfies `pred`.
fn read_until(reader: &mut impl BufRead, pred: impl Fn(&str) -> bool) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "console closed");
        if pred(&line) {
            return line;
        }
    }
}

fn field(line: &str, key: &str) -> f64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn boot_to_first_heartbeat() {
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let start = Instant::now();
        let mut child = spawn(
            &["--kernel", "builtin:testguest", "--memory", "1G", "--cmdline", "hb=100"],
            None,
        );
        let mut console = BufReader::new(child.stdout.take().unwrap());
        read_until(&mut console, |l| l.starts_with("HB "));
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        stop(child);
    }
    let min = times.iter().cloned().fold(f64::MAX, f64::min);
    println!(
        "start to first heartbeat (1 GiB, 1 vCPU)   median {:7.1} ms   min {:7.1} ms   ({RUNS} runs; target < 100 ms)",
        median(&mut times),
        min
    );
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

fn vmm_overhead(label: &str, memory: &str, cmdline: &str, ready: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut overheads = Vec::new();
    for run in 0..5 {
        let control = dir.path().join(format!("c{run}.sock"));
        let mut child = spawn(
            &[
                "--kernel",
                "builtin:testguest",
                "--memory",
                memory,
                "--cmdline",
                cmdline,
            ],
            Some(&control),
        );
        let mut console = BufReader::new(child.stdout.take().unwrap());
        read_until(&mut console, |l| l.starts_with(ready));
        let mut client = ControlClient::connect(&control).unwrap();
        let Reply::Stats(stats) = client.request(&Request::Stats).unwrap() else {
            panic!("no stats")
        };
        let rss = rss_bytes(child.id());
        overheads.push(rss.saturating_sub(stats.memory_resident_bytes) as f64 / f64::from(1 << 20));
        stop(child);
    }
    println!(
        "VMM RSS beyond guest pages ({label:<24}) median {:7.1} MiB   (target < 30 MiB)",
        median(&mut overheads)
    );
}

fn dirty_rate(requested: u32) {
    let cmdline = format!("hb=200 fill=256M dirty=256M rate={requested}");
    let mut child = spawn(
        &["--kernel", "builtin:testguest", "--memory", "1G", "--cmdline", &cmdline],
        None,
    );
    let mut console = BufReader::new(child.stdout.take().unwrap());
    read_until(&mut console, |l| l.starts_with("FILLED"));
    // Skip the heartbeat that spans the fill, then take 15 intervals.
    let first = read_until(&mut console, |l| l.starts_with("HB "));
    let mut rates = Vec::new();
    while rates.len() < 15 {
        let line = read_until(&mut console, |l| l.starts_with("HB "));
        if field(&line, "seq") > field(&first, "seq") {
            rates.push(field(&line, "rate_mbps"));
        }
    }
    stop(child);
    let achieved = median(&mut rates);
    println!(
        "dirty rate requested {requested:5} MB/s        median {achieved:7.1} MB/s   ratio {:.3}   (target within 5%)",
        achieved / f64::from(requested)
    );
}

fn main() {
    // `cargo bench` passes --bench; any other argument filters nothing here.
    println!("vmig VMM benchmark on {} ({} cores)", hostname(), num_cpus());
    boot_to_first_heartbeat();
    vmm_overhead("1 GiB idle", "1G", "hb=100", "HB ");
    vmm_overhead("4 GiB, 1 GiB filled", "4G", "hb=100 fill=1G", "FILLED");
    for rate in [100, 1000] {
        dirty_rate(rate);
    }
    idle_cpu();
}

/// CPU ticks (user + system, 1/100 s) the process `pid` has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis: utime is the 12th, stime the 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

fn idle_cpu() {
    const WINDOW_S: u64 = 3;
    for sleep in [0, 1] {
        let cmdline = format!("idle verify=0 hb=100 sleep={sleep}");
        let mut child = spawn(
            &[
                "--kernel",
                "builtin:testguest",
                "--memory",
                "256M",
                "--vcpus",
                "2",
                "--cmdline",
                &cmdline,
            ],
            None,
        );
        let mut console = BufReader::new(child.stdout.take().unwrap());
        read_until(&mut console, |l| l.starts_with("HB seq=5 "));
        let pid = child.id();
        let before = cpu_ticks(pid);
        let start = Instant::now();
        let first = read_until(&mut console, |l| l.starts_with("HB "));
        let mut last = first.clone();
        while start.elapsed().as_secs() < WINDOW_S {
            last = read_until(&mut console, |l| l.starts_with("HB "));
        }
        let used = cpu_ticks(pid) - before;
        let elapsed = start.elapsed().as_secs_f64();
        let field = |line: &str, key: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let beats = field(&last, "seq=") - field(&first, "seq=");
        let interval = (field(&last, "t_ms=") - field(&first, "t_ms=")) / beats.max(1.0);
        println!(
            "idle 2-vCPU VM, sleep={sleep}: host CPU {:5.1}% of one core; heartbeat every {interval:.1} ms (hb=100)",
            used as f64 / elapsed
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
