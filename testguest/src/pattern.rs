//! The integrity stamp: every word of a page is a function of its physical address
//! and the page's generation, and never zero (so a zeroed page is always caught).

const ADDR_MIX: u64 = 0x9e37_79b9_7f4a_7c15;
const GEN_MIX: u64 = 0xd6e8_feb8_6659_fd93;
pub const PAGE_SIZE: u64 = 4096;
const WORDS: u64 = PAGE_SIZE / 8;

pub fn stamp(addr: u64, generation: u64) -> u64 {
    (addr.wrapping_mul(ADDR_MIX) ^ generation.wrapping_mul(GEN_MIX)) | 1
}

/// Stamp the page at `page` (4 KiB aligned) with `generation`.
pub fn write_page(page: u64, generation: u64) {
    for i in 0..WORDS {
        let addr = page + i * 8;
        // SAFETY: `page` is a RAM page of the workload area (identity-mapped, owned by
        // this CPU's slice); the volatile store keeps the write observable.
        unsafe { (addr as *mut u64).write_volatile(stamp(addr, generation)) };
    }
}

/// The first wrong word of a page, and how many were wrong.
#[derive(Clone, Copy, Debug)]
pub struct Mismatch {
    pub addr: u64,
    pub expected: u64,
    pub found: u64,
    pub count: u64,
}

/// Check all 512 words of the page against `generation`.
pub fn check_page(page: u64, generation: u64) -> Option<Mismatch> {
    let mut first: Option<Mismatch> = None;
    let mut count = 0;
    for i in 0..WORDS {
        let addr = page + i * 8;
        // SAFETY: as `write_page`; volatile so the compiler cannot reuse stored values.
        let found = unsafe { (addr as *const u64).read_volatile() };
        let expected = stamp(addr, generation);
        if found != expected {
            count += 1;
            first.get_or_insert(Mismatch {
                addr,
                expected,
                found,
                count: 0,
            });
        }
    }
    first.map(|m| Mismatch { count, ..m })
}
