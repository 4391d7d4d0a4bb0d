//! Structured seeds: valid inputs for each target, made in code, that the
//! mutator starts from (alongside the committed corpus files).

use airlift_engine::sim::{self, SimFlash};
use airlift_engine::{AppSlot, Config, Device};
use airlift_format::image::{Chip, ImageBuilder};
use airlift_format::manifest::{self, SigningKey, base64_encode};
use airlift_format::otadata::{OtaSelectEntry, OtaState};
use airlift_format::partition::{self, AIRLIFT_DEFAULT, DEFAULT_TWO_OTA, TABLE_MAX_LEN};

use crate::Target;

/// The seed of the signing key the manifest target trusts.
pub const SEED: [u8; 32] = [0x46; 32];

fn table_bytes(entries: &[partition::PartitionEntry]) -> Vec<u8> {
    let mut out = [0xFFu8; TABLE_MAX_LEN];
    match partition::build(entries, &mut out) {
        Ok(_) => out.to_vec(),
        Err(_) => Vec::new(),
    }
}

/// Valid inputs for `target`.
pub fn seeds(target: Target) -> Vec<Vec<u8>> {
    match target {
        Target::Image => {
            let app = ImageBuilder::new(Chip::Esp32c3)
                .app("fuzz", "1.0.0")
                .segment(0x3FC8_0000, vec![1, 2, 3, 4])
                .filler(0x4200_0020, 300)
                .build();
            let bare = ImageBuilder::new(Chip::Esp32)
                .hash_appended(false)
                .filler(0x3FFB_0000, 64)
                .filler(0x4008_0000, 20)
                .build();
            [app, bare].into_iter().map(|i| with_control(0, &i)).collect()
        }
        Target::PartitionTable | Target::EngineLayout => {
            vec![table_bytes(&AIRLIFT_DEFAULT), table_bytes(&DEFAULT_TWO_OTA)]
        }
        Target::PartitionCsv => vec![
            b"# Name, Type, SubType, Offset, Size, Flags\n\
              nvs, data, nvs, 0x9000, 0x4000,\n\
              otadata, data, ota, 0xd000, 0x2000,\n\
              phy_init, data, phy, 0xf000, 0x1000,\n\
              ota_0, app, ota_0, 0x10000, 1M,\n\
              ota_1, app, ota_1, , 1M,\n\
              airlift, data, 0x40, , 64K,\n"
                .to_vec(),
            b"nvs,data,nvs,,24K\nfactory,app,factory,,1M,encrypted\n".to_vec(),
        ],
        Target::Otadata => {
            let mut v = OtaSelectEntry::new(3, OtaState::Valid).encode().to_vec();
            v.extend_from_slice(&OtaSelectEntry::new(4, OtaState::Undefined).encode());
            v.extend_from_slice(&[2, 1]);
            let mut blank = [0xFFu8; 64].to_vec();
            blank.extend_from_slice(&[2, 0]);
            vec![v, blank]
        }
        Target::Manifest => {
            let key = SigningKey::from_bytes(&SEED);
            let image = sim::test_image("1.2.3", 4, 2000);
            let signed = sim::sign_image(&image, &key, None, None).unwrap_or_default();
            vec![signed]
        }
        Target::KeyFiles => {
            let public = manifest::public_key_from_seed(&SEED);
            vec![
                manifest::format_public_key_file(&public).into_bytes(),
                manifest::format_secret_key_file(&SEED).into_bytes(),
                b"aGVsbG8gd29ybGQ=".to_vec(),
            ]
        }
        Target::Protocol => [
            (0u8, &br#"{"chip_id":5,"running":{"version":"1.0.0","sha256":"ab12","security_version":0,"slot":"ota_0"},"state":"idle","boot_count":0,"last_result":{"deployment":3,"kind":"failed","reason":"verification","detail":"x"}}"#[..]),
            (1, br#"{"poll_seconds":60,"update":{"deployment":7,"manifest":"QUxNMQ==","url":"/api/v1/artifacts/ab","size":1000,"sha256":"ab","version":"2.0.0"}}"#),
            (1, br#"{"poll_seconds":5,"update":null}"#),
            (2, br#"[{"deployment":1,"kind":"downloading","age_ms":30},{"kind":"failed","reason":"flash","detail":"caf\u00e9 \"q\""}]"#),
            (3, br#"{"accepted":[true,false]}"#),
            (4, br#"{"secret":"s","name":"dev-1","tags":["lab","roof"]}"#),
            (5, br#"{"error":{"code":"token_revoked","message":"this device was revoked: \"kitchen\" needs a new token"}}"#),
        ]
        .into_iter()
        .map(|(c, json)| with_control(c, json))
        .collect(),
        Target::DataPartition => data_partition_seeds(),
        Target::DevicePage => {
            let basic = format!(
                "Basic {}",
                base64_encode(format!("admin:{}", crate::targets::PAGE_PASSWORD).as_bytes())
            );
            let manifest = {
                let key = SigningKey::from_bytes(&SEED);
                let image = sim::test_image("1.2.3", 4, 2000);
                base64_encode(&sim::sign_image(&image, &key, None, None).unwrap_or_default())
            };
            let mut gate = vec![4u8];
            for n in 0..120u8 {
                gate.extend_from_slice(&[n % 3, n % 7]);
            }
            vec![
                with_control(0, format!("Bearer {}", crate::targets::PAGE_PASSWORD).as_bytes()),
                with_control(0, basic.as_bytes()),
                with_control(0, b"Bearer wrong"),
                with_control(1, manifest.as_bytes()),
                with_control(
                    2,
                    br#"{"url":"http://10.0.0.2:8080/v2.bin","manifest_url":"http://10.0.0.2:8080/v2.bin.manifest"}"#,
                ),
                with_control(3, b"POST /api/upload"),
                with_control(3, b"GET /"),
                gate,
            ]
        }
    }
}

fn with_control(control: u8, bytes: &[u8]) -> Vec<u8> {
    let mut v = vec![control];
    v.extend_from_slice(bytes);
    v
}

/// The data partition of a device that went through an update: keys,
/// images, an activation, trial boots, a confirmation, boot records.
fn data_partition_seeds() -> Vec<Vec<u8>> {
    let key = SigningKey::from_bytes(&SEED);
    let first = sim::test_image("1.0.0", 0, 3000);
    let next = sim::test_image("2.0.0", 1, 9000);
    let Ok(layout) = sim::layout_of(&AIRLIFT_DEFAULT) else {
        return Vec::new();
    };
    let public = manifest::public_key_from_seed(&SEED);
    let Ok(mut flash) = sim::provision(&AIRLIFT_DEFAULT, sim::FLASH_SIZE, &first, &[public]) else {
        return Vec::new();
    };
    let blob = sim::sign_image(&next, &key, None, None).unwrap_or_default();
    let run = |flash: &mut SimFlash| -> Option<()> {
        let mut dev = Device::open(&mut *flash, Config::default()).ok()?;
        dev.boot(Some(AppSlot::Ota(0)), 10).ok()?;
        let mut s = dev.begin(&blob).ok()?;
        s.write(&next[..6000]).ok()?;
        drop(s);
        let mut s = dev.begin(&blob).ok()?;
        let from = s.resume_offset() as usize;
        s.write(&next[from..]).ok()?;
        s.finish().ok()?;
        let mut dev = Device::open(&mut *flash, Config::default()).ok()?;
        dev.boot(Some(AppSlot::Ota(1)), 11).ok()?;
        dev.confirm().ok()?;
        Some(())
    };
    let _ = run(&mut flash);
    let start = layout.data.offset as usize;
    // The first 16 KiB: what the fuzz rig's data partition holds.
    vec![flash.bytes()[start..start + 0x4000].to_vec()]
}
