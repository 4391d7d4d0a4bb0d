//! The device's HTTP: check-ins, events, artifact requests, enrolment and
//! plain fetches for the device page, with the device's token and the
//! fleet's shared connection limit. Only bytes and status codes here: what
//! to ask for and what an answer means is the client's (`airlift-client`).

use std::sync::Arc;
use std::time::Duration;

use airlift_client::download::Fetch;
use airlift_protocol::{
    CHECKIN_PATH, CheckIn, CheckInAnswer, ENROLL_PATH, EVENTS_PATH, EnrollAnswer, EnrollRequest,
    ErrorAnswer, Event,
};

use crate::AgentError;
use crate::tls::{Trust, plain_http_refused};

/// A reqwest client suited to devices: short connect timeout, a read
/// timeout so a stalled download is retried; HTTPS trusts the system's roots.
pub fn http_client() -> Result<reqwest::Client, AgentError> {
    http_client_with(&Trust::default())
}

/// The same, trusting what `trust` says (a CA, a pinned certificate) and
/// refusing plain HTTP when it requires HTTPS.
pub fn http_client_with(trust: &Trust) -> Result<reqwest::Client, AgentError> {
    let tls = crate::tls::client_config(trust).map_err(AgentError::Http)?;
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(READ_TIMEOUT_SECONDS))
        .tls_backend_preconfigured(tls)
        .https_only(trust.require_https)
        .build()
        .map_err(|e| AgentError::Http(e.to_string()))
}

/// A connection silent this long is given up ([`http_client`]).
const READ_TIMEOUT_SECONDS: u64 = 30;

/// How long a device's check-in may wait for its answer (a long poll):
/// within the read timeout, with room for a slow answer.
pub const LONG_POLL: Duration = Duration::from_secs(READ_TIMEOUT_SECONDS - 5);

/// An error with its causes (reqwest's own message leaves out why a
/// request failed: a refused certificate, a refused connection).
pub fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn bounded<const N: usize>(s: &str) -> heapless::String<N> {
    airlift_client::text::Text::<N>::from_str_cut(s).0
}

/// Enrols a device with a fleet enrolment secret; returns its token.
pub async fn enroll(
    http: &reqwest::Client,
    server: &str,
    secret: &str,
    name: &str,
    tags: &[String],
) -> Result<String, AgentError> {
    let mut t = heapless::Vec::new();
    for tag in tags {
        let _ = t.push(bounded(tag));
    }
    let request = EnrollRequest {
        secret: bounded(secret),
        name: bounded(name),
        tags: t,
    };
    let response = http
        .post(format!("{}{ENROLL_PATH}", server.trim_end_matches('/')))
        .json(&request)
        .send()
        .await
        .map_err(|e| AgentError::Http(format!("enrolment: {}", describe(&e))))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(AgentError::Http(format!(
            "enrolment refused ({status}): {body}"
        )));
    }
    let answer: EnrollAnswer = response
        .json()
        .await
        .map_err(|e| AgentError::Http(format!("enrolment answer: {e}")))?;
    Ok(answer.token.to_string())
}

/// One device's connection to its server.
pub(crate) struct Transport {
    server: Option<String>,
    token: Option<String>,
    http: reqwest::Client,
    downloads: Option<reqwest::Client>,
    limit: Option<Arc<tokio::sync::Semaphore>>,
    require_https: bool,
}

impl Transport {
    pub(crate) fn new(
        server: Option<String>,
        token: Option<String>,
        http: reqwest::Client,
        downloads: Option<reqwest::Client>,
        limit: Option<Arc<tokio::sync::Semaphore>>,
        require_https: bool,
    ) -> Transport {
        Transport {
            server,
            token,
            http,
            downloads,
            limit,
            require_https,
        }
    }

    /// Refuses a plain `http://` URL when the device requires HTTPS.
    pub(crate) fn allowed(&self, url: &str) -> Result<(), String> {
        match plain_http_refused(url).filter(|_| self.require_https) {
            Some(refused) => Err(refused),
            None => Ok(()),
        }
    }

