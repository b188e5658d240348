//! The pods bound to this host: one worker per pod ([`worker`]), fed by a watch of the pods
//! whose `spec.nodeName` is this host.
//!
//! Flow of [`run`]:
//! 1. ask the runtime what it already runs (sandboxes and containers labelled with a pod UID):
//!    a restarted agent adopts these instead of starting them again;
//! 2. watch the host's pods; each new UID gets a worker, each change is handed to it (the
//!    worker sees only the latest version), a pod gone from the API tells its worker to
//!    remove everything;
//! 3. once the first listing is complete, remove what the runtime runs for pods that no
//!    longer exist (deleted while the agent was down).

pub mod probe;
pub mod spec;
pub mod status;
pub mod worker;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::watcher;
use tokio::sync::watch;

use crate::runtime::ResolvedImage;
use crate::server::{ContainerEntry, PodDirectory};
pub use worker::Shared;
use worker::{POD_UID_LABEL, Worker};

/// Why an image could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Pulling failed; the text is the registry's (or the network's) message.
    #[error("{0}")]
    Pull(String),
    /// The image is not on the host and the pull policy is `Never`.
    #[error("{0}")]
    NeverPull(String),
}

/// Resolves a pod's image reference to an unpacked image, pulling under the pull policy.
#[async_trait]
pub trait ImageResolver: Send + Sync {
    /// `pull_secrets` are the contents (`.dockerconfigjson`) of the pod's image pull secrets.
    async fn resolve(
        &self,
        reference: &str,
        pull_policy: &str,
        pull_secrets: &[Vec<u8>],
    ) -> Result<ResolvedImage, ImageError>;
}

/// What the agent's HTTPS endpoint needs to know about one pod.
#[derive(Clone, Debug)]
pub struct PodEntry {
    pub uid: String,
    pub sandbox_id: Option<String>,
    pub containers: Vec<String>,
    pub default_container: Option<String>,
    pub entries: HashMap<String, ContainerEntry>,
}

/// The pods this host runs, by namespace and name (see [`PodDirectory`]).
#[derive(Default)]
pub struct Directory {
    pods: Mutex<HashMap<(String, String), PodEntry>>,
}

impl Directory {
    pub fn publish(&self, namespace: String, name: String, entry: PodEntry) {
        self.lock().insert((namespace, name), entry);
    }

    pub fn forget(&self, uid: &str) {
        self.lock().retain(|_, entry| entry.uid != uid);
    }

    /// How many pods the host runs.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), PodEntry>> {
        self.pods.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, namespace: &str, pod: &str) -> Option<PodEntry> {
        self.lock()
            .get(&(namespace.to_string(), pod.to_string()))
            .cloned()
    }
}

impl PodDirectory for Directory {
    fn sandbox_id(&self, namespace: &str, pod: &str) -> Option<String> {
        self.get(namespace, pod).and_then(|e| e.sandbox_id)
    }

    fn container(&self, namespace: &str, pod: &str, container: &str) -> Option<ContainerEntry> {
        self.get(namespace, pod)
            .and_then(|e| e.entries.get(container).cloned())
    }

    fn containers(&self, namespace: &str, pod: &str) -> Option<Vec<String>> {
        self.get(namespace, pod).map(|e| {
            let mut names = e.containers.clone();
            if let Some(default) = e.default_container
                && let Some(i) = names.iter().position(|n| *n == default)
            {
                let first = names.remove(i);
                names.insert(0, first);
            }
            names
        })
    }
}

/// Runs the host's pods until cancelled (see the module documentation).
pub async fn run(shared: Arc<Shared>) -> anyhow::Result<()> {
    let client = shared.client.clone();
    run_hosts(client, HashMap::from([(shared.node_name.clone(), shared)])).await
}

/// What a runtime already runs, by pod UID, for adoption.
#[derive(Default)]
struct Adoptable {
    sandboxes: HashMap<String, crate::runtime::Sandbox>,
    containers: HashMap<String, Vec<crate::runtime::ContainerStatus>>,
}

