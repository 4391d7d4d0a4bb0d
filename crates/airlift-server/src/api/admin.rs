//! Admin API handlers: releases, devices, deployments, events, audit, enrolment secrets.

use std::collections::BTreeMap;
use std::sync::Arc;

use airlift_format::image::{ImageInfo, ImageVerifier};
use airlift_format::manifest::{
    Manifest, SignedManifest, base64_decode, base64_encode, key_id, sign,
};
use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AuditNote;
use crate::AppState;
use crate::artifacts::PendingUpload;
use crate::auth::{hash_token, new_token};
use crate::deploy::{AssignmentState, skip_reason};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use crate::metrics::Metrics;
pub use crate::store::OpenAssignment;
use crate::store::{
    Assignment, AssignmentTally, AuditRecord, Deployment, Device, DeviceAssignment,
    EnrollmentSecret, NewAssignment, NewRelease, Offer, Release, StoredEvent, Tally, Target,
};

/// Header carrying an offline-signed manifest (standard base64) with an upload.
pub const MANIFEST_HEADER: &str = "x-airlift-manifest";

fn note(target: impl Into<String>, detail: serde_json::Value) -> Extension<AuditNote> {
    Extension(AuditNote {
        target: target.into(),
        detail,
    })
}

fn invalid_image(message: impl Into<String>) -> ApiError {
    ApiError::Unprocessable {
        code: "invalid_image",
        message: message.into(),
    }
}

/// Streams the body into the verifier and the pending upload at once.
async fn receive(
    state: &AppState,
    body: Body,
    upload: &mut PendingUpload,
) -> Result<ImageInfo, ApiError> {
    let limit = state.config.max_upload_bytes;
    let mut verifier = ImageVerifier::new();
    let mut received: u64 = 0;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::bad_request("body", format!("cannot read the upload: {e}")))?;
        received += chunk.len() as u64;
        if received > limit {
            return Err(ApiError::TooLarge(format!(
                "upload is larger than the limit of {limit} bytes (max_upload_bytes)"
            )));
        }
        verifier
            .update(&chunk)
            .map_err(|e| invalid_image(format!("{e}")))?;
        upload.write(&chunk).await.map_err(ApiError::internal)?;
    }
    if received == 0 {
        return Err(invalid_image(
            "empty upload: expected an ESP-IDF application image (.bin)",
        ));
    }
    let info = verifier
        .finish()
        .map_err(|e| invalid_image(format!("{e}")))?;
    match info.release_problem() {
        Some(problem) => Err(invalid_image(problem.to_string())),
        None => Ok(info),
    }
}

/// An offline-signed manifest must describe exactly the uploaded image.
fn check_offline_manifest(signed: &SignedManifest<'_>, info: &ImageInfo) -> Result<(), ApiError> {
    let m = &signed.manifest;
    let mismatch = |what: &str, manifest: String, image: String| ApiError::Unprocessable {
        code: "manifest_mismatch",
        message: format!("manifest {what} is {manifest} but the image's is {image}"),
    };
    if m.image_sha256 != info.file_sha256 {
        return Err(mismatch(
            "SHA-256",
            hex::encode(m.image_sha256),
            hex::encode(info.file_sha256),
        ));
    }
    if u64::from(m.image_size) != info.total_len {
        return Err(mismatch(
            "size",
            m.image_size.to_string(),
            info.total_len.to_string(),
        ));
    }
    if m.chip_id != info.header.chip_id {
        return Err(mismatch(
            "chip id",
            m.chip_id.to_string(),
            info.header.chip_id.to_string(),
        ));
    }
    if m.delta_base_sha256.is_some() {
        return Err(ApiError::Unprocessable {
            code: "manifest_mismatch",
            message: "manifest is for a delta update but the upload is a full image".into(),
        });
    }
    Ok(())
}

fn decode_manifest_header(headers: &HeaderMap) -> Result<Option<Vec<u8>>, ApiError> {
    let Some(value) = headers.get(MANIFEST_HEADER) else {
        return Ok(None);
    };
    let bad = |message: String| ApiError::bad_request("bad_manifest", message);
    let text = value
        .to_str()
        .map_err(|_| bad("X-Airlift-Manifest is not ASCII base64".into()))?;
    let mut blob = vec![0u8; text.len()];
    let len = base64_decode(text.trim().as_bytes(), &mut blob)
        .map_err(|e| bad(format!("X-Airlift-Manifest is not standard base64: {e}")))?;
    blob.truncate(len);
    SignedManifest::parse(&blob).map_err(|e| bad(format!("X-Airlift-Manifest: {e}")))?;
    Ok(Some(blob))
}

