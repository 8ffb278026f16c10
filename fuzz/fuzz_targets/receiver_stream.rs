//! A receiver's extra stream as the sender's side writes it: frame headers,
//! memory batches (range tables, zero ranges, page data) and round ends,
//! read off a real loopback socket straight into guest memory. Whatever the
//! bytes, nothing panics, the stream ends with exactly one error (its end,
//! or what was wrong), and the guest's two regions are still what they were.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};
use vmig_backend::migration::receiver;
use vmig_backend::vmm::memory::GuestMemory;

/// Two small regions with a hole between them, as a guest has below and
/// above its MMIO gap.
const REGIONS: [(u64, usize); 2] = [(0, 64 << 10), (1 << 20, 64 << 10)];

fn memory() -> &'static GuestMemory {
    static MEMORY: OnceLock<GuestMemory> = OnceLock::new();
    MEMORY.get_or_init(|| {
        let ranges: Vec<(GuestAddress, usize)> = REGIONS.iter().map(|(a, l)| (GuestAddress(*a), *l)).collect();
        GuestMemory::from_ranges(&ranges).expect("guest memory")
    })
}

fuzz_target!(|data: &[u8]| {
    let memory = memory();
    let reports = receiver::fuzz_stream(data, memory).expect("a loopback connection");
    // The stream ends with the end of its bytes: its last report is an error
    // (end of stream, or what was wrong); nothing after it.
    assert!(reports.last().is_some_and(Result::is_err), "{reports:?}");
    assert_eq!(reports.iter().filter(|r| r.is_err()).count(), 1, "{reports:?}");
    // Still mapped, readable and writable at both ends of each region.
    for (start, len) in REGIONS {
        for at in [start, start + len as u64 - 8] {
            let mut word = [0u8; 8];
            memory.read_slice(&mut word, GuestAddress(at)).expect("inside the region");
        }
    }
});
