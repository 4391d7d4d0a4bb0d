//! `airlift partitions ...`

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use airlift_format::partition::{
    self, ENTRY_LEN, FLAG_ENCRYPTED, FLAG_READONLY, Md5Status, PartitionEntry, PartitionError, Row,
    TABLE_MAX_LEN, TABLE_OFFSET, Table,
};
use anyhow::{Context, bail};
use clap::Subcommand;
use serde::Serialize;

/// `airlift partitions` subcommands.
#[derive(Subcommand)]
pub enum PartitionsCommand {
    /// Print a partition table and whether its MD5 row matches.
    ///
    /// FILE is a binary table, a whole flash image (table at 0x8000) or a
    /// CSV table; the kind is detected from the content. Exits 0 for a valid
    /// table, 1 when it parses but is invalid (MD5 mismatch, overlaps, ...;
    /// the table is still printed), 2 when it cannot be parsed.
    Inspect {
        /// Binary table, flash image or CSV.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Build a binary partition table from CSV (ESP-IDF's gen_esp32part.py syntax).
    ///
    /// Writes the 0xC00-byte table (entries, MD5 row, 0xFF padding) that is
    /// flashed at 0x8000. Exits 2 when the CSV is invalid.
    Build {
        /// The CSV table.
        csv: PathBuf,
        /// Where to write the binary table.
        #[arg(short, long)]
        output: PathBuf,
    },
}

/// Runs an `airlift partitions` subcommand.
pub fn run(command: PartitionsCommand) -> anyhow::Result<ExitCode> {
    match command {
        PartitionsCommand::Inspect { file, json } => inspect(&file, json),
        PartitionsCommand::Build { csv, output } => build(&csv, &output),
    }
}

/// Where a table came from.
#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Source {
    /// A binary table starting at byte 0.
    Binary,
    /// A flash image with the table at 0x8000.
    FlashImage,
    /// CSV text.
    Csv,
}

impl Source {
    fn describe(self) -> &'static str {
        match self {
            Source::Binary => "binary table",
            Source::FlashImage => "flash image, table at 0x8000",
            Source::Csv => "CSV",
        }
    }
}

fn is_row_magic(bytes: &[u8]) -> bool {
    matches!(
        bytes.get(..2),
        Some(magic) if magic == partition::ENTRY_MAGIC || magic == partition::MD5_MAGIC
    )
}

/// Finds the binary table in `bytes`: at 0 for a table file, at 0x8000 for a
/// flash image. `None` if neither starts with a table row.
pub(crate) fn locate_binary(bytes: &[u8]) -> Option<(Source, &[u8])> {
    if is_row_magic(bytes) {
        return Some((Source::Binary, bytes));
    }
    let at = TABLE_OFFSET as usize;
    let table = bytes.get(at..)?;
    is_row_magic(table).then(|| (Source::FlashImage, &table[..table.len().min(TABLE_MAX_LEN)]))
}

/// What `inspect` found: the entries it could read, and the verdict.
struct Inspection {
    source: Source,
    entries: Vec<PartitionEntry>,
    md5: Md5Report,
    problem: Option<String>,
}

