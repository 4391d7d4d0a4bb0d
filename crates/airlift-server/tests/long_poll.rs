//! Check-ins that wait (issue 17): a device that can wait is held while
//! nothing is offered to it and answered the moment a deployment or a
//! rollout's wave offers it an update; a device that cannot is answered at
//! once, as before.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Running, TestServer, image};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A check-in of a device that waits up to `seconds`.
fn waiting_check_in(seconds: u32) -> Value {
    let mut body = Running::factory().checkin();
    body["long_poll_seconds"] = json!(seconds);
    body
}

async fn check_in(server: &TestServer, token: &str, body: Value) -> Value {
    let response = server
        .as_device(token, Method::POST, "/api/v1/device/checkin", Some(body))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

/// A check-in that may wait 60 s, sent in the background; its answer.
fn held_check_in(
    server: &TestServer,
    token: &str,
) -> tokio::task::JoinHandle<Result<Value, StatusCode>> {
    let request = server
        .client
        .post(format!("{}/api/v1/device/checkin", server.url))
        .bearer_auth(token)
        .json(&waiting_check_in(60));
    tokio::spawn(async move {
        let response = request.send().await.unwrap();
        match response.status() {
            StatusCode::OK => Ok(response.json().await.unwrap()),
            other => Err(other),
        }
    })
}

/// Waits until the server says a check-in of `name` waits on it, as `GET
/// /api/v1/devices/NAME` shows it.
async fn until_waiting(server: &TestServer, name: &str) {
    loop {
        let device = server
            .admin_json(
                Method::GET,
                &format!("/api/v1/devices/{name}"),
                None,
                StatusCode::OK,
            )
            .await;
        if device["check_in"]["waiting"] == true {
            return;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_waiting_check_in_is_answered_with_the_update_a_new_deployment_offers() {
    let server = TestServer::start().await;
    let token = server.device("kitchen", &["lab"]).await;
    let release = server.release(&image("v2", 0, 1)).await;
    let held = held_check_in(&server, &token);
    until_waiting(&server, "kitchen").await;
    assert!(
        !held.is_finished(),
        "nothing offered yet: the check-in waits"
    );
    let deployment = server.deploy(&release, "tag:lab").await;
    let answer = held.await.unwrap().unwrap();
    assert_eq!(
        answer["update"]["deployment"], deployment["id"],
        "{answer:#}"
    );
    assert_eq!(answer["update"]["version"], "v2");
    assert_eq!(answer["device"], "kitchen", "the answer names the device");
    let shown = server
        .admin_json(Method::GET, "/api/v1/devices/kitchen", None, StatusCode::OK)
        .await;
    assert_eq!(shown["check_in"]["waiting"], false);
    assert_eq!(shown["assignment"]["state"], "offered");
}

#[tokio::test]
async fn a_rollout_wave_opening_wakes_the_devices_it_offers_the_update() {
    let server = TestServer::start_with(|c| c.rollout_tick_ms = 0).await;
    let token = server.device("porch", &["lab"]).await;
    check_in(&server, &token, Running::factory().checkin()).await;
    let release = server.release(&image("v2", 0, 1)).await;
    let rollout = server
        .admin_json(
            Method::POST,
            "/api/v1/rollouts",
            Some(json!({"release": release["id"], "target": "tag:lab", "start": false})),
            StatusCode::CREATED,
        )
        .await;
    let held = held_check_in(&server, &token);
    until_waiting(&server, "porch").await;
    server
        .admin_json(
            Method::POST,
            &format!("/api/v1/rollouts/{}/start", rollout["id"]),
            None,
            StatusCode::OK,
        )
        .await;
    let answer = held.await.unwrap().unwrap();
    assert_eq!(answer["update"]["version"], "v2", "{answer:#}");
}

#[tokio::test]
async fn a_hold_with_nothing_offered_ends_with_the_rest_of_the_interval_and_older_devices_are_answered_at_once()
 {
    let server = TestServer::start_with(|c| c.poll_seconds = 1).await;
    let token = server.device("shed", &[]).await;
    // Held for the whole interval (1 s here): the hold was the wait, check in again at once.
    let answer = check_in(&server, &token, waiting_check_in(60)).await;
    assert_eq!(answer["update"], Value::Null);
    assert_eq!(answer["poll_seconds"], 0, "{answer:#}");
    // A device that does not say it can wait is answered as before.
    let answer = check_in(&server, &token, Running::factory().checkin()).await;
    assert_eq!(answer["poll_seconds"], 1, "{answer:#}");
    assert_eq!(answer["device"], "shed");
    // A server that holds nothing answers at once.
    let plain = TestServer::start_with(|c| c.long_poll_seconds = 0).await;
    let token = plain.device("shed", &[]).await;
    let answer = check_in(&plain, &token, waiting_check_in(60)).await;
    assert_eq!(answer["poll_seconds"], 60, "{answer:#}");
}

#[tokio::test]
async fn a_graceful_stop_answers_the_waiting_check_ins_first() {
    let server = TestServer::start().await;
    let token = server.device("attic", &[]).await;
    let held = held_check_in(&server, &token);
    until_waiting(&server, "attic").await;
    server.stop().await;
    assert!(held.await.unwrap().is_ok(), "answered, not dropped");
}
