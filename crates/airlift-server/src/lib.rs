//! Airlift update server, as a library.
//!
//! One binary, zero configuration: [`serve`] keeps everything in a data
//! directory: the SQLite database (`airlift.db`), the artifacts
//! (`artifacts/<sha256>`, through `object_store`), the release-signing key
//! pair (`signing.key`, `signing.pub`) and, on first start, the admin token
//! (`admin.token`). To scale out, the same binary keeps its state in
//! PostgreSQL (`database_url`) and its artifacts in an S3-compatible store
//! (`artifacts = "s3://..."`), and several instances on one database
//! behave as one server ([`peers`]).
//!
//! - [`app`] builds the HTTP router (admin API, device API, `/healthz`,
//!   `/metrics`, `/api/openapi.json`, and the [`dashboard`] at `/`); tests
//!   call [`serve`] with a listener on `127.0.0.1:0`.
//! - State lives behind the per-capability traits of [`store`]; handlers
//!   never see SQL.
//! - [`deploy`] holds the deployment rules (who is offered what, and how
//!   device events move each device's assignment).
//! - [`rollout`] holds the staged rollouts' rules as pure functions of the
//!   stored state and a time; [`scheduler`] applies them.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::future::Future;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

use airlift_format::manifest::SigningKey;
use axum::Router;
use object_store::local::LocalFileSystem;
use tokio::net::TcpListener;

pub mod api;
pub mod artifacts;
pub mod auth;
pub mod cache;
pub mod changes;
pub mod config;
mod connection;
pub mod dashboard;
pub mod deploy;
pub mod error;
pub mod events;
pub mod identity;
pub mod keys;
pub mod longpoll;
pub mod metrics;
pub mod peers;
pub mod rollout;
pub mod scheduler;
pub mod store;
pub mod throttle;
pub mod tls;

pub use config::{Config, DatabaseUrl, Secret};
pub use error::ApiError;

use artifacts::Artifacts;
use auth::DeviceTokenCache;
use cache::{OfferCache, StatusBuffer};
use changes::Changes;
use events::EventWriter;
use metrics::Metrics;
use store::Store;
use store::sql::SqlStore;

