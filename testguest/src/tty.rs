//! `prompt=1`: a login-like console on COM1, for tests of interactive
//! consoles. Once the workload runs, the BSP prints `vmig login: ` without
//! a newline, echoes each byte it reads from COM1's receive register, and on
//! Enter (CR or LF) ends the line, prints `GOT <line>` (bytes outside
//! printable ASCII as `\xNN`) and the prompt again. The receive register is
//! read at most every 10 ms (each port access traps, about 100 µs here);
//! without `prompt=1` it is never read.

use crate::cpu;
use crate::serial::{self, Line};

const COM1: u16 = 0x3f8;
const LSR: u16 = COM1 + 5;
const LSR_DATA_READY: u8 = 0x01;
/// The 16550A's receive FIFO: the most one poll reads.
const FIFO_DEPTH: usize = 64;
const POLL_EVERY_NS: u64 = 10_000_000;
const PROMPT: &[u8] = b"vmig login: ";

pub struct Tty {
    on: bool,
    prompted: bool,
    last_ns: u64,
    line: [u8; 128],
    len: usize,
}

impl Tty {
    pub const fn new(on: bool) -> Self {
        Tty {
            on,
            prompted: false,
            last_ns: 0,
            line: [0; 128],
            len: 0,
        }
    }

    /// Prints the prompt first, then reads what has come; true when it did
    /// port I/O (the caller then resyncs its gap measurement).
    pub fn poll(&mut self, now: u64) -> bool {
        if !self.on || (self.prompted && now.saturating_sub(self.last_ns) < POLL_EVERY_NS) {
            return false;
        }
        self.last_ns = now;
        if !self.prompted {
            self.prompted = true;
            serial::write(PROMPT);
            return true;
        }
        let mut got = [0u8; FIFO_DEPTH];
        let mut n = 0;
        while n < got.len() && cpu::inb(LSR) & LSR_DATA_READY != 0 {
            got[n] = cpu::inb(COM1);
            n += 1;
        }
        let mut echoed = 0;
        for (i, &byte) in got[..n].iter().enumerate() {
            if byte == b'\r' || byte == b'\n' {
                serial::write(&got[echoed..i]);
                echoed = i + 1;
                self.enter();
            } else if self.len < self.line.len() {
                self.line[self.len] = byte;
                self.len += 1;
            }
        }
        serial::write(&got[echoed..n]);
        true
    }

    fn enter(&mut self) {
        Line::new().emit();
        let mut line = Line::new();
        line.str("GOT ");
        for &b in &self.line[..self.len] {
            if (0x20..0x7f).contains(&b) && b != b'\\' {
                line.bytes(&[b]);
            } else {
                line.str("\\x").bytes(&[hex(b >> 4), hex(b & 0xf)]);
            }
        }
        line.emit();
        self.len = 0;
        serial::write(PROMPT);
    }
}

fn hex(nibble: u8) -> u8 {
    b"0123456789abcdef"[usize::from(nibble)]
}
