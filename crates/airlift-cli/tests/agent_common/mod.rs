//! Shared by the end-to-end tests: the real `airlift serve` and real
//! `airlift device run` processes, a temporary data directory, and helpers
//! to wait for what the server, the data directory or a flash file says.
#![allow(dead_code, clippy::unwrap_used)]

pub mod browser;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use airlift_format::image::{Chip, ImageBuilder};
use serde_json::Value;

pub const AIRLIFT: &str = env!("CARGO_BIN_EXE_airlift");

/// Generous: the machine may be loaded.
pub const DEADLINE: Duration = Duration::from_secs(120);

pub struct Server {
    pub child: Child,
    pub url: String,
    /// The dashboard's address, as `airlift serve` printed it.
    pub dashboard: String,
    pub data: PathBuf,
    /// Its name in the database's leases, as `airlift serve` printed it.
    pub instance: String,
    /// The CA the CLI trusts for an `https://` server (`AIRLIFT_CA_CERT`).
    pub ca_cert: Option<PathBuf>,
}

impl Server {
    /// `airlift serve --listen 127.0.0.1:0` on `data`, with extra env. Its
    /// stdout (the admin token on a first start) stays in `child.stdout`.
    pub fn start(data: &Path, env: &[(&str, &str)]) -> Server {
        Self::start_at(data, "127.0.0.1:0", env)
    }

    /// The same on `listen` (a restart on the address devices know).
    pub fn start_at(data: &Path, listen: &str, env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(AIRLIFT)
            .args(["serve", "--listen", listen, "--data"])
            .arg(data)
            .env("AIRLIFT_LOG", "warn")
            .env("AIRLIFT_POLL_SECONDS", "1")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        let mut seen = String::new();
        let mut url = None;
        let mut instance = String::new();
        while stderr.read_line(&mut line).unwrap() > 0 {
            if let Some(rest) = line.strip_prefix("airlift: serving ") {
                url = rest.split_whitespace().next().map(str::to_owned);
                instance = rest.rsplit(" as ").next().unwrap_or("").trim().to_owned();
                break;
            }
            seen.push_str(&line);
            line.clear();
        }
        let Some(url) = url else {
            panic!("airlift serve did not start: {seen}");
        };
        line.clear();
        stderr.read_line(&mut line).unwrap();
        let dashboard = line
            .strip_prefix("airlift: dashboard at ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| {
                panic!("airlift serve did not print the dashboard's address: {line}")
            })
            .to_owned();
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        Server {
            child,
            url,
            dashboard,
            data: data.to_owned(),
            instance,
            ca_cert: None,
        }
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data.join("admin.token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        let mut command = Command::new(AIRLIFT);
        command
            .args(args)
            .env("AIRLIFT_SERVER", &self.url)
            .env("AIRLIFT_TOKEN", self.admin_token());
        if let Some(ca) = &self.ca_cert {
            command.env("AIRLIFT_CA_CERT", ca);
        }
        command.output().unwrap()
    }