/// Uploads a firmware image (`.bin`, raw body). The server verifies it,
/// stores it by SHA-256 and signs its manifest, unless `X-Airlift-Manifest`
/// carries one signed offline (`airlift release sign`). Uploading the same
/// bytes again returns the existing release with 200.
#[utoipa::path(post, path = "/api/v1/releases", tag = "releases",
    security(("admin_token" = [])),
    params(("X-Airlift-Manifest" = Option<String>, Header, description = "offline-signed manifest blob, standard base64")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 201, description = "stored", body = Release),
        (status = 200, description = "the same image was uploaded before", body = Release),
        (status = 400, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, description = "not a valid image, or the manifest does not match it", body = ErrorBody)))]
pub async fn upload_release(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Extension<AuditNote>, ApiJson<Release>), ApiError> {
    let result = store_release(&state, headers, body).await;
    match &result {
        Ok((StatusCode::CREATED, ..)) => Metrics::inc(&state.metrics.uploads_accepted),
        Ok(_) => {}
        Err(_) => Metrics::inc(&state.metrics.uploads_rejected),
    }
    result
}

async fn store_release(
    state: &AppState,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Extension<AuditNote>, ApiJson<Release>), ApiError> {
    let offline = decode_manifest_header(&headers)?;
    let limit = state.config.max_upload_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::TooLarge(format!(
            "upload is larger than the limit of {limit} bytes (max_upload_bytes)"
        )));
    }
    let mut upload = state.artifacts.begin().await.map_err(ApiError::internal)?;
    let info = match receive(state, body, &mut upload).await {
        Ok(info) => info,
        Err(err) => {
            upload.abort().await;
            return Err(err);
        }
    };
    let sha256 = hex::encode(info.file_sha256);
    if let Some(existing) = state.store.release_by_sha256(&sha256).await? {
        upload.abort().await;
        if offline
            .as_ref()
            .is_some_and(|blob| *blob != existing.manifest)
        {
            return Err(ApiError::Conflict(format!(
                "release {} has these bytes already, with another manifest",
                existing.id
            )));
        }
        let target = format!("release:{}", existing.id);
        return Ok((
            StatusCode::OK,
            note(target, serde_json::json!({"existing": true})),
            ApiJson(existing),
        ));
    }
    let Some(app) = info.app_desc else {
        upload.abort().await;
        return Err(invalid_image("image has no application descriptor"));
    };
    let new = match &offline {
        Some(blob) => {
            let signed = SignedManifest::parse(blob)
                .map_err(|e| ApiError::bad_request("bad_manifest", e.to_string()))?;
            if let Err(err) = check_offline_manifest(&signed, &info) {
                upload.abort().await;
                return Err(err);
            }
            NewRelease {
                sha256: sha256.clone(),
                size: info.total_len as i64,
                chip_id: i64::from(info.header.chip_id),
                project: signed.manifest.product.to_owned(),
                version: signed.manifest.version.to_owned(),
                security_version: i64::from(signed.manifest.security_version),
                key_id: hex::encode(signed.manifest.key_id),
                signed_by_server: false,
                manifest: blob.clone(),
            }
        }
        None => {
            let size = u32::try_from(info.total_len)
                .map_err(|_| invalid_image("image is larger than 4 GiB"))?;
            let public = state.signing_key.verifying_key().to_bytes();
            let manifest = Manifest {
                chip_id: info.header.chip_id,
                security_version: app.secure_version(),
                image_size: size,
                image_sha256: info.file_sha256,
                delta_base_sha256: None,
                key_id: key_id(&public),
                product: app.project_name(),
                version: app.version(),
            };
            let blob = sign(&manifest, &state.signing_key).map_err(|e| {
                invalid_image(format!("cannot sign a manifest for this image: {e}"))
            })?;
            NewRelease {
                sha256: sha256.clone(),
                size: info.total_len as i64,
                chip_id: i64::from(info.header.chip_id),
                project: app.project_name().to_owned(),
                version: app.version().to_owned(),
                security_version: i64::from(app.secure_version()),
                key_id: hex::encode(key_id(&public)),
                signed_by_server: true,
                manifest: blob,
            }
        }
    };
    state
        .artifacts
        .commit(upload, &sha256)
        .await
        .map_err(ApiError::internal)?;
    let (release, created) = state.store.insert_release(new).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let detail = serde_json::json!({"sha256": sha256, "version": release.version,
        "signed_by_server": release.signed_by_server});
    Ok((
        status,
        note(format!("release:{}", release.id), detail),
        ApiJson(release),
    ))
}

/// Lists releases, newest first.
#[utoipa::path(get, path = "/api/v1/releases", tag = "releases", security(("admin_token" = [])),
    responses((status = 200, body = Vec<Release>)))]
pub async fn list_releases(
    State(state): State<AppState>,
) -> Result<ApiJson<Vec<Release>>, ApiError> {
    Ok(ApiJson(state.store.list_releases().await?))
}

