//! `airlift device run`: one simulated device over a flash file, with its
//! local web page.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use airlift_agent::device::{Agent, AgentConfig, Behaviours, Happening, http_client};
use airlift_agent::flash::FileFlash;
use airlift_agent::{provision, web};
use airlift_client::page::PagePassword;
use anyhow::Context;
use clap::Args;

/// `airlift device run` options.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The flash file (`airlift flash create`).
    #[arg(long)]
    pub flash: PathBuf,
    /// Server base URL [default: the one provisioned in the flash file];
    /// without one the device runs offline (local page only).
    #[arg(long, env = "AIRLIFT_SERVER")]
    pub server: Option<String>,
    /// The device's token (`airlift device add`).
    #[arg(long, env = "AIRLIFT_DEVICE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Serve the device page and API on this address (e.g. 127.0.0.1:8081).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Password of the device page [default: the one provisioned in the
    /// flash file, else generated and printed].
    #[arg(long, env = "AIRLIFT_DEVICE_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Simulated firmware behaviour: VERSION=healthy|crash|hang (repeat).
    #[arg(long = "behave", value_parser = Behaviours::parse_rule)]
    pub behave: Vec<(String, airlift_agent::device::Behaviour)>,
    /// Seconds between check-ins [default: what the server says].
    #[arg(long)]
    pub poll: Option<f64>,
    /// Boots an unconfirmed image gets before rollback [default: as
    /// provisioned in the flash file, else 3].
    #[arg(long)]
    pub max_attempts: Option<u8>,
    /// Seconds a healthy image takes before confirming.
    #[arg(long, default_value_t = 0.2)]
    pub health_check: f64,
    /// Watchdog timeout in seconds (a hanging image is reset after it).
    #[arg(long, default_value_t = 1.0)]
    pub watchdog: f64,
    /// The ESP-IDF bootloader the device boots with: built without app
    /// rollback (the esp-rs default), or with it (it rewrites otadata).
    #[arg(long, value_enum, default_value_t = super::sim::Bootloader::Plain)]
    pub bootloader: super::sim::Bootloader,
    /// Name in log lines [default: as provisioned, else the flash file's name].
    #[arg(long)]
    pub name: Option<String>,
}

fn secs(s: f64, what: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("invalid --{what} {s}"))
}

/// Runs `airlift device run` until killed.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    if args.server.is_some() && args.token.is_none() {
        anyhow::bail!(
            "--server needs the device's --token (airlift device add NAME prints it; or AIRLIFT_DEVICE_TOKEN)"
        );
    }
    let mut flash = FileFlash::open(&args.flash)
        .with_context(|| format!("cannot open flash file {}", args.flash.display()))?;
    // What `airlift flash provision` wrote, as the firmware reads it at boot;
    // the flags take precedence.
    let provisioned = provision::read_settings(&mut flash)
        .with_context(|| format!("cannot read the settings in {}", args.flash.display()))?
        .unwrap_or_default();
    let given = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let (server, token) = match &args.server {
        Some(server) => (Some(server.clone()), args.token.clone()),
        None => (given(&provisioned.server), given(&provisioned.token)),
    };
    let name = args
        .name
        .clone()
        .or_else(|| given(&provisioned.name))
        .unwrap_or_else(|| {
            args.flash
                .file_stem()
                .map_or("device".into(), |s| s.to_string_lossy().into_owned())
        });
    let max_attempts = args
        .max_attempts
        .or((provisioned.max_attempts > 0).then_some(provisioned.max_attempts))
        .unwrap_or(airlift_engine::DEFAULT_MAX_ATTEMPTS);
    let config = AgentConfig {
        name: name.clone(),
        server: server.clone(),
        token,
        poll: args.poll.map(|p| secs(p, "poll")).transpose()?,
        behaviours: Behaviours(args.behave.clone()),
        max_attempts,
        health_check: secs(args.health_check, "health-check")?,
        watchdog: secs(args.watchdog, "watchdog")?,
        bootloader: args.bootloader.into(),
        ..AgentConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let http = http_client()?;
        // Downloads on their own connections, as esp_https_ota does.
        let config = AgentConfig {
            downloads: Some(http_client()?),
            ..config
        };
        let log_name = name.clone();
        let mut agent = Agent::new(flash, config, http)
            .with_context(|| format!("{} is not a usable flash image", args.flash.display()))?
            .observe(Arc::new(move |_, what| {
                if let Happening::Log(line) = what {
                    eprintln!("airlift-agent[{log_name}]: {line}");
                }
            }));
        if let Some(listen) = args.listen {
            let (password, shown) = match (&args.password, provisioned.page_password) {
                (Some(p), _) => (PagePassword::new(p), String::new()),
                (None, Some(hash)) => (
                    PagePassword::from_sha256(hash),
                    " (password: as provisioned)".to_owned(),
                ),
                (None, None) => {
                    let p = web::generate_password().context("no system randomness")?;
                    (PagePassword::new(&p), format!(" (password: {p})"))
                }
            };
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            let address = listener.local_addr().unwrap_or(listen);
            let router = web::router_hashed(agent.control(), password);
            eprintln!("airlift: device page at http://{address}{shown}");
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, router).await {
                    eprintln!("airlift: device page stopped: {e}");
                }
            });
        }
        if server.is_none() {
            eprintln!("airlift: no --server and none provisioned: running offline");
        }
        agent.run().await?;
        Ok(ExitCode::SUCCESS)
    })
}
