//! `visor bench api`: how fast the API server creates, reads, lists, updates, watches and
//! deletes objects, and how much memory it holds doing so.
//!
//! The workload is ConfigMaps in a fresh namespace `bench-<random>`, created at the start and
//! deleted at the end (also on Ctrl-C). Each of the `--connections` workers owns one persistent
//! keep-alive HTTPS connection and sends its requests one after another, so a figure at one
//! connection is the server's per-request cost, not the client's parallelism.
//!
//! Phases, in order: create `--objects` ConfigMaps; get each; list them all `--lists` times, from
//! the store and with `resourceVersion=0`; update each (PUT with its resourceVersion); watch
//! delivery — open a watch, then create `--watch-events` objects one at a time, timing from just
//! before each write is sent to the moment its ADDED event arrives; delete each. With `--hold N`,
//! then create N ConfigMaps of 1 KiB and report the server's RSS holding them. With
//! `--with-quota`, a ResourceQuota on ConfigMaps is put in the namespace first, so every create
//! pays for quota admission.
//!
//! `--quota-overhead` compares creates with and without quota admission on the same machine
//! state: it creates `--objects` ConfigMaps in the benchmark's namespace and as many in a second
//! namespace with a ResourceQuota, in alternating blocks of [`QUOTA_BLOCK`] creates per
//! connection over the same connections, and reports both throughputs and the overhead.
//! Separate runs cannot show a 10 % difference on a machine whose disk latency drifts by more
//! than that within minutes; adjacent blocks see the same disk. The overhead is the median over pairs of adjacent blocks
//! of `1 − quota throughput / plain throughput`, so a stall in one block moves one pair only.
//!
//! The server's RSS is read from `/proc` when the server runs on this machine: the process
//! listening on the kubeconfig's port, or `--server-pid`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use tokio::sync::mpsc;
use visor_apiserver::admission::usage;

use super::procfs;
use super::report::{Report, Row};
use super::stats::Latencies;
use crate::client::{ApiClient, Connection, Lines};

const BENCH: &str = "api";
const MIB: f64 = 1024.0 * 1024.0;
/// How long one watch event may take before the benchmark gives up on it.
const WATCH_EVENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the benchmark's namespace to disappear at the end.
const NAMESPACE_DELETE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Args)]
pub struct ApiArgs {
    /// The kubeconfig of the server to measure (its current context; client-certificate auth).
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// Parallel keep-alive connections, each sending requests one after another.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub connections: u16,
    /// ConfigMaps to create, get, update and delete (and to list).
    #[arg(long, default_value_t = 1000)]
    pub objects: usize,
    /// How many times to list all objects (for each of the two list kinds).
    #[arg(long, default_value_t = 50)]
    pub lists: usize,
    /// Objects written one at a time to measure watch delivery latency.
    #[arg(long, default_value_t = 200)]
    pub watch_events: usize,
    /// After the other phases, create this many ConfigMaps of 1 KiB and report the server's RSS.
    #[arg(long)]
    pub hold: Option<usize>,
    /// The namespace to use; created if missing and then deleted at the end. Default: a fresh
    /// `bench-<random>`.
    #[arg(long)]
    pub namespace: Option<String>,
    /// The server's process id, for RSS (default: the local process listening on the port).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// First put a ResourceQuota on ConfigMaps in the namespace (far above what the benchmark
    /// creates), so that every create is charged by quota admission.
    #[arg(long)]
    pub with_quota: bool,
    /// After the other phases, compare creates with and without quota admission in alternating
    /// blocks (a second namespace with a ResourceQuota), and report the overhead.
    #[arg(long, conflicts_with = "with_quota")]
    pub quota_overhead: bool,
}

/// Creates per connection per block in the `--quota-overhead` comparison: long enough that a
/// block's time is not one request's jitter, nor its start and end (when fewer than all
/// connections are busy) much of it; short enough that adjacent blocks share the machine's
/// state.
const QUOTA_BLOCK: usize = 100;

/// The namespace with the ResourceQuota in the `--quota-overhead` comparison.
fn quota_namespace(namespace: &str) -> String {
    format!("{namespace}-quota")
}

