//! Requests about one running VM's devices and memory that its VMM answers:
//! inserting and ejecting its CD/DVD medium (in the VMM and the definition),
//! and sampling how fast it dirties memory.

use super::{Agent, Failure, VmInfo};
use crate::api::CdromSpec;
use crate::runtime::control::{DirtySample, Reply, Request as VmmRequest};
use crate::runtime::process::chain;

impl Agent {
    /// Inserts `medium` (an ISO image under a storage root) into the VM's
    /// CD/DVD drive, or ejects it (`None`). A running VM's drive changes at
    /// once; the definition keeps the change for its next boot and its moves.
    pub fn cdrom(&self, name: &str, medium: Option<&str>) -> Result<VmInfo, Failure> {
        let mut vms = self.vms();
        let vm = vms.get_mut(name).ok_or_else(|| Failure::not_found(name))?;
        if let Some(held) = vm.record.held_by_migration() {
            return Err(Failure::new(409, held));
        }
        let spec = &vm.record.spec;
        let (Some(slot), Some(current)) = (spec.cdrom_slot(), spec.cdrom.clone()) else {
            return Err(Failure::new(
                400,
                format!("{name} has no CD/DVD drive (give it one with `cdrom` in its spec)"),
            ));
        };
        let changed = CdromSpec {
            path: medium.map_or(current.path.clone(), str::to_string),
            connected: medium.is_some(),
        };
        let mut next = spec.clone();
        next.cdrom = Some(changed.clone());
        next.validate().map_err(|e| Failure::new(400, e))?;
        super::storage::check_spec(&self.config.storage, &next).map_err(|e| Failure::new(400, e))?;
        if vm.record.pid.is_some() {
            let request = VmmRequest::ChangeMedium {
                slot,
                medium: medium.map(Into::into),
            };
            match vm.dir.request(&request) {
                Ok(Reply::Done) => {}
                Ok(other) => return Err(Failure::new(500, format!("the VMM answered {other:?}"))),
                Err(e) => {
                    let status = match e.code() {
                        Some("disk_locked" | "wrong_state") => 409,
                        Some("invalid" | "disk_open" | "disk_size") => 400,
                        _ => 500,
                    };
                    return Err(Failure::new(
                        status,
                        format!("cannot change {name}'s medium: {}", chain(&e)),
                    ));
                }
            }
        }
        vm.record.spec.cdrom = Some(changed);
        vm.save();
        let view = vm.view();
        drop(vms);
        Ok(self.info(&view))
    }

    /// How fast `name` dirties its memory, over `window_ms` (its VMM counts).
    pub fn sample_dirty(&self, name: &str, window_ms: u32) -> Result<DirtySample, Failure> {
        let view = self.view(name)?;
        if view.record.pid.is_none() {
            return Err(Failure::new(409, format!("{name} is not running")));
        }
        if let Some(held) = view.record.held_by_migration() {
            return Err(Failure::new(409, held));
        }
        match view.dir.request(&VmmRequest::SampleDirty { window_ms }) {
            Ok(Reply::DirtySample(sample)) => Ok(sample),
            Ok(other) => Err(Failure::new(500, format!("the VMM answered {other:?}"))),
            Err(e) => {
                let status = match e.code() {
                    Some("wrong_state") => 409,
                    Some("invalid") => 400,
                    _ => 500,
                };
                Err(Failure::new(
                    status,
                    format!("cannot sample {name}'s dirty rate: {}", chain(&e)),
                ))
            }
        }
    }
}
