//! The placement benchmark's end-to-end flow at CI size: a real `visor server` with 500
//! simulated hosts in three zones (three `visor agent --runtime sim` processes), 1,000 pods
//! with requests (created over several connections) that must all run, spread across the zones, on no
//! over-committed host, and then all go away. Also runs `visor bench scheduler --end-to-end`
//! on a small cluster of its own, as a user would.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::hosts::TestAgent;
use common::{Backend, TestServer};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use visor::client::{ApiClient, Connection};

const HOSTS_PER_ZONE: usize = 167;
const ZONES: [(&str, &str); 3] = [
    ("zone-a", "10.64.0.0/12"),
    ("zone-b", "10.80.0.0/12"),
    ("zone-c", "10.96.0.0/12"),
];
const PODS: usize = 1000;
/// Every pod asks for 100 millicores and 256 MiB.
const POD_CPU_MILLIS: i64 = 100;
const POD_MEMORY_BYTES: i64 = 256 << 20;

/// Polls `probe` once a second (listing 1,000 pods more often would only slow the server),
/// failing with the last thing it reported after `timeout`.
fn wait_until(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<(), String>,
) -> Duration {
    let started = Instant::now();
    loop {
        match probe() {
            Ok(()) => return started.elapsed(),
            Err(state) if started.elapsed() > timeout => {
                panic!("{what}: not done after {timeout:?}: {state}")
            }
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

/// Sends one request per pod index over eight connections, as a client creating many pods at
/// once would; any other status than the expected one fails the test.
fn for_each_pod(
    server: &TestServer,
    request: impl Fn(&Connection, usize) -> anyhow::Result<(Request<Full<Bytes>>, StatusCode)>
    + Send
    + Sync
    + 'static,
) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let kubeconfig = server.kubeconfig();
    runtime.block_on(async move {
        let client = ApiClient::from_kubeconfig(&kubeconfig).await.unwrap();
        let next = Arc::new(AtomicUsize::new(0));
        let request = Arc::new(request);
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let mut conn = client.connect().await.unwrap();
            let (next, request) = (next.clone(), request.clone());
            workers.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= PODS {
                        return;
                    }
                    let (req, expected) = request(&conn, i).unwrap();
                    let response = conn.send_request(req).await.unwrap();
                    assert_eq!(response.status, expected, "{}", response.text());
                }
            });
        }
        while let Some(outcome) = workers.join_next().await {
            outcome.unwrap();
        }
    });
}

fn quantity(node: &Value, key: &str, milli: bool) -> i64 {
    let text = node["status"]["allocatable"][key]
        .as_str()
        .unwrap_or_else(|| panic!("node without allocatable {key}: {node}"));
    visor_scheduler::quantity::parse(text, milli)
        .unwrap_or_else(|| panic!("allocatable {key} {text:?} is not a quantity"))
}

