//! The StatefulSet controller: pods with stable names `<set>-<ordinal>`, each with its own
//! PersistentVolumeClaims, created and removed in order.
//!
//! Flow, for each StatefulSet (ordinals run from `spec.ordinals.start`, default 0):
//! 1. list the pods matching the selector that name the set as controller, and index them by
//!    the ordinal in their name;
//! 2. walk the wanted ordinals upwards. A missing pod is created, after its claims
//!    (`<template>-<set>-<ordinal>`, from `volumeClaimTemplates`, kept when the pod goes); a
//!    pod that has finished (Succeeded or Failed) is deleted so it can be made again. With
//!    `OrderedReady` the walk stops at the first pod that was just created, is being deleted,
//!    or is not Running and Ready: ordinal N+1 is never created before N is ready. With
//!    `Parallel` the walk goes on;
//! 3. pods with ordinals beyond the wanted range are deleted highest first; with `OrderedReady`
//!    one at a time, and only while every wanted pod is Running and Ready;
//! 4. with the `RollingUpdate` strategy, once every wanted pod is ready, the highest-ordinal
//!    pod at or above `partition` that was made from an older template is deleted (step 2 makes
//!    it again from the current one); one at a time. `OnDelete` leaves old pods;
//! 5. write the status: `replicas`, `readyReplicas`, `availableReplicas`, `currentReplicas`,
//!    `updatedReplicas`, `currentRevision`, `updateRevision` (named `<set>-<template hash>`),
//!    `observedGeneration`.
//!
//! Guarantees: idempotent; never two pods with the same ordinal; claims are never deleted.
//!
//! Caveats: revisions are not stored as ControllerRevisions; `kubectl rollout history` and
//! `undo` for StatefulSets are not supported. `persistentVolumeClaimRetentionPolicy` other
//! than Retain is not applied.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use crate::ERROR_REQUEUE;
use crate::informers::Informers;
use crate::shared::{self, Context};

const REVISION_HASH: &str = "controller-revision-hash";
const POD_NAME: &str = "statefulset.kubernetes.io/pod-name";
const POD_INDEX: &str = "apps.kubernetes.io/pod-index";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("listing the pods of statefulset {namespace}/{name}: {source}")]
    ListPods {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("creating pod {namespace}/{pod}: {source}")]
    CreatePod {
        namespace: String,
        pod: String,
        source: kube::Error,
    },
    #[error("creating claim {namespace}/{claim}: {source}")]
    CreateClaim {
        namespace: String,
        claim: String,
        source: kube::Error,
    },
    #[error("deleting pod {namespace}/{pod}: {source}")]
    DeletePod {
        namespace: String,
        pod: String,
        source: kube::Error,
    },
    #[error("writing the status of statefulset {namespace}/{name}: {source}")]
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
        Api::<StatefulSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns_shared_stream(informers.touched(Api::<Pod>::all(client), watcher::Config::default()))
    .run(reconcile, error_policy, ctx)
    .for_each(|result| async move {
        if let Err(error) = result {
            tracing::debug!(%error, "statefulset reconcile");
        }
    })
    .await;
}

fn error_policy(_: Arc<StatefulSet>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(%error, "statefulset reconcile failed; retrying");
    Action::requeue(ERROR_REQUEUE)
}

