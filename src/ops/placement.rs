//! Placement: where each VM of an evacuation goes, as a pure function over
//! the hosts' facts and the VMs', with table tests. The plan is made over
//! the whole set at once — capacity is spent as VMs are placed, so the plan
//! never needs a host's memory twice, and a redundancy group's members are
//! kept in distinct chassis across the plan, not VM by VM — and it says up
//! front what cannot move and why, by the precheck rule that blocks it.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

/// What maintenance does with a VM (`maintenance` in its spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Moved live (the default).
    Live,
    /// Shut down for the maintenance, started again on return.
    Stop,
    /// Never moved; the evacuation reports it.
    Pin,
}

/// A host the plan may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub free_bytes: u64,
    pub chassis: Option<String>,
    pub cordoned: bool,
}

/// A VM to place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vm {
    pub name: String,
    pub memory_bytes: u64,
    pub group: Option<String>,
    pub policy: Policy,
    /// Hosts its own prechecks refuse (CPU, devices, ...), with the rule.
    pub refused: BTreeMap<String, &'static str>,
}

/// One move of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub vm: String,
    pub to: String,
}

/// A VM the plan leaves where it is, and the rule that keeps it there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Left {
    pub vm: String,
    pub rule: &'static str,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// In the order they should run.
    pub steps: Vec<Step>,
    /// VMs shut down instead (policy `stop`).
    pub stopped: Vec<String>,
    pub left: Vec<Left>,
}

