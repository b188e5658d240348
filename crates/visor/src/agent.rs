//! The host-side commands: `visor agent`, `visor up`'s local agent, and the hidden
//! `visor shim` the OCI runtime starts per container.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use visor_agent::agent::{AgentConfig, RuntimeKind};

/// The runtime flag's values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RuntimeFlag {
    /// OCI containers through runc.
    Oci,
    /// Simulated hosts: register and heartbeat, run nothing (scale testing only).
    Sim,
}

/// `visor agent`: join this machine to a cluster as a host.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The API server's URL.
    #[arg(long)]
    pub server: String,
    /// A join token (`DATA_DIR/agent-token` on the server, or `visor token create`). Not
    /// needed once the host has joined.
    #[arg(long, env = "VISOR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The cluster CA to trust; without it the CA from the first join is trusted and pinned.
    #[arg(long)]
    pub certificate_authority: Option<PathBuf>,
    /// The host's name [default: the machine's hostname].
    #[arg(long)]
    pub name: Option<String>,
    /// The zone the host belongs to (`topology.kubernetes.io/zone`).
    #[arg(long)]
    pub zone: Option<String>,
    /// Where the agent keeps its credentials, images, pods and logs.
    #[arg(long)]
    pub data_dir: PathBuf,
    #[arg(long, value_enum, default_value = "oci")]
    pub runtime: RuntimeFlag,
    /// How many simulated hosts this process runs (`--runtime sim`).
    #[arg(long, default_value_t = 1)]
    pub count: u32,
    /// The agent's HTTPS endpoint for logs, exec and port-forward (port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:10250")]
    pub listen: SocketAddr,
    /// The address the API server reaches this host at [default: the listen address].
    #[arg(long)]
    pub node_ip: Option<String>,
    /// The pods' network on this host (each host of a cluster needs its own); simulated hosts
    /// share it out between them [default: 10.88.0.0/24, or 10.64.0.0/10 with --runtime sim].
    #[arg(long)]
    pub pod_cidr: Option<String>,
    /// The host bridge pods attach to.
    #[arg(long, default_value = "visor0")]
    pub bridge: String,
    #[arg(long, default_value_t = 110)]
    pub max_pods: u32,
    /// The most processes one container may run.
    #[arg(long, default_value_t = 4096)]
    pub pod_pids_limit: i64,
    /// Seconds between heartbeat Lease renewals.
    #[arg(long, default_value_t = 10)]
    pub lease_interval: u64,
    /// Registries reached over plain HTTP (host:port).
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// Simulated hosts only: act through this kubeconfig instead of joining each host (as
    /// kwok does), so thousands of hosts need no certificates of their own.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// CPUs of each simulated host.
    #[arg(long, default_value = "32")]
    pub sim_cpu: String,
    /// Memory of each simulated host.
    #[arg(long, default_value = "128Gi")]
    pub sim_memory: String,
}

impl AgentArgs {
    fn config(self) -> anyhow::Result<AgentConfig> {
        let name = match self.name {
            Some(name) => name,
            None => hostname()?,
        };
        let lease_interval = Duration::from_secs(self.lease_interval.max(1));
        Ok(AgentConfig {
            server: self.server,
            token: self.token,
            certificate_authority: self.certificate_authority,
            name,
            zone: self.zone,
            data_dir: self.data_dir,
            runtime: match self.runtime {
                RuntimeFlag::Oci => RuntimeKind::Oci,
                RuntimeFlag::Sim => RuntimeKind::Sim,
            },
            count: self.count,
            listen: self.listen,
            node_ip: self.node_ip,
            pod_cidr: self.pod_cidr.unwrap_or_else(|| {
                match self.runtime {
                    RuntimeFlag::Oci => "10.88.0.0/24",
                    RuntimeFlag::Sim => "10.64.0.0/10",
                }
                .to_string()
            }),
            bridge: self.bridge,
            max_pods: self.max_pods,
            pod_pids_limit: Some(self.pod_pids_limit),
            lease_interval,
            status_interval: if self.runtime == RuntimeFlag::Sim {
                Duration::from_secs(60)
            } else {
                lease_interval
            },
            insecure_registries: self.insecure_registries,
            kubeconfig: self.kubeconfig,
            sim_capacity: BTreeMap::from([
                ("cpu".into(), self.sim_cpu),
                ("memory".into(), self.sim_memory),
                ("pods".into(), self.max_pods.to_string()),
                ("ephemeral-storage".into(), "100Gi".into()),
            ]),
        })
    }
}

