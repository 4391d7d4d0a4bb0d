//! `airlift partitions inspect|build` as a user runs them: output, JSON keys,
//! exit codes.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use airlift_format::partition::{AIRLIFT_DEFAULT, DEFAULT_TWO_OTA, TABLE_MAX_LEN, Table, build};
use serde_json::Value;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn airlift(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_airlift"))
        .args(args)
        .output()
        .unwrap()
}

fn scratch(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("partitions_cli_{name}"))
}

fn scratch_file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = scratch(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn table(entries: &[airlift_format::partition::PartitionEntry]) -> Vec<u8> {
    let mut out = [0u8; TABLE_MAX_LEN];
    build(entries, &mut out).unwrap();
    out.to_vec()
}

fn inspect_json(path: &Path) -> (Option<i32>, Value) {
    let out = airlift(&["partitions", "inspect", "--json", path.to_str().unwrap()]);
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), json)
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

#[test]
fn build_writes_the_table_esp_idf_builds_from_the_two_ota_csv() {
    let csv = workspace().join("testdata/partitions/partitions_two_ota.csv");
    let output = scratch("two_ota.bin");
    let out = airlift(&[
        "partitions",
        "build",
        csv.to_str().unwrap(),
        "-o",
        output.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("6 partitions, md5 bf25822c0fa6d8641bd930251e06b4c4"));
    let bytes = std::fs::read(&output).unwrap();
    assert_eq!(bytes.len(), TABLE_MAX_LEN);
    assert_eq!(bytes, table(&DEFAULT_TWO_OTA));
}

#[test]
fn build_rejects_a_bad_csv_naming_the_line_and_writes_nothing() {
    let csv = scratch_file(
        "bad.csv",
        b"# t\nnvs, data, nvs, , 16K\nx, dtaa, nvs, , 4K\n",
    );
    let output = scratch("bad_out.bin");
    let _ = std::fs::remove_file(&output);
    let out = airlift(&[
        "partitions",
        "build",
        csv.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("line 3: unknown type \"dtaa\""),
        "{}",
        stderr(&out)
    );
    assert!(!output.exists());
}

#[test]
fn inspect_prints_every_partition_and_the_md5_verdict() {
    let path = scratch_file("airlift.bin", &table(&AIRLIFT_DEFAULT));
    let out = airlift(&["partitions", "inspect", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    for needle in [
        "binary table (7 partitions)",
        "ota_1     app   ota_1    0x210000  0x100000 (1M)",
        "airlift   data  0x40     0x310000  0x10000 (64K)",
        "md5: ok (",
        "valid: yes",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from\n{text}");
    }
}

#[test]
fn inspect_json_lists_partitions_with_stable_keys() {
    let bytes = table(&AIRLIFT_DEFAULT);
    let path = scratch_file("airlift_json.bin", &bytes);
    let (code, json) = inspect_json(&path);
    assert_eq!(code, Some(0));
    assert_eq!(json["source"], "binary");
    assert_eq!(json["valid"], true);
    assert_eq!(json["problem"], Value::Null);
    assert_eq!(json["md5"]["status"], "verified");
    let stored = json["md5"]["stored"].as_str().unwrap();
    assert_eq!(stored.len(), 32);
    let md5_row = &bytes[7 * 32 + 16..8 * 32];
    let expected: String = md5_row.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(stored, expected);
    let parts = json["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 7);
    assert_eq!(
        parts[4],
        serde_json::json!({
            "name": "ota_0", "type": "app", "type_id": 0, "subtype": "ota_0", "subtype_id": 16,
            "offset": 0x11_0000, "size": 0x10_0000, "flags": [], "flags_raw": 0
        })
    );
    assert_eq!(parts[6]["subtype_id"], 0x40);
}

#[test]
fn inspect_finds_the_table_at_0x8000_in_a_flash_image() {
    let mut flash = vec![0xFFu8; 0x40_0000];
    flash[0] = 0xE9; // a bootloader image header, not a table
    flash[0x8000..0x8000 + TABLE_MAX_LEN].copy_from_slice(&table(&AIRLIFT_DEFAULT));
    let path = scratch_file("flash.bin", &flash);
    let (code, json) = inspect_json(&path);
    assert_eq!(code, Some(0));
    assert_eq!(json["source"], "flash_image");
    assert_eq!(json["partitions"].as_array().unwrap().len(), 7);
}

#[test]
fn inspect_reads_csv_and_shows_the_md5_build_would_write() {
    let csv = workspace().join("testdata/partitions/partitions_two_ota.csv");
    let (code, json) = inspect_json(&csv);
    assert_eq!(code, Some(0));
    assert_eq!(json["source"], "csv");
    assert_eq!(json["md5"]["status"], "computed");
    assert_eq!(json["md5"]["computed"], "bf25822c0fa6d8641bd930251e06b4c4");
    assert_eq!(json["partitions"][1]["offset"], 0xD000);
}

#[test]
fn inspect_of_a_corrupted_table_still_prints_it_and_exits_1() {
    let mut bytes = table(&DEFAULT_TWO_OTA);
    bytes[5 * 32 + 12] = b'X'; // ota_1 -> Xta_1
    let path = scratch_file("corrupt.bin", &bytes);
    let (code, json) = inspect_json(&path);
    assert_eq!(code, Some(1));
    assert_eq!(json["valid"], false);
    assert_eq!(json["md5"]["status"], "mismatch");
    assert_eq!(json["md5"]["stored"], "bf25822c0fa6d8641bd930251e06b4c4");
    assert_ne!(json["md5"]["computed"], json["md5"]["stored"]);
    assert!(json["problem"].as_str().unwrap().contains("md5 mismatch"));
    assert_eq!(json["partitions"][5]["name"], "Xta_1");
    assert!(Table::parse(&bytes).is_err());
}

#[test]
fn inspect_of_an_invalid_but_intact_table_exits_1_with_the_reason() {
    // Overlapping partitions with a correct MD5 row (not buildable, so hand-made).
    let mut entries = DEFAULT_TWO_OTA;
    entries[5].offset = 0x20_0000;
    let mut bytes: Vec<u8> = entries.iter().flat_map(|e| e.encode()).collect();
    let digest = {
        use md5::{Digest, Md5};
        Md5::digest(&bytes)
    };
    bytes.extend_from_slice(&[0xEB, 0xEB]);
    bytes.extend_from_slice(&[0xFF; 14]);
    bytes.extend_from_slice(&digest);
    bytes.resize(TABLE_MAX_LEN, 0xFF);
    let path = scratch_file("overlap.bin", &bytes);
    let out = airlift(&["partitions", "inspect", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains("md5: ok"), "{text}");
    assert!(
        text.contains(
            "valid: no: partition ota_1 starts at 0x200000, inside ota_0 which ends at 0x210000"
        ),
        "{text}"
    );
}

#[test]
fn inspect_of_something_else_exits_2_naming_the_problem() {
    #[track_caller]
    fn check(name: &str, bytes: &[u8], message: &str) {
        let path = scratch_file(name, bytes);
        let out = airlift(&["partitions", "inspect", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{name}");
        assert!(stdout(&out).is_empty());
        assert!(stderr(&out).contains(message), "{name}: {}", stderr(&out));
    }
    let app = std::fs::read(workspace().join("testdata/esp-idf-apps/v1.bin")).unwrap();
    check("app.bin", &app, "not a partition table: first bytes are e9");
    check("empty.bin", b"", "the file is empty");
    let mut bad_row = table(&DEFAULT_TWO_OTA);
    bad_row[64..66].copy_from_slice(&[0x12, 0x34]);
    check(
        "bad_row.bin",
        &bad_row,
        "not a partition table row at byte 64: magic is 12 34",
    );
    check(
        "truncated.bin",
        &table(&DEFAULT_TWO_OTA)[..100],
        "partition table truncated",
    );
    check(
        "bad.csv",
        b"nvs, data, nvs, 0x9000\n",
        "line 1: the size column is empty",
    );
}
