//! End to end: the device's local page and API (offline, and beside a server).
#![allow(clippy::unwrap_used)]

mod agent_common;

use std::path::Path;

use agent_common::*;
use reqwest::blocking::Client;
use serde_json::Value;

/// [`sign`]'s manifest, read.
fn signed(dir: &Path, image: &Path, key: &str, out: &str) -> Vec<u8> {
    std::fs::read(sign(dir, image, key, out)).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    airlift_format::manifest::base64_encode(bytes)
}

fn upload(
    http: &Client,
    url: &str,
    password: Option<&str>,
    image: &[u8],
    manifest: &[u8],
) -> (u16, Value) {
    let mut request = http
        .post(format!("{url}/api/upload"))
        .header("X-Airlift-CSRF", "1")
        .header("X-Airlift-Manifest", b64(manifest))
        .body(image.to_vec());
    if let Some(p) = password {
        request = request.basic_auth("admin", Some(p));
    }
    let response = request.send().unwrap();
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

#[test]
fn local_upload_needs_the_password_a_valid_image_and_a_trusted_signature() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for key in ["release", "stranger"] {
        airlift(&["keys", "generate", d.join(key).to_str().unwrap()]);
    }
    let v1 = write(d, "v1.bin", &image("1.0.0", 50_000));
    let v2_bytes = image("2.0.0", 60_000);
    let v2 = write(d, "v2.bin", &v2_bytes);
    let good = signed(d, &v2, "release", "v2.good");
    let foreign = signed(d, &v2, "stranger", "v2.foreign");
    let flash = d.join("zeta.flash");
    create_flash(&flash, &v1, &d.join("release.pub"));
    let agent = Agent::start(
        &flash,
        &[
            "--listen",
            "127.0.0.1:0",
            "--password",
            "s3cret",
            "--health-check",
            "0.05",
        ],
    );
    let url = agent.page_url();
    let http = Client::new();

    let status = |password: Option<&str>| {
        let mut r = http.get(format!("{url}/api/status"));
        if let Some(p) = password {
            r = r.basic_auth("x", Some(p));
        }
        r.send().unwrap()
    };
    assert_eq!(status(None).status().as_u16(), 401);
    assert_eq!(status(Some("wrong")).status().as_u16(), 401);
    let page = http
        .get(&url)
        .basic_auth("x", Some("s3cret"))
        .send()
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(
        page.text().unwrap().contains("/api/status"),
        "the page talks to the API"
    );

    let (code, body) = upload(&http, &url, None, &v2_bytes, &good);
    assert_eq!(code, 401, "{body}");
    let (code, _) = upload(&http, &url, Some("guess"), &v2_bytes, &good);
    assert_eq!(code, 401);

    let mut flipped = v2_bytes.clone();
    flipped[20_000] ^= 0x40;
    let (code, body) = upload(&http, &url, Some("s3cret"), &flipped, &good);
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (422, Some("verification")),
        "{body}"
    );

    let (code, body) = upload(&http, &url, Some("s3cret"), &v2_bytes, &foreign);
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (422, Some("signature")),
        "{body}"
    );

    let mut forged = good.clone();
    let last = forged.len() - 1;
    forged[last] ^= 0x01;
    let (code, body) = upload(&http, &url, Some("s3cret"), &v2_bytes, &forged);
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (422, Some("signature")),
        "{body}"
    );

    let report = inspect(&flash);
    assert_eq!(
        selected_image(&report)["version"],
        "1.0.0",
        "nothing activated yet"
    );

    let (code, body) = upload(&http, &url, Some("s3cret"), &v2_bytes, &good);
    assert_eq!(
        (code, &body["installed"]),
        (200, &Value::from("2.0.0")),
        "{body}"
    );
    let confirmed = || {
        let s: Value = status(Some("s3cret")).json().unwrap();
        s["running"]["version"] == "2.0.0" && s["running"]["confirmed"] == true
    };
    wait_for("2.0.0 to run confirmed", confirmed, || agent.log_text());
    let s: Value = status(Some("s3cret")).json().unwrap();
    let results: Vec<&str> = s["flash"]["notes"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["result"].as_str().unwrap())
        .collect();
    assert_eq!(
        results,
        ["failed", "failed", "failed", "confirmed"],
        "{s:#}"
    );
    assert_eq!(
        selected_image(&inspect(&flash))["sha256"],
        sha256_hex(&v2_bytes)
    );
}

