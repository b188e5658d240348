//! The `visor` binary's parts, as a library so the end-to-end tests can reuse its client.
//!
//! - [`cli`]: the command line, one subcommand per role;
//! - [`server`]: `visor server` and `visor up`;
//! - [`kubeconfig`]: writing and reading kubeconfig files;
//! - [`controllers`]: the in-process controllers, connected as API clients;
//! - [`placement`]: the scheduler and the placement controllers, and their flags;
//! - [`client`]: a minimal HTTPS client for the Kubernetes API (benchmarks and tests);
//! - [`bench`]: `visor bench`;
//! - [`login`], [`users`], [`token`]: `visor login|logout`, user and group administration,
//!   join tokens, and the server's authentication flags.

pub mod agent;
pub mod bench;
pub mod cli;
pub mod client;
pub mod controllers;
pub mod kubeconfig;
pub mod login;
pub mod placement;
pub mod server;
pub mod token;
pub mod users;
