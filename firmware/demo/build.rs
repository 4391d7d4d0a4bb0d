//! Asks the linker for a map of the image, in this build's OUT_DIR (one per
//! chip and feature set): `scripts/firmware` reads the image's static RAM
//! from it.
//!
//! It also names the next version (patch number + 1) for the
//! `next-version` build.
fn main() {
    if let Ok(out) = std::env::var("OUT_DIR") {
        println!("cargo:rustc-link-arg-bins=-Map={out}/airlift-demo.map");
    }
    let part = |name: &str| std::env::var(name).unwrap_or_default();
    let patch: u64 = part("CARGO_PKG_VERSION_PATCH").parse().unwrap_or(0);
    println!(
        "cargo:rustc-env=AIRLIFT_DEMO_NEXT_VERSION={}.{}.{}",
        part("CARGO_PKG_VERSION_MAJOR"),
        part("CARGO_PKG_VERSION_MINOR"),
        patch + 1
    );
}
