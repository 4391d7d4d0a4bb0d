//! Fuzz targets for every parser that takes bytes from outside: the ESP app
//! image, the partition table (binary and CSV), the engine's reading of a
//! table from flash, otadata, the signed manifest, key files and base64,
//! the device protocol's JSON (as the server's serde_json and the firmware's
//! serde-json-core read it), and Airlift's data partition.
//!
//! Each target is a function from bytes to nothing that panics when a
//! property fails: it must not panic on any input, and where a parser has a
//! counterpart (an encoder, a streaming reader, another JSON parser) the two
//! must agree. The same functions run under two drivers:
//!
//! * the test suite (`tests/fuzz_targets.rs`, stable Rust): every file of the
//!   committed corpus (`corpus/TARGET/`), the structured seeds of
//!   [`seeds`], and a bounded number of seeded mutations of them
//!   ([`mutate`]);
//! * libFuzzer through cargo-fuzz (`fuzz/` at the repository root, nightly),
//!   coverage-guided, for long runs; what it finds is minimised into the
//!   corpus, and crashes become regression files in `corpus/`.
//!
//! `cargo run -p airlift-fuzz --release -- TARGET --cases N` runs the stable
//! mutator for longer, and saves any failing input.

pub mod mutate;
pub mod seeds;
mod targets;

pub use targets::Target;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// Where the committed corpus of `target` lives.
pub fn corpus_dir(target: Target) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target.name())
}

/// Every file of the committed corpus of `target` (sorted by name).
pub fn corpus(target: Target) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(corpus_dir(target))
        .map(|dir| {
            dir.flatten()
                .filter(|e| e.path().is_file())
                .filter_map(|e| {
                    let bytes = std::fs::read(e.path()).ok()?;
                    Some((e.file_name().to_string_lossy().into_owned(), bytes))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// An input on which a property failed.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Where it came from (a corpus file, or a seeded mutation).
    pub origin: String,
    /// The input.
    pub input: Vec<u8>,
    /// The panic message.
    pub message: String,
}

/// What a run of one target did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Inputs run (corpus, seeds and mutations).
    pub cases: u64,
    /// Inputs on which a property failed (at most a few are kept).
    pub failures: Vec<Failure>,
}

/// Runs `target` on one input, turning a panic into a [`Failure`].
pub fn run_one(target: Target, origin: &str, input: &[u8]) -> Result<(), Failure> {
    catch_unwind(AssertUnwindSafe(|| target.run(input))).map_err(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "panic".to_owned());
        Failure {
            origin: origin.to_owned(),
            input: input.to_vec(),
            message,
        }
    })
}

/// Runs the corpus and the seeds of `target`, then `mutations` seeded
/// mutations of them.
pub fn campaign(target: Target, mutations: u64, seed: u64) -> Report {
    let mut report = Report::default();
    let mut pool: Vec<Vec<u8>> = Vec::new();
    let record = |report: &mut Report, origin: &str, input: &[u8]| {
        report.cases += 1;
        if let Err(f) = run_one(target, origin, input)
            && report.failures.len() < 5
        {
            report.failures.push(f);
        }
    };
    for (name, bytes) in corpus(target) {
        record(
            &mut report,
            &format!("corpus/{}/{name}", target.name()),
            &bytes,
        );
        pool.push(bytes);
    }
    for (i, bytes) in seeds::seeds(target).into_iter().enumerate() {
        record(&mut report, &format!("seed {i}"), &bytes);
        pool.push(bytes);
    }
    if pool.is_empty() {
        pool.push(Vec::new());
    }
    let max_len = pool.iter().map(Vec::len).max().unwrap_or(0).max(64) * 2;
    let mut rng = mutate::Rng(seed ^ (target as u64).wrapping_mul(0x9E37_79B9));
    for i in 0..mutations {
        let base = &pool[rng.below(pool.len())];
        let input = mutate::mutate(base, &pool, &mut rng, max_len);
        record(
            &mut report,
            &format!("mutation {i} (seed {seed:#x})"),
            &input,
        );
    }
    report
}
