//! `airlift release upload|list|show|delete`: the server's firmware library.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::task::{Context as TaskContext, Poll};

use airlift_format::image;
use airlift_format::manifest::{SignedManifest, base64_decode, base64_encode};
use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Subcommand;
use serde_json::Value;

use super::client::{Api, ServerArgs, Table, age, chip, decode_text, field, print_json};

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

fn print_releases(list: &[Value]) {
    if list.is_empty() {
        eprintln!("no releases yet: airlift release upload FILE.bin adds one");
        return;
    }
    let mut table = Table::new(&[
        "ID", "PROJECT", "VERSION", "CHIP", "SECVER", "SIZE", "SHA-256", "SIGNED", "UPLOADED",
    ])
    .right(0)
    .right(4)
    .right(5);
    for r in list {
        let sha = field(r, "sha256");
        table.row(vec![
            field(r, "id"),
            field(r, "project"),
            field(r, "version"),
            chip(&r["chip_id"]),
            field(r, "security_version"),
            field(r, "size"),
            sha.chars().take(12).collect(),
            if r["signed_by_server"] == true {
                "server"
            } else {
                "offline"
            }
            .to_owned(),
            age(&r["created_at"]),
        ]);
    }
    table.print();
}

/// Larger files are refused before they are read: no ESP32 app is as large.
const MAX_FILE: u64 = 16 * 1024 * 1024;

/// The file, checked as the server checks an upload (the same parser and
/// verdict): a file the server would refuse is refused here, in the
/// server's words, before any byte is sent.
fn read_image(file: &Path) -> anyhow::Result<Bytes> {
    let len = std::fs::metadata(file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .len();
    if len > MAX_FILE {
        bail!(
            "{} is {len} bytes: no ESP32 flash holds an app that large (at most 16 MiB); \
             nothing was uploaded",
            file.display()
        );
    }
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let problem = match image::verify(&bytes) {
        Ok(info) => info.release_problem().map(|p| p.to_string()),
        Err(err) => Some(err.to_string()),
    };
    if let Some(problem) = problem {
        bail!(
            "{} cannot be a release: {problem} (nothing was uploaded; `airlift image inspect {}` \
             shows what the file holds)",
            file.display(),
            file.display()
        );
    }
    Ok(Bytes::from(bytes))
}

/// The upload's body: the image in chunks, each counted on the progress bar.
struct Outgoing {
    data: Bytes,
    sent: usize,
    bar: indicatif::ProgressBar,
}

impl http_body::Body for Outgoing {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let len = self.data.len();
        if self.sent >= len {
            return Poll::Ready(None);
        }
        let end = (self.sent + 64 * 1024).min(len);
        let chunk = self.data.slice(self.sent..end);
        self.sent = end;
        self.bar.set_position(end as u64);
        Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent >= self.data.len()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact((self.data.len() - self.sent) as u64)
    }
}

fn progress_bar(len: u64) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message("uploading");
    bar
}

/// Uploads `file`. A server that refuses an upload for what its headers say
/// (the token, the size, the manifest) answers before reading the body and
/// closes the connection; the blocking client then reported only that the
/// body could not be sent. This one reads the answer while it sends, asks
/// once more when the connection closed first, and failing that asks with
/// an empty body which of the headers was refused.
fn upload(api: &Api, file: &Path, manifest: Option<&PathBuf>) -> anyhow::Result<Value> {
    let data = read_image(file)?;
    let manifest = manifest.map(read_manifest).transpose()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let http = api.async_client()?;
    runtime.block_on(async {
        let url = format!("{}/api/v1/releases", api.base());
        let send = |body: reqwest::Body| {
            let mut request = http
                .post(&url)
                .bearer_auth(api.token())
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(body);
            if let Some(manifest) = &manifest {
                request = request.header("X-Airlift-Manifest", manifest.as_str());
            }
            async move {
                let response = request.send().await?;
                let status = response.status();
                Ok::<_, reqwest::Error>((status, response.text().await?))
            }
        };
        let bar = progress_bar(data.len() as u64);
        let body = Outgoing {
            data: data.clone(),
            sent: 0,
            bar: bar.clone(),
        };
        let first = send(reqwest::Body::wrap(body)).await;
        bar.finish_and_clear();
        let (status, text) = match first {
            Ok(answer) => answer,
            Err(err) if err.is_connect() => return Err(api.unreachable(err)),
            Err(_) => match send(reqwest::Body::from(data.clone())).await {
                Ok(answer) => answer,
                Err(err) if err.is_connect() => return Err(api.unreachable(err)),
                Err(_) => {
                    let (status, text) = send(reqwest::Body::from(Bytes::new()))
                        .await
                        .map_err(|e| api.unreachable(e))?;
                    if status != reqwest::StatusCode::UNPROCESSABLE_ENTITY {
                        return decode_text(status, &text);
                    }
                    bail!(
                        "the server closed the connection before reading all {} bytes of {}, \
                         without an answer; it accepts the token and the headers, so the file is \
                         likely above its upload limit (max_upload_bytes, \
                         AIRLIFT_MAX_UPLOAD_BYTES; its log says more)",
                        data.len(),
                        file.display()
                    );
                }
            },
        };
        decode_text(status, &text)
    })
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
                outln!(
                    "release {}: {} {} ({}, security version {}, {} bytes, sha256 {}, {})",
                    field(&release, "id"),
                    field(&release, "project"),
                    field(&release, "version"),
                    chip(&release["chip_id"]),
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
                print_releases(releases.as_array().map(Vec::as_slice).unwrap_or_default());
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
                    outln!("{key:<17} {}", field(&release, key));
                }
            }
        }
        ReleaseCommand::Delete { id, server } => {
            let api = Api::new(&server)?;
            let release: Value =
                api.send(api.request(reqwest::Method::DELETE, &format!("/api/v1/releases/{id}")))?;
            outln!(
                "deleted release {id} ({} {})",
                field(&release, "project"),
                field(&release, "version")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
