//! `visor bench scheduler --end-to-end`: placement through the API with simulated hosts.
//!
//! Either against a running server (`--kubeconfig`, whose cluster already has simulated hosts),
//! or — the default — on a cluster of its own: the bench starts `visor server` (this executable,
//! a temporary data directory, a free loopback port) and three `visor agent --runtime sim`
//! processes, one per zone, sharing `--hosts` between them, and waits until every host is Ready.
//!
//! Then it creates `--pods` equal pods (small requests, no `nodeName`) over several
//! connections and, from the first create, follows one pod watch until all are Running; then
//! deletes them all and follows the same watch until all are gone. Reported: seconds to all
//! Running, seconds to all gone, the pods per zone, the busiest and idlest host, and the CPU
//! time the server and the agents used in each phase (where the time went). Checked: no host
//! is over-committed. Every process the bench started is killed by PID when it ends, also on
//! error (a guard).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::Value;
use visor_scheduler::model::ZONE_LABEL;
use visor_scheduler::quantity;

use crate::bench::api::{Progress, create_namespace, delete_namespace, random_namespace};
use crate::bench::report::Metric;
use crate::client::{ApiClient, Connection, Lines};

const BENCH: &str = "scheduler";
/// Zones of the bench's own cluster, with the pod network each zone's agent hands out.
const ZONES: [(&str, &str); 3] = [
    ("zone-a", "10.64.0.0/12"),
    ("zone-b", "10.80.0.0/12"),
    ("zone-c", "10.96.0.0/12"),
];
/// Requests of every pod: 100 millicores and 256 MiB, as in the in-process bench.
const POD_CPU: &str = "100m";
const POD_MEMORY: &str = "256Mi";
/// Concurrent connections that create and delete pods.
const WORKERS: usize = 16;
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(60);
/// Generous: 5,000 hosts register one after another through the API.
const HOSTS_READY_TIMEOUT: Duration = Duration::from_secs(300);
/// How long each phase may take before the bench gives up (ten times the target).
const PHASE_TIMEOUT: Duration = Duration::from_secs(300);
/// The targets of issue 5: 10,000 pods Running, or gone, within 30 s each.
const TARGET_SECONDS: f64 = 30.0;
/// Linux reports process CPU time in clock ticks of 1/100 s (USER_HZ is 100 on every
/// architecture Visor runs on; it is part of the kernel's user-space ABI).
const TICKS_PER_SECOND: f64 = 100.0;

/// What the end-to-end bench was asked to do.
pub struct EndToEndOptions {
    /// A running server to use instead of starting one.
    pub kubeconfig: Option<PathBuf>,
    pub hosts: usize,
    pub pods: usize,
    pub json: bool,
}

