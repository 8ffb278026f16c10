//! What a VMM process leaves for its agent: one small JSON file (given with
//! `vmig vm run --record FILE`), replaced atomically at each step that
//! decides where its VM runs, so that the agent can judge the VMM from
//! structured state alone, also after the VMM died or the agent restarted:
//!
//! - a source writes [`Handoff`] just before it sends `Go`: from then on the
//!   VM may run on the target, and this copy resumes only if the target says
//!   it discarded its own;
//! - a target writes [`Handoff`] when it commits, just before it sends
//!   `Running`: from then on the VM is this VMM's, whatever becomes of it;
//! - both write [`Exit`] as the process ends. A record without an exit, of a
//!   process that is gone, belongs to a VMM that was killed;
//! - once it holds its VM (booted, restored, or received and resumed), the
//!   absolute offset at which its console output begins
//!   ([`VmmRecord::console_start`]): its console file holds the VM's console
//!   bytes from there on.
//!
//! The record is replaced with a rename, so a reader sees the old record or
//! the new one. The handoff and the commit happen while the guest is paused,
//! where a rename (about 0.1 ms here) would add to the downtime: they are
//! each one `write` of one line, appended to a second file (`FILE.handoff`)
//! that the VMM opened as it started (about a microsecond). A reader takes
//! that file's last complete line; a line cut short can only come from a VMM
//! that died inside the `write`, before it sent the `Go` or the `Running`
//! the line announces. Neither file is fsync'd: they outlive the process
//! (the page cache holds them), which is what the agent needs; they do not
//! promise to outlive the host (see `backend/src/migration/mod.rs` for what
//! a host crash does).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use super::event::StopReason;

/// The record of one VMM process.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VmmRecord {
    pub pid: u32,
    /// A receiving VMM's address (`tcp:HOST:PORT`), once it listens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listening: Option<String>,
    /// The migration whose handoff this VMM passed, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<Handoff>,
    /// How the process ended; none while it runs or if it was killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<Exit>,
    /// The VM's console offset at which this process's console output
    /// begins (0 for a boot; a restored or migrated VM's saved offset);
    /// none until it holds its VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_start: Option<u64>,
}

/// Which side of a migration a VMM was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// It sent `Go` (or was about to): the target may run the VM.
    Source,
    /// It committed: the VM is this VMM's.
    Target,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    pub side: Side,
    /// The agents' id of the migration (none for migrations run by hand).
    #[serde(default)]
    pub migration: Option<String>,
    /// The engine's session id.
    pub session: u64,
}

/// How a VMM process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Exit {
    /// The VM ran here and stopped: the guest ended it, or it was stopped on
    /// request (see [`StopReason`]); `Migrated` means it runs elsewhere now.
    Stopped { stop: StopReason },
    /// A receiving VMM that never ran a VM: no sender came, the sender was
    /// refused or went away, no `Go` came. Nothing ran here.
    NotReceived { code: String, detail: String },
    /// The VMM itself failed (after a commit: the VM it had taken is lost).
    Failed { detail: String },
}

impl VmmRecord {
    pub fn new() -> Self {
        Self {
            pid: std::process::id(),
            listening: None,
            handoff: None,
            exit: None,
            console_start: None,
        }
    }

    /// Reads a record, with the handoff its VMM appended last; none when
    /// there is none or it is unreadable.
    pub fn load(path: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(path).ok()?;
        let mut record: Self = serde_json::from_str(&text).ok()?;
        if let Some(handoff) = last_handoff(&marks_path(path), record.pid) {
            record.handoff = Some(handoff);
        }
        Some(record)
    }

    /// Replaces the file at `path` with this record.
    pub fn store(&self, path: &Path) -> std::io::Result<()> {
        let tmp = tmp_path(path);
        let text = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)
    }

    /// True when the record says the VM left for another host.
    pub fn migrated(&self) -> bool {
        matches!(
            &self.exit,
            Some(Exit::Stopped {
                stop: StopReason::Migrated { .. }
            })
        )
    }
}

/// The file a VMM appends its handoffs to, beside its record.
pub fn marks_path(record: &Path) -> PathBuf {
    let mut name = record.file_name().unwrap_or_default().to_os_string();
    name.push(".handoff");
    record.with_file_name(name)
}

