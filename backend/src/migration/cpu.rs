//! The CPU policy of a migration: how much of the host's CPU its threads
//! may take from guests, and how many streams it opens.
//!
//! A migration's threads (the engine's, and one per stream on each side)
//! copy memory as fast as they can. Where the host has cores to spare they
//! run there and cost the guest nothing. Where it has none, every
//! microsecond they run is taken from a vCPU: the guest stands still, and
//! sees its time lost. So:
//!
//! - **Pre-copy** threads run below the guests' vCPUs, at the niceness that
//!   leaves a guest `guest_share` percent of its core when they contend for
//!   it ([`precopy_nice`]). The scheduler shares a contended core in
//!   proportion to weight; a vCPU (nice 0, weight 1024) beside migration
//!   threads of weight `w` keeps `1024 / (1024 + k·w)` of it, with `k`
//!   migration threads per core ([`THREADS_PER_CORE`], measured here: a
//!   sender, a receiver and the engines' own threads over two cores).
//! - **The switchover** is the opposite: the guest is stopped, every thread
//!   that moves it on is raised to [`VMM_NICE`], above everything
//!   else a host runs, so the pause waits for no time slice.
//! - **After the handoff** the source's VMM only tears down: it drops to
//!   [`TEARDOWN_NICE`] so that freeing gigabytes does not take the target's
//!   first second (on one machine, the same cores).
//! - **Streams**: each stream costs a core on each side while it copies. By
//!   default the receiver takes as many as both ends have free cores
//!   ([`free_cores`], measured when the migration starts), counted once
//!   when both ends are one machine ([`boot_id`]): more streams than cores
//!   only make threads take turns on a guest's core.

use std::sync::Mutex;
use std::time::Duration;

/// The niceness of the VMM's own threads (its loop, control, the engine
/// outside pre-copy) and of every thread that moves a stopped guest on:
/// above the guests' vCPUs (0), so that a pause, a state capture or a
/// handoff waits microseconds for a CPU, not a time slice. Without the
/// privilege, all stay equal.
pub const VMM_NICE: i32 = -5;
/// The source VMM's niceness once the target runs the VM.
pub const TEARDOWN_NICE: i32 = 19;
/// The default share of a vCPU's time a guest keeps during pre-copy.
pub const DEFAULT_GUEST_SHARE: u8 = 95;
/// Migration threads that contend for one core, on average, while pages
/// are copied.
const THREADS_PER_CORE: f64 = 1.5;
/// The most streams chosen automatically (the per-stream rate is what one
/// core copies; beyond this a link is the limit, not the cores).
pub const AUTO_MAX_STREAMS: u32 = 8;

/// The kernel's CFS weights for nice -20..=19 (`sched_prio_to_weight`).
const WEIGHTS: [u32; 40] = [
    88761, 71755, 56483, 46273, 36291, 29154, 23254, 18705, 14949, 11916, 9548, 7620, 6100, 4904, 3906, 3121, 2501,
    1991, 1586, 1277, 1024, 820, 655, 526, 423, 335, 272, 215, 172, 137, 110, 87, 70, 56, 45, 36, 29, 23, 18, 15,
];

fn weight(nice: i32) -> f64 {
    f64::from(WEIGHTS[(nice.clamp(-20, 19) + 20) as usize])
}

/// The niceness of pre-copy threads that leaves a guest `share` percent of
/// a core they contend for: the highest priority whose weight is small
/// enough. 0 keeps no share: the threads run as the VMM's own, above the
/// guest.
pub fn precopy_nice(share: u8) -> i32 {
    if share == 0 {
        return VMM_NICE;
    }
    let share = f64::from(share.min(99)) / 100.0;
    let most = weight(0) * (1.0 - share) / share / THREADS_PER_CORE;
    (VMM_NICE..=19).find(|&nice| weight(nice) <= most).unwrap_or(19)
}

/// Sets the calling thread's niceness (Linux: per thread); best effort.
pub fn set_thread_nice(nice: i32) {
    renice(nix::unistd::gettid().as_raw(), nice);
}

fn renice(tid: i32, nice: i32) {
    // SAFETY: setpriority (which nix lacks) on a thread id changes only its
    // scheduling; it touches no memory.
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
}

