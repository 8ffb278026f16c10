//! The local lab: several agents on this machine, each a host with its own
//! state directory and certificate, an inventory that plain `vmig` commands
//! find, and demo VMs running the test guest. Where the kernel allows, each
//! host is a network namespace on a shared switch ([`netns`]) and the VMs
//! have network cards; otherwise each host is a loopback address.

pub mod netns;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use vmig_backend::agent::AgentConfig;
use vmig_backend::agent::config::{CpuConfig, Encryption, Limits};
use vmig_backend::agent::storage::StorageRoot;
use vmig_backend::agent::vmm::{Record, alive, kill};
use vmig_backend::api::{HostFacts, Request, VmSpec};
use vmig_backend::client::Client;
use vmig_backend::migration::Timeouts;
use vmig_backend::pki::{self, Identity, Role};

use self::netns::LabNet;
use crate::inventory::{HostEntry, Inventory};

/// How long an agent may take to answer after it was started.
const AGENT_START: Duration = Duration::from_secs(20);
/// Each demo VM's disk (sparse), on the shared storage.
const DEMO_DISK: u64 = 64 << 20;
/// The CD/DVD medium every demo VM has in its drive, on the shared storage.
pub const DEMO_MEDIUM: &str = "tools.iso";
/// The demo guests write and check their disks, and read their medium, gently.
const DEMO_DISK_WORKLOAD: &str = "disk=all disk_rate=2";

/// What `lab up` builds.
#[derive(Debug, Clone)]
pub struct LabOptions {
    pub hosts: usize,
    pub vms: usize,
    /// The demo VMs' memory and test-guest command line.
    pub vm_memory: String,
    pub vm_cmdline: String,
    /// Migration cost limit per host (None: the agent's default).
    pub max_migration_cost: Option<u32>,
    /// The memory each host gives its VMs.
    pub memory_per_host: String,
    /// The agents' migration timeouts.
    pub timeouts: Timeouts,
    /// Migrations the shared storage takes at once (None: the default).
    pub storage_migrations: Option<u32>,
    pub network: LabNetwork,
    /// The agents' `migration_encryption` (TLS unless told `off`).
    pub migration_encryption: Encryption,
}

/// How the lab's hosts are networked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabNetwork {
    /// Network namespaces where this machine allows them, else loopback.
    Auto,
    /// Network namespaces, or fail.
    Namespaces,
    /// Loopback addresses of this namespace; VMs have no network.
    Loopback,
}

impl Default for LabOptions {
    fn default() -> Self {
        Self {
            hosts: 3,
            vms: 2,
            vm_memory: "1G".into(),
            vm_cmdline: "fill=768M dirty=64M rate=100 hb=1000".into(),
            max_migration_cost: None,
            memory_per_host: "6G".into(),
            timeouts: Timeouts::default(),
            storage_migrations: None,
            network: LabNetwork::Auto,
            migration_encryption: Encryption::Tls,
        }
    }
}

/// The lab's hosts are hostA, hostB, ...
pub fn host_name(index: usize) -> String {
    format!("host{}", (b'A' + (index % 26) as u8) as char)
}

/// How one lab host differs from the others, so that every precheck rule
/// can be tripped on one machine. hostA..hostC are alike (each its own
/// chassis); then hostD shares hostA's chassis over a 1 GbE link, hostE's
/// management network is IPv6, hostF lacks the shared storage root and a
/// bridge for the VMs' network, and
/// hostG hides a CPU feature and offers no performance counters. Later
/// hosts are alike again.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Profile {
    chassis: String,
    link_speed_mbps: u64,
    ipv6: bool,
    shared_storage: bool,
    hide_cpu: Vec<String>,
    pmu: bool,
    /// Has a bridge for the VMs' network (in a lab of namespaces).
    vm_network: bool,
}

/// Features hostG may hide (none that the test guest needs), in order of
/// preference; it hides the first this machine's KVM offers.
const HIDEABLE: [&str; 6] = ["gfni", "clwb", "clflushopt", "avx2", "sse4_2", "popcnt"];

