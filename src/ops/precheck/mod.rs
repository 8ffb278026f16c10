//! Stage one of a move: whether `vm` can move to a host, and if not, why,
//! in the words of the fix. The facts are asked of the agents (one request
//! per host); the rules ([`rules`]) are pure functions over them.

pub mod devices;
pub mod forecast;
pub mod rules;

use std::collections::BTreeMap;

use serde::Serialize;
use thiserror::Error;
use vmig_backend::api::{DriveProbe, HostFacts, Request};
use vmig_backend::client::ClientError;

pub use self::rules::{Finding, Severity};
use super::cluster::{Cluster, ClusterError};
use super::code::Code;

#[derive(Debug, Error)]
pub enum PrecheckError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("{vm} runs on {host} already")]
    SameHost { vm: String, host: String },
    #[error("there is no precheck rule {rule:?}; the rules are: {}", rules::RULES.iter().map(|r| r.id).collect::<Vec<_>>().join(", "))]
    UnknownRule { rule: String },
}

/// How a move is checked: the rules left out, and the options the move
/// would have (the convergence forecast uses them).
#[derive(Debug, Clone, Default)]
pub struct Checks {
    pub skip: Skip,
    pub options: vmig_backend::migration::MigrationOptions,
}

/// Rules an operator chose not to check: the move then takes their risk,
/// and the verdict says which were left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Skip(Vec<&'static str>);

impl Skip {
    /// Rule ids as the operator gave them; an unknown one is refused.
    pub fn parse(ids: &[String]) -> Result<Self, PrecheckError> {
        let mut skip = Vec::new();
        for id in ids {
            let rule = rules::rule(id).ok_or_else(|| PrecheckError::UnknownRule { rule: id.clone() })?;
            if !skip.contains(&rule.id) {
                skip.push(rule.id);
            }
        }
        Ok(Skip(skip))
    }

    /// These rules and `more`.
    pub fn with(&self, more: &[&'static str]) -> Self {
        let mut skip = self.clone();
        for id in more {
            if !skip.0.contains(id) {
                skip.0.push(id);
            }
        }
        skip
    }

    pub fn ids(&self) -> &[&'static str] {
        &self.0
    }
}

impl PrecheckError {
    pub fn code(&self) -> Code {
        match self {
            PrecheckError::Cluster(e) => e.code(),
            PrecheckError::SameHost { .. } => Code::Conflict,
            PrecheckError::UnknownRule { .. } => Code::Invalid,
        }
    }
}

/// The findings for one move.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub vm: String,
    pub source: String,
    pub target: String,
    /// No errors: the move may start (with `force` when there are warnings).
    pub ok: bool,
    pub errors: Vec<Finding>,
    pub warnings: Vec<Finding>,
    /// Rules left out at the operator's word.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<&'static str>,
    /// What pre-copy is expected to do (for a running VM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forecast: Option<forecast::Forecast>,
}

impl Verdict {
    fn of(facts: &rules::Facts, skip: &Skip) -> Self {
        let (errors, warnings): (Vec<Finding>, Vec<Finding>) = rules::check_skipping(facts, skip.ids())
            .into_iter()
            .partition(|f| f.severity == Severity::Error);
        Verdict {
            vm: facts.vm.name.clone(),
            source: facts.source.name.clone(),
            target: facts.target.name.clone(),
            ok: errors.is_empty(),
            errors,
            warnings,
            skipped: skip.ids().to_vec(),
            forecast: forecast::forecast(facts),
        }
    }
}

/// Whether `vm` can move to `host`.
pub fn precheck(cluster: &Cluster, vm: &str, host: &str, checks: &Checks) -> Result<Verdict, PrecheckError> {
    cluster.host(host)?;
    let mut all = verdicts(cluster, vm, Some(host), checks)?;
    // The host is in the inventory: it has its verdict.
    all.pop().map_or_else(|| Err(unanswered(host)), |(_, verdict)| verdict)
}

/// One host's verdict (or why there is none).
pub type HostVerdict = (String, Result<Verdict, PrecheckError>);

/// Whether `vm` can move to each other host, in inventory order.
pub fn precheck_all(cluster: &Cluster, vm: &str, checks: &Checks) -> Result<Vec<HostVerdict>, PrecheckError> {
    verdicts(cluster, vm, None, checks)
}

