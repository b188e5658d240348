//! What the server acknowledged survives: a clean restart, and `kill -9` in the middle of a
//! stream of writes.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Backend, TestServer};
use http::{Method, StatusCode};
use visor::client::ApiClient;

backend_tests!(
    restart_keeps_everything,
    kill_9_loses_no_acknowledged_create
);

fn rv(object: &serde_json::Value) -> u64 {
    let rv = object["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_else(|| panic!("no resourceVersion: {object}"));
    rv.parse()
        .unwrap_or_else(|_| panic!("resourceVersion {rv:?} is not a number"))
}

fn restart_keeps_everything(backend: Backend) {
    let mut server = TestServer::start(backend);
    server.ok(&["create", "namespace", "keep"]);
    server.ok(&[
        "create",
        "configmap",
        "c1",
        "-n",
        "keep",
        "--from-literal=a=1",
    ]);
    server.ok(&[
        "create",
        "secret",
        "generic",
        "s1",
        "-n",
        "keep",
        "--from-literal=password=hunter2",
    ]);
    server.ok(&[
        "create",
        "deployment",
        "web",
        "-n",
        "keep",
        "--image=nginx:1.27",
        "--replicas=3",
    ]);
    // ConfigMaps and Secrets are compared whole; no controller writes to them. The deployment
    // controller keeps updating the Deployment's status, so for it what the user wrote is
    // compared.
    let before = server.json(&["get", "configmaps,secrets", "-n", "keep"]);
    let deployment_before = server.json(&["get", "deployment", "web", "-n", "keep"]);
    let ns_before = server.json(&["get", "namespace", "keep"]);
    // A copy of the kubeconfig from before the restart: it must keep working (same CA, same
    // admin credential accepted).
    let saved_dir = tempfile::tempdir().unwrap();
    let saved = saved_dir.path().join("saved.kubeconfig");
    std::fs::copy(server.kubeconfig(), &saved).unwrap();
    let ca_before = std::fs::read(server.data_dir().join("pki/ca.crt")).unwrap();

    server.restart();

    let after = server.json(&["get", "configmaps,secrets", "-n", "keep"]);
    let strip = |list: &serde_json::Value| {
        let mut items: Vec<serde_json::Value> = list["items"].as_array().unwrap().clone();
        items.sort_by_key(|i| format!("{}/{}", i["kind"], i["metadata"]["name"]));
        items
    };
    assert_eq!(
        strip(&before),
        strip(&after),
        "objects changed across a restart"
    );
    assert_eq!(ns_before, server.json(&["get", "namespace", "keep"]));
    let deployment_after = server.json(&["get", "deployment", "web", "-n", "keep"]);
    for field in [
        "/metadata/uid",
        "/metadata/creationTimestamp",
        "/metadata/generation",
        "/spec",
    ] {
        assert_eq!(
            deployment_before.pointer(field),
            deployment_after.pointer(field),
            "the Deployment's {field} changed across a restart"
        );
    }
    assert_eq!(
        std::fs::read(server.data_dir().join("pki/ca.crt")).unwrap(),
        ca_before,
        "the CA was replaced"
    );

    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&saved)
        .args([
            "get",
            "configmap",
            "c1",
            "-n",
            "keep",
            "-o",
            "jsonpath={.data.a}",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "an old kubeconfig stopped working: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1");

    // Revisions continue where they were: new writes sort after old ones.
    let newest_before = strip(&before).iter().map(rv).max().unwrap();
    server.ok(&["create", "configmap", "c2", "-n", "keep"]);
    let c2 = server.json(&["get", "configmap", "c2", "-n", "keep"]);
    assert!(
        rv(&c2) > newest_before,
        "revision went back: {} <= {newest_before}",
        rv(&c2)
    );
}

fn kill_9_loses_no_acknowledged_create(backend: Backend) {
    let mut server = TestServer::start(backend);
    server.ok(&["create", "namespace", "durable"]);
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let kubeconfig = server.kubeconfig();

    // Four connections create ConfigMaps as fast as they can, recording every 201.
    let writers = {
        let acknowledged = acknowledged.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let client = ApiClient::from_kubeconfig(&kubeconfig).await.unwrap();
                let mut tasks = Vec::new();
                for worker in 0..4 {
                    let client = client.clone();
                    let acknowledged = acknowledged.clone();
                    tasks.push(tokio::spawn(async move {
                        let Ok(mut conn) = client.connect().await else {
                            return;
                        };
                        for i in 0.. {
                            let name = format!("k-{worker}-{i:05}");
                            let body = serde_json::json!({
                                "apiVersion": "v1", "kind": "ConfigMap",
                                "metadata": {"name": name, "namespace": "durable"},
                                "data": {"i": i.to_string()},
                            });
                            let Ok(request) = conn.request(
                                Method::POST,
                                "/api/v1/namespaces/durable/configmaps",
                                "application/json",
                                Bytes::from(body.to_string()),
                            ) else {
                                return;
                            };
                            match conn.send_request(request).await {
                                Ok(response) if response.status == StatusCode::CREATED => {
                                    acknowledged.lock().unwrap().insert(name);
                                }
                                // Anything else ends this writer: the server is going away.
                                _ => return,
                            }
                        }
                    }));
                }
                for task in tasks {
                    let _ = task.await;
                }
            })
        })
    };

    let deadline = Instant::now() + Duration::from_secs(20);
    while acknowledged.lock().unwrap().len() < 400 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    server.kill9();
    writers.join().unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() >= 50,
        "only {} creates were acknowledged before the kill",
        acknowledged.len()
    );

    server.start_again();
    let out = server.ok(&["get", "configmaps", "-n", "durable", "-o", "name"]);
    let present: BTreeSet<String> = out
        .lines()
        .filter_map(|l| l.strip_prefix("configmap/"))
        .map(String::from)
        .collect();
    let lost: Vec<&String> = acknowledged.difference(&present).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged creates were lost after kill -9, e.g. {:?}",
        lost.len(),
        acknowledged.len(),
        &lost[..lost.len().min(10)]
    );
    // The store is consistent after the crash: writes work and the namespace still lists.
    server.ok(&["create", "configmap", "after-crash", "-n", "durable"]);
}
