//! The agent's building blocks over a provisioned flash, without a server:
//! the simulated bootloader, the report, the copy-on-write flash's memory
//! use, and `--behave` rules.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use airlift_agent::device::{Behaviour, Behaviours};
use airlift_agent::flash::{CowFlash, SECTOR, SectorPool};
use airlift_agent::provision::flash_image;
use airlift_agent::report::report;
use airlift_engine::sim::bootloader::{self, Boot, BootloaderKind};
use airlift_engine::sim::{sign_image, test_image};
use airlift_engine::{AppSlot, BootDecision, Config, Device, Layout};
use airlift_format::image::ImageInfo;
use airlift_format::manifest::{SigningKey, key_id, public_key_from_seed};
use airlift_format::partition::{AIRLIFT_DEFAULT, TABLE_OFFSET};
use embedded_storage::nor_flash::{NorFlash, ReadNorFlash};

const SEED: [u8; 32] = [9; 32];

/// One boot with the simulated bootloader every simulation uses (the plain one).
fn run_bootloader(
    flash: &mut CowFlash,
    layout: &Layout,
) -> Result<Boot<ImageInfo>, airlift_engine::Error> {
    bootloader::boot(flash, layout, BootloaderKind::Plain)
}

fn base(v1: &[u8]) -> Arc<[u8]> {
    flash_image(&AIRLIFT_DEFAULT, v1, &[public_key_from_seed(&SEED)])
        .unwrap()
        .into()
}

fn layout(flash: &mut CowFlash) -> Layout {
    Layout::read(flash, TABLE_OFFSET).unwrap()
}

/// Installs `image` signed with the test key, resets, boots and confirms.
fn update(flash: &mut CowFlash, image: &[u8]) {
    let blob = sign_image(image, &SigningKey::from_bytes(&SEED), None, None).unwrap();
    {
        let mut dev = Device::open(&mut *flash, Config::default()).unwrap();
        let mut install = dev.begin(&blob).unwrap();
        for chunk in image.chunks(1500) {
            install.write(chunk).unwrap();
        }
        install.finish().unwrap();
    }
    let l = layout(flash);
    let booted = run_bootloader(flash, &l).unwrap().booted.unwrap().0;
    let mut dev = Device::open(&mut *flash, Config::default()).unwrap();
    let decision = dev.boot(Some(booted), 1).unwrap();
    assert!(matches!(
        decision,
        BootDecision::Run {
            confirmed: false,
            ..
        }
    ));
    assert!(dev.confirm().unwrap());
}

#[test]
fn a_device_that_updated_holds_only_the_new_image_and_a_few_sectors_privately() {
    let v1 = test_image("1.0.0", 0, 40_000);
    let v2 = test_image("2.0.0", 0, 100_000);
    let shared = base(&v1);
    let mut flash = CowFlash::new(shared.clone());
    update(&mut flash, &v2);
    let private = flash.private_bytes();
    let image_sectors = v2.len().div_ceil(SECTOR) * SECTOR;
    println!(
        "private bytes after one update: {private} (image {})",
        v2.len()
    );
    // otadata (2), data partition records, at most a few more sectors.
    assert!(private >= image_sectors, "{private}");
    assert!(private <= image_sectors + 8 * SECTOR, "{private}");
    // The base is untouched and still shared.
    assert_eq!(Arc::strong_count(&shared), 2);
    let mut other = CowFlash::new(shared);
    assert_eq!(other.private_bytes(), 0);
    let l = layout(&mut other);
    assert_eq!(
        run_bootloader(&mut other, &l).unwrap().booted.unwrap().0,
        AppSlot::Ota(0)
    );
}

