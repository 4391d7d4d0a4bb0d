//! `airlift release upload|list|show|delete`: the server's firmware library.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use airlift_format::manifest::{SignedManifest, base64_decode, base64_encode};
use anyhow::Context;
use clap::Subcommand;
use serde_json::Value;

use super::client::{Api, ServerArgs, age, field, print_json};

/// `airlift release` subcommands that talk to the server.
#[derive(Subcommand, Debug)]
pub enum ReleaseCommand {
    /// Upload a firmware image (.bin); the server verifies and signs it.
    Upload {
        /// The ESP-IDF application image.
        file: PathBuf,
        /// A manifest signed offline (`airlift release sign`), binary or base64.
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List the releases on the server.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show one release.
    Show {
        /// Release id.
        id: i64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Delete a release that no deployment uses.
    Delete {
        /// Release id.
        id: i64,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// Reads a manifest file: the binary blob, or its base64 text.
fn read_manifest(path: &PathBuf) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if SignedManifest::parse(&bytes).is_ok() {
        return Ok(base64_encode(&bytes));
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut blob = vec![0u8; text.len()];
    let len = base64_decode(text.trim().as_bytes(), &mut blob).map_err(|e| {
        anyhow::anyhow!(
            "{}: neither a signed manifest nor base64 of one: {e}",
            path.display()
        )
    })?;
    SignedManifest::parse(&blob[..len])
        .map_err(|e| anyhow::anyhow!("{}: not a signed manifest: {e}", path.display()))?;
    Ok(base64_encode(&blob[..len]))
}

/// Counts bytes read into a progress bar.
struct Progress<R> {
    inner: R,
    bar: indicatif::ProgressBar,
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

fn print_release_line(r: &Value) {
    println!(
        "{:>4}  {:<24} {:<20} chip {:<3} secver {:<3} {:>9} B  {}  {}",
        field(r, "id"),
        field(r, "project"),
        field(r, "version"),
        field(r, "chip_id"),
        field(r, "security_version"),
        field(r, "size"),
        &field(r, "sha256")[..12.min(field(r, "sha256").len())],
        age(&r["created_at"]),
    );
}

fn upload(api: &Api, file: &PathBuf, manifest: Option<&PathBuf>) -> anyhow::Result<Value> {
    let opened =
        std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let len = opened.metadata()?.len();
    let bar = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(len);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message("uploading");
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let body = reqwest::blocking::Body::sized(
        Progress {
            inner: opened,
            bar: bar.clone(),
        },
        len,
    );
    let mut request = api
        .request(reqwest::Method::POST, "/api/v1/releases")
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .body(body);
    if let Some(path) = manifest {
        request = request.header("X-Airlift-Manifest", read_manifest(path)?);
    }
    let result = api.send(request);
    bar.finish_and_clear();
    result
}

/// Runs an `airlift release` server subcommand.
pub fn run(command: ReleaseCommand) -> anyhow::Result<ExitCode> {
    match command {
        ReleaseCommand::Upload {
            file,
            manifest,
            json,
            server,
        } => {
            let api = Api::new(&server)?;
            let release = upload(&api, &file, manifest.as_ref())?;
            if json {
                print_json(&release)?;
            } else {
                println!(
                    "release {}: {} {} (chip {}, security version {}, {} bytes, sha256 {}, {})",
                    field(&release, "id"),
                    field(&release, "project"),
                    field(&release, "version"),
                    field(&release, "chip_id"),
                    field(&release, "security_version"),
                    field(&release, "size"),
                    field(&release, "sha256"),
                    if release["signed_by_server"] == true {
                        "signed by the server"
                    } else {
                        "signed offline"
                    },
                );
            }
        }
        ReleaseCommand::List { json, server } => {
            let releases: Value = Api::new(&server)?.get("/api/v1/releases")?;
            if json {
                print_json(&releases)?;
            } else {
                let list = releases.as_array().map(Vec::as_slice).unwrap_or_default();
                if list.is_empty() {
                    println!("no releases");
                }
                for r in list {
                    print_release_line(r);
                }
            }
        }
        ReleaseCommand::Show { id, json, server } => {
            let release: Value = Api::new(&server)?.get(&format!("/api/v1/releases/{id}"))?;
            if json {
                print_json(&release)?;
            } else {
                for key in [
                    "id",
                    "project",
                    "version",
                    "chip_id",
                    "security_version",
                    "size",
                    "sha256",
                    "key_id",
                    "signed_by_server",
                    "manifest",
                ] {
                    println!("{key:<17} {}", field(&release, key));
                }
            }
        }
        ReleaseCommand::Delete { id, server } => {
            let api = Api::new(&server)?;
            let release: Value =
                api.send(api.request(reqwest::Method::DELETE, &format!("/api/v1/releases/{id}")))?;
            println!(
                "deleted release {id} ({} {})",
                field(&release, "project"),
                field(&release, "version")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
