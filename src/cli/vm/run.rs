//! `vmig vm run`: boot (or restore) one VM with this process as its VMM.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use vmig_backend::migration::Token;
use vmig_backend::migration::transport::parse_url;
use vmig_backend::runtime::process::{self, Console, Launch, VmmOptions};
use vmig_backend::size::parse_size;
use vmig_backend::vmm::boot::{BootConfig, KernelSource};
use vmig_backend::vmm::devices::virtio::DiskConfig;
use vmig_backend::vmm::{MAX_VCPUS, MachineConfig, Start, memory};

use super::super::UsageError;
use super::super::options::{StreamTlsArgs, TimeoutArgs};
use crate::exit::Exit;

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    vmig vm run --kernel builtin:testguest --cmdline 'fill=256M dirty=64M rate=100'\n  \
    vmig vm run --kernel bzImage --initrd initrd.img --cmdline 'console=ttyS0' --memory 2G --vcpus 2\n  \
    vmig vm run --restore /var/lib/vmig/snap1 --control /run/vm1.sock\n  \
    vmig vm run --incoming tcp:0.0.0.0:7000 --control /run/vm1.sock   # then `vmig vm send` on the source")]
pub struct RunArgs {
    /// Kernel to boot: a PVH ELF, a Linux bzImage or vmlinux, or `builtin:testguest`.
    #[arg(long, value_name = "PATH", required_unless_present_any = ["restore", "incoming"])]
    kernel: Option<String>,
    /// Initial ramdisk (Linux) or PVH module.
    #[arg(long, value_name = "PATH", conflicts_with = "restore")]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STR", default_value = "", conflicts_with = "restore")]
    cmdline: String,
    /// Guest memory (64M to 1T, a multiple of 2M).
    #[arg(long, value_name = "SIZE", default_value = "512M", conflicts_with = "restore")]
    memory: String,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1, conflicts_with = "restore")]
    vcpus: u16,
    /// A drive, in slot order: `disk:PATH` (read-write), `cdrom:PATH` or
    /// `cdrom-ejected:PATH` (a read-only CD/DVD with or without its medium in).
    /// The image is locked while this VMM may write or read it.
    #[arg(long, value_name = "KIND:PATH", conflicts_with = "restore", value_parser = parse_drive_arg)]
    drive: Vec<DiskConfig>,
    /// A network card on NETWORK (repeatable, in the slots after the
    /// drives): `NETWORK=MAC`, or `NETWORK` for a MAC derived from the name.
    /// Its TAP joins the bridge --bridge gives for the network.
    #[arg(long, value_name = "NETWORK[=MAC]", conflicts_with = "restore")]
    nic: Vec<String>,
    /// The host bridge of NETWORK: `NETWORK=BRIDGE` (repeatable). With
    /// --incoming, an arriving VM with a card on another network is refused.
    #[arg(long, value_name = "NETWORK=BRIDGE", value_parser = parse_bridge_arg)]
    bridge: Vec<(String, String)>,
    /// Give the guest virtual performance counters (CPUID leaf 0xA); without
    /// it the leaf is hidden.
    #[arg(long, conflicts_with = "restore")]
    pmu: bool,
    /// Hide this CPU feature (a /proc/cpuinfo name) from the guest; with
    /// --incoming, refuse a VM that uses it (repeatable).
    #[arg(long, value_name = "FEATURE")]
    hide_cpu: Vec<String>,
    /// With --incoming: an image the arriving VM may open (repeatable); a VM
    /// naming any other drive is refused.
    #[arg(long, value_name = "PATH", requires = "incoming")]
    allow_disk: Vec<PathBuf>,
    /// Write the serial console to FILE instead of standard output.
    #[arg(long, value_name = "FILE")]
    console: Option<PathBuf>,
    /// Serve the control socket (status, pause, resume, save, stats, shutdown) at SOCKET.
    #[arg(long, value_name = "SOCKET")]
    control: Option<PathBuf>,
    /// Continue a VM saved with `vmig vm save` instead of booting one.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["kernel", "incoming"])]
    restore: Option<PathBuf>,
    /// Receive the VM by live migration: listen on tcp:HOST:PORT for `vmig vm send`.
    #[arg(long, value_name = "tcp:HOST:PORT", conflicts_with_all = ["kernel", "initrd", "cmdline", "memory", "vcpus", "drive", "pmu"])]
    incoming: Option<String>,
    /// With --incoming: accept only a sender that presents the migration token
    /// in FILE (64 hex digits; `vmig vm send --token-file` on the source).
    #[arg(long, value_name = "FILE", requires = "incoming")]
    token_file: Option<PathBuf>,
    /// The VM's name, shown to migration peers.
    #[arg(long, default_value = "vm")]
    name: String,
    /// Keep the VMM's record in FILE (JSON): the migration handoff it
    /// passed and how it ended, for the agent that runs it.
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
    /// With --incoming: the agents' id of the migration, for the record.
    #[arg(long, value_name = "ID", requires = "incoming")]
    migration_id: Option<String>,
    // With --incoming: how long to wait for the sender and on it.
    #[command(flatten)]
    timeouts: TimeoutArgs,
    // With --incoming: take TLS streams only, from --tls-peer.
    #[command(flatten)]
    tls: StreamTlsArgs,
}

