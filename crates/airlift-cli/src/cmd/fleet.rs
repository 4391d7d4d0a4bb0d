//! `airlift fleet sim`: thousands of simulated devices in one process
//! against a real server.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use airlift_agent::device::{AgentConfig, Behaviour, Behaviours};
use airlift_agent::fleet::{
    Enrolment, Faults, Link, Stats, deploy, enrol_all, plain_downloads, spawn_fleet, watch,
};
use airlift_agent::provision;
use airlift_agent::transport::http_client_with;
use airlift_format::manifest::parse_public_key_file;
use airlift_format::partition::AIRLIFT_DEFAULT;
use anyhow::{Context, bail};
use clap::{Args, Subcommand};

/// `airlift fleet` subcommands.
#[derive(Subcommand, Debug)]
pub enum FleetCommand {
    /// Simulate N devices (same engine, same protocol) against a server.
    Sim(Box<SimArgs>),
    /// Write a small synthetic ESP32 app image (for simulations and demos).
    Firmware {
        /// Output file.
        output: PathBuf,
        /// Version string in the app descriptor (what `--behave` matches).
        #[arg(long)]
        version: String,
        /// Bytes of code (the image is slightly larger).
        #[arg(long, default_value_t = 65_536)]
        size: usize,
        /// Security version in the app descriptor.
        #[arg(long, default_value_t = 0)]
        security_version: u32,
    },
}

/// `airlift fleet sim` options.
#[derive(Args, Debug)]
pub struct SimArgs {
    /// Number of devices.
    #[arg(long)]
    pub devices: usize,
    /// Server base URL.
    #[arg(long, env = "AIRLIFT_SERVER")]
    pub server: String,
    /// Tag every device gets (repeat); deploy to `tag:T` to reach them.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Firmware every device starts with (in ota_0).
    #[arg(long)]
    pub firmware: PathBuf,
    /// Public key the devices trust (the server's DIR/signing.pub); repeat.
    #[arg(long = "trust", required = true)]
    pub trust: Vec<PathBuf>,
    /// Enrol with the fleet enrolment secret instead of the admin token.
    #[arg(long, env = "AIRLIFT_ENROLLMENT_SECRET", hide_env_values = true)]
    pub enrollment_secret: Option<String>,
    /// Admin token, to add the devices (when no enrolment secret is given).
    #[arg(long, env = "AIRLIFT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Device names are PREFIX-00001 ... [default: sim-<random>].
    #[arg(long)]
    pub prefix: Option<String>,
    /// Seconds between check-ins.
    #[arg(long, default_value_t = 5.0)]
    pub poll: f64,
    /// Probability per power-on of a power cut at a random later flash operation.
    #[arg(long, default_value_t = 0.0)]
    pub power_cut_rate: f64,
    /// Probability that a download connection drops part way.
    #[arg(long, default_value_t = 0.0)]
    pub drop_rate: f64,
    /// Simulated firmware behaviour: VERSION=healthy|crash|hang, of every
    /// device or, with @SHARE (2.0.0=crash@0.3), of that share of them (repeat).
    #[arg(long = "behave", value_parser = parse_behave)]
    pub behave: Vec<(String, Behaviour, Option<f64>)>,
    /// Share of the devices (0 to 1) that go silent for good once they
    /// reported an update installed.
    #[arg(long, default_value_t = 0.0)]
    pub silence_rate: f64,
    /// Seconds a healthy image takes before confirming.
    #[arg(long, default_value_t = 0.2)]
    pub health_check: f64,
    /// Watchdog timeout in seconds.
    #[arg(long, default_value_t = 2.0)]
    pub watchdog: f64,
    /// The ESP-IDF bootloader the devices boot with: built without app
    /// rollback (the esp-rs default), or with it (it rewrites otadata).
    #[arg(long, value_enum, default_value_t = super::sim::Bootloader::Plain)]
    pub bootloader: super::sim::Bootloader,
    /// Most HTTP requests in flight at once (the fleet's uplink).
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Model the server's network link: every downloaded byte (the
    /// baselines' too) takes its turn on one link of this many Mbit/s
    /// (10000 for a 10 Gbit/s card) [default: loopback, unlimited].
    #[arg(long)]
    pub link_mbps: Option<f64>,
    /// Stop when every device runs VERSION confirmed or ended its update
    /// (rolled back, failed or went silent); exit 1 if --duration passes first.
    #[arg(long)]
    pub until_version: Option<String>,
    /// Stop after this many seconds [default: run until Ctrl-C or --until-version].
    #[arg(long)]
    pub duration: Option<f64>,
    /// After enrolment, deploy this release id to `tag:<first --tag>`
    /// (needs the admin token); the clock starts then.
    #[arg(long, requires = "until_version")]
    pub deploy: Option<String>,
    /// After the fleet settled, measure the baseline: every device downloads
    /// the deployed artifact once, plainly, with the same connection limit
    /// (the best of three runs); print both times and their ratio. Needs
    /// --deploy.
    #[arg(long, requires = "deploy")]
    pub baseline: bool,
    /// After the fleet settled, keep it polling this many seconds and
    /// report the check-ins answered (and, with --server-pid, the server's
    /// CPU time per check-in).
    #[arg(long)]
    pub linger: Option<f64>,
    /// Process id of a local server, to measure its CPU time (Linux /proc).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Every device checks in at once when it starts, instead of at a random
    /// point of its first poll interval (benchmarks: the fleet starts like the
    /// baseline's downloads).
    #[arg(long)]
    pub no_jitter: bool,
    /// Print the final summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// How the devices trust an https:// server.
    #[command(flatten)]
    pub tls: super::client::TrustArgs,
}

