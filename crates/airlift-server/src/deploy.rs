//! Deployment rules: who gets a release, and how device events move a
//! device's assignment through its states.
//!
//! ```text
//! (waiting ->) pending -> offered -> downloading -> installed -> booted -> confirmed
//!    any unfinished state -> failed | rolled_back | cancelled
//! skipped: never offered (already running it, other chip, security version
//!          too low, held back by a rollout's penalty box)
//! ```
//! Success for a device is `confirmed` only: the device reports it after
//! booting the new image and passing its health check.
//!
//! Staged rollouts ([`crate::rollout`]) use the same rows: a rollout's
//! deployment numbers each assignment's `wave`, and a device whose wave is
//! not open (or that waits for room under the rollout's limit of devices
//! updating at once) is `waiting`: not offered, and moved by no device
//! event; the rollout scheduler moves it to `pending` and back.

use airlift_protocol::EventKind;
use serde::Serialize;

use crate::store::{DeviceStatus, Release};

/// State of one device's assignment in a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AssignmentState {
    /// In a rollout: waiting for its wave to open, or for room under the
    /// rollout's limit of devices updating at once. Not offered.
    Waiting,
    /// Waiting for the device's next check-in.
    Pending,
    /// Sent to the device in a check-in answer.
    Offered,
    /// The device is downloading and verifying.
    Downloading,
    /// Written and activated; the device reboots into it.
    Installed,
    /// The new image booted, not confirmed yet.
    Booted,
    /// Success: the device confirmed the new image.
    Confirmed,
    /// The device refused or failed the update before activation.
    Failed,
    /// The new image did not confirm; the device went back to the old one.
    RolledBack,
    /// The deployment was cancelled or superseded before the device finished.
    Cancelled,
    /// Never offered: see the assignment's reason.
    Skipped,
}

impl AssignmentState {
    /// Every state, in lifecycle order.
    pub const ALL: [AssignmentState; 11] = [
        Self::Waiting,
        Self::Pending,
        Self::Offered,
        Self::Downloading,
        Self::Installed,
        Self::Booted,
        Self::Confirmed,
        Self::Failed,
        Self::RolledBack,
        Self::Cancelled,
        Self::Skipped,
    ];

    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Pending => "pending",
            Self::Offered => "offered",
            Self::Downloading => "downloading",
            Self::Installed => "installed",
            Self::Booted => "booted",
            Self::Confirmed => "confirmed",
            Self::Failed => "failed",
            Self::RolledBack => "rolled_back",
            Self::Cancelled => "cancelled",
            Self::Skipped => "skipped",
        }
    }

    /// Parses a stored name.
    pub fn parse(text: &str) -> Option<AssignmentState> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether the assignment is over.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Confirmed | Self::Failed | Self::RolledBack | Self::Cancelled | Self::Skipped
        )
    }

    /// Whether the assignment is the device's open offer (not over, not
    /// waiting): what [`crate::store::DeploymentStore::open_offer`] finds.
    pub fn is_open(self) -> bool {
        !self.is_final() && self != Self::Waiting
    }

    /// Whether the device should be given the update when it checks in.
    pub fn offers_update(self) -> bool {
        matches!(self, Self::Pending | Self::Offered | Self::Downloading)
    }
}

/// The state a device event moves an assignment to, or `None` when the event
/// does not change it (a late or duplicate event, or the assignment is over).
pub fn after_event(current: AssignmentState, event: EventKind) -> Option<AssignmentState> {
    // A waiting device was never offered the update: its event is stale or forged.
    if !current.is_open() {
        return None;
    }
    let next = match event {
        EventKind::Downloading | EventKind::Verifying => AssignmentState::Downloading,
        EventKind::Installed | EventKind::Rebooting => AssignmentState::Installed,
        EventKind::Booted => AssignmentState::Booted,
        EventKind::Confirmed => AssignmentState::Confirmed,
        EventKind::RolledBack => AssignmentState::RolledBack,
        EventKind::Failed => AssignmentState::Failed,
    };
    (next.is_final() || next > current).then_some(next)
}

const EVENT_KINDS: [EventKind; 8] = [
    EventKind::Downloading,
    EventKind::Verifying,
    EventKind::Installed,
    EventKind::Rebooting,
    EventKind::Booted,
    EventKind::Confirmed,
    EventKind::RolledBack,
    EventKind::Failed,
];

/// [`after_event`] on stored names, for [`crate::store::EventStore::record_writes`]:
/// an unknown state or event kind changes nothing.
pub fn next_state(current: &str, event: &str) -> Option<&'static str> {
    let current = AssignmentState::parse(current)?;
    let event = EVENT_KINDS.into_iter().find(|k| k.as_str() == event)?;
    after_event(current, event).map(AssignmentState::as_str)
}

