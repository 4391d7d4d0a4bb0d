//! Storage of the server's state, one trait per capability.
//!
//! Handlers and the deployment logic see only these traits, never SQL, so a
//! PostgreSQL backend can join the SQLite one; [`Store`] bundles them. Every
//! timestamp is Unix milliseconds.

use std::collections::HashMap;

use async_trait::async_trait;
use serde::Serialize;
use utoipa::ToSchema;

use crate::rollout::{Command, Note, PauseReason, Plan, RolloutState, Snapshot, Step, WaveTally};

pub mod sql;

/// Why a storage call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The change conflicts with what is stored (duplicate name, release in use, ...).
    #[error("{0}")]
    Conflict(String),
    /// The backend failed.
    #[error("storage backend: {0}")]
    Backend(String),
    /// The database gave the transaction up for another's sake (a
    /// deadlock victim, a serialisation failure); nothing was written and
    /// running it again is safe.
    #[error("storage backend, busy: {0}")]
    Contention(String),
}

/// Result of a storage call.
pub type StoreResult<T> = Result<T, StoreError>;

/// A firmware release: one image, stored by SHA-256, with its signed manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema, sqlx::FromRow)]
pub struct Release {
    /// Release id.
    pub id: i64,
    /// SHA-256 of the image, lowercase hex; also its artifact name.
    pub sha256: String,
    /// Image size in bytes.
    pub size: i64,
    /// ESP chip id from the image header.
    pub chip_id: i64,
    /// Project (product) name.
    pub project: String,
    /// Version string (from the manifest: what devices are told).
    pub version: String,
    /// Security version from the manifest.
    pub security_version: i64,
    /// Hex id of the key that signed the manifest.
    pub key_id: String,
    /// Whether the server signed the manifest (false: signed offline).
    pub signed_by_server: bool,
    /// The signed manifest blob.
    #[serde(skip)]
    pub manifest: Vec<u8>,
    /// Upload time.
    pub created_at: i64,
}

/// A release to insert.
#[derive(Debug, Clone)]
pub struct NewRelease {
    /// See [`Release`].
    pub sha256: String,
    /// See [`Release`].
    pub size: i64,
    /// See [`Release`].
    pub chip_id: i64,
    /// See [`Release`].
    pub project: String,
    /// See [`Release`].
    pub version: String,
    /// See [`Release`].
    pub security_version: i64,
    /// See [`Release`].
    pub key_id: String,
    /// See [`Release`].
    pub signed_by_server: bool,
    /// See [`Release`].
    pub manifest: Vec<u8>,
}

/// What a device last reported about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct DeviceStatus {
    /// Last check-in time.
    pub last_seen: Option<i64>,
    /// ESP chip id.
    pub chip_id: Option<i64>,
    /// Running project.
    pub project: Option<String>,
    /// Running version.
    pub version: Option<String>,
    /// SHA-256 of the running image.
    pub sha256: Option<String>,
    /// Security version of the running image.
    pub security_version: Option<i64>,
    /// Slot the image runs from.
    pub slot: Option<i64>,
    /// Engine state.
    pub state: Option<String>,
    /// Boot attempts of the running image.
    pub boot_count: Option<i64>,
}

/// A device of the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Device {
    /// Device id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// Tags, sorted.
    pub tags: Vec<String>,
    /// Creation time.
    pub created_at: i64,
    /// When it was revoked: its token is refused until it gets a new one.
    pub revoked_at: Option<i64>,
    /// When it was deleted: its row stays, renamed (see
    /// [`DeviceStore::delete_device`]), so its history stays readable.
    pub deleted_at: Option<i64>,
    /// What it last reported.
    pub status: DeviceStatus,
}

/// The device a token belongs to (or once did), and whether it still works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenOwner {
    /// The device.
    pub device_id: i64,
    /// Its name.
    pub name: String,
    /// Whether the token still authenticates it.
    pub standing: Standing,
}

/// Whether a device token still works, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// The device's current token.
    Active,
    /// The device was revoked.
    Revoked,
    /// A newer token replaced this one.
    Replaced,
    /// The device was deleted.
    Deleted,
}

/// The name a deleted device's row takes: no live device can have it
/// (names never hold `~`), and it still says which device it was.
pub fn tombstone_name(name: &str, id: i64) -> String {
    format!("{name}~deleted-{id}")
}

/// What a deployment targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One device, by name.
    Device(String),
    /// Every device with the tag.
    Tag(String),
    /// The devices named (rollouts list them explicitly).
    Devices(Vec<String>),
    /// Every device.
    All,
}

