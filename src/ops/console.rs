//! A VM's console wherever it runs: its end, a live follow that goes with
//! the VM from host to host, and input for the guest.
//!
//! Every byte of a VM's console has an absolute offset, counted over the
//! VM's whole life on every host (see `vmig_backend::agent::console`). A
//! follow asks the VM's host for the bytes from the offset it has reached;
//! when that host's part ends (the VM moved away), it asks the VM's new host
//! from the same offset. It hands on each byte once, in order: bytes before
//! its offset are dropped should a host repeat them, and bytes no host keeps
//! any more are reported as skipped, never silently missing.
//!
//! Input is handed to the VM's UART wherever the VM runs; while it migrates
//! (or its receive FIFO is full) the bytes wait and go to where it runs
//! next. A byte is never sent twice: when an answer is lost, the bytes it
//! was for are reported as possibly not delivered instead.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use thiserror::Error;
use vmig_backend::api::{ConsoleAccepted, ConsoleEnd, ConsoleEndReason, ConsoleLine, MAX_CONSOLE_INPUT, Request};
use vmig_backend::client::ClientError;

use super::cluster::{Cluster, ClusterError};
use super::code::Code;
use crate::inventory::HostEntry;

/// The longest a follow waits for the next line from an agent (which sends
/// one at least every second) before it takes the connection as lost.
const LINE_PATIENCE: Duration = Duration::from_secs(15);
/// How long a follow keeps trying to reach the VM's console while no host
/// can be asked, and input keeps waiting to be taken.
const PATIENCE: Duration = Duration::from_secs(60);
/// Between two tries.
const RETRY_EVERY: Duration = Duration::from_millis(200);
/// Between offers to a full receive FIFO (the guest reads it at its pace).
const FIFO_WAIT: Duration = Duration::from_millis(20);

#[derive(Debug, Error)]
pub enum ConsoleError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("{vm}'s console could not be followed for {} s", PATIENCE.as_secs())]
    Lost {
        vm: String,
        #[source]
        source: ClientError,
    },
    /// Some input was not handed to the guest; it was not sent twice.
    #[error("{left} bytes of input were not delivered to {vm}'s console")]
    Input {
        vm: String,
        left: usize,
        #[source]
        source: InputError,
    },
}

/// Why input stopped being delivered.
#[derive(Debug, Error)]
pub enum InputError {
    #[error(transparent)]
    Agent(#[from] ClientError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("it waited {} s to be taken (the VM migrating, or its guest not reading)", PATIENCE.as_secs())]
    Waited,
}

impl ConsoleError {
    pub fn code(&self) -> Code {
        match self {
            ConsoleError::Cluster(e) => e.code(),
            ConsoleError::Lost { source, .. } => Code::of_client(source),
            ConsoleError::Input { source, .. } => match source {
                InputError::Agent(e) => Code::of_client(e),
                InputError::Cluster(e) => e.code(),
                InputError::Waited => Code::TimedOut,
            },
        }
    }
}

/// Where a follow begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At this absolute offset.
    At(u64),
    /// This many bytes before the console's end.
    Last(u64),
}

/// What a follow sees, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleEvent<'a> {
    /// The console's bytes from absolute offset `at`.
    Output { at: u64, bytes: &'a [u8] },
    /// The bytes from `from` to `to` are kept on no host: the console goes
    /// on at `to`.
    Skipped { from: u64, to: u64 },
    /// The VM moved from host `from` to host `to`; its console goes on there
    /// at `at`.
    Moved { from: String, to: String, at: u64 },
    /// The VM's host could not be asked; the follow tries again (said once
    /// until it is back).
    Retrying { host: String, error: String },
}

/// Why a follow ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowEnd {
    /// The VM stopped (or started again, with a new console).
    Stopped,
    /// The VM is in the cluster no more.
    Destroyed,
    /// The caller stopped it.
    Detached,
}

impl FollowEnd {
    pub fn name(self) -> &'static str {
        match self {
            FollowEnd::Stopped => "stopped",
            FollowEnd::Destroyed => "destroyed",
            FollowEnd::Detached => "detached",
        }
    }
}

/// Where a follow ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Followed {
    /// The offset after the last byte handed on.
    pub at: u64,
    /// The host it was following last.
    pub host: String,
    pub end: FollowEnd,
}

/// The last `bytes` of `vm`'s console that its host keeps (earlier hosts'
/// included), and that host.
pub fn tail(cluster: &Cluster, vm: &str, bytes: u64) -> Result<(String, String), ClusterError> {
    let located = cluster.locate(vm)?;
    let text = cluster.client(&located.host).call(Request::Console {
        name: vm.to_string(),
        bytes,
    })?;
    Ok((located.host.name, text))
}

/// Hands on each byte once: what a host sends, less what came before.
struct Cursor<'a> {
    /// The offset of the next byte; none before the first line.
    next: Option<u64>,
    on_event: &'a mut dyn FnMut(ConsoleEvent<'_>) -> ControlFlow<()>,
}

