//! The device loop: what the ESP32 firmware does, over any flash.
//!
//! Each turn of [`Agent::run`] is one power-on: the simulated bootloader
//! picks a slot, the engine's boot guard counts the boot (and may roll back
//! and ask for a reset), the image "runs" with the behaviour its version is
//! given (`healthy` confirms after a health check, `crash` resets before
//! confirming, `hang` never confirms and the watchdog resets), and a
//! confirmed image checks in, downloads (resuming with `Range`), installs
//! through the engine and reboots. Every step is reported as a protocol
//! event. Nothing but caches lives outside the flash, so a killed agent is
//! a power cut and a restarted one is a reset.

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlift_engine::{AppSlot, BootDecision, BootOutcome, Config, Device, Layout, Region};
use airlift_format::image::ImageInfo;
use airlift_format::manifest::base64_decode;
use airlift_protocol::{
    CheckIn, CheckInAnswer, EngineState, EnrollAnswer, EnrollRequest, Event, EventKind, LastResult,
    Reason, RunningImage, Update,
};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::boot::boot_device;
use crate::flash::AgentFlash;
use crate::notes::{HistoryEntry, Notes, Outcome, Pending};
use crate::provision::read_table;
use crate::report::{Report, report};
use crate::{AgentError, hex, now_secs};

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
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            name: "device".into(),
            server: None,
            token: None,
            poll: None,
            behaviours: Behaviours::default(),
            max_attempts: airlift_engine::DEFAULT_MAX_ATTEMPTS,
            health_check: Duration::from_millis(200),
            crash_after: Duration::from_millis(100),
            watchdog: Duration::from_secs(1),
            // The engine's default, as on a board: a record per 64 KiB (16
            // per 1 MB image) wears the data partition a quarter as much as
            // one per 16 KiB, and a power cut costs at most 64 KiB of download.
            checkpoint_interval: airlift_engine::DEFAULT_CHECKPOINT_INTERVAL,
            drop_rate: 0.0,
            power_cut_rate: 0.0,
            retry_delay: Duration::from_millis(500),
            seed: 1,
            jitter: false,
            http_limit: None,
            downloads: None,
            link: None,
        }
    }
}

/// Something the device did, for logs and the fleet simulator's counters.
#[derive(Debug, Clone, Copy)]
pub enum Happening<'a> {
    /// An image started.
    Booted {
        /// Its version.
        version: &'a str,
        /// Whether it is confirmed.
        confirmed: bool,
    },
    /// An event was reported (or would have been, offline).
    Event(EventKind, Option<Reason>),
    /// Bytes of an image received.
    Bytes(u64),
    /// A download connection was retried (resuming with `Range`).
    Retry,
    /// Power was cut (fleet simulator).
    PowerCut,
    /// A check-in was answered.
    CheckedIn,
    /// A line of narration.
    Log(&'a str),
}

/// Receives what devices do: `(device name, what)`.
pub type Observer = Arc<dyn Fn(&str, &Happening<'_>) + Send + Sync>;

/// Why a local install (upload or pull) was refused.
#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    /// The protocol reason code.
    pub reason: Reason,
    /// What was wrong.
    pub message: String,
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
    #[serde(skip)]
    slot_index: u8,
}

