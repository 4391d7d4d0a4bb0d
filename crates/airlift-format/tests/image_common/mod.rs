//! Helpers shared by the image test files.
#![allow(dead_code)]

use std::path::PathBuf;

use airlift_format::image::{ImageError, ImageInfo, ImageVerifier};

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The real ESP-IDF images shipped in `testdata/esp-idf-apps/`, by file name.
pub fn real_images() -> Vec<(String, Vec<u8>)> {
    bin_files("testdata/esp-idf-apps", 5)
}

/// The real ESP-IDF bootloaders in `testdata/images/esp-idf-bootloaders/`,
/// one per chip, by file name ("esp32c3.bin").
pub fn real_bootloaders() -> Vec<(String, Vec<u8>)> {
    bin_files("testdata/images/esp-idf-bootloaders", 13)
}

/// Every `.bin` file of a test data folder; at least `expected` of them.
fn bin_files(folder: &str, expected: usize) -> Vec<(String, Vec<u8>)> {
    let dir = workspace().join(folder);
    let mut images: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "bin"))
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    images.sort();
    assert!(
        images.len() >= expected,
        "expected {expected} images in {}",
        dir.display()
    );
    images
}

/// Feeds `bytes` to a verifier in chunks of `chunk` bytes.
pub fn verify_chunked(bytes: &[u8], chunk: usize) -> Result<ImageInfo, ImageError> {
    let mut verifier = ImageVerifier::new();
    for piece in bytes.chunks(chunk.max(1)) {
        verifier.update(piece)?;
    }
    verifier.finish()
}
