//! `airlift keys generate` and `airlift release sign`, run as a user runs them.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use airlift_format::manifest::{
    SignedManifest, key_id, parse_public_key_file, parse_secret_key_file, public_key_from_seed,
};

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

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/esp-idf-apps")
        .join(name)
}

#[test]
fn keys_generate_writes_a_private_secret_and_a_matching_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let name = dir.path().join("release");
    let (code, stdout, stderr) = airlift(&["keys", "generate", name.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let secret = std::fs::read_to_string(dir.path().join("release.key")).unwrap();
    let public = std::fs::read_to_string(dir.path().join("release.pub")).unwrap();
    let seed = parse_secret_key_file(&secret).unwrap();
    let pk = parse_public_key_file(&public).unwrap();
    assert_eq!(public_key_from_seed(&seed), pk);
    let id: String = key_id(&pk).iter().map(|b| format!("{b:02x}")).collect();
    assert!(stdout.contains(&id), "{stdout}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("release.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // A second run does not overwrite the key, unless forced.
    let (code, _, stderr) = airlift(&["keys", "generate", name.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--force"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("release.key")).unwrap(),
        secret
    );
    let (code, _, _) = airlift(&["keys", "generate", "--force", name.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert_ne!(
        std::fs::read_to_string(dir.path().join("release.key")).unwrap(),
        secret
    );
}

#[test]
fn release_sign_writes_a_manifest_that_verifies_with_the_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let name = dir.path().join("k");
    assert_eq!(airlift(&["keys", "generate", name.to_str().unwrap()]).0, 0);
    let out = dir.path().join("v2.manifest");
    let image = testdata("v2.bin");
    let (code, stdout, stderr) = airlift(&[
        "release",
        "sign",
        image.to_str().unwrap(),
        "--key",
        dir.path().join("k.key").to_str().unwrap(),
        "--version",
        "2.0.0-rc1",
        "--product",
        "thermostat",
        "--security-version",
        "4",
        "-o",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let blob = std::fs::read(&out).unwrap();
    let signed = SignedManifest::parse(&blob).unwrap();
    let pk =
        parse_public_key_file(&std::fs::read_to_string(dir.path().join("k.pub")).unwrap()).unwrap();
    signed.verify(&[pk]).unwrap();
    let bytes = std::fs::read(&image).unwrap();
    let info = airlift_format::image::verify(&bytes).unwrap();
    let m = signed.manifest;
    assert_eq!(m.image_size as usize, bytes.len());
    assert_eq!(m.image_sha256, info.file_sha256);
    assert_eq!(m.chip_id, 0);
    assert_eq!(
        (m.product, m.version, m.security_version),
        ("thermostat", "2.0.0-rc1", 4)
    );
    assert_eq!(report["security_version"], 4);
    assert_eq!(report["image_size"].as_u64(), Some(bytes.len() as u64));
}

#[test]
fn release_sign_refuses_a_corrupted_image() {
    let dir = tempfile::tempdir().unwrap();
    let name = dir.path().join("k");
    assert_eq!(airlift(&["keys", "generate", name.to_str().unwrap()]).0, 0);
    let mut bytes = std::fs::read(testdata("v1.bin")).unwrap();
    bytes[5000] ^= 1;
    let bad = dir.path().join("bad.bin");
    std::fs::write(&bad, &bytes).unwrap();
    let out = dir.path().join("bad.manifest");
    let (code, _, stderr) = airlift(&[
        "release",
        "sign",
        bad.to_str().unwrap(),
        "--key",
        dir.path().join("k.key").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(stderr.contains("refusing to sign"), "{stderr}");
    assert!(!out.exists());
    // A public key is not a secret key.
    let (code, _, stderr) = airlift(&[
        "release",
        "sign",
        testdata("v1.bin").to_str().unwrap(),
        "--key",
        dir.path().join("k.pub").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(stderr.contains("not an airlift secret key"), "{stderr}");
}
