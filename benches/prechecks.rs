//! Precheck and disk benchmark. Prints medians and ratios measured in one run:
//! - `vmig precheck VM HOST` on the lab (target < 50 ms), for a VM with a
//!   disk and a CD/DVD medium (so the agents also look at the images), beside
//!   `vmig --version` (the process alone);
//! - `vmig precheck VM` across the six other hosts of a seven-host lab
//!   (target < 100 ms);
//! - the convergence forecast (`vmig precheck`'s, from a 100 ms dirty-log
//!   sample) against the migration that follows, for each workload of the
//!   migration benchmark: predicted and actual total time and throttle, and
//!   the prediction's error (goal: within 25%);
//! - the test guest's disk I/O through virtio-blk (64 KiB requests, one in
//!   flight, polled), beside `dd` of the same file on the host (buffered,
//!   64 KiB blocks), writes and reads.
//!
//! Run with `cargo bench --bench prechecks`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::lab::{Lab, text};
use common::{BOOT_TIMEOUT, Vmm};

const RUNS: usize = 21;
/// The guest's disk workload window, in heartbeats of 100 ms.
const WINDOW: u64 = 30;

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

fn main() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("vmig precheck and disk benchmark ({cores} cores)");
    prechecks();
    forecasts();
    disk();
}

/// The migration benchmark's workloads (`benches/migrate.rs`), at 1 GiB.
const WORKLOADS: [(&str, &str); 4] = [
    ("idle, 512 MiB filled", "fill=512M hb=200"),
    ("64 MiB at 100 MB/s", "fill=512M dirty=64M rate=100 hb=200"),
    ("256 MiB at 400 MB/s", "fill=512M dirty=256M rate=400 hb=200"),
    ("256 MiB at full speed", "fill=512M dirty=256M rate=max hb=200"),
];

