//! End to end in a real browser: the fleet dashboard (`web/dashboard`)
//! against a real `airlift serve` with simulated devices (`airlift fleet
//! sim`), driven in Debian's headless Chromium by `web/tests/dashboard.mjs`
//! the way a person drives it: signing in, dropping files, picking options,
//! following a deployment, signing out. The script checks what the pages
//! show and saves a screenshot of each into `target/screenshots/`; this file
//! prepares the fleet and checks the server's side.
//!
//! One story shares one server, one fleet and one browser: starting them is
//! most of the cost. Staged rollouts have a story of their own (a fleet of
//! 20 where the new release crashes on 30%). Needs node, /usr/bin/chromium and web/tests/node_modules
//! (see `agent_common::browser`).
#![allow(clippy::unwrap_used)]

mod agent_common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use agent_common::browser::{require_browser_tools, run_script, screenshots_dir};
use agent_common::*;
use airlift_format::manifest::{key_id, parse_public_key_file};
use serde_json::json;

/// The story deploys to 53 devices twice and waits for three failed boots
/// on each: generous for a loaded two-core machine.
const STORY_DEADLINE: Duration = Duration::from_secs(400);

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/esp-idf-apps")
        .join(name)
}

/// The simulator's app image VERSION as DIR/VERSION.bin.
fn firmware(dir: &Path, version: &str) -> PathBuf {
    let path = dir.join(format!("{version}.bin"));
    fleet_firmware(&path, version, None);
    path
}

/// A running `airlift fleet sim`, stopped (SIGKILL) when dropped.
struct Fleet {
    child: Child,
    log: PathBuf,
}

impl Fleet {
    /// `count` devices named PREFIX-NNNNN with `tag`, starting on `firmware`,
    /// behaving as `behave` says (`VERSION=crash[@SHARE]`).
    fn start(
        server: &Server,
        prefix: &str,
        count: usize,
        tag: &str,
        firmware: &Path,
        behave: &str,
    ) -> Fleet {
        let log = server.data.with_file_name(format!("{prefix}.log"));
        let child = Command::new(AIRLIFT)
            .args([
                "fleet",
                "sim",
                "--devices",
                &count.to_string(),
                "--tag",
                tag,
            ])
            .args(["--prefix", prefix, "--firmware"])
            .arg(firmware)
            .arg("--trust")
            .arg(server.signing_pub())
            .args([
                "--poll",
                "0.5",
                "--health-check",
                "0.05",
                "--watchdog",
                "0.3",
            ])
            .args(["--behave", behave])
            .env("AIRLIFT_SERVER", &server.url)
            .env("AIRLIFT_TOKEN", server.admin_token())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Fleet { child, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The key id of the server's signing key, as the dashboard shows it.
fn server_key_id(server: &Server) -> String {
    let text = std::fs::read_to_string(server.signing_pub()).unwrap();
    hex::encode(key_id(&parse_public_key_file(&text).unwrap()))
}

/// What a story of `dashboard.mjs` is told: the dashboard's and the API's
/// addresses, the admin token, where screenshots go, the fleet's process,
/// and `extra`.
fn story_config(server: &Server, fleet: &Fleet, extra: serde_json::Value) -> serde_json::Value {
    let mut config = json!({
        "url": server.dashboard,
        "api": server.url,
        "token": server.admin_token(),
        "screenshots": screenshots_dir(),
        "fleet_pid": fleet.child.id(),
    });
    for (key, value) in extra.as_object().unwrap() {
        config[key] = value.clone();
    }
    config
}

fn sha256_file(path: &Path) -> String {
    sha256_hex(&std::fs::read(path).unwrap())
}

#[test]
fn dashboard_signs_in_uploads_deploys_to_a_tag_of_50_devices_shows_rollbacks_history_and_signs_out()
{
    require_browser_tools();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = Server::start(&d.join("data"), &[]);
    let v1 = firmware(d, "1.0.0");
    let v2 = firmware(d, "2.0.0");
    let v3 = firmware(d, "3.0.0");
    let foreign = write(
        d,
        "holiday-photos.zip",
        b"PK\x03\x04 holiday photos, not firmware",
    );
    // 50 devices on 1.0.0, and 3 with the same tag that run 2.0.0 already:
    // a deployment of 2.0.0 cannot go to those, and must not wait for them.
    // 3.0.0 crashes at boot.
    let fleet = Fleet::start(&server, "lab", 50, "lab", &v1, "3.0.0=crash");
    let spares = Fleet::start(&server, "spare", 3, "lab", &v2, "3.0.0=crash");
    let real = testdata("hello_world_new.bin");
    let config = story_config(
        &server,
        &fleet,
        json!({
        "key_id": server_key_id(&server),
        "files": {
            "real": real,
            "foreign": foreign,
            "good": v2,
            "crash": v3,
        },
        "real": {
            "size": std::fs::metadata(&real).unwrap().len(),
            "sha256": sha256_file(&real),
            "project": "hello-world",
            "version": "v4.4-dev-3016-g8fd591390a",
        },
        "good_sha256": sha256_file(&v2),
        }),
    );
    run_script("dashboard.mjs", "story", &config, STORY_DEADLINE, || {
        format!(
            "--- fleet log (tail) ---\n{}\n--- spares log (tail) ---\n{}",
            tail(&fleet.log_text()),
            tail(&spares.log_text())
        )
    });

    // What the pages showed is what the server holds.
    let deployments = server.cli_json(&["deployment", "list"]);
    let by_id = |n: usize| server.deployment(deployments[n]["id"].as_i64().unwrap());
    let (cancelled, crash, good) = (by_id(0), by_id(1), by_id(2));
    assert_eq!(cancelled["state"], "cancelled", "{cancelled:#}");
    assert_eq!(cancelled["target"], "device:lab-00007", "{cancelled:#}");
    assert_eq!(crash["counts"]["rolled_back"], 53, "{crash:#}");
    assert_eq!(
        (
            good["counts"]["confirmed"].as_i64(),
            good["counts"]["skipped"].as_i64()
        ),
        (Some(50), Some(3)),
        "{good:#}"
    );
    let releases = server.cli_json(&["release", "list"]);
    assert_eq!(
        releases.as_array().unwrap().len(),
        3,
        "the foreign file was not stored: {releases:#}"
    );
}

#[test]
fn dashboard_creates_a_rollout_shows_its_waves_live_why_it_paused_with_the_numbers_and_resumes_advances_and_cancels_it()
 {
    require_browser_tools();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = Server::start(&d.join("data"), &[("AIRLIFT_ROLLOUT_TICK_MS", "200")]);
    server.upload(&firmware(d, "1.0.0"));
    server.upload(&firmware(d, "2.0.0"));
    // 20 devices on 1.0.0; 2.0.0 crashes at boot on 30% of them (6).
    let fleet = Fleet::start(
        &server,
        "canary",
        20,
        "canary",
        &firmware(d, "1.0.0"),
        "2.0.0=crash@0.3",
    );
    let config = story_config(&server, &fleet, json!({"devices": 20}));
    run_script("dashboard.mjs", "rollout", &config, STORY_DEADLINE, || {
        format!("--- fleet log (tail) ---\n{}", tail(&fleet.log_text()))
    });

    // What the page did is what the server holds.
    let first = server.cli_json(&["rollout", "show", "1"]);
    assert_eq!(first["state"], "cancelled", "{first:#}");
    let kinds: Vec<(&str, &str, u64)> = first["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap(),
                e["actor"].as_str().unwrap(),
                e["wave"].as_u64().unwrap(),
            )
        })
        .filter(|(kind, ..)| !matches!(*kind, "soak_started" | "deadline"))
        .collect();
    assert_eq!(
        kinds,
        [
            ("created", "admin", 0),
            ("started", "admin", 1),
            ("paused", "scheduler", 1),
            ("resumed", "admin", 1),
            ("paused", "admin", 1),
            ("resumed", "admin", 1),
            ("advanced", "admin", 2),
            ("paused", "scheduler", 2),
            ("cancelled", "admin", 2),
        ],
        "{first:#}"
    );
    // The second rollout held back exactly the devices that failed the first.
    let failed: std::collections::BTreeSet<&str> = first["assignments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["state"] == "rolled_back" || a["state"] == "failed")
        .map(|a| a["device_name"].as_str().unwrap())
        .collect();
    let second = server.cli_json(&["rollout", "show", "2"]);
    let held: std::collections::BTreeSet<&str> = second["held_back"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["device"].as_str().unwrap())
        .collect();
    assert!(!held.is_empty(), "{second:#}");
    assert_eq!(held, failed, "{second:#}");
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Serves the files under `dir` on `listener` over plain HTTP/1.1, with the
/// content types a browser needs for modules and styles: what any static
/// host (GitHub Pages, nginx) does for these files.
fn serve_directory(listener: TcpListener, dir: PathBuf) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let dir = dir.clone();
            std::thread::spawn(move || answer(stream, &dir));
        }
    });
}

