//! Events for callers (DESIGN §6a): `WatchEvents` streams from a cursor. One pump per process
//! gives positions to committed events (PostgreSQL's sequencer) and follows the head of the
//! outbox by polling, which sees what every replica writes; each watcher reads its own
//! merchant's or payer's events from its position whenever the head moves. A watcher's
//! buffer is bounded; one that stays full past the stall bound is cut off with
//! RESOURCE_EXHAUSTED naming the cursor to resume from, and its buffered events are dropped.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use jiff::SignedDuration;
use tokio::sync::{mpsc, watch};

use super::Error;
use crate::clock::Clock;
use crate::domain::FieldViolation;
use crate::domain::actor::{Actor, Role};
use crate::domain::event::{Event, EventCursor, EventScope};
use crate::storage::StoreError;
use crate::storage::events::EventStore;

/// Events the pump gives positions to per sequencer transaction.
const SEQUENCE_BATCH: u32 = 1000;
/// Events the retention sweep deletes per transaction.
const SWEEP_BATCH: u32 = 5000;

/// The bounds and periods of event delivery.
#[derive(Debug, Clone)]
pub struct EventSettings {
    /// How often the pump looks for new events (PostgreSQL: also gives them positions). The
    /// delivery latency is about half of it on average, at most all of it, plus a read.
    pub poll: Duration,
    /// Events older than this are deleted; a cursor from before what is kept is OUT_OF_RANGE.
    pub retention: SignedDuration,
    /// How often the retention sweep runs.
    pub sweep_every: Duration,
    /// Events buffered per watcher, at most (the server's memory per slow watcher).
    pub buffer: usize,
    /// Events read per query; at most `buffer`.
    pub batch: u32,
    /// How long a watcher's buffer may stay full before it is cut off.
    pub stall: Duration,
    /// Streams open at once, in all.
    pub max_watchers: usize,
    /// Streams open at once per caller (a merchant, or a payer).
    pub max_watchers_per_caller: usize,
    /// How often an idle stream is sent its new cursor (a message without an event), so that
    /// a caller resuming later starts after what it had nothing to see in.
    pub progress_every: Duration,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            poll: Duration::from_millis(100),
            retention: SignedDuration::from_hours(7 * 24),
            sweep_every: Duration::from_secs(60),
            buffer: 256,
            batch: 128,
            stall: Duration::from_secs(10),
            max_watchers: 1024,
            max_watchers_per_caller: 8,
            progress_every: Duration::from_secs(10),
        }
    }
}

/// One message of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    Event(Event),
    /// Nothing for this caller up to the cursor.
    Progress(EventCursor),
}

impl Delivered {
    pub fn cursor(&self) -> EventCursor {
        match self {
            Self::Event(event) => event.cursor,
            Self::Progress(cursor) => *cursor,
        }
    }
}

#[derive(Clone)]
pub struct EventService {
    store: Arc<dyn EventStore>,
    clock: Arc<dyn Clock>,
    settings: EventSettings,
    head: watch::Sender<EventCursor>,
    watchers: Arc<Mutex<Watchers>>,
    buffered: Arc<AtomicUsize>,
}

#[derive(Default)]
struct Watchers {
    total: usize,
    by_caller: HashMap<String, usize>,
}

