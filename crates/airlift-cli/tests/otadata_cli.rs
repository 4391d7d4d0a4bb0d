//! `airlift otadata inspect` as a user runs it: which copy is valid and which
//! slot boots, from a bare otadata partition or a whole flash image.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use airlift_format::otadata::{OtaSelectEntry, OtaState};
use airlift_format::partition::{
    AIRLIFT_DEFAULT, PartitionEntry, PartitionType, TABLE_MAX_LEN, app_subtype, build,
};
use serde_json::Value;

fn airlift(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_airlift"))
        .args(args)
        .output()
        .unwrap()
}

fn scratch_file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("otadata_cli_{name}"));
    std::fs::write(&path, bytes).unwrap();
    path
}

fn otadata(copies: [Option<OtaSelectEntry>; 2]) -> Vec<u8> {
    let mut part = vec![0xFFu8; 0x2000];
    for (i, copy) in copies.iter().enumerate() {
        if let Some(entry) = copy {
            part[i * 0x1000..i * 0x1000 + 32].copy_from_slice(&entry.encode());
        }
    }
    part
}

fn flash_image(entries: &[PartitionEntry], otadata_part: &[u8]) -> Vec<u8> {
    let mut flash = vec![0xFFu8; 0x40_0000];
    let mut table = [0u8; TABLE_MAX_LEN];
    build(entries, &mut table).unwrap();
    flash[0x8000..0x8000 + TABLE_MAX_LEN].copy_from_slice(&table);
    let (offset, _) = entries
        .iter()
        .find(|e| e.is_otadata())
        .map(|e| (e.offset as usize, e.size))
        .unwrap();
    flash[offset..offset + otadata_part.len()].copy_from_slice(otadata_part);
    flash
}

