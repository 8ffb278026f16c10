//! The compatibility rules, each a pure function over the facts of one
//! move: what it finds, how grave, in the words of the fix, and the facts it
//! used (measured by an agent, or declared in a config).

use serde::Serialize;
use vmig_backend::api::{HostFacts, VmInfo, VmState};
use vmig_backend::size::format_size;

/// Everything the rules look at for moving `vm` from `source` to `target`.
#[derive(Debug, Clone)]
pub struct Facts {
    pub vm: VmInfo,
    pub source: HostFacts,
    pub target: HostFacts,
    /// Every VM of the cluster that answered, with the chassis of its host
    /// (declared), for the redundancy rule.
    pub placed: Vec<(VmInfo, Option<String>)>,
    /// What the source's and the target's agents found at the VM's images.
    pub drives: super::devices::Drives,
    /// The VM's dirty rate over a short window (None: not sampled, as for a
    /// VM that is not running), or why its source could not say.
    pub sample: Option<Result<vmig_backend::runtime::control::DirtySample, String>>,
    /// The move's options (downtime limit, bandwidth cap, auto-converge).
    pub options: vmig_backend::migration::MigrationOptions,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The move cannot happen; nothing is started.
    Error,
    /// It may go badly; it needs `--force` (`force = true` in Lua).
    Warning,
}

/// Where a fact comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// An agent measured it (KVM, the kernel, its own state).
    Measured,
    /// A config says so (agent.toml, the VM's definition).
    Declared,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fact {
    pub name: String,
    pub value: serde_json::Value,
    pub origin: Origin,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// Stable: scripts and docs name rules by it.
    pub rule: &'static str,
    pub severity: Severity,
    pub message: String,
    pub facts: Vec<Fact>,
}

impl Finding {
    /// The code a move blocked by this finding ends with: a VM that is busy
    /// or a name taken is a conflict (it may pass later unchanged), the rest
    /// a refusal.
    pub fn code(&self) -> super::Code {
        match self.rule {
            "vm.stable" | "capacity.name" => super::Code::Conflict,
            _ => super::Code::Refused,
        }
    }
}

pub(super) fn fact(name: impl Into<String>, value: impl Serialize, origin: Origin) -> Fact {
    Fact {
        name: name.into(),
        value: serde_json::to_value(value).unwrap_or_default(),
        origin,
    }
}

pub(super) fn error(rule: &'static str, message: String, facts: Vec<Fact>) -> Option<Finding> {
    Some(Finding {
        rule,
        severity: Severity::Error,
        message,
        facts,
    })
}

pub(super) fn warning(rule: &'static str, message: String, facts: Vec<Fact>) -> Option<Finding> {
    Some(Finding {
        rule,
        severity: Severity::Warning,
        message,
        facts,
    })
}

/// A rule: its id, what it checks and how its findings are fixed (for the
/// documentation), and its check.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub id: &'static str,
    pub doc: &'static str,
    pub check: fn(&Facts) -> Option<Finding>,
}

