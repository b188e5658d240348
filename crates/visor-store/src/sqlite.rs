//! The embedded backend: etcd's semantics over one SQLite file.
//!
//! Layout: `log` holds one row per revision (the write's key, value, the revision that created the
//! key's incarnation, the revision of the value it replaced, and whether it was a delete), keyed
//! by revision; `meta` keeps the compacted revision. Which revision holds a key's value at a
//! given revision is looked up in memory ([`index`], rebuilt from `log` on open), as etcd does:
//! a write appends one row and touches no key-ordered B-tree.
//!
//! Writes go through one write connection. A write that finds no other one under way commits
//! on its caller's thread; concurrent writes go through the writer thread (group commit): it
//! drains every queued request into one transaction, checks each request's precondition in queue
//! order (so a request sees the ones before it), commits once, then answers every caller and
//! publishes the batch's events to live watches. With `synchronous=FULL` in WAL mode, the commit's
//! fsync happens before any caller hears back, so an acknowledged write survives a crash.
//!
//! Reads use a small pool of read connections on the blocking thread pool; WAL lets them run
//! beside the writer, each read seeing one committed snapshot.
//!
//! Watches subscribe to the live feed first, then replay the log from their start revision up to
//! the revision committed at that moment, and then follow the feed, skipping what the replay
//! already covered. A watch that falls behind the feed goes back to reading the log, so a slow
//! watcher costs the writer nothing; only if the history it still needs was compacted meanwhile
//! does the watch end ([`StoreError::Compacted`]).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::{broadcast, mpsc, oneshot};

use self::index::{KeyIndex, Version};
use crate::{
    Event, KeyValue, ProgressWatchStream, RangeRequest, RangeResult, Result, Revision, Store,
    StoreError, TxnWrite, Watched,
};

mod index;

/// Requests queued for the writer beyond this make callers wait (back-pressure).
const WRITE_QUEUE: usize = 4096;
/// Upper bound on requests folded into one transaction, to bound a batch's latency.
const MAX_BATCH: usize = 1024;
/// Published batches a live watch may fall behind before it reverts to reading the log.
const FEED_CAPACITY: usize = 1024;
/// Log rows read per query when a watch replays history.
const REPLAY_PAGE: usize = 512;
/// Idle read connections kept for reuse.
const READ_POOL: usize = 8;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS log(
    rev INTEGER PRIMARY KEY,
    key BLOB NOT NULL,
    value BLOB,
    create_rev INTEGER NOT NULL,
    prev_rev INTEGER NOT NULL,
    deleted INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta(name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
-- Files written before the key index moved to memory kept it on disk.
DROP INDEX IF EXISTS log_key_rev;
DROP TABLE IF EXISTS kv;
";

const SQL_VALUE: &str = "SELECT value FROM log WHERE rev = ?1";
const SQL_INDEX: &str = "SELECT rev, key, create_rev, deleted FROM log ORDER BY rev";
const SQL_REPLAY: &str = "SELECT l.rev, l.key, l.value, l.create_rev, l.prev_rev, l.deleted, \
     p.value, p.create_rev FROM log l LEFT JOIN log p ON l.deleted AND p.rev = l.prev_rev \
     WHERE l.rev >= ?1 AND l.rev <= ?2 AND l.key >= ?3 AND l.key < ?4 ORDER BY l.rev LIMIT ?5";
const SQL_HEAD: &str = "SELECT COALESCE((SELECT MAX(rev) FROM log), 0), \
     COALESCE((SELECT value FROM meta WHERE name = 'compacted'), 0)";
/// The SQLite-backed [`Store`].
pub struct SqliteStore {
    shared: Arc<Shared>,
    writes: mpsc::Sender<WriteRequest>,
    /// The write connection: the writer thread's, or a caller's whose write found no other
    /// one under way (see [`SqliteStore::write_here`]).
    writer: Arc<Mutex<Writer>>,
    /// Writes between their call and their answer.
    writing: AtomicUsize,
    feed: broadcast::Sender<Arc<Batch>>,
}

/// State shared by the store handle, the writer thread and watch streams.
struct Shared {
    path: PathBuf,
    readers: Mutex<Vec<Connection>>,
    /// Every key's writes; the writer appends a batch's as it applies them.
    index: RwLock<KeyIndex>,
    /// The last committed revision. Stored after the commit and before the batch is published,
    /// so a watch that reads it after subscribing has every later batch in its feed. Reads never
    /// go past it, which keeps a batch's index entries hidden until it is committed.
    current: AtomicI64,
    /// Raised before the index forgets what a compaction removed, so that a read finding the
    /// index compacted under it can tell.
    compacted: AtomicI64,
}

/// The events of one committed transaction, as published to live watches.
struct Batch {
    events: Vec<Event>,
    /// The store's revision after the batch.
    revision: Revision,
}

enum WriteOp {
    /// Creates and compare-and-swap updates, all or none (one for a plain create or update).
    Puts(Vec<TxnWrite>),
    Delete {
        key: String,
        expected: Option<Revision>,
    },
    Compact {
        revision: Revision,
    },
}

enum WriteOutcome {
    Written(Vec<Revision>),
    Deleted(Revision, KeyValue),
    Compacted,
}

struct WriteRequest {
    op: WriteOp,
    reply: oneshot::Sender<Result<WriteOutcome>>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// The smallest byte string greater than every key that starts with `prefix`. Keys are UTF-8,
/// which never contains the byte 0xFF, so incrementing the last byte cannot overflow and a lone
/// 0xFF bounds every key.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    match end.last_mut() {
        Some(last) => *last += 1,
        None => end.push(0xFF),
    }
    end
}

fn key_string(bytes: Vec<u8>) -> rusqlite::Result<String> {
    String::from_utf8(bytes).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, Box::new(e))
    })
}

