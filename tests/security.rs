//! What the migration link shows, by packet capture: TLS streams (what the
//! agents use unless both opted out) carry no guest memory and no token,
//! and each side refuses a peer that is not the host it expects. The same
//! migration in plaintext shows both, so the capture can see them.

mod common;

use std::path::{Path, PathBuf};

use common::capture::{Capture, Flows};
use common::lab::Lab;
use common::{BOOT_TIMEOUT, Vmm, send};
use vmig_backend::migration::Token;
use vmig_backend::pki::{self, Role};

static CAPTURING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Text the guest holds in its memory (its command line stays there).
const MARKER: &str = "vmig-capture-marker-5e1c0a97d2";

struct Cluster {
    dir: tempfile::TempDir,
    token: Token,
}

impl Cluster {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        pki::init_ca(&ca, "capture").unwrap();
        for name in ["hostA", "hostB", "hostC"] {
            pki::issue(&ca, Role::Host, name, &[], &dir.path().join("certs")).unwrap();
        }
        let token = Token::random().unwrap();
        std::fs::write(dir.path().join("token"), token.to_hex()).unwrap();
        Self { dir, token }
    }

    fn token_file(&self) -> PathBuf {
        self.dir.path().join("token")
    }

    /// `--tls-*` for host `me` expecting `peer`.
    fn tls(&self, me: &str, peer: &str) -> Vec<String> {
        let certs = self.dir.path().join("certs");
        let path = |p: &Path| p.display().to_string();
        vec![
            "--tls-cert".into(),
            path(&certs.join(format!("{me}.pem"))),
            "--tls-key".into(),
            path(&certs.join(format!("{me}.key"))),
            "--tls-ca".into(),
            path(&self.dir.path().join("ca/ca.pem")),
            "--tls-peer".into(),
            peer.into(),
        ]
    }

    /// A target on hostB taking its VM from `from`, with the token.
    fn target(&self, tls: bool, from: &str) -> (Vmm, String) {
        let mut args = vec!["--token-file".to_string(), self.token_file().display().to_string()];
        if tls {
            args.extend(self.tls("hostB", from));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Vmm::incoming_with(&args, &[])
    }

    /// `vmig vm send` from hostA to `url`, expecting the host `to` there.
    fn send(&self, source: &Vmm, url: &str, tls: bool, to: &str) -> common::Sent {
        let mut args = vec!["--token-file".to_string(), self.token_file().display().to_string()];
        if tls {
            args.extend(self.tls("hostA", to));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        send(source, url, &args)
    }
}

fn source() -> Vmm {
    let vmm = Vmm::testguest("256M", 1, &format!("hb=20 fill=32M note={MARKER}"));
    vmm.wait_for_line("the fill", BOOT_TIMEOUT, |l| l.starts_with("FILLED"));
    vmm
}

fn port(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

/// Migrates a filled guest hostA -> hostB under a capture of loopback.
fn captured_migration(cluster: &Cluster, tls: bool) -> (Flows, u16, serde_json::Value) {
    // One capture at a time: each sees all of loopback.
    let _alone = CAPTURING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let source = source();
    let (target, url) = cluster.target(tls, "hostA");
    let capture = Capture::start();
    let sent = cluster.send(&source, &url, tls, "hostB");
    let flows = capture.stop();
    assert_eq!(sent.code, Some(0), "{}", sent.stderr);
    // The VM runs on the target, its memory whole: the marker is there.
    target.wait_for_heartbeat(BOOT_TIMEOUT, |_| true);
    assert_eq!((flows.dropped, flows.missing), (0, 0), "the capture lost nothing");
    let port = port(&url);
    let to_target: usize = flows.to_port(port).iter().map(|b| b.len()).sum();
    assert!(
        to_target >= 32 << 20,
        "the capture holds the migration: {to_target} bytes to port {port}"
    );
    (flows, port, sent.report().clone())
}

#[test]
fn tls_streams_show_no_guest_memory_and_no_token() {
    let cluster = Cluster::new();
    let (flows, port, report) = captured_migration(&cluster, true);
    assert_eq!(
        report["encryption"].as_str().map(|s| s.starts_with("TLS13_")),
        Some(true),
        "{report}"
    );
    for stream in flows.to_port(port) {
        assert_eq!(&stream[..2], &[22, 3], "every stream starts with a TLS handshake");
    }
    assert!(
        !flows.contain(MARKER.as_bytes()),
        "guest memory is not readable on the link"
    );
    assert!(!flows.contain(&cluster.token.0), "the token does not travel");
    assert!(!flows.contain(cluster.token.to_hex().as_bytes()));
}

#[test]
fn plaintext_streams_show_guest_memory_and_the_token_to_a_capture() {
    // The opt-out, and the proof that the capture above could see them.
    let cluster = Cluster::new();
    let (flows, _, report) = captured_migration(&cluster, false);
    assert!(report["encryption"].is_null(), "{report}");
    assert!(flows.contain(MARKER.as_bytes()));
    assert!(flows.contain(&cluster.token.0));
}

#[test]
fn each_side_refuses_a_peer_that_is_not_the_host_it_expects() {
    let cluster = Cluster::new();
    let source = source();

    // The sender expects hostC at the target; hostB answers.
    let (target, url) = cluster.target(true, "hostA");
    let sent = cluster.send(&source, &url, true, "hostC");
    assert_eq!(sent.code, Some(1), "refused, rolled back: {}", sent.stderr);
    assert!(sent.stderr.contains("TLS handshake failed"), "{}", sent.stderr);
    drop(target);

    // The target expects its VM from hostC; hostA sends.
    let (target, url) = cluster.target(true, "hostC");
    let sent = cluster.send(&source, &url, true, "hostB");
    assert_eq!(sent.code, Some(1), "{}", sent.stderr);
    assert!(
        sent.stderr
            .contains("not authenticated: the source presented the certificate of host hostA, not host hostC's"),
        "{}",
        sent.stderr
    );
    drop(target);

    // A plaintext sender to a TLS target is told so.
    let (target, url) = cluster.target(true, "hostA");
    let sent = cluster.send(&source, &url, false, "hostB");
    assert_eq!(sent.code, Some(1), "{}", sent.stderr);
    assert!(sent.stderr.contains("takes TLS streams only"), "{}", sent.stderr);

    // The VM ran on through all of it, and still moves to the right host.
    let before = source.heartbeats().last().map_or(0, common::Heartbeat::seq);
    source.wait_for_heartbeat(BOOT_TIMEOUT, |h| h.seq() > before);
    let sent = cluster.send(&source, &url, true, "hostB");
    assert_eq!(sent.code, Some(0), "{}", sent.stderr);
    target.wait_for_heartbeat(BOOT_TIMEOUT, |_| true);
}

#[test]
fn a_lab_migration_between_agents_shows_no_guest_memory_to_a_capture() {
    // Agents use TLS with nothing configured: the lab's defaults.
    let lab = Lab::up_hosts(2, &[]);
    lab.create("vm1", "hostA", "256M", &format!("hb=50 fill=32M note={MARKER}"));
    lab.wait_filled("vm1");
    let flows = {
        let _alone = CAPTURING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let capture = Capture::start();
        let out = lab.ok(&["migrate", "vm1", "hostB", "--json"]);
        let flows = capture.stop();
        assert!(out.contains(r#""encryption":"TLS13_AES_128_GCM_SHA256""#), "{out}");
        flows
    };
    assert_eq!((flows.dropped, flows.missing), (0, 0), "the capture lost nothing");
    assert!(
        flows.bytes() >= 32 << 20,
        "the capture holds the migration: {} bytes",
        flows.bytes()
    );
    assert!(
        !flows.contain(MARKER.as_bytes()),
        "guest memory is not readable on the link"
    );
    assert_eq!(lab.vm("vm1")["host"], "hostB");
}
