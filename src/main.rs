//! `vmig`: live migration of KVM virtual machines. See `vmig --help`.

use std::process::ExitCode;

fn main() -> ExitCode {
    vmig::cli::main()
}