/// An inventory host with no answer of its own (every host asked answers,
/// so only a host missing from the inventory's list could have none).
fn unanswered(host: &str) -> PrecheckError {
    ClusterError::from(ClientError::Protocol {
        host: host.to_string(),
        detail: "no answer".into(),
    })
    .into()
}

/// Every host's look at `vm`'s images (none asked for a VM without drives).
fn drive_probes(
    cluster: &Cluster,
    vm: &vmig_backend::api::VmInfo,
) -> BTreeMap<String, Result<Vec<DriveProbe>, String>> {
    let paths: Vec<String> = vm
        .disks
        .iter()
        .map(|d| d.path.clone())
        .chain(vm.cdrom.iter().map(|c| c.path.clone()))
        .collect();
    if paths.is_empty() {
        return BTreeMap::new();
    }
    cluster
        .ask_all::<Vec<DriveProbe>>(&Request::ProbeDrives { paths })
        .into_iter()
        .map(|(host, answer)| (host.name, answer.map_err(|e| e.to_string())))
        .collect()
}

/// What the source's agent found at the VM's images (taken out of
/// `probes`); its failure to say is the precheck's.
fn source_drives(
    probes: &mut BTreeMap<String, Result<Vec<DriveProbe>, String>>,
    source: &str,
) -> Result<Vec<DriveProbe>, PrecheckError> {
    probes
        .remove(source)
        .unwrap_or_else(|| Ok(Vec::new()))
        .map_err(|detail| {
            ClusterError::from(ClientError::Protocol {
                host: source.to_string(),
                detail,
            })
            .into()
        })
}

/// How fast the VM dirties its memory, sampled once for every target (none
/// for a VM that is not running: that is vm.stable's; none when the
/// convergence rule is skipped).
fn sample(
    cluster: &Cluster,
    located: &super::cluster::Located,
    checks: &Checks,
) -> Option<Result<vmig_backend::runtime::control::DirtySample, String>> {
    (located.info.state == vmig_backend::api::VmState::Running && !checks.skip.ids().contains(&"migration.convergence"))
        .then(|| {
            cluster
                .client(&located.host)
                .call::<vmig_backend::runtime::control::DirtySample>(Request::SampleDirtyRate {
                    name: located.info.name.clone(),
                    window_ms: forecast::WINDOW_MS,
                })
                .map_err(|e| e.to_string())
        })
}

/// The facts once (every host's, every VM), then a verdict per target.
fn verdicts(
    cluster: &Cluster,
    vm: &str,
    only: Option<&str>,
    checks: &Checks,
) -> Result<Vec<HostVerdict>, PrecheckError> {
    // Every copy for the rules (a name held on two hosts clashes), each VM
    // once to find this one.
    let (every, failed) = cluster.every_copy();
    let listing = super::cluster::once_each(every.clone());
    let located = cluster.find(&listing, failed, vm)?;
    let mut hosts: BTreeMap<String, Result<HostFacts, ClientError>> = cluster
        .hosts()
        .into_iter()
        .map(|answer| (answer.host.name, answer.facts))
        .collect();
    let chassis = |name: &str| {
        hosts
            .get(name)
            .and_then(|facts| facts.as_ref().ok())
            .and_then(|facts| facts.chassis.clone())
    };
    let placed: Vec<_> = every
        .into_iter()
        .map(|l| {
            let chassis = chassis(&l.host.name);
            (l.info, chassis)
        })
        .collect();
    // Each host's answer is used once: taken out of the map.
    let source = match hosts.remove(&located.host.name) {
        Some(Ok(facts)) => facts,
        Some(Err(e)) => return Err(ClusterError::from(e).into()),
        None => return Err(unanswered(&located.host.name)),
    };
    // What each agent finds at the VM's images, asked of every host at once
    // (only for a VM that has drives).
    let mut probes = drive_probes(cluster, &located.info);
    let drives_of = |probes: &mut BTreeMap<String, Result<Vec<DriveProbe>, String>>, host: &str| {
        probes.remove(host).unwrap_or_else(|| Ok(Vec::new()))
    };
    let source_drives = source_drives(&mut probes, &source.name)?;
    let sample = sample(cluster, &located, checks);
    let mut out = Vec::new();
    for entry in &cluster.inventory.hosts {
        if only.is_some_and(|h| h != entry.name) || (only.is_none() && entry.name == source.name) {
            continue;
        }
        let verdict = if entry.name == source.name {
            Err(PrecheckError::SameHost {
                vm: vm.to_string(),
                host: entry.name.clone(),
            })
        } else {
            match hosts.remove(&entry.name) {
                Some(Ok(target)) => Ok(Verdict::of(
                    &rules::Facts {
                        vm: located.info.clone(),
                        source: source.clone(),
                        placed: placed.clone(),
                        drives: devices::Drives {
                            source: source_drives.clone(),
                            target: drives_of(&mut probes, &target.name),
                        },
                        target,
                        sample: sample.clone(),
                        options: checks.options.clone(),
                    },
                    &checks.skip,
                )),
                Some(Err(e)) => Err(ClusterError::from(e).into()),
                None => Err(unanswered(&entry.name)),
            }
        };
        out.push((entry.name.clone(), verdict));
    }
    Ok(out)
}

