//! The scheduler loop: watches pods, nodes and namespaces, places pending pods with the
//! [`Cluster`] and binds them through `pods/binding`.
//!
//! One task owns the placement state (an actor): watch events and the outcomes of bindings
//! arrive on one channel, so the cache is never locked and placements are made one at a time,
//! each seeing every earlier one (assumed before its binding is stored). Bindings run
//! concurrently, bounded, so a placement never waits for a round trip.
//!
//! Retries are event-driven, as upstream's scheduling queue: a pod that fits nowhere gets
//! `PodScheduled=False` (reason `Unschedulable`, the per-reason message) and waits until
//! something changes that could make it fit — a host added or changed, a pod gone — and its
//! back-off (1 s doubling to 10 s) has passed. A safety net retries every waiting pod once a
//! minute.
//!
//! Relists: when a watch falls behind the server's history it lists again, and what the list
//! says can be older than what the scheduler already did — a pod it has just bound still
//! unbound, a pod whose binding is in flight missing. Neither may undo a placement: a binding
//! is never undone, so an unbound view of a pod known bound (same UID) is stale and ignored,
//! and an assumed placement stays until its binding's outcome says otherwise. Forgetting them
//! would leave hosts looking emptier than they are, and the next placements would pile onto
//! them (10,000 pods on 5,000 hosts ended at 3 on some hosts and 1 on others).
//!
//! Preemption: a pod that fits nowhere for lack of resources, and has a higher priority than
//! pods on some host, nominates that host (`status.nominatedNodeName`), the victims are
//! deleted gracefully, and the pod is placed once they are gone.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    Event as CoreEvent, EventSource, Namespace, Node, ObjectReference, Pod,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};

use crate::cluster::Cluster;
use crate::convert::{self, pod_key};
use crate::model::{Labels, Selector, Workload};

/// The scheduler name pods ask for when they leave it to Visor.
pub const DEFAULT_SCHEDULER: &str = "default-scheduler";
/// The name the scheduler reports itself by in events.
pub const COMPONENT: &str = "visor-scheduler";

const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Waiting pods are retried at least this often, whatever happens.
const FLUSH_WAITING_AFTER: Duration = Duration::from_secs(60);
const TICK: Duration = Duration::from_millis(100);
/// Bindings in flight at once.
const BIND_CONCURRENCY: usize = 64;
/// Placements made before looking at new events again.
const BATCH: usize = 256;

enum Msg {
    Pod(Box<Event<Pod>>),
    Node(Box<Event<Node>>),
    Namespace(Box<Event<Namespace>>),
    Bound {
        key: String,
        host: String,
        error: Option<(u16, String)>,
    },
}

struct Waiting {
    not_before: Instant,
    since: Instant,
    /// Something changed since the pod was found unschedulable.
    woken: bool,
}

/// A pod known to be bound: where, and which incarnation of the name (a pod deleted and
/// created again under the same name is a new pod).
struct BoundPod {
    host: String,
    uid: Option<String>,
}

struct State {
    client: Client,
    cluster: Cluster,
    /// Pending pods this scheduler is responsible for, by key.
    pending: HashMap<String, Arc<Pod>>,
    active: VecDeque<String>,
    queued: HashSet<String>,
    waiting: HashMap<String, Waiting>,
    attempts: HashMap<String, u32>,
    /// Keys being bound right now, with their host.
    binding: HashMap<String, String>,
    /// The last unschedulable message written per pod, so an unchanged one is not rewritten.
    reported: HashMap<String, String>,
    /// Bound pods, so a pod's removal can be accounted and a stale view of it recognised.
    bound: HashMap<String, BoundPod>,
    namespace_labels: HashMap<String, Labels>,
    nodes: HashMap<String, crate::model::HostInfo>,
    wake: bool,
    /// What a relist saw, to drop what disappeared while the watch was down.
    relist_pods: Option<HashSet<String>>,
    relist_nodes: Option<HashSet<String>>,
    tx: mpsc::UnboundedSender<Msg>,
    binds: Arc<Semaphore>,
}