/// Runs the pods of several hosts of this process from one watch (simulated hosts); a single
/// host watches only its own pods.
pub async fn run_hosts(
    client: kube::Client,
    hosts: HashMap<String, Arc<Shared>>,
) -> anyhow::Result<()> {
    let mut adoptable: HashMap<String, Adoptable> = HashMap::new();
    for (name, shared) in &hosts {
        let runtime = &shared.runtime;
        let mut found = Adoptable::default();
        for sandbox in runtime.list_sandboxes().await? {
            found.sandboxes.insert(sandbox.pod_uid.clone(), sandbox);
        }
        for c in runtime.list_containers().await? {
            if let Some(uid) = c.labels.get(POD_UID_LABEL) {
                found.containers.entry(uid.clone()).or_default().push(c);
            }
        }
        if !found.sandboxes.is_empty() {
            tracing::info!(node = %name, pods = found.sandboxes.len(), "adopting the pods the runtime already runs");
        }
        adoptable.insert(name.clone(), found);
    }

    let pods: Api<Pod> = Api::all(client);
    let config = match hosts.keys().next() {
        Some(only) if hosts.len() == 1 => {
            watcher::Config::default().fields(&format!("spec.nodeName={only}"))
        }
        // Pods not yet placed are no host's business; placed ones are filtered by host below.
        _ => watcher::Config::default().fields("spec.nodeName!="),
    };
    let mut events = watcher(pods, config).boxed();
    let mut workers: HashMap<String, watch::Sender<Option<Arc<Pod>>>> = HashMap::new();
    let mut listing: Option<HashSet<String>> = None;
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!("watching pods: {e}");
                continue;
            }
        };
        match event {
            watcher::Event::Init => listing = Some(HashSet::new()),
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
                let Some(uid) = pod.metadata.uid.clone() else {
                    continue;
                };
                let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
                let Some((node, shared)) = node.and_then(|n| hosts.get_key_value(n)) else {
                    continue;
                };
                if let Some(seen) = listing.as_mut() {
                    seen.insert(uid.clone());
                }
                let pod = Arc::new(pod);
                match workers.get(&uid) {
                    Some(sender) if !sender.is_closed() => {
                        sender.send_replace(Some(pod));
                    }
                    _ => {
                        let (sender, receiver) = watch::channel(Some(pod));
                        let (sandbox, containers) = match adoptable.get_mut(node) {
                            Some(found) => (
                                found.sandboxes.remove(&uid),
                                found.containers.remove(&uid).unwrap_or_default(),
                            ),
                            None => (None, Vec::new()),
                        };
                        let worker = Worker::new(shared.clone(), uid.clone(), sandbox, containers);
                        tokio::spawn(worker.run(receiver));
                        workers.insert(uid, sender);
                    }
                }
            }
            watcher::Event::Delete(pod) => {
                if let Some(uid) = pod.metadata.uid.as_deref()
                    && let Some(sender) = workers.remove(uid)
                {
                    sender.send_replace(None);
                }
            }
            watcher::Event::InitDone => {
                let seen = listing.take().unwrap_or_default();
                // Pods that vanished while the watch was re-listing.
                workers.retain(|uid, sender| {
                    let keep = seen.contains(uid);
                    if !keep {
                        sender.send_replace(None);
                    }
                    keep
                });
                // What the runtimes run for pods deleted while the agent was down.
                for (node, found) in adoptable.iter_mut() {
                    let Some(shared) = hosts.get(node) else {
                        continue;
                    };
                    for (uid, sandbox) in found.sandboxes.drain() {
                        let leftovers = found.containers.remove(&uid).unwrap_or_default();
                        tracing::info!(%uid, "removing a pod that no longer exists");
                        remove_orphan(shared.clone(), uid, Some(sandbox), leftovers);
                    }
                    for (uid, leftovers) in found.containers.drain() {
                        remove_orphan(shared.clone(), uid, None, leftovers);
                    }
                }
            }
        }
        workers.retain(|_, sender| !sender.is_closed());
    }
    Ok(())
}

/// Removes what a runtime runs for a pod that no longer exists.
fn remove_orphan(
    shared: Arc<Shared>,
    uid: String,
    sandbox: Option<crate::runtime::Sandbox>,
    containers: Vec<crate::runtime::ContainerStatus>,
) {
    let (sender, receiver) = watch::channel(None);
    drop(sender);
    let worker = Worker::new(shared, uid, sandbox, containers);
    tokio::spawn(worker.run(receiver));
}
