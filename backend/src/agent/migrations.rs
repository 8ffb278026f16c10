//! The migrations an agent is the source of, by id: where each is, its
//! progress for whoever watches it, its cancel switch, and its outcome once
//! known. A migration runs on a thread of its own; the API connection that
//! asked for it only watches, so a client that goes away, stops or is slow
//! never holds the migration up, and one that comes back can watch again.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::api::{MigrateProgress, MigrationOutcome, MigrationPhase};

/// Lines a watcher may fall behind before it misses progress (never the outcome).
const WATCH_QUEUE: usize = 256;
/// Ended migrations kept in memory (the journal keeps them all).
const KEEP_ENDED: usize = 64;

/// One migration.
#[derive(Debug)]
pub struct Migration {
    pub id: String,
    pub vm: String,
    pub target: String,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    phase: MigrationPhase,
    outcome: Option<MigrationOutcome>,
    ended_at: Option<std::time::Instant>,
    watchers: Vec<SyncSender<MigrateProgress>>,
    /// Lines a watcher that comes late gets first (the id, the target's
    /// readiness), so that every watcher sees the migration from its start.
    history: Vec<MigrateProgress>,
    cancel: Cancel,
}

/// A cancel's way through the migration's phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancel {
    /// None asked.
    No,
    /// Asked; the migration's thread or the canceller tells its VMM.
    Asked,
    /// The VMM took it (or the migration had not reached its VMM).
    Taken,
    /// The VMM refused: its switchover had begun.
    TooLate,
}

impl Migration {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn phase(&self) -> MigrationPhase {
        self.lock().phase
    }

    /// Moves to `phase`, unless a cancel was asked first (then false): the
    /// check and the move are one step, so a cancel is never lost between.
    pub fn advance(&self, phase: MigrationPhase) -> bool {
        let mut state = self.lock();
        if phase == MigrationPhase::Copying && state.cancel != Cancel::No {
            return false;
        }
        if state.phase != phase {
            tracing::info!(migration = %self.id, %phase, "phase changed");
        }
        state.phase = phase;
        true
    }

    pub fn progress(&self, line: MigrateProgress) {
        let mut state = self.lock();
        state.watchers.retain(|watcher| match watcher.try_send(line.clone()) {
            Ok(()) | Err(TrySendError::Full(_)) => true,
            Err(TrySendError::Disconnected(_)) => false,
        });
        // What a watcher that comes later must still hear: that it started,
        // waited in a queue (a line a place, so a few), was prepared.
        if matches!(
            line,
            MigrateProgress::Started { .. } | MigrateProgress::Queued { .. } | MigrateProgress::Prepared { .. }
        ) {
            state.history.push(line);
        }
    }

    /// A new watcher: the lines so far, then progress as it comes; the
    /// channel closes when the migration ends (see [`Migration::outcome`]).
    pub fn watch(&self) -> Receiver<MigrateProgress> {
        let (tx, rx) = sync_channel(WATCH_QUEUE);
        let mut state = self.lock();
        for line in &state.history {
            let _ = tx.try_send(line.clone());
        }
        if state.outcome.is_none() {
            state.watchers.push(tx);
        }
        rx
    }

    pub fn outcome(&self) -> Option<MigrationOutcome> {
        self.lock().outcome.clone()
    }

    /// Records the outcome and lets every watcher go.
    pub fn end(&self, outcome: MigrationOutcome) {
        let mut state = self.lock();
        state.outcome = Some(outcome);
        state.ended_at.get_or_insert_with(std::time::Instant::now);
        state.phase = MigrationPhase::Ended;
        state.watchers.clear();
    }

    /// Replaces the outcome of a migration that ended in doubt, once the
    /// agents learned the truth.
    pub fn resettle(&self, outcome: MigrationOutcome) {
        self.end(outcome);
    }

    /// Asks for a cancel; returns the phase it found.
    pub fn ask_cancel(&self) -> MigrationPhase {
        let mut state = self.lock();
        if state.cancel == Cancel::No {
            state.cancel = Cancel::Asked;
        }
        state.phase
    }

    pub fn cancel(&self) -> Cancel {
        self.lock().cancel
    }

    pub fn cancel_asked(&self) -> bool {
        self.lock().cancel != Cancel::No
    }

    /// What the VMM said to the cancel (only an asked cancel changes).
    pub fn cancel_answered(&self, taken: bool) {
        let mut state = self.lock();
        if state.cancel == Cancel::Asked {
            state.cancel = if taken { Cancel::Taken } else { Cancel::TooLate };
        }
    }
}

