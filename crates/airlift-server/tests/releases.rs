//! Firmware library over real HTTP: uploads, bad images, idempotence, offline manifests, delete.
#![allow(clippy::unwrap_used)]

mod common;

use airlift_format::image::Chip;
use airlift_format::manifest::{
    Manifest, SignedManifest, SigningKey, base64_decode, base64_encode, key_id,
    parse_public_key_file, sign,
};
use common::{TestServer, error_code, image, image_for, sha256_hex};
use reqwest::{Method, StatusCode};
use serde_json::Value;

#[tokio::test]
async fn valid_image_is_stored_by_sha256_with_its_descriptor_and_a_server_signature() {
    let server = TestServer::start().await;
    let bytes = image("v2.1", 3, 1);
    let response = server.upload(&bytes).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let release: Value = response.json().await.unwrap();
    assert_eq!(release["sha256"], sha256_hex(&bytes));
    assert_eq!(release["size"], bytes.len());
    assert_eq!(release["chip_id"], 5);
    assert_eq!(release["project"], "demo");
    assert_eq!(release["version"], "v2.1");
    assert_eq!(release["security_version"], 3);
    assert_eq!(release["signed_by_server"], true);

    let stored =
        std::fs::read(server.data_dir().join("artifacts").join(sha256_hex(&bytes))).unwrap();
    assert_eq!(stored, bytes);

    // The manifest verifies with the key in signing.pub and describes the image.
    let detail = server
        .admin_json(
            Method::GET,
            &format!("/api/v1/releases/{}", release["id"]),
            None,
            StatusCode::OK,
        )
        .await;
    let b64 = detail["manifest"].as_str().unwrap();
    let mut blob = vec![0u8; b64.len()];
    let n = base64_decode(b64.as_bytes(), &mut blob).unwrap();
    let signed = SignedManifest::parse(&blob[..n]).unwrap();
    let public = parse_public_key_file(
        &std::fs::read_to_string(server.data_dir().join("signing.pub")).unwrap(),
    )
    .unwrap();
    signed.verify(&[public]).unwrap();
    assert_eq!(
        hex::encode(signed.manifest.image_sha256),
        sha256_hex(&bytes)
    );
    assert_eq!(signed.manifest.image_size as usize, bytes.len());
    assert_eq!(
        (signed.manifest.chip_id, signed.manifest.security_version),
        (5, 3)
    );
    assert_eq!(
        (signed.manifest.product, signed.manifest.version),
        ("demo", "v2.1")
    );
}

#[tokio::test]
async fn real_esp_idf_image_is_accepted() {
    let server = TestServer::start().await;
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/esp-idf-apps/hello_world_new.bin"
    );
    let bytes = std::fs::read(path).unwrap();
    let release = server.release(&bytes).await;
    assert_eq!(release["chip_id"], 0);
    assert_eq!(release["project"], "hello-world");
    assert_eq!(
        release["sha256"],
        "dfaa439db3a40bb17c7b57cdc3e2ea67048a08098484ebdca1593e0a69f26a0e"
    );
}

#[tokio::test]
async fn uploading_the_same_bytes_again_returns_the_existing_release() {
    let server = TestServer::start().await;
    let bytes = image("v1", 0, 2);
    let first = server.release(&bytes).await;
    let response = server.upload(&bytes).await;
    assert_eq!(response.status(), StatusCode::OK);
    let again: Value = response.json().await.unwrap();
    assert_eq!(again, first);
    let list = server
        .admin_json(Method::GET, "/api/v1/releases", None, StatusCode::OK)
        .await;
    assert_eq!(list.as_array().unwrap().len(), 1);
}

async fn check_refused(
    server: &TestServer,
    bytes: &[u8],
    status: StatusCode,
    code: &str,
    message_part: &str,
) {
    let response = server.upload(bytes).await;
    assert_eq!(response.status(), status, "{message_part}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), code, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(message_part),
        "{message:?} should mention {message_part:?}"
    );
}

#[tokio::test]
async fn bad_uploads_are_refused_with_the_reason_and_nothing_is_stored() {
    let server = TestServer::start().await;
    let good = image("v1", 0, 3);
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;

    check_refused(
        &server,
        &good[..good.len() / 2],
        unprocessable,
        "invalid_image",
        "truncated",
    )
    .await;
    check_refused(
        &server,
        &good[..10],
        unprocessable,
        "invalid_image",
        "truncated",
    )
    .await;
    let mut wrong_magic = good.clone();
    wrong_magic[0] = 0x7f;
    check_refused(
        &server,
        &wrong_magic,
        unprocessable,
        "invalid_image",
        "0x7f",
    )
    .await;
    let foreign =
        b"%PDF-1.7\n% not firmware at all, but a document someone dropped on the wrong form\n"
            .repeat(50);
    check_refused(&server, &foreign, unprocessable, "invalid_image", "0x25").await;
    let mut flipped = good.clone();
    let middle = good.len() / 2;
    flipped[middle] ^= 0x01;
    check_refused(&server, &flipped, unprocessable, "invalid_image", "corrupt").await;
    check_refused(&server, b"", unprocessable, "invalid_image", "empty").await;

    let list = server
        .admin_json(Method::GET, "/api/v1/releases", None, StatusCode::OK)
        .await;
    assert_eq!(list, serde_json::json!([]));
    assert_eq!(
        server.files_under("artifacts"),
        Vec::<std::path::PathBuf>::new()
    );
    assert_eq!(server.files_under("tmp"), Vec::<std::path::PathBuf>::new());

    // The good image still goes in afterwards.
    server.release(&good).await;
}

