//! How a simulated device is set up: its server, its timings, the
//! behaviour of each firmware version, and the faults the fleet simulator
//! injects.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use airlift_engine::sim::bootloader::BootloaderKind;

/// What a simulated firmware version does after it boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Passes its health check and confirms itself.
    Healthy,
    /// Resets before confirming (a crash early in `app_main`).
    Crash,
    /// Never confirms; the watchdog resets the chip.
    Hang,
}

impl FromStr for Behaviour {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "healthy" => Ok(Behaviour::Healthy),
            "crash" => Ok(Behaviour::Crash),
            "hang" => Ok(Behaviour::Hang),
            other => Err(format!(
                "unknown behaviour {other:?}: expected healthy, crash or hang"
            )),
        }
    }
}

/// `VERSION=behaviour` rules; versions without a rule are healthy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Behaviours(pub Vec<(String, Behaviour)>);

impl Behaviours {
    /// Parses `VERSION=healthy|crash|hang`.
    pub fn parse_rule(rule: &str) -> Result<(String, Behaviour), String> {
        let (version, kind) = rule
            .rsplit_once('=')
            .ok_or_else(|| format!("{rule:?} is not VERSION=healthy|crash|hang"))?;
        Ok((version.to_owned(), kind.parse()?))
    }

    /// The behaviour of firmware `version`.
    pub fn of(&self, version: &str) -> Behaviour {
        self.0
            .iter()
            .rev()
            .find(|(v, _)| v == version)
            .map_or(Behaviour::Healthy, |(_, b)| *b)
    }
}

/// How a simulated device behaves.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Name for logs.
    pub name: String,
    /// Server base URL (`None`: offline, the local page only).
    pub server: Option<String>,
    /// Device token.
    pub token: Option<String>,
    /// Check-in interval; `None` uses the server's answer.
    pub poll: Option<Duration>,
    /// Check-ins wait up to [`crate::transport::LONG_POLL`] for their
    /// answer (a long poll: the server answers as soon as it offers an
    /// update) instead of being answered at once.
    pub long_poll: bool,
    /// Firmware behaviour per version.
    pub behaviours: Behaviours,
    /// Boots an unconfirmed image gets.
    pub max_attempts: u8,
    /// Time a healthy image takes before confirming.
    pub health_check: Duration,
    /// Time a crashing image runs before it resets.
    pub crash_after: Duration,
    /// Watchdog timeout: a hanging image is reset after it.
    pub watchdog: Duration,
    /// Bytes between install progress records (resume points).
    pub checkpoint_interval: u32,
    /// The ESP-IDF bootloader the device is simulated with.
    pub bootloader: BootloaderKind,
    /// Probability that a download connection drops part way (fleet sim).
    pub drop_rate: f64,
    /// Probability per power-on that power is cut at a random later flash operation (fleet sim).
    pub power_cut_rate: f64,
    /// Delay before retrying a failed download or check-in.
    pub retry_delay: Duration,
    /// Seed of the simulation's random choices.
    pub seed: u64,
    /// Delay the first check-in by a random part of the poll interval (a
    /// fleet does not start in lockstep).
    pub jitter: bool,
    /// Shared limit of concurrent HTTP requests (a fleet behind one NAT).
    pub http_limit: Option<Arc<tokio::sync::Semaphore>>,
    /// The client for image downloads, when they should not share
    /// connections with check-ins and events (`None`: the agent's client).
    /// An ESP32's `esp_https_ota` opens its own connection for the image,
    /// and the server sends a connection that carries only downloads
    /// straight from the file (zero-copy).
    pub downloads: Option<reqwest::Client>,
    /// The network link downloads share (fleet sim, `--link-mbps`).
    pub link: Option<Arc<crate::fleet::Link>>,
    /// Refuse to talk to a plain `http://` server (or pull from one).
    pub require_https: bool,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            name: "device".into(),
            server: None,
            token: None,
            poll: None,
            long_poll: false,
            behaviours: Behaviours::default(),
            max_attempts: airlift_engine::DEFAULT_MAX_ATTEMPTS,
            health_check: Duration::from_millis(200),
            crash_after: Duration::from_millis(100),
            watchdog: Duration::from_secs(1),
            // The engine's default, as on a board: a record per 64 KiB (16
            // per 1 MB image) wears the data partition a quarter as much as
            // one per 16 KiB, and a power cut costs at most 64 KiB of download.
            checkpoint_interval: airlift_engine::DEFAULT_CHECKPOINT_INTERVAL,
            bootloader: BootloaderKind::Plain,
            drop_rate: 0.0,
            power_cut_rate: 0.0,
            retry_delay: Duration::from_millis(500),
            seed: 1,
            jitter: false,
            http_limit: None,
            downloads: None,
            link: None,
            require_https: false,
        }
    }
}

impl AgentConfig {
    /// The engine's configuration for this device.
    pub fn engine(&self) -> airlift_engine::Config<'static> {
        airlift_engine::Config {
            max_attempts: self.max_attempts,
            checkpoint_interval: self.checkpoint_interval,
            ..airlift_engine::Config::default()
        }
    }

    /// The client's configuration for this device.
    pub fn client(&self) -> airlift_client::Config {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        airlift_client::Config {
            max_attempts: self.max_attempts,
            has_server: self.server.is_some(),
            poll_ms: self.poll.map(ms),
            retry_delay_ms: ms(self.retry_delay),
            jitter: self.jitter,
            long_poll_seconds: if self.long_poll {
                u32::try_from(crate::transport::LONG_POLL.as_secs()).unwrap_or(u32::MAX)
            } else {
                0
            },
        }
    }
}
