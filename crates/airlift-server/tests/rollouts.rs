//! Staged rollouts over real HTTP, with the scheduler stepped by the test
//! at times it chooses (soaks and deadlines pass without sleeping): waves,
//! thresholds, deadlines, the limit of devices updating at once, the
//! penalty box, operator commands, and a restart in the middle of a wave.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use airlift_server::scheduler;
use common::{Running, TestServer, error_code, image};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A server whose scheduler runs only when the test ticks it.
async fn server() -> TestServer {
    TestServer::start_with(|c| c.rollout_tick_ms = 0).await
}

/// `n` devices `dev-00`... tagged `fleet`, each checked in once; name -> token.
async fn fleet(server: &TestServer, n: usize) -> BTreeMap<String, String> {
    let mut tokens = BTreeMap::new();
    for i in 0..n {
        let name = format!("dev-{i:02}");
        let token = server.device(&name, &["fleet"]).await;
        server.checkin(&token, &Running::factory()).await;
        tokens.insert(name, token);
    }
    tokens
}

async fn create(server: &TestServer, release: &Value, plan: Value) -> Value {
    let mut body = json!({"release": release["id"], "target": "tag:fleet"});
    for (k, v) in plan.as_object().unwrap() {
        body[k] = v.clone();
    }
    server
        .admin_json(
            Method::POST,
            "/api/v1/rollouts",
            Some(body),
            StatusCode::CREATED,
        )
        .await
}

async fn show(server: &TestServer, id: &Value) -> Value {
    server
        .admin_json(
            Method::GET,
            &format!("/api/v1/rollouts/{id}"),
            None,
            StatusCode::OK,
        )
        .await
}

async fn command(server: &TestServer, id: &Value, what: &str, status: StatusCode) -> Value {
    server
        .admin_json(
            Method::POST,
            &format!("/api/v1/rollouts/{id}/{what}"),
            None,
            status,
        )
        .await
}

async fn tick(server: &TestServer, at: i64) {
    scheduler::tick(&server.state, at).await.unwrap();
}

/// The deployment of the update a check-in offers, if any.
async fn offered(server: &TestServer, token: &str) -> Option<i64> {
    server.checkin(token, &Running::factory()).await["update"]["deployment"].as_i64()
}

/// The device downloads, installs and boots the update of `deployment`.
async fn install(server: &TestServer, token: &str, deployment: i64) {
    let events: Vec<Value> = [
        "downloading",
        "verifying",
        "installed",
        "rebooting",
        "booted",
    ]
    .iter()
    .map(|k| json!({"kind": k, "deployment": deployment}))
    .collect();
    let response = server
        .event(token, Value::Array(events[..4].to_vec()))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        server.event(token, events[4].clone()).await.status(),
        StatusCode::OK
    );
}

