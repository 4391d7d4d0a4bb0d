//! Time on a device that learns it once online: SNTP's bytes, the wall
//! clock, when to ask, and the records written before the time was known
//! (marked undated, then dated when the time arrives).
#![allow(clippy::unwrap_used)]

mod common;

use airlift_client::notes::NoteStore;
use airlift_client::sntp::{self, ServerTime, SntpError};
use airlift_client::time::{SyncSchedule, UNDATED, WallClock, date, stamp, wall_secs};
use airlift_client::{BootStep, Client, Clock};
use airlift_engine::sim::bootloader::{self, BootloaderKind};
use airlift_protocol::EventKind;
use common::*;

const NTP_UNIX: u64 = 2_208_988_800;

/// A server's answer: leap, version 4, mode, stratum; originate `nonce`;
/// transmit `secs.fraction` (NTP era 0 seconds).
fn answer(leap: u8, mode: u8, stratum: u8, nonce: u64, secs: u32, fraction: u32) -> [u8; 48] {
    let mut p = [0u8; 48];
    p[0] = (leap << 6) | (4 << 3) | mode;
    p[1] = stratum;
    p[24..32].copy_from_slice(&nonce.to_be_bytes());
    p[40..44].copy_from_slice(&secs.to_be_bytes());
    p[44..48].copy_from_slice(&fraction.to_be_bytes());
    p
}

#[test]
fn the_sntp_request_is_a_version_4_client_packet_tagged_with_the_nonce() {
    let p = sntp::request(0x0102_0304_0506_0708);
    assert_eq!(p.len(), sntp::PACKET_LEN);
    assert_eq!(p[0], 0x23, "leap 0, version 4, mode 3");
    assert!(p[1..40].iter().all(|&b| b == 0));
    assert_eq!(p[40..48], [1, 2, 3, 4, 5, 6, 7, 8]);
}

#[test]
fn sntp_answers_are_checked_then_read_as_unix_milliseconds() {
    let nonce = 0xdead_beef_0000_0001;
    let jan_2024 = (1_704_067_200 + NTP_UNIX) as u32;
    let check = |p: &[u8], expected: Result<ServerTime, SntpError>| {
        assert_eq!(sntp::parse(p, nonce), expected, "{p:?}");
    };
    let ok = |unix_ms| Ok(ServerTime { unix_ms });
    check(&answer(0, 4, 2, nonce, jan_2024, 0), ok(1_704_067_200_000));
    check(
        &answer(0, 4, 1, nonce, jan_2024, 1 << 31),
        ok(1_704_067_200_500),
    );
    check(&answer(1, 4, 15, nonce, jan_2024, 0), ok(1_704_067_200_000));
    // After NTP's 32-bit seconds wrap in February 2036 (era 1).
    check(
        &answer(0, 4, 2, nonce, 1000, 0),
        ok(((1u64 << 32) + 1000 - NTP_UNIX) * 1000),
    );
    check(
        &answer(0, 4, 2, nonce ^ 1, jan_2024, 0),
        Err(SntpError::NotOurs),
    );
    check(
        &answer(0, 3, 2, nonce, jan_2024, 0),
        Err(SntpError::NotAServer(3)),
    );
    check(
        &answer(3, 4, 2, nonce, jan_2024, 0),
        Err(SntpError::Unsynchronised),
    );
    check(
        &answer(0, 4, 0, nonce, jan_2024, 0),
        Err(SntpError::Unsynchronised),
    );
    check(
        &answer(0, 4, 16, nonce, jan_2024, 0),
        Err(SntpError::Unsynchronised),
    );
    check(&answer(0, 4, 2, nonce, 0, 0), Err(SntpError::NoTime));
    check(
        &answer(0, 4, 2, nonce, jan_2024, 0)[..47],
        Err(SntpError::Short(47)),
    );
}

#[test]
fn the_wall_clock_runs_on_from_the_time_servers_answer() {
    let mut wall = WallClock::new();
    assert!(!wall.is_set());
    assert_eq!(
        wall.clock(5_000),
        Clock {
            now_ms: 5_000,
            unix_secs: 0
        }
    );
    wall.set(5_000, 1_704_067_200_700);
    assert_eq!(wall.clock(5_000).unix_secs, 1_704_067_200);
    assert_eq!(wall.clock(5_300).unix_secs, 1_704_067_201);
    assert_eq!(wall.clock(65_000).unix_secs, 1_704_067_260);
}

#[test]
fn a_time_server_is_asked_at_once_then_after_a_minute_on_failure_and_daily_on_success() {
    let mut s = SyncSchedule::new();
    assert!(s.due(0));
    s.done(1_000, false);
    assert!(!s.due(60_999));
    assert_eq!(s.wait_ms(31_000), 30_000);
    assert!(s.due(61_000));
    s.done(61_000, true);
    assert!(!s.due(61_000 + 24 * 3_600_000 - 1));
    assert!(s.due(61_000 + 24 * 3_600_000));
}

