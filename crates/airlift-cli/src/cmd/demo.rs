//! `airlift demo`: a server on a temporary data directory, a handful of
//! simulated devices, a good release and one that crashes on boot,
//! narrated. The quickest way to see Airlift update, fail and roll back.
//! Ctrl-C ends it cleanly at any point; the temporary directory goes with
//! it (one given with `--data` stays).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use airlift_agent::device::{AgentConfig, Behaviour, Behaviours, http_client};
use airlift_agent::fleet::{Enrolment, Faults, Stats, deploy, enrol_all, spawn_fleet, watch};
use airlift_agent::provision;
use airlift_engine::sim::test_image;
use airlift_format::manifest::parse_public_key_file;
use airlift_format::partition::AIRLIFT_DEFAULT;
use airlift_server::{Config, Server};
use anyhow::{Context, bail};
use clap::Args;
use serde_json::Value;

/// `airlift demo` options.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Number of simulated devices.
    #[arg(long, default_value_t = 5)]
    pub devices: usize,
    /// Address of the demo server [default: a free port on 127.0.0.1].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Data directory [default: a new temporary directory].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Exit when the story is told instead of serving until Ctrl-C.
    #[arg(long)]
    pub exit: bool,
}

/// Uploads a release image; returns its id.
pub(crate) async fn upload(
    http: &reqwest::Client,
    base: &str,
    admin: &str,
    image: Vec<u8>,
) -> anyhow::Result<String> {
    let response = http
        .post(format!("{base}/api/v1/releases"))
        .bearer_auth(admin)
        .body(image)
        .send()
        .await
        .context("cannot upload the release")?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or_default();
    match body["id"].as_i64() {
        Some(id) if status.is_success() => Ok(id.to_string()),
        _ => bail!("upload refused ({status}): {body}"),
    }
}

/// How a user runs this binary: `airlift` when that is what `PATH` finds,
/// else this file's path (a `cargo run` user has no `airlift` on `PATH`).
pub(crate) fn invocation() -> String {
    let me = std::env::current_exe().and_then(std::fs::canonicalize).ok();
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("airlift"))
            .find(|candidate| candidate.is_file())
            .and_then(|found| std::fs::canonicalize(found).ok())
    });
    match me {
        Some(me) if on_path.as_ref() != Some(&me) => me.display().to_string(),
        _ => "airlift".to_owned(),
    }
}

/// Why the story stopped before its end.
enum Stopped {
    /// Ctrl-C (or SIGTERM).
    Interrupted,
    /// Something failed.
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Stopped {
    fn from(err: anyhow::Error) -> Stopped {
        Stopped::Failed(err)
    }
}

/// Runs `airlift demo`.
pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let (data, temporary) = match &args.data {
        Some(d) => (d.clone(), false),
        None => {
            let mut r = [0u8; 4];
            getrandom::fill(&mut r).map_err(|e| anyhow::anyhow!("no system randomness: {e}"))?;
            let dir = std::env::temp_dir().join(format!("airlift-demo-{}", airlift_agent::hex(&r)));
            (dir, true)
        }
    };
    let devices = args.devices.max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        // From the first moment: Ctrl-C ends the demo cleanly at any point.
        let stop = airlift_server::shutdown_signal();
        tokio::pin!(stop);
        let listen = args.listen.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let address = listener.local_addr()?;
        let base = format!("http://{address}");
        let config = Config {
            data_dir: data.clone(),
            listen: address,
            poll_seconds: 1,
            ..Config::default()
        };
        let server = Server::open(config).await?;
        let (halt, halted) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.run(listener, async move {
            let _ = halted.await;
        }));
        let mut fleet = tokio::task::JoinSet::new();
        let told = tokio::select! {
            told = tell(&args, &data, address, &base, devices, &mut fleet) => told,
            () = &mut stop => Err(Stopped::Interrupted),
        };
        let told = match told {
            Ok(()) if !args.exit => {
                outln!("   The devices keep running; Ctrl-C stops the demo.");
                (&mut stop).await;
                Ok(())
            }
            Ok(()) => {
                outln!("   The demo stops now (--exit); without it, it runs until Ctrl-C.");
                Ok(())
            }
            other => other,
        };
        fleet.abort_all();
        while fleet.join_next().await.is_some() {}
        let _ = halt.send(());
        serving.await.context("server task")??;
        anyhow::Ok(told)
    });
    if temporary {
        // Whatever happened: the demo's data was for the demo only.
        if let Err(err) = std::fs::remove_dir_all(&data)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("airlift: cannot remove {}: {err}", data.display());
        }
    }
    match result? {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(Stopped::Interrupted) => {
            eprintln!("airlift: demo interrupted");
            Ok(ExitCode::from(130))
        }
        Err(Stopped::Failed(err)) => Err(err),
    }
}

/// Follows the fleet until `done`; each progress line counts this step's
/// events only.
async fn until(
    stats: &Stats,
    done: impl FnMut(&Stats) -> bool,
    failure: &str,
) -> Result<(), Stopped> {
    let before = stats.summary();
    let show = |s: &airlift_agent::fleet::Summary| outln!("   {}", s.since(&before).line());
    let limit = Some(Duration::from_secs(120));
    if watch(stats, Duration::from_millis(500), limit, done, show).await {
        Ok(())
    } else {
        Err(anyhow::anyhow!("{failure}").into())
    }
}

