//! What the dashboard needs from the server, over real HTTP: sessions in an
//! `HttpOnly` cookie guarded against cross-site request forgery, CORS for
//! the dashboard on another origin, the paged device list, the overview,
//! deployment progress with skipped devices apart, device histories, the
//! change stream, and the embedded static files.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use airlift_format::image::Chip;
use common::{Running, TestServer, error_code, image, image_for, sha256_hex};
use reqwest::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_ORIGIN, CONTENT_SECURITY_POLICY,
    CONTENT_TYPE, COOKIE, ORIGIN, SET_COOKIE,
};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};

const CSRF: &str = "x-airlift-csrf";

/// Signs in with the admin token; returns the session cookie's value.
async fn sign_in(server: &TestServer) -> String {
    let (cookie, _) = server.sign_in().await;
    let value = cookie
        .strip_prefix("airlift_session=")
        .and_then(|rest| rest.split(';').next())
        .unwrap();
    value.to_owned()
}

/// A request carrying the session cookie (and nothing else).
fn with_cookie(server: &TestServer, method: Method, path: &str, session: &str) -> RequestBuilder {
    server
        .client
        .request(method, format!("{}{path}", server.url))
        .header(COOKIE, format!("airlift_session={session}"))
}

/// What `GET /api/v1/session` answers with the session cookie.
async fn session_state(server: &TestServer, session: &str) -> Value {
    with_cookie(server, Method::GET, "/api/v1/session", session)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn sign_in_sets_an_http_only_same_site_cookie_that_opens_the_admin_api_until_sign_out() {
    let server = TestServer::start().await;
    let (cookie, body) = server.sign_in().await;
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/api", "Max-Age=43200"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(
        !cookie.contains(&server.admin_token),
        "the token is not the cookie"
    );
    assert_eq!(
        (&body["signed_in"], &body["admin"]),
        (&json!(true), &json!("admin"))
    );
    let session = sign_in(&server).await;

    assert_eq!(session_state(&server, &session).await["signed_in"], true);
    let devices = with_cookie(&server, Method::GET, "/api/v1/fleet/devices", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(devices.status(), StatusCode::OK);

    let out = with_cookie(&server, Method::DELETE, "/api/v1/session", &session)
        .header(CSRF, "1")
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    let cleared = out.headers()[SET_COOKIE].to_str().unwrap();
    assert!(
        cleared.starts_with("airlift_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );

    // The old cookie, replayed, opens nothing: the session ended on the server.
    for (method, path) in [
        (Method::GET, "/api/v1/fleet/devices"),
        (Method::GET, "/api/v1/releases"),
    ] {
        let response = with_cookie(&server, method, path, &session)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(error_code(&response.json().await.unwrap()), "unauthorized");
    }
    assert_eq!(
        session_state(&server, &session).await,
        json!({"signed_in": false})
    );

    // Signing in and out are in the audit log, by the admin token's name.
    let audit = server
        .admin_json(Method::GET, "/api/v1/audit", None, StatusCode::OK)
        .await;
    let actions: Vec<(&str, &str)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["actor"].as_str().unwrap(), r["action"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            ("admin", "DELETE /api/v1/session"),
            ("admin", "POST /api/v1/session"),
            ("admin", "POST /api/v1/session"),
        ]
    );
}

#[tokio::test]
async fn sign_in_refuses_a_wrong_token_and_a_request_without_the_guard_header() {
    let server = TestServer::start().await;
    let attempt = |token: String, guard: bool| {
        let mut request = server
            .client
            .post(format!("{}/api/v1/session", server.url))
            .json(&json!({"token": token}));
        if guard {
            request = request.header(CSRF, "1");
        }
        async move { request.send().await.unwrap() }
    };
    let wrong = attempt(format!("{}x", server.admin_token), true).await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.headers().get(SET_COOKIE).is_none());
    let body: Value = wrong.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("admin.token"),
        "{body}"
    );
    let device_token = server.device("dev-1", &[]).await;
    assert_eq!(
        attempt(device_token, true).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let unguarded = attempt(server.admin_token.clone(), false).await;
    assert_eq!(unguarded.status(), StatusCode::FORBIDDEN);
    assert!(unguarded.headers().get(SET_COOKIE).is_none());
    assert_eq!(error_code(&unguarded.json().await.unwrap()), "forbidden");
}

#[tokio::test]
async fn cookie_requests_that_change_something_need_the_guard_header_and_a_known_origin() {
    let server = TestServer::start().await;
    let session = sign_in(&server).await;
    let add = |name: &str| {
        with_cookie(&server, Method::POST, "/api/v1/devices", &session).json(&json!({"name": name}))
    };
    let host = server.url.trim_start_matches("http://").to_owned();

    let forged = add("forged").send().await.unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(&forged.json().await.unwrap()), "forbidden");
    let foreign = add("foreign")
        .header(CSRF, "1")
        .header(ORIGIN, "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), StatusCode::FORBIDDEN);
    let body: Value = foreign.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cors_origins"),
        "{body}"
    );

    let own = add("kitchen")
        .header(CSRF, "1")
        .header(ORIGIN, format!("http://{host}"))
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), StatusCode::CREATED);
    // Reading needs no guard: a foreign page cannot read the answer.
    let read = with_cookie(&server, Method::GET, "/api/v1/devices/kitchen", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);

    let devices = server
        .admin_json(Method::GET, "/api/v1/devices", None, StatusCode::OK)
        .await;
    let names: Vec<&str> = devices
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["kitchen"], "the refused requests changed nothing");
    let audit = server
        .admin_json(Method::GET, "/api/v1/audit?limit=1", None, StatusCode::OK)
        .await;
    assert_eq!(audit[0]["action"], "POST /api/v1/devices");
    let detail: Value = serde_json::from_str(audit[0]["detail"].as_str().unwrap()).unwrap();
    assert_eq!(detail["via"], "dashboard", "{detail}");
}