/// The current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data directory could not be prepared.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The configuration cannot be used.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The database could not be opened or migrated.
    #[error("database: {0}")]
    Store(#[from] store::StoreError),
    /// The artifact store could not be opened.
    #[error(transparent)]
    Artifacts(#[from] artifacts::ArtifactError),
    /// The signing key could not be loaded or created.
    #[error("signing key: {0}")]
    Key(#[from] keys::KeyError),
    /// The TLS certificate or key cannot be used.
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    /// Serving failed.
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
}

/// Everything a request handler needs.
pub struct ServerState {
    /// The configuration the server was started with.
    pub config: Config,
    /// All persistent state.
    pub store: Arc<dyn Store>,
    /// Firmware artifacts.
    pub artifacts: Artifacts,
    /// The key the server signs manifests with.
    pub signing_key: SigningKey,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
    /// Device tokens already authenticated.
    pub device_tokens: DeviceTokenCache,
    /// Each device's open offer.
    pub offers: OfferCache,
    /// Check-in statuses not written yet.
    pub statuses: StatusBuffer,
    /// Device events, committed in groups.
    pub events: EventWriter,
    /// What dashboards watch to update without reloading.
    pub changes: Arc<Changes>,
    /// Check-ins waiting for an offer (long polls).
    pub long_polls: longpoll::LongPolls,
    /// This instance's name in leases and notices (random, new at every start).
    pub instance: String,
    /// Whether other instances may share the database (PostgreSQL): what
    /// this one caches may be changed by them ([`peers`]).
    pub shared: bool,
    /// Failed authentications per client and per credential.
    pub throttle: throttle::Throttle,
}

impl ServerState {
    /// Writes the buffered check-in statuses; call before reading device status.
    pub async fn flush_statuses(&self) -> Result<(), store::StoreError> {
        let pending = self.statuses.take();
        if pending.is_empty() {
            return Ok(());
        }
        self.store.record_statuses(&pending).await?;
        self.changes.bump();
        Ok(())
    }
}

/// Shared handle to the [`ServerState`].
#[derive(Clone)]
pub struct AppState(Arc<ServerState>);

impl Deref for AppState {
    type Target = ServerState;

    fn deref(&self) -> &ServerState {
        &self.0
    }
}

/// A server opened on its data directory, ready to serve.
pub struct Server {
    state: AppState,
    sql: SqlStore,
    /// The tasks that listen to and talk with other instances (PostgreSQL).
    peers: Vec<tokio::task::JoinHandle<()>>,
    tls: Option<Arc<rustls::ServerConfig>>,
    /// The admin token created because the data directory was new; it is
    /// also in `DIR/admin.token` and never shown again.
    pub initial_admin_token: Option<String>,
}

impl Server {
    /// Opens the data directory, creating and initialising it when empty.
    pub async fn open(config: Config) -> Result<Server, ServerError> {
        config.validate()?;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tls::server_config(cert, key)?),
            _ => None,
        };
        let dir = config.data_dir.clone();
        let dir_error = |source| ServerError::DataDir {
            path: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(dir_error)?;
        std::fs::create_dir_all(dir.join("artifacts")).map_err(dir_error)?;
        // Interrupted uploads leave staging files in tmp/ that the object
        // store's listing hides (`name#n`): clear the directory itself.
        match std::fs::remove_dir_all(dir.join("tmp")) {
            Ok(()) => tracing::debug!("cleared tmp/"),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(dir_error(err)),
        }
        std::fs::create_dir_all(dir.join("tmp")).map_err(dir_error)?;
        let instance =
            auth::new_token("instance-").map_err(|e| dir_error(std::io::Error::other(e)))?;
        let sql = match &config.database_url {
            Some(url) => SqlStore::connect_postgres(url.expose(), &instance).await?,
            None => SqlStore::open_sqlite(&dir).await?,
        };
        let shared = config.database_url.is_some();
        let signing_key = match &config.signing_key_file {
            Some(path) => keys::load(path)?,
            None if shared => keys::shared(&sql).await?,
            None => keys::load_or_create(&dir)?,
        };
        keys::write_public(&dir, &signing_key)?;
        let artifacts = match &config.artifacts {
            Some(location) => {
                let location = artifacts::S3Location::parse(location).ok_or_else(|| {
                    config::ConfigError::Invalid {
                        name: "artifacts",
                        message: format!("{location:?} is not s3://bucket/prefix"),
                    }
                })?;
                Artifacts::s3(
                    &location,
                    config.s3_endpoint.as_deref(),
                    config.artifact_cache_bytes,
                    std::time::Duration::from_secs(config.download_url_seconds),
                )?
            }
            None => {
                let local = LocalFileSystem::new_with_prefix(&dir)
                    .map_err(artifacts::ArtifactError::from)?
                    .with_automatic_cleanup(true);
                Artifacts::new(Arc::new(local), config.artifact_cache_bytes)
                    .with_local_root(dir.clone())
            }
        };
        let removed = artifacts.remove_leftovers().await?;
        if removed > 0 {
            tracing::info!(removed, "removed leftovers of interrupted uploads");
        }
        let initial_admin_token = create_admin_token_if_none(&sql, &dir).await?;
        let store: Arc<dyn Store> = Arc::new(sql.clone());
        let changes = Arc::new(Changes::default());
        let events = EventWriter::start(store.clone(), changes.clone());
        let database_url = config.database_url.clone();
        let throttle =
            throttle::Throttle::new(config.auth_failures_burst, config.auth_failure_interval_ms);
        let long_polls = longpoll::LongPolls::for_connections(config.max_connections);
        let state = AppState(Arc::new(ServerState {
            config,
            store,
            artifacts,
            signing_key,
            metrics: Metrics::default(),
            device_tokens: DeviceTokenCache::default(),
            offers: OfferCache::default(),
            statuses: StatusBuffer::default(),
            events,
            changes,
            long_polls,
            instance,
            shared,
            throttle,
        }));
        let mut peers = Vec::new();
        if let Some(url) = database_url {
            let (listening, publishing) = peers::start(state.clone(), url.expose()).await?;
            peers.extend([listening, publishing]);
        }
        Ok(Server {
            state,
            sql,
            peers,
            tls,
            initial_admin_token,
        })
    }

    /// The state handlers run with.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Whether the server speaks HTTPS (it was given a certificate).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves HTTP on `listener` until `shutdown` completes, then finishes
    /// the requests in flight and closes the database.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let router = app(self.state.clone());
        let flusher = tokio::spawn(flush_statuses_every_second(self.state.clone()));
        let changes = self.state.changes.clone();
        // Dashboards' change streams never end by themselves: close them
        // first, or the graceful shutdown would wait for them forever.
        let shutdown = async move {
            shutdown.await;
            changes.close();
        };
        let tick = self.state.config.rollout_tick_ms;
        let scheduler = (tick > 0).then(|| {
            let every = std::time::Duration::from_millis(tick);
            let holder = self.state.instance.clone();
            tokio::spawn(scheduler::run(self.state.clone(), every, holder))
        });
        let setup = connection::Setup {
            router,
            state: self.state.clone(),
            tls: self.tls.clone().map(tokio_rustls::TlsAcceptor::from),
        };
        let result = connection::serve(listener, setup, shutdown).await;
        flusher.abort();
        if let Some(scheduler) = scheduler {
            scheduler.abort();
        }
        if let Err(err) = self.state.flush_statuses().await {
            tracing::error!(error = %err, "cannot write the last device statuses");
        }
        for task in &self.peers {
            task.abort();
        }
        self.sql.close().await;
        Ok(result?)
    }
}