/// `VERSION=BEHAVIOUR[@SHARE]`.
pub fn parse_behave(rule: &str) -> Result<(String, Behaviour, Option<f64>), String> {
    let (rule, share) = match rule.rsplit_once('@') {
        Some((rule, share)) => {
            let share: f64 = share
                .parse()
                .ok()
                .filter(|s| (0.0..=1.0).contains(s))
                .ok_or_else(|| format!("share {share:?} is not a number from 0 to 1"))?;
            (rule, Some(share))
        }
        None => (rule, None),
    };
    let (version, behaviour) = Behaviours::parse_rule(rule)?;
    Ok((version, behaviour, share))
}

/// The `--behave` rules that apply to every device, and the faults of shares.
pub fn split_behaviours(
    rules: &[(String, Behaviour, Option<f64>)],
    silence: f64,
) -> anyhow::Result<(Behaviours, Faults)> {
    if !(0.0..=1.0).contains(&silence) {
        bail!("--silence-rate must be a share from 0 to 1, not {silence}");
    }
    let every = rules
        .iter()
        .filter(|(_, _, share)| share.is_none())
        .map(|(v, b, _)| (v.clone(), *b))
        .collect();
    let shares = rules
        .iter()
        .filter_map(|(v, b, share)| share.map(|s| (v.clone(), *b, s)))
        .collect();
    Ok((
        Behaviours(every),
        Faults {
            behaviours: shares,
            silence,
        },
    ))
}

/// User plus system CPU seconds of process `pid` (Linux; 100 clock ticks per second).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

fn secs(s: f64, what: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("invalid --{what} {s}"))
}

