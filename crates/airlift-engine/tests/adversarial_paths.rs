//! Adversarial: power cut before and in the middle of every flash operation
//! of paths the built-in campaign does not walk: the boot guard handling a
//! trial image the bootloader could not start, activation and rollback on
//! a device that runs its factory app, and a rollback on three slots.
#![allow(clippy::unwrap_used)]

mod adversarial_common;

use adversarial_common::*;
use airlift_engine::sim::{self, BootloaderKind};
use airlift_engine::{AppSlot, BootDecision, Device};

/// Resets (allowing bootloader fallbacks) until an image runs.
fn run_allowing_fallback(rig: &mut Rig) -> Result<Reset, String> {
    for _ in 0..12 {
        rig.flash.power_cycle();
        let boot = sim::run_bootloader(&mut rig.flash, &rig.layout, rig.kind);
        let booted = boot.booted.ok_or("bricked")?;
        let t = rig.tick();
        let cfg = rig.config();
        let mut dev = Device::open(&mut rig.flash, cfg).map_err(|e| e.to_string())?;
        let decision = dev.boot(Some(booted), t).map_err(|e| e.to_string())?;
        if let BootDecision::Run { .. } = decision {
            return Ok(Reset {
                selected: boot.selected,
                booted,
                decision,
            });
        }
    }
    Err("keeps resetting".into())
}

fn boot_guard_after_bootloader(rig: &mut Rig) -> Result<(), airlift_engine::Error> {
    let booted = sim::run_bootloader(&mut rig.flash, &rig.layout, rig.kind)
        .booted
        .unwrap();
    let t = rig.tick();
    let cfg = rig.config();
    let mut dev = Device::open(&mut rig.flash, cfg)?;
    dev.flash_mut().arm();
    dev.boot(Some(booted), t).map(|_| ())
}

#[test]
fn every_cut_point_of_the_guard_rejecting_an_unbootable_trial_ends_on_the_old_image() {
    for kind in [BootloaderKind::Plain, BootloaderKind::Rollback] {
        let old = image(0, 0);
        let new = image(1, 0);
        let mut pre = Rig::new(default_table(), &old).with_bootloader(kind);
        pre.install(&new, 0).unwrap();
        // The new slot is damaged after activation: the bootloader will
        // fall back to ota_0 and the guard must undo the activation.
        let at = pre.layout.slots[1].offset as usize + 1500;
        let b = pre.flash.bytes()[at];
        pre.flash.load(at, &[b ^ 0x01]);
        let next = image(2, 0);
        let (ops, failures) = cut_everywhere(&pre, boot_guard_after_bootloader, |rig| {
            let r = run_allowing_fallback(rig)?;
            if r.booted != AppSlot::Ota(0) {
                return Err(format!("{r:?}"));
            }
            // Once the guard finished, otadata selects what runs.
            let again = recover(rig, &[&old])?;
            if !again.confirmed {
                return Err(format!("{again:?}"));
            }
            rig.update(&next, 0);
            Ok(())
        });
        assert!(ops >= 2, "{kind:?}: {ops}");
        assert!(failures.is_empty(), "{kind:?}: {failures:#?}");
    }
}

#[test]
fn every_cut_point_of_activation_on_a_factory_device_leaves_factory_or_the_new_image() {
    let factory = image(0, 0);
    let new = image(1, 0);
    let pre = Rig::factory(&factory);
    let blob = sign(&new, 0);
    let (ops, failures) = cut_everywhere(
        &pre,
        |rig| {
            let cfg = rig.config();
            let mut dev = Device::open(&mut rig.flash, cfg)?;
            let mut s = dev.begin(&blob)?;
            s.write(&new)?;
            s.flash_mut().arm();
            s.finish().map(|_| ())
        },
        |rig| {
            let r = recover(rig, &[&factory, &new])?;
            let ok = (r.slot == AppSlot::Factory && r.confirmed)
                || (r.slot == AppSlot::Ota(0) && !r.confirmed && r.attempt == 1);
            if !ok {
                return Err(format!("{r:?}"));
            }
            if r.slot == AppSlot::Factory {
                rig.install(&new, 0).map_err(|e| e.to_string())?;
            }
            let (b, confirmed) = rig.boot_and_confirm();
            if b.booted != AppSlot::Ota(0) || !confirmed {
                return Err(format!("after retry: {b:?} confirmed {confirmed}"));
            }
            Ok(())
        },
    );
    assert!(ops >= 3, "{ops}");
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn every_cut_point_of_a_rollback_to_the_factory_app_ends_on_the_factory_app() {
    for kind in [BootloaderKind::Plain, BootloaderKind::Rollback] {
        let factory = image(0, 0);
        let new = image(1, 0);
        let mut pre = Rig::factory(&factory).with_bootloader(kind);
        pre.install(&new, 0).unwrap();
        for _ in 0..3 {
            pre.reset();
        }
        let (ops, failures) = cut_everywhere(&pre, boot_guard_after_bootloader, |rig| {
            let r = recover(rig, &[&factory, &new])?;
            if r.slot != AppSlot::Factory || !r.confirmed {
                return Err(format!("{r:?}"));
            }
            let e = rig.otadata();
            if e.iter().any(|x| x.is_valid()) {
                return Err(format!("a copy still selects an OTA slot: {e:?}"));
            }
            rig.update(&image(2, 0), 0);
            Ok(())
        });
        assert!(ops >= 2, "{kind:?}: {ops}");
        assert!(failures.is_empty(), "{kind:?}: {failures:#?}");
    }
}

#[test]
fn every_cut_point_of_a_rollback_on_three_slots_ends_on_the_slot_that_ran_before() {
    let a = image(0, 0);
    let b = image(1, 0);
    let c = image(2, 0);
    let mut pre = Rig::new(ota_table(3, 0x8_0000, 0x2000), &a);
    pre.update(&b, 0);
    pre.install(&c, 0).unwrap();
    for _ in 0..3 {
        pre.reset();
    }
    let (ops, failures) = cut_everywhere(&pre, boot_guard_after_bootloader, |rig| {
        let r = recover(rig, &[&b, &c])?;
        if r.slot != AppSlot::Ota(1) || r.image != b || !r.confirmed {
            return Err(format!("{r:?}"));
        }
        if rig.update(&image(3, 0), 0) != AppSlot::Ota(2) {
            return Err("the retry went elsewhere".into());
        }
        Ok(())
    });
    assert!(ops >= 3, "{ops}");
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn every_cut_point_of_confirm_on_a_factory_device_keeps_a_bootable_image() {
    let factory = image(0, 0);
    let new = image(1, 4);
    let mut pre = Rig::factory(&factory);
    pre.install(&new, 4).unwrap();
    pre.reset();
    let (ops, failures) = cut_everywhere(
        &pre,
        |rig| {
            let cfg = rig.config();
            let mut dev = Device::open(&mut rig.flash, cfg)?;
            dev.flash_mut().arm();
            dev.confirm().map(|_| ())
        },
        |rig| {
            let r = recover(rig, &[&new])?;
            if r.slot != AppSlot::Ota(0) {
                return Err(format!("{r:?}"));
            }
            if !r.confirmed {
                let (_, ok) = rig.boot_and_confirm();
                if !ok {
                    return Err("confirm did nothing".into());
                }
            }
            let again = recover(rig, &[&new])?;
            let min = rig.status().min_security_version;
            if !again.confirmed || min != 4 {
                return Err(format!("{again:?}, minimum {min}"));
            }
            Ok(())
        },
    );
    assert!(ops >= 3, "{ops}");
    assert!(failures.is_empty(), "{failures:#?}");
}
