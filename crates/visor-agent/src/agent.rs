//! `visor agent`: one process that makes this machine (or, simulated, many machines) hosts
//! of the cluster.
//!
//! Flow of [`run`] for each host: join (or reuse the host's credentials) → register the Node
//! → serve the agent's HTTPS endpoint → heartbeat and run the bound pods until SIGTERM.
//! Stopping the agent does not stop the pods: a restarted agent adopts them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;

use crate::node::{self, HostNode};
use crate::pods::{self, Directory, Shared};
use crate::runtime::Runtime;

/// Which runtime runs the host's pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeKind {
    Oci,
    Sim,
}

/// Everything `visor agent` is told.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub server: String,
    pub token: Option<String>,
    pub certificate_authority: Option<PathBuf>,
    pub name: String,
    pub zone: Option<String>,
    pub data_dir: PathBuf,
    pub runtime: RuntimeKind,
    /// Simulated hosts to run in this process (`sim` only).
    pub count: u32,
    /// The agent's HTTPS endpoint (logs, exec, port-forward); port 0 picks a free one.
    pub listen: SocketAddr,
    /// The address the API server reaches this host at; defaults to the listen address.
    pub node_ip: Option<String>,
    pub pod_cidr: String,
    pub bridge: String,
    pub max_pods: u32,
    pub pod_pids_limit: Option<i64>,
    pub lease_interval: Duration,
    pub status_interval: Duration,
    pub insecure_registries: Vec<String>,
    /// Capacity of each simulated host.
    pub sim_capacity: BTreeMap<String, String>,
    /// Simulated hosts only: act through this kubeconfig's identity instead of joining each
    /// host (as kwok does), so thousands of hosts need no certificates.
    pub kubeconfig: Option<PathBuf>,
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let data_dir = config.data_dir.canonicalize()?;
    let mut tasks = tokio::task::JoinSet::new();
    match config.runtime {
        RuntimeKind::Oci => {
            anyhow::ensure!(
                config.count <= 1,
                "--count is for simulated hosts (--runtime sim)"
            );
            anyhow::ensure!(
                config.kubeconfig.is_none(),
                "--kubeconfig is for simulated hosts; a real host joins with --token"
            );
            let mut options = crate::oci::OciOptions::new(data_dir.join("oci"));
            options.pod_cidr = config.pod_cidr.clone();
            options.bridge = config.bridge.clone();
            let runtime: Arc<dyn Runtime> = Arc::new(crate::oci::OciRuntime::new(options)?);
            let images =
                crate::images::Images::open(&data_dir.join("images"), &config.insecure_registries)?;
            let host = start_host(
                &config,
                &config.name,
                &data_dir,
                runtime,
                Arc::new(images),
                None,
            )
            .await?;
            let shared = host.shared.clone();
            tasks.spawn(async move {
                tokio::select! {
                    result = host.running => result,
                    result = pods::run(shared) => result,
                }
            });
        }
        RuntimeKind::Sim => {
            let base: ipnet::Ipv4Net = config
                .pod_cidr
                .parse()
                .with_context(|| format!("--pod-cidr {:?} is not an IPv4 CIDR", config.pod_cidr))?;
            let count = config.count.max(1);
            // The CIDR is split evenly between the simulated hosts (at most /30 each); hosts
            // beyond what it holds get no pod addresses.
            let bits = u32::BITS - (count - 1).leading_zeros();
            let prefix =
                (base.prefix_len() as u32 + if count > 1 { bits } else { 0 }).min(30) as u8;
            let subnets: Vec<ipnet::Ipv4Net> = base
                .subnets(prefix.max(base.prefix_len()))
                .map(|s| s.take(count as usize).collect())
                .unwrap_or_default();
            let pool_client = match &config.kubeconfig {
                Some(path) => Some(client_from_kubeconfig(path).await?),
                None => None,
            };
            // Hosts register a few at a time: thousands at once would only queue at the server.
            let starts = (0..count).map(|index| {
                let name = if count == 1 {
                    config.name.clone()
                } else {
                    format!("{}-{index:04}", config.name)
                };
                let mut host_config = config.clone();
                let cidr = subnets.get(index as usize).copied();
                host_config.pod_cidr = cidr.map(|c| c.to_string()).unwrap_or_default();
                let host_dir = if count == 1 {
                    data_dir.clone()
                } else {
                    data_dir.join("hosts").join(&name)
                };
                let pool_client = pool_client.clone();
                async move {
                    let runtime: Arc<dyn Runtime> = Arc::new(crate::sim::SimRuntime::new(cidr));
                    start_host(
                        &host_config,
                        &name,
                        &host_dir,
                        runtime,
                        Arc::new(crate::images::NoImages),
                        pool_client,
                    )
                    .await
                }
            });
            let hosts: Vec<Host> = futures::stream::iter(starts)
                .buffer_unordered(32)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<anyhow::Result<_>>()?;
            let watch_client = hosts
                .first()
                .map(|h| h.shared.client.clone())
                .context("no host started")?;
            let mut by_name = std::collections::HashMap::new();
            for host in hosts {
                by_name.insert(host.shared.node_name.clone(), host.shared.clone());
                tasks.spawn(host.running);
            }
            tasks.spawn(pods::run_hosts(watch_client, by_name));
            tracing::info!(hosts = count, "simulated hosts running");
        }
    }
    tokio::select! {
        _ = shutdown => tracing::info!("agent stopping; pods keep running"),
        Some(result) = tasks.join_next() => {
            result.context("a host task panicked")??;
        }
    }
    tasks.abort_all();
    Ok(())
}