impl Target {
    /// Parses `device:NAME`, `devices:A,B,...`, `tag:T` or `all`.
    pub fn parse(text: &str) -> Option<Target> {
        match text.split_once(':') {
            Some(("device", name)) if !name.is_empty() => Some(Target::Device(name.to_owned())),
            Some(("devices", names)) => {
                let names: Vec<String> = names.split(',').map(str::to_owned).collect();
                (!names.iter().any(String::is_empty)).then_some(Target::Devices(names))
            }
            Some(("tag", tag)) if !tag.is_empty() => Some(Target::Tag(tag.to_owned())),
            None if text == "all" => Some(Target::All),
            _ => None,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Device(name) => write!(f, "device:{name}"),
            Target::Tag(tag) => write!(f, "tag:{tag}"),
            Target::Devices(names) => write!(f, "devices:{}", names.join(",")),
            Target::All => f.write_str("all"),
        }
    }
}

/// A deployment: a release offered to a set of devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema, sqlx::FromRow)]
pub struct Deployment {
    /// Deployment id.
    pub id: i64,
    /// The release.
    pub release_id: i64,
    /// `device:NAME`, `devices:A,B,...`, `tag:T` or `all`.
    pub target: String,
    /// `active` or `cancelled` as stored; the API answers `finished` for
    /// an active one whose every device is done.
    pub state: String,
    /// Creation time.
    pub created_at: i64,
}

/// One device's part in a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema, sqlx::FromRow)]
pub struct Assignment {
    /// The deployment.
    pub deployment_id: i64,
    /// The device.
    pub device_id: i64,
    /// The device's name.
    #[sqlx(rename = "name")]
    pub device_name: String,
    /// Rollout wave (0 for an immediate deployment; staged rollouts number their waves).
    pub wave: i64,
    /// State, see [`crate::deploy::AssignmentState`].
    pub state: String,
    /// Why it failed or was skipped.
    pub reason: Option<String>,
    /// Last change.
    pub updated_at: i64,
}

/// An assignment to create with a new deployment.
#[derive(Debug, Clone)]
pub struct NewAssignment {
    /// The device.
    pub device_id: i64,
    /// Initial state (`pending` or `skipped`).
    pub state: String,
    /// Why it was skipped.
    pub reason: Option<String>,
}

/// An assignment that a device should act on, with what it needs to download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// The deployment.
    pub deployment_id: i64,
    /// Its current state.
    pub state: String,
    /// The release.
    pub release: Release,
}

/// A device event as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema, sqlx::FromRow)]
pub struct StoredEvent {
    /// Event id (increasing).
    pub id: i64,
    /// The device's name.
    #[sqlx(rename = "name")]
    pub device: String,
    /// The deployment, if the event belongs to one.
    pub deployment_id: Option<i64>,
    /// Event kind (`downloading`, ..., `failed`).
    pub kind: String,
    /// Reason code.
    pub reason: Option<String>,
    /// Free text from the device.
    pub detail: Option<String>,
    /// When it happened (Unix milliseconds): when the server received it,
    /// less the age the device gave ([`NewEvent::age_ms`]).
    pub at: i64,
}

/// An event to store.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// See [`StoredEvent`].
    pub device_id: i64,
    /// See [`StoredEvent`].
    pub deployment_id: Option<i64>,
    /// See [`StoredEvent`].
    pub kind: String,
    /// See [`StoredEvent`].
    pub reason: Option<String>,
    /// See [`StoredEvent`].
    pub detail: Option<String>,
    /// How long before its receipt the event happened, in milliseconds
    /// (`airlift_protocol::Event::age_ms`, at most a day); 0 for now.
    pub age_ms: u32,
}

impl NewEvent {
    /// When it happened, for an event received at `now` (Unix ms).
    pub fn at(&self, now: i64) -> i64 {
        now - i64::from(self.age_ms.min(airlift_protocol::EVENT_AGE_MAX_MS))
    }
}

/// Decides an assignment's next state from its stored state and an event
/// kind (both as stored names); `None` leaves it unchanged. The deployment
/// rules ([`crate::deploy::next_state`]) pass it to [`EventStore::record_writes`]
/// so the store applies them inside its transaction.
pub type NextState = fn(&str, &str) -> Option<&'static str>;

