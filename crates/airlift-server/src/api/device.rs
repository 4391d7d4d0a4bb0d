//! Device API handlers: enrolment, check-in, artifact download, events.
//! Wire types are [`airlift_protocol`]'s; a device sees only its own
//! assignments and only artifacts assigned to it.

use std::sync::Arc;

use airlift_format::manifest::base64_encode;
use airlift_protocol::{
    CheckIn, CheckInAnswer, EVENTS_MAX, EnrollAnswer, EnrollRequest, Event, EventAck, EventBatch,
    EventBatchAck, Update,
};
use axum::body::Body;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use crate::AppState;
use crate::auth::{bearer, hash_token, new_token};
use crate::deploy::{AssignmentState, skip_reason};
use crate::error::{ApiError, ApiJson, ApiPath, ErrorBody};
use crate::identity::Grant;
use crate::longpoll::Waiting;
use crate::metrics::Metrics;
use crate::store::{DeviceStatus, EventOutcome, NewEvent, Offer};
use crate::throttle::{ClientAddr, Credential, Peer};

/// The device a request is authenticated as (its bearer token).
#[derive(Debug, Clone)]
pub struct DeviceAuth {
    /// Device id.
    pub id: i64,
    /// Device name.
    pub name: String,
}

impl FromRequestParts<AppState> for DeviceAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts.headers.get(header::AUTHORIZATION)).ok_or_else(|| {
            ApiError::Unauthorized("missing device token (Authorization: Bearer)".into())
        })?;
        let client = parts.extensions.get::<ClientAddr>().copied();
        state.throttle.check(Credential::DeviceToken, client)?;
        let device = DeviceAuth::from_token(state, token).await;
        if let Err(ApiError::Unauthorized(_)) = &device {
            state.throttle.failed(Credential::DeviceToken, client);
        }
        device
    }
}

impl DeviceAuth {
    /// The device owning a bearer token; a token that no longer works
    /// (revoked, replaced, its device deleted) is refused with its own code.
    pub async fn from_token(state: &AppState, token: &str) -> Result<DeviceAuth, ApiError> {
        let hash = hash_token(token);
        if let Some((id, name)) = state.device_tokens.get(&hash) {
            return Ok(DeviceAuth { id, name });
        }
        let ticket = state.device_tokens.ticket();
        let owner = state
            .store
            .device_by_token(&hash)
            .await?
            .ok_or_else(|| ApiError::Unauthorized("unknown device token".into()))?;
        crate::identity::check_standing(&owner)?;
        let (id, name) = (owner.device_id, owner.name);
        state.device_tokens.put(hash, (id, name.clone()), ticket);
        Ok(DeviceAuth { id, name })
    }
}

/// The name the configured enrolment secret (`enrollment_secret`) goes by
/// in refusals and the audit log.
const CONFIGURED_SECRET: &str = "configuration";

