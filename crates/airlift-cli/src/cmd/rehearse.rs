//! `airlift rollout rehearse`: a rollout plan run for real, against
//! simulated devices. A server on a temporary data directory and a fleet
//! of simulated devices (the same engine and protocol as `airlift fleet
//! sim`) run in this process; the new release crashes on a chosen share of
//! the devices (they roll back) and a chosen share go silent once they
//! installed it. The plan runs with its waves and thresholds as given; its
//! soak and deadline are shortened to what simulated devices need, and
//! the report gives the plan's own. The report says, wave by wave, whether
//! and when the rollout would advance, pause or finish.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlift_agent::device::{AgentConfig, Behaviour, http_client};
use airlift_agent::fleet::{Enrolment, Faults, Stats, enrol_all, spawn_fleet, watch};
use airlift_agent::provision;
use airlift_engine::sim::test_image;
use airlift_format::manifest::parse_public_key_file;
use airlift_format::partition::AIRLIFT_DEFAULT;
use airlift_server::{Config, Server};
use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};

use super::rollout::{PlanArgs, parse_duration, plan_line, show_duration, wave_numbers};

/// `airlift rollout rehearse` options.
#[derive(Args, Debug)]
pub struct RehearseArgs {
    #[command(flatten)]
    pub plan: PlanArgs,
    /// Simulated devices.
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    /// Share of the devices (0 to 1) on which the release crashes before
    /// it confirms (they roll back after 3 boots).
    #[arg(long, default_value_t = 0.0)]
    pub failure_rate: f64,
    /// Share of the devices (0 to 1) that go silent for good once they
    /// installed the release.
    #[arg(long, default_value_t = 0.0)]
    pub silence_rate: f64,
    /// The soak the rehearsal waits between waves (the plan's, if shorter).
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub rehearsal_soak: Duration,
    /// The deadline the rehearsal applies (the plan's, if shorter): longer
    /// than a simulated device takes to update, or healthy devices count
    /// as silent.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub rehearsal_deadline: Duration,
    /// Bytes of code in the simulated release.
    #[arg(long, default_value_t = 16_384)]
    pub image_size: usize,
    /// Give up when the rollout neither paused nor finished after this long.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The release the simulated devices get, and the one they start with.
const OLD: &str = "1.0.0";
const NEW: &str = "2.0.0";

/// Runs `airlift rollout rehearse`.
pub fn run(args: RehearseArgs) -> anyhow::Result<ExitCode> {
    if args.devices == 0 {
        bail!("--devices must be at least 1");
    }
    for (name, rate) in [
        ("--failure-rate", args.failure_rate),
        ("--silence-rate", args.silence_rate),
    ] {
        if !(0.0..=1.0).contains(&rate) {
            bail!("{name} must be a share from 0 to 1, not {rate}");
        }
    }
    if args.failure_rate + args.silence_rate > 1.0 {
        bail!("--failure-rate and --silence-rate add up to more than every device");
    }
    let mut r = [0u8; 4];
    getrandom::fill(&mut r).map_err(|e| anyhow::anyhow!("no system randomness: {e}"))?;
    let data = std::env::temp_dir().join(format!("airlift-rehearsal-{}", airlift_agent::hex(&r)));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(rehearse(&args, &data));
    let _ = std::fs::remove_dir_all(&data);
    let report = result?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    let done = matches!(
        report["outcome"]["state"].as_str(),
        Some("paused" | "finished")
    );
    Ok(if done {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn rehearse(args: &RehearseArgs, data: &std::path::Path) -> anyhow::Result<Value> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let address = listener.local_addr()?;
    let base = format!("http://{address}");
    let config = Config {
        data_dir: data.to_owned(),
        listen: address,
        poll_seconds: 1,
        rollout_tick_ms: 100,
        ..Config::default()
    };
    let server = Server::open(config).await?;
    let admin = server
        .initial_admin_token
        .clone()
        .context("the rehearsal server made no admin token")?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(listener, async move {
        let _ = stopped.await;
    }));
    let report = drive(args, &base, &admin, data).await;
    let _ = stop.send(());
    serving.await.context("server task")??;
    report
}

async fn drive(
    args: &RehearseArgs,
    base: &str,
    admin: &str,
    data: &std::path::Path,
) -> anyhow::Result<Value> {
    let http = http_client()?;
    let key = parse_public_key_file(&std::fs::read_to_string(data.join("signing.pub"))?)?;
    let image = |version| test_image(version, 0, args.image_size);
    let flash: Arc<[u8]> = provision::flash_image(&AIRLIFT_DEFAULT, &image(OLD), &[key])?.into();
    let release = super::demo::upload(&http, base, admin, image(NEW)).await?;
    let names: Vec<String> = (1..=args.devices)
        .map(|i| format!("rehearsal-{i:05}"))
        .collect();
    let tags = vec!["rehearsal".to_owned()];
    let enrolment = Enrolment::Admin(admin.to_owned());
    let tokens = enrol_all(&http, base, &enrolment, &names, &tags, 32).await?;
    let faults = Faults {
        behaviours: vec![(NEW.to_owned(), Behaviour::Crash, args.failure_rate)],
        silence: args.silence_rate,
    };
    let template = AgentConfig {
        server: Some(base.to_owned()),
        poll: Some(Duration::from_millis(500)),
        health_check: Duration::from_millis(50),
        crash_after: Duration::from_millis(20),
        watchdog: Duration::from_millis(300),
        retry_delay: Duration::from_millis(500),
        jitter: true,
        http_limit: Some(Arc::new(tokio::sync::Semaphore::new(256))),
        downloads: Some(http_client()?),
        ..AgentConfig::default()
    };
    let stats = Arc::new(Stats::new(args.devices));
    let devices = names.iter().cloned().zip(tokens).collect();
    let mut fleet = spawn_fleet(devices, flash, &template, &faults, &http, &stats)?;
    let all = args.devices;
    let booted = watch(
        &stats,
        Duration::from_secs(3600),
        Some(Duration::from_secs(120)),
        |s| s.confirmed_on(OLD) == all,
        |_| {},
    )
    .await;
    if !booted {
        fleet.abort_all();
        bail!("the simulated devices did not boot");
    }
    let soak = args.plan.soak.min(args.rehearsal_soak);
    let deadline = args.plan.deadline.min(args.rehearsal_deadline);
    let mut body = args.plan.body(soak, deadline);
    body["release"] = json!(release);
    body["target"] = json!("tag:rehearsal");
    let created: Value = send(http.post(format!("{base}/api/v1/rollouts")), admin, &body).await?;
    let id = created["id"].clone();
    let started = Instant::now();
    let mut detail = created;
    while !matches!(
        detail["state"].as_str(),
        Some("paused" | "finished" | "cancelled")
    ) && started.elapsed() < args.timeout
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        detail = send(
            http.get(format!("{base}/api/v1/rollouts/{id}")),
            admin,
            &Value::Null,
        )
        .await?;
    }
    fleet.abort_all();
    while fleet.join_next().await.is_some() {}
    let summary = stats.summary();
    Ok(report(args, &detail, soak, deadline, summary.silenced))
}

async fn send(
    request: reqwest::RequestBuilder,
    admin: &str,
    body: &Value,
) -> anyhow::Result<Value> {
    let request = request.bearer_auth(admin);
    let request = if body.is_null() {
        request
    } else {
        request.json(body)
    };
    let response = request.send().await.context("the rehearsal server")?;
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!(
            "the rehearsal server refused the plan ({status}): {}",
            answer["error"]["message"]
                .as_str()
                .unwrap_or("no reason given")
        );
    }
    Ok(answer)
}

