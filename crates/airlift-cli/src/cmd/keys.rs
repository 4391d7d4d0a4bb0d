//! `airlift keys ...` and `airlift release sign`: offline Ed25519 signing.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use airlift_format::image;
use airlift_format::manifest::{
    self, Manifest, SigningKey, format_public_key_file, format_secret_key_file, key_id,
    parse_secret_key_file, public_key_from_seed,
};
use anyhow::{Context, bail};
use clap::Subcommand;
use serde::Serialize;

/// `airlift keys` subcommands.
#[derive(Subcommand)]
pub enum KeysCommand {
    /// Generate an Ed25519 signing key pair: NAME.key (secret, mode 0600)
    /// and NAME.pub (give it to devices with `airlift flash create --trust`).
    Generate {
        /// Path and base name of the two files.
        name: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Make a TLS certificate for a lab server: a CA of its own
    /// (DIR/airlift-ca.pem) and a server certificate it signed
    /// (DIR/airlift-server.pem, the chain to give `airlift serve
    /// --tls-cert`; its key DIR/airlift-server.key, mode 0600). Prints the
    /// pins (SHA-256 of each certificate) for `--tls-pin` and `airlift
    /// flash create --tls-pin`.
    Tls {
        /// A DNS name or IP address the server is reached at (repeat)
        /// [default: localhost, 127.0.0.1 and ::1].
        #[arg(long = "name")]
        names: Vec<String>,
        /// Directory to write the three files to.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `airlift release` subcommands: offline signing here, the server-facing
/// ones from [`crate::cmd::release`].
#[derive(Subcommand)]
pub enum ReleaseCommand {
    /// Sign a release offline: write its signed manifest (the server then
    /// only stores the signature and cannot forge firmware).
    Sign(SignArgs),
    #[command(flatten)]
    Server(crate::cmd::release::ReleaseCommand),
}

/// Arguments of `airlift release sign`.
#[derive(clap::Args)]
pub struct SignArgs {
    /// The ESP-IDF application image (.bin).
    file: PathBuf,
    /// The secret key file (from `airlift keys generate`).
    #[arg(long)]
    key: PathBuf,
    /// Version string (default: the image's app descriptor version).
    #[arg(long)]
    version: Option<String>,
    /// Product name (default: the image's project name).
    #[arg(long)]
    product: Option<String>,
    /// Security version (default: the image's secure_version).
    #[arg(long)]
    security_version: Option<u32>,
    /// Where to write the signed manifest (binary).
    #[arg(short, long)]
    output: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs an `airlift keys` subcommand.
pub fn run(command: KeysCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::Generate { name, force } => generate(&name, force),
        KeysCommand::Tls {
            names,
            dir,
            force,
            json,
        } => tls(names, &dir, force, json),
    }
}

fn tls(names: Vec<String>, dir: &Path, force: bool, json: bool) -> anyhow::Result<ExitCode> {
    let names = if names.is_empty() {
        vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
    } else {
        names
    };
    let pair = airlift_server::tls::lab_pair(&names)?;
    let (ca, chain, key) = (
        dir.join("airlift-ca.pem"),
        dir.join("airlift-server.pem"),
        dir.join("airlift-server.key"),
    );
    for path in [&ca, &chain, &key] {
        if path.exists() && !force {
            bail!("{} exists: pass --force to overwrite it", path.display());
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_new(&ca, &pair.ca_pem, 0o644, force)?;
    write_new(&chain, &pair.chain_pem, 0o644, force)?;
    write_new(&key, &pair.key_pem, 0o600, force)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "ca": ca, "cert": chain, "key": key, "names": names,
                "ca_sha256": pair.ca_sha256, "cert_sha256": pair.cert_sha256,
            }))?
        );
    } else {
        println!("wrote {} (the lab CA)", ca.display());
        println!(
            "wrote {} and {} (for {})",
            chain.display(),
            key.display(),
            names.join(", ")
        );
        println!("pin of the CA:                 {}", pair.ca_sha256);
        println!("pin of the server certificate: {}", pair.cert_sha256);
        println!(
            "serve: airlift serve --tls-cert {} --tls-key {}",
            chain.display(),
            key.display()
        );
        println!(
            "clients: --ca-cert {} or --tls-pin {}",
            ca.display(),
            pair.ca_sha256
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs an `airlift release` subcommand.
pub fn run_release(command: ReleaseCommand) -> anyhow::Result<ExitCode> {
    match command {
        ReleaseCommand::Sign(args) => sign(args),
        ReleaseCommand::Server(c) => crate::cmd::release::run(c),
    }
}

fn with_extension(name: &Path, ext: &str) -> PathBuf {
    let mut s = name.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

fn write_new(path: &Path, contents: &str, mode: u32, force: bool) -> anyhow::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).with_context(|| {
        if path.exists() && !force {
            format!("{} exists: pass --force to overwrite it", path.display())
        } else {
            format!("cannot create {}", path.display())
        }
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    file.write_all(contents.as_bytes())?;
    Ok(())
}

fn generate(name: &Path, force: bool) -> anyhow::Result<ExitCode> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no system randomness: {e}"))?;
    let public = public_key_from_seed(&seed);
    let key_path = with_extension(name, "key");
    let pub_path = with_extension(name, "pub");
    if !force {
        for p in [&key_path, &pub_path] {
            if p.exists() {
                bail!("{} exists: pass --force to overwrite it", p.display());
            }
        }
    }
    write_new(&key_path, &format_secret_key_file(&seed), 0o600, force)?;
    write_new(&pub_path, &format_public_key_file(&public), 0o644, force)?;
    outln!(
        "key id {}: secret key {} (keep it offline), public key {}",
        hex(&key_id(&public)),
        key_path.display(),
        pub_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Serialize)]
struct SignJson {
    manifest: String,
    key_id: String,
    product: String,
    version: String,
    security_version: u32,
    chip_id: u16,
    image_size: u32,
    image_sha256: String,
}

fn sign(args: SignArgs) -> anyhow::Result<ExitCode> {
    let key_text = std::fs::read_to_string(&args.key)
        .with_context(|| format!("cannot read {}", args.key.display()))?;
    let seed = parse_secret_key_file(&key_text)
        .with_context(|| format!("{} is not an airlift secret key", args.key.display()))?;
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let info = image::verify(&bytes)
        .with_context(|| format!("{} is not an ESP image", args.file.display()))?;
    if !info.checksum_valid() {
        bail!(
            "{}: image checksum is invalid, refusing to sign it",
            args.file.display()
        );
    }
    if !info.digest_valid() {
        bail!(
            "{}: appended sha-256 digest is invalid, refusing to sign it",
            args.file.display()
        );
    }
    let desc = info.app_desc.as_ref();
    let version = match (&args.version, desc) {
        (Some(v), _) => v.clone(),
        (None, Some(d)) => d.version().to_string(),
        (None, None) => bail!("the image has no app descriptor: pass --version"),
    };
    let product = args
        .product
        .clone()
        .unwrap_or_else(|| desc.map_or(String::new(), |d| d.project_name().to_string()));
    let security_version = args
        .security_version
        .unwrap_or_else(|| desc.map_or(0, |d| d.secure_version()));
    let image_size = u32::try_from(bytes.len()).context("image larger than 4 GiB")?;
    let m = Manifest {
        chip_id: info.header.chip_id,
        security_version,
        image_size,
        image_sha256: info.file_sha256,
        delta_base_sha256: None,
        key_id: [0; 8],
        product: &product,
        version: &version,
    };
    let key = SigningKey::from_bytes(&seed);
    let blob = manifest::sign(&m, &key).context("cannot sign the manifest")?;
    std::fs::write(&args.output, &blob)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    let id = hex(&key_id(&public_key_from_seed(&seed)));
    if args.json {
        let json = SignJson {
            manifest: args.output.display().to_string(),
            key_id: id,
            product,
            version,
            security_version,
            chip_id: info.header.chip_id,
            image_size,
            image_sha256: hex(&info.file_sha256),
        };
        outln!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        outln!(
            "signed {} ({} {}, security version {security_version}, {image_size} bytes, sha256 {}) with key {id}: {}",
            args.file.display(),
            if product.is_empty() { "-" } else { &product },
            version,
            hex(&info.file_sha256),
            args.output.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
