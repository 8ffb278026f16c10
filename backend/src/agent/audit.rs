//! The agent's audit trail, `<state_dir>/audit.jsonl`: every request that
//! changes something and every request refused, with the name in the
//! client's certificate, its address, the VM, the other host, the run and
//! migration ids, and what came of it ([`AuditEntry`]). A migration has two
//! entries: when its source took it (202) and when it ended, whoever was
//! still watching. Entries are appended and fsync'd before the answer goes
//! out, bounded like the journal (one previous file kept), and each is also
//! a line of the agent's log.
//!
//! Not audited: requests that only read, and `console_history`, the
//! console's bytes that follow a VM to its target in parts (the migration
//! they belong to is).

use std::net::SocketAddr;

use super::journal::{Journal, Opened, ROTATE_AT, now_ms};
use crate::api::{AuditEntry, Code, Request};
use crate::pki::{Peer, Role};

/// The audit trail.
pub type Audit = Journal<AuditEntry>;

impl Journal<AuditEntry> {
    /// Opens `audit.jsonl` in `state_dir`.
    pub fn open_audit(state_dir: &std::path::Path) -> std::io::Result<(Self, Opened)> {
        Self::open_named(state_dir, "audit", ROTATE_AT)
    }

    /// Appends `entry`, makes it durable and logs it.
    pub fn record(&self, entry: &AuditEntry) {
        let written = self.write(entry);
        let (vm, migration, run) = (entry.vm.as_deref(), entry.migration.as_deref(), entry.run.as_deref());
        let code = entry.code.map(|c| c.to_string());
        tracing::info!(
            target: "vmig::audit",
            by = %entry.by,
            request = %entry.request,
            vm,
            migration,
            run,
            status = entry.status,
            code,
            error = entry.error.as_deref(),
            "audit"
        );
        if let Err(e) = written {
            tracing::error!(error = %e, "cannot write the audit trail");
        }
    }

    /// The entries at or after `since_ms`, of client `by` when given,
    /// oldest first.
    pub fn trail(&self, since_ms: Option<u64>, by: Option<&str>) -> Vec<AuditEntry> {
        let mut entries = Vec::new();
        self.scan(|line| {
            if let Ok(entry) = serde_json::from_str::<AuditEntry>(line)
                && since_ms.is_none_or(|since| entry.at_ms >= since)
                && by.is_none_or(|by| by == entry.by)
            {
                entries.push(entry);
            }
        });
        entries
    }
}

/// A request the trail may record, with what it names.
#[derive(Debug)]
pub struct Audited {
    /// False for a request that only reads: recorded only when refused.
    changes: bool,
    entry: AuditEntry,
    /// Recorded already (a migration, when its source took it).
    recorded: bool,
}

impl Audited {
    /// `request` of `peer`, from `from`.
    pub fn new(request: &Request, peer: &Peer, from: SocketAddr) -> Self {
        let (changes, subject) = subject(request);
        Self {
            changes,
            entry: AuditEntry {
                at_ms: 0,
                by: peer.name.clone(),
                role: peer.role,
                from: Some(from.to_string()),
                request: op(request),
                vm: subject.vm,
                peer: subject.peer,
                run: subject.run,
                migration: subject.migration,
                status: 0,
                code: None,
                error: None,
            },
            recorded: false,
        }
    }

    /// Records that the source took migration `id` (its end is recorded
    /// when it ends, by [`ended`]).
    pub fn taken(&mut self, audit: &Audit, id: &str) {
        self.entry.migration = Some(id.to_string());
        self.entry.at_ms = now_ms();
        self.entry.status = 202;
        audit.record(&self.entry);
        self.recorded = true;
    }

    /// Records the answer, if the request changes something or was refused.
    pub fn answered(mut self, audit: &Audit, status: u16, code: Option<Code>, error: Option<&str>) {
        if self.recorded || !(self.changes || matches!(status, 400 | 403)) {
            return;
        }
        self.entry.at_ms = now_ms();
        self.entry.status = status;
        self.entry.code = code;
        self.entry.error = error.map(str::to_string);
        audit.record(&self.entry);
    }
}

