//! Loading a kernel into guest memory and describing how the first vCPU enters it.
//!
//! Two boot protocols:
//! - **PVH** (Xen ELF note 18): 32-bit protected mode, paging off, `ebx` pointing
//!   at `hvm_start_info` with the memory map, command line and modules.
//! - **Linux 64-bit boot protocol** for bzImage and `vmlinux` without a PVH note:
//!   long mode with identity page tables, `rsi` pointing at the zero page.

pub mod elf;
pub mod mptable;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{KernelLoader, bzimage::BzImage};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::layout::*;
use super::memory::GuestMemory;

#[derive(Debug, Error)]
pub enum BootError {
    #[error("cannot open kernel {path}")]
    OpenKernel {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open initrd {path}")]
    OpenInitrd {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("there is no built-in kernel {name:?}; built in: testguest")]
    UnknownBuiltin { name: String },
    #[error("cannot read the kernel image")]
    ReadKernel(#[source] std::io::Error),
    #[error(
        "{path} is not a bootable kernel: expected a PVH ELF (with Xen note 18), \
         a Linux bzImage or a 64-bit vmlinux ELF"
    )]
    UnknownFormat { path: PathBuf },
    #[error("invalid ELF kernel: {0}")]
    InvalidElf(String),
    #[error("ELF kernel has neither a PVH entry note nor a 64-bit Linux entry")]
    NoEntry,
    #[error("invalid bzImage")]
    BzImage(#[source] linux_loader::loader::Error),
    #[error("bzImage does not support the 64-bit boot protocol (XLF_KERNEL_64 unset)")]
    BzImageNot64Bit,
    #[error("kernel segment at {addr:#x} ({len} bytes) does not fit in guest memory")]
    KernelDoesNotFit { addr: u64, len: u64 },
    #[error("initrd of {size} bytes does not fit in guest memory below {limit:#x}")]
    InitrdDoesNotFit { size: u64, limit: u64 },
    #[error("kernel command line is {len} bytes; at most {max} fit")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("kernel command line contains a NUL byte")]
    CmdlineNul,
    #[error("cannot write the {0} into guest memory")]
    WriteBootData(&'static str),
    #[error("{cpus} vCPUs cannot be described; 1 to 254 are supported")]
    TooManyCpus { cpus: u8 },
}

/// Where a kernel comes from: a file, or an image built into vmig.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSource {
    Path(PathBuf),
    Builtin { name: String, image: &'static [u8] },
}

impl KernelSource {
    /// Reads a kernel argument: a path, or `builtin:NAME` for an image built into vmig.
    pub fn from_spec(spec: &str) -> Result<Self, BootError> {
        match spec.strip_prefix("builtin:") {
            Some(name) if name == crate::testguest::NAME => Ok(KernelSource::Builtin {
                name: name.to_string(),
                image: crate::testguest::IMAGE,
            }),
            Some(name) => Err(BootError::UnknownBuiltin { name: name.to_string() }),
            None => Ok(KernelSource::Path(PathBuf::from(spec))),
        }
    }
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct BootConfig {
    pub kernel: KernelSource,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
}

/// How the first vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// 32-bit protected mode at `entry`, `ebx` = `start_info`.
    Pvh { entry: u64, start_info: u64 },
    /// 64-bit long mode at `entry`, `rsi` = `zero_page`.
    Linux64 { entry: u64, zero_page: u64 },
}

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const PVH_START_MAGIC: u32 = 0x336e_c578;
const BZIMAGE_MAGIC: u32 = 0x5372_6448; // "HdrS"
const XLF_KERNEL_64: u16 = 1;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const LOADFLAG_CAN_USE_HEAP: u8 = 0x80;
const PAGE: u64 = 4096;

/// The guest's memory map, shared by the PVH memmap and the e820 table.
pub fn memory_map(memory: &GuestMemory) -> Vec<(u64, u64, u32)> {
    let mut map = vec![
        (0, mptable::MPTABLE_START, E820_RAM),
        (
            mptable::MPTABLE_START,
            HIMEM_START - mptable::MPTABLE_START,
            E820_RESERVED,
        ),
    ];
    for region in memory.iter() {
        let start = region.start_addr().0.max(HIMEM_START);
        let end = region.start_addr().0 + region.len();
        if end > start {
            map.push((start, end - start, E820_RAM));
        }
    }
    map
}

fn open_kernel(source: &KernelSource) -> Result<(File, PathBuf), BootError> {
    match source {
        KernelSource::Path(path) => {
            File::open(path)
                .map(|f| (f, path.clone()))
                .map_err(|source| BootError::OpenKernel {
                    path: path.clone(),
                    source,
                })
        }
        KernelSource::Builtin { name, image } => {
            let path = PathBuf::from(format!("builtin:{name}"));
            let file = memfd_with(name, image).map_err(|source| BootError::OpenKernel {
                path: path.clone(),
                source,
            })?;
            Ok((file, path))
        }
    }
}

/// An anonymous file holding `bytes`, so built-in images load like files.
fn memfd_with(name: &str, bytes: &[u8]) -> std::io::Result<File> {
    use nix::sys::memfd::{MFdFlags, memfd_create};
    use std::io::Write;
    let mut file = File::from(memfd_create(name, MFdFlags::MFD_CLOEXEC)?);
    file.write_all(bytes)?;
    file.seek(SeekFrom::Start(0))?;
    Ok(file)
}

enum Format {
    Elf,
    BzImage,
}

fn detect(file: &mut File, path: &Path) -> Result<Format, BootError> {
    let mut head = [0u8; 0x206];
    file.seek(SeekFrom::Start(0)).map_err(BootError::ReadKernel)?;
    let mut read = 0;
    while read < head.len() {
        match file.read(&mut head[read..]).map_err(BootError::ReadKernel)? {
            0 => break,
            n => read += n,
        }
    }
    if read >= 4 && head[..4] == [0x7f, b'E', b'L', b'F'] {
        return Ok(Format::Elf);
    }
    if read >= 0x206 && u32::from_le_bytes(head[0x202..0x206].try_into().expect("4 bytes")) == BZIMAGE_MAGIC {
        return Ok(Format::BzImage);
    }
    Err(BootError::UnknownFormat {
        path: path.to_path_buf(),
    })
}

fn write_cmdline(memory: &GuestMemory, cmdline: &str) -> Result<(), BootError> {
    if cmdline.contains('\0') {
        return Err(BootError::CmdlineNul);
    }
    if cmdline.len() + 1 > CMDLINE_MAX_SIZE {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max: CMDLINE_MAX_SIZE - 1,
        });
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    memory
        .write_slice(&bytes, GuestAddress(CMDLINE_START))
        .map_err(|_| BootError::WriteBootData("command line"))
}

/// Loads the initrd at the top of low memory (below `limit`), above `kernel_end`.
fn load_initrd(memory: &GuestMemory, path: &Path, kernel_end: u64, limit: u64) -> Result<(u64, u64), BootError> {
    let mut file = File::open(path).map_err(|source| BootError::OpenInitrd {
        path: path.to_path_buf(),
        source,
    })?;
    let size = file
        .metadata()
        .map_err(|source| BootError::OpenInitrd {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let low_end = memory
        .iter()
        .next()
        .map(|r| r.start_addr().0 + r.len())
        .unwrap_or(0)
        .min(limit);
    let start = low_end
        .checked_sub(size)
        .map(|s| s & !(PAGE - 1))
        .filter(|s| *s >= kernel_end.next_multiple_of(PAGE))
        .ok_or(BootError::InitrdDoesNotFit { size, limit: low_end })?;
    memory
        .read_exact_volatile_from(GuestAddress(start), &mut file, size as usize)
        .map_err(|_| BootError::InitrdDoesNotFit { size, limit: low_end })?;
    Ok((start, size))
}

/// Loads the kernel (and initrd, command line, MP table, boot structures) and
/// says how to enter it.
pub fn load(memory: &GuestMemory, config: &BootConfig, cpus: u8) -> Result<Entry, BootError> {
    let (mut file, path) = open_kernel(&config.kernel)?;
    mptable::write(memory, cpus)?;
    write_cmdline(memory, &config.cmdline)?;
    match detect(&mut file, &path)? {
        Format::Elf => {
            let loaded = elf::load(memory, &mut file)?;
            if let Some(entry) = loaded.pvh_entry {
                boot_pvh(memory, config, u64::from(entry), loaded.end)
            } else if loaded.is_64bit {
                boot_linux(memory, config, None, loaded.entry, loaded.end)
            } else {
                Err(BootError::NoEntry)
            }
        }
        Format::BzImage => {
            let result =
                BzImage::load(memory, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(BootError::BzImage)?;
            let header = result.setup_header.ok_or(BootError::BzImageNot64Bit)?;
            if header.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(BootError::BzImageNot64Bit);
            }
            // The 64-bit entry sits 0x200 bytes into the protected-mode kernel.
            let entry = result.kernel_load.0 + 0x200;
            boot_linux(memory, config, Some(header), entry, result.kernel_end)
        }
    }
}

fn boot_pvh(memory: &GuestMemory, config: &BootConfig, entry: u64, kernel_end: u64) -> Result<Entry, BootError> {
    let map = memory_map(memory);
    let mut memmap = Vec::with_capacity(map.len() * 24);
    for (addr, size, kind) in &map {
        memmap.extend_from_slice(&addr.to_le_bytes());
        memmap.extend_from_slice(&size.to_le_bytes());
        memmap.extend_from_slice(&kind.to_le_bytes());
        memmap.extend_from_slice(&0u32.to_le_bytes());
    }
    let mut modules = 0u32;
    if let Some(initrd) = &config.initrd {
        let (start, size) = load_initrd(memory, initrd, kernel_end, MMIO_GAP_START)?;
        let mut module = Vec::with_capacity(32);
        module.extend_from_slice(&start.to_le_bytes());
        module.extend_from_slice(&size.to_le_bytes());
        module.extend_from_slice(&[0u8; 16]);
        memory
            .write_slice(&module, GuestAddress(PVH_MODLIST_START))
            .map_err(|_| BootError::WriteBootData("PVH module list"))?;
        modules = 1;
    }
    let mut info = Vec::with_capacity(56);
    info.extend_from_slice(&PVH_START_MAGIC.to_le_bytes());
    info.extend_from_slice(&1u32.to_le_bytes()); // version
    info.extend_from_slice(&0u32.to_le_bytes()); // flags
    info.extend_from_slice(&modules.to_le_bytes());
    info.extend_from_slice(&(if modules > 0 { PVH_MODLIST_START } else { 0 }).to_le_bytes());
    info.extend_from_slice(&CMDLINE_START.to_le_bytes());
    info.extend_from_slice(&0u64.to_le_bytes()); // no ACPI RSDP
    info.extend_from_slice(&PVH_MEMMAP_START.to_le_bytes());
    info.extend_from_slice(&(map.len() as u32).to_le_bytes());
    info.extend_from_slice(&0u32.to_le_bytes());
    memory
        .write_slice(&memmap, GuestAddress(PVH_MEMMAP_START))
        .and_then(|()| memory.write_slice(&info, GuestAddress(PVH_INFO_START)))
        .map_err(|_| BootError::WriteBootData("PVH start info"))?;
    Ok(Entry::Pvh {
        entry,
        start_info: PVH_INFO_START,
    })
}

fn boot_linux(
    memory: &GuestMemory,
    config: &BootConfig,
    header: Option<linux_loader::loader::bootparam::setup_header>,
    entry: u64,
    kernel_end: u64,
) -> Result<Entry, BootError> {
    let mut params = boot_params::default();
    if let Some(header) = header {
        params.hdr = header;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = BZIMAGE_MAGIC;
    params.hdr.loadflags |= LOADFLAG_CAN_USE_HEAP;
    params.hdr.heap_end_ptr = 0xfe00;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = config.cmdline.len() as u32 + 1;
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = 0x0100_0000;
    }
    if let Some(initrd) = &config.initrd {
        let limit = match params.hdr.initrd_addr_max {
            0 => 0x37ff_ffff,
            max => u64::from(max) + 1,
        };
        let (start, size) = load_initrd(memory, initrd, kernel_end, limit.min(MMIO_GAP_START))?;
        params.hdr.ramdisk_image = start as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let map = memory_map(memory);
    for (slot, (addr, size, kind)) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *kind,
        };
    }
    params.e820_entries = map.len() as u8;
    memory
        .write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(|_| BootError::WriteBootData("zero page"))?;
    Ok(Entry::Linux64 {
        entry,
        zero_page: ZERO_PAGE_START,
    })
}
