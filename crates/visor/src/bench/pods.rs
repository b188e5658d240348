//! `visor bench pods`: how fast a host starts pods, and what the agent costs in memory.
//!
//! - **One at a time**: `--runs` pods created one after another, each waited for until the
//!   API shows it `Running`; p50 and p99 of create → Running.
//! - **A burst**: `--burst` pods created at once; p50 and p99 of each pod's create → Running,
//!   and the time until all run.
//! - **Agent memory**: the RSS of the process serving the host's endpoint, idle before the
//!   pods and with the burst running, and the difference per pod.
//!
//! - **The runtime's floor** (`--bare-runc`): the same container started by runc alone, one
//!   at a time and in a burst (see [`super::bare_runc`]).
//!
//! The image is cached first (the busybox test image, built from the host's busybox and
//! imported into the agent's cache), so the figures are about starting pods, not pulling.
//! Run it against `visor server` plus a separate `visor agent` to see the agent's own memory;
//! under `visor up` the agent shares the server's process and the RSS figures include both.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

use super::bare_runc::BareRunc;
use super::report::{Report, Row};
use super::stats::Latencies;

const BENCH: &str = "pods";
const IMAGE: &str = "bench.visor.local/busybox:bench";
const RUNNING_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Args)]
pub struct PodsArgs {
    /// The kubeconfig of the cluster to measure.
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// The host to run the pods on [default: the first Ready host that is not simulated].
    #[arg(long)]
    pub node: Option<String>,
    /// The host agent's data directory, whose image cache gets the test image.
    #[arg(long)]
    pub agent_data_dir: PathBuf,
    /// Pods started one at a time.
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Pods started at once.
    #[arg(long, default_value_t = 50)]
    pub burst: usize,
    /// Then start the same containers with runc alone (no Visor), one at a time and in a
    /// burst of the same size: the floor the runtime sets on this machine.
    #[arg(long)]
    pub bare_runc: bool,
    /// The runc binary for `--bare-runc`; a bare name is looked up on `PATH`.
    #[arg(long, default_value = "runc")]
    pub runc: PathBuf,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: PodsArgs) -> anyhow::Result<()> {
    let kubeconfig = kube::config::Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    let client = kube::Client::try_from(config)?;
    let node = match &args.node {
        Some(node) => Api::<Node>::all(client.clone()).get(node).await?,
        None => pick_host(&client).await?,
    };
    let node_name = node.metadata.name.clone().unwrap_or_default();
    let agent_pid = agent_process(&node);

    let work = tempfile::tempdir()?;
    let agent_dir = args.agent_data_dir.clone();
    let image_dir = work.path().to_path_buf();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let image = visor_images::testing::build_busybox_image(&image_dir, IMAGE)?;
        let store = visor_images::ImageStore::open(&visor_images::images_dir(&agent_dir))?;
        store.import(&image.oci_archive, None, &indicatif::ProgressBar::hidden())?;
        Ok(())
    })
    .await??;

    let namespace = format!("bench-pods-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": { "name": namespace } }))?,
        )
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let running = RunningWatch::start(pods.clone());

    let mut report = Report::new(BENCH, args.json);
    let outcome = async {
        let idle_rss = agent_pid.and_then(super::procfs::rss_bytes);
        // One at a time.
        let mut one = Latencies::new();
        for i in 0..args.runs {
            let name = format!("single-{i}");
            let started = Instant::now();
            pods.create(&PostParams::default(), &pod(&name, &node_name)?)
                .await?;
            running.wait(&name, RUNNING_TIMEOUT).await?;
            one.push(started.elapsed());
            pods.delete(&name, &DeleteParams::default()).await?;
        }
        report.row(Row::new(
            "create → Running, one at a time",
            "single",
            one,
            None,
        ));
        wait_until_empty(&pods).await?;
        // A burst.
        let started = Instant::now();
        let creates = (0..args.burst).map(|i| {
            let pods = pods.clone();
            let node_name = node_name.clone();
            async move {
                let name = format!("burst-{i}");
                let sent = Instant::now();
                pods.create(&PostParams::default(), &pod(&name, &node_name)?)
                    .await?;
                anyhow::Ok((name, sent))
            }
        });
        let created = futures::future::try_join_all(creates).await?;
        let mut burst = Latencies::new();
        for (name, sent) in created {
            let at = running.wait(&name, RUNNING_TIMEOUT).await?;
            burst.push(at.duration_since(sent));
        }
        let all = started.elapsed();
        report.row(Row::new(
            format!("create → Running, {} at once", args.burst),
            "burst",
            burst,
            Some(all),
        ));
        if let (Some(idle), Some(pid)) = (idle_rss, agent_pid) {
            let busy = super::procfs::rss_bytes(pid).unwrap_or(idle);
            report.figure(
                "agent RSS idle",
                "agent_rss_idle_mib",
                idle as f64 / 1048576.0,
                "MiB",
            );
            report.figure(
                format!("agent RSS per running pod ({} pods)", args.burst),
                "agent_rss_per_pod_mib",
                busy.saturating_sub(idle) as f64 / 1048576.0 / args.burst.max(1) as f64,
                "MiB",
            );
        }
        if args.bare_runc {
            // The pods' containers go first, so that the floor is measured on the same
            // machine state the pods were.
            pods.delete_collection(&DeleteParams::default(), &Default::default())
                .await?;
            wait_until_empty(&pods).await?;
            let mut floor = BareRunc::prepare(&args.runc).await?;
            report.row(Row::new(
                "bare runc run --detach, one at a time",
                "bare_runc_single",
                floor.one_at_a_time(args.runs).await?,
                None,
            ));
            let (burst, all) = floor.burst(args.burst).await?;
            report.row(Row::new(
                format!("bare runc run --detach, {} at once", args.burst),
                "bare_runc_burst",
                burst,
                Some(all),
            ));
        }
        anyhow::Ok(())
    }
    .await;
    if outcome.is_ok() {
        if !args.json {
            println!(
                "visor bench pods: host {node_name}, {} single runs, burst of {}{}\n",
                args.runs,
                args.burst,
                match agent_pid {
                    Some(pid) => format!(", agent PID {pid}"),
                    None => ", agent process not found (RSS not measured)".into(),
                }
            );
        }
        report.print(&mut std::io::stdout().lock())?;
    }
    let _ = namespaces
        .delete(&namespace, &DeleteParams::default())
        .await;
    outcome
}

