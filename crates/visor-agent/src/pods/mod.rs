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
    let runtime = shared.runtime.clone();
    let mut sandboxes: HashMap<String, crate::runtime::Sandbox> = runtime
        .list_sandboxes()
        .await?
        .into_iter()
        .map(|s| (s.pod_uid.clone(), s))
        .collect();
    let mut containers: HashMap<String, Vec<crate::runtime::ContainerStatus>> = HashMap::new();
    for c in runtime.list_containers().await? {
        if let Some(uid) = c.labels.get(POD_UID_LABEL) {
            containers.entry(uid.clone()).or_default().push(c);
        }
    }
    if !sandboxes.is_empty() {
        tracing::info!(pods = sandboxes.len(), "adopting the pods the runtime already runs");
    }

    let pods: Api<Pod> = Api::all(shared.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", shared.node_name));
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
                        let worker = Worker::new(
                            shared.clone(),
                            uid.clone(),
                            sandboxes.remove(&uid),
                            containers.remove(&uid).unwrap_or_default(),
                        );
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
                // What the runtime runs for pods deleted while the agent was down.
                for (uid, sandbox) in sandboxes.drain() {
                    let leftovers = containers.remove(&uid).unwrap_or_default();
                    tracing::info!(%uid, "removing a pod that no longer exists");
                    let (sender, receiver) = watch::channel(None);
                    drop(sender);
                    let worker = Worker::new(shared.clone(), uid, Some(sandbox), leftovers);
                    tokio::spawn(worker.run(receiver));
                }
                for (uid, leftovers) in containers.drain() {
                    let (sender, receiver) = watch::channel(None);
                    drop(sender);
                    let worker = Worker::new(shared.clone(), uid, None, leftovers);
                    tokio::spawn(worker.run(receiver));
                }
            }
        }
        workers.retain(|_, sender| !sender.is_closed());
    }
    Ok(())
}
