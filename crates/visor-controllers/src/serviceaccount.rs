//! The service account controller: every namespace has a ServiceAccount named `default`.
//!
//! Flow: for each namespace that is not being deleted, create `default` if it does not exist.
//! Deleting the ServiceAccount wakes the namespace's reconcile (through a watch on
//! ServiceAccounts named `default`), which creates it again.
//!
//! Guarantees: idempotent; creating an account that already exists is success.
//! Caveats: token Secrets are not created (upstream stopped doing so in 1.24 as well).

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use crate::ERROR_REQUEUE;
use crate::shared;

const DEFAULT: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("creating the default service account in namespace {namespace}: {source}")]
    Create {
        namespace: String,
        source: kube::Error,
    },
}

struct Context {
    client: Client,
}

/// Runs the controller until its watches end.
pub async fn run(client: Client) {
    let accounts = watcher::Config::default().fields(&format!("metadata.name={DEFAULT}"));
    Controller::new(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<ServiceAccount>::all(client.clone()),
        accounts,
        |sa: ServiceAccount| sa.namespace().map(|ns| ObjectRef::<Namespace>::new(&ns)),
    )
    .run(reconcile, error_policy, Arc::new(Context { client }))
    .for_each(|result| async move {
        if let Err(error) = result {
            tracing::debug!(%error, "service account reconcile");
        }
    })
    .await;
}

fn error_policy(_: Arc<Namespace>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(%error, "default service account; retrying");
    Action::requeue(ERROR_REQUEUE)
}

async fn reconcile(namespace: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = namespace.name_any();
    if namespace.metadata.deletion_timestamp.is_some() {
        // A terminating namespace refuses new objects; its accounts are going anyway.
        return Ok(Action::await_change());
    }
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &name);
    let account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(DEFAULT.into()),
            namespace: Some(name.clone()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    match shared::create_idempotent(&api, &account).await {
        Ok(_) => Ok(Action::await_change()),
        // The namespace began terminating (or vanished) after we saw it.
        Err(e) if shared::namespace_terminating(&e) => Ok(Action::await_change()),
        Err(source) => Err(Error::Create {
            namespace: name,
            source,
        }),
    }
}