/// The trail's entry for the end of migration `id` of `vm` to `target`,
/// asked for by `by` (of `run`).
pub fn ended(
    (id, vm, target): (&str, &str, &str),
    (by, run): (Option<&str>, Option<&str>),
    (status, code, error): (u16, Option<Code>, Option<&str>),
) -> AuditEntry {
    AuditEntry {
        at_ms: now_ms(),
        by: by.unwrap_or_default().to_string(),
        role: Role::Operator,
        from: None,
        request: "migrate".into(),
        vm: Some(vm.to_string()),
        peer: Some(target.to_string()),
        run: run.map(str::to_string),
        migration: Some(id.to_string()),
        status,
        code,
        error: error.map(str::to_string),
    }
}

/// A request's `op`, as it is on the wire.
fn op(request: &Request) -> String {
    serde_json::to_value(request)
        .ok()
        .and_then(|value| Some(value.get("op")?.as_str()?.to_string()))
        .unwrap_or_default()
}

/// What a request names.
#[derive(Debug, Default)]
struct Subject {
    vm: Option<String>,
    peer: Option<String>,
    run: Option<String>,
    migration: Option<String>,
}

impl Subject {
    fn vm(vm: &str) -> Self {
        Self {
            vm: Some(vm.to_string()),
            ..Self::default()
        }
    }
}

/// Whether `request` changes something, and what it names.
fn subject(request: &Request) -> (bool, Subject) {
    let vm = Subject::vm;
    match request {
        Request::CreateVm { spec, .. } => (true, vm(&spec.name)),
        Request::StartVm { name }
        | Request::StopVm { name }
        | Request::DestroyVm { name }
        | Request::CancelMigration { name }
        | Request::ConsoleInput { name, .. }
        | Request::Cdrom { name, .. } => (true, vm(name)),
        Request::Migrate {
            name, target, id, run, ..
        } => (
            true,
            Subject {
                peer: Some(target.name.clone()),
                run: run.clone(),
                migration: id.clone(),
                ..vm(name)
            },
        ),
        Request::PrepareIncoming { spec, source, id, .. } => (
            true,
            Subject {
                peer: Some(source.clone()),
                migration: Some(id.clone()),
                ..vm(&spec.name)
            },
        ),
        Request::FinishIncoming { name, id, .. } => (
            true,
            Subject {
                migration: Some(id.clone()),
                ..vm(name)
            },
        ),
        Request::RecordRefusal {
            id, name, target, run, ..
        } => (
            true,
            Subject {
                peer: Some(target.clone()),
                run: run.clone(),
                migration: Some(id.clone()),
                ..vm(name)
            },
        ),
        Request::Cordon { run, .. } => (
            true,
            Subject {
                run: run.clone(),
                ..Subject::default()
            },
        ),
        Request::RecordRun { run, .. } => (
            true,
            Subject {
                run: Some(run.clone()),
                ..Subject::default()
            },
        ),
        Request::Uncordon => (true, Subject::default()),
        Request::ShowVm { name }
        | Request::Console { name, .. }
        | Request::ConsoleStream { name, .. }
        | Request::ConsoleHistory { name, .. }
        | Request::IncomingState { name, .. }
        | Request::SampleDirtyRate { name, .. } => (false, vm(name)),
        Request::WatchMigration { id } | Request::Migration { id } => (
            false,
            Subject {
                migration: Some(id.clone()),
                ..Subject::default()
            },
        ),
        Request::History { vm: name, run, .. } => (
            false,
            Subject {
                vm: name.clone(),
                run: run.clone(),
                ..Subject::default()
            },
        ),
        Request::Runs { run } => (
            false,
            Subject {
                run: run.clone(),
                ..Subject::default()
            },
        ),
        Request::Host | Request::ListVms | Request::ProbeDrives { .. } | Request::Audit { .. } => {
            (false, Subject::default())
        }
    }
}
