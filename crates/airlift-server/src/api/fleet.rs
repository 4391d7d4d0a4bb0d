//! The fleet as people look at it (the dashboard): an overview, a paged
//! and filtered device list that stays fast with 10,000 devices, and a
//! stream of change notices so open pages update without reloading.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::admin::{DeploymentSummary, deployment_summaries};
use crate::AppState;
use crate::error::{ApiError, ApiJson, ApiQuery, ErrorBody};
use crate::store::{
    DeviceFilter, DeviceOrder, DevicePage, DeviceSummary, FleetCounts, LastSeen, Problem,
};

/// Most deployments in progress the overview shows.
const IN_PROGRESS_SHOWN: usize = 20;
/// Most unseen devices and problems the overview lists.
const OVERVIEW_ROWS: i64 = 10;
/// Devices a page holds by default, and at most.
const PAGE_DEFAULT: i64 = 50;
const PAGE_MAX: i64 = 500;
/// Least time between two change notices on one stream: a rollout changes
/// something every few milliseconds, a page needs to hear it a few times a
/// second at most.
const NOTICE_INTERVAL: Duration = Duration::from_millis(500);

/// The fleet at a glance.
#[derive(Debug, Serialize, ToSchema)]
pub struct Overview {
    /// Devices in all, never seen, unseen; per version, engine state and tag.
    #[serde(flatten)]
    pub counts: FleetCounts,
    /// A device not seen for this long (three poll intervals) counts as unseen.
    pub unseen_after_ms: i64,
    /// The devices unseen the longest (at most 10).
    pub unseen_devices: Vec<DeviceSummary>,
    /// Deployments some device has not finished, newest first (at most 20).
    pub in_progress: Vec<DeploymentSummary>,
    /// The latest failed and rolled-back updates (at most 10).
    pub problems: Vec<Problem>,
}

/// Shows the fleet at a glance.
#[utoipa::path(get, path = "/api/v1/fleet", tag = "fleet", security(("admin_token" = [])),
    responses((status = 200, body = Overview)))]
pub async fn overview(State(state): State<AppState>) -> Result<ApiJson<Overview>, ApiError> {
    state.flush_statuses().await?;
    let unseen_after_ms = i64::from(state.config.poll_seconds) * 3 * 1000;
    let since = crate::now_ms() - unseen_after_ms;
    let counts = state.store.fleet_counts(since).await?;
    let unseen = DeviceFilter {
        last_seen: Some(LastSeen::Before(since)),
        ..DeviceFilter::default()
    };
    let unseen_devices = state
        .store
        .search_devices(&unseen, DeviceOrder::LastSeen, OVERVIEW_ROWS, 0)
        .await?
        .devices;
    let mut deployments = Vec::new();
    for id in state
        .store
        .deployments_in_progress()
        .await?
        .into_iter()
        .take(IN_PROGRESS_SHOWN)
    {
        deployments.push(state.store.deployment(id).await?);
    }
    let in_progress = deployment_summaries(&state, deployments).await?;
    let problems = state.store.recent_problems(OVERVIEW_ROWS).await?;
    Ok(ApiJson(Overview {
        counts,
        unseen_after_ms,
        unseen_devices,
        in_progress,
        problems,
    }))
}

/// Which devices, in what order, which page.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeviceQuery {
    /// Part of the device name.
    pub q: Option<String>,
    /// Only devices with this tag.
    pub tag: Option<String>,
    /// Only devices running this version.
    pub version: Option<String>,
    /// Only devices whose engine is in this state (`idle`, `downloading`, `installed`, `trial`).
    pub state: Option<String>,
    /// `within:SECONDS` (seen in the last SECONDS), `over:SECONDS` (not
    /// seen for SECONDS, but seen once) or `never`.
    pub last_seen: Option<String>,
    /// `name` (default) or `last_seen` (longest unseen first).
    pub sort: Option<String>,
    /// Devices per page (default 50, at most 500).
    pub limit: Option<i64>,
    /// Devices to skip (default 0).
    pub offset: Option<i64>,
}

fn bad_query(message: String) -> ApiError {
    ApiError::bad_request("bad_query", message)
}

