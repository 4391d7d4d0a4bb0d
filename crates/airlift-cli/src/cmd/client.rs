//! The HTTP client shared by the server-facing commands (`release`, `device`,
//! `deploy`, `deployment`): server address and admin token from flags or
//! `AIRLIFT_SERVER` / `AIRLIFT_TOKEN`, and errors that quote the server.

use anyhow::{Context, bail};
use clap::Args;
use reqwest::blocking::{Client, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Where the server is and how to authenticate.
#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// Base URL of the Airlift server.
    #[arg(
        long,
        env = "AIRLIFT_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub server: String,
    /// Admin token (printed by the first `airlift serve`, also in DIR/admin.token).
    #[arg(long, env = "AIRLIFT_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

/// An authenticated connection to the admin API.
pub struct Api {
    base: String,
    token: String,
    http: Client,
}

impl Api {
    /// Builds the client; fails when no token is given.
    pub fn new(args: &ServerArgs) -> anyhow::Result<Api> {
        let Some(token) = args.token.clone() else {
            bail!("no admin token: pass --token or set AIRLIFT_TOKEN (see DIR/admin.token)")
        };
        let http = Client::builder()
            .timeout(None)
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Api {
            base: args.server.trim_end_matches('/').to_owned(),
            token,
            http,
        })
    }

    /// A request to `path` (starting with `/api/v1`).
    pub fn request(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// Sends a request and decodes a successful JSON answer.
    pub fn send<T: DeserializeOwned>(&self, request: RequestBuilder) -> anyhow::Result<T> {
        let response = request
            .send()
            .with_context(|| format!("cannot reach the server at {}", self.base))?;
        decode(response)
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
    if !status.is_success() {
        let parsed: Option<Value> = serde_json::from_str(&text).ok();
        let error = parsed.as_ref().map(|v| &v["error"]);
        match error.and_then(|e| Some((e["code"].as_str()?, e["message"].as_str()?))) {
            Some((code, message)) => bail!("server refused ({status}, {code}): {message}"),
            None => bail!("server answered {status}: {}", text.trim()),
        }
    }
    serde_json::from_str(&text)
        .with_context(|| format!("unexpected answer from the server: {text}"))
}

/// Prints a value as pretty JSON.
pub fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints a list answer: as JSON with `json`, else `none` when it is
/// empty, and one `row` per item.
pub fn print_list(
    list: &Value,
    json: bool,
    none: &str,
    mut row: impl FnMut(&Value),
) -> anyhow::Result<()> {
    if json {
        return print_json(list);
    }
    let items = list.as_array().map(Vec::as_slice).unwrap_or_default();
    if items.is_empty() {
        println!("{none}");
    }
    items.iter().for_each(&mut row);
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

/// "3 min ago" style age of a Unix-millisecond timestamp.
pub fn age(ms: &Value) -> String {
    let Some(ms) = ms.as_i64() else {
        return "never".to_owned();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(ms);
    let secs = (now - ms).max(0) / 1000;
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}
