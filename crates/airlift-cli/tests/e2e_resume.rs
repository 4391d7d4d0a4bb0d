//! End to end: power cuts (SIGKILL of the agent) at many moments of an
//! update, and a connection dropped mid-download, never leave a device
//! without a complete image, and the update still finishes.
#![allow(clippy::unwrap_used)]

mod agent_common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_common::*;

/// Waits until one of `patterns` occurs in the agent's log more often than
/// in `before` (the log accumulates over restarts).
fn wait_for_any(agent: &mut Agent, before: &str, patterns: &[&str]) {
    let count = |text: &str| {
        patterns
            .iter()
            .map(|p| text.matches(p).count())
            .sum::<usize>()
    };
    let already = count(before);
    let log = agent.log.clone();
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let child = &mut agent.child;
    wait_for(
        &format!("one of {patterns:?}"),
        || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the agent exited ({status}): {}", read());
            }
            count(&read()) > already
        },
        read,
    );
}

#[test]
fn sigkill_at_many_points_always_comes_back_on_a_complete_image_and_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    // About 2 MB/s, so that kills land inside the download.
    let upstream = server.url.trim_start_matches("http://").to_owned();
    let (proxy_url, requests) = proxy(upstream, usize::MAX, Some(Duration::from_millis(2)));
    let v1 = image("1.0.0", 150_000);
    let v2 = image("2.0.0", 400_000);
    let (sha1, sha2) = (sha256_hex(&v1), sha256_hex(&v2));
    let token = server.add_device("delta", "lab");
    let flash = dir.path().join("delta.flash");
    create_flash(
        &flash,
        &write(dir.path(), "v1.bin", &v1),
        &server.signing_pub(),
    );
    let release = server.upload(&write(dir.path(), "v2.bin", &v2));
    let deployment = server.deploy(release, "tag:lab");
    // Every kill during the first boot of 2.0.0 is a failed boot attempt:
    // allow enough attempts that the kills themselves cannot roll it back.
    // The health check is long enough to be killed in.
    let mut agent = Agent::start(
        &flash,
        &[
            "--server",
            &proxy_url,
            "--token",
            &token,
            "--poll",
            "0.2",
            "--max-attempts",
            "20",
            "--health-check",
            "1",
        ],
    );
    let progress = [
        "event downloading",
        "event verifying",
        "event installed",
        "on trial",
        "event confirmed",
    ];
    // (what to wait for, then how long before the kill)
    let mut rounds: Vec<(&[&str], u64)> = Vec::new();
    for delay in [0, 30, 60, 90, 120, 150, 180, 210] {
        rounds.push((&progress[..], delay));
    }
    rounds.push((&progress[2..], 0));
    for delay in [0, 50, 100] {
        rounds.push((&progress[3..], delay));
    }
    let mut seen = std::collections::BTreeSet::new();
    // What the log held before the agent (re)started: a line it writes
    // at once after a restart is new to the round, even when this thread
    // reads the log only after it (a loaded machine).
    let mut before = agent.log_text();
    for (round, (patterns, delay)) in rounds.into_iter().enumerate() {
        wait_for_any(&mut agent, &before, patterns);
        std::thread::sleep(Duration::from_millis(delay));
        agent.kill();
        let report = inspect(&flash);
        let selected = selected_image(&report);
        assert_eq!(selected["valid"], true, "round {round}: {report:#}");
        let sha = selected["sha256"].as_str().unwrap().to_owned();
        assert!(
            sha == sha1 || sha == sha2,
            "round {round}: selected slot holds neither image: {report:#}"
        );
        let phase = match (
            sha == sha2,
            report["engine"]["install"].is_null(),
            report["engine"]["trial_slot"].is_null(),
        ) {
            (false, false, _) => "old image, partial install",
            (false, true, _) => "old image",
            (true, _, false) => "new image on trial",
            (true, _, true) => "new image confirmed",
        };
        seen.insert(phase);
        before = agent.log_text();
        agent.restart();
    }
    println!("kills landed in: {seen:?}");
    let done = server.wait_for_state(deployment, "confirmed", 1);
    assert_eq!(done["state"], "finished");
    wait_for(
        "the device to run 2.0.0 confirmed",
        || {
            let r = inspect(&flash);
            selected_image(&r)["sha256"] == sha2.as_str() && r["engine"]["trial_slot"].is_null()
        },
        || agent.log_text(),
    );
    assert!(
        seen.contains("old image, partial install") && seen.contains("new image on trial"),
        "kills landed only in {seen:?}"
    );
    // After a power cut in the download the agent resumed from the engine's
    // last install checkpoint (a whole number of sectors), not from zero.
    let resumed: Vec<u64> = requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.request_line.starts_with("GET /api/v1/device/artifacts/"))
        .filter_map(|r| {
            r.range
                .as_deref()?
                .strip_prefix("bytes=")?
                .strip_suffix('-')?
                .parse()
                .ok()
        })
        .collect();
    assert!(!resumed.is_empty(), "no download resumed with Range");
    assert!(
        resumed.iter().all(|&at| at > 0 && at % 4096 == 0),
        "{resumed:?}"
    );
}

