//! Adversarial (regression): a `Device` handle that did not run `boot()`
//! itself (another task's handle, same power cycle) must neither confirm an
//! image that has not booted yet (it would become VALID without a single
//! trial boot, beyond the boot guard's reach) nor, after a bootloader
//! fallback from a damaged selected slot, target the slot that actually
//! runs with `begin()` (it would erase the running firmware).
#![allow(clippy::unwrap_used)]

mod adversarial_common;

use adversarial_common::*;
use airlift_engine::sim;
use airlift_engine::{AppSlot, BootDecision, Device, Error};

#[test]
fn a_new_handle_cannot_confirm_an_image_that_has_not_booted_yet() {
    let mut rig = Rig::new(default_table(), &image(0, 0));
    rig.install(&image(1, 0), 0).unwrap();
    // Same power cycle, e.g. the web page's "confirm" endpoint or a health
    // check task that opens its own handle.
    let cfg = rig.config();
    let confirmed = Device::open(&mut rig.flash, cfg)
        .unwrap()
        .confirm()
        .unwrap();
    assert!(!confirmed, "confirmed an image that never ran");
    let r = rig.reset();
    assert_eq!(
        r.decision,
        BootDecision::Run {
            slot: AppSlot::Ota(1),
            confirmed: false,
            attempt: 1,
            max_attempts: 3
        }
    );
}

#[test]
fn a_new_handle_after_a_bootloader_fallback_never_erases_the_running_slot() {
    let mut rig = Rig::new(default_table(), &image(0, 0));
    rig.update(&image(1, 0), 0);
    // The selected ota_1 gets damaged; the bootloader falls back to ota_0.
    let at = rig.layout.slots[1].offset as usize + 1000;
    let b = rig.flash.bytes()[at];
    rig.flash.load(at, &[b ^ 0x10]);
    let booted = sim::run_bootloader(&mut rig.flash, &rig.layout, rig.kind)
        .booted
        .unwrap();
    assert_eq!(booted, AppSlot::Ota(0));
    let cfg = rig.config();
    Device::open(&mut rig.flash, cfg)
        .unwrap()
        .boot(Some(booted), T0)
        .unwrap();
    // Later, in the same power cycle, the update task opens its handle.
    let img = image(2, 0);
    let blob = sign(&img, 0);
    let result = {
        let mut dev = Device::open(&mut rig.flash, cfg).unwrap();
        dev.begin(&blob).map(|s| s.slot())
    };
    assert!(
        matches!(result, Ok(1) | Err(Error::RunningSlotTarget { .. })),
        "begin targets {result:?} while ota_0 runs"
    );
}
