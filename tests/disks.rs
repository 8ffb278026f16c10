//! VMs with drives: a virtio-blk disk and a CD/DVD medium that the test guest
//! writes, reads back and checks from inside, across live migration; the
//! image lock that keeps two VMMs from one disk; media changes.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{BOOT_TIMEOUT, Heartbeat, Vmm, send};
use vmig_backend::runtime::control::{Reply, Request};
use vmig_backend::vmm::RunState;
use vmig_backend::vmm::devices::virtio::block::is_locked;

/// A 4 MiB disk and a 1 MiB medium in a fresh directory.
struct Images {
    dir: tempfile::TempDir,
}

impl Images {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::File::create(dir.path().join("disk.img"))
            .unwrap()
            .set_len(4 << 20)
            .unwrap();
        vmig_backend::testguest::write_medium(&dir.path().join("tools.iso"), 1 << 20).unwrap();
        Images { dir }
    }

    fn disk(&self) -> PathBuf {
        self.dir.path().join("disk.img")
    }

    fn medium(&self) -> PathBuf {
        self.dir.path().join("tools.iso")
    }

    fn drive_args(&self) -> Vec<String> {
        vec![
            "--drive".into(),
            format!("disk:{}", self.disk().display()),
            "--drive".into(),
            format!("cdrom:{}", self.medium().display()),
        ]
    }

    fn allow_args(&self) -> Vec<String> {
        vec![
            "--allow-disk".into(),
            self.disk().display().to_string(),
            "--allow-disk".into(),
            self.medium().display().to_string(),
        ]
    }
}

