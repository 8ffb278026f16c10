//! The vmig VMM's paravirtual sleep register (`backend/src/vmm/devices/pvsleep.rs`):
//! with `sleep=1` and nothing to do, a CPU asks to be parked until its next
//! deadline instead of spinning on the host's core. Elsewhere (another VMM),
//! the probe finds no magic and the guest polls as before.

use core::ptr::{read_volatile, write_volatile};

const BASE: u64 = 0xd0ff_0000;
const MAGIC: u32 = 0x7670_6d76;
/// The VMM parks a vCPU at most this long per request.
pub const MAX_SLEEP_US: u64 = 100_000;

/// Whether the register is there.
pub fn present() -> bool {
    // SAFETY: a page of the MMIO gap, identity-mapped and user-accessible;
    // where no device answers, a read returns all ones.
    unsafe { read_volatile(BASE as *const u32) == MAGIC }
}

/// Asks to be parked for up to `us` microseconds.
pub fn sleep_us(us: u64) {
    let us = us.min(MAX_SLEEP_US) as u32;
    // SAFETY: as `present`; the write is the request.
    unsafe { write_volatile((BASE + 8) as *mut u32, us) };
}
