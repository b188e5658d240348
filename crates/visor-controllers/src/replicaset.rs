//! The ReplicaSet controller: keeps `spec.replicas` pods of a ReplicaSet's template in being and
//! reports how many exist, are ready and are available.
//!
//! Flow, for each ReplicaSet:
//! 1. list the pods in its namespace that match its selector and name it as controller;
//! 2. the active ones (not being deleted, not Succeeded or Failed) are compared with
//!    `spec.replicas`: missing pods are created from the template with `generateName`
//!    `<replicaset>-` and a controller owner reference (`blockOwnerDeletion: true`); surplus
//!    pods are deleted, the least useful first (unscheduled, then pending, then not ready, then
//!    the most recently ready or created);
//! 3. the status (`replicas`, `fullyLabeledReplicas`, `readyReplicas`, `availableReplicas`,
//!    `observedGeneration`) is written from the pods that were listed.
//!
//! Guarantees: the reconciler is idempotent. Pods are listed afresh on every pass, so a pass
//! never counts on what an earlier one believed; creating or deleting a pod triggers another
//! pass through the pod watch, which then reports the new counts.
//!
//! Caveats: pods matching the selector but owned by nobody are not adopted, and pods owned by
//! this ReplicaSet that no longer match its selector are not released. A ReplicaSet being
//! deleted is left alone: its pods are the garbage collector's business.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use crate::ERROR_REQUEUE;
use crate::informers::Informers;
use crate::shared::{self, Context};

/// The most pods one pass creates or deletes; the next pass does the rest.
const BURST: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("listing the pods of replicaset {namespace}/{name}: {source}")]
    ListPods {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("creating a pod for replicaset {namespace}/{name}: {source}")]
    CreatePod {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("deleting pod {namespace}/{pod}: {source}")]
    DeletePod {
        namespace: String,
        pod: String,
        source: kube::Error,
    },
    #[error("writing the status of replicaset {namespace}/{name}: {source}")]
    Status {
        namespace: String,
        name: String,
        source: kube::Error,
    },
}

/// Runs the controller until its watches end.
pub async fn run(client: Client, informers: Arc<Informers>) {
    let ctx = Context::new(client.clone());
    Controller::new(
        Api::<ReplicaSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns_shared_stream(informers.touched(Api::<Pod>::all(client), watcher::Config::default()))
    .run(reconcile, error_policy, ctx)
    .for_each(|result| async move {
        if let Err(error) = result {
            tracing::debug!(%error, "replicaset reconcile");
        }
    })
    .await;
}

fn error_policy(_: Arc<ReplicaSet>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(%error, "replicaset reconcile failed; retrying");
    Action::requeue(ERROR_REQUEUE)
}

async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    let Some((name, namespace, uid)) = shared::identity(rs.as_ref()) else {
        return Ok(Action::await_change());
    };
    let spec = rs.spec.as_ref();
    let selector = spec.and_then(|s| shared::selector(Some(&s.selector)));
    match (rs.metadata.deletion_timestamp.is_some(), selector) {
        // Being deleted: the garbage collector removes the pods; creating more would fight it.
        (true, _) => Ok(Action::await_change()),
        // No usable selector: validation should have refused it; there is nothing safe to do.
        (false, None) => Ok(Action::await_change()),
        (false, Some(selector)) => {
            let pods: Vec<Pod> = shared::owned(&ctx.client, &namespace, &selector, &uid)
                .await
                .map_err(|source| Error::ListPods {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    source,
                })?;
            manage(&rs, &ctx, &name, &namespace, &pods).await?;
            let status = status(&rs, &pods);
            let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &namespace);
            shared::write_status(&api, &name, rs.status.as_ref(), &status)
                .await
                .map_err(|source| Error::Status {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    source,
                })?;
            Ok(requeue_for_availability(&rs, &pods))
        }
    }
}

