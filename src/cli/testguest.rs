//! `vmig testguest`: the built-in test guest, for booting it in other VMMs.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use vmig_backend::testguest;

use crate::exit::Exit;

#[derive(Debug, Subcommand)]
pub enum TestguestCommand {
    /// Write the test guest's PVH ELF image to a file (e.g. for `qemu-system-x86_64 -kernel`).
    Export {
        /// Where to write the image.
        path: PathBuf,
    },
    /// Write a CD/DVD medium (an image for `cdrom`) whose every word the test
    /// guest checks when it reads it (`disk=` workload).
    Medium {
        /// Where to write the medium.
        path: PathBuf,
        /// Its size (a multiple of 64K).
        #[arg(long, value_name = "SIZE", default_value = "4M")]
        size: String,
    },
}

pub fn exec(command: TestguestCommand) -> Result<Exit> {
    match command {
        TestguestCommand::Export { path } => {
            std::fs::write(&path, testguest::IMAGE).with_context(|| format!("cannot write {}", path.display()))?;
            writeln!(
                std::io::stdout().lock(),
                "wrote {} ({} bytes)",
                path.display(),
                testguest::IMAGE.len()
            )?;
            Ok(Exit::Ok)
        }
        TestguestCommand::Medium { path, size } => {
            let bytes =
                vmig_backend::size::parse_size(&size).map_err(|e| crate::cli::UsageError(format!("--size: {e}")))?;
            testguest::write_medium(&path, bytes)
                .map_err(|e| crate::cli::UsageError(format!("cannot write {}: {e}", path.display())))?;
            writeln!(std::io::stdout().lock(), "wrote {} ({bytes} bytes)", path.display())?;
            Ok(Exit::Ok)
        }
    }
}