/// The last complete handoff line of the VMM with `pid` (its first line).
fn last_handoff(path: &Path, pid: u32) -> Option<Handoff> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.split_inclusive('\n').filter(|l| l.ends_with('\n'));
    if lines.next()?.trim() != format!("pid {pid}") {
        return None;
    }
    lines.rev().find_map(|line| serde_json::from_str(line.trim()).ok())
}

/// A VMM's record and where it is kept, shared by the threads that write it.
/// Without a path (a VMM run by hand without `--record`), nothing is written.
#[derive(Debug)]
pub struct RecordFile {
    path: Option<PathBuf>,
    record: Mutex<VmmRecord>,
    /// The handoff file, open for appending.
    marks: Option<Mutex<File>>,
}

impl RecordFile {
    /// Starts the record of this process (written at once, replacing any
    /// record a predecessor left at the same path).
    pub fn create(path: Option<PathBuf>) -> std::io::Result<Arc<Self>> {
        let marks = match &path {
            Some(path) => {
                let mut marks = std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(true)
                    .open(marks_path(path))?;
                marks.write_all(format!("pid {}\n", std::process::id()).as_bytes())?;
                Some(Mutex::new(marks))
            }
            None => None,
        };
        let file = Self {
            path,
            record: Mutex::new(VmmRecord::new()),
            marks,
        };
        file.update(|_| {})?;
        Ok(Arc::new(file))
    }

    /// Records a handoff (a source's before Go, a target's commit before
    /// Running) with one append.
    pub fn hand_over(&self, handoff: Handoff) -> std::io::Result<()> {
        let mut record = self.record.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(marks) = &self.marks {
            let mut line = serde_json::to_vec(&handoff).map_err(std::io::Error::other)?;
            line.push(b'\n');
            let mut marks = marks.lock().unwrap_or_else(PoisonError::into_inner);
            // One write: a line is either all there or was never promised.
            let written = marks.write(&line)?;
            if written != line.len() {
                return Err(std::io::Error::other("the handoff line was cut short"));
            }
        }
        record.handoff = Some(handoff);
        Ok(())
    }

    /// Changes the record and writes it, both under one lock.
    pub fn update(&self, change: impl FnOnce(&mut VmmRecord)) -> std::io::Result<()> {
        let mut record = self.record.lock().unwrap_or_else(PoisonError::into_inner);
        change(&mut record);
        match &self.path {
            Some(path) => record.store(path),
            None => Ok(()),
        }
    }

    pub fn handoff(&self) -> Option<Handoff> {
        self.record
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .handoff
            .clone()
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_replace_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmm.json");
        assert_eq!(VmmRecord::load(&path), None);
        let mut record = VmmRecord::new();
        record.store(&path).unwrap();
        assert_eq!(VmmRecord::load(&path), Some(record.clone()));
        record.handoff = Some(Handoff {
            side: Side::Source,
            migration: Some("m-1".into()),
            session: 7,
        });
        record.exit = Some(Exit::Stopped {
            stop: StopReason::Migrated {
                target: "tcp:10.0.0.2:7000".into(),
            },
        });
        record.store(&path).unwrap();
        let loaded = VmmRecord::load(&path).unwrap();
        assert_eq!(loaded, record);
        assert!(loaded.migrated());
        assert!(!dir.path().join("vmm.json.tmp").exists());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(r#""reason":"stopped""#), "{text}");
    }

    #[test]
    fn handoffs_are_appended_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmm.json");
        let file = RecordFile::create(Some(path.clone())).unwrap();
        assert_eq!(VmmRecord::load(&path).unwrap().handoff, None);
        let handoff = |session| Handoff {
            side: Side::Target,
            migration: Some("m-2".into()),
            session,
        };
        file.hand_over(handoff(1)).unwrap();
        file.hand_over(handoff(2)).unwrap();
        assert_eq!(VmmRecord::load(&path).unwrap().handoff, Some(handoff(2)));
        // A line cut short (its writer died in the write) was never promised.
        std::fs::OpenOptions::new()
            .append(true)
            .open(marks_path(&path))
            .unwrap()
            .write_all(br#"{"side":"source","migr"#)
            .unwrap();
        assert_eq!(VmmRecord::load(&path).unwrap().handoff, Some(handoff(2)));
        // Another VMM's file is not this one's.
        let mut other = VmmRecord::load(&path).unwrap();
        other.pid += 1;
        other.handoff = None;
        other.store(&path).unwrap();
        assert_eq!(VmmRecord::load(&path).unwrap().handoff, None);
    }
}
