//! The agent's journal of migrations: one JSON line per event, appended and
//! fsync'd, in `<state_dir>/journal.jsonl`. It is how an agent knows, after
//! a restart or once a VM's files are gone, what became of a migration it
//! took part in: a source its outcome, a target whether the VM arrived
//! (`incoming_state` for a migration it prepared and since forgot), and
//! `vmig` the answer to "what became of migration ID".
//!
//! Entries are only ever appended, each fsync'd before the agent acts on
//! it; a line that does not parse (a crash in the middle of a write) is
//! skipped, and counted when the agent starts. The journal is bounded: once
//! `journal.jsonl` passes [`ROTATE_AT`] bytes it becomes `journal.1.jsonl`
//! (the one before is dropped) and a new file starts; both are read.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use crate::api::{JournalEntry as Entry, JournalEvent as Event};
use crate::api::{RunEntry, RunEvent};

/// The size past which the journal starts a new file (the previous one is
/// kept, so at most twice this is on disk).
pub const ROTATE_AT: u64 = 8 << 20;

/// The journal files, shared by the agent's threads: of migrations
/// ([`Entry`], `journal.jsonl`) or of operators' runs ([`RunEntry`],
/// `runs.jsonl`, see [`Runs`]).
#[derive(Debug)]
pub struct Journal<E = Entry> {
    path: PathBuf,
    previous: PathBuf,
    rotate_at: u64,
    file: Mutex<File>,
    entries: PhantomData<fn() -> E>,
}

/// The journal of operators' runs: what each run did that concerns this
/// host (an evacuation's plan, VMs it stopped, its end).
pub type Runs = Journal<RunEntry>;

/// What [`Journal::open`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Opened {
    pub entries: usize,
    /// Lines that did not parse: torn by a crash, or damaged.
    pub dropped: usize,
}

/// Which entries [`Journal::history`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub since_ms: Option<u64>,
    pub vm: Option<String>,
    pub run: Option<String>,
}

impl Journal<Entry> {
    pub fn open(state_dir: &Path) -> std::io::Result<Self> {
        Self::open_with(state_dir, ROTATE_AT).map(|(journal, _)| journal)
    }

    /// Opens the journal of migrations, rotating at `rotate_at` bytes;
    /// says how many entries it holds and how many lines it could not read.
    pub fn open_with(state_dir: &Path, rotate_at: u64) -> std::io::Result<(Self, Opened)> {
        Self::open_named(state_dir, "journal", rotate_at)
    }
}

impl Journal<RunEntry> {
    /// Opens the journal of runs (`runs.jsonl`).
    pub fn open_runs(state_dir: &Path) -> std::io::Result<(Self, Opened)> {
        Self::open_named(state_dir, "runs", ROTATE_AT)
    }

    /// Appends `event` of run `run`, made by `by`, and makes it durable.
    pub fn record(&self, run: &str, by: Option<&str>, event: RunEvent) -> std::io::Result<()> {
        self.write(&RunEntry {
            at_ms: now_ms(),
            run: run.to_string(),
            by: by.map(str::to_string),
            event,
        })
    }

    /// Every entry (of run `run` when given), oldest first.
    pub fn runs(&self, run: Option<&str>) -> Vec<RunEntry> {
        let mut entries = Vec::new();
        self.scan(|line| {
            if let Ok(entry) = serde_json::from_str::<RunEntry>(line)
                && run.is_none_or(|r| r == entry.run)
            {
                entries.push(entry);
            }
        });
        entries
    }
}

impl<E: Serialize + DeserializeOwned> Journal<E> {
    /// Opens `<stem>.jsonl` (and `<stem>.1.jsonl`) in `state_dir`.
    pub(super) fn open_named(state_dir: &Path, stem: &str, rotate_at: u64) -> std::io::Result<(Self, Opened)> {
        let path = state_dir.join(format!("{stem}.jsonl"));
        let previous = state_dir.join(format!("{stem}.1.jsonl"));
        let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
        // A line torn by a crash is ended, so that the next entry starts a line.
        if last_byte(&path)?.is_some_and(|b| b != b'\n') {
            file.write_all(b"\n")?;
        }
        let journal = Self {
            path,
            previous,
            rotate_at,
            file: Mutex::new(file),
            entries: PhantomData,
        };
        let mut opened = Opened::default();
        journal.scan(|line| {
            if serde_json::from_str::<E>(line).is_ok() {
                opened.entries += 1;
            } else if !line.trim().is_empty() {
                opened.dropped += 1;
            }
        });
        Ok((journal, opened))
    }

    pub(super) fn write(&self, entry: &E) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        if file.metadata()?.len() >= self.rotate_at {
            // The full file becomes the previous one, made durable by the
            // rename's directory entry before anything is written anew.
            std::fs::rename(&self.path, &self.previous)?;
            *file = OpenOptions::new().create(true).append(true).open(&self.path)?;
            if let Some(dir) = self.path.parent() {
                File::open(dir)?.sync_all()?;
            }
        }
        file.write_all(&line)?;
        file.sync_data()
    }

    /// Calls `each` with every line, the previous file's first.
    pub(super) fn scan(&self, mut each: impl FnMut(&str)) {
        let _writing = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        for path in [&self.previous, &self.path] {
            let Ok(file) = File::open(path) else {
                continue;
            };
            for line in BufReader::new(file).lines().map_while(Result::ok) {
                each(&line);
            }
        }
    }
}

