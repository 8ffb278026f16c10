//! The VMM process's control socket: one JSON object per line each way.
//!
//! Requests (`{"op": ...}`): `status`, `stats`, `pause`, `resume`,
//! `save {"dir"}` (the VM must be paused; it stays paused), `shutdown`,
//! `migrate {"url", "options"}`, `cancel_migration`, `await_migration`
//! (the running migration's outcome, with its progress, for an agent that
//! restarted), `read_memory {"gpa","len"}` and `write_memory {"gpa","hex"}`
//! (paused only; for diagnosis and tests), `console_input {"hex"}` (bytes
//! for the guest's console: into the UART's receive FIFO as far as it has
//! room; answers `{"console_input": {"accepted": N}}`; refused with `busy`
//! while a migration runs, so that no byte is left behind in a copy that
//! stops, and `wrong_state` without a VM that runs here). Every request gets exactly one
//! final response line: `{"ok": <reply>}` or
//! `{"error": {"code": "...", "message": "..."}}`; `migrate` and
//! `await_migration` send `{"progress": {...}}` lines before it. A malformed
//! line gets an error and changes nothing.
//!
//! Error codes (stable; callers decide on them, never on the message):
//! `invalid` (malformed request or argument), `wrong_state` (not in this
//! state: no VM yet, not running, paused for a migration), `busy` (a
//! migration runs already), `none` (no migration runs), `too_late` (a cancel
//! after the switchover began: the outcome follows), and for a migration's
//! end: `rolled_back` (it failed before the handoff; the VM runs here again),
//! `cancelled`, `timed_out`, `refused` (the target turned the VM away before
//! anything was sent), `in_doubt` (the handoff's outcome is unknown; the VM
//! stays paused here), `not_resumed` (it failed, and resuming here failed
//! too), `failed` (anything else).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Sender, channel};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::event::VmmEvent;
use crate::migration::{MigrationOptions, Progress, Report};
use crate::vmm::snapshot::SnapshotInfo;
use crate::vmm::{RunState, VmStats};

/// Longest request line accepted.
const MAX_LINE: usize = 1 << 20;
/// Most bytes one `read_memory` returns.
pub const MAX_MEMORY_READ: u32 = 1 << 16;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Status,
    Stats,
    Pause,
    Resume,
    Save {
        dir: PathBuf,
    },
    Shutdown,
    ReadMemory {
        gpa: u64,
        len: u32,
    },
    WriteMemory {
        gpa: u64,
        hex: String,
    },
    /// Live-migrate the VM to the VMM listening at `url` (`tcp:HOST:PORT`).
    Migrate {
        url: String,
        options: MigrationOptions,
        /// TLS for the streams (this host's identity, the target's host);
        /// none: plaintext, which only the agents' explicit opt-out asks for.
        #[serde(default)]
        tls: Option<Box<crate::migration::tls::TlsPeer>>,
    },
    /// Stop a running migration; the VM keeps running here.
    CancelMigration,
    /// Count the pages the guest dirties in `window_ms` (dirty logging on for
    /// that window; nothing is sent): a migration's convergence forecast.
    SampleDirty {
        window_ms: u32,
    },
    /// Insert `medium` into CD/DVD drive `slot`, or eject it (`None`).
    ChangeMedium {
        slot: usize,
        #[serde(default)]
        medium: Option<PathBuf>,
    },
    /// Wait for the running migration to end; its progress, then its outcome.
    AwaitMigration,
    /// Bytes (hex) for the guest's console input.
    ConsoleInput {
        hex: String,
    },
}

/// A refusal or a failure, with a stable code (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub code: String,
    pub message: String,
}

impl Failure {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_string(),
            message: message.into(),
        }
    }
}

/// Where a receiving VMM is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncomingStatus {
    /// The agents' migration id, when the agent gave one.
    pub migration: Option<String>,
    pub phase: crate::migration::gate::Phase,
}

/// How the last migration that did not move the VM ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationEnd {
    pub migration: Option<String>,
    pub failure: Failure,
}

/// What `status` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStatus {
    /// `None` while the VMM waits for an incoming migration.
    pub state: Option<RunState>,
    /// Where the VM is being migrated to, if it is.
    pub migrating_to: Option<String>,
    /// The id of that migration.
    #[serde(default)]
    pub migration: Option<String>,
    /// Set when a migration's handoff failed and the target may be running the
    /// VM: the source stays paused until an operator resolves it.
    pub in_doubt: Option<String>,
    pub pid: u32,
    pub vcpus: u8,
    pub memory_bytes: u64,
    /// A receiving VMM's progress in taking its VM.
    #[serde(default)]
    pub incoming: Option<IncomingStatus>,
    /// The last migration that ended without moving the VM.
    #[serde(default)]
    pub last_migration: Option<MigrationEnd>,
    /// The handoff this VMM passed, as in its record.
    #[serde(default)]
    pub handoff: Option<super::record::Handoff>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Done,
    Status(VmStatus),
    Stats(VmStats),
    Saved(SnapshotInfo),
    Memory {
        hex: String,
    },
    /// Boxed: a report is several times the size of every other reply.
    Migrated(Box<Report>),
    DirtySample(DirtySample),
    /// How many bytes of a `console_input` the UART took (its receive FIFO
    /// holds 64; the rest is the caller's to offer again).
    ConsoleInput {
        accepted: usize,
    },
}

/// What a `sample_dirty` window saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirtySample {
    pub window_ms: u32,
    /// Pages (4 KiB) written in the window, by the guest or the VMM.
    pub dirty_pages: u64,
    /// Pages of guest memory the host holds: what a first pass sends.
    pub resident_pages: u64,
}

