//! The lab's network: each host a network namespace with its own addresses
//! (IPv4, and IPv6), a bridge `br0` that its VMs' cards join and that
//! carries the host's own address, uplinked by a veth pair to one switch
//! bridge in this machine's namespace; and a client namespace on the switch
//! to reach the VMs from outside any host. The operator (this namespace)
//! reaches the agents through the switch's own address.
//!
//! ```text
//!            this namespace: switch bridge vmiglabN (10.77.N.254, fd77:0:0:N::fe)
//!   ┌─────────────┬───────────────┬── ... ──┬──────────────┐
//! vmiglabN-A    vmiglabN-B                     vmiglabN-c
//!   │ (veth)      │                             │
//! ns vmiglabN-hostA: uplink → br0 (10.77.N.1)   ns vmiglabN-client: uplink (10.77.N.250)
//!   TAPs of the VMs there join br0
//! ```
//!
//! Everything is made with iproute2 (`ip`), as an operator would; a lab
//! claims its number N by creating its switch (a name that exists already
//! is another lab's), so several labs live side by side.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// The bridge in each host's namespace.
pub const HOST_BRIDGE: &str = "br0";
/// The VM network's name in the agents' configs.
pub const NETWORK: &str = "lab";
/// Each agent's API port (each namespace has its own ports).
pub const API_PORT: u16 = 7070;
/// Labs one machine holds at once.
const MAX_LABS: u8 = 200;

/// A lab's network, as its directory records it (`network.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabNet {
    pub index: u8,
}

impl LabNet {
    /// Whether this machine lets us make namespaces, bridges and veths
    /// (root, or CAP_NET_ADMIN, and iproute2): a throwaway bridge says.
    pub fn available() -> Result<(), String> {
        let probe = format!("vmigprobe{}", std::process::id() % 100_000);
        match ip(&["link", "add", &probe, "type", "bridge"]) {
            Ok(()) => {
                let _ = ip(&["link", "del", &probe]);
                Ok(())
            }
            Err(e) => Err(format!("{e:#}")),
        }
    }

    /// Claims the first free lab number and builds its switch and client.
    pub fn create() -> Result<LabNet> {
        for index in 0..MAX_LABS {
            let net = LabNet { index };
            let mac = format!("02:77:{index:02x}:00:00:fe");
            if ip(&["link", "add", &net.switch(), "address", &mac, "type", "bridge"]).is_err() {
                continue;
            }
            // A subnet this machine already routes is someone else's.
            if net.subnet_in_use() {
                let _ = ip(&["link", "del", &net.switch()]);
                continue;
            }
            // Namespaces and ports of this number without their switch are
            // what a lab that was killed half-built left, or one whose
            // namespaces the kernel is still tearing down: the number is
            // ours now.
            net.remove_ports();
            net.remove_namespaces();
            net.build_switch()
                .with_context(|| format!("cannot build the lab switch {}", net.switch()))?;
            return Ok(net);
        }
        bail!("no free lab network: {MAX_LABS} labs exist on this machine")
    }

    pub fn load(dir: &Path) -> Option<LabNet> {
        let text = std::fs::read_to_string(dir.join("network.toml")).ok()?;
        toml::from_str(&text).ok()
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::write(dir.join("network.toml"), toml::to_string(self)?)?;
        Ok(())
    }

    /// The switch bridge, in this namespace.
    pub fn switch(&self) -> String {
        format!("vmiglab{}", self.index)
    }

    /// Host `index`'s namespace.
    pub fn namespace(&self, host: &str) -> String {
        format!("vmiglab{}-{host}", self.index)
    }

    pub fn client_namespace(&self) -> String {
        self.namespace("client")
    }

    /// The switch's port towards host `index` (its FDB names it).
    pub fn switch_port(&self, host_index: usize) -> String {
        format!("vmiglab{}-{}", self.index, (b'A' + host_index as u8) as char)
    }

    fn client_port(&self) -> String {
        format!("vmiglab{}-c", self.index)
    }

