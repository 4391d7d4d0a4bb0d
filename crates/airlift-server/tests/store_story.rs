//! One story written against the storage traits only, so every backend
//! (SQLite and PostgreSQL) runs the same test: add a backend by calling
//! each story with it. The PostgreSQL ones need the cluster
//! `scripts/services` starts (`./scripts/test` does).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use airlift_server::deploy::AssignmentState;
use airlift_server::store::sql::SqlStore;
use airlift_server::store::{
    DeviceFilter, DeviceOrder, DeviceStatus, EventOutcome, NewAssignment, NewEvent, NewRelease,
    Standing, Store, StoreError, Target, Write,
};

fn release(sha_byte: &str, chip_id: i64) -> NewRelease {
    NewRelease {
        sha256: sha_byte.repeat(32),
        size: 1234,
        chip_id,
        project: "story".into(),
        version: format!("v-{sha_byte}"),
        security_version: 1,
        key_id: "00".repeat(8),
        signed_by_server: true,
        manifest: vec![1, 2, 3],
    }
}

async fn story(store: Arc<dyn Store>) {
    // Releases: insert, idempotent insert, lookup.
    let (r1, created) = store.insert_release(release("aa", 5)).await.unwrap();
    assert!(created);
    let (again, created) = store.insert_release(release("aa", 5)).await.unwrap();
    assert!(!created);
    assert_eq!(again, r1);
    let (r2, _) = store.insert_release(release("bb", 5)).await.unwrap();
    assert_eq!(
        store
            .list_releases()
            .await
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect::<Vec<_>>(),
        [r2.id, r1.id]
    );
    assert_eq!(
        store.release_by_sha256(&"aa".repeat(32)).await.unwrap(),
        Some(r1.clone())
    );
    assert!(matches!(
        store.release(9999).await,
        Err(StoreError::NotFound(_))
    ));

    // Devices: names are unique, tokens find devices, tags select them.
    let a = store
        .create_device("a", &["lab".into(), "eu".into()], &[1; 32])
        .await
        .unwrap();
    let b = store
        .create_device("b", &["lab".into()], &[2; 32])
        .await
        .unwrap();
    let c = store.create_device("c", &[], &[3; 32]).await.unwrap();
    assert_eq!(a.tags, ["eu", "lab"]);
    assert!(matches!(
        store.create_device("a", &[], &[4; 32]).await,
        Err(StoreError::Conflict(_))
    ));
    let owner = store.device_by_token(&[2; 32]).await.unwrap().unwrap();
    assert_eq!(
        (owner.device_id, owner.name.as_str(), owner.standing),
        (b.id, "b", Standing::Active)
    );
    assert_eq!(store.device_by_token(&[9; 32]).await.unwrap(), None);
    let names = |devices: Vec<airlift_server::store::Device>| {
        devices.into_iter().map(|d| d.name).collect::<Vec<_>>()
    };
    assert_eq!(
        names(
            store
                .devices_for_target(&Target::Tag("lab".into()))
                .await
                .unwrap()
        ),
        ["a", "b"]
    );
    assert_eq!(
        names(store.devices_for_target(&Target::All).await.unwrap()),
        ["a", "b", "c"]
    );
    assert!(matches!(
        store.devices_for_target(&Target::Device("zz".into())).await,
        Err(StoreError::NotFound(_))
    ));
    let status = DeviceStatus {
        last_seen: Some(5),
        chip_id: Some(5),
        version: Some("v0".into()),
        ..DeviceStatus::default()
    };
    store
        .record_statuses(&[(c.id, status.clone())])
        .await
        .unwrap();
    assert_eq!(store.device(c.id).await.unwrap().status, status);

    // Deployments: assignments, offers, compare-and-set transitions, supersede, cancel.
    let pending = |device_id| NewAssignment {
        device_id,
        state: "pending".into(),
        reason: None,
    };
    let d1 = store
        .create_deployment(r1.id, "tag:lab", &[pending(a.id), pending(b.id)])
        .await
        .unwrap();
    assert_eq!(d1.state, "active");
    let offer = store.open_offer(a.id).await.unwrap().unwrap();
    assert_eq!(
        (offer.deployment_id, offer.state.as_str(), offer.release.id),
        (d1.id, "pending", r1.id)
    );
    assert!(store.open_offer(c.id).await.unwrap().is_none());
    let offered = Write::Transition {
        deployment_id: d1.id,
        device_id: a.id,
        from: "pending",
        to: "offered",
        reason: None,
    };
    let twice = [offered.clone(), offered];
    assert_eq!(
        store
            .record_writes(&twice, airlift_server::deploy::next_state)
            .await
            .unwrap(),
        [EventOutcome::Changed("offered"), EventOutcome::Stored],
        "compare-and-set"
    );
    assert!(store.artifact_assigned(a.id, &r1.sha256).await.unwrap());
    assert!(!store.artifact_assigned(c.id, &r1.sha256).await.unwrap());
    assert!(!store.artifact_assigned(a.id, &r2.sha256).await.unwrap());

    let d2 = store
        .create_deployment(r2.id, "device:a", &[pending(a.id)])
        .await
        .unwrap();
    let superseded = store.assignment(d1.id, a.id).await.unwrap().unwrap();
    assert_eq!(
        (superseded.state.as_str(), superseded.reason.as_deref()),
        ("cancelled", Some("superseded"))
    );
    assert_eq!(
        store.open_offer(a.id).await.unwrap().unwrap().deployment_id,
        d2.id
    );
    assert!(matches!(
        store.delete_release(r1.id).await,
        Err(StoreError::Conflict(_))
    ));

    store.cancel_deployment(d1.id).await.unwrap();
    let states: Vec<String> = store
        .assignments(d1.id)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.state)
        .collect();
    assert_eq!(states, ["cancelled", "cancelled"]);
    assert!(matches!(
        store.cancel_deployment(d1.id).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store
            .list_deployments()
            .await
            .unwrap()
            .iter()
            .map(|d| d.id)
            .collect::<Vec<_>>(),
        [d2.id, d1.id]
    );
    assert!(
        AssignmentState::parse(&store.assignment(d2.id, a.id).await.unwrap().unwrap().state)
            .is_some()
    );

    // Events and audit, newest first.
    for kind in ["downloading", "installed"] {
        let event = NewEvent {
            device_id: a.id,
            deployment_id: Some(d2.id),
            kind: kind.into(),
            reason: None,
            detail: None,
            age_ms: 0,
        };
        store.add_event(&event).await.unwrap();
    }
    let other = NewEvent {
        device_id: b.id,
        deployment_id: None,
        kind: "booted".into(),
        reason: None,
        detail: Some("x".into()),
        age_ms: 0,
    };
    store.add_event(&other).await.unwrap();
    let kinds = |events: Vec<airlift_server::store::StoredEvent>| {
        events.into_iter().map(|e| e.kind).collect::<Vec<_>>()
    };
    assert_eq!(
        kinds(store.events(Some(a.id), 10).await.unwrap()),
        ["installed", "downloading"]
    );
    assert_eq!(
        kinds(store.events(None, 2).await.unwrap()),
        ["booted", "installed"]
    );
    store
        .add_audit("admin", "POST /x", "thing:1", "{}")
        .await
        .unwrap();
    store
        .add_audit("admin", "DELETE /x", "thing:1", "{}")
        .await
        .unwrap();
    let audit = store.audit(10).await.unwrap();
    assert_eq!(
        audit.iter().map(|r| r.action.as_str()).collect::<Vec<_>>(),
        ["DELETE /x", "POST /x"]
    );

    // Credentials.
    assert_eq!(store.count_admin_tokens().await.unwrap(), 0);
    // The first admin token is added once, however many instances try.
    assert!(
        store
            .add_first_admin_token("admin", &[6; 32])
            .await
            .unwrap()
    );
    assert!(
        !store
            .add_first_admin_token("admin", &[9; 32])
            .await
            .unwrap()
    );
    assert_eq!(store.admin_token(&[9; 32]).await.unwrap(), None);
    assert_eq!(store.count_admin_tokens().await.unwrap(), 1);
    store.add_admin_token("ci", &[7; 32]).await.unwrap();
    // A shared setting: the first value stored wins.
    assert_eq!(store.setting_or_insert("k", "one").await.unwrap(), "one");
    assert_eq!(store.setting_or_insert("k", "two").await.unwrap(), "one");
    assert_eq!(
        store.admin_token(&[7; 32]).await.unwrap().as_deref(),
        Some("ci")
    );
    assert_eq!(store.admin_token(&[8; 32]).await.unwrap(), None);
    store
        .add_enrollment_secret("batch", &["b1".into()], Some("roof-*"), &[5; 32])
        .await
        .unwrap();
    assert!(matches!(
        store
            .add_enrollment_secret("batch", &[], None, &[6; 32])
            .await,
        Err(StoreError::Conflict(_))
    ));
    let secret = store.enrollment_secret(&[5; 32]).await.unwrap().unwrap();
    assert_eq!(
        (secret.tags, secret.name_pattern.as_deref()),
        (vec!["b1".to_owned()], Some("roof-*"))
    );
    store.delete_enrollment_secret("batch").await.unwrap();
    assert!(store.enrollment_secrets().await.unwrap().is_empty());
    assert!(matches!(
        store.delete_enrollment_secret("batch").await,
        Err(StoreError::NotFound(_))
    ));

    // An unused release can go.
    store.cancel_deployment(d2.id).await.unwrap();
    let (r3, _) = store.insert_release(release("cc", 0)).await.unwrap();
    store.delete_release(r3.id).await.unwrap();
    assert!(
        store
            .release_by_sha256(&"cc".repeat(32))
            .await
            .unwrap()
            .is_none()
    );
}

