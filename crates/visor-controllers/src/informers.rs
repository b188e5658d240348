//! Shared informers: one watch per kind and selection for every controller of a process that
//! follows it, as upstream's controller-manager shares its informers. Each informer keeps a
//! reflector store and hands every subscriber every watch event, its objects shared behind an
//! `Arc`. With ten controllers following pods, a pod's change is sent, decrypted and decoded
//! once instead of ten times.
//!
//! A subscriber that joins late first gets what it missed as a listing of its own (`Init`,
//! the objects, `InitDone`), so it sees the same sequence it would from a watch of its own.
//! Subscribers never lose events: each has an unbounded queue, drained by a consumer that
//! only files the change (marks work, wakes a loop), so it never grows far.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// What an informer can follow.
pub trait Followed:
    kube::Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> Followed for K where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// The informers of one set of controllers. Their watches stop when this is dropped.
pub struct Informers {
    started: Mutex<HashMap<InformerKey, Arc<dyn Any + Send + Sync>>>,
    stop: CancellationToken,
}

/// An informer is the same when it follows the same kind at the same path with the same
/// selectors.
type InformerKey = (TypeId, String, Option<String>, Option<String>);

impl Default for Informers {
    fn default() -> Self {
        Informers {
            started: Mutex::new(HashMap::new()),
            stop: CancellationToken::new(),
        }
    }
}

impl Drop for Informers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Informers {
    pub fn new() -> Arc<Informers> {
        Arc::new(Informers::default())
    }

    /// The informer for `api` with `config`, started on first use.
    pub fn informer<K: Followed>(&self, api: Api<K>, config: watcher::Config) -> Arc<Informer<K>> {
        let key = (
            TypeId::of::<K>(),
            api.resource_url().to_string(),
            config.label_selector.clone(),
            config.field_selector.clone(),
        );
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = started.get(&key)
            && let Ok(informer) = existing.clone().downcast::<Informer<K>>()
        {
            return informer;
        }
        let informer = Informer::start(api, config, self.stop.child_token());
        started.insert(key, informer.clone());
        informer
    }

    /// Follows `api` into a store; `changed` is notified on every event.
    pub fn store<K: Followed>(
        &self,
        api: Api<K>,
        config: watcher::Config,
        changed: Arc<Notify>,
    ) -> Store<K> {
        let informer = self.informer(api, config);
        let mut events = informer.subscribe();
        tokio::spawn(async move {
            while events.next().await.is_some() {
                changed.notify_one();
            }
        });
        informer.store()
    }

    /// Every object `api` with `config` sees change, deleted ones included: the trigger
    /// stream for a controller that owns them.
    pub fn touched<K: Followed>(
        &self,
        api: Api<K>,
        config: watcher::Config,
    ) -> impl Stream<Item = Arc<K>> + Send + use<K> {
        self.informer(api, config)
            .subscribe()
            .filter_map(|event| async move {
                match event {
                    Event::Apply(object) | Event::InitApply(object) | Event::Delete(object) => {
                        Some(object)
                    }
                    Event::Init | Event::InitDone => None,
                }
            })
    }
}

/// One shared watch: a store and the subscribers it fans out to.
pub struct Informer<K: Followed> {
    store: Store<K>,
    fanout: Mutex<Fanout<K>>,
}

struct Fanout<K: Followed> {
    writer: reflector::store::Writer<K>,
    subscribers: Vec<mpsc::UnboundedSender<Event<Arc<K>>>>,
    /// The objects of the listing under way, for a subscriber joining in the middle of it.
    listing: Option<Vec<Arc<K>>>,
    /// Whether a listing has completed; from then on the store is what a late subscriber gets.
    listed: bool,
}

impl<K: Followed> Informer<K> {
    fn new() -> Arc<Informer<K>> {
        let (store, writer) = reflector::store();
        Arc::new(Informer {
            store,
            fanout: Mutex::new(Fanout {
                writer,
                subscribers: Vec::new(),
                listing: None,
                listed: false,
            }),
        })
    }

    fn start(api: Api<K>, config: watcher::Config, stop: CancellationToken) -> Arc<Informer<K>> {
        let informer = Informer::new();
        let feeding = informer.clone();
        tokio::spawn(async move {
            let mut events = watcher::watcher(api, config).default_backoff().boxed();
            loop {
                let event = tokio::select! {
                    _ = stop.cancelled() => break,
                    event = events.next() => event,
                };
                match event {
                    Some(Ok(event)) => feeding.feed(event),
                    Some(Err(error)) => tracing::debug!(%error, "watch error; retrying"),
                    None => break,
                }
            }
            // Subscribers see their streams end.
            feeding.lock().subscribers.clear();
        });
        informer
    }

