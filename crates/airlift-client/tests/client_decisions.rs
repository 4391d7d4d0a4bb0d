//! The device's decisions over a real engine on the simulated flash: what
//! a boot reports, what a check-in carries, what an answer does, how a
//! result is reported, which reason an engine error becomes.
#![allow(clippy::unwrap_used)]

mod common;

use airlift_client::notes::Source;
use airlift_client::{BootStep, Failure, reason_of};
use airlift_engine::Error as E;
use airlift_engine::sim::bootloader::{self, BootloaderKind};
use airlift_format::image::ImageError;
use airlift_format::manifest::ManifestError;
use airlift_protocol::{CheckInAnswer, EngineState, EventKind, Reason};
use common::*;

#[test]
fn each_engine_error_is_reported_with_its_protocol_reason() {
    fn check(e: E, expected: Reason) {
        assert_eq!(reason_of(&e), expected, "{e}");
    }
    check(E::BadSignature, Reason::Signature);
    check(E::UnknownKey { key_id: [1; 8] }, Reason::Signature);
    check(
        E::Manifest(ManifestError::BadMagic([0; 4])),
        Reason::Signature,
    );
    check(
        E::WrongChip {
            expected: 0,
            got: 5,
        },
        Reason::Chip,
    );
    check(
        E::TooBig {
            size: 2,
            slot_size: 1,
        },
        Reason::TooBig,
    );
    check(
        E::OlderSecurityVersion { got: 1, minimum: 2 },
        Reason::SecurityVersion,
    );
    check(E::Image(ImageError::BadMagic(0)), Reason::Verification);
    check(E::ChecksumMismatch, Reason::Verification);
    check(E::DigestMismatch, Reason::Verification);
    check(E::ShaMismatch, Reason::Verification);
    check(E::StaleResume { resumed_at: 4096 }, Reason::Verification);
    check(
        E::Truncated {
            got: 1,
            expected: 2,
        },
        Reason::Verification,
    );
    check(E::TooMuchData { size: 1 }, Reason::Verification);
    check(
        E::Flash(embedded_storage::nor_flash::NorFlashErrorKind::Other),
        Reason::Flash,
    );
    check(E::RunningImageUnconfirmed, Reason::Other);
    check(E::DeltaUnsupported, Reason::Other);
    assert_eq!(
        Failure::Download(airlift_client::text::Text::from_str_cut("x")).reason(),
        Reason::Download,
        "a download that gave up"
    );
}

#[test]
fn a_fresh_device_boots_confirmed_and_checks_in_idle_with_no_result() {
    let mut rig = Rig::new();
    let mut lines = Lines::default();
    let (mut client, step) = rig.power_on(&mut lines);
    assert_eq!(step, BootStep::Run { confirmed: true });
    assert!(!client.has_events(), "a plain boot reports nothing");
    let report = client.check_in().unwrap();
    assert_eq!(report.state, EngineState::Idle);
    assert_eq!(report.running.version.as_str(), "1.0.0");
    assert_eq!(report.running.sha256.as_str(), hex(&sha(&image("1.0.0"))));
    assert_eq!(report.last_result, None);
    assert_eq!(lines.0, ["booted airlift-sim 1.0.0 from ota_0"]);
    assert!(client.take_events(0).is_empty());
}

/// A device that installed 2.0.0 (deployment 7) and reset into it.
fn on_trial() -> (Rig, Vec<u8>) {
    let mut rig = Rig::new();
    let (mut client, _) = rig.power_on(&mut Lines::default());
    let v2 = image("2.0.0");
    rig.install(&mut client, &update(7, &v2), &v2);
    let events: Vec<EventKind> = client.take_events(0).iter().map(|e| e.kind).collect();
    assert_eq!(
        events,
        [
            EventKind::Downloading,
            EventKind::Verifying,
            EventKind::Installed,
            EventKind::Rebooting
        ],
        "back to back, in one request"
    );
    (rig, v2)
}

