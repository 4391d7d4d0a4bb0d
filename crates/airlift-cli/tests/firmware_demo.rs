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

/// The crate's version with its patch number one higher (the
/// `next-version` build's).
fn next_version() -> String {
    let version = demo_version();
    let (rest, patch) = version.rsplit_once('.').unwrap();
    format!("{rest}.{}", patch.parse::<u64>().unwrap() + 1)
}

fn builds() -> [Build; 5] {
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
        Build {
            variant: "esp32c3-next",
            chip: Chip::Esp32c3,
            version: next_version(),
        },
    ]
}

fn variant(name: &str) -> Build {
    builds().into_iter().find(|b| b.variant == name).unwrap()
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

fn provision(dir: &Path, build: &Build, trust: &Path, settings: &[&str]) -> PathBuf {
    let flash = dir.join(format!("{}.flash.bin", build.variant));
    let (image, boot) = (build.image_path(), bootloader(build.chip));
    let mut args = vec![
        "flash",
        "provision",
        flash.to_str().unwrap(),
        "--firmware",
        image.to_str().unwrap(),
        "--bootloader",
        boot.to_str().unwrap(),
        "--trust",
        trust.to_str().unwrap(),
    ];
    args.extend_from_slice(settings);
    airlift(&args);
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
fn the_demo_images_fit_their_slot_and_the_c3_image_a_1_mib_slot_with_a_fifth_to_spare() {
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
    // The C3 with Wi-Fi, the update client (HTTP, Ed25519, the engine's
    // install) and the device page fits a 1 MiB slot with a fifth to spare
    // (issue 12 aimed at 640 KiB; firmware/README.md says where the bytes
    // go and why that target is not met).
    let budget = 800 * 1024;
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
        let flash_path = provision(dir.path(), build, &key, &[]);
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
fn provisioning_a_board_for_https_says_the_firmware_speaks_plain_http_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let flash = dir.path().join("x.bin");
    let refused = |settings: &[&str]| {
        let out = Command::new(AIRLIFT)
            .args(["flash", "provision"])
            .arg(&flash)
            .arg("--firmware")
            .arg(c3().image_path())
            .arg("--bootloader")
            .arg(bootloader(Chip::Esp32c3))
            .args(["--wifi-ssid", "lab", "--token", "t"])
            .args(settings)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{settings:?}");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!flash.exists(), "{settings:?}: nothing is written");
        stderr
    };
    for settings in [
        &["--server", "https://fleet.example"][..],
        &[
            "--server",
            "http://10.0.0.2:8080",
            "--tls-pin",
            &"ab".repeat(32),
        ],
    ] {
        let stderr = refused(settings);
        assert!(
            stderr.contains("the ESP32 firmware speaks plain HTTP for now"),
            "{settings:?}: {stderr}"
        );
    }
    let stderr = refused(&["--server", "http://10.0.0.2:8080", "--require-https"]);
    assert!(
        stderr.contains(
            "HTTPS is required (--require-https) but the server's URL starts with http://"
        ),
        "{stderr}"
    );
}

#[test]
fn a_board_provisioned_with_its_settings_takes_a_higher_real_build_over_the_air_and_rolls_back_a_crashing_one()
 {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let token = server.add_device("board", "lab");
    let (good, next, crash) = (c3(), variant("esp32c3-next"), variant("esp32c3-crash"));
    // Everything the board needs is in the file a user flashes: the
    // network, the server, its token, its page's password.
    let flash = provision(
        dir.path(),
        &good,
        &server.signing_pub(),
        &[
            "--wifi-ssid",
            "lab",
            "--wifi-password",
            "correct horse",
            "--server",
            &server.url,
            "--token",
            &token,
            "--max-attempts",
            "3",
            "--name",
            "board",
            "--page-password",
            "open sesame",
        ],
    );
    let provisioned = std::fs::read(&flash).unwrap();
    let settings = inspect(&flash)["settings"].clone();
    assert_eq!(settings["server"], server.url.as_str());
    assert_eq!(settings["wifi_ssid"], "lab");
    assert_eq!(settings["token_set"], true);
    assert_eq!(settings["page_password_set"], true);
    assert!(
        !std::fs::read_to_string(&flash)
            .unwrap_or_default()
            .contains("open sesame"),
        "the page password is kept as its SHA-256"
    );

    // No --server, no --token: the device runs on what was provisioned.
    let agent = Agent::quick(
        &flash,
        &[
            "--listen",
            "127.0.0.1:0",
            "--behave",
            &format!("{}=crash", crash.version),
        ],
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
    assert_eq!(
        s["sha256"],
        sha256_hex(&good.image()),
        "the provisioned bytes run"
    );
    assert_eq!(s["slot"], 0);

    // A real build with a higher version, uploaded and deployed: the
    // device downloads it, checks its signature, chip and image, installs
    // it into ota_1, boots it and confirms it.
    let release = server.upload(&next.image_path());
    let deployment = server.deploy(release, "device:board");
    server.wait_for_state(deployment, "confirmed", 1);
    wait_for(
        "the board to check in running the higher build",
        || status()["version"] == next.version.as_str(),
        || agent.log_text(),
    );
    let s = status();
    assert_eq!(s["sha256"], sha256_hex(&next.image()));
    assert_eq!(s["slot"], 1);

    // Its page opens with the provisioned password, and only with it.
    let page = agent.page_url();
    let http = reqwest::blocking::Client::new();
    let get = |password: &str| {
        http.get(format!("{page}/api/status"))
            .bearer_auth(password)
            .send()
            .unwrap()
    };
    assert_eq!(get("wrong").status(), 401);
    let shown: serde_json::Value = get("open sesame").json().unwrap();
    assert_eq!(shown["name"], "board");
    assert_eq!(shown["running"]["version"], next.version.as_str());
    assert_eq!(shown["running"]["confirmed"], true);

    // The real crashing build: installed, booted three times, rolled back
    // to the build the board ran before.
    let release = server.upload(&crash.image_path());
    let deployment = server.deploy(release, "device:board");
    let done = server.wait_for_state(deployment, "rolled_back", 1);
    assert_eq!(done["assignments"][0]["reason"], "boot_failed", "{done:#}");
    wait_for(
        "the board to check in on the higher build again",
        || status()["sha256"] == sha256_hex(&next.image()).as_str(),
        || agent.log_text(),
    );
    drop(agent);

    let report = inspect(&flash);
    let trials = |version: &str| {
        report["boot_log"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["version"] == version && b["outcome"] == "trial")
            .count()
    };
    assert_eq!(trials(&crash.version), 3, "{report:#}");
    assert_eq!(trials(&next.version), 1, "{report:#}");
    assert_eq!(report["otadata"]["selected"], "ota_1");
    let history: Vec<_> = report["notes"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["version"].clone(), h["result"].clone()))
        .collect();
    assert_eq!(
        history,
        [
            (next.version.as_str().into(), "confirmed".into()),
            (crash.version.as_str().into(), "rolled_back".into()),
        ]
    );
    let after = std::fs::read(&flash).unwrap();
    assert!(
        after[..0x9000] == provisioned[..0x9000],
        "bootloader and partition table: as provisioned"
    );
    assert_eq!(
        &after[0x1_0000..0x1_0000 + crash.image().len()],
        &crash.image()[..],
        "the crashing build was written over the slot the first build ran from"
    );
    assert_eq!(
        &after[0x19_0000..0x19_0000 + next.image().len()],
        &next.image()[..],
        "the higher build, in ota_1, is the one running"
    );
}
