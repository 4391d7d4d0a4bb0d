//! The accept loop: every connection is served by hyper (the axum router),
//! except that a plain-HTTP connection whose requests are artifact
//! downloads is served by a zero-copy path: `sendfile(2)` from the artifact
//! file to the socket, as nginx does. Firmware downloads are most of the
//! bytes a fleet moves, and hyper's write path costs one more copy of every
//! byte. HTTPS connections (when the server has a certificate) go through
//! rustls and hyper, downloads included.
//!
//! The zero-copy path takes only well-formed, authorised `GET`s of an
//! artifact the device may download, with a satisfiable or no range; for
//! anything else (other routes, errors, `HEAD`, HTTP/1.0) it hands the
//! connection, with the bytes it has read, to hyper for good, so every answer
//! that is not a plain download comes from the axum handlers.
//!
//! Every connection is bounded:
//! - at most `max_connections` are served at once (kept below the file
//!   descriptor limit); one more is answered 503 with `Retry-After` and
//!   closed;
//! - a request head must arrive whole within `header_timeout_ms`: from the
//!   accept for the first one (TLS handshake included), from its first byte
//!   for the next ones on a kept-alive connection, which may otherwise be
//!   idle for [`IDLE_TIMEOUT`];
//! - a request body must keep coming ([`BODY_STALL`] between frames), and
//!   a client must keep reading what it is sent ([`WRITE_STALL`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use bytes::{Buf, Bytes};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use crate::AppState;
use crate::throttle::ClientAddr;

/// How long an idle keep-alive connection is kept open.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest pause in a request body.
pub(crate) const BODY_STALL: Duration = Duration::from_secs(30);
/// Longest time a client may leave what it is sent unread.
pub(crate) const WRITE_STALL: Duration = Duration::from_secs(60);
/// File descriptors kept free of connections (database, artifact files, the listener).
const RESERVED_FDS: u64 = 128;

/// How a connection is served.
#[derive(Clone)]
pub(crate) struct Setup {
    pub(crate) router: Router,
    pub(crate) state: AppState,
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Connections served at once: `max_connections`, kept below the file
/// descriptor limit (raised to its hard limit first, as most servers do).
pub(crate) fn connection_limit(max_connections: u32) -> u64 {
    let wanted = u64::from(max_connections);
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let mut limit = getrlimit(Resource::Nofile);
        if limit.current < limit.maximum {
            limit.current = limit.maximum;
            let _ = setrlimit(Resource::Nofile, limit);
        }
        if let Some(fds) = getrlimit(Resource::Nofile).current {
            let room = fds.saturating_sub(RESERVED_FDS).max(fds / 2).max(1);
            return wanted.min(room);
        }
    }
    wanted
}

