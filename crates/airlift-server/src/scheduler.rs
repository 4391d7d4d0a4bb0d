//! The rollout scheduler: steps every running (or paused) rollout through
//! [`crate::rollout::decide`], keeps this instance's offer cache in step
//! with what each step moved, and tells open dashboards (the change
//! notices of [`crate::changes`]) when a step changed anything.
//!
//! Its state is the database's: a step reads the rollout and its devices and
//! writes what it decided in one transaction, so a step is safe to repeat,
//! a killed server loses nothing but the step it was in (rolled back), and
//! two instances stepping the same rollout serialise on the database. So
//! that the fleet's rollouts are stepped by one instance at a time, the
//! background loop ([`run`]) steps only while its instance holds the
//! [`LEASE`] (renewed at every tick, expiring after [`LEASE_TICKS`] ticks);
//! another instance takes it over when it expires. [`tick`] steps at a time
//! it is given, which is how tests make soaks and deadlines pass.

use std::sync::Arc;
use std::time::Duration;

use crate::AppState;
use crate::deploy::AssignmentState;
use crate::rollout::decide;
use crate::store::{Offer, StepOutcome, StoreError};

/// The name of the scheduler's lease.
pub const LEASE: &str = "rollout-scheduler";

/// Ticks a lease outlives its last renewal.
pub const LEASE_TICKS: u32 = 5;

/// Steps every active rollout at `now` (Unix ms); returns what each step did.
pub async fn tick(state: &AppState, now: i64) -> Result<Vec<StepOutcome>, StoreError> {
    let active = state.store.active_rollouts().await?;
    step_each(state, &active, now).await
}

async fn step_each(
    state: &AppState,
    ids: &[i64],
    now: i64,
) -> Result<Vec<StepOutcome>, StoreError> {
    let mut outcomes = Vec::new();
    for &id in ids {
        if let Some(outcome) = step(state, id, now).await? {
            outcomes.push(outcome);
        }
    }
    Ok(outcomes)
}

/// One step of one rollout at `now`; `None` when it is not active.
pub async fn step(state: &AppState, id: i64, now: i64) -> Result<Option<StepOutcome>, StoreError> {
    let Some(outcome) = state.store.step_rollout(id, now, decide).await? else {
        return Ok(None);
    };
    for note in outcome.notes.iter().filter(|n| n.transition) {
        tracing::info!(rollout = id, event = note.kind, detail = %note.detail, "rollout");
    }
    let moved = [&outcome.promoted, &outcome.unoffered, &outcome.failed];
    if !outcome.notes.is_empty() || moved.iter().any(|devices| !devices.is_empty()) {
        // Open dashboards read the rollout again: a wave opened, a pause,
        // devices given the release or taken back.
        state.changes.bump();
    }
    follow(
        state,
        &outcome.rollout,
        &outcome.promoted,
        &outcome.unoffered,
    )
    .await?;
    if let Some(deployment_id) = outcome.rollout.deployment_id {
        for &device in &outcome.failed {
            state
                .offers
                .moved(device, deployment_id, AssignmentState::Failed);
        }
    }
    Ok(Some(outcome))
}

/// Keeps the offer cache in step with devices a rollout moved: `promoted`
/// ones are offered its release now, `unoffered` ones are not any more.
pub async fn follow(
    state: &AppState,
    rollout: &crate::store::Rollout,
    promoted: &[i64],
    unoffered: &[i64],
) -> Result<(), StoreError> {
    let Some(deployment_id) = rollout.deployment_id else {
        return Ok(());
    };
    for &device in unoffered {
        state
            .offers
            .moved(device, deployment_id, AssignmentState::Waiting);
    }
    if promoted.is_empty() {
        return Ok(());
    }
    let offer = Arc::new(Offer {
        deployment_id,
        state: AssignmentState::Pending.as_str().to_owned(),
        release: state.store.release(rollout.release_id).await?,
    });
    for &device in promoted {
        state.offers.set(device, Some(offer.clone()));
        state.long_polls.wake(device);
    }
    Ok(())
}

/// Steps the rollouts every `every` while this instance (`holder`) holds the
/// scheduler's lease. Runs until aborted.
pub async fn run(state: AppState, every: Duration, holder: String) {
    let ttl = i64::try_from((every * LEASE_TICKS).as_millis()).unwrap_or(i64::MAX);
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leading = false;
    loop {
        interval.tick().await;
        let now = crate::now_ms();
        // A fleet without rollouts costs a read per tick, not a write.
        let active = match state.store.active_rollouts().await {
            Ok(active) if active.is_empty() => continue,
            Ok(active) => active,
            Err(err) => {
                tracing::error!(error = %err, "cannot list the active rollouts");
                continue;
            }
        };
        match state.store.try_lease(LEASE, &holder, now, ttl).await {
            Ok(held) => {
                if held != leading {
                    tracing::info!(holder = %holder, held, "rollout scheduler lease");
                    leading = held;
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot take the rollout scheduler's lease");
                leading = false;
            }
        }
        if leading && let Err(err) = step_each(&state, &active, now).await {
            tracing::error!(error = %err, "rollout scheduler step failed");
        }
    }
}
