//! The wire types as JSON: round trips through serde_json (server, agent) and
//! serde-json-core (firmware, no allocator), and the documented field names.
#![allow(clippy::unwrap_used)]

use core::fmt::Debug;

use airlift_protocol::{
    CheckIn, CheckInAnswer, EngineState, EnrollAnswer, EnrollRequest, ErrorAnswer, ErrorCode,
    Event, EventAck, EventBatch, EventBatchAck, EventKind, LastResult, Reason, RunningImage,
    TOKEN_REVOKED, Update,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn s<const N: usize>(text: &str) -> heapless::String<N> {
    heapless::String::try_from(text).unwrap()
}

fn check_in() -> CheckIn {
    CheckIn {
        chip_id: 5,
        running: RunningImage {
            project: s("hello_world"),
            version: s("v1"),
            sha256: s(&"ab".repeat(32)),
            security_version: 2,
            slot: 1,
        },
        state: EngineState::Trial,
        boot_count: 1,
        last_result: Some(LastResult {
            deployment: Some(7),
            kind: EventKind::RolledBack,
            reason: Some(Reason::BootFailed),
            detail: Some(s("2.0.0 did not confirm within 3 boots")),
        }),
        long_poll_seconds: Some(60),
    }
}

fn answer() -> CheckInAnswer {
    CheckInAnswer {
        poll_seconds: 60,
        update: Some(Update {
            deployment: 7,
            manifest: s(&"QUxNMQ".repeat(48)),
            url: s(&format!("/api/v1/device/artifacts/{}", "cd".repeat(32))),
            size: 151_504,
            sha256: s(&"cd".repeat(32)),
            version: s("v2"),
        }),
        device: Some(s("kitchen")),
    }
}

fn event() -> Event {
    Event {
        deployment: Some(7),
        kind: EventKind::Failed,
        reason: Some(Reason::SecurityVersion),
        detail: Some(s(
            "image security version 1 is below the device's minimum 2",
        )),
        age_ms: None,
    }
}

fn enroll() -> EnrollRequest {
    let mut tags = heapless::Vec::new();
    tags.push(s("lab")).unwrap();
    tags.push(s("canary")).unwrap();
    EnrollRequest {
        secret: s("fleet-secret"),
        name: s("esp-0a1b2c"),
        tags,
    }
}

/// Both JSON implementations produce the same text and read it back to the same value.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: T) {
    let std_json = serde_json::to_string(&value).unwrap();
    assert_eq!(serde_json::from_str::<T>(&std_json).unwrap(), value);

    let mut buf = [0u8; 2048];
    let n = serde_json_core::to_slice(&value, &mut buf).unwrap();
    let (parsed, used) = serde_json_core::from_slice::<T>(&buf[..n]).unwrap();
    assert_eq!(used, n);
    assert_eq!(parsed, value);
    let (from_std, _) = serde_json_core::from_slice::<T>(std_json.as_bytes()).unwrap();
    assert_eq!(from_std, value, "firmware parses what the server writes");
}

#[test]
fn every_message_round_trips_through_serde_json_and_serde_json_core() {
    round_trip(check_in());
    round_trip(CheckIn {
        last_result: None,
        state: EngineState::Idle,
        long_poll_seconds: None,
        ..check_in()
    });
    round_trip(answer());
    round_trip(CheckInAnswer {
        poll_seconds: 5,
        update: None,
        device: None,
    });
    round_trip(event());
    round_trip(Event {
        deployment: None,
        kind: EventKind::Booted,
        reason: None,
        detail: None,
        age_ms: None,
    });
    round_trip(EventAck { accepted: true });
    let mut batch = EventBatch::new();
    batch.push(event()).unwrap();
    batch
        .push(Event {
            deployment: Some(7),
            kind: EventKind::Rebooting,
            reason: None,
            detail: None,
            age_ms: Some(1_250),
        })
        .unwrap();
    round_trip(batch);
    let mut accepted = heapless::Vec::new();
    accepted.extend_from_slice(&[true, false]).unwrap();
    round_trip(EventBatchAck { accepted });
    round_trip(enroll());
    round_trip(EnrollAnswer {
        name: s("esp-0a1b2c"),
        token: s(&"f0".repeat(32)),
    });
}

