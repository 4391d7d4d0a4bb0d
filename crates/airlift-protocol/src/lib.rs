//! Device <-> server wire types of Airlift.
//!
//! One definition of the protocol, shared by the server and the PC agent
//! (through `serde_json`) and by the ESP32 firmware (through
//! `serde-json-core`, without an allocator). Every string is a bounded
//! [`heapless::String`], every list a bounded [`heapless::Vec`], so a type's
//! size is known at compile time and a device never allocates to parse an
//! answer.
//!
//! A device decodes with `serde_json_core::from_slice_escaped`, giving it a
//! scratch buffer of [`UNESCAPE_BUFFER_LEN`] bytes: plain
//! `serde_json_core::from_slice` leaves escape sequences (`\"`, `\/`,
//! `\u00e9`) in strings as they were written, so a device would read
//! another URL or version than the server meant (found by the protocol fuzz
//! target, which checks that both parsers read the same values).
//!
//! The protocol is HTTP/1.1 + JSON; a device authenticates every call with
//! its bearer token (`Authorization: Bearer <token>`):
//!
//! | call | body | answer |
//! |------|------|--------|
//! | `POST /api/v1/device/enroll` | [`EnrollRequest`] | [`EnrollAnswer`] (no token needed: the fleet enrolment secret is in the body) |
//! | `POST /api/v1/device/checkin` | [`CheckIn`] | [`CheckInAnswer`] |
//! | `GET /api/v1/device/artifacts/{sha256}` | - | the image bytes; `Range`, `If-Range` and `ETag` (the SHA-256) supported |
//! | `POST /api/v1/device/events` | [`Event`], or an [`EventBatch`] (a JSON array) | [`EventAck`], or an [`EventBatchAck`] |
//!
//! A check-in, as JSON:
//!
//! ```json
//! {"chip_id":0,"running":{"project":"hello_world","version":"v1","sha256":"9f86…","security_version":0,"slot":0},
//!  "state":"idle","boot_count":0,"last_result":null}
//! ```
//!
//! Its answer when an update is assigned (`update` is `null` otherwise):
//!
//! ```json
//! {"poll_seconds":60,"update":{"deployment":7,"manifest":"QUxNMQEA…","url":"/api/v1/device/artifacts/3a1f…",
//!  "size":151504,"sha256":"3a1f…","version":"v2"}}
//! ```
//!
//! An event:
//!
//! ```json
//! {"deployment":7,"kind":"failed","reason":"signature","detail":"key 0a1b2c3d4e5f6071 not trusted"}
//! ```
//!
//! A device saves round trips by sending events that happen back to back in
//! one array (`downloading`, `verifying`, `installed`, `rebooting` before
//! it resets; each with its `age_ms`, so `downloading` keeps the time the
//! download started), and by reporting a final result in its check-in's
//! `last_result` (with a `detail` the first time), which the server records
//! like the event. `last_result` is repeated at every check-in, so a report
//! lost to a reset or a dropped connection loses no result.
//!
//! A device whose HTTP client can wait says so in its check-in
//! (`long_poll_seconds`): with nothing to offer, the server holds the
//! check-in up to that long (and at most its own poll interval) and
//! answers the moment a deployment or a rollout wave offers the device an
//! update; a held check-in answers `poll_seconds: 0`, and the device checks
//! in again at once. A deployment reaches an online device within a
//! second. New fields are
//! optional both ways: an older device never asks, and an older device
//! parsing a newer answer skips what it does not know.
#![no_std]
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

pub mod throttle;

