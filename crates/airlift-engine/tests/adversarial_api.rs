//! Adversarial: the API used in unusual orders (confirm twice, confirm what
//! is not on trial, begin during a trial or before the reboot), attempt
//! limits 1 and 5, and partition tables with no or a bad MD5 row.
#![allow(clippy::unwrap_used)]

mod adversarial_common;

use adversarial_common::*;
use airlift_engine::sim::{self, BootloaderKind};
use airlift_engine::{AppSlot, BootDecision, BootOutcome, Device, Error};
use airlift_format::partition::{MD5_MAGIC, PartitionError, TABLE_OFFSET};

#[test]
fn confirm_called_twice_confirms_once_and_writes_nothing_the_second_time() {
    let mut rig = Rig::new(default_table(), &image(0, 0));
    rig.install(&image(1, 3), 3).unwrap();
    let booted = sim::run_bootloader(&mut rig.flash, &rig.layout, rig.kind)
        .booted
        .unwrap();
    let cfg = rig.config();
    let mut dev = Device::open(&mut rig.flash, cfg).unwrap();
    dev.boot(Some(booted), T0).unwrap();
    assert_eq!(dev.confirm(), Ok(true));
    let before = dev.flash_mut().ops();
    let otadata = dev.status().unwrap().otadata;
    assert_eq!(dev.confirm(), Ok(false));
    assert_eq!(
        dev.flash_mut().ops(),
        before,
        "second confirm wrote to flash"
    );
    assert_eq!(dev.status().unwrap().otadata, otadata);
    assert_eq!(dev.status().unwrap().min_security_version, 3);
}

#[test]
fn confirm_on_a_confirmed_image_returns_false_and_writes_nothing() {
    let mut rig = Rig::new(default_table(), &image(0, 0));
    let booted = sim::run_bootloader(&mut rig.flash, &rig.layout, rig.kind)
        .booted
        .unwrap();
    let cfg = rig.config();
    let mut dev = Device::open(&mut rig.flash, cfg).unwrap();
    dev.boot(Some(booted), T0).unwrap();
    let before = dev.flash_mut().ops();
    assert_eq!(dev.confirm(), Ok(false));
    assert_eq!(dev.flash_mut().ops(), before);
}

#[test]
fn confirm_from_the_old_image_after_activation_does_not_confirm_the_new_one() {
    let old = image(0, 0);
    let new = image(1, 0);
    let mut rig = Rig::new(default_table(), &old);
    let booted = sim::run_bootloader(&mut rig.flash, &rig.layout, rig.kind)
        .booted
        .unwrap();
    let blob = sign(&new, 0);
    let cfg = rig.config();
    {
        let mut dev = Device::open(&mut rig.flash, cfg).unwrap();
        dev.boot(Some(booted), T0).unwrap();
        let mut s = dev.begin(&blob).unwrap();
        s.write(&new).unwrap();
        s.finish().unwrap();
        // The old firmware, still running, calls confirm (e.g. its own
        // health check fires after the install).
        assert_eq!(dev.confirm(), Ok(false));
    }
    // The new image still gets its trial, and is rolled back if it fails.
    assert_eq!(rig.update_and_fail_installed(AppSlot::Ota(1)), 3);
}

#[test]
fn begin_while_the_running_image_is_on_trial_is_refused_without_writing() {
    let mut rig = Rig::new(default_table(), &image(0, 0));
    rig.install(&image(1, 0), 0).unwrap();
    let booted = sim::run_bootloader(&mut rig.flash, &rig.layout, rig.kind)
        .booted
        .unwrap();
    let cfg = rig.config();
    let blob = sign(&image(2, 0), 0);
    let mut dev = Device::open(&mut rig.flash, cfg).unwrap();
    dev.boot(Some(booted), T0).unwrap();
    let before = dev.flash_mut().ops();
    assert_eq!(dev.begin(&blob).err(), Some(Error::RunningImageUnconfirmed));
    assert_eq!(
        dev.begin_slot(&blob, 0).err(),
        Some(Error::RunningImageUnconfirmed)
    );
    assert_eq!(dev.flash_mut().ops(), before);
}

