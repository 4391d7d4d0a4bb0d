//! Events waiting to go out together, each with the time it happened.
//!
//! Events that happen back to back (`downloading`, `verifying`,
//! `installed`, `rebooting` just before a reset) share one request; each
//! says how long before the request it happened (`age_ms`), so the server
//! stores it at its own time. An event of this very moment says nothing.

use airlift_protocol::{EVENTS_MAX, Event, EventBatch};

/// At most [`EVENTS_MAX`] events and when each happened (ms, caller's clock).
#[derive(Debug, Clone, Default)]
pub struct Outbox {
    queued: heapless::Vec<(Event, u64), EVENTS_MAX>,
}

impl Outbox {
    /// Queues `event`, which happened at `now_ms`. A full outbox (a server
    /// that has not been reached for [`EVENTS_MAX`] events) drops its
    /// oldest event: results are repeated at every check-in anyway.
    pub fn push(&mut self, event: Event, now_ms: u64) {
        if self.queued.is_full() {
            self.queued.remove(0);
        }
        let _ = self.queued.push((event, now_ms));
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.queued.len()
    }

    /// Forgets everything (a reset).
    pub fn clear(&mut self) {
        self.queued.clear();
    }

    /// Takes every queued event, in order, each with its age at `now_ms`.
    pub fn take(&mut self, now_ms: u64) -> EventBatch {
        let mut batch = EventBatch::new();
        for (mut event, at) in self.queued.drain(..) {
            let age = u32::try_from(now_ms.saturating_sub(at)).unwrap_or(u32::MAX);
            event.age_ms = (age > 0).then_some(age);
            // Cannot overflow: the outbox holds at most as many.
            let _ = batch.push(event);
        }
        batch
    }
}