impl RunningInfo {
    fn new(slot: AppSlot, info: &ImageInfo) -> RunningInfo {
        let desc = info.app_desc.as_ref();
        RunningInfo {
            slot: slot.to_string(),
            project: desc.map_or(String::new(), |d| d.project_name().into()),
            version: desc.map_or(String::new(), |d| d.version().into()),
            sha256: hex(&info.file_sha256),
            security_version: desc.map_or(0, |d| d.secure_version()),
            chip_id: info.header.chip_id,
            confirmed: true,
            attempt: 0,
            slot_index: match slot {
                AppSlot::Ota(n) => n,
                AppSlot::Factory => 0,
            },
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

enum Next {
    Reset,
}

/// Where an image comes from.
enum Source {
    Bytes(Vec<u8>),
    Http { url: String, sha256: String },
}

enum Failure {
    Refused(airlift_engine::Error),
    Download(String),
    Flash(AgentError),
}

fn reason_of(e: &airlift_engine::Error) -> Reason {
    use airlift_engine::Error as E;
    match e {
        E::BadSignature | E::UnknownKey { .. } | E::Manifest(_) => Reason::Signature,
        E::WrongChip { .. } => Reason::Chip,
        E::TooBig { .. } => Reason::TooBig,
        E::OlderSecurityVersion { .. } => Reason::SecurityVersion,
        E::Image(_)
        | E::ChecksumMismatch
        | E::DigestMismatch
        | E::ShaMismatch
        | E::StaleResume { .. }
        | E::Truncated { .. }
        | E::TooMuchData { .. } => Reason::Verification,
        E::Flash(_) => Reason::Flash,
        _ => Reason::Other,
    }
}

fn bounded<const N: usize>(s: &str) -> heapless::String<N> {
    let mut end = s.len().min(N);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    heapless::String::try_from(&s[..end]).unwrap_or_default()
}

type Dev<'f, F> = Device<'static, &'f mut F>;

/// One simulated device: its flash and everything else the loop needs.
pub struct Agent<F: AgentFlash> {
    flash: F,
    layout: Layout,
    nvs: Region,
    rt: Runtime,
}

struct Runtime {
    config: AgentConfig,
    http: reqwest::Client,
    /// Events waiting to go out with the next one (RAM: lost at a reset).
    outbox: Mutex<Vec<(Event, Instant)>>,
    /// A device-page command that arrived while the firmware was busy,
    /// for the main loop (RAM: lost at a reset).
    deferred: Option<Command>,
    /// A final result the next check-in (made at once) reports for the
    /// first time, with its detail (RAM; the result itself is in the notes
    /// and repeated at every check-in).
    unreported: Mutex<Option<(EventKind, Option<Reason>, String)>>,
    observer: Option<Observer>,
    commands: Option<mpsc::Receiver<Command>>,
    snapshot: Option<Arc<Mutex<Snapshot>>>,
    rng: u64,
    boots: u64,
}

/// A reqwest client suited to devices: short connect timeout, a read
/// timeout so a stalled download is retried.
pub fn http_client() -> Result<reqwest::Client, AgentError> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| AgentError::Http(e.to_string()))
}

/// Enrols a device with a fleet enrolment secret; returns its token.
pub async fn enroll(
    http: &reqwest::Client,
    server: &str,
    secret: &str,
    name: &str,
    tags: &[String],
) -> Result<String, AgentError> {
    let mut t = heapless::Vec::new();
    for tag in tags {
        let _ = t.push(bounded(tag));
    }
    let request = EnrollRequest {
        secret: bounded(secret),
        name: bounded(name),
        tags: t,
    };
    let response = http
        .post(format!(
            "{}/api/v1/device/enroll",
            server.trim_end_matches('/')
        ))
        .json(&request)
        .send()
        .await
        .map_err(|e| AgentError::Http(format!("enrolment: {e}")))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(AgentError::Http(format!(
            "enrolment refused ({status}): {body}"
        )));
    }
    let answer: EnrollAnswer = response
        .json()
        .await
        .map_err(|e| AgentError::Http(format!("enrolment answer: {e}")))?;
    Ok(answer.token.to_string())
}

impl<F: AgentFlash> Agent<F> {
    /// A device over `flash` (which must hold a partition table with OTA
    /// slots, otadata, an `airlift` data partition and an `nvs` partition).
    pub fn new(
        mut flash: F,
        config: AgentConfig,
        http: reqwest::Client,
    ) -> Result<Self, AgentError> {
        let layout = Layout::read(&mut flash, airlift_format::partition::TABLE_OFFSET)?;
        let nvs = read_table(&mut flash)?
            .iter()
            .find(|e| e.label_str() == "nvs")
            .map(|e| Region::new(e.offset, e.size))
            .ok_or(AgentError::NoNvs)?;
        let rng = config.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        Ok(Agent {
            flash,
            layout,
            nvs,
            rt: Runtime {
                config,
                http,
                outbox: Mutex::new(Vec::new()),
                deferred: None,
                unreported: Mutex::new(None),
                observer: None,
                commands: None,
                snapshot: None,
                rng,
                boots: 0,
            },
        })
    }

    /// Reports what the device does to `observer`.
    pub fn observe(mut self, observer: Observer) -> Self {
        self.rt.observer = Some(observer);
        self
    }

    /// The handles for the device page: commands and a live snapshot.
    pub fn control(&mut self) -> Control {
        let (tx, rx) = mpsc::channel(8);
        self.rt.commands = Some(rx);
        let snapshot = Arc::new(Mutex::new(Snapshot {
            name: self.rt.config.name.clone(),
            server: self.rt.config.server.clone(),
            state: "booting".into(),
            ..Snapshot::default()
        }));
        self.rt.snapshot = Some(snapshot.clone());
        Control {
            commands: tx,
            snapshot,
        }
    }

    /// Runs the device forever: power on, run, reset, again. Returns only
    /// on an error that a reset cannot fix (a bricked device, a flash file
    /// that cannot be read).
    pub async fn run(mut self) -> Result<(), AgentError> {
        loop {
            self.flash.power_cycle();
            if self.rt.config.power_cut_rate > 0.0 && self.rt.chance(self.rt.config.power_cut_rate)
            {
                let at = self.rt.next() % 400;
                self.flash.cut_power_in(at);
            }
            let result = self.power_on().await;
            if self.flash.is_dead() {
                self.rt.happen(&Happening::PowerCut);
                continue;
            }
            match result {
                Ok(Next::Reset) => {}
                Err(e) => return Err(e),
            }
        }
    }

