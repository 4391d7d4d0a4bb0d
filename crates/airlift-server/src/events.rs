//! Group commit for device events and assignment moves: what keeps a
//! device request off its own database transaction without ever
//! acknowledging a write that is not stored.
//!
//! Each request hands its write to one writer task and waits. The writer
//! takes everything queued (up to [`MAX_BATCH`]), records it in one
//! transaction ([`crate::store::EventStore::record_writes`]) and answers each
//! request only after that transaction committed; a failed batch fails every
//! request in it, so the devices retry. Under load many events share one
//! commit (and a small batch waits a few milliseconds for more, see
//! `LINGER`); alone, an event is committed at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::changes::Changes;
use crate::deploy::next_state;
use crate::store::{EventOutcome, NewEvent, Store, StoreError, StoreResult, Write};

/// Most events committed in one transaction.
pub const MAX_BATCH: usize = 512;

/// Events waiting for the writer, at most; further requests wait for room.
const QUEUE: usize = 4 * MAX_BATCH;

type Reply = oneshot::Sender<StoreResult<EventOutcome>>;

/// The handle requests record events through.
#[derive(Debug, Clone)]
pub struct EventWriter {
    queue: mpsc::Sender<(Write, Reply)>,
}

impl EventWriter {
    /// Starts the writer task on the current tokio runtime; it ends when
    /// every handle is dropped, after answering what was queued. Each
    /// commit is a change for `changes`' watchers.
    pub fn start(store: Arc<dyn Store>, changes: Arc<Changes>) -> EventWriter {
        let (queue, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(write_batches(store, changes, receiver));
        EventWriter { queue }
    }

    /// Records one event (moving its assignment as the deployment rules
    /// say); returns once the transaction holding it committed.
    pub async fn record(&self, event: NewEvent) -> StoreResult<EventOutcome> {
        self.write(Write::Event(event)).await
    }

    /// Moves an assignment from `from` to `to` if it is in `from`
    /// (`Changed` then); returns once the transaction committed.
    pub async fn transition(
        &self,
        deployment_id: i64,
        device_id: i64,
        from: &'static str,
        to: &'static str,
        reason: Option<&'static str>,
    ) -> StoreResult<EventOutcome> {
        self.write(Write::Transition {
            deployment_id,
            device_id,
            from,
            to,
            reason,
        })
        .await
    }

    /// Records events in order (queued together, so they usually share
    /// one transaction); returns each one's outcome once committed.
    pub async fn record_all(&self, events: Vec<NewEvent>) -> Vec<StoreResult<EventOutcome>> {
        self.write_all(events.into_iter().map(Write::Event)).await
    }

    async fn write(&self, write: Write) -> StoreResult<EventOutcome> {
        let mut outcomes = self.write_all([write]).await;
        outcomes.pop().unwrap_or_else(|| Err(stopped()))
    }

    /// Queues `writes` one after the other, then waits for each commit.
    async fn write_all(
        &self,
        writes: impl IntoIterator<Item = Write>,
    ) -> Vec<StoreResult<EventOutcome>> {
        let mut answers = Vec::new();
        for write in writes {
            let (reply, answer) = oneshot::channel();
            let queued = self.queue.send((write, reply)).await.is_ok();
            answers.push(queued.then_some(answer));
        }
        let mut outcomes = Vec::with_capacity(answers.len());
        for answer in answers {
            outcomes.push(match answer {
                Some(a) => a.await.unwrap_or_else(|_| Err(stopped())),
                None => Err(stopped()),
            });
        }
        outcomes
    }
}

fn stopped() -> StoreError {
    StoreError::Backend("the event writer stopped".into())
}

/// How long the writer waits for more writes before committing a small
/// batch while writes keep coming (PostgreSQL's `commit_delay`): a fleet
/// rollout's writes then share a few large transactions instead of many
/// small ones (a third less server CPU for 10,000 devices), at the price
/// of a few milliseconds per write.
const LINGER: Duration = Duration::from_millis(5);

/// A batch smaller than this, committed less than [`BUSY`] after the last
/// one, waits [`LINGER`] for company.
const SMALL: usize = MAX_BATCH / 8;

/// The writer counts as busy this long after a commit; a write arriving
/// later (a quiet server) is committed at once.
const BUSY: Duration = Duration::from_millis(50);

async fn write_batches(
    store: Arc<dyn Store>,
    changes: Arc<Changes>,
    mut receiver: mpsc::Receiver<(Write, Reply)>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut last_commit: Option<Instant> = None;
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        if batch.len() < SMALL && last_commit.is_some_and(|t| t.elapsed() < BUSY) {
            tokio::time::sleep(LINGER).await;
            while batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(write) => batch.push(write),
                    Err(_) => break,
                }
            }
        }
        let (events, replies): (Vec<Write>, Vec<Reply>) = batch.drain(..).unzip();
        let result = store.record_writes(&events, next_state).await;
        last_commit = Some(Instant::now());
        match result {
            Ok(outcomes) => {
                changes.bump();
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    // The request may have gone (client hung up): the event is stored anyway.
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(err) => {
                tracing::error!(error = %err, events = events.len(), "cannot record device events");
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Backend(err.to_string())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sql::SqlStore;
    use crate::store::{NewAssignment, NewRelease};

    async fn fleet(devices: usize) -> (tempfile::TempDir, SqlStore, i64, Vec<i64>) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqlStore::open_sqlite(dir.path()).await.unwrap();
        let (release, _) = crate::store::ReleaseStore::insert_release(
            &store,
            NewRelease {
                sha256: "aa".repeat(32),
                size: 10,
                chip_id: 0,
                project: "p".into(),
                version: "2".into(),
                security_version: 0,
                key_id: "00".repeat(8),
                signed_by_server: true,
                manifest: vec![1],
            },
        )
        .await
        .unwrap();
        let mut ids = Vec::new();
        for n in 0..devices {
            let mut token = [0u8; 32];
            token[..8].copy_from_slice(&u64::try_from(n).unwrap().to_le_bytes());
            let device =
                crate::store::DeviceStore::create_device(&store, &format!("d{n}"), &[], &token)
                    .await
                    .unwrap();
            ids.push(device.id);
        }
        let assignments: Vec<NewAssignment> = ids
            .iter()
            .map(|&device_id| NewAssignment {
                device_id,
                state: "pending".into(),
                reason: None,
            })
            .collect();
        let deployment = crate::store::DeploymentStore::create_deployment(
            &store,
            release.id,
            "all",
            &assignments,
        )
        .await
        .unwrap();
        (dir, store, deployment.id, ids)
    }

    fn event(device_id: i64, deployment_id: Option<i64>, kind: &str) -> NewEvent {
        NewEvent {
            device_id,
            deployment_id,
            kind: kind.into(),
            reason: None,
            detail: None,
            age_ms: 0,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_events_are_all_stored_and_move_every_assignment_to_confirmed() {
        let (_dir, store, deployment, devices) = fleet(150).await;
        let writer = EventWriter::start(Arc::new(store.clone()), Arc::default());
        let mut tasks = Vec::new();
        for &device in &devices {
            let writer = writer.clone();
            tasks.push(tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for kind in [
                    "downloading",
                    "verifying",
                    "installed",
                    "booted",
                    "confirmed",
                ] {
                    let outcome = writer
                        .record(event(device, Some(deployment), kind))
                        .await
                        .unwrap();
                    outcomes.push(outcome);
                }
                outcomes
            }));
        }
        use EventOutcome::{Changed, Stored};
        for task in tasks {
            assert_eq!(
                task.await.unwrap(),
                [
                    Changed("downloading"),
                    Stored,
                    Changed("installed"),
                    Changed("booted"),
                    Changed("confirmed")
                ],
                "verifying keeps the downloading state"
            );
        }
        let assignments = crate::store::DeploymentStore::assignments(&store, deployment)
            .await
            .unwrap();
        assert_eq!(assignments.len(), devices.len());
        assert!(assignments.iter().all(|a| a.state == "confirmed"));
        let stored = crate::store::EventStore::events(&store, None, 10_000)
            .await
            .unwrap();
        assert_eq!(stored.len(), devices.len() * 5);
    }

    #[tokio::test]
    async fn an_event_for_someone_elses_deployment_is_refused_and_one_without_is_only_stored() {
        let (_dir, store, deployment, devices) = fleet(1).await;
        let writer = EventWriter::start(Arc::new(store.clone()), Arc::default());
        let stranger = devices[0] + 1000;
        assert_eq!(
            writer
                .record(event(stranger, Some(deployment), "failed"))
                .await
                .unwrap(),
            EventOutcome::NoAssignment
        );
        assert_eq!(
            writer
                .record(event(devices[0], None, "booted"))
                .await
                .unwrap(),
            EventOutcome::Stored
        );
        let stored = crate::store::EventStore::events(&store, None, 10)
            .await
            .unwrap();
        assert_eq!(
            stored.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
            ["booted"]
        );
    }

    #[tokio::test]
    async fn events_of_one_device_in_one_batch_apply_in_order() {
        let (_dir, store, deployment, devices) = fleet(2).await;
        let (a, b) = (devices[0], devices[1]);
        let mut failed = event(b, Some(deployment), "failed");
        failed.reason = Some("verification".into());
        let batch = [
            event(a, Some(deployment), "downloading"),
            event(b, Some(deployment), "downloading"),
            event(a, Some(deployment), "installed"),
            event(a, Some(deployment), "booted"),
            failed,
            event(a, Some(deployment), "confirmed"),
            event(b, Some(deployment), "confirmed"),
            event(a + b + 1000, Some(deployment), "booted"),
        ];
        let batch: Vec<Write> = batch.into_iter().map(Write::Event).collect();
        let outcomes = crate::store::EventStore::record_writes(&store, &batch, next_state)
            .await
            .unwrap();
        use EventOutcome::{Changed, NoAssignment, Stored};
        assert_eq!(
            outcomes,
            [
                Changed("downloading"),
                Changed("downloading"),
                Changed("installed"),
                Changed("booted"),
                Changed("failed"),
                Changed("confirmed"),
                Stored,
                NoAssignment
            ],
            "nothing reopens a failed assignment"
        );
        let assignments = crate::store::DeploymentStore::assignments(&store, deployment)
            .await
            .unwrap();
        let found: Vec<(&str, Option<&str>)> = assignments
            .iter()
            .map(|x| (x.state.as_str(), x.reason.as_deref()))
            .collect();
        assert_eq!(
            found,
            [("confirmed", None), ("failed", Some("verification"))]
        );
        let stored = crate::store::EventStore::events(&store, None, 100)
            .await
            .unwrap();
        assert_eq!(stored.len(), 7, "the stranger's event is not stored");
        assert_eq!(stored[0].kind, "confirmed");
        assert_eq!(stored[6].kind, "downloading");
    }

    #[tokio::test]
    async fn a_transition_moves_only_from_the_expected_state_and_in_order_with_events() {
        let (_dir, store, deployment, devices) = fleet(2).await;
        let (a, b) = (devices[0], devices[1]);
        let batch = [
            Write::Transition {
                deployment_id: deployment,
                device_id: a,
                from: "pending",
                to: "offered",
                reason: None,
            },
            Write::Event(event(b, Some(deployment), "downloading")),
            // b is downloading now: a pending -> skipped move does not apply.
            Write::Transition {
                deployment_id: deployment,
                device_id: b,
                from: "pending",
                to: "skipped",
                reason: Some("chip"),
            },
            Write::Transition {
                deployment_id: deployment + 1,
                device_id: a,
                from: "pending",
                to: "offered",
                reason: None,
            },
        ];
        let outcomes = crate::store::EventStore::record_writes(&store, &batch, next_state)
            .await
            .unwrap();
        use EventOutcome::{Changed, NoAssignment, Stored};
        assert_eq!(
            outcomes,
            [
                Changed("offered"),
                Changed("downloading"),
                Stored,
                NoAssignment
            ]
        );
        let assignments = crate::store::DeploymentStore::assignments(&store, deployment)
            .await
            .unwrap();
        let found: Vec<(&str, Option<&str>)> = assignments
            .iter()
            .map(|x| (x.state.as_str(), x.reason.as_deref()))
            .collect();
        assert_eq!(found, [("offered", None), ("downloading", None)]);
        let stored = crate::store::EventStore::events(&store, None, 100)
            .await
            .unwrap();
        assert_eq!(stored.len(), 1, "transitions are not device events");
    }

    #[tokio::test]
    async fn an_event_is_not_acknowledged_when_its_transaction_fails() {
        let (_dir, store, deployment, devices) = fleet(1).await;
        let writer = EventWriter::start(Arc::new(store.clone()), Arc::default());
        store.close().await;
        let result = writer
            .record(event(devices[0], Some(deployment), "confirmed"))
            .await;
        assert!(
            matches!(result, Err(StoreError::Backend(_))),
            "got {result:?}"
        );
    }
}
