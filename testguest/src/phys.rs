//! Reads of physical memory through the identity map (firmware tables, boot info).

use core::ptr::read_volatile;

use crate::pvh::MAPPED_LIMIT;

fn check(paddr: u64, len: u64) {
    assert!(
        paddr.checked_add(len).is_some_and(|end| end <= MAPPED_LIMIT),
        "unmapped address"
    );
}

pub fn read_u8(paddr: u64) -> u8 {
    check(paddr, 1);
    // SAFETY: the first 64 GiB are identity-mapped and readable from ring 3.
    unsafe { read_volatile(paddr as *const u8) }
}

pub fn read_u16(paddr: u64) -> u16 {
    u16::from_le_bytes([read_u8(paddr), read_u8(paddr + 1)])
}

pub fn read_u32(paddr: u64) -> u32 {
    u32::from(read_u16(paddr)) | (u32::from(read_u16(paddr + 2)) << 16)
}

pub fn read_u64(paddr: u64) -> u64 {
    u64::from(read_u32(paddr)) | (u64::from(read_u32(paddr + 4)) << 32)
}

/// Whether `len` bytes at `paddr` sum to zero (ACPI and MP table checksums).
pub fn checksum_ok(paddr: u64, len: u64) -> bool {
    (0..len).fold(0u8, |sum, i| sum.wrapping_add(read_u8(paddr + i))) == 0
}

pub fn matches(paddr: u64, signature: &[u8]) -> bool {
    signature
        .iter()
        .enumerate()
        .all(|(i, &b)| read_u8(paddr + i as u64) == b)
}
