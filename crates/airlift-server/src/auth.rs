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
/// authenticate. A token stops working when its device is revoked, given a
/// new token or deleted: [`DeviceTokenCache::forget_devices`] drops what
/// was cached of those devices (this instance at once, the others when
/// their notice arrives, [`crate::peers`]), and a read from the database
/// that raced such a change is not cached ([`DeviceTokenCache::put`]).
#[derive(Debug, Default)]
pub struct DeviceTokenCache {
    inner: RwLock<Tokens>,
}

#[derive(Debug, Default)]
struct Tokens {
    /// Moves whenever something is forgotten.
    generation: u64,
    by_hash: HashMap<[u8; 32], (i64, String)>,
}

/// What [`DeviceTokenCache::put`] checks: that nothing was forgotten since
/// the ticket was taken (the database's answer might be stale then).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenTicket(u64);

impl DeviceTokenCache {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Tokens> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Tokens> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The device owning a token hash, if cached.
    pub fn get(&self, hash: &[u8; 32]) -> Option<(i64, String)> {
        self.read().by_hash.get(hash).cloned()
    }

    /// The ticket to pass to [`DeviceTokenCache::put`]; take it before
    /// reading the database.
    pub fn ticket(&self) -> TokenTicket {
        TokenTicket(self.read().generation)
    }

    /// Remembers a device's token hash, unless something was forgotten
    /// since `ticket` was taken (the device may be the one revoked).
    pub fn put(&self, hash: [u8; 32], device: (i64, String), ticket: TokenTicket) {
        let mut tokens = self.write();
        if tokens.generation == ticket.0 {
            tokens.by_hash.insert(hash, device);
        }
    }

    /// Forgets the tokens of `devices` (revoked, given a new token, deleted).
    /// One pass over the cache, whatever the number of devices: revocations
    /// are rare, check-ins are not, so the cache keeps no second index.
    pub fn forget_devices(&self, devices: &[i64]) {
        let mut tokens = self.write();
        tokens.generation += 1;
        tokens.by_hash.retain(|_, (id, _)| !devices.contains(id));
    }

    /// Forgets every token (notices from other instances may have been missed).
    pub fn clear(&self) {
        let mut tokens = self.write();
        tokens.generation += 1;
        tokens.by_hash.clear();
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
    fn a_revoked_device_is_forgotten_and_a_read_that_raced_it_is_not_cached() {
        let cache = DeviceTokenCache::default();
        let ticket = cache.ticket();
        cache.put([1; 32], (1, "a".into()), ticket);
        cache.put([2; 32], (2, "b".into()), ticket);
        assert_eq!(cache.get(&[1; 32]), Some((1, "a".into())));
        // A read of device 1 began, then device 1 was revoked.
        let before = cache.ticket();
        cache.forget_devices(&[1]);
        cache.put([1; 32], (1, "a".into()), before);
        assert_eq!(cache.get(&[1; 32]), None, "stale read dropped");
        assert_eq!(cache.get(&[2; 32]), Some((2, "b".into())), "others kept");
        cache.put([3; 32], (1, "a".into()), cache.ticket());
        assert_eq!(cache.get(&[3; 32]), Some((1, "a".into())));
        cache.clear();
        assert_eq!(cache.get(&[2; 32]), None);
        assert_eq!(cache.get(&[3; 32]), None);
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
