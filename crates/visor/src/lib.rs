//! The `visor` binary's parts, as a library so the end-to-end tests can reuse its client.
//!
//! - [`cli`]: the command line, one subcommand per role;
//! - [`server`]: `visor server` and `visor up`;
//! - [`kubeconfig`]: writing and reading kubeconfig files;
//! - [`controllers`]: the in-process controllers, connected as API clients;
//! - [`client`]: a minimal HTTPS client for the Kubernetes API (benchmarks and tests);
//! - [`bench`]: `visor bench`.

pub mod bench;
pub mod cli;
pub mod client;
pub mod controllers;
pub mod kubeconfig;
pub mod server;