#[test]
fn devices_of_one_pool_that_installed_the_same_release_hold_it_once() {
    let v1 = test_image("1.0.0", 0, 40_000);
    let v2 = test_image("2.0.0", 0, 300_000);
    let shared = base(&v1);
    let pool = Arc::new(SectorPool::new());
    let mut flashes: Vec<CowFlash> = (0..3)
        .map(|_| CowFlash::with_pool(shared.clone(), pool.clone()))
        .collect();
    for flash in &mut flashes {
        update(flash, &v2);
    }
    for flash in &mut flashes {
        let private = flash.private_bytes();
        println!(
            "private bytes after the update: {private} (image {})",
            v2.len()
        );
        // otadata, data-partition records: a few sectors, not the image.
        assert!(private <= 8 * SECTOR, "{private}");
        let l = layout(flash);
        let (slot, info) = run_bootloader(flash, &l).unwrap().booted.unwrap();
        assert_eq!(
            (slot, info.app_desc.unwrap().version().to_owned()),
            (AppSlot::Ota(1), "2.0.0".to_owned())
        );
    }
}

#[tokio::test]
async fn a_device_running_a_fallback_image_says_so_and_names_the_security_version() {
    use std::sync::Mutex;

    use airlift_agent::device::{Agent, AgentConfig, Happening};
    use airlift_protocol::{EventKind, Reason};

    let v1 = test_image("1.0.0", 0, 40_000);
    let v2 = test_image("2.0.0", 1, 60_000);
    let mut flash = CowFlash::new(base(&v1));
    update(&mut flash, &v2);
    // v2 (security version 1) is confirmed in ota_1: the minimum is 1 now.
    // Then a byte of v2 goes bad: the bootloader falls back to v1 in ota_0.
    let ota_1 = layout(&mut flash).slot(AppSlot::Ota(1)).unwrap();
    let at = ota_1.offset + 0x2000;
    let mut before = [0u8; 4];
    flash.read(at, &mut before).unwrap();
    assert_ne!(before, [0; 4], "the test needs set bits to clear");
    flash.write(at, &[0; 4]).unwrap();
    let l = layout(&mut flash);
    let boot = run_bootloader(&mut flash, &l).unwrap();
    assert_eq!(
        (boot.selected, boot.booted.unwrap().0),
        (AppSlot::Ota(1), AppSlot::Ota(0))
    );

    let heard: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = heard.clone();
    let agent = Agent::new(flash, AgentConfig::default(), reqwest::Client::new())
        .unwrap()
        .observe(Arc::new(move |_, what| match what {
            Happening::Log(line) => log.lock().unwrap().push((*line).to_owned()),
            Happening::Event(EventKind::Booted, Some(Reason::Verification)) => {
                log.lock().unwrap().push("EVENT".to_owned())
            }
            _ => {}
        }));
    let task = tokio::spawn(agent.run());
    for _ in 0..200 {
        if heard.lock().unwrap().iter().any(|l| l == "EVENT") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    task.abort();
    let heard = heard.lock().unwrap();
    let line = heard
        .iter()
        .find(|l| l.contains("could not start"))
        .unwrap_or_else(|| panic!("no fallback report in {heard:#?}"));
    assert!(line.contains("could not start ota_1"), "{line}");
    assert!(
        line.contains("started") && line.contains("1.0.0 from ota_0"),
        "{line}"
    );
    assert!(
        line.contains("security version 0 is below the device's minimum 1"),
        "{line}"
    );
    assert!(heard.iter().any(|l| l == "EVENT"), "{heard:#?}");
}

#[test]
fn bootloader_starts_the_selected_slot_and_falls_back_when_it_is_corrupt() {
    let v1 = test_image("1.0.0", 0, 20_000);
    let v2 = test_image("2.0.0", 0, 20_000);
    let mut flash = CowFlash::new(base(&v1));
    update(&mut flash, &v2);
    let l = layout(&mut flash);
    let boot = run_bootloader(&mut flash, &l).unwrap();
    assert_eq!(boot.selected, AppSlot::Ota(1));
    assert_eq!(boot.booted.unwrap().0, AppSlot::Ota(1));
    // Clear bits in the middle of ota_1's image: it no longer verifies.
    let at = l.slots[1].offset + 8192;
    flash.write(at, &[0, 0, 0, 0]).unwrap();
    let boot = run_bootloader(&mut flash, &l).unwrap();
    assert_eq!(boot.selected, AppSlot::Ota(1));
    assert_eq!(
        boot.booted.unwrap().0,
        AppSlot::Ota(0),
        "falls back to ota_0"
    );
}

#[test]
fn report_shows_the_table_otadata_slots_keys_and_boot_log() {
    let v1 = test_image("1.0.0", 0, 20_000);
    let v2 = test_image("2.0.0", 0, 30_000);
    let mut flash = CowFlash::new(base(&v1));
    let fresh = report(&mut flash, 3).unwrap();
    let labels: Vec<&str> = fresh.partitions.iter().map(|p| p.label.as_str()).collect();
    assert_eq!(
        labels,
        [
            "nvs", "otadata", "phy_init", "factory", "ota_0", "ota_1", "airlift"
        ]
    );
    assert_eq!(fresh.otadata.selected, "ota_0");
    assert_eq!(fresh.otadata.copies[0].seq, 1);
    let slots: Vec<(&str, &str)> = fresh
        .slots
        .iter()
        .map(|s| (s.slot.as_str(), s.content))
        .collect();
    assert_eq!(
        slots,
        [("factory", "empty"), ("ota_0", "image"), ("ota_1", "empty")]
    );
    assert_eq!(fresh.slots[1].version.as_deref(), Some("1.0.0"));
    assert_eq!(
        fresh.engine.trusted_keys,
        [airlift_agent::hex(&key_id(&public_key_from_seed(&SEED))).as_str()]
    );
    assert!(fresh.boot_log.is_empty());

    update(&mut flash, &v2);
    let after = report(&mut flash, 3).unwrap();
    assert_eq!(after.otadata.selected, "ota_1");
    assert_eq!(after.slots[2].version.as_deref(), Some("2.0.0"));
    assert!(after.slots[2].valid);
    assert_eq!(after.engine.trial_slot, None);
    let log: Vec<(&str, &str)> = after
        .boot_log
        .iter()
        .map(|b| (b.version.as_str(), b.outcome))
        .collect();
    assert_eq!(log, [("2.0.0", "trial")]);
}

#[test]
fn behave_rules_parse_and_unknown_versions_are_healthy() {
    fn check(rule: &str, expected: Result<(&str, Behaviour), &str>) {
        let got = Behaviours::parse_rule(rule);
        match expected {
            Ok((v, b)) => assert_eq!(got, Ok((v.to_owned(), b)), "{rule}"),
            Err(message) => assert_eq!(got, Err(message.to_owned()), "{rule}"),
        }
    }
    check("2.0.0=crash", Ok(("2.0.0", Behaviour::Crash)));
    check("v1=hang", Ok(("v1", Behaviour::Hang)));
    check("a=b=healthy", Ok(("a=b", Behaviour::Healthy)));
    check("2.0.0", Err("\"2.0.0\" is not VERSION=healthy|crash|hang"));
    check(
        "2.0.0=slow",
        Err("unknown behaviour \"slow\": expected healthy, crash or hang"),
    );
    let rules = Behaviours(vec![
        ("2".into(), Behaviour::Crash),
        ("2".into(), Behaviour::Hang),
    ]);
    assert_eq!(rules.of("2"), Behaviour::Hang, "the last rule wins");
    assert_eq!(rules.of("3"), Behaviour::Healthy);
}

#[test]
fn provisioning_refuses_firmware_that_would_not_boot() {
    let mut broken = test_image("1.0.0", 0, 20_000);
    broken[5000] ^= 1;
    let err = flash_image(&AIRLIFT_DEFAULT, &broken, &[]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "firmware's checksum or appended sha-256 digest is wrong: it would not boot"
    );
    let err = flash_image(&AIRLIFT_DEFAULT, b"not an image", &[]).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("firmware is not an ESP app image"),
        "{err}"
    );
}