pub async fn run(args: ApiArgs) -> anyhow::Result<()> {
    let client = ApiClient::from_kubeconfig(&args.kubeconfig).await?;
    let namespace = args.namespace.clone().unwrap_or_else(random_namespace);
    let progress = Progress {
        enabled: !args.json && std::io::stdout().is_terminal(),
    };
    let mut admin = client.connect().await?;
    let created_namespace = create_namespace(&mut admin, &namespace).await?;
    if args.with_quota {
        let room = 10 * (args.objects + args.watch_events + args.hold.unwrap_or(0));
        create_quota(&mut admin, &namespace, room).await?;
    }
    let mut cleanup_namespaces = Vec::new();
    if created_namespace {
        cleanup_namespaces.push(namespace.clone());
    }
    if args.quota_overhead {
        let quoted = quota_namespace(&namespace);
        if create_namespace(&mut admin, &quoted).await? {
            cleanup_namespaces.push(quoted.clone());
        }
        create_quota(&mut admin, &quoted, 10 * args.objects).await?;
    }

    let mut report = Report::new(BENCH, args.json);
    let outcome = tokio::select! {
        outcome = measure(&client, &args, &namespace, &progress, &mut report) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if outcome.is_ok() {
        if !args.json {
            println!(
                "visor bench api: {} objects, {} connection{}, server {}, namespace {namespace}\n",
                args.objects,
                args.connections,
                if args.connections == 1 { "" } else { "s" },
                client.addr(),
            );
        }
        report.print(&mut std::io::stdout().lock())?;
    }
    // Clean up whatever happened, on a fresh connection in case the old one broke.
    for namespace in cleanup_namespaces {
        let cleanup = async {
            let mut conn = client.connect().await?;
            delete_namespace(&mut conn, &namespace, &progress).await
        };
        if let Err(error) = cleanup.await {
            eprintln!("warning: namespace {namespace} was not removed: {error:#}");
        }
    }
    outcome
}

/// Runs every phase, adding its results to `report`.
async fn measure(
    client: &ApiClient,
    args: &ApiArgs,
    namespace: &str,
    progress: &Progress,
    report: &mut Report,
) -> anyhow::Result<()> {
    let server_pid = args
        .server_pid
        .or_else(|| procfs::pid_listening_on(client.addr()));
    if server_pid.is_none() {
        eprintln!("note: the server's process was not found on this machine; RSS is not reported");
    }
    let rss = |report: &mut Report, label: &str, key: &str| {
        if let Some(bytes) = server_pid.and_then(procfs::rss_bytes) {
            report.figure(label, key, bytes as f64 / MIB, "MiB");
        }
    };
    rss(report, "server RSS before the benchmark", "server_rss_idle");

    let mut conns = Vec::new();
    for _ in 0..args.connections {
        conns.push(client.connect().await?);
    }
    let n = args.objects;
    let base = format!("/api/v1/namespaces/{namespace}/configmaps");

    // Create.
    let ns = namespace.to_string();
    let path = base.clone();
    let create = Arc::new(move |conn: &Connection, i: usize| {
        let body = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": object_name(i), "namespace": ns, "labels": {"bench": "api"}},
            "data": {"index": i.to_string(), "value": "created"},
        });
        json_request(conn, Method::POST, &path, &body)
    });
    let created = phase(
        &mut conns,
        "create",
        n,
        StatusCode::CREATED,
        true,
        create,
        progress,
    )
    .await?;
    let versions = created.versions.clone();
    report.row(created.row("create", "create"));

    // Get.
    let path = base.clone();
    let get = Arc::new(move |conn: &Connection, i: usize| {
        conn.request(
            Method::GET,
            &format!("{path}/{}", object_name(i)),
            "",
            Bytes::new(),
        )
    });
    let got = phase(&mut conns, "get", n, StatusCode::OK, false, get, progress).await?;
    report.row(got.row("get", "get"));

    // List, from the store and from the watch cache (resourceVersion=0).
    for (label, key, query) in [
        (format!("list ({n} items)"), "list", ""),
        (
            format!("list ({n} items), rv=0"),
            "list_rv0",
            "?resourceVersion=0",
        ),
    ] {
        let conn = &mut conns[0];
        let bar = progress.bar(&label, args.lists);
        let mut latencies = Latencies::new();
        for round in 0..args.lists {
            let request = conn.request(Method::GET, &format!("{base}{query}"), "", Bytes::new())?;
            let start = Instant::now();
            let response = conn.send_request(request).await?.expect(StatusCode::OK)?;
            latencies.push(start.elapsed());
            if round == 0 {
                // Check once that the list is complete, outside the timed part.
                let list: ListOf =
                    serde_json::from_slice(&response.body).context("parsing a list")?;
                let ours = list
                    .items
                    .iter()
                    .filter(|i| i.metadata.name.starts_with("bench-"))
                    .count();
                if ours != n {
                    bail!("{label}: expected {n} bench objects, the list has {ours}");
                }
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        report.row(Row::new(label, key, latencies, None));
    }

    // Update: PUT with the resourceVersion each create returned.
    let ns = namespace.to_string();
    let path = base.clone();
    let versions = Arc::new(versions);
    let update = Arc::new(move |conn: &Connection, i: usize| {
        let body = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {
                "name": object_name(i), "namespace": ns, "labels": {"bench": "api"},
                "resourceVersion": versions[i],
            },
            "data": {"index": i.to_string(), "value": "updated"},
        });
        json_request(
            conn,
            Method::PUT,
            &format!("{path}/{}", object_name(i)),
            &body,
        )
    });
    let updated = phase(
        &mut conns,
        "update",
        n,
        StatusCode::OK,
        false,
        update,
        progress,
    )
    .await?;
    report.row(updated.row("update", "update"));
    rss(
        report,
        &format!("server RSS holding {n} objects"),
        "server_rss_loaded",
    );

    // Watch delivery.
    if args.watch_events > 0 {
        let latencies = watch_delivery(
            client,
            &mut conns[0],
            namespace,
            args.watch_events,
            progress,
        )
        .await?;
        report.row(Row::new(
            "watch delivery",
            "watch_delivery",
            latencies,
            None,
        ));
    }

    // Delete.
    let path = base.clone();
    let delete = Arc::new(move |conn: &Connection, i: usize| {
        conn.request(
            Method::DELETE,
            &format!("{path}/{}", object_name(i)),
            "",
            Bytes::new(),
        )
    });
    let deleted = phase(
        &mut conns,
        "delete",
        n,
        StatusCode::OK,
        false,
        delete,
        progress,
    )
    .await?;
    report.row(deleted.row("delete", "delete"));

    if args.quota_overhead {
        quota_overhead(&mut conns, namespace, n, server_pid, progress, report).await?;
    }

    // Hold: many objects of 1 KiB, then the server's memory.
    if let Some(hold) = args.hold {
        let ns = namespace.to_string();
        let path = base.clone();
        let filler = "x".repeat(1024);
        let create = Arc::new(move |conn: &Connection, i: usize| {
            let body = serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("hold-{i:07}"), "namespace": ns},
                "data": {"payload": filler},
            });
            json_request(conn, Method::POST, &path, &body)
        });
        let held = phase(
            &mut conns,
            "hold",
            hold,
            StatusCode::CREATED,
            false,
            create,
            progress,
        )
        .await?;
        report.row(held.row(format!("create 1 KiB (hold {hold})"), "hold_create"));
        // Let the server finish what the last requests started (cache updates, frees).
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss(
            report,
            &format!("server RSS holding {hold} objects of 1 KiB"),
            "server_rss_hold",
        );
        report.figure("objects held", "hold_objects", hold as f64, "objects");
    }
    Ok(())
}