/// The machine's hostname, lower-cased as node names must be.
fn hostname() -> anyhow::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("reading the hostname; pass --name")?;
    Ok(name.trim().to_ascii_lowercase())
}

/// Runs `visor agent` until SIGTERM or SIGINT.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    visor_agent::agent::run(config, crate::server::termination()).await
}

/// `visor up`'s local agent: joins the server it runs beside with the server's own join
/// token and CA, keeping its state in `SERVER_DATA_DIR/agent`.
pub fn local_agent(
    listen: SocketAddr,
    pod_cidr: String,
    bridge: String,
) -> crate::server::Companion {
    Box::new(move |url: String, data_dir: PathBuf| {
        Box::pin(async move {
            let token = read_token(&data_dir)?;
            let args = AgentArgs {
                server: url,
                token: Some(token),
                certificate_authority: Some(data_dir.join("pki").join("ca.crt")),
                name: None,
                zone: None,
                data_dir: data_dir.join("agent"),
                runtime: RuntimeFlag::Oci,
                count: 1,
                listen,
                node_ip: None,
                pod_cidr: Some(pod_cidr),
                bridge,
                max_pods: 110,
                pod_pids_limit: 4096,
                lease_interval: 10,
                insecure_registries: Vec::new(),
                kubeconfig: None,
                sim_cpu: String::new(),
                sim_memory: String::new(),
            };
            let config = args.config()?;
            visor_agent::agent::run(config, std::future::pending()).await
        })
    })
}

fn read_token(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("agent-token");
    Ok(std::fs::read_to_string(&path)
        .with_context(|| format!("reading the join token {}", path.display()))?
        .trim()
        .to_string())
}

/// `visor image …`: the host's image cache.
#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// Import an OCI image layout (directory or tar) or a `docker save` archive.
    Import {
        file: PathBuf,
        /// Also tag the image with this reference.
        #[arg(long)]
        tag: Option<String>,
        /// The agent's data directory [default: `visor up`'s agent, ~/.visor/agent].
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// List the cached images.
    #[command(alias = "ls")]
    List {
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Untag an image, deleting it once no tag is left.
    #[command(alias = "rm")]
    Remove {
        reference: String,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

/// Runs an image command on a blocking thread (it is plain filesystem work).
pub async fn image(command: ImageCommand) -> anyhow::Result<()> {
    let agent_dir = |dir: Option<PathBuf>| -> anyhow::Result<PathBuf> {
        match dir {
            Some(dir) => Ok(dir),
            None => Ok(crate::server::default_data_dir()?.join("agent")),
        }
    };
    let work = match command {
        ImageCommand::Import {
            file,
            tag,
            data_dir,
        } => {
            let dir = agent_dir(data_dir)?;
            tokio::task::spawn_blocking(move || visor_images::import_command(&file, &dir, tag))
        }
        ImageCommand::List { data_dir } => {
            let dir = agent_dir(data_dir)?;
            tokio::task::spawn_blocking(move || visor_images::list(&dir))
        }
        ImageCommand::Remove {
            reference,
            data_dir,
        } => {
            let dir = agent_dir(data_dir)?;
            tokio::task::spawn_blocking(move || visor_images::remove_command(&reference, &dir))
        }
    };
    work.await.context("the image command panicked")?
}
