//! Adversarial (regression): damage to the header record of the current
//! data-partition sector must not revert the live state to the previous
//! sector's (minimum security version lowered, trial forgotten).
#![allow(clippy::unwrap_used)]

mod adversarial_common;

use adversarial_common::*;
use airlift_engine::store::SECTOR_SIZE;
use airlift_engine::{AppSlot, BootDecision, Error};

/// Pads the log with boots until the current sector is fresh (few
/// records), so that what follows lands in a new sector.
fn rotate_now(rig: &mut Rig) {
    let start = rig.device().log_position().current.unwrap().1;
    while rig.device().log_position().current.unwrap().1 == start {
        rig.reset();
    }
}

fn damage_current_header(rig: &mut Rig) {
    let pos = rig.device().log_position();
    let (sector, _) = pos.current.unwrap();
    let at = rig.layout.data.offset as usize + sector as usize * SECTOR_SIZE as usize + 30;
    let b = rig.flash.bytes()[at];
    rig.flash.load(at, &[b ^ 0x01]);
}

#[test]
fn damage_to_the_current_data_sector_does_not_lower_the_minimum_security_version() {
    let mut rig = Rig::new(ota_table(2, 0x10_0000, 0x4000), &image(0, 0));
    rig.update(&image(1, 1), 1);
    rotate_now(&mut rig);
    rig.update(&image(2, 6), 6);
    assert_eq!(rig.status().min_security_version, 6);
    damage_current_header(&mut rig);
    rig.reset();
    assert_eq!(rig.status().min_security_version, 6);
    assert_eq!(
        rig.install(&image(3, 1), 1),
        Err(Error::OlderSecurityVersion { got: 1, minimum: 6 })
    );
}

#[test]
fn damage_to_the_current_data_sector_during_a_trial_still_rolls_the_trial_back() {
    let mut rig = Rig::new(ota_table(2, 0x10_0000, 0x4000), &image(0, 0));
    rotate_now(&mut rig);
    rig.install(&image(1, 0), 0).unwrap();
    let r = rig.reset();
    assert!(matches!(
        r.decision,
        BootDecision::Run {
            confirmed: false,
            ..
        }
    ));
    damage_current_header(&mut rig);
    // The new image keeps crashing: it must not run forever.
    let mut boots = 0;
    loop {
        let r = rig.reset();
        boots += 1;
        match r.decision {
            BootDecision::ResetRequired { to, .. } => {
                assert_eq!(to, AppSlot::Ota(0));
                break;
            }
            BootDecision::Run { confirmed, .. } => {
                assert!(
                    !confirmed,
                    "boot {boots}: the unconfirmed image runs as confirmed: {r:?}"
                );
            }
        }
        assert!(boots < 10, "never rolled back");
    }
}
