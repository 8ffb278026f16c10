//! Live migration: move a running VM from one VMM process to another over TCP
//! so that the guest notices a few milliseconds at most, nothing is lost, and
//! exactly one copy runs whatever happens.
//!
//! # Protocol (version 1)
//!
//! Frames and their parsing are in [`protocol`]. A migration uses `N` TCP
//! streams; stream 0 is the control stream, and every stream carries pages.
//!
//! ```text
//! sender (source VMM)                         receiver (target VMM)
//! ── stream 0: Hello{version, session, VM config, CPUID, streams} ──►
//!                                             checks version, config and CPU
//!                                             compatibility; creates the VM
//! ◄─────────── Accept  (or Abort{reason}: nothing was sent, nothing changes)
//! ── streams 1..N: Join{session, index} ─────►
//! ── round 0: Memory batches (resident, non-zero pages) on all streams ─►
//! ── RoundEnd{0} on every stream ────────────►
//! ◄─────────── RoundDone{0}                    (all streams drained: a later
//!                                              round can never be overtaken)
//! ── rounds 1..k: dirty pages, RoundEnd, ◄ RoundDone ...
//!    (switch over once the expected downtime is under the limit and the
//!    dirty set no longer shrinks fast: up to five more live rounds while each
//!    leaves at most 3/4 of the one before and its pages would take over
//!    0.5 ms to send paused)
//! [source pauses its vCPUs]
//! ── final round: last dirty pages, RoundEnd ─► ◄ RoundDone
//! ── State{vCPUs, irqchip, PIT, clock, devices} ─►
//!                                             restores it, VM still paused
//! ◄─────────── Ready
//! ── Go ──────────────────────────────────────►  records Running (the commit)
//! ◄─────────── Running                         then starts the vCPUs
//! [source destroys its copy]
//! ```
//!
//! # Exactly one copy runs
//!
//! The receiver resumes only on `Go`, and only after it holds the complete
//! state; it records each session's [`protocol::Outcome`] and never changes a
//! decision once taken. On `Go` it first checks that every vCPU can start,
//! then records `Running`, answers, and only then starts the vCPUs: the
//! answer is a commitment, and the source's wake-up never waits behind a
//! guest that already spins on every core. Should the vCPUs fail to start
//! after all (a thread that vanished in between), the target halts what did
//! start and records `Discarded`: a source that did not hear `Running`
//! resumes, one that did has ended its copy, as if the target had crashed. The source sends `Go` only after `Ready`, and:
//! - any failure before `Go` is sent proves the target did not resume: the source
//!   resumes its vCPUs (automatic rollback) and the target discards its copy;
//! - after `Go`, only `Running` or the receiver's recorded outcome decides. If
//!   the link fails there, the source asks the receiver on a new connection
//!   (`Query{session}` → `Outcome`): `Running` means the source is done,
//!   `Discarded` means it resumes. If the receiver cannot be reached, the source
//!   stays paused and reports the migration *in doubt*, with the commands that
//!   resolve it; it never guesses.
//! - a receiver waiting for `Go` gives up after [`GO_TIMEOUT`] and records
//!   `Discarded`, so a late `Go` can no longer start a second copy.

pub mod dirty;
pub mod fault;
pub mod gate;
pub mod protocol;
pub mod receiver;
pub mod sender;
pub mod stats;
pub mod transport;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use protocol::Token;
pub use stats::{Phase, Progress, Report};

/// How long each side of a migration waits for the other before it gives
/// up, so that no process that dies, stops or goes silent, and no link that
/// drops, can hold a migration or a receiving VMM for ever. Both sides take
/// them from the agent's config (`[timeouts]`); a VMM run by hand uses the
/// defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// A receiving VMM that no sender has reached this long after its start,
    /// or after the last keepalive from the sender's agent, ends.
    #[serde(default = "default_accept_s")]
    pub accept_s: u64,
    /// A stream on which nothing moves for this long has failed, on either
    /// side (and TCP gives up on unacknowledged data after as long).
    #[serde(default = "default_stream_s")]
    pub stream_s: u64,
    /// The switchover: a paused sender waits this long for each answer of
    /// the receiver, and a receiver holding the complete state this long
    /// for `Go` before it discards the VM. A sender that lost the link after
    /// `Go` asks the receiver for another `handoff_s` + 5 s.
    #[serde(default = "default_handoff_s")]
    pub handoff_s: u64,
}