fn forecasts() {
    let lab = Lab::up_hosts(2, &[]);
    println!("forecast vs the migration that follows (hostA -> hostB, 1 GiB VM):");
    for (i, (name, cmdline)) in WORKLOADS.iter().enumerate() {
        let vm = format!("f{i}");
        lab.create(&vm, "hostA", "1G", cmdline);
        lab.wait_filled(&vm);
        // Past the fill's first-touch faults, into the steady workload.
        let seq = lab.heartbeats(&vm).last().map_or(0, common::Heartbeat::seq);
        lab.wait_for_heartbeat(&vm, seq + 10);
        let out = lab.run(&["precheck", &vm, "hostB", "--json"]);
        let verdict: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let forecast = &verdict["forecast"];
        let out = lab.run(&["migrate", &vm, "hostB", "--json", "--force"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let report = common::lab::json_lines(&out.stdout)
            .into_iter()
            .find_map(|l| l.get("migrated").map(|m| m["report"].clone()))
            .expect("a report");
        let predicted = forecast["expected_total_ms"].as_f64().unwrap_or(f64::NAN);
        let actual = report["total_ms"].as_f64().unwrap();
        let error = (predicted - actual) / actual * 100.0;
        println!(
            "  {name:<24} predicted {predicted:7.0} ms throttle {:>3}%  actual {actual:7.0} ms throttle {:>3}%  \
             error {error:+5.0}%  (dirty {:.0} MB/s sampled; link {:.0} MB/s {})",
            forecast["throttle_pct"],
            report["max_throttle_pct"],
            forecast["dirty_rate_bps"].as_f64().unwrap_or(0.0) / 1e6,
            forecast["bandwidth_bps"].as_f64().unwrap_or(0.0) / 1e6,
            forecast["bandwidth_origin"].as_str().unwrap_or("?"),
        );
        lab.ok(&["vm", "destroy", &vm]);
    }
}

fn prechecks() {
    let lab = Lab::up_hosts(7, &[]);
    let shared = lab.shared_storage();
    let disk = shared.join("vm1.img");
    std::fs::File::create(&disk).unwrap().set_len(64 << 20).unwrap();
    let iso = shared.join("tools.iso");
    vmig_backend::testguest::write_medium(&iso, 1 << 20).unwrap();
    lab.create_with(
        "vm1",
        "hostA",
        "128M",
        "idle hb=1000",
        &["--disk", disk.to_str().unwrap(), "--cdrom", iso.to_str().unwrap()],
    );
    let (mut one, mut all, mut version) = (Vec::new(), Vec::new(), Vec::new());
    let mut unsampled = Vec::new();
    for _ in 0..RUNS {
        let start = Instant::now();
        let out = lab.run(&["precheck", "vm1", "hostB", "--json", "--skip", "migration.convergence"]);
        unsampled.push(ms(start));
        assert!(out.status.success(), "{}", text(&out.stderr));
        let start = Instant::now();
        let out = lab.run(&["precheck", "vm1", "hostB", "--json"]);
        one.push(ms(start));
        assert!(out.status.success(), "{}", text(&out.stderr));
        let start = Instant::now();
        let out = lab.run(&["precheck", "vm1", "--json"]);
        all.push(ms(start));
        assert!(out.status.success(), "{}", text(&out.stderr));
        let start = Instant::now();
        Command::new(common::VMIG).arg("--version").output().unwrap();
        version.push(ms(start));
    }
    let (one, all, version) = (median(&mut one), median(&mut all), median(&mut version));
    let unsampled = median(&mut unsampled);
    println!(
        "vmig precheck vm1 hostB            median {unsampled:8.1} ms   (target < 50 ms; {RUNS} runs; the forecast skipped)"
    );
    println!(
        "  with the forecast                median {one:8.1} ms   (its dirty-log sample waits {} ms)",
        vmig::ops::precheck::forecast::WINDOW_MS
    );
    println!(
        "vmig precheck vm1 (6 hosts)        median {all:8.1} ms   (target < 100 ms; {:.2}x one host)",
        all / one
    );
    println!("vmig --version                     median {version:8.1} ms   (the process alone)");
}

/// MB/s (10^6 bytes per second) of `bytes` in `elapsed`.
fn mbps(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64() / 1e6
}

fn disk() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    std::fs::File::create(&image).unwrap().set_len(64 << 20).unwrap();
    let drive = format!("disk:{}", image.display());
    let vmm = Vmm::start(&[
        "--kernel",
        "builtin:testguest",
        "--memory",
        "128M",
        "--cmdline",
        "hb=100 disk=all",
        "--drive",
        &drive,
    ]);
    let first = vmm.wait_for_heartbeat(BOOT_TIMEOUT, |h| h.fields.contains_key("disk_written") && h.seq() >= 5);
    let last = vmm.wait_for_heartbeat(Duration::from_secs(60), |h| h.seq() >= first.seq() + WINDOW);
    let elapsed = Duration::from_millis(last.get("t_ms") - first.get("t_ms"));
    let chunk = 64u64 << 10;
    let written = (last.get("disk_written") - first.get("disk_written")) * chunk;
    let read = (last.get("disk_verified") - first.get("disk_verified")) * chunk;
    assert_eq!(last.get("disk_errors") + last.get("io_errors"), 0, "{:?}", last.fields);
    drop(vmm);
    let (guest_write, guest_read) = (mbps(written, elapsed), mbps(read, elapsed));

    // The host's own buffered I/O on the same file, 64 KiB at a time.
    let dd = |args: &[&str]| {
        let start = Instant::now();
        let out = Command::new("dd").args(args).output().expect("dd");
        assert!(out.status.success(), "{}", text(&out.stderr));
        start.elapsed()
    };
    let of = format!("of={}", image.display());
    let inf = format!("if={}", image.display());
    let mut host_write = Vec::new();
    let mut host_read = Vec::new();
    for _ in 0..5 {
        let took = dd(&["if=/dev/zero", &of, "bs=64k", "count=1024", "conv=notrunc"]);
        host_write.push(mbps(64 << 20, took));
        let took = dd(&[&inf, "of=/dev/null", "bs=64k"]);
        host_read.push(mbps(64 << 20, took));
    }
    let (host_write, host_read) = (median(&mut host_write), median(&mut host_read));
    // Each guest step is a read-back then a write: the two share its time.
    println!(
        "guest virtio-blk writes             {guest_write:8.1} MB/s  (64 KiB, alternating with reads; {:.1} s window)",
        elapsed.as_secs_f64()
    );
    println!("guest virtio-blk reads              {guest_read:8.1} MB/s");
    println!(
        "guest reads+writes                  {:8.1} MB/s  vs dd: write {host_write:.1} MB/s, read {host_read:.1} MB/s (median of 5); \
         guest/dd {:.2}x",
        guest_write + guest_read,
        (guest_write + guest_read) / (2.0 / (1.0 / host_write + 1.0 / host_read))
    );
}
