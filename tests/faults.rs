//! Faults during migrations between agents: the regression tests of the
//! probes that found vmig running a VM twice, reporting the wrong outcome,
//! ignoring a cancel or leaving things behind, and a representative subset of
//! the fault matrix (the whole of it is `cargo bench --bench faults`).

mod common;

use std::process::Child;
use std::time::{Duration, Instant};

use common::faults::{self, Cell, Fault, Struck};
use common::lab::{Lab, json_lines, migrated, signal, text, wait_gone, zombies_of};
use serde_json::Value;

/// The failure line of `vmig migrate --json`.
fn failed(stdout: &[u8]) -> Value {
    json_lines(stdout)
        .into_iter()
        .find_map(|v| v.get("failed").cloned())
        .unwrap_or_else(|| panic!("no failure line: {}", text(stdout)))
}

fn filled_vm(lab: &Lab) {
    lab.create("vm1", "hostA", "256M", "fill=96M dirty=32M rate=40 hb=100");
    lab.wait_filled("vm1");
}

/// `vmig migrate vm1 hostB`, held at `point`.
fn held_migration(lab: &Lab, point: &str, extra: &[&str]) -> Child {
    lab.arm(point);
    let client = lab.spawn_migrate("vm1", "hostB", extra);
    lab.wait_held(point, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("the migration never reached {point}"));
    client
}

fn kill_source_agent_mid_copy(signal_number: i32) {
    let lab = faults::lab();
    filled_vm(&lab);
    let client = held_migration(&lab, "first-pass", &["--bandwidth", "64M"]);
    let agent = lab.agent_pid("hostA");
    signal(agent, signal_number);
    wait_gone(agent);
    lab.restart_agents();
    lab.release("first-pass");
    let out = client.wait_with_output().unwrap();
    // The restarted agent follows the migration its VMM finished.
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(migrated(&out)["target"], "hostB");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let vms = lab.vms();
        assert!(vms.len() <= 1, "a second copy is listed: {vms:?}");
        if vms.len() == 1 && vms[0]["host"] == "hostB" && vms[0]["state"] == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "vm1 never settled on hostB: {vms:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(lab.vm_dirs("hostA").is_empty(), "hostA keeps a record of vm1");
    let start = lab.run(&["vm", "start", "vm1"]);
    assert_eq!(start.status.code(), Some(8), "{}", text(&start.stderr));
    assert_eq!(lab.vmms_of("vm1").len(), 1, "exactly one copy runs");
}

#[test]
fn a_source_agent_killed_and_restarted_mid_migration_leaves_one_copy() {
    kill_source_agent_mid_copy(libc::SIGKILL);
}

#[test]
fn a_source_agent_terminated_and_restarted_mid_migration_leaves_one_copy() {
    kill_source_agent_mid_copy(libc::SIGTERM);
}

#[test]
fn a_client_that_loses_its_agent_reports_where_the_vm_went() {
    let lab = faults::lab();
    filled_vm(&lab);
    let client = held_migration(&lab, "first-pass", &["--bandwidth", "64M"]);
    // The source's agent dies for good; its VMM finishes the move.
    let agent = lab.agent_pid("hostA");
    signal(agent, libc::SIGKILL);
    wait_gone(agent);
    lab.release("first-pass");
    let out = client.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "the VM moved: {stderr}");
    let result = migrated(&out);
    assert!(
        result["note"]
            .as_str()
            .unwrap_or_default()
            .contains("hostB says vm1 arrived"),
        "{result}"
    );
    assert!(
        !stderr.contains("https://") && !text(&out.stdout).contains("https://"),
        "{stderr}"
    );
    let vms = lab.ok(&["vms", "--host", "hostB", "--json"]);
    assert!(vms.contains("\"running\""), "{vms}");
}