impl EventService {
    pub fn new(store: Arc<dyn EventStore>, clock: Arc<dyn Clock>, settings: EventSettings) -> Self {
        let settings = EventSettings {
            batch: settings
                .batch
                .clamp(1, u32::try_from(settings.buffer.max(1)).unwrap_or(u32::MAX)),
            buffer: settings.buffer.max(1),
            ..settings
        };
        Self {
            store,
            clock,
            settings,
            head: watch::Sender::new(EventCursor::START),
            watchers: Arc::new(Mutex::new(Watchers::default())),
            buffered: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn settings(&self) -> &EventSettings {
        &self.settings
    }

    /// Events the service holds for all watchers now: in their buffers, and read but not yet
    /// buffered (at most `buffer + batch` per watcher).
    pub fn buffered_events(&self) -> usize {
        self.buffered.load(Ordering::Relaxed)
    }

    /// Streams open now.
    pub fn watchers(&self) -> usize {
        self.watchers.lock().map_or(0, |w| w.total)
    }

    /// One pass of the pump: positions for new events, then the head, told to watchers.
    pub async fn pump_once(&self) -> Result<EventCursor, StoreError> {
        while self.store.sequence_events(SEQUENCE_BATCH).await? == u64::from(SEQUENCE_BATCH) {}
        let head = self.store.event_head().await?;
        self.head.send_if_modified(|seen| {
            let moved = head > *seen;
            if moved {
                *seen = head;
            }
            moved
        });
        Ok(head)
    }

    /// Runs the pump for ever, every `settings.poll`.
    pub async fn pump(self) {
        let mut ticker = tokio::time::interval(self.settings.poll);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if let Err(e) = self.pump_once().await {
                tracing::warn!(error = %e, "event pump failed; retrying next tick");
            }
        }
    }

    /// Deletes events older than the retention; how many.
    pub async fn sweep_once(&self) -> Result<u64, StoreError> {
        let before = self
            .clock
            .now()
            .checked_sub(self.settings.retention)
            .unwrap_or(jiff::Timestamp::MIN);
        let mut deleted = 0;
        loop {
            let n = self.store.delete_events_before(before, SWEEP_BATCH).await?;
            deleted += n;
            if n < u64::from(SWEEP_BATCH) {
                return Ok(deleted);
            }
        }
    }

    /// Runs the retention sweep for ever, every `settings.sweep_every`.
    pub async fn sweep(self) {
        let mut ticker = tokio::time::interval(self.settings.sweep_every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match self.sweep_once().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "event retention sweep"),
                Err(e) => tracing::warn!(error = %e, "event retention sweep failed; retrying"),
            }
        }
    }

    /// Opens a stream of the caller's events after `cursor` (the start of what is kept when
    /// empty): a merchant's mandates' and deductions' events, or a payer's. The role matrix
    /// has let only merchants and payers in.
    pub async fn watch(&self, actor: &Actor, cursor: &str) -> Result<EventStream, Error> {
        let scope = match (actor.role, &actor.merchant_id) {
            (Role::Merchant, Some(merchant)) => EventScope::Merchant(merchant.to_string()),
            (Role::Payer, _) => EventScope::Payer(actor.subject.clone()),
            _ => {
                return Err(Error::PermissionDenied(
                    "only merchants and payers watch events".into(),
                ));
            }
        };
        let asked = EventCursor::parse("cursor", cursor)?;
        let head = self.store.event_head().await?;
        if asked > head {
            return Err(
                FieldViolation::new("cursor", "is not a cursor this service issued").into(),
            );
        }
        let kept_after = self
            .store
            .events_after(&scope, head, 0)
            .await?
            .deleted_through;
        let position = if cursor.is_empty() {
            EventCursor::at(kept_after)
        } else if asked.position() < kept_after {
            return Err(expired(asked));
        } else {
            asked
        };
        let slot = self.take_slot(&scope)?;
        let (tx, rx) = mpsc::channel(self.settings.buffer);
        let shared = Arc::new(Mutex::new(Shared {
            rx: Some(rx),
            cut: false,
            last: None,
            waker: None,
        }));
        let watcher = Watcher {
            store: self.store.clone(),
            settings: self.settings.clone(),
            head: self.head.subscribe(),
            scope,
            position,
            tx,
            shared: shared.clone(),
            buffered: self.buffered.clone(),
            _slot: slot,
        };
        tokio::spawn(watcher.run());
        Ok(EventStream {
            shared,
            buffered: self.buffered.clone(),
            done: false,
        })
    }

    fn take_slot(&self, scope: &EventScope) -> Result<Slot, Error> {
        let caller = match scope {
            EventScope::Merchant(id) => format!("merchant:{id}"),
            EventScope::Payer(id) => format!("payer:{id}"),
        };
        let mut watchers = self
            .watchers
            .lock()
            .map_err(|_| Error::Unavailable("the watcher registry is unavailable".into()))?;
        if watchers.total >= self.settings.max_watchers {
            return Err(Error::ResourceExhausted(format!(
                "the server has {} event streams open, its most; retry later",
                self.settings.max_watchers
            )));
        }
        let mine = watchers.by_caller.entry(caller.clone()).or_insert(0);
        if *mine >= self.settings.max_watchers_per_caller {
            return Err(Error::ResourceExhausted(format!(
                "this caller has {} event streams open, its most; close one first",
                self.settings.max_watchers_per_caller
            )));
        }
        *mine += 1;
        watchers.total += 1;
        Ok(Slot {
            watchers: self.watchers.clone(),
            caller,
        })
    }
}

fn expired(cursor: EventCursor) -> Error {
    Error::OutOfRange(format!(
        "events after cursor {} are no longer kept; read the current state again and watch \
         from an empty cursor",
        cursor.token()
    ))
}

/// A watcher's place in the registry, given back when the watcher ends.
struct Slot {
    watchers: Arc<Mutex<Watchers>>,
    caller: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut watchers) = self.watchers.lock() {
            watchers.total = watchers.total.saturating_sub(1);
            if let Some(mine) = watchers.by_caller.get_mut(&self.caller) {
                *mine = mine.saturating_sub(1);
                if *mine == 0 {
                    watchers.by_caller.remove(&self.caller);
                }
            }
        }
    }
}

type Item = Result<Delivered, Error>;

/// What the watcher task and the stream share: the buffer (taken away when the watcher is
/// cut off, which frees what it held), and the last cursor the stream handed on.
struct Shared {
    rx: Option<mpsc::Receiver<Item>>,
    cut: bool,
    last: Option<EventCursor>,
    waker: Option<Waker>,
}