/// Processes the bench started, killed by PID (and reaped) when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    server: Option<Child>,
    agents: Vec<Child>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.agents.iter_mut().chain(self.server.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Cluster {
    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("server/admin.kubeconfig")
    }

    fn pids(&self) -> (Option<u32>, Vec<u32>) {
        (
            self.server.as_ref().map(Child::id),
            self.agents.iter().map(Child::id).collect(),
        )
    }

    /// Starts `visor server` and waits until it has written its kubeconfig.
    fn start(hosts: usize) -> anyhow::Result<Cluster> {
        let exe = std::env::current_exe().context("locating the visor executable")?;
        let dir = tempfile::Builder::new()
            .prefix("visor-bench-scheduler-")
            .tempdir()
            .context("creating a temporary directory")?;
        let mut cluster = Cluster {
            dir,
            server: None,
            agents: Vec::new(),
        };
        let server_dir = cluster.dir.path().join("server");
        std::fs::create_dir_all(&server_dir)?;
        // The balancer stays off: it would move pods while the bench measures placement.
        let child = Command::new(&exe)
            .arg("server")
            .arg("--data-dir")
            .arg(&server_dir)
            .args(["--listen", "127.0.0.1:0", "--balancer", "off"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(&server_dir, "server")?)
            .spawn()
            .context("starting visor server")?;
        cluster.server = Some(child);
        let deadline = Instant::now() + SERVER_START_TIMEOUT;
        while !cluster.kubeconfig().exists() {
            cluster.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "visor server not ready after {SERVER_START_TIMEOUT:?}; see {}",
                    server_dir.join("server.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let server_url = crate::kubeconfig::load_credentials(&cluster.kubeconfig())?.server;
        let kubeconfig = cluster.kubeconfig();
        for (i, (zone, cidr)) in ZONES.iter().enumerate() {
            let count = hosts / ZONES.len() + usize::from(i < hosts % ZONES.len());
            if count == 0 {
                continue;
            }
            let agent_dir = cluster.dir.path().join(zone);
            std::fs::create_dir_all(&agent_dir)?;
            let child = Command::new(&exe)
                .arg("agent")
                .args(["--server", &server_url, "--runtime", "sim"])
                .args(["--count", &count.to_string()])
                .args(["--name", &format!("{zone}-host")])
                .args(["--zone", zone, "--pod-cidr", cidr])
                .args(["--listen", "127.0.0.1:0"])
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .arg("--data-dir")
                .arg(&agent_dir)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file(&agent_dir, "agent")?)
                .spawn()
                .context("starting visor agent")?;
            cluster.agents.push(child);
        }
        Ok(cluster)
    }

    /// Fails, pointing at the log, if a process the bench started has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        let dir = self.dir.path().to_path_buf();
        if let Some(server) = self.server.as_mut()
            && let Some(status) = server.try_wait()?
        {
            bail!(
                "visor server exited with {status}; see {}",
                dir.join("server/server.log").display()
            );
        }
        for (agent, (zone, _)) in self.agents.iter_mut().zip(ZONES) {
            if let Some(status) = agent.try_wait()? {
                bail!(
                    "visor agent ({zone}) exited with {status}; see {}",
                    dir.join(zone).join("agent.log").display()
                );
            }
        }
        Ok(())
    }
}

fn log_file(dir: &Path, name: &str) -> anyhow::Result<std::fs::File> {
    let path = dir.join(format!("{name}.log"));
    std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))
}

/// User plus system CPU seconds a process has used so far.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its closing parenthesis
    // start at field 3, so utime and stime (fields 14 and 15) are the 12th and 13th.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

/// CPU seconds of the server and of all agents together, where the bench knows their PIDs.
#[derive(Clone, Copy, Default)]
struct CpuSample {
    server: f64,
    agents: f64,
}

fn sample_cpu(server: Option<u32>, agents: &[u32]) -> CpuSample {
    CpuSample {
        server: server.and_then(cpu_seconds).unwrap_or(0.0),
        agents: agents.iter().filter_map(|&pid| cpu_seconds(pid)).sum(),
    }
}

/// One host as the bench sees it.
struct Host {
    zone: String,
    cpu_millis: i64,
    memory_bytes: i64,
    pods: i64,
    ready: bool,
}