#[test]
fn a_killed_source_vmm_is_reported_lost_not_running() {
    let lab = faults::lab();
    filled_vm(&lab);
    let client = held_migration(&lab, "first-pass", &["--bandwidth", "64M"]);
    signal(lab.vmm_pid("hostA", "vm1").unwrap(), libc::SIGKILL);
    lab.release("first-pass");
    let out = client.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(11), "{stderr}");
    assert_eq!(failed(&out.stdout)["code"], "lost");
    assert!(
        stderr.contains("its VMM process died") && stderr.contains("lost") && !stderr.contains("keeps running"),
        "{stderr}"
    );
    let vm = lab.vm("vm1");
    assert_eq!(
        (vm["host"].as_str(), vm["state"].as_str()),
        (Some("hostA"), Some("lost")),
        "{vm}"
    );
    assert!(lab.vmms_of("vm1").is_empty(), "nothing runs it");
    // Lost is not in doubt: it boots again.
    lab.ok(&["vm", "start", "vm1"]);
}

#[test]
fn ctrl_c_cancels_a_migration_before_its_switchover() {
    let lab = faults::lab();
    filled_vm(&lab);
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let client = held_migration(&lab, "first-pass", &["--bandwidth", "64M"]);
        signal(client.id() as i32, sig);
        lab.release("first-pass");
        let out = client.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        assert_eq!(failed(&out.stdout)["code"], "cancelled", "{}", text(&out.stdout));
        assert!(
            text(&out.stderr).contains("keeps running on hostA"),
            "{}",
            text(&out.stderr)
        );
        let vm = lab.vm("vm1");
        assert_eq!(
            (vm["host"].as_str(), vm["state"].as_str()),
            (Some("hostA"), Some("running")),
            "{vm}"
        );
        assert_eq!(lab.vms().len(), 1, "hostB kept nothing");
    }
}