/// Why a device is not offered a release.
pub fn skip_reason(device: &DeviceStatus, release: &Release) -> Option<&'static str> {
    if device.sha256.as_deref() == Some(release.sha256.as_str()) {
        return Some("already_running");
    }
    if device.chip_id.is_some_and(|chip| chip != release.chip_id) {
        return Some("chip");
    }
    if device
        .security_version
        .is_some_and(|min| min > release.security_version)
    {
        return Some("security_version");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::AssignmentState::*;
    use super::*;

    fn check(current: AssignmentState, event: EventKind, expected: Option<AssignmentState>) {
        assert_eq!(
            after_event(current, event),
            expected,
            "{current:?} + {event:?}"
        );
    }

    #[test]
    fn events_move_assignments_forward_only() {
        check(Pending, EventKind::Downloading, Some(Downloading));
        check(Offered, EventKind::Downloading, Some(Downloading));
        check(Offered, EventKind::Verifying, Some(Downloading));
        check(Downloading, EventKind::Verifying, None);
        check(Downloading, EventKind::Installed, Some(Installed));
        check(Installed, EventKind::Rebooting, None);
        check(Installed, EventKind::Booted, Some(Booted));
        check(Booted, EventKind::Confirmed, Some(Confirmed));
        check(Booted, EventKind::Downloading, None);
        check(Installed, EventKind::Downloading, None);
    }

    #[test]
    fn failures_end_any_unfinished_assignment_and_nothing_reopens_a_finished_one() {
        check(Offered, EventKind::Failed, Some(Failed));
        check(Downloading, EventKind::Failed, Some(Failed));
        check(Booted, EventKind::RolledBack, Some(RolledBack));
        check(Installed, EventKind::RolledBack, Some(RolledBack));
        check(Confirmed, EventKind::Failed, None);
        check(Failed, EventKind::Confirmed, None);
        check(Cancelled, EventKind::Downloading, None);
        check(Skipped, EventKind::Confirmed, None);
    }

    #[test]
    fn no_event_moves_a_device_that_waits_for_its_wave() {
        for kind in EVENT_KINDS {
            check(Waiting, kind, None);
        }
        assert!(!Waiting.is_open() && !Waiting.is_final() && !Waiting.offers_update());
    }

    #[test]
    fn stored_names_follow_the_same_rules() {
        assert_eq!(next_state("offered", "downloading"), Some("downloading"));
        assert_eq!(next_state("booted", "confirmed"), Some("confirmed"));
        assert_eq!(next_state("installed", "downloading"), None);
        assert_eq!(next_state("confirmed", "failed"), None);
        assert_eq!(next_state("offered", "exploded"), None, "unknown kind");
        assert_eq!(next_state("done", "failed"), None, "unknown state");
        for kind in EVENT_KINDS {
            assert_eq!(
                next_state("booted", kind.as_str()),
                after_event(Booted, kind).map(AssignmentState::as_str)
            );
        }
    }

    #[test]
    fn state_names_parse_back() {
        for state in AssignmentState::ALL {
            assert_eq!(AssignmentState::parse(state.as_str()), Some(state));
        }
        assert_eq!(AssignmentState::parse("done"), None);
    }

    fn release() -> Release {
        Release {
            id: 1,
            sha256: "aa".repeat(32),
            size: 100,
            chip_id: 5,
            project: "p".into(),
            version: "2".into(),
            security_version: 3,
            key_id: "00".repeat(8),
            signed_by_server: true,
            manifest: vec![],
            created_at: 0,
        }
    }

    fn skip(status: DeviceStatus) -> Option<&'static str> {
        skip_reason(&status, &release())
    }

    #[test]
    fn devices_running_it_on_another_chip_or_above_its_security_version_are_skipped() {
        assert_eq!(
            skip(DeviceStatus::default()),
            None,
            "never checked in: offered"
        );
        let running = DeviceStatus {
            chip_id: Some(5),
            sha256: Some("bb".repeat(32)),
            security_version: Some(3),
            ..DeviceStatus::default()
        };
        assert_eq!(skip(running.clone()), None);
        let same = DeviceStatus {
            sha256: Some("aa".repeat(32)),
            ..running.clone()
        };
        assert_eq!(skip(same), Some("already_running"));
        let other_chip = DeviceStatus {
            chip_id: Some(0),
            ..running.clone()
        };
        assert_eq!(skip(other_chip), Some("chip"));
        let newer = DeviceStatus {
            security_version: Some(4),
            ..running
        };
        assert_eq!(skip(newer), Some("security_version"));
    }
}
