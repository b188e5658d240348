//! Starts the controllers inside `visor server`. They are API clients like any other; being in
//! the same process, they reach the server through its in-process transport
//! ([`visor_apiserver::loopback`]) as a user of their own.

use visor_apiserver::RunningServer;

/// The identity the in-process controllers act as (the controller manager's).
pub const CONTROLLER_USER: &str = "system:visor-controller-manager";

/// A client for code inside the server acting as `user`, an administrator.
pub fn in_process_client(server: &RunningServer, user: &str) -> kube::Client {
    kube::Client::new(server.loopback(user, &["system:masters"]), "default")
}

/// Spawns the controllers; they stop when the returned task is aborted.
pub fn spawn(server: &RunningServer) -> tokio::task::JoinHandle<()> {
    tokio::spawn(visor_controllers::run(
        in_process_client(server, CONTROLLER_USER),
        std::future::pending(),
    ))
}