/// Creates or deletes pods so that the active ones number `spec.replicas`.
async fn manage(
    rs: &ReplicaSet,
    ctx: &Context,
    name: &str,
    namespace: &str,
    pods: &[Pod],
) -> Result<(), Error> {
    let wanted = rs
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
        .max(0);
    let wanted = usize::try_from(wanted).unwrap_or(0);
    let mut active: Vec<&Pod> = pods.iter().filter(|p| shared::pod_active(p)).collect();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    match active.len().cmp(&wanted) {
        std::cmp::Ordering::Equal => {}
        std::cmp::Ordering::Less => {
            let (Some(template), Some(owner)) = (
                rs.spec.as_ref().and_then(|s| s.template.as_ref()),
                shared::controller_ref(rs),
            ) else {
                return Ok(());
            };
            let pod = shared::pod_from_template(template, owner, name, true, BTreeMap::new());
            for _ in 0..(wanted - active.len()).min(BURST) {
                match api.create(&kube::api::PostParams::default(), &pod).await {
                    Ok(created) => {
                        ctx.event(
                            rs,
                            false,
                            "SuccessfulCreate",
                            format!("Created pod: {}", created.name_any()),
                        )
                        .await;
                    }
                    // The namespace is going away; the namespace controller will delete us.
                    Err(e) if shared::namespace_terminating(&e) => return Ok(()),
                    Err(source) => {
                        ctx.event(
                            rs,
                            true,
                            "FailedCreate",
                            format!("Error creating: {source}"),
                        )
                        .await;
                        return Err(Error::CreatePod {
                            namespace: namespace.into(),
                            name: name.into(),
                            source,
                        });
                    }
                }
            }
        }
        std::cmp::Ordering::Greater => {
            active.sort_by_key(|p| deletion_rank(p));
            for pod in active.iter().take((active.len() - wanted).min(BURST)) {
                let pod_name = pod.name_any();
                shared::delete_idempotent(&api, &pod_name)
                    .await
                    .map_err(|source| Error::DeletePod {
                        namespace: namespace.into(),
                        pod: pod_name.clone(),
                        source,
                    })?;
                ctx.event(
                    rs,
                    false,
                    "SuccessfulDelete",
                    format!("Deleted pod: {pod_name}"),
                )
                .await;
            }
        }
    }
    Ok(())
}

/// Orders pods so that the ones to give up first come first: unscheduled before scheduled,
/// pending before running, not ready before ready, and the youngest before the oldest (a pod
/// that has run long is the one to keep).
fn deletion_rank(
    pod: &Pod,
) -> (
    bool,
    bool,
    bool,
    Reverse<Option<k8s_openapi::jiff::Timestamp>>,
) {
    let scheduled = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_ref())
        .is_some();
    let running = shared::phase(pod) == "Running";
    let ready = shared::pod_ready(pod);
    let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
    (scheduled, running, ready, Reverse(created))
}

fn status(rs: &ReplicaSet, pods: &[Pod]) -> ReplicaSetStatus {
    let now = k8s_openapi::jiff::Timestamp::now();
    let min_ready = rs
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let template_labels = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let active: Vec<&Pod> = pods.iter().filter(|p| shared::pod_active(p)).collect();
    let count = |f: &dyn Fn(&Pod) -> bool| -> i32 {
        i32::try_from(active.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    ReplicaSetStatus {
        replicas: count(&|_| true),
        fully_labeled_replicas: Some(count(&|p| {
            template_labels
                .iter()
                .all(|(k, v)| p.labels().get(k) == Some(v))
        })),
        ready_replicas: Some(count(&shared::pod_ready)),
        available_replicas: Some(count(&|p| shared::pod_available(p, min_ready, now))),
        observed_generation: rs.metadata.generation,
        // Upstream reports terminating pods only behind an alpha feature gate.
        terminating_replicas: None,
        // Failures to create are reported as events; the condition is left to a later change.
        conditions: rs.status.as_ref().and_then(|s| s.conditions.clone()),
    }
}

/// With `minReadySeconds`, a ready pod becomes available later without any change to watch:
/// look again when the earliest such pod crosses the line.
fn requeue_for_availability(rs: &ReplicaSet, pods: &[Pod]) -> Action {
    let min_ready = rs
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let now = k8s_openapi::jiff::Timestamp::now();
    let pending = pods
        .iter()
        .filter(|p| shared::pod_ready(p) && !shared::pod_available(p, min_ready, now))
        .count();
    match (min_ready > 0, pending > 0) {
        (true, true) => Action::requeue(std::time::Duration::from_secs(1)),
        _ => Action::await_change(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};

    fn pod(node: Option<&str>, phase: &str, ready: bool) -> Pod {
        Pod {
            spec: Some(PodSpec {
                node_name: node.map(String::from),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn least_useful_pods_go_first() {
        let mut pods = [
            pod(Some("n"), "Running", true),
            pod(Some("n"), "Running", false),
            pod(None, "Pending", false),
            pod(Some("n"), "Pending", false),
        ];
        pods.sort_by_key(deletion_rank);
        let order: Vec<(bool, String, bool)> = pods
            .iter()
            .map(|p| {
                (
                    p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some(),
                    shared::phase(p).to_string(),
                    shared::pod_ready(p),
                )
            })
            .collect();
        assert_eq!(
            order,
            [
                (false, "Pending".into(), false),
                (true, "Pending".into(), false),
                (true, "Running".into(), false),
                (true, "Running".into(), true),
            ]
        );
    }
}
