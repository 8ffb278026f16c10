//! Stage one of a move: whether `vm` can move to a host, and if not, why,
//! in the words of the fix. The facts are asked of the agents (one request
//! per host); the rules ([`rules`]) are pure functions over them.

pub mod rules;

use std::collections::BTreeMap;

use serde::Serialize;
use thiserror::Error;
use vmig_backend::api::HostFacts;
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
}

impl PrecheckError {
    pub fn code(&self) -> Code {
        match self {
            PrecheckError::Cluster(e) => e.code(),
            PrecheckError::SameHost { .. } => Code::Conflict,
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
}

impl Verdict {
    fn of(facts: &rules::Facts) -> Self {
        let (errors, warnings): (Vec<Finding>, Vec<Finding>) = rules::check(facts)
            .into_iter()
            .partition(|f| f.severity == Severity::Error);
        Verdict {
            vm: facts.vm.name.clone(),
            source: facts.source.name.clone(),
            target: facts.target.name.clone(),
            ok: errors.is_empty(),
            errors,
            warnings,
        }
    }
}

/// Whether `vm` can move to `host`.
pub fn precheck(cluster: &Cluster, vm: &str, host: &str) -> Result<Verdict, PrecheckError> {
    cluster.host(host)?;
    let mut all = verdicts(cluster, vm, Some(host))?;
    // The host is in the inventory: it has its verdict.
    all.pop().map_or_else(|| Err(unanswered(host)), |(_, verdict)| verdict)
}

/// One host's verdict (or why there is none).
pub type HostVerdict = (String, Result<Verdict, PrecheckError>);

/// Whether `vm` can move to each other host, in inventory order.
pub fn precheck_all(cluster: &Cluster, vm: &str) -> Result<Vec<HostVerdict>, PrecheckError> {
    verdicts(cluster, vm, None)
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

/// The facts once (every host's, every VM), then a verdict per target.
fn verdicts(cluster: &Cluster, vm: &str, only: Option<&str>) -> Result<Vec<HostVerdict>, PrecheckError> {
    let (listing, failed) = cluster.listing();
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
    let placed: Vec<_> = listing
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
                Some(Ok(target)) => Ok(Verdict::of(&rules::Facts {
                    vm: located.info.clone(),
                    source: source.clone(),
                    target,
                    placed: placed.clone(),
                })),
                Some(Err(e)) => Err(ClusterError::from(e).into()),
                None => Err(unanswered(&entry.name)),
            }
        };
        out.push((entry.name.clone(), verdict));
    }
    Ok(out)
}
