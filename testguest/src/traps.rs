//! The ring-3 side of trap handling: filling the IDT, and reporting fatal traps.

use crate::boot;
use crate::cpu;
use crate::serial::Line;

const GP_VECTOR: usize = 13;

const KERNEL_CS: u64 = 0x08;
/// Present, DPL 0, 64-bit interrupt gate (interrupts stay off in the handler).
const INTERRUPT_GATE: u64 = 0x8e;
const STUB_SIZE: u64 = 16;

/// Point every IDT vector at its handler. Runs on the BSP before anything can fault;
/// the IDT itself was loaded in ring 0 and is writable from ring 3.
pub fn install() {
    let stubs = (&raw const boot::isr_stubs) as u64;
    let gp = (&raw const boot::gp_handler) as u64;
    let idt = &raw mut boot::testguest_idt;
    for vector in 0..256 {
        let handler = if vector == GP_VECTOR {
            gp
        } else {
            stubs + vector as u64 * STUB_SIZE
        };
        let low = (handler & 0xffff) | (KERNEL_CS << 16) | (INTERRUPT_GATE << 40) | (((handler >> 16) & 0xffff) << 48);
        // SAFETY: the IDT is a static 4 KiB table no one else writes; interrupts are
        // off, and no trap can be taken while it is being filled.
        unsafe { (*idt)[vector * 2] = low };
        // SAFETY: as above.
        unsafe { (*idt)[vector * 2 + 1] = handler >> 32 };
    }
}

/// Entered in ring 3 from `fatal_common` in `boot.rs` for any trap that is not
/// emulated port I/O: report it and power off with code 3.
#[unsafe(no_mangle)]
extern "C" fn testguest_fatal(vector: u64, rip: u64, addr: u64, error: u64, cs: u64) -> ! {
    Line::new()
        .str("FATAL vector=")
        .dec(vector)
        .str(" rip=")
        .hex(rip)
        .str(" addr=")
        .hex(addr)
        .str(" error=")
        .hex(error)
        .str(" cpl=")
        .dec(cs & 3)
        .emit_unlocked();
    fatal_exit()
}

pub fn fatal_exit() -> ! {
    Line::new().str("EXIT code=3").emit_unlocked();
    cpu::power_off(cpu::exit::FATAL)
}
