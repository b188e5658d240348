//! Hosts join and pods run for real: `visor agent` (OCI through runc, and simulated) against a
//! real `visor server`, driven by the real kubectl.

mod common;

use std::time::Duration;

use common::hosts::{TestAgent, import_test_image};
use common::{Backend, TestServer, eventually};
use serde_json::Value;

const IMAGE: &str = "registry.test/busybox:1.0";
const READY: Duration = Duration::from_secs(60);

fn pod_yaml(name: &str, node: &str, body: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 2\n{body}"
    )
}

fn phase(server: &TestServer, pod: &str) -> String {
    let output = server.kubectl(&["get", "pod", pod, "-o", "jsonpath={.status.phase}"]);
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn wait_phase(server: &TestServer, agent: &TestAgent, pod: &str, want: &str) -> Value {
    eventually(&format!("pod {pod} {want}"), READY, || {
        (phase(server, pod) == want).then_some(())
    });
    let _ = agent;
    server.json(&["get", "pod", pod])
}

/// Waits until the default namespace has no pods left.
fn wait_no_pods(server: &TestServer) {
    eventually("every pod gone", READY, || {
        server
            .ok(&["get", "pods", "-o", "name"])
            .trim()
            .is_empty()
            .then_some(())
    });
}

fn container_state(server: &TestServer, pod: &str) -> Value {
    let pod = server.json(&["get", "pod", pod]);
    pod["status"]["containerStatuses"][0].clone()
}

#[test]
fn simulated_hosts_join_heartbeat_and_move_pods_through_their_phases() {
    let server = TestServer::start(Backend::Sqlite);
    let mut agent = TestAgent::start(
        &server,
        "sim",
        &["--runtime", "sim", "--count", "3", "--zone", "zone-a"],
    );
    for i in 0..3 {
        let name = format!("sim-{i:04}");
        eventually(&format!("{name} Ready"), READY, || {
            let out = server.kubectl(&["get", "node", &name]);
            String::from_utf8_lossy(&out.stdout)
                .contains(" Ready ")
                .then_some(())
        });
    }
    let _ = &mut agent;
    let node = server.json(&["get", "node", "sim-0001"]);
    let labels = &node["metadata"]["labels"];
    assert_eq!(labels["visor.dev/simulated"], "true");
    assert_eq!(labels["topology.kubernetes.io/zone"], "zone-a");
    assert_eq!(labels["kubernetes.io/hostname"], "sim-0001");
    assert_eq!(node["status"]["capacity"]["cpu"], "32");
    let wide = server.ok(&["get", "nodes", "-o", "wide"]);
    assert!(wide.contains("Visor simulated host"), "{wide}");
    assert!(wide.contains("sim://"), "{wide}");
    // Each host heartbeats through its Lease (hosts of one process spread their renewals).
    let lease = eventually("sim-0002's Lease", READY, || {
        let out = server.kubectl(&[
            "get",
            "lease",
            "-n",
            "kube-node-lease",
            "sim-0002",
            "-o",
            "json",
        ]);
        serde_json::from_slice::<Value>(&out.stdout).ok()
    });
    assert_eq!(lease["spec"]["holderIdentity"], "sim-0002");
    // Renewals move renewTime on and keep the holder and the time the Lease was acquired.
    let read_lease = || server.json(&["get", "lease", "-n", "kube-node-lease", "sim-0002"]);
    let renewed = eventually("sim-0002's Lease renewed twice", READY, || {
        let now = read_lease();
        let moved = |a: &Value, b: &Value| {
            a["spec"]["renewTime"] != b["spec"]["renewTime"]
                && a["metadata"]["resourceVersion"] != b["metadata"]["resourceVersion"]
        };
        (moved(&now, &lease) && {
            std::thread::sleep(Duration::from_secs(3));
            moved(&read_lease(), &now)
        })
        .then_some(now)
    });
    assert_eq!(renewed["spec"]["holderIdentity"], "sim-0002");
    assert_eq!(renewed["spec"]["leaseDurationSeconds"], 40);
    assert_eq!(renewed["spec"]["acquireTime"], lease["spec"]["acquireTime"]);

    server.ok_stdin(
        &["apply", "-f", "-"],
        &pod_yaml(
            "simulated",
            "sim-0001",
            "  containers:\n  - name: app\n    image: nginx:1.27\n",
        ),
    );
    let pod = wait_phase(&server, &agent, "simulated", "Running");
    let ip = pod["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(ip.starts_with("10."), "pod IP {ip:?}");
    assert_eq!(pod["status"]["containerStatuses"][0]["ready"], true);
    assert!(
        pod["status"]["containerStatuses"][0]["containerID"]
            .as_str()
            .unwrap()
            .starts_with("sim://")
    );
    // Deletion completes once the host has stopped the pod.
    server.ok(&["delete", "pod", "simulated", "--wait=true", "--timeout=30s"]);
    let gone = server.kubectl(&["get", "pod", "simulated"]);
    assert!(!gone.status.success());
}

#[test]
fn a_pod_runs_on_visor_up_and_its_output_is_in_kubectl_logs() {
    let network = common::hosts::PodNetwork::unique();
    let server = TestServer::up(&[
        "--agent-listen",
        "127.0.0.1:0",
        "--pod-cidr",
        &network.cidr,
        "--bridge",
        &network.bridge,
    ]);
    let agent_dir = server.data_dir().join("agent");
    let _cleanup = CleanUp(agent_dir.clone(), network.clone());
    let node = eventually("the local host", READY, || {
        let out = server.kubectl(&["get", "nodes", "-o", "jsonpath={.items[0].metadata.name}"]);
        let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!name.is_empty()).then_some(name)
    });
    eventually("the local host Ready", READY, || {
        let out = server.kubectl(&["get", "node", &node]);
        String::from_utf8_lossy(&out.stdout)
            .contains(" Ready ")
            .then_some(())
    });
    import_test_image(&agent_dir, IMAGE);
    server.ok(&[
        "create",
        "configmap",
        "settings",
        "--from-literal=GREETING=salut",
    ]);
    server.ok_stdin(
        &["apply", "-f", "-"],
        &pod_yaml(
            "hello",
            &node,
            &format!(
                "  restartPolicy: Never\n  containers:\n  - name: app\n    image: {IMAGE}\n    imagePullPolicy: Never\n    command: [\"sh\", \"-c\", \"echo hello from $(POD_NAME); echo greeting=$GREETING; cat /config/motd; echo; head -c 3 /tokens/api; echo; echo to stderr >&2\"]\n    env:\n    - name: POD_NAME\n      valueFrom:\n        fieldRef:\n          fieldPath: metadata.name\n    envFrom:\n    - configMapRef:\n        name: settings\n    volumeMounts:\n    - name: config\n      mountPath: /config\n    - name: tokens\n      mountPath: /tokens\n  volumes:\n  - name: config\n    configMap:\n      name: settings\n      items:\n      - key: GREETING\n        path: motd\n  - name: tokens\n    projected:\n      sources:\n      - serviceAccountToken:\n          path: api\n          expirationSeconds: 3600\n"
            ),
        ),
    );
    let pod = eventually("pod hello Succeeded", READY, || {
        (phase(&server, "hello") == "Succeeded").then(|| server.json(&["get", "pod", "hello"]))
    });
    let state = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(state["exitCode"], 0);
    assert_eq!(state["reason"], "Completed");
    let logs = server.ok(&["logs", "hello"]);
    assert!(logs.contains("hello from hello"), "{logs}");
    assert!(logs.contains("to stderr"), "{logs}");
    // envFrom, a configMap volume and a projected service account token (a JWT).
    assert!(logs.contains("greeting=salut"), "{logs}");
    assert!(logs.lines().any(|l| l == "salut"), "{logs}");
    assert!(logs.lines().any(|l| l == "eyJ"), "{logs}");
    server.ok(&["delete", "pod", "hello", "--wait=true", "--timeout=30s"]);

    // Without a nodeName the scheduler places the pod on the host.
    server.ok(&[
        "run",
        "placed",
        &format!("--image={IMAGE}"),
        "--image-pull-policy=Never",
        "--restart=Never",
        "--",
        "echo",
        "placed by the scheduler",
    ]);
    eventually("pod placed Succeeded", READY, || {
        (phase(&server, "placed") == "Succeeded").then_some(())
    });
    assert_eq!(
        server.ok(&["get", "pod", "placed", "-o", "jsonpath={.spec.nodeName}"]),
        node
    );
    assert!(
        server
            .ok(&["logs", "placed"])
            .contains("placed by the scheduler")
    );
    server.ok(&["delete", "pod", "placed", "--wait=true", "--timeout=30s"]);
}

/// Removes what a `visor up` host left when the test ends (the server is killed, pods stay).
struct CleanUp(std::path::PathBuf, common::hosts::PodNetwork);

impl Drop for CleanUp {
    fn drop(&mut self) {
        common::hosts::clean_up_host(&self.0, &self.1);
    }
}

#[test]
fn containers_are_limited_restarted_probed_and_report_why() {
    let server = TestServer::start(Backend::Sqlite);
    let mut agent = TestAgent::start(&server, "host-a", &[]);
    agent.wait_ready(&server, READY);
    import_test_image(agent.dir.path(), IMAGE);
    let spec = |name: &str, body: &str| {
        pod_yaml(
            name,
            "host-a",
            &format!(
                "  containers:\n  - name: app\n    image: {IMAGE}\n    imagePullPolicy: IfNotPresent\n{body}"
            ),
        )
    };
    // Over its memory limit: OOMKilled.
    server.ok_stdin(
        &["apply", "-f", "-"],
        &spec(
            "hog",
            "    command: [\"sh\", \"-c\", \"x=aaaaaaaaaaaaaaaaaaaaaaaa; while true; do x=$x$x; done\"]\n    resources:\n      limits:\n        memory: 16Mi\n",
        ),
    );
    // Crashing: backs off.
    server.ok_stdin(
        &["apply", "-f", "-"],
        &spec("crasher", "    command: [\"sh\", \"-c\", \"exit 3\"]\n"),
    );
    // Readiness follows a file the test creates with exec.
    server.ok_stdin(
        &["apply", "-f", "-"],
        &spec(
            "probed",
            "    command: [\"sh\", \"-c\", \"sleep 3600\"]\n    readinessProbe:\n      exec:\n        command: [\"cat\", \"/tmp/ready\"]\n      periodSeconds: 1\n      failureThreshold: 1\n",
        ),
    );
    // A missing image.
    server.ok_stdin(
        &["apply", "-f", "-"],
        &pod_yaml(
            "missing",
            "host-a",
            "  containers:\n  - name: app\n    image: 127.0.0.1:9/nothing/here:1.0\n",
        ),
    );

    eventually("hog OOMKilled", READY, || {
        let status = container_state(&server, "hog");
        let last = &status["lastState"]["terminated"];
        let now = &status["state"]["terminated"];
        (last["reason"] == "OOMKilled" || now["reason"] == "OOMKilled").then_some(())
    });
    eventually("crasher in CrashLoopBackOff", READY, || {
        let status = container_state(&server, "crasher");
        (status["state"]["waiting"]["reason"] == "CrashLoopBackOff"
            && status["restartCount"].as_u64() >= Some(1)
            && status["lastState"]["terminated"]["exitCode"] == 3)
            .then_some(())
    });
    // The host records what happened, for `kubectl describe`.
    eventually("crasher's events", READY, || {
        let described = server.ok(&["describe", "pod", "crasher"]);
        (described.contains("Started") && described.contains("BackOff")).then_some(())
    });
    // The previous attempt's output stays readable.
    server.ok_stdin(
        &["apply", "-f", "-"],
        &spec(
            "talker",
            "    command: [\"sh\", \"-c\", \"echo attempt; sleep 1; exit 1\"]\n",
        ),
    );
    eventually("talker restarted", READY, || {
        (container_state(&server, "talker")["restartCount"].as_u64() >= Some(1)).then_some(())
    });
    let previous = server.ok(&["logs", "talker", "--previous"]);
    assert_eq!(previous.trim(), "attempt");
    eventually("probed running", READY, || {
        (phase(&server, "probed") == "Running").then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(container_state(&server, "probed")["ready"], false);
    let exec = server.kubectl(&[
        "exec",
        "probed",
        "--",
        "sh",
        "-c",
        "touch /tmp/ready; echo made",
    ]);
    assert!(
        exec.status.success(),
        "kubectl exec: {}",
        String::from_utf8_lossy(&exec.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&exec.stdout).trim(), "made");
    eventually("probed Ready", READY, || {
        (container_state(&server, "probed")["ready"] == true).then_some(())
    });
    let failing = server.kubectl(&["exec", "probed", "--", "sh", "-c", "exit 7"]);
    assert_eq!(
        failing.status.code(),
        Some(7),
        "exec passes the exit code on"
    );
    eventually("missing image backs off", READY, || {
        let waiting = &container_state(&server, "missing")["state"]["waiting"];
        let reason = waiting["reason"].as_str().unwrap_or_default().to_string();
        (reason == "ImagePullBackOff" || reason == "ErrImagePull").then_some(())
    });

    for pod in ["hog", "crasher", "talker", "probed", "missing"] {
        server.ok(&["delete", "pod", pod, "--wait=false"]);
    }
    wait_no_pods(&server);
}

#[test]
fn pods_reach_each_other_and_survive_an_agent_restart() {
    let server = TestServer::start(Backend::Sqlite);
    let mut agent = TestAgent::start(&server, "host-b", &[]);
    agent.wait_ready(&server, READY);
    import_test_image(agent.dir.path(), IMAGE);
    server.ok_stdin(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      nodeName: host-b\n      terminationGracePeriodSeconds: 2\n      containers:\n      - name: httpd\n        image: {IMAGE}\n        imagePullPolicy: Never\n        command: [\"sh\", \"-c\", \"mkdir -p /www && echo served-by-visor > /www/index.html && exec httpd -f -p 8080 -h /www\"]\n        readinessProbe:\n          httpGet: {{path: /index.html, port: 8080}}\n          periodSeconds: 1\n"
        ),
    );
    let web = eventually("web pod Ready", READY, || {
        let pods = server.json(&["get", "pods", "-l", "app=web"]);
        let pod = pods["items"][0].clone();
        (pod["status"]["containerStatuses"][0]["ready"] == true).then_some(pod)
    });
    let web_ip = web["status"]["podIP"].as_str().unwrap().to_string();
    let web_name = web["metadata"]["name"].as_str().unwrap().to_string();
    let container_id = web["status"]["containerStatuses"][0]["containerID"].clone();
    server.ok_stdin(
        &["apply", "-f", "-"],
        &pod_yaml(
            "client",
            "host-b",
            &format!(
                "  restartPolicy: Never\n  containers:\n  - name: wget\n    image: {IMAGE}\n    imagePullPolicy: Never\n    command: [\"wget\", \"-q\", \"-O\", \"-\", \"http://{web_ip}:8080/index.html\"]\n"
            ),
        ),
    );
    eventually("client Succeeded", READY, || {
        (phase(&server, "client") == "Succeeded").then_some(())
    });
    assert!(server.ok(&["logs", "client"]).contains("served-by-visor"));

    // kubectl port-forward reaches the pod through the API server and the agent.
    let local_port = common::free_port();
    let mut forward = server.kubectl_stream(&[
        "port-forward",
        &format!("pod/{web_name}"),
        &format!("{local_port}:8080"),
    ]);
    forward.wait_for(READY, |line| line.contains("Forwarding from"));
    let page = http_get(local_port, "/index.html");
    assert!(page.contains("served-by-visor"), "{page}");
    drop(forward);

    // The agent dies and comes back: the pod keeps its container.
    agent.kill9();
    agent.start_again();
    agent.wait_ready(&server, READY);
    std::thread::sleep(Duration::from_secs(3));
    let after = server.json(&["get", "pod", &web_name]);
    assert_eq!(
        after["status"]["containerStatuses"][0]["containerID"],
        container_id
    );
    assert_eq!(after["status"]["containerStatuses"][0]["restartCount"], 0);
    assert_eq!(after["status"]["phase"], "Running");

    server.ok(&["delete", "deployment", "web"]);
    server.ok(&["delete", "pod", "client"]);
    wait_no_pods(&server);
}

#[test]
fn thirty_pods_start_and_stop_and_leave_nothing_behind_and_a_second_host_joins() {
    let server = TestServer::start(Backend::Sqlite);
    let mut first = TestAgent::start(&server, "host-c", &[]);
    let mut second = TestAgent::start(&server, "host-d", &[]);
    first.wait_ready(&server, READY);
    second.wait_ready(&server, READY);
    let nodes = server.ok(&["get", "nodes", "-o", "name"]);
    assert!(
        nodes.contains("node/host-c") && nodes.contains("node/host-d"),
        "{nodes}"
    );
    import_test_image(first.dir.path(), IMAGE);
    let mut manifest = String::new();
    for i in 0..30 {
        manifest.push_str(&pod_yaml(
            &format!("p{i}"),
            "host-c",
            &format!(
                "  containers:\n  - name: app\n    image: {IMAGE}\n    imagePullPolicy: Never\n    command: [\"sleep\", \"3600\"]\n"
            ),
        ));
        manifest.push_str("\n---\n");
    }
    server.ok_stdin(&["apply", "-f", "-"], &manifest);
    eventually("30 pods Running", Duration::from_secs(120), || {
        let pods = server.json(&["get", "pods"]);
        let running = pods["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .count();
        (running == 30).then_some(())
    });
    let state = first.dir.path().join("oci");
    let sandboxes = visor_leftovers(&state);
    assert_eq!(
        sandboxes
            .iter()
            .filter(|s| s.starts_with("sandbox"))
            .count(),
        30
    );
    let uids: Vec<String> = server.json(&["get", "pods"])["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["uid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(uids.len(), 30);
    server.ok(&["delete", "pods", "--all", "--wait=true", "--timeout=120s"]);
    // Nothing of the pods is left on the host: runtime state, network namespaces, mounts,
    // cgroups, processes.
    let leftovers = visor_leftovers(&state);
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    let namespaces: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    for sandbox in sandboxes.iter().filter_map(|s| s.strip_prefix("sandbox ")) {
        assert!(
            !namespaces.iter().any(|n| n.contains(sandbox)),
            "the network namespace of {sandbox} is left behind"
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let agent_dir = first.dir.path().to_string_lossy().to_string();
    assert!(
        !mounts.lines().any(|l| l.contains(&agent_dir)),
        "mounts left behind under {agent_dir}"
    );
    let controllers: Vec<_> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    for uid in &uids {
        for controller in &controllers {
            let cgroup = controller.join("visor").join(uid);
            assert!(!cgroup.exists(), "{} left behind", cgroup.display());
        }
    }
    // The shims and containers of the host all name a path under its runtime state.
    let runtime_state = format!("{agent_dir}/oci/");
    let processes: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        .filter(|cmdline| cmdline.contains(&runtime_state))
        .collect();
    assert!(processes.is_empty(), "processes left behind: {processes:?}");
}

#[test]
fn bench_pods_measures_pods_and_the_bare_runtime_and_leaves_nothing_behind() {
    let server = TestServer::start(Backend::Sqlite);
    let mut agent = TestAgent::start(&server, "bench-host", &[]);
    agent.wait_ready(&server, READY);
    let bench = std::process::Command::new(env!("CARGO_BIN_EXE_visor"))
        .args(["bench", "pods", "--kubeconfig"])
        .arg(server.kubeconfig())
        .arg("--agent-data-dir")
        .arg(agent.dir.path())
        .args(["--node", "bench-host", "--runs", "2", "--burst", "3"])
        .args(["--bare-runc", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let bench_pid = bench.id();
    let out = bench.wait_with_output().unwrap();
    let metrics = common::bench_metrics(
        &out,
        "pods",
        &[
            "single_p50",
            "single_p99",
            "burst_p50",
            "burst_p99",
            "burst_throughput",
            "bare_runc_single_p50",
            "bare_runc_burst_p99",
            "agent_rss_idle_mib",
        ],
    );
    // A container cannot be running before its runtime has started it.
    assert!(
        metrics["single_p50"] > metrics["bare_runc_single_p50"] / 2.0,
        "{metrics:?}"
    );

    // The bare containers are gone with their cgroups, and the pods with their namespace.
    let bare_prefix = format!("visor-bench-{bench_pid}-");
    let bare_cgroups: Vec<String> = std::fs::read_dir("/sys/fs/cgroup/memory")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&bare_prefix))
        .collect();
    assert!(bare_cgroups.is_empty(), "left behind: {bare_cgroups:?}");
    eventually("the bench's namespace gone", READY, || {
        let namespaces = server.ok(&["get", "namespaces", "-o", "name"]);
        (!namespaces.contains("bench-pods-")).then_some(())
    });
    let leftovers = visor_leftovers(&agent.dir.path().join("oci"));
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

/// A plain HTTP GET to a local port, answering the whole response.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

/// Sandboxes and containers the OCI runtime still knows about.
fn visor_leftovers(state: &std::path::Path) -> Vec<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use visor_agent::runtime::Runtime;
        let oci =
            visor_agent::oci::OciRuntime::new(visor_agent::oci::OciOptions::new(state)).unwrap();
        let mut left: Vec<String> = oci
            .list_sandboxes()
            .await
            .unwrap()
            .into_iter()
            .map(|s| format!("sandbox {}", s.id))
            .collect();
        left.extend(
            oci.list_containers()
                .await
                .unwrap()
                .into_iter()
                .map(|c| format!("container {}", c.id)),
        );
        left
    })
}

#[test]
fn a_pool_of_simulated_hosts_shares_one_identity_and_one_watch() {
    let server = TestServer::start(Backend::Sqlite);
    let kubeconfig = server.kubeconfig().to_string_lossy().to_string();
    let _agent = TestAgent::start(
        &server,
        "pool",
        &[
            "--runtime",
            "sim",
            "--count",
            "200",
            "--kubeconfig",
            &kubeconfig,
            "--pod-cidr",
            "10.64.0.0/12",
        ],
    );
    eventually("200 simulated hosts Ready", READY, || {
        let nodes = server.json(&["get", "nodes"]);
        let ready = nodes["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| {
                n["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
            })
            .count();
        (ready == 200).then_some(())
    });
    let mut manifest = String::new();
    for i in 0..40 {
        manifest.push_str(&pod_yaml(
            &format!("spread-{i}"),
            &format!("pool-{:04}", i * 5),
            "  containers:\n  - name: app\n    image: nginx:1.27\n",
        ));
        manifest.push_str("\n---\n");
    }
    server.ok_stdin(&["apply", "-f", "-"], &manifest);
    eventually("40 pods Running on 40 hosts", READY, || {
        let pods = server.json(&["get", "pods"]);
        let items = pods["items"].as_array().unwrap();
        let running = items
            .iter()
            .filter(|p| p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string())
            .count();
        (running == 40).then_some(())
    });
    // Each host's pod addresses come from its own share of the pool's network.
    let pods = server.json(&["get", "pods"]);
    let mut ips: Vec<String> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["status"]["podIP"].as_str().unwrap().to_string())
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 40, "pod IPs are unique");
}

#[test]
fn images_are_pulled_from_a_registry_and_a_missing_one_backs_off_with_its_message() {
    // A registry on loopback, serving the busybox test image.
    let registry_runtime = tokio::runtime::Runtime::new().unwrap();
    let registry = registry_runtime
        .block_on(visor_images::testing::TestRegistry::start())
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let image = visor_images::testing::build_busybox_image(work.path(), IMAGE).unwrap();
    registry.push_image("team/busybox", "2.0", &image).unwrap();

    let server = TestServer::start(Backend::Sqlite);
    let mut agent = TestAgent::start(&server, "host-e", &[]);
    agent.wait_ready(&server, READY);
    let pulled = registry.reference("team/busybox:2.0");
    let missing = registry.reference("team/nothing:1.0");
    server.ok_stdin(
        &["apply", "-f", "-"],
        &pod_yaml(
            "pulled",
            "host-e",
            &format!(
                "  restartPolicy: Never\n  containers:\n  - name: app\n    image: {pulled}\n    command: [\"echo\", \"pulled and ran\"]\n"
            ),
        ),
    );
    server.ok_stdin(
        &["apply", "-f", "-"],
        &pod_yaml(
            "missing",
            "host-e",
            &format!("  containers:\n  - name: app\n    image: {missing}\n"),
        ),
    );
    let pod = eventually("pulled Succeeded", READY, || {
        (phase(&server, "pulled") == "Succeeded").then(|| server.json(&["get", "pod", "pulled"]))
    });
    assert!(server.ok(&["logs", "pulled"]).contains("pulled and ran"));
    let image_id = pod["status"]["containerStatuses"][0]["imageID"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(image_id.contains("sha256:"), "{image_id}");
    let waiting = eventually("missing in ImagePullBackOff", READY, || {
        let waiting = container_state(&server, "missing")["state"]["waiting"].clone();
        (waiting["reason"] == "ImagePullBackOff").then_some(waiting)
    });
    let message = waiting["message"].as_str().unwrap_or_default();
    assert!(
        message.to_lowercase().contains("manifest unknown"),
        "the registry's own message: {message}"
    );
    server.ok(&["delete", "pods", "--all", "--wait=true", "--timeout=60s"]);
    drop(registry);
}
