//! The engine's RAM budget: no heap, and the working state fits in 8 KiB.
#![allow(clippy::unwrap_used)]

use std::mem::size_of;

use airlift_engine::sim::SimFlash;
use airlift_engine::{Device, Install, READ_BACK_LEN};
use airlift_format::image::ImageVerifier;

/// Everything the engine keeps while installing: the device state, the
/// install session (which holds the image verifier and the write buffer)
/// and the read-back buffer on the stack. The flash handle is a reference
/// here, as a driver handle would be on the device.
const BUDGET: usize = 8 * 1024;

#[test]
fn install_session_and_boot_guard_state_fit_in_8_kib() {
    let device = size_of::<Device<'static, &mut SimFlash>>();
    let install = size_of::<Install<'static, 'static, &mut SimFlash>>();
    let verifier = size_of::<ImageVerifier>();
    let total = device + install + READ_BACK_LEN;
    println!("boot guard / device state:      {device:>5} bytes");
    println!("install session:                {install:>5} bytes (image verifier {verifier})");
    println!("read-back buffer (stack):       {READ_BACK_LEN:>5} bytes");
    println!("total while installing:         {total:>5} bytes of {BUDGET}");
    println!("ed25519 verification stack: measured by `cargo bench -p airlift-engine`");
    assert!(
        install > verifier,
        "the session holds the verifier by value"
    );
    assert!(
        total <= BUDGET,
        "{total} bytes exceeds the {BUDGET}-byte budget"
    );
}
