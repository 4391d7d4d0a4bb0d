//! What the engine promises, one behaviour per test.
#![allow(clippy::unwrap_used)]

mod common;

use airlift_engine::sim::{self, BootloaderKind, SimFlash};
use airlift_engine::{AppSlot, BootDecision, BootOutcome, Config, Device, Error};
use airlift_format::image::{Chip, ImageBuilder};
use airlift_format::manifest::{self, Manifest, SigningKey, key_id};
use airlift_format::otadata::{self, OtaSelectEntry, OtaState, active_entry, boot_slot};
use common::*;

const OTA0: AppSlot = AppSlot::Ota(0);
const OTA1: AppSlot = AppSlot::Ota(1);

fn otadata_entries(flash: &mut SimFlash) -> [OtaSelectEntry; 2] {
    sim::bootloader::read_otadata(flash, &layout())
}

#[test]
fn new_image_boots_on_trial_after_install() {
    let mut flash = fresh();
    install(&mut flash, &new_image()).unwrap();
    assert_eq!(boot(&mut flash, 3), run(OTA1, false, 1, 3));
    assert_eq!(slot_bytes(&flash, OTA1).unwrap(), new_image());
    assert_eq!(
        slot_bytes(&flash, OTA0).unwrap(),
        old_image(),
        "running slot untouched"
    );
}

#[test]
fn confirmed_image_stays_across_reboots() {
    let mut flash = fresh();
    install(&mut flash, &new_image()).unwrap();
    boot(&mut flash, 3);
    assert!(confirm(&mut flash));
    for _ in 0..10 {
        assert_eq!(boot(&mut flash, 3), run(OTA1, true, 0, 3));
    }
    assert!(!confirm(&mut flash), "nothing left to confirm");
}

/// Boots an installed, never confirmed image until the guard rolls it back;
/// returns the trial boots it got and the decision that ended them.
fn boots_until_rollback(max_attempts: u8, kind: BootloaderKind) -> (u8, BootDecision) {
    let mut flash = fresh();
    install(&mut flash, &new_image()).unwrap();
    let mut trial_boots = 0;
    loop {
        match boot_with(&mut flash, max_attempts, kind) {
            BootDecision::Run {
                slot: OTA1,
                confirmed: false,
                attempt,
                ..
            } => {
                trial_boots += 1;
                assert_eq!(attempt, trial_boots);
            }
            other => {
                assert_eq!(
                    boot_with(&mut flash, max_attempts, kind),
                    run(OTA0, true, 0, max_attempts)
                );
                assert_eq!(selected(&mut flash), OTA0);
                return (trial_boots, other);
            }
        }
        assert!(trial_boots <= 20, "never rolled back");
    }
}

#[test]
fn unconfirmed_image_rolls_back_after_exactly_three_failed_boots() {
    let (boots, decision) = boots_until_rollback(3, BootloaderKind::Plain);
    assert_eq!(boots, 3);
    assert_eq!(
        decision,
        BootDecision::ResetRequired {
            from: OTA1,
            to: OTA0,
            attempts: 3
        }
    );
}

#[test]
fn unconfirmed_image_rolls_back_after_the_configured_number_of_boots() {
    for n in [1, 2, 5, 10] {
        assert_eq!(
            boots_until_rollback(n, BootloaderKind::Plain).0,
            n,
            "limit {n}"
        );
    }
}

#[test]
fn rollback_enabled_esp_idf_bootloader_also_gives_every_try() {
    // Activation writes UNDEFINED, which that bootloader leaves alone: it
    // would abort a NEW image after a single unconfirmed boot.
    for n in [1, 3, 5] {
        assert_eq!(
            boots_until_rollback(n, BootloaderKind::Rollback).0,
            n,
            "limit {n}"
        );
    }
}

#[test]
fn rollback_selects_the_previous_slot_in_both_otadata_copies() {
    let mut flash = fresh();
    install(&mut flash, &new_image()).unwrap();
    for _ in 0..4 {
        boot(&mut flash, 3);
    }
    let entries = otadata_entries(&mut flash);
    assert_eq!(boot_slot(&entries, 2), otadata::BootTarget::Ota(0));
    for e in &entries {
        assert!(e.is_valid(), "{e:?}");
        assert_eq!((e.slot(2), e.state), (Some(0), OtaState::Valid));
    }
}

