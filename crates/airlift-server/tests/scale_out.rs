//! Several server instances on one PostgreSQL database behave as one
//! server (issue 15): what one instance does, the others see, and what each
//! caches never makes it hand out what the database no longer holds. Needs
//! the cluster `scripts/services` starts (`./scripts/test` does).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Running, TestServer, image, postgres_database};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Two instances, each with its own data directory, on one new database.
async fn two_instances() -> (TestServer, TestServer) {
    let url = postgres_database().await;
    let configure = |url: String| {
        move |config: &mut airlift_server::Config| {
            config.database_url = Some(airlift_server::DatabaseUrl::new(url));
            config.rollout_tick_ms = 0;
        }
    };
    let a = TestServer::start_with(configure(url.clone())).await;
    let mut b = TestServer::start_with(configure(url)).await;
    assert!(
        b.admin_token.is_empty(),
        "the second instance creates no admin token of its own"
    );
    assert!(!b.data_dir().join("admin.token").exists());
    b.admin_token = a.admin_token.clone();
    (a, b)
}

/// Waits until `instance` heard of a change made on another instance: its
/// change counter moves (notices arrive in commit order, so what the other
/// instance committed before is applied by then).
async fn heard(
    instance: &TestServer,
    mut watcher: tokio::sync::watch::Receiver<airlift_server::changes::Counter>,
) {
    tokio::time::timeout(Duration::from_secs(30), watcher.changed())
        .await
        .expect("no change notice from the other instance within 30 s")
        .unwrap();
    let _ = instance;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_the_signing_key_the_admin_token_and_the_devices() {
    let (a, b) = two_instances().await;
    let key = |s: &TestServer| std::fs::read_to_string(s.data_dir().join("signing.pub")).unwrap();
    assert_eq!(key(&a), key(&b), "both sign with the database's key");
    // A release uploaded to one is signed with the key the other trusts.
    let release = a.release(&image("2.0.0", 0, 1)).await;
    let seen: Value = b
        .admin_json(
            Method::GET,
            &format!("/api/v1/releases/{}", release["id"]),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(seen["key_id"], release["key_id"]);
    // A device added on one authenticates on the other.
    let token = a.device("d1", &["lab"]).await;
    let answer = b.checkin(&token, &Running::factory()).await;
    assert_eq!(answer["update"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_created_on_one_instance_and_cancelled_on_the_other_is_never_offered_again() {
    let (a, b) = two_instances().await;
    let release = a.release(&image("2.0.0", 0, 1)).await;
    let token = a.device("d1", &["lab"]).await;
    // Both instances cache "no offer" for the device.
    for instance in [&a, &b] {
        assert_eq!(
            instance.checkin(&token, &Running::factory()).await["update"],
            Value::Null
        );
    }
    b.state.flush_statuses().await.unwrap();
    let watcher = b.state.changes.watch();
    let deployment = a.deploy(&release, "device:d1").await;
    heard(&b, watcher).await;
    // B forgot its "no offer" when A's deployment committed.
    let answer = b.checkin(&token, &Running::factory()).await;
    assert_eq!(
        answer["update"]["deployment"], deployment["id"],
        "offered by the instance that did not create it: {answer}"
    );
    // A cached the deployment as pending; B moved it to offered.
    b.admin_json(
        Method::POST,
        &format!("/api/v1/deployments/{}/cancel", deployment["id"]),
        None,
        StatusCode::OK,
    )
    .await;
    // At once, before any notice arrived: neither hands it out again.
    for round in 0..3 {
        for instance in [&a, &b] {
            let answer = instance.checkin(&token, &Running::factory()).await;
            assert_eq!(answer["update"], Value::Null, "round {round}: {answer}");
        }
    }
    let detail = a
        .admin_json(
            Method::GET,
            &format!("/api/v1/deployments/{}", deployment["id"]),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(detail["state"], "cancelled", "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_handed_out_by_one_instance_and_finished_on_the_other_is_not_handed_out_again() {
    let (a, b) = two_instances().await;
    let release = a.release(&image("2.0.0", 0, 1)).await;
    let token = a.device("d1", &[]).await;
    let deployment = a.deploy(&release, "device:d1").await;
    let id = deployment["id"].as_i64().unwrap();
    let answer = a.checkin(&token, &Running::factory()).await;
    assert_eq!(answer["update"]["deployment"], id);
    // The device reports to B; A still caches the offer as offered.
    for kind in ["downloading", "installed", "booted", "confirmed"] {
        let response = b
            .event(&token, json!({"deployment": id, "kind": kind}))
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{kind}");
    }
    let answer = a.checkin(&token, &Running::factory()).await;
    assert_eq!(answer["update"], Value::Null, "{answer}");
    b.state.flush_statuses().await.unwrap();
    a.state.flush_statuses().await.unwrap();
    let device: Value = b
        .admin_json(Method::GET, "/api/v1/devices/d1", None, StatusCode::OK)
        .await;
    assert_eq!(device["status"]["version"], "v0", "{device}");
}

/// Waits until `instance` forgot the device token with `hash`, which a
/// notice from another instance makes it do. Every notice it applies
/// moves its change counter: that is what is awaited between two looks
/// (`watcher` was taken before the change, so none is missed).
async fn forgot(
    instance: &TestServer,
    mut watcher: tokio::sync::watch::Receiver<airlift_server::changes::Counter>,
    hash: &[u8; 32],
) {
    while instance.state.device_tokens.get(hash).is_some() {
        tokio::time::timeout(Duration::from_secs(30), watcher.changed())
            .await
            .expect("the other instance's notice did not arrive within 30 s")
            .unwrap();
    }
}

/// The status and error code of a device's check-in.
async fn checkin_refusal(instance: &TestServer, token: &str) -> (StatusCode, String) {
    let response = instance
        .as_device(
            token,
            Method::POST,
            "/api/v1/device/checkin",
            Some(Running::factory().checkin()),
        )
        .await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    (status, common::error_code(&body).to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_revoked_on_one_instance_is_refused_by_the_other_once_its_notice_arrives_issue_16()
{
    let (a, b) = two_instances().await;
    let token = a.device("d1", &[]).await;
    let hash = airlift_server::auth::hash_token(&token);
    // B authenticated the device once: it holds the token in its cache.
    b.checkin(&token, &Running::factory()).await;
    assert!(b.state.device_tokens.get(&hash).is_some());
    let watcher = b.state.changes.watch();
    a.admin_json(
        Method::POST,
        "/api/v1/devices/d1/revoke",
        None,
        StatusCode::OK,
    )
    .await;
    forgot(&b, watcher, &hash).await;
    for instance in [&b, &a] {
        assert_eq!(
            checkin_refusal(instance, &token).await,
            (StatusCode::UNAUTHORIZED, "token_revoked".into())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_rotated_or_a_device_deleted_on_one_instance_is_refused_by_the_other_issue_16() {
    let (a, b) = two_instances().await;
    let old = a.device("d1", &["lab"]).await;
    a.checkin(&old, &Running::factory()).await;
    // Rotated on B: A, which cached the old token, refuses it.
    let watcher = a.state.changes.watch();
    let rotated = b
        .admin_json(
            Method::POST,
            "/api/v1/devices/d1/rotate-token",
            None,
            StatusCode::OK,
        )
        .await;
    let new = rotated["token"].as_str().unwrap().to_owned();
    forgot(&a, watcher, &airlift_server::auth::hash_token(&old)).await;
    assert_eq!(
        checkin_refusal(&a, &old).await,
        (StatusCode::UNAUTHORIZED, "token_revoked".into())
    );
    a.checkin(&new, &Running::factory()).await;
    // Deleted on B: A, which cached the new token, refuses it too.
    let watcher = a.state.changes.watch();
    b.admin_json(Method::DELETE, "/api/v1/devices/d1", None, StatusCode::OK)
        .await;
    forgot(&a, watcher, &airlift_server::auth::hash_token(&new)).await;
    assert_eq!(
        checkin_refusal(&a, &new).await,
        (StatusCode::UNAUTHORIZED, "token_revoked".into())
    );
    let devices = a
        .admin_json(Method::GET, "/api/v1/devices", None, StatusCode::OK)
        .await;
    assert_eq!(devices, json!([]));
}
