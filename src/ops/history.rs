//! Past migrations, from the agents' journals: each agent is the truth of
//! its own side (the source's start, outcome and figures; the target's
//! arrival), and a migration's record is both sides merged by its id. No
//! central database: the history is asked of every agent each time.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use vmig_backend::api::{JournalEntry, JournalEvent, Request};
use vmig_backend::client::ClientError;

use super::cluster::Cluster;
use super::code::Code;
use crate::inventory::HostEntry;

/// Which migrations to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pub vm: Option<String>,
    /// Migrations from or to this host.
    pub host: Option<String>,
    pub run: Option<String>,
    /// Started at or after this (milliseconds since the epoch).
    pub since_ms: Option<u64>,
    /// Runs nested in `run`, kept with it (filled by [`history`]).
    pub nested: Vec<String>,
}

/// One migration, as both its agents recorded it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    pub id: String,
    pub vm: String,
    pub from: Option<String>,
    pub to: Option<String>,
    /// The run (a `vmig` invocation or runbook) that asked for it.
    pub run: Option<String>,
    /// Who asked: the name in the operator's certificate.
    pub by: Option<String>,
    pub started_ms: Option<u64>,
    pub ended_ms: Option<u64>,
    /// `moved`, `running` (no end recorded), `refused` (by the prechecks), or the failure's code.
    pub outcome: String,
    pub code: Option<Code>,
    pub message: Option<String>,
    pub downtime_ms: Option<f64>,
    pub total_ms: Option<f64>,
    pub bytes_sent: Option<u64>,
    /// What the target recorded: `arrived`, `lost` (arrived, then its VMM
    /// died) or `discarded`; None when the target's side is not known.
    pub arrival: Option<String>,
    /// For a move the prechecks refused: the rules that blocked it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<String>,
}

/// The records `query` asks for, oldest first, and the hosts that could not
/// be asked (their side of the history is missing).
pub fn history(cluster: &Cluster, query: &Query) -> (Vec<Record>, Vec<(HostEntry, ClientError)>) {
    let request = Request::History {
        since_ms: query.since_ms,
        vm: query.vm.clone(),
        run: None,
    };
    let mut failed = Vec::new();
    let mut sides = Vec::new();
    // A run's filter takes in the runs nested in it (a runbook's evacuations).
    let mut query = query.clone();
    if let Some(run) = &query.run {
        let (journal, _) = super::runs::journals(cluster);
        query.nested = super::runs::family(&journal, run);
    }
    let query = &query;
    for (host, answer) in cluster.ask_all::<Vec<JournalEntry>>(&request) {
        match answer {
            Ok(entries) => sides.push((host.name, entries)),
            Err(e) => failed.push((host, e)),
        }
    }
    (merge(sides, query), failed)
}

/// Merges each agent's entries (`(host, entries)`) into records.
pub fn merge(sides: Vec<(String, Vec<JournalEntry>)>, query: &Query) -> Vec<Record> {
    let mut records: BTreeMap<String, Record> = BTreeMap::new();
    for (host, entries) in sides {
        for entry in entries {
            let record = records.entry(entry.id.clone()).or_insert_with(|| Record {
                id: entry.id.clone(),
                vm: entry.vm.clone(),
                from: None,
                to: None,
                run: None,
                by: None,
                started_ms: None,
                ended_ms: None,
                outcome: "running".into(),
                code: None,
                message: None,
                downtime_ms: None,
                total_ms: None,
                bytes_sent: None,
                arrival: None,
                rules: Vec::new(),
            });
            apply(record, &host, entry);
        }
    }
    let mut list: Vec<Record> = records
        .into_values()
        .filter(|r| {
            query
                .run
                .as_ref()
                .is_none_or(|run| r.run.as_ref().is_some_and(|r| r == run || query.nested.contains(r)))
        })
        .filter(|r| query.since_ms.is_none_or(|s| r.started_ms.is_some_and(|t| t >= s)))
        .filter(|r| {
            query
                .host
                .as_ref()
                .is_none_or(|h| r.from.as_ref() == Some(h) || r.to.as_ref() == Some(h))
        })
        .collect();
    list.sort_by_key(|r| (r.started_ms, r.id.clone()));
    list
}

