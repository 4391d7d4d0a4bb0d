//! End to end: the fleet simulator and the demo against real servers.
#![allow(clippy::unwrap_used)]

mod agent_common;

use std::process::Command;

use agent_common::*;

/// `v1.bin` (1.0.0) and `v2.bin` (2.0.0) of `size` bytes of code in `d`.
fn firmware_pair(d: &std::path::Path, size: usize) -> (std::path::PathBuf, std::path::PathBuf) {
    let (v1, v2) = (d.join("v1.bin"), d.join("v2.bin"));
    fleet_firmware(&v1, "1.0.0", Some(size));
    fleet_firmware(&v2, "2.0.0", Some(size));
    (v1, v2)
}

#[test]
fn fleet_sim_brings_every_device_to_the_release_despite_power_cuts_and_drops() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = Server::start(&d.join("data"), &[]);
    let v1 = d.join("v1.bin");
    let v2 = d.join("v2.bin");
    fleet_firmware(&v1, "1.0.0", None);
    fleet_firmware(&v2, "2.0.0", Some(90_000));
    let release = server.upload(&v2);
    let output = Command::new(AIRLIFT)
        .args([
            "fleet",
            "sim",
            "--devices",
            "24",
            "--tag",
            "sim",
            "--firmware",
        ])
        .arg(&v1)
        .arg("--trust")
        .arg(server.signing_pub())
        .args([
            "--poll",
            "0.3",
            "--health-check",
            "0.02",
            "--until-version",
            "2.0.0",
        ])
        .args(["--deploy", &release.to_string(), "--duration", "110"])
        .args(["--drop-rate", "0.3", "--power-cut-rate", "0.3", "--json"])
        .env("AIRLIFT_SERVER", &server.url)
        .env("AIRLIFT_TOKEN", server.admin_token())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        summary["versions"],
        serde_json::json!({"2.0.0": 24}),
        "{summary:#}"
    );
    assert_eq!(summary["events"]["confirmed"], 24, "{summary:#}");
    assert_eq!(summary["crashed"], 0, "{summary:#}");
    assert!(
        summary["bytes"].as_u64().unwrap() >= 24 * 90_000,
        "{summary:#}"
    );
    let deployments = server.cli_json(&["deployment", "list"]);
    let id = deployments[0]["id"].as_i64().unwrap();
    let done = server.wait_for_state(id, "confirmed", 24);
    assert_eq!(done["state"], "finished");
}

#[test]
fn demo_updates_rolls_back_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(AIRLIFT)
        .args(["demo", "--devices", "2", "--exit", "--data"])
        .arg(dir.path().join("demo"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("All 2 devices confirmed 1.1.0"), "{stdout}");
    assert!(stdout.contains("2 of 2 devices rolled back"), "{stdout}");
    assert!(stdout.contains("{\"1.1.0\": 2}"), "{stdout}");
    assert!(
        stdout.contains("5. See it all in the dashboard: http://127.0.0.1:"),
        "the demo ends pointing at the dashboard: {stdout}"
    );
}

#[test]
fn fleet_sim_enrols_with_the_fleet_secret_and_tags_every_device() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The secret grants the tag the devices ask for (issue 16: a device no
    // longer chooses its own).
    let server = Server::start(
        &d.join("data"),
        &[
            ("AIRLIFT_ENROLLMENT_SECRET", "open-sesame"),
            ("AIRLIFT_ENROLLMENT_TAGS", "field"),
            ("AIRLIFT_ENROLLMENT_NAME_PATTERN", "site-*"),
        ],
    );
    let v1 = d.join("v1.bin");
    fleet_firmware(&v1, "1.0.0", None);
    let output = Command::new(AIRLIFT)
        .args([
            "fleet",
            "sim",
            "--devices",
            "5",
            "--tag",
            "field",
            "--prefix",
            "site",
        ])
        .arg("--firmware")
        .arg(&v1)
        .arg("--trust")
        .arg(server.signing_pub())
        .args(["--poll", "0.2", "--duration", "1.5", "--json"])
        .args([
            "--server",
            &server.url,
            "--enrollment-secret",
            "open-sesame",
        ])
        .env_remove("AIRLIFT_TOKEN")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        summary["versions"],
        serde_json::json!({"1.0.0": 5}),
        "{summary:#}"
    );
    assert!(summary["checkins"].as_u64().unwrap() >= 5, "{summary:#}");
    let devices = server.cli_json(&["device", "list"]);
    let mut names: Vec<&str> = devices
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "site-00001",
            "site-00002",
            "site-00003",
            "site-00004",
            "site-00005"
        ]
    );
    for device in devices.as_array().unwrap() {
        assert_eq!(device["tags"], serde_json::json!(["field"]));
        assert_eq!(device["status"]["version"], "1.0.0", "{device:#}");
    }

    let refused = Command::new(AIRLIFT)
        .args(["fleet", "sim", "--devices", "1", "--firmware"])
        .arg(&v1)
        .arg("--trust")
        .arg(server.signing_pub())
        .args([
            "--server",
            &server.url,
            "--enrollment-secret",
            "wrong",
            "--duration",
            "1",
        ])
        .env_remove("AIRLIFT_TOKEN")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("enrolment refused"), "{stderr}");
}

