//! `visor bench`: benchmarks that ship with Visor, so every performance promise in
//! `docs/performance.md` can be re-measured with one command.
//!
//! Each benchmark is a subcommand with its own module; they share the report format
//! ([`report`]: a readable table, or with `--json` one JSON object per line), latency statistics
//! ([`stats`]) and the server-side measurements ([`procfs`]).

use clap::Subcommand;

pub mod api;
pub mod declarative;
pub mod procfs;
pub mod report;
pub mod stats;

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// API server throughput and latency: create, get, list, update, watch and delete of
    /// ConfigMaps, and the server's memory.
    Api(api::ApiArgs),
    /// Server-side apply throughput, and foreground deletion of a Deployment owning many pods.
    Declarative(declarative::DeclarativeArgs),
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Api(args) => api::run(args).await,
        BenchCommand::Declarative(args) => declarative::run(args).await,
    }
}
