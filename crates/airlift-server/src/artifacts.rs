//! Firmware artifacts in an object store, named by SHA-256: the data
//! directory (the default) or an S3-compatible store (`s3://bucket/prefix`).
//!
//! On the local disk an upload is written under `tmp/` and moved to
//! `artifacts/<sha256>` only after the image was fully verified, so a crash
//! never leaves a partial file under a name that is served; leftovers in
//! `tmp/` are removed at start. To a remote store an upload is sent only
//! once verified, in one `PUT` (S3 makes an object visible whole or not at
//! all), so a refused upload leaves no object there. Artifacts are
//! immutable, so downloads through the server are served from an in-memory
//! cache; devices of a remote store download from it directly, through
//! presigned URLs ([`Artifacts::presigned_url`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::signer::{Method, Signer};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

/// Why an artifact operation failed.
#[derive(Debug, thiserror::Error)]
#[error("artifact store: {0}")]
pub struct ArtifactError(#[from] object_store::Error);

/// An S3 location: a bucket and a key prefix (`s3://bucket/prefix`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// The bucket.
    pub bucket: String,
    /// Keys start with this (may be empty).
    pub prefix: String,
}

impl S3Location {
    /// Parses `s3://bucket` or `s3://bucket/prefix`.
    pub fn parse(text: &str) -> Option<S3Location> {
        let rest = text.strip_prefix("s3://")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid = !bucket.is_empty()
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-".contains(&b));
        valid.then(|| S3Location {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
        })
    }
}

/// What signs download URLs for devices on a remote store.
struct Presigner {
    s3: Arc<AmazonS3>,
    prefix: Path,
    lifetime: std::time::Duration,
}

/// The artifact store.
pub struct Artifacts {
    store: Arc<dyn ObjectStore>,
    /// Set for an S3 store: downloads go to it directly.
    presigner: Option<Presigner>,
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

/// Where a device downloads the artifact: a presigned URL of the object
/// store when it has one that fits the protocol ([`airlift_protocol::URL_MAX`]),
/// else the server's own download path (under `public_url` when set).
pub async fn download_url(
    state: &crate::AppState,
    sha256: &str,
) -> Result<String, crate::ApiError> {
    if let Some(url) = state
        .artifacts
        .presigned_url(sha256)
        .await
        .map_err(crate::ApiError::internal)?
    {
        if url.len() <= airlift_protocol::URL_MAX {
            return Ok(url);
        }
        tracing::warn!(
            length = url.len(),
            max = airlift_protocol::URL_MAX,
            "a presigned URL is too long for devices (temporary credentials?): \
             they download through the server"
        );
    }
    Ok(format!(
        "{}/api/v1/device/artifacts/{sha256}",
        state
            .config
            .public_url
            .as_deref()
            .unwrap_or("")
            .trim_end_matches('/'),
    ))
}

fn artifact_path(sha256: &str) -> Path {
    Path::from(format!("artifacts/{sha256}"))
}

/// An upload in progress: on the local disk under a temporary name, for a
/// remote store in memory until it is verified.
pub struct PendingUpload {
    staging: Staging,
}

enum Staging {
    Local { writer: WriteMultipart, path: Path },
    Memory(Vec<u8>),
}

impl PendingUpload {
    /// Appends bytes.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), ArtifactError> {
        match &mut self.staging {
            Staging::Local { writer, .. } => {
                writer.wait_for_capacity(4).await?;
                writer.write(chunk);
            }
            Staging::Memory(bytes) => bytes.extend_from_slice(chunk),
        }
        Ok(())
    }

    /// Discards the upload.
    pub async fn abort(self) {
        if let Staging::Local { writer, .. } = self.staging
            && let Err(err) = writer.abort().await
        {
            tracing::warn!(error = %err, "cannot discard an aborted upload");
        }
    }
}

impl Artifacts {
    /// Artifacts in `store`, with an in-memory cache of `cache_bytes`.
    pub fn new(store: Arc<dyn ObjectStore>, cache_bytes: u64) -> Artifacts {
        Artifacts {
            store,
            presigner: None,
            cache: Mutex::new(Cache {
                limit: cache_bytes,
                ..Cache::default()
            }),
            local_root: None,
            files: Mutex::new(HashMap::new()),
        }
    }

    /// Artifacts in the S3-compatible store at `location` (credentials and
    /// region from the usual AWS variables; `endpoint` for stores other
    /// than AWS), devices downloading through URLs valid for `lifetime`.
    pub fn s3(
        location: &S3Location,
        endpoint: Option<&str>,
        cache_bytes: u64,
        lifetime: std::time::Duration,
    ) -> Result<Artifacts, ArtifactError> {
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&location.bucket);
        if let Some(endpoint) = endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        let s3 = Arc::new(builder.build()?);
        let prefix = Path::from(location.prefix.as_str());
        let store: Arc<dyn ObjectStore> = if location.prefix.is_empty() {
            s3.clone()
        } else {
            Arc::new(PrefixStore::new(s3.clone(), prefix.clone()))
        };
        let mut artifacts = Artifacts::new(store, cache_bytes);
        artifacts.presigner = Some(Presigner {
            s3,
            prefix,
            lifetime,
        });
        Ok(artifacts)
    }

    /// Whether devices download from the store directly (it is remote).
    pub fn is_remote(&self) -> bool {
        self.presigner.is_some()
    }

    /// A URL a device downloads the artifact from without credentials,
    /// valid for the configured lifetime (`None` for the local disk:
    /// devices download from the server).
    pub async fn presigned_url(&self, sha256: &str) -> Result<Option<String>, ArtifactError> {
        let Some(presigner) = &self.presigner else {
            return Ok(None);
        };
        let path = presigner
            .prefix
            .parts()
            .chain(artifact_path(sha256).parts())
            .collect::<Path>();
        let url = presigner
            .s3
            .signed_url(Method::GET, &path, presigner.lifetime)
            .await?;
        Ok(Some(url.to_string()))
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

    /// Starts an upload (on the local disk under a fresh temporary name).
    pub async fn begin(&self) -> Result<PendingUpload, ArtifactError> {
        if self.is_remote() {
            return Ok(PendingUpload {
                staging: Staging::Memory(Vec::new()),
            });
        }
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
        Ok(PendingUpload {
            staging: Staging::Local { writer, path },
        })
    }

    /// Completes a verified upload: moves it to its final name (or, for a
    /// remote store, sends it there).
    pub async fn commit(&self, upload: PendingUpload, sha256: &str) -> Result<(), ArtifactError> {
        match upload.staging {
            Staging::Local { writer, path } => {
                writer.finish().await?;
                self.store.rename(&path, &artifact_path(sha256)).await?;
            }
            Staging::Memory(bytes) => {
                self.store
                    .put(&artifact_path(sha256), PutPayload::from(bytes))
                    .await?;
            }
        }
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
    fn s3_locations_name_a_bucket_and_a_prefix() {
        let check = |text: &str, expected: Option<(&str, &str)>| {
            let got = S3Location::parse(text);
            let got = got.as_ref().map(|l| (l.bucket.as_str(), l.prefix.as_str()));
            assert_eq!(got, expected, "{text}");
        };
        check("s3://firmware", Some(("firmware", "")));
        check("s3://firmware/", Some(("firmware", "")));
        check("s3://firmware/fleet/a/", Some(("firmware", "fleet/a")));
        check("s3://", None);
        check("s3://Firmware", None);
        check("gs://firmware", None);
        check("/srv/firmware", None);
    }

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
