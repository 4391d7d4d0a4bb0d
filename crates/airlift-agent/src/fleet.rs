//! The fleet simulator: thousands of devices in one process, each the same
//! [`Agent`] loop as `airlift device run` over a [`CowFlash`] that shares
//! one provisioned base image (a device holds only the sectors it wrote:
//! otadata, the data partition, its notes and the downloaded image), and,
//! through one [`SectorPool`], the sectors of a release that every device
//! wrote alike.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlift_protocol::EventKind;
use serde::Serialize;
use serde_json::json;
use tokio::task::JoinSet;

use crate::AgentError;
use crate::device::{Agent, AgentConfig, Behaviour, Behaviours, Happening, enroll};
use crate::flash::{CowFlash, SectorPool};

/// The server's network link as the whole fleet shares it: a rate in bytes
/// per second that every downloaded byte takes its turn on. Without it the
/// fleet and the server talk over loopback, faster than any network card
/// such a server would have (`--link-mbps`).
#[derive(Debug)]
pub struct Link {
    bytes_per_sec: f64,
    /// When the bytes handed to the link so far will have crossed it. An
    /// idle link banks no credit: it starts again from now.
    free_at: Mutex<tokio::time::Instant>,
}

impl Link {
    /// A link of `megabits` per second (10,000 for a 10 Gbit/s card).
    pub fn megabits(megabits: f64) -> Link {
        Link {
            bytes_per_sec: megabits.max(0.001) * 1e6 / 8.0,
            free_at: Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Returns once `bytes` more have crossed the link.
    pub async fn carry(&self, bytes: usize) {
        let time = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec);
        let now = tokio::time::Instant::now();
        let done = match self.free_at.lock() {
            Ok(mut free_at) => {
                *free_at = (*free_at).max(now) + time;
                *free_at
            }
            Err(_) => return,
        };
        if done > now {
            tokio::time::sleep_until(done).await;
        }
    }
}

/// How simulated devices get their tokens.
#[derive(Debug, Clone)]
pub enum Enrolment {
    /// The fleet enrolment secret (`POST /api/v1/device/enroll`).
    Secret(String),
    /// An admin token (`POST /api/v1/devices`).
    Admin(String),
}

/// Registers `names` with the server (at most `parallel` at a time);
/// returns each device's token, in order.
pub async fn enrol_all(
    http: &reqwest::Client,
    server: &str,
    enrolment: &Enrolment,
    names: &[String],
    tags: &[String],
    parallel: usize,
) -> Result<Vec<String>, AgentError> {
    let limit = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut set = JoinSet::new();
    for (i, name) in names.iter().enumerate() {
        let (http, server, enrolment, name, tags, limit) = (
            http.clone(),
            server.to_owned(),
            enrolment.clone(),
            name.clone(),
            tags.to_vec(),
            limit.clone(),
        );
        set.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let token = match enrolment {
                Enrolment::Secret(secret) => enroll(&http, &server, &secret, &name, &tags).await?,
                Enrolment::Admin(admin) => add_device(&http, &server, &admin, &name, &tags).await?,
            };
            Ok::<_, AgentError>((i, token))
        });
    }
    let mut tokens = vec![String::new(); names.len()];
    while let Some(joined) = set.join_next().await {
        let (i, token) = joined.map_err(|e| AgentError::Http(format!("enrolment task: {e}")))??;
        tokens[i] = token;
    }
    Ok(tokens)
}

async fn add_device(
    http: &reqwest::Client,
    server: &str,
    admin: &str,
    name: &str,
    tags: &[String],
) -> Result<String, AgentError> {
    let response = http
        .post(format!("{}/api/v1/devices", server.trim_end_matches('/')))
        .bearer_auth(admin)
        .json(&json!({"name": name, "tags": tags}))
        .send()
        .await
        .map_err(|e| AgentError::Http(format!("cannot add device {name}: {e}")))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    match body["token"].as_str() {
        Some(t) if status.is_success() => Ok(t.to_owned()),
        _ => Err(AgentError::Http(format!(
            "cannot add device {name} ({status}): {}",
            body["error"]["message"]
                .as_str()
                .unwrap_or("no token in the answer")
        ))),
    }
}

/// What a device is doing, as the simulator tracks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Not booted yet.
    Starting,
    /// Running a confirmed image.
    Running,
    /// Downloading or installing an update.
    Downloading,
    /// Installed, rebooting.
    Rebooting,
    /// Running a new image on trial.
    Trial,
}

const PHASES: [Phase; 5] = [
    Phase::Starting,
    Phase::Running,
    Phase::Downloading,
    Phase::Rebooting,
    Phase::Trial,
];