#[test]
fn a_second_install_before_rebooting_into_the_first_is_refused_and_keeps_the_first() {
    let old = image(0, 0);
    let first = image(1, 0);
    let mut rig = Rig::new(default_table(), &old);
    let booted = sim::run_bootloader(&mut rig.flash, &rig.layout, rig.kind)
        .booted
        .unwrap();
    let cfg = rig.config();
    {
        let mut dev = Device::open(&mut rig.flash, cfg).unwrap();
        dev.boot(Some(booted), T0).unwrap();
        let blob = sign(&first, 0);
        let mut s = dev.begin(&blob).unwrap();
        s.write(&first).unwrap();
        s.finish().unwrap();
        let second = sign(&image(2, 0), 0);
        assert!(dev.begin(&second).is_err());
    }
    let r = rig.reset();
    assert_eq!(r.booted, AppSlot::Ota(1));
    assert_eq!(rig.slot_image(AppSlot::Ota(1)), Some(first));
}

#[test]
fn a_single_attempt_means_exactly_one_trial_boot_on_every_layout_and_bootloader() {
    for kind in [BootloaderKind::Plain, BootloaderKind::Rollback] {
        for table in [
            default_table(),
            ota_table(3, 0x8_0000, 0x4000),
            factory_table(),
        ] {
            let mut rig = Rig::new(table, &image(0, 0))
                .with_bootloader(kind)
                .with_max_attempts(1);
            assert_eq!(rig.update_and_fail(&image(1, 0), 0), 1, "{kind:?}");
        }
    }
}

#[test]
fn five_attempts_mean_exactly_five_trial_boots_on_every_layout_and_bootloader() {
    for kind in [BootloaderKind::Plain, BootloaderKind::Rollback] {
        for table in [
            default_table(),
            ota_table(3, 0x8_0000, 0x4000),
            factory_table(),
        ] {
            let mut rig = Rig::new(table, &image(0, 0))
                .with_bootloader(kind)
                .with_max_attempts(5);
            assert_eq!(rig.update_and_fail(&image(1, 0), 0), 5, "{kind:?}");
        }
    }
}

#[test]
fn an_image_confirmed_on_its_last_allowed_attempt_stays() {
    for n in [1u8, 5] {
        let mut rig = Rig::new(default_table(), &image(0, 0)).with_max_attempts(n);
        rig.install(&image(1, 0), 0).unwrap();
        for _ in 1..n {
            rig.reset();
        }
        let (r, confirmed) = rig.boot_and_confirm();
        assert!(confirmed, "limit {n}: {r:?}");
        for _ in 0..(n + 2) {
            assert_eq!(rig.reset().booted, AppSlot::Ota(1), "limit {n}");
        }
    }
}

#[test]
fn attempts_counted_under_one_limit_carry_over_when_firmware_lowers_it() {
    let mut rig = Rig::new(default_table(), &image(0, 0)).with_max_attempts(5);
    rig.install(&image(1, 0), 0).unwrap();
    for _ in 0..3 {
        rig.reset();
    }
    rig.max_attempts = 2;
    assert_eq!(
        rig.reset().decision,
        BootDecision::ResetRequired {
            from: AppSlot::Ota(1),
            to: AppSlot::Ota(0),
            attempts: 3
        }
    );
}

#[test]
fn a_zero_attempt_limit_still_gives_the_new_image_one_boot() {
    let mut rig = Rig::new(default_table(), &image(0, 0)).with_max_attempts(0);
    assert_eq!(rig.update_and_fail(&image(1, 0), 0), 1);
}

#[test]
fn a_partition_table_without_an_md5_row_opens_with_the_same_layout() {
    let mut rig = Rig::new(default_table(), &image(0, 0));
    let table = table_bytes(&rig.table);
    let md5_at = rig.table.len() * 32;
    assert_eq!(table[md5_at..md5_at + 2], MD5_MAGIC);
    let mut no_md5 = table;
    no_md5[md5_at..md5_at + 32].fill(0xFF);
    rig.flash.load(TABLE_OFFSET as usize, &no_md5);
    let layout = *rig.device().layout();
    assert_eq!(layout, rig.layout);
    // And the device still updates.
    assert_eq!(rig.update(&image(1, 0), 0), AppSlot::Ota(1));
}