/// Creates `count` ConfigMaps in `namespace` and as many in its quota namespace, alternating
/// blocks of [`QUOTA_BLOCK`] per connection (which side goes first alternates too), and reports each side's
/// throughput and the median overhead over pairs of adjacent blocks, and — when the server
/// runs on this machine — the server's CPU time per create on each side (work a block sets
/// off that outlasts it is counted in the block after, of the other side, so the CPU figures
/// understate the difference slightly).
async fn quota_overhead(
    conns: &mut Vec<Connection>,
    namespace: &str,
    count: usize,
    server_pid: Option<u32>,
    progress: &Progress,
    report: &mut Report,
) -> anyhow::Result<()> {
    let sides = [namespace.to_string(), quota_namespace(namespace)];
    let mut latencies = [Latencies::new(), Latencies::new()];
    let mut elapsed = [Duration::ZERO; 2];
    let server_cpu = || server_pid.and_then(procfs::cpu_time);
    let mut cpu: [Option<Duration>; 2] = [server_cpu().map(|_| Duration::ZERO); 2];
    let mut overheads = Vec::new();
    let bar = progress.bar("create with and without quota", 2 * count);
    let quiet = Progress { enabled: false };
    let block_size = QUOTA_BLOCK * conns.len();
    for (block, first) in (0..count).step_by(block_size).enumerate() {
        let size = block_size.min(count - first);
        let mut throughput = [0.0; 2];
        for side in [block % 2, 1 - block % 2] {
            let path = format!("/api/v1/namespaces/{}/configmaps", sides[side]);
            let ns = sides[side].clone();
            let create = Arc::new(move |conn: &Connection, i: usize| {
                let body = serde_json::json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": format!("compare-{:07}", first + i), "namespace": ns},
                    "data": {"value": "created"},
                });
                json_request(conn, Method::POST, &path, &body)
            });
            let cpu_before = server_cpu();
            let result = phase(
                conns,
                "create",
                size,
                StatusCode::CREATED,
                false,
                create,
                &quiet,
            )
            .await
            .with_context(|| format!("creating in {}", sides[side]))?;
            cpu[side] = match (cpu[side], cpu_before, server_cpu()) {
                (Some(total), Some(before), Some(after)) => {
                    Some(total + after.saturating_sub(before))
                }
                _ => None,
            };
            throughput[side] = size as f64 / result.elapsed.as_secs_f64();
            elapsed[side] += result.elapsed;
            latencies[side].extend(result.latencies);
            bar.inc(size as u64);
        }
        overheads.push(1.0 - throughput[1] / throughput[0]);
    }
    bar.finish_and_clear();
    // The comparison means something only if admission charged every create to the quota.
    let quota = format!("/api/v1/namespaces/{}/resourcequotas/bench-quota", sides[1]);
    let response = conns[0].send(Method::GET, &quota, None).await?;
    let quota: serde_json::Value = serde_json::from_slice(&response.body)?;
    let used = usage::parse_list(quota.pointer("/status/used"));
    let charged = used
        .get("count/configmaps")
        .map_or(0, |q| q.nanos / usage::one().nanos);
    if charged < count as i128 {
        bail!(
            "the quota in {} counts {charged} ConfigMaps after {count} creates",
            sides[1]
        );
    }
    let [plain, quoted] = latencies;
    report.row(Row::new(
        "create without quota, interleaved",
        "create_unquoted",
        plain,
        Some(elapsed[0]),
    ));
    report.row(Row::new(
        "create with quota, interleaved",
        "create_quoted",
        quoted,
        Some(elapsed[1]),
    ));
    overheads.sort_by(f64::total_cmp);
    if let Some(median) = overheads.get(overheads.len() / 2) {
        report.figure(
            "quota admission overhead (median of paired blocks)",
            "quota_overhead",
            100.0 * median,
            "%",
        );
    }
    let per_create = |cpu: Duration| cpu.as_secs_f64() * 1e6 / count as f64;
    if let [Some(plain), Some(quoted)] = cpu {
        report.figure(
            "server CPU per create without quota",
            "cpu_per_create_unquoted",
            per_create(plain),
            "µs",
        );
        report.figure(
            "server CPU per create with quota",
            "cpu_per_create_quoted",
            per_create(quoted),
            "µs",
        );
    }
    Ok(())
}

