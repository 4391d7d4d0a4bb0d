//! Adversarial (regression): after a rollback both otadata copies must
//! select the good slot. With only one valid copy (the other holding the
//! rejected image's entry rewritten INVALID), damage to that copy made the
//! ESP-IDF bootloader fall back to ota_0 (through the empty factory
//! partition of ESP-IDF's default table), which was the rejected image, and
//! the boot guard ran it as if it were confirmed.
#![allow(clippy::unwrap_used)]

mod adversarial_common;

use adversarial_common::*;
use airlift_engine::sim::BootloaderKind;
use airlift_engine::{AppSlot, BootDecision};

fn rolled_back_to_ota_1(kind: BootloaderKind) -> (Rig, Vec<u8>, Vec<u8>) {
    let a = image(0, 0);
    let b = image(1, 0);
    let c = image(2, 0);
    let mut rig = Rig::new(default_table(), &a).with_bootloader(kind);
    assert_eq!(rig.update(&b, 0), AppSlot::Ota(1));
    // c goes to ota_0, never confirms, and is rolled back.
    assert_eq!(rig.update_and_fail(&c, 0), 3);
    assert_eq!(rig.reset().booted, AppSlot::Ota(1));
    (rig, b, c)
}

#[test]
fn one_damaged_otadata_copy_after_a_rollback_never_boots_the_rejected_image() {
    for kind in [BootloaderKind::Plain, BootloaderKind::Rollback] {
        for copy in [0, 1] {
            for erase in [false, true] {
                let (mut rig, b, c) = rolled_back_to_ota_1(kind);
                if erase {
                    rig.erase_otadata(copy);
                } else {
                    rig.corrupt_otadata(copy);
                }
                let label = format!("{kind:?}, copy {copy}, erased {erase}");
                let r = rig.reset_until_running();
                let running = rig.slot_image(r.booted).unwrap();
                assert!(running != c, "{label}: the rejected image runs: {r:?}");
                assert_eq!(running, b, "{label}: {r:?}");
                assert_eq!(
                    r.decision,
                    BootDecision::Run {
                        slot: AppSlot::Ota(1),
                        confirmed: true,
                        attempt: 0,
                        max_attempts: 3
                    },
                    "{label}"
                );
            }
        }
    }
}

#[test]
fn after_a_rollback_both_otadata_copies_select_the_good_slot() {
    let (mut rig, _, _) = rolled_back_to_ota_1(BootloaderKind::Plain);
    let e = rig.otadata();
    assert!(e[0].is_valid() && e[1].is_valid(), "{e:?}");
    assert_eq!((e[0].slot(2), e[1].slot(2)), (Some(1), Some(1)), "{e:?}");
}
