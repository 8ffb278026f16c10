//! Migration limits shared by `vmig migrate` and `vmig vm send`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use vmig_backend::migration::tls::TlsPeer;
use vmig_backend::migration::{MigrationOptions, TimeoutAction, Timeouts};
use vmig_backend::pki::Identity;
use vmig_backend::size::parse_size;
use vmig_backend::vmm::AnnounceOptions;

use super::UsageError;

#[derive(Debug, Args)]
pub struct MigrationArgs {
    /// The longest pause to plan for: switch over once the expected downtime is
    /// below this many milliseconds (and a few more live rounds no longer
    /// shrink what is left).
    #[arg(long, value_name = "MS", default_value_t = MigrationOptions::default().downtime_limit_ms)]
    pub downtime_ms: u64,
    /// Parallel TCP streams: a number, or `auto` for as many as both hosts
    /// have free cores (one each, counted once when both are one machine).
    #[arg(long, value_name = "N", default_value = "auto", value_parser = vmig_backend::migration::parse_streams)]
    pub streams: u32,
    /// The share of its vCPUs' time (percent) the guest keeps during
    /// pre-copy where the migration's threads contend for its cores; lower
    /// trades the guest's time for a faster copy (0: the migration runs
    /// above the guest).
    #[arg(long, value_name = "PCT", default_value_t = MigrationOptions::default().guest_share,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    pub guest_share: u8,
    /// Bandwidth cap in bytes per second (K/M/G suffixes), e.g. 100M.
    #[arg(long, value_name = "RATE")]
    pub bandwidth: Option<String>,
    /// Time limit in seconds for the whole migration.
    #[arg(long, value_name = "S", default_value_t = MigrationOptions::default().timeout_s)]
    pub timeout: u64,
    /// What the time limit does: `cancel` (the VM stays on the source) or `force` (switch over now).
    #[arg(long, value_name = "ACTION", default_value = "cancel", value_parser = ["cancel", "force"])]
    pub timeout_action: String,
    /// Do not throttle the vCPUs of a guest that dirties memory faster than the link sends.
    #[arg(long)]
    pub no_auto_converge: bool,
    /// Hash guest memory on both sides at switchover and refuse the handoff if
    /// they differ (for testing; adds the hashing time to the downtime).
    #[arg(long)]
    pub verify_memory: bool,
    /// After the switchover, the target announces the VM's network cards
    /// (RARP from each MAC) this many times; 0: only the one at the pause.
    #[arg(long, value_name = "N", default_value_t = AnnounceOptions::default().rounds)]
    pub announce_rounds: u32,
    /// Milliseconds from the first announcement to the second; each later
    /// gap is --announce-step-ms longer, at most --announce-max-ms.
    #[arg(long, value_name = "MS", default_value_t = AnnounceOptions::default().initial_ms)]
    pub announce_initial_ms: u64,
    #[arg(long, value_name = "MS", default_value_t = AnnounceOptions::default().step_ms)]
    pub announce_step_ms: u64,
    #[arg(long, value_name = "MS", default_value_t = AnnounceOptions::default().max_ms)]
    pub announce_max_ms: u64,
}

/// How long the two sides of a migration wait for each other (the agents'
/// `[timeouts]`).
#[derive(Debug, Args)]
pub struct TimeoutArgs {
    /// A receiving VMM that no sender reached within S seconds ends (the
    /// source's agent keeps it waiting while it queues).
    #[arg(long, value_name = "S", default_value_t = Timeouts::default().accept_s)]
    pub accept_timeout: u64,
    /// A migration stream on which nothing moves for S seconds has failed.
    #[arg(long, value_name = "S", default_value_t = Timeouts::default().stream_s)]
    pub stream_timeout: u64,
    /// Each side of the switchover waits S seconds for the other (and a
    /// receiver holding the state for Go).
    #[arg(long, value_name = "S", default_value_t = Timeouts::default().handoff_s)]
    pub handoff_timeout: u64,
}

/// TLS 1.3 on the streams of a migration between VMMs run by hand; without
/// it they are plaintext (agents always use TLS unless both opted out).
#[derive(Debug, Args)]
pub struct StreamTlsArgs {
    /// This host's certificate (`vmig pki issue --host`): the migration
    /// streams are TLS 1.3, and the other side must be --tls-peer.
    #[arg(long, value_name = "FILE", requires_all = ["tls_key", "tls_ca", "tls_peer"])]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The cluster CA's certificate, which the other side's must chain to.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,
    /// The host at the other end, as its certificate names it.
    #[arg(long, value_name = "HOST", requires = "tls_cert")]
    pub tls_peer: Option<String>,
}

impl StreamTlsArgs {
    /// The TLS asked for, if any.
    pub fn peer(&self) -> Option<TlsPeer> {
        match (&self.tls_cert, &self.tls_key, &self.tls_ca, &self.tls_peer) {
            (Some(cert), Some(key), Some(ca), Some(peer)) => Some(TlsPeer {
                identity: Identity {
                    cert: cert.clone(),
                    key: key.clone(),
                    ca: ca.clone(),
                },
                peer: peer.clone(),
            }),
            _ => None,
        }
    }
}

impl TimeoutArgs {
    /// The timeouts; a bad value is a usage error naming its flag.
    pub fn timeouts(&self) -> Result<Timeouts> {
        let timeouts = Timeouts {
            accept_s: self.accept_timeout,
            stream_s: self.stream_timeout,
            handoff_s: self.handoff_timeout,
        };
        timeouts.validate().map_err(|e| {
            let flag = e.split('_').next().unwrap_or_default();
            UsageError(format!("--{flag}-timeout: {e}"))
        })?;
        Ok(timeouts)
    }
}

impl MigrationArgs {
    /// The engine's options; a bad value is a usage error naming its flag.
    pub fn options(&self) -> Result<MigrationOptions> {
        let bandwidth_limit = self
            .bandwidth
            .as_deref()
            .map(|b| parse_size(b).map_err(|e| UsageError(format!("--bandwidth: {e}"))))
            .transpose()?;
        let options = MigrationOptions {
            downtime_limit_ms: self.downtime_ms,
            bandwidth_limit,
            timeout_s: self.timeout,
            timeout_action: if self.timeout_action == "force" {
                TimeoutAction::Force
            } else {
                TimeoutAction::Cancel
            },
            streams: self.streams,
            guest_share: self.guest_share,
            auto_converge: !self.no_auto_converge,
            verify_memory: self.verify_memory,
            token: Default::default(),
            migration_id: None,
            timeouts: Default::default(),
            announce: AnnounceOptions {
                rounds: self.announce_rounds,
                initial_ms: self.announce_initial_ms,
                step_ms: self.announce_step_ms,
                max_ms: self.announce_max_ms,
            },
        };
        // Checked here, before anything is asked of an agent or a VMM; the
        // message names the option.
        options.validate().map_err(|e| UsageError(format!("--{e}")))?;
        Ok(options)
    }
}
