//! Link the test guest as a freestanding, statically placed PVH ELF (see `link.ld`).

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=link.ld");
    for arg in [
        format!("-T{dir}/link.ld"),
        "-nostartfiles".to_owned(),
        "-nostdlib".to_owned(),
        "-static".to_owned(),
        "-no-pie".to_owned(),
        "-Wl,--build-id=none".to_owned(),
        "-Wl,-n".to_owned(),
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