    pub fn host_ip(&self, host_index: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.index, host_index as u8 + 1)
    }

    pub fn host_ip6(&self, host_index: usize) -> Ipv6Addr {
        Ipv6Addr::new(0xfd77, 0, 0, u16::from(self.index), 0, 0, 0, host_index as u16 + 1)
    }

    /// The operator's address on the switch.
    pub fn switch_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.index, 254)
    }

    pub fn client_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.index, 250)
    }

    /// The address the lab gives its `n`th VM (from 0): 10.77.N.101, ...
    pub fn vm_ip(&self, n: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.index, 101 + (n % 140) as u8)
    }

    fn subnet_in_use(&self) -> bool {
        let subnet = format!("10.77.{}.0/24", self.index);
        Command::new("ip")
            .args(["-4", "route", "show", "match", &subnet])
            .output()
            .map(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .any(|line| line.starts_with(&subnet) || line.contains(&format!("10.77.{}.", self.index)))
            })
            .unwrap_or(false)
    }

    fn build_switch(&self) -> Result<()> {
        let switch = self.switch();
        ip(&["link", "set", &switch, "up"])?;
        ip(&["addr", "add", &format!("{}/24", self.switch_ip()), "dev", &switch])?;
        let ip6 = Ipv6Addr::new(0xfd77, 0, 0, u16::from(self.index), 0, 0, 0, 0xfe);
        ip(&["addr", "add", &format!("{ip6}/64"), "dev", &switch, "nodad"])?;
        let client = self.client_namespace();
        ip(&["netns", "add", &client])?;
        self.uplink(&client, &self.client_port())?;
        ip(&[
            "-n",
            &client,
            "addr",
            "add",
            &format!("{}/24", self.client_ip()),
            "dev",
            "uplink",
        ])?;
        ip(&["-n", &client, "link", "set", "uplink", "up"])?;
        Ok(())
    }

    /// A veth pair from the switch (`port`, up) into `namespace` (`uplink`).
    fn uplink(&self, namespace: &str, port: &str) -> Result<()> {
        let inner = format!("{port}u");
        ip(&["link", "add", port, "type", "veth", "peer", "name", &inner])?;
        ip(&["link", "set", &inner, "netns", namespace])?;
        ip(&["-n", namespace, "link", "set", &inner, "name", "uplink"])?;
        ip(&["-n", namespace, "link", "set", "lo", "up"])?;
        ip(&["link", "set", port, "master", &self.switch(), "up"])?;
        Ok(())
    }

    /// Host `index`'s namespace, its bridge and addresses.
    pub fn add_host(&self, name: &str, host_index: usize) -> Result<()> {
        let ns = self.namespace(name);
        ip(&["netns", "add", &ns])?;
        self.uplink(&ns, &self.switch_port(host_index))?;
        // A bridge takes the lowest MAC of its ports unless it is given
        // one: the host's address would change as VMs come and go.
        let mac = format!("02:77:{:02x}:00:00:{:02x}", self.index, host_index + 1);
        ip(&["-n", &ns, "link", "add", HOST_BRIDGE, "address", &mac, "type", "bridge"])?;
        ip(&["-n", &ns, "link", "set", "uplink", "master", HOST_BRIDGE, "up"])?;
        ip(&["-n", &ns, "link", "set", HOST_BRIDGE, "up"])?;
        let v4 = format!("{}/24", self.host_ip(host_index));
        ip(&["-n", &ns, "addr", "add", &v4, "dev", HOST_BRIDGE])?;
        let v6 = format!("{}/64", self.host_ip6(host_index));
        ip(&["-n", &ns, "addr", "add", &v6, "dev", HOST_BRIDGE, "nodad"])?;
        Ok(())
    }

    /// Removes the switch's ports, the namespaces and the switch. The
    /// ports go first and explicitly: a namespace's veths go with it only
    /// when the kernel gets round to it, and a lab made at once after
    /// would find their names taken.
    pub fn destroy(&self) {
        self.remove_ports();
        self.remove_namespaces();
        let _ = ip(&["link", "del", &self.switch()]);
    }

    /// Every interface here named for this lab number's ports.
    fn remove_ports(&self) {
        for name in self.named_in("/sys/class/net") {
            let _ = ip(&["link", "del", &name]);
        }
    }

    /// Every namespace named for this lab number.
    fn remove_namespaces(&self) {
        for name in self.named_in("/run/netns") {
            let _ = ip(&["netns", "del", &name]);
        }
    }

    /// The entries of `dir` whose names begin with this lab number's prefix.
    fn named_in(&self, dir: &str) -> Vec<String> {
        let prefix = format!("vmiglab{}-", self.index);
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|name| name.starts_with(&prefix))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// An API address of host `index`: its IPv4 address, or IPv6.
    pub fn api_ip(&self, host_index: usize, ipv6: bool) -> IpAddr {
        if ipv6 {
            IpAddr::V6(self.host_ip6(host_index))
        } else {
            IpAddr::V4(self.host_ip(host_index))
        }
    }
}

/// Runs `ip ARGS`; its stderr is the error.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run ip (install iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Makes `command` run in network namespace `name` (`/run/netns/NAME`).
pub fn enter(command: &mut Command, name: &str) -> Result<()> {
    use std::os::fd::OwnedFd;
    use std::os::unix::process::CommandExt;
    let file = std::fs::File::open(format!("/run/netns/{name}"))
        .with_context(|| format!("network namespace {name} is missing"))?;
    let fd: OwnedFd = file.into();
    // setns(2) on a descriptor the child inherited; nothing else is touched.
    let enter = move || Ok(nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)?);
    // SAFETY: the closure only makes one async-signal-safe system call
    // between fork and exec.
    unsafe {
        command.pre_exec(enter);
    }
    Ok(())
}