#[test]
fn otadata_written_by_the_engine_decodes_with_the_esp_idf_rule() {
    let mut flash = fresh();
    // Provisioned: copy 0 = {seq 1, VALID} selecting ota_0.
    install(&mut flash, &new_image()).unwrap();
    let e = otadata_entries(&mut flash);
    // Sequence, state and CRC as ESP-IDF writes them; Airlift's mark in the
    // label ESP-IDF ignores: a trial ("ALFT") that rolls back to ota_0, of
    // an image with security version 1.
    let raw = e[1].encode();
    assert_eq!(raw[..4], [2, 0, 0, 0]);
    assert_eq!(raw[4..13], *b"ALFT\x00\x01\x00\x00\x00");
    assert_eq!(raw[13..24], [0xFF; 11]);
    assert_eq!(
        raw[24..],
        OtaSelectEntry::new(2, OtaState::Undefined).encode()[24..]
    );
    assert!(e[1].is_valid() && e[1].crc_ok());
    assert_eq!(active_entry(&e), Some(1));
    assert_eq!(boot_slot(&e, 2), otadata::BootTarget::Ota(1));
    boot(&mut flash, 3);
    assert!(confirm(&mut flash));
    let e = otadata_entries(&mut flash);
    let raw = e[0].encode();
    assert_eq!(raw[..4], [4, 0, 0, 0]);
    assert_eq!(raw[4..13], *b"ALFV\xFF\x01\x00\x00\x00");
    assert_eq!(
        raw[24..],
        OtaSelectEntry::new(4, OtaState::Valid).encode()[24..]
    );
    assert_eq!(active_entry(&e), Some(0));
    assert_eq!(boot_slot(&e, 2), otadata::BootTarget::Ota(1));
}

#[test]
fn one_corrupt_otadata_copy_still_boots() {
    // After an update both copies are valid; corrupt each in turn.
    for copy in [0usize, 1] {
        let mut flash = fresh();
        install(&mut flash, &new_image()).unwrap();
        boot(&mut flash, 3);
        assert!(confirm(&mut flash));
        let l = layout();
        let at = l.otadata.offset as usize + copy * otadata::SECTOR_SIZE as usize + 28;
        let mut crc = flash.bytes()[at..at + 4].to_vec();
        crc[0] ^= 0xFF;
        flash.load(at, &crc);
        let decision = boot(&mut flash, 3);
        assert!(
            matches!(
                decision,
                BootDecision::Run {
                    confirmed: true,
                    ..
                }
            ),
            "copy {copy}: {decision:?}"
        );
        // And the engine still installs and activates an update.
        let v3 = sim::test_image("3.0.0", 1, 7000);
        install(&mut flash, &v3).unwrap();
        let BootDecision::Run { slot, .. } = boot(&mut flash, 3) else {
            panic!("no run")
        };
        assert_eq!(slot_bytes(&flash, slot).unwrap(), v3, "copy {copy}");
    }
}

#[test]
fn abort_leaves_the_running_image_selected() {
    let mut flash = fresh();
    let image = new_image();
    let blob = sign(&image);
    let mut dev = Device::open(&mut flash, config(3)).unwrap();
    let mut s = dev.begin(&blob).unwrap();
    s.write(&image[..5000]).unwrap();
    s.abort().unwrap();
    assert_eq!(boot(&mut flash, 3), run(OTA0, true, 0, 3));
}

#[test]
fn install_is_refused_while_the_running_image_is_on_trial() {
    let mut flash = fresh();
    install(&mut flash, &new_image()).unwrap();
    boot(&mut flash, 3);
    let v3 = sim::test_image("3.0.0", 1, 7000);
    assert_eq!(
        install(&mut flash, &v3),
        Err(Error::RunningImageUnconfirmed)
    );
}