/// The `--hide-cpu` features as CPUID masks.
fn hidden(args: &RunArgs) -> Result<Vec<vmig_backend::vmm::cpuid::CpuidMask>> {
    vmig_backend::vmm::cpuid::hiding(&args.hide_cpu).map_err(|e| usage(format!("--hide-cpu: {e}")))
}

fn parse_bridge_arg(value: &str) -> Result<(String, String), String> {
    vmig_backend::runtime::launch::parse_bridge(value)
}

fn parse_drive_arg(value: &str) -> Result<DiskConfig, String> {
    vmig_backend::runtime::launch::parse_drive(value)
}

fn usage(message: String) -> anyhow::Error {
    UsageError(message).into()
}

pub fn exec(args: &RunArgs) -> Result<Exit> {
    let launch = if let Some(url) = &args.incoming {
        parse_url(url).map_err(|e| usage(format!("--incoming: {e}")))?;
        let token = args.token_file.as_deref().map(read_token).transpose()?;
        let timeouts = args.timeouts.timeouts()?;
        let tls = args
            .tls
            .peer()
            .map(|peer| peer.server())
            .transpose()
            .context("cannot set up TLS for the migration streams")?;
        Launch::Incoming {
            url: url.clone(),
            token,
            migration: args.migration_id.clone(),
            timeouts,
            allowed_disks: args.allow_disk.clone(),
            hide_cpu: hidden(args)?,
            tls,
        }
    } else {
        if args.tls.peer().is_some() {
            return Err(usage(
                "--tls-cert is for --incoming (a sender takes it with `vmig vm send`)".into(),
            ));
        }
        let (machine, start) = new_machine(args)?;
        Launch::New { machine, start }
    };
    let options = VmmOptions {
        name: args.name.clone(),
        launch,
        console: args.console.clone().map_or(Console::Stdout, Console::File),
        control: args.control.clone(),
        record: args.record.clone(),
        bridges: args.bridge.iter().cloned().collect(),
    };
    let reason = process::run(options, |ready| {
        if let Some(addr) = ready.incoming {
            eprintln!("vmig: waiting for an incoming VM on tcp:{addr}");
        }
    })?;
    if reason.is_clean() {
        eprintln!("vmig: VM stopped: {reason}");
        Ok(Exit::Ok)
    } else {
        eprintln!("vmig: VM failed: {reason}");
        Ok(Exit::GuestFailed)
    }
}

/// Reads a migration token file (also used by `vmig vm send`).
pub fn read_token(path: &std::path::Path) -> Result<Token> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Token::from_hex(&text).ok_or_else(|| usage(format!("{}: not a migration token (64 hex digits)", path.display())))
}

/// The machine and first state of a VM built here (boot or restore).
fn new_machine(args: &RunArgs) -> Result<(MachineConfig, Start)> {
    Ok(if let Some(dir) = &args.restore {
        process::restore_from(dir).with_context(|| format!("cannot restore from {}", dir.display()))?
    } else {
        let memory_bytes = parse_size(&args.memory).map_err(|e| usage(format!("--memory: {e}")))?;
        memory::validate_size(memory_bytes).map_err(|e| usage(format!("--memory: {e}")))?;
        if args.vcpus == 0 || args.vcpus > u16::from(MAX_VCPUS) {
            return Err(usage(format!(
                "--vcpus: {} is not between 1 and {MAX_VCPUS}",
                args.vcpus
            )));
        }
        let spec = args.kernel.as_deref().unwrap_or_default();
        let kernel = KernelSource::from_spec(spec).map_err(|e| usage(format!("--kernel: {e}")))?;
        if let KernelSource::Path(path) = &kernel
            && !path.is_file()
        {
            return Err(usage(format!("--kernel: {} is not a file", path.display())));
        }
        if let Some(initrd) = &args.initrd
            && !initrd.is_file()
        {
            return Err(usage(format!("--initrd: {} is not a file", initrd.display())));
        }
        let machine = MachineConfig {
            memory_bytes,
            vcpus: args.vcpus as u8,
            cpuid_masks: {
                let mut masks = hidden(args)?;
                if !args.pmu {
                    masks.extend(vmig_backend::vmm::cpuid::pmu_hidden());
                }
                masks
            },
            disks: args.drive.clone(),
            nics: args
                .nic
                .iter()
                .enumerate()
                .map(|(i, nic)| {
                    let seed = format!("{}/{}", args.name, args.drive.len() + i);
                    vmig_backend::runtime::launch::parse_nic(nic, &seed).map_err(|e| usage(format!("--nic: {e}")))
                })
                .collect::<Result<_>>()?,
        };
        let boot = BootConfig {
            kernel,
            initrd: args.initrd.clone(),
            cmdline: args.cmdline.clone(),
        };
        (machine, Start::Boot(boot))
    })
}

