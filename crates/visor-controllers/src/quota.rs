//! The quota controller: recounts what each ResourceQuota's namespace uses, copies
//! `spec.hard` to `status.hard`, and repairs drift in `status.used` — usage freed by
//! deletions and shrinking updates (admission only ever adds), and objects made before the
//! quota.
//!
//! Flow: a namespace is marked for a recount when one of its quotas is new or its limits
//! change — its `metadata.generation` moves, which admission's charges (they only touch
//! `status.used`) never do, so the quotas are watched as metadata alone — when a pod,
//! claim, service, ConfigMap or Secret in it is deleted, when a pod in it finishes, and for
//! every namespace with quotas once a minute (which covers `count/…` keys of other kinds).
//! A recount reads the quota, lists (consistently) every kind its keys count, and computes
//! the usage with the same evaluators admission uses. Recounts after deletions start at
//! least [`RECOUNT_SPACING`] apart per namespace: deleting many objects (a namespace being
//! emptied) then costs one list a second, not one list per deletion.
//!
//! Guarantees: the controller never lowers `status.used` below what admission has charged.
//! Admission writes its charge and the object in one store transaction, but a recount reads
//! the quota and the kinds it counts one after another, so a charged object can land between
//! the two reads. A lower count is therefore written only when the quota has not changed for
//! [`SETTLE`] since it was read (so every charge in it is at least that old and its object in
//! the lists), and with the quota's resource version as precondition. Higher counts (objects
//! admission never saw, such as those made before the quota) are written at once:
//! over-counting only refuses, never over-commits.
//!
//! Caveats: under a steady stream of charges to one quota, releases wait for a pause of
//! [`SETTLE`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Pod, ResourceQuota, Secret, Service,
};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, ObjectList};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::Notify;
use visor_apiserver::admission::usage::{self, ResourceList};

use crate::informers::Informers;
use crate::lean_meta::LeanMeta;

/// How long a quota must stay unchanged before a recount may lower its usage.
pub const SETTLE: Duration = Duration::from_secs(2);
/// How often every quota is recounted regardless of events.
const RESYNC: Duration = Duration::from_secs(60);
/// The least time between the starts of two recounts of a namespace after deletions.
const RECOUNT_SPACING: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading quota {namespace}/{name}: {source}")]
    Read {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("discovering the resource counted by {key}: {source}")]
    Discover { key: String, source: kube::Error },
    #[error("listing {resource} in {namespace}: {source}")]
    List {
        namespace: String,
        resource: String,
        source: kube::Error,
    },
    #[error("writing the status of quota {namespace}/{name}: {source}")]
    WriteStatus {
        namespace: String,
        name: String,
        source: kube::Error,
    },
}

/// Namespaces waiting for a recount, each with the earliest time it may start, and the
/// wake-up of the worker.
#[derive(Default)]
struct Dirty {
    namespaces: Mutex<DirtySet>,
    wake: Notify,
}

#[derive(Default)]
struct DirtySet {
    due: BTreeMap<String, Instant>,
    /// When each namespace's last recount started.
    started: HashMap<String, Instant>,
}

/// What the worker does next.
enum Next {
    Recount(String),
    WaitUntil(Instant),
    Idle,
}

impl Dirty {
    /// Marks a namespace for a recount as soon as the worker is free.
    fn mark(&self, namespace: &str) {
        self.mark_at(namespace, Instant::now());
    }

    /// Marks a namespace for a recount after a deletion: no sooner than
    /// [`RECOUNT_SPACING`] after its last one started.
    fn mark_spaced(&self, namespace: &str) {
        self.schedule(namespace, |set| {
            set.started
                .get(namespace)
                .map_or_else(Instant::now, |started| *started + RECOUNT_SPACING)
        });
    }

    /// Marks a namespace for a recount no sooner than `at` (or sooner, if already due then).
    fn mark_at(&self, namespace: &str, at: Instant) {
        self.schedule(namespace, |_| at);
    }

    fn schedule(&self, namespace: &str, at: impl FnOnce(&DirtySet) -> Instant) {
        let mut set = self.namespaces.lock().expect("dirty set");
        let at = at(&set);
        match set.due.get_mut(namespace) {
            Some(due) => *due = (*due).min(at),
            None => {
                set.due.insert(namespace.to_string(), at);
            }
        }
        drop(set);
        self.wake.notify_one();
    }

