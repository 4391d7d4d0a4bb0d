//! End to end over HTTPS (issue 16): `airlift keys tls` makes a lab CA and
//! server certificate, `airlift serve --tls-cert --tls-key` serves them, the
//! CLI trusts the CA, and devices provisioned with a pin (of the CA, or of
//! the server's own certificate) and told to require HTTPS update through
//! it. A device that requires HTTPS refuses a plain server, and one pinned
//! to another certificate refuses this one, each saying why.
#![allow(clippy::unwrap_used)]

mod agent_common;

use std::path::Path;

use agent_common::*;
use serde_json::Value;

/// `airlift keys tls --dir DIR --json`.
fn lab_certificates(dir: &Path) -> Value {
    let output = airlift(&["keys", "tls", "--dir", dir.to_str().unwrap(), "--json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Waits for the device's first failed check-in; its log.
fn refused_check_in(agent: &Agent) -> String {
    wait_for(
        "the device to refuse the server",
        || agent.log_text().contains("check-in failed"),
        || agent.log_text(),
    );
    agent.log_text()
}

fn https_server(d: &Path, certs: &Value) -> Server {
    let (cert, key) = (
        certs["cert"].as_str().unwrap(),
        certs["key"].as_str().unwrap(),
    );
    let mut server = Server::start(
        &d.join("data"),
        &[("AIRLIFT_TLS_CERT", cert), ("AIRLIFT_TLS_KEY", key)],
    );
    assert!(server.url.starts_with("https://"), "{}", server.url);
    server.ca_cert = Some(certs["ca"].as_str().unwrap().into());
    server
}

#[test]
fn devices_pinned_to_the_lab_ca_or_the_server_certificate_update_over_https_issue_16() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let certs = lab_certificates(&d.join("tls"));
    let server = https_server(d, &certs);
    let v1 = write(d, "v1.bin", &image("1.0.0", 40_000));
    let mut agents = Vec::new();
    for (name, pin) in [("ca-pinned", "ca_sha256"), ("cert-pinned", "cert_sha256")] {
        let token = server.add_device(name, "secure");
        let flash = d.join(format!("{name}.flash"));
        let pin = certs[pin].as_str().unwrap();
        create_flash_with(
            &flash,
            &v1,
            &server.signing_pub(),
            &["--tls-pin", pin, "--require-https"],
        );
        agents.push(Agent::with_server(&flash, &server.url, &token, &[]));
    }
    let v2 = image("2.0.0", 50_000);
    let release = server.upload(&write(d, "v2.bin", &v2));
    let deployment = server.deploy(release, "tag:secure");
    let done = server.wait_for_state(deployment, "confirmed", 2);
    assert_eq!(done["state"], "finished", "{done:#}");
    for agent in &agents {
        assert_eq!(
            selected_image(&inspect(&agent.flash))["sha256"],
            sha256_hex(&v2)
        );
    }
}

#[test]
fn a_device_that_requires_https_refuses_a_plain_http_server_with_a_clear_error_issue_16() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = Server::start(&d.join("data"), &[]);
    assert!(server.url.starts_with("http://"));
    let token = server.add_device("strict", "lab");
    let v1 = write(d, "v1.bin", &image("1.0.0", 30_000));
    let flash = d.join("strict.flash");
    create_flash_with(&flash, &v1, &server.signing_pub(), &["--require-https"]);
    let agent = Agent::with_server(&flash, &server.url, &token, &[]);
    let log = refused_check_in(&agent);
    assert!(
        log.contains("refusing plain HTTP") && log.contains("requires HTTPS"),
        "{log}"
    );
    let device = server.cli_json(&["device", "show", "strict"]);
    assert_eq!(
        device["status"]["last_seen"],
        Value::Null,
        "never checked in: {device:#}"
    );
}

#[test]
fn a_device_pinned_to_another_certificate_refuses_the_server_issue_16() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let certs = lab_certificates(&d.join("tls"));
    let other = lab_certificates(&d.join("other"));
    let server = https_server(d, &certs);
    let token = server.add_device("wary", "lab");
    let v1 = write(d, "v1.bin", &image("1.0.0", 30_000));
    let flash = d.join("wary.flash");
    let pin = other["ca_sha256"].as_str().unwrap();
    create_flash_with(&flash, &v1, &server.signing_pub(), &["--tls-pin", pin]);
    let agent = Agent::with_server(&flash, &server.url, &token, &[]);
    let log = refused_check_in(&agent);
    assert!(log.contains("not the pinned one"), "{log}");
    let device = server.cli_json(&["device", "show", "wary"]);
    assert_eq!(device["status"]["last_seen"], Value::Null, "{device:#}");
}
