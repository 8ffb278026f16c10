//! Guest memory: anonymous mappings registered as KVM memory slots.
//!
//! Memory is mapped `MAP_NORESERVE` so that an untouched page costs the host
//! nothing. Each region carries a vm-memory `AtomicBitmap`, which records the
//! pages the VMM itself writes; together with KVM's dirty log that is what the
//! migration engine sends again.

use nix::unistd::Whence;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use kvm_bindings::{KVM_MEM_LOG_DIRTY_PAGES, kvm_userspace_memory_region};
use kvm_ioctls::VmFd;
use thiserror::Error;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap};

use super::layout::{MMIO_GAP_END, MMIO_GAP_START};

/// Guest memory as the VMM sees it.
pub type GuestMemory = vm_memory::GuestMemoryMmap<AtomicBitmap>;

/// Smallest guest we run: below this a kernel has nowhere to live.
pub const MIN_MEMORY: u64 = 64 << 20;
/// Largest guest we accept; the identity map of our test guest covers 64 GiB.
pub const MAX_MEMORY: u64 = 1 << 40;
/// Guest memory sizes must be a multiple of this.
pub const MEMORY_ALIGN: u64 = 2 << 20;

const PAGE_SIZE: usize = 4096;

#[derive(Debug, Error)]
pub enum MemoryError {
    #[error("memory size {size} is out of range: it must be between 64 MiB and 1 TiB")]
    SizeOutOfRange { size: u64 },
    #[error("memory size {size} is not a multiple of 2 MiB")]
    SizeUnaligned { size: u64 },
    #[error("cannot map {size} bytes of guest memory")]
    Map {
        size: u64,
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    #[error("cannot assemble guest memory")]
    Assemble(#[source] vm_memory::GuestRegionCollectionError),
    #[error("KVM refused memory slot {slot}")]
    SetSlot {
        slot: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("guest memory access out of range at {addr:#x}")]
    OutOfRange { addr: u64 },
    #[error("memory image I/O failed")]
    Io(#[source] std::io::Error),
    #[error("memory image is {found} bytes, expected {expected}")]
    ImageSize { found: u64, expected: u64 },
}

/// The RAM ranges of a guest with `size` bytes: below the MMIO gap, then above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START),
            (GuestAddress(MMIO_GAP_END), size - MMIO_GAP_START),
        ]
    }
}

/// Checks an operator-requested memory size.
pub fn validate_size(size: u64) -> Result<(), MemoryError> {
    if !(MIN_MEMORY..=MAX_MEMORY).contains(&size) {
        return Err(MemoryError::SizeOutOfRange { size });
    }
    if !size.is_multiple_of(MEMORY_ALIGN) {
        return Err(MemoryError::SizeUnaligned { size });
    }
    Ok(())
}

/// Maps `size` bytes of anonymous guest memory; nothing is touched yet.
pub fn create(size: u64) -> Result<GuestMemory, MemoryError> {
    validate_size(size)?;
    let mut regions = Vec::new();
    for (base, len) in ram_ranges(size) {
        // The bitmap must be sized here: the builder's plain `new` gives an
        // empty one, which drops every mark (and with it the VMM's writes
        // from a migration's dirty set).
        let bitmap = <AtomicBitmap as vm_memory::bitmap::NewBitmap>::with_len(len as usize);
        let mapping = MmapRegionBuilder::new_with_bitmap(len as usize, bitmap)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|source| MemoryError::Map { size: len, source })?;
        let region = GuestRegionMmap::new(mapping, base).ok_or(MemoryError::Map {
            size: len,
            source: vm_memory::mmap::MmapRegionError::InvalidPointer,
        })?;
        regions.push(region);
    }
    GuestMemory::from_regions(regions).map_err(MemoryError::Assemble)
}