fn ready(node: &Value) -> bool {
    node["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

#[test]
fn a_thousand_pods_run_across_three_zones_of_simulated_hosts_and_go_away() {
    let server = TestServer::start(Backend::Sqlite);
    let kubeconfig = server.kubeconfig().to_string_lossy().to_string();
    let count = HOSTS_PER_ZONE.to_string();
    let _agents: Vec<TestAgent> = ZONES
        .iter()
        .map(|(zone, cidr)| {
            TestAgent::start(
                &server,
                &format!("{zone}-host"),
                &[
                    "--runtime",
                    "sim",
                    "--count",
                    &count,
                    "--kubeconfig",
                    &kubeconfig,
                    "--pod-cidr",
                    cidr,
                    "--zone",
                    zone,
                ],
            )
        })
        .collect();
    let hosts = ZONES.len() * HOSTS_PER_ZONE;
    let mut nodes = Vec::new();
    wait_until("all hosts Ready", Duration::from_secs(120), || {
        nodes = server.json(&["get", "nodes"])["items"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let ready = nodes.iter().filter(|n| ready(n)).count();
        if ready == hosts {
            Ok(())
        } else {
            Err(format!("{ready} of {hosts} Ready"))
        }
    });
    let zone_of: HashMap<String, String> = nodes
        .iter()
        .map(|n| {
            (
                n["metadata"]["name"].as_str().unwrap().to_string(),
                n["metadata"]["labels"]["topology.kubernetes.io/zone"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();

    server.ok(&["create", "namespace", "scale"]);
    let started = Instant::now();
    for_each_pod(&server, |conn, i| {
        let body = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": format!("many-{i:04}"), "labels": {"app": "many"}},
            "spec": {"containers": [{
                "name": "main",
                "image": "busybox",
                "resources": {"requests": {"cpu": format!("{POD_CPU_MILLIS}m"), "memory": "256Mi"}},
            }]},
        });
        let request = conn.request(
            Method::POST,
            "/api/v1/namespaces/scale/pods",
            "application/json",
            Bytes::from(body.to_string()),
        )?;
        Ok((request, StatusCode::CREATED))
    });
    eprintln!("{PODS} pods created in {:?}", started.elapsed());
    let mut pods = Vec::new();
    let took = wait_until("all pods Running", Duration::from_secs(120), || {
        pods = server.json(&["get", "pods", "-n", "scale"])["items"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let running = pods
            .iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .count();
        if running == PODS && pods.len() == PODS {
            Ok(())
        } else {
            Err(format!("{running} of {} pods Running", pods.len()))
        }
    });
    eprintln!("{PODS} pods Running on {hosts} simulated hosts after {took:?}");

    let mut per_host: HashMap<&str, i64> = HashMap::new();
    for pod in &pods {
        let host = pod["spec"]["nodeName"]
            .as_str()
            .expect("a Running pod is bound");
        assert!(
            pod["status"]["podIP"]
                .as_str()
                .is_some_and(|ip| !ip.is_empty()),
            "Running pod without an IP: {pod}"
        );
        *per_host.entry(host).or_default() += 1;
    }
    let mut per_zone: BTreeMap<&str, i64> = BTreeMap::new();
    for (host, count) in &per_host {
        let node = nodes
            .iter()
            .find(|n| n["metadata"]["name"] == *host)
            .unwrap_or_else(|| panic!("pods bound to unknown host {host}"));
        assert!(
            count * POD_CPU_MILLIS <= quantity(node, "cpu", true)
                && count * POD_MEMORY_BYTES <= quantity(node, "memory", false)
                && *count <= quantity(node, "pods", false),
            "host {host} is over-committed with {count} pods"
        );
        *per_zone.entry(zone_of[*host].as_str()).or_default() += count;
    }
    assert_eq!(
        per_zone.keys().copied().collect::<Vec<_>>(),
        ["zone-a", "zone-b", "zone-c"],
        "pods per zone: {per_zone:?}"
    );
    // Equal zones of equal hosts: each zone holds about a third of the pods.
    for (zone, count) in &per_zone {
        assert!(
            (*count - (PODS as i64) / 3).abs() <= (PODS as i64) / 10,
            "{zone} holds {count} of {PODS} pods: {per_zone:?}"
        );
    }

    for_each_pod(&server, |conn, i| {
        let path = format!("/api/v1/namespaces/scale/pods/many-{i:04}");
        Ok((
            conn.request(Method::DELETE, &path, "application/json", Bytes::new())?,
            StatusCode::OK,
        ))
    });
    let took = wait_until("all pods gone", Duration::from_secs(60), || {
        let left = server.json(&["get", "pods", "-n", "scale"])["items"]
            .as_array()
            .map_or(0, Vec::len);
        if left == 0 {
            Ok(())
        } else {
            Err(format!("{left} pods left"))
        }
    });
    eprintln!("{PODS} pods gone after {took:?}");
}

/// The benchmark itself, on a cluster it starts: it must finish, report its figures and
/// leave none of its processes behind.
#[test]
fn the_end_to_end_bench_runs_on_a_cluster_of_its_own() {
    let output = Command::new(env!("CARGO_BIN_EXE_visor"))
        .args([
            "bench",
            "scheduler",
            "--end-to-end",
            "--hosts",
            "30",
            "--pods",
            "90",
            "--json",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the bench failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metrics: HashMap<String, f64> = stdout
        .lines()
        .map(|line| {
            let metric: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            (
                metric["metric"].as_str().unwrap().to_string(),
                metric["value"].as_f64().unwrap(),
            )
        })
        .collect();
    for key in ["all_running_seconds", "all_deleted_seconds"] {
        assert!(metrics[key] > 0.0, "{key}: {metrics:?}");
    }
    let zones: f64 = ["zone-a", "zone-b", "zone-c"]
        .iter()
        .map(|z| metrics[&format!("pods_in_{z}")])
        .sum();
    assert_eq!(zones, 90.0, "{metrics:?}");
    // 90 equal pods on 30 equal hosts: three each.
    assert_eq!(metrics["busiest_host_pods"], 3.0, "{metrics:?}");
    assert_eq!(metrics["idlest_host_pods"], 3.0, "{metrics:?}");
    assert!(metrics["server_cpu_seconds_running"] > 0.0, "{metrics:?}");
    // The bench's processes run with their data in a temporary directory named after it.
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        .filter(|cmdline| cmdline.contains("visor-bench-scheduler-"))
        .collect();
    assert!(
        left.is_empty(),
        "the bench left processes running: {left:?}"
    );
}
