//! Prometheus metrics: a handful of counters, rendered as text at `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// The server's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Device check-ins answered.
    pub checkins: AtomicU64,
    /// Check-in answers carrying an update.
    pub offers: AtomicU64,
    /// Device events received.
    pub events: AtomicU64,
    /// Artifact downloads answered (full or partial).
    pub downloads: AtomicU64,
    /// Downloads sent with sendfile(2) (a subset of `downloads`).
    pub zero_copy_downloads: AtomicU64,
    /// Artifact bytes sent.
    pub download_bytes: AtomicU64,
    /// Releases stored.
    pub uploads_accepted: AtomicU64,
    /// Uploads refused.
    pub uploads_rejected: AtomicU64,
    /// Requests refused for a missing or wrong token.
    pub auth_failures: AtomicU64,
    /// Answers with a 5xx status.
    pub server_errors: AtomicU64,
    /// Connections open now (a gauge).
    pub connections_open: AtomicU64,
    /// Connections answered 503 and closed at the connection limit.
    pub connections_refused: AtomicU64,
    /// Connections closed because a request head (or TLS handshake) did
    /// not arrive in time.
    pub header_timeouts: AtomicU64,
    /// TLS handshakes that failed.
    pub tls_handshake_failures: AtomicU64,
}

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let counters: [(&str, &str, &AtomicU64); 13] = [
            (
                "airlift_checkins_total",
                "Device check-ins answered.",
                &self.checkins,
            ),
            (
                "airlift_offers_total",
                "Check-in answers carrying an update.",
                &self.offers,
            ),
            (
                "airlift_device_events_total",
                "Device events received.",
                &self.events,
            ),
            (
                "airlift_downloads_total",
                "Artifact downloads answered.",
                &self.downloads,
            ),
            (
                "airlift_zero_copy_downloads_total",
                "Downloads sent with sendfile(2).",
                &self.zero_copy_downloads,
            ),
            (
                "airlift_download_bytes_total",
                "Artifact bytes sent.",
                &self.download_bytes,
            ),
            (
                "airlift_uploads_accepted_total",
                "Firmware uploads stored.",
                &self.uploads_accepted,
            ),
            (
                "airlift_uploads_rejected_total",
                "Firmware uploads refused.",
                &self.uploads_rejected,
            ),
            (
                "airlift_auth_failures_total",
                "Requests with a missing or wrong token.",
                &self.auth_failures,
            ),
            (
                "airlift_server_errors_total",
                "Answers with a 5xx status.",
                &self.server_errors,
            ),
            (
                "airlift_connections_refused_total",
                "Connections answered 503 at the connection limit.",
                &self.connections_refused,
            ),
            (
                "airlift_header_timeouts_total",
                "Connections closed for a request head or TLS handshake not sent in time.",
                &self.header_timeouts,
            ),
            (
                "airlift_tls_handshake_failures_total",
                "TLS handshakes that failed.",
                &self.tls_handshake_failures,
            ),
        ];
        let mut out = String::new();
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        let _ = writeln!(
            out,
            "# HELP airlift_connections_open Connections open now.\n\
             # TYPE airlift_connections_open gauge\n\
             airlift_connections_open {}",
            self.connections_open.load(Ordering::Relaxed)
        );
        out
    }
}