    /// The store this informer keeps current.
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Every event from now on, preceded by a listing of what is already known.
    pub fn subscribe(&self) -> impl Stream<Item = Event<Arc<K>>> + Send + use<K> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut fanout = self.lock();
        let catch_up: Option<Vec<Arc<K>>> = match &fanout.listing {
            Some(so_far) => Some(so_far.clone()),
            None if fanout.listed => Some(self.store.state()),
            None => None,
        };
        if let Some(objects) = catch_up {
            let _ = tx.send(Event::Init);
            for object in objects {
                let _ = tx.send(Event::InitApply(object));
            }
            if fanout.listing.is_none() {
                let _ = tx.send(Event::InitDone);
            }
        }
        fanout.subscribers.push(tx);
        receiver_stream(rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Fanout<K>> {
        self.fanout.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies one event to the store and hands it to every subscriber, under one lock so that
    /// a subscriber joining meanwhile sees each change exactly once.
    fn feed(&self, event: Event<K>) {
        let mut fanout = self.lock();
        fanout.writer.apply_watcher_event(&event);
        let shared = match event {
            Event::Init => {
                fanout.listing = Some(Vec::new());
                Event::Init
            }
            Event::InitApply(object) => {
                let object = Arc::new(object);
                if let Some(listing) = fanout.listing.as_mut() {
                    listing.push(object.clone());
                }
                Event::InitApply(object)
            }
            Event::InitDone => {
                fanout.listing = None;
                fanout.listed = true;
                Event::InitDone
            }
            Event::Apply(object) => Event::Apply(Arc::new(object)),
            Event::Delete(object) => Event::Delete(Arc::new(object)),
        };
        fanout
            .subscribers
            .retain(|subscriber| subscriber.send(shared.clone()).is_ok());
    }
}

fn receiver_stream<T: Send + 'static>(
    mut rx: mpsc::UnboundedReceiver<T>,
) -> impl Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Waits until every store has its first full list.
pub async fn ready<K>(store: &Store<K>) -> bool
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    store.wait_until_ready().await.is_ok()
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    use super::*;

    fn map(name: &str, version: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                resource_version: Some(version.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// What a subscriber has been sent so far, as short text.
    fn drain(events: &mut (impl Stream<Item = Event<Arc<ConfigMap>>> + Unpin)) -> Vec<String> {
        let mut seen = Vec::new();
        while let Some(Some(event)) = events.next().now_or_never() {
            let name = |o: &ConfigMap| {
                format!(
                    "{}@{}",
                    o.metadata.name.as_deref().unwrap_or(""),
                    o.metadata.resource_version.as_deref().unwrap_or("")
                )
            };
            seen.push(match event {
                Event::Init => "init".into(),
                Event::InitApply(o) => format!("list {}", name(&o)),
                Event::InitDone => "listed".into(),
                Event::Apply(o) => format!("apply {}", name(&o)),
                Event::Delete(o) => format!("delete {}", name(&o)),
            });
        }
        seen
    }

    #[test]
    fn late_subscribers_see_what_an_own_watch_would_have_shown() {
        let informer = Informer::<ConfigMap>::new();
        let mut first = Box::pin(informer.subscribe());
        informer.feed(Event::Init);
        informer.feed(Event::InitApply(map("a", "1")));
        let mut mid_listing = Box::pin(informer.subscribe());
        informer.feed(Event::InitApply(map("b", "2")));
        informer.feed(Event::InitDone);
        informer.feed(Event::Apply(map("a", "3")));
        informer.feed(Event::Delete(map("b", "2")));
        let mut after = Box::pin(informer.subscribe());
        informer.feed(Event::Apply(map("c", "4")));

        let whole = [
            "init",
            "list a@1",
            "list b@2",
            "listed",
            "apply a@3",
            "delete b@2",
            "apply c@4",
        ];
        assert_eq!(drain(&mut first), whole);
        assert_eq!(drain(&mut mid_listing), whole);
        assert_eq!(
            drain(&mut after),
            ["init", "list a@3", "listed", "apply c@4"],
            "a late subscriber starts from the store as it is"
        );
        let names: Vec<String> = informer
            .store()
            .state()
            .iter()
            .map(|o| o.metadata.name.clone().unwrap_or_default())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(names, ["a", "c"]);
    }

    #[test]
    fn dropped_subscribers_are_let_go() {
        let informer = Informer::<ConfigMap>::new();
        let kept = informer.subscribe();
        drop(informer.subscribe());
        informer.feed(Event::Init);
        informer.feed(Event::InitDone);
        assert_eq!(informer.lock().subscribers.len(), 1);
        drop(kept);
        informer.feed(Event::Apply(map("a", "1")));
        assert!(informer.lock().subscribers.is_empty());
    }
}