impl Journal<Entry> {
    /// Appends an event of migration `id` and makes it durable.
    pub fn append(&self, id: &str, vm: &str, peer: &str, event: Event) -> std::io::Result<()> {
        self.write(&entry(id, vm, peer, event))
    }

    /// Appends the start of migration `id`, asked for by `by` in `run`.
    pub fn started(&self, id: &str, vm: &str, peer: &str, run: Option<&str>, by: Option<&str>) -> std::io::Result<()> {
        let mut started = entry(id, vm, peer, Event::Started);
        started.run = run.map(str::to_string);
        started.by = by.map(str::to_string);
        self.write(&started)
    }

    /// Appends a move the prechecks refused, asked for by `by` in `run`.
    pub fn refused(
        &self,
        id: &str,
        vm: &str,
        peer: &str,
        (run, by): (Option<&str>, Option<&str>),
        event: Event,
    ) -> std::io::Result<()> {
        let mut refused = entry(id, vm, peer, event);
        refused.run = run.map(str::to_string);
        refused.by = by.map(str::to_string);
        self.write(&refused)
    }

    /// Every entry of migration `id`, oldest first.
    pub fn entries(&self, id: &str) -> Vec<Entry> {
        // A cheap test before parsing: most lines are other migrations'.
        let needle = format!("\"id\":{}", serde_json::Value::String(id.to_string()));
        let mut entries = Vec::new();
        self.scan(|line| {
            if line.contains(&needle)
                && let Ok(entry) = serde_json::from_str::<Entry>(line)
                && entry.id == id
            {
                entries.push(entry);
            }
        });
        entries
    }

    /// The last entry of migration `id`, if any.
    pub fn last(&self, id: &str) -> Option<Entry> {
        self.entries(id).pop()
    }

    /// The entries `filter` asks for, oldest first. A run's filter keeps
    /// every entry of the migrations that run started.
    pub fn history(&self, filter: &Filter) -> Vec<Entry> {
        let mut entries = Vec::new();
        self.scan(|line| {
            if let Ok(entry) = serde_json::from_str::<Entry>(line)
                && filter.since_ms.is_none_or(|since| entry.at_ms >= since)
                && filter.vm.as_ref().is_none_or(|vm| *vm == entry.vm)
            {
                entries.push(entry);
            }
        });
        if let Some(run) = &filter.run {
            let ids: std::collections::HashSet<String> = entries
                .iter()
                .filter(|e| e.run.as_ref() == Some(run))
                .map(|e| e.id.clone())
                .collect();
            entries.retain(|e| ids.contains(&e.id));
        }
        entries
    }
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn entry(id: &str, vm: &str, peer: &str, event: Event) -> Entry {
    Entry {
        at_ms: now_ms(),
        id: id.to_string(),
        vm: vm.to_string(),
        peer: peer.to_string(),
        event,
        run: None,
        by: None,
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
        let (journal, opened) = Journal::open_with(dir.path(), ROTATE_AT).unwrap();
        assert_eq!(opened, Opened { entries: 2, dropped: 1 });
        journal.append("m-2", "vm2", "hostC", Event::Discarded).unwrap();
        journal.append("m-1", "vm1", "hostB", Event::Arrived).unwrap();
        let events: Vec<Event> = journal.entries("m-1").into_iter().map(|e| e.event).collect();
        assert_eq!(events, vec![Event::Started, Event::Arrived]);
        assert_eq!(journal.last("m-2").map(|e| e.event), Some(Event::Discarded));
        assert_eq!(journal.last("m-3"), None);
    }

    #[test]
    fn a_full_journal_rotates_and_both_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open_with(dir.path(), 1024).unwrap();
        for n in 0..40 {
            journal
                .started(
                    &format!("m-{n}"),
                    "vm1",
                    "hostB",
                    Some(if n % 2 == 0 { "r-even" } else { "r-odd" }),
                    Some("alice"),
                )
                .unwrap();
            journal
                .append(&format!("m-{n}"), "vm1", "hostB", Event::Discarded)
                .unwrap();
        }
        let size = |name: &str| std::fs::metadata(dir.path().join(name)).map_or(0, |m| m.len());
        assert!(size("journal.jsonl") <= 1024 + 512, "{}", size("journal.jsonl"));
        assert!(size("journal.1.jsonl") >= 1024);
        // The oldest went with the second rotation; the newest are all there.
        let all = journal.history(&Filter::default());
        assert!(all.len() < 80 && all.len() >= 10, "{}", all.len());
        assert_eq!(all.last().unwrap().id, "m-39");
        assert_eq!(journal.entries("m-39").len(), 2);
        let odd = journal.history(&Filter {
            run: Some("r-odd".into()),
            ..Filter::default()
        });
        assert!(
            odd.iter()
                .all(|e| e.id.trim_start_matches("m-").parse::<u32>().unwrap() % 2 == 1)
        );
        assert!(
            odd.iter().any(|e| e.event == Event::Discarded),
            "a run's filter keeps its migrations' ends"
        );
        let since = all[all.len() - 2].at_ms;
        assert!(
            journal
                .history(&Filter {
                    since_ms: Some(since),
                    ..Filter::default()
                })
                .len()
                >= 2
        );
        assert_eq!(all.last().unwrap().by, None);
        assert_eq!(journal.entries("m-39")[0].by.as_deref(), Some("alice"));
    }
}
