//! Live migration: move a running VM from one VMM process to another over TCP
//! so that the guest notices a few milliseconds at most, nothing is lost, and
//! exactly one copy runs whatever happens.
//!
//! # Protocol (version 6)
//!
//! Frames and their parsing are in [`protocol`]. A migration uses `N` TCP
//! streams; stream 0 is the control stream, and every stream carries pages.
//! Every connection to a receiver passes its [`gate`] first: it must say its
//! first frame (Hello, Join, Query or Keepalive) within 3 s, with the
//! migration's token where one is needed, or it is dropped; connections are
//! read concurrently, so none can hold up another.
//!
//! ```text
//! sender (source VMM)                         receiver (target VMM)
//!    (while the source's agent waits for a slot: Keepalive{token} on new
//!     connections, each restarting the receiver's accept time)
//! ── stream 0: Hello{version, session, VM config, CPUID, streams, token,
//!               boot id, guest share} ──►
//!                                             checks version, config and CPU
//!                                             compatibility; creates the VM
//! ◄─────────── Accept{N}  (or Abort{reason}: nothing was sent, nothing
//!              changes; N: the streams it takes, at most those offered,
//!              fewer when the sender let it choose by its free cores)
//! ── streams 1..N: Join{session, index, token} ─►
//! ── round 0: Memory batches (resident, non-zero pages) on all streams ─►
//! ── RoundEnd{0} on every stream ────────────►
//! ◄─────────── RoundDone{0}                    (all streams drained: a later
//!                                              round can never be overtaken)
//! ── rounds 1..k: dirty pages, RoundEnd, ◄ RoundDone ...
//!    (switch over once the expected downtime is under the limit and the
//!    dirty set no longer shrinks fast: up to five more live rounds while each
//!    leaves at most 3/4 of the one before and its pages would take over
//!    0.5 ms to send paused; or at once when the time limit forces it)
//!    (pre-copy threads on both sides run below the guest: [`cpu`])
//! [source pauses its vCPUs: the switchover; a cancel is refused from here;
//!  its migration threads are raised above everything the host runs]
//! ── Paused ──────────────────────────────────►  raises its threads too;
//!                                              announces the VM's cards
//!                                              (RARP), holds what arrives
//! ── final round: last dirty pages, RoundEnd ─► ◄ RoundDone
//! ── State{vCPUs, irqchip, PIT, clock, devices} ─►
//!                                             restores it, VM still paused
//! ◄─────────── Ready
//! [source records its handoff]
//! ── Frames (what its cards got while paused) ► held for the guest
//! ── Go ──────────────────────────────────────►  records its commit, then
//!                                              Running in its outcomes
//! ◄─────────── Running                         then starts the vCPUs and
//!                                              announces the cards again
//! [source ends its copy, at the lowest priority]
//! ```
//!
//! # Timeouts
//!
//! Each side waits for the other only so long ([`Timeouts`], set by the
//! agents' `[timeouts]`): a receiver that no sender reached within
//! `accept_s` of its start or of the last keepalive ends; a stream on which
//! nothing moves for `stream_s` has failed on either side (the sender's
//! writes time out, TCP gives up on unacknowledged data, the receiver's
//! reads time out); once paused, the sender waits `handoff_s` for each of
//! RoundDone, Ready and Running, and a receiver holding the state waits
//! `handoff_s` for Go. The time limit of the migration (`--timeout`) is
//! looked at after every batch queued and while waiting for the receiver:
//! it overshoots by at most the batches already queued (5 of 1 MiB per
//! stream, at the link's rate) and, with `force`, the drain of the round
//! under way before the pause; what was left is then sent paused, which the
//! report says (`forced`, `forced_at_ms`, `final_round_bytes`).
//!
//! # Exactly one copy
//!
//! At most one copy of a VM runs, whichever process dies, stops or restarts
//! and whichever link drops, at any phase. The argument, in three parts:
//!
//! **1. Only one place starts a target copy, and it starts once.** A receiver
//! starts its vCPUs only in `await_go`, after `Go`, after holding the
//! complete state, and only after it *committed*: it wrote its commit to its
//! VMM's record ([`crate::runtime::record`]), then recorded `Running` for the
//! session in its gate (what `Query` answers), then answered `Running`.
//! Writing the record and recording `Running` happen under the gate's lock,
//! exclusive with the process's own end (SIGTERM): a receiver that is
//! ending cannot commit, and one that committed keeps the VM. A commit is
//! never taken back: should the vCPUs then fail to start, the VM is lost
//! there (its record says committed), never handed back. A receiver that
//! gave up (no Go within `handoff_s`, a stream failed, no sender) records
//! `Discarded`, and a late Go can no longer commit.
//!
//! **2. A source copy runs again only when the target provably never
//! committed.** The source writes its handoff to its record before it can
//! send `Go`. Any failure before that proves the target never received
//! `Go`, so it cannot commit: the source resumes (rollback). After it, the
//! source resumes only on the target's own word that it discarded the
//! session: `Outcome = Discarded` from the receiver, or, through the agents,
//! [`crate::api::IncomingState::Gone`], which an agent answers only when no
//! receiving VMM of that migration is alive without having committed (it
//! ended without a commit record, or says it gave up, or the journal says it
//! was discarded). Silence is never taken for `Gone`: a VMM that is stopped
//! or does not answer may still act on a `Go` it holds.
//!
//! **3. Agents start or keep a copy only from these facts.** A source agent
//! writes the migration (its id and target) into the VM's record when it
//! claims the VM, before anything moves, and clears it only once the outcome
//! is known; while it is there, `vm start` is refused. A restarted agent,
//! or one whose VMM died or stopped answering, decides where the VM is by
//! [`crate::agent::judge`]: from the VMM's status, its record, and the
//! target agent's answer. When the target cannot say, the VM is *in doubt*:
//! nothing starts it, and the agents keep asking. A target agent keeps an
//! arrival whose VMM committed, whatever else it hears, and ends a receiver
//! only when the source says it never sent `Go`.
//!
//! So for any fault: before the source's handoff record, only the source
//! can run the VM (part 1: no Go, no commit); after it, only the target's
//! commit decides, and the source copy stays stopped until the target
//! says it never committed (part 2); and no agent restarts a copy without
//! those facts (part 3). What the matrix in `docs/reliability.md` tries.
//!
//! What this does not cover: a host that loses power loses its page cache,
//! and with it a record written a moment before. A target whose commit was
//! lost that way had, at most, run the guest for moments before the crash;
//! its agent then answers `Gone`, and the source, still paused, resumes from
//! the state it sent: the brief run on the crashed host is lost, as with
//! any crash, and no two copies ever run at once.

