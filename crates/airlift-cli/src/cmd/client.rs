//! The HTTP client shared by the server-facing commands (`release`, `device`,
//! `deploy`, `deployment`): server address and admin token from flags or
//! `AIRLIFT_SERVER` / `AIRLIFT_TOKEN`, and errors that quote the server.

use std::path::PathBuf;

use airlift_agent::tls::{Trust, parse_pin, read_pem_certs};
use anyhow::{Context, bail};
use clap::Args;
use reqwest::StatusCode;
use reqwest::blocking::{Client, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Where the server is and how to authenticate.
///
/// The environment variables are read here rather than by clap: clap
/// writes every argument an environment variable set into the usage line
/// of an unrelated error (`airlift deploy 2` without `--to` then shows
/// `--token <TOKEN>`, as if it were missing too).
#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// Base URL of the Airlift server [env: AIRLIFT_SERVER] [default: http://127.0.0.1:8080]
    #[arg(long, global = true)]
    pub server: Option<String>,
    /// Admin token (printed by the first `airlift serve`, also in DIR/admin.token) [env: AIRLIFT_TOKEN]
    #[arg(long, global = true)]
    pub token: Option<String>,
    #[command(flatten)]
    pub trust: TrustArgs,
}

/// How an `https://` server is trusted (the system's roots by default).
#[derive(Args, Debug, Clone, Default)]
pub struct TrustArgs {
    /// Trust this CA certificate (PEM) for the server's HTTPS instead of the
    /// system's roots (`airlift keys tls` writes airlift-ca.pem).
    #[arg(long, env = "AIRLIFT_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Accept only the server certificate with this SHA-256, or one that
    /// chains to the certificate with it (`airlift keys tls` prints both).
    #[arg(long, env = "AIRLIFT_TLS_PIN", global = true)]
    pub tls_pin: Option<String>,
}

impl TrustArgs {
    /// What these options trust.
    pub fn trust(&self) -> anyhow::Result<Trust> {
        let ca_certs = match &self.ca_cert {
            Some(path) => {
                let pem = std::fs::read(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                read_pem_certs(&pem).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            }
            None => Vec::new(),
        };
        let pin = self
            .tls_pin
            .as_deref()
            .map(parse_pin)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--tls-pin: {e}"))?;
        Ok(Trust {
            ca_certs,
            pin,
            require_https: false,
        })
    }
}

/// The default server address of the client commands.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// `given`, else the environment variable `name` when set and not empty.
pub fn or_env(given: Option<&String>, name: &str) -> Option<String> {
    given
        .cloned()
        .or_else(|| std::env::var(name).ok().filter(|v| !v.is_empty()))
}

impl ServerArgs {
    /// The server's base URL: `--server`, `AIRLIFT_SERVER` or the default.
    pub fn base(&self) -> String {
        or_env(self.server.as_ref(), "AIRLIFT_SERVER")
            .unwrap_or_else(|| DEFAULT_SERVER.to_owned())
            .trim_end_matches('/')
            .to_owned()
    }
}

/// An authenticated connection to the admin API.
pub struct Api {
    base: String,
    token: String,
    http: Client,
    tls: rustls::ClientConfig,
}

impl Api {
    /// Builds the client; fails when no token is given.
    pub fn new(args: &ServerArgs) -> anyhow::Result<Api> {
        let Some(token) = or_env(args.token.as_ref(), "AIRLIFT_TOKEN") else {
            bail!(
                "no admin token: pass --token or set AIRLIFT_TOKEN (the first `airlift serve` \
                 printed it; it is also in its data directory's admin.token)"
            )
        };
        let tls = airlift_agent::tls::client_config(&args.trust.trust()?)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let http = Client::builder()
            .timeout(None)
            .tls_backend_preconfigured(tls.clone())
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Api {
            base: args.base(),
            token,
            http,
            tls,
        })
    }