/// Runs the scheduler until the task is dropped or every watch ends.
pub async fn run(client: Client) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    spawn_watch::<Pod>(client.clone(), tx.clone(), |e| Msg::Pod(Box::new(e)));
    spawn_watch::<Node>(client.clone(), tx.clone(), |e| Msg::Node(Box::new(e)));
    spawn_watch::<Namespace>(client.clone(), tx.clone(), |e| Msg::Namespace(Box::new(e)));
    let mut state = State::new(client, tx);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if state.active.is_empty() {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => state.handle(msg),
                    None => return,
                },
                _ = tick.tick() => state.requeue_due(),
            }
        }
        while let Ok(msg) = rx.try_recv() {
            state.handle(msg);
        }
        for _ in 0..BATCH {
            let Some(key) = state.active.pop_front() else {
                break;
            };
            state.queued.remove(&key);
            state.schedule(&key);
        }
        tokio::task::yield_now().await;
    }
}

fn spawn_watch<K>(client: Client, tx: mpsc::UnboundedSender<Msg>, wrap: fn(Event<K>) -> Msg)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static,
{
    tokio::spawn(async move {
        let api: Api<K> = Api::all(client);
        let mut stream = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    if tx.send(wrap(event)).is_err() {
                        return;
                    }
                }
                Err(error) => tracing::debug!(%error, "scheduler watch error; retrying"),
            }
        }
    });
}

fn is_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn is_ours(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .map(|s| s.scheduler_name.as_deref().unwrap_or(DEFAULT_SCHEDULER) == DEFAULT_SCHEDULER)
        .unwrap_or(false)
}

fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

impl State {
    fn new(client: Client, tx: mpsc::UnboundedSender<Msg>) -> State {
        State {
            client,
            cluster: Cluster::new(),
            pending: HashMap::new(),
            active: VecDeque::new(),
            queued: HashSet::new(),
            waiting: HashMap::new(),
            attempts: HashMap::new(),
            binding: HashMap::new(),
            reported: HashMap::new(),
            bound: HashMap::new(),
            namespace_labels: HashMap::new(),
            nodes: HashMap::new(),
            wake: false,
            relist_pods: None,
            relist_nodes: None,
            tx,
            binds: Arc::new(Semaphore::new(BIND_CONCURRENCY)),
        }
    }

