//! Issue 17, "the first hour": what a new user trips over in the CLI, the
//! demo and the README, each driven through the real `airlift` binary as
//! the user ran it.
#![allow(clippy::unwrap_used)]

mod agent_common;

use std::path::Path;
use std::process::{Command, Stdio};

use agent_common::*;

fn testdata(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(path)
}

/// Runs `command` with stdout a pipe nobody reads any more (`| head` that
/// has finished); returns its status and stderr.
fn into_closed_pipe(command: &mut Command) -> (std::process::ExitStatus, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = command
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn issue_17_output_into_a_closed_pipe_ends_quietly() {
    let csv = testdata("partitions/airlift_default.csv");
    let image = testdata("esp-idf-apps/hello_world_new.bin");
    for args in [
        vec!["partitions", "inspect", csv.to_str().unwrap()],
        vec!["image", "inspect", image.to_str().unwrap()],
        vec!["image", "inspect", image.to_str().unwrap(), "--json"],
    ] {
        let (status, stderr) = into_closed_pipe(Command::new(AIRLIFT).args(&args));
        assert!(status.success(), "airlift {args:?}: {status}: {stderr}");
        assert_eq!(stderr, "", "airlift {args:?} says nothing");
    }
}

#[test]
fn issue_17_a_missing_argument_does_not_show_what_the_environment_set_as_missing_too() {
    let output = Command::new(AIRLIFT)
        .args(["deploy", "2"])
        .env("AIRLIFT_TOKEN", "al_admin_x")
        .env("AIRLIFT_SERVER", "http://127.0.0.1:9")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--to <TO>"), "{stderr}");
    let usage = stderr.lines().find(|l| l.starts_with("Usage:")).unwrap();
    assert_eq!(usage, "Usage: airlift deploy --to <TO> <RELEASE>");
    // The help still says where the token and the server come from.
    let help = Command::new(AIRLIFT)
        .args(["deploy", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("[env: AIRLIFT_TOKEN]"), "{help}");
    assert!(help.contains("[env: AIRLIFT_SERVER]"), "{help}");
}

/// `airlift release upload FILE` against `server`: exit code and stderr.
fn upload_to(server: &Server, file: &Path, token: Option<&str>) -> (Option<i32>, String) {
    let output = Command::new(AIRLIFT)
        .args(["release", "upload"])
        .arg(file)
        .env("AIRLIFT_SERVER", &server.url)
        .env(
            "AIRLIFT_TOKEN",
            token.map_or_else(|| server.admin_token(), str::to_owned),
        )
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn issue_17_an_upload_the_server_refuses_says_why_instead_of_a_body_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = Server::start(&d.join("data"), &[("AIRLIFT_MAX_UPLOAD_BYTES", "1000000")]);
    let flash_dump = write(d, "dump.bin", &vec![0xff; 4 << 20]);
    let zeros = write(d, "zeros.bin", &vec![0; 200_000]);
    let large = write(d, "large.bin", &image("1.0.0", 3 << 20));
    let good = write(d, "good.bin", &image("1.0.0", 60_000));
    // Not images: refused before a byte is sent, in the server's words.
    for (file, why) in [
        (
            &flash_dump,
            "not an ESP image: first byte is 0xff, expected 0xe9",
        ),
        (
            &zeros,
            "not an ESP image: first byte is 0x00, expected 0xe9",
        ),
    ] {
        let (code, stderr) = upload_to(&server, file, None);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains(why), "{stderr}");
        assert!(stderr.contains("nothing was uploaded"), "{stderr}");
        assert!(stderr.contains("airlift image inspect"), "{stderr}");
    }
    // Refused by the server for what the headers say, before it read the
    // body: its answer, every time (the connection closes early).
    for _ in 0..3 {
        let (code, stderr) = upload_to(&server, &large, Some("al_admin_wrong"));
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains("401 Unauthorized"), "{stderr}");
        assert!(stderr.contains("unknown admin token"), "{stderr}");
        assert!(stderr.contains("AIRLIFT_TOKEN"), "{stderr}");
        let (code, stderr) = upload_to(&server, &large, None);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains("413 Payload Too Large"), "{stderr}");
        assert!(
            stderr.contains("larger than the limit of 1000000 bytes"),
            "{stderr}"
        );
        assert!(!stderr.contains("receiver is gone"), "{stderr}");
    }
    let (code, stderr) = upload_to(&server, &good, None);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        server
            .cli_json(&["release", "list"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// Sends `signal` (`INT`, `TERM`) to process `pid`, as `kill -SIGNAL` does.
fn signal(pid: u32, signal: &str) {
    let sent = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{signal} {pid}");
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn readme() -> String {
    read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
}

#[test]
fn issue_17_the_server_log_written_to_a_file_is_plain_text_and_the_readme_names_its_open_routes() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let mut child = Command::new(AIRLIFT)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"))
        .env("AIRLIFT_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for(
        "the server to say where it serves",
        || read(&log).contains("airlift: serving "),
        || read(&log),
    );
    let text = read(&log);
    let url = text
        .lines()
        .find_map(|l| l.strip_prefix("airlift: serving "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    let readme = readme();
    for path in ["/healthz", "/metrics", "/api/openapi.json"] {
        let response = reqwest::blocking::get(format!("{url}{path}")).unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert!(
            readme.contains(&format!("`{path}`")),
            "README.md never mentions {path}"
        );
    }
    signal(child.id(), "TERM");
    assert!(child.wait().unwrap().success());
    let text = read(&log);
    assert!(text.contains("airlift server listening"), "{text}");
    assert!(text.contains("airlift: stopped"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a log file: {text:?}"
    );
}