impl Cursor<'_> {
    fn take(&mut self, line: ConsoleLine) -> ControlFlow<()> {
        match line {
            ConsoleLine::Output { at, hex } => {
                let Some(bytes) = vmig_backend::hex::decode(&hex) else {
                    return ControlFlow::Continue(());
                };
                let next = *self.next.get_or_insert(at);
                if at > next {
                    (self.on_event)(ConsoleEvent::Skipped { from: next, to: at })?;
                }
                let skip = next.saturating_sub(at).min(bytes.len() as u64) as usize;
                let at = at + skip as u64;
                let bytes = &bytes[skip..];
                if bytes.is_empty() {
                    return ControlFlow::Continue(());
                }
                self.next = Some(at + bytes.len() as u64);
                (self.on_event)(ConsoleEvent::Output { at, bytes })
            }
            ConsoleLine::Skipped { from, to } => {
                let next = *self.next.get_or_insert(from);
                if to > next {
                    self.next = Some(to);
                    (self.on_event)(ConsoleEvent::Skipped { from: next, to })?;
                }
                ControlFlow::Continue(())
            }
            // A keepalive: the position comes from bytes, or the end's answer.
            ConsoleLine::Waiting { .. } => ControlFlow::Continue(()),
        }
    }
}

/// Follows `vm`'s console from `start`, from host to host as it migrates,
/// handing each event to `on_event` (which stops it with `Break`), until
/// the VM stops or is destroyed.
pub fn follow(
    cluster: &Cluster,
    vm: &str,
    start: Start,
    on_event: &mut dyn FnMut(ConsoleEvent<'_>) -> ControlFlow<()>,
) -> Result<Followed, ConsoleError> {
    let mut host = cluster.locate(vm)?.host;
    let (mut from, back) = match start {
        Start::At(at) => (Some(at), 0),
        Start::Last(bytes) => (None, bytes),
    };
    // Since when no host could be asked, and whether that was said.
    let mut outage: Option<Instant> = None;
    let mut told = false;
    loop {
        let mut cursor = Cursor { next: from, on_event };
        let streamed = cluster
            .client(&host)
            .patience(Some(LINE_PATIENCE))
            .stream_console::<ConsoleEnd>(
                Request::ConsoleStream {
                    name: vm.to_string(),
                    from,
                    back,
                },
                &mut |line| cursor.take(line).is_continue(),
            );
        let progressed = cursor.next != from;
        from = cursor.next;
        let on_event = cursor.on_event;
        let followed = |at: Option<u64>, end| Followed {
            at: at.unwrap_or(0),
            host: host.name.clone(),
            end,
        };
        if progressed {
            outage = None;
            told = false;
        }
        match streamed {
            Ok(end) => {
                outage = None;
                told = false;
                // Bytes it did not hand on (none, unless a host erred) are
                // asked of the next: they come, or are said to be skipped.
                from = Some(from.unwrap_or(end.at));
                if end.reason == ConsoleEndReason::Stopped {
                    return Ok(followed(from, FollowEnd::Stopped));
                }
                // Moved, or gone from there: the VM is looked up again.
            }
            Err(ClientError::Aborted { .. }) => return Ok(followed(from, FollowEnd::Detached)),
            // It left between the look-up and the request.
            Err(ClientError::Status {
                code: vmig_backend::api::Code::NotFound,
                ..
            }) => {}
            Err(e) if Code::of_client(&e) == Code::Unreachable || e.answer_lost() => {
                if outage.get_or_insert_with(Instant::now).elapsed() >= PATIENCE {
                    return Err(ConsoleError::Lost {
                        vm: vm.to_string(),
                        source: e,
                    });
                }
                if !std::mem::replace(&mut told, true) {
                    let retrying = ConsoleEvent::Retrying {
                        host: host.name.clone(),
                        error: super::code::describe(&e),
                    };
                    if on_event(retrying).is_break() {
                        return Ok(followed(from, FollowEnd::Detached));
                    }
                }
            }
            Err(e) => return Err(ConsoleError::Cluster(e.into())),
        }
        if !progressed {
            std::thread::sleep(RETRY_EVERY);
        }
        let found = match cluster.locate(vm) {
            Ok(found) => found.host,
            Err(ClusterError::NoSuchVm { .. }) => return Ok(followed(from, FollowEnd::Destroyed)),
            Err(e) => {
                if outage.get_or_insert_with(Instant::now).elapsed() >= PATIENCE {
                    return Err(e.into());
                }
                // Try where it was.
                continue;
            }
        };
        if found.name != host.name {
            let moved = ConsoleEvent::Moved {
                from: host.name.clone(),
                to: found.name.clone(),
                at: from.unwrap_or(0),
            };
            if on_event(moved).is_break() {
                return Ok(followed(from, FollowEnd::Detached));
            }
        }
        host = found;
    }
}

/// Hands console input to a VM wherever it runs.
#[derive(Debug)]
pub struct Input<'a> {
    cluster: &'a Cluster,
    vm: String,
    /// Where the VM was last found.
    host: Option<HostEntry>,
}

