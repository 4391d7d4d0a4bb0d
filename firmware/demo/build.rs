//! Asks the linker for a map of the image, in this build's OUT_DIR (one per
//! chip and feature set): `scripts/firmware` reads the image's static RAM
//! from it.
fn main() {
    if let Ok(out) = std::env::var("OUT_DIR") {
        println!("cargo:rustc-link-arg-bins=-Map={out}/airlift-demo.map");
    }
}
