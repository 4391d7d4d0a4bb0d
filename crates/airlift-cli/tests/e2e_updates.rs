//! End to end: a real server and real agents (child processes) update,
//! fail, roll back and refuse, as a user would see it.
#![allow(clippy::unwrap_used)]

mod agent_common;

use agent_common::*;

/// Two devices on tag `lab` running 1.0.0, a release 2.0.0 deployed to the tag.
fn fleet_of_two(
    dir: &std::path::Path,
    server: &Server,
    extra: &[&str],
) -> (Vec<Agent>, std::path::PathBuf) {
    let v1 = write(dir, "v1.bin", &image("1.0.0", 60_000));
    let mut agents = Vec::new();
    for name in ["alpha", "beta"] {
        let token = server.add_device(name, "lab");
        let flash = dir.join(format!("{name}.flash"));
        create_flash(&flash, &v1, &server.signing_pub());
        agents.push(Agent::with_server(&flash, &server.url, &token, extra));
    }
    (agents, v1)
}

fn running_version(server: &Server, device: &str) -> (String, String) {
    let d = server.cli_json(&["device", "show", device]);
    (
        d["status"]["version"].as_str().unwrap_or("").to_owned(),
        d["status"]["state"].as_str().unwrap_or("").to_owned(),
    )
}

#[test]
fn devices_on_a_tag_install_reboot_and_confirm_the_new_release() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let (agents, _) = fleet_of_two(dir.path(), &server, &[]);
    let v2 = image("2.0.0", 70_000);
    let release = server.upload(&write(dir.path(), "v2.bin", &v2));
    let deployment = server.deploy(release, "tag:lab");

    let done = server.wait_for_state(deployment, "confirmed", 2);
    assert_eq!(done["state"], "finished", "{done:#}");
    for (name, agent) in ["alpha", "beta"].iter().zip(&agents) {
        wait_for(
            &format!("{name} to check in on 2.0.0"),
            || running_version(&server, name) == ("2.0.0".into(), "idle".into()),
            || agent.log_text(),
        );
        let report = inspect(&agent.flash);
        let slot = selected_image(&report);
        assert_eq!(slot["slot"], "ota_1");
        assert_eq!(slot["sha256"], sha256_hex(&v2));
        assert_eq!(
            report["engine"]["trial_slot"],
            serde_json::Value::Null,
            "confirmed"
        );
        let history = &report["notes"]["history"];
        assert_eq!(history[0]["result"], "confirmed", "{report:#}");
        assert_eq!(history[0]["deployment"], deployment);
    }
    let kinds = server.event_kinds("alpha");
    for kind in UPDATE_EVENTS {
        assert!(
            kinds.iter().any(|k| k == kind),
            "no {kind} event in {kinds:?}"
        );
    }
}

#[test]
fn crashing_release_rolls_back_after_three_failed_boots_and_reports_why() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let (agents, v1) = fleet_of_two(dir.path(), &server, &["--behave", "2.0.0=crash"]);
    let v1 = std::fs::read(v1).unwrap();
    let release = server.upload(&write(dir.path(), "v2.bin", &image("2.0.0", 70_000)));
    let deployment = server.deploy(release, "tag:lab");

    let done = server.wait_for_state(deployment, "rolled_back", 2);
    for a in done["assignments"].as_array().unwrap() {
        assert_eq!(a["reason"], "boot_failed", "{done:#}");
    }
    for agent in &agents {
        let report = inspect(&agent.flash);
        assert_eq!(
            selected_image(&report)["sha256"],
            sha256_hex(&v1),
            "back on 1.0.0"
        );
        let trials: Vec<_> = report["boot_log"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["version"] == "2.0.0" && b["outcome"] == "trial")
            .collect();
        assert_eq!(trials.len(), 3, "exactly three failed boots: {report:#}");
        assert!(
            report["boot_log"]
                .as_array()
                .unwrap()
                .iter()
                .any(|b| b["outcome"] == "rolled_back"),
            "{report:#}"
        );
        assert_eq!(report["notes"]["last_result"]["kind"], "rolled_back");
    }
    let events = server.cli_json(&["device", "events", "beta"]);
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "rolled_back" && e["reason"] == "boot_failed"),
        "{events:#}"
    );
}

#[test]
fn flipped_byte_in_the_stored_artifact_is_refused_before_activation() {
    let dir = tempfile::tempdir().unwrap();
    // No artifact cache: downloads read the (tampered) file.
    let server = Server::start(
        &dir.path().join("data"),
        &[("AIRLIFT_ARTIFACT_CACHE_BYTES", "0")],
    );
    let v1 = image("1.0.0", 60_000);
    let token = server.add_device("gamma", "lab");
    let flash = dir.path().join("gamma.flash");
    create_flash(
        &flash,
        &write(dir.path(), "v1.bin", &v1),
        &server.signing_pub(),
    );
    let v2 = image("2.0.0", 70_000);
    let release = server.upload(&write(dir.path(), "v2.bin", &v2));
    let stored = server.data.join("artifacts").join(sha256_hex(&v2));
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[30_000] ^= 0x01;
    std::fs::write(&stored, &bytes).unwrap();
    let deployment = server.deploy(release, "tag:lab");
    let agent = Agent::with_server(&flash, &server.url, &token, &[]);

    let done = server.wait_for_state(deployment, "failed", 1);
    assert_eq!(done["assignments"][0]["reason"], "verification", "{done:#}");
    let report = inspect(&agent.flash);
    assert_eq!(
        selected_image(&report)["sha256"],
        sha256_hex(&v1),
        "old slot still selected"
    );
    assert_eq!(
        report["otadata"]["copies"][1]["seq"],
        u32::MAX,
        "otadata never written"
    );
    assert_eq!(report["notes"]["last_result"]["reason"], "verification");
    // And it keeps booting the old image.
    let mut agent = agent;
    agent.restart();
    wait_for(
        "a boot after the refusal",
        || agent.log_text().matches("booted e2e 1.0.0").count() >= 2,
        || agent.log_text(),
    );
}

#[test]
fn hanging_release_is_reset_by_the_watchdog_and_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let v1 = image("1.0.0", 40_000);
    let token = server.add_device("theta", "lab");
    let flash = dir.path().join("theta.flash");
    create_flash(
        &flash,
        &write(dir.path(), "v1.bin", &v1),
        &server.signing_pub(),
    );
    let release = server.upload(&write(dir.path(), "v2.bin", &image("2.0.0", 40_000)));
    let deployment = server.deploy(release, "tag:lab");
    let agent = Agent::start(
        &flash,
        &[
            "--server",
            &server.url,
            "--token",
            &token,
            "--poll",
            "0.2",
            "--watchdog",
            "0.2",
            "--behave",
            "2.0.0=hang",
        ],
    );
    let done = server.wait_for_state(deployment, "rolled_back", 1);
    assert_eq!(done["assignments"][0]["reason"], "boot_failed");
    assert_eq!(
        agent
            .log_text()
            .matches("2.0.0 hangs: watchdog reset")
            .count(),
        3,
        "{}",
        agent.log_text()
    );
    assert_eq!(selected_image(&inspect(&flash))["sha256"], sha256_hex(&v1));
}