fn inspect_json(path: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["otadata", "inspect", "--json", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = airlift(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn e(seq: u32, state: OtaState) -> Option<OtaSelectEntry> {
    Some(OtaSelectEntry::new(seq, state))
}

#[test]
fn both_copies_valid_the_higher_sequence_boots() {
    let path = scratch_file(
        "two.bin",
        &otadata([e(1, OtaState::Valid), e(2, OtaState::Undefined)]),
    );
    let json = inspect_json(&path, &[]);
    assert_eq!(json["source"], "otadata");
    assert_eq!(json["slots"], 2);
    assert_eq!(json["slots_from"], "default");
    assert_eq!(json["active"], 1);
    assert_eq!(json["boot_slot"], 1);
    assert_eq!(json["boot"], "ota_1");
    assert_eq!(
        json["entries"][0],
        serde_json::json!({
            "copy": 0, "blank": false, "seq": 1, "state": "VALID", "state_raw": 2,
            "crc": 0x4743_989Au32, "crc_expected": 0x4743_989Au32, "crc_valid": true,
            "valid": true, "slot": 0
        })
    );
    assert_eq!(json["entries"][1]["state"], "UNDEFINED");
}

#[test]
fn slot_count_option_changes_the_slot_a_sequence_selects() {
    let path = scratch_file("three.bin", &otadata([e(3, OtaState::Valid), None]));
    assert_eq!(inspect_json(&path, &[])["boot"], "ota_0");
    let json = inspect_json(&path, &["--slots", "3"]);
    assert_eq!(json["slots_from"], "--slots");
    assert_eq!(json["boot"], "ota_2");
}

#[test]
fn blank_otadata_falls_back_and_says_to_what() {
    let path = scratch_file("blank.bin", &otadata([None, None]));
    let json = inspect_json(&path, &[]);
    assert_eq!(json["active"], Value::Null);
    assert_eq!(json["boot_slot"], Value::Null);
    assert_eq!(json["boot"], "factory app, or ota_0 if there is none");
    assert_eq!(json["entries"][0]["blank"], true);
    assert_eq!(json["entries"][0]["slot"], Value::Null);

    let text = airlift(&["otadata", "inspect", path.to_str().unwrap()]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("copy 0 @0x0000: blank (erased)"), "{text}");
    assert!(text.contains("active: none"), "{text}");
}

#[test]
fn a_corrupt_copy_is_reported_and_the_other_one_boots() {
    let mut torn = OtaSelectEntry::new(4, OtaState::New);
    torn.crc ^= 1;
    let path = scratch_file("torn.bin", &otadata([e(3, OtaState::Valid), Some(torn)]));
    let json = inspect_json(&path, &[]);
    assert_eq!(json["entries"][1]["crc_valid"], false);
    assert_eq!(json["entries"][1]["valid"], false);
    assert_eq!(json["active"], 0);
    assert_eq!(json["boot"], "ota_0");

    let out = airlift(&["otadata", "inspect", path.to_str().unwrap()]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("copy 1 @0x1000: seq 4 -> ota_1, state NEW, crc 0x709d68a9 WRONG, expected 0x709d68a8: not valid"),
        "{text}"
    );
    assert!(text.contains("boots: ota_0"), "{text}");
}

#[test]
fn flash_image_takes_otadata_and_slot_count_from_its_partition_table() {
    let part = otadata([e(5, OtaState::Valid), e(6, OtaState::Invalid)]);
    let path = scratch_file("flash.bin", &flash_image(&AIRLIFT_DEFAULT, &part));
    let json = inspect_json(&path, &[]);
    assert_eq!(json["source"], "flash_image");
    assert_eq!(json["otadata_offset"], 0xD000);
    assert_eq!(json["slots"], 2);
    assert_eq!(json["slots_from"], "partition table");
    assert_eq!(json["boot"], "ota_0");

    // Blank otadata in an image with a factory app boots the factory app.
    let blank = otadata([None, None]);
    let path = scratch_file("flash_blank.bin", &flash_image(&AIRLIFT_DEFAULT, &blank));
    assert_eq!(inspect_json(&path, &[])["boot"], "factory");
}

#[test]
fn flash_image_with_three_slots_and_no_factory() {
    let app = |n: u8, offset: u32| {
        PartitionEntry::new(
            &format!("ota_{n}"),
            PartitionType::APP,
            app_subtype::OTA_0 + n,
            offset,
            0x10_0000,
            0,
        )
        .unwrap()
    };
    let entries = [
        AIRLIFT_DEFAULT[1], // otadata at 0xd000
        app(0, 0x1_0000),
        app(1, 0x11_0000),
        app(2, 0x21_0000),
    ];
    let path = scratch_file(
        "flash_three.bin",
        &flash_image(&entries, &otadata([e(6, OtaState::Valid), None])),
    );
    let json = inspect_json(&path, &[]);
    assert_eq!(json["slots"], 3);
    assert_eq!(json["boot"], "ota_2");

    let path = scratch_file(
        "flash_three_blank.bin",
        &flash_image(&entries, &otadata([None, None])),
    );
    assert_eq!(inspect_json(&path, &[])["boot"], "ota_0 (no factory app)");
}

#[test]
fn unreadable_inputs_exit_2_naming_the_problem() {
    #[track_caller]
    fn check(name: &str, bytes: &[u8], args: &[&str], message: &str) {
        let path = scratch_file(name, bytes);
        let mut all = vec!["otadata", "inspect", path.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = airlift(&all);
        assert_eq!(out.status.code(), Some(2), "{name}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(stderr.contains(message), "{name}: {stderr}");
    }
    check(
        "short.bin",
        &[0xFF; 100],
        &[],
        "otadata is 100 bytes, expected at least 4128",
    );
    check(
        "no_table.bin",
        &vec![0xFF; 0x20_0000],
        &[],
        "there is no partition table at 0x8000",
    );
    let mut no_otadata = vec![0xFFu8; 0x40_0000];
    let mut table = [0u8; TABLE_MAX_LEN];
    build(&AIRLIFT_DEFAULT[2..], &mut table).unwrap();
    no_otadata[0x8000..0x8000 + TABLE_MAX_LEN].copy_from_slice(&table);
    check(
        "no_otadata.bin",
        &no_otadata,
        &[],
        "has no otadata partition",
    );
    check(
        "slots0.bin",
        &otadata([None, None]),
        &["--slots", "0"],
        "0 is not in 1..=16",
    );
}