fn value_bytes(v: Option<Vec<u8>>) -> Bytes {
    v.map(Bytes::from).unwrap_or_default()
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // Without a stable plan, the bundled build (STAT4) re-prepares a cached statement whenever
    // a key bound to it changes: a recompile on almost every read and write.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(())
}

/// WAL frames beyond the checkpoint threshold that the pre-sized WAL also covers: the commit
/// that crosses the threshold, and commits made while a checkpoint cannot yet restart the WAL.
const WAL_SLACK_FRAMES: u64 = 64;

/// Grows the write-ahead log to the size it reaches between checkpoints, with zeros actually
/// written, so that commits overwrite blocks the file already has. A commit that appends
/// instead makes `fdatasync` journal the file's new size and blocks as well: about twice as
/// long on our disks (`dd oflag=dsync`: 0.22–0.25 ms per 4 KiB appended against 0.1 ms
/// overwritten), for every commit until the log first wraps, i.e. for the first few MiB of
/// writes after each start (SQLite removes the log when the last connection closes).
/// PostgreSQL zero-fills new WAL segments for the same reason.
///
/// Safe because SQLite reads the log only up to the first frame whose salt does not match
/// its header: zeros past the end are what a reset log's stale frames already are. Not
/// `fallocate`: its unwritten extents would need the same journalled conversion on first
/// write. The read in `open` before this has made SQLite create the file if it was missing.
fn presize_wal(conn: &Connection, path: &Path) -> anyhow::Result<()> {
    use std::io::Read;
    let pragma = |name: &str| -> rusqlite::Result<u64> {
        let value: i64 = conn.pragma_query_value(None, name, |r| r.get(0))?;
        Ok(value.max(0) as u64)
    };
    let (page_size, checkpoint_pages) = (pragma("page_size")?, pragma("wal_autocheckpoint")?);
    const WAL_HEADER: u64 = 32;
    const FRAME_HEADER: u64 = 24;
    let target = WAL_HEADER + (checkpoint_pages + WAL_SLACK_FRAMES) * (FRAME_HEADER + page_size);
    let mut wal_path = path.as_os_str().to_owned();
    wal_path.push("-wal");
    let Ok(mut wal) = std::fs::OpenOptions::new().append(true).open(&wal_path) else {
        return Ok(());
    };
    let size = wal.metadata()?.len();
    if size >= target {
        return Ok(());
    }
    std::io::copy(&mut std::io::repeat(0).take(target - size), &mut wal)?;
    wal.sync_all()?;
    Ok(())
}

