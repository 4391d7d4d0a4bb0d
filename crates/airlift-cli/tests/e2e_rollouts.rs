//! End to end: staged rollouts of `airlift serve` (its scheduler ticking
//! every 100 ms) to 1,000 simulated devices of `airlift fleet sim`, driven
//! with `airlift rollout` as an operator would; and `airlift rollout
//! rehearse`. Every wait is for a state the API shows, never for time.
#![allow(clippy::unwrap_used)]

mod agent_common;

use std::process::{Child, Command};

use agent_common::*;
use serde_json::Value;

const DEVICES: usize = 1000;
const WAVES: &str = "5%,10%,25%,50%,100%";
/// A plan that opens each wave once every device of the open ones
/// confirmed, and pauses at the first failure.
const STRICT: [&str; 10] = [
    "--waves",
    WAVES,
    "--soak",
    "200ms",
    "--success",
    "100%",
    "--pause-at",
    "1",
    "--deadline",
    "5m",
];

/// A server, a release 2.0.0 and a simulated fleet of 1,000 devices running
/// 1.0.0, all enrolled and checked in.
struct Fleet {
    dir: tempfile::TempDir,
    server: Server,
    sim: Option<Child>,
    release: i64,
}

impl Fleet {
    fn start(sim_args: &[&str]) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let server = Server::start(&d.join("data"), &[("AIRLIFT_ROLLOUT_TICK_MS", "100")]);
        let firmware = |version: &str| {
            let path = d.join(format!("{version}.bin"));
            airlift(&[
                "fleet",
                "firmware",
                path.to_str().unwrap(),
                "--version",
                version,
            ])
            .status
            .success()
            .then_some(path)
            .unwrap()
        };
        let (v1, v2) = (firmware("1.0.0"), firmware("2.0.0"));
        let release = server.upload(&v2);
        let log = std::fs::File::create(d.join("sim.log")).unwrap();
        let sim = fleet_sim(
            &server.url,
            &server.admin_token(),
            &v1,
            &server.signing_pub(),
            DEVICES,
            sim_args,
            log,
        );
        let fleet = Fleet {
            dir,
            server,
            sim: Some(sim),
            release,
        };
        let last = std::cell::RefCell::new(String::new());
        wait_for(
            "every simulated device to check in running 1.0.0",
            || {
                let devices = fleet.server.cli_json(&["device", "list"]);
                let devices = devices.as_array().unwrap();
                let ready = devices
                    .iter()
                    .filter(|d| d["status"]["version"] == "1.0.0")
                    .count();
                *last.borrow_mut() = format!("{ready} of {} ready", devices.len());
                ready == DEVICES
            },
            || format!("{}\n{}", last.borrow(), fleet.sim_log()),
        );
        fleet
    }

    fn sim_log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("sim.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `airlift rollout create` of the release to the fleet with this plan.
    fn rollout(&self, plan: &[&str]) -> Value {
        let release = self.release.to_string();
        let mut args = vec!["rollout", "create", &release, "--to", "tag:fleet"];
        args.extend_from_slice(plan);
        self.server.cli_json(&args)
    }

    fn show(&self, id: &Value) -> Value {
        self.server.cli_json(&["rollout", "show", &id.to_string()])
    }

    /// Waits until the rollout's state satisfies `done`; returns it.
    fn wait(&self, id: &Value, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let last = std::cell::RefCell::new(Value::Null);
        wait_for(
            what,
            || {
                let r = self.show(id);
                let ok = done(&r);
                *last.borrow_mut() = r;
                ok
            },
            || {
                let r = last.borrow();
                format!(
                    "state {} opened {} total {:#}\nevents {:#}\n{}",
                    r["state"],
                    r["opened"],
                    r["total"],
                    r["events"],
                    self.sim_log()
                )
            },
        );
        last.into_inner()
    }

    /// Waits for the rollout to end; checks it finished with every device confirmed.
    fn finished(&self, id: &Value) -> Value {
        let done = self.wait(id, "the rollout to finish", |r| r["state"] != "running");
        assert_eq!(done["state"], "finished", "{:#}", done["pause_reason"]);
        let total = &done["total"];
        assert_eq!(
            (total["confirmed"].as_u64(), total["failures"].as_u64()),
            (Some(DEVICES as u64), Some(0))
        );
        done
    }

    /// Waits for the simulator to see every device on 2.0.0 and checks
    /// that none was lost and none installed it twice.
    fn every_device_installed_once(&mut self) {
        let summary = self.summary(false);
        let every = |key: &str| serde_json::json!({key: DEVICES});
        assert_eq!(
            summary["versions"],
            every("2.0.0"),
            "none lost: {summary:#}"
        );
        assert_eq!(summary["installs"], every("1"), "none twice: {summary:#}");
        assert_eq!(summary["crashed"], 0);
    }

    /// The simulator's summary once it ended (by itself, or stopped with
    /// SIGINT when `interrupt`).
    fn summary(&mut self, interrupt: bool) -> Value {
        let sim = self.sim.take().unwrap();
        if interrupt {
            let status = Command::new("kill")
                .args(["-INT", &sim.id().to_string()])
                .status()
                .unwrap();
            assert!(status.success());
        }
        let output = sim.wait_with_output().unwrap();
        serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("no summary ({e}): {}", self.sim_log()))
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Some(mut sim) = self.sim.take() {
            let _ = sim.kill();
            let _ = sim.wait();
        }
    }
}