fn answer(mut stream: std::net::TcpStream, dir: &Path) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut header = String::new();
    while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
        header.clear();
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let path = path
        .split('?')
        .next()
        .unwrap_or("/")
        .trim_start_matches('/');
    let path = if path.is_empty() { "index.html" } else { path };
    let file = dir.join(path);
    let found = !path.contains("..") && file.is_file();
    let (status, body) = if found {
        ("200 OK", std::fs::read(&file).unwrap())
    } else {
        ("404 Not Found", b"not found".to_vec())
    };
    let content_type = match file.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        _ => "text/plain; charset=utf-8",
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(&body);
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
}

/// Copies `web/dashboard` to `to`, as a deployer would before editing config.js.
fn copy_dashboard(to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web/dashboard");
    for file in files_under(&from) {
        let target = to.join(file.strip_prefix(&from).unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&file, &target).unwrap();
    }
}

#[test]
fn dashboard_served_from_another_origin_works_against_the_api_it_is_pointed_at() {
    require_browser_tools();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The static host's address first: the server must allow that origin.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let server = Server::start(&d.join("data"), &[("AIRLIFT_CORS_ORIGINS", &origin)]);
    let site = d.join("site");
    copy_dashboard(&site);
    std::fs::write(
        site.join("config.js"),
        format!("export const API = {:?};\n", server.url),
    )
    .unwrap();
    serve_directory(listener, site);
    server.add_device("north", "remote");
    server.add_device("south", "remote");
    let real = testdata("hello_world_new.bin");
    let config = json!({
        "url": format!("{origin}/"),
        "api": server.url,
        "token": server.admin_token(),
        "screenshots": screenshots_dir(),
        "files": {"real": real},
        "real": {"sha256": sha256_file(&real)},
    });
    run_script("dashboard.mjs", "cross_origin", &config, DEADLINE, || {
        String::new()
    });
    let releases = server.cli_json(&["release", "list"]);
    assert_eq!(releases[0]["sha256"], sha256_file(&real), "{releases:#}");
}
