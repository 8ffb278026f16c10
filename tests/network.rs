//! The network through live migrations, in a lab whose hosts are network
//! namespaces on one switch bridge: a real `ping -i 0.01` from the client
//! namespace loses nothing through 20 back-and-forth migrations of a guest
//! that dirties memory, a TCP connection to the guest's echo server keeps
//! every byte in order, and after each move the switch has learnt the VM's
//! MAC on the target's port. A target without the VM's network is refused.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::lab::{Lab, text};

/// The lab's network number (`network.toml`).
fn net_index(lab: &Lab) -> u8 {
    let text = std::fs::read_to_string(lab.dir_path().join("network.toml")).expect("a lab of namespaces");
    text.split('=').nth(1).unwrap().trim().parse().unwrap()
}

fn netns_lab(hosts: usize) -> Lab {
    Lab::up_hosts(hosts, &["--network", "netns"])
}

/// The MAC of `vm`'s first card, from `vmig vm show`.
fn mac_of(lab: &Lab, vm: &str) -> String {
    let shown = lab.ok(&["vm", "show", vm]);
    let line = shown
        .lines()
        .find(|l| l.trim_start().starts_with("nic "))
        .unwrap_or_else(|| panic!("{vm} has no card: {shown}"));
    line.split_whitespace().nth(1).unwrap().to_string()
}

/// The switch port the switch's FDB has learnt `mac` on.
fn fdb_port(switch: &str, mac: &str) -> Option<String> {
    let out = Command::new("bridge")
        .args(["fdb", "show", "br", switch])
        .output()
        .expect("bridge (iproute2)");
    text(&out.stdout)
        .lines()
        .find(|l| l.starts_with(mac))
        .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
}

