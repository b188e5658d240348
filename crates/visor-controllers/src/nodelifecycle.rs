//! The node lifecycle controller: notices hosts that stopped heartbeating, marks them, and
//! moves their pods away (the seeds' vSphere HA restart).
//!
//! Flow, every tick:
//! 1. **Heartbeats.** A host heartbeats by renewing its Lease `kube-node-lease/NAME`. The
//!    controller remembers, on its own clock, when it last saw each lease's `renewTime` change
//!    (as upstream's node lifecycle controller does, so clock skew between host and server does
//!    not matter); a host is *unreachable* when that is longer ago than the grace period
//!    (upstream's `node-monitor-grace-period`, 40 s). A host without a lease is measured from
//!    when the controller first saw it. Before a host is declared unreachable its lease is read
//!    afresh (a consistent read), so a watch lagging a busy server does not fail healthy hosts.
//! 2. **Conditions and taints.** An unreachable host gets `Ready=Unknown` (reason
//!    `NodeStatusUnknown`, "Kubelet stopped posting node status.") and the taints
//!    `node.kubernetes.io/unreachable` with effects `NoSchedule` and `NoExecute`. A host that
//!    reports `Ready=False` gets `node.kubernetes.io/not-ready` likewise. The taints go when
//!    the host is Ready again. Setting `Ready=True` back is the agent's job: it posts its own
//!    status once it runs again.
//! 3. **Evictions (HA restart).** Pods on a host with a `NoExecute` taint they do not tolerate
//!    are deleted: for the unreachable and not-ready taints after the host failure grace
//!    (`visor server --host-failure-grace`, 30 s) — or after the pod's own `tolerationSeconds`
//!    when it has a toleration for that taint — and for other `NoExecute` taints at once. The
//!    300 s tolerations the `DefaultTolerationSeconds` admission adds to every pod are upstream's
//!    way of saying "the default delay"; here the host failure grace is that default, so those
//!    exact tolerations are read as "no toleration of its own".
//!    Their controllers then create replacements, which the scheduler places on healthy hosts
//!    (the taints keep them off the failed one).
//!
//! Caveat, by design: a pod on an *unreachable* host is deleted with grace period 0 (forced),
//! as upstream's pod garbage collector does for pods on unreachable nodes: nobody is left to
//! confirm a graceful stop, and the replacement should not wait for a dead host. If the host
//! was only cut off, its agent stops the pod when it comes back and finds it gone. On a host
//! that reports `NotReady` the agent is alive, so the deletion is graceful.
//!
//! The controller is idempotent: each tick recomputes from the watched state; a write that
//! loses a race (the Node changed meanwhile) is retried on the next tick.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::Notify;

use crate::informers::{self, Informers};
use crate::shared::{Recorder, now};

pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
/// What the DefaultTolerationSeconds admission gives every pod for the two taints above.
const DEFAULT_TOLERATION_SECONDS: i64 = 300;

/// How the controller judges hosts.
#[derive(Clone, Debug)]
pub struct Config {
    /// How long a host may go without renewing its lease before it is unreachable.
    pub monitor_grace: Duration,
    /// How long pods stay on a NotReady or unreachable host before they are deleted.
    pub host_failure_grace: Duration,
    /// How often the controller looks.
    pub tick: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            monitor_grace: Duration::from_secs(40),
            host_failure_grace: Duration::from_secs(30),
            tick: Duration::from_secs(1),
        }
    }
}

/// What the controller has seen of one host, on its own clock.
struct Seen {
    renew_time: Option<String>,
    changed_at: Instant,
}

/// A host's health as the controller judges it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Health {
    Ready,
    /// The host itself reports `Ready=False` (or nothing yet, but it heartbeats).
    NotReady,
    /// No heartbeat within the grace period.
    Unreachable,
}