#[test]
fn a_trial_boot_reports_its_attempt_with_the_deployment_then_confirms_at_the_next_check_in() {
    let (mut rig, _) = on_trial();
    let (mut client, step) = rig.power_on(&mut Lines::default());
    assert_eq!(step, BootStep::Run { confirmed: false });
    let events = client.take_events(0);
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].kind, events[0].deployment),
        (EventKind::Booted, Some(7))
    );
    assert_eq!(events[0].detail.as_deref(), Some("attempt 1 of 3"));
    assert_eq!(
        client.check_in().unwrap().state,
        EngineState::Downloading,
        "an update is pending until its result"
    );

    let clock = rig.clock;
    client.confirm(&mut rig.dev(), clock, &mut ()).unwrap();
    assert!(!client.has_events(), "the result rides on the check-in");
    let first = client.check_in().unwrap().last_result.unwrap();
    assert_eq!(
        (first.kind, first.deployment),
        (EventKind::Confirmed, Some(7))
    );
    assert_eq!(
        first.detail.as_deref(),
        Some("2.0.0 passed its health check")
    );
    let answered = client
        .on_answer(
            &mut rig.dev(),
            CheckInAnswer {
                poll_seconds: 60,
                update: None,
                device: None,
            },
            &mut (),
        )
        .unwrap();
    assert_eq!(answered.reported, Some((EventKind::Confirmed, None)));
    let again = client.check_in().unwrap();
    assert_eq!(again.state, EngineState::Idle);
    let repeated = again.last_result.unwrap();
    assert_eq!(
        repeated.kind,
        EventKind::Confirmed,
        "repeated at every check-in"
    );
    assert_eq!(repeated.detail, None, "the detail only the first time");
}

#[test]
fn a_result_goes_out_as_an_event_when_events_wait_or_no_server_takes_the_check_in() {
    fn check(has_server: bool, queued: bool, expected_event: bool) {
        let (mut rig, _) = on_trial();
        rig.config.has_server = has_server;
        let (mut client, _) = rig.power_on(&mut Lines::default());
        if !queued {
            client.take_events(0);
        }
        let clock = rig.clock;
        client.confirm(&mut rig.dev(), clock, &mut ()).unwrap();
        let events: Vec<EventKind> = client.take_events(0).iter().map(|e| e.kind).collect();
        let detail = client
            .check_in()
            .unwrap()
            .last_result
            .unwrap()
            .detail
            .is_some();
        assert_eq!(
            (events.contains(&EventKind::Confirmed), detail),
            (expected_event, !expected_event),
            "server {has_server}, queued {queued}"
        );
    }
    check(true, false, false);
    check(true, true, true);
    check(false, false, true);
}

#[test]
fn a_confirmation_lost_to_a_reset_is_reported_at_the_next_boot() {
    let (mut rig, _) = on_trial();
    let (_, _) = rig.power_on(&mut Lines::default());
    // The engine confirms; power is cut before the client records it.
    rig.dev().confirm().unwrap();
    let (client, step) = rig.power_on(&mut Lines::default());
    assert_eq!(step, BootStep::Run { confirmed: true });
    let result = client.check_in().unwrap().last_result.unwrap();
    assert_eq!(
        (result.kind, result.deployment),
        (EventKind::Confirmed, Some(7))
    );
    assert_eq!(result.detail.as_deref(), Some("2.0.0 is confirmed"));
}

#[test]
fn an_update_that_never_confirms_is_reported_rolled_back_after_the_boot_guard_resets() {
    let (mut rig, _) = on_trial();
    let mut lines = Lines::default();
    for attempt in 1..=3 {
        let (_, step) = rig.power_on(&mut lines);
        assert_eq!(
            step,
            BootStep::Run { confirmed: false },
            "attempt {attempt}"
        );
    }
    let (_, step) = rig.power_on(&mut lines);
    assert_eq!(step, BootStep::Reset, "the boot guard rolled back");
    let (client, step) = rig.power_on(&mut lines);
    assert_eq!(step, BootStep::Run { confirmed: true });
    let result = client.check_in().unwrap().last_result.unwrap();
    assert_eq!(
        (result.kind, result.reason),
        (EventKind::RolledBack, Some(Reason::BootFailed))
    );
    assert_eq!(
        result.detail.as_deref(),
        Some("2.0.0 did not confirm within 3 boots; back on 1.0.0")
    );
    assert!(
        lines
            .0
            .iter()
            .any(|l| l.starts_with("boot guard: ota_1 did not confirm in 3 boots")),
        "{:#?}",
        lines.0
    );
    // A later boot does not report the same rollback again.
    let (client, _) = rig.power_on(&mut lines);
    assert!(!client.has_events());
    assert_eq!(client.notes().pending, None);
}

