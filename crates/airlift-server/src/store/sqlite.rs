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
    Assignment, AssignmentTally, AuditRecord, AuditStore, CredentialStore, Deployment,
    DeploymentStore, Device, DeviceAssignment, DeviceFilter, DeviceOrder, DevicePage, DeviceStatus,
    DeviceStore, DeviceSummary, EnrollmentSecret, EventOutcome, EventStore, FleetCounts, LastSeen,
    NewAssignment, NewEvent, NewRelease, NextState, Offer, OpenAssignment, Problem, Release,
    ReleaseStore, Session, SessionStore, StoreError, StoreResult, StoredEvent, Tally, Target,
    ViewStore, Write,
};
use crate::deploy::AssignmentState;
use crate::now_ms;

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
        let used: i64 = sqlx::query("SELECT count(*) FROM deployments WHERE release_id = ?")
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .and_then(|row| row.try_get(0))
            .map_err(backend)?;
        if used > 0 {
            return Err(StoreError::Conflict(format!(
                "release {id} is used by {used} deployment(s); it cannot be deleted"
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
        let id: i64 = sqlx::query(
            "INSERT INTO deployments (release_id, target, state, created_at) \
             VALUES (?, ?, 'active', ?) RETURNING id",
        )
        .bind(release_id)
        .bind(target)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .and_then(|row| row.try_get(0))
        .map_err(backend)?;
        // A few statements per 500 devices, not two per device: a deployment
        // to 10,000 devices is one short transaction. The SQL built here
        // holds only placeholders (AssertSqlSafe); values are bound.
        for chunk in assignments.chunks(500) {
            let pending: Vec<i64> = chunk
                .iter()
                .filter(|a| a.state == AssignmentState::Pending.as_str())
                .map(|a| a.device_id)
                .collect();
            if !pending.is_empty() {
                let sql = format!(
                    "UPDATE assignments SET state = 'cancelled', reason = 'superseded', \
                     updated_at = ? WHERE device_id IN ({}) AND state IN \
                     ('pending', 'offered', 'downloading', 'installed', 'booted')",
                    vec!["?"; pending.len()].join(", ")
                );
                let mut query = sqlx::query(AssertSqlSafe(sql)).bind(now);
                for device_id in &pending {
                    query = query.bind(device_id);
                }
                query.execute(&mut *tx).await.map_err(backend)?;
            }
            let sql = format!(
                "INSERT INTO assignments (deployment_id, device_id, wave, state, reason, \
                 updated_at) VALUES {}",
                vec!["(?, ?, 0, ?, ?, ?)"; chunk.len()].join(", ")
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for a in chunk {
                query = query
                    .bind(id)
                    .bind(a.device_id)
                    .bind(&a.state)
                    .bind(&a.reason)
                    .bind(now);
            }
            query.execute(&mut *tx).await.map_err(backend)?;
        }
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
             WHERE deployment_id = ? AND state IN \
             ('pending', 'offered', 'downloading', 'installed', 'booted')",
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
             WHERE a.device_id = ? AND r.sha256 = ? AND a.state NOT IN ('skipped', 'cancelled') \
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
