//! The chaos campaign in the test suite: thousands of random sequences of
//! good, hostile and broken installs, refused manifests, resets, crashes of
//! the trial image, confirms and power cuts, each checked after every step
//! (see `airlift_engine::sim::chaos`). A failure prints the seed of its
//! sequence; `airlift sim chaos --replay SEED` replays it.
#![allow(clippy::unwrap_used)]

use airlift_engine::sim::chaos::{self, ChaosConfig};

#[test]
fn no_sequence_of_failures_blocks_a_good_update() {
    let cfg = ChaosConfig {
        sequences: 2000,
        ..ChaosConfig::default()
    };
    let report = chaos::run(&cfg, |_| {});
    println!("{report:#?}");
    assert_eq!(report.failures, 0, "{:#?}", report.examples);
    assert_eq!(report.sequences, 2000);
    // The campaign exercised what it claims to.
    let t = &report.totals;
    assert!(t.power_cuts > 1000, "{t:?}");
    assert!(t.torn_writes > 500, "{t:?}");
    assert!(t.refusals > 5000, "{t:?}");
    assert!(t.resumes > 100, "{t:?}");
    assert!(t.stale_resumes > 10, "{t:?}");
    assert!(t.rollbacks > 100, "{t:?}");
    assert!(t.confirms > 1000, "{t:?}");
    assert_eq!(t.liveness_checks, t.operations);
}

#[test]
fn a_sequence_replays_from_its_seed() {
    let cfg = ChaosConfig::default();
    let seed = chaos::sequence_seed(cfg.seed, 7);
    let a = chaos::run_sequence(&cfg, seed).unwrap();
    let b = chaos::run_sequence(&cfg, seed).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.operations, u64::from(cfg.steps));
}