/// The report: each wave's numbers and what became of it.
fn report(
    args: &RehearseArgs,
    detail: &Value,
    soak: Duration,
    deadline: Duration,
    silenced: u64,
) -> Value {
    let events = detail["events"].as_array().cloned().unwrap_or_default();
    let start = events
        .iter()
        .find(|e| e["kind"] == "started")
        .and_then(|e| e["at"].as_i64())
        .unwrap_or(0);
    let at = |kind: &str, wave: Option<u64>| {
        events
            .iter()
            .find(|e| e["kind"] == kind && wave.is_none_or(|w| e["detail"]["wave"] == w))
            .and_then(|e| e["at"].as_i64())
            .map(|t| t - start)
    };
    let state = detail["state"].as_str().unwrap_or("running");
    let opened = detail["opened"].as_u64().unwrap_or(0);
    let waves = detail["progress"].as_array().cloned().unwrap_or_default();
    let last = waves.len() as u64;
    let mut out = Vec::new();
    for p in &waves {
        let wave = p["wave"].as_u64().unwrap_or(0);
        let (outcome, at_ms) = if wave > opened {
            ("not_reached", None)
        } else if wave < opened {
            (
                "advanced",
                at("wave_opened", Some(wave + 1)).or(at("advanced", Some(wave + 1))),
            )
        } else {
            match state {
                "paused" => ("paused", at("paused", None)),
                "finished" if wave == last => ("finished", at("finished", None)),
                _ => ("running", None),
            }
        };
        let mut entry = json!({"wave": wave, "devices": p["devices"], "confirmed": p["confirmed"],
            "failures": p["failures"], "failures_by_reason": p["failures_by_reason"],
            "updating": p["updating"], "waiting": p["waiting"], "skipped": p["skipped"],
            "outcome": outcome, "at_ms": at_ms});
        if outcome == "paused" {
            entry["reason"] = detail["pause_reason"]["message"].clone();
        }
        out.push(entry);
    }
    let outcome = match state {
        "paused" => json!({"state": "paused", "wave": opened,
            "reason": detail["pause_reason"]["message"]}),
        "finished" => json!({"state": "finished", "wave": opened,
            "confirmed": detail["total"]["confirmed"], "failures": detail["total"]["failures"]}),
        other => json!({"state": other, "wave": opened,
            "reason": format!("neither paused nor finished within {}", show_duration(&json!(args.timeout.as_millis() as u64)))}),
    };
    let crashing = (args.failure_rate * args.devices as f64).round() as u64;
    let silent = (args.silence_rate * args.devices as f64).round() as u64;
    json!({
        "devices": args.devices,
        "crashing": crashing,
        "silent": silent,
        "silenced": silenced,
        "plan": detail["plan"],
        "plan_soak_ms": args.plan.soak.as_millis() as u64,
        "plan_deadline_ms": args.plan.deadline.as_millis() as u64,
        "rehearsal_soak_ms": soak.as_millis() as u64,
        "rehearsal_deadline_ms": deadline.as_millis() as u64,
        "wave_sizes": detail["waves"],
        "waves": out,
        "outcome": outcome,
    })
}

