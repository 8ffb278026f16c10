//! Counters each CPU publishes for the BSP's heartbeat, one cache line per CPU.
//! Every counter has a single writer (its CPU), except `max_gap_ns`, which the BSP
//! resets at each heartbeat.
//!
//! Time lost: a CPU's workload loop reads the clock once per iteration, which
//! takes well under a microsecond. A longer gap is time the CPU did not run
//! the guest: the host ran something else on its core, the VMM paused it, or
//! a fault went out to the host (dirty logging write-protects pages). Gaps
//! over [`LOST_GAP_NS`] are summed, whole, into `lost_ns`, which is never reset
//! and migrates with the guest: the difference between two heartbeats is the
//! time the guest lost in between.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::boot::MAX_CPUS;
use crate::serial::Line;

#[repr(align(64))]
struct CpuStats {
    online: AtomicBool,
    fill_done: AtomicBool,
    /// Working-set page writes (the fill is not counted).
    written: AtomicU64,
    /// Pages whose 512 words were all checked.
    verified: AtomicU64,
    /// Words found different from their stamp.
    errors: AtomicU64,
    /// Pages written by the fill.
    filled: AtomicU64,
    /// Largest gap between two workload-loop iterations since the last heartbeat.
    max_gap_ns: AtomicU64,
    /// Sum of the gaps over [`LOST_GAP_NS`] since boot.
    lost_ns: AtomicU64,
}

/// A loop gap longer than this is time lost (a host timer tick costs a few
/// microseconds and is not counted).
pub const LOST_GAP_NS: u64 = 50_000;

static CPUS: [CpuStats; MAX_CPUS] = [const {
    CpuStats {
        online: AtomicBool::new(false),
        fill_done: AtomicBool::new(false),
        written: AtomicU64::new(0),
        verified: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        filled: AtomicU64::new(0),
        max_gap_ns: AtomicU64::new(0),
        lost_ns: AtomicU64::new(0),
    }
}; MAX_CPUS];

/// Integrity errors are printed only up to this many lines in total.
const MAX_ERROR_LINES: u32 = 8;
static ERROR_LINES: AtomicU32 = AtomicU32::new(0);

pub fn mark_online(cpu: usize) {
    CPUS[cpu].online.store(true, Ordering::Release);
}

pub fn is_online(cpu: usize) -> bool {
    CPUS[cpu].online.load(Ordering::Acquire)
}

pub fn online_count() -> u64 {
    CPUS.iter().filter(|c| c.online.load(Ordering::Relaxed)).count() as u64
}

/// Per-CPU publishing handle, owned by that CPU's workload loop.
#[derive(Debug)]
pub struct Publisher {
    cpu: usize,
}

impl Publisher {
    pub fn new(cpu: usize) -> Self {
        Publisher { cpu }
    }

    fn me(&self) -> &'static CpuStats {
        &CPUS[self.cpu]
    }

    pub fn add_written(&self, n: u64) {
        let c = &self.me().written;
        c.store(c.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }

    pub fn add_verified(&self, n: u64) {
        let c = &self.me().verified;
        c.store(c.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }

    pub fn add_filled(&self, n: u64) {
        let c = &self.me().filled;
        c.store(c.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }

    pub fn set_fill_done(&self) {
        self.me().fill_done.store(true, Ordering::Release);
    }

    #[inline]
    pub fn note_gap(&self, gap_ns: u64) {
        let g = &self.me().max_gap_ns;
        if gap_ns > g.load(Ordering::Relaxed) {
            g.fetch_max(gap_ns, Ordering::Relaxed);
        }
        if gap_ns > LOST_GAP_NS {
            let lost = &self.me().lost_ns;
            lost.store(lost.load(Ordering::Relaxed) + gap_ns, Ordering::Relaxed);
        }
    }

    /// Count `mismatches` wrong words in a page and print the first, while the
    /// global line budget lasts.
    pub fn integrity_error(&self, addr: u64, expected: u64, found: u64, mismatches: u64) {
        let c = &self.me().errors;
        c.store(c.load(Ordering::Relaxed) + mismatches, Ordering::Relaxed);
        if ERROR_LINES.fetch_add(1, Ordering::Relaxed) < MAX_ERROR_LINES {
            Line::new()
                .str("ERR integrity addr=")
                .hex(addr)
                .str(" expected=")
                .hex(expected)
                .str(" found=")
                .hex(found)
                .emit();
        }
    }
}

/// Sums over all CPUs, as the heartbeat reports them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Totals {
    pub written: u64,
    pub verified: u64,
    pub errors: u64,
    pub filled: u64,
}

pub fn totals() -> Totals {
    CPUS.iter().fold(Totals::default(), |t, c| Totals {
        written: t.written + c.written.load(Ordering::Relaxed),
        verified: t.verified + c.verified.load(Ordering::Relaxed),
        errors: t.errors + c.errors.load(Ordering::Relaxed),
        filled: t.filled + c.filled.load(Ordering::Relaxed),
    })
}

pub fn fill_done(cpus: usize) -> bool {
    CPUS[..cpus].iter().all(|c| c.fill_done.load(Ordering::Acquire))
}

/// The time all CPUs lost since boot, summed.
pub fn lost_ns() -> u64 {
    CPUS.iter().map(|c| c.lost_ns.load(Ordering::Relaxed)).sum()
}

/// The largest loop gap of any CPU since the previous call, which resets it.
pub fn take_max_gap_ns() -> u64 {
    CPUS.iter()
        .map(|c| c.max_gap_ns.swap(0, Ordering::Relaxed))
        .max()
        .unwrap_or(0)
}
