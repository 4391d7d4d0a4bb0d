//! Staged rollouts: the rules, as pure functions of what is stored and of
//! the time they are given (never the clock), so every timed behaviour is
//! tested by passing times.
//!
//! A rollout offers a release to a device set fixed when it starts, wave by
//! wave. Each device's place is a hash of the rollout and the device's name
//! ([`wave_order`]), so 1% is a stable 1% and a resumed rollout picks up
//! where it stopped. The waves are the rollout's deployment's assignments:
//! a device whose wave is not open waits in [`AssignmentState::Waiting`],
//! which no device is offered.
//!
//! ```text
//! draft --start--> running --pause / failure threshold--> paused --resume--> running
//!                  running --last wave open, every device done--> finished
//! draft | running | paused --cancel--> cancelled
//! ```
//!
//! A device counts as succeeded only when it confirmed the new image;
//! `rolled_back`, `failed` and a passed deadline (offered and then silent
//! for the plan's deadline) count as failures, each with its reason. At
//! every scheduler step ([`decide`]) a running rollout: fails the devices
//! past their deadline; pauses itself when the failures (less those an
//! operator accepted by resuming) reach the failure threshold; starts the
//! soak when the open waves reached the success threshold and opens the
//! next wave when the soak is over; finishes when the last wave is open
//! and every device is done; and moves waiting devices of the open waves
//! to `pending` while fewer than the plan's maximum are updating.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::deploy::AssignmentState;

/// The state of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Created, not started: no device set yet, nothing offered.
    Draft,
    /// Offering the release wave by wave.
    Running,
    /// Stopped by an operator or a threshold: nothing new is offered;
    /// devices already updating finish and are counted.
    Paused,
    /// Every wave open and every device done.
    Finished,
    /// Cancelled: unfinished devices are not offered the release any more.
    Cancelled,
}

impl RolloutState {
    /// Every state.
    pub const ALL: [RolloutState; 5] = [
        Self::Draft,
        Self::Running,
        Self::Paused,
        Self::Finished,
        Self::Cancelled,
    ];

    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Finished => "finished",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses a stored name.
    pub fn parse(text: &str) -> Option<RolloutState> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether the scheduler has work in this state (deadlines still pass
    /// while paused).
    pub fn is_active(self) -> bool {
        matches!(self, Self::Running | Self::Paused)
    }
}

impl fmt::Display for RolloutState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A number of devices given as a share of some total (`"2.5%"`) or as a
/// count (`"50"`): wave sizes and the failure threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    /// Hundredths of a percent: `250` is 2.5%.
    Percent(u32),
    /// A number of devices.
    Count(u64),
}

impl Amount {
    /// How many of `total` devices this is (a share rounds up).
    pub fn of(self, total: u64) -> u64 {
        match self {
            Amount::Percent(hundredths) => (total * u64::from(hundredths)).div_ceil(10_000),
            Amount::Count(n) => n,
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Percent(h) if h % 100 == 0 => write!(f, "{}%", h / 100),
            Amount::Percent(h) if h % 10 == 0 => write!(f, "{}.{}%", h / 100, (h % 100) / 10),
            Amount::Percent(h) => write!(f, "{}.{:02}%", h / 100, h % 100),
            Amount::Count(n) => write!(f, "{n}"),
        }
    }
}

impl FromStr for Amount {
    type Err = String;

    fn from_str(text: &str) -> Result<Amount, String> {
        let text = text.trim();
        let bad = || format!("{text:?} is not a count (50) or a percentage (2.5%)");
        let Some(percent) = text.strip_suffix('%') else {
            return text.parse().map(Amount::Count).map_err(|_| bad());
        };
        let (whole, fraction) = percent.split_once('.').unwrap_or((percent, ""));
        if whole.is_empty() || fraction.len() > 2 || whole.len() + fraction.len() > 6 {
            return Err(bad());
        }
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if !digits(whole) || !digits(fraction) {
            return Err(bad());
        }
        let whole: u32 = whole.parse().map_err(|_| bad())?;
        let fraction: u32 = format!("{fraction:0<2}").parse().map_err(|_| bad())?;
        let hundredths = whole * 100 + fraction;
        if hundredths > 10_000 {
            return Err(format!("{text:?} is more than 100%"));
        }
        Ok(Amount::Percent(hundredths))
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Amount, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum CountOrText {
            Count(u64),
            Text(String),
        }
        match CountOrText::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a count (50) or a percentage (\"2.5%\")")
        })? {
            CountOrText::Count(n) => Ok(Amount::Count(n)),
            CountOrText::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl utoipa::PartialSchema for Amount {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("a count (\"50\") or a percentage (\"2.5%\")"))
            .into()
    }
}

impl ToSchema for Amount {}

