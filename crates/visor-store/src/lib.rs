//! The key-value store beneath the API server, with etcd's semantics.
//!
//! Every write moves one global revision forward. Each key remembers the revision that created it
//! (`create_revision`) and the revision that last changed it (`mod_revision`); updates and deletes
//! can be made conditional on the latter (compare-and-swap). Reads can be made at the current or a
//! past revision, and a watch delivers every change under a prefix from a given revision onward.
//! Compaction forgets history older than a revision; asking for it afterwards is an error
//! ([`StoreError::Compacted`]), which the API server turns into `410 Gone`.
//!
//! Two backends implement [`Store`]: [`sqlite::SqliteStore`] (embedded, the default) and
//! [`etcd::EtcdStore`]. Both pass the one conformance suite in `tests/conformance.rs`.
//! [`cache::WatchCache`] sits in front of either and serves get, list and watch from memory.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

pub mod cache;
pub mod compactor;
pub mod etcd;
pub mod sqlite;

/// A position in the store's global history. The first write is revision 1; an empty store is at
/// revision 0 (etcd itself starts at 1, which callers must not rely on).
pub type Revision = i64;

/// One key as stored at some revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    /// Revision of the write that created this incarnation of the key.
    pub create_revision: Revision,
    /// Revision of the last write to the key (for a delete event: the revision of the delete).
    pub mod_revision: Revision,
}

/// One change seen by a watch, in revision order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The key was created or updated; `kv.mod_revision` is the revision of this write. (The
    /// value it replaced is not carried: the watch cache keeps its own, and reading it back
    /// would cost every update a read in the store's writer.)
    Put { kv: KeyValue },
    /// The key was deleted at `revision`; `prev` is its last value before the delete.
    Delete { prev: KeyValue, revision: Revision },
}

impl Event {
    pub fn revision(&self) -> Revision {
        match self {
            Event::Put { kv, .. } => kv.mod_revision,
            Event::Delete { revision, .. } => *revision,
        }
    }

    pub fn key(&self) -> &str {
        match self {
            Event::Put { kv, .. } => &kv.key,
            Event::Delete { prev, .. } => &prev.key,
        }
    }
}

/// The answer to a range read.
#[derive(Clone, Debug, Default)]
pub struct RangeResult {
    /// Keys in ascending byte order.
    pub kvs: Vec<KeyValue>,
    /// The revision the read was made at.
    pub revision: Revision,
    /// True when `limit` cut the result short and more keys follow the last one returned.
    pub more: bool,
}

/// A request for a range read.
#[derive(Clone, Debug, Default)]
pub struct RangeRequest<'a> {
    /// Every key that starts with this prefix.
    pub prefix: &'a str,
    /// Only keys strictly greater than this one (for pagination).
    pub start_after: Option<&'a str>,
    /// At most this many keys; 0 means no limit.
    pub limit: usize,
    /// Read as of this revision; `None` means the current one.
    pub revision: Option<Revision>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("key {0:?} already exists")]
    AlreadyExists(String),
    #[error("key {0:?} not found")]
    NotFound(String),
    /// A compare-and-swap failed: the key's mod revision is no longer the expected one.
    /// `current` is the key's present value (`None` if it was deleted meanwhile).
    #[error("key {key:?} was modified (expected revision {expected})")]
    Conflict {
        key: String,
        expected: Revision,
        current: Option<KeyValue>,
    },
    /// The requested revision is older than the compacted one.
    #[error("revision {requested} has been compacted (oldest kept: {compacted})")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    /// The requested revision is in the future.
    #[error("revision {requested} is newer than the current revision {current}")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },
    /// The watch could not keep up or its backend connection was lost; the watcher must re-list.
    #[error("watch ended: {0}")]
    WatchLost(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store backend error: {0}")]
    Backend(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// One write of a [`Store::transact`]: a create or a compare-and-swap update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnWrite {
    /// Creates `key`, which must not exist.
    Create { key: String, value: Bytes },
    /// Replaces `key`, whose mod revision must be `expected`.
    Update {
        key: String,
        value: Bytes,
        expected: Revision,
    },
}

impl TxnWrite {
    pub fn key(&self) -> &str {
        match self {
            TxnWrite::Create { key, .. } | TxnWrite::Update { key, .. } => key,
        }
    }
}

/// A stream of watch events in revision order. Events of one revision arrive together.
pub type WatchStream = BoxStream<'static, Result<Event>>;

/// One item of a watch that also reports progress ([`Store::watch_progress`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Watched {
    Event(Event),
    /// Every change under the watched prefix with a revision up to and including this one has
    /// been delivered. Lets a watcher advance its revision past writes to other keys.
    Progress(Revision),
}

/// A stream of [`Watched`] items in revision order.
pub type ProgressWatchStream = BoxStream<'static, Result<Watched>>;