#[test]
fn a_device_reads_the_code_of_a_refusal_and_skips_its_message_issue_16() {
    round_trip(ErrorAnswer {
        error: ErrorCode {
            code: s(TOKEN_REVOKED),
        },
    });
    let body = br#"{"error":{"code":"token_revoked","message":"this device was revoked: it needs a new token (a long message no device has room for, \"quoted\" and all)"}}"#;
    let server: ErrorAnswer = serde_json::from_slice(body).unwrap();
    let mut scratch = [0u8; airlift_protocol::UNESCAPE_BUFFER_LEN];
    let (device, _) =
        serde_json_core::from_slice_escaped::<ErrorAnswer>(body, &mut scratch).unwrap();
    assert_eq!(device, server);
    assert!(device.is_token_revoked());
    let other: ErrorAnswer = serde_json::from_str(
        r#"{"error":{"code":"unauthorized","message":"unknown device token"}}"#,
    )
    .unwrap();
    assert!(!other.is_token_revoked());
}

fn check_json<T: Serialize>(value: &T, expected: serde_json::Value) {
    assert_eq!(serde_json::to_value(value).unwrap(), expected);
}

#[test]
fn field_names_and_enum_spellings_match_the_documentation() {
    check_json(
        &event(),
        serde_json::json!({"deployment": 7, "kind": "failed", "reason": "security_version",
            "detail": "image security version 1 is below the device's minimum 2"}),
    );
    check_json(
        &CheckInAnswer {
            poll_seconds: 30,
            update: None,
            device: None,
        },
        serde_json::json!({"poll_seconds": 30, "update": null}),
    );
    check_json(
        &check_in(),
        serde_json::json!({"chip_id": 5, "running": {"project": "hello_world", "version": "v1",
            "sha256": "ab".repeat(32), "security_version": 2, "slot": 1}, "state": "trial",
            "boot_count": 1, "last_result": {"deployment": 7, "kind": "rolled_back",
            "reason": "boot_failed", "detail": "2.0.0 did not confirm within 3 boots"},
            "long_poll_seconds": 60}),
    );
}

/// A check-in and its answer as the first devices and servers wrote them,
/// before long polls and device names (issue 17).
mod first_release {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Serialize, Deserialize)]
    pub struct CheckIn {
        pub chip_id: u16,
        pub running: super::RunningImage,
        pub state: super::EngineState,
        pub boot_count: u32,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    pub struct CheckInAnswer {
        pub poll_seconds: u32,
        pub update: Option<super::Update>,
    }
}

