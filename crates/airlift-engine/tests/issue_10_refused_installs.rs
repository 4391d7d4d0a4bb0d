//! Regression (issue 10): a refused install left its progress record behind,
//! and every later install of the same release resumed onto the refused
//! bytes and failed, across reboots. Now any refusal clears the progress, a
//! resume goes on only over the bytes its record vouches for, and a resumed
//! install that does not verify says so ([`Error::StaleResume`]) and clears
//! the progress, so that trying again starts from byte 0.
#![allow(clippy::unwrap_used)]

mod adversarial_common;

use std::path::Path;

use adversarial_common::*;
use airlift_engine::{AppSlot, Error};

fn fixture(name: &str) -> Vec<u8> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/esp-idf-apps");
    std::fs::read(dir.join(name)).unwrap()
}

/// Begins an install of `manifest_for`'s signed manifest and feeds it
/// `bytes` from where the session resumes; `finish` or just drop (a power
/// cut, a broken connection).
fn attempt(rig: &mut Rig, manifest_for: &[u8], bytes: &[u8], finish: bool) -> Result<u32, Error> {
    let blob = sign(manifest_for, 0);
    let mut dev = rig.device();
    let mut s = dev.begin(&blob)?;
    let from = s.resume_offset();
    let rest = bytes.get(from as usize..).unwrap_or(&[]);
    for chunk in rest.chunks(4096) {
        s.write(chunk)?;
    }
    if finish {
        s.finish()?;
    }
    Ok(from)
}

fn progress(rig: &mut Rig) -> Option<u32> {
    rig.status().install.map(|p| p.offset)
}

fn installs_and_confirms(rig: &mut Rig, image: &[u8]) {
    assert_eq!(
        attempt(rig, image, image, true),
        Ok(0),
        "starts from byte 0"
    );
    let (reset, confirmed) = rig.boot_and_confirm();
    assert_eq!(reset.booted, AppSlot::Ota(1));
    assert!(confirmed);
    assert_eq!(rig.slot_image(AppSlot::Ota(1)).as_deref(), Some(image));
}

#[test]
fn issue_10_a_refused_truncated_upload_leaves_no_progress_and_the_release_then_installs() {
    let v1 = fixture("v1.bin");
    let v2 = fixture("v2.bin");
    let foreign = fixture("hello_world_new.bin");
    let mut rig = Rig::new(default_table(), &v1);
    // The device page: hello_world_new.bin with the release's manifest of v2.bin.
    let refused = attempt(&mut rig, &v2, &foreign, true);
    assert_eq!(
        refused,
        Err(Error::Truncated {
            got: foreign.len() as u32,
            expected: v2.len() as u32
        })
    );
    assert_eq!(progress(&mut rig), None, "nothing of the refusal stays");
    // Reboots change nothing; then the server's deployment of v2.bin.
    assert_eq!(rig.reset().booted, AppSlot::Ota(0));
    installs_and_confirms(&mut rig, &v2);
}

#[test]
fn issue_10_an_image_refused_while_it_is_written_leaves_no_progress() {
    let v1 = fixture("v1.bin");
    let v2 = fixture("v2.bin");
    let mut rig = Rig::new(default_table(), &v1);
    // The first sectors are v2's, past the first checkpoints; then a segment
    // header that announces an impossible length.
    let mut bad = v2.clone();
    let at = 200_000;
    bad[at..].fill(0xA5);
    let refused = attempt(&mut rig, &v2, &bad, true);
    assert!(
        matches!(
            refused,
            Err(Error::Image(_)
                | Error::ChecksumMismatch
                | Error::DigestMismatch
                | Error::ShaMismatch)
        ),
        "{refused:?}"
    );
    assert_eq!(progress(&mut rig), None);
    installs_and_confirms(&mut rig, &v2);
}

#[test]
fn issue_10_a_power_cut_in_a_foreign_upload_makes_the_release_retry_from_zero() {
    let v1 = fixture("v1.bin");
    let v2 = fixture("v2.bin");
    let foreign = fixture("hello_world_new.bin");
    let mut rig = Rig::new(default_table(), &v1);
    // Power goes while the foreign bytes are written under v2's manifest: the
    // engine cannot know yet that they are foreign, and keeps a checkpoint.
    assert_eq!(attempt(&mut rig, &v2, &foreign[..140_000], false), Ok(0));
    assert!(progress(&mut rig).is_some_and(|o| o >= 131_072));
    assert_eq!(rig.reset().booted, AppSlot::Ota(0));
    // The server's deployment resumes onto them, and is told it was misled.
    let resumed = attempt(&mut rig, &v2, &v2, true);
    assert!(
        matches!(resumed, Err(Error::StaleResume { resumed_at }) if resumed_at >= 131_072),
        "{resumed:?}"
    );
    assert_eq!(progress(&mut rig), None);
    // Trying again starts from byte 0, installs and confirms.
    installs_and_confirms(&mut rig, &v2);
}

#[test]
fn issue_10_every_kind_of_refusal_after_an_interrupted_install_clears_the_progress() {
    let old = image(0, 0);
    let new = sim_image("2.0.0", 30_000);
    let mut corrupt = new.clone();
    corrupt[20_000] ^= 0x10;
    let mut too_long = new.clone();
    too_long.extend_from_slice(&[0u8; 100]);
    let cases: [(&str, &[u8], bool); 4] = [
        ("truncated", &new[..25_000], true),
        ("corrupted", &corrupt, true),
        ("too long", &too_long, true),
        ("corrupted, never finished", &corrupt, false),
    ];
    for (name, bytes, finish) in cases {
        let mut rig = Rig::new(default_table(), &old);
        // A good attempt reaches a checkpoint, then the power goes.
        attempt(&mut rig, &new, &new[..10_000], false).unwrap();
        assert!(progress(&mut rig).is_some(), "{name}: checkpoint");
        rig.reset();
        let result = attempt(&mut rig, &new, bytes, finish);
        if name == "corrupted, never finished" {
            // The corruption is in bytes that were never verified: a broken
            // connection at that point keeps resuming possible...
            assert_eq!(result, Ok(8192), "{name}");
            // ...and the final check then refuses, clearing the progress.
            let again = attempt(&mut rig, &new, &corrupt, true);
            assert!(
                matches!(again, Err(Error::StaleResume { .. })),
                "{name}: {again:?}"
            );
        } else {
            assert!(result.is_err(), "{name}: {result:?}");
        }
        assert_eq!(progress(&mut rig), None, "{name}: progress cleared");
        assert_eq!(rig.reset().booted, AppSlot::Ota(0), "{name}");
        installs_and_confirms(&mut rig, &new);
    }
}

#[test]
fn a_progress_record_of_another_image_is_never_resumed() {
    let old = image(0, 0);
    let a = sim_image("2.0.0", 30_000);
    let b = sim_image("3.0.0", 30_000);
    let mut rig = Rig::new(default_table(), &old);
    attempt(&mut rig, &a, &a[..20_000], false).unwrap();
    assert!(progress(&mut rig).is_some());
    rig.reset();
    assert_eq!(attempt(&mut rig, &b, &b, true), Ok(0));
}

fn sim_image(version: &str, size: usize) -> Vec<u8> {
    airlift_engine::sim::test_image(version, 0, size)
}