/// Runs the controller until the task is dropped.
pub async fn run(client: Client, config: Config, informers: Arc<Informers>) {
    let changed = Arc::new(Notify::new());
    let nodes: Store<Node> = informers.store(
        Api::all(client.clone()),
        watcher::Config::default(),
        changed.clone(),
    );
    let leases: Store<Lease> = informers.store(
        Api::namespaced(client.clone(), NODE_LEASE_NAMESPACE),
        watcher::Config::default(),
        changed.clone(),
    );
    let pods: Store<Pod> = informers.store(
        Api::all(client.clone()),
        watcher::Config::default().fields("spec.nodeName!="),
        changed.clone(),
    );
    if !(informers::ready(&nodes).await
        && informers::ready(&leases).await
        && informers::ready(&pods).await)
    {
        return;
    }
    let recorder = Recorder::new(client.clone());
    let lease_api: Api<Lease> = Api::namespaced(client.clone(), NODE_LEASE_NAMESPACE);
    let mut seen: HashMap<String, Seen> = HashMap::new();
    // (node, taint key) → when the controller first saw the NoExecute taint.
    let mut tainted_since: HashMap<(String, String), Instant> = HashMap::new();
    let mut evicted: HashSet<String> = HashSet::new();
    let mut tick = tokio::time::interval(config.tick);
    loop {
        tick.tick().await;
        let now_instant = Instant::now();
        let leases_by_node: HashMap<String, Arc<Lease>> = leases
            .state()
            .into_iter()
            .map(|l| (l.name_any(), l))
            .collect();
        let node_list = nodes.state();
        let names: HashSet<String> = node_list.iter().map(|n| n.name_any()).collect();
        seen.retain(|name, _| names.contains(name));
        tainted_since.retain(|(node, _), _| names.contains(node));
        let mut no_execute: Vec<(Arc<Node>, Health)> = Vec::new();
        for node in &node_list {
            let name = node.name_any();
            let renew = leases_by_node
                .get(&name)
                .and_then(|l| l.spec.as_ref())
                .and_then(|s| s.renew_time.as_ref())
                .map(|t| t.0.to_string());
            let entry = seen.entry(name.clone()).or_insert_with(|| Seen {
                renew_time: renew.clone(),
                changed_at: now_instant,
            });
            if entry.renew_time != renew {
                entry.renew_time = renew;
                entry.changed_at = now_instant;
            }
            let mut stale = now_instant.duration_since(entry.changed_at) > config.monitor_grace;
            if stale
                && ready_status(node) != Some("Unknown")
                && let Ok(Some(lease)) = lease_api.get_opt(&name).await
            {
                // The lease watch can lag a busy server by more than the grace; a consistent
                // read confirms the silence before a host is declared lost.
                let fresh = lease
                    .spec
                    .and_then(|s| s.renew_time)
                    .map(|t| t.0.to_string());
                if fresh != entry.renew_time {
                    entry.renew_time = fresh;
                    entry.changed_at = now_instant;
                    stale = false;
                }
            }
            let health = if stale {
                Health::Unreachable
            } else if ready_status(node) == Some("True") {
                Health::Ready
            } else {
                Health::NotReady
            };
            if let Err(error) = reconcile_node(&client, &recorder, node, health).await {
                tracing::debug!(%error, node = %name, "updating node health");
            }
            for taint in node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .into_iter()
                .flatten()
            {
                if taint.effect == "NoExecute" {
                    tainted_since
                        .entry((name.clone(), taint.key.clone()))
                        .or_insert(now_instant);
                }
            }
            let has_no_execute = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|t| t.iter().any(|t| t.effect == "NoExecute"));
            if has_no_execute {
                no_execute.push((node.clone(), health));
            }
        }
        // Forget taints no longer there.
        tainted_since.retain(|(node, key), _| {
            node_list.iter().any(|n| {
                n.name_any() == *node
                    && n.spec
                        .as_ref()
                        .and_then(|s| s.taints.as_ref())
                        .is_some_and(|t| t.iter().any(|t| t.key == *key && t.effect == "NoExecute"))
            })
        });
        if no_execute.is_empty() {
            evicted.clear();
            continue;
        }
        let all_pods = pods.state();
        let mut still_there = HashSet::new();
        for (node, health) in &no_execute {
            let node_name = node.name_any();
            let taints: Vec<&Taint> = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .into_iter()
                .flatten()
                .filter(|t| t.effect == "NoExecute")
                .collect();
            for pod in all_pods.iter().filter(|p| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node_name.as_str())
            }) {
                let key = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
                still_there.insert(key.clone());
                let due = taints.iter().any(|taint| {
                    let since = tainted_since
                        .get(&(node_name.clone(), taint.key.clone()))
                        .copied()
                        .unwrap_or(now_instant);
                    match eviction_delay(pod, taint, config.host_failure_grace) {
                        Some(delay) => now_instant.duration_since(since) >= delay,
                        None => false,
                    }
                });
                if !due || evicted.contains(&key) {
                    continue;
                }
                let force = *health == Health::Unreachable;
                if pod.metadata.deletion_timestamp.is_some() && !force {
                    continue;
                }
                match delete_pod(&client, pod, force).await {
                    Ok(()) => {
                        evicted.insert(key.clone());
                        recorder
                            .record(
                                pod.as_ref(),
                                false,
                                "TaintManagerEviction",
                                format!("Marking for deletion Pod {key}"),
                            )
                            .await;
                        tracing::info!(pod = %key, node = %node_name, force, "evicting a pod from a failed host");
                    }
                    Err(error) => tracing::warn!(%error, pod = %key, "evicting a pod"),
                }
            }
        }
        evicted.retain(|k| still_there.contains(k));
    }
}