/// Names of the rollout's devices whose wave is in `waves`.
fn devices_of(rollout: &Value, waves: impl Fn(i64) -> bool) -> Vec<String> {
    rollout["assignments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| waves(a["wave"].as_i64().unwrap()))
        .map(|a| a["device_name"].as_str().unwrap().to_owned())
        .collect()
}

fn kinds(rollout: &Value) -> Vec<String> {
    rollout["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect()
}

fn rehearse(args: &[&str]) -> Value {
    let output = Command::new(AIRLIFT)
        .args([
            "rollout",
            "rehearse",
            "--devices",
            &DEVICES.to_string(),
            "--json",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn a_release_crashing_on_30_percent_pauses_in_wave_1_where_the_rehearsal_said_it_would() {
    let plan = ["--waves", WAVES, "--success", "90%", "--pause-at", "10%"];
    let mut rehearsal_args = plan.to_vec();
    rehearsal_args.extend_from_slice(&["--failure-rate", "0.3"]);
    let rehearsal = rehearse(&rehearsal_args);
    assert_eq!(rehearsal["crashing"], 300, "{rehearsal:#}");
    let predicted = &rehearsal["outcome"];
    assert_eq!(predicted["state"], "paused", "{rehearsal:#}");
    let waves = rehearsal["waves"].as_array().unwrap();
    assert_eq!(waves.len(), 5);
    assert!(
        waves[1..].iter().all(|w| w["outcome"] == "not_reached"),
        "{rehearsal:#}"
    );

    let fleet = Fleet::start(&["--behave", "2.0.0=crash@0.3", "--duration", "600"]);
    let mut args = plan.to_vec();
    args.extend_from_slice(&["--soak", "1s", "--deadline", "5m"]);
    let created = fleet.rollout(&args);
    let id = created["id"].clone();
    assert_eq!(
        created["waves"],
        serde_json::json!([50, 100, 250, 500, 1000])
    );
    let paused = fleet.wait(&id, "the rollout to pause", |r| r["state"] != "running");
    assert_eq!(paused["state"], "paused");
    assert_eq!(
        paused["opened"], predicted["wave"],
        "the rehearsal's prediction"
    );
    assert_eq!(paused["opened"], 1);
    assert_eq!(paused["paused_by"], "failure_threshold");
    let reason = &paused["pause_reason"];
    assert_eq!(
        (
            reason["wave"].as_i64(),
            reason["devices"].as_i64(),
            reason["limit"].as_i64()
        ),
        (Some(1), Some(50), Some(5))
    );
    assert!(reason["failures"].as_i64().unwrap() >= 5, "{reason:#}");
    let by_reason = reason["failures_by_reason"].as_object().unwrap();
    assert_eq!(
        by_reason.keys().collect::<Vec<_>>(),
        ["rolled_back"],
        "{reason:#}"
    );
    assert!(
        reason["message"]
            .as_str()
            .unwrap()
            .contains("in wave 1 reached the failure threshold of 10% (5 of 50 devices)"),
        "{reason:#}"
    );
    // No device outside wave 1 was offered the release: every one of them
    // still waits, and none of them ever reported anything about it.
    let wave1 = devices_of(&paused, |w| w == 1);
    assert_eq!(wave1.len(), 50);
    let outside = devices_of(&paused, |w| w > 1);
    assert_eq!(outside.len(), 950);
    assert!(
        paused["progress"].as_array().unwrap()[1..]
            .iter()
            .all(|p| p["waiting"] == p["devices"]),
        "{:#}",
        paused["progress"]
    );
    let devices = fleet.server.cli_json(&["device", "list"]);
    let reported: Vec<&str> = devices
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["status"]["version"] != "1.0.0")
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert!(
        reported.iter().all(|name| wave1.iter().any(|w| w == name)),
        "{reported:?}"
    );
    let fleet_events = fleet_events(&fleet.server);
    assert!(!fleet_events.is_empty());
    for (device, kind) in &fleet_events {
        assert!(
            wave1.contains(device),
            "{device} (outside wave 1) reported {kind}"
        );
    }
}

#[test]
fn a_good_release_runs_every_wave_to_the_end_with_every_device_confirmed() {
    let mut fleet = Fleet::start(&["--until-version", "2.0.0", "--duration", "300"]);
    let id = fleet.rollout(&STRICT)["id"].clone();
    let done = fleet.finished(&id);
    let mut expected = vec!["created", "started"];
    for _ in 2..=5 {
        expected.extend_from_slice(&["soak_started", "wave_opened"]);
    }
    expected.push("finished");
    assert_eq!(kinds(&done), expected);
    fleet.every_device_installed_once();
}

#[test]
fn devices_silent_after_installing_hit_their_deadline_and_pause_the_rollout() {
    let mut fleet = Fleet::start(&["--silence-rate", "0.1", "--duration", "600"]);
    let created = fleet.rollout(&[
        "--waves",
        WAVES,
        "--soak",
        "1s",
        "--success",
        "100%",
        "--pause-at",
        "2",
        "--deadline",
        "15s",
    ]);
    let id = created["id"].clone();
    let paused = fleet.wait(&id, "the rollout to pause", |r| r["state"] != "running");
    assert_eq!(
        (
            paused["state"].as_str(),
            paused["opened"].as_i64(),
            paused["paused_by"].as_str()
        ),
        (Some("paused"), Some(1), Some("failure_threshold"))
    );
    let reason = &paused["pause_reason"];
    assert!(reason["failures"].as_i64().unwrap() >= 2, "{reason:#}");
    assert_eq!(
        reason["failures_by_reason"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["deadline"],
        "{reason:#}"
    );
    let late: Vec<&Value> = paused["assignments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["reason"] == "deadline")
        .collect();
    assert!(late.len() >= 2);
    assert!(
        late.iter()
            .all(|a| a["wave"] == 1 && a["state"] == "failed"),
        "{late:#?}"
    );
    assert!(
        paused["progress"].as_array().unwrap()[1..]
            .iter()
            .all(|p| p["waiting"] == p["devices"]),
        "no later wave opened: {:#}",
        paused["progress"]
    );
    let summary = fleet.summary(true);
    let silenced = summary["silenced"].as_u64().unwrap();
    assert!(
        silenced >= late.len() as u64,
        "{} failed by deadline, {silenced} went silent",
        late.len()
    );
}

#[test]
fn a_server_killed_mid_wave_and_restarted_continues_with_no_device_offered_twice_and_none_lost() {
    let mut fleet = Fleet::start(&["--until-version", "2.0.0", "--duration", "300"]);
    let id = fleet.rollout(&[&STRICT[..], &["--max-parallel", "100"]].concat())["id"].clone();
    let mid = fleet.wait(&id, "300 devices confirmed", |r| {
        r["total"]["confirmed"].as_u64().unwrap() >= 300
    });
    fleet.server.kill();
    let total = &mid["total"];
    assert_eq!(mid["state"], "running", "{mid:#}");
    assert!(total["confirmed"].as_u64().unwrap() < 1000, "{total:#}");
    assert!(total["updating"].as_u64().unwrap() + total["waiting"].as_u64().unwrap() > 0);

    let listen = fleet.server.url.trim_start_matches("http://").to_owned();
    let data = fleet.server.data.clone();
    fleet.server = Server::start_at(&data, &listen, &[("AIRLIFT_ROLLOUT_TICK_MS", "100")]);
    let done = fleet.finished(&id);
    let opened: Vec<&Value> = done["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "wave_opened")
        .map(|e| &e["detail"]["wave"])
        .collect();
    assert_eq!(opened, [2, 3, 4, 5], "each wave opened once");
    fleet.every_device_installed_once();
}

/// Every device event the server stored: (device, kind).
fn fleet_events(server: &Server) -> Vec<(String, String)> {
    let url = format!("{}/api/v1/events?limit=1000", server.url);
    let events: Value = reqwest::blocking::Client::new()
        .get(url)
        .bearer_auth(server.admin_token())
        .send()
        .unwrap()
        .json()
        .unwrap();
    let events = events.as_array().unwrap();
    assert!(events.len() < 1000, "more events than one page");
    events
        .iter()
        .map(|e| {
            (
                e["device"].as_str().unwrap().to_owned(),
                e["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}
