//! An in-memory copy of a key prefix, kept current by a store watch, that serves get, list and
//! watch without touching the store.
//!
//! The cache lists the prefix once, then follows [`Store::watch_progress`](crate::Store) from the
//! listed revision. It keeps the decoded objects in key order, the revision it has applied, and a
//! ring of recent events so that watches may start a little in the past. Each watcher has a
//! bounded queue; the cache never waits for a watcher, it ends one that falls too far behind.
//!
//! If the store watch ends, the cache re-watches from the revision after the last one it
//! applied; if the store has compacted that history, it re-lists and turns the difference between
//! what it held and what it finds into events, so its own watchers continue without a gap.
//!
//! Memory: an entry is the shared key, the shared object and its mod revision; the event ring
//! holds the same shared pointers, never copies of objects.

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use crate::{DynStore, Event, KeyValue, RangeRequest, Result, Revision, StoreError, Watched};

/// What happened to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheEventKind {
    Added,
    Modified,
    Deleted,
}

/// One change as the cache's watchers see it.
#[derive(Debug)]
pub struct CacheEvent<T> {
    pub kind: CacheEventKind,
    pub key: Arc<str>,
    /// The new object; for a delete, the last object (decoded with the delete's revision when
    /// the store reported the deletion itself).
    pub object: Arc<T>,
    /// The object before the change, if there was one.
    pub prev: Option<Arc<T>>,
    pub revision: Revision,
}

// Not derived: cloning shares the objects, so `T` need not be `Clone`.
impl<T> Clone for CacheEvent<T> {
    fn clone(&self) -> Self {
        CacheEvent {
            kind: self.kind,
            key: self.key.clone(),
            object: self.object.clone(),
            prev: self.prev.clone(),
            revision: self.revision,
        }
    }
}

/// One item of a [`CacheWatch`].
#[derive(Debug)]
pub enum WatchItem<T> {
    Event(CacheEvent<T>),
    /// Every event with a revision up to and including this one has been delivered.
    Progress(Revision),
}

impl<T> Clone for WatchItem<T> {
    fn clone(&self) -> Self {
        match self {
            WatchItem::Event(e) => WatchItem::Event(e.clone()),
            WatchItem::Progress(r) => WatchItem::Progress(*r),
        }
    }
}

/// Objects under a prefix in key order, each with its key (an alias, for readability).
pub type Snapshot<T> = Vec<(Arc<str>, Arc<T>)>;

/// Tuning of a [`WatchCache`]; [`WatchCache::start`] uses the defaults with its `history`.
#[derive(Clone, Debug)]
pub struct CacheOptions {
    /// How many recent events to keep for watches that start in the past.
    pub history: usize,
    /// Queued items a watcher may fall behind before it is ended.
    pub watcher_capacity: usize,
    /// How often every watcher is sent [`WatchItem::Progress`].
    pub progress_interval: Duration,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            history: 10_000,
            watcher_capacity: 10_000,
            progress_interval: Duration::from_secs(1),
        }
    }
}

/// A watch on the cache: a stream of [`WatchItem`]s in revision order. It ends (yields `None`)
/// when the watcher fell too far behind or the cache stopped; the watcher must then re-list.
pub struct CacheWatch<T> {
    /// Events from the history ring, delivered before anything queued.
    backlog: VecDeque<CacheEvent<T>>,
    queue: mpsc::Receiver<WatchItem<T>>,
}

impl<T> Stream for CacheWatch<T> {
    type Item = WatchItem<T>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(event) = this.backlog.pop_front() {
            return Poll::Ready(Some(WatchItem::Event(event)));
        }
        this.queue.poll_recv(cx)
    }
}

type Decode<T> = dyn Fn(&KeyValue) -> Option<T> + Send + Sync;

struct Entry<T> {
    object: Arc<T>,
    mod_revision: Revision,
}

struct State<T> {
    items: BTreeMap<Arc<str>, Entry<T>>,
    /// The last revision applied.
    revision: Revision,
    history: VecDeque<CacheEvent<T>>,
    /// Every event with a revision above this one is in `history`.
    oldest: Revision,
}

struct Watcher<T> {
    prefix: Box<str>,
    /// Only events above this revision go to this watcher (older ones it has, or never wanted).
    after: Revision,
    queue: mpsc::Sender<WatchItem<T>>,
}