/// A disk workload counter, 0 on lines printed before the workload began.
fn field(beat: &Heartbeat, key: &str) -> u64 {
    if beat.fields.contains_key(key) {
        beat.get(key)
    } else {
        0
    }
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// A guest that writes its disk at 20 MB/s and reads its medium.
fn source(images: &Images) -> Vmm {
    let mut args = vec![
        "--kernel",
        "builtin:testguest",
        "--memory",
        "256M",
        "--vcpus",
        "2",
        "--cmdline",
        "hb=20 fill=32M dirty=16M rate=50 disk=all disk_rate=20",
    ];
    let drives = images.drive_args();
    args.extend(strs(&drives));
    let vmm = Vmm::start(&args);
    vmm.wait_for_line("both drives", BOOT_TIMEOUT, |l| l.starts_with("BLK slot=1"));
    vmm.wait_for_heartbeat(BOOT_TIMEOUT, |h| {
        field(h, "disk_verified") > 20 && field(h, "cd_verified") > 5
    });
    vmm
}

fn disk_clean_or_show(vmm: &Vmm, beat: &Heartbeat) {
    let errors: Vec<String> = vmm
        .console_text()
        .lines()
        .filter(|l| l.starts_with("ERR"))
        .map(str::to_string)
        .collect();
    assert!(errors.is_empty(), "{errors:?} {:?}", beat.fields);
}

fn disk_clean(beat: &Heartbeat) {
    for key in ["errors", "disk_errors", "cd_errors", "io_errors"] {
        assert_eq!(beat.get(key), 0, "{key}: {:?}", beat.fields);
    }
}

#[test]
fn a_vm_with_a_disk_and_a_cdrom_migrates_and_reads_back_what_it_wrote() {
    let images = Images::new();
    let mut from = source(&images);
    assert!(is_locked(&images.disk()).unwrap(), "the source holds its disk");
    let allow = images.allow_args();
    let (to, url) = Vmm::incoming_with(&strs(&allow), &[]);
    // The target compares a hash of all guest memory with the source's: what
    // the device wrote into it (read data, used rings) moved too.
    let sent = send(&from, &url, &["--verify-memory"]);
    assert_eq!(sent.code, Some(0), "{}", sent.stderr);
    assert!(from.wait_exit(BOOT_TIMEOUT).success(), "the source ended its copy");
    let last = from.heartbeats().last().cloned().unwrap();
    disk_clean_or_show(&from, &last);
    let written_before = last.get("disk_written");
    assert!(written_before > 0);
    // The guest goes on where it was: it reads back, on the target, every
    // chunk of its disk (64 of them), all written on the source first.
    let first = to.wait_for_heartbeat(BOOT_TIMEOUT, |_| true);
    // A line cut by the switchover ends on the target.
    assert!(
        first.seq() == last.seq() + 1 || first.seq() == last.seq() + 2,
        "the heartbeat goes on: {} then {}",
        last.seq(),
        first.seq()
    );
    common::joined_heartbeats(&[&from, &to]);
    let later = to.wait_for_heartbeat(BOOT_TIMEOUT, |h| {
        field(h, "disk_verified") >= last.get("disk_verified") + 2 * 64
            && field(h, "cd_verified") > last.get("cd_verified")
    });
    disk_clean(&later);
    assert!(later.get("disk_written") > written_before, "it keeps writing");
    assert!(is_locked(&images.disk()).unwrap(), "the target holds the disk now");
    let Reply::Stats(stats) = to.request(&Request::Stats) else {
        panic!("no stats")
    };
    assert_eq!(stats.drives.len(), 2);
    assert!(stats.drives.iter().all(|d| d.attached));
    assert!(stats.drives[0].counters.written_bytes > 0, "{:?}", stats.drives[0]);
}

#[test]
fn a_receiver_refuses_a_vm_whose_drives_its_host_did_not_approve() {
    let images = Images::new();
    let from = source(&images);
    // Only the medium is approved: the disk is not.
    let medium = images.medium().display().to_string();
    let (mut to, url) = Vmm::incoming_with(&["--allow-disk", &medium], &[]);
    let sent = send(&from, &url, &[]);
    assert_eq!(sent.code, Some(1), "{}", sent.stderr);
    assert!(sent.stderr.contains("did not approve"), "{}", sent.stderr);
    assert!(!to.wait_exit(BOOT_TIMEOUT).success());
    assert_eq!(from.state(), Some(RunState::Running));
    let now = from.heartbeats().last().unwrap().seq();
    disk_clean(&from.wait_for_heartbeat(BOOT_TIMEOUT, |h| h.seq() > now + 3));
    assert!(is_locked(&images.disk()).unwrap(), "the source kept its disk");
}

#[test]
fn a_migration_that_fails_after_the_source_gave_its_disk_up_takes_it_back() {
    let images = Images::new();
    let from = source(&images);
    // The target closes its streams after the state arrived: the source has
    // paused and released its drives by then, and must take them back.
    let allow = images.allow_args();
    let (mut to, url) = Vmm::incoming_with(&strs(&allow), &[("VMIG_TEST_FAULT", "close-before-ready")]);
    let sent = send(&from, &url, &[]);
    assert_eq!(sent.code, Some(1), "{}", sent.stderr);
    assert!(!to.wait_exit(Duration::from_secs(60)).success());
    assert_eq!(from.state(), Some(RunState::Running));
    let now = from.heartbeats().last().cloned().unwrap();
    let later = from.wait_for_heartbeat(BOOT_TIMEOUT, |h| {
        field(h, "disk_verified") > now.get("disk_verified") + 64 && field(h, "disk_written") > now.get("disk_written")
    });
    disk_clean(&later);
    assert!(is_locked(&images.disk()).unwrap(), "the source holds its disk again");
}

#[test]
fn two_vmms_never_open_one_disk() {
    let images = Images::new();
    let _first = source(&images);
    let disk = format!("disk:{}", images.disk().display());
    let mut second = Vmm::start_in(
        tempfile::tempdir().unwrap(),
        &["--kernel", "builtin:testguest", "--memory", "128M", "--drive", &disk],
    );
    let status = second.wait_exit(BOOT_TIMEOUT);
    assert!(!status.success());
    assert!(
        second.stderr_text().contains("in use by another VMM"),
        "{}",
        second.stderr_text()
    );
}

#[test]
fn the_guest_catches_a_disk_changed_behind_its_back() {
    // The checker must be able to fail: scribble over the disk from the host.
    let images = Images::new();
    let vmm = source(&images);
    let scribble = vec![0x5au8; 4 << 20];
    std::os::unix::fs::FileExt::write_all_at(
        &std::fs::File::options().write(true).open(images.disk()).unwrap(),
        &scribble,
        0,
    )
    .unwrap();
    let beat = vmm.wait_for_heartbeat(BOOT_TIMEOUT, |h| field(h, "disk_errors") > 0);
    assert!(
        beat.get("disk_errors") >= 8192,
        "a whole chunk is wrong: {:?}",
        beat.fields
    );
    assert!(vmm.console_text().contains("ERR disk offset="));
}

#[test]
fn a_medium_is_ejected_and_inserted_while_the_guest_runs() {
    let images = Images::new();
    let vmm = source(&images);
    let eject = Request::ChangeMedium { slot: 1, medium: None };
    assert!(matches!(vmm.request(&eject), Reply::Done));
    vmm.wait_for_line("the ejection", BOOT_TIMEOUT, |l| l == "BLK medium sectors=0");
    assert!(!is_locked(&images.medium()).unwrap(), "an ejected medium is not held");
    let before = vmm.heartbeats().last().unwrap().get("cd_verified");
    let other = images.dir.path().join("other.iso");
    vmig_backend::testguest::write_medium(&other, 2 << 20).unwrap();
    let insert = Request::ChangeMedium {
        slot: 1,
        medium: Some(other.clone()),
    };
    assert!(matches!(vmm.request(&insert), Reply::Done));
    vmm.wait_for_line("the new medium", BOOT_TIMEOUT, |l| l == "BLK medium sectors=4096");
    let beat = vmm.wait_for_heartbeat(BOOT_TIMEOUT, |h| field(h, "cd_verified") > before + 10);
    disk_clean(&beat);
    // The disk is no CD/DVD drive.
    let mut client = vmig_backend::runtime::control::ControlClient::connect(&vmm.control).unwrap();
    let refused = client.request(&Request::ChangeMedium { slot: 0, medium: None });
    assert_eq!(refused.unwrap_err().code(), Some("invalid"));
    assert!(Path::new(&other).exists());
}
