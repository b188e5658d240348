//! Visor's controllers. Each is a reconciler built on `kube`'s runtime and talks to the server
//! only through the public API, so it runs the same in-process, remotely or against a test
//! server.

use std::time::Duration;

use kube::Client;

pub mod namespace;

/// Runs every controller until `shutdown` resolves.
pub async fn run(client: Client, shutdown: impl std::future::Future<Output = ()> + Send + 'static) {
    let namespaces = namespace::run(client.clone());
    tokio::select! {
        _ = shutdown => {}
        _ = namespaces => tracing::error!("namespace controller stopped"),
    }
}

/// The wait before retrying a reconcile that failed.
pub(crate) const ERROR_REQUEUE: Duration = Duration::from_secs(2);