#[test]
fn issue_17_older_devices_and_newer_servers_still_understand_each_other() {
    // An older device's check-in: no long poll asked for.
    let old = first_release::CheckIn {
        chip_id: 5,
        running: check_in().running,
        state: EngineState::Idle,
        boot_count: 0,
    };
    let parsed: CheckIn = serde_json::from_str(&serde_json::to_string(&old).unwrap()).unwrap();
    assert_eq!(parsed.long_poll_seconds, None);
    // A newer answer, read by an older device's parser: the name is skipped.
    let newer = serde_json::to_string(&answer()).unwrap();
    assert!(newer.contains(r#""device":"kitchen""#), "{newer}");
    let (read, _) =
        serde_json_core::from_slice::<first_release::CheckInAnswer>(newer.as_bytes()).unwrap();
    assert_eq!(
        read,
        first_release::CheckInAnswer {
            poll_seconds: 60,
            update: answer().update,
        }
    );
    // A newer check-in, read by an older server's types: the long poll is skipped.
    let newer = serde_json::to_string(&check_in()).unwrap();
    let read: first_release::CheckIn = serde_json::from_str(&newer).unwrap();
    assert_eq!(read.chip_id, 5);
}

#[test]
fn event_kind_and_reason_names_are_the_serde_names() {
    let kinds = [
        EventKind::Downloading,
        EventKind::Verifying,
        EventKind::Installed,
        EventKind::Rebooting,
        EventKind::Booted,
        EventKind::Confirmed,
        EventKind::RolledBack,
        EventKind::Failed,
    ];
    for kind in kinds {
        assert_eq!(
            serde_json::to_value(kind).unwrap(),
            kind.as_str(),
            "{kind:?}"
        );
    }
    let reasons = [
        Reason::Verification,
        Reason::Signature,
        Reason::Chip,
        Reason::TooBig,
        Reason::SecurityVersion,
        Reason::Download,
        Reason::Flash,
        Reason::BootFailed,
        Reason::Other,
    ];
    for reason in reasons {
        assert_eq!(
            serde_json::to_value(reason).unwrap(),
            reason.to_string(),
            "{reason:?}"
        );
    }
    for state in [
        EngineState::Idle,
        EngineState::Downloading,
        EngineState::Installed,
        EngineState::Trial,
    ] {
        assert_eq!(
            serde_json::to_value(state).unwrap(),
            state.as_str(),
            "{state:?}"
        );
    }
    let finals: Vec<_> = kinds.iter().filter(|k| k.is_final()).collect();
    assert_eq!(
        finals,
        [
            &EventKind::Confirmed,
            &EventKind::RolledBack,
            &EventKind::Failed
        ]
    );
}

#[test]
fn optional_fields_may_be_omitted_by_a_small_client() {
    let json = br#"{"kind":"booted"}"#;
    let (event, _) = serde_json_core::from_slice::<Event>(json).unwrap();
    assert_eq!(
        event,
        Event {
            deployment: None,
            kind: EventKind::Booted,
            reason: None,
            detail: None,
            age_ms: None
        }
    );

    let json = br#"{"chip_id":0,"running":{"project":"p","version":"1","sha256":"00","security_version":0,"slot":0},"state":"idle"}"#;
    let (check_in, _) = serde_json_core::from_slice::<CheckIn>(json).unwrap();
    assert_eq!(check_in.boot_count, 0);
    assert_eq!(check_in.last_result, None);
}

#[test]
fn oversized_strings_are_rejected_not_truncated() {
    let long_version = "v".repeat(airlift_protocol::LABEL_MAX + 1);
    let json = format!(
        r#"{{"chip_id":0,"running":{{"project":"p","version":"{long_version}","sha256":"00","security_version":0,"slot":0}},"state":"idle"}}"#
    );
    assert!(serde_json::from_str::<CheckIn>(&json).is_err());
    assert!(serde_json_core::from_slice::<CheckIn>(json.as_bytes()).is_err());
}

#[test]
fn unknown_event_kinds_are_rejected() {
    assert!(serde_json::from_str::<Event>(r#"{"kind":"exploded"}"#).is_err());
}

#[test]
fn a_device_reads_escaped_strings_as_the_server_means_them() {
    // JSON may escape any string character; a proxy or another server
    // implementation may do so. The device must read what serde_json reads.
    let json = br#"{"poll_seconds":5,"update":{"deployment":1,"manifest":"QUxNMQ==","url":"\/api\/v1\/device\/artifacts\/ab","size":1,"sha256":"ab","version":"caf\u00e9 \"2\""}}"#;
    let server: CheckInAnswer = serde_json::from_slice(json).unwrap();
    let mut scratch = [0u8; airlift_protocol::UNESCAPE_BUFFER_LEN];
    let (device, _) =
        serde_json_core::from_slice_escaped::<CheckInAnswer>(json, &mut scratch).unwrap();
    assert_eq!(device, server);
    let update = device.update.unwrap();
    assert_eq!(update.url.as_str(), "/api/v1/device/artifacts/ab");
    assert_eq!(update.version.as_str(), "café \"2\"");
    // Plain from_slice would have kept the escapes: the reason for the rule.
    let (raw, _) = serde_json_core::from_slice::<CheckInAnswer>(json).unwrap();
    assert_eq!(
        raw.update.unwrap().url.as_str(),
        r"\/api\/v1\/device\/artifacts\/ab"
    );
}
