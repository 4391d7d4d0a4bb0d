//! A real server on 127.0.0.1:0 with a temporary data directory, and helpers
//! to talk to it over HTTP.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use airlift_format::image::{Chip, ImageBuilder};
use airlift_server::{AppState, Config, Server};
use reqwest::{Client, Method, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::oneshot;

pub struct TestServer {
    pub url: String,
    pub admin_token: String,
    pub dir: tempfile::TempDir,
    pub client: Client,
    /// The server's state, for what tests do in-process (scheduler ticks).
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> TestServer {
        Self::open(tempfile::tempdir().unwrap(), configure).await
    }

    /// Starts a server on `dir`, new or left by an earlier one.
    pub async fn open(dir: tempfile::TempDir, configure: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        configure(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = Server::open(config).await.unwrap();
        // Another instance on the same database may have created it (then
        // the test sets the token it has).
        let admin_token = server.initial_admin_token.clone().unwrap_or_else(|| {
            std::fs::read_to_string(dir.path().join("admin.token"))
                .map(|t| t.trim().to_owned())
                .unwrap_or_default()
        });
        let state = server.state().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(listener, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        TestServer {
            url,
            admin_token,
            dir,
            client: Client::new(),
            state,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Response {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.admin_token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap()
    }

    /// Admin call expected to answer `status`; returns its JSON body.
    pub async fn admin_json(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        status: StatusCode,
    ) -> Value {
        let response = self.admin(method.clone(), path, body).await;
        let got = response.status();
        let text = response.text().await.unwrap();
        assert_eq!(got, status, "{method} {path}: {text}");
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        }
    }

    pub async fn upload(&self, image: &[u8]) -> Response {
        self.client
            .post(format!("{}/api/v1/releases", self.url))
            .bearer_auth(&self.admin_token)
            .body(image.to_vec())
            .send()
            .await
            .unwrap()
    }

    /// Uploads an image that must be accepted; returns the release.
    pub async fn release(&self, image: &[u8]) -> Value {
        let response = self.upload(image).await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert!(status.is_success(), "{status}: {body}");
        body
    }

    /// Adds a device; returns its token.
    pub async fn device(&self, name: &str, tags: &[&str]) -> String {
        let body = self
            .admin_json(
                Method::POST,
                "/api/v1/devices",
                Some(json!({"name": name, "tags": tags})),
                StatusCode::CREATED,
            )
            .await;
        body["token"].as_str().unwrap().to_owned()
    }

    /// Signs the dashboard in with the admin token (and the guard header);
    /// returns the answer's whole `Set-Cookie` value and its body.
    pub async fn sign_in(&self) -> (String, Value) {
        let response = self
            .client
            .post(format!("{}/api/v1/session", self.url))
            .header("x-airlift-csrf", "1")
            .json(&json!({"token": self.admin_token}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let cookie = response.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .to_owned();
        (cookie, response.json().await.unwrap())
    }

    pub async fn deploy(&self, release: &Value, target: &str) -> Value {
        self.admin_json(
            Method::POST,
            "/api/v1/deployments",
            Some(json!({"release": release["id"].to_string(), "target": target})),
            StatusCode::CREATED,
        )
        .await
    }

    pub async fn as_device(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Response {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap()
    }

    /// Checks in as a device running `running`; returns the answer.
    pub async fn checkin(&self, token: &str, running: &Running) -> Value {
        let response = self
            .as_device(
                token,
                Method::POST,
                "/api/v1/device/checkin",
                Some(running.checkin()),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    pub async fn event(&self, token: &str, event: Value) -> Response {
        self.as_device(token, Method::POST, "/api/v1/device/events", Some(event))
            .await
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of the metrics line starting with `line_start` (name and labels).
    pub async fn metric(&self, line_start: &str) -> u64 {
        metric_in(&self.metrics_text().await, line_start)
    }

    /// Files under `DIR/sub`, recursively, relative names.
    pub fn files_under(&self, sub: &str) -> Vec<PathBuf> {
        files_under(&self.dir.path().join(sub))
    }
}

/// The value of the line starting with `line_start` in a Prometheus text.
pub fn metric_in(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in {text}"))
}

pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// What a simulated device runs.
#[derive(Clone, Debug)]
pub struct Running {
    pub chip_id: u16,
    pub version: String,
    pub sha256: String,
    pub security_version: u32,
}

impl Running {
    pub fn factory() -> Running {
        Running {
            chip_id: 5,
            version: "v0".into(),
            sha256: "00".repeat(32),
            security_version: 0,
        }
    }

    pub fn checkin(&self) -> Value {
        json!({"chip_id": self.chip_id, "running": {"project": "demo", "version": self.version,
            "sha256": self.sha256, "security_version": self.security_version, "slot": 0},
            "state": "idle", "boot_count": 0})
    }
}

/// A valid ESP32-C3 app image; `seed` varies its bytes.
pub fn image(version: &str, secure_version: u32, seed: u8) -> Vec<u8> {
    image_for(Chip::Esp32c3, version, secure_version, seed)
}

pub fn image_for(chip: Chip, version: &str, secure_version: u32, seed: u8) -> Vec<u8> {
    let data: Vec<u8> = (0..4096u32)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    ImageBuilder::new(chip)
        .app("demo", version)
        .secure_version(secure_version)
        .segment(0x4200_0020, data)
        .build()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

pub fn error_code(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {body}"))
}

/// A random lowercase hex name of `n` bytes.
pub fn random_name(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).unwrap();
    hex::encode(bytes)
}

/// A new, empty database on the PostgreSQL cluster `scripts/services`
/// started (`./scripts/test` runs every test through it); its URL.
pub async fn postgres_database() -> String {
    use sqlx::{Connection, Executor};

    let base = std::env::var("AIRLIFT_TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "this test needs PostgreSQL (AIRLIFT_TEST_DATABASE_URL): run it through \
             scripts/services, e.g. scripts/services cargo test -p airlift-server \
             (./scripts/test does)"
        )
    });
    let name = format!("t_{}", random_name(8));
    let mut conn = sqlx::postgres::PgConnection::connect(&base).await.unwrap();
    conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .unwrap();
    conn.close().await.unwrap();
    let (server, _) = base.rsplit_once('/').unwrap();
    format!("{server}/{name}")
}

/// A new, empty bucket on the S3 server (moto) `scripts/services` started:
/// its endpoint and name.
pub async fn s3_bucket() -> (String, String) {
    let endpoint = std::env::var("AIRLIFT_TEST_S3_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "this test needs an S3 server (AIRLIFT_TEST_S3_ENDPOINT): run it through \
             scripts/services (./scripts/test does)"
        )
    });
    let bucket = format!("t-{}", random_name(8));
    let response = Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    (endpoint, bucket)
}
