//! `airlift image ...`

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use airlift_format::image::{ImageInfo, ImageVerifier};
use anyhow::Context;
use clap::Subcommand;
use serde::Serialize;

/// `airlift image` subcommands.
#[derive(Subcommand)]
pub enum ImageCommand {
    /// Print an image's header, segments, checksum, digest and app descriptor.
    ///
    /// Exits 0 for a valid image, 1 when it parses but its checksum or
    /// digest is wrong (the report is still printed), 2 when it is not an
    /// ESP image.
    Inspect {
        /// The `.bin` file.
        file: PathBuf,
        /// Print JSON instead of text: chip_id, chip, entry_addr, segments
        /// [{load_addr, length, file_offset}], checksum_valid, digest (hex),
        /// digest_valid, project_name, version, secure_version, idf_ver,
        /// elf_sha256, file_sha256 and more; numbers are plain integers,
        /// absent values null.
        #[arg(long)]
        json: bool,
    },
}

/// Runs an `airlift image` subcommand.
pub fn run(command: ImageCommand) -> anyhow::Result<ExitCode> {
    match command {
        ImageCommand::Inspect { file, json } => inspect(&file, json),
    }
}

fn inspect(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let info = verify_file(path)?;
    let report = Report::new(&info);
    if json {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write_text(&mut std::io::stdout().lock(), path, &report)?;
    }
    Ok(if info.is_valid() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Streams the file through the verifier.
fn verify_file(path: &Path) -> anyhow::Result<ImageInfo> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut verifier = ImageVerifier::new();
    let mut buf = vec![0u8; 64 * 1024];
    let not_an_image = || format!("cannot inspect {}", path.display());
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        verifier.update(&buf[..n]).with_context(not_an_image)?;
    }
    verifier.finish().with_context(not_an_image)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The JSON report; field names are a stable interface for scripts.
#[derive(Serialize)]
struct Report {
    valid: bool,
    chip_id: u16,
    /// `null` for a chip id this version does not know.
    chip: Option<&'static str>,
    entry_addr: u32,
    flash_mode: &'static str,
    flash_size: Option<u32>,
    flash_freq_mhz: Option<u32>,
    min_chip_rev_full: u16,
    max_chip_rev_full: u16,
    segments: Vec<SegmentReport>,
    checksum: u8,
    computed_checksum: u8,
    checksum_valid: bool,
    hash_appended: bool,
    /// The stored appended digest; `null` when none is appended.
    digest: Option<String>,
    computed_digest: Option<String>,
    /// `null` when no digest is appended.
    digest_valid: Option<bool>,
    image_len: u32,
    file_len: u64,
    file_sha256: String,
    app_desc: bool,
    project_name: Option<String>,
    version: Option<String>,
    secure_version: Option<u32>,
    idf_ver: Option<String>,
    elf_sha256: Option<String>,
    compile_date: Option<String>,
    compile_time: Option<String>,
    /// `esp_bootloader_desc_t` of a second-stage bootloader image, or `null`.
    bootloader_desc: Option<BootloaderReport>,
}

#[derive(Serialize)]
struct BootloaderReport {
    version: u32,
    idf_ver: String,
    date_time: String,
}

#[derive(Serialize)]
struct SegmentReport {
    load_addr: u32,
    length: u32,
    file_offset: u32,
}

impl Report {
    fn new(info: &ImageInfo) -> Report {
        let header = &info.header;
        let chip = info.chip();
        let desc = info.app_desc.as_ref();
        Report {
            valid: info.is_valid(),
            chip_id: header.chip_id,
            chip: chip.is_known().then(|| chip.name()),
            entry_addr: header.entry_addr,
            flash_mode: header.flash_mode().name(),
            flash_size: header.flash_size(),
            flash_freq_mhz: header.flash_freq_mhz(),
            min_chip_rev_full: header.min_chip_rev_full,
            max_chip_rev_full: header.max_chip_rev_full,
            segments: info
                .segments()
                .iter()
                .map(|s| SegmentReport {
                    load_addr: s.load_addr,
                    length: s.length,
                    file_offset: s.file_offset,
                })
                .collect(),
            checksum: info.stored_checksum,
            computed_checksum: info.computed_checksum,
            checksum_valid: info.checksum_valid(),
            hash_appended: header.hash_appended,
            digest: info.digest.map(|d| hex(&d.stored)),
            computed_digest: info.digest.map(|d| hex(&d.computed)),
            digest_valid: info.digest.map(|d| d.is_valid()),
            image_len: info.image_len,
            file_len: info.total_len,
            file_sha256: hex(&info.file_sha256),
            app_desc: desc.is_some(),
            project_name: desc.map(|d| d.project_name().to_owned()),
            version: desc.map(|d| d.version().to_owned()),
            secure_version: desc.map(|d| d.secure_version()),
            idf_ver: desc.map(|d| d.idf_ver().to_owned()),
            elf_sha256: desc.map(|d| hex(&d.app_elf_sha256())),
            compile_date: desc.map(|d| d.date().to_owned()),
            compile_time: desc.map(|d| d.time().to_owned()),
            bootloader_desc: info.bootloader_desc.map(|d| BootloaderReport {
                version: d.version(),
                idf_ver: d.idf_ver().to_owned(),
                date_time: d.date_time().to_owned(),
            }),
        }
    }
}

fn revision(full: u16) -> String {
    format!("v{}.{}", full / 100, full % 100)
}

fn size_name(bytes: Option<u32>) -> String {
    bytes.map_or_else(|| "unknown size".to_owned(), |b| format!("{}MB", b >> 20))
}

fn write_text(w: &mut impl Write, path: &Path, r: &Report) -> std::io::Result<()> {
    writeln!(
        w,
        "file            {} ({} bytes)",
        path.display(),
        r.file_len
    )?;
    writeln!(w, "file sha256     {}", r.file_sha256)?;
    let chip = r.chip.unwrap_or("unknown chip");
    writeln!(w, "chip            {chip} (id {})", r.chip_id)?;
    writeln!(
        w,
        "chip revision   {} to {}",
        revision(r.min_chip_rev_full),
        revision(r.max_chip_rev_full)
    )?;
    writeln!(w, "entry           {:#010x}", r.entry_addr)?;
    let freq = r
        .flash_freq_mhz
        .map_or_else(|| "unknown frequency".to_owned(), |f| format!("{f}MHz"));
    writeln!(
        w,
        "flash           {}, {}, {freq}",
        r.flash_mode,
        size_name(r.flash_size)
    )?;
    writeln!(
        w,
        "image length    {} bytes{}",
        r.image_len,
        match r.file_len - u64::from(r.image_len) {
            0 => String::new(),
            extra => format!(" (+{extra} trailing bytes)"),
        }
    )?;
    writeln!(w, "segments        {}", r.segments.len())?;
    writeln!(w, "    #  load addr      length  file offset")?;
    for (i, s) in r.segments.iter().enumerate() {
        writeln!(
            w,
            "  {i:>3}  {:#010x}  {:>10}   {:#010x}",
            s.load_addr, s.length, s.file_offset
        )?;
    }
    let checksum = if r.checksum_valid {
        format!("{:#04x} (valid)", r.checksum)
    } else {
        format!(
            "{:#04x} (INVALID, computed {:#04x})",
            r.checksum, r.computed_checksum
        )
    };
    writeln!(w, "checksum        {checksum}")?;
    let digest = match (&r.digest, &r.computed_digest, r.digest_valid) {
        (Some(stored), _, Some(true)) => format!("{stored} (valid)"),
        (Some(stored), Some(computed), _) => {
            format!("{stored} (INVALID, computed {computed})")
        }
        _ => "not appended".to_owned(),
    };
    writeln!(w, "digest          {digest}")?;
    if r.app_desc {
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        writeln!(w, "app descriptor")?;
        writeln!(w, "  project       {}", text(&r.project_name))?;
        writeln!(w, "  version       {}", text(&r.version))?;
        writeln!(
            w,
            "  secure ver.   {}",
            r.secure_version.unwrap_or_default()
        )?;
        writeln!(w, "  esp-idf       {}", text(&r.idf_ver))?;
        writeln!(
            w,
            "  compiled      {} {}",
            text(&r.compile_date),
            text(&r.compile_time)
        )?;
        writeln!(w, "  elf sha256    {}", text(&r.elf_sha256))?;
    } else if let Some(b) = &r.bootloader_desc {
        writeln!(w, "bootloader descriptor")?;
        writeln!(w, "  version       {}", b.version)?;
        writeln!(w, "  esp-idf       {}", b.idf_ver)?;
        writeln!(w, "  compiled      {}", b.date_time)?;
    } else {
        writeln!(w, "app descriptor  none")?;
    }
    let verdict = if r.valid {
        "valid"
    } else {
        "INVALID (checksum or digest mismatch)"
    };
    writeln!(w, "result          {verdict}")
}
