//! Placement end to end: the scheduler, the node lifecycle controller, evictions with
//! PodDisruptionBudgets, zones and the balancer, driven with the real `kubectl` against a real
//! `visor server`.
//!
//! Hosts are played by the test: it creates Node objects (allocatable, zone label, Ready
//! condition) and renews their Leases in `kube-node-lease`, exactly what the agent does, and
//! moves pods along by patching their status (Running and Ready) as the agent would. The
//! placement machinery reaches the server only through the API, so these run on SQLite only.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Backend, TestServer, eventually};
use http::Method;
use serde_json::{Value, json};

/// How long any one expected change may take.
const SETTLE: Duration = Duration::from_secs(20);

fn node_yaml(name: &str, zone: &str, cpu: &str, memory: &str) -> String {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name,
            "topology.kubernetes.io/zone": zone,
        }},
        "status": {
            "capacity": {"cpu": cpu, "memory": memory, "pods": "110"},
            "allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "ready", "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        }
    })
    .to_string()
}

/// Registers a host the way the agent does: its Node, and its Lease.
fn add_host(server: &TestServer, name: &str, zone: &str, cpu: &str, memory: &str) {
    server.ok_stdin(&["create", "-f", "-"], &node_yaml(name, zone, cpu, memory));
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40,
            "renewTime": "2026-01-01T00:00:00.000000Z"},
    });
    server.ok_stdin(&["apply", "-f", "-"], &lease.to_string());
}