fn hosts_of(list: &Value) -> anyhow::Result<BTreeMap<String, Host>> {
    let mut hosts = BTreeMap::new();
    for node in list["items"].as_array().context("a node list has items")? {
        let name = node["metadata"]["name"]
            .as_str()
            .context("a node without a name")?;
        let allocatable = &node["status"]["allocatable"];
        // A host registers its Node first and reports its status a moment later; until then
        // it is not a host pods can be placed on.
        if allocatable.is_null() {
            continue;
        }
        let amount = |key: &str, milli: bool| {
            allocatable[key]
                .as_str()
                .and_then(|q| quantity::parse(q, milli))
                .with_context(|| format!("node {name} reports no allocatable {key}"))
        };
        let ready = node["status"]["conditions"]
            .as_array()
            .is_some_and(|conditions| {
                conditions
                    .iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
        hosts.insert(
            name.to_string(),
            Host {
                zone: node["metadata"]["labels"][ZONE_LABEL]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                cpu_millis: amount("cpu", true)?,
                memory_bytes: amount("memory", false)?,
                pods: amount("pods", false)?,
                ready,
            },
        );
    }
    Ok(hosts)
}

async fn list(conn: &mut Connection, path: &str) -> anyhow::Result<Value> {
    conn.send(Method::GET, path, None)
        .await?
        .expect(StatusCode::OK)?
        .json()
}

/// Waits until at least `expected` hosts (all of them when the bench made the cluster) are
/// Ready, and returns them.
async fn wait_for_hosts(
    client: &ApiClient,
    expected: usize,
    cluster: &mut Option<Cluster>,
    json: bool,
) -> anyhow::Result<BTreeMap<String, Host>> {
    let mut conn = client.connect().await?;
    let started = Instant::now();
    let mut reported = usize::MAX;
    loop {
        let hosts = hosts_of(&list(&mut conn, "/api/v1/nodes").await?)?;
        let ready = hosts.values().filter(|h| h.ready).count();
        if ready >= expected {
            return Ok(hosts);
        }
        if let Some(cluster) = cluster.as_mut() {
            cluster.check_alive()?;
        }
        if started.elapsed() > HOSTS_READY_TIMEOUT {
            bail!("{ready} of {expected} hosts Ready after {HOSTS_READY_TIMEOUT:?}");
        }
        if !json && ready / 500 != reported / 500 {
            eprintln!("{ready} of {expected} hosts Ready");
            reported = ready;
        }
        // Listing thousands of nodes is not free for the server: look every second.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn pod_name(i: usize) -> String {
    format!("e2e-{i:06}")
}

fn pod_body(i: usize) -> Bytes {
    let body = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod_name(i), "labels": {"app": "bench-e2e"}},
        "spec": {
            "containers": [{
                "name": "main",
                "image": "busybox",
                "resources": {"requests": {"cpu": POD_CPU, "memory": POD_MEMORY}},
            }],
        },
    });
    Bytes::from(body.to_string())
}

/// What the pod watch has seen so far.
#[derive(Clone, Copy, Default, Debug)]
struct Seen {
    running: usize,
    deleted: usize,
    /// When the last pod became Running / was deleted.
    all_running_at: Option<Instant>,
    all_deleted_at: Option<Instant>,
}

/// Follows the namespace's pods from `resource_version` until `pods` have been deleted,
/// publishing what it saw after every event.
async fn follow(
    mut conn: Connection,
    namespace: String,
    resource_version: String,
    pods: usize,
    seen: tokio::sync::watch::Sender<Seen>,
) -> anyhow::Result<()> {
    let path = format!(
        "/api/v1/namespaces/{namespace}/pods?watch=true&resourceVersion={resource_version}&timeoutSeconds=3600"
    );
    let (status, body) = conn.stream(&path).await?;
    if status != StatusCode::OK {
        bail!("watching pods: {status}");
    }
    let mut lines = Lines::new(body);
    let mut running = HashSet::new();
    let mut deleted = HashSet::new();
    let mut state = Seen::default();
    while let Some(line) = lines.next_line().await? {
        if line.is_empty() {
            continue;
        }
        let event: Value = serde_json::from_slice(&line).context("a watch event is not JSON")?;
        let name = event["object"]["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        match event["type"].as_str() {
            Some("ADDED" | "MODIFIED") if event["object"]["status"]["phase"] == "Running" => {
                running.insert(name);
            }
            Some("DELETED") => {
                deleted.insert(name);
            }
            Some("ERROR") => bail!("the pod watch failed: {}", event["object"]),
            _ => {}
        }
        state.running = running.len();
        state.deleted = deleted.len();
        if state.running == pods && state.all_running_at.is_none() {
            state.all_running_at = Some(Instant::now());
        }
        if state.deleted == pods && state.all_deleted_at.is_none() {
            state.all_deleted_at = Some(Instant::now());
        }
        seen.send_replace(state);
        if state.deleted == pods {
            return Ok(());
        }
    }
    bail!("the server ended the pod watch early")
}

