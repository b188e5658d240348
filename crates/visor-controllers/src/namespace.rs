//! The namespace controller: empties a namespace that is being deleted, then releases it.
//!
//! Flow, for a namespace with a `deletionTimestamp` whose `spec.finalizers` still holds
//! `kubernetes`:
//! 1. discover every namespaced resource that supports `deletecollection`;
//! 2. delete each collection in the namespace;
//! 3. if anything remains (objects with finalizers, pods still terminating), record it in the
//!    namespace's conditions and look again shortly;
//! 4. once nothing remains, remove `kubernetes` from `spec.finalizers` through the `finalize`
//!    subresource, which lets the server delete the namespace.
//!
//! Guarantees: the namespace is never released while an object in it is still visible.
//! The reconciler is idempotent: running it again after any step repeats no harm.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::discovery::{Discovery, Scope, verbs};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::ERROR_REQUEUE;

/// The finalizer the server puts on every namespace.
const FINALIZER: &str = "kubernetes";
/// How soon to look again while content is still draining.
const CONTENT_REQUEUE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("discovering resources: {0}")]
    Discovery(#[source] kube::Error),
    #[error("deleting {resource} in namespace {namespace}: {source}")]
    DeleteContent {
        resource: String,
        namespace: String,
        source: kube::Error,
    },
    #[error("listing {resource} in namespace {namespace}: {source}")]
    ListContent {
        resource: String,
        namespace: String,
        source: kube::Error,
    },
    #[error("releasing namespace {namespace}: {source}")]
    Finalize {
        namespace: String,
        source: kube::Error,
    },
    #[error("updating the status of namespace {namespace}: {source}")]
    Status {
        namespace: String,
        source: kube::Error,
    },
}

struct Context {
    client: Client,
}

/// Runs the controller until its watch ends.
pub async fn run(client: Client) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    Controller::new(namespaces, watcher::Config::default())
        .run(reconcile, error_policy, Arc::new(Context { client }))
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "namespace reconcile");
            }
        })
        .await;
}

fn error_policy(_: Arc<Namespace>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(%error, "namespace cleanup failed; retrying");
    Action::requeue(ERROR_REQUEUE)
}

async fn reconcile(namespace: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, Error> {
    let holds_finalizer = namespace
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.as_ref())
        .is_some_and(|f| f.iter().any(|x| x == FINALIZER));
    match (
        namespace.metadata.deletion_timestamp.is_some(),
        holds_finalizer,
    ) {
        // Live namespace: nothing to do until it is deleted.
        (false, _) => Ok(Action::await_change()),
        // Already released by us; the server removes it once other finalizers are gone.
        (true, false) => Ok(Action::await_change()),
        // Being deleted and still ours to empty.
        (true, true) => drain(&namespace, &ctx.client).await,
    }
}

async fn drain(namespace: &Namespace, client: &Client) -> Result<Action, Error> {
    let name = namespace.name_any();
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .map_err(Error::Discovery)?;
    let mut remaining: Vec<String> = Vec::new();
    for group in discovery.groups() {
        for (resource, caps) in group.recommended_resources() {
            if caps.scope != Scope::Namespaced || !caps.supports_operation(verbs::LIST) {
                continue;
            }
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &name, &resource);
            if caps.supports_operation(verbs::DELETE_COLLECTION) {
                api.delete_collection(&DeleteParams::background(), &ListParams::default())
                    .await
                    .map_err(|source| Error::DeleteContent {
                        resource: resource.plural.clone(),
                        namespace: name.clone(),
                        source,
                    })?;
            }
            let left = api
                .list_metadata(&ListParams::default())
                .await
                .map_err(|source| Error::ListContent {
                    resource: resource.plural.clone(),
                    namespace: name.clone(),
                    source,
                })?;
            if !left.items.is_empty() {
                remaining.push(format!(
                    "{}.{} has {} resource instances",
                    resource.plural,
                    resource.group,
                    left.items.len()
                ));
            }
        }
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if !remaining.is_empty() {
        remaining.sort();
        let condition = json!({
            "type": "NamespaceContentRemaining",
            "status": "True",
            "reason": "SomeResourcesRemain",
            "message": format!("Some resources are remaining: {}", remaining.join(", ")),
            "lastTransitionTime": now(),
        });
        let status = json!({ "status": { "phase": "Terminating", "conditions": [condition] } });
        namespaces
            .patch_status(
                &name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&status),
            )
            .await
            .map_err(|source| Error::Status {
                namespace: name.clone(),
                source,
            })?;
        return Ok(Action::requeue(CONTENT_REQUEUE));
    }
    let mut released = namespace.clone();
    if let Some(spec) = released.spec.as_mut() {
        spec.finalizers = spec
            .finalizers
            .take()
            .map(|f| f.into_iter().filter(|x| x != FINALIZER).collect());
    }
    match namespaces
        .replace_subresource("finalize", &name, &PostParams::default(), &released)
        .await
    {
        Ok(_) => {}
        // Someone else released it first, or it is already gone.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {
            return Ok(Action::requeue(CONTENT_REQUEUE));
        }
        Err(source) => {
            return Err(Error::Finalize {
                namespace: name,
                source,
            });
        }
    }
    tracing::info!(namespace = %name, "namespace emptied and released");
    Ok(Action::await_change())
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}