/// How a rollout proceeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Plan {
    /// Cumulative marks: wave k reaches this many of the devices (`"1%"`,
    /// `"10%"`, `"50"` ...). They must grow; the last wave always takes the
    /// rest of the devices.
    pub waves: Vec<Amount>,
    /// After the open waves reached the success threshold, wait this long
    /// (milliseconds) before opening the next wave.
    pub soak_ms: u64,
    /// Share of the open waves' devices that must have confirmed the new
    /// image before the next wave opens.
    pub success_threshold: Amount,
    /// Pause when this many devices failed (rolled back, failed, or passed
    /// their deadline): a count, or a share of the open waves' devices.
    pub failure_threshold: Amount,
    /// A device offered the update that has not moved for this long
    /// (milliseconds) counts as failed (reason `deadline`).
    pub deadline_ms: u64,
    /// At most this many devices updating at once (0: no limit). A device
    /// given room that does not check in within the deadline gives it back.
    pub max_parallel: u64,
    /// A device that failed this release this many times in earlier
    /// deployments is held back (the penalty box); 0 holds none back.
    pub penalty_failures: u64,
}

/// Most waves a plan may have.
pub const MAX_WAVES: usize = 20;

impl Plan {
    /// Why the plan cannot run, if anything.
    pub fn check(&self) -> Result<(), String> {
        if self.waves.is_empty() {
            return Err("a rollout needs at least one wave".into());
        }
        if self.waves.len() > MAX_WAVES {
            return Err(format!(
                "{} waves given, at most {MAX_WAVES} allowed",
                self.waves.len()
            ));
        }
        for pair in self.waves.windows(2) {
            let grows = match (pair[0], pair[1]) {
                (Amount::Percent(a), Amount::Percent(b)) => a < b,
                (Amount::Count(a), Amount::Count(b)) => a < b,
                _ => true,
            };
            if !grows {
                return Err(format!(
                    "waves are cumulative and must grow: {} comes after {}",
                    pair[1], pair[0]
                ));
            }
        }
        if self
            .waves
            .iter()
            .any(|w| matches!(w, Amount::Percent(0) | Amount::Count(0)))
        {
            return Err("a wave of 0 devices reaches nobody".into());
        }
        if !matches!(self.success_threshold, Amount::Percent(_)) {
            return Err(format!(
                "the success threshold is a percentage of the open waves' devices, not {}",
                self.success_threshold
            ));
        }
        if self.failure_threshold == Amount::Count(0) {
            return Err(
                "a failure threshold of 0 devices pauses at once; pause on the first failure with 1"
                    .into(),
            );
        }
        if self.deadline_ms == 0 {
            return Err("the per-device deadline must be longer than 0 ms".into());
        }
        Ok(())
    }

    /// The cumulative device counts of the waves for `eligible` devices:
    /// marks that add no device are dropped, and the last wave takes the
    /// rest. Empty when there is no device to update.
    pub fn resolve(&self, eligible: u64) -> Vec<u64> {
        let mut waves: Vec<u64> = Vec::new();
        for mark in &self.waves {
            let reach = mark.of(eligible).min(eligible);
            if reach > waves.last().copied().unwrap_or(0) {
                waves.push(reach);
            }
        }
        if waves.last().copied().unwrap_or(0) < eligible {
            waves.push(eligible);
        }
        waves
    }
}

/// A device's place in a rollout's order: a hash of the rollout and the
/// device's name (its identity across the fleet's lifetime), the same on
/// every server and after every restart.
pub fn wave_order(rollout_id: i64, device_name: &str) -> u64 {
    let mut hash = Sha256::new();
    hash.update(b"airlift-rollout\0");
    hash.update(rollout_id.to_le_bytes());
    hash.update(device_name.as_bytes());
    let digest = hash.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The wave (1-based) of each of the `devices` (id and name) for the
/// cumulative counts `waves`: devices in [`wave_order`], the first
/// `waves[0]` in wave 1, and so on. In the order given.
pub fn assign_waves(rollout_id: i64, devices: &[(i64, &str)], waves: &[u64]) -> Vec<(i64, u32)> {
    let mut order: Vec<(u64, i64)> = devices
        .iter()
        .map(|(id, name)| (wave_order(rollout_id, name), *id))
        .collect();
    order.sort_unstable();
    let mut wave_of = std::collections::HashMap::with_capacity(order.len());
    for (position, (_, id)) in order.iter().enumerate() {
        let position = position as u64;
        let wave = waves
            .iter()
            .position(|&reach| position < reach)
            .map_or(waves.len(), |i| i + 1);
        wave_of.insert(*id, u32::try_from(wave).unwrap_or(u32::MAX));
    }
    devices
        .iter()
        .map(|(id, _)| (*id, wave_of.get(id).copied().unwrap_or(0)))
        .collect()
}

/// The assignment reason of a device that passed its deadline.
pub const DEADLINE: &str = "deadline";
/// The assignment reason of a device held back by the penalty box.
pub const PENALTY_BOX: &str = "penalty_box";

/// The devices of one wave by assignment state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct WaveTally {
    /// Devices per state (states with none are absent).
    pub states: BTreeMap<String, u64>,
    /// Of the failed ones, those that passed their deadline.
    pub deadline: u64,
    /// Of the skipped ones, those held back by the penalty box.
    pub held_back: u64,
}

impl WaveTally {
    /// Devices in `state`.
    pub fn count(&self, state: AssignmentState) -> u64 {
        self.states.get(state.as_str()).copied().unwrap_or(0)
    }