/// Rebuilds the key index from the log.
fn load_index(conn: &Connection) -> rusqlite::Result<KeyIndex> {
    let mut index = KeyIndex::default();
    let mut statement = conn.prepare(SQL_INDEX)?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        let key = std::str::from_utf8(row.get_ref(1)?.as_blob()?).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Blob, Box::new(e))
        })?;
        let version = Version {
            revision: row.get(0)?,
            create_revision: row.get(2)?,
            deleted: row.get(3)?,
        };
        index.push(key, version);
    }
    Ok(index)
}

/// The value written at `revision`, if its row is still there.
fn value_at(conn: &Connection, revision: Revision) -> rusqlite::Result<Option<Bytes>> {
    conn.prepare_cached(SQL_VALUE)?
        .query_row([revision], |r| Ok(value_bytes(r.get(0)?)))
        .optional()
}

impl SqliteStore {
    /// Opens (creating if needed) the store in the SQLite file at `path` and starts its writer
    /// thread. Must be called from within a Tokio runtime only if watches or reads are used
    /// (they run on its blocking pool); opening itself is synchronous.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        configure(&conn)?;
        conn.execute_batch(SCHEMA)?;
        let (current, compacted): (Revision, Revision) =
            conn.query_row(SQL_HEAD, [], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let current = current.max(compacted);
        let index = load_index(&conn)?;
        presize_wal(&conn, path)?;

        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            readers: Mutex::new(Vec::new()),
            index: RwLock::new(index),
            current: AtomicI64::new(current),
            compacted: AtomicI64::new(compacted),
        });
        let (writes, queue) = mpsc::channel(WRITE_QUEUE);
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        let writer = Writer {
            conn,
            shared: shared.clone(),
            feed: feed.clone(),
            revision: current,
        };
        let writer = Arc::new(Mutex::new(writer));
        let thread_writer = writer.clone();
        std::thread::Builder::new()
            .name("visor-store-writer".into())
            .spawn(move || Writer::run(&thread_writer, queue))?;
        Ok(SqliteStore {
            shared,
            writes,
            writer,
            writing: AtomicUsize::new(0),
            feed,
        })
    }

    async fn puts(&self, writes: Vec<TxnWrite>) -> Result<Vec<Revision>> {
        match self.write(WriteOp::Puts(writes)).await? {
            WriteOutcome::Written(revisions) => Ok(revisions),
            _ => Err(backend("unexpected writer outcome for a write")),
        }
    }

    async fn write(&self, op: WriteOp) -> Result<WriteOutcome> {
        let (reply, answer) = oneshot::channel();
        let writing = Writing::start(&self.writing);
        let request = WriteRequest { op, reply };
        let request = if writing.alone {
            self.write_here(request)
        } else {
            Some(request)
        };
        let stopped = || StoreError::Unavailable("the store's writer has stopped".into());
        if let Some(request) = request {
            self.writes.send(request).await.map_err(|_| stopped())?;
        }
        answer.await.map_err(|_| stopped())?
    }

    /// Commits a lone write (no other one under way) on the calling thread, or hands it back
    /// for the writer thread. It so skips the hand-off to the writer thread and the wake-up
    /// back, about 50 µs of a create's 500 on this project's machines, while concurrent
    /// writes still meet in the writer thread's group commits. The caller's thread is held
    /// for one commit; the commit waits for nothing but the disk, and nothing else of the
    /// store is waiting for it. Compactions, which may take longer, always go to the writer.
    fn write_here(&self, request: WriteRequest) -> Option<WriteRequest> {
        if matches!(request.op, WriteOp::Compact { .. }) {
            return Some(request);
        }
        let Ok(mut writer) = self.writer.try_lock() else {
            return Some(request);
        };
        writer.commit_batch(&mut vec![request]);
        None
    }
}