/// Renews the leases of the named hosts every 300 ms while its `alive` flag is set: the
/// agents' heartbeats.
struct Heartbeats {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Heartbeats {
    fn start(kubeconfig: PathBuf, hosts: Vec<(String, Arc<AtomicBool>)>) -> Heartbeats {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut beat = 0u64;
            while !stopping.load(Ordering::SeqCst) {
                beat += 1;
                for (host, alive) in &hosts {
                    if !alive.load(Ordering::SeqCst) {
                        continue;
                    }
                    let patch = json!({"spec": {"renewTime":
                        format!("2026-01-01T00:00:{:02}.{:06}Z", beat % 60, beat)}});
                    let _ = Command::new("kubectl")
                        .arg("--kubeconfig")
                        .arg(&kubeconfig)
                        .args([
                            "-n",
                            "kube-node-lease",
                            "patch",
                            "lease",
                            host,
                            "--type=merge",
                            "-p",
                        ])
                        .arg(patch.to_string())
                        .output();
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        Heartbeats {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Heartbeats {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A pod spec of one busybox container requesting `cpu` and 64Mi, with `extra_spec`'s fields
/// set on top.
fn pod_spec(cpu: &str, extra_spec: Value) -> Value {
    let mut spec = json!({
        "containers": [{"name": "c", "image": "busybox",
            "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}],
        "terminationGracePeriodSeconds": 0,
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    spec
}

fn pod_yaml(name: &str, cpu: &str, extra_spec: Value, labels: Value) -> String {
    let spec = pod_spec(cpu, extra_spec);
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels}, "spec": spec})
    .to_string()
}

fn deployment_yaml(name: &str, replicas: i32, cpu: &str, extra_spec: Value) -> String {
    let spec = pod_spec(cpu, extra_spec);
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": spec}}})
    .to_string()
}

fn node_of(server: &TestServer, pod: &str) -> String {
    server.ok(&["get", "pod", pod, "-o", "jsonpath={.spec.nodeName}"])
}

/// The live (not terminating) pods of `app`, as (name, node).
fn placements(server: &TestServer, app: &str) -> Vec<(String, String)> {
    let list = server.json(&["get", "pods", "-l", &format!("app={app}")]);
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                p["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Plays the agent: marks the pod Running and Ready.
fn mark_running(server: &TestServer, pod: &str) {
    let patch = json!({"status": {"phase": "Running", "conditions": [
        {"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}]}});
    server.ok(&[
        "patch",
        "pod",
        pod,
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch.to_string(),
    ]);
}

/// Waits until `app` has `n` live pods, all bound, and returns them.
fn bound(server: &TestServer, app: &str, n: usize) -> Vec<(String, String)> {
    eventually(&format!("{n} bound pods of {app}"), SETTLE, || {
        let p = placements(server, app);
        (p.len() == n && p.iter().all(|(_, node)| !node.is_empty())).then_some(p)
    })
}

#[test]
fn pods_are_bound_and_an_oversized_pod_waits_for_a_host_with_room() {
    let server = TestServer::start(Backend::Sqlite);
    add_host(&server, "h1", "z1", "2", "4Gi");
    add_host(&server, "h2", "z2", "2", "4Gi");
    server.ok_stdin(
        &["create", "-f", "-"],
        &pod_yaml("small", "500m", json!({}), json!({})),
    );
    let host = eventually("small bound", SETTLE, || {
        Some(node_of(&server, "small")).filter(|n| !n.is_empty())
    });
    assert!(host == "h1" || host == "h2", "{host}");
    let condition = server.ok(&[
        "get",
        "pod",
        "small",
        "-o",
        r#"jsonpath={.status.conditions[?(@.type=="PodScheduled")].status}"#,
    ]);
    assert_eq!(condition, "True");
    let events = server.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=small",
    ]);
    assert!(
        events.contains("Scheduled")
            && events.contains(&format!("Successfully assigned default/small to {host}")),
        "{events}"
    );

    server.ok_stdin(
        &["create", "-f", "-"],
        &pod_yaml("big", "3", json!({}), json!({})),
    );
    let message = eventually("big reported unschedulable", SETTLE, || {
        let m = server.ok(&[
            "get",
            "pod",
            "big",
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="PodScheduled")].message}"#,
        ]);
        (!m.is_empty()).then_some(m)
    });
    assert_eq!(message, "0/2 hosts are available: 2 Insufficient cpu.");
    let reason = server.ok(&[
        "get",
        "pod",
        "big",
        "-o",
        r#"jsonpath={.status.conditions[?(@.type=="PodScheduled")].reason}"#,
    ]);
    assert_eq!(reason, "Unschedulable");
    assert_eq!(node_of(&server, "big"), "");
    let described = server.ok(&["describe", "pod", "big"]);
    assert!(described.contains("FailedScheduling"), "{described}");

    // A host with room joins: the pod is placed there without being touched.
    add_host(&server, "h3", "z1", "4", "8Gi");
    eventually("big placed on h3", SETTLE, || {
        (node_of(&server, "big") == "h3").then_some(())
    });

    // A binding of a bound pod is refused, as upstream.
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "big"},
        "target": {"apiVersion": "v1", "kind": "Node", "name": "h1"}});
    let (status, body) = server.raw(
        Method::POST,
        "/api/v1/namespaces/default/pods/big/binding",
        "application/json",
        binding.to_string(),
    );
    assert_eq!(status.as_u16(), 409, "{body}");
    assert!(
        body.contains("pod big is already assigned to node \\\"h3\\\""),
        "{body}"
    );
}

#[test]
fn anti_affinity_keeps_replicas_apart_and_zone_spread_evens_zones() {
    let server = TestServer::start(Backend::Sqlite);
    add_host(&server, "a1", "zone-a", "4", "8Gi");
    add_host(&server, "a2", "zone-a", "4", "8Gi");
    add_host(&server, "b1", "zone-b", "4", "8Gi");
    let anti = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "apart"}}, "topologyKey": "kubernetes.io/hostname"}]}}});
    server.ok_stdin(
        &["apply", "-f", "-"],
        &deployment_yaml("apart", 4, "100m", anti),
    );
    // Three hosts: three replicas placed, each on its own host; the fourth waits.
    let placed = eventually("three replicas placed apart", SETTLE, || {
        let p = placements(&server, "apart");
        let bound: Vec<String> = p
            .iter()
            .filter(|(_, n)| !n.is_empty())
            .map(|(_, n)| n.clone())
            .collect();
        (p.len() == 4 && bound.len() == 3).then_some(bound)
    });
    let mut hosts = placed.clone();
    hosts.sort();
    assert_eq!(hosts, ["a1", "a2", "b1"]);
    let pending = eventually("the fourth reported", SETTLE, || {
        let list = server.json(&[
            "get",
            "pods",
            "-l",
            "app=apart",
            "--field-selector",
            "spec.nodeName=",
        ]);
        list["items"][0]["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "PodScheduled"))
            .and_then(|c| c["message"].as_str().map(str::to_string))
    });
    assert_eq!(
        pending,
        "0/3 hosts are available: 3 host(s) didn't match pod anti-affinity rules."
    );

    let spread = json!({"topologySpreadConstraints": [{"maxSkew": 1,
        "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {"app": "spread"}}}]});
    server.ok_stdin(
        &["apply", "-f", "-"],
        &deployment_yaml("spread", 6, "100m", spread),
    );
    let p = bound(&server, "spread", 6);
    let in_a = p.iter().filter(|(_, n)| n.starts_with('a')).count();
    assert_eq!((in_a, 6 - in_a), (3, 3), "{p:?}");

    // Zones were created for the hosts' labels and show their inventory.
    let zones = eventually("zones with status", SETTLE, || {
        let out = server.ok(&["get", "zones"]);
        (out.contains("zone-a") && out.contains("2/2") && out.contains("1/1")).then_some(out)
    });
    let header: Vec<&str> = zones.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "HOSTS", "CPU", "MEMORY", "FREE", "CPU", "FREE", "MEMORY", "AGE"
        ]
    );
    // zone-a: 2 hosts × 4 CPU; 2 "apart" + 3 "spread" replicas of 100m.
    let zone_a = eventually("zone-a allocation counted", SETTLE, || {
        let z = server.json(&["get", "zone", "zone-a"]);
        (z["status"]["allocated"]["cpu"] == "500m").then_some(z)
    });
    assert_eq!(zone_a["status"]["capacity"]["cpu"], "8");
    assert_eq!(zone_a["status"]["free"]["cpu"], "7500m");
    assert_eq!(zone_a["status"]["summary"]["cpu"], "500m/8 (6%)");
}

#[test]
fn cordon_and_drain_honour_a_disruption_budget() {
    let server = TestServer::start(Backend::Sqlite);
    add_host(&server, "h1", "z1", "4", "8Gi");
    add_host(&server, "h2", "z1", "4", "8Gi");
    server.ok_stdin(
        &["apply", "-f", "-"],
        &deployment_yaml("web", 2, "100m", json!({})),
    );
    let p = bound(&server, "web", 2);
    // Replicas of one workload are spread over hosts.
    assert_ne!(p[0].1, p[1].1, "{p:?}");
    for (pod, _) in &p {
        mark_running(&server, pod);
    }
    let pdb = json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "web"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}});
    server.ok_stdin(&["apply", "-f", "-"], &pdb.to_string());
    eventually("budget computed", SETTLE, || {
        let b = server.json(&["get", "pdb", "web"]);
        (b["status"]["disruptionsAllowed"] == 1
            && b["status"]["currentHealthy"] == 2
            && b["status"]["desiredHealthy"] == 1
            && b["status"]["expectedPods"] == 2)
            .then_some(())
    });
    let table = server.ok(&["get", "pdb", "web"]);
    assert!(table.contains("ALLOWED DISRUPTIONS"), "{table}");

    // Cordon: the host takes no new work.
    server.ok(&["cordon", "h1"]);
    let nodes = server.ok(&["get", "nodes"]);
    assert!(
        nodes
            .lines()
            .any(|l| l.starts_with("h1") && l.contains("SchedulingDisabled")),
        "{nodes}"
    );
    server.ok_stdin(
        &["create", "-f", "-"],
        &pod_yaml("late", "100m", json!({}), json!({})),
    );
    eventually("late placed on h2", SETTLE, || {
        (node_of(&server, "late") == "h2").then_some(())
    });

    // Drain h1: its replica is evicted (the budget allows one) and replaced on h2.
    server.ok(&["delete", "pod", "late", "--grace-period=0", "--force"]);
    let out = server.ok(&["drain", "h1", "--grace-period=0", "--timeout=60s"]);
    assert!(out.contains("evicted") && out.contains("drained"), "{out}");
    let after = bound(&server, "web", 2);
    assert!(after.iter().all(|(_, n)| n == "h2"), "{after:?}");

    // Both replicas on h2 now; the replacement is not Ready yet, so the budget (one must stay
    // available) forbids evicting the other.
    let original = p.iter().find(|(_, n)| n == "h2").unwrap().0.clone();
    eventually("budget exhausted", SETTLE, || {
        let b = server.json(&["get", "pdb", "web"]);
        (b["status"]["disruptionsAllowed"] == 0 && b["status"]["currentHealthy"] == 1).then_some(())
    });
    let eviction = json!({"apiVersion": "policy/v1", "kind": "Eviction",
        "metadata": {"name": original, "namespace": "default"}});
    let (status, body) = server.raw(
        Method::POST,
        &format!("/api/v1/namespaces/default/pods/{original}/eviction"),
        "application/json",
        eviction.to_string(),
    );
    assert_eq!(status.as_u16(), 429, "{body}");
    assert!(
        body.contains("Cannot evict pod as it would violate the pod's disruption budget."),
        "{body}"
    );
    assert!(
        body.contains("The disruption budget web needs 1 healthy pods and has 1 currently"),
        "{body}"
    );
    let err = server.fails(&["drain", "h2", "--grace-period=0", "--timeout=3s"]);
    assert!(err.contains("disruption budget"), "{err}");
    assert!(
        placements(&server, "web")
            .iter()
            .any(|(p, _)| *p == original)
    );
    // The failed drain left h2 cordoned, as upstream's does.
    server.ok(&["uncordon", "h1", "h2"]);
    let nodes = server.ok(&["get", "nodes"]);
    assert!(!nodes.contains("SchedulingDisabled"), "{nodes}");
}

