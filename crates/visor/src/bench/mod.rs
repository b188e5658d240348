//! `visor bench`: benchmarks that ship with Visor, so every performance promise in
//! `docs/performance.md` can be re-measured with one command.
//!
//! Each benchmark is a subcommand with its own module; they share the report format
//! ([`report`]: a readable table, or with `--json` one JSON object per line), latency statistics
//! ([`stats`]) and the server-side measurements ([`procfs`]).

use clap::Subcommand;

pub mod api;
pub mod auth;
pub mod bare_runc;
pub mod declarative;
pub mod pods;
pub mod procfs;
pub mod report;
pub mod scheduler;
pub mod stats;

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// API server throughput and latency: create, get, list, update, watch and delete of
    /// ConfigMaps, and the server's memory.
    Api(api::ApiArgs),
    /// Server-side apply throughput, and foreground deletion of a Deployment owning many pods.
    Declarative(declarative::DeclarativeArgs),
    /// Authentication plus authorisation per request (login token, 10,000 RoleBindings).
    Auth(auth::AuthArgs),
    /// Pod start latency on a host (create → Running) and the agent's memory.
    Pods(pods::PodsArgs),
    /// Placement in-process: 5,000 hosts, 10,000 pods — basic, node affinity, pod
    /// anti-affinity, zone spread — and the quality of the result.
    Scheduler(scheduler::SchedulerArgs),
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Api(args) => api::run(args).await,
        BenchCommand::Declarative(args) => declarative::run(args).await,
        BenchCommand::Auth(args) => auth::run(args).await,
        BenchCommand::Pods(args) => pods::run(args).await,
        BenchCommand::Scheduler(args) => scheduler::run(args).await,
    }
}
