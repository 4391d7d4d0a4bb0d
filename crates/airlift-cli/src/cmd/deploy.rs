//! `airlift deploy RELEASE --to TARGET` and `airlift deployment list|show|cancel`.
//!
//! What a deployment shows is in words (`waiting for check-in`, not
//! `pending`), with when each device still waiting is expected; `--wait`
//! follows it live through the server's change notices until every device
//! is done.

use std::io::{BufRead, BufReader};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::client::{Api, ServerArgs, Table, age, field, print_json, query};

/// `airlift deploy` options.
#[derive(Args, Debug)]
pub struct DeployArgs {
    /// The release: its id or SHA-256.
    pub release: String,
    /// Who gets it: `device:NAME`, `devices:A,B,...`, `tag:T` or `all`.
    #[arg(long)]
    pub to: String,
    /// Follow it until every device is done: exit 0 when all confirmed, 1
    /// when some failed, rolled back or were cancelled.
    #[arg(long, conflicts_with = "json")]
    pub wait: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `airlift deployment` subcommands.
#[derive(Subcommand, Debug)]
pub enum DeploymentCommand {
    /// List deployments, newest first.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show a deployment's progress: devices per state.
    Show {
        /// Deployment id.
        id: i64,
        /// List every device (text shows the first 20).
        #[arg(long)]
        devices: bool,
        /// Follow it until every device is done (see `airlift deploy --wait`).
        #[arg(long, conflicts_with = "json")]
        wait: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Cancel a deployment: devices that have not finished are not offered it any more.
    Cancel {
        /// Deployment id.
        id: i64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// Devices a text `show` lists unless asked for all.
const LISTED: usize = 20;
/// Waiting devices whose next check-in `show` looks up.
const EXPECTED: usize = 5;

/// Assignment states in the order an update goes through them, in words.
const STATES: [(&str, &str); 11] = [
    ("confirmed", "confirmed"),
    ("failed", "failed"),
    ("rolled_back", "rolled back"),
    ("cancelled", "cancelled"),
    ("booted", "booted, on trial"),
    ("installed", "installed, rebooting"),
    ("downloading", "downloading"),
    ("offered", "offered"),
    ("pending", "waiting for check-in"),
    ("waiting", "waiting for its wave"),
    ("skipped", "cannot take it"),
];

/// An assignment state in words.
fn words(state: &str) -> &str {
    STATES
        .iter()
        .find(|(s, _)| *s == state)
        .map_or(state, |(_, w)| w)
}

/// `3 confirmed, 1 downloading, 2 cannot take it (already_running 2)`.
fn counts_line(d: &Value) -> String {
    let count = |s: &str| d["counts"][s].as_i64().unwrap_or(0);
    let parts: Vec<String> = STATES
        .iter()
        .filter(|(s, _)| count(s) > 0)
        .map(|(s, w)| {
            let reasons: Vec<String> = d["reasons"][*s]
                .as_object()
                .map(|r| r.iter().map(|(k, n)| format!("{k} {n}")).collect())
                .unwrap_or_default();
            if reasons.is_empty() {
                format!("{} {w}", count(s))
            } else {
                format!("{} {w} ({})", count(s), reasons.join(", "))
            }
        })
        .collect();
    let devices = d["devices"].as_i64().unwrap_or(0);
    format!(
        "{devices} device{}: {}",
        if devices == 1 { "" } else { "s" },
        parts.join(", ")
    )
}

fn header(d: &Value) {
    let r = &d["release"];
    outln!(
        "deployment {}: {} {} to {} ({}, created {})",
        field(d, "id"),
        field(r, "project"),
        field(r, "version"),
        field(d, "target"),
        field(d, "state"),
        age(&d["created_at"]),
    );
}

/// When a device waiting for check-in is expected, from what the server knows.
fn expected(api: &Api, name: &str) -> String {
    let Ok(device) = api.get::<Value>(&format!("/api/v1/devices/{name}")) else {
        return String::new();
    };
    if device["check_in"]["waiting"] == true {
        return "its check-in is waiting on the server: it gets the update now".to_owned();
    }
    let Some(due) = device["check_in"]["due_at"].as_i64() else {
        return "it has never checked in: is it running, with its token?".to_owned();
    };
    let now = super::client::now_ms();
    let seen = age(&device["status"]["last_seen"]);
    if due >= now {
        format!(
            "next check-in due in {}s (last seen {seen})",
            (due - now + 999) / 1000
        )
    } else {
        format!(
            "its check-in is {}s overdue (last seen {seen}): is it online?",
            (now - due) / 1000
        )
    }
}

fn print_detail(api: &Api, d: &Value, all: bool) {
    header(d);
    outln!("  {}", counts_line(d));
    let assignments = d["assignments"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if assignments.is_empty() {
        return;
    }
    let shown = if all {
        assignments.len()
    } else {
        LISTED.min(assignments.len())
    };
    let mut looked_up = 0;
    let mut table = Table::new(&["DEVICE", "STATE", "WHY / WHEN"]);
    for a in &assignments[..shown] {
        let state = a["state"].as_str().unwrap_or("-");
        let why = match a["reason"].as_str() {
            Some(reason) => reason.to_owned(),
            None if state == "pending" && looked_up < EXPECTED => {
                looked_up += 1;
                expected(api, a["device_name"].as_str().unwrap_or_default())
            }
            None => String::new(),
        };
        table.row(vec![field(a, "device_name"), words(state).to_owned(), why]);
    }
    table.print();
    let total = d["assignments_total"]
        .as_i64()
        .unwrap_or(assignments.len() as i64);
    if (shown as i64) < total {
        outln!(
            "  ... and {} more (airlift deployment show {} --devices lists them all)",
            total - shown as i64,
            field(d, "id")
        );
    }
}

/// Follows deployment `id` through the server's change notices, printing
/// its counts whenever they change, until no device is left to finish.
/// Exit 0 when every device that could take it confirmed, 1 otherwise.
fn follow(api: &Api, id: i64) -> anyhow::Result<ExitCode> {
    let path = format!("/api/v1/deployments/{id}{}", query(&[("limit", "0")]));
    let started = Instant::now();
    let mut last = String::new();
    let mut show = |d: &Value| {
        let line = counts_line(d);
        if line != last {
            outln!("  [{:5.1}s] {line}", started.elapsed().as_secs_f64());
            last = line;
        }
    };
    let done = |d: &Value| d["state"] != "active";
    let mut detail: Value = api.get(&path)?;
    show(&detail);
    if !done(&detail) {
        let notices = api
            .request(reqwest::Method::GET, "/api/v1/fleet/changes")
            .send()
            .map_err(|e| api.unreachable(e))?;
        if !notices.status().is_success() {
            super::client::decode::<Value>(notices)?;
            anyhow::bail!("the server refused its change notices");
        }
        // Each notice says only that something changed: read it again.
        for line in BufReader::new(notices).lines() {
            let line =
                line.map_err(|e| anyhow::anyhow!("the server's change notices broke off: {e}"))?;
            if !line.starts_with("data:") {
                continue;
            }
            detail = api.get(&path)?;
            show(&detail);
            if done(&detail) {
                break;
            }
        }
    }
    if !done(&detail) {
        anyhow::bail!("the server stopped before deployment {id} finished");
    }
    let count = |s: &str| detail["counts"][s].as_i64().unwrap_or(0);
    let unhappy = count("failed") + count("rolled_back") + count("cancelled");
    outln!(
        "deployment {id} {}: {} confirmed{}",
        field(&detail, "state"),
        count("confirmed"),
        if unhappy > 0 {
            format!(", {unhappy} did not (airlift deployment show {id})")
        } else {
            String::new()
        }
    );
    Ok(if unhappy > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Runs `airlift deploy`.
pub fn run_deploy(args: DeployArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.server)?;
    let detail: Value = api.post(
        "/api/v1/deployments",
        &json!({"release": args.release, "target": args.to}),
    )?;
    if args.json {
        print_json(&detail)?;
        return Ok(ExitCode::SUCCESS);
    }
    print_detail(&api, &detail, false);
    let id = detail["id"].as_i64().unwrap_or_default();
    if detail["state"] != "active" {
        eprintln!(
            "airlift: nothing to do: no device of {} can take this release",
            args.to
        );
        return Ok(ExitCode::SUCCESS);
    }
    if args.wait {
        return follow(&api, id);
    }
    eprintln!("follow it: airlift deployment show {id} --wait");
    Ok(ExitCode::SUCCESS)
}

/// Runs an `airlift deployment` subcommand.
pub fn run(command: DeploymentCommand) -> anyhow::Result<ExitCode> {
    match command {
        DeploymentCommand::List { json, server } => {
            let list: Value = Api::new(&server)?.get("/api/v1/deployments")?;
            if json {
                print_json(&list)?;
                return Ok(ExitCode::SUCCESS);
            }
            let list = list.as_array().map(Vec::as_slice).unwrap_or_default();
            if list.is_empty() {
                eprintln!("no deployments yet: airlift deploy RELEASE --to TARGET makes one");
                return Ok(ExitCode::SUCCESS);
            }
            let mut table =
                Table::new(&["ID", "VERSION", "TARGET", "STATE", "DEVICES", "CREATED"]).right(0);
            for d in list {
                let devices = counts_line(d);
                table.row(vec![
                    field(d, "id"),
                    field(d, "version"),
                    field(d, "target"),
                    field(d, "state"),
                    devices,
                    age(&d["created_at"]),
                ]);
            }
            table.print();
        }
        DeploymentCommand::Show {
            id,
            devices,
            wait,
            json,
            server,
        } => {
            let api = Api::new(&server)?;
            if wait {
                return follow(&api, id);
            }
            let limit = (!json && !devices).then(|| LISTED.to_string());
            let path = format!(
                "/api/v1/deployments/{id}{}",
                query(&[("limit", limit.as_deref().unwrap_or_default())])
            );
            let detail: Value = api.get(&path)?;
            if json {
                print_json(&detail)?;
            } else {
                print_detail(&api, &detail, devices);
            }
        }
        DeploymentCommand::Cancel { id, json, server } => {
            let api = Api::new(&server)?;
            let detail: Value =
                api.post(&format!("/api/v1/deployments/{id}/cancel"), &json!({}))?;
            if json {
                print_json(&detail)?;
            } else {
                print_detail(&api, &detail, false);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
