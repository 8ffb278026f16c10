//! Cluster benchmark: the operator commands against a lab of three agents on
//! this machine. Prints medians measured in one run:
//! - `vmig vms` across 3 agents (target < 50 ms) and `vmig --help` (< 10 ms);
//! - the agent's memory per idle VM it manages, and each VMM's own overhead
//!   beyond guest pages (target < 5 MiB);
//! - migration through the agents (`vmig migrate`) against the engine driven
//!   directly (`vmig vm send`) on the same guest (target: within 10%).
//!
//! Run with `cargo bench --bench cluster`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::VMIG;
use common::lab::Lab;
use serde_json::Value;

const RUNS: usize = 21;
const MIGRATIONS: usize = 11;
const MIB: f64 = 1048576.0;

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn timed(lab: &Lab, args: &[&str]) -> f64 {
    let mut times: Vec<f64> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            lab.ok(args);
            start.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    median(&mut times)
}

/// Proportional set size of a process in bytes: its private pages plus its
/// share of pages shared with other processes (the vmig binary's code is one
/// copy for every VMM and agent).
fn rss(pid: u64) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn main() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("vmig cluster benchmark on {} ({cores} cores)", hostname());
    // Taken down however the benchmark ends: agents and VMs left behind
    // would skew every later measurement on this machine.
    let lab = Lab::up(&[]);
    let dir = lab.path();

    // Command latency, with one VM per host to list.
    for (i, host) in ["hostA", "hostB", "hostC"].iter().enumerate() {
        let name = format!("idle{i}");
        lab.create(&name, host, "64M", "hb=1000");
    }
    let list = timed(&lab, &["vms", "--json"]);
    let help = timed(&lab, &["--help"]);
    println!("vmig vms, 3 agents, 3 VMs                  median {list:8.1} ms   (target < 50 ms; {RUNS} runs)");
    println!("vmig --help                                median {help:8.1} ms   (target < 10 ms; {RUNS} runs)");

    // Memory per idle VM: the agent's growth, and each VMM beyond guest pages.
    let agent = lab.agent_pid("hostB") as u64;
    let before = rss(agent);
    const IDLE: usize = 8;
    for i in 0..IDLE {
        let name = format!("mem{i}");
        lab.create(&name, "hostB", "64M", "hb=1000");
    }
    // Every VM listed once more, so the agent has answered about all of them.
    let listed = lab.vms();
    let after = rss(agent);
    let mut vmm_overhead: Vec<f64> = listed
        .iter()
        .filter(|v| v["name"].as_str().is_some_and(|n| n.starts_with("mem")))
        .map(|v| {
            let name = v["name"].as_str().unwrap();
            let detail: Value = serde_json::from_str(&lab.ok(&["vm", "show", name, "--json"])).unwrap();
            let resident = detail["stats"]["memory_resident_bytes"].as_u64().unwrap_or(0);
            rss(v["pid"].as_u64().unwrap()).saturating_sub(resident) as f64 / MIB
        })
        .collect();
    let per_vm_agent = after.saturating_sub(before) as f64 / IDLE as f64 / MIB;
    let vmm = median(&mut vmm_overhead);
    println!("agent PSS per idle VM ({IDLE} VMs)             {per_vm_agent:8.2} MiB");
    println!("VMM PSS beyond guest pages, per idle VM    median {vmm:8.2} MiB");
    println!(
        "per idle VM in all                                {:8.2} MiB   (target < 5 MiB)",
        per_vm_agent + vmm
    );
    for i in 0..IDLE {
        lab.ok(&["vm", "destroy", &format!("mem{i}")]);
    }
    for i in 0..3 {
        lab.ok(&["vm", "destroy", &format!("idle{i}")]);
    }

    // Migration through the agents against the engine alone, same guest, same hosts' loopback.
    lab.create("mover", "hostA", "1G", "fill=512M hb=1000");
    lab.wait_filled("mover");
    let hosts = ["hostB", "hostA"];
    let mut agent_total = Vec::new();
    let mut agent_down = Vec::new();
    let mut agent_parts = Vec::new();
    for i in 0..MIGRATIONS {
        let out = lab.ok(&["migrate", "mover", hosts[i % 2], "--json"]);
        let result = out
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find_map(|v| v.get("migrated").cloned())
            .unwrap();
        agent_total.push(result["report"]["total_ms"].as_f64().unwrap());
        agent_down.push(result["report"]["downtime_ms"].as_f64().unwrap());
        agent_parts.push(parts(&result["report"]));
    }
    lab.ok(&["vm", "destroy", "mover"]);
    let (mut engine_total, mut engine_down, engine_parts) = engine_migrations(dir);
    let at = median(&mut agent_total);
    let ad = median(&mut agent_down);
    let et = median(&mut engine_total);
    let ed = median(&mut engine_down);
    println!("1 GiB guest, 512 MiB filled, medians of {MIGRATIONS}:");
    println!(
        "  vmig migrate (agents)    total {at:8.1} ms   downtime {ad:6.2} ms   ({})",
        parts_median(&agent_parts)
    );
    println!(
        "  vmig vm send (engine)    total {et:8.1} ms   downtime {ed:6.2} ms   ({})",
        parts_median(&engine_parts)
    );
    println!(
        "  agents/engine: total {:.2}x, downtime {:.2}x   (target within 10%)",
        at / et,
        ad / ed
    );
}