    fn workload(&self, pod: &Pod) -> Workload {
        let labels = &self.namespace_labels;
        convert::pod_workload(pod, &|selector: &Selector| {
            labels
                .iter()
                .filter(|(_, l)| selector.matches(l))
                .map(|(n, _)| n.clone())
                .collect()
        })
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Pod(event) => self.pod_event(*event),
            Msg::Node(event) => self.node_event(*event),
            Msg::Namespace(event) => self.namespace_event(*event),
            Msg::Bound { key, host, error } => self.bound_outcome(key, host, error),
        }
    }

    fn pod_event(&mut self, event: Event<Pod>) {
        match event {
            Event::Init => self.relist_pods = Some(HashSet::new()),
            Event::InitApply(pod) => {
                if let Some(seen) = self.relist_pods.as_mut() {
                    seen.insert(pod_key(
                        pod.metadata.namespace.as_deref().unwrap_or_default(),
                        pod.metadata.name.as_deref().unwrap_or_default(),
                    ));
                }
                self.apply_pod(pod);
            }
            Event::InitDone => {
                if let Some(seen) = self.relist_pods.take() {
                    // A binding in flight is settled by its outcome (a pod that is really gone
                    // fails it with 404), not by a list that may predate it.
                    let gone: Vec<String> = self
                        .bound
                        .keys()
                        .chain(self.pending.keys())
                        .filter(|k| !seen.contains(*k) && !self.binding.contains_key(*k))
                        .cloned()
                        .collect();
                    for key in gone {
                        self.remove_pod(&key);
                    }
                }
            }
            Event::Apply(pod) => self.apply_pod(pod),
            Event::Delete(pod) => {
                let key = pod_key(
                    pod.metadata.namespace.as_deref().unwrap_or_default(),
                    pod.metadata.name.as_deref().unwrap_or_default(),
                );
                self.remove_pod(&key);
            }
        }
    }

    fn node_event(&mut self, event: Event<Node>) {
        match event {
            Event::Init => self.relist_nodes = Some(HashSet::new()),
            Event::InitApply(node) => {
                if let Some(seen) = self.relist_nodes.as_mut() {
                    seen.insert(node.metadata.name.clone().unwrap_or_default());
                }
                self.apply_node(&node);
            }
            Event::InitDone => {
                if let Some(seen) = self.relist_nodes.take() {
                    let gone: Vec<String> = self
                        .nodes
                        .keys()
                        .filter(|n| !seen.contains(*n))
                        .cloned()
                        .collect();
                    for name in gone {
                        self.nodes.remove(&name);
                        self.cluster.remove_host(&name);
                    }
                }
            }
            Event::Apply(node) => self.apply_node(&node),
            Event::Delete(node) => {
                let name = node.metadata.name.clone().unwrap_or_default();
                self.nodes.remove(&name);
                self.cluster.remove_host(&name);
            }
        }
    }

    fn namespace_event(&mut self, event: Event<Namespace>) {
        match event {
            Event::Apply(ns) | Event::InitApply(ns) => {
                let name = ns.metadata.name.clone().unwrap_or_default();
                let zones = ns
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(visor_allowed_zones()))
                    .map(|z| {
                        z.split(',')
                            .map(str::trim)
                            .filter(|z| !z.is_empty())
                            .map(String::from)
                            .collect::<Vec<_>>()
                    });
                self.cluster.set_namespace_zones(&name, zones);
                self.namespace_labels
                    .insert(name, ns.metadata.labels.clone().unwrap_or_default());
                self.wake = true;
            }
            Event::Delete(ns) => {
                let name = ns.metadata.name.clone().unwrap_or_default();
                self.cluster.set_namespace_zones(&name, None);
                self.namespace_labels.remove(&name);
            }
            Event::Init | Event::InitDone => {}
        }
    }

    fn apply_node(&mut self, node: &Node) {
        let info = convert::node_host(node);
        let changed = self.nodes.get(&info.name).is_none_or(|old| {
            old.allocatable != info.allocatable
                || old.labels != info.labels
                || old.taints != info.taints
                || old.ready != info.ready
                || old.unschedulable != info.unschedulable
        });
        if changed {
            self.nodes.insert(info.name.clone(), info.clone());
            self.cluster.upsert_host(info);
            self.wake = true;
        }
    }

    fn apply_pod(&mut self, pod: Pod) {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let key = pod_key(&ns, &name);
        if is_finished(&pod) {
            self.remove_pod(&key);
            return;
        }
        if let Some(host) = node_name(&pod) {
            let host = host.to_string();
            self.pending.remove(&key);
            self.waiting.remove(&key);
            self.attempts.remove(&key);
            self.reported.remove(&key);
            let terminating = pod.metadata.deletion_timestamp.is_some();
            let workload = self.workload(&pod);
            self.cluster.place_on(&workload, &host, terminating);
            let uid = pod.metadata.uid.clone();
            self.bound.insert(key, BoundPod { host, uid });
            return;
        }
        if let Some(known) = self.bound.get(&key)
            && known.uid == pod.metadata.uid
        {
            // Bindings are never undone: this is an older view of a pod already bound (a
            // relist that predates the binding). The watch brings the newer one.
            return;
        }
        if !is_ours(&pod) || pod.metadata.deletion_timestamp.is_some() {
            self.remove_pod(&key);
            return;
        }
        let fresh = !self.pending.contains_key(&key);
        self.pending.insert(key.clone(), Arc::new(pod));
        if fresh && !self.binding.contains_key(&key) {
            self.enqueue(key);
        }
    }

    fn remove_pod(&mut self, key: &str) {
        self.pending.remove(key);
        self.waiting.remove(key);
        self.attempts.remove(key);
        self.reported.remove(key);
        if self.bound.remove(key).is_some() || self.cluster.host_of(key).is_some() {
            self.cluster.forget(key);
            self.wake = true;
        }
        self.cluster.clear_nomination(key);
    }

    fn enqueue(&mut self, key: String) {
        if self.queued.insert(key.clone()) {
            self.waiting.remove(&key);
            self.active.push_back(key);
        }
    }

    fn backoff(&mut self, key: &str) -> Duration {
        let attempts = self.attempts.entry(key.to_string()).or_insert(0);
        *attempts += 1;
        let factor = 1u32 << (*attempts - 1).min(5);
        (INITIAL_BACKOFF * factor).min(MAX_BACKOFF)
    }

    fn wait(&mut self, key: &str, woken: bool) {
        let delay = self.backoff(key);
        let now = Instant::now();
        self.waiting.insert(
            key.to_string(),
            Waiting {
                not_before: now + delay,
                since: now,
                woken,
            },
        );
    }

    /// Moves waiting pods whose back-off has passed and for which something changed (or
    /// which have waited long) back to the active queue.
    fn requeue_due(&mut self) {
        let wake = std::mem::take(&mut self.wake);
        if self.waiting.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut due = Vec::new();
        for (key, w) in self.waiting.iter_mut() {
            w.woken |= wake;
            if (w.woken && w.not_before <= now)
                || now.duration_since(w.since) >= FLUSH_WAITING_AFTER
            {
                due.push(key.clone());
            }
        }
        for key in due {
            self.enqueue(key);
        }
    }

    fn schedule(&mut self, key: &str) {
        let Some(pod) = self.pending.get(key).cloned() else {
            return;
        };
        if self.binding.contains_key(key) {
            return;
        }
        let workload = self.workload(&pod);
        match self.cluster.place(&workload) {
            Ok(host) => {
                self.cluster.assume(&workload, &host);
                self.binding.insert(key.to_string(), host.clone());
                self.spawn_bind(pod, key.to_string(), host);
            }
            Err(unschedulable) => {
                let preemption = if unschedulable.resources_only_somewhere {
                    self.cluster.preempt(&workload)
                } else {
                    None
                };
                match preemption {
                    Some(p) => {
                        self.cluster.nominate(&workload, &p.host);
                        self.spawn_preempt(pod, p.host, p.victims);
                        // Retried when the victims are gone (their removal wakes it).
                        self.wait(key, false);
                    }
                    None => {
                        let message = unschedulable.message;
                        if self.reported.get(key) != Some(&message) {
                            self.reported.insert(key.to_string(), message.clone());
                            self.spawn_report(pod, message);
                        }
                        self.wait(key, false);
                    }
                }
            }
        }
    }

    fn bound_outcome(&mut self, key: String, host: String, error: Option<(u16, String)>) {
        self.binding.remove(&key);
        let Some((code, message)) = error else {
            self.attempts.remove(&key);
            let uid = self
                .pending
                .remove(&key)
                .and_then(|pod| pod.metadata.uid.clone());
            self.reported.remove(&key);
            // The watch may have shown the pod bound already, with its UID.
            self.bound.entry(key).or_insert(BoundPod { host, uid });
            return;
        };
        tracing::debug!(pod = %key, %host, code, %message, "binding failed");
        // The watch may already have shown the pod bound (elsewhere) or gone.
        let actual = self.bound.get(&key).map(|b| b.host.clone());
        if actual.as_ref() != Some(&host) {
            self.cluster.forget(&key);
            if let Some(actual) = actual
                && let Some(pod) = self.pending.get(&key).cloned()
            {
                let workload = self.workload(&pod);
                self.cluster.place_on(&workload, &actual, false);
            }
            self.wake = true;
        }
        if code == 404 || code == 409 {
            // Gone, or bound by someone else: the watch brings the truth.
            return;
        }
        if self.pending.contains_key(&key) {
            self.wait(&key, true);
        }
    }

    fn spawn_bind(&self, pod: Arc<Pod>, key: String, host: String) {
        let client = self.client.clone();
        let tx = self.tx.clone();
        let permits = self.binds.clone();
        tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            let binding = json!({
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": name, "namespace": ns, "uid": pod.metadata.uid},
                "target": {"apiVersion": "v1", "kind": "Node", "name": host},
            });
            let result: Result<serde_json::Value, kube::Error> = api
                .create_subresource("binding", &name, &PostParams::default(), &binding)
                .await;
            let error = match result {
                Ok(_) => None,
                Err(kube::Error::Api(status)) => Some((status.code, status.message)),
                Err(other) => Some((0, other.to_string())),
            };
            if error.is_none() {
                record(
                    &client,
                    &pod,
                    "Normal",
                    "Scheduled",
                    format!("Successfully assigned {ns}/{name} to {host}"),
                )
                .await;
            }
            let _ = tx.send(Msg::Bound { key, host, error });
        });
    }

    fn spawn_report(&self, pod: Arc<Pod>, message: String) {
        let client = self.client.clone();
        tokio::spawn(async move {
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            let patch = json!({"status": {"conditions": [{
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": message,
                "lastTransitionTime": Timestamp::now(),
                "lastProbeTime": null,
            }]}});
            if let Err(error) = api
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                .await
            {
                tracing::debug!(%error, pod = %name, "reporting an unschedulable pod");
            }
            record(&client, &pod, "Warning", "FailedScheduling", message).await;
        });
    }

    fn spawn_preempt(&self, pod: Arc<Pod>, host: String, victims: Vec<String>) {
        let client = self.client.clone();
        tokio::spawn(async move {
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            let patch = json!({"status": {"nominatedNodeName": host}});
            if let Err(error) = api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                tracing::debug!(%error, pod = %name, "nominating a host");
            }
            for victim in victims {
                let Some((vns, vname)) = victim.split_once('/') else {
                    continue;
                };
                let vapi: Api<Pod> = Api::namespaced(client.clone(), vns);
                if let Ok(victim_pod) = vapi.get(vname).await {
                    record(
                        &client,
                        &victim_pod,
                        "Normal",
                        "Preempted",
                        format!(
                            "Preempted by pod {}",
                            pod.metadata.uid.clone().unwrap_or_default()
                        ),
                    )
                    .await;
                }
                // Graceful: the victim's own termination grace period applies.
                match vapi.delete(vname, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(error) => {
                        tracing::warn!(%error, victim = %victim, "deleting a preemption victim")
                    }
                }
            }
        });
    }
}