/// Counters of a simulated fleet, updated by every device.
#[derive(Debug)]
pub struct Stats {
    phases: Vec<AtomicU8>,
    versions: Mutex<Vec<String>>,
    events: [AtomicU64; 8],
    /// Download connections retried.
    pub retries: AtomicU64,
    /// Power cuts.
    pub power_cuts: AtomicU64,
    /// Image bytes received.
    pub bytes: AtomicU64,
    /// Answered check-ins.
    pub checkins: AtomicU64,
    /// Devices that stopped with an error (bricked, broken flash).
    pub crashed: AtomicU64,
    /// Devices gone silent for good after installing ([`Faults::silence`]).
    pub silenced: AtomicU64,
    /// Updates each device installed (what a rollout must never make twice).
    installs: Vec<AtomicU8>,
    started: Instant,
    /// Nanoseconds from `started` to the latest final event (confirmed,
    /// rolled back, failed).
    last_final: AtomicU64,
}

fn event_index(kind: EventKind) -> usize {
    match kind {
        EventKind::Downloading => 0,
        EventKind::Verifying => 1,
        EventKind::Installed => 2,
        EventKind::Rebooting => 3,
        EventKind::Booted => 4,
        EventKind::Confirmed => 5,
        EventKind::RolledBack => 6,
        EventKind::Failed => 7,
    }
}

/// The final summary (also `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Devices simulated.
    pub devices: usize,
    /// Seconds since the fleet started.
    pub elapsed_seconds: f64,
    /// Devices per phase.
    pub phases: BTreeMap<String, u64>,
    /// Devices per running version (confirmed or on trial).
    pub versions: BTreeMap<String, u64>,
    /// Events reported, per kind.
    pub events: BTreeMap<String, u64>,
    /// Rollbacks reported.
    pub rollbacks: u64,
    /// Download connections retried.
    pub retries: u64,
    /// Power cuts.
    pub power_cuts: u64,
    /// Image bytes received.
    pub bytes: u64,
    /// Answered check-ins.
    pub checkins: u64,
    /// Devices that stopped with an error.
    pub crashed: u64,
    /// Devices gone silent for good after installing an update.
    pub silenced: u64,
    /// Devices by the number of updates they installed (`"1": 998`).
    pub installs: BTreeMap<String, u64>,
}

impl Stats {
    /// Counters for `devices` devices.
    pub fn new(devices: usize) -> Stats {
        Stats {
            phases: (0..devices).map(|_| AtomicU8::new(0)).collect(),
            versions: Mutex::new(vec![String::new(); devices]),
            events: Default::default(),
            retries: AtomicU64::new(0),
            power_cuts: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            checkins: AtomicU64::new(0),
            crashed: AtomicU64::new(0),
            silenced: AtomicU64::new(0),
            installs: (0..devices).map(|_| AtomicU8::new(0)).collect(),
            started: Instant::now(),
            last_final: AtomicU64::new(0),
        }
    }

    fn set_phase(&self, device: usize, phase: Phase) {
        if let Some(p) = self.phases.get(device) {
            p.store(phase as u8, Ordering::Relaxed);
        }
    }