/// Every thread of this process at `nice` (the source's teardown).
pub fn set_process_nice(nice: i32) {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for task in tasks.flatten() {
        if let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) {
            renice(tid, nice);
        }
    }
}

/// The calling thread's niceness (the 19th field of its stat); 0 when it
/// cannot be read.
pub fn own_nice() -> i32 {
    std::fs::read_to_string("/proc/thread-self/stat")
        .ok()
        .and_then(|stat| {
            let after_name = &stat[stat.rfind(')')? + 1..];
            after_name.split_whitespace().nth(16)?.parse().ok()
        })
        .unwrap_or(0)
}

/// The threads of one side of a migration, reniced together as its phase
/// changes: each joins as it starts, at the crew's niceness then.
///
/// Going back up (a lower niceness) takes `CAP_SYS_NICE`. A crew made by a
/// thread that does not run above the guest (its VMM lacked the privilege)
/// never renices: pre-copy would go below the guest for good, and so would
/// the switchover.
#[derive(Debug)]
pub struct Crew {
    state: Mutex<(i32, Vec<i32>)>,
    privileged: bool,
}

impl Crew {
    pub fn new(nice: i32) -> Self {
        Self {
            state: Mutex::new((nice, Vec::new())),
            privileged: own_nice() < 0,
        }
    }

    /// The calling thread joins, at the crew's niceness.
    pub fn join(&self) {
        let tid = nix::unistd::gettid().as_raw();
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.privileged {
            renice(tid, state.0);
        }
        state.1.push(tid);
    }

    /// Every member, and whoever joins later, at `nice`.
    pub fn set(&self, nice: i32) {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        state.0 = nice;
        if self.privileged {
            for &tid in &state.1 {
                renice(tid, nice);
            }
        }
    }
}

/// Cores no runnable thread wants now: the online CPUs less the median
/// number of runnable threads over a few samples a millisecond apart (the
/// calling thread not counted). A spinning vCPU counts as busy; an idle
/// one that halted does not.
pub fn free_cores() -> u32 {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as u32;
    let mut samples: Vec<u32> = (0..5)
        .filter_map(|i| {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            runnable()
        })
        .collect();
    samples.sort_unstable();
    match samples.get(samples.len() / 2) {
        Some(&running) => cpus.saturating_sub(running.saturating_sub(1)),
        None => cpus,
    }
}

/// Runnable threads on the host now (the fourth field of /proc/loadavg,
/// `running/total`).
fn runnable() -> Option<u32> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    parse_runnable(&text)
}

fn parse_runnable(loadavg: &str) -> Option<u32> {
    loadavg.split_whitespace().nth(3)?.split('/').next()?.parse().ok()
}

/// Nanoseconds the threads `tids` of this process have waited, runnable,
/// for a CPU since they started, summed (the second field of their
/// schedstat; None where the kernel keeps no such figure).
pub fn waited_ns(tids: &[i32]) -> Option<u64> {
    times(tids).map(|t| t.waited_ns)
}

/// What the scheduler gave a set of threads since they started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTimes {
    /// On a CPU.
    pub ran_ns: u64,
    /// Runnable, waiting for one.
    pub waited_ns: u64,
}

/// The threads `tids` of this process, summed from their schedstat (None
/// where the kernel keeps no such figure).
pub fn times(tids: &[i32]) -> Option<CpuTimes> {
    tids.iter().try_fold(CpuTimes::default(), |sum, tid| {
        let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
        let mut fields = text.split_whitespace().map(str::parse::<u64>);
        let ran_ns = fields.next()?.ok()?;
        let waited_ns = fields.next()?.ok()?;
        Some(CpuTimes {
            ran_ns: sum.ran_ns + ran_ns,
            waited_ns: sum.waited_ns + waited_ns,
        })
    })
}

/// This machine's boot id: two ends with the same one share their cores.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The streams a sender offers when the count is automatic: one per free
/// core here, at least one.
pub fn offered_streams() -> u32 {
    free_cores().clamp(1, AUTO_MAX_STREAMS)
}