#[test]
fn interrupted_install_resumes_from_its_last_checkpoint() {
    let mut flash = fresh();
    let image = sim::test_image("2.0.0", 1, 40_000);
    let blob = sign(&image);
    let cfg = Config {
        checkpoint_interval: 8192,
        ..config(3)
    };
    {
        let mut dev = Device::open(&mut flash, cfg).unwrap();
        let mut s = dev.begin(&blob).unwrap();
        s.write(&image[..30_000]).unwrap();
        // Reset: the session is dropped without finish or abort.
    }
    boot(&mut flash, 3);
    let mut dev = Device::open(&mut flash, cfg).unwrap();
    let mut s = dev.begin(&blob).unwrap();
    let from = s.resume_offset() as usize;
    assert_eq!(from, 24_576, "resumes at the last 8 KiB checkpoint");
    s.write(&image[from..]).unwrap();
    s.finish().unwrap();
    assert_eq!(boot(&mut flash, 3), run(OTA1, false, 1, 3));
    assert_eq!(slot_bytes(&flash, OTA1).unwrap(), image);
}

#[test]
fn install_accepts_any_chunk_sizes() {
    let image = new_image();
    for chunk in [1, 3, 4, 255, 256, 257, 4095, 4096, 10_000] {
        let mut flash = fresh();
        let blob = sign(&image);
        let mut dev = Device::open(&mut flash, config(3)).unwrap();
        let mut s = dev.begin(&blob).unwrap();
        for c in image.chunks(chunk) {
            s.write(c).unwrap();
        }
        s.finish().unwrap();
        assert_eq!(slot_bytes(&flash, OTA1).unwrap(), image, "chunk {chunk}");
    }
}

#[test]
fn confirm_raises_the_minimum_security_version() {
    let mut flash = fresh();
    let v5 = sim::test_image("2.0.0", 5, 8000);
    install(&mut flash, &v5).unwrap();
    boot(&mut flash, 3);
    assert!(confirm(&mut flash));
    let mut dev = Device::open(&mut flash, config(3)).unwrap();
    assert_eq!(dev.status().unwrap().min_security_version, 5);
    let v4 = sim::test_image("3.0.0", 4, 8000);
    assert_eq!(
        install(&mut flash, &v4),
        Err(Error::OlderSecurityVersion { got: 4, minimum: 5 })
    );
}

#[test]
fn boot_log_records_every_boot() {
    let mut flash = fresh();
    install(&mut flash, &new_image()).unwrap();
    for _ in 0..5 {
        boot(&mut flash, 3);
    }
    let mut dev = Device::open(&mut flash, config(3)).unwrap();
    let mut log = Vec::new();
    dev.boot_log(|r| log.push(*r)).unwrap();
    let summary: Vec<_> = log
        .iter()
        .map(|r| (r.slot, r.outcome, r.attempt, r.version.as_str().to_owned()))
        .collect();
    let v = |s: &str| s.to_owned();
    assert_eq!(
        summary,
        [
            (OTA0, BootOutcome::Confirmed, 0, v("1.0.0")),
            (OTA1, BootOutcome::Trial, 1, v("2.0.0")),
            (OTA1, BootOutcome::Trial, 2, v("2.0.0")),
            (OTA1, BootOutcome::Trial, 3, v("2.0.0")),
            (OTA1, BootOutcome::RolledBack, 3, v("2.0.0")),
            (OTA0, BootOutcome::Confirmed, 0, v("1.0.0")),
        ]
    );
    assert!(log.iter().all(|r| r.timestamp == 1_700_000_000));
    let new_sha = airlift_format::image::verify(&new_image())
        .unwrap()
        .file_sha256;
    assert_eq!(log[1].sha_prefix, new_sha[..8]);
}

