//! The HA backend: the [`Store`] contract mapped onto an etcd v3 cluster.
//!
//! Conditional writes are single etcd transactions: create compares the key's create revision
//! with 0, update and delete compare its mod revision with the expected one (and that it exists),
//! and on failure read the key back in the same transaction to report the conflict. Reads and
//! watches at a revision map etcd's "compacted" and "future revision" errors onto
//! [`StoreError::Compacted`] and [`StoreError::FutureRevision`]; broken connections become
//! [`StoreError::Unavailable`] (or [`StoreError::WatchLost`] for a watch).
//!
//! etcd does not say how far it has compacted except in errors, so the compacted revision is
//! found by a binary search of reads at past revisions, starting from the highest compaction this
//! client has seen.
//!
//! Caveat: etcd before 3.4.25 may send a requested progress notification ahead of events it has
//! already queued on the same stream, so a [`Watched::Progress`] can precede events at or below
//! its revision there. Events are still all delivered, in order.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use futures::StreamExt;
use tokio::sync::watch;
use tonic::Code;

use crate::{
    Event, KeyValue, ProgressWatchStream, RangeRequest, RangeResult, Result, Revision, Store,
    StoreError, TxnWrite, Watched,
};

/// How long one unary request may take before the store is reported unavailable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// A key nobody writes, used for reads that only want a revision or an error.
const PROBE_KEY: &[u8] = b"\0visor/probe";

/// The etcd-backed [`Store`].
pub struct EtcdStore {
    client: Client,
    /// The highest compact revision this client has seen; a lower bound of the real one.
    compacted: AtomicI64,
    /// Bumped to ask every open watch stream for a progress notification.
    progress: Arc<watch::Sender<u64>>,
}

/// Maps an etcd client error; `requested` is the revision of a read, if it had one.
fn map_error(e: etcd_client::Error, requested: Revision, compacted: Revision) -> StoreError {
    if let etcd_client::Error::GRpcStatus(status) = &e {
        let message = status.message().to_owned();
        if message.contains("required revision has been compacted") {
            return StoreError::Compacted {
                requested,
                compacted,
            };
        }
        if message.contains("required revision is a future revision") {
            return StoreError::FutureRevision {
                requested,
                current: requested - 1,
            };
        }
        // What a lost or leaderless cluster answers.
        if matches!(
            status.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
        ) {
            return StoreError::Unavailable(message);
        }
        return StoreError::Backend(message);
    }
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
            StoreError::Unavailable(e.to_string())
        }
        other => StoreError::Backend(other.to_string()),
    }
}

async fn timed<T>(
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, etcd_client::Error> {
    match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
        Ok(result) => result,
        Err(_) => Err(etcd_client::Error::IoError(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "etcd request timed out",
        ))),
    }
}

fn convert(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    }
}

/// etcd's range end for every key under `prefix` ("\0" means "to the end of the keyspace").
fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    // UTF-8 never contains 0xFF, so the increment cannot carry.
    match end.last_mut() {
        Some(last) => *last += 1,
        None => end.push(0),
    }
    end
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<Revision> {
    header
        .map(|h| h.revision())
        .ok_or_else(|| StoreError::Backend("etcd response without a header".into()))
}