#[tokio::test]
async fn cors_lets_only_the_configured_origin_call_the_api_with_credentials() {
    let dashboard = "http://127.0.0.1:1";
    let server = TestServer::start_with(|c| c.cors_origins = vec![dashboard.into()]).await;
    let preflight = |origin: &str| {
        server
            .client
            .request(Method::OPTIONS, format!("{}/api/v1/releases", server.url))
            .header(ORIGIN, origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,x-airlift-csrf",
            )
            .send()
    };
    let allowed = preflight(dashboard).await.unwrap();
    assert!(allowed.status().is_success(), "{}", allowed.status());
    assert_eq!(allowed.headers()[ACCESS_CONTROL_ALLOW_ORIGIN], dashboard);
    assert_eq!(allowed.headers()[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
    let headers = allowed.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap();
    assert!(headers.contains("x-airlift-csrf"), "{headers}");

    let refused = preflight("http://127.0.0.1:2").await.unwrap();
    assert!(refused.headers().get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());

    // A signed-in page at the allowed origin can change things.
    let session = sign_in(&server).await;
    let added = with_cookie(&server, Method::POST, "/api/v1/devices", &session)
        .header(CSRF, "1")
        .header(ORIGIN, dashboard)
        .json(&json!({"name": "from-pages"}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), StatusCode::CREATED);
    assert_eq!(added.headers()[ACCESS_CONTROL_ALLOW_ORIGIN], dashboard);
}

#[tokio::test]
async fn a_server_refuses_to_start_with_an_origin_that_is_not_one() {
    let dir = tempfile::tempdir().unwrap();
    let result = airlift_server::Server::open(airlift_server::Config {
        data_dir: dir.path().to_owned(),
        cors_origins: vec!["https://fleet.example.com/dashboard/".into()],
        ..Default::default()
    })
    .await;
    let err = result.err().unwrap().to_string();
    assert!(err.contains("is not an origin"), "{err}");
}

/// The device list's page for `query`: (total, names).
async fn list(server: &TestServer, query: &str) -> (i64, Vec<String>) {
    let page = server
        .admin_json(
            Method::GET,
            &format!("/api/v1/fleet/devices?{query}"),
            None,
            StatusCode::OK,
        )
        .await;
    let names = page["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_owned())
        .collect();
    (page["total"].as_i64().unwrap(), names)
}

#[tokio::test]
async fn the_device_list_pages_searches_and_filters_on_the_server() {
    let server = TestServer::start().await;
    let mut tokens = Vec::new();
    for n in 0..30 {
        let tags: &[&str] = if n % 3 == 0 {
            &["lab", "eu"]
        } else {
            &["field"]
        };
        tokens.push(server.device(&format!("node-{n:02}"), tags).await);
    }
    server.device("kitchen_1", &["home"]).await;
    // Twenty check in: ten on 1.0.0, ten on 2.0.0; the rest were never seen.
    for (n, token) in tokens.iter().enumerate().take(20) {
        let running = Running {
            version: if n < 10 { "1.0.0" } else { "2.0.0" }.into(),
            ..Running::factory()
        };
        server.checkin(token, &running).await;
    }

    let (total, names) = list(&server, "limit=7").await;
    assert_eq!(total, 31);
    let mut expected = vec!["kitchen_1".to_owned()];
    expected.extend((0..6).map(|n| format!("node-{n:02}")));
    assert_eq!(names, expected, "by name");
    let (_, names) = list(&server, "limit=7&offset=28").await;
    assert_eq!(names, ["node-27", "node-28", "node-29"]);
    assert_eq!(
        list(&server, "q=NODE-1").await.0,
        10,
        "case-insensitive part of the name"
    );
    assert_eq!(list(&server, "q=n_1").await.1, ["kitchen_1"]);
    assert_eq!(list(&server, "q=e_1").await.0, 0, "_ is not a wildcard");
    assert_eq!(list(&server, "q=%25").await.0, 0, "% is not a wildcard");
    assert_eq!(list(&server, "tag=lab").await.0, 10);
    assert_eq!(
        list(&server, "tag=lab&version=1.0.0").await.1,
        ["node-00", "node-03", "node-06", "node-09"]
    );
    assert_eq!(list(&server, "version=2.0.0").await.0, 10);
    assert_eq!(list(&server, "state=idle").await.0, 20);
    assert_eq!(list(&server, "last_seen=never").await.0, 11);
    assert_eq!(list(&server, "last_seen=within:3600").await.0, 20);
    assert_eq!(list(&server, "last_seen=over:3600").await.0, 0);
    let (_, by_last_seen) = list(&server, "sort=last_seen&limit=500").await;
    let mut never_seen = vec!["kitchen_1".to_owned()];
    never_seen.extend((20..30).map(|n| format!("node-{n:02}")));
    assert_eq!(
        by_last_seen[20..],
        never_seen,
        "the never seen come last, by name"
    );
    for bad in ["last_seen=recently", "sort=age", "limit=many"] {
        let response = server
            .admin(Method::GET, &format!("/api/v1/fleet/devices?{bad}"), None)
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(
            error_code(&response.json().await.unwrap()),
            "bad_query",
            "{bad}"
        );
    }
}

#[tokio::test]
async fn deployment_progress_counts_devices_that_cannot_take_it_apart_with_their_reasons() {
    let server = TestServer::start().await;
    let bytes = image("2.0.0", 1, 21);
    let release = server.release(&bytes).await;
    let running_it = Running {
        version: "2.0.0".into(),
        sha256: sha256_hex(&bytes),
        security_version: 1,
        ..Running::factory()
    };
    let other_chip = Running {
        chip_id: 0,
        ..Running::factory()
    };
    let newer = Running {
        security_version: 5,
        ..Running::factory()
    };
    let mut eligible = Vec::new();
    for (name, running) in [
        ("a-ok", None),
        ("b-ok", None),
        ("c-ok", None),
        ("d-same", Some(&running_it)),
        ("e-esp32", Some(&other_chip)),
        ("f-newer", Some(&newer)),
    ] {
        let token = server.device(name, &["lab"]).await;
        match running {
            Some(running) => {
                server.checkin(&token, running).await;
            }
            None => eligible.push(token),
        }
    }
    let deployment = server.deploy(&release, "tag:lab").await;
    let id = deployment["id"].as_i64().unwrap();
    assert_eq!(
        (
            deployment["devices"].as_i64(),
            deployment["eligible"].as_i64()
        ),
        (Some(6), Some(3))
    );
    assert_eq!(
        deployment["reasons"]["skipped"],
        json!({"already_running": 1, "chip": 1, "security_version": 1})
    );
    assert_eq!(
        deployment["counts"]["pending"], 3,
        "the skipped devices are not waiting"
    );

    for token in &eligible {
        server.checkin(token, &Running::factory()).await;
    }
    let event = |token: &String, kind: &str, reason: Option<&str>| {
        let (server, token) = (&server, token.clone());
        let body = json!({"deployment": id, "kind": kind, "reason": reason, "detail": "watchdog"});
        async move { assert_eq!(server.event(&token, body).await.status(), StatusCode::OK) }
    };
    event(&eligible[0], "confirmed", None).await;
    event(&eligible[1], "rolled_back", Some("boot_failed")).await;

    let detail = server
        .admin_json(
            Method::GET,
            &format!("/api/v1/deployments/{id}?state=rolled_back,failed&limit=10"),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(detail["state"], "active");
    assert_eq!(detail["assignments_total"], 1);
    assert_eq!(detail["assignments"][0]["device_name"], "b-ok");
    assert_eq!(detail["assignments"][0]["reason"], "boot_failed");
    assert_eq!(detail["reasons"]["rolled_back"], json!({"boot_failed": 1}));
    assert_eq!(
        detail["versions"],
        json!([{"value": "v0", "devices": 5}, {"value": "2.0.0", "devices": 1}]),
        "what the deployment's devices run now"
    );
    let page = server
        .admin_json(
            Method::GET,
            &format!("/api/v1/deployments/{id}?limit=2&offset=2"),
            None,
            StatusCode::OK,
        )
        .await;
    let names: Vec<&str> = page["assignments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["device_name"].as_str().unwrap())
        .collect();
    assert_eq!(
        (page["assignments_total"].as_i64(), names),
        (Some(6), vec!["c-ok", "d-same"])
    );
    let bad = server
        .admin(
            Method::GET,
            &format!("/api/v1/deployments/{id}?state=exploded"),
            None,
        )
        .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    // The list shows each deployment's version and progress.
    let list = server
        .admin_json(Method::GET, "/api/v1/deployments", None, StatusCode::OK)
        .await;
    assert_eq!(list[0]["id"], id);
    assert_eq!(list[0]["version"], "2.0.0");
    assert_eq!(
        (
            list[0]["counts"]["confirmed"].as_i64(),
            list[0]["eligible"].as_i64()
        ),
        (Some(1), Some(3))
    );

    // The device's history names the release and how it ended.
    let device = server
        .admin_json(Method::GET, "/api/v1/devices/b-ok", None, StatusCode::OK)
        .await;
    let history = &device["history"][0];
    assert_eq!(
        (&history["deployment_id"], &history["version"]),
        (&json!(id), &json!("2.0.0"))
    );
    assert_eq!(
        (&history["state"], &history["reason"], &history["target"]),
        (
            &json!("rolled_back"),
            &json!("boot_failed"),
            &json!("tag:lab")
        )
    );
    assert_eq!(history["sha256"], sha256_hex(&bytes));
}

#[tokio::test]
async fn the_overview_counts_versions_states_unseen_devices_deployments_in_progress_and_problems() {
    let server = TestServer::start_with(|c| c.poll_seconds = 3600).await;
    let release = server.release(&image("2.0.0", 0, 22)).await;
    let seen = server.device("seen", &["lab"]).await;
    let failing = server.device("failing", &["lab"]).await;
    server.device("silent", &["lab", "eu"]).await;
    server.checkin(&seen, &Running::factory()).await;
    let esp32 = Running {
        chip_id: 0,
        version: "0.9".into(),
        ..Running::factory()
    };
    server.checkin(&failing, &esp32).await;
    let deployment = server.deploy(&release, "device:failing").await;
    let other = server
        .release(&image_for(Chip::Esp32, "3.0.0", 0, 23))
        .await;
    let in_progress = server.deploy(&other, "tag:lab").await;
    // `failing` fails the newest deployment (the older one was superseded).
    server.checkin(&failing, &esp32).await;
    let event = json!({"deployment": in_progress["id"], "kind": "failed", "reason": "signature"});
    assert_eq!(server.event(&failing, event).await.status(), StatusCode::OK);

    let overview = server
        .admin_json(Method::GET, "/api/v1/fleet", None, StatusCode::OK)
        .await;
    assert_eq!(
        (
            overview["devices"].as_i64(),
            overview["never_seen"].as_i64(),
            overview["unseen"].as_i64()
        ),
        (Some(3), Some(1), Some(0))
    );
    assert_eq!(overview["unseen_after_ms"], 3 * 3600 * 1000);
    assert_eq!(
        overview["by_version"],
        json!([{"value": "0.9", "devices": 1}, {"value": "v0", "devices": 1}, {"value": null, "devices": 1}]),
        "never reported last"
    );
    assert_eq!(
        overview["by_state"],
        json!([{"value": "idle", "devices": 2}, {"value": null, "devices": 1}])
    );
    assert_eq!(
        overview["by_tag"],
        json!([{"value": "eu", "devices": 1}, {"value": "lab", "devices": 3}])
    );
    let in_progress_ids: Vec<&Value> = overview["in_progress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["id"])
        .collect();
    assert_eq!(
        in_progress_ids,
        [&in_progress["id"]],
        "deployment {} was superseded: {overview:#}",
        deployment["id"]
    );
    assert_eq!(overview["in_progress"][0]["version"], "3.0.0");
    assert_eq!(
        overview["problems"],
        json!([{
            "device": "failing", "deployment_id": in_progress["id"], "version": "3.0.0",
            "state": "failed", "reason": "signature", "updated_at": overview["problems"][0]["updated_at"],
        }])
    );
}

#[tokio::test]
async fn the_change_stream_announces_each_change_and_ends_when_the_server_stops() {
    let server = TestServer::start().await;
    let mut stream = server
        .client
        .get(format!("{}/api/v1/fleet/changes", server.url))
        .bearer_auth(&server.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    assert_eq!(stream.headers()[CONTENT_TYPE], "text/event-stream");
    let mut text = String::new();
    let mut next_notice = async || loop {
        let chunk = stream
            .chunk()
            .await
            .unwrap()
            .expect("the stream ended early");
        text.push_str(&String::from_utf8_lossy(&chunk));
        if let Some(end) = text.find("\n\n") {
            let notice: String = text.drain(..end + 2).collect();
            if notice.contains("event: change") {
                return notice;
            }
        }
    };
    let first = next_notice().await;
    assert!(first.contains("data: 0"), "{first}");
    server.device("kitchen", &[]).await;
    let second = next_notice().await;
    assert!(!second.contains("data: 0\n"), "the counter moved: {second}");

    // A stream left open does not keep the server from stopping.
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(60), server.stop()).await;
    assert!(
        stopped.is_ok(),
        "the server waited for the open change stream"
    );
    let rest = stream.chunk().await;
    assert!(
        matches!(rest, Ok(None) | Err(_)),
        "the stream ended: {rest:?}"
    );
}

#[tokio::test]
async fn the_dashboard_is_served_at_the_root_every_file_embedded_under_a_strict_policy() {
    let server = TestServer::start().await;
    let index = server
        .client
        .get(format!("{}/", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(index.status(), StatusCode::OK);
    assert_eq!(index.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
    let policy = index.headers()[CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        policy.contains("default-src 'self'") && policy.contains("frame-ancestors 'none'"),
        "{policy}"
    );
    assert!(
        index
            .text()
            .await
            .unwrap()
            .contains("<script type=\"module\" src=\"app.js\">")
    );

    // Every file of web/dashboard is embedded (none forgotten), byte for byte.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web/dashboard");
    let mut on_disk: Vec<String> = common::files_under(&root)
        .iter()
        .map(|p| p.strip_prefix(&root).unwrap().to_str().unwrap().to_owned())
        .collect();
    let mut embedded: Vec<String> = airlift_server::dashboard::FILES
        .iter()
        .map(|f| f.path.to_owned())
        .collect();
    on_disk.sort();
    embedded.sort();
    assert_eq!(
        embedded, on_disk,
        "web/dashboard and dashboard::FILES differ"
    );
    for path in &on_disk {
        let response = server
            .client
            .get(format!("{}/{path}", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let expected_type = if path.ends_with(".js") {
            "text/javascript; charset=utf-8"
        } else if path.ends_with(".css") {
            "text/css; charset=utf-8"
        } else if path.ends_with(".html") {
            "text/html; charset=utf-8"
        } else {
            "text/plain; charset=utf-8"
        };
        assert_eq!(response.headers()[CONTENT_TYPE], expected_type, "{path}");
        assert_eq!(
            response.bytes().await.unwrap(),
            std::fs::read(root.join(path)).unwrap(),
            "{path}"
        );
    }
    // Nothing in it is loaded from another host.
    for path in &on_disk {
        let text = String::from_utf8_lossy(&std::fs::read(root.join(path)).unwrap()).into_owned();
        for reference in [
            "from \"http",
            "from 'http",
            "src=\"http",
            "href=\"http",
            "url(http",
            "import(\"http",
            "//cdn",
        ] {
            assert!(
                !text.contains(reference),
                "{path} loads something from another host: {reference}"
            );
        }
    }
}
