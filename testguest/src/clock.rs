//! Nanosecond time from ring 3: kvmclock when the hypervisor offers it, otherwise the
//! TSC calibrated once against PIT channel 2.
//!
//! kvmclock keeps counting correctly across pause, save/restore and migration because
//! the host rewrites each CPU's pvclock record; it is re-read on every call and
//! nothing from it is cached.

use core::cell::UnsafeCell;
use core::mem::offset_of;
use core::ptr::read_volatile;
use core::sync::atomic::{AtomicU64, Ordering, compiler_fence};

use crate::boot::{self, MAX_CPUS};
use crate::cpu;

const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
const KVM_FEATURE_CLOCKSOURCE2: u32 = 1 << 3;
const HYPERVISOR_PRESENT: u32 = 1 << 31;

/// `struct pvclock_vcpu_time_info`, written by the host.
#[repr(C, align(64))]
struct PvClock {
    version: u32,
    pad0: u32,
    tsc_timestamp: u64,
    system_time: u64,
    tsc_to_system_mul: u32,
    tsc_shift: i8,
    flags: u8,
    pad: [u8; 2],
}

struct PvClocks([UnsafeCell<PvClock>; MAX_CPUS]);

// SAFETY: each record is written only by the host and read with volatile loads under
// the pvclock version protocol.
unsafe impl Sync for PvClocks {}

static PVCLOCKS: PvClocks = PvClocks(
    [const {
        UnsafeCell::new(PvClock {
            version: 0,
            pad0: 0,
            tsc_timestamp: 0,
            system_time: 0,
            tsc_to_system_mul: 0,
            tsc_shift: 0,
            flags: 0,
            pad: [0; 2],
        })
    }; MAX_CPUS],
);

/// 0 = not initialised, 1 = kvmclock, 2 = calibrated TSC.
static SOURCE: AtomicU64 = AtomicU64::new(0);
/// ns = (tsc - TSC_BASE) * TSC_NS_MUL >> 32, for the TSC fallback. The base is the
/// TSC at calibration: under PVM a ring-3 rdtsc reads the host's TSC, which did not
/// start with the VM.
static TSC_NS_MUL: AtomicU64 = AtomicU64::new(0);
static TSC_BASE: AtomicU64 = AtomicU64::new(0);

const SOURCE_KVMCLOCK: u64 = 1;
const SOURCE_TSC: u64 = 2;

/// A CPU's view of the clock.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pv: *const PvClock,
    tsc_base: u64,
    tsc_mul: u64,
}

fn kvmclock_available() -> bool {
    let id = boot::cpuid();
    let signature = id.hv_signature.map(u32::to_le_bytes);
    id.leaf1_ecx & HYPERVISOR_PRESENT != 0
        && signature.as_flattened() == b"KVMKVMKVM\0\0\0"
        && id.hv_max >= 0x4000_0001
        && id.hv_features & KVM_FEATURE_CLOCKSOURCE2 != 0
}

/// Choose the clock source (once, on the BSP). Returns its name for the banner.
pub fn init_bsp() -> &'static str {
    if kvmclock_available() {
        SOURCE.store(SOURCE_KVMCLOCK, Ordering::Release);
        "kvmclock"
    } else {
        let hz = calibrate_tsc_hz();
        TSC_BASE.store(cpu::rdtsc(), Ordering::Relaxed);
        TSC_NS_MUL.store(((1_000_000_000u128 << 32) / u128::from(hz)) as u64, Ordering::Relaxed);
        SOURCE.store(SOURCE_TSC, Ordering::Release);
        "tsc"
    }
}

/// Start this CPU's clock (after `init_bsp`) and return its handle.
pub fn init_cpu(cpu_index: usize) -> Clock {
    let pv = PVCLOCKS.0[cpu_index].get();
    if SOURCE.load(Ordering::Acquire) == SOURCE_KVMCLOCK {
        // The record is 64-byte aligned, so it cannot cross a page; bit 0 enables it.
        cpu::wrmsr(MSR_KVM_SYSTEM_TIME_NEW, pv as u64 | 1);
        Clock {
            pv,
            tsc_base: 0,
            tsc_mul: 0,
        }
    } else {
        Clock {
            pv: core::ptr::null(),
            tsc_base: TSC_BASE.load(Ordering::Relaxed),
            tsc_mul: TSC_NS_MUL.load(Ordering::Relaxed),
        }
    }
}

impl Clock {
    /// Nanoseconds since the VM was started (kvmclock's system time) or, with the
    /// TSC fallback, since the clock was calibrated at boot.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        if self.pv.is_null() {
            let ticks = cpu::rdtsc().wrapping_sub(self.tsc_base);
            return ((u128::from(ticks) * u128::from(self.tsc_mul)) >> 32) as u64;
        }
        let pv = self.pv;
        loop {
            let version: u32 = field(pv, offset_of!(PvClock, version));
            compiler_fence(Ordering::Acquire);
            let tsc_timestamp: u64 = field(pv, offset_of!(PvClock, tsc_timestamp));
            let system_time: u64 = field(pv, offset_of!(PvClock, system_time));
            let mul: u32 = field(pv, offset_of!(PvClock, tsc_to_system_mul));
            let shift: i8 = field(pv, offset_of!(PvClock, tsc_shift));
            let tsc = cpu::rdtsc();
            compiler_fence(Ordering::Acquire);
            let again: u32 = field(pv, offset_of!(PvClock, version));
            if version & 1 != 0 || version != again {
                continue;
            }
            let mut delta = tsc.wrapping_sub(tsc_timestamp);
            if shift < 0 {
                delta >>= shift.unsigned_abs();
            } else {
                delta <<= shift;
            }
            let scaled = ((u128::from(delta) * u128::from(mul)) >> 32) as u64;
            return system_time.wrapping_add(scaled);
        }
    }
}

/// One field of a pvclock record, read as the host may be writing it.
#[inline]
fn field<T: Copy>(pv: *const PvClock, offset: usize) -> T {
    let p = pv.wrapping_byte_add(offset).cast::<T>();
    // SAFETY: `pv` is this CPU's record in a static and `offset` one of its fields;
    // the host writes it at any time, hence the volatile read (and the version check).
    unsafe { read_volatile(p) }
}

/// TSC ticks per second, measured over 50 ms of PIT channel 2 (mode 0, gate on).
fn calibrate_tsc_hz() -> u64 {
    const PIT_HZ: u64 = 1_193_182;
    const LATCH: u64 = PIT_HZ / 20;
    const FALLBACK_HZ: u64 = 1_000_000_000;
    let gate = cpu::inb(0x61);
    cpu::outb(0x61, (gate & !0x02) | 0x01);
    cpu::outb(0x43, 0xb0);
    cpu::outb(0x42, LATCH as u8);
    cpu::outb(0x42, (LATCH >> 8) as u8);
    let start = cpu::rdtsc();
    let mut polls = 0u32;
    while cpu::inb(0x61) & 0x20 == 0 {
        polls += 1;
        if polls > 1_000_000 {
            break;
        }
    }
    let ticks = cpu::rdtsc().wrapping_sub(start);
    let hz = ticks * 20;
    // Without a working PIT the output is high at once; fall back to a guess rather
    // than divide by a meaningless count.
    if hz < 100_000_000 { FALLBACK_HZ } else { hz }
}
