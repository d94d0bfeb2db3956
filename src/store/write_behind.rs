//! Write-behind for high-volume records of the sign-in hot path: the event of each issued
//! assertion and, on the embedded single-node backend, each answered request ID. They go to a
//! task that commits them in batches, so RSA signing, not SQLite commits, bounds SSO
//! throughput. Refusals and admin changes are never written this way; they are committed
//! before the request answers.

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{ReplayGuard, Store};
use crate::events::NewEvent;

/// Largest number of records committed in one transaction.
const BATCH_MAX: usize = 512;

/// How long the writer waits for more records before it commits what it has.
const LINGER: std::time::Duration = std::time::Duration::from_millis(20);

#[derive(Debug)]
enum Queued {
    Event(Box<NewEvent>),
    Guard(ReplayGuard),
    /// Answered once everything queued before it is committed.
    Flush(oneshot::Sender<()>),
}

/// Handle to the write-behind task; cheap to clone.
#[derive(Debug, Clone)]
pub struct WriteBehind {
    tx: mpsc::Sender<Queued>,
}

impl WriteBehind {
    /// Starts the writer task; once `shutdown` fires it commits what is queued and stops.
    pub fn start(store: Store, shutdown: CancellationToken) -> (Self, JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<Queued>(16 * 1024);
        let handle = tokio::spawn(async move {
            let mut events = Vec::with_capacity(BATCH_MAX);
            let mut guards = Vec::new();
            let mut waiting = Vec::new();
            loop {
                let first = tokio::select! {
                    item = rx.recv() => item,
                    _ = shutdown.cancelled() => {
                        rx.close();
                        rx.recv().await
                    }
                };
                let Some(first) = first else { break };
                // Gather what arrives within the linger, so a commit (a WAL write and two
                // thread hand-offs into SQLite) carries many sign-ins instead of one or two.
                // A flush request ends the wait: someone is waiting for the commit.
                let linger_until = tokio::time::Instant::now() + LINGER;
                let mut next = Some(first);
                while let Some(item) = next.take() {
                    match item {
                        Queued::Event(event) => events.push(*event),
                        Queued::Guard(guard) => guards.push(guard),
                        Queued::Flush(done) => waiting.push(done),
                    }
                    if events.len() + guards.len() >= BATCH_MAX {
                        break;
                    }
                    next = match rx.try_recv() {
                        Ok(item) => Some(item),
                        Err(_) if !waiting.is_empty() || shutdown.is_cancelled() => None,
                        Err(_) => tokio::select! {
                            item = rx.recv() => item,
                            _ = tokio::time::sleep_until(linger_until) => None,
                            _ = shutdown.cancelled() => None,
                        },
                    };
                }
                if !events.is_empty() || !guards.is_empty() {
                    if let Err(err) = store.record_batch(&events, &guards).await {
                        tracing::error!(%err, events = events.len(), request_ids = guards.len(), "could not write a batch");
                    }
                    events.clear();
                    guards.clear();
                }
                for done in waiting.drain(..) {
                    let _ = done.send(());
                }
            }
        });
        (Self { tx }, handle)
    }

    /// Queues an event (waits only when the queue is full).
    pub async fn record_event(&self, event: NewEvent) {
        if self.tx.send(Queued::Event(Box::new(event))).await.is_err() {
            tracing::error!("write-behind task has stopped; an event was not recorded");
        }
    }

    /// Queues an answered request ID for the persistent replay cache.
    pub async fn record_request_id(&self, guard: ReplayGuard) {
        if self.tx.send(Queued::Guard(guard)).await.is_err() {
            tracing::error!("write-behind task has stopped; a request ID was not recorded");
        }
    }

    /// Waits until every record queued so far is committed.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Queued::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}
