//! Issue 16, the device page's side: throttled passwords, no body read
//! before authentication, no cross-site request forgery through Basic
//! credentials, bounded connections. The page is served by
//! `web::serve_with` on 127.0.0.1:0; the device loop is stood in for by
//! the command channel.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlift_agent::page::{Command, Control, Snapshot};
use airlift_agent::web::{self, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Generous bound on what must happen by itself (never a measured duration).
const FAILSAFE: Duration = Duration::from_secs(60);

/// The page on an ephemeral port: its address and the commands it sends.
async fn page(limits: Limits) -> (String, mpsc::Receiver<Command>) {
    let (tx, rx) = mpsc::channel(8);
    let control = Control {
        commands: tx,
        snapshot: Arc::new(Mutex::new(Snapshot::default())),
    };
    let router = web::router(control, "s3cret");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(web::serve_with(listener, router, limits));
    (addr, rx)
}

/// Sends `request` and reads the answer until the page closes the connection.
async fn exchange(addr: &str, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(FAILSAFE, stream.read_to_end(&mut out))
        .await
        .expect("the page should answer and close")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

fn basic(password: &str) -> String {
    airlift_format::manifest::base64_encode(format!("x:{password}").as_bytes())
}

fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or("")
}

#[tokio::test]
async fn wrong_passwords_are_throttled_before_the_password_is_looked_at_issue_16() {
    let (addr, _commands) = page(Limits::default()).await;
    let mut statuses = Vec::new();
    for i in 0..1000 {
        let answer = exchange(
            &addr,
            format!(
                "GET /api/status HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\
                 Authorization: Bearer guess{i}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        statuses.push(status_line(&answer).to_owned());
        if answer.contains(" 429 ") {
            assert!(answer.to_lowercase().contains("retry-after:"), "{answer}");
            break;
        }
    }
    let refused = statuses.iter().filter(|s| s.contains(" 401 ")).count();
    assert_eq!(
        refused,
        web::CLIENT_RULE.burst as usize,
        "a burst of wrong passwords, then 429: {statuses:?}"
    );
    // The right password, from the same client, is refused as well for now.
    let right = exchange(
        &addr,
        b"GET /api/status HTTP/1.1\r\nHost: d\r\nConnection: close\r\nAuthorization: Bearer s3cret\r\n\r\n",
    )
    .await;
    assert!(status_line(&right).contains(" 429 "), "{right}");
}

#[tokio::test]
async fn an_unauthenticated_upload_is_refused_before_its_body_is_read_issue_16() {
    let (addr, _commands) = page(Limits::default()).await;
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    // 16 MiB announced, 1 KiB sent: the answer must not wait for the rest.
    let head = format!(
        "POST /api/upload HTTP/1.1\r\nHost: d\r\nContent-Length: {}\r\n\
         X-Airlift-Manifest: AAAA\r\n\r\n",
        16 * 1024 * 1024
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&[0u8; 1024]).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(FAILSAFE, stream.read(&mut answer))
        .await
        .expect("answered before the body was sent")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(status_line(&answer).contains(" 401 "), "{answer}");
    assert!(
        answer.to_lowercase().contains("connection: close"),
        "{answer}"
    );
}

#[tokio::test]
async fn basic_credentials_cannot_drive_a_state_change_from_another_origin_issue_16() {
    let (addr, mut commands) = page(Limits::default()).await;
    let auth = basic("s3cret");
    // What a foreign page's HTML form makes the browser send, Basic
    // credentials remembered: refused, and the device is not asked.
    let forged = exchange(
        &addr,
        format!(
            "POST /api/reboot HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://evil.example\r\n\
             Authorization: Basic {auth}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(status_line(&forged).contains(" 403 "), "{forged}");
    assert!(forged.contains("X-Airlift-CSRF"), "{forged}");
    assert!(commands.try_recv().is_err(), "no reboot was asked");
    // The page's own origin, or the header a script adds, may.
    for extra in [
        format!("Origin: http://{addr}"),
        "X-Airlift-CSRF: 1".to_owned(),
    ] {
        let own = exchange(
            &addr,
            format!(
                "POST /api/reboot HTTP/1.1\r\nHost: {addr}\r\n{extra}\r\n\
                 Authorization: Basic {auth}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert!(status_line(&own).contains(" 202 "), "{extra}: {own}");
        assert!(matches!(commands.recv().await, Some(Command::Reboot)));
    }
}

#[tokio::test]
async fn a_slow_request_head_is_cut_off_and_connections_are_capped_issue_16() {
    let limits = Limits {
        connections: 2,
        header_timeout: Duration::from_millis(300),
    };
    let (addr, _commands) = page(limits).await;
    // One byte at a time, paced: closed before the head is whole.
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "GET / HTTP/1.1\r\nHost: d\r\nX-Pad: {}\r\n\r\n",
        "x".repeat(4000)
    );
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    let cut_off = tokio::time::timeout(FAILSAFE, async {
        for byte in head.bytes() {
            pace.tick().await;
            if slow.write_all(&[byte]).await.is_err() {
                return true;
            }
            let mut probe = [0u8; 64];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(1), slow.read(&mut probe)).await
            {
                return n == 0 || String::from_utf8_lossy(&probe[..n]).contains("408");
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(cut_off, "the slow head was not cut off");

    // Two connections held (each answered once, kept alive): a third gets 503.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: d\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(stream);
    }
    let busy = exchange(&addr, b"").await;
    assert!(status_line(&busy).contains(" 503 "), "{busy}");
    assert!(busy.contains("\"busy\""), "{busy}");
}