/// The store contract. All methods are cancellation-safe in the sense that dropping the future
/// either leaves the write unapplied or applied in full, never half.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates `key`; fails with [`StoreError::AlreadyExists`] if it exists. Returns the new
    /// revision. The write is durable when this returns.
    async fn create(&self, key: &str, value: Bytes) -> Result<Revision>;

    /// Replaces `key` if its mod revision is `expected`; otherwise [`StoreError::Conflict`]
    /// (or [`StoreError::NotFound`] if the key does not exist). Returns the new revision.
    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<Revision>;

    /// Applies every write or none, durably and in one commit: if a precondition fails,
    /// nothing is written and the error is that of the first write whose precondition failed
    /// ([`StoreError::AlreadyExists`], [`StoreError::NotFound`] or [`StoreError::Conflict`],
    /// naming its key). Each key may appear once. Returns each write's revision, in order:
    /// consecutive revisions on SQLite, one shared revision on etcd (one etcd transaction).
    async fn transact(&self, writes: Vec<TxnWrite>) -> Result<Vec<Revision>>;

    /// Deletes `key`, if given only when its mod revision is `expected`. Returns the revision of
    /// the delete and the value the key had.
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(Revision, KeyValue)>;

    /// Reads one key at the current or a past revision. Returns the value, if any, and the
    /// revision the read was made at.
    async fn get(
        &self,
        key: &str,
        revision: Option<Revision>,
    ) -> Result<(Option<KeyValue>, Revision)>;

    /// Reads a range of keys under a prefix.
    async fn range(&self, request: RangeRequest<'_>) -> Result<RangeResult>;

    /// Watches every key under `prefix`, delivering each change with revision `>= from`.
    /// `from` may be at most the current revision + 1; older than the compacted revision fails
    /// with [`StoreError::Compacted`].
    ///
    /// The stream ends with an error when it cannot go on: [`StoreError::Compacted`] if the
    /// history it still had to deliver was compacted, [`StoreError::WatchLost`] if the backend
    /// connection broke or the store closed. The watcher then re-watches or re-lists.
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream> {
        use futures::StreamExt;
        let stream = self.watch_progress(prefix, from).await?;
        Ok(stream
            .filter_map(|item| async move {
                match item {
                    Ok(Watched::Event(event)) => Some(Ok(event)),
                    Ok(Watched::Progress(_)) => None,
                    Err(e) => Some(Err(e)),
                }
            })
            .boxed())
    }

    /// Like [`Store::watch`], and also reports [`Watched::Progress`], so that a watcher of one
    /// prefix can tell that it has seen everything up to the store's current revision even when
    /// the latest writes were to other keys. SQLite reports progress after every write it
    /// publishes; etcd reports it when asked through [`Store::request_progress`].
    async fn watch_progress(&self, prefix: &str, from: Revision) -> Result<ProgressWatchStream>;

    /// Asks every open [`Store::watch_progress`] stream of this store to report its progress
    /// soon. A no-op where progress is reported unasked.
    async fn request_progress(&self) -> Result<()> {
        Ok(())
    }

    /// The store's current revision.
    async fn current_revision(&self) -> Result<Revision>;

    /// Forgets history older than `revision`: afterwards reads and watches below it fail with
    /// [`StoreError::Compacted`]. The latest value of every key is always kept.
    async fn compact(&self, revision: Revision) -> Result<()>;

    /// The oldest revision still readable.
    async fn compacted_revision(&self) -> Result<Revision>;
}

/// Refuses a transaction that writes one key twice (its outcome would depend on the backend).
fn check_distinct_keys(writes: &[TxnWrite]) -> Result<()> {
    let mut keys: Vec<&str> = writes.iter().map(TxnWrite::key).collect();
    keys.sort_unstable();
    match keys.windows(2).find(|pair| pair[0] == pair[1]) {
        Some(pair) => Err(StoreError::Backend(format!(
            "a transaction writes key {:?} more than once",
            pair[0]
        ))),
        None => Ok(()),
    }
}

pub type DynStore = Arc<dyn Store>;

/// Opens a store from the server's `--datastore` flag: `sqlite` (a file in `data_dir`) or
/// `etcd://HOST:PORT[,HOST:PORT...]`.
pub async fn open(datastore: &str, data_dir: &std::path::Path) -> anyhow::Result<DynStore> {
    if datastore == "sqlite" {
        let store = sqlite::SqliteStore::open(&data_dir.join("state.db"))?;
        return Ok(Arc::new(store));
    }
    if let Some(endpoints) = datastore.strip_prefix("etcd://") {
        let endpoints: Vec<String> = endpoints
            .split(',')
            .filter(|e| !e.is_empty())
            .map(|e| format!("http://{e}"))
            .collect();
        anyhow::ensure!(
            !endpoints.is_empty(),
            "--datastore etcd:// needs at least one HOST:PORT"
        );
        let store = etcd::EtcdStore::connect(&endpoints).await?;
        return Ok(Arc::new(store));
    }
    anyhow::bail!(
        "unknown --datastore {datastore:?}: use \"sqlite\" or \"etcd://HOST:PORT[,HOST:PORT...]\""
    )
}
