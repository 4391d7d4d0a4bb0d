//! Adversarial: aborted and retried installs, interrupted installs resumed
//! with the same, different or foreign bytes and manifests.
#![allow(clippy::unwrap_used)]

mod adversarial_common;

use adversarial_common::*;
use airlift_engine::sim;
use airlift_engine::{AppSlot, BootDecision, Device, Error};

fn big(version: &str, size: usize) -> Vec<u8> {
    sim::test_image(version, 0, size)
}

/// Starts an install of `img` and drops the session (a reset) after
/// `bytes` bytes.
fn interrupt(rig: &mut Rig, img: &[u8], bytes: usize) -> u32 {
    let blob = sign(img, 0);
    let cfg = rig.config();
    let mut dev = Device::open(&mut rig.flash, cfg).unwrap();
    let mut s = dev.begin(&blob).unwrap();
    let from = s.resume_offset();
    s.write(&img[from as usize..bytes]).unwrap();
    from
}

fn runs_old_confirmed(rig: &mut Rig, old: &[u8]) {
    let r = recover(rig, &[old]).unwrap();
    assert!(r.confirmed, "{r:?}");
}

#[test]
fn an_aborted_install_leaves_the_old_image_and_a_retry_starts_from_zero() {
    let old = image(0, 0);
    let new = big("2.0.0", 30_000);
    let mut rig = Rig::new(default_table(), &old);
    {
        let blob = sign(&new, 0);
        let cfg = rig.config();
        let mut dev = Device::open(&mut rig.flash, cfg).unwrap();
        let mut s = dev.begin(&blob).unwrap();
        s.write(&new[..20_000]).unwrap();
        s.abort().unwrap();
        assert_eq!(dev.status().unwrap().install, None);
    }
    runs_old_confirmed(&mut rig, &old);
    assert_eq!(interrupt(&mut rig, &new, new.len()), 0, "nothing to resume");
    rig.flash.power_cycle();
    assert_eq!(rig.install(&new, 0), Ok(1));
    assert_eq!(rig.slot_image(AppSlot::Ota(1)), Some(new));
}

#[test]
fn an_install_aborted_after_its_last_byte_is_not_activated() {
    let old = image(0, 0);
    let new = image(1, 0);
    let mut rig = Rig::new(default_table(), &old);
    let blob = sign(&new, 0);
    {
        let cfg = rig.config();
        let mut dev = Device::open(&mut rig.flash, cfg).unwrap();
        let mut s = dev.begin(&blob).unwrap();
        s.write(&new).unwrap();
        s.abort().unwrap();
    }
    for _ in 0..3 {
        let r = rig.reset();
        assert_eq!(r.booted, AppSlot::Ota(0));
    }
}

#[test]
fn a_resumed_install_fed_different_bytes_is_refused_and_the_next_retry_succeeds() {
    let old = image(0, 0);
    let new = big("2.0.0", 30_000);
    let mut rig = Rig::new(default_table(), &old);
    assert_eq!(interrupt(&mut rig, &new, 20_000), 0);
    runs_old_confirmed(&mut rig, &old);
    // Resume, but the rest of the stream is corrupted.
    let blob = sign(&new, 0);
    let cfg = rig.config();
    let result = {
        let mut dev = Device::open(&mut rig.flash, cfg).unwrap();
        let mut s = dev.begin(&blob).unwrap();
        let from = s.resume_offset() as usize;
        assert!(from >= 16_384, "resumes at a checkpoint: {from}");
        let mut rest = new[from..].to_vec();
        rest[100] ^= 0x40;
        s.write(&rest).unwrap();
        s.finish()
    };
    // The engine cannot tell whether the new bytes or the resumed ones are
    // bad: it says so, and clears the progress so the caller starts over.
    assert!(
        matches!(result, Err(Error::StaleResume { resumed_at }) if resumed_at >= 16_384),
        "{result:?}"
    );
    for _ in 0..2 {
        assert_eq!(rig.reset().booted, AppSlot::Ota(0));
    }
    // The bad bytes are never resumed onto: the retry starts from zero.
    assert_eq!(interrupt(&mut rig, &new, 4), 0);
    assert_eq!(rig.install(&new, 0), Ok(1));
    let r = rig.reset();
    assert_eq!(r.booted, AppSlot::Ota(1));
    assert_eq!(rig.slot_image(AppSlot::Ota(1)), Some(new));
}

