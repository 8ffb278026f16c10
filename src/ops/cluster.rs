//! The operator's view of the cluster: every agent in the inventory, asked
//! over mutual TLS, in parallel where a question needs them all.

use std::sync::Arc;

use thiserror::Error;
use vmig_backend::api::{HostFacts, Request, VmInfo, VmState};
use vmig_backend::client::{Client, ClientError};
use vmig_backend::pki::{self, PkiError};

use super::code::Code;
use crate::inventory::{HostEntry, Inventory, InventoryError};

#[derive(Debug, Error)]
pub enum ClusterError {
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    #[error("cannot use the operator certificate named in {inventory}")]
    Certificate {
        inventory: String,
        #[source]
        source: Box<PkiError>,
    },
    #[error("no VM named {vm} in the cluster ({inventory})")]
    NoSuchVm { vm: String, inventory: String },
    /// The VM is on none of the hosts that answered, and some did not.
    #[error("{vm} was not found on the hosts that answered")]
    NotEverywhere {
        vm: String,
        #[source]
        source: ClientError,
    },
    /// An agent's refusal or failure, or a failure to reach it.
    #[error(transparent)]
    Agent(#[from] ClientError),
}

impl ClusterError {
    /// The stable code scripts decide on.
    pub fn code(&self) -> Code {
        match self {
            ClusterError::Inventory(InventoryError::UnknownHost { .. }) => Code::NotFound,
            ClusterError::Inventory(_) => Code::Config,
            ClusterError::Certificate { .. } => Code::Auth,
            ClusterError::NoSuchVm { .. } => Code::NotFound,
            ClusterError::NotEverywhere { source, .. } | ClusterError::Agent(source) => Code::of_client(source),
        }
    }

