//! Evacuation benchmark, against a lab of four agents on this machine:
//! eight VMs of mixed sizes and dirty rates off hostA, three ways, side by
//! side in one run (each round puts the VMs back with `vmig rollback --last`
//! or a shell loop, not measured):
//! - `vmig evacuate hostA --parallel 2`;
//! - the same migrations one by one (`vmig evacuate hostA --parallel 1`);
//! - a shell loop of `vmig migrate VM HOST` to the same targets, the way
//!   operators script it today;
//!
//! and the plan alone (`vmig evacuate hostA --dry-run`). Prints medians and
//! ratios. Run with `cargo bench --bench evacuate`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Instant;

use common::VMIG;
use common::lab::{Lab, json_lines, text};

const ROUNDS: usize = 5;

/// Name, memory, test-guest command line: four that dirty memory at
/// different rates, four idle ones that park their vCPUs.
const VMS: [(&str, &str, &str); 8] = [
    ("busy1", "256M", "fill=128M dirty=32M rate=40 hb=1000"),
    ("busy2", "192M", "fill=96M dirty=16M rate=20 hb=1000"),
    ("busy3", "128M", "fill=64M dirty=8M rate=10 hb=1000"),
    ("busy4", "96M", "fill=48M dirty=4M rate=5 hb=1000"),
    ("idle1", "256M", "fill=64M idle verify=0 sleep=1 hb=1000"),
    ("idle2", "128M", "fill=32M idle verify=0 sleep=1 hb=1000"),
    ("idle3", "64M", "idle verify=0 sleep=1 hb=1000"),
    ("idle4", "64M", "idle verify=0 sleep=1 hb=1000"),
];

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

/// Runs an evacuation; its wall time and where each VM went.
fn evacuate(lab: &Lab, extra: &[&str]) -> (f64, BTreeMap<String, String>) {
    let start = Instant::now();
    let out = lab.run(&[&["evacuate", "hostA", "--json"], extra].concat());
    let wall = ms(start);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report = json_lines(&out.stdout)
        .into_iter()
        .find_map(|l| l.get("evacuation").cloned())
        .expect("no report");
    let targets = report["vms"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| Some((v["vm"].as_str()?.to_string(), v["to"].as_str()?.to_string())))
        .collect();
    (wall, targets)
}

fn reset(lab: &Lab) {
    let out = lab.run(&["rollback", "--last", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let on_a = lab.vms().iter().filter(|v| v["host"] == "hostA").count();
    assert_eq!(
        on_a,
        VMS.len(),
        "the rollback left VMs elsewhere: {}\n{}",
        text(&out.stdout),
        lab.ok(&["history"])
    );
}

fn main() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("vmig evacuation benchmark ({cores} cores, {ROUNDS} rounds of each)");
    let lab = Lab::up_hosts(4, &[]);
    for (name, memory, cmdline) in VMS {
        lab.create(name, "hostA", memory, cmdline);
    }
    for (name, _, cmdline) in VMS {
        if cmdline.contains("fill=") {
            lab.wait_filled(name);
        }
    }
    let inventory = lab.inventory();
    let (mut plan, mut two, mut one, mut shell) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let out = lab.run(&["evacuate", "hostA", "--dry-run", "--json"]);
        plan.push(ms(start));
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

        let (wall, targets) = evacuate(&lab, &["--parallel", "2"]);
        two.push(wall);
        reset(&lab);
        let (wall, _) = evacuate(&lab, &["--parallel", "1"]);
        one.push(wall);
        reset(&lab);
        // The same moves, by a shell loop of `vmig migrate`.
        let script = targets
            .iter()
            .map(|(vm, to)| {
                format!(
                    "{VMIG} --inventory {} migrate {vm} {to} --json >/dev/null || exit 1",
                    inventory.display()
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        let start = Instant::now();
        let status = Command::new("sh").args(["-c", &script]).status().unwrap();
        shell.push(ms(start));
        assert!(status.success(), "the shell loop failed");
        let back = targets
            .keys()
            .map(|vm| {
                format!(
                    "{VMIG} --inventory {} migrate {vm} hostA --json >/dev/null || exit 1",
                    inventory.display()
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert!(Command::new("sh").args(["-c", &back]).status().unwrap().success());
    }
    let (plan, two, one, shell) = (
        median(&mut plan),
        median(&mut two),
        median(&mut one),
        median(&mut shell),
    );
    println!("plan 8 VMs over 4 hosts (dry run)  median {plan:8.1} ms");
    println!("evacuate --parallel 2              median {two:8.1} ms");
    println!(
        "evacuate --parallel 1 (one by one) median {one:8.1} ms   parallel 2 / one by one {:.2}x",
        two / one
    );
    println!(
        "shell loop of vmig migrate         median {shell:8.1} ms   parallel 2 / loop {:.2}x",
        two / shell
    );
}