/// Drops what a receiver still holds, counting it off `buffered`.
fn drain(rx: &mut mpsc::Receiver<Item>, buffered: &AtomicUsize) {
    rx.close();
    while let Ok(item) = rx.try_recv() {
        if item.is_ok() {
            buffered.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

struct Watcher {
    store: Arc<dyn EventStore>,
    settings: EventSettings,
    head: watch::Receiver<EventCursor>,
    scope: EventScope,
    position: EventCursor,
    tx: mpsc::Sender<Item>,
    shared: Arc<Mutex<Shared>>,
    buffered: Arc<AtomicUsize>,
    _slot: Slot,
}

enum Sent {
    Yes,
    /// The caller went away, or was cut off: stop.
    Stop,
}

impl Watcher {
    async fn run(mut self) {
        let mut told = self.position;
        let mut last_told = Instant::now();
        loop {
            // Every position up to the head as the pump last saw it was readable before the
            // page below is read: a page that is not full has read this caller's events up to
            // it.
            let head = *self.head.borrow_and_update();
            let page = match self
                .store
                .events_after(&self.scope, self.position, self.settings.batch)
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, "reading events failed; ending the stream");
                    let _ = self.tx.send(Err(Error::from(e))).await;
                    return;
                }
            };
            if page.deleted_through > self.position.position() {
                let _ = self.tx.send(Err(expired(self.position))).await;
                return;
            }
            let full = page.events.len() >= self.settings.batch as usize;
            // Held from here until the stream hands them on (or they are dropped).
            let mut held = page.events.len();
            self.buffered.fetch_add(held, Ordering::Relaxed);
            for event in page.events {
                self.position = event.cursor;
                held -= 1;
                if let Sent::Stop = self.send(Delivered::Event(event)).await {
                    self.buffered.fetch_sub(held, Ordering::Relaxed);
                    return;
                }
                told = self.position;
                last_told = Instant::now();
            }
            if full {
                continue;
            }
            if head > self.position {
                self.position = head;
            }
            if self.position > told && last_told.elapsed() >= self.settings.progress_every {
                self.buffered.fetch_add(1, Ordering::Relaxed);
                if let Sent::Stop = self.send(Delivered::Progress(self.position)).await {
                    return;
                }
                told = self.position;
                last_told = Instant::now();
            }
            tokio::select! {
                changed = self.head.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = self.tx.closed() => return,
                () = tokio::time::sleep(self.settings.progress_every) => {}
            }
        }
    }

    /// Sends one message counted in `buffered`; one that cannot be sent is counted off.
    async fn send(&self, delivered: Delivered) -> Sent {
        match self
            .tx
            .send_timeout(Ok(delivered), self.settings.stall)
            .await
        {
            Ok(()) => Sent::Yes,
            Err(mpsc::error::SendTimeoutError::Closed(_)) => {
                self.buffered.fetch_sub(1, Ordering::Relaxed);
                Sent::Stop
            }
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                self.buffered.fetch_sub(1, Ordering::Relaxed);
                self.cut_off();
                Sent::Stop
            }
        }
    }

    /// The caller has not taken anything for the stall bound with the buffer full: its buffer
    /// is dropped and the stream ends with RESOURCE_EXHAUSTED.
    fn cut_off(&self) {
        let Ok(mut shared) = self.shared.lock() else {
            return;
        };
        if let Some(mut rx) = shared.rx.take() {
            drain(&mut rx, &self.buffered);
        }
        shared.cut = true;
        if let Some(waker) = shared.waker.take() {
            waker.wake();
        }
        tracing::info!(stall = ?self.settings.stall, "event watcher cut off: too slow");
    }
}

/// The stream a caller reads: its watcher's buffer, then, if the watcher was cut off,
/// RESOURCE_EXHAUSTED naming the cursor of the last message handed on.
pub struct EventStream {
    shared: Arc<Mutex<Shared>>,
    buffered: Arc<AtomicUsize>,
    done: bool,
}

impl futures_core::Stream for EventStream {
    type Item = Result<Delivered, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let shared = self.shared.clone();
        let Ok(mut shared) = shared.lock() else {
            self.done = true;
            return Poll::Ready(None);
        };
        if shared.cut {
            self.done = true;
            let resume = shared.last.map_or_else(
                || "the cursor this stream was opened with".to_owned(),
                |c| format!("cursor {}", c.token()),
            );
            return Poll::Ready(Some(Err(Error::ResourceExhausted(format!(
                "events were not read fast enough and the stream's buffer stayed full; \
                 resume from {resume}"
            )))));
        }
        let Some(rx) = shared.rx.as_mut() else {
            self.done = true;
            return Poll::Ready(None);
        };
        match rx.poll_recv(cx) {
            Poll::Ready(Some(item)) => {
                if let Ok(delivered) = &item {
                    self.buffered.fetch_sub(1, Ordering::Relaxed);
                    shared.last = Some(delivered.cursor());
                } else {
                    self.done = true;
                }
                Poll::Ready(Some(item))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                shared.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        if let Ok(mut shared) = self.shared.lock()
            && let Some(mut rx) = shared.rx.take()
        {
            drain(&mut rx, &self.buffered);
        }
    }
}
