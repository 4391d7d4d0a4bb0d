//! Adversarial: security-version anti-rollback across reboots, log
//! rotations, rollbacks and power cuts.
#![allow(clippy::unwrap_used)]

mod adversarial_common;

use adversarial_common::*;
use airlift_engine::{AppSlot, Error};

#[test]
fn minimum_security_version_survives_hundreds_of_reboots_and_log_rotations() {
    let mut rig = Rig::new(ota_table(2, 0x10_0000, 0x2000), &image(0, 0));
    rig.update(&image(1, 4), 4);
    for _ in 0..400 {
        rig.reset();
    }
    let pos = rig.device().log_position();
    assert!(pos.current.unwrap().1 > 2 * pos.sectors, "{pos:?}");
    assert_eq!(rig.status().min_security_version, 4);
    assert_eq!(
        rig.install(&image(2, 3), 3),
        Err(Error::OlderSecurityVersion { got: 3, minimum: 4 })
    );
    assert_eq!(rig.install(&image(2, 4), 4), Ok(0), "equal is accepted");
}

#[test]
fn an_image_on_trial_does_not_raise_the_minimum_until_it_is_confirmed() {
    let mut rig = Rig::new(default_table(), &image(0, 1));
    rig.install(&image(1, 7), 7).unwrap();
    rig.reset();
    rig.reset();
    assert_eq!(rig.status().min_security_version, 0);
    let (_, confirmed) = rig.boot_and_confirm();
    assert!(confirmed);
    assert_eq!(rig.status().min_security_version, 7);
}

#[test]
fn a_rolled_back_image_leaves_the_minimum_security_version_alone() {
    let mut rig = Rig::new(default_table(), &image(0, 0));
    rig.update(&image(1, 2), 2);
    assert_eq!(rig.update_and_fail(&image(2, 9), 9), 3);
    assert_eq!(rig.status().min_security_version, 2);
    // The device can still take an image with security version 2..8.
    assert_eq!(rig.update(&image(3, 2), 2), AppSlot::Ota(0));
}

#[test]
fn minimum_security_version_never_decreases_over_a_long_mixed_history() {
    let mut rig = Rig::new(ota_table(3, 0x8_0000, 0x2000), &image(0, 0));
    let mut rng = Rng(0x5EC0_0001);
    let mut minimum = 0u32;
    for n in 1..=60u32 {
        let sv = minimum + rng.below(3) as u32;
        let img = image(n, sv);
        if rng.chance(30) {
            rig.update_and_fail(&img, sv);
        } else {
            rig.update(&img, sv);
            minimum = sv;
        }
        assert_eq!(rig.status().min_security_version, minimum, "update {n}");
        if minimum > 0 {
            assert_eq!(
                rig.install(&image(1000 + n, minimum - 1), minimum - 1),
                Err(Error::OlderSecurityVersion {
                    got: minimum - 1,
                    minimum
                }),
                "update {n}"
            );
        }
    }
}

#[test]
fn every_cut_point_of_confirm_keeps_the_raised_minimum_once_the_image_counts_as_confirmed() {
    let old = image(0, 1);
    let new = image(1, 6);
    let mut pre = Rig::new(ota_table(2, 0x10_0000, 0x2000), &old);
    pre.install(&new, 6).unwrap();
    pre.reset();
    let (ops, failures) = cut_everywhere(
        &pre,
        |rig| {
            let cfg = rig.config();
            let mut dev = airlift_engine::Device::open(&mut rig.flash, cfg)?;
            dev.flash_mut().arm();
            dev.confirm().map(|_| ())
        },
        |rig| {
            let r = recover(rig, &[&old, &new])?;
            let min = rig.status().min_security_version;
            if r.image == new && r.confirmed && min != 6 {
                return Err(format!("runs the new image confirmed with minimum {min}"));
            }
            if r.image == new && !r.confirmed && min != 1 && min != 0 {
                return Err(format!("new image still on trial but minimum is {min}"));
            }
            // Whatever state: an image below the minimum is refused.
            let min = rig.status().min_security_version;
            if min > 0 && rig.install(&image(9, min - 1), min - 1).is_ok() {
                return Err("accepted an image below the minimum".into());
            }
            Ok(())
        },
    );
    assert!(ops >= 3, "confirm has {ops} flash operations");
    assert!(failures.is_empty(), "{failures:#?}");
}
