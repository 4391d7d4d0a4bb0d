//! Issue 16, the server's side: each weakness found by trying the server as
//! an attacker would has a test here that reproduces it and now passes.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Running, TestServer, error_code, sha256_hex};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous bound on what must happen by itself, so a broken server fails
/// the test instead of hanging it (never a measured duration).
const FAILSAFE: Duration = Duration::from_secs(60);

/// Reads until the server closes the connection; what it sent.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(FAILSAFE, stream.read_to_end(&mut out))
        .await
        .expect("the server should close the connection")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

fn host(server: &TestServer) -> String {
    server.url.trim_start_matches("http://").to_owned()
}

#[tokio::test]
async fn wrong_admin_tokens_are_throttled_with_retry_after_and_a_metric_issue_16() {
    let server = TestServer::start_with(|c| c.auth_failures_burst = 5).await;
    let mut statuses = Vec::new();
    for i in 0..1000 {
        let response = server
            .client
            .get(format!("{}/api/v1/releases", server.url))
            .bearer_auth(format!("al_admin_guess{i}"))
            .send()
            .await
            .unwrap();
        statuses.push(response.status());
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(response.headers().contains_key("retry-after"));
            let body: Value = response.json().await.unwrap();
            assert_eq!(error_code(&body), "throttled");
            break;
        }
    }
    assert_eq!(
        statuses,
        [
            [StatusCode::UNAUTHORIZED; 5].as_slice(),
            &[StatusCode::TOO_MANY_REQUESTS]
        ]
        .concat(),
        "five guesses, then refused"
    );
    // Refused before the token is looked at: the right one too, from this client.
    let right = server.admin(Method::GET, "/api/v1/releases", None).await;
    assert_eq!(right.status(), StatusCode::TOO_MANY_REQUESTS);
    // Another client (another loopback address) is not.
    let other = reqwest::Client::builder()
        .local_address(Some("127.0.0.2".parse().unwrap()))
        .build()
        .unwrap();
    let response = other
        .get(format!("{}/api/v1/releases", server.url))
        .bearer_auth(&server.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let throttled = server
        .metric("airlift_auth_throttled_total{credential=\"admin_token\"}")
        .await;
    assert!(throttled >= 2, "{throttled}");
}

#[tokio::test]
async fn enrolment_secrets_device_tokens_and_sign_in_are_throttled_too_issue_16() {
    let server = TestServer::start_with(|c| c.auth_failures_burst = 3).await;
    let url = &server.url;
    // Each from its own loopback address, so the throttles do not mix.
    let from = |last: u8| {
        reqwest::Client::builder()
            .local_address(Some(std::net::IpAddr::from([127, 0, 1, last])))
            .build()
            .unwrap()
    };
    let enrol = from(1);
    let mut last = StatusCode::OK;
    for i in 0..4 {
        last = enrol
            .post(format!("{url}/api/v1/device/enroll"))
            .json(&json!({"secret": format!("al_enr_{i}"), "name": format!("d{i}"), "tags": []}))
            .send()
            .await
            .unwrap()
            .status();
    }
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS, "enrolment secrets");

    let device = from(2);
    for _ in 0..4 {
        last = device
            .post(format!("{url}/api/v1/device/checkin"))
            .bearer_auth("al_dev_guess")
            .json(&Running::factory().checkin())
            .send()
            .await
            .unwrap()
            .status();
    }
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS, "device tokens");
    // The zero-copy download path refuses the throttled client as well.
    let download = device
        .get(format!("{url}/api/v1/device/artifacts/{}", "ab".repeat(32)))
        .bearer_auth("al_dev_guess")
        .send()
        .await
        .unwrap();
    assert_eq!(download.status(), StatusCode::TOO_MANY_REQUESTS);

    let dashboard = from(3);
    for _ in 0..4 {
        last = dashboard
            .post(format!("{url}/api/v1/session"))
            .header("x-airlift-csrf", "1")
            .json(&json!({"token": "al_admin_guess"}))
            .send()
            .await
            .unwrap()
            .status();
    }
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS, "dashboard sign-in");
    for credential in ["enrollment_secret", "device_token", "session"] {
        let line = format!("airlift_auth_throttled_total{{credential=\"{credential}\"}}");
        assert!(server.metric(&line).await >= 1, "{credential}");
    }
}

#[tokio::test]
async fn a_50_mb_json_body_is_refused_with_413_issue_16() {
    let server = TestServer::start().await;
    let token = server.device("big", &[]).await;
    let body = vec![b' '; 50 * 1024 * 1024];
    let response = server
        .client
        .post(format!("{}/api/v1/device/checkin", server.url))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), "too_large", "{body}");
}