/// A release with its signed manifest.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReleaseDetail {
    /// The release.
    #[serde(flatten)]
    pub release: Release,
    /// The signed manifest blob, standard base64.
    pub manifest: String,
}

/// Shows one release.
#[utoipa::path(get, path = "/api/v1/releases/{id}", tag = "releases", security(("admin_token" = [])),
    params(("id" = i64, Path, description = "release id")),
    responses((status = 200, body = ReleaseDetail), (status = 404, body = ErrorBody)))]
pub async fn get_release(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<ApiJson<ReleaseDetail>, ApiError> {
    let release = state.store.release(id).await?;
    let manifest = base64_encode(&release.manifest);
    Ok(ApiJson(ReleaseDetail { release, manifest }))
}

/// Deletes a release and its artifact; refused (409) while a deployment uses it.
#[utoipa::path(delete, path = "/api/v1/releases/{id}", tag = "releases", security(("admin_token" = [])),
    params(("id" = i64, Path, description = "release id")),
    responses((status = 200, body = Release), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_release(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<(Extension<AuditNote>, ApiJson<Release>), ApiError> {
    let release = state.store.delete_release(id).await?;
    state
        .artifacts
        .delete(&release.sha256)
        .await
        .map_err(ApiError::internal)?;
    let detail = serde_json::json!({"sha256": release.sha256});
    Ok((note(format!("release:{id}"), detail), ApiJson(release)))
}

/// A device to add.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewDevice {
    /// Unique name: letters, digits, `.`, `_`, `-`, `:`; at most 64 bytes.
    pub name: String,
    /// Tags (same characters, at most 32 bytes each, at most 8).
    #[serde(default)]
    pub tags: Vec<String>,
}

/// A new device and its token (shown only this once).
#[derive(Debug, Serialize, ToSchema)]
pub struct NewDeviceAnswer {
    /// The device.
    pub device: Device,
    /// The device's bearer token.
    pub token: String,
}

fn valid_label(text: &str, max: usize) -> bool {
    !text.is_empty()
        && text.len() <= max
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b))
}

/// Checks a device name and tags against the protocol's limits.
pub fn check_name_and_tags(name: &str, tags: &[String]) -> Result<(), ApiError> {
    if !valid_label(name, airlift_protocol::NAME_MAX) {
        return Err(ApiError::bad_request(
            "bad_name",
            format!(
                "device name {name:?} is invalid: expected 1 to {} letters, digits, '.', '_', '-' or ':'",
                airlift_protocol::NAME_MAX
            ),
        ));
    }
    if tags.len() > airlift_protocol::TAGS_MAX {
        return Err(ApiError::bad_request(
            "bad_tag",
            format!(
                "{} tags given, at most {} allowed",
                tags.len(),
                airlift_protocol::TAGS_MAX
            ),
        ));
    }
    if let Some(tag) = tags
        .iter()
        .find(|t| !valid_label(t, airlift_protocol::TAG_MAX))
    {
        return Err(ApiError::bad_request(
            "bad_tag",
            format!(
                "tag {tag:?} is invalid: expected 1 to {} letters, digits, '.', '_', '-' or ':'",
                airlift_protocol::TAG_MAX
            ),
        ));
    }
    Ok(())
}

/// Adds a device; the answer carries its token, which is never shown again.
#[utoipa::path(post, path = "/api/v1/devices", tag = "devices", security(("admin_token" = [])),
    request_body = NewDevice,
    responses((status = 201, body = NewDeviceAnswer), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_device(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<NewDevice>,
) -> Result<(StatusCode, Extension<AuditNote>, ApiJson<NewDeviceAnswer>), ApiError> {
    check_name_and_tags(&request.name, &request.tags)?;
    let token = new_token("al_dev_").map_err(ApiError::internal)?;
    let hash = hash_token(&token);
    let ticket = state.device_tokens.ticket();
    let device = state
        .store
        .create_device(&request.name, &request.tags, &hash)
        .await?;
    // Its first check-in then needs no database read to know who it is.
    state
        .device_tokens
        .put(hash, (device.id, device.name.clone()), ticket);
    let detail = serde_json::json!({"name": device.name, "tags": device.tags});
    Ok((
        StatusCode::CREATED,
        note(format!("device:{}", device.name), detail),
        ApiJson(NewDeviceAnswer { device, token }),
    ))
}

/// Lists devices by name.
#[utoipa::path(get, path = "/api/v1/devices", tag = "devices", security(("admin_token" = [])),
    responses((status = 200, body = Vec<Device>)))]
pub async fn list_devices(State(state): State<AppState>) -> Result<ApiJson<Vec<Device>>, ApiError> {
    state.flush_statuses().await?;
    Ok(ApiJson(state.store.list_devices().await?))
}

