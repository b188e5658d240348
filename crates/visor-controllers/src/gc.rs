//! The garbage collector: deletes objects whose owners are gone, and carries out the
//! `Foreground` and `Orphan` deletion of owners.
//!
//! It keeps an owner graph built from `metadata.ownerReferences` (matched by uid) of every kind
//! the server serves that can be listed, watched and deleted, built-in or custom (events
//! excepted: they own nothing and churn). The kinds come from discovery, repeated every
//! [`REDISCOVER`] so that new custom resources are followed and removed ones dropped. Each kind
//! is followed with a metadata-only watch.
//!
//! Flow: graph changes put object uids on a work queue; a worker takes each uid and does one of
//! three things, chosen by the object's state:
//! - **being deleted, with the `orphan` finalizer**: remove the owner references that name it
//!   from each dependent, then remove the `orphan` finalizer;
//! - **being deleted, with the `foregroundDeletion` finalizer**: delete each dependent (itself
//!   in the foreground when it has dependents of its own); once no dependent that names this
//!   owner with `blockOwnerDeletion: true` remains, remove the finalizer;
//! - **has owners**: look each owner up, in the graph and, if it is not there, with a live
//!   `GET` (the graph may lag). Owners are *solid* (present), *waiting* (being deleted in the
//!   foreground) or *dangling* (absent, or present under another uid). With a solid owner the
//!   object stays, and references to dangling or waiting owners are removed; otherwise the
//!   object is deleted, in the foreground if a waiting owner is what is left and it has
//!   dependents of its own, in the background otherwise, with its uid as precondition.
//!
//! Queued work waits until every kind found by the first discovery has been listed once, so
//! that a dependent is never judged against a graph that has not yet seen its owner's kind.
//!
//! Guarantees: an object with at least one owner that exists is never deleted; an owner
//! deleted in the foreground disappears only after its blocking dependents have; an owner
//! deleted with `orphan` disappears only after its dependents no longer name it. Every step is
//! idempotent and re-checks the server's state, so a step repeated after a crash or a lost
//! race does no harm.
//!
//! Caveats: dependents of a kind that is not watched (it cannot be listed, watched or deleted)
//! neither block foreground deletion nor are deleted. A namespaced owner named by a
//! cluster-scoped dependent counts as dangling, as upstream treats it. Owners whose kind
//! discovery does not know count as solid until the kind appears: deleting on a guess is the
//! one mistake that cannot be undone.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::core::ApiResource;
use kube::discovery::{Discovery, Scope, verbs};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::lean_meta::LeanMeta;

/// How often the set of kinds is discovered again.
const REDISCOVER: Duration = Duration::from_secs(10);
/// How long the worker waits for the first listing of every kind before it starts anyway
/// (a kind whose watch keeps failing must not stop collection of all the others).
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// When to look again at an owner waiting for its dependents, in case an event was missed.
const WAIT_REQUEUE: Duration = Duration::from_secs(5);
/// How many queue items are worked on at once.
const WORKERS: usize = 8;

const ORPHAN: &str = "orphan";
const FOREGROUND: &str = "foregroundDeletion";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("discovering resources: {0}")]
    Discovery(#[source] kube::Error),
    #[error("looking up owner {kind} {name}: {source}")]
    GetOwner {
        kind: String,
        name: String,
        source: kube::Error,
    },
    #[error("deleting {kind} {name}: {source}")]
    Delete {
        kind: String,
        name: String,
        source: kube::Error,
    },
    #[error("removing owner references from {kind} {name}: {source}")]
    RemoveOwnerReferences {
        kind: String,
        name: String,
        source: kube::Error,
    },
    #[error("removing finalizer {finalizer} from {kind} {name}: {source}")]
    RemoveFinalizer {
        finalizer: &'static str,
        kind: String,
        name: String,
        source: kube::Error,
    },
}

/// A kind being watched, as discovery described it.
#[derive(Debug, Clone)]
struct Kind {
    resource: ApiResource,
    namespaced: bool,
}

impl Kind {
    fn api(&self, client: &Client, namespace: Option<&str>) -> Api<DynamicObject> {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => Api::namespaced_with(client.clone(), ns, &self.resource),
            (true, None) | (false, _) => Api::all_with(client.clone(), &self.resource),
        }
    }
}

