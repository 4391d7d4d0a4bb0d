//! Crash safety: SIGKILL of the server in the middle of an upload leaves no
//! release without its artifact and no partial artifact, and the upload can
//! be repeated after a restart.
#![allow(clippy::unwrap_used)]

mod agent_common;

use std::io::{Read, Write};
use std::net::TcpStream;

use agent_common::{Server, files_under, image, wait_for};

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn sigkill_mid_upload_leaves_no_partial_release_and_the_upload_can_be_repeated() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let bytes = image("9.9.9", 3 * 1024 * 1024);
    let mut server = Server::start(&data, &[]);
    let token = server.admin_token();

    // Send the headers and the first 2 MiB, then keep the connection open.
    let address = server.url.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&address).unwrap();
    write!(
        stream,
        "POST /api/v1/releases HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        bytes.len()
    )
    .unwrap();
    let sent = 2 * 1024 * 1024;
    stream.write_all(&bytes[..sent]).unwrap();
    stream.flush().unwrap();
    let tmp = data.join("tmp");
    wait_for(
        "part of the upload on disk",
        || {
            files_under(&tmp)
                .iter()
                .any(|f| std::fs::metadata(f).map(|m| m.len() > 0).unwrap_or(false))
        },
        || format!("{:?}", files_under(&tmp)),
    );

    server.kill();
    drop(stream);
    assert_eq!(
        files_under(&data.join("artifacts")),
        Vec::<std::path::PathBuf>::new()
    );

    let mut server = Server::start(&data, &[]);
    assert_eq!(
        files_under(&tmp),
        Vec::<std::path::PathBuf>::new(),
        "leftovers removed at start"
    );
    let releases = server.cli_json(&["release", "list"]);
    assert_eq!(
        releases,
        serde_json::json!([]),
        "no release row without its artifact"
    );

    // The same upload again, completely this time.
    let file = dir.path().join("fw.bin");
    std::fs::write(&file, &bytes).unwrap();
    let release = server.cli_json(&["release", "upload", file.to_str().unwrap()]);
    assert_eq!(release["sha256"], sha256_hex(&bytes));
    let stored = std::fs::read(data.join("artifacts").join(sha256_hex(&bytes))).unwrap();
    assert!(stored == bytes, "stored artifact differs from the upload");

    // And a release survives a SIGKILL right after it was stored.
    server.kill();
    let server = Server::start(&data, &[]);
    let releases = server.cli_json(&["release", "list"]);
    assert_eq!(releases.as_array().unwrap().len(), 1);
    for release in releases.as_array().unwrap() {
        let artifact = data
            .join("artifacts")
            .join(release["sha256"].as_str().unwrap());
        assert!(
            artifact.exists(),
            "release {} has no artifact",
            release["id"]
        );
    }

    // A client that drops a connection mid-body leaves nothing behind either.
    let mut stream = TcpStream::connect(server.url.trim_start_matches("http://")).unwrap();
    write!(
        stream,
        "POST /api/v1/releases HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: {}\r\n\r\n",
        bytes.len()
    )
    .unwrap();
    stream.write_all(&bytes[..1024 * 1024]).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    wait_for(
        "the aborted upload to be discarded",
        || files_under(&tmp).is_empty(),
        || format!("{:?}", files_under(&tmp)),
    );
    assert_eq!(
        server
            .cli_json(&["release", "list"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
