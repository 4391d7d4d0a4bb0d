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
    let stored = server.cli_json(&["release", "list"]);
    assert_eq!(stored[0]["version"], "1.0.0", "{stored:#}");
    assert_eq!(
        stored[1],
        serde_json::Value::Null,
        "only the good file: {stored:#}"
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

/// A server whose devices are told to poll once an hour: an update that
/// reaches a device within a test came through a check-in that waited.
fn hourly_server(d: &Path) -> Server {
    Server::start(&d.join("data"), &[("AIRLIFT_POLL_SECONDS", "3600")])
}

/// Releases 1.0.0 (id 1) and 1.1.0 (id 2) on `server`; a flash file
/// `FLASH` running 1.0.0 that trusts the server's key.
fn two_releases_and_a_flash(server: &Server, d: &Path, flash: &str) -> std::path::PathBuf {
    let v1 = d.join("v1.bin");
    let v2 = d.join("v2.bin");
    fleet_firmware(&v1, "1.0.0", None);
    fleet_firmware(&v2, "1.1.0", None);
    assert_eq!(server.upload(&v1), 1);
    assert_eq!(server.upload(&v2), 2);
    let flash = d.join(flash);
    create_flash(&flash, &v1, &server.signing_pub());
    flash
}

fn stdout_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn issue_17_a_device_run_in_the_background_stops_on_sigint_says_so_and_its_page_uses_the_servers_name()
 {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = hourly_server(d);
    let flash = two_releases_and_a_flash(&server, d, "dev.flash");
    let token = server.add_device("kitchen", "lab");
    // `cmd &` in a script: the shell starts it with SIGINT ignored.
    let log = d.join("device.log");
    let mut shell = Command::new("sh")
        .arg("-c")
        .arg(r#""$0" device run --flash "$1" --server "$2" --token "$3" --listen 127.0.0.1:0 --password pw & echo $!; wait $!"#)
        .args([AIRLIFT, flash.to_str().unwrap(), &server.url, &token])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut pid = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(shell.stdout.as_mut().unwrap()),
        &mut pid,
    )
    .unwrap();
    let pid: u32 = pid.trim().parse().unwrap();
    let page = || {
        read(&log)
            .lines()
            .find_map(|l| l.strip_prefix("airlift: device page at "))
            .map(str::to_owned)
    };
    wait_for("the device page", || page().is_some(), || read(&log));
    let page = page().unwrap();
    let name = || -> Option<String> {
        let status: serde_json::Value = reqwest::blocking::Client::new()
            .get(format!("{page}/api/status"))
            .bearer_auth("pw")
            .send()
            .ok()?
            .json()
            .ok()?;
        status["name"].as_str().map(str::to_owned)
    };
    wait_for(
        "the page to call the device kitchen, as the server does",
        || name().as_deref() == Some("kitchen"),
        || format!("the page says {:?}\n{}", name(), read(&log)),
    );
    assert!(
        read(&log).contains("the server knows this device as kitchen"),
        "{}",
        read(&log)
    );

    signal(pid, "INT");
    let status = shell.wait().unwrap();
    let text = read(&log);
    assert!(status.success(), "{status:?}: {text}");
    assert!(
        text.contains("airlift: device dev stopped; "),
        "it says it stopped: {text}"
    );
}

#[test]
fn issue_17_a_deployment_reaches_a_device_waiting_on_its_check_in_and_deploy_wait_follows_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = hourly_server(d);
    let flash = two_releases_and_a_flash(&server, d, "kitchen.flash");
    let token = server.add_device("kitchen", "lab");
    let agent = Agent::start(
        &flash,
        &[
            "--server",
            &server.url,
            "--token",
            &token,
            "--health-check",
            "0.05",
        ],
    );
    wait_for(
        "kitchen's check-in to wait on the server",
        || server.cli_json(&["device", "show", "kitchen"])["check_in"]["waiting"] == true,
        || agent.log_text(),
    );
    let output = server.cli(&["deploy", "2", "--to", "tag:lab", "--wait"]);
    let text = stdout_of(&output);
    assert!(
        output.status.success(),
        "{text}{}{}",
        String::from_utf8_lossy(&output.stderr),
        agent.log_text()
    );
    assert!(
        text.starts_with("deployment 1: airlift-sim 1.1.0 to tag:lab (active, created "),
        "{text}"
    );
    let progress: Vec<&str> = text.lines().filter(|l| l.starts_with("  [")).collect();
    assert!(
        progress
            .last()
            .unwrap()
            .ends_with("] 1 device: 1 confirmed"),
        "{text}"
    );
    assert!(
        text.ends_with("deployment 1 finished: 1 confirmed\n"),
        "{text}"
    );

    // Lists have headers, and a deployment has one state everywhere.
    let list = stdout_of(&server.cli(&["deployment", "list"]));
    let lines: Vec<&str> = list.lines().collect();
    assert!(
        lines[0].starts_with("ID  VERSION  TARGET   STATE     DEVICES"),
        "{list}"
    );
    assert!(
        lines[1].contains("1.1.0    tag:lab  finished  1 device: 1 confirmed"),
        "{list}"
    );
    let json = server.cli_json(&["deployment", "list"]);
    assert_eq!(json[0]["state"], "finished", "{json:#}");
    assert!(
        json[0].get("status").is_none(),
        "one state, not two: {json:#}"
    );
    assert_eq!(server.deployment(1)["state"], "finished");
    let devices = stdout_of(&server.cli(&["device", "list"]));
    assert!(devices.starts_with("NAME     RUNNING"), "{devices}");
    assert!(
        devices.contains("kitchen  airlift-sim 1.1.0 (slot 1)"),
        "{devices}"
    );
    let releases = stdout_of(&server.cli(&["release", "list"]));
    assert!(
        releases.starts_with("ID  PROJECT      VERSION  CHIP "),
        "{releases}"
    );
    // And their output into a closed pipe ends quietly.
    let (status, stderr) = into_closed_pipe(
        Command::new(AIRLIFT)
            .args(["deployment", "list"])
            .env("AIRLIFT_SERVER", &server.url)
            .env("AIRLIFT_TOKEN", server.admin_token()),
    );
    assert!(status.success(), "{stderr}");
    assert_eq!(stderr, "");
}