impl<'a> Input<'a> {
    pub fn new(cluster: &'a Cluster, vm: &str) -> Self {
        Self {
            cluster,
            vm: vm.to_string(),
            host: None,
        }
    }

    /// Hands all of `bytes` to the guest's console, in order: while the VM
    /// migrates or its receive FIFO is full they wait (up to a minute
    /// without progress) and go to where it runs. An error says how many
    /// were not delivered; none is ever sent twice.
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), ConsoleError> {
        let mut rest = bytes;
        let mut since = Instant::now();
        while !rest.is_empty() {
            let not_delivered = |source: InputError, left: usize| ConsoleError::Input {
                vm: self.vm.clone(),
                left,
                source,
            };
            if since.elapsed() >= PATIENCE {
                return Err(not_delivered(InputError::Waited, rest.len()));
            }
            let host = match &self.host {
                Some(host) => host.clone(),
                None => match self.cluster.locate(&self.vm) {
                    Ok(found) => self.host.insert(found.host).clone(),
                    Err(e @ ClusterError::NoSuchVm { .. }) => {
                        return Err(not_delivered(InputError::Cluster(e), rest.len()));
                    }
                    Err(_) => {
                        std::thread::sleep(RETRY_EVERY);
                        continue;
                    }
                },
            };
            let part = &rest[..rest.len().min(MAX_CONSOLE_INPUT)];
            let answer = self
                .cluster
                .client(&host)
                .call::<ConsoleAccepted>(Request::ConsoleInput {
                    name: self.vm.clone(),
                    hex: vmig_backend::hex::encode(part),
                });
            match answer {
                Ok(ConsoleAccepted { accepted }) => {
                    let accepted = accepted.min(part.len());
                    rest = &rest[accepted..];
                    if accepted > 0 {
                        since = Instant::now();
                    } else {
                        std::thread::sleep(FIFO_WAIT);
                    }
                }
                // Migrating or arriving: nothing was taken; once it has
                // moved, its old host no longer has it and it is looked up.
                Err(ClientError::Status {
                    code: vmig_backend::api::Code::Unavailable,
                    ..
                }) => std::thread::sleep(RETRY_EVERY / 2),
                Err(ClientError::Status {
                    code: vmig_backend::api::Code::NotFound,
                    ..
                })
                | Err(ClientError::Unreachable { .. }) => {
                    self.host = None;
                    std::thread::sleep(RETRY_EVERY / 4);
                }
                // Refused (not running), or the answer lost: the bytes may
                // have been taken, so they are not offered again.
                Err(e) => return Err(not_delivered(InputError::Agent(e), rest.len())),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(lines: Vec<ConsoleLine>, from: Option<u64>) -> (Vec<String>, Option<u64>) {
        let mut seen = Vec::new();
        let mut on_event = |event: ConsoleEvent<'_>| {
            seen.push(match event {
                ConsoleEvent::Output { at, bytes } => format!("{at}:{}", String::from_utf8_lossy(bytes)),
                ConsoleEvent::Skipped { from, to } => format!("skipped {from}..{to}"),
                other => format!("{other:?}"),
            });
            ControlFlow::Continue(())
        };
        let mut cursor = Cursor {
            next: from,
            on_event: &mut on_event,
        };
        for line in lines {
            let _ = cursor.take(line);
        }
        let next = cursor.next;
        (seen, next)
    }

    #[test]
    fn each_byte_is_handed_on_once_and_a_gap_is_said() {
        let (seen, next) = run(
            vec![
                ConsoleLine::output(10, b"HB seq=1\n"),
                // A host that repeats what came before: only the new part.
                ConsoleLine::output(15, b"q=1\nHB seq=2\n"),
                ConsoleLine::output(19, b"HB"),
                ConsoleLine::Waiting { at: 21 },
                ConsoleLine::output(30, b"x"),
            ],
            Some(10),
        );
        assert_eq!(
            seen,
            ["10:HB seq=1\n", "19:HB seq=2\n", "skipped 28..30", "30:x"],
            "{seen:?}"
        );
        assert_eq!(next, Some(31));
    }

    #[test]
    fn a_follow_from_the_end_starts_where_the_host_says() {
        let (seen, next) = run(vec![ConsoleLine::output(5, b"login: ")], None);
        assert_eq!(seen, ["5:login: "]);
        assert_eq!(next, Some(12));
        let (seen, next) = run(vec![ConsoleLine::Waiting { at: 40 }], None);
        assert!(seen.is_empty());
        assert_eq!(next, None, "a keepalive is no position");
    }
}
