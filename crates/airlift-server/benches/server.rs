//! Server benchmarks, each printed as a ratio against a baseline measured in
//! the same run on the same machine (loopback, `wrk` as the load generator):
//!
//! 1. device check-ins per second vs a bare axum handler returning a fixed JSON body,
//!    on SQLite and, run under `scripts/services` (`scripts/bench-server`
//!    does), on PostgreSQL with one instance and with two on one database;
//! 2. artifact download throughput with 100 concurrent clients vs nginx serving the same file.
//!
//! Run with `scripts/bench-server` (installs wrk and nginx when missing).
//! `AIRLIFT_BENCH_SECONDS` sets the length of each run (default 5) and
//! `AIRLIFT_BENCH_ROUNDS` the number of alternating rounds (default 3).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use airlift_server::{Config, Server};
use serde_json::{Value, json};

const CHECKIN_DEVICES: usize = 1000;

struct Run {
    requests: f64,
    bytes: f64,
    seconds: f64,
    errors: u64,
    /// CPU seconds the server under test used during the run.
    server_cpu: f64,
    /// Median and 99th percentile latency, microseconds.
    latency: (f64, f64),
}

impl Run {
    fn per_second(&self) -> f64 {
        self.requests / self.seconds
    }
    fn bytes_per_second(&self) -> f64 {
        self.bytes / self.seconds
    }
}

/// CPU seconds (user + system) used so far by the processes `pids`.
fn cpu_seconds(pids: &[u32]) -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let ticks = *TICKS.get_or_init(|| {
        let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(100.0)
    });
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|stat| {
            let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
            (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / ticks
        })
        .sum()
}

/// A process and its children (nginx's master and workers).
fn process_tree(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let parent = stat[stat.rfind(')').unwrap() + 2..]
            .split(' ')
            .nth(1)
            .and_then(|p| p.parse().ok());
        if parent == Some(pid) {
            pids.push(child);
        }
    }
    pids
}

/// Runs wrk with a Lua script; the script's `done` prints one RESULT line.
/// `server` are the processes serving, whose CPU time is measured.
fn wrk(url: &str, connections: usize, seconds: u64, script: &Path, server: &[u32]) -> Run {
    let cpu_before = cpu_seconds(server);
    let output = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            "-s",
        ])
        .arg(script)
        .arg(url)
        .stderr(Stdio::inherit())
        .output()
        .expect("wrk is not installed: run scripts/bench-server, which installs it");
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT from wrk:\n{text}"));
    let fields: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap())
        .collect();
    Run {
        requests: fields[0],
        bytes: fields[1],
        seconds: fields[2] / 1e6,
        errors: fields[3] as u64,
        server_cpu: cpu_seconds(server) - cpu_before,
        latency: (fields[4], fields[5]),
    }
}

const DONE: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  local errors = e.connect + e.read + e.write + e.status + e.timeout
  io.write(string.format("RESULT %d %d %d %d %d %d\n", summary.requests, summary.bytes, summary.duration, errors,
    latency:percentile(50.0), latency:percentile(99.0)))
end
"#;

fn checkin_script(dir: &Path, tokens: &[String], body: &str) -> std::path::PathBuf {
    let path = dir.join("checkin.lua");
    let mut f = std::fs::File::create(&path).unwrap();
    writeln!(f, "local tokens = {{").unwrap();
    for t in tokens {
        writeln!(f, "  \"{t}\",").unwrap();
    }
    writeln!(f, "}}").unwrap();
    writeln!(f, "local body = [[{body}]]").unwrap();
    writeln!(
        f,
        r#"local n = 0
request = function()
  n = n + 1
  local headers = {{}}
  headers["Authorization"] = "Bearer " .. tokens[(n % #tokens) + 1]
  headers["Content-Type"] = "application/json"
  return wrk.format("POST", nil, headers, body)
end"#
    )
    .unwrap();
    f.write_all(DONE.as_bytes()).unwrap();
    path
}

fn download_script(dir: &Path, token: &str) -> std::path::PathBuf {
    let path = dir.join("download.lua");
    let mut f = std::fs::File::create(&path).unwrap();
    writeln!(f, "wrk.headers[\"Authorization\"] = \"Bearer {token}\"").unwrap();
    f.write_all(DONE.as_bytes()).unwrap();
    path
}

fn start_nginx(dir: &Path, root: &Path) -> (std::process::Child, u16) {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "user root;\nworker_processes auto;\ndaemon off;\npid {pid};\nerror_log {err} warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 1000000;\n\
             default_type application/octet-stream;\n  client_body_temp_path {tmp};\n  proxy_temp_path {tmp};\n\
             fastcgi_temp_path {tmp};\n  uwsgi_temp_path {tmp};\n  scgi_temp_path {tmp};\n\
             server {{ listen 127.0.0.1:{port}; root {root}; }}\n}}\n",
            pid = dir.join("nginx.pid").display(),
            err = dir.join("nginx.err").display(),
            tmp = dir.display(),
            root = root.display(),
        ),
    )
    .unwrap();
    let mut child = Command::new("nginx")
        .args(["-p"])
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx is not installed: run scripts/bench-server, which installs it");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return (child, port);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop_nginx(&mut child);
    panic!(
        "nginx did not start: {}",
        std::fs::read_to_string(dir.join("nginx.err")).unwrap_or_default()
    );
}

