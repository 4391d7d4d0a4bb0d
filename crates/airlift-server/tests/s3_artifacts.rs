//! Artifacts on an S3-compatible object store (issue 15), against moto's S3
//! server (`scripts/services` starts it; `./scripts/test` does): uploads
//! land in the bucket only once verified, and devices download straight from
//! the store through presigned URLs, resuming with `Range`.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Running, TestServer, image, s3_bucket, sha256_hex};
use reqwest::header::{AUTHORIZATION, CONTENT_RANGE, RANGE};
use reqwest::{Method, StatusCode};

async fn server_on_s3() -> (TestServer, String, String) {
    let (endpoint, bucket) = s3_bucket().await;
    let location = format!("s3://{bucket}/fleet/a");
    let server = TestServer::start_with(|config| {
        config.artifacts = Some(location);
        config.s3_endpoint = Some(endpoint.clone());
    })
    .await;
    (server, endpoint, bucket)
}

/// Every key in the bucket (moto lists without a signature).
async fn keys(endpoint: &str, bucket: &str) -> Vec<String> {
    let text = reqwest::get(format!("{endpoint}/{bucket}?list-type=2"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.split("<Key>")
        .skip(1)
        .map(|rest| rest.split("</Key>").next().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn an_upload_lands_in_the_bucket_and_a_refused_one_leaves_no_object() {
    let (server, endpoint, bucket) = server_on_s3().await;
    let good = image("2.0.0", 0, 1);
    let release = server.release(&good).await;
    let sha = sha256_hex(&good);
    assert_eq!(release["sha256"], sha);
    assert_eq!(
        keys(&endpoint, &bucket).await,
        [format!("fleet/a/artifacts/{sha}")]
    );
    // Corrupt (a byte changed: the checksum fails) and not an image at all.
    let mut corrupt = image("3.0.0", 0, 2);
    let last = corrupt.len() - 40;
    corrupt[last] ^= 0xff;
    for refused in [corrupt, b"not an image".to_vec()] {
        let response = server.upload(&refused).await;
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }
    assert_eq!(
        keys(&endpoint, &bucket).await.len(),
        1,
        "nothing of the refused uploads"
    );
    assert!(
        server.files_under("artifacts").is_empty(),
        "nothing on the local disk either"
    );
}

#[tokio::test]
async fn a_device_downloads_from_the_store_with_a_presigned_url_and_resumes_with_a_range() {
    let (server, endpoint, _bucket) = server_on_s3().await;
    let bytes = image("2.0.0", 0, 1);
    let release = server.release(&bytes).await;
    let token = server.device("d1", &[]).await;
    server.deploy(&release, "device:d1").await;
    let answer = server.checkin(&token, &Running::factory()).await;
    let url = answer["update"]["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with(&endpoint), "{url}");
    assert!(
        url.contains("X-Amz-Signature=") && url.contains("X-Amz-Expires=600"),
        "{url}"
    );
    assert!(url.len() <= airlift_protocol::URL_MAX);
    // No credentials needed: the URL grants access.
    let client = reqwest::Client::new();
    let whole = client.get(&url).send().await.unwrap();
    assert_eq!(whole.status(), StatusCode::OK);
    assert_eq!(whole.bytes().await.unwrap(), bytes);
    let from = 1000;
    let rest = client
        .get(&url)
        .header(RANGE, format!("bytes={from}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(rest.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        rest.headers()[CONTENT_RANGE].to_str().unwrap(),
        format!("bytes {from}-{}/{}", bytes.len() - 1, bytes.len())
    );
    assert_eq!(rest.bytes().await.unwrap(), bytes[from..]);
    // The server's own download path still serves it (from the store).
    let path = format!("/api/v1/device/artifacts/{}", sha256_hex(&bytes));
    let through = server.as_device(&token, Method::GET, &path, None).await;
    assert_eq!(through.status(), StatusCode::OK);
    assert_eq!(through.bytes().await.unwrap(), bytes);
    let anonymous = client
        .get(format!("{}{path}", server.url))
        .header(AUTHORIZATION, "Bearer nope")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}
