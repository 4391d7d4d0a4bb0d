//! What dashboards follow to update without reloading: a counter that moves
//! whenever something a person looks at may have changed (a device event
//! or check-in status written, an administrative action). Watchers learn
//! only that something changed and read the view they show again. The
//! counter is per server instance; with several instances on one database,
//! [`crate::peers`] carries each one's changes to the others.

use tokio::sync::{Notify, watch};

/// The change counter and its watchers.
#[derive(Debug)]
pub struct Changes {
    sender: watch::Sender<Counter>,
    /// Woken by changes made here (not by those another instance reported).
    local: Notify,
}

/// What watchers see.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counter {
    /// Increases with every change.
    pub seq: u64,
    /// The server is stopping: watchers end.
    pub closed: bool,
}

impl Default for Changes {
    fn default() -> Self {
        Changes {
            sender: watch::Sender::new(Counter::default()),
            local: Notify::new(),
        }
    }
}

impl Changes {
    /// Records that something changed.
    pub fn bump(&self) {
        self.sender.send_modify(|c| c.seq += 1);
        self.local.notify_one();
    }

    /// Records a change another instance reported.
    pub fn bump_from_peer(&self) {
        self.sender.send_modify(|c| c.seq += 1);
    }

    /// Completes after a change made here ([`Changes::bump`]) since the
    /// last call; several changes in between complete one call.
    pub async fn local_change(&self) {
        self.local.notified().await;
    }

    /// A watcher, woken by the next change.
    pub fn watch(&self) -> watch::Receiver<Counter> {
        self.sender.subscribe()
    }

    /// Ends every watcher (the server stops, and waits for open responses).
    pub fn close(&self) {
        self.sender.send_modify(|c| c.closed = true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watchers_wake_on_a_change_and_see_the_close() {
        let changes = Changes::default();
        let mut watcher = changes.watch();
        changes.bump();
        changes.bump();
        watcher.changed().await.unwrap();
        assert_eq!(
            *watcher.borrow_and_update(),
            Counter {
                seq: 2,
                closed: false
            }
        );
        changes.close();
        watcher.changed().await.unwrap();
        assert!(watcher.borrow_and_update().closed);
    }
}