    /// A permit of the fleet's shared connection limit, held for a request.
    pub(crate) async fn permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        match &self.limit {
            Some(limit) => limit.clone().acquire_owned().await.ok(),
            None => None,
        }
    }

    /// `path` on the server (an absolute URL stays as it is).
    pub(crate) fn url(&self, path: &str) -> Option<String> {
        let server = self.server.as_deref()?;
        airlift_client::download::url(server, path).map(|u| u.as_str().to_owned())
    }

    fn authed(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => request.bearer_auth(t),
            None => request,
        }
    }

    /// Posts a check-in; the answer, or why there is none.
    pub(crate) async fn check_in(&self, report: &CheckIn) -> Result<CheckInAnswer, AgentError> {
        let url = self
            .url(CHECKIN_PATH)
            .ok_or_else(|| AgentError::Http("no server".into()))?;
        self.allowed(&url).map_err(AgentError::Http)?;
        let _permit = self.permit().await;
        // A long poll may be held that long before the answer starts.
        let wait = u64::from(report.long_poll_seconds.unwrap_or(0));
        let response = self
            .authed(self.http.post(url))
            .timeout(Duration::from_secs(30 + wait))
            .json(report)
            .send()
            .await
            .map_err(|e| AgentError::Http(format!("cannot reach the server: {}", describe(&e))))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            // The code, read as the firmware reads it, tells a revoked token apart.
            return Err(match serde_json::from_str::<ErrorAnswer>(&body) {
                Ok(answer) => AgentError::Refused {
                    status: status.as_u16(),
                    code: answer.error.code.to_string(),
                    message: format!("check-in refused: {}", body.trim()),
                },
                Err(_) => AgentError::Http(format!("check-in refused ({status}): {}", body.trim())),
            });
        }
        response
            .json()
            .await
            .map_err(|e| AgentError::Http(format!("bad check-in answer: {e}")))
    }

    /// Posts events in one request: one as an object, several as an array.
    /// `Ok(false)` when there is no server to tell.
    pub(crate) async fn send_events(&self, events: &[Event]) -> Result<bool, String> {
        let Some(url) = self.url(EVENTS_PATH) else {
            return Ok(false);
        };
        self.allowed(&url)?;
        let request = self
            .authed(self.http.post(&url))
            .timeout(Duration::from_secs(10));
        let request = match events {
            [one] => request.json(one),
            many => request.json(many),
        };
        let _permit = self.permit().await;
        match request.send().await {
            Ok(r) if r.status().is_success() => Ok(true),
            Ok(r) => Err(format!("server refused: {}", r.status())),
            Err(e) => Err(format!("could not send: {}", describe(&e))),
        }
    }

    /// The request for `fetch` of the artifact at `url` whose SHA-256 is
    /// `sha256`: with the device's token and `If-Range` only on its own
    /// server (a presigned object store URL gets neither; the client
    /// decides, [`Fetch::request`]), and never the token to another host
    /// the device page asked for (`foreign`: a pull).
    pub(crate) fn artifact(
        &self,
        url: &str,
        fetch: Fetch,
        sha256: &str,
        foreign: bool,
    ) -> Result<reqwest::RequestBuilder, String> {
        self.allowed(url)?;
        let client = self.downloads.as_ref().unwrap_or(&self.http);
        let server = self.server.as_deref().unwrap_or("");
        let wanted = fetch.request(server, url, sha256);
        let mut request = client.get(url);
        if wanted.token && !foreign {
            request = self.authed(request);
        }
        if let Some(range) = wanted.range {
            request = request.header("Range", range.as_str());
        }
        if let Some(if_range) = wanted.if_range {
            request = request.header("If-Range", if_range.as_str());
        }
        Ok(request)
    }

    /// Downloads at most `limit` bytes from `url` on another host (the
    /// device page's pull of a manifest). Whatever fails, the answer says
    /// only that it could not fetch: the device page does not tell what
    /// other hosts of its network answer.
    pub(crate) async fn fetch(&self, url: &str, limit: usize) -> Result<Vec<u8>, String> {
        self.allowed(url)?;
        let could_not = || format!("could not fetch {url}");
        let mut response = self.http.get(url).send().await.map_err(|_| could_not())?;
        if !response.status().is_success() {
            return Err(could_not());
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|_| could_not())? {
            if bytes.len() + chunk.len() > limit {
                return Err(format!("{url} is larger than {limit} bytes"));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }
}