#[test]
fn a_partition_table_with_a_wrong_md5_is_refused() {
    for flip_at in [
        16usize,     /* first row's label */
        7 * 32 + 16, /* the digest itself */
    ] {
        let mut rig = Rig::new(default_table(), &image(0, 0));
        let mut table = table_bytes(&rig.table);
        table[flip_at] ^= 0x01;
        rig.flash.load(TABLE_OFFSET as usize, &table);
        let cfg = rig.config();
        let err = Device::open(&mut rig.flash, cfg).err();
        assert!(
            matches!(
                err,
                Some(Error::PartitionTable(PartitionError::Md5Mismatch { .. }))
            ),
            "byte {flip_at}: {err:?}"
        );
    }
}

#[test]
fn a_bootloader_fallback_from_a_damaged_confirmed_image_is_logged_and_updates_go_to_the_damaged_slot()
 {
    let mut rig = Rig::new(default_table(), &image(0, 0));
    rig.update(&image(1, 0), 0);
    // ota_1 (selected, confirmed) gets damaged: the bootloader falls back.
    let at = rig.layout.slots[1].offset as usize + 1000;
    let b = rig.flash.bytes()[at];
    rig.flash.load(at, &[b ^ 0x10]);
    let booted = sim::run_bootloader(&mut rig.flash, &rig.layout, rig.kind)
        .booted
        .unwrap();
    assert_eq!(booted, AppSlot::Ota(0));
    let cfg = rig.config();
    let blob = sign(&image(2, 0), 0);
    let img = image(2, 0);
    {
        let mut dev = Device::open(&mut rig.flash, cfg).unwrap();
        let d = dev.boot(Some(booted), T0).unwrap();
        assert!(
            matches!(
                d,
                BootDecision::Run {
                    slot: AppSlot::Ota(0),
                    ..
                }
            ),
            "{d:?}"
        );
        let mut last = None;
        dev.boot_log(|r| last = Some(r.outcome)).unwrap();
        assert_eq!(last, Some(BootOutcome::BootloaderFallback));
        // From the running ota_0 the update must go to ota_1, never ota_0.
        let mut s = dev.begin(&blob).unwrap();
        assert_eq!(s.slot(), 1);
        s.write(&img).unwrap();
        s.finish().unwrap();
    }
    assert_eq!(rig.slot_image(AppSlot::Ota(0)), Some(image(0, 0)));
    let r = rig.reset();
    assert_eq!(r.booted, AppSlot::Ota(1));
    assert_eq!(rig.slot_image(AppSlot::Ota(1)), Some(img));
}

impl Rig {
    /// Lets an already installed image in `slot` fail until rolled back.
    fn update_and_fail_installed(&mut self, slot: AppSlot) -> u8 {
        let mut trials = 0;
        for _ in 0..20 {
            match self.reset().decision {
                BootDecision::Run {
                    slot: s,
                    confirmed: false,
                    ..
                } if s == slot => trials += 1,
                BootDecision::ResetRequired { from, .. } if from == slot => {
                    let r = self.reset();
                    assert!(r.booted != slot, "{r:?}");
                    return trials;
                }
                other => panic!("{other:?}"),
            }
        }
        panic!("never rolled back")
    }
}

#[test]
fn the_largest_attempt_limit_counts_every_boot_without_overflowing() {
    // 255 trial boots on a two-sector log: the counter survives many
    // rotations (it is carried in every snapshot) and never wraps.
    let mut rig = Rig::new(ota_table(2, 0x10_0000, 0x2000), &image(0, 0)).with_max_attempts(255);
    assert_eq!(rig.update_and_fail(&image(1, 0), 0), 255);
    let pos = rig.device().log_position();
    assert!(pos.current.unwrap().1 > 4, "{pos:?}");
}
