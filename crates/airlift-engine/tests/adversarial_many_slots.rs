//! Adversarial (regression): with more than four OTA slots, confirming an
//! image in ota_4 and above must still raise the minimum security version
//! (the engine used to keep image information for ota_0..ota_3 only and
//! confirmed those with security version 0).
#![allow(clippy::unwrap_used)]

mod adversarial_common;

use adversarial_common::*;
use airlift_engine::{AppSlot, Error};

#[test]
fn confirming_an_image_in_any_slot_of_an_eight_slot_layout_raises_the_minimum_security_version() {
    let mut rig = Rig::new(ota_table(8, 0x4_0000, 0x4000), &image(0, 0));
    for n in 1..=8u32 {
        let slot = rig.update(&image(n, n), n);
        assert_eq!(slot, AppSlot::Ota((n % 8) as u8));
        assert_eq!(
            rig.status().min_security_version,
            n,
            "after confirming security version {n} in {slot}"
        );
    }
}

#[test]
fn a_downgrade_is_refused_after_confirming_an_image_in_ota_4() {
    let mut rig = Rig::new(ota_table(8, 0x4_0000, 0x4000), &image(0, 0));
    for n in 1..=3u32 {
        rig.update(&image(n, 1), 1);
    }
    assert_eq!(rig.update(&image(4, 5), 5), AppSlot::Ota(4));
    assert_eq!(
        rig.install(&image(5, 1), 1),
        Err(Error::OlderSecurityVersion { got: 1, minimum: 5 })
    );
}