#[derive(Debug, Clone)]
struct Seen {
    request_line: String,
    range: Option<String>,
    forwarded: usize,
}

/// A proxy in front of the server that asks for `Connection: close`, records
/// each request's `Range` header, and cuts the first artifact response
/// after `cut_after` bytes; `throttle` pauses after every 4 KiB.
fn proxy(
    upstream: String,
    cut_after: usize,
    throttle: Option<Duration>,
) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let cut_done = Arc::new(AtomicBool::new(false));
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let (upstream, log, cut_done) = (upstream.clone(), log.clone(), cut_done.clone());
            std::thread::spawn(move || {
                relay(client, &upstream, &log, &cut_done, cut_after, throttle)
            });
        }
    });
    (url, seen)
}

fn relay(
    mut client: TcpStream,
    upstream: &str,
    log: &Mutex<Vec<Seen>>,
    cut_done: &AtomicBool,
    cut_after: usize,
    throttle: Option<Duration>,
) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte).unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or("").to_owned();
    let mut out = format!("{request_line}\r\n");
    let mut range = None;
    let mut length = 0usize;
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        match name.to_ascii_lowercase().as_str() {
            "connection" => continue,
            "range" => range = Some(value.trim().to_owned()),
            "content-length" => length = value.trim().parse().unwrap_or(0),
            _ => {}
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut body = vec![0u8; length];
    if client.read_exact(&mut body).is_err() {
        return;
    }
    let Ok(mut server) = TcpStream::connect(upstream) else {
        return;
    };
    server.write_all(out.as_bytes()).unwrap();
    server.write_all(&body).unwrap();
    let artifact = request_line.starts_with("GET /api/v1/device/artifacts/");
    let limit = if artifact && !cut_done.swap(true, Ordering::SeqCst) {
        cut_after
    } else {
        usize::MAX
    };
    let mut forwarded = 0usize;
    let mut buf = vec![0u8; if throttle.is_some() { 4096 } else { 8192 }];
    while forwarded < limit {
        let n = match server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n.min(limit - forwarded),
        };
        if client.write_all(&buf[..n]).is_err() {
            break;
        }
        forwarded += n;
        if let Some(pause) = throttle {
            std::thread::sleep(pause);
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    log.lock().unwrap().push(Seen {
        request_line,
        range,
        forwarded,
    });
}

#[test]
fn dropped_connection_mid_download_resumes_with_range_instead_of_starting_over() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let upstream = server.url.trim_start_matches("http://").to_owned();
    let (proxy_url, seen) = proxy(upstream, 50_000, None);
    let v1 = image("1.0.0", 60_000);
    let v2 = image("2.0.0", 200_000);
    let token = server.add_device("epsilon", "lab");
    let flash = dir.path().join("epsilon.flash");
    create_flash(
        &flash,
        &write(dir.path(), "v1.bin", &v1),
        &server.signing_pub(),
    );
    let release = server.upload(&write(dir.path(), "v2.bin", &v2));
    let deployment = server.deploy(release, "tag:lab");
    let agent = Agent::with_server(&flash, &proxy_url, &token, &[]);

    server.wait_for_state(deployment, "confirmed", 1);
    let downloads: Vec<Seen> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.request_line.starts_with("GET /api/v1/device/artifacts/"))
        .cloned()
        .collect();
    assert!(downloads.len() >= 2, "{downloads:#?}\n{}", agent.log_text());
    assert_eq!(
        downloads[0].range, None,
        "the first request asks for everything"
    );
    assert!(downloads[0].forwarded <= 50_000, "{downloads:#?}");
    let start: usize = downloads[1]
        .range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("second request has no Range: {downloads:#?}"));
    assert!(
        start > 0 && start < 50_000,
        "resumed at {start}: {downloads:#?}"
    );
    let total: usize = downloads.iter().map(|d| d.forwarded).sum();
    assert!(
        total < v2.len() + 50_000,
        "{total} bytes moved for a {} byte image: started over? {downloads:#?}",
        v2.len()
    );
    let report = inspect(&flash);
    assert_eq!(selected_image(&report)["sha256"], sha256_hex(&v2));
    // `downloading` went out with the install's result, after the dropped
    // connection and the retry's wait, yet is stored at the time the
    // download started.
    let events = server.cli_json(&["device", "events", "epsilon"]);
    let at = |kind: &str| {
        events
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == kind)
            .and_then(|e| e["at"].as_i64())
            .unwrap_or_else(|| panic!("no {kind} event in {events:#}"))
    };
    let took = at("installed") - at("downloading");
    assert!(
        took >= 400,
        "download took {took} ms by the events: {events:#}"
    );
}