/// Waits until the VM answers on its TCP echo port.
fn connect(address: Ipv4Addr) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match TcpStream::connect_timeout(&SocketAddr::from((address, 7)), Duration::from_secs(1)) {
            Ok(stream) => return stream,
            Err(e) if Instant::now() > deadline => panic!("the guest's echo server never answered: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Sends numbered chunks and checks each comes back whole and in order,
/// until `stop`; returns the bytes echoed.
fn echo_until(mut stream: TcpStream, stop: &AtomicBool) -> Result<u64, String> {
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut echoed = 0u64;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let chunk: Vec<u8> = format!("{n:016}").repeat(32).into_bytes();
        stream.write_all(&chunk).map_err(|e| format!("write {n}: {e}"))?;
        let mut back = vec![0u8; chunk.len()];
        stream.read_exact(&mut back).map_err(|e| format!("read {n}: {e}"))?;
        if back != chunk {
            return Err(format!("chunk {n} came back different"));
        }
        echoed += chunk.len() as u64;
        n += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(echoed)
}

/// What iputils ping's reply lines say: the sequence numbers answered, in
/// order, and whether any came twice (two copies of the VM answering).
fn ping_replies(output: &str) -> (Vec<u64>, bool) {
    let mut seqs = Vec::new();
    let mut duplicate = false;
    for line in output.lines().filter(|l| l.contains("bytes from")) {
        duplicate |= line.contains("DUP!");
        let seq = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("icmp_seq="))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no icmp_seq in {line:?}"));
        seqs.push(seq);
    }
    (seqs, duplicate)
}

/// The probes missing before the last one answered: those lost on the
/// way. (The summary also counts as lost the ones still in flight when
/// ping was stopped, which says nothing about the migrations.)
fn lost_before_last(seqs: &[u64]) -> Vec<u64> {
    let answered: std::collections::BTreeSet<u64> = seqs.iter().copied().collect();
    let last = answered.last().copied().unwrap_or(0);
    (1..=last).filter(|s| !answered.contains(s)).collect()
}

#[test]
fn ping_and_a_tcp_connection_hold_through_twenty_migrations() {
    let lab = netns_lab(2);
    let n = net_index(&lab);
    let switch = format!("vmiglab{n}");
    let client = format!("vmiglab{n}-client");
    let address = Ipv4Addr::new(10, 77, n, 101);
    lab.create_with(
        "web",
        "hostA",
        "256M",
        &format!("fill=64M dirty=16M rate=10 sleep=1 ip={address}/24"),
        &["--nic", "lab"],
    );
    let mac = mac_of(&lab, "web");
    let stream = connect(address);
    let stop = Arc::new(AtomicBool::new(false));
    let echo = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || echo_until(stream, &stop))
    };
    let ping = Command::new("ip")
        .args(["netns", "exec", &client, "ping", "-i", "0.01"])
        .arg(address.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ping (iputils-ping: scripts/test-deps installs it)");
    let ports = [format!("vmiglab{n}-A"), format!("vmiglab{n}-B")];
    for i in 0..20 {
        let (target, port) = if i % 2 == 0 {
            ("hostB", &ports[1])
        } else {
            ("hostA", &ports[0])
        };
        lab.ok(&["migrate", "web", target, "--json"]);
        // The target announced the card: the switch forwards to it now.
        assert_eq!(
            fdb_port(&switch, &mac).as_deref(),
            Some(port.as_str()),
            "after move {i} the switch does not send {mac} to {target}"
        );
    }
    // Pinged a while after the last move, so a loss at the end would show.
    std::thread::sleep(Duration::from_millis(500));
    common::lab::signal(ping.id() as i32, libc::SIGINT);
    let out = ping.wait_with_output().unwrap();
    let output = text(&out.stdout);
    let (seqs, duplicate) = ping_replies(&output);
    stop.store(true, Ordering::Relaxed);
    let echoed = echo
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("the TCP echo broke: {e}"));
    assert!(seqs.len() > 100, "ping had only {} answers", seqs.len());
    let summary: String = output.lines().rev().take(3).collect::<Vec<_>>().join(" / ");
    assert_eq!(
        lost_before_last(&seqs),
        Vec::<u64>::new(),
        "pings lost through 20 migrations ({summary})"
    );
    assert!(!duplicate, "a ping was answered twice: two copies ran ({summary})");
    assert!(echoed > 0, "nothing was echoed");
    // The guest checked its memory all along.
    let console = lab.console("web");
    common::lab::assert_guest_intact(&lab.heartbeats("web"), &console);
}

#[test]
fn the_operators_probe_reports_no_loss_and_a_target_without_the_network_is_refused() {
    // hostF (the sixth) has no bridge for the VMs' network.
    let lab = netns_lab(6);
    let n = net_index(&lab);
    let address = Ipv4Addr::new(10, 77, n, 102);
    lab.create_with(
        "db",
        "hostA",
        "128M",
        &format!("idle verify=0 sleep=1 ip={address}/24"),
        &["--nic", "lab"],
    );
    connect(address);
    let out = lab.ok(&["migrate", "db", "hostB", "--ping", &address.to_string(), "--json"]);
    let moved: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let probe = &moved["migrated"]["probe"];
    assert!(probe["sent"].as_u64().unwrap() > 0, "{probe}");
    assert_eq!(probe["lost"], 0, "{probe}");
    assert!(probe["longest_gap_ms"].as_f64().unwrap() > 0.0, "{probe}");
    let report = &moved["migrated"]["report"];
    assert_eq!(report["announce"]["rounds"], 5, "{report}");

    let refused = lab.run(&["precheck", "db", "hostF", "--json"]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stderr));
    let findings = text(&refused.stdout);
    assert!(findings.contains("network.reachable"), "{findings}");
    let moved = lab.run(&["migrate", "db", "hostF"]);
    assert_eq!(moved.status.code(), Some(1));
    assert!(
        text(&moved.stderr).contains("network.reachable"),
        "{}",
        text(&moved.stderr)
    );
    // Where it was, still answering.
    assert_eq!(lab.vm("db")["host"], "hostB");
    connect(address);
}