fn secrets_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Enrols a device with a fleet enrolment secret; answers its token once.
/// The device gets the secret's tags; a name outside the secret's pattern,
/// or a tag the secret does not grant, is refused (403 `name_not_granted`,
/// `tag_not_granted`).
#[utoipa::path(post, path = "/api/v1/device/enroll", tag = "device",
    request_body(content = Object, description = "airlift_protocol::EnrollRequest"),
    responses((status = 201, description = "airlift_protocol::EnrollAnswer", body = Object),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn enroll(
    State(state): State<AppState>,
    Peer(client): Peer,
    ApiJson(request): ApiJson<EnrollRequest>,
) -> Result<(StatusCode, ApiJson<EnrollAnswer>), ApiError> {
    state.throttle.check(Credential::EnrollmentSecret, client)?;
    let hash = hash_token(&request.secret);
    let configured = state
        .config
        .enrollment_secret
        .as_ref()
        .map(|s| hash_token(s.expose()))
        .is_some_and(|h| secrets_equal(&h, &hash));
    let requested: Vec<String> = request.tags.iter().map(|t| t.to_string()).collect();
    let stored = if configured {
        None
    } else {
        let secret = state.store.enrollment_secret(&hash).await?.ok_or_else(|| {
            state.throttle.failed(Credential::EnrollmentSecret, client);
            ApiError::Unauthorized("unknown enrolment secret".into())
        })?;
        Some(secret)
    };
    let grant = match &stored {
        Some(secret) => Grant {
            secret: &secret.name,
            tags: &secret.tags,
            name_pattern: secret.name_pattern.as_deref(),
        },
        None => Grant {
            secret: CONFIGURED_SECRET,
            tags: &state.config.enrollment_tags,
            name_pattern: state.config.enrollment_name_pattern.as_deref(),
        },
    };
    super::admin::check_name_and_tags(&request.name, &requested)?;
    let tags = grant.tags_for(&request.name, &requested).inspect_err(|err| {
        tracing::warn!(secret = grant.secret, device = %request.name, %err, "enrolment refused");
    })?;
    let token = new_token("al_dev_").map_err(ApiError::internal)?;
    let hash = hash_token(&token);
    let ticket = state.device_tokens.ticket();
    let device = state
        .store
        .create_device(&request.name, &tags, &hash)
        .await?;
    // Its first check-in then needs no database read to know who it is.
    state
        .device_tokens
        .put(hash, (device.id, device.name.clone()), ticket);
    state
        .store
        .add_audit(
            "enrolment",
            "POST /api/v1/device/enroll",
            &format!("device:{}", device.name),
            &serde_json::json!({"tags": device.tags, "secret": grant.secret}).to_string(),
        )
        .await?;
    let answer = EnrollAnswer {
        name: request.name,
        token: heapless::String::try_from(token.as_str())
            .map_err(|_| ApiError::internal("token too long"))?,
    };
    Ok((StatusCode::CREATED, ApiJson(answer)))
}

fn update_for(offer: &Offer, url: String) -> Result<Update, ApiError> {
    let release = &offer.release;
    let too_long =
        |what: &str| ApiError::internal(format!("{what} does not fit the protocol's bounds"));
    Ok(Update {
        deployment: u64::try_from(offer.deployment_id).map_err(|_| too_long("deployment id"))?,
        manifest: heapless::String::try_from(base64_encode(&release.manifest).as_str())
            .map_err(|_| too_long("manifest"))?,
        url: heapless::String::try_from(url.as_str()).map_err(|_| too_long("url"))?,
        size: u32::try_from(release.size).map_err(|_| too_long("size"))?,
        sha256: heapless::String::try_from(release.sha256.as_str())
            .map_err(|_| too_long("sha256"))?,
        version: heapless::String::try_from(release.version.as_str())
            .map_err(|_| too_long("version"))?,
    })
}

/// The device's open offer, from the cache when it holds one.
pub(crate) async fn open_offer(
    state: &AppState,
    device_id: i64,
) -> Result<Option<Arc<Offer>>, ApiError> {
    if let Some(cached) = state.offers.get(device_id) {
        return Ok(cached);
    }
    let ticket = state.offers.ticket(device_id);
    let offer = state.store.open_offer(device_id).await?.map(Arc::new);
    state.offers.put(device_id, offer.clone(), ticket);
    Ok(offer)
}

/// Records a device event (group-committed with others) and moves its
/// assignment; true when the assignment's state changed.
async fn record_event(state: &AppState, event: NewEvent) -> Result<bool, ApiError> {
    let (device_id, deployment_id) = (event.device_id, event.deployment_id);
    let outcome = state.events.record(event).await?;
    outcome_of(state, device_id, deployment_id, outcome)
}

/// What a recorded event means for the answer and the offer cache.
fn outcome_of(
    state: &AppState,
    device_id: i64,
    deployment_id: Option<i64>,
    outcome: EventOutcome,
) -> Result<bool, ApiError> {
    match outcome {
        EventOutcome::Stored => Ok(false),
        EventOutcome::Changed(to) => {
            moved(state, device_id, deployment_id, to);
            Ok(true)
        }
        EventOutcome::NoAssignment => Err(ApiError::NotFound(format!(
            "deployment {} has no assignment for this device",
            deployment_id.unwrap_or_default()
        ))),
    }
}

/// Keeps the offer cache in step with an assignment that moved.
fn moved(state: &AppState, device_id: i64, deployment_id: Option<i64>, to: &str) {
    match (deployment_id, AssignmentState::parse(to)) {
        (Some(deployment_id), Some(to)) => state.offers.moved(device_id, deployment_id, to),
        _ => state.offers.forget(device_id),
    }
}

/// A device reports its state; the answer says when to poll next and carries
/// the assigned update, if any. A device that can wait (`long_poll_seconds`)
/// and has nothing to take is held until an update is offered to it or the
/// hold ends ([`crate::longpoll`]).
#[utoipa::path(post, path = "/api/v1/device/checkin", tag = "device", security(("device_token" = [])),
    request_body(content = Object, description = "airlift_protocol::CheckIn"),
    responses((status = 200, description = "airlift_protocol::CheckInAnswer", body = Object),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn checkin(
    State(state): State<AppState>,
    device: DeviceAuth,
    ApiJson(report): ApiJson<CheckIn>,
) -> Result<ApiJson<CheckInAnswer>, ApiError> {
    super::validate::check_in(&report)?;
    Metrics::inc(&state.metrics.checkins);
    let status = DeviceStatus {
        last_seen: Some(crate::now_ms()),
        chip_id: Some(i64::from(report.chip_id)),
        project: Some(report.running.project.to_string()),
        version: Some(report.running.version.to_string()),
        sha256: Some(report.running.sha256.to_ascii_lowercase()),
        security_version: Some(i64::from(report.running.security_version)),
        slot: Some(i64::from(report.running.slot)),
        state: Some(report.state.as_str().to_owned()),
        boot_count: Some(i64::from(report.boot_count)),
    };
    // A check-in that may wait takes its place before its offer is read:
    // an offer made in between wakes it.
    let hold = hold_for(&state, &report);
    let waiting = hold.and_then(|_| state.long_polls.wait(device.id));
    let woken = waiting.as_ref().map(Waiting::woken);
    let mut woken = std::pin::pin!(woken);
    if let Some(woken) = woken.as_mut().as_pin_mut() {
        woken.enable();
    }
    let mut update = None;
    let mut reported = false;
    let offer = open_offer(&state, device.id).await?;
    state.statuses.record(device.id, status.clone());
    if let Some(offer) = offer {
        // A final result repeated at check-in counts like the event (lost events are not lost results).
        let result = report.last_result.as_ref().filter(|r| {
            r.kind.is_final() && r.deployment == u64::try_from(offer.deployment_id).ok()
        });
        if let Some(result) = result {
            // Stored like the event it repeats, which keeps the event log
            // complete when the original was lost.
            record_event(
                &state,
                NewEvent {
                    device_id: device.id,
                    deployment_id: Some(offer.deployment_id),
                    kind: result.kind.as_str().to_owned(),
                    reason: result.reason.map(|r| r.as_str().to_owned()),
                    detail: Some(match &result.detail {
                        Some(d) => format!("{d} (reported at check-in)"),
                        None => "reported at check-in".into(),
                    }),
                    age_ms: 0,
                },
            )
            .await?;
            reported = true;
        } else {
            update = offer_update(&state, device.id, &status, &offer).await?;
        }
    }
    let mut poll_seconds = state.config.poll_seconds;
    if let (Some(woken), Some(hold), None, false) =
        (woken.as_mut().as_pin_mut(), hold, &update, reported)
    {
        // The hold was the wait: the device checks in again at once and
        // waits there, unless the server is stopping.
        tokio::select! {
            () = woken => poll_seconds = 0,
            () = tokio::time::sleep(hold) => poll_seconds = 0,
            () = stopping(&state) => {}
        }
        if let Some(offer) = open_offer(&state, device.id).await? {
            update = offer_update(&state, device.id, &status, &offer).await?;
        }
    }
    if update.is_some() {
        Metrics::inc(&state.metrics.offers);
    }
    Ok(ApiJson(CheckInAnswer {
        poll_seconds,
        update,
        device: heapless::String::try_from(device.name.as_str()).ok(),
    }))
}

/// How long a check-in may be held: what the device allows, at most the
/// server's `long_poll_seconds` and its poll interval; `None` for none.
fn hold_for(state: &AppState, report: &CheckIn) -> Option<std::time::Duration> {
    let seconds = report
        .long_poll_seconds?
        .min(state.config.long_poll_seconds)
        .min(state.config.poll_seconds);
    (seconds > 0).then(|| std::time::Duration::from_secs(u64::from(seconds)))
}

/// Completes when the server starts its graceful shutdown, which waits for
/// the answers in flight: a held check-in must not hold it up.
async fn stopping(state: &AppState) {
    let mut watcher = state.changes.watch();
    while !watcher.borrow_and_update().closed {
        if watcher.changed().await.is_err() {
            return;
        }
    }
}

async fn offer_update(
    state: &AppState,
    device_id: i64,
    status: &DeviceStatus,
    offer: &Offer,
) -> Result<Option<Update>, ApiError> {
    let Some(current) = AssignmentState::parse(&offer.state) else {
        return Ok(None);
    };
    if !current.offers_update() {
        return Ok(None);
    }
    let not_started = matches!(current, AssignmentState::Pending | AssignmentState::Offered);
    if let Some(reason) = skip_reason(status, &offer.release).filter(|_| not_started) {
        let skipped = AssignmentState::Skipped;
        transition(
            state,
            device_id,
            offer.deployment_id,
            current,
            skipped,
            Some(reason),
        )
        .await?;
        return Ok(None);
    }
    if current == AssignmentState::Pending {
        let (from, to) = (AssignmentState::Pending, AssignmentState::Offered);
        // Only a device whose assignment really moved is offered the update:
        // a rollout may have taken its room back since the offer was cached.
        if !transition(state, device_id, offer.deployment_id, from, to, None).await? {
            return Ok(None);
        }
    } else if !crate::peers::still_offered(state, device_id, offer).await? {
        return Ok(None);
    }
    let url = crate::artifacts::download_url(state, &offer.release.sha256).await?;
    Ok(Some(update_for(offer, url)?))
}

/// Moves the device's assignment in `deployment_id` from `from` to `to` if
/// it is still in `from` (a compare-and-set, group-committed with the
/// fleet's events), and keeps the offer cache in step. True when it moved.
async fn transition(
    state: &AppState,
    device_id: i64,
    deployment_id: i64,
    from: AssignmentState,
    to: AssignmentState,
    reason: Option<&'static str>,
) -> Result<bool, ApiError> {
    let outcome = state
        .events
        .transition(deployment_id, device_id, from.as_str(), to.as_str(), reason)
        .await?;
    match outcome {
        EventOutcome::Changed(to) => {
            moved(state, device_id, Some(deployment_id), to);
            Ok(true)
        }
        _ => {
            state.offers.forget(device_id);
            Ok(false)
        }
    }
}

/// A device reports progress or the result of an update: one event, or a
/// JSON array of up to 8 in the order they happened (group-committed in
/// one transaction). An event naming a deployment that has no assignment
/// for the device is refused (404); in an array, the events before it are
/// recorded.
#[utoipa::path(post, path = "/api/v1/device/events", tag = "device", security(("device_token" = [])),
    request_body(content = Object, description = "airlift_protocol::Event, or an array of them (airlift_protocol::EventBatch)"),
    responses((status = 200, description = "airlift_protocol::EventAck, or airlift_protocol::EventBatchAck for an array", body = Object),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, description = "the deployment is not this device's", body = ErrorBody)))]