#[test]
fn a_host_that_stops_heartbeating_is_marked_and_its_pods_come_back_elsewhere() {
    // SAFETY: each test runs in its own process under nextest; nothing else reads the
    // environment concurrently at this point (no threads started yet).
    unsafe {
        std::env::set_var("VISOR_NODE_MONITOR_GRACE", "2s");
        std::env::set_var("VISOR_HOST_FAILURE_GRACE", "3s");
    }
    let server = TestServer::start(Backend::Sqlite);
    add_host(&server, "h1", "z1", "4", "8Gi");
    add_host(&server, "h2", "z2", "4", "8Gi");
    let h1_alive = Arc::new(AtomicBool::new(true));
    let _beats = Heartbeats::start(
        server.kubeconfig(),
        vec![
            ("h1".into(), h1_alive.clone()),
            ("h2".into(), Arc::new(AtomicBool::new(true))),
        ],
    );
    server.ok_stdin(
        &["apply", "-f", "-"],
        &deployment_yaml("ha", 2, "100m", json!({})),
    );
    let p = bound(&server, "ha", 2);
    for (pod, _) in &p {
        mark_running(&server, pod);
    }
    let on_h1: Vec<String> = p
        .iter()
        .filter(|(_, n)| n == "h1")
        .map(|(p, _)| p.clone())
        .collect();
    assert_eq!(on_h1.len(), 1, "{p:?}");
    // Healthy hosts are left alone.
    std::thread::sleep(Duration::from_secs(3));
    let node = server.json(&["get", "node", "h1"]);
    assert!(node["spec"]["taints"].is_null(), "{node}");

    // h1's agent dies.
    h1_alive.store(false, Ordering::SeqCst);
    let stopped = std::time::Instant::now();
    let node = eventually("h1 marked unreachable", SETTLE, || {
        let n = server.json(&["get", "node", "h1"]);
        let taints = n["spec"]["taints"].as_array().cloned().unwrap_or_default();
        (taints.len() == 2).then_some(n)
    });
    let ready = node["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready["status"], "Unknown");
    assert_eq!(ready["reason"], "NodeStatusUnknown");
    assert_eq!(ready["message"], "Kubelet stopped posting node status.");
    let mut taints: Vec<String> = node["spec"]["taints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            format!(
                "{}:{}",
                t["key"].as_str().unwrap(),
                t["effect"].as_str().unwrap()
            )
        })
        .collect();
    taints.sort();
    assert_eq!(
        taints,
        [
            "node.kubernetes.io/unreachable:NoExecute",
            "node.kubernetes.io/unreachable:NoSchedule"
        ]
    );
    let nodes = server.ok(&["get", "nodes"]);
    assert!(
        nodes
            .lines()
            .any(|l| l.starts_with("h1") && l.contains("NotReady")),
        "{nodes}"
    );

    // After the grace, the pod on h1 is gone and its replacement runs on h2.
    eventually(
        "the replacement on h2",
        Duration::from_secs(2 + 3 + 10),
        || {
            let now = placements(&server, "ha");
            (now.len() == 2
                && now.iter().all(|(_, n)| n == "h2")
                && !now.iter().any(|(p, _)| on_h1.contains(p)))
            .then_some(())
        },
    );
    assert!(
        stopped.elapsed() <= Duration::from_secs(2 + 3 + 10),
        "took {:?}",
        stopped.elapsed()
    );
    let gone = server.kubectl(&["get", "pod", &on_h1[0]]);
    assert!(
        !gone.status.success(),
        "the pod on the dead host was deleted"
    );

    // The agent comes back: it heartbeats and, as agents do periodically, posts Ready.
    h1_alive.store(true, Ordering::SeqCst);
    let ready = json!({"status": {"conditions": [{"type": "Ready", "status": "True",
        "reason": "KubeletReady", "message": "ready"}]}});
    eventually("h1 untainted", SETTLE, || {
        server.ok(&[
            "patch",
            "node",
            "h1",
            "--subresource=status",
            "--type=strategic",
            "-p",
            &ready.to_string(),
        ]);
        std::thread::sleep(Duration::from_millis(500));
        let n = server.json(&["get", "node", "h1"]);
        n["spec"]["taints"]
            .as_array()
            .is_none_or(|t| t.is_empty())
            .then_some(())
    });
}