/// One object in the graph: what is needed to address it and to decide about it.
#[derive(Debug, Clone)]
struct Node {
    kind: Arc<Kind>,
    uid: String,
    name: String,
    namespace: Option<String>,
    owners: Vec<OwnerReference>,
    deleting: bool,
    finalizers: Vec<String>,
}

impl Node {
    fn has_finalizer(&self, finalizer: &str) -> bool {
        self.finalizers.iter().any(|f| f == finalizer)
    }

    fn describe(&self) -> (String, String) {
        let name = match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        };
        (self.kind.resource.kind.clone(), name)
    }
}

/// The owner graph: objects by uid, and for each owner uid the uids of its dependents.
#[derive(Default)]
struct Graph {
    nodes: HashMap<String, Node>,
    dependents: HashMap<String, HashSet<String>>,
}

impl Graph {
    /// Records `node` under `uid`; returns the uids that need a look because of the change.
    fn upsert(&mut self, uid: &str, node: Node) -> Vec<String> {
        let mut wake = Vec::new();
        let old_owners: Vec<String> = self
            .nodes
            .get(uid)
            .map(|n| n.owners.iter().map(|o| o.uid.clone()).collect())
            .unwrap_or_default();
        for owner in &old_owners {
            if let Some(set) = self.dependents.get_mut(owner) {
                set.remove(uid);
                if set.is_empty() {
                    self.dependents.remove(owner);
                }
            }
        }
        for owner in &node.owners {
            self.dependents
                .entry(owner.uid.clone())
                .or_default()
                .insert(uid.to_string());
        }
        // Owners this object stopped naming may have been waiting for it.
        let new_owners: HashSet<&str> = node.owners.iter().map(|o| o.uid.as_str()).collect();
        wake.extend(
            old_owners
                .into_iter()
                .filter(|o| !new_owners.contains(o.as_str())),
        );
        let needs_look = !node.owners.is_empty()
            || (node.deleting && (node.has_finalizer(ORPHAN) || node.has_finalizer(FOREGROUND)));
        self.nodes.insert(uid.to_string(), node);
        if needs_look {
            wake.push(uid.to_string());
        }
        wake
    }

    /// Forgets `uid`; returns its dependents (their owner is gone) and its owners (they may
    /// have been waiting for it).
    fn remove(&mut self, uid: &str) -> Vec<String> {
        let mut wake: Vec<String> = self
            .dependents
            .get(uid)
            .map(|d| d.iter().cloned().collect())
            .unwrap_or_default();
        if let Some(node) = self.nodes.remove(uid) {
            for owner in node.owners {
                if let Some(set) = self.dependents.get_mut(&owner.uid) {
                    set.remove(uid);
                    if set.is_empty() {
                        self.dependents.remove(&owner.uid);
                    }
                }
                wake.push(owner.uid);
            }
        }
        wake
    }

    /// The dependents of `uid`, with the reference each has to it.
    fn dependents_of(&self, uid: &str) -> Vec<(String, Node, OwnerReference)> {
        self.dependents
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|d| {
                let node = self.nodes.get(d)?;
                let reference = node.owners.iter().find(|o| o.uid == uid)?.clone();
                Some((d.clone(), node.clone(), reference))
            })
            .collect()
    }
}

/// A de-duplicating queue of uids.
struct Queue {
    tx: mpsc::UnboundedSender<String>,
    pending: Mutex<HashSet<String>>,
}

impl Queue {
    fn add(&self, uid: String) {
        let fresh = self
            .pending
            .lock()
            .map(|mut p| p.insert(uid.clone()))
            .unwrap_or(true);
        if fresh {
            // The receiver lives as long as the collector; a send fails only at shutdown.
            let _ = self.tx.send(uid);
        }
    }

    fn taken(&self, uid: &str) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(uid);
        }
    }
}

/// Everything the collector's tasks share.
struct State {
    client: Client,
    graph: Mutex<Graph>,
    /// Kinds by (group, kind), for resolving owner references.
    kinds: RwLock<HashMap<(String, String), Arc<Kind>>>,
    queue: Queue,
    token: CancellationToken,
}