#[test]
fn boot_log_stays_bounded_and_keeps_keys_and_state_across_rotations() {
    let mut flash = fresh();
    for _ in 0..2000 {
        boot(&mut flash, 3);
    }
    let mut dev = Device::open(&mut flash, config(3)).unwrap();
    let mut count = 0;
    dev.boot_log(|_| count += 1).unwrap();
    let pos = dev.log_position();
    assert!(pos.current.unwrap().1 > pos.sectors, "the ring wrapped");
    // Bounded by the ring, and most of it: the sector being written and
    // the snapshots are the only room not holding boot records.
    let sectors = pos.sectors as usize;
    assert!(
        count < sectors * 64 && count > (sectors - 2) * 50,
        "{count} records kept in {sectors} sectors"
    );
    assert_eq!(dev.stored_keys(), [public_key()]);
    // The stored key still verifies an update.
    install(&mut flash, &new_image()).unwrap();
    assert_eq!(boot(&mut flash, 3), run(OTA1, false, 1, 3));
}

#[test]
fn bootloader_fallback_from_a_broken_new_image_rolls_back() {
    let mut flash = fresh();
    install(&mut flash, &new_image()).unwrap();
    // The slot gets corrupted after activation: the bootloader cannot start it.
    let at = layout().slots[1].offset as usize + 2000;
    let byte = flash.bytes()[at];
    flash.load(at, &[byte ^ 0x01]);
    let d = boot(&mut flash, 3);
    assert_eq!(d, run(OTA0, true, 0, 3));
    assert_eq!(selected(&mut flash), OTA0);
    let mut dev = Device::open(&mut flash, config(3)).unwrap();
    let mut outcomes = Vec::new();
    dev.boot_log(|r| outcomes.push(r.outcome)).unwrap();
    assert_eq!(outcomes.last(), Some(&BootOutcome::TrialNotBooted));
}

#[test]
fn device_reads_its_layout_from_the_partition_table_on_flash() {
    let mut flash = fresh();
    let dev = Device::open(&mut flash, config(3)).unwrap();
    assert_eq!(*dev.layout(), layout());
    // A table without Airlift's partition.
    let mut bare = sim::provision(
        &airlift_format::partition::AIRLIFT_DEFAULT,
        sim::FLASH_SIZE,
        &old_image(),
        &[],
    )
    .unwrap();
    let mut table = [0xFFu8; airlift_format::partition::TABLE_MAX_LEN];
    airlift_format::partition::build(&airlift_format::partition::DEFAULT_TWO_OTA, &mut table)
        .unwrap();
    bare.load(0x8000, &table);
    assert_eq!(
        Device::open(&mut bare, config(3)).err(),
        Some(Error::NoDataPartition)
    );
}

// ---- refusals: each one a distinct error, and the old image stays selected.

struct Refusal {
    name: &'static str,
    blob: Vec<u8>,
    stream: Vec<u8>,
    slot: Option<u8>,
}