#[derive(Serialize)]
struct Md5Report {
    /// `verified`, `absent`, `mismatch`, or `computed` (CSV: what `build` writes).
    status: &'static str,
    stored: Option<String>,
    computed: Option<String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Reads the entry rows without cross-checks, so an invalid table can still
/// be shown. Fails only when the rows themselves cannot be decoded.
fn read_rows(table: &[u8]) -> Result<(Vec<PartitionEntry>, Option<[u8; 16]>), PartitionError> {
    let mut entries = Vec::new();
    for (index, chunk) in table
        .chunks(ENTRY_LEN)
        .take(TABLE_MAX_LEN / ENTRY_LEN)
        .enumerate()
    {
        let row: [u8; ENTRY_LEN] = chunk
            .try_into()
            .map_err(|_| PartitionError::Truncated { len: table.len() })?;
        match partition::decode_row(&row) {
            Ok(Row::Entry(entry)) => entries.push(entry),
            Ok(Row::Md5(digest)) => return Ok((entries, Some(digest))),
            Ok(Row::End) => return Ok((entries, None)),
            Err(PartitionError::BadMagic { found, .. }) => {
                return Err(PartitionError::BadMagic {
                    at: index * ENTRY_LEN,
                    found,
                });
            }
            Err(PartitionError::BadMd5Row { .. }) => {
                return Err(PartitionError::BadMd5Row {
                    at: index * ENTRY_LEN,
                });
            }
            Err(other) => return Err(other),
        }
    }
    Ok((entries, None))
}

fn inspect_binary(source: Source, table: &[u8]) -> anyhow::Result<Inspection> {
    let (entries, stored) = read_rows(table)?;
    let md5 = match partition::check_md5(table) {
        Ok(Md5Status::Verified) => Md5Report {
            status: "verified",
            stored: stored.map(|d| hex(&d)),
            computed: stored.map(|d| hex(&d)),
        },
        Ok(Md5Status::Absent) => Md5Report {
            status: "absent",
            stored: None,
            computed: None,
        },
        Err(PartitionError::Md5Mismatch { stored, computed }) => Md5Report {
            status: "mismatch",
            stored: Some(hex(&stored)),
            computed: Some(hex(&computed)),
        },
        Err(other) => return Err(other.into()),
    };
    let problem = Table::parse(table).err().map(|err| err.to_string());
    Ok(Inspection {
        source,
        entries,
        md5,
        problem,
    })
}

fn inspect_csv(text: &str) -> anyhow::Result<Inspection> {
    let entries = partition::parse_csv(text)?;
    let mut out = [0u8; TABLE_MAX_LEN];
    let problem = match partition::build(&entries, &mut out) {
        Ok(_) => None,
        Err(err) => Some(err.to_string()),
    };
    let md5 = if problem.is_none() {
        let at = entries.len() * ENTRY_LEN;
        Some(hex(&out[at + 16..at + ENTRY_LEN]))
    } else {
        None
    };
    Ok(Inspection {
        source: Source::Csv,
        entries,
        md5: Md5Report {
            status: "computed",
            stored: None,
            computed: md5,
        },
        problem,
    })
}

fn load(path: &Path) -> anyhow::Result<Inspection> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if let Some((source, table)) = locate_binary(&bytes) {
        return inspect_binary(source, table);
    }
    match std::str::from_utf8(&bytes) {
        Ok(text) if !text.trim().is_empty() => inspect_csv(text),
        _ if bytes.is_empty() => bail!("the file is empty"),
        _ => bail!(
            "not a partition table: first bytes are {:02x} {:02x}, expected aa 50 (binary table), a table at 0x8000 (flash image) or CSV text",
            bytes[0],
            bytes.get(1).copied().unwrap_or_default()
        ),
    }
}

fn inspect(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let inspection = load(path).with_context(|| format!("cannot inspect {}", path.display()))?;
    if json {
        let report = JsonReport::new(&inspection);
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out!("{}", render_text(path, &inspection));
    }
    Ok(if inspection.problem.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn build(csv: &Path, output: &Path) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(csv).with_context(|| format!("cannot read {}", csv.display()))?;
    let entries =
        partition::parse_csv(&text).with_context(|| format!("invalid CSV {}", csv.display()))?;
    let mut out = [0u8; TABLE_MAX_LEN];
    let used = partition::build(&entries, &mut out)
        .with_context(|| format!("cannot build a table from {}", csv.display()))?;
    std::fs::write(output, out).with_context(|| format!("cannot write {}", output.display()))?;
    outln!(
        "wrote {}: {} partitions, md5 {}",
        output.display(),
        entries.len(),
        hex(&out[used - 16..used])
    );
    Ok(ExitCode::SUCCESS)
}

fn type_name(entry: &PartitionEntry) -> String {
    entry
        .kind
        .name()
        .map_or_else(|| format!("0x{:02x}", entry.kind.0), str::to_string)
}

fn subtype_name(entry: &PartitionEntry) -> String {
    partition::subtype_name(entry.kind, entry.subtype)
        .map_or_else(|| format!("0x{:02x}", entry.subtype), str::to_string)
}

fn flag_names(flags: u32) -> Vec<String> {
    let mut names: Vec<String> = [(FLAG_ENCRYPTED, "encrypted"), (FLAG_READONLY, "readonly")]
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| (*name).to_string())
        .collect();
    let other = flags & !(FLAG_ENCRYPTED | FLAG_READONLY);
    if other != 0 {
        names.push(format!("0x{other:x}"));
    }
    names
}

