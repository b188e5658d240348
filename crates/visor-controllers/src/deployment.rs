//! The Deployment controller: rolls a Deployment's pod template out through ReplicaSets, one
//! per distinct template, and reports progress in the form `kubectl rollout` reads.
//!
//! Flow, for each Deployment:
//! 1. list the ReplicaSets in its namespace that match its selector and name it as controller;
//! 2. find the *new* ReplicaSet, the one whose template equals the Deployment's once the
//!    `pod-template-hash` label is set aside; if there is none (and the Deployment is not
//!    paused), create `<deployment>-<hash>`, where the hash names the template, with the hash
//!    added to its labels, selector and template, and a `deployment.kubernetes.io/revision` one
//!    higher than any other ReplicaSet's. A ReplicaSet that becomes new again (`kubectl rollout
//!    undo` puts an old template back) gets the next revision number, and the revision it had
//!    is recorded in `deployment.kubernetes.io/revision-history`;
//! 3. roll out:
//!    - `RollingUpdate`: scale the new ReplicaSet up as far as `replicas + maxSurge` allows, and
//!      the old ones down as far as `replicas - maxUnavailable` available pods allow (unhealthy
//!      old pods first), oldest ReplicaSet first;
//!    - `Recreate`: scale every old ReplicaSet to zero, wait until their pods are gone, then
//!      scale the new one up;
//!    - paused: change nothing but the new ReplicaSet's size when no rollout is under way;
//! 4. once the rollout is complete, delete the oldest empty ReplicaSets beyond
//!    `revisionHistoryLimit`;
//! 5. write the status: counts summed over the ReplicaSets, `observedGeneration`, and the
//!    `Available` and `Progressing` conditions with upstream's reasons
//!    (`MinimumReplicasAvailable`, `NewReplicaSetCreated`, `ReplicaSetUpdated`,
//!    `NewReplicaSetAvailable`, `ProgressDeadlineExceeded`, `DeploymentPaused`), and mirror the
//!    new ReplicaSet's revision in the Deployment's own `deployment.kubernetes.io/revision`
//!    annotation (which `kubectl rollout undo` relies on).
//!
//! Guarantees: the reconciler is idempotent; each step reads what the previous pass wrote from
//! the API. During a rolling update the total of `spec.replicas` never exceeds
//! `replicas + maxSurge`, and old ReplicaSets are only scaled down while the available pods stay
//! at or above `replicas - maxUnavailable` (as far as the ReplicaSets' reported status knows).
//!
//! Caveats: scaling a Deployment in the middle of a rollout is not spread proportionally over
//! its ReplicaSets as upstream does; the new ReplicaSet takes the change and the rollout
//! arithmetic settles the rest. Orphaned ReplicaSets that match the selector are not adopted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::ERROR_REQUEUE;
use crate::shared::{self, Context};

/// The label that ties a ReplicaSet and its pods to one template.
pub const TEMPLATE_HASH: &str = "pod-template-hash";
/// The annotation holding a ReplicaSet's (and its Deployment's) revision number.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// Deployment annotations that are not copied to its ReplicaSets.
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];
/// How often an unfinished rollout is looked at even without changes, to notice its progress
/// deadline passing.
const PROGRESS_CHECK: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("listing the replicasets of deployment {namespace}/{name}: {source}")]
    ListReplicaSets {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("creating replicaset {namespace}/{replicaset}: {source}")]
    CreateReplicaSet {
        namespace: String,
        replicaset: String,
        source: kube::Error,
    },
    #[error("updating replicaset {namespace}/{replicaset}: {source}")]
    UpdateReplicaSet {
        namespace: String,
        replicaset: String,
        source: kube::Error,
    },
    #[error("deleting old replicaset {namespace}/{replicaset}: {source}")]
    DeleteReplicaSet {
        namespace: String,
        replicaset: String,
        source: kube::Error,
    },
    #[error("annotating deployment {namespace}/{name}: {source}")]
    Annotate {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("writing the status of deployment {namespace}/{name}: {source}")]
    Status {
        namespace: String,
        name: String,
        source: kube::Error,
    },
}

