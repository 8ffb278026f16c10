//! The agents' audit trails, merged: who asked which host for what, and
//! what came of it. Each agent records every request that changed something
//! and every request it refused, as it answered it; nothing here decides
//! what is recorded, it only asks and filters.

use serde::Serialize;
use vmig_backend::api::{AuditEntry, Request};
use vmig_backend::client::ClientError;

use super::cluster::{Cluster, ClusterError};
use crate::inventory::HostEntry;

/// Which entries to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// Only this host's trail (every host's when None).
    pub host: Option<String>,
    /// Only requests of this certificate name.
    pub by: Option<String>,
    pub vm: Option<String>,
    pub run: Option<String>,
    /// At or after this (milliseconds since the epoch).
    pub since_ms: Option<u64>,
}

/// One entry, with the host whose trail holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    pub host: String,
    #[serde(flatten)]
    pub entry: AuditEntry,
}

/// What [`audit`] found.
#[derive(Debug)]
pub struct Trail {
    /// Oldest first.
    pub records: Vec<Record>,
    /// The hosts that could not be asked: their entries are missing.
    pub missing: Vec<(HostEntry, ClientError)>,
}

/// The entries `query` asks for. A host the inventory does not name is an
/// error.
pub fn audit(cluster: &Cluster, query: &Query) -> Result<Trail, ClusterError> {
    let request = Request::Audit {
        since_ms: query.since_ms,
        by: query.by.clone(),
    };
    let answers = match &query.host {
        Some(name) => {
            let host = cluster.host(name)?.clone();
            let answer = cluster.client(&host).call::<Vec<AuditEntry>>(request);
            vec![(host, answer)]
        }
        None => cluster.ask_all::<Vec<AuditEntry>>(&request),
    };
    let mut records = Vec::new();
    let mut missing = Vec::new();
    for (host, answer) in answers {
        match answer {
            Ok(entries) => records.extend(entries.into_iter().filter(|e| keeps(query, e)).map(|entry| Record {
                host: host.name.clone(),
                entry,
            })),
            Err(e) => missing.push((host, e)),
        }
    }
    records.sort_by(|a, b| (a.entry.at_ms, &a.host).cmp(&(b.entry.at_ms, &b.host)));
    Ok(Trail { records, missing })
}

/// The filters the agents do not apply.
fn keeps(query: &Query, entry: &AuditEntry) -> bool {
    query.vm.as_ref().is_none_or(|vm| entry.vm.as_ref() == Some(vm))
        && query.run.as_ref().is_none_or(|run| entry.run.as_ref() == Some(run))
}

#[cfg(test)]
mod tests {
    use vmig_backend::pki::Role;

    use super::*;

    #[test]
    fn the_vm_and_run_filters_keep_only_entries_that_name_them() {
        let entry = AuditEntry {
            at_ms: 1,
            by: "alice".into(),
            role: Role::Operator,
            from: None,
            request: "migrate".into(),
            vm: Some("vm1".into()),
            peer: Some("hostB".into()),
            run: Some("r-1".into()),
            migration: Some("m-1".into()),
            status: 202,
            code: None,
            error: None,
        };
        let query = |vm: Option<&str>, run: Option<&str>| Query {
            vm: vm.map(str::to_string),
            run: run.map(str::to_string),
            ..Query::default()
        };
        assert!(keeps(&query(None, None), &entry));
        assert!(keeps(&query(Some("vm1"), Some("r-1")), &entry));
        assert!(!keeps(&query(Some("vm2"), None), &entry));
        assert!(!keeps(&query(None, Some("r-2")), &entry));
        let cordon = AuditEntry {
            vm: None,
            run: None,
            ..entry
        };
        assert!(!keeps(&query(Some("vm1"), None), &cordon));
    }
}