impl State {
    fn enqueue_all(&self, uids: Vec<String>) {
        for uid in uids {
            self.queue.add(uid);
        }
    }

    /// Puts `uid` back on the queue after `delay`, unless the collector stops first.
    fn enqueue_after(self: &Arc<Self>, uid: String, delay: Duration) {
        let state = Arc::clone(self);
        tokio::spawn(async move {
            tokio::select! {
                _ = state.token.cancelled() => {}
                _ = tokio::time::sleep(delay) => state.queue.add(uid),
            }
        });
    }

    fn node(&self, uid: &str) -> Option<Node> {
        self.graph.lock().ok()?.nodes.get(uid).cloned()
    }
}

/// Runs the collector until it is dropped. Its watch tasks stop with it.
pub async fn run(client: Client) {
    let token = CancellationToken::new();
    let _stop_tasks = token.clone().drop_guard();
    let (tx, rx) = mpsc::unbounded_channel();
    let state = Arc::new(State {
        client,
        graph: Mutex::new(Graph::default()),
        kinds: RwLock::new(HashMap::new()),
        queue: Queue {
            tx,
            pending: Mutex::new(HashSet::new()),
        },
        token,
    });
    let (synced_tx, synced_rx) = mpsc::unbounded_channel::<()>();
    let first_kinds = tokio::sync::oneshot::channel::<usize>();
    tokio::join!(
        discover_forever(Arc::clone(&state), synced_tx, first_kinds.0),
        work(Arc::clone(&state), rx, synced_rx, first_kinds.1),
    );
}

/// Discovers the kinds now and every [`REDISCOVER`], starting a watch for each new one and
/// stopping the watch of each that went away.
async fn discover_forever(
    state: Arc<State>,
    synced: mpsc::UnboundedSender<()>,
    first: tokio::sync::oneshot::Sender<usize>,
) {
    let mut watches: HashMap<(String, String), CancellationToken> = HashMap::new();
    let mut first = Some(first);
    loop {
        match discover(&state.client).await {
            Ok(found) => {
                let found_keys: HashSet<(String, String)> = found.keys().cloned().collect();
                for (key, kind) in &found {
                    if watches.contains_key(key) {
                        continue;
                    }
                    let child = state.token.child_token();
                    watches.insert(key.clone(), child.clone());
                    tokio::spawn(follow(
                        Arc::clone(&state),
                        Arc::clone(kind),
                        child,
                        first.is_some().then(|| synced.clone()),
                    ));
                }
                let gone: Vec<(String, String)> = watches
                    .keys()
                    .filter(|k| !found_keys.contains(*k))
                    .cloned()
                    .collect();
                for key in gone {
                    if let Some(t) = watches.remove(&key) {
                        t.cancel();
                    }
                    forget_kind(&state, &key);
                }
                if let Ok(mut kinds) = state.kinds.write() {
                    *kinds = found;
                }
                if let Some(first) = first.take() {
                    let _ = first.send(watches.len());
                }
            }
            Err(error) => tracing::warn!(%error, "garbage collector discovery failed"),
        }
        tokio::time::sleep(REDISCOVER).await;
    }
}

/// Every kind that can be listed, watched and deleted, by (group, kind), in its preferred
/// version.
async fn discover(client: &Client) -> Result<HashMap<(String, String), Arc<Kind>>, Error> {
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .map_err(Error::Discovery)?;
    let mut found = HashMap::new();
    for group in discovery.groups() {
        for (resource, caps) in group.recommended_resources() {
            let usable = [verbs::LIST, verbs::WATCH, verbs::DELETE]
                .iter()
                .all(|v| caps.supports_operation(v));
            // Events own nothing and change constantly; upstream's collector ignores them too.
            let ignored = resource.plural == "events"
                && (resource.group.is_empty() || resource.group == "events.k8s.io");
            if !usable || ignored {
                continue;
            }
            let key = (resource.group.clone(), resource.kind.clone());
            let namespaced = caps.scope == Scope::Namespaced;
            found.insert(
                key,
                Arc::new(Kind {
                    resource,
                    namespaced,
                }),
            );
        }
    }
    Ok(found)
}