    async fn power_on(&mut self) -> Result<Next, AgentError> {
        let Agent {
            flash,
            layout,
            nvs,
            rt,
        } = self;
        rt.boots += 1;
        if let Ok(mut outbox) = rt.outbox.lock() {
            outbox.clear();
        }
        rt.deferred = None;
        if let Ok(mut u) = rt.unreported.lock() {
            *u = None;
        }
        let boot = boot_device(&mut *flash, layout)?;
        let Some((slot, info)) = boot.booted else {
            return Err(AgentError::Bricked);
        };
        let mut running = RunningInfo::new(slot, &info);
        let mut dev: Dev<'_, F> = Device::with_layout(&mut *flash, *layout, rt.engine_config())?;
        let decision = dev.boot(Some(slot), now_secs())?;
        let (confirmed, attempt) = match decision {
            BootDecision::ResetRequired { from, to, attempts } => {
                rt.log(&format!(
                    "boot guard: {from} did not confirm in {attempts} boots; rolled back to {to}, resetting"
                ));
                return Ok(Next::Reset);
            }
            BootDecision::Run {
                confirmed, attempt, ..
            } => (confirmed, attempt),
        };
        running.confirmed = confirmed;
        running.attempt = attempt;
        rt.happen(&Happening::Booted {
            version: &running.version,
            confirmed,
        });
        rt.log(&if confirmed {
            format!(
                "booted {} {} from {}",
                running.project, running.version, running.slot
            )
        } else {
            format!(
                "booted {} {} from {} on trial (attempt {attempt} of {})",
                running.project, running.version, running.slot, rt.config.max_attempts
            )
        });
        let mut notes = Notes::load(dev.flash_mut(), *nvs)?;
        rt.resolve_pending(&mut dev, *nvs, &mut notes, &running)
            .await?;
        if let Some(detail) = fallback(&mut dev, boot.selected, &running)? {
            rt.event(None, EventKind::Booted, Some(Reason::Verification), &detail)
                .await;
        }
        rt.refresh(
            &mut dev,
            &running,
            if confirmed { "idle" } else { "trial" },
            None,
        );
        if !confirmed {
            let deployment = notes
                .pending
                .as_ref()
                .filter(|p| p.sha256 == running.sha256)
                .and_then(|p| p.deployment);
            rt.event(
                deployment,
                EventKind::Booted,
                None,
                &format!("attempt {attempt} of {}", rt.config.max_attempts),
            )
            .await;
            match rt.config.behaviours.of(&running.version) {
                Behaviour::Crash => {
                    if rt.busy(rt.config.crash_after).await {
                        return Ok(Next::Reset);
                    }
                    rt.log(&format!(
                        "{} crashed before confirming: reset",
                        running.version
                    ));
                    return Ok(Next::Reset);
                }
                Behaviour::Hang => {
                    if rt.busy(rt.config.watchdog).await {
                        return Ok(Next::Reset);
                    }
                    rt.log(&format!("{} hangs: watchdog reset", running.version));
                    return Ok(Next::Reset);
                }
                Behaviour::Healthy => {
                    if rt.busy(rt.config.health_check).await {
                        return Ok(Next::Reset);
                    }
                    dev.confirm()?;
                    running.confirmed = true;
                    let detail = format!("{} passed its health check", running.version);
                    rt.finish(
                        &mut dev,
                        *nvs,
                        &mut notes,
                        EventKind::Confirmed,
                        None,
                        &detail,
                    )
                    .await?;
                    rt.refresh(&mut dev, &running, "idle", None);
                }
            }
        }
        rt.main_loop(&mut dev, *nvs, &mut notes, &running).await
    }
}

/// When this boot is one the bootloader had to fall back for (the image
/// otadata selects is not valid, and no update was on trial: the engine
/// logged [`BootOutcome::BootloaderFallback`]), what to tell the server: a
/// device silently running another image than the one it was given is what
/// a fleet operator must hear about, the more so when that image is below
/// the device's minimum security version.
fn fallback<F: AgentFlash>(
    dev: &mut Dev<'_, F>,
    selected: AppSlot,
    running: &RunningInfo,
) -> Result<Option<String>, AgentError> {
    let mut last = None;
    dev.boot_log(|r| last = Some(r.outcome))?;
    if last != Some(BootOutcome::BootloaderFallback) {
        return Ok(None);
    }
    let min = dev.status()?.min_security_version;
    let mut detail = format!(
        "the bootloader could not start {selected} (not a valid image) and started {} {} from {}",
        running.project, running.version, running.slot
    );
    if running.security_version < min {
        detail.push_str(&format!(
            ", whose security version {} is below the device's minimum {min}",
            running.security_version
        ));
    }
    Ok(Some(detail))
}

/// Counts boot-log records of trial boots of the image whose SHA-256 starts
/// with `sha256` (hex).
fn trial_boots<F: AgentFlash>(dev: &mut Dev<'_, F>, sha256: &str) -> Result<u32, AgentError> {
    let mut n = 0;
    dev.boot_log(|r| {
        let trial = matches!(
            r.outcome,
            BootOutcome::Trial | BootOutcome::RolledBack | BootOutcome::TrialNotBooted
        );
        if trial && sha256.starts_with(&hex(&r.sha_prefix)) {
            n += 1;
        }
    })?;
    Ok(n)
}