impl Shared {
    /// Runs `f` on a pooled read connection on the blocking pool, inside one read transaction.
    async fn read<R, F>(self: &Arc<Self>, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        let shared = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = shared.take_reader()?;
            let result = in_snapshot(&conn, f);
            shared.put_reader(conn);
            result
        })
        .await
        .map_err(backend)?
    }

    fn take_reader(&self) -> Result<Connection> {
        let pooled = self.readers.lock().map_err(backend)?.pop();
        if let Some(conn) = pooled {
            return Ok(conn);
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags).map_err(backend)?;
        configure(&conn).map_err(backend)?;
        Ok(conn)
    }

    fn index(&self) -> std::sync::RwLockReadGuard<'_, KeyIndex> {
        // The index is changed only after the SQLite work that could fail: a panic there leaves
        // it whole.
        self.index
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn index_mut(&self) -> std::sync::RwLockWriteGuard<'_, KeyIndex> {
        self.index
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The revision a read asking for `requested` (`None`: the latest) reads at.
    fn read_revision(&self, requested: Option<Revision>) -> Result<Revision> {
        check_revision(
            requested,
            self.current.load(Ordering::Acquire),
            self.compacted.load(Ordering::Acquire),
        )
    }

    /// Whether a read at `at` may still trust what it found: a compaction past `at` may have
    /// removed part of it meanwhile.
    fn still_readable(&self, at: Revision) -> Result<()> {
        let compacted = self.compacted.load(Ordering::Acquire);
        if at < compacted {
            return Err(StoreError::Compacted {
                requested: at,
                compacted,
            });
        }
        Ok(())
    }

    /// The value of a version found in the index for a read at `at`.
    fn value_for(&self, conn: &Connection, version: Version, at: Revision) -> Result<Bytes> {
        match value_at(conn, version.revision).map_err(backend)? {
            Some(value) => Ok(value),
            // Its row went in a compaction that started after the read looked the key up.
            None => Err(StoreError::Compacted {
                requested: at,
                compacted: self.compacted.load(Ordering::Acquire).max(at + 1),
            }),
        }
    }

    fn put_reader(&self, conn: Connection) {
        if let Ok(mut pool) = self.readers.lock()
            && pool.len() < READ_POOL
        {
            pool.push(conn);
        }
    }
}

/// Runs `f` inside one read transaction, so everything it reads comes from one committed
/// snapshot. The statements are cached: parsing `BEGIN` for every read showed in profiles.
fn in_snapshot<R>(conn: &Connection, f: impl FnOnce(&Connection) -> Result<R>) -> Result<R> {
    conn.prepare_cached("BEGIN")
        .and_then(|mut s| s.execute([]))
        .map_err(backend)?;
    let result = f(conn);
    // A read transaction has nothing to undo; ending it either way releases the snapshot.
    let end = conn
        .prepare_cached("COMMIT")
        .and_then(|mut s| s.execute([]))
        .map_err(backend);
    let value = result?;
    end?;
    Ok(value)
}

/// Reads the current and compacted revisions inside the caller's read transaction (a replay
/// checks its history against the same snapshot it reads the history from).
fn head(conn: &Connection) -> Result<(Revision, Revision)> {
    let (current, compacted): (Revision, Revision) = conn
        .prepare_cached(SQL_HEAD)
        .and_then(|mut s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?))))
        .map_err(backend)?;
    Ok((current.max(compacted), compacted))
}

/// Validates a read revision against the snapshot's head; returns the revision to read at.
fn check_revision(
    requested: Option<Revision>,
    current: Revision,
    compacted: Revision,
) -> Result<Revision> {
    match requested {
        None => Ok(current),
        Some(r) if r > current => Err(StoreError::FutureRevision {
            requested: r,
            current,
        }),
        Some(r) if r < compacted => Err(StoreError::Compacted {
            requested: r,
            compacted,
        }),
        Some(r) => Ok(r),
    }
}

/// Counts a write under way in [`SqliteStore::write`] until it is answered or abandoned.
struct Writing<'a> {
    count: &'a AtomicUsize,
    /// Whether no other write was under way when this one started.
    alone: bool,
}

