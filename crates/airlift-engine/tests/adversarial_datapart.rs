//! Adversarial: Airlift's data partition erased, filled with garbage, or
//! with one record or sector damaged. The device must still boot the image
//! otadata selects, and the engine must keep working.
#![allow(clippy::unwrap_used)]

mod adversarial_common;

use adversarial_common::*;
use airlift_engine::store::{RECORD_LEN, SECTOR_SIZE};
use airlift_engine::{AppSlot, BootDecision, Config, Device};

fn data_range(rig: &Rig) -> (usize, usize) {
    let d = rig.layout.data;
    (d.offset as usize, d.size as usize)
}

#[test]
fn an_erased_data_partition_boots_the_selected_image_and_updates_with_compiled_in_keys() {
    let mut rig = Rig::new(default_table(), &image(0, 0));
    rig.update(&image(1, 0), 0);
    let (at, len) = data_range(&rig);
    rig.flash.load(at, &vec![0xFF; len]);
    let r = rig.reset();
    assert_eq!(
        r.decision,
        BootDecision::Run {
            slot: AppSlot::Ota(1),
            confirmed: true,
            attempt: 0,
            max_attempts: 3
        }
    );
    // Stored keys are gone; keys compiled into the firmware still work.
    let keys = [public_key()];
    let cfg = Config {
        trusted_keys: &keys,
        ..rig.config()
    };
    let img = image(2, 0);
    let blob = sign(&img, 0);
    {
        let mut dev = Device::open(&mut rig.flash, cfg).unwrap();
        let mut s = dev.begin(&blob).unwrap();
        s.write(&img).unwrap();
        s.finish().unwrap();
    }
    assert_eq!(rig.reset().booted, AppSlot::Ota(0));
}

#[test]
fn a_data_partition_full_of_garbage_boots_the_selected_image_and_recovers_its_log() {
    let mut rig = Rig::new(default_table(), &image(0, 0));
    let (at, len) = data_range(&rig);
    let mut rng = Rng(77);
    let garbage: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
    rig.flash.load(at, &garbage);
    for _ in 0..3 {
        let r = rig.reset();
        assert!(
            matches!(
                r.decision,
                BootDecision::Run {
                    slot: AppSlot::Ota(0),
                    confirmed: true,
                    ..
                }
            ),
            "{r:?}"
        );
    }
    let log = rig.boot_log();
    assert_eq!(log.len(), 3, "a fresh log after the garbage");
}

#[test]
fn a_damaged_record_in_the_current_sector_is_skipped_and_the_records_after_it_count() {
    let mut rig = Rig::new(default_table(), &image(0, 0));
    rig.install(&image(1, 0), 0).unwrap();
    rig.reset();
    // Damage the record just written (the first trial boot's record).
    let pos = rig.device().log_position();
    let (sector, _) = pos.current.unwrap();
    let at = rig.layout.data.offset as usize
        + sector as usize * SECTOR_SIZE as usize
        + (usize::from(pos.next_record) - 1) * RECORD_LEN
        + 10;
    let b = rig.flash.bytes()[at];
    rig.flash.load(at, &[b ^ 0xFF]);
    // The lost attempt is not counted, but nothing else breaks: the
    // limit still ends the trial and the old image comes back.
    let mut trials = 0;
    loop {
        match rig.reset().decision {
            BootDecision::Run {
                confirmed: false, ..
            } => trials += 1,
            BootDecision::ResetRequired { to, .. } => {
                assert_eq!(to, AppSlot::Ota(0));
                break;
            }
            other => panic!("{other:?}"),
        }
        assert!(trials < 10);
    }
    assert_eq!(trials, 3);
    assert_eq!(rig.reset().booted, AppSlot::Ota(0));
}

#[test]
fn a_damaged_old_sector_of_the_ring_does_not_disturb_the_current_state() {
    let mut rig = Rig::new(ota_table(2, 0x10_0000, 0x4000), &image(0, 0));
    rig.update(&image(1, 5), 5);
    // Rotate until the ring wrapped, then damage the oldest sector.
    for _ in 0..300 {
        rig.reset();
    }
    let pos = rig.device().log_position();
    let (current, _) = pos.current.unwrap();
    let oldest = (current + 1) % pos.sectors;
    let at = rig.layout.data.offset as usize + oldest as usize * SECTOR_SIZE as usize;
    rig.flash.load(at + 100, &[0u8; 300]);
    assert_eq!(rig.status().min_security_version, 5);
    assert_eq!(rig.status().stored_keys, 1);
    assert_eq!(rig.reset().booted, AppSlot::Ota(1));
    let log = rig.boot_log();
    assert!(log.windows(2).all(|w| w[0].timestamp < w[1].timestamp));
}
