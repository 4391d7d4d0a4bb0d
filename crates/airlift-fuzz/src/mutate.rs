//! A small, seeded, structure-blind mutator for the stable harness: bit
//! flips, interesting values, inserted, deleted, duplicated and spliced
//! runs. libFuzzer does this better with coverage; this one needs no
//! nightly toolchain and makes the test suite's runs reproducible.

/// SplitMix64.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

const INTERESTING_32: [u32; 10] = [
    0,
    1,
    0x7F,
    0xFF,
    0x1000,
    0xFFFF,
    0x00FF_FFFF,
    0x7FFF_FFFF,
    0x8000_0000,
    u32::MAX,
];

/// Mutates `input` a few times (1 to 4 steps), splicing from `others`.
pub fn mutate(input: &[u8], others: &[Vec<u8>], rng: &mut Rng, max_len: usize) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        step(&mut v, others, rng);
    }
    v.truncate(max_len);
    v
}

fn step(v: &mut Vec<u8>, others: &[Vec<u8>], rng: &mut Rng) {
    let at = rng.below(v.len() + 1);
    match rng.below(9) {
        0 if !v.is_empty() => {
            let i = at.min(v.len() - 1);
            v[i] ^= 1 << rng.below(8);
        }
        1 if !v.is_empty() => {
            let i = at.min(v.len() - 1);
            v[i] = [0u8, 1, 0x7F, 0x80, 0xFF, b'"', b'\\', b'{', b'0'][rng.below(9)];
        }
        2 if v.len() >= 4 => {
            let i = at.min(v.len() - 4);
            let value = INTERESTING_32[rng.below(INTERESTING_32.len())];
            v[i..i + 4].copy_from_slice(&value.to_le_bytes());
        }
        3 => {
            let n = 1 + rng.below(16);
            let junk: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            v.splice(at..at, junk);
        }
        4 if !v.is_empty() => {
            let end = (at + 1 + rng.below(32)).min(v.len());
            v.drain(at.min(end)..end);
        }
        5 => v.truncate(at),
        6 if !v.is_empty() => {
            // Duplicate a run.
            let from = rng.below(v.len());
            let end = (from + 1 + rng.below(64)).min(v.len());
            let run = v[from..end].to_vec();
            v.splice(at..at, run);
        }
        7 if !others.is_empty() => {
            // Splice in a run of another input.
            let other = &others[rng.below(others.len())];
            if !other.is_empty() {
                let from = rng.below(other.len());
                let end = (from + 1 + rng.below(128)).min(other.len());
                let at = at.min(v.len());
                let end_here = (at + (end - from)).min(v.len());
                v.splice(at..end_here, other[from..end].iter().copied());
            }
        }
        _ => {
            if !v.is_empty() {
                let i = at.min(v.len() - 1);
                v[i] = v[i].wrapping_add(1 + rng.below(3) as u8);
            }
        }
    }
}
