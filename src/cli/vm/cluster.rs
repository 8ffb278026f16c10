//! `vmig vm create|start|stop|destroy|show|cdrom`: VMs in the cluster,
//! through the agent of the host that holds them (`console`: `console.rs`).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use vmig_backend::api::{Request, VmDetail, VmInfo, VmSpec};
use vmig_backend::size::format_size;

use crate::cli::UsageError;
use crate::exit::Exit;
use crate::ops::cluster::Cluster;

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    vmig vm create --name vm4 --kernel builtin:testguest --memory 1G --vcpus 2 --cmdline 'fill=256M'\n  \
    vmig vm create --spec vm4.toml --host hostB\n\n\
    vmig vm create --name db1 --kernel builtin:testguest --disk /srv/vmig/shared/db1.img --cdrom /srv/vmig/shared/tools.iso\n\n\
    A spec file holds the same fields: name, vcpus, memory, kernel, initrd, cmdline, redundancy_group,\n\
    disks = [{ path, size }], cdrom = { path, connected }, pmu, vgpu = { profile, framebuffer },\n\
    cpu = \"host\" | \"baseline\".")]
pub struct CreateArgs {
    /// Read the VM's definition from a TOML file.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["name", "kernel"])]
    spec: Option<PathBuf>,
    /// The VM's name (unique in the cluster).
    #[arg(long, required_unless_present = "spec")]
    name: Option<String>,
    /// Kernel: a path on the host, or `builtin:testguest`.
    #[arg(long, value_name = "PATH", required_unless_present = "spec")]
    kernel: Option<String>,
    #[arg(long, value_name = "PATH")]
    initrd: Option<String>,
    #[arg(long, value_name = "STR", default_value = "")]
    cmdline: String,
    #[arg(long, value_name = "SIZE", default_value = "512M")]
    memory: String,
    #[arg(long, value_name = "N", default_value_t = 1)]
    vcpus: u8,
    /// VMs of one group must not share a chassis.
    #[arg(long, value_name = "GROUP")]
    redundancy_group: Option<String>,
    /// A read-write disk: a raw image on one of the host's storage roots (repeatable).
    #[arg(long, value_name = "PATH")]
    disk: Vec<String>,
    /// A CD/DVD drive with this ISO image as its medium.
    #[arg(long, value_name = "PATH")]
    cdrom: Option<String>,
    /// Give the guest virtual performance counters (a target needs a PMU as capable).
    #[arg(long)]
    pmu: bool,
    /// What host maintenance does with it: live (move it live), stop (shut it down, start it on
    /// return) or pin (never move it; evacuations report it).
    #[arg(long, value_name = "POLICY", default_value = "live", value_parser = ["live", "stop", "pin"])]
    maintenance: String,
    /// A network card on NETWORK (repeatable), with a MAC address derived
    /// from the VM's name unless one is given: `--nic lab` or
    /// `--nic lab=52:54:00:12:34:56`. A host runs the VM only if it has a
    /// bridge for the network.
    #[arg(long, value_name = "NETWORK[=MAC]", value_parser = parse_nic_spec)]
    nic: Vec<vmig_backend::api::NicSpec>,
    /// The CPU the guest sees: `host` (all its host's KVM offers) or
    /// `baseline` (only what every host of the cluster offers, so it can move anywhere).
    #[arg(long, value_name = "MODE", value_parser = ["host", "baseline"])]
    cpu: Option<String>,
    /// The host to create it on (default: the one with the most memory available).
    #[arg(long, value_name = "HOST")]
    host: Option<String>,
    /// Define it without booting it.
    #[arg(long)]
    no_start: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct NameArgs {
    /// The VM's name.
    name: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
#[command(
    after_help = "The medium must lie under one of the host's storage roots. A connected \
    medium on host-local storage blocks a live migration (precheck cdrom.backing): eject it first.\n\n\
    Examples:\n  vmig vm cdrom vm1 insert /srv/vmig/shared/tools.iso\n  vmig vm cdrom vm1 eject"
)]
pub struct CdromArgs {
    /// The VM's name.
    name: String,
    #[command(subcommand)]
    action: CdromAction,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum CdromAction {
    /// Put an ISO image into the VM's CD/DVD drive (the running guest sees it at once).
    Insert {
        /// The image (absolute path on the VM's host).
        file: String,
    },
    /// Take the medium out; the drive remembers it, to reconnect it later.
    Eject,
}

fn parse_nic_spec(value: &str) -> Result<vmig_backend::api::NicSpec, String> {
    let (network, mac) = match value.split_once('=') {
        Some((network, mac)) => (network, Some(mac.parse()?)),
        None => (value, None),
    };
    Ok(vmig_backend::api::NicSpec {
        network: network.to_string(),
        mac,
    })
}

fn load_spec(path: &Path) -> Result<VmSpec> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let spec: VmSpec = toml::from_str(&text).map_err(|e| {
        UsageError(format!(
            "{}: {}",
            path.display(),
            vmig_backend::agent::config::toml_error(&text, &e)
        ))
    })?;
    spec.validate()
        .map_err(|e| UsageError(format!("{}: {e}", path.display())))?;
    Ok(spec)
}