/// Every rule, in the order they are reported.
pub const RULES: &[Rule] = &[
    Rule {
        id: "vm.stable",
        doc: "error unless the VM is running and not migrating, paused or in doubt; fix: start or resume it, \
              wait for (or cancel) its migration",
        check: vm_stable,
    },
    Rule {
        id: "host.versions",
        doc: "error when the agents speak different API or migration protocol versions; fix: upgrade the older agent",
        check: versions,
    },
    Rule {
        id: "host.cordoned",
        doc: "error when the target is cordoned (under maintenance: it takes no new VMs; its agent refuses them \
              too); fix: `vmig host uncordon HOST`, or pick another host",
        check: cordoned,
    },
    Rule {
        id: "network.family",
        doc: "error when the management addresses the agents listen on share no IP family (measured); \
              fix: give the target an address of the source's family",
        check: network_family,
    },
    Rule {
        id: "network.reachable",
        doc: "error when the VM has a network card on a network whose bridge the target lacks (measured: the \
              agent's `[bridges]` entry and the interface); fix: give the target a bridge for that network, or \
              pick another host",
        check: network_reachable,
    },
    Rule {
        id: "capacity.memory",
        doc: "error when the target has less memory free for VMs than the VM has; fix: free memory or pick another host",
        check: capacity_memory,
    },
    Rule {
        id: "capacity.name",
        doc: "error when the target holds a VM of the same name; fix: destroy or rename one",
        check: name_clash,
    },
    Rule {
        id: "cpu.features",
        doc: "error when the target's KVM lacks CPU features the VM sees (its source's, less what its baseline \
              hides), or the vendor differs; fix: pick a host with those features, or create the VM with \
              `--cpu baseline`",
        check: cpu_features,
    },
    Rule {
        id: "cpu.pmu",
        doc: "error when a VM with virtual performance counters (pmu) would meet a PMU of lower version, fewer \
              or narrower counters (measured from KVM); fix: pick such a host, or define the VM without pmu",
        check: pmu,
    },
    Rule {
        id: "redundancy.chassis",
        doc: "error when another VM of the VM's redundancy group runs in the target's chassis (declared); \
              fix: pick a host in another chassis",
        check: redundancy,
    },
    Rule {
        id: "devices.reachable",
        doc: "error when a disk is on host-local storage, or the target's agent, looking itself, finds it under no \
              shared root, missing, of another size or another file; fix: put it on storage both hosts mount",
        check: super::devices::reachable,
    },
    Rule {
        id: "cdrom.backing",
        doc: "error when a connected CD/DVD medium cannot be reached as the same file from the target (a host-local \
              ISO); warning when an ejected drive's medium could not be reconnected there; fix: `vmig vm cdrom VM \
              eject`, or put the medium on shared storage",
        check: super::devices::cdrom,
    },
    Rule {
        id: "gpu.vgpu",
        doc: "warning when a VM with a vGPU profile (declared) would cross a migration link under 10 Gbit/s: its \
              frame buffer is copied while the VM is stunned (the expected stun is stated); fix: a faster link",
        check: super::devices::vgpu,
    },
    Rule {
        id: "migration.convergence",
        doc: "from the VM's dirty rate (its VMM samples the dirty log for 100 ms, nothing sent), what it holds and \
              the link's bandwidth (the last migration's measured throughput, else the declared link speed): \
              warning when auto-converge will have to throttle the guest (or a forced time limit will cut in), \
              error when pre-copy cannot converge within the move's limits or would outlast its time limit \
              (the forecast of total time, downtime and throttle is in the verdict); fix: allow auto-converge, \
              raise the bandwidth, downtime or time limit, or move it when it is quieter",
        check: super::forecast::convergence,
    },
    Rule {
        id: "concurrency.budget",
        doc: "warning when the source's or target's migration cost budget, or that of a shared storage root \
              the VM's images are on (its slots are locks on the root, seen by every host), is spent: the move \
              waits in a queue (its position is stated); fix: wait, or pass --force to queue",
        check: concurrency,
    },
];

/// The rule with this id.
pub fn rule(id: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.id == id)
}

/// The findings for `facts`, errors and warnings, in rule order, leaving
/// out the rules in `skip`.
pub fn check_skipping(facts: &Facts, skip: &[&str]) -> Vec<Finding> {
    RULES
        .iter()
        .filter(|r| !skip.contains(&r.id))
        .filter_map(|r| (r.check)(facts))
        .collect()
}

/// The findings for `facts`, every rule.
pub fn check(facts: &Facts) -> Vec<Finding> {
    check_skipping(facts, &[])
}

fn vm_stable(f: &Facts) -> Option<Finding> {
    let (vm, state) = (&f.vm.name, f.vm.state);
    let fix = match state {
        VmState::Running => return None,
        VmState::Migrating => format!(
            "{vm} is already migrating to {}: wait for it to end, or `vmig cancel {vm}`",
            f.vm.migrating_to.as_deref().unwrap_or("another host")
        ),
        VmState::InDoubt => format!("{vm}'s last migration is in doubt: the agents settle it; see `vmig vms`"),
        VmState::Paused => format!("{vm} is paused: resume it first (`vmig vm start {vm}`)"),
        VmState::Stopped | VmState::Failed | VmState::Lost => {
            format!("{vm} is {state}: only a running VM moves live; start it first (`vmig vm start {vm}`)")
        }
        VmState::Incoming | VmState::Unresponsive => format!("{vm} is {state}: wait until it runs"),
    };
    error("vm.stable", fix, vec![fact("vm.state", state, Origin::Measured)])
}

