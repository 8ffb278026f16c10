//! The host's storage roots, and what the agent itself finds at an image
//! path: the facts behind the prechecks' device rules.
//!
//! A VM's images must lie under one of the host's storage roots; a root is
//! `shared` when every host that mounts it sees the same files (NFS, a
//! cluster file system), host-local otherwise. A migration target checks the
//! VM's images itself — exists, same size, same identity — rather than take
//! the source's word. The identity is a random id the agent writes into the
//! image's extended attribute `user.vmig.id` when a VM first uses it (it
//! travels with the file on any host that mounts it), or the file's device
//! and inode where the file system keeps no extended attributes.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::api::{DriveProbe, VmSpec};
use crate::vmm::devices::virtio::block::{SECTOR_SIZE, is_locked};

const ID_ATTR: &str = "user.vmig.id";

/// One storage root in `agent.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageRoot {
    /// Its name in facts and messages ("shared", "local").
    pub name: String,
    /// Where it is mounted on this host.
    pub path: PathBuf,
    /// Every host that has this root sees the same files.
    #[serde(default)]
    pub shared: bool,
    /// Migrations of VMs with images here at once, cluster-wide (a shared
    /// root's budget, as vMotion counts a datastore's cost); default 8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_migrations: Option<u32>,
}

/// vMotion's datastore budget: 128 units, 16 per migration.
pub const DEFAULT_STORAGE_MIGRATIONS: u32 = 8;

impl StorageRoot {
    pub fn max_migrations(&self) -> u32 {
        self.max_migrations.unwrap_or(DEFAULT_STORAGE_MIGRATIONS).max(1)
    }

    /// Where the root's migration slots are: files on the root itself, so
    /// that every host mounting it sees the same locks.
    fn slots_dir(&self) -> PathBuf {
        self.path.join(".vmig-migrations")
    }

    fn slot_file(&self, index: u32) -> std::io::Result<std::fs::File> {
        std::fs::create_dir_all(self.slots_dir())?;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.slots_dir().join(format!("slot-{index}")))
    }

    /// Takes a free migration slot of this root, if one is.
    pub fn try_slot(&self) -> std::io::Result<Option<StorageSlot>> {
        for index in 0..self.max_migrations() {
            let file = self.slot_file(index)?;
            if crate::lockfile::try_lock(&file, false)? {
                return Ok(Some(StorageSlot {
                    root: self.name.clone(),
                    _file: file,
                }));
            }
        }
        Ok(None)
    }

    /// How many of the root's slots are held now, by any host (measured).
    pub fn slots_in_use(&self) -> u32 {
        (0..self.max_migrations())
            .filter(|&index| {
                self.slot_file(index)
                    .and_then(|file| crate::lockfile::held(&file))
                    .unwrap_or(false)
            })
            .count() as u32
    }
}

/// One migration's share of a shared root's budget: an OFD write lock on
/// one of its slot files, released when dropped (or when the agent dies).
#[derive(Debug)]
pub struct StorageSlot {
    pub root: String,
    _file: std::fs::File,
}

/// The shared roots the VM's attached images lie under.
pub fn shared_roots_of<'a>(roots: &'a [StorageRoot], spec: &VmSpec) -> Vec<&'a StorageRoot> {
    let mut found: Vec<&StorageRoot> = Vec::new();
    for drive in spec.drives().iter().filter(|d| d.attached()) {
        if let Some(root) = root_of(roots, &drive.path).filter(|r| r.shared)
            && !found.iter().any(|r| r.name == root.name)
        {
            found.push(root);
        }
    }
    found
}

/// The root `path` lies under, if any (the deepest one). Both are resolved
/// first where they exist, so a symbolic link inside a root that points out
/// of it does not count as inside.
pub fn root_of<'a>(roots: &'a [StorageRoot], path: &Path) -> Option<&'a StorageRoot> {
    let resolve = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let path = resolve(path);
    roots
        .iter()
        .filter(|root| path.starts_with(resolve(&root.path)))
        .max_by_key(|root| root.path.components().count())
}

/// What this host finds at `path`.
pub fn probe(roots: &[StorageRoot], path: &str) -> DriveProbe {
    let root = root_of(roots, Path::new(path));
    let mut probe = DriveProbe {
        path: path.to_string(),
        root: root.map(|r| r.name.clone()),
        shared: root.is_some_and(|r| r.shared),
        exists: false,
        size: 0,
        identity: None,
        locked: false,
        error: None,
    };
    // Only what lies under a storage root is looked at: the probe is no way
    // to learn about other files of the host.
    if root.is_none() {
        probe.error = Some("under no storage root of this host".into());
        return probe;
    }
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => {
            probe.exists = true;
            probe.size = meta.len();
            probe.identity = Some(identity(Path::new(path), &meta));
            probe.locked = is_locked(Path::new(path)).unwrap_or(false);
        }
        Ok(_) => probe.error = Some("not a regular file".into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => probe.error = Some(e.to_string()),
    }
    probe
}

