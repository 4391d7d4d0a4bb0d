//! The device page's contract, as the agent and the firmware both answer
//! it: which request is which, the password, what an upload must carry,
//! the error bodies, and the status, which serializes to the same JSON
//! with serde_json (agent) and serde-json-core (firmware).
#![allow(clippy::unwrap_used)]

mod common;

use airlift_client::notes::NoteStore;
use airlift_client::page::{
    ApiError, INDEX_HTML, Installed, MESSAGE_MAX, ManifestBuffer, PagePassword, Route, upload_body,
    upload_manifest,
};
use airlift_client::settings::SERVER_MAX;
use airlift_client::status::{
    All, BootLogRow, DeviceState, HistoryReport, PageStatus, Report, RunningInfo, SMALL_BOOT_LOG,
    SMALL_STATUS_JSON_MAX, Small,
};
use airlift_format::manifest::{MAX_SIGNED_LEN, base64_encode};
use airlift_protocol::{EventKind, Reason};
use common::*;
use serde_json::{Value, json};

#[test]
fn requests_are_routed_by_method_and_path_and_only_the_api_needs_the_password() {
    let check = |method, path, expected: Route, password: bool| {
        let route = Route::of(method, path);
        assert_eq!(route, expected, "{method} {path}");
        assert_eq!(route.needs_password(), password, "{method} {path}");
    };
    check("GET", "/", Route::Index, false);
    check("HEAD", "/", Route::Index, false);
    check("GET", "/api/status", Route::Status, true);
    check("POST", "/api/upload", Route::Upload, true);
    check("POST", "/api/pull", Route::Pull, true);
    check("POST", "/api/reboot", Route::Reboot, true);
    check("POST", "/api/status", Route::MethodNotAllowed, true);
    check("GET", "/api/reboot", Route::MethodNotAllowed, true);
    check("GET", "/favicon.ico", Route::NotFound, false);
    check("GET", "/api/", Route::NotFound, false);
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64_encode(format!("{user}:{password}").as_bytes())
    )
}

#[test]
fn the_password_is_taken_as_bearer_or_basic_with_any_user_and_refused_with_the_right_challenge() {
    let p = PagePassword::new("s3cret pass");
    let ok = |h: &str| p.check(Some(h)).is_ok();
    assert!(ok("Bearer s3cret pass"));
    assert!(
        ok("Bearer  s3cret pass "),
        "trimmed like the agent always did"
    );
    assert!(ok(&basic("admin", "s3cret pass")));
    assert!(ok(&basic("", "s3cret pass")));
    assert!(!ok(&basic("who:ever", "x")));

    let refused = |h: Option<&str>| p.check(h).unwrap_err();
    let wrong = refused(Some("Bearer s3cret"));
    assert_eq!((wrong.status, wrong.code), (401, "unauthorized"));
    assert_eq!(
        wrong.message.as_str(),
        "wrong password for this device page"
    );
    assert_eq!(wrong.challenge, Some("Bearer realm=\"airlift device\""));

    let wrong_basic = refused(Some(&basic("u", "s3cret pass!")));
    assert_eq!(
        wrong_basic.challenge,
        Some("Basic realm=\"airlift device\"")
    );
    assert_eq!(
        wrong_basic.message.as_str(),
        "wrong password for this device page"
    );

    for missing in [None, Some("Basic !!!"), Some("Digest x")] {
        let e = refused(missing);
        assert_eq!(
            e.message.as_str(),
            "this device page needs its password (HTTP Basic with any user name, or Bearer)",
            "{missing:?}"
        );
        assert_eq!(e.challenge, Some("Basic realm=\"airlift device\""));
    }
    // Only the digest is kept; the same password gives the same digest.
    assert_eq!(
        PagePassword::from_sha256(p.sha256()),
        PagePassword::new("s3cret pass")
    );
    assert_eq!(format!("{p:?}"), "PagePassword(<redacted>)");
}

