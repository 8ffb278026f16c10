//! Output lines on COM1. Each port access traps to ring 0 (about 100 µs here), so
//! lines are sent in 16-byte bursts (`rep outsb`) with one LSR check per burst.

use core::sync::atomic::{AtomicBool, Ordering};

use crate::clock::Clock;
use crate::cpu;

const COM1: u16 = 0x3f8;
const FCR: u16 = COM1 + 2;
const LSR: u16 = COM1 + 5;
const LSR_THRE: u8 = 0x20;
const FIFO_DEPTH: usize = 16;
/// Bounded wait for the transmitter: a missing UART must not hang the guest.
const THRE_POLLS: u32 = 1000;

static LOCK: AtomicBool = AtomicBool::new(false);

/// Enable and clear the 16550 FIFOs.
pub fn init() {
    cpu::outb(FCR, 0x07);
}

/// A line being built; `emit` sends it with a trailing newline.
pub struct Line {
    buf: [u8; 512],
    len: usize,
}

impl Line {
    pub const fn new() -> Self {
        Line { buf: [0; 512], len: 0 }
    }

    pub fn bytes(&mut self, s: &[u8]) -> &mut Self {
        for &b in s {
            if self.len < self.buf.len() - 1 {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
        self
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    pub fn dec(&mut self, mut v: u64) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut n = 0;
        loop {
            digits[19 - n] = b'0' + (v % 10) as u8;
            n += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        let start = 20 - n;
        self.bytes(&digits[start..])
    }

    /// `tenths / 10` with one decimal, e.g. 1003 → "100.3".
    pub fn dec1(&mut self, tenths: u64) -> &mut Self {
        self.dec(tenths / 10).str(".").dec(tenths % 10)
    }

    pub fn hex(&mut self, v: u64) -> &mut Self {
        self.str("0x");
        let mut started = false;
        for shift in (0..16).rev() {
            let nibble = ((v >> (shift * 4)) & 0xf) as u8;
            if nibble != 0 || started || shift == 0 {
                started = true;
                self.bytes(&[b"0123456789abcdef"[usize::from(nibble)]]);
            }
        }
        self
    }

    /// Send the line and a newline. Other CPUs' lines never interleave with it.
    pub fn emit(&mut self) {
        self.buf[self.len] = b'\n';
        locked(|| send(&self.buf[..=self.len]));
        self.len = 0;
    }

    /// Like [`Line::emit`], and returns how long its slowest burst took
    /// (clock ns): the print's own cost is a few port exits per burst, so a
    /// longer one is a stall of the CPU inside it (a migration's pause lands
    /// on a port exit as readily as anywhere).
    pub fn emit_timed(&mut self, clock: &Clock) -> u64 {
        self.buf[self.len] = b'\n';
        let line = &self.buf[..=self.len];
        let slowest = locked(|| {
            let mut slowest = 0;
            for chunk in line.chunks(FIFO_DEPTH) {
                let start = clock.now_ns();
                send(chunk);
                slowest = slowest.max(clock.now_ns().saturating_sub(start));
            }
            slowest
        });
        self.len = 0;
        slowest
    }

    /// Send the line without waiting for the lock: for the fatal path, where the
    /// lock holder may be the code that just faulted.
    pub fn emit_unlocked(&mut self) {
        self.buf[self.len] = b'\n';
        send(&self.buf[..=self.len]);
        self.len = 0;
    }
}

/// Send `bytes` as they are (no newline), between other CPUs' lines.
pub fn write(bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    locked(|| send(bytes));
}

/// Runs `f` holding the console lock, so that CPUs' lines do not interleave.
fn locked<R>(f: impl FnOnce() -> R) -> R {
    while LOCK
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
    let result = f();
    LOCK.store(false, Ordering::Release);
    result
}

fn send(bytes: &[u8]) {
    for chunk in bytes.chunks(FIFO_DEPTH) {
        for _ in 0..THRE_POLLS {
            if cpu::inb(LSR) & LSR_THRE != 0 {
                break;
            }
        }
        cpu::outsb(COM1, chunk);
    }
}
