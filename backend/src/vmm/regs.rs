//! The architectural state a vCPU starts from: segments and control registers
//! for the boot entry, boot MSRs, FPU control words and the LAPIC's LINT pins.

use kvm_bindings::{Msrs, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment};
use kvm_ioctls::VcpuFd;
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};

use super::boot::Entry;
use super::layout::*;
use super::memory::GuestMemory;

#[derive(Debug, Error)]
pub enum RegsError {
    #[error("cannot {what} of vCPU")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM accepted only {set} of {wanted} boot MSRs")]
    Msrs { set: usize, wanted: usize },
    #[error("cannot build the MSR list")]
    MsrList(#[source] vmm_sys_util::fam::Error),
    #[error("cannot write the boot {0} into guest memory")]
    Write(&'static str),
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { what, source }
}

/// Boot GDT: null, 32-bit code (0x08, PVH), 64-bit code (0x10, Linux's
/// `__BOOT_CS`), data (0x18, `__BOOT_DS`), TSS (0x20).
const BOOT_GDT: [u64; 5] = [
    0,
    gdt_entry(0xc09b, 0, 0xfffff),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];
const CODE32: u16 = 1;
const CODE64: u16 = 2;
const DATA: u16 = 3;
const TSS: u16 = 4;

const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

fn segment(index: u16) -> kvm_segment {
    let entry = BOOT_GDT[usize::from(index)];
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let granular = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base,
        limit: if granular == 1 { (limit << 12) | 0xfff } else { limit },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granular,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// Writes the GDT/IDT (and for Linux the identity page tables) and sets the
/// first vCPU's registers for `entry`.
pub fn setup_boot_vcpu(vcpu: &VcpuFd, memory: &GuestMemory, entry: Entry) -> Result<(), RegsError> {
    let mut gdt = Vec::with_capacity(BOOT_GDT.len() * 8);
    for descriptor in BOOT_GDT {
        gdt.extend_from_slice(&descriptor.to_le_bytes());
    }
    memory
        .write_slice(&gdt, GuestAddress(BOOT_GDT_START))
        .and_then(|()| memory.write_obj(0u64, GuestAddress(BOOT_IDT_START)))
        .map_err(|_| RegsError::Write("GDT"))?;

    let mut sregs = vcpu.get_sregs().map_err(kvm("read special registers"))?;
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (BOOT_GDT.len() * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    let data = segment(DATA);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(TSS);

    let mut regs = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    match entry {
        Entry::Pvh { entry, start_info } => {
            sregs.cs = segment(CODE32);
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = entry;
            regs.rbx = start_info;
        }
        Entry::Linux64 { entry, zero_page } => {
            write_identity_page_tables(memory)?;
            sregs.cs = segment(CODE64);
            sregs.cr3 = PML4_START;
            sregs.cr4 = X86_CR4_PAE;
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.efer = EFER_LME | EFER_LMA;
            regs.rip = entry;
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = zero_page;
        }
    }
    vcpu.set_sregs(&sregs).map_err(kvm("set special registers"))?;
    vcpu.set_regs(&regs).map_err(kvm("set registers"))
}

/// Identity-maps the first 1 GiB with 2 MiB pages, as the Linux 64-bit entry needs.
fn write_identity_page_tables(memory: &GuestMemory) -> Result<(), RegsError> {
    let write = |value: u64, at: u64| {
        memory
            .write_obj(value, GuestAddress(at))
            .map_err(|_| RegsError::Write("page tables"))
    };
    write(PDPTE_START | 0x3, PML4_START)?;
    write(PDE_START | 0x3, PDPTE_START)?;
    for i in 0..512u64 {
        write((i << 21) | 0x83, PDE_START + i * 8)?;
    }
    Ok(())
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

/// Puts every vCPU's MSRs, FPU and LAPIC into the state a booting guest expects.
pub fn setup_vcpu_common(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect();
    let msrs = Msrs::from_entries(&entries).map_err(RegsError::MsrList)?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm("set boot MSRs"))?;
    if set != entries.len() {
        return Err(RegsError::Msrs {
            set,
            wanted: entries.len(),
        });
    }

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("set FPU"))?;

    // LINT0 delivers ExtINT (the PIC), LINT1 NMI, as a PC's BIOS leaves them.
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const DELIVERY_EXTINT: u32 = 0x7;
    const DELIVERY_NMI: u32 = 0x4;
    let mut lapic = vcpu.get_lapic().map_err(kvm("read LAPIC"))?;
    for (offset, mode) in [(APIC_LVT0, DELIVERY_EXTINT), (APIC_LVT1, DELIVERY_NMI)] {
        let bytes: &mut [u8] = {
            // SAFETY: `regs` is a plain [c_char; 1024]; viewing it as bytes is sound.
            unsafe { std::slice::from_raw_parts_mut(lapic.regs.as_mut_ptr().cast::<u8>(), lapic.regs.len()) }
        };
        let value = u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"));
        let value = (value & !0x700) | (mode << 8);
        bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    }
    vcpu.set_lapic(&lapic).map_err(kvm("set LAPIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_decode_from_the_gdt() {
        let code64 = segment(CODE64);
        assert_eq!((code64.l, code64.db, code64.type_, code64.selector), (1, 0, 0xb, 0x10));
        assert_eq!(code64.limit, 0xffff_ffff);
        let code32 = segment(CODE32);
        assert_eq!((code32.l, code32.db, code32.selector), (0, 1, 0x08));
        let tss = segment(TSS);
        assert_eq!((tss.type_, tss.s, tss.present), (0xb, 0, 1));
        let data = segment(DATA);
        assert_eq!((data.type_, data.s, data.selector), (0x3, 1, 0x18));
    }

    #[test]
    fn gdt_entry_encodes_like_the_manuals() {
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
    }
}