pub async fn post_event(
    State(state): State<AppState>,
    device: DeviceAuth,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Response, ApiError> {
    let bad = |e: serde_json::Error| ApiError::bad_request("bad_json", format!("bad event: {e}"));
    if body.is_array() {
        let events: EventBatch = serde_json::from_value(body).map_err(|e| {
            ApiError::bad_request(
                "bad_json",
                format!("bad event batch (at most {EVENTS_MAX} events): {e}"),
            )
        })?;
        let mut news = Vec::with_capacity(events.len());
        for event in events {
            Metrics::inc(&state.metrics.events);
            news.push(new_event(device.id, event)?);
        }
        let deployments: Vec<Option<i64>> = news.iter().map(|e| e.deployment_id).collect();
        // Queued together: they share one commit and apply in order.
        let outcomes = state.events.record_all(news).await;
        let mut accepted = heapless::Vec::new();
        for (deployment_id, outcome) in deployments.into_iter().zip(outcomes) {
            let changed = outcome_of(&state, device.id, deployment_id, outcome?)?;
            let _ = accepted.push(changed);
        }
        return Ok(ApiJson(EventBatchAck { accepted }).into_response());
    }
    let event: Event = serde_json::from_value(body).map_err(bad)?;
    Metrics::inc(&state.metrics.events);
    let accepted = record_event(&state, new_event(device.id, event)?).await?;
    Ok(ApiJson(EventAck { accepted }).into_response())
}

fn new_event(device_id: i64, event: Event) -> Result<NewEvent, ApiError> {
    super::validate::event(&event)?;
    let deployment_id = match event.deployment {
        Some(id) => {
            Some(i64::try_from(id).map_err(|_| ApiError::NotFound(format!("no deployment {id}")))?)
        }
        None => None,
    };
    Ok(NewEvent {
        device_id,
        deployment_id,
        kind: event.kind.as_str().to_owned(),
        reason: event.reason.map(|r| r.as_str().to_owned()),
        detail: event.detail.map(|d| d.to_string()),
        age_ms: event.age_ms.unwrap_or(0),
    })
}

/// A parsed `Range: bytes=...` header: one range, or none (serve everything).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `start..end` (end exclusive), within the artifact.
    Satisfiable(u64, u64),
    /// The range lies outside the artifact.
    Unsatisfiable,
}