struct Inner<T> {
    store: DynStore,
    prefix: String,
    decode: Box<Decode<T>>,
    options: CacheOptions,
    /// Lock order: `state` before `watchers`. Events are applied and queued to watchers under the
    /// `state` write lock, and watchers register under a `state` read lock, so a new watcher sees
    /// each event either in its snapshot or in its queue, never both or neither.
    state: RwLock<State<T>>,
    watchers: Mutex<Vec<Watcher<T>>>,
    applied: watch::Sender<Revision>,
}

/// The cache; see the module documentation.
pub struct WatchCache<T> {
    inner: Arc<Inner<T>>,
    tasks: Vec<AbortHandle>,
}

impl<T> Drop for WatchCache<T> {
    fn drop(&mut self) {
        // The tasks hold the shared state; once they stop, the watchers' queues close.
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A decoded store event, ready to apply under the lock.
enum Change<T> {
    Put {
        key: String,
        object: Option<Arc<T>>,
        revision: Revision,
    },
    Delete {
        key: String,
        object: Option<Arc<T>>,
        revision: Revision,
    },
    Progress(Revision),
}

impl<T: Send + Sync + 'static> WatchCache<T> {
    /// Lists everything under `prefix` from the store, then follows a store watch from that
    /// revision + 1.
    ///
    /// `decode` turns a stored value into `T`; for a delete it is given the previous value with
    /// `mod_revision` set to the delete's revision. `None` skips the key (and logs it).
    /// `history` is how many recent events to keep for watches that start in the past.
    pub async fn start(
        store: DynStore,
        prefix: &str,
        decode: impl Fn(&KeyValue) -> Option<T> + Send + Sync + 'static,
        history: usize,
    ) -> Result<Arc<Self>> {
        Self::start_with(
            store,
            prefix,
            decode,
            CacheOptions {
                history,
                ..CacheOptions::default()
            },
        )
        .await
    }

    /// [`WatchCache::start`] with every tunable.
    pub async fn start_with(
        store: DynStore,
        prefix: &str,
        decode: impl Fn(&KeyValue) -> Option<T> + Send + Sync + 'static,
        options: CacheOptions,
    ) -> Result<Arc<Self>> {
        let (kvs, revision) = list_all(&store, prefix).await?;
        let mut items = BTreeMap::new();
        for kv in &kvs {
            if let Some(object) = decode_logged(&decode, kv) {
                items.insert(
                    Arc::from(kv.key.as_str()),
                    Entry {
                        object: Arc::new(object),
                        mod_revision: kv.mod_revision,
                    },
                );
            }
        }
        drop(kvs);
        let inner = Arc::new(Inner {
            store,
            prefix: prefix.to_owned(),
            decode: Box::new(decode),
            options,
            state: RwLock::new(State {
                items,
                revision,
                history: VecDeque::new(),
                oldest: revision,
            }),
            watchers: Mutex::new(Vec::new()),
            applied: watch::Sender::new(revision),
        });
        let follower = tokio::spawn(follow(inner.clone())).abort_handle();
        let ticker = tokio::spawn(report_progress(inner.clone())).abort_handle();
        Ok(Arc::new(WatchCache {
            inner,
            tasks: vec![follower, ticker],
        }))
    }

    /// The last revision applied.
    pub fn revision(&self) -> Revision {
        *self.inner.applied.borrow()
    }

    /// Waits until [`WatchCache::revision`] reaches `revision`; [`StoreError::Unavailable`] if
    /// that takes longer than `timeout`.
    pub async fn wait_for(&self, revision: Revision, timeout: Duration) -> Result<()> {
        let mut applied = self.inner.applied.subscribe();
        match tokio::time::timeout(timeout, applied.wait_for(|r| *r >= revision)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(StoreError::Unavailable("the watch cache stopped".into())),
            Err(_) => Err(StoreError::Unavailable(format!(
                "the watch cache did not reach revision {revision} within {timeout:?} (at {})",
                self.revision()
            ))),
        }
    }

    /// Waits until the cache has caught up with the store's current revision, so that a read
    /// after any acknowledged write sees it. Returns the revision reached.
    pub async fn sync(&self, timeout: Duration) -> Result<Revision> {
        let deadline = tokio::time::Instant::now() + timeout;
        let target = self.inner.store.current_revision().await?;
        loop {
            if self.revision() >= target {
                return Ok(self.revision());
            }
            // The latest writes may be outside the prefix; only progress reports move us past
            // them, and some backends report it only when asked.
            self.inner.store.request_progress().await?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self
                .wait_for(target, left.min(Duration::from_millis(100)))
                .await
            {
                Ok(()) => return Ok(self.revision()),
                Err(e) if left <= Duration::from_millis(100) => return Err(e),
                Err(_) => {}
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<Arc<T>> {
        self.inner
            .read_state()
            .items
            .get(key)
            .map(|e| e.object.clone())
    }

    /// Everything under `prefix` in key order, with the revision it is a snapshot of.
    pub fn list(&self, prefix: &str) -> (Snapshot<T>, Revision) {
        let state = self.inner.read_state();
        (snapshot(&state, prefix), state.revision)
    }

    /// Events under `prefix` with a revision above `after`. [`StoreError::Compacted`] if
    /// `after` is older than the history kept.
    pub fn watch_from(&self, prefix: &str, after: Revision) -> Result<CacheWatch<T>> {
        let state = self.inner.read_state();
        if after < state.oldest {
            return Err(StoreError::Compacted {
                requested: after,
                compacted: state.oldest,
            });
        }
        let backlog = state
            .history
            .iter()
            .filter(|e| e.revision > after && e.key.starts_with(prefix))
            .cloned()
            .collect();
        let queue = self.inner.register(prefix, after.max(state.revision));
        Ok(CacheWatch { backlog, queue })
    }

    /// Atomically: everything under `prefix` at revision R, and a watch of the events above R.
    pub fn snapshot_and_watch(&self, prefix: &str) -> (Snapshot<T>, Revision, CacheWatch<T>) {
        let state = self.inner.read_state();
        let items = snapshot(&state, prefix);
        let queue = self.inner.register(prefix, state.revision);
        (
            items,
            state.revision,
            CacheWatch {
                backlog: VecDeque::new(),
                queue,
            },
        )
    }
}

fn snapshot<T>(state: &State<T>, prefix: &str) -> Snapshot<T> {
    state
        .items
        .range::<str, _>((
            std::ops::Bound::Included(prefix),
            std::ops::Bound::Unbounded,
        ))
        .take_while(|(k, _)| k.starts_with(prefix))
        .map(|(k, e)| (k.clone(), e.object.clone()))
        .collect()
}

fn decode_logged<T>(
    decode: &(impl Fn(&KeyValue) -> Option<T> + ?Sized),
    kv: &KeyValue,
) -> Option<T> {
    let object = decode(kv);
    if object.is_none() {
        tracing::warn!(key = %kv.key, revision = kv.mod_revision, "watch cache skipped a value it cannot decode");
    }
    object
}

/// Reads every key under `prefix` at one revision, page by page.
async fn list_all(store: &DynStore, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
    const PAGE: usize = 5_000;
    let mut kvs = Vec::new();
    let mut at = None;
    loop {
        let start_after = kvs.last().map(|kv: &KeyValue| kv.key.clone());
        let page = store
            .range(RangeRequest {
                prefix,
                start_after: start_after.as_deref(),
                limit: PAGE,
                revision: at,
            })
            .await?;
        at = Some(page.revision);
        kvs.extend(page.kvs);
        if !page.more {
            return Ok((kvs, page.revision));
        }
    }
}

impl<T: Send + Sync + 'static> Inner<T> {
    fn read_state(&self) -> RwLockReadGuard<'_, State<T>> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State<T>> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_watchers(&self) -> MutexGuard<'_, Vec<Watcher<T>>> {
        self.watchers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a watcher; the caller holds the state lock (see [`Inner::state`]).
    fn register(&self, prefix: &str, after: Revision) -> mpsc::Receiver<WatchItem<T>> {
        let (queue, receiver) = mpsc::channel(self.options.watcher_capacity.max(1));
        self.lock_watchers().push(Watcher {
            prefix: prefix.into(),
            after,
            queue,
        });
        receiver
    }

    fn decode_event(&self, event: Event) -> Change<T> {
        match event {
            Event::Put { kv, .. } => {
                let object = decode_logged(&*self.decode, &kv).map(Arc::new);
                Change::Put {
                    key: kv.key,
                    object,
                    revision: kv.mod_revision,
                }
            }
            Event::Delete { mut prev, revision } => {
                prev.mod_revision = revision;
                let object = decode_logged(&*self.decode, &prev).map(Arc::new);
                Change::Delete {
                    key: prev.key,
                    object,
                    revision,
                }
            }
        }
    }

    /// Applies decoded changes in order, records and publishes the resulting events.
    fn apply(&self, changes: Vec<Change<T>>) {
        let mut state = self.write_state();
        let mut events = Vec::with_capacity(changes.len());
        for change in changes {
            match change {
                Change::Put {
                    key,
                    object,
                    revision,
                } => {
                    let existing = state
                        .items
                        .get_key_value(key.as_str())
                        .map(|(k, e)| (k.clone(), e.object.clone()));
                    match (object, existing) {
                        (Some(object), Some((key, prev))) => {
                            state.items.insert(
                                key.clone(),
                                Entry {
                                    object: object.clone(),
                                    mod_revision: revision,
                                },
                            );
                            events.push(CacheEvent {
                                kind: CacheEventKind::Modified,
                                key,
                                object,
                                prev: Some(prev),
                                revision,
                            });
                        }
                        (Some(object), None) => {
                            let key: Arc<str> = Arc::from(key);
                            state.items.insert(
                                key.clone(),
                                Entry {
                                    object: object.clone(),
                                    mod_revision: revision,
                                },
                            );
                            events.push(CacheEvent {
                                kind: CacheEventKind::Added,
                                key,
                                object,
                                prev: None,
                                revision,
                            });
                        }
                        // The new value cannot be decoded: stop serving the stale one.
                        (None, Some((key, prev))) => {
                            state.items.remove(&key);
                            events.push(CacheEvent {
                                kind: CacheEventKind::Deleted,
                                key,
                                object: prev.clone(),
                                prev: Some(prev),
                                revision,
                            });
                        }
                        (None, None) => {}
                    }
                    state.revision = state.revision.max(revision);
                }
                Change::Delete {
                    key,
                    object,
                    revision,
                } => {
                    if let Some((key, entry)) = state.items.remove_entry(key.as_str()) {
                        let object = object.unwrap_or_else(|| entry.object.clone());
                        events.push(CacheEvent {
                            kind: CacheEventKind::Deleted,
                            key,
                            object,
                            prev: Some(entry.object),
                            revision,
                        });
                    }
                    state.revision = state.revision.max(revision);
                }
                Change::Progress(revision) => state.revision = state.revision.max(revision),
            }
        }
        self.publish(&mut state, events);
    }

    /// Records `events` in the history ring and queues them to watchers, still under the state
    /// write lock so that registration cannot interleave.
    fn publish(&self, state: &mut State<T>, events: Vec<CacheEvent<T>>) {
        if !events.is_empty() {
            let mut watchers = self.lock_watchers();
            watchers.retain(|w| {
                for event in &events {
                    if event.revision > w.after && event.key.starts_with(&*w.prefix) {
                        // A full queue ends the watcher; it re-lists rather than holding us up.
                        if w.queue.try_send(WatchItem::Event(event.clone())).is_err() {
                            tracing::debug!(prefix = %w.prefix, "watch cache ended a watcher that fell behind");
                            return false;
                        }
                    }
                }
                true
            });
            for event in events {
                if self.options.history == 0 {
                    state.oldest = event.revision;
                    continue;
                }
                if state.history.len() == self.options.history
                    && let Some(evicted) = state.history.pop_front()
                {
                    state.oldest = evicted.revision;
                }
                state.history.push_back(event);
            }
        }
        let revision = state.revision;
        self.applied.send_if_modified(|r| {
            let moved = *r < revision;
            *r = revision.max(*r);
            moved
        });
    }

    /// Re-lists after the store compacted history the cache still needed, and turns the
    /// difference into events at the listed revision.
    async fn relist(&self) -> Result<()> {
        let (kvs, revision) = list_all(&self.store, &self.prefix).await?;
        let fresh: Vec<(KeyValue, Option<Arc<T>>)> = kvs
            .into_iter()
            .map(|kv| {
                let object = decode_logged(&*self.decode, &kv).map(Arc::new);
                (kv, object)
            })
            .collect();
        let mut state = self.write_state();
        let mut old = std::mem::take(&mut state.items);
        let mut items = BTreeMap::new();
        let mut events = Vec::new();
        for (kv, object) in fresh {
            let Some(object) = object else { continue };
            match old.remove_entry(kv.key.as_str()) {
                Some((key, entry)) if entry.mod_revision == kv.mod_revision => {
                    items.insert(key, entry);
                }
                Some((key, entry)) => {
                    items.insert(
                        key.clone(),
                        Entry {
                            object: object.clone(),
                            mod_revision: kv.mod_revision,
                        },
                    );
                    events.push(CacheEvent {
                        kind: CacheEventKind::Modified,
                        key,
                        object,
                        prev: Some(entry.object),
                        revision,
                    });
                }
                None => {
                    let key: Arc<str> = Arc::from(kv.key.as_str());
                    items.insert(
                        key.clone(),
                        Entry {
                            object: object.clone(),
                            mod_revision: kv.mod_revision,
                        },
                    );
                    events.push(CacheEvent {
                        kind: CacheEventKind::Added,
                        key,
                        object,
                        prev: None,
                        revision,
                    });
                }
            }
        }
        for (key, entry) in old {
            events.push(CacheEvent {
                kind: CacheEventKind::Deleted,
                key,
                object: entry.object.clone(),
                prev: Some(entry.object),
                revision,
            });
        }
        // Keys in order, as a watcher of a list would expect them.
        events.sort_by(|a, b| a.key.cmp(&b.key));
        state.items = items;
        state.revision = state.revision.max(revision);
        tracing::info!(prefix = %self.prefix, revision, changes = events.len(), "watch cache re-listed after compaction");
        self.publish(&mut state, events);
        Ok(())
    }
}

/// Follows the store for as long as the cache lives: watch, and on any loss re-watch from the
/// next revision, re-listing if that history is gone.
async fn follow<T: Send + Sync + 'static>(inner: Arc<Inner<T>>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let from = inner.read_state().revision + 1;
        let mut needs_relist = false;
        match inner.store.watch_progress(&inner.prefix, from).await {
            Ok(stream) => {
                let mut chunks = stream.ready_chunks(512);
                'stream: while let Some(items) = chunks.next().await {
                    backoff = Duration::from_millis(50);
                    let mut changes = Vec::with_capacity(items.len());
                    let mut failure = None;
                    for item in items {
                        match item {
                            Ok(Watched::Event(event)) => changes.push(inner.decode_event(event)),
                            Ok(Watched::Progress(revision)) => {
                                changes.push(Change::Progress(revision))
                            }
                            Err(e) => {
                                failure = Some(e);
                                break;
                            }
                        }
                    }
                    inner.apply(changes);
                    if let Some(e) = failure {
                        needs_relist = matches!(e, StoreError::Compacted { .. });
                        tracing::warn!(prefix = %inner.prefix, error = %e, "watch cache lost its store watch");
                        break 'stream;
                    }
                }
                if !needs_relist {
                    // Do not spin on a store whose watches end as soon as they start.
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
            Err(StoreError::Compacted { .. }) => needs_relist = true,
            Err(e) => {
                tracing::warn!(prefix = %inner.prefix, error = %e, "watch cache cannot watch the store");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        if needs_relist && let Err(e) = inner.relist().await {
            tracing::warn!(prefix = %inner.prefix, error = %e, "watch cache cannot re-list");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// Sends every watcher the cache's revision at a steady pace (the API server's bookmarks).
async fn report_progress<T: Send + Sync + 'static>(inner: Arc<Inner<T>>) {
    let mut ticker = tokio::time::interval(inner.options.progress_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let state = inner.read_state();
        let revision = state.revision;
        inner
            .lock_watchers()
            .retain(|w| match w.queue.try_send(WatchItem::Progress(revision)) {
                Ok(()) => true,
                // A full queue is handled when the next event overflows it; a progress can wait.
                Err(mpsc::error::TrySendError::Full(_)) => true,
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
    }
}