    /// The namespace due soonest, taken if due now.
    fn next(&self) -> Next {
        let mut set = self.namespaces.lock().expect("dirty set");
        let Some((namespace, due)) = set
            .due
            .iter()
            .min_by_key(|(_, due)| **due)
            .map(|(n, d)| (n.clone(), *d))
        else {
            return Next::Idle;
        };
        let now = Instant::now();
        if due > now {
            return Next::WaitUntil(due);
        }
        set.due.remove(&namespace);
        // A start older than the spacing no longer delays anything.
        set.started
            .retain(|_, started| now.duration_since(*started) < RECOUNT_SPACING);
        set.started.insert(namespace.clone(), now);
        Next::Recount(namespace)
    }
}

/// A lower count seen for a quota at a resource version, and when that version was read.
type Pending = HashMap<String, (String, Instant)>;

/// A quota as the controller watches it: its metadata.
type QuotaMeta = LeanMeta<ResourceQuota>;

struct Context {
    client: Client,
    quotas: Arc<QuotaIndex>,
    dirty: Arc<Dirty>,
    pending: Mutex<Pending>,
    resources: Mutex<HashMap<(String, String), ApiResource>>,
}

/// Runs the controller until its watches end.
pub async fn run(client: Client, informers: Arc<Informers>) {
    let quotas = Arc::new(QuotaIndex::default());
    let dirty = Arc::new(Dirty::default());
    let ctx = Arc::new(Context {
        client: client.clone(),
        quotas: quotas.clone(),
        dirty: dirty.clone(),
        pending: Mutex::new(HashMap::new()),
        resources: Mutex::new(HashMap::new()),
    });
    let quota_events = {
        let (dirty, quotas) = (dirty.clone(), quotas.clone());
        let stream = watcher(Api::<QuotaMeta>::all(client.clone()));
        follow("quota", stream, move |event| {
            if let Some(ns) = quotas.observe(&event) {
                dirty.mark(&ns);
            }
        })
    };
    let pods = {
        let (dirty, quotas) = (dirty.clone(), quotas.clone());
        follow(
            "pod",
            informers
                .informer(Api::<Pod>::all(client.clone()), watcher::Config::default())
                .subscribe()
                .map(Ok),
            move |event| {
                // A pod frees its usage when deleted or when it finishes.
                let freed = match &event {
                    Event::Delete(p) => Some(p),
                    Event::Apply(p)
                        if matches!(
                            p.status.as_ref().and_then(|s| s.phase.as_deref()),
                            Some("Succeeded" | "Failed")
                        ) =>
                    {
                        Some(p)
                    }
                    _ => None,
                };
                if let Some(ns) = freed.and_then(|p| p.namespace()) {
                    mark_if_quoted(&quotas, &dirty, &ns);
                }
            },
        )
    };
    let deletions = futures::future::join_all([
        deletions::<PersistentVolumeClaim>(&client, &quotas, &dirty),
        deletions::<Service>(&client, &quotas, &dirty),
        deletions::<ConfigMap>(&client, &quotas, &dirty),
        deletions::<Secret>(&client, &quotas, &dirty),
    ]);
    let resync = {
        let (dirty, quotas) = (dirty.clone(), quotas.clone());
        async move {
            loop {
                tokio::time::sleep(RESYNC).await;
                for ns in quotas.namespaces() {
                    dirty.mark(&ns);
                }
            }
        }
    };
    tokio::select! {
        _ = quota_events => tracing::error!("quota watch ended"),
        _ = pods => tracing::error!("pod watch ended"),
        _ = deletions => tracing::error!("deletion watches ended"),
        _ = resync => {}
        _ = work(ctx) => {}
    }
}

fn watcher<K>(api: Api<K>) -> impl futures::Stream<Item = watcher::Result<Event<K>>> + Send
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher::watcher(api, watcher::Config::default()).default_backoff()
}

/// The quotas the controller knows of, from its watch: where each is, and the generation it
/// was last marked for a recount at.
#[derive(Default)]
struct QuotaIndex {
    inner: Mutex<IndexState>,
}