#[test]
fn an_upload_carries_its_signed_manifest_in_base64_and_a_body() {
    let mut buf: ManifestBuffer = [0; MAX_SIGNED_LEN + 8];
    let manifest = signed(&image("2.0.0"));
    let header = base64_encode(&manifest);
    assert_eq!(
        upload_manifest(Some(&header), &mut buf).unwrap(),
        &manifest[..]
    );

    let refused = |h: Option<&str>| {
        let mut buf: ManifestBuffer = [0; MAX_SIGNED_LEN + 8];
        let e = upload_manifest(h, &mut buf).unwrap_err();
        assert_eq!((e.status, e.code), (400, "signature"));
        e.message.as_str().to_owned()
    };
    assert!(refused(None).starts_with("missing X-Airlift-Manifest header"));
    assert!(refused(Some("not base64!")).starts_with("X-Airlift-Manifest is not base64"));
    let image_as_manifest = base64_encode(&image("2.0.0"));
    let m = refused(Some(&image_as_manifest));
    assert!(
        m.contains("not the image") && m.contains(&MAX_SIGNED_LEN.to_string()),
        "{m}"
    );

    let empty = upload_body(0).unwrap_err();
    assert_eq!((empty.status, empty.code), (400, "verification"));
    assert!(upload_body(1).is_ok());
}

#[test]
fn answers_have_the_servers_error_shape() {
    let body = |e: &ApiError| serde_json::to_value(e.body()).unwrap();
    let refused = ApiError::refused(Reason::Chip, "image is for esp32c6");
    assert_eq!(refused.status, 422);
    assert_eq!(
        body(&refused),
        json!({"error": {"code": "chip", "message": "image is for esp32c6"}})
    );
    assert_eq!(ApiError::busy().status, 503);
    assert_eq!(ApiError::stopped().code, "stopped");
    assert_eq!(ApiError::reset().code, "reset");
    assert_eq!(ApiError::not_found().status, 404);
    assert_eq!(ApiError::method_not_allowed().status, 405);
    assert_eq!(
        serde_json::to_value(Installed {
            installed: "2.0.0",
            rebooting: true
        })
        .unwrap(),
        json!({"installed": "2.0.0", "rebooting": true})
    );
}

#[test]
fn the_page_is_web_device_index_html() {
    let file = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../web/device/index.html"
    ))
    .unwrap();
    assert_eq!(INDEX_HTML, file);
}

/// A device with some history: 2.0.0 installed and confirmed, 3.0.0 failed
/// to verify, a few boots.
fn lived_in() -> Rig {
    let mut rig = Rig::new();
    let mut lines = Lines::default();
    let (mut client, _) = rig.power_on(&mut lines);
    let new = image("2.0.0");
    rig.install(&mut client, &update(1, &new), &new);
    let (mut client, _) = rig.power_on(&mut lines);
    let clock = rig.clock;
    client.confirm(&mut rig.dev(), clock, &mut lines).unwrap();
    let bad = image("3.0.0");
    let mut truncated = bad.clone();
    truncated.truncate(bad.len() / 2);
    {
        let mut dev = rig.dev();
        let attempt = client
            .begin_assigned(&mut dev, &update(2, &bad), clock, &mut ())
            .unwrap()
            .unwrap();
        let mut session = client.start(&mut dev, &attempt, 0, &mut ()).unwrap();
        session.write_all(&truncated).unwrap();
        let failure = session.finish().unwrap_err();
        drop(session);
        client
            .install_failed(&mut dev, &attempt, failure, clock, &mut ())
            .unwrap();
    }
    rig.power_on(&mut lines);
    rig
}

fn page<'a, R>(running: &'a RunningInfo, flash: &'a R) -> PageStatus<'a, R> {
    PageStatus {
        name: "board \"7\"",
        running: Some(running),
        state: DeviceState::Idle,
        server: Some("http://10.0.0.2:8080"),
        last_checkin: Some(1_700_000_100),
        last_error: None,
        boots: 5,
        flash: Some(flash),
    }
}