/// The streams a receiver takes of `offered` when the count is automatic:
/// one per core free here, halved when the sender is on this machine too
/// (each stream then needs a core on both ends), at least one.
pub fn taken_streams(offered: u32, free_here: u32, same_machine: bool) -> u32 {
    let cores = if same_machine { free_here / 2 } else { free_here };
    cores.clamp(1, offered.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guest's share of a contended core beside [`THREADS_PER_CORE`]
    /// threads at `nice`, in percent (what [`precopy_nice`] promises).
    fn share_at(nice: i32) -> f64 {
        100.0 * weight(0) / (weight(0) + THREADS_PER_CORE * weight(nice))
    }

    #[test]
    fn the_default_share_puts_pre_copy_below_the_guest() {
        let nice = precopy_nice(DEFAULT_GUEST_SHARE);
        assert!(nice > 0, "{nice}");
        assert!(share_at(nice) >= 95.0, "{}", share_at(nice));
        // One step up would give the guest less than it was promised.
        assert!(share_at(nice - 1) < 95.0, "{}", share_at(nice - 1));
    }

    #[test]
    fn a_larger_share_never_gives_pre_copy_a_higher_priority() {
        let nices: Vec<i32> = (0..=100).map(precopy_nice).collect();
        assert!(nices.windows(2).all(|w| w[0] <= w[1]), "{nices:?}");
        assert_eq!(precopy_nice(0), VMM_NICE);
        assert_eq!(precopy_nice(100), 19);
        assert!(share_at(precopy_nice(50)) >= 50.0);
    }

    #[test]
    fn runnable_threads_come_from_loadavg() {
        assert_eq!(parse_runnable("0.50 0.60 0.70 3/200 1234\n"), Some(3));
        assert_eq!(parse_runnable("0.50 0.60"), None);
        assert!(free_cores() <= std::thread::available_parallelism().unwrap().get() as u32);
    }

    #[test]
    fn a_thread_that_waits_for_a_cpu_is_seen_waiting() {
        let tid = nix::unistd::gettid().as_raw();
        let before = waited_ns(&[tid]).expect("schedstat");
        // Yielding puts this thread at the back of its run queue: with
        // anything else runnable, it waits; never does the figure go back.
        for _ in 0..1000 {
            std::thread::yield_now();
        }
        assert!(waited_ns(&[tid]).unwrap() >= before);
        assert_eq!(waited_ns(&[]), Some(0));
        assert_eq!(waited_ns(&[i32::MAX]), None);
    }

    #[test]
    fn a_thread_that_spins_is_seen_running() {
        let tid = nix::unistd::gettid().as_raw();
        let before = times(&[tid]).expect("schedstat");
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(20) {
            std::hint::spin_loop();
        }
        let after = times(&[tid]).unwrap();
        assert!(after.ran_ns >= before.ran_ns + 5_000_000, "{before:?} {after:?}");
        assert!(after.waited_ns >= before.waited_ns);
        assert_eq!(times(&[]), Some(CpuTimes::default()));
        assert_eq!(times(&[tid, i32::MAX]), None);
    }

    #[test]
    fn a_receiver_takes_what_both_ends_have_free() {
        assert_eq!(taken_streams(4, 8, false), 4);
        assert_eq!(taken_streams(4, 2, false), 2);
        assert_eq!(taken_streams(2, 2, true), 1);
        assert_eq!(taken_streams(2, 0, true), 1);
        assert_eq!(taken_streams(8, 6, true), 3);
    }

    #[test]
    fn a_crew_renices_its_members() {
        // As a VMM's thread does: above the guest first (tests run as root).
        set_thread_nice(VMM_NICE);
        assert_eq!(own_nice(), VMM_NICE);
        let crew = std::sync::Arc::new(Crew::new(3));
        let (tx, rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let member = std::sync::Arc::clone(&crew);
        let thread = std::thread::spawn(move || {
            member.join();
            tx.send(own_nice()).unwrap();
            go_rx.recv().unwrap();
            tx.send(own_nice()).unwrap();
        });
        assert_eq!(rx.recv().unwrap(), 3);
        crew.set(7);
        go_tx.send(()).unwrap();
        assert_eq!(rx.recv().unwrap(), 7);
        thread.join().unwrap();
    }
}
