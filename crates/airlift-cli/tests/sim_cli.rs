//! `airlift sim power-cut` and `airlift sim chaos`, run as a user runs them.
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

#[test]
fn chaos_reports_what_it_tried_and_zero_failures_as_json() {
    let (code, stdout, stderr) = airlift(&["sim", "chaos", "--sequences", "200", "--json"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["sequences"], 200);
    assert_eq!(v["operations"], 200 * 24);
    assert_eq!(v["failures"], 0);
    for key in [
        "power_cuts",
        "torn_writes",
        "refusals",
        "activations",
        "confirms",
        "rollbacks",
    ] {
        assert!(v[key].as_u64().unwrap() > 0, "{key}: {v}");
    }
    assert_eq!(v["liveness_checks"], v["operations"]);
}

#[test]
fn chaos_prints_a_summary_and_replays_one_sequence_by_its_seed() {
    let (code, stdout, stderr) = airlift(&["sim", "chaos", "--sequences", "20", "--seed", "0x2a"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("chaos: 20 sequences of 24 operations (seed 0x000000000000002a)"),
        "{stdout}"
    );
    assert!(stdout.contains("failures                0"), "{stdout}");
    let (code, stdout, stderr) = airlift(&["sim", "chaos", "--replay", "0x1234abcd"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.starts_with("sequence 0x000000001234abcd: 24 operations"),
        "{stdout}"
    );
}

#[test]
fn chaos_refuses_a_seed_that_is_not_a_number() {
    let (code, _, stderr) = airlift(&["sim", "chaos", "--replay", "xyz"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("\"xyz\" is not a seed"), "{stderr}");
}
