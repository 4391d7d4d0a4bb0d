//! The default health policy: when an image on trial is confirmed, when
//! its trial fails, and when it waits.

use airlift_client::health::{HealthPolicy, HealthVerdict, ServerContact};

use HealthVerdict::{Confirm, Fail, Wait};
use ServerContact::{Answered, NotConfigured, Waiting};

/// Each case: uptime in ms, what the server did, the expected verdict.
fn check(policy: HealthPolicy, cases: &[(u64, ServerContact, HealthVerdict)]) {
    for &(uptime_ms, server, expected) in cases {
        assert_eq!(
            policy.judge(uptime_ms, server),
            expected,
            "{uptime_ms} ms, {server:?}, {policy:?}"
        );
    }
}

#[test]
fn an_offline_device_confirms_after_a_stable_minute() {
    check(
        HealthPolicy::DEFAULT,
        &[
            (0, NotConfigured, Wait),
            (59_999, NotConfigured, Wait),
            (60_000, NotConfigured, Confirm),
            (3_600_000, NotConfigured, Confirm),
        ],
    );
}

#[test]
fn a_device_with_a_server_confirms_once_it_answered_and_the_image_settled() {
    check(
        HealthPolicy::DEFAULT,
        &[
            (0, Answered, Wait),
            (9_999, Answered, Wait),
            (10_000, Answered, Confirm),
            // An answer that comes after the deadline still counts: it came.
            (400_000, Answered, Confirm),
        ],
    );
}

#[test]
fn a_device_whose_server_never_answers_fails_its_trial_at_the_deadline() {
    check(
        HealthPolicy::DEFAULT,
        &[
            (0, Waiting, Wait),
            (60_000, Waiting, Wait),
            (299_999, Waiting, Wait),
            (300_000, Waiting, Fail),
        ],
    );
}

#[test]
fn the_default_policy_is_the_documented_one() {
    assert_eq!(
        HealthPolicy::default(),
        HealthPolicy {
            settle_ms: 10_000,
            answer_deadline_ms: 300_000,
            offline_stable_ms: 60_000,
        }
    );
}

#[test]
fn a_custom_policy_applies_its_own_times() {
    let quick = HealthPolicy {
        settle_ms: 0,
        answer_deadline_ms: 1_000,
        offline_stable_ms: 500,
    };
    check(
        quick,
        &[
            (0, Answered, Confirm),
            (499, NotConfigured, Wait),
            (500, NotConfigured, Confirm),
            (999, Waiting, Wait),
            (1_000, Waiting, Fail),
        ],
    );
}