    pub fn cli_json(&self, args: &[&str]) -> Value {
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

    /// Uploads a release; returns its id.
    pub fn upload(&self, file: &Path) -> i64 {
        self.cli_json(&["release", "upload", file.to_str().unwrap()])["id"]
            .as_i64()
            .unwrap()
    }

    /// Deploys a release; returns the deployment id.
    pub fn deploy(&self, release: i64, to: &str) -> i64 {
        self.cli_json(&["deploy", &release.to_string(), "--to", to])["id"]
            .as_i64()
            .unwrap()
    }

    pub fn deployment(&self, id: i64) -> Value {
        self.cli_json(&["deployment", "show", &id.to_string()])
    }

    /// Waits until `count` devices of deployment `id` are in `state`.
    pub fn wait_for_state(&self, id: i64, state: &str, count: i64) -> Value {
        let last = std::cell::RefCell::new(Value::Null);
        wait_for(
            &format!("{count} device(s) {state} in deployment {id}"),
            || {
                let d = self.deployment(id);
                let ok = d["counts"][state].as_i64() == Some(count);
                *last.borrow_mut() = d;
                ok
            },
            || format!("{:#}", last.borrow()),
        );
        last.into_inner()
    }

    /// Adds a device with `tag`; returns its token.
    pub fn add_device(&self, name: &str, tag: &str) -> String {
        self.cli_json(&["device", "add", name, "--tag", tag])["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub fn signing_pub(&self) -> PathBuf {
        self.data.join("signing.pub")
    }
}

impl Server {
    /// SIGKILL: the server dies without a chance to clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A valid ESP32 app image of about `len` bytes whose content depends on `version`.
pub fn image(version: &str, len: usize) -> Vec<u8> {
    let seed = version
        .bytes()
        .fold(7u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(b)));
    let data: Vec<u8> = (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect();
    ImageBuilder::new(Chip::Esp32)
        .app("e2e", version)
        .segment(0x400D_0020, data)
        .build()
}

pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Runs `airlift ARGS` (no server), expecting success.
pub fn airlift(args: &[&str]) -> Output {
    let output = Command::new(AIRLIFT).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "airlift {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `airlift fleet firmware PATH --version VERSION [--size SIZE]`: the
/// simulator's synthetic app image.
pub fn fleet_firmware(path: &Path, version: &str, size: Option<usize>) {
    let size = size.map(|s| s.to_string());
    let mut args = vec![
        "fleet",
        "firmware",
        path.to_str().unwrap(),
        "--version",
        version,
    ];
    if let Some(size) = &size {
        args.extend(["--size", size]);
    }
    airlift(&args);
}

/// `airlift fleet sim` of `devices` devices tagged `fleet` (named `sim-N`),
/// running `firmware`, trusting `trust`, polling every second, against the
/// server at `server` (its stdout discarded, its log in `log`).
pub fn fleet_sim(
    server: &str,
    admin_token: &str,
    firmware: &Path,
    trust: &Path,
    devices: usize,
    extra: &[&str],
    log: File,
) -> Child {
    Command::new(AIRLIFT)
        .args([
            "fleet",
            "sim",
            "--devices",
            &devices.to_string(),
            "--tag",
            "fleet",
        ])
        .args(["--prefix", "sim", "--firmware"])
        .arg(firmware)
        .arg("--trust")
        .arg(trust)
        .args(["--poll", "1", "--health-check", "0.02", "--json"])
        .args(extra)
        .env("AIRLIFT_SERVER", server)
        .env("AIRLIFT_TOKEN", admin_token)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// `airlift flash create FLASH --firmware FW --trust KEY`.
pub fn create_flash(flash: &Path, firmware: &Path, trust: &Path) {
    create_flash_with(flash, firmware, trust, &[]);
}

/// The same with more options (`--tls-pin`, `--require-https`); they must succeed.
pub fn create_flash_with(flash: &Path, firmware: &Path, trust: &Path, extra: &[&str]) {
    let mut args = vec![
        "flash",
        "create",
        flash.to_str().unwrap(),
        "--firmware",
        firmware.to_str().unwrap(),
        "--trust",
        trust.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let output = airlift(&args);
    if !extra.is_empty() {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// `airlift flash inspect FLASH --json`.
pub fn inspect(flash: &Path) -> Value {
    let output = airlift(&["flash", "inspect", flash.to_str().unwrap(), "--json"]);
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The image in the slot the bootloader selects, as `flash inspect` sees it.
pub fn selected_image(report: &Value) -> Value {
    let selected = report["otadata"]["selected"].as_str().unwrap().to_owned();
    report["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["slot"] == selected.as_str())
        .cloned()
        .unwrap()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A running `airlift device run`.
pub struct Agent {
    pub child: Child,
    pub flash: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
    runs: u32,
}

impl Agent {
    /// Starts `airlift device run --flash FLASH ARGS`, logging to FLASH.log.
    pub fn start(flash: &Path, args: &[&str]) -> Agent {
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        let log = flash.with_extension("log");
        let child = Self::spawn(flash, &args, &log);
        Agent {
            child,
            flash: flash.to_owned(),
            log,
            args,
            runs: 1,
        }
    }

    fn spawn(flash: &Path, args: &[String], log: &Path) -> Child {
        let file = File::options().create(true).append(true).open(log).unwrap();
        Command::new(AIRLIFT)
            .args(["device", "run", "--flash"])
            .arg(flash)
            .args(args)
            .env_remove("AIRLIFT_SERVER")
            .env_remove("AIRLIFT_DEVICE_TOKEN")
            .env_remove("AIRLIFT_DEVICE_PASSWORD")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap()
    }

    /// For a device with a server: `--server URL --token T`, and [`Agent::quick`]'s.
    pub fn with_server(flash: &Path, url: &str, token: &str, extra: &[&str]) -> Agent {
        let mut args = vec!["--server", url, "--token", token];
        args.extend_from_slice(extra);
        Agent::quick(flash, &args)
    }

    /// `--poll 0.2`, a quick health check and watchdog, and `extra`.
    pub fn quick(flash: &Path, extra: &[&str]) -> Agent {
        let mut args = vec![
            "--poll",
            "0.2",
            "--health-check",
            "0.05",
            "--watchdog",
            "0.3",
        ];
        args.extend_from_slice(extra);
        Agent::start(flash, &args)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: a power cut.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the same command again: a reset after the power cut.
    pub fn restart(&mut self) {
        self.kill();
        self.child = Self::spawn(&self.flash, &self.args, &self.log);
        self.runs += 1;
    }

    /// The device page's address, from the log line `device page at http://ADDR`.
    pub fn page_url(&self) -> String {
        // Whole lines only: stderr is written piecewise, and a line read
        // half-written would give "http://" without its address.
        let find = || {
            let log = self.log_text();
            let whole = log.rfind('\n').map_or("", |end| &log[..end]);
            whole
                .lines()
                .filter_map(|l| l.split("device page at ").nth(1))
                .next_back()
                .map(|rest| rest.split_whitespace().next().unwrap().to_owned())
        };
        wait_for("the device page", || find().is_some(), || self.log_text());
        find().unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `done` every 50 ms until it holds; panics after [`DEADLINE`] with `context()`.
pub fn wait_for(what: &str, mut done: impl FnMut() -> bool, context: impl Fn() -> String) {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > DEADLINE {
            panic!("timed out waiting for {what}:\n{}", context());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Serves `files` (path -> bytes) over plain HTTP/1.1 on 127.0.0.1; returns the base URL.
pub fn static_server(files: Vec<(&'static str, Vec<u8>)>) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head);
            let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
            let found = files.iter().find(|(p, _)| *p == path);
            let (status, body) = match found {
                Some((_, b)) => ("200 OK", b.clone()),
                None => ("404 Not Found", b"not found".to_vec()),
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(&body);
        }
    });
    base
}

/// Every file below `dir`, recursively (none when it does not exist).
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

/// Signs `image` offline with `DIR/KEY.key` into `DIR/OUT`; returns its path.
pub fn sign(dir: &Path, image: &Path, key: &str, out: &str) -> PathBuf {
    let manifest = dir.join(out);
    airlift(&[
        "release",
        "sign",
        image.to_str().unwrap(),
        "--key",
        dir.join(format!("{key}.key")).to_str().unwrap(),
        "-o",
        manifest.to_str().unwrap(),
    ]);
    manifest
}

/// Every event kind an update reports, in order, up to the result.
pub const UPDATE_EVENTS: [&str; 6] = [
    "downloading",
    "verifying",
    "installed",
    "rebooting",
    "booted",
    "confirmed",
];

impl Server {
    /// The kinds of `device`'s events the server recorded, oldest first.
    pub fn event_kinds(&self, device: &str) -> Vec<String> {
        let events = self.cli_json(&["device", "events", device]);
        events
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .filter_map(|e| e["kind"].as_str().map(str::to_owned))
            .collect()
    }
}