/// The registry.
#[derive(Debug, Default)]
pub struct Migrations {
    map: Mutex<HashMap<String, Arc<Migration>>>,
}

impl Migrations {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Migration>>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a new migration; None when the id is taken.
    pub fn insert(&self, id: &str, vm: &str, target: &str, phase: MigrationPhase) -> Option<Arc<Migration>> {
        let mut map = self.lock();
        if map.contains_key(id) {
            return None;
        }
        let ended: Vec<String> = {
            let mut ended: Vec<(std::time::Instant, String)> = map
                .values()
                .filter_map(|m| m.lock().ended_at.map(|at| (at, m.id.clone())))
                .collect();
            if ended.len() < KEEP_ENDED {
                Vec::new()
            } else {
                // The oldest go; the journal still has them.
                ended.sort();
                ended.truncate(ended.len() - KEEP_ENDED / 2);
                ended.into_iter().map(|(_, id)| id).collect()
            }
        };
        for id in ended {
            map.remove(&id);
        }
        let migration = Arc::new(Migration {
            id: id.to_string(),
            vm: vm.to_string(),
            target: target.to_string(),
            state: Mutex::new(State {
                phase,
                outcome: None,
                ended_at: None,
                watchers: Vec::new(),
                history: vec![MigrateProgress::Started { id: id.to_string() }],
                cancel: Cancel::No,
            }),
        });
        map.insert(id.to_string(), Arc::clone(&migration));
        Some(migration)
    }

    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    pub fn get(&self, id: &str) -> Option<Arc<Migration>> {
        self.lock().get(id).cloned()
    }

    /// The migration of `vm` that has not ended, if any.
    pub fn running(&self, vm: &str) -> Option<Arc<Migration>> {
        self.lock()
            .values()
            .find(|m| m.vm == vm && m.outcome().is_none())
            .cloned()
    }
}

/// A fresh migration id: `m-` and 16 hex digits from the OS's random source.
pub fn new_id() -> String {
    let mut bytes = [0u8; 8];
    let _ = crate::random::fill(&mut bytes);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!("m-{:016x}", u64::from_le_bytes(bytes) ^ nanos.rotate_left(17))
}

/// Ids are 1 to 64 letters, digits, `-` and `_`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Code;

    #[test]
    fn watchers_see_the_start_then_progress_and_end_with_the_outcome() {
        let migrations = Migrations::default();
        let m = migrations
            .insert("m-1", "vm1", "hostB", MigrationPhase::Preparing)
            .unwrap();
        assert!(
            migrations
                .insert("m-1", "vm1", "hostB", MigrationPhase::Preparing)
                .is_none()
        );
        m.progress(MigrateProgress::Prepared { target: "hostB".into() });
        let late = m.watch();
        assert_eq!(late.recv().unwrap(), MigrateProgress::Started { id: "m-1".into() });
        assert_eq!(
            late.recv().unwrap(),
            MigrateProgress::Prepared { target: "hostB".into() }
        );
        m.progress(MigrateProgress::Queued {
            host: "hostA".into(),
            position: 1,
        });
        assert!(matches!(late.recv().unwrap(), MigrateProgress::Queued { .. }));
        assert!(migrations.running("vm1").is_some());
        m.end(MigrationOutcome::failed(500, Code::Cancelled, "cancelled"));
        assert!(late.recv().is_err(), "the channel closes at the end");
        assert_eq!(m.outcome().unwrap().code, Some(Code::Cancelled));
        assert!(migrations.running("vm1").is_none());
        assert!(migrations.get("m-1").is_some());
    }

    #[test]
    fn a_cancel_is_never_lost_between_phases() {
        let migrations = Migrations::default();
        let m = migrations.insert("m", "vm", "h", MigrationPhase::Preparing).unwrap();
        assert_eq!(m.ask_cancel(), MigrationPhase::Preparing);
        assert!(
            !m.advance(MigrationPhase::Copying),
            "a cancelled migration never reaches its VMM"
        );
        let n = migrations.insert("n", "vm2", "h", MigrationPhase::Preparing).unwrap();
        assert!(n.advance(MigrationPhase::Copying));
        assert_eq!(n.ask_cancel(), MigrationPhase::Copying, "the canceller tells the VMM");
        n.cancel_answered(false);
        assert_eq!(n.cancel(), Cancel::TooLate);
    }

    #[test]
    fn ids_are_fresh_and_checked() {
        let (a, b) = (new_id(), new_id());
        assert_ne!(a, b);
        assert!(valid_id(&a) && a.starts_with("m-"));
        for bad in ["", "a b", "x/y", &"x".repeat(65)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }
}
