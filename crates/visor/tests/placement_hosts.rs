//! Placement with real host agents: three `visor agent` processes (simulated runtime), each
//! its own host in its own zone, joined with the server's token like any host.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::hosts::TestAgent;
use common::{Backend, TestServer, eventually};

const WAIT: Duration = Duration::from_secs(60);

fn pods_by_node(server: &TestServer, selector: &str) -> BTreeMap<String, usize> {
    let pods = server.json(&["get", "pods", "-l", selector]);
    let mut placed = BTreeMap::new();
    for pod in pods["items"].as_array().unwrap() {
        let running = pod["status"]["phase"] == "Running";
        let deleting = !pod["metadata"]["deletionTimestamp"].is_null();
        if running
            && !deleting
            && let Some(node) = pod["spec"]["nodeName"].as_str()
        {
            *placed.entry(node.to_string()).or_default() += 1;
        }
    }
    placed
}

#[test]
fn zone_spread_lands_across_hosts_and_a_lost_host_is_replaced_elsewhere() {
    // SAFETY: set before any thread starts; the server process inherits them.
    unsafe {
        std::env::set_var("VISOR_NODE_MONITOR_GRACE", "3s");
        std::env::set_var("VISOR_HOST_FAILURE_GRACE", "3s");
    }
    let server = TestServer::start(Backend::Sqlite);
    let mut agents: Vec<TestAgent> = ["zone-a", "zone-b", "zone-c"]
        .iter()
        .map(|zone| {
            let name = format!("host-{}", zone.trim_start_matches("zone-"));
            TestAgent::start(
                &server,
                &name,
                &["--runtime", "sim", "--zone", zone, "--lease-interval", "1"],
            )
        })
        .collect();
    for agent in &mut agents {
        agent.wait_ready(&server, WAIT);
    }
    // The zones appear as Zone objects with their hosts.
    eventually("three zones with a Ready host each", WAIT, || {
        let out = server.kubectl(&["get", "zones", "-o", "name"]);
        let zones = String::from_utf8_lossy(&out.stdout).lines().count();
        (zones == 3).then_some(())
    });

    server.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: spread\nspec:\n  replicas: 6\n  selector:\n    matchLabels: {app: spread}\n  template:\n    metadata:\n      labels: {app: spread}\n    spec:\n      terminationGracePeriodSeconds: 1\n      topologySpreadConstraints:\n      - maxSkew: 1\n        topologyKey: topology.kubernetes.io/zone\n        whenUnsatisfiable: DoNotSchedule\n        labelSelector:\n          matchLabels: {app: spread}\n      containers:\n      - name: app\n        image: registry.test/app:1\n        resources:\n          requests: {cpu: 100m, memory: 64Mi}\n",
    );
    let placed = eventually("six replicas Running, two per zone", WAIT, || {
        let placed = pods_by_node(&server, "app=spread");
        (placed.values().sum::<usize>() == 6).then_some(placed)
    });
    assert_eq!(
        placed.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2],
        "spread across the zones: {placed:?}"
    );

    server.ok(&["delete", "deployment", "spread"]);

    // One host's agent dies: after the grace its pods come back on the other hosts.
    server.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: ha\nspec:\n  replicas: 6\n  selector:\n    matchLabels: {app: ha}\n  template:\n    metadata:\n      labels: {app: ha}\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: app\n        image: registry.test/app:1\n        resources:\n          requests: {cpu: 100m, memory: 64Mi}\n",
    );
    let before = eventually("six replicas Running on three hosts", WAIT, || {
        let placed = pods_by_node(&server, "app=ha");
        (placed.values().sum::<usize>() == 6 && placed.len() == 3).then_some(placed)
    });
    let lost = agents.remove(1);
    assert!(before.contains_key(&lost.name), "{before:?}");
    let lost_name = lost.name.clone();
    drop(lost);
    let started = Instant::now();
    eventually("the lost host NotReady", WAIT, || {
        let out = server.kubectl(&[
            "get",
            "node",
            &lost_name,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]);
        (String::from_utf8_lossy(&out.stdout).trim() == "Unknown").then_some(())
    });
    let replaced = eventually("six replicas Running on the remaining hosts", WAIT, || {
        let placed = pods_by_node(&server, "app=ha");
        (placed.values().sum::<usize>() == 6 && !placed.contains_key(&lost_name)).then_some(placed)
    });
    let took = started.elapsed();
    // Node monitor grace (3 s) + host failure grace (3 s) + 10 s.
    assert!(
        took < Duration::from_secs(16),
        "replacements took {took:?}: {replaced:?}"
    );
    let node = server.json(&["get", "node", &lost_name]);
    let taints: Vec<String> = node["spec"]["taints"]
        .as_array()
        .map(|t| {
            t.iter()
                .map(|t| {
                    format!(
                        "{}:{}",
                        t["key"].as_str().unwrap(),
                        t["effect"].as_str().unwrap()
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(
        taints.contains(&"node.kubernetes.io/unreachable:NoExecute".to_string()),
        "{taints:?}"
    );
    server.ok(&["delete", "deployment", "ha"]);
}