/// A device with its current assignment and its update history.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceDetail {
    /// The device.
    #[serde(flatten)]
    pub device: Device,
    /// Its unfinished assignment, if any: deployment id and state.
    pub assignment: Option<OpenAssignment>,
    /// Its latest assignments (at most 50), newest first, each with its
    /// release and how it ended.
    pub history: Vec<DeviceAssignment>,
    /// When the server expects to hear from it next.
    pub check_in: NextCheckIn,
}

/// When the server expects a device's next check-in.
#[derive(Debug, Serialize, ToSchema)]
pub struct NextCheckIn {
    /// A check-in of the device waits on this server instance now (a long
    /// poll): an update offered to it goes out at once.
    pub waiting: bool,
    /// When its next check-in is due if it polls as the server tells it:
    /// its last check-in plus the poll interval (none before the first).
    pub due_at: Option<i64>,
}

/// Most assignments a device's history shows.
const HISTORY_SHOWN: i64 = 50;

/// Shows one device.
#[utoipa::path(get, path = "/api/v1/devices/{name}", tag = "devices", security(("admin_token" = [])),
    params(("name" = String, Path, description = "device name")),
    responses((status = 200, body = DeviceDetail), (status = 404, body = ErrorBody)))]
pub async fn get_device(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<ApiJson<DeviceDetail>, ApiError> {
    state.flush_statuses().await?;
    let device = state.store.device_by_name(&name).await?;
    let assignment = state
        .store
        .open_offer(device.id)
        .await?
        .map(|offer| OpenAssignment {
            deployment_id: offer.deployment_id,
            state: offer.state,
            version: offer.release.version,
        });
    let history = state
        .store
        .device_assignments(device.id, HISTORY_SHOWN)
        .await?;
    let check_in = NextCheckIn {
        waiting: state.long_polls.is_waiting(device.id),
        due_at: device
            .status
            .last_seen
            .map(|seen| seen + i64::from(state.config.poll_seconds) * 1000),
    };
    Ok(ApiJson(DeviceDetail {
        device,
        assignment,
        history,
        check_in,
    }))
}

/// A device whose identity was taken back, and what that ended.
#[derive(Debug, Serialize, ToSchema)]
pub struct TakenBack {
    /// The device as stored now (a deleted one under the name its history
    /// keeps, `NAME~deleted-ID`).
    pub device: Device,
    /// The deployments whose unfinished assignment of the device was cancelled.
    pub cancelled: Vec<i64>,
}

fn taken_back(
    state: &AppState,
    name: &str,
    device: Device,
    cancelled: Vec<i64>,
    tags: Vec<String>,
) -> (Extension<AuditNote>, ApiJson<TakenBack>) {
    crate::identity::forget(state, &[device.id]);
    let mut detail = serde_json::json!({"id": device.id, "tags": tags, "cancelled": cancelled});
    if device.deleted_at.is_some() {
        detail["history_as"] = device.name.clone().into();
    }
    (
        note(format!("device:{name}"), detail),
        ApiJson(TakenBack { device, cancelled }),
    )
}

/// Revokes a device: its token is refused from now on (401 `token_revoked`)
/// by every server instance, its unfinished assignments are cancelled, and
/// no new deployment includes it. It stays listed with its history; a new
/// token (`rotate-token`) takes it back.
#[utoipa::path(post, path = "/api/v1/devices/{name}/revoke", tag = "devices", security(("admin_token" = [])),
    params(("name" = String, Path, description = "device name")),
    responses((status = 200, body = TakenBack), (status = 404, body = ErrorBody),
        (status = 409, description = "revoked or deleted already", body = ErrorBody)))]
pub async fn revoke_device(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<(Extension<AuditNote>, ApiJson<TakenBack>), ApiError> {
    let (device, cancelled) = state.store.revoke_device(&name, crate::now_ms()).await?;
    let tags = device.tags.clone();
    Ok(taken_back(&state, &name, device, cancelled, tags))
}

/// Deletes a device: its token is refused from now on by every server
/// instance, its unfinished assignments are cancelled and its name is free
/// for a new device. Its events and assignments stay readable under the
/// name in the answer (`NAME~deleted-ID`).
#[utoipa::path(delete, path = "/api/v1/devices/{name}", tag = "devices", security(("admin_token" = [])),
    params(("name" = String, Path, description = "device name")),
    responses((status = 200, body = TakenBack), (status = 404, body = ErrorBody),
        (status = 409, description = "deleted already", body = ErrorBody)))]
pub async fn delete_device(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<(Extension<AuditNote>, ApiJson<TakenBack>), ApiError> {
    let tags = state.store.device_by_name(&name).await?.tags;
    let (device, cancelled) = state.store.delete_device(&name, crate::now_ms()).await?;
    Ok(taken_back(&state, &name, device, cancelled, tags))
}

/// Gives a device a new token (answered once): the old one is refused
/// from now on by every server instance (401 `token_revoked`). A revoked
/// device is taken back.
#[utoipa::path(post, path = "/api/v1/devices/{name}/rotate-token", tag = "devices", security(("admin_token" = [])),
    params(("name" = String, Path, description = "device name")),
    responses((status = 200, body = NewDeviceAnswer), (status = 404, body = ErrorBody),
        (status = 409, description = "the device was deleted", body = ErrorBody)))]
