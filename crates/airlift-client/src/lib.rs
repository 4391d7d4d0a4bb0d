//! Airlift's device brain: every decision a device makes around the update
//! engine, once, for the PC agent and the ESP32 firmware alike.
//!
//! `#![no_std]`, no allocation, no I/O but the engine's flash: the caller
//! does the networking, the timers and the resets, and tells the client
//! what happened; the client says what to do next. Time comes in as an
//! argument ([`Clock`]), and so does randomness (the jitter of the first
//! check-in).
//!
//! # One power-on
//!
//! 1. The bootloader starts a slot; [`Client::boot`] runs the engine's boot
//!    guard ([`BootStep::Reset`]: reset now), reads the [notes],
//!    settles a pending update (confirmed earlier, or rolled back: its
//!    trial boots in the boot log outnumber those before the attempt), and
//!    queues what the server must hear: a bootloader fallback (with the
//!    security version when it is below the device's minimum), a trial
//!    boot with its attempt number.
//! 2. A trial image that is healthy calls [`Client::confirm`]: the engine
//!    confirms, the notes record the result, which rides on the next
//!    check-in when nothing else waits to be sent.
//! 3. The caller sends the queued events ([`Client::take_events`]: one
//!    request, each event with its age), then checks in
//!    ([`Client::check_in`]) after [`Client::first_wait_ms`], and hands the
//!    answer to [`Client::on_answer`]: the next wait, an update withdrawn
//!    by the server (forgotten), or one to install.
//! 4. An install: [`Client::begin_assigned`] (or [`Client::begin_local`]
//!    for the device page), [`Client::start`] gives a [`Session`] that says
//!    which bytes to fetch ([`Session::request`], with `Range` and
//!    `If-Range` when resuming), judges each response
//!    ([`Session::on_response`]), writes each chunk to the engine
//!    ([`Session::on_data`]), counts interruptions and gives up after
//!    [`download::MAX_RETRIES`] ([`Session::interrupted`]); then
//!    [`Client::finish_install`] verifies and activates, restarting once
//!    from byte 0 after a stale resume. A failure goes to
//!    [`Client::install_failed`], which knows which are results and which
//!    resume later; the engine's error becomes a protocol
//!    [`Reason`](airlift_protocol::Reason) by [`reason_of`].
//!
//! # Around the update
//!
//! - [`health`]: when an image on trial has earned its confirmation.
//! - [`time`] and [`sntp`]: the wall clock a device learns once online, and
//!   the records written before it, marked undated and dated once it is
//!   known ([`Client::time_known`]).
//! - [`page`] and [`status`]: the device page's contract (routes, the
//!   password, uploads, the answers, the flash report), for the agent's
//!   web server and the firmware's alike.
//!
//! # What it keeps on flash
//!
//! In the last 16 KiB of Airlift's data partition, beside the engine's log
//! ([`airlift_engine::Layout::records`]; so an app's own `nvs` stays the
//! app's), two kinds of power-safe [records]: the [notes] about updates
//! (sectors 0 and 1)
//! and the provisioned [settings] (sectors 2 and 3: Wi-Fi, server,
//! token, boot-attempt limit). `airlift sim power-cut` cuts power at every
//! flash operation of their writes.
//!
//! # Memory
//!
//! A [`Client`] holds the running image, the notes' RAM part, the event
//! outbox and one unreported result; a [`Session`] holds the engine's
//! install session and the signed manifest. The `memory_budget` test
//! states the sum against a budget. Nothing is on the heap; history entries
//! stay on flash and are read one at a time.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "std")]
extern crate std;

mod client;
pub mod download;
pub mod health;
pub mod notes;
pub mod outbox;
pub mod page;
pub mod records;
mod session;
pub mod settings;
pub mod sntp;
pub mod status;
pub mod text;
pub mod time;

#[cfg(feature = "sim")]
pub mod sim;

use core::fmt;

pub use client::{
    Answered, Attempt, BootStep, Client, Clock, Config, Detail, OFFLINE_WAIT_MS, Refusal, Running,
};
pub use records::RecordError;
pub use session::{Chunk, Failure, Finished, Session, reason_of};

/// Where the client's narration goes (a log line each; the firmware's
/// logger, the agent's observer). `()` drops it.
pub trait Journal {
    /// One line.
    fn log(&mut self, line: fmt::Arguments<'_>);
}

impl Journal for () {
    fn log(&mut self, _: fmt::Arguments<'_>) {}
}

/// What can stop the client (besides the network, which is the caller's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The engine failed (flash errors included: a power cut shows as one).
    Engine(airlift_engine::Error),
    /// The notes could not be read or written.
    Notes(RecordError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Engine(e) => e.fmt(f),
            Error::Notes(e) => write!(f, "device notes: {e}"),
        }
    }
}

impl core::error::Error for Error {}

impl From<airlift_engine::Error> for Error {
    fn from(e: airlift_engine::Error) -> Error {
        Error::Engine(e)
    }
}

impl From<RecordError> for Error {
    fn from(e: RecordError) -> Error {
        Error::Notes(e)
    }
}