fn ready_status(node: &Node) -> Option<&str> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.as_str())
}

/// How long a pod may stay on a host with `taint` (a NoExecute one): None is forever.
fn eviction_delay(pod: &Pod, taint: &Taint, host_failure_grace: Duration) -> Option<Duration> {
    let toleration = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_ref())
        .into_iter()
        .flatten()
        .find(|t| {
            let effect_ok = t
                .effect
                .as_deref()
                .is_none_or(|e| e.is_empty() || e == taint.effect);
            let key_ok = match t.key.as_deref() {
                None | Some("") => t.operator.as_deref() == Some("Exists"),
                Some(k) => {
                    k == taint.key
                        && (t.operator.as_deref() == Some("Exists")
                            || t.value.as_deref().unwrap_or("")
                                == taint.value.as_deref().unwrap_or(""))
                }
            };
            effect_ok && key_ok
        });
    let host_failure = taint.key == UNREACHABLE_TAINT || taint.key == NOT_READY_TAINT;
    // The toleration the DefaultTolerationSeconds admission gives every pod is not the pod's
    // own wish: on a failed host, the host failure grace replaces it.
    let toleration = toleration.filter(|t| !(host_failure && is_admission_default(t)));
    match (toleration, host_failure) {
        (Some(t), _) => t
            .toleration_seconds
            .map(|s| Duration::from_secs(s.max(0) as u64)),
        (None, true) => Some(host_failure_grace),
        (None, false) => Some(Duration::ZERO),
    }
}

/// Whether a toleration is exactly the one the DefaultTolerationSeconds admission adds.
fn is_admission_default(t: &k8s_openapi::api::core::v1::Toleration) -> bool {
    t.operator.as_deref() == Some("Exists")
        && t.effect.as_deref() == Some("NoExecute")
        && t.toleration_seconds == Some(DEFAULT_TOLERATION_SECONDS)
        && t.value.is_none()
        && matches!(t.key.as_deref(), Some(UNREACHABLE_TAINT | NOT_READY_TAINT))
}

async fn delete_pod(client: &Client, pod: &Pod, force: bool) -> Result<(), kube::Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let params = if force {
        DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        }
    } else {
        DeleteParams::default()
    };
    match api.delete(&pod.name_any(), &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error),
    }
}

/// The taints a host of this health carries (of the two this controller manages).
fn wanted_taints(health: Health) -> Option<&'static str> {
    match health {
        Health::Ready => None,
        Health::NotReady => Some(NOT_READY_TAINT),
        Health::Unreachable => Some(UNREACHABLE_TAINT),
    }
}

