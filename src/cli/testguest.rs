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
    }
}