pub async fn rotate_device_token(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<(Extension<AuditNote>, ApiJson<NewDeviceAnswer>), ApiError> {
    let token = new_token("al_dev_").map_err(ApiError::internal)?;
    let device = state
        .store
        .rotate_device_token(&name, &hash_token(&token), crate::now_ms())
        .await?;
    crate::identity::forget(&state, &[device.id]);
    let detail = serde_json::json!({"id": device.id});
    Ok((
        note(format!("device:{name}"), detail),
        ApiJson(NewDeviceAnswer { device, token }),
    ))
}

/// Paging of lists.
#[derive(Debug, Deserialize, IntoParams)]
pub struct ListQuery {
    /// At most this many records (default 100, at most 1000).
    pub limit: Option<i64>,
    /// Only this device's events.
    pub device: Option<String>,
    /// Only records older than this id (the next page; audit log and deployments).
    pub before: Option<i64>,
}

impl ListQuery {
    fn limit(&self) -> i64 {
        self.limit.unwrap_or(100).clamp(1, 1000)
    }
}

/// A device's events, newest first.
#[utoipa::path(get, path = "/api/v1/devices/{name}/events", tag = "devices", security(("admin_token" = [])),
    params(("name" = String, Path, description = "device name"), ListQuery),
    responses((status = 200, body = Vec<StoredEvent>), (status = 404, body = ErrorBody)))]
pub async fn device_events(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<ApiJson<Vec<StoredEvent>>, ApiError> {
    let device = state.store.device_by_name(&name).await?;
    Ok(ApiJson(
        state.store.events(Some(device.id), query.limit()).await?,
    ))
}

/// A deployment to create.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewDeployment {
    /// The release: its id (a JSON number or string) or its SHA-256.
    #[serde(deserialize_with = "id_or_text")]
    pub release: String,
    /// `device:NAME`, `devices:A,B,...`, `tag:T` or `all`.
    pub target: String,
}

/// A release reference given as a number (`1`) or as text (`"1"`, a SHA-256).
pub(crate) fn id_or_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum IdOrText {
        Id(i64),
        Text(String),
    }
    match IdOrText::deserialize(d)
        .map_err(|_| serde::de::Error::custom("expected a release id or a SHA-256"))?
    {
        IdOrText::Id(id) => Ok(id.to_string()),
        IdOrText::Text(text) => Ok(text),
    }
}

/// How far a deployment got, from its devices' assignment states.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Progress {
    /// Number of devices per assignment state (every state present).
    pub counts: BTreeMap<String, i64>,
    /// Devices in the deployment.
    pub devices: i64,
    /// Devices that can take the update: all but the skipped ones (already
    /// running it, another chip, a higher security version). Progress is
    /// counted against these; skipped devices are never "waiting".
    pub eligible: i64,
    /// Why devices were skipped, failed, rolled back or cancelled: state ->
    /// reason -> devices.
    pub reasons: BTreeMap<String, BTreeMap<String, i64>>,
}

impl Progress {
    /// The deployment's progress; also sets its `state` to the one people
    /// see (there is no other): `active` while some device has not
    /// finished (a rollout's devices waiting for their wave have not),
    /// `finished` when all have, or `cancelled`.
    fn of(deployment: &mut Deployment, tallies: &[AssignmentTally]) -> Progress {
        let mut progress = Progress {
            counts: AssignmentState::ALL
                .iter()
                .map(|s| (s.as_str().to_owned(), 0))
                .collect(),
            ..Progress::default()
        };
        let mut unfinished = false;
        for t in tallies.iter().filter(|t| t.deployment_id == deployment.id) {
            *progress.counts.entry(t.state.clone()).or_default() += t.devices;
            progress.devices += t.devices;
            let state = AssignmentState::parse(&t.state);
            if state != Some(AssignmentState::Skipped) {
                progress.eligible += t.devices;
            }
            unfinished |= state.is_some_and(|s| !s.is_final());
            if let Some(reason) = &t.reason {
                *progress
                    .reasons
                    .entry(t.state.clone())
                    .or_default()
                    .entry(reason.clone())
                    .or_default() += t.devices;
            }
        }
        if deployment.state == "active" && !unfinished {
            "finished".clone_into(&mut deployment.state);
        }
        progress
    }
}

