//! `airlift flash create|inspect`: a device's flash as a file, laid out like
//! a real ESP32's (what `airlift device run` boots from).

use std::path::PathBuf;
use std::process::ExitCode;

use airlift_agent::flash::FileFlash;
use airlift_agent::{provision, report};
use airlift_format::manifest::parse_public_key_file;
use airlift_format::partition::{self, AIRLIFT_DEFAULT};
use anyhow::Context;
use clap::Subcommand;

/// `airlift flash` subcommands.
#[derive(Subcommand, Debug)]
pub enum FlashCommand {
    /// Create a 4 MiB flash image: partition table at 0x8000, otadata, the
    /// firmware in ota_0, the trusted keys in Airlift's data partition.
    Create {
        /// The flash file to write.
        file: PathBuf,
        /// The firmware (an ESP-IDF app image) for ota_0.
        #[arg(long)]
        firmware: PathBuf,
        /// Partition table CSV [default: ESP-IDF's two-OTA layout plus Airlift's data partition].
        #[arg(long)]
        partitions: Option<PathBuf>,
        /// A public key to trust for releases (`airlift keys generate`'s .pub,
        /// or the server's DIR/signing.pub); repeat for several.
        #[arg(long = "trust")]
        trust: Vec<PathBuf>,
        /// Overwrite FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Show a flash image: partition table, otadata, both slots, the boot
    /// counter and the boot log.
    Inspect {
        /// The flash file.
        file: PathBuf,
        /// Print JSON instead of text (keys: partitions, otadata, slots,
        /// engine, boot_log, notes).
        #[arg(long)]
        json: bool,
    },
}

/// Runs an `airlift flash` subcommand.
pub fn run(command: FlashCommand) -> anyhow::Result<ExitCode> {
    match command {
        FlashCommand::Create {
            file,
            firmware,
            partitions,
            trust,
            force,
        } => {
            let image = std::fs::read(&firmware)
                .with_context(|| format!("cannot read {}", firmware.display()))?;
            let entries = match &partitions {
                Some(csv) => {
                    let text = std::fs::read_to_string(csv)
                        .with_context(|| format!("cannot read {}", csv.display()))?;
                    partition::parse_csv(&text)
                        .with_context(|| format!("invalid CSV {}", csv.display()))?
                }
                None => AIRLIFT_DEFAULT.to_vec(),
            };
            let mut keys = Vec::new();
            for path in &trust {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                keys.push(parse_public_key_file(&text).with_context(|| {
                    format!("{} is not an airlift public key file", path.display())
                })?);
            }
            let bytes = provision::flash_image(&entries, &image, &keys)
                .with_context(|| format!("cannot provision {}", firmware.display()))?;
            FileFlash::create(&file, &bytes, force).with_context(|| {
                if file.exists() && !force {
                    format!("{} exists: pass --force to overwrite it", file.display())
                } else {
                    format!("cannot write {}", file.display())
                }
            })?;
            println!(
                "created {} ({} bytes): {} in ota_0, {} trusted key(s)",
                file.display(),
                bytes.len(),
                firmware.display(),
                keys.len()
            );
        }
        FlashCommand::Inspect { file, json } => {
            let mut flash = FileFlash::open(&file)
                .with_context(|| format!("cannot open {}", file.display()))?;
            let r = report::report(&mut flash, airlift_engine::DEFAULT_MAX_ATTEMPTS)
                .with_context(|| format!("cannot read {}", file.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", report::render_text(&r));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