impl EtcdStore {
    /// Connects to the cluster at `endpoints` (`http://HOST:PORT`) and checks that it answers.
    pub async fn connect(endpoints: &[String]) -> anyhow::Result<Self> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        let client = Client::connect(endpoints, Some(options)).await?;
        let store = EtcdStore {
            client,
            compacted: AtomicI64::new(0),
            progress: Arc::new(watch::Sender::new(0)),
        };
        store
            .current_revision()
            .await
            .map_err(|e| anyhow::anyhow!("etcd at {} does not answer: {e}", endpoints.join(",")))?;
        Ok(store)
    }

    fn seen_compaction(&self, revision: Revision) {
        self.compacted.fetch_max(revision, Ordering::AcqRel);
    }

    fn known_compacted(&self) -> Revision {
        self.compacted.load(Ordering::Acquire)
    }

    /// Whether a read at `revision` succeeds (false: compacted).
    async fn readable(&self, revision: Revision) -> Result<bool> {
        let options = GetOptions::new().with_count_only().with_revision(revision);
        match timed(self.client.kv_client().get(PROBE_KEY, Some(options))).await {
            Ok(_) => Ok(true),
            Err(e) => match map_error(e, revision, 0) {
                StoreError::Compacted { .. } => Ok(false),
                other => Err(other),
            },
        }
    }

    /// Finds the oldest readable revision by binary search between the highest compaction seen
    /// (a lower bound) and the current revision (always readable).
    async fn probe_compacted(&self) -> Result<Revision> {
        let mut low = self.known_compacted().max(1);
        let mut high = self.current_revision().await?;
        if high <= low || self.readable(low).await? {
            self.seen_compaction(low.min(high));
            return Ok(low.min(high));
        }
        // Invariant: `low` is compacted, `high` is readable.
        while high - low > 1 {
            let mid = low + (high - low) / 2;
            if self.readable(mid).await? {
                high = mid;
            } else {
                low = mid;
            }
        }
        self.seen_compaction(high);
        Ok(high)
    }

    /// Turns a read error into a store error, finding the compacted revision if it is that.
    async fn read_error(&self, e: etcd_client::Error, requested: Revision) -> StoreError {
        match map_error(e, requested, self.known_compacted()) {
            StoreError::Compacted {
                requested,
                compacted,
            } => {
                let compacted = self.probe_compacted().await.unwrap_or(compacted);
                StoreError::Compacted {
                    requested,
                    compacted,
                }
            }
            StoreError::FutureRevision { requested, current } => {
                let current = self.current_revision().await.unwrap_or(current);
                StoreError::FutureRevision { requested, current }
            }
            other => other,
        }
    }

    /// Runs a transaction guarded by `compares` whose failure branch reads `key` back.
    async fn guarded(
        &self,
        key: &str,
        compares: Vec<Compare>,
        then: TxnOp,
    ) -> Result<(bool, Revision, Vec<TxnOpResponse>)> {
        let txn = Txn::new()
            .when(compares)
            .and_then(vec![then])
            .or_else(vec![TxnOp::get(key, None)]);
        let response = timed(self.client.kv_client().txn(txn))
            .await
            .map_err(|e| map_error(e, 0, self.known_compacted()))?;
        let revision = header_revision(response.header())?;
        Ok((response.succeeded(), revision, response.op_responses()))
    }
}

/// The value a failed transaction read back in its `or_else` branch.
fn read_back(responses: &[TxnOpResponse]) -> Option<KeyValue> {
    responses.iter().find_map(|r| match r {
        TxnOpResponse::Get(get) => get.kvs().first().map(convert),
        _ => None,
    })
}

/// One watch stream's state.
struct EtcdWatch {
    requests: etcd_client::WatchRequestSender,
    responses: etcd_client::WatchResponseStream,
    progress: watch::Receiver<u64>,
    /// The lowest revision not yet delivered.
    next: Revision,
    ready: std::collections::VecDeque<Watched>,
    done: bool,
}

