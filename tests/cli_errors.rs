//! Bad input gets one clear line and a documented exit code, before anything starts.

mod common;

use common::vmig;

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn missing_kernel_names_the_file() {
    let out = vmig(&["vm", "run", "--kernel", "/nonexistent/kernel"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("/nonexistent/kernel"), "{}", stderr(&out));
}

#[test]
fn a_file_that_is_no_kernel_says_what_was_expected() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, vec![0x42u8; 4096]).unwrap();
    let out = vmig(&["vm", "run", "--kernel", junk.to_str().unwrap(), "--memory", "64M"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    assert!(
        text.contains("junk.bin") && text.contains("PVH ELF") && text.contains("bzImage"),
        "{text}"
    );

    let truncated = dir.path().join("truncated.elf");
    let mut elf = common_elf_header();
    elf.truncate(40);
    std::fs::write(&truncated, elf).unwrap();
    let out = vmig(&["vm", "run", "--kernel", truncated.to_str().unwrap(), "--memory", "64M"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("ELF"), "{}", stderr(&out));
}

fn common_elf_header() -> Vec<u8> {
    let mut header = vec![0u8; 64];
    header[..4].copy_from_slice(b"\x7fELF");
    header[4] = 2;
    header[5] = 1;
    header[18] = 62;
    header
}

#[test]
fn impossible_sizes_and_counts_are_refused_before_starting() {
    for (args, needle) in [
        (vec!["--memory", "12X"], "--memory"),
        (vec!["--memory", "1M"], "64 MiB"),
        (vec!["--memory", "65M"], "2 MiB"),
        (vec!["--memory", "99999999999T"], "too large"),
        (vec!["--vcpus", "0"], "--vcpus"),
        (vec!["--vcpus", "300"], "--vcpus"),
    ] {
        let mut full = vec!["vm", "run", "--kernel", "builtin:testguest"];
        full.extend(args.iter().copied());
        let out = vmig(&full);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
    let out = vmig(&["vm", "run", "--kernel", "builtin:nosuch"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("nosuch"));
}

#[test]
fn unreachable_control_socket_is_exit_code_5() {
    let out = vmig(&["vm", "status", "--control", "/nonexistent/vm.sock"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(stderr(&out).contains("/nonexistent/vm.sock"));
}

/// Runs vmig in a private mount namespace whose /dev has no kvm node, as on a
/// host without KVM, and as an unprivileged user who may not open it.
#[test]
fn missing_or_forbidden_kvm_is_one_clear_line_and_exit_code_3() {
    let vmig = common::VMIG;
    let missing = format!("mount -t tmpfs none /dev && exec {vmig} vm run --kernel builtin:testguest --memory 64M");
    let forbidden = format!(
        "exec setpriv --reuid=65534 --regid=65534 --clear-groups {vmig} vm run --kernel builtin:testguest --memory 64M"
    );
    for (what, script, needle) in [
        ("missing", missing, "No such file"),
        ("forbidden", forbidden, "ermission denied"),
    ] {
        let out = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .output()
            .expect("unshare");
        let text = stderr(&out);
        assert_eq!(out.status.code(), Some(3), "{what}: {text}");
        assert!(text.contains("/dev/kvm") && text.contains(needle), "{what}: {text}");
        assert_eq!(text.trim().lines().count(), 1, "{what}: one line: {text}");
    }
}

/// Migration options are checked before anything is asked of an agent or a
/// VMM: with no inventory and no control socket to reach, a bad option is
/// still exit 2 (not the 10 or 5 that asking would give), naming the flag.
#[test]
fn bad_migration_options_are_refused_before_anything_is_asked() {
    for (args, flag) in [
        (
            &[
                "--inventory",
                "/nonexistent/vmig.toml",
                "migrate",
                "vm1",
                "hostB",
                "--streams",
                "0",
            ][..],
            "--streams",
        ),
        (
            &[
                "--inventory",
                "/nonexistent/vmig.toml",
                "migrate",
                "vm1",
                "hostB",
                "--bandwidth",
                "1K",
            ][..],
            "--bandwidth",
        ),
        (
            &[
                "vm",
                "send",
                "--control",
                "/nonexistent.sock",
                "tcp:127.0.0.1:1",
                "--streams",
                "0",
            ][..],
            "--streams",
        ),
        (
            &[
                "vm",
                "send",
                "--control",
                "/nonexistent.sock",
                "tcp:127.0.0.1:1",
                "--guest-share",
                "101",
            ][..],
            "--guest-share",
        ),
    ] {
        let out = vmig(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(flag), "{args:?}: {}", stderr(&out));
    }
}