fn apply(record: &mut Record, host: &str, entry: JournalEntry) {
    let earliest = |at: &mut Option<u64>, ms: u64| *at = Some(at.map_or(ms, |t| t.min(ms)));
    match entry.event {
        JournalEvent::Started => {
            record.from = Some(host.to_string());
            record.to.get_or_insert(entry.peer);
            record.run = entry.run.or(record.run.take());
            record.by = entry.by.or(record.by.take());
            // The source's start is the migration's start.
            record.started_ms = Some(entry.at_ms);
        }
        JournalEvent::Ended { outcome } => {
            record.ended_ms = Some(entry.at_ms);
            match &outcome.result {
                Some(result) => {
                    record.outcome = "moved".into();
                    if let Some(report) = &result.report {
                        record.downtime_ms = Some(report.downtime_ms);
                        record.total_ms = Some(report.total_ms);
                        record.bytes_sent = Some(report.bytes_sent);
                    }
                }
                None => {
                    let code = outcome.code.map_or(Code::Failed, Code::of_api);
                    record.outcome = code.name().to_string();
                    record.code = Some(code);
                    record.message = outcome.message.clone();
                }
            }
        }
        JournalEvent::Prepared => {
            record.to = Some(host.to_string());
            record.from.get_or_insert(entry.peer);
            if record.from.as_deref() != Some(host) {
                earliest(&mut record.started_ms, entry.at_ms);
            }
        }
        JournalEvent::Arrived => record.arrival = Some("arrived".into()),
        JournalEvent::ArrivedLost => record.arrival = Some("lost".into()),
        JournalEvent::Discarded => record.arrival = Some("discarded".into()),
        JournalEvent::Refused { rules, code, message } => {
            record.from = Some(host.to_string());
            record.to = Some(entry.peer);
            record.run = entry.run.or(record.run.take());
            record.by = entry.by.or(record.by.take());
            record.started_ms = Some(entry.at_ms);
            record.ended_ms = Some(entry.at_ms);
            let code = Code::of_api(code);
            record.outcome = "refused".into();
            record.code = Some(code);
            record.message = Some(message);
            record.rules = rules;
        }
    }
}

/// When `since` means: a duration ago (`90s`, `30m`, `2h`, `7d`) or a
/// moment (seconds since the epoch); milliseconds since the epoch.
pub fn since(text: &str) -> Result<u64, String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is neither a duration ago (30m, 2h, 7d) nor seconds since the epoch"))?;
    let ago = match unit {
        "" => return Ok(value.saturating_mul(1000)),
        "s" => Duration::from_secs(value),
        "m" => Duration::from_secs(value.saturating_mul(60)),
        "h" => Duration::from_secs(value.saturating_mul(3600)),
        "d" => Duration::from_secs(value.saturating_mul(86_400)),
        other => return Err(format!("{other:?} is not a unit: s, m, h or d")),
    };
    Ok(now.saturating_sub(ago).as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use vmig_backend::api::{self, MigrateResult, MigrationOutcome};

    use super::*;

    fn entry(id: &str, at_ms: u64, peer: &str, event: JournalEvent) -> JournalEntry {
        JournalEntry {
            at_ms,
            id: id.into(),
            vm: "vm1".into(),
            peer: peer.into(),
            event,
            run: None,
            by: None,
        }
    }

    #[test]
    fn both_sides_make_one_record() {
        let mut started = entry("m-1", 10, "hostB", JournalEvent::Started);
        started.run = Some("r-1".into());
        started.by = Some("alice".into());
        let moved = MigrationOutcome::moved(MigrateResult {
            id: "m-1".into(),
            vm: "vm1".into(),
            source: "hostA".into(),
            target: "hostB".into(),
            queued_ms: 0,
            report: None,
            probe: None,
            note: None,
        });
        let source = vec![
            started,
            entry(
                "m-1",
                30,
                "hostB",
                JournalEvent::Ended {
                    outcome: Box::new(moved),
                },
            ),
            entry("m-2", 40, "hostC", JournalEvent::Started),
            entry(
                "m-2",
                50,
                "hostC",
                JournalEvent::Ended {
                    outcome: Box::new(MigrationOutcome::failed(409, api::Code::Cancelled, "cancelled")),
                },
            ),
        ];
        let target = vec![
            entry("m-1", 12, "hostA", JournalEvent::Prepared),
            entry("m-1", 29, "hostA", JournalEvent::Arrived),
        ];
        let records = merge(
            vec![("hostA".into(), source), ("hostB".into(), target)],
            &Query::default(),
        );
        assert_eq!(records.len(), 2);
        let first = &records[0];
        assert_eq!(
            (first.from.as_deref(), first.to.as_deref(), first.outcome.as_str()),
            (Some("hostA"), Some("hostB"), "moved")
        );
        assert_eq!((first.started_ms, first.ended_ms), (Some(10), Some(30)));
        assert_eq!(
            (first.run.as_deref(), first.by.as_deref()),
            (Some("r-1"), Some("alice"))
        );
        assert_eq!(first.arrival.as_deref(), Some("arrived"));
        assert_eq!(records[1].code, Some(Code::Cancelled));
        assert_eq!(records[1].arrival, None);
        let by_run = merge(
            vec![("hostA".into(), vec![entry("m-3", 1, "hostB", JournalEvent::Started)])],
            &Query {
                run: Some("r-1".into()),
                ..Query::default()
            },
        );
        assert!(by_run.is_empty());
    }

    #[test]
    fn since_reads_durations_and_moments() {
        assert_eq!(since("1700000000").unwrap(), 1_700_000_000_000);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let hour = since("1h").unwrap();
        assert!(now - hour >= 3_600_000 && now - hour < 3_660_000);
        assert!(since("2w").is_err() && since("soon").is_err());
    }
}