impl<'a> Writing<'a> {
    fn start(count: &'a AtomicUsize) -> Self {
        let before = count.fetch_add(1, Ordering::AcqRel);
        Writing {
            count,
            alone: before == 0,
        }
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Owns the write connection; see the module documentation for the batching protocol.
struct Writer {
    conn: Connection,
    shared: Arc<Shared>,
    feed: broadcast::Sender<Arc<Batch>>,
    revision: Revision,
}

impl Writer {
    fn run(writer: &Mutex<Writer>, mut queue: mpsc::Receiver<WriteRequest>) {
        let mut batch = Vec::with_capacity(64);
        // Ends when every store handle is gone; the feed sender drops with the last of them
        // and this thread's handle on the writer, ending watches.
        while let Some(first) = queue.blocking_recv() {
            let mut writer = writer.lock().expect("store writer");
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            writer.commit_batch(&mut batch);
        }
    }

    fn commit_batch(&mut self, batch: &mut Vec<WriteRequest>) {
        let start_revision = self.revision;
        let mut events = Vec::with_capacity(batch.len());
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut compacted_to = None;

        let applied = (|| -> rusqlite::Result<()> {
            // Cached statements: parsing these two on every commit showed in profiles.
            self.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
            for request in batch.iter() {
                let outcome = self.apply(&request.op, &mut events, &mut compacted_to)?;
                outcomes.push(outcome);
            }
            if let Some(revision) = compacted_to {
                self.conn
                    .prepare_cached(
                        "INSERT INTO meta(name, value) VALUES ('compacted', ?1) \
                         ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                    )?
                    .execute([revision])?;
            }
            self.conn.prepare_cached("COMMIT")?.execute([]).map(drop)
        })();

        if let Err(e) = applied {
            // Nothing of the batch is durable: undo it and tell every caller.
            tracing::error!(error = %e, "store write transaction failed");
            let _ = self.conn.execute_batch("ROLLBACK");
            self.revision = start_revision;
            self.shared.index_mut().truncate_after(start_revision);
            let message = e.to_string();
            for request in batch.drain(..) {
                let _ = request
                    .reply
                    .send(Err(StoreError::Backend(message.clone())));
            }
            return;
        }

        if let Some(revision) = compacted_to {
            // Reads below `revision` are refused before the index forgets what they would need.
            self.shared.compacted.store(revision, Ordering::Release);
            self.shared.index_mut().compact(revision);
        }
        self.shared.current.store(self.revision, Ordering::Release);
        for (request, outcome) in batch.drain(..).zip(outcomes) {
            // A caller that went away still had its write applied in full; nothing to undo.
            let _ = request.reply.send(outcome);
        }
        if !events.is_empty() {
            // No receivers is fine: nobody is watching.
            let _ = self.feed.send(Arc::new(Batch {
                events,
                revision: self.revision,
            }));
        }
    }

    /// Whether the key is live, as of the writes applied so far.
    fn exists(&self, key: &str) -> bool {
        self.shared.index().live_at(key, Revision::MAX).is_some()
    }

    /// The key's live value as of the writes applied so far (this transaction's included).
    fn current(&self, key: &str) -> rusqlite::Result<Option<KeyValue>> {
        let Some(version) = self.shared.index().live_at(key, Revision::MAX) else {
            return Ok(None);
        };
        let value =
            value_at(&self.conn, version.revision)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
        Ok(Some(KeyValue {
            key: key.to_owned(),
            create_revision: version.create_revision,
            mod_revision: version.revision,
            value,
        }))
    }

    fn append_log(
        &self,
        key: &str,
        value: Option<&[u8]>,
        create_revision: Revision,
        prev_revision: Revision,
    ) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO log(rev, key, value, create_rev, prev_rev, deleted) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                self.revision,
                key.as_bytes(),
                value,
                create_revision,
                prev_revision,
                value.is_none()
            ])?;
        self.shared.index_mut().push(
            key,
            Version {
                revision: self.revision,
                create_revision,
                deleted: value.is_none(),
            },
        );
        Ok(())
    }

