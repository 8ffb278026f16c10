//! The BSP's periodic status line and the `exit=N` countdown.
//!
//! `HB seq=<n> t_ms=<ms> cpus=<online> written=<pages> verified=<pages> errors=<words>
//!  rate_mbps=<MB/s, one decimal> maxgap_us=<µs>`, then with the disk workload
//! `disk_written=.. disk_verified=.. disk_errors=.. cd_verified=.. cd_errors=..
//!  io_errors=..`, then with the network `rx=<frames> tx=<frames>`, then
//! `lost_us=<µs>`: the time all CPUs lost since boot, summed (see [`stats`];
//! new fields only ever go at the end).

use crate::clock::Clock;
use crate::cpu;
use crate::disk;
use crate::net;
use crate::serial::Line;
use crate::stats;
use crate::workload::Ticker;

#[derive(Debug)]
pub struct Heartbeat {
    interval_ns: u64,
    next_ns: u64,
    seq: u64,
    exit_after: Option<u64>,
    last_written: u64,
    last_ns: u64,
    disks: bool,
    net: bool,
}

impl Heartbeat {
    /// The first heartbeat is due at once.
    pub fn new(interval_ms: u64, exit_after: Option<u64>, now: u64) -> Heartbeat {
        if exit_after == Some(0) {
            exit();
        }
        Heartbeat {
            interval_ns: interval_ms * 1_000_000,
            next_ns: now,
            seq: 0,
            exit_after,
            last_written: 0,
            last_ns: now,
            disks: false,
            net: false,
        }
    }

    /// When the next heartbeat is due (clock ns).
    pub fn next_ns(&self) -> u64 {
        self.next_ns
    }

    /// Adds the disk workload's counters to every line.
    pub fn show_disks(&mut self, on: bool) {
        self.disks = on;
    }

    /// Adds the network's frame counters to every line.
    pub fn show_net(&mut self, on: bool) {
        self.net = on;
    }

    /// Print a heartbeat if one is due (at `now`, from the ticker's last tick);
    /// the print's own time is not a gap, a stall inside it is.
    #[inline]
    pub fn poll(&mut self, now: u64, ticker: &mut Ticker) {
        if now >= self.next_ns {
            let slowest_burst = self.print(now, ticker.clock());
            ticker.printed(slowest_burst);
        }
    }

    #[inline(never)]
    fn print(&mut self, now: u64, clock: &Clock) -> u64 {
        let totals = stats::totals();
        let elapsed = now.saturating_sub(self.last_ns).max(1);
        let dirtied = totals.written - self.last_written;
        // bytes per µs = MB/s; in tenths, rounded.
        let rate_tenths =
            ((u128::from(dirtied) * 4096 * 10_000 + u128::from(elapsed / 2)) / u128::from(elapsed)) as u64;
        let mut line = Line::new();
        line.str("HB seq=")
            .dec(self.seq)
            .str(" t_ms=")
            .dec(now / 1_000_000)
            .str(" cpus=")
            .dec(stats::online_count())
            .str(" written=")
            .dec(totals.written)
            .str(" verified=")
            .dec(totals.verified)
            .str(" errors=")
            .dec(totals.errors)
            .str(" rate_mbps=")
            .dec1(rate_tenths)
            .str(" maxgap_us=")
            .dec(stats::take_max_gap_ns() / 1000);
        if self.disks {
            use core::sync::atomic::Ordering::Relaxed;
            line.str(" disk_written=")
                .dec(disk::DISK_WRITTEN.load(Relaxed))
                .str(" disk_verified=")
                .dec(disk::DISK_VERIFIED.load(Relaxed))
                .str(" disk_errors=")
                .dec(disk::DISK_ERRORS.load(Relaxed))
                .str(" cd_verified=")
                .dec(disk::CD_VERIFIED.load(Relaxed))
                .str(" cd_errors=")
                .dec(disk::CD_ERRORS.load(Relaxed))
                .str(" io_errors=")
                .dec(disk::IO_ERRORS.load(Relaxed));
        }
        if self.net {
            use core::sync::atomic::Ordering::Relaxed;
            line.str(" rx=")
                .dec(net::RX_FRAMES.load(Relaxed))
                .str(" tx=")
                .dec(net::TX_FRAMES.load(Relaxed));
        }
        line.str(" lost_us=").dec(stats::lost_ns() / 1000);
        let slowest_burst = line.emit_timed(clock);
        self.seq += 1;
        self.last_written = totals.written;
        self.last_ns = now;
        self.next_ns += self.interval_ns;
        if self.next_ns <= now {
            self.next_ns = now + self.interval_ns;
        }
        if self.exit_after == Some(self.seq) {
            exit();
        }
        slowest_burst
    }
}

/// `EXIT code=<c>` and power off: 1 if any integrity error was seen, else 0.
pub fn exit() -> ! {
    let code = if stats::totals().errors > 0 || disk::errors() > 0 {
        cpu::exit::INTEGRITY
    } else {
        cpu::exit::OK
    };
    Line::new().str("EXIT code=").dec(u64::from(code)).emit();
    cpu::power_off(code)
}
