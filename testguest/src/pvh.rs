//! The PVH `struct hvm_start_info`: command line, ACPI RSDP and the memory map.
//! Everything needed is copied out at boot, before the workload may overwrite RAM.

use crate::phys;

const MAGIC: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;
/// The static page tables map this much physical space.
pub const MAPPED_LIMIT: u64 = 64 << 30;
const MAX_CMDLINE: usize = 1024;
pub const MAX_RANGES: usize = 32;

/// A physical address range [start, end).
#[derive(Clone, Copy, Debug, Default)]
pub struct Range {
    pub start: u64,
    pub end: u64,
}

/// What the loader told us.
#[derive(Debug)]
pub struct BootInfo {
    pub cmdline: [u8; MAX_CMDLINE],
    pub cmdline_len: usize,
    pub rsdp: u64,
    /// RAM (memory-map type 1) below `MAPPED_LIMIT`, sorted.
    pub ram: [Range; MAX_RANGES],
    pub ram_count: usize,
    /// All RAM the memory map reports, in bytes.
    pub ram_bytes: u64,
}

impl BootInfo {
    pub fn cmdline(&self) -> &[u8] {
        &self.cmdline[..self.cmdline_len]
    }

    pub fn ram(&self) -> &[Range] {
        &self.ram[..self.ram_count]
    }
}

/// Parse the start info at `paddr`; `Err` is a message for the console.
pub fn read(paddr: u64) -> Result<BootInfo, &'static str> {
    if phys::read_u32(paddr) != MAGIC {
        return Err("bad hvm_start_info magic");
    }
    let version = phys::read_u32(paddr + 4);
    let cmdline_paddr = phys::read_u64(paddr + 24);
    let rsdp = phys::read_u64(paddr + 32);
    let mut info = BootInfo {
        cmdline: [0; MAX_CMDLINE],
        cmdline_len: 0,
        rsdp,
        ram: [Range::default(); MAX_RANGES],
        ram_count: 0,
        ram_bytes: 0,
    };
    if cmdline_paddr != 0 {
        while info.cmdline_len < MAX_CMDLINE {
            let b = phys::read_u8(cmdline_paddr + info.cmdline_len as u64);
            if b == 0 {
                break;
            }
            info.cmdline[info.cmdline_len] = b;
            info.cmdline_len += 1;
        }
    }
    if version < 1 {
        return Err("hvm_start_info version 0 has no memory map");
    }
    let memmap = phys::read_u64(paddr + 40);
    let entries = phys::read_u32(paddr + 48);
    if memmap == 0 || entries == 0 {
        return Err("hvm_start_info has no memory map");
    }
    for i in 0..u64::from(entries) {
        let entry = memmap + i * 24;
        let (addr, size, kind) = (
            phys::read_u64(entry),
            phys::read_u64(entry + 8),
            phys::read_u32(entry + 16),
        );
        if kind != E820_RAM || size == 0 {
            continue;
        }
        info.ram_bytes += size;
        let end = addr.saturating_add(size).min(MAPPED_LIMIT);
        if addr < end && info.ram_count < MAX_RANGES {
            info.ram[info.ram_count] = Range { start: addr, end };
            info.ram_count += 1;
        }
    }
    info.ram[..info.ram_count].sort_unstable_by_key(|r| r.start);
    Ok(info)
}