/// Brings one node's Ready condition and managed taints in line with its health.
async fn reconcile_node(
    client: &Client,
    recorder: &Recorder,
    node: &Node,
    health: Health,
) -> Result<(), kube::Error> {
    let api: Api<Node> = Api::all(client.clone());
    let name = node.name_any();
    if health == Health::Unreachable && ready_status(node) != Some("Unknown") {
        let condition = NodeCondition {
            type_: "Ready".into(),
            status: "Unknown".into(),
            reason: Some("NodeStatusUnknown".into()),
            message: Some("Kubelet stopped posting node status.".into()),
            last_transition_time: Some(now()),
            last_heartbeat_time: node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                .and_then(|c| c.last_heartbeat_time.clone()),
        };
        let patch = json!({"status": {"conditions": [condition]}});
        api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await?;
        recorder
            .record(
                node,
                true,
                "NodeNotReady",
                format!("Node {name} status is now: NodeNotReady (no heartbeat)"),
            )
            .await;
    }
    let current: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let wanted = wanted_taints(health);
    let mut next: Vec<Taint> = current
        .iter()
        .filter(|t| {
            let managed = t.key == UNREACHABLE_TAINT || t.key == NOT_READY_TAINT;
            !managed || Some(t.key.as_str()) == wanted
        })
        .cloned()
        .collect();
    if let Some(key) = wanted {
        for effect in ["NoSchedule", "NoExecute"] {
            if !next.iter().any(|t| t.key == key && t.effect == effect) {
                next.push(Taint {
                    key: key.into(),
                    effect: effect.into(),
                    value: None,
                    time_added: Some(now()),
                });
            }
        }
    }
    if next == current {
        return Ok(());
    }
    // The resource version makes this a compare-and-swap: an admin's concurrent taint edit is
    // not overwritten; the next tick tries again on the newer node.
    let patch = json!({
        "metadata": {"resourceVersion": node.resource_version()},
        "spec": {"taints": if next.is_empty() { serde_json::Value::Null } else { json!(next) }},
    });
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_with(tolerations: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"containers": [{"name": "c"}], "tolerations": tolerations},
        }))
        .unwrap()
    }

    fn taint(key: &str) -> Taint {
        Taint {
            key: key.into(),
            effect: "NoExecute".into(),
            value: None,
            time_added: None,
        }
    }

    #[test]
    fn pods_leave_failed_hosts_after_the_grace_or_their_own_toleration() {
        let grace = Duration::from_secs(30);
        let plain = pod_with(json!([]));
        assert_eq!(
            eviction_delay(&plain, &taint(UNREACHABLE_TAINT), grace),
            Some(grace)
        );
        assert_eq!(
            eviction_delay(&plain, &taint(NOT_READY_TAINT), grace),
            Some(grace)
        );
        assert_eq!(
            eviction_delay(&plain, &taint("maintenance"), grace),
            Some(Duration::ZERO)
        );
        let patient = pod_with(json!([{"key": UNREACHABLE_TAINT, "operator": "Exists",
            "effect": "NoExecute", "tolerationSeconds": 600}]));
        assert_eq!(
            eviction_delay(&patient, &taint(UNREACHABLE_TAINT), grace),
            Some(Duration::from_secs(600))
        );
        assert_eq!(
            eviction_delay(&patient, &taint(NOT_READY_TAINT), grace),
            Some(grace)
        );
        let defaulted = pod_with(json!([{"key": UNREACHABLE_TAINT, "operator": "Exists",
            "effect": "NoExecute", "tolerationSeconds": 300}]));
        assert_eq!(
            eviction_delay(&defaulted, &taint(UNREACHABLE_TAINT), grace),
            Some(grace)
        );
        let own = pod_with(json!([{"key": UNREACHABLE_TAINT, "operator": "Exists",
            "effect": "NoExecute", "tolerationSeconds": 301}]));
        assert_eq!(
            eviction_delay(&own, &taint(UNREACHABLE_TAINT), grace),
            Some(Duration::from_secs(301))
        );
        let forever = pod_with(json!([{"operator": "Exists"}]));
        assert_eq!(
            eviction_delay(&forever, &taint(UNREACHABLE_TAINT), grace),
            None
        );
        let other_effect = pod_with(json!([{"key": UNREACHABLE_TAINT, "operator": "Exists",
            "effect": "NoSchedule"}]));
        assert_eq!(
            eviction_delay(&other_effect, &taint(UNREACHABLE_TAINT), grace),
            Some(grace)
        );
    }

    #[test]
    fn each_health_has_its_taint() {
        assert_eq!(wanted_taints(Health::Ready), None);
        assert_eq!(wanted_taints(Health::NotReady), Some(NOT_READY_TAINT));
        assert_eq!(wanted_taints(Health::Unreachable), Some(UNREACHABLE_TAINT));
    }
}
