//! The DaemonSet controller: one pod of a DaemonSet's template on each eligible node.
//!
//! A node is eligible when its `Ready` condition is `True`, it is not marked unschedulable,
//! its labels match the template's `nodeSelector`, and every `NoSchedule`/`NoExecute` taint it
//! has is tolerated by the template.
//!
//! Flow, for each DaemonSet:
//! 1. list the nodes, and the pods matching the selector that name the DaemonSet as controller;
//! 2. per node: an eligible node without an active pod gets one, created with `spec.nodeName`
//!    set (there is no scheduler to bind it) and named `<daemonset>-<random>`; extra pods on a
//!    node, pods on ineligible or vanished nodes are deleted;
//! 3. with the `RollingUpdate` strategy, pods from an older template (their
//!    `controller-revision-hash` label differs from the current template's hash) are deleted,
//!    as many at a time as `maxUnavailable` allows counting the nodes already without an
//!    available pod; the next pass creates their replacements. `OnDelete` leaves them;
//! 4. write the status (`desiredNumberScheduled`, `currentNumberScheduled`,
//!    `numberMisscheduled`, `numberReady`, `updatedNumberScheduled`, `numberAvailable`,
//!    `numberUnavailable`, `observedGeneration`).
//!
//! Guarantees: idempotent; at most one pod per node is created in a pass, and a node gets a
//! new pod only when it has no active one.
//!
//! Caveats: pods bound to a node are deleted gracefully and stay terminating until a node
//! agent confirms them; until then they count as neither active nor available. Node affinity
//! in the template is not evaluated (only `nodeSelector`). Revisions are not recorded as
//! ControllerRevisions, so `kubectl rollout history daemonset` shows nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use crate::ERROR_REQUEUE;
use crate::informers::Informers;
use crate::shared::{self, Context};

/// The label that names the template revision a pod was made from.
const REVISION_HASH: &str = "controller-revision-hash";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("listing nodes: {0}")]
    ListNodes(#[source] kube::Error),
    #[error("listing the pods of daemonset {namespace}/{name}: {source}")]
    ListPods {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("creating a pod for daemonset {namespace}/{name} on node {node}: {source}")]
    CreatePod {
        namespace: String,
        name: String,
        node: String,
        source: kube::Error,
    },
    #[error("deleting pod {namespace}/{pod}: {source}")]
    DeletePod {
        namespace: String,
        pod: String,
        source: kube::Error,
    },
    #[error("writing the status of daemonset {namespace}/{name}: {source}")]
    Status {
        namespace: String,
        name: String,
        source: kube::Error,
    },
}

/// Runs the controller until its watches end. Any node change re-examines every DaemonSet.
pub async fn run(client: Client, informers: Arc<Informers>) {
    let ctx = Context::new(client.clone());
    let node_changes = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .touched_objects()
        .map(|_| ());
    Controller::new(
        Api::<DaemonSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns_shared_stream(informers.touched(Api::<Pod>::all(client), watcher::Config::default()))
    .reconcile_all_on(node_changes)
    .run(reconcile, error_policy, ctx)
    .for_each(|result| async move {
        if let Err(error) = result {
            tracing::debug!(%error, "daemonset reconcile");
        }
    })
    .await;
}

fn error_policy(_: Arc<DaemonSet>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(%error, "daemonset reconcile failed; retrying");
    Action::requeue(ERROR_REQUEUE)
}

/// Whether `taint` is tolerated by one of `tolerations`.
fn tolerated(taint: &Taint, tolerations: &[Toleration]) -> bool {
    tolerations.iter().any(|t| {
        let effect_matches = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == taint.effect);
        let key_matches = t
            .key
            .as_deref()
            .is_none_or(|k| k.is_empty() || k == taint.key);
        let value_matches = match t.operator.as_deref() {
            Some("Exists") => true,
            _ => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        };
        effect_matches && key_matches && value_matches
    })
}

/// Whether the DaemonSet should run a pod on `node`.
fn eligible(ds: &DaemonSet, node: &Node) -> bool {
    let pod_spec = ds.spec.as_ref().and_then(|s| s.template.spec.as_ref());
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let unschedulable = node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
    let selector_matches = pod_spec
        .and_then(|s| s.node_selector.as_ref())
        .is_none_or(|sel| sel.iter().all(|(k, v)| node.labels().get(k) == Some(v)));
    let tolerations = pod_spec
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let taints_tolerated = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|t| tolerated(t, &tolerations));
    ready && !unschedulable && selector_matches && taints_tolerated
}