#[test]
fn a_bootloader_fallback_is_reported_with_the_security_version_below_the_minimum() {
    let mut rig = Rig::new();
    let (mut client, _) = rig.power_on(&mut Lines::default());
    let v2 = airlift_engine::sim::test_image("2.0.0", 1, 30_000);
    rig.install(&mut client, &update(3, &v2), &v2);
    let (mut client, _) = rig.power_on(&mut Lines::default());
    let clock = rig.clock;
    client.confirm(&mut rig.dev(), clock, &mut ()).unwrap();
    // A bit of 2.0.0 goes bad: the bootloader starts 1.0.0 from ota_0.
    let at = rig.layout.slots[1].offset as usize + 0x2000;
    let mut bytes = rig.flash.bytes()[at..at + 4].to_vec();
    bytes.iter_mut().for_each(|b| *b = 0);
    rig.flash.load(at, &bytes);
    let mut lines = Lines::default();
    let (mut client, _) = rig.power_on(&mut lines);
    assert!(
        lines
            .0
            .iter()
            .any(|l| l
                .ends_with("from ota_0, whose security version 0 is below the device's minimum 1")),
        "the journal has all of it: {:#?}",
        lines.0
    );
    let events = client.take_events(0);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (events[0].kind, events[0].reason, events[0].deployment),
        (EventKind::Booted, Some(Reason::Verification), None)
    );
    let detail = events[0].detail.as_deref().unwrap();
    assert!(
        detail.starts_with(
            "the bootloader could not start ota_1 (not a valid image) and started airlift-sim 1.0.0 from ota_0"
        ),
        "{detail}"
    );
    assert_eq!(
        detail.len(),
        airlift_protocol::DETAIL_MAX,
        "cut to the wire's bound"
    );
    let b = bootloader::boot(&mut rig.flash, &rig.layout, BootloaderKind::Plain).unwrap();
    assert!(b.fell_back());
}

