//! Install of a 1.5 MiB image into the simulated flash, as a ratio to plain
//! SHA-256 over the same bytes, measured in the same run. Also measures the
//! stack that Ed25519 manifest verification needs.
//!
//! `cargo bench -p airlift-engine`

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

use airlift_engine::sim::{self, SimFlash};
use airlift_engine::{Config, Device};
use airlift_format::image::{Chip, ImageBuilder};
use airlift_format::manifest::{SignedManifest, SigningKey, public_key_from_seed};
use airlift_format::partition::{PartitionEntry, PartitionType};
use sha2::{Digest, Sha256};

const IMAGE_LEN: usize = 1536 * 1024;
const CHUNK: usize = 4096;
const ROUNDS: usize = 15;
const STACK_PROBE_ENV: &str = "AIRLIFT_STACK_PROBE";

fn layout() -> Vec<PartitionEntry> {
    let e = |label, kind, subtype, offset, size| {
        PartitionEntry::new(label, kind, subtype, offset, size, 0).expect("valid entry")
    };
    vec![
        e("otadata", PartitionType::DATA, 0x00, 0xd000, 0x2000),
        e("ota_0", PartitionType::APP, 0x10, 0x10000, 0x20_0000),
        e("ota_1", PartitionType::APP, 0x11, 0x21_0000, 0x20_0000),
        e("airlift", PartitionType::DATA, 0x40, 0x41_0000, 0x1_0000),
    ]
}

/// One install; returns (fixed cost: open + manifest check, streaming cost:
/// every write + finish).
fn install_once(flash: &mut SimFlash, image: &[u8], blob: &[u8]) -> (Duration, Duration) {
    let start = Instant::now();
    let mut dev = Device::open(flash, Config::default()).expect("open");
    let mut s = dev.begin(blob).expect("begin");
    let streaming = Instant::now();
    for chunk in image.chunks(CHUNK) {
        s.write(chunk).expect("write");
    }
    s.finish().expect("finish");
    (streaming - start, streaming.elapsed())
}

fn sha_once(image: &[u8]) -> Duration {
    let start = Instant::now();
    let mut h = Sha256::new();
    for chunk in image.chunks(CHUNK) {
        h.update(chunk);
    }
    black_box(h.finalize());
    start.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Burns `depth` stack frames of about 512 bytes, then runs `f`.
#[inline(never)]
fn burn(depth: usize, f: &dyn Fn()) -> usize {
    let buf = [depth as u8; 512];
    black_box(&buf);
    let here = buf.as_ptr() as usize;
    if depth == 0 {
        f();
        here
    } else {
        let below = burn(depth - 1, f);
        black_box(here.abs_diff(below))
    }
}

/// Child mode: on a 256 KiB thread, burn `depth` frames, then parse (and
/// with `verify`, verify) a signed manifest. Prints the frame size.
fn stack_probe(depth: usize, verify: bool) {
    let seed = [3u8; 32];
    let key = SigningKey::from_bytes(&seed);
    let public = public_key_from_seed(&seed);
    let image = sim::test_image("1.0.0", 0, 1000);
    let blob = sim::sign_image(&image, &key, None, None).expect("sign");
    let t = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            let work = || {
                let signed = SignedManifest::parse(&blob).expect("parse");
                if verify {
                    signed.verify(&[public]).expect("verify");
                }
                black_box(signed);
            };
            burn(depth, &work);
            burn(1, &|| ())
        })
        .expect("spawn");
    let frame = t.join().expect("join");
    println!("{frame}");
}

/// Deepest burn that still leaves room for the work, and the frame size.
fn deepest(verify: bool) -> Option<(usize, usize)> {
    let exe = std::env::current_exe().ok()?;
    let run = |depth: usize| -> Option<usize> {
        let mut cmd = Command::new(&exe);
        cmd.env(STACK_PROBE_ENV, depth.to_string());
        if verify {
            cmd.env("AIRLIFT_STACK_PROBE_VERIFY", "1");
        }
        let out = cmd.output().ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    let frame = run(0)?;
    let (mut lo, mut hi) = (0usize, 1024usize);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if run(mid).is_some() {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some((lo, frame))
}

fn main() {
    if let Ok(depth) = std::env::var(STACK_PROBE_ENV) {
        let verify = std::env::var("AIRLIFT_STACK_PROBE_VERIFY").is_ok();
        stack_probe(depth.parse().expect("depth"), verify);
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }

    let image = ImageBuilder::new(Chip::Esp32)
        .app("bench", "2.0.0")
        .filler(0x3F40_0020, 256 * 1024)
        .filler(0x400D_0020, IMAGE_LEN - 256 * 1024 - 512)
        .build();
    let old = sim::test_image("1.0.0", 0, 4096);
    let seed = [1u8; 32];
    let key = SigningKey::from_bytes(&seed);
    let blob = sim::sign_image(&image, &key, None, None).expect("sign");
    let entries = layout();
    let flash = sim::provision(
        &entries,
        8 * 1024 * 1024,
        &old,
        &[public_key_from_seed(&seed)],
    )
    .expect("provision");

    let mut fixed = Vec::new();
    let mut streams = Vec::new();
    let mut totals = Vec::new();
    let mut shas = Vec::new();
    for _ in 0..ROUNDS {
        let mut f = flash.clone();
        let (a, b) = install_once(&mut f, &image, &blob);
        fixed.push(a);
        streams.push(b);
        totals.push(a + b);
        shas.push(sha_once(&image));
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mbs = |d: Duration| image.len() as f64 / 1e6 / d.as_secs_f64();
    let best = |v: &[Duration]| v.iter().min().copied().unwrap_or_default();
    let sha = median(shas.clone());
    let (stream, total) = (median(streams.clone()), median(totals.clone()));
    println!(
        "install of a {:.2} MiB image into the simulated flash, {} KiB chunks, median of {ROUNDS} interleaved rounds:",
        image.len() as f64 / 1048576.0,
        CHUNK / 1024
    );
    println!(
        "  sha-256 alone over the same bytes:          {:>7.3} ms  {:>7.1} MB/s",
        ms(sha),
        mbs(sha)
    );
    println!(
        "  streaming (erase, program, read back, verify image, activate): {:>7.3} ms  {:>7.1} MB/s",
        ms(stream),
        mbs(stream)
    );
    println!(
        "  fixed per install (open, manifest signature check):           {:>7.3} ms",
        ms(median(fixed))
    );
    println!(
        "  ratio per byte (streaming / sha-256): {:.3}x median, {:.3}x best times (target <= 1.15x)",
        stream.as_secs_f64() / sha.as_secs_f64(),
        best(&streams).as_secs_f64() / best(&shas).as_secs_f64()
    );
    println!(
        "  ratio whole install incl. signature check: {:.3}x median",
        total.as_secs_f64() / sha.as_secs_f64()
    );

    match (deepest(false), deepest(true)) {
        (Some((base, frame)), Some((with, _))) => println!(
            "ed25519 manifest verification stack (x86_64, release build): about {} bytes \
             (measured by stack exhaustion, resolution {frame} bytes)",
            base.saturating_sub(with) * frame
        ),
        _ => println!("ed25519 stack: could not be measured"),
    }
}