fn visor_allowed_zones() -> &'static str {
    // Kept in step with `visor_api::ALLOWED_ZONES_ANNOTATION`, which this crate cannot name
    // without depending on the kinds crate.
    "visor.dev/allowed-zones"
}

/// Records a core/v1 Event about a pod, reported by the scheduler. Events are for people: a
/// failure to write one is logged and otherwise ignored.
async fn record(client: &Client, pod: &Pod, type_: &str, reason: &str, message: String) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let now = Time(Timestamp::now());
    let event = CoreEvent {
        metadata: ObjectMeta {
            name: Some(format!("{name}.{:x}", Timestamp::now().as_nanosecond())),
            namespace: Some(ns.clone()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(name),
            namespace: Some(ns.clone()),
            uid: pod.metadata.uid.clone(),
            resource_version: pod.metadata.resource_version.clone(),
            ..ObjectReference::default()
        },
        type_: Some(type_.into()),
        reason: Some(reason.into()),
        message: Some(message),
        source: Some(EventSource {
            component: Some(DEFAULT_SCHEDULER.into()),
            host: None,
        }),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        reporting_component: Some(COMPONENT.into()),
        reporting_instance: Some(COMPONENT.into()),
        ..CoreEvent::default()
    };
    let api: Api<CoreEvent> = Api::namespaced(client.clone(), &ns);
    if let Err(error) = api.create(&PostParams::default(), &event).await {
        tracing::debug!(%error, reason, "recording an event");
    }
}

