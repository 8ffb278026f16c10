//! The agent's journal of migrations: one JSON line per event, appended and
//! fsync'd, in `<state_dir>/journal.jsonl`. It is how an agent knows, after
//! a restart or once a VM's files are gone, what became of a migration it
//! took part in: a source its outcome, a target whether the VM arrived
//! (`incoming_state` for a migration it prepared and since forgot), and
//! `vmig` the answer to "what became of migration ID".
//!
//! Entries are only ever appended; a line that does not parse (a crash in
//! the middle of a write) is skipped.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::api::MigrationOutcome;

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Milliseconds since the epoch.
    pub at_ms: u64,
    /// The migration's id.
    pub id: String,
    pub vm: String,
    /// The other host of the migration.
    pub peer: String,
    pub event: Event,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Source: the VM was claimed for the migration.
    Started,
    /// Source: the migration ended (the outcome its client is told).
    Ended { outcome: Box<MigrationOutcome> },
    /// Target: a receiving VMM is about to be started for it.
    Prepared,
    /// Target: the VM arrived and is this host's.
    Arrived,
    /// Target: the VM arrived and its VMM has since died: it is lost here.
    ArrivedLost,
    /// Target: the receiving VMM ended without ever running the VM.
    Discarded,
}

/// The journal file, shared by the agent's threads.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: Mutex<File>,
}

impl Journal {
    pub fn open(state_dir: &Path) -> std::io::Result<Self> {
        let path = state_dir.join("journal.jsonl");
        let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
        // A line torn by a crash is ended, so that the next entry starts a line.
        if last_byte(&path)?.is_some_and(|b| b != b'\n') {
            file.write_all(b"\n")?;
        }
        Ok(Self {
            path,
            file: Mutex::new(file),
        })
    }

    /// Appends an event of migration `id` and makes it durable.
    pub fn append(&self, id: &str, vm: &str, peer: &str, event: Event) -> std::io::Result<()> {
        let entry = Entry {
            at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            id: id.to_string(),
            vm: vm.to_string(),
            peer: peer.to_string(),
            event,
        };
        let mut line = serde_json::to_vec(&entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        file.write_all(&line)?;
        file.sync_data()
    }

    /// Every entry of migration `id`, oldest first.
    pub fn entries(&self, id: &str) -> Vec<Entry> {
        let _writing = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        let Ok(file) = File::open(&self.path) else {
            return Vec::new();
        };
        // A cheap test before parsing: most lines are other migrations'.
        let needle = format!("\"id\":{}", serde_json::Value::String(id.to_string()));
        BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter(|line| line.contains(&needle))
            .filter_map(|line| serde_json::from_str::<Entry>(&line).ok())
            .filter(|entry| entry.id == id)
            .collect()
    }

    /// The last entry of migration `id`, if any.
    pub fn last(&self, id: &str) -> Option<Entry> {
        self.entries(id).pop()
    }
}

fn last_byte(path: &Path) -> std::io::Result<Option<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(None);
    }
    file.seek(SeekFrom::Start(len - 1))?;
    let mut byte = [0u8; 1];
    file.read_exact(&mut byte)?;
    Ok(Some(byte[0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_found_by_id_after_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        journal.append("m-1", "vm1", "hostB", Event::Started).unwrap();
        journal.append("m-2", "vm2", "hostC", Event::Prepared).unwrap();
        // A write cut short by a crash, then more entries.
        OpenOptions::new()
            .append(true)
            .open(dir.path().join("journal.jsonl"))
            .unwrap()
            .write_all(b"{\"at_ms\":1,\"id\":\"m-1\",\"vm\"")
            .unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        journal.append("m-2", "vm2", "hostC", Event::Discarded).unwrap();
        journal.append("m-1", "vm1", "hostB", Event::Arrived).unwrap();
        let events: Vec<Event> = journal.entries("m-1").into_iter().map(|e| e.event).collect();
        assert_eq!(events, vec![Event::Started, Event::Arrived]);
        assert_eq!(journal.last("m-2").map(|e| e.event), Some(Event::Discarded));
        assert_eq!(journal.last("m-3"), None);
    }
}