    /// The host the error is about, when there is one.
    pub fn host(&self) -> Option<&str> {
        match self {
            ClusterError::Inventory(InventoryError::UnknownHost { name, .. }) => Some(name),
            ClusterError::NotEverywhere { source, .. } | ClusterError::Agent(source) => Some(source.host()),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub struct Cluster {
    pub inventory: Inventory,
    tls: Arc<rustls::ClientConfig>,
}

/// A VM and the host that holds it.
#[derive(Debug, Clone)]
pub struct Located {
    pub host: HostEntry,
    pub info: VmInfo,
}

/// One host's answer to [`Cluster::hosts`].
#[derive(Debug)]
pub struct HostAnswer {
    pub host: HostEntry,
    pub facts: Result<HostFacts, ClientError>,
}

impl Cluster {
    pub fn open(explicit: Option<&std::path::Path>) -> Result<Self, ClusterError> {
        let inventory = Inventory::find(explicit)?;
        let tls = pki::client_config(&inventory.operator).map_err(|source| ClusterError::Certificate {
            inventory: inventory.path.display().to_string(),
            source: Box::new(source),
        })?;
        Ok(Self { inventory, tls })
    }

    pub fn client(&self, host: &HostEntry) -> Client {
        Client::new(&host.name, &host.address, Arc::clone(&self.tls))
    }

    /// The inventory's entry for `name`.
    pub fn host(&self, name: &str) -> Result<&HostEntry, ClusterError> {
        Ok(self.inventory.host(name)?)
    }

    pub fn host_client(&self, name: &str) -> Result<Client, ClusterError> {
        Ok(self.client(self.host(name)?))
    }

    /// One host's facts.
    pub fn facts(&self, name: &str) -> Result<HostFacts, ClusterError> {
        Ok(self.host_client(name)?.call(Request::Host)?)
    }

    /// Every host's facts, asked at once, in inventory order.
    pub fn hosts(&self) -> Vec<HostAnswer> {
        self.ask_all::<HostFacts>(&Request::Host)
            .into_iter()
            .map(|(host, facts)| HostAnswer { host, facts })
            .collect()
    }

    /// Every VM of the hosts that answered, each once with the host that
    /// listed it (a VM in migration is listed by both ends: it is its
    /// source's, migrating or in doubt, until its target has it, and the
    /// target's `incoming` copy is never taken for it), sorted by name; and
    /// the hosts that did not answer. One request per host.
    pub fn listing(&self) -> (Vec<Located>, Vec<(HostEntry, ClientError)>) {
        let (every, failed) = self.every_copy();
        (once_each(every), failed)
    }

    /// Every VM every host that answered lists, as it lists it: a VM in
    /// migration twice, and two VMs of one name on two hosts both (what
    /// [`Cluster::listing`] makes one of); and the hosts that did not answer.
    pub fn every_copy(&self) -> (Vec<Located>, Vec<(HostEntry, ClientError)>) {
        let mut found: Vec<Located> = Vec::new();
        let mut failed = Vec::new();
        for (host, answer) in self.ask_all::<Vec<VmInfo>>(&Request::ListVms) {
            match answer {
                Ok(list) => found.extend(list.into_iter().map(|info| Located {
                    host: host.clone(),
                    info,
                })),
                Err(e) => failed.push((host, e)),
            }
        }
        (found, failed)
    }

    /// Every VM of the hosts that answered, as [`Cluster::listing`].
    pub fn vms(&self) -> (Vec<VmInfo>, Vec<(HostEntry, ClientError)>) {
        let (listing, failed) = self.listing();
        (listing.into_iter().map(|l| l.info).collect(), failed)
    }

    /// Asks every host at once; answers come back in inventory order.
    pub fn ask_all<T: serde::de::DeserializeOwned + Send>(
        &self,
        request: &Request,
    ) -> Vec<(HostEntry, Result<T, ClientError>)> {
        std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .inventory
                .hosts
                .iter()
                .map(|host| {
                    let client = self.client(host);
                    let request = request.clone();
                    (host.clone(), scope.spawn(move || client.call::<T>(request)))
                })
                .collect();
            handles
                .into_iter()
                .map(|(host, handle)| {
                    let result = handle.join().unwrap_or_else(|_| {
                        Err(ClientError::Protocol {
                            host: host.name.clone(),
                            detail: "the request thread panicked".into(),
                        })
                    });
                    (host, result)
                })
                .collect()
        })
    }

    /// Finds the host that holds `vm`, with one request per host; hosts
    /// that cannot be asked are named in the error when the VM is not found
    /// elsewhere.
    pub fn locate(&self, vm: &str) -> Result<Located, ClusterError> {
        let (listing, failed) = self.listing();
        self.find(&listing, failed, vm)
    }

    /// `vm` in a [`Cluster::listing`] already made.
    pub fn find(
        &self,
        listing: &[Located],
        failed: Vec<(HostEntry, ClientError)>,
        vm: &str,
    ) -> Result<Located, ClusterError> {
        if let Some(located) = listing.iter().find(|l| l.info.name == vm) {
            return Ok(located.clone());
        }
        match failed.into_iter().next() {
            // It may be on the host that could not be asked: say why, not "no such VM".
            Some((_, source)) => Err(ClusterError::NotEverywhere {
                vm: vm.to_string(),
                source,
            }),
            None => Err(ClusterError::NoSuchVm {
                vm: vm.to_string(),
                inventory: self.inventory.path.display().to_string(),
            }),
        }
    }
}

/// Each VM once, sorted by name: where several hosts list one name, the copy
/// that is the VM's (see [`Cluster::listing`]).
pub fn once_each(mut found: Vec<Located>) -> Vec<Located> {
    found.sort_by_key(|l| (l.info.name.clone(), rank(l.info.state)));
    found.dedup_by(|later, first| later.info.name == first.info.name);
    found
}

/// Which of a VM's listings is the VM: its source's while it migrates, the
/// target's incoming copy last.
fn rank(state: VmState) -> u8 {
    match state {
        VmState::Migrating | VmState::InDoubt => 0,
        VmState::Incoming => 2,
        _ => 1,
    }
}
