//! When an image on trial has earned its confirmation: the default health
//! policy that firmware applies before it calls [`Client::confirm`].
//!
//! The boot guard counts boots of an unconfirmed image and rolls it back
//! when they are used up; something must decide, while the image runs,
//! that it is good. An application that knows better calls `confirm`
//! itself. Everyone else gets this rule, written once here so it is tested
//! on the host, not in firmware:
//!
//! * **A device with a server** confirms once the server answered a
//!   request from this image (Wi-Fi, IP, DNS, HTTP and the device's token
//!   all work, so it can be updated again) and it has run for
//!   [`HealthPolicy::settle_ms`]. If the server has not answered after
//!   [`HealthPolicy::answer_deadline_ms`], the trial has failed: the
//!   firmware resets, the boot guard counts the attempt, and after the last
//!   attempt the device is back on its previous image. An image that cannot
//!   reach the server must not become permanent: nothing could replace it.
//! * **A device without a server** (updated only from its own web page)
//!   confirms after running [`HealthPolicy::offline_stable_ms`] without a
//!   crash or a hang (either resets the chip, through the watchdog for a
//!   hang, and the attempt counts).
//!
//! Time is the caller's: milliseconds since this boot.
//!
//! [`Client::confirm`]: crate::Client::confirm

/// What the device has seen of its server since this boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerContact {
    /// No server is configured: the device runs offline.
    NotConfigured,
    /// A server is configured and has not answered yet.
    Waiting,
    /// The server answered a request (a check-in) from this image.
    Answered,
}

/// What the policy decides for an image on trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthVerdict {
    /// Not yet: ask again later.
    Wait,
    /// The image is healthy: confirm it.
    Confirm,
    /// The trial failed: reset the chip (the next boot counts an attempt).
    Fail,
}

/// The default health policy; times in milliseconds since boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// With a server: the least time the image must run, after the server
    /// answered, before it is confirmed (a crash right after the first
    /// check-in still counts against it).
    pub settle_ms: u64,
    /// With a server: how long the image may run without an answer before
    /// the trial counts as failed.
    pub answer_deadline_ms: u64,
    /// Without a server: how long the image must run before it is confirmed.
    pub offline_stable_ms: u64,
}

impl HealthPolicy {
    /// 10 s to settle, 5 min for the server to answer, 60 s offline.
    pub const DEFAULT: HealthPolicy = HealthPolicy {
        settle_ms: 10_000,
        answer_deadline_ms: 300_000,
        offline_stable_ms: 60_000,
    };

    /// The verdict for an image on trial that has run `uptime_ms` since
    /// boot and has seen `server`.
    pub fn judge(&self, uptime_ms: u64, server: ServerContact) -> HealthVerdict {
        let due = |ms: u64| uptime_ms >= ms;
        match server {
            ServerContact::NotConfigured if due(self.offline_stable_ms) => HealthVerdict::Confirm,
            ServerContact::Answered if due(self.settle_ms) => HealthVerdict::Confirm,
            ServerContact::Waiting if due(self.answer_deadline_ms) => HealthVerdict::Fail,
            _ => HealthVerdict::Wait,
        }
    }
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy::DEFAULT
    }
}
