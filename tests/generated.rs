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

#[test]
fn the_readme_and_help_print_the_one_exit_code_table() {
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = readme
        .split("## Exit codes")
        .nth(1)
        .expect("the README has an Exit codes section");
    let rows: Vec<(u8, String)> = section
        .lines()
        .take_while(|line| !line.starts_with("## "))
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            Some((cells.first()?.parse().ok()?, cells.get(1)?.to_string()))
        })
        .collect();
    let code: Vec<(u8, String)> = vmig::exit::Exit::ROWS
        .iter()
        .map(|(exit, meaning)| (*exit as u8, meaning.to_string()))
        .collect();
    assert_eq!(rows, code, "README.md's exit codes differ from src/exit.rs");
    let help = Command::new(env!("CARGO_BIN_EXE_vmig")).arg("--help").output().unwrap();
    // Help wraps long lines: compare the words.
    let words = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    let help = words(&String::from_utf8(help.stdout).unwrap());
    for (number, meaning) in &code {
        assert!(
            help.contains(&words(&format!("{number} {meaning}"))),
            "vmig --help lacks exit code {number}: {help}"
        );
    }
}

#[test]
fn the_readme_documents_every_precheck_rule_with_its_fix() {
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = readme
        .split("## Prechecks")
        .nth(1)
        .expect("the README has a Prechecks section");
    let rows: Vec<(String, String)> = section
        .lines()
        .skip_while(|line| !line.starts_with("| rule | what it checks"))
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
            (cells[0].to_string(), cells[1..].join(" | "))
        })
        .collect();
    let code: Vec<(String, String)> = vmig::ops::precheck::rules::RULES
        .iter()
        .map(|r| (r.id.to_string(), r.doc.to_string()))
        .collect();
    assert_eq!(
        rows, code,
        "README.md's precheck rules differ from src/ops/precheck/rules.rs"
    );
}
