//! The garbage collector end to end: background, foreground and orphan deletion as `kubectl
//! delete --cascade=...` asks for them, for built-in kinds and for custom resources.
//!
//! The collector reaches the server only through the API, the same on either store, so these
//! run on SQLite only.

mod common;

use std::time::Duration;

use common::{Backend, TestServer, eventually};
use serde_json::{Value, json};

const SETTLE: Duration = Duration::from_secs(20);

fn namespace(server: &TestServer, name: &str) -> String {
    server.ok(&["create", "namespace", name]);
    name.to_string()
}

fn items(server: &TestServer, args: &[&str]) -> Vec<Value> {
    server.json(args)["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn name(object: &Value) -> String {
    object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: nginx
"#;

/// Creates the Deployment and waits for its ReplicaSet and two pods.
fn deployment_with_pods(server: &TestServer, ns: &str) -> (String, Vec<String>) {
    server.ok_stdin(&["apply", "-n", ns, "-f", "-"], DEPLOYMENT);
    eventually("a replicaset and 2 pods", SETTLE, || {
        let sets = items(server, &["get", "rs", "-n", ns]);
        let pods = items(server, &["get", "pods", "-n", ns]);
        (sets.len() == 1 && pods.len() == 2)
            .then(|| (name(&sets[0]), pods.iter().map(name).collect()))
    })
}

#[test]
fn background_deletion_removes_replicasets_and_pods() {
    let server = TestServer::start(Backend::Sqlite);
    let ns = namespace(&server, "background");
    deployment_with_pods(&server, &ns);
    let out = server.ok(&["delete", "deploy", "web", "-n", &ns]);
    assert!(out.contains("deleted"), "{out}");
    eventually("the replicaset and pods to go", SETTLE, || {
        let sets = items(&server, &["get", "rs", "-n", &ns]);
        let pods = items(&server, &["get", "pods", "-n", &ns]);
        (sets.is_empty() && pods.is_empty()).then_some(())
    });
}

#[test]
fn foreground_deletion_keeps_the_owner_until_dependents_are_gone() {
    let server = TestServer::start(Backend::Sqlite);
    let ns = namespace(&server, "foreground");
    let (rs, pods) = deployment_with_pods(&server, &ns);
    // A finalizer of our own holds one pod, and so (through blockOwnerDeletion) the chain.
    let hold = json!({ "metadata": { "finalizers": ["example.com/hold"] } }).to_string();
    server.ok(&[
        "patch",
        "pod",
        &pods[0],
        "-n",
        &ns,
        "--type=merge",
        "-p",
        &hold,
    ]);

    server.ok(&[
        "delete",
        "deploy",
        "web",
        "-n",
        &ns,
        "--cascade=foreground",
        "--wait=false",
    ]);
    eventually("the other pod to go", SETTLE, || {
        let left = items(&server, &["get", "pods", "-n", &ns]);
        (left.len() == 1).then_some(())
    });
    // The held pod is terminating; its ReplicaSet and the Deployment wait with the finalizer.
    std::thread::sleep(Duration::from_millis(500));
    let pod = server.json(&["get", "pod", &pods[0], "-n", &ns]);
    assert!(pod["metadata"]["deletionTimestamp"].is_string(), "{pod}");
    let deployment = server.json(&["get", "deploy", "web", "-n", &ns]);
    assert!(
        deployment["metadata"]["deletionTimestamp"].is_string(),
        "{deployment}"
    );
    assert_eq!(
        deployment["metadata"]["finalizers"],
        json!(["foregroundDeletion"])
    );
    let set = server.json(&["get", "rs", &rs, "-n", &ns]);
    assert!(set["metadata"]["deletionTimestamp"].is_string(), "{set}");

    // Release the pod: everything goes, bottom up.
    let release = r#"[{"op":"remove","path":"/metadata/finalizers"}]"#;
    server.ok(&[
        "patch",
        "pod",
        &pods[0],
        "-n",
        &ns,
        "--type=json",
        "-p",
        release,
    ]);
    eventually("the deployment to go", SETTLE, || {
        let gone = !server
            .kubectl(&["get", "deploy", "web", "-n", &ns])
            .status
            .success();
        gone.then_some(())
    });
    assert!(items(&server, &["get", "rs", "-n", &ns]).is_empty());
    assert!(items(&server, &["get", "pods", "-n", &ns]).is_empty());
}

#[test]
fn orphan_deletion_leaves_dependents_without_owner_references() {
    let server = TestServer::start(Backend::Sqlite);
    let ns = namespace(&server, "orphan");
    let manifest = r#"
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: lone
spec:
  replicas: 2
  selector:
    matchLabels: {app: lone}
  template:
    metadata:
      labels: {app: lone}
    spec:
      containers:
      - name: c
        image: busybox
"#;
    server.ok_stdin(&["apply", "-n", &ns, "-f", "-"], manifest);
    let pods: Vec<String> = eventually("2 pods", SETTLE, || {
        let pods = items(&server, &["get", "pods", "-n", &ns]);
        (pods.len() == 2).then(|| pods.iter().map(name).collect())
    });
    server.ok(&["delete", "rs", "lone", "-n", &ns, "--cascade=orphan"]);
    eventually("the replicaset to go", SETTLE, || {
        (!server
            .kubectl(&["get", "rs", "lone", "-n", &ns])
            .status
            .success())
        .then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let left = items(&server, &["get", "pods", "-n", &ns]);
    let mut names: Vec<String> = left.iter().map(name).collect();
    names.sort();
    let mut expected = pods.clone();
    expected.sort();
    assert_eq!(names, expected);
    for pod in &left {
        let refs = &pod["metadata"]["ownerReferences"];
        assert!(refs.is_null() || refs == &json!([]), "{pod}");
    }
}

#[test]
fn custom_resources_own_and_are_collected() {
    let server = TestServer::start(Backend::Sqlite);
    let ns = namespace(&server, "custom");
    let crd = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: gadgets, singular: gadget, kind: Gadget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"#;
    server.ok_stdin(&["apply", "-f", "-"], crd);
    eventually("gadgets to be served", SETTLE, || {
        server
            .kubectl(&["get", "gadgets", "-n", &ns])
            .status
            .success()
            .then_some(())
    });
    server.ok_stdin(
        &["apply", "-n", &ns, "-f", "-"],
        "apiVersion: example.com/v1\nkind: Gadget\nmetadata: {name: g}\n",
    );
    let owner = server.json(&["get", "gadget", "g", "-n", &ns]);
    let uid = owner["metadata"]["uid"].as_str().expect("uid").to_string();
    // A ConfigMap owned by the gadget, and a Gadget owned by a ConfigMap that never existed.
    let owned = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "owned", "ownerReferences": [
            { "apiVersion": "example.com/v1", "kind": "Gadget", "name": "g", "uid": uid }
        ]}
    });
    server.ok_stdin(&["create", "-n", &ns, "-f", "-"], &owned.to_string());
    let stray = json!({
        "apiVersion": "example.com/v1", "kind": "Gadget",
        "metadata": { "name": "stray", "ownerReferences": [
            { "apiVersion": "v1", "kind": "ConfigMap", "name": "nothing",
              "uid": "00000000-0000-0000-0000-000000000000" }
        ]}
    });
    server.ok_stdin(&["create", "-n", &ns, "-f", "-"], &stray.to_string());
    eventually("the stray gadget to be collected", SETTLE, || {
        (!server
            .kubectl(&["get", "gadget", "stray", "-n", &ns])
            .status
            .success())
        .then_some(())
    });
    // The owned ConfigMap stays while its owner exists...
    server.ok(&["get", "configmap", "owned", "-n", &ns]);
    // ...and goes with it.
    server.ok(&["delete", "gadget", "g", "-n", &ns]);
    eventually("the owned configmap to be collected", SETTLE, || {
        (!server
            .kubectl(&["get", "configmap", "owned", "-n", &ns])
            .status
            .success())
        .then_some(())
    });
}