/// The results of one phase.
struct PhaseResult {
    latencies: Latencies,
    elapsed: Duration,
    /// The resourceVersion each response carried, by object index (when asked for).
    versions: Vec<String>,
}

impl PhaseResult {
    fn row(&self, label: impl Into<String>, key: &'static str) -> Row {
        Row::new(label, key, self.latencies.clone(), Some(self.elapsed))
    }
}

type BuildRequest =
    Arc<dyn Fn(&Connection, usize) -> anyhow::Result<Request<Full<Bytes>>> + Send + Sync>;

/// Sends requests `0..count` over the connections, connection `c` taking `c, c + C, …` one
/// after another, every connection at the same time; each answer must have status `expect`.
async fn phase(
    conns: &mut Vec<Connection>,
    name: &str,
    count: usize,
    expect: StatusCode,
    keep_versions: bool,
    build: BuildRequest,
    progress: &Progress,
) -> anyhow::Result<PhaseResult> {
    let bar = progress.bar(name, count);
    let workers = conns.len();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (c, mut conn) in std::mem::take(conns).into_iter().enumerate() {
        let build = build.clone();
        let bar = bar.clone();
        // One task per connection, so the client's own work spreads over the cores too.
        tasks.push(tokio::spawn(async move {
            let mut latencies = Latencies::new();
            let mut versions = Vec::new();
            let result = async {
                for i in (c..count).step_by(workers) {
                    let request = build(&conn, i)?;
                    let sent = Instant::now();
                    let response = conn.send_request(request).await?;
                    latencies.push(sent.elapsed());
                    let response = response
                        .expect(expect)
                        .with_context(|| format!("request {i}"))?;
                    if keep_versions {
                        let object: Object = serde_json::from_slice(&response.body)?;
                        versions.push((i, object.metadata.resource_version));
                    }
                    bar.inc(1);
                }
                anyhow::Ok(())
            }
            .await;
            (conn, latencies, versions, result)
        }));
    }
    let mut latencies = Latencies::new();
    let mut versions = vec![String::new(); if keep_versions { count } else { 0 }];
    let mut failure = None;
    for task in tasks {
        let (conn, l, v, result) = task.await.context("a benchmark worker panicked")?;
        conns.push(conn);
        latencies.extend(l);
        for (i, version) in v {
            versions[i] = version;
        }
        if let Err(error) = result {
            failure.get_or_insert(error);
        }
    }
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    if let Some(error) = failure {
        return Err(error.context(format!("{name} phase")));
    }
    Ok(PhaseResult {
        latencies,
        elapsed,
        versions,
    })
}

