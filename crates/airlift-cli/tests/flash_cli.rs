//! `airlift flash create|inspect` as a user runs them.
#![allow(clippy::unwrap_used)]

mod agent_common;

use std::process::Command;

use agent_common::*;

#[test]
fn flash_create_lays_out_an_esp32_flash_that_inspect_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = d.join("release");
    let generated = airlift(&["keys", "generate", key.to_str().unwrap()]);
    let key_id = String::from_utf8(generated.stdout).unwrap()[7..23].to_owned();
    let fw_bytes = image("1.4.2", 30_000);
    let fw = write(d, "fw.bin", &fw_bytes);
    let flash = d.join("dev.flash");
    create_flash(&flash, &fw, &d.join("release.pub"));
    assert_eq!(std::fs::metadata(&flash).unwrap().len(), 4 * 1024 * 1024);
    let bytes = std::fs::read(&flash).unwrap();
    assert_eq!(
        &bytes[0x8000..0x8002],
        &[0xAA, 0x50],
        "partition table at 0x8000"
    );
    assert_eq!(
        &bytes[0x110000..0x110000 + fw_bytes.len()],
        &fw_bytes[..],
        "firmware in ota_0"
    );
    assert!(
        bytes[..0x8000].iter().all(|&b| b == 0xFF),
        "bootloader region erased"
    );

    let r = inspect(&flash);
    let parts: Vec<(String, u64)> = r["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["label"].as_str().unwrap().to_owned(),
                p["offset"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected = [
        ("nvs", 0x9000),
        ("otadata", 0xD000),
        ("phy_init", 0xF000),
        ("factory", 0x10000),
        ("ota_0", 0x110000),
        ("ota_1", 0x210000),
        ("airlift", 0x310000),
    ];
    assert_eq!(parts, expected.map(|(l, o)| (l.to_owned(), o)).to_vec());
    assert_eq!(r["otadata"]["copies"][0]["seq"], 1);
    assert_eq!(r["otadata"]["copies"][0]["state"], "VALID");
    assert_eq!(r["otadata"]["selected"], "ota_0");
    let slot = selected_image(&r);
    assert_eq!(slot["version"], "1.4.2");
    assert_eq!(slot["sha256"], sha256_hex(&fw_bytes));
    assert_eq!(r["engine"]["trusted_keys"], serde_json::json!([key_id]));
    assert_eq!(r["engine"]["boot_counter"], 0);

    let text =
        String::from_utf8(airlift(&["flash", "inspect", flash.to_str().unwrap()]).stdout).unwrap();
    assert!(text.contains("otadata: selects ota_0"), "{text}");
    assert!(text.contains("ota_0    e2e 1.4.2"), "{text}");
}

#[test]
fn flash_create_honours_a_partition_csv_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fw = write(d, "fw.bin", &image("1.0.0", 20_000));
    let csv = write(
        d,
        "parts.csv",
        b"# Name, Type, SubType, Offset, Size\nnvs, data, nvs, 0x9000, 0x4000\notadata, data, ota, 0xd000, 0x2000\nota_0, app, ota_0, 0x10000, 0x180000\nota_1, app, ota_1, 0x190000, 0x180000\nairlift, data, 0x40, 0x310000, 0x10000\n",
    );
    let flash = d.join("custom.flash");
    airlift(&[
        "flash",
        "create",
        flash.to_str().unwrap(),
        "--firmware",
        fw.to_str().unwrap(),
        "--partitions",
        csv.to_str().unwrap(),
    ]);
    let r = inspect(&flash);
    assert_eq!(selected_image(&r)["offset"], 0x10000);
    assert_eq!(r["slots"].as_array().unwrap().len(), 2, "no factory slot");

    let run = |args: &[&str]| Command::new(AIRLIFT).args(args).output().unwrap();
    let again = run(&[
        "flash",
        "create",
        flash.to_str().unwrap(),
        "--firmware",
        fw.to_str().unwrap(),
    ]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists: pass --force"));

    let junk = write(d, "junk.bin", b"\x7fELF not an image at all");
    let out = run(&[
        "flash",
        "create",
        d.join("x.flash").to_str().unwrap(),
        "--firmware",
        junk.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("firmware is not an ESP app image"),
        "{stderr}"
    );
    assert!(
        !d.join("x.flash").exists(),
        "nothing written for a refused firmware"
    );

    let no_data = write(
        d,
        "small.csv",
        b"nvs, data, nvs, 0x9000, 0x4000\notadata, data, ota, 0xd000, 0x2000\nota_0, app, ota_0, 0x10000, 0x100000\nota_1, app, ota_1, 0x110000, 0x100000\n",
    );
    let out = run(&[
        "flash",
        "create",
        d.join("y.flash").to_str().unwrap(),
        "--firmware",
        fw.to_str().unwrap(),
        "--partitions",
        no_data.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("airlift data partition"), "{stderr}");
    let small = write(
        d,
        "small-airlift.csv",
        b"otadata, data, ota, 0xd000, 0x2000\nota_0, app, ota_0, 0x10000, 0x100000\nota_1, app, ota_1, 0x110000, 0x100000\nairlift, data, 0x40, 0x310000, 0x4000\n",
    );
    let out = run(&[
        "flash",
        "create",
        d.join("z.flash").to_str().unwrap(),
        "--firmware",
        fw.to_str().unwrap(),
        "--partitions",
        small.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the airlift data partition is 16384 bytes")
            && stderr.contains("at least 24K"),
        "{stderr}"
    );
}
