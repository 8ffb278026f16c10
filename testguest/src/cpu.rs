//! Thin wrappers over the x86 instructions the guest uses from ring 3.
//!
//! Port I/O and `wrmsr` fault in ring 3 on this machine's KVM (even with IOPL 3); the
//! #GP handler in `boot.rs` performs them in ring 0 and resumes after the instruction.
//! The encodings matter to that handler: `out dx, al`, `in al, dx`, `rep outsb`,
//! `wrmsr` are the ones it handles fastest.

use core::arch::asm;

/// Exit codes written to the power-off port.
pub mod exit {
    pub const OK: u8 = 0;
    pub const INTEGRITY: u8 = 1;
    pub const CMDLINE: u8 = 2;
    pub const FATAL: u8 = 3;
}

/// QEMU's `isa-debug-exit` (and the vmig VMM) power off on a write here.
const POWER_OFF_PORT: u16 = 0xf4;

pub fn outb(port: u16, value: u8) {
    // SAFETY: port writes touch no memory; the guest owns every device it talks to.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags)) };
}

pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as `outb`.
    unsafe { asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Write `bytes` to one port with a single `rep outsb` (one trap for the whole burst).
pub fn outsb(port: u16, bytes: &[u8]) {
    // SAFETY: reads exactly `bytes`; the direction flag is clear per the ABI.
    unsafe {
        asm!(
            "rep outsb",
            in("dx") port,
            inout("rsi") bytes.as_ptr() => _,
            inout("rcx") bytes.len() => _,
            options(readonly, nostack, preserves_flags)
        );
    }
}

pub fn wrmsr(msr: u32, value: u64) {
    // SAFETY: only called for MSRs whose CPUID feature bit was checked.
    unsafe {
        asm!(
            "wrmsr",
            in("ecx") msr,
            in("eax") value as u32,
            in("edx") (value >> 32) as u32,
            options(nostack, preserves_flags)
        );
    }
}

pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: CR4.TSD is clear, so rdtsc works in ring 3; it touches no memory.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// The BSP's initial xAPIC ID.
pub fn bsp_apic_id() -> u8 {
    (crate::boot::cpuid().leaf1_ebx >> 24) as u8
}

/// Power the VM off with `code`. Without an exit device, spin forever.
pub fn power_off(code: u8) -> ! {
    outb(POWER_OFF_PORT, code);
    loop {
        core::hint::spin_loop();
    }
}