/// An offline device in `d`: a signing key `release`, 1.0.0 provisioned
/// into `NAME.flash` trusting it, and `airlift device run` serving its page
/// with the password `pw` (quick health check, `extra` arguments after).
fn offline_device(d: &Path, name: &str, extra: &[&str]) -> Agent {
    airlift(&["keys", "generate", d.join("release").to_str().unwrap()]);
    let v1 = write(d, "v1.bin", &image("1.0.0", 30_000));
    let flash = d.join(format!("{name}.flash"));
    create_flash(&flash, &v1, &d.join("release.pub"));
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--password",
        "pw",
        "--health-check",
        "0.05",
    ];
    args.extend_from_slice(extra);
    Agent::start(&flash, &args)
}

/// The device's status, as its page reads it.
fn page_status(http: &Client, url: &str) -> Value {
    http.get(format!("{url}/api/status"))
        .basic_auth("x", Some("pw"))
        .send()
        .unwrap()
        .json()
        .unwrap()
}

/// Asks the device page (password `pw`) to pull `image` and
/// `/fw/v3.manifest` from `files`.
fn pull(http: &Client, url: &str, files: &str, image: &str) -> reqwest::blocking::Response {
    http.post(format!("{url}/api/pull"))
        .header("X-Airlift-CSRF", "1")
        .basic_auth("x", Some("pw"))
        .json(&serde_json::json!({"url": format!("{files}{image}"), "manifest_url": format!("{files}/fw/v3.manifest")}))
        .send()
        .unwrap()
}

/// Asks for a reboot on the device page and waits for boot `boots + 1`.
fn reboot(http: &Client, url: &str, agent: &Agent, boots: u64) {
    let answer = http
        .post(format!("{url}/api/reboot"))
        .header("X-Airlift-CSRF", "1")
        .basic_auth("x", Some("pw"))
        .send()
        .unwrap();
    assert_eq!(answer.status().as_u16(), 202);
    wait_for(
        "the reboot",
        || page_status(http, url)["boots"].as_u64() == Some(boots + 1),
        || agent.log_text(),
    );
}

#[test]
fn device_page_pulls_a_release_from_a_url_and_reboots_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let agent = offline_device(d, "eta", &[]);
    let v3_bytes = image("3.0.0", 40_000);
    let v3 = write(d, "v3.bin", &v3_bytes);
    let manifest = signed(d, &v3, "release", "v3.manifest");
    let files = static_server(vec![
        ("/fw/v3.bin", v3_bytes.clone()),
        ("/fw/v3.manifest", manifest),
    ]);
    let flash = agent.flash.clone();
    let url = agent.page_url();
    let http = Client::new();
    let status = || page_status(&http, &url);
    wait_for(
        "the first boot",
        || status()["boots"] == 1,
        || agent.log_text(),
    );

    let missing = pull(&http, &url, &files, "/fw/nope.bin");
    assert_eq!(missing.status().as_u16(), 422);
    let body: Value = missing.json().unwrap();
    assert_eq!(body["error"]["code"], "download", "{body}");
    // Another host's answer is not told (issue 16): only that it failed.
    assert_eq!(
        body["error"]["message"],
        format!("could not fetch {files}/fw/nope.bin"),
        "{body}"
    );

    let pulled = pull(&http, &url, &files, "/fw/v3.bin");
    assert_eq!(pulled.status().as_u16(), 200);
    wait_for(
        "3.0.0 to run confirmed",
        || {
            let s = status();
            s["running"]["version"] == "3.0.0" && s["running"]["confirmed"] == true
        },
        || agent.log_text(),
    );
    assert_eq!(
        selected_image(&inspect(&flash))["sha256"],
        sha256_hex(&v3_bytes)
    );
    let boots = status()["boots"].as_u64().unwrap();

    let refused = http.post(format!("{url}/api/reboot")).send().unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    reboot(&http, &url, &agent, boots);
    assert_eq!(
        status()["running"]["version"],
        "3.0.0",
        "still on 3.0.0 after the reboot"
    );
}