/// The ordinal in a pod's name `<set>-<ordinal>`.
fn ordinal(set: &str, pod: &str) -> Option<i32> {
    let digits = pod.strip_prefix(set)?.strip_prefix('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// What a pod is, for the ordered walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PodState {
    Missing,
    Terminating,
    Finished,
    Starting,
    Healthy,
}

fn state(pod: Option<&Pod>) -> PodState {
    match pod {
        None => PodState::Missing,
        Some(p) if p.metadata.deletion_timestamp.is_some() => PodState::Terminating,
        Some(p) if matches!(shared::phase(p), "Succeeded" | "Failed") => PodState::Finished,
        Some(p) if shared::phase(p) == "Running" && shared::pod_ready(p) => PodState::Healthy,
        Some(_) => PodState::Starting,
    }
}

async fn reconcile(set: Arc<StatefulSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    let Some((name, namespace, uid)) = shared::identity(set.as_ref()) else {
        return Ok(Action::await_change());
    };
    let Some(spec) = set.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    let selector = match (
        set.metadata.deletion_timestamp.is_some(),
        shared::selector(Some(&spec.selector)),
    ) {
        // Being deleted: its pods are the garbage collector's.
        (true, _) => return Ok(Action::await_change()),
        (false, None) => return Ok(Action::await_change()),
        (false, Some(selector)) => selector,
    };
    let pods: Vec<Pod> = shared::owned(&ctx.client, &namespace, &selector, &uid)
        .await
        .map_err(|source| Error::ListPods {
            namespace: namespace.clone(),
            name: name.clone(),
            source,
        })?;
    let by_ordinal: BTreeMap<i32, &Pod> = pods
        .iter()
        .filter_map(|p| Some((ordinal(&name, &p.name_any())?, p)))
        .collect();
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let start = spec.ordinals.as_ref().and_then(|o| o.start).unwrap_or(0);
    let wanted = start..start.saturating_add(replicas);
    let ordered = spec.pod_management_policy.as_deref() != Some("Parallel");
    let hash = shared::template_hash(
        &spec.template,
        set.status.as_ref().and_then(|s| s.collision_count),
    );
    let update_revision = format!("{name}-{hash}");
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut changed = false;

    // Step 2: make the wanted pods, in order.
    let mut all_healthy = true;
    for ord in wanted.clone() {
        let current = by_ordinal.get(&ord).copied();
        let pod_state = state(current);
        match pod_state {
            PodState::Healthy => continue,
            PodState::Missing => {
                create_pod(&ctx, &set, &pods_api, ord, &update_revision).await?;
                changed = true;
            }
            PodState::Finished => {
                if let Some(pod) = current {
                    delete_pod(&ctx, &set, &pods_api, pod).await?;
                    changed = true;
                }
            }
            // Waiting: for the pod to start, or to finish going.
            PodState::Terminating | PodState::Starting => {}
        }
        all_healthy = false;
        if ordered {
            break;
        }
    }

    // Step 3: remove the pods beyond the range, highest first.
    let condemned: Vec<&Pod> = by_ordinal
        .iter()
        .rev()
        .filter(|(ord, _)| !wanted.contains(ord))
        .map(|(_, p)| *p)
        .collect();
    let condemned_terminating = condemned
        .iter()
        .any(|p| p.metadata.deletion_timestamp.is_some());
    match (ordered, all_healthy, condemned_terminating) {
        (false, _, _) => {
            for pod in condemned
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
            {
                delete_pod(&ctx, &set, &pods_api, pod).await?;
                changed = true;
            }
        }
        // One at a time, and only while the rest is healthy.
        (true, true, false) => {
            if let Some(pod) = condemned.first() {
                delete_pod(&ctx, &set, &pods_api, pod).await?;
                changed = true;
            }
        }
        (true, false, _) | (true, true, true) => {}
    }

    // Step 4: replace the pods of older templates, highest ordinal first.
    let rolling = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate");
    let partition = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0);
    if rolling && all_healthy && condemned.is_empty() && !changed {
        let stale = wanted
            .clone()
            .rev()
            .filter(|ord| *ord - start >= partition)
            .filter_map(|ord| by_ordinal.get(&ord).copied())
            .find(|p| p.labels().get(REVISION_HASH) != Some(&update_revision));
        if let Some(pod) = stale {
            delete_pod(&ctx, &set, &pods_api, pod).await?;
        }
    }

    let status = status(&set, &pods, &update_revision);
    let api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &namespace);
    shared::write_status(&api, &name, set.status.as_ref(), &status)
        .await
        .map_err(|source| Error::Status {
            namespace,
            name,
            source,
        })?;
    Ok(Action::await_change())
}