    /// Adds `n` devices in `state` (`reason` as stored).
    pub fn add(&mut self, state: AssignmentState, reason: Option<&str>, n: u64) {
        *self.states.entry(state.as_str().to_owned()).or_default() += n;
        match (state, reason) {
            (AssignmentState::Failed, Some(DEADLINE)) => self.deadline += n,
            (AssignmentState::Skipped, Some(PENALTY_BOX)) => self.held_back += n,
            _ => {}
        }
    }

    fn take(&mut self, state: AssignmentState, n: u64) {
        if let Some(count) = self.states.get_mut(state.as_str()) {
            *count = count.saturating_sub(n);
        }
    }

    /// Every device of the wave.
    pub fn devices(&self) -> u64 {
        self.states.values().sum()
    }

    /// Devices the wave updates: all but the skipped and the cancelled.
    pub fn eligible(&self) -> u64 {
        self.devices()
            - self.count(AssignmentState::Skipped)
            - self.count(AssignmentState::Cancelled)
    }

    /// Devices that confirmed the new image.
    pub fn confirmed(&self) -> u64 {
        self.count(AssignmentState::Confirmed)
    }

    /// Devices that failed, rolled back or passed their deadline.
    pub fn failures(&self) -> u64 {
        self.count(AssignmentState::Failed) + self.count(AssignmentState::RolledBack)
    }

    /// Failures by reason: `rolled_back`, `failed`, `deadline`.
    pub fn failures_by_reason(&self) -> BTreeMap<String, u64> {
        let failed = self.count(AssignmentState::Failed);
        [
            ("rolled_back", self.count(AssignmentState::RolledBack)),
            ("failed", failed - self.deadline.min(failed)),
            (DEADLINE, self.deadline),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| (k.to_owned(), n))
        .collect()
    }

    /// Devices given the update and not done with it (pending to booted).
    pub fn updating(&self) -> u64 {
        [
            AssignmentState::Pending,
            AssignmentState::Offered,
            AssignmentState::Downloading,
            AssignmentState::Installed,
            AssignmentState::Booted,
        ]
        .into_iter()
        .map(|s| self.count(s))
        .sum()
    }

    /// Devices waiting for their wave or for room.
    pub fn waiting(&self) -> u64 {
        self.count(AssignmentState::Waiting)
    }

    fn merge(&mut self, other: &WaveTally) {
        for (state, n) in &other.states {
            *self.states.entry(state.clone()).or_default() += n;
        }
        self.deadline += other.deadline;
        self.held_back += other.held_back;
    }
}

/// The tallies of waves `1..=last` (index 0 of `tallies` holds the devices
/// in no wave: skipped when the rollout started) added up.
pub fn tally_upto(tallies: &[WaveTally], last: usize) -> WaveTally {
    sum(tallies.iter().skip(1).take(last))
}

/// Every device of the rollout, those in no wave included.
pub fn tally_all(tallies: &[WaveTally]) -> WaveTally {
    sum(tallies.iter())
}

fn sum<'a>(tallies: impl Iterator<Item = &'a WaveTally>) -> WaveTally {
    let mut total = WaveTally::default();
    for t in tallies {
        total.merge(t);
    }
    total
}

/// Why a rollout is paused: who or which threshold, with the numbers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PauseReason {
    /// The admin token's name, or `failure_threshold`.
    pub by: String,
    /// The reason in a sentence.
    pub message: String,
    /// The last open wave.
    pub wave: u32,
    /// Devices in the open waves (less skipped and cancelled ones).
    pub devices: u64,
    /// Of them, confirmed.
    pub confirmed: u64,
    /// Of them, failed: rolled back, failed and past the deadline.
    pub failures: u64,
    /// Failures by reason.
    pub failures_by_reason: BTreeMap<String, u64>,
    /// Failures accepted by an earlier resume (not counted again).
    pub accepted_failures: u64,
    /// The failure threshold as planned, when it paused the rollout.
    pub threshold: Option<Amount>,
    /// The number of failures that threshold meant, when it paused the rollout.
    pub limit: Option<u64>,
}

/// What a pause by the failure threshold is called in [`PauseReason::by`].
pub const BY_FAILURE_THRESHOLD: &str = "failure_threshold";

impl PauseReason {
    /// The reason an operator pauses for.
    pub fn operator(name: &str, wave: u32, open: &WaveTally, accepted: u64) -> PauseReason {
        PauseReason {
            by: name.to_owned(),
            message: format!("paused by {name}"),
            ..Self::numbers(wave, open, accepted)
        }
    }

    fn numbers(wave: u32, open: &WaveTally, accepted: u64) -> PauseReason {
        PauseReason {
            by: String::new(),
            message: String::new(),
            wave,
            devices: open.eligible(),
            confirmed: open.confirmed(),
            failures: open.failures(),
            failures_by_reason: open.failures_by_reason(),
            accepted_failures: accepted,
            threshold: None,
            limit: None,
        }
    }
}

