//! `airlift sim ...`: the engine's simulator.

use std::path::PathBuf;
use std::process::ExitCode;

use airlift_client::sim::RecordPath;
use airlift_engine::sim::campaign::{self, CampaignConfig, PathReport};
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
    /// write of the device's notes (they read back as before or after the
    /// write). Exit 0 only with zero failures.
    PowerCut(PowerCutArgs),
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
    let mut notes_paths = RecordPath::ALL.to_vec();
    if !args.paths.is_empty() {
        let known: Vec<String> = cfg
            .paths
            .iter()
            .map(ToString::to_string)
            .chain(notes_paths.iter().map(|p| p.name().to_owned()))
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
        notes_paths.retain(|p| args.paths.iter().any(|name| name == p.name()));
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
    let notes = notes_paths
        .into_iter()
        .map(|path| airlift_client::sim::run_path(path).map(Row::from));
    let mut reports: Vec<Row> = Vec::new();
    for row in engine.chain(notes) {
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
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        let points: u64 = reports.iter().map(|r| r.cut_points + r.torn_points).sum();
        println!(
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

/// One path's result, of the engine's campaign or the client's notes.
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
    println!(
        "{:<22} cut points {:>5}  torn points {:>5}  failures {}",
        r.path, r.cut_points, r.torn_points, r.failures
    );
    for e in &r.examples {
        println!("    {e}");
    }
}
