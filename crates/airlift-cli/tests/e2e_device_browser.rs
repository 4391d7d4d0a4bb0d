//! End to end in a real browser: the device page (`web/device/index.html`)
//! served by `airlift device run --listen` on an offline device, driven in
//! Debian's headless Chromium by `web/tests/device_page.mjs` (playwright-core)
//! the way a user drives it: typing the password, picking files, clicking.
//! Each test here starts its own device and runs one scenario of that script;
//! the script checks what the page shows, this file checks the flash.
//!
//! Needs node, /usr/bin/chromium and web/tests/node_modules (see
//! `agent_common::browser`).
#![allow(clippy::unwrap_used)]

mod agent_common;

use std::path::{Path, PathBuf};

use agent_common::browser::{require_browser_tools, run_script};
use agent_common::*;
use serde_json::{Value, json};

/// A device with 1.0.0 running offline, and the files a user would upload.
struct Bench {
    _dir: tempfile::TempDir,
    flash: PathBuf,
    agent: Agent,
    config: Value,
}

/// Generates the key pair `name`; returns the key id `airlift keys generate` printed.
fn generate_key(dir: &Path, name: &str) -> String {
    let output = airlift(&["keys", "generate", dir.join(name).to_str().unwrap()]);
    let text = String::from_utf8_lossy(&output.stdout);
    text.strip_prefix("key id ")
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_else(|| panic!("no key id in {text:?}"))
        .to_owned()
}

impl Bench {
    /// `extra` goes to `airlift device run` after the listen and password options.
    fn start(extra: &[&str]) -> Bench {
        require_browser_tools();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let key_id = generate_key(d, "release");
        generate_key(d, "stranger");
        let v1_bytes = image("1.0.0", 40_000);
        let v1 = write(d, "v1.bin", &v1_bytes);
        let v2_bytes = image("2.0.0", 50_000);
        let v2 = write(d, "v2.bin", &v2_bytes);
        let good_manifest = sign(d, &v2, "release", "v2.manifest");
        let stranger_manifest = sign(d, &v2, "stranger", "v2.stranger.manifest");
        let mut forged = std::fs::read(&good_manifest).unwrap();
        let last = forged.len() - 1;
        forged[last] ^= 0x01;
        let forged_manifest = write(d, "v2.forged.manifest", &forged);
        let truncated = write(d, "v2.truncated.bin", &v2_bytes[..v2_bytes.len() / 2]);
        let foreign_bytes: Vec<u8> = b"PK\x03\x04 not firmware at all "
            .iter()
            .copied()
            .cycle()
            .take(v2_bytes.len())
            .collect();
        let foreign = write(d, "holiday-photos.bin", &foreign_bytes);
        let other_image = write(d, "v3.bin", &image("3.0.0", 50_000));
        assert_eq!(
            std::fs::metadata(&other_image).unwrap().len(),
            v2_bytes.len() as u64
        );

        let flash = d.join("kitchen.flash");
        create_flash(&flash, &v1, &d.join("release.pub"));
        let mut args = vec!["--listen", "127.0.0.1:0", "--password", "pa55 word"];
        args.extend_from_slice(extra);
        let agent = Agent::start(&flash, &args);
        let path = |p: &Path| p.to_str().unwrap().to_owned();
        let config = json!({
            "url": agent.page_url(),
            "password": "pa55 word",
            "name": "kitchen",
            "old": "1.0.0",
            "old_sha256": sha256_hex(&v1_bytes),
            "new": "2.0.0",
            "new_sha256": sha256_hex(&v2_bytes),
            "key_id": key_id,
            "files": {
                "good": path(&v2),
                "good_manifest": path(&good_manifest),
                "stranger_manifest": path(&stranger_manifest),
                "forged_manifest": path(&forged_manifest),
                "truncated": path(&truncated),
                "foreign": path(&foreign),
                "other_image": path(&other_image),
            },
        });
        Bench {
            _dir: dir,
            flash,
            agent,
            config,
        }
    }

    /// Runs `node web/tests/device_page.mjs SCENARIO`; panics with the
    /// script's report (what the page showed, its console) and the agent's log.
    fn browse(&self, scenario: &str) {
        run_script("device_page.mjs", scenario, &self.config, DEADLINE, || {
            format!("--- agent log ---\n{}", self.agent.log_text())
        });
    }

    /// Serves the good image and manifest over HTTP as `/fw/v2.bin` and
    /// `/fw/v2.manifest`, for the page's pull form.
    fn serve_files(&mut self) {
        let files = &self.config["files"];
        let read = |key: &str| std::fs::read(files[key].as_str().unwrap()).unwrap();
        let url = static_server(vec![
            ("/fw/v2.bin", read("good")),
            ("/fw/v2.manifest", read("good_manifest")),
        ]);
        self.config["files_url"] = Value::from(url);
    }

    fn selected(&self) -> Value {
        selected_image(&inspect(&self.flash))
    }
}

#[test]
fn device_page_shows_nothing_until_the_password_is_typed_then_the_whole_status() {
    let bench = Bench::start(&[]);
    bench.browse("password");
}

#[test]
fn device_page_refuses_truncated_foreign_and_wrongly_signed_uploads_and_installs_nothing() {
    let bench = Bench::start(&[]);
    bench.browse("refusals");
    let selected = bench.selected();
    assert_eq!(
        (&selected["slot"], &selected["version"]),
        (&Value::from("ota_0"), &Value::from("1.0.0")),
        "{selected:#}"
    );
}

#[test]
fn device_page_installs_a_signed_upload_and_shows_it_confirmed_after_the_reboot() {
    let bench = Bench::start(&["--health-check", "0.3"]);
    bench.browse("install");
    assert_eq!(
        bench.selected()["sha256"],
        bench.config["new_sha256"],
        "the flash boots the uploaded image"
    );
}

#[test]
fn device_page_reboot_button_resets_the_device() {
    let bench = Bench::start(&[]);
    bench.browse("reboot");
}

#[test]
fn device_page_shows_an_image_that_never_confirms_on_trial_then_rolled_back() {
    // 2.0.0 hangs without confirming: the watchdog resets it until the boot guard rolls back.
    let bench = Bench::start(&["--behave", "2.0.0=hang", "--watchdog", "2.5"]);
    bench.browse("rollback");
    let selected = bench.selected();
    assert_eq!(selected["version"], "1.0.0", "{selected:#}");
}

#[test]
fn device_page_pulls_a_release_from_a_url_and_refuses_a_missing_one() {
    let mut bench = Bench::start(&["--health-check", "0.3"]);
    bench.serve_files();
    bench.browse("pull");
    assert_eq!(bench.selected()["sha256"], bench.config["new_sha256"]);
}