pub fn create(args: &CreateArgs, inventory: Option<&Path>) -> Result<Exit> {
    let spec = match &args.spec {
        Some(path) => load_spec(path)?,
        None => VmSpec {
            name: args.name.clone().unwrap_or_default(),
            vcpus: args.vcpus,
            memory: args.memory.clone(),
            kernel: args.kernel.clone().unwrap_or_default(),
            initrd: args.initrd.clone(),
            cmdline: args.cmdline.clone(),
            redundancy_group: args.redundancy_group.clone(),
            disks: args
                .disk
                .iter()
                .map(|path| vmig_backend::api::DiskSpec {
                    path: path.clone(),
                    size: None,
                })
                .collect(),
            cdrom: args
                .cdrom
                .clone()
                .map(|path| vmig_backend::api::CdromSpec { path, connected: true }),
            pmu: args.pmu,
            vgpu: None,
            cpu: args.cpu.clone(),
            cpu_hide: Vec::new(),
            maintenance: match args.maintenance.as_str() {
                "stop" => vmig_backend::api::Maintenance::Stop,
                "pin" => vmig_backend::api::Maintenance::Pin,
                _ => vmig_backend::api::Maintenance::Live,
            },
            nics: args.nic.clone(),
        },
    };
    spec.validate().map_err(|e| UsageError(format!("--{e}")))?;
    let cluster = Cluster::open(inventory)?;
    let info = crate::ops::create::create(&cluster, spec, args.host.as_deref(), !args.no_start)?;
    print_info(&info, args.json, "created")
}

fn print_info(info: &VmInfo, json: bool, verb: &str) -> Result<Exit> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(info)?)?;
    } else {
        writeln!(out, "{verb} {} on {}: {}", info.name, info.host, info.state)?;
    }
    Ok(Exit::Ok)
}

/// What `lifecycle` does to a VM.
#[derive(Debug, Clone, Copy)]
pub enum Lifecycle {
    Start,
    Stop,
    Destroy,
}

/// start, stop and destroy: one request to the VM's host.
pub fn lifecycle(args: &NameArgs, inventory: Option<&Path>, action: Lifecycle) -> Result<Exit> {
    let cluster = Cluster::open(inventory)?;
    let located = cluster.locate(&args.name)?;
    let client = cluster.client(&located.host);
    let name = args.name.clone();
    match action {
        Lifecycle::Start => print_info(&client.call(Request::StartVm { name })?, args.json, "started"),
        Lifecycle::Stop => print_info(&client.call(Request::StopVm { name })?, args.json, "stopped"),
        Lifecycle::Destroy => {
            client.call::<serde_json::Value>(Request::DestroyVm { name })?;
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({ "destroyed": args.name, "host": located.host.name })
                );
            } else {
                println!("destroyed {} on {}", args.name, located.host.name);
            }
            Ok(Exit::Ok)
        }
    }
}