/// Longest device name, in bytes (UTF-8).
pub const NAME_MAX: usize = 64;
/// Longest tag, in bytes.
pub const TAG_MAX: usize = 32;
/// Most tags on one device.
pub const TAGS_MAX: usize = 8;
/// Longest project name or version string, in bytes (`esp_app_desc_t` holds 32).
pub const LABEL_MAX: usize = 32;
/// Length of a SHA-256 in lowercase hex.
pub const SHA256_HEX_LEN: usize = 64;
/// Longest base64 signed manifest (the signed blob is at most 219 bytes).
pub const MANIFEST_B64_MAX: usize = 400;
/// Longest download URL: room for an object store's presigned URL (an S3
/// SigV4 URL with long-term credentials is about 400 bytes; one signed with
/// temporary credentials carries a session token and may not fit, and the
/// server then gives its own download path instead).
pub const URL_MAX: usize = 1024;
/// Where a device enrols.
pub const ENROLL_PATH: &str = "/api/v1/device/enroll";
/// Where a device checks in.
pub const CHECKIN_PATH: &str = "/api/v1/device/checkin";
/// Where a device posts its events.
pub const EVENTS_PATH: &str = "/api/v1/device/events";
/// Longest token or secret.
pub const TOKEN_MAX: usize = 128;
/// Longest free-text detail of an event.
pub const DETAIL_MAX: usize = 128;
/// Scratch bytes a device gives `serde_json_core::from_slice_escaped`: one
/// string at a time is unescaped into it, and the longest is a URL.
pub const UNESCAPE_BUFFER_LEN: usize = URL_MAX;

/// A SHA-256 as 64 lowercase hex characters.
pub type Sha256Hex = heapless::String<SHA256_HEX_LEN>;

/// Whether `s` is a SHA-256 as the protocol writes it: 64 hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == SHA256_HEX_LEN && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether `s` is text a person may be shown as it is: no control
/// characters (line breaks, escape sequences, NUL).
pub fn is_plain_text(s: &str) -> bool {
    !s.chars().any(char::is_control)
}
/// A project name or version string.
pub type Label = heapless::String<LABEL_MAX>;
/// A device name.
pub type Name = heapless::String<NAME_MAX>;
/// A tag.
pub type Tag = heapless::String<TAG_MAX>;
/// A bearer token or enrolment secret.
pub type Token = heapless::String<TOKEN_MAX>;

/// What a device reports at every check-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckIn {
    /// ESP-IDF chip id of the device (`esp_chip_id_t`: 0 = ESP32, 5 = ESP32-C3, ...).
    pub chip_id: u16,
    /// The image the device is running.
    pub running: RunningImage,
    /// What the update engine is doing.
    pub state: EngineState,
    /// Boot attempts of the running image since it was activated (0 once confirmed).
    #[serde(default)]
    pub boot_count: u32,
    /// Outcome of the last update attempt, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_result: Option<LastResult>,
    /// The longest the device waits for the answer, in seconds (a long
    /// poll): while the server has nothing to offer it may hold the
    /// check-in up to this long, or less, and answers as soon as it has an
    /// update for the device. Absent (older devices, or a transport that
    /// cannot wait): answered at once. A server that does not know the
    /// field answers at once too, with its usual `poll_seconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_poll_seconds: Option<u32>,
}

/// The image in the active slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningImage {
    /// Project name from the app descriptor.
    pub project: Label,
    /// Version string from the app descriptor.
    pub version: Label,
    /// SHA-256 of the whole image file, lowercase hex.
    pub sha256: Sha256Hex,
    /// Security version from the app descriptor; the device's minimum after confirm.
    pub security_version: u32,
    /// OTA slot the image runs from (0 for ota_0).
    pub slot: u8,
}

/// State of the device's update engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineState {
    /// Running a confirmed image, nothing in progress.
    Idle,
    /// Downloading and writing an update into the inactive slot.
    Downloading,
    /// An update is written and activated; the device is about to reboot.
    Installed,
    /// Running a new image that is not confirmed yet (boot counter active).
    Trial,
}

impl EngineState {
    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Downloading => "downloading",
            Self::Installed => "installed",
            Self::Trial => "trial",
        }
    }
}

