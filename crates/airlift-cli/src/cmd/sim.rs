//! `airlift sim ...`: the engine's simulator.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use airlift_client::sim::RecordPath;
use airlift_engine::sim::campaign::{self, CampaignConfig, PathReport};
use airlift_engine::sim::chaos::{self, ChaosConfig, ChaosReport, Stats};
use airlift_engine::sim::{BootloaderKind, FLASH_SIZE};
use airlift_format::partition::{self, PartitionEntry};
use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use serde::Serialize;

/// `airlift sim` subcommands.
#[derive(Subcommand)]
pub enum SimCommand {
    /// Cut power at every flash operation of every update path (and tear
    /// each operation in half), reboot, and check the device always boots a
    /// complete image and can finish the update; then the same for every
    /// write of the device's notes and settings (they read back as before
    /// or after the write). Exit 0 only with zero failures.
    PowerCut(PowerCutArgs),
    /// Run random sequences of good, hostile and broken installs, refused
    /// manifests, resets, trial crashes, confirms and power cuts, checking
    /// the engine's promises after every step (a good update offered
    /// afterwards must install and boot). Exit 0 only with zero failures.
    Chaos(ChaosArgs),
}

/// Arguments of `airlift sim chaos`.
#[derive(clap::Args)]
pub struct ChaosArgs {
    /// Sequences to run, each on a freshly provisioned device.
    #[arg(long, default_value_t = 10_000)]
    sequences: u64,
    /// Operations per sequence.
    #[arg(long, default_value_t = 24)]
    steps: u32,
    /// The run's seed (each sequence's seed derives from it).
    #[arg(long, value_parser = parse_seed)]
    seed: Option<u64>,
    /// Replay one sequence by the seed a failure printed.
    #[arg(long, value_parser = parse_seed, conflicts_with_all = ["sequences", "seed"])]
    replay: Option<u64>,
    /// Percentage of operations that get a power cut at a random flash operation.
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u8).range(0..=100))]
    power_cut_percent: u8,
    /// Boot attempts an unconfirmed image gets.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=20))]
    max_attempts: u8,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn parse_seed(s: &str) -> Result<u64, String> {
    let parsed = match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|_| format!("{s:?} is not a seed: expected a number, decimal or 0x-hex"))
}

/// Which simulated ESP-IDF bootloader to boot with.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Bootloader {
    /// Built without app rollback (the esp-rs default).
    Plain,
    /// Built with CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE.
    Rollback,
}

impl From<Bootloader> for BootloaderKind {
    fn from(b: Bootloader) -> BootloaderKind {
        match b {
            Bootloader::Plain => BootloaderKind::Plain,
            Bootloader::Rollback => BootloaderKind::Rollback,
        }
    }
}

/// Arguments of `airlift sim power-cut`.
#[derive(clap::Args)]
pub struct PowerCutArgs {
    /// Partition table CSV (ESP-IDF syntax) with two or more OTA slots,
    /// otadata and Airlift's data partition (`airlift, data, 0x40, , 64K`).
    /// Default: ESP-IDF's two-OTA layout plus Airlift's partition.
    #[arg(long)]
    partitions: Option<PathBuf>,
    /// The image the device starts with (default: a small generated image).
    #[arg(long, requires = "new")]
    old: Option<PathBuf>,
    /// The update (default: a small generated image).
    #[arg(long, requires = "old")]
    new: Option<PathBuf>,
    /// Boot attempts an unconfirmed image gets.
    #[arg(long, default_value_t = 3)]
    max_attempts: u8,
    /// Bootloader to simulate.
    #[arg(long, value_enum, default_value_t = Bootloader::Plain)]
    bootloader: Bootloader,
    /// Bytes per install write call.
    #[arg(long, default_value_t = 1000)]
    chunk_size: usize,
    /// Run only these paths (for example `--path install --path rollback`;
    /// names as printed, `+rotation` variants included).
    #[arg(long = "path")]
    paths: Vec<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct PathJson<'a> {
    path: String,
    ops: u64,
    cut_points: u64,
    torn_points: u64,
    failures: u64,
    examples: &'a [String],
}