#[test]
fn an_interrupted_install_followed_by_another_manifest_installs_that_image_whole() {
    let old = image(0, 0);
    let first = big("2.0.0", 30_000);
    let second = big("3.0.0", 30_000);
    assert_eq!(first.len(), second.len(), "same size, different bytes");
    let mut rig = Rig::new(default_table(), &old);
    interrupt(&mut rig, &first, 25_000);
    runs_old_confirmed(&mut rig, &old);
    let blob = sign(&second, 0);
    let cfg = rig.config();
    {
        let mut dev = Device::open(&mut rig.flash, cfg).unwrap();
        let mut s = dev.begin(&blob).unwrap();
        assert_eq!(s.resume_offset(), 0, "another image never resumes");
        s.write(&second).unwrap();
        s.finish().unwrap();
    }
    assert_eq!(rig.reset().booted, AppSlot::Ota(1));
    assert_eq!(rig.slot_image(AppSlot::Ota(1)), Some(second));
}

#[test]
fn a_resumed_install_refuses_more_bytes_than_the_manifest_announced() {
    let old = image(0, 0);
    let new = big("2.0.0", 30_000);
    let mut rig = Rig::new(default_table(), &old);
    interrupt(&mut rig, &new, 20_000);
    runs_old_confirmed(&mut rig, &old);
    let blob = sign(&new, 0);
    let cfg = rig.config();
    {
        let mut dev = Device::open(&mut rig.flash, cfg).unwrap();
        let mut s = dev.begin(&blob).unwrap();
        assert!(s.resume_offset() > 0);
        // The caller ignores resume_offset and sends the whole image again.
        assert_eq!(
            s.write(&new),
            Err(Error::TooMuchData {
                size: new.len() as u32
            })
        );
        assert_eq!(s.finish().err(), Some(Error::SessionFailed));
    }
    assert_eq!(rig.reset().booted, AppSlot::Ota(0));
}

#[test]
fn the_same_image_signed_again_resumes_where_the_first_attempt_stopped() {
    let old = image(0, 0);
    let new = big("2.0.0", 30_000);
    let mut rig = Rig::new(default_table(), &old);
    interrupt(&mut rig, &new, 20_000);
    runs_old_confirmed(&mut rig, &old);
    // A second manifest for the same bytes (another security version).
    let blob = sign(&new, 2);
    let cfg = rig.config();
    {
        let mut dev = Device::open(&mut rig.flash, cfg).unwrap();
        let mut s = dev.begin(&blob).unwrap();
        let from = s.resume_offset() as usize;
        assert!(from > 0);
        s.write(&new[from..]).unwrap();
        s.finish().unwrap();
    }
    let (r, confirmed) = rig.boot_and_confirm();
    assert!(confirmed && r.booted == AppSlot::Ota(1));
    assert_eq!(rig.status().min_security_version, 2, "the new manifest's");
}

