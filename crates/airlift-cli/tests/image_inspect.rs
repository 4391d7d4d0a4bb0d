//! `airlift image inspect` as a user runs it: output, JSON keys, exit codes.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use airlift_format::image::{Chip, ImageBuilder, verify};
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

/// Writes `bytes` to a file named `name` in this test target's scratch dir.
fn scratch_file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("image_inspect_{name}"));
    std::fs::write(&path, bytes).unwrap();
    path
}

fn inspect_json(path: &Path) -> (Option<i32>, Value) {
    let out = airlift(&["image", "inspect", "--json", path.to_str().unwrap()]);
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code(), json)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn json_report_of_real_image_has_every_documented_key() {
    let path = workspace().join("testdata/esp-idf-apps/v1.bin");
    let bytes = std::fs::read(&path).unwrap();
    let info = verify(&bytes).unwrap();
    let (code, json) = inspect_json(&path);
    assert_eq!(code, Some(0));

    // Values esptool 5.6.0 `image-info` prints for this file.
    assert_eq!(json["chip_id"], 0);
    assert_eq!(json["chip"], "esp32");
    assert_eq!(json["entry_addr"], 0x4008_1258);
    assert_eq!(json["checksum_valid"], true);
    assert_eq!(
        json["digest"],
        "a8989a60997fcdcac2572d507455fac611c8a04bdd6cd9f2da601f231304ecbc"
    );
    assert_eq!(json["digest_valid"], true);
    assert_eq!(json["project_name"], "http_delta_ota");
    assert_eq!(json["version"], "98a1142-dirty");
    assert_eq!(json["secure_version"], 0);
    assert_eq!(json["idf_ver"], "v5.0-dev-1452-g93106c9348");
    assert_eq!(
        json["elf_sha256"],
        "82690ea5e15e13b62dbfc14403d8dca2ee6251d3eea60cf48c27b7d24a6d434f"
    );
    let segments = json["segments"].as_array().unwrap();
    assert_eq!(segments.len(), 6);
    assert_eq!(segments[3]["load_addr"], 0x400D_0020);
    assert_eq!(segments[3]["length"], 0x78F50);
    assert_eq!(segments[3]["file_offset"], 0x20018);

    // Every segment and the file hash as the library computes them.
    for (seg, expected) in segments.iter().zip(info.segments()) {
        assert_eq!(seg["load_addr"], expected.load_addr);
        assert_eq!(seg["length"], expected.length);
        assert_eq!(seg["file_offset"], expected.file_offset);
    }
    assert_eq!(json["file_sha256"], hex(&info.file_sha256));
    assert_eq!(json["file_len"], bytes.len());
    assert_eq!(json["valid"], true);
}

#[test]
fn corrupt_image_exits_1_and_still_prints_the_report() {
    let mut bytes = ImageBuilder::new(Chip::Esp32c3)
        .app("blinky", "2.0.0")
        .filler(0x4200_0020, 1000)
        .build();
    bytes[600] ^= 0xFF;
    let path = scratch_file("corrupt.bin", &bytes);
    let (code, json) = inspect_json(&path);
    assert_eq!(code, Some(1));
    assert_eq!(json["chip"], "esp32c3");
    assert_eq!(json["checksum_valid"], false);
    assert_eq!(json["digest_valid"], false);
    assert_eq!(json["valid"], false);
    assert_eq!(json["version"], "2.0.0");

    let out = airlift(&["image", "inspect", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("checksum        "), "{text}");
    assert!(text.contains("INVALID"), "{text}");
}

#[test]
fn image_without_digest_or_descriptor_reports_nulls() {
    let bytes = ImageBuilder::new(Chip::Esp32)
        .hash_appended(false)
        .filler(0x3FFB_0000, 64)
        .build();
    let path = scratch_file("plain.bin", &bytes);
    let (code, json) = inspect_json(&path);
    assert_eq!(code, Some(0));
    assert_eq!(json["digest"], Value::Null);
    assert_eq!(json["digest_valid"], Value::Null);
    assert_eq!(json["project_name"], Value::Null);
    assert_eq!(json["app_desc"], false);
}

#[test]
fn text_report_shows_header_segments_checksum_digest_and_descriptor() {
    let path = workspace().join("testdata/esp-idf-apps/hello_world_new.bin");
    let out = airlift(&["image", "inspect", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    for expected in [
        "chip            esp32 (id 0)",
        "entry           0x40081050",
        "segments        6",
        "checksum        0x3a (valid)",
        "(valid)",
        "project       hello-world",
        "result          valid",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
}

/// (file contents, what stderr must say); every case exits 2 with no report.
#[test]
fn unparseable_files_exit_2_and_name_the_problem() {
    let check = |name: &str, bytes: &[u8], expected: &str| {
        let path = scratch_file(name, bytes);
        let out = airlift(&["image", "inspect", "--json", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{name}");
        assert!(out.stdout.is_empty(), "{name}: no report on stdout");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(stderr.contains(expected), "{name}: {stderr}");
    };
    check(
        "app.elf",
        b"\x7fELF\x01\x01\x01\0\0\0\0\0\0\0\0\0",
        "not an ESP image: first byte is 0x7f, expected 0xe9",
    );
    check("empty.bin", b"", "not an ESP image: the input is empty");
    let image = ImageBuilder::new(Chip::Esp32)
        .filler(0x3FFB_0000, 64)
        .build();
    check(
        "truncated.bin",
        &image[..50],
        "truncated image: input ends at byte 50 in the data of segment 0",
    );
    let mut many = image.clone();
    many[1] = 17;
    check("many.bin", &many, "17 segments, at most 16");
}

#[test]
fn missing_file_exits_2() {
    let out = airlift(&["image", "inspect", "/nonexistent/airlift.bin"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("cannot open /nonexistent/airlift.bin"),
        "{stderr}"
    );
}

#[test]
fn bootloader_image_reports_its_bootloader_descriptor() {
    let path = workspace().join("testdata/images/esp-idf-bootloaders/esp32c3.bin");
    let (code, json) = inspect_json(&path);
    assert_eq!(code, Some(0));
    assert_eq!(json["chip"], "esp32c3");
    assert_eq!(json["app_desc"], false);
    assert_eq!(json["project_name"], Value::Null);
    assert_eq!(json["bootloader_desc"]["version"], 1);
    assert_eq!(json["bootloader_desc"]["idf_ver"], "v6.1-829-g9a97f6c54ec");

    let out = airlift(&["image", "inspect", path.to_str().unwrap()]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("bootloader descriptor"), "{text}");
    assert!(
        text.contains("esp-idf       v6.1-829-g9a97f6c54ec"),
        "{text}"
    );
}
