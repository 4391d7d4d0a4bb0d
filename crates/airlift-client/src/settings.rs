//! What a device is provisioned with and keeps across resets: its Wi-Fi
//! network, its server and token, its boot-attempt limit, how it trusts
//! its server over HTTPS (a pinned certificate, whether plain HTTP is
//! refused), its name, the password of its page (as its SHA-256) and its
//! time server.
//!
//! The same power-safe [records](crate::records) as the notes, in the next
//! two sectors of the same partition (sectors 2 and 3): provisioning writes
//! them (`airlift flash provision`, for the firmware), the device only
//! reads them. Each field is one item, so a field a later version adds is
//! skipped by this one. The secrets are kept out of `Debug`.

use core::fmt;

use airlift_engine::Region;
use airlift_protocol::Token;
use embedded_storage::nor_flash::NorFlash;

use crate::records::{MAX_ITEM, RecordError, RecordPair, SECTOR};
use crate::text::Text;

const KIND_SETTINGS: u8 = 2;
const TAG_SSID: u8 = 1;
const TAG_PASSWORD: u8 = 2;
const TAG_SERVER: u8 = 3;
const TAG_TOKEN: u8 = 4;
const TAG_MAX_ATTEMPTS: u8 = 5;
const TAG_TLS_PIN: u8 = 6;
const TAG_REQUIRE_HTTPS: u8 = 7;
const TAG_NAME: u8 = 8;
const TAG_PAGE_PASSWORD: u8 = 9;
const TAG_TIME_SERVER: u8 = 10;

/// Longest Wi-Fi network name (802.11's bound).
pub const SSID_MAX: usize = 32;
/// Longest Wi-Fi password (WPA2's bound).
pub const WIFI_PASSWORD_MAX: usize = 64;
/// Longest server base URL.
pub const SERVER_MAX: usize = MAX_ITEM;
/// Longest device name.
pub const NAME_MAX: usize = 64;
/// Longest time server name.
pub const TIME_SERVER_MAX: usize = 64;
/// The time server a device asks when none is provisioned.
pub const DEFAULT_TIME_SERVER: &str = "pool.ntp.org";

/// A device's provisioned settings.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// Wi-Fi network name.
    pub wifi_ssid: heapless::String<SSID_MAX>,
    /// Wi-Fi password (empty for an open network).
    pub wifi_password: heapless::String<WIFI_PASSWORD_MAX>,
    /// The server's base URL (`https://updates.example.com`).
    pub server: heapless::String<SERVER_MAX>,
    /// The device's bearer token.
    pub token: Token,
    /// Boots an unconfirmed image gets (0: the engine's default).
    pub max_attempts: u8,
    /// SHA-256 of the certificate the server must present or chain to
    /// (`airlift keys tls` prints it); `None` trusts the usual roots.
    pub tls_pin: Option<[u8; 32]>,
    /// Refuse a plain `http://` server.
    pub require_https: bool,
    /// The device's name on its page (empty: the firmware makes one up).
    pub name: heapless::String<NAME_MAX>,
    /// SHA-256 of the device page's password; `None`: the page's API is
    /// closed (every call answers 401).
    pub page_password: Option<[u8; 32]>,
    /// The SNTP server's host name or address (empty:
    /// [`DEFAULT_TIME_SERVER`]).
    pub time_server: heapless::String<TIME_SERVER_MAX>,
}

/// Why settings cannot be provisioned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingsError {
    /// A text is longer than its field holds.
    TooLong {
        /// Which setting.
        field: &'static str,
        /// Its limit in bytes.
        max: usize,
    },
    /// The server's URL does not start with `http://` or `https://`.
    ServerScheme,
    /// A server needs the device's token.
    NoToken,
    /// A WPA2 password is 8 to 63 characters, or 64 hex digits.
    WifiPassword,
    /// A Wi-Fi password without a network name.
    NoSsid,
    /// HTTPS is required but the server's URL is `http://`.
    PlainHttp,
    /// The device speaks plain HTTP only (the ESP32 firmware, for now) but
    /// its settings ask for HTTPS.
    NoTls,
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SettingsError::TooLong { field, max } => {
                write!(f, "the {field} is longer than {max} bytes")
            }
            SettingsError::ServerScheme => {
                f.write_str("the server's URL must start with http:// or https://")
            }
            SettingsError::NoToken => {
                f.write_str("a server needs the device's token (airlift device add NAME prints it)")
            }
            SettingsError::WifiPassword => f.write_str(
                "a WPA2 Wi-Fi password is 8 to 63 characters, or 64 hex digits (leave it out for an open network)",
            ),
            SettingsError::NoSsid => f.write_str("a Wi-Fi password needs the network's name"),
            SettingsError::PlainHttp => f.write_str(
                "HTTPS is required (--require-https) but the server's URL starts with http://",
            ),
            SettingsError::NoTls => f.write_str(
                "the ESP32 firmware speaks plain HTTP for now: give an http:// server, without \
                 --require-https or --tls-pin (HTTPS on the chip is not built yet)",
            ),
        }
    }
}

impl core::error::Error for SettingsError {}

/// `text` in a field of `N` bytes, or why not.
pub fn field<const N: usize>(
    field: &'static str,
    text: &str,
) -> Result<heapless::String<N>, SettingsError> {
    heapless::String::try_from(text).map_err(|_| SettingsError::TooLong { field, max: N })
}

