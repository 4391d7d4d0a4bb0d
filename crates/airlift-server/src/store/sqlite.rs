//! The SQLite backend: one file `airlift.db` in the data directory, WAL mode,
//! forward-only migrations embedded in the binary.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, FromRow, QueryBuilder, Row, Sqlite, Transaction};

use super::{
    Assignment, AssignmentTally, AuditRecord, AuditStore, CredentialStore, Decide, Deployment,
    DeploymentStore, Device, DeviceAssignment, DeviceFilter, DeviceOrder, DevicePage, DeviceStatus,
    DeviceStore, DeviceSummary, EnrollmentSecret, EventOutcome, EventStore, FleetCounts, LastSeen,
    NewAssignment, NewEvent, NewRelease, NewRollout, NextState, Offer, OpenAssignment, Problem,
    Release, ReleaseStore, Rollout, RolloutEvent, RolloutStore, SCHEDULER, Session, SessionStore,
    StepOutcome, StoreError, StoreResult, StoredEvent, Tally, Target, ViewStore, WaveAssignment,
    Write,
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

/// The SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

fn backend(err: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(err.to_string())
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

fn device_from_row(row: &SqliteRow) -> Result<Device, sqlx::Error> {
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

fn secret_from_row(row: &SqliteRow) -> Result<EnrollmentSecret, sqlx::Error> {
    let tags: String = row.try_get("tags")?;
    Ok(EnrollmentSecret {
        name: row.try_get("name")?,
        tags: tags
            .split('\n')
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
        created_at: row.try_get("created_at")?,
    })
}

impl SqliteStore {
    /// Opens (creating when missing) `airlift.db` in `dir` and applies the migrations.
    pub async fn open(dir: &Path) -> StoreResult<SqliteStore> {
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(backend)?
            .filename(dir.join("airlift.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(backend)?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(backend)?;
        Ok(SqliteStore { pool })
    }

    /// Closes the pool (checkpoints the WAL).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn begin(&self) -> StoreResult<Transaction<'static, Sqlite>> {
        self.pool.begin().await.map_err(backend)
    }

    /// The (value, count) rows `sql` selects, as tallies.
    async fn tally(&self, sql: &'static str) -> StoreResult<Vec<Tally>> {
        let rows = sqlx::query(sql)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        tallies(&rows)
    }
}

#[async_trait]
impl ReleaseStore for SqliteStore {
    async fn insert_release(&self, r: NewRelease) -> StoreResult<(Release, bool)> {
        let inserted = sqlx::query(
            "INSERT INTO releases (sha256, size, chip_id, project, version, security_version, \
             key_id, signed_by_server, manifest, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (sha256) DO NOTHING",
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
        .map_err(backend)?
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
        .map_err(backend)?;
        rows.iter()
            .map(Release::from_row)
            .collect::<Result<_, _>>()
            .map_err(backend)
    }

    async fn release(&self, id: i64) -> StoreResult<Release> {
        let row = sqlx::query(
            "SELECT id, sha256, size, chip_id, project, version, security_version, key_id, \
             signed_by_server, manifest, created_at FROM releases WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?
        .ok_or_else(|| StoreError::NotFound(format!("no release {id}")))?;
        Release::from_row(&row).map_err(backend)
    }

    async fn release_by_sha256(&self, sha256: &str) -> StoreResult<Option<Release>> {
        let row = sqlx::query(
            "SELECT id, sha256, size, chip_id, project, version, security_version, key_id, \
             signed_by_server, manifest, created_at FROM releases WHERE sha256 = ?",
        )
        .bind(sha256)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.as_ref()
            .map(Release::from_row)
            .transpose()
            .map_err(backend)
    }

    async fn delete_release(&self, id: i64) -> StoreResult<Release> {
        let mut tx = self.begin().await?;
        let release = self.release(id).await?;
        let used: i64 = sqlx::query(
            "SELECT (SELECT count(*) FROM deployments WHERE release_id = ?1) \
             + (SELECT count(*) FROM rollouts WHERE release_id = ?1 AND deployment_id IS NULL)",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .and_then(|row| row.try_get(0))
        .map_err(backend)?;
        if used > 0 {
            return Err(StoreError::Conflict(format!(
                "release {id} is used by {used} deployment(s) or rollout(s); it cannot be deleted"
            )));
        }
        sqlx::query("DELETE FROM releases WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(release)
    }
}

#[async_trait]
impl DeviceStore for SqliteStore {
    async fn create_device(
        &self,
        name: &str,
        tags: &[String],
        token_hash: &[u8; 32],
    ) -> StoreResult<Device> {
        let mut tx = self.begin().await?;
        let id: i64 = sqlx::query(
            "INSERT INTO devices (name, token_hash, created_at) VALUES (?, ?, ?) RETURNING id",
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
            sqlx::query("INSERT OR IGNORE INTO device_tags (device_id, tag) VALUES (?, ?)")
                .bind(id)
                .bind(tag)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        self.device(id).await
    }

    async fn list_devices(&self) -> StoreResult<Vec<Device>> {
        let rows = sqlx::query(
            "SELECT d.id, d.name, d.created_at, d.last_seen, d.chip_id, d.project, d.version, \
             d.sha256, d.security_version, d.slot, d.state, d.boot_count, \
             (SELECT group_concat(tag, char(10)) FROM device_tags t WHERE t.device_id = d.id) \
             AS tags FROM devices d ORDER BY d.name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter()
            .map(device_from_row)
            .collect::<Result<_, _>>()
            .map_err(backend)
    }

    async fn device_by_name(&self, name: &str) -> StoreResult<Device> {
        let row = sqlx::query(
            "SELECT d.id, d.name, d.created_at, d.last_seen, d.chip_id, d.project, d.version, \
             d.sha256, d.security_version, d.slot, d.state, d.boot_count, \
             (SELECT group_concat(tag, char(10)) FROM device_tags t WHERE t.device_id = d.id) \
             AS tags FROM devices d WHERE d.name = ?",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?
        .ok_or_else(|| StoreError::NotFound(format!("no device named {name:?}")))?;
        device_from_row(&row).map_err(backend)
    }

    async fn device(&self, id: i64) -> StoreResult<Device> {
        let row = sqlx::query(
            "SELECT d.id, d.name, d.created_at, d.last_seen, d.chip_id, d.project, d.version, \
             d.sha256, d.security_version, d.slot, d.state, d.boot_count, \
             (SELECT group_concat(tag, char(10)) FROM device_tags t WHERE t.device_id = d.id) \
             AS tags FROM devices d WHERE d.id = ?",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?
        .ok_or_else(|| StoreError::NotFound(format!("no device {id}")))?;
        device_from_row(&row).map_err(backend)
    }

    async fn device_by_token(&self, token_hash: &[u8; 32]) -> StoreResult<Option<(i64, String)>> {
        let row = sqlx::query("SELECT id, name FROM devices WHERE token_hash = ?")
            .bind(&token_hash[..])
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.map(|row| Ok((row.try_get("id")?, row.try_get("name")?)))
            .transpose()
            .map_err(|e: sqlx::Error| backend(e))
    }

    async fn devices_for_target(&self, target: &Target) -> StoreResult<Vec<Device>> {
        match target {
            Target::Device(name) => Ok(vec![self.device_by_name(name).await?]),
            Target::Devices(names) => {
                let mut seen = std::collections::HashSet::new();
                let mut devices = Vec::with_capacity(names.len());
                for name in names.iter().filter(|n| seen.insert(*n)) {
                    devices.push(self.device_by_name(name).await?);
                }
                Ok(devices)
            }
            Target::All => self.list_devices().await,
            Target::Tag(tag) => {
                let rows = sqlx::query(
                    "SELECT d.id, d.name, d.created_at, d.last_seen, d.chip_id, d.project, \
                     d.version, d.sha256, d.security_version, d.slot, d.state, d.boot_count, \
                     (SELECT group_concat(tag, char(10)) FROM device_tags t \
                      WHERE t.device_id = d.id) AS tags FROM devices d \
                     WHERE d.id IN (SELECT device_id FROM device_tags WHERE tag = ?) \
                     ORDER BY d.name",
                )
                .bind(tag)
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
                rows.iter()
                    .map(device_from_row)
                    .collect::<Result<_, _>>()
                    .map_err(backend)
            }
        }
    }

    async fn record_statuses(&self, statuses: &[(i64, DeviceStatus)]) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        // One statement per 500 devices, not one per device: a second of
        // check-ins from a large fleet is tens of thousands of statuses, and
        // every statement is a round trip to the connection's worker thread.
        // The SQL built here holds only placeholders (AssertSqlSafe).
        for chunk in statuses.chunks(500) {
            let sql = format!(
                "UPDATE devices SET last_seen = v.column2, chip_id = v.column3, \
                 project = v.column4, version = v.column5, sha256 = v.column6, \
                 security_version = v.column7, slot = v.column8, state = v.column9, \
                 boot_count = v.column10 \
                 FROM (VALUES {}) AS v WHERE devices.id = v.column1",
                vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ")
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for (device_id, s) in chunk {
                query = query
                    .bind(device_id)
                    .bind(s.last_seen)
                    .bind(s.chip_id)
                    .bind(&s.project)
                    .bind(&s.version)
                    .bind(&s.sha256)
                    .bind(s.security_version)
                    .bind(s.slot)
                    .bind(&s.state)
                    .bind(s.boot_count);
            }
            query.execute(&mut *tx).await.map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }
}

#[async_trait]
impl DeploymentStore for SqliteStore {
    async fn create_deployment(
        &self,
        release_id: i64,
        target: &str,
        assignments: &[NewAssignment],
    ) -> StoreResult<Deployment> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let id = insert_deployment(&mut tx, release_id, target, now).await?;
        let rows: Vec<NewRow<'_>> = assignments
            .iter()
            .map(|a| (a.device_id, 0, a.state.as_str(), a.reason.as_deref()))
            .collect();
        insert_assignments(&mut tx, id, &rows, now).await?;
        tx.commit().await.map_err(backend)?;
        self.deployment(id).await
    }

    async fn list_deployments(&self) -> StoreResult<Vec<Deployment>> {
        let rows = sqlx::query(
            "SELECT id, release_id, target, state, created_at FROM deployments ORDER BY id DESC",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter()
            .map(Deployment::from_row)
            .collect::<Result<_, _>>()
            .map_err(backend)
    }

    async fn deployment(&self, id: i64) -> StoreResult<Deployment> {
        let row = sqlx::query(
            "SELECT id, release_id, target, state, created_at FROM deployments WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?
        .ok_or_else(|| StoreError::NotFound(format!("no deployment {id}")))?;
        Deployment::from_row(&row).map_err(backend)
    }

    async fn assignments(&self, deployment_id: i64) -> StoreResult<Vec<Assignment>> {
        let rows = sqlx::query(
            "SELECT a.deployment_id, a.device_id, d.name, a.wave, a.state, a.reason, \
             a.updated_at FROM assignments a JOIN devices d ON d.id = a.device_id \
             WHERE a.deployment_id = ? ORDER BY d.name",
        )
        .bind(deployment_id)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter()
            .map(Assignment::from_row)
            .collect::<Result<_, _>>()
            .map_err(backend)
    }

    async fn cancel_deployment(&self, id: i64) -> StoreResult<Deployment> {
        let mut tx = self.begin().await?;
        let rollout: Option<i64> = sqlx::query("SELECT id FROM rollouts WHERE deployment_id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .and_then(|row| row.map(|r| r.try_get(0)).transpose())
            .map_err(backend)?;
        if let Some(rollout) = rollout {
            return Err(StoreError::Conflict(format!(
                "deployment {id} belongs to rollout {rollout}: cancel the rollout"
            )));
        }
        let changed = sqlx::query(
            "UPDATE deployments SET state = 'cancelled' WHERE id = ? AND state = 'active'",
        )
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(backend)?
        .rows_affected();
        if changed == 0 {
            drop(tx);
            let deployment = self.deployment(id).await?;
            return Err(StoreError::Conflict(format!(
                "deployment {id} is {} already",
                deployment.state
            )));
        }
        sqlx::query(
            "UPDATE assignments SET state = 'cancelled', reason = 'cancelled', updated_at = ? \
             WHERE deployment_id = ? AND state IN ('waiting', 'pending', 'offered', \
             'downloading', 'installed', 'booted')",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        self.deployment(id).await
    }

    async fn open_offer(&self, device_id: i64) -> StoreResult<Option<Offer>> {
        let row = sqlx::query(
            "SELECT a.deployment_id, a.state AS assignment_state, r.id, r.sha256, r.size, \
             r.chip_id, r.project, r.version, r.security_version, r.key_id, \
             r.signed_by_server, r.manifest, r.created_at \
             FROM assignments a JOIN deployments p ON p.id = a.deployment_id \
             JOIN releases r ON r.id = p.release_id \
             WHERE a.device_id = ? AND a.state IN \
             ('pending', 'offered', 'downloading', 'installed', 'booted') \
             ORDER BY a.deployment_id DESC LIMIT 1",
        )
        .bind(device_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        let Some(row) = row else { return Ok(None) };
        let offer = (|| {
            Ok::<_, sqlx::Error>(Offer {
                deployment_id: row.try_get("deployment_id")?,
                state: row.try_get("assignment_state")?,
                release: Release::from_row(&row)?,
            })
        })()
        .map_err(backend)?;
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
             WHERE a.deployment_id = ? AND a.device_id = ?",
        )
        .bind(deployment_id)
        .bind(device_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.as_ref()
            .map(Assignment::from_row)
            .transpose()
            .map_err(backend)
    }

    async fn artifact_assigned(&self, device_id: i64, sha256: &str) -> StoreResult<bool> {
        let found = sqlx::query(
            "SELECT 1 FROM assignments a JOIN deployments p ON p.id = a.deployment_id \
             JOIN releases r ON r.id = p.release_id \
             WHERE a.device_id = ? AND r.sha256 = ? \
             AND a.state NOT IN ('skipped', 'cancelled', 'waiting') \
             LIMIT 1",
        )
        .bind(device_id)
        .bind(sha256)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(found.is_some())
    }
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn add_event(&self, e: &NewEvent) -> StoreResult<i64> {
        sqlx::query(
            "INSERT INTO events (device_id, deployment_id, kind, reason, detail, at) \
             VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
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
        .map_err(backend)
    }

    async fn record_writes(
        &self,
        writes: &[Write],
        next: NextState,
    ) -> StoreResult<Vec<EventOutcome>> {
        // IMMEDIATE: the transaction reads before it writes; a deferred one
        // would fail with SQLITE_BUSY when another writer commits in between.
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(backend)?;
        // Three statements per batch, not three per write: every statement
        // is a round trip to the connection's worker thread. The SQL built
        // here holds only placeholders (AssertSqlSafe); values are bound.
        let now = now_ms();
        let keys: Vec<(i64, i64)> = writes
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
        let mut states: HashMap<(i64, i64), String> = HashMap::new();
        if !keys.is_empty() {
            let sql = format!(
                "SELECT deployment_id, device_id, state FROM assignments \
                 WHERE (deployment_id, device_id) IN (VALUES {})",
                vec!["(?, ?)"; keys.len()].join(", ")
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for (deployment_id, device_id) in &keys {
                query = query.bind(deployment_id).bind(device_id);
            }
            for row in query.fetch_all(&mut *tx).await.map_err(backend)? {
                let key = (
                    row.try_get(0).map_err(backend)?,
                    row.try_get(1).map_err(backend)?,
                );
                states.insert(key, row.try_get(2).map_err(backend)?);
            }
        }
        // Writes apply in order; the last state and the last reason win.
        let mut changed: HashMap<(i64, i64), (&'static str, Option<&str>)> = HashMap::new();
        let mut stored = Vec::with_capacity(writes.len());
        let mut outcomes = Vec::with_capacity(writes.len());
        for w in writes {
            let (key, to, reason) = match w {
                Write::Event(e) => {
                    let Some(deployment_id) = e.deployment_id else {
                        stored.push(e);
                        outcomes.push(EventOutcome::Stored);
                        continue;
                    };
                    let key = (deployment_id, e.device_id);
                    let Some(current) = states.get(&key) else {
                        outcomes.push(EventOutcome::NoAssignment);
                        continue;
                    };
                    stored.push(e);
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
            let entry = changed.entry(key).or_insert((to, None));
            entry.0 = to;
            if reason.is_some() {
                entry.1 = reason;
            }
            outcomes.push(EventOutcome::Changed(to));
        }
        if !changed.is_empty() {
            let sql = format!(
                "UPDATE assignments SET state = v.column3, \
                 reason = coalesce(v.column4, assignments.reason), updated_at = ? \
                 FROM (VALUES {}) AS v \
                 WHERE assignments.deployment_id = v.column1 AND assignments.device_id = v.column2",
                vec!["(?, ?, ?, ?)"; changed.len()].join(", ")
            );
            let mut query = sqlx::query(AssertSqlSafe(sql)).bind(now);
            for ((deployment_id, device_id), (to, reason)) in &changed {
                query = query
                    .bind(deployment_id)
                    .bind(device_id)
                    .bind(*to)
                    .bind(*reason);
            }
            query.execute(&mut *tx).await.map_err(backend)?;
        }
        if !stored.is_empty() {
            let sql = format!(
                "INSERT INTO events (device_id, deployment_id, kind, reason, detail, at) VALUES {}",
                vec!["(?, ?, ?, ?, ?, ?)"; stored.len()].join(", ")
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for e in stored {
                query = query
                    .bind(e.device_id)
                    .bind(e.deployment_id)
                    .bind(&e.kind)
                    .bind(&e.reason)
                    .bind(&e.detail)
                    .bind(e.at(now));
            }
            query.execute(&mut *tx).await.map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(outcomes)
    }

    async fn events(&self, device_id: Option<i64>, limit: i64) -> StoreResult<Vec<StoredEvent>> {
        let rows = sqlx::query(
            "SELECT e.id, d.name, e.deployment_id, e.kind, e.reason, e.detail, e.at \
             FROM events e JOIN devices d ON d.id = e.device_id \
             WHERE (?1 IS NULL OR e.device_id = ?1) ORDER BY e.id DESC LIMIT ?2",
        )
        .bind(device_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter()
            .map(StoredEvent::from_row)
            .collect::<Result<_, sqlx::Error>>()
            .map_err(backend)
    }
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn add_audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: &str,
    ) -> StoreResult<()> {
        sqlx::query("INSERT INTO audit (at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)")
            .bind(now_ms())
            .bind(actor)
            .bind(action)
            .bind(target)
            .bind(detail)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn audit(&self, limit: i64) -> StoreResult<Vec<AuditRecord>> {
        let rows = sqlx::query(
            "SELECT id, at, actor, action, target, detail FROM audit ORDER BY id DESC LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter()
            .map(AuditRecord::from_row)
            .collect::<Result<_, sqlx::Error>>()
            .map_err(backend)
    }
}

#[async_trait]
impl CredentialStore for SqliteStore {
    async fn add_admin_token(&self, name: &str, token_hash: &[u8; 32]) -> StoreResult<()> {
        sqlx::query("INSERT INTO admin_tokens (name, token_hash, created_at) VALUES (?, ?, ?)")
            .bind(name)
            .bind(&token_hash[..])
            .bind(now_ms())
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn admin_token(&self, token_hash: &[u8; 32]) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT name FROM admin_tokens WHERE token_hash = ?")
            .bind(&token_hash[..])
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.map(|row| row.try_get("name"))
            .transpose()
            .map_err(backend)
    }

    async fn count_admin_tokens(&self) -> StoreResult<i64> {
        sqlx::query("SELECT count(*) FROM admin_tokens")
            .fetch_one(&self.pool)
            .await
            .and_then(|row| row.try_get(0))
            .map_err(backend)
    }

    async fn add_enrollment_secret(
        &self,
        name: &str,
        tags: &[String],
        secret_hash: &[u8; 32],
    ) -> StoreResult<EnrollmentSecret> {
        let row = sqlx::query(
            "INSERT INTO enrollment_secrets (name, secret_hash, tags, created_at) \
             VALUES (?, ?, ?, ?) RETURNING name, tags, created_at",
        )
        .bind(name)
        .bind(&secret_hash[..])
        .bind(tags.join("\n"))
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
        secret_from_row(&row).map_err(backend)
    }

    async fn enrollment_secrets(&self) -> StoreResult<Vec<EnrollmentSecret>> {
        let rows =
            sqlx::query("SELECT name, tags, created_at FROM enrollment_secrets ORDER BY name")
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
        rows.iter()
            .map(secret_from_row)
            .collect::<Result<_, _>>()
            .map_err(backend)
    }

    async fn enrollment_secret(
        &self,
        secret_hash: &[u8; 32],
    ) -> StoreResult<Option<EnrollmentSecret>> {
        let row = sqlx::query(
            "SELECT name, tags, created_at FROM enrollment_secrets WHERE secret_hash = ?",
        )
        .bind(&secret_hash[..])
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.as_ref()
            .map(secret_from_row)
            .transpose()
            .map_err(backend)
    }

    async fn delete_enrollment_secret(&self, name: &str) -> StoreResult<()> {
        let deleted = sqlx::query("DELETE FROM enrollment_secrets WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(backend)?
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
impl SessionStore for SqliteStore {
    async fn open_session(
        &self,
        session_hash: &[u8; 32],
        admin_token_hash: &[u8; 32],
        now: i64,
        expires_at: i64,
    ) -> StoreResult<Option<String>> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM sessions WHERE expires_at <= ?")
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let admin = sqlx::query(
            "INSERT INTO sessions (token_hash, admin_token_id, created_at, expires_at) \
             SELECT ?, id, ?, ? FROM admin_tokens WHERE token_hash = ? \
             RETURNING (SELECT name FROM admin_tokens WHERE id = admin_token_id)",
        )
        .bind(&session_hash[..])
        .bind(now)
        .bind(expires_at)
        .bind(&admin_token_hash[..])
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?
        .map(|row| row.try_get::<String, _>(0))
        .transpose()
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(admin)
    }

    async fn session(&self, session_hash: &[u8; 32], now: i64) -> StoreResult<Option<Session>> {
        let row = sqlx::query(
            "SELECT a.name, s.expires_at FROM sessions s \
             JOIN admin_tokens a ON a.id = s.admin_token_id \
             WHERE s.token_hash = ? AND s.expires_at > ?",
        )
        .bind(&session_hash[..])
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
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
        let deleted = sqlx::query("DELETE FROM sessions WHERE token_hash = ?")
            .bind(&session_hash[..])
            .execute(&self.pool)
            .await
            .map_err(backend)?
            .rows_affected();
        Ok(deleted > 0)
    }
}

/// The columns [`device_from_row`] reads, for a query over `devices d`.
const DEVICE_COLUMNS: &str = "d.id, d.name, d.created_at, d.last_seen, d.chip_id, d.project, \
     d.version, d.sha256, d.security_version, d.slot, d.state, d.boot_count, \
     (SELECT group_concat(tag, char(10)) FROM device_tags t WHERE t.device_id = d.id) AS tags";

/// The states of an unfinished assignment, as an SQL list.
const OPEN_STATES: &str = "('pending', 'offered', 'downloading', 'installed', 'booted')";

/// Appends `filter` as conditions on `devices d` (after a `WHERE 1`).
fn push_device_filter(query: &mut QueryBuilder<Sqlite>, filter: &DeviceFilter) {
    if let Some(search) = &filter.search {
        let escaped = search
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        query
            .push(" AND d.name LIKE ")
            .push_bind(format!("%{escaped}%"))
            .push(" ESCAPE '\\'");
    }
    if let Some(tag) = &filter.tag {
        query
            .push(" AND d.id IN (SELECT device_id FROM device_tags WHERE tag = ")
            .push_bind(tag.clone())
            .push(")");
    }
    if let Some(version) = &filter.version {
        query.push(" AND d.version = ").push_bind(version.clone());
    }
    if let Some(state) = &filter.state {
        query.push(" AND d.state = ").push_bind(state.clone());
    }
    match filter.last_seen {
        Some(LastSeen::Since(at)) => {
            query.push(" AND d.last_seen >= ").push_bind(at);
        }
        Some(LastSeen::Before(at)) => {
            query.push(" AND d.last_seen < ").push_bind(at);
        }
        Some(LastSeen::Never) => {
            query.push(" AND d.last_seen IS NULL");
        }
        None => {}
    }
}

/// Every row as a `T`.
fn all<T: for<'r> FromRow<'r, SqliteRow>>(rows: &[SqliteRow]) -> StoreResult<Vec<T>> {
    rows.iter()
        .map(T::from_row)
        .collect::<Result<_, _>>()
        .map_err(backend)
}

fn tallies(rows: &[SqliteRow]) -> StoreResult<Vec<Tally>> {
    rows.iter()
        .map(|row| {
            Ok(Tally {
                value: row.try_get(0)?,
                devices: row.try_get(1)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(backend)
}

#[async_trait]
impl ViewStore for SqliteStore {
    async fn search_devices(
        &self,
        filter: &DeviceFilter,
        order: DeviceOrder,
        limit: i64,
        offset: i64,
    ) -> StoreResult<DevicePage> {
        let mut count = QueryBuilder::new("SELECT count(*) FROM devices d WHERE 1");
        push_device_filter(&mut count, filter);
        let total: i64 = count
            .build()
            .fetch_one(&self.pool)
            .await
            .and_then(|row| row.try_get(0))
            .map_err(backend)?;
        // The open assignment (at most one, see DeploymentStore::open_offer)
        // comes from the assignments_by_device index, for this page only.
        let mut page = QueryBuilder::new(format!(
            "SELECT {DEVICE_COLUMNS}, a.deployment_id AS open_deployment, \
             a.state AS open_state, r.version AS open_version \
             FROM devices d \
             LEFT JOIN assignments a ON a.device_id = d.id AND a.state IN {OPEN_STATES} \
             AND a.deployment_id = (SELECT max(deployment_id) FROM assignments \
                 WHERE device_id = d.id AND state IN {OPEN_STATES}) \
             LEFT JOIN deployments p ON p.id = a.deployment_id \
             LEFT JOIN releases r ON r.id = p.release_id WHERE 1"
        ));
        push_device_filter(&mut page, filter);
        page.push(match order {
            DeviceOrder::Name => " ORDER BY d.name",
            DeviceOrder::LastSeen => " ORDER BY d.last_seen IS NULL, d.last_seen, d.name",
        });
        page.push(" LIMIT ")
            .push_bind(limit)
            .push(" OFFSET ")
            .push_bind(offset);
        let rows = page.build().fetch_all(&self.pool).await.map_err(backend)?;
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
            .map_err(backend)?;
        Ok(DevicePage { total, devices })
    }

    async fn fleet_counts(&self, seen_since: i64) -> StoreResult<FleetCounts> {
        let row = sqlx::query(
            "SELECT count(*), count(*) FILTER (WHERE last_seen IS NULL), \
             count(*) FILTER (WHERE last_seen < ?) FROM devices",
        )
        .bind(seen_since)
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        let (devices, never_seen, unseen) =
            (|| Ok::<_, sqlx::Error>((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))()
                .map_err(backend)?;
        let by_version = self
            .tally(
                "SELECT version, count(*) AS n FROM devices GROUP BY version \
                 ORDER BY n DESC, version IS NULL, version",
            )
            .await?;
        let by_state = self
            .tally(
                "SELECT state, count(*) AS n FROM devices GROUP BY state \
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
        let rows = sqlx::query(
            "SELECT d.name AS device, a.deployment_id, r.version, a.state, a.reason, \
             a.updated_at FROM assignments a INDEXED BY assignments_problems \
             JOIN devices d ON d.id = a.device_id \
             JOIN deployments p ON p.id = a.deployment_id \
             JOIN releases r ON r.id = p.release_id \
             WHERE a.state IN ('failed', 'rolled_back') ORDER BY a.updated_at DESC LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
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
             WHERE a.device_id = ? ORDER BY a.deployment_id DESC LIMIT ?",
        )
        .bind(device_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        all(&rows)
    }

    async fn deployments_in_progress(&self) -> StoreResult<Vec<i64>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT DISTINCT deployment_id FROM assignments INDEXED BY assignments_open \
             WHERE state IN {OPEN_STATES} ORDER BY deployment_id DESC"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(backend)
    }

    async fn assignment_tallies(
        &self,
        deployment_ids: &[i64],
    ) -> StoreResult<Vec<AssignmentTally>> {
        if deployment_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut query = QueryBuilder::new(
            "SELECT deployment_id, state, reason, count(*) AS devices FROM assignments \
             WHERE deployment_id IN (",
        );
        let mut ids = query.separated(", ");
        for id in deployment_ids {
            ids.push_bind(*id);
        }
        query.push(") GROUP BY deployment_id, state, reason");
        let rows = query.build().fetch_all(&self.pool).await.map_err(backend)?;
        all(&rows)
    }

    async fn assignments_page(
        &self,
        deployment_id: i64,
        states: &[String],
        limit: i64,
        offset: i64,
    ) -> StoreResult<(i64, Vec<Assignment>)> {
        let push_states = |query: &mut QueryBuilder<Sqlite>| {
            if !states.is_empty() {
                query.push(" AND a.state IN (");
                let mut list = query.separated(", ");
                for state in states {
                    list.push_bind(state.clone());
                }
                query.push(")");
            }
        };
        let mut count = QueryBuilder::new("SELECT count(*) FROM assignments a WHERE ");
        count.push("a.deployment_id = ").push_bind(deployment_id);
        push_states(&mut count);
        let total: i64 = count
            .build()
            .fetch_one(&self.pool)
            .await
            .and_then(|row| row.try_get(0))
            .map_err(backend)?;
        let mut page = QueryBuilder::new(
            "SELECT a.deployment_id, a.device_id, d.name, a.wave, a.state, a.reason, \
             a.updated_at FROM assignments a JOIN devices d ON d.id = a.device_id WHERE ",
        );
        page.push("a.deployment_id = ").push_bind(deployment_id);
        push_states(&mut page);
        page.push(" ORDER BY d.name LIMIT ")
            .push_bind(limit)
            .push(" OFFSET ")
            .push_bind(offset);
        let rows = page.build().fetch_all(&self.pool).await.map_err(backend)?;
        Ok((total, all(&rows)?))
    }

    async fn running_versions(&self, deployment_id: i64) -> StoreResult<Vec<Tally>> {
        let rows = sqlx::query(
            "SELECT d.version, count(*) AS n FROM assignments a \
             JOIN devices d ON d.id = a.device_id WHERE a.deployment_id = ? \
             GROUP BY d.version ORDER BY n DESC, d.version IS NULL, d.version",
        )
        .bind(deployment_id)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        tallies(&rows)
    }

    async fn audit_before(&self, before: Option<i64>, limit: i64) -> StoreResult<Vec<AuditRecord>> {
        let rows = sqlx::query(
            "SELECT id, at, actor, action, target, detail FROM audit \
             WHERE (?1 IS NULL OR id < ?1) ORDER BY id DESC LIMIT ?2",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        all(&rows)
    }
}

type Conn = sqlx::SqliteConnection;

async fn insert_deployment(
    conn: &mut Conn,
    release_id: i64,
    target: &str,
    now: i64,
) -> StoreResult<i64> {
    sqlx::query(
        "INSERT INTO deployments (release_id, target, state, created_at) \
         VALUES (?, ?, 'active', ?) RETURNING id",
    )
    .bind(release_id)
    .bind(target)
    .bind(now)
    .fetch_one(conn)
    .await
    .and_then(|row| row.try_get(0))
    .map_err(backend)
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
            let sql = format!(
                "UPDATE assignments SET state = 'cancelled', reason = 'superseded', \
                 updated_at = ? WHERE state IN {superseded} AND device_id IN ({})",
                vec!["?"; devices.len()].join(", ")
            );
            let mut query = sqlx::query(AssertSqlSafe(sql)).bind(now);
            for device_id in &devices {
                query = query.bind(device_id);
            }
            query.execute(&mut *conn).await.map_err(backend)?;
        }
        let sql = format!(
            "INSERT INTO assignments (deployment_id, device_id, wave, state, reason, \
             updated_at) VALUES {}",
            vec!["(?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ")
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for (device_id, wave, state, reason) in chunk {
            query = query
                .bind(deployment_id)
                .bind(device_id)
                .bind(wave)
                .bind(state)
                .bind(reason)
                .bind(now);
        }
        query.execute(&mut *conn).await.map_err(backend)?;
    }
    Ok(())
}

const ROLLOUT_COLUMNS: &str = "id, release_id, deployment_id, target, plan, state, waves, opened, \
     succeeded_at, acknowledged_failures, paused_by, pause_reason, created_by, created_at, updated_at";

fn rollout_from_row(row: &SqliteRow) -> StoreResult<Rollout> {
    let plan: String = row.try_get("plan").map_err(backend)?;
    let state: String = row.try_get("state").map_err(backend)?;
    let waves: String = row.try_get("waves").map_err(backend)?;
    let pause_reason: Option<String> = row.try_get("pause_reason").map_err(backend)?;
    let opened: i64 = row.try_get("opened").map_err(backend)?;
    let accepted: i64 = row.try_get("acknowledged_failures").map_err(backend)?;
    Ok(Rollout {
        id: row.try_get("id").map_err(backend)?,
        release_id: row.try_get("release_id").map_err(backend)?,
        deployment_id: row.try_get("deployment_id").map_err(backend)?,
        target: row.try_get("target").map_err(backend)?,
        plan: serde_json::from_str(&plan).map_err(backend)?,
        state: RolloutState::parse(&state)
            .ok_or_else(|| backend(format!("unknown rollout state {state:?}")))?,
        waves: serde_json::from_str(&waves).map_err(backend)?,
        opened: u32::try_from(opened).map_err(backend)?,
        succeeded_at: row.try_get("succeeded_at").map_err(backend)?,
        accepted_failures: u64::try_from(accepted).map_err(backend)?,
        paused_by: row.try_get("paused_by").map_err(backend)?,
        pause_reason: pause_reason
            .map(|r| serde_json::from_str(&r))
            .transpose()
            .map_err(backend)?,
        created_by: row.try_get("created_by").map_err(backend)?,
        created_at: row.try_get("created_at").map_err(backend)?,
        updated_at: row.try_get("updated_at").map_err(backend)?,
    })
}

async fn read_rollout(conn: &mut Conn, id: i64) -> StoreResult<Rollout> {
    let sql = format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = ?");
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(conn)
        .await
        .map_err(backend)?
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
        "SELECT wave, state, reason, count(*) FROM assignments WHERE deployment_id = ? \
         GROUP BY wave, state, reason",
    )
    .bind(deployment_id)
    .fetch_all(conn)
    .await
    .map_err(backend)?;
    for row in rows {
        let wave: i64 = row.try_get(0).map_err(backend)?;
        let state: String = row.try_get(1).map_err(backend)?;
        let reason: Option<String> = row.try_get(2).map_err(backend)?;
        let count: i64 = row.try_get(3).map_err(backend)?;
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
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(rollout.id)
    .bind(now)
    .bind(actor)
    .bind(kind)
    .bind(rollout.state.as_str())
    .bind(rollout.opened)
    .bind(detail.to_string())
    .execute(&mut *conn)
    .await
    .map_err(backend)?;
    if audit {
        sqlx::query("INSERT INTO audit (at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)")
            .bind(now)
            .bind(actor)
            .bind(format!("rollout {kind}"))
            .bind(format!("rollout:{}", rollout.id))
            .bind(detail.to_string())
            .execute(conn)
            .await
            .map_err(backend)?;
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
        "UPDATE rollouts SET deployment_id = ?, state = ?, waves = ?, opened = ?, \
         succeeded_at = ?, acknowledged_failures = ?, paused_by = ?, pause_reason = ?, \
         updated_at = ? WHERE id = ?",
    )
    .bind(r.deployment_id)
    .bind(r.state.as_str())
    .bind(serde_json::to_string(&r.waves).map_err(backend)?)
    .bind(r.opened)
    .bind(r.succeeded_at)
    .bind(i64::try_from(r.accepted_failures).map_err(backend)?)
    .bind(&r.paused_by)
    .bind(pause_reason)
    .bind(r.updated_at)
    .bind(r.id)
    .execute(conn)
    .await
    .map_err(backend)?;
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
        let sql = format!(
            "UPDATE assignments SET state = ?, reason = coalesce(?, reason), updated_at = ? \
             WHERE deployment_id = ? AND state IN {from} AND device_id IN ({})",
            vec!["?"; chunk.len()].join(", ")
        );
        let mut query = sqlx::query(AssertSqlSafe(sql))
            .bind(to)
            .bind(reason)
            .bind(now)
            .bind(deployment_id);
        for id in chunk {
            query = query.bind(id);
        }
        query.execute(&mut *conn).await.map_err(backend)?;
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
        "SELECT device_id, wave, state FROM assignments WHERE deployment_id = ? \
         AND state IN {states} AND (?2 IS NULL OR updated_at <= ?2) ORDER BY device_id"
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(deployment_id)
        .bind(before)
        .fetch_all(conn)
        .await
        .map_err(backend)?;
    rows.iter()
        .map(|row| {
            let state: String = row.try_get(2).map_err(backend)?;
            Ok((
                row.try_get(0).map_err(backend)?,
                u32::try_from(row.try_get::<i64, _>(1).map_err(backend)?).map_err(backend)?,
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
        "SELECT device_id FROM assignments WHERE deployment_id = ? AND state = 'waiting' \
         AND wave BETWEEN 1 AND ? ORDER BY updated_at, wave, device_id LIMIT ?",
    )
    .bind(deployment_id)
    .bind(opened)
    .bind(i64::try_from(n).unwrap_or(i64::MAX))
    .fetch_all(&mut *conn)
    .await
    .map_err(backend)?;
    let ids: Vec<i64> = rows
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(backend)?;
    for chunk in ids.chunks(500) {
        let sql = format!(
            "UPDATE assignments SET state = 'cancelled', reason = 'superseded', updated_at = ? \
             WHERE deployment_id != ? AND state IN ('pending', 'offered', 'downloading', \
             'installed', 'booted') AND device_id IN ({})",
            vec!["?"; chunk.len()].join(", ")
        );
        let mut query = sqlx::query(AssertSqlSafe(sql))
            .bind(now)
            .bind(deployment_id);
        for id in chunk {
            query = query.bind(id);
        }
        query.execute(&mut *conn).await.map_err(backend)?;
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
impl RolloutStore for SqliteStore {
    async fn create_rollout(&self, new: NewRollout) -> StoreResult<Rollout> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let id: i64 = sqlx::query(
            "INSERT INTO rollouts (release_id, target, plan, state, created_by, created_at, \
             updated_at) VALUES (?, ?, ?, 'draft', ?, ?, ?) RETURNING id",
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
        .map_err(backend)?;
        let rollout = read_rollout(&mut tx, id).await?;
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
        tx.commit().await.map_err(backend)?;
        Ok(rollout)
    }

    async fn list_rollouts(&self) -> StoreResult<Vec<Rollout>> {
        let sql = format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts ORDER BY id DESC");
        let rows = sqlx::query(AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(rollout_from_row).collect()
    }

    async fn rollout(&self, id: i64) -> StoreResult<Rollout> {
        let mut conn = self.pool.acquire().await.map_err(backend)?;
        read_rollout(&mut conn, id).await
    }

    async fn rollout_tallies(&self, id: i64) -> StoreResult<Vec<WaveTally>> {
        let mut conn = self.pool.acquire().await.map_err(backend)?;
        let rollout = read_rollout(&mut conn, id).await?;
        read_tallies(&mut conn, &rollout).await
    }

    async fn rollout_events(&self, id: i64) -> StoreResult<Vec<RolloutEvent>> {
        let rows = sqlx::query(
            "SELECT id, at, actor, kind, state, wave, detail FROM rollout_events \
             WHERE rollout_id = ? ORDER BY id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter()
            .map(|row| {
                let detail: String = row.try_get("detail").map_err(backend)?;
                let wave: i64 = row.try_get("wave").map_err(backend)?;
                Ok(RolloutEvent {
                    id: row.try_get("id").map_err(backend)?,
                    at: row.try_get("at").map_err(backend)?,
                    actor: row.try_get("actor").map_err(backend)?,
                    kind: row.try_get("kind").map_err(backend)?,
                    state: row.try_get("state").map_err(backend)?,
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
             WHERE p.release_id = ? AND a.state IN ('failed', 'rolled_back') GROUP BY a.device_id",
        )
        .bind(release_id)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter()
            .map(|row| {
                let n: i64 = row.try_get(1).map_err(backend)?;
                Ok((
                    row.try_get(0).map_err(backend)?,
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
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(backend)?;
        let mut rollout = read_rollout(&mut tx, id).await?;
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
        tx.commit().await.map_err(backend)?;
        Ok(rollout)
    }

    async fn command_rollout(
        &self,
        id: i64,
        command: Command,
        actor: &str,
        now: i64,
    ) -> StoreResult<(Rollout, Vec<i64>)> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(backend)?;
        let mut rollout = read_rollout(&mut tx, id).await?;
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
                    sqlx::query("UPDATE deployments SET state = 'cancelled' WHERE id = ?")
                        .bind(deployment_id)
                        .execute(&mut *tx)
                        .await
                        .map_err(backend)?;
                    let sql = format!(
                        "UPDATE assignments SET state = 'cancelled', reason = 'cancelled', \
                         updated_at = ? WHERE deployment_id = ? AND state IN {UNFINISHED} \
                         RETURNING device_id"
                    );
                    let rows = sqlx::query(AssertSqlSafe(sql))
                        .bind(now)
                        .bind(deployment_id)
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(backend)?;
                    for row in rows {
                        unoffered.push(row.try_get(0).map_err(backend)?);
                    }
                }
                rollout.paused_by = None;
                rollout.pause_reason = None;
            }
            (Command::Start | Command::Pause, _) => {}
        }
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
        tx.commit().await.map_err(backend)?;
        Ok((rollout, unoffered))
    }

    async fn step_rollout(
        &self,
        id: i64,
        now: i64,
        decide: Decide,
    ) -> StoreResult<Option<StepOutcome>> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(backend)?;
        let mut rollout = read_rollout(&mut tx, id).await?;
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
        tx.commit().await.map_err(backend)?;
        Ok(Some(StepOutcome {
            rollout,
            promoted,
            unoffered,
            failed: step.fail,
            notes: step.notes,
        }))
    }

    async fn active_rollouts(&self) -> StoreResult<Vec<i64>> {
        let rows =
            sqlx::query("SELECT id FROM rollouts WHERE state IN ('running', 'paused') ORDER BY id")
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
        rows.iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(backend)
    }

    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now: i64,
        ttl_ms: i64,
    ) -> StoreResult<bool> {
        let taken = sqlx::query(
            "INSERT INTO leases (name, holder, expires_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
             expires_at = excluded.expires_at \
             WHERE leases.holder = excluded.holder OR leases.expires_at <= ?4",
        )
        .bind(name)
        .bind(holder)
        .bind(now.saturating_add(ttl_ms))
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(backend)?
        .rows_affected();
        Ok(taken == 1)
    }
}

/// Moves every `pending` device of the deployment back to `waiting` (not
/// offered any more); returns them.
async fn unoffer(conn: &mut Conn, deployment_id: i64, now: i64) -> StoreResult<Vec<i64>> {
    let rows = sqlx::query(
        "UPDATE assignments SET state = 'waiting', updated_at = ? \
         WHERE deployment_id = ? AND state = 'pending' RETURNING device_id",
    )
    .bind(now)
    .bind(deployment_id)
    .fetch_all(conn)
    .await
    .map_err(backend)?;
    rows.iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(backend)
}
