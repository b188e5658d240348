//! The real `kubectl` against a real `visor server`, on each backend: what a user types and
//! what they see.

mod common;

use std::time::Duration;

use common::{Backend, TestServer, header, table};

backend_tests!(
    health_and_version,
    fresh_server_has_the_default_namespaces,
    create_and_get_in_every_output_format,
    apply_a_plain_manifest,
    apply_again_updates_what_changed,
    all_namespaces_and_label_selectors,
    field_selectors,
    pagination_returns_everything,
    describe_shows_the_object,
    delete_with_and_without_wait,
    watch_sees_later_changes,
    discovery_lists_resources_and_versions,
    conflicting_update_is_refused,
    namespace_deletion_empties_it,
    pods_show_their_columns,
    generate_name_makes_unique_names,
);

/// Creates a namespace for one test, so tests never depend on what else is in `default`.
fn namespace(server: &TestServer, name: &str) -> String {
    let out = server.ok(&["create", "namespace", name]);
    assert_eq!(out.trim(), format!("namespace/{name} created"));
    name.to_string()
}

fn names(out: &str) -> Vec<String> {
    let mut names: Vec<String> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    names.sort();
    names
}

fn health_and_version(backend: Backend) {
    let server = TestServer::start(backend);
    for path in ["/healthz", "/readyz", "/livez"] {
        assert_eq!(server.ok(&["get", "--raw", path]).trim(), "ok", "{path}");
    }
    let version: serde_json::Value =
        serde_json::from_str(&server.ok(&["get", "--raw", "/version"])).unwrap();
    assert_eq!(version["major"], "1", "{version}");
    assert!(
        version["gitVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("v1.")),
        "{version}"
    );
    let both = server.json(&["version"]);
    assert!(both["serverVersion"]["gitVersion"].is_string(), "{both}");
    // The server announced itself on stdout, with a line a shell can use.
    let stdout = server.stdout();
    let export = format!(
        "export KUBECONFIG={}",
        server.kubeconfig().canonicalize().unwrap().display()
    );
    assert!(stdout.lines().any(|l| l == export), "stdout:\n{stdout}");
}

fn fresh_server_has_the_default_namespaces(backend: Backend) {
    let server = TestServer::start(backend);
    let out = server.ok(&["get", "namespaces"]);
    assert_eq!(header(&out), ["NAME", "STATUS", "AGE"], "{out}");
    let rows = table(&out);
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let row = rows
            .iter()
            .find(|r| r[0] == ns)
            .unwrap_or_else(|| panic!("no {ns} in:\n{out}"));
        assert_eq!(row[1], "Active", "{out}");
    }
    let stderr = server.fails(&["create", "configmap", "x", "-n", "does-not-exist"]);
    assert!(
        stderr.contains(r#"namespaces "does-not-exist" not found"#),
        "{stderr}"
    );
}

fn create_and_get_in_every_output_format(backend: Backend) {
    let server = TestServer::start(backend);
    let ns = namespace(&server, "formats");
    let out = server.ok(&[
        "create",
        "configmap",
        "cm1",
        "-n",
        &ns,
        "--from-literal=greeting=hello",
        "--from-literal=n=1",
    ]);
    assert_eq!(out.trim(), "configmap/cm1 created");

    let out = server.ok(&["get", "configmap", "cm1", "-n", &ns]);
    assert_eq!(header(&out), ["NAME", "DATA", "AGE"], "{out}");
    let rows = table(&out);
    assert_eq!(rows.len(), 2, "{out}");
    assert_eq!(rows[1][..2], ["cm1", "2"], "{out}");

    let out = server.ok(&["get", "configmap", "cm1", "-n", &ns, "-o", "wide"]);
    assert_eq!(table(&out)[1][..2], ["cm1", "2"], "{out}");

    let out = server.ok(&["get", "configmap", "cm1", "-n", &ns, "-o", "name"]);
    assert_eq!(out.trim(), "configmap/cm1");

    let object = server.json(&["get", "configmap", "cm1", "-n", &ns]);
    assert_eq!(object["kind"], "ConfigMap");
    assert_eq!(object["apiVersion"], "v1");
    assert_eq!(object["data"]["greeting"], "hello");
    assert_eq!(object["metadata"]["namespace"], ns.as_str());
    for field in ["uid", "resourceVersion", "creationTimestamp"] {
        assert!(
            object["metadata"][field]
                .as_str()
                .is_some_and(|v| !v.is_empty()),
            "no {field}: {object}"
        );
    }

    let yaml = server.ok(&["get", "configmap", "cm1", "-n", &ns, "-o", "yaml"]);
    for expected in [
        "apiVersion: v1",
        "kind: ConfigMap",
        "  greeting: hello",
        "  name: cm1",
        "  namespace: formats",
    ] {
        assert!(
            yaml.lines().any(|l| l == expected),
            "no {expected:?} in:\n{yaml}"
        );
    }
    let uid = object["metadata"]["uid"].as_str().unwrap();
    assert!(yaml.contains(&format!("uid: {uid}")), "{yaml}");

    let out = server.ok(&[
        "get",
        "configmaps",
        "-n",
        &ns,
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    assert!(out.split_whitespace().any(|n| n == "cm1"), "{out}");

    let stderr = server.fails(&[
        "create",
        "configmap",
        "cm1",
        "-n",
        &ns,
        "--from-literal=a=b",
    ]);
    assert!(
        stderr.contains(r#"configmaps "cm1" already exists"#),
        "{stderr}"
    );
    let manifest =
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm1\n  namespace: {ns}\n");
    let stderr = server.fails_stdin(&["create", "--validate=false", "-f", "-"], &manifest);
    assert!(
        stderr.contains(r#"Error from server (AlreadyExists): error when creating "STDIN": configmaps "cm1" already exists"#),
        "{stderr}"
    );

    let stderr = server.fails(&["get", "configmap", "nope", "-n", &ns]);
    assert!(
        stderr.contains(r#"Error from server (NotFound): configmaps "nope" not found"#),
        "{stderr}"
    );
}

const MANIFEST: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: app-config
  namespace: applied
  labels:
    app: web
data:
  mode: MODE
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: applied
  labels:
    app: web
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: nginx:1.27
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: applied
spec:
  selector:
    app: web
  ports:
  - port: 80
    targetPort: 8080
"#;

fn apply_a_plain_manifest(backend: Backend) {
    let server = TestServer::start(backend);
    namespace(&server, "applied");
    let out = server.ok_stdin(
        &["apply", "--validate=false", "-f", "-"],
        &MANIFEST.replace("MODE", "blue"),
    );
    assert_eq!(
        names(&out),
        [
            "configmap/app-config created",
            "deployment.apps/web created",
            "service/web created"
        ],
        "{out}"
    );
    let cm = server.json(&["get", "configmap", "app-config", "-n", "applied"]);
    assert_eq!(cm["data"]["mode"], "blue");
    // Client-side apply records what was applied, for the next apply to compute its patch.
    let annotations = &cm["metadata"]["annotations"];
    assert!(
        annotations["kubectl.kubernetes.io/last-applied-configuration"].is_string(),
        "{cm}"
    );

    let out = server.ok(&["get", "deployment", "web", "-n", "applied"]);
    assert_eq!(
        header(&out),
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        "{out}"
    );
    let row = &table(&out)[1];
    assert_eq!(row[0], "web", "{out}");
    assert!(row[1].ends_with("/2"), "{out}");

    let out = server.ok(&["get", "service", "web", "-n", "applied"]);
    assert_eq!(
        header(&out),
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ],
        "{out}"
    );
    let row = &table(&out)[1];
    assert_eq!(
        (row[0].as_str(), row[1].as_str(), row[4].as_str()),
        ("web", "ClusterIP", "80/TCP"),
        "{out}"
    );
}

fn apply_again_updates_what_changed(backend: Backend) {
    let server = TestServer::start(backend);
    namespace(&server, "applied");
    server.ok_stdin(
        &["apply", "--validate=false", "-f", "-"],
        &MANIFEST.replace("MODE", "blue"),
    );
    let out = server.ok_stdin(
        &["apply", "--validate=false", "-f", "-"],
        &MANIFEST.replace("MODE", "green"),
    );
    assert_eq!(
        names(&out),
        [
            "configmap/app-config configured",
            "deployment.apps/web unchanged",
            "service/web unchanged"
        ],
        "{out}"
    );
    let cm = server.json(&["get", "configmap", "app-config", "-n", "applied"]);
    assert_eq!(cm["data"]["mode"], "green");
}

const LABELLED: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: l1, namespace: sel, labels: {app: web, tier: front}}
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: l2, namespace: sel, labels: {app: db}}
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: l3, namespace: sel}
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: l1, namespace: sel2, labels: {app: web}}
"#;

fn all_namespaces_and_label_selectors(backend: Backend) {
    let server = TestServer::start(backend);
    namespace(&server, "sel");
    namespace(&server, "sel2");
    server.ok_stdin(&["create", "--validate=false", "-f", "-"], LABELLED);

    let out = server.ok(&["get", "configmaps", "-A"]);
    assert_eq!(header(&out), ["NAMESPACE", "NAME", "DATA", "AGE"], "{out}");
    let rows = table(&out);
    for (ns, name) in [("sel", "l1"), ("sel", "l2"), ("sel", "l3"), ("sel2", "l1")] {
        assert!(
            rows.iter().any(|r| r[0] == ns && r[1] == name),
            "no {ns}/{name} in:\n{out}"
        );
    }

    let get = |selector: &str| {
        names(&server.ok(&[
            "get",
            "configmaps",
            "-n",
            "sel",
            "-l",
            selector,
            "-o",
            "name",
        ]))
    };
    assert_eq!(get("app=web"), ["configmap/l1"]);
    assert_eq!(get("app=web,tier=front"), ["configmap/l1"]);
    assert_eq!(get("app in (web,db)"), ["configmap/l1", "configmap/l2"]);
    assert_eq!(get("app"), ["configmap/l1", "configmap/l2"]);
    let without_app = get("!app");
    assert!(
        without_app.contains(&"configmap/l3".to_string()),
        "{without_app:?}"
    );
    assert!(
        !without_app
            .iter()
            .any(|n| n == "configmap/l1" || n == "configmap/l2"),
        "{without_app:?}"
    );
    let not_web = get("app!=web");
    assert!(
        not_web.contains(&"configmap/l2".to_string())
            && !not_web.contains(&"configmap/l1".to_string()),
        "{not_web:?}"
    );

    let out = server.ok(&["get", "configmaps", "-A", "-l", "app=web"]);
    let rows = table(&out);
    assert_eq!(rows.len(), 3, "{out}");
    assert!(rows.iter().any(|r| r[0] == "sel2" && r[1] == "l1"), "{out}");

    let out = server.ok(&["get", "configmap", "l1", "-n", "sel", "--show-labels"]);
    assert_eq!(
        header(&out).last().map(String::as_str),
        Some("LABELS"),
        "{out}"
    );
    assert_eq!(
        table(&out)[1].last().map(String::as_str),
        Some("app=web,tier=front"),
        "{out}"
    );

    let stderr = server.fails(&["get", "configmaps", "-n", "sel", "-l", "app in (web"]);
    assert!(!stderr.is_empty());
}

fn field_selectors(backend: Backend) {
    let server = TestServer::start(backend);
    namespace(&server, "sel");
    namespace(&server, "sel2");
    server.ok_stdin(&["create", "--validate=false", "-f", "-"], LABELLED);

    let get = |args: &[&str]| {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend(["-o", "name"]);
        names(&server.ok(&all))
    };
    assert_eq!(
        get(&[
            "configmaps",
            "-n",
            "sel",
            "--field-selector",
            "metadata.name=l2"
        ]),
        ["configmap/l2"]
    );
    let others = get(&[
        "configmaps",
        "-n",
        "sel",
        "--field-selector",
        "metadata.name!=l2",
    ]);
    assert!(
        others.contains(&"configmap/l1".to_string())
            && !others.contains(&"configmap/l2".to_string()),
        "{others:?}"
    );
    let out = server.ok(&[
        "get",
        "configmaps",
        "-A",
        "--field-selector",
        "metadata.namespace=sel2",
    ]);
    let rows = table(&out);
    assert!(rows[1..].iter().all(|r| r[0] == "sel2"), "{out}");
    assert!(rows.iter().any(|r| r[1] == "l1"), "{out}");

    server.ok(&[
        "create",
        "secret",
        "generic",
        "s1",
        "-n",
        "sel",
        "--type=example.com/one",
        "--from-literal=k=v",
    ]);
    server.ok(&[
        "create",
        "secret",
        "generic",
        "s2",
        "-n",
        "sel",
        "--from-literal=k=v",
    ]);
    assert_eq!(
        get(&[
            "secrets",
            "-n",
            "sel",
            "--field-selector",
            "type=example.com/one"
        ]),
        ["secret/s1"]
    );
    let opaque = get(&["secrets", "-n", "sel", "--field-selector", "type=Opaque"]);
    assert!(
        opaque.contains(&"secret/s2".to_string()) && !opaque.contains(&"secret/s1".to_string()),
        "{opaque:?}"
    );

    server.ok_stdin(
        &["create", "--validate=false", "-f", "-"],
        r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: on-a, namespace: sel}
  spec: {nodeName: node-a, containers: [{name: c, image: busybox}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: unbound, namespace: sel}
  spec: {containers: [{name: c, image: busybox}]}
"#,
    );
    assert_eq!(
        get(&[
            "pods",
            "-n",
            "sel",
            "--field-selector",
            "spec.nodeName=node-a"
        ]),
        ["pod/on-a"]
    );
    assert_eq!(
        get(&["pods", "-n", "sel", "--field-selector", "spec.nodeName="]),
        ["pod/unbound"]
    );
    assert_eq!(
        get(&[
            "pods",
            "-n",
            "sel",
            "--field-selector",
            "status.phase=Pending"
        ]),
        ["pod/on-a", "pod/unbound"]
    );

    let stderr = server.fails(&[
        "get",
        "configmaps",
        "-n",
        "sel",
        "--field-selector",
        "data.nope=1",
    ]);
    assert!(
        stderr.contains("BadRequest") || stderr.contains("field label not supported"),
        "{stderr}"
    );
}

fn pagination_returns_everything(backend: Backend) {
    let server = TestServer::start(backend);
    let ns = namespace(&server, "pages");
    for i in 0..7 {
        server.ok(&["create", "configmap", &format!("p{i}"), "-n", &ns]);
    }
    let out = server.ok(&[
        "get",
        "configmaps",
        "-n",
        &ns,
        "--chunk-size=2",
        "-o",
        "name",
    ]);
    let got: Vec<String> = names(&out)
        .into_iter()
        .filter(|n| n.starts_with("configmap/p"))
        .collect();
    assert_eq!(
        got,
        (0..7)
            .map(|i| format!("configmap/p{i}"))
            .collect::<Vec<_>>()
    );
    // The same through the raw API: a limited page says there is more.
    let page = server.ok(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/{ns}/configmaps?limit=3"),
    ]);
    let page: serde_json::Value = serde_json::from_str(&page).unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 3, "{page}");
    assert!(
        page["metadata"]["continue"]
            .as_str()
            .is_some_and(|c| !c.is_empty()),
        "{page}"
    );
}