    /// Writes one checked create (`prev` None) or update (of the key's live version `prev`)
    /// at the next revision.
    fn put(
        &mut self,
        write: &TxnWrite,
        prev: Option<Version>,
        events: &mut Vec<Event>,
    ) -> rusqlite::Result<Revision> {
        let (TxnWrite::Create { key, value } | TxnWrite::Update { key, value, .. }) = write;
        self.revision += 1;
        let rev = self.revision;
        let kv = match &prev {
            None => {
                self.append_log(key, Some(value), rev, 0)?;
                KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                    create_revision: rev,
                    mod_revision: rev,
                }
            }
            Some(prev) => {
                self.append_log(key, Some(value), prev.create_revision, prev.revision)?;
                KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                    create_revision: prev.create_revision,
                    mod_revision: rev,
                }
            }
        };
        events.push(Event::Put { kv });
        Ok(rev)
    }

    /// Checks one request's precondition and applies it. `Err` only for SQLite failures, which
    /// abort the whole batch; a failed precondition is an `Ok(Err(..))` for that caller alone.
    fn apply(
        &mut self,
        op: &WriteOp,
        events: &mut Vec<Event>,
        compacted_to: &mut Option<Revision>,
    ) -> rusqlite::Result<Result<WriteOutcome>> {
        match op {
            WriteOp::Puts(writes) => {
                // Every precondition first, so that a failing one leaves the batch untouched.
                let mut previous = Vec::with_capacity(writes.len());
                for write in writes {
                    let failed = match write {
                        TxnWrite::Create { key, .. } if self.exists(key) => {
                            StoreError::AlreadyExists(key.clone())
                        }
                        TxnWrite::Create { .. } => {
                            previous.push(None);
                            continue;
                        }
                        TxnWrite::Update { key, expected, .. } => {
                            // The index answers the precondition; the value is read only
                            // to report a conflict.
                            let live = self.shared.index().live_at(key, Revision::MAX);
                            match live {
                                None => StoreError::NotFound(key.clone()),
                                Some(live) if live.revision == *expected => {
                                    previous.push(Some(live));
                                    continue;
                                }
                                Some(_) => StoreError::Conflict {
                                    key: key.clone(),
                                    expected: *expected,
                                    current: self.current(key)?,
                                },
                            }
                        }
                    };
                    return Ok(Err(failed));
                }
                let mut revisions = Vec::with_capacity(writes.len());
                for (write, prev) in writes.iter().zip(previous) {
                    revisions.push(self.put(write, prev, events)?);
                }
                Ok(Ok(WriteOutcome::Written(revisions)))
            }
            WriteOp::Delete { key, expected } => {
                let Some(prev) = self.current(key)? else {
                    return Ok(Err(StoreError::NotFound(key.clone())));
                };
                if let Some(expected) = expected
                    && prev.mod_revision != *expected
                {
                    return Ok(Err(StoreError::Conflict {
                        key: key.clone(),
                        expected: *expected,
                        current: Some(prev),
                    }));
                }
                self.revision += 1;
                let rev = self.revision;
                self.append_log(key, None, prev.create_revision, prev.mod_revision)?;
                events.push(Event::Delete {
                    prev: prev.clone(),
                    revision: rev,
                });
                Ok(Ok(WriteOutcome::Deleted(rev, prev)))
            }
            WriteOp::Compact { revision } => {
                let already =
                    compacted_to.unwrap_or_else(|| self.shared.compacted.load(Ordering::Acquire));
                if *revision > self.revision {
                    return Ok(Err(StoreError::FutureRevision {
                        requested: *revision,
                        current: self.revision,
                    }));
                }
                if *revision <= already {
                    // Compacting to where the store already is changes nothing.
                    return Ok(Ok(WriteOutcome::Compacted));
                }
                let removed = self.shared.index().compactable(*revision);
                let mut delete = self.conn.prepare_cached("DELETE FROM log WHERE rev = ?1")?;
                for rev in &removed {
                    delete.execute([rev])?;
                }
                tracing::debug!(revision, removed = removed.len(), "compacted store history");
                *compacted_to = Some(*revision);
                Ok(Ok(WriteOutcome::Compacted))
            }
        }
    }
}

