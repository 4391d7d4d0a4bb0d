//! `airlift deploy RELEASE --to TARGET` and `airlift deployment list|show|cancel`.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::client::{Api, ServerArgs, age, field, print_json};

/// `airlift deploy` options.
#[derive(Args, Debug)]
pub struct DeployArgs {
    /// The release: its id or SHA-256.
    pub release: String,
    /// Who gets it: `device:NAME`, `devices:A,B,...`, `tag:T` or `all`.
    #[arg(long)]
    pub to: String,
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

fn print_detail(d: &Value) {
    let r = &d["release"];
    outln!(
        "deployment {}: {} {} -> {} ({}, {})",
        field(d, "id"),
        field(r, "project"),
        field(r, "version"),
        field(d, "target"),
        field(d, "state"),
        age(&d["created_at"]),
    );
    let counts: Vec<String> = d["counts"]
        .as_object()
        .map(|c| {
            c.iter()
                .filter(|(_, n)| n.as_i64() != Some(0))
                .map(|(s, n)| format!("{s} {n}"))
                .collect()
        })
        .unwrap_or_default();
    outln!(
        "  {}",
        if counts.is_empty() {
            "no devices".to_owned()
        } else {
            counts.join(", ")
        }
    );
    for a in d["assignments"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let reason = a["reason"]
            .as_str()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        outln!(
            "  {:<24} {}{}",
            field(a, "device_name"),
            field(a, "state"),
            reason
        );
    }
}

/// Runs `airlift deploy`.
pub fn run_deploy(args: DeployArgs) -> anyhow::Result<ExitCode> {
    let detail: Value = Api::new(&args.server)?.post(
        "/api/v1/deployments",
        &json!({"release": args.release, "target": args.to}),
    )?;
    if args.json {
        print_json(&detail)?;
    } else {
        print_detail(&detail);
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs an `airlift deployment` subcommand.
pub fn run(command: DeploymentCommand) -> anyhow::Result<ExitCode> {
    match command {
        DeploymentCommand::List { json, server } => {
            let list: Value = Api::new(&server)?.get("/api/v1/deployments")?;
            if json {
                print_json(&list)?;
            } else {
                for d in list.as_array().map(Vec::as_slice).unwrap_or_default() {
                    outln!(
                        "{:>4}  release {:<4} {:<28} {:<10} {}",
                        field(d, "id"),
                        field(d, "release_id"),
                        field(d, "target"),
                        field(d, "state"),
                        age(&d["created_at"]),
                    );
                }
            }
        }
        DeploymentCommand::Show { id, json, server } => {
            let detail: Value = Api::new(&server)?.get(&format!("/api/v1/deployments/{id}"))?;
            if json {
                print_json(&detail)?;
            } else {
                print_detail(&detail);
            }
        }
        DeploymentCommand::Cancel { id, json, server } => {
            let detail: Value =
                Api::new(&server)?.post(&format!("/api/v1/deployments/{id}/cancel"), &json!({}))?;
            if json {
                print_json(&detail)?;
            } else {
                print_detail(&detail);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
