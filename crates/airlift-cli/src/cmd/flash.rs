//! `airlift flash create|provision|inspect`: a device's flash as a file, laid
//! out like a real ESP32's (what `airlift device run` boots from), and the
//! whole flash of a real board.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use airlift_agent::flash::FileFlash;
use airlift_agent::{provision, report};
use airlift_client::page::PagePassword;
use airlift_client::settings::{Settings, field};
use airlift_format::image;
use airlift_format::manifest::parse_public_key_file;
use airlift_format::partition::{self, AIRLIFT_DEFAULT, FIRMWARE_4MB, PartitionEntry};
use anyhow::Context;
use clap::{Args, Subcommand};

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
        /// The device's settings, which the firmware reads at boot.
        #[command(flatten)]
        settings: Box<SettingsArgs>,
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
    fn given(&self) -> bool {
        self.tls_pin.is_some() || self.require_https
    }

    fn pin(&self) -> anyhow::Result<Option<[u8; 32]>> {
        self.tls_pin
            .as_deref()
            .map(airlift_agent::tls::parse_pin)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--tls-pin: {e}"))
    }
}

/// What `airlift flash provision` writes into the device's settings.
#[derive(Args, Debug, Default)]
pub struct SettingsArgs {
    /// The Wi-Fi network the board joins.
    #[arg(long)]
    pub wifi_ssid: Option<String>,
    /// Its WPA2 password (leave it out for an open network).
    #[arg(long, env = "AIRLIFT_WIFI_PASSWORD", hide_env_values = true)]
    pub wifi_password: Option<String>,
    /// The update server's base URL (the firmware speaks plain HTTP for now).
    #[arg(long)]
    pub server: Option<String>,
    /// The device's token (`airlift device add NAME` prints it).
    #[arg(long, env = "AIRLIFT_DEVICE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Boots an unconfirmed image gets before it is rolled back [default: 3].
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..))]
    pub max_attempts: Option<u8>,
    /// The password of the board's own web page (kept on the board as its
    /// SHA-256); without it the page's API stays closed.
    #[arg(long, env = "AIRLIFT_DEVICE_PASSWORD", hide_env_values = true)]
    pub page_password: Option<String>,
    /// The board's name on its page.
    #[arg(long)]
    pub name: Option<String>,
    /// The SNTP server the board asks for the time [default: pool.ntp.org].
    #[arg(long)]
    pub time_server: Option<String>,
}

impl SettingsArgs {
    /// The settings, with how the device trusts its server over HTTPS,
    /// checked; `None` when no setting is given.
    pub fn settings(&self, tls: &DeviceTls) -> anyhow::Result<Option<Settings>> {
        let given = tls.given()
            || self.wifi_ssid.is_some()
            || self.wifi_password.is_some()
            || self.server.is_some()
            || self.token.is_some()
            || self.max_attempts.is_some()
            || self.page_password.is_some()
            || self.name.is_some()
            || self.time_server.is_some();
        if !given {
            return Ok(None);
        }
        let text = |o: &Option<String>| o.clone().unwrap_or_default();
        let s = Settings {
            wifi_ssid: field("Wi-Fi network name", &text(&self.wifi_ssid))?,
            wifi_password: field("Wi-Fi password", &text(&self.wifi_password))?,
            server: field("server URL", &text(&self.server))?,
            token: field("token", &text(&self.token))?,
            max_attempts: self.max_attempts.unwrap_or(0),
            tls_pin: tls.pin()?,
            require_https: tls.require_https,
            name: field("name", &text(&self.name))?,
            page_password: self
                .page_password
                .as_deref()
                .map(|p| PagePassword::new(p).sha256()),
            time_server: field("time server", &text(&self.time_server))?,
        };
        s.check()?;
        Ok(Some(s))
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
            let settings = SettingsArgs::default().settings(&tls)?;
            let bytes = provision::flash_image_with(&entries, &image, &keys, settings.as_ref())
                .with_context(|| format!("cannot provision {}", firmware.display()))?;
            write_flash(&file, &bytes, force)?;
            if let Some(s) = &settings {
                outln!("settings: {}", describe(s));
            }
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
            settings,
            force,
            tls,
        } => {
            let image = read(&firmware)?;
            let boot = read(&bootloader)?;
            let entries = read_partitions(partitions.as_deref(), &FIRMWARE_4MB)?;
            let keys = read_keys(&trust)?;
            let settings = settings.settings(&tls)?;
            if let Some(s) = &settings {
                s.check_for(false)?;
            }
            let bytes = provision::whole_flash(
                &entries,
                &image,
                &keys,
                &boot,
                flash_size,
                settings.as_ref(),
            )
            .with_context(|| format!("cannot provision {}", firmware.display()))?;
            write_flash(&file, &bytes, force)?;
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
            match &settings {
                Some(s) => outln!("settings: {}", describe(s)),
                None => outln!(
                    "no settings: the board runs offline, its page closed (see --wifi-ssid, --server, --page-password)"
                ),
            }
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
            let settings = provision::read_settings(&mut flash)
                .with_context(|| format!("cannot read the settings in {}", file.display()))?;
            if json {
                #[derive(serde::Serialize)]
                struct Inspected<'a> {
                    #[serde(flatten)]
                    report: &'a report::Report,
                    settings: Option<SettingsView<'a>>,
                }
                let view = Inspected {
                    report: &r,
                    settings: settings.as_ref().map(SettingsView::of),
                };
                outln!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                out!("{}", report::render_text(&r));
                if let Some(s) = &settings {
                    outln!("settings: {}", describe(s));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The settings as `flash inspect --json` shows them: secrets only as
/// whether they are set.
#[derive(serde::Serialize)]
struct SettingsView<'a> {
    wifi_ssid: &'a str,
    wifi_password_set: bool,
    server: &'a str,
    token_set: bool,
    max_attempts: u8,
    name: &'a str,
    page_password_set: bool,
    time_server: &'a str,
    tls_pin_set: bool,
    require_https: bool,
}

impl<'a> SettingsView<'a> {
    fn of(s: &'a Settings) -> SettingsView<'a> {
        SettingsView {
            wifi_ssid: &s.wifi_ssid,
            wifi_password_set: !s.wifi_password.is_empty(),
            server: &s.server,
            token_set: !s.token.is_empty(),
            max_attempts: s.max_attempts,
            name: &s.name,
            page_password_set: s.page_password.is_some(),
            time_server: s.time_server(),
            tls_pin_set: s.tls_pin.is_some(),
            require_https: s.require_https,
        }
    }
}

/// One line, secrets left out.
fn describe(s: &Settings) -> String {
    let or = |t: &str, none: &str| {
        if t.is_empty() {
            none.to_owned()
        } else {
            t.to_owned()
        }
    };
    format!(
        "wi-fi {}, server {}{}{}, {} boot attempts, name {}, page {}, time from {}",
        or(&s.wifi_ssid, "none"),
        or(&s.server, "none (offline)"),
        if s.tls_pin.is_some() {
            ", certificate pinned"
        } else {
            ""
        },
        if s.require_https {
            ", plain HTTP refused"
        } else {
            ""
        },
        if s.max_attempts == 0 {
            airlift_engine::DEFAULT_MAX_ATTEMPTS
        } else {
            s.max_attempts
        },
        or(&s.name, "(made up by the board)"),
        if s.page_password.is_some() {
            "open with its password"
        } else {
            "API closed (no password)"
        },
        s.time_server()
    )
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