fn versions(f: &Facts) -> Option<Finding> {
    let (s, t) = (&f.source, &f.target);
    if s.api_version == t.api_version && s.migration_protocol == t.migration_protocol {
        return None;
    }
    error(
        "host.versions",
        format!(
            "{} speaks API {} and migration protocol {}, {} speaks {} and {}: upgrade the older agent",
            s.name, s.api_version, s.migration_protocol, t.name, t.api_version, t.migration_protocol
        ),
        vec![
            fact(format!("{}.agent_version", s.name), &s.agent_version, Origin::Measured),
            fact(format!("{}.agent_version", t.name), &t.agent_version, Origin::Measured),
        ],
    )
}

fn cordoned(f: &Facts) -> Option<Finding> {
    let cordon = f.target.cordon.as_ref()?;
    let t = &f.target.name;
    error(
        "host.cordoned",
        format!(
            "{t} is cordoned{}{}: it takes no new VMs; `vmig host uncordon {t}` when its maintenance is done, \
             or choose another host",
            cordon.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default(),
            cordon.by.as_ref().map(|b| format!(" by {b}")).unwrap_or_default(),
        ),
        vec![fact(format!("{t}.cordon"), cordon, Origin::Measured)],
    )
}

fn network_reachable(f: &Facts) -> Option<Finding> {
    let t = &f.target;
    let missing: Vec<&str> =
        f.vm.nics
            .iter()
            .map(|nic| nic.network.as_str())
            .filter(|network| !t.bridged_networks.iter().any(|n| n == network))
            .collect();
    if missing.is_empty() {
        return None;
    }
    error(
        "network.reachable",
        format!(
            "{} has a network card on {}, which {} has no bridge for; give {} a bridge for it \
             ([bridges] in its agent's config) or pick another host",
            f.vm.name,
            missing.join(", "),
            t.name,
            t.name
        ),
        vec![
            fact(
                format!("{}.nics", f.vm.name),
                f.vm.nics.iter().map(|n| n.network.as_str()).collect::<Vec<_>>(),
                Origin::Declared,
            ),
            fact(
                format!("{}.bridged_networks", t.name),
                &t.bridged_networks,
                Origin::Measured,
            ),
        ],
    )
}

fn network_family(f: &Facts) -> Option<Finding> {
    let (s, t) = (&f.source, &f.target);
    if s.management_families
        .iter()
        .any(|fam| t.management_families.contains(fam))
    {
        return None;
    }
    error(
        "network.family",
        format!(
            "{}'s management network is {} and {}'s is {}: both must use one IP address family; \
             give {} an address of the other family",
            s.name,
            s.management_families.join("+"),
            t.name,
            t.management_families.join("+"),
            t.name
        ),
        vec![
            fact(
                format!("{}.management_families", s.name),
                &s.management_families,
                Origin::Measured,
            ),
            fact(
                format!("{}.management_families", t.name),
                &t.management_families,
                Origin::Measured,
            ),
        ],
    )
}

fn capacity_memory(f: &Facts) -> Option<Finding> {
    let (need, free) = (f.vm.memory_bytes, f.target.memory_available_bytes);
    if free >= need {
        return None;
    }
    error(
        "capacity.memory",
        format!(
            "{} has {} free for VMs; {} needs {}: free memory there or choose another host",
            f.target.name,
            format_size(free),
            f.vm.name,
            format_size(need)
        ),
        vec![
            fact("vm.memory_bytes", need, Origin::Declared),
            fact(
                format!("{}.memory_available_bytes", f.target.name),
                free,
                Origin::Measured,
            ),
        ],
    )
}

fn name_clash(f: &Facts) -> Option<Finding> {
    let clash = f
        .placed
        .iter()
        .any(|(vm, _)| vm.name == f.vm.name && vm.host == f.target.name && vm.state != VmState::Incoming);
    if !clash {
        return None;
    }
    error(
        "capacity.name",
        format!(
            "{} already holds a VM named {}: destroy or rename one of them",
            f.target.name, f.vm.name
        ),
        vec![fact("vm.name", &f.vm.name, Origin::Declared)],
    )
}