/// Everything a scheduler step decides from, read in the step's transaction.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The rollout's state.
    pub state: RolloutState,
    /// Its plan.
    pub plan: Plan,
    /// Cumulative device counts of the waves.
    pub waves: Vec<u64>,
    /// Waves open.
    pub opened: u32,
    /// When the open waves reached the success threshold.
    pub succeeded_at: Option<i64>,
    /// Failures accepted by resuming.
    pub accepted_failures: u64,
    /// Devices per wave (index 0: in no wave) and state.
    pub tallies: Vec<WaveTally>,
    /// Devices offered the update that have not moved since before the
    /// deadline: device id, wave, state.
    pub overdue: Vec<(i64, u32, AssignmentState)>,
    /// Devices `pending` since before the deadline (given room, never
    /// checked in): device id, wave.
    pub stale_pending: Vec<(i64, u32)>,
}

/// Something a step records about a rollout (a rollout event; with
/// `transition`, also an audit record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// `paused`, `wave_opened`, `soak_started`, `deadline`, `finished`.
    pub kind: &'static str,
    /// Details.
    pub detail: serde_json::Value,
    /// Whether the rollout's state or open waves changed.
    pub transition: bool,
}

/// What a scheduler step does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Devices that passed their deadline: they become `failed` (reason `deadline`).
    pub fail: Vec<i64>,
    /// Pending devices that give their room back (to `waiting`, at the back).
    pub requeue: Vec<i64>,
    /// How many waiting devices of the open waves become `pending`.
    pub promote: u64,
    /// The rollout's state after the step (pausing also moves every
    /// `pending` device back to `waiting`).
    pub state: RolloutState,
    /// Waves open after the step.
    pub opened: u32,
    /// The soak's start after the step.
    pub succeeded_at: Option<i64>,
    /// Set when the step pauses the rollout.
    pub pause: Option<PauseReason>,
    /// What happened.
    pub notes: Vec<Note>,
}

/// One scheduler step of a rollout at time `now` (Unix ms).
pub fn decide(s: &Snapshot, now: i64) -> Step {
    let mut step = Step {
        fail: s.overdue.iter().map(|(id, ..)| *id).collect(),
        requeue: Vec::new(),
        promote: 0,
        state: s.state,
        opened: s.opened,
        succeeded_at: s.succeeded_at,
        pause: None,
        notes: Vec::new(),
    };
    let mut tallies = s.tallies.clone();
    for &(_, wave, state) in &s.overdue {
        if let Some(t) = tallies.get_mut(wave as usize) {
            t.take(state, 1);
            t.add(AssignmentState::Failed, Some(DEADLINE), 1);
        }
    }
    if !step.fail.is_empty() {
        step.notes.push(Note {
            kind: "deadline",
            detail: serde_json::json!({"devices": step.fail.len(), "deadline_ms": s.plan.deadline_ms}),
            transition: false,
        });
    }
    if s.state != RolloutState::Running {
        return step;
    }
    let waves = s.waves.len() as u32;
    let open = tally_upto(&tallies, step.opened as usize);
    let failures = open.failures().saturating_sub(s.accepted_failures);
    let limit = s.plan.failure_threshold.of(open.eligible()).max(1);
    if failures >= limit {
        let mut reason = PauseReason::numbers(step.opened, &open, s.accepted_failures);
        let reasons: Vec<String> = reason
            .failures_by_reason
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let accepted = if s.accepted_failures > 0 {
            format!(" beyond the {} accepted at resume", s.accepted_failures)
        } else {
            String::new()
        };
        reason.by = BY_FAILURE_THRESHOLD.to_owned();
        reason.message = format!(
            "{failures} failure{}{accepted} ({}) in wave{} reached the failure threshold of {} ({limit} of {} devices)",
            if failures == 1 { "" } else { "s" },
            reasons.join(", "),
            if step.opened == 1 {
                " 1".to_owned()
            } else {
                format!("s 1-{}", step.opened)
            },
            s.plan.failure_threshold,
            open.eligible(),
        );
        reason.threshold = Some(s.plan.failure_threshold);
        reason.limit = Some(limit);
        step.notes.push(Note {
            kind: "paused",
            detail: serde_json::to_value(&reason).unwrap_or_default(),
            transition: true,
        });
        step.state = RolloutState::Paused;
        step.pause = Some(reason);
        return step;
    }
    while step.opened < waves {
        let open = tally_upto(&tallies, step.opened as usize);
        if !s
            .plan
            .success_threshold
            .reached(open.confirmed(), open.eligible())
        {
            break;
        }
        let since = *step.succeeded_at.get_or_insert_with(|| {
            step.notes.push(Note {
                kind: "soak_started",
                detail: serde_json::json!({"wave": step.opened, "confirmed": open.confirmed(),
                    "devices": open.eligible(), "soak_ms": s.plan.soak_ms}),
                transition: false,
            });
            now
        });
        if now.saturating_sub(since) < i64::try_from(s.plan.soak_ms).unwrap_or(i64::MAX) {
            break;
        }
        step.opened += 1;
        step.succeeded_at = None;
        step.notes.push(Note {
            kind: "wave_opened",
            detail: serde_json::json!({"wave": step.opened, "after_soak_ms": s.plan.soak_ms,
                "confirmed": open.confirmed(), "devices": open.eligible()}),
            transition: true,
        });
    }
    let all = tally_all(&tallies);
    if step.opened >= waves && all.waiting() + all.updating() == 0 {
        step.state = RolloutState::Finished;
        step.notes.push(Note {
            kind: "finished",
            detail: serde_json::json!({"confirmed": all.confirmed(), "failures": all.failures(),
                "failures_by_reason": all.failures_by_reason(), "devices": all.eligible()}),
            transition: true,
        });
        return step;
    }
    let waiting = tally_upto(&tallies, step.opened as usize).waiting();
    let mut updating = all.updating();
    if s.plan.max_parallel > 0 && waiting > 0 {
        step.requeue = s.stale_pending.iter().map(|(id, _)| *id).collect();
        updating -= (step.requeue.len() as u64).min(updating);
    }
    let room = if s.plan.max_parallel == 0 {
        u64::MAX
    } else {
        s.plan.max_parallel.saturating_sub(updating)
    };
    step.promote = room.min(waiting + step.requeue.len() as u64);
    step
}

