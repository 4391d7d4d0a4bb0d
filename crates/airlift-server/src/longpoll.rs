//! Check-ins that wait (long polls): a device that says it can wait
//! (`long_poll_seconds` in its check-in) and has nothing to take is held
//! until an offer is made to it or the hold is over, so a deployment or a
//! rollout's new wave reaches an online device at once instead of at its
//! next poll.
//!
//! A hold lasts at most the device's wish, [`crate::Config::long_poll_seconds`]
//! and the poll interval (so a waiting device is never "unseen"); a held
//! check-in answers `poll_seconds: 0`: the hold was the wait, and the
//! device checks in again at once, to wait there once more. A device
//! holding 25 s checks in about twice a minute instead of once, for an
//! update that reaches it at once. A held check-in holds a connection, so at
//! most half of the instance's connection cap (`max_connections`) wait at
//! once ([`LongPolls::for_connections`]); more are answered at once, with
//! the usual interval, and the other half of the connections stays free
//! for check-ins that do not wait, downloads and operators.
//!
//! The waiting check-ins are this instance's: an offer made by another
//! instance (several servers behind one load balancer) does not wake them,
//! and the device sees it when its hold ends and it checks in again (at
//! most `long_poll_seconds` later), as a polling device would.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// The check-ins waiting on this instance, by device.
#[derive(Debug)]
pub struct LongPolls {
    waiting: Mutex<HashMap<i64, Arc<Notify>>>,
    max: usize,
}

/// A check-in's place among the waiting ones; dropping it leaves.
#[derive(Debug)]
pub struct Waiting<'a> {
    polls: &'a LongPolls,
    device_id: i64,
    notify: Arc<Notify>,
}

impl LongPolls {
    /// At most `max` check-ins waiting at once.
    pub fn new(max: usize) -> LongPolls {
        LongPolls {
            waiting: Mutex::default(),
            max,
        }
    }

    /// For an instance that holds at most `max_connections` connections:
    /// half of them may wait.
    pub fn for_connections(max_connections: u32) -> LongPolls {
        LongPolls::new(max_connections as usize / 2)
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Arc<Notify>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a check-in of `device_id` that may wait; `None` when
    /// the most allowed already do. Register before reading the device's
    /// offer, and enable the [`Waiting::woken`] future before the read too,
    /// so an offer made in between is not missed.
    pub fn wait(&self, device_id: i64) -> Option<Waiting<'_>> {
        let mut map = self.map();
        if map.len() >= self.max && !map.contains_key(&device_id) {
            return None;
        }
        let notify = map.entry(device_id).or_default().clone();
        Some(Waiting {
            polls: self,
            device_id,
            notify,
        })
    }

    /// Wakes the device's waiting check-ins: something was offered to it.
    pub fn wake(&self, device_id: i64) {
        if let Some(notify) = self.map().get(&device_id) {
            notify.notify_waiters();
        }
    }

    /// Whether a check-in of the device waits on this instance now.
    pub fn is_waiting(&self, device_id: i64) -> bool {
        self.map().contains_key(&device_id)
    }

    /// Check-ins waiting now.
    pub fn count(&self) -> usize {
        self.map().len()
    }
}

impl Waiting<'_> {
    /// Completes when the device is woken (enable it before reading the offer).
    pub fn woken(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut map = self.polls.map();
        // The map's reference and this one: no other check-in of the device waits.
        if Arc::strong_count(&self.notify) == 2 {
            map.remove(&self.device_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wake_between_registering_and_waiting_is_not_lost() {
        let polls = LongPolls::new(10);
        {
            let waiting = polls.wait(7).unwrap();
            let woken = waiting.woken();
            tokio::pin!(woken);
            woken.as_mut().enable();
            assert!(polls.is_waiting(7));
            polls.wake(8);
            polls.wake(7);
            woken.await;
        }
        assert!(!polls.is_waiting(7), "a check-in that left is not waiting");
        assert_eq!(polls.count(), 0);
    }

    #[test]
    fn a_second_check_in_of_the_same_device_keeps_it_waiting_until_both_left() {
        let polls = LongPolls::new(10);
        let first = polls.wait(1).unwrap();
        let second = polls.wait(1).unwrap();
        drop(first);
        assert!(polls.is_waiting(1));
        drop(second);
        assert!(!polls.is_waiting(1));
    }

    #[test]
    fn at_most_half_the_connection_cap_waits() {
        let polls = LongPolls::for_connections(5);
        let held: Vec<_> = (0..2).map(|d| polls.wait(d).unwrap()).collect();
        assert!(polls.wait(9).is_none(), "a third would take over half of 5");
        assert!(
            polls.wait(1).is_some(),
            "a device already waiting may wait again"
        );
        drop(held);
        assert!(polls.wait(9).is_some());
    }
}