fn cpu_features(f: &Facts) -> Option<Finding> {
    let (s, t) = (&f.source, &f.target);
    if s.cpu_vendor != t.cpu_vendor {
        return error(
            "cpu.features",
            format!(
                "{} is {} and {} is {}: a VM cannot move between CPU vendors",
                s.name, s.cpu_vendor, t.name, t.cpu_vendor
            ),
            vec![
                fact(format!("{}.cpu_vendor", s.name), &s.cpu_vendor, Origin::Measured),
                fact(format!("{}.cpu_vendor", t.name), &t.cpu_vendor, Origin::Measured),
            ],
        );
    }
    // What the VM sees: its source's features less those its baseline hides.
    let missing: Vec<&String> = s
        .cpu_features
        .iter()
        .filter(|x| !f.vm.cpu_hide.contains(x) && !t.cpu_features.contains(x))
        .collect();
    if missing.is_empty() {
        return None;
    }
    let names: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
    error(
        "cpu.features",
        format!(
            "{}'s KVM does not offer {} that {}'s guests see: choose a host that offers them, or hide them \
             from guests on {} ([cpu] hide in its agent.toml) and restart the VM there",
            t.name,
            names.join(", "),
            s.name,
            s.name
        ),
        vec![fact(
            format!("{}.cpu_features missing", t.name),
            &names,
            Origin::Measured,
        )],
    )
}

fn pmu(f: &Facts) -> Option<Finding> {
    if !f.vm.pmu {
        return None;
    }
    let (s, t) = (&f.source, &f.target);
    let capable =
        t.pmu_version >= s.pmu_version && t.pmu_counters >= s.pmu_counters && t.pmu_counter_bits >= s.pmu_counter_bits;
    if capable {
        return None;
    }
    let pmu = |h: &HostFacts| {
        format!(
            "version {}, {} counters of {} bits",
            h.pmu_version, h.pmu_counters, h.pmu_counter_bits
        )
    };
    error(
        "cpu.pmu",
        format!(
            "{} was started with virtual performance counters ({} on {}); {} offers only {}:              choose a host whose PMU is at least as capable, or define the VM without `pmu`",
            f.vm.name,
            pmu(s),
            s.name,
            t.name,
            pmu(t)
        ),
        [s, t]
            .into_iter()
            .flat_map(|h| {
                [
                    fact(format!("{}.pmu_version", h.name), h.pmu_version, Origin::Measured),
                    fact(format!("{}.pmu_counters", h.name), h.pmu_counters, Origin::Measured),
                    fact(
                        format!("{}.pmu_counter_bits", h.name),
                        h.pmu_counter_bits,
                        Origin::Measured,
                    ),
                ]
            })
            .chain([fact("vm.pmu", true, Origin::Declared)])
            .collect(),
    )
}

fn redundancy(f: &Facts) -> Option<Finding> {
    let group = f.vm.redundancy_group.as_ref()?;
    let chassis = f.target.chassis.as_ref()?;
    let sibling = f.placed.iter().find(|(vm, host_chassis)| {
        vm.name != f.vm.name && vm.redundancy_group.as_ref() == Some(group) && host_chassis.as_ref() == Some(chassis)
    })?;
    error(
        "redundancy.chassis",
        format!(
            "{} and {} are in redundancy group {group}, and {} would put both in chassis {chassis}: \
             choose a host in another chassis",
            f.vm.name, sibling.0.name, f.target.name
        ),
        vec![
            fact("vm.redundancy_group", group, Origin::Declared),
            fact(format!("{}.chassis", f.target.name), chassis, Origin::Declared),
            fact(format!("{}.host", sibling.0.name), &sibling.0.host, Origin::Measured),
        ],
    )
}