/// Parses a single-range `Range` header against an artifact of `len` bytes.
/// Multiple ranges and malformed headers yield `None`: the whole artifact is sent.
pub fn parse_range(header: &str, len: u64) -> Option<ByteRange> {
    let spec = header.strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let (start, end) = (start.trim(), end.trim());
    let range = if start.is_empty() {
        let suffix: u64 = end.parse().ok()?;
        if suffix == 0 {
            return Some(ByteRange::Unsatisfiable);
        }
        (len.saturating_sub(suffix), len)
    } else {
        let start: u64 = start.parse().ok()?;
        let end = if end.is_empty() {
            len
        } else {
            end.parse::<u64>().ok()?.saturating_add(1).min(len)
        };
        if end < start && !spec.ends_with('-') {
            return None;
        }
        (start, end)
    };
    if range.0 >= len || range.0 >= range.1 {
        return Some(ByteRange::Unsatisfiable);
    }
    Some(ByteRange::Satisfiable(range.0, range.1))
}

/// Downloads an artifact assigned to this device. `ETag` is the quoted
/// SHA-256; `Range` (one range) and `If-Range` let a download resume.
#[utoipa::path(get, path = "/api/v1/device/artifacts/{sha256}", tag = "device", security(("device_token" = [])),
    params(("sha256" = String, Path, description = "SHA-256 of the image, lowercase hex"),
        ("Range" = Option<String>, Header, description = "bytes=START-[END]"),
        ("If-Range" = Option<String>, Header, description = "the ETag the partial download started with")),
    responses((status = 200, description = "the whole image", content_type = "application/octet-stream"),
        (status = 206, description = "the requested range", content_type = "application/octet-stream"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 416, description = "range outside the image")))]
