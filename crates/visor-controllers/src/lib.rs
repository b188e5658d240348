//! Visor's controllers. Each is a reconciler built on `kube`'s runtime and talks to the server
//! only through the public API, so it runs the same in-process, remotely or against a test
//! server.
//!
//! - [`namespace`] empties and releases terminating namespaces;
//! - [`gc`] is the garbage collector: it deletes dependents whose owners are gone, and carries
//!   out foreground and orphan deletion;
//! - [`deployment`], [`replicaset`], [`daemonset`], [`statefulset`], [`job`] and [`cronjob`]
//!   run workloads;
//! - [`serviceaccount`] gives every namespace its `default` ServiceAccount;
//! - [`quota`] recounts ResourceQuota usage; [`tenancy`] makes SupervisorNamespaces and
//!   NamespaceRequests real.
//! - [`disruption`] keeps PodDisruptionBudget status; [`nodelifecycle`] marks hosts that stop
//!   heartbeating and moves their pods away; [`zone`] keeps Zones; [`balancer`] evens out
//!   host load (the last three take the server's placement settings, see [`run_placement`]).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use kube::Client;

use crate::informers::Informers;

pub mod balancer;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod gc;
pub mod informers;
pub mod job;
mod lean_meta;
pub mod namespace;
pub mod nodelifecycle;
pub mod quota;
pub mod replicaset;
pub mod serviceaccount;
mod shared;
pub mod statefulset;
pub mod tenancy;
pub mod zone;

/// Runs every controller until `shutdown` resolves. A controller whose watches end is logged;
/// the others go on.
pub async fn run(client: Client, shutdown: impl Future<Output = ()> + Send + 'static) {
    type Running = Pin<Box<dyn Future<Output = &'static str> + Send>>;
    fn named(name: &'static str, f: impl Future<Output = ()> + Send + 'static) -> Running {
        Box::pin(async move {
            f.await;
            name
        })
    }
    let informers = Informers::new();
    let controllers: Vec<Running> = vec![
        named("namespace", namespace::run(client.clone())),
        named("garbage collector", gc::run(client.clone())),
        named("deployment", deployment::run(client.clone())),
        named(
            "replicaset",
            replicaset::run(client.clone(), informers.clone()),
        ),
        named(
            "daemonset",
            daemonset::run(client.clone(), informers.clone()),
        ),
        named(
            "statefulset",
            statefulset::run(client.clone(), informers.clone()),
        ),
        named("job", job::run(client.clone(), informers.clone())),
        named("cronjob", cronjob::run(client.clone())),
        named("serviceaccount", serviceaccount::run(client.clone())),
        named("quota", quota::run(client.clone(), informers.clone())),
        named(
            "disruption",
            disruption::run(client.clone(), informers.clone()),
        ),
        named("tenancy", tenancy::run(client)),
    ];
    let all = async move {
        let mut running = controllers;
        while !running.is_empty() {
            let (name, _, rest) = futures::future::select_all(running).await;
            tracing::error!(controller = name, "controller stopped");
            running = rest;
        }
    };
    tokio::select! {
        _ = shutdown => {}
        _ = all => {}
    }
}

/// The wait before retrying a reconcile that failed.
pub(crate) const ERROR_REQUEUE: Duration = Duration::from_secs(2);

/// Runs the controllers that need the server's placement settings — node lifecycle, zones and
/// the balancer — until the task is dropped.
pub async fn run_placement(
    client: Client,
    lifecycle: nodelifecycle::Config,
    balancing: balancer::Config,
) {
    let informers = Informers::new();
    tokio::join!(
        nodelifecycle::run(client.clone(), lifecycle, informers.clone()),
        zone::run(client.clone(), informers.clone()),
        balancer::run(client, balancing, informers.clone()),
    );
}