#[derive(Default)]
struct IndexState {
    by_uid: HashMap<String, KnownQuota>,
    /// While the watch lists again: the quotas listed so far (a quota deleted meanwhile
    /// is forgotten when the listing ends).
    relisting: Option<HashMap<String, KnownQuota>>,
}

#[derive(Clone)]
struct KnownQuota {
    namespace: String,
    name: String,
    generation: i64,
}

impl QuotaIndex {
    /// Takes in a watch event; returns the namespace of a quota that is new or whose spec
    /// changed since it was last marked.
    fn observe(&self, event: &Event<QuotaMeta>) -> Option<String> {
        let mut state = self.inner.lock().expect("quota index");
        let quota = match event {
            Event::Init => {
                state.relisting = Some(HashMap::new());
                return None;
            }
            Event::InitDone => {
                if let Some(listed) = state.relisting.take() {
                    state.by_uid = listed;
                }
                return None;
            }
            Event::Delete(quota) => {
                state.by_uid.remove(&quota.uid()?);
                return None;
            }
            Event::Apply(quota) | Event::InitApply(quota) => quota,
        };
        let known = KnownQuota {
            namespace: quota.namespace()?,
            name: quota.name_any(),
            generation: quota.metadata.generation.unwrap_or(0),
        };
        let uid = quota.uid()?;
        if let Some(listed) = state.relisting.as_mut() {
            listed.insert(uid.clone(), known.clone());
        }
        let before = state.by_uid.insert(uid, known.clone());
        (before.as_ref().map(|b| b.generation) != Some(known.generation)).then_some(known.namespace)
    }

    fn has_namespace(&self, namespace: &str) -> bool {
        let state = self.inner.lock().expect("quota index");
        state.by_uid.values().any(|q| q.namespace == namespace)
    }

    /// The names of the quotas in `namespace`.
    fn names_in(&self, namespace: &str) -> Vec<String> {
        let state = self.inner.lock().expect("quota index");
        let mut names: Vec<String> = state
            .by_uid
            .values()
            .filter(|q| q.namespace == namespace)
            .map(|q| q.name.clone())
            .collect();
        names.sort();
        names
    }

    /// Every namespace with quotas.
    fn namespaces(&self) -> BTreeSet<String> {
        let state = self.inner.lock().expect("quota index");
        state.by_uid.values().map(|q| q.namespace.clone()).collect()
    }
}

fn mark_if_quoted(quotas: &QuotaIndex, dirty: &Dirty, namespace: &str) {
    if quotas.has_namespace(namespace) {
        dirty.mark_spaced(namespace);
    }
}

/// Marks a namespace with quotas whenever an object of `K` in it is deleted (metadata only).
fn deletions<K>(
    client: &Client,
    quotas: &Arc<QuotaIndex>,
    dirty: &Arc<Dirty>,
) -> futures::future::BoxFuture<'static, ()>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let api = Api::<LeanMeta<K>>::all(client.clone());
    let (quotas, dirty) = (quotas.clone(), dirty.clone());
    Box::pin(async move {
        let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
        follow("deletion", stream, |event| {
            if let Event::Delete(obj) = event
                && let Some(ns) = obj.namespace()
            {
                mark_if_quoted(&quotas, &dirty, &ns);
            }
        })
        .await;
    })
}

/// Feeds every item of a watch to `on_item` until the stream ends. The watcher retries after
/// errors (an expired resource version means a re-list) with back-off, so an error is logged
/// and the watch goes on: ending there would stop the controller for good.
async fn follow<T, S>(what: &str, stream: S, mut on_item: impl FnMut(T))
where
    S: futures::Stream<Item = Result<T, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        match item {
            Ok(item) => on_item(item),
            Err(e) => tracing::warn!(error = %e, "{what} watch failed; retrying"),
        }
    }
}

/// The worker: recounts marked namespaces one at a time.
async fn work(ctx: Arc<Context>) {
    loop {
        let namespace = match ctx.dirty.next() {
            Next::Recount(namespace) => namespace,
            Next::WaitUntil(due) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(due.into()) => {}
                    _ = ctx.dirty.wake.notified() => {}
                }
                continue;
            }
            Next::Idle => {
                ctx.dirty.wake.notified().await;
                continue;
            }
        };
        let quotas = ctx.quotas.names_in(&namespace);
        for name in quotas {
            match sync(&ctx, &namespace, &name).await {
                Ok(None) => {}
                Ok(Some(after)) => requeue(&ctx, &namespace, after),
                Err(error) => {
                    tracing::warn!(%error, "quota recount; retrying");
                    requeue(&ctx, &namespace, crate::ERROR_REQUEUE);
                }
            }
        }
    }
}

