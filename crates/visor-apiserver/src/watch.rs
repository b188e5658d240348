//! Watches: a stream of newline-delimited JSON watch events served from the watch cache.
//!
//! Semantics as upstream: without a resource version the stream opens with the current state
//! as ADDED events; with one it replays every change after it, or ends with a `410 Expired`
//! ERROR event when that history is gone. Selectors are applied to both the old and the new
//! state of each change, so an object leaving the selection is seen as DELETED and one entering
//! it as ADDED. BOOKMARK events carry progress when asked for.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use visor_store::StoreError;
use visor_store::cache::{CacheEventKind, WatchItem};

use crate::errors::{ApiError, ApiResult};
use crate::kinds::ResourceDef;
use crate::object::CachedObject;
use crate::registry::{Filter, Registry, Scope};
use crate::request::Query;
use crate::table::{self, IncludeObject};

/// Upstream's default watch lifetime is randomised between the minimum request timeout and
/// twice it, so that clients re-establish watches at different times.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// How watch events are encoded.
#[derive(Clone, Copy)]
pub enum WatchFormat {
    Json,
    /// Each object reduced to `PartialObjectMetadata`.
    Metadata,
    Table(IncludeObject),
}

struct Encoder {
    def: Arc<ResourceDef>,
    format: WatchFormat,
    first_table: bool,
}

impl Encoder {
    fn event(&mut self, kind: &str, obj: &CachedObject) -> Bytes {
        match self.format {
            WatchFormat::Json if self.def.shared_storage.is_none() => framed(kind, &obj.json),
            WatchFormat::Json => {
                let converted = self
                    .def
                    .shared_storage
                    .as_ref()
                    .map(|s| (s.from_storage)(obj.value()))
                    .unwrap_or_default();
                line(json!({ "type": kind, "object": converted }))
            }
            WatchFormat::Metadata => match crate::object::partial_metadata_bytes(&obj.json) {
                // The metadata's text as stored: no parse of the whole object per watcher.
                Some(partial) => framed(kind, &partial),
                None => {
                    line(json!({ "type": kind, "object": table::partial_metadata(&obj.value()) }))
                }
            },
            WatchFormat::Table(include) => {
                let mut value = obj.value();
                if let Some(shared) = &self.def.shared_storage {
                    value = (shared.from_storage)(value);
                }
                let revision = value
                    .pointer("/metadata/resourceVersion")
                    .cloned()
                    .unwrap_or(Value::Null);
                let with_columns = std::mem::take(&mut self.first_table);
                let t = table::table(
                    &self.def,
                    &[value],
                    json!({ "resourceVersion": revision }),
                    include,
                    with_columns,
                );
                line(json!({ "type": kind, "object": t }))
            }
        }
    }

    fn bookmark(&self, revision: i64, initial_events_end: bool) -> Bytes {
        let mut metadata = json!({ "resourceVersion": revision.to_string() });
        if initial_events_end {
            metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
        }
        line(json!({
            "type": "BOOKMARK",
            "object": { "kind": self.def.kind, "apiVersion": self.def.api_version(), "metadata": metadata },
        }))
    }
}

/// One watch event line around an object that is already JSON text.
fn framed(kind: &str, object: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(object.len() + 32);
    out.put_slice(b"{\"type\":\"");
    out.put_slice(kind.as_bytes());
    out.put_slice(b"\",\"object\":");
    out.put_slice(object);
    out.put_slice(b"}\n");
    out.freeze()
}

fn line(value: Value) -> Bytes {
    let mut bytes = serde_json::to_vec(&value).expect("JSON serialises");
    bytes.push(b'\n');
    Bytes::from(bytes)
}

/// An ERROR event carrying a Status, as upstream ends a watch it cannot serve.
pub fn error_event(err: &ApiError) -> Bytes {
    line(json!({ "type": "ERROR", "object": err.status() }))
}

/// Starts a watch and returns the channel its encoded events arrive on. The stream ends when
/// the timeout passes, the cache drops the watcher, or the receiver is dropped.
pub async fn start(
    registry: Arc<Registry>,
    scope: Scope,
    query: &Query,
    format: WatchFormat,
) -> ApiResult<mpsc::Receiver<Bytes>> {
    let filter = Filter::parse(&scope.def, query)?;
    let prefix = scope.def.namespace_prefix(scope.namespace.as_deref());
    let requested = query
        .resource_version
        .as_deref()
        .filter(|rv| !rv.is_empty() && *rv != "0");
    let send_initial = query.send_initial_events.unwrap_or(requested.is_none());
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let mut encoder = Encoder {
        def: scope.def.clone(),
        format,
        first_table: true,
    };

    let (initial, mut watch) = match requested {
        Some(rv) => {
            let after: i64 = rv
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version {rv:?}")))?;
            match registry.cache.watch_from(&prefix, after) {
                Ok(w) => (Vec::new(), w),
                Err(StoreError::Compacted {
                    requested,
                    compacted,
                }) => {
                    let err = ApiError::gone(format!(
                        "too old resource version: {requested} ({compacted})"
                    ));
                    let _ = tx.send(error_event(&err)).await;
                    return Ok(rx);
                }
                Err(e) => return Err(ApiError::from_store(e, "", "", "")),
            }
        }
        None => {
            if query.resource_version.is_none() {
                registry
                    .cache
                    .sync(Duration::from_secs(10))
                    .await
                    .map_err(|e| ApiError::from_store(e, "", "", ""))?;
            }
            let (snapshot, _, w) = registry.cache.snapshot_and_watch(&prefix);
            let initial = if send_initial { snapshot } else { Vec::new() };
            (initial, w)
        }
    };
    let timeout = query
        .timeout_seconds
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT);
    let bookmarks = query.allow_watch_bookmarks;
    let initial_end_bookmark = query.send_initial_events == Some(true) && bookmarks;
    let start_revision = registry.cache.revision();

    tokio::spawn(async move {
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        for (_, obj) in &initial {
            if filter.matches(obj) && tx.send(encoder.event("ADDED", obj)).await.is_err() {
                return;
            }
        }
        if initial_end_bookmark {
            let revision = initial
                .iter()
                .map(|(_, o)| o.revision)
                .max()
                .unwrap_or(start_revision)
                .max(start_revision);
            if tx.send(encoder.bookmark(revision, true)).await.is_err() {
                return;
            }
        }
        let mut last_bookmark = 0;
        loop {
            let item = tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                item = watch.next() => item,
            };
            let Some(item) = item else {
                // The cache dropped this watcher (it fell behind); the client re-watches.
                return;
            };
            let out = match item {
                WatchItem::Progress(revision) => {
                    if !bookmarks || revision <= last_bookmark {
                        continue;
                    }
                    last_bookmark = revision;
                    encoder.bookmark(revision, false)
                }
                WatchItem::Event(event) => {
                    let now = filter.matches(&event.object);
                    let before = event.prev.as_ref().is_some_and(|p| filter.matches(p));
                    let kind = match event.kind {
                        CacheEventKind::Added if now => "ADDED",
                        CacheEventKind::Deleted if before || (event.prev.is_none() && now) => {
                            "DELETED"
                        }
                        CacheEventKind::Modified if now && before => "MODIFIED",
                        CacheEventKind::Modified if now => "ADDED",
                        CacheEventKind::Modified if before => "DELETED",
                        _ => continue,
                    };
                    encoder.event(kind, &event.object)
                }
            };
            if tx.send(out).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}