/// A write that [`EventStore::record_writes`] group-commits.
#[derive(Debug, Clone)]
pub enum Write {
    /// A device event (it may move its assignment).
    Event(NewEvent),
    /// A compare-and-set of an assignment's state (the server's own move,
    /// such as `pending` to `offered` when a check-in carries the offer).
    Transition {
        /// The deployment.
        deployment_id: i64,
        /// The device.
        device_id: i64,
        /// The state the assignment must be in.
        from: &'static str,
        /// The state it moves to.
        to: &'static str,
        /// Why (stored with the assignment), if anything.
        reason: Option<&'static str>,
    },
}

/// What one write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// Done (an event stored); the assignment (if any) did not change.
    Stored,
    /// Done, and the assignment moved to this state.
    Changed(&'static str),
    /// Not done: the deployment has no assignment for the device.
    NoAssignment,
}

/// The assignments `writes` name (those of events without a deployment
/// name none), sorted and without repeats: what a backend reads (and, when
/// it runs writers side by side, locks in this order) before
/// [`plan_writes`].
pub fn write_keys(writes: &[Write]) -> Vec<(i64, i64)> {
    let mut keys: Vec<(i64, i64)> = writes
        .iter()
        .filter_map(|w| match w {
            Write::Event(e) => Some((e.deployment_id?, e.device_id)),
            Write::Transition {
                deployment_id,
                device_id,
                ..
            } => Some((*deployment_id, *device_id)),
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// An assignment a batch of writes moves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move<'w> {
    /// The deployment.
    pub deployment_id: i64,
    /// The device.
    pub device_id: i64,
    /// The state it ends in.
    pub to: &'static str,
    /// The last reason given on the way, if any (else it keeps its own).
    pub reason: Option<&'w str>,
}

/// What a batch of writes does, decided once for every backend by
/// [`plan_writes`].
#[derive(Debug)]
pub struct WritePlan<'w> {
    /// Each write's outcome, in order.
    pub outcomes: Vec<EventOutcome>,
    /// The assignments to move, by key.
    pub moves: Vec<Move<'w>>,
    /// The events to append, in order.
    pub events: Vec<&'w NewEvent>,
}

/// Applies `writes` in order to the assignments' stored `states` (by
/// [`write_keys`]; a key missing is an assignment that does not exist):
/// each event with a deployment moves its assignment as `next` decides and
/// is kept (unless the assignment does not exist); a transition moves its
/// assignment only from the state it expects. The last state and the last
/// reason win.
pub fn plan_writes<'w>(
    writes: &'w [Write],
    mut states: HashMap<(i64, i64), String>,
    next: NextState,
) -> WritePlan<'w> {
    let mut moved: std::collections::BTreeMap<(i64, i64), (&'static str, Option<&'w str>)> =
        std::collections::BTreeMap::new();
    let mut events = Vec::with_capacity(writes.len());
    let mut outcomes = Vec::with_capacity(writes.len());
    for w in writes {
        let (key, to, reason) = match w {
            Write::Event(e) => {
                let Some(deployment_id) = e.deployment_id else {
                    events.push(e);
                    outcomes.push(EventOutcome::Stored);
                    continue;
                };
                let key = (deployment_id, e.device_id);
                let Some(current) = states.get(&key) else {
                    outcomes.push(EventOutcome::NoAssignment);
                    continue;
                };
                events.push(e);
                (key, next(current, &e.kind), e.reason.as_deref())
            }
            Write::Transition {
                deployment_id,
                device_id,
                from,
                to,
                reason,
            } => {
                let key = (*deployment_id, *device_id);
                let Some(current) = states.get(&key) else {
                    outcomes.push(EventOutcome::NoAssignment);
                    continue;
                };
                (key, (current == from).then_some(*to), *reason)
            }
        };
        let Some(to) = to else {
            outcomes.push(EventOutcome::Stored);
            continue;
        };
        if let Some(current) = states.get_mut(&key) {
            to.clone_into(current);
        }
        let entry = moved.entry(key).or_insert((to, None));
        entry.0 = to;
        if reason.is_some() {
            entry.1 = reason;
        }
        outcomes.push(EventOutcome::Changed(to));
    }
    let moves = moved
        .into_iter()
        .map(|((deployment_id, device_id), (to, reason))| Move {
            deployment_id,
            device_id,
            to,
            reason,
        })
        .collect();
    WritePlan {
        outcomes,
        moves,
        events,
    }
}

