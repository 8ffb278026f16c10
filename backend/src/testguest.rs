//! The project's own test guest, built from `testguest/` by this crate's build
//! script and embedded here, so every vmig binary can boot it without a path.
//!
//! It is a PVH kernel whose workload is set on its command line (fill memory,
//! dirty a working set at a rate, verify every page it wrote) and which prints
//! machine-readable heartbeat lines on COM1. See `testguest/README.md`.

/// The name operators use: `--kernel builtin:testguest`.
pub const NAME: &str = "testguest";

/// The guest's ELF image.
pub static IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/vmig-testguest"));

/// The test guest's integrity stamp (`testguest/src/pattern.rs`): the
/// guest checks media made here against its own copy of it.
fn stamp(offset: u64, generation: u64) -> u64 {
    const ADDR_MIX: u64 = 0x9e37_79b9_7f4a_7c15;
    const GEN_MIX: u64 = 0xd6e8_feb8_6659_fd93;
    (offset.wrapping_mul(ADDR_MIX) ^ generation.wrapping_mul(GEN_MIX)) | 1
}

/// `testguest/src/disk.rs`'s medium seed.
const MEDIUM_SEED: u64 = 0x6d65_6469_756d_7632;

/// Bytes of a medium are written in pieces of this size.
const MEDIUM_PIECE: usize = 1 << 20;

/// Writes a CD/DVD medium of `size` bytes (a multiple of 64 KiB, the
/// guest's read size) whose every word the test guest can check.
pub fn write_medium(path: &std::path::Path, size: u64) -> std::io::Result<()> {
    use std::io::Write;
    if size == 0 || !size.is_multiple_of(64 << 10) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("a medium's size must be a non-zero multiple of 64K, not {size}"),
        ));
    }
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut piece = vec![0u8; MEDIUM_PIECE];
    let mut offset = 0u64;
    while offset < size {
        let n = (size - offset).min(MEDIUM_PIECE as u64) as usize;
        for (i, word) in piece[..n].chunks_exact_mut(8).enumerate() {
            let at = offset + 8 * i as u64;
            word.copy_from_slice(&(stamp(at, 0) ^ MEDIUM_SEED).to_le_bytes());
        }
        file.write_all(&piece[..n])?;
        offset += n as u64;
    }
    file.into_inner()
        .map_err(std::io::IntoInnerError::into_error)?
        .sync_all()
}