#[derive(Serialize)]
struct ReportJson<'a> {
    partitions: String,
    bootloader: &'static str,
    max_attempts: u8,
    paths: Vec<PathJson<'a>>,
    failures: u64,
}

/// Runs an `airlift sim` subcommand.
pub fn run(command: SimCommand) -> anyhow::Result<ExitCode> {
    match command {
        SimCommand::PowerCut(args) => power_cut(args),
        SimCommand::Chaos(args) => chaos(args),
    }
}

fn load_partitions(path: &PathBuf) -> anyhow::Result<Vec<PartitionEntry>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let entries = partition::parse_csv(&text)
        .with_context(|| format!("{} is not a valid partition table CSV", path.display()))?;
    if !entries
        .iter()
        .any(|e| e.label_str() == partition::AIRLIFT_DATA_LABEL)
    {
        bail!(
            "{} has no airlift data partition: add a line `airlift, data, 0x40, , 64K`",
            path.display()
        );
    }
    Ok(entries)
}

fn power_cut(args: PowerCutArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = CampaignConfig::small();
    let mut table_name = "default (ESP-IDF two-OTA + airlift)".to_string();
    if let Some(path) = &args.partitions {
        cfg.partitions = load_partitions(path)?;
        table_name = path.display().to_string();
        let end = cfg.partitions.iter().map(|e| e.end()).max().unwrap_or(0);
        cfg.flash_size = usize::try_from(end)?
            .next_multiple_of(FLASH_SIZE)
            .max(FLASH_SIZE);
    }
    if let (Some(old), Some(new)) = (&args.old, &args.new) {
        cfg.old_image =
            std::fs::read(old).with_context(|| format!("cannot read {}", old.display()))?;
        cfg.new_image =
            std::fs::read(new).with_context(|| format!("cannot read {}", new.display()))?;
        // Big images: a progress record every 64 KiB, as on a device.
        cfg.checkpoint_interval = airlift_engine::DEFAULT_CHECKPOINT_INTERVAL;
        cfg.chunk_size = args.chunk_size.max(4096);
    } else {
        cfg.chunk_size = args.chunk_size;
    }
    let mut record_paths = RecordPath::ALL.to_vec();
    if !args.paths.is_empty() {
        let known: Vec<String> = cfg
            .paths
            .iter()
            .map(ToString::to_string)
            .chain(record_paths.iter().map(|p| p.name().to_owned()))
            .collect();
        for name in &args.paths {
            if !known.contains(name) {
                bail!(
                    "unknown path {name:?}: expected one of {}",
                    known.join(", ")
                );
            }
        }
        cfg.paths.retain(|p| args.paths.contains(&p.to_string()));
        record_paths.retain(|p| args.paths.iter().any(|name| name == p.name()));
    }
    cfg.max_attempts = args.max_attempts;
    cfg.bootloader = args.bootloader.into();
    let could_not_run = |e: String| anyhow::anyhow!("power-cut campaign could not run: {e}");
    let engine = cfg
        .paths
        .clone()
        .into_iter()
        .map(|path| campaign::run_path(&cfg, path).map(Row::from));
    // The client's notes and settings, written beside the engine's data partition.
    let records = record_paths
        .into_iter()
        .map(|path| airlift_client::sim::run_path(path).map(Row::from));
    let mut reports: Vec<Row> = Vec::new();
    for row in engine.chain(records) {
        let row = row.map_err(could_not_run)?;
        if !args.json {
            print_line(&row);
        }
        reports.push(row);
    }
    let failures: u64 = reports.iter().map(|r| r.failures).sum();
    if args.json {
        let json = ReportJson {
            partitions: table_name,
            bootloader: BootloaderKind::from(args.bootloader).name(),
            max_attempts: args.max_attempts,
            paths: reports
                .iter()
                .map(|r| PathJson {
                    path: r.path.clone(),
                    ops: r.ops,
                    cut_points: r.cut_points,
                    torn_points: r.torn_points,
                    failures: r.failures,
                    examples: &r.examples,
                })
                .collect(),
            failures,
        };
        outln!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        let points: u64 = reports.iter().map(|r| r.cut_points + r.torn_points).sum();
        outln!(
            "{} paths, {points} power cuts, {failures} failures ({table_name})",
            reports.len()
        );
    }
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// One path's result, of the engine's campaign or the client's records.
struct Row {
    path: String,
    ops: u64,
    cut_points: u64,
    torn_points: u64,
    failures: u64,
    examples: Vec<String>,
}

impl<P: std::fmt::Display> From<PathReport<P>> for Row {
    fn from(r: PathReport<P>) -> Row {
        Row {
            path: r.path.to_string(),
            ops: r.ops,
            cut_points: r.cut_points,
            torn_points: r.torn_points,
            failures: r.failures,
            examples: r.examples,
        }
    }
}

fn print_line(r: &Row) {
    outln!(
        "{:<22} cut points {:>5}  torn points {:>5}  failures {}",
        r.path,
        r.cut_points,
        r.torn_points,
        r.failures
    );
    for e in &r.examples {
        outln!("    {e}");
    }
}

fn chaos(args: ChaosArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = ChaosConfig {
        sequences: args.sequences,
        steps: args.steps,
        max_attempts: args.max_attempts,
        power_cut_percent: args.power_cut_percent,
        ..ChaosConfig::default()
    };
    if let Some(seed) = args.seed {
        cfg.seed = seed;
    }
    if let Some(seed) = args.replay {
        return Ok(match chaos::run_sequence(&cfg, seed) {
            Ok(stats) => {
                outln!(
                    "sequence {seed:#018x}: {} operations, {} power cuts, {} refusals, no failure",
                    stats.operations,
                    stats.power_cuts,
                    stats.refusals
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                outln!("sequence {seed:#018x} failed: {e}");
                ExitCode::from(1)
            }
        });
    }
    let show_progress = !args.json && std::io::stderr().is_terminal();
    let step = (cfg.sequences / 100).max(1);
    let report = chaos::run(&cfg, |r| {
        if show_progress && r.sequences % step == 0 {
            eprint!(
                "\r{} of {} sequences, {} failures",
                r.sequences, cfg.sequences, r.failures
            );
        }
    });
    if show_progress {
        eprintln!();
    }
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&ChaosJson::new(&cfg, &report))?
        );
    } else {
        print_chaos(&cfg, &report);
    }
    Ok(if report.failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[derive(Serialize)]
struct ChaosJson<'a> {
    seed: String,
    sequences: u64,
    steps_per_sequence: u32,
    #[serde(flatten)]
    totals: &'a Stats,
    failures: u64,
    examples: &'a [String],
}