impl Amount {
    /// Whether `part` of `total` reaches this share (a count: `part` reaches it).
    pub fn reached(self, part: u64, total: u64) -> bool {
        match self {
            Amount::Percent(h) => part * 10_000 >= total * u64::from(h),
            Amount::Count(n) => part >= n,
        }
    }
}

/// An operator's command on a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Start a draft: fix the device set and open wave 1.
    Start,
    /// Stop offering the release.
    Pause,
    /// Go on after a pause, accepting the failures so far.
    Resume,
    /// Open the next wave now, without the soak or the success threshold.
    Advance,
    /// Stop for good.
    Cancel,
}

impl Command {
    /// Its name, as the CLI and the API's routes spell it.
    pub fn name(self) -> &'static str {
        match self {
            Command::Start => "start",
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Advance => "advance",
            Command::Cancel => "cancel",
        }
    }

    /// The rollout event recorded for it.
    pub fn event(self) -> &'static str {
        match self {
            Command::Start => "started",
            Command::Pause => "paused",
            Command::Resume => "resumed",
            Command::Advance => "advanced",
            Command::Cancel => "cancelled",
        }
    }

    /// The state after the command, or why it is refused, for a rollout
    /// in `state` with `opened` of `waves` waves open.
    pub fn apply(
        self,
        state: RolloutState,
        opened: u32,
        waves: usize,
    ) -> Result<RolloutState, String> {
        use RolloutState::*;
        match (self, state) {
            (Command::Start, Draft) => Ok(Running),
            (Command::Pause, Running) => Ok(Paused),
            (Command::Resume, Paused) => Ok(Running),
            (Command::Advance, Running) if (opened as usize) < waves => Ok(Running),
            (Command::Advance, Running) => {
                Err(format!("every wave is open already ({opened} of {waves})"))
            }
            (Command::Advance, Paused) => Err("the rollout is paused: resume it first".into()),
            (Command::Cancel, Draft | Running | Paused) => Ok(Cancelled),
            (Command::Resume, Draft) => Err("the rollout is a draft: start it".into()),
            (_, state) => Err(format!("the rollout is {state}")),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use AssignmentState::*;

    fn amount(text: &str) -> Amount {
        text.parse().unwrap()
    }

    #[test]
    fn amounts_are_counts_or_percentages_and_print_back() {
        let check = |text: &str, expected: Result<Amount, &str>, shown: &str| {
            let parsed = text.parse::<Amount>();
            match expected {
                Ok(a) => {
                    assert_eq!(parsed, Ok(a), "{text}");
                    assert_eq!(a.to_string(), shown, "{text}");
                }
                Err(message) => {
                    let err = parsed.unwrap_err();
                    assert!(err.contains(message), "{text}: {err}");
                }
            }
        };
        check("50", Ok(Amount::Count(50)), "50");
        check("1%", Ok(Amount::Percent(100)), "1%");
        check("2.5%", Ok(Amount::Percent(250)), "2.5%");
        check("0.05%", Ok(Amount::Percent(5)), "0.05%");
        check(" 100% ", Ok(Amount::Percent(10_000)), "100%");
        check("100.5%", Err("more than 100%"), "");
        check("%", Err("not a count"), "");
        check("1.234%", Err("not a count"), "");
        check("-3", Err("not a count"), "");
        check("ten", Err("not a count"), "");
        check("1e3%", Err("not a count"), "");
    }

    #[test]
    fn a_share_rounds_up_to_whole_devices() {
        assert_eq!(amount("1%").of(1000), 10);
        assert_eq!(amount("1%").of(50), 1);
        assert_eq!(amount("10%").of(55), 6);
        assert_eq!(amount("0%").of(1000), 0);
        assert_eq!(amount("7").of(3), 7);
        assert!(amount("90%").reached(9, 10));
        assert!(!amount("90%").reached(8, 10));
        assert!(amount("90%").reached(0, 0), "nothing to update: reached");
    }

    fn plan(waves: &[&str]) -> Plan {
        Plan {
            waves: waves.iter().map(|w| amount(w)).collect(),
            soak_ms: 1000,
            success_threshold: amount("90%"),
            failure_threshold: amount("10%"),
            deadline_ms: 5000,
            max_parallel: 0,
            penalty_failures: 2,
        }
    }

    #[test]
    fn plans_are_checked_before_they_are_stored() {
        let check = |p: Plan, expected: Option<&str>| match (p.check(), expected) {
            (Ok(()), None) => {}
            (Err(e), Some(m)) => assert!(e.contains(m), "{e}"),
            (got, _) => panic!("{p:?}: {got:?}"),
        };
        check(plan(&["1%", "10%", "100%"]), None);
        check(plan(&["10", "50%", "20"]), None);
        check(plan(&[]), Some("at least one wave"));
        check(plan(&["10%", "5%"]), Some("must grow"));
        check(plan(&["5", "5"]), Some("must grow"));
        check(plan(&["0%", "5%"]), Some("0 devices"));
        check(plan(&["1"; 21]), Some("at most 20"));
        check(
            Plan {
                success_threshold: amount("9"),
                ..plan(&["1%"])
            },
            Some("percentage"),
        );
        check(
            Plan {
                failure_threshold: amount("0"),
                ..plan(&["1%"])
            },
            Some("pauses at once"),
        );
        check(
            Plan {
                deadline_ms: 0,
                ..plan(&["1%"])
            },
            Some("deadline"),
        );
    }

    #[test]
    fn waves_resolve_to_growing_cumulative_counts_and_the_last_takes_the_rest() {
        let check = |waves: &[&str], eligible: u64, expected: &[u64]| {
            assert_eq!(
                plan(waves).resolve(eligible),
                expected,
                "{waves:?} of {eligible}"
            );
        };
        check(
            &["2%", "10%", "25%", "50%", "100%"],
            1000,
            &[20, 100, 250, 500, 1000],
        );
        check(&["1%", "10%"], 1000, &[10, 100, 1000]);
        check(&["1%", "2%", "100%"], 20, &[1, 20]);
        check(&["10", "50%"], 30, &[10, 15, 30]);
        check(&["50", "100"], 30, &[30]);
        check(&["1%"], 0, &[]);
    }

    #[test]
    fn wave_membership_is_a_stable_hash_of_rollout_and_device() {
        let names: Vec<String> = (0..1000).map(|i| format!("dev-{i:04}")).collect();
        let devices: Vec<(i64, &str)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (i as i64 + 1, n.as_str()))
            .collect();
        let waves = plan(&["1%", "10%", "100%"]).resolve(1000);
        let first = assign_waves(7, &devices, &waves);
        let count = |a: &[(i64, u32)], w: u32| a.iter().filter(|(_, x)| *x == w).count();
        assert_eq!(
            (count(&first, 1), count(&first, 2), count(&first, 3)),
            (10, 90, 900)
        );
        // The same rollout, the devices listed in another order: the same waves.
        let mut reversed = devices.clone();
        reversed.reverse();
        let mut again = assign_waves(7, &reversed, &waves);
        again.sort_unstable();
        assert_eq!(again, first);
        // Another rollout: another 1%.
        let other = assign_waves(8, &devices, &waves);
        let wave_one = |a: &[(i64, u32)]| -> Vec<i64> {
            a.iter()
                .filter(|(_, w)| *w == 1)
                .map(|(id, _)| *id)
                .collect()
        };
        assert_ne!(wave_one(&other), wave_one(&first));
        // A device's rank does not depend on the other devices: the first
        // 1% of a larger set keeps those of the smaller set that rank first.
        assert_eq!(wave_order(7, "dev-0001"), wave_order(7, "dev-0001"));
        assert_ne!(wave_order(7, "dev-0001"), wave_order(7, "dev-0002"));
    }

    /// A tally from `(state, count)` pairs.
    fn tally(states: &[(AssignmentState, u64)]) -> WaveTally {
        let mut t = WaveTally::default();
        for &(state, n) in states {
            t.add(state, None, n);
        }
        t
    }

    fn snapshot(plan: Plan, waves: &[u64], opened: u32, tallies: Vec<WaveTally>) -> Snapshot {
        Snapshot {
            state: RolloutState::Running,
            plan,
            waves: waves.to_vec(),
            opened,
            succeeded_at: None,
            accepted_failures: 0,
            tallies: std::iter::once(WaveTally::default())
                .chain(tallies)
                .collect(),
            overdue: vec![],
            stale_pending: vec![],
        }
    }

    fn kinds(step: &Step) -> Vec<&'static str> {
        step.notes.iter().map(|n| n.kind).collect()
    }

    #[test]
    fn a_new_wave_promotes_its_devices_and_later_waves_stay_waiting() {
        let s = snapshot(
            plan(&["10%", "100%"]),
            &[10, 100],
            1,
            vec![tally(&[(Waiting, 10)]), tally(&[(Waiting, 90)])],
        );
        let step = decide(&s, 0);
        assert_eq!(
            (step.promote, step.opened, step.state),
            (10, 1, RolloutState::Running)
        );
        assert!(step.notes.is_empty());
    }

    #[test]
    fn failures_reaching_the_threshold_pause_with_the_reason_and_the_numbers() {
        // Wave 1 of 50 devices; 10% is 5 failures.
        let wave1 = tally(&[(Confirmed, 20), (RolledBack, 4), (Failed, 1), (Booted, 25)]);
        let s = snapshot(
            plan(&["5%", "100%"]),
            &[50, 1000],
            1,
            vec![wave1, tally(&[(Waiting, 950)])],
        );
        let step = decide(&s, 0);
        assert_eq!(step.state, RolloutState::Paused);
        assert_eq!(step.promote, 0);
        let reason = step.pause.clone().unwrap();
        assert_eq!(reason.by, "failure_threshold");
        assert_eq!(
            (
                reason.wave,
                reason.devices,
                reason.confirmed,
                reason.failures
            ),
            (1, 50, 20, 5)
        );
        assert_eq!(reason.limit, Some(5));
        assert_eq!(
            reason.failures_by_reason,
            BTreeMap::from([("failed".to_owned(), 1), ("rolled_back".to_owned(), 4)])
        );
        assert_eq!(
            reason.message,
            "5 failures (failed 1, rolled_back 4) in wave 1 reached the failure threshold of 10% (5 of 50 devices)"
        );
        assert_eq!(kinds(&step), ["paused"]);
        assert!(step.notes[0].transition);
        // One failure fewer: no pause.
        let wave1 = tally(&[(Confirmed, 20), (RolledBack, 4), (Booted, 26)]);
        let s = snapshot(
            plan(&["5%", "100%"]),
            &[50, 1000],
            1,
            vec![wave1, tally(&[(Waiting, 950)])],
        );
        assert_eq!(decide(&s, 0).state, RolloutState::Running);
    }

    #[test]
    fn failures_accepted_at_resume_count_no_more() {
        let wave1 = tally(&[(Confirmed, 40), (RolledBack, 6), (Booted, 4)]);
        let mut s = snapshot(
            plan(&["5%", "100%"]),
            &[50, 1000],
            1,
            vec![wave1, tally(&[(Waiting, 950)])],
        );
        s.accepted_failures = 6;
        let step = decide(&s, 0);
        assert_eq!(step.state, RolloutState::Running);
        s.tallies[1] = tally(&[(Confirmed, 39), (RolledBack, 6), (Failed, 5)]);
        let step = decide(&s, 0);
        assert_eq!(step.state, RolloutState::Paused);
        assert!(
            step.pause
                .unwrap()
                .message
                .starts_with("5 failures beyond the 6 accepted at resume"),
        );
    }

    #[test]
    fn devices_past_their_deadline_fail_and_count_towards_the_threshold() {
        let mut s = snapshot(
            Plan {
                failure_threshold: amount("2"),
                ..plan(&["10", "100%"])
            },
            &[10, 100],
            1,
            vec![
                tally(&[(Confirmed, 7), (Installed, 2), (Booted, 1)]),
                tally(&[(Waiting, 90)]),
            ],
        );
        s.overdue = vec![(31, 1, Installed)];
        let step = decide(&s, 0);
        assert_eq!(step.fail, [31]);
        assert_eq!(step.state, RolloutState::Running, "one failure of two");
        assert_eq!(kinds(&step), ["deadline"]);
        s.overdue = vec![(31, 1, Installed), (32, 1, Booted)];
        let step = decide(&s, 0);
        assert_eq!(step.fail, [31, 32]);
        assert_eq!(step.state, RolloutState::Paused);
        let reason = step.pause.clone().unwrap();
        assert_eq!(
            reason.failures_by_reason,
            BTreeMap::from([("deadline".to_owned(), 2)])
        );
        assert_eq!(kinds(&decide(&s, 0)), ["deadline", "paused"]);
    }

    #[test]
    fn the_next_wave_opens_only_after_the_success_threshold_and_the_soak() {
        let plan = Plan {
            soak_ms: 60_000,
            ..plan(&["10", "100%"])
        };
        let below = snapshot(
            plan.clone(),
            &[10, 100],
            1,
            vec![
                tally(&[(Confirmed, 8), (Booted, 2)]),
                tally(&[(Waiting, 90)]),
            ],
        );
        let step = decide(&below, 0);
        assert_eq!(
            (step.opened, step.succeeded_at),
            (1, None),
            "8 of 10 is below 90%"
        );
        let mut reached = snapshot(
            plan,
            &[10, 100],
            1,
            vec![
                tally(&[(Confirmed, 9), (Booted, 1)]),
                tally(&[(Waiting, 90)]),
            ],
        );
        let step = decide(&reached, 1_000);
        assert_eq!(
            (step.opened, step.succeeded_at, step.promote),
            (1, Some(1_000), 0)
        );
        assert_eq!(kinds(&step), ["soak_started"]);
        reached.succeeded_at = step.succeeded_at;
        let step = decide(&reached, 60_999);
        assert_eq!(
            (step.opened, step.succeeded_at),
            (1, Some(1_000)),
            "still soaking"
        );
        assert!(step.notes.is_empty());
        let step = decide(&reached, 61_000);
        assert_eq!(
            (step.opened, step.succeeded_at, step.promote),
            (2, None, 90)
        );
        assert_eq!(kinds(&step), ["wave_opened"]);
    }

    #[test]
    fn without_a_soak_waves_open_as_soon_as_they_succeed() {
        let s = snapshot(
            Plan {
                soak_ms: 0,
                ..plan(&["10", "100%"])
            },
            &[10, 100],
            1,
            vec![tally(&[(Confirmed, 10)]), tally(&[(Waiting, 90)])],
        );
        let step = decide(&s, 5);
        assert_eq!((step.opened, step.promote), (2, 90));
        assert_eq!(kinds(&step), ["soak_started", "wave_opened"]);
    }

    #[test]
    fn the_rollout_finishes_when_the_last_wave_is_open_and_every_device_is_done() {
        let done = vec![
            tally(&[(Confirmed, 9), (RolledBack, 1)]),
            tally(&[(Confirmed, 89), (Skipped, 1)]),
        ];
        let s = snapshot(plan(&["10", "100%"]), &[10, 100], 2, done.clone());
        let step = decide(&s, 0);
        assert_eq!(step.state, RolloutState::Finished);
        assert_eq!(kinds(&step), ["finished"]);
        let mut busy = done;
        busy[1].add(Booted, None, 1);
        let s = snapshot(plan(&["10", "100%"]), &[10, 100], 2, busy);
        assert_eq!(decide(&s, 0).state, RolloutState::Running);
        let nothing = snapshot(plan(&["10"]), &[], 0, vec![]);
        assert_eq!(
            decide(&nothing, 0).state,
            RolloutState::Finished,
            "no device to update"
        );
    }

    #[test]
    fn at_most_max_parallel_devices_update_and_stale_pending_ones_give_room_back() {
        let limited = Plan {
            max_parallel: 5,
            ..plan(&["100%"])
        };
        let mut s = snapshot(
            limited.clone(),
            &[100],
            1,
            vec![tally(&[
                (Waiting, 90),
                (Pending, 2),
                (Downloading, 1),
                (Confirmed, 7),
            ])],
        );
        assert_eq!(decide(&s, 0).promote, 2);
        s.stale_pending = vec![(4, 1), (5, 1)];
        let step = decide(&s, 0);
        assert_eq!(step.requeue, [4, 5]);
        assert_eq!(
            step.promote, 4,
            "the two stale ones go to the back of the queue"
        );
        // Nobody else waits: a stale device keeps its room.
        let s = snapshot(
            limited,
            &[100],
            1,
            vec![tally(&[(Pending, 2), (Confirmed, 98)])],
        );
        let mut s2 = s.clone();
        s2.stale_pending = vec![(4, 1), (5, 1)];
        let step = decide(&s2, 0);
        assert!(step.requeue.is_empty());
        assert_eq!(step.promote, 0);
        assert_eq!(decide(&s, 0).state, RolloutState::Running);
    }

    #[test]
    fn a_paused_rollout_only_fails_devices_past_their_deadline() {
        let mut s = snapshot(
            plan(&["10", "100%"]),
            &[10, 100],
            1,
            vec![tally(&[(Confirmed, 10)]), tally(&[(Waiting, 90)])],
        );
        s.state = RolloutState::Paused;
        s.overdue = vec![(3, 1, Offered)];
        let step = decide(&s, 0);
        assert_eq!(step.fail, [3]);
        assert_eq!(
            (step.state, step.opened, step.promote),
            (RolloutState::Paused, 1, 0)
        );
    }

    #[test]
    fn commands_move_rollouts_between_states() {
        use Command::*;
        use RolloutState::*;
        let check = |c: Command, from: RolloutState, expected: Result<RolloutState, &str>| match (
            c.apply(from, 1, 3),
            expected,
        ) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{c:?} {from}"),
            (Err(got), Err(want)) => assert!(got.contains(want), "{c:?} {from}: {got}"),
            (got, want) => panic!("{c:?} {from}: {got:?}, expected {want:?}"),
        };
        check(Start, Draft, Ok(Running));
        check(Start, Running, Err("is running"));
        check(Pause, Running, Ok(Paused));
        check(Pause, Paused, Err("is paused"));
        check(Pause, Draft, Err("is draft"));
        check(Resume, Paused, Ok(Running));
        check(Resume, Running, Err("is running"));
        check(Resume, Draft, Err("start it"));
        check(Advance, Running, Ok(Running));
        check(Advance, Paused, Err("resume it first"));
        check(Cancel, Draft, Ok(Cancelled));
        check(Cancel, Paused, Ok(Cancelled));
        check(Cancel, Finished, Err("is finished"));
        check(Cancel, Cancelled, Err("is cancelled"));
        assert_eq!(
            Advance.apply(Running, 3, 3),
            Err("every wave is open already (3 of 3)".into())
        );
    }
}
