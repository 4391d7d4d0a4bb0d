//! The real ESP32 firmware: the demo app that `scripts/firmware` builds
//! with esp-hal for the ESP32-C3 and ESP32-C6 (`target/firmware/`), checked
//! as esptool and `airlift image inspect` see it, sized against its slot,
//! provisioned into the whole-flash file a user writes at offset 0, and run
//! from that very file by `airlift device run` (which simulates only the
//! app's behaviour: the partition table, otadata, data partition and image
//! bytes are the real ones).
//!
//! `scripts/test` runs `scripts/firmware` first; without its output these
//! tests fail and say so.
#![allow(clippy::unwrap_used)]

mod agent_common;

use std::path::{Path, PathBuf};
use std::process::Command;

use agent_common::*;
use airlift_format::image::{Chip, verify};
use airlift_format::partition::{FIRMWARE_4MB, TABLE_MAX_LEN, TABLE_OFFSET, Table};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A build of the demo: `target/firmware/VARIANT/airlift-demo.bin`.
struct Build {
    variant: &'static str,
    chip: Chip,
    /// The version its app descriptor must carry.
    version: String,
}

impl Build {
    fn image_path(&self) -> PathBuf {
        let path = workspace()
            .join("target/firmware")
            .join(self.variant)
            .join("airlift-demo.bin");
        assert!(
            path.exists(),
            "no firmware image at {}: run scripts/firmware (scripts/test does)",
            path.display()
        );
        path
    }

    fn image(&self) -> Vec<u8> {
        std::fs::read(self.image_path()).unwrap()
    }
}

/// The demo crate's version, from firmware/demo/Cargo.toml.
fn demo_version() -> String {
    let manifest = std::fs::read_to_string(workspace().join("firmware/demo/Cargo.toml")).unwrap();
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap()
        .to_owned()
}

fn builds() -> [Build; 4] {
    let version = demo_version();
    [
        Build {
            variant: "esp32c3",
            chip: Chip::Esp32c3,
            version: version.clone(),
        },
        Build {
            variant: "esp32c6",
            chip: Chip::Esp32c6,
            version: version.clone(),
        },
        Build {
            variant: "esp32c3-crash",
            chip: Chip::Esp32c3,
            version: format!("{version}-crash"),
        },
        Build {
            variant: "esp32c3-hang",
            chip: Chip::Esp32c3,
            version: format!("{version}-hang"),
        },
    ]
}

fn c3() -> Build {
    builds().into_iter().next().unwrap()
}

fn bootloader(chip: Chip) -> PathBuf {
    workspace().join(format!(
        "testdata/images/esp-idf-bootloaders/{}.bin",
        chip.name()
    ))
}

/// `python -m esptool ARGS` from `.venv` (or `AIRLIFT_PYTHON`): its stdout.
fn esptool(args: &[&str]) -> String {
    let python = std::env::var_os("AIRLIFT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".venv/bin/python"));
    let out = Command::new(&python)
        .args(["-m", "esptool"])
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}: run ./scripts/setup", python.display()));
    assert!(
        out.status.success(),
        "esptool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The value after `key:` on its own line of esptool's output.
fn field<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key:?} in esptool's output:\n{text}"))
}

fn provision(dir: &Path, build: &Build, trust: &Path) -> PathBuf {
    let flash = dir.join(format!("{}.flash.bin", build.variant));
    airlift(&[
        "flash",
        "provision",
        flash.to_str().unwrap(),
        "--firmware",
        build.image_path().to_str().unwrap(),
        "--bootloader",
        bootloader(build.chip).to_str().unwrap(),
        "--trust",
        trust.to_str().unwrap(),
    ]);
    flash
}

fn public_key(dir: &Path) -> PathBuf {
    airlift(&["keys", "generate", dir.join("release").to_str().unwrap()]);
    dir.join("release.pub")
}

