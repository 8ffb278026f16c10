//! The per-CPU workload: fill this CPU's slice of the area, then dirty its slice of
//! the working set at its share of the rate and verify everything it owns in between.
//!
//! Each CPU owns disjoint pages, so no page is ever shared. The generation of a
//! working-set page follows from the CPU's write count `w` and slice length `L`:
//! the dirtier rewrites slice page `w % L` with generation `w / L + 1`, so page `j`
//! holds generation `w / L + (j < w % L)`; pages outside the working set hold 0.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::boot::MAX_CPUS;
use crate::clock::Clock;
use crate::layout::{self, Area};
use crate::pattern::{self, PAGE_SIZE};
use crate::stats::Publisher;

pub const PHASE_BOOT: u32 = 0;
pub const PHASE_FILL: u32 = 1;
pub const PHASE_WORK: u32 = 2;
static PHASE: AtomicU32 = AtomicU32::new(PHASE_BOOT);

/// A CPU that falls behind its rate catches up at most this much work at once
/// (after a pause or a long heartbeat print), not everything it missed.
const MAX_BACKLOG_NS: u64 = 10_000_000;
const NO_SLOT: u8 = u8::MAX;
/// At `rate=max` there is no idle time between writes; one step in this many
/// verifies instead, so the sweeps still cover every page.
const MAX_RATE_VERIFY_EVERY: u64 = 8;

/// What every CPU does, decided by the BSP before the fill.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub area: Area,
    /// Worker slot of each CPU index, or `NO_SLOT` for CPUs that came up too late.
    slots: [u8; MAX_CPUS],
    workers: usize,
    /// Pages filled: the working set first, then the rest.
    pub fill_pages: u64,
    pub ws_pages: u64,
    /// Per-CPU dirtying period in 2^-32 ns, or `None` for as fast as possible.
    period: Option<u128>,
    verify: bool,
    /// Idle CPUs park through the VMM's sleep register (`sleep=1`).
    pub sleep: bool,
}

impl Plan {
    /// `online` lists the CPU indices that take part; `rate` is total bytes/s.
    pub fn new(area: Area, online: &[usize], fill_pages: u64, ws_pages: u64, rate: Option<u64>, verify: bool) -> Plan {
        let mut slots = [NO_SLOT; MAX_CPUS];
        for (slot, &cpu) in online.iter().enumerate() {
            slots[cpu] = slot as u8;
        }
        let workers = online.len();
        let ws_pages = ws_pages.min(fill_pages);
        let period = rate.map(|bytes_per_s| {
            let per_cpu = (bytes_per_s / workers as u64).max(1);
            ((u128::from(PAGE_SIZE) * 1_000_000_000) << 32) / u128::from(per_cpu)
        });
        Plan {
            area,
            slots,
            workers,
            fill_pages,
            ws_pages,
            period,
            verify,
            sleep: false,
        }
    }

    pub fn workers(&self) -> usize {
        self.workers
    }
}

struct PlanCell(UnsafeCell<Option<Plan>>);

// SAFETY: written once by the BSP before PHASE leaves PHASE_BOOT (release), read only
// after observing that (acquire).
unsafe impl Sync for PlanCell {}

static PLAN: PlanCell = PlanCell(UnsafeCell::new(None));

/// Publish the plan and start the fill on every CPU.
pub fn start_fill(plan: Plan) -> &'static Plan {
    // SAFETY: only the BSP calls this, once, before any AP reads the plan.
    unsafe { *PLAN.0.get() = Some(plan) };
    PHASE.store(PHASE_FILL, Ordering::Release);
    self::plan().expect("plan was just stored")
}

/// Whether idle CPUs park (the plan's `sleep`).
pub fn sleeps() -> bool {
    plan().is_some_and(|p| p.sleep)
}

pub fn start_work() {
    PHASE.store(PHASE_WORK, Ordering::Release);
}

pub fn phase() -> u32 {
    PHASE.load(Ordering::Acquire)
}

/// The plan, once the fill has started.
pub fn plan() -> Option<&'static Plan> {
    if phase() == PHASE_BOOT {
        return None;
    }
    // SAFETY: the plan is never written again after PHASE_FILL was published.
    unsafe { (*PLAN.0.get()).as_ref() }
}

/// Reads the clock once per loop iteration and records the largest gap.
#[derive(Debug)]
pub struct Ticker {
    clock: Clock,
    last: u64,
    /// The fastest burst of a printed line seen so far: a print's own cost.
    burst_floor_ns: u64,
    pub stats: Publisher,
}

impl Ticker {
    pub fn new(cpu: usize, clock: Clock) -> Ticker {
        Ticker {
            last: clock.now_ns(),
            burst_floor_ns: u64::MAX,
            clock,
            stats: Publisher::new(cpu),
        }
    }