#[cfg(test)]
mod tests {
    //! The loop's bookkeeping, driven by watch events and binding outcomes in the orders a
    //! busy server produces; nothing here reaches a server (bindings go to a closed port and
    //! their outcomes are not read back unless a test says so).

    use super::*;

    fn state() -> (State, mpsc::UnboundedReceiver<Msg>) {
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        let client = Client::try_from(config).unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        (State::new(client, tx), rx)
    }

    fn node(name: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": "z"}},
            "status": {
                "allocatable": {"cpu": "1", "memory": "1000Mi", "pods": "10"},
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }))
        .unwrap()
    }

    fn pod(name: &str, host: Option<&str>) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")},
            "spec": {
                "nodeName": host,
                "containers": [{"name": "c", "resources": {"requests": {"cpu": "100m", "memory": "100Mi"}}}],
            },
        }))
        .unwrap()
    }

    /// Places every queued pod, as one turn of the loop does.
    fn place_queued(state: &mut State) {
        while let Some(key) = state.active.pop_front() {
            state.queued.remove(&key);
            state.schedule(&key);
        }
    }

    fn with_two_hosts() -> (State, mpsc::UnboundedReceiver<Msg>) {
        let (mut state, rx) = state();
        for name in ["a", "b"] {
            state.handle(Msg::Node(Box::new(Event::Apply(node(name)))));
        }
        (state, rx)
    }

    fn place(state: &mut State, name: &str) -> String {
        state.handle(Msg::Pod(Box::new(Event::Apply(pod(name, None)))));
        place_queued(state);
        state
            .binding
            .get(&format!("ns/{name}"))
            .cloned()
            .expect("placed and being bound")
    }

    #[tokio::test]
    async fn a_relist_that_predates_a_binding_in_flight_keeps_the_placement() {
        let (mut state, _rx) = with_two_hosts();
        let first = place(&mut state, "p1");
        // The pod watch fell behind and listed again; the list was taken before p1 existed.
        state.handle(Msg::Pod(Box::new(Event::Init)));
        state.handle(Msg::Pod(Box::new(Event::InitDone)));
        assert_eq!(state.cluster.host_of("ns/p1"), Some(first.as_str()));
        let second = place(&mut state, "p2");
        assert_ne!(
            first, second,
            "the second pod joins the first on a busier host"
        );
        // The binding then fails because the pod is really gone: its placement goes.
        state.handle(Msg::Bound {
            key: "ns/p1".into(),
            host: first,
            error: Some((404, "not found".into())),
        });
        assert_eq!(state.cluster.host_of("ns/p1"), None);
        assert_eq!(state.cluster.placed_count(), 1);
    }

    #[tokio::test]
    async fn a_stale_unbound_view_of_a_bound_pod_does_not_place_it_again() {
        let (mut state, _rx) = with_two_hosts();
        let first = place(&mut state, "p1");
        state.handle(Msg::Bound {
            key: "ns/p1".into(),
            host: first.clone(),
            error: None,
        });
        // A relist whose list predates the binding shows p1 unbound.
        state.handle(Msg::Pod(Box::new(Event::Init)));
        state.handle(Msg::Pod(Box::new(Event::InitApply(pod("p1", None)))));
        state.handle(Msg::Pod(Box::new(Event::InitDone)));
        assert!(
            state.active.is_empty(),
            "p1 queued again: {:?}",
            state.active
        );
        assert_eq!(state.cluster.host_of("ns/p1"), Some(first.as_str()));
        let second = place(&mut state, "p2");
        assert_ne!(first, second);
        // The watch then brings the bound pod; nothing moves.
        state.handle(Msg::Pod(Box::new(Event::Apply(pod("p1", Some(&first))))));
        assert_eq!(state.cluster.host_of("ns/p1"), Some(first.as_str()));
        assert_eq!(state.cluster.placed_count(), 2);
        // A new pod under the same name (another UID) is placed as any other.
        state.handle(Msg::Pod(Box::new(Event::Delete(pod("p1", Some(&first))))));
        let mut again = pod("p1", None);
        again.metadata.uid = Some("uid-p1-again".into());
        state.handle(Msg::Pod(Box::new(Event::Apply(again))));
        place_queued(&mut state);
        assert!(state.binding.contains_key("ns/p1"));
    }
}
