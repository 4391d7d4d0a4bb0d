//! The SQL backends: SQLite (one file `airlift.db` in the data directory,
//! WAL mode) and PostgreSQL (several server instances on one database),
//! each with its own forward-only migrations embedded in the binary
//! (`migrations/` and `migrations-postgres/`).
//!
//! Both run the same code and, but for a few words ([`Dialect`]), the same
//! SQL through sqlx's `Any` driver: every statement uses numbered
//! placeholders (`$1`), which both read. What differs is how a writer keeps
//! others out while it reads and then writes:
//!
//! - SQLite has one writer at a time: such transactions begin with `BEGIN
//!   IMMEDIATE` and so see nothing change under them.
//! - PostgreSQL runs writers side by side (read committed). A transaction
//!   that reads rows and writes what follows from them locks them first
//!   (`SELECT ... FOR UPDATE`: the rollout row a step or a command reads,
//!   the assignments a batch of device events moves, in key order); one
//!   that replaces a device's open assignment (a new deployment, a
//!   rollout's start or step, a cancellation) first takes the
//!   [`ASSIGNMENT_LOCK`] advisory lock, so no two of them can each see the
//!   other's device free; a transaction PostgreSQL picks as a deadlock
//!   victim is run again. Every transaction that changes which offer a
//!   device has also publishes the devices on the `airlift` channel
//!   (`pg_notify`, delivered at commit), so other instances forget what
//!   they cached ([`crate::peers`]).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::any::{AnyArguments, AnyPoolOptions, AnyRow};
use sqlx::{
    Any, Arguments, AssertSqlSafe, Connection, Encode, Executor, FromRow, Pool, Row, Transaction,
    Type,
};

use super::{
    Assignment, AssignmentTally, AuditRecord, AuditStore, CredentialStore, Decide, Deployment,
    DeploymentStore, Device, DeviceAssignment, DeviceFilter, DeviceOrder, DevicePage, DeviceStatus,
    DeviceStore, DeviceSummary, EnrollmentSecret, EventOutcome, EventStore, FleetCounts, LastSeen,
    NewAssignment, NewEvent, NewRelease, NewRollout, NextState, Offer, OpenAssignment, Problem,
    Release, ReleaseStore, Rollout, RolloutEvent, RolloutStore, SCHEDULER, Session, SessionStore,
    Standing, StepOutcome, StoreError, StoreResult, StoredEvent, Tally, Target, TokenOwner,
    ViewStore, WaveAssignment, Write, tombstone_name,
};
use crate::deploy::AssignmentState;
use crate::now_ms;
use crate::rollout::{
    Command, PauseReason, RolloutState, Snapshot, WaveTally, tally_all, tally_upto,
};

/// Assignment states not over yet: what a new deployment supersedes.
const UNFINISHED: &str = "('waiting', 'pending', 'offered', 'downloading', 'installed', 'booted')";

/// Assignment states of a device given an update and not done with it.
const UPDATING: &str = "('offered', 'downloading', 'installed', 'booted')";

/// The PostgreSQL advisory lock (`pg_advisory_xact_lock`) held by every
/// transaction that replaces devices' open assignments.
pub const ASSIGNMENT_LOCK: i64 = 0x4169_726c_6966_7401;

/// The PostgreSQL advisory lock held while the first admin token is created.
const FIRST_ADMIN_LOCK: i64 = 0x4169_726c_6966_7402;

/// The channel instances tell each other on (PostgreSQL's `LISTEN`/`NOTIFY`).
pub const CHANNEL: &str = "airlift";

/// Above this many devices a notice says "every device" instead of naming them.
const NOTICE_DEVICES_MAX: usize = 400;

/// Where the two backends' SQL differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

impl Dialect {
    /// The statement that begins a transaction that reads, then writes.
    fn begin_write(self) -> &'static str {
        match self {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
        }
    }

    /// What follows a `SELECT` whose rows the transaction will change.
    fn for_update(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }

    /// A device's tags joined by newlines, for a query over `devices d`.
    fn tags(self) -> &'static str {
        match self {
            Dialect::Sqlite => {
                "(SELECT group_concat(tag, char(10)) FROM device_tags t WHERE t.device_id = d.id)"
            }
            Dialect::Postgres => {
                "(SELECT string_agg(tag, chr(10)) FROM device_tags t WHERE t.device_id = d.id)"
            }
        }
    }

    /// SQLite's hint to use a partial index it would not pick by itself.
    fn indexed_by(self, index: &str) -> String {
        match self {
            Dialect::Sqlite => format!(" INDEXED BY {index}"),
            Dialect::Postgres => String::new(),
        }
    }
}

/// SQL text with numbered placeholders (`$1`, `$2`, ...) and the values
/// bound to them, for statements whose shape depends on their input (lists
/// of devices, filters). Only placeholders and constants go into the text.
struct Sql {
    text: String,
    args: AnyArguments,
    error: Option<sqlx::error::BoxDynError>,
}

impl Sql {
    fn new(text: impl Into<String>) -> Sql {
        Sql {
            text: text.into(),
            args: AnyArguments::default(),
            error: None,
        }
    }

    fn push(&mut self, text: &str) -> &mut Sql {
        self.text.push_str(text);
        self
    }

    /// Appends a placeholder for `value`.
    fn bind<'t, T>(&mut self, value: T) -> &mut Sql
    where
        T: Encode<'t, Any> + Type<Any>,
    {
        if let Err(err) = self.args.add(value) {
            self.error.get_or_insert(err);
        }
        let n = self.args.len();
        self.text.push_str(&format!("${n}"));
        self
    }

    /// Appends `(a, b, ...)` rows, each written by `row` (which calls
    /// [`Sql::bind`] and [`Sql::push`]), separated by commas.
    fn rows<T>(&mut self, items: &[T], mut row: impl FnMut(&mut Sql, &T)) -> &mut Sql {
        for (i, item) in items.iter().enumerate() {
            self.push(if i == 0 { "(" } else { ", (" });
            row(self, item);
            self.push(")");
        }
        self
    }

    /// Appends `$a, $b, ...` for `values`.
    fn list<'t, T>(&mut self, values: impl IntoIterator<Item = T>) -> &mut Sql
    where
        T: Encode<'t, Any> + Type<Any>,
    {
        for (i, value) in values.into_iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.bind(value);
        }
        self
    }

    /// The statement, or why a value could not be bound.
    fn query(self) -> StoreResult<sqlx::query::Query<'static, Any, AnyArguments>> {
        match self.error {
            Some(err) => Err(backend(format!("cannot bind a value: {err}"))),
            None => Ok(sqlx::query_with(AssertSqlSafe(self.text), self.args)),
        }
    }
}

/// The SQL store: SQLite or PostgreSQL.
#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: Pool<Any>,
    dialect: Dialect,
    /// Who this instance is in its notices (PostgreSQL).
    instance: String,
}

fn backend(err: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(err.to_string())
}