/// Installs and then reports `result` (`confirmed`, `rolled_back`).
async fn update(server: &TestServer, token: &str, deployment: i64, result: &str) {
    install(server, token, deployment).await;
    let response = server
        .event(token, json!({"kind": result, "deployment": deployment}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}

/// Names of the rollout's devices in `wave` (in `state`, when given).
fn devices_in(detail: &Value, wave: i64, state: Option<&str>) -> Vec<String> {
    detail["assignments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["wave"] == wave && state.is_none_or(|s| a["state"] == s))
        .map(|a| a["device_name"].as_str().unwrap().to_owned())
        .collect()
}

fn event_kinds(detail: &Value) -> Vec<String> {
    detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn only_open_waves_are_offered_and_failures_reaching_the_threshold_pause_with_the_numbers() {
    let server = server().await;
    let tokens = fleet(&server, 40).await;
    let release = server.release(&image("v2", 0, 1)).await;
    let rollout = create(
        &server,
        &release,
        json!({"waves": ["10%", "50%"], "failure_threshold": "2", "success_threshold": "100%"}),
    )
    .await;
    let id = rollout["id"].clone();
    assert_eq!(rollout["state"], "running");
    assert_eq!(
        rollout["waves"],
        json!([4, 20, 40]),
        "the last wave takes the rest"
    );
    assert_eq!(rollout["opened"], 1);
    let wave1 = devices_in(&rollout, 1, Some("pending"));
    assert_eq!(wave1.len(), 4);
    assert_eq!(devices_in(&rollout, 2, Some("waiting")).len(), 16);
    assert_eq!(devices_in(&rollout, 3, Some("waiting")).len(), 20);

    // Every device checks in: only wave 1 is offered the release.
    let deployment = rollout["deployment_id"].as_i64().unwrap();
    for (name, token) in &tokens {
        let got = offered(&server, token).await;
        assert_eq!(got.is_some(), wave1.contains(name), "{name}");
    }
    // A device outside wave 1 can neither download the release nor report on it.
    let outsider = &tokens[&devices_in(&rollout, 2, None)[0]];
    let url = format!(
        "/api/v1/device/artifacts/{}",
        release["sha256"].as_str().unwrap()
    );
    let download = server.as_device(outsider, Method::GET, &url, None).await;
    assert_eq!(download.status(), StatusCode::NOT_FOUND);
    update(&server, outsider, deployment, "confirmed").await;

    update(&server, &tokens[&wave1[0]], deployment, "confirmed").await;
    update(&server, &tokens[&wave1[1]], deployment, "rolled_back").await;
    tick(&server, airlift_server::now_ms()).await;
    assert_eq!(
        show(&server, &id).await["state"],
        "running",
        "one failure of two"
    );
    let response = server
        .event(
            &tokens[&wave1[2]],
            json!({"kind": "failed", "deployment": deployment,
            "reason": "verification"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    tick(&server, airlift_server::now_ms()).await;

    let paused = show(&server, &id).await;
    assert_eq!(paused["state"], "paused");
    assert_eq!(paused["opened"], 1, "wave 2 never opened");
    assert_eq!(paused["paused_by"], "failure_threshold");
    let reason = &paused["pause_reason"];
    assert_eq!(
        (
            reason["wave"].clone(),
            reason["devices"].clone(),
            reason["confirmed"].clone(),
            reason["failures"].clone(),
            reason["limit"].clone()
        ),
        (json!(1), json!(4), json!(1), json!(2), json!(2))
    );
    assert_eq!(
        reason["failures_by_reason"],
        json!({"failed": 1, "rolled_back": 1})
    );
    assert_eq!(
        reason["message"],
        "2 failures (failed 1, rolled_back 1) in wave 1 reached the failure threshold of 2 (2 of 4 devices)"
    );
    assert_eq!(paused["progress"][0]["failures"], 2);
    assert_eq!(paused["progress"][1]["waiting"], 16);
    assert_eq!(
        devices_in(&paused, 2, Some("waiting")).len(),
        16,
        "{paused:#}"
    );
    assert_eq!(devices_in(&paused, 3, Some("waiting")).len(), 20);
    // The outsider's reports moved nothing.
    let outsider_state = paused["assignments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["device_name"] == devices_in(&rollout, 2, None)[0].as_str())
        .unwrap()["state"]
        .clone();
    assert_eq!(outsider_state, "waiting");
    // A device told of the update before the pause may still do it; its result counts.
    assert_eq!(offered(&server, &tokens[&wave1[3]]).await, Some(deployment));
    assert_eq!(event_kinds(&paused), ["created", "started", "paused"]);
    let audit = server
        .admin_json(Method::GET, "/api/v1/audit", None, StatusCode::OK)
        .await;
    let by_scheduler: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["actor"] == "scheduler")
        .collect();
    assert_eq!(by_scheduler.len(), 1, "{audit:#}");
    assert_eq!(by_scheduler[0]["action"], "rollout paused");
    assert_eq!(by_scheduler[0]["target"], format!("rollout:{id}"));
}

#[tokio::test]
async fn the_next_wave_opens_after_the_success_threshold_and_the_soak_and_the_last_one_finishes() {
    let server = server().await;
    let tokens = fleet(&server, 10).await;
    let release = server.release(&image("v2", 0, 2)).await;
    let soak = 600_000;
    let rollout = create(
        &server,
        &release,
        json!({"waves": ["2", "100%"], "soak_ms": soak, "success_threshold": "100%"}),
    )
    .await;
    let id = rollout["id"].clone();
    let deployment = rollout["deployment_id"].as_i64().unwrap();
    let wave1 = devices_in(&rollout, 1, None);
    update(&server, &tokens[&wave1[0]], deployment, "confirmed").await;
    let t0 = airlift_server::now_ms();
    tick(&server, t0).await;
    assert_eq!(
        show(&server, &id).await["succeeded_at"],
        Value::Null,
        "1 of 2"
    );
    update(&server, &tokens[&wave1[1]], deployment, "confirmed").await;
    tick(&server, t0 + 1).await;
    let soaking = show(&server, &id).await;
    assert_eq!(soaking["succeeded_at"], t0 + 1);
    assert_eq!(soaking["opened"], 1);
    tick(&server, t0 + soak).await;
    assert_eq!(
        show(&server, &id).await["opened"],
        1,
        "the soak is not over"
    );
    tick(&server, t0 + 1 + soak).await;
    let open = show(&server, &id).await;
    assert_eq!(open["opened"], 2);
    let wave2 = devices_in(&open, 2, Some("pending"));
    assert_eq!(wave2.len(), 8);
    for name in &wave2 {
        assert_eq!(offered(&server, &tokens[name]).await, Some(deployment));
        update(&server, &tokens[name], deployment, "confirmed").await;
    }
    tick(&server, t0 + 2 + soak).await;
    let done = show(&server, &id).await;
    assert_eq!(done["state"], "finished");
    assert_eq!(done["total"]["confirmed"], 10);
    assert_eq!(
        event_kinds(&done),
        [
            "created",
            "started",
            "soak_started",
            "wave_opened",
            "finished"
        ]
    );
    let deployment_view = server
        .admin_json(
            Method::GET,
            &format!("/api/v1/deployments/{deployment}"),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(deployment_view["state"], "finished");
    assert_eq!(deployment_view["counts"]["confirmed"], 10);
}

#[tokio::test]
async fn a_device_silent_after_installing_fails_at_its_deadline_and_pauses_the_rollout() {
    let server = server().await;
    let tokens = fleet(&server, 8).await;
    let release = server.release(&image("v2", 0, 3)).await;
    let deadline = 300_000;
    let rollout = create(
        &server,
        &release,
        json!({"waves": ["4"], "deadline_ms": deadline, "failure_threshold": "1"}),
    )
    .await;
    let id = rollout["id"].clone();
    let deployment = rollout["deployment_id"].as_i64().unwrap();
    let wave1 = devices_in(&rollout, 1, None);
    for name in &wave1[..3] {
        update(&server, &tokens[name], deployment, "confirmed").await;
    }
    // The fourth installs, reboots into the new image and is never heard of again.
    let silent = &wave1[3];
    assert_eq!(offered(&server, &tokens[silent]).await, Some(deployment));
    install(&server, &tokens[silent], deployment).await;
    let installed_at = airlift_server::now_ms();
    tick(&server, installed_at + deadline / 2).await;
    assert_eq!(show(&server, &id).await["state"], "running");
    tick(&server, installed_at + deadline + 1000).await;
    let paused = show(&server, &id).await;
    assert_eq!(paused["state"], "paused");
    let silent_row = paused["assignments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["device_name"] == silent.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        (silent_row["state"].as_str(), silent_row["reason"].as_str()),
        (Some("failed"), Some("deadline"))
    );
    assert_eq!(
        paused["pause_reason"]["failures_by_reason"],
        json!({"deadline": 1})
    );
    assert_eq!(
        event_kinds(&paused),
        ["created", "started", "deadline", "paused"]
    );
    // A confirmation arriving after the deadline does not reopen the device.
    let late = server
        .event(
            &tokens[silent],
            json!({"kind": "confirmed", "deployment": deployment}),
        )
        .await;
    assert_eq!(late.status(), StatusCode::OK);
    assert_eq!(show(&server, &id).await["total"]["failures"], 1);
}

#[tokio::test]
async fn operators_pause_resume_advance_and_cancel_and_every_transition_is_an_event_and_an_audit_record()
 {
    let server = server().await;
    let tokens = fleet(&server, 12).await;
    let release = server.release(&image("v2", 0, 4)).await;
    let draft = create(
        &server,
        &release,
        json!({"waves": ["25%", "50%"], "start": false, "failure_threshold": "1"}),
    )
    .await;
    let id = draft["id"].clone();
    assert_eq!(draft["state"], "draft");
    assert_eq!(
        draft["assignments"],
        json!([]),
        "a draft has no device set yet"
    );
    assert_eq!(
        offered(&server, tokens.values().next().unwrap()).await,
        None
    );
    for (what, code) in [
        ("pause", "conflict"),
        ("resume", "conflict"),
        ("advance", "conflict"),
    ] {
        let body = command(&server, &id, what, StatusCode::CONFLICT).await;
        assert_eq!(error_code(&body), code, "{what} a draft");
    }
    let running = command(&server, &id, "start", StatusCode::OK).await;
    assert_eq!(running["state"], "running");
    let deployment = running["deployment_id"].as_i64().unwrap();
    let wave1 = devices_in(&running, 1, Some("pending"));
    assert_eq!(wave1.len(), 3);
    command(&server, &id, "start", StatusCode::CONFLICT).await;

    let paused = command(&server, &id, "pause", StatusCode::OK).await;
    assert_eq!(paused["paused_by"], "admin");
    assert_eq!(paused["pause_reason"]["message"], "paused by admin");
    assert_eq!(
        devices_in(&paused, 1, Some("waiting")).len(),
        3,
        "no longer offered"
    );
    assert_eq!(offered(&server, &tokens[&wave1[0]]).await, None);
    let body = command(&server, &id, "advance", StatusCode::CONFLICT).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("resume it first"),
        "{body}"
    );

    let resumed = command(&server, &id, "resume", StatusCode::OK).await;
    assert_eq!(
        (resumed["state"].as_str(), resumed["paused_by"].as_str()),
        (Some("running"), None)
    );
    assert_eq!(devices_in(&resumed, 1, Some("pending")).len(), 3);
    // A failure, then the operator accepts it by pausing and resuming.
    assert_eq!(offered(&server, &tokens[&wave1[0]]).await, Some(deployment));
    update(&server, &tokens[&wave1[0]], deployment, "rolled_back").await;
    tick(&server, airlift_server::now_ms()).await;
    assert_eq!(show(&server, &id).await["state"], "paused");
    let resumed = command(&server, &id, "resume", StatusCode::OK).await;
    assert_eq!(resumed["accepted_failures"], 1);
    tick(&server, airlift_server::now_ms()).await;
    assert_eq!(
        show(&server, &id).await["state"],
        "running",
        "an accepted failure is not counted again"
    );

    let advanced = command(&server, &id, "advance", StatusCode::OK).await;
    assert_eq!(advanced["opened"], 2, "no success threshold, no soak");
    assert_eq!(devices_in(&advanced, 2, Some("pending")).len(), 3);
    let cancelled = command(&server, &id, "cancel", StatusCode::OK).await;
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(cancelled["total"]["waiting"], 0);
    assert_eq!(cancelled["total"]["updating"], 0);
    for token in tokens.values() {
        assert_eq!(offered(&server, token).await, None);
    }
    command(&server, &id, "cancel", StatusCode::CONFLICT).await;

    assert_eq!(
        event_kinds(&cancelled),
        [
            "created",
            "started",
            "paused",
            "resumed",
            "paused",
            "resumed",
            "advanced",
            "cancelled"
        ]
    );
    let actors: Vec<&str> = cancelled["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["actor"].as_str().unwrap())
        .collect();
    assert_eq!(
        actors,
        [
            "admin",
            "admin",
            "admin",
            "admin",
            "scheduler",
            "admin",
            "admin",
            "admin"
        ]
    );
    let audit = server
        .admin_json(
            Method::GET,
            "/api/v1/audit?limit=1000",
            None,
            StatusCode::OK,
        )
        .await;
    let mut actions: Vec<(String, String)> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["target"] == format!("rollout:{id}"))
        .map(|a| {
            (
                a["actor"].as_str().unwrap().to_owned(),
                a["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    actions.reverse();
    let expected: Vec<(String, String)> = [
        ("admin", "POST /api/v1/rollouts"),
        ("admin", "POST /api/v1/rollouts/{id}/start"),
        ("admin", "POST /api/v1/rollouts/{id}/pause"),
        ("admin", "POST /api/v1/rollouts/{id}/resume"),
        ("scheduler", "rollout paused"),
        ("admin", "POST /api/v1/rollouts/{id}/resume"),
        ("admin", "POST /api/v1/rollouts/{id}/advance"),
        ("admin", "POST /api/v1/rollouts/{id}/cancel"),
    ]
    .iter()
    .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
    .collect();
    assert_eq!(actions, expected);
    // Refused commands are audited too, with their status.
    let refused = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| {
            a["action"]
                .as_str()
                .unwrap()
                .starts_with("POST /api/v1/rollouts/{id}/")
        })
        .filter(|a| a["detail"].as_str().unwrap().contains("409"))
        .count();
    assert_eq!(
        refused, 6,
        "pause, resume, advance of the draft, start, advance, cancel"
    );
}

#[tokio::test]
async fn at_most_max_parallel_devices_update_at_once_and_a_device_that_never_checks_in_gives_its_room_back()
 {
    let server = server().await;
    let tokens = fleet(&server, 6).await;
    let release = server.release(&image("v2", 0, 5)).await;
    let deadline = 60_000;
    let rollout = create(
        &server,
        &release,
        json!({"waves": ["100%"], "max_parallel": 2, "deadline_ms": deadline}),
    )
    .await;
    let id = rollout["id"].clone();
    let deployment = rollout["deployment_id"].as_i64().unwrap();
    let first = devices_in(&rollout, 1, Some("pending"));
    assert_eq!(first.len(), 2);
    assert_eq!(devices_in(&rollout, 1, Some("waiting")).len(), 4);
    // One of the two updates; the other never checks in.
    update(&server, &tokens[&first[0]], deployment, "confirmed").await;
    let t0 = airlift_server::now_ms();
    tick(&server, t0).await;
    let next = show(&server, &id).await;
    assert_eq!(devices_in(&next, 1, Some("pending")).len(), 2);
    assert!(devices_in(&next, 1, Some("pending")).contains(&first[1]));
    // Past the deadline, the absent device gives its room back and waits at the back.
    tick(&server, t0 + deadline + 1000).await;
    let after = show(&server, &id).await;
    let pending = devices_in(&after, 1, Some("pending"));
    assert_eq!(pending.len(), 2);
    assert!(!pending.contains(&first[1]), "{pending:?}");
    assert!(devices_in(&after, 1, Some("waiting")).contains(&first[1]));
    assert_eq!(
        after["total"]["failures"], 0,
        "never offered: not a failure"
    );
    assert_eq!(offered(&server, &tokens[&first[1]]).await, None);
}

#[tokio::test]
async fn a_device_that_failed_the_release_twice_is_held_back_and_shown_as_such() {
    let server = server().await;
    let tokens = fleet(&server, 3).await;
    let release = server.release(&image("v2", 0, 6)).await;
    let unlucky = tokens["dev-01"].clone();
    for _ in 0..2 {
        let deployment = server.deploy(&release, "device:dev-01").await["id"]
            .as_i64()
            .unwrap();
        assert_eq!(offered(&server, &unlucky).await, Some(deployment));
        update(&server, &unlucky, deployment, "rolled_back").await;
    }
    let rollout = create(&server, &release, json!({"waves": ["100%"]})).await;
    let held = rollout["assignments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["device_name"] == "dev-01")
        .unwrap()
        .clone();
    assert_eq!(
        (
            held["state"].as_str(),
            held["reason"].as_str(),
            held["wave"].as_i64()
        ),
        (Some("skipped"), Some("penalty_box"), Some(0))
    );
    assert_eq!(
        rollout["held_back"],
        json!([{"device": "dev-01", "failures": 2}])
    );
    assert_eq!(rollout["total"]["held_back"], 1);
    assert_eq!(rollout["waves"], json!([2]));
    assert_eq!(offered(&server, &unlucky).await, None);
    // With the penalty box off, it is in.
    let again = create(
        &server,
        &release,
        json!({"waves": ["100%"], "penalty_failures": 0}),
    )
    .await;
    assert_eq!(again["held_back"], json!([]));
    assert_eq!(again["waves"], json!([3]));
}

#[tokio::test]
async fn the_device_set_is_fixed_at_start_and_newer_work_supersedes_older() {
    let server = server().await;
    let tokens = fleet(&server, 4).await;
    let v2 = server.release(&image("v2", 0, 7)).await;
    let v3 = server.release(&image("v3", 0, 8)).await;
    // dev-03 is updating to v3 in a plain deployment when the rollout starts.
    let plain = server.deploy(&v3, "device:dev-03").await["id"]
        .as_i64()
        .unwrap();
    assert_eq!(offered(&server, &tokens["dev-03"]).await, Some(plain));
    let rollout = create(&server, &v2, json!({"waves": ["100%"], "max_parallel": 0})).await;
    let deployment = rollout["deployment_id"].as_i64().unwrap();
    // Its wave opened: the rollout supersedes the older deployment.
    assert_eq!(offered(&server, &tokens["dev-03"]).await, Some(deployment));
    let old = server
        .admin_json(
            Method::GET,
            &format!("/api/v1/deployments/{plain}"),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(old["assignments"][0]["reason"], "superseded");
    // A device tagged after the start is not in the rollout.
    let late = server.device("late", &["fleet"]).await;
    assert_eq!(offered(&server, &late).await, None);
    assert_eq!(
        show(&server, &rollout["id"]).await["assignments"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    // A newer deployment supersedes a device's place in the rollout.
    let newer = server.deploy(&v3, "device:dev-00").await["id"]
        .as_i64()
        .unwrap();
    assert_eq!(offered(&server, &tokens["dev-00"]).await, Some(newer));
    let after = show(&server, &rollout["id"]).await;
    let row = after["assignments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["device_name"] == "dev-00")
        .unwrap()
        .clone();
    assert_eq!(
        (row["state"].as_str(), row["reason"].as_str()),
        (Some("cancelled"), Some("superseded"))
    );
    // The rollout's deployment is cancelled through the rollout only.
    let refused = server
        .admin(
            Method::POST,
            &format!("/api/v1/deployments/{deployment}/cancel"),
            None,
        )
        .await;
    assert_eq!(refused.status(), StatusCode::CONFLICT);
}

#[tokio::test]
async fn a_restarted_server_continues_the_rollout_where_it_stopped() {
    let server = server().await;
    let tokens = fleet(&server, 10).await;
    let release = server.release(&image("v2", 0, 9)).await;
    let rollout = create(
        &server,
        &release,
        json!({"waves": ["3", "100%"], "soak_ms": 0, "success_threshold": "100%", "max_parallel": 2}),
    )
    .await;
    let id = rollout["id"].clone();
    let deployment = rollout["deployment_id"].as_i64().unwrap();
    let first = devices_in(&rollout, 1, Some("pending"));
    assert_eq!(first.len(), 2);
    update(&server, &tokens[&first[0]], deployment, "confirmed").await;
    assert_eq!(offered(&server, &tokens[&first[1]]).await, Some(deployment));
    let before = show(&server, &id).await;

    let server = TestServer::open(server.stop().await, |c| c.rollout_tick_ms = 0).await;
    let reopened = show(&server, &id).await;
    assert_eq!(
        reopened["assignments"], before["assignments"],
        "nothing moved by the restart"
    );
    assert_eq!(
        offered(&server, &tokens[&first[1]]).await,
        Some(deployment),
        "its offer stands"
    );
    tick(&server, airlift_server::now_ms()).await;
    let third = devices_in(&show(&server, &id).await, 1, Some("pending"));
    assert_eq!(third.len(), 1, "one room free: wave 1's third device");
    let mut updated = vec![first[0].clone()];
    for name in [&first[1], &third[0]] {
        update(&server, &tokens[name], deployment, "confirmed").await;
        updated.push(name.clone());
    }
    // Waves 1 and 2 run to the end, two devices at a time.
    for _ in 0..10 {
        tick(&server, airlift_server::now_ms()).await;
        let now = show(&server, &id).await;
        if now["state"] == "finished" {
            break;
        }
        let pending = devices_in(&now, 2, Some("pending"));
        assert!(pending.len() <= 2);
        for name in pending {
            assert!(!updated.contains(&name), "{name} offered twice");
            update(&server, &tokens[&name], deployment, "confirmed").await;
            updated.push(name);
        }
    }
    let done = show(&server, &id).await;
    assert_eq!(done["state"], "finished", "{done:#}");
    assert_eq!(done["total"]["confirmed"], 10);
    updated.sort();
    updated.dedup();
    assert_eq!(updated.len(), 10);
}

#[tokio::test]
async fn a_stale_cached_offer_is_not_handed_to_a_device_whose_room_was_taken_back() {
    let server = server().await;
    let tokens = fleet(&server, 2).await;
    let release = server.release(&image("v2", 0, 11)).await;
    let rollout = create(&server, &release, json!({"waves": ["1"]})).await;
    let deployment = rollout["deployment_id"].as_i64().unwrap();
    let waiting = devices_in(&rollout, 2, Some("waiting"));
    // This instance's cache says pending (as another instance's could, or a
    // check-in that read it just before a pause): the database says waiting.
    let stale = airlift_server::store::Offer {
        deployment_id: deployment,
        state: "pending".into(),
        release: server
            .state
            .store
            .release(release["id"].as_i64().unwrap())
            .await
            .unwrap(),
    };
    server.state.offers.set(
        rollout["assignments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["device_name"] == waiting[0].as_str())
            .unwrap()["device_id"]
            .as_i64()
            .unwrap(),
        Some(std::sync::Arc::new(stale)),
    );
    assert_eq!(offered(&server, &tokens[&waiting[0]]).await, None);
    assert_eq!(
        offered(&server, &tokens[&waiting[0]]).await,
        None,
        "and the entry is gone"
    );
    let after = show(&server, &rollout["id"]).await;
    assert_eq!(devices_in(&after, 2, Some("waiting")), waiting);
}

#[tokio::test]
async fn rollout_requests_are_checked_and_refused_with_the_json_error_shape() {
    let server = server().await;
    server.device("dev-00", &["fleet"]).await;
    let release = server.release(&image("v2", 0, 10)).await;
    let id = release["id"].clone();
    let bad = StatusCode::BAD_REQUEST;
    for (body, status, code) in [
        (
            json!({"release": id, "target": "tags:x"}),
            bad,
            "bad_target",
        ),
        (
            json!({"release": id, "target": "devices:a,,b"}),
            bad,
            "bad_target",
        ),
        (
            json!({"release": id, "target": "all", "waves": ["10%", "5%"]}),
            bad,
            "bad_plan",
        ),
        (
            json!({"release": id, "target": "all", "waves": ["ten"]}),
            bad,
            "bad_json",
        ),
        (
            json!({"release": id, "target": "all", "success_threshold": "9"}),
            bad,
            "bad_plan",
        ),
        (
            json!({"release": 999, "target": "all"}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            json!({"release": id, "target": "devices:dev-00,ghost"}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ] {
        let response = server
            .admin(Method::POST, "/api/v1/rollouts", Some(body.clone()))
            .await;
        assert_eq!(response.status(), status, "{body}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(error_code(&answer), code, "{body}: {answer}");
    }
    let missing = server.admin(Method::GET, "/api/v1/rollouts/77", None).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let missing = server
        .admin(Method::POST, "/api/v1/rollouts/77/pause", None)
        .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    // An explicit device list; a draft keeps its release from being deleted.
    let draft = server
        .admin_json(
            Method::POST,
            "/api/v1/rollouts",
            Some(json!({"release": id, "target": "devices:dev-00", "start": false})),
            StatusCode::CREATED,
        )
        .await;
    assert_eq!(draft["target"], "devices:dev-00");
    let delete = server
        .admin(Method::DELETE, &format!("/api/v1/releases/{id}"), None)
        .await;
    assert_eq!(delete.status(), StatusCode::CONFLICT);
    let list = server
        .admin_json(Method::GET, "/api/v1/rollouts", None, StatusCode::OK)
        .await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(
        list[0]["plan"]["waves"],
        json!(["1%", "10%", "50%", "100%"])
    );
}

#[tokio::test]
async fn a_page_reads_a_rollout_without_its_device_set_and_scheduler_steps_that_change_it_notify_open_dashboards()
 {
    let server = server().await;
    let tokens = fleet(&server, 10).await;
    let release = server.release(&image("v2", 0, 1)).await;
    let rollout = create(
        &server,
        &release,
        json!({"waves": ["50%"], "failure_threshold": "1"}),
    )
    .await;
    let deployment = rollout["deployment_id"].as_i64().unwrap();
    // A page reads the rollout without its device set, or a page of it.
    let id = &rollout["id"];
    for (query, listed, total) in [("limit=0", 0, 10), ("state=pending&limit=2", 2, 5)] {
        let page = server
            .admin_json(
                Method::GET,
                &format!("/api/v1/rollouts/{id}?{query}"),
                None,
                StatusCode::OK,
            )
            .await;
        assert_eq!(
            page["assignments"].as_array().unwrap().len(),
            listed,
            "{query}"
        );
        assert_eq!(page["assignments_total"], total, "{query}");
        assert_eq!(
            page["total"]["devices"], 10,
            "{query}: the counts are the whole rollout's"
        );
    }
    let first = &tokens[&devices_in(&rollout, 1, Some("pending"))[0]];
    assert_eq!(offered(&server, first).await, Some(deployment));
    let mut watcher = server.state.changes.watch();
    server.state.flush_statuses().await.unwrap();
    watcher.borrow_and_update();
    tick(&server, airlift_server::now_ms()).await;
    assert!(
        !watcher.has_changed().unwrap(),
        "a step that moved nothing announces nothing"
    );

    update(&server, first, deployment, "rolled_back").await;
    watcher.borrow_and_update();
    tick(&server, airlift_server::now_ms()).await;
    assert_eq!(show(&server, &rollout["id"]).await["state"], "paused");
    assert!(
        watcher.has_changed().unwrap(),
        "the scheduler's pause reaches open dashboards"
    );
}
