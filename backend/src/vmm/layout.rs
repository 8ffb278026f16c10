//! Where things live in guest-physical memory (x86_64, PC layout).

/// Start of the PVH `hvm_start_info` structure.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd), right after the start info.
pub const PVH_MODLIST_START: u64 = 0x6040;
/// The Linux zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// PVH memory map (one page of `hvm_memmap_table_entry`).
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// The boot GDT the VMM writes for the first vCPU.
pub const BOOT_GDT_START: u64 = 0x500;
/// The boot IDT (empty) the VMM writes for the first vCPU.
pub const BOOT_IDT_START: u64 = 0x520;
/// Identity page tables for the Linux 64-bit entry (PML4, PDPT, PD).
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Initial stack pointer of the first vCPU for the Linux entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line we accept, including its NUL.
pub const CMDLINE_MAX_SIZE: usize = 0x10000;
/// Start of the extended BIOS data area, where the MP table goes.
pub const EBDA_START: u64 = 0x9fc00;
/// End of conventional memory; 0xa0000..1 MiB is the legacy VGA/BIOS hole.
pub const LEGACY_HOLE_START: u64 = 0xa0000;
/// Kernels are loaded at and above 1 MiB.
pub const HIMEM_START: u64 = 0x10_0000;
/// The 32-bit MMIO gap below 4 GiB (IOAPIC, LAPIC live in it).
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// The IOAPIC's MMIO base.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// The local APIC's MMIO base.
pub const APIC_START: u64 = 0xfee0_0000;
/// Addresses KVM needs for its own use on Intel (TSS and identity map pages).
pub const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