/// One audit log record: an administrative action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema, sqlx::FromRow)]
pub struct AuditRecord {
    /// Record id (increasing).
    pub id: i64,
    /// When.
    pub at: i64,
    /// Who: the admin token's name.
    pub actor: String,
    /// What: method and route, e.g. `POST /api/v1/releases`.
    pub action: String,
    /// On what: e.g. `release:3`.
    pub target: String,
    /// Outcome and details as JSON text.
    pub detail: String,
}

/// Releases.
#[async_trait]
pub trait ReleaseStore: Send + Sync {
    /// Inserts a release; when one with the same SHA-256 exists, returns it and `false`.
    async fn insert_release(&self, release: NewRelease) -> StoreResult<(Release, bool)>;
    /// All releases, newest first.
    async fn list_releases(&self) -> StoreResult<Vec<Release>>;
    /// One release by id.
    async fn release(&self, id: i64) -> StoreResult<Release>;
    /// One release by SHA-256.
    async fn release_by_sha256(&self, sha256: &str) -> StoreResult<Option<Release>>;
    /// Deletes a release; [`StoreError::Conflict`] when a deployment uses it.
    async fn delete_release(&self, id: i64) -> StoreResult<Release>;
}

/// Devices and their tokens (stored as SHA-256 hashes).
#[async_trait]
pub trait DeviceStore: Send + Sync {
    /// Creates a device; [`StoreError::Conflict`] when the name is taken.
    async fn create_device(
        &self,
        name: &str,
        tags: &[String],
        token_hash: &[u8; 32],
    ) -> StoreResult<Device>;
    /// All devices, by name.
    async fn list_devices(&self) -> StoreResult<Vec<Device>>;
    /// One device by name.
    async fn device_by_name(&self, name: &str) -> StoreResult<Device>;
    /// One device by id.
    async fn device(&self, id: i64) -> StoreResult<Device>;
    /// The device a token hash belongs to, or once did (a token replaced
    /// by a rotation, a revoked or deleted device's), with its standing.
    async fn device_by_token(&self, token_hash: &[u8; 32]) -> StoreResult<Option<TokenOwner>>;
    /// Devices a target names: revoked and deleted devices are never in a
    /// tag or `all`, and naming one is a [`StoreError::Conflict`] (unknown
    /// device name: [`StoreError::NotFound`]).
    async fn devices_for_target(&self, target: &Target) -> StoreResult<Vec<Device>>;
    /// Records what devices reported at check-in (in one transaction).
    async fn record_statuses(&self, statuses: &[(i64, DeviceStatus)]) -> StoreResult<()>;
    /// Revokes a device at `now`: its token is refused from the commit on,
    /// and its unfinished assignments are cancelled (reason
    /// `device_revoked`: a device that cannot check in would keep a rollout
    /// waiting). Returns it and the deployments whose assignment was
    /// cancelled. [`StoreError::Conflict`] when it is revoked or deleted already.
    async fn revoke_device(&self, name: &str, now: i64) -> StoreResult<(Device, Vec<i64>)>;
    /// Gives a device a new token: the old one is refused from the commit
    /// on, and a revoked device is taken back. [`StoreError::Conflict`]
    /// when it was deleted.
    async fn rotate_device_token(
        &self,
        name: &str,
        token_hash: &[u8; 32],
        now: i64,
    ) -> StoreResult<Device>;
    /// Deletes a device at `now`: its token is refused, its unfinished
    /// assignments are cancelled (reason `device_deleted`), its tags go,
    /// and its name is free for a new device. Its row stays, renamed
    /// [`tombstone_name`], so its events and assignments stay readable.
    /// Returns it as it is stored now and the deployments whose assignment
    /// was cancelled. [`StoreError::Conflict`] when it was deleted already.
    async fn delete_device(&self, name: &str, now: i64) -> StoreResult<(Device, Vec<i64>)>;
}