/// Plans moving `vms` off `source` onto `hosts` (the source among them is
/// ignored). `placed` is where each redundancy group already has members:
/// (group, chassis) of the VMs that stay where they are.
pub fn plan(source: &str, vms: &[Vm], hosts: &[Host], placed: &[(String, String)]) -> Plan {
    let mut free: BTreeMap<&str, u64> = hosts
        .iter()
        .filter(|h| h.name != source)
        .map(|h| (h.name.as_str(), h.free_bytes))
        .collect();
    // Group -> chassis holding one of its members, after the plan so far.
    let mut taken: BTreeSet<(String, String)> = placed.iter().cloned().collect();
    let mut plan = Plan::default();
    // Biggest first: they are the hardest to fit (first-fit decreasing).
    let mut order: Vec<&Vm> = vms.iter().collect();
    order.sort_by(|a, b| b.memory_bytes.cmp(&a.memory_bytes).then_with(|| a.name.cmp(&b.name)));
    for vm in order {
        match vm.policy {
            Policy::Pin => {
                plan.left.push(Left {
                    vm: vm.name.clone(),
                    rule: "maintenance.pin",
                    reason: format!("{} is pinned to {source} (maintenance = \"pin\")", vm.name),
                });
                continue;
            }
            Policy::Stop => {
                plan.stopped.push(vm.name.clone());
                continue;
            }
            Policy::Live => {}
        }
        // Why each host is out, the first rule that excludes it.
        let mut why: BTreeMap<&'static str, Vec<&str>> = BTreeMap::new();
        let mut best: Option<(&Host, u64)> = None;
        for host in hosts.iter().filter(|h| h.name != source) {
            let left = free.get(host.name.as_str()).copied().unwrap_or(0);
            let rule = if host.cordoned {
                Some("host.cordoned")
            } else if let Some(rule) = vm.refused.get(&host.name) {
                Some(*rule)
            } else if left < vm.memory_bytes {
                Some("capacity.memory")
            } else if let (Some(group), Some(chassis)) = (&vm.group, &host.chassis)
                && taken.contains(&(group.clone(), chassis.clone()))
            {
                Some("redundancy.chassis")
            } else {
                None
            };
            match rule {
                Some(rule) => why.entry(rule).or_default().push(&host.name),
                // Spread: the host with the most memory left after it.
                None if best.is_none_or(|(_, room)| left - vm.memory_bytes > room) => {
                    best = Some((host, left - vm.memory_bytes));
                }
                None => {}
            }
        }
        match best {
            Some((host, room)) => {
                free.insert(host.name.as_str(), room);
                if let (Some(group), Some(chassis)) = (&vm.group, &host.chassis) {
                    taken.insert((group.clone(), chassis.clone()));
                }
                plan.steps.push(Step {
                    vm: vm.name.clone(),
                    to: host.name.clone(),
                });
            }
            None => {
                // The rule that excludes the most hosts speaks for the VM.
                let (rule, on) = why
                    .iter()
                    .max_by_key(|(_, hosts)| hosts.len())
                    .map_or(("capacity.memory", Vec::new()), |(rule, hosts)| (*rule, hosts.clone()));
                let reason = if on.is_empty() {
                    format!("there is no other host for {}", vm.name)
                } else {
                    format!("{} cannot go to {} ({rule})", vm.name, on.join(", "))
                };
                plan.left.push(Left {
                    vm: vm.name.clone(),
                    rule,
                    reason,
                });
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn host(name: &str, free_gib: u64, chassis: &str) -> Host {
        Host {
            name: name.into(),
            free_bytes: free_gib * GIB,
            chassis: Some(chassis.into()),
            cordoned: false,
        }
    }

    fn vm(name: &str, gib: u64) -> Vm {
        Vm {
            name: name.into(),
            memory_bytes: gib * GIB,
            group: None,
            policy: Policy::Live,
            refused: BTreeMap::new(),
        }
    }

    fn targets(plan: &Plan) -> Vec<(&str, &str)> {
        plan.steps.iter().map(|s| (s.vm.as_str(), s.to.as_str())).collect()
    }

    #[test]
    fn capacity_is_spent_across_the_plan_and_load_is_spread() {
        let hosts = [host("A", 0, "c1"), host("B", 6, "c2"), host("C", 5, "c3")];
        let vms = [vm("small", 1), vm("big", 4), vm("mid", 2)];
        let plan = plan("A", &vms, &hosts, &[]);
        // big to B (most room), mid to C (5 vs 2 left), small to C (3 vs 2).
        assert_eq!(targets(&plan), [("big", "B"), ("mid", "C"), ("small", "C")]);
        assert!(plan.left.is_empty());
        // Too much for what is free: the plan says so up front.
        let vms = [vm("a", 5), vm("b", 5), vm("c", 5)];
        let plan = super::plan("A", &vms, &hosts, &[]);
        assert_eq!(plan.steps.len(), 2);
        assert_eq!(plan.left.len(), 1);
        assert_eq!(plan.left[0].rule, "capacity.memory");
    }

    #[test]
    fn a_group_keeps_to_distinct_chassis_over_the_whole_plan() {
        let hosts = [
            host("A", 0, "c1"),
            host("B", 8, "c2"),
            host("C", 8, "c2"),
            host("D", 8, "c3"),
        ];
        let mut one = vm("db1", 1);
        one.group = Some("db".into());
        let mut two = vm("db2", 1);
        two.group = Some("db".into());
        let mut three = vm("db3", 1);
        three.group = Some("db".into());
        // db0 stays in c3: no member may go there.
        let placed = [("db".to_string(), "c3".to_string())];
        let plan = plan("A", &[one, two, three], &hosts, &placed);
        assert_eq!(plan.steps.len(), 1, "{plan:?}");
        assert_eq!(plan.left.len(), 2);
        assert!(plan.left.iter().all(|l| l.rule == "redundancy.chassis"), "{plan:?}");
    }

    #[test]
    fn cordons_prechecks_and_policies_are_honoured_and_named() {
        let mut hosts = vec![host("A", 0, "c1"), host("B", 8, "c2"), host("C", 8, "c3")];
        hosts[1].cordoned = true;
        let mut picky = vm("picky", 1);
        picky.refused.insert("C".into(), "cpu.features");
        let mut pinned = vm("pinned", 1);
        pinned.policy = Policy::Pin;
        let mut batch = vm("batch", 1);
        batch.policy = Policy::Stop;
        let plan = plan("A", &[vm("ok", 1), picky, pinned, batch], &hosts, &[]);
        assert_eq!(targets(&plan), [("ok", "C")]);
        assert_eq!(plan.stopped, ["batch"]);
        let rules: BTreeMap<&str, &str> = plan.left.iter().map(|l| (l.vm.as_str(), l.rule)).collect();
        assert_eq!(rules["pinned"], "maintenance.pin");
        assert!(matches!(rules["picky"], "cpu.features" | "host.cordoned"), "{plan:?}");
        // The only host: nothing to go to.
        let alone = super::plan("A", &[vm("x", 1)], &hosts[..1], &[]);
        assert!(alone.left[0].reason.contains("no other host"));
    }
}