#[test]
fn stored_times_are_unix_seconds_or_undated_uptimes_dated_later() {
    let known = Clock {
        now_ms: 9_000,
        unix_secs: 1_800_000_000,
    };
    let unknown = Clock {
        now_ms: 9_000,
        unix_secs: 0,
    };
    assert_eq!(stamp(known), 1_800_000_000);
    assert_eq!(stamp(unknown), UNDATED | 9_000);
    assert_eq!(wall_secs(stamp(known)), Some(1_800_000_000));
    assert_eq!(wall_secs(stamp(unknown)), None);
    assert_eq!(
        wall_secs(0),
        None,
        "written by an earlier version without a clock"
    );
    let later = Clock {
        now_ms: 69_000,
        unix_secs: 1_800_000_000,
    };
    assert_eq!(date(stamp(unknown), later), Some(1_800_000_000 - 60));
    assert_eq!(date(stamp(known), later), None, "dated already");
    assert_eq!(
        date(stamp(unknown), unknown),
        None,
        "the time is still unknown"
    );
}

/// A power-on before the time is known (the firmware's boot guard runs
/// before the network is up).
fn power_on_untimed(rig: &mut Rig, now_ms: u64) -> (Client, BootStep) {
    rig.flash.power_cycle();
    let boot = bootloader::boot(&mut rig.flash, &rig.layout, BootloaderKind::Plain).unwrap();
    let (slot, info) = boot.booted.unwrap();
    let mut client = Client::new(rig.config, NoteStore::new(NVS).unwrap());
    let clock = Clock {
        now_ms,
        unix_secs: 0,
    };
    let step = client
        .boot(&mut rig.dev(), boot.selected, slot, &info, clock, &mut ())
        .unwrap();
    (client, step)
}

fn history(rig: &mut Rig) -> Vec<(EventKind, Option<u64>)> {
    let mut out = Vec::new();
    NoteStore::new(NVS)
        .unwrap()
        .history(&mut rig.flash, |h| out.push((h.result, h.unix_secs())))
        .unwrap();
    out
}

fn last_boot_time(rig: &mut Rig) -> u64 {
    let mut last = None;
    rig.dev().boot_log(|r| last = Some(r.timestamp)).unwrap();
    last.unwrap()
}

/// Installs 2.0.0 and lets it fail its three trial boots without a clock:
/// the boot after them runs 1.0.0 again, and its client settles the
/// rollback before it knows the time.
fn roll_back_untimed(rig: &mut Rig) -> Client {
    let mut lines = Lines::default();
    let (mut client, _) = rig.power_on(&mut lines);
    let new = image("2.0.0");
    rig.install(&mut client, &update(1, &new), &new);
    loop {
        let (client, step) = power_on_untimed(rig, 300);
        if let BootStep::Run { confirmed: true } = step {
            return client;
        }
    }
}

#[test]
fn a_rollback_settled_before_the_time_is_known_is_dated_when_it_is() {
    let mut rig = Rig::new();
    let mut client = roll_back_untimed(&mut rig);
    assert_eq!(history(&mut rig), [(EventKind::RolledBack, None)]);
    assert_eq!(last_boot_time(&mut rig), 0, "the boot is not dated yet");

    // A minute later a time server answers.
    let now = Clock {
        now_ms: 60_300,
        unix_secs: 1_800_000_000,
    };
    client.time_known(&mut rig.dev(), now, &mut ()).unwrap();
    assert_eq!(
        history(&mut rig),
        [(EventKind::RolledBack, Some(1_800_000_000 - 60))]
    );
    assert_eq!(last_boot_time(&mut rig), 1_800_000_000 - 60);

    // Nothing is dated twice.
    let later = Clock {
        now_ms: 120_300,
        unix_secs: 1_800_000_060,
    };
    client.time_known(&mut rig.dev(), later, &mut ()).unwrap();
    assert_eq!(
        history(&mut rig),
        [(EventKind::RolledBack, Some(1_800_000_000 - 60))]
    );
    assert_eq!(last_boot_time(&mut rig), 1_800_000_000 - 60);
}

#[test]
fn what_a_power_on_without_the_time_wrote_stays_undated_when_a_later_one_learns_it() {
    let mut rig = Rig::new();
    roll_back_untimed(&mut rig);
    // This power-on never learns the time; the next one does.
    let (mut client, _) = power_on_untimed(&mut rig, 300);
    let now = Clock {
        now_ms: 10_300,
        unix_secs: 1_800_000_000,
    };
    client.time_known(&mut rig.dev(), now, &mut ()).unwrap();
    assert_eq!(history(&mut rig), [(EventKind::RolledBack, None)]);
    let mut times = Vec::new();
    rig.dev().boot_log(|r| times.push(r.timestamp)).unwrap();
    let n = times.len();
    assert_eq!(times[n - 2..], [0, 1_800_000_000 - 10]);
}
