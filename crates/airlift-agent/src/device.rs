//! The device loop: what the ESP32 firmware does, over any flash.
//!
//! Each turn of [`Agent::run`] is one power-on: the simulated bootloader
//! picks a slot, the client (`airlift-client`) runs the engine's boot guard
//! and says what to report, the image "runs" with the behaviour its version
//! is given (`healthy` confirms after a health check, `crash` resets before
//! confirming, `hang` never confirms and the watchdog resets), and a
//! confirmed image checks in, downloads, installs and reboots as the client
//! decides. This file holds the I/O around those decisions: timers, the
//! device page's commands, the simulated behaviours and power cuts.
//! Nothing but caches lives outside the flash, so a killed agent is a power
//! cut and a restarted one is a reset.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlift_client::notes::{NoteStore, Source as Origin};
use airlift_client::status::DeviceState;
use airlift_client::{Attempt, BootStep, Client, Clock, Journal, OFFLINE_WAIT_MS};
use airlift_engine::{Device, Layout, Region};
use airlift_protocol::{EventKind, Reason, Update};
use tokio::sync::mpsc;

pub use crate::config::{AgentConfig, Behaviour, Behaviours};
use crate::download::Source;
use crate::flash::{AgentFlash, boot_device};
pub use crate::page::{Command, Control, Refusal, RunningInfo, Snapshot};
use crate::provision::records_region;
use crate::report::report;
use crate::transport::Transport;
pub use crate::transport::{enroll, http_client};
use crate::{AgentError, now_secs};

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

enum Next {
    Reset,
}

type Dev<'f, F> = Device<'static, &'f mut F>;

/// One simulated device: its flash and everything else the loop needs.
pub struct Agent<F: AgentFlash> {
    flash: F,
    layout: Layout,
    records: Region,
    rt: Runtime,
}

pub(crate) struct Runtime {
    pub(crate) config: AgentConfig,
    pub(crate) transport: Transport,
    /// A device-page command that arrived while the firmware was busy,
    /// for the main loop (RAM: lost at a reset).
    deferred: Option<Command>,
    observer: Option<Observer>,
    commands: Option<mpsc::Receiver<Command>>,
    snapshot: Option<Arc<Mutex<Snapshot>>>,
    rng: u64,
    boots: u64,
    started: Instant,
}

/// The client's narration, to the observer as [`Happening::Log`].
pub(crate) struct Narrator {
    observer: Option<Observer>,
    name: Arc<str>,
}

impl Journal for Narrator {
    fn log(&mut self, line: fmt::Arguments<'_>) {
        if let Some(o) = &self.observer {
            o(&self.name, &Happening::Log(&line.to_string()));
        }
    }
}