async fn flush_statuses_every_second(state: AppState) {
    let mut interval = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        interval.tick().await;
        if let Err(err) = state.flush_statuses().await {
            tracing::error!(error = %err, "cannot write device statuses");
        }
    }
}

/// Creates the first admin token when there is none (of several instances
/// starting on one new database, one does); it is written to
/// `DIR/admin.token` before it is stored, so a start that crashes in
/// between leaves no admin token nobody knows.
async fn create_admin_token_if_none(
    store: &SqlStore,
    dir: &Path,
) -> Result<Option<String>, ServerError> {
    use store::CredentialStore;

    if store.count_admin_tokens().await? > 0 {
        return Ok(None);
    }
    let io = |source| ServerError::DataDir {
        path: dir.display().to_string(),
        source,
    };
    let token = auth::new_token("al_admin_").map_err(|e| io(std::io::Error::other(e)))?;
    let path = dir.join("admin.token");
    // A token file left by a start that crashed before the row was written is replaced.
    let remove = |path: &Path| match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(io(err)),
    };
    remove(&path)?;
    keys::write_private(&path, &format!("{token}\n")).map_err(io)?;
    if store
        .add_first_admin_token("admin", &auth::hash_token(&token))
        .await?
    {
        Ok(Some(token))
    } else {
        // Another instance created it a moment ago: this one is not valid.
        remove(&path)?;
        Ok(None)
    }
}

/// The HTTP application.
pub fn app(state: AppState) -> Router {
    api::router(state)
}

/// Opens the data directory of `config` and serves on `listener` until
/// `shutdown` completes. A new admin token is logged once (and is in `DIR/admin.token`).
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let server = Server::open(config).await?;
    if let Some(token) = &server.initial_admin_token {
        tracing::info!(token = %token, "created the admin token (also in admin.token)");
    }
    server.run(listener, shutdown).await
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM. The handlers are installed when
/// this is called (inside a Tokio runtime), not when the future is first
/// polled, so a signal right after start-up is not lost.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(term) => {}
                () = wait(int) => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