/// Serves connections until `shutdown` completes, then lets the requests in
/// flight finish.
pub(crate) async fn serve(
    listener: TcpListener,
    setup: Setup,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let limit = connection_limit(setup.state.config.max_connections);
    tracing::debug!(limit, "connection limit");
    let (stop_tx, stop_rx) = watch::channel(false);
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    // Refusals in flight are bounded too: past them a connection is just closed.
    let refusals = Arc::new(AtomicU64::new(0));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let accepted_at = Instant::now();
                let metrics = &setup.state.metrics;
                if metrics.connections_open.load(Ordering::Relaxed) >= limit {
                    crate::metrics::Metrics::inc(&metrics.connections_refused);
                    if refusals.load(Ordering::Relaxed) < limit / 8 + 16 {
                        let (setup, refusals) = (setup.clone(), refusals.clone());
                        refusals.fetch_add(1, Ordering::Relaxed);
                        tokio::spawn(async move {
                            refuse(stream, &setup, accepted_at).await;
                            refusals.fetch_sub(1, Ordering::Relaxed);
                        });
                    }
                    continue;
                }
                let open = Open::new(&setup.state);
                let (setup, stop, alive) = (setup.clone(), stop_rx.clone(), alive_tx.clone());
                tokio::spawn(async move {
                    connection(stream, peer, setup, stop, accepted_at).await;
                    drop(open);
                    drop(alive);
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(alive_tx);
    // recv() answers None once every connection task dropped its sender.
    let _ = alive_rx.recv().await;
    Ok(())
}

/// Counts a connection in `connections_open` for as long as it lives.
struct Open(AppState);

impl Open {
    fn new(state: &AppState) -> Open {
        state
            .metrics
            .connections_open
            .fetch_add(1, Ordering::Relaxed);
        Open(state.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0
            .metrics
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// The answer of a server at its connection limit.
const BUSY: &str = "{\"error\":{\"code\":\"busy\",\"message\":\"the server is at its \
                    connection limit (max_connections): try again shortly\"}}";

/// Answers 503 to a connection over the limit (after its TLS handshake,
/// within the header deadline) and closes it.
async fn refuse(stream: TcpStream, setup: &Setup, accepted_at: Instant) {
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BUSY}",
        BUSY.len()
    );
    let deadline = accepted_at + header_timeout(&setup.state);
    let _ = tokio::time::timeout_at(deadline, async {
        match &setup.tls {
            Some(tls) => {
                if let Ok(mut stream) = tls.accept(stream).await {
                    let _ = stream.write_all(answer.as_bytes()).await;
                    let _ = stream.shutdown().await;
                }
            }
            None => {
                let mut stream = stream;
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        }
    })
    .await;
}

fn header_timeout(state: &AppState) -> Duration {
    Duration::from_millis(state.config.header_timeout_ms)
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    setup: Setup,
    mut stop: watch::Receiver<bool>,
    accepted_at: Instant,
) {
    let state = setup.state.clone();
    let head_deadline = accepted_at + header_timeout(&state);
    let client = ClientAddr(peer.ip());
    if let Some(tls) = &setup.tls {
        let handshake = tokio::time::timeout_at(head_deadline, tls.accept(stream)).await;
        let stream = match handshake {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => {
                crate::metrics::Metrics::inc(&state.metrics.tls_handshake_failures);
                tracing::debug!(error = %err, %peer, "TLS handshake failed");
                return;
            }
            Err(_) => {
                crate::metrics::Metrics::inc(&state.metrics.header_timeouts);
                return;
            }
        };
        let io = Guarded::new(stream, &state, Some(head_deadline));
        return http(io, setup.router, client, stop).await;
    }
    #[cfg(target_os = "linux")]
    let (stream, prefix, head_deadline) =
        match zero_copy::serve(stream, &state, client, &mut stop, head_deadline).await {
            Some(handoff) => handoff,
            None => return,
        };
    #[cfg(not(target_os = "linux"))]
    let (prefix, head_deadline) = (Bytes::new(), Some(head_deadline));
    let io = Guarded::new(Prefixed { prefix, stream }, &state, head_deadline);
    http(io, setup.router, client, stop).await;
}

/// Serves HTTP/1.1 on `io` with hyper until the client or the server is done.
async fn http<S>(
    io: Guarded<S>,
    router: Router,
    client: ClientAddr,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let requests = io.requests.clone();
    let service = tower::service_fn(move |mut request: Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(client);
        let busy = Busy::new(&requests);
        let response = router.clone().oneshot(request.map(Body::new));
        async move {
            let response = response.await?;
            // The connection is busy until the whole answer is sent.
            Ok::<_, std::convert::Infallible>(response.map(|body| {
                Body::new(http_body_util::BodyExt::map_frame(body, move |f| {
                    let _ = &busy;
                    f
                }))
            }))
        }
    });
    let service = TowerToHyperService::new(service);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(IDLE_TIMEOUT);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(err) = result {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        }
        () = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Completes when the server stops.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Requests on one connection: how many are being answered now, and how
/// many have begun (so a head deadline armed for one request is not applied
/// to the next).
#[derive(Default)]
struct Requests {
    busy: AtomicU32,
    begun: AtomicU64,
}

/// Marks a request in progress from its head to the end of its answer.
struct Busy(Arc<Requests>);

impl Busy {
    fn new(requests: &Arc<Requests>) -> Busy {
        requests.begun.fetch_add(1, Ordering::Relaxed);
        requests.busy.fetch_add(1, Ordering::Relaxed);
        Busy(requests.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection's stream with its deadlines: a request head must be whole
/// by its deadline, and a write may not wait on the client for longer than
/// [`WRITE_STALL`].
struct Guarded<S> {
    inner: S,
    requests: Arc<Requests>,
    header_timeout: Duration,
    /// The deadline of the head being read, and the request count it was armed at.
    head: Option<(Pin<Box<Sleep>>, u64)>,
    write_stall: Option<Pin<Box<Sleep>>>,
    state: AppState,
}

impl<S> Guarded<S> {
    fn new(inner: S, state: &AppState, head_deadline: Option<Instant>) -> Guarded<S> {
        Guarded {
            inner,
            requests: Arc::new(Requests::default()),
            header_timeout: header_timeout(state),
            head: head_deadline.map(|at| (Box::pin(tokio::time::sleep_until(at)), 0)),
            write_stall: None,
            state: state.clone(),
        }
    }

    fn timed_out(&self, what: &str) -> io::Error {
        crate::metrics::Metrics::inc(&self.state.metrics.header_timeouts);
        io::Error::new(io::ErrorKind::TimedOut, format!("{what} not sent in time"))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let begun = self.requests.begun.load(Ordering::Relaxed);
        let waiting_for_head = self.requests.busy.load(Ordering::Relaxed) == 0;
        if self.head.as_ref().is_some_and(|(_, at)| *at != begun) || !waiting_for_head {
            self.head = None;
        }
        if let Some((sleep, _)) = self.head.as_mut()
            && sleep.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(self.timed_out("request head")));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if waiting_for_head && self.head.is_none() && buf.filled().len() > before {
            // The first bytes of a head: it must be whole in time.
            let mut sleep = Box::pin(tokio::time::sleep(self.header_timeout));
            let _ = sleep.as_mut().poll(cx);
            self.head = Some((sleep, begun));
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> Guarded<S> {
    /// Tracks a write's progress: an error once the client left it waiting too long.
    fn progress<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match poll {
            Poll::Pending => {
                let sleep = self
                    .write_stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_STALL)));
                if sleep.as_mut().poll(cx).is_ready() {
                    self.write_stall = None;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client stopped reading",
                    )));
                }
                Poll::Pending
            }
            ready => {
                self.write_stall = None;
                ready
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progress(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progress(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.progress(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A stream that first yields bytes already read from it.
struct Prefixed {
    prefix: Bytes,
    stream: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(target_os = "linux")]
mod zero_copy {
    use std::io;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use bytes::{Buf, Bytes, BytesMut};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
    use tokio::net::TcpStream;
    use tokio::sync::watch;

    use tokio::time::Instant;

    use super::{IDLE_TIMEOUT, WRITE_STALL};
    use crate::AppState;
    use crate::api::device::{ByteRange, DeviceAuth, download_allowed, requested_range};
    use crate::metrics::Metrics;
    use crate::throttle::{ClientAddr, Credential};

    /// Longest request head the zero-copy path reads before handing over.
    const MAX_HEAD: usize = 16 * 1024;
    const ARTIFACTS: &str = "/api/v1/device/artifacts/";

    /// A download the zero-copy path will send.
    struct Plan {
        head: String,
        file: Arc<std::fs::File>,
        start: u64,
        len: u64,
        close: bool,
    }

    /// A parsed request the zero-copy path might take.
    struct Request {
        head_len: usize,
        sha256: String,
        token: String,
        range: Option<String>,
        if_range: Option<String>,
        close: bool,
    }

    enum Parsed {
        Incomplete,
        Download(Request),
        Other,
    }

    fn parse(buf: &[u8]) -> Parsed {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        let head_len = match request.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Parsed::Incomplete,
            _ => return Parsed::Other,
        };
        let (Some("GET"), Some(path), Some(1)) = (request.method, request.path, request.version)
        else {
            return Parsed::Other;
        };
        let Some(sha256) = path.strip_prefix(ARTIFACTS) else {
            return Parsed::Other;
        };
        let (mut token, mut range, mut if_range, mut close) = (None, None, None, false);
        for header in request.headers.iter() {
            let value = std::str::from_utf8(header.value).ok();
            let name = header.name;
            if name.eq_ignore_ascii_case("authorization") {
                token = value
                    .and_then(|v| v.split_once(' '))
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                    .map(|(_, t)| t.trim().to_owned());
            } else if name.eq_ignore_ascii_case("range") {
                range = value.map(str::to_owned);
            } else if name.eq_ignore_ascii_case("if-range") {
                // An unreadable If-Range matches no entity tag.
                if_range = Some(value.unwrap_or("\0").to_owned());
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.is_some_and(|v| v.eq_ignore_ascii_case("close"));
            } else if name.eq_ignore_ascii_case("content-length")
                || name.eq_ignore_ascii_case("transfer-encoding")
                || name.eq_ignore_ascii_case("expect")
            {
                return Parsed::Other;
            }
        }
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Parsed::Other;
        };
        Parsed::Download(Request {
            head_len,
            sha256: sha256.to_owned(),
            token,
            range,
            if_range,
            close,
        })
    }

    /// The answer to a download, or `None` when hyper must answer it.
    async fn plan(state: &AppState, client: ClientAddr, request: &Request) -> Option<Plan> {
        // A throttled client is answered by hyper (429), never served here.
        state
            .throttle
            .check(Credential::DeviceToken, Some(client))
            .ok()?;
        let device = DeviceAuth::from_token(state, &request.token).await.ok()?;
        if !download_allowed(state, device.id, &request.sha256)
            .await
            .ok()?
        {
            return None;
        }
        let (file, size) = state.artifacts.local_file(&request.sha256)?;
        let etag = format!("\"{}\"", request.sha256);
        let range = match request.range.as_deref() {
            Some(_) => requested_range(
                request.range.as_deref(),
                request.if_range.as_deref(),
                &etag,
                size,
            ),
            None => None,
        };
        let (status, start, end) = match range {
            None => ("200 OK", 0, size),
            Some(ByteRange::Satisfiable(start, end)) => ("206 Partial Content", start, end),
            Some(ByteRange::Unsatisfiable) => return None,
        };
        let mut head = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/octet-stream\r\n\
             content-length: {}\r\netag: {etag}\r\naccept-ranges: bytes\r\n\
             cache-control: private, max-age=31536000, immutable\r\n",
            end - start
        );
        if status.starts_with("206") {
            head.push_str(&format!(
                "content-range: bytes {start}-{}/{size}\r\n",
                end - 1
            ));
        }
        if request.close {
            head.push_str("connection: close\r\n");
        }
        head.push_str("\r\n");
        Some(Plan {
            head,
            file,
            start,
            len: end - start,
            close: request.close,
        })
    }

    async fn send(stream: &mut TcpStream, plan: &Plan) -> io::Result<()> {
        // Corked (nginx's tcp_nopush): head and body leave in full-sized
        // segments instead of whatever each partial sendfile wrote, which
        // TCP_NODELAY would push out at once; uncorking sends the tail.
        let _ = rustix::net::sockopt::set_tcp_cork(&*stream, true);
        let result = send_corked(stream, plan, &plan.file).await;
        let _ = rustix::net::sockopt::set_tcp_cork(&*stream, false);
        result
    }

    async fn send_corked(
        stream: &mut TcpStream,
        plan: &Plan,
        file: &std::fs::File,
    ) -> io::Result<()> {
        let stalled = |_| io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading");
        let mut head = plan.head.as_bytes();
        while !head.is_empty() {
            let sent = tokio::time::timeout(
                WRITE_STALL,
                stream.async_io(Interest::WRITABLE, || {
                    rustix::net::send(&*stream, head, rustix::net::SendFlags::empty())
                        .map_err(io::Error::from)
                }),
            )
            .await
            .map_err(stalled)??;
            head = &head[sent..];
        }
        let mut offset = plan.start;
        let end = plan.start + plan.len;
        while offset < end {
            let count = usize::try_from(end - offset).unwrap_or(usize::MAX);
            let sent = tokio::time::timeout(
                WRITE_STALL,
                stream.async_io(Interest::WRITABLE, || {
                    rustix::fs::sendfile(&*stream, file, Some(&mut offset), count)
                        .map_err(io::Error::from)
                }),
            )
            .await
            .map_err(stalled)??;
            if sent == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "artifact shorter than its size",
                ));
            }
        }
        Ok(())
    }

    /// Serves downloads on `stream`; returns the stream, the bytes read
    /// but not answered and the deadline of the head they start when hyper
    /// must take over, `None` when the connection is done. The first head
    /// must be whole by `first_deadline`; a later one within the header
    /// timeout of its first byte.
    pub(super) async fn serve(
        mut stream: TcpStream,
        state: &AppState,
        client: ClientAddr,
        stop: &mut watch::Receiver<bool>,
        first_deadline: Instant,
    ) -> Option<(TcpStream, Bytes, Option<Instant>)> {
        let mut buf = BytesMut::with_capacity(4096);
        let mut deadline = Some(first_deadline);
        loop {
            match parse(&buf) {
                Parsed::Other => return Some((stream, buf.freeze(), deadline)),
                Parsed::Download(request) => {
                    let Some(plan) = plan(state, client, &request).await else {
                        return Some((stream, buf.freeze(), deadline));
                    };
                    buf.advance(request.head_len);
                    if let Err(err) = send(&mut stream, &plan).await {
                        tracing::debug!(error = %err, "download interrupted");
                        return None;
                    }
                    Metrics::inc(&state.metrics.downloads);
                    Metrics::inc(&state.metrics.zero_copy_downloads);
                    state
                        .metrics
                        .download_bytes
                        .fetch_add(plan.len, Ordering::Relaxed);
                    let stopping = *stop.borrow();
                    if plan.close || stopping {
                        let _ = stream.shutdown().await;
                        return None;
                    }
                    deadline = None;
                }
                Parsed::Incomplete => {
                    if deadline.is_none() && !buf.is_empty() {
                        deadline = Some(Instant::now() + super::header_timeout(state));
                    }
                    let until = deadline.unwrap_or_else(|| Instant::now() + IDLE_TIMEOUT);
                    let read = tokio::select! {
                        read = tokio::time::timeout_at(until, stream.read_buf(&mut buf)) => read,
                        () = super::stopped(stop), if buf.is_empty() => return None,
                    };
                    match read {
                        Ok(Ok(n)) if n > 0 => {}
                        Ok(_) => return None,
                        Err(_) => {
                            if deadline.is_some() {
                                Metrics::inc(&state.metrics.header_timeouts);
                            }
                            return None;
                        }
                    }
                }
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn check(head: &str, expected: Option<(&str, &str, Option<&str>, bool)>) {
            let got = match parse(head.as_bytes()) {
                Parsed::Download(r) => {
                    assert_eq!(r.head_len, head.len());
                    Some((r.sha256, r.token, r.range, r.close))
                }
                Parsed::Other => None,
                Parsed::Incomplete => panic!("incomplete: {head:?}"),
            };
            let expected =
                expected.map(|(s, t, r, c)| (s.to_owned(), t.to_owned(), r.map(str::to_owned), c));
            assert_eq!(got, expected, "{head:?}");
        }

        #[test]
        fn only_plain_artifact_gets_with_a_token_take_the_zero_copy_path() {
            let get = "GET /api/v1/device/artifacts/ab HTTP/1.1\r\nHost: x\r\n";
            check(
                &format!("{get}Authorization: Bearer t1\r\n\r\n"),
                Some(("ab", "t1", None, false)),
            );
            check(
                &format!(
                    "{get}authorization: bearer t1\r\nRange: bytes=5-\r\nConnection: close\r\n\r\n"
                ),
                Some(("ab", "t1", Some("bytes=5-"), true)),
            );
            check(&format!("{get}\r\n"), None);
            check(&format!("{get}Authorization: Basic t1\r\n\r\n"), None);
            check(
                &format!("{get}Authorization: Bearer t1\r\nContent-Length: 3\r\n\r\n"),
                None,
            );
            check(
                "HEAD /api/v1/device/artifacts/ab HTTP/1.1\r\nAuthorization: Bearer t\r\n\r\n",
                None,
            );
            check(
                "GET /api/v1/device/artifacts/ab HTTP/1.0\r\nAuthorization: Bearer t\r\n\r\n",
                None,
            );
            check(
                "POST /api/v1/device/checkin HTTP/1.1\r\nAuthorization: Bearer t\r\n\r\n",
                None,
            );
            assert!(matches!(parse(b"GET /api/v1/dev"), Parsed::Incomplete));
            assert!(matches!(parse(b"\x16\x03\x01 not http"), Parsed::Other));
        }
    }
}
