//! Admin API handlers of staged rollouts: create (and start), list, show,
//! start, pause, resume, advance, cancel. The rules are
//! [`crate::rollout`]'s; what the scheduler does between calls is
//! [`crate::scheduler`]'s.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::admin::{AssignmentQuery, parse_target};
use super::{Admin, AuditNote};
use crate::AppState;
use crate::deploy::{AssignmentState, skip_reason};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use crate::rollout::{
    Amount, Command, PENALTY_BOX, Plan, RolloutState, WaveTally, assign_waves, tally_all,
};
use crate::scheduler;
use crate::store::{Assignment, NewRollout, Release, Rollout, RolloutEvent, WaveAssignment};

/// A rollout to create.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewRolloutRequest {
    /// The release: its id (a JSON number or string) or its SHA-256.
    #[serde(deserialize_with = "super::admin::id_or_text")]
    pub release: String,
    /// `tag:T`, `devices:A,B,...`, `device:NAME` or `all`; resolved when the rollout starts.
    pub target: String,
    /// Cumulative wave marks, counts or percentages [default: 1%, 10%, 50%, 100%].
    #[serde(default = "default_waves")]
    pub waves: Vec<Amount>,
    /// Soak time between waves in milliseconds [default: 1 hour].
    #[serde(default = "default_soak_ms")]
    pub soak_ms: u64,
    /// Share of the open waves' devices that must confirm before the next wave [default: 95%].
    #[serde(default = "default_success")]
    pub success_threshold: Amount,
    /// Pause at this many failures, a count or a share of the open waves' devices [default: 5%].
    #[serde(default = "default_failure")]
    pub failure_threshold: Amount,
    /// Per-device deadline in milliseconds [default: 1 hour].
    #[serde(default = "default_deadline_ms")]
    pub deadline_ms: u64,
    /// Most devices updating at once, 0 for no limit [default: 0].
    #[serde(default)]
    pub max_parallel: u64,
    /// Hold back devices that failed this release this many times, 0 for none [default: 2].
    #[serde(default = "default_penalty")]
    pub penalty_failures: u64,
    /// Start at once [default: true]; false leaves a draft.
    #[serde(default = "default_start")]
    pub start: bool,
}

fn default_waves() -> Vec<Amount> {
    [100, 1_000, 5_000, 10_000]
        .into_iter()
        .map(Amount::Percent)
        .collect()
}

fn default_soak_ms() -> u64 {
    3_600_000
}

fn default_success() -> Amount {
    Amount::Percent(9_500)
}

fn default_failure() -> Amount {
    Amount::Percent(500)
}

fn default_deadline_ms() -> u64 {
    3_600_000
}

fn default_penalty() -> u64 {
    2
}

fn default_start() -> bool {
    true
}

/// The progress of one wave (or of the whole rollout).
#[derive(Debug, Serialize, ToSchema)]
pub struct WaveProgress {
    /// Wave number (1-based); 0 for the whole rollout.
    pub wave: u32,
    /// Whether the wave is open.
    pub open: bool,
    /// Devices in the wave.
    pub devices: u64,
    /// Devices it updates (all but skipped and cancelled ones).
    pub eligible: u64,
    /// Devices that confirmed the new image.
    pub confirmed: u64,
    /// Devices that rolled back, failed or passed their deadline.
    pub failures: u64,
    /// Failures by reason: `rolled_back`, `failed`, `deadline`.
    pub failures_by_reason: std::collections::BTreeMap<String, u64>,
    /// Devices given the update and not done yet.
    pub updating: u64,
    /// Devices waiting for the wave or for room.
    pub waiting: u64,
    /// Devices skipped (already running it, other chip, security version, penalty box).
    pub skipped: u64,
    /// Of the skipped, those held back by the penalty box.
    pub held_back: u64,
    /// Devices per assignment state.
    pub states: std::collections::BTreeMap<String, u64>,
}

impl WaveProgress {
    fn of(wave: u32, open: bool, tally: &WaveTally) -> WaveProgress {
        WaveProgress {
            wave,
            open,
            devices: tally.devices(),
            eligible: tally.eligible(),
            confirmed: tally.confirmed(),
            failures: tally.failures(),
            failures_by_reason: tally.failures_by_reason(),
            updating: tally.updating(),
            waiting: tally.waiting(),
            skipped: tally.count(AssignmentState::Skipped),
            held_back: tally.held_back,
            states: tally.states.clone(),
        }
    }
}

/// A device held back by the penalty box.
#[derive(Debug, Serialize, ToSchema)]
pub struct HeldBack {
    /// The device's name.
    pub device: String,
    /// Times it failed this release before.
    pub failures: u64,
}

/// A rollout with its progress, its device set and its history.
#[derive(Debug, Serialize, ToSchema)]
pub struct RolloutDetail {
    /// The rollout.
    #[serde(flatten)]
    pub rollout: Rollout,
    /// The release.
    pub release: Release,
    /// Progress of the whole rollout (every device, skipped ones included).
    pub total: WaveProgress,
    /// Progress per wave.
    pub progress: Vec<WaveProgress>,
    /// Devices held back by the penalty box.
    pub held_back: Vec<HeldBack>,
    /// The device set (fixed when the rollout started; empty for a draft):
    /// each device's wave and state (those asked for: see the `state`,
    /// `limit` and `offset` parameters).
    pub assignments: Vec<Assignment>,
    /// Devices of the rollout in the states asked for, on every page.
    pub assignments_total: i64,
    /// What happened, oldest first.
    pub events: Vec<RolloutEvent>,
}

