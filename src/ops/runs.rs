//! Operators' runs as the agents' journals of runs keep them: which runs an
//! evacuation nested in a runbook's belongs to, so that the runbook's id
//! stands for all of its work (`vmig history --run`, `vmig rollback`).

use vmig_backend::api::{Request, RunEntry, RunEvent};

use super::cluster::Cluster;
use super::evacuate::Evacuation;

/// Every host's journal of runs, each entry with the host that keeps it;
/// and the hosts that did not answer.
pub fn journals(cluster: &Cluster) -> (Vec<(String, RunEntry)>, Vec<String>) {
    let mut entries = Vec::new();
    let mut missing = Vec::new();
    for (host, answer) in cluster.ask_all::<Vec<RunEntry>>(&Request::Runs { run: None }) {
        match answer {
            Ok(list) => entries.extend(list.into_iter().map(|e| (host.name.clone(), e))),
            Err(_) => missing.push(host.name),
        }
    }
    (entries, missing)
}

/// The evacuation an entry began, if it began one.
pub fn evacuation(entry: &RunEntry) -> Option<Evacuation> {
    match &entry.event {
        RunEvent::Evacuating { plan } => serde_json::from_value(plan.clone()).ok(),
        _ => None,
    }
}

/// `run` and the runs nested in it (a runbook's evacuations), from
/// `journal`.
pub fn family(journal: &[(String, RunEntry)], run: &str) -> Vec<String> {
    let mut runs = vec![run.to_string()];
    for (_, entry) in journal {
        if let Some(evacuation) = evacuation(entry)
            && evacuation.parent.as_deref() == Some(run)
            && !runs.contains(&evacuation.run)
        {
            runs.push(evacuation.run);
        }
    }
    runs
}
