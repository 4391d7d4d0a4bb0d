//! The device's HTTP: check-ins, events, artifact requests, enrolment and
//! plain fetches for the device page, with the device's token and the
//! fleet's shared connection limit. Only bytes and status codes here: what
//! to ask for and what an answer means is the client's (`airlift-client`).

use std::sync::Arc;
use std::time::Duration;

use airlift_client::download::Fetch;
use airlift_protocol::{
    CHECKIN_PATH, CheckIn, CheckInAnswer, ENROLL_PATH, EVENTS_PATH, EnrollAnswer, EnrollRequest,
    Event,
};

use crate::AgentError;

/// A reqwest client suited to devices: short connect timeout, a read
/// timeout so a stalled download is retried.
pub fn http_client() -> Result<reqwest::Client, AgentError> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| AgentError::Http(e.to_string()))
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
        .map_err(|e| AgentError::Http(format!("enrolment: {e}")))?;
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
}

impl Transport {
    pub(crate) fn new(
        server: Option<String>,
        token: Option<String>,
        http: reqwest::Client,
        downloads: Option<reqwest::Client>,
        limit: Option<Arc<tokio::sync::Semaphore>>,
    ) -> Transport {
        Transport {
            server,
            token,
            http,
            downloads,
            limit,
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
        let _permit = self.permit().await;
        let response = self
            .authed(self.http.post(url))
            .timeout(Duration::from_secs(30))
            .json(report)
            .send()
            .await
            .map_err(|e| AgentError::Http(format!("cannot reach the server: {e}")))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(AgentError::Http(format!(
                "check-in refused ({status}): {}",
                body.trim()
            )));
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
            Err(e) => Err(format!("could not send: {e}")),
        }
    }

    /// The request for `fetch` of the artifact at `url` whose `ETag` is `sha256`.
    pub(crate) fn artifact(
        &self,
        url: &str,
        fetch: Fetch,
        sha256: &str,
    ) -> reqwest::RequestBuilder {
        let client = self.downloads.as_ref().unwrap_or(&self.http);
        let mut request = self.authed(client.get(url));
        if let (Some(range), Some(if_range)) = (fetch.range(), fetch.if_range(sha256)) {
            request = request
                .header("Range", range.as_str())
                .header("If-Range", if_range.as_str());
        }
        request
    }

    /// Downloads `url` whole (the device page's pull).
    pub(crate) async fn fetch(&self, url: &str) -> Result<Vec<u8>, String> {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("cannot download {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("{url} answered {}", response.status()));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| format!("cannot download {url}: {e}"))?;
        Ok(bytes.to_vec())
    }
}
