//! A device's identity over real HTTP (issue 16): an enrolment secret
//! grants the tags and names the operator set on it and nothing else; a
//! device can be revoked, given a new token, or deleted, each audited and
//! refusing the old token at once, whatever this server had cached; a
//! deleted device leaves its deployments and rollouts and keeps its history.
#![allow(clippy::unwrap_used)]

mod common;

use airlift_server::scheduler;
use common::{Running, TestServer, error_code, image};
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

async fn enroll(server: &TestServer, secret: &str, name: &str, tags: &[&str]) -> Response {
    server
        .client
        .post(format!("{}/api/v1/device/enroll", server.url))
        .json(&json!({"secret": secret, "name": name, "tags": tags}))
        .send()
        .await
        .unwrap()
}

/// The status and the error code of a refused answer.
async fn refusal(response: Response) -> (StatusCode, String, String) {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    (
        status,
        error_code(&body).to_owned(),
        body["error"]["message"].as_str().unwrap().to_owned(),
    )
}

async fn checkin_as(server: &TestServer, token: &str) -> Response {
    server
        .as_device(
            token,
            Method::POST,
            "/api/v1/device/checkin",
            Some(Running::factory().checkin()),
        )
        .await
}

/// `(action, target)` of every audit record, oldest first.
async fn audit(server: &TestServer) -> Vec<(String, String, Value)> {
    let records = server
        .admin_json(Method::GET, "/api/v1/audit", None, StatusCode::OK)
        .await;
    records
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|r| {
            (
                r["action"].as_str().unwrap().to_owned(),
                r["target"].as_str().unwrap().to_owned(),
                serde_json::from_str(r["detail"].as_str().unwrap()).unwrap(),
            )
        })
        .collect()
}

