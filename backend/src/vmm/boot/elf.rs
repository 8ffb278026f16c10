//! A small, bounds-checked ELF loader for PVH kernels and `vmlinux` images.
//!
//! Unlike linux-loader's, it takes both ELF32 and ELF64 images (PVH kernels
//! written by others are often 32-bit ELF), and reports precisely what is wrong
//! with a file instead of a generic "invalid ELF".

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::BootError;
use crate::vmm::memory::GuestMemory;

const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
const ELFCLASS32: u8 = 1;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// Program header tables larger than this are not kernels.
const MAX_PHNUM: usize = 256;
/// Notes larger than this are not something we need to read.
const MAX_NOTE_SEGMENT: u64 = 1 << 20;

/// What was found in and loaded from an ELF kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedElf {
    /// The ELF entry point (a physical address for Linux's `vmlinux`).
    pub entry: u64,
    /// The 32-bit PVH entry point from the Xen ELF note, if any.
    pub pvh_entry: Option<u32>,
    /// The highest guest-physical address the image occupies.
    pub end: u64,
    pub is_64bit: bool,
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    kind: u32,
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

fn invalid(why: impl Into<String>) -> BootError {
    BootError::InvalidElf(why.into())
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Loads the `PT_LOAD` segments of `file` at their physical addresses.
pub fn load(memory: &GuestMemory, file: &mut File) -> Result<LoadedElf, BootError> {
    let file_len = file.metadata().map_err(BootError::ReadKernel)?.len();
    let mut ident = [0u8; 64];
    file.seek(SeekFrom::Start(0)).map_err(BootError::ReadKernel)?;
    let header_len = file_len.min(64) as usize;
    file.read_exact(&mut ident[..header_len])
        .map_err(BootError::ReadKernel)?;
    if ident[..4] != ELF_MAGIC {
        return Err(invalid("no ELF magic"));
    }
    let class = ident[4];
    if ident[5] != ELFDATA2LSB {
        return Err(invalid("not a little-endian ELF"));
    }
    let (is_64bit, ehsize) = match class {
        ELFCLASS32 => (false, 52usize),
        ELFCLASS64 => (true, 64usize),
        other => return Err(invalid(format!("unknown ELF class {other}"))),
    };
    if header_len < ehsize {
        return Err(invalid("truncated ELF header"));
    }
    let machine = u16_at(&ident, 18);
    if machine != EM_X86_64 && machine != EM_386 {
        return Err(invalid(format!("ELF machine {machine} is not x86")));
    }
    let (entry, phoff, phentsize, phnum) = if is_64bit {
        (
            u64_at(&ident, 24),
            u64_at(&ident, 32),
            u16_at(&ident, 54),
            u16_at(&ident, 56),
        )
    } else {
        (
            u64::from(u32_at(&ident, 24)),
            u64::from(u32_at(&ident, 28)),
            u16_at(&ident, 42),
            u16_at(&ident, 44),
        )
    };
    let expected_phentsize = if is_64bit { 56 } else { 32 };
    if usize::from(phentsize) != expected_phentsize {
        return Err(invalid(format!("program header size {phentsize}")));
    }
    let phnum = usize::from(phnum);
    if phnum == 0 || phnum > MAX_PHNUM {
        return Err(invalid(format!("{phnum} program headers")));
    }
    let table_len = (phnum * expected_phentsize) as u64;
    if phoff.checked_add(table_len).is_none_or(|end| end > file_len) {
        return Err(invalid("program headers lie outside the file"));
    }
    let mut table = vec![0u8; table_len as usize];
    file.seek(SeekFrom::Start(phoff)).map_err(BootError::ReadKernel)?;
    file.read_exact(&mut table).map_err(BootError::ReadKernel)?;

    let segments: Vec<Segment> = table
        .chunks_exact(expected_phentsize)
        .map(|ph| {
            if is_64bit {
                Segment {
                    kind: u32_at(ph, 0),
                    offset: u64_at(ph, 8),
                    paddr: u64_at(ph, 24),
                    filesz: u64_at(ph, 32),
                    memsz: u64_at(ph, 40),
                }
            } else {
                Segment {
                    kind: u32_at(ph, 0),
                    offset: u64::from(u32_at(ph, 4)),
                    paddr: u64::from(u32_at(ph, 12)),
                    filesz: u64::from(u32_at(ph, 16)),
                    memsz: u64::from(u32_at(ph, 20)),
                }
            }
        })
        .collect();

    let mut end = 0u64;
    let mut loaded_any = false;
    let mut pvh_entry = None;
    for segment in &segments {
        if segment.offset.checked_add(segment.filesz).is_none_or(|e| e > file_len) {
            return Err(invalid(format!(
                "segment at file offset {:#x} runs past the end of the file",
                segment.offset
            )));
        }
        match segment.kind {
            PT_LOAD if segment.memsz > 0 => {
                if segment.filesz > segment.memsz {
                    return Err(invalid("segment file size exceeds its memory size"));
                }
                let seg_end = segment
                    .paddr
                    .checked_add(segment.memsz)
                    .ok_or_else(|| invalid("segment address overflows"))?;
                if !memory.check_range(GuestAddress(segment.paddr), segment.memsz as usize) {
                    return Err(BootError::KernelDoesNotFit {
                        addr: segment.paddr,
                        len: segment.memsz,
                    });
                }
                file.seek(SeekFrom::Start(segment.offset))
                    .map_err(BootError::ReadKernel)?;
                memory
                    .read_exact_volatile_from(GuestAddress(segment.paddr), file, segment.filesz as usize)
                    .map_err(|_| BootError::KernelDoesNotFit {
                        addr: segment.paddr,
                        len: segment.filesz,
                    })?;
                end = end.max(seg_end);
                loaded_any = true;
            }
            PT_NOTE if pvh_entry.is_none() => {
                pvh_entry = find_pvh_note(file, segment)?;
            }
            _ => {}
        }
    }
    if !loaded_any {
        return Err(invalid("no loadable segments"));
    }
    Ok(LoadedElf {
        entry,
        pvh_entry,
        end,
        is_64bit,
    })
}

/// Finds `XEN_ELFNOTE_PHYS32_ENTRY` in one note segment.
fn find_pvh_note(file: &mut File, segment: &Segment) -> Result<Option<u32>, BootError> {
    if segment.filesz > MAX_NOTE_SEGMENT {
        return Ok(None);
    }
    let mut notes = vec![0u8; segment.filesz as usize];
    file.seek(SeekFrom::Start(segment.offset))
        .map_err(BootError::ReadKernel)?;
    file.read_exact(&mut notes).map_err(BootError::ReadKernel)?;
    Ok(parse_pvh_note(&notes))
}

/// Walks a buffer of ELF notes (4-byte aligned) looking for the PVH entry.
fn parse_pvh_note(notes: &[u8]) -> Option<u32> {
    let mut at = 0usize;
    while at + 12 <= notes.len() {
        let namesz = u32_at(notes, at) as usize;
        let descsz = u32_at(notes, at + 4) as usize;
        let kind = u32_at(notes, at + 8);
        let name_at = at + 12;
        let desc_at = name_at.checked_add(namesz.next_multiple_of(4))?;
        let next = desc_at.checked_add(descsz.next_multiple_of(4))?;
        if desc_at.checked_add(descsz)? > notes.len() {
            return None;
        }
        let name = &notes[name_at..name_at + namesz];
        if kind == XEN_ELFNOTE_PHYS32_ENTRY && name.starts_with(b"Xen") && descsz >= 4 {
            // The entry is a 32-bit address, stored in 4 or 8 bytes.
            return Some(u32_at(notes, desc_at));
        }
        at = next;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(name);
        out.resize(out.len().next_multiple_of(4), 0);
        out.extend_from_slice(desc);
        out.resize(out.len().next_multiple_of(4), 0);
        out
    }

    #[test]
    fn finds_pvh_note_among_others() {
        let mut notes = note(b"GNU\0", 3, &[1, 2, 3, 4, 5, 6, 7, 8]);
        notes.extend(note(b"Xen\0", 18, &0x0010_0abcu32.to_le_bytes()));
        assert_eq!(parse_pvh_note(&notes), Some(0x0010_0abc));
        let eight_byte = note(b"Xen\0", 18, &0x0020_0000u64.to_le_bytes());
        assert_eq!(parse_pvh_note(&eight_byte), Some(0x0020_0000));
    }

    #[test]
    fn malformed_notes_are_ignored_not_fatal() {
        assert_eq!(parse_pvh_note(&[]), None);
        assert_eq!(parse_pvh_note(&[0xff; 12]), None);
        let mut truncated = note(b"Xen\0", 18, &0x100000u32.to_le_bytes());
        truncated.truncate(18);
        assert_eq!(parse_pvh_note(&truncated), None);
        // An absurd size must not overflow.
        let mut huge = vec![0u8; 12];
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse_pvh_note(&huge), None);
    }
}