/// Removes the objects of a kind that is no longer served from the graph.
fn forget_kind(state: &State, key: &(String, String)) {
    let wake = {
        let Ok(mut graph) = state.graph.lock() else {
            return;
        };
        let uids: Vec<String> = graph
            .nodes
            .iter()
            .filter(|(_, n)| n.kind.resource.group == key.0 && n.kind.resource.kind == key.1)
            .map(|(u, _)| u.clone())
            .collect();
        uids.iter().flat_map(|u| graph.remove(u)).collect()
    };
    state.enqueue_all(wake);
}

/// Follows one kind's metadata and keeps the graph up to date with it, until `stop`.
async fn follow(
    state: Arc<State>,
    kind: Arc<Kind>,
    stop: CancellationToken,
    synced: Option<mpsc::UnboundedSender<()>>,
) {
    let api: Api<LeanMeta<DynamicObject>> = Api::all_with(state.client.clone(), &kind.resource);
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut synced = synced;
    let mut listing: Option<HashSet<String>> = None;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            event = events.try_next() => event,
        };
        let event = match event {
            Ok(Some(event)) => event,
            Ok(None) => return,
            Err(error) => {
                tracing::debug!(%error, kind = %kind.resource.kind, "garbage collector watch");
                continue;
            }
        };
        match event {
            watcher::Event::Init => listing = Some(HashSet::new()),
            watcher::Event::InitApply(object) => {
                if let (Some(seen), Some(uid)) = (listing.as_mut(), object.metadata.uid.clone()) {
                    seen.insert(uid);
                }
                observe(&state, &kind, object);
            }
            watcher::Event::InitDone => {
                // Whatever the relist did not return was deleted while we were not looking.
                if let Some(seen) = listing.take() {
                    let wake = match state.graph.lock() {
                        Ok(mut graph) => {
                            let stale: Vec<String> = graph
                                .nodes
                                .iter()
                                .filter(|(u, n)| Arc::ptr_eq(&n.kind, &kind) && !seen.contains(*u))
                                .map(|(u, _)| u.clone())
                                .collect();
                            stale.iter().flat_map(|u| graph.remove(u)).collect()
                        }
                        Err(_) => Vec::new(),
                    };
                    state.enqueue_all(wake);
                }
                if let Some(tx) = synced.take() {
                    let _ = tx.send(());
                }
            }
            watcher::Event::Apply(object) => observe(&state, &kind, object),
            watcher::Event::Delete(object) => {
                if let Some(uid) = object.metadata.uid.as_deref() {
                    let wake = state
                        .graph
                        .lock()
                        .map(|mut g| g.remove(uid))
                        .unwrap_or_default();
                    state.enqueue_all(wake);
                }
            }
        }
    }
}

fn observe(state: &State, kind: &Arc<Kind>, object: LeanMeta<DynamicObject>) {
    let meta = object.metadata;
    let (Some(uid), Some(name)) = (meta.uid, meta.name) else {
        return;
    };
    let node = Node {
        kind: Arc::clone(kind),
        uid: uid.clone(),
        name,
        namespace: meta.namespace,
        owners: meta.owner_references.unwrap_or_default(),
        deleting: meta.deletion_timestamp.is_some(),
        finalizers: meta.finalizers.unwrap_or_default(),
    };
    let wake = state
        .graph
        .lock()
        .map(|mut g| g.upsert(&uid, node))
        .unwrap_or_default();
    state.enqueue_all(wake);
}

/// Works the queue: waits for the first listing of every kind, then handles uids as they come.
async fn work(
    state: Arc<State>,
    rx: mpsc::UnboundedReceiver<String>,
    mut synced: mpsc::UnboundedReceiver<()>,
    first_kinds: tokio::sync::oneshot::Receiver<usize>,
) {
    let initial_sync = async {
        let expected = first_kinds.await.unwrap_or(0);
        for _ in 0..expected {
            if synced.recv().await.is_none() {
                break;
            }
        }
    };
    if tokio::time::timeout(SYNC_TIMEOUT, initial_sync)
        .await
        .is_err()
    {
        tracing::warn!("garbage collector starting before every kind was listed");
    }
    let uids = futures::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|uid| (uid, rx)) },
    );
    uids.for_each_concurrent(WORKERS, |uid| {
        let state = Arc::clone(&state);
        async move {
            state.queue.taken(&uid);
            match process(&state, &uid).await {
                Ok(Outcome::Done) => {}
                Ok(Outcome::Wait) => state.enqueue_after(uid, WAIT_REQUEUE),
                Err(error) => {
                    tracing::warn!(%error, "garbage collection failed; retrying");
                    state.enqueue_after(uid, crate::ERROR_REQUEUE);
                }
            }
        }
    })
    .await;
}

