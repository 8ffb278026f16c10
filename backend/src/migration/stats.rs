//! Migration statistics as plain data; only front ends draw them.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Connecting,
    /// Copying memory while the VM runs. The switchover that follows the last
    /// round is not reported: nothing is until the final report, so that no
    /// reader of progress competes for the CPU while the guest is stopped.
    Precopy,
}

/// A snapshot of a running migration, streamed as each round starts (and a
/// few times a second within a long one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub phase: Phase,
    pub round: u32,
    pub elapsed_ms: u64,
    pub bytes_sent: u64,
    /// Dirty bytes waiting to be sent.
    pub bytes_remaining: u64,
    pub memory_bytes: u64,
    /// How fast the guest dirtied memory during the last round.
    pub dirty_rate_bps: f64,
    /// Send rate of the last round.
    pub throughput_bps: f64,
    /// Pause the guest would see if it switched over now.
    pub expected_downtime_ms: f64,
    /// Share of time the vCPUs are held paused by auto-converge.
    pub throttle_pct: u8,
}

/// Pre-copy gave up the guest's share of its cores (its threads went to
/// the VMM's priority).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ShareRelease {
    /// From the start of the migration.
    pub at_ms: f64,
    pub why: Release,
}

/// Why pre-copy gave up the guest's share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Release {
    /// The guest dirtied memory faster than the copy sent it, twice in a
    /// row: the copy took the CPU before auto-converge would throttle.
    Converge,
    /// At the rate the share left it, the full pass would have outlasted
    /// half the time limit.
    TimeLimit,
    /// The copy's threads waited for a CPU many times longer than they ran
    /// (more than 9x): no core was free, and the share would have
    /// stretched the migration manyfold.
    Starved,
}

/// How a migration went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub total_ms: f64,
    /// From pausing the source's vCPUs to the arrival of the target's
    /// `Running` (the kernel's receive timestamp where it gives one, so the
    /// source's own wake-up after the fact is not counted). The target sends
    /// `Running` just before it starts the vCPUs.
    pub downtime_ms: f64,
    /// From asking the source to pause to its first vCPU out of the guest:
    /// the start of the downtime the guest does not see.
    #[serde(default)]
    pub stop_ms: f64,
    /// The target's part after `Running`: from writing it to its last vCPU
    /// entering the guest (none when the target did not say in time).
    #[serde(default)]
    pub resume_ms: Option<f64>,
    /// How long the guest stood still, as the two VMMs saw it: from the
    /// source's first vCPU out of the guest to the target's last one in
    /// (`downtime_ms - stop_ms`, less `Running`'s way back, estimated as
    /// half the round trip of Go, plus `resume_ms`). What the guest itself
    /// sees adds its first steps on the new host (its memory's mappings
    /// there are built as it touches it).
    #[serde(default)]
    pub blackout_ms: Option<f64>,
    /// Parts of the downtime: last pages, state capture + transfer, handoff.
    pub final_pages_ms: f64,
    pub state_ms: f64,
    pub handoff_ms: f64,
    pub bytes_sent: u64,
    pub pages_sent: u64,
    pub zero_pages_skipped: u64,
    /// Pages never touched by the guest, neither read nor sent.
    pub untouched_pages: u64,
    pub rounds: u32,
    pub final_round_bytes: u64,
    pub streams: u32,
    pub max_throttle_pct: u8,
    /// Average send rate over the whole migration.
    pub throughput_bps: f64,
    /// Send rate of the first full pass (round 0) over every resident page.
    #[serde(default)]
    pub full_pass_bps: f64,
    /// The full pass's rate while the guest's share did not hold it back
    /// (share 0, or after pre-copy gave the share up within the pass):
    /// what the link and the hosts' CPUs give a copy, as forecasts want it.
    /// None when the share held the copy back for the whole pass.
    #[serde(default)]
    pub full_speed_bps: Option<f64>,
    /// True when the time limit forced the switchover: what was left was
    /// sent with the VM paused, which is why the downtime was long.
    pub forced: bool,
    /// When the time limit forced it (from the start of the migration); the
    /// switchover began once the round under way had drained.
    #[serde(default)]
    pub forced_at_ms: Option<f64>,
    /// With `verify_memory`: the content hash both sides agreed on.
    pub memory_hash: Option<u64>,
    /// How the target announced the VM's network cards (none without cards).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<crate::vmm::AnnounceOptions>,
    /// Frames that reached the source's cards while it was paused, carried
    /// to the target's guest.
    #[serde(default)]
    pub frames_carried: u64,
    /// The streams' TLS 1.3 suite (`TLS13_AES_128_GCM_SHA256`); none when
    /// they were plaintext.
    #[serde(default)]
    pub encryption: Option<String>,
    /// The guest's share of its vCPUs' time the migration kept to (percent).
    #[serde(default)]
    pub guest_share: u8,
    /// When pre-copy stopped keeping it, and why.
    #[serde(default)]
    pub share_released: Option<ShareRelease>,
    /// From the start to the last pause: the guest ran, live, meanwhile.
    #[serde(default)]
    pub live_ms: f64,
    /// How long each of the guest's vCPUs waited, runnable, for a CPU the
    /// host gave to something else while the migration was live (mean
    /// over vCPUs, from the kernel's scheduler statistics; none where it
    /// keeps none): the guest's own time lost to the migration and to
    /// whatever else runs on the host.
    #[serde(default)]
    pub vcpu_wait_ms: Option<f64>,
}
