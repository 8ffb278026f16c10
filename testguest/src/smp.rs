//! Start the application processors: INIT–SIPI–SIPI through the BSP's xAPIC, into
//! the real-mode trampoline that `boot.rs` provides (copied below 1 MiB). Each AP
//! finds its CPU index in `apic_to_cpu` by its APIC ID, enters ring 3 at
//! `testguest_main` and marks itself online.

use core::ptr::{read_volatile, write_volatile};

use crate::boot::{self, AP_TRAMPOLINE_PADDR};
use crate::clock::Clock;
use crate::stats;

const LAPIC_BASE: u64 = 0xfee0_0000;
const LAPIC_SVR: u64 = 0xf0;
const LAPIC_ICR_LOW: u64 = 0x300;
const LAPIC_ICR_HIGH: u64 = 0x310;
const ICR_BUSY: u32 = 1 << 12;
const ICR_INIT: u32 = 0x4500;
const ICR_STARTUP: u32 = 0x4600;

const MS: u64 = 1_000_000;
/// How long to wait for all APs before the workload starts without the missing ones.
const ONLINE_TIMEOUT: u64 = 2000 * MS;

fn lapic_read(reg: u64) -> u32 {
    // SAFETY: the xAPIC page is identity-mapped (uncached) and user-accessible.
    unsafe { read_volatile((LAPIC_BASE + reg) as *const u32) }
}

fn lapic_write(reg: u64, value: u32) {
    // SAFETY: as `lapic_read`.
    unsafe { write_volatile((LAPIC_BASE + reg) as *mut u32, value) };
}

fn send_ipi(apic_id: u8, command: u32, clock: &Clock) {
    let deadline = clock.now_ns() + MS;
    while lapic_read(LAPIC_ICR_LOW) & ICR_BUSY != 0 && clock.now_ns() < deadline {
        core::hint::spin_loop();
    }
    lapic_write(LAPIC_ICR_HIGH, u32::from(apic_id) << 24);
    lapic_write(LAPIC_ICR_LOW, command);
}

/// Wait `ns`, or until `done` holds, running `idle` (the BSP's heartbeat) meanwhile.
fn wait(clock: &Clock, ns: u64, idle: &mut dyn FnMut(), done: &dyn Fn() -> bool) {
    let deadline = clock.now_ns() + ns;
    while clock.now_ns() < deadline && !done() {
        idle();
    }
}

/// Bring up every AP in `apic_ids` (`apic_ids[0]` is the BSP); CPU i gets index i.
pub fn start_aps(apic_ids: &[u8], clock: &Clock, idle: &mut dyn FnMut()) {
    if apic_ids.len() < 2 {
        return;
    }
    copy_trampoline();
    let table = &raw mut boot::apic_to_cpu;
    for (index, &apic_id) in apic_ids.iter().enumerate() {
        // SAFETY: plain byte table in the image; APs read it only after the SIPI.
        unsafe { (*table)[usize::from(apic_id)] = index as u8 };
    }
    lapic_write(LAPIC_SVR, lapic_read(LAPIC_SVR) | 0x100);
    let aps = &apic_ids[1..];
    let all_online = || (1..apic_ids.len()).all(stats::is_online);
    for &apic_id in aps {
        send_ipi(apic_id, ICR_INIT, clock);
    }
    wait(clock, 10 * MS, idle, &|| false);
    let vector = (AP_TRAMPOLINE_PADDR >> 12) as u32;
    for &apic_id in aps {
        send_ipi(apic_id, ICR_STARTUP | vector, clock);
    }
    wait(clock, MS, idle, &all_online);
    // A second SIPI for CPUs that missed the first; one that is running ignores it.
    for (i, &apic_id) in aps.iter().enumerate() {
        if !stats::is_online(i + 1) {
            send_ipi(apic_id, ICR_STARTUP | vector, clock);
        }
    }
    wait(clock, ONLINE_TIMEOUT, idle, &all_online);
}

fn copy_trampoline() {
    let start = &raw const boot::ap_tramp_start;
    let end = &raw const boot::ap_tramp_end;
    let len = end as usize - start as usize;
    // SAFETY: the trampoline is a few bytes of code in the image; 0x8000 is free
    // conventional memory below 1 MiB (the boot info was copied out before).
    unsafe { core::ptr::copy_nonoverlapping(start, AP_TRAMPOLINE_PADDR as *mut u8, len) };
}