#[test]
fn fleet_benchmark_measures_the_update_against_plain_and_checked_downloads_over_a_modelled_link() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = Server::start(&d.join("data"), &[]);
    let (v1, v2) = firmware_pair(d, 80_000);
    let release = server.upload(&v2);
    let output = Command::new(AIRLIFT)
        .args(["fleet", "sim", "--devices", "6", "--tag", "bench"])
        .arg("--firmware")
        .arg(&v1)
        .arg("--trust")
        .arg(server.signing_pub())
        .args(["--poll", "0.3", "--health-check", "0", "--no-jitter"])
        .args(["--until-version", "2.0.0", "--duration", "60"])
        .args(["--deploy", &release.to_string(), "--baseline"])
        .args(["--link-mbps", "40"])
        .env("AIRLIFT_SERVER", &server.url)
        .env("AIRLIFT_TOKEN", server.admin_token())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let image = std::fs::metadata(&v2).unwrap().len();
    assert!(
        stdout.contains(&format!(
            "baseline: 6 plain downloads ({} bytes, all over one 40 Mbit/s link) took",
            6 * image
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("baseline: the same downloads, each checked against its SHA-256"),
        "{stdout}"
    );
    assert!(
        stdout.contains("devices per version: {\"2.0.0\": 6}"),
        "{stdout}"
    );
    // A link of zero Mbit/s is refused before anything starts.
    let refused = Command::new(AIRLIFT)
        .args(["fleet", "sim", "--devices", "1", "--tag", "x"])
        .arg("--firmware")
        .arg(&v1)
        .arg("--trust")
        .arg(server.signing_pub())
        .args(["--link-mbps", "0", "--duration", "1"])
        .env("AIRLIFT_SERVER", &server.url)
        .env("AIRLIFT_TOKEN", server.admin_token())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--link-mbps must be a positive"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

#[test]
fn fleet_sim_boots_with_the_app_rollback_bootloader_confirming_and_rolling_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = Server::start(&d.join("data"), &[]);
    let (v1, v2) = firmware_pair(d, 40_000);
    let release = server.upload(&v2).to_string();
    let run = |tag: &str, behave: &str| {
        let output = Command::new(AIRLIFT)
            .args(["fleet", "sim", "--devices", "3", "--tag", tag])
            .args(["--prefix", tag, "--bootloader", "rollback"])
            .arg("--firmware")
            .arg(&v1)
            .arg("--trust")
            .arg(server.signing_pub())
            .args([
                "--poll",
                "0.2",
                "--health-check",
                "0.02",
                "--watchdog",
                "0.1",
            ])
            .args(["--behave", behave, "--until-version", "2.0.0"])
            .args(["--deploy", &release, "--duration", "60", "--json"])
            .env("AIRLIFT_SERVER", &server.url)
            .env("AIRLIFT_TOKEN", server.admin_token())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()
    };
    let healthy = run("good", "2.0.0=healthy");
    assert_eq!(
        healthy["versions"],
        serde_json::json!({"2.0.0": 3}),
        "{healthy:#}"
    );
    assert_eq!(healthy["events"]["confirmed"], 3, "{healthy:#}");
    // Airlift activates in state UNDEFINED, which this bootloader leaves
    // alone: the boot guard gives the crashing release its 3 tries.
    let crashing = run("bad", "2.0.0=crash");
    assert_eq!(
        crashing["versions"],
        serde_json::json!({"1.0.0": 3}),
        "{crashing:#}"
    );
    assert_eq!(crashing["events"]["rolled_back"], 3, "{crashing:#}");
    assert_eq!(
        crashing["events"]["booted"], 9,
        "three trial boots each: {crashing:#}"
    );
    assert_eq!(crashing["crashed"], 0, "{crashing:#}");
}
