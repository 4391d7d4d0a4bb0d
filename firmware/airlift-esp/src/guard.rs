//! The boot guard, run first in `main`.

use core::fmt;

use airlift_client::health::ServerContact;
use airlift_client::notes::NoteStore;
use airlift_client::settings::{Settings, SettingsStore};
use airlift_client::time::WallClock;
use airlift_client::{BootStep, Client, Clock};
use airlift_engine::slot::{SlotImage, read_slot};
use airlift_engine::{AppSlot, Config, DEFAULT_MAX_ATTEMPTS, Device, Layout};
use esp_bootloader_esp_idf::partitions::{PARTITION_TABLE_MAX_LEN, read_partition_table};
use esp_hal::peripherals::{FLASH, RTC_TIMER};
use esp_hal::time::Duration;

use crate::flash::{self, Flash};
use crate::journal::{Log, now_ms};
use crate::watchdog::Watchdog;

/// Where the partition table is on every ESP32 with the default bootloader.
const TABLE_OFFSET: u32 = 0x8000;

/// How the boot guard runs.
#[derive(Debug, Clone, Copy)]
pub struct GuardConfig {
    /// Boots an image on trial gets before it is rolled back, unless the
    /// provisioned settings say otherwise.
    pub max_attempts: u8,
    /// The watchdog's timeout: the longest the app may go without the
    /// watchdog being fed (by [`crate::supervise`]) before the chip resets.
    pub watchdog_timeout: Duration,
    /// Release keys compiled into the firmware, trusted besides those
    /// provisioned in Airlift's data partition.
    pub trusted_keys: &'static [[u8; 32]],
    /// Wait before retrying a failed check-in or download, in ms.
    pub retry_delay_ms: u64,
}

impl Default for GuardConfig {
    /// 3 attempts, a 10 s watchdog, no compiled-in keys, retries after 10 s.
    fn default() -> Self {
        GuardConfig {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            watchdog_timeout: Duration::from_secs(10),
            trusted_keys: &[],
            retry_delay_ms: 10_000,
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
    /// The client could not read or write its records.
    Client(airlift_client::Error),
    /// Airlift's data partition has no room for the client's records.
    NoRecords,
    /// The slot the bootloader started holds no image that would boot
    /// (it cannot be this one).
    RunningImage(AppSlot),
}

impl fmt::Display for GuardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuardError::Engine(e) => write!(f, "airlift boot guard: {e}"),
            GuardError::Client(e) => write!(f, "airlift boot guard: {e}"),
            GuardError::NoRecords => f.write_str(
                "airlift boot guard: the airlift data partition is too small for the device's records (24 KiB at least)",
            ),
            GuardError::RunningImage(slot) => {
                write!(f, "airlift boot guard: {slot} holds no valid image")
            }
        }
    }
}

impl core::error::Error for GuardError {}

impl From<airlift_engine::Error> for GuardError {
    fn from(e: airlift_engine::Error) -> GuardError {
        GuardError::Engine(e)
    }
}

impl From<airlift_client::Error> for GuardError {
    fn from(e: airlift_client::Error) -> GuardError {
        GuardError::Client(e)
    }
}

impl From<airlift_client::RecordError> for GuardError {
    fn from(e: airlift_client::RecordError) -> GuardError {
        GuardError::Client(e.into())
    }
}

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
    /// The engine, the client and what they decided about this boot.
    pub airlift: Airlift,
    /// The armed watchdog, for [`crate::supervise`] to feed.
    pub watchdog: Watchdog,
}

/// The update engine and the device's client on this chip, after the boot
/// guard: what every Airlift task shares ([`crate::share`]).
pub struct Airlift {
    pub(crate) device: Device<'static, Flash>,
    pub(crate) client: Client,
    pub(crate) notes: NoteStore,
    pub(crate) settings: Settings,
    pub(crate) server: ServerContact,
    pub(crate) wall: WallClock,
}

impl Airlift {
    /// The slot this image runs from.
    pub fn slot(&self) -> Option<AppSlot> {
        self.client.running().map(|r| r.slot)
    }

    /// For an image on trial: this boot's attempt.
    pub fn trial(&self) -> Option<u8> {
        self.client
            .running()
            .filter(|r| !r.confirmed)
            .map(|r| r.attempt)
    }