#[test]
fn a_reboot_asked_while_the_new_image_hangs_on_trial_resets_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The watchdog would take ten minutes: only the reboot can reset it.
    let agent = offline_device(d, "hang", &["--behave", "2.0.0=hang", "--watchdog", "600"]);
    let v2_bytes = image("2.0.0", 30_000);
    let v2 = write(d, "v2.bin", &v2_bytes);
    let manifest = signed(d, &v2, "release", "v2.manifest");
    let url = agent.page_url();
    let http = Client::new();
    let status = || page_status(&http, &url);
    wait_for(
        "1.0.0 to run confirmed",
        || status()["running"]["confirmed"] == true,
        || agent.log_text(),
    );
    let (code, body) = upload(&http, &url, Some("pw"), &v2_bytes, &manifest);
    assert_eq!(code, 200, "{body}");
    wait_for(
        "2.0.0 to hang on trial",
        || {
            let s = status();
            s["running"]["version"] == "2.0.0" && s["running"]["confirmed"] == false
        },
        || agent.log_text(),
    );
    let boots = status()["boots"].as_u64().unwrap();
    reboot(&http, &url, &agent, boots);
    let s = status();
    assert_eq!(s["running"]["version"], "2.0.0", "{s}");
    assert_eq!(s["running"]["attempt"], 2, "the second trial boot: {s}");
    assert!(
        agent
            .log_text()
            .contains("reboot requested from the device page"),
        "{}",
        agent.log_text()
    );
}

#[test]
fn a_local_upload_on_a_device_with_a_server_is_reported_to_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = Server::start(&d.join("data"), &[]);
    airlift(&["keys", "generate", d.join("release").to_str().unwrap()]);
    let v1 = write(d, "v1.bin", &image("1.0.0", 30_000));
    let v2_bytes = image("2.0.0", 30_000);
    let v2 = write(d, "v2.bin", &v2_bytes);
    let manifest = signed(d, &v2, "release", "v2.manifest");
    let flash = d.join("bench.flash");
    create_flash(&flash, &v1, &d.join("release.pub"));
    let token = server.add_device("bench", "lab");
    let agent = Agent::with_server(
        &flash,
        &server.url,
        &token,
        &["--listen", "127.0.0.1:0", "--password", "pw"],
    );
    let url = agent.page_url();
    let http = Client::new();
    let (code, body) = upload(&http, &url, Some("pw"), &v2_bytes, &manifest);
    assert_eq!(code, 200, "{body}");
    let kinds = || server.event_kinds("bench");
    wait_for(
        "the server to hear the local update confirmed",
        || kinds().iter().any(|k| k == "confirmed"),
        || format!("{:?}\n{}", kinds(), agent.log_text()),
    );
    for kind in UPDATE_EVENTS {
        assert!(
            kinds().iter().any(|k| k == kind),
            "no {kind} in {:?}",
            kinds()
        );
    }
    let devices = server.cli_json(&["device", "show", "bench"]);
    assert_eq!(devices["status"]["version"], "2.0.0", "{devices:#}");
}

/// The resident memory of process `pid` in bytes (Linux).
fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

#[test]
fn a_pull_streams_no_more_than_the_signed_size_issue_16() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let agent = offline_device(d, "pull", &[]);
    let v3_bytes = image("3.0.0", 40_000);
    let v3 = write(d, "v3.bin", &v3_bytes);
    let manifest = signed(d, &v3, "release", "v3.manifest");
    // The image followed by 64 MB more: a device that buffered what the
    // URL serves would hold all of it.
    let mut padded = v3_bytes.clone();
    padded.resize(v3_bytes.len() + 64 * 1024 * 1024, 0x5a);
    let files = static_server(vec![("/fw/v3.bin", padded), ("/fw/v3.manifest", manifest)]);
    let url = agent.page_url();
    let http = Client::new();
    wait_for(
        "the first boot",
        || page_status(&http, &url)["boots"] == 1,
        || agent.log_text(),
    );
    let before = rss_of(agent.child.id());
    let pulled = pull(&http, &url, &files, "/fw/v3.bin");
    let grown = rss_of(agent.child.id()).saturating_sub(before);
    assert_eq!(pulled.status().as_u16(), 200, "{}", agent.log_text());
    eprintln!(
        "a pull of a 40 KB image served with 64 MB after it: the device grew by {} KiB",
        grown / 1024
    );
    assert!(grown < 32 * 1024 * 1024, "the device grew by {grown} bytes");
    assert_eq!(
        selected_image(&inspect(&agent.flash))["sha256"],
        sha256_hex(&v3_bytes)
    );
}
