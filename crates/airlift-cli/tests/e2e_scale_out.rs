//! End to end (issue 15): two `airlift serve` instances on one PostgreSQL
//! database and one S3 bucket (moto), behind a round-robin TCP balancer, and
//! 1,000 simulated devices of `airlift fleet sim` spread across both and
//! downloading straight from the bucket. A deployment created on one
//! instance and cancelled on the other is never offered again by either; a
//! staged rollout reaches every device even though the instance running its
//! scheduler is killed halfway. Needs `scripts/services` (`./scripts/test`
//! runs every test through it). Every wait is for a state the API shows.
#![allow(clippy::unwrap_used)]

mod agent_common;

use std::fs::File;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use agent_common::*;
use serde_json::Value;

const DEVICES: usize = 1000;

fn service(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("this test needs {name}: run it through scripts/services (./scripts/test does)")
    })
}

fn random_name() -> String {
    let mut bytes = [0u8; 8];
    File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    hex::encode(bytes)
}

/// A new database on the test cluster; its URL.
fn postgres_database() -> String {
    let base = service("AIRLIFT_TEST_DATABASE_URL");
    let name = format!("e2e_{}", random_name());
    let created = Command::new("psql")
        .arg(&base)
        .args(["-q", "-c", &format!("CREATE DATABASE {name}")])
        .status()
        .unwrap();
    assert!(created.success());
    let (server, _) = base.rsplit_once('/').unwrap();
    format!("{server}/{name}")
}

fn psql(url: &str, sql: &str) -> String {
    let output = Command::new("psql")
        .arg(url)
        .args(["-At", "-c", sql])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// A new bucket on the test S3 server: (endpoint, bucket).
fn s3_bucket() -> (String, String) {
    let endpoint = service("AIRLIFT_TEST_S3_ENDPOINT");
    let bucket = format!("e2e-{}", random_name());
    let status = reqwest::blocking::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .unwrap()
        .status();
    assert!(status.is_success(), "{status}");
    (endpoint, bucket)
}

/// A TCP balancer on 127.0.0.1: each connection goes to the next backend
/// that accepts it (a dead one is skipped), bytes copied both ways.
fn balancer(backends: Vec<SocketAddr>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let next = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let first = next.fetch_add(1, Ordering::Relaxed);
            let backend = (0..backends.len())
                .find_map(|i| TcpStream::connect(backends[(first + i) % backends.len()]).ok());
            let Some(backend) = backend else { continue };
            let (mut c1, mut b1) = (client.try_clone().unwrap(), backend.try_clone().unwrap());
            let (mut c2, mut b2) = (client, backend);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c1, &mut b1);
                let _ = b1.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut b2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    url
}

fn address(url: &str) -> SocketAddr {
    url.trim_start_matches("http://").parse().unwrap()
}

