//! The VMM under real KVM with the built-in test guest: boot, heartbeats with
//! one and two vCPUs, pause/resume, save/restore into a fresh process, and the
//! guest noticing memory the host changed.

mod common;

use std::time::{Duration, Instant};

use common::{BOOT_TIMEOUT, Vmm};
use vmig_backend::runtime::control::{Reply, Request};
use vmig_backend::vmm::RunState;

fn status(vmm: &Vmm) -> RunState {
    vmm.state().expect("a VM")
}

#[test]
fn boots_and_heartbeats_with_one_vcpu() {
    let vmm = Vmm::testguest("128M", 1, "hb=20");
    let banner = vmm.wait_for_line("the guest's banner", BOOT_TIMEOUT, |l| l.starts_with("VMIG-TESTGUEST"));
    assert!(banner.contains("cpus=1"), "{banner}");
    let third = vmm.wait_for_heartbeat(BOOT_TIMEOUT, |h| h.seq() >= 3);
    let beats = vmm.heartbeats();
    for (i, beat) in beats.iter().enumerate() {
        assert_eq!(beat.seq(), i as u64, "heartbeats must count up from 0 without gaps");
        assert_eq!(beat.get("errors"), 0);
    }
    assert_eq!(third.get("cpus"), 1);
    assert_eq!(status(&vmm), RunState::Running);
}

#[test]
fn boots_and_heartbeats_with_two_vcpus() {
    let vmm = Vmm::testguest("256M", 2, "hb=20 fill=32M dirty=16M rate=50");
    let beat = vmm.wait_for_heartbeat(BOOT_TIMEOUT, |h| h.get("cpus") == 2 && h.get("written") > 0);
    assert_eq!(beat.get("errors"), 0);
}

#[test]
fn guest_exit_code_becomes_the_process_outcome() {
    let mut vmm = Vmm::testguest("64M", 1, "hb=10 exit=3");
    let status = vmm.wait_exit(BOOT_TIMEOUT);
    assert!(status.success(), "exit=3 powers off with code 0: {}", vmm.stderr_text());
    assert!(vmm.stderr_text().contains("powered off with code 0"));
    assert_eq!(vmm.heartbeats().len(), 3);

    let mut bad = Vmm::testguest("64M", 1, "bogus=1");
    let status = bad.wait_exit(BOOT_TIMEOUT);
    assert_eq!(
        status.code(),
        Some(4),
        "a guest failure is exit code 4: {}",
        bad.stderr_text()
    );
}

#[test]
fn pause_stops_the_guest_and_resume_continues_it() {
    let vmm = Vmm::testguest("128M", 1, "hb=20");
    vmm.wait_for_heartbeat(BOOT_TIMEOUT, |h| h.seq() >= 2);
    assert!(matches!(vmm.request(&Request::Pause), Reply::Done));
    let paused_at = Instant::now();
    assert_eq!(status(&vmm), RunState::Paused);
    let seen = vmm.heartbeats().len() as u64;
    // While paused the guest cannot run, so after resuming its own clock shows
    // one jump at least as long as the pause (its workload's largest gap).
    while paused_at.elapsed() < Duration::from_millis(300) {
        std::thread::yield_now();
    }
    assert!(matches!(vmm.request(&Request::Resume), Reply::Done));
    let pause_us = paused_at.elapsed().as_micros() as u64;
    assert_eq!(status(&vmm), RunState::Running);
    let after = vmm.wait_for_heartbeat(BOOT_TIMEOUT, |h| h.seq() > seen);
    let gap = vmm
        .heartbeats()
        .iter()
        .filter(|h| h.seq() >= seen && h.seq() <= after.seq())
        .map(|h| h.get("maxgap_us"))
        .max()
        .unwrap();
    assert!(
        gap >= 250_000,
        "guest saw a largest gap of {gap} µs across a {pause_us} µs pause"
    );
    assert_eq!(after.get("errors"), 0);
}

