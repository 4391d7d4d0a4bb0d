//! Airlift's device agent: the ESP32 firmware's twin on a PC.
//!
//! The same engine ([`airlift_engine`]), the same protocol
//! ([`airlift_protocol`]) and the same local web page as the firmware, over
//! a flash laid out byte for byte like a real ESP32's:
//!
//! * [`flash`]: [`flash::FileFlash`], a 4 MiB file (`airlift flash create`),
//!   where every erase or program is one `pwrite`, so a SIGKILL is a power
//!   cut; and [`flash::CowFlash`], an in-memory copy-on-write flash over a
//!   shared base image for the fleet simulator.
//! * [`provision`]: builds a flash image (partition table at 0x8000,
//!   otadata, firmware in `ota_0`, trusted keys in Airlift's data partition).
//! * [`report`]: what `airlift flash inspect` and the device page show.
//! * [`device`]: the device loop around `airlift-client`, the device's
//!   brain (every update decision is the client's): power on, the engine's
//!   simulated bootloader, the simulated firmware behaviour (healthy,
//!   crash, hang), the device page's commands, timers. One loop, generic
//!   over the flash, serves `airlift device run` and `airlift fleet sim`.
//! * [`config`]: how a simulated device is set up.
//! * [`transport`]: its HTTP (reqwest) and `download`: an install's bytes
//!   from the server into the client's session.
//! * [`page`]: what the device page sees and asks; [`web`]: the page and
//!   its API (`web/device`).
//! * [`tls`]: how a device trusts its server over HTTPS (system roots, a
//!   CA, or a pinned certificate) and refuses plain HTTP when told to.
//!
//! **Architecture invariant:** all device state lives in the flash; the
//! agent process holds only caches, so killing it at any moment is a power
//! cut and restarting it is a reset.
#![warn(missing_docs)]

pub mod config;
pub mod device;
mod download;
pub mod flash;
pub mod fleet;
pub mod page;
pub mod provision;
pub mod report;
pub mod tls;
pub mod transport;
pub mod web;

/// Everything that can go wrong in the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The update engine refused or failed.
    #[error("{0}")]
    Engine(#[from] airlift_engine::Error),
    /// The flash file could not be opened or created.
    #[error("flash file: {0}")]
    Io(#[from] std::io::Error),
    /// The client (the device's update logic) failed: the engine, or the
    /// notes it keeps at the end of Airlift's data partition.
    #[error("{0}")]
    Client(#[from] airlift_client::Error),
    /// A firmware image or partition table given to provisioning is unusable.
    #[error("{0}")]
    Provision(String),
    /// No slot holds a bootable image.
    #[error("no slot holds a valid image: the device is bricked")]
    Bricked,
    /// Airlift's data partition is too small to hold the client's records
    /// beside the engine's log.
    #[error(
        "the airlift data partition is {size} bytes: the device keeps its notes and settings in its last 16K beside the engine's log, so it needs at least 24K (64K recommended)"
    )]
    NoRecords {
        /// The partition's size.
        size: u32,
    },
    /// Talking to the server failed.
    #[error("server: {0}")]
    Http(String),
    /// The server refused a call with an error code (`token_revoked`: the
    /// device's token will never work again).
    #[error("server refused ({status}, {code}): {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The error code of its answer.
        code: String,
        /// The answer.
        message: String,
    },
}

impl From<airlift_client::RecordError> for AgentError {
    fn from(e: airlift_client::RecordError) -> AgentError {
        AgentError::Client(e.into())
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
