//! The fault matrix: {SIGKILL, SIGTERM, SIGSTOP, link cut} × {source VMM,
//! target VMM, source agent, target agent, `vmig` client, the links} × every
//! phase of a migration, each cell run on a lab of two hosts with a guest
//! that dirties memory and checks it.
//!
//! A trial holds the migration at the cell's phase (a test hold point),
//! strikes, lets it go on, lifts the fault (restarts a killed agent, continues
//! a stopped process after longer than the timeouts, heals a cut link), and
//! then checks what every cell must show, whatever its fault:
//! - at most one copy of the VM runs, and `vmig vms` lists it once; none only
//!   where a VMM was killed (reported lost) or stopped on request (SIGTERM);
//! - the copy that runs goes on with every heartbeat in sequence and no
//!   integrity error;
//! - `vmig migrate` ends within a bounded time, and its exit code and message
//!   say where the VM is (0 on the target, 1 on the source, 11 lost; never 6
//!   once the fault is lifted), with no library's URL in them;
//! - no receiving VMM, token file, VM directory or zombie is left behind.

use std::fs::File;
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Heartbeat;
use super::lab::{self, Lab, signal, text, zombies_of};
use super::netcut::{Cut, Flow};

/// The lab's agents' timeouts in the matrix (seconds): short, so that a
/// fault outlasts them quickly.
pub const ACCEPT_S: u64 = 5;
pub const STREAM_S: u64 = 4;
pub const HANDOFF_S: u64 = 3;
/// How long a stopped process stays stopped, and a cut link cut: longer
/// than any one timeout of the agents, the VMMs and the client.
pub const FAULT_FOR: Duration = Duration::from_secs(12);
/// The longest `vmig migrate` may take to tell its outcome once a fault is
/// lifted, and the cluster to settle.
const BOUND: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Kill,
    Term,
    Stop,
    Cut,
}

/// What a fault strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Struck {
    SourceVmm,
    TargetVmm,
    SourceAgent,
    TargetAgent,
    Client,
    /// The link between the two VMMs (a cut only).
    VmmLink,
}

/// The phases, by the name of their hold point.
pub const PHASES: [&str; 7] = [
    "prepared",
    "first-pass",
    "later-round",
    "final-state",
    "after-go",
    "after-running",
    "finish",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell {
    pub fault: Fault,
    pub struck: Struck,
    pub phase: &'static str,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "SIGKILL",
            Fault::Term => "SIGTERM",
            Fault::Stop => "SIGSTOP",
            Fault::Cut => "link cut",
        }
    }
}

impl Struck {
    pub fn name(self) -> &'static str {
        match self {
            Struck::SourceVmm => "source VMM",
            Struck::TargetVmm => "target VMM",
            Struck::SourceAgent => "source agent",
            Struck::TargetAgent => "target agent",
            Struck::Client => "vmig client",
            Struck::VmmLink => "VMM link",
        }
    }
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} × {} × {}", self.fault.name(), self.struck.name(), self.phase)
    }
}

/// Every cell of the matrix: signals to each process, a cut of each
/// process's links (an agent's, the client's) and of the VMMs' link.
pub fn cells() -> Vec<Cell> {
    let mut cells = Vec::new();
    for phase in PHASES {
        for struck in [
            Struck::SourceVmm,
            Struck::TargetVmm,
            Struck::SourceAgent,
            Struck::TargetAgent,
            Struck::Client,
        ] {
            for fault in [Fault::Kill, Fault::Term, Fault::Stop] {
                cells.push(Cell { fault, struck, phase });
            }
        }
        for struck in [
            Struck::Client,
            Struck::SourceAgent,
            Struck::TargetAgent,
            Struck::VmmLink,
        ] {
            cells.push(Cell {
                fault: Fault::Cut,
                struck,
                phase,
            });
        }
    }
    cells
}

/// The lab a matrix runs on: two hosts, short timeouts.
pub fn lab() -> Lab {
    let (accept, stream, handoff) = (ACCEPT_S.to_string(), STREAM_S.to_string(), HANDOFF_S.to_string());
    Lab::up_with_env(
        2,
        &[
            "--accept-timeout",
            &accept,
            "--stream-timeout",
            &stream,
            "--handoff-timeout",
            &handoff,
        ],
        &[],
    )
}

