//! Adversarial (regression): the progress record of an interrupted install
//! must not survive the start of an install of another image. Otherwise,
//! when that second install is interrupted before its first checkpoint,
//! the first image's record points into a slot whose first sectors hold the
//! second image's bytes, and retrying the first image resumes onto them and
//! fails verification after the whole download.
#![allow(clippy::unwrap_used)]

mod adversarial_common;

use adversarial_common::*;
use airlift_engine::sim;
use airlift_engine::{AppSlot, Device};

fn interrupt(rig: &mut Rig, img: &[u8], bytes: usize) {
    let blob = sign(img, 0);
    let cfg = rig.config();
    let mut dev = Device::open(&mut rig.flash, cfg).unwrap();
    let mut s = dev.begin(&blob).unwrap();
    let from = s.resume_offset() as usize;
    s.write(&img[from..bytes]).unwrap();
}

#[test]
fn retrying_an_image_after_another_image_was_interrupted_installs_it() {
    let old = image(0, 0);
    let a = sim::test_image("2.0.0", 0, 30_000);
    let b = sim::test_image("3.0.0", 0, 30_000);
    let mut rig = Rig::new(default_table(), &old);
    rig.checkpoint_interval = 8192;
    // A reaches two checkpoints (16 KiB), then the device resets.
    interrupt(&mut rig, &a, 20_000);
    rig.reset();
    // The server now offers B; the device resets 6000 bytes in, before
    // B's first checkpoint: sector 0 and 1 of ota_1 now hold B's bytes.
    interrupt(&mut rig, &b, 6000);
    rig.reset();
    // The server goes back to A (B was cancelled). A must install.
    let blob = sign(&a, 0);
    let cfg = rig.config();
    let result = {
        let mut dev = Device::open(&mut rig.flash, cfg).unwrap();
        let mut s = dev.begin(&blob).unwrap();
        let from = s.resume_offset() as usize;
        s.write(&a[from..]).unwrap();
        s.finish().map(|x| x.slot)
    };
    assert_eq!(result, Ok(1));
    assert_eq!(rig.reset().booted, AppSlot::Ota(1));
    assert_eq!(rig.slot_image(AppSlot::Ota(1)), Some(a));
}
