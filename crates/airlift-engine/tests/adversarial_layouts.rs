//! Adversarial: layouts other than the default two-OTA table (3 and 8 OTA
//! slots, a factory app), and long runs of consecutive updates so that the
//! otadata sequence numbers and the data-partition ring wrap many times.
#![allow(clippy::unwrap_used)]

mod adversarial_common;

use adversarial_common::*;
use airlift_engine::sim::BootloaderKind;
use airlift_engine::{AppSlot, BootDecision, BootOutcome};
use airlift_format::otadata::{BootTarget, OtaState, active_entry, boot_slot};

/// After a confirmed update both otadata copies are valid and both select
/// the running slot, the way ESP-IDF reads them.
fn assert_both_copies_select(rig: &mut Rig, slot: u8) {
    let e = rig.otadata();
    let n = rig.layout.app_count;
    assert!(e[0].is_valid() && e[1].is_valid(), "{e:?}");
    assert_eq!(e[0].slot(n), Some(slot), "{e:?}");
    assert_eq!(e[1].slot(n), Some(slot), "{e:?}");
    assert_eq!(boot_slot(&e, n), BootTarget::Ota(slot));
    assert_eq!(e[active_entry(&e).unwrap()].state, OtaState::Valid);
}

fn cycle_updates(slots: u8, slot_size: u32, updates: u32, kind: BootloaderKind) {
    let mut rig = Rig::new(ota_table(slots, slot_size, 0x2000), &image(0, 0)).with_bootloader(kind);
    let mut last_seq = 1;
    for n in 1..=updates {
        let img = image(n, 0);
        let slot = rig.update(&img, 0);
        assert_eq!(
            slot,
            AppSlot::Ota((n % u32::from(slots)) as u8),
            "update {n}"
        );
        assert_both_copies_select(&mut rig, (n % u32::from(slots)) as u8);
        let e = rig.otadata();
        let seq = e[active_entry(&e).unwrap()].seq;
        assert!(
            seq > last_seq,
            "update {n}: sequence went from {last_seq} to {seq}"
        );
        last_seq = seq;
        // The slot that ran before still holds the previous image.
        let prev = (n + u32::from(slots) - 1) % u32::from(slots);
        assert_eq!(
            rig.slot_image(AppSlot::Ota(prev as u8)),
            Some(image(n - 1, 0)),
            "update {n}"
        );
    }
    let pos = rig.device().log_position();
    assert!(
        pos.current.unwrap().1 > pos.sectors,
        "the two-sector log ring wrapped: {pos:?}"
    );
    assert_eq!(
        rig.status().stored_keys,
        1,
        "the key survived every rotation"
    );
}

#[test]
fn forty_updates_cycle_through_every_slot_of_a_three_slot_layout() {
    cycle_updates(3, 0x8_0000, 40, BootloaderKind::Plain);
}

#[test]
fn forty_updates_cycle_through_every_slot_of_an_eight_slot_layout() {
    cycle_updates(8, 0x4_0000, 40, BootloaderKind::Plain);
}

#[test]
fn forty_updates_on_two_slots_with_the_rollback_bootloader_keep_both_copies_valid() {
    cycle_updates(2, 0x10_0000, 40, BootloaderKind::Rollback);
}

#[test]
fn rollback_on_a_three_slot_layout_returns_to_the_slot_that_ran_not_to_ota_0() {
    let mut rig = Rig::new(ota_table(3, 0x8_0000, 0x4000), &image(0, 0));
    assert_eq!(rig.update(&image(1, 0), 0), AppSlot::Ota(1));
    // ota_2 gets an image that never confirms.
    assert_eq!(rig.update_and_fail(&image(2, 0), 0), 3);
    let r = rig.reset();
    assert_eq!(r.booted, AppSlot::Ota(1));
    assert_eq!(
        r.decision,
        BootDecision::Run {
            slot: AppSlot::Ota(1),
            confirmed: true,
            attempt: 0,
            max_attempts: 3
        }
    );
    // The next update goes to ota_2 again (the slot after the running one).
    assert_eq!(rig.update(&image(3, 0), 0), AppSlot::Ota(2));
}

#[test]
fn rollback_on_an_eight_slot_layout_from_ota_7_returns_to_ota_6() {
    let mut rig = Rig::new(ota_table(8, 0x4_0000, 0x4000), &image(0, 0));
    for n in 1..=6 {
        rig.update(&image(n, 0), 0);
    }
    assert_eq!(rig.update_and_fail(&image(7, 0), 0), 3);
    let r = rig.reset();
    assert_eq!((r.selected, r.booted), (AppSlot::Ota(6), AppSlot::Ota(6)));
    assert_eq!(rig.slot_image(AppSlot::Ota(6)), Some(image(6, 0)));
    // And from ota_7 back to ota_0 when it is confirmed.
    assert_eq!(rig.update(&image(8, 0), 0), AppSlot::Ota(7));
    assert_eq!(rig.update(&image(9, 0), 0), AppSlot::Ota(0));
}