async fn create_pod(
    ctx: &Context,
    set: &StatefulSet,
    api: &Api<Pod>,
    ord: i32,
    revision: &str,
) -> Result<(), Error> {
    let name = set.name_any();
    let namespace = set.namespace().unwrap_or_default();
    let Some(spec) = set.spec.as_ref() else {
        return Ok(());
    };
    let Some(owner) = shared::controller_ref(set) else {
        return Ok(());
    };
    let pod_name = format!("{name}-{ord}");
    let claims_api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut volumes: Vec<Volume> = Vec::new();
    for template in spec.volume_claim_templates.iter().flatten() {
        let template_name = template.name_any();
        let claim_name = format!("{template_name}-{pod_name}");
        let mut labels = spec.selector.match_labels.clone().unwrap_or_default();
        labels.extend(template.labels().clone());
        let claim = PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(claim_name.clone()),
                namespace: Some(namespace.clone()),
                labels: Some(labels),
                annotations: template.metadata.annotations.clone(),
                ..ObjectMeta::default()
            },
            spec: template.spec.clone(),
            status: None,
        };
        match shared::create_idempotent(&claims_api, &claim).await {
            Ok(Some(_)) => {
                ctx.event(
                    set,
                    false,
                    "SuccessfulCreate",
                    format!(
                        "create Claim {claim_name} Pod {pod_name} in StatefulSet {name} success"
                    ),
                )
                .await;
            }
            // An existing claim is the pod's: claims outlive their pods on purpose.
            Ok(None) => {}
            Err(e) if shared::namespace_terminating(&e) => return Ok(()),
            Err(source) => {
                return Err(Error::CreateClaim {
                    namespace,
                    claim: claim_name,
                    source,
                });
            }
        }
        volumes.push(Volume {
            name: template_name,
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name,
                read_only: None,
            }),
            ..Volume::default()
        });
    }
    let labels = BTreeMap::from([
        (POD_NAME.to_string(), pod_name.clone()),
        (POD_INDEX.to_string(), ord.to_string()),
        (REVISION_HASH.to_string(), revision.to_string()),
    ]);
    let mut pod = shared::pod_from_template(&spec.template, owner, &pod_name, false, labels);
    if let Some(pod_spec) = pod.spec.as_mut() {
        pod_spec.hostname = Some(pod_name.clone());
        pod_spec.subdomain = spec.service_name.clone().filter(|s| !s.is_empty());
        let claimed: HashSet<String> = volumes.iter().map(|v| v.name.clone()).collect();
        let mut all: Vec<Volume> = pod_spec
            .volumes
            .take()
            .unwrap_or_default()
            .into_iter()
            .filter(|v| !claimed.contains(&v.name))
            .collect();
        all.extend(volumes);
        pod_spec.volumes = (!all.is_empty()).then_some(all);
    }
    match api.create(&PostParams::default(), &pod).await {
        Ok(_) => {
            ctx.event(
                set,
                false,
                "SuccessfulCreate",
                format!("create Pod {pod_name} in StatefulSet {name} successful"),
            )
            .await;
            Ok(())
        }
        // It exists (a pass raced ours) or the namespace is going: nothing to add.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) if shared::namespace_terminating(&e) => Ok(()),
        Err(source) => Err(Error::CreatePod {
            namespace,
            pod: pod_name,
            source,
        }),
    }
}

async fn delete_pod(
    ctx: &Context,
    set: &StatefulSet,
    api: &Api<Pod>,
    pod: &Pod,
) -> Result<(), Error> {
    let pod_name = pod.name_any();
    shared::delete_idempotent(api, &pod_name)
        .await
        .map_err(|source| Error::DeletePod {
            namespace: set.namespace().unwrap_or_default(),
            pod: pod_name.clone(),
            source,
        })?;
    ctx.event(
        set,
        false,
        "SuccessfulDelete",
        format!(
            "delete Pod {pod_name} in StatefulSet {} successful",
            set.name_any()
        ),
    )
    .await;
    Ok(())
}

fn status(set: &StatefulSet, pods: &[Pod], update_revision: &str) -> StatefulSetStatus {
    let now = Timestamp::now();
    let min_ready = set
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let replicas = set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let previous = set.status.clone().unwrap_or_default();
    let live: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let count = |f: &dyn Fn(&Pod) -> bool| -> i32 {
        i32::try_from(live.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    let updated =
        count(&|p| p.labels().get(REVISION_HASH).map(String::as_str) == Some(update_revision));
    let ready = count(&shared::pod_ready);
    // The rollout is complete when every wanted pod runs the update revision and is ready;
    // only then does the current revision move.
    let current_revision = match (
        &previous.current_revision,
        updated == replicas && ready >= replicas,
    ) {
        (_, true) | (None, _) => update_revision.to_string(),
        (Some(current), false) => current.clone(),
    };
    let current = count(&|p| p.labels().get(REVISION_HASH) == Some(&current_revision));
    StatefulSetStatus {
        observed_generation: set.metadata.generation,
        replicas: count(&|_| true),
        ready_replicas: Some(ready),
        available_replicas: Some(count(&|p| shared::pod_available(p, min_ready, now))),
        current_replicas: Some(current),
        updated_replicas: Some(updated),
        current_revision: Some(current_revision),
        update_revision: Some(update_revision.to_string()),
        collision_count: Some(previous.collision_count.unwrap_or(0)),
        conditions: previous.conditions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_come_from_names() {
        assert_eq!(ordinal("web", "web-0"), Some(0));
        assert_eq!(ordinal("web", "web-12"), Some(12));
        assert_eq!(ordinal("web", "web-x"), None);
        assert_eq!(ordinal("web", "web-"), None);
        assert_eq!(ordinal("web", "webby-1"), None);
        assert_eq!(ordinal("web", "web-1-2"), None);
    }
}