#[test]
fn every_cut_point_of_abort_leaves_the_old_image_and_a_clean_retry() {
    let old = image(0, 0);
    let new = big("2.0.0", 20_000);
    let mut pre = Rig::new(default_table(), &old);
    interrupt(&mut pre, &new, 12_000);
    pre.reset();
    let blob = sign(&new, 0);
    let (ops, failures) = cut_everywhere(
        &pre,
        |rig| {
            let cfg = rig.config();
            let mut dev = Device::open(&mut rig.flash, cfg)?;
            let mut s = dev.begin(&blob)?;
            let from = s.resume_offset() as usize;
            s.write(&new[from..16_000])?;
            s.flash_mut().arm();
            s.abort()
        },
        |rig| {
            let r = recover(rig, &[&old])?;
            if !r.confirmed {
                return Err(format!("{r:?}"));
            }
            rig.install(&new, 0).map_err(|e| e.to_string())?;
            let r = recover(rig, &[&old, &new])?;
            if r.image != new || r.confirmed || r.attempt != 1 {
                return Err(format!("after the retry: {r:?}"));
            }
            Ok(())
        },
    );
    assert!(ops >= 1);
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Grows the filler until the image is a whole number of sectors, so the
/// last program lands exactly on a checkpoint.
fn sector_multiple_image() -> Vec<u8> {
    (20_000..40_000)
        .step_by(4)
        .map(|n| big("4.0.0", n))
        .find(|i| i.len() % 4096 == 0)
        .unwrap()
}

#[test]
fn every_cut_point_of_a_sector_aligned_install_resumes_to_the_exact_image() {
    let old = image(0, 0);
    let new = sector_multiple_image();
    let mut pre = Rig::new(default_table(), &old);
    pre.checkpoint_interval = 8192;
    let blob = sign(&new, 0);
    let (ops, failures) = cut_everywhere(
        &pre,
        |rig| {
            let cfg = rig.config();
            let mut dev = Device::open(&mut rig.flash, cfg)?;
            dev.flash_mut().arm();
            let mut s = dev.begin(&blob)?;
            for c in new.chunks(4096) {
                s.write(c)?;
            }
            // A reset before finish: resumed below.
            Ok(())
        },
        |rig| {
            let r = recover(rig, &[&old])?;
            if !r.confirmed {
                return Err(format!("{r:?}"));
            }
            rig.install(&new, 0).map_err(|e| e.to_string())?;
            let r = recover(rig, &[&old, &new])?;
            if r.image != new || r.slot != AppSlot::Ota(1) || r.confirmed {
                return Err(format!("after the resumed install: {r:?}"));
            }
            Ok(())
        },
    );
    assert!(ops > 10, "{ops}");
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn an_install_interrupted_after_its_last_checkpoint_finishes_without_new_bytes() {
    let old = image(0, 0);
    let new = sector_multiple_image();
    let mut rig = Rig::new(default_table(), &old);
    interrupt(&mut rig, &new, new.len());
    runs_old_confirmed(&mut rig, &old);
    let blob = sign(&new, 0);
    let cfg = rig.config();
    {
        let mut dev = Device::open(&mut rig.flash, cfg).unwrap();
        let s = dev.begin(&blob).unwrap();
        assert_eq!(s.resume_offset() as usize, new.len());
        s.finish().unwrap();
    }
    assert_eq!(
        rig.reset().decision,
        BootDecision::Run {
            slot: AppSlot::Ota(1),
            confirmed: false,
            attempt: 1,
            max_attempts: 3
        }
    );
}

#[test]
fn every_cut_point_of_an_install_whose_checkpoint_rotates_the_log_resumes_to_the_exact_image() {
    let old = image(0, 0);
    let new = big("5.0.0", 14_000);
    let mut pre = Rig::new(ota_table(2, 0x10_0000, 0x2000), &old);
    // Fill the current log sector so that the first checkpoint rotates it.
    let tag = sim::tag_of(&old);
    loop {
        let mut dev = pre.device();
        let p = dev.log_position();
        if p.next_record == airlift_engine::store::RECORDS_PER_SECTOR - 1 {
            break;
        }
        dev.set_slot_image(0, &tag).unwrap();
    }
    let blob = sign(&new, 0);
    let (ops, failures) = cut_everywhere(
        &pre,
        |rig| {
            let cfg = rig.config();
            let mut dev = Device::open(&mut rig.flash, cfg)?;
            dev.flash_mut().arm();
            let mut s = dev.begin(&blob)?;
            for c in new.chunks(1500) {
                s.write(c)?;
            }
            Ok(())
        },
        |rig| {
            let r = recover(rig, &[&old])?;
            if !r.confirmed {
                return Err(format!("{r:?}"));
            }
            if rig.status().stored_keys != 1 {
                return Err("the stored key was lost".into());
            }
            rig.install(&new, 0).map_err(|e| e.to_string())?;
            let r = recover(rig, &[&old, &new])?;
            if r.image != new || r.confirmed || r.attempt != 1 {
                return Err(format!("after the resumed install: {r:?}"));
            }
            Ok(())
        },
    );
    assert!(ops > 8, "{ops}");
    assert!(failures.is_empty(), "{failures:#?}");
}