/// Deployments and their per-device assignments.
#[async_trait]
pub trait DeploymentStore: Send + Sync {
    /// Creates a deployment with its assignments. An assignment in state
    /// `pending` supersedes the device's unfinished assignments of other
    /// deployments (they become `cancelled`).
    async fn create_deployment(
        &self,
        release_id: i64,
        target: &str,
        assignments: &[NewAssignment],
    ) -> StoreResult<Deployment>;
    /// All deployments, newest first.
    async fn list_deployments(&self) -> StoreResult<Vec<Deployment>>;
    /// One deployment.
    async fn deployment(&self, id: i64) -> StoreResult<Deployment>;
    /// Its assignments, by device name.
    async fn assignments(&self, deployment_id: i64) -> StoreResult<Vec<Assignment>>;
    /// Cancels a deployment: its unfinished assignments become `cancelled`.
    async fn cancel_deployment(&self, id: i64) -> StoreResult<Deployment>;
    /// The device's unfinished assignment (at most one), with its release.
    async fn open_offer(&self, device_id: i64) -> StoreResult<Option<Offer>>;
    /// One device's assignment in a deployment.
    async fn assignment(
        &self,
        deployment_id: i64,
        device_id: i64,
    ) -> StoreResult<Option<Assignment>>;
    /// Whether the device has an assignment (in any state but `skipped`/`cancelled`) for the artifact.
    async fn artifact_assigned(&self, device_id: i64, sha256: &str) -> StoreResult<bool>;
}

/// Device events.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Appends an event.
    async fn add_event(&self, event: &NewEvent) -> StoreResult<i64>;
    /// Records writes in order, in one transaction: each event with a
    /// deployment first moves the device's assignment as `next` decides, then
    /// is appended (unless the assignment does not exist); a transition
    /// moves its assignment if it is in the expected state. Nothing is
    /// written when the call fails.
    async fn record_writes(
        &self,
        writes: &[Write],
        next: NextState,
    ) -> StoreResult<Vec<EventOutcome>>;
    /// Events, newest first, optionally of one device, at most `limit`.
    async fn events(&self, device_id: Option<i64>, limit: i64) -> StoreResult<Vec<StoredEvent>>;
}

/// The audit log.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends a record.
    async fn add_audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: &str,
    ) -> StoreResult<()>;
    /// Records, newest first, at most `limit`.
    async fn audit(&self, limit: i64) -> StoreResult<Vec<AuditRecord>>;
}

/// An enrolment secret (its value is never stored, only its hash): what
/// a device enrolling with it is granted, and nothing more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct EnrollmentSecret {
    /// Name of the secret.
    pub name: String,
    /// The tags every device enrolling with it gets; a device may ask for
    /// these, never for others.
    pub tags: Vec<String>,
    /// The names devices may enrol with (`*` matches any run of name
    /// characters, e.g. `roof-*`); `None`: any name.
    pub name_pattern: Option<String>,
    /// Creation time.
    pub created_at: i64,
}

/// Admin tokens and enrolment secrets (stored as SHA-256 hashes).
#[async_trait]
pub trait CredentialStore: Send + Sync {
    /// Adds an admin token.
    async fn add_admin_token(&self, name: &str, token_hash: &[u8; 32]) -> StoreResult<()>;
    /// Adds the first admin token, only while there is none: of several
    /// instances starting on one new database, one adds it. True when
    /// this call added it.
    async fn add_first_admin_token(&self, name: &str, token_hash: &[u8; 32]) -> StoreResult<bool>;
    /// The shared setting `name`; when none is stored yet, `value` is
    /// stored first, so instances starting together agree on one value.
    async fn setting_or_insert(&self, name: &str, value: &str) -> StoreResult<String>;
    /// The name of the admin token with this hash.
    async fn admin_token(&self, token_hash: &[u8; 32]) -> StoreResult<Option<String>>;
    /// Number of admin tokens.
    async fn count_admin_tokens(&self) -> StoreResult<i64>;
    /// Adds an enrolment secret granting `tags` to devices named as
    /// `name_pattern` says; [`StoreError::Conflict`] when the name is taken.
    async fn add_enrollment_secret(
        &self,
        name: &str,
        tags: &[String],
        name_pattern: Option<&str>,
        secret_hash: &[u8; 32],
    ) -> StoreResult<EnrollmentSecret>;
    /// All enrolment secrets.
    async fn enrollment_secrets(&self) -> StoreResult<Vec<EnrollmentSecret>>;
    /// The secret with this hash.
    async fn enrollment_secret(
        &self,
        secret_hash: &[u8; 32],
    ) -> StoreResult<Option<EnrollmentSecret>>;
    /// Deletes an enrolment secret.
    async fn delete_enrollment_secret(&self, name: &str) -> StoreResult<()>;
}