fn identity(path: &Path, meta: &std::fs::Metadata) -> String {
    match read_id(path) {
        Some(id) => format!("id:{id}"),
        None => format!("inode:{}:{}", meta.dev(), meta.ino()),
    }
}

fn c_path(path: &Path) -> Option<CString> {
    CString::new(path.as_os_str().as_bytes()).ok()
}

fn read_id(path: &Path) -> Option<String> {
    let path = c_path(path)?;
    let name = CString::new(ID_ATTR).ok()?;
    let mut value = [0u8; 64];
    // SAFETY: both strings are NUL-terminated and live for the call; the
    // buffer is writable for its length.
    let n = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
    let n = usize::try_from(n).ok()?;
    let id = std::str::from_utf8(&value[..n]).ok()?;
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit())).then(|| id.to_string())
}

/// Gives the image an identity if it has none (best effort: a file system
/// without extended attributes is identified by device and inode).
pub fn stamp(path: &Path) {
    if read_id(path).is_some() {
        return;
    }
    let mut bytes = [0u8; 16];
    if crate::random::fill(&mut bytes).is_err() {
        return;
    }
    let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let (Some(path), Ok(name)) = (c_path(path), CString::new(ID_ATTR)) else {
        return;
    };
    // SAFETY: both strings are NUL-terminated and live for the call; the
    // value is `id`'s bytes. XATTR_CREATE: an id set meanwhile stays.
    let _ = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            id.as_ptr().cast(),
            id.len(),
            libc::XATTR_CREATE,
        )
    };
}

/// Checks the drives of a VM to be defined here: every image under a
/// storage root, there, a whole number of sectors and at least its declared
/// size (a CD/DVD drive without its medium may name an image not here).
/// Gives each image found an identity.
pub fn check_spec(roots: &[StorageRoot], spec: &VmSpec) -> Result<(), String> {
    let disks = spec.disks.iter().map(|d| (d.path.as_str(), d.size.as_deref(), true));
    let cdrom = spec.cdrom.iter().map(|c| (c.path.as_str(), None, c.connected));
    for (path, declared, needed) in disks.chain(cdrom) {
        if root_of(roots, Path::new(path)).is_none() {
            let names: Vec<String> = roots.iter().map(|r| r.path.display().to_string()).collect();
            return Err(format!(
                "{path} is under no storage root of this host ({}); put it under one, \
                 or add a [[storage]] root to agent.toml",
                if names.is_empty() {
                    "it has none".to_string()
                } else {
                    names.join(", ")
                }
            ));
        }
        let meta = match std::fs::metadata(path) {
            Ok(meta) if meta.is_file() => meta,
            Ok(_) => return Err(format!("{path} is not a regular file")),
            Err(_) if !needed => continue,
            Err(e) => {
                return Err(format!(
                    "{path}: {e} (create the image first, e.g. truncate -s 1G {path})"
                ));
            }
        };
        let size = meta.len();
        if size == 0 || !size.is_multiple_of(SECTOR_SIZE) {
            return Err(format!(
                "{path} is {size} bytes: an image must be a whole, non-zero number of {SECTOR_SIZE}-byte sectors"
            ));
        }
        if let Some(declared) = declared {
            let want = crate::size::parse_size(declared).map_err(|e| format!("{path}: size: {e}"))?;
            if size < want {
                return Err(format!(
                    "{path} is {} but the spec declares {declared}; grow it (truncate -s {declared} {path}) \
                     or correct the spec",
                    crate::size::format_size(size)
                ));
            }
        }
        stamp(Path::new(path));
    }
    Ok(())
}