pub mod cpu;
pub mod dirty;
pub mod fault;
pub mod gate;
pub mod link;
pub mod protocol;
pub mod receiver;
pub mod sender;
pub mod stats;
pub mod tls;
pub mod transport;

/// What the VM's side of the engine could not do, through the
/// [`sender::SourceVm`] and [`receiver::TargetVm`] seams: the VMM's own
/// error, kept whole, so that its causes reach the message and a caller can
/// look at its type.
pub type VmSideError = Box<dyn std::error::Error + Send + Sync + 'static>;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use protocol::Token;
pub use stats::{Phase, Progress, Release, Report, ShareRelease};

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
#[serde(deny_unknown_fields)]
pub struct MigrationOptions {
    /// Switch over once the expected downtime is below this.
    pub downtime_limit_ms: u64,
    /// Cap on the bytes per second sent over all streams (None: no cap).
    pub bandwidth_limit: Option<u64>,
    /// Time limit for the whole migration.
    pub timeout_s: u64,
    pub timeout_action: TimeoutAction,
    /// TCP streams (the control stream included); 0: as many as both ends
    /// have free cores ([`cpu`]).
    pub streams: u32,
    /// The share of its vCPUs' time (percent) a guest keeps during pre-copy
    /// where the migration's threads contend for its cores; 0 gives the
    /// migration the VMM's priority, above the guest ([`cpu`]).
    #[serde(default = "default_guest_share")]
    pub guest_share: u8,
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
    /// How the target tells the network where the VM's cards are now.
    #[serde(default)]
    pub announce: crate::vmm::AnnounceOptions,
}

impl Default for MigrationOptions {
    fn default() -> Self {
        Self {
            downtime_limit_ms: 50,
            bandwidth_limit: None,
            timeout_s: 600,
            timeout_action: TimeoutAction::Cancel,
            streams: 0,
            guest_share: cpu::DEFAULT_GUEST_SHARE,
            auto_converge: true,
            verify_memory: false,
            token: Token::default(),
            migration_id: None,
            timeouts: Timeouts::default(),
            announce: crate::vmm::AnnounceOptions::default(),
        }
    }
}

fn default_guest_share() -> u8 {
    cpu::DEFAULT_GUEST_SHARE
}

/// Most streams one migration may open.
pub const MAX_STREAMS: u32 = 16;

/// A stream count as an operator writes it (`--streams`, a runbook's
/// `streams`): `auto` (0: as the hosts' free cores say) or 1 to
/// [`MAX_STREAMS`].
pub fn parse_streams(text: &str) -> Result<u32, String> {
    if text == "auto" {
        return Ok(0);
    }
    match text.parse::<u32>() {
        Ok(n) if (1..=MAX_STREAMS).contains(&n) => Ok(n),
        _ => Err(format!(
            "{text:?} is neither `auto` nor a number of streams from 1 to {MAX_STREAMS}"
        )),
    }
}
/// The lowest bandwidth cap accepted: below it a 1 MiB batch would keep a
/// stream silent for longer than a second.
pub const MIN_BANDWIDTH: u64 = 1 << 20;

impl MigrationOptions {
    /// Checks what can be checked before anything is started or connected.
    pub fn validate(&self) -> Result<(), String> {
        if self.streams > MAX_STREAMS {
            return Err(format!(
                "streams: {} is not between 1 and {MAX_STREAMS} (or 0 for automatic)",
                self.streams
            ));
        }
        if self.guest_share > 100 {
            return Err(format!("guest-share: {}% is not a percentage", self.guest_share));
        }
        if let Some(limit) = self.bandwidth_limit
            && limit < MIN_BANDWIDTH
        {
            return Err(format!("bandwidth: {limit} bytes/s is below the minimum of 1M"));
        }
        if self.timeout_s == 0 {
            return Err("timeout: must be at least 1 second".into());
        }
        self.announce.validate()?;
        self.timeouts.validate().map_err(|e| format!("timeouts: {e}"))
    }
}
