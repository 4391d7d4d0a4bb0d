//! Losing the data partition's current sector (both header copies wiped,
//! or the whole partition erased during a trial) must not revert the
//! device's safety state: the minimum security version stays and an image
//! on trial still rolls back (the otadata marks carry both).
#![allow(clippy::unwrap_used)]

mod adversarial_common;

use adversarial_common::*;
use airlift_engine::store::SECTOR_SIZE;
use airlift_engine::{AppSlot, BootDecision};

/// Pads the log with boots until the current sector is fresh (few
/// records), so that what follows lands in a new sector.
fn rotate_now(rig: &mut Rig) {
    let start = rig.device().log_position().current.unwrap().1;
    while rig.device().log_position().current.unwrap().1 == start {
        rig.reset();
    }
}

/// Wipes the first 128 bytes (both header copies, since the store now keeps
/// two) of the current sector, e.g. a page program that went astray.
fn damage_both_headers(rig: &mut Rig) {
    let pos = rig.device().log_position();
    let (sector, _) = pos.current.unwrap();
    let at = rig.layout.data.offset as usize + sector as usize * SECTOR_SIZE as usize;
    rig.flash.load(at, &[0u8; 128]);
}

#[test]
fn wiping_both_header_copies_of_the_current_sector_does_not_lower_the_minimum_security_version() {
    let mut rig = Rig::new(ota_table(2, 0x10_0000, 0x4000), &image(0, 0));
    rig.update(&image(1, 1), 1);
    rotate_now(&mut rig);
    rig.update(&image(2, 6), 6);
    damage_both_headers(&mut rig);
    rig.reset();
    assert_eq!(rig.status().min_security_version, 6);
}

#[test]
fn erasing_the_whole_data_partition_during_a_trial_still_rolls_the_trial_back() {
    let mut rig = Rig::new(ota_table(2, 0x10_0000, 0x4000), &image(0, 0));
    rig.install(&image(1, 0), 0).unwrap();
    rig.reset();
    let d = rig.layout.data;
    rig.flash
        .load(d.offset as usize, &vec![0xFF; d.size as usize]);
    let mut boots = 0;
    loop {
        let r = rig.reset();
        boots += 1;
        match r.decision {
            BootDecision::ResetRequired { .. } => break,
            BootDecision::Run { confirmed, .. } => {
                assert!(
                    !confirmed,
                    "boot {boots}: the unconfirmed image runs as confirmed: {r:?}"
                );
            }
        }
        assert!(boots < 10, "never rolled back");
    }
    assert_eq!(rig.reset().booted, AppSlot::Ota(0));
}