impl Runtime {
    fn engine_config(&self) -> Config<'static> {
        Config {
            max_attempts: self.config.max_attempts,
            checkpoint_interval: self.config.checkpoint_interval,
            ..Config::default()
        }
    }

    fn next(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    /// The firmware is busy in its own code for `time` (a health check, a
    /// crash on the way, a hang until the watchdog). The device page's web
    /// server still answers: a reboot asked meanwhile resets at once (true);
    /// an upload or a pull waits for the main loop.
    async fn busy(&mut self, time: Duration) -> bool {
        let until = tokio::time::Instant::now() + time;
        loop {
            let Some(rx) = self.commands.as_mut().filter(|_| self.deferred.is_none()) else {
                tokio::time::sleep_until(until).await;
                return false;
            };
            let command = tokio::select! {
                () = tokio::time::sleep_until(until) => return false,
                c = rx.recv() => c,
            };
            match command {
                Some(Command::Reboot) => {
                    self.log("reboot requested from the device page");
                    return true;
                }
                Some(other) => self.deferred = Some(other),
                // The page is gone: nothing can ask any more.
                None => self.commands = None,
            }
        }
    }

    async fn permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        match &self.config.http_limit {
            Some(limit) => limit.clone().acquire_owned().await.ok(),
            None => None,
        }
    }

    fn happen(&self, what: &Happening<'_>) {
        if let Some(o) = &self.observer {
            o(&self.config.name, what);
        }
    }

    fn log(&self, line: &str) {
        self.happen(&Happening::Log(line));
    }

    fn refresh<F: AgentFlash>(
        &self,
        dev: &mut Dev<'_, F>,
        running: &RunningInfo,
        state: &str,
        error: Option<String>,
    ) {
        let Some(snapshot) = &self.snapshot else {
            return;
        };
        let flash = report(dev.flash_mut(), self.config.max_attempts).ok();
        if let Ok(mut s) = snapshot.lock() {
            s.running = Some(running.clone());
            s.state = state.into();
            s.boots = self.boots;
            if flash.is_some() {
                s.flash = flash;
            }
            if let Some(e) = error {
                s.last_error = Some(e);
            }
        }
    }

    fn url(&self, path: &str) -> Option<String> {
        let server = self.config.server.as_deref()?;
        Some(
            if path.starts_with("http://") || path.starts_with("https://") {
                path.to_owned()
            } else {
                format!("{}{path}", server.trim_end_matches('/'))
            },
        )
    }

    fn authed(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.config.token {
            Some(t) => request.bearer_auth(t),
            None => request,
        }
    }

    /// Reports an event, with any deferred ones before it in the same
    /// request (best effort: the last result is repeated at every check-in,
    /// so a lost event loses no result).
    async fn event(
        &self,
        deployment: Option<u64>,
        kind: EventKind,
        reason: Option<Reason>,
        detail: &str,
    ) {
        self.defer_event(deployment, kind, reason, detail);
        self.send_events().await;
    }

    /// Queues an event to go out with the next one: events that happen back
    /// to back (verifying, installed, rebooting) share one request.
    fn defer_event(
        &self,
        deployment: Option<u64>,
        kind: EventKind,
        reason: Option<Reason>,
        detail: &str,
    ) {
        self.log(&format!(
            "event {kind}{}{}",
            reason.map_or(String::new(), |r| format!(" ({r})")),
            if detail.is_empty() {
                String::new()
            } else {
                format!(": {detail}")
            }
        ));
        let event = Event {
            deployment,
            kind,
            reason,
            detail: (!detail.is_empty()).then(|| bounded(detail)),
            age_ms: None,
        };
        if let Ok(mut outbox) = self.outbox.lock() {
            outbox.push((event, Instant::now()));
        }
    }

    /// Sends the queued events: one as an object, several as an array.
    async fn send_events(&self) {
        let queued = match self.outbox.lock() {
            Ok(mut outbox) => std::mem::take(&mut *outbox),
            Err(_) => return,
        };
        // Each says how long ago it happened (whole milliseconds; an event
        // of this very moment says nothing).
        let events: Vec<Event> = queued
            .into_iter()
            .map(|(mut event, at)| {
                let age = u32::try_from(at.elapsed().as_millis()).unwrap_or(u32::MAX);
                event.age_ms = (age > 0).then_some(age);
                event
            })
            .collect();
        if let Some(url) = self.url("/api/v1/device/events") {
            for chunk in events.chunks(airlift_protocol::EVENTS_MAX) {
                let request = self
                    .authed(self.http.post(&url))
                    .timeout(Duration::from_secs(10));
                let request = match chunk {
                    [one] => request.json(one),
                    many => request.json(many),
                };
                let _permit = self.permit().await;
                let kinds = chunk
                    .iter()
                    .map(|e| e.kind.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                match request.send().await {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => self.log(&format!("server refused the {kinds} event: {}", r.status())),
                    Err(e) => self.log(&format!("could not report {kinds}: {e}")),
                }
            }
        }
        // Observers hear of them once the server has (so counts never run ahead of it).
        for e in &events {
            self.happen(&Happening::Event(e.kind, e.reason));
        }
    }

    /// Ends an update attempt: records the result in the notes (the commit
    /// point for the agent), then reports it.
    #[allow(clippy::too_many_arguments)]
    async fn finish<F: AgentFlash>(
        &self,
        dev: &mut Dev<'_, F>,
        nvs: Region,
        notes: &mut Notes,
        kind: EventKind,
        reason: Option<Reason>,
        detail: &str,
    ) -> Result<(), AgentError> {
        let pending = notes.pending.take();
        let deployment = pending.as_ref().and_then(|p| p.deployment);
        notes.last_result = Some(Outcome {
            deployment,
            kind,
            reason,
        });
        if let Some(p) = &pending {
            notes.history.push(HistoryEntry {
                at: now_secs(),
                version: p.version.clone(),
                sha256: p.sha256.clone(),
                source: p.source.clone(),
                deployment,
                result: kind,
                reason,
                detail: detail.to_owned(),
            });
        }
        notes.save(dev.flash_mut(), nvs)?;
        let queued = self.outbox.lock().is_ok_and(|o| !o.is_empty());
        if self.config.server.is_some() && deployment.is_some() && !queued {
            // The check-in the device makes at once carries it: one request
            // instead of an event and then a check-in. (The server counts a
            // check-in's result only for its deployments: the result of a
            // local upload goes out as an event.)
            self.log(&format!(
                "result {kind}{}: {detail} (reported at the next check-in)",
                reason.map_or(String::new(), |r| format!(" ({r})"))
            ));
            if let Ok(mut u) = self.unreported.lock() {
                *u = Some((kind, reason, detail.to_owned()));
            }
        } else {
            self.event(deployment, kind, reason, detail).await;
        }
        Ok(())
    }

    /// After a boot: did the pending update confirm earlier (and the report
    /// got lost to a reset), or was it rolled back?
    async fn resolve_pending<F: AgentFlash>(
        &self,
        dev: &mut Dev<'_, F>,
        nvs: Region,
        notes: &mut Notes,
        running: &RunningInfo,
    ) -> Result<(), AgentError> {
        let Some(p) = notes.pending.clone() else {
            return Ok(());
        };
        if p.sha256 == running.sha256 {
            if running.confirmed {
                let detail = format!("{} is confirmed", p.version);
                self.finish(dev, nvs, notes, EventKind::Confirmed, None, &detail)
                    .await?;
            }
            return Ok(());
        }
        let boots = trial_boots(dev, &p.sha256)?;
        if boots > p.trials_before {
            let detail = format!(
                "{} did not confirm within {} boots; back on {}",
                p.version, self.config.max_attempts, running.version
            );
            self.finish(
                dev,
                nvs,
                notes,
                EventKind::RolledBack,
                Some(Reason::BootFailed),
                &detail,
            )
            .await?;
        }
        Ok(())
    }

    async fn main_loop<F: AgentFlash>(
        &mut self,
        dev: &mut Dev<'_, F>,
        nvs: Region,
        notes: &mut Notes,
        running: &RunningInfo,
    ) -> Result<Next, AgentError> {
        let mut wait = Duration::ZERO;
        let unreported = self.unreported.lock().is_ok_and(|u| u.is_some());
        if self.config.jitter && !unreported {
            let poll = self.config.poll.unwrap_or(Duration::from_secs(1));
            wait = poll.mul_f64((self.next() % 1000) as f64 / 1000.0);
        }
        loop {
            let command = match self.commands.as_mut() {
                _ if self.deferred.is_some() => self.deferred.take(),
                Some(rx) => tokio::select! {
                    () = tokio::time::sleep(wait) => None,
                    c = rx.recv() => c,
                },
                None => {
                    tokio::time::sleep(wait).await;
                    None
                }
            };
            match command {
                None if self.config.server.is_none() => wait = Duration::from_secs(3600),
                None => match self.check_in(notes, running).await {
                    Ok(answer) => {
                        self.happen(&Happening::CheckedIn);
                        let reported = self.unreported.lock().ok().and_then(|mut u| u.take());
                        if let Some((kind, reason, _)) = reported {
                            self.happen(&Happening::Event(kind, reason));
                        }
                        if let Some(s) = &self.snapshot
                            && let Ok(mut s) = s.lock()
                        {
                            s.last_checkin = Some(now_secs());
                            s.last_error = None;
                        }
                        wait = self
                            .config
                            .poll
                            .unwrap_or(Duration::from_secs(u64::from(answer.poll_seconds)));
                        let withdrawn = notes.pending.as_ref().is_some_and(|p| {
                            p.source == "server"
                                && p.sha256 != running.sha256
                                && answer
                                    .update
                                    .as_ref()
                                    .is_none_or(|u| u.sha256.as_str() != p.sha256)
                        });
                        if withdrawn {
                            // Cancelled or superseded: forget it (the engine's
                            // progress record only resumes the same image).
                            notes.pending = None;
                            notes.save(dev.flash_mut(), nvs)?;
                            self.log("the server withdrew the update in progress");
                        }
                        if let Some(update) = answer.update
                            && update.sha256.as_str() != running.sha256
                        {
                            if let Some(next) = self
                                .install_assigned(dev, nvs, notes, running, &update)
                                .await?
                            {
                                return Ok(next);
                            }
                            wait = wait.min(self.config.retry_delay);
                        }
                    }
                    Err(e) => {
                        self.log(&format!("check-in failed: {e}"));
                        self.refresh(dev, running, "idle", Some(e.to_string()));
                        wait = self
                            .config
                            .poll
                            .unwrap_or(self.config.retry_delay)
                            .max(self.config.retry_delay);
                    }
                },
                Some(Command::Reboot) => {
                    self.log("reboot requested from the device page");
                    return Ok(Next::Reset);
                }
                Some(Command::Upload {
                    image,
                    manifest,
                    reply,
                }) => {
                    let result = self
                        .local(dev, nvs, notes, running, "upload", image, &manifest)
                        .await?;
                    let done = result.is_ok();
                    let _ = reply.send(result);
                    if done {
                        return Ok(Next::Reset);
                    }
                }
                Some(Command::Pull {
                    url,
                    manifest_url,
                    reply,
                }) => {
                    let fetched = self.fetch(&url).await;
                    let manifest = self.fetch(&manifest_url).await;
                    let result = match (fetched, manifest) {
                        (Ok(image), Ok(manifest)) => {
                            self.local(dev, nvs, notes, running, "pull", image, &manifest)
                                .await?
                        }
                        (Err(message), _) | (_, Err(message)) => Err(Refusal {
                            reason: Reason::Download,
                            message,
                        }),
                    };
                    let done = result.is_ok();
                    let _ = reply.send(result);
                    if done {
                        return Ok(Next::Reset);
                    }
                }
            }
        }
    }

    async fn fetch(&self, url: &str) -> Result<Vec<u8>, String> {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("cannot download {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("{url} answered {}", response.status()));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| format!("cannot download {url}: {e}"))?;
        Ok(bytes.to_vec())
    }

    async fn check_in(
        &self,
        notes: &Notes,
        running: &RunningInfo,
    ) -> Result<CheckInAnswer, AgentError> {
        let url = self
            .url("/api/v1/device/checkin")
            .ok_or_else(|| AgentError::Http("no server".into()))?;
        let report = CheckIn {
            chip_id: running.chip_id,
            running: RunningImage {
                project: bounded(&running.project),
                version: bounded(&running.version),
                sha256: bounded(&running.sha256),
                security_version: running.security_version,
                slot: running.slot_index,
            },
            state: if notes.pending.is_some() {
                EngineState::Downloading
            } else {
                EngineState::Idle
            },
            boot_count: 0,
            last_result: notes.last_result.as_ref().map(|r| LastResult {
                deployment: r.deployment,
                kind: r.kind,
                reason: r.reason,
                detail: self
                    .unreported
                    .lock()
                    .ok()
                    .and_then(|u| u.as_ref().filter(|u| u.0 == r.kind).map(|u| bounded(&u.2))),
            }),
        };
        let _permit = self.permit().await;
        let response = self
            .authed(self.http.post(url))
            .timeout(Duration::from_secs(30))
            .json(&report)
            .send()
            .await
            .map_err(|e| AgentError::Http(format!("cannot reach the server: {e}")))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(AgentError::Http(format!(
                "check-in refused ({status}): {}",
                body.trim()
            )));
        }
        response
            .json()
            .await
            .map_err(|e| AgentError::Http(format!("bad check-in answer: {e}")))
    }

    /// Installs an update the server assigned. `Some(Reset)` when it was
    /// activated; `None` when it failed (reported) or must be retried.
    async fn install_assigned<F: AgentFlash>(
        &mut self,
        dev: &mut Dev<'_, F>,
        nvs: Region,
        notes: &mut Notes,
        running: &RunningInfo,
        update: &Update,
    ) -> Result<Option<Next>, AgentError> {
        self.begin_pending(
            dev,
            nvs,
            notes,
            Some(update.deployment),
            &update.sha256,
            &update.version,
            "server",
        )?;
        let mut blob = [0u8; airlift_format::manifest::MAX_SIGNED_LEN + 8];
        let manifest = match base64_decode(update.manifest.as_bytes(), &mut blob) {
            Ok(n) => blob[..n].to_vec(),
            Err(e) => {
                let detail = format!("manifest is not base64: {e}");
                self.finish(
                    dev,
                    nvs,
                    notes,
                    EventKind::Failed,
                    Some(Reason::Signature),
                    &detail,
                )
                .await?;
                return Ok(None);
            }
        };
        let source = Source::Http {
            url: self.url(&update.url).unwrap_or_default(),
            sha256: update.sha256.to_string(),
        };
        self.refresh(dev, running, "downloading", None);
        match self
            .install(dev, &manifest, source, Some(update.deployment))
            .await
        {
            Ok(()) => Ok(Some(Next::Reset)),
            Err(Failure::Refused(e)) => {
                self.finish(
                    dev,
                    nvs,
                    notes,
                    EventKind::Failed,
                    Some(reason_of(&e)),
                    &e.to_string(),
                )
                .await?;
                self.refresh(dev, running, "idle", None);
                Ok(None)
            }
            Err(Failure::Download(message)) => {
                // Resumed at the next check-in: the assignment still offers it.
                self.log(&format!("download interrupted, will resume: {message}"));
                self.refresh(dev, running, "idle", Some(message));
                Ok(None)
            }
            Err(Failure::Flash(e)) => Err(e),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn local<F: AgentFlash>(
        &mut self,
        dev: &mut Dev<'_, F>,
        nvs: Region,
        notes: &mut Notes,
        running: &RunningInfo,
        source: &str,
        image: Vec<u8>,
        manifest: &[u8],
    ) -> Result<Result<String, Refusal>, AgentError> {
        let parsed = airlift_format::manifest::SignedManifest::parse(manifest);
        let (sha, version) = match &parsed {
            Ok(m) => (hex(&m.manifest.image_sha256), m.manifest.version.to_owned()),
            Err(e) => {
                return Ok(Err(Refusal {
                    reason: Reason::Signature,
                    message: format!("not a signed manifest: {e}"),
                }));
            }
        };
        self.begin_pending(dev, nvs, notes, None, &sha, &version, source)?;
        self.refresh(dev, running, "downloading", None);
        match self
            .install(dev, manifest, Source::Bytes(image), None)
            .await
        {
            Ok(()) => Ok(Ok(version)),
            Err(Failure::Refused(e)) => {
                let reason = reason_of(&e);
                self.finish(
                    dev,
                    nvs,
                    notes,
                    EventKind::Failed,
                    Some(reason),
                    &e.to_string(),
                )
                .await?;
                self.refresh(dev, running, "idle", None);
                Ok(Err(Refusal {
                    reason,
                    message: e.to_string(),
                }))
            }
            Err(Failure::Download(message)) => {
                self.finish(
                    dev,
                    nvs,
                    notes,
                    EventKind::Failed,
                    Some(Reason::Download),
                    &message,
                )
                .await?;
                Ok(Err(Refusal {
                    reason: Reason::Download,
                    message,
                }))
            }
            Err(Failure::Flash(e)) => Err(e),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn begin_pending<F: AgentFlash>(
        &self,
        dev: &mut Dev<'_, F>,
        nvs: Region,
        notes: &mut Notes,
        deployment: Option<u64>,
        sha256: &str,
        version: &str,
        source: &str,
    ) -> Result<(), AgentError> {
        if notes
            .pending
            .as_ref()
            .is_some_and(|p| p.sha256 == sha256 && p.deployment == deployment)
        {
            return Ok(());
        }
        let trials_before = trial_boots(dev, sha256)?;
        notes.pending = Some(Pending {
            deployment,
            sha256: sha256.to_owned(),
            version: version.to_owned(),
            source: source.to_owned(),
            trials_before,
        });
        notes.save(dev.flash_mut(), nvs)
    }

    /// Streams the image into the inactive slot through the engine and
    /// activates it. A resumed install that does not verify is tried once
    /// more from byte 0: the bytes an earlier attempt left may be what
    /// failed, and only a whole fresh attempt says whether the image is bad.
    async fn install<F: AgentFlash>(
        &mut self,
        dev: &mut Dev<'_, F>,
        manifest: &[u8],
        source: Source,
        deployment: Option<u64>,
    ) -> Result<(), Failure> {
        match self.install_once(dev, manifest, &source, deployment).await {
            Err(Failure::Refused(e @ airlift_engine::Error::StaleResume { .. })) => {
                self.log(&format!("{e}"));
                self.install_once(dev, manifest, &source, deployment).await
            }
            other => other,
        }
    }

    async fn install_once<F: AgentFlash>(
        &mut self,
        dev: &mut Dev<'_, F>,
        manifest: &[u8],
        source: &Source,
        deployment: Option<u64>,
    ) -> Result<(), Failure> {
        let mut install = match dev.begin(manifest) {
            Ok(i) => i,
            Err(e) => return Err(dead_err(e)),
        };
        let resumed = install.resume_offset();
        // Reported with the install's result (the server marks the
        // assignment downloading when the device starts fetching).
        self.defer_event(
            deployment,
            EventKind::Downloading,
            None,
            &if resumed > 0 {
                format!("resuming at byte {resumed}")
            } else {
                String::new()
            },
        );
        let written: Result<(), Failure> = match source {
            Source::Bytes(bytes) => {
                let from = (install.resume_offset() as usize).min(bytes.len());
                let mut r = Ok(());
                for chunk in bytes[from..].chunks(4096) {
                    if let Err(e) = install.write(chunk) {
                        r = Err(dead_err(e));
                        break;
                    }
                }
                r
            }
            Source::Http { url, sha256 } => {
                let mut failures = 0u32;
                let mut r = Ok(());
                while install.resume_offset() < install.size() {
                    let from = install.resume_offset();
                    let client = self.config.downloads.as_ref().unwrap_or(&self.http);
                    let mut request = self.authed(client.get(url.as_str()));
                    if from > 0 {
                        request = request
                            .header("Range", format!("bytes={from}-"))
                            .header("If-Range", format!("\"{sha256}\""));
                    }
                    let outcome = self.stream(request, from, &mut install).await;
                    match outcome {
                        Ok(()) => {}
                        Err(StreamError::Engine(e)) => {
                            r = Err(dead_err(e));
                            break;
                        }
                        Err(StreamError::Fatal(m)) => {
                            r = Err(Failure::Download(m));
                            break;
                        }
                        Err(StreamError::Retry(m)) => {
                            failures += 1;
                            self.happen(&Happening::Retry);
                            if failures > 5 {
                                r = Err(Failure::Download(m));
                                break;
                            }
                            tokio::time::sleep(self.config.retry_delay).await;
                        }
                    }
                }
                r
            }
        };
        written?;
        // Verification takes microseconds once the bytes are in: its event
        // goes out with the result (installed and rebooting, or failed).
        self.defer_event(deployment, EventKind::Verifying, None, "");
        match install.finish() {
            Ok(a) => {
                self.defer_event(
                    deployment,
                    EventKind::Installed,
                    None,
                    &format!("activated ota_{} (otadata seq {})", a.slot, a.seq),
                );
                self.event(deployment, EventKind::Rebooting, None, "").await;
                Ok(())
            }
            Err(e) => Err(dead_err(e)),
        }
    }

    async fn stream<F: AgentFlash>(
        &mut self,
        request: reqwest::RequestBuilder,
        from: u32,
        install: &mut airlift_engine::Install<'_, 'static, &mut F>,
    ) -> Result<(), StreamError> {
        let _permit = self.permit().await;
        let mut response = request
            .send()
            .await
            .map_err(|e| StreamError::Retry(format!("cannot reach the server: {e}")))?;
        let status = response.status();
        let mut skip = match status.as_u16() {
            206 => {
                let starts = response
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u32>().ok());
                if starts != Some(from) {
                    return Err(StreamError::Fatal(format!(
                        "server sent a range starting at {starts:?}, expected {from}"
                    )));
                }
                0usize
            }
            // The whole image again: skip what is already written.
            200 => from as usize,
            s if s >= 500 => return Err(StreamError::Retry(format!("server answered {status}"))),
            _ => {
                return Err(StreamError::Fatal(format!(
                    "download refused: server answered {status}"
                )));
            }
        };
        let cut_at = if self.config.drop_rate > 0.0 && self.chance(self.config.drop_rate) {
            Some(self.next() % u64::from(install.size().max(1)))
        } else {
            None
        };
        let mut received = 0u64;
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => return Err(StreamError::Retry(format!("connection dropped: {e}"))),
            };
            if let Some(link) = &self.config.link {
                link.carry(chunk.len()).await;
            }
            let mut data = &chunk[..];
            if skip > 0 {
                let n = skip.min(data.len());
                skip -= n;
                data = &data[n..];
            }
            if data.is_empty() {
                continue;
            }
            let left = install.size() - install.resume_offset();
            let data = &data[..data.len().min(left as usize)];
            received += data.len() as u64;
            self.happen(&Happening::Bytes(data.len() as u64));
            install.write(data).map_err(StreamError::Engine)?;
            if cut_at.is_some_and(|c| received >= c) {
                return Err(StreamError::Retry("simulated connection drop".into()));
            }
            if install.resume_offset() >= install.size() {
                break;
            }
        }
        if install.resume_offset() < install.size() {
            return Err(StreamError::Retry(format!(
                "connection closed at byte {} of {}",
                install.resume_offset(),
                install.size()
            )));
        }
        Ok(())
    }
}

enum StreamError {
    Engine(airlift_engine::Error),
    Retry(String),
    Fatal(String),
}

fn dead_err(e: airlift_engine::Error) -> Failure {
    // Inside a session the flash cannot be asked; a power loss shows as a
    // flash error, and a flash error ends the session either way.
    match e {
        airlift_engine::Error::Flash(_) => Failure::Flash(AgentError::Engine(e)),
        other => Failure::Refused(other),
    }
}
