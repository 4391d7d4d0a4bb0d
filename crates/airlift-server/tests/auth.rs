//! Every protected route refuses a missing or wrong token (or dashboard
//! session), and every route open without one is on a short, known list:
//! the list of routes comes from the OpenAPI document the server generates
//! from its handlers.
#![allow(clippy::unwrap_used)]

mod common;

use common::{TestServer, error_code};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// (method, path with parameters filled in, security scheme) of every operation.
fn operations(openapi: &Value) -> Vec<(Method, String, Option<String>)> {
    let mut out = Vec::new();
    for (path, item) in openapi["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let Ok(method) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            let scheme = operation["security"]
                .as_array()
                .and_then(|s| s.first())
                .and_then(|s| s.as_object())
                .and_then(|s| s.keys().next().cloned());
            let concrete = path
                .replace("{id}", "1")
                .replace("{name}", "dev-1")
                .replace("{sha256}", &"ab".repeat(32));
            assert!(!concrete.contains('{'), "unfilled parameter in {path}");
            out.push((method, concrete, scheme));
        }
    }
    out
}

/// The operations that take no token, each refusing what it should on its own terms
/// (tested in devices.rs and dashboard.rs).
const PUBLIC_OPERATIONS: [(Method, &str); 4] = [
    (Method::POST, "/api/v1/device/enroll"),
    (Method::GET, "/api/v1/session"),
    (Method::POST, "/api/v1/session"),
    (Method::DELETE, "/api/v1/session"),
];

/// A dashboard session that was opened and then signed out (its `Cookie` header).
async fn ended_session(server: &TestServer) -> String {
    let (set_cookie, _) = server.sign_in().await;
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let out = server
        .client
        .delete(format!("{}/api/v1/session", server.url))
        .header("x-airlift-csrf", "1")
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    cookie
}

#[tokio::test]
async fn every_admin_and_device_route_refuses_a_missing_or_wrong_token() {
    // The walk fails to authenticate hundreds of times on purpose: the
    // throttle it would meet is tested in hardening.rs.
    let server = TestServer::start_with(|c| c.auth_failures_burst = 100_000).await;
    let device_token = server.device("dev-1", &[]).await;
    let ended = ended_session(&server).await;
    let openapi: Value = server
        .client
        .get(format!("{}/api/openapi.json", server.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let operations = operations(&openapi);
    let admin_routes = operations
        .iter()
        .filter(|o| o.2.as_deref() == Some("admin_token"))
        .count();
    let device_routes = operations
        .iter()
        .filter(|o| o.2.as_deref() == Some("device_token"))
        .count();
    assert!(
        admin_routes >= 15,
        "only {admin_routes} admin routes in the OpenAPI document"
    );
    assert_eq!(device_routes, 3);
    let mut public: Vec<(Method, String)> = operations
        .iter()
        .filter(|o| o.2.is_none())
        .map(|o| (o.0.clone(), o.1.clone()))
        .collect();
    public.sort_by(|a, b| (a.1.as_str(), a.0.as_str()).cmp(&(b.1.as_str(), b.0.as_str())));
    let mut expected: Vec<(Method, String)> = PUBLIC_OPERATIONS
        .iter()
        .map(|(m, p)| (m.clone(), (*p).to_owned()))
        .collect();
    expected.sort_by(|a, b| (a.1.as_str(), a.0.as_str()).cmp(&(b.1.as_str(), b.0.as_str())));
    assert_eq!(public, expected, "operations open without a token");
    // Every admin operation also takes the dashboard's session cookie.
    for (path, item) in openapi["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let schemes: Vec<&str> = operation["security"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_object()?.keys().next().map(String::as_str))
                .collect();
            if schemes.first() == Some(&"admin_token") {
                assert_eq!(
                    schemes,
                    ["admin_token", "session_cookie"],
                    "{method} {path}"
                );
            }
        }
    }
    for (method, path) in [
        ("POST", "/api/v1/rollouts"),
        ("GET", "/api/v1/rollouts"),
        ("GET", "/api/v1/rollouts/1"),
        ("POST", "/api/v1/rollouts/1/start"),
        ("POST", "/api/v1/rollouts/1/pause"),
        ("POST", "/api/v1/rollouts/1/resume"),
        ("POST", "/api/v1/rollouts/1/advance"),
        ("POST", "/api/v1/rollouts/1/cancel"),
        ("DELETE", "/api/v1/devices/dev-1"),
        ("POST", "/api/v1/devices/dev-1/revoke"),
        ("POST", "/api/v1/devices/dev-1/rotate-token"),
    ] {
        assert!(
            operations.iter().any(|(m, p, s)| m.as_str() == method
                && p == path
                && s.as_deref() == Some("admin_token")),
            "{method} {path} is not in the OpenAPI document as an admin route"
        );
    }

    for (method, path, scheme) in &operations {
        let Some(scheme) = scheme else { continue };
        let url = format!("{}{path}", server.url);
        let wrong_admin_like = format!("{}x", server.admin_token);
        let mut attempts = vec![
            ("no token", server.client.request(method.clone(), &url)),
            (
                "wrong token",
                server
                    .client
                    .request(method.clone(), &url)
                    .bearer_auth("al_admin_0000"),
            ),
            (
                "almost the admin token",
                server
                    .client
                    .request(method.clone(), &url)
                    .bearer_auth(&wrong_admin_like),
            ),
            (
                "basic auth",
                server
                    .client
                    .request(method.clone(), &url)
                    .basic_auth("admin", Some(&server.admin_token)),
            ),
        ];
        if scheme == "admin_token" {
            attempts.push((
                "a device token",
                server
                    .client
                    .request(method.clone(), &url)
                    .bearer_auth(&device_token),
            ));
            let cookies = [
                (
                    "a made-up session cookie",
                    "airlift_session=al_session_0000".to_owned(),
                ),
                ("a signed-out session cookie", ended.clone()),
                (
                    "the admin token as a session cookie",
                    format!("airlift_session={}", server.admin_token),
                ),
            ];
            for (what, cookie) in cookies {
                let request = server
                    .client
                    .request(method.clone(), &url)
                    .header("cookie", cookie)
                    .header("x-airlift-csrf", "1");
                attempts.push((what, request));
            }
        } else {
            attempts.push((
                "the admin token",
                server
                    .client
                    .request(method.clone(), &url)
                    .bearer_auth(&server.admin_token),
            ));
        }
        for (what, request) in attempts {
            let response = request
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {what}"
            );
            let body: Value = response.json().await.unwrap();
            assert_eq!(error_code(&body), "unauthorized", "{method} {path}");
        }
    }

    // Nothing was changed by those attempts: no release, still one device
    // whose token works (not deleted, revoked or replaced), no audit record
    // but the device's creation and the session's sign-in and sign-out.
    let releases = server
        .admin_json(Method::GET, "/api/v1/releases", None, StatusCode::OK)
        .await;
    assert_eq!(releases, serde_json::json!([]));
    let device = server
        .admin_json(Method::GET, "/api/v1/devices/dev-1", None, StatusCode::OK)
        .await;
    assert_eq!(device["revoked_at"], Value::Null, "{device}");
    server
        .checkin(&device_token, &common::Running::factory())
        .await;
    let audit = server
        .admin_json(Method::GET, "/api/v1/audit", None, StatusCode::OK)
        .await;
    assert_eq!(audit.as_array().unwrap().len(), 3, "{audit}");
}

