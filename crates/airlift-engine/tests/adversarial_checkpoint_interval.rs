//! Adversarial (regression): a checkpoint interval near u32::MAX ("never
//! checkpoint") must not overflow `offset + interval` when an install made
//! with a smaller interval is resumed.
#![allow(clippy::unwrap_used)]

mod adversarial_common;

use adversarial_common::*;
use airlift_engine::sim;
use airlift_engine::{AppSlot, Device};

#[test]
fn a_huge_checkpoint_interval_resumes_an_install_written_with_a_small_one() {
    let mut rig = Rig::new(default_table(), &image(0, 0));
    let img = sim::test_image("2.0.0", 0, 30_000);
    let blob = sign(&img, 0);
    {
        let cfg = rig.config(); // 4 KiB checkpoints
        let mut dev = Device::open(&mut rig.flash, cfg).unwrap();
        let mut s = dev.begin(&blob).unwrap();
        s.write(&img[..20_000]).unwrap();
    }
    rig.reset();
    // New firmware configures "no checkpoints".
    rig.checkpoint_interval = u32::MAX;
    let cfg = rig.config();
    {
        let mut dev = Device::open(&mut rig.flash, cfg).unwrap();
        let mut s = dev.begin(&blob).unwrap();
        let from = s.resume_offset() as usize;
        s.write(&img[from..]).unwrap();
        s.finish().unwrap();
    }
    assert_eq!(rig.reset().booted, AppSlot::Ota(1));
}
