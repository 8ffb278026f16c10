//! Cutting links for tests: nftables rules that drop packets silently, the
//! way a pulled cable does (no reset, no refusal: the peer hears nothing),
//! until the cut is dropped. Each cut is its own table, so cuts of different
//! links are independent. On loopback every packet passes the output hook,
//! so one drop there cuts a direction.

use std::net::IpAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// Packets to drop: every field that is set must match.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flow {
    pub saddr: Option<IpAddr>,
    pub daddr: Option<IpAddr>,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
}

impl Flow {
    /// Both directions of TCP to and from `port` on `ip`.
    pub fn port(ip: IpAddr, port: u16) -> [Flow; 2] {
        [
            Flow {
                daddr: Some(ip),
                dport: Some(port),
                ..Flow::default()
            },
            Flow {
                saddr: Some(ip),
                sport: Some(port),
                ..Flow::default()
            },
        ]
    }

    /// Both directions of connections that `ip` opens to `port` on `peer`.
    pub fn from_to(ip: IpAddr, peer: IpAddr, port: u16) -> [Flow; 2] {
        [
            Flow {
                saddr: Some(ip),
                daddr: Some(peer),
                dport: Some(port),
                ..Flow::default()
            },
            Flow {
                saddr: Some(peer),
                daddr: Some(ip),
                sport: Some(port),
                ..Flow::default()
            },
        ]
    }

    fn rule(&self) -> String {
        let mut rule = String::new();
        let family = |ip: &IpAddr| if ip.is_ipv4() { "ip" } else { "ip6" };
        if let Some(ip) = &self.saddr {
            rule.push_str(&format!("{} saddr {ip} ", family(ip)));
        }
        if let Some(ip) = &self.daddr {
            rule.push_str(&format!("{} daddr {ip} ", family(ip)));
        }
        rule.push_str("meta l4proto tcp ");
        if let Some(port) = self.sport {
            rule.push_str(&format!("tcp sport {port} "));
        }
        if let Some(port) = self.dport {
            rule.push_str(&format!("tcp dport {port} "));
        }
        rule.push_str("drop");
        rule
    }
}

/// A cut in force; dropping it heals the link.
#[derive(Debug)]
pub struct Cut {
    table: String,
}

static NEXT: AtomicU64 = AtomicU64::new(0);

impl Cut {
    pub fn new(flows: &[Flow]) -> Self {
        let table = format!("vmigcut{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let mut script =
            format!("add table inet {table}\nadd chain inet {table} out {{ type filter hook output priority 0; }}\n");
        for flow in flows {
            script.push_str(&format!("add rule inet {table} out {}\n", flow.rule()));
        }
        nft(&["-f", "-"], Some(&script));
        Self { table }
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        nft(&["delete", "table", "inet", &self.table], None);
    }
}

fn nft(args: &[&str], input: Option<&str>) {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("nft is needed to cut links (scripts/test-deps installs it)");
    if let Some(input) = input {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "nft {args:?} failed");
}

/// True when this machine can cut links.
pub fn available() -> bool {
    Command::new("nft")
        .args(["list", "tables"])
        .output()
        .is_ok_and(|out| out.status.success())
}