/// Runs the controller until its watches end.
pub async fn run(client: Client) {
    let ctx = Context::new(client.clone());
    Controller::new(
        Api::<Deployment>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<ReplicaSet>::all(client), watcher::Config::default())
    .run(reconcile, error_policy, ctx)
    .for_each(|result| async move {
        if let Err(error) = result {
            tracing::debug!(%error, "deployment reconcile");
        }
    })
    .await;
}

fn error_policy(_: Arc<Deployment>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(%error, "deployment reconcile failed; retrying");
    Action::requeue(ERROR_REQUEUE)
}

/// The rollout strategy, resolved against the Deployment's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strategy {
    Recreate,
    RollingUpdate {
        max_surge: i32,
        max_unavailable: i32,
    },
}

/// What one pass works with.
struct Plan<'a> {
    deployment: &'a Deployment,
    name: String,
    namespace: String,
    desired: i32,
    strategy: Strategy,
    api: Api<ReplicaSet>,
}

async fn reconcile(deployment: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    let Some((name, namespace, uid)) = shared::identity(deployment.as_ref()) else {
        return Ok(Action::await_change());
    };
    let Some(spec) = deployment.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    let selector = shared::selector(Some(&spec.selector));
    let selector = match (deployment.metadata.deletion_timestamp.is_some(), selector) {
        // Being deleted: its ReplicaSets belong to the garbage collector now.
        (true, _) => return Ok(Action::await_change()),
        // No usable selector: validation should have refused it.
        (false, None) => return Ok(Action::await_change()),
        (false, Some(selector)) => selector,
    };
    let mut all: Vec<ReplicaSet> = shared::owned(&ctx.client, &namespace, &selector, &uid)
        .await
        .map_err(|source| Error::ListReplicaSets {
            namespace: namespace.clone(),
            name: name.clone(),
            source,
        })?;
    all.sort_by_key(|rs| (revision(rs), rs.metadata.creation_timestamp.clone()));
    let desired = spec.replicas.unwrap_or(1).max(0);
    let plan = Plan {
        deployment: &deployment,
        name: name.clone(),
        namespace: namespace.clone(),
        desired,
        strategy: strategy(&deployment, desired),
        api: Api::namespaced(ctx.client.clone(), &namespace),
    };
    let paused = spec.paused == Some(true);
    let template = spec.template.clone();

    let existing_new = all
        .iter()
        .position(|rs| same_template(rs, &template))
        .map(|i| all.remove(i));
    let mut created = false;
    let new = match (existing_new, paused) {
        (Some(rs), _) => Some(plan.ensure_revision(&ctx, rs, &all).await?),
        // A paused Deployment starts no rollout.
        (None, true) => None,
        (None, false) => match plan.create_new(&ctx, &template, &all).await? {
            Created::Made(rs) => {
                created = true;
                Some(*rs)
            }
            Created::Collision => {
                return plan.bump_collision_count().await;
            }
        },
    };
    let mut olds = all;

    let active_old = olds.iter().any(|rs| replicas(rs) > 0);
    match (paused, plan.strategy, new.as_ref()) {
        // Paused: only a size change is carried out, and only when nothing is rolling.
        (true, _, Some(new)) if !active_old => {
            let mut new = new.clone();
            plan.scale(&ctx, &mut new, plan.desired).await?;
        }
        (true, _, _) => {}
        (false, _, None) => {}
        (false, Strategy::Recreate, Some(new)) => {
            let mut new = new.clone();
            plan.recreate(&ctx, &mut olds, &mut new).await?;
        }
        (false, Strategy::RollingUpdate { .. }, Some(new)) => {
            let mut new = new.clone();
            plan.roll(&ctx, &mut olds, &mut new).await?;
        }
    }
    // Read the new ReplicaSet back: its status is what the rollout's completion is judged by.
    let new = match new {
        Some(rs) => {
            let rs_name = rs.name_any();
            plan.api
                .get_opt(&rs_name)
                .await
                .map_err(plan.replicaset_error(&rs_name))?
        }
        None => None,
    };

    let complete = new
        .as_ref()
        .is_some_and(|n| rollout_complete(desired, n, &olds));
    if complete {
        plan.cleanup(&olds).await?;
    }
    if let Some(new) = &new {
        plan.mirror_revision(new).await?;
    }
    let status = plan.status(new.as_ref(), &olds, created, complete);
    shared::write_status(
        &Api::<Deployment>::namespaced(ctx.client.clone(), &namespace),
        &name,
        deployment.status.as_ref(),
        &status,
    )
    .await
    .map_err(|source| Error::Status {
        namespace: namespace.clone(),
        name: name.clone(),
        source,
    })?;
    match (complete, paused) {
        (true, _) | (false, true) => Ok(Action::await_change()),
        // An unfinished rollout is looked at again to notice its deadline passing.
        (false, false) => Ok(Action::requeue(PROGRESS_CHECK)),
    }
}