/// A backend error, or [`StoreError::Contention`] when the database gave
/// up the transaction for another's sake (a deadlock victim, a
/// serialisation failure): running it again is safe.
fn db(err: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(e) = &err
        && matches!(e.code().as_deref(), Some("40P01" | "40001"))
    {
        return StoreError::Contention(err.to_string());
    }
    backend(err)
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// A boolean column: PostgreSQL's `boolean`, SQLite's integer.
fn get_bool(row: &AnyRow, column: &str) -> Result<bool, sqlx::Error> {
    match row.try_get::<bool, _>(column) {
        Ok(value) => Ok(value),
        Err(_) => Ok(row.try_get::<i64, _>(column)? != 0),
    }
}

fn release_from_row(row: &AnyRow) -> Result<Release, sqlx::Error> {
    Ok(Release {
        id: row.try_get("id")?,
        sha256: row.try_get("sha256")?,
        size: row.try_get("size")?,
        chip_id: row.try_get("chip_id")?,
        project: row.try_get("project")?,
        version: row.try_get("version")?,
        security_version: row.try_get("security_version")?,
        key_id: row.try_get("key_id")?,
        signed_by_server: get_bool(row, "signed_by_server")?,
        manifest: row.try_get("manifest")?,
        created_at: row.try_get("created_at")?,
    })
}

fn device_from_row(row: &AnyRow) -> Result<Device, sqlx::Error> {
    let tags: Option<String> = row.try_get("tags")?;
    let mut tags: Vec<String> = tags
        .unwrap_or_default()
        .split('\n')
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    tags.sort();
    Ok(Device {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        tags,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
        deleted_at: row.try_get("deleted_at")?,
        status: DeviceStatus {
            last_seen: row.try_get("last_seen")?,
            chip_id: row.try_get("chip_id")?,
            project: row.try_get("project")?,
            version: row.try_get("version")?,
            sha256: row.try_get("sha256")?,
            security_version: row.try_get("security_version")?,
            slot: row.try_get("slot")?,
            state: row.try_get("state")?,
            boot_count: row.try_get("boot_count")?,
        },
    })
}

fn secret_from_row(row: &AnyRow) -> Result<EnrollmentSecret, sqlx::Error> {
    let tags: String = row.try_get("tags")?;
    Ok(EnrollmentSecret {
        name: row.try_get("name")?,
        tags: tags
            .split('\n')
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
        name_pattern: row.try_get("name_pattern")?,
        created_at: row.try_get("created_at")?,
    })
}

/// `path` as the path of a `sqlite://` URL (percent-encoded).
fn sqlite_url(path: &Path) -> String {
    let mut url = String::from("sqlite://");
    for byte in path.as_os_str().as_encoded_bytes() {
        if byte.is_ascii_alphanumeric() || b"/._-".contains(byte) {
            url.push(char::from(*byte));
        } else {
            url.push_str(&format!("%{byte:02X}"));
        }
    }
    url.push_str("?mode=rwc");
    url
}

impl SqlStore {
    /// Opens (creating when missing) `airlift.db` in `dir` and applies the migrations.
    pub async fn open_sqlite(dir: &Path) -> StoreResult<SqlStore> {
        sqlx::any::install_default_drivers();
        let path = std::path::absolute(dir.join("airlift.db")).map_err(backend)?;
        let url = sqlite_url(&path);
        // WAL is a property of the file: set once, on one connection, before
        // the pool's connections race for it.
        let mut first = sqlx::AnyConnection::connect(&url).await.map_err(db)?;
        first
            .execute("PRAGMA journal_mode = WAL")
            .await
            .map_err(db)?;
        first.close().await.map_err(db)?;
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(
                        "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
                         PRAGMA busy_timeout = 10000",
                    )
                    .await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(db)?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(backend)?;
        Ok(SqlStore {
            pool,
            dialect: Dialect::Sqlite,
            instance: String::new(),
        })
    }

    /// Connects to the PostgreSQL database at `url` and applies the
    /// migrations; `instance` names this server in its notices.
    pub async fn connect_postgres(url: &str, instance: &str) -> StoreResult<SqlStore> {
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(30))
            .connect(url)
            .await
            .map_err(db)?;
        // Instances starting together migrate one at a time (sqlx holds an
        // advisory lock while it migrates PostgreSQL).
        sqlx::migrate!("./migrations-postgres")
            .run(&pool)
            .await
            .map_err(backend)?;
        Ok(SqlStore {
            pool,
            dialect: Dialect::Postgres,
            instance: instance.to_owned(),
        })
    }

    /// Which backend this is.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Closes the pool (SQLite checkpoints the WAL).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn begin(&self) -> StoreResult<Transaction<'static, Any>> {
        self.pool.begin().await.map_err(db)
    }

    /// A transaction that reads, then writes (see the module's doc).
    async fn begin_write(&self) -> StoreResult<Transaction<'static, Any>> {
        self.pool
            .begin_with(self.dialect.begin_write())
            .await
            .map_err(db)
    }

    /// A transaction that replaces devices' open assignments: one at a time.
    async fn begin_assignments(&self) -> StoreResult<Transaction<'static, Any>> {
        let mut tx = self.begin_write().await?;
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(ASSIGNMENT_LOCK)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        Ok(tx)
    }

    /// Tells the other instances (PostgreSQL), when `tx` commits, that the
    /// open offers of `devices` changed (`None`: maybe any device's).
    async fn notify_offers(&self, tx: &mut Conn, devices: Option<&[i64]>) -> StoreResult<()> {
        if self.dialect != Dialect::Postgres || devices.is_some_and(<[i64]>::is_empty) {
            return Ok(());
        }
        let notice = crate::peers::Notice::Offers(
            devices
                .filter(|d| d.len() <= NOTICE_DEVICES_MAX)
                .map(<[i64]>::to_vec),
        );
        self.notify(tx, &notice).await
    }

    /// Tells the other instances (PostgreSQL), when `tx` commits, that
    /// `device` was revoked, given a new token or deleted: whatever they
    /// cached of it (its token, its offer) must go.
    async fn notify_identity(&self, tx: &mut Conn, device: i64) -> StoreResult<()> {
        if self.dialect != Dialect::Postgres {
            return Ok(());
        }
        self.notify(tx, &crate::peers::Notice::Devices(vec![device]))
            .await
    }

    async fn notify(&self, tx: &mut Conn, notice: &crate::peers::Notice) -> StoreResult<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(notice.encode(&self.instance))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        Ok(())
    }

    /// Runs `attempt` again while the database gives it up for another
    /// transaction's sake ([`StoreError::Contention`]), a few times.
    async fn retrying<T, F, Fut>(&self, mut attempt: F) -> StoreResult<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = StoreResult<T>>,
    {
        let mut tries = 0;
        loop {
            match attempt().await {
                Err(StoreError::Contention(why)) if tries < 8 => {
                    tries += 1;
                    tracing::debug!(tries, %why, "transaction given up by the database; again");
                }
                result => return result,
            }
        }
    }

    /// The columns [`device_from_row`] reads, for a query over `devices d`.
    fn device_columns(&self) -> String {
        format!(
            "d.id, d.name, d.created_at, d.revoked_at, d.deleted_at, d.last_seen, d.chip_id, \
             d.project, d.version, d.sha256, d.security_version, d.slot, d.state, d.boot_count, \
             {} AS tags",
            self.dialect.tags()
        )
    }

    /// The devices `condition` (SQL over `devices d`; `$1` is `arg`) selects, by name.
    async fn devices_where(
        &self,
        condition: &'static str,
        arg: Option<&str>,
    ) -> StoreResult<Vec<Device>> {
        let sql = format!(
            "SELECT {} FROM devices d WHERE {condition} ORDER BY d.name",
            self.device_columns()
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        if let Some(arg) = arg {
            query = query.bind(arg);
        }
        let rows = query.fetch_all(&self.pool).await.map_err(db)?;
        rows.iter()
            .map(device_from_row)
            .collect::<Result<_, _>>()
            .map_err(db)
    }

    /// The (value, count) rows `sql` selects, as tallies.
    async fn tally(&self, sql: &'static str) -> StoreResult<Vec<Tally>> {
        let rows = sqlx::query(sql).fetch_all(&self.pool).await.map_err(db)?;
        tallies(&rows)
    }
}

#[async_trait]
impl ReleaseStore for SqlStore {
    async fn insert_release(&self, r: NewRelease) -> StoreResult<(Release, bool)> {
        let inserted = sqlx::query(
            "INSERT INTO releases (sha256, size, chip_id, project, version, security_version, \
             key_id, signed_by_server, manifest, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (sha256) DO NOTHING",
        )
        .bind(&r.sha256)
        .bind(r.size)
        .bind(r.chip_id)
        .bind(&r.project)
        .bind(&r.version)
        .bind(r.security_version)
        .bind(&r.key_id)
        .bind(r.signed_by_server)
        .bind(&r.manifest)
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(db)?
        .rows_affected()
            == 1;
        let release = self
            .release_by_sha256(&r.sha256)
            .await?
            .ok_or_else(|| backend("release vanished after insert"))?;
        Ok((release, inserted))
    }

