//! The power-cut campaign: every flash operation of every path, cut and torn.
#![allow(clippy::unwrap_used)]

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
        assert_eq!(r.torn_points, r.ops);
        assert_eq!(r.failures, 0, "{}: {:?}", r.path, r.examples);
    }
}

#[test]
fn every_cut_point_on_every_path_leaves_a_bootable_device_that_can_update() {
    let reports = campaign::run(&CampaignConfig::small()).unwrap();
    assert_clean(&reports);
}
