//! `vmig pki`: the cluster's certificate authority.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use vmig_backend::pki::{self, Role};

use crate::exit::Exit;

#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Create the cluster CA (ca.pem, ca.key) in a directory.
    Init(InitArgs),
    /// Issue a host or operator certificate signed by the cluster CA.
    Issue(IssueArgs),
}

#[derive(Debug, Args)]
#[command(after_help = "Example:\n  vmig pki init --dir /etc/vmig/pki --cluster prod")]
pub struct InitArgs {
    /// Where the CA's files go; keep ca.key secret.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The cluster's name, written into every certificate.
    #[arg(long, default_value = "vmig")]
    cluster: String,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    vmig pki issue --dir /etc/vmig/pki --host hostA --san 10.0.0.1   # for hostA's agent\n  \
    vmig pki issue --dir /etc/vmig/pki --operator alice               # for an operator")]
#[command(group(clap::ArgGroup::new("who").required(true).args(["host", "operator"])))]
pub struct IssueArgs {
    /// The CA's directory (from `vmig pki init`).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Issue a host certificate for the agent of NAME (server and client auth).
    #[arg(long, value_name = "NAME")]
    host: Option<String>,
    /// Issue an operator certificate for NAME (client auth only).
    #[arg(long, value_name = "NAME")]
    operator: Option<String>,
    /// Extra names or IP addresses the host is reached by (repeatable).
    #[arg(long, value_name = "NAME|IP", requires = "host")]
    san: Vec<String>,
    /// Where NAME.pem and NAME.key go (default: the CA's directory).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

pub fn exec(command: PkiCommand) -> Result<Exit> {
    match command {
        PkiCommand::Init(args) => {
            pki::init_ca(&args.dir, &args.cluster)?;
            println!("created the cluster CA in {}", args.dir.display());
        }
        PkiCommand::Issue(args) => {
            let (role, name) = match (&args.host, &args.operator) {
                (Some(host), _) => (Role::Host, host),
                (None, Some(operator)) => (Role::Operator, operator),
                (None, None) => unreachable!("clap requires one of --host and --operator"),
            };
            let out = args.out.as_ref().unwrap_or(&args.dir);
            let identity = pki::issue(&args.dir, role, name, &args.san, out)?;
            println!(
                "issued {}: {} and {}",
                name,
                identity.cert.display(),
                identity.key.display()
            );
        }
    }
    Ok(Exit::Ok)
}
