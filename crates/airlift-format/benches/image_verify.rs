//! `cargo bench -p airlift-format --bench image_verify`
//!
//! Streams a 1.5 MiB image through `ImageVerifier` in 4 KiB chunks (as the
//! device engine does while it writes a download to flash) and, in the same
//! run and interleaved, plain SHA-256 over the same bytes in the same
//! chunks. Prints throughput of both and the ratio verifier / SHA-256.
//! Target: at most 1.15 (the verifier hashes every byte once; the rest is
//! the xor checksum and bookkeeping).

use std::hint::black_box;
use std::time::{Duration, Instant};

use airlift_format::image::{Chip, ImageBuilder, ImageVerifier};
use sha2::{Digest, Sha256};

const IMAGE_LEN: usize = 1536 * 1024;
const CHUNK: usize = 4096;
const ROUNDS: usize = 15;

fn image() -> Vec<u8> {
    let bytes = ImageBuilder::new(Chip::Esp32c3)
        .app("bench", "1.0.0")
        .filler(0x3FC8_0000, 64 * 1024)
        .filler(0x4038_0000, 128 * 1024)
        .filler(
            0x4200_0020,
            IMAGE_LEN - 192 * 1024 - 24 - 4 * 8 - 256 - 16 - 32,
        )
        .build();
    assert_eq!(bytes.len(), IMAGE_LEN);
    bytes
}

fn verifier_pass(bytes: &[u8]) -> Duration {
    let start = Instant::now();
    let mut verifier = ImageVerifier::new();
    for chunk in bytes.chunks(CHUNK) {
        if verifier.update(black_box(chunk)).is_err() {
            panic!("benchmark image does not verify");
        }
    }
    match verifier.finish() {
        Ok(info) => assert!(black_box(info).is_valid()),
        Err(err) => panic!("benchmark image does not verify: {err}"),
    }
    start.elapsed()
}

fn sha256_pass(bytes: &[u8]) -> Duration {
    let start = Instant::now();
    let mut hasher = Sha256::new();
    for chunk in bytes.chunks(CHUNK) {
        hasher.update(black_box(chunk));
    }
    black_box(hasher.finalize());
    start.elapsed()
}

fn mb_per_s(bytes: usize, time: Duration) -> f64 {
    bytes as f64 / time.as_secs_f64() / 1e6
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn main() {
    let bytes = image();
    // Warm up caches and the CPU clock.
    for _ in 0..3 {
        verifier_pass(&bytes);
        sha256_pass(&bytes);
    }
    let mut verifier_times = Vec::with_capacity(ROUNDS);
    let mut sha_times = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        // Alternate the order so that neither side always runs second.
        if round % 2 == 0 {
            verifier_times.push(verifier_pass(&bytes));
            sha_times.push(sha256_pass(&bytes));
        } else {
            sha_times.push(sha256_pass(&bytes));
            verifier_times.push(verifier_pass(&bytes));
        }
    }
    let best_ratio = verifier_times
        .iter()
        .min()
        .unwrap_or(&Duration::ZERO)
        .as_secs_f64()
        / sha_times
            .iter()
            .min()
            .unwrap_or(&Duration::MAX)
            .as_secs_f64();
    let verifier = median(&mut verifier_times);
    let sha = median(&mut sha_times);
    println!(
        "image verify: {:.2} MiB image, {} KiB chunks, {ROUNDS} interleaved rounds (medians)",
        IMAGE_LEN as f64 / (1024.0 * 1024.0),
        CHUNK / 1024
    );
    println!(
        "  ImageVerifier   {:>8.1} MB/s",
        mb_per_s(bytes.len(), verifier)
    );
    println!("  plain SHA-256   {:>8.1} MB/s", mb_per_s(bytes.len(), sha));
    println!(
        "  ratio verifier/sha256: {:.3} (median), {best_ratio:.3} (best times); target <= 1.15",
        verifier.as_secs_f64() / sha.as_secs_f64()
    );
}
