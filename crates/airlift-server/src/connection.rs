//! The accept loop: every connection is served by hyper (the axum router),
//! except that a connection whose requests are artifact downloads is served
//! by a zero-copy path: `sendfile(2)` from the artifact file to the socket,
//! as nginx does. Firmware downloads are most of the bytes a fleet moves,
//! and hyper's write path costs one more copy of every byte.
//!
//! The zero-copy path takes only well-formed, authorised `GET`s of an
//! artifact the device may download, with a satisfiable or no range; for
//! anything else (other routes, errors, `HEAD`, HTTP/1.0) it hands the
//! connection, with the bytes it has read, to hyper for good, so every answer
//! that is not a plain download comes from the axum handlers.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use bytes::{Buf, Bytes};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::AppState;

/// How long an idle keep-alive connection is kept open.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Serves connections until `shutdown` completes, then lets the requests in
/// flight finish.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(err) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (router, state, stop, alive) =
                    (router.clone(), state.clone(), stop_rx.clone(), alive_tx.clone());
                tokio::spawn(async move {
                    connection(stream, router, state, stop).await;
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

async fn connection(
    stream: TcpStream,
    router: Router,
    state: AppState,
    mut stop: watch::Receiver<bool>,
) {
    #[cfg(target_os = "linux")]
    let (stream, prefix) = match zero_copy::serve(stream, &state, &mut stop).await {
        Some(handoff) => handoff,
        None => return,
    };
    #[cfg(not(target_os = "linux"))]
    let prefix = {
        let _ = &state;
        Bytes::new()
    };
    let io = TokioIo::new(Prefixed { prefix, stream });
    let service = TowerToHyperService::new(router);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(IDLE_TIMEOUT);
    let conn = builder.serve_connection(io, service);
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

    use super::IDLE_TIMEOUT;
    use crate::AppState;
    use crate::api::device::{ByteRange, DeviceAuth, download_allowed, requested_range};
    use crate::metrics::Metrics;

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
    async fn plan(state: &AppState, request: &Request) -> Option<Plan> {
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
        let mut head = plan.head.as_bytes();
        while !head.is_empty() {
            let sent = stream
                .async_io(Interest::WRITABLE, || {
                    rustix::net::send(&*stream, head, rustix::net::SendFlags::empty())
                        .map_err(io::Error::from)
                })
                .await?;
            head = &head[sent..];
        }
        let mut offset = plan.start;
        let end = plan.start + plan.len;
        while offset < end {
            let count = usize::try_from(end - offset).unwrap_or(usize::MAX);
            let sent = stream
                .async_io(Interest::WRITABLE, || {
                    rustix::fs::sendfile(&*stream, file, Some(&mut offset), count)
                        .map_err(io::Error::from)
                })
                .await?;
            if sent == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "artifact shorter than its size",
                ));
            }
        }
        Ok(())
    }

    /// Serves downloads on `stream`; returns the stream and the bytes read
    /// but not answered when hyper must take over, `None` when the
    /// connection is done.
    pub(super) async fn serve(
        mut stream: TcpStream,
        state: &AppState,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<(TcpStream, Bytes)> {
        let mut buf = BytesMut::with_capacity(4096);
        loop {
            match parse(&buf) {
                Parsed::Other => return Some((stream, buf.freeze())),
                Parsed::Download(request) => {
                    let Some(plan) = plan(state, &request).await else {
                        return Some((stream, buf.freeze()));
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
                }
                Parsed::Incomplete => {
                    let read = tokio::select! {
                        read = tokio::time::timeout(IDLE_TIMEOUT, stream.read_buf(&mut buf)) => read,
                        () = super::stopped(stop), if buf.is_empty() => return None,
                    };
                    match read {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => return None,
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