pub fn cdrom(args: &CdromArgs, inventory: Option<&Path>) -> Result<Exit> {
    let medium = match &args.action {
        CdromAction::Insert { file } if !file.starts_with('/') => {
            return Err(UsageError(format!("{file}: the medium must be an absolute path on the VM's host")).into());
        }
        CdromAction::Insert { file } => Some(file.clone()),
        CdromAction::Eject => None,
    };
    let cluster = Cluster::open(inventory)?;
    let located = cluster.locate(&args.name)?;
    let info: VmInfo = cluster.client(&located.host).call(Request::Cdrom {
        name: args.name.clone(),
        medium: medium.clone(),
    })?;
    let what = match &medium {
        Some(file) => format!("inserted {file} into"),
        None => "ejected the medium of".to_string(),
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "cdrom": { "vm": info.name, "host": info.host, "medium": info.cdrom } })
        );
    } else {
        println!("{what} {}'s CD/DVD drive on {}", info.name, info.host);
    }
    Ok(Exit::Ok)
}

pub fn show(args: &NameArgs, inventory: Option<&Path>) -> Result<Exit> {
    let cluster = Cluster::open(inventory)?;
    let located = cluster.locate(&args.name)?;
    let detail: VmDetail = cluster.client(&located.host).call(Request::ShowVm {
        name: args.name.clone(),
    })?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&detail)?)?;
        return Ok(Exit::Ok);
    }
    let info = &detail.info;
    writeln!(out, "{} on {}: {}", info.name, info.host, info.state)?;
    writeln!(
        out,
        "  vcpus {}  memory {}  pid {}",
        info.vcpus,
        format_size(info.memory_bytes),
        info.pid.map_or("-".into(), |p| p.to_string())
    )?;
    writeln!(
        out,
        "  kernel {}  cmdline {:?}",
        detail.spec.kernel, detail.spec.cmdline
    )?;
    if let Some(group) = &detail.spec.redundancy_group {
        writeln!(out, "  redundancy group {group}")?;
    }
    let drives = detail.stats.as_ref().map(|s| s.drives.as_slice()).unwrap_or_default();
    for (slot, drive) in detail.spec.drives().iter().enumerate() {
        let kind = match (drive.kind, drive.connected) {
            (vmig_backend::vmm::devices::virtio::DiskKind::Disk, _) => "disk",
            (_, true) => "cdrom",
            (_, false) => "cdrom (ejected)",
        };
        let counters = drives.get(slot).map_or(String::new(), |d| {
            format!(
                "  read {} written {} errors {}",
                format_size(d.counters.read_bytes),
                format_size(d.counters.written_bytes),
                d.counters.errors
            )
        });
        writeln!(out, "  {kind} {}{counters}", drive.path.display())?;
    }
    let nics = detail.stats.as_ref().map(|s| s.nics.as_slice()).unwrap_or_default();
    for (index, nic) in detail.spec.nic_configs().iter().enumerate() {
        let counters = nics.get(index).map_or(String::new(), |n| {
            let c = &n.counters;
            format!(
                "  tap {}  rx {} frames  tx {} frames  dropped {}  announced {}",
                n.tap, c.rx_frames, c.tx_frames, c.rx_dropped, c.announcements
            )
        });
        writeln!(out, "  nic {} on {}{counters}", nic.mac, nic.network)?;
    }
    if detail.spec.pmu {
        writeln!(out, "  virtual performance counters (pmu)")?;
    }
    if let Some(gpu) = &detail.spec.vgpu {
        writeln!(out, "  vgpu {} ({} frame buffer)", gpu.profile, gpu.framebuffer)?;
    }
    if let Some(stats) = &detail.stats {
        writeln!(
            out,
            "  up {:.1} s, resident {}, {} exits, console {} bytes",
            stats.uptime_ms as f64 / 1000.0,
            format_size(stats.memory_resident_bytes),
            stats.exits,
            stats.console_bytes
        )?;
    }
    if let Some(note) = &info.note {
        writeln!(out, "  note: {note}")?;
    }
    writeln!(out, "  console {} (on {})", detail.console_path, info.host)?;
    Ok(Exit::Ok)
}