fn human_size(size: u32) -> String {
    if size >= 0x10_0000 && size.is_multiple_of(0x10_0000) {
        format!("{}M", size / 0x10_0000)
    } else if size.is_multiple_of(0x400) {
        format!("{}K", size / 0x400)
    } else {
        format!("{size}B")
    }
}

fn render_text(path: &Path, inspection: &Inspection) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: {} ({} partitions)",
        path.display(),
        inspection.source.describe(),
        inspection.entries.len()
    );
    let rows: Vec<[String; 6]> = inspection
        .entries
        .iter()
        .map(|e| {
            [
                e.label_str().to_string(),
                type_name(e),
                subtype_name(e),
                format!("0x{:x}", e.offset),
                format!("0x{:x} ({})", e.size, human_size(e.size)),
                flag_names(e.flags).join(":"),
            ]
        })
        .collect();
    let header = ["name", "type", "subtype", "offset", "size", "flags"].map(str::to_string);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        let _ = writeln!(out, "  {}", line.join("  ").trim_end());
    }
    let md5 = &inspection.md5;
    let verdict = match md5.status {
        "verified" => format!("ok ({})", md5.stored.as_deref().unwrap_or_default()),
        "absent" => "no MD5 row (not checked)".to_string(),
        "mismatch" => format!(
            "MISMATCH: stored {}, computed {}",
            md5.stored.as_deref().unwrap_or_default(),
            md5.computed.as_deref().unwrap_or_default()
        ),
        "computed" => match &md5.computed {
            Some(digest) => format!("{digest} (what `airlift partitions build` writes)"),
            None => "not computed".to_string(),
        },
        other => other.to_string(),
    };
    let _ = writeln!(out, "md5: {verdict}");
    match &inspection.problem {
        None => {
            let _ = writeln!(out, "valid: yes");
        }
        Some(problem) => {
            let _ = writeln!(out, "valid: no: {problem}");
        }
    }
    out
}

/// The JSON report; field names are a stable interface for scripts.
#[derive(Serialize)]
struct JsonReport<'a> {
    source: Source,
    valid: bool,
    problem: Option<&'a str>,
    md5: &'a Md5Report,
    partitions: Vec<JsonEntry>,
}

#[derive(Serialize)]
struct JsonEntry {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    type_id: u8,
    subtype: String,
    subtype_id: u8,
    offset: u32,
    size: u32,
    flags: Vec<String>,
    flags_raw: u32,
}

impl<'a> JsonReport<'a> {
    fn new(inspection: &'a Inspection) -> Self {
        JsonReport {
            source: inspection.source,
            valid: inspection.problem.is_none(),
            problem: inspection.problem.as_deref(),
            md5: &inspection.md5,
            partitions: inspection
                .entries
                .iter()
                .map(|e| JsonEntry {
                    name: e.label_str().to_string(),
                    kind: type_name(e),
                    type_id: e.kind.0,
                    subtype: subtype_name(e),
                    subtype_id: e.subtype,
                    offset: e.offset,
                    size: e.size,
                    flags: flag_names(e.flags),
                    flags_raw: e.flags,
                })
                .collect(),
        }
    }
}
