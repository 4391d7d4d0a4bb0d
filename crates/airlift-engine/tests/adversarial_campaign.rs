//! Adversarial: the engine's own power-cut campaign, run on configurations
//! it is not run on by default (more OTA slots, a factory partition, a
//! two-sector data partition, five attempts, sector-sized chunks).
#![allow(clippy::unwrap_used)]

mod adversarial_common;

use adversarial_common::*;
use airlift_engine::sim::BootloaderKind;
use airlift_engine::sim::campaign::{self, CampaignConfig, PathReport};

fn assert_clean(what: &str, reports: &[PathReport]) {
    let mut bad = Vec::new();
    for r in reports {
        assert!(r.ops > 0, "{what}: {} has no flash operations", r.path);
        assert_eq!(r.cut_points, r.ops, "{what}: {}", r.path);
        if r.failures > 0 {
            bad.push(format!(
                "{}: {} failures: {:?}",
                r.path, r.failures, r.examples
            ));
        }
    }
    assert!(bad.is_empty(), "{what}:\n{}", bad.join("\n"));
}

fn check(what: &str, cfg: CampaignConfig) {
    assert_clean(what, &campaign::run(&cfg).unwrap());
}

#[test]
fn every_cut_point_is_safe_on_a_three_slot_layout() {
    check(
        "three slots",
        CampaignConfig {
            partitions: ota_table(3, 0x8_0000, 0x4000),
            ..CampaignConfig::small()
        },
    );
}

#[test]
fn every_cut_point_is_safe_on_an_eight_slot_layout_with_the_rollback_bootloader() {
    check(
        "eight slots, rollback bootloader",
        CampaignConfig {
            partitions: ota_table(8, 0x4_0000, 0x4000),
            bootloader: BootloaderKind::Rollback,
            ..CampaignConfig::small()
        },
    );
}

#[test]
fn every_cut_point_is_safe_with_a_factory_partition_and_a_two_sector_data_partition() {
    let mut table = factory_table();
    let data = table.last_mut().unwrap();
    data.size = 0x2000;
    check(
        "factory, two-sector data partition",
        CampaignConfig {
            partitions: table,
            ..CampaignConfig::small()
        },
    );
}

#[test]
fn every_cut_point_is_safe_with_five_attempts_and_sector_sized_chunks() {
    check(
        "five attempts, 4 KiB chunks, 8 KiB checkpoints",
        CampaignConfig {
            max_attempts: 5,
            chunk_size: 4096,
            checkpoint_interval: 8192,
            ..CampaignConfig::small()
        },
    );
}