/// A deployment with its progress.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeploymentDetail {
    /// The deployment.
    #[serde(flatten)]
    pub deployment: Deployment,
    /// Counts per assignment state, devices that can take it, reasons.
    #[serde(flatten)]
    pub progress: Progress,
    /// The release.
    pub release: Release,
    /// How many of its devices run each version now.
    pub versions: Vec<Tally>,
    /// Each device's assignment (those asked for: see the `state`, `limit`
    /// and `offset` parameters), by device name.
    pub assignments: Vec<Assignment>,
    /// Assignments in the states asked for, on every page.
    pub assignments_total: i64,
}

/// Which of a deployment's assignments to list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AssignmentQuery {
    /// Only these states, comma-separated (e.g. `failed,rolled_back`).
    pub state: Option<String>,
    /// At most this many (default: all).
    pub limit: Option<i64>,
    /// Skip this many (default 0).
    pub offset: Option<i64>,
}

impl AssignmentQuery {
    /// The states asked for (all when none), or the 400 naming the valid ones.
    fn states(&self) -> Result<Vec<String>, ApiError> {
        let mut states = Vec::new();
        for name in self.state.iter().flat_map(|s| s.split(',')) {
            let name = name.trim();
            if name.is_empty() {
                continue;
            }
            let parsed = AssignmentState::parse(name).ok_or_else(|| {
                ApiError::bad_request(
                    "bad_query",
                    format!(
                        "state {name:?} is invalid: expected one of {}",
                        AssignmentState::ALL.map(AssignmentState::as_str).join(", ")
                    ),
                )
            })?;
            states.push(parsed.as_str().to_owned());
        }
        Ok(states)
    }

    /// How many of the deployment's assignments are in the states asked
    /// for, and the page of them asked for.
    pub(crate) async fn page(
        &self,
        state: &AppState,
        deployment_id: i64,
    ) -> Result<(i64, Vec<Assignment>), ApiError> {
        let states = self.states()?;
        let limit = self.limit.unwrap_or(i64::MAX).max(0);
        let offset = self.offset.unwrap_or(0).max(0);
        Ok(state
            .store
            .assignments_page(deployment_id, &states, limit, offset)
            .await?)
    }
}

async fn deployment_detail(
    state: &AppState,
    id: i64,
    query: &AssignmentQuery,
) -> Result<DeploymentDetail, ApiError> {
    let mut deployment = state.store.deployment(id).await?;
    let release = state.store.release(deployment.release_id).await?;
    let tallies = state.store.assignment_tallies(&[id]).await?;
    let progress = Progress::of(&mut deployment, &tallies);
    let (assignments_total, assignments) = query.page(state, id).await?;
    state.flush_statuses().await?;
    let versions = state.store.running_versions(id).await?;
    Ok(DeploymentDetail {
        deployment,
        progress,
        release,
        versions,
        assignments,
        assignments_total,
    })
}

/// A deployment in a list: its release's version and its progress.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeploymentSummary {
    /// The deployment.
    #[serde(flatten)]
    pub deployment: Deployment,
    /// The release's version.
    pub version: String,
    /// Counts per assignment state, devices that can take it, reasons.
    #[serde(flatten)]
    pub progress: Progress,
}

/// Each deployment with its release's version and progress (one query for all).
pub(crate) async fn deployment_summaries(
    state: &AppState,
    deployments: Vec<Deployment>,
) -> Result<Vec<DeploymentSummary>, ApiError> {
    let ids: Vec<i64> = deployments.iter().map(|d| d.id).collect();
    let tallies = state.store.assignment_tallies(&ids).await?;
    let mut versions = std::collections::HashMap::new();
    let mut summaries = Vec::with_capacity(deployments.len());
    for mut deployment in deployments {
        let version = match versions.get(&deployment.release_id) {
            Some(version) => String::clone(version),
            None => {
                let version = state.store.release(deployment.release_id).await?.version;
                versions.insert(deployment.release_id, version.clone());
                version
            }
        };
        let progress = Progress::of(&mut deployment, &tallies);
        summaries.push(DeploymentSummary {
            deployment,
            version,
            progress,
        });
    }
    Ok(summaries)
}

/// A deployment's or rollout's target, or the 400 that explains the syntax.
pub(crate) fn parse_target(text: &str) -> Result<Target, ApiError> {
    Target::parse(text).ok_or_else(|| {
        ApiError::bad_request(
            "bad_target",
            format!(
                "target {text:?} is invalid: expected device:NAME, devices:A,B,..., tag:T or all"
            ),
        )
    })
}