#[tokio::test]
async fn health_metrics_and_openapi_are_public() {
    let server = TestServer::start().await;
    for path in ["/healthz", "/metrics", "/api/openapi.json"] {
        let response = server
            .client
            .get(format!("{}{path}", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
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
    assert!(
        metrics.contains("# TYPE airlift_checkins_total counter"),
        "{metrics}"
    );
}

#[tokio::test]
async fn malformed_requests_get_the_json_error_shape() {
    let server = TestServer::start().await;
    let bad_json = server
        .client
        .post(format!("{}/api/v1/devices", server.url))
        .bearer_auth(&server.admin_token)
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_json.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&bad_json.json().await.unwrap()), "bad_json");

    let bad_query = server
        .admin(Method::GET, "/api/v1/audit?limit=many", None)
        .await;
    assert_eq!(bad_query.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&bad_query.json().await.unwrap()), "bad_query");

    let bad_path = server
        .admin(Method::GET, "/api/v1/releases/first", None)
        .await;
    assert_eq!(bad_path.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&bad_path.json().await.unwrap()), "bad_path");

    let missing = server
        .client
        .get(format!("{}/api/v1/nothing-here", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(&missing.json().await.unwrap()), "not_found");

    let bad_name = server
        .admin(
            Method::POST,
            "/api/v1/devices",
            Some(serde_json::json!({"name": "has space"})),
        )
        .await;
    assert_eq!(bad_name.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&bad_name.json().await.unwrap()), "bad_name");
}

#[tokio::test]
async fn first_start_writes_the_admin_token_once_with_owner_only_permissions() {
    let server = TestServer::start().await;
    let path = server.data_dir().join("admin.token");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap().trim(),
        server.admin_token
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let key = server.data_dir().join("signing.key");
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let token = server.admin_token.clone();
    let dir = server.stop().await;
    let again = airlift_server::Server::open(airlift_server::Config {
        data_dir: dir.path().to_owned(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        again.initial_admin_token, None,
        "a second start creates no token"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), token);
}
