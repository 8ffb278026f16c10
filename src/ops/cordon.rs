//! Cordoning a host for maintenance: it takes no new VMs (its agent refuses
//! arrivals and creations, and the prechecks and placement see the cordon in
//! its facts) until it is uncordoned. The agent keeps it across restarts.
//! Each is a change of the run: a dry run plans it, consent is asked.

use thiserror::Error;
use vmig_backend::api::{Cordon, Request};

use super::cluster::{Cluster, ClusterError};
use super::code::Code;
use super::run::{Change, Go, Run, RunError};

#[derive(Debug, Error)]
pub enum CordonError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Run(#[from] RunError),
}

impl CordonError {
    pub fn code(&self) -> Code {
        match self {
            CordonError::Cluster(e) => e.code(),
            CordonError::Run(e) => e.code(),
        }
    }
}

/// Cordons `host`, with why; returns the cordon as its agent keeps it
/// (None under a dry run).
pub fn cordon(run: &Run, cluster: &Cluster, host: &str, reason: Option<&str>) -> Result<Option<Cordon>, CordonError> {
    let entry = cluster.host(host)?.clone();
    if run.change(Change::Cordon {
        host: entry.name.clone(),
        on: true,
    })? == Go::DryRun
    {
        return Ok(None);
    }
    let cordon = cluster
        .client(&entry)
        .call(Request::Cordon {
            reason: reason.map(str::to_string),
            run: Some(run.id.clone()),
        })
        .map_err(ClusterError::from)?;
    Ok(Some(cordon))
}

/// Lifts `host`'s cordon; says whether it had one (false under a dry run).
pub fn uncordon(run: &Run, cluster: &Cluster, host: &str) -> Result<bool, CordonError> {
    let entry = cluster.host(host)?.clone();
    if run.change(Change::Cordon {
        host: entry.name.clone(),
        on: false,
    })? == Go::DryRun
    {
        return Ok(false);
    }
    Ok(cluster
        .client(&entry)
        .call(Request::Uncordon)
        .map_err(ClusterError::from)?)
}