    async fn list_releases(&self) -> StoreResult<Vec<Release>> {
        let rows = sqlx::query(
            "SELECT id, sha256, size, chip_id, project, version, security_version, key_id, \
             signed_by_server, manifest, created_at FROM releases ORDER BY id DESC",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(release_from_row)
            .collect::<Result<_, _>>()
            .map_err(db)
    }

    async fn release(&self, id: i64) -> StoreResult<Release> {
        let row = sqlx::query(
            "SELECT id, sha256, size, chip_id, project, version, security_version, key_id, \
             signed_by_server, manifest, created_at FROM releases WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?
        .ok_or_else(|| StoreError::NotFound(format!("no release {id}")))?;
        release_from_row(&row).map_err(db)
    }

    async fn release_by_sha256(&self, sha256: &str) -> StoreResult<Option<Release>> {
        let row = sqlx::query(
            "SELECT id, sha256, size, chip_id, project, version, security_version, key_id, \
             signed_by_server, manifest, created_at FROM releases WHERE sha256 = $1",
        )
        .bind(sha256)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref().map(release_from_row).transpose().map_err(db)
    }

    async fn delete_release(&self, id: i64) -> StoreResult<Release> {
        let mut tx = self.begin().await?;
        let release = self.release(id).await?;
        let used: i64 = sqlx::query(
            "SELECT (SELECT count(*) FROM deployments WHERE release_id = $1) \
             + (SELECT count(*) FROM rollouts WHERE release_id = $1 AND deployment_id IS NULL)",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .and_then(|row| row.try_get(0))
        .map_err(db)?;
        if used > 0 {
            return Err(StoreError::Conflict(format!(
                "release {id} is used by {used} deployment(s) or rollout(s); it cannot be deleted"
            )));
        }
        sqlx::query("DELETE FROM releases WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(release)
    }
}

#[async_trait]
impl DeviceStore for SqlStore {
    async fn create_device(
        &self,
        name: &str,
        tags: &[String],
        token_hash: &[u8; 32],
    ) -> StoreResult<Device> {
        let mut tx = self.begin().await?;
        let id: i64 = sqlx::query(
            "INSERT INTO devices (name, token_hash, created_at) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(name)
        .bind(&token_hash[..])
        .bind(now_ms())
        .fetch_one(&mut *tx)
        .await
        .and_then(|row| row.try_get(0))
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!("a device named {name:?} exists already"))
            } else {
                backend(e)
            }
        })?;
        for tag in tags {
            sqlx::query(
                "INSERT INTO device_tags (device_id, tag) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(id)
            .bind(tag)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        self.device(id).await
    }

    async fn list_devices(&self) -> StoreResult<Vec<Device>> {
        self.devices_where("d.deleted_at IS NULL", None).await
    }

    async fn device_by_name(&self, name: &str) -> StoreResult<Device> {
        let sql = format!(
            "SELECT {} FROM devices d WHERE d.name = $1",
            self.device_columns()
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?
            .ok_or_else(|| StoreError::NotFound(format!("no device named {name:?}")))?;
        device_from_row(&row).map_err(db)
    }

    async fn device(&self, id: i64) -> StoreResult<Device> {
        let sql = format!(
            "SELECT {} FROM devices d WHERE d.id = $1",
            self.device_columns()
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?
            .ok_or_else(|| StoreError::NotFound(format!("no device {id}")))?;
        device_from_row(&row).map_err(db)
    }

    async fn device_by_token(&self, token_hash: &[u8; 32]) -> StoreResult<Option<TokenOwner>> {
        // The current token of a device, else a token a rotation replaced.
        let row = sqlx::query(
            "SELECT id, name, revoked_at, deleted_at, 0 AS replaced FROM devices \
             WHERE token_hash = $1 \
             UNION ALL SELECT d.id, d.name, d.revoked_at, d.deleted_at, 1 FROM retired_tokens r \
             JOIN devices d ON d.id = r.device_id WHERE r.token_hash = $1",
        )
        .bind(&token_hash[..])
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        let Some(row) = row else { return Ok(None) };
        let owner = (|| {
            let revoked: Option<i64> = row.try_get("revoked_at")?;
            let deleted: Option<i64> = row.try_get("deleted_at")?;
            let replaced: i64 = row.try_get("replaced")?;
            let standing = match (deleted, replaced, revoked) {
                (Some(_), ..) => Standing::Deleted,
                (None, 1, _) => Standing::Replaced,
                (None, _, Some(_)) => Standing::Revoked,
                (None, _, None) => Standing::Active,
            };
            Ok::<_, sqlx::Error>(TokenOwner {
                device_id: row.try_get("id")?,
                name: row.try_get("name")?,
                standing,
            })
        })()
        .map_err(db)?;
        Ok(Some(owner))
    }

    async fn devices_for_target(&self, target: &Target) -> StoreResult<Vec<Device>> {
        let named = |device: Device| match (device.deleted_at, device.revoked_at) {
            (Some(_), _) => Err(StoreError::Conflict(format!(
                "device {:?} was deleted",
                device.name
            ))),
            (None, Some(_)) => Err(StoreError::Conflict(format!(
                "device {:?} is revoked: give it a new token to take it back \
                 (airlift device rotate-token {})",
                device.name, device.name
            ))),
            (None, None) => Ok(device),
        };
        match target {
            Target::Device(name) => Ok(vec![named(self.device_by_name(name).await?)?]),
            Target::Devices(names) => {
                let mut seen = std::collections::HashSet::new();
                let mut devices = Vec::with_capacity(names.len());
                for name in names.iter().filter(|n| seen.insert(*n)) {
                    devices.push(named(self.device_by_name(name).await?)?);
                }
                Ok(devices)
            }
            Target::All => {
                self.devices_where("d.deleted_at IS NULL AND d.revoked_at IS NULL", None)
                    .await
            }
            Target::Tag(tag) => {
                self.devices_where(
                    "d.id IN (SELECT device_id FROM device_tags WHERE tag = $1) \
                     AND d.deleted_at IS NULL AND d.revoked_at IS NULL",
                    Some(tag),
                )
                .await
            }
        }
    }

    async fn record_statuses(&self, statuses: &[(i64, DeviceStatus)]) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        // One statement per 500 devices, not one per device: a second of
        // check-ins from a large fleet is tens of thousands of statuses, and
        // every statement is a round trip to the database. Conditional: a
        // status is written only over an older one, so a flush that comes
        // late (another instance's, or a slow one) never overwrites what
        // the device reported since.
        for chunk in statuses.chunks(500) {
            let mut sql = Sql::new(
                "UPDATE devices SET last_seen = v.column2, chip_id = v.column3, \
                 project = v.column4, version = v.column5, sha256 = v.column6, \
                 security_version = v.column7, slot = v.column8, state = v.column9, \
                 boot_count = v.column10 FROM (VALUES ",
            );
            sql.rows(chunk, |sql, (device_id, s)| {
                sql.list([*device_id])
                    .push(", ")
                    .list([s.last_seen, s.chip_id])
                    .push(", ")
                    .list([&s.project, &s.version, &s.sha256])
                    .push(", ")
                    .list([s.security_version, s.slot])
                    .push(", ")
                    .bind(&s.state)
                    .push(", ")
                    .bind(s.boot_count);
            });
            sql.push(
                ") AS v WHERE devices.id = v.column1 \
                 AND (devices.last_seen IS NULL OR devices.last_seen <= v.column2)",
            );
            sql.query()?.execute(&mut *tx).await.map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }

    async fn revoke_device(&self, name: &str, now: i64) -> StoreResult<(Device, Vec<i64>)> {
        self.retrying(|| self.try_take_back(name, TakeBack::Revoke, now))
            .await
    }

    async fn rotate_device_token(
        &self,
        name: &str,
        token_hash: &[u8; 32],
        now: i64,
    ) -> StoreResult<Device> {
        self.retrying(|| self.try_rotate_device_token(name, token_hash, now))
            .await
    }

    async fn delete_device(&self, name: &str, now: i64) -> StoreResult<(Device, Vec<i64>)> {
        self.retrying(|| self.try_take_back(name, TakeBack::Delete, now))
            .await
    }
}

/// How [`SqlStore::try_take_back`] takes a device's identity back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TakeBack {
    Revoke,
    Delete,
}

impl SqlStore {
    /// The live or deleted device named `name`, its row locked until `conn`'s
    /// transaction ends (PostgreSQL; SQLite's writer holds the database).
    async fn lock_device(&self, conn: &mut Conn, name: &str) -> StoreResult<Device> {
        let sql = format!(
            "SELECT id FROM devices WHERE name = $1{}",
            self.dialect.for_update()
        );
        let id: i64 = sqlx::query(AssertSqlSafe(sql))
            .bind(name)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db)?
            .ok_or_else(|| StoreError::NotFound(format!("no device named {name:?}")))?
            .try_get(0)
            .map_err(db)?;
        self.device_in(conn, id).await
    }

    /// One device, read in `conn`'s transaction.
    async fn device_in(&self, conn: &mut Conn, id: i64) -> StoreResult<Device> {
        let sql = format!(
            "SELECT {} FROM devices d WHERE d.id = $1",
            self.device_columns()
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_one(conn)
            .await
            .map_err(db)?;
        device_from_row(&row).map_err(db)
    }

    /// Revokes or deletes a device in one transaction that also cancels its
    /// unfinished assignments (holding the assignment lock, so no new
    /// deployment can give it one meanwhile) and tells the other instances.
    async fn try_take_back(
        &self,
        name: &str,
        how: TakeBack,
        now: i64,
    ) -> StoreResult<(Device, Vec<i64>)> {
        let mut tx = self.begin_assignments().await?;
        let device = self.lock_device(&mut tx, name).await?;
        if device.deleted_at.is_some() {
            return Err(StoreError::Conflict(format!(
                "device {name:?} was deleted already"
            )));
        }
        let reason = match how {
            TakeBack::Revoke => {
                if device.revoked_at.is_some() {
                    return Err(StoreError::Conflict(format!(
                        "device {name:?} is revoked already"
                    )));
                }
                sqlx::query("UPDATE devices SET revoked_at = $1 WHERE id = $2")
                    .bind(now)
                    .bind(device.id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                "device_revoked"
            }
            TakeBack::Delete => {
                sqlx::query("DELETE FROM device_tags WHERE device_id = $1")
                    .bind(device.id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                sqlx::query("UPDATE devices SET name = $1, deleted_at = $2 WHERE id = $3")
                    .bind(tombstone_name(&device.name, device.id))
                    .bind(now)
                    .bind(device.id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                "device_deleted"
            }
        };
        let sql = format!(
            "UPDATE assignments SET state = 'cancelled', reason = $1, updated_at = $2 \
             WHERE device_id = $3 AND state IN {UNFINISHED} RETURNING deployment_id"
        );
        let cancelled = sqlx::query(AssertSqlSafe(sql))
            .bind(reason)
            .bind(now)
            .bind(device.id)
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<Vec<i64>, _>>()
            .map_err(db)?;
        self.notify_identity(&mut tx, device.id).await?;
        let device = self.device_in(&mut tx, device.id).await?;
        tx.commit().await.map_err(db)?;
        Ok((device, cancelled))
    }

    async fn try_rotate_device_token(
        &self,
        name: &str,
        token_hash: &[u8; 32],
        now: i64,
    ) -> StoreResult<Device> {
        let mut tx = self.begin_write().await?;
        let device = self.lock_device(&mut tx, name).await?;
        if device.deleted_at.is_some() {
            return Err(StoreError::Conflict(format!("device {name:?} was deleted")));
        }
        sqlx::query(
            "INSERT INTO retired_tokens (token_hash, device_id, retired_at) \
             SELECT token_hash, id, $1 FROM devices WHERE id = $2",
        )
        .bind(now)
        .bind(device.id)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        sqlx::query("UPDATE devices SET token_hash = $1, revoked_at = NULL WHERE id = $2")
            .bind(&token_hash[..])
            .bind(device.id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        self.notify_identity(&mut tx, device.id).await?;
        let device = self.device_in(&mut tx, device.id).await?;
        tx.commit().await.map_err(db)?;
        Ok(device)
    }
}

#[async_trait]
impl DeploymentStore for SqlStore {
    async fn create_deployment(
        &self,
        release_id: i64,
        target: &str,
        assignments: &[NewAssignment],
    ) -> StoreResult<Deployment> {
        let id = self
            .retrying(|| self.try_create_deployment(release_id, target, assignments))
            .await?;
        self.deployment(id).await
    }

    async fn list_deployments(&self) -> StoreResult<Vec<Deployment>> {
        let rows = sqlx::query(
            "SELECT id, release_id, target, state, created_at FROM deployments ORDER BY id DESC",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        all(&rows)
    }

    async fn deployment(&self, id: i64) -> StoreResult<Deployment> {
        let row = sqlx::query(
            "SELECT id, release_id, target, state, created_at FROM deployments WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?
        .ok_or_else(|| StoreError::NotFound(format!("no deployment {id}")))?;
        Deployment::from_row(&row).map_err(db)
    }

    async fn assignments(&self, deployment_id: i64) -> StoreResult<Vec<Assignment>> {
        let rows = sqlx::query(
            "SELECT a.deployment_id, a.device_id, d.name, a.wave, a.state, a.reason, \
             a.updated_at FROM assignments a JOIN devices d ON d.id = a.device_id \
             WHERE a.deployment_id = $1 ORDER BY d.name",
        )
        .bind(deployment_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        all(&rows)
    }

    async fn cancel_deployment(&self, id: i64) -> StoreResult<Deployment> {
        self.retrying(|| self.try_cancel_deployment(id)).await?;
        self.deployment(id).await
    }

    async fn open_offer(&self, device_id: i64) -> StoreResult<Option<Offer>> {
        let row = sqlx::query(
            "SELECT a.deployment_id, a.state AS assignment_state, r.id, r.sha256, r.size, \
             r.chip_id, r.project, r.version, r.security_version, r.key_id, \
             r.signed_by_server, r.manifest, r.created_at \
             FROM assignments a JOIN deployments p ON p.id = a.deployment_id \
             JOIN releases r ON r.id = p.release_id \
             WHERE a.device_id = $1 AND a.state IN \
             ('pending', 'offered', 'downloading', 'installed', 'booted') \
             ORDER BY a.deployment_id DESC LIMIT 1",
        )
        .bind(device_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        let Some(row) = row else { return Ok(None) };
        let offer = (|| {
            Ok::<_, sqlx::Error>(Offer {
                deployment_id: row.try_get("deployment_id")?,
                state: row.try_get("assignment_state")?,
                release: release_from_row(&row)?,
            })
        })()
        .map_err(db)?;
        Ok(Some(offer))
    }

    async fn assignment(
        &self,
        deployment_id: i64,
        device_id: i64,
    ) -> StoreResult<Option<Assignment>> {
        let row = sqlx::query(
            "SELECT a.deployment_id, a.device_id, d.name, a.wave, a.state, a.reason, \
             a.updated_at FROM assignments a JOIN devices d ON d.id = a.device_id \
             WHERE a.deployment_id = $1 AND a.device_id = $2",
        )
        .bind(deployment_id)
        .bind(device_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref()
            .map(Assignment::from_row)
            .transpose()
            .map_err(db)
    }

    async fn artifact_assigned(&self, device_id: i64, sha256: &str) -> StoreResult<bool> {
        let found = sqlx::query(
            "SELECT 1 FROM assignments a JOIN deployments p ON p.id = a.deployment_id \
             JOIN releases r ON r.id = p.release_id \
             WHERE a.device_id = $1 AND r.sha256 = $2 \
             AND a.state NOT IN ('skipped', 'cancelled', 'waiting') \
             LIMIT 1",
        )
        .bind(device_id)
        .bind(sha256)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        Ok(found.is_some())
    }
}

impl SqlStore {
    async fn try_create_deployment(
        &self,
        release_id: i64,
        target: &str,
        assignments: &[NewAssignment],
    ) -> StoreResult<i64> {
        let now = now_ms();
        let mut tx = self.begin_assignments().await?;
        let id = insert_deployment(&mut tx, release_id, target, now).await?;
        let rows: Vec<NewRow<'_>> = assignments
            .iter()
            .map(|a| (a.device_id, 0, a.state.as_str(), a.reason.as_deref()))
            .collect();
        insert_assignments(&mut tx, id, &rows, now).await?;
        let offered: Vec<i64> = rows
            .iter()
            .filter(|r| r.2 == AssignmentState::Pending.as_str())
            .map(|r| r.0)
            .collect();
        self.notify_offers(&mut tx, Some(&offered)).await?;
        tx.commit().await.map_err(db)?;
        Ok(id)
    }

    async fn try_cancel_deployment(&self, id: i64) -> StoreResult<()> {
        let mut tx = self.begin_assignments().await?;
        let rollout: Option<i64> = sqlx::query("SELECT id FROM rollouts WHERE deployment_id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .and_then(|row| row.map(|r| r.try_get(0)).transpose())
            .map_err(db)?;
        if let Some(rollout) = rollout {
            return Err(StoreError::Conflict(format!(
                "deployment {id} belongs to rollout {rollout}: cancel the rollout"
            )));
        }
        let changed = sqlx::query(
            "UPDATE deployments SET state = 'cancelled' WHERE id = $1 AND state = 'active'",
        )
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        if changed == 0 {
            drop(tx);
            let deployment = self.deployment(id).await?;
            return Err(StoreError::Conflict(format!(
                "deployment {id} is {} already",
                deployment.state
            )));
        }
        let devices = cancel_assignments(&mut tx, id, "cancelled", now_ms()).await?;
        self.notify_offers(&mut tx, Some(&devices)).await?;
        tx.commit().await.map_err(db)
    }
}

impl SqlStore {
    /// [`EventStore::record_writes`] in one transaction: three statements
    /// per batch, not three per write (every statement is a round trip).
    async fn try_record_writes(
        &self,
        writes: &[Write],
        next: NextState,
    ) -> StoreResult<Vec<EventOutcome>> {
        // The transaction reads the assignments, then moves them: nothing
        // may move them in between (IMMEDIATE in SQLite, row locks taken in
        // key order in PostgreSQL).
        let mut tx = self.begin_write().await?;
        let now = now_ms();
        let keys = super::write_keys(writes);
        let mut states: HashMap<(i64, i64), String> = HashMap::new();
        if !keys.is_empty() {
            let mut sql = Sql::new(
                "SELECT deployment_id, device_id, state FROM assignments \
                 WHERE (deployment_id, device_id) IN (VALUES ",
            );
            sql.rows(&keys, |sql, (deployment_id, device_id)| {
                sql.list([*deployment_id, *device_id]);
            });
            sql.push(") ORDER BY deployment_id, device_id")
                .push(self.dialect.for_update());
            for row in sql.query()?.fetch_all(&mut *tx).await.map_err(db)? {
                let key = (row.try_get(0).map_err(db)?, row.try_get(1).map_err(db)?);
                states.insert(key, row.try_get(2).map_err(db)?);
            }
        }
        let plan = super::plan_writes(writes, states, next);
        if !plan.moves.is_empty() {
            let mut sql = Sql::new("UPDATE assignments SET state = v.column3, ");
            sql.push("reason = coalesce(v.column4, assignments.reason), updated_at = ")
                .bind(now)
                .push(" FROM (VALUES ");
            sql.rows(&plan.moves, |sql, m| {
                sql.list([m.deployment_id, m.device_id])
                    .push(", ")
                    .list([Some(m.to), m.reason]);
            });
            sql.push(
                ") AS v WHERE assignments.deployment_id = v.column1 \
                 AND assignments.device_id = v.column2",
            );
            sql.query()?.execute(&mut *tx).await.map_err(db)?;
        }
        if !plan.events.is_empty() {
            let mut sql = Sql::new(
                "INSERT INTO events (device_id, deployment_id, kind, reason, detail, at) VALUES ",
            );
            sql.rows(&plan.events, |sql, e| {
                sql.list([Some(e.device_id), e.deployment_id])
                    .push(", ")
                    .list([Some(&e.kind), e.reason.as_ref(), e.detail.as_ref()])
                    .push(", ")
                    .bind(e.at(now));
            });
            sql.query()?.execute(&mut *tx).await.map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(plan.outcomes)
    }
}

/// Cancels a deployment's unfinished assignments with `reason`; returns
/// their devices.
async fn cancel_assignments(
    conn: &mut Conn,
    deployment_id: i64,
    reason: &str,
    now: i64,
) -> StoreResult<Vec<i64>> {
    let sql = format!(
        "UPDATE assignments SET state = 'cancelled', reason = $1, updated_at = $2 \
         WHERE deployment_id = $3 AND state IN {UNFINISHED} RETURNING device_id"
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(reason)
        .bind(now)
        .bind(deployment_id)
        .fetch_all(conn)
        .await
        .map_err(db)?;
    rows.iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(db)
}

#[async_trait]
impl EventStore for SqlStore {
    async fn add_event(&self, e: &NewEvent) -> StoreResult<i64> {
        sqlx::query(
            "INSERT INTO events (device_id, deployment_id, kind, reason, detail, at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(e.device_id)
        .bind(e.deployment_id)
        .bind(&e.kind)
        .bind(&e.reason)
        .bind(&e.detail)
        .bind(e.at(now_ms()))
        .fetch_one(&self.pool)
        .await
        .and_then(|row| row.try_get(0))
        .map_err(db)
    }

    async fn record_writes(
        &self,
        writes: &[Write],
        next: NextState,
    ) -> StoreResult<Vec<EventOutcome>> {
        self.retrying(|| self.try_record_writes(writes, next)).await
    }

    async fn events(&self, device_id: Option<i64>, limit: i64) -> StoreResult<Vec<StoredEvent>> {
        let rows = sqlx::query(
            "SELECT e.id, d.name, e.deployment_id, e.kind, e.reason, e.detail, e.at \
             FROM events e JOIN devices d ON d.id = e.device_id \
             WHERE ($1 IS NULL OR e.device_id = $1) ORDER BY e.id DESC LIMIT $2",
        )
        .bind(device_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        all(&rows)
    }
}

#[async_trait]
impl AuditStore for SqlStore {
    async fn add_audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: &str,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO audit (at, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(now_ms())
        .bind(actor)
        .bind(action)
        .bind(target)
        .bind(detail)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn audit(&self, limit: i64) -> StoreResult<Vec<AuditRecord>> {
        let rows = sqlx::query(
            "SELECT id, at, actor, action, target, detail FROM audit ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        all(&rows)
    }
}

#[async_trait]
impl CredentialStore for SqlStore {
    async fn add_admin_token(&self, name: &str, token_hash: &[u8; 32]) -> StoreResult<()> {
        sqlx::query("INSERT INTO admin_tokens (name, token_hash, created_at) VALUES ($1, $2, $3)")
            .bind(name)
            .bind(&token_hash[..])
            .bind(now_ms())
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn admin_token(&self, token_hash: &[u8; 32]) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT name FROM admin_tokens WHERE token_hash = $1")
            .bind(&token_hash[..])
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.map(|row| row.try_get("name")).transpose().map_err(db)
    }

    async fn add_first_admin_token(&self, name: &str, token_hash: &[u8; 32]) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(FIRST_ADMIN_LOCK)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        let added = sqlx::query(
            "INSERT INTO admin_tokens (name, token_hash, created_at) SELECT $1, $2, $3 \
             WHERE NOT EXISTS (SELECT 1 FROM admin_tokens)",
        )
        .bind(name)
        .bind(&token_hash[..])
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        tx.commit().await.map_err(db)?;
        Ok(added == 1)
    }

    async fn setting_or_insert(&self, name: &str, value: &str) -> StoreResult<String> {
        sqlx::query("INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(name)
            .bind(value)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        sqlx::query("SELECT value FROM settings WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await
            .and_then(|row| row.try_get(0))
            .map_err(db)
    }

    async fn count_admin_tokens(&self) -> StoreResult<i64> {
        sqlx::query("SELECT count(*) FROM admin_tokens")
            .fetch_one(&self.pool)
            .await
            .and_then(|row| row.try_get(0))
            .map_err(db)
    }

    async fn add_enrollment_secret(
        &self,
        name: &str,
        tags: &[String],
        name_pattern: Option<&str>,
        secret_hash: &[u8; 32],
    ) -> StoreResult<EnrollmentSecret> {
        let row = sqlx::query(
            "INSERT INTO enrollment_secrets (name, secret_hash, tags, name_pattern, created_at) \
             VALUES ($1, $2, $3, $4, $5) RETURNING name, tags, name_pattern, created_at",
        )
        .bind(name)
        .bind(&secret_hash[..])
        .bind(tags.join("\n"))
        .bind(name_pattern)
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!("an enrolment secret named {name:?} exists already"))
            } else {
                backend(e)
            }
        })?;
        secret_from_row(&row).map_err(db)
    }

    async fn enrollment_secrets(&self) -> StoreResult<Vec<EnrollmentSecret>> {
        let rows = sqlx::query(
            "SELECT name, tags, name_pattern, created_at FROM enrollment_secrets ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(secret_from_row)
            .collect::<Result<_, _>>()
            .map_err(db)
    }

    async fn enrollment_secret(
        &self,
        secret_hash: &[u8; 32],
    ) -> StoreResult<Option<EnrollmentSecret>> {
        let row = sqlx::query(
            "SELECT name, tags, name_pattern, created_at FROM enrollment_secrets \
             WHERE secret_hash = $1",
        )
        .bind(&secret_hash[..])
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref().map(secret_from_row).transpose().map_err(db)
    }

    async fn delete_enrollment_secret(&self, name: &str) -> StoreResult<()> {
        let deleted = sqlx::query("DELETE FROM enrollment_secrets WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(db)?
            .rows_affected();
        if deleted == 0 {
            return Err(StoreError::NotFound(format!(
                "no enrolment secret named {name:?}"
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl SessionStore for SqlStore {
    async fn open_session(
        &self,
        session_hash: &[u8; 32],
        admin_token_hash: &[u8; 32],
        now: i64,
        expires_at: i64,
    ) -> StoreResult<Option<String>> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let admin = sqlx::query(
            "INSERT INTO sessions (token_hash, admin_token_id, created_at, expires_at) \
             SELECT $1, id, $2, $3 FROM admin_tokens WHERE token_hash = $4 \
             RETURNING (SELECT name FROM admin_tokens WHERE id = admin_token_id)",
        )
        .bind(&session_hash[..])
        .bind(now)
        .bind(expires_at)
        .bind(&admin_token_hash[..])
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?
        .map(|row| row.try_get::<String, _>(0))
        .transpose()
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(admin)
    }

    async fn session(&self, session_hash: &[u8; 32], now: i64) -> StoreResult<Option<Session>> {
        let row = sqlx::query(
            "SELECT a.name, s.expires_at FROM sessions s \
             JOIN admin_tokens a ON a.id = s.admin_token_id \
             WHERE s.token_hash = $1 AND s.expires_at > $2",
        )
        .bind(&session_hash[..])
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.map(|row| {
            Ok(Session {
                admin: row.try_get(0)?,
                expires_at: row.try_get(1)?,
            })
        })
        .transpose()
        .map_err(|e: sqlx::Error| backend(e))
    }

    async fn close_session(&self, session_hash: &[u8; 32]) -> StoreResult<bool> {
        let deleted = sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
            .bind(&session_hash[..])
            .execute(&self.pool)
            .await
            .map_err(db)?
            .rows_affected();
        Ok(deleted > 0)
    }
}

/// The states of an unfinished assignment, as an SQL list.
const OPEN_STATES: &str = "('pending', 'offered', 'downloading', 'installed', 'booted')";

/// Appends `filter` as conditions on `devices d` (after a `WHERE` condition).
fn push_device_filter(query: &mut Sql, filter: &DeviceFilter) {
    if let Some(search) = &filter.search {
        let escaped = search
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        query
            .push(" AND d.name LIKE ")
            .bind(format!("%{escaped}%"))
            .push(" ESCAPE '\\'");
    }
    if let Some(tag) = &filter.tag {
        query
            .push(" AND d.id IN (SELECT device_id FROM device_tags WHERE tag = ")
            .bind(tag.clone())
            .push(")");
    }
    if let Some(version) = &filter.version {
        query.push(" AND d.version = ").bind(version.clone());
    }
    if let Some(state) = &filter.state {
        query.push(" AND d.state = ").bind(state.clone());
    }
    match filter.last_seen {
        Some(LastSeen::Since(at)) => {
            query.push(" AND d.last_seen >= ").bind(at);
        }
        Some(LastSeen::Before(at)) => {
            query.push(" AND d.last_seen < ").bind(at);
        }
        Some(LastSeen::Never) => {
            query.push(" AND d.last_seen IS NULL");
        }
        None => {}
    }
}

/// Every row as a `T`.
fn all<T: for<'r> FromRow<'r, AnyRow>>(rows: &[AnyRow]) -> StoreResult<Vec<T>> {
    rows.iter()
        .map(T::from_row)
        .collect::<Result<_, _>>()
        .map_err(db)
}

fn tallies(rows: &[AnyRow]) -> StoreResult<Vec<Tally>> {
    rows.iter()
        .map(|row| {
            Ok(Tally {
                value: row.try_get(0)?,
                devices: row.try_get(1)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(db)
}

#[async_trait]
impl ViewStore for SqlStore {
    async fn search_devices(
        &self,
        filter: &DeviceFilter,
        order: DeviceOrder,
        limit: i64,
        offset: i64,
    ) -> StoreResult<DevicePage> {
        let mut count = Sql::new("SELECT count(*) FROM devices d WHERE d.deleted_at IS NULL");
        push_device_filter(&mut count, filter);
        let total: i64 = count
            .query()?
            .fetch_one(&self.pool)
            .await
            .and_then(|row| row.try_get(0))
            .map_err(db)?;
        // The open assignment (at most one, see DeploymentStore::open_offer)
        // comes from the assignments_by_device index, for this page only.
        let mut page = Sql::new(format!(
            "SELECT {}, a.deployment_id AS open_deployment, \
             a.state AS open_state, r.version AS open_version \
             FROM devices d \
             LEFT JOIN assignments a ON a.device_id = d.id AND a.state IN {OPEN_STATES} \
             AND a.deployment_id = (SELECT max(deployment_id) FROM assignments \
                 WHERE device_id = d.id AND state IN {OPEN_STATES}) \
             LEFT JOIN deployments p ON p.id = a.deployment_id \
             LEFT JOIN releases r ON r.id = p.release_id WHERE d.deleted_at IS NULL",
            self.device_columns()
        ));
        push_device_filter(&mut page, filter);
        page.push(match order {
            DeviceOrder::Name => " ORDER BY d.name",
            DeviceOrder::LastSeen => " ORDER BY d.last_seen IS NULL, d.last_seen, d.name",
        });
        page.push(" LIMIT ")
            .bind(limit)
            .push(" OFFSET ")
            .bind(offset);
        let rows = page.query()?.fetch_all(&self.pool).await.map_err(db)?;
        let devices = rows
            .iter()
            .map(|row| {
                let assignment = match row.try_get::<Option<i64>, _>("open_deployment")? {
                    Some(deployment_id) => Some(OpenAssignment {
                        deployment_id,
                        state: row.try_get("open_state")?,
                        version: row.try_get("open_version")?,
                    }),
                    None => None,
                };
                Ok(DeviceSummary {
                    device: device_from_row(row)?,
                    assignment,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db)?;
        Ok(DevicePage { total, devices })
    }

    async fn fleet_counts(&self, seen_since: i64) -> StoreResult<FleetCounts> {
        let row = sqlx::query(
            "SELECT count(*), count(*) FILTER (WHERE last_seen IS NULL), \
             count(*) FILTER (WHERE last_seen < $1) FROM devices WHERE deleted_at IS NULL",
        )
        .bind(seen_since)
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        let (devices, never_seen, unseen) =
            (|| Ok::<_, sqlx::Error>((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))()
                .map_err(db)?;
        let by_version = self
            .tally(
                "SELECT version, count(*) AS n FROM devices WHERE deleted_at IS NULL \
                 GROUP BY version \
                 ORDER BY n DESC, version IS NULL, version",
            )
            .await?;
        let by_state = self
            .tally(
                "SELECT state, count(*) AS n FROM devices WHERE deleted_at IS NULL \
                 GROUP BY state \
                 ORDER BY n DESC, state IS NULL, state",
            )
            .await?;
        let by_tag = self
            .tally("SELECT tag, count(*) FROM device_tags GROUP BY tag ORDER BY tag")
            .await?;
        Ok(FleetCounts {
            devices,
            never_seen,
            unseen,
            by_version,
            by_state,
            by_tag,
        })
    }

    async fn recent_problems(&self, limit: i64) -> StoreResult<Vec<Problem>> {
        // The condition repeats the partial index's, so SQLite uses it.
        let sql = format!(
            "SELECT d.name AS device, a.deployment_id, r.version, a.state, a.reason, \
             a.updated_at FROM assignments a{} \
             JOIN devices d ON d.id = a.device_id \
             JOIN deployments p ON p.id = a.deployment_id \
             JOIN releases r ON r.id = p.release_id \
             WHERE a.state IN ('failed', 'rolled_back') ORDER BY a.updated_at DESC LIMIT $1",
            self.dialect.indexed_by("assignments_problems")
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        all(&rows)
    }

    async fn device_assignments(
        &self,
        device_id: i64,
        limit: i64,
    ) -> StoreResult<Vec<DeviceAssignment>> {
        let rows = sqlx::query(
            "SELECT a.deployment_id, p.target, r.version, r.sha256, a.state, a.reason, \
             p.created_at, a.updated_at FROM assignments a \
             JOIN deployments p ON p.id = a.deployment_id \
             JOIN releases r ON r.id = p.release_id \
             WHERE a.device_id = $1 ORDER BY a.deployment_id DESC LIMIT $2",
        )
        .bind(device_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        all(&rows)
    }

    async fn deployments_in_progress(&self) -> StoreResult<Vec<i64>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT DISTINCT deployment_id FROM assignments{} \
             WHERE state IN {OPEN_STATES} ORDER BY deployment_id DESC",
            self.dialect.indexed_by("assignments_open")
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(db)
    }

    async fn assignment_tallies(
        &self,
        deployment_ids: &[i64],
    ) -> StoreResult<Vec<AssignmentTally>> {
        if deployment_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut query = Sql::new(
            "SELECT deployment_id, state, reason, count(*) AS devices FROM assignments \
             WHERE deployment_id IN (",
        );
        query
            .list(deployment_ids.iter().copied())
            .push(") GROUP BY deployment_id, state, reason");
        let rows = query.query()?.fetch_all(&self.pool).await.map_err(db)?;
        all(&rows)
    }

    async fn assignments_page(
        &self,
        deployment_id: i64,
        states: &[String],
        limit: i64,
        offset: i64,
    ) -> StoreResult<(i64, Vec<Assignment>)> {
        let push_states = |query: &mut Sql| {
            if !states.is_empty() {
                query.push(" AND a.state IN (").list(states).push(")");
            }
        };
        let mut count = Sql::new("SELECT count(*) FROM assignments a WHERE ");
        count.push("a.deployment_id = ").bind(deployment_id);
        push_states(&mut count);
        let total: i64 = count
            .query()?
            .fetch_one(&self.pool)
            .await
            .and_then(|row| row.try_get(0))
            .map_err(db)?;
        let mut page = Sql::new(
            "SELECT a.deployment_id, a.device_id, d.name, a.wave, a.state, a.reason, \
             a.updated_at FROM assignments a JOIN devices d ON d.id = a.device_id WHERE ",
        );
        page.push("a.deployment_id = ").bind(deployment_id);
        push_states(&mut page);
        page.push(" ORDER BY d.name LIMIT ")
            .bind(limit)
            .push(" OFFSET ")
            .bind(offset);
        let rows = page.query()?.fetch_all(&self.pool).await.map_err(db)?;
        Ok((total, all(&rows)?))
    }

    async fn running_versions(&self, deployment_id: i64) -> StoreResult<Vec<Tally>> {
        let rows = sqlx::query(
            "SELECT d.version, count(*) AS n FROM assignments a \
             JOIN devices d ON d.id = a.device_id WHERE a.deployment_id = $1 \
             GROUP BY d.version ORDER BY n DESC, d.version IS NULL, d.version",
        )
        .bind(deployment_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        tallies(&rows)
    }

    async fn audit_before(&self, before: Option<i64>, limit: i64) -> StoreResult<Vec<AuditRecord>> {
        let rows = sqlx::query(
            "SELECT id, at, actor, action, target, detail FROM audit \
             WHERE ($1 IS NULL OR id < $1) ORDER BY id DESC LIMIT $2",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        all(&rows)
    }
}

type Conn = sqlx::AnyConnection;

async fn insert_deployment(
    conn: &mut Conn,
    release_id: i64,
    target: &str,
    now: i64,
) -> StoreResult<i64> {
    sqlx::query(
        "INSERT INTO deployments (release_id, target, state, created_at) \
         VALUES ($1, $2, 'active', $3) RETURNING id",
    )
    .bind(release_id)
    .bind(target)
    .bind(now)
    .fetch_one(conn)
    .await
    .and_then(|row| row.try_get(0))
    .map_err(db)
}

/// An assignment to insert: device, wave, state, reason.
type NewRow<'a> = (i64, u32, &'a str, Option<&'a str>);

/// Inserts a new deployment's assignments, a few statements per 500
/// devices (not two per device: a deployment to 10,000 devices is one
/// short transaction). The newest work wins a device: a `pending`
/// assignment supersedes the device's unfinished assignments elsewhere, a
/// `waiting` one (a rollout's) its waiting ones (the open ones go when its
/// wave opens). The SQL built here holds only placeholders and constants.
async fn insert_assignments(
    conn: &mut Conn,
    deployment_id: i64,
    rows: &[NewRow<'_>],
    now: i64,
) -> StoreResult<()> {
    for chunk in rows.chunks(500) {
        for (state, superseded) in [("pending", UNFINISHED), ("waiting", "('waiting')")] {
            let devices: Vec<i64> = chunk.iter().filter(|r| r.2 == state).map(|r| r.0).collect();
            if devices.is_empty() {
                continue;
            }
            let mut sql = Sql::new("UPDATE assignments SET state = 'cancelled', ");
            sql.push("reason = 'superseded', updated_at = ")
                .bind(now)
                .push(&format!(" WHERE state IN {superseded} AND device_id IN ("))
                .list(devices)
                .push(")");
            sql.query()?.execute(&mut *conn).await.map_err(db)?;
        }
        let mut sql = Sql::new(
            "INSERT INTO assignments (deployment_id, device_id, wave, state, reason, \
             updated_at) VALUES ",
        );
        sql.rows(chunk, |sql, (device_id, wave, state, reason)| {
            sql.list([deployment_id, *device_id, i64::from(*wave)])
                .push(", ")
                .list([Some(*state), *reason])
                .push(", ")
                .bind(now);
        });
        sql.query()?.execute(&mut *conn).await.map_err(db)?;
    }
    // The caller chose the devices before this transaction: one revoked or
    // deleted since (under the same lock, so before this) would be left an
    // assignment it can never take, which a rollout would wait for.
    let sql = format!(
        "UPDATE assignments SET state = 'cancelled', updated_at = $1, reason = \
         (SELECT CASE WHEN d.deleted_at IS NULL THEN 'device_revoked' ELSE 'device_deleted' END \
         FROM devices d WHERE d.id = assignments.device_id) \
         WHERE deployment_id = $2 AND state IN {UNFINISHED} AND device_id IN \
         (SELECT id FROM devices WHERE revoked_at IS NOT NULL OR deleted_at IS NOT NULL)"
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(now)
        .bind(deployment_id)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    Ok(())
}

const ROLLOUT_COLUMNS: &str = "id, release_id, deployment_id, target, plan, state, waves, opened, \
     succeeded_at, acknowledged_failures, paused_by, pause_reason, created_by, created_at, updated_at";

fn rollout_from_row(row: &AnyRow) -> StoreResult<Rollout> {
    let plan: String = row.try_get("plan").map_err(db)?;
    let state: String = row.try_get("state").map_err(db)?;
    let waves: String = row.try_get("waves").map_err(db)?;
    let pause_reason: Option<String> = row.try_get("pause_reason").map_err(db)?;
    let opened: i64 = row.try_get("opened").map_err(db)?;
    let accepted: i64 = row.try_get("acknowledged_failures").map_err(db)?;
    Ok(Rollout {
        id: row.try_get("id").map_err(db)?,
        release_id: row.try_get("release_id").map_err(db)?,
        deployment_id: row.try_get("deployment_id").map_err(db)?,
        target: row.try_get("target").map_err(db)?,
        plan: serde_json::from_str(&plan).map_err(backend)?,
        state: RolloutState::parse(&state)
            .ok_or_else(|| backend(format!("unknown rollout state {state:?}")))?,
        waves: serde_json::from_str(&waves).map_err(backend)?,
        opened: u32::try_from(opened).map_err(backend)?,
        succeeded_at: row.try_get("succeeded_at").map_err(db)?,
        accepted_failures: u64::try_from(accepted).map_err(backend)?,
        paused_by: row.try_get("paused_by").map_err(db)?,
        pause_reason: pause_reason
            .map(|r| serde_json::from_str(&r))
            .transpose()
            .map_err(backend)?,
        created_by: row.try_get("created_by").map_err(db)?,
        created_at: row.try_get("created_at").map_err(db)?,
        updated_at: row.try_get("updated_at").map_err(db)?,
    })
}

/// Reads a rollout; `lock` follows the `SELECT` (`FOR UPDATE` when the
/// transaction will change it, see [`Dialect::for_update`]).
async fn read_rollout(conn: &mut Conn, id: i64, lock: &str) -> StoreResult<Rollout> {
    let sql = format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = $1{lock}");
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(conn)
        .await
        .map_err(db)?
        .ok_or_else(|| StoreError::NotFound(format!("no rollout {id}")))?;
    rollout_from_row(&row)
}

/// Devices per wave and state of a deployment, for a rollout of `waves` waves.
async fn read_tallies(conn: &mut Conn, rollout: &Rollout) -> StoreResult<Vec<WaveTally>> {
    let mut tallies = vec![WaveTally::default(); rollout.waves.len() + 1];
    let Some(deployment_id) = rollout.deployment_id else {
        return Ok(tallies);
    };
    let rows = sqlx::query(
        "SELECT wave, state, reason, count(*) FROM assignments WHERE deployment_id = $1 \
         GROUP BY wave, state, reason",
    )
    .bind(deployment_id)
    .fetch_all(conn)
    .await
    .map_err(db)?;
    for row in rows {
        let wave: i64 = row.try_get(0).map_err(db)?;
        let state: String = row.try_get(1).map_err(db)?;
        let reason: Option<String> = row.try_get(2).map_err(db)?;
        let count: i64 = row.try_get(3).map_err(db)?;
        let state = AssignmentState::parse(&state)
            .ok_or_else(|| backend(format!("unknown assignment state {state:?}")))?;
        let wave = usize::try_from(wave).map_err(backend)?;
        if tallies.len() <= wave {
            tallies.resize(wave + 1, WaveTally::default());
        }
        tallies[wave].add(
            state,
            reason.as_deref(),
            u64::try_from(count).map_err(backend)?,
        );
    }
    Ok(tallies)
}

async fn add_rollout_event(
    conn: &mut Conn,
    rollout: &Rollout,
    now: i64,
    actor: &str,
    kind: &str,
    detail: &serde_json::Value,
    audit: bool,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO rollout_events (rollout_id, at, actor, kind, state, wave, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(rollout.id)
    .bind(now)
    .bind(actor)
    .bind(kind)
    .bind(rollout.state.as_str())
    .bind(i64::from(rollout.opened))
    .bind(detail.to_string())
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    if audit {
        sqlx::query(
            "INSERT INTO audit (at, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(now)
        .bind(actor)
        .bind(format!("rollout {kind}"))
        .bind(format!("rollout:{}", rollout.id))
        .bind(detail.to_string())
        .execute(conn)
        .await
        .map_err(db)?;
    }
    Ok(())
}

async fn write_rollout(conn: &mut Conn, r: &Rollout) -> StoreResult<()> {
    let pause_reason = r
        .pause_reason
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(backend)?;
    sqlx::query(
        "UPDATE rollouts SET deployment_id = $1, state = $2, waves = $3, opened = $4, \
         succeeded_at = $5, acknowledged_failures = $6, paused_by = $7, pause_reason = $8, \
         updated_at = $9 WHERE id = $10",
    )
    .bind(r.deployment_id)
    .bind(r.state.as_str())
    .bind(serde_json::to_string(&r.waves).map_err(backend)?)
    .bind(i64::from(r.opened))
    .bind(r.succeeded_at)
    .bind(i64::try_from(r.accepted_failures).map_err(backend)?)
    .bind(&r.paused_by)
    .bind(pause_reason)
    .bind(r.updated_at)
    .bind(r.id)
    .execute(conn)
    .await
    .map_err(db)?;
    Ok(())
}

/// Moves the devices of `deployment_id` listed in `ids` from one of the
/// states `from` (an SQL list) to `to`, with `reason` (or keeping theirs).
/// The SQL built here holds only placeholders and constants.
async fn move_devices(
    conn: &mut Conn,
    deployment_id: i64,
    ids: &[i64],
    from: &str,
    to: &str,
    reason: Option<&str>,
    now: i64,
) -> StoreResult<()> {
    for chunk in ids.chunks(500) {
        let mut sql = Sql::new("UPDATE assignments SET state = ");
        sql.bind(to)
            .push(", reason = coalesce(")
            .bind(reason)
            .push(", reason), updated_at = ")
            .bind(now)
            .push(" WHERE deployment_id = ")
            .bind(deployment_id)
            .push(&format!(" AND state IN {from} AND device_id IN ("))
            .list(chunk.iter().copied())
            .push(")");
        sql.query()?.execute(&mut *conn).await.map_err(db)?;
    }
    Ok(())
}

/// Device ids of a deployment's assignments in `state` (an SQL list) that
/// have not changed since `before` (all when `None`).
async fn devices_in(
    conn: &mut Conn,
    deployment_id: i64,
    states: &str,
    before: Option<i64>,
) -> StoreResult<Vec<(i64, u32, AssignmentState)>> {
    let sql = format!(
        "SELECT device_id, wave, state FROM assignments WHERE deployment_id = $1 \
         AND state IN {states} AND ($2 IS NULL OR updated_at <= $2) ORDER BY device_id"
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(deployment_id)
        .bind(before)
        .fetch_all(conn)
        .await
        .map_err(db)?;
    rows.iter()
        .map(|row| {
            let state: String = row.try_get(2).map_err(db)?;
            Ok((
                row.try_get(0).map_err(db)?,
                u32::try_from(row.try_get::<i64, _>(1).map_err(db)?).map_err(backend)?,
                AssignmentState::parse(&state)
                    .ok_or_else(|| backend(format!("unknown assignment state {state:?}")))?,
            ))
        })
        .collect()
}

/// Moves up to `n` waiting devices of waves `1..=opened` to `pending`,
/// longest waiting first; their unfinished assignments elsewhere are
/// superseded. Returns them.
async fn promote(
    conn: &mut Conn,
    deployment_id: i64,
    opened: u32,
    n: u64,
    now: i64,
) -> StoreResult<Vec<i64>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "SELECT device_id FROM assignments WHERE deployment_id = $1 AND state = 'waiting' \
         AND wave BETWEEN 1 AND $2 ORDER BY updated_at, wave, device_id LIMIT $3",
    )
    .bind(deployment_id)
    .bind(i64::from(opened))
    .bind(i64::try_from(n).unwrap_or(i64::MAX))
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    let ids: Vec<i64> = rows
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(db)?;
    for chunk in ids.chunks(500) {
        let mut sql = Sql::new("UPDATE assignments SET state = 'cancelled', ");
        sql.push("reason = 'superseded', updated_at = ")
            .bind(now)
            .push(" WHERE deployment_id != ")
            .bind(deployment_id)
            .push(" AND state IN ('pending', 'offered', 'downloading', 'installed', 'booted') ")
            .push("AND device_id IN (")
            .list(chunk.iter().copied())
            .push(")");
        sql.query()?.execute(&mut *conn).await.map_err(db)?;
    }
    move_devices(
        conn,
        deployment_id,
        &ids,
        "('waiting')",
        "pending",
        None,
        now,
    )
    .await?;
    Ok(ids)
}

#[async_trait]
impl RolloutStore for SqlStore {
    async fn create_rollout(&self, new: NewRollout) -> StoreResult<Rollout> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let id: i64 = sqlx::query(
            "INSERT INTO rollouts (release_id, target, plan, state, created_by, created_at, \
             updated_at) VALUES ($1, $2, $3, 'draft', $4, $5, $6) RETURNING id",
        )
        .bind(new.release_id)
        .bind(&new.target)
        .bind(serde_json::to_string(&new.plan).map_err(backend)?)
        .bind(&new.created_by)
        .bind(now)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .and_then(|row| row.try_get(0))
        .map_err(db)?;
        let rollout = read_rollout(&mut tx, id, "").await?;
        let detail = serde_json::json!({"release": new.release_id, "target": new.target});
        add_rollout_event(
            &mut tx,
            &rollout,
            now,
            &new.created_by,
            "created",
            &detail,
            false,
        )
        .await?;
        tx.commit().await.map_err(db)?;
        Ok(rollout)
    }

    async fn list_rollouts(&self) -> StoreResult<Vec<Rollout>> {
        let sql = format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts ORDER BY id DESC");
        let rows = sqlx::query(AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(rollout_from_row).collect()
    }

    async fn rollout(&self, id: i64) -> StoreResult<Rollout> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        read_rollout(&mut conn, id, "").await
    }

    async fn rollout_tallies(&self, id: i64) -> StoreResult<Vec<WaveTally>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let rollout = read_rollout(&mut conn, id, "").await?;
        read_tallies(&mut conn, &rollout).await
    }

    async fn rollout_events(&self, id: i64) -> StoreResult<Vec<RolloutEvent>> {
        let rows = sqlx::query(
            "SELECT id, at, actor, kind, state, wave, detail FROM rollout_events \
             WHERE rollout_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|row| {
                let detail: String = row.try_get("detail").map_err(db)?;
                let wave: i64 = row.try_get("wave").map_err(db)?;
                Ok(RolloutEvent {
                    id: row.try_get("id").map_err(db)?,
                    at: row.try_get("at").map_err(db)?,
                    actor: row.try_get("actor").map_err(db)?,
                    kind: row.try_get("kind").map_err(db)?,
                    state: row.try_get("state").map_err(db)?,
                    wave: u32::try_from(wave).map_err(backend)?,
                    detail: serde_json::from_str(&detail).map_err(backend)?,
                })
            })
            .collect()
    }

    async fn release_failures(&self, release_id: i64) -> StoreResult<HashMap<i64, u64>> {
        let rows = sqlx::query(
            "SELECT a.device_id, count(*) FROM assignments a \
             JOIN deployments p ON p.id = a.deployment_id \
             WHERE p.release_id = $1 AND a.state IN ('failed', 'rolled_back') GROUP BY a.device_id",
        )
        .bind(release_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|row| {
                let n: i64 = row.try_get(1).map_err(db)?;
                Ok((
                    row.try_get(0).map_err(db)?,
                    u64::try_from(n).map_err(backend)?,
                ))
            })
            .collect()
    }

    async fn start_rollout(
        &self,
        id: i64,
        actor: &str,
        waves: &[u64],
        assignments: &[WaveAssignment],
        now: i64,
    ) -> StoreResult<Rollout> {
        self.retrying(|| self.try_start_rollout(id, actor, waves, assignments, now))
            .await
    }

    async fn command_rollout(
        &self,
        id: i64,
        command: Command,
        actor: &str,
        now: i64,
    ) -> StoreResult<(Rollout, Vec<i64>)> {
        self.retrying(|| self.try_command_rollout(id, command, actor, now))
            .await
    }

    async fn step_rollout(
        &self,
        id: i64,
        now: i64,
        decide: Decide,
    ) -> StoreResult<Option<StepOutcome>> {
        self.retrying(|| self.try_step_rollout(id, now, decide))
            .await
    }

    async fn active_rollouts(&self) -> StoreResult<Vec<i64>> {
        let rows =
            sqlx::query("SELECT id FROM rollouts WHERE state IN ('running', 'paused') ORDER BY id")
                .fetch_all(&self.pool)
                .await
                .map_err(db)?;
        rows.iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(db)
    }

    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now: i64,
        ttl_ms: i64,
    ) -> StoreResult<bool> {
        let taken = sqlx::query(
            "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
             expires_at = excluded.expires_at \
             WHERE leases.holder = excluded.holder OR leases.expires_at <= $4",
        )
        .bind(name)
        .bind(holder)
        .bind(now.saturating_add(ttl_ms))
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(db)?
        .rows_affected();
        Ok(taken == 1)
    }
}

impl SqlStore {
    async fn try_start_rollout(
        &self,
        id: i64,
        actor: &str,
        waves: &[u64],
        assignments: &[WaveAssignment],
        now: i64,
    ) -> StoreResult<Rollout> {
        let mut tx = self.begin_assignments().await?;
        let mut rollout = read_rollout(&mut tx, id, self.dialect.for_update()).await?;
        rollout.state = Command::Start
            .apply(rollout.state, rollout.opened, rollout.waves.len())
            .map_err(|e| StoreError::Conflict(format!("rollout {id} cannot start: {e}")))?;
        let deployment_id =
            insert_deployment(&mut tx, rollout.release_id, &rollout.target, now).await?;
        let rows: Vec<NewRow<'_>> = assignments
            .iter()
            .map(|a| (a.device_id, a.wave, a.state, a.reason.as_deref()))
            .collect();
        insert_assignments(&mut tx, deployment_id, &rows, now).await?;
        rollout.deployment_id = Some(deployment_id);
        rollout.waves = waves.to_vec();
        rollout.opened = u32::from(!waves.is_empty());
        rollout.updated_at = now;
        write_rollout(&mut tx, &rollout).await?;
        let skipped = assignments
            .iter()
            .filter(|a| a.state == AssignmentState::Skipped.as_str())
            .count();
        let held_back = assignments
            .iter()
            .filter(|a| a.reason.as_deref() == Some(crate::rollout::PENALTY_BOX))
            .count();
        let detail = serde_json::json!({"deployment": deployment_id, "devices": assignments.len(),
            "skipped": skipped, "held_back": held_back, "waves": waves});
        add_rollout_event(&mut tx, &rollout, now, actor, "started", &detail, false).await?;
        tx.commit().await.map_err(db)?;
        Ok(rollout)
    }

    async fn try_command_rollout(
        &self,
        id: i64,
        command: Command,
        actor: &str,
        now: i64,
    ) -> StoreResult<(Rollout, Vec<i64>)> {
        let mut tx = self.begin_assignments().await?;
        let mut rollout = read_rollout(&mut tx, id, self.dialect.for_update()).await?;
        let before = rollout.state;
        rollout.state = command
            .apply(rollout.state, rollout.opened, rollout.waves.len())
            .map_err(|e| {
                StoreError::Conflict(format!("rollout {id} cannot {}: {e}", command.name()))
            })?;
        rollout.updated_at = now;
        let tallies = read_tallies(&mut tx, &rollout).await?;
        let open = tally_upto(&tallies, rollout.opened as usize);
        let mut unoffered = Vec::new();
        let mut detail = serde_json::json!({"from": before.as_str()});
        match (command, rollout.deployment_id) {
            (Command::Pause, Some(deployment_id)) => {
                let reason =
                    PauseReason::operator(actor, rollout.opened, &open, rollout.accepted_failures);
                detail = serde_json::to_value(&reason).map_err(backend)?;
                rollout.paused_by = Some(actor.to_owned());
                rollout.pause_reason = Some(reason);
                unoffered = unoffer(&mut tx, deployment_id, now).await?;
            }
            (Command::Resume, _) => {
                let accepted = tally_all(&tallies).failures();
                detail = serde_json::json!({"accepted_failures": accepted,
                    "paused_by": rollout.paused_by});
                rollout.accepted_failures = accepted;
                rollout.paused_by = None;
                rollout.pause_reason = None;
            }
            (Command::Advance, _) => {
                rollout.opened += 1;
                rollout.succeeded_at = None;
                detail = serde_json::json!({"wave": rollout.opened,
                    "confirmed": open.confirmed(), "devices": open.eligible()});
            }
            (Command::Cancel, deployment_id) => {
                if let Some(deployment_id) = deployment_id {
                    sqlx::query("UPDATE deployments SET state = 'cancelled' WHERE id = $1")
                        .bind(deployment_id)
                        .execute(&mut *tx)
                        .await
                        .map_err(db)?;
                    unoffered =
                        cancel_assignments(&mut tx, deployment_id, "cancelled", now).await?;
                }
                rollout.paused_by = None;
                rollout.pause_reason = None;
            }
            (Command::Start | Command::Pause, _) => {}
        }
        self.notify_offers(&mut tx, Some(&unoffered)).await?;
        write_rollout(&mut tx, &rollout).await?;
        add_rollout_event(
            &mut tx,
            &rollout,
            now,
            actor,
            command.event(),
            &detail,
            false,
        )
        .await?;
        tx.commit().await.map_err(db)?;
        Ok((rollout, unoffered))
    }

    async fn try_step_rollout(
        &self,
        id: i64,
        now: i64,
        decide: Decide,
    ) -> StoreResult<Option<StepOutcome>> {
        let mut tx = self.begin_assignments().await?;
        let mut rollout = read_rollout(&mut tx, id, self.dialect.for_update()).await?;
        let Some(deployment_id) = rollout.deployment_id.filter(|_| rollout.state.is_active())
        else {
            return Ok(None);
        };
        let cutoff =
            now.saturating_sub(i64::try_from(rollout.plan.deadline_ms).unwrap_or(i64::MAX));
        let snapshot = Snapshot {
            state: rollout.state,
            plan: rollout.plan.clone(),
            waves: rollout.waves.clone(),
            opened: rollout.opened,
            succeeded_at: rollout.succeeded_at,
            accepted_failures: rollout.accepted_failures,
            tallies: read_tallies(&mut tx, &rollout).await?,
            overdue: devices_in(&mut tx, deployment_id, UPDATING, Some(cutoff)).await?,
            stale_pending: devices_in(&mut tx, deployment_id, "('pending')", Some(cutoff))
                .await?
                .into_iter()
                .map(|(id, wave, _)| (id, wave))
                .collect(),
        };
        let step = decide(&snapshot, now);
        move_devices(
            &mut tx,
            deployment_id,
            &step.fail,
            UPDATING,
            AssignmentState::Failed.as_str(),
            Some(crate::rollout::DEADLINE),
            now,
        )
        .await?;
        let mut unoffered = Vec::new();
        if step.pause.is_some() {
            unoffered = unoffer(&mut tx, deployment_id, now).await?;
        }
        move_devices(
            &mut tx,
            deployment_id,
            &step.requeue,
            "('pending')",
            AssignmentState::Waiting.as_str(),
            None,
            now,
        )
        .await?;
        unoffered.extend_from_slice(&step.requeue);
        let promoted = promote(&mut tx, deployment_id, step.opened, step.promote, now).await?;
        let changed = rollout.state != step.state
            || rollout.opened != step.opened
            || rollout.succeeded_at != step.succeeded_at;
        rollout.state = step.state;
        rollout.opened = step.opened;
        rollout.succeeded_at = step.succeeded_at;
        if let Some(reason) = &step.pause {
            rollout.paused_by = Some(reason.by.clone());
            rollout.pause_reason = Some(reason.clone());
        }
        if changed {
            rollout.updated_at = now;
            write_rollout(&mut tx, &rollout).await?;
        }
        let moved: Vec<i64> = promoted
            .iter()
            .chain(&unoffered)
            .chain(&step.fail)
            .copied()
            .collect();
        self.notify_offers(&mut tx, Some(&moved)).await?;
        for note in &step.notes {
            add_rollout_event(
                &mut tx,
                &rollout,
                now,
                SCHEDULER,
                note.kind,
                &note.detail,
                note.transition,
            )
            .await?;
        }
        tx.commit().await.map_err(db)?;
        Ok(Some(StepOutcome {
            rollout,
            promoted,
            unoffered,
            failed: step.fail,
            notes: step.notes,
        }))
    }
}

/// Moves every `pending` device of the deployment back to `waiting` (not
/// offered any more); returns them.
async fn unoffer(conn: &mut Conn, deployment_id: i64, now: i64) -> StoreResult<Vec<i64>> {
    let rows = sqlx::query(
        "UPDATE assignments SET state = 'waiting', updated_at = $1 \
         WHERE deployment_id = $2 AND state = 'pending' RETURNING device_id",
    )
    .bind(now)
    .bind(deployment_id)
    .fetch_all(conn)
    .await
    .map_err(db)?;
    rows.iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(db)
}