fn manifest_blob(image: &[u8], key: &SigningKey, edit: impl FnOnce(&mut Manifest<'_>)) -> Vec<u8> {
    let info = airlift_format::image::verify(image).unwrap();
    let mut m = Manifest {
        chip_id: info.header.chip_id,
        security_version: 1,
        image_size: image.len() as u32,
        image_sha256: info.file_sha256,
        delta_base_sha256: None,
        key_id: [0; 8],
        product: "airlift-sim",
        version: "2.0.0",
    };
    edit(&mut m);
    manifest::sign(&m, key).unwrap()
}

fn attempt(flash: &mut SimFlash, r: &Refusal) -> Result<(), Error> {
    let mut dev = Device::open(&mut *flash, config(3))?;
    let mut s = match r.slot {
        Some(slot) => dev.begin_slot(&r.blob, slot)?,
        None => dev.begin(&r.blob)?,
    };
    for c in r.stream.chunks(777) {
        s.write(c)?;
    }
    s.finish().map(|_| ())
}

fn check_refused(r: Refusal, expected: Error) {
    let mut flash = fresh();
    assert_eq!(attempt(&mut flash, &r), Err(expected), "{}", r.name);
    assert_eq!(selected(&mut flash), OTA0, "{}", r.name);
    assert_eq!(boot(&mut flash, 3), run(OTA0, true, 0, 3), "{}", r.name);
}

#[test]
fn bad_updates_are_refused_with_distinct_errors_and_the_old_image_stays() {
    let image = new_image();
    let key = signing_key();
    let good = || manifest_blob(&image, &key, |_| {});
    let other_key = SigningKey::from_bytes(&[9; 32]);

    check_refused(
        Refusal {
            name: "wrong key",
            blob: manifest_blob(&image, &other_key, |_| {}),
            stream: image.clone(),
            slot: None,
        },
        Error::UnknownKey {
            key_id: key_id(&other_key.verifying_key().to_bytes()),
        },
    );
    let mut forged = good();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    check_refused(
        Refusal {
            name: "bad signature",
            blob: forged,
            stream: image.clone(),
            slot: None,
        },
        Error::BadSignature,
    );
    let c3 = ImageBuilder::new(Chip::Esp32c3)
        .app("x", "2.0.0")
        .filler(0x4200_0020, 4000)
        .build();
    check_refused(
        Refusal {
            name: "wrong chip",
            blob: manifest_blob(&c3, &key, |_| {}),
            stream: c3.clone(),
            slot: None,
        },
        Error::WrongChip {
            expected: 0,
            got: 5,
        },
    );
    check_refused(
        Refusal {
            name: "image chip differs from the manifest's",
            blob: manifest_blob(&c3, &key, |m| m.chip_id = 0),
            stream: c3.clone(),
            slot: None,
        },
        Error::WrongChip {
            expected: 0,
            got: 5,
        },
    );
    check_refused(
        Refusal {
            name: "too big",
            blob: manifest_blob(&image, &key, |m| m.image_size = 0x10_0001),
            stream: image.clone(),
            slot: None,
        },
        Error::TooBig {
            size: 0x10_0001,
            slot_size: 0x10_0000,
        },
    );
    check_refused(
        Refusal {
            name: "running slot",
            blob: good(),
            stream: image.clone(),
            slot: Some(0),
        },
        Error::RunningSlotTarget { slot: OTA0 },
    );
    let mut truncated = image.clone();
    truncated.pop();
    check_refused(
        Refusal {
            name: "truncated",
            blob: good(),
            stream: truncated,
            slot: None,
        },
        Error::Truncated {
            got: image.len() as u32 - 1,
            expected: image.len() as u32,
        },
    );
    let mut flipped_data = image.clone();
    flipped_data[2000] ^= 0x01;
    check_refused(
        Refusal {
            name: "flipped data byte",
            blob: good(),
            stream: flipped_data,
            slot: None,
        },
        Error::ChecksumMismatch,
    );
    let mut flipped_digest = image.clone();
    let d = flipped_digest.len() - 5;
    flipped_digest[d] ^= 0x01;
    check_refused(
        Refusal {
            name: "flipped digest byte",
            blob: good(),
            stream: flipped_digest,
            slot: None,
        },
        Error::DigestMismatch,
    );
    let other_image = sim::test_image("2.0.0", 1, 9000 - 4);
    let mut same_len = other_image.clone();
    same_len.resize(image.len(), 0);
    let swapped = manifest_blob(&other_image, &key, |m| {
        m.image_size = image.len() as u32;
    });
    check_refused(
        Refusal {
            name: "valid image that is not the signed one",
            blob: swapped,
            stream: image.clone(),
            slot: None,
        },
        Error::ShaMismatch,
    );
}

#[test]
fn older_security_version_is_refused() {
    let mut flash = fresh();
    {
        let mut dev = Device::open(&mut flash, config(3)).unwrap();
        dev.raise_min_security_version(3).unwrap();
    }
    let blob = manifest_blob(&new_image(), &signing_key(), |m| m.security_version = 2);
    let r = Refusal {
        name: "old security version",
        blob,
        stream: new_image(),
        slot: None,
    };
    assert_eq!(
        attempt(&mut flash, &r),
        Err(Error::OlderSecurityVersion { got: 2, minimum: 3 })
    );
    assert_eq!(boot(&mut flash, 3), run(OTA0, true, 0, 3));
}

#[test]
fn resumed_install_over_corrupted_flash_restarts_from_zero() {
    let mut flash = fresh();
    let image = sim::test_image("2.0.0", 1, 40_000);
    let blob = sign(&image);
    let cfg = Config {
        checkpoint_interval: 8192,
        ..config(3)
    };
    {
        let mut dev = Device::open(&mut flash, cfg).unwrap();
        let mut s = dev.begin(&blob).unwrap();
        s.write(&image[..30_000]).unwrap();
    }
    // A bit flips in what was already written.
    let at = layout().slots[1].offset as usize + 5000;
    let byte = flash.bytes()[at];
    flash.load(at, &[byte ^ 0x80]);
    // The progress record carries the hash of what was written: the slot no
    // longer matches it, so nothing is resumed.
    let mut dev = Device::open(&mut flash, cfg).unwrap();
    let mut s = dev.begin(&blob).unwrap();
    assert_eq!(s.resume_offset(), 0);
    s.write(&image).unwrap();
    s.finish().unwrap();
    assert_eq!(boot(&mut flash, 3), run(OTA1, false, 1, 3));
}

#[test]
fn otadata_written_by_esp_idf_without_rollback_counts_as_confirmed() {
    // esp_ota_set_boot_partition with rollback disabled writes UNDEFINED.
    let mut flash = fresh();
    let l = layout();
    let entry = OtaSelectEntry::new(2, OtaState::Undefined);
    let at = l.otadata.offset as usize + otadata::SECTOR_SIZE as usize;
    flash.load(at, &entry.encode());
    flash.load(l.slots[1].offset as usize, &new_image());
    assert_eq!(boot(&mut flash, 3), run(OTA1, true, 0, 3));
    // And Airlift updates from there into ota_0, keeping ota_1 as the fallback.
    let v3 = sim::test_image("3.0.0", 1, 7000);
    install(&mut flash, &v3).unwrap();
    assert_eq!(boot(&mut flash, 3), run(OTA0, false, 1, 3));
    assert_eq!(slot_bytes(&flash, OTA1).unwrap(), new_image());
}

#[test]
fn the_data_partition_stores_up_to_four_trusted_keys() {
    let mut flash = fresh();
    let mut dev = Device::open(&mut flash, config(3)).unwrap();
    for n in 1..=3u8 {
        dev.add_trusted_key(&[n; 32]).unwrap();
    }
    dev.add_trusted_key(&[1; 32]).unwrap();
    assert_eq!(dev.stored_keys().len(), 4);
    assert_eq!(
        dev.add_trusted_key(&[9; 32]),
        Err(Error::TooManyKeys { max: 4 })
    );
}

/// A flash that records every erase or program touching a watched region.
struct Watch<'a> {
    inner: &'a mut SimFlash,
    watched: (u32, u32),
    hits: Vec<(u32, u32)>,
}

