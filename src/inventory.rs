//! The operator's inventory: which hosts make the cluster, where their agents
//! listen, and the operator's own certificate.
//!
//! ```toml
//! [operator]                  # from `vmig pki issue --operator NAME`
//! cert = "alice.pem"
//! key = "alice.key"
//! ca = "ca.pem"
//!
//! [[hosts]]
//! name = "hostA"
//! address = "10.0.0.1:7070"   # the agent's api_address
//! ```
//!
//! Found, in order: `--inventory FILE`, `$VMIG_INVENTORY`, `./vmig.toml`,
//! `$XDG_CONFIG_HOME/vmig/vmig.toml` (`~/.config/...`), `/etc/vmig/vmig.toml`,
//! and last the local lab's (`vmig lab up`). Relative paths are relative to
//! the file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use vmig_backend::agent::config::toml_error;
use vmig_backend::pki::Identity;

#[derive(Debug, Error)]
pub enum InventoryError {
    #[error(
        "no inventory: pass --inventory FILE, set VMIG_INVENTORY, write ./vmig.toml, or start the local lab with `vmig lab up` (looked in: {0})"
    )]
    NotFound(String),
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {detail}", path.display())]
    Parse { path: PathBuf, detail: String },
    #[error("no host named {name} in {}; hosts: {known}", path.display())]
    UnknownHost { name: String, path: PathBuf, known: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    pub operator: Identity,
    #[serde(default)]
    pub hosts: Vec<HostEntry>,
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostEntry {
    pub name: String,
    pub address: String,
}

impl Inventory {
    /// Finds and loads the inventory (see the module docs for the order).
    pub fn find(explicit: Option<&Path>) -> Result<Self, InventoryError> {
        let candidates = candidates(explicit);
        if explicit.is_some() || std::env::var_os("VMIG_INVENTORY").is_some() {
            // Asked for by name: that file or an error about it.
            return Self::load(&candidates[0]);
        }
        match candidates.iter().find(|p| p.is_file()) {
            Some(path) => Self::load(path),
            None => Err(InventoryError::NotFound(
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            )),
        }
    }

    pub fn load(path: &Path) -> Result<Self, InventoryError> {
        let text = std::fs::read_to_string(path).map_err(|source| InventoryError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// The inventory in `text`, read as the file at `path` (errors name it;
    /// relative identity paths are relative to its directory).
    pub fn parse(text: &str, path: &Path) -> Result<Self, InventoryError> {
        let parse = |detail| InventoryError::Parse {
            path: path.to_path_buf(),
            detail,
        };
        let mut inventory: Self = toml::from_str(text).map_err(|e| parse(toml_error(text, &e)))?;
        for (i, host) in inventory.hosts.iter().enumerate() {
            vmig_backend::api::validate_name(&host.name).map_err(|e| parse(format!("hosts[{i}].name: {e}")))?;
            if inventory.hosts[..i].iter().any(|h| h.name == host.name) {
                return Err(parse(format!("hosts[{i}].name: {} is listed twice", host.name)));
            }
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let identity = &mut inventory.operator;
        for file in [&mut identity.cert, &mut identity.key, &mut identity.ca] {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
        inventory.path = path.to_path_buf();
        Ok(inventory)
    }

    pub fn host(&self, name: &str) -> Result<&HostEntry, InventoryError> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .ok_or_else(|| InventoryError::UnknownHost {
                name: name.to_string(),
                path: self.path.clone(),
                known: self
                    .hosts
                    .iter()
                    .map(|h| h.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// Where the lab keeps its files: `$VMIG_LAB_DIR`, else `$XDG_STATE_HOME/vmig/lab`
/// (`~/.local/state/vmig/lab`).
pub fn lab_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("VMIG_LAB_DIR") {
        return PathBuf::from(dir);
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("/var/lib"));
    state.join("vmig/lab")
}

fn candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    if let Some(path) = explicit {
        return vec![path.to_path_buf()];
    }
    if let Some(path) = std::env::var_os("VMIG_INVENTORY") {
        return vec![PathBuf::from(path)];
    }
    let mut list = vec![PathBuf::from("vmig.toml")];
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    if let Some(config) = config {
        list.push(config.join("vmig/vmig.toml"));
    }
    list.push(PathBuf::from("/etc/vmig/vmig.toml"));
    list.push(lab_dir().join("vmig.toml"));
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/vmig.toml");
        let inventory = Inventory::load(&path).unwrap();
        assert_eq!(inventory.hosts.len(), 2);
        assert_eq!(inventory.host("hostB").unwrap().address, "10.0.0.2:7070");
    }

    #[test]
    fn loads_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmig.toml");
        let good = "[operator]\ncert = \"op.pem\"\nkey = \"op.key\"\nca = \"ca.pem\"\n\n[[hosts]]\nname = \"hostA\"\naddress = \"127.0.0.1:7070\"\n";
        std::fs::write(&path, good).unwrap();
        let inventory = Inventory::load(&path).unwrap();
        assert_eq!(inventory.host("hostA").unwrap().address, "127.0.0.1:7070");
        assert_eq!(inventory.operator.ca, dir.path().join("ca.pem"));
        let error = inventory.host("hostZ").unwrap_err().to_string();
        assert!(error.contains("hostZ") && error.contains("hostA"), "{error}");

        std::fs::write(&path, good.replace("address", "adress")).unwrap();
        let error = Inventory::load(&path).unwrap_err().to_string();
        assert!(error.contains("line 8") && error.contains("adress"), "{error}");
        std::fs::write(
            &path,
            format!("{good}\n[[hosts]]\nname = \"hostA\"\naddress = \"x:1\"\n"),
        )
        .unwrap();
        let error = Inventory::load(&path).unwrap_err().to_string();
        assert!(error.contains("hosts[1].name") && error.contains("twice"), "{error}");
    }
}