/// The devices `target` reaches now, or the refusal that says the target
/// reaches none (a typo in a tag would otherwise make a deployment that
/// finishes at once, having done nothing) and which tags devices carry.
pub(crate) async fn reached(state: &AppState, target: &Target) -> Result<Vec<Device>, ApiError> {
    let devices = state.store.devices_for_target(target).await?;
    if !devices.is_empty() {
        return Ok(devices);
    }
    let message = match target {
        Target::Tag(tag) => {
            let tags: Vec<String> = state
                .store
                .fleet_counts(0)
                .await?
                .by_tag
                .into_iter()
                .filter_map(|t| Some(format!("{} ({})", t.value?, t.devices)))
                .collect();
            let known = if tags.is_empty() {
                "no device has a tag yet".to_owned()
            } else {
                format!("tags in use: {}", tags.join(", "))
            };
            format!(
                "no device has the tag {tag:?} ({known}); tag devices when adding them (--tag) or pick another target"
            )
        }
        _ => format!(
            "{target} reaches no device: add devices first (POST /api/v1/devices, airlift device add)"
        ),
    };
    Err(ApiError::Unprocessable {
        code: "no_devices",
        message,
    })
}

pub(crate) async fn find_release(state: &AppState, reference: &str) -> Result<Release, ApiError> {
    if let Ok(id) = reference.parse::<i64>() {
        return Ok(state.store.release(id).await?);
    }
    state
        .store
        .release_by_sha256(&reference.to_ascii_lowercase())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no release with id or SHA-256 {reference:?}")))
}

/// Deploys a release to one device, a tag or all devices. Devices already
/// running it, with another chip, or whose security version is above the
/// release's are skipped; a target that reaches no device is refused. An unfinished assignment of an earlier deployment
/// is superseded (cancelled).
#[utoipa::path(post, path = "/api/v1/deployments", tag = "deployments", security(("admin_token" = [])),
    request_body = NewDeployment,
    responses((status = 201, body = DeploymentDetail), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, description = "the target reaches no device", body = ErrorBody)))]
pub async fn create_deployment(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<NewDeployment>,
) -> Result<(StatusCode, Extension<AuditNote>, ApiJson<DeploymentDetail>), ApiError> {
    let target = parse_target(&request.target)?;
    let release = find_release(&state, &request.release).await?;
    state.flush_statuses().await?;
    let devices = reached(&state, &target).await?;
    let assignments: Vec<NewAssignment> = devices
        .iter()
        .map(|device| match skip_reason(&device.status, &release) {
            Some(reason) => NewAssignment {
                device_id: device.id,
                state: AssignmentState::Skipped.as_str().to_owned(),
                reason: Some(reason.to_owned()),
            },
            None => NewAssignment {
                device_id: device.id,
                state: AssignmentState::Pending.as_str().to_owned(),
                reason: None,
            },
        })
        .collect();
    let deployment = state
        .store
        .create_deployment(release.id, &target.to_string(), &assignments)
        .await?;
    // The new deployment is each pending device's open offer now (the
    // newest; older unfinished ones were superseded); skipped devices keep
    // theirs. Setting them here spares a rollout's first check-ins a read.
    for a in assignments
        .iter()
        .filter(|a| a.state == AssignmentState::Pending.as_str())
    {
        let offer = Offer {
            deployment_id: deployment.id,
            state: a.state.clone(),
            release: release.clone(),
        };
        state.offers.set(a.device_id, Some(Arc::new(offer)));
        state.long_polls.wake(a.device_id);
    }
    let detail = deployment_detail(&state, deployment.id, &AssignmentQuery::default()).await?;
    let audit = serde_json::json!({"release": release.id, "target": target.to_string(),
        "devices": assignments.len()});
    Ok((
        StatusCode::CREATED,
        note(format!("deployment:{}", deployment.id), audit),
        ApiJson(detail),
    ))
}

/// Lists deployments, newest first, each with its release's version and
/// progress (`limit`, default 100; `before` an id for the next page).
#[utoipa::path(get, path = "/api/v1/deployments", tag = "deployments", security(("admin_token" = [])),
    params(ListQuery), responses((status = 200, body = Vec<DeploymentSummary>)))]
