//! How a VMM process is started: the `vmig vm run` command line, built in
//! one place. The agent starts its VMMs with it; the command line's parser
//! (`src/cli/vm/run.rs`) is tested against it, so the two cannot drift.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::migration::Timeouts;

/// One VMM process to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The VM's name, shown to migration peers.
    pub name: String,
    pub control: Option<PathBuf>,
    pub console: Option<PathBuf>,
    /// The record the process keeps for its agent.
    pub record: Option<PathBuf>,
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
    },
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
        match &self.start {
            LaunchStart::Boot {
                kernel,
                initrd,
                cmdline,
                memory,
                vcpus,
            } => {
                flag("--kernel", kernel);
                flag("--memory", memory);
                flag("--vcpus", &vcpus.to_string());
                flag("--cmdline", cmdline);
                if let Some(initrd) = initrd {
                    flag("--initrd", initrd);
                }
            }
            LaunchStart::Incoming {
                listen,
                token_file,
                migration_id,
                timeouts,
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
            }
        }
        args
    }
}