fn read_range(
    shared: &Shared,
    conn: &Connection,
    prefix: &str,
    start_after: Option<&str>,
    limit: usize,
    revision: Option<Revision>,
) -> Result<RangeResult> {
    let at = shared.read_revision(revision)?;
    // The smallest key strictly greater than `start_after`.
    let low = start_after
        .map(|after| format!("{after}\0"))
        .unwrap_or_default();
    // One extra key tells whether more follow.
    let fetch = (limit != 0).then_some(limit + 1);
    let mut found = shared.index().range_at(prefix, &low, at, fetch);
    shared.still_readable(at)?;
    let more = limit != 0 && found.len() > limit;
    if more {
        found.truncate(limit);
    }
    let kvs = found
        .into_iter()
        .map(|(key, version)| {
            Ok(KeyValue {
                value: shared.value_for(conn, version, at)?,
                key: key.into(),
                create_revision: version.create_revision,
                mod_revision: version.revision,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RangeResult {
        kvs,
        revision: at,
        more,
    })
}

fn read_get(
    shared: &Shared,
    conn: &Connection,
    key: &str,
    revision: Option<Revision>,
) -> Result<(Option<KeyValue>, Revision)> {
    let at = shared.read_revision(revision)?;
    let version = shared.index().live_at(key, at);
    shared.still_readable(at)?;
    let kv = match version {
        Some(version) => Some(KeyValue {
            key: key.to_owned(),
            value: shared.value_for(conn, version, at)?,
            create_revision: version.create_revision,
            mod_revision: version.revision,
        }),
        None => None,
    };
    Ok((kv, at))
}

/// Reads up to [`REPLAY_PAGE`] events under `prefix` with revisions in `from..=to`. Fails with
/// [`StoreError::Compacted`] if part of that history is gone.
fn read_log(tx: &Connection, prefix: &str, from: Revision, to: Revision) -> Result<Vec<Event>> {
    let (_, compacted) = head(tx)?;
    if from < compacted {
        return Err(StoreError::Compacted {
            requested: from,
            compacted,
        });
    }
    let high = prefix_end(prefix);
    let mut stmt = tx.prepare_cached(SQL_REPLAY).map_err(backend)?;
    let rows = stmt
        .query_map(
            params![from, to, prefix.as_bytes(), high, REPLAY_PAGE as i64],
            |r| {
                let rev: Revision = r.get(0)?;
                let key = key_string(r.get(1)?)?;
                let create_revision: Revision = r.get(3)?;
                let prev_rev: Revision = r.get(4)?;
                let deleted: bool = r.get(5)?;
                let prev_value: Option<Vec<u8>> = r.get(6)?;
                let prev_create: Option<Revision> = r.get(7)?;
                Ok(if deleted {
                    let prev = KeyValue {
                        key: key.clone(),
                        value: value_bytes(prev_value),
                        create_revision: prev_create.unwrap_or(create_revision),
                        mod_revision: prev_rev,
                    };
                    Event::Delete {
                        prev,
                        revision: rev,
                    }
                } else {
                    let value = value_bytes(r.get(2)?);
                    Event::Put {
                        kv: KeyValue {
                            key,
                            value,
                            create_revision,
                            mod_revision: rev,
                        },
                    }
                })
            },
        )
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(backend)?;
    Ok(rows)
}

/// The state of one watch stream; see the module documentation.
struct WatchState {
    shared: Arc<Shared>,
    feed: broadcast::Receiver<Arc<Batch>>,
    prefix: Arc<str>,
    /// The lowest revision not yet delivered or skipped.
    next: Revision,
    replaying: bool,
    ready: VecDeque<Watched>,
    done: bool,
}

impl WatchState {
    async fn next_item(mut self) -> Option<(Result<Watched>, Self)> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some((Ok(item), self));
            }
            if self.done {
                return None;
            }
            if self.replaying {
                let to = self.shared.current.load(Ordering::Acquire);
                if self.next > to {
                    self.replaying = false;
                    continue;
                }
                let (prefix, from) = (self.prefix.clone(), self.next);
                match self
                    .shared
                    .read(move |conn| read_log(conn, &prefix, from, to))
                    .await
                {
                    Ok(events) => {
                        let full = events.len() == REPLAY_PAGE;
                        let last = events.last().map(Event::revision);
                        self.ready.extend(events.into_iter().map(Watched::Event));
                        if full && let Some(last) = last {
                            self.next = last + 1;
                        } else {
                            if last != Some(to) {
                                self.ready.push_back(Watched::Progress(to));
                            }
                            self.next = to + 1;
                            self.replaying = false;
                        }
                    }
                    Err(e) => {
                        self.done = true;
                        return Some((Err(e), self));
                    }
                }
                continue;
            }
            match self.feed.recv().await {
                Ok(batch) => {
                    if batch.revision < self.next {
                        continue;
                    }
                    let mut last = None;
                    for event in &batch.events {
                        let rev = event.revision();
                        if rev >= self.next && event.key().starts_with(&*self.prefix) {
                            self.ready.push_back(Watched::Event(event.clone()));
                            last = Some(rev);
                        }
                    }
                    if last != Some(batch.revision) {
                        self.ready.push_back(Watched::Progress(batch.revision));
                    }
                    self.next = batch.revision + 1;
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // The feed dropped batches this watch had not read; the log still has them.
                    self.replaying = true;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    self.done = true;
                    return Some((
                        Err(StoreError::WatchLost("the store was closed".into())),
                        self,
                    ));
                }
            }
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn create(&self, key: &str, value: Bytes) -> Result<Revision> {
        let write = TxnWrite::Create {
            key: key.to_owned(),
            value,
        };
        self.puts(vec![write]).await.map(|revisions| revisions[0])
    }

    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<Revision> {
        let write = TxnWrite::Update {
            key: key.to_owned(),
            value,
            expected,
        };
        self.puts(vec![write]).await.map(|revisions| revisions[0])
    }

    async fn transact(&self, writes: Vec<TxnWrite>) -> Result<Vec<Revision>> {
        crate::check_distinct_keys(&writes)?;
        self.puts(writes).await
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(Revision, KeyValue)> {
        match self
            .write(WriteOp::Delete {
                key: key.to_owned(),
                expected,
            })
            .await?
        {
            WriteOutcome::Deleted(rev, prev) => Ok((rev, prev)),
            _ => Err(backend("unexpected writer outcome for delete")),
        }
    }

    async fn get(
        &self,
        key: &str,
        revision: Option<Revision>,
    ) -> Result<(Option<KeyValue>, Revision)> {
        let key = key.to_owned();
        let shared = self.shared.clone();
        self.shared
            .read(move |conn| read_get(&shared, conn, &key, revision))
            .await
    }

    async fn range(&self, request: RangeRequest<'_>) -> Result<RangeResult> {
        let prefix = request.prefix.to_owned();
        let start_after = request.start_after.map(str::to_owned);
        let (limit, revision) = (request.limit, request.revision);
        let shared = self.shared.clone();
        self.shared
            .read(move |conn| {
                read_range(
                    &shared,
                    conn,
                    &prefix,
                    start_after.as_deref(),
                    limit,
                    revision,
                )
            })
            .await
    }

    async fn watch_progress(&self, prefix: &str, from: Revision) -> Result<ProgressWatchStream> {
        // Subscribe before reading the current revision: every batch committed after that read
        // is then in the feed, and everything up to it is in the log.
        let feed = self.feed.subscribe();
        let current = self.shared.current.load(Ordering::Acquire);
        let compacted = self.shared.compacted.load(Ordering::Acquire);
        if from > current + 1 {
            return Err(StoreError::FutureRevision {
                requested: from,
                current,
            });
        }
        if from < compacted {
            return Err(StoreError::Compacted {
                requested: from,
                compacted,
            });
        }
        let state = WatchState {
            shared: self.shared.clone(),
            feed,
            prefix: prefix.into(),
            next: from.max(1),
            replaying: true,
            ready: VecDeque::new(),
            done: false,
        };
        Ok(futures::stream::unfold(state, WatchState::next_item).boxed())
    }

    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.shared.current.load(Ordering::Acquire))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        match self.write(WriteOp::Compact { revision }).await? {
            WriteOutcome::Compacted => Ok(()),
            _ => Err(backend("unexpected writer outcome for compact")),
        }
    }

    async fn compacted_revision(&self) -> Result<Revision> {
        Ok(self.shared.compacted.load(Ordering::Acquire))
    }
}