impl<F: AgentFlash> Agent<F> {
    /// A device over `flash` (which must hold a partition table with OTA
    /// slots, otadata, an `airlift` data partition and an `records` partition).
    pub fn new(
        mut flash: F,
        config: AgentConfig,
        http: reqwest::Client,
    ) -> Result<Self, AgentError> {
        let layout = Layout::read(&mut flash, airlift_format::partition::TABLE_OFFSET)?;
        let records = records_region(&layout)?;
        let rng = config.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let transport = Transport::new(
            config.server.clone(),
            config.token.clone(),
            http,
            config.downloads.clone(),
            config.http_limit.clone(),
            config.require_https,
        );
        Ok(Agent {
            flash,
            layout,
            records,
            rt: Runtime {
                config,
                transport,
                deferred: None,
                observer: None,
                commands: None,
                snapshot: None,
                rng,
                boots: 0,
                started: Instant::now(),
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
            state: DeviceState::Booting,
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
            records,
            rt,
        } = self;
        rt.boots += 1;
        rt.deferred = None;
        let boot = boot_device(&mut *flash, layout, rt.config.bootloader)?;
        let Some((slot, info)) = boot.booted else {
            return Err(AgentError::Bricked);
        };
        let mut dev: Dev<'_, F> = Device::with_layout(&mut *flash, *layout, rt.config.engine())?;
        // A client per power-on: what it holds in RAM is lost at a reset.
        let mut client = Client::new(rt.config.client(), NoteStore::new(*records)?);
        let clock = rt.clock();
        let step = client.boot(
            &mut dev,
            boot.selected,
            slot,
            &info,
            clock,
            &mut rt.journal(),
        )?;
        let BootStep::Run { confirmed } = step else {
            return Ok(Next::Reset);
        };
        let version = client
            .running()
            .map_or(String::new(), |r| r.version.to_string());
        rt.happen(&Happening::Booted {
            version: &version,
            confirmed,
        });
        rt.send_events(&mut client).await;
        rt.refresh(
            &mut dev,
            &client,
            if confirmed {
                DeviceState::Idle
            } else {
                DeviceState::Trial
            },
            None,
        );
        if !confirmed {
            match rt.config.behaviours.of(&version) {
                Behaviour::Crash => {
                    if rt.busy(rt.config.crash_after).await {
                        return Ok(Next::Reset);
                    }
                    rt.log(&format!("{version} crashed before confirming: reset"));
                    return Ok(Next::Reset);
                }
                Behaviour::Hang => {
                    if rt.busy(rt.config.watchdog).await {
                        return Ok(Next::Reset);
                    }
                    rt.log(&format!("{version} hangs: watchdog reset"));
                    return Ok(Next::Reset);
                }
                Behaviour::Healthy => {
                    if rt.busy(rt.config.health_check).await {
                        return Ok(Next::Reset);
                    }
                    client.confirm(&mut dev, rt.clock(), &mut rt.journal())?;
                    rt.send_events(&mut client).await;
                    rt.refresh(&mut dev, &client, DeviceState::Idle, None);
                }
            }
        }
        rt.main_loop(&mut dev, &mut client).await
    }
}

impl Runtime {
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    pub(crate) fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn clock(&self) -> Clock {
        Clock {
            now_ms: self.now_ms(),
            unix_secs: now_secs(),
        }
    }

    pub(crate) fn journal(&self) -> Narrator {
        Narrator {
            observer: self.observer.clone(),
            name: self.config.name.as_str().into(),
        }
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

    pub(crate) fn happen(&self, what: &Happening<'_>) {
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
        client: &Client,
        state: DeviceState,
        error: Option<String>,
    ) {
        let Some(snapshot) = &self.snapshot else {
            return;
        };
        let flash = report(dev.flash_mut(), self.config.max_attempts).ok();
        if let Ok(mut s) = snapshot.lock() {
            s.running = client.running().map(RunningInfo::from);
            s.state = state;
            s.boots = self.boots;
            if flash.is_some() {
                s.flash = flash;
            }
            if let Some(e) = error {
                s.last_error = Some(e);
            }
        }
    }

    /// The server knows the device by `name` (its answer says so): the
    /// device page shows that name, not the flash file's.
    fn known_as(&self, name: Option<&str>) {
        let Some(name) = name.filter(|n| *n != self.config.name) else {
            return;
        };
        let Some(snapshot) = &self.snapshot else {
            return;
        };
        let renamed = match snapshot.lock() {
            Ok(mut s) if s.name != name => {
                name.clone_into(&mut s.name);
                true
            }
            _ => false,
        };
        if renamed {
            self.log(&format!("the server knows this device as {name}"));
        }
    }

    /// Sends the events the client queued, in one request (best effort:
    /// the last result is repeated at every check-in, so a lost event loses
    /// no result).
    async fn send_events(&self, client: &mut Client) {
        if !client.has_events() {
            return;
        }
        let events = client.take_events(self.now_ms());
        if let Err(e) = self.transport.send_events(&events).await {
            let kinds = events
                .iter()
                .map(|e| e.kind.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            self.log(&format!("could not report {kinds}: {e}"));
        }
        // Observers hear of them once the server has (so counts never run ahead of it).
        for e in &events {
            self.happen(&Happening::Event(e.kind, e.reason));
        }
    }

    async fn main_loop<F: AgentFlash>(
        &mut self,
        dev: &mut Dev<'_, F>,
        client: &mut Client,
    ) -> Result<Next, AgentError> {
        let mut wait = Duration::from_millis(client.first_wait_ms(self.next()));
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
                None if !client.config().has_server => {
                    wait = Duration::from_millis(OFFLINE_WAIT_MS);
                }
                None => {
                    let Some(report) = client.check_in() else {
                        return Err(AgentError::Http("no running image to report".into()));
                    };
                    // A check-in that waits (long poll) gives way to the
                    // device page: the page's command goes first, and the
                    // next check-in repeats what this one said.
                    let answer = match self.commands.as_mut() {
                        Some(rx) if report.long_poll_seconds.is_some() => tokio::select! {
                            answer = self.transport.check_in(&report) => Some(answer),
                            command = rx.recv() => {
                                match command {
                                    Some(command) => self.deferred = Some(command),
                                    None => self.commands = None,
                                }
                                None
                            }
                        },
                        _ => Some(self.transport.check_in(&report).await),
                    };
                    let Some(answer) = answer else {
                        wait = Duration::ZERO;
                        continue;
                    };
                    match answer {
                        Ok(answer) => {
                            self.happen(&Happening::CheckedIn);
                            self.known_as(answer.device.as_deref());
                            let answered = client.on_answer(dev, answer, &mut self.journal())?;
                            if let Some((kind, reason)) = answered.reported {
                                self.happen(&Happening::Event(kind, reason));
                            }
                            if let Some(s) = &self.snapshot
                                && let Ok(mut s) = s.lock()
                            {
                                s.last_checkin = Some(now_secs());
                                s.last_error = None;
                            }
                            wait = Duration::from_millis(answered.wait_ms);
                            if let Some(update) = answered.update {
                                if let Some(next) =
                                    self.install_assigned(dev, client, &update).await?
                                {
                                    return Ok(next);
                                }
                                wait =
                                    Duration::from_millis(client.retry_wait_ms(answered.wait_ms));
                            }
                        }
                        Err(AgentError::Refused { code, message, .. })
                            if code == airlift_protocol::TOKEN_REVOKED =>
                        {
                            let why = format!(
                                "the server revoked this device's token; it needs a new one: {message}"
                            );
                            self.log(&why);
                            self.refresh(dev, client, DeviceState::Revoked, Some(why));
                            wait = Duration::from_millis(client.check_in_refused_wait_ms(&code));
                        }
                        Err(e) => {
                            self.log(&format!("check-in failed: {e}"));
                            self.refresh(dev, client, DeviceState::Idle, Some(e.to_string()));
                            wait = Duration::from_millis(client.check_in_failed_wait_ms());
                        }
                    }
                }
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
                        .local(dev, client, Origin::Upload, Source::Bytes(image), &manifest)
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
                    // The manifest is small and says the image's size and
                    // SHA-256: the image is then streamed into the slot,
                    // never more than that size, never held in RAM.
                    let limit = airlift_format::manifest::MAX_SIGNED_LEN;
                    let result = match self.transport.fetch(&manifest_url, limit).await {
                        Ok(manifest) => {
                            let sha256 = airlift_format::manifest::SignedManifest::parse(&manifest)
                                .map(|m| crate::hex(&m.manifest.image_sha256))
                                .unwrap_or_default();
                            let source = Source::Http {
                                url,
                                sha256,
                                foreign: true,
                            };
                            self.local(dev, client, Origin::Pull, source, &manifest)
                                .await?
                        }
                        Err(message) => Err(airlift_client::Refusal::download(&message).into()),
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

    /// Installs an update the server assigned. `Some(Reset)` when it was
    /// activated; `None` when it failed (reported) or must be retried.
    async fn install_assigned<F: AgentFlash>(
        &mut self,
        dev: &mut Dev<'_, F>,
        client: &mut Client,
        update: &Update,
    ) -> Result<Option<Next>, AgentError> {
        let clock = self.clock();
        let Some(attempt) = client.begin_assigned(dev, update, clock, &mut self.journal())? else {
            self.send_events(client).await;
            return Ok(None);
        };
        let source = Source::Http {
            url: self.transport.url(&update.url).unwrap_or_default(),
            sha256: update.sha256.to_string(),
            foreign: false,
        };
        self.refresh(dev, client, DeviceState::Downloading, None);
        self.attempt(dev, client, &attempt, &source)
            .await
            .map(|r| r.is_ok().then_some(Next::Reset))
    }

    /// Installs an upload or a pull from the device page.
    async fn local<F: AgentFlash>(
        &mut self,
        dev: &mut Dev<'_, F>,
        client: &mut Client,
        origin: Origin,
        source: Source,
        manifest: &[u8],
    ) -> Result<Result<String, Refusal>, AgentError> {
        let attempt = match client.begin_local(dev, origin, manifest)? {
            Ok(a) => a,
            Err(refusal) => return Ok(Err(refusal.into())),
        };
        self.refresh(dev, client, DeviceState::Downloading, None);
        Ok(self
            .attempt(dev, client, &attempt, &source)
            .await?
            .map(|()| attempt.version.to_string()))
    }

    /// One update attempt to its end: activated (the events sent, the
    /// caller resets), or failed the way the client decides.
    async fn attempt<F: AgentFlash>(
        &mut self,
        dev: &mut Dev<'_, F>,
        client: &mut Client,
        attempt: &Attempt,
        source: &Source,
    ) -> Result<Result<(), Refusal>, AgentError> {
        let result = self.install(dev, client, attempt, source).await;
        let outcome = match result {
            Ok(()) => Ok(()),
            Err(failure) => {
                let message = failure.to_string();
                let refusal = client.install_failed(
                    dev,
                    attempt,
                    failure,
                    self.clock(),
                    &mut self.journal(),
                )?;
                self.refresh(
                    dev,
                    client,
                    DeviceState::Idle,
                    refusal.is_none().then_some(message.clone()),
                );
                // A server's download that broke off is no refusal: it
                // resumes at the next check-in (no one waits for a reply).
                Err(refusal
                    .unwrap_or_else(|| airlift_client::Refusal::download(&message))
                    .into())
            }
        };
        self.send_events(client).await;
        Ok(outcome)
    }
}
