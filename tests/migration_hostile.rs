//! A receiver treats the migration stream as hostile: malformed, oversized,
//! truncated or out-of-range input ends the migration with an error, touches
//! nothing outside guest memory, and never crashes the process.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{BOOT_TIMEOUT, Vmm, send};
use vmig_backend::migration::protocol::{self, CpuidLeaf, Hello, Kind, PROTOCOL_VERSION, Range, Token};
use vmig_backend::vmm::MachineConfig;

fn frame(kind: u8, len: u32, arg: u64) -> Vec<u8> {
    let mut bytes = vec![kind, 0, 0, 0];
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(&arg.to_le_bytes());
    bytes
}

fn connect(url: &str) -> TcpStream {
    let stream = TcpStream::connect(url.strip_prefix("tcp:").unwrap()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream
}

/// The CPUID a real source on this host would announce.
fn local_cpuid() -> Vec<CpuidLeaf> {
    let kvm = vmig_backend::vmm::open_kvm().unwrap();
    let supported = vmig_backend::vmm::cpuid::supported(&kvm).unwrap();
    let table = vmig_backend::vmm::cpuid::for_vcpu(&supported, 0, 1, &[]).unwrap();
    table.as_slice().iter().map(CpuidLeaf::from).collect()
}

fn hello(cpuid: Vec<CpuidLeaf>) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        session: 42,
        vm_name: "hostile".into(),
        machine: MachineConfig {
            memory_bytes: 64 << 20,
            vcpus: 1,
            cpuid_masks: Vec::new(),
            disks: Vec::new(),
            nics: Vec::new(),
        },
        cpuid,
        xsave_size: 0,
        streams: 1,
        streams_auto: false,
        boot_id: String::new(),
        guest_share: 95,
        token: Token::default(),
        announce: Default::default(),
    }
}

fn send_frame(stream: &mut TcpStream, kind: Kind, arg: u64, payload: &[u8]) {
    protocol::write_frame(stream, kind, arg, payload).unwrap();
}

/// Reads the receiver's next frame: (kind byte, payload).
fn read_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut header = [0u8; 16];
    stream.read_exact(&mut header).unwrap();
    let len = u32::from_le_bytes(header[4..8].try_into().unwrap()) as usize;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).unwrap();
    (header[0], payload)
}

/// Sends a Hello this host accepts; returns the stream after Accept.
fn accepted(url: &str) -> TcpStream {
    let mut stream = connect(url);
    send_frame(&mut stream, Kind::Hello, 0, &protocol::encode(&hello(local_cpuid())));
    let (kind, payload) = read_frame(&mut stream);
    assert_eq!(kind, Kind::Accept as u8, "{}", String::from_utf8_lossy(&payload));
    stream
}