fn requeue(ctx: &Arc<Context>, namespace: &str, after: Duration) {
    ctx.dirty.mark_at(namespace, Instant::now() + after);
}

/// Recounts one quota. Returns when to look again, if a lower count waits to settle.
async fn sync(ctx: &Context, namespace: &str, name: &str) -> Result<Option<Duration>, Error> {
    let api: Api<ResourceQuota> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(quota) = api.get_opt(name).await.map_err(|source| Error::Read {
        namespace: namespace.into(),
        name: name.into(),
        source,
    })?
    else {
        return Ok(None);
    };
    let read_at = Instant::now();
    let version = quota.resource_version().unwrap_or_default();
    let uid = quota.uid().unwrap_or_default();
    let quota_json = serde_json::to_value(&quota).unwrap_or(Value::Null);
    let hard = usage::parse_list(quota_json.pointer("/spec/hard"));
    let used = usage::parse_list(quota_json.pointer("/status/used"));
    let counted = recount(ctx, namespace, &hard).await?;
    let settled = {
        let pending = ctx.pending.lock().expect("pending");
        pending
            .get(&uid)
            .is_some_and(|(v, since)| *v == version && since.elapsed() >= SETTLE)
    };
    let mut next_used = BTreeMap::new();
    let mut lowering_waits = false;
    for key in hard.keys() {
        let count = counted.get(key).copied().unwrap_or_else(|| usage::count(0));
        let value = match used.get(key) {
            Some(u) if count < *u && !settled => {
                lowering_waits = true;
                *u
            }
            _ => count,
        };
        next_used.insert(key.clone(), json!(value.canonical()));
    }
    {
        let mut pending = ctx.pending.lock().expect("pending");
        if lowering_waits {
            // Start the clock at this version unless it already runs for it.
            let entry = pending
                .entry(uid.clone())
                .or_insert_with(|| (version.clone(), read_at));
            if entry.0 != version {
                *entry = (version.clone(), read_at);
            }
        } else {
            pending.remove(&uid);
        }
    }
    let next_hard = quota_json
        .pointer("/spec/hard")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let current_status = quota_json.get("status").cloned().unwrap_or(Value::Null);
    let next_status = json!({ "hard": next_hard, "used": next_used });
    if current_status.get("hard") != next_status.get("hard")
        || current_status.get("used") != next_status.get("used")
    {
        // A replace with the read version: a charge made since then wins and we recount.
        let body: ResourceQuota = match serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": { "name": name, "namespace": namespace, "resourceVersion": version },
            "spec": quota_json.get("spec").cloned().unwrap_or_else(|| json!({})),
            "status": next_status,
        })) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(%e, "a recounted quota status does not decode");
                return Ok(None);
            }
        };
        let write = api.replace_status(name, &Default::default(), &body).await;
        match write {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {
                return Ok(Some(Duration::from_millis(200)));
            }
            Err(source) => {
                return Err(Error::WriteStatus {
                    namespace: namespace.into(),
                    name: name.into(),
                    source,
                });
            }
        }
    }
    Ok(lowering_waits.then_some(SETTLE))
}

/// What the namespace uses of each key in `hard`, from a consistent list of each kind counted.
async fn recount(
    ctx: &Context,
    namespace: &str,
    hard: &ResourceList,
) -> Result<ResourceList, Error> {
    let mut resources: BTreeSet<(String, String)> = BTreeSet::new();
    for key in hard.keys() {
        if let Some(r) = usage::key_resource(key) {
            resources.insert(r);
        }
    }
    let mut total = ResourceList::new();
    for key in hard.keys() {
        total.insert(key.clone(), usage::count(0));
    }
    for (group, resource) in resources {
        let Some(api_resource) = resolve(ctx, &group, &resource, hard).await? else {
            // A kind that is not served (yet) has no objects.
            continue;
        };
        let api: Api<DynamicObject> =
            Api::namespaced_with(ctx.client.clone(), namespace, &api_resource);
        // The evaluators read JSON: the items are decoded as JSON, not as typed objects.
        let request = kube::core::Request::new(api.resource_url())
            .list(&ListParams::default())
            .map_err(|e| Error::List {
                namespace: namespace.into(),
                resource: resource.clone(),
                source: kube::Error::BuildRequest(e),
            })?;
        let list: ObjectList<Value> =
            ctx.client
                .request(request)
                .await
                .map_err(|source| Error::List {
                    namespace: namespace.into(),
                    resource: resource.clone(),
                    source,
                })?;
        for value in list.items {
            let mut u = usage::usage(&group, &resource, &value);
            u.retain(|k, _| hard.contains_key(k));
            usage::add_all(&mut total, &u);
        }
    }
    Ok(total)
}

