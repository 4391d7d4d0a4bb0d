//! `airlift sim power-cut`, run as a user runs it.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn airlift(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_airlift"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn power_cut_campaign_reports_every_path_with_zero_failures_as_json() {
    let (code, stdout, stderr) = airlift(&["sim", "power-cut", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["failures"], 0);
    let paths = v["paths"].as_array().unwrap();
    let names: Vec<&str> = paths.iter().map(|p| p["path"].as_str().unwrap()).collect();
    for name in [
        "install",
        "activate",
        "first-boot",
        "confirm",
        "boot-counter",
        "rollback",
        "boot-log",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    for p in paths {
        let ops = p["ops"].as_u64().unwrap();
        assert!(ops > 0, "{p}");
        assert_eq!(p["cut_points"].as_u64(), Some(ops));
        // Each operation is torn twice: first half done, second half done.
        assert_eq!(p["torn_points"].as_u64(), Some(2 * ops));
        assert_eq!(p["failures"], 0);
    }
}

#[test]
fn power_cut_campaign_runs_on_a_user_partition_table_with_three_slots() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("parts.csv");
    std::fs::write(
        &csv,
        "# Name, Type, SubType, Offset, Size, Flags\n\
         nvs, data, nvs, 0x9000, 0x4000,\n\
         otadata, data, ota, 0xd000, 0x2000,\n\
         phy_init, data, phy, 0xf000, 0x1000,\n\
         ota_0, app, ota_0, 0x10000, 0x100000,\n\
         ota_1, app, ota_1, 0x110000, 0x100000,\n\
         ota_2, app, ota_2, 0x210000, 0x100000,\n\
         airlift, data, 0x40, 0x310000, 0x2000,\n",
    )
    .unwrap();
    let (code, stdout, stderr) = airlift(&[
        "sim",
        "power-cut",
        "--partitions",
        csv.to_str().unwrap(),
        "--path",
        "install",
        "--path",
        "activate",
        "--path",
        "rollback",
        "--path",
        "boot-log",
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    for (line, name) in lines
        .iter()
        .zip(["install", "activate", "rollback", "boot-log"])
    {
        assert!(
            line.starts_with(name) && line.ends_with("failures 0"),
            "{line}"
        );
    }
    assert!(lines[4].contains("0 failures"), "{stdout}");
}

#[test]
fn power_cut_refuses_a_partition_table_without_airlift_data() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("parts.csv");
    std::fs::write(
        &csv,
        "otadata, data, ota, 0xd000, 0x2000,\n\
         ota_0, app, ota_0, 0x10000, 0x100000,\n\
         ota_1, app, ota_1, 0x110000, 0x100000,\n",
    )
    .unwrap();
    let (code, _, stderr) = airlift(&["sim", "power-cut", "--partitions", csv.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(stderr.contains("no airlift data partition"), "{stderr}");
    let (code, _, stderr) = airlift(&["sim", "power-cut", "--path", "nonsense"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("unknown path"), "{stderr}");
}
