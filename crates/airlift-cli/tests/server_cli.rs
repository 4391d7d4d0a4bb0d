//! The operator's commands against a real `airlift serve` process.
#![allow(clippy::unwrap_used)]

mod agent_common;

use std::process::Command;

use agent_common::{AIRLIFT, Server, image};

#[test]
fn operator_uploads_adds_a_device_deploys_and_follows_the_deployment() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let file = dir.path().join("fw.bin");
    std::fs::write(&file, image("1.2.3", 8000)).unwrap();

    let release = server.cli_json(&["release", "upload", file.to_str().unwrap()]);
    assert_eq!(release["version"], "1.2.3");
    assert_eq!(release["project"], "e2e");
    let again = server.cli_json(&["release", "upload", file.to_str().unwrap()]);
    assert_eq!(again["id"], release["id"], "re-upload is idempotent");
    let list = server.cli_json(&["release", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1);

    let added = server.cli_json(&["device", "add", "kitchen", "--tag", "home", "--tag", "c3"]);
    assert!(added["token"].as_str().unwrap().starts_with("al_dev_"));
    assert_eq!(added["device"]["tags"], serde_json::json!(["c3", "home"]));
    let devices = server.cli_json(&["device", "list"]);
    assert_eq!(devices[0]["name"], "kitchen");

    let id = release["id"].to_string();
    let deployment = server.cli_json(&["deploy", &id, "--to", "tag:home"]);
    assert_eq!(deployment["counts"]["pending"], 1);
    let shown = server.cli_json(&["deployment", "show", &deployment["id"].to_string()]);
    assert_eq!(shown["target"], "tag:home");
    assert_eq!(shown["assignments"][0]["device_name"], "kitchen");
    let device = server.cli_json(&["device", "show", "kitchen"]);
    assert_eq!(device["assignment"]["state"], "pending");

    // Text output for humans.
    let text = server.cli(&["deployment", "show", &deployment["id"].to_string()]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains("to tag:home") && text.contains("kitchen  waiting for check-in"),
        "{text}"
    );
}

#[test]
fn refused_requests_exit_non_zero_and_quote_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, "not firmware").unwrap();
    let output = server.cli(&["release", "upload", file.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("cannot be a release") && stderr.contains("expected 0xe9"),
        "{stderr}"
    );

    let output = Command::new(AIRLIFT)
        .args(["release", "list"])
        .env("AIRLIFT_SERVER", &server.url)
        .env("AIRLIFT_TOKEN", "al_admin_wrong")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown admin token"));

    let output = Command::new(AIRLIFT)
        .args(["device", "list"])
        .env_remove("AIRLIFT_TOKEN")
        .env("AIRLIFT_SERVER", &server.url)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no admin token"));
}

#[test]
fn first_start_prints_the_admin_token_once_and_sigterm_stops_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = Server::start(&data, &[]);
    let token = first.admin_token();
    terminate(first, &token, true);
    let second = Server::start(&data, &[]);
    assert_eq!(second.admin_token(), token);
    terminate(second, &token, false);
}

fn terminate(mut server: Server, token: &str, expect_token_printed: bool) {
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut stdout = String::new();
    std::io::Read::read_to_string(server.child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(stdout.contains(token), expect_token_printed, "{stdout}");
}

#[test]
fn print_config_shows_the_effective_configuration_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("airlift.toml");
    std::fs::write(&file, "poll_seconds = 30\nlisten = \"0.0.0.0:9000\"\n").unwrap();
    let output = Command::new(AIRLIFT)
        .args([
            "serve",
            "--print-config",
            "--data",
            "/srv/airlift",
            "--config",
        ])
        .arg(&file)
        .env("AIRLIFT_POLL_SECONDS", "45")
        .env("AIRLIFT_ENROLLMENT_SECRET", "s3cret")
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    for line in [
        "data_dir = \"/srv/airlift\"",
        "listen = \"0.0.0.0:9000\"",
        "poll_seconds = 45",
        "enrollment_secret = \"<redacted>\"",
    ] {
        assert!(text.contains(line), "{line:?} missing in:\n{text}");
    }
    assert!(!text.contains("s3cret"));
}