/// SIGTERM to the master stops its workers too (SIGKILL would orphan them).
fn stop_nginx(nginx: &mut std::process::Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &nginx.id().to_string()])
        .status();
    let _ = nginx.wait();
}

async fn bare_axum() -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    use axum::routing::post;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = axum::Router::new().route(
        "/api/v1/device/checkin",
        post(|| async {
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                r#"{"poll_seconds":60,"update":null}"#,
            )
        }),
    );
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    (address, stop)
}

/// Starts an airlift server with `config` on 127.0.0.1:0; its address, its
/// new admin token (if it made one) and what stops it.
fn start_airlift(
    runtime: &tokio::runtime::Runtime,
    config: Config,
) -> (SocketAddr, Option<String>, tokio::sync::oneshot::Sender<()>) {
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = Server::open(config).await.unwrap();
        let token = server.initial_admin_token.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            server
                .run(listener, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        (address, token, stop)
    })
}

/// Adds `n` devices through the API of the server at `base`; their tokens.
fn add_devices(
    client: &reqwest::blocking::Client,
    base: &str,
    token: &str,
    n: usize,
) -> Vec<String> {
    (0..n)
        .map(|i| {
            let answer: Value = client
                .post(format!("{base}/api/v1/devices"))
                .bearer_auth(token)
                .json(&json!({"name": format!("bench-{i:05}"), "tags": ["bench"]}))
                .send()
                .unwrap()
                .json()
                .unwrap();
            answer["token"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// A new database on the PostgreSQL cluster of `scripts/services`, when
/// the benchmark runs under it (`scripts/bench-server` does).
fn postgres_database(runtime: &tokio::runtime::Runtime) -> Option<String> {
    use sqlx::{Connection, Executor};
    let base = std::env::var("AIRLIFT_TEST_DATABASE_URL").ok()?;
    let name = format!("bench_{}", std::process::id());
    runtime.block_on(async {
        let mut conn = sqlx::postgres::PgConnection::connect(&base).await.unwrap();
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .unwrap();
    });
    let (server, _) = base.rsplit_once('/').unwrap();
    Some(format!("{server}/{name}"))
}

/// wrk on every URL at once (the connections shared out), as one run.
fn wrk_all(
    urls: &[String],
    connections: usize,
    seconds: u64,
    script: &Path,
    server: &[u32],
) -> Run {
    let cpu_before = cpu_seconds(server);
    let runs: Vec<Run> = std::thread::scope(|scope| {
        let each = connections / urls.len();
        let runs: Vec<_> = urls
            .iter()
            .map(|url| scope.spawn(move || wrk(url, each, seconds, script, &[])))
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    Run {
        requests: runs.iter().map(|r| r.requests).sum(),
        bytes: runs.iter().map(|r| r.bytes).sum(),
        seconds: runs.iter().map(|r| r.seconds).fold(0.0, f64::max),
        errors: runs.iter().map(|r| r.errors).sum(),
        server_cpu: cpu_seconds(server) - cpu_before,
        latency: runs.iter().fold((0.0, 0.0), |a, r| {
            (a.0.max(r.latency.0), a.1.max(r.latency.1))
        }),
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for the list of tests; there are none.
    }
    let rounds: usize = std::env::var("AIRLIFT_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let seconds: u64 = std::env::var("AIRLIFT_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    // The airlift server, set up through its API.
    let data = dir.path().join("data");
    let (address, token, stop) = start_airlift(
        &runtime,
        Config {
            data_dir: data.clone(),
            ..Config::default()
        },
    );
    let token = token.unwrap();
    let base = format!("http://{address}");
    let client = reqwest::blocking::Client::new();
    let firmware = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/esp-idf-apps/v1.bin");
    let image = std::fs::read(&firmware).unwrap();
    let release: Value = client
        .post(format!("{base}/api/v1/releases"))
        .bearer_auth(&token)
        .body(image.clone())
        .send()
        .unwrap()
        .json()
        .unwrap();
    let device_tokens = add_devices(&client, &base, &token, CHECKIN_DEVICES);
    let downloader: Value = client
        .post(format!("{base}/api/v1/devices"))
        .bearer_auth(&token)
        .json(&json!({"name": "downloader"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let downloader = downloader["token"].as_str().unwrap().to_owned();
    let deployed = client
        .post(format!("{base}/api/v1/deployments"))
        .bearer_auth(&token)
        .json(&json!({"release": release["id"].to_string(), "target": "device:downloader"}))
        .send()
        .unwrap();
    assert!(deployed.status().is_success());
    let checkin_body = json!({"chip_id": 0, "running": {"project": "http_delta_ota", "version": "98a1142-dirty",
        "sha256": release["sha256"], "security_version": 0, "slot": 0}, "state": "idle", "boot_count": 0})
    .to_string();

    println!(
        "airlift server benchmarks: best of {rounds} alternating runs of {seconds} s, wrk -t2, loopback, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // Runs alternate between airlift and its baseline and the best of each
    // counts, so a burst of load from elsewhere on the machine hits both alike.
    let best = |runs: &[Run], key: fn(&Run) -> f64| runs.iter().map(key).fold(0.0, f64::max);
    let errors = |runs: &[Run]| runs.iter().map(|r| r.errors).sum::<u64>();
    // Server CPU seconds per unit of work over all rounds: unlike throughput,
    // this barely moves when other processes take CPU from the load generator.
    let cpu_per = |runs: &[Run], unit: fn(&Run) -> f64| {
        runs.iter().map(|r| r.server_cpu).sum::<f64>() / runs.iter().map(unit).sum::<f64>()
    };
    let me = std::process::id();
    // Of the run with the best throughput.
    let latency = |runs: &[Run]| {
        let best = runs
            .iter()
            .max_by(|a, b| a.requests.total_cmp(&b.requests))
            .map_or((0.0, 0.0), |r| r.latency);
        format!("{:.2}/{:.2} ms", best.0 / 1e3, best.1 / 1e3)
    };

    // `AIRLIFT_BENCH_ONLY=checkins|downloads` runs one of the two.
    let only = std::env::var("AIRLIFT_BENCH_ONLY").unwrap_or_default();

    // 1. Check-ins vs bare axum: SQLite, and (under scripts/services)
    // PostgreSQL with one instance and with two on one database.
    if only != "downloads" {
        let script = checkin_script(dir.path(), &device_tokens, &checkin_body);
        let (bare_address, bare_stop) = runtime.block_on(bare_axum());
        let mut setups = vec![(
            "SQLite, 1 instance".to_owned(),
            vec![base.clone()],
            script.clone(),
            Vec::new(),
        )];
        if let Some(database) = postgres_database(&runtime) {
            let postgres = |name: &str| Config {
                data_dir: dir.path().join(name),
                database_url: Some(airlift_server::DatabaseUrl::new(database.clone())),
                ..Config::default()
            };
            let (a, pg_token, stop_a) = start_airlift(&runtime, postgres("pg-a"));
            let (b, _, stop_b) = start_airlift(&runtime, postgres("pg-b"));
            let (a, b) = (format!("http://{a}"), format!("http://{b}"));
            let pg_tokens = add_devices(&client, &a, &pg_token.unwrap(), CHECKIN_DEVICES);
            let pg_script = checkin_script(&dir.path().join("pg-a"), &pg_tokens, &checkin_body);
            setups.push((
                "PostgreSQL, 1 instance".into(),
                vec![a.clone()],
                pg_script.clone(),
                vec![stop_a],
            ));
            setups.push((
                "PostgreSQL, 2 instances".into(),
                vec![a, b],
                pg_script,
                vec![stop_b],
            ));
        } else {
            println!(
                "(PostgreSQL not measured: run under scripts/services, as scripts/bench-server does)"
            );
        }
        let mut bare = Vec::new();
        let mut results: Vec<Vec<Run>> = setups.iter().map(|_| Vec::new()).collect();
        for _ in 0..rounds {
            let url = format!("http://{bare_address}/api/v1/device/checkin");
            bare.push(wrk(&url, 64, seconds, &script, &[me]));
            for (i, (_, bases, script, _)) in setups.iter().enumerate() {
                let urls: Vec<String> = bases
                    .iter()
                    .map(|b| format!("{b}/api/v1/device/checkin"))
                    .collect();
                results[i].push(wrk_all(&urls, 64, seconds, script, &[me]));
            }
        }
        let _ = bare_stop.send(());
        let b = best(&bare, Run::per_second);
        let b_cpu = cpu_per(&bare, |r| r.requests);
        println!(
            "check-ins:  bare axum {b:>9.0}/s   latency p50/p99 {}   server CPU {:.1} us each   ({} devices)",
            latency(&bare),
            b_cpu * 1e6,
            CHECKIN_DEVICES,
        );
        for ((name, _, _, stops), runs) in setups.into_iter().zip(&results) {
            let a = best(runs, Run::per_second);
            let a_cpu = cpu_per(runs, |r| r.requests);
            println!(
                "            airlift, {name:<24} {a:>9.0}/s   ratio {:.2}   latency p50/p99 {}   server CPU {:.1} us each (efficiency {:.2})   errors {}",
                a / b,
                latency(runs),
                a_cpu * 1e6,
                b_cpu / a_cpu,
                errors(runs),
            );
            for stop in stops {
                let _ = stop.send(());
            }
        }
    }

    // 2. Downloads vs nginx, 100 connections.
    if only != "checkins" {
        let root = dir.path().join("www");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("v1.bin"), &image).unwrap();
        let (mut nginx, port) = start_nginx(dir.path(), &root);
        let nginx_pids = process_tree(nginx.id());
        let script = download_script(dir.path(), &downloader);
        let url = format!(
            "{base}/api/v1/device/artifacts/{}",
            release["sha256"].as_str().unwrap()
        );
        let (mut baseline, mut served) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            baseline.push(wrk(
                &format!("http://127.0.0.1:{port}/v1.bin"),
                100,
                seconds,
                &script,
                &nginx_pids,
            ));
            served.push(wrk(&url, 100, seconds, &script, &[me]));
        }
        stop_nginx(&mut nginx);
        let mib = 1024.0 * 1024.0;
        let (a, b) = (
            best(&served, Run::bytes_per_second),
            best(&baseline, Run::bytes_per_second),
        );
        println!(
            "downloads:  airlift {:>7.0} MiB/s   nginx {:>7.0} MiB/s   ratio {:.2}   ({} byte file, 100 connections, errors {} / {})",
            a / mib,
            b / mib,
            a / b,
            image.len(),
            errors(&served),
            errors(&baseline),
        );
        println!(
            "            latency p50/p99: airlift {}, nginx {}",
            latency(&served),
            latency(&baseline)
        );
        let gib = 1024.0 * mib;
        let (a, b) = (
            cpu_per(&served, |r| r.bytes) * gib,
            cpu_per(&baseline, |r| r.bytes) * gib,
        );
        println!(
            "            server CPU per GiB sent: airlift {:.0} ms, nginx {:.0} ms   efficiency ratio {:.2}",
            a * 1e3,
            b * 1e3,
            b / a,
        );
    }
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let count = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    println!(
        "            {} of {} downloads sent with sendfile(2)",
        count("airlift_zero_copy_downloads_total"),
        count("airlift_downloads_total"),
    );
    let _ = stop.send(());
    runtime.shutdown_timeout(Duration::from_secs(5));
}