/// The CPU feature hostG hides: one this machine's KVM offers its guests
/// (so that a VM from another host trips `cpu.features` there).
pub fn hidden_feature() -> Option<String> {
    let kvm = vmig_backend::vmm::open_kvm().ok()?;
    let supported = vmig_backend::vmm::cpuid::supported(&kvm).ok()?;
    let offered = vmig_backend::vmm::cpuid::feature_names(supported.as_slice());
    HIDEABLE
        .iter()
        .find(|f| offered.iter().any(|o| o == *f))
        .map(|f| (*f).to_string())
}

fn profile(index: usize) -> Profile {
    let standard = Profile {
        chassis: format!("lab-chassis-{}", index + 1),
        link_speed_mbps: 10_000,
        ipv6: false,
        shared_storage: true,
        hide_cpu: Vec::new(),
        pmu: true,
        vm_network: true,
    };
    match index {
        3 => Profile {
            chassis: "lab-chassis-1".into(),
            link_speed_mbps: 1_000,
            ..standard
        },
        4 => Profile { ipv6: true, ..standard },
        5 => Profile {
            shared_storage: false,
            vm_network: false,
            ..standard
        },
        6 => Profile {
            hide_cpu: hidden_feature().into_iter().collect(),
            pmu: false,
            ..standard
        },
        _ => standard,
    }
}

/// Whether demo VMs go on host `index`: the hosts that differ are left free.
fn holds_demo_vms(index: usize) -> bool {
    !(3..=6).contains(&index)
}

/// Each host gets its own loopback address, 127.0.1.1, 127.0.1.2, ...;
/// an IPv6 host gets ::1 (its own port).
fn host_ip(index: usize) -> IpAddr {
    if profile(index).ipv6 {
        return IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);
    }
    IpAddr::V4(Ipv4Addr::new(127, 0, 1, (index + 1) as u8))
}

fn free_port(ip: IpAddr) -> Result<u16> {
    let listener = TcpListener::bind(SocketAddr::new(ip, 0)).with_context(|| format!("cannot bind {ip}"))?;
    Ok(listener.local_addr()?.port())
}

/// The lab's files under `dir`.
#[derive(Debug, Clone)]
pub struct Lab {
    pub dir: PathBuf,
}