/// Sends one request per pod over [`WORKERS`] connections: `request(i)` gives method, path and
/// body; any status but `ok` fails the bench.
async fn for_each_pod(
    client: &ApiClient,
    pods: usize,
    ok: &'static [StatusCode],
    request: impl Fn(usize) -> (Method, String, Option<Bytes>) + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let request = Arc::new(request);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..WORKERS.min(pods) {
        let mut conn = client.connect().await?;
        let next = next.clone();
        let request = request.clone();
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= pods {
                    return anyhow::Ok(());
                }
                let (method, path, body) = request(i);
                let response = conn.send(method.clone(), &path, body).await?;
                if !ok.contains(&response.status) {
                    let mut text = response.text();
                    text.truncate(300);
                    bail!("{method} {path}: {}: {text}", response.status);
                }
            }
        });
    }
    while let Some(outcome) = workers.join_next().await {
        outcome??;
    }
    Ok(())
}

/// Waits until the watch reports `done`, failing after [`PHASE_TIMEOUT`] or when a process
/// the bench started has died.
async fn wait_for(
    seen: &mut tokio::sync::watch::Receiver<Seen>,
    watch: &mut tokio::task::JoinHandle<anyhow::Result<()>>,
    cluster: &mut Option<Cluster>,
    what: &str,
    done: impl Fn(&Seen) -> Option<Instant>,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + PHASE_TIMEOUT;
    loop {
        if let Some(at) = done(&seen.borrow()) {
            return Ok(at);
        }
        if let Some(cluster) = cluster.as_mut() {
            cluster.check_alive()?;
        }
        if Instant::now() > deadline {
            bail!(
                "{what}: not done after {PHASE_TIMEOUT:?} ({:?})",
                *seen.borrow()
            );
        }
        tokio::select! {
            _ = seen.changed() => {}
            outcome = &mut *watch => {
                // The watch ends on its own only after the last deletion, or on an error.
                outcome??;
                if let Some(at) = done(&seen.borrow()) {
                    return Ok(at);
                }
                bail!("{what}: the pod watch ended first");
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// How the pods landed.
struct Placement {
    per_zone: BTreeMap<String, usize>,
    busiest: usize,
    idlest: usize,
}

/// Counts the pods per host and zone, and fails if any host holds more than it can.
fn check_placement(
    hosts: &BTreeMap<String, Host>,
    pods: &Value,
    expected: usize,
) -> anyhow::Result<Placement> {
    let cpu = quantity::parse(POD_CPU, true).context("the pods' CPU request")?;
    let memory = quantity::parse(POD_MEMORY, false).context("the pods' memory request")?;
    let mut per_host: HashMap<&str, i64> = HashMap::new();
    let items = pods["items"].as_array().context("a pod list has items")?;
    if items.len() != expected {
        bail!("{} pods listed, {expected} created", items.len());
    }
    for pod in items {
        let host = pod["spec"]["nodeName"]
            .as_str()
            .with_context(|| format!("pod {} is not bound", pod["metadata"]["name"]))?;
        *per_host.entry(host).or_default() += 1;
    }
    let mut per_zone = BTreeMap::new();
    for (name, count) in &per_host {
        let host = hosts
            .get(*name)
            .with_context(|| format!("pods are bound to {name}, which is not a known host"))?;
        if count * cpu > host.cpu_millis || count * memory > host.memory_bytes || *count > host.pods
        {
            bail!(
                "host {name} is over-committed: {count} pods of {POD_CPU} CPU and {POD_MEMORY} \
                 on {} millicores, {} bytes, {} pods",
                host.cpu_millis,
                host.memory_bytes,
                host.pods
            );
        }
        *per_zone.entry(host.zone.clone()).or_default() += *count as usize;
    }
    let counts = || {
        hosts
            .keys()
            .map(|name| per_host.get(name.as_str()).copied().unwrap_or(0))
    };
    Ok(Placement {
        per_zone,
        busiest: counts().max().unwrap_or(0) as usize,
        idlest: counts().min().unwrap_or(0) as usize,
    })
}

/// Runs the end-to-end bench; see the module documentation.
pub async fn run(options: EndToEndOptions) -> anyhow::Result<()> {
    let EndToEndOptions {
        kubeconfig,
        hosts: host_count,
        pods,
        json,
    } = options;
    let (mut cluster, kubeconfig) = match kubeconfig {
        Some(path) => (None, path),
        None => {
            let hosts = host_count;
            let cluster = tokio::task::spawn_blocking(move || Cluster::start(hosts)).await??;
            let kubeconfig = cluster.kubeconfig();
            (Some(cluster), kubeconfig)
        }
    };
    let (server_pid, agent_pids) = match &cluster {
        Some(c) => c.pids(),
        None => (None, Vec::new()),
    };
    let client = ApiClient::from_kubeconfig(&kubeconfig).await?;
    // Against a cluster of the user's, every Ready host counts; --hosts is the least expected.
    let hosts = wait_for_hosts(&client, host_count, &mut cluster, json).await?;
    let ready = hosts.values().filter(|h| h.ready).count();
    if !json {
        println!(
            "visor bench scheduler --end-to-end: {ready} hosts Ready, {pods} pods, server {}",
            client.addr()
        );
    }

    let namespace = random_namespace();
    let mut conn = client.connect().await?;
    create_namespace(&mut conn, &namespace).await?;
    let outcome = measure(
        &client,
        &mut conn,
        &namespace,
        pods,
        &hosts,
        &mut cluster,
        (server_pid, &agent_pids),
    )
    .await;
    if cluster.is_none() {
        // A user's cluster keeps no trace of the bench; the bench's own cluster goes away whole.
        let progress = Progress { enabled: false };
        let mut cleanup = client.connect().await?;
        if let Err(error) = delete_namespace(&mut cleanup, &namespace, &progress).await {
            eprintln!("warning: namespace {namespace} was not removed: {error:#}");
        }
    }
    drop(cluster);
    let result = outcome?;
    result.print(json, pods)?;
    let mut missed = Vec::new();
    if pods >= 10_000 {
        for (what, seconds) in [
            ("all Running", result.running_seconds),
            ("all gone", result.deleted_seconds),
        ] {
            if seconds > TARGET_SECONDS {
                missed.push(format!("{what} after {seconds:.1} s > {TARGET_SECONDS} s"));
            }
        }
    }
    if !missed.is_empty() {
        bail!("targets missed: {}", missed.join("; "));
    }
    Ok(())
}

struct Outcome {
    running_seconds: f64,
    deleted_seconds: f64,
    created_seconds: f64,
    placement: Placement,
    cpu_running: Option<CpuSample>,
    cpu_deleting: Option<CpuSample>,
}

impl Outcome {
    fn print(&self, json: bool, pods: usize) -> anyhow::Result<()> {
        let ratio = if self.placement.idlest == 0 {
            f64::INFINITY
        } else {
            self.placement.busiest as f64 / self.placement.idlest as f64
        };
        let mut metrics = vec![
            ("created_seconds", self.created_seconds, "s"),
            ("all_running_seconds", self.running_seconds, "s"),
            ("all_deleted_seconds", self.deleted_seconds, "s"),
            ("busiest_host_pods", self.placement.busiest as f64, "pods"),
            ("idlest_host_pods", self.placement.idlest as f64, "pods"),
        ];
        if let (Some(running), Some(deleting)) = (self.cpu_running, self.cpu_deleting) {
            metrics.extend([
                ("server_cpu_seconds_running", running.server, "s"),
                ("agents_cpu_seconds_running", running.agents, "s"),
                ("server_cpu_seconds_deleting", deleting.server, "s"),
                ("agents_cpu_seconds_deleting", deleting.agents, "s"),
            ]);
        }
        if json {
            for (metric, value, unit) in metrics {
                let metric = Metric {
                    bench: BENCH,
                    metric: metric.into(),
                    value,
                    unit,
                };
                println!("{}", serde_json::to_string(&metric)?);
            }
            for (zone, count) in &self.placement.per_zone {
                let metric = Metric {
                    bench: BENCH,
                    metric: format!("pods_in_{zone}"),
                    value: *count as f64,
                    unit: "pods",
                };
                println!("{}", serde_json::to_string(&metric)?);
            }
            return Ok(());
        }
        println!(
            "{pods} pods created in {:.1} s; all Running after {:.1} s (target ≤ {TARGET_SECONDS} s)",
            self.created_seconds, self.running_seconds
        );
        println!(
            "all deleted after {:.1} s (target ≤ {TARGET_SECONDS} s)",
            self.deleted_seconds
        );
        let zones: Vec<String> = self
            .placement
            .per_zone
            .iter()
            .map(|(zone, count)| format!("{zone} {count}"))
            .collect();
        println!("pods per zone: {}", zones.join(", "));
        println!(
            "quality: no host over-committed; busiest host {} pods, idlest {} (ratio {ratio:.2})",
            self.placement.busiest, self.placement.idlest
        );
        if let (Some(running), Some(deleting)) = (self.cpu_running, self.cpu_deleting) {
            println!(
                "CPU used until all Running: server {:.1} s, agents {:.1} s; until all gone: server {:.1} s, agents {:.1} s",
                running.server, running.agents, deleting.server, deleting.agents
            );
        }
        Ok(())
    }
}

async fn measure(
    client: &ApiClient,
    conn: &mut Connection,
    namespace: &str,
    pods: usize,
    hosts: &BTreeMap<String, Host>,
    cluster: &mut Option<Cluster>,
    (server_pid, agent_pids): (Option<u32>, &[u32]),
) -> anyhow::Result<Outcome> {
    let path = format!("/api/v1/namespaces/{namespace}/pods");
    let empty = list(conn, &format!("{path}?limit=1")).await?;
    let resource_version = empty["metadata"]["resourceVersion"]
        .as_str()
        .context("a pod list without a resourceVersion")?
        .to_string();
    let (seen_tx, mut seen) = tokio::sync::watch::channel(Seen::default());
    let mut watch = tokio::spawn(follow(
        client.connect().await?,
        namespace.to_string(),
        resource_version,
        pods,
        seen_tx,
    ));
    let measured = cluster.is_some();
    let cpu_before = sample_cpu(server_pid, agent_pids);

    let started = Instant::now();
    let create_path = path.clone();
    for_each_pod(client, pods, &[StatusCode::CREATED], move |i| {
        (Method::POST, create_path.clone(), Some(pod_body(i)))
    })
    .await?;
    let created_seconds = started.elapsed().as_secs_f64();
    let all_running = wait_for(&mut seen, &mut watch, cluster, "all Running", |s| {
        s.all_running_at
    })
    .await?;
    let running_seconds = all_running.duration_since(started).as_secs_f64();
    let cpu_running = sample_cpu(server_pid, agent_pids);

    let placement = check_placement(hosts, &list(conn, &path).await?, pods)?;

    let cpu_before_delete = sample_cpu(server_pid, agent_pids);
    let delete_started = Instant::now();
    for_each_pod(
        client,
        pods,
        &[StatusCode::OK, StatusCode::ACCEPTED],
        move |i| (Method::DELETE, format!("{path}/{}", pod_name(i)), None),
    )
    .await?;
    let all_deleted = wait_for(&mut seen, &mut watch, cluster, "all gone", |s| {
        s.all_deleted_at
    })
    .await?;
    let deleted_seconds = all_deleted.duration_since(delete_started).as_secs_f64();
    let cpu_deleted = sample_cpu(server_pid, agent_pids);
    watch.abort();

    let delta = |from: CpuSample, to: CpuSample| CpuSample {
        server: to.server - from.server,
        agents: to.agents - from.agents,
    };
    Ok(Outcome {
        running_seconds,
        deleted_seconds,
        created_seconds,
        placement,
        cpu_running: measured.then(|| delta(cpu_before, cpu_running)),
        cpu_deleting: measured.then(|| delta(cpu_before_delete, cpu_deleted)),
    })
}
