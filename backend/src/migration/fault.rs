//! Fault injection for tests. Unset in production: every function here is a
//! no-op unless its environment variable is set, and an unknown value is
//! ignored.
//!
//! **Faults**: `VMIG_TEST_FAULT=<point>` in a receiver's environment makes it
//! fail at that point of the handoff, the way a cut link or a crashed host
//! would: `close-before-ready` (drop every stream once the state arrived),
//! `close-after-go` (resume on Go but never say Running), `ignore-go` (treat
//! Go as lost), `slow-start` (say Running, then take a second to start the
//! vCPUs, like a host that is slow at the worst moment). In an agent:
//! `agent-exit-before-finish` (the source's agent dies once its VMM handed the
//! VM over, before it tells either side; with `VMIG_TEST_FAULT_HOST=NAME`,
//! only the agent of host NAME).
//!
//! **Holds**: `VMIG_TEST_HOLDS=DIR` lets a test stop a migration at an exact
//! point and act there (kill or stop a process, cut a link) before letting it
//! go on. A point is armed by creating `DIR/<point>.arm`; the first process
//! to reach it renames that file to `DIR/<point>.held`, writes its pid into
//! it, and waits until `DIR/<point>.release` exists, which it removes. Each
//! arming holds once. The lab's agents pass their environment to their VMMs.

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where a receiver can be made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    CloseBeforeReady,
    CloseAfterGo,
    IgnoreGo,
    SlowStart,
    AgentExitBeforeFinish,
}

/// The fault this process was asked to inject, if any.
pub fn injected() -> Option<Fault> {
    match std::env::var("VMIG_TEST_FAULT").ok()?.as_str() {
        "close-before-ready" => Some(Fault::CloseBeforeReady),
        "close-after-go" => Some(Fault::CloseAfterGo),
        "ignore-go" => Some(Fault::IgnoreGo),
        "slow-start" => Some(Fault::SlowStart),
        "agent-exit-before-finish" => Some(Fault::AgentExitBeforeFinish),
        _ => None,
    }
}

/// Whether the agent of host `name` is to inject `fault`.
pub fn injected_in_agent(name: &str, fault: Fault) -> bool {
    injected() == Some(fault) && std::env::var("VMIG_TEST_FAULT_HOST").map_or(true, |host| host == name)
}

/// The points of a migration where a test can hold it, in the order a
/// migration passes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Source agent: the target prepared its receiver; the VMM has not been
    /// told to send yet.
    Prepared,
    /// Source VMM: the first pass is under way (its first batch is queued).
    FirstPass,
    /// Source VMM: a later round is about to be sent.
    LaterRound,
    /// Source VMM: paused, the last pages and the state are on their way,
    /// Ready has not come.
    FinalState,
    /// Target VMM: Go has arrived; nothing is committed yet.
    AfterGo,
    /// Source VMM: Running has arrived; the source has not acted on it.
    AfterRunning,
    /// Source agent: its VMM reported the VM moved; neither agent has
    /// recorded the end yet.
    Finish,
}

impl Hold {
    pub const ALL: [Hold; 7] = [
        Hold::Prepared,
        Hold::FirstPass,
        Hold::LaterRound,
        Hold::FinalState,
        Hold::AfterGo,
        Hold::AfterRunning,
        Hold::Finish,
    ];

    /// The name of its files.
    pub fn name(self) -> &'static str {
        match self {
            Hold::Prepared => "prepared",
            Hold::FirstPass => "first-pass",
            Hold::LaterRound => "later-round",
            Hold::FinalState => "final-state",
            Hold::AfterGo => "after-go",
            Hold::AfterRunning => "after-running",
            Hold::Finish => "finish",
        }
    }
}

/// The longest a process waits at a hold (a test that forgot it).
const HOLD_LIMIT: Duration = Duration::from_secs(600);

/// Waits at `point` if a test armed it; returns at once otherwise.
pub fn hold(point: Hold) {
    let Some(dir) = std::env::var_os("VMIG_TEST_HOLDS").map(PathBuf::from) else {
        return;
    };
    let armed = dir.join(format!("{}.arm", point.name()));
    let held = dir.join(format!("{}.held", point.name()));
    if std::fs::rename(&armed, &held).is_err() {
        return;
    }
    let _ = std::fs::write(&held, std::process::id().to_string());
    let release = dir.join(format!("{}.release", point.name()));
    let deadline = Instant::now() + HOLD_LIMIT;
    while std::fs::remove_file(&release).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
}