impl Lab {
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf() }
    }

    pub fn inventory_path(&self) -> PathBuf {
        self.dir.join("vmig.toml")
    }

    fn pki_dir(&self) -> PathBuf {
        self.dir.join("pki")
    }

    fn host_dir(&self, name: &str) -> PathBuf {
        self.dir.join("hosts").join(name)
    }

    /// The lab's network of namespaces, when it has one.
    pub fn net(&self) -> Option<LabNet> {
        LabNet::load(&self.dir)
    }

    /// The storage every host but hostF mounts: the demo VMs' disks and media.
    pub fn shared_storage(&self) -> PathBuf {
        self.dir.join("storage")
    }

    /// Host `name`'s own storage, which no other host reaches.
    pub fn local_storage(&self, name: &str) -> PathBuf {
        self.host_dir(name).join("local")
    }

    fn host_names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.join("hosts"))
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    fn agent_pid(&self, name: &str) -> Option<u32> {
        let text = std::fs::read_to_string(self.host_dir(name).join("agent.pid")).ok()?;
        text.trim().parse().ok().filter(|pid| is_vmig(*pid))
    }

    /// Brings the lab up: creates it, or restarts the agents of an existing
    /// one that stopped (they adopt their VMs). Returns the hosts started.
    pub fn up(&self, options: &LabOptions, say: &mut dyn FnMut(&str)) -> Result<Vec<String>> {
        if options.hosts == 0 || options.hosts > 26 {
            bail!("--hosts: {} is not between 1 and 26", options.hosts);
        }
        let exists = self.inventory_path().is_file();
        if !exists {
            // Half a lab is no use: what was made goes again.
            if let Err(e) = self.create(options, say) {
                let _ = self.down();
                return Err(e);
            }
        }
        let mut started = Vec::new();
        for name in self.host_names() {
            if self.agent_pid(&name).is_none() {
                self.start_agent(&name)?;
                started.push(name);
            }
        }
        let inventory = Inventory::load(&self.inventory_path())?;
        let tls = pki::client_config(&inventory.operator)?;
        for host in &inventory.hosts {
            wait_for_agent(host, &tls, &self.host_dir(&host.name).join("agent.log"))?;
        }
        if !started.is_empty() {
            say(&format!("agents up: {}", started.join(", ")));
        }
        if !exists {
            let homes: Vec<&HostEntry> = inventory
                .hosts
                .iter()
                .enumerate()
                .filter(|(i, _)| holds_demo_vms(*i))
                .map(|(_, h)| h)
                .collect();
            let medium = self.shared_storage().join(DEMO_MEDIUM);
            for i in 0..options.vms {
                let host = homes[i % homes.len()];
                let name = format!("vm{}", i + 1);
                let disk = self.shared_storage().join(format!("{name}.img"));
                std::fs::File::create(&disk)
                    .and_then(|f| f.set_len(DEMO_DISK))
                    .with_context(|| format!("cannot create {}", disk.display()))?;
                let spec = VmSpec {
                    name,
                    vcpus: 1,
                    memory: options.vm_memory.clone(),
                    kernel: "builtin:testguest".into(),
                    initrd: None,
                    cmdline: format!("{} {DEMO_DISK_WORKLOAD}", options.vm_cmdline),
                    disks: vec![vmig_backend::api::DiskSpec {
                        path: disk.display().to_string(),
                        size: None,
                    }],
                    cdrom: Some(vmig_backend::api::CdromSpec {
                        path: medium.display().to_string(),
                        connected: true,
                    }),
                    ..VmSpec::default()
                };
                let mut spec = spec;
                if let Some(net) = self.net() {
                    spec.nics = vec![vmig_backend::api::NicSpec {
                        network: netns::NETWORK.into(),
                        mac: None,
                    }];
                    spec.cmdline.push_str(&format!(" ip={}/24", net.vm_ip(i)));
                }
                let client = Client::new(&host.name, &host.address, Arc::clone(&tls));
                client
                    .call::<serde_json::Value>(Request::CreateVm { spec, start: true })
                    .with_context(|| format!("cannot create vm{} on {}", i + 1, host.name))?;
                say(&format!("vm{} runs on {}", i + 1, host.name));
            }
        }
        Ok(started)
    }

    fn create(&self, options: &LabOptions, say: &mut dyn FnMut(&str)) -> Result<()> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("cannot create {}", self.dir.display()))?;
        let pki_dir = self.pki_dir();
        pki::init_ca(&pki_dir, "vmig-lab")?;
        let operator = pki::issue(&pki_dir, Role::Operator, "operator", &[], &pki_dir)?;
        let shared = self.shared_storage();
        std::fs::create_dir_all(&shared).with_context(|| format!("cannot create {}", shared.display()))?;
        vmig_backend::testguest::write_medium(&shared.join(DEMO_MEDIUM), 4 << 20)
            .with_context(|| format!("cannot write {}", shared.join(DEMO_MEDIUM).display()))?;
        let net = match (options.network, LabNet::available()) {
            (LabNetwork::Loopback, _) => None,
            (_, Ok(())) => {
                let net = LabNet::create()?;
                net.save(&self.dir)?;
                say(&format!(
                    "network: each host a network namespace on switch {} (10.77.{}.0/24, fd77:0:0:{}::/64; \
                     the operator is 10.77.{}.254, a client namespace {} is 10.77.{}.250)",
                    net.switch(),
                    net.index,
                    net.index,
                    net.index,
                    net.client_namespace(),
                    net.index
                ));
                Some(net)
            }
            (LabNetwork::Namespaces, Err(e)) => bail!("cannot build the lab's network namespaces: {e}"),
            (LabNetwork::Auto, Err(e)) => {
                say(&format!(
                    "network: loopback addresses, VMs without network cards (no network namespaces here: {e})"
                ));
                None
            }
        };
        let mut hosts = Vec::new();
        for index in 0..options.hosts {
            let name = host_name(index);
            let profile = profile(index);
            let ip = match &net {
                Some(net) => {
                    net.add_host(&name, index)?;
                    net.api_ip(index, profile.ipv6)
                }
                None => host_ip(index),
            };
            let dir = self.host_dir(&name);
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let local = self.local_storage(&name);
            std::fs::create_dir_all(&local).with_context(|| format!("cannot create {}", local.display()))?;
            let mut storage = vec![StorageRoot {
                name: "local".into(),
                path: local,
                shared: false,
                max_migrations: None,
            }];
            if profile.shared_storage {
                storage.push(StorageRoot {
                    name: "shared".into(),
                    path: shared.clone(),
                    shared: true,
                    max_migrations: options.storage_migrations,
                });
            }
            let identity: Identity = pki::issue(&pki_dir, Role::Host, &name, &[ip.to_string()], &dir)?;
            let port = match net {
                Some(_) => netns::API_PORT,
                None => free_port(ip)?,
            };
            let address = SocketAddr::new(ip, port);
            let config = AgentConfig {
                name: name.clone(),
                api_address: address,
                migration_address: Some(ip),
                state_dir: dir.join("state"),
                chassis: Some(profile.chassis),
                link_speed_mbps: profile.link_speed_mbps,
                // The lab's hosts share one machine's memory: each is given
                // a share, so that free memory differs by what each holds.
                memory_for_vms: Some(options.memory_per_host.clone()),
                networks: if profile.vm_network {
                    vec![netns::NETWORK.into()]
                } else {
                    Vec::new()
                },
                bridges: match net {
                    Some(_) if profile.vm_network => {
                        [(netns::NETWORK.to_string(), netns::HOST_BRIDGE.to_string())].into()
                    }
                    _ => Default::default(),
                },
                storage,
                tls: identity,
                migration_encryption: options.migration_encryption,
                cpu: CpuConfig {
                    hide: profile.hide_cpu,
                    pmu: profile.pmu,
                },
                limits: Limits {
                    max_migration_cost: options.max_migration_cost,
                    migration_cost: None,
                    max_api_connections: None,
                },
                timeouts: options.timeouts,
            };
            let text = toml::to_string(&config).context("cannot write an agent config")?;
            std::fs::write(dir.join("agent.toml"), text)?;
            hosts.push(HostEntry {
                name,
                address: address.to_string(),
            });
        }
        let inventory = Inventory {
            operator,
            hosts,
            path: PathBuf::new(),
        };
        let text = toml::to_string(&inventory).context("cannot write the inventory")?;
        std::fs::write(self.inventory_path(), text)?;
        say(&format!(
            "lab created in {} ({} hosts)",
            self.dir.display(),
            options.hosts
        ));
        Ok(())
    }

    fn start_agent(&self, name: &str) -> Result<()> {
        let dir = self.host_dir(name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("agent.log"))?;
        let mut command = Command::new(std::env::current_exe()?);
        if let Some(net) = self.net() {
            netns::enter(&mut command, &net.namespace(name))?;
        }
        let child = command
            .arg("agent")
            .arg("--config")
            .arg(dir.join("agent.toml"))
            .args(["--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start the agent of {name}"))?;
        std::fs::write(dir.join("agent.pid"), child.id().to_string())?;
        Ok(())
    }

    /// Ends every VM and agent of the lab and removes its files.
    pub fn down(&self) -> Result<usize> {
        let mut ended = 0;
        for name in self.host_names() {
            if let Some(pid) = self.agent_pid(&name) {
                kill(pid);
                ended += 1;
            }
            let vms = self.host_dir(&name).join("state/vms");
            for entry in std::fs::read_dir(&vms).into_iter().flatten().flatten() {
                let record = std::fs::read_to_string(entry.path().join("vm.json"))
                    .ok()
                    .and_then(|t| serde_json::from_str::<Record>(&t).ok());
                if let Some(pid) = record.and_then(|r| r.pid).filter(|p| is_vmig(*p)) {
                    kill(pid);
                    ended += 1;
                }
            }
        }
        if let Some(net) = self.net() {
            net.destroy();
        }
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir).with_context(|| format!("cannot remove {}", self.dir.display()))?;
        }
        Ok(ended)
    }
}

/// True when `pid` runs vmig (not a reused pid of something else); the
/// binary may have been rebuilt since, so its name is what is compared.
fn is_vmig(pid: u32) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let name = Path::new(std::ffi::OsStr::from_bytes(argv0)).file_name();
    alive(pid) && name.is_some_and(|n| n.to_string_lossy().starts_with("vmig"))
}

fn wait_for_agent(host: &HostEntry, tls: &Arc<rustls::ClientConfig>, log: &Path) -> Result<()> {
    let client = Client::new(&host.name, &host.address, Arc::clone(tls));
    let deadline = Instant::now() + AGENT_START;
    loop {
        match client.call::<HostFacts>(Request::Host) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                let tail = std::fs::read_to_string(log).unwrap_or_default();
                bail!("the agent of {} did not come up: {e:#}\n{}", host.name, tail.trim());
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}