pub async fn download_artifact(
    State(state): State<AppState>,
    device: DeviceAuth,
    ApiPath(sha256): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !download_allowed(&state, device.id, &sha256).await? {
        return Err(ApiError::NotFound(format!(
            "no artifact {sha256} assigned to this device"
        )));
    }
    // An artifact larger than the memory cache is streamed from its file,
    // so no request holds it whole in RAM (HTTP/1.0, HTTPS).
    let source = match state.artifacts.local_file(&sha256) {
        Some((file, size)) if !state.artifacts.fits_cache(size) => Source::File(file, size),
        _ => Source::Bytes(
            state
                .artifacts
                .get(&sha256)
                .await
                .map_err(ApiError::internal)?,
        ),
    };
    Metrics::inc(&state.metrics.downloads);
    ranged_response(&state, &headers, &sha256, source).await
}

/// Where a download's bytes come from.
enum Source {
    Bytes(Bytes),
    File(Arc<std::fs::File>, u64),
}

impl Source {
    fn len(&self) -> u64 {
        match self {
            Source::Bytes(bytes) => bytes.len() as u64,
            Source::File(_, size) => *size,
        }
    }

    /// The body holding bytes `start..end`.
    async fn body(self, start: u64, end: u64) -> Result<Body, ApiError> {
        match self {
            Source::Bytes(bytes) => Ok(Body::from(bytes.slice(start as usize..end as usize))),
            Source::File(file, _) => {
                use tokio::io::{AsyncReadExt, AsyncSeekExt};
                let file = file.try_clone().map_err(ApiError::internal)?;
                let mut file = tokio::fs::File::from_std(file);
                file.seek(std::io::SeekFrom::Start(start))
                    .await
                    .map_err(ApiError::internal)?;
                let stream =
                    tokio_util::io::ReaderStream::with_capacity(file.take(end - start), 64 * 1024);
                Ok(Body::from_stream(stream))
            }
        }
    }
}