async fn detail(
    state: &AppState,
    id: i64,
    query: &AssignmentQuery,
) -> Result<RolloutDetail, ApiError> {
    let rollout = state.store.rollout(id).await?;
    let release = state.store.release(rollout.release_id).await?;
    let tallies = state.store.rollout_tallies(id).await?;
    let (assignments_total, assignments) = match rollout.deployment_id {
        Some(deployment) => query.page(state, deployment).await?,
        None => (0, Vec::new()),
    };
    let progress = tallies
        .iter()
        .enumerate()
        .skip(1)
        .map(|(wave, tally)| {
            let wave = u32::try_from(wave).unwrap_or(u32::MAX);
            WaveProgress::of(wave, wave <= rollout.opened, tally)
        })
        .collect();
    let all = tally_all(&tallies);
    let held_back = held_back(state, &rollout, &all).await?;
    Ok(RolloutDetail {
        total: WaveProgress::of(0, rollout.opened > 0, &all),
        events: state.store.rollout_events(id).await?,
        rollout,
        release,
        progress,
        held_back,
        assignments,
        assignments_total,
    })
}

/// The devices the penalty box held back (read only when there are some).
async fn held_back(
    state: &AppState,
    rollout: &Rollout,
    all: &WaveTally,
) -> Result<Vec<HeldBack>, ApiError> {
    let Some(deployment) = rollout.deployment_id.filter(|_| all.held_back > 0) else {
        return Ok(Vec::new());
    };
    let skipped = [AssignmentState::Skipped.as_str().to_owned()];
    let (_, skipped) = state
        .store
        .assignments_page(deployment, &skipped, i64::MAX, 0)
        .await?;
    let failures = state.store.release_failures(rollout.release_id).await?;
    Ok(skipped
        .iter()
        .filter(|a| a.reason.as_deref() == Some(PENALTY_BOX))
        .map(|a| HeldBack {
            device: a.device_name.clone(),
            failures: failures.get(&a.device_id).copied().unwrap_or(0),
        })
        .collect())
}

fn note(id: i64, detail: serde_json::Value) -> Extension<AuditNote> {
    Extension(AuditNote {
        target: format!("rollout:{id}"),
        detail,
    })
}

/// Fixes the device set of a draft and starts it: devices that are
/// skipped (already running the release, other chip, security version) or
/// held back by the penalty box are in no wave; the others get their waves
/// from [`assign_waves`]; then a scheduler step opens wave 1.
async fn start(state: &AppState, rollout: &Rollout, actor: &str) -> Result<(), ApiError> {
    let release = state.store.release(rollout.release_id).await?;
    let target = parse_target(&rollout.target)?;
    state.flush_statuses().await?;
    let devices = super::admin::reached(state, &target).await?;
    let failures = if rollout.plan.penalty_failures > 0 {
        state.store.release_failures(release.id).await?
    } else {
        Default::default()
    };
    let mut assignments = Vec::with_capacity(devices.len());
    let mut eligible = Vec::with_capacity(devices.len());
    for device in &devices {
        let penalty = rollout.plan.penalty_failures;
        let held = penalty > 0 && failures.get(&device.id).is_some_and(|&n| n >= penalty);
        let reason = if held {
            Some(PENALTY_BOX)
        } else {
            skip_reason(&device.status, &release)
        };
        match reason {
            Some(reason) => assignments.push(WaveAssignment {
                device_id: device.id,
                wave: 0,
                state: AssignmentState::Skipped.as_str(),
                reason: Some(reason.to_owned()),
            }),
            None => eligible.push((device.id, device.name.as_str())),
        }
    }
    let waves = rollout.plan.resolve(eligible.len() as u64);
    for (device_id, wave) in assign_waves(rollout.id, &eligible, &waves) {
        assignments.push(WaveAssignment {
            device_id,
            wave,
            state: AssignmentState::Waiting.as_str(),
            reason: None,
        });
    }
    let now = crate::now_ms();
    state
        .store
        .start_rollout(rollout.id, actor, &waves, &assignments, now)
        .await?;
    scheduler::step(state, rollout.id, now).await?;
    Ok(())
}

