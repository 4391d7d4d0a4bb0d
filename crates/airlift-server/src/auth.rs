//! Tokens and secrets: random 32-byte values shown once, stored as SHA-256.

use std::collections::HashMap;
use std::sync::RwLock;

use sha2::{Digest, Sha256};

/// A fresh random token with a prefix naming its kind (`al_admin_`, `al_dev_`, `al_enr_`).
pub fn new_token(prefix: &str) -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!("{prefix}{}", hex::encode(bytes)))
}

/// What is stored for a token: its SHA-256.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer(header: Option<&axum::http::HeaderValue>) -> Option<&str> {
    let value = header?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Device tokens already seen, so a check-in does not query the database to
/// authenticate (devices are never deleted, so entries never go stale).
#[derive(Debug, Default)]
pub struct DeviceTokenCache {
    by_hash: RwLock<HashMap<[u8; 32], (i64, String)>>,
}

impl DeviceTokenCache {
    /// The device owning a token hash, if cached.
    pub fn get(&self, hash: &[u8; 32]) -> Option<(i64, String)> {
        self.by_hash
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(hash)
            .cloned()
    }

    /// Remembers a device's token hash.
    pub fn insert(&self, hash: [u8; 32], device: (i64, String)) {
        self.by_hash
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hash, device);
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn check(header: Option<&str>, expected: Option<&str>) {
        let value = header.map(|h| HeaderValue::from_str(h).unwrap());
        assert_eq!(bearer(value.as_ref()), expected, "{header:?}");
    }

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        check(Some("Bearer abc"), Some("abc"));
        check(Some("bearer abc"), Some("abc"));
        check(Some("Basic abc"), None);
        check(Some("Bearer "), None);
        check(Some("Bearer"), None);
        check(None, None);
    }

    #[test]
    fn tokens_are_random_prefixed_and_hash_stably() {
        let a = new_token("al_dev_").unwrap();
        let b = new_token("al_dev_").unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("al_dev_") && a.len() == 7 + 64, "{a}");
        assert_eq!(hash_token(&a), hash_token(&a));
        assert_ne!(hash_token(&a), hash_token(&b));
    }
}
