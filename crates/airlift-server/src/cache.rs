//! What keeps a check-in off the database: each device's open offer, cached
//! until something changes it, and device status written behind in batches.
//!
//! A check-in is the hottest request (a million devices polling once a minute
//! is 17,000 per second): with both caches warm it touches no database at all.
//! The caches are per server instance; with several instances on one
//! database, [`crate::peers`] tells each what the others changed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::deploy::AssignmentState;
use crate::store::{DeviceStatus, Offer};

/// Each device's unfinished assignment (or its absence), as last read or
/// as last changed by this server.
///
/// Changes are made in place (a deployment created, an assignment moved by
/// an event) so the check-ins and downloads of a rollout find their offer
/// here instead of in the database. Reads from the database race with
/// changes: a read is cached only if nothing changed the device's entry
/// since the read began (its [`Ticket`]).
#[derive(Debug, Default)]
pub struct OfferCache {
    generation: AtomicU64,
    entries: RwLock<HashMap<i64, Entry>>,
}

#[derive(Debug, Default)]
struct Entry {
    /// Changes made to this device's entry.
    epoch: u64,
    /// `None`: not known (read the database).
    offer: Option<Option<Arc<Offer>>>,
}

/// What [`OfferCache::put`] checks: that nothing changed the device's
/// entry (or the whole cache) since the ticket was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    generation: u64,
    epoch: u64,
}

impl OfferCache {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<i64, Entry>> {
        self.entries.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<i64, Entry>> {
        self.entries.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached offer of a device: `None` when not cached.
    pub fn get(&self, device_id: i64) -> Option<Option<Arc<Offer>>> {
        self.read().get(&device_id).and_then(|e| e.offer.clone())
    }

    /// The ticket to pass to [`OfferCache::put`]; take it before querying
    /// the database.
    pub fn ticket(&self, device_id: i64) -> Ticket {
        let entries = self.read();
        Ticket {
            generation: self.generation.load(Ordering::Acquire),
            epoch: entries.get(&device_id).map_or(0, |e| e.epoch),
        }
    }

    /// Caches what the database said, unless the device's entry changed
    /// since `ticket` was taken (the answer might be stale then).
    pub fn put(&self, device_id: i64, offer: Option<Arc<Offer>>, ticket: Ticket) {
        let mut entries = self.write();
        if self.generation.load(Ordering::Acquire) != ticket.generation {
            return;
        }
        let entry = entries.entry(device_id).or_default();
        if entry.epoch == ticket.epoch && entry.offer.is_none() {
            entry.offer = Some(offer);
        }
    }

    /// Sets a device's offer (this server changed it and knows the result).
    pub fn set(&self, device_id: i64, offer: Option<Arc<Offer>>) {
        let mut entries = self.write();
        let entry = entries.entry(device_id).or_default();
        entry.epoch += 1;
        entry.offer = Some(offer);
    }

    /// Records that a device's assignment in `deployment_id` moved to
    /// `state`. When that assignment is the cached offer, the cache follows:
    /// the new state while it stays open, no offer once it is over (a
    /// device has at most one open assignment: creating a pending one
    /// supersedes the others). Otherwise the entry is forgotten.
    pub fn moved(&self, device_id: i64, deployment_id: i64, state: AssignmentState) {
        let mut entries = self.write();
        let entry = entries.entry(device_id).or_default();
        entry.epoch += 1;
        entry.offer = match &entry.offer {
            Some(Some(offer)) if offer.deployment_id == deployment_id => {
                Some(state.is_open().then(|| {
                    Arc::new(Offer {
                        state: state.as_str().to_owned(),
                        ..Offer::clone(offer)
                    })
                }))
            }
            _ => None,
        };
    }

    /// Forgets one device's offer (its assignment changed).
    pub fn forget(&self, device_id: i64) {
        let mut entries = self.write();
        let entry = entries.entry(device_id).or_default();
        entry.epoch += 1;
        entry.offer = None;
    }

    /// Forgets everything (a deployment was cancelled).
    pub fn clear(&self) {
        let mut entries = self.write();
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.clear();
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
        let before = cache.ticket(1);
        cache.forget(1);
        cache.put(1, offer(1), before);
        assert!(cache.get(1).is_none(), "stale answer dropped");
        let now = cache.ticket(1);
        cache.put(1, offer(1), now);
        assert_eq!(cache.get(1).unwrap().unwrap().deployment_id, 1);
        let ticket = cache.ticket(2);
        cache.put(2, None, ticket);
        assert_eq!(cache.get(2), Some(None), "no offer is cached too");
        cache.clear();
        assert!(cache.get(1).is_none() && cache.get(2).is_none());
        cache.put(3, offer(3), ticket);
        assert!(
            cache.get(3).is_none(),
            "a ticket from before a clear is stale"
        );
    }

    #[test]
    fn a_change_to_one_device_does_not_void_reads_of_others() {
        let cache = OfferCache::default();
        let ticket = cache.ticket(1);
        cache.forget(2);
        cache.set(3, offer(3));
        cache.put(1, offer(1), ticket);
        assert_eq!(cache.get(1).unwrap().unwrap().deployment_id, 1);
    }

    #[test]
    fn a_read_never_overwrites_what_the_server_set() {
        let cache = OfferCache::default();
        let ticket = cache.ticket(1);
        cache.set(1, offer(9));
        cache.put(1, None, ticket);
        assert_eq!(cache.get(1).unwrap().unwrap().deployment_id, 9);
        // Even with a fresh ticket: a known entry is not replaced by a read.
        let fresh = cache.ticket(1);
        cache.put(1, None, fresh);
        assert_eq!(cache.get(1).unwrap().unwrap().deployment_id, 9);
    }

    #[test]
    fn the_cached_assignment_is_followed_in_place_until_it_is_over() {
        let cache = OfferCache::default();
        cache.set(1, offer(5));
        cache.moved(1, 5, AssignmentState::Downloading);
        let cached = cache.get(1).unwrap().unwrap();
        assert_eq!(
            (cached.deployment_id, cached.state.as_str()),
            (5, "downloading")
        );
        // A move of another deployment's assignment: the entry is unknown now.
        cache.moved(1, 4, AssignmentState::Installed);
        assert!(cache.get(1).is_none());
        cache.set(1, offer(5));
        cache.moved(1, 5, AssignmentState::Confirmed);
        assert_eq!(cache.get(1), Some(None), "finished: no open offer left");
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
