//! The power-cut campaign: every flash operation of every path, cut and torn.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use airlift_engine::sim::BootloaderKind;
use airlift_engine::sim::campaign::{self, CampaignConfig, PathReport};

fn assert_clean(reports: &[PathReport]) {
    for r in reports {
        println!(
            "{:<22} ops {:>4}  cut {:>4}  torn {:>4}  failures {}",
            r.path.to_string(),
            r.ops,
            r.cut_points,
            r.torn_points,
            r.failures
        );
        for e in &r.examples {
            println!("    {e}");
        }
    }
    for r in reports {
        assert!(r.ops > 0, "{} has no flash operations", r.path);
        assert_eq!(r.cut_points, r.ops);
        assert!(r.torn_points == r.ops || r.torn_points == 2 * r.ops);
        assert_eq!(r.failures, 0, "{}: {:?}", r.path, r.examples);
    }
}

#[test]
fn every_cut_point_on_every_path_leaves_a_bootable_device_that_can_update() {
    let reports = campaign::run(&CampaignConfig::small()).unwrap();
    assert_clean(&reports);
}

#[test]
fn every_cut_point_is_safe_with_the_rollback_enabled_esp_idf_bootloader() {
    let cfg = CampaignConfig {
        bootloader: BootloaderKind::Rollback,
        ..CampaignConfig::small()
    };
    assert_clean(&campaign::run(&cfg).unwrap());
}

#[test]
fn every_cut_point_is_safe_with_a_single_boot_attempt_and_tiny_writes() {
    let cfg = CampaignConfig {
        max_attempts: 1,
        chunk_size: 97,
        ..CampaignConfig::small()
    };
    assert_clean(&campaign::run(&cfg).unwrap());
}

#[test]
fn every_cut_point_is_safe_with_real_686_kb_esp_idf_images() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/esp-idf-apps");
    let cfg = CampaignConfig {
        old_image: std::fs::read(dir.join("v1.bin")).unwrap(),
        new_image: std::fs::read(dir.join("v2.bin")).unwrap(),
        chunk_size: 4096,
        checkpoint_interval: airlift_engine::DEFAULT_CHECKPOINT_INTERVAL,
        // Keeps the debug-build run near a minute; the small images get both.
        late_tears: false,
        ..CampaignConfig::small()
    };
    assert!(cfg.new_image.len() > 680_000);
    let reports = campaign::run(&cfg).unwrap();
    let install = reports
        .iter()
        .find(|r| r.path.to_string() == "install")
        .unwrap();
    assert!(
        install.ops > 300,
        "every sector of the image is a cut point"
    );
    assert_clean(&reports);
}
