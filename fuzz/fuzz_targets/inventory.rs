//! An operator's inventory file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = vmig::inventory::Inventory::parse(text, std::path::Path::new("/etc/vmig/vmig.toml"));
    }
});
