//! `airlift flash create|provision|inspect`: a device's flash as a file, laid
//! out like a real ESP32's (what `airlift device run` boots from), and the
//! whole flash of a real board.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use airlift_agent::flash::FileFlash;
use airlift_agent::{provision, report};
use airlift_format::image;
use airlift_format::manifest::parse_public_key_file;
use airlift_format::partition::{self, AIRLIFT_DEFAULT, FIRMWARE_4MB, PartitionEntry};
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
        #[command(flatten)]
        tls: DeviceTls,
    },
    /// Create the whole flash of a real board, to write at offset 0: the
    /// ESP-IDF bootloader, the partition table at 0x8000, otadata, the
    /// firmware in ota_0, the trusted keys in Airlift's data partition.
    ///
    /// Write it with `espflash write-bin 0x0 FILE` or `esptool --chip CHIP
    /// write-flash 0x0 FILE`; `airlift device run --flash FILE` boots the
    /// same bytes.
    Provision {
        /// The flash file to write.
        file: PathBuf,
        /// The firmware (an ESP-IDF app image, e.g. from `esptool elf2image`) for ota_0.
        #[arg(long)]
        firmware: PathBuf,
        /// The ESP-IDF second-stage bootloader for the firmware's chip (espflash
        /// ships them in resources/bootloaders/; copies are in
        /// testdata/images/esp-idf-bootloaders/).
        #[arg(long)]
        bootloader: PathBuf,
        /// Partition table CSV [default: Airlift's firmware layout for 4 MiB
        /// boards, firmware/partitions.csv: two 1.5 MiB OTA slots].
        #[arg(long)]
        partitions: Option<PathBuf>,
        /// A public key to trust for releases (`airlift keys generate`'s .pub,
        /// or the server's DIR/signing.pub); repeat for several.
        #[arg(long = "trust")]
        trust: Vec<PathBuf>,
        /// The board's flash size: 1MB, 2MB, 4MB, 8MB, 16MB, 32MB, 64MB or 128MB.
        #[arg(long, default_value = "4MB", value_parser = parse_flash_size)]
        flash_size: u32,
        /// Overwrite FILE if it exists.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        tls: DeviceTls,
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

/// How a device trusts its server over HTTPS, written into its flash settings.
#[derive(clap::Args, Debug)]
pub struct DeviceTls {
    /// SHA-256 of the certificate the device accepts from its server (the
    /// server's own, or a CA's it sends: `airlift keys tls` prints both).
    #[arg(long)]
    tls_pin: Option<String>,
    /// The device refuses a plain http:// server.
    #[arg(long)]
    require_https: bool,
}

impl DeviceTls {
    /// Writes them into the flash file's settings, when any is given.
    fn provision(&self, file: &Path) -> anyhow::Result<()> {
        if self.tls_pin.is_none() && !self.require_https {
            return Ok(());
        }
        let pin = self
            .tls_pin
            .as_deref()
            .map(airlift_agent::tls::parse_pin)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--tls-pin: {e}"))?;
        let mut flash =
            FileFlash::open(file).with_context(|| format!("cannot open {}", file.display()))?;
        airlift_agent::tls::provision_trust(&mut flash, pin, self.require_https)
            .with_context(|| format!("cannot write the settings of {}", file.display()))?;
        println!(
            "settings: {}{}",
            if pin.is_some() {
                "server certificate pinned"
            } else {
                "no pin"
            },
            if self.require_https {
                ", plain HTTP refused"
            } else {
                ""
            }
        );
        Ok(())
    }
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
            tls,
        } => {
            let image = read(&firmware)?;
            let entries = read_partitions(partitions.as_deref(), &AIRLIFT_DEFAULT)?;
            let keys = read_keys(&trust)?;
            let bytes = provision::flash_image(&entries, &image, &keys)
                .with_context(|| format!("cannot provision {}", firmware.display()))?;
            write_flash(&file, &bytes, force)?;
            tls.provision(&file)?;
            outln!(
                "created {} ({} bytes): {} in ota_0, {} trusted key(s)",
                file.display(),
                bytes.len(),
                firmware.display(),
                keys.len()
            );
        }
        FlashCommand::Provision {
            file,
            firmware,
            bootloader,
            partitions,
            trust,
            flash_size,
            force,
            tls,
        } => {
            let image = read(&firmware)?;
            let boot = read(&bootloader)?;
            let entries = read_partitions(partitions.as_deref(), &FIRMWARE_4MB)?;
            let keys = read_keys(&trust)?;
            let bytes = provision::whole_flash(&entries, &image, &keys, &boot, flash_size)
                .with_context(|| format!("cannot provision {}", firmware.display()))?;
            write_flash(&file, &bytes, force)?;
            tls.provision(&file)?;
            let chip = image::verify(&image).map(|i| i.chip())?;
            let slot = entries
                .iter()
                .find(|e| e.label_str() == "ota_0")
                .map_or(0, |e| e.size);
            outln!(
                "provisioned {} ({} MiB): {chip} bootloader at {:#x}, partition table at 0x8000, \
                 {} in ota_0 ({} of {} bytes), {} trusted key(s)",
                file.display(),
                bytes.len() >> 20,
                chip.bootloader_offset().unwrap_or(0),
                firmware.display(),
                image.len(),
                slot,
                keys.len()
            );
            outln!(
                "write it at offset 0: espflash write-bin 0x0 {0}  (or: esptool --chip {chip} write-flash 0x0 {0})",
                file.display()
            );
        }
        FlashCommand::Inspect { file, json } => {
            let mut flash = FileFlash::open(&file)
                .with_context(|| format!("cannot open {}", file.display()))?;
            let r = report::report(&mut flash, airlift_engine::DEFAULT_MAX_ATTEMPTS)
                .with_context(|| format!("cannot read {}", file.display()))?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                out!("{}", report::render_text(&r));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn read_partitions(
    csv: Option<&Path>,
    default: &[PartitionEntry],
) -> anyhow::Result<Vec<PartitionEntry>> {
    let Some(csv) = csv else {
        return Ok(default.to_vec());
    };
    let text =
        std::fs::read_to_string(csv).with_context(|| format!("cannot read {}", csv.display()))?;
    partition::parse_csv(&text).with_context(|| format!("invalid CSV {}", csv.display()))
}

fn read_keys(paths: &[PathBuf]) -> anyhow::Result<Vec<[u8; 32]>> {
    paths
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            parse_public_key_file(&text)
                .with_context(|| format!("{} is not an airlift public key file", path.display()))
        })
        .collect()
}

fn write_flash(file: &Path, bytes: &[u8], force: bool) -> anyhow::Result<()> {
    FileFlash::create(file, bytes, force).with_context(|| {
        if file.exists() && !force {
            format!("{} exists: pass --force to overwrite it", file.display())
        } else {
            format!("cannot write {}", file.display())
        }
    })?;
    Ok(())
}

/// "4MB" (esptool's names; "4M" and "4mb" too) in bytes.
fn parse_flash_size(text: &str) -> Result<u32, String> {
    let lower = text.to_ascii_lowercase();
    let digits = lower
        .strip_suffix("mb")
        .or_else(|| lower.strip_suffix('m'))
        .unwrap_or(&lower);
    digits
        .parse::<u32>()
        .ok()
        .and_then(|mib| mib.checked_mul(1024 * 1024))
        .filter(|&size| image::flash_size_code(size).is_some())
        .ok_or_else(|| format!("{text:?} is not a flash size: 1MB, 2MB, 4MB, ... 128MB"))
}
