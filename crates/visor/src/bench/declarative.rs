//! `visor bench declarative`: the costs of working declaratively.
//!
//! - **Server-side apply**: `--objects` ConfigMaps applied one after another on one keep-alive
//!   connection (`PATCH` with `application/apply-patch+yaml`), first creating them, then
//!   re-applying a changed configuration; throughput, p50 and p99 of each pass.
//! - **Foreground deletion**: a Deployment whose controllers created `--pods` pods is deleted
//!   with `propagationPolicy=Foreground`; the time from the delete until the Deployment, its
//!   ReplicaSet and every pod are gone. This needs the server's controllers (as `visor server`
//!   runs them); pods need no host, since unbound pods are deleted at once.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use http::{Method, StatusCode};

use super::api::{Progress, create_namespace, delete_namespace, random_namespace};
use super::report::{Report, Row};
use super::stats::Latencies;
use crate::client::{ApiClient, Connection};

const BENCH: &str = "declarative";
/// How long the controllers may take to create the Deployment's pods.
const PODS_READY_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the foreground deletion may take before the benchmark gives up.
const DELETION_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Args)]
pub struct DeclarativeArgs {
    /// The kubeconfig of the server to measure.
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// ConfigMaps to apply server-side.
    #[arg(long, default_value_t = 1000)]
    pub objects: usize,
    /// Pods the Deployment owns when it is deleted in the foreground.
    #[arg(long, default_value_t = 1000)]
    pub pods: usize,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: DeclarativeArgs) -> anyhow::Result<()> {
    let client = ApiClient::from_kubeconfig(&args.kubeconfig).await?;
    let namespace = random_namespace();
    let progress = Progress {
        enabled: !args.json && std::io::IsTerminal::is_terminal(&std::io::stdout()),
    };
    let mut conn = client.connect().await?;
    create_namespace(&mut conn, &namespace).await?;
    let mut report = Report::new(BENCH, args.json);
    let outcome = async {
        for (pass, label, key) in [
            (0, "server-side apply (create)", "apply_create"),
            (1, "server-side apply (change)", "apply_change"),
        ] {
            let (latencies, elapsed) =
                apply_pass(&mut conn, &namespace, args.objects, pass, &progress).await?;
            report.row(Row::new(label, key, latencies, Some(elapsed)));
        }
        let gone = foreground_deletion(&mut conn, &namespace, args.pods, &progress).await?;
        report.figure(
            format!(
                "foreground deletion of a Deployment with {} pods",
                args.pods
            ),
            "foreground_delete_seconds",
            gone.as_secs_f64(),
            "s",
        );
        anyhow::Ok(())
    }
    .await;
    if outcome.is_ok() {
        if !args.json {
            println!(
                "visor bench declarative: {} objects, {} pods, server {}, namespace {namespace}\n",
                args.objects,
                args.pods,
                client.addr()
            );
        }
        report.print(&mut std::io::stdout().lock())?;
    }
    let mut cleanup = client.connect().await?;
    if let Err(error) = delete_namespace(&mut cleanup, &namespace, &progress).await {
        eprintln!("warning: namespace {namespace} was not removed: {error:#}");
    }
    outcome
}

/// Applies every ConfigMap once; `pass` changes the data so each apply writes.
async fn apply_pass(
    conn: &mut Connection,
    namespace: &str,
    n: usize,
    pass: usize,
    progress: &Progress,
) -> anyhow::Result<(Latencies, Duration)> {
    let bar = progress.bar("server-side apply", n);
    let mut latencies = Latencies::new();
    let started = Instant::now();
    for i in 0..n {
        let name = format!("applied-{i:06}");
        let body = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  labels: {{bench: declarative}}\ndata:\n  pass: \"{pass}\"\n  index: \"{i}\"\n"
        );
        let path = format!(
            "/api/v1/namespaces/{namespace}/configmaps/{name}?fieldManager=visor-bench&force=true"
        );
        let request = conn.request(
            Method::PATCH,
            &path,
            "application/apply-patch+yaml",
            Bytes::from(body),
        )?;
        let t = Instant::now();
        let response = conn.send_request(request).await?;
        latencies.push(t.elapsed());
        if !matches!(response.status, StatusCode::OK | StatusCode::CREATED) {
            bail!("applying {name}: {} {}", response.status, response.text());
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok((latencies, started.elapsed()))
}

async fn count(conn: &mut Connection, path: &str) -> anyhow::Result<usize> {
    let response = conn
        .send(Method::GET, path, None)
        .await?
        .expect(StatusCode::OK)?;
    let list = response.json()?;
    Ok(list["items"].as_array().map(Vec::len).unwrap_or(0))
}

/// Creates a Deployment, waits for its pods, deletes it in the foreground and times the
/// deletion until nothing of it is left.
async fn foreground_deletion(
    conn: &mut Connection,
    namespace: &str,
    pods: usize,
    progress: &Progress,
) -> anyhow::Result<Duration> {
    let deployment = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "owner"},
        "spec": {
            "replicas": pods,
            "selector": {"matchLabels": {"app": "owner"}},
            "template": {"metadata": {"labels": {"app": "owner"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}},
        },
    });
    let path = format!("/apis/apps/v1/namespaces/{namespace}/deployments");
    conn.send(
        Method::POST,
        &path,
        Some(Bytes::from(serde_json::to_vec(&deployment)?)),
    )
    .await?
    .expect(StatusCode::CREATED)
    .context("creating the Deployment")?;
    let pods_path = format!("/api/v1/namespaces/{namespace}/pods?labelSelector=app%3Downer");
    let bar = progress.bar("waiting for pods", pods);
    let deadline = Instant::now() + PODS_READY_TIMEOUT;
    loop {
        let n = count(conn, &pods_path).await?;
        bar.set_position(n as u64);
        if n >= pods {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {n} of {pods} pods after {PODS_READY_TIMEOUT:?}: are the server's controllers running?"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bar.finish_and_clear();

    let started = Instant::now();
    let body = serde_json::json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Foreground"});
    conn.send(
        Method::DELETE,
        &format!("{path}/owner"),
        Some(Bytes::from(serde_json::to_vec(&body)?)),
    )
    .await?
    .expect(StatusCode::OK)
    .context("deleting the Deployment")?;
    let replicasets = format!("/apis/apps/v1/namespaces/{namespace}/replicasets");
    let spinner = progress.spinner("foreground deletion");
    loop {
        let owner_gone = conn
            .send(Method::GET, &format!("{path}/owner"), None)
            .await?
            .status
            == StatusCode::NOT_FOUND;
        if owner_gone
            && count(conn, &replicasets).await? == 0
            && count(conn, &pods_path).await? == 0
        {
            spinner.finish_and_clear();
            return Ok(started.elapsed());
        }
        if started.elapsed() > DELETION_TIMEOUT {
            bail!("the Deployment and its dependents were not gone after {DELETION_TIMEOUT:?}");
        }
        spinner.tick();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