/// What became of one queue item.
enum Outcome {
    Done,
    /// Dependents are still going: look again later (their deletion also wakes us).
    Wait,
}

/// Where an owner stands, as seen from one dependent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OwnerState {
    /// It exists and is not being deleted in the foreground.
    Solid,
    /// It is being deleted in the foreground, waiting for its dependents.
    Waiting,
    /// It does not exist (or another object has its name now).
    Dangling,
}

async fn process(state: &Arc<State>, uid: &str) -> Result<Outcome, Error> {
    let Some(node) = state.node(uid) else {
        return Ok(Outcome::Done);
    };
    match (
        node.deleting,
        node.has_finalizer(ORPHAN),
        node.has_finalizer(FOREGROUND),
    ) {
        // Orphan wins over foreground, as upstream: the user asked to keep the dependents.
        (true, true, _) => orphan_dependents(state, uid, &node).await,
        (true, false, true) => delete_dependents(state, uid, &node).await,
        // Being deleted some other way: the server finishes it once its finalizers are gone.
        (true, false, false) => Ok(Outcome::Done),
        (false, _, _) if node.owners.is_empty() => Ok(Outcome::Done),
        (false, _, _) => attempt_to_delete(state, uid, &node).await,
    }
}

/// Decides whether a dependent still has an owner, and deletes it if not.
async fn attempt_to_delete(state: &Arc<State>, uid: &str, node: &Node) -> Result<Outcome, Error> {
    let mut owners: Vec<(OwnerReference, OwnerState)> = Vec::new();
    for reference in &node.owners {
        let owner_state = owner_state(state, node, reference).await?;
        owners.push((reference.clone(), owner_state));
    }
    let solid = owners.iter().any(|(_, s)| *s == OwnerState::Solid);
    let waiting = owners.iter().any(|(_, s)| *s == OwnerState::Waiting);
    let dangling = owners.iter().any(|(_, s)| *s == OwnerState::Dangling);
    let has_dependents = state
        .graph
        .lock()
        .map(|g| g.dependents.get(uid).is_some_and(|d| !d.is_empty()))
        .unwrap_or(false);
    match (solid, waiting, dangling) {
        // Owned and nothing stale: nothing to do.
        (true, false, false) => Ok(Outcome::Done),
        // Still owned: drop the references to owners that are gone or going, so the object
        // neither holds them up nor is later taken for an orphan.
        (true, _, _) => {
            let stale: Vec<String> = owners
                .iter()
                .filter(|(_, s)| *s != OwnerState::Solid)
                .map(|(r, _)| r.uid.clone())
                .collect();
            remove_owner_references(state, node, &stale).await?;
            Ok(Outcome::Done)
        }
        // Only owners waiting in the foreground: go, and make our own dependents go first so
        // that the wait is honest.
        (false, true, _) if has_dependents => {
            delete(state, uid, node, DeleteParams::foreground()).await
        }
        (false, true, _) => delete(state, uid, node, DeleteParams::background()).await,
        // Every owner is gone.
        (false, false, true) => delete(state, uid, node, DeleteParams::background()).await,
        // No owners at all: the list was emptied since it was queued.
        (false, false, false) => Ok(Outcome::Done),
    }
}

