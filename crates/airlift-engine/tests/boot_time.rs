//! Boots logged before the device knows the time (the firmware's boot guard
//! runs before the network is up) are dated once it does, and only those.
#![allow(clippy::unwrap_used)]

mod common;

use airlift_engine::sim::{self, BootloaderKind, SimFlash};
use airlift_engine::{BootDecision, Device};
use common::*;

/// A power-on whose boot guard runs without a time; `dated` is the time the
/// device learns later in the same power-on, if it does.
fn power_on_undated(flash: &mut SimFlash, dated: Option<u64>) -> Vec<u64> {
    flash.power_cycle();
    let booted = sim::run_bootloader(flash, &layout(), BootloaderKind::Plain)
        .booted
        .unwrap();
    let mut dev = Device::open(&mut *flash, config(3)).unwrap();
    assert!(matches!(
        dev.boot(Some(booted), 0).unwrap(),
        BootDecision::Run { .. }
    ));
    if let Some(t) = dated {
        dev.date_boot(t).unwrap();
    }
    let mut times = Vec::new();
    dev.boot_log(|r| times.push(r.timestamp)).unwrap();
    times
}

#[test]
fn a_boot_logged_without_a_time_is_dated_when_the_time_is_known() {
    let mut flash = fresh();
    let times = power_on_undated(&mut flash, Some(1_800_000_000));
    assert_eq!(times.last(), Some(&1_800_000_000));
}

#[test]
fn a_power_on_that_never_learnt_the_time_stays_undated_beside_dated_ones() {
    let mut flash = fresh();
    power_on_undated(&mut flash, None);
    power_on_undated(&mut flash, Some(1_800_000_100));
    let times = power_on_undated(&mut flash, None);
    let n = times.len();
    assert_eq!(times[n - 3..], [0, 1_800_000_100, 0]);
    assert_eq!(times[0], 1_700_000_000, "fresh()'s boot kept its own time");
}

#[test]
fn a_boot_logged_with_a_time_keeps_it() {
    let mut flash = fresh();
    flash.power_cycle();
    let mut dev = Device::open(&mut flash, config(3)).unwrap();
    dev.boot(None, 1_700_000_500).unwrap();
    dev.date_boot(1_800_000_000).unwrap();
    let mut last = 0;
    dev.boot_log(|r| last = r.timestamp).unwrap();
    assert_eq!(last, 1_700_000_500);
}

#[test]
fn boots_stay_dated_across_the_data_partitions_rotation() {
    let mut flash = fresh();
    // Enough power-ons (two records each) to rotate through every sector.
    for i in 0..400u64 {
        power_on_undated(&mut flash, Some(1_800_000_000 + i));
    }
    let times = power_on_undated(&mut flash, Some(1_900_000_000));
    assert!(times.len() > 10);
    assert!(
        times.iter().all(|&t| t >= 1_800_000_000),
        "every kept boot is dated: {times:?}"
    );
    assert!(times.windows(2).all(|w| w[0] < w[1]), "in order: {times:?}");
}
