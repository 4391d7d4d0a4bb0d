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

/// The effective configuration of a server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Directory holding the database, the artifacts and the signing key (`AIRLIFT_DATA`).
    pub data_dir: PathBuf,
    /// Address to listen on (`AIRLIFT_LISTEN`).
    pub listen: SocketAddr,
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
            max_upload_bytes: 16 * 1024 * 1024,
            poll_seconds: 60,
            long_poll_seconds: 50,
            public_url: None,
            enrollment_secret: None,
            artifact_cache_bytes: 256 * 1024 * 1024,
            cors_origins: Vec::new(),
            secure_cookie: false,
            cookie_same_site: SameSite::Strict,
            session_hours: 12,
            rollout_tick_ms: 1000,
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
            "AIRLIFT_ARTIFACT_CACHE_BYTES" => {
                self.artifact_cache_bytes =
                    parse("AIRLIFT_ARTIFACT_CACHE_BYTES", value, "a byte count")?
            }
            "AIRLIFT_CORS_ORIGINS" => {
                self.cors_origins = value
                    .split(',')
                    .map(str::trim)
                    .filter(|o| !o.is_empty())
                    .map(str::to_owned)
                    .collect()
            }
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
}