/// Outcome of the device's last update attempt, repeated at every check-in
/// until a new attempt starts, so a lost event cannot lose the result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastResult {
    /// The deployment the attempt belonged to, when the server assigned it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<u64>,
    /// The final event of the attempt: `confirmed`, `rolled_back` or `failed`.
    pub kind: EventKind,
    /// Why it failed, for `failed` and `rolled_back`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// Free text for humans, sent when the check-in is the first report of
    /// the result (a device reports a result at the check-in it makes at
    /// once, instead of a separate event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<heapless::String<DETAIL_MAX>>,
}

/// The server's answer to a check-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckInAnswer {
    /// Seconds until the next check-in (0 after a long poll the server
    /// held: the hold was the wait, check in again at once).
    pub poll_seconds: u32,
    /// The update assigned to this device, if any.
    #[serde(default)]
    pub update: Option<Update>,
    /// The name the server knows the device by (for its page and logs;
    /// a device given only a token learns it here). Absent from older
    /// servers; older devices ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<Name>,
}

/// An update assigned to a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    /// Deployment id; events about this update carry it.
    pub deployment: u64,
    /// The signed manifest (encoded manifest + Ed25519 signature), standard base64.
    pub manifest: heapless::String<MANIFEST_B64_MAX>,
    /// Where to download the image: a path on the server (starting with `/`) or an absolute URL.
    pub url: heapless::String<URL_MAX>,
    /// Image size in bytes.
    pub size: u32,
    /// SHA-256 of the image, lowercase hex (also the download's `ETag`).
    pub sha256: Sha256Hex,
    /// Version string of the new image, for logs and the device page.
    pub version: Label,
}

/// Progress or result of an update, reported by the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The deployment this event belongs to; `None` for updates the server did
    /// not assign (a local upload through the device page) and plain boots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<u64>,
    /// What happened.
    pub kind: EventKind,
    /// Why, for `failed` and `rolled_back`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// Free text for humans (an error message); never parsed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<heapless::String<DETAIL_MAX>>,
    /// How long before this request the event happened, in milliseconds by
    /// the device's own clock (a device needs no wall clock for it): events
    /// that wait in the device's queue and go out together keep their own
    /// times. Absent: it happened now. The server counts at most
    /// [`EVENT_AGE_MAX_MS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_ms: Option<u32>,
}

/// The oldest an event's [`Event::age_ms`] may place it (one day); a larger
/// age counts as this.
pub const EVENT_AGE_MAX_MS: u32 = 24 * 60 * 60 * 1000;

/// The kinds of device events, in the order an update produces them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The download started (or resumed).
    Downloading,
    /// The whole image is written; structure, digest and signature are being checked.
    Verifying,
    /// Verified and activated; the new image boots at the next reset.
    Installed,
    /// The device is resetting into the new image.
    Rebooting,
    /// The new image booted (not confirmed yet).
    Booted,
    /// The new image passed its health check and is marked valid: success.
    Confirmed,
    /// The new image failed to confirm and the device went back to the previous one.
    RolledBack,
    /// The update was refused or failed before activation; the old image keeps running.
    Failed,
}

impl EventKind {
    /// Every kind, in the order an update produces them. New kinds are
    /// appended: a device's notes store a kind as its index here.
    pub const ALL: [EventKind; 8] = [
        Self::Downloading,
        Self::Verifying,
        Self::Installed,
        Self::Rebooting,
        Self::Booted,
        Self::Confirmed,
        Self::RolledBack,
        Self::Failed,
    ];

    /// Whether this kind ends an update attempt.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Confirmed | Self::RolledBack | Self::Failed)
    }

    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Downloading => "downloading",
            Self::Verifying => "verifying",
            Self::Installed => "installed",
            Self::Rebooting => "rebooting",
            Self::Booted => "booted",
            Self::Confirmed => "confirmed",
            Self::RolledBack => "rolled_back",
            Self::Failed => "failed",
        }
    }
}