impl EtcdWatch {
    async fn next_item(mut self) -> Option<(Result<Watched>, Self)> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some((Ok(item), self));
            }
            if self.done {
                return None;
            }
            let message = tokio::select! {
                message = self.responses.message() => message,
                changed = self.progress.changed() => {
                    if changed.is_ok() && self.requests.request_progress().await.is_err() {
                        return self.lost("the watch stream's request channel closed".into());
                    }
                    continue;
                }
            };
            let response = match message {
                Ok(Some(response)) => response,
                Ok(None) => return self.lost("etcd closed the watch stream".into()),
                Err(e) => return self.lost(e.to_string()),
            };
            if response.canceled() {
                self.done = true;
                let error = if response.compact_revision() > 0 {
                    StoreError::Compacted {
                        requested: self.next,
                        compacted: response.compact_revision(),
                    }
                } else {
                    StoreError::WatchLost(format!(
                        "etcd cancelled the watch: {}",
                        response.cancel_reason()
                    ))
                };
                return Some((Err(error), self));
            }
            if response.created() {
                continue;
            }
            if response.events().is_empty() {
                // A progress notification: the stream has sent everything up to this revision.
                if let Some(revision) = response.header().map(|h| h.revision())
                    && revision >= self.next - 1
                {
                    self.ready.push_back(Watched::Progress(revision));
                    self.next = revision + 1;
                }
                continue;
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let converted = match event.event_type() {
                    etcd_client::EventType::Put => Event::Put { kv: convert(kv) },
                    etcd_client::EventType::Delete => {
                        // etcd omits the previous value only if it was compacted away meanwhile.
                        let prev = event.prev_kv().map(convert).unwrap_or_else(|| KeyValue {
                            key: String::from_utf8_lossy(kv.key()).into_owned(),
                            value: Bytes::new(),
                            create_revision: 0,
                            mod_revision: 0,
                        });
                        Event::Delete {
                            prev,
                            revision: kv.mod_revision(),
                        }
                    }
                };
                self.next = self.next.max(converted.revision() + 1);
                self.ready.push_back(Watched::Event(converted));
            }
        }
    }

    fn lost(mut self, reason: String) -> Option<(Result<Watched>, Self)> {
        self.done = true;
        Some((Err(StoreError::WatchLost(reason)), self))
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn create(&self, key: &str, value: Bytes) -> Result<Revision> {
        let compares = vec![Compare::create_revision(key, CompareOp::Equal, 0)];
        let (ok, revision, _) = self
            .guarded(key, compares, TxnOp::put(key, value.to_vec(), None))
            .await?;
        if ok {
            Ok(revision)
        } else {
            Err(StoreError::AlreadyExists(key.to_owned()))
        }
    }

    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<Revision> {
        let compares = vec![
            Compare::create_revision(key, CompareOp::Greater, 0),
            Compare::mod_revision(key, CompareOp::Equal, expected),
        ];
        let (ok, revision, responses) = self
            .guarded(key, compares, TxnOp::put(key, value.to_vec(), None))
            .await?;
        if ok {
            return Ok(revision);
        }
        match read_back(&responses) {
            None => Err(StoreError::NotFound(key.to_owned())),
            current => Err(StoreError::Conflict {
                key: key.to_owned(),
                expected,
                current,
            }),
        }
    }

    async fn transact(&self, writes: Vec<TxnWrite>) -> Result<Vec<Revision>> {
        crate::check_distinct_keys(&writes)?;
        let mut compares = Vec::with_capacity(writes.len() * 2);
        let mut puts = Vec::with_capacity(writes.len());
        let mut reads = Vec::with_capacity(writes.len());
        for write in &writes {
            match write {
                TxnWrite::Create { key, value } => {
                    compares.push(Compare::create_revision(key.as_str(), CompareOp::Equal, 0));
                    puts.push(TxnOp::put(key.as_str(), value.to_vec(), None));
                }
                TxnWrite::Update {
                    key,
                    value,
                    expected,
                } => {
                    compares.push(Compare::create_revision(
                        key.as_str(),
                        CompareOp::Greater,
                        0,
                    ));
                    compares.push(Compare::mod_revision(
                        key.as_str(),
                        CompareOp::Equal,
                        *expected,
                    ));
                    puts.push(TxnOp::put(key.as_str(), value.to_vec(), None));
                }
            }
            reads.push(TxnOp::get(write.key(), None));
        }
        let txn = Txn::new().when(compares).and_then(puts).or_else(reads);
        let response = timed(self.client.kv_client().txn(txn))
            .await
            .map_err(|e| map_error(e, 0, self.known_compacted()))?;
        let revision = header_revision(response.header())?;
        if response.succeeded() {
            return Ok(vec![revision; writes.len()]);
        }
        // The reads ran in the same transaction, so they show which precondition failed.
        let current = response.op_responses().into_iter().map(|r| match r {
            TxnOpResponse::Get(get) => get.kvs().first().map(convert),
            _ => None,
        });
        for (write, current) in writes.into_iter().zip(current) {
            match (write, current) {
                (TxnWrite::Create { key, .. }, Some(_)) => {
                    return Err(StoreError::AlreadyExists(key));
                }
                (TxnWrite::Update { key, .. }, None) => return Err(StoreError::NotFound(key)),
                (TxnWrite::Update { key, expected, .. }, Some(kv))
                    if kv.mod_revision != expected =>
                {
                    return Err(StoreError::Conflict {
                        key,
                        expected,
                        current: Some(kv),
                    });
                }
                _ => {}
            }
        }
        Err(StoreError::Backend(
            "etcd refused a transaction whose preconditions all held".into(),
        ))
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(Revision, KeyValue)> {
        let mut compares = vec![Compare::create_revision(key, CompareOp::Greater, 0)];
        if let Some(expected) = expected {
            compares.push(Compare::mod_revision(key, CompareOp::Equal, expected));
        }
        let then = TxnOp::delete(key, Some(DeleteOptions::new().with_prev_key()));
        let (ok, revision, responses) = self.guarded(key, compares, then).await?;
        if ok {
            let prev = responses.iter().find_map(|r| match r {
                TxnOpResponse::Delete(d) => d.prev_kvs().first().map(convert),
                _ => None,
            });
            // The guard saw the key, so the delete in the same transaction removed it.
            let prev = prev.ok_or_else(|| {
                StoreError::Backend("etcd delete returned no previous value".into())
            })?;
            return Ok((revision, prev));
        }
        match (read_back(&responses), expected) {
            (None, _) => Err(StoreError::NotFound(key.to_owned())),
            (current, Some(expected)) => Err(StoreError::Conflict {
                key: key.to_owned(),
                expected,
                current,
            }),
            (Some(_), None) => Err(StoreError::Backend(
                "etcd refused an unconditional delete".into(),
            )),
        }
    }

    async fn get(
        &self,
        key: &str,
        revision: Option<Revision>,
    ) -> Result<(Option<KeyValue>, Revision)> {
        let mut options = GetOptions::new();
        if let Some(revision) = revision {
            options = options.with_revision(revision.max(1));
        }
        match timed(self.client.kv_client().get(key, Some(options))).await {
            Ok(response) => {
                let at = match revision {
                    Some(r) => r,
                    None => header_revision(response.header())?,
                };
                Ok((response.kvs().first().map(convert), at))
            }
            Err(e) => Err(self.read_error(e, revision.unwrap_or(0)).await),
        }
    }

    async fn range(&self, request: RangeRequest<'_>) -> Result<RangeResult> {
        let mut start = request.prefix.as_bytes().to_vec();
        if let Some(after) = request.start_after {
            let mut after = after.as_bytes().to_vec();
            after.push(0);
            start = start.max(after);
        }
        if start.is_empty() {
            // etcd refuses an empty key; "\0" is the smallest key there is.
            start.push(0);
        }
        let mut options = GetOptions::new().with_range(range_end(request.prefix));
        if request.limit > 0 {
            options = options.with_limit(request.limit as i64);
        }
        if let Some(revision) = request.revision {
            options = options.with_revision(revision.max(1));
        }
        match timed(self.client.kv_client().get(start, Some(options))).await {
            Ok(response) => {
                let revision = match request.revision {
                    Some(r) => r,
                    None => header_revision(response.header())?,
                };
                Ok(RangeResult {
                    kvs: response.kvs().iter().map(convert).collect(),
                    revision,
                    more: response.more(),
                })
            }
            Err(e) => Err(self.read_error(e, request.revision.unwrap_or(0)).await),
        }
    }

    async fn watch_progress(&self, prefix: &str, from: Revision) -> Result<ProgressWatchStream> {
        // etcd reports a compacted start revision only later, on the stream; check it up front
        // so the caller gets the error from this call, as the contract says.
        let from = from.max(1);
        let current = self.current_revision().await?;
        if from > current + 1 {
            return Err(StoreError::FutureRevision {
                requested: from,
                current,
            });
        }
        if from <= current && !self.readable(from).await? {
            let compacted = self.probe_compacted().await?;
            return Err(StoreError::Compacted {
                requested: from,
                compacted,
            });
        }
        let mut options = WatchOptions::new()
            .with_start_revision(from)
            .with_prev_key();
        options = if prefix.is_empty() {
            options.with_all_keys()
        } else {
            options.with_prefix()
        };
        let stream = timed(self.client.watch_client().watch(prefix, Some(options)))
            .await
            .map_err(|e| match map_error(e, from, self.known_compacted()) {
                StoreError::Backend(m) | StoreError::Unavailable(m) => StoreError::Unavailable(m),
                other => other,
            })?;
        let (requests, responses) = stream.split();
        let mut progress = self.progress.subscribe();
        progress.mark_unchanged();
        let state = EtcdWatch {
            requests,
            responses,
            progress,
            next: from,
            ready: Default::default(),
            done: false,
        };
        Ok(futures::stream::unfold(state, EtcdWatch::next_item).boxed())
    }

    async fn request_progress(&self) -> Result<()> {
        self.progress.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    async fn current_revision(&self) -> Result<Revision> {
        let options = GetOptions::new().with_count_only();
        let response = timed(self.client.kv_client().get(PROBE_KEY, Some(options)))
            .await
            .map_err(|e| map_error(e, 0, self.known_compacted()))?;
        header_revision(response.header())
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        match timed(self.client.kv_client().compact(revision, None)).await {
            Ok(_) => {
                self.seen_compaction(revision);
                Ok(())
            }
            Err(e) => match map_error(e, revision, self.known_compacted()) {
                // Compacting to where the store already is changes nothing.
                StoreError::Compacted { .. } => Ok(()),
                StoreError::FutureRevision { requested, .. } => {
                    let current = self.current_revision().await?;
                    Err(StoreError::FutureRevision { requested, current })
                }
                other => Err(other),
            },
        }
    }

    async fn compacted_revision(&self) -> Result<Revision> {
        self.probe_compacted().await
    }
}
