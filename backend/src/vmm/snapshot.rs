//! A saved machine on disk: `state.bin` (the encoded [`VmState`]) and
//! `memory.img` (a flat, sparse image of guest memory).

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::memory::{self, MemoryError};
use super::state::{MAX_STATE_BYTES, StateError};
use super::{Vm, VmError, VmState};

pub const STATE_FILE: &str = "state.bin";
pub const MEMORY_FILE: &str = "memory.img";

#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error("cannot create snapshot directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is larger than the {MAX_STATE_BYTES} bytes a machine state may be")]
    TooLarge { path: PathBuf },
    #[error("{path}")]
    State {
        path: PathBuf,
        #[source]
        source: StateError,
    },
    #[error("cannot save guest memory to {path}")]
    Memory {
        path: PathBuf,
        #[source]
        source: MemoryError,
    },
    #[error("cannot capture the machine state")]
    Vm(#[source] Box<VmError>),
}

/// What a save wrote.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub dir: PathBuf,
    pub state_bytes: u64,
    /// Non-zero guest memory written (zero pages are left as holes).
    pub memory_bytes_written: u64,
}

/// Saves a paused VM into `dir` (created if needed).
pub fn save(vm: &Vm, dir: &Path) -> Result<SnapshotInfo, SnapshotError> {
    let state = vm.save_state().map_err(|e| SnapshotError::Vm(Box::new(e)))?;
    fs::create_dir_all(dir).map_err(|source| SnapshotError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let state_path = dir.join(STATE_FILE);
    let encoded = state.encode().map_err(|source| SnapshotError::State {
        path: state_path.clone(),
        source,
    })?;
    fs::write(&state_path, &encoded).map_err(|source| SnapshotError::Write {
        path: state_path.clone(),
        source,
    })?;
    let memory_path = dir.join(MEMORY_FILE);
    let mut image = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&memory_path)
        .map_err(|source| SnapshotError::Write {
            path: memory_path.clone(),
            source,
        })?;
    let written = memory::save_image(vm.memory(), &mut image).map_err(|source| SnapshotError::Memory {
        path: memory_path.clone(),
        source,
    })?;
    Ok(SnapshotInfo {
        dir: dir.to_path_buf(),
        state_bytes: encoded.len() as u64,
        memory_bytes_written: written,
    })
}

/// Reads a saved machine: its state and an open memory image.
pub fn load(dir: &Path) -> Result<(VmState, File), SnapshotError> {
    let state_path = dir.join(STATE_FILE);
    let file = File::open(&state_path).map_err(|source| SnapshotError::Read {
        path: state_path.clone(),
        source,
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_STATE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| SnapshotError::Read {
            path: state_path.clone(),
            source,
        })?;
    if bytes.len() as u64 > MAX_STATE_BYTES {
        return Err(SnapshotError::TooLarge { path: state_path });
    }
    let state = VmState::decode(&bytes).map_err(|source| SnapshotError::State {
        path: state_path.clone(),
        source,
    })?;
    let memory_path = dir.join(MEMORY_FILE);
    let image = File::open(&memory_path).map_err(|source| SnapshotError::Read {
        path: memory_path,
        source,
    })?;
    Ok((state, image))
}
