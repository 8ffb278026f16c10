//! Placement benchmark: planning an evacuation of 1,000 VMs over 50
//! simulated hosts (the pure planner, no agents), median of 21 runs
//! (target < 100 ms). Run with `cargo bench --bench placement`.

use std::collections::BTreeMap;
use std::time::Instant;

use vmig::ops::placement::{Host, Policy, Vm, plan};

const GIB: u64 = 1 << 30;

fn main() {
    let hosts: Vec<Host> = (0..50)
        .map(|i| Host {
            name: format!("host{i:02}"),
            free_bytes: if i == 0 { 0 } else { (40 + (i % 7) * 8) * GIB },
            chassis: Some(format!("chassis{}", i / 4)),
            cordoned: i % 17 == 5,
        })
        .collect();
    let vms: Vec<Vm> = (0..1000)
        .map(|i| Vm {
            name: format!("vm{i:04}"),
            memory_bytes: (1 + i % 8) * GIB / 2,
            group: (i % 5 == 0).then(|| format!("group{}", (i / 5) % 60)),
            policy: if i % 97 == 0 { Policy::Pin } else { Policy::Live },
            refused: if i % 13 == 0 {
                BTreeMap::from([(format!("host{:02}", i % 50), "cpu.features")])
            } else {
                BTreeMap::new()
            },
        })
        .collect();
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..21 {
        let start = Instant::now();
        let planned = plan("host00", &vms, &hosts, &[]);
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        last = Some(planned);
    }
    times.sort_by(f64::total_cmp);
    let planned = last.expect("planned");
    let mut by_rule: BTreeMap<&str, usize> = BTreeMap::new();
    for left in &planned.left {
        *by_rule.entry(left.rule).or_default() += 1;
    }
    println!(
        "plan 1000 VMs over 50 hosts        median {:8.2} ms   (target < 100 ms; 21 runs): {} moves, {} left {by_rule:?}, {} stopped",
        times[times.len() / 2],
        planned.steps.len(),
        planned.left.len(),
        planned.stopped.len()
    );
}