#[test]
fn issue_17_a_deployment_says_when_each_waiting_device_is_expected_and_a_tag_nobody_carries_is_refused()
 {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = hourly_server(d);
    let flash = two_releases_and_a_flash(&server, d, "kitchen.flash");
    let token = server.add_device("kitchen", "lab");
    server.add_device("porch", "lab");
    // kitchen checks in once and is told to come back in an hour; porch never ran.
    let agent = Agent::start(
        &flash,
        &["--server", &server.url, "--token", &token, "--no-long-poll"],
    );
    wait_for(
        "kitchen to check in",
        || server.cli_json(&["device", "show", "kitchen"])["status"]["last_seen"].is_i64(),
        || agent.log_text(),
    );

    let output = server.cli(&["deploy", "2", "--to", "tag:labs"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(r#"no device has the tag "labs" (tags in use: lab (2))"#),
        "{stderr}"
    );

    let output = server.cli(&["deploy", "2", "--to", "tag:lab"]);
    let text = stdout_of(&output);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("2 devices: 2 waiting for check-in"), "{text}");
    let row = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name}: {text}"))
            .to_owned()
    };
    let kitchen = row("kitchen");
    assert!(
        kitchen.contains("waiting for check-in  next check-in due in "),
        "{kitchen}"
    );
    assert!(kitchen.contains("(last seen "), "{kitchen}");
    assert!(
        row("porch").contains("it has never checked in: is it running, with its token?"),
        "{text}"
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("airlift deployment show 1 --wait"),
        "it says how to follow it"
    );
}

/// `airlift demo` with its temporary folder under `tmp` and no `airlift`
/// on `PATH` (a `cargo run` user's situation); stdout read line by line.
fn demo(
    tmp: &Path,
) -> (
    std::process::Child,
    std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
) {
    let mut child = Command::new(AIRLIFT)
        .args(["demo", "--devices", "3"])
        .env("TMPDIR", tmp)
        .env("PATH", "/usr/bin:/bin")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    (child, lines)
}

fn demo_folders(tmp: &Path) -> Vec<String> {
    std::fs::read_dir(tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("airlift-demo-"))
        .collect()
}

