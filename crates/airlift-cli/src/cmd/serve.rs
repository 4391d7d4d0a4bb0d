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
    /// A PostgreSQL database shared by every instance
    /// (postgres://user:password@host/db) [default: SQLite in the data directory].
    #[arg(long)]
    pub database_url: Option<String>,
    /// Where artifacts live: s3://bucket/prefix on an S3-compatible store
    /// (credentials from AWS_* variables) [default: the data directory].
    #[arg(long)]
    pub artifacts: Option<String>,
    /// The S3-compatible store's endpoint (MinIO, R2, moto).
    #[arg(long)]
    pub s3_endpoint: Option<String>,
    /// TOML configuration file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Serve HTTPS with this PEM certificate chain, the server's first
    /// (`airlift keys tls` makes one for a lab) [env: AIRLIFT_TLS_CERT].
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's PEM private key [env: AIRLIFT_TLS_KEY].
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// The dashboard's address for a server listening on `address`: a browser
/// cannot open the unspecified address, so that becomes `localhost`.
pub fn dashboard_url(address: SocketAddr) -> String {
    dashboard_url_of("http", address)
}

fn dashboard_url_of(scheme: &str, address: SocketAddr) -> String {
    if address.ip().is_unspecified() {
        format!("{scheme}://localhost:{}/", address.port())
    } else {
        format!("{scheme}://{address}/")
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
    if let Some(url) = args.database_url {
        config.database_url = Some(airlift_server::DatabaseUrl::new(url));
    }
    if let Some(artifacts) = args.artifacts {
        config.artifacts = Some(artifacts);
    }
    if let Some(endpoint) = args.s3_endpoint {
        config.s3_endpoint = Some(endpoint);
    }
    if let Some(cert) = args.tls_cert {
        config.tls_cert = Some(cert);
    }
    if let Some(key) = args.tls_key {
        config.tls_key = Some(key);
    }
    config.validate()?;
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
        let instance = server.state().instance.clone();
        let scheme = if server.is_tls() { "https" } else { "http" };
        tracing::info!(%address, data = %data_dir.display(), scheme, %instance, "airlift server listening");
        eprintln!(
            "airlift: serving {scheme}://{address} from {} as {instance}",
            data_dir.display()
        );
        eprintln!(
            "airlift: dashboard at {} (sign in with the admin token in {})",
            dashboard_url_of(scheme, address),
            data_dir.join("admin.token").display()
        );
        server.run(listener, shutdown).await?;
        eprintln!("airlift: stopped");
        Ok(ExitCode::SUCCESS)
    })
}