/// Opens a watch on the namespace's ConfigMaps on its own connection, then creates `count`
/// objects one at a time over `conn`, each timed from just before its request is sent until
/// its ADDED event arrives.
async fn watch_delivery(
    client: &ApiClient,
    conn: &mut Connection,
    namespace: &str,
    count: usize,
    progress: &Progress,
) -> anyhow::Result<Latencies> {
    let base = format!("/api/v1/namespaces/{namespace}/configmaps");
    // Start from the current revision, so the watch does not replay the existing objects.
    let request = conn.request(Method::GET, &format!("{base}?limit=1"), "", Bytes::new())?;
    let list: ListOf = serde_json::from_slice(
        &conn
            .send_request(request)
            .await?
            .expect(StatusCode::OK)?
            .body,
    )?;
    let mut watch_conn = client.connect().await?;
    let (status, body) = watch_conn
        .stream(&format!(
            "{base}?watch=true&resourceVersion={}",
            list.metadata.resource_version
        ))
        .await?;
    if status != StatusCode::OK {
        bail!("opening a watch: {status}");
    }
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        let mut lines = Lines::new(body);
        while let Ok(Some(line)) = lines.next_line().await {
            // The arrival time is taken before parsing, so it is not inflated by the client.
            let arrived = Instant::now();
            if let Ok(event) = serde_json::from_slice::<WatchEvent>(&line)
                && event.kind == "ADDED"
                && events_tx
                    .send((event.object.metadata.name, arrived))
                    .is_err()
            {
                break;
            }
        }
        drop(watch_conn);
    });

    let bar = progress.bar("watch", count);
    let mut latencies = Latencies::new();
    let result = async {
        for i in 0..count {
            let name = format!("watch-{i:06}");
            let body = serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": namespace},
                "data": {"value": "watched"},
            });
            let request = json_request(conn, Method::POST, &base, &body)?;
            let sent = Instant::now();
            conn.send_request(request)
                .await?
                .expect(StatusCode::CREATED)?;
            let arrived = tokio::time::timeout(WATCH_EVENT_TIMEOUT, async {
                while let Some((event_name, arrived)) = events.recv().await {
                    if event_name == name {
                        return Some(arrived);
                    }
                }
                None
            })
            .await
            .with_context(|| format!("no watch event for {name} within {WATCH_EVENT_TIMEOUT:?}"))?
            .with_context(|| format!("the watch ended before the event for {name}"))?;
            latencies.push(arrived.saturating_duration_since(sent));
            bar.inc(1);
        }
        anyhow::Ok(())
    }
    .await;
    reader.abort();
    bar.finish_and_clear();
    result.map(|()| latencies)
}

/// Creates the namespace; returns whether this run created it (and so must delete it).
pub(crate) async fn create_namespace(
    conn: &mut Connection,
    namespace: &str,
) -> anyhow::Result<bool> {
    let body = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
    let request = json_request(conn, Method::POST, "/api/v1/namespaces", &body)?;
    let response = conn.send_request(request).await?;
    match response.status {
        StatusCode::CREATED => Ok(true),
        StatusCode::CONFLICT => Ok(false),
        _ => Err(response
            .expect(StatusCode::CREATED)
            .unwrap_err()
            .context(format!("creating namespace {namespace}"))),
    }
}

