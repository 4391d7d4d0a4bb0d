//! The notes on flash: what a save keeps, how the history is bounded, and
//! that a power cut at any flash operation of any save leaves the notes
//! before it or after it, never anything else.
#![allow(clippy::unwrap_used)]

use airlift_client::notes::{
    HISTORY_MAX, HistoryEntry, NoteStore, Notes, Outcome, Pending, Source,
};
use airlift_client::records::{RecordError, RecordPair};
use airlift_client::settings::{Settings, SettingsStore};
use airlift_client::sim::{self, RecordPath};
use airlift_engine::Region;
use airlift_engine::sim::SimFlash;
use airlift_protocol::{EventKind, Reason};

const NVS: Region = Region::new(0x9000, 0x4000);

fn entry(n: u32, detail_len: usize) -> HistoryEntry {
    HistoryEntry {
        at: 1_700_000_000 + u64::from(n),
        version: format!("{n}.0.0").as_str().try_into().unwrap(),
        sha256: [n as u8; 32],
        source: Source::Pull,
        deployment: None,
        result: EventKind::Confirmed,
        reason: None,
        detail: "é".repeat(detail_len / 2).as_str().try_into().unwrap(),
    }
}

fn history(store: &NoteStore, flash: &mut SimFlash) -> Vec<HistoryEntry> {
    let mut out = Vec::new();
    store.history(flash, |h| out.push(h.clone())).unwrap();
    out
}

#[test]
fn notes_read_back_as_written_and_blank_flash_holds_none() {
    let store = NoteStore::new(NVS).unwrap();
    let mut flash = SimFlash::new(0x10000);
    assert_eq!(store.load(&mut flash).unwrap(), Notes::default());
    let notes = Notes {
        pending: Some(Pending {
            deployment: Some(u64::MAX),
            sha256: [0xAB; 32],
            version: "v2.0.0-rc.1+build.5 with spaces".try_into().unwrap(),
            source: Source::Server,
            trials_before: 3,
        }),
        last_result: Some(Outcome {
            deployment: None,
            kind: EventKind::RolledBack,
            reason: Some(Reason::BootFailed),
        }),
    };
    store
        .save(&mut flash, &notes, Some(&entry(1, 128)))
        .unwrap();
    assert_eq!(store.load(&mut flash).unwrap(), notes);
    assert_eq!(history(&store, &mut flash), [entry(1, 128)]);
    store.save(&mut flash, &Notes::default(), None).unwrap();
    assert_eq!(store.load(&mut flash).unwrap(), Notes::default());
    assert_eq!(
        history(&store, &mut flash),
        [entry(1, 128)],
        "history stays"
    );
}

#[test]
fn the_history_keeps_the_newest_entries_within_one_sector() {
    let store = NoteStore::new(NVS).unwrap();
    let mut flash = SimFlash::new(0x10000);
    let full = Notes {
        pending: Some(Pending {
            deployment: Some(1),
            sha256: [1; 32],
            version: "x".repeat(32).as_str().try_into().unwrap(),
            source: Source::Upload,
            trials_before: 0,
        }),
        last_result: Some(Outcome {
            deployment: Some(1),
            kind: EventKind::Failed,
            reason: Some(Reason::Download),
        }),
    };
    for n in 0..HISTORY_MAX as u32 + 5 {
        store.save(&mut flash, &full, Some(&entry(n, 128))).unwrap();
    }
    let kept: Vec<u64> = history(&store, &mut flash).iter().map(|h| h.at).collect();
    let expected: Vec<u64> = (5..HISTORY_MAX as u64 + 5)
        .map(|n| 1_700_000_000 + n)
        .collect();
    assert_eq!(kept, expected, "the oldest went first");
    assert_eq!(store.load(&mut flash).unwrap(), full);
}

#[test]
fn a_record_region_needs_two_sectors() {
    assert_eq!(
        RecordPair::new(Region::new(0x9000, 0x1000), 1),
        Err(RecordError::TooSmall { size: 0x1000 })
    );
    assert_eq!(
        NoteStore::new(Region::new(0x9000, 0x1000)).map(|_| ()),
        Err(RecordError::TooSmall { size: 0x1000 })
    );
}

