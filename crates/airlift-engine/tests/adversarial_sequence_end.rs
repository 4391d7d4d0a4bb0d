//! Adversarial (regression): near the end of the otadata sequence space the
//! engine must not activate an image that it could then neither confirm nor
//! roll back (both need a higher sequence number that does not exist).
#![allow(clippy::unwrap_used)]

mod adversarial_common;

use adversarial_common::*;
use airlift_engine::sim;
use airlift_engine::{AppSlot, Device, Error};
use airlift_format::otadata::{OtaSelectEntry, OtaState};

#[test]
fn an_activation_that_could_not_be_rolled_back_is_refused_near_the_end_of_the_sequence_space() {
    let mut rig = Rig::new(default_table(), &image(0, 0));
    // An otadata entry as a long-lived ESP-IDF device could have left it:
    // seq 0xFFFF_FFFD selects ota_0 ((seq - 1) % 2 == 0).
    let at = rig.layout.otadata.offset as usize;
    rig.flash.load(at, &[0xFF; 0x2000]);
    rig.flash.load(
        at,
        &OtaSelectEntry::new(0xFFFF_FFFD, OtaState::Valid).encode(),
    );
    assert_eq!(rig.reset().booted, AppSlot::Ota(0));
    match rig.install(&image(1, 0), 0) {
        // Refusing is fine: the old image stays selected.
        Err(Error::Otadata(_)) => assert_eq!(rig.reset().booted, AppSlot::Ota(0)),
        Ok(slot) => {
            // Activated: then the trial must still end, one way or another.
            assert_eq!(slot, 1);
            for n in 0..4 {
                rig.flash.power_cycle();
                let booted = sim::run_bootloader(&mut rig.flash, &rig.layout, rig.kind)
                    .booted
                    .unwrap();
                let cfg = rig.config();
                let mut dev = Device::open(&mut rig.flash, cfg).unwrap();
                let d = dev.boot(Some(booted), T0);
                assert!(d.is_ok(), "boot {n} of the trial: {d:?}");
            }
        }
        Err(e) => panic!("{e}"),
    }
}