impl Settings {
    /// Whether a device can work with these settings.
    pub fn check(&self) -> Result<(), SettingsError> {
        if !self.server.is_empty() {
            if !(self.server.starts_with("http://") || self.server.starts_with("https://")) {
                return Err(SettingsError::ServerScheme);
            }
            if self.token.is_empty() {
                return Err(SettingsError::NoToken);
            }
            if self.require_https && self.server.starts_with("http://") {
                return Err(SettingsError::PlainHttp);
            }
        }
        let p = self.wifi_password.as_str();
        let hex = p.len() == 64 && p.bytes().all(|b| b.is_ascii_hexdigit());
        if !(p.is_empty() || (8..=63).contains(&p.len()) || hex) {
            return Err(SettingsError::WifiPassword);
        }
        if !p.is_empty() && self.wifi_ssid.is_empty() {
            return Err(SettingsError::NoSsid);
        }
        Ok(())
    }

    /// Whether a device whose transport speaks HTTPS (`tls`) or plain
    /// HTTP only can work with these settings: [`Settings::check`], and
    /// without HTTPS no `https://` server, pin or HTTPS requirement.
    pub fn check_for(&self, tls: bool) -> Result<(), SettingsError> {
        self.check()?;
        let wants_tls =
            self.server.starts_with("https://") || self.require_https || self.tls_pin.is_some();
        if !tls && wants_tls {
            return Err(SettingsError::NoTls);
        }
        Ok(())
    }

    /// The time server to ask.
    pub fn time_server(&self) -> &str {
        if self.time_server.is_empty() {
            DEFAULT_TIME_SERVER
        } else {
            &self.time_server
        }
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |s: &str| if s.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("Settings")
            .field("wifi_ssid", &self.wifi_ssid)
            .field("wifi_password", &redacted(&self.wifi_password))
            .field("server", &self.server)
            .field("token", &redacted(&self.token))
            .field("max_attempts", &self.max_attempts)
            .field("tls_pin", &self.tls_pin.is_some())
            .field("require_https", &self.require_https)
            .field("name", &self.name)
            .field(
                "page_password",
                &self.page_password.map(|_| "<sha-256 redacted>"),
            )
            .field("time_server", &self.time_server)
            .finish()
    }
}

/// The settings' place on flash: sectors 2 and 3 of the partition that
/// holds the notes in its sectors 0 and 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettingsStore {
    pair: RecordPair,
}

impl SettingsStore {
    /// Settings kept in `region`'s sectors 2 and 3 (it needs four).
    pub fn new(region: Region) -> Result<SettingsStore, RecordError> {
        let rest = Region::new(
            region.offset + 2 * SECTOR,
            region.size.saturating_sub(2 * SECTOR),
        );
        Ok(SettingsStore {
            pair: RecordPair::new(rest, KIND_SETTINGS)
                .map_err(|_| RecordError::TooSmall { size: region.size })?,
        })
    }

    /// The newest intact settings, `None` on a device never provisioned.
    pub fn load<F: NorFlash>(&self, flash: &mut F) -> Result<Option<Settings>, RecordError> {
        let Some(copy) = self.pair.newest(flash)? else {
            return Ok(None);
        };
        let mut s = Settings::default();
        let (mut at, mut buf) = (0, [0u8; 2 + MAX_ITEM]);
        while let Some((tag, payload)) = self.pair.next_item(flash, copy, &mut at, &mut buf)? {
            let text = core::str::from_utf8(payload).unwrap_or("");
            match tag {
                TAG_SSID => s.wifi_ssid = Text::from_str_cut(text).0,
                TAG_PASSWORD => s.wifi_password = Text::from_str_cut(text).0,
                TAG_SERVER => s.server = Text::from_str_cut(text).0,
                TAG_TOKEN => s.token = Text::from_str_cut(text).0,
                TAG_MAX_ATTEMPTS => s.max_attempts = payload.first().copied().unwrap_or(0),
                TAG_TLS_PIN => s.tls_pin = payload.try_into().ok(),
                TAG_REQUIRE_HTTPS => s.require_https = payload.first() == Some(&1),
                TAG_NAME => s.name = Text::from_str_cut(text).0,
                TAG_PAGE_PASSWORD => s.page_password = payload.try_into().ok(),
                TAG_TIME_SERVER => s.time_server = Text::from_str_cut(text).0,
                _ => {}
            }
        }
        Ok(Some(s))
    }

    /// Writes `settings` as the next copy (power-safe: a cut leaves the
    /// previous settings).
    pub fn save<F: NorFlash>(&self, flash: &mut F, settings: &Settings) -> Result<(), RecordError> {
        let current = self.pair.newest(flash)?;
        let mut w = self.pair.begin(flash, current)?;
        w.item(flash, TAG_SSID, settings.wifi_ssid.as_bytes())?;
        w.item(flash, TAG_PASSWORD, settings.wifi_password.as_bytes())?;
        w.item(flash, TAG_SERVER, settings.server.as_bytes())?;
        w.item(flash, TAG_TOKEN, settings.token.as_bytes())?;
        w.item(flash, TAG_MAX_ATTEMPTS, &[settings.max_attempts])?;
        if let Some(pin) = &settings.tls_pin {
            w.item(flash, TAG_TLS_PIN, pin)?;
        }
        w.item(
            flash,
            TAG_REQUIRE_HTTPS,
            &[u8::from(settings.require_https)],
        )?;
        w.item(flash, TAG_NAME, settings.name.as_bytes())?;
        if let Some(hash) = &settings.page_password {
            w.item(flash, TAG_PAGE_PASSWORD, hash)?;
        }
        w.item(flash, TAG_TIME_SERVER, settings.time_server.as_bytes())?;
        w.commit(flash)
    }
}