fn concurrency(f: &Facts) -> Option<Finding> {
    let busy = |h: &HostFacts| h.migration_cost_in_use >= h.migration_cost_limit;
    let full: Vec<&HostFacts> = [&f.source, &f.target].into_iter().filter(|h| busy(h)).collect();
    let mut what: Vec<String> = full
        .iter()
        .map(|h| {
            format!(
                "{} uses {} of its {} migration cost ({} queued)",
                h.name, h.migration_cost_in_use, h.migration_cost_limit, h.migrations_queued
            )
        })
        .collect();
    let mut facts: Vec<Fact> = full
        .iter()
        .map(|h| {
            fact(
                format!("{}.migration_cost_in_use", h.name),
                h.migration_cost_in_use,
                Origin::Measured,
            )
        })
        .collect();
    // The shared roots the VM's images are on: their slots are cluster-wide.
    for root in f.source.storage.iter().filter(|r| r.shared && r.max_migrations > 0) {
        let holds =
            f.vm.disks
                .iter()
                .map(|d| d.path.as_str())
                .chain(f.vm.cdrom.iter().filter(|c| c.connected).map(|c| c.path.as_str()))
                .any(|p| std::path::Path::new(p).starts_with(&root.path));
        if holds && root.migrations_in_use >= root.max_migrations {
            what.push(format!(
                "storage root {} has {} of its {} migrations running",
                root.name, root.migrations_in_use, root.max_migrations
            ));
            facts.push(fact(
                format!("storage.{}.migrations_in_use", root.name),
                root.migrations_in_use,
                Origin::Measured,
            ));
        }
    }
    if what.is_empty() {
        return None;
    }
    warning(
        "concurrency.budget",
        format!("the move would wait in a queue: {}", what.join("; ")),
        facts,
    )
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn host(name: &str) -> HostFacts {
        HostFacts {
            name: name.into(),
            agent_version: "0.1.0".into(),
            api_version: 1,
            migration_protocol: 3,
            cpu_vendor: "GenuineIntel".into(),
            cpu_model: "model".into(),
            cpu_features: vec!["sse2".into(), "avx2".into()],
            pmu_version: 2,
            pmu_counters: 4,
            pmu_counter_bits: 48,
            memory_total_bytes: 8 << 30,
            memory_available_bytes: 4 << 30,
            chassis: Some(format!("chassis-{name}")),
            management_families: vec!["ipv4".into()],
            migration_address: "10.0.0.1".into(),
            link_speed_mbps: 10_000,
            networks: vec![],
            bridged_networks: vec!["lab".into()],
            storage: vec![],
            throughput_to: Default::default(),
            cordon: None,
            vms: 0,
            api_refused: Default::default(),
            migration_cost_in_use: 0,
            migration_cost_limit: 8,
            migration_cost: 1,
            migrations_queued: 0,
        }
    }

    fn vm(name: &str, host: &str) -> VmInfo {
        VmInfo {
            name: name.into(),
            host: host.into(),
            state: VmState::Running,
            vcpus: 1,
            memory_bytes: 1 << 30,
            pid: Some(1),
            migrating_to: None,
            migration: None,
            note: None,
            redundancy_group: None,
            disks: Vec::new(),
            cdrom: None,
            pmu: false,
            vgpu: None,
            cpu_hide: Vec::new(),
            maintenance: Default::default(),
            nics: Vec::new(),
        }
    }

    pub(crate) fn facts() -> Facts {
        Facts {
            vm: vm("vm1", "hostA"),
            source: host("hostA"),
            target: host("hostB"),
            placed: vec![(vm("vm1", "hostA"), Some("chassis-hostA".into()))],
            drives: super::super::devices::Drives::default(),
            sample: None,
            options: vmig_backend::migration::MigrationOptions::default(),
        }
    }

    fn rules_of(f: &Facts) -> Vec<(&'static str, Severity)> {
        check(f).into_iter().map(|x| (x.rule, x.severity)).collect()
    }

    #[test]
    fn a_compatible_move_has_no_findings() {
        assert!(check(&facts()).is_empty());
    }

    #[test]
    fn each_rule_trips_on_its_fact() {
        let mut f = facts();
        f.vm.state = VmState::Migrating;
        assert_eq!(rules_of(&f), [("vm.stable", Severity::Error)]);

        let mut f = facts();
        f.target.migration_protocol = 2;
        assert_eq!(rules_of(&f), [("host.versions", Severity::Error)]);

        let mut f = facts();
        f.target.cordon = Some(vmig_backend::api::Cordon {
            reason: Some("firmware".into()),
            by: Some("alice".into()),
            run: None,
            at_ms: 1,
        });
        let found = check(&f);
        assert_eq!((found[0].rule, found[0].severity), ("host.cordoned", Severity::Error));
        assert!(found[0].message.contains("firmware") && found[0].message.contains("uncordon"));

        let mut f = facts();
        f.target.management_families = vec!["ipv6".into()];
        let found = check(&f);
        assert_eq!(found[0].rule, "network.family");
        assert!(found[0].message.contains("ipv4") && found[0].message.contains("ipv6"));

        let mut f = facts();
        f.vm.nics = vec![vmig_backend::api::NicSpec {
            network: "lab".into(),
            mac: None,
        }];
        assert_eq!(rules_of(&f), [], "the target bridges lab");
        f.vm.nics[0].network = "prod".into();
        let found = check(&f);
        assert_eq!((found[0].rule, found.len()), ("network.reachable", 1));
        assert!(found[0].message.contains("prod"), "{}", found[0].message);

        let mut f = facts();
        f.target.memory_available_bytes = 512 << 20;
        assert_eq!(rules_of(&f), [("capacity.memory", Severity::Error)]);

        let mut f = facts();
        f.placed.push((vm("vm1", "hostB"), None));
        assert_eq!(rules_of(&f), [("capacity.name", Severity::Error)]);

        let mut f = facts();
        f.target.cpu_features = vec!["sse2".into()];
        let found = check(&f);
        assert_eq!((found[0].rule, found.len()), ("cpu.features", 1));
        assert!(found[0].message.contains("avx2"), "{}", found[0].message);
        f.vm.cpu_hide = vec!["avx2".into()];
        assert!(check(&f).is_empty(), "a baseline VM does not see avx2");
        f.vm.cpu_hide.clear();
        f.target.cpu_vendor = "AuthenticAMD".into();
        assert!(check(&f)[0].message.contains("vendors"));

        let mut f = facts();
        f.target.pmu_version = 0;
        assert!(check(&f).is_empty(), "a VM without counters does not care");
        f.vm.pmu = true;
        assert_eq!(rules_of(&f), [("cpu.pmu", Severity::Error)]);
        f.target.pmu_version = 2;
        assert!(check(&f).is_empty(), "an equal PMU serves");
        f.target.pmu_counters = 2;
        assert_eq!(rules_of(&f), [("cpu.pmu", Severity::Error)], "fewer counters");
        f.target.pmu_counters = 8;
        f.target.pmu_counter_bits = 40;
        assert_eq!(rules_of(&f), [("cpu.pmu", Severity::Error)], "narrower counters");

        let mut f = facts();
        f.vm.redundancy_group = Some("db".into());
        let mut sibling = vm("vm2", "hostC");
        sibling.redundancy_group = Some("db".into());
        f.placed.push((sibling, Some("chassis-hostB".into())));
        let found = check(&f);
        assert_eq!(
            (found[0].rule, found[0].severity),
            ("redundancy.chassis", Severity::Error)
        );
        assert!(found[0].message.contains("vm2"));
        f.target.chassis = Some("chassis-other".into());
        assert!(check(&f).is_empty(), "another chassis is fine");

        let mut f = facts();
        f.target.migration_cost_in_use = 8;
        f.target.migrations_queued = 2;
        let found = check(&f);
        assert_eq!(
            (found[0].rule, found[0].severity),
            ("concurrency.budget", Severity::Warning)
        );
        assert!(found[0].message.contains("2 queued"));

        // A shared storage root whose migration slots are all held.
        let mut f = facts();
        f.vm.disks = vec![vmig_backend::api::DiskSpec {
            path: "/srv/shared/vm1.img".into(),
            size: None,
        }];
        f.source.storage = vec![vmig_backend::api::StorageFacts {
            name: "shared".into(),
            path: "/srv/shared".into(),
            shared: true,
            max_migrations: 2,
            migrations_in_use: 2,
        }];
        // Both hosts reach the disk as one file.
        let probe = vmig_backend::api::DriveProbe {
            path: "/srv/shared/vm1.img".into(),
            root: Some("shared".into()),
            shared: true,
            exists: true,
            size: 1 << 30,
            identity: Some("id:ab".into()),
            locked: true,
            error: None,
        };
        f.drives = super::super::devices::Drives {
            source: vec![probe.clone()],
            target: Ok(vec![probe]),
        };
        let found = check(&f);
        assert_eq!(
            (found[0].rule, found[0].severity),
            ("concurrency.budget", Severity::Warning)
        );
        assert!(found[0].message.contains("storage root shared"), "{}", found[0].message);
        f.source.storage[0].migrations_in_use = 1;
        assert!(check(&f).is_empty());
    }

    #[test]
    fn rule_ids_are_unique_and_each_finding_names_its_facts() {
        let mut ids: Vec<&str> = RULES.iter().map(|r| r.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), RULES.len());
        let mut f = facts();
        f.target.memory_available_bytes = 0;
        assert!(check(&f).iter().all(|x| !x.facts.is_empty()));
    }
}
