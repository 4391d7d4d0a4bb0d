//! Every fuzz target over its committed corpus, its structured seeds and a
//! bounded number of seeded mutations, with zero failures. A failure prints
//! the input (hex) and where it came from; add it to `corpus/TARGET/` as a
//! regression once fixed.
#![allow(clippy::unwrap_used)]

use airlift_fuzz::{Target, campaign};

fn check(target: Target, mutations: u64) {
    let report = campaign(target, mutations, 0xA1F7);
    for f in &report.failures {
        let hex: String = f.input.iter().map(|b| format!("{b:02x}")).collect();
        eprintln!(
            "{} {}: {}\n  input: {hex}",
            target.name(),
            f.origin,
            f.message
        );
    }
    assert!(report.failures.is_empty(), "{} failed", target.name());
    assert!(
        report.cases > mutations,
        "{}: the corpus and seeds ran",
        target.name()
    );
}

#[test]
fn image_parser_survives_its_corpus_and_mutations() {
    check(Target::Image, 50_000);
}

#[test]
fn partition_table_parsers_agree_on_their_corpus_and_mutations() {
    check(Target::PartitionTable, 50_000);
}

#[test]
fn partition_csv_round_trips_on_its_corpus_and_mutations() {
    check(Target::PartitionCsv, 50_000);
}

#[test]
fn engine_reads_any_partition_table_from_flash_without_panicking() {
    check(Target::EngineLayout, 10_000);
}

#[test]
fn otadata_rules_hold_on_their_corpus_and_mutations() {
    check(Target::Otadata, 50_000);
}

#[test]
fn manifest_parser_is_canonical_and_unforgeable_on_its_corpus_and_mutations() {
    check(Target::Manifest, 50_000);
}

#[test]
fn key_files_and_base64_round_trip_on_their_corpus_and_mutations() {
    check(Target::KeyFiles, 50_000);
}

#[test]
fn server_and_device_json_parsers_agree_on_their_corpus_and_mutations() {
    check(Target::Protocol, 50_000);
}

#[test]
fn engine_survives_any_data_partition_contents() {
    check(Target::DataPartition, 10_000);
}

#[test]
fn every_target_has_a_committed_corpus() {
    for t in Target::ALL {
        assert!(
            !airlift_fuzz::corpus(t).is_empty(),
            "no corpus for {} in {}",
            t.name(),
            airlift_fuzz::corpus_dir(t).display()
        );
    }
}

#[test]
fn device_page_requests_and_its_throttle_hold_on_their_corpus_and_mutations() {
    check(Target::DevicePage, 50_000);
}