enum Created {
    Made(Box<ReplicaSet>),
    /// A ReplicaSet of that name exists with another template: the hash must change.
    Collision,
}

fn strategy(deployment: &Deployment, desired: i32) -> Strategy {
    let strategy = deployment.spec.as_ref().and_then(|s| s.strategy.as_ref());
    match strategy.and_then(|s| s.type_.as_deref()) {
        Some("Recreate") => Strategy::Recreate,
        _ => {
            let rolling = strategy.and_then(|s| s.rolling_update.as_ref());
            let max_surge =
                shared::scaled_value(rolling.and_then(|r| r.max_surge.as_ref()), desired, true);
            let max_unavailable = shared::scaled_value(
                rolling.and_then(|r| r.max_unavailable.as_ref()),
                desired,
                false,
            );
            // Both zero would make no progress possible; upstream allows one unavailable.
            let max_unavailable = if max_surge == 0 && max_unavailable == 0 {
                1
            } else {
                max_unavailable
            };
            Strategy::RollingUpdate {
                max_surge,
                max_unavailable,
            }
        }
    }
}

/// The revision a ReplicaSet carries, 0 if none.
pub fn revision(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

/// A template with the `pod-template-hash` label set aside.
fn without_hash(template: &PodTemplateSpec) -> PodTemplateSpec {
    let mut template = template.clone();
    if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(TEMPLATE_HASH);
    }
    template
}

fn same_template(rs: &ReplicaSet, template: &PodTemplateSpec) -> bool {
    rs.spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .is_some_and(|t| without_hash(t) == without_hash(template))
}

fn rollout_complete(desired: i32, new: &ReplicaSet, olds: &[ReplicaSet]) -> bool {
    let status = new.status.as_ref();
    let new_replicas = status.map(|s| s.replicas).unwrap_or(0);
    let new_available = available(new);
    let old_pods: i32 = olds
        .iter()
        .map(|rs| rs.status.as_ref().map(|s| s.replicas).unwrap_or(0))
        .sum();
    replicas(new) == desired
        && new_replicas == desired
        && new_available >= desired
        && old_pods == 0
        && olds.iter().all(|rs| replicas(rs) == 0)
}