#[test]
fn a_release_signed_offline_is_uploaded_with_its_manifest_and_keeps_its_signature() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let file = dir.path().join("fw.bin");
    std::fs::write(&file, image("2.0.0", 6000)).unwrap();
    let key = dir.path().join("release");
    let run = |args: &[&str]| {
        let output = Command::new(AIRLIFT).args(args).output().unwrap();
        assert!(
            output.status.success(),
            "airlift {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run(&["keys", "generate", key.to_str().unwrap()]);
    let manifest = dir.path().join("fw.manifest");
    run(&[
        "release",
        "sign",
        file.to_str().unwrap(),
        "--key",
        &format!("{}.key", key.display()),
        "--version",
        "2.0.0-signed",
        "-o",
        manifest.to_str().unwrap(),
    ]);

    let release = server.cli_json(&[
        "release",
        "upload",
        file.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
    ]);
    assert_eq!(release["signed_by_server"], false);
    assert_eq!(release["version"], "2.0.0-signed");
    let shown = server.cli_json(&["release", "show", &release["id"].to_string()]);
    let blob = std::fs::read(&manifest).unwrap();
    assert_eq!(
        shown["manifest"],
        airlift_format::manifest::base64_encode(&blob)
    );

    // A manifest signed for other bytes is refused.
    let other = dir.path().join("other.bin");
    std::fs::write(&other, image("2.0.1", 6000)).unwrap();
    let output = server.cli(&[
        "release",
        "upload",
        other.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("manifest_mismatch"));
}

#[test]
fn operator_drives_a_rollout_through_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let file = dir.path().join("fw.bin");
    std::fs::write(&file, image("2.0.0", 8000)).unwrap();
    let release = server.cli_json(&["release", "upload", file.to_str().unwrap()])["id"].to_string();
    for name in ["d1", "d2", "d3", "d4"] {
        server.cli_json(&["device", "add", name, "--tag", "lab"]);
    }
    let draft = server.cli_json(&[
        "rollout",
        "create",
        &release,
        "--to",
        "devices:d1,d2,d3,d4",
        "--waves",
        "1,2",
        "--soak",
        "10m",
        "--pause-at",
        "25%",
        "--deadline",
        "2h",
        "--max-parallel",
        "3",
        "--draft",
    ]);
    let id = draft["id"].to_string();
    assert_eq!(draft["state"], "draft");
    assert_eq!(
        draft["plan"],
        serde_json::json!({"waves": ["1", "2"], "soak_ms": 600_000, "success_threshold": "95%",
            "failure_threshold": "25%", "deadline_ms": 7_200_000, "max_parallel": 3,
            "penalty_failures": 2})
    );
    let step = |command: &str, state: &str, opened: i64| {
        let r = server.cli_json(&["rollout", command, &id]);
        assert_eq!(
            (r["state"].as_str(), r["opened"].as_i64()),
            (Some(state), Some(opened)),
            "{command}"
        );
        r
    };
    let started = step("start", "running", 1);
    assert_eq!(started["waves"], serde_json::json!([1, 2, 4]));
    step("pause", "paused", 1);
    step("resume", "running", 1);
    step("advance", "running", 2);
    let cancelled = step("cancel", "cancelled", 2);
    assert_eq!(
        cancelled["total"]["states"],
        serde_json::json!({"cancelled": 4})
    );
    let refused = server.cli(&["rollout", "resume", &id]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("cannot resume: the rollout is cancelled"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // Text output for humans.
    let text =
        String::from_utf8(server.cli(&["rollout", "show", &id, "--devices"]).stdout).unwrap();
    for expected in [
        "-> devices:d1,d2,d3,d4 (cancelled",
        "plan: waves 1, 2; soak 10m; next wave at 95% confirmed; pause at 25% failed; deadline 2h; at most 3 updating at once",
        "wave 3 (not open): 2 devices",
        "paused by admin (wave 1): paused by admin",
        "advanced by admin (wave 2): wave 2 opened",
        "d4",
    ] {
        assert!(text.contains(expected), "{expected:?} in:\n{text}");
    }
    let list = String::from_utf8(server.cli(&["rollout", "list"]).stdout).unwrap();
    assert!(
        list.contains("devices:d1,d2,d3,d4") && list.contains("cancelled"),
        "{list}"
    );
}
