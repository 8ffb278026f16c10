//! `vmig generate`: man pages and shell completions from the clap definition.
//! Their committed copies in `man/` and `completions/` are checked by a test.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use clap_complete::Shell;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Directory that receives `man/` and `completions/`.
    #[arg(long, default_value = ".")]
    out_dir: PathBuf,
}

pub fn exec(args: &GenerateArgs) -> Result<()> {
    write_all(&args.out_dir)
}

/// Writes `man/*.1`, `man/vmig-lua.7` and `completions/{vmig.bash,_vmig,vmig.fish}` under `out`.
pub fn write_all(out: &Path) -> Result<()> {
    let man_dir = out.join("man");
    let completions_dir = out.join("completions");
    fs::create_dir_all(&man_dir).with_context(|| format!("cannot create {}", man_dir.display()))?;
    fs::create_dir_all(&completions_dir).with_context(|| format!("cannot create {}", completions_dir.display()))?;
    let command = super::command();
    write_man(&command, "vmig", &man_dir)?;
    // The Lua reference, from docs/lua.md.
    let lua = crate::render::roff::man_page("vmig-lua", 7, crate::lua::REFERENCE);
    let path = man_dir.join("vmig-lua.7");
    fs::write(&path, lua).with_context(|| format!("cannot write {}", path.display()))?;
    for (shell, file) in [
        (Shell::Bash, "vmig.bash"),
        (Shell::Zsh, "_vmig"),
        (Shell::Fish, "vmig.fish"),
    ] {
        let mut buffer = Vec::new();
        clap_complete::generate(shell, &mut super::command(), "vmig", &mut buffer);
        let path = completions_dir.join(file);
        fs::write(&path, buffer).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn write_man(command: &clap::Command, name: &str, dir: &Path) -> Result<()> {
    if command.is_hide_set() {
        return Ok(());
    }
    let command = command.clone().name(name.to_string());
    let mut buffer = Vec::new();
    clap_mangen::Man::new(command.clone())
        .render(&mut buffer)
        .context("cannot render a man page")?;
    let path = dir.join(format!("{name}.1"));
    fs::write(&path, buffer).with_context(|| format!("cannot write {}", path.display()))?;
    for sub in command.get_subcommands() {
        write_man(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(())
}