/// The receiver gives up with `needle` in its error, runs nothing, and exits.
fn assert_discarded(mut target: Vmm, needle: &str) {
    let status = target.wait_exit(BOOT_TIMEOUT);
    assert_eq!(status.code(), Some(1), "{}", target.stderr_text());
    let stderr = target.stderr_text();
    assert!(stderr.contains("incoming migration failed"), "{stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    assert!(target.console_text().is_empty(), "nothing ran");
}

#[test]
fn garbage_connections_do_not_stop_a_receiver_from_taking_a_real_vm() {
    let (target, url) = Vmm::incoming(&[]);
    let mut garbage = connect(&url);
    garbage.write_all(&[0xa5; 1024]).unwrap();
    drop(garbage);
    let mut unknown = connect(&url);
    unknown.write_all(&frame(200, 0, 0)).unwrap();
    drop(unknown);
    let mut huge = connect(&url);
    huge.write_all(&frame(Kind::Hello as u8, u32::MAX, 0)).unwrap();
    drop(huge);
    let mut malformed = connect(&url);
    malformed.write_all(&frame(Kind::Hello as u8, 8, 0)).unwrap();
    malformed.write_all(&[0xff; 8]).unwrap();
    let (kind, _) = read_frame(&mut malformed);
    assert_eq!(kind, Kind::Abort as u8, "a malformed Hello is answered with Abort");

    let source = Vmm::testguest("128M", 1, "hb=20");
    source.wait_for_heartbeat(BOOT_TIMEOUT, |h| h.seq() >= 2);
    let sent = send(&source, &url, &[]);
    assert_eq!(sent.code, Some(0), "{}", sent.stderr);
    target.wait_for_heartbeat(BOOT_TIMEOUT, |h| h.seq() >= 4);
}

#[test]
fn idle_and_slow_connections_do_not_hold_up_a_sender() {
    // An agent-prepared receiver (with a token), and anyone on the
    // migration network connecting first: idle, or dribbling a header.
    let dir = tempfile::tempdir().unwrap();
    let token = Token([9u8; 32]);
    let path = dir.path().join("token");
    std::fs::write(&path, token.to_hex()).unwrap();
    let target = Vmm::start_in(
        tempfile::tempdir().unwrap(),
        &["--incoming", "tcp:127.0.0.1:0", "--token-file", path.to_str().unwrap()],
    );
    let line = target.wait_for_stderr("the incoming address", |l| l.contains("waiting for an incoming VM on "));
    let url = line.rsplit(' ').next().unwrap().to_string();
    let idle: Vec<TcpStream> = (0..20).map(|_| connect(&url)).collect();
    let mut slow = connect(&url);
    slow.write_all(&[Kind::Hello as u8]).unwrap();
    let source = Vmm::testguest("128M", 1, "hb=20");
    source.wait_for_heartbeat(BOOT_TIMEOUT, |h| h.seq() >= 2);
    let started = std::time::Instant::now();
    let sent = send(&source, &url, &["--token-file", path.to_str().unwrap()]);
    assert_eq!(sent.code, Some(0), "{}", sent.stderr);
    // Before the gate, the sender waited for each idle connection's read
    // to time out in turn (60 s each).
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    target.wait_for_heartbeat(BOOT_TIMEOUT, |h| h.seq() >= 4);
    // The idle ones were dropped once their time to speak was up.
    for mut stream in idle.into_iter().chain([slow]) {
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut byte = [0u8; 1];
        assert!(
            matches!(stream.read(&mut byte), Ok(0) | Err(_)),
            "an idle connection is closed"
        );
    }
}

#[test]
fn a_receiver_that_no_sender_reaches_ends_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("vmm.json");
    let mut target = Vmm::start_in(
        tempfile::tempdir().unwrap(),
        &[
            "--incoming",
            "tcp:127.0.0.1:0",
            "--accept-timeout",
            "1",
            "--record",
            record.to_str().unwrap(),
        ],
    );
    let status = target.wait_exit(Duration::from_secs(20));
    assert!(!status.success());
    assert!(
        target.stderr_text().contains("no sender came within 1 s"),
        "{}",
        target.stderr_text()
    );
    let left: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    assert_eq!(left["exit"]["reason"], "not_received", "{left}");
    assert_eq!(left["exit"]["code"], "no_sender", "{left}");
}

#[test]
fn a_receiver_with_a_token_takes_only_the_sender_that_has_it() {
    let dir = tempfile::tempdir().unwrap();
    let token = Token([7u8; 32]);
    let path = dir.path().join("token");
    std::fs::write(&path, token.to_hex()).unwrap();
    let path = path.to_str().unwrap().to_string();
    let target = Vmm::start_in(dir, &["--incoming", "tcp:127.0.0.1:0", "--token-file", &path]);
    let line = target.wait_for_stderr("the incoming address", |l| l.contains("waiting for an incoming VM on "));
    let url = line.rsplit(' ').next().unwrap().to_string();

    // A Hello this host would accept, but without the token.
    let mut stranger = connect(&url);
    send_frame(&mut stranger, Kind::Hello, 0, &protocol::encode(&hello(local_cpuid())));
    let (kind, payload) = read_frame(&mut stranger);
    assert_eq!(kind, Kind::Abort as u8);
    assert!(String::from_utf8_lossy(&payload).contains("not authenticated"));
    // With a wrong one.
    let mut wrong = hello(local_cpuid());
    wrong.token = Token([8u8; 32]);
    let mut stranger = connect(&url);
    send_frame(&mut stranger, Kind::Hello, 0, &protocol::encode(&wrong));
    assert_eq!(read_frame(&mut stranger).0, Kind::Abort as u8);

    let source = Vmm::testguest("128M", 1, "hb=20");
    source.wait_for_heartbeat(BOOT_TIMEOUT, |h| h.seq() >= 2);
    let refused = send(&source, &url, &[]);
    assert_eq!(
        refused.code,
        Some(1),
        "a sender without the token is refused: {}",
        refused.stderr
    );
    assert!(refused.stderr.contains("not authenticated"), "{}", refused.stderr);
    let sent = send(&source, &url, &["--token-file", &path]);
    assert_eq!(sent.code, Some(0), "{}", sent.stderr);
    target.wait_for_heartbeat(BOOT_TIMEOUT, |h| h.seq() >= 4);
}

