//! `airlift sim chaos`, run as a user runs it.
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