#[tokio::test]
async fn a_check_in_with_a_malformed_digest_or_control_characters_is_not_stored_issue_16() {
    let server = TestServer::start().await;
    let token = server.device("liar", &[]).await;
    for running in [
        json!({"project": "demo", "version": "1", "sha256": "z".repeat(64), "security_version": 0, "slot": 0}),
        json!({"project": "demo", "version": "1\u{1b}[2J", "sha256": "ab".repeat(32), "security_version": 0, "slot": 0}),
        json!({"project": "demo", "version": "1", "sha256": "ab".repeat(32), "security_version": 0, "slot": 99}),
    ] {
        let response = server
            .as_device(
                &token,
                Method::POST,
                "/api/v1/device/checkin",
                Some(json!({"chip_id": 5, "running": running, "state": "idle", "boot_count": 0})),
            )
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{running}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(error_code(&body), "invalid_report", "{body}");
    }
    server.state.flush_statuses().await.unwrap();
    let device = server
        .admin_json(Method::GET, "/api/v1/devices/liar", None, StatusCode::OK)
        .await;
    assert_eq!(device["status"]["sha256"], Value::Null, "{device}");
    let event = server
        .event(&token, json!({"kind": "booted", "detail": "line\nbreak"}))
        .await;
    assert_eq!(event.status(), StatusCode::BAD_REQUEST);
}

/// Sends a request head one byte at a time, paced, until the server closes
/// the connection; true when it closed before the head was complete.
async fn trickle(server: &TestServer, head: &str) -> bool {
    let mut stream = TcpStream::connect(host(server)).await.unwrap();
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    let run = async {
        for byte in head.bytes() {
            pace.tick().await;
            if stream.write_all(&[byte]).await.is_err() {
                return true;
            }
            // A closed connection shows as a read of 0 bytes.
            let mut probe = [0u8; 256];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(1), stream.read(&mut probe)).await
            {
                return n == 0 || String::from_utf8_lossy(&probe[..n]).contains("408");
            }
        }
        false
    };
    tokio::time::timeout(FAILSAFE, run).await.unwrap_or(false)
}