#[test]
fn cpu_features_this_host_lacks_are_refused_before_any_memory() {
    let (target, url) = Vmm::incoming(&[]);
    let mut cpuid = local_cpuid();
    let leaf7 = cpuid
        .iter_mut()
        .find(|l| l.function == 7 && l.index == 0)
        .expect("leaf 7");
    leaf7.ebx = u32::MAX;
    let mut stream = connect(&url);
    send_frame(&mut stream, Kind::Hello, 0, &protocol::encode(&hello(cpuid)));
    let (kind, reason) = read_frame(&mut stream);
    assert_eq!(kind, Kind::Abort as u8);
    let reason = String::from_utf8_lossy(&reason);
    assert!(
        reason.contains("lacks CPU features") && reason.contains("0x7.0 ebx"),
        "{reason}"
    );
    assert_discarded(target, "lacks CPU features");
}

#[test]
fn another_protocol_version_is_refused_with_a_reason() {
    let (target, url) = Vmm::incoming(&[]);
    let mut future = hello(local_cpuid());
    future.version = PROTOCOL_VERSION + 1;
    let mut stream = connect(&url);
    send_frame(&mut stream, Kind::Hello, 0, &protocol::encode(&future));
    let (kind, reason) = read_frame(&mut stream);
    assert_eq!(kind, Kind::Abort as u8);
    assert!(String::from_utf8_lossy(&reason).contains("protocol version"));
    assert_discarded(target, "protocol version");
}

#[test]
fn pages_outside_guest_memory_end_the_migration() {
    let (target, url) = Vmm::incoming(&[]);
    let mut stream = accepted(&url);
    // One page just past the end of the guest's 64 MiB.
    let table = protocol::encode_ranges(&[Range {
        gpa: 64 << 20,
        pages: 1,
        flags: 0,
    }]);
    let mut payload = table.clone();
    payload.extend_from_slice(&[0x41; 4096]);
    send_frame(&mut stream, Kind::Memory, 0, &payload);
    assert_discarded(target, "outside guest memory");
}

#[test]
fn oversized_frames_end_the_migration() {
    let (target, url) = Vmm::incoming(&[]);
    let mut stream = accepted(&url);
    stream.write_all(&frame(Kind::Memory as u8, u32::MAX, 0)).unwrap();
    assert_discarded(target, "exceeds its limit");
}

#[test]
fn truncated_frames_end_the_migration() {
    let (target, url) = Vmm::incoming(&[]);
    let mut stream = accepted(&url);
    let table = protocol::encode_ranges(&[Range {
        gpa: 0x10_0000,
        pages: 4,
        flags: 0,
    }]);
    let mut payload = table.clone();
    payload.extend_from_slice(&[0x41; 4 * 4096]);
    let mut bytes = frame(Kind::Memory as u8, payload.len() as u32, 0);
    bytes.extend_from_slice(&payload[..payload.len() / 2]);
    stream.write_all(&bytes).unwrap();
    drop(stream);
    assert_discarded(target, "migration");
}

#[test]
fn a_malformed_machine_state_is_refused_and_nothing_runs() {
    let (target, url) = Vmm::incoming(&[]);
    let mut stream = accepted(&url);
    send_frame(&mut stream, Kind::RoundEnd, 0, &[]);
    let (kind, _) = read_frame(&mut stream);
    assert_eq!(kind, Kind::RoundDone as u8);
    send_frame(&mut stream, Kind::State, 0, &[0xee; 512]);
    assert_discarded(target, "machine state");
}

#[test]
fn a_range_table_that_lies_about_its_data_ends_the_migration() {
    let (target, url) = Vmm::incoming(&[]);
    let mut stream = accepted(&url);
    let table = protocol::encode_ranges(&[Range {
        gpa: 0x10_0000,
        pages: 2,
        flags: 0,
    }]);
    // Two pages announced, one sent, and a frame length that matches only the one.
    let mut payload = table.clone();
    payload.extend_from_slice(&[0x41; 4096]);
    send_frame(&mut stream, Kind::Memory, 0, &payload);
    assert_discarded(target, "ranges carry");
}