impl embedded_storage::nor_flash::ErrorType for Watch<'_> {
    type Error = airlift_engine::sim::flash::SimFlashError;
}

impl embedded_storage::nor_flash::ReadNorFlash for Watch<'_> {
    const READ_SIZE: usize = 1;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        self.inner.read(offset, bytes)
    }
    fn capacity(&self) -> usize {
        self.inner.capacity()
    }
}

impl embedded_storage::nor_flash::NorFlash for Watch<'_> {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = 4096;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        if from < self.watched.1 && self.watched.0 < to {
            self.hits.push((from, to));
        }
        self.inner.erase(from, to)
    }
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        let end = offset + bytes.len() as u32;
        if offset < self.watched.1 && self.watched.0 < end {
            self.hits.push((offset, end));
        }
        self.inner.write(offset, bytes)
    }
}

#[test]
fn install_never_erases_or_programs_the_running_slot() {
    let running = layout().slots[0];
    for (image, chunk) in [
        (new_image(), 1),
        (new_image(), 4096),
        (sim::test_image("2.0.0", 1, 200_000), 3000),
    ] {
        let mut flash = fresh();
        let mut watch = Watch {
            inner: &mut flash,
            watched: (running.offset, running.end()),
            hits: Vec::new(),
        };
        let blob = sign(&image);
        {
            let mut dev = Device::open(&mut watch, config(3)).unwrap();
            dev.boot(Some(OTA0), 1).unwrap();
            let mut s = dev.begin(&blob).unwrap();
            for c in image.chunks(chunk) {
                s.write(c).unwrap();
            }
            s.finish().unwrap();
        }
        assert_eq!(watch.hits, [], "chunk {chunk}");
        assert_eq!(boot(&mut flash, 3), run(OTA1, false, 1, 3));
    }
}