/// The served form of a resource, by discovery (remembered once found).
async fn resolve(
    ctx: &Context,
    group: &str,
    resource: &str,
    hard: &ResourceList,
) -> Result<Option<ApiResource>, Error> {
    let key = (group.to_string(), resource.to_string());
    if let Some(found) = ctx.resources.lock().expect("resources").get(&key) {
        return Ok(Some(found.clone()));
    }
    let found = match kube::discovery::group(&ctx.client, group).await {
        Ok(g) => g
            .recommended_resources()
            .into_iter()
            .find(|(r, _)| r.plural == resource)
            .map(|(r, _)| r),
        Err(kube::Error::Api(e)) if e.code == 404 => None,
        Err(source) => {
            return Err(Error::Discover {
                key: hard.keys().next().cloned().unwrap_or_default(),
                source,
            });
        }
    };
    if let Some(found) = &found {
        ctx.resources
            .lock()
            .expect("resources")
            .insert(key, found.clone());
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recount(dirty: &Dirty) -> Option<String> {
        match dirty.next() {
            Next::Recount(namespace) => Some(namespace),
            _ => None,
        }
    }

    fn quota(uid: &str, generation: i64) -> QuotaMeta {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
        LeanMeta::new(ObjectMeta {
            name: Some("q".into()),
            namespace: Some("team".into()),
            uid: Some(uid.into()),
            generation: Some(generation),
            ..Default::default()
        })
    }

    #[test]
    fn a_quota_is_recounted_when_new_or_its_spec_changed_not_on_charges() {
        let quotas = QuotaIndex::default();
        let changed = |e| quotas.observe(&e).is_some();
        assert!(changed(Event::Apply(quota("a", 1))), "new");
        assert!(
            !changed(Event::Apply(quota("a", 1))),
            "a charge moves no generation"
        );
        assert!(changed(Event::Apply(quota("a", 2))), "edited");
        assert!(changed(Event::Apply(quota("b", 1))));
        assert_eq!(quotas.names_in("team"), ["q", "q"]);
        // A re-list after a watch gap: unchanged quotas stay as they were, one deleted
        // meanwhile is forgotten.
        assert!(!changed(Event::Init));
        assert!(!changed(Event::InitApply(quota("a", 2))));
        assert!(!changed(Event::InitDone));
        assert_eq!(quotas.names_in("team"), ["q"]);
        assert!(changed(Event::Apply(quota("b", 1))), "b again");
        assert!(!changed(Event::Delete(quota("b", 1))));
        assert!(!changed(Event::Delete(quota("a", 2))));
        assert!(!quotas.has_namespace("team"));
        assert!(quotas.namespaces().is_empty());
    }

    #[test]
    fn recounts_after_deletions_are_spaced_per_namespace() {
        let dirty = Dirty::default();
        let first_started_after = Instant::now();
        dirty.mark_spaced("a");
        assert_eq!(
            recount(&dirty).as_deref(),
            Some("a"),
            "the first is due at once"
        );
        dirty.mark_spaced("a");
        dirty.mark_spaced("b");
        assert_eq!(
            recount(&dirty).as_deref(),
            Some("b"),
            "another namespace is not held"
        );
        let Next::WaitUntil(due) = dirty.next() else {
            panic!("a second recount of a right after the first");
        };
        assert!(due >= first_started_after + RECOUNT_SPACING);
        // A changed limit does not wait.
        dirty.mark("a");
        assert_eq!(recount(&dirty).as_deref(), Some("a"));
        assert!(matches!(dirty.next(), Next::Idle));
    }
}