#[tokio::test]
async fn a_request_head_sent_one_byte_at_a_time_is_cut_off_at_the_header_deadline_issue_16() {
    let server = TestServer::start_with(|c| c.header_timeout_ms = 300).await;
    // Long enough that trickling it takes many header deadlines.
    let padding = "x".repeat(4000);
    for path in ["/api/v1/device/artifacts/aa", "/api/v1/device/checkin"] {
        let head = format!("GET {path} HTTP/1.1\r\nHost: h\r\nX-Pad: {padding}\r\n\r\n");
        assert!(
            trickle(&server, &head).await,
            "{path}: the slow head was not cut off"
        );
    }
    assert!(server.metric("airlift_header_timeouts_total").await >= 2);
    // A client that sends its head at once is answered as usual.
    let ok = server
        .client
        .get(format!("{}/healthz", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
}

#[tokio::test]
async fn past_the_connection_limit_a_client_gets_a_clear_503_issue_16() {
    let server = TestServer::start_with(|c| c.max_connections = 4).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        // Each answered once, then kept alive: all four are open on the server.
        let mut stream = TcpStream::connect(host(&server)).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(stream);
    }
    let mut extra = TcpStream::connect(host(&server)).await.unwrap();
    let answer = read_to_close(&mut extra).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    assert!(answer.contains("\"code\":\"busy\""), "{answer}");
    drop(held);
}

/// The process's resident memory in bytes (Linux).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test]
async fn http_1_0_downloads_stream_the_artifact_instead_of_holding_it_in_ram_issue_16() {
    let server = TestServer::start_with(|c| {
        c.artifact_cache_bytes = 0;
        c.max_upload_bytes = 64 * 1024 * 1024;
    })
    .await;
    let big = {
        let data: Vec<u8> = (0..12 * 1024 * 1024u32)
            .map(|i| ((i * 7) >> 3) as u8)
            .collect();
        airlift_format::image::ImageBuilder::new(airlift_format::image::Chip::Esp32c3)
            .app("demo", "9.9.9")
            .segment(0x4200_0020, data)
            .build()
    };
    let release = server.release(&big).await;
    let token = server.device("old-client", &[]).await;
    server.deploy(&release, "device:old-client").await;
    let sha = sha256_hex(&big);
    let before = rss_bytes();
    // Four HTTP/1.0 clients that read the head and a little, then stall.
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(host(&server)).await.unwrap();
        let head = format!(
            "GET /api/v1/device/artifacts/{sha} HTTP/1.0\r\nAuthorization: Bearer {token}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n.min(64)]).starts_with("HTTP/1.0 200"));
        stalled.push(stream);
    }
    let grown = rss_bytes().saturating_sub(before);
    eprintln!(
        "4 stalled HTTP/1.0 downloads of {} bytes: resident memory grew by {} KiB",
        big.len(),
        grown / 1024
    );
    assert!(
        grown < big.len() as u64,
        "the server holds the artifact in RAM: +{grown} bytes for 4 downloads of {}",
        big.len()
    );
    drop(stalled);
}

/// Raises this process's open-file limit to its hard limit (the test holds
/// both ends of its connections); the limit now in force.
fn raise_descriptor_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_slow_connections_do_not_keep_check_ins_from_being_answered_issue_16() {
    const SLOW: usize = 1000;
    let limit = raise_descriptor_limit();
    assert!(
        limit > 2 * SLOW as u64 + 256,
        "the test needs {} descriptors, the hard limit is {limit}",
        2 * SLOW + 256
    );
    // A head deadline long enough that the slow clients stay for the whole test.
    let server = TestServer::start_with(|c| c.header_timeout_ms = 600_000).await;
    let token = server.device("steady", &[]).await;
    let started = std::time::Instant::now();
    let mut slow = Vec::with_capacity(SLOW);
    for i in 0..SLOW {
        let mut stream = TcpStream::connect(host(&server)).await.unwrap();
        // Half of a head, on both paths (zero-copy and hyper), and no more.
        let partial = if i % 2 == 0 {
            "GET /api/v1/device/artifacts/aa HTTP/1.1\r\nHost: h\r\nX-Slow: "
        } else {
            "POST /api/v1/device/checkin HTTP/1.1\r\nHost: h\r\nX-Slow: "
        };
        stream.write_all(partial.as_bytes()).await.unwrap();
        slow.push(stream);
    }
    let opened = started.elapsed();
    let checkins = std::time::Instant::now();
    for _ in 0..50 {
        let answer = server.checkin(&token, &Running::factory()).await;
        assert_eq!(answer["poll_seconds"], 60);
    }
    let answered = checkins.elapsed();
    let open = server.metric("airlift_connections_open").await;
    assert!(open > SLOW as u64, "{open} connections open on the server");
    eprintln!(
        "{SLOW} slow connections opened in {opened:?} and held ({open} open on the server); \
         50 check-ins answered meanwhile in {answered:?}"
    );
    // Every slow connection is still open: none was answered or closed.
    let mut probe = [0u8; 16];
    for stream in &slow {
        assert!(
            matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        );
    }
}

#[tokio::test]
async fn the_server_speaks_https_with_a_lab_certificate_downloads_included_issue_16() {
    let certs = tempfile::tempdir().unwrap();
    let pair = airlift_server::tls::lab_pair(&["127.0.0.1".into()]).unwrap();
    let (cert, key) = (certs.path().join("c.pem"), certs.path().join("k.pem"));
    std::fs::write(&cert, &pair.chain_pem).unwrap();
    std::fs::write(&key, &pair.key_pem).unwrap();
    let mut server = TestServer::start_with(|c| {
        c.tls_cert = Some(cert.clone());
        c.tls_key = Some(key.clone());
    })
    .await;
    let plain = server.url.clone();
    // From here on the helpers speak HTTPS, trusting the lab CA.
    server.url = server.url.replace("http://", "https://");
    server.client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pair.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let https = server.url.clone();

    // A whole update's HTTP over TLS: upload, deploy, check-in, ranged download.
    let v1 = common::image("1.0.0", 0, 7);
    let release = server.release(&v1).await;
    let token = server.device("secure", &[]).await;
    server.deploy(&release, "device:secure").await;
    let answer = server.checkin(&token, &Running::factory()).await;
    let path = answer["update"]["url"].as_str().unwrap();
    let tail = server
        .client
        .get(format!("{https}{path}"))
        .bearer_auth(&token)
        .header("range", "bytes=100-")
        .send()
        .await
        .unwrap();
    assert_eq!(tail.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(tail.bytes().await.unwrap(), v1[100..]);

    // A client that does not trust the lab CA, and plain HTTP, get nowhere.
    let untrusting = reqwest::Client::new();
    assert!(
        untrusting
            .get(format!("{https}/healthz"))
            .send()
            .await
            .is_err()
    );
    assert!(
        untrusting
            .get(format!("{plain}/healthz"))
            .send()
            .await
            .is_err()
    );
    let failures = server.metric("airlift_tls_handshake_failures_total ").await;
    assert!(failures >= 2, "{failures}");
}
