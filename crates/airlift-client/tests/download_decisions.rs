//! How a download resumes and what each answer means, case by case.
#![allow(clippy::unwrap_used)]

use airlift_client::download::{Fetch, Interrupt, accept, to_write};

#[derive(Debug, PartialEq)]
enum Verdict {
    Skip(u32),
    Retry(String),
    Fatal(String),
}

fn check(from: u32, status: u16, content_range: Option<&str>, expected: Verdict) {
    let got = match accept(Fetch { from }, status, content_range) {
        Ok(skip) => Verdict::Skip(skip),
        Err(Interrupt::Retry(m)) => Verdict::Retry(m.as_str().to_owned()),
        Err(Interrupt::Fatal(m)) => Verdict::Fatal(m.as_str().to_owned()),
    };
    assert_eq!(got, expected, "from {from}, {status}, {content_range:?}");
}

#[test]
fn each_answer_to_a_download_request_is_used_retried_or_refused() {
    use Verdict::*;
    // A fresh download: the body as it comes.
    check(0, 200, None, Skip(0));
    // A resume answered with the range asked for.
    check(8192, 206, Some("bytes 8192-99999/100000"), Skip(0));
    // A resume answered with the whole image: skip what is already written.
    check(8192, 200, None, Skip(8192));
    // A range that starts elsewhere: the server did not answer the question.
    check(
        8192,
        206,
        Some("bytes 0-99999/100000"),
        Fatal("server sent a range starting at Some(0), expected 8192".into()),
    );
    check(
        8192,
        206,
        None,
        Fatal("server sent a range starting at None, expected 8192".into()),
    );
    // A server in trouble: later, resuming.
    check(8192, 503, None, Retry("server answered 503".into()));
    check(0, 500, None, Retry("server answered 500".into()));
    // Anything else: not this device's download.
    check(
        0,
        404,
        None,
        Fatal("download refused: server answered 404".into()),
    );
    check(
        0,
        401,
        None,
        Fatal("download refused: server answered 401".into()),
    );
}

#[test]
fn a_resume_asks_for_the_rest_with_the_artifacts_etag_and_a_fresh_download_for_all() {
    let fresh = Fetch { from: 0 };
    assert_eq!(fresh.range(), None);
    assert_eq!(fresh.if_range("ab"), None);
    let resume = Fetch { from: 65536 };
    assert_eq!(resume.range().unwrap().as_str(), "bytes=65536-");
    assert_eq!(resume.if_range("3a1f").unwrap().as_str(), "\"3a1f\"");
}

#[test]
fn chunks_drop_the_bytes_to_skip_and_never_pass_the_image_end() {
    fn check(chunk_len: usize, skip: u32, left: u32, expected: (usize, u32)) {
        let chunk: Vec<u8> = (0..chunk_len).map(|i| i as u8).collect();
        let mut s = skip;
        let data = to_write(&chunk, &mut s, left);
        assert_eq!((data.len(), s), expected, "{chunk_len} {skip} {left}");
        if !data.is_empty() {
            assert_eq!(data[0], (skip.min(chunk_len as u32)) as u8);
        }
    }
    check(100, 0, 1000, (100, 0));
    check(100, 30, 1000, (70, 0));
    check(100, 300, 1000, (0, 200));
    check(100, 0, 40, (40, 0));
    check(100, 90, 5, (5, 0));
}

#[test]
fn only_the_devices_own_server_is_given_its_token_and_if_range_issue_15() {
    use airlift_client::download::on_server;
    let server = "http://airlift.lan:8080";
    for (url, own) in [
        ("/api/v1/device/artifacts/ab", true),
        ("http://airlift.lan:8080/api/v1/device/artifacts/ab", true),
        ("HTTP://AIRLIFT.LAN:8080/x", true),
        ("http://airlift.lan/x", false),
        ("https://airlift.lan:8080/x", false),
        ("http://other.lan:8080/x", false),
        ("//other.lan/x", false),
        ("http://airlift.lan:8080@evil.example/x", false),
        ("http://airlift.lan.evil.example:8080/x", false),
        (
            "http://127.0.0.1:9000/bucket/artifacts/ab?X-Amz-Signature=00",
            false,
        ),
        ("ftp://airlift.lan:8080/x", false),
    ] {
        assert_eq!(on_server(server, url), own, "{url}");
    }
    assert!(on_server(
        "https://fleet.example",
        "https://fleet.example:443/a"
    ));
    assert!(on_server("http://[::1]:8080/", "http://[::1]:8080/a"));
    assert!(!on_server("http://[::1]:8080", "http://[::1]/a"));

    let sha = "ab".repeat(32);
    let fresh = Fetch { from: 0 }.request(server, "/api/v1/device/artifacts/ab", &sha);
    assert!(fresh.token && fresh.range.is_none() && fresh.if_range.is_none());
    let resume = Fetch { from: 4096 };
    let own = resume.request(server, "/api/v1/device/artifacts/ab", &sha);
    assert!(own.token);
    assert_eq!(own.range.unwrap().as_str(), "bytes=4096-");
    assert_eq!(own.if_range.unwrap().as_str(), format!("\"{sha}\""));
    let store = resume.request(
        server,
        "http://127.0.0.1:9000/b/artifacts/ab?X-Amz-Signature=1",
        &sha,
    );
    assert!(
        !store.token,
        "a presigned URL never gets the device's token"
    );
    assert_eq!(store.range.unwrap().as_str(), "bytes=4096-");
    assert_eq!(store.if_range, None, "the store's ETag is not the SHA-256");
}

#[test]
fn a_path_is_asked_of_the_devices_server_and_an_absolute_url_as_it_is() {
    use airlift_client::download::url;
    let check = |server: &str, path: &str, expected: &str| {
        assert_eq!(
            url(server, path).unwrap().as_str(),
            expected,
            "{server} {path}"
        );
    };
    check(
        "http://10.0.0.2:8080",
        "/api/v1/device/checkin",
        "http://10.0.0.2:8080/api/v1/device/checkin",
    );
    check(
        "http://updates.example/",
        "/api/v1/device/artifacts/ab",
        "http://updates.example/api/v1/device/artifacts/ab",
    );
    check(
        "http://10.0.0.2:8080",
        "https://cdn.example/a.bin",
        "https://cdn.example/a.bin",
    );
    let long = format!(
        "http://{}",
        "h".repeat(airlift_client::settings::SERVER_MAX)
    );
    assert!(
        url(&long, &"/p".repeat(airlift_protocol::URL_MAX / 2 + 8)).is_none(),
        "too long for the device's buffer"
    );
}
