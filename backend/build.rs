//! Builds the test guest (`../testguest`, a `no_std` PVH kernel) with the same
//! toolchain, for the host target, and puts the ELF in OUT_DIR for
//! `include_bytes!`. The guest is its own cargo project so its linker script,
//! panic strategy and flags never leak into the rest of the workspace. It is
//! built `--offline`: its crates (smoltcp) come into the registry cache as this
//! package's build-dependencies.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let guest_dir = manifest_dir.join("..").join("testguest");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let target_dir = out_dir.join("testguest-target");
    println!("cargo:rerun-if-changed={}", guest_dir.join("src").display());
    println!("cargo:rerun-if-changed={}", guest_dir.join("Cargo.toml").display());
    println!("cargo:rerun-if-changed={}", guest_dir.join("Cargo.lock").display());
    println!("cargo:rerun-if-changed={}", guest_dir.join("build.rs").display());
    println!("cargo:rerun-if-changed={}", guest_dir.join("link.ld").display());

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .arg("build")
        .arg("--release")
        .arg("--locked")
        .arg("--offline")
        .arg("--manifest-path")
        .arg(guest_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's flags and wrappers (clippy, coverage, target) are not
    // the guest's: start from a clean cargo environment.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        let keep = matches!(
            key.as_ref(),
            "PATH" | "HOME" | "CARGO_HOME" | "RUSTUP_HOME" | "RUSTUP_TOOLCHAIN" | "TMPDIR" | "CARGO_MAKEFLAGS"
        );
        if !keep && (key.starts_with("CARGO") || key.starts_with("RUST") || key == "OUT_DIR" || key == "TARGET") {
            command.env_remove(key.as_ref());
        }
    }
    let status = command.status().expect("cannot run cargo to build the test guest");
    assert!(status.success(), "building the test guest failed");
    let built = target_dir.join("release").join("vmig-testguest");
    std::fs::copy(&built, out_dir.join("vmig-testguest")).expect("cannot copy the test guest image");
}
