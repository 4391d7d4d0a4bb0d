//! The boot guard, run first in `main`.

use core::fmt;

use airlift_client::health::ServerContact;
use airlift_engine::{AppSlot, BootDecision, Config, DEFAULT_MAX_ATTEMPTS, Device, Layout};
use esp_bootloader_esp_idf::partitions::{PARTITION_TABLE_MAX_LEN, read_partition_table};
use esp_hal::peripherals::{FLASH, RTC_TIMER};
use esp_hal::time::Duration;

use crate::flash::{self, Flash};
use crate::watchdog::Watchdog;

/// Where the partition table is on every ESP32 with the default bootloader.
const TABLE_OFFSET: u32 = 0x8000;

/// How the boot guard runs.
#[derive(Debug, Clone, Copy)]
pub struct GuardConfig {
    /// Boots an image on trial gets before it is rolled back.
    pub max_attempts: u8,
    /// The watchdog's timeout: the longest the app may go without the
    /// watchdog being fed (by [`crate::supervise`]) before the chip resets.
    pub watchdog_timeout: Duration,
    /// Release keys compiled into the firmware, trusted besides those
    /// provisioned in Airlift's data partition.
    pub trusted_keys: &'static [[u8; 32]],
}

impl Default for GuardConfig {
    /// 3 attempts, a 10 s watchdog, no compiled-in keys.
    fn default() -> Self {
        GuardConfig {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            watchdog_timeout: Duration::from_secs(10),
            trusted_keys: &[],
        }
    }
}

/// Why the boot guard could not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardError {
    /// The engine could not open the device or run the boot guard (a flash
    /// error, a partition table without otadata, OTA slots or Airlift's
    /// data partition).
    Engine(airlift_engine::Error),
}

impl fmt::Display for GuardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuardError::Engine(e) => write!(f, "airlift boot guard: {e}"),
        }
    }
}

impl core::error::Error for GuardError {}

/// The boot guard could not run; the watchdog is still armed.
pub struct GuardFailure {
    /// What went wrong.
    pub error: GuardError,
    /// The armed watchdog: [`Watchdog::disarm`] it to run the app without
    /// Airlift, or let it reset the chip.
    pub watchdog: Watchdog,
}

impl fmt::Debug for GuardFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

/// The boot guard ran and this image may run.
pub struct Booted {
    /// The engine and what it decided about this boot.
    pub airlift: Airlift,
    /// The armed watchdog, for [`crate::supervise`] to feed.
    pub watchdog: Watchdog,
}

/// The update engine on this chip, after the boot guard.
pub struct Airlift {
    device: Device<'static, Flash>,
    slot: AppSlot,
    trial: Option<(u8, u8)>,
    server: ServerContact,
}

impl Airlift {
    /// The slot this image runs from.
    pub fn slot(&self) -> AppSlot {
        self.slot
    }

    /// For an image on trial: this boot's attempt and the limit.
    pub fn trial(&self) -> Option<(u8, u8)> {
        self.trial
    }

    /// Confirms the running image: it stays after the next reset. Returns
    /// `false` when there was nothing to confirm.
    pub fn confirm(&mut self) -> Result<bool, airlift_engine::Error> {
        if self.trial.is_none() {
            return Ok(false);
        }
        let confirmed = self.device.confirm()?;
        self.trial = None;
        Ok(confirmed)
    }

    /// What the device has seen of its server since this boot (the default
    /// health policy's input).
    pub fn server_contact(&self) -> ServerContact {
        self.server
    }

    /// Records what the device has seen of its server; the update task
    /// calls it (phase 2: with the client crate's check-ins).
    pub fn set_server_contact(&mut self, contact: ServerContact) {
        self.server = contact;
    }

    /// The engine, for installs and status.
    pub fn device(&mut self) -> &mut Device<'static, Flash> {
        &mut self.device
    }
}

/// The slot the bootloader started: the app partition whose start the
/// flash cache's first MMU page maps (esp-bootloader-esp-idf reads the MMU
/// for this chip), `None` when it cannot be told.
pub fn running_slot(flash: &mut Flash, layout: &Layout) -> Option<AppSlot> {
    let mut raw = [0u8; PARTITION_TABLE_MAX_LEN];
    let table = read_partition_table(flash, &mut raw).ok()?;
    let booted = table.booted_partition().ok()??;
    layout.slot_at(booted.offset())
}

/// Runs the boot guard: the first thing `main` does after `esp_hal::init`.
///
/// Arms the RTC watchdog with `config.watchdog_timeout`, opens the flash,
/// and runs the engine's boot guard for the slot the bootloader started.
/// When the image used up its attempts, the previous image is selected and
/// the chip resets here. An error leaves the watchdog armed, in the
/// [`GuardFailure`].
pub fn boot_guard(
    flash: FLASH<'static>,
    rtc_timer: RTC_TIMER<'static>,
    config: GuardConfig,
) -> Result<Booted, GuardFailure> {
    let watchdog = Watchdog::arm(rtc_timer, config.watchdog_timeout);
    match guard(flash::open(flash), &config) {
        Ok(airlift) => Ok(Booted { airlift, watchdog }),
        Err(e) => Err(GuardFailure {
            error: GuardError::Engine(e),
            watchdog,
        }),
    }
}

fn guard(mut flash: Flash, config: &GuardConfig) -> Result<Airlift, airlift_engine::Error> {
    let layout = Layout::read(&mut flash, TABLE_OFFSET)?;
    let running = running_slot(&mut flash, &layout);
    if running.is_none() {
        log::warn!("airlift: cannot tell the running slot; assuming the one otadata selects");
    }
    let engine_config = Config {
        max_attempts: config.max_attempts,
        trusted_keys: config.trusted_keys,
        table_offset: TABLE_OFFSET,
        ..Config::default()
    };
    let mut device = Device::with_layout(flash, layout, engine_config)?;
    // No wall clock before the network is up: the boot log gets 0.
    match device.boot(running, 0)? {
        BootDecision::ResetRequired { from, to, attempts } => {
            log::warn!(
                "airlift: {from} did not confirm in {attempts} boots; rolled back to {to}, resetting"
            );
            esp_hal::system::software_reset()
        }
        BootDecision::Run {
            slot,
            confirmed,
            attempt,
            max_attempts,
        } => {
            if confirmed {
                log::info!("airlift: running {slot}, confirmed");
            } else {
                log::info!("airlift: running {slot} on trial, attempt {attempt} of {max_attempts}");
            }
            Ok(Airlift {
                device,
                slot,
                trial: (!confirmed).then_some((attempt, max_attempts)),
                server: ServerContact::NotConfigured,
            })
        }
    }
}
