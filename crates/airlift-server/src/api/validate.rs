//! What a device reports is checked before anything of it is stored: the
//! wire types already bound every string and list and name every enum
//! (serde refuses an unknown one), and here the rest: a SHA-256 is 64 hex
//! digits, a slot is one ESP-IDF can have, and text holds no control
//! characters (it ends up in logs and on the dashboard).

use airlift_protocol::{CheckIn, Event, is_plain_text, is_sha256_hex};

use crate::error::ApiError;

/// Most OTA slots an ESP-IDF partition table can have (`ota_0` to `ota_15`).
const MAX_SLOTS: u8 = 16;

fn invalid(field: &str, why: &str) -> ApiError {
    ApiError::bad_request("invalid_report", format!("{field} {why}"))
}

fn text(field: &str, value: &str) -> Result<(), ApiError> {
    if is_plain_text(value) {
        Ok(())
    } else {
        Err(invalid(field, "holds control characters"))
    }
}

/// Checks a check-in.
pub(crate) fn check_in(report: &CheckIn) -> Result<(), ApiError> {
    let running = &report.running;
    if !is_sha256_hex(&running.sha256) {
        return Err(invalid(
            "running.sha256",
            "is not a SHA-256 (64 hex digits)",
        ));
    }
    if running.slot >= MAX_SLOTS {
        return Err(invalid(
            "running.slot",
            &format!(
                "is {}, but ESP-IDF has at most {MAX_SLOTS} OTA slots",
                running.slot
            ),
        ));
    }
    text("running.project", &running.project)?;
    text("running.version", &running.version)?;
    if let Some(detail) = report.last_result.as_ref().and_then(|r| r.detail.as_ref()) {
        text("last_result.detail", detail)?;
    }
    Ok(())
}

/// Checks an event.
pub(crate) fn event(event: &Event) -> Result<(), ApiError> {
    match &event.detail {
        Some(detail) => text("detail", detail),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(running: serde_json::Value, expected: Result<(), &str>) {
        let report: CheckIn = serde_json::from_value(json!({
            "chip_id": 5, "running": running, "state": "idle", "boot_count": 0
        }))
        .unwrap();
        let got = check_in(&report).map_err(|e| e.to_string());
        match (got, expected) {
            (Ok(()), Ok(())) => {}
            (Err(got), Err(want)) => assert!(got.contains(want), "{got} (wanted {want})"),
            (got, want) => panic!("{running}: got {got:?}, wanted {want:?}"),
        }
    }

    #[test]
    fn device_reports_are_checked_before_they_are_stored_issue_16() {
        let sha = "ab".repeat(32);
        let running = |sha256: &str, version: &str, slot: u8| {
            json!({"project": "demo", "version": version, "sha256": sha256,
                "security_version": 0, "slot": slot})
        };
        check(running(&sha, "1.0", 1), Ok(()));
        check(running(&sha.to_uppercase(), "1.0", 15), Ok(()));
        check(running(&"z".repeat(64), "1.0", 0), Err("running.sha256"));
        check(running("abcd", "1.0", 0), Err("running.sha256"));
        check(running(&sha, "1.0\u{1b}[31m", 0), Err("running.version"));
        check(running(&sha, "1.0\n", 0), Err("running.version"));
        check(running(&sha, "1.0", 16), Err("running.slot"));
    }
}
