//! Followed stores for the placement controllers (node lifecycle, disruption, zones,
//! balancer): a reflector per kind kept current by a background task, and a [`Notify`] woken on
//! every change, so a controller can recompute from a consistent in-memory view when something
//! moved instead of listing over and over.

use std::sync::Arc;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;

/// Follows `api` into a store; `changed` is notified on every event. The task ends with the
/// returned store's last reader.
pub fn follow<K>(api: Api<K>, config: watcher::Config, changed: Arc<Notify>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher::watcher(api, config)).default_backoff();
    tokio::spawn(async move {
        let mut stream = stream.boxed();
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => changed.notify_one(),
                Err(error) => tracing::debug!(%error, "watch error; retrying"),
            }
        }
    });
    reader
}

/// Waits until every store has its first full list.
pub async fn ready<K>(store: &Store<K>) -> bool
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    store.wait_until_ready().await.is_ok()
}