#[test]
fn automatic_balancing_evens_out_a_skewed_placement() {
    // SAFETY: as above — one test per process, set before any thread starts.
    unsafe {
        std::env::set_var("VISOR_BALANCER", "automatic");
        std::env::set_var("VISOR_BALANCER_INTERVAL", "1s");
        std::env::set_var("VISOR_BALANCER_THRESHOLD", "20");
        std::env::set_var("VISOR_BALANCER_RATE", "1");
    }
    let server = TestServer::start(Backend::Sqlite);
    add_host(&server, "h1", "z1", "4", "8Gi");
    add_host(&server, "h2", "z1", "4", "8Gi");
    // Skew on purpose: everything lands on h1 while h2 is cordoned.
    server.ok(&["cordon", "h2"]);
    server.ok_stdin(
        &["apply", "-f", "-"],
        &deployment_yaml("skew", 4, "500m", json!({})),
    );
    let p = bound(&server, "skew", 4);
    assert!(p.iter().all(|(_, n)| n == "h1"), "{p:?}");
    for (pod, _) in &p {
        mark_running(&server, pod);
    }
    server.ok(&["uncordon", "h2"]);
    // h1 at 50%, h2 at 0%: the balancer moves pods until the spread is within 20 points.
    eventually("pods moved to h2", Duration::from_secs(30), || {
        let now = placements(&server, "skew");
        let on_h2 = now.iter().filter(|(_, n)| n == "h2").count();
        (now.len() == 4 && on_h2 >= 1).then_some(())
    });
    let events = server.ok(&["get", "events", "--field-selector", "reason=Rebalanced"]);
    assert!(events.contains("Evicted from busy host h1"), "{events}");
    // The zone controller creates z1 a couple of seconds after its hosts appear, which may be
    // after the balancer's first move.
    let zone = eventually("balance reported", SETTLE, || {
        let out = server.kubectl(&["get", "zone", "z1", "-o", "json"]);
        let z: Value = serde_json::from_slice(&out.stdout).ok()?;
        z["status"]["balance"]["mode"].is_string().then_some(z)
    });
    assert_eq!(zone["status"]["balance"]["mode"], "automatic");
}
