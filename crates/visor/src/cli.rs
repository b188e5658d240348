//! The command line: `visor server`, `visor up`, `visor bench`.
//!
//! The `server` flags are a contract other tools rely on (`--data-dir`, `--listen`,
//! `--datastore`, and `DATA_DIR/admin.kubeconfig` appearing once the server is ready); change
//! them only compatibly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::bench::BenchCommand;

/// How long leftover tasks get to finish after a command returns.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_millis(500);
use crate::server::{self, ServerOptions};

/// Visor: a Kubernetes-compatible control plane for a virtualization cluster.
#[derive(Debug, Parser)]
#[command(name = "visor", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the Kubernetes API over a store.
    Server {
        /// Where the server keeps its certificates, its SQLite store and admin.kubeconfig.
        #[arg(long)]
        data_dir: PathBuf,
        /// The address to serve HTTPS on (port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:6443")]
        listen: SocketAddr,
        /// `sqlite` (embedded, in the data directory) or `etcd://HOST:PORT[,HOST:PORT...]`.
        #[arg(long, default_value = "sqlite")]
        datastore: String,
        #[command(flatten)]
        security: crate::token::SecurityArgs,
        #[command(flatten)]
        placement: crate::placement::PlacementArgs,
    },
    /// Run Visor on this machine with the embedded store, and print the kubeconfig to use.
    Up {
        /// Data directory [default: $VISOR_DATA_DIR, else ~/.visor].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The address to serve HTTPS on.
        #[arg(long, default_value = "127.0.0.1:6443")]
        listen: SocketAddr,
        /// The local agent's endpoint for logs, exec and port-forward (port 0 picks one).
        #[arg(long, default_value = "127.0.0.1:10250")]
        agent_listen: SocketAddr,
        /// The pods' network on this machine.
        #[arg(long, default_value = "10.88.0.0/24")]
        pod_cidr: String,
        /// The host bridge pods attach to.
        #[arg(long, default_value = "visor0")]
        bridge: String,
        #[command(flatten)]
        security: crate::token::SecurityArgs,
    },
    /// Join this machine to a cluster as a host and run the pods bound to it.
    Agent(crate::agent::AgentArgs),
    /// Manage the host's image cache.
    Image {
        #[command(subcommand)]
        command: crate::agent::ImageCommand,
    },
    /// Runs one container for the OCI runtime (started by the agent, not by users).
    #[command(hide = true)]
    Shim {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Log in to a Visor server and write kubeconfig contexts (also `kubectl visor login`).
    Login(crate::login::LoginArgs),
    /// Remove the kubeconfig entries `visor login` wrote.
    Logout(crate::login::LogoutArgs),
    /// Install `kubectl-visor` (a link to this program) so `kubectl visor …` works.
    InstallPlugin(crate::login::InstallPluginArgs),
    /// Manage Visor's users (admin).
    User(crate::users::UserArgs),
    /// Manage Visor's groups (admin).
    Group(crate::users::GroupArgs),
    /// Manage join tokens for hosts (admin).
    Token(crate::token::TokenArgs),
    /// Measure Visor (see docs/performance.md).
    Bench {
        #[command(subcommand)]
        bench: BenchCommand,
    },
}

/// Parses the command line, runs the command and turns its outcome into an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse_from(crate::login::command_line());
    // The shim daemonizes (forks), which must happen before any runtime threads exist.
    if let Command::Shim { args } = cli.command {
        return ExitCode::from(visor_agent::oci::shim_main(args).clamp(0, 255) as u8);
    }
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(cli.command));
    // Whatever is still running once the command is done (idle connections, background
    // timers) must not hold the process up; everything acknowledged is already durable.
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Server {
            data_dir,
            listen,
            datastore,
            security,
            placement,
        } => {
            server::run(ServerOptions {
                data_dir,
                listen,
                datastore,
                auth: security.auth(),
                audit: security.audit(),
                placement,
            })
            .await
        }
        Command::Up {
            data_dir,
            listen,
            agent_listen,
            pod_cidr,
            bridge,
            security,
        } => {
            let data_dir = match data_dir {
                Some(dir) => dir,
                None => server::default_data_dir()?,
            };
            let local_agent = crate::agent::local_agent(agent_listen, pod_cidr, bridge);
            server::run_with(
                ServerOptions {
                    data_dir,
                    listen,
                    datastore: "sqlite".into(),
                    auth: security.auth(),
                    audit: security.audit(),
                    placement: Default::default(),
                },
                Some(local_agent),
            )
            .await
        }
        Command::Agent(args) => crate::agent::run(args).await,
        Command::Image { command } => crate::agent::image(command).await,
        Command::Shim { .. } => anyhow::bail!("the shim runs before the async runtime starts"),
        Command::Login(args) => crate::login::login(args).await,
        Command::Logout(args) => crate::login::logout(args),
        Command::InstallPlugin(args) => crate::login::install_plugin(args),
        Command::User(args) => crate::users::run_user(args).await,
        Command::Group(args) => crate::users::run_group(args).await,
        Command::Token(args) => crate::token::run(args).await,
        Command::Bench { bench } => crate::bench::run(bench).await,
    }
}

/// Logs go to stderr, so stdout carries only what scripts read (the kubeconfig lines, bench
/// results). `RUST_LOG` overrides the default of `info` for Visor's own crates.
fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(
            "warn,visor=info,visor_apiserver=info,visor_store=info,visor_controllers=info",
        )
    });
    // Colours only on a terminal: logs redirected to a file stay plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn server_flags_keep_their_contract() {
        let cli = Cli::try_parse_from([
            "visor",
            "server",
            "--data-dir",
            "/tmp/d",
            "--listen",
            "127.0.0.1:0",
            "--datastore",
            "etcd://127.0.0.1:2379",
        ])
        .unwrap();
        let Command::Server {
            data_dir,
            listen,
            datastore,
            ..
        } = cli.command
        else {
            panic!("not server")
        };
        assert_eq!(data_dir, PathBuf::from("/tmp/d"));
        assert_eq!(listen.port(), 0);
        assert_eq!(datastore, "etcd://127.0.0.1:2379");
        let cli = Cli::try_parse_from(["visor", "server", "--data-dir", "d"]).unwrap();
        let Command::Server {
            listen, datastore, ..
        } = cli.command
        else {
            panic!("not server")
        };
        assert_eq!(listen, "127.0.0.1:6443".parse().unwrap());
        assert_eq!(datastore, "sqlite");
    }

    #[test]
    fn bench_api_defaults() {
        let cli = Cli::try_parse_from(["visor", "bench", "api", "--kubeconfig", "k"]).unwrap();
        let Command::Bench {
            bench: BenchCommand::Api(args),
        } = cli.command
        else {
            panic!("not bench api")
        };
        assert_eq!(
            (args.connections, args.objects, args.json),
            (1, 1000, false)
        );
    }
}
