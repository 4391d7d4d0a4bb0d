//! Adversarial: boundaries. An image exactly as large as its slot, written
//! with a checkpoint every sector into a two-sector data partition (so the
//! log rotates several times inside one install), interrupted and resumed.
#![allow(clippy::unwrap_used)]

mod adversarial_common;

use adversarial_common::*;
use airlift_engine::sim;
use airlift_engine::{AppSlot, Device, Error};

const SLOT: u32 = 0x1_0000;

/// A valid image of exactly `SLOT` bytes.
fn slot_sized_image() -> Vec<u8> {
    (SLOT as usize - 600..SLOT as usize)
        .step_by(4)
        .map(|n| sim::test_image("9.9.9", 0, n))
        .find(|i| i.len() == SLOT as usize)
        .unwrap()
}

fn tight_rig() -> Rig {
    let mut rig = Rig::new(ota_table(3, SLOT, 0x2000), &image(0, 0));
    rig.checkpoint_interval = 4096;
    rig
}

#[test]
fn an_image_exactly_as_large_as_its_slot_installs_and_boots() {
    let img = slot_sized_image();
    let mut rig = tight_rig();
    assert_eq!(rig.update(&img, 0), AppSlot::Ota(1));
    assert_eq!(
        rig.slot_image(AppSlot::Ota(2)),
        None,
        "nothing spilled into ota_2"
    );
}

#[test]
fn an_image_one_word_larger_than_its_slot_is_refused_before_any_write() {
    let mut img = slot_sized_image();
    img.extend_from_slice(&[0, 0, 0, 0]);
    let mut rig = tight_rig();
    let m = airlift_format::manifest::Manifest {
        chip_id: 0,
        security_version: 0,
        image_size: img.len() as u32,
        image_sha256: [1; 32],
        delta_base_sha256: None,
        key_id: airlift_format::manifest::key_id(&public_key()),
        product: "airlift-sim",
        version: "9.9.9",
    };
    let blob = sign_manifest(&m);
    let cfg = rig.config();
    let mut dev = Device::open(&mut rig.flash, cfg).unwrap();
    let before = dev.flash_mut().ops();
    assert_eq!(
        dev.begin(&blob).err(),
        Some(Error::TooBig {
            size: SLOT + 4,
            slot_size: SLOT
        })
    );
    assert_eq!(dev.flash_mut().ops(), before);
}

#[test]
fn every_sector_of_a_slot_sized_install_can_be_interrupted_and_resumed() {
    let img = slot_sized_image();
    let blob = sign(&img, 0);
    // Interrupt after every whole sector boundary plus a bit, resuming
    // from the previous interruption each time.
    let mut rig = tight_rig();
    // Fill most of the log sector so that it rotates during the install.
    for _ in 0..40 {
        rig.reset();
    }
    let mut previous_stop = 0usize;
    for stop in (5000..img.len()).step_by(4096) {
        let cfg = rig.config();
        {
            let mut dev = Device::open(&mut rig.flash, cfg).unwrap();
            let mut s = dev.begin(&blob).unwrap();
            let from = s.resume_offset() as usize;
            assert_eq!(
                from,
                previous_stop / 4096 * 4096,
                "resumes at the last whole sector before {previous_stop}"
            );
            s.write(&img[from..stop]).unwrap();
        }
        previous_stop = stop;
        rig.reset();
    }
    let cfg = rig.config();
    {
        let mut dev = Device::open(&mut rig.flash, cfg).unwrap();
        let mut s = dev.begin(&blob).unwrap();
        let from = s.resume_offset() as usize;
        s.write(&img[from..]).unwrap();
        s.finish().unwrap();
    }
    let pos = rig.device().log_position();
    assert!(pos.current.unwrap().1 >= 2, "the log rotated: {pos:?}");
    let (r, ok) = rig.boot_and_confirm();
    assert!(ok && r.booted == AppSlot::Ota(1));
    assert_eq!(rig.slot_image(AppSlot::Ota(1)), Some(img));
}
