//! Running the browser scripts of `web/tests` (playwright-core driving
//! Debian's Chromium) from `cargo test`.
//!
//! Needs node, /usr/bin/chromium and web/tests/node_modules: `./scripts/setup`
//! installs them, and the tests fail (never skip) when one is missing.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const CHROMIUM: &str = "/usr/bin/chromium";

pub fn web_tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web/tests")
}

/// Where the browser tests save their screenshots (CI keeps this folder).
pub fn screenshots_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Fails, naming `./scripts/setup`, when a tool the browser tests need is missing.
pub fn require_browser_tools() {
    let node = Command::new("node").arg("--version").output();
    let mut missing = Vec::new();
    if !node.is_ok_and(|o| o.status.success()) {
        missing.push("node (Node.js)".to_owned());
    }
    if !Path::new(CHROMIUM).exists() {
        missing.push(CHROMIUM.to_owned());
    }
    let playwright = web_tests_dir().join("node_modules/playwright-core/package.json");
    if !playwright.exists() {
        missing.push(playwright.display().to_string());
    }
    assert!(
        missing.is_empty(),
        "the browser tests need {}: run ./scripts/setup",
        missing.join(", ")
    );
}

/// Runs `node SCRIPT SCENARIO` in web/tests with `config` in
/// `AIRLIFT_BROWSER_CONFIG`; panics with the script's report (what the page
/// showed, its console) and `context()` unless the script reports the
/// scenario passed within `deadline`. Returns what the script printed.
pub fn run_script(
    script: &str,
    scenario: &str,
    config: &Value,
    deadline: Duration,
    context: impl Fn() -> String,
) -> String {
    let mut child = Command::new("node")
        .arg(script)
        .arg(scenario)
        .current_dir(web_tests_dir())
        .env("AIRLIFT_BROWSER_CONFIG", config.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert!(
        status.is_some_and(|s| s.success()),
        "browser scenario {scenario} {}:\n{out}{err}\n{}",
        match status {
            Some(s) => format!("failed ({s})"),
            None => format!("did not finish within {deadline:?}"),
        },
        context()
    );
    // Shown with --nocapture: each check the script made.
    println!("{out}");
    assert!(
        out.contains(&format!("scenario {scenario}: passed")),
        "the script did not report the scenario as passed:\n{out}{err}"
    );
    out
}