async fn device_names(server: &TestServer) -> Vec<String> {
    let devices = server
        .admin_json(Method::GET, "/api/v1/devices", None, StatusCode::OK)
        .await;
    devices
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn an_enrolment_secret_grants_its_tags_and_names_and_nothing_else_issue_16() {
    let server = TestServer::start().await;
    let created = server
        .admin_json(
            Method::POST,
            "/api/v1/enrollment-secrets",
            Some(json!({"name": "roofs", "tags": ["roof", "eu"], "name_pattern": "roof-*"})),
            StatusCode::CREATED,
        )
        .await;
    assert_eq!(created["name_pattern"], "roof-*");
    let secret = created["value"].as_str().unwrap();

    // Asking for nothing, or for some of the granted tags, gets them all.
    for (name, asked) in [("roof-1", &[][..]), ("roof-2", &["roof"][..])] {
        let response = enroll(&server, secret, name, asked).await;
        assert_eq!(response.status(), StatusCode::CREATED, "{name}");
        let device = server
            .admin_json(
                Method::GET,
                &format!("/api/v1/devices/{name}"),
                None,
                StatusCode::OK,
            )
            .await;
        assert_eq!(device["tags"], json!(["eu", "roof"]), "{name}");
    }
    // A tag not granted, a name outside the pattern: refused, naming them.
    let (status, code, message) =
        refusal(enroll(&server, secret, "roof-3", &["roof", "prod", "canary"]).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "tag_not_granted")
    );
    assert!(
        message.contains(r#"does not grant tags "canary", "prod""#),
        "{message}"
    );
    let (status, code, message) = refusal(enroll(&server, secret, "attic-1", &[]).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "name_not_granted")
    );
    assert!(
        message.contains(r#"named "roof-*", not "attic-1""#),
        "{message}"
    );
    assert_eq!(device_names(&server).await, ["roof-1", "roof-2"]);
    // A bad pattern is refused when the secret is made.
    let bad = server
        .admin(
            Method::POST,
            "/api/v1/enrollment-secrets",
            Some(json!({"name": "odd", "name_pattern": "roof?"})),
        )
        .await;
    assert_eq!(refusal(bad).await.1, "bad_name_pattern");
    // The audit log says which secret enrolled each device.
    let enrolled: Vec<Value> = audit(&server)
        .await
        .into_iter()
        .filter(|(action, ..)| action == "POST /api/v1/device/enroll")
        .map(|(_, _, detail)| detail["secret"].clone())
        .collect();
    assert_eq!(enrolled, [json!("roofs"), json!("roofs")]);
}

#[tokio::test]
async fn the_configured_enrolment_secret_grants_what_the_configuration_says_issue_16() {
    let server = TestServer::start_with(|c| {
        c.enrollment_secret = Some(airlift_server::Secret::new("from-config"));
        c.enrollment_tags = vec!["field".into()];
        c.enrollment_name_pattern = Some("site-*".into());
    })
    .await;
    let ok = enroll(&server, "from-config", "site-1", &["field"]).await;
    assert_eq!(ok.status(), StatusCode::CREATED);
    let (_, code, _) = refusal(enroll(&server, "from-config", "site-2", &["lab"]).await).await;
    assert_eq!(code, "tag_not_granted");
    let (_, code, _) = refusal(enroll(&server, "from-config", "home-1", &[]).await).await;
    assert_eq!(code, "name_not_granted");
    let (status, code, _) = refusal(enroll(&server, "guess", "site-3", &[]).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
}

#[tokio::test]
async fn a_revoked_device_is_refused_with_token_revoked_though_its_token_was_cached_issue_16() {
    let server = TestServer::start().await;
    let release = server.release(&image("v2", 0, 1)).await;
    let token = server.device("lost", &["lab"]).await;
    let other = server.device("kept", &["lab"]).await;
    let deployment = server.deploy(&release, "tag:lab").await;
    let id = deployment["id"].as_i64().unwrap();
    // Its token and its offer are cached: it was offered the update.
    let answer = server.checkin(&token, &Running::factory()).await;
    assert_eq!(answer["update"]["deployment"], id);

    let revoked = server
        .admin_json(
            Method::POST,
            "/api/v1/devices/lost/revoke",
            None,
            StatusCode::OK,
        )
        .await;
    assert!(revoked["device"]["revoked_at"].as_i64().is_some());
    assert_eq!(revoked["cancelled"], json!([id]));
    let url = format!(
        "/api/v1/device/artifacts/{}",
        release["sha256"].as_str().unwrap()
    );
    for response in [
        checkin_as(&server, &token).await,
        server
            .event(&token, json!({"kind": "downloading", "deployment": id}))
            .await,
        server.as_device(&token, Method::GET, &url, None).await,
    ] {
        let (status, code, message) = refusal(response).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::UNAUTHORIZED, "token_revoked")
        );
        assert!(message.contains("this device was revoked"), "{message}");
    }
    // Its assignment is over; the other device's is not.
    let detail = server
        .admin_json(
            Method::GET,
            &format!("/api/v1/deployments/{id}"),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(detail["reasons"]["cancelled"], json!({"device_revoked": 1}));
    assert_eq!(detail["counts"]["pending"], 1);
    assert_eq!(
        checkin_as(&server, &other).await.status(),
        StatusCode::OK,
        "the other device is untouched"
    );
    // Still listed; in no new deployment; not revoked twice.
    assert_eq!(device_names(&server).await, ["kept", "lost"]);
    let again = server.deploy(&release, "tag:lab").await;
    assert_eq!(again["devices"], 1, "{again}");
    let named = server
        .admin(
            Method::POST,
            "/api/v1/deployments",
            Some(json!({"release": release["id"], "target": "device:lost"})),
        )
        .await;
    let (status, _, message) = refusal(named).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(message.contains("is revoked"), "{message}");
    let twice = server
        .admin(Method::POST, "/api/v1/devices/lost/revoke", None)
        .await;
    assert_eq!(twice.status(), StatusCode::CONFLICT);
    let missing = server
        .admin(Method::POST, "/api/v1/devices/nobody/revoke", None)
        .await;
    assert_eq!(refusal(missing).await.1, "not_found");

    // A new token takes it back; the revoked one stays refused.
    let rotated = server
        .admin_json(
            Method::POST,
            "/api/v1/devices/lost/rotate-token",
            None,
            StatusCode::OK,
        )
        .await;
    let fresh = rotated["token"].as_str().unwrap();
    assert_eq!(rotated["device"]["revoked_at"], Value::Null);
    assert_eq!(checkin_as(&server, fresh).await.status(), StatusCode::OK);
    assert_eq!(
        refusal(checkin_as(&server, &token).await).await.1,
        "token_revoked"
    );

    let records: Vec<(String, String)> = audit(&server)
        .await
        .into_iter()
        .filter(|(action, ..)| action.contains("/devices/{name}"))
        .map(|(action, target, detail)| (format!("{action} {}", detail["status"]), target))
        .collect();
    assert_eq!(
        records,
        [
            (
                "POST /api/v1/devices/{name}/revoke 200".into(),
                "device:lost".into()
            ),
            (
                "POST /api/v1/devices/{name}/revoke 409".into(),
                "/api/v1/devices/lost/revoke".into()
            ),
            (
                "POST /api/v1/devices/{name}/revoke 404".into(),
                "/api/v1/devices/nobody/revoke".into()
            ),
            (
                "POST /api/v1/devices/{name}/rotate-token 200".into(),
                "device:lost".into()
            ),
        ]
    );
}

#[tokio::test]
async fn a_new_token_replaces_the_old_one_at_once_issue_16() {
    let server = TestServer::start().await;
    let old = server.device("dev-1", &[]).await;
    // Cached by its check-in.
    assert_eq!(checkin_as(&server, &old).await.status(), StatusCode::OK);
    let rotated = server
        .admin_json(
            Method::POST,
            "/api/v1/devices/dev-1/rotate-token",
            None,
            StatusCode::OK,
        )
        .await;
    let new = rotated["token"].as_str().unwrap();
    assert_ne!(new, old);
    let (status, code, message) = refusal(checkin_as(&server, &old).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "token_revoked")
    );
    assert!(message.contains("given a new token"), "{message}");
    assert_eq!(checkin_as(&server, new).await.status(), StatusCode::OK);
    // A token nobody ever had is still just unknown.
    let (_, code, _) = refusal(checkin_as(&server, "al_dev_0000").await).await;
    assert_eq!(code, "unauthorized");
}

