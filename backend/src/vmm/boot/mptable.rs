//! The Intel MultiProcessor Specification 1.4 table, which tells a guest without
//! ACPI how many CPUs it has and how legacy interrupts reach its IOAPIC. Linux
//! and our test guest both read it.

use vm_memory::{Bytes, GuestAddress};

use super::BootError;
use crate::vmm::layout::{APIC_START, EBDA_START, IOAPIC_START};
use crate::vmm::memory::GuestMemory;

/// Where the configuration table goes: below the EBDA, in reserved memory.
pub const MPTABLE_START: u64 = 0x9e000;
/// The most vCPUs the table (and 8-bit xAPIC IDs) can describe.
pub const MAX_CPUS: u8 = 254;

/// BIOS data area fields: the EBDA's segment, and base memory in KiB.
const BDA_EBDA_SEGMENT: u64 = 0x40e;
const BDA_BASE_MEMORY_KIB: u64 = 0x413;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const CPU_SIGNATURE: u32 = 0x600; // family 6
const CPU_FEATURES: u32 = 0x201; // FPU | APIC
const LEGACY_IRQS: u8 = 16;
const ISA_BUS: u8 = 0;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)).wrapping_neg()
}

/// Builds the MP configuration table body and header for `cpus` processors.
fn config_table(cpus: u8) -> Vec<u8> {
    let ioapic_id = cpus;
    let mut entries = Vec::new();
    for cpu in 0..cpus {
        entries.push(ENTRY_PROCESSOR);
        entries.push(cpu);
        entries.push(APIC_VERSION);
        entries.push(CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 });
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
    }
    entries.extend_from_slice(&[ENTRY_BUS, ISA_BUS]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    for irq in 0..LEGACY_IRQS {
        entries.extend_from_slice(&[ENTRY_IO_INTERRUPT, INT_TYPE_INT, 0, 0, ISA_BUS, irq, ioapic_id, irq]);
    }
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0, ISA_BUS, 0, 0, 0]);
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0, ISA_BUS, 0, 0xff, 1]);
    let entry_count = u16::from(cpus) + 1 + 1 + u16::from(LEGACY_IRQS) + 2;

    let total = 44 + entries.len();
    let mut table = Vec::with_capacity(total);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&(total as u16).to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"VMIG    ");
    table.extend_from_slice(b"KVM-VMM     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&entry_count.to_le_bytes());
    table.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    table.extend_from_slice(&0u16.to_le_bytes()); // extended table
    table.push(0);
    table.push(0);
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);
    table
}

/// Writes the floating pointer (at the EBDA) and the configuration table.
pub fn write(memory: &GuestMemory, cpus: u8) -> Result<(), BootError> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(BootError::TooManyCpus { cpus });
    }
    let table = config_table(cpus);
    debug_assert!(MPTABLE_START + table.len() as u64 <= EBDA_START);
    let mut pointer = Vec::with_capacity(16);
    pointer.extend_from_slice(b"_MP_");
    pointer.extend_from_slice(&(MPTABLE_START as u32).to_le_bytes());
    pointer.push(1); // length in 16-byte units
    pointer.push(4); // spec revision
    pointer.push(0); // checksum, below
    pointer.extend_from_slice(&[0u8; 5]); // features: a configuration table is present
    pointer[10] = checksum(&pointer);
    // The BIOS data area says where the EBDA is and how much base memory there
    // is, as a PC BIOS leaves them; MP-table scanners start from these.
    let ebda_segment = (EBDA_START >> 4) as u16;
    let base_kib = (EBDA_START >> 10) as u16;
    memory
        .write_slice(&table, GuestAddress(MPTABLE_START))
        .and_then(|()| memory.write_slice(&pointer, GuestAddress(EBDA_START)))
        .and_then(|()| memory.write_obj(ebda_segment, GuestAddress(BDA_EBDA_SEGMENT)))
        .and_then(|()| memory.write_obj(base_kib, GuestAddress(BDA_BASE_MEMORY_KIB)))
        .map_err(|_| BootError::WriteBootData("MP table"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_add_up_to_zero_and_sizes_fit() {
        for cpus in [1u8, 2, 16, MAX_CPUS] {
            let table = config_table(cpus);
            assert_eq!(table.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
            assert_eq!(u16::from_le_bytes([table[4], table[5]]) as usize, table.len());
            assert!(MPTABLE_START + table.len() as u64 <= EBDA_START, "{cpus} cpus");
        }
    }
}
