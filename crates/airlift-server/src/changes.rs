//! What dashboards follow to update without reloading: a counter that moves
//! whenever something a person looks at may have changed (a device event
//! or check-in status written, an administrative action). Watchers learn
//! only that something changed and read the view they show again; the
//! counter is per server instance.

use tokio::sync::watch;

/// The change counter and its watchers.
#[derive(Debug)]
pub struct Changes {
    sender: watch::Sender<Counter>,
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
        }
    }
}

impl Changes {
    /// Records that something changed.
    pub fn bump(&self) {
        self.sender.send_modify(|c| c.seq += 1);
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