impl core::fmt::Display for EventKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an update failed or was rolled back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The image is malformed or its SHA-256 differs from the manifest.
    Verification,
    /// The manifest's signature is invalid or names an untrusted key.
    Signature,
    /// The image is built for another chip.
    Chip,
    /// The image does not fit the inactive slot.
    TooBig,
    /// The image's security version is below the device's minimum.
    SecurityVersion,
    /// The download failed (network, HTTP error, server gone).
    Download,
    /// Erasing or programming flash failed.
    Flash,
    /// The new image did not confirm within the allowed boots.
    BootFailed,
    /// Anything else (see the event's detail).
    Other,
}

impl Reason {
    /// Every reason. New reasons are appended: a device's notes store a
    /// reason as its index here.
    pub const ALL: [Reason; 9] = [
        Self::Verification,
        Self::Signature,
        Self::Chip,
        Self::TooBig,
        Self::SecurityVersion,
        Self::Download,
        Self::Flash,
        Self::BootFailed,
        Self::Other,
    ];

    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Verification => "verification",
            Self::Signature => "signature",
            Self::Chip => "chip",
            Self::TooBig => "too_big",
            Self::SecurityVersion => "security_version",
            Self::Download => "download",
            Self::Flash => "flash",
            Self::BootFailed => "boot_failed",
            Self::Other => "other",
        }
    }
}

impl core::fmt::Display for Reason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The server's answer to an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventAck {
    /// Whether the event changed the state of its deployment (false for duplicates and late events).
    pub accepted: bool,
}

/// Most events one request carries.
pub const EVENTS_MAX: usize = 8;

/// Several events in one request, in the order they happened: what a device
/// sends when it has more than one to report at once (verifying, installed
/// and rebooting just before it resets), saving a round trip each. The
/// events endpoint takes a JSON array of [`Event`]s for it.
pub type EventBatch = heapless::Vec<Event, EVENTS_MAX>;

/// The server's answer to an [`EventBatch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBatchAck {
    /// For each event, in order: whether it changed its deployment's state.
    pub accepted: heapless::Vec<bool, EVENTS_MAX>,
}

/// Enrolment: a device without a token asks for one with the fleet's enrolment secret.
///
/// The secret decides what the device gets: it is enrolled with the tags
/// the operator gave the secret, and only under a name the secret allows
/// (refused with 403 `name_not_granted` otherwise). `tags` may name some of
/// the secret's tags (older devices send theirs); a tag the secret does not
/// grant is refused with 403 `tag_not_granted`, never added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The fleet enrolment secret configured on the server.
    pub secret: Token,
    /// The name the device wants (unique in the fleet; typically derived from its MAC address).
    pub name: Name,
    /// Tags the device expects (each must be one the secret grants).
    #[serde(default)]
    pub tags: heapless::Vec<Tag, TAGS_MAX>,
}

/// The error code of a device call refused because its token will never
/// work again: the device was revoked or deleted, or a new token replaced
/// this one (HTTP 401). A device tells it from other refusals by this code
/// and stops retrying at its poll interval: it needs a new token.
pub const TOKEN_REVOKED: &str = "token_revoked";

/// Longest error code a device reads.
pub const ERROR_CODE_MAX: usize = 32;

/// How the server answers a refused call (any 4xx):
/// `{"error": {"code": "token_revoked", "message": "..."}}`. A device reads
/// only the code; the message, meant for people, is skipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorAnswer {
    /// The error.
    pub error: ErrorCode,
}

/// The machine-readable part of an [`ErrorAnswer`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCode {
    /// E.g. [`TOKEN_REVOKED`], `unauthorized`, `bad_json`.
    pub code: heapless::String<ERROR_CODE_MAX>,
}

impl ErrorAnswer {
    /// Whether the server said the device's token will never work again.
    pub fn is_token_revoked(&self) -> bool {
        self.error.code == TOKEN_REVOKED
    }
}

/// The answer to an enrolment: the device's token, shown only this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollAnswer {
    /// The device's name.
    pub name: Name,
    /// Bearer token for all further device calls.
    pub token: Token,
}
