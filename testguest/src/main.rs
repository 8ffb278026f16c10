//! vmig's test guest: a tiny PVH kernel that fills, dirties and verifies memory and
//! prints machine-readable heartbeats, so tests can prove a live migration lost
//! nothing and measure the downtime the guest saw.
//!
//! Ring 0 only boots (`boot.rs`); everything here runs in ring 3 with IOPL 3 and
//! interrupts off, polling the clock. Command line: see `cmdline.rs`.
//!
//! Lines printed on COM1:
//! - `VMIG-TESTGUEST v1 mem_mib=<MiB> cpus=<n> clock=<kvmclock|tsc> cmdline="<...>"`
//! - `NET mac=<xx:xx:xx:xx:xx:xx> ip=<a.b.c.d/len>[ gw=<a.b.c.d>]` once the network
//!   is up (`ip=` and a virtio-net device: see `net/mod.rs`)
//! - `FILLED pages=<n> ms=<ms>`
//! - `HB ...` (see `heartbeat.rs`)
//! - `ERR integrity addr=0x.. expected=0x.. found=0x..` (first 8 only)
//! - `ERR cmdline token=<token>`, `ERR boot <reason>`
//! - `ERR virtio slot=<n> addr=0x.. device=<id>` (an announced window with no device
//!   the guest drives), `ERR blk|net slot=<n> addr=0x..` (a device that failed to set
//!   up), `ERR net no device` (`ip=` without a virtio-net device)
//! - `FATAL vector=<n> rip=0x.. addr=0x.. error=0x.. cpl=<n>`
//! - with `prompt=1`: `vmig login: ` (no newline), the echo of what it reads
//!   from COM1, `GOT <line>` on Enter (see `tty.rs`)
//! - `EXIT code=<c>`, then the exit code is written to port 0xf4:
//!   0 ok, 1 integrity errors seen, 2 bad command line, 3 fatal trap or boot failure.

#![no_std]
#![no_main]

mod boot;
mod clock;
mod cmdline;
mod cpu;
mod cpus;
mod disk;
mod heartbeat;
mod layout;
mod mem;
mod net;
mod pattern;
mod phys;
mod pv;
mod pvh;
mod serial;
mod smp;
mod stats;
mod traps;
mod tty;
mod virtio;
mod workload;

use cmdline::{Config, Fill, Rate};
use heartbeat::Heartbeat;
use layout::Area;
use pattern::PAGE_SIZE;
use serial::Line;
use workload::{Plan, Ticker, Worker};

/// Entered in ring 3 by every CPU, from `boot.rs`; the BSP is CPU 0.
#[unsafe(no_mangle)]
extern "C" fn testguest_main(cpu: u32) -> ! {
    let cpu = cpu as usize;
    if cpu == 0 { bsp_main() } else { ap_main(cpu) }
}