/// Longest dirty-sampling window.
pub const MAX_SAMPLE_MS: u32 = 2000;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok(Reply),
    Error(Failure),
    /// An intermediate update; a final `Ok` or `Error` follows.
    Progress(Progress),
}

#[derive(Debug, Error)]
pub enum ControlError {
    #[error("cannot bind control socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {path} is in use by a running VMM")]
    InUse { path: PathBuf },
    #[error("cannot connect to control socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket I/O failed")]
    Io(#[source] std::io::Error),
    #[error("the VMM closed the control connection")]
    Closed,
    #[error("malformed response from the VMM")]
    Malformed(#[source] serde_json::Error),
    #[error("{}", .0.message)]
    Refused(Failure),
}

impl ControlError {
    /// The VMM's code for a refusal or failure it answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            ControlError::Refused(failure) => Some(&failure.code),
            _ => None,
        }
    }
}

/// Binds `path`, replacing a stale socket left by a VMM that died.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse {
                path: path.to_path_buf(),
            });
        }
        let _ = std::fs::remove_file(path);
    }
    UnixListener::bind(path).map_err(|source| ControlError::Bind {
        path: path.to_path_buf(),
        source,
    })
}

/// Serves the socket on background threads, forwarding requests to the VMM loop.
pub fn serve(listener: UnixListener, events: Sender<VmmEvent>) -> Answering {
    let answering = Answering::default();
    let counter = answering.clone();
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let events = events.clone();
                let counter = counter.clone();
                let _ = std::thread::Builder::new()
                    .name("control-conn".into())
                    .spawn(move || serve_connection(stream, &events, &counter));
            }
        })
        .map(drop)
        .unwrap_or_else(|e| eprintln!("vmig: control socket disabled: cannot start its thread: {e}"));
    answering
}

/// Counts requests whose answer is not written yet, so a VMM that is about
/// to exit (after migrating its VM away, say) first delivers them.
#[derive(Debug, Clone, Default)]
pub struct Answering(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Answering {
    /// Waits until every accepted request has its answer written, or `limit` passes.
    pub fn wait_delivered(&self, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        while self.0.load(std::sync::atomic::Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn serve_connection(stream: UnixStream, events: &Sender<VmmEvent>, answering: &Answering) {
    let Ok(mut writer) = stream.try_clone() else { return };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        match (&mut reader).take(MAX_LINE as u64).read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let response = match serde_json::from_str::<Request>(line.trim()) {
            Err(e) => Response::Error(Failure::new("invalid", format!("malformed request: {e}"))),
            Ok(request) => {
                use std::sync::atomic::Ordering::SeqCst;
                let (reply_to, reply) = channel();
                answering.0.fetch_add(1, SeqCst);
                if events.send(VmmEvent::Control(request, reply_to)).is_err() {
                    answering.0.fetch_sub(1, SeqCst);
                    return;
                }
                let response = loop {
                    match reply.recv() {
                        Ok(Response::Progress(progress)) => {
                            let _ = write_line(&mut writer, &Response::Progress(progress));
                        }
                        Ok(response) => break Some(response),
                        Err(_) => break None,
                    }
                };
                let written = response.map(|r| write_line(&mut writer, &r));
                answering.0.fetch_sub(1, SeqCst);
                match written {
                    Some(Ok(())) => continue,
                    _ => return,
                }
            }
        };
        if write_line(&mut writer, &response).is_err() {
            return;
        }
    }
}

fn write_line(writer: &mut UnixStream, response: &Response) -> std::io::Result<()> {
    let mut out = serde_json::to_vec(response)
        .unwrap_or_else(|_| br#"{"error":{"code":"failed","message":"internal"}}"#.to_vec());
    out.push(b'\n');
    writer.write_all(&out)
}

/// A connection to a VMM's control socket.
#[derive(Debug)]
pub struct ControlClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl ControlClient {
    pub fn connect(path: &Path) -> Result<Self, ControlError> {
        let stream = UnixStream::connect(path).map_err(|source| ControlError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        let writer = stream.try_clone().map_err(ControlError::Io)?;
        Ok(Self {
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Gives up on a response after `timeout` (None: wait forever).
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<(), ControlError> {
        self.writer.set_read_timeout(timeout).map_err(ControlError::Io)
    }

    pub fn request(&mut self, request: &Request) -> Result<Reply, ControlError> {
        self.request_with_progress(request, &mut |_| {})
    }

    /// Sends `request`, passing progress updates to `on_progress` until the
    /// final answer arrives.
    pub fn request_with_progress(
        &mut self,
        request: &Request,
        on_progress: &mut dyn FnMut(&Progress),
    ) -> Result<Reply, ControlError> {
        let mut line = serde_json::to_vec(request).map_err(ControlError::Malformed)?;
        line.push(b'\n');
        self.writer.write_all(&line).map_err(ControlError::Io)?;
        loop {
            let mut answer = String::new();
            let read = self.reader.read_line(&mut answer).map_err(ControlError::Io)?;
            if read == 0 {
                return Err(ControlError::Closed);
            }
            match serde_json::from_str(&answer).map_err(ControlError::Malformed)? {
                Response::Ok(reply) => return Ok(reply),
                Response::Error(failure) => return Err(ControlError::Refused(failure)),
                Response::Progress(progress) => on_progress(&progress),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_json_lines() {
        let requests = [
            Request::Status,
            Request::Save { dir: "/tmp/x".into() },
            Request::WriteMemory {
                gpa: 0x1000,
                hex: "ff".into(),
            },
        ];
        for request in requests {
            let text = serde_json::to_string(&request).unwrap();
            assert!(!text.contains('\n'));
            assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), request);
        }
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"pause"}"#).unwrap(),
            Request::Pause
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"explode"}"#).is_err());
    }
}