#[test]
fn a_cancel_from_elsewhere_stops_the_migration() {
    let lab = faults::lab();
    filled_vm(&lab);
    let client = held_migration(&lab, "first-pass", &["--bandwidth", "64M"]);
    let said = lab.dir.path().join("cancel.out");
    let canceller = lab
        .command(&["cancel", "vm1", "--json"])
        .stdout(std::fs::File::create(&said).unwrap())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The cancel is taken while the copy is held; then the copy goes on into it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&said)
        .unwrap_or_default()
        .contains("\"cancel\"")
    {
        assert!(Instant::now() < deadline, "vmig cancel said nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
    lab.release("first-pass");
    let cancelled = canceller.wait_with_output().unwrap();
    let out = client.wait_with_output().unwrap();
    assert_eq!(
        cancelled.status.code(),
        Some(1),
        "vmig cancel: {}",
        text(&cancelled.stderr)
    );
    let told = std::fs::read(&said).unwrap();
    assert_eq!(failed(&told)["code"], "cancelled", "vmig cancel: {}", text(&told));
    assert_eq!(out.status.code(), Some(1), "vmig migrate: {}", text(&out.stderr));
    assert_eq!(
        failed(&out.stdout)["code"],
        "cancelled",
        "vmig migrate: {}",
        text(&out.stdout)
    );
    assert_eq!(lab.vm("vm1")["host"], "hostA");
    assert_eq!(lab.vm("vm1")["state"], "running");
    // Nothing to cancel now.
    let again = lab.run(&["cancel", "vm1"]);
    assert_eq!(again.status.code(), Some(8), "{}", text(&again.stderr));
}

#[test]
fn a_cancel_finds_the_migrating_vm_on_its_source_not_its_target() {
    // The target, hostA, comes first in the inventory and lists the VM
    // as incoming: the commands must take the source's copy.
    let lab = faults::lab();
    lab.create("vm1", "hostB", "256M", "fill=96M hb=100");
    lab.wait_filled("vm1");
    lab.arm("first-pass");
    let client = lab.spawn_migrate("vm1", "hostA", &["--bandwidth", "64M"]);
    lab.wait_held("first-pass", Duration::from_secs(60))
        .expect("the copy began");
    let listed: Vec<String> = lab
        .vms()
        .iter()
        .map(|v| format!("{} {}", v["host"], v["state"]))
        .collect();
    assert!(listed.iter().any(|l| l.contains("incoming")), "{listed:?}");
    let said = lab.dir.path().join("cancel.out");
    let canceller = lab
        .command(&["cancel", "vm1", "--json"])
        .stdout(std::fs::File::create(&said).unwrap())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&said)
        .unwrap_or_default()
        .contains("\"cancel\"")
    {
        assert!(Instant::now() < deadline, "vmig cancel said nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
    lab.release("first-pass");
    let cancelled = canceller.wait_with_output().unwrap();
    assert_eq!(cancelled.status.code(), Some(1), "{}", text(&cancelled.stderr));
    assert_eq!(failed(&std::fs::read(&said).unwrap())["code"], "cancelled");
    let out = client.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let vm = lab.vm("vm1");
    assert_eq!(
        (vm["host"].as_str(), vm["state"].as_str()),
        (Some("hostB"), Some("running")),
        "{vm}"
    );
}

#[test]
fn a_cancel_after_the_switchover_began_reports_the_move() {
    let lab = faults::lab();
    filled_vm(&lab);
    let client = held_migration(&lab, "after-go", &["--bandwidth", "64M"]);
    signal(client.id() as i32, libc::SIGINT);
    // The client asks, hears it is too late, and waits.
    std::thread::sleep(Duration::from_secs(2));
    lab.release("after-go");
    let out = client.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        json_lines(&out.stdout)
            .iter()
            .any(|l| l["cancel"]["accepted"] == Value::Bool(false)),
        "the cancel was refused: {}",
        text(&out.stdout)
    );
    assert_eq!(migrated(&out)["target"], "hostB");
    assert_eq!(lab.vm("vm1")["host"], "hostB");
}

#[test]
fn a_receiver_whose_sender_never_comes_ends_and_leaves_nothing() {
    let lab = faults::lab();
    filled_vm(&lab);
    let client = held_migration(&lab, "prepared", &[]);
    let receiver = lab.vmm_pid("hostB", "vm1").expect("a receiving VMM");
    // The token file is gone once the receiver has read it.
    assert!(!lab.vm_files("hostB", "vm1").contains(&"token".to_string()));
    // The source's agent dies before its VMM connects, and stays down.
    let agent = lab.agent_pid("hostA");
    signal(agent, libc::SIGKILL);
    wait_gone(agent);
    let started = Instant::now();
    wait_gone(receiver);
    assert!(
        started.elapsed() < Duration::from_secs(faults::ACCEPT_S + 10),
        "the receiver waited {:?}",
        started.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lab.vm_dirs("hostB").is_empty() {
        assert!(
            Instant::now() < deadline,
            "hostB keeps {:?}",
            lab.vm_files("hostB", "vm1")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let listed = lab.ok(&["vms", "--host", "hostB", "--json"]);
    assert_eq!(listed.trim(), "[]", "{listed}");
    assert!(zombies_of(lab.agent_pid("hostB")).is_empty());
    // The client, without the source's agent, learns from the target that
    // nothing moved, and says what it cannot know.
    let out = client.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("did not move") && stderr.contains("not known"),
        "{stderr}"
    );
}

#[test]
fn a_failed_create_or_start_leaves_nothing_behind() {
    let lab = faults::lab();
    let missing = [
        "vm",
        "create",
        "--name",
        "vm1",
        "--host",
        "hostA",
        "--kernel",
        "/nonexistent/kernel",
    ];
    for _ in 0..3 {
        let out = lab.run(&missing);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains("cannot start vm1"), "{}", text(&out.stderr));
    }
    assert!(lab.vms().is_empty(), "no definition is left: {:?}", lab.vms());
    assert!(lab.vm_dirs("hostA").is_empty(), "{:?}", lab.vm_dirs("hostA"));
    assert!(zombies_of(lab.agent_pid("hostA")).is_empty(), "no defunct VMMs");
    // The retry with a kernel that exists works.
    lab.create("vm1", "hostA", "128M", "hb=200");
    assert_eq!(lab.vm("vm1")["state"], "running");
}

#[test]
fn a_representative_subset_of_the_fault_matrix_holds() {
    let lab = faults::lab();
    let cells = [
        (Fault::Kill, Struck::SourceAgent, "later-round"),
        (Fault::Kill, Struck::TargetVmm, "first-pass"),
        (Fault::Kill, Struck::TargetVmm, "after-go"),
        (Fault::Kill, Struck::SourceVmm, "after-running"),
        (Fault::Term, Struck::SourceVmm, "first-pass"),
        (Fault::Term, Struck::TargetAgent, "finish"),
        (Fault::Stop, Struck::TargetVmm, "final-state"),
        (Fault::Stop, Struck::SourceAgent, "first-pass"),
        (Fault::Stop, Struck::Client, "later-round"),
        (Fault::Cut, Struck::VmmLink, "after-go"),
        (Fault::Cut, Struck::Client, "first-pass"),
        (Fault::Cut, Struck::TargetAgent, "prepared"),
    ];
    let mut broken = Vec::new();
    for (fault, struck, phase) in cells {
        let cell = Cell { fault, struck, phase };
        match faults::trial(&lab, cell) {
            Ok(seen) => eprintln!(
                "{cell}: exit {:?}, vm1 {} on {} ({:.1} s)",
                seen.exit, seen.state, seen.host, seen.seconds
            ),
            Err(why) => {
                eprintln!("{cell}: FAILED: {why}");
                broken.push(format!("{cell}: {why}"));
            }
        }
    }
    assert!(broken.is_empty(), "cells that broke a promise:\n{}", broken.join("\n"));
}

/// Nobody can say how the handoff ended: the target's VMM died after Go and
/// its agent answers no one for longer than the source's agent waits. Then
/// `vmig migrate` says in doubt (exit 6), the VM cannot be started on its
/// source, and once the target's agent answers, the agents settle it: the
/// target never committed, so the VM runs on its source again.
#[test]
fn a_handoff_nobody_can_decide_is_in_doubt_until_the_agents_settle_it() {
    let lab = faults::lab();
    filled_vm(&lab);
    lab.arm("after-go");
    let client = lab.spawn_migrate("vm1", "hostB", &["--bandwidth", "64M"]);
    let target_vmm = lab
        .wait_held("after-go", Duration::from_secs(60))
        .expect("the migration never reached Go");
    let target_agent = lab.agent_pid("hostB");
    signal(target_agent, libc::SIGSTOP);
    signal(target_vmm, libc::SIGKILL);
    wait_gone(target_vmm);
    lab.release("after-go");
    let out = client.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    let line = failed(&out.stdout);
    // While the target's agent cannot answer, the source holds vm1 in doubt.
    let on_source = lab.run(&["vms", "--host", "hostA", "--json"]);
    signal(target_agent, libc::SIGCONT);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert_eq!(line["code"], "in_doubt", "{line}");
    let on_source: Value = serde_json::from_slice(&on_source.stdout).unwrap();
    assert_eq!(on_source[0]["state"], "in_doubt", "{on_source}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let vms = lab.vms();
        assert!(
            vms.len() <= 1 || vms.iter().filter(|v| v["state"] == "running").count() <= 1,
            "{vms:?}"
        );
        if vms.iter().any(|v| v["host"] == "hostA" && v["state"] == "running") {
            break;
        }
        assert!(Instant::now() < deadline, "vm1 was never settled on hostA: {vms:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A cut whose process was killed is swept before the next lab starts, and
/// a live process's cut is not.
#[test]
fn a_cut_left_by_a_killed_run_is_swept_and_a_live_one_kept() {
    use common::netcut::{Cut, Flow, sweep_stale};
    use std::process::Command;
    // A lab starting meanwhile would sweep the stale tables made below
    // before this test looks at them.
    let _alone = common::lab::exclusive();
    let tables = || {
        let out = Command::new("nft").args(["list", "tables"]).output().unwrap();
        text(&out.stdout)
    };
    // A process that ends at once: its pid names a table it never drops.
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = format!("vmigcut_{dead}_1_0");
    let status = Command::new("nft")
        .args(["add", "table", "inet", &stale])
        .status()
        .unwrap();
    assert!(status.success());
    // The first naming carried no start time.
    let legacy = format!("vmigcut{dead}_0");
    let status = Command::new("nft")
        .args(["add", "table", "inet", &legacy])
        .status()
        .unwrap();
    assert!(status.success());
    let flow = Flow {
        daddr: Some("127.0.9.9".parse().unwrap()),
        dport: Some(9),
        ..Flow::default()
    };
    let live = Cut::new(&[flow]);
    assert!(tables().contains(&stale) && tables().contains(&legacy));
    sweep_stale();
    let left = tables();
    assert!(!left.contains(&stale), "the stale cut stayed: {left}");
    assert!(
        !left.contains(&legacy),
        "the stale cut of the first naming stayed: {left}"
    );
    let name = live.table().to_string();
    assert!(left.contains(&name), "the live cut went: {left}");
    drop(live);
    assert!(!tables().contains(&name));
}
