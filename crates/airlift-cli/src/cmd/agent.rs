//! `airlift device run`: one simulated device over a flash file, with its
//! local web page.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use airlift_agent::device::{Agent, AgentConfig, Behaviours, Happening};
use airlift_agent::flash::FileFlash;
use airlift_agent::transport::http_client_with;
use airlift_agent::{provision, web};
use airlift_client::page::PagePassword;
use anyhow::Context;
use clap::Args;

use super::client::or_env;

/// `airlift device run` options.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The flash file (`airlift flash create`).
    #[arg(long)]
    pub flash: PathBuf,
    /// Server base URL [env: AIRLIFT_SERVER] [default: the one provisioned
    /// in the flash file]; without one the device runs offline (local page only).
    #[arg(long)]
    pub server: Option<String>,
    /// The device's token (`airlift device add`) [env: AIRLIFT_DEVICE_TOKEN]
    #[arg(long)]
    pub token: Option<String>,
    /// Serve the device page and API on this address (e.g. 127.0.0.1:8081).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Password of the device page [env: AIRLIFT_DEVICE_PASSWORD] [default:
    /// the one provisioned in the flash file, else generated and printed]
    #[arg(long)]
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
    /// Name in log lines [default: as provisioned, else the flash file's
    /// name, until the server says its own].
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub trust: super::client::TrustArgs,
    /// Refuse a plain http:// server (also provisioned in the flash's
    /// settings: `airlift flash create --require-https`).
    #[arg(long)]
    pub require_https: bool,
    /// Check in at the poll interval only: without it a check-in waits up
    /// to 25 s for an update (a long poll), so a deployment reaches the
    /// device at once.
    #[arg(long)]
    pub no_long_poll: bool,
}

fn secs(s: f64, what: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("invalid --{what} {s}"))
}

/// Runs `airlift device run` until killed.
pub fn run(mut args: RunArgs) -> anyhow::Result<ExitCode> {
    // Read here, not by clap: see `client::ServerArgs`.
    args.server = or_env(args.server.as_ref(), "AIRLIFT_SERVER");
    args.token = or_env(args.token.as_ref(), "AIRLIFT_DEVICE_TOKEN");
    args.password = or_env(args.password.as_ref(), "AIRLIFT_DEVICE_PASSWORD");
    let mut flash = FileFlash::open(&args.flash)
        .with_context(|| format!("cannot open flash file {}", args.flash.display()))?;
    // What `airlift flash provision` (or `flash create`) wrote, as the
    // firmware reads it at boot; the options take precedence.
    let provisioned = provision::read_settings(&mut flash)
        .with_context(|| format!("{} is not a usable flash image", args.flash.display()))?
        .unwrap_or_default();
    let given = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let (server, token) = match &args.server {
        Some(server) => (Some(server.clone()), args.token.clone()),
        None => (given(&provisioned.server), given(&provisioned.token)),
    };
    if server.is_some() && token.is_none() {
        anyhow::bail!(
            "--server needs the device's --token (airlift device add NAME prints it; or AIRLIFT_DEVICE_TOKEN)"
        );
    }
    let given_trust = args.trust.trust()?;
    let trust = airlift_agent::tls::Trust {
        pin: given_trust.pin.or(provisioned.tls_pin),
        ca_certs: given_trust.ca_certs,
        require_https: args.require_https || provisioned.require_https,
    };
    if let Some(refused) = server
        .as_deref()
        .and_then(airlift_agent::tls::plain_http_refused)
        .filter(|_| trust.require_https)
    {
        eprintln!("airlift: {refused}");
    }
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
        require_https: trust.require_https,
        long_poll: !args.no_long_poll,
        ..AgentConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let http = http_client_with(&trust)?;
        // Downloads on their own connections, as esp_https_ota does.
        let config = AgentConfig {
            downloads: Some(http_client_with(&trust)?),
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
            let page_log = name.clone();
            let router = web::router_with_log(
                agent.control(),
                password,
                Some(Arc::new(move |line: &str| {
                    eprintln!("airlift-agent[{page_log}]: {line}");
                })),
            );
            eprintln!("airlift: device page at http://{address}{shown}");
            tokio::spawn(async move {
                if let Err(e) = web::serve(listener, router).await {
                    eprintln!("airlift: device page stopped: {e}");
                }
            });
        }
        match &server {
            Some(server) => eprintln!(
                "airlift: device {name} runs from {}, checking in with {server} (Ctrl-C stops it)",
                args.flash.display()
            ),
            None => eprintln!(
                "airlift: device {name} runs from {} offline: no --server and none provisioned \
                 (Ctrl-C stops it)",
                args.flash.display()
            ),
        }
        // Handlers for SIGINT and SIGTERM, installed now: a shell starting
        // the device in the background (`&`) has it ignore SIGINT otherwise.
        let stop = airlift_server::shutdown_signal();
        tokio::select! {
            result = agent.run() => result?,
            () = stop => eprintln!(
                "airlift: device {name} stopped; {} keeps its state (as a power cut would)",
                args.flash.display()
            ),
        }
        Ok(ExitCode::SUCCESS)
    })
}
