//! The device's HTTP client: reqwless over embassy-net, one connection per
//! request, plain HTTP (TLS on the chip is not built yet). Only bytes and
//! status codes here: what to ask for and what an answer means is the
//! client crate's.

use core::fmt::Write as _;

use airlift_client::download::Request;
use airlift_client::text::Text;
use embassy_net::Stack;
use embassy_net::dns::DnsSocket;
use embassy_net::tcp::client::{TcpClient, TcpClientState};
use embassy_time::Duration;
use embedded_io_async::Read;
use reqwless::client::HttpClient;
use reqwless::headers::ContentType;
use reqwless::request::{Method, RequestBuilder};
use static_cell::StaticCell;

/// Bytes a TCP connection buffers each way.
const TCP_BUFFER: usize = 4096;
/// Room for a response's headers and a small body (a check-in's answer).
pub(crate) const RESPONSE_BUFFER: usize = 4096;

/// Why a request got no answer.
pub(crate) type HttpError = reqwless::Error;

/// The HTTP client and its buffers (one connection at a time).
pub(crate) struct Http {
    tcp: TcpClient<'static, 1, TCP_BUFFER, TCP_BUFFER>,
    dns: DnsSocket<'static>,
    rx: &'static mut [u8; RESPONSE_BUFFER],
}

/// An answer: the status and the body (cut to the buffer).
pub(crate) struct Answer<'b> {
    pub(crate) status: u16,
    pub(crate) body: &'b [u8],
}

/// Seconds a check-in may be held by the server (a long poll): well within
/// [`SOCKET_TIMEOUT_SECS`], so a held check-in is never taken for a stall.
pub(crate) const LONG_POLL_SECONDS: u32 = 20;
/// A connection that stalls this long is dropped (a download then resumes).
const SOCKET_TIMEOUT_SECS: u64 = 30;

/// `Bearer <token>`.
pub(crate) type Bearer = Text<{ 7 + airlift_protocol::TOKEN_MAX }>;

pub(crate) fn bearer(token: &str) -> Bearer {
    Text::format(format_args!("Bearer {token}"))
}

impl Http {
    /// The client over `stack`. Call once (`None` after).
    pub(crate) fn new(stack: Stack<'static>) -> Option<Http> {
        static STATE: StaticCell<TcpClientState<1, TCP_BUFFER, TCP_BUFFER>> = StaticCell::new();
        static RX: StaticCell<[u8; RESPONSE_BUFFER]> = StaticCell::new();
        let state = STATE.try_init(TcpClientState::new())?;
        let mut tcp = TcpClient::new(stack, state);
        tcp.set_timeout(Some(Duration::from_secs(SOCKET_TIMEOUT_SECS)));
        Some(Http {
            tcp,
            dns: DnsSocket::new(stack),
            rx: RX.try_init([0; RESPONSE_BUFFER])?,
        })
    }

    /// Sends `method url` with the bearer token (if any) and `json` as the
    /// body (if any); returns the status and the body.
    pub(crate) async fn call(
        &mut self,
        method: Method,
        url: &str,
        token: Option<&str>,
        json: Option<&[u8]>,
    ) -> Result<Answer<'_>, HttpError> {
        let auth = token.map(bearer);
        let auth_header = auth.as_ref().map(|a| [("Authorization", a.as_str())]);
        let headers: &[(&str, &str)] = match &auth_header {
            Some(h) => h,
            None => &[],
        };
        let mut client = HttpClient::new(&self.tcp, &self.dns);
        let request = client.request(method, url).await?.headers(headers);
        let mut request = match json {
            Some(body) => request
                .body(body)
                .content_type(ContentType::ApplicationJson),
            None => request.body(&[][..]),
        };
        let mut body = [0u8; 2048];
        let mut n = 0;
        let status = {
            let response = request.send(&mut self.rx[..]).await?;
            let status = response.status.0;
            let mut reader = response.body().reader();
            while n < body.len() {
                match reader.read(&mut body[n..]).await? {
                    0 => break,
                    got => n += got,
                }
            }
            status
        };
        let len = n.min(self.rx.len());
        self.rx[..len].copy_from_slice(&body[..len]);
        Ok(Answer {
            status,
            body: &self.rx[..len],
        })
    }

    /// Gets `url` (with the `Range` and `If-Range` of `request`, and the
    /// bearer token if any), hands the status and `Content-Range` to `sink`, then
    /// every chunk of the body until the sink says stop. The outer error:
    /// no answer, or the connection dropped.
    pub(crate) async fn stream<S: BodySink>(
        &mut self,
        url: &str,
        token: Option<&str>,
        request: &Request,
        sink: &mut S,
    ) -> Result<Result<(), S::Error>, HttpError> {
        let auth = token.map(bearer);
        let mut headers: heapless::Vec<(&str, &str), 3> = heapless::Vec::new();
        if let Some(a) = &auth {
            let _ = headers.push(("Authorization", a.as_str()));
        }
        if let Some(r) = &request.range {
            let _ = headers.push(("Range", r.as_str()));
        }
        if let Some(i) = &request.if_range {
            let _ = headers.push(("If-Range", i.as_str()));
        }
        let mut client = HttpClient::new(&self.tcp, &self.dns);
        let mut request = client.request(Method::GET, url).await?.headers(&headers);
        let response = request.send(&mut self.rx[..]).await?;
        let mut content_range: Text<64> = Text::default();
        let mut has_range = false;
        for (name, value) in response.headers() {
            if name.eq_ignore_ascii_case("content-range")
                && let Ok(v) = core::str::from_utf8(value)
            {
                let _ = content_range.write_str(v);
                has_range = true;
            }
        }
        if let Err(e) = sink.start(
            response.status.0,
            has_range.then_some(content_range.as_str()),
        ) {
            return Ok(Err(e));
        }
        let mut reader = response.body().reader();
        let mut buf = [0u8; 2048];
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                return Ok(sink.end());
            }
            match sink.chunk(&buf[..n]) {
                Ok(true) => {}
                Ok(false) => return Ok(Ok(())),
                Err(e) => return Ok(Err(e)),
            }
        }
    }
}

/// Where a streamed body goes.
pub(crate) trait BodySink {
    /// Why the sink stops the stream.
    type Error;
    /// The status and the `Content-Range` header's value.
    fn start(&mut self, status: u16, content_range: Option<&str>) -> Result<(), Self::Error>;
    /// A chunk of the body: `Ok(false)` stops reading (enough).
    fn chunk(&mut self, data: &[u8]) -> Result<bool, Self::Error>;
    /// The body ended.
    fn end(&mut self) -> Result<(), Self::Error>;
}