fn print_report(r: &Value) {
    outln!(
        "rehearsal: {} simulated devices; {NEW} crashes on {} of them and {} go silent after installing it",
        r["devices"],
        r["crashing"],
        r["silent"]
    );
    let mut plan = r["plan"].clone();
    plan["soak_ms"] = r["plan_soak_ms"].clone();
    plan["deadline_ms"] = r["plan_deadline_ms"].clone();
    outln!("plan: {}", plan_line(&plan));
    outln!(
        "  (rehearsed with a soak of {} and a deadline of {}; waves of {} devices)",
        show_duration(&r["rehearsal_soak_ms"]),
        show_duration(&r["rehearsal_deadline_ms"]),
        r["wave_sizes"]
    );
    let soak = show_duration(&r["plan_soak_ms"]);
    for w in r["waves"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let when = w["at_ms"]
            .as_i64()
            .map(|t| format!(" (+{:.1}s into the rehearsal)", t as f64 / 1000.0))
            .unwrap_or_default();
        let what = match w["outcome"].as_str().unwrap_or("") {
            "advanced" => format!("advances after the {soak} soak{when}"),
            "paused" => format!("PAUSES{when}: {}", w["reason"].as_str().unwrap_or("paused")),
            "finished" => format!("the rollout finishes{when}"),
            "not_reached" => "never opens: its devices are not offered the release".to_owned(),
            _ => "still running when the rehearsal stopped".to_owned(),
        };
        outln!("wave {}: {}; {what}", w["wave"], wave_numbers(w));
    }
    let o = &r["outcome"];
    match o["state"].as_str() {
        Some("paused") => outln!("prediction: the rollout pauses in wave {}", o["wave"]),
        Some("finished") => outln!(
            "prediction: the rollout finishes: {} confirmed, {} failed",
            o["confirmed"],
            o["failures"]
        ),
        _ => outln!(
            "prediction: none ({})",
            o["reason"].as_str().unwrap_or("the rehearsal stopped")
        ),
    }
}