/// A kube client from a kubeconfig file.
async fn client_from_kubeconfig(path: &Path) -> anyhow::Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("reading {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .with_context(|| format!("using {}", path.display()))?;
    Ok(kube::Client::try_from(config)?)
}

/// A registered host: what its pod workers share, and the future that keeps it going
/// (heartbeats and, for real hosts, the endpoint).
struct Host {
    shared: Arc<Shared>,
    running: std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>,
}

/// Joins and registers one host, and returns the future that keeps it going.
async fn start_host(
    config: &AgentConfig,
    name: &str,
    dir: &Path,
    runtime: Arc<dyn Runtime>,
    images: Arc<dyn pods::ImageResolver>,
    pool_client: Option<kube::Client>,
) -> anyhow::Result<Host> {
    std::fs::create_dir_all(dir)?;
    let simulated = runtime.simulated();
    let listener = if simulated {
        None
    } else {
        Some(
            tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("listening on {}", config.listen))?,
        )
    };
    let port = listener
        .as_ref()
        .map(|l| l.local_addr().map(|a| a.port()))
        .transpose()?
        .unwrap_or(0);
    let node_ip = config.node_ip.clone().unwrap_or_else(|| {
        if config.listen.ip().is_unspecified() {
            "127.0.0.1".into()
        } else {
            config.listen.ip().to_string()
        }
    });
    let serving_names = vec![node_ip.clone(), name.to_string()];
    // Simulated hosts of a pool act through the pool's identity and serve no endpoint.
    let (client, credentials) = match pool_client {
        Some(client) => (client, None),
        None => {
            let credentials = crate::join::credentials(&crate::join::JoinOptions {
                server: &config.server,
                token: config.token.as_deref(),
                node_name: name,
                serving_names: &serving_names,
                certificate_authority: config.certificate_authority.as_deref(),
                pki_dir: &dir.join("pki"),
            })
            .await?;
            (
                crate::join::client(&config.server, &credentials)?,
                Some(credentials),
            )
        }
    };
    let capacity = if simulated {
        config.sim_capacity.clone()
    } else {
        node::measure_capacity(dir, config.max_pods)?
    };
    let host = HostNode {
        name: name.to_string(),
        zone: config.zone.clone(),
        internal_ip: node_ip.clone(),
        daemon_port: port,
        pod_cidr: (!config.pod_cidr.is_empty()).then(|| config.pod_cidr.clone()),
        capacity: capacity.clone(),
        runtime_version: runtime.version(),
        os_image: if simulated {
            "Visor simulated host".into()
        } else {
            node::os_image()
        },
        kernel_version: node::kernel_release(),
        simulated,
        extra_labels: BTreeMap::new(),
    };
    let node_uid = node::register(&client, &host).await?;
    tracing::info!(node = name, runtime = runtime.name(), "host registered");

    let directory = Arc::new(Directory::default());
    let shared = Arc::new(Shared {
        client: client.clone(),
        node_name: name.to_string(),
        host_ip: node_ip,
        runtime: runtime.clone(),
        images,
        pods_dir: dir.join("pods"),
        capacity,
        pids_limit: config.pod_pids_limit,
        directory: directory.clone(),
        poll: if simulated {
            Duration::from_secs(30)
        } else {
            Duration::from_secs(1)
        },
        events: (!simulated).then(|| {
            kube::runtime::events::Recorder::new(
                client.clone(),
                kube::runtime::events::Reporter {
                    controller: "visor-agent".into(),
                    instance: Some(name.to_string()),
                },
            )
        }),
    });
    let heartbeat = node::heartbeat(
        client,
        host,
        node_uid,
        config.lease_interval,
        config.status_interval,
        config.count > 1,
    );
    let serving = match (listener, credentials) {
        (Some(listener), Some(credentials)) => {
            let tls = crate::server::agent_tls_config(
                &credentials.ca,
                &credentials.serving_cert,
                &credentials.serving_key,
            )?;
            let directory: Arc<dyn crate::server::PodDirectory> = directory;
            Some(crate::server::serve(
                listener,
                tls,
                runtime,
                directory,
                std::future::pending::<()>(),
            ))
        }
        _ => None,
    };
    let running = async move {
        let serving = async move {
            match serving {
                Some(serving) => {
                    serving.await;
                    anyhow::bail!("the agent's endpoint stopped")
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = heartbeat => Ok(()),
            result = serving => result,
        }
    };
    Ok(Host {
        shared,
        running: Box::pin(running),
    })
}