/// Runs an `airlift fleet` subcommand.
pub fn run(command: FleetCommand) -> anyhow::Result<ExitCode> {
    match command {
        FleetCommand::Sim(args) => sim(*args),
        FleetCommand::Firmware {
            output,
            version,
            size,
            security_version,
        } => {
            let image = airlift_engine::sim::test_image(&version, security_version, size);
            std::fs::write(&output, &image)
                .with_context(|| format!("cannot write {}", output.display()))?;
            outln!(
                "wrote {} ({} bytes, version {version})",
                output.display(),
                image.len()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn sim(args: SimArgs) -> anyhow::Result<ExitCode> {
    if args.devices == 0 {
        bail!("--devices must be at least 1");
    }
    let enrolment = match (&args.enrollment_secret, &args.token) {
        (Some(secret), _) => Enrolment::Secret(secret.clone()),
        (None, Some(token)) => Enrolment::Admin(token.clone()),
        (None, None) => bail!(
            "no way to enrol devices: pass --enrollment-secret or an admin --token (AIRLIFT_TOKEN)"
        ),
    };
    let firmware = std::fs::read(&args.firmware)
        .with_context(|| format!("cannot read {}", args.firmware.display()))?;
    let mut keys = Vec::new();
    for path in &args.trust {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        keys.push(
            parse_public_key_file(&text)
                .with_context(|| format!("{} is not an airlift public key file", path.display()))?,
        );
    }
    let base: Arc<[u8]> = provision::flash_image(&AIRLIFT_DEFAULT, &firmware, &keys)?.into();
    let prefix = match &args.prefix {
        Some(p) => p.clone(),
        None => {
            let mut r = [0u8; 3];
            getrandom::fill(&mut r).map_err(|e| anyhow::anyhow!("no system randomness: {e}"))?;
            format!("sim-{}", airlift_agent::hex(&r))
        }
    };
    if args.link_mbps.is_some_and(|m| !(m.is_finite() && m > 0.0)) {
        bail!("--link-mbps must be a positive number of Mbit/s");
    }
    let link = args.link_mbps.map(|m| Arc::new(Link::megabits(m)));
    let (behaviours, faults) = split_behaviours(&args.behave, args.silence_rate)?;
    let template = AgentConfig {
        server: Some(args.server.clone()),
        poll: Some(secs(args.poll, "poll")?),
        behaviours,
        health_check: secs(args.health_check, "health-check")?,
        watchdog: secs(args.watchdog, "watchdog")?,
        bootloader: args.bootloader.into(),
        drop_rate: args.drop_rate,
        power_cut_rate: args.power_cut_rate,
        retry_delay: Duration::from_secs(1),
        jitter: !args.no_jitter,
        link: link.clone(),
        http_limit: Some(Arc::new(tokio::sync::Semaphore::new(
            args.connections.max(1),
        ))),
        ..AgentConfig::default()
    };
    let timeout = args.duration.map(|d| secs(d, "duration")).transpose()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let trust = args.tls.trust()?;
    let http_client = move || http_client_with(&trust);
    runtime.block_on(async move {
        let http = http_client()?;
        let names: Vec<String> = (1..=args.devices).map(|i| format!("{prefix}-{i:05}")).collect();
        eprintln!("airlift: enrolling {} devices as {prefix}-NNNNN", args.devices);
        let tokens = enrol_all(&http, &args.server, &enrolment, &names, &args.tags, 32).await?;
        let stats = Arc::new(Stats::new(args.devices));
        let mut deployed = None;
        if let Some(release) = &args.deploy {
            let Some(tag) = args.tags.first() else {
                bail!("--deploy needs a --tag to deploy to");
            };
            let Some(admin) = args.token.as_deref() else {
                bail!("--deploy needs the admin --token (AIRLIFT_TOKEN)");
            };
            let (id, sha) = deploy(&http, &args.server, admin, release, &format!("tag:{tag}")).await?;
            eprintln!("airlift: deployed release {release} to tag:{tag} (deployment {id})");
            deployed = Some(sha);
        }
        let cpu_at_start = args.server_pid.and_then(cpu_seconds);
        let own_cpu_at_start = cpu_seconds(std::process::id());
        let fleet_tokens = tokens.clone();
        // Downloads on their own connections, as esp_https_ota does.
        let template = AgentConfig {
            downloads: Some(http_client()?),
            ..template
        };
        let mut fleet = spawn_fleet(names.into_iter().zip(fleet_tokens).collect(), base, &template, &faults, &http, &stats)?;
        let terminal = std::io::stderr().is_terminal();
        let until = args.until_version.clone();
        let devices = args.devices as u64;
        let done = move |s: &Stats| match &until {
            Some(v) => {
                let (confirmed, rolled_back, failed) = s.finals();
                let silenced = s.silenced.load(std::sync::atomic::Ordering::Relaxed);
                let ended = rolled_back + failed + silenced;
                // The event counts first: cheap, and checked every few ms.
                confirmed + ended >= devices && s.confirmed_on(v) as u64 + ended >= devices
            }
            None => false,
        };
        let progress = |summary: &airlift_agent::fleet::Summary| {
            if terminal {
                eprint!("\r{}\x1b[K", summary.line());
            } else {
                eprintln!("{}", summary.line());
            }
        };
        let settled = tokio::select! {
            settled = watch(&stats, Duration::from_secs(1), timeout, done, progress) => settled,
            _ = tokio::signal::ctrl_c() => false,
        };
        let summary = stats.summary();
        let server_cpu_update = args
            .server_pid
            .and_then(cpu_seconds)
            .zip(cpu_at_start)
            .map(|(end, start)| end - start);
        let rss_settled = proc_status("VmRSS:");
        let sim_cpu_update = cpu_seconds(std::process::id())
            .zip(own_cpu_at_start)
            .map(|(end, start)| end - start);
        let mut lingered = None;
        if let (Some(linger), true) = (args.linger, settled || args.until_version.is_none()) {
            let checkins = stats.checkins.load(std::sync::atomic::Ordering::Relaxed);
            let cpu = args.server_pid.and_then(cpu_seconds);
            tokio::time::sleep(secs(linger, "linger")?).await;
            let answered = stats.checkins.load(std::sync::atomic::Ordering::Relaxed) - checkins;
            let used = args.server_pid.and_then(cpu_seconds).zip(cpu).map(|(b, a)| b - a);
            lingered = Some((linger, answered, used));
        }
        fleet.abort_all();
        while fleet.join_next().await.is_some() {}
        if terminal {
            eprintln!();
        }
        let mut baseline = None;
        if let (true, true, Some(sha)) = (args.baseline, settled, &deployed) {
            // The best of three runs each: on a shared machine a baseline
            // slowed by someone else's work would flatter the fleet's ratio.
            let best = |hash: bool| {
                let (http, server, tokens, link) =
                    (http_client(), &args.server, &tokens, link.clone());
                async move {
                    let http = http?;
                    let mut best: Option<(f64, u64, Option<f64>, Option<f64>)> = None;
                    for _ in 0..3 {
                        let cpu = args.server_pid.and_then(cpu_seconds);
                        let own = cpu_seconds(std::process::id());
                        let (took, bytes) =
                            plain_downloads(
                                &http,
                                server,
                                tokens,
                                sha,
                                args.connections,
                                hash,
                                link.as_ref(),
                            )
                            .await?;
                        let used =
                            args.server_pid.and_then(cpu_seconds).zip(cpu).map(|(b, a)| b - a);
                        let own = cpu_seconds(std::process::id()).zip(own).map(|(b, a)| b - a);
                        let took = took.as_secs_f64();
                        if best.is_none_or(|(b, _, _, _)| took < b) {
                            best = Some((took, bytes, used, own));
                        }
                    }
                    Ok::<_, anyhow::Error>(best)
                }
            };
            let plain = best(false).await?;
            let verified = best(true).await?;
            baseline = plain.zip(verified);
        }
        if args.json {
            outln!("{}", serde_json::to_string_pretty(&summary)?);
        } else {
            outln!("{}", summary.line());
            outln!("devices per version: {:?}", summary.versions);
            outln!("events: {:?}", summary.events);
            outln!(
                "{} check-ins, {} rollbacks, {} download retries, {} power cuts, {} bytes received, {} devices stopped with an error",
                summary.checkins, summary.rollbacks, summary.retries, summary.power_cuts, summary.bytes, summary.crashed
            );
        }
        // Measurements: stdout for text, stderr next to the JSON summary.
        let json = args.json;
        let note = |line: String| {
            if json {
                eprintln!("{line}");
            } else {
                outln!("{line}");
            }
        };
        if let Some(((took, bytes, server_cpu, _), (hashed, _, _, _))) = baseline {
            // From the deployment to the last device's final report.
            let fleet_secs = stats.last_final().as_secs_f64();
            note(format!(
                "baseline: {} plain downloads ({bytes} bytes{}) took {took:.2} s; the fleet update took {fleet_secs:.2} s: {:.2}x the plain transfer",
                tokens.len(),
                args.link_mbps
                    .map_or(String::new(), |m| format!(", all over one {m} Mbit/s link")),
                fleet_secs / took.max(1e-9)
            ));
            note(format!(
                "baseline: the same downloads, each checked against its SHA-256 as a device must, took {hashed:.2} s: the fleet update is {:.2}x that",
                fleet_secs / hashed.max(1e-9)
            ));
            if let (Some(plain), Some(update)) = (server_cpu, server_cpu_update) {
                note(format!(
                    "server CPU: {update:.2} s for the update vs {plain:.2} s for the plain downloads ({:.2}x)",
                    update / plain.max(1e-9)
                ));
            }
        }
        if let (Some(peak), Some(settled)) = (proc_status("VmHWM:"), rss_settled) {
            note(format!(
                "simulator memory: {settled} when every device had finished, {peak} at the peak (baselines included), for {} devices",
                tokens.len()
            ));
        }
        if let Some(cpu) = cpu_seconds(std::process::id()) {
            note(format!("simulator CPU (all devices, enrolment and baseline included): {cpu:.2} s"));
        }
        if let Some(cpu) = server_cpu_update {
            note(format!(
                "server CPU during the update: {cpu:.2} s for {} check-ins and {} events",
                summary.checkins,
                summary.events.values().sum::<u64>()
            ));
        }
        if let Some(cpu) = sim_cpu_update {
            let per_device = |cpu: f64| cpu * 1e6 / tokens.len().max(1) as f64;
            note(format!(
                "simulator CPU during the update: {cpu:.2} s ({:.0} us per device)",
                per_device(cpu)
            ));
            if let Some(Some(hashing)) = baseline.map(|(_, (_, _, _, own))| own) {
                note(format!(
                    "simulator CPU for the checked downloads: {hashing:.2} s ({:.0} us per device)",
                    per_device(hashing)
                ));
            }
        }
        if let Some((linger, answered, used)) = lingered {
            let rate = answered as f64 / linger;
            match used {
                Some(cpu) => note(format!(
                    "steady polling: {answered} check-ins in {linger:.0} s ({rate:.0}/s); server CPU {cpu:.2} s = {:.1} us per check-in ({:.0}% of one core)",
                    cpu * 1e6 / (answered.max(1) as f64),
                    cpu * 100.0 / linger
                )),
                None => note(format!(
                    "steady polling: {answered} check-ins in {linger:.0} s ({rate:.0}/s)"
                )),
            }
        }
        let ok = settled || args.until_version.is_none();
        Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
    })
}

/// A line of `/proc/self/status` (Linux), such as `VmRSS:`.
fn proc_status(key: &str) -> Option<String> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key).map(str::trim).map(str::to_owned))
}