fn bsp_main() -> ! {
    traps::install();
    serial::init();
    let info = match pvh::read(boot::start_info()) {
        Ok(info) => info,
        Err(reason) => {
            Line::new().str("ERR boot ").str(reason).emit();
            traps::fatal_exit()
        }
    };
    let clock_name = clock::init_bsp();
    let clock = clock::init_cpu(0);
    stats::mark_online(0);
    let cpu_list = cpus::discover(cpu::bsp_apic_id(), info.rsdp);
    Line::new()
        .str("VMIG-TESTGUEST v1 mem_mib=")
        .dec(info.ram_bytes >> 20)
        .str(" cpus=")
        .dec(cpu_list.ids().len() as u64)
        .str(" clock=")
        .str(clock_name)
        .str(" cmdline=\"")
        .bytes(info.cmdline())
        .str("\"")
        .emit();
    let config = match cmdline::parse(info.cmdline()) {
        Ok(config) => config,
        Err(token) => {
            Line::new().str("ERR cmdline token=").bytes(token).emit();
            Line::new().str("EXIT code=2").emit();
            cpu::power_off(cpu::exit::CMDLINE)
        }
    };

    let devices = virtio::Devices::scan(&config.virtio[..config.virtio_count]);
    let mut net = net::Net::start(
        devices.of(virtio::DEVICE_NET),
        config.ip,
        config.gw,
        cpu::rdtsc(),
        clock.now_ns(),
    );

    let mut ticker = Ticker::new(0, clock);
    let mut hb = Heartbeat::new(config.hb_ms, config.exit_after, ticker.tick());
    hb.show_net(net.up());
    let mut idle = || {
        let now = ticker.tick();
        hb.poll(now, &mut ticker);
        net.poll(now);
    };
    idle();
    smp::start_aps(cpu_list.ids(), &clock, &mut idle);

    let plan = workload::start_fill(plan(&config, &info, cpu_list.ids().len()));
    let mut worker = Worker::new(0, plan).expect("the BSP always works");
    let fill_start = ticker.tick();
    loop {
        let now = ticker.tick();
        hb.poll(now, &mut ticker);
        net.poll(now);
        if !worker.fill_step(&ticker) {
            break;
        }
    }
    ticker.stats.set_fill_done();
    loop {
        let now = ticker.tick();
        hb.poll(now, &mut ticker);
        net.poll(now);
        if stats::fill_done(plan.workers()) {
            break;
        }
    }
    let now = ticker.tick();
    Line::new()
        .str("FILLED pages=")
        .dec(plan.fill_pages)
        .str(" ms=")
        .dec((now - fill_start) / 1_000_000)
        .emit();
    ticker.resync();
    let mut disks = disk::DiskWork::new(
        devices.of(virtio::DEVICE_BLOCK),
        config.disk,
        config.disk_rate,
        cpu::rdtsc() << 1,
    );
    hb.show_disks(disks.active());
    ticker.resync();
    let sleeps = config.sleep && pv::present();
    let mut tty = tty::Tty::new(config.prompt);
    workload::start_work();
    worker.start(ticker.tick());
    loop {
        let now = ticker.tick();
        hb.poll(now, &mut ticker);
        // Not resynced, like the disk: a migration's pause shows in maxgap.
        net.poll(now);
        if tty.poll(now) {
            ticker.resync();
        }
        worker.work_step(now, &ticker);
        if disks.active() {
            // Not resynced: a migration's pause during a request shows in maxgap.
            disks.step(now);
        } else if sleeps && worker.idle() {
            // Nothing to do until the next heartbeat or the network's next
            // deadline: off the host's CPU. The receive ring is full (the
            // poll gave every buffer back), so a frame can end the sleep.
            let wait_ns = hb.next_ns().saturating_sub(now).min(net.wait_ns(now));
            if wait_ns > 1_000_000 {
                pv::sleep_us(wait_ns / 1000);
                ticker.resync();
            }
        }
    }
}

/// Decide the fill, working set and rate for the CPUs that are online now.
fn plan(config: &Config, info: &pvh::BootInfo, cpus: usize) -> Plan {
    let area = Area::new(info.ram(), boot::image_end());
    let ws_pages = (config.dirty_bytes / PAGE_SIZE).min(area.pages());
    let fill_pages = match config.fill {
        Fill::All => area.pages(),
        Fill::Bytes(bytes) => (bytes / PAGE_SIZE).min(area.pages()),
    }
    .max(ws_pages);
    let mut online = [0usize; boot::MAX_CPUS];
    let mut n = 0;
    for cpu in (0..cpus).filter(|&c| stats::is_online(c)) {
        online[n] = cpu;
        n += 1;
    }
    let rate = match config.rate {
        Rate::Max => None,
        Rate::BytesPerSec(bytes) => Some(bytes),
    };
    let ws_pages = if rate == Some(0) { 0 } else { ws_pages };
    let mut plan = Plan::new(area, &online[..n], fill_pages, ws_pages, rate, config.verify);
    plan.sleep = config.sleep;
    plan
}

fn ap_main(cpu: usize) -> ! {
    let clock = clock::init_cpu(cpu);
    stats::mark_online(cpu);
    let mut ticker = Ticker::new(cpu, clock);
    let plan = loop {
        ticker.tick();
        if let Some(plan) = workload::plan() {
            break plan;
        }
    };
    let Some(mut worker) = Worker::new(cpu, plan) else {
        // Came up after the plan was made: stay online but idle.
        loop {
            ticker.tick();
        }
    };
    while worker.fill_step(&ticker) {
        ticker.tick();
    }
    ticker.stats.set_fill_done();
    while workload::phase() != workload::PHASE_WORK {
        ticker.tick();
    }
    worker.start(ticker.tick());
    let sleeps = workload::sleeps() && pv::present();
    loop {
        let now = ticker.tick();
        worker.work_step(now, &ticker);
        if sleeps && worker.idle() {
            pv::sleep_us(pv::MAX_SLEEP_US);
            ticker.resync();
        }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let mut line = Line::new();
    line.str("FATAL panic");
    if let Some(location) = info.location() {
        line.str(" at ")
            .str(location.file())
            .str(":")
            .dec(u64::from(location.line()));
    }
    line.emit_unlocked();
    traps::fatal_exit()
}

/// The precompiled `core` refers to the unwinding personality from its unwind tables
/// (unoptimised builds keep those references); with `panic = "abort"` it is never
/// called.
#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() {}
