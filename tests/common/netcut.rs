//! Cutting links for tests: nftables rules that drop packets silently, the
//! way a pulled cable does (no reset, no refusal: the peer hears nothing),
//! until the cut is dropped. Each cut is its own table, so cuts of different
//! links are independent. On loopback every packet passes the output hook,
//! so one drop there cuts a direction.
//!
//! The tables are kernel state: they outlive a test process that is killed
//! before its cuts drop (a bench stopped by hand, a machine's session ended
//! mid-run), and would then cut the links of every lab after it. So a table
//! is named after the process that made it, its pid and start time, and
//! [`sweep_stale`] deletes those whose process is gone.

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

/// The prefix of every cut's table name: `vmigcut_PID_START_N`.
const PREFIX: &str = "vmigcut_";

impl Cut {
    pub fn new(flows: &[Flow]) -> Self {
        let pid = std::process::id();
        let start = start_time(pid).expect("this process has a start time");
        let table = format!("{PREFIX}{pid}_{start}_{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let mut script =
            format!("add table inet {table}\nadd chain inet {table} out {{ type filter hook output priority 0; }}\n");
        for flow in flows {
            script.push_str(&format!("add rule inet {table} out {}\n", flow.rule()));
        }
        nft(&["-f", "-"], Some(&script));
        Self { table }
    }

    /// The nftables table that holds this cut.
    pub fn table(&self) -> &str {
        &self.table
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

/// Deletes the cuts left by processes that have ended (a pid that is now
/// another process's has another start time). Does nothing where nft is
/// missing: there can be no cuts there.
pub fn sweep_stale() {
    let Ok(out) = Command::new("nft").args(["list", "tables"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // Also the tables of this module's first naming, `vmigcutPID_N`.
        let Some(table) = line.strip_prefix("table inet ").filter(|t| t.starts_with("vmigcut")) else {
            continue;
        };
        let mut fields = table.trim_start_matches("vmigcut").trim_start_matches('_').split('_');
        let pid = fields.next().and_then(|p| p.parse::<u32>().ok());
        let start = fields.next().and_then(|s| s.parse::<u64>().ok());
        let alive = match (pid, start, table.starts_with(PREFIX)) {
            (Some(pid), Some(start), true) => start_time(pid) == Some(start),
            _ => false,
        };
        if !alive {
            nft(&["delete", "table", "inet", table], None);
        }
    }
}

/// When process `pid` started, in clock ticks after boot (`/proc/PID/stat`'s
/// 22nd field), or None when there is no such process.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// True when this machine can cut links.
pub fn available() -> bool {
    Command::new("nft")
        .args(["list", "tables"])
        .output()
        .is_ok_and(|out| out.status.success())
}