    /// The provisioned settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The time as this device knows it now.
    pub fn clock(&self) -> Clock {
        self.wall.clock(now_ms())
    }

    /// Confirms the running image: it stays after the next reset, and the
    /// server hears of it at the next check-in. Returns `false` when there
    /// was nothing to confirm.
    pub fn confirm(&mut self) -> Result<bool, airlift_client::Error> {
        if self.trial().is_none() {
            return Ok(false);
        }
        let clock = self.clock();
        self.client.confirm(&mut self.device, clock, &mut Log)?;
        Ok(true)
    }

    /// What the device has seen of its server since this boot (the default
    /// health policy's input).
    pub fn server_contact(&self) -> ServerContact {
        self.server
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
/// reads the provisioned settings, verifies the image the bootloader
/// started, and runs the device client's boot (the engine's boot guard,
/// then what to report). When the image used up its attempts, the
/// previous image is selected and the chip resets here. An error leaves
/// the watchdog armed, in the [`GuardFailure`].
pub fn boot_guard(
    flash: FLASH<'static>,
    rtc_timer: RTC_TIMER<'static>,
    config: GuardConfig,
) -> Result<Booted, GuardFailure> {
    let watchdog = Watchdog::arm(rtc_timer, config.watchdog_timeout);
    match guard(flash::open(flash), &config) {
        Ok(airlift) => Ok(Booted { airlift, watchdog }),
        Err(error) => Err(GuardFailure { error, watchdog }),
    }
}

fn guard(mut flash: Flash, config: &GuardConfig) -> Result<Airlift, GuardError> {
    let layout = Layout::read(&mut flash, TABLE_OFFSET)?;
    let records = layout.records.ok_or(GuardError::NoRecords)?;
    // Before the engine opens: the attempt limit is part of its config.
    let settings = SettingsStore::new(records)?
        .load(&mut flash)?
        .unwrap_or_default();
    let running = running_slot(&mut flash, &layout);
    let max_attempts = match settings.max_attempts {
        0 => config.max_attempts,
        n => n,
    };
    let engine_config = Config {
        max_attempts,
        trusted_keys: config.trusted_keys,
        table_offset: TABLE_OFFSET,
        ..Config::default()
    };
    let mut device = Device::with_layout(flash, layout, engine_config)?;
    let selected = device.status()?.selected;
    let slot = running.unwrap_or_else(|| {
        log::warn!("airlift: cannot tell the running slot; assuming the one otadata selects");
        selected
    });
    let region = layout.slot(slot).ok_or(GuardError::RunningImage(slot))?;
    let SlotImage::Image(info) = read_slot(device.flash_mut(), region)? else {
        return Err(GuardError::RunningImage(slot));
    };
    // This firmware speaks plain HTTP: settings that ask for HTTPS leave it
    // offline (its page still works) rather than sending the token in clear.
    let reachable = settings.check_for(false);
    if let Err(e) = &reachable {
        log::error!("airlift: not checking in: {e}");
    }
    let has_server = !settings.server.is_empty() && reachable.is_ok();
    let notes = NoteStore::new(records)?;
    let mut client = Client::new(
        airlift_client::Config {
            max_attempts,
            has_server,
            poll_ms: None,
            retry_delay_ms: config.retry_delay_ms,
            jitter: true,
            // Held up to 20 s, within the HTTP client's 30 s socket timeout;
            // a pull from the page or a wake ends the hold (`update::round`).
            long_poll_seconds: crate::http::LONG_POLL_SECONDS,
        },
        notes,
    );
    // No wall clock before the network is up: the boot is logged undated
    // and dated once a time server answered (airlift_client::time).
    let clock = WallClock::new().clock(now_ms());
    match client.boot(&mut device, selected, slot, &info, clock, &mut Log)? {
        BootStep::Reset => esp_hal::system::software_reset(),
        BootStep::Run { .. } => Ok(Airlift {
            device,
            client,
            notes,
            settings,
            server: if has_server {
                ServerContact::Waiting
            } else {
                ServerContact::NotConfigured
            },
            wall: WallClock::new(),
        }),
    }
}