#[test]
fn damage_to_one_copy_of_a_critical_record_loses_nothing() {
    let mut flash = fresh();
    install(&mut flash, &new_image()).unwrap();
    // Flip a bit in the first activation record (kind 0x41) of the data partition.
    let data = layout().data;
    let records = data.offset as usize..data.end() as usize;
    let at = records
        .step_by(64)
        .find(|&at| flash.bytes()[at] == 0x41)
        .unwrap();
    let byte = flash.bytes()[at + 10];
    flash.load(at + 10, &[byte ^ 0x04]);
    // The image is still on trial, and still rolls back.
    assert_eq!(boot(&mut flash, 3), run(OTA1, false, 1, 3));
    assert_eq!(boot(&mut flash, 3), run(OTA1, false, 2, 3));
    assert_eq!(boot(&mut flash, 3), run(OTA1, false, 3, 3));
    assert!(matches!(
        boot(&mut flash, 3),
        BootDecision::ResetRequired { .. }
    ));
    assert_eq!(boot(&mut flash, 3), run(OTA0, true, 0, 3));
}

#[test]
fn an_image_esp_idf_left_pending_verify_is_confirmed_as_esp_idf_would() {
    // ESP-IDF's OTA code with app rollback activates in state NEW; the
    // rollback bootloader makes it PENDING_VERIFY at the first boot.
    let mut flash = fresh();
    let l = layout();
    flash.load(l.slots[1].offset as usize, &new_image());
    let at = l.otadata.offset as usize + otadata::SECTOR_SIZE as usize;
    flash.load(at, &OtaSelectEntry::new(2, OtaState::New).encode());
    let d = boot_with(&mut flash, 3, BootloaderKind::Rollback);
    assert_eq!(d, run(OTA1, false, 1, 1));
    let v3 = sim::test_image("3.0.0", 1, 7000);
    assert_eq!(
        install(&mut flash, &v3),
        Err(Error::RunningImageUnconfirmed)
    );
    let mut dev = Device::open(&mut flash, config(3)).unwrap();
    dev.boot(Some(OTA1), 1).unwrap();
    assert!(dev.confirm().unwrap());
    for _ in 0..3 {
        assert_eq!(
            boot_with(&mut flash, 3, BootloaderKind::Rollback),
            run(OTA1, true, 0, 3)
        );
    }
}

#[test]
fn a_wiped_data_partition_keeps_the_trial_and_the_minimum_security_version() {
    // otadata's marks carry what safety needs when Airlift's own partition is lost.
    let mut flash = fresh();
    let v5 = sim::test_image("2.0.0", 5, 8000);
    install(&mut flash, &v5).unwrap();
    boot(&mut flash, 3);
    assert!(confirm(&mut flash));
    let v6 = sim::test_image("3.0.0", 6, 8000);
    install(&mut flash, &v6).unwrap();
    boot(&mut flash, 3);
    let data = layout().data;
    flash.load(data.offset as usize, &vec![0xFF; data.size as usize]);
    // Still a trial: it gets its tries and rolls back to ota_1.
    let mut tries = 0;
    loop {
        match boot(&mut flash, 3) {
            BootDecision::Run {
                confirmed: false, ..
            } => tries += 1,
            BootDecision::ResetRequired { to, .. } => {
                assert_eq!(to, OTA1);
                break;
            }
            other => panic!("the unconfirmed image ran as {other:?}"),
        }
        assert!(tries <= 3);
    }
    assert_eq!(tries, 3);
    assert_eq!(boot(&mut flash, 3), run(OTA1, true, 0, 3));
    let mut dev = Device::open(&mut flash, config(3)).unwrap();
    assert_eq!(dev.status().unwrap().min_security_version, 5);
}
