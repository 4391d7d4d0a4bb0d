//! End to end (issue 10): a refused or hostile install on a device must
//! never block a later good update of the same release. Real ESP-IDF images,
//! the real `airlift serve` and `airlift device run`.
#![allow(clippy::unwrap_used)]

mod agent_common;

use std::path::{Path, PathBuf};

use agent_common::*;
use airlift_engine::sim::SimFlash;
use airlift_engine::{Config, Device};
use reqwest::blocking::Client;
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/esp-idf-apps")
        .join(name)
}

/// A server holding v2.bin as release 2.0.0 signed offline with `release.key`
/// (so the test holds the very manifest the server sends), and a device
/// "kitchen" provisioned with v1.bin that trusts that key.
struct Setup {
    _dir: tempfile::TempDir,
    server: Server,
    token: String,
    flash: PathBuf,
    manifest: Vec<u8>,
    release: i64,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = Server::start(&d.join("data"), &[]);
    airlift(&["keys", "generate", d.join("release").to_str().unwrap()]);
    let manifest_path = d.join("v2.manifest");
    airlift(&[
        "release",
        "sign",
        fixture("v2.bin").to_str().unwrap(),
        "--key",
        d.join("release.key").to_str().unwrap(),
        "--version",
        "2.0.0",
        "-o",
        manifest_path.to_str().unwrap(),
    ]);
    let upload = server.cli_json(&[
        "release",
        "upload",
        fixture("v2.bin").to_str().unwrap(),
        "--manifest",
        manifest_path.to_str().unwrap(),
    ]);
    let flash = d.join("kitchen.flash");
    create_flash(&flash, &fixture("v1.bin"), &d.join("release.pub"));
    let token = server.add_device("kitchen", "lab");
    Setup {
        manifest: std::fs::read(&manifest_path).unwrap(),
        release: upload["id"].as_i64().unwrap(),
        _dir: dir,
        server,
        token,
        flash,
    }
}

fn install_progress(flash: &Path) -> Value {
    inspect(flash)["engine"]["install"].clone()
}

/// Deploys the release to kitchen and waits for it to confirm v2.bin.
fn deploy_and_confirm(s: &Setup, agent: &Agent) {
    let id = s.server.deploy(s.release, "device:kitchen");
    wait_for(
        "kitchen to confirm 2.0.0",
        || s.server.deployment(id)["counts"]["confirmed"].as_i64() == Some(1),
        || format!("{:#}\n{}", s.server.deployment(id), agent.log_text()),
    );
    let v2 = std::fs::read(fixture("v2.bin")).unwrap();
    assert_eq!(
        selected_image(&inspect(&s.flash))["sha256"],
        sha256_hex(&v2)
    );
}

#[test]
fn issue_10_a_refused_upload_does_not_block_the_servers_deployment_of_that_release() {
    let s = setup();
    let mut agent = Agent::with_server(
        &s.flash,
        &s.server.url,
        &s.token,
        &["--listen", "127.0.0.1:0", "--password", "pw"],
    );
    let url = agent.page_url();
    // On the device page: hello_world_new.bin with the release's manifest of v2.bin.
    let foreign = std::fs::read(fixture("hello_world_new.bin")).unwrap();
    let answer = Client::new()
        .post(format!("{url}/api/upload"))
        .header("X-Airlift-CSRF", "1")
        .basic_auth("admin", Some("pw"))
        .header(
            "X-Airlift-Manifest",
            airlift_format::manifest::base64_encode(&s.manifest),
        )
        .body(foreign)
        .send()
        .unwrap();
    assert_eq!(answer.status().as_u16(), 422);
    let body: Value = answer.json().unwrap();
    assert_eq!(
        body["error"]["message"],
        "image truncated: received 155136 bytes, the manifest announced 686096",
        "{body}"
    );
    assert_eq!(install_progress(&s.flash), Value::Null, "nothing to resume");
    // A power cycle, then the server's deployment of the same release.
    agent.restart();
    deploy_and_confirm(&s, &agent);
    let log = agent.log_text();
    assert!(!log.contains("resuming at byte"), "{log}");
}

#[test]
fn issue_10_a_device_that_lost_power_in_a_foreign_upload_still_takes_the_release() {
    let s = setup();
    // Power went while hello_world_new.bin was written under v2's manifest:
    // the engine cannot know the bytes are foreign yet, and checkpointed.
    let foreign = std::fs::read(fixture("hello_world_new.bin")).unwrap();
    let mut flash = SimFlash::from_bytes(std::fs::read(&s.flash).unwrap());
    {
        let mut dev = Device::open(&mut flash, Config::default()).unwrap();
        let mut install = dev.begin(&s.manifest).unwrap();
        install.write(&foreign[..140_000]).unwrap();
    }
    std::fs::write(&s.flash, flash.bytes()).unwrap();
    assert_eq!(install_progress(&s.flash)["offset"], 131_072);
    let agent = Agent::with_server(&s.flash, &s.server.url, &s.token, &[]);
    deploy_and_confirm(&s, &agent);
    // It resumed onto the foreign bytes, was told so, and began again at 0.
    let log = agent.log_text();
    assert!(
        log.contains("did not verify after resuming at byte 131072"),
        "{log}"
    );
    let kinds = s.server.event_kinds("kitchen");
    assert!(!kinds.iter().any(|k| k == "failed"), "{kinds:?}");
}