/// Dashboard sessions: a signed-in browser holds a random value in a
/// cookie; the store keeps its SHA-256 and the admin token it was opened with.
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Opens a session for the admin token with hash `admin_token_hash`,
    /// valid until `expires_at`; returns the admin token's name, or `None`
    /// (and opens nothing) when no admin token has that hash. Sessions that
    /// expired before `now` are removed on the way.
    async fn open_session(
        &self,
        session_hash: &[u8; 32],
        admin_token_hash: &[u8; 32],
        now: i64,
        expires_at: i64,
    ) -> StoreResult<Option<String>>;
    /// The admin name of a session that has not expired at `now`.
    async fn session(&self, session_hash: &[u8; 32], now: i64) -> StoreResult<Option<Session>>;
    /// Ends a session; false when there was none.
    async fn close_session(&self, session_hash: &[u8; 32]) -> StoreResult<bool>;
}

/// An open dashboard session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Session {
    /// The name of the admin token it was opened with.
    pub admin: String,
    /// When it ends (Unix milliseconds).
    pub expires_at: i64,
}

/// When a device was last seen, as a list filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastSeen {
    /// Checked in at or after this time.
    Since(i64),
    /// Checked in, but not since this time.
    Before(i64),
    /// Never checked in.
    Never,
}

/// The order of a device list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeviceOrder {
    /// By name.
    #[default]
    Name,
    /// Longest unseen first (never seen last), then by name.
    LastSeen,
}

/// Which devices a list shows: every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceFilter {
    /// Part of the name (ASCII letters in any case).
    pub search: Option<String>,
    /// Has this tag.
    pub tag: Option<String>,
    /// Runs this version.
    pub version: Option<String>,
    /// Its engine reported this state (`idle`, `downloading`, `installed`, `trial`).
    pub state: Option<String>,
    /// Last check-in.
    pub last_seen: Option<LastSeen>,
}

/// A device's unfinished assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct OpenAssignment {
    /// The deployment.
    pub deployment_id: i64,
    /// The assignment's state.
    pub state: String,
    /// The release's version.
    pub version: String,
}

/// A device as a list shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct DeviceSummary {
    /// The device.
    #[serde(flatten)]
    pub device: Device,
    /// Its unfinished assignment, if any.
    pub assignment: Option<OpenAssignment>,
}

/// One page of a device list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct DevicePage {
    /// Devices matching the filter, on every page.
    pub total: i64,
    /// This page's devices.
    pub devices: Vec<DeviceSummary>,
}

/// How many devices share a value (a version, a state, a tag); `value` is
/// `None` for devices that never reported one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Tally {
    /// The value.
    pub value: Option<String>,
    /// Number of devices.
    pub devices: i64,
}

/// The fleet in numbers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FleetCounts {
    /// Every device.
    pub devices: i64,
    /// Devices that never checked in.
    pub never_seen: i64,
    /// Devices that checked in, but not since the time asked about.
    pub unseen: i64,
    /// Devices per running version, most common first.
    pub by_version: Vec<Tally>,
    /// Devices per engine state, most common first.
    pub by_state: Vec<Tally>,
    /// Devices per tag, by tag.
    pub by_tag: Vec<Tally>,
}

/// A device whose update failed or rolled back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema, sqlx::FromRow)]
pub struct Problem {
    /// The device's name.
    pub device: String,
    /// The deployment.
    pub deployment_id: i64,
    /// The release's version.
    pub version: String,
    /// `failed` or `rolled_back`.
    pub state: String,
    /// Why (a reason code such as `boot_failed`).
    pub reason: Option<String>,
    /// When.
    pub updated_at: i64,
}

/// One of a device's assignments, with its release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema, sqlx::FromRow)]
pub struct DeviceAssignment {
    /// The deployment.
    pub deployment_id: i64,
    /// The deployment's target.
    pub target: String,
    /// The release's version.
    pub version: String,
    /// The release's SHA-256.
    pub sha256: String,
    /// The assignment's state.
    pub state: String,
    /// Why it failed, rolled back, was skipped or cancelled.
    pub reason: Option<String>,
    /// When the deployment was created.
    pub created_at: i64,
    /// The assignment's last change.
    pub updated_at: i64,
}

/// Devices of a deployment per assignment state and reason.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AssignmentTally {
    /// The deployment.
    pub deployment_id: i64,
    /// The state.
    pub state: String,
    /// The reason (skipped, failed, rolled back, cancelled), if any.
    pub reason: Option<String>,
    /// Number of devices.
    pub devices: i64,
}