#[tokio::test]
async fn a_deleted_device_leaves_its_rollout_frees_its_name_and_keeps_its_history_issue_16() {
    let server = TestServer::start_with(|c| c.rollout_tick_ms = 0).await;
    let mut tokens = std::collections::BTreeMap::new();
    for i in 0..4 {
        let name = format!("dev-{i}");
        let token = server.device(&name, &["fleet"]).await;
        server.checkin(&token, &Running::factory()).await;
        tokens.insert(name, token);
    }
    let release = server.release(&image("v2", 0, 1)).await;
    let rollout = server
        .admin_json(
            Method::POST,
            "/api/v1/rollouts",
            Some(json!({"release": release["id"], "target": "tag:fleet",
                "waves": ["50%", "100%"], "success_threshold": "100%", "soak_ms": 0})),
            StatusCode::CREATED,
        )
        .await;
    let deployment = rollout["deployment_id"].as_i64().unwrap();
    let wave = |n: i64| -> Vec<String> {
        rollout["assignments"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["wave"] == n)
            .map(|a| a["device_name"].as_str().unwrap().to_owned())
            .collect()
    };
    let (first, second) = (wave(1), wave(2));
    assert_eq!((first.len(), second.len()), (2, 2));
    // One device of wave 1 starts the update, reports, and is deleted
    // midway; one of wave 2 is deleted while it waits.
    let (midway, waiting) = (&first[0], &second[0]);
    let answer = server.checkin(&tokens[midway], &Running::factory()).await;
    assert_eq!(answer["update"]["deployment"], deployment);
    let report = json!({"kind": "downloading", "deployment": deployment});
    assert_eq!(
        server.event(&tokens[midway], report).await.status(),
        StatusCode::OK
    );
    for name in [midway, waiting] {
        let gone = server
            .admin_json(
                Method::DELETE,
                &format!("/api/v1/devices/{name}"),
                None,
                StatusCode::OK,
            )
            .await;
        let id = gone["device"]["id"].as_i64().unwrap();
        assert_eq!(gone["device"]["name"], format!("{name}~deleted-{id}"));
        assert_eq!(gone["cancelled"], json!([deployment]));
    }
    // The others update; the rollout opens wave 2 and finishes without
    // waiting for the deleted devices.
    let confirm = |name: &String| {
        let token = tokens[name].clone();
        let server = &server;
        async move {
            server.checkin(&token, &Running::factory()).await;
            for kind in ["downloading", "installed", "booted", "confirmed"] {
                let event = json!({"kind": kind, "deployment": deployment});
                assert_eq!(server.event(&token, event).await.status(), StatusCode::OK);
            }
        }
    };
    confirm(&first[1]).await;
    scheduler::tick(&server.state, airlift_server::now_ms())
        .await
        .unwrap();
    confirm(&second[1]).await;
    scheduler::tick(&server.state, airlift_server::now_ms())
        .await
        .unwrap();
    let done = server
        .admin_json(
            Method::GET,
            &format!("/api/v1/rollouts/{}", rollout["id"]),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(done["state"], "finished", "{done:#}");
    let progress = server
        .admin_json(
            Method::GET,
            &format!("/api/v1/deployments/{deployment}"),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(
        (
            progress["counts"]["confirmed"].clone(),
            progress["reasons"]["cancelled"].clone()
        ),
        (json!(2), json!({"device_deleted": 2}))
    );

    // Its token is refused, its name is free, its history readable.
    let (status, code, message) = refusal(checkin_as(&server, &tokens[midway]).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "token_revoked")
    );
    assert!(message.contains("was deleted"), "{message}");
    let mut left = vec![first[1].clone(), second[1].clone()];
    left.sort();
    assert_eq!(device_names(&server).await, left);
    let overview = server
        .admin_json(Method::GET, "/api/v1/fleet", None, StatusCode::OK)
        .await;
    assert_eq!(overview["devices"], 2, "{overview}");
    let tombstone = progress["assignments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["device_name"].as_str().unwrap().to_owned())
        .find(|n| n.starts_with(&format!("{midway}~deleted-")))
        .unwrap();
    let history = server
        .admin_json(
            Method::GET,
            &format!("/api/v1/devices/{tombstone}/events"),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(history[0]["kind"], "downloading", "{history}");
    assert_eq!(history[0]["device"], tombstone.as_str());
    let shown = server
        .admin_json(
            Method::GET,
            &format!("/api/v1/devices/{tombstone}"),
            None,
            StatusCode::OK,
        )
        .await;
    assert!(shown["deleted_at"].as_i64().is_some(), "{shown}");
    assert_eq!(shown["history"][0]["reason"], "device_deleted");
    let reborn = server.device(midway, &["fleet"]).await;
    assert_eq!(checkin_as(&server, &reborn).await.status(), StatusCode::OK);
    assert_eq!(
        refusal(checkin_as(&server, &tokens[midway]).await).await.1,
        "token_revoked",
        "the new device's name does not revive the old token"
    );
    let deleted: Vec<Value> = audit(&server)
        .await
        .into_iter()
        .filter(|(action, ..)| action == "DELETE /api/v1/devices/{name}")
        .map(|(_, target, detail)| {
            let kept = detail["history_as"].as_str().unwrap();
            assert!(kept.contains("~deleted-"), "{detail}");
            json!([target, detail["tags"], detail["status"]])
        })
        .collect();
    assert_eq!(
        deleted,
        [
            json!([format!("device:{midway}"), ["fleet"], 200]),
            json!([format!("device:{waiting}"), ["fleet"], 200]),
        ]
    );
}