/// Parses `last_seen` against `now` (Unix milliseconds).
pub fn parse_last_seen(text: &str, now: i64) -> Result<LastSeen, ApiError> {
    let seconds = |value: &str| {
        value
            .parse::<i64>()
            .ok()
            .filter(|s| (0..=100 * 365 * 86_400).contains(s))
            .map(|s| now - s * 1000)
    };
    let parsed = match text.split_once(':') {
        Some(("within", s)) => seconds(s).map(LastSeen::Since),
        Some(("over", s)) => seconds(s).map(LastSeen::Before),
        None if text == "never" => Some(LastSeen::Never),
        _ => None,
    };
    parsed.ok_or_else(|| {
        bad_query(format!(
            "last_seen {text:?} is invalid: expected within:SECONDS, over:SECONDS or never"
        ))
    })
}

/// A page of the device list.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceList {
    /// The devices and how many match in all.
    #[serde(flatten)]
    pub page: DevicePage,
    /// The page's first device, counted from 0.
    pub offset: i64,
    /// Devices per page.
    pub limit: i64,
}

/// Lists devices a page at a time, searched and filtered, with each
/// device's unfinished update.
#[utoipa::path(get, path = "/api/v1/fleet/devices", tag = "fleet", security(("admin_token" = [])),
    params(DeviceQuery),
    responses((status = 200, body = DeviceList), (status = 400, body = ErrorBody)))]
pub async fn devices(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<DeviceQuery>,
) -> Result<ApiJson<DeviceList>, ApiError> {
    let given = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let filter = DeviceFilter {
        search: given(&query.q),
        tag: given(&query.tag),
        version: given(&query.version),
        state: given(&query.state),
        last_seen: given(&query.last_seen)
            .map(|text| parse_last_seen(&text, crate::now_ms()))
            .transpose()?,
    };
    let order = match query.sort.as_deref() {
        None | Some("name") => DeviceOrder::Name,
        Some("last_seen") => DeviceOrder::LastSeen,
        Some(other) => {
            return Err(bad_query(format!(
                "sort {other:?} is invalid: expected name or last_seen"
            )));
        }
    };
    let limit = query.limit.unwrap_or(PAGE_DEFAULT).clamp(1, PAGE_MAX);
    let offset = query.offset.unwrap_or(0).max(0);
    state.flush_statuses().await?;
    let page = state
        .store
        .search_devices(&filter, order, limit, offset)
        .await?;
    Ok(ApiJson(DeviceList {
        page,
        offset,
        limit,
    }))
}

/// A stream of change notices (server-sent events): an event `change`
/// whose data is a counter, sent at once and then whenever something a
/// page shows may have changed (at most twice a second). A page reads
/// what it shows again when told; the notice itself carries nothing.
#[utoipa::path(get, path = "/api/v1/fleet/changes", tag = "fleet", security(("admin_token" = [])),
    responses((status = 200, description = "text/event-stream of `change` events", content_type = "text/event-stream")))]
pub async fn changes(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let watcher = state.changes.watch();
    let notices =
        futures_util::stream::unfold((watcher, true), |(mut watcher, first)| async move {
            if !first {
                tokio::time::sleep(NOTICE_INTERVAL).await;
                watcher.changed().await.ok()?;
            }
            let counter = *watcher.borrow_and_update();
            if counter.closed {
                return None;
            }
            let event = Event::default()
                .event("change")
                .data(counter.seq.to_string());
            Some((Ok(event), (watcher, false)))
        });
    Sse::new(notices).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_seen_filters_count_back_from_now() {
        let now = 1_000_000;
        assert_eq!(
            parse_last_seen("within:60", now).unwrap(),
            LastSeen::Since(940_000)
        );
        assert_eq!(
            parse_last_seen("over:3600", now).unwrap(),
            LastSeen::Before(now - 3_600_000)
        );
        assert_eq!(parse_last_seen("never", now).unwrap(), LastSeen::Never);
        for bad in ["within:", "within:-1", "over:soon", "recently", "never:1"] {
            assert!(parse_last_seen(bad, now).is_err(), "{bad}");
        }
    }
}