    /// An async client that trusts what this one trusts (`--ca-cert`,
    /// `--tls-pin`), for the streamed upload.
    pub fn async_client(&self) -> anyhow::Result<reqwest::Client> {
        reqwest::Client::builder()
            .tls_backend_preconfigured(self.tls.clone())
            .build()
            .context("cannot build the HTTP client")
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The admin token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// A request to `path` (starting with `/api/v1`).
    pub fn request(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// Sends a request and decodes a successful JSON answer.
    pub fn send<T: DeserializeOwned>(&self, request: RequestBuilder) -> anyhow::Result<T> {
        let response = request.send().map_err(|e| self.unreachable(e))?;
        decode(response)
    }

    /// The error of a request that got no answer, with what to check.
    pub fn unreachable(&self, err: reqwest::Error) -> anyhow::Error {
        anyhow::Error::new(err).context(format!(
            "cannot reach the server at {} (is `airlift serve` running there? \
             --server or AIRLIFT_SERVER says where it is)",
            self.base
        ))
    }

    /// GET `path` as JSON.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.request(reqwest::Method::GET, path))
    }

    /// POST JSON to `path`.
    pub fn post<T: DeserializeOwned>(&self, path: &str, body: &Value) -> anyhow::Result<T> {
        self.send(self.request(reqwest::Method::POST, path).json(body))
    }

    /// DELETE `path`; its JSON answer (`null` when it has none).
    pub fn delete(&self, path: &str) -> anyhow::Result<Value> {
        let response = self
            .request(reqwest::Method::DELETE, path)
            .send()
            .with_context(|| format!("cannot reach the server at {}", self.base))?;
        if response.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        decode(response)
    }
}

/// A successful answer as `T`, or the server's error message.
pub fn decode<T: DeserializeOwned>(response: Response) -> anyhow::Result<T> {
    let status = response.status();
    let text = response.text().context("cannot read the server's answer")?;
    decode_text(status, &text)
}

/// The body `text` of an answer with `status` as `T`, or the server's
/// error message with what to do about it.
pub fn decode_text<T: DeserializeOwned>(status: StatusCode, text: &str) -> anyhow::Result<T> {
    if !status.is_success() {
        let parsed: Option<Value> = serde_json::from_str(text).ok();
        let error = parsed.as_ref().map(|v| &v["error"]);
        let remedy = match status {
            StatusCode::UNAUTHORIZED => {
                " (check --token or AIRLIFT_TOKEN: the server's admin.token holds the first one)"
            }
            StatusCode::PAYLOAD_TOO_LARGE => {
                " (the server's max_upload_bytes, AIRLIFT_MAX_UPLOAD_BYTES, sets the limit)"
            }
            _ => "",
        };
        match error.and_then(|e| Some((e["code"].as_str()?, e["message"].as_str()?))) {
            Some((code, message)) => bail!("server refused ({status}, {code}): {message}{remedy}"),
            None => bail!("server answered {status}: {}{remedy}", text.trim()),
        }
    }
    serde_json::from_str(text).with_context(|| format!("unexpected answer from the server: {text}"))
}

/// Prints a value as pretty JSON.
pub fn print_json(value: &Value) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints a list answer: as JSON with `json`, else a table headed
/// `header` with one `row` per item, or the hint `none` (on stderr) when
/// the list is empty.
pub fn print_list(
    list: &Value,
    json: bool,
    none: &str,
    header: &[&str],
    row: impl Fn(&Value) -> Vec<String>,
) -> anyhow::Result<()> {
    if json {
        return print_json(list);
    }
    let items = list.as_array().map(Vec::as_slice).unwrap_or_default();
    if items.is_empty() {
        eprintln!("{none}");
        return Ok(());
    }
    let mut table = Table::new(header);
    for item in items {
        table.row(row(item));
    }
    table.print();
    Ok(())
}

/// The strings of an array (`tags`), none when it is not one.
pub fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|items| items.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// A string field or `-`.
pub fn field(value: &Value, key: &str) -> String {
    match &value[key] {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The time in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `?a=1&b=2` from the pairs whose value is not empty ("" when none is).
pub fn query(pairs: &[(&str, &str)]) -> String {
    let given: Vec<String> = pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if given.is_empty() {
        String::new()
    } else {
        format!("?{}", given.join("&"))
    }
}

/// "3 min ago" style age of a Unix-millisecond timestamp.
pub fn age(ms: &Value) -> String {
    let Some(ms) = ms.as_i64() else {
        return "never".to_owned();
    };
    let secs = (now_ms() - ms).max(0) / 1000;
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

/// Rows under a header, each column as wide as its widest cell, two
/// spaces apart (the last column unpadded): what `airlift device list`
/// and the other lists print. Plain text: no colour, no box drawing, so
/// it reads the same in a terminal, a file or `grep`.
pub struct Table {
    rows: Vec<Vec<String>>,
    right: Vec<bool>,
}

impl Table {
    /// A table with these column headings.
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| (*h).to_owned()).collect()],
            right: vec![false; header.len()],
        }
    }

    /// Aligns column `column` (from 0) to the right (numbers).
    pub fn right(mut self, column: usize) -> Table {
        if let Some(r) = self.right.get_mut(column) {
            *r = true;
        }
        self
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Prints the header and the rows.
    pub fn print(&self) {
        let columns = self.right.len();
        let mut widths = vec![0; columns];
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate().take(columns) {
                let width = widths[i];
                let last = i + 1 == columns;
                if i > 0 {
                    line.push_str("  ");
                }
                if self.right[i] {
                    line.push_str(&format!("{cell:>width$}"));
                } else if last {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<width$}"));
                }
            }
            outln!("{}", line.trim_end());
        }
    }
}

/// An ESP chip id as its name (`ESP32-C3`).
pub fn chip(value: &Value) -> String {
    let Some(id) = value.as_u64().and_then(|id| u16::try_from(id).ok()) else {
        return "-".to_owned();
    };
    match airlift_format::image::Chip::from_id(id) {
        chip if chip.is_known() => chip.name().to_owned(),
        _ => format!("chip id {id}"),
    }
}
