//! Runbook benchmark, against a lab of three agents on this machine. Prints
//! medians and ratios measured in one run:
//! - `vmig run` of an empty runbook (target < 20 ms), beside `vmig --version`;
//! - a migration started from Lua against `vmig migrate` on the same VM,
//!   alternating (target: within 5%);
//! - six VMs evacuated off a host by runbooks/evacuate.lua against a shell
//!   loop of `vmig migrate`, wall time.
//!
//! Run with `cargo bench --bench runbooks`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::Instant;

use common::VMIG;
use common::lab::{Lab, json_lines, text};

const RUNS: usize = 21;
const MIGRATIONS: usize = 9;
const EVACUATIONS: usize = 3;

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

fn main() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("vmig runbook benchmark ({cores} cores)");
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.lua");
    std::fs::write(&empty, "").unwrap();
    let empty = empty.to_str().unwrap().to_string();

    // Start-up: an empty runbook needs no inventory and changes nothing.
    let mut run_times = Vec::new();
    let mut version_times = Vec::new();
    for _ in 0..RUNS {
        let start = Instant::now();
        let out = Command::new(VMIG).args(["run", &empty]).output().unwrap();
        run_times.push(ms(start));
        assert!(out.status.success(), "{}", text(&out.stderr));
        let start = Instant::now();
        Command::new(VMIG).arg("--version").output().unwrap();
        version_times.push(ms(start));
    }
    let run = median(&mut run_times);
    let version = median(&mut version_times);
    println!("vmig run empty.lua                 median {run:8.1} ms   (target < 20 ms; {RUNS} runs)");
    println!("vmig --version                     median {version:8.1} ms   (the process alone)");

    let lab = Lab::up(&[]);
    // The same VM moves back and forth: by `vmig migrate`, then by Lua.
    lab.create("vm1", "hostA", "256M", "fill=128M dirty=16M rate=20 hb=100");
    lab.wait_filled("vm1");
    let script = dir.path().join("one.lua");
    std::fs::write(&script, "local vm, host = ...\nvmig.migrate(vm, host)\n").unwrap();
    let script = script.to_str().unwrap().to_string();
    let (mut cli, mut lua) = (Vec::new(), Vec::new());
    let (mut cli_down, mut lua_down) = (Vec::new(), Vec::new());
    // Each round: the CLI moves it hostA -> hostB, Lua moves it back.
    for _ in 0..MIGRATIONS {
        let start = Instant::now();
        let out = lab.run(&["migrate", "vm1", "hostB", "--json"]);
        cli.push(ms(start));
        assert!(out.status.success(), "{}", text(&out.stderr));
        cli_down.push(downtime(&out.stdout));
        let start = Instant::now();
        let out = lab.run(&["run", &script, "vm1", "hostA", "--yes", "--json"]);
        lua.push(ms(start));
        assert!(out.status.success(), "{}", text(&out.stderr));
        lua_down.push(downtime(&out.stdout));
    }
    let (cli, lua) = (median(&mut cli), median(&mut lua));
    let (cli_down, lua_down) = (median(&mut cli_down), median(&mut lua_down));
    println!("migrate 256 MiB VM, vmig migrate   median {cli:8.1} ms   downtime {cli_down:6.2} ms ({MIGRATIONS} runs)");
    println!(
        "migrate 256 MiB VM, from Lua       median {lua:8.1} ms   downtime {lua_down:6.2} ms   Lua/CLI {:.3}x wall, {:.2}x downtime (target within 5%)",
        lua / cli,
        lua_down / cli_down
    );
    lab.ok(&["vm", "destroy", "vm1"]);

    // Six VMs off hostA: the runbook (two at a time) against a shell loop.
    const SIX: usize = 6;
    for i in 0..SIX {
        lab.create(&format!("e{i}"), "hostA", "96M", "fill=32M dirty=4M rate=10 hb=1000");
    }
    for i in 0..SIX {
        lab.wait_filled(&format!("e{i}"));
    }
    let (mut runbook, mut shell) = (Vec::new(), Vec::new());
    let evacuate = format!("{}/runbooks/evacuate.lua", env!("CARGO_MANIFEST_DIR"));
    let inventory = lab.inventory();
    for round in 0..EVACUATIONS {
        let start = Instant::now();
        let out = lab.run(&["run", &evacuate, "hostA", "--yes", "--json"]);
        runbook.push(ms(start));
        assert!(out.status.success(), "{}", text(&out.stderr));
        // The evacuation left hostA cordoned: its maintenance is over.
        lab.ok(&["host", "uncordon", "hostA"]);
        // Back to hostA, one by one, by a shell loop as operators write it:
        // that is the loop measured.
        let back = (0..SIX)
            .map(|i| {
                format!(
                    "{VMIG} --inventory {} migrate e{i} hostA --json >/dev/null || exit 1",
                    inventory.display()
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        let start = Instant::now();
        let status = Command::new("sh").args(["-c", &back]).status().unwrap();
        shell.push(ms(start));
        assert!(status.success(), "the shell loop failed in round {round}");
    }
    let (runbook, shell) = (median(&mut runbook), median(&mut shell));
    println!("6 VMs off a host, evacuate.lua     median {runbook:8.1} ms   ({EVACUATIONS} runs; two at a time)");
    println!(
        "6 VMs back, shell loop of migrate  median {shell:8.1} ms   runbook/loop {:.2}x",
        runbook / shell
    );
    // The history is measured on idle hosts: the VMs' vCPUs spin.
    for i in 0..SIX {
        lab.ok(&["vm", "destroy", &format!("e{i}")]);
    }
    history_of_10000(&lab);
}

/// The downtime of the migration whose result is in `stdout`'s JSON lines.
fn downtime(stdout: &[u8]) -> f64 {
    json_lines(stdout)
        .iter()
        .find_map(|l| l["migrated"]["report"]["downtime_ms"].as_f64())
        .unwrap_or(f64::NAN)
}

/// `vmig history` over 10,000 migrations: each agent's journal gets its
/// side of them (written while it idles, as it would append them).
fn history_of_10000(lab: &Lab) {
    use std::io::Write;
    const RECORDS: usize = 10_000;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let (mut source, mut target) = (String::new(), String::new());
    for n in 0..RECORDS {
        let id = format!("m-bench{n:011}");
        let at = now - 1_000_000 + n as u64;
        source.push_str(&format!(
            "{{\"at_ms\":{at},\"id\":\"{id}\",\"vm\":\"b{}\",\"peer\":\"hostB\",\"event\":{{\"event\":\"started\"}},\"run\":\"r-bench\",\"by\":\"operator\"}}\n",
            n % 50
        ));
        source.push_str(&format!(
            "{{\"at_ms\":{},\"id\":\"{id}\",\"vm\":\"b{}\",\"peer\":\"hostB\",\"event\":{{\"event\":\"ended\",\"outcome\":{{\"status\":409,\"code\":\"cancelled\",\"message\":\"cancelled\",\"result\":null}}}}}}\n",
            at + 1,
            n % 50
        ));
        target.push_str(&format!(
            "{{\"at_ms\":{at},\"id\":\"{id}\",\"vm\":\"b{}\",\"peer\":\"hostA\",\"event\":{{\"event\":\"prepared\"}}}}\n{{\"at_ms\":{},\"id\":\"{id}\",\"vm\":\"b{}\",\"peer\":\"hostA\",\"event\":{{\"event\":\"discarded\"}}}}\n",
            n % 50,
            at + 1,
            n % 50
        ));
    }
    for (host, text) in [("hostA", &source), ("hostB", &target)] {
        let path = lab.host_dir(host).join("state/journal.jsonl");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = lab.run(&["history", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(listed.as_array().unwrap().len() >= RECORDS, "{}", text(&out.stderr));
    let mut times: Vec<f64> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            lab.ok(&["history", "--json"]);
            ms(start)
        })
        .collect();
    let all = median(&mut times);
    let mut times: Vec<f64> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            lab.ok(&["history", "--vm", "b7"]);
            ms(start)
        })
        .collect();
    let one = median(&mut times);
    println!("vmig history, 10,000 records       median {all:8.1} ms   (target < 100 ms; --json, {RUNS} runs)");
    println!("vmig history --vm b7 (200 records) median {one:8.1} ms   (a table)");
}
