//! Fault injection for tests: `VMIG_TEST_FAULT=<point>` in a receiver's
//! environment makes it fail at that point of the handoff, the way a cut link
//! or a crashed host would, so tests can check that exactly one copy runs.
//!
//! Points: `close-before-ready` (drop every stream once the state arrived),
//! `close-after-go` (resume on Go but never say Running), `ignore-go` (treat
//! Go as lost), `slow-start` (say Running, then take a second to start the
//! vCPUs, like a host that is slow at the worst moment). In an agent:
//! `agent-exit-before-finish` (the source's agent dies once its VMM handed the
//! VM over, before it tells either side; with `VMIG_TEST_FAULT_HOST=NAME`,
//! only the agent of host NAME). Unset in production; an unknown
//! value is ignored.

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
