//! The workload area: RAM above the image, numbered in 4 KiB pages across the
//! memory map's ranges, and its split into per-CPU slices.

use crate::pattern::PAGE_SIZE;
use crate::pvh::{MAX_RANGES, Range};

#[derive(Clone, Copy, Debug)]
pub struct Area {
    ranges: [Range; MAX_RANGES],
    /// Page index at which each range starts.
    first_page: [u64; MAX_RANGES],
    count: usize,
    pages: u64,
}

impl Area {
    /// Usable pages: RAM at or above `floor`, page-aligned inwards.
    pub fn new(ram: &[Range], floor: u64) -> Area {
        let mut area = Area {
            ranges: [Range::default(); MAX_RANGES],
            first_page: [0; MAX_RANGES],
            count: 0,
            pages: 0,
        };
        for r in ram {
            let start = r.start.max(floor).next_multiple_of(PAGE_SIZE);
            let end = r.end & !(PAGE_SIZE - 1);
            if start < end {
                area.ranges[area.count] = Range { start, end };
                area.first_page[area.count] = area.pages;
                area.pages += (end - start) / PAGE_SIZE;
                area.count += 1;
            }
        }
        area
    }

    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Physical address of page `index` (< `pages()`).
    #[inline]
    pub fn page_addr(&self, index: u64) -> u64 {
        let mut i = self.count - 1;
        while self.first_page[i] > index {
            i -= 1;
        }
        self.ranges[i].start + (index - self.first_page[i]) * PAGE_SIZE
    }
}

/// Part `part` of `parts` of [start, start + len): a contiguous page-index range.
pub fn slice(start: u64, len: u64, part: usize, parts: usize) -> (u64, u64) {
    let (part, parts) = (part as u64, parts as u64);
    (start + len * part / parts, start + len * (part + 1) / parts)
}