    #[inline]
    pub fn tick(&mut self) -> u64 {
        let now = self.clock.now_ns();
        self.stats.note_gap(now.saturating_sub(self.last));
        self.last = now;
        now
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// After a line was printed, whose slowest burst took `slowest_burst_ns`:
    /// the print's own cost is not a gap, but what that burst took beyond
    /// the fastest burst seen is time the CPU stood still, and counts as one.
    pub fn printed(&mut self, slowest_burst_ns: u64) {
        self.burst_floor_ns = self.burst_floor_ns.min(slowest_burst_ns);
        self.stats.note_gap(slowest_burst_ns - self.burst_floor_ns);
        self.resync();
    }

    /// Restart gap measurement, so time spent printing is not counted as a gap.
    pub fn resync(&mut self) {
        self.last = self.clock.now_ns();
    }
}

/// One CPU's share of the plan and its progress.
#[derive(Debug)]
pub struct Worker {
    plan: &'static Plan,
    ws: (u64, u64),
    rest: (u64, u64),
    fill_next: u64,
    writes: u64,
    verify_next: u64,
    due_ns: u64,
    due_frac: u32,
    steps: u64,
}

impl Worker {
    /// This CPU's worker, or `None` if it has no slot in the plan.
    pub fn new(cpu: usize, plan: &'static Plan) -> Option<Worker> {
        let slot = plan.slots[cpu];
        if slot == NO_SLOT {
            return None;
        }
        let (slot, n) = (usize::from(slot), plan.workers);
        let ws = layout::slice(0, plan.ws_pages, slot, n);
        let rest = layout::slice(plan.ws_pages, plan.fill_pages - plan.ws_pages, slot, n);
        Some(Worker {
            plan,
            ws,
            rest,
            fill_next: 0,
            writes: 0,
            verify_next: 0,
            due_ns: 0,
            due_frac: 0,
            steps: 0,
        })
    }

    fn ws_len(&self) -> u64 {
        self.ws.1 - self.ws.0
    }

    fn owned(&self) -> u64 {
        self.ws_len() + self.rest.1 - self.rest.0
    }

    /// The `i`-th page this CPU owns: its working-set slice, then the rest.
    fn owned_page(&self, i: u64) -> u64 {
        let index = if i < self.ws_len() {
            self.ws.0 + i
        } else {
            self.rest.0 + i - self.ws_len()
        };
        self.plan.area.page_addr(index)
    }

    /// Current generation of owned page `i`.
    fn generation(&self, i: u64) -> u64 {
        if i >= self.ws_len() {
            return 0;
        }
        let passes = self.writes / self.ws_len();
        passes + u64::from(i < self.writes % self.ws_len())
    }

    /// Fill one page; false once this CPU's share is done.
    pub fn fill_step(&mut self, ticker: &Ticker) -> bool {
        if self.fill_next >= self.owned() {
            return false;
        }
        pattern::write_page(self.owned_page(self.fill_next), 0);
        self.fill_next += 1;
        ticker.stats.add_filled(1);
        true
    }

    /// Start the rate clock when the work phase begins.
    pub fn start(&mut self, now: u64) {
        self.due_ns = now;
    }

    /// One unit of work: dirty a page if one is due, else verify one page.
    #[inline]
    /// Nothing to dirty and nothing to verify: the CPU may sleep.
    pub fn idle(&self) -> bool {
        self.ws_len() == 0 && !(self.plan.verify && self.owned() > 0)
    }

    pub fn work_step(&mut self, now: u64, ticker: &Ticker) {
        if self.ws_len() > 0 && self.dirty_due(now) {
            self.dirty_one(ticker);
        } else if self.plan.verify && self.owned() > 0 {
            let i = self.verify_next;
            self.verify_next = if i + 1 >= self.owned() { 0 } else { i + 1 };
            self.verify(i, ticker);
        }
    }

    fn dirty_due(&mut self, now: u64) -> bool {
        let Some(period) = self.plan.period else {
            self.steps += 1;
            return !self.plan.verify || !self.steps.is_multiple_of(MAX_RATE_VERIFY_EVERY);
        };
        if now < self.due_ns {
            return false;
        }
        if now - self.due_ns > MAX_BACKLOG_NS {
            self.due_ns = now - MAX_BACKLOG_NS;
        }
        let frac = u128::from(self.due_frac) + (period & 0xffff_ffff);
        self.due_ns += (period >> 32) as u64 + (frac >> 32) as u64;
        self.due_frac = frac as u32;
        true
    }

    fn dirty_one(&mut self, ticker: &Ticker) {
        let i = self.writes % self.ws_len();
        let generation = self.writes / self.ws_len();
        if self.plan.verify {
            self.verify(i, ticker);
        }
        pattern::write_page(self.owned_page(i), generation + 1);
        self.writes += 1;
        ticker.stats.add_written(1);
    }

    fn verify(&self, i: u64, ticker: &Ticker) {
        let page = self.owned_page(i);
        let generation = self.generation(i);
        if let Some(m) = pattern::check_page(page, generation) {
            ticker.stats.integrity_error(m.addr, m.expected, m.found, m.count);
            // Repair, so one corruption is counted once, not on every sweep.
            pattern::write_page(page, generation);
        }
        ticker.stats.add_verified(1);
    }
}
