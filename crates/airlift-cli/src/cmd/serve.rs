//! `airlift serve`: the update server.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use airlift_server::{Config, Server};
use anyhow::Context;
use clap::Args;

/// `airlift serve` options. Precedence: flags, then `AIRLIFT_*` variables,
/// then the config file, then defaults.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Data directory (database, artifacts, keys) [default: ./airlift-data].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// TOML configuration file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// The dashboard's address for a server listening on `address`: a browser
/// cannot open the unspecified address, so that becomes `localhost`.
pub fn dashboard_url(address: SocketAddr) -> String {
    if address.ip().is_unspecified() {
        format!("http://localhost:{}/", address.port())
    } else {
        format!("http://{address}/")
    }
}

/// Runs `airlift serve`.
pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut config = Config::load(args.config.as_deref(), std::env::vars())?;
    if let Some(data) = args.data {
        config.data_dir = data;
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if args.print_config {
        out!("{}", config.to_toml());
        return Ok(ExitCode::SUCCESS);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AIRLIFT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal: a log file, a pipe or
        // journald gets plain text (and NO_COLOR is honoured).
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listen = config.listen;
        let data_dir = config.data_dir.clone();
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let server = Server::open(config).await?;
        let shutdown = airlift_server::shutdown_signal();
        if let Some(token) = &server.initial_admin_token {
            outln!(
                "admin token (shown once; also in {}): {token}",
                data_dir.join("admin.token").display()
            );
        }
        let address = listener.local_addr().unwrap_or(listen);
        tracing::info!(%address, data = %data_dir.display(), "airlift server listening");
        eprintln!(
            "airlift: serving http://{address} from {}",
            data_dir.display()
        );
        eprintln!(
            "airlift: dashboard at {} (sign in with the admin token in {})",
            dashboard_url(address),
            data_dir.join("admin.token").display()
        );
        server.run(listener, shutdown).await?;
        eprintln!("airlift: stopped");
        Ok(ExitCode::SUCCESS)
    })
}