#[test]
fn saved_state_continues_in_a_fresh_process() {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("snap");
    let source = Vmm::testguest("256M", 2, "hb=20 fill=64M dirty=32M rate=100");
    source.wait_for_heartbeat(BOOT_TIMEOUT, |h| h.seq() >= 3 && h.get("written") > 0);
    assert!(matches!(source.request(&Request::Pause), Reply::Done));
    let last = source.heartbeats().last().unwrap().clone();
    let Reply::Saved(info) = source.request(&Request::Save { dir: snapshot.clone() }) else {
        panic!("save did not report what it wrote");
    };
    assert!(
        info.memory_bytes_written >= 64 << 20,
        "the filled memory must be in the image"
    );
    assert!(matches!(source.request(&Request::Shutdown), Reply::Done));

    let restored = Vmm::start(&["--restore", snapshot.to_str().unwrap()]);
    let next = restored.wait_for_heartbeat(BOOT_TIMEOUT, |_| true);
    // A line cut by the pause ends in the restored console.
    assert!(
        next.seq() == last.seq() + 1 || next.seq() == last.seq() + 2,
        "the heartbeat sequence goes on where it stopped: {} then {}",
        last.seq(),
        next.seq()
    );
    common::joined_heartbeats(&[&source, &restored]);
    let later = restored.wait_for_heartbeat(BOOT_TIMEOUT, |h| h.get("verified") > next.get("verified"));
    assert_eq!(later.get("errors"), 0, "integrity intact after restore");
    assert!(
        later.get("written") > last.get("written"),
        "the workload keeps dirtying"
    );
    assert!(
        !restored.console_text().contains("VMIG-TESTGUEST"),
        "a restored guest continues; it does not boot again"
    );
}

#[test]
fn guest_reports_a_byte_the_host_changed_while_paused() {
    let vmm = Vmm::testguest("128M", 1, "hb=20 fill=16M");
    vmm.wait_for_line("the fill", BOOT_TIMEOUT, |l| l.starts_with("FILLED"));
    vmm.wait_for_heartbeat(BOOT_TIMEOUT, |h| h.get("verified") > 0);
    assert!(matches!(vmm.request(&Request::Pause), Reply::Done));
    // 8 MiB is inside the filled area whatever the image size (it starts above the image).
    let gpa = 8u64 << 20;
    let Reply::Memory { hex } = vmm.request(&Request::ReadMemory { gpa, len: 1 }) else {
        panic!("read_memory failed");
    };
    let flipped = u8::from_str_radix(&hex, 16).unwrap() ^ 0x5a;
    vmm.request(&Request::WriteMemory {
        gpa,
        hex: format!("{flipped:02x}"),
    });
    assert!(matches!(vmm.request(&Request::Resume), Reply::Done));
    let report = vmm.wait_for_line("the guest's integrity report", BOOT_TIMEOUT, |l| {
        l.starts_with("ERR integrity")
    });
    let addr = format!("addr=0x{:x}", gpa & !7);
    assert!(report.contains(&addr), "report names the changed word {addr}: {report}");
    vmm.wait_for_heartbeat(BOOT_TIMEOUT, |h| h.get("errors") >= 1);
}

#[test]
fn writing_memory_of_a_running_vm_is_refused() {
    let vmm = Vmm::testguest("64M", 1, "hb=50");
    let mut client = vmig_backend::runtime::control::ControlClient::connect(&vmm.control).unwrap();
    let refused = client.request(&Request::WriteMemory {
        gpa: 0x1000,
        hex: "00".into(),
    });
    assert!(refused.is_err(), "the running guest's memory must not change");
    let malformed = client.request(&Request::ReadMemory {
        gpa: u64::MAX - 1,
        len: 16,
    });
    assert!(malformed.is_err(), "reads outside guest memory are refused");
}

#[test]
fn a_16_gib_guest_costs_the_host_only_what_it_touches() {
    let vmm = Vmm::testguest("16G", 1, "hb=20 fill=8M");
    let banner = vmm.wait_for_line("the guest's banner", BOOT_TIMEOUT, |l| l.starts_with("VMIG-TESTGUEST"));
    let mib: u64 = banner
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("mem_mib="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no mem_mib in {banner}"));
    assert!((16_000..=16_384).contains(&mib), "guest sees {mib} MiB: {banner}");
    vmm.wait_for_heartbeat(BOOT_TIMEOUT, |h| h.seq() >= 1);
    let Reply::Stats(stats) = vmm.request(&Request::Stats) else {
        panic!("stats failed")
    };
    assert_eq!(stats.memory_bytes, 16 << 30);
    assert!(
        stats.memory_resident_bytes < 64 << 20,
        "only touched pages are resident: {} bytes",
        stats.memory_resident_bytes
    );
}

#[test]
fn sigterm_stops_the_vm_cleanly() {
    let mut vmm = Vmm::testguest("64M", 1, "hb=20");
    vmm.wait_for_heartbeat(BOOT_TIMEOUT, |h| h.seq() >= 1);
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(vmm.child.id() as i32, libc::SIGTERM) }, 0);
    let status = vmm.wait_exit(BOOT_TIMEOUT);
    assert!(status.success(), "{}", vmm.stderr_text());
    assert!(
        vmm.stderr_text().contains("stopped on request"),
        "{}",
        vmm.stderr_text()
    );
    assert!(!vmm.control.exists(), "the control socket is removed on exit");
}