/// Whether the device may download the artifact: a well-formed SHA-256 of a
/// release the device is (or was) assigned.
pub(crate) async fn download_allowed(
    state: &AppState,
    device_id: i64,
    sha256: &str,
) -> Result<bool, ApiError> {
    let well_formed =
        airlift_protocol::is_sha256_hex(sha256) && !sha256.bytes().any(|b| b.is_ascii_uppercase());
    if !well_formed {
        return Ok(false);
    }
    let offer = open_offer(state, device_id)
        .await?
        .filter(|offer| offer.release.sha256 == sha256);
    if let Some(offer) = &offer
        && offer.state == AssignmentState::Offered.as_str()
    {
        downloading(state, device_id, offer.deployment_id);
    }
    Ok(offer.is_some() || state.store.artifact_assigned(device_id, sha256).await?)
}

/// Marks an offered assignment `downloading` when the device starts
/// fetching its artifact (the device reports `downloading` itself with the
/// install's result; this shows it while the bytes move). In the
/// background: the download does not wait for the commit.
fn downloading(state: &AppState, device_id: i64, deployment_id: i64) {
    let state = state.clone();
    tokio::spawn(async move {
        let (from, to) = (AssignmentState::Offered, AssignmentState::Downloading);
        if let Err(err) = transition(&state, device_id, deployment_id, from, to, None).await {
            tracing::warn!(error = %err, device_id, "cannot mark the download");
        }
    });
}

/// The range to send: `Range` applies only when `If-Range` is absent or names the current `ETag`.
pub(crate) fn requested_range(
    range: Option<&str>,
    if_range: Option<&str>,
    etag: &str,
    len: u64,
) -> Option<ByteRange> {
    let if_range_ok = if_range.is_none_or(|v| v.trim() == etag);
    range
        .filter(|_| if_range_ok)
        .and_then(|r| parse_range(r, len))
}

async fn ranged_response(
    state: &AppState,
    headers: &HeaderMap,
    sha256: &str,
    source: Source,
) -> Result<Response, ApiError> {
    let etag = format!("\"{sha256}\"");
    let len = source.len();
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let if_range = headers
        .get(header::IF_RANGE)
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    let range = requested_range(text(header::RANGE), if_range, &etag, len);
    let common = [
        (header::ETAG, HeaderValue::from_str(&etag).ok()),
        (
            header::ACCEPT_RANGES,
            Some(HeaderValue::from_static("bytes")),
        ),
        (
            header::CONTENT_TYPE,
            Some(HeaderValue::from_static("application/octet-stream")),
        ),
        (
            header::CACHE_CONTROL,
            Some(HeaderValue::from_static(
                "private, max-age=31536000, immutable",
            )),
        ),
    ];
    let mut response = match range {
        None => {
            state
                .metrics
                .download_bytes
                .fetch_add(len, std::sync::atomic::Ordering::Relaxed);
            (StatusCode::OK, source.body(0, len).await?).into_response()
        }
        Some(ByteRange::Unsatisfiable) => {
            let mut response = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{len}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            response
        }
        Some(ByteRange::Satisfiable(start, end)) => {
            state
                .metrics
                .download_bytes
                .fetch_add(end - start, std::sync::atomic::Ordering::Relaxed);
            let body = source.body(start, end).await?;
            let mut response = (StatusCode::PARTIAL_CONTENT, body).into_response();
            if let Ok(value) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", end - 1)) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            response
        }
    };
    for (name, value) in common {
        if let Some(value) = value {
            response.headers_mut().insert(name, value);
        }
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::ByteRange::*;
    use super::*;

    fn check(header: &str, expected: Option<ByteRange>) {
        assert_eq!(parse_range(header, 1000), expected, "{header}");
    }

    #[test]
    fn range_headers_select_one_byte_range() {
        check("bytes=0-99", Some(Satisfiable(0, 100)));
        check("bytes=500-", Some(Satisfiable(500, 1000)));
        check("bytes=-100", Some(Satisfiable(900, 1000)));
        check("bytes=-5000", Some(Satisfiable(0, 1000)));
        check("bytes=990-5000", Some(Satisfiable(990, 1000)));
        check("bytes=999-999", Some(Satisfiable(999, 1000)));
        check("bytes=1000-", Some(Unsatisfiable));
        check("bytes=-0", Some(Unsatisfiable));
        check("bytes=0-1,5-9", None);
        check("items=0-1", None);
        check("bytes=a-b", None);
        check("bytes=50-10", None);
    }
}