async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    let Some((name, namespace, uid)) = shared::identity(ds.as_ref()) else {
        return Ok(Action::await_change());
    };
    let Some(spec) = ds.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    let selector = match (
        ds.metadata.deletion_timestamp.is_some(),
        shared::selector(Some(&spec.selector)),
    ) {
        // Being deleted: its pods are the garbage collector's.
        (true, _) => return Ok(Action::await_change()),
        (false, None) => return Ok(Action::await_change()),
        (false, Some(selector)) => selector,
    };
    let nodes = Api::<Node>::all(ctx.client.clone())
        .list(&Default::default())
        .await
        .map_err(Error::ListNodes)?
        .items;
    let pods: Vec<Pod> = shared::owned(&ctx.client, &namespace, &selector, &uid)
        .await
        .map_err(|source| Error::ListPods {
            namespace: namespace.clone(),
            name: name.clone(),
            source,
        })?;
    let hash = shared::template_hash(
        &spec.template,
        ds.status.as_ref().and_then(|s| s.collision_count),
    );
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let now = Timestamp::now();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);

    let mut by_node: HashMap<String, Vec<&Pod>> = HashMap::new();
    for pod in pods.iter().filter(|p| shared::pod_active(p)) {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        by_node.entry(node).or_default().push(pod);
    }
    let eligible_nodes: BTreeMap<String, &Node> = nodes
        .iter()
        .filter(|n| eligible(&ds, n))
        .map(|n| (n.name_any(), n))
        .collect();

    let mut to_create: Vec<String> = Vec::new();
    let mut to_delete: Vec<&Pod> = Vec::new();
    let mut old_on_node: Vec<(&Pod, bool)> = Vec::new();
    for node in eligible_nodes.keys() {
        match by_node.get(node).map(Vec::as_slice) {
            None | Some([]) => to_create.push(node.clone()),
            Some([pod]) => {
                if pod.labels().get(REVISION_HASH) != Some(&hash) {
                    old_on_node.push((pod, shared::pod_available(pod, min_ready, now)));
                }
            }
            // More than one: keep the oldest, which has likely run longest.
            Some(many) => {
                let mut many = many.to_vec();
                many.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
                to_delete.extend(many.into_iter().skip(1));
            }
        }
    }
    // Pods on nodes that are gone or no longer eligible.
    for (node, pods) in &by_node {
        if !eligible_nodes.contains_key(node) {
            to_delete.extend(pods.iter().copied());
        }
    }

    let rolling = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate");
    if rolling && !old_on_node.is_empty() {
        let desired = i32::try_from(eligible_nodes.len()).unwrap_or(i32::MAX);
        let max_unavailable = shared::scaled_value(
            spec.update_strategy
                .as_ref()
                .and_then(|s| s.rolling_update.as_ref())
                .and_then(|r| r.max_unavailable.as_ref()),
            desired,
            true,
        )
        .max(1);
        let unavailable_nodes = eligible_nodes
            .keys()
            .filter(|n| {
                by_node
                    .get(*n)
                    .is_none_or(|p| !p.iter().any(|p| shared::pod_available(p, min_ready, now)))
            })
            .count();
        let mut budget = usize::try_from(max_unavailable)
            .unwrap_or(1)
            .saturating_sub(unavailable_nodes);
        // Old pods that are not available anyway go first: replacing them costs nothing.
        old_on_node.sort_by_key(|(_, available)| *available);
        for (pod, available) in old_on_node {
            match (available, budget) {
                (false, _) => to_delete.push(pod),
                (true, 0) => {}
                (true, _) => {
                    budget -= 1;
                    to_delete.push(pod);
                }
            }
        }
    }

    let Some(owner) = shared::controller_ref(ds.as_ref()) else {
        return Ok(Action::await_change());
    };
    for node in &to_create {
        let mut pod = shared::pod_from_template(
            &spec.template,
            owner.clone(),
            &name,
            true,
            BTreeMap::from([(REVISION_HASH.to_string(), hash.clone())]),
        );
        if let Some(spec) = pod.spec.as_mut() {
            spec.node_name = Some(node.clone());
        }
        match api.create(&PostParams::default(), &pod).await {
            Ok(made) => {
                ctx.event(
                    ds.as_ref(),
                    false,
                    "SuccessfulCreate",
                    format!("Created pod: {}", made.name_any()),
                )
                .await;
            }
            Err(e) if shared::namespace_terminating(&e) => break,
            Err(source) => {
                return Err(Error::CreatePod {
                    namespace,
                    name,
                    node: node.clone(),
                    source,
                });
            }
        }
    }
    for pod in &to_delete {
        let pod_name = pod.name_any();
        shared::delete_idempotent(&api, &pod_name)
            .await
            .map_err(|source| Error::DeletePod {
                namespace: namespace.clone(),
                pod: pod_name.clone(),
                source,
            })?;
        ctx.event(
            ds.as_ref(),
            false,
            "SuccessfulDelete",
            format!("Deleted pod: {pod_name}"),
        )
        .await;
    }

    // Status from the pods as listed: the creations and deletions above wake another pass.
    let count = |f: &dyn Fn(&Pod) -> bool| -> i32 {
        let n = eligible_nodes
            .keys()
            .filter(|n| by_node.get(*n).is_some_and(|p| p.iter().any(|p| f(p))))
            .count();
        i32::try_from(n).unwrap_or(i32::MAX)
    };
    let desired = i32::try_from(eligible_nodes.len()).unwrap_or(i32::MAX);
    let misscheduled = by_node
        .iter()
        .filter(|(n, p)| !eligible_nodes.contains_key(*n) && !p.is_empty())
        .count();
    let available = count(&|p| shared::pod_available(p, min_ready, now));
    let status = DaemonSetStatus {
        desired_number_scheduled: desired,
        current_number_scheduled: count(&|_| true),
        number_misscheduled: i32::try_from(misscheduled).unwrap_or(i32::MAX),
        number_ready: count(&shared::pod_ready),
        updated_number_scheduled: Some(count(&|p| p.labels().get(REVISION_HASH) == Some(&hash))),
        number_available: Some(available).filter(|n| *n > 0),
        number_unavailable: Some(desired - available).filter(|n| *n > 0),
        observed_generation: ds.metadata.generation,
        collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
        conditions: ds.status.as_ref().and_then(|s| s.conditions.clone()),
    };
    let dss: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &namespace);
    shared::write_status(&dss, &name, ds.status.as_ref(), &status)
        .await
        .map_err(|source| Error::Status {
            namespace,
            name,
            source,
        })?;
    match min_ready > 0 && available < count(&shared::pod_ready) {
        // Ready pods become available with time alone: look again.
        true => Ok(Action::requeue(std::time::Duration::from_secs(1))),
        false => Ok(Action::await_change()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(ready: bool, labels: serde_json::Value, taints: serde_json::Value) -> Node {
        serde_json::from_value(json!({
            "metadata": { "name": "n", "labels": labels },
            "spec": { "taints": taints },
            "status": { "conditions": [
                { "type": "Ready", "status": if ready { "True" } else { "False" } }
            ]}
        }))
        .unwrap_or_default()
    }

    fn ds(pod_spec: serde_json::Value) -> DaemonSet {
        serde_json::from_value(json!({
            "metadata": { "name": "d" },
            "spec": { "selector": {}, "template": { "spec": pod_spec } }
        }))
        .unwrap_or_default()
    }

    #[test]
    fn eligibility() {
        let plain = ds(json!({ "containers": [] }));
        assert!(eligible(&plain, &node(true, json!({}), json!([]))));
        assert!(!eligible(&plain, &node(false, json!({}), json!([]))));
        let selective = ds(json!({ "containers": [], "nodeSelector": { "disk": "ssd" } }));
        assert!(!eligible(&selective, &node(true, json!({}), json!([]))));
        assert!(eligible(
            &selective,
            &node(true, json!({ "disk": "ssd" }), json!([]))
        ));
        let taint = json!([{ "key": "gpu", "value": "yes", "effect": "NoSchedule" }]);
        assert!(!eligible(&plain, &node(true, json!({}), taint.clone())));
        let tolerant = ds(json!({ "containers": [],
            "tolerations": [{ "key": "gpu", "operator": "Exists" }] }));
        assert!(eligible(&tolerant, &node(true, json!({}), taint)));
    }
}