/// One VM's verdict for each other host, by host.
pub type Verdicts = BTreeMap<String, Verdict>;

/// What one VM's moves are checked against, gathered once for many VMs.
struct Survey {
    listing: Vec<super::cluster::Located>,
    hosts: BTreeMap<String, HostFacts>,
    placed: Vec<(vmig_backend::api::VmInfo, Option<String>)>,
}

/// Each of `vms`' verdict for every other host that answered, as
/// [`precheck_all`] gives them, with the facts of every host and VM asked
/// once for all of them (planning an evacuation checks every VM against
/// every host). A host that did not answer has no verdict.
pub fn precheck_each(
    cluster: &Cluster,
    vms: &[String],
    checks: &Checks,
) -> Vec<(String, Result<Verdicts, PrecheckError>)> {
    let (every, _) = cluster.every_copy();
    let listing = super::cluster::once_each(every.clone());
    let hosts: BTreeMap<String, HostFacts> = cluster
        .hosts()
        .into_iter()
        .filter_map(|answer| Some((answer.host.name, answer.facts.ok()?)))
        .collect();
    let placed = every
        .iter()
        .map(|l| {
            let chassis = hosts.get(&l.host.name).and_then(|f| f.chassis.clone());
            (l.info.clone(), chassis)
        })
        .collect();
    let survey = Survey { listing, hosts, placed };
    // A few at a time: each asks its source for a dirty sample.
    let mut out = Vec::with_capacity(vms.len());
    for chunk in vms.chunks(AT_ONCE) {
        std::thread::scope(|scope| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|vm| (vm.clone(), scope.spawn(|| judge_all(cluster, &survey, vm, checks))))
                .collect();
            for (vm, handle) in handles {
                let verdicts = handle.join().unwrap_or_else(|_| Err(unanswered(&vm)));
                out.push((vm, verdicts));
            }
        });
    }
    out
}

/// How many VMs [`precheck_each`] checks at once.
const AT_ONCE: usize = 16;

/// `vm`'s verdict for every host of `survey` but its own.
fn judge_all(cluster: &Cluster, survey: &Survey, vm: &str, checks: &Checks) -> Result<Verdicts, PrecheckError> {
    let located = cluster.find(&survey.listing, Vec::new(), vm)?;
    let source = survey
        .hosts
        .get(&located.host.name)
        .cloned()
        .ok_or_else(|| unanswered(&located.host.name))?;
    let mut probes = drive_probes(cluster, &located.info);
    let source_drives = source_drives(&mut probes, &source.name)?;
    let sample = sample(cluster, &located, checks);
    let mut out = BTreeMap::new();
    for (name, target) in survey.hosts.iter().filter(|(name, _)| **name != source.name) {
        let facts = rules::Facts {
            vm: located.info.clone(),
            source: source.clone(),
            placed: survey.placed.clone(),
            drives: devices::Drives {
                source: source_drives.clone(),
                target: probes.remove(name).unwrap_or_else(|| Ok(Vec::new())),
            },
            target: target.clone(),
            sample: sample.clone(),
            options: checks.options.clone(),
        };
        out.insert(name.clone(), Verdict::of(&facts, &checks.skip));
    }
    Ok(out)
}
