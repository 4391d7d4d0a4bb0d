//! Adversarial (regression): otadata written by ESP-IDF itself. A fleet
//! moving to Airlift receives its first Airlift firmware through the old
//! ESP-IDF OTA code, which (app rollback enabled) selects it in state NEW.
//! The rollback-enabled bootloader turns NEW into PENDING_VERIFY at the
//! first boot and ABORTED at the second unless the app marks it VALID, so
//! Airlift's `confirm()` must do that even without a trial record of its
//! own, or the device falls back to the old firmware for good.
#![allow(clippy::unwrap_used)]

mod adversarial_common;

use adversarial_common::*;
use airlift_engine::sim::{self, BootloaderKind};
use airlift_engine::{AppSlot, Device};
use airlift_format::otadata::{self, OtaSelectEntry, OtaState};

#[test]
fn an_image_activated_by_esp_idf_in_state_new_stays_after_the_airlift_firmware_confirms_it() {
    let legacy = image(0, 0);
    let airlift_fw = image(1, 0);
    let mut rig = Rig::new(default_table(), &legacy).with_bootloader(BootloaderKind::Rollback);
    // What the legacy ESP-IDF app did: wrote ota_1 and selected it, NEW.
    rig.flash
        .load(rig.layout.slots[1].offset as usize, &airlift_fw);
    let at = rig.layout.otadata.offset as usize + otadata::SECTOR_SIZE as usize;
    rig.flash
        .load(at, &OtaSelectEntry::new(2, OtaState::New).encode());
    // First boot of the Airlift firmware: boot guard, health check, confirm.
    rig.flash.power_cycle();
    let booted = sim::run_bootloader(&mut rig.flash, &rig.layout, rig.kind)
        .booted
        .unwrap();
    assert_eq!(booted, AppSlot::Ota(1));
    {
        let cfg = rig.config();
        let mut dev = Device::open(&mut rig.flash, cfg).unwrap();
        dev.boot(Some(booted), T0).unwrap();
        dev.confirm().unwrap();
    }
    // Every later boot must still start the Airlift firmware.
    for n in 0..3 {
        let r = rig.reset();
        assert_eq!(r.booted, AppSlot::Ota(1), "reset {n}: {r:?}");
    }
}