/// Creates a ResourceQuota limiting ConfigMaps to `room` and waits until the quota controller
/// has counted it (until then, quota admission refuses what it cannot account for).
async fn create_quota(conn: &mut Connection, namespace: &str, room: usize) -> anyhow::Result<()> {
    let hard =
        serde_json::json!({ "count/configmaps": room.to_string(), "configmaps": room.to_string() });
    let body = serde_json::json!({
        "apiVersion": "v1", "kind": "ResourceQuota",
        "metadata": { "name": "bench-quota" },
        "spec": { "hard": hard },
    });
    let path = format!("/api/v1/namespaces/{namespace}/resourcequotas");
    let request = json_request(conn, Method::POST, &path, &body)?;
    conn.send_request(request)
        .await?
        .expect(StatusCode::CREATED)
        .context("creating the benchmark's ResourceQuota")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let response = conn
            .send(Method::GET, &format!("{path}/bench-quota"), None)
            .await?;
        let quota: serde_json::Value = serde_json::from_slice(&response.body).unwrap_or_default();
        if quota.pointer("/status/used/configmaps").is_some() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the quota controller did not count the benchmark's ResourceQuota within 30 s")
}

/// Deletes the namespace and waits (up to a limit) until it is gone.
pub(crate) async fn delete_namespace(
    conn: &mut Connection,
    namespace: &str,
    progress: &Progress,
) -> anyhow::Result<()> {
    let path = format!("/api/v1/namespaces/{namespace}");
    let response = conn.send(Method::DELETE, &path, None).await?;
    if !matches!(
        response.status,
        StatusCode::OK | StatusCode::ACCEPTED | StatusCode::NOT_FOUND
    ) {
        response.expect(StatusCode::OK)?;
    }
    let bar = progress.spinner(&format!("deleting namespace {namespace}"));
    let deadline = Instant::now() + NAMESPACE_DELETE_TIMEOUT;
    while Instant::now() < deadline {
        if conn.send(Method::GET, &path, None).await?.status == StatusCode::NOT_FOUND {
            bar.finish_and_clear();
            return Ok(());
        }
        bar.tick();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bar.finish_and_clear();
    bail!("it is still terminating after {NAMESPACE_DELETE_TIMEOUT:?}")
}

fn json_request(
    conn: &Connection,
    method: Method,
    path: &str,
    body: &serde_json::Value,
) -> anyhow::Result<Request<Full<Bytes>>> {
    conn.request(
        method,
        path,
        "application/json",
        Bytes::from(serde_json::to_vec(body)?),
    )
}

fn object_name(i: usize) -> String {
    format!("bench-{i:06}")
}

/// `bench-` and 8 hex digits from the clock and the process id: unique enough that two runs
/// (even concurrent ones) do not share a namespace.
pub(crate) fn random_namespace() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let mixed = (nanos ^ (u64::from(std::process::id()) << 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!("bench-{:08x}", mixed >> 32)
}

/// Progress bars on a terminal, nothing otherwise.
pub(crate) struct Progress {
    pub(crate) enabled: bool,
}

impl Progress {
    pub(crate) fn bar(&self, name: &str, len: usize) -> ProgressBar {
        if !self.enabled {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len as u64);
        if let Ok(style) =
            ProgressStyle::with_template("{prefix:>24} {bar:40} {pos}/{len} {per_sec}")
        {
            bar.set_style(style);
        }
        bar.set_prefix(name.to_string());
        bar
    }

    pub(crate) fn spinner(&self, message: &str) -> ProgressBar {
        if !self.enabled {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new_spinner();
        bar.set_message(message.to_string());
        bar
    }
}

#[derive(Deserialize)]
struct Object {
    metadata: Metadata,
}

#[derive(Deserialize)]
struct Metadata {
    #[serde(default)]
    name: String,
    #[serde(default, rename = "resourceVersion")]
    resource_version: String,
}

#[derive(Deserialize)]
struct ListOf {
    metadata: Metadata,
    #[serde(default)]
    items: Vec<Object>,
}

#[derive(Deserialize)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    object: Object,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_valid_names_and_differ() {
        let a = random_namespace();
        std::thread::sleep(Duration::from_millis(1));
        let b = random_namespace();
        assert_ne!(a, b);
        for ns in [a, b] {
            assert_eq!(ns.len(), "bench-".len() + 8);
            assert!(
                ns.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{ns}"
            );
        }
    }
}
