//! Host maintenance on the lab: cordons, kept by the agents across restarts,
//! seen by prechecks and placement, and enforced by the agents themselves.

mod common;

use common::lab::{Lab, text};
use serde_json::Value;

#[test]
fn a_cordoned_host_takes_no_new_vms_until_uncordoned_even_across_an_agent_restart() {
    let lab = Lab::up(&[]);
    lab.create("vm1", "hostA", "64M", "idle hb=200");
    lab.ok(&["host", "cordon", "hostB", "--reason", "firmware update"]);
    let hosts = lab.ok(&["hosts"]);
    assert!(
        hosts.contains("hostB is cordoned by operator: firmware update"),
        "{hosts}"
    );

    let out = lab.run(&["precheck", "vm1", "hostB", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let verdict: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verdict["errors"][0]["rule"], "host.cordoned", "{verdict}");
    assert!(
        verdict["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("firmware update")
    );
    // Refused by the prechecks, and by hostB's agent past them.
    assert_eq!(lab.run(&["migrate", "vm1", "hostB"]).status.code(), Some(1));
    let skipped = lab.run(&["migrate", "vm1", "hostB", "--skip", "host.cordoned"]);
    assert_ne!(skipped.status.code(), Some(0));
    assert!(text(&skipped.stderr).contains("cordoned"), "{}", text(&skipped.stderr));
    assert_eq!(lab.vm("vm1")["host"], "hostA");
    assert_eq!(lab.vm("vm1")["state"], "running");

    // The cordon outlives hostB's agent.
    let pid = lab.agent_pid("hostB");
    // SAFETY: kill(2) on a pid the lab started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    lab.restart_agents();
    let create = lab.run(&[
        "vm",
        "create",
        "--name",
        "vm2",
        "--host",
        "hostB",
        "--kernel",
        "builtin:testguest",
        "--memory",
        "64M",
    ]);
    assert_eq!(create.status.code(), Some(8), "{}", text(&create.stderr));
    assert!(text(&create.stderr).contains("cordoned"));
    // Placement passes it by.
    lab.ok(&["host", "cordon", "hostC"]);
    let placed = lab.run(&[
        "vm",
        "create",
        "--name",
        "vm3",
        "--kernel",
        "builtin:testguest",
        "--memory",
        "64M",
        "--no-start",
        "--json",
    ]);
    assert!(placed.status.success(), "{}", text(&placed.stderr));
    let info: Value = serde_json::from_slice(&placed.stdout).unwrap();
    assert_eq!(info["host"], "hostA", "the one host not cordoned");

    lab.ok(&["host", "uncordon", "hostB"]);
    assert!(lab.ok(&["host", "uncordon", "hostB"]).contains("was not cordoned"));
    lab.ok(&["migrate", "vm1", "hostB"]);
    assert_eq!(lab.vm("vm1")["host"], "hostB");
}

#[test]
fn a_runbook_cordons_as_a_change_of_its_run() {
    let lab = Lab::up(&[]);
    let script = lab.dir_path().join("cordon.lua");
    std::fs::write(
        &script,
        "local r = vmig.cordon('hostB', { reason = 'maintenance' })\n\
         vmig.log.info(r.dry_run and 'planned' or r.cordon.reason)\n\
         local u = vmig.uncordon('hostC')\n\
         vmig.log.info(tostring(u.was_cordoned))\n",
    )
    .unwrap();
    let path = script.to_str().unwrap();
    // A dry run plans both and changes nothing.
    let dry = lab.run(&["run", path, "--dry-run", "--json"]);
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    let out = text(&dry.stdout);
    assert!(out.contains("\"action\":\"cordon\""), "{out}");
    assert!(!lab.ok(&["hosts"]).contains("cordoned"));
    // Without a terminal or --yes it changes nothing either.
    assert_eq!(lab.run(&["run", path, "--json"]).status.code(), Some(2));
    assert!(!lab.ok(&["hosts"]).contains("cordoned"));
    let real = lab.run(&["run", path, "--yes", "--json"]);
    assert!(real.status.success(), "{}", text(&real.stderr));
    assert!(text(&real.stdout).contains("maintenance"));
    assert!(lab.ok(&["hosts"]).contains("hostB is cordoned"));
}