async fn owner_state(
    state: &State,
    node: &Node,
    reference: &OwnerReference,
) -> Result<OwnerState, Error> {
    let from_graph = state.node(&reference.uid);
    if let Some(owner) = from_graph {
        return Ok(match owner.deleting && owner.has_finalizer(FOREGROUND) {
            true => OwnerState::Waiting,
            false => OwnerState::Solid,
        });
    }
    // Not in the graph: it may be gone, or the graph may not have seen it yet. Ask.
    let group = reference
        .api_version
        .split_once('/')
        .map(|(g, _)| g)
        .unwrap_or("");
    let kind = state
        .kinds
        .read()
        .ok()
        .and_then(|k| k.get(&(group.to_string(), reference.kind.clone())).cloned());
    let Some(kind) = kind else {
        // Unknown kind: never delete on a guess.
        return Ok(OwnerState::Solid);
    };
    if kind.namespaced && node.namespace.is_none() {
        return Ok(OwnerState::Dangling);
    }
    let api = kind.api(&state.client, node.namespace.as_deref());
    let found = api
        .get_metadata_opt(&reference.name)
        .await
        .map_err(|source| Error::GetOwner {
            kind: reference.kind.clone(),
            name: reference.name.clone(),
            source,
        })?;
    Ok(match found {
        None => OwnerState::Dangling,
        Some(owner) if owner.metadata.uid.as_deref() != Some(&reference.uid) => {
            OwnerState::Dangling
        }
        Some(owner) => {
            let foreground = owner.metadata.deletion_timestamp.is_some()
                && owner
                    .metadata
                    .finalizers
                    .iter()
                    .flatten()
                    .any(|f| f == FOREGROUND);
            match foreground {
                true => OwnerState::Waiting,
                false => OwnerState::Solid,
            }
        }
    })
}

async fn delete(
    state: &State,
    uid: &str,
    node: &Node,
    params: DeleteParams,
) -> Result<Outcome, Error> {
    let params = params.preconditions(Preconditions {
        uid: Some(uid.to_string()),
        resource_version: None,
    });
    let api = node.kind.api(&state.client, node.namespace.as_deref());
    match api.delete(&node.name, &params).await {
        Ok(_) => {
            let (kind, name) = node.describe();
            tracing::info!(%kind, %name, "garbage collector deleted a dependent");
            Ok(Outcome::Done)
        }
        // Gone already, or replaced by another object of the same name: nothing to delete.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(Outcome::Done),
        Err(source) => {
            let (kind, name) = node.describe();
            Err(Error::Delete { kind, name, source })
        }
    }
}

/// Removes the owner references naming any of `owners` from `node`. The references are read
/// afresh (the graph may be a step behind), and the JSON patch tests each reference's uid at
/// its index, so that a list changed in between fails the patch instead of losing the wrong
/// entry; the failure is retried.
async fn remove_owner_references(
    state: &State,
    node: &Node,
    owners: &[String],
) -> Result<(), Error> {
    let error = |source| {
        let (kind, name) = node.describe();
        Error::RemoveOwnerReferences { kind, name, source }
    };
    let Some(current) = fresh(state, node).await.map_err(error)? else {
        return Ok(());
    };
    let mut ops = Vec::new();
    let references = current.owner_references.unwrap_or_default();
    for (i, reference) in references.iter().enumerate().rev() {
        if owners.contains(&reference.uid) {
            ops.push(json!({ "op": "test", "path": format!("/metadata/ownerReferences/{i}/uid"), "value": reference.uid }));
            ops.push(json!({ "op": "remove", "path": format!("/metadata/ownerReferences/{i}") }));
        }
    }
    if ops.is_empty() {
        return Ok(());
    }
    patch(state, node, ops).await.map_err(error)
}

/// Removes `finalizer` from `node`, read afresh, with the same guarded JSON patch.
async fn remove_finalizer(
    state: &State,
    node: &Node,
    finalizer: &'static str,
) -> Result<(), Error> {
    let error = |source| {
        let (kind, name) = node.describe();
        Error::RemoveFinalizer {
            finalizer,
            kind,
            name,
            source,
        }
    };
    let Some(current) = fresh(state, node).await.map_err(error)? else {
        return Ok(());
    };
    let ops: Vec<serde_json::Value> = current
        .finalizers
        .unwrap_or_default()
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, f)| *f == finalizer)
        .flat_map(|(i, f)| {
            [
                json!({ "op": "test", "path": format!("/metadata/finalizers/{i}"), "value": f }),
                json!({ "op": "remove", "path": format!("/metadata/finalizers/{i}") }),
            ]
        })
        .collect();
    if ops.is_empty() {
        return Ok(());
    }
    patch(state, node, ops).await.map_err(error)
}