#[test]
fn the_status_is_the_same_json_from_serde_json_on_a_pc_and_serde_json_core_on_a_chip() {
    let mut rig = lived_in();
    let store = NoteStore::new(rig.layout.records.unwrap()).unwrap();
    let all: Report<All> = Report::read(&mut rig.dev(), Some(&store)).unwrap();
    let small: Report<Small> = Report::read(&mut rig.dev(), Some(&store)).unwrap();
    assert!(
        all.boot_log.len() <= SMALL_BOOT_LOG,
        "this device keeps few boots"
    );
    let (client, _) = rig.power_on(&mut Lines::default());
    let running = RunningInfo::from(client.running().unwrap());

    let pc = serde_json::to_value(page(&running, &all)).unwrap();
    let mut buf = vec![0u8; SMALL_STATUS_JSON_MAX];
    let n = serde_json_core::to_slice(&page(&running, &small), &mut buf).unwrap();
    let chip: Value = serde_json::from_slice(&buf[..n]).unwrap();
    assert_eq!(chip, pc);

    // What the page reads is there, with the names the agent always used.
    assert_eq!(pc["state"], "idle");
    assert_eq!(pc["running"]["version"], "2.0.0");
    assert_eq!(pc["running"]["slot"], "ota_1");
    assert_eq!(pc["flash"]["otadata"]["selected"], "ota_1");
    assert_eq!(pc["flash"]["slots"][2]["content"], "image");
    assert_eq!(
        pc["flash"]["engine"]["trusted_keys"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let history = pc["flash"]["notes"]["history"].as_array().unwrap();
    let results: Vec<_> = history.iter().map(|h| h["result"].clone()).collect();
    assert_eq!(results, [json!("confirmed"), json!("failed")]);
    assert_eq!(history[1]["reason"], "verification");
    assert!(history[0]["at"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(pc["flash"]["boot_log"][0]["outcome"], "confirmed");
    assert_eq!(pc["flash"]["partitions"][0]["label"], "nvs");
}

#[test]
fn the_firmwares_page_keeps_the_newest_boots() {
    let mut rig = Rig::new();
    for _ in 0..SMALL_BOOT_LOG + 5 {
        rig.power_on(&mut Lines::default());
    }
    let store = NoteStore::new(rig.layout.records.unwrap()).unwrap();
    let all: Report<All> = Report::read(&mut rig.dev(), Some(&store)).unwrap();
    let small: Report<Small> = Report::read(&mut rig.dev(), Some(&store)).unwrap();
    assert_eq!(small.boots_logged, all.boot_log.len() as u64);
    assert_eq!(small.boot_log.0.len(), SMALL_BOOT_LOG);
    assert_eq!(
        small.boot_log.0[..],
        all.boot_log[all.boot_log.len() - SMALL_BOOT_LOG..]
    );
}

#[test]
fn the_largest_status_the_firmware_can_have_fits_its_buffer() {
    let mut rig = lived_in();
    let store = NoteStore::new(rig.layout.records.unwrap()).unwrap();
    let mut small: Report<Small> = Report::read(&mut rig.dev(), Some(&store)).unwrap();
    let long = |n: usize| "v".repeat(n);
    // Every list full, every text at its longest.
    while small.partitions.0.len() < small.partitions.0.capacity() {
        let mut row = small.partitions.0[0].clone();
        row.label = long(16).as_str().try_into().unwrap();
        row.kind = long(16).as_str().try_into().unwrap();
        row.subtype = long(16).as_str().try_into().unwrap();
        row.offset = u32::MAX;
        row.size = u32::MAX;
        small.partitions.0.push(row).unwrap();
    }
    for slot in small.slots.0.iter_mut() {
        slot.project = Some(long(32).as_str().try_into().unwrap());
        slot.version = Some(long(32).as_str().try_into().unwrap());
        slot.security_version = Some(u32::MAX);
        slot.chip = Some("esp32c3");
        slot.sha256 = Some(long(64).as_str().try_into().unwrap());
        slot.image_len = Some(u32::MAX);
        slot.error = Some(long(96).as_str().try_into().unwrap());
    }
    let boot = BootLogRow {
        timestamp: u64::MAX,
        slot: long(16).as_str().try_into().unwrap(),
        outcome: "bootloader_fallback",
        attempt: u8::MAX,
        version: long(32).as_str().try_into().unwrap(),
        sha_prefix: long(16).as_str().try_into().unwrap(),
    };
    while !small.boot_log.0.is_full() {
        small.boot_log.0.push(boot.clone()).unwrap();
    }
    let entry = HistoryReport {
        at: u64::MAX,
        version: long(32).as_str().try_into().unwrap(),
        sha256: long(64).as_str().try_into().unwrap(),
        source: "upload",
        deployment: Some(u64::MAX),
        result: EventKind::RolledBack,
        reason: Some(Reason::SecurityVersion),
        detail: long(128).as_str().try_into().unwrap(),
    };
    while !small.notes.history.0.is_full() {
        small.notes.history.0.push(entry.clone()).unwrap();
    }
    let running = RunningInfo {
        slot: long(16).as_str().try_into().unwrap(),
        project: long(32).as_str().try_into().unwrap(),
        version: long(32).as_str().try_into().unwrap(),
        sha256: long(64).as_str().try_into().unwrap(),
        security_version: u32::MAX,
        chip_id: u16::MAX,
        confirmed: false,
        attempt: u8::MAX,
    };
    let mut status = page(&running, &small);
    let (name, server, error) = (long(64), long(SERVER_MAX), long(MESSAGE_MAX));
    status.name = &name;
    status.server = Some(&server);
    status.last_error = Some(&error);
    status.last_checkin = Some(u64::MAX);
    status.boots = u64::MAX;
    let mut buf = vec![0u8; SMALL_STATUS_JSON_MAX];
    let n = serde_json_core::to_slice(&status, &mut buf).unwrap();
    assert!(n <= SMALL_STATUS_JSON_MAX);
}

#[test]
fn a_streamed_upload_that_cannot_resume_asks_for_the_upload_again_in_full() {
    let failure = airlift_client::Failure::upload_again(1_572_864);
    assert_eq!(failure.reason(), Reason::Download);
    let message = failure.to_string();
    assert!(
        message.contains("1572864") && message.ends_with("upload again"),
        "not cut: {message}"
    );
}

#[test]
fn only_the_pages_own_requests_may_change_something() {
    use airlift_client::page::own_request;
    let host = Some("192.168.1.7");
    assert!(own_request(true, false, None, host), "Bearer");
    assert!(own_request(false, true, None, host), "X-Airlift-CSRF");
    assert!(own_request(false, false, Some("http://192.168.1.7"), host));
    assert!(!own_request(
        false,
        false,
        Some("http://evil.example"),
        host
    ));
    assert!(!own_request(false, false, Some("null"), host));
    assert!(!own_request(false, false, None, host), "Basic alone");
    assert!(!own_request(false, false, Some("http://192.168.1.7"), None));
}

#[test]
fn what_an_authorization_header_tries() {
    use airlift_client::page::Tried;
    assert_eq!(Tried::of(None), Tried::Nothing);
    assert_eq!(Tried::of(Some("Bearer x")), Tried::Bearer);
    assert_eq!(Tried::of(Some(&basic("u", "x"))), Tried::Basic);
    assert_eq!(Tried::of(Some("Basic !!!")), Tried::Nothing);
    assert_eq!(Tried::of(Some("Digest x")), Tried::Nothing);
}

#[test]
fn wrong_passwords_are_throttled_per_client_and_for_the_password() {
    use airlift_client::page::{CLIENT_RULE, Gate, PASSWORD_RULE, Spent};
    let mut gate = Gate::<2>::default();
    let (a, b, c) = ([1; 16], [2; 16], [3; 16]);
    let now = 1_000;
    for n in 1..CLIENT_RULE.burst {
        assert_eq!(gate.failed(Some(&a), now), Spent::default(), "failure {n}");
        assert_eq!(gate.wait_ms(Some(&a), now), 0);
    }
    let spent = gate.failed(Some(&a), now);
    assert!(spent.client && !spent.password);
    assert_eq!(gate.wait_ms(Some(&a), now), CLIENT_RULE.interval_ms);
    assert_eq!(
        gate.wait_ms(Some(&b), now),
        0,
        "another client is not held up"
    );
    assert_eq!(
        gate.wait_ms(Some(&a), now + CLIENT_RULE.interval_ms),
        0,
        "one more try after an interval"
    );
    // A third client takes the place of the one forgiven soonest (b, not
    // yet seen: an empty place), then of b: a stays counted.
    gate.failed(Some(&b), now);
    gate.failed(Some(&c), now);
    assert_eq!(gate.wait_ms(Some(&a), now), CLIENT_RULE.interval_ms);

    // Many clients guessing spend the password's own allowance.
    let mut gate = Gate::<4>::default();
    let mut spent_password = false;
    for n in 0..PASSWORD_RULE.burst {
        let client = [n as u8; 16];
        spent_password |= gate.failed(Some(&client), now).password;
    }
    assert!(spent_password);
    assert!(
        gate.wait_ms(Some(&[200; 16]), now) > 0,
        "every client waits"
    );
    assert!(gate.wait_ms(None, now) > 0);
}

#[test]
fn a_throttled_or_cross_site_request_says_so() {
    let e = ApiError::throttled(1_500);
    assert_eq!(
        (e.status, e.code, e.retry_after),
        (429, "throttled", Some(2))
    );
    assert_eq!(
        e.message.as_str(),
        "too many wrong passwords: try again in 2 s"
    );
    let e = ApiError::cross_site();
    assert_eq!((e.status, e.code), (403, "forbidden"));
    assert!(e.message.as_str().contains("X-Airlift-CSRF"));
}
