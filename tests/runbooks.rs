//! `vmig run`: Lua runbooks against a 3-host lab, as an operator at a
//! terminal and as cron run them. The shipped runbooks (runbooks/) are run
//! here; the module's every function is called by one script.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::lab::{Lab, json_lines, signal, text};
use serde_json::Value;

const VMIG: &str = env!("CARGO_BIN_EXE_vmig");

fn runbook(name: &str) -> String {
    format!("{}/runbooks/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A small VM that fills a little memory and keeps dirtying it.
fn small_vm(lab: &Lab, name: &str, host: &str) {
    lab.create(name, host, "64M", "fill=8M dirty=2M rate=10 hb=100");
}

fn hosts_of(lab: &Lab) -> Vec<(String, String, String)> {
    let mut vms: Vec<_> = lab
        .vms()
        .into_iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_string(),
                v["host"].as_str().unwrap().to_string(),
                v["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    vms.sort();
    vms
}

fn ended(out: &Output) -> Value {
    json_lines(&out.stdout)
        .into_iter()
        .find_map(|v| v.get("ended").cloned())
        .unwrap_or_else(|| panic!("no ended line: {} {}", text(&out.stdout), text(&out.stderr)))
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// A runbook written for one test.
fn script(dir: &Path, name: &str, source: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, source).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn evacuate_moves_every_vm_off_a_host_with_json_lines_under_cron() {
    let lab = Lab::up(&[]);
    small_vm(&lab, "vm1", "hostA");
    small_vm(&lab, "vm2", "hostA");
    let out = lab.run(&["run", &runbook("evacuate.lua"), "hostA", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let vms = hosts_of(&lab);
    assert_eq!(vms.len(), 2, "{vms:?}");
    for (name, host, state) in &vms {
        assert_ne!(host, "hostA", "{name} is still on hostA");
        assert_eq!(state, "running", "{name}");
    }
    let lines = json_lines(&out.stdout);
    let run_id = lines[0]["run"]["id"]
        .as_str()
        .expect("the first line is the run")
        .to_string();
    let moved: Vec<&Value> = lines.iter().filter(|l| l.get("migrated").is_some()).collect();
    assert_eq!(moved.len(), 2, "{}", show(&out));
    for line in &moved {
        assert!(
            line["id"].as_str().unwrap().starts_with("m-") && line["vm"].is_string(),
            "{line}"
        );
    }
    // Progress lines say which migration they are of.
    assert!(
        lines
            .iter()
            .filter(|l| l.get("progress").is_some())
            .all(|l| l["id"].is_string() && l["vm"].is_string())
    );
    let end = ended(&out);
    assert_eq!(end["ok"], true);
    // The host was cordoned, then its two VMs moved.
    let actions: Vec<&str> = end["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["cordon", "migrate", "migrate"], "{end}");
    // The source's journal has each migration with the evacuation's run,
    // which its journal of runs nests in the runbook's.
    let journal = std::fs::read_to_string(lab.host_dir("hostA").join("state/journal.jsonl")).unwrap();
    let started: Vec<&str> = journal.lines().filter(|l| l.contains("\"started\"")).collect();
    assert_eq!(started.len(), 2, "{journal}");
    let runs = std::fs::read_to_string(lab.host_dir("hostA").join("state/runs.jsonl")).unwrap();
    let evacuating = runs
        .lines()
        .find(|l| l.contains("\"evacuating\""))
        .expect("no evacuation journaled");
    let plan: Value = serde_json::from_str(evacuating).unwrap();
    let evacuation = plan["event"]["plan"]["run"].as_str().unwrap().to_string();
    assert_eq!(plan["event"]["plan"]["parent"], run_id.as_str(), "{runs}");
    assert!(started.iter().all(|l| l.contains(&evacuation)), "{journal}");
    assert!(runs.contains("\"ended\""), "{runs}");
    // `vmig history` merges both sides of each; the runbook's run takes in
    // the evacuation nested in it.
    let history: Value = serde_json::from_str(&lab.ok(&["history", "--run", &run_id, "--json"])).unwrap();
    let records = history.as_array().unwrap();
    assert_eq!(records.len(), 2, "{history}");
    for record in records {
        assert_eq!(record["outcome"], "moved", "{record}");
        assert_eq!(record["from"], "hostA");
        assert_eq!(record["arrival"], "arrived", "{record}");
        assert!(record["downtime_ms"].as_f64().unwrap() > 0.0);
    }
    let table = lab.ok(&["history", "--host", "hostA"]);
    assert_eq!(table.lines().count(), 3, "{table}");
    assert_eq!(lab.ok(&["history", "--vm", "nosuch", "--json"]).trim(), "[]");
}

#[test]
fn a_dry_run_plans_and_changes_nothing_and_cron_needs_yes() {
    let lab = Lab::up(&[]);
    small_vm(&lab, "vm1", "hostA");
    let before = hosts_of(&lab);
    let out = lab.run(&["run", &runbook("evacuate.lua"), "hostA", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let plan = ended(&out)["plan"].clone();
    let moves: Vec<&Value> = plan
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["action"] == "migrate")
        .collect();
    assert_eq!(moves.len(), 1, "{plan}");
    assert_eq!(moves[0]["vm"], "vm1");
    assert_eq!(moves[0]["from"], "hostA");
    assert!(
        plan.as_array().unwrap().iter().any(|c| c["action"] == "cordon"),
        "{plan}"
    );
    assert!(!lab.ok(&["hosts"]).contains("cordoned"), "the dry run cordoned");
    assert!(
        json_lines(&out.stdout)
            .iter()
            .any(|l| l["would_migrate"]["vm"] == "vm1"),
        "{}",
        show(&out)
    );
    assert_eq!(hosts_of(&lab), before, "the dry run moved something");

    // No terminal and no --yes: refused before the first change.
    let out = lab.run(&["run", &runbook("evacuate.lua"), "hostA"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let end = ended(&out);
    assert_eq!(end["error"]["code"], "invalid", "{end}");
    assert!(end["changes"].as_array().unwrap().is_empty());
    assert!(text(&out.stderr).contains("--yes"), "{}", show(&out));
    assert_eq!(hosts_of(&lab), before, "the refused run moved something");
}

/// Every function of the module, and the errors a script can inspect.
const EVERY_FUNCTION: &str = r#"
local data_file, marker = ...
assert(#vmig.args == 2 and vmig.args[1] == data_file)
assert(vmig.run_id:match("^r%-%x+$"), vmig.run_id)
assert(vmig.dry_run == false)

local hosts = vmig.hosts()
assert(#hosts == 3 and hosts[1].name == "hostA" and hosts[1].reachable)
assert(hosts[2].memory_available_bytes > 0)
assert(vmig.host("hostB").name == "hostB")
local all = vmig.vms()
assert(#all == 1 and all[1].name == "vm1" and all[1].host == "hostA" and all[1].state == "running")
assert(#vmig.vms({ host = "hostB" }) == 0)
assert(#vmig.vms({ state = "stopped" }) == 0)
assert(vmig.vm("vm1").memory_bytes == 64 * 1024 * 1024)

-- Errors are values with fields.
local ok, e = pcall(vmig.vm, "nosuch")
assert(not ok and vmig.is_error(e) and e.code == "not_found" and e.vm == "nosuch", tostring(e))
assert(e.retryable == false and tostring(e):match("^not_found: "))
ok, e = pcall(vmig.host, "hostZ")
assert(not ok and e.code == "not_found" and e.host == "hostZ", tostring(e))
ok, e = pcall(vmig.migrate, "vm1", "hostA")
assert(not ok and e.code == "conflict" and e.retryable, tostring(e))
ok, e = pcall(vmig.migrate, "vm1", "hostB", { speed = 1 })
assert(not ok and e.code == "invalid" and e.message:match("speed"), tostring(e))
ok, e = pcall(vmig.migrate, "vm1", "hostB", { streams = 0 })
assert(not ok and e.code == "invalid" and e.message:match("streams"), tostring(e))
ok, e = pcall(vmig.migrate, 1, 2)
assert(not ok and e.code == "invalid", tostring(e))
ok, e = pcall(vmig.vms, { host = "hostZ" })
assert(not ok and e.code == "not_found", tostring(e))
local none, err = vmig.try(vmig.vm, "nosuch")
assert(none == nil and err.code == "not_found")
local fine = vmig.try(vmig.vm, "vm1")
assert(fine.name == "vm1")
none, err = vmig.try(function() error("plain") end)
assert(none == nil and err.code == "script" and err.message:match("plain"))

-- One migration, then a batch where one item fails and the other moves.
local r = vmig.migrate("vm1", "hostB", { downtime_ms = 100, bandwidth = "500M" })
assert(r.ok and r.id:match("^m%-") and r.source == "hostA" and r.target == "hostB" and not r.dry_run)
assert(r.downtime_ms > 0 and r.bytes_sent > 0 and r.blackout_ms > 0)
local results = vmig.parallel({
  { vm = "vm1", host = "hostC" },
  { vm = "nosuch", host = "hostA", options = { streams = 1 } },
}, { max = 2 })
assert(#results == 2)
assert(results[1].ok and results[1].target == "hostC", tostring(results[1].error))
assert(not results[2].ok and vmig.is_error(results[2].error) and results[2].error.code == "not_found")
assert(vmig.vm("vm1").host == "hostC")
ok, e = pcall(vmig.parallel, { { vm = "vm1" } })
assert(not ok and e.code == "invalid" and e.message:match("host"), tostring(e))

assert(vmig.confirm("go on?") == true) -- --yes answers
vmig.sleep(0.01)
local x = vmig.exec({ "sh", "-c", "echo out; echo err >&2; exit 3" })
assert(not x.ok and x.status == 3 and x.stdout == "out\n" and x.stderr == "err\n")
vmig.exec({ "touch", marker })
assert(vmig.read_file(data_file) == "data\n")
ok, e = pcall(vmig.read_file, data_file .. ".missing")
assert(not ok and e.code == "not_found")

-- The sandbox.
for _, name in ipairs({ "io", "os", "load", "loadfile", "dofile", "require", "debug", "package" }) do
  assert(rawget(_G, name) == nil, name)
end
ok, e = pcall(function() return undefined_name end)
assert(not ok and e.code == "script")
ok, e = pcall(function() return vmig["nothing"] end)
assert(not ok and e.code == "invalid")
local h = vmig.history({ run = vmig.run_id })
assert(#h == 2, #h)
assert(h[1].outcome == "moved" and h[1].from == "hostA" and h[1].to == "hostB" and h[1].arrival == "arrived")
assert(h[2].from == "hostB" and h[2].to == "hostC" and h[2].downtime_ms > 0 and h[2].by ~= nil)
assert(#vmig.history({ vm = "nosuch" }) == 0)
ok, e = pcall(vmig.history, { since = "2w" })
assert(not ok and e.code == "invalid", tostring(e))
local a = vmig.audit({ run = vmig.run_id, host = "hostA" })
assert(#a >= 2, #a)
assert(a[1].request == "migrate" and a[1].status == 202 and a[1].host == "hostA" and a[1].by ~= nil and a[1].vm == "vm1")
assert(a[2].migration == a[1].migration and a[2].status == 200, a[2].status)
ok, e = pcall(vmig.audit, { host = "nohost" })
assert(not ok and e.code == "not_found", tostring(e))
ok, e = pcall(vmig.audit, { sinse = 60 })
assert(not ok and e.code == "invalid", tostring(e))
-- Found by fuzzing (fuzz/fuzz_targets/lua_arguments.rs): a number of
-- seconds ago too large for a duration panicked.
assert(#vmig.audit({ since = 1.9e161, host = "hostA" }) >= 2)
assert(#vmig.history({ since = 1/0 }) >= 2)
ok, e = pcall(vmig.history, { since = -1 })
assert(not ok and e.code == "invalid" and e.message:match("seconds ago"), tostring(e))
ok, e = pcall(vmig.audit, { since = 0/0 })
assert(not ok and e.code == "invalid", tostring(e))
vmig.log.info("info line")
vmig.log.warn("warn line")
vmig.log.error("error line")
print("all", "good")
"#;

#[test]
fn every_function_answers_and_pcall_sees_the_codes() {
    let lab = Lab::up(&[]);
    small_vm(&lab, "vm1", "hostA");
    let data = lab.dir_path().join("data.txt");
    std::fs::write(&data, "data\n").unwrap();
    let marker = lab.dir_path().join("marker");
    let file = script(lab.dir_path(), "every.lua", EVERY_FUNCTION);
    let out = lab.run(&["run", &file, data.to_str().unwrap(), marker.to_str().unwrap(), "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(marker.exists(), "exec did not run");
    let lines = json_lines(&out.stdout);
    let logs: Vec<(String, String)> = lines
        .iter()
        .filter_map(|l| l.get("log"))
        .map(|l| {
            (
                l["level"].as_str().unwrap().into(),
                l["message"].as_str().unwrap().into(),
            )
        })
        .collect();
    for (level, message) in [
        ("info", "info line"),
        ("warn", "warn line"),
        ("error", "error line"),
        ("info", "all\tgood"),
    ] {
        assert!(logs.contains(&(level.into(), message.into())), "{logs:?}");
    }
    // The migrations that never started (unknown VM, already there, bad
    // options) have no lines: their error values said why.
    assert!(!lines.iter().any(|l| l.get("failed").is_some()), "{}", show(&out));
    let moved: Vec<&Value> = lines.iter().filter_map(|l| l.get("migrated")).collect();
    assert_eq!(moved.len(), 2, "{}", show(&out));
    let end = ended(&out);
    let actions: Vec<&str> = end["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["migrate", "migrate", "exec", "exec"], "{end}");
    assert_eq!(hosts_of(&lab), [("vm1".into(), "hostC".into(), "running".into())]);
}

#[test]
fn a_runbook_that_does_not_compile_or_names_no_such_function_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    let touch = format!("vmig.exec({{ \"touch\", {:?} }})\n", marker.to_str().unwrap());
    let run = |file: &str| {
        Command::new(VMIG)
            .args(["run", file, "--yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let broken = script(dir.path(), "broken.lua", &format!("{touch}local x = = 1\n"));
    let out = run(&broken);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(text(&out.stderr).contains("broken.lua:2:"), "{}", show(&out));
    let misspelt = script(
        dir.path(),
        "misspelt.lua",
        &format!("{touch}vmig.migarte('vm1', 'hostB')\n"),
    );
    let out = run(&misspelt);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        text(&out.stderr).contains("misspelt.lua:2: there is no vmig.migarte"),
        "{}",
        show(&out)
    );
    assert!(!marker.exists(), "a runbook that failed its check ran");
    // The same first line, in a runbook that passes: it runs.
    let fine = script(dir.path(), "fine.lua", &touch);
    let out = run(&fine);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(marker.exists());
    let out = run(&dir.path().join("missing.lua").to_string_lossy());
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
}

#[test]
fn an_uncaught_error_ends_the_run_with_its_code_its_line_and_a_traceback() {
    let dir = tempfile::tempdir().unwrap();
    let run = |file: &str, extra: &[&str]| {
        Command::new(VMIG)
            .args(["run", file])
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let raised = script(
        dir.path(),
        "raised.lua",
        "local function busy()\n  error({ code = 'conflict', message = 'vm1 is busy' })\nend\nbusy()\n",
    );
    let out = run(&raised, &[]);
    assert_eq!(out.status.code(), Some(8), "{}", show(&out));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("raised.lua:2: conflict: vm1 is busy"), "{stderr}");
    assert!(
        stderr.contains("stack traceback:") && stderr.contains("raised.lua:4:"),
        "{stderr}"
    );
    assert_eq!(ended(&out)["error"]["location"], format!("{raised}:2"));
    let buggy = script(dir.path(), "buggy.lua", "local t = nil\nreturn t.x\n");
    let out = run(&buggy, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        text(&out.stderr).contains("buggy.lua:2: script: attempt to index a nil value"),
        "{}",
        show(&out)
    );
    let no_inventory = script(dir.path(), "hosts.lua", "vmig.hosts()\n");
    let out = run(&no_inventory, &["--inventory", "/nonexistent/vmig.toml"]);
    assert_eq!(out.status.code(), Some(10), "{}", show(&out));
    assert_eq!(ended(&out)["error"]["code"], "config");
}

#[test]
fn sigterm_cancels_the_runbooks_migrations_and_exits_12() {
    let lab = Lab::up_with_env(3, &[], &[]);
    lab.create("vm1", "hostA", "256M", "fill=96M dirty=32M rate=40 hb=100");
    lab.wait_filled("vm1");
    lab.arm("first-pass");
    let file = script(
        lab.dir_path(),
        "slow.lua",
        "vmig.migrate('vm1', 'hostB', { bandwidth = '64M' })\nvmig.log.info('not reached')\n",
    );
    let child = lab
        .command(&["run", &file, "--yes"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    lab.wait_held("first-pass", Duration::from_secs(60))
        .expect("the migration never reached its first pass");
    signal(child.id() as i32, libc::SIGTERM);
    lab.release("first-pass");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(12), "{}", show(&out));
    let lines = json_lines(&out.stdout);
    assert!(
        !lines.iter().any(|l| l["log"]["message"] == "not reached"),
        "{}",
        show(&out)
    );
    let failed = lines.iter().find_map(|l| l.get("failed")).expect("the migration's end");
    assert_eq!(failed["code"], "cancelled", "{}", show(&out));
    assert_eq!(ended(&out)["exit"], 12);
    assert_eq!(hosts_of(&lab), [("vm1".into(), "hostA".into(), "running".into())]);
    let journal = std::fs::read_to_string(lab.host_dir("hostA").join("state/journal.jsonl")).unwrap();
    assert!(journal.contains("\"cancelled\""), "{journal}");
}

#[test]
fn a_terminal_gets_bars_and_one_question() {
    let lab = Lab::up(&[]);
    lab.create("vm1", "hostA", "256M", "fill=64M dirty=8M rate=10 hb=100");
    lab.wait_filled("vm1");
    let file = script(
        lab.dir_path(),
        "bar.lua",
        "local r = vmig.migrate('vm1', 'hostB', { bandwidth = '32M' })\nvmig.log.info('moved: ' .. r.target)\n",
    );
    // script(1) runs vmig on a pseudo-terminal; the answer is typed into it.
    let command = format!("{VMIG} --inventory {} run {file}", lab.inventory().to_str().unwrap());
    let mut child = Command::new("script")
        .args(["-qefc", &command, "/dev/null"])
        .env("TERM", "xterm")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script(1) runs a pseudo-terminal (util-linux)");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"y\n").unwrap();
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    let screen = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        screen.contains("wants to migrate vm1 from hostA to hostB"),
        "no question: {screen}"
    );
    assert!(screen.contains("[y/N]"), "{screen}");
    assert!(
        screen.contains("% of ") && screen.contains("round"),
        "no bar drawn: {screen}"
    );
    assert!(screen.contains("migrated vm1 from hostA to hostB"), "{screen}");
    assert!(screen.contains("moved: hostB"), "{screen}");
    assert!(!screen.contains("{\"log\""), "JSON lines on a terminal: {screen}");
    assert_eq!(hosts_of(&lab), [("vm1".into(), "hostB".into(), "running".into())]);
}

#[test]
fn ctrl_c_stops_a_busy_runbook_even_in_a_coroutine() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    for source in [
        "while true do end\n",
        "local co = coroutine.wrap(function() while true do end end)\nco()\n",
        "while true do pcall(function() for _ = 1, 1000 do end end) end\n",
        "vmig.sleep(3600)\n",
    ] {
        let file = script(dir.path(), "busy.lua", source);
        let mut child = Command::new(VMIG)
            .args(["run", &file])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The first line says the run began: the script is running.
        let mut first = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(first.contains("\"run\""), "{first}");
        signal(child.id() as i32, libc::SIGINT);
        // A runbook that swallowed the interrupt would run for ever.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                child.kill().unwrap();
                panic!("{source}: Ctrl-C did not stop it within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(12), "{source}: {}", show(&out));
        assert_eq!(ended(&out)["error"]["code"], "interrupted", "{source}");
    }
}

#[test]
fn rebalance_moves_what_narrows_the_gap_and_plans_the_same_in_a_dry_run() {
    let lab = Lab::up(&[]);
    small_vm(&lab, "vm1", "hostA");
    small_vm(&lab, "vm2", "hostA");
    let before = hosts_of(&lab);
    // hostA holds 128 MiB of the 6 GiB each lab host gives VMs: moving one
    // 64 MiB VM to the emptiest host evens it out; a second move would not.
    let out = lab.run(&["run", &runbook("rebalance.lua"), "3", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let plan = ended(&out)["plan"].clone();
    assert_eq!(plan.as_array().unwrap().len(), 1, "{plan}");
    assert_eq!(
        (plan[0]["vm"].as_str(), plan[0]["to"].as_str()),
        (Some("vm1"), Some("hostB"))
    );
    assert_eq!(hosts_of(&lab), before, "the dry run moved something");
    let out = lab.run(&["run", &runbook("rebalance.lua"), "3", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(ended(&out)["changes"].as_array().unwrap().len(), 1);
    assert_eq!(
        hosts_of(&lab),
        [
            ("vm1".into(), "hostB".into(), "running".into()),
            ("vm2".into(), "hostA".into(), "running".into())
        ]
    );
}

#[test]
fn careful_migrate_waits_out_a_busy_vm_and_knows_when_it_is_there() {
    use std::io::BufRead;
    let lab = Lab::up_with_env(3, &[], &[]);
    lab.create("vm1", "hostA", "256M", "fill=96M dirty=8M rate=10 hb=100");
    lab.wait_filled("vm1");
    // Another operator's migration of vm1, held in its first pass.
    lab.arm("first-pass");
    let other = lab.spawn_migrate("vm1", "hostC", &[]);
    lab.wait_held("first-pass", Duration::from_secs(60))
        .expect("the other migration never started");
    let mut careful = lab
        .command(&["run", &runbook("careful-migrate.lua"), "vm1", "hostB", "5", "--yes"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = careful.stdout.take().unwrap();
    let mut lines = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let retrying = line.contains("\"warn\"") && line.contains("conflict");
        lines.push(line);
        if retrying {
            // It saw the VM busy and waits: let the other migration finish.
            lab.release("first-pass");
        }
    }
    let status = careful.wait().unwrap();
    let other = other.wait_with_output().unwrap();
    assert_eq!(other.status.code(), Some(0), "{}", text(&other.stderr));
    assert_eq!(status.code(), Some(0), "{}", lines.join("\n"));
    assert!(
        lines.iter().any(|l| l.contains("attempt 1: conflict")),
        "{}",
        lines.join("\n")
    );
    assert_eq!(hosts_of(&lab), [("vm1".into(), "hostB".into(), "running".into())]);
    // Once there, it says so and changes nothing.
    let again = lab.run(&["run", &runbook("careful-migrate.lua"), "vm1", "hostB", "--yes"]);
    assert_eq!(again.status.code(), Some(0), "{}", show(&again));
    assert!(ended(&again)["changes"].as_array().unwrap().is_empty());
    let missing = lab.run(&["run", &runbook("careful-migrate.lua"), "nosuch", "hostB", "--yes"]);
    assert_eq!(missing.status.code(), Some(7), "{}", show(&missing));
}

#[test]
fn an_agent_that_cannot_be_reached_is_an_error_value_not_a_partial_answer() {
    let lab = Lab::up(&[]);
    small_vm(&lab, "vm1", "hostA");
    let down = lab.agent_pid("hostC");
    signal(down, libc::SIGKILL);
    common::lab::wait_gone(down);
    let file = script(
        lab.dir_path(),
        "down.lua",
        r#"
local hosts = vmig.hosts()
assert(#hosts == 3 and hosts[3].name == "hostC" and hosts[3].reachable == false and hosts[3].code == "unreachable")
local ok, e = pcall(vmig.vms)
assert(not ok and e.code == "unreachable" and e.host == "hostC" and e.retryable, tostring(e))
assert(#vmig.vms({ host = "hostA" }) == 1)
ok, e = pcall(vmig.host, "hostC")
assert(not ok and e.code == "unreachable", tostring(e))
ok, e = pcall(vmig.migrate, "vm1", "hostC")
assert(not ok and e.code == "unreachable", tostring(e))
vmig.vm("vm1") -- found on a host that answers
vmig.history({ host = "hostC" })
"#,
    );
    let out = lab.run(&["run", &file, "--yes"]);
    // The last line raises: hostC's journal cannot be read.
    assert_eq!(out.status.code(), Some(5), "{}", show(&out));
    let end = ended(&out);
    assert_eq!(end["error"]["code"], "unreachable", "{end}");
    assert!(end["error"]["location"].as_str().unwrap().ends_with(":12"), "{end}");
    lab.restart_agents();
    assert_eq!(hosts_of(&lab), [("vm1".into(), "hostA".into(), "running".into())]);
}

#[test]
fn precheck_names_the_rule_and_the_fix_and_each_host_gets_a_verdict() {
    let lab = Lab::up(&[]);
    for (name, host) in [("db1", "hostA"), ("db2", "hostB")] {
        lab.create_with(name, host, "64M", "hb=1000", &["--redundancy-group", "db"]);
    }
    // hostB is db2's chassis: db1 must not join it there.
    let out = lab.run(&["precheck", "db1", "hostB", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let verdict: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verdict["ok"], false);
    let error = &verdict["errors"][0];
    assert_eq!(error["rule"], "redundancy.chassis", "{verdict}");
    assert!(error["message"].as_str().unwrap().contains("db2"), "{error}");
    assert!(
        error["facts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["origin"] == "declared" && f["name"] == "hostB.chassis"),
        "{error}"
    );
    let out = lab.run(&["precheck", "db1", "hostC"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        text(&out.stdout).contains("can move: every check passed"),
        "{}",
        show(&out)
    );
    // Every other host: a table, exit 0 since one host can take it.
    let table = lab.run(&["precheck", "db1"]);
    assert_eq!(table.status.code(), Some(0), "{}", show(&table));
    let table = text(&table.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("hostB") && l.contains("blocked") && l.contains("redundancy.chassis")),
        "{table}"
    );
    assert!(
        table.lines().any(|l| l.starts_with("hostC") && l.contains(" ok")),
        "{table}"
    );
    assert_eq!(lab.run(&["precheck", "db1", "hostA"]).status.code(), Some(8));
    // Stage one of every move: the error stops `vmig migrate` (and --force
    // does not override an error).
    let blocked = lab.run(&["migrate", "db1", "hostB", "--force"]);
    assert_eq!(blocked.status.code(), Some(1), "{}", show(&blocked));
    assert!(
        text(&blocked.stderr).contains("redundancy.chassis"),
        "{}",
        show(&blocked)
    );
    let dry = lab.run(&["migrate", "db1", "hostB", "--dry-run"]);
    assert_eq!(dry.status.code(), Some(1), "{}", show(&dry));
    assert_eq!(lab.run(&["precheck", "db1", "hostZ"]).status.code(), Some(7));
    assert_eq!(lab.run(&["precheck", "nosuch", "hostB"]).status.code(), Some(7));
    // The same from Lua, and a stopped VM cannot move live.
    lab.ok(&["vm", "stop", "db2"]);
    let file = script(
        lab.dir_path(),
        "pre.lua",
        r#"
local v = vmig.precheck("db2", "hostC")
assert(not v.ok and v.errors[1].rule == "vm.stable", v.errors[1] and v.errors[1].rule)
assert(v.errors[1].message:match("start it"), v.errors[1].message)
assert(vmig.precheck("db1", "hostC").ok)
local ok, e = pcall(vmig.precheck, "db1", "hostA")
assert(not ok and e.code == "conflict", tostring(e))
ok, e = pcall(vmig.migrate, "db1", "hostB", { force = true })
assert(not ok and e.code == "refused" and e.message:match("redundancy.chassis"), tostring(e))
"#,
    );
    let out = lab.run(&["run", &file]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(
        hosts_of(&lab),
        [
            ("db1".into(), "hostA".into(), "running".into()),
            ("db2".into(), "hostB".into(), "stopped".into())
        ],
        "a precheck changed something"
    );
}