fn default_accept_s() -> u64 {
    30
}

fn default_stream_s() -> u64 {
    30
}

fn default_handoff_s() -> u64 {
    10
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            accept_s: default_accept_s(),
            stream_s: default_stream_s(),
            handoff_s: default_handoff_s(),
        }
    }
}

impl Timeouts {
    pub fn accept(&self) -> Duration {
        Duration::from_secs(self.accept_s.max(1))
    }

    pub fn stream(&self) -> Duration {
        Duration::from_secs(self.stream_s.max(1))
    }

    pub fn handoff(&self) -> Duration {
        Duration::from_secs(self.handoff_s.max(1))
    }

    /// Checks that each is at least a second and at most a day.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("accept_s", self.accept_s),
            ("stream_s", self.stream_s),
            ("handoff_s", self.handoff_s),
        ] {
            if !(1..=86_400).contains(&value) {
                return Err(format!("{name}: {value} is not between 1 and 86400 seconds"));
            }
        }
        Ok(())
    }
}

/// What to do when the migration's time limit expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeoutAction {
    /// Give up: the VM keeps running on the source.
    Cancel,
    /// Switch over now, whatever the downtime.
    Force,
}

/// How a migration is run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationOptions {
    /// Switch over once the expected downtime is below this.
    pub downtime_limit_ms: u64,
    /// Cap on the bytes per second sent over all streams (None: no cap).
    pub bandwidth_limit: Option<u64>,
    /// Time limit for the whole migration.
    pub timeout_s: u64,
    pub timeout_action: TimeoutAction,
    /// TCP streams (the control stream included).
    pub streams: u32,
    /// Throttle the vCPUs when the guest dirties memory faster than it is sent.
    pub auto_converge: bool,
    /// Hash all guest memory on both sides at switchover and refuse the
    /// handoff if they differ (adds the hashing time to the downtime).
    #[serde(default)]
    pub verify_memory: bool,
    /// The target's token for this migration (from its agent); none when
    /// the target was started by hand without one.
    #[serde(default)]
    pub token: Token,
    /// The migration's id (given by its agents), recorded by the source VMM
    /// when it hands the VM over.
    #[serde(default)]
    pub migration_id: Option<String>,
    #[serde(default)]
    pub timeouts: Timeouts,
}

impl Default for MigrationOptions {
    fn default() -> Self {
        Self {
            downtime_limit_ms: 50,
            bandwidth_limit: None,
            timeout_s: 600,
            timeout_action: TimeoutAction::Cancel,
            streams: 2,
            auto_converge: true,
            verify_memory: false,
            token: Token::default(),
            migration_id: None,
            timeouts: Timeouts::default(),
        }
    }
}

/// Most streams one migration may open.
pub const MAX_STREAMS: u32 = 16;
/// The lowest bandwidth cap accepted: below it a 1 MiB batch would keep a
/// stream silent for longer than a second.
pub const MIN_BANDWIDTH: u64 = 1 << 20;

impl MigrationOptions {
    /// Checks what can be checked before anything is started or connected.
    pub fn validate(&self) -> Result<(), String> {
        if self.streams == 0 || self.streams > MAX_STREAMS {
            return Err(format!("streams: {} is not between 1 and {MAX_STREAMS}", self.streams));
        }
        if let Some(limit) = self.bandwidth_limit
            && limit < MIN_BANDWIDTH
        {
            return Err(format!("bandwidth: {limit} bytes/s is below the minimum of 1M"));
        }
        if self.timeout_s == 0 {
            return Err("timeout: must be at least 1 second".into());
        }
        self.timeouts.validate().map_err(|e| format!("timeouts: {e}"))
    }
}