#[test]
fn issue_17_the_demo_points_at_the_dashboard_and_a_command_that_runs_counts_each_step_apart_and_cleans_up()
 {
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, mut lines) = demo(tmp.path());
    let mut told = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let end = line.contains("Ctrl-C stops the demo");
        told.push(line);
        if end {
            break;
        }
    }
    let text = told.join("\n");
    assert_eq!(demo_folders(tmp.path()).len(), 1, "{text}");
    // Step 4's progress counts step 4's events only: nothing confirms 1.2.0.
    let step4: Vec<&String> = told
        .iter()
        .skip_while(|l| !l.starts_with("4. "))
        .take_while(|l| !l.contains("Deployment "))
        .filter(|l| l.starts_with("   ["))
        .collect();
    assert!(!step4.is_empty(), "{text}");
    for line in &step4 {
        assert!(
            line.contains("| confirmed 0 rolled back "),
            "{line}\n{text}"
        );
    }
    assert!(text.contains("3 of 3 devices rolled back"), "{text}");
    let five = told.iter().find(|l| l.starts_with("5. ")).unwrap();
    assert!(
        five.contains("See it all in the dashboard: http://127.0.0.1:"),
        "{text}"
    );
    assert!(
        !text.contains("/api/v1/devices"),
        "no link to an API that answers 401: {text}"
    );
    // The command it suggests runs as written: `airlift` is not on PATH here.
    let command = told
        .iter()
        .find_map(|l| l.split("from the command line: ").nth(1))
        .unwrap();
    let program = command
        .strip_suffix(" device list")
        .and_then(|c| c.rsplit(' ').next())
        .unwrap();
    assert_eq!(
        std::fs::canonicalize(program).ok(),
        std::fs::canonicalize(AIRLIFT).ok(),
        "{command}"
    );

    signal(child.id(), "INT");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(
        demo_folders(tmp.path()),
        Vec::<String>::new(),
        "the temporary folder is gone"
    );
}

#[test]
fn issue_17_a_demo_interrupted_midway_stops_cleanly_and_removes_its_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let (child, mut lines) = demo(tmp.path());
    let first = lines.next().unwrap().unwrap();
    assert!(
        first.starts_with("1. An Airlift server is running at "),
        "{first}"
    );
    assert!(
        first.ends_with(", removed when the demo stops)."),
        "{first}"
    );
    signal(child.id(), "INT");
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130));
    assert!(String::from_utf8_lossy(&output.stderr).contains("airlift: demo interrupted"));
    assert_eq!(demo_folders(tmp.path()), Vec::<String>::new());
}

/// The fenced blocks of README.md's section `heading`, in order: the
/// ```sh ones and the plain ones (sample output).
fn readme_blocks(heading: &str) -> (Vec<String>, Vec<String>) {
    let readme = readme();
    let section = readme
        .split_once(&format!("\n{heading}\n"))
        .map(|(_, rest)| rest.split("\n## ").next().unwrap().to_owned())
        .unwrap_or_else(|| panic!("README.md has no section {heading:?}"));
    let (mut shell, mut plain) = (Vec::new(), Vec::new());
    let mut parts = section.split("```");
    parts.next();
    while let (Some(block), _) = (parts.next(), parts.next()) {
        match block.split_once('\n') {
            Some(("sh", body)) => shell.push(body.to_owned()),
            Some(("", body)) => plain.push(body.to_owned()),
            _ => {}
        }
    }
    (shell, plain)
}