/// The object's current metadata, if it still exists (and is the same object, not a new one
/// of the same name).
async fn fresh(state: &State, node: &Node) -> Result<Option<ObjectMeta>, kube::Error> {
    let api = node.kind.api(&state.client, node.namespace.as_deref());
    Ok(api
        .get_metadata_opt(&node.name)
        .await?
        .map(|object| object.metadata)
        .filter(|meta| meta.uid.as_deref() == Some(node.uid.as_str())))
}

async fn patch(state: &State, node: &Node, ops: Vec<serde_json::Value>) -> Result<(), kube::Error> {
    let patch: json_patch::Patch = match serde_json::from_value(serde_json::Value::Array(ops)) {
        Ok(p) => p,
        // The operations are built above from fixed shapes; they always parse.
        Err(_) => return Ok(()),
    };
    let api = node.kind.api(&state.client, node.namespace.as_deref());
    match api
        .patch(
            &node.name,
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Gone: nothing left to change.
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Foreground deletion: delete the dependents, release the owner once none blocks it.
async fn delete_dependents(state: &Arc<State>, uid: &str, owner: &Node) -> Result<Outcome, Error> {
    let dependents = state
        .graph
        .lock()
        .map(|g| g.dependents_of(uid))
        .unwrap_or_default();
    for (dependent_uid, dependent, _) in &dependents {
        if !dependent.deleting {
            attempt_to_delete(state, dependent_uid, dependent).await?;
        }
    }
    let blocking = dependents
        .iter()
        .filter(|(_, _, r)| r.block_owner_deletion == Some(true))
        .count();
    match blocking {
        0 => {
            remove_finalizer(state, owner, FOREGROUND).await?;
            let (kind, name) = owner.describe();
            tracing::info!(%kind, %name, "dependents gone; foreground deletion finishes");
            Ok(Outcome::Done)
        }
        _ => Ok(Outcome::Wait),
    }
}

/// Orphan deletion: make the dependents forget the owner, then release it.
async fn orphan_dependents(state: &Arc<State>, uid: &str, owner: &Node) -> Result<Outcome, Error> {
    let dependents = state
        .graph
        .lock()
        .map(|g| g.dependents_of(uid))
        .unwrap_or_default();
    for (_, dependent, _) in &dependents {
        remove_owner_references(state, dependent, &[uid.to_string()]).await?;
    }
    remove_finalizer(state, owner, ORPHAN).await?;
    Ok(Outcome::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind() -> Arc<Kind> {
        Arc::new(Kind {
            resource: ApiResource {
                group: "apps".into(),
                version: "v1".into(),
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                plural: "replicasets".into(),
            },
            namespaced: true,
        })
    }

    fn node(owners: &[&str], deleting: bool, finalizers: &[&str]) -> Node {
        Node {
            kind: kind(),
            uid: "x".into(),
            name: "x".into(),
            namespace: Some("ns".into()),
            owners: owners
                .iter()
                .map(|u| OwnerReference {
                    uid: u.to_string(),
                    ..OwnerReference::default()
                })
                .collect(),
            deleting,
            finalizers: finalizers.iter().map(|f| f.to_string()).collect(),
        }
    }

    #[test]
    fn graph_tracks_dependents_and_wakes_the_right_objects() {
        let mut g = Graph::default();
        // An owner with no owners of its own needs no look.
        assert!(g.upsert("owner", node(&[], false, &[])).is_empty());
        // A dependent needs a look (its owner might be gone).
        assert_eq!(g.upsert("dep", node(&["owner"], false, &[])), ["dep"]);
        assert_eq!(g.dependents_of("owner").len(), 1);
        // Deleting the owner wakes the dependent.
        assert_eq!(g.remove("owner"), ["dep"]);
        // The dependent dropping its reference wakes the owner it named.
        assert_eq!(g.upsert("dep", node(&[], false, &[])), ["owner"]);
        assert!(g.dependents_of("owner").is_empty());
        // A dependent going wakes its owners.
        g.upsert("dep2", node(&["o2"], false, &[]));
        assert_eq!(g.remove("dep2"), ["o2"]);
        // An owner being deleted in the foreground needs a look.
        assert_eq!(g.upsert("o3", node(&[], true, &[FOREGROUND])), ["o3"]);
    }
}