/// The images an arriving VM may open here: its drives, each under one of
/// this host's roots (the target's own check, whatever the source says).
pub fn allowed_for_arrival(roots: &[StorageRoot], spec: &VmSpec) -> Result<Vec<PathBuf>, String> {
    let mut allowed = Vec::new();
    for drive in spec.drives() {
        let probe = probe(roots, &drive.path.to_string_lossy());
        if probe.root.is_none() {
            return Err(format!(
                "{} is under no storage root of this host",
                drive.path.display()
            ));
        }
        if drive.attached() && !probe.exists {
            return Err(format!("{} is not reachable from this host", drive.path.display()));
        }
        allowed.push(drive.path);
    }
    Ok(allowed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CdromSpec, DiskSpec};

    fn roots(dir: &Path) -> Vec<StorageRoot> {
        vec![
            StorageRoot {
                name: "shared".into(),
                path: dir.join("shared"),
                shared: true,
                max_migrations: Some(2),
            },
            StorageRoot {
                name: "local".into(),
                path: dir.join("local"),
                shared: false,
                max_migrations: None,
            },
        ]
    }

    fn spec(disk: &Path, size: Option<&str>) -> VmSpec {
        VmSpec {
            name: "vm1".into(),
            kernel: "builtin:testguest".into(),
            disks: vec![DiskSpec {
                path: disk.display().to_string(),
                size: size.map(str::to_string),
            }],
            ..VmSpec::default()
        }
    }

    #[test]
    fn images_are_found_under_their_root_with_an_identity_that_travels() {
        let dir = tempfile::tempdir().unwrap();
        let roots = roots(dir.path());
        std::fs::create_dir_all(dir.path().join("shared")).unwrap();
        let image = dir.path().join("shared/vm1.img");
        std::fs::File::create(&image).unwrap().set_len(1 << 20).unwrap();
        check_spec(&roots, &spec(&image, Some("1M"))).unwrap();
        let probe = probe(&roots, &image.display().to_string());
        assert_eq!(probe.root.as_deref(), Some("shared"));
        assert!(probe.shared && probe.exists && !probe.locked);
        assert_eq!(probe.size, 1 << 20);
        let id = probe.identity.clone().unwrap();
        // The same file seen again has the same identity; a copy has another.
        assert_eq!(
            super::probe(&roots, &image.display().to_string()).identity,
            Some(id.clone())
        );
        let copy = dir.path().join("shared/copy.img");
        std::fs::copy(&image, &copy).unwrap();
        stamp(&copy);
        assert_ne!(super::probe(&roots, &copy.display().to_string()).identity, Some(id));

        let missing = super::probe(&roots, &dir.path().join("shared/none.img").display().to_string());
        assert!(!missing.exists && missing.identity.is_none());
        let elsewhere = super::probe(&roots, "/etc/passwd");
        assert_eq!(
            (elsewhere.root, elsewhere.exists, elsewhere.size),
            (None, false, 0),
            "not looked at"
        );
        // A link inside a root to a file outside it is outside.
        let outside = dir.path().join("outside.img");
        std::fs::File::create(&outside).unwrap().set_len(1 << 20).unwrap();
        let link = dir.path().join("shared/escape.img");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        assert_eq!(super::probe(&roots, &link.display().to_string()).root, None);
        assert!(
            check_spec(&roots, &spec(&link, None))
                .unwrap_err()
                .contains("no storage root")
        );
    }

    #[test]
    fn a_shared_roots_migration_slots_are_locks_on_the_root_itself() {
        let dir = tempfile::tempdir().unwrap();
        let roots = roots(dir.path());
        let shared = &roots[0];
        assert_eq!(shared.slots_in_use(), 0);
        let first = shared.try_slot().unwrap().expect("a free slot");
        // Another host mounting the root opens the same files: here, another open.
        let again = StorageRoot { ..shared.clone() };
        let second = again.try_slot().unwrap().expect("the second slot");
        assert_eq!(shared.slots_in_use(), 2);
        assert!(again.try_slot().unwrap().is_none(), "a budget of 2");
        drop(first);
        assert_eq!(shared.slots_in_use(), 1);
        assert!(again.try_slot().unwrap().is_some());
        drop(second);
    }

    #[test]
    fn bad_drives_are_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let roots = roots(dir.path());
        std::fs::create_dir_all(dir.path().join("local")).unwrap();
        let image = dir.path().join("local/vm1.img");
        let err = check_spec(&roots, &spec(&image, None)).unwrap_err();
        assert!(err.contains("truncate -s"), "{err}");
        std::fs::File::create(&image).unwrap().set_len(1 << 20).unwrap();
        let err = check_spec(&roots, &spec(&image, Some("2M"))).unwrap_err();
        assert!(err.contains("declares 2M"), "{err}");
        std::fs::File::create(&image).unwrap().set_len(1000).unwrap();
        assert!(check_spec(&roots, &spec(&image, None)).unwrap_err().contains("sectors"));
        let err = check_spec(&roots, &spec(Path::new("/etc/vm.img"), None)).unwrap_err();
        assert!(err.contains("no storage root"), "{err}");
        // An ejected medium need not be here.
        let mut ejected = spec(&image, None);
        std::fs::File::create(&image).unwrap().set_len(1 << 20).unwrap();
        ejected.cdrom = Some(CdromSpec {
            path: dir.path().join("local/gone.iso").display().to_string(),
            connected: false,
        });
        check_spec(&roots, &ejected).unwrap();
    }
}