/// Device identity taken back (issue 16): a revoked device's token names it
/// but no longer works, a rotated token is replaced, a deleted device's row
/// stays readable under a name no live device can take; none of them keeps
/// an unfinished assignment, and none is in a new deployment.
async fn identity_story(store: Arc<dyn Store>) {
    let (release, _) = store.insert_release(release("ee", 5)).await.unwrap();
    let lab = |name: &str, token: u8| {
        let store = store.clone();
        let name = name.to_owned();
        async move {
            store
                .create_device(&name, &["lab".into()], &[token; 32])
                .await
                .unwrap()
        }
    };
    let (kept, gone, lost) = (
        lab("kept", 21).await,
        lab("gone", 22).await,
        lab("lost", 23).await,
    );
    let pending = |device_id| NewAssignment {
        device_id,
        state: "pending".into(),
        reason: None,
    };
    let d1 = store
        .create_deployment(
            release.id,
            "tag:lab",
            &[pending(kept.id), pending(gone.id), pending(lost.id)],
        )
        .await
        .unwrap();
    let state_of = |deployment, device| {
        let store = store.clone();
        async move {
            let a = store.assignment(deployment, device).await.unwrap().unwrap();
            (a.state, a.reason, a.device_name)
        }
    };
    let standing = |token: u8| {
        let store = store.clone();
        async move {
            let owner = store.device_by_token(&[token; 32]).await.unwrap().unwrap();
            (owner.name, owner.standing)
        }
    };
    let names = |devices: Vec<airlift_server::store::Device>| {
        devices.into_iter().map(|d| d.name).collect::<Vec<_>>()
    };

    // Revoked: listed, its token refused, its assignment over, in no target.
    let (revoked, cancelled) = store.revoke_device("lost", 1_000).await.unwrap();
    assert_eq!((revoked.revoked_at, cancelled), (Some(1_000), vec![d1.id]));
    assert_eq!(standing(23).await, ("lost".into(), Standing::Revoked));
    assert_eq!(
        state_of(d1.id, lost.id).await,
        (
            "cancelled".into(),
            Some("device_revoked".into()),
            "lost".into()
        )
    );
    assert!(store.open_offer(lost.id).await.unwrap().is_none());
    assert!(matches!(
        store.revoke_device("lost", 1_001).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        names(
            store
                .devices_for_target(&Target::Tag("lab".into()))
                .await
                .unwrap()
        ),
        ["gone", "kept"]
    );
    assert!(matches!(
        store
            .devices_for_target(&Target::Device("lost".into()))
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        names(store.list_devices().await.unwrap()),
        ["gone", "kept", "lost"]
    );

    // A new token replaces the old one and takes the device back.
    let back = store
        .rotate_device_token("lost", &[24; 32], 2_000)
        .await
        .unwrap();
    assert_eq!(back.revoked_at, None);
    assert_eq!(standing(23).await, ("lost".into(), Standing::Replaced));
    assert_eq!(standing(24).await, ("lost".into(), Standing::Active));
    assert_eq!(
        names(store.devices_for_target(&Target::All).await.unwrap()),
        ["gone", "kept", "lost"]
    );

    // Deleted: out of every list and count, its name free, its history kept.
    let event = NewEvent {
        device_id: gone.id,
        deployment_id: Some(d1.id),
        kind: "downloading".into(),
        reason: None,
        detail: None,
        age_ms: 0,
    };
    store.add_event(&event).await.unwrap();
    let (deleted, cancelled) = store.delete_device("gone", 3_000).await.unwrap();
    let tombstone = format!("gone~deleted-{}", gone.id);
    assert_eq!(
        (&deleted.name, deleted.deleted_at, &deleted.tags, cancelled),
        (&tombstone, Some(3_000), &Vec::<String>::new(), vec![d1.id])
    );
    assert_eq!(standing(22).await, (tombstone.clone(), Standing::Deleted));
    assert_eq!(names(store.list_devices().await.unwrap()), ["kept", "lost"]);
    let page = store
        .search_devices(&DeviceFilter::default(), DeviceOrder::Name, 10, 0)
        .await
        .unwrap();
    assert_eq!(page.total, 2);
    assert_eq!(store.fleet_counts(0).await.unwrap().devices, 2);
    assert_eq!(
        state_of(d1.id, gone.id).await,
        (
            "cancelled".into(),
            Some("device_deleted".into()),
            tombstone.clone()
        )
    );
    let history = store.events(Some(gone.id), 10).await.unwrap();
    assert_eq!(
        (history[0].device.as_str(), history[0].kind.as_str()),
        (tombstone.as_str(), "downloading")
    );
    assert!(matches!(
        store.device_by_name("gone").await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.device_by_name(&tombstone).await.unwrap().id, gone.id);
    for taken in [
        store.delete_device(&tombstone, 3_001).await.map(|_| ()),
        store.revoke_device(&tombstone, 3_001).await.map(|_| ()),
        store
            .rotate_device_token(&tombstone, &[25; 32], 3_001)
            .await
            .map(|_| ()),
        store
            .devices_for_target(&Target::Device(tombstone.clone()))
            .await
            .map(|_| ()),
    ] {
        assert!(matches!(taken, Err(StoreError::Conflict(_))), "{taken:?}");
    }
    let again = store.create_device("gone", &[], &[26; 32]).await.unwrap();
    assert_ne!(again.id, gone.id, "the name is free for a new device");

    // A deployment whose devices were read before one was revoked leaves
    // it no assignment it could never take.
    store.revoke_device("kept", 4_000).await.unwrap();
    let late = store
        .create_deployment(release.id, "device:kept", &[pending(kept.id)])
        .await
        .unwrap();
    assert_eq!(
        state_of(late.id, kept.id).await,
        (
            "cancelled".into(),
            Some("device_revoked".into()),
            "kept".into()
        )
    );
    // A replaced token of a device deleted since says so.
    store.delete_device("lost", 5_000).await.unwrap();
    assert_eq!(standing(23).await.1, Standing::Deleted);
}

/// Rollouts: a draft, its start with a fixed device set, scheduler steps,
/// operator commands, the penalty box's counts, and the scheduler's lease.
async fn rollout_story(store: Arc<dyn Store>) {
    use airlift_server::rollout::{Command, Plan, RolloutState, decide};
    use airlift_server::store::{NewRollout, WaveAssignment};

    let (release, _) = store.insert_release(release("dd", 5)).await.unwrap();
    let mut devices = Vec::new();
    for n in 0..5u8 {
        let device = store
            .create_device(&format!("r{n}"), &["fleet".into()], &[100 + n; 32])
            .await
            .unwrap();
        devices.push(device.id);
    }
    let plan: Plan = serde_json::from_value(serde_json::json!({
        "waves": ["2", "100%"], "soak_ms": 0, "success_threshold": "100%",
        "failure_threshold": "1", "deadline_ms": 1000, "max_parallel": 0, "penalty_failures": 2
    }))
    .unwrap();
    let draft = store
        .create_rollout(NewRollout {
            release_id: release.id,
            target: "tag:fleet".into(),
            plan: plan.clone(),
            created_by: "ci".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        (draft.state, draft.deployment_id, draft.opened),
        (RolloutState::Draft, None, 0)
    );
    assert_eq!(
        store.step_rollout(draft.id, 0, decide).await.unwrap(),
        None,
        "a draft does not step"
    );
    assert_eq!(store.active_rollouts().await.unwrap(), Vec::<i64>::new());

    let place = |device_id, wave, state, reason: Option<&str>| WaveAssignment {
        device_id,
        wave,
        state,
        reason: reason.map(str::to_owned),
    };
    let assignments = [
        place(devices[0], 1, "waiting", None),
        place(devices[1], 1, "waiting", None),
        place(devices[2], 2, "waiting", None),
        place(devices[3], 2, "waiting", None),
        place(devices[4], 0, "skipped", Some("penalty_box")),
    ];
    let started = store
        .start_rollout(draft.id, "ci", &[2, 4], &assignments, 10)
        .await
        .unwrap();
    assert_eq!(
        (started.state, started.opened, started.waves.clone()),
        (RolloutState::Running, 1, vec![2, 4])
    );
    let deployment = started.deployment_id.unwrap();
    assert!(matches!(
        store
            .start_rollout(draft.id, "ci", &[2, 4], &assignments, 11)
            .await,
        Err(StoreError::Conflict(_))
    ));
    let tallies = store.rollout_tallies(draft.id).await.unwrap();
    assert_eq!(
        (
            tallies[0].held_back,
            tallies[1].waiting(),
            tallies[2].waiting()
        ),
        (1, 2, 2)
    );
    assert!(
        store.open_offer(devices[0]).await.unwrap().is_none(),
        "waiting: not offered"
    );

    let step = store
        .step_rollout(draft.id, 20, decide)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(step.promoted, [devices[0], devices[1]]);
    assert_eq!(
        store
            .open_offer(devices[0])
            .await
            .unwrap()
            .unwrap()
            .deployment_id,
        deployment
    );
    assert_eq!(store.active_rollouts().await.unwrap(), [draft.id]);

    // An operator pause takes the offers back; resume accepts the failures so far.
    let (paused, unoffered) = store
        .command_rollout(draft.id, Command::Pause, "ci", 30)
        .await
        .unwrap();
    assert_eq!(paused.state, RolloutState::Paused);
    assert_eq!(paused.paused_by.as_deref(), Some("ci"));
    assert_eq!(unoffered, [devices[0], devices[1]]);
    assert!(matches!(
        store
            .command_rollout(draft.id, Command::Pause, "ci", 31)
            .await,
        Err(StoreError::Conflict(_))
    ));
    let (resumed, _) = store
        .command_rollout(draft.id, Command::Resume, "ci", 40)
        .await
        .unwrap();
    assert_eq!(
        (
            resumed.state,
            resumed.paused_by.clone(),
            resumed.accepted_failures
        ),
        (RolloutState::Running, None, 0)
    );
    let step = store
        .step_rollout(draft.id, 50, decide)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(step.promoted.len(), 2);

    // A device offered and silent past the deadline fails and pauses the rollout.
    let offered = Write::Transition {
        deployment_id: deployment,
        device_id: devices[0],
        from: "pending",
        to: "offered",
        reason: None,
    };
    store
        .record_writes(&[offered], airlift_server::deploy::next_state)
        .await
        .unwrap();
    let late = airlift_server::now_ms() + 1000;
    let step = store
        .step_rollout(draft.id, late, decide)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(step.failed, [devices[0]]);
    assert_eq!(step.rollout.state, RolloutState::Paused);
    assert_eq!(step.rollout.paused_by.as_deref(), Some("failure_threshold"));
    let failed = store
        .assignment(deployment, devices[0])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (failed.state.as_str(), failed.reason.as_deref()),
        ("failed", Some("deadline"))
    );
    assert_eq!(
        store.release_failures(release.id).await.unwrap()[&devices[0]],
        1
    );

    let (cancelled, unoffered) = store
        .command_rollout(draft.id, Command::Cancel, "ci", late + 1)
        .await
        .unwrap();
    assert_eq!(cancelled.state, RolloutState::Cancelled);
    assert_eq!(unoffered.len(), 3, "the other wave 1 device and wave 2");
    assert_eq!(
        store.deployment(deployment).await.unwrap().state,
        "cancelled"
    );
    let kinds: Vec<String> = store
        .rollout_events(draft.id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            "created",
            "started",
            "paused",
            "resumed",
            "deadline",
            "paused",
            "cancelled"
        ]
    );
    assert_eq!(store.list_rollouts().await.unwrap()[0].id, draft.id);
    assert_eq!(store.rollout(draft.id).await.unwrap(), cancelled);

    // One holder of a lease at a time, until it expires.
    for (holder, now, held) in [
        ("a", 1_000, true),
        ("b", 1_001, false),
        ("a", 1_400, true),
        ("b", 1_899, false),
        ("b", 1_900, true),
        ("a", 1_901, false),
    ] {
        assert_eq!(
            store
                .try_lease("scheduler", holder, now, 500)
                .await
                .unwrap(),
            held,
            "{holder} at {now}"
        );
    }
}

async fn sqlite() -> (tempfile::TempDir, SqlStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqlStore::open_sqlite(dir.path()).await.unwrap();
    (dir, store)
}

async fn postgres() -> SqlStore {
    let url = common::postgres_database().await;
    SqlStore::connect_postgres(&url, "instance-story")
        .await
        .unwrap()
}

#[tokio::test]
async fn sqlite_store_tells_the_rollout_story() {
    let (_dir, store) = sqlite().await;
    rollout_story(Arc::new(store)).await;
}

#[tokio::test]
async fn postgres_store_tells_the_rollout_story() {
    rollout_story(Arc::new(postgres().await)).await;
}

#[tokio::test]
async fn sqlite_store_takes_device_identities_back_issue_16() {
    let (_dir, store) = sqlite().await;
    identity_story(Arc::new(store)).await;
}

#[tokio::test]
async fn postgres_store_takes_device_identities_back_issue_16() {
    identity_story(Arc::new(postgres().await)).await;
}

#[tokio::test]
async fn sqlite_store_tells_the_whole_story() {
    let (dir, store) = sqlite().await;
    story(Arc::new(store.clone())).await;
    store.close().await;
    // Reopening applies no migration twice and keeps the data.
    let reopened = SqlStore::open_sqlite(dir.path()).await.unwrap();
    use airlift_server::store::ReleaseStore;
    assert_eq!(reopened.list_releases().await.unwrap().len(), 2);
}

#[tokio::test]
async fn postgres_store_tells_the_whole_story() {
    let url = common::postgres_database().await;
    let store = SqlStore::connect_postgres(&url, "instance-a")
        .await
        .unwrap();
    story(Arc::new(store.clone())).await;
    store.close().await;
    // Another instance starting on the database applies no migration twice.
    let other = SqlStore::connect_postgres(&url, "instance-b")
        .await
        .unwrap();
    use airlift_server::store::ReleaseStore;
    assert_eq!(other.list_releases().await.unwrap().len(), 2);
}

#[tokio::test]
async fn sqlite_statuses_of_a_large_fleet_are_written_each_to_its_own_device() {
    let (_dir, store) = sqlite().await;
    statuses_story(Arc::new(store)).await;
}

#[tokio::test]
async fn postgres_statuses_of_a_large_fleet_are_written_each_to_its_own_device() {
    statuses_story(Arc::new(postgres().await)).await;
}

async fn statuses_story(store: Arc<dyn Store>) {
    let mut statuses = Vec::new();
    // More than one statement's worth (500), with a partial last chunk.
    for n in 0..1203u32 {
        let mut token = [0u8; 32];
        token[..4].copy_from_slice(&n.to_le_bytes());
        let device = store
            .create_device(&format!("d{n}"), &[], &token)
            .await
            .unwrap();
        let status = DeviceStatus {
            last_seen: Some(i64::from(n) + 1),
            chip_id: (n % 2 == 0).then_some(5),
            project: Some("fleet".into()),
            version: Some(format!("v{n}")),
            sha256: Some(format!("{n:064x}")),
            security_version: Some(i64::from(n % 3)),
            slot: Some(i64::from(n % 2)),
            state: Some("idle".into()),
            boot_count: Some(i64::from(n)),
        };
        statuses.push((device.id, status));
    }
    store.record_statuses(&statuses).await.unwrap();
    for (id, status) in [
        &statuses[0],
        &statuses[499],
        &statuses[500],
        &statuses[1202],
    ] {
        assert_eq!(&store.device(*id).await.unwrap().status, status);
    }
    // A newer status replaces every field, unknown ones included.
    let (id, _) = &statuses[700];
    let newer = DeviceStatus {
        last_seen: Some(9_999),
        version: Some("v-new".into()),
        ..DeviceStatus::default()
    };
    store
        .record_statuses(&[(*id, newer.clone())])
        .await
        .unwrap();
    assert_eq!(store.device(*id).await.unwrap().status, newer);
    assert_eq!(
        store.device(statuses[701].0).await.unwrap().status,
        statuses[701].1
    );
    // A status flushed late (another instance's buffer, say) never
    // overwrites a newer one.
    let older = DeviceStatus {
        last_seen: Some(9_000),
        version: Some("v-old".into()),
        ..DeviceStatus::default()
    };
    store
        .record_statuses(&[(*id, older), statuses[701].clone()])
        .await
        .unwrap();
    assert_eq!(store.device(*id).await.unwrap().status, newer);
    assert_eq!(
        store.device(statuses[701].0).await.unwrap().status,
        statuses[701].1
    );
}
