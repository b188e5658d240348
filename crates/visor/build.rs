//! Links the `visor` binary with the functions its server runs while starting and idling
//! placed next to each other, in the order `startup-order.txt` lists them (written by
//! `scripts/startup-order`).
//!
//! Why: the kernel maps a binary's code in blocks of 64 KiB around each first touch, so the
//! few thousand functions a fresh server runs, scattered over 38 MiB of code, kept 27 MiB of
//! it resident; placed together they take about a third of that. Names the list has that the
//! build no longer has (renamed or changed code) are skipped, so a stale list costs only
//! memory; regenerate it when the idle figure drifts.
//!
//! Only for x86_64 Linux with the toolchain's own linker (`rust-lld`, the default since Rust
//! 1.90), which takes a symbol ordering file.

fn main() {
    println!("cargo:rerun-if-changed=startup-order.txt");
    println!("cargo:rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    if target != "x86_64-unknown-linux-gnu" {
        return;
    }
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-link-arg-bin=visor=-Wl,--symbol-ordering-file={dir}/startup-order.txt");
    println!("cargo:rustc-link-arg-bin=visor=-Wl,--no-warn-symbol-ordering");
}