#[cfg(test)]
mod tests {
    use clap::{Args, FromArgMatches};
    use vmig_backend::migration::Timeouts;
    use vmig_backend::runtime::launch::{Launch, LaunchStart};

    use super::*;

    /// What the agent launches, as this parser reads it.
    fn parse(launch: &Launch) -> RunArgs {
        let args = launch.args();
        assert_eq!(&args[..2], ["vm", "run"]);
        let vm = crate::cli::command().find_subcommand("vm").unwrap().clone();
        assert!(vm.find_subcommand("run").is_some());
        let command = RunArgs::augment_args(clap::Command::new("run"));
        let matches = command
            .try_get_matches_from(std::iter::once("run".into()).chain(args[2..].iter().cloned()))
            .unwrap_or_else(|e| panic!("{e}"));
        RunArgs::from_arg_matches(&matches).unwrap()
    }

    #[test]
    fn the_launch_line_is_what_vm_run_parses() {
        let boot = Launch {
            name: "vm1".into(),
            control: Some("/run/c.sock".into()),
            console: Some("/run/console".into()),
            record: Some("/run/vmm.json".into()),
            start: LaunchStart::Boot {
                kernel: "builtin:testguest".into(),
                initrd: Some("/boot/initrd".into()),
                cmdline: "fill=1M --odd".into(),
                memory: "256M".into(),
                vcpus: 3,
                disks: vec![
                    parse_drive_arg("disk:/srv/a b.img").unwrap(),
                    parse_drive_arg("cdrom-ejected:/srv/x.iso").unwrap(),
                ],
                nics: vec![vmig_backend::runtime::launch::parse_nic("lab=52:54:00:00:00:07", "").unwrap()],
                pmu: true,
                hide_cpu: vec!["avx2".into()],
            },
            bridges: [("lab".to_string(), "br-lab".to_string())].into(),
        };
        let args = parse(&boot);
        assert_eq!(args.name, "vm1");
        assert_eq!(args.control.as_deref(), Some(std::path::Path::new("/run/c.sock")));
        assert_eq!(args.record.as_deref(), Some(std::path::Path::new("/run/vmm.json")));
        assert_eq!(args.kernel.as_deref(), Some("builtin:testguest"));
        assert_eq!(args.cmdline, "fill=1M --odd");
        assert_eq!((args.memory.as_str(), args.vcpus), ("256M", 3));
        assert_eq!(args.initrd.as_deref(), Some(std::path::Path::new("/boot/initrd")));
        let LaunchStart::Boot { disks, .. } = &boot.start else {
            unreachable!()
        };
        assert_eq!(&args.drive, disks);
        assert_eq!(args.nic, ["lab=52:54:00:00:00:07"]);
        assert_eq!(args.bridge, [("lab".to_string(), "br-lab".to_string())]);
        assert!(args.pmu);
        assert_eq!(args.hide_cpu, ["avx2"]);

        let tls = vmig_backend::migration::tls::TlsPeer {
            identity: vmig_backend::pki::Identity {
                cert: "/etc/vmig/hostB.pem".into(),
                key: "/etc/vmig/hostB.key".into(),
                ca: "/etc/vmig/ca.pem".into(),
            },
            peer: "hostA".into(),
        };
        let timeouts = Timeouts {
            accept_s: 7,
            stream_s: 8,
            handoff_s: 9,
        };
        let incoming = Launch {
            start: LaunchStart::Incoming {
                listen: "tcp:127.0.0.1:0".into(),
                token_file: Some("/run/token".into()),
                migration_id: Some("m-1".into()),
                timeouts,
                allowed_disks: vec!["/srv/a b.img".into()],
                hide_cpu: vec!["sse4_2".into()],
                tls: Some(tls.clone()),
            },
            ..boot
        };
        let args = parse(&incoming);
        assert_eq!(args.incoming.as_deref(), Some("tcp:127.0.0.1:0"));
        assert_eq!(args.token_file.as_deref(), Some(std::path::Path::new("/run/token")));
        assert_eq!(args.migration_id.as_deref(), Some("m-1"));
        assert_eq!(args.timeouts.timeouts().unwrap(), timeouts);
        assert_eq!(args.allow_disk, [PathBuf::from("/srv/a b.img")]);
        assert_eq!(args.tls.peer(), Some(tls));
    }

    #[test]
    fn drive_values_are_checked() {
        for bad in ["/srv/a.img", "floppy:/a.img", "disk:"] {
            assert!(parse_drive_arg(bad).is_err(), "{bad}");
        }
    }
}