/// Registers every region of `memory` with KVM, slot `i` for region `i`.
pub fn register_slots(vm: &VmFd, memory: &GuestMemory, log_dirty: bool) -> Result<(), MemoryError> {
    for (slot, region) in memory.iter().enumerate() {
        let slot = slot as u32;
        let host = memory
            .get_host_address(region.start_addr())
            .map_err(|_| MemoryError::OutOfRange {
                addr: region.start_addr().0,
            })?;
        let descriptor = kvm_userspace_memory_region {
            slot,
            flags: if log_dirty { KVM_MEM_LOG_DIRTY_PAGES } else { 0 },
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the host range [userspace_addr, +memory_size) is a live mapping
        // owned by `memory`, which outlives the VM's use of it (the VMM drops the
        // VM file descriptor before the memory).
        unsafe { vm.set_user_memory_region(descriptor) }.map_err(|source| MemoryError::SetSlot { slot, source })?;
    }
    Ok(())
}

/// Host resident bytes of guest memory (pages the guest or VMM touched).
pub fn resident_bytes(memory: &GuestMemory) -> u64 {
    let mut total = 0u64;
    for region in memory.iter() {
        let Ok(host) = memory.get_host_address(region.start_addr()) else {
            continue;
        };
        let pages = (region.len() as usize).div_ceil(PAGE_SIZE);
        let mut vec = vec![0u8; pages];
        // SAFETY: `host` is the page-aligned start of a mapping of `region.len()`
        // bytes and `vec` has one byte per page of it, as mincore(2) requires.
        let rc = unsafe { libc::mincore(host.cast(), region.len() as usize, vec.as_mut_ptr()) };
        if rc == 0 {
            total += vec.iter().filter(|b| **b & 1 != 0).count() as u64 * PAGE_SIZE as u64;
        }
    }
    total
}

fn is_zero(page: &[u8]) -> bool {
    let (prefix, words, suffix) = {
        // SAFETY: any byte pattern is a valid u64.
        unsafe { page.align_to::<u64>() }
    };
    prefix.iter().all(|b| *b == 0) && suffix.iter().all(|b| *b == 0) && words.iter().all(|w| *w == 0)
}

/// Writes all of guest memory to `file` as one flat image (region after region),
/// leaving zero pages as holes so an idle guest's image costs little disk.
pub fn save_image(memory: &GuestMemory, file: &mut File) -> Result<u64, MemoryError> {
    let total: u64 = memory.iter().map(|r| r.len()).sum();
    file.set_len(0).map_err(MemoryError::Io)?;
    file.set_len(total).map_err(MemoryError::Io)?;
    let mut offset = 0u64;
    let mut written = 0u64;
    for region in memory.iter() {
        let host = memory
            .get_host_address(region.start_addr())
            .map_err(|_| MemoryError::OutOfRange {
                addr: region.start_addr().0,
            })?;
        let len = region.len() as usize;
        // SAFETY: the region's mapping is `len` bytes long and lives as long as
        // `memory`; the VM is paused, so no vCPU writes it while we read.
        let bytes = unsafe { std::slice::from_raw_parts(host as *const u8, len) };
        let mut page = 0;
        while page < len {
            let end = (page + PAGE_SIZE).min(len);
            if is_zero(&bytes[page..end]) {
                page = end;
                continue;
            }
            // Coalesce a run of non-zero pages into one write.
            let run_start = page;
            let mut run_end = end;
            while run_end < len && run_end - run_start < (8 << 20) {
                let next = (run_end + PAGE_SIZE).min(len);
                if is_zero(&bytes[run_end..next]) {
                    break;
                }
                run_end = next;
            }
            file.write_all_at(&bytes[run_start..run_end], offset + run_start as u64)
                .map_err(MemoryError::Io)?;
            written += (run_end - run_start) as u64;
            page = run_end;
        }
        offset += region.len();
    }
    file.flush().map_err(MemoryError::Io)?;
    Ok(written)
}

/// Loads a flat image written by [`save_image`] into fresh guest memory,
/// reading only the file's data extents so holes stay untouched.
pub fn load_image(memory: &GuestMemory, file: &mut File) -> Result<(), MemoryError> {
    let total: u64 = memory.iter().map(|r| r.len()).sum();
    let found = file.metadata().map_err(MemoryError::Io)?.len();
    if found != total {
        return Err(MemoryError::ImageSize { found, expected: total });
    }
    let mut offset = 0u64;
    for region in memory.iter() {
        let host = memory
            .get_host_address(region.start_addr())
            .map_err(|_| MemoryError::OutOfRange {
                addr: region.start_addr().0,
            })?;
        let len = region.len();
        // SAFETY: the mapping is `len` bytes and no vCPU runs yet.
        let bytes = unsafe { std::slice::from_raw_parts_mut(host, len as usize) };
        let mut pos = 0u64;
        while pos < len {
            let Some(data) = seek_data(file, offset + pos)? else {
                break;
            };
            if data >= offset + len {
                break;
            }
            let hole = seek_hole(file, data)?.min(offset + len);
            let start = (data - offset) as usize;
            let end = (hole - offset) as usize;
            file.seek(SeekFrom::Start(data)).map_err(MemoryError::Io)?;
            file.read_exact(&mut bytes[start..end]).map_err(MemoryError::Io)?;
            pos = hole - offset;
        }
        offset += len;
    }
    Ok(())
}

fn seek_data(file: &File, from: u64) -> Result<Option<u64>, MemoryError> {
    lseek(file, from, Whence::SeekData)
}

fn seek_hole(file: &File, from: u64) -> Result<u64, MemoryError> {
    Ok(lseek(file, from, Whence::SeekHole)?.unwrap_or(from))
}

/// None past the last data (or hole): ENXIO.
fn lseek(file: &File, from: u64, whence: Whence) -> Result<Option<u64>, MemoryError> {
    match nix::unistd::lseek(file, from as libc::off_t, whence) {
        Ok(at) => Ok(Some(at as u64)),
        Err(nix::errno::Errno::ENXIO) => Ok(None),
        Err(errno) => Err(MemoryError::Io(errno.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn ranges_split_around_the_mmio_gap() {
        assert_eq!(ram_ranges(1 << 30), vec![(GuestAddress(0), 1 << 30)]);
        let big = ram_ranges(4 << 30);
        assert_eq!(big[0], (GuestAddress(0), MMIO_GAP_START));
        assert_eq!(big[1], (GuestAddress(MMIO_GAP_END), (4 << 30) - MMIO_GAP_START));
    }

    #[test]
    fn sizes_are_validated() {
        assert!(validate_size(64 << 20).is_ok());
        assert!(matches!(
            validate_size(1 << 20),
            Err(MemoryError::SizeOutOfRange { .. })
        ));
        assert!(matches!(
            validate_size((64 << 20) + 4096),
            Err(MemoryError::SizeUnaligned { .. })
        ));
        assert!(matches!(
            validate_size(2 << 40),
            Err(MemoryError::SizeOutOfRange { .. })
        ));
    }

    #[test]
    fn untouched_memory_is_not_resident_and_images_round_trip() {
        let memory = create(5 << 30).unwrap();
        assert_eq!(resident_bytes(&memory), 0);
        memory.write_obj(0xdead_beef_u64, GuestAddress(0x1000)).unwrap();
        memory
            .write_obj(0x1234_u64, GuestAddress(MMIO_GAP_END + 0x20_0008))
            .unwrap();
        assert!(resident_bytes(&memory) >= 2 * 4096);

        let mut file = tempfile::tempfile().unwrap();
        let written = save_image(&memory, &mut file).unwrap();
        assert_eq!(written, 2 * 4096);

        let restored = create(5 << 30).unwrap();
        load_image(&restored, &mut file).unwrap();
        assert_eq!(restored.read_obj::<u64>(GuestAddress(0x1000)).unwrap(), 0xdead_beef);
        assert_eq!(
            restored
                .read_obj::<u64>(GuestAddress(MMIO_GAP_END + 0x20_0008))
                .unwrap(),
            0x1234
        );
        assert!(resident_bytes(&restored) <= 4 * 4096);
    }
}
