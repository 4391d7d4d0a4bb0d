//! What server instances sharing one PostgreSQL database tell each other,
//! so that several behave as one server.
//!
//! Each instance caches, for the check-in path, each device's open offer
//! ([`crate::cache::OfferCache`]) and the device tokens it authenticated
//! ([`crate::auth::DeviceTokenCache`]); dashboards follow a change counter
//! ([`crate::changes::Changes`]). All are per process. Every transaction
//! that changes which offer a device has also sends, on the [`CHANNEL`]
//! (`pg_notify`, delivered when it commits), the devices it changed; one
//! that revokes a device, gives it a new token or deletes it sends the
//! device ([`Notice::Devices`]). Each instance listens and forgets what it
//! cached of them, and bumps its change counter when another instance's
//! counter moved. An instance skips its own notices: it already updated
//! its caches itself.
//!
//! A notice arrives a moment after its commit, so until then an instance
//! may still hold what was true before. That is safe because of what the
//! check-in does with a cached offer (see [`still_offered`]): an offer is
//! handed out only after the database agreed (the compare-and-set from
//! `pending`, or with several instances a read of the assignment); a cached
//! "no offer" only delays an update by a poll. A device token is different:
//! it is checked against the database only when not cached, so until the
//! notice of its revocation arrives (a moment after the commit) another
//! instance still accepts it; from then on every instance refuses it. A
//! listener that lost its connection may have missed notices: it forgets
//! every cached offer and token.
//!
//! [`CHANNEL`]: crate::store::sql::CHANNEL

use std::time::Duration;

use sqlx::postgres::{PgListener, PgPoolOptions};

use crate::AppState;
use crate::deploy::AssignmentState;
use crate::store::sql::CHANNEL;
use crate::store::{Offer, StoreError};

/// Least time between two change notices an instance sends.
const CHANGES_EVERY: Duration = Duration::from_millis(250);

/// One instance's news for the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The open offers of these devices changed (`None`: maybe any device's).
    Offers(Option<Vec<i64>>),
    /// These devices were revoked, given a new token or deleted: nothing
    /// cached of them holds any more (their tokens, their offers).
    Devices(Vec<i64>),
    /// Something a dashboard shows changed.
    Changed,
}

impl Notice {
    /// The notice's text, from the instance `from`: `FROM|o|1,2,3`,
    /// `FROM|o|*`, `FROM|d|1,2` or `FROM|c|`.
    pub fn encode(&self, from: &str) -> String {
        let list = |ids: &[i64]| {
            let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
            ids.join(",")
        };
        match self {
            Notice::Offers(Some(ids)) => format!("{from}|o|{}", list(ids)),
            Notice::Devices(ids) => format!("{from}|d|{}", list(ids)),
            Notice::Offers(None) => format!("{from}|o|*"),
            Notice::Changed => format!("{from}|c|"),
        }
    }

    /// The sender and the notice of a text [`Notice::encode`] made.
    pub fn decode(text: &str) -> Option<(&str, Notice)> {
        let mut parts = text.splitn(3, '|');
        let (from, kind, rest) = (parts.next()?, parts.next()?, parts.next()?);
        let ids = |ids: &str| {
            ids.split(',')
                .filter(|id| !id.is_empty())
                .map(str::parse)
                .collect::<Result<Vec<i64>, _>>()
                .ok()
        };
        let notice = match (kind, rest) {
            ("o", "*") => Notice::Offers(None),
            ("o", list) => Notice::Offers(Some(ids(list)?)),
            ("d", list) => Notice::Devices(ids(list)?),
            ("c", _) => Notice::Changed,
            _ => return None,
        };
        Some((from, notice))
    }
}

/// Applies a notice from another instance to this one's caches.
fn apply(state: &AppState, notice: Notice) {
    match notice {
        Notice::Offers(Some(devices)) => {
            for device in devices {
                state.offers.forget(device);
            }
        }
        Notice::Offers(None) => state.offers.clear(),
        Notice::Devices(devices) => {
            crate::identity::forget(state, &devices);
            state.changes.bump_from_peer();
        }
        Notice::Changed => state.changes.bump_from_peer(),
    }
}

/// Listens on the database at `url` (returns once listening, so no notice
/// sent after is missed) and applies other instances' notices until
/// aborted; sends this instance's change notices (at most every
/// [`CHANGES_EVERY`]).
pub async fn start(
    state: AppState,
    url: &str,
) -> Result<(tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>), StoreError> {
    let backend = |e: sqlx::Error| StoreError::Backend(e.to_string());
    let mut listener = PgListener::connect(url).await.map_err(backend)?;
    listener.listen(CHANNEL).await.map_err(backend)?;
    let publisher = PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .map_err(backend)?;
    let listening = tokio::spawn(listen(state.clone(), listener));
    let publishing = tokio::spawn(async move {
        loop {
            state.changes.local_change().await;
            let notice = Notice::Changed.encode(&state.instance);
            if let Err(err) = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(notice)
                .execute(&publisher)
                .await
            {
                tracing::warn!(error = %err, "cannot tell the other instances of a change");
            }
            tokio::time::sleep(CHANGES_EVERY).await;
        }
    });
    Ok((listening, publishing))
}

async fn listen(state: AppState, mut listener: PgListener) {
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => match Notice::decode(notification.payload()) {
                Some((from, _)) if from == state.instance => {}
                Some((_, notice)) => apply(&state, notice),
                None => tracing::warn!(payload = notification.payload(), "unknown notice"),
            },
            // The connection was lost (the next call reconnects): notices
            // may have been missed, so nothing cached can be trusted.
            Ok(None) => {
                tracing::warn!(
                    "lost the database's notices; forgetting every cached offer and token"
                );
                state.offers.clear();
                state.device_tokens.clear();
                state.changes.bump_from_peer();
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for the other instances' notices");
                state.offers.clear();
                state.device_tokens.clear();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Whether a cached offer the device is about to be handed may still be
/// handed out. With one instance the cache is exact. With several, another
/// instance may have cancelled, superseded or finished it a moment ago
/// (its notice not here yet): the assignment is read from the database,
/// and the cache follows what it says.
pub async fn still_offered(
    state: &AppState,
    device_id: i64,
    offer: &Offer,
) -> Result<bool, StoreError> {
    if !state.shared {
        return Ok(true);
    }
    let stored = state
        .store
        .assignment(offer.deployment_id, device_id)
        .await?
        .and_then(|a| AssignmentState::parse(&a.state));
    match stored {
        Some(current) if current.offers_update() => {
            if current.as_str() != offer.state {
                state.offers.moved(device_id, offer.deployment_id, current);
            }
            Ok(true)
        }
        _ => {
            state.offers.forget(device_id);
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_read_back_as_they_were_written() {
        for notice in [
            Notice::Offers(Some(vec![1, 22, 333])),
            Notice::Offers(Some(vec![])),
            Notice::Offers(None),
            Notice::Devices(vec![7]),
            Notice::Devices(vec![7, 8]),
            Notice::Changed,
        ] {
            let text = notice.encode("instance-ab12");
            assert_eq!(Notice::decode(&text), Some(("instance-ab12", notice)));
        }
        assert_eq!(Notice::decode("x|o|1,y"), None);
        assert_eq!(Notice::decode("x|d|*"), None);
        assert_eq!(Notice::decode("x|z|"), None);
        assert_eq!(Notice::decode("no separators"), None);
    }
}
