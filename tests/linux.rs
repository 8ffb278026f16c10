//! A stock Debian kernel under vmig. This machine's nested KVM emulates guest
//! ring 0 instruction by instruction, so a full Linux boot cannot finish here
//! (see DESIGN.md); what the kernel prints of the boot parameters vmig gave it
//! shows the boot protocols are right. `scripts/test-deps` fetches the kernel.

mod common;

use std::time::Duration;

use common::{Vmm, assets};
use vmig_backend::runtime::control::{Reply, Request};
use vmig_backend::vmm::VmState;

fn kernel(name: &str) -> String {
    let path = assets().join("linux").join(name);
    assert!(path.is_file(), "{} missing: run scripts/test-deps", path.display());
    path.to_str().unwrap().to_string()
}

/// Linux's ELF `vmlinux` has a PVH note: vmig enters it through PVH, with the
/// memory map, command line and initrd in `hvm_start_info`.
#[test]
fn debian_vmlinux_reports_vmigs_memory_map_command_line_and_initrd() {
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.img");
    std::fs::write(&initrd, vec![0x5au8; 3 * 4096]).unwrap();
    let cmdline = "console=ttyS0 earlyprintk=serial vmig.test=e820";
    let vmm = Vmm::start_in(
        dir,
        &[
            "--kernel",
            &kernel("vmlinux"),
            "--initrd",
            initrd.to_str().unwrap(),
            "--memory",
            "512M",
            "--vcpus",
            "2",
            "--cmdline",
            cmdline,
        ],
    );
    let slow = Duration::from_secs(240);
    vmm.wait_for_line("the Linux banner", slow, |l| l.contains("Linux version"));
    vmm.wait_for_line("the command line", slow, |l| {
        l.ends_with(&format!("Command line: {cmdline}"))
    });
    // The e820 map vmig wrote: low RAM, the reserved MP-table/legacy hole, RAM to 512 MiB.
    for range in [
        "BIOS-e820: [mem 0x0000000000000000-0x000000000009dfff] usable",
        "BIOS-e820: [mem 0x000000000009e000-0x00000000000fffff] reserved",
        "BIOS-e820: [mem 0x0000000000100000-0x000000001fffffff] usable",
    ] {
        vmm.wait_for_line(range, slow, |l| l.ends_with(range));
    }
    vmm.wait_for_line("the MP table", slow, |l| {
        l.contains("found SMP MP-table at [mem 0x0009fc00")
    });
    // vmig puts the initrd page-aligned at the top of low memory.
    vmm.wait_for_line("the initrd", slow, |l| {
        l.contains("RAMDISK: [mem 0x1fffd000-0x1fffffff]")
    });
}

/// A bzImage enters through the 64-bit boot protocol and first runs its own
/// decompressor, which on this host's emulated ring 0 takes far longer than a
/// test may. Its first act is to set up the early serial console from the
/// command line in vmig's zero page: a divisor of 12 (9600 baud) proves the
/// kernel runs and read our boot parameters.
#[test]
fn debian_bzimage_reads_the_command_line_from_vmigs_zero_page() {
    let vmm = Vmm::start(&[
        "--kernel",
        &kernel("vmlinuz"),
        "--memory",
        "512M",
        "--cmdline",
        "console=ttyS0 earlyprintk=serial,ttyS0,9600",
    ]);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let Reply::Stats(stats) = vmm.request(&Request::Stats) else {
            panic!("stats failed")
        };
        // The UART set-up is 8 port writes (LCR, IER, FCR, MCR, DLAB, DLL, DLH, LCR).
        if stats.io_exits >= 8 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the decompressor never set up the UART"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(matches!(vmm.request(&Request::Pause), Reply::Done));
    let snapshot = vmm.dir.path().join("snap");
    vmm.request(&Request::Save { dir: snapshot.clone() });
    let state = VmState::decode(&std::fs::read(snapshot.join("state.bin")).unwrap()).unwrap();
    let serial = &state.devices.serial;
    assert_eq!(
        (serial.baud_divisor_high, serial.baud_divisor_low),
        (0, 12),
        "{serial:?}"
    );
    assert_eq!(serial.line_control & 0x80, 0, "the divisor latch is closed again");
    // The vCPU is in 64-bit mode, inside the kernel image above 1 MiB.
    let vcpu = &state.vcpus[0];
    assert_ne!(vcpu.sregs.efer & 0x400, 0, "long mode active");
    assert!(vcpu.regs.rip >= 0x10_0000, "rip {:#x}", vcpu.regs.rip);
}
