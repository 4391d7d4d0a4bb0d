//! The default health policy: when an image on trial is confirmed, when
//! its trial fails, and when it waits.

use airlift_engine::health::{HealthPolicy, HealthVerdict, ServerContact};

use HealthVerdict::{Confirm, Fail, Wait};
use ServerContact::{Answered, NotConfigured, Waiting};

fn check(uptime_ms: u64, server: ServerContact, expected: HealthVerdict) {
    assert_eq!(
        HealthPolicy::DEFAULT.judge(uptime_ms, server),
        expected,
        "{uptime_ms} ms, {server:?}"
    );
}

#[test]
fn an_offline_device_confirms_after_a_stable_minute() {
    check(0, NotConfigured, Wait);
    check(59_999, NotConfigured, Wait);
    check(60_000, NotConfigured, Confirm);
    check(3_600_000, NotConfigured, Confirm);
}

#[test]
fn a_device_with_a_server_confirms_once_it_answered_and_the_image_settled() {
    check(0, Answered, Wait);
    check(9_999, Answered, Wait);
    check(10_000, Answered, Confirm);
    // An answer that comes after the deadline still counts: it came.
    check(400_000, Answered, Confirm);
}

#[test]
fn a_device_whose_server_never_answers_fails_its_trial_at_the_deadline() {
    check(0, Waiting, Wait);
    check(60_000, Waiting, Wait);
    check(299_999, Waiting, Wait);
    check(300_000, Waiting, Fail);
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
    assert_eq!(quick.judge(0, Answered), Confirm);
    assert_eq!(quick.judge(499, NotConfigured), Wait);
    assert_eq!(quick.judge(500, NotConfigured), Confirm);
    assert_eq!(quick.judge(1_000, Waiting), Fail);
}