impl<'a> ChaosJson<'a> {
    fn new(cfg: &ChaosConfig, r: &'a ChaosReport) -> ChaosJson<'a> {
        ChaosJson {
            seed: format!("{:#018x}", cfg.seed),
            sequences: r.sequences,
            steps_per_sequence: cfg.steps,
            totals: &r.totals,
            failures: r.failures,
            examples: &r.examples,
        }
    }
}

fn print_chaos(cfg: &ChaosConfig, r: &ChaosReport) {
    let t = &r.totals;
    outln!(
        "chaos: {} sequences of {} operations (seed {:#018x})",
        r.sequences,
        cfg.steps,
        cfg.seed
    );
    outln!("  operations      {:>9}", t.operations);
    outln!(
        "  power cuts      {:>9}  ({} torn writes)",
        t.power_cuts,
        t.torn_writes
    );
    outln!("  refusals        {:>9}", t.refusals);
    outln!("  activations     {:>9}", t.activations);
    outln!(
        "  resumes         {:>9}  ({} stale, retried from byte 0)",
        t.resumes,
        t.stale_resumes
    );
    outln!("  confirms        {:>9}", t.confirms);
    outln!("  rollbacks       {:>9}", t.rollbacks);
    outln!(
        "  good updates offered after a step: {} (each installed, booted and confirmed)",
        t.liveness_checks
    );
    outln!("  failures        {:>9}", r.failures);
    for e in &r.examples {
        outln!("    {e}");
    }
}