/// Read-only views over devices and deployments for people (the
/// dashboard): paged, filtered lists, tallies and histories. Each answers
/// from indexes or one scan of the devices, whatever the fleet's size.
#[async_trait]
pub trait ViewStore: Send + Sync {
    /// The devices matching `filter`, in `order`, `limit` of them from `offset`.
    async fn search_devices(
        &self,
        filter: &DeviceFilter,
        order: DeviceOrder,
        limit: i64,
        offset: i64,
    ) -> StoreResult<DevicePage>;
    /// The fleet in numbers; `unseen` counts devices not seen since `seen_since`.
    async fn fleet_counts(&self, seen_since: i64) -> StoreResult<FleetCounts>;
    /// The latest failed and rolled-back assignments, newest first.
    async fn recent_problems(&self, limit: i64) -> StoreResult<Vec<Problem>>;
    /// A device's assignments, newest first.
    async fn device_assignments(
        &self,
        device_id: i64,
        limit: i64,
    ) -> StoreResult<Vec<DeviceAssignment>>;
    /// Deployments with an unfinished assignment, newest first.
    async fn deployments_in_progress(&self) -> StoreResult<Vec<i64>>;
    /// Devices per state and reason of each deployment in `deployment_ids`.
    async fn assignment_tallies(&self, deployment_ids: &[i64])
    -> StoreResult<Vec<AssignmentTally>>;
    /// A deployment's assignments in `states` (all when empty), by device
    /// name, `limit` from `offset`, and how many there are in all.
    async fn assignments_page(
        &self,
        deployment_id: i64,
        states: &[String],
        limit: i64,
        offset: i64,
    ) -> StoreResult<(i64, Vec<Assignment>)>;
    /// How many of a deployment's devices run each version now.
    async fn running_versions(&self, deployment_id: i64) -> StoreResult<Vec<Tally>>;
    /// Audit records older than `before` (an id; newest when `None`), newest first.
    async fn audit_before(&self, before: Option<i64>, limit: i64) -> StoreResult<Vec<AuditRecord>>;
}

/// A staged rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Rollout {
    /// Rollout id.
    pub id: i64,
    /// The release.
    pub release_id: i64,
    /// The deployment holding its assignments (from the start on).
    pub deployment_id: Option<i64>,
    /// `device:NAME`, `devices:A,B`, `tag:T` or `all`; resolved once, at the start.
    pub target: String,
    /// How it proceeds.
    pub plan: Plan,
    /// Its state.
    pub state: RolloutState,
    /// Cumulative device counts of the waves, fixed at the start.
    pub waves: Vec<u64>,
    /// Waves open.
    pub opened: u32,
    /// When the open waves reached the success threshold (the soak started).
    pub succeeded_at: Option<i64>,
    /// Failures an operator accepted by resuming (the threshold counts the others).
    pub accepted_failures: u64,
    /// Who paused it: an admin token's name, or `failure_threshold`.
    pub paused_by: Option<String>,
    /// Why it is paused, with the numbers.
    pub pause_reason: Option<PauseReason>,
    /// The admin token's name that created it.
    pub created_by: String,
    /// Creation time.
    pub created_at: i64,
    /// Last change.
    pub updated_at: i64,
}

/// A rollout to create (as a draft).
#[derive(Debug, Clone)]
pub struct NewRollout {
    /// See [`Rollout`].
    pub release_id: i64,
    /// See [`Rollout`].
    pub target: String,
    /// See [`Rollout`].
    pub plan: Plan,
    /// See [`Rollout`].
    pub created_by: String,
}

/// A device's place in a rollout, written when it starts.
#[derive(Debug, Clone)]
pub struct WaveAssignment {
    /// The device.
    pub device_id: i64,
    /// Its wave (1-based; 0 when skipped).
    pub wave: u32,
    /// `waiting`, or `skipped` with a reason.
    pub state: &'static str,
    /// Why it is skipped.
    pub reason: Option<String>,
}

/// A rollout event: a transition, or something the scheduler did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct RolloutEvent {
    /// Event id (increasing).
    pub id: i64,
    /// When.
    pub at: i64,
    /// An admin token's name, or `scheduler`.
    pub actor: String,
    /// `created`, `started`, `paused`, `resumed`, `advanced`, `cancelled`,
    /// `soak_started`, `wave_opened`, `deadline`, `finished`.
    pub kind: String,
    /// The rollout's state after it.
    pub state: String,
    /// Waves open after it.
    pub wave: u32,
    /// Details.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

/// The actor the scheduler's own rollout events and audit records name.
pub const SCHEDULER: &str = "scheduler";