fn describe_shows_the_object(backend: Backend) {
    let server = TestServer::start(backend);
    let ns = namespace(&server, "desc");
    server.ok(&[
        "create",
        "configmap",
        "cm1",
        "-n",
        &ns,
        "--from-literal=colour=blue",
    ]);
    let out = server.ok(&["describe", "configmap", "cm1", "-n", &ns]);
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")).map(str::trim))
            .unwrap_or_else(|| panic!("no {name}: in\n{out}"))
    };
    assert_eq!(field("Name"), "cm1");
    assert_eq!(field("Namespace"), "desc");
    assert_eq!(field("Labels"), "<none>");
    assert!(out.contains("Data\n====\ncolour:\n----\nblue"), "{out}");

    let out = server.ok(&["describe", "namespace", &ns]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("Status:") && l.ends_with("Active")),
        "{out}"
    );
}

fn delete_with_and_without_wait(backend: Backend) {
    let server = TestServer::start(backend);
    let ns = namespace(&server, "del");
    server.ok(&["create", "configmap", "a", "-n", &ns]);
    server.ok(&["create", "configmap", "b", "-n", &ns]);
    let out = server.ok(&["delete", "configmap", "a", "-n", &ns]);
    assert_eq!(out.trim(), r#"configmap "a" deleted"#);
    let out = server.ok(&[
        "delete",
        "configmap",
        "b",
        "-n",
        &ns,
        "--wait=true",
        "--timeout=30s",
    ]);
    assert_eq!(out.trim(), r#"configmap "b" deleted"#);
    let stderr = server.fails(&["get", "configmap", "a", "-n", &ns]);
    assert!(stderr.contains(r#"configmaps "a" not found"#), "{stderr}");
    let stderr = server.fails(&["delete", "configmap", "a", "-n", &ns]);
    assert!(stderr.contains(r#"configmaps "a" not found"#), "{stderr}");
    let out = server.ok(&["delete", "configmap", "a", "-n", &ns, "--ignore-not-found"]);
    assert_eq!(out.trim(), "");
}

fn watch_sees_later_changes(backend: Backend) {
    let server = TestServer::start(backend);
    let ns = namespace(&server, "watched");
    server.ok(&["create", "configmap", "w1", "-n", &ns, "--from-literal=v=1"]);
    let mut watch = server.kubectl_stream(&[
        "get",
        "configmaps",
        "-n",
        &ns,
        "-w",
        "--output-watch-events",
    ]);
    let timeout = Duration::from_secs(20);
    watch.wait_for(timeout, |l| l.contains("w1"));

    server.ok(&["create", "configmap", "w2", "-n", &ns]);
    let seen = watch.wait_for(timeout, |l| l.contains("w2"));
    assert!(seen.last().unwrap().starts_with("ADDED"), "{seen:?}");

    let mut object = server.json(&["get", "configmap", "w1", "-n", &ns]);
    object["data"]["v"] = "2".into();
    server.ok_stdin(
        &["replace", "--validate=false", "-f", "-"],
        &object.to_string(),
    );
    let seen = watch.wait_for(timeout, |l| l.contains("w1"));
    assert!(seen.last().unwrap().starts_with("MODIFIED"), "{seen:?}");

    server.ok(&["delete", "configmap", "w2", "-n", &ns]);
    let seen = watch.wait_for(timeout, |l| l.contains("w2"));
    assert!(seen.last().unwrap().starts_with("DELETED"), "{seen:?}");

    // A watch of one object by name (what `kubectl get NAME -w` and `delete --wait` use).
    let mut one = server.kubectl_stream(&[
        "get",
        "configmap",
        "w1",
        "-n",
        &ns,
        "-w",
        "-o",
        "jsonpath={.data.v}{\"\\n\"}",
    ]);
    one.wait_for(timeout, |l| l.trim() == "2");
    let mut object = server.json(&["get", "configmap", "w1", "-n", &ns]);
    object["data"]["v"] = "3".into();
    server.ok_stdin(
        &["replace", "--validate=false", "-f", "-"],
        &object.to_string(),
    );
    one.wait_for(timeout, |l| l.trim() == "3");
}

fn discovery_lists_resources_and_versions(backend: Backend) {
    let server = TestServer::start(backend);
    let out = server.ok(&["api-versions"]);
    let versions: Vec<&str> = out.lines().collect();
    for expected in [
        "v1",
        "apps/v1",
        "batch/v1",
        "coordination.k8s.io/v1",
        "events.k8s.io/v1",
        "rbac.authorization.k8s.io/v1",
        "storage.k8s.io/v1",
        "apiextensions.k8s.io/v1",
    ] {
        assert!(versions.contains(&expected), "no {expected} in:\n{out}");
    }

    let out = server.ok(&["api-resources"]);
    assert_eq!(
        header(&out),
        ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"],
        "{out}"
    );
    let rows = table(&out);
    let row = |name: &str| {
        rows.iter()
            .find(|r| r[0] == name)
            .unwrap_or_else(|| panic!("no {name} in:\n{out}"))
            .clone()
    };
    assert_eq!(
        row("configmaps"),
        ["configmaps", "cm", "v1", "true", "ConfigMap"]
    );
    assert_eq!(
        row("namespaces"),
        ["namespaces", "ns", "v1", "false", "Namespace"]
    );
    assert_eq!(row("pods"), ["pods", "po", "v1", "true", "Pod"]);
    assert_eq!(
        row("deployments"),
        ["deployments", "deploy", "apps/v1", "true", "Deployment"]
    );
    assert_eq!(
        row("customresourcedefinitions"),
        [
            "customresourcedefinitions",
            "crd,crds",
            "apiextensions.k8s.io/v1",
            "false",
            "CustomResourceDefinition"
        ]
    );
    assert_eq!(
        row("leases"),
        ["leases", "coordination.k8s.io/v1", "true", "Lease"]
    );
    assert_eq!(
        row("clusterroles"),
        [
            "clusterroles",
            "rbac.authorization.k8s.io/v1",
            "false",
            "ClusterRole"
        ]
    );
    for name in [
        "nodes",
        "services",
        "endpoints",
        "secrets",
        "serviceaccounts",
        "events",
        "resourcequotas",
        "limitranges",
        "persistentvolumes",
        "persistentvolumeclaims",
        "podtemplates",
        "replicasets",
        "daemonsets",
        "statefulsets",
        "jobs",
        "cronjobs",
        "storageclasses",
        "roles",
        "rolebindings",
        "clusterrolebindings",
    ] {
        row(name);
    }

    let out = server.ok(&["api-resources", "--namespaced=false", "-o", "name"]);
    assert!(
        out.lines().any(|l| l == "namespaces") && !out.lines().any(|l| l == "configmaps"),
        "{out}"
    );
    // Short names resolve through discovery.
    let out = server.ok(&["get", "ns", "default", "-o", "name"]);
    assert_eq!(out.trim(), "namespace/default");
}

fn conflicting_update_is_refused(backend: Backend) {
    let server = TestServer::start(backend);
    let ns = namespace(&server, "occ");
    server.ok(&["create", "configmap", "c1", "-n", &ns, "--from-literal=v=1"]);
    let stale = server.json(&["get", "configmap", "c1", "-n", &ns]);

    let mut first = stale.clone();
    first["data"]["v"] = "2".into();
    let out = server.ok_stdin(
        &["replace", "--validate=false", "-f", "-"],
        &first.to_string(),
    );
    assert_eq!(out.trim(), "configmap/c1 replaced");

    let mut second = stale.clone();
    second["data"]["v"] = "3".into();
    let stderr = server.fails_stdin(
        &["replace", "--validate=false", "-f", "-"],
        &second.to_string(),
    );
    assert!(stderr.contains("Conflict"), "{stderr}");
    assert!(
        stderr.contains(r#"Operation cannot be fulfilled on configmaps "c1": the object has been modified; please apply your changes to the latest version and try again"#),
        "{stderr}"
    );
    let now = server.json(&["get", "configmap", "c1", "-n", &ns]);
    assert_eq!(now["data"]["v"], "2", "the losing write changed nothing");
    assert_ne!(
        now["metadata"]["resourceVersion"],
        stale["metadata"]["resourceVersion"]
    );
}

fn namespace_deletion_empties_it(backend: Backend) {
    let server = TestServer::start(backend);
    let ns = namespace(&server, "doomed");
    for i in 0..5 {
        server.ok(&["create", "configmap", &format!("c{i}"), "-n", &ns]);
    }
    server.ok(&[
        "create",
        "secret",
        "generic",
        "s",
        "-n",
        &ns,
        "--from-literal=a=b",
    ]);
    namespace(&server, "survivor");
    server.ok(&["create", "configmap", "keep", "-n", "survivor"]);

    // kubectl waits (by default) until the namespace is gone.
    let out = server.ok(&["delete", "namespace", &ns, "--timeout=60s"]);
    assert_eq!(out.trim(), r#"namespace "doomed" deleted"#);
    let stderr = server.fails(&["get", "namespace", &ns]);
    assert!(
        stderr.contains(r#"namespaces "doomed" not found"#),
        "{stderr}"
    );
    let out = server.kubectl(&["get", "configmaps,secrets", "-n", &ns, "-o", "name"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("configmap/c") && !stdout.contains("secret/s"),
        "left behind:\n{stdout}"
    );
    let stderr = server.fails(&["create", "configmap", "late", "-n", &ns]);
    assert!(
        stderr.contains(r#"namespaces "doomed" not found"#),
        "{stderr}"
    );
    assert_eq!(
        server
            .ok(&["get", "configmap", "keep", "-n", "survivor", "-o", "name"])
            .trim(),
        "configmap/keep"
    );
}

fn pods_show_their_columns(backend: Backend) {
    let server = TestServer::start(backend);
    let ns = namespace(&server, "pods");
    let out = server.ok(&[
        "run",
        "p1",
        "-n",
        &ns,
        "--image=busybox:1.36",
        "--restart=Never",
        "--",
        "sleep",
        "60",
    ]);
    assert_eq!(out.trim(), "pod/p1 created");
    let out = server.ok(&["get", "pods", "-n", &ns]);
    assert_eq!(
        header(&out),
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "{out}"
    );
    let row = &table(&out)[1];
    assert_eq!(row[..4], ["p1", "0/1", "Pending", "0"], "{out}");
    let out = server.ok(&["get", "pods", "-n", &ns, "-o", "wide"]);
    assert_eq!(
        header(&out),
        [
            "NAME",
            "READY",
            "STATUS",
            "RESTARTS",
            "AGE",
            "IP",
            "NODE",
            "NOMINATED NODE",
            "READINESS GATES"
        ],
        "{out}"
    );
    let pod = server.json(&["get", "pod", "p1", "-n", &ns]);
    assert_eq!(pod["spec"]["containers"][0]["image"], "busybox:1.36");
    assert_eq!(pod["status"]["phase"], "Pending", "{pod}");
}

fn generate_name_makes_unique_names(backend: Backend) {
    let server = TestServer::start(backend);
    let ns = namespace(&server, "gen");
    let manifest = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  generateName: job-\n  namespace: {ns}\n"
    );
    let a = server.ok_stdin(&["create", "--validate=false", "-f", "-"], &manifest);
    let b = server.ok_stdin(&["create", "--validate=false", "-f", "-"], &manifest);
    for out in [&a, &b] {
        let name = out
            .trim()
            .strip_prefix("configmap/")
            .and_then(|s| s.strip_suffix(" created"));
        let name = name.unwrap_or_else(|| panic!("unexpected output {out:?}"));
        assert!(
            name.starts_with("job-") && name.len() == "job-".len() + 5,
            "{name}"
        );
    }
    assert_ne!(a, b);
}
