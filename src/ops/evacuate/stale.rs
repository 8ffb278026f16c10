//! Whether a saved plan still fits the cluster (`vmig apply`): what changed
//! since it was made, each change in a sentence. What the plan's own run
//! did (a VM on its planned target, or migrating there; a stopped VM it
//! stopped) is not a change: an interrupted apply resumes.

use std::collections::BTreeMap;

use vmig_backend::api::VmState;
use vmig_backend::size::format_size;

use super::{Evacuation, Snapshot};

/// What is different now from when `plan` was made, as far as it matters
/// to the plan; empty when it still holds.
pub fn changes(plan: &Evacuation, now: &Snapshot) -> Vec<String> {
    let mut changes = Vec::new();
    let source = &plan.host;
    let planned: BTreeMap<&str, &str> = plan.steps.iter().map(|s| (s.vm.as_str(), s.to.as_str())).collect();
    // The source's VMs.
    for was in plan.snapshot.on(source) {
        let Some(vm) = now.vm(&was.name) else {
            changes.push(format!("{} is gone", was.name));
            continue;
        };
        let target = planned.get(vm.name.as_str()).copied();
        if vm.host != *source {
            if Some(vm.host.as_str()) != target {
                changes.push(format!(
                    "{} moved to {} (the plan moves it to {})",
                    vm.name,
                    vm.host,
                    target.unwrap_or("nowhere")
                ));
            }
            continue;
        }
        let as_planned = (vm.state == VmState::Migrating && vm.migrating_to.as_deref() == target && target.is_some())
            || (vm.state == VmState::Stopped && plan.stopped.contains(&vm.name));
        if vm.state != was.state && !as_planned {
            changes.push(format!("{} is {} now (it was {})", vm.name, vm.state, was.state));
        }
        if vm.memory_bytes != was.memory_bytes {
            changes.push(format!(
                "{} has {} of memory now (it had {})",
                vm.name,
                format_size(vm.memory_bytes),
                format_size(was.memory_bytes)
            ));
        }
        if vm.maintenance != was.maintenance {
            changes.push(format!(
                "{}'s maintenance policy is {} now (it was {})",
                vm.name,
                vm.maintenance.name(),
                was.maintenance.name()
            ));
        }
    }
    for vm in now.on(source) {
        if plan.snapshot.vm(&vm.name).is_none_or(|was| was.host != *source) {
            changes.push(format!("{} is new on {source}", vm.name));
        }
    }
    // The targets: there, answering, open, with room for what is still to come.
    let mut still_to_come: BTreeMap<&str, u64> = BTreeMap::new();
    for step in &plan.steps {
        let arrived = now.vm(&step.vm).is_some_and(|vm| vm.host == step.to);
        if !arrived {
            *still_to_come.entry(step.to.as_str()).or_default() += step.memory_bytes;
        }
    }
    for (target, bytes) in &still_to_come {
        let was = plan.snapshot.host(target);
        match now.host(target) {
            None => changes.push(format!("{target} is no longer in the inventory")),
            Some(host) if !host.reachable => changes.push(format!("{target} does not answer now")),
            Some(host) => {
                let cordoned_before = was.is_some_and(|w| w.cordoned);
                if host.cordoned && !cordoned_before {
                    changes.push(format!("{target} is cordoned now"));
                }
                if host.free_bytes < *bytes {
                    changes.push(format!(
                        "{target} has {} free now (it had {}); the plan still puts {} there",
                        format_size(host.free_bytes),
                        format_size(was.map_or(0, |w| w.free_bytes)),
                        format_size(*bytes)
                    ));
                }
                if was.is_some_and(|w| w.chassis != host.chassis) {
                    changes.push(format!(
                        "{target}'s chassis is {} now",
                        host.chassis.as_deref().unwrap_or("not set")
                    ));
                }
            }
        }
    }
    // Redundancy groups of the VMs it moves: their other members stayed put.
    let groups: Vec<&str> = plan.snapshot.on(source).filter_map(|vm| vm.group.as_deref()).collect();
    for was in plan.snapshot.vms.iter().filter(|v| v.host != *source) {
        let Some(group) = was.group.as_deref().filter(|g| groups.contains(g)) else {
            continue;
        };
        match now.vm(&was.name) {
            Some(vm) if vm.host != was.host => changes.push(format!(
                "{} (group {group}) moved from {} to {}",
                vm.name, was.host, vm.host
            )),
            _ => {}
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::super::{SnapHost, SnapVm, Step};
    use super::*;
    use vmig_backend::api::Maintenance;

    const GIB: u64 = 1 << 30;

    fn vm(name: &str, host: &str) -> SnapVm {
        SnapVm {
            name: name.into(),
            host: host.into(),
            state: VmState::Running,
            memory_bytes: GIB,
            group: None,
            maintenance: Maintenance::Live,
            migration: None,
            migrating_to: None,
        }
    }

    fn host(name: &str, free: u64) -> SnapHost {
        SnapHost {
            name: name.into(),
            reachable: true,
            free_bytes: free,
            chassis: Some(format!("c-{name}")),
            cordoned: false,
            cordon_run: None,
            cost_limit: 8,
            cost_in_use: 0,
            cost: 1,
        }
    }

    fn plan() -> Evacuation {
        Evacuation {
            format: super::super::FORMAT,
            run: "r-0000000000000001".into(),
            parent: None,
            host: "A".into(),
            made_ms: 0,
            settings: Default::default(),
            snapshot: Snapshot {
                vms: vec![vm("v1", "A"), vm("v2", "A"), vm("o1", "C")],
                hosts: vec![host("A", 0), host("B", 4 * GIB), host("C", 4 * GIB)],
            },
            steps: vec![
                Step {
                    vm: "v1".into(),
                    to: "B".into(),
                    memory_bytes: GIB,
                    after: Vec::new(),
                },
                Step {
                    vm: "v2".into(),
                    to: "C".into(),
                    memory_bytes: GIB,
                    after: Vec::new(),
                },
            ],
            in_flight: Vec::new(),
            stopped: Vec::new(),
            left: Vec::new(),
            unreachable: Vec::new(),
        }
    }

    #[test]
    fn an_unchanged_cluster_and_the_plans_own_progress_are_no_change() {
        let plan = plan();
        assert!(changes(&plan, &plan.snapshot).is_empty());
        // v1 went where the plan sends it, v2 is on its way: an apply resumed.
        let mut now = plan.snapshot.clone();
        now.vms[0].host = "B".into();
        now.vms[1].state = VmState::Migrating;
        now.vms[1].migrating_to = Some("C".into());
        assert!(changes(&plan, &now).is_empty(), "{:?}", changes(&plan, &now));
    }

    #[test]
    fn every_change_that_matters_is_named() {
        let plan = plan();
        let mut now = plan.snapshot.clone();
        now.vms[0].host = "C".into(); // v1 went elsewhere
        now.vms[1].state = VmState::Stopped;
        now.vms.push(vm("v3", "A"));
        now.hosts[1].cordoned = true;
        now.hosts[2].free_bytes = GIB / 2;
        let found = changes(&plan, &now);
        let all = found.join("\n");
        for needle in [
            "v1 moved to C (the plan moves it to B)",
            "v2 is stopped now (it was running)",
            "v3 is new on A",
            "B is cordoned now",
            "C has 512 MiB free now",
        ] {
            assert!(all.contains(needle), "{needle:?} not in:\n{all}");
        }
        let mut gone = plan.snapshot.clone();
        gone.hosts.retain(|h| h.name != "B");
        gone.vms.retain(|v| v.name != "v2");
        let all = changes(&plan, &gone).join("\n");
        assert!(
            all.contains("v2 is gone") && all.contains("B is no longer in the inventory"),
            "{all}"
        );
    }
}