impl Plan<'_> {
    fn max_replicas(&self) -> i32 {
        match self.strategy {
            Strategy::Recreate => self.desired,
            Strategy::RollingUpdate { max_surge, .. } => self.desired + max_surge,
        }
    }

    fn replicaset_error(&self, rs: &str) -> impl FnOnce(kube::Error) -> Error {
        let (namespace, replicaset) = (self.namespace.clone(), rs.to_string());
        move |source| Error::UpdateReplicaSet {
            namespace,
            replicaset,
            source,
        }
    }

    /// Creates the ReplicaSet for `template`, or finds that it exists.
    async fn create_new(
        &self,
        ctx: &Context,
        template: &PodTemplateSpec,
        olds: &[ReplicaSet],
    ) -> Result<Created, Error> {
        let spec = self.deployment.spec.as_ref();
        let collision_count = self
            .deployment
            .status
            .as_ref()
            .and_then(|s| s.collision_count);
        let hash = shared::template_hash(template, collision_count);
        let rs_name = format!("{}-{}", self.name, hash);
        let mut template = template.clone();
        let template_meta = template.metadata.get_or_insert_with(ObjectMeta::default);
        template_meta
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(TEMPLATE_HASH.into(), hash.clone());
        let labels = template_meta.labels.clone();
        let mut selector: LabelSelector = spec.map(|s| s.selector.clone()).unwrap_or_default();
        selector
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(TEMPLATE_HASH.into(), hash.clone());
        let next_revision = olds.iter().map(revision).max().unwrap_or(0) + 1;
        let mut annotations: BTreeMap<String, String> = self
            .deployment
            .annotations()
            .iter()
            .filter(|(k, _)| !NOT_COPIED.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        annotations.insert(REVISION.into(), next_revision.to_string());
        annotations.insert(DESIRED_REPLICAS.into(), self.desired.to_string());
        annotations.insert(MAX_REPLICAS.into(), self.max_replicas().to_string());
        let all_replicas: i32 = olds.iter().map(replicas).sum();
        let size = match self.strategy {
            // Recreate starts the new ReplicaSet empty and fills it once the old pods are gone.
            Strategy::Recreate => 0,
            Strategy::RollingUpdate { .. } => {
                scale_up_to(self.desired, self.max_replicas(), all_replicas, 0)
            }
        };
        let Some(owner) = shared::controller_ref(self.deployment) else {
            return Ok(Created::Collision);
        };
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(rs_name.clone()),
                namespace: Some(self.namespace.clone()),
                labels,
                annotations: Some(annotations),
                owner_references: Some(vec![owner]),
                ..ObjectMeta::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(size),
                min_ready_seconds: spec.and_then(|s| s.min_ready_seconds),
                selector,
                template: Some(template),
            }),
            status: None,
        };
        let made = shared::create_idempotent(&self.api, &rs)
            .await
            .map_err(|source| Error::CreateReplicaSet {
                namespace: self.namespace.clone(),
                replicaset: rs_name.clone(),
                source,
            })?;
        match made {
            Some(made) => {
                ctx.event(
                    self.deployment,
                    false,
                    "ScalingReplicaSet",
                    format!("Scaled up replica set {rs_name} from 0 to {size}"),
                )
                .await;
                Ok(Created::Made(Box::new(made)))
            }
            None => {
                // It exists: ours and of this template (an earlier pass made it) or a clash.
                let existing = self
                    .api
                    .get_opt(&rs_name)
                    .await
                    .map_err(self.replicaset_error(&rs_name))?;
                let uid = self.deployment.meta().uid.clone().unwrap_or_default();
                match existing {
                    Some(rs)
                        if shared::controlled_by(&rs.metadata, &uid)
                            && same_template(&rs, template_ref(self.deployment)) =>
                    {
                        Ok(Created::Made(Box::new(rs)))
                    }
                    Some(_) => Ok(Created::Collision),
                    // Deleted in between; the next pass creates it again.
                    None => Ok(Created::Collision),
                }
            }
        }
    }

    async fn bump_collision_count(&self) -> Result<Action, Error> {
        let count = self
            .deployment
            .status
            .as_ref()
            .and_then(|s| s.collision_count)
            .unwrap_or(0)
            .saturating_add(1);
        let api: Api<Deployment> = Api::namespaced(self.api.clone().into_client(), &self.namespace);
        api.patch_status(
            &self.name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "collisionCount": count } })),
        )
        .await
        .map_err(|source| Error::Status {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source,
        })?;
        Ok(Action::requeue(Duration::from_millis(200)))
    }

    /// Makes sure the new ReplicaSet carries the highest revision, and records the revision it
    /// had before if it is being reused.
    async fn ensure_revision(
        &self,
        ctx: &Context,
        rs: ReplicaSet,
        olds: &[ReplicaSet],
    ) -> Result<ReplicaSet, Error> {
        let highest_old = olds.iter().map(revision).max().unwrap_or(0);
        let current = revision(&rs);
        if current > highest_old {
            return Ok(rs);
        }
        let mut history: Vec<String> = rs
            .annotations()
            .get(REVISION_HISTORY)
            .map(|h| h.split(',').map(String::from).collect())
            .unwrap_or_default();
        if current > 0 {
            history.push(current.to_string());
        }
        let next = highest_old + 1;
        let rs_name = rs.name_any();
        let patch = json!({ "metadata": { "annotations": {
            REVISION: next.to_string(),
            REVISION_HISTORY: if history.is_empty() { None } else { Some(history.join(",")) },
        }}});
        let updated = self
            .api
            .patch(&rs_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(self.replicaset_error(&rs_name))?;
        if current > 0 {
            ctx.event(
                self.deployment,
                false,
                "DeploymentRollback",
                format!("Rolled back deployment {} to revision {current}", self.name),
            )
            .await;
        }
        Ok(updated)
    }

    /// Sets a ReplicaSet's size (and the size annotations upstream keeps on it).
    async fn scale(&self, ctx: &Context, rs: &mut ReplicaSet, size: i32) -> Result<(), Error> {
        let from = replicas(rs);
        let annotations = rs.annotations();
        let annotations_current = annotations.get(DESIRED_REPLICAS)
            == Some(&self.desired.to_string())
            && annotations.get(MAX_REPLICAS) == Some(&self.max_replicas().to_string());
        if from == size && annotations_current {
            return Ok(());
        }
        let rs_name = rs.name_any();
        let patch = json!({
            "metadata": { "annotations": {
                DESIRED_REPLICAS: self.desired.to_string(),
                MAX_REPLICAS: self.max_replicas().to_string(),
            }},
            "spec": { "replicas": size },
        });
        *rs = self
            .api
            .patch(&rs_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(self.replicaset_error(&rs_name))?;
        if from != size {
            let direction = if size > from { "up" } else { "down" };
            ctx.event(
                self.deployment,
                false,
                "ScalingReplicaSet",
                format!("Scaled {direction} replica set {rs_name} from {from} to {size}"),
            )
            .await;
        }
        Ok(())
    }

    /// One step of a rolling update.
    async fn roll(
        &self,
        ctx: &Context,
        olds: &mut [ReplicaSet],
        new: &mut ReplicaSet,
    ) -> Result<(), Error> {
        let Strategy::RollingUpdate {
            max_unavailable, ..
        } = self.strategy
        else {
            return Ok(());
        };
        // Scale the new ReplicaSet up (or down, if the Deployment shrank).
        let all_replicas: i32 = olds.iter().map(replicas).sum::<i32>() + replicas(new);
        let target = match replicas(new).cmp(&self.desired) {
            std::cmp::Ordering::Greater => self.desired,
            std::cmp::Ordering::Equal => self.desired,
            std::cmp::Ordering::Less => scale_up_to(
                self.desired,
                self.max_replicas(),
                all_replicas,
                replicas(new),
            ),
        };
        self.scale(ctx, new, target).await?;

        // Scale the old ones down, as far as availability allows.
        let old_replicas: i32 = olds.iter().map(replicas).sum();
        if old_replicas == 0 {
            return Ok(());
        }
        let all_replicas = old_replicas + replicas(new);
        let min_available = self.desired - max_unavailable;
        let new_unavailable = (replicas(new) - available(new)).max(0);
        let budget = all_replicas - min_available - new_unavailable;
        if budget <= 0 {
            return Ok(());
        }
        // First the old pods that are not available anyway: removing them costs nothing.
        let mut cleaned = 0;
        for rs in olds.iter_mut() {
            let unhealthy = (replicas(rs) - available(rs)).max(0);
            let take = unhealthy.min(budget - cleaned);
            if take <= 0 {
                continue;
            }
            let size = replicas(rs) - take;
            self.scale(ctx, rs, size).await?;
            cleaned += take;
        }
        // Then available ones, keeping `min_available`.
        let available_now: i32 = olds.iter().map(available).sum::<i32>() + available(new);
        let mut room = (available_now - min_available).min(budget - cleaned);
        for rs in olds.iter_mut() {
            if room <= 0 {
                break;
            }
            let take = replicas(rs).min(room);
            if take <= 0 {
                continue;
            }
            let size = replicas(rs) - take;
            self.scale(ctx, rs, size).await?;
            room -= take;
        }
        Ok(())
    }

    /// One step of a Recreate rollout.
    async fn recreate(
        &self,
        ctx: &Context,
        olds: &mut [ReplicaSet],
        new: &mut ReplicaSet,
    ) -> Result<(), Error> {
        for rs in olds.iter_mut() {
            self.scale(ctx, rs, 0).await?;
        }
        let old_pods_left = olds
            .iter()
            .any(|rs| rs.status.as_ref().is_some_and(|s| s.replicas > 0));
        match old_pods_left {
            // Recreate promises no overlap: wait for the old pods to go (their ReplicaSets'
            // status changes wake us).
            true => Ok(()),
            false => self.scale(ctx, new, self.desired).await,
        }
    }

    /// Deletes the oldest empty ReplicaSets beyond the history limit.
    async fn cleanup(&self, olds: &[ReplicaSet]) -> Result<(), Error> {
        let limit = self
            .deployment
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10)
            .max(0);
        let mut empty: Vec<&ReplicaSet> = olds
            .iter()
            .filter(|rs| {
                replicas(rs) == 0
                    && rs.status.as_ref().is_none_or(|s| s.replicas == 0)
                    && rs.metadata.deletion_timestamp.is_none()
            })
            .collect();
        empty.sort_by_key(|rs| revision(rs));
        let surplus = empty
            .len()
            .saturating_sub(usize::try_from(limit).unwrap_or(0));
        for rs in empty.into_iter().take(surplus) {
            let rs_name = rs.name_any();
            shared::delete_idempotent(&self.api, &rs_name)
                .await
                .map_err(|source| Error::DeleteReplicaSet {
                    namespace: self.namespace.clone(),
                    replicaset: rs_name.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Copies the new ReplicaSet's revision to the Deployment's annotations.
    async fn mirror_revision(&self, new: &ReplicaSet) -> Result<(), Error> {
        let Some(rev) = new.annotations().get(REVISION) else {
            return Ok(());
        };
        if self.deployment.annotations().get(REVISION) == Some(rev) {
            return Ok(());
        }
        let api: Api<Deployment> = Api::namespaced(self.api.clone().into_client(), &self.namespace);
        let patch = json!({ "metadata": { "annotations": { REVISION: rev } } });
        match api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            // Deleted meanwhile: nothing left to annotate.
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(source) => Err(Error::Annotate {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                source,
            }),
        }
    }

    fn status(
        &self,
        new: Option<&ReplicaSet>,
        olds: &[ReplicaSet],
        created: bool,
        complete: bool,
    ) -> DeploymentStatus {
        let all: Vec<&ReplicaSet> = olds.iter().chain(new).collect();
        let sum = |f: &dyn Fn(&ReplicaSet) -> i32| -> i32 { all.iter().map(|rs| f(rs)).sum() };
        let pods = |rs: &ReplicaSet| rs.status.as_ref().map(|s| s.replicas).unwrap_or(0);
        let ready = |rs: &ReplicaSet| {
            rs.status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0)
        };
        let available_total = sum(&available);
        let previous = self.deployment.status.as_ref();
        let mut status = DeploymentStatus {
            observed_generation: self.deployment.metadata.generation,
            replicas: Some(sum(&pods)),
            updated_replicas: Some(new.map(pods).unwrap_or(0)),
            ready_replicas: Some(sum(&ready)),
            available_replicas: Some(available_total),
            unavailable_replicas: Some((self.desired - available_total).max(0)),
            collision_count: previous.and_then(|s| s.collision_count),
            conditions: previous.and_then(|s| s.conditions.clone()),
            terminating_replicas: None,
        };
        // Zero counts are left out, as upstream's status omits them.
        for field in [
            &mut status.replicas,
            &mut status.updated_replicas,
            &mut status.ready_replicas,
            &mut status.available_replicas,
            &mut status.unavailable_replicas,
        ] {
            if *field == Some(0) {
                *field = None;
            }
        }
        let max_unavailable = match self.strategy {
            Strategy::Recreate => 0,
            Strategy::RollingUpdate {
                max_unavailable, ..
            } => max_unavailable,
        };
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        let available_condition = if available_total >= self.desired - max_unavailable {
            (
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".to_string(),
            )
        } else {
            (
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".to_string(),
            )
        };
        set_condition(conditions, "Available", available_condition, false);

        let paused = self.deployment.spec.as_ref().and_then(|s| s.paused) == Some(true);
        let was_paused = conditions
            .iter()
            .any(|c| c.type_ == "Progressing" && c.reason.as_deref() == Some("DeploymentPaused"));
        let new_name = new.map(ResourceExt::name_any).unwrap_or_default();
        let progressed = previous.is_none_or(|p| {
            (
                p.replicas,
                p.updated_replicas,
                p.ready_replicas,
                p.available_replicas,
            ) != (
                status.replicas,
                status.updated_replicas,
                status.ready_replicas,
                status.available_replicas,
            )
        });
        let deadline = self
            .deployment
            .spec
            .as_ref()
            .and_then(|s| s.progress_deadline_seconds);
        let last_progress = conditions
            .iter()
            .find(|c| c.type_ == "Progressing")
            .and_then(|c| c.last_update_time.as_ref())
            .map(|t| t.0);
        let timed_out = match (deadline, last_progress) {
            (Some(seconds), Some(at)) => {
                at + SignedDuration::from_secs(seconds.into()) < Timestamp::now()
            }
            _ => false,
        };
        let progressing = match (paused, was_paused, complete, created, progressed, timed_out) {
            // A paused Deployment's progress is not measured.
            (true, _, _, _, _, _) => Some((
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused".to_string(),
            )),
            // Resuming restarts the progress clock.
            (false, true, false, _, _, _) => Some((
                "Unknown",
                "DeploymentResumed",
                "Deployment is resumed".to_string(),
            )),
            (false, _, true, _, _, _) => Some((
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{new_name}\" has successfully progressed."),
            )),
            (false, _, false, true, _, _) => Some((
                "True",
                "NewReplicaSetCreated",
                format!("Created new replica set \"{new_name}\""),
            )),
            (false, _, false, false, true, _) => Some((
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{new_name}\" is progressing."),
            )),
            (false, _, false, false, false, true) => Some((
                "False",
                "ProgressDeadlineExceeded",
                format!("ReplicaSet \"{new_name}\" has timed out progressing."),
            )),
            // No change: the condition stands as it is.
            (false, _, false, false, false, false) => None,
        };
        if let Some(progressing) = progressing {
            set_condition(
                conditions,
                "Progressing",
                progressing,
                progressed || created,
            );
        }
        // Upstream lists Progressing before Available once both exist.
        conditions.sort_by_key(|c| c.type_ != "Progressing");
        status
    }
}

