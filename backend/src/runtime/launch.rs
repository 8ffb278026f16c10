//! How a VMM process is started: the `vmig vm run` command line, built in
//! one place. The agent starts its VMMs with it; the command line's parser
//! (`src/cli/vm/run.rs`) is tested against it, so the two cannot drift.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::migration::Timeouts;
use crate::vmm::devices::virtio::{Bridges, DiskConfig, DiskKind, NicConfig};

/// One VMM process to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The VM's name, shown to migration peers.
    pub name: String,
    pub control: Option<PathBuf>,
    pub console: Option<PathBuf>,
    /// The record the process keeps for its agent.
    pub record: Option<PathBuf>,
    /// This host's bridge for each network its VMs' cards may be on.
    pub bridges: Bridges,
    pub start: LaunchStart,
}

/// What the process starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaunchStart {
    /// Boot a kernel.
    Boot {
        kernel: String,
        initrd: Option<String>,
        cmdline: String,
        /// Guest memory, as a size ("1G").
        memory: String,
        vcpus: u8,
        /// Its drives, by slot.
        disks: Vec<DiskConfig>,
        /// Its network cards, in the slots after the drives.
        nics: Vec<NicConfig>,
        /// Virtual performance counters for the guest.
        pmu: bool,
        /// CPU features the host hides from its guests.
        hide_cpu: Vec<String>,
    },
    /// Wait for a VM by live migration.
    Incoming {
        /// `tcp:HOST:PORT` to listen on (port 0: any free port).
        listen: String,
        /// The migration token the sender must present.
        token_file: Option<PathBuf>,
        /// The agents' id of the migration.
        migration_id: Option<String>,
        timeouts: Timeouts,
        /// The images the arriving VM may open (the agent checked them);
        /// a VM that names any other is refused.
        allowed_disks: Vec<PathBuf>,
        /// CPU features the host hides from its guests: a VM that uses one is refused.
        hide_cpu: Vec<String>,
        /// TLS streams only, from the source host it names; none: plaintext.
        tls: Option<crate::migration::tls::TlsPeer>,
    },
}

/// A drive as `--drive` takes it: `disk:PATH`, `cdrom:PATH` or
/// `cdrom-ejected:PATH` (the drive remembers the medium it would reconnect).
pub fn drive_arg(disk: &DiskConfig) -> String {
    let kind = match (disk.kind, disk.connected) {
        (DiskKind::Disk, _) => "disk",
        (DiskKind::Cdrom, true) => "cdrom",
        (DiskKind::Cdrom, false) => "cdrom-ejected",
    };
    format!("{kind}:{}", disk.path.display())
}

/// A card as `--nic` takes it: `NETWORK=MAC`.
pub fn nic_arg(nic: &NicConfig) -> String {
    format!("{}={}", nic.network, nic.mac)
}

/// Reads a `--nic` value: `NETWORK=MAC`, or `NETWORK` alone for an
/// address derived from `seed` (the VM's name and the card's slot).
pub fn parse_nic(value: &str, seed: &str) -> Result<NicConfig, String> {
    let (network, mac) = match value.split_once('=') {
        Some((network, mac)) => (network, mac.parse()?),
        None => (value, crate::vmm::devices::virtio::Mac::derived(seed)),
    };
    if network.is_empty() {
        return Err(format!("{value:?} names no network"));
    }
    Ok(NicConfig {
        network: network.to_string(),
        mac,
    })
}

/// A bridge as `--bridge` takes it: `NETWORK=BRIDGE`.
pub fn parse_bridge(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((network, bridge)) if !network.is_empty() && !bridge.is_empty() => {
            Ok((network.to_string(), bridge.to_string()))
        }
        _ => Err(format!("{value:?} is not NETWORK=BRIDGE")),
    }
}

/// Reads a `--drive` value ([`drive_arg`]).
pub fn parse_drive(value: &str) -> Result<DiskConfig, String> {
    let (kind, path) = value
        .split_once(':')
        .ok_or_else(|| format!("{value:?} is not KIND:PATH (disk:, cdrom: or cdrom-ejected:)"))?;
    let (kind, connected) = match kind {
        "disk" => (DiskKind::Disk, true),
        "cdrom" => (DiskKind::Cdrom, true),
        "cdrom-ejected" => (DiskKind::Cdrom, false),
        other => return Err(format!("{other:?} is not a drive kind (disk, cdrom or cdrom-ejected)")),
    };
    if path.is_empty() {
        return Err(format!("{value:?} names no image"));
    }
    Ok(DiskConfig {
        kind,
        path: PathBuf::from(path),
        connected,
    })
}

impl Launch {
    /// The arguments after the program: `vm run ...`.
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = ["vm", "run", "--name", &self.name].map(OsString::from).to_vec();
        let mut path = |flag: &str, value: &Option<PathBuf>| {
            if let Some(value) = value {
                args.push(flag.into());
                args.push(value.into());
            }
        };
        path("--control", &self.control);
        path("--console", &self.console);
        path("--record", &self.record);
        let mut flag = |flag: &str, value: &str| {
            args.push(flag.into());
            args.push(value.into());
        };
        for (network, bridge) in &self.bridges {
            flag("--bridge", &format!("{network}={bridge}"));
        }
        match &self.start {
            LaunchStart::Boot {
                kernel,
                initrd,
                cmdline,
                memory,
                vcpus,
                disks,
                nics,
                pmu,
                hide_cpu,
            } => {
                flag("--kernel", kernel);
                flag("--memory", memory);
                flag("--vcpus", &vcpus.to_string());
                flag("--cmdline", cmdline);
                if let Some(initrd) = initrd {
                    flag("--initrd", initrd);
                }
                for disk in disks {
                    flag("--drive", &drive_arg(disk));
                }
                for nic in nics {
                    flag("--nic", &nic_arg(nic));
                }
                for name in hide_cpu {
                    flag("--hide-cpu", name);
                }
                if *pmu {
                    args.push("--pmu".into());
                }
            }
            LaunchStart::Incoming {
                listen,
                token_file,
                migration_id,
                timeouts,
                allowed_disks,
                hide_cpu,
                tls,
            } => {
                flag("--incoming", listen);
                if let Some(id) = migration_id {
                    flag("--migration-id", id);
                }
                flag("--accept-timeout", &timeouts.accept_s.to_string());
                flag("--stream-timeout", &timeouts.stream_s.to_string());
                flag("--handoff-timeout", &timeouts.handoff_s.to_string());
                if let Some(file) = token_file {
                    args.push("--token-file".into());
                    args.push(file.into());
                }
                for path in allowed_disks {
                    args.push("--allow-disk".into());
                    args.push(path.into());
                }
                for name in hide_cpu {
                    args.push("--hide-cpu".into());
                    args.push(name.into());
                }
                if let Some(tls) = tls {
                    for (name, path) in [
                        ("--tls-cert", &tls.identity.cert),
                        ("--tls-key", &tls.identity.key),
                        ("--tls-ca", &tls.identity.ca),
                    ] {
                        args.push(name.into());
                        args.push(path.into());
                    }
                    args.push("--tls-peer".into());
                    args.push(tls.peer.clone().into());
                }
            }
        }
        args
    }
}