#[test]
fn each_answer_sets_the_wait_withdraws_or_offers_an_update() {
    let running = image("1.0.0");
    let (x, y) = (image("2.0.0"), image("3.0.0"));
    // (pending before: deployment and image, its source), offered, poll override
    // -> (update offered to install, pending after, wait)
    type Case<'a> = (
        Option<(&'a [u8], Source)>,
        Option<(u64, &'a [u8])>,
        Option<u64>,
        (Option<&'a [u8]>, Option<&'a [u8]>, u64),
    );
    let cases: Vec<Case> = vec![
        (None, None, None, (None, None, 60_000)),
        (None, None, Some(200), (None, None, 200)),
        (None, Some((1, &running)), None, (None, None, 60_000)),
        (None, Some((1, &x)), None, (Some(&x), None, 60_000)),
        (
            Some((&x, Source::Server)),
            Some((1, &x)),
            None,
            (Some(&x), Some(&x), 60_000),
        ),
        (Some((&x, Source::Server)), None, None, (None, None, 60_000)),
        (
            Some((&x, Source::Server)),
            Some((2, &y)),
            None,
            (Some(&y), None, 60_000),
        ),
        (
            Some((&x, Source::Upload)),
            None,
            None,
            (None, Some(&x), 60_000),
        ),
    ];
    for (i, (pending, offered, poll, (install, kept, wait))) in cases.into_iter().enumerate() {
        let mut rig = Rig::new();
        rig.config.poll_ms = poll;
        let (mut client, _) = rig.power_on(&mut Lines::default());
        let clock = rig.clock;
        match pending {
            Some((img, Source::Server)) => {
                client
                    .begin_assigned(&mut rig.dev(), &update(1, img), clock, &mut ())
                    .unwrap()
                    .unwrap();
            }
            Some((img, source)) => {
                client
                    .begin_local(&mut rig.dev(), source, &signed(img))
                    .unwrap()
                    .unwrap();
            }
            None => {}
        }
        let mut lines = Lines::default();
        let answered = client
            .on_answer(
                &mut rig.dev(),
                CheckInAnswer {
                    poll_seconds: 60,
                    update: offered.map(|(d, img)| update(d, img)),
                    device: None,
                },
                &mut lines,
            )
            .unwrap();
        let offered_sha = answered.update.as_ref().map(|u| u.sha256.to_string());
        assert_eq!(offered_sha, install.map(|i| hex(&sha(i))), "case {i}");
        let pending_sha = client.notes().pending.as_ref().map(|p| p.sha256);
        assert_eq!(pending_sha, kept.map(sha), "case {i}");
        assert_eq!(answered.wait_ms, wait, "case {i}");
        let withdrawn = lines
            .0
            .iter()
            .any(|l| l == "the server withdrew the update in progress");
        assert_eq!(withdrawn, pending.is_some() && kept.is_none(), "case {i}");
        // What the answer decided is on flash: a reset keeps it.
        let (client, _) = rig.power_on(&mut Lines::default());
        let pending_sha = client.notes().pending.as_ref().map(|p| p.sha256);
        assert_eq!(pending_sha, kept.map(sha), "case {i} after a reset");
    }
}

#[test]
fn the_first_check_in_waits_a_random_part_of_the_poll_unless_a_result_waits() {
    let mut rig = Rig::new();
    rig.config.jitter = true;
    rig.config.poll_ms = Some(10_000);
    let (client, _) = rig.power_on(&mut Lines::default());
    assert_eq!(client.first_wait_ms(250), 2_500);
    assert_eq!(client.first_wait_ms(1_999), 9_990);
    rig.config.jitter = false;
    let (client, _) = rig.power_on(&mut Lines::default());
    assert_eq!(client.first_wait_ms(250), 0);

    let (mut rig, _) = on_trial();
    rig.config.jitter = true;
    let (mut client, _) = rig.power_on(&mut Lines::default());
    client.take_events(0);
    let clock = rig.clock;
    client.confirm(&mut rig.dev(), clock, &mut ()).unwrap();
    assert_eq!(client.first_wait_ms(250), 0, "the result goes out at once");
    assert_eq!(client.check_in_failed_wait_ms(), 500);
    assert_eq!(client.retry_wait_ms(60_000), 500);
}

#[test]
fn a_revoked_token_is_not_sent_again_at_every_poll_issue_16() {
    let mut rig = Rig::new();
    rig.config.poll_ms = Some(10_000);
    let (client, _) = rig.power_on(&mut Lines::default());
    assert_eq!(
        client.check_in_refused_wait_ms(airlift_protocol::TOKEN_REVOKED),
        airlift_client::OFFLINE_WAIT_MS
    );
    assert_eq!(client.check_in_refused_wait_ms("unauthorized"), 10_000);
    assert_eq!(
        client.check_in_refused_wait_ms("internal"),
        client.check_in_failed_wait_ms()
    );
}

#[test]
fn a_manifest_that_is_not_base64_fails_the_attempt_without_touching_the_slot() {
    let mut rig = Rig::new();
    let (mut client, _) = rig.power_on(&mut Lines::default());
    let mut offer = update(4, &image("2.0.0"));
    offer.manifest = "%%%".try_into().unwrap();
    let clock = rig.clock;
    let attempt = client
        .begin_assigned(&mut rig.dev(), &offer, clock, &mut ())
        .unwrap();
    assert!(attempt.is_none());
    let result = client.check_in().unwrap().last_result.unwrap();
    assert_eq!(
        (result.kind, result.reason, result.deployment),
        (EventKind::Failed, Some(Reason::Signature), Some(4))
    );
    assert!(result.detail.unwrap().starts_with("manifest is not base64"),);
}

#[test]
fn a_local_upload_refused_by_the_engine_is_a_failed_result_with_its_reason() {
    let mut rig = Rig::new();
    let (mut client, _) = rig.power_on(&mut Lines::default());
    let v2 = image("2.0.0");
    let mut flipped = v2.clone();
    flipped[5000] ^= 1;
    let clock = rig.clock;
    let mut dev = rig.dev();
    let attempt = client
        .begin_local(&mut dev, Source::Upload, &signed(&v2))
        .unwrap()
        .unwrap();
    let failure = {
        let mut session = client.start(&mut dev, &attempt, 0, &mut ()).unwrap();
        session.write_all(&flipped).unwrap();
        client
            .finish_install(&mut session, &attempt, 0, &mut ())
            .unwrap_err()
    };
    let refusal = client
        .install_failed(&mut dev, &attempt, failure, clock, &mut ())
        .unwrap()
        .unwrap();
    assert_eq!(refusal.reason, Reason::Verification);
    let events: Vec<(EventKind, Option<u64>)> = client
        .take_events(0)
        .iter()
        .map(|e| (e.kind, e.deployment))
        .collect();
    assert_eq!(
        events,
        [
            (EventKind::Downloading, None),
            (EventKind::Verifying, None),
            (EventKind::Failed, None)
        ],
        "a local result goes out as an event"
    );
    let mut history = Vec::new();
    client
        .history(&mut dev, |h| history.push(h.clone()))
        .unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(
        (history[0].source, history[0].result, history[0].reason),
        (
            Source::Upload,
            EventKind::Failed,
            Some(Reason::Verification)
        )
    );
    let refused = client
        .begin_local(&mut dev, Source::Pull, b"not a manifest")
        .unwrap()
        .unwrap_err();
    assert_eq!(refused.reason, Reason::Signature);
    assert!(
        refused
            .message
            .as_str()
            .starts_with("not a signed manifest")
    );
}

#[test]
fn events_that_waited_say_how_long_ago_they_happened() {
    let mut rig = Rig::new();
    let (mut client, _) = rig.power_on(&mut Lines::default());
    client.event(Some(1), EventKind::Downloading, None, "", 1_000, &mut ());
    client.event(Some(1), EventKind::Verifying, None, "", 4_500, &mut ());
    client.event(Some(1), EventKind::Installed, None, "x", 5_000, &mut ());
    let batch = client.take_events(5_000);
    let ages: Vec<Option<u32>> = batch.iter().map(|e| e.age_ms).collect();
    assert_eq!(ages, [Some(4_000), Some(500), None]);
    assert!(!client.has_events());
    for i in 0..10 {
        client.event(None, EventKind::Booted, None, "", i, &mut ());
    }
    let batch = client.take_events(10);
    assert_eq!(
        batch.len(),
        airlift_protocol::EVENTS_MAX,
        "bounded: the oldest go"
    );
    assert_eq!(batch[0].age_ms, Some(8));
}

#[test]
fn issue_17_a_check_in_says_how_long_the_device_can_wait_for_its_answer() {
    let mut rig = Rig::new();
    let (client, _) = rig.power_on(&mut Lines::default());
    assert_eq!(
        client.check_in().unwrap().long_poll_seconds,
        None,
        "a transport that cannot wait asks for no long poll"
    );
    rig.config.long_poll_seconds = 60;
    let (mut client, _) = rig.power_on(&mut Lines::default());
    assert_eq!(
        client.check_in().unwrap().long_poll_seconds,
        None,
        "the first check-in of a power-on is answered at once: the device learns its interval and name"
    );
    let answer = CheckInAnswer {
        poll_seconds: 60,
        update: None,
        device: None,
    };
    let answered = client
        .on_answer(&mut rig.dev(), answer.clone(), &mut ())
        .unwrap();
    assert_eq!(
        answered.wait_ms, 0,
        "then it checks in again at once, to wait"
    );
    assert_eq!(client.check_in().unwrap().long_poll_seconds, Some(60));
    let answered = client.on_answer(&mut rig.dev(), answer, &mut ()).unwrap();
    assert_eq!(
        answered.wait_ms, 60_000,
        "an answer at once (an older server) is followed by the interval it says"
    );
}
