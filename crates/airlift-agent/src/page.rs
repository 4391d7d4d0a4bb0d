//! What the device page sees of the device loop, and what it asks of it:
//! the live [`Snapshot`] and the [`Command`]s of [`Control`].

use std::sync::{Arc, Mutex};

use airlift_client::Running;
use airlift_protocol::Reason;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::hex;
use crate::report::Report;

/// Why a local install (upload or pull) was refused.
#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    /// The protocol reason code.
    pub reason: Reason,
    /// What was wrong.
    pub message: String,
}

impl From<airlift_client::Refusal> for Refusal {
    fn from(r: airlift_client::Refusal) -> Refusal {
        Refusal {
            reason: r.reason,
            message: r.message.as_str().to_owned(),
        }
    }
}

/// A request from the device page to the device loop.
#[derive(Debug)]
pub enum Command {
    /// Install an uploaded image with its signed manifest.
    Upload {
        /// The `.bin`.
        image: Vec<u8>,
        /// The signed manifest (`airlift release sign`).
        manifest: Vec<u8>,
        /// Answered with the new version, or why not.
        reply: oneshot::Sender<Result<String, Refusal>>,
    },
    /// Download an image and its signed manifest, then install.
    Pull {
        /// URL of the `.bin`.
        url: String,
        /// URL of the signed manifest.
        manifest_url: String,
        /// Answered with the new version, or why not.
        reply: oneshot::Sender<Result<String, Refusal>>,
    },
    /// Reset the device.
    Reboot,
}

/// The image running now.
#[derive(Debug, Clone, Serialize)]
pub struct RunningInfo {
    /// Slot it runs from.
    pub slot: String,
    /// Project name.
    pub project: String,
    /// Version.
    pub version: String,
    /// SHA-256, lowercase hex.
    pub sha256: String,
    /// Security version.
    pub security_version: u32,
    /// Chip id.
    pub chip_id: u16,
    /// Whether it is confirmed.
    pub confirmed: bool,
    /// This boot's attempt number for an unconfirmed image.
    pub attempt: u8,
}

impl From<&Running> for RunningInfo {
    fn from(r: &Running) -> RunningInfo {
        RunningInfo {
            slot: r.slot.to_string(),
            project: r.project.to_string(),
            version: r.version.to_string(),
            sha256: hex(&r.sha256),
            security_version: r.security_version,
            chip_id: r.chip_id,
            confirmed: r.confirmed,
            attempt: r.attempt,
        }
    }
}

/// What the device page shows; refreshed by the device loop.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// Device name.
    pub name: String,
    /// The running image.
    pub running: Option<RunningInfo>,
    /// `booting`, `trial`, `idle`, `downloading`, `installed`.
    pub state: String,
    /// The server, when one is configured.
    pub server: Option<String>,
    /// Unix seconds of the last answered check-in.
    pub last_checkin: Option<u64>,
    /// The last problem talking to the server.
    pub last_error: Option<String>,
    /// Power-ons since the agent started.
    pub boots: u64,
    /// What the flash says.
    pub flash: Option<Report>,
}

/// The handles the device page uses.
#[derive(Clone)]
pub struct Control {
    /// Sends commands to the device loop.
    pub commands: mpsc::Sender<Command>,
    /// The device loop's latest view.
    pub snapshot: Arc<Mutex<Snapshot>>,
}
