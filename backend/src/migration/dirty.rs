//! Which guest pages to send: all resident ones in the first round, then the
//! pages written since the previous round — by the guest (KVM's dirty log) or by
//! the VMM itself (vm-memory's bitmap).
//!
//! KVM offers three mechanisms here: the classic `KVM_GET_DIRTY_LOG` (get and
//! clear, re-protecting the whole slot), manual-protect with
//! `KVM_CLEAR_DIRTY_LOG`, and the per-vCPU dirty ring. The classic log is what
//! this engine uses: it works on every KVM (the nested PVM here included), and
//! at the sizes measured in `docs/benchmarks.md` its cost per round is small
//! next to sending the pages.

use kvm_ioctls::VmFd;
use thiserror::Error;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::protocol::PAGE_SIZE;
use crate::vmm::memory::GuestMemory;

#[derive(Debug, Error)]
pub enum DirtyError {
    #[error("cannot switch dirty logging")]
    Slots(#[source] crate::vmm::memory::MemoryError),
    #[error("cannot read the dirty log of memory slot {slot}")]
    Log {
        slot: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// One bit per 4 KiB page of each guest memory region.
#[derive(Debug, Clone)]
pub struct PageSet {
    regions: Vec<RegionBits>,
}

#[derive(Debug, Clone)]
struct RegionBits {
    base: u64,
    pages: u64,
    bits: Vec<u64>,
}

impl PageSet {
    pub fn count(&self) -> u64 {
        self.regions
            .iter()
            .map(|r| r.bits.iter().map(|w| u64::from(w.count_ones())).sum::<u64>())
            .sum()
    }

    pub fn bytes(&self) -> u64 {
        self.count() * PAGE_SIZE
    }

    /// Runs of consecutive set pages as (guest address, page count), each at
    /// most `max_pages` long.
    pub fn runs(&self, max_pages: u32) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.regions.iter().flat_map(move |region| region.runs(max_pages))
    }

    /// An empty set of the same layout.
    pub fn cleared(&self) -> PageSet {
        PageSet {
            regions: self
                .regions
                .iter()
                .map(|r| RegionBits {
                    base: r.base,
                    pages: r.pages,
                    bits: vec![0; r.bits.len()],
                })
                .collect(),
        }
    }

    /// Adds `pages` pages from `gpa` (pages outside every region are ignored).
    pub fn insert(&mut self, gpa: u64, pages: u32) {
        for page in 0..u64::from(pages) {
            let address = gpa + page * PAGE_SIZE;
            if let Some(region) = self
                .regions
                .iter_mut()
                .find(|r| address >= r.base && address < r.base + r.pages * PAGE_SIZE)
            {
                let index = (address - region.base) / PAGE_SIZE;
                region.bits[(index / 64) as usize] |= 1 << (index % 64);
            }
        }
    }

    /// Adds the pages of `other` (same layout).
    pub fn merge(&mut self, other: &PageSet) {
        for (mine, theirs) in self.regions.iter_mut().zip(&other.regions) {
            for (a, b) in mine.bits.iter_mut().zip(&theirs.bits) {
                *a |= *b;
            }
        }
    }
}

impl RegionBits {
    fn runs(&self, max_pages: u32) -> impl Iterator<Item = (u64, u32)> + '_ {
        let mut page = 0u64;
        std::iter::from_fn(move || {
            while page < self.pages {
                let word = self.bits[(page / 64) as usize];
                if word == 0 && page.is_multiple_of(64) {
                    page += 64;
                    continue;
                }
                if word & (1 << (page % 64)) == 0 {
                    page += 1;
                    continue;
                }
                let start = page;
                while page < self.pages
                    && page - start < u64::from(max_pages)
                    && self.bits[(page / 64) as usize] & (1 << (page % 64)) != 0
                {
                    page += 1;
                }
                return Some((self.base + start * PAGE_SIZE, (page - start) as u32));
            }
            None
        })
    }
}

/// The pages the host holds for the guest (touched at least once); the others
/// are zero and need not be sent, nor even read.
pub fn resident_pages(memory: &GuestMemory) -> PageSet {
    let regions = memory
        .iter()
        .map(|region| {
            let pages = region.len() / PAGE_SIZE;
            let mut bits = vec![0u64; pages.div_ceil(64) as usize];
            if let Ok(host) = memory.get_host_address(region.start_addr()) {
                let mut vec = vec![0u8; pages as usize];
                // SAFETY: `host` is the page-aligned start of a live mapping of
                // `region.len()` bytes; `vec` has one byte per page, as mincore wants.
                let rc = unsafe { libc::mincore(host.cast(), region.len() as usize, vec.as_mut_ptr()) };
                if rc == 0 {
                    for (page, state) in vec.iter().enumerate() {
                        if state & 1 != 0 {
                            bits[page / 64] |= 1 << (page % 64);
                        }
                    }
                } else {
                    // Without mincore, every page is a candidate.
                    bits.fill(u64::MAX);
                }
            }
            RegionBits {
                base: region.start_addr().0,
                pages,
                bits,
            }
        })
        .collect();
    PageSet { regions }
}

/// True when the 4 KiB page at `host` is all zero. The guest may be writing it
/// concurrently, so it is read with volatile loads, never through a reference.
///
/// # Safety
/// `host` must point at a mapped, 8-byte aligned 4 KiB page.
pub unsafe fn is_zero_page(host: *const u8) -> bool {
    let words = host.cast::<u64>();
    for i in 0..(PAGE_SIZE as usize / 8) {
        // SAFETY: `i` stays inside the page the caller vouched for.
        if unsafe { words.wrapping_add(i).read_volatile() } != 0 {
            return false;
        }
    }
    true
}

/// A hash of guest memory's content: every non-zero page with its address,
/// combined without regard to order, so two VMMs that hold the same data in
/// differently touched memory agree. Never zero.
pub fn content_hash(memory: &GuestMemory) -> u64 {
    let resident = resident_pages(memory);
    let mut sum = 0u64;
    for (gpa, pages) in resident.runs(u32::MAX) {
        let Ok(host) = memory.get_host_address(vm_memory::GuestAddress(gpa)) else {
            continue;
        };
        for page in 0..u64::from(pages) {
            let ptr = host.wrapping_add((page * PAGE_SIZE) as usize);
            // SAFETY: a page of a run of resident pages, inside the mapping.
            if unsafe { is_zero_page(ptr) } {
                continue;
            }
            // SAFETY: as above.
            sum = sum.wrapping_add(unsafe { page_hash(gpa + page * PAGE_SIZE, ptr) });
        }
    }
    sum | 1
}

/// # Safety
/// `host` must point at a mapped, 8-byte aligned 4 KiB page.
unsafe fn page_hash(gpa: u64, host: *const u8) -> u64 {
    let words = host.cast::<u64>();
    let mut hash = gpa.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xcbf2_9ce4_8422_2325;
    for i in 0..(PAGE_SIZE as usize / 8) {
        // SAFETY: `i` stays inside the page.
        let word = unsafe { words.wrapping_add(i).read_volatile() };
        hash = (hash ^ word).wrapping_mul(0x0100_0000_01b3).rotate_left(29);
    }
    hash
}

/// Switches KVM's dirty logging for every slot of `memory`.
/// Re-registering a slot with the same mapping changes only its flags.
pub fn set_logging(vm: &VmFd, memory: &GuestMemory, enabled: bool) -> Result<(), DirtyError> {
    crate::vmm::memory::register_slots(vm, memory, enabled).map_err(DirtyError::Slots)
}

/// Pages written since the last call (or since logging started): KVM's log
/// for guest writes, OR'd with vm-memory's bitmap for the VMM's own writes.
pub fn collect(vm: &VmFd, memory: &GuestMemory) -> Result<PageSet, DirtyError> {
    let mut regions = Vec::with_capacity(memory.num_regions());
    for (slot, region) in memory.iter().enumerate() {
        let slot = slot as u32;
        let mut bits = vm
            .get_dirty_log(slot, region.len() as usize)
            .map_err(|source| DirtyError::Log { slot, source })?;
        let vmm_bits = (**region).bitmap().get_and_reset();
        for (kvm, vmm) in bits.iter_mut().zip(vmm_bits) {
            *kvm |= vmm;
        }
        regions.push(RegionBits {
            base: region.start_addr().0,
            pages: region.len() / PAGE_SIZE,
            bits,
        });
    }
    Ok(PageSet { regions })
}

/// Forgets what the VMM wrote so far (called when logging starts).
pub fn reset_vmm_bitmap(memory: &GuestMemory) {
    for region in memory.iter() {
        (**region).bitmap().reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(base: u64, pages: u64, set_pages: &[u64]) -> PageSet {
        let mut bits = vec![0u64; pages.div_ceil(64) as usize];
        for p in set_pages {
            bits[(*p / 64) as usize] |= 1 << (p % 64);
        }
        PageSet {
            regions: vec![RegionBits { base, pages, bits }],
        }
    }

    #[test]
    fn runs_are_contiguous_and_capped() {
        let pages = set(0x10_0000, 200, &[0, 1, 2, 63, 64, 65, 130, 199]);
        let runs: Vec<_> = pages.runs(2).collect();
        assert_eq!(
            runs,
            vec![
                (0x10_0000, 2),
                (0x10_0000 + 2 * 4096, 1),
                (0x10_0000 + 63 * 4096, 2),
                (0x10_0000 + 65 * 4096, 1),
                (0x10_0000 + 130 * 4096, 1),
                (0x10_0000 + 199 * 4096, 1),
            ]
        );
        assert_eq!(pages.count(), 8);
        let mut merged = set(0x10_0000, 200, &[3]);
        merged.merge(&pages);
        assert_eq!(merged.count(), 9);
        // What a round left unsent, rebuilt from its runs.
        let mut rest = pages.cleared();
        assert_eq!(rest.count(), 0);
        for (gpa, count) in pages.runs(2).skip(3) {
            rest.insert(gpa, count);
        }
        rest.insert(0x10_0000 + 500 * 4096, 1);
        assert_eq!(
            rest.runs(64).collect::<Vec<_>>(),
            vec![
                (0x10_0000 + 65 * 4096, 1),
                (0x10_0000 + 130 * 4096, 1),
                (0x10_0000 + 199 * 4096, 1)
            ]
        );
    }

    #[test]
    fn resident_pages_follow_touches() {
        use vm_memory::{Bytes, GuestAddress};
        let memory = crate::vmm::memory::create(128 << 20).unwrap();
        assert_eq!(resident_pages(&memory).count(), 0);
        memory.write_obj(1u8, GuestAddress(0x5000)).unwrap();
        memory.write_obj(1u8, GuestAddress(0x10_0000)).unwrap();
        let resident = resident_pages(&memory);
        assert_eq!(resident.runs(64).collect::<Vec<_>>(), vec![(0x5000, 1), (0x10_0000, 1)]);
        // The VMM's own writes are tracked by the bitmap.
        let host = memory.get_host_address(GuestAddress(0x5000)).unwrap();
        // SAFETY: a mapped, aligned page.
        assert!(!unsafe { is_zero_page(host) });
        let zero = memory.get_host_address(GuestAddress(0x9000)).unwrap();
        // SAFETY: a mapped, aligned page.
        assert!(unsafe { is_zero_page(zero) });
    }

    #[test]
    fn the_vmms_own_writes_mark_the_bitmap() {
        use vm_memory::{Bytes, GuestAddress};
        let memory = crate::vmm::memory::create(128 << 20).unwrap();
        reset_vmm_bitmap(&memory);
        let clone = memory.clone();
        clone.write_slice(&[7u8; 65536], GuestAddress(0x20_0000)).unwrap();
        let region = memory.iter().next().unwrap();
        let bits = (**region).bitmap().get_and_reset();
        let pages: Vec<usize> = (0..bits.len() * 64)
            .filter(|p| bits[p / 64] & (1 << (p % 64)) != 0)
            .collect();
        assert_eq!(pages, (0x200..0x210).collect::<Vec<_>>());
    }
}