pub async fn list_deployments(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<ApiJson<Vec<DeploymentSummary>>, ApiError> {
    let limit = usize::try_from(query.limit()).unwrap_or(usize::MAX);
    let deployments: Vec<Deployment> = state
        .store
        .list_deployments()
        .await?
        .into_iter()
        .filter(|d| query.before.is_none_or(|before| d.id < before))
        .take(limit)
        .collect();
    Ok(ApiJson(deployment_summaries(&state, deployments).await?))
}

/// Shows a deployment with its progress counts per state and its devices'
/// assignments (all, or those the parameters select).
#[utoipa::path(get, path = "/api/v1/deployments/{id}", tag = "deployments", security(("admin_token" = [])),
    params(("id" = i64, Path, description = "deployment id"), AssignmentQuery),
    responses((status = 200, body = DeploymentDetail), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_deployment(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(query): ApiQuery<AssignmentQuery>,
) -> Result<ApiJson<DeploymentDetail>, ApiError> {
    Ok(ApiJson(deployment_detail(&state, id, &query).await?))
}

/// Cancels a deployment: devices that have not finished are not offered it any more.
#[utoipa::path(post, path = "/api/v1/deployments/{id}/cancel", tag = "deployments", security(("admin_token" = [])),
    params(("id" = i64, Path, description = "deployment id")),
    responses((status = 200, body = DeploymentDetail), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn cancel_deployment(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<(Extension<AuditNote>, ApiJson<DeploymentDetail>), ApiError> {
    state.store.cancel_deployment(id).await?;
    state.offers.clear();
    let detail = deployment_detail(&state, id, &AssignmentQuery::default()).await?;
    Ok((
        note(format!("deployment:{id}"), serde_json::json!({})),
        ApiJson(detail),
    ))
}

/// Device events of the whole fleet (or of `device`), newest first.
#[utoipa::path(get, path = "/api/v1/events", tag = "events", security(("admin_token" = [])),
    params(ListQuery), responses((status = 200, body = Vec<StoredEvent>)))]
pub async fn list_events(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<ApiJson<Vec<StoredEvent>>, ApiError> {
    let device = match &query.device {
        Some(name) => Some(state.store.device_by_name(name).await?.id),
        None => None,
    };
    Ok(ApiJson(state.store.events(device, query.limit()).await?))
}

/// The audit log, newest first (`before` an id for the next page).
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", security(("admin_token" = [])),
    params(ListQuery), responses((status = 200, body = Vec<AuditRecord>)))]
pub async fn list_audit(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<ApiJson<Vec<AuditRecord>>, ApiError> {
    Ok(ApiJson(
        state
            .store
            .audit_before(query.before, query.limit())
            .await?,
    ))
}

/// An enrolment secret to create.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewEnrollmentSecret {
    /// Name of the secret (e.g. the production batch).
    pub name: String,
    /// Tags given to every device enrolling with it (the only ones a
    /// device may ask for).
    #[serde(default)]
    pub tags: Vec<String>,
    /// The names devices may enrol with, `*` matching any run of name
    /// characters (`roof-*`); absent: any name.
    #[serde(default)]
    pub name_pattern: Option<String>,
}

/// A new enrolment secret and its value (shown only this once).
#[derive(Debug, Serialize, ToSchema)]
pub struct NewEnrollmentSecretAnswer {
    /// The secret.
    #[serde(flatten)]
    pub secret: EnrollmentSecret,
    /// The value devices send to `POST /api/v1/device/enroll`.
    pub value: String,
}

/// Creates a fleet enrolment secret: devices enrolling with it get its
/// tags, and only names its pattern allows.
#[utoipa::path(post, path = "/api/v1/enrollment-secrets", tag = "enrolment", security(("admin_token" = [])),
    request_body = NewEnrollmentSecret,
    responses((status = 201, body = NewEnrollmentSecretAnswer), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_enrollment_secret(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<NewEnrollmentSecret>,
) -> Result<
    (
        StatusCode,
        Extension<AuditNote>,
        ApiJson<NewEnrollmentSecretAnswer>,
    ),
    ApiError,
> {
    check_name_and_tags(&request.name, &request.tags)?;
    if let Some(pattern) = &request.name_pattern {
        crate::identity::check_name_pattern(pattern)
            .map_err(|message| ApiError::bad_request("bad_name_pattern", message))?;
    }
    let value = new_token("al_enr_").map_err(ApiError::internal)?;
    let secret = state
        .store
        .add_enrollment_secret(
            &request.name,
            &request.tags,
            request.name_pattern.as_deref(),
            &hash_token(&value),
        )
        .await?;
    let detail = serde_json::json!({"tags": secret.tags, "name_pattern": secret.name_pattern});
    Ok((
        StatusCode::CREATED,
        note(format!("enrollment-secret:{}", secret.name), detail),
        ApiJson(NewEnrollmentSecretAnswer { secret, value }),
    ))
}

/// Lists enrolment secrets (names and tags, never values).
#[utoipa::path(get, path = "/api/v1/enrollment-secrets", tag = "enrolment", security(("admin_token" = [])),
    responses((status = 200, body = Vec<EnrollmentSecret>)))]
pub async fn list_enrollment_secrets(
    State(state): State<AppState>,
) -> Result<ApiJson<Vec<EnrollmentSecret>>, ApiError> {
    Ok(ApiJson(state.store.enrollment_secrets().await?))
}

/// Revokes an enrolment secret (devices enrolled with it keep their tokens).
#[utoipa::path(delete, path = "/api/v1/enrollment-secrets/{name}", tag = "enrolment", security(("admin_token" = [])),
    params(("name" = String, Path, description = "secret name")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_enrollment_secret(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<(StatusCode, Extension<AuditNote>), ApiError> {
    state.store.delete_enrollment_secret(&name).await?;
    Ok((
        StatusCode::NO_CONTENT,
        note(format!("enrollment-secret:{name}"), serde_json::json!({})),
    ))
}
