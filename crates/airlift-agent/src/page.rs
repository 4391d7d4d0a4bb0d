//! What the device page sees of the device loop, and what it asks of it:
//! the live [`Snapshot`] and the [`Command`]s of [`Control`].

use std::sync::{Arc, Mutex};

use airlift_client::status::{DeviceState, PageStatus};
use airlift_protocol::Reason;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::report::Report;

pub use airlift_client::status::RunningInfo;

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

/// What the device page shows ([`Snapshot::page`]); refreshed by the
/// device loop.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Device name.
    pub name: String,
    /// The running image.
    pub running: Option<RunningInfo>,
    /// What the device is doing.
    pub state: DeviceState,
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

impl Snapshot {
    /// `GET /api/status`, as the firmware answers it too.
    pub fn page(&self) -> PageStatus<'_, Report> {
        PageStatus {
            name: &self.name,
            running: self.running.as_ref(),
            state: self.state,
            server: self.server.as_deref(),
            last_checkin: self.last_checkin,
            last_error: self.last_error.as_deref(),
            boots: self.boots,
            flash: self.flash.as_ref(),
        }
    }
}

/// The handles the device page uses.
#[derive(Clone)]
pub struct Control {
    /// Sends commands to the device loop.
    pub commands: mpsc::Sender<Command>,
    /// The device loop's latest view.
    pub snapshot: Arc<Mutex<Snapshot>>,
}