/// Creates a staged rollout of a release and, unless `start` is false,
/// starts it: the device set of the target is fixed now and wave 1 opens.
#[utoipa::path(post, path = "/api/v1/rollouts", tag = "rollouts", security(("admin_token" = [])),
    request_body = NewRolloutRequest,
    responses((status = 201, body = RolloutDetail), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn create_rollout(
    State(state): State<AppState>,
    Extension(admin): Extension<Admin>,
    ApiJson(request): ApiJson<NewRolloutRequest>,
) -> Result<(StatusCode, Extension<AuditNote>, ApiJson<RolloutDetail>), ApiError> {
    let target = parse_target(&request.target)?;
    let plan = Plan {
        waves: request.waves,
        soak_ms: request.soak_ms,
        success_threshold: request.success_threshold,
        failure_threshold: request.failure_threshold,
        deadline_ms: request.deadline_ms,
        max_parallel: request.max_parallel,
        penalty_failures: request.penalty_failures,
    };
    plan.check()
        .map_err(|e| ApiError::bad_request("bad_plan", e))?;
    let release = super::admin::find_release(&state, &request.release).await?;
    // Unknown device names are refused now rather than at the start; a
    // rollout that starts now must reach some device.
    if request.start {
        super::admin::reached(&state, &target).await?;
    } else {
        state.store.devices_for_target(&target).await?;
    }
    let rollout = state
        .store
        .create_rollout(NewRollout {
            release_id: release.id,
            target: target.to_string(),
            plan: plan.clone(),
            created_by: admin.name.clone(),
        })
        .await?;
    if request.start {
        start(&state, &rollout, &admin.name).await?;
    }
    let audit = serde_json::json!({"release": release.id, "target": target.to_string(),
        "plan": plan, "started": request.start});
    Ok((
        StatusCode::CREATED,
        note(rollout.id, audit),
        ApiJson(detail(&state, rollout.id, &AssignmentQuery::default()).await?),
    ))
}

/// Lists rollouts, newest first.
#[utoipa::path(get, path = "/api/v1/rollouts", tag = "rollouts", security(("admin_token" = [])),
    responses((status = 200, body = Vec<Rollout>)))]
pub async fn list_rollouts(
    State(state): State<AppState>,
) -> Result<ApiJson<Vec<Rollout>>, ApiError> {
    Ok(ApiJson(state.store.list_rollouts().await?))
}

/// Shows a rollout: its plan and state, progress per wave, the devices held
/// back, its device set (all, or those the parameters select) and its history.
#[utoipa::path(get, path = "/api/v1/rollouts/{id}", tag = "rollouts", security(("admin_token" = [])),
    params(("id" = i64, Path, description = "rollout id"), AssignmentQuery),
    responses((status = 200, body = RolloutDetail), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn get_rollout(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(query): ApiQuery<AssignmentQuery>,
) -> Result<ApiJson<RolloutDetail>, ApiError> {
    Ok(ApiJson(detail(&state, id, &query).await?))
}

async fn command(
    state: &AppState,
    admin: &Admin,
    id: i64,
    command: Command,
) -> Result<(Extension<AuditNote>, ApiJson<RolloutDetail>), ApiError> {
    let before = state.store.rollout(id).await?;
    if command == Command::Start {
        Command::Start
            .apply(before.state, before.opened, before.waves.len())
            .map_err(|e| ApiError::Conflict(format!("rollout {id} cannot start: {e}")))?;
        start(state, &before, &admin.name).await?;
    } else {
        let now = crate::now_ms();
        let (rollout, unoffered) = state
            .store
            .command_rollout(id, command, &admin.name, now)
            .await?;
        scheduler::follow(state, &rollout, &[], &unoffered).await?;
        if rollout.state == RolloutState::Running {
            scheduler::step(state, id, now).await?;
        }
    }
    let detail = detail(state, id, &AssignmentQuery::default()).await?;
    let audit = serde_json::json!({"from": before.state, "to": detail.rollout.state,
        "wave": detail.rollout.opened});
    Ok((note(id, audit), ApiJson(detail)))
}

macro_rules! command_route {
    ($name:ident, $command:expr, $path:literal, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(post, path = $path, tag = "rollouts", security(("admin_token" = [])),
            params(("id" = i64, Path, description = "rollout id")),
            responses((status = 200, body = RolloutDetail), (status = 404, body = ErrorBody),
                (status = 409, description = "not possible in the rollout's state", body = ErrorBody)))]
        pub async fn $name(
            State(state): State<AppState>,
            Extension(admin): Extension<Admin>,
            ApiPath(id): ApiPath<i64>,
        ) -> Result<(Extension<AuditNote>, ApiJson<RolloutDetail>), ApiError> {
            command(&state, &admin, id, $command).await
        }
    };
}

command_route!(
    start_rollout,
    Command::Start,
    "/api/v1/rollouts/{id}/start",
    "Starts a draft: fixes its device set and opens wave 1."
);
command_route!(
    pause_rollout,
    Command::Pause,
    "/api/v1/rollouts/{id}/pause",
    "Pauses a running rollout: devices not offered the release yet are not; devices updating finish and are counted."
);
command_route!(
    resume_rollout,
    Command::Resume,
    "/api/v1/rollouts/{id}/resume",
    "Resumes a paused rollout, accepting the failures so far: the failure threshold counts only new ones."
);
command_route!(
    advance_rollout,
    Command::Advance,
    "/api/v1/rollouts/{id}/advance",
    "Opens the next wave now, without waiting for the success threshold or the soak."
);
command_route!(
    cancel_rollout,
    Command::Cancel,
    "/api/v1/rollouts/{id}/cancel",
    "Cancels a rollout: devices that have not finished are not offered the release any more."
);