/// What a scheduler step changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepOutcome {
    /// The rollout after the step.
    pub rollout: Rollout,
    /// Devices moved to `pending`: the rollout's deployment is their open offer now.
    pub promoted: Vec<i64>,
    /// Devices moved back to `waiting` (no offer any more).
    pub unoffered: Vec<i64>,
    /// Devices that passed their deadline (now `failed`).
    pub failed: Vec<i64>,
    /// What happened.
    pub notes: Vec<Note>,
}

/// The rollout rules ([`crate::rollout::decide`]), which
/// [`RolloutStore::step_rollout`] applies inside its transaction.
pub type Decide = fn(&Snapshot, i64) -> Step;

/// Staged rollouts, their events, and the leases that let one server
/// instance of several run the scheduler.
#[async_trait]
pub trait RolloutStore: Send + Sync {
    /// Creates a draft (and its `created` event).
    async fn create_rollout(&self, rollout: NewRollout) -> StoreResult<Rollout>;
    /// All rollouts, newest first.
    async fn list_rollouts(&self) -> StoreResult<Vec<Rollout>>;
    /// One rollout.
    async fn rollout(&self, id: i64) -> StoreResult<Rollout>;
    /// Its devices per wave and state (index 0: devices in no wave).
    async fn rollout_tallies(&self, id: i64) -> StoreResult<Vec<WaveTally>>;
    /// Its events, oldest first.
    async fn rollout_events(&self, id: i64) -> StoreResult<Vec<RolloutEvent>>;
    /// Failed and rolled-back assignments of a release, per device (the penalty box).
    async fn release_failures(&self, release_id: i64) -> StoreResult<HashMap<i64, u64>>;
    /// Starts a draft in one transaction: creates its deployment with the
    /// assignments given (a `waiting` one supersedes the device's waiting
    /// assignments of other rollouts), fixes the waves and opens the first.
    /// [`StoreError::Conflict`] when it is not a draft any more.
    async fn start_rollout(
        &self,
        id: i64,
        actor: &str,
        waves: &[u64],
        assignments: &[WaveAssignment],
        now: i64,
    ) -> StoreResult<Rollout>;
    /// Applies an operator's pause, resume, advance or cancel (see
    /// [`Command::apply`]; [`StoreError::Conflict`] when refused) and records
    /// the event. Returns the rollout and the devices no longer offered it.
    async fn command_rollout(
        &self,
        id: i64,
        command: Command,
        actor: &str,
        now: i64,
    ) -> StoreResult<(Rollout, Vec<i64>)>;
    /// One scheduler step in one transaction: reads the rollout and its
    /// devices, lets `decide` choose at `now`, applies the choice, records
    /// its events (and an audit record per transition). `None` when the
    /// rollout is not running or paused.
    async fn step_rollout(
        &self,
        id: i64,
        now: i64,
        decide: Decide,
    ) -> StoreResult<Option<StepOutcome>>;
    /// Ids of the running and paused rollouts.
    async fn active_rollouts(&self) -> StoreResult<Vec<i64>>;
    /// Takes or renews the lease `name` for `holder` until `now + ttl_ms`;
    /// false while another holder's lease has not expired.
    async fn try_lease(&self, name: &str, holder: &str, now: i64, ttl_ms: i64)
    -> StoreResult<bool>;
}

/// Everything the server stores.
pub trait Store:
    ReleaseStore
    + DeviceStore
    + DeploymentStore
    + EventStore
    + AuditStore
    + CredentialStore
    + SessionStore
    + ViewStore
    + RolloutStore
{
}

impl<T> Store for T where
    T: ReleaseStore
        + DeviceStore
        + DeploymentStore
        + EventStore
        + AuditStore
        + CredentialStore
        + SessionStore
        + ViewStore
        + RolloutStore
{
}

#[cfg(test)]
mod tests {
    use super::Target;

    #[test]
    fn targets_parse_and_print_back() {
        for (text, expected) in [
            ("all", Some(Target::All)),
            ("tag:lab", Some(Target::Tag("lab".into()))),
            ("device:d1", Some(Target::Device("d1".into()))),
            (
                "devices:a,b",
                Some(Target::Devices(vec!["a".into(), "b".into()])),
            ),
            ("devices:", None),
            ("devices:a,,b", None),
            ("tag:", None),
            ("everyone", None),
        ] {
            let parsed = Target::parse(text);
            assert_eq!(parsed, expected, "{text}");
            if let Some(target) = parsed {
                assert_eq!(target.to_string(), text);
            }
        }
    }
}
