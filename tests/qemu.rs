//! The very same test guest boots under QEMU (another VMM), which is what makes
//! side-by-side benchmarks fair.

mod common;

use std::process::Command;

#[test]
fn exported_test_guest_boots_and_heartbeats_under_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("testguest.elf");
    let out = common::vmig(&["testguest", "export", image.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let output = Command::new("timeout")
        .args([
            "120",
            "qemu-system-x86_64",
            "-enable-kvm",
            "-cpu",
            "qemu64",
            "-m",
            "256",
        ])
        .args([
            "-smp",
            "2",
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
        ])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
        .arg("-kernel")
        .arg(&image)
        .args(["-append", "hb=20 fill=16M dirty=8M rate=20 exit=5"])
        .output()
        .expect("qemu-system-x86_64 must be installed (scripts/test-deps installs it)");
    let console = String::from_utf8_lossy(&output.stdout);
    // isa-debug-exit turns guest code 0 into exit status (0 << 1) | 1.
    assert_eq!(
        output.status.code(),
        Some(1),
        "console:\n{console}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let beats: Vec<_> = console.lines().filter_map(common::Heartbeat::parse).collect();
    assert_eq!(beats.len(), 5, "console:\n{console}");
    assert_eq!(beats[4].get("errors"), 0);
    assert_eq!(beats[4].get("cpus"), 2, "QEMU's CPUs come from its own ACPI/MP tables");
}
