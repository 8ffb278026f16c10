//! The serial console end to end: output as the guest writes it (a prompt
//! without a newline at once), input into the guest's UART, and
//! `vmig vm console --follow|--attach` following a VM across live
//! migrations with no byte lost or repeated.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::lab::{Lab, text};
use common::{BOOT_TIMEOUT, Heartbeat, VMIG, Vmm};
use serde_json::Value;
use vmig_backend::runtime::control::{Reply, Request};

/// An idle guest that parks its vCPU, with the login-like console.
const PROMPT_GUEST: &str = "idle verify=0 sleep=1 prompt=1";

/// Waits until `what` holds, at most `limit`.
fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a child process writes to a pipe, collected as it comes.
#[derive(Clone, Default)]
struct Collected(Arc<Mutex<Vec<u8>>>);

impl Collected {
    fn from(mut pipe: impl Read + Send + 'static) -> Self {
        let collected = Self::default();
        let bytes = Arc::clone(&collected.0);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                bytes.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        collected
    }

    fn text(&self) -> String {
        text(&self.0.lock().unwrap())
    }

    fn wait_for(&self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {needle:?}; so far:\n{}",
                common::tail(&self.text())
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn the_vmm_writes_a_prompt_at_once_and_its_guest_reads_console_input() {
    // A heartbeat every 10 minutes: no newline follows the prompt for that long.
    let vmm = Vmm::testguest("128M", 1, &format!("{PROMPT_GUEST} hb=600000"));
    let console = || std::fs::read_to_string(&vmm.console).unwrap_or_default();
    wait_until("the prompt", BOOT_TIMEOUT, || console().ends_with("vmig login: "));
    let Reply::ConsoleInput { accepted } = vmm.request(&Request::ConsoleInput {
        hex: vmig_backend::hex::encode(b"root\r"),
    }) else {
        panic!("console_input did not answer how much it took");
    };
    assert_eq!(accepted, 5);
    wait_until("the guest's answer", BOOT_TIMEOUT, || {
        console().ends_with("root\nGOT root\nvmig login: ")
    });
    // The FIFO holds 64 bytes: more waits for the guest to read.
    let Reply::ConsoleInput { accepted } = vmm.request(&Request::ConsoleInput {
        hex: vmig_backend::hex::encode(&[b'x'; 100]),
    }) else {
        panic!("no answer");
    };
    assert!((1..=64).contains(&accepted), "{accepted} bytes taken by a 64-byte FIFO");
    let echo = "x".repeat(accepted);
    wait_until("the echo", BOOT_TIMEOUT, || {
        console().ends_with(&format!("vmig login: {echo}"))
    });
    let Reply::Stats(stats) = vmm.request(&Request::Stats) else {
        panic!("no stats");
    };
    assert_eq!(
        stats.console_bytes,
        console().len() as u64,
        "every byte counted is in the file"
    );
}

/// `vmig vm console VM --follow --json` in the background.
fn follower(lab: &Lab, vm: &str, extra: &[&str]) -> (Child, Collected) {
    let mut child = lab
        .command(&[&["vm", "console", vm, "--follow", "--json"], extra].concat())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = Collected::from(child.stdout.take().unwrap());
    (child, out)
}

/// The follower's JSON lines so far (the last may be incomplete: left out).
fn events(out: &Collected) -> Vec<Value> {
    common::lab::complete_lines(&out.text())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The bytes of the follower's output events, checked to follow each other
/// without a gap or an overlap from `from` on.
fn followed_bytes(events: &[Value], from: u64) -> String {
    let mut at = from;
    let mut text = String::new();
    for event in events {
        assert!(event.get("skipped").is_none(), "bytes were skipped: {event}");
        if let Some(output) = event.get("output") {
            assert_eq!(output["at"].as_u64(), Some(at), "a gap or a repeat at {at}: {event}");
            let piece = output["text"].as_str().unwrap();
            assert_eq!(output["len"].as_u64(), Some(piece.len() as u64));
            at += piece.len() as u64;
            text.push_str(piece);
        }
    }
    text
}

fn heartbeats(text: &str) -> Vec<Heartbeat> {
    common::lab::complete_lines(text).filter_map(Heartbeat::parse).collect()
}

#[test]
fn a_follower_gets_every_byte_once_across_migrations_back_and_forth() {
    let lab = Lab::up(&[]);
    lab.create("vm1", "hostA", "128M", "idle verify=0 sleep=1 hb=50");
    lab.wait_for_heartbeat("vm1", 3);
    let (mut child, out) = follower(&lab, "vm1", &["--from", "0"]);
    out.wait_for("HB seq=3 ", BOOT_TIMEOUT);
    let route = ["hostB", "hostC", "hostA", "hostB"];
    for host in route {
        // Each move while the guest prints: a heartbeat every 50 ms.
        let seen = heartbeats(&followed_bytes(&events(&out), 0)).last().unwrap().seq();
        wait_until("a few more heartbeats", BOOT_TIMEOUT, || {
            heartbeats(&followed_bytes(&events(&out), 0)).last().unwrap().seq() >= seen + 3
        });
        let moved = lab.run(&["migrate", "vm1", host, "--json"]);
        assert!(moved.status.success(), "to {host}: {}", text(&moved.stderr));
    }
    let last = lab.heartbeats("vm1").last().unwrap().seq();
    wait_until("the follower to go on past the last move", BOOT_TIMEOUT, || {
        heartbeats(&followed_bytes(&events(&out), 0)).last().unwrap().seq() >= last + 5
    });
    let final_console = lab.console("vm1");
    let _ = child.kill();
    let _ = child.wait();

    let events = events(&out);
    let followed = followed_bytes(&events, 0);
    assert!(
        followed.starts_with("VMIG-TESTGUEST v1"),
        "from the first byte: {followed:.200}"
    );
    // Every heartbeat once and in order, across four switchovers.
    let beats = heartbeats(&followed);
    let complete = &followed[..followed.rfind('\n').map_or(0, |i| i + 1)];
    assert_eq!(
        complete.matches("HB seq=").count(),
        beats.len(),
        "a damaged heartbeat line"
    );
    for (i, beat) in beats.iter().enumerate() {
        assert_eq!(
            beat.seq(),
            i as u64,
            "heartbeat {i} lost or repeated:\n{}",
            common::tail(&followed)
        );
    }
    // The same bytes as the console the VM's last host keeps (its own and
    // what came with the VM), which went on meanwhile.
    assert!(
        final_console.starts_with(&followed) || followed.starts_with(&final_console),
        "the follower's bytes differ from the console's:\nfollowed {} bytes, console {} bytes",
        followed.len(),
        final_console.len()
    );
    assert!(final_console.len() > 1000);
    // It said where the VM went, each time at the byte reached then.
    let moves: Vec<&Value> = events.iter().filter_map(|e| e.get("moved")).collect();
    let hops: Vec<(&str, &str)> = moves
        .iter()
        .map(|m| (m["from"].as_str().unwrap(), m["to"].as_str().unwrap()))
        .collect();
    assert_eq!(
        hops,
        [
            ("hostA", "hostB"),
            ("hostB", "hostC"),
            ("hostC", "hostA"),
            ("hostA", "hostB")
        ]
    );
    let mut at = 0;
    for event in &events {
        if let Some(output) = event.get("output") {
            at = output["at"].as_u64().unwrap() + output["len"].as_u64().unwrap();
        }
        if let Some(moved) = event.get("moved") {
            assert_eq!(moved["at"].as_u64(), Some(at), "{moved}");
        }
    }
}

#[test]
fn a_prompt_without_a_newline_reaches_a_follower_at_once() {
    let lab = Lab::up_hosts(2, &[]);
    // No newline follows the prompt for ten minutes (the next heartbeat).
    lab.create("vm1", "hostA", "128M", &format!("{PROMPT_GUEST} hb=600000"));
    let mut child = lab
        .command(&["vm", "console", "vm1", "--follow", "--from", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = Collected::from(child.stdout.take().unwrap());
    out.wait_for("FILLED", BOOT_TIMEOUT);
    wait_until("the prompt", Duration::from_secs(30), || {
        out.text().ends_with("vmig login: ")
    });
    let _ = child.kill();
    let _ = child.wait();
    // Raw bytes on a pipe: exactly what the guest wrote.
    assert!(out.text().starts_with("VMIG-TESTGUEST v1"), "{}", out.text());
}

/// `vmig vm console VM --attach` on a pseudo-terminal (script(1)).
struct Attached {
    child: Child,
    input: std::process::ChildStdin,
    screen: Collected,
}

impl Attached {
    fn start(lab: &Lab, vm: &str) -> Self {
        let command = format!(
            "{VMIG} --inventory {} vm console {vm} --attach --bytes 0",
            lab.inventory().to_str().unwrap()
        );
        let mut child = Command::new("script")
            .args(["-qefc", &command, "/dev/null"])
            .env("TERM", "xterm")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("script(1) runs a pseudo-terminal (util-linux)");
        let input = child.stdin.take().unwrap();
        let screen = Collected::from(child.stdout.take().unwrap());
        screen.wait_for("detach with Ctrl-]", BOOT_TIMEOUT);
        Self { child, input, screen }
    }

    fn type_keys(&mut self, keys: &[u8]) {
        self.input.write_all(keys).unwrap();
        self.input.flush().unwrap();
    }
}

#[test]
fn attach_types_into_the_guest_before_during_and_after_a_migration() {
    let lab = Lab::up_with_env(2, &[], &[]);
    lab.create("vm1", "hostA", "128M", &format!("{PROMPT_GUEST} hb=1000"));
    let console_has = |needle: &str| lab.console("vm1").contains(needle);
    wait_until("the prompt", BOOT_TIMEOUT, || console_has("vmig login: "));
    let mut attached = Attached::start(&lab, "vm1");
    attached.type_keys(b"hello\r");
    attached.screen.wait_for("GOT hello", BOOT_TIMEOUT);

    // Typed while the source has paused for the last time and its state is
    // on the way: it must not stay behind in the source's UART, nor come twice.
    lab.arm("final-state");
    let mut migrate = lab.spawn_migrate("vm1", "hostB", &[]);
    lab.wait_held("final-state", BOOT_TIMEOUT)
        .expect("the source VMM never reached its final state");
    attached.type_keys(b"during\r");
    lab.release("final-state");
    let moved = migrate.wait().unwrap();
    assert!(moved.success(), "the migration failed");
    assert_eq!(lab.vm("vm1")["host"], "hostB");
    attached.screen.wait_for("GOT during", BOOT_TIMEOUT);

    attached.type_keys(b"world\r");
    attached.screen.wait_for("GOT world", BOOT_TIMEOUT);
    // Ctrl-] detaches; the guest never sees it.
    attached.type_keys(&[0x1d]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = attached.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "Ctrl-] did not detach");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    let _ = BufReader::new(attached.child.stderr.take().unwrap()).read_line(&mut stderr);
    assert_eq!(status.code(), Some(0), "{stderr}{}", attached.screen.text());
    let screen = attached.screen.text();
    assert!(screen.contains("detached from vm1's console"), "{screen}");
    assert!(screen.contains("vm1 moved from hostA to hostB"), "{screen}");

    // Each line reached the guest once, wherever it ran.
    let console = lab.console("vm1");
    for line in ["GOT hello\n", "GOT during\n", "GOT world\n"] {
        assert_eq!(console.matches(line).count(), 1, "{line:?} in:\n{console}");
    }
    assert!(!console.contains("\\x1d"), "the detach key reached the guest");
}
