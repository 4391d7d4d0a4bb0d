//! Runs the real `airlift serve` binary on an ephemeral port with a temporary data directory.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use airlift_format::image::{Chip, ImageBuilder};

pub const AIRLIFT: &str = env!("CARGO_BIN_EXE_airlift");

pub struct ServeProcess {
    pub child: Child,
    pub url: String,
    pub data: PathBuf,
    pub stdout: String,
}

impl ServeProcess {
    /// Starts `airlift serve --data DIR --listen 127.0.0.1:0` and waits until it listens.
    pub fn start(data: &Path) -> ServeProcess {
        let mut child = Command::new(AIRLIFT)
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .env("AIRLIFT_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // stderr says "airlift: serving http://ADDR from DIR" once listening.
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut url = None;
        let mut seen = String::new();
        let mut line = String::new();
        while stderr.read_line(&mut line).unwrap() > 0 {
            if let Some(rest) = line.strip_prefix("airlift: serving ") {
                url = rest.split_whitespace().next().map(str::to_owned);
                break;
            }
            seen.push_str(&line);
            line.clear();
        }
        let Some(url) = url else {
            let status = child.wait().unwrap();
            panic!("airlift serve did not start ({status}): {seen}");
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        ServeProcess {
            child,
            url,
            data: data.to_owned(),
            stdout: String::new(),
        }
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data.join("admin.token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// Runs `airlift ARGS` against this server with the admin token.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(AIRLIFT)
            .args(args)
            .env("AIRLIFT_SERVER", &self.url)
            .env("AIRLIFT_TOKEN", self.admin_token())
            .output()
            .unwrap()
    }

    /// Runs `airlift ARGS --json`, expecting success; returns the JSON.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut args = args.to_vec();
        args.push("--json");
        let output = self.cli(&args);
        assert!(
            output.status.success(),
            "airlift {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }

    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// A valid ESP32-C3 app image of roughly `len` bytes.
pub fn image(version: &str, len: usize, seed: u8) -> Vec<u8> {
    let data: Vec<u8> = (0..len as u32)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect();
    ImageBuilder::new(Chip::Esp32c3)
        .app("cli-demo", version)
        .segment(0x4200_0020, data)
        .build()
}

pub fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