#[test]
fn settings_read_back_as_provisioned_beside_the_notes_and_keep_secrets_out_of_debug() {
    let mut flash = SimFlash::new(0x10000);
    let settings = SettingsStore::new(NVS).unwrap();
    assert_eq!(
        settings.load(&mut flash).unwrap(),
        None,
        "never provisioned"
    );
    let s = Settings {
        wifi_ssid: "lab".try_into().unwrap(),
        wifi_password: "correct horse battery staple".try_into().unwrap(),
        server: "https://updates.example.com".try_into().unwrap(),
        token: "a".repeat(128).as_str().try_into().unwrap(),
        max_attempts: 5,
        tls_pin: Some([0xab; 32]),
        require_https: true,
        name: "kitchen".try_into().unwrap(),
        page_password: Some([9; 32]),
        time_server: "".try_into().unwrap(),
    };
    settings.save(&mut flash, &s).unwrap();
    let notes = NoteStore::new(NVS).unwrap();
    notes
        .save(&mut flash, &Notes::default(), Some(&entry(1, 20)))
        .unwrap();
    assert_eq!(settings.load(&mut flash).unwrap(), Some(s.clone()));
    assert_eq!(history(&notes, &mut flash), [entry(1, 20)]);
    let shown = format!("{s:?}");
    assert!(
        !shown.contains("horse") && !shown.contains("aaaa"),
        "{shown}"
    );
    assert!(shown.contains("updates.example.com"), "{shown}");
    assert!(!shown.contains("[9, 9"), "{shown}");
    assert_eq!(s.time_server(), "pool.ntp.org");
    assert_eq!(
        SettingsStore::new(Region::new(0x9000, 0x2000)).map(|_| ()),
        Err(RecordError::TooSmall { size: 0x2000 }),
        "the settings need sectors 2 and 3"
    );
}

#[test]
fn power_cut_at_every_operation_of_every_record_write_leaves_the_old_or_the_new_records() {
    let reports = sim::run().unwrap();
    let names: Vec<&str> = reports.iter().map(|r| r.path.name()).collect();
    assert_eq!(
        names,
        RecordPath::ALL.map(RecordPath::name),
        "every write path of the notes and the settings"
    );
    for r in &reports {
        println!(
            "{:<20} ops {:>3} cut {:>3} torn {:>3} failures {}",
            r.path.name(),
            r.ops,
            r.cut_points,
            r.torn_points,
            r.failures
        );
        assert!(r.ops >= 3, "an erase, the items, the header: {r:?}");
        assert_eq!(r.cut_points, r.ops);
        assert_eq!(r.torn_points, 2 * r.ops);
        assert_eq!(r.failures, 0, "{:#?}", r.examples);
    }
}

#[test]
fn settings_a_device_cannot_work_with_are_refused_before_provisioning() {
    use airlift_client::settings::SettingsError;
    let check = |ssid: &str, password: &str, server: &str, token: &str, expected| {
        let s = Settings {
            wifi_ssid: ssid.try_into().unwrap(),
            wifi_password: password.try_into().unwrap(),
            server: server.try_into().unwrap(),
            token: token.try_into().unwrap(),
            ..Settings::default()
        };
        assert_eq!(s.check(), expected, "{ssid:?} {password:?} {server:?}");
    };
    check("", "", "", "", Ok(()));
    check("lab", "", "", "", Ok(()));
    check("lab", "12345678", "http://10.0.0.2:8080", "t", Ok(()));
    check("lab", &"ab".repeat(32), "https://x.example", "t", Ok(()));
    check("lab", "1234567", "", "", Err(SettingsError::WifiPassword));
    check(
        "lab",
        &"x".repeat(64),
        "",
        "",
        Err(SettingsError::WifiPassword),
    );
    check("", "12345678", "", "", Err(SettingsError::NoSsid));
    check("", "", "ftp://x", "t", Err(SettingsError::ServerScheme));
    check("", "", "http://x", "", Err(SettingsError::NoToken));

    // HTTPS: required of an http:// server, or asked of a device that
    // speaks plain HTTP only (the firmware, for now).
    let mut s = Settings {
        server: "http://10.0.0.2:8080".try_into().unwrap(),
        token: "t".try_into().unwrap(),
        ..Settings::default()
    };
    assert_eq!(s.check_for(false), Ok(()));
    s.require_https = true;
    assert_eq!(s.check(), Err(SettingsError::PlainHttp));
    s.server = "https://fleet.example".try_into().unwrap();
    assert_eq!(s.check_for(true), Ok(()));
    assert_eq!(s.check_for(false), Err(SettingsError::NoTls));
    s.require_https = false;
    assert_eq!(s.check_for(false), Err(SettingsError::NoTls));
    s.server = "http://10.0.0.2:8080".try_into().unwrap();
    s.tls_pin = Some([1; 32]);
    assert_eq!(s.check_for(false), Err(SettingsError::NoTls));
    assert!(SettingsError::NoTls.to_string().contains("plain HTTP"));
    assert_eq!(
        airlift_client::settings::field::<4>("name", "kitchen"),
        Err(SettingsError::TooLong {
            field: "name",
            max: 4
        })
    );
}