/// What a trial saw.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `vmig migrate`'s exit code (none: the fault killed it).
    pub exit: Option<i32>,
    /// Where the VM ended: host and state.
    pub host: String,
    pub state: String,
    pub seconds: f64,
}

/// Runs one trial of `cell`; Err says which promise it broke.
pub fn trial(lab: &Lab, cell: Cell) -> Result<Seen, String> {
    let started = Instant::now();
    let result = strike(lab, cell).and_then(|exit| check(lab, cell, exit));
    let cleanup = clean(lab);
    let seen = result?;
    cleanup?;
    Ok(Seen {
        seconds: started.elapsed().as_secs_f64(),
        ..seen
    })
}

/// The VM, the migration, the fault; returns the client's exit code.
fn strike(lab: &Lab, cell: Cell) -> Result<Option<i32>, String> {
    lab.create("vm1", "hostA", "256M", "fill=96M dirty=32M rate=40 hb=100");
    lab.wait_filled("vm1");
    lab.arm(cell.phase);
    let out_dir = lab.dir.path().join("client");
    std::fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;
    let mut client: Child = lab
        .command(&["migrate", "vm1", "hostB", "--json", "--bandwidth", "64M"])
        .stdout(File::create(out_dir.join("stdout")).map_err(|e| e.to_string())?)
        .stderr(File::create(out_dir.join("stderr")).map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| e.to_string())?;
    if lab.wait_held(cell.phase, Duration::from_secs(60)).is_none() {
        let _ = client.kill();
        let _ = client.wait();
        return Err(format!("the migration never reached {}", cell.phase));
    }
    let victim = match cell.struck {
        Struck::SourceVmm => lab.vmm_pid("hostA", "vm1"),
        Struck::TargetVmm => lab.vmm_pid("hostB", "vm1"),
        Struck::SourceAgent => Some(lab.agent_pid("hostA")),
        Struck::TargetAgent => Some(lab.agent_pid("hostB")),
        Struck::Client => Some(client.id() as i32),
        Struck::VmmLink => None,
    };
    let agent = matches!(cell.struck, Struck::SourceAgent | Struck::TargetAgent);
    match cell.fault {
        Fault::Kill | Fault::Term => {
            let pid = victim.ok_or("no process to signal")?;
            signal(
                pid,
                if cell.fault == Fault::Kill {
                    libc::SIGKILL
                } else {
                    libc::SIGTERM
                },
            );
            if agent {
                // Restarted before the migration ends (it is held).
                lab::wait_gone(pid);
                lab.restart_agents();
            }
            lab.release(cell.phase);
        }
        Fault::Stop => {
            let pid = victim.ok_or("no process to stop")?;
            signal(pid, libc::SIGSTOP);
            lab.release(cell.phase);
            std::thread::sleep(FAULT_FOR);
            signal(pid, libc::SIGCONT);
        }
        Fault::Cut => {
            let cut = Cut::new(&links(lab, cell.struck));
            lab.release(cell.phase);
            std::thread::sleep(FAULT_FOR);
            drop(cut);
        }
    }
    if cell.struck == Struck::Client && cell.fault == Fault::Kill {
        let _ = client.wait();
        return Ok(None);
    }
    let deadline = Instant::now() + BOUND;
    loop {
        if let Some(status) = client.try_wait().map_err(|e| e.to_string())? {
            return Ok(status.code());
        }
        if Instant::now() >= deadline {
            let _ = client.kill();
            let _ = client.wait();
            return Err(format!(
                "vmig migrate did not end within {} s of the fault",
                BOUND.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The packets of `target`'s links. Agents talk to each other (and to
/// receivers, keepalives) from their own addresses, the client and the VMMs
/// from the default one, so traffic between the two hosts' own addresses
/// is the agents'; an agent's API port carries its clients'.
fn links(lab: &Lab, struck: Struck) -> Vec<Flow> {
    let (a_ip, a_port) = lab.address("hostA");
    let (b_ip, b_port) = lab.address("hostB");
    let client_ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let between_agents = [
        Flow {
            saddr: Some(a_ip),
            daddr: Some(b_ip),
            ..Flow::default()
        },
        Flow {
            saddr: Some(b_ip),
            daddr: Some(a_ip),
            ..Flow::default()
        },
    ];
    let mut flows = Vec::new();
    match struck {
        Struck::Client => {
            flows.extend(Flow::from_to(client_ip, a_ip, a_port));
            flows.extend(Flow::from_to(client_ip, b_ip, b_port));
        }
        Struck::SourceAgent => {
            flows.extend(Flow::port(a_ip, a_port));
            flows.extend(between_agents);
        }
        Struck::TargetAgent => {
            flows.extend(Flow::port(b_ip, b_port));
            flows.extend(between_agents);
        }
        Struck::VmmLink => {
            if let Some(port) = receiver_port(lab) {
                flows.extend(Flow::port(b_ip, port));
            }
        }
        Struck::SourceVmm | Struck::TargetVmm => {}
    }
    flows
}

/// The port hostB's receiving VMM listens on, from its record.
fn receiver_port(lab: &Lab) -> Option<u16> {
    let path = lab.host_dir("hostB").join("state/vms/vm1/vmm.json");
    let record: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    let url = record["listening"].as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

/// What every cell must show once the fault is lifted.
fn check(lab: &Lab, cell: Cell, exit: Option<i32>) -> Result<Seen, String> {
    let out_dir = lab.dir.path().join("client");
    let stdout = std::fs::read_to_string(out_dir.join("stdout")).unwrap_or_default();
    let stderr = std::fs::read_to_string(out_dir.join("stderr")).unwrap_or_default();
    let said = format!("exit {exit:?}; stderr: {}", stderr.trim());
    if stderr.contains("https://") || stdout.contains("https://") {
        return Err(format!("a library's URL in the message: {said}"));
    }
    let vm = settled(lab)?;
    let host = vm["host"].as_str().unwrap_or_default().to_string();
    let state = vm["state"].as_str().unwrap_or_default().to_string();
    let where_ = format!("vm1 {state} on {host} ({})", vm["note"].as_str().unwrap_or_default());
    // No receiver lingers: at most the one VMM that holds the VM.
    let deadline = Instant::now() + Duration::from_secs(ACCEPT_S + HANDOFF_S + 30);
    let vmms = loop {
        let vmms = lab.vmms_of("vm1");
        if vmms.len() <= usize::from(state == "running" || state == "paused") || Instant::now() >= deadline {
            break vmms;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    match state.as_str() {
        "running" => {
            if vmms.len() != 1 {
                return Err(format!("{} VMM processes of vm1 run: {vmms:?}; {where_}", vmms.len()));
            }
            guest_goes_on(lab)?;
        }
        "lost" => {
            let killed_a_vmm =
                cell.fault == Fault::Kill && matches!(cell.struck, Struck::SourceVmm | Struck::TargetVmm);
            if !killed_a_vmm {
                return Err(format!("vm1 is lost, though no VMM was killed: {where_}"));
            }
            if !vmms.is_empty() {
                return Err(format!("vm1 is said lost, but VMMs of it run: {vmms:?}"));
            }
        }
        "stopped" => {
            let stopped_a_vmm =
                cell.fault == Fault::Term && matches!(cell.struck, Struck::SourceVmm | Struck::TargetVmm);
            if !stopped_a_vmm || !vmms.is_empty() {
                return Err(format!(
                    "vm1 is stopped, though no VMM was stopped on request: {where_}; {vmms:?}"
                ));
            }
        }
        other => return Err(format!("vm1 settled as {other}: {where_}")),
    }
    // The client's word matches the cluster's.
    let truthful = match exit {
        None => true,
        // Moved; stopped there since only when its VMM there was stopped.
        Some(0) => host == "hostB" && (state == "running" || state == "stopped"),
        Some(1) => host == "hostA" && !stderr.contains("is lost"),
        Some(11) => state == "lost" && stderr.contains("lost"),
        Some(5) => host == "hostA",
        Some(_) => false,
    };
    if !truthful {
        return Err(format!("the client said {said}, while {where_}"));
    }
    if exit.is_some()
        && !stdout
            .lines()
            .any(|l| l.contains("\"migrated\"") || l.contains("\"failed\""))
    {
        return Err(format!("no outcome line on standard output: {said}"));
    }
    leftovers(lab, &host)?;
    Ok(Seen {
        exit,
        host,
        state,
        seconds: 0.0,
    })
}

/// Waits until `vmig vms` lists vm1 once, in a settled state.
fn settled(lab: &Lab) -> Result<Value, String> {
    let deadline = Instant::now() + BOUND;
    let mut last = String::new();
    loop {
        if let Some(vms) = lab.try_vms() {
            let copies: Vec<&Value> = vms.iter().filter(|v| v["name"] == "vm1").collect();
            let holding = |v: &&&Value| matches!(v["state"].as_str(), Some("running" | "paused"));
            if copies.iter().filter(holding).count() > 1 {
                return Err(format!("vm1 runs on {} hosts: {copies:?}", copies.len()));
            }
            // A migration under way shows its two ends (migrating, incoming)
            // until it settles.
            if copies.len() == 1
                && let Some(vm) = copies.first()
            {
                let state = vm["state"].as_str().unwrap_or_default();
                if matches!(state, "running" | "stopped" | "lost" | "failed" | "paused") {
                    return Ok((*vm).clone());
                }
                last = format!("{vm}");
            } else {
                last = format!("vm1 is listed {} times: {copies:?}", copies.len());
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the cluster did not settle within {} s: {last}",
                BOUND.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The running copy keeps beating, in sequence, with its memory intact.
fn guest_goes_on(lab: &Lab) -> Result<(), String> {
    let before = lab.heartbeats("vm1").last().map_or(0, Heartbeat::seq);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let console = lab.console("vm1");
        let beats: Vec<Heartbeat> = lab::complete_lines(&console).filter_map(Heartbeat::parse).collect();
        if console.contains("ERR") {
            return Err(format!("the guest reported an error:\n{}", super::tail(&console)));
        }
        if let Some(bad) = beats.iter().find(|b| b.get("errors") != 0) {
            return Err(format!("integrity errors: {:?}", bad.fields));
        }
        // The console of the host it runs on continues without a gap or a
        // repeat (earlier hosts' history may be missing when an agent died).
        if let Some(pair) = beats
            .windows(2)
            .find(|w| w[1].seq() != w[0].seq() + 1 && w[1].seq() > 0)
        {
            let (a, b) = (pair[0].seq(), pair[1].seq());
            if b <= a {
                return Err(format!("heartbeat {b} after {a}: a second copy or a rollback ran"));
            }
        }
        if beats.last().is_some_and(|b| b.seq() >= before + 3) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("vm1 stopped beating at {before}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// No VM directory, token or zombie is left for a VM that is not there.
fn leftovers(lab: &Lab, host: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(ACCEPT_S + 20);
    loop {
        let mut found = Vec::new();
        for h in ["hostA", "hostB"] {
            for dir in lab.vm_dirs(h) {
                if dir != "vm1" || h != host {
                    found.push(format!("{h} keeps files of {dir}: {:?}", lab.vm_files(h, &dir)));
                }
            }
            if lab.vm_files(h, "vm1").iter().any(|f| f == "token") {
                found.push(format!("{h} keeps vm1's migration token"));
            }
            let zombies = zombies_of(lab.agent_pid(h));
            if !zombies.is_empty() {
                found.push(format!("{h}'s agent leaves zombies {zombies:?}"));
            }
        }
        if found.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(found.join("; "));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Ends the trial's VM wherever it is, so the next starts clean.
fn clean(lab: &Lab) -> Result<(), String> {
    lab.disarm_all();
    // Agents a trial left stopped or dead are brought back first.
    for host in ["hostA", "hostB"] {
        let pid = lab.agent_pid(host);
        signal(pid, libc::SIGCONT);
    }
    lab.restart_agents();
    let destroy = lab.run(&["vm", "destroy", "vm1"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lab.vmms_of("vm1").is_empty() {
        if Instant::now() >= deadline {
            for pid in lab.vmms_of("vm1") {
                signal(pid, libc::SIGKILL);
            }
            return Err(format!("vm1's VMMs did not end: {}", text(&destroy.stderr)));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // A VM that was lost or in doubt may need its record removed too.
    for host in ["hostA", "hostB"] {
        if lab.vm_dirs(host).iter().any(|d| d == "vm1") {
            let again = lab.run(&["vm", "destroy", "vm1"]);
            if !again.status.success() && lab.vm_dirs(host).iter().any(|d| d == "vm1") {
                return Err(format!("cannot destroy vm1 on {host}: {}", text(&again.stderr)));
            }
        }
    }
    Ok(())
}
