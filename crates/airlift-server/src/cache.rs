//! What keeps a check-in off the database: each device's open offer, cached
//! until something changes it, and device status written behind in batches.
//!
//! A check-in is the hottest request (a million devices polling once a minute
//! is 17,000 per second): with both caches warm it touches no database at all.
//! The caches are per server instance; several instances sharing one database
//! would need a time-to-live or a notification channel (not built yet).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::store::{DeviceStatus, Offer};

/// Each device's unfinished assignment (or its absence), as last read.
#[derive(Debug, Default)]
pub struct OfferCache {
    generation: AtomicU64,
    offers: RwLock<HashMap<i64, Option<Arc<Offer>>>>,
}

impl OfferCache {
    /// The cached offer of a device: `None` when not cached.
    pub fn get(&self, device_id: i64) -> Option<Option<Arc<Offer>>> {
        self.offers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&device_id)
            .cloned()
    }

    /// The generation to pass to [`OfferCache::put`]; read it before querying the database.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Caches what the database said, unless something changed since `generation`
    /// (the answer might be stale then).
    pub fn put(&self, device_id: i64, offer: Option<Arc<Offer>>, generation: u64) {
        let mut offers = self.offers.write().unwrap_or_else(|p| p.into_inner());
        if self.generation.load(Ordering::Acquire) == generation {
            offers.insert(device_id, offer);
        }
    }

    /// Forgets one device's offer (its assignment changed).
    pub fn forget(&self, device_id: i64) {
        let mut offers = self.offers.write().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        offers.remove(&device_id);
    }

    /// Forgets everything (a deployment was created or cancelled).
    pub fn clear(&self) {
        let mut offers = self.offers.write().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        offers.clear();
    }
}

/// Device status reported at check-in, not yet written to the database.
#[derive(Debug, Default)]
pub struct StatusBuffer {
    pending: Mutex<HashMap<i64, DeviceStatus>>,
}

impl StatusBuffer {
    /// Remembers a device's latest status (replacing an unwritten older one).
    pub fn record(&self, device_id: i64, status: DeviceStatus) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(device_id, status);
    }

    /// Takes everything not written yet.
    pub fn take(&self) -> Vec<(i64, DeviceStatus)> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *pending).into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(id: i64) -> Option<Arc<Offer>> {
        use crate::store::Release;
        Some(Arc::new(Offer {
            deployment_id: id,
            state: "pending".into(),
            release: Release {
                id: 1,
                sha256: String::new(),
                size: 0,
                chip_id: 0,
                project: String::new(),
                version: String::new(),
                security_version: 0,
                key_id: String::new(),
                signed_by_server: true,
                manifest: vec![],
                created_at: 0,
            },
        }))
    }

    #[test]
    fn an_answer_read_before_a_change_is_not_cached() {
        let cache = OfferCache::default();
        let before = cache.generation();
        cache.forget(7);
        cache.put(1, offer(1), before);
        assert!(cache.get(1).is_none(), "stale answer dropped");
        let now = cache.generation();
        cache.put(1, offer(1), now);
        assert_eq!(cache.get(1).unwrap().unwrap().deployment_id, 1);
        cache.put(2, None, now);
        assert_eq!(cache.get(2), Some(None), "no offer is cached too");
        cache.clear();
        assert!(cache.get(1).is_none() && cache.get(2).is_none());
    }

    #[test]
    fn status_buffer_keeps_the_latest_status_per_device() {
        let buffer = StatusBuffer::default();
        let status = |v: &str| DeviceStatus {
            version: Some(v.into()),
            ..DeviceStatus::default()
        };
        buffer.record(1, status("a"));
        buffer.record(1, status("b"));
        buffer.record(2, status("c"));
        let mut taken = buffer.take();
        taken.sort_by_key(|(id, _)| *id);
        assert_eq!(taken, [(1, status("b")), (2, status("c"))]);
        assert!(buffer.take().is_empty());
    }
}