/// The Deployment's template, for comparisons.
fn template_ref(deployment: &Deployment) -> &PodTemplateSpec {
    static EMPTY: std::sync::OnceLock<PodTemplateSpec> = std::sync::OnceLock::new();
    deployment
        .spec
        .as_ref()
        .map(|s| &s.template)
        .unwrap_or_else(|| EMPTY.get_or_init(PodTemplateSpec::default))
}

/// How big the new ReplicaSet may grow in one step: to `desired`, but keeping the total of all
/// ReplicaSets' sizes within `max_total`.
fn scale_up_to(desired: i32, max_total: i32, all_replicas: i32, current: i32) -> i32 {
    let room = (max_total - all_replicas).max(0);
    current + room.min((desired - current).max(0))
}

/// Sets condition `type_` to `(status, reason, message)`. The transition time moves only
/// when the status changes; the update time when anything changes or `touched`.
fn set_condition(
    conditions: &mut Vec<DeploymentCondition>,
    type_: &str,
    (status, reason, message): (&str, &str, String),
    touched: bool,
) {
    let now = shared::now();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            let changed_status = c.status != status;
            let changed = changed_status
                || c.reason.as_deref() != Some(reason)
                || c.message.as_deref() != Some(message.as_str());
            if changed_status {
                c.last_transition_time = Some(now.clone());
            }
            if changed || touched {
                c.last_update_time = Some(now);
            }
            c.status = status.into();
            c.reason = Some(reason.into());
            c.message = Some(message);
        }
        None => conditions.push(DeploymentCondition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message),
            last_transition_time: Some(now.clone()),
            last_update_time: Some(now),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surge_bounds_the_new_replicaset() {
        // 3 wanted, 25% surge (1): with 3 old pods the new one may start with 1.
        assert_eq!(scale_up_to(3, 4, 3, 0), 1);
        // Already at the bound: no growth.
        assert_eq!(scale_up_to(3, 4, 4, 1), 1);
        // Old ones gone: grow to the full size, not beyond.
        assert_eq!(scale_up_to(3, 4, 1, 1), 3);
        // Scaling a settled Deployment from 3 to 5 with 2 surge.
        assert_eq!(scale_up_to(5, 7, 3, 3), 5);
    }

    #[test]
    fn both_zero_allows_one_unavailable() {
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": { "name": "d" },
            "spec": {
                "selector": {},
                "template": {},
                "strategy": { "type": "RollingUpdate",
                    "rollingUpdate": { "maxSurge": 0, "maxUnavailable": "10%" } }
            }
        }))
        .unwrap_or_default();
        assert_eq!(
            strategy(&deployment, 3),
            Strategy::RollingUpdate {
                max_surge: 0,
                max_unavailable: 1
            }
        );
    }
}