/// The commands of a block, without its comments.
fn commands(block: &str) -> Vec<&str> {
    block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// `**s` for what changes from run to run: durations and ages (`0.5s`, `3s`).
fn shape(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find(|c: char| c.is_ascii_digit()) {
        out.push_str(&rest[..start]);
        let run = rest[start..]
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .map_or(rest.len(), |n| start + n);
        if rest[run..].starts_with('s') {
            out.push_str("**s");
            rest = &rest[run + 1..];
        } else {
            out.push_str(&rest[start..run]);
            rest = &rest[run..];
        }
    }
    out.push_str(rest);
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn issue_17_the_readme_walk_through_followed_as_written_shows_two_versions_and_an_update_that_progresses()
 {
    let (blocks, samples) = readme_blocks("## A first update, on your PC");
    assert_eq!(blocks.len(), 4, "four steps: {blocks:#?}");
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    // `cargo install` puts airlift on PATH.
    std::os::unix::fs::symlink(AIRLIFT, bin.join("airlift")).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let shell = |script: &str| {
        let mut command = Command::new("bash");
        command
            .args(["-ec", script])
            .current_dir(&work)
            .env("PATH", &path)
            .env_remove("AIRLIFT_SERVER")
            .env_remove("AIRLIFT_TOKEN")
            .env("AIRLIFT_LOG", "warn");
        command
    };

    // 1. The server. The one change to the README: free ports instead of
    // 8080 and 8081 (the test may not take fixed ones).
    let serve = commands(&blocks[0]);
    assert_eq!(serve, ["airlift serve"]);
    let log = dir.path().join("serve.log");
    let mut server = shell(&format!("exec {}", serve[0]))
        .env("AIRLIFT_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let url = || {
        read(&log)
            .lines()
            .find_map(|l| l.strip_prefix("airlift: serving "))
            .and_then(|rest| rest.split_whitespace().next().map(str::to_owned))
    };
    wait_for("the server", || url().is_some(), || read(&log));
    let url = url().unwrap();
    let same_terminal = |script: &str| {
        let mut command = shell(script);
        command.env("AIRLIFT_SERVER", &url);
        command
    };

    // 2. Two builds, uploaded; a device and its flash.
    let output = same_terminal(&blocks[1]).output().unwrap();
    assert!(
        output.status.success(),
        "step 2: {}{}",
        stdout_of(&output),
        String::from_utf8_lossy(&output.stderr)
    );
    let token = read(&work.join("airlift-data/admin.token"))
        .trim()
        .to_owned();

    // 3. The device.
    let device = commands(&blocks[2]);
    assert_eq!(device.len(), 1);
    let device = device[0]
        .replace("http://127.0.0.1:8080", &url)
        .replace("127.0.0.1:8081", "127.0.0.1:0");
    let device_log = dir.path().join("device.log");
    let mut device = shell(&format!("exec {device}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&device_log).unwrap())
        .spawn()
        .unwrap();
    let list = || {
        let output = same_terminal("airlift device list")
            .env("AIRLIFT_TOKEN", &token)
            .output()
            .unwrap();
        stdout_of(&output)
    };
    wait_for(
        "kitchen to report 1.0.0, as `airlift device list` shows it",
        || list().contains("kitchen  airlift-sim 1.0.0"),
        || read(&device_log),
    );

    // 4. The update, in the terminal of step 2 (its AIRLIFT_TOKEN).
    let output = same_terminal(&blocks[3])
        .env("AIRLIFT_TOKEN", &token)
        .output()
        .unwrap();
    let text = stdout_of(&output);
    assert!(
        output.status.success(),
        "step 4: {text}{}{}",
        String::from_utf8_lossy(&output.stderr),
        read(&device_log)
    );
    let lines: Vec<&str> = text.lines().collect();
    let sample: Vec<&str> = samples[0].lines().collect();
    // Two versions, told apart, before and after; the update's progress between.
    for (shown, expected) in [
        (lines[..3].to_vec(), sample[..3].to_vec()),
        (
            lines[lines.len() - 4..].to_vec(),
            sample[sample.len() - 4..].to_vec(),
        ),
    ] {
        let shown: Vec<String> = shown.iter().map(|l| shape(l)).collect();
        let expected: Vec<String> = expected.iter().map(|l| shape(l)).collect();
        assert_eq!(shown, expected, "step 4 printed:\n{text}");
    }
    // Where the device is when the deployment is made depends on how fast
    // it took the offer; then it is followed to its end.
    assert!(lines[3].starts_with("  1 device: 1 "), "{text}");
    let progress: Vec<&&str> = lines.iter().filter(|l| l.starts_with("  [")).collect();
    assert!(
        progress
            .last()
            .is_some_and(|l| l.ends_with("1 device: 1 confirmed")),
        "the update visibly progresses:\n{text}"
    );
    let releases = same_terminal("airlift release list")
        .env("AIRLIFT_TOKEN", &token)
        .output()
        .unwrap();
    let releases = stdout_of(&releases);
    assert!(
        releases.contains("airlift-sim  1.1.0") && releases.contains("airlift-sim  1.0.0"),
        "{releases}"
    );

    // Ctrl-C stops both.
    signal(device.id(), "INT");
    assert!(device.wait().unwrap().success(), "{}", read(&device_log));
    signal(server.id(), "INT");
    assert!(server.wait().unwrap().success(), "{}", read(&log));
}
