//! The device API over real HTTP: check-in, isolation between devices,
//! resumable downloads, deployment progress from events, enrolment, audit.
#![allow(clippy::unwrap_used)]

mod common;

use airlift_format::image::Chip;
use common::{Running, TestServer, error_code, image, image_for, sha256_hex};
use reqwest::header::{CONTENT_RANGE, ETAG, IF_RANGE, RANGE};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn checkin_without_assignment_gets_only_the_poll_interval_and_its_name_and_records_the_device()
 {
    let server = TestServer::start_with(|c| c.poll_seconds = 17).await;
    let token = server.device("dev-1", &["lab"]).await;
    let answer = server.checkin(&token, &Running::factory()).await;
    assert_eq!(
        answer,
        json!({"poll_seconds": 17, "update": null, "device": "dev-1"})
    );
    let device = server
        .admin_json(Method::GET, "/api/v1/devices/dev-1", None, StatusCode::OK)
        .await;
    assert_eq!(device["tags"], json!(["lab"]));
    assert_eq!(device["status"]["version"], "v0");
    assert_eq!(device["status"]["chip_id"], 5);
    assert_eq!(device["status"]["state"], "idle");
    assert!(device["status"]["last_seen"].as_i64().unwrap() > 0);
}

async fn download(
    server: &TestServer,
    token: &str,
    url: &str,
    headers: &[(reqwest::header::HeaderName, &str)],
) -> reqwest::Response {
    let mut request = server
        .client
        .get(format!("{}{url}", server.url))
        .bearer_auth(token);
    for (name, value) in headers {
        request = request.header(name, *value);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn assigned_update_is_offered_with_a_manifest_and_downloads_resume_byte_exact() {
    let server = TestServer::start().await;
    let bytes = image("v1", 0, 11);
    let release = server.release(&bytes).await;
    let token = server.device("dev-1", &[]).await;
    let deployment = server.deploy(&release, "device:dev-1").await;

    let answer = server.checkin(&token, &Running::factory()).await;
    let update = &answer["update"];
    assert_eq!(update["deployment"], deployment["id"]);
    assert_eq!(update["sha256"], sha256_hex(&bytes));
    assert_eq!(update["size"], bytes.len());
    assert_eq!(update["version"], "v1");
    assert!(!update["manifest"].as_str().unwrap().is_empty());
    let url = update["url"].as_str().unwrap().to_owned();
    assert_eq!(
        url,
        format!("/api/v1/device/artifacts/{}", sha256_hex(&bytes))
    );

    let whole = download(&server, &token, &url, &[]).await;
    assert_eq!(whole.status(), StatusCode::OK);
    let etag = whole.headers()[ETAG].to_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"{}\"", sha256_hex(&bytes)));
    assert_eq!(whole.bytes().await.unwrap().as_ref(), bytes.as_slice());

    // A download cut after 1000 bytes resumes from there, byte-exact.
    let cut = 1000;
    let rest = download(
        &server,
        &token,
        &url,
        &[(RANGE, &format!("bytes={cut}-")), (IF_RANGE, &etag)],
    )
    .await;
    assert_eq!(rest.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        rest.headers()[CONTENT_RANGE].to_str().unwrap(),
        format!("bytes {cut}-{}/{}", bytes.len() - 1, bytes.len())
    );
    let mut joined = bytes[..cut].to_vec();
    joined.extend_from_slice(&rest.bytes().await.unwrap());
    assert_eq!(joined, bytes);

    // A bounded range.
    let middle = download(&server, &token, &url, &[(RANGE, "bytes=10-19")]).await;
    assert_eq!(middle.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(middle.bytes().await.unwrap().as_ref(), &bytes[10..20]);

    // If-Range with another entity tag: the whole artifact again, not a splice of two files.
    let stale = download(
        &server,
        &token,
        &url,
        &[(RANGE, "bytes=1000-"), (IF_RANGE, "\"0000\"")],
    )
    .await;
    assert_eq!(stale.status(), StatusCode::OK);
    assert_eq!(stale.bytes().await.unwrap().as_ref(), bytes.as_slice());

    // Past the end.
    let beyond = download(
        &server,
        &token,
        &url,
        &[(RANGE, &format!("bytes={}-", bytes.len()))],
    )
    .await;
    assert_eq!(beyond.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        beyond.headers()[CONTENT_RANGE].to_str().unwrap(),
        format!("bytes */{}", bytes.len())
    );
}

#[tokio::test]
async fn a_device_cannot_read_another_devices_assignment_or_artifact() {
    let server = TestServer::start().await;
    let bytes = image("v1", 0, 12);
    let release = server.release(&bytes).await;
    let alice = server.device("alice", &[]).await;
    let bob = server.device("bob", &[]).await;
    let deployment = server.deploy(&release, "device:alice").await;
    let url = format!("/api/v1/device/artifacts/{}", sha256_hex(&bytes));

    let bob_answer = server.checkin(&bob, &Running::factory()).await;
    assert_eq!(bob_answer["update"], Value::Null);
    let response = download(&server, &bob, &url, &[]).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(&response.json().await.unwrap()), "not_found");
    let response = download(&server, &bob, &url, &[(RANGE, "bytes=0-99")]).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    // Bob cannot report on Alice's deployment.
    let response = server
        .event(
            &bob,
            json!({"deployment": deployment["id"], "kind": "failed", "reason": "flash"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let detail = server
        .admin_json(
            Method::GET,
            &format!("/api/v1/deployments/{}", deployment["id"]),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(detail["counts"]["pending"], 1);
    assert_eq!(detail["counts"]["failed"], 0);

    // Alice can.
    assert_eq!(
        download(&server, &alice, &url, &[]).await.status(),
        StatusCode::OK
    );
}

async fn state_of(server: &TestServer, deployment: &Value) -> (String, Value) {
    let detail = server
        .admin_json(
            Method::GET,
            &format!("/api/v1/deployments/{}", deployment["id"]),
            None,
            StatusCode::OK,
        )
        .await;
    (
        detail["state"].as_str().unwrap().to_owned(),
        detail["counts"].clone(),
    )
}

#[tokio::test]
async fn deployment_progress_follows_device_events_until_every_device_finished() {
    let server = TestServer::start().await;
    let bytes = image("v2", 1, 13);
    let release = server.release(&bytes).await;
    let good = server.device("good", &["fleet"]).await;
    let bad = server.device("bad", &["fleet"]).await;
    let refusing = server.device("refusing", &["fleet"]).await;
    server.device("elsewhere", &["other"]).await;
    let deployment = server.deploy(&release, "tag:fleet").await;
    let id = deployment["id"].clone();
    assert_eq!(deployment["counts"]["pending"], 3);
    assert_eq!(deployment["assignments"].as_array().unwrap().len(), 3);

    for token in [&good, &bad, &refusing] {
        assert!(!server.checkin(token, &Running::factory()).await["update"].is_null());
    }
    let (_, counts) = state_of(&server, &deployment).await;
    assert_eq!(counts["offered"], 3);

    let send = |token: &String, kind: &str, reason: Option<&str>| {
        let event = json!({"deployment": id, "kind": kind, "reason": reason});
        let token = token.clone();
        let server = &server;
        async move {
            let response = server.event(&token, event).await;
            assert_eq!(response.status(), StatusCode::OK);
            response.json::<Value>().await.unwrap()["accepted"]
                .as_bool()
                .unwrap()
        }
    };
    assert!(send(&good, "downloading", None).await);
    assert!(send(&bad, "downloading", None).await);
    assert!(!send(&bad, "verifying", None).await, "still downloading");
    assert!(send(&refusing, "failed", Some("signature")).await);
    let (status, counts) = state_of(&server, &deployment).await;
    assert_eq!(status, "active");
    assert_eq!(
        (counts["downloading"].as_i64(), counts["failed"].as_i64()),
        (Some(2), Some(1))
    );

    for kind in ["verifying", "installed", "rebooting", "booted"] {
        send(&good, kind, None).await;
        send(&bad, kind, None).await;
    }
    let (_, counts) = state_of(&server, &deployment).await;
    assert_eq!(counts["booted"], 2);
    // While booted, a check-in does not offer the update again.
    let running_new = Running {
        version: "v2".into(),
        sha256: sha256_hex(&bytes),
        security_version: 1,
        ..Running::factory()
    };
    assert!(server.checkin(&good, &running_new).await["update"].is_null());

    assert!(send(&good, "confirmed", None).await);
    assert!(send(&bad, "rolled_back", Some("boot_failed")).await);
    assert!(
        !send(&good, "failed", Some("flash")).await,
        "a confirmed device stays confirmed"
    );
    let (status, counts) = state_of(&server, &deployment).await;
    assert_eq!(status, "finished");
    assert_eq!(
        (
            counts["confirmed"].as_i64(),
            counts["rolled_back"].as_i64(),
            counts["failed"].as_i64()
        ),
        (Some(1), Some(1), Some(1))
    );

    let events = server
        .admin_json(
            Method::GET,
            "/api/v1/devices/bad/events",
            None,
            StatusCode::OK,
        )
        .await;
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "rolled_back",
            "booted",
            "rebooting",
            "installed",
            "verifying",
            "verifying",
            "downloading"
        ]
    );
    assert_eq!(events[0]["reason"], "boot_failed");
}

#[tokio::test]
async fn a_final_result_repeated_at_checkin_counts_when_the_event_was_lost() {
    let server = TestServer::start().await;
    let release = server.release(&image("v2", 0, 14)).await;
    let token = server.device("dev-1", &[]).await;
    let deployment = server.deploy(&release, "device:dev-1").await;
    server.checkin(&token, &Running::factory()).await;
    let mut report = Running::factory().checkin();
    report["last_result"] =
        json!({"deployment": deployment["id"], "kind": "failed", "reason": "verification"});
    let response = server
        .as_device(&token, Method::POST, "/api/v1/device/checkin", Some(report))
        .await;
    let answer: Value = response.json().await.unwrap();
    assert!(
        answer["update"].is_null(),
        "a failed update is not offered again: {answer}"
    );
    let (_, counts) = state_of(&server, &deployment).await;
    assert_eq!(counts["failed"], 1);
}

#[tokio::test]
async fn devices_already_running_it_on_another_chip_or_with_a_higher_security_version_are_skipped()
{
    let server = TestServer::start().await;
    let bytes = image("v5", 2, 15);
    let release = server.release(&bytes).await;
    let cases = [
        (
            "current",
            Running {
                sha256: sha256_hex(&bytes),
                ..Running::factory()
            },
            "already_running",
        ),
        (
            "classic",
            Running {
                chip_id: 0,
                ..Running::factory()
            },
            "chip",
        ),
        (
            "hardened",
            Running {
                security_version: 3,
                ..Running::factory()
            },
            "security_version",
        ),
    ];
    let mut tokens = Vec::new();
    for (name, running, _) in &cases {
        let token = server.device(name, &["all-kinds"]).await;
        server.checkin(&token, running).await;
        tokens.push(token);
    }
    let fresh = server.device("fresh", &["all-kinds"]).await;
    let deployment = server.deploy(&release, "tag:all-kinds").await;
    for (name, _, reason) in &cases {
        let assignment = deployment["assignments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["device_name"] == *name)
            .unwrap();
        assert_eq!(
            (assignment["state"].as_str(), assignment["reason"].as_str()),
            (Some("skipped"), Some(*reason)),
            "{name}"
        );
    }
    for (token, (_, running, _)) in tokens.iter().zip(&cases) {
        assert!(server.checkin(token, running).await["update"].is_null());
    }
    // A device that never checked in is offered it, and skipped at check-in if it turns out ineligible.
    let answer = server
        .checkin(
            &fresh,
            &Running {
                chip_id: 0,
                ..Running::factory()
            },
        )
        .await;
    assert!(answer["update"].is_null());
    let (status, counts) = state_of(&server, &deployment).await;
    assert_eq!(counts["skipped"], 4);
    assert_eq!(status, "finished");
}

#[tokio::test]
async fn a_new_deployment_supersedes_the_devices_unfinished_one_and_cancel_stops_offers() {
    let server = TestServer::start().await;
    let v1 = server.release(&image("v1", 0, 16)).await;
    let v2 = server.release(&image("v2", 0, 17)).await;
    let token = server.device("dev-1", &[]).await;
    let first = server.deploy(&v1, "all").await;
    let second = server.deploy(&v2, "all").await;
    let answer = server.checkin(&token, &Running::factory()).await;
    assert_eq!(answer["update"]["version"], "v2");
    let (_, counts) = state_of(&server, &first).await;
    assert_eq!(counts["cancelled"], 1);

    let cancelled = server
        .admin_json(
            Method::POST,
            &format!("/api/v1/deployments/{}/cancel", second["id"]),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(cancelled["counts"]["cancelled"], 1);
    assert!(server.checkin(&token, &Running::factory()).await["update"].is_null());
    server
        .admin_json(
            Method::POST,
            &format!("/api/v1/deployments/{}/cancel", second["id"]),
            None,
            StatusCode::CONFLICT,
        )
        .await;
    // The artifact of a cancelled assignment is no longer served to the device.
    let url = format!(
        "/api/v1/device/artifacts/{}",
        v2["sha256"].as_str().unwrap()
    );
    assert_eq!(
        download(&server, &token, &url, &[]).await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn devices_enrol_with_a_fleet_secret_and_get_its_tags() {
    let server = TestServer::start_with(|c| {
        c.enrollment_secret = Some(airlift_server::Secret::new("from-config"));
        c.enrollment_tags = vec!["lab".into()];
    })
    .await;
    let created = server
        .admin_json(
            Method::POST,
            "/api/v1/enrollment-secrets",
            Some(json!({"name": "batch-7", "tags": ["batch-7", "lab"]})),
            StatusCode::CREATED,
        )
        .await;
    let secret = created["value"].as_str().unwrap();
    let enroll = |secret: String, name: &str| {
        let body = json!({"secret": secret, "name": name, "tags": ["lab"]});
        server
            .client
            .post(format!("{}/api/v1/device/enroll", server.url))
            .json(&body)
            .send()
    };
    let response = enroll(secret.to_owned(), "esp-01").await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let answer: Value = response.json().await.unwrap();
    let token = answer["token"].as_str().unwrap();
    assert_eq!(
        server.checkin(token, &Running::factory()).await["poll_seconds"],
        60
    );
    let device = server
        .admin_json(Method::GET, "/api/v1/devices/esp-01", None, StatusCode::OK)
        .await;
    assert_eq!(device["tags"], json!(["batch-7", "lab"]));

    assert_eq!(
        enroll("from-config".into(), "esp-02")
            .await
            .unwrap()
            .status(),
        StatusCode::CREATED
    );
    assert_eq!(
        enroll("guess".into(), "esp-03").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        enroll(secret.to_owned(), "esp-01").await.unwrap().status(),
        StatusCode::CONFLICT
    );

    server
        .admin_json(
            Method::DELETE,
            "/api/v1/enrollment-secrets/batch-7",
            None,
            StatusCode::NO_CONTENT,
        )
        .await;
    assert_eq!(
        enroll(secret.to_owned(), "esp-04").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let listed = server
        .admin_json(Method::GET, "/api/v1/devices", None, StatusCode::OK)
        .await;
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["esp-01", "esp-02"]);
}

#[tokio::test]
async fn the_audit_log_records_each_admin_action() {
    let server = TestServer::start().await;
    let release = server.release(&image("v1", 0, 18)).await;
    let other = server.release(&image_for(Chip::Esp32, "v1", 0, 19)).await;
    server.device("dev-1", &["lab"]).await;
    let deployment = server.deploy(&release, "tag:lab").await;
    server
        .admin_json(
            Method::POST,
            &format!("/api/v1/deployments/{}/cancel", deployment["id"]),
            None,
            StatusCode::OK,
        )
        .await;
    server
        .admin_json(
            Method::DELETE,
            &format!("/api/v1/releases/{}", other["id"]),
            None,
            StatusCode::OK,
        )
        .await;
    server
        .admin_json(
            Method::DELETE,
            &format!("/api/v1/releases/{}", release["id"]),
            None,
            StatusCode::CONFLICT,
        )
        .await;
    server
        .admin_json(
            Method::POST,
            "/api/v1/enrollment-secrets",
            Some(json!({"name": "s1"})),
            StatusCode::CREATED,
        )
        .await;
    server
        .admin_json(Method::GET, "/api/v1/devices", None, StatusCode::OK)
        .await;

    let audit = server
        .admin_json(Method::GET, "/api/v1/audit", None, StatusCode::OK)
        .await;
    let records: Vec<(String, String, u64)> = audit
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|r| {
            assert_eq!(r["actor"], "admin");
            let detail: Value = serde_json::from_str(r["detail"].as_str().unwrap()).unwrap();
            (
                r["action"].as_str().unwrap().to_owned(),
                r["target"].as_str().unwrap().to_owned(),
                detail["status"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected = [
        (
            "POST /api/v1/releases",
            format!("release:{}", release["id"]),
            201,
        ),
        (
            "POST /api/v1/releases",
            format!("release:{}", other["id"]),
            201,
        ),
        ("POST /api/v1/devices", "device:dev-1".to_owned(), 201),
        (
            "POST /api/v1/deployments",
            format!("deployment:{}", deployment["id"]),
            201,
        ),
        (
            "POST /api/v1/deployments/{id}/cancel",
            format!("deployment:{}", deployment["id"]),
            200,
        ),
        (
            "DELETE /api/v1/releases/{id}",
            format!("release:{}", other["id"]),
            200,
        ),
        (
            "DELETE /api/v1/releases/{id}",
            format!("/api/v1/releases/{}", release["id"]),
            409,
        ),
        (
            "POST /api/v1/enrollment-secrets",
            "enrollment-secret:s1".to_owned(),
            201,
        ),
    ];
    let expected: Vec<(String, String, u64)> = expected
        .into_iter()
        .map(|(a, t, s)| (a.to_owned(), t, s))
        .collect();
    assert_eq!(records, expected);
}

#[tokio::test]
async fn checkin_status_written_behind_survives_a_graceful_stop() {
    let server = TestServer::start().await;
    let token = server.device("dev-1", &[]).await;
    let running = Running {
        version: "v7".into(),
        ..Running::factory()
    };
    server.checkin(&token, &running).await;
    let dir = server.stop().await;
    let store = airlift_server::store::sql::SqlStore::open_sqlite(dir.path())
        .await
        .unwrap();
    use airlift_server::store::DeviceStore;
    let device = store.device_by_name("dev-1").await.unwrap();
    assert_eq!(device.status.version.as_deref(), Some("v7"));
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing in {text}"))
}

#[tokio::test]
async fn zero_copy_and_hyper_downloads_answer_the_same_bytes_and_headers() {
    let server = TestServer::start().await;
    let bytes = image("v1", 0, 20);
    let release = server.release(&bytes).await;
    let token = server.device("dev-1", &[]).await;
    server.deploy(&release, "device:dev-1").await;
    let url = format!(
        "{}/api/v1/device/artifacts/{}",
        server.url,
        sha256_hex(&bytes)
    );
    let etag = format!("\"{}\"", sha256_hex(&bytes));

    // A connection whose first request is a download takes the zero-copy path;
    // one that started with another request is hyper's.
    let fast = reqwest::Client::new();
    let slow = reqwest::Client::new();
    let health = slow
        .get(format!("{}/healthz", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);

    let len = bytes.len();
    let cases: Vec<Vec<(reqwest::header::HeaderName, String)>> = vec![
        vec![],
        vec![(RANGE, "bytes=100-".into())],
        vec![(RANGE, "bytes=-10".into())],
        vec![(RANGE, "bytes=5-9".into()), (IF_RANGE, etag.clone())],
        vec![(RANGE, "bytes=5-".into()), (IF_RANGE, "\"other\"".into())],
        vec![(RANGE, format!("bytes={len}-"))],
    ];
    for headers in &cases {
        let mut answers = Vec::new();
        for client in [&fast, &slow] {
            let mut request = client.get(&url).bearer_auth(&token);
            for (name, value) in headers {
                request = request.header(name, value);
            }
            let response = request.send().await.unwrap();
            let status = response.status();
            let picked: Vec<Option<String>> = [
                "etag",
                "content-range",
                "content-length",
                "accept-ranges",
                "content-type",
            ]
            .iter()
            .map(|h| {
                response
                    .headers()
                    .get(*h)
                    .map(|v| v.to_str().unwrap().to_owned())
            })
            .collect();
            let body = response.bytes().await.unwrap();
            answers.push((status, picked, body));
        }
        assert_eq!(answers[0], answers[1], "{headers:?}");
        if answers[0].0 == StatusCode::OK {
            assert_eq!(answers[0].2.as_ref(), bytes.as_slice());
        }
    }
    let metrics = server
        .client
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric(&metrics, "airlift_zero_copy_downloads_total"),
        5,
        "the 416 is hyper's"
    );

    // After handing over, the same connection serves any other request.
    let answer = fast
        .post(format!("{}/api/v1/device/checkin", server.url))
        .bearer_auth(&token)
        .json(&Running::factory().checkin())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    // A wrong token on a fresh connection is refused by the API, not served.
    let refused = reqwest::Client::new()
        .get(&url)
        .bearer_auth("al_dev_nope")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn offers_stay_right_while_deployments_and_events_change_them_between_check_ins() {
    let server = TestServer::start().await;
    let v1_bytes = image("v1", 0, 21);
    let v1 = server.release(&v1_bytes).await;
    let v2 = server.release(&image("v2", 0, 22)).await;
    let token = server.device("dev-1", &["lab"]).await;
    let offered = |answer: &Value| answer["update"]["version"].as_str().map(str::to_owned);
    // Nothing assigned: that answer is cached, then a deployment changes it.
    assert_eq!(
        offered(&server.checkin(&token, &Running::factory()).await),
        None
    );
    let first = server.deploy(&v1, "tag:lab").await;
    assert_eq!(
        offered(&server.checkin(&token, &Running::factory()).await).as_deref(),
        Some("v1")
    );
    let event =
        |deployment: &Value, kind: &str| json!({"deployment": deployment["id"], "kind": kind});
    let sent = server.event(&token, event(&first, "downloading")).await;
    assert_eq!(sent.status(), StatusCode::OK);
    // Still downloading: offered again (a resumed download), and downloadable.
    assert_eq!(
        offered(&server.checkin(&token, &Running::factory()).await).as_deref(),
        Some("v1")
    );
    let url = format!(
        "/api/v1/device/artifacts/{}",
        v1["sha256"].as_str().unwrap()
    );
    assert_eq!(
        download(&server, &token, &url, &[]).await.status(),
        StatusCode::OK
    );
    // A newer deployment supersedes it mid-download.
    let second = server.deploy(&v2, "tag:lab").await;
    assert_eq!(
        offered(&server.checkin(&token, &Running::factory()).await).as_deref(),
        Some("v2")
    );
    let (_, counts) = state_of(&server, &first).await;
    assert_eq!(counts["cancelled"], 1);
    // A late event of the superseded deployment changes nothing.
    let late = server.event(&token, event(&first, "installed")).await;
    assert_eq!(late.status(), StatusCode::OK);
    assert_eq!(
        offered(&server.checkin(&token, &Running::factory()).await).as_deref(),
        Some("v2")
    );
    for kind in ["downloading", "installed", "booted", "confirmed"] {
        let sent = server.event(&token, event(&second, kind)).await;
        assert_eq!(sent.status(), StatusCode::OK, "{kind}");
    }
    assert_eq!(
        offered(&server.checkin(&token, &Running::factory()).await),
        None
    );

    // A deployment that skips the device (it already runs v1) leaves its
    // open offer (a third deployment of v2, still pending) as it was.
    let third = server.deploy(&v2, "tag:lab").await;
    let running_v1 = Running {
        version: "v1".into(),
        sha256: sha256_hex(&v1_bytes),
        ..Running::factory()
    };
    assert_eq!(
        offered(&server.checkin(&token, &running_v1).await).as_deref(),
        Some("v2")
    );
    let skipping = server.deploy(&v1, "tag:lab").await;
    assert_eq!(skipping["counts"]["skipped"], 1);
    assert_eq!(
        offered(&server.checkin(&token, &running_v1).await).as_deref(),
        Some("v2")
    );
    let (_, counts) = state_of(&server, &third).await;
    assert_eq!(counts["offered"], 1);
}

#[tokio::test]
async fn several_events_in_one_request_apply_in_order_and_bad_batches_are_refused() {
    let server = TestServer::start().await;
    let release = server.release(&image("v2", 0, 31)).await;
    let token = server.device("dev-1", &[]).await;
    let deployment = server.deploy(&release, "all").await;
    assert!(!server.checkin(&token, &Running::factory()).await["update"].is_null());
    let id = deployment["id"].clone();
    // Queued on the device: the download started 90 s before the batch went out.
    let batch = json!([
        {"deployment": id, "kind": "downloading", "age_ms": 90_000},
        {"deployment": id, "kind": "verifying", "age_ms": 3},
        {"deployment": id, "kind": "installed", "detail": "activated ota_1"},
        {"deployment": id, "kind": "rebooting"}
    ]);
    let response = server.event(&token, batch).await;
    assert_eq!(response.status(), StatusCode::OK);
    let ack: Value = response.json().await.unwrap();
    assert_eq!(ack, json!({"accepted": [true, false, true, false]}));
    let (_, counts) = state_of(&server, &deployment).await;
    assert_eq!(counts["installed"], 1);
    // Each is stored at the time it happened, not at its arrival; an age
    // beyond a day counts as a day.
    server
        .event(&token, json!({"kind": "booted", "age_ms": u32::MAX}))
        .await;
    let events = server
        .admin_json(
            Method::GET,
            "/api/v1/devices/dev-1/events",
            None,
            StatusCode::OK,
        )
        .await;
    let at = |kind: &str| {
        events
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == kind)
            .and_then(|e| e["at"].as_i64())
            .unwrap_or_else(|| panic!("no {kind} event in {events:#}"))
    };
    let installed = at("installed");
    assert_eq!(at("rebooting") - installed, 0, "one batch, one arrival");
    assert_eq!(installed - at("verifying"), 3);
    assert_eq!(installed - at("downloading"), 90_000);
    let day = 24 * 3600 * 1000;
    assert!(
        (day - 60_000..=day).contains(&(installed - at("booted"))),
        "{events:#}"
    );

    let check = |body: Value, status: StatusCode, says: &'static str| {
        let token = token.clone();
        let server = &server;
        async move {
            let response = server.event(&token, body).await;
            assert_eq!(response.status(), status);
            let body: Value = response.json().await.unwrap();
            let message = body["error"]["message"].as_str().unwrap().to_owned();
            assert!(message.contains(says), "{message:?} should say {says:?}");
        }
    };
    let nine: Vec<Value> = (0..9).map(|_| json!({"kind": "booted"})).collect();
    check(json!(nine), StatusCode::BAD_REQUEST, "at most 8 events").await;
    check(
        json!([{"kind": "exploded"}]),
        StatusCode::BAD_REQUEST,
        "unknown variant",
    )
    .await;
    check(
        json!({"kind": "exploded"}),
        StatusCode::BAD_REQUEST,
        "unknown variant",
    )
    .await;
    check(
        json!([{"deployment": id, "kind": "booted"}, {"deployment": 999, "kind": "confirmed"}]),
        StatusCode::NOT_FOUND,
        "deployment 999",
    )
    .await;
    // The events before the refused one were recorded.
    let (_, counts) = state_of(&server, &deployment).await;
    assert_eq!(counts["booted"], 1);
}

#[tokio::test]
async fn a_deployment_names_its_release_by_number_text_or_sha256() {
    let server = TestServer::start().await;
    let release = server.release(&image("v2", 0, 41)).await;
    server.device("dev-1", &["a"]).await;
    let id = release["id"].as_i64().unwrap();
    let sha = release["sha256"].as_str().unwrap();
    for reference in [json!(id), json!(id.to_string()), json!(sha)] {
        let created = server
            .admin_json(
                Method::POST,
                "/api/v1/deployments",
                Some(json!({"release": reference, "target": "tag:a"})),
                StatusCode::CREATED,
            )
            .await;
        assert_eq!(created["release"]["id"], id, "{reference}");
    }
    let refused = server
        .admin_json(
            Method::POST,
            "/api/v1/deployments",
            Some(json!({"release": true, "target": "tag:a"})),
            StatusCode::BAD_REQUEST,
        )
        .await;
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("expected a release id or a SHA-256"),
        "{message}"
    );
}

#[tokio::test]
async fn a_download_marks_the_offer_downloading_and_a_result_first_reported_at_check_in_keeps_its_detail()
 {
    let server = TestServer::start().await;
    let release = server.release(&image("v2", 0, 51)).await;
    let token = server.device("dev-1", &[]).await;
    let deployment = server.deploy(&release, "device:dev-1").await;
    assert!(!server.checkin(&token, &Running::factory()).await["update"].is_null());
    let (_, counts) = state_of(&server, &deployment).await;
    assert_eq!(counts["offered"], 1);
    let url = format!(
        "/api/v1/device/artifacts/{}",
        release["sha256"].as_str().unwrap()
    );
    assert_eq!(
        download(&server, &token, &url, &[]).await.status(),
        StatusCode::OK
    );
    // Marked in the background: the download does not wait for the commit.
    let mut state = Value::Null;
    for _ in 0..100 {
        state = state_of(&server, &deployment).await.1;
        if state["downloading"] == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(state["downloading"], 1, "{state}");

    let mut report = Running::factory().checkin();
    report["last_result"] = json!({"deployment": deployment["id"], "kind": "failed",
        "reason": "signature", "detail": "manifest signed by an unknown key"});
    let response = server
        .as_device(&token, Method::POST, "/api/v1/device/checkin", Some(report))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let (_, counts) = state_of(&server, &deployment).await;
    assert_eq!(counts["failed"], 1);
    let events = server
        .admin_json(
            Method::GET,
            "/api/v1/devices/dev-1/events",
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(events[0]["kind"], "failed");
    assert_eq!(
        events[0]["detail"],
        "manifest signed by an unknown key (reported at check-in)"
    );
}

#[tokio::test]
async fn issue_17_a_deployment_or_rollout_to_a_target_that_reaches_no_device_is_refused_naming_the_tags_in_use()
 {
    let server = TestServer::start().await;
    let release = server.release(&image("v2", 0, 1)).await;
    let body = |target: &str| json!({"release": release["id"], "target": target});
    let refused = server
        .admin_json(
            Method::POST,
            "/api/v1/deployments",
            Some(body("all")),
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    assert_eq!(error_code(&refused), "no_devices");
    server.device("kitchen", &["lab"]).await;
    server.device("porch", &["lab", "outdoor"]).await;
    for path in ["/api/v1/deployments", "/api/v1/rollouts"] {
        let refused = server
            .admin_json(
                Method::POST,
                path,
                Some(body("tag:labs")),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await;
        assert_eq!(error_code(&refused), "no_devices");
        let message = refused["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(r#"no device has the tag "labs" (tags in use: lab (2), outdoor (1))"#),
            "{message}"
        );
    }
    let deployments = server
        .admin_json(Method::GET, "/api/v1/deployments", None, StatusCode::OK)
        .await;
    assert_eq!(deployments, json!([]), "nothing was created");
}
