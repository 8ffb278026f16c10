//! Cordons: a host under maintenance takes no new VMs. The agent keeps its
//! cordon in the state directory (written whole and renamed, fsync'd), so a
//! restarted agent is still cordoned; prechecks and placement read it from
//! the facts, and the agent itself refuses arrivals and creations.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::{Agent, Failure};
use crate::api::Cordon;

const FILE: &str = "cordon.json";

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// The cordon the state directory holds, if any (an unreadable file counts
/// as cordoned: a host is never opened by a damaged record).
pub fn load(state_dir: &Path) -> Option<Cordon> {
    let text = std::fs::read_to_string(path(state_dir)).ok()?;
    Some(serde_json::from_str(&text).unwrap_or(Cordon {
        reason: Some(format!("{FILE} is unreadable; uncordon the host to clear it")),
        by: None,
        run: None,
        at_ms: 0,
    }))
}

fn save(state_dir: &Path, cordon: Option<&Cordon>) -> std::io::Result<()> {
    let target = path(state_dir);
    match cordon {
        None => match std::fs::remove_file(&target) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => sync_dir(state_dir),
        },
        Some(cordon) => {
            use std::io::Write;
            let temporary = state_dir.join(format!("{FILE}.tmp"));
            let mut file = std::fs::File::create(&temporary)?;
            file.write_all(&serde_json::to_vec(cordon).map_err(std::io::Error::other)?)?;
            file.sync_all()?;
            std::fs::rename(&temporary, &target)?;
            sync_dir(state_dir)
        }
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl Agent {
    /// The host's cordon, if it has one.
    pub fn cordon_state(&self) -> Option<Cordon> {
        self.cordon
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Cordons the host (again: the reason and who are replaced).
    pub fn cordon(&self, reason: Option<String>, run: Option<String>, by: &str) -> Result<Cordon, Failure> {
        let cordon = Cordon {
            reason,
            by: Some(by.to_string()),
            run,
            at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        let mut held = self.cordon.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        save(&self.config.state_dir, Some(&cordon))
            .map_err(|e| Failure::new(500, format!("cannot keep the cordon: {e}")))?;
        *held = Some(cordon.clone());
        Ok(cordon)
    }

    /// Lifts the cordon; says whether there was one.
    pub fn uncordon(&self) -> Result<bool, Failure> {
        let mut held = self.cordon.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        save(&self.config.state_dir, None).map_err(|e| Failure::new(500, format!("cannot lift the cordon: {e}")))?;
        Ok(held.take().is_some())
    }

    /// Refuses new VMs while cordoned.
    pub(super) fn open_for_new_vms(&self, vm: &str) -> Result<(), Failure> {
        match self.cordon_state() {
            None => Ok(()),
            Some(cordon) => Err(Failure::new(
                409,
                format!(
                    "{} is cordoned{}: it takes no new VMs such as {vm} (`vmig host uncordon {}` lifts it)",
                    self.config.name,
                    cordon.reason.map(|r| format!(" ({r})")).unwrap_or_default(),
                    self.config.name
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cordon_outlives_the_process_and_a_damaged_one_keeps_the_host_closed() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()), None);
        let cordon = Cordon {
            reason: Some("firmware".into()),
            by: Some("alice".into()),
            run: Some("r-1".into()),
            at_ms: 7,
        };
        save(dir.path(), Some(&cordon)).unwrap();
        assert_eq!(load(dir.path()), Some(cordon));
        save(dir.path(), None).unwrap();
        assert_eq!(load(dir.path()), None);
        save(dir.path(), None).unwrap();
        std::fs::write(dir.path().join(FILE), "{torn").unwrap();
        assert!(load(dir.path()).unwrap().reason.unwrap().contains("unreadable"));
    }
}