    /// Records what device `device` did.
    pub fn record(&self, device: usize, what: &Happening<'_>) {
        match what {
            Happening::Booted { version, confirmed } => {
                self.set_phase(
                    device,
                    if *confirmed {
                        Phase::Running
                    } else {
                        Phase::Trial
                    },
                );
                if let Ok(mut v) = self.versions.lock()
                    && let Some(slot) = v.get_mut(device)
                    && slot != version
                {
                    *slot = (*version).to_owned();
                }
            }
            Happening::Event(kind, _) => {
                self.events[event_index(*kind)].fetch_add(1, Ordering::Relaxed);
                match kind {
                    EventKind::Installed => {
                        if let Some(n) = self.installs.get(device) {
                            n.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    EventKind::Downloading => self.set_phase(device, Phase::Downloading),
                    EventKind::Rebooting => self.set_phase(device, Phase::Rebooting),
                    EventKind::Confirmed | EventKind::Failed => {
                        self.set_phase(device, Phase::Running)
                    }
                    _ => {}
                }
                if matches!(
                    kind,
                    EventKind::Confirmed | EventKind::RolledBack | EventKind::Failed
                ) {
                    let nanos =
                        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    self.last_final.fetch_max(nanos, Ordering::Relaxed);
                }
            }
            Happening::Bytes(n) => {
                self.bytes.fetch_add(*n, Ordering::Relaxed);
            }
            Happening::Retry => {
                self.retries.fetch_add(1, Ordering::Relaxed);
            }
            Happening::PowerCut => {
                self.power_cuts.fetch_add(1, Ordering::Relaxed);
            }
            Happening::CheckedIn => {
                self.checkins.fetch_add(1, Ordering::Relaxed);
            }
            Happening::Log(_) => {}
        }
    }

    /// Devices running `version` confirmed.
    pub fn confirmed_on(&self, version: &str) -> usize {
        let Ok(versions) = self.versions.lock() else {
            return 0;
        };
        versions
            .iter()
            .zip(&self.phases)
            .filter(|(v, p)| *v == version && p.load(Ordering::Relaxed) == Phase::Running as u8)
            .count()
    }

    /// Time from the start (when the counters were made) to the latest
    /// final event (confirmed, rolled back or failed) the server acknowledged.
    pub fn last_final(&self) -> Duration {
        Duration::from_nanos(self.last_final.load(Ordering::Relaxed))
    }

    /// Counts of final events (confirmed, rolled back, failed).
    pub fn finals(&self) -> (u64, u64, u64) {
        let get = |k| self.events[event_index(k)].load(Ordering::Relaxed);
        (
            get(EventKind::Confirmed),
            get(EventKind::RolledBack),
            get(EventKind::Failed),
        )
    }

    /// A snapshot of every counter.
    pub fn summary(&self) -> Summary {
        let mut phases = BTreeMap::new();
        for p in &self.phases {
            let phase = PHASES[usize::from(p.load(Ordering::Relaxed)).min(PHASES.len() - 1)];
            let name = serde_json::to_value(phase)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            *phases.entry(name).or_insert(0) += 1;
        }
        let mut versions = BTreeMap::new();
        if let Ok(v) = self.versions.lock() {
            for version in v.iter().filter(|v| !v.is_empty()) {
                *versions.entry(version.clone()).or_insert(0) += 1;
            }
        }
        let events = EventKind::ALL
            .iter()
            .map(|k| {
                (
                    k.as_str().to_owned(),
                    self.events[event_index(*k)].load(Ordering::Relaxed),
                )
            })
            .collect();
        Summary {
            devices: self.phases.len(),
            elapsed_seconds: self.started.elapsed().as_secs_f64(),
            phases,
            versions,
            events,
            rollbacks: self.events[event_index(EventKind::RolledBack)].load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            power_cuts: self.power_cuts.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            checkins: self.checkins.load(Ordering::Relaxed),
            crashed: self.crashed.load(Ordering::Relaxed),
            silenced: self.silenced.load(Ordering::Relaxed),
            installs: self.installs.iter().fold(BTreeMap::new(), |mut h, n| {
                *h.entry(n.load(Ordering::Relaxed).to_string()).or_insert(0) += 1;
                h
            }),
        }
    }
}

impl Summary {
    /// The counters of what happened since `before` (events, retries, power
    /// cuts, bytes, check-ins); what the devices run and do is now's. A
    /// phase of a story then counts only its own events.
    pub fn since(&self, before: &Summary) -> Summary {
        let mut since = self.clone();
        for (kind, n) in &mut since.events {
            *n -= before.events.get(kind).copied().unwrap_or(0).min(*n);
        }
        since.rollbacks -= before.rollbacks.min(self.rollbacks);
        since.retries -= before.retries.min(self.retries);
        since.power_cuts -= before.power_cuts.min(self.power_cuts);
        since.bytes -= before.bytes.min(self.bytes);
        since.checkins -= before.checkins.min(self.checkins);
        since
    }

    /// One progress line.
    pub fn line(&self) -> String {
        let mut s = format!("[{:6.1}s] {} devices:", self.elapsed_seconds, self.devices);
        for (v, n) in &self.versions {
            let _ = write!(s, " {v}={n}");
        }
        for (p, n) in self
            .phases
            .iter()
            .filter(|(p, n)| *n > &0 && p.as_str() != "running")
        {
            let _ = write!(s, " {p}={n}");
        }
        if self.silenced > 0 {
            let _ = write!(s, " silenced={}", self.silenced);
        }
        let _ = write!(
            s,
            " | confirmed {} rolled back {} failed {} | retries {} power cuts {} | {:.1} MB",
            self.events.get("confirmed").unwrap_or(&0),
            self.rollbacks,
            self.events.get("failed").unwrap_or(&0),
            self.retries,
            self.power_cuts,
            self.bytes as f64 / 1e6
        );
        s
    }
}

/// Faults a share of a simulated fleet has, for rehearsals and fault
/// tests. Which devices is a function of their names (the same on every
/// run), and exact: a share of 0.3 of 1,000 devices is 300 devices.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// `(VERSION, behaviour, share)`: that share of the devices behaves so
    /// when it runs VERSION (the first devices in the faults' order).
    pub behaviours: Vec<(String, Behaviour, f64)>,
    /// Share of the devices that go silent for good once they reported an
    /// update installed, as a board that lost its network or its power
    /// while rebooting into it (the last devices in the faults' order).
    pub silence: f64,
}

impl Faults {
    /// Each device's extra behaviour rules and whether it goes silent.
    pub fn of(&self, names: &[String]) -> Vec<(Vec<(String, Behaviour)>, bool)> {
        let mut order: Vec<(u64, usize)> = names
            .iter()
            .enumerate()
            .map(|(i, name)| (fault_hash(name), i))
            .collect();
        order.sort_unstable();
        let share = |s: f64| ((s.clamp(0.0, 1.0) * names.len() as f64).round()) as usize;
        let silent_from = names.len() - share(self.silence);
        let mut fates = vec![(Vec::new(), false); names.len()];
        for (rank, (_, i)) in order.iter().enumerate() {
            for (version, behaviour, s) in &self.behaviours {
                if rank < share(*s) {
                    fates[*i].0.push((version.clone(), *behaviour));
                }
            }
            fates[*i].1 = rank >= silent_from;
        }
        fates
    }
}

/// FNV-1a with a final mix: a stable order of device names.
fn fault_hash(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// Starts one task per device. `devices` are `(name, token)`; every device
/// boots from `base` (a provisioned flash image) with `template`'s settings
/// (its name and seed are set per device) and the `faults` its name draws.
/// Returns the tasks; they run until aborted.
pub fn spawn_fleet(
    devices: Vec<(String, String)>,
    base: Arc<[u8]>,
    template: &AgentConfig,
    faults: &Faults,
    http: &reqwest::Client,
    stats: &Arc<Stats>,
) -> Result<JoinSet<()>, AgentError> {
    let mut set = JoinSet::new();
    let pool = Arc::new(SectorPool::new());
    let names: Vec<String> = devices.iter().map(|(name, _)| name.clone()).collect();
    let fates = faults.of(&names);
    for (i, ((name, token), (rules, silent))) in devices.into_iter().zip(fates).enumerate() {
        let mut behaviours = template.behaviours.0.clone();
        behaviours.extend(rules);
        let config = AgentConfig {
            name,
            token: Some(token),
            seed: template.seed.wrapping_add(i as u64 * 7919),
            behaviours: Behaviours(behaviours),
            ..template.clone()
        };
        let silenced = Arc::new(tokio::sync::Notify::new());
        let stats_for_device = stats.clone();
        let silence = silenced.clone();
        let agent = Agent::new(
            CowFlash::with_pool(base.clone(), pool.clone()),
            config,
            http.clone(),
        )?
        .observe(Arc::new(move |_, what| {
            stats_for_device.record(i, what);
            if silent && matches!(what, Happening::Event(EventKind::Rebooting, _)) {
                silence.notify_one();
            }
        }));
        let stats = stats.clone();
        set.spawn(async move {
            tokio::select! {
                result = agent.run() => {
                    if result.is_err() {
                        stats.crashed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                () = silenced.notified() => {
                    stats.silenced.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    Ok(set)
}

/// Runs until `done(stats)` holds or `timeout` passes, calling `progress`
/// every `every` (`done` is checked far more often, so the end is seen
/// within milliseconds). Returns whether `done` held.
pub async fn watch(
    stats: &Stats,
    every: Duration,
    timeout: Option<Duration>,
    mut done: impl FnMut(&Stats) -> bool,
    mut progress: impl FnMut(&Summary),
) -> bool {
    let start = Instant::now();
    let mut shown = start;
    loop {
        if done(stats) {
            return true;
        }
        if timeout.is_some_and(|t| start.elapsed() >= t) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10).min(every)).await;
        if shown.elapsed() >= every {
            shown = Instant::now();
            progress(&stats.summary());
        }
    }
}

/// Creates a deployment of release `release` (id or `project@version` as
/// the server takes it) to `target` (admin token); returns its id and the
/// release's SHA-256.
pub async fn deploy(
    http: &reqwest::Client,
    server: &str,
    admin: &str,
    release: &str,
    target: &str,
) -> Result<(i64, String), AgentError> {
    let base = server.trim_end_matches('/');
    let response = http
        .post(format!("{base}/api/v1/deployments"))
        .bearer_auth(admin)
        .json(&json!({"release": release, "target": target}))
        .send()
        .await
        .map_err(|e| AgentError::Http(format!("cannot deploy: {e}")))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let (Some(id), Some(sha)) = (body["id"].as_i64(), body["release"]["sha256"].as_str()) else {
        return Err(AgentError::Http(format!(
            "deployment refused ({status}): {}",
            body["error"]["message"]
                .as_str()
                .unwrap_or("unexpected answer")
        )));
    };
    Ok((id, sha.to_owned()))
}

/// The baselines of the fleet benchmark: every device downloads the
/// artifact `sha256` once, plainly (at most `parallel` at a time), and
/// nothing else; with `hash`, it also computes the SHA-256 of what it
/// received (the least any device must do before accepting an image) and
/// checks it. Returns the time taken and the bytes moved.
pub async fn plain_downloads(
    http: &reqwest::Client,
    server: &str,
    tokens: &[String],
    sha256: &str,
    parallel: usize,
    hash: bool,
    link: Option<&Arc<Link>>,
) -> Result<(Duration, u64), AgentError> {
    let limit = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let url = format!(
        "{}/api/v1/device/artifacts/{sha256}",
        server.trim_end_matches('/')
    );
    let start = Instant::now();
    let mut set = JoinSet::new();
    for token in tokens {
        let (http, url, token, limit) = (http.clone(), url.clone(), token.clone(), limit.clone());
        let link = link.cloned();
        let expected = sha256.to_owned();
        set.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let mut response = http
                .get(&url)
                .bearer_auth(token)
                .send()
                .await
                .map_err(|e| AgentError::Http(format!("download: {e}")))?;
            if !response.status().is_success() {
                return Err(AgentError::Http(format!(
                    "download answered {}",
                    response.status()
                )));
            }
            let mut n = 0u64;
            let mut digest = hash.then(<sha2::Sha256 as sha2::Digest>::new);
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| AgentError::Http(format!("download: {e}")))?
            {
                n += chunk.len() as u64;
                if let Some(link) = &link {
                    link.carry(chunk.len()).await;
                }
                if let Some(d) = digest.as_mut() {
                    sha2::Digest::update(d, &chunk);
                }
            }
            if let Some(d) = digest {
                let got = crate::hex(&sha2::Digest::finalize(d));
                if got != expected {
                    return Err(AgentError::Http(format!(
                        "download has SHA-256 {got}, expected {expected}"
                    )));
                }
            }
            Ok::<_, AgentError>(n)
        });
    }
    let mut bytes = 0;
    while let Some(joined) = set.join_next().await {
        bytes += joined.map_err(|e| AgentError::Http(format!("download task: {e}")))??;
    }
    Ok((start.elapsed(), bytes))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn faults_fall_on_exact_shares_of_the_fleet_chosen_by_name() {
        let names: Vec<String> = (0..1000).map(|i| format!("sim-{i:05}")).collect();
        let faults = Faults {
            behaviours: vec![("2.0.0".into(), Behaviour::Crash, 0.3)],
            silence: 0.1,
        };
        let fates = faults.of(&names);
        let crash = fates.iter().filter(|(rules, _)| !rules.is_empty()).count();
        let silent = fates.iter().filter(|(_, silent)| *silent).count();
        let both = fates.iter().filter(|(r, s)| !r.is_empty() && *s).count();
        assert_eq!((crash, silent, both), (300, 100, 0));
        assert_eq!(fates, faults.of(&names), "the same devices every time");
        let mut reversed = names.clone();
        reversed.reverse();
        let mut again = faults.of(&reversed);
        again.reverse();
        assert_eq!(again, fates, "chosen by name, not by position");
        assert!(
            Faults::default()
                .of(&names)
                .iter()
                .all(|(r, s)| r.is_empty() && !s)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_link_carries_its_rate_shared_by_all_and_banks_no_idle_time() {
        // 8 Mbit/s: a megabyte a second, on the runtime's (paused) clock.
        let link = Arc::new(Link::megabits(8.0));
        let start = tokio::time::Instant::now();
        let mut set = JoinSet::new();
        for _ in 0..4 {
            let link = link.clone();
            set.spawn(async move {
                for _ in 0..10 {
                    link.carry(25_000).await;
                }
            });
        }
        while set.join_next().await.is_some() {}
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        // Idle for a while: the next bytes take their own time, no more, no less.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let again = tokio::time::Instant::now();
        link.carry(500_000).await;
        assert_eq!(again.elapsed(), Duration::from_millis(500));
    }
}
