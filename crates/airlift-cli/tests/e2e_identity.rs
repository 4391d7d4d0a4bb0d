//! End to end (issue 16): an operator scopes an enrolment secret and takes
//! a device's identity back with the `airlift` CLI, while a real
//! `airlift device run` and `airlift fleet sim` see what a device would.
#![allow(clippy::unwrap_used)]

mod agent_common;

use std::process::{Command, Output};

use agent_common::*;
use serde_json::Value;

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `airlift fleet sim` of `n` devices named `PREFIX-NNNNN`, asking for
/// `tag`, enrolling with `secret`.
fn enrol_fleet(
    server: &Server,
    firmware: &std::path::Path,
    prefix: &str,
    tag: &str,
    secret: &str,
) -> Output {
    Command::new(AIRLIFT)
        .args([
            "fleet",
            "sim",
            "--devices",
            "2",
            "--prefix",
            prefix,
            "--tag",
            tag,
        ])
        .arg("--firmware")
        .arg(firmware)
        .arg("--trust")
        .arg(server.signing_pub())
        .args(["--poll", "0.2", "--duration", "1", "--json"])
        .args(["--server", &server.url, "--enrollment-secret", secret])
        .env_remove("AIRLIFT_TOKEN")
        .output()
        .unwrap()
}

#[test]
fn an_enrolment_secret_made_with_the_cli_grants_its_tag_and_names_only_issue_16() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = Server::start(&d.join("data"), &[]);
    let created = server.cli_json(&[
        "enrollment-secret",
        "create",
        "roofs",
        "--tag",
        "roof",
        "--name-pattern",
        "roof-*",
    ]);
    let secret = created["value"].as_str().unwrap().to_owned();
    let listed = server.cli(&["enrollment-secret", "list"]);
    let text = stdout(&listed);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("GRANTS"),
        "{text}"
    );
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["roofs", "tags", "roof;", "names", "roof-*"],
        "{text}"
    );
    let v1 = d.join("v1.bin");
    fleet_firmware(&v1, "1.0.0", None);

    // The simulator's devices ask for their tag, as older devices do: granted.
    let ok = enrol_fleet(&server, &v1, "roof", "roof", &secret);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let devices = server.cli_json(&["device", "list"]);
    for device in devices.as_array().unwrap() {
        assert_eq!(device["tags"], serde_json::json!(["roof"]), "{device}");
    }
    assert_eq!(devices.as_array().unwrap().len(), 2);
    // Another tag, another name: refused, and the refusal says why.
    for (prefix, tag, code) in [
        ("roof-b", "prod", "tag_not_granted"),
        ("attic", "roof", "name_not_granted"),
    ] {
        let refused = enrol_fleet(&server, &v1, prefix, tag, &secret);
        assert!(!refused.status.success());
        assert!(stderr(&refused).contains(code), "{}", stderr(&refused));
    }
    assert_eq!(
        server
            .cli_json(&["device", "list"])
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let deleted = server.cli(&["enrollment-secret", "delete", "roofs"]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    let refused = enrol_fleet(&server, &v1, "roof-c", "roof", &secret);
    assert!(
        stderr(&refused).contains("unknown enrolment secret"),
        "{}",
        stderr(&refused)
    );
}

/// When the server last heard from `device` (Unix ms), if ever.
fn last_seen(server: &Server, device: &str) -> Option<i64> {
    server.cli_json(&["device", "show", device])["status"]["last_seen"].as_i64()
}

#[test]
fn a_device_given_a_new_token_revoked_and_deleted_with_the_cli_hears_it_and_its_history_stays_issue_16()
 {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = Server::start(&d.join("data"), &[]);
    let v1 = write(d, "v1.bin", &image("1.0.0", 40_000));
    let token = server.add_device("kitchen", "lab");
    let flash = d.join("kitchen.flash");
    create_flash(&flash, &v1, &server.signing_pub());
    let mut agent = Agent::with_server(&flash, &server.url, &token, &[]);
    // It updates once, so it has a history.
    let release = server.upload(&write(d, "v2.bin", &image("2.0.0", 40_000)));
    let deployment = server.deploy(release, "device:kitchen");
    server.wait_for_state(deployment, "confirmed", 1);

    // A new token: the running device's old one is refused, and it says so.
    let rotated = server.cli(&["device", "rotate-token", "kitchen"]);
    assert!(rotated.status.success(), "{}", stderr(&rotated));
    let text = stdout(&rotated);
    assert!(text.contains("the old one no longer works"), "{text}");
    let new = text.lines().last().unwrap().trim().to_owned();
    assert!(new.starts_with("al_dev_"), "{text}");
    let revoked_line = "the server revoked this device's token";
    wait_for(
        "the device to hear its token was replaced",
        || agent.log_text().contains(revoked_line),
        || agent.log_text(),
    );
    assert!(
        agent.log_text().contains("token_revoked"),
        "{}",
        agent.log_text()
    );
    agent.kill();
    // Provisioned with the new token, it checks in again.
    let before = last_seen(&server, "kitchen").unwrap();
    let logged = agent.log_text().len();
    let agent = Agent::with_server(&flash, &server.url, &new, &[]);
    wait_for(
        "the device to check in with its new token",
        || last_seen(&server, "kitchen").is_some_and(|t| t > before),
        || agent.log_text(),
    );

    // Revoked: the device hears it; it is listed as revoked; no deployment takes it.
    let revoke = server.cli(&["device", "revoke", "kitchen"]);
    assert!(
        stdout(&revoke).contains("device kitchen revoked: its token no longer works"),
        "{}",
        stdout(&revoke)
    );
    wait_for(
        "the device to hear it was revoked",
        || agent.log_text()[logged..].contains(revoked_line),
        || agent.log_text(),
    );
    let list = stdout(&server.cli(&["device", "list"]));
    assert!(list.contains(" revoked "), "{list}");
    let deploy = server.cli(&["deploy", &release.to_string(), "--to", "device:kitchen"]);
    assert!(!deploy.status.success());
    assert!(
        stderr(&deploy).contains("is revoked"),
        "{}",
        stderr(&deploy)
    );

    // Deleted: gone from the list, its name free, its history readable.
    let delete = server.cli(&["device", "delete", "kitchen"]);
    let text = stdout(&delete);
    assert!(text.contains("device kitchen deleted"), "{text}");
    let kept = text
        .split("airlift device events ")
        .nth(1)
        .unwrap()
        .trim()
        .to_owned();
    assert!(kept.starts_with("kitchen~deleted-"), "{text}");
    assert_eq!(server.cli_json(&["device", "list"]), serde_json::json!([]));
    let history = server.event_kinds(&kept);
    assert!(history.iter().any(|k| k == "confirmed"), "{history:?}");
    let shown = stdout(&server.cli(&["device", "show", &kept]));
    assert!(shown.contains("deleted"), "{shown}");
    server.add_device("kitchen", "lab");

    let audit: Value = reqwest::blocking::Client::new()
        .get(format!("{}/api/v1/audit", server.url))
        .bearer_auth(server.admin_token())
        .send()
        .unwrap()
        .json()
        .unwrap();
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .filter(|r| r["target"] == "device:kitchen")
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "POST /api/v1/devices",
            "POST /api/v1/devices/{name}/rotate-token",
            "POST /api/v1/devices/{name}/revoke",
            "DELETE /api/v1/devices/{name}",
            "POST /api/v1/devices",
        ]
    );
}
