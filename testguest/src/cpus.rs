//! Which CPUs the machine has: local APIC IDs from the ACPI MADT (when the loader
//! passed an RSDP) and from the Intel MP table, merged. The BSP always comes first.

use crate::boot::MAX_CPUS;
use crate::phys;

/// APIC IDs of the usable CPUs; `ids[0]` is the BSP.
#[derive(Debug)]
pub struct CpuList {
    ids: [u8; MAX_CPUS],
    count: usize,
}

impl CpuList {
    pub fn ids(&self) -> &[u8] {
        &self.ids[..self.count]
    }

    fn add(&mut self, apic_id: u8) {
        if apic_id != 0xff && self.count < MAX_CPUS && !self.ids().contains(&apic_id) {
            self.ids[self.count] = apic_id;
            self.count += 1;
        }
    }
}

pub fn discover(bsp_apic_id: u8, rsdp: u64) -> CpuList {
    let mut list = CpuList {
        ids: [0; MAX_CPUS],
        count: 0,
    };
    list.add(bsp_apic_id);
    if rsdp != 0 {
        madt_cpus(rsdp, &mut list);
    }
    if let Some(config) = find_mp_config() {
        mp_cpus(config, &mut list);
    }
    list
}

/// Tables past this are assumed corrupt rather than walked.
const MAX_TABLE_LEN: u64 = 1 << 20;

fn madt_cpus(rsdp: u64, list: &mut CpuList) {
    if !phys::matches(rsdp, b"RSD PTR ") || !phys::checksum_ok(rsdp, 20) {
        return;
    }
    let revision = phys::read_u8(rsdp + 15);
    let xsdt = if revision >= 2 { phys::read_u64(rsdp + 24) } else { 0 };
    let (root, entry_size) = if xsdt != 0 {
        (xsdt, 8)
    } else {
        (u64::from(phys::read_u32(rsdp + 16)), 4)
    };
    if root == 0 {
        return;
    }
    let root_len = u64::from(phys::read_u32(root + 4)).min(MAX_TABLE_LEN);
    let mut at = root + 36;
    while at + entry_size <= root + root_len {
        let table = if entry_size == 8 {
            phys::read_u64(at)
        } else {
            u64::from(phys::read_u32(at))
        };
        at += entry_size;
        if table != 0 && phys::matches(table, b"APIC") {
            madt_entries(table, list);
        }
    }
}

fn madt_entries(madt: u64, list: &mut CpuList) {
    let end = madt + u64::from(phys::read_u32(madt + 4)).min(MAX_TABLE_LEN);
    let mut at = madt + 44;
    while at + 2 <= end {
        let (kind, len) = (phys::read_u8(at), u64::from(phys::read_u8(at + 1)));
        if len < 2 {
            break;
        }
        match kind {
            // Processor local APIC: ACPI id, APIC id, flags (bit 0: enabled).
            0 if phys::read_u32(at + 4) & 1 != 0 => list.add(phys::read_u8(at + 3)),
            // Processor local x2APIC, usable here only if its ID fits the xAPIC.
            9 if phys::read_u32(at + 8) & 1 != 0 => {
                if let Ok(id) = u8::try_from(phys::read_u32(at + 4)) {
                    list.add(id);
                }
            }
            _ => {}
        }
        at += len;
    }
}

/// The MP configuration table, from the floating pointer in the first KiB of the
/// EBDA, the last KiB of base memory, or the BIOS ROM area.
fn find_mp_config() -> Option<u64> {
    let ebda = u64::from(phys::read_u16(0x40e)) << 4;
    let base_top = (u64::from(phys::read_u16(0x413)) * 1024).clamp(1024, 640 * 1024);
    // Like Linux, also look at 639 KiB: loaders that write no BIOS data area
    // still put the pointer where a 640 KiB PC's EBDA would be.
    let areas = [
        (ebda, 1024),
        (base_top - 1024, 1024),
        (0x9_fc00, 1024),
        (0xf_0000, 0x1_0000),
    ];
    for (start, len) in areas {
        if start == 0 && len == 1024 {
            continue;
        }
        let mut at = start;
        while at + 16 <= start + len {
            if phys::matches(at, b"_MP_") && phys::checksum_ok(at, 16) {
                let config = u64::from(phys::read_u32(at + 4));
                return (config != 0 && phys::matches(config, b"PCMP")).then_some(config);
            }
            at += 16;
        }
    }
    None
}

fn mp_cpus(config: u64, list: &mut CpuList) {
    let end = config + u64::from(phys::read_u16(config + 4));
    let count = phys::read_u16(config + 34);
    let mut at = config + 44;
    for _ in 0..count {
        if at >= end {
            break;
        }
        match phys::read_u8(at) {
            0 => {
                // Processor: APIC id, version, flags (bit 0: enabled).
                if phys::read_u8(at + 3) & 1 != 0 {
                    list.add(phys::read_u8(at + 1));
                }
                at += 20;
            }
            1..=4 => at += 8,
            _ => break,
        }
    }
}
