//! Firmware artifacts in an object store, named by SHA-256.
//!
//! An upload is written under `tmp/` and moved to `artifacts/<sha256>` only
//! after the image was fully verified, so a crash never leaves a partial file
//! under a name that is served; leftovers in `tmp/` are removed at start.
//! Artifacts are immutable, so downloads are served from an in-memory cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};

/// Why an artifact operation failed.
#[derive(Debug, thiserror::Error)]
#[error("artifact store: {0}")]
pub struct ArtifactError(#[from] object_store::Error);

/// The artifact store.
pub struct Artifacts {
    store: Arc<dyn ObjectStore>,
    cache: Mutex<Cache>,
    /// The directory holding `artifacts/` when the store is the local file system.
    local_root: Option<std::path::PathBuf>,
    /// Open artifact files (with their sizes) for zero-copy downloads.
    files: Mutex<HashMap<String, (Arc<std::fs::File>, u64)>>,
}

impl std::fmt::Debug for Artifacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Artifacts")
            .field("store", &self.store.to_string())
            .finish()
    }
}

#[derive(Default)]
struct Cache {
    limit: u64,
    used: u64,
    tick: u64,
    entries: HashMap<String, (Bytes, u64)>,
}

impl Cache {
    fn get(&mut self, sha256: &str) -> Option<Bytes> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(sha256).map(|(bytes, used)| {
            *used = tick;
            bytes.clone()
        })
    }

    fn insert(&mut self, sha256: &str, bytes: Bytes) {
        let len = bytes.len() as u64;
        if len > self.limit {
            return;
        }
        while self.used + len > self.limit {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some((evicted, _)) = self.entries.remove(&oldest) {
                self.used -= evicted.len() as u64;
            }
        }
        self.tick += 1;
        if let Some((old, _)) = self.entries.insert(sha256.to_owned(), (bytes, self.tick)) {
            self.used -= old.len() as u64;
        }
        self.used += len;
    }
}

fn artifact_path(sha256: &str) -> Path {
    Path::from(format!("artifacts/{sha256}"))
}

/// An upload in progress, under a temporary name.
pub struct PendingUpload {
    writer: WriteMultipart,
    path: Path,
}

impl PendingUpload {
    /// Appends bytes.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), ArtifactError> {
        self.writer.wait_for_capacity(4).await?;
        self.writer.write(chunk);
        Ok(())
    }

    /// Discards the upload.
    pub async fn abort(self) {
        if let Err(err) = self.writer.abort().await {
            tracing::warn!(error = %err, "cannot discard an aborted upload");
        }
    }
}

impl Artifacts {
    /// Artifacts in `store`, with an in-memory cache of `cache_bytes`.
    pub fn new(store: Arc<dyn ObjectStore>, cache_bytes: u64) -> Artifacts {
        Artifacts {
            store,
            cache: Mutex::new(Cache {
                limit: cache_bytes,
                ..Cache::default()
            }),
            local_root: None,
            files: Mutex::new(HashMap::new()),
        }
    }

    /// Declares that the store keeps its objects as files under `root`, so
    /// downloads can be sent from the files directly.
    pub fn with_local_root(mut self, root: std::path::PathBuf) -> Artifacts {
        self.local_root = Some(root);
        self
    }

    /// The artifact's open file and size, when the store is local. Files stay
    /// open (artifacts are immutable); at most 64 are kept.
    pub fn local_file(&self, sha256: &str) -> Option<(Arc<std::fs::File>, u64)> {
        let root = self.local_root.as_ref()?;
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = files.get(sha256) {
            return Some(found.clone());
        }
        let file = std::fs::File::open(root.join("artifacts").join(sha256)).ok()?;
        let size = file.metadata().ok()?.len();
        if files.len() >= 64 {
            files.clear();
        }
        let entry = (Arc::new(file), size);
        files.insert(sha256.to_owned(), entry.clone());
        Some(entry)
    }

    /// Removes what interrupted uploads left under `tmp/`.
    pub async fn remove_leftovers(&self) -> Result<usize, ArtifactError> {
        let mut listing = self.store.list(Some(&Path::from("tmp")));
        let mut removed = 0;
        while let Some(meta) = listing.next().await {
            let meta = meta?;
            self.store.delete(&meta.location).await?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Starts an upload under a fresh temporary name.
    pub async fn begin(&self) -> Result<PendingUpload, ArtifactError> {
        let mut name = [0u8; 16];
        getrandom::fill(&mut name).map_err(|e| object_store::Error::Generic {
            store: "tmp",
            source: Box::new(e),
        })?;
        let path = Path::from(format!("tmp/{}", hex::encode(name)));
        let upload = self.store.put_multipart(&path).await?;
        // Parts of 256 KiB: an upload reaches the disk as it arrives instead of
        // being buffered in 5 MiB parts (the object store default, sized for S3).
        let writer = WriteMultipart::new_with_chunk_size(upload, 256 * 1024);
        Ok(PendingUpload { writer, path })
    }

    /// Completes a verified upload: moves it to its final name.
    pub async fn commit(&self, upload: PendingUpload, sha256: &str) -> Result<(), ArtifactError> {
        upload.writer.finish().await?;
        self.store
            .rename(&upload.path, &artifact_path(sha256))
            .await?;
        Ok(())
    }

    /// Whether the artifact exists.
    pub async fn exists(&self, sha256: &str) -> Result<bool, ArtifactError> {
        match self.store.head(&artifact_path(sha256)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    /// The artifact's bytes.
    pub async fn get(&self, sha256: &str) -> Result<Bytes, ArtifactError> {
        if let Some(bytes) = self.lock().get(sha256) {
            return Ok(bytes);
        }
        let bytes = self
            .store
            .get(&artifact_path(sha256))
            .await?
            .bytes()
            .await?;
        self.lock().insert(sha256, bytes.clone());
        Ok(bytes)
    }

    /// Whether an artifact of `size` bytes is kept in the memory cache
    /// once read (larger ones are streamed from their file instead).
    pub fn fits_cache(&self, size: u64) -> bool {
        size <= self.lock().limit
    }

    /// Deletes an artifact.
    pub async fn delete(&self, sha256: &str) -> Result<(), ArtifactError> {
        {
            let mut cache = self.lock();
            if let Some((bytes, _)) = cache.entries.remove(sha256) {
                cache.used -= bytes.len() as u64;
            }
        }
        self.files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(sha256);
        match self.store.delete(&artifact_path(sha256)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_evicts_least_recently_used_within_its_limit() {
        let mut cache = Cache {
            limit: 10,
            ..Cache::default()
        };
        cache.insert("a", Bytes::from_static(b"aaaa"));
        cache.insert("b", Bytes::from_static(b"bbbb"));
        assert!(cache.get("a").is_some());
        cache.insert("c", Bytes::from_static(b"cccc"));
        assert!(cache.get("b").is_none(), "b was least recently used");
        assert!(cache.get("a").is_some());
        assert!(cache.get("c").is_some());
        assert_eq!(cache.used, 8);
        cache.insert("huge", Bytes::from(vec![0u8; 11]));
        assert!(cache.get("huge").is_none(), "larger than the whole cache");
    }
}
