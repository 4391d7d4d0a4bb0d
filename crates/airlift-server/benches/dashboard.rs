//! The dashboard's device list with 10,000 devices registered: server time
//! for the first page, a search, filters, the last page and the overview,
//! against a baseline measured in the same run (an authenticated admin
//! request that reads almost nothing: what every request costs before its
//! own work), and the unpaged list the CLI reads, for contrast.
//!
//! Server time is measured in process: each request goes through the whole
//! router (admin authentication against the database, the handler, its
//! queries, JSON) without a socket, so the figures are the server's and not
//! the network's. Target (issue 13): under 100 ms for the first page and a
//! search.
//!
//! Run with `cargo bench -p airlift-server --bench dashboard`.
//! `AIRLIFT_BENCH_DEVICES` sets the fleet size (default 10000) and
//! `AIRLIFT_BENCH_SAMPLES` the requests per figure (default 200).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use airlift_server::store::{DeviceStatus, NewAssignment, NewRelease};
use airlift_server::{Config, Server};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Median and 95th percentile of `samples` requests to `path`.
async fn measure(
    router: &axum::Router,
    token: &str,
    path: &str,
    samples: usize,
) -> (Duration, Duration, usize) {
    let mut times = Vec::with_capacity(samples);
    let mut bytes = 0;
    for _ in 0..samples {
        let request = Request::get(path)
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        let started = Instant::now();
        let response = router.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        times.push(started.elapsed());
        bytes = body.len();
    }
    times.sort();
    (times[samples / 2], times[samples * 95 / 100], bytes)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let devices = env_number("AIRLIFT_BENCH_DEVICES", 10_000);
    let samples = env_number("AIRLIFT_BENCH_SAMPLES", 200).max(20);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::open(Config {
        data_dir: dir.path().to_owned(),
        ..Config::default()
    })
    .await
    .unwrap();
    let token = server.initial_admin_token.clone().unwrap();
    let state = server.state().clone();
    let store = &state.store;

    // A fleet as a dashboard meets it: tags, several versions, states,
    // some never seen, and a deployment in progress to half of it.
    let started = Instant::now();
    let mut ids = Vec::with_capacity(devices);
    let mut statuses = Vec::with_capacity(devices);
    let now = airlift_server::now_ms();
    for n in 0..devices {
        let tags = [
            if n % 2 == 0 { "eu" } else { "us" }.to_owned(),
            format!("batch-{}", n % 20),
        ];
        let mut hash = [0u8; 32];
        hash[..8].copy_from_slice(&(n as u64).to_le_bytes());
        let device = store
            .create_device(&format!("device-{n:05}"), &tags, &hash)
            .await
            .unwrap();
        ids.push(device.id);
        if n % 10 != 9 {
            statuses.push((
                device.id,
                DeviceStatus {
                    last_seen: Some(now - (n as i64 % 600) * 1000),
                    chip_id: Some(5),
                    project: Some("bench".into()),
                    version: Some(format!("1.0.{}", n % 4)),
                    sha256: Some(format!("{:064x}", n % 4)),
                    security_version: Some(0),
                    slot: Some((n % 2) as i64),
                    state: Some(if n % 50 == 0 { "trial" } else { "idle" }.into()),
                    boot_count: Some(1),
                },
            ));
        }
    }
    store.record_statuses(&statuses).await.unwrap();
    let (release, _) = store
        .insert_release(NewRelease {
            sha256: "ab".repeat(32),
            size: 1_000_000,
            chip_id: 5,
            project: "bench".into(),
            version: "2.0.0".into(),
            security_version: 0,
            key_id: "00".repeat(8),
            signed_by_server: true,
            manifest: vec![0],
        })
        .await
        .unwrap();
    let assignments: Vec<NewAssignment> = ids
        .iter()
        .step_by(2)
        .map(|&device_id| NewAssignment {
            device_id,
            state: "pending".into(),
            reason: None,
        })
        .collect();
    store
        .create_deployment(release.id, "tag:eu", &assignments)
        .await
        .unwrap();
    println!(
        "{devices} devices registered ({} seen, {} in a deployment) in {:.1} s",
        statuses.len(),
        assignments.len(),
        started.elapsed().as_secs_f64()
    );

    let router = airlift_server::app(state.clone());
    let figures = [
        (
            "baseline: authenticated GET /api/v1/releases (1 release)",
            "/api/v1/releases",
        ),
        (
            "device list, first page of 50",
            "/api/v1/fleet/devices?limit=50",
        ),
        (
            "device list, search by name (q=0042)",
            "/api/v1/fleet/devices?q=0042&limit=50",
        ),
        (
            "device list, tag + version + state filters",
            "/api/v1/fleet/devices?tag=batch-7&version=1.0.3&state=idle&limit=50",
        ),
        (
            "device list, not seen for 5 minutes, longest first",
            "/api/v1/fleet/devices?last_seen=over:300&sort=last_seen&limit=50",
        ),
        (
            "device list, last page",
            &format!(
                "/api/v1/fleet/devices?limit=50&offset={}",
                devices.saturating_sub(50)
            ),
        ),
        (
            "overview (counts, unseen, deployments in progress, problems)",
            "/api/v1/fleet",
        ),
        (
            "for contrast: the whole list unpaged (GET /api/v1/devices)",
            "/api/v1/devices",
        ),
    ];
    // Warm the caches (SQLite's pages, the allocator) before measuring.
    for (_, path) in &figures {
        measure(&router, &token, path, 5).await;
    }
    let mut baseline = None;
    println!("\nserver time per request, {samples} requests each (median, 95th percentile):");
    for (what, path) in &figures {
        let (median, p95, bytes) = measure(&router, &token, path, samples).await;
        let base = *baseline.get_or_insert(median);
        println!(
            "  {what:<62} {:>8.2} ms  {:>8.2} ms  {:>6.1}x baseline  ({bytes} bytes)",
            ms(median),
            ms(p95),
            median.as_secs_f64() / base.as_secs_f64(),
        );
    }
    println!("\ntarget: first page and search under 100 ms of server time");
}
