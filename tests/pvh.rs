//! Any PVH kernel boots, not only ours: a minimal 32-bit ELF kernel built here,
//! byte by byte, the way a hobby kernel or another project's would look.

mod common;

use std::time::Duration;

/// 32-bit code: print "PVH ok\n" on COM1, then power off with code 0 via 0xf4.
fn code(start_info_check: bool) -> Vec<u8> {
    let mut code = Vec::new();
    if start_info_check {
        // cmp dword [ebx], 0x336ec578 ; jne fail
        code.extend_from_slice(&[0x81, 0x3b]);
        code.extend_from_slice(&0x336e_c578u32.to_le_bytes());
        code.extend_from_slice(&[0x75, 0x00]); // patched below
    }
    let body_start = code.len();
    code.extend_from_slice(&[0x66, 0xba, 0xf8, 0x03]); // mov dx, 0x3f8
    for byte in b"PVH ok\n" {
        code.extend_from_slice(&[0xb0, *byte, 0xee]); // mov al, byte; out dx, al
    }
    code.extend_from_slice(&[0x66, 0xba, 0xf4, 0x00, 0xb0, 0x00, 0xee]); // out 0xf4, 0
    code.extend_from_slice(&[0xf4, 0xeb, 0xfd]); // hlt; jmp hlt
    if start_info_check {
        let fail = code.len();
        code[body_start - 1] = (fail - body_start) as u8;
        code.extend_from_slice(&[0x66, 0xba, 0xf4, 0x00, 0xb0, 0x09, 0xee, 0xf4, 0xeb, 0xfd]); // out 0xf4, 9
    }
    code
}

/// An ELF32 with one PT_LOAD at 1 MiB and a PT_NOTE holding XEN_ELFNOTE_PHYS32_ENTRY.
fn elf32(code: &[u8]) -> Vec<u8> {
    const LOAD: u32 = 0x10_0000;
    let ehsize = 52u32;
    let phentsize = 32u32;
    let phoff = ehsize;
    let note_off = phoff + 2 * phentsize;
    let mut note = Vec::new();
    note.extend_from_slice(&4u32.to_le_bytes());
    note.extend_from_slice(&4u32.to_le_bytes());
    note.extend_from_slice(&18u32.to_le_bytes());
    note.extend_from_slice(b"Xen\0");
    let code_off = 0x1000u32;
    note.extend_from_slice(&(LOAD + code_off).to_le_bytes());

    let mut elf = vec![0u8; code_off as usize];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 1; // ELFCLASS32
    elf[5] = 1; // little endian
    elf[6] = 1;
    elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf[18..20].copy_from_slice(&3u16.to_le_bytes()); // EM_386
    elf[20..24].copy_from_slice(&1u32.to_le_bytes());
    elf[24..28].copy_from_slice(&(LOAD + code_off).to_le_bytes());
    elf[28..32].copy_from_slice(&phoff.to_le_bytes());
    elf[40..42].copy_from_slice(&(ehsize as u16).to_le_bytes());
    elf[42..44].copy_from_slice(&(phentsize as u16).to_le_bytes());
    elf[44..46].copy_from_slice(&2u16.to_le_bytes());
    let phdr = |kind: u32, offset: u32, addr: u32, size: u32| {
        let mut p = Vec::new();
        for v in [kind, offset, addr, addr, size, size, 5, 4] {
            p.extend_from_slice(&v.to_le_bytes());
        }
        p
    };
    let file_size = code_off + code.len() as u32;
    let load = phdr(1, 0, LOAD, file_size);
    let note_hdr = phdr(4, note_off, LOAD + note_off, note.len() as u32);
    elf[phoff as usize..][..32].copy_from_slice(&load);
    elf[(phoff + phentsize) as usize..][..32].copy_from_slice(&note_hdr);
    elf[note_off as usize..][..note.len()].copy_from_slice(&note);
    elf.extend_from_slice(code);
    elf
}

#[test]
fn a_32_bit_elf_pvh_kernel_boots_and_finds_its_start_info() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("pvh32.elf");
    std::fs::write(&kernel, elf32(&code(true))).unwrap();
    let mut vmm = common::Vmm::start_in(dir, &["--kernel", kernel.to_str().unwrap(), "--memory", "64M"]);
    let status = vmm.wait_exit(Duration::from_secs(30));
    assert!(vmm.console_text().contains("PVH ok"), "console: {}", vmm.console_text());
    assert!(
        status.success(),
        "ebx must point at hvm_start_info: {}",
        vmm.stderr_text()
    );
}