/// The story: devices boot, a good release reaches them all, a crashing
/// one rolls back everywhere; then where to look.
async fn tell(
    args: &DemoArgs,
    data: &std::path::Path,
    address: SocketAddr,
    base: &str,
    devices: usize,
    fleet: &mut tokio::task::JoinSet<()>,
) -> Result<(), Stopped> {
    let admin = std::fs::read_to_string(data.join("admin.token"))
        .context("the demo server wrote no admin token")?
        .trim()
        .to_owned();
    let kept = if args.data.is_some() {
        "kept"
    } else {
        "removed when the demo stops"
    };
    outln!(
        "1. An Airlift server is running at {base} (data in {}, {kept}).",
        data.display()
    );

    let key_text = std::fs::read_to_string(data.join("signing.pub")).context("no signing key")?;
    let key = parse_public_key_file(&key_text).context("the signing key")?;
    let base_image: Arc<[u8]> =
        provision::flash_image(&AIRLIFT_DEFAULT, &test_image("1.0.0", 0, 48_000), &[key])
            .context("cannot lay out the devices' flash")?
            .into();
    let http = http_client().context("cannot build the HTTP client")?;
    let names: Vec<String> = (1..=devices).map(|i| format!("demo-{i}")).collect();
    let tags = vec!["demo".to_owned()];
    let tokens = enrol_all(
        &http,
        base,
        &Enrolment::Admin(admin.clone()),
        &names,
        &tags,
        8,
    )
    .await
    .context("cannot add the devices")?;
    let template = AgentConfig {
        server: Some(base.to_owned()),
        poll: Some(Duration::from_millis(500)),
        behaviours: Behaviours(vec![("1.2.0".into(), Behaviour::Crash)]),
        health_check: Duration::from_millis(300),
        crash_after: Duration::from_millis(200),
        jitter: true,
        ..AgentConfig::default()
    };
    let stats = Arc::new(Stats::new(devices));
    *fleet = spawn_fleet(
        names.into_iter().zip(tokens).collect(),
        base_image,
        &template,
        &Faults::default(),
        &http,
        &stats,
    )
    .context("cannot start the devices")?;
    outln!(
        "2. {devices} simulated ESP32s (tag demo) boot firmware 1.0.0 from their own flash: the same engine,\n   protocol and bootloader rules as a real board; each trusts the server's signing key."
    );
    until(
        &stats,
        |s| s.confirmed_on("1.0.0") == devices,
        "the devices did not boot",
    )
    .await?;

    let good = upload(&http, base, &admin, test_image("1.1.0", 0, 52_000)).await?;
    let (good_deployment, _) = deploy(&http, base, &admin, &good, "tag:demo")
        .await
        .context("cannot deploy 1.1.0")?;
    outln!(
        "3. Release 1.1.0 uploaded (the server checked the image and signed its manifest) and deployed to tag:demo.\n   Each device downloads it into the inactive slot, verifies it, activates it, reboots, runs it on trial\n   and confirms it after a health check:"
    );
    until(
        &stats,
        |s| s.confirmed_on("1.1.0") == devices,
        "the good release did not reach every device",
    )
    .await?;
    outln!("   All {devices} devices confirmed 1.1.0 (deployment {good_deployment}).");

    let bad = upload(&http, base, &admin, test_image("1.2.0", 0, 52_000)).await?;
    let before = stats.summary();
    let (bad_deployment, _) = deploy(&http, base, &admin, &bad, "tag:demo")
        .await
        .context("cannot deploy 1.2.0")?;
    outln!(
        "4. Release 1.2.0 crashes at boot. Deployed to tag:demo: each device installs it, boots it, crashes\n   before confirming; after 3 failed boots the boot guard selects 1.1.0 again by itself:"
    );
    let devices_u64 = devices as u64;
    let rolled_back = |s: &Stats| s.summary().since(&before).rollbacks >= devices_u64;
    until(
        &stats,
        rolled_back,
        "the crashing release did not roll back everywhere",
    )
    .await?;
    let detail: Value = http
        .get(format!("{base}/api/v1/deployments/{bad_deployment}"))
        .bearer_auth(&admin)
        .send()
        .await
        .context("cannot read the deployment")?
        .json()
        .await
        .context("cannot read the deployment")?;
    outln!(
        "   Deployment {bad_deployment}: {} of {devices} devices rolled back (reason boot_failed); every device runs {:?}.",
        detail["counts"]["rolled_back"],
        stats.summary().versions
    );
    let token_file = data.join("admin.token");
    outln!(
        "5. See it all in the dashboard: {}  (sign in with the admin token in {})\n   or from the command line: AIRLIFT_SERVER={base} AIRLIFT_TOKEN=$(cat {}) {} device list",
        super::serve::dashboard_url(address),
        token_file.display(),
        token_file.display(),
        invocation(),
    );
    Ok(())
}
