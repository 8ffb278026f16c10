//! Every precheck rule tripped, and passed, on a lab whose hosts differ
//! through their agent configs (`src/lab.rs`: hostD shares hostA's chassis
//! over 1 GbE, hostE's management network is IPv6, hostF lacks the shared
//! storage, hostG hides a CPU feature), with VMs that have real disks and
//! CD/DVD media; and a refused migration that changes nothing.

mod common;

use std::path::Path;

use common::lab::Lab;
use serde_json::Value;

/// A small, quiet guest that writes its disk and reads its medium.
const GUEST: &str = "idle hb=200 disk=all disk_rate=4";

fn image(path: &Path, size: u64) -> String {
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
    path.display().to_string()
}

fn medium(path: &Path) -> String {
    vmig_backend::testguest::write_medium(path, 1 << 20).unwrap();
    path.display().to_string()
}

/// `vmig precheck VM --json`: each host's verdict.
fn table(lab: &Lab, vm: &str) -> Vec<Value> {
    let out = lab.run(&["precheck", vm, "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// The rule ids of `host`'s errors and warnings in `table`.
fn findings(table: &[Value], host: &str) -> (Vec<String>, Vec<String>) {
    let verdict = table
        .iter()
        .find(|v| v["target"] == host)
        .unwrap_or_else(|| panic!("no verdict for {host}: {table:?}"));
    let rules = |key: &str| {
        verdict[key]
            .as_array()
            .unwrap_or_else(|| panic!("{host}: {verdict}"))
            .iter()
            .map(|f| f["rule"].as_str().unwrap().to_string())
            .collect()
    };
    (rules("errors"), rules("warnings"))
}

fn verdict(lab: &Lab, vm: &str, host: &str) -> Value {
    let out = lab.run(&["precheck", vm, host, "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
}

fn messages(verdict: &Value, key: &str) -> String {
    verdict[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["message"].as_str().unwrap())
        .collect::<Vec<_>>()
        .join(" | ")
}

#[test]
fn every_rule_trips_on_the_host_that_differs_and_passes_elsewhere() {
    let lab = Lab::up_hosts(7, &[]);
    let shared = lab.shared_storage();
    let disk = image(&shared.join("vm1.img"), 8 << 20);
    let iso = medium(&shared.join("tools.iso"));
    lab.create_with(
        "vm1",
        "hostA",
        "128M",
        GUEST,
        &["--disk", &disk, "--cdrom", &iso, "--redundancy-group", "db"],
    );
    let all = table(&lab, "vm1");
    for ok in ["hostB", "hostC"] {
        assert_eq!(findings(&all, ok), (vec![], vec![]), "{ok}: {all:?}");
    }
    assert_eq!(findings(&all, "hostE").0, ["network.family"], "IPv6 management");
    assert_eq!(
        findings(&all, "hostF").0,
        ["devices.reachable", "cdrom.backing"],
        "no shared storage"
    );
    if let Some(feature) = vmig::lab::hidden_feature() {
        let g = verdict(&lab, "vm1", "hostG");
        assert_eq!(findings(&all, "hostG").0, ["cpu.features"]);
        assert!(messages(&g, "errors").contains(&feature), "{g}");
        // Each finding carries the facts it used, marked measured or declared.
        assert_eq!(g["errors"][0]["facts"][0]["origin"], "measured");
        // A VM created with the cluster's baseline does not see the feature
        // hostG hides, and may go there.
        lab.create_with("base", "hostA", "64M", "idle hb=1000", &["--cpu", "baseline"]);
        let base = verdict(&lab, "base", "hostG");
        assert_eq!(base["ok"], true, "{base}");
        lab.ok(&["migrate", "base", "hostG"]);
        assert_eq!(lab.vm("base")["host"], "hostG");
        lab.ok(&["vm", "destroy", "base"]);
        // Past a skipped precheck, hostG's receiving VMM refuses vm1 itself.
        let forced = lab.run(&["migrate", "vm1", "hostG", "--skip", "cpu.features", "--json"]);
        assert_eq!(
            forced.status.code(),
            Some(1),
            "{}",
            String::from_utf8_lossy(&forced.stderr)
        );
        assert!(
            String::from_utf8_lossy(&forced.stdout).contains(&feature),
            "the refusal names {feature}"
        );
        assert_eq!(
            (lab.vm("vm1")["host"].clone(), lab.vm("vm1")["state"].clone()),
            ("hostA".into(), "running".into())
        );
    }

    // Redundancy: vm2 joins vm1's group on hostB; hostD is in hostA's chassis.
    let disk2 = image(&shared.join("vm2.img"), 8 << 20);
    lab.create_with(
        "vm2",
        "hostB",
        "128M",
        GUEST,
        &["--disk", &disk2, "--redundancy-group", "db", "--no-start"],
    );
    let two = verdict(&lab, "vm2", "hostD");
    assert!(
        two["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["rule"] == "redundancy.chassis"),
        "{two}"
    );
    assert!(messages(&two, "errors").contains("another chassis"), "{two}");
    let rules: Vec<&str> = two["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rule"].as_str().unwrap())
        .collect();
    assert!(rules.contains(&"vm.stable"), "a stopped VM cannot move live: {two}");
    let c = verdict(&lab, "vm2", "hostC");
    assert_eq!(
        c["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["rule"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["vm.stable"],
        "hostC is another chassis: {c}"
    );

    // A disk on hostC's own storage cannot move anywhere.
    let local = image(&lab.local_storage("hostC").join("vm3.img"), 8 << 20);
    lab.create_with("vm3", "hostC", "128M", GUEST, &["--disk", &local, "--no-start"]);
    let three = verdict(&lab, "vm3", "hostB");
    assert!(messages(&three, "errors").contains("host-local storage"), "{three}");

    // Memory: a VM bigger than hostB has free.
    lab.create_with("big", "hostC", "6G", GUEST, &["--no-start"]);
    let big = verdict(&lab, "big", "hostB");
    assert!(
        big["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["rule"] == "capacity.memory"),
        "{big}"
    );

    // vGPU: warns over hostD's 1 GbE link with the stun it expects.
    let spec = lab.dir_path().join("gpu.toml");
    std::fs::write(
        &spec,
        "name = \"gpu1\"\nkernel = \"builtin:testguest\"\nmemory = \"128M\"\ncmdline = \"idle\"\n\
         vgpu = { profile = \"grid_a100-8c\", framebuffer = \"8G\" }\n",
    )
    .unwrap();
    lab.ok(&[
        "vm",
        "create",
        "--spec",
        spec.to_str().unwrap(),
        "--host",
        "hostC",
        "--no-start",
    ]);
    let gpu = verdict(&lab, "gpu1", "hostD");
    let warned = messages(&gpu, "warnings");
    assert!(warned.contains("stunned about 68.7 s"), "{gpu}");
    assert!(
        !verdict(&lab, "gpu1", "hostB")["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["rule"] == "gpu.vgpu"),
        "10 GbE is fast enough"
    );
}

#[test]
fn a_local_medium_blocks_until_ejected_and_a_vm_with_drives_moves() {
    let lab = Lab::up_hosts(3, &[]);
    let shared = lab.shared_storage();
    let disk = image(&shared.join("vm1.img"), 8 << 20);
    let shared_iso = medium(&shared.join("tools.iso"));
    let local_iso = medium(&lab.local_storage("hostA").join("local.iso"));
    lab.create_with("vm1", "hostA", "128M", GUEST, &["--disk", &disk, "--cdrom", &local_iso]);
    let blocked = verdict(&lab, "vm1", "hostB");
    assert_eq!(blocked["errors"][0]["rule"], "cdrom.backing", "{blocked}");
    assert!(
        messages(&blocked, "errors").contains("vmig vm cdrom vm1 eject"),
        "{blocked}"
    );

    // The refused move changes nothing, and the journal says why.
    let refused = lab.run(&["migrate", "vm1", "hostB", "--json"]);
    assert_eq!(
        refused.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(lab.vm("vm1")["host"], "hostA");
    assert_eq!(lab.vm("vm1")["state"], "running");
    let history: Value = serde_json::from_str(&lab.ok(&["history", "--vm", "vm1", "--json"])).unwrap();
    let records = history
        .as_array()
        .unwrap_or_else(|| history["records"].as_array().unwrap());
    let record = records.last().unwrap_or_else(|| panic!("no history: {history}"));
    assert_eq!(record["outcome"], "refused", "{record}");
    assert_eq!(record["rules"], serde_json::json!(["cdrom.backing"]), "{record}");

    // Ejected, the drive no longer blocks; its medium could not be
    // reconnected on hostB, which is a warning.
    lab.ok(&["vm", "cdrom", "vm1", "eject"]);
    let ejected = verdict(&lab, "vm1", "hostB");
    assert_eq!(ejected["ok"], true, "{ejected}");
    assert_eq!(ejected["warnings"][0]["rule"], "cdrom.backing", "{ejected}");
    // A shared medium passes, and the VM moves with its disk and medium.
    lab.ok(&["vm", "cdrom", "vm1", "insert", &shared_iso]);
    let clear = verdict(&lab, "vm1", "hostB");
    assert_eq!(
        (clear["ok"].clone(), clear["warnings"].as_array().unwrap().len()),
        (Value::Bool(true), 0),
        "{clear}"
    );
    let before = lab.wait_for_heartbeat("vm1", 5);
    let last = before.last().unwrap();
    assert!(last.get("cd_verified") > 0, "{:?}", last.fields);
    lab.ok(&["migrate", "vm1", "hostB"]);
    assert_eq!(lab.vm("vm1")["host"], "hostB");
    let after = lab.wait_for_heartbeat("vm1", last.seq() + 10);
    let now = after.last().unwrap();
    for key in ["errors", "disk_errors", "cd_errors", "io_errors"] {
        assert_eq!(now.get(key), 0, "{key}: {:?}", now.fields);
    }
    assert!(now.get("disk_verified") > last.get("disk_verified"), "{:?}", now.fields);
    assert!(now.get("cd_verified") > last.get("cd_verified"), "{:?}", now.fields);
}

#[test]
fn unknown_rules_are_refused_and_skipped_rules_are_named() {
    let lab = Lab::up_hosts(5, &[]);
    lab.create("vm1", "hostA", "128M", "idle");
    let out = lab.run(&["precheck", "vm1", "hostE", "--skip", "no.such.rule"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("network.family"),
        "the known rules are listed"
    );
    let out = lab.run(&["migrate", "vm1", "hostB", "--skip", "no.such.rule"]);
    assert_eq!(out.status.code(), Some(2));
    let skipped = lab.run(&["precheck", "vm1", "hostE", "--skip", "network.family", "--json"]);
    assert_eq!(skipped.status.code(), Some(0));
    let verdict: Value = serde_json::from_slice(&skipped.stdout).unwrap();
    assert_eq!(verdict["skipped"], serde_json::json!(["network.family"]));
    assert_eq!(verdict["ok"], true);

    // Two hosts holding VMs of one name (hostB's agent was asked directly,
    // as when it was away at the first one's creation): no move between them.
    let inventory = vmig::inventory::Inventory::load(&lab.inventory()).unwrap();
    let tls = vmig_backend::pki::client_config(&inventory.operator).unwrap();
    let b = inventory.hosts.iter().find(|h| h.name == "hostB").unwrap();
    let spec = vmig_backend::api::VmSpec {
        name: "vm1".into(),
        kernel: "builtin:testguest".into(),
        memory: "64M".into(),
        ..Default::default()
    };
    vmig_backend::client::Client::new(&b.name, &b.address, tls)
        .call::<Value>(vmig_backend::api::Request::CreateVm { spec, start: false })
        .unwrap();
    let clash = verdict_of(&lab, "vm1", "hostB");
    assert_eq!(clash["errors"][0]["rule"], "capacity.name", "{clash}");
    assert_eq!(verdict_of(&lab, "vm1", "hostC")["ok"], true, "hostC holds no vm1");
}

fn verdict_of(lab: &Lab, vm: &str, host: &str) -> Value {
    verdict(lab, vm, host)
}

#[test]
fn a_shared_roots_budget_queues_moves_from_different_hosts() {
    // One migration at a time on the shared storage, whichever host runs it.
    let lab = Lab::up_hosts(3, &["--storage-migrations", "1"]);
    let shared = lab.shared_storage();
    for (vm, host) in [("vm1", "hostA"), ("vm2", "hostB")] {
        let disk = image(&shared.join(format!("{vm}.img")), 8 << 20);
        lab.create_with(vm, host, "256M", "fill=128M hb=200", &["--disk", &disk]);
        lab.wait_filled(vm);
    }
    // 128 MiB at 16 MiB/s: several seconds to look at the second.
    let first = lab.spawn_migrate("vm1", "hostC", &["--bandwidth", "16M", "--force"]);
    let deadline = std::time::Instant::now() + common::BOOT_TIMEOUT;
    while lab.vm("vm1")["state"] != "migrating" {
        assert!(std::time::Instant::now() < deadline, "vm1 never started migrating");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let waiting = verdict(&lab, "vm2", "hostC");
    assert_eq!(waiting["ok"], true, "{waiting}");
    assert!(
        messages(&waiting, "warnings").contains("storage root shared"),
        "{waiting}"
    );
    let second = lab.run(&["migrate", "vm2", "hostC", "--force", "--json"]);
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    assert!(
        String::from_utf8_lossy(&second.stdout).contains("storage shared"),
        "it waited for the storage's slot: {}",
        String::from_utf8_lossy(&second.stdout)
    );
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert_eq!(
        (lab.vm("vm1")["host"].clone(), lab.vm("vm2")["host"].clone()),
        ("hostC".into(), "hostC".into())
    );
}

#[test]
fn virtual_performance_counters_need_a_host_that_offers_them() {
    let lab = Lab::up_hosts(7, &[]);
    let facts: Value = serde_json::from_str(&lab.ok(&["hosts", "--json"])).unwrap();
    let hosts = facts.as_array().unwrap_or_else(|| facts["hosts"].as_array().unwrap());
    let pmu_of = |name: &str| {
        hosts
            .iter()
            .map(|h| if h.get("facts").is_some() { &h["facts"] } else { h })
            .find(|f| f["name"] == name)
            .map_or(0, |f| f["pmu_version"].as_u64().unwrap_or(0))
    };
    assert_eq!(pmu_of("hostG"), 0, "hostG offers no counters ([cpu] pmu = false)");
    let out = lab.run(&[
        "vm",
        "create",
        "--name",
        "perf",
        "--host",
        "hostA",
        "--kernel",
        "builtin:testguest",
        "--memory",
        "64M",
        "--cmdline",
        "idle",
        "--pmu",
    ]);
    if pmu_of("hostA") == 0 {
        // This machine's KVM offers no PMU (CPUID leaf 0xA reads 0): a VM
        // cannot be given counters here, and says why.
        assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains("offers no virtual performance counters"));
        return;
    }
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(verdict(&lab, "perf", "hostB")["ok"], true, "hostB's PMU is hostA's");
    let g = verdict(&lab, "perf", "hostG");
    assert!(
        g["errors"].as_array().unwrap().iter().any(|f| f["rule"] == "cpu.pmu"),
        "{g}"
    );
}