#[tokio::test]
async fn uploads_above_the_configured_limit_are_refused_with_413() {
    let server = TestServer::start_with(|c| c.max_upload_bytes = 1000).await;
    let bytes = image("v1", 0, 4);
    assert!(bytes.len() > 1000);
    check_refused(
        &server,
        &bytes,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        "1000 bytes",
    )
    .await;
    assert_eq!(server.files_under("tmp"), Vec::<std::path::PathBuf>::new());
}

fn offline_blob(bytes: &[u8], key: &SigningKey, version: &str, chip_id: u16) -> Vec<u8> {
    let sha: [u8; 32] = hex::decode(sha256_hex(bytes)).unwrap().try_into().unwrap();
    let manifest = Manifest {
        chip_id,
        security_version: 0,
        image_size: bytes.len() as u32,
        image_sha256: sha,
        delta_base_sha256: None,
        key_id: key_id(&key.verifying_key().to_bytes()),
        product: "demo",
        version,
    };
    sign(&manifest, key).unwrap()
}

async fn upload_with_manifest(server: &TestServer, bytes: &[u8], blob: &[u8]) -> reqwest::Response {
    server
        .client
        .post(format!("{}/api/v1/releases", server.url))
        .bearer_auth(&server.admin_token)
        .header("X-Airlift-Manifest", base64_encode(blob))
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn offline_signed_manifest_is_kept_when_it_matches_the_image() {
    let server = TestServer::start().await;
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let bytes = image("v3", 0, 5);
    let blob = offline_blob(&bytes, &key, "3.0.0-offline", 5);
    let response = upload_with_manifest(&server, &bytes, &blob).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let release: Value = response.json().await.unwrap();
    assert_eq!(release["signed_by_server"], false);
    assert_eq!(release["version"], "3.0.0-offline");
    assert_eq!(
        release["key_id"],
        hex::encode(key_id(&key.verifying_key().to_bytes()))
    );
    let detail = server
        .admin_json(
            Method::GET,
            &format!("/api/v1/releases/{}", release["id"]),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(detail["manifest"], base64_encode(&blob));

    // Same bytes with a different manifest: refused, the stored one stays.
    let other = offline_blob(&bytes, &key, "3.0.1", 5);
    assert_eq!(
        upload_with_manifest(&server, &bytes, &other).await.status(),
        StatusCode::CONFLICT
    );
}

#[tokio::test]
async fn offline_manifest_for_other_bytes_or_chip_is_refused() {
    let server = TestServer::start().await;
    let key = SigningKey::from_bytes(&[8u8; 32]);
    let bytes = image("v3", 0, 6);
    let other_image = image("v3", 0, 7);
    for (blob, expected) in [
        (offline_blob(&other_image, &key, "v3", 5), "SHA-256"),
        (offline_blob(&bytes, &key, "v3", 0), "chip id"),
    ] {
        let response = upload_with_manifest(&server, &bytes, &blob).await;
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let body: Value = response.json().await.unwrap();
        assert_eq!(error_code(&body), "manifest_mismatch");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(expected),
            "{body}"
        );
    }
    let garbage = upload_with_manifest(&server, &bytes, b"not a manifest").await;
    assert_eq!(garbage.status(), StatusCode::BAD_REQUEST);
    assert_eq!(server.files_under("artifacts").len(), 0);
    let list = server
        .admin_json(Method::GET, "/api/v1/releases", None, StatusCode::OK)
        .await;
    assert_eq!(list, serde_json::json!([]));
}

#[tokio::test]
async fn release_used_by_a_deployment_cannot_be_deleted_but_an_unused_one_can() {
    let server = TestServer::start().await;
    let used = server.release(&image("v1", 0, 8)).await;
    let unused_bytes = image_for(Chip::Esp32, "v1", 0, 9);
    let unused = server.release(&unused_bytes).await;
    server.device("dev-1", &[]).await;
    server.deploy(&used, "device:dev-1").await;

    let body = server
        .admin_json(
            Method::DELETE,
            &format!("/api/v1/releases/{}", used["id"]),
            None,
            StatusCode::CONFLICT,
        )
        .await;
    assert_eq!(error_code(&body), "conflict");
    server
        .admin_json(
            Method::DELETE,
            &format!("/api/v1/releases/{}", unused["id"]),
            None,
            StatusCode::OK,
        )
        .await;
    server
        .admin_json(
            Method::GET,
            &format!("/api/v1/releases/{}", unused["id"]),
            None,
            StatusCode::NOT_FOUND,
        )
        .await;
    assert!(
        !server
            .data_dir()
            .join("artifacts")
            .join(sha256_hex(&unused_bytes))
            .exists()
    );
    // And it can be uploaded again.
    server.release(&unused_bytes).await;
}
