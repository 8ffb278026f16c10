//! The operator's view of the cluster: every agent in the inventory, asked
//! over mutual TLS, in parallel where a command needs them all.

use std::sync::Arc;

use anyhow::{Context, Result};
use vmig_backend::api::{Request, VmInfo, VmState};
use vmig_backend::client::{Client, ClientError};
use vmig_backend::pki;

use crate::inventory::{HostEntry, Inventory};

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

impl Cluster {
    pub fn open(explicit: Option<&std::path::Path>) -> Result<Self> {
        let inventory = Inventory::find(explicit)?;
        let tls = pki::client_config(&inventory.operator).with_context(|| {
            format!(
                "cannot use the operator certificate named in {}",
                inventory.path.display()
            )
        })?;
        Ok(Self { inventory, tls })
    }

    pub fn client(&self, host: &HostEntry) -> Client {
        Client::new(&host.name, &host.address, Arc::clone(&self.tls))
    }

    pub fn host_client(&self, name: &str) -> Result<Client> {
        Ok(self.client(self.inventory.host(name)?))
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

    /// Finds the host that holds `vm`; hosts that cannot be asked are named
    /// in the error when the VM is not found elsewhere. A VM in migration is
    /// listed by both ends: it is its source's (migrating, or in doubt) until
    /// its target has it, and the target's `incoming` copy is never taken
    /// for it.
    pub fn locate(&self, vm: &str) -> Result<Located> {
        let mut failed = None;
        let mut found: Vec<Located> = Vec::new();
        for (host, answer) in self.ask_all::<Vec<VmInfo>>(&Request::ListVms) {
            match answer {
                Ok(vms) => {
                    if let Some(info) = vms.into_iter().find(|v| v.name == vm) {
                        found.push(Located { host, info });
                    }
                }
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        let rank = |located: &Located| match located.info.state {
            VmState::Migrating | VmState::InDoubt => 0,
            VmState::Incoming => 2,
            _ => 1,
        };
        if let Some(located) = found.into_iter().min_by_key(rank) {
            return Ok(located);
        }
        match failed {
            // It may be on the host that could not be asked: say why, not "no such VM".
            Some(error) => {
                Err(anyhow::Error::new(error).context(format!("{vm} was not found on the hosts that answered")))
            }
            None => Err(NotFound(format!(
                "no VM named {vm} in the cluster ({})",
                self.inventory.path.display()
            ))
            .into()),
        }
    }
}

/// An unknown VM or host (exit code 7).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotFound(pub String);

/// The request conflicts with where or how the VM is (exit code 8).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Conflict(pub String);
