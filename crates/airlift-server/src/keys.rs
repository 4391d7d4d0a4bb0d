//! The server's release-signing key pair: `DIR/signing.key` (mode 0600) and
//! `DIR/signing.pub`, in the key-file format of `airlift keys generate`, so a
//! device can be told to trust `signing.pub`.
//!
//! Every instance of a fleet's server must sign with the same key (a
//! release's manifest is signed by whichever instance received the upload).
//! So a key file can be given (`signing_key_file`, a secret every instance
//! mounts); without one, PostgreSQL keeps the key in the database
//! ([`shared`]): the first instance to start stores the key it generated,
//! and every instance signs with the stored one.

use std::io::Write;
use std::path::Path;

use airlift_format::manifest::{
    SigningKey, format_public_key_file, format_secret_key_file, parse_secret_key_file,
};

/// Why the signing key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing a key file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key file is malformed.
    #[error("{path}: {message}")]
    Malformed {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// No randomness available.
    #[error("cannot generate a key: {0}")]
    Random(getrandom::Error),
    /// The database holding the shared key failed.
    #[error("shared key: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// Writes `contents` to a new file readable only by its owner.
pub(crate) fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

/// Loads the secret key file `path` (made by `airlift keys generate`).
pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let seed = parse_secret_key_file(&text).map_err(|e| KeyError::Malformed {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The key every instance on the database of `store` signs with: the one
/// stored there, or (first start) a new one, stored for the others.
pub async fn shared(store: &dyn crate::store::CredentialStore) -> Result<SigningKey, KeyError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(KeyError::Random)?;
    let stored = store
        .setting_or_insert("signing_key", &format_secret_key_file(&seed))
        .await?;
    let seed = parse_secret_key_file(&stored).map_err(|e| KeyError::Malformed {
        path: "the database's signing_key setting".into(),
        message: e.to_string(),
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Writes `dir/signing.pub` for `key` (when it differs), what devices are
/// told to trust.
pub fn write_public(dir: &Path, key: &SigningKey) -> Result<(), KeyError> {
    let pub_path = dir.join("signing.pub");
    let public = format_public_key_file(&key.verifying_key().to_bytes());
    if std::fs::read_to_string(&pub_path).ok().as_deref() != Some(public.as_str()) {
        std::fs::write(&pub_path, public).map_err(|source| KeyError::Io {
            path: pub_path.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

/// Loads `dir/signing.key`, generating the pair when it does not exist.
pub fn load_or_create(dir: &Path) -> Result<SigningKey, KeyError> {
    let key_path = dir.join("signing.key");
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| KeyError::Io { path, source }
    };
    let seed = match std::fs::read_to_string(&key_path) {
        Ok(text) => parse_secret_key_file(&text).map_err(|e| KeyError::Malformed {
            path: key_path.display().to_string(),
            message: e.to_string(),
        })?,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(KeyError::Random)?;
            write_private(&key_path, &format_secret_key_file(&seed)).map_err(io(&key_path))?;
            seed
        }
        Err(err) => return Err(io(&key_path)(err)),
    };
    let key = SigningKey::from_bytes(&seed);
    write_public(dir, &key)?;
    Ok(key)
}
