//! Host maintenance end to end on the lab: `vmig evacuate` (plans, bars,
//! policies, redundancy over the whole plan, exit codes), `vmig apply` of
//! a saved plan and its stale-plan refusal, an uncordon that ends the
//! pending steps, a run resumed after vmig was killed, two operators at
//! once, and `vmig rollback`. In every case each VM runs exactly once and
//! the journal says where.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::lab::{Lab, json_lines, signal, text};
use serde_json::Value;

const VMIG: &str = env!("CARGO_BIN_EXE_vmig");
/// An idle guest that parks its vCPU: many of them fit on two cores.
const IDLE: &str = "idle verify=0 sleep=1 hb=500";

fn idle_vm(lab: &Lab, name: &str, host: &str, extra: &[&str]) {
    lab.create_with(name, host, "64M", IDLE, extra);
}

/// Where each VM is, and its state.
fn placement(lab: &Lab) -> BTreeMap<String, (String, String)> {
    lab.vms()
        .into_iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_string(),
                (
                    v["host"].as_str().unwrap().to_string(),
                    v["state"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

fn show(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// Reads `lines` up to the first that contains `needle` (None: they
/// ended first).
fn first_line(lines: &mut impl Iterator<Item = std::io::Result<String>>, needle: &str) -> Option<String> {
    lines.map_while(Result::ok).find(|l| l.contains(needle))
}

/// The report line among JSON lines already read (`evacuation` or `rollback`).
fn report_in(lines: &[String], key: &str) -> Value {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|l| l.get(key).cloned())
        .unwrap_or_else(|| panic!("no {key} line: {}", lines.join("\n")))
}

/// The report line of `--json` output (`evacuation` or `rollback`).
fn report(out: &std::process::Output, key: &str) -> Value {
    json_lines(&out.stdout)
        .into_iter()
        .find_map(|l| l.get(key).cloned())
        .unwrap_or_else(|| panic!("no {key} line: {}", show(out)))
}

fn status_of(report: &Value) -> BTreeMap<String, String> {
    report["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["vm"].as_str().unwrap().to_string(),
                v["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Every VM is listed once, by one host (the listing's own check), and
/// none runs twice: the agents' own lists, host by host.
fn each_runs_once(lab: &Lab) {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for host in ["hostA", "hostB", "hostC", "hostD"] {
        let dir = lab.host_dir(host).join("state/vms");
        for name in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = name.file_name().to_string_lossy().into_owned();
            if lab.vmm_pid(host, &name).is_some_and(common::lab::alive) {
                *seen.entry(name).or_default() += 1;
            }
        }
    }
    assert!(seen.values().all(|n| *n == 1), "a VM runs twice: {seen:?}");
}

#[test]
fn evacuate_plans_moves_and_verifies_then_rollback_puts_everything_back() {
    let lab = Lab::up_hosts(4, &[]);
    // Eight VMs: five on hostA (one stopped for maintenance, one pinned,
    // one of a group whose other member is on hostB), three on hostB.
    idle_vm(&lab, "web1", "hostA", &[]);
    idle_vm(&lab, "web2", "hostA", &[]);
    idle_vm(&lab, "batch", "hostA", &["--maintenance", "stop"]);
    idle_vm(&lab, "license", "hostA", &["--maintenance", "pin"]);
    idle_vm(&lab, "db1", "hostA", &["--redundancy-group", "db"]);
    idle_vm(&lab, "db2", "hostB", &["--redundancy-group", "db"]);
    idle_vm(&lab, "cache", "hostB", &[]);
    idle_vm(&lab, "web3", "hostB", &[]);
    let before = placement(&lab);

    // A dry run plans and changes nothing.
    let out = lab.run(&["evacuate", "hostA", "--dry-run", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let plan = report(&out, "evacuation");
    assert_eq!(plan["dry_run"], true);
    let planned = status_of(&plan);
    assert_eq!(planned["web1"], "planned");
    assert_eq!(planned["batch"], "planned", "{plan}");
    assert_eq!(planned["license"], "pinned");
    assert_eq!(placement(&lab), before, "the dry run changed something");
    assert!(!lab.ok(&["hosts"]).contains("cordoned"));

    // On a terminal: bars (per VM and overall), and the table at the end.
    let command = format!(
        "{VMIG} --inventory {} evacuate hostA",
        lab.inventory().to_str().unwrap()
    );
    let out = Command::new("script")
        .args(["-qefc", &command, "/dev/null"])
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .output()
        .expect("script(1) runs a pseudo-terminal (util-linux)");
    let screen = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{screen}");
    assert!(screen.contains("VMs"), "no overall bar: {screen}");
    assert!(screen.contains("evacuation of hostA (run r-"), "{screen}");
    assert!(screen.contains("complete"), "{screen}");
    assert!(!screen.contains("{\"note\""), "JSON on a terminal: {screen}");

    let after = placement(&lab);
    for vm in ["web1", "web2", "db1"] {
        assert_ne!(after[vm].0, "hostA", "{vm} is still on hostA: {after:?}");
        assert_eq!(after[vm].1, "running", "{vm}");
    }
    assert_eq!(after["batch"], ("hostA".into(), "stopped".into()));
    assert_eq!(after["license"], ("hostA".into(), "running".into()));
    // The group keeps to distinct chassis: db1 did not join db2's (hostB).
    assert_ne!(after["db1"].0, "hostB", "{after:?}");
    let hosts = lab.ok(&["hosts"]);
    assert!(hosts.contains("hostA is cordoned"), "{hosts}");
    each_runs_once(&lab);

    // The journal knows the run: its moves, each VM where it went.
    let runs = std::fs::read_to_string(lab.host_dir("hostA").join("state/runs.jsonl")).unwrap();
    let run = serde_json::from_str::<Value>(runs.lines().next().unwrap()).unwrap()["run"]
        .as_str()
        .unwrap()
        .to_string();
    let history: Value = serde_json::from_str(&lab.ok(&["history", "--run", &run, "--json"])).unwrap();
    let moved: BTreeMap<String, String> = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["outcome"] == "moved")
        .map(|r| {
            (
                r["vm"].as_str().unwrap().to_string(),
                r["to"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(moved.len(), 3, "{history}");
    for (vm, to) in &moved {
        assert_eq!(&after[vm].0, to, "the journal says {vm} went to {to}");
    }
    // Run again: nothing left to move, and it says so.
    let again = lab.run(&["evacuate", "hostA", "--json"]);
    assert_eq!(again.status.code(), Some(0), "{}", show(&again));
    assert_eq!(
        status_of(&report(&again, "evacuation"))
            .values()
            .filter(|s| *s == "moved")
            .count(),
        0
    );

    // The latest run of this operator is that second, empty one: roll back
    // the first by its id, with a dry run first.
    let dry = lab.run(&["rollback", &run, "--dry-run", "--json"]);
    assert_eq!(dry.status.code(), Some(0), "{}", show(&dry));
    let planned = status_of(&report(&dry, "rollback"));
    assert_eq!(planned.values().filter(|s| *s == "planned").count(), 4, "{planned:?}");
    assert_eq!(placement(&lab), after);
    let back = lab.run(&["rollback", &run, "--json"]);
    assert_eq!(back.status.code(), Some(0), "{}", show(&back));
    let rollback = report(&back, "rollback");
    assert_eq!(rollback["complete"], true, "{rollback}");
    assert_eq!(placement(&lab), before, "not everything came back");
    assert!(!lab.ok(&["hosts"]).contains("cordoned"), "the run's cordon stayed");
    each_runs_once(&lab);

    // The rollback is a run too: its own rollback would move them again.
    let redo = lab.run(&["rollback", "--last", "--dry-run", "--json"]);
    assert_eq!(redo.status.code(), Some(0), "{}", show(&redo));
    let redo = report(&redo, "rollback");
    assert_eq!(redo["of"], rollback["run"], "{redo}");
    let planned = status_of(&redo);
    assert_eq!(planned.values().filter(|s| *s == "planned").count(), 3, "{planned:?}");
}

#[test]
fn bad_input_and_hosts_that_cannot_take_anything_are_named() {
    let lab = Lab::up(&[]);
    idle_vm(&lab, "vm1", "hostA", &[]);
    let code = |args: &[&str]| lab.run(args).status.code();
    assert_eq!(code(&["evacuate", "hostZ"]), Some(7));
    assert_eq!(code(&["evacuate", "hostA", "--parallel", "0"]), Some(2));
    assert_eq!(code(&["evacuate", "hostA", "--deadline", "soon"]), Some(2));
    assert_eq!(code(&["evacuate", "hostA", "--to", "hostA"]), Some(2));
    assert_eq!(code(&["evacuate", "hostA", "--skip", "no.such.rule"]), Some(2));
    assert_eq!(code(&["rollback", "r-0000000000000000"]), Some(7));
    std::fs::write(lab.dir_path().join("junk.json"), "{}").unwrap();
    assert_eq!(
        code(&["apply", lab.dir_path().join("junk.json").to_str().unwrap()]),
        Some(2)
    );

    // Every other host cordoned: the plan says so up front, nothing moves.
    lab.ok(&["host", "cordon", "hostB"]);
    lab.ok(&["host", "cordon", "hostC"]);
    let out = lab.run(&["evacuate", "hostA", "--json"]);
    assert_eq!(out.status.code(), Some(13), "{}", show(&out));
    let vm = &report(&out, "evacuation")["vms"][0];
    assert_eq!(
        (vm["status"].as_str(), vm["rule"].as_str()),
        (Some("left"), Some("host.cordoned")),
        "{vm}"
    );
    assert!(text(&out.stderr).is_empty() || !text(&out.stderr).contains("panic"));
    assert_eq!(lab.vm("vm1")["host"], "hostA");
    assert_eq!(lab.vm("vm1")["state"], "running");
    // --to limits the targets: only hostB, which is cordoned.
    lab.ok(&["host", "uncordon", "hostC"]);
    let out = lab.run(&["evacuate", "hostA", "--to", "hostB", "--json"]);
    assert_eq!(out.status.code(), Some(13), "{}", show(&out));
    let out = lab.run(&["evacuate", "hostA", "--to", "hostC", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(lab.vm("vm1")["host"], "hostC");
}

#[test]
fn a_saved_plan_runs_unless_the_cluster_changed_and_says_what_changed() {
    let lab = Lab::up(&[]);
    idle_vm(&lab, "vm1", "hostA", &[]);
    idle_vm(&lab, "vm2", "hostA", &[]);
    let plan = lab.dir_path().join("plan.json");
    let plan = plan.to_str().unwrap();
    lab.ok(&["evacuate", "hostA", "-o", plan]);
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(plan).unwrap()).unwrap();
    assert_eq!(saved["steps"].as_array().unwrap().len(), 2, "{saved}");
    assert!(!lab.ok(&["hosts"]).contains("cordoned"), "-o changed something");

    // A VM came; another host filled up: refused, each change named.
    idle_vm(&lab, "late", "hostA", &[]);
    let out = lab.run(&["apply", plan]);
    assert_eq!(out.status.code(), Some(8), "{}", show(&out));
    let said = text(&out.stderr);
    assert!(
        said.contains("stale") && said.contains("late is new on hostA"),
        "{said}"
    );
    assert_eq!(lab.vm("vm1")["host"], "hostA");
    lab.ok(&["vm", "destroy", "late"]);

    let out = lab.run(&["apply", plan, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let done = report(&out, "evacuation");
    assert_eq!(done["run"], saved["run"], "the apply is the plan's run");
    for vm in ["vm1", "vm2"] {
        let step = saved["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["vm"] == vm)
            .unwrap();
        assert_eq!(lab.vm(vm)["host"], step["to"], "{vm} went elsewhere than planned");
    }
    // The same plan again: what it did is not a change; nothing moves twice.
    let again = lab.run(&["apply", plan, "--json"]);
    assert_eq!(again.status.code(), Some(0), "{}", show(&again));
}

#[test]
fn an_uncordon_ends_the_pending_steps_and_a_killed_run_resumes_from_the_journal() {
    let lab = Lab::up_with_env(3, &[], &[]);
    for n in 1..=4 {
        idle_vm(&lab, &format!("vm{n}"), "hostA", &[]);
    }
    // One move at a time, the first held once its target is prepared.
    lab.arm("prepared");
    let child = lab
        .command(&["evacuate", "hostA", "--parallel", "1", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    lab.wait_held("prepared", Duration::from_secs(60))
        .expect("no migration reached its target");
    lab.ok(&["host", "uncordon", "hostA"]);
    lab.release("prepared");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(13), "{}", show(&out));
    let statuses = status_of(&report(&out, "evacuation"));
    assert_eq!(statuses.values().filter(|s| *s == "moved").count(), 1, "{statuses:?}");
    assert_eq!(
        statuses.values().filter(|s| *s == "not_started").count(),
        3,
        "{statuses:?}"
    );
    assert!(text(&out.stdout).contains("uncordoned"), "{}", show(&out));
    each_runs_once(&lab);

    // A new evacuation; vmig is killed while its move is held.
    lab.disarm_all();
    lab.arm("prepared");
    let child = lab
        .command(&["evacuate", "hostA", "--parallel", "1", "--json"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    lab.wait_held("prepared", Duration::from_secs(60))
        .expect("no migration reached its target");
    signal(child.id() as i32, libc::SIGKILL);
    let _ = child.wait_with_output();
    // Run again while that move is still held: the run is found, the move
    // in flight followed, the rest moved, nothing twice.
    let mut again = lab
        .command(&["evacuate", "hostA", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = again.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let resuming = first_line(&mut lines, "\"resuming\"").expect("the run was not found again");
    assert!(resuming.contains("in flight"), "{resuming}");
    lab.release("prepared");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = again.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", rest.join("\n"));
    let end: Value = report_in(&rest, "evacuation");
    assert_eq!(end["resumed"], true, "{end}");
    for vm in placement(&lab) {
        assert_ne!(vm.1.0, "hostA", "{vm:?}");
    }
    each_runs_once(&lab);
    // The journal: every VM moved exactly once in that run.
    let history: Value =
        serde_json::from_str(&lab.ok(&["history", "--run", end["run"].as_str().unwrap(), "--json"])).unwrap();
    let mut moved: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["outcome"] == "moved")
        .map(|r| r["vm"].as_str().unwrap())
        .collect();
    moved.sort_unstable();
    assert_eq!(moved, ["vm2", "vm3", "vm4"], "{history}");
}

#[test]
fn two_operators_evacuating_overlapping_hosts_at_once_each_vm_runs_once() {
    let lab = Lab::up_hosts(4, &[]);
    for n in 1..=3 {
        idle_vm(&lab, &format!("a{n}"), "hostA", &[]);
        idle_vm(&lab, &format!("b{n}"), "hostB", &[]);
    }
    let spawn = |host: &str| {
        lab.command(&["evacuate", host, "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (one, two) = (spawn("hostA"), spawn("hostB"));
    let (one, two) = (one.wait_with_output().unwrap(), two.wait_with_output().unwrap());
    for out in [&one, &two] {
        assert!(matches!(out.status.code(), Some(0 | 13)), "{}", show(out));
    }
    each_runs_once(&lab);
    // What each could not take, it says; the rest is off both hosts.
    let after = placement(&lab);
    for (out, host) in [(&one, "hostA"), (&two, "hostB")] {
        let statuses = status_of(&report(out, "evacuation"));
        for (vm, status) in statuses {
            if status != "moved" {
                assert_eq!(after[&vm].0, host, "{vm} is reported {status} but moved");
            } else {
                assert_ne!(after[&vm].0, host, "{vm} is reported moved but is on {host}");
            }
        }
    }
    assert_eq!(after.len(), 6);
}

fn runbook(name: &str) -> String {
    format!("{}/runbooks/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn on(lab: &Lab, hosts: &[&str]) -> Vec<String> {
    placement(lab)
        .into_iter()
        .filter(|(_, (host, _))| hosts.contains(&host.as_str()))
        .map(|(vm, _)| vm)
        .collect()
}

#[test]
fn the_shipped_maintenance_runbooks_empty_hosts_and_bring_the_vms_back() {
    let lab = Lab::up_hosts(4, &[]);
    // Eight VMs on hostA, hostB and hostD (hostD shares hostA's chassis).
    for n in 1..=4 {
        idle_vm(&lab, &format!("a{n}"), "hostA", &[]);
    }
    for n in 1..=2 {
        idle_vm(&lab, &format!("b{n}"), "hostB", &[]);
        idle_vm(&lab, &format!("d{n}"), "hostD", &[]);
    }
    let before = placement(&lab);
    let not_cordoned = |lab: &Lab| !lab.ok(&["hosts"]).contains("cordoned");

    // evacuate.lua empties hostA; the operator's `rollback --last` (the
    // runbook's run, which takes in the evacuation nested in it) undoes it.
    let out = lab.run(&["run", &runbook("evacuate.lua"), "hostA", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(on(&lab, &["hostA"]).is_empty(), "{:?}", placement(&lab));
    each_runs_once(&lab);
    let back = lab.run(&["rollback", "--last", "--json"]);
    assert_eq!(back.status.code(), Some(0), "{}", show(&back));
    assert_eq!(placement(&lab), before);
    assert!(not_cordoned(&lab));

    // drain-chassis.lua empties both hosts of lab-chassis-1, and none of
    // their VMs went to the other.
    let out = lab.run(&["run", &runbook("drain-chassis.lua"), "lab-chassis-1", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(on(&lab, &["hostA", "hostD"]).is_empty(), "{:?}", placement(&lab));
    let history: Value = serde_json::from_str(&lab.ok(&["history", "--json"])).unwrap();
    assert!(
        !history.as_array().unwrap().iter().any(|r| matches!(
            (r["from"].as_str(), r["to"].as_str()),
            (Some("hostA"), Some("hostD")) | (Some("hostD"), Some("hostA"))
        )),
        "a VM moved within the chassis: {history}"
    );
    each_runs_once(&lab);
    let back = lab.run(&["rollback", "--last", "--json"]);
    assert_eq!(back.status.code(), Some(0), "{}", show(&back));
    assert_eq!(placement(&lab), before);
    assert!(not_cordoned(&lab), "{}", lab.ok(&["hosts"]));

    // rolling-maintenance.lua: host after host, the hook runs on an empty
    // host, and every VM comes home.
    let marks = lab.dir_path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let hook = format!("touch {}/{{host}}.done", marks.display());
    let out = lab.run(&[
        "run",
        &runbook("rolling-maintenance.lua"),
        "--yes",
        "--json",
        "--",
        &hook,
        "hostA",
        "hostB",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(marks.join("hostA.done").exists() && marks.join("hostB.done").exists());
    assert_eq!(placement(&lab), before);
    assert!(not_cordoned(&lab));
    each_runs_once(&lab);

    // A hook that fails stops the roll there: that host stays cordoned and
    // empty for the operator to look at; the next is not touched.
    let out = lab.run(&[
        "run",
        &runbook("rolling-maintenance.lua"),
        "--yes",
        "--json",
        "--",
        "false",
        "hostB",
        "hostA",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(text(&out.stderr).contains("the hook failed on hostB"), "{}", show(&out));
    assert!(on(&lab, &["hostB"]).is_empty());
    assert_eq!(on(&lab, &["hostA"]).len(), 4);
    assert!(lab.ok(&["hosts"]).contains("hostB is cordoned"));
    each_runs_once(&lab);
}

#[test]
fn a_step_whose_target_dies_fails_alone_and_an_agent_restart_mid_run_loses_nothing() {
    let lab = Lab::up_with_env(
        3,
        &[
            "--accept-timeout",
            "5",
            "--stream-timeout",
            "5",
            "--handoff-timeout",
            "5",
        ],
        &[],
    );
    // Some memory filled, so that a first pass has full batches to hold at.
    for n in 1..=3 {
        let name = format!("vm{n}");
        lab.create(&name, "hostA", "64M", "fill=16M idle verify=0 sleep=1 hb=500");
        lab.wait_filled(&name);
    }
    lab.arm("prepared");
    lab.arm("first-pass");
    let child = lab
        .command(&["evacuate", "hostA", "--to", "hostB", "--parallel", "1", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // vm1: its target prepared a receiver, which dies before anything is sent.
    lab.wait_held("prepared", Duration::from_secs(60))
        .expect("no migration reached its target");
    let receiver = lab.vmm_pid("hostB", "vm1").expect("no receiver for vm1 on hostB");
    signal(receiver, libc::SIGKILL);
    common::lab::wait_gone(receiver);
    lab.release("prepared");
    // vm2: its source VMM holds in the first pass; hostA's agent is killed
    // and restarted under it.
    if lab.wait_held("first-pass", Duration::from_secs(30)).is_none() {
        let mut child = child;
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!("no migration reached its first pass: {}", show(&out));
    }
    let agent = lab.agent_pid("hostA");
    signal(agent, libc::SIGKILL);
    common::lab::wait_gone(agent);
    lab.restart_agents();
    lab.release("first-pass");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(13), "{}", show(&out));
    let statuses = status_of(&report(&out, "evacuation"));
    assert_eq!(statuses["vm1"], "failed", "{}", show(&out));
    assert_eq!(statuses["vm2"], "moved", "{}", show(&out));
    assert_eq!(statuses["vm3"], "moved", "{}", show(&out));
    each_runs_once(&lab);
    let after = placement(&lab);
    assert_eq!(after["vm1"], ("hostA".into(), "running".into()), "{after:?}");
    // Run again: the one left moves, the others are not touched.
    let again = lab.run(&["evacuate", "hostA", "--json"]);
    assert_eq!(again.status.code(), Some(0), "{}", show(&again));
    let statuses = status_of(&report(&again, "evacuation"));
    assert_eq!(statuses.keys().collect::<Vec<_>>(), ["vm1"], "{statuses:?}");
    assert!(on(&lab, &["hostA"]).is_empty());
    each_runs_once(&lab);
}

#[test]
fn a_rollback_skips_what_moved_again_or_was_deleted_and_a_runbook_plans_evacuates_and_rolls_back() {
    let lab = Lab::up(&[]);
    for vm in ["vm1", "vm2", "vm3"] {
        idle_vm(&lab, vm, "hostA", &[]);
    }
    let out = lab.run(&["evacuate", "hostA", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let run = report(&out, "evacuation")["run"].as_str().unwrap().to_string();
    // Since: vm1 moved again, vm2 deleted.
    let vm1 = lab.vm("vm1")["host"].as_str().unwrap().to_string();
    let elsewhere = if vm1 == "hostB" { "hostC" } else { "hostB" };
    lab.ok(&["migrate", "vm1", elsewhere]);
    lab.ok(&["vm", "destroy", "vm2"]);
    let back = lab.run(&["rollback", &run, "--json"]);
    assert_eq!(back.status.code(), Some(0), "{}", show(&back));
    let rollback = report(&back, "rollback");
    let by_vm: BTreeMap<String, Value> = rollback["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["vm"].as_str().unwrap().to_string(), v.clone()))
        .collect();
    assert_eq!(by_vm["vm1"]["status"], "skipped", "{rollback}");
    assert!(
        by_vm["vm1"]["message"].as_str().unwrap().contains("moved again since"),
        "{rollback}"
    );
    assert_eq!(by_vm["vm2"]["status"], "skipped");
    assert!(
        by_vm["vm2"]["message"].as_str().unwrap().contains("deleted since"),
        "{rollback}"
    );
    assert_eq!(by_vm["vm3"]["status"], "moved");
    assert_eq!(lab.vm("vm3")["host"], "hostA");
    assert_eq!(lab.vm("vm1")["host"], elsewhere, "a skipped VM was moved");

    // The same from Lua: a plan changes nothing; evacuate and rollback
    // return their reports.
    let file = lab.dir_path().join("cycle.lua");
    std::fs::write(
        &file,
        r#"
local plan = vmig.plan("hostA", { parallel = 1 })
assert(plan.host == "hostA" and #plan.steps == 1 and plan.steps[1].vm == "vm3", "plan")
assert(#vmig.vms({ host = "hostA" }) == 1, "the plan moved something")
local ok, e = pcall(vmig.evacuate, "hostZ")
assert(not ok and e.code == "not_found", "unknown host")
ok, e = pcall(vmig.evacuate, "hostA", { parallel = 99 })
assert(not ok and e.code == "invalid", "parallel")
local away = vmig.evacuate("hostA", { parallel = 1, on_error = "stop" })
assert(away.complete and away.vms[1].status == "moved" and away.run ~= vmig.run_id, "evacuate")
assert(#vmig.history({ run = vmig.run_id }) == 1, "the runbook's run takes in the evacuation's")
local back = vmig.rollback(away.run)
assert(back.complete and back.vms[1].status == "moved" and back.vms[1].to == "hostA", "rollback")
ok, e = pcall(vmig.rollback, "r-0000000000000000")
assert(not ok and e.code == "not_found", "unknown run")
vmig.log.info("cycle done")
"#,
    )
    .unwrap();
    let out = lab.run(&["run", file.to_str().unwrap(), "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(text(&out.stdout).contains("cycle done"));
    assert_eq!(lab.vm("vm3")["host"], "hostA");
    assert!(!lab.ok(&["hosts"]).contains("cordoned"), "{}", lab.ok(&["hosts"]));
}

#[test]
fn a_move_waiting_for_a_busy_hosts_budget_queues_instead_of_staying_behind() {
    // Each host takes one migration at a time; hostB's is taken by an
    // outside migration (held in its first pass) when the evacuation starts.
    let lab = Lab::up_with_env(3, &["--max-migration-cost", "1"], &[]);
    lab.create("outside", "hostB", "64M", "fill=16M idle verify=0 sleep=1 hb=500");
    lab.wait_filled("outside");
    for vm in ["vm1", "vm2"] {
        idle_vm(&lab, vm, "hostA", &[]);
    }
    lab.arm("first-pass");
    let outside = lab.spawn_migrate("outside", "hostC", &[]);
    lab.wait_held("first-pass", Duration::from_secs(60))
        .expect("the outside migration never reached its first pass");
    let mut evacuation = lab
        .command(&["evacuate", "hostA", "--to", "hostB", "--parallel", "2", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(evacuation.stdout.take().unwrap()).lines();
    let queued = first_line(&mut lines, "\"queued\"");
    lab.release("first-pass");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = evacuation.wait().unwrap();
    assert!(queued.is_some(), "the move did not queue: {}", rest.join("\n"));
    assert_eq!(status.code(), Some(0), "{}", rest.join("\n"));
    assert!(outside.wait_with_output().unwrap().status.success());
    assert!(on(&lab, &["hostA"]).is_empty());
    each_runs_once(&lab);
}

#[test]
fn the_deadline_cancels_what_is_slow_and_ctrl_c_stops_a_run_that_the_next_resumes() {
    let lab = Lab::up_with_env(3, &[], &[]);
    for vm in ["vm1", "vm2"] {
        lab.create(vm, "hostA", "64M", "fill=16M idle verify=0 sleep=1 hb=500");
        lab.wait_filled(vm);
    }
    // vm1's first pass is held past a 2 s deadline: vm2 never starts, and
    // vm1's move is cancelled (slow), not left hanging.
    lab.arm("first-pass");
    let mut child = lab
        .command(&["evacuate", "hostA", "--parallel", "1", "--deadline", "2s", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    lab.wait_held("first-pass", Duration::from_secs(60))
        .expect("no migration reached its first pass");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = first_line(&mut lines, "not_started").expect("the deadline never ended the pending move");
    assert!(deadline.contains("deadline"), "{deadline}");
    // The move in flight is cancelled (its agent says so) before it may go on.
    let cancel = first_line(&mut lines, "\"cancel\"").expect("the move in flight was not cancelled");
    assert!(cancel.contains("\"accepted\":true"), "{cancel}");
    lab.release("first-pass");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert_eq!(child.wait().unwrap().code(), Some(13), "{}", rest.join("\n"));
    let ended: Value = report_in(&rest, "evacuation");
    let statuses = status_of(&ended);
    assert_eq!(statuses["vm1"], "slow", "{ended}");
    assert_eq!(statuses["vm2"], "not_started", "{ended}");
    assert_eq!(on(&lab, &["hostA"]).len(), 2);
    each_runs_once(&lab);

    // Ctrl-C in the middle of the next run: exit 12, nothing half done; the
    // same command again resumes that run and finishes it.
    lab.disarm_all();
    lab.arm("first-pass");
    let mut child = lab
        .command(&["evacuate", "hostA", "--parallel", "1", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    lab.wait_held("first-pass", Duration::from_secs(60))
        .expect("no migration reached its first pass");
    signal(child.id() as i32, libc::SIGINT);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let cancel = first_line(&mut lines, "\"cancel\"").expect("Ctrl-C did not cancel the move in flight");
    assert!(cancel.contains("\"accepted\":true"), "{cancel}");
    lab.release("first-pass");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert_eq!(child.wait().unwrap().code(), Some(12), "{}", rest.join("\n"));
    let stopped: Value = report_in(&rest, "evacuation");
    assert_eq!(on(&lab, &["hostA"]).len(), 2, "{stopped}");
    each_runs_once(&lab);
    let again = lab.run(&["evacuate", "hostA", "--json"]);
    assert_eq!(again.status.code(), Some(0), "{}", show(&again));
    let resumed = report(&again, "evacuation");
    assert_eq!(resumed["resumed"], true, "{resumed}");
    assert_eq!(resumed["run"], stopped["run"], "a new run, not the interrupted one");
    assert!(on(&lab, &["hostA"]).is_empty());
    each_runs_once(&lab);
}