#[test]
fn the_demo_images_are_valid_for_their_chip_and_carry_the_crates_version() {
    for build in builds() {
        let path = build.image_path();
        let name = build.variant;

        let info = esptool(&["image-info", path.to_str().unwrap()]);
        let detected = field(&info, "Detected image type:");
        assert_eq!(
            detected.replace('-', "").to_lowercase(),
            build.chip.name(),
            "{name}"
        );
        assert!(field(&info, "Checksum:").ends_with("(valid)"), "{name}");
        assert!(
            field(&info, "Validation hash:").ends_with("(valid)"),
            "{name}"
        );
        assert_eq!(field(&info, "Project name:"), "airlift-demo", "{name}");
        assert_eq!(field(&info, "App version:"), build.version, "{name}");

        let out = Command::new(AIRLIFT)
            .args(["image", "inspect", "--json", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{name}: a valid image");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["valid"], true, "{name}");
        assert_eq!(report["chip"], build.chip.name(), "{name}");
        assert_eq!(report["project_name"], "airlift-demo", "{name}");
        assert_eq!(report["version"], build.version.as_str(), "{name}");
        assert_eq!(report["flash_size"], 4 * 1024 * 1024, "{name}");
    }
}

#[test]
fn the_demo_images_fit_their_slot_and_the_c3_image_its_640_kib_budget() {
    let slot = FIRMWARE_4MB
        .iter()
        .find(|e| e.label_str() == "ota_0")
        .unwrap()
        .size as usize;
    assert_eq!(slot, 1536 * 1024);
    for build in builds() {
        let len = build.image().len();
        assert!(
            len <= slot,
            "{}: the image is {len} bytes but the slot holds {slot}",
            build.variant
        );
    }
    // The target for the C3 with Wi-Fi, the update client and the device
    // page: room to spare in the slot, and a fast download.
    let budget = 640 * 1024;
    let len = c3().image().len();
    assert!(
        len <= budget,
        "the ESP32-C3 image is {len} bytes, over its budget of {budget}"
    );
}

#[test]
fn the_whole_flash_file_holds_the_bootloader_table_otadata_image_and_keys() {
    let dir = tempfile::tempdir().unwrap();
    let key = public_key(dir.path());
    for build in [&builds()[0], &builds()[1]] {
        let flash_path = provision(dir.path(), build, &key);
        let flash = std::fs::read(&flash_path).unwrap();
        let image = build.image();
        assert_eq!(flash.len(), 4 * 1024 * 1024, "{}", build.variant);

        // The bootloader at 0x0 (the C3's and C6's offset), set to 4 MB: as
        // esptool reads it from the file a user writes.
        let boot = verify(&flash[..TABLE_OFFSET as usize]).unwrap();
        assert!(boot.is_valid() && boot.app_desc.is_none());
        assert_eq!(boot.chip(), build.chip);
        let info = esptool(&["image-info", flash_path.to_str().unwrap()]);
        assert_eq!(field(&info, "Flash size:"), "4MB");
        assert!(field(&info, "Validation hash:").ends_with("(valid)"));

        let table = Table::parse(&flash[TABLE_OFFSET as usize..][..TABLE_MAX_LEN]).unwrap();
        assert_eq!(table.iter().collect::<Vec<_>>(), FIRMWARE_4MB);
        assert_eq!(&flash[0x1_0000..0x1_0000 + image.len()], &image[..]);
        assert!(
            flash[0x19_0000..0x31_0000].iter().all(|&b| b == 0xFF),
            "ota_1 erased"
        );

        let report = inspect(&flash_path);
        assert_eq!(report["otadata"]["selected"], "ota_0");
        let slot = selected_image(&report);
        assert_eq!(slot["version"], build.version.as_str());
        assert_eq!(slot["sha256"], sha256_hex(&image));
        assert_eq!(
            report["engine"]["trusted_keys"].as_array().unwrap().len(),
            1
        );
    }
}

#[test]
fn provisioning_refuses_a_bootloader_for_another_chip() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(AIRLIFT)
        .args(["flash", "provision"])
        .arg(dir.path().join("x.bin"))
        .arg("--firmware")
        .arg(c3().image_path())
        .arg("--bootloader")
        .arg(bootloader(Chip::Esp32c6))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bootloader is for esp32c6 but the firmware is for esp32c3"),
        "{stderr}"
    );
    assert!(!dir.path().join("x.bin").exists());
}

#[test]
fn a_device_run_from_the_whole_flash_file_boots_the_real_image_and_rolls_back_a_crashing_build() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let token = server.add_device("board", "lab");
    let good = c3();
    let crash = builds().into_iter().nth(2).unwrap();
    let flash = provision(dir.path(), &good, &server.signing_pub());
    let provisioned = std::fs::read(&flash).unwrap();
    let image = good.image();

    let agent = Agent::with_server(
        &flash,
        &server.url,
        &token,
        &["--behave", &format!("{}=crash", crash.version)],
    );
    let status = || server.cli_json(&["device", "show", "board"])["status"].clone();
    wait_for(
        "the board to check in running the demo",
        || status()["version"] == good.version.as_str(),
        || agent.log_text(),
    );
    let s = status();
    assert_eq!(s["project"], "airlift-demo");
    assert_eq!(s["chip_id"], i64::from(Chip::Esp32c3.id()));
    assert_eq!(s["sha256"], sha256_hex(&image), "the provisioned bytes run");
    assert_eq!(s["slot"], 0);

    // The real crashing build, uploaded and deployed: the device installs it
    // (signature, chip and image checks on the real bytes), boots it three
    // times, rolls back to the build it was flashed with.
    let release = server.upload(&crash.image_path());
    let deployment = server.deploy(release, "device:board");
    let done = server.wait_for_state(deployment, "rolled_back", 1);
    assert_eq!(done["assignments"][0]["reason"], "boot_failed", "{done:#}");
    wait_for(
        "the board to check in on the good build again",
        || status()["sha256"] == sha256_hex(&image).as_str(),
        || agent.log_text(),
    );
    drop(agent);

    let report = inspect(&flash);
    assert_eq!(report["otadata"]["selected"], "ota_0");
    let trials = report["boot_log"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["version"] == crash.version.as_str() && b["outcome"] == "trial")
        .count();
    assert_eq!(trials, 3, "three boots of the crashing build: {report:#}");
    let after = std::fs::read(&flash).unwrap();
    for (what, range) in [
        ("bootloader and partition table", 0..0x9000),
        (
            "the flashed image in ota_0",
            0x1_0000..0x1_0000 + image.len(),
        ),
    ] {
        assert!(
            after[range.clone()] == provisioned[range],
            "{what}: as provisioned"
        );
    }
    assert_eq!(
        &after[0x19_0000..0x19_0000 + crash.image().len()],
        &crash.image()[..],
        "the crashing build was written to ota_1"
    );
}