#[test]
fn factory_device_updates_into_ota_0_and_rolls_back_to_the_factory_app() {
    let factory_image = image(0, 0);
    let mut rig = Rig::factory(&factory_image);
    assert_eq!(rig.status().running, AppSlot::Factory);
    assert_eq!(rig.install(&image(1, 0), 0).unwrap(), 0);
    let e = rig.otadata();
    assert_eq!(boot_slot(&e, 2), BootTarget::Ota(0));
    for attempt in 1..=3 {
        let r = rig.reset();
        assert_eq!(
            r.decision,
            BootDecision::Run {
                slot: AppSlot::Ota(0),
                confirmed: false,
                attempt,
                max_attempts: 3
            }
        );
    }
    let r = rig.reset();
    assert_eq!(
        r.decision,
        BootDecision::ResetRequired {
            from: AppSlot::Ota(0),
            to: AppSlot::Factory,
            attempts: 3
        }
    );
    let r = rig.reset();
    assert_eq!((r.selected, r.booted), (AppSlot::Factory, AppSlot::Factory));
    assert!(matches!(
        r.decision,
        BootDecision::Run {
            confirmed: true,
            ..
        }
    ));
    // No otadata copy may select the rejected image any more.
    let e = rig.otadata();
    assert!(e.iter().all(|x| !x.is_valid()), "{e:?}");
    // A retry from the factory app works.
    assert_eq!(rig.update(&image(2, 0), 0), AppSlot::Ota(0));
}

#[test]
fn factory_device_after_two_confirmed_updates_rolls_back_between_ota_slots() {
    let mut rig = Rig::factory(&image(0, 0));
    assert_eq!(rig.update(&image(1, 0), 0), AppSlot::Ota(0));
    assert_eq!(rig.update(&image(2, 0), 0), AppSlot::Ota(1));
    assert_eq!(rig.update_and_fail(&image(3, 0), 0), 3);
    let r = rig.reset();
    assert_eq!(
        r.booted,
        AppSlot::Ota(1),
        "back to the last confirmed, not factory"
    );
    assert_eq!(rig.slot_image(AppSlot::Ota(1)), Some(image(2, 0)));
}

#[test]
fn factory_device_with_the_rollback_bootloader_gets_every_try_and_returns_to_factory() {
    let mut rig = Rig::factory(&image(0, 0))
        .with_bootloader(BootloaderKind::Rollback)
        .with_max_attempts(5);
    assert_eq!(rig.update_and_fail(&image(1, 0), 0), 5);
    assert_eq!(rig.reset().booted, AppSlot::Factory);
}

#[test]
fn running_from_ota_1_the_update_goes_to_ota_0_and_rollback_returns_to_ota_1() {
    let mut rig = Rig::new(default_table(), &image(0, 0));
    assert_eq!(rig.update(&image(1, 0), 0), AppSlot::Ota(1));
    assert_eq!(rig.status().running, AppSlot::Ota(1));
    assert_eq!(rig.update_and_fail(&image(2, 0), 0), 3);
    let r = rig.reset();
    assert_eq!((r.selected, r.booted), (AppSlot::Ota(1), AppSlot::Ota(1)));
    let log = rig.boot_log();
    let outcomes: Vec<_> = log
        .iter()
        .rev()
        .take(6)
        .map(|r| (r.slot, r.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            (AppSlot::Ota(1), BootOutcome::Confirmed),
            (AppSlot::Ota(1), BootOutcome::Confirmed),
            (AppSlot::Ota(0), BootOutcome::RolledBack),
            (AppSlot::Ota(0), BootOutcome::Trial),
            (AppSlot::Ota(0), BootOutcome::Trial),
            (AppSlot::Ota(0), BootOutcome::Trial),
        ]
    );
}

#[test]
fn three_hundred_updates_with_alternating_rollbacks_keep_the_device_consistent() {
    // Two-sector ring: each update writes several records, so the log
    // rotates roughly every few updates and wraps dozens of times.
    let mut rig = Rig::new(ota_table(2, 0x10_0000, 0x2000), &image(0, 0));
    let mut good = image(0, 0);
    let mut good_slot = AppSlot::Ota(0);
    for n in 1..=300u32 {
        let img = image(n, 0);
        if n % 3 == 0 {
            assert_eq!(rig.update_and_fail(&img, 0), 3, "update {n}");
        } else {
            good_slot = rig.update(&img, 0);
            good = img;
        }
        let r = rig.reset();
        assert_eq!(r.booted, good_slot, "update {n}");
        assert_eq!(
            rig.slot_image(good_slot).as_ref(),
            Some(&good),
            "update {n}"
        );
    }
    let log = rig.boot_log();
    assert!(!log.is_empty());
    assert!(
        log.windows(2).all(|w| w[0].timestamp < w[1].timestamp),
        "the boot log is oldest first after many wraps"
    );
    assert_eq!(log.last().unwrap().timestamp, rig.clock);
}
