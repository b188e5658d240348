//! One pod's worker: drives the pod towards its spec through the runtime and reports status.
//!
//! Flow of one sync ([`Worker::sync`]):
//! 1. a sandbox (re-adopted if the runtime already has one for this pod UID);
//! 2. the volumes on disk;
//! 3. init containers one at a time, each to successful completion (a failed one is retried
//!    under the restart policy, or fails the pod with `Never`);
//! 4. the app containers: started, restarted under the restart policy with upstream's
//!    back-off (immediately, then 10 s doubling to 5 min, reset after 10 min of running),
//!    killed when their liveness or startup probe fails;
//! 5. the status, written only when it changed.
//!
//! A pod being deleted has its containers stopped within its grace period (SIGTERM, then
//! SIGKILL), its sandbox removed, and is then deleted for good (grace 0, UID precondition).
//!
//! Guarantees: the worker never starts a second instance of a container that the runtime
//! reports running; after an agent restart it continues from what the runtime reports.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::probe::{self, ProbeResults, ProbeTarget};
use super::spec::{self, PodFacts, PreparedVolumes, References};
use super::status::{self, ContainerView};
use super::{Directory, ImageError, ImageResolver, PodEntry};
use crate::runtime::{
    ContainerConfig, ContainerState, ContainerStatus, ResolvedImage, Runtime, Sandbox,
    SandboxConfig,
};
use crate::server::ContainerEntry;

/// Labels the agent records on runtime objects to find them again after a restart.
pub const POD_UID_LABEL: &str = "visor.dev/pod-uid";
pub const CONTAINER_NAME_LABEL: &str = "visor.dev/container-name";
pub const ATTEMPT_LABEL: &str = "visor.dev/attempt";

const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container that ran this long starts its back-off afresh, as upstream.
const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// What every worker shares.
pub struct Shared {
    pub client: kube::Client,
    pub node_name: String,
    pub host_ip: String,
    pub runtime: Arc<dyn Runtime>,
    pub images: Arc<dyn ImageResolver>,
    pub pods_dir: PathBuf,
    pub capacity: BTreeMap<String, String>,
    pub pids_limit: Option<i64>,
    pub directory: Arc<Directory>,
    /// How often a worker looks at its containers between pod changes.
    pub poll: Duration,
    /// Events about pods, as a kubelet records them (`kubectl describe pod`); none for
    /// simulated hosts, whose pods do nothing worth telling.
    pub events: Option<kube::runtime::events::Recorder>,
}

impl Shared {
    /// Records an event about a pod's container, in the background so that pod starts never
    /// wait for it. Events are for people: a failure to write one is logged and ignored.
    fn event(&self, pod: &Pod, container: &str, warning: bool, reason: &str, note: String) {
        use kube::Resource;
        use kube::runtime::events::{Event, EventType};
        let Some(recorder) = self.events.clone() else {
            return;
        };
        let mut reference = pod.object_ref(&());
        reference.field_path = Some(format!("spec.containers{{{container}}}"));
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_string(),
            note: Some(note),
            action: reason.to_string(),
            secondary: None,
        };
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::debug!(reason = %event.reason, "recording an event: {e}");
            }
        });
    }
}

/// One container slot of the pod: the current attempt and what the worker decided about it.
#[derive(Default)]
struct Slot {
    current: Option<ContainerStatus>,
    previous: Option<ContainerStatus>,
    restart_count: u32,
    waiting: Option<(String, String)>,
    /// Not before this instant may the container be started again.
    not_before: Option<Instant>,
    backoff: Option<Duration>,
    probes: Option<Probes>,
    killing_for_probe: bool,
}

/// The probe task of a container's current attempt; stopped when replaced or dropped.
struct Probes(watch::Receiver<ProbeResults>, tokio::task::JoinHandle<()>);

impl Drop for Probes {
    fn drop(&mut self) {
        self.1.abort();
    }
}

pub struct Worker {
    shared: Arc<Shared>,
    uid: String,
    sandbox: Option<Sandbox>,
    volumes: Option<PreparedVolumes>,
    slots: HashMap<String, Slot>,
    last_status: Option<Value>,
    start_time: Option<String>,
}

