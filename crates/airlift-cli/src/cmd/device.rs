//! `airlift device add|list|show|events|rotate-token|revoke|delete`:
//! devices known to the server, and taking a device's identity back.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{Value, json};

use super::client::{Api, ServerArgs, Table, age, field, print_json, print_list, strings};

/// `airlift device` subcommands that talk to the server.
#[derive(Subcommand, Debug)]
pub enum DeviceCommand {
    /// Register a device; prints its token once, alone on stdout.
    Add {
        /// Unique device name.
        name: String,
        /// A tag (repeat for several); deployments can target tags.
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List devices with what they run and when they last checked in.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show one device and its current assignment.
    Show {
        /// Device name.
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Give a device a new token (printed once): the old one stops working
    /// at once; a revoked device is taken back.
    RotateToken {
        /// Device name.
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Revoke a device: its token stops working at once and its unfinished
    /// updates are cancelled; it stays listed with its history
    /// (`rotate-token` takes it back).
    Revoke {
        /// Device name.
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Delete a device: its token stops working at once, its unfinished
    /// updates are cancelled and its name is free; its history stays
    /// readable as NAME~deleted-ID.
    Delete {
        /// Device name.
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Run a simulated device over a flash file (`airlift flash create`).
    Run(Box<super::agent::RunArgs>),
    /// Show a device's events, newest first.
    Events {
        /// Device name.
        name: String,
        /// At most this many events.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// "3 unfinished updates cancelled (deployments 4, 7)", or nothing.
fn cancelled(answer: &Value) -> String {
    let ids: Vec<String> = answer["cancelled"]
        .as_array()
        .map(|ids| ids.iter().map(Value::to_string).collect())
        .unwrap_or_default();
    match ids.len() {
        0 => String::new(),
        1 => format!(
            "; its unfinished update of deployment {} is cancelled",
            ids[0]
        ),
        n => format!(
            "; its {n} unfinished updates are cancelled (deployments {})",
            ids.join(", ")
        ),
    }
}

/// The engine state, or why the device has none to report any more.
fn standing(device: &Value) -> String {
    if !device["deleted_at"].is_null() {
        "deleted".to_owned()
    } else if !device["revoked_at"].is_null() {
        "revoked".to_owned()
    } else {
        field(&device["status"], "state")
    }
}

fn running(device: &Value) -> String {
    let s = &device["status"];
    match s["version"].as_str() {
        Some(version) => format!(
            "{} {} (slot {})",
            field(s, "project"),
            version,
            field(s, "slot")
        ),
        None => "-".to_owned(),
    }
}

/// Runs an `airlift device` server subcommand.
pub fn run(command: DeviceCommand) -> anyhow::Result<ExitCode> {
    match command {
        DeviceCommand::Run(args) => return super::agent::run(*args),
        DeviceCommand::Add {
            name,
            tags,
            json,
            server,
        } => {
            let answer: Value =
                Api::new(&server)?.post("/api/v1/devices", &json!({"name": name, "tags": tags}))?;
            if json {
                print_json(&answer)?;
            } else {
                // The token alone on stdout: `airlift device add NAME > NAME.token`.
                eprintln!("airlift: device {name} added; its token, shown only this once:");
                outln!("{}", field(&answer, "token"));
            }
        }
        DeviceCommand::List { json, server } => {
            let devices: Value = Api::new(&server)?.get("/api/v1/devices")?;
            print_list(
                &devices,
                json,
                "no devices yet: airlift device add NAME registers one",
                &["NAME", "RUNNING", "STATE", "LAST SEEN", "TAGS"],
                |d| {
                    vec![
                        field(d, "name"),
                        running(d),
                        standing(d),
                        age(&d["status"]["last_seen"]),
                        strings(&d["tags"]).join(","),
                    ]
                },
            )?;
        }
        DeviceCommand::Show { name, json, server } => {
            let device: Value = Api::new(&server)?.get(&format!("/api/v1/devices/{name}"))?;
            if json {
                print_json(&device)?;
            } else {
                let s = &device["status"];
                outln!("name          {}", field(&device, "name"));
                outln!("tags          {}", device["tags"]);
                outln!("running       {}", running(&device));
                outln!("sha256        {}", field(s, "sha256"));
                outln!("security ver  {}", field(s, "security_version"));
                outln!("chip id       {}", field(s, "chip_id"));
                outln!(
                    "engine state  {} (boot count {})",
                    field(s, "state"),
                    field(s, "boot_count")
                );
                outln!("last seen     {}", age(&s["last_seen"]));
                if !device["revoked_at"].is_null() {
                    outln!(
                        "revoked       {} (its token is refused; rotate-token takes it back)",
                        age(&device["revoked_at"])
                    );
                }
                if !device["deleted_at"].is_null() {
                    outln!("deleted       {}", age(&device["deleted_at"]));
                }
                match device["assignment"].as_object() {
                    Some(a) => outln!(
                        "assignment    deployment {} ({}): {}",
                        a.get("deployment_id").unwrap_or(&Value::Null),
                        a.get("version").and_then(Value::as_str).unwrap_or("-"),
                        a.get("state").and_then(Value::as_str).unwrap_or("-"),
                    ),
                    None => outln!("assignment    none"),
                }
            }
        }
        DeviceCommand::RotateToken { name, json, server } => {
            let answer: Value = Api::new(&server)?
                .post(&format!("/api/v1/devices/{name}/rotate-token"), &json!({}))?;
            if json {
                print_json(&answer)?;
            } else {
                outln!("device {name} has a new token (shown once); the old one no longer works:");
                outln!("{}", field(&answer, "token"));
            }
        }
        DeviceCommand::Revoke { name, json, server } => {
            let answer: Value =
                Api::new(&server)?.post(&format!("/api/v1/devices/{name}/revoke"), &json!({}))?;
            if json {
                print_json(&answer)?;
            } else {
                outln!(
                    "device {name} revoked: its token no longer works{}",
                    cancelled(&answer)
                );
            }
        }
        DeviceCommand::Delete { name, json, server } => {
            let answer = Api::new(&server)?.delete(&format!("/api/v1/devices/{name}"))?;
            if json {
                print_json(&answer)?;
            } else {
                let kept = field(&answer["device"], "name");
                outln!(
                    "device {name} deleted: its token no longer works and its name is free{}",
                    cancelled(&answer)
                );
                outln!("its history stays readable: airlift device events {kept}");
            }
        }
        DeviceCommand::Events {
            name,
            limit,
            json,
            server,
        } => {
            let events: Value =
                Api::new(&server)?.get(&format!("/api/v1/devices/{name}/events?limit={limit}"))?;
            if json {
                print_json(&events)?;
            } else {
                let list = events.as_array().map(Vec::as_slice).unwrap_or_default();
                if list.is_empty() {
                    eprintln!("no events from {name} yet");
                    return Ok(ExitCode::SUCCESS);
                }
                let mut table = Table::new(&["WHEN", "DEPLOYMENT", "EVENT", "REASON", "DETAIL"]);
                for e in list {
                    table.row(vec![
                        age(&e["at"]),
                        field(e, "deployment_id"),
                        field(e, "kind"),
                        field(e, "reason"),
                        field(e, "detail"),
                    ]);
                }
                table.print();
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
