//! Server configuration: defaults, then a TOML file, then `AIRLIFT_*` environment variables.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A secret string: shown as `"<redacted>"` by `Debug` and when the
/// configuration is printed.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("<redacted>")
    }
}

/// A database URL: shown with its password redacted by `Debug` and when the
/// configuration is printed.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Wraps a URL.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The URL itself, password included.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with its password (if any) replaced by `<redacted>`.
    pub fn redacted(&self) -> String {
        let url = &self.0;
        let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
            return "<redacted>".into();
        };
        let authority_end = url[scheme_end..]
            .find(['/', '?', '#'])
            .map_or(url.len(), |i| scheme_end + i);
        let Some(at) = url[scheme_end..authority_end].rfind('@') else {
            return url.clone();
        };
        let userinfo = &url[scheme_end..scheme_end + at];
        match userinfo.split_once(':') {
            Some((user, _)) => format!(
                "{}{user}:<redacted>{}",
                &url[..scheme_end],
                &url[scheme_end + at..]
            ),
            None => url.clone(),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl Serialize for DatabaseUrl {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

/// The effective configuration of a server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Directory holding the database, the artifacts and the signing key (`AIRLIFT_DATA`).
    pub data_dir: PathBuf,
    /// Address to listen on (`AIRLIFT_LISTEN`).
    pub listen: SocketAddr,
    /// A PostgreSQL database (`postgres://user:password@host/db`) shared by
    /// every instance of the fleet's server, instead of the SQLite file in
    /// the data directory (`AIRLIFT_DATABASE_URL`).
    pub database_url: Option<DatabaseUrl>,
    /// Where artifacts live: unset for `artifacts/` in the data directory,
    /// or `s3://bucket/prefix` for an S3-compatible object store, with
    /// credentials from the usual AWS variables (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, ...) (`AIRLIFT_ARTIFACTS`).
    pub artifacts: Option<String>,
    /// The object store's endpoint, for S3-compatible stores other than
    /// AWS (MinIO, R2, moto) (`AIRLIFT_S3_ENDPOINT`, or `AWS_ENDPOINT_URL`).
    pub s3_endpoint: Option<String>,
    /// How long a presigned download URL given to a device stays valid, in
    /// seconds (`AIRLIFT_DOWNLOAD_URL_SECONDS`).
    pub download_url_seconds: u64,
    /// The release-signing key (a file from `airlift keys generate`) every
    /// instance signs with (`AIRLIFT_SIGNING_KEY_FILE`). Unset: SQLite
    /// keeps one in the data directory, PostgreSQL one in the database.
    pub signing_key_file: Option<PathBuf>,
    /// Largest accepted firmware upload in bytes (`AIRLIFT_MAX_UPLOAD_BYTES`).
    pub max_upload_bytes: u64,
    /// Seconds a device waits between check-ins (`AIRLIFT_POLL_SECONDS`).
    pub poll_seconds: u32,
    /// Longest a check-in of a device that can wait is held while there is
    /// nothing to offer it, in seconds, and never longer than
    /// `poll_seconds` (`AIRLIFT_LONG_POLL_SECONDS`); 0 answers every
    /// check-in at once. See [`crate::longpoll`].
    pub long_poll_seconds: u32,
    /// Base URL put in front of download paths given to devices, e.g. a CDN
    /// (`AIRLIFT_PUBLIC_URL`); by default devices get a path on this server.
    pub public_url: Option<String>,
    /// A fleet enrolment secret accepted in addition to those created through the API
    /// (`AIRLIFT_ENROLLMENT_SECRET`).
    pub enrollment_secret: Option<Secret>,
    /// The tags `enrollment_secret` grants: every device enrolling with it
    /// gets them, and may ask for no other (`AIRLIFT_ENROLLMENT_TAGS`,
    /// comma-separated).
    pub enrollment_tags: Vec<String>,
    /// The names `enrollment_secret` enrols, `*` matching any run of
    /// characters (`roof-*`); unset: any name (`AIRLIFT_ENROLLMENT_NAME_PATTERN`).
    pub enrollment_name_pattern: Option<String>,
    /// Bytes of artifacts kept in memory for downloads (`AIRLIFT_ARTIFACT_CACHE_BYTES`).
    pub artifact_cache_bytes: u64,
    /// Origins (`https://fleet.example.com`) whose pages may call the API
    /// with the dashboard's session cookie: the dashboard served from a
    /// static host (`AIRLIFT_CORS_ORIGINS`, comma-separated).
    pub cors_origins: Vec<String>,
    /// Mark the dashboard's session cookie `Secure`, for a server reached
    /// over HTTPS (`AIRLIFT_SECURE_COOKIE`).
    pub secure_cookie: bool,
    /// The session cookie's `SameSite`: `strict` (the default) when the
    /// dashboard is on the API's site, `none` when it is on another site
    /// (then the cookie is also `Secure`, so HTTPS is needed)
    /// (`AIRLIFT_COOKIE_SAME_SITE`).
    pub cookie_same_site: SameSite,
    /// Hours a dashboard session lasts (`AIRLIFT_SESSION_HOURS`).
    pub session_hours: u32,
    /// Milliseconds between two steps of the rollout scheduler
    /// (`AIRLIFT_ROLLOUT_TICK_MS`); 0 runs no scheduler (tests step it themselves).
    pub rollout_tick_ms: u64,
    /// PEM certificate chain to serve HTTPS with, the server's certificate
    /// first (`AIRLIFT_TLS_CERT`; `airlift keys tls` makes one for a lab).
    /// Without it the server speaks plain HTTP.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert` (`AIRLIFT_TLS_KEY`).
    pub tls_key: Option<PathBuf>,
    /// Milliseconds a client has to send a whole request head (and, over
    /// TLS, finish its handshake) once it started one (`AIRLIFT_HEADER_TIMEOUT_MS`).
    pub header_timeout_ms: u64,
    /// Connections served at once (`AIRLIFT_MAX_CONNECTIONS`); more are
    /// answered 503 and closed. Also kept below the process's file
    /// descriptor limit.
    pub max_connections: u32,
    /// Failed authentications a client may make back to back
    /// (`AIRLIFT_AUTH_FAILURES_BURST`); a credential under attack from many
    /// addresses gets ten times as many.
    pub auth_failures_burst: u32,
    /// Milliseconds after which a client may fail once more
    /// (`AIRLIFT_AUTH_FAILURE_INTERVAL_MS`); a credential's allowance
    /// refills ten times as fast.
    pub auth_failure_interval_ms: u64,
}

/// The `SameSite` attribute of the dashboard's session cookie.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SameSite {
    /// Sent only with requests from the API's own site.
    #[default]
    Strict,
    /// Sent with requests from any site (the CORS origins decide who may read answers).
    None,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./airlift-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: None,
            artifacts: None,
            s3_endpoint: None,
            download_url_seconds: 600,
            signing_key_file: None,
            max_upload_bytes: 16 * 1024 * 1024,
            poll_seconds: 60,
            long_poll_seconds: 50,
            public_url: None,
            enrollment_secret: None,
            enrollment_tags: Vec::new(),
            enrollment_name_pattern: None,
            artifact_cache_bytes: 256 * 1024 * 1024,
            cors_origins: Vec::new(),
            secure_cookie: false,
            cookie_same_site: SameSite::Strict,
            session_hours: 12,
            rollout_tick_ms: 1000,
            tls_cert: None,
            tls_key: None,
            header_timeout_ms: 10_000,
            max_connections: 10_000,
            auth_failures_burst: 20,
            auth_failure_interval_ms: 1000,
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this configuration.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An environment variable has a value of the wrong shape.
    #[error("invalid {name}={value:?}: expected {expected}")]
    Env {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A setting has a value the server cannot use.
    #[error("invalid {name}: {message}")]
    Invalid {
        /// The setting.
        name: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Defaults, overridden by `file` (when given), overridden by the `AIRLIFT_*`
    /// variables of `env` (pass `std::env::vars()`).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.to_owned(),
                    message: e.message().to_owned(),
                })?
            }
            None => Config::default(),
        };
        for (name, value) in env {
            config.apply_env(&name, value)?;
        }
        config.validate()?;
        Ok(config)
    }

    fn apply_env(&mut self, name: &str, value: String) -> Result<(), ConfigError> {
        fn list(value: &str) -> Vec<String> {
            value
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(str::to_owned)
                .collect()
        }
        fn parse<T: std::str::FromStr>(
            name: &'static str,
            value: String,
            expected: &'static str,
        ) -> Result<T, ConfigError> {
            value.parse().map_err(|_| ConfigError::Env {
                name,
                value,
                expected,
            })
        }
        match name {
            "AIRLIFT_DATA" => self.data_dir = PathBuf::from(value),
            "AIRLIFT_LISTEN" => {
                self.listen = parse("AIRLIFT_LISTEN", value, "an address like 127.0.0.1:8080")?
            }
            "AIRLIFT_DATABASE_URL" => self.database_url = Some(DatabaseUrl(value)),
            "AIRLIFT_ARTIFACTS" => self.artifacts = Some(value),
            "AIRLIFT_S3_ENDPOINT" => self.s3_endpoint = Some(value),
            "AIRLIFT_DOWNLOAD_URL_SECONDS" => {
                self.download_url_seconds =
                    parse("AIRLIFT_DOWNLOAD_URL_SECONDS", value, "a number of seconds")?
            }
            "AIRLIFT_SIGNING_KEY_FILE" => self.signing_key_file = Some(PathBuf::from(value)),
            "AIRLIFT_MAX_UPLOAD_BYTES" => {
                self.max_upload_bytes = parse("AIRLIFT_MAX_UPLOAD_BYTES", value, "a byte count")?
            }
            "AIRLIFT_POLL_SECONDS" => {
                self.poll_seconds = parse("AIRLIFT_POLL_SECONDS", value, "a number of seconds")?
            }
            "AIRLIFT_LONG_POLL_SECONDS" => {
                self.long_poll_seconds =
                    parse("AIRLIFT_LONG_POLL_SECONDS", value, "a number of seconds")?
            }
            "AIRLIFT_PUBLIC_URL" => self.public_url = Some(value),
            "AIRLIFT_ENROLLMENT_SECRET" => self.enrollment_secret = Some(Secret(value)),
            "AIRLIFT_ENROLLMENT_TAGS" => self.enrollment_tags = list(&value),
            "AIRLIFT_ENROLLMENT_NAME_PATTERN" => self.enrollment_name_pattern = Some(value),
            "AIRLIFT_ARTIFACT_CACHE_BYTES" => {
                self.artifact_cache_bytes =
                    parse("AIRLIFT_ARTIFACT_CACHE_BYTES", value, "a byte count")?
            }
            "AIRLIFT_CORS_ORIGINS" => self.cors_origins = list(&value),
            "AIRLIFT_SECURE_COOKIE" => {
                self.secure_cookie = parse("AIRLIFT_SECURE_COOKIE", value, "true or false")?
            }
            "AIRLIFT_COOKIE_SAME_SITE" => {
                self.cookie_same_site = match value.as_str() {
                    "strict" => SameSite::Strict,
                    "none" => SameSite::None,
                    _ => {
                        return Err(ConfigError::Env {
                            name: "AIRLIFT_COOKIE_SAME_SITE",
                            value,
                            expected: "strict or none",
                        });
                    }
                }
            }
            "AIRLIFT_SESSION_HOURS" => {
                self.session_hours = parse("AIRLIFT_SESSION_HOURS", value, "a number of hours")?
            }
            "AIRLIFT_ROLLOUT_TICK_MS" => {
                self.rollout_tick_ms =
                    parse("AIRLIFT_ROLLOUT_TICK_MS", value, "a number of milliseconds")?
            }
            "AIRLIFT_TLS_CERT" => self.tls_cert = Some(PathBuf::from(value)),
            "AIRLIFT_TLS_KEY" => self.tls_key = Some(PathBuf::from(value)),
            "AIRLIFT_HEADER_TIMEOUT_MS" => {
                self.header_timeout_ms = parse(
                    "AIRLIFT_HEADER_TIMEOUT_MS",
                    value,
                    "a number of milliseconds",
                )?
            }
            "AIRLIFT_MAX_CONNECTIONS" => {
                self.max_connections =
                    parse("AIRLIFT_MAX_CONNECTIONS", value, "a number of connections")?
            }
            "AIRLIFT_AUTH_FAILURES_BURST" => {
                self.auth_failures_burst =
                    parse("AIRLIFT_AUTH_FAILURES_BURST", value, "a number of failures")?
            }
            "AIRLIFT_AUTH_FAILURE_INTERVAL_MS" => {
                self.auth_failure_interval_ms = parse(
                    "AIRLIFT_AUTH_FAILURE_INTERVAL_MS",
                    value,
                    "a number of milliseconds",
                )?
            }
            _ => {}
        }
        Ok(())
    }

    /// Checks what the types cannot: each CORS origin is `scheme://host[:port]`
    /// (what browsers send in `Origin`), and a session lasts at least an hour.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for origin in &self.cors_origins {
            let rest = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            let well_formed = rest.is_some_and(|host| {
                !host.is_empty()
                    && host
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
            });
            if !well_formed {
                return Err(ConfigError::Invalid {
                    name: "cors_origins",
                    message: format!(
                        "{origin:?} is not an origin: expected scheme://host[:port] \
                         without a path, e.g. https://fleet.example.com"
                    ),
                });
            }
        }
        if let Some(url) = &self.database_url
            && !(url.expose().starts_with("postgres://")
                || url.expose().starts_with("postgresql://"))
        {
            return Err(ConfigError::Invalid {
                name: "database_url",
                message: format!(
                    "{} is not a PostgreSQL URL: expected postgres://user:password@host/database \
                     (without it, the server keeps SQLite in the data directory)",
                    url.redacted()
                ),
            });
        }
        if let Some(artifacts) = &self.artifacts
            && crate::artifacts::S3Location::parse(artifacts).is_none()
        {
            return Err(ConfigError::Invalid {
                name: "artifacts",
                message: format!(
                    "{artifacts:?} is not an object store location: expected s3://bucket or \
                     s3://bucket/prefix (without it, artifacts live in the data directory)"
                ),
            });
        }
        if self.download_url_seconds == 0 || self.download_url_seconds > 7 * 24 * 3600 {
            return Err(ConfigError::Invalid {
                name: "download_url_seconds",
                message: "a download URL must last from 1 second to 7 days (S3's longest)".into(),
            });
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::Invalid {
                name: "tls_cert",
                message: "HTTPS needs both the certificate (tls_cert, AIRLIFT_TLS_CERT, \
                          --tls-cert) and its key (tls_key, AIRLIFT_TLS_KEY, --tls-key)"
                    .into(),
            });
        }
        for (name, value) in [
            ("header_timeout_ms", self.header_timeout_ms),
            ("max_connections", u64::from(self.max_connections)),
            ("auth_failures_burst", u64::from(self.auth_failures_burst)),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    name,
                    message: "must be at least 1".into(),
                });
            }
        }
        crate::api::admin::check_name_and_tags("configuration", &self.enrollment_tags).map_err(
            |err| ConfigError::Invalid {
                name: "enrollment_tags",
                message: err.to_string(),
            },
        )?;
        if let Some(pattern) = &self.enrollment_name_pattern {
            crate::identity::check_name_pattern(pattern).map_err(|message| {
                ConfigError::Invalid {
                    name: "enrollment_name_pattern",
                    message,
                }
            })?;
        }
        if self.session_hours == 0 {
            return Err(ConfigError::Invalid {
                name: "session_hours",
                message: "a session must last at least 1 hour".into(),
            });
        }
        Ok(())
    }

    /// The configuration as TOML, secrets redacted (`airlift serve --print-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot print configuration: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn environment_overrides_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("airlift.toml");
        std::fs::write(
            &file,
            "poll_seconds = 5\nmax_upload_bytes = 1000\ndata_dir = \"/srv/a\"\n",
        )
        .unwrap();
        let config = Config::load(
            Some(&file),
            env(&[
                ("AIRLIFT_POLL_SECONDS", "7"),
                ("AIRLIFT_ROLLOUT_TICK_MS", "250"),
                ("AIRLIFT_TOKEN", "client-only"),
                ("HOME", "/"),
            ]),
        )
        .unwrap();
        assert_eq!(config.poll_seconds, 7);
        assert_eq!(config.rollout_tick_ms, 250);
        assert_eq!(config.max_upload_bytes, 1000);
        assert_eq!(config.data_dir, PathBuf::from("/srv/a"));
        assert_eq!(config.listen, Config::default().listen);
    }

    #[test]
    fn secrets_are_redacted_in_debug_and_printed_config() {
        let config = Config::load(None, env(&[("AIRLIFT_ENROLLMENT_SECRET", "hunter2")])).unwrap();
        assert_eq!(
            config.enrollment_secret.as_ref().unwrap().expose(),
            "hunter2"
        );
        assert!(!format!("{config:?}").contains("hunter2"));
        assert!(!config.to_toml().contains("hunter2"));
        assert!(config.to_toml().contains("<redacted>"));
    }

    #[test]
    fn the_configured_enrolment_secret_grants_configured_tags_and_names_issue_16() {
        let config = Config::load(
            None,
            env(&[
                ("AIRLIFT_ENROLLMENT_TAGS", "roof, eu"),
                ("AIRLIFT_ENROLLMENT_NAME_PATTERN", "roof-*"),
            ]),
        )
        .unwrap();
        assert_eq!(config.enrollment_tags, ["roof", "eu"]);
        assert_eq!(config.enrollment_name_pattern.as_deref(), Some("roof-*"));
        assert!(
            config
                .to_toml()
                .contains("enrollment_name_pattern = \"roof-*\"")
        );
        for (name, value) in [
            ("AIRLIFT_ENROLLMENT_TAGS", "has space"),
            ("AIRLIFT_ENROLLMENT_NAME_PATTERN", "roof?"),
        ] {
            let err = Config::load(None, env(&[(name, value)])).unwrap_err();
            assert!(
                err.to_string().contains("invalid enrollment_"),
                "{name}={value}: {err}"
            );
        }
    }

    #[test]
    fn database_passwords_are_redacted_and_urls_checked() {
        let config = Config::load(
            None,
            env(&[
                (
                    "AIRLIFT_DATABASE_URL",
                    "postgres://fleet:s3cret@db:5432/airlift",
                ),
                ("AIRLIFT_ARTIFACTS", "s3://firmware/fleet-a"),
            ]),
        )
        .unwrap();
        let url = config.database_url.as_ref().unwrap();
        assert_eq!(url.expose(), "postgres://fleet:s3cret@db:5432/airlift");
        assert_eq!(
            url.redacted(),
            "postgres://fleet:<redacted>@db:5432/airlift"
        );
        assert!(!format!("{config:?}").contains("s3cret"));
        assert!(!config.to_toml().contains("s3cret"));
        assert!(config.to_toml().contains("s3://firmware/fleet-a"));
        assert_eq!(
            DatabaseUrl::new("postgres://db/airlift").redacted(),
            "postgres://db/airlift"
        );
        for (name, value) in [
            ("AIRLIFT_DATABASE_URL", "mysql://db/airlift"),
            ("AIRLIFT_ARTIFACTS", "/srv/artifacts"),
            ("AIRLIFT_ARTIFACTS", "s3://"),
            ("AIRLIFT_DOWNLOAD_URL_SECONDS", "0"),
        ] {
            let err = Config::load(None, env(&[(name, value)])).unwrap_err();
            assert!(err.to_string().contains("invalid"), "{name}={value}: {err}");
        }
    }

    #[test]
    fn bad_values_name_the_variable_and_the_expected_shape() {
        let err = Config::load(None, env(&[("AIRLIFT_LISTEN", "nowhere")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid AIRLIFT_LISTEN=\"nowhere\": expected an address like 127.0.0.1:8080"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("airlift.toml");
        std::fs::write(&file, "pol_seconds = 5\n").unwrap();
        let err = Config::load(Some(&file), env(&[])).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `pol_seconds`"),
            "{err}"
        );
    }

    #[test]
    fn dashboard_settings_come_from_the_environment_and_origins_are_checked() {
        let config = Config::load(
            None,
            env(&[
                (
                    "AIRLIFT_CORS_ORIGINS",
                    "https://fleet.example.com, http://127.0.0.1:8000",
                ),
                ("AIRLIFT_SECURE_COOKIE", "true"),
                ("AIRLIFT_COOKIE_SAME_SITE", "none"),
                ("AIRLIFT_SESSION_HOURS", "2"),
            ]),
        )
        .unwrap();
        assert_eq!(
            config.cors_origins,
            ["https://fleet.example.com", "http://127.0.0.1:8000"]
        );
        assert!(config.secure_cookie);
        assert_eq!(config.cookie_same_site, SameSite::None);
        assert_eq!(config.session_hours, 2);
        for (name, value) in [
            ("AIRLIFT_CORS_ORIGINS", "fleet.example.com"),
            ("AIRLIFT_CORS_ORIGINS", "https://fleet.example.com/"),
            ("AIRLIFT_COOKIE_SAME_SITE", "lax"),
            ("AIRLIFT_SESSION_HOURS", "0"),
        ] {
            let err = Config::load(None, env(&[(name, value)])).unwrap_err();
            assert!(err.to_string().contains("invalid"), "{name}={value}: {err}");
        }
    }

    #[test]
    fn tls_and_connection_bounds_come_from_the_environment_and_tls_needs_both_files() {
        let config = Config::load(
            None,
            env(&[
                ("AIRLIFT_TLS_CERT", "/etc/airlift/chain.pem"),
                ("AIRLIFT_TLS_KEY", "/etc/airlift/key.pem"),
                ("AIRLIFT_HEADER_TIMEOUT_MS", "5000"),
                ("AIRLIFT_MAX_CONNECTIONS", "300"),
                ("AIRLIFT_AUTH_FAILURES_BURST", "7"),
                ("AIRLIFT_AUTH_FAILURE_INTERVAL_MS", "250"),
            ]),
        )
        .unwrap();
        assert_eq!(
            config.tls_cert,
            Some(PathBuf::from("/etc/airlift/chain.pem"))
        );
        assert_eq!(config.header_timeout_ms, 5000);
        assert_eq!(config.max_connections, 300);
        assert_eq!(
            (config.auth_failures_burst, config.auth_failure_interval_ms),
            (7, 250)
        );
        let err = Config::load(None, env(&[("AIRLIFT_TLS_CERT", "/c.pem")])).unwrap_err();
        assert!(err.to_string().contains("both the certificate"), "{err}");
        let err = Config::load(None, env(&[("AIRLIFT_MAX_CONNECTIONS", "0")])).unwrap_err();
        assert!(err.to_string().contains("max_connections"), "{err}");
    }
}