impl Worker {
    /// A worker for pod `uid`, adopting what the runtime already runs for it.
    pub fn new(
        shared: Arc<Shared>,
        uid: String,
        sandbox: Option<Sandbox>,
        containers: Vec<ContainerStatus>,
    ) -> Self {
        let mut slots: HashMap<String, Slot> = HashMap::new();
        let mut by_name: HashMap<String, Vec<ContainerStatus>> = HashMap::new();
        for c in containers {
            by_name.entry(c.name.clone()).or_default().push(c);
        }
        for (name, mut attempts) in by_name {
            attempts.sort_by_key(|c| c.attempt);
            let current = attempts.pop();
            let previous = attempts.pop();
            slots.insert(
                name,
                Slot {
                    restart_count: current.as_ref().map_or(0, |c| c.attempt),
                    current,
                    previous,
                    ..Default::default()
                },
            );
        }
        Worker {
            shared,
            uid,
            sandbox,
            volumes: None,
            slots,
            last_status: None,
            start_time: None,
        }
    }

    /// Runs until the pod is gone from the API and everything it had is removed.
    pub async fn run(mut self, mut updates: watch::Receiver<Option<Arc<Pod>>>) {
        loop {
            let pod = updates.borrow_and_update().clone();
            let Some(pod) = pod else {
                self.teardown(Duration::ZERO).await;
                return;
            };
            if pod.metadata.deletion_timestamp.is_some() {
                let grace = pod
                    .metadata
                    .deletion_grace_period_seconds
                    .unwrap_or(30)
                    .max(0) as u64;
                self.teardown(Duration::from_secs(grace)).await;
                self.report(&pod, true).await;
                if self.finish_deletion(&pod).await {
                    // Gone from the API: later events of this pod are older than its deletion.
                    while updates.changed().await.is_ok() {
                        if updates.borrow_and_update().is_none() {
                            break;
                        }
                    }
                    return;
                }
                // Not deleted yet: look again when the pod changes.
                if updates.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let wait = match self.sync(&pod).await {
                Ok(wait) => wait,
                Err(e) => {
                    tracing::warn!(pod = %name_of(&pod), "syncing: {e:#}");
                    Duration::from_secs(2)
                }
            };
            self.report(&pod, false).await;
            tokio::select! {
                changed = updates.changed() => if changed.is_err() {
                    self.teardown(Duration::ZERO).await;
                    return;
                },
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One pass towards the spec; returns how soon to look again.
    async fn sync(&mut self, pod: &Pod) -> anyhow::Result<Duration> {
        let runtime = self.shared.runtime.clone();
        let spec = pod.spec.clone().unwrap_or_default();
        if self.start_time.is_none() {
            self.start_time = Some(
                pod.status
                    .as_ref()
                    .and_then(|s| s.start_time.as_ref())
                    .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
                    .unwrap_or_else(|| status::rfc3339(SystemTime::now())),
            );
        }
        // Refresh what the runtime says about each container.
        for slot in self.slots.values_mut() {
            if let Some(current) = &slot.current
                && current.state != ContainerState::Exited
            {
                match runtime.container_status(&current.id).await {
                    Ok(fresh) => slot.current = Some(fresh),
                    Err(crate::runtime::RuntimeError::NotFound(_)) => slot.current = None,
                    Err(e) => tracing::warn!("container status: {e}"),
                }
            }
        }
        if self.terminal_phase(pod).is_some() {
            // A finished pod keeps its containers (for logs) but not its network.
            if let Some(sandbox) = &self.sandbox
                && sandbox.ready
            {
                runtime.stop_sandbox(&sandbox.id).await?;
                if let Some(s) = self.sandbox.as_mut() {
                    s.ready = false;
                }
            }
            self.publish(pod);
            return Ok(Duration::from_secs(60));
        }
        if self.sandbox.is_none() {
            let config = SandboxConfig {
                pod_uid: self.uid.clone(),
                namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                name: pod.metadata.name.clone().unwrap_or_default(),
                hostname: spec
                    .hostname
                    .clone()
                    .unwrap_or_else(|| pod.metadata.name.clone().unwrap_or_default()),
                host_network: spec.host_network.unwrap_or(false),
                labels: BTreeMap::from([(POD_UID_LABEL.to_string(), self.uid.clone())]),
            };
            let started = Instant::now();
            self.sandbox = Some(runtime.run_sandbox(&config).await?);
            tracing::debug!(pod = %name_of(pod), elapsed_ms = started.elapsed().as_millis() as u64, "sandbox ready");
        }
        let sandbox = self.sandbox.clone().expect("set above");
        let pod_ip = self.pod_ip(pod);
        if self.volumes.is_none() && !runtime.simulated() {
            let facts = PodFacts {
                pod,
                pod_ip: pod_ip.clone(),
                host_ip: self.shared.host_ip.clone(),
                node_name: &self.shared.node_name,
            };
            let namespace = pod.metadata.namespace.clone().unwrap_or_default();
            let mut references = References::new(&self.shared.client, &namespace);
            let token = token_source(self.shared.client.clone(), pod);
            match spec::prepare_volumes(pod, &self.pod_dir(), &facts, &mut references, &token).await
            {
                Ok(volumes) => self.volumes = Some(volumes),
                Err(e) => {
                    let message = format!("MountVolume.SetUp failed: {e:#}");
                    for c in spec
                        .containers
                        .iter()
                        .chain(spec.init_containers.iter().flatten())
                    {
                        self.slots.entry(c.name.clone()).or_default().waiting =
                            Some(("ContainerCreating".into(), message.clone()));
                    }
                    self.publish(pod);
                    return Ok(Duration::from_secs(2));
                }
            }
        }
        let restart_policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        let mut wait = self.shared.poll;
        // Init containers, in order, each to completion.
        let mut initialized = true;
        for container in spec.init_containers.iter().flatten() {
            let slot = self.slots.entry(container.name.clone()).or_default();
            match slot.current.as_ref().map(|c| (c.state, c.exit_code)) {
                Some((ContainerState::Exited, Some(0))) => continue,
                Some((ContainerState::Exited, _)) if restart_policy == "Never" => {
                    initialized = false;
                    break;
                }
                Some((ContainerState::Running | ContainerState::Created, _)) => {
                    initialized = false;
                    break;
                }
                _ => {
                    initialized = false;
                    if let Some(delay) = self.start_when_due(pod, &sandbox, container, true).await {
                        wait = wait.min(delay);
                    }
                    break;
                }
            }
        }
        if initialized {
            for container in &spec.containers {
                let slot = self.slots.entry(container.name.clone()).or_default();
                // Liveness and startup probe failures restart the container.
                if let (Some(current), Some(Probes(results, _))) = (&slot.current, &slot.probes)
                    && current.state == ContainerState::Running
                    && let Some(message) = results.borrow().failed.clone()
                    && !slot.killing_for_probe
                {
                    slot.killing_for_probe = true;
                    self.shared
                        .event(pod, &container.name, true, "Unhealthy", message.clone());
                    tracing::info!(pod = %name_of(pod), container = %container.name, "{message}; restarting");
                    let grace = spec.termination_grace_period_seconds.unwrap_or(30).max(0) as u64;
                    let id = current.id.clone();
                    let runtime = runtime.clone();
                    tokio::spawn(async move {
                        let _ = runtime
                            .stop_container(&id, Duration::from_secs(grace))
                            .await;
                    });
                }
                let state = slot.current.as_ref().map(|c| (c.state, c.exit_code));
                match state {
                    Some((ContainerState::Running | ContainerState::Created, _)) => {}
                    Some((ContainerState::Exited, code)) => {
                        let restart = match restart_policy.as_str() {
                            "Never" => false,
                            "OnFailure" => code != Some(0),
                            _ => true,
                        };
                        if restart
                            && let Some(delay) =
                                self.start_when_due(pod, &sandbox, container, false).await
                        {
                            wait = wait.min(delay);
                        }
                    }
                    _ => {
                        if let Some(delay) =
                            self.start_when_due(pod, &sandbox, container, false).await
                        {
                            wait = wait.min(delay);
                        }
                    }
                }
            }
        }
        self.publish(pod);
        Ok(wait.max(Duration::from_millis(50)))
    }

    /// Starts (or restarts) a container if its back-off allows; otherwise records why it
    /// waits and returns how long until it may.
    async fn start_when_due(
        &mut self,
        pod: &Pod,
        sandbox: &Sandbox,
        container: &Container,
        init: bool,
    ) -> Option<Duration> {
        let pod_name = name_of(pod);
        let now = Instant::now();
        {
            let slot = self.slots.entry(container.name.clone()).or_default();
            // A container that just exited: decide its back-off once.
            if let Some(current) = &slot.current
                && current.state == ContainerState::Exited
                && slot.not_before.is_none()
            {
                let ran = match (current.started_at, current.finished_at) {
                    (Some(s), Some(f)) => f.duration_since(s).unwrap_or_default(),
                    _ => Duration::ZERO,
                };
                let next = match slot.backoff {
                    _ if ran >= BACKOFF_RESET => None,
                    None => None,
                    Some(b) => Some((b * 2).min(BACKOFF_MAX)),
                };
                // The first restart is immediate; later ones wait, doubling.
                let delay = next.unwrap_or(Duration::ZERO);
                slot.backoff = Some(next.unwrap_or(BACKOFF_INITIAL));
                slot.not_before = Some(now + delay);
                if !delay.is_zero() {
                    let note = format!("Back-off restarting failed container {}", container.name);
                    self.shared
                        .event(pod, &container.name, true, "BackOff", note);
                }
            }
            if let Some(not_before) = slot.not_before
                && not_before > now
            {
                let remaining = not_before - now;
                let crashed = slot
                    .current
                    .as_ref()
                    .is_some_and(|c| c.state == ContainerState::Exited);
                let pull_failed = slot
                    .waiting
                    .as_ref()
                    .is_some_and(|(reason, _)| reason == "ErrImagePull");
                if crashed {
                    slot.waiting = Some((
                        "CrashLoopBackOff".into(),
                        format!(
                            "back-off {}s restarting failed container={} pod={}_{}({})",
                            slot.backoff.unwrap_or(BACKOFF_INITIAL).as_secs(),
                            container.name,
                            pod.metadata.name.as_deref().unwrap_or(""),
                            pod.metadata.namespace.as_deref().unwrap_or(""),
                            self.uid
                        ),
                    ));
                } else if pull_failed && let Some((_, message)) = slot.waiting.take() {
                    // Between pulls upstream shows the back-off, keeping the registry's words.
                    slot.waiting = Some((
                        "ImagePullBackOff".into(),
                        format!(
                            "Back-off pulling image {:?}: {message}",
                            container.image.as_deref().unwrap_or("")
                        ),
                    ));
                }
                // Other reasons (configuration errors, image back-off) stay as they are.
                return Some(remaining);
            }
        }
        let started = Instant::now();
        let result = self.start(pod, sandbox, container, init).await;
        tracing::debug!(pod = %pod_name, container = %container.name, elapsed_ms = started.elapsed().as_millis() as u64, ok = result.is_ok(), "container started");
        match &result {
            Ok(status) => {
                let image = format!("Container image {:?} is ready", status.image.reference);
                self.shared
                    .event(pod, &container.name, false, "Pulled", image);
                let note = format!("Started container {}", container.name);
                self.shared
                    .event(pod, &container.name, false, "Started", note);
            }
            Err(StartError {
                reason, message, ..
            }) => {
                let note = format!("Error: {reason}: {message}");
                self.shared
                    .event(pod, &container.name, true, "Failed", note);
            }
        }
        let slot = self.slots.entry(container.name.clone()).or_default();
        match result {
            Ok(status) => {
                if let Some(old) = slot.current.take() {
                    slot.previous = Some(old);
                    slot.restart_count += 1;
                }
                slot.current = Some(status);
                slot.waiting = None;
                slot.not_before = None;
                slot.killing_for_probe = false;
                None
            }
            Err(StartError {
                reason,
                message,
                retry,
            }) => {
                tracing::info!(pod = %pod_name, container = %container.name, %reason, "{message}");
                slot.waiting = Some((reason.to_string(), message));
                slot.not_before = Some(now + retry);
                Some(retry)
            }
        }
    }

    async fn start(
        &mut self,
        pod: &Pod,
        sandbox: &Sandbox,
        container: &Container,
        init: bool,
    ) -> Result<ContainerStatus, StartError> {
        let runtime = self.shared.runtime.clone();
        let image_name = container.image.clone().unwrap_or_default();
        let image = if runtime.needs_images() {
            // The API server defaults the policy; a pod stored without one gets upstream's.
            let policy = container.image_pull_policy.clone().unwrap_or_else(|| {
                match visor_images::PullPolicy::default_for(&image_name) {
                    visor_images::PullPolicy::Always => "Always",
                    visor_images::PullPolicy::IfNotPresent => "IfNotPresent",
                    visor_images::PullPolicy::Never => "Never",
                }
                .to_string()
            });
            let pull_secrets = self.pull_secrets(pod).await;
            match self
                .shared
                .images
                .resolve(&image_name, &policy, &pull_secrets)
                .await
            {
                Ok(image) => image,
                Err(e) => return Err(self.image_failure(container, e)),
            }
        } else {
            ResolvedImage {
                reference: image_name.clone(),
                id: format!("sim://{image_name}"),
                ..Default::default()
            }
        };
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let facts = PodFacts {
            pod,
            pod_ip: sandbox.ip.map(|ip| ip.to_string()),
            host_ip: self.shared.host_ip.clone(),
            node_name: &self.shared.node_name,
        };
        let (env, mounts) = if runtime.simulated() {
            (Vec::new(), Vec::new())
        } else {
            let mut references = References::new(&self.shared.client, &namespace);
            let env = spec::environment(
                container,
                &image.config,
                &facts,
                &mut references,
                &self.shared.capacity,
            )
            .await
            .map_err(|e| StartError::config(e.reason, e.message))?;
            let volumes = self
                .volumes
                .as_ref()
                .expect("volumes prepared before containers");
            let mounts = spec::mounts(container, volumes)
                .map_err(|e| StartError::config(e.reason, e.message))?;
            (env, mounts)
        };
        let slot = self.slots.entry(container.name.clone()).or_default();
        let attempt = slot.current.as_ref().map_or(0, |c| c.attempt + 1);
        // The exited attempt goes; its log file stays for `--previous`.
        if let Some(old) = slot.previous.take() {
            let _ = runtime.remove_container(&old.id).await;
        }
        let log_path = self
            .pod_dir()
            .join("logs")
            .join(&container.name)
            .join(format!("{attempt}.log"));
        if let Some(parent) = log_path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let config = ContainerConfig {
            name: container.name.clone(),
            attempt,
            argv: spec::argv(container, &image.config, &env),
            working_dir: container
                .working_dir
                .clone()
                .or_else(|| image.config.working_dir.clone()),
            user: spec::user(pod, container, &image.config),
            image,
            env,
            mounts,
            resources: spec::resources(container, self.shared.pids_limit),
            tty: container.tty.unwrap_or(false),
            stdin: container.stdin.unwrap_or(false),
            log_path,
            labels: BTreeMap::from([
                (POD_UID_LABEL.to_string(), self.uid.clone()),
                (CONTAINER_NAME_LABEL.to_string(), container.name.clone()),
                (ATTEMPT_LABEL.to_string(), attempt.to_string()),
                ("visor.dev/init".to_string(), init.to_string()),
            ]),
        };
        let id = runtime
            .create_container(sandbox, &config)
            .await
            .map_err(|e| StartError::retry("CreateContainerError", e.to_string()))?;
        if let Err(e) = runtime.start_container(&id).await {
            let _ = runtime.remove_container(&id).await;
            return Err(StartError::retry("RunContainerError", e.to_string()));
        }
        let status = runtime
            .container_status(&id)
            .await
            .map_err(|e| StartError::retry("RunContainerError", e.to_string()))?;
        // Probes follow the new container.
        let slot = self.slots.entry(container.name.clone()).or_default();
        slot.probes = None;
        let has_probes = container.liveness_probe.is_some()
            || container.readiness_probe.is_some()
            || container.startup_probe.is_some();
        if has_probes && !init && !runtime.simulated() {
            let target = ProbeTarget {
                runtime: runtime.clone(),
                container_id: id.clone(),
                pod_ip: sandbox
                    .ip
                    .map(|ip| ip.to_string())
                    .unwrap_or_else(|| "127.0.0.1".into()),
            };
            let (results, task) = probe::spawn(container, target);
            slot.probes = Some(Probes(results, task));
        }
        Ok(status)
    }

    /// The `.dockerconfigjson` of each of the pod's image pull secrets that exists.
    async fn pull_secrets(&self, pod: &Pod) -> Vec<Vec<u8>> {
        let names: Vec<String> = pod
            .spec
            .iter()
            .flat_map(|s| s.image_pull_secrets.iter().flatten())
            .map(|r| r.name.clone())
            .collect();
        let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(
            self.shared.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let mut configs = Vec::new();
        for name in names {
            if let Ok(Some(secret)) = api.get_opt(&name).await
                && let Some(config) = secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get(".dockerconfigjson").or_else(|| d.get(".dockercfg")))
            {
                configs.push(config.0.clone());
            }
        }
        configs
    }

    fn image_failure(&mut self, container: &Container, error: ImageError) -> StartError {
        let slot = self.slots.entry(container.name.clone()).or_default();
        let pulled_before = slot
            .waiting
            .as_ref()
            .is_some_and(|(r, _)| r == "ErrImagePull" || r == "ImagePullBackOff");
        let backoff = if pulled_before {
            (slot.backoff.unwrap_or(BACKOFF_INITIAL) * 2).min(BACKOFF_MAX)
        } else {
            BACKOFF_INITIAL
        };
        slot.backoff = Some(backoff);
        match error {
            ImageError::NeverPull(message) => StartError {
                reason: "ErrImageNeverPull",
                message,
                retry: backoff,
            },
            ImageError::Pull(message) if pulled_before => StartError {
                reason: "ImagePullBackOff",
                message: format!(
                    "Back-off pulling image {:?}: {message}",
                    container.image.as_deref().unwrap_or("")
                ),
                retry: backoff,
            },
            ImageError::Pull(message) => StartError {
                reason: "ErrImagePull",
                message,
                retry: Duration::from_secs(1),
            },
        }
    }

    fn terminal_phase(&self, pod: &Pod) -> Option<&'static str> {
        let spec = pod.spec.as_ref()?;
        let restart_policy = spec.restart_policy.as_deref().unwrap_or("Always");
        let (init, app, initialized) = self.views(pod);
        let phase = status::phase(&init, &app, restart_policy, initialized);
        matches!(phase, "Succeeded" | "Failed").then_some(phase)
    }

    fn views<'a>(&'a self, pod: &'a Pod) -> (Vec<ContainerView<'a>>, Vec<ContainerView<'a>>, bool) {
        let spec = pod.spec.as_ref();
        let init: Vec<ContainerView<'a>> = spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten())
            .map(|c| self.view_of(c, true))
            .collect();
        let app: Vec<ContainerView<'a>> = spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .map(|c| self.view_of(c, false))
            .collect();
        let initialized = init.iter().all(|v| {
            v.current
                .is_some_and(|c| c.state == ContainerState::Exited && c.exit_code == Some(0))
        });
        (init, app, initialized)
    }

    fn view_of<'a>(&'a self, c: &'a Container, init: bool) -> ContainerView<'a> {
        let slot = self.slots.get(&c.name);
        let current = slot.and_then(|s| s.current.as_ref());
        let running = current.is_some_and(|s| s.state == ContainerState::Running);
        let results = slot
            .and_then(|s| s.probes.as_ref())
            .map(|Probes(r, _)| r.borrow().clone());
        let started = running && results.as_ref().is_none_or(|r| r.started);
        let ready = !init && started && results.as_ref().is_none_or(|r| r.ready);
        ContainerView {
            name: &c.name,
            image: c.image.as_deref().unwrap_or(""),
            current,
            previous: slot.and_then(|s| s.previous.as_ref()),
            restart_count: slot.map_or(0, |s| s.restart_count),
            waiting: slot
                .and_then(|s| s.waiting.as_ref())
                .map(|(r, m)| (r.as_str(), m.as_str())),
            ready,
            started,
            runtime: runtime_prefix(self.shared.runtime.name()),
        }
    }

    fn pod_ip(&self, pod: &Pod) -> Option<String> {
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        if host_network {
            return Some(self.shared.host_ip.clone());
        }
        self.sandbox
            .as_ref()
            .and_then(|s| s.ip)
            .map(|ip| ip.to_string())
    }

    fn pod_dir(&self) -> PathBuf {
        self.shared.pods_dir.join(&self.uid)
    }

    /// Makes the pod's containers findable for logs, exec and port-forward.
    fn publish(&self, pod: &Pod) {
        let containers: Vec<String> = status::all_containers(pod)
            .into_iter()
            .map(|c| c.name.clone())
            .collect();
        let mut entries = HashMap::new();
        for name in &containers {
            let slot = self.slots.get(name);
            let current = slot.and_then(|s| s.current.as_ref());
            let log_of = |attempt: u32| {
                self.pod_dir()
                    .join("logs")
                    .join(name)
                    .join(format!("{attempt}.log"))
            };
            entries.insert(
                name.clone(),
                ContainerEntry {
                    container_id: current.map(|c| c.id.clone()),
                    running: current.is_some_and(|c| c.state == ContainerState::Running),
                    log_path: current.map(|c| c.log_path.clone()),
                    previous_log_path: current
                        .filter(|c| c.attempt > 0)
                        .map(|c| log_of(c.attempt - 1)),
                },
            );
        }
        self.shared.directory.publish(
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
            PodEntry {
                uid: self.uid.clone(),
                sandbox_id: self.sandbox.as_ref().map(|s| s.id.clone()),
                containers,
                default_container: pod
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("kubectl.kubernetes.io/default-container"))
                    .cloned(),
                entries,
            },
        );
    }

    /// Writes the pod's status if it differs from what was last written.
    async fn report(&mut self, pod: &Pod, deleting: bool) {
        let status = self.build_status(pod, deleting);
        if self.last_status.as_ref() == Some(&status) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(
            self.shared.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let patch = json!({ "status": status });
        match api
            .patch_status(
                pod.metadata.name.as_deref().unwrap_or(""),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => self.last_status = Some(status),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => tracing::warn!(pod = %name_of(pod), "writing status: {e}"),
        }
    }

    fn build_status(&self, pod: &Pod, deleting: bool) -> Value {
        let now = status::rfc3339(SystemTime::now());
        let spec = pod.spec.clone().unwrap_or_default();
        let restart_policy = spec.restart_policy.as_deref().unwrap_or("Always");
        let (init, app, initialized) = self.views(pod);
        let phase = if deleting {
            pod.status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_else(|| "Pending".into())
        } else {
            status::phase(&init, &app, restart_policy, initialized).to_string()
        };
        let containers_ready = !deleting && !app.is_empty() && app.iter().all(|c| c.ready);
        let mut conditions = vec![
            status::condition(
                pod,
                "PodReadyToStartContainers",
                self.sandbox.as_ref().is_some_and(|s| s.ready),
                None,
                &now,
            ),
            status::condition(
                pod,
                "Initialized",
                initialized,
                (!initialized).then_some("ContainersNotInitialized"),
                &now,
            ),
            status::condition(
                pod,
                "Ready",
                containers_ready,
                (!containers_ready).then_some("ContainersNotReady"),
                &now,
            ),
            status::condition(
                pod,
                "ContainersReady",
                containers_ready,
                (!containers_ready).then_some("ContainersNotReady"),
                &now,
            ),
        ];
        conditions.push(status::condition(pod, "PodScheduled", true, None, &now));
        let pod_ip = self.pod_ip(pod);
        let mut status = json!({
            "phase": phase,
            "conditions": conditions,
            "hostIP": self.shared.host_ip,
            "hostIPs": [{ "ip": self.shared.host_ip }],
            "startTime": self.start_time,
            "qosClass": status::qos_class(pod),
            "containerStatuses": app.iter().map(status::container_status).collect::<Vec<_>>(),
        });
        if !init.is_empty() {
            status["initContainerStatuses"] = json!(
                init.iter()
                    .map(status::container_status)
                    .collect::<Vec<_>>()
            );
        }
        if let Some(ip) = pod_ip {
            status["podIP"] = json!(ip);
            status["podIPs"] = json!([{ "ip": ip }]);
        }
        status
    }

    /// Stops everything of the pod within `grace` and removes it from the host.
    async fn teardown(&mut self, grace: Duration) {
        let runtime = self.shared.runtime.clone();
        let stops = self.slots.values().filter_map(|slot| {
            slot.current
                .as_ref()
                .filter(|c| c.state != ContainerState::Exited)
                .map(|c| {
                    let runtime = runtime.clone();
                    let id = c.id.clone();
                    async move { runtime.stop_container(&id, grace).await }
                })
        });
        for result in futures::future::join_all(stops).await {
            if let Err(e) = result {
                tracing::warn!(uid = %self.uid, "stopping a container: {e}");
            }
        }
        for slot in self.slots.values_mut() {
            for c in [slot.current.take(), slot.previous.take()]
                .into_iter()
                .flatten()
            {
                if let Err(e) = runtime.remove_container(&c.id).await {
                    tracing::warn!(uid = %self.uid, "removing a container: {e}");
                }
            }
            // The exited attempts are gone: mark them so status shows them terminated.
        }
        if let Some(sandbox) = self.sandbox.take() {
            if let Err(e) = runtime.stop_sandbox(&sandbox.id).await {
                tracing::warn!(uid = %self.uid, "stopping the sandbox: {e}");
            }
            if let Err(e) = runtime.remove_sandbox(&sandbox.id).await {
                tracing::warn!(uid = %self.uid, "removing the sandbox: {e}");
            }
        }
        if let Some(volumes) = self.volumes.take() {
            spec::unmount_all(&volumes.mounts);
        }
        let dir = self.pod_dir();
        if dir.exists()
            && let Err(e) = std::fs::remove_dir_all(&dir)
        {
            tracing::warn!(dir = %dir.display(), "removing the pod's directory: {e}");
        }
        self.shared.directory.forget(&self.uid);
    }

    /// Deletes the pod for good once it has stopped here, as the kubelet does. Returns whether
    /// this pod is gone from the API.
    async fn finish_deletion(&self, pod: &Pod) -> bool {
        let api: Api<Pod> = Api::namespaced(
            self.shared.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api
            .delete(pod.metadata.name.as_deref().unwrap_or(""), &params)
            .await
        {
            // 409: the name now belongs to another pod; this one is gone.
            Ok(_) => true,
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => true,
            Err(e) => {
                tracing::warn!(pod = %name_of(pod), "deleting: {e}");
                false
            }
        }
    }
}

fn runtime_prefix(name: &str) -> &'static str {
    match name {
        "oci" => "runc",
        "sim" => "sim",
        _ => "visor",
    }
}

fn name_of(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

/// Why a container could not start, and when to try again.
struct StartError {
    reason: &'static str,
    message: String,
    retry: Duration,
}

impl StartError {
    fn config(reason: &'static str, message: String) -> Self {
        StartError {
            reason,
            message,
            retry: Duration::from_secs(2),
        }
    }

    fn retry(reason: &'static str, message: String) -> Self {
        StartError {
            reason,
            message,
            retry: Duration::from_secs(5),
        }
    }
}

/// Projected service account tokens, from the TokenRequest API, bound to the pod.
fn token_source(
    client: kube::Client,
    pod: &Pod,
) -> impl Fn(
    &str,
    Option<&str>,
    Option<i64>,
) -> futures::future::BoxFuture<'static, anyhow::Result<String>>
+ Sync {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    move |_path, audience, expiration| {
        let client = client.clone();
        let (namespace, name, uid, account) = (
            namespace.clone(),
            name.clone(),
            uid.clone(),
            account.clone(),
        );
        let audience = audience.map(str::to_string);
        Box::pin(async move {
            let body = json!({
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {
                    "audiences": audience.map(|a| vec![a]).unwrap_or_default(),
                    "expirationSeconds": expiration.unwrap_or(3607),
                    "boundObjectRef": { "apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid },
                },
            });
            let request = http::Request::post(format!(
                "/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token"
            ))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&body)?)?;
            let answer: Value = client.request(request).await?;
            answer
                .pointer("/status/token")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| anyhow::anyhow!("the TokenRequest answer has no token"))
        })
    }
}
