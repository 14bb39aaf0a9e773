//! Events for callers (DESIGN §6a): `WatchEvents` on both backends: every change arrives for
//! its merchant and payer only, a stream resumes from its cursor without a gap, changes made
//! through another server arrive, PostgreSQL's in-flight transactions leave no gap, slow
//! consumers are cut off with bounded buffering, and retention expires old cursors.

mod bounds; // roles, cursors, watcher limits, slow consumers, retention
mod delivery; // what arrives, for whom, in what order
mod replicas; // two servers on one database; PostgreSQL's in-flight transactions

use std::time::Duration;

use tonic::Streaming;

use crate::harness::*;

/// How long a test waits for one event.
const WITHIN: Duration = Duration::from_secs(10);

/// One caller's stream.
pub struct Watch {
    stream: Streaming<pb::WatchEventsResponse>,
    /// The cursor of the last message read.
    pub cursor: String,
}

impl Watch {
    pub async fn open(client: &mut EventClient, cursor: &str) -> Self {
        let stream = client
            .watch_events(pb::WatchEventsRequest {
                cursor: cursor.into(),
            })
            .await
            .unwrap()
            .into_inner();
        Self {
            stream,
            cursor: cursor.into(),
        }
    }

    /// The next event (progress messages only move the cursor).
    pub async fn next(&mut self) -> pb::Event {
        loop {
            let message = tokio::time::timeout(WITHIN, self.stream.message())
                .await
                .expect("an event within the wait")
                .expect("the stream goes on")
                .expect("the stream is open");
            self.cursor = message.cursor.clone();
            if let Some(event) = message.event {
                assert_eq!(event.cursor, message.cursor);
                return event;
            }
        }
    }

    /// The next `n` events.
    pub async fn take(&mut self, n: usize) -> Vec<pb::Event> {
        let mut events = Vec::with_capacity(n);
        for _ in 0..n {
            events.push(self.next().await);
        }
        events
    }

    /// Asserts that no event arrives within `wait`.
    pub async fn quiet_for(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.message()).await {
                Err(_) => return,
                Ok(Ok(Some(message))) => {
                    assert!(message.event.is_none(), "unexpected {:?}", message.event);
                    self.cursor = message.cursor;
                }
                Ok(other) => panic!("the stream ended: {other:?}"),
            }
        }
    }
}

/// (kind, mandate id, deduction id) of each event.
pub fn kinds(events: &[pb::Event]) -> Vec<(pb::EventKind, String, String)> {
    events
        .iter()
        .map(|e| (kind_of(e), e.mandate_id.clone(), e.deduction_id.clone()))
        .collect()
}

pub fn kind_of(event: &pb::Event) -> pb::EventKind {
    pb::EventKind::try_from(event.kind).unwrap()
}