/// Updates handed out by an instance so far (`airlift_offers_total`).
fn offers(server: &Server) -> u64 {
    let text = reqwest::blocking::get(format!("{}/metrics", server.url))
        .unwrap()
        .text()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("airlift_offers_total "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn devices(server: &Server) -> Vec<Value> {
    server
        .cli_json(&["device", "list"])
        .as_array()
        .unwrap()
        .clone()
}

struct Sim(Child);

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn two_instances_on_one_database_and_one_bucket_serve_one_fleet_issue_15() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let database = postgres_database();
    let (endpoint, bucket) = s3_bucket();
    let artifacts = format!("s3://{bucket}/e2e");
    let env = [
        ("AIRLIFT_DATABASE_URL", database.as_str()),
        ("AIRLIFT_ARTIFACTS", artifacts.as_str()),
        ("AIRLIFT_S3_ENDPOINT", endpoint.as_str()),
        ("AIRLIFT_ROLLOUT_TICK_MS", "100"),
    ];
    let a = Server::start(&d.join("a"), &env);
    let b = Server::start(&d.join("b"), &env);
    assert!(
        !b.data.join("admin.token").exists(),
        "one admin token for the fleet"
    );
    // The operator uses the one token with either instance.
    std::fs::copy(a.data.join("admin.token"), b.data.join("admin.token")).unwrap();
    assert_eq!(
        std::fs::read_to_string(a.signing_pub()).unwrap(),
        std::fs::read_to_string(b.signing_pub()).unwrap()
    );
    let lb = balancer(vec![address(&a.url), address(&b.url)]);

    let firmware = |version: &str| {
        let path = d.join(format!("{version}.bin"));
        fleet_firmware(&path, version, None);
        path
    };
    let (v1, v2, v3) = (firmware("1.0.0"), firmware("2.0.0"), firmware("3.0.0"));
    let v2 = a.upload(&v2);
    let v3 = b.upload(&v3);
    let log = File::create(d.join("sim.log")).unwrap();
    let _sim = Sim(fleet_sim(
        &lb,
        &a.admin_token(),
        &v1,
        &a.signing_pub(),
        DEVICES,
        &[],
        log,
    ));
    let sim_log = || {
        let text = std::fs::read_to_string(d.join("sim.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    };
    wait_for(
        "every simulated device to check in running 1.0.0",
        || {
            devices(&a)
                .iter()
                .filter(|d| d["status"]["version"] == "1.0.0")
                .count()
                == DEVICES
        },
        sim_log,
    );

    // Created on one, cancelled on the other: from then on neither offers it.
    let deployment = a.deploy(v3, "tag:fleet");
    let cancelled = b.cli_json(&["deployment", "cancel", &deployment.to_string()]);
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    let handed_out = offers(&a) + offers(&b);
    let cancelled_at = psql(
        &database,
        "SELECT (extract(epoch from now()) * 1000)::bigint",
    )
    .parse::<i64>()
    .unwrap();
    wait_for(
        "every device to check in twice after the cancellation",
        || {
            devices(&b)
                .iter()
                .all(|d| d["status"]["last_seen"].as_i64().unwrap_or(0) > cancelled_at + 2000)
        },
        sim_log,
    );
    assert_eq!(
        offers(&a) + offers(&b),
        handed_out,
        "an instance offered the cancelled deployment again"
    );

    // A staged rollout; halfway, the instance running the scheduler dies.
    let rollout = a.cli_json(&[
        "rollout",
        "create",
        &v2.to_string(),
        "--to",
        "tag:fleet",
        "--waves",
        "10%,50%,100%",
        "--soak",
        "200ms",
        "--success",
        "90%",
        "--pause-at",
        "50%",
        "--deadline",
        "10m",
    ]);
    let id = rollout["id"].to_string();
    let show = |server: &Server| server.cli_json(&["rollout", "show", &id]);
    let confirmed = |r: &Value| r["total"]["confirmed"].as_u64().unwrap_or(0);
    wait_for(
        "a fifth of the fleet to confirm 2.0.0",
        || confirmed(&show(&a)) >= (DEVICES / 5) as u64,
        || format!("{:#}\n{}", show(&a), sim_log()),
    );
    let holder = psql(
        &database,
        "SELECT holder FROM leases WHERE name = 'rollout-scheduler'",
    );
    let (mut dead, survivor) = if holder == a.instance { (a, b) } else { (b, a) };
    assert_eq!(holder, dead.instance, "one of the two runs the scheduler");
    dead.kill();
    let last = std::cell::RefCell::new(Value::Null);
    wait_for(
        "every device to confirm 2.0.0 through the surviving instance",
        || {
            let r = show(&survivor);
            let done = r["state"] == "finished" && confirmed(&r) == DEVICES as u64;
            *last.borrow_mut() = r;
            done
        },
        || format!("{:#}\n{}", last.borrow(), sim_log()),
    );
    let r = last.into_inner();
    assert_eq!(
        r["total"]["failures"], 0,
        "no device lost its update to the dead instance: {r:#}"
    );
    assert_eq!(
        psql(
            &database,
            "SELECT holder FROM leases WHERE name = 'rollout-scheduler'"
        ),
        survivor.instance,
        "the survivor took the scheduler over"
    );
    let running: usize = devices(&survivor)
        .iter()
        .filter(|d| d["status"]["version"] == "2.0.0")
        .count();
    assert_eq!(running, DEVICES);
}