/// The downtime's parts in a report: last pages, state, handoff (ms).
fn parts(report: &Value) -> [f64; 3] {
    ["final_pages_ms", "state_ms", "handoff_ms"].map(|key| report[key].as_f64().unwrap_or(f64::NAN))
}

fn parts_median(parts: &[[f64; 3]]) -> String {
    let part = |i: usize| median(&mut parts.iter().map(|p| p[i]).collect::<Vec<_>>());
    format!(
        "last pages {:.2}, state {:.2}, handoff {:.2}",
        part(0),
        part(1),
        part(2)
    )
}

/// The same guest migrated back and forth between two VMMs started by hand.
fn engine_migrations(dir: &str) -> (Vec<f64>, Vec<f64>, Vec<[f64; 3]>) {
    let mut totals = Vec::new();
    let mut downs = Vec::new();
    let mut split = Vec::new();
    let spawn = |args: &[&str], n: usize| {
        let control = format!("{dir}/engine{n}.sock");
        let stderr = std::fs::File::create(format!("{dir}/engine{n}.err")).unwrap();
        let child = Command::new(VMIG)
            .args([
                "vm",
                "run",
                "--control",
                &control,
                "--console",
                &format!("{dir}/engine{n}.log"),
            ])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        (child, control)
    };
    let (mut source, mut control) = spawn(
        &[
            "--kernel",
            "builtin:testguest",
            "--memory",
            "1G",
            "--cmdline",
            "fill=512M hb=1000",
        ],
        0,
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(format!("{dir}/engine0.log"))
        .unwrap_or_default()
        .contains("FILLED")
    {
        assert!(Instant::now() < deadline, "the engine's guest never filled");
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in 1..=MIGRATIONS {
        let (target, target_control) = spawn(&["--incoming", "tcp:127.0.1.2:0"], i);
        let err = format!("{dir}/engine{i}.err");
        let url = loop {
            let text = std::fs::read_to_string(&err).unwrap_or_default();
            if let Some(url) = text.lines().find_map(|l| {
                l.split_once("waiting for an incoming VM on ")
                    .map(|(_, u)| u.trim().to_string())
            }) {
                break url;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let out = Command::new(VMIG)
            .args(["vm", "send", "--json", "--control", &control, &url])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        let report = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find_map(|v| v.get("migrated").cloned())
            .unwrap();
        totals.push(report["total_ms"].as_f64().unwrap());
        downs.push(report["downtime_ms"].as_f64().unwrap());
        split.push(parts(&report));
        let _ = source.wait();
        source = target;
        control = target_control;
    }
    let _ = Command::new(VMIG)
        .args(["vm", "shutdown", "--control", &control])
        .output();
    let _ = source.wait();
    (totals, downs, split)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map_or_else(|_| "?".into(), |h| h.trim().to_string())
}
