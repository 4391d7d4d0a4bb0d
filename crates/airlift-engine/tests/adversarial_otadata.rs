//! Adversarial: one otadata copy corrupted (CRC flipped) or erased at every
//! stage of an update, on both copies; the device must boot an image the
//! stage allows (never a rejected one) and then take an update.
#![allow(clippy::unwrap_used)]

mod adversarial_common;

use adversarial_common::*;
use airlift_engine::sim::BootloaderKind;
use airlift_engine::{AppSlot, BootDecision};

#[derive(Debug, Clone, Copy)]
enum Stage {
    Provisioned,
    Activated,
    OnTrial,
    Confirmed,
    RolledBackToOta0,
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    Crc,
    Erased,
}

/// Puts a default two-slot device at `stage`; returns it and the images it
/// may run afterwards.
fn at_stage(stage: Stage, kind: BootloaderKind) -> (Rig, Vec<Vec<u8>>) {
    let a = image(0, 0);
    let b = image(1, 0);
    let mut rig = Rig::new(default_table(), &a).with_bootloader(kind);
    let allowed = match stage {
        Stage::Provisioned => vec![a],
        Stage::Activated => {
            rig.install(&b, 0).unwrap();
            vec![a, b]
        }
        Stage::OnTrial => {
            rig.install(&b, 0).unwrap();
            rig.reset();
            vec![a, b]
        }
        Stage::Confirmed => {
            rig.update(&b, 0);
            vec![b]
        }
        Stage::RolledBackToOta0 => {
            rig.update_and_fail(&b, 0);
            vec![a]
        }
    };
    (rig, allowed)
}

fn check(stage: Stage, copy: usize, damage: Damage, kind: BootloaderKind) {
    let label = format!("{stage:?}, copy {copy} {damage:?}, {kind:?}");
    let (mut rig, allowed) = at_stage(stage, kind);
    match damage {
        Damage::Crc => rig.corrupt_otadata(copy),
        Damage::Erased => rig.erase_otadata(copy),
    }
    let known: Vec<&[u8]> = allowed.iter().map(Vec::as_slice).collect();
    let r = recover(&mut rig, &known).unwrap_or_else(|e| panic!("{label}: {e}"));
    assert!(r.attempt <= rig.max_attempts, "{label}: {r:?}");
    // Let whatever runs settle (confirm a trial), then update.
    if !r.confirmed {
        let (_, ok) = rig.boot_and_confirm();
        assert!(ok, "{label}: could not confirm the image on trial");
    }
    let next = image(7, 0);
    let slot = AppSlot::Ota(
        rig.install(&next, 0)
            .unwrap_or_else(|e| panic!("{label}: {e}")),
    );
    let (boot, confirmed) = rig.boot_and_confirm();
    assert_eq!(boot.booted, slot, "{label}");
    assert!(confirmed, "{label}");
    let again = recover(&mut rig, &[&next]).unwrap_or_else(|e| panic!("{label}: {e}"));
    assert!(again.confirmed, "{label}");
}

fn every_stage(kind: BootloaderKind) {
    for stage in [
        Stage::Provisioned,
        Stage::Activated,
        Stage::OnTrial,
        Stage::Confirmed,
        Stage::RolledBackToOta0,
    ] {
        for copy in [0, 1] {
            for damage in [Damage::Crc, Damage::Erased] {
                check(stage, copy, damage, kind);
            }
        }
    }
}

#[test]
fn one_damaged_otadata_copy_at_any_stage_boots_an_allowed_image_and_updates_again() {
    every_stage(BootloaderKind::Plain);
}

#[test]
fn one_damaged_otadata_copy_with_the_rollback_bootloader_boots_an_allowed_image() {
    every_stage(BootloaderKind::Rollback);
}

#[test]
fn a_trial_whose_previous_copy_is_damaged_still_rolls_back_to_the_previous_slot() {
    for damage in [Damage::Crc, Damage::Erased] {
        let a = image(0, 0);
        let b = image(1, 0);
        let mut rig = Rig::new(default_table(), &a);
        rig.install(&b, 0).unwrap();
        // Copy 0 holds the entry selecting ota_0; copy 1 the trial.
        match damage {
            Damage::Crc => rig.corrupt_otadata(0),
            Damage::Erased => rig.erase_otadata(0),
        }
        for attempt in 1..=3 {
            let r = rig.reset();
            assert_eq!(
                r.decision,
                BootDecision::Run {
                    slot: AppSlot::Ota(1),
                    confirmed: false,
                    attempt,
                    max_attempts: 3
                },
                "{damage:?}"
            );
        }
        assert_eq!(
            rig.reset().decision,
            BootDecision::ResetRequired {
                from: AppSlot::Ota(1),
                to: AppSlot::Ota(0),
                attempts: 3
            },
            "{damage:?}"
        );
        let r = recover(&mut rig, &[&a]).unwrap();
        assert!(
            r.confirmed && r.slot == AppSlot::Ota(0),
            "{damage:?}: {r:?}"
        );
    }
}