fn pod(name: &str, node: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "sleep",
                "image": IMAGE,
                "imagePullPolicy": "Never",
                "command": ["sleep", "3600"],
            }],
        },
    }))?)
}

/// The first Ready host running real pods.
async fn pick_host(client: &kube::Client) -> anyhow::Result<Node> {
    let nodes = Api::<Node>::all(client.clone())
        .list(&Default::default())
        .await?;
    nodes
        .items
        .into_iter()
        .find(|n| {
            let simulated = n
                .metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key("visor.dev/simulated"));
            let ready = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            ready && !simulated
        })
        .context("no Ready host that runs real pods; start `visor up` or `visor agent`")
}

/// The local process serving the host's endpoint, when the host is this machine.
fn agent_process(node: &Node) -> Option<u32> {
    let status = node.status.as_ref()?;
    let port = status
        .daemon_endpoints
        .as_ref()?
        .kubelet_endpoint
        .as_ref()?
        .port;
    let ip = status
        .addresses
        .iter()
        .flatten()
        .find(|a| a.type_ == "InternalIP")?
        .address
        .parse()
        .ok()?;
    super::procfs::pid_listening_on(std::net::SocketAddr::new(ip, port as u16))
}

/// When each pod was first seen Running, from one watch.
#[derive(Clone)]
struct RunningWatch {
    seen: Arc<Mutex<HashMap<String, Instant>>>,
    changed: Arc<tokio::sync::Notify>,
    _task: Arc<tokio::task::JoinHandle<()>>,
}

impl RunningWatch {
    fn start(pods: Api<Pod>) -> RunningWatch {
        let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let changed = Arc::new(tokio::sync::Notify::new());
        let (s, c) = (seen.clone(), changed.clone());
        let task = tokio::spawn(async move {
            let mut events = watcher(pods, watcher::Config::default()).boxed();
            while let Some(event) = events.next().await {
                let Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) = event else {
                    continue;
                };
                let running =
                    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                if running && let Some(name) = pod.metadata.name {
                    s.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(name)
                        .or_insert_with(Instant::now);
                    c.notify_waiters();
                }
            }
        });
        RunningWatch {
            seen,
            changed,
            _task: Arc::new(task),
        }
    }

    async fn wait(&self, name: &str, timeout: Duration) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if let Some(at) = self
                .seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(name)
            {
                return Ok(*at);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            anyhow::ensure!(!left.is_zero(), "pod {name} not Running after {timeout:?}");
            let _ = tokio::time::timeout(left.min(Duration::from_millis(500)), notified).await;
        }
    }
}

async fn wait_until_empty(pods: &Api<Pod>) -> anyhow::Result<()> {
    let deadline = Instant::now() + RUNNING_TIMEOUT;
    while !pods.list(&Default::default()).await?.items.is_empty() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "pods not deleted after {RUNNING_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
