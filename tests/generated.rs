//! The committed man pages and completions must match the clap definition.
//! When this fails, run `cargo run -- generate` and commit the result.

use std::fs;
use std::path::Path;
use std::process::Command;

fn files_under(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn man_pages_and_completions_are_up_to_date() {
    let fresh = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_vmig"))
        .args(["generate", "--out-dir"])
        .arg(fresh.path())
        .status()
        .unwrap();
    assert!(status.success());
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in ["man", "completions"] {
        let committed = repo.join(dir);
        let generated = fresh.path().join(dir);
        assert_eq!(
            files_under(&committed),
            files_under(&generated),
            "{dir}/ is stale: run `cargo run -- generate` and commit"
        );
        for name in files_under(&generated) {
            let want = fs::read(generated.join(&name)).unwrap();
            let have = fs::read(committed.join(&name)).unwrap();
            assert!(
                want == have,
                "{dir}/{name} is stale: run `cargo run -- generate` and commit"
            );
        }
    }
}

#[test]
fn every_visible_subcommand_has_a_man_page() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for page in [
        "vmig.1",
        "vmig-vm.1",
        "vmig-vm-run.1",
        "vmig-vm-save.1",
        "vmig-testguest-export.1",
    ] {
        assert!(repo.join("man").join(page).is_file(), "man/{page} missing");
    }
    assert!(
        !repo.join("man").join("vmig-generate.1").exists(),
        "hidden commands get no man page"
    );
}
