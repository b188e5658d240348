//! Server-side apply with the real kubectl: field ownership in `managedFields`, conflicts
//! between managers answered 409 with kubectl's advice, `--force-conflicts`, removal of fields a
//! manager stops declaring, taking over from client-side apply, and custom resources merged by
//! their schema's list types.

mod common;

use common::{Backend, TestServer};
use serde_json::json;

backend_tests!(
    ownership_and_conflicts,
    takes_over_from_client_side_apply,
    custom_resource_lists_merge_by_key,
    builtin_lists_merge_by_key,
    apply_errors
);

fn configmap(data: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg\n  namespace: default\ndata:\n{data}"
    )
}

fn managers(obj: &serde_json::Value) -> Vec<(String, String)> {
    obj["metadata"]["managedFields"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| {
                    (
                        e["manager"].as_str().unwrap_or_default().to_string(),
                        e["operation"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn get_with_fields(server: &TestServer, args: &[&str]) -> serde_json::Value {
    let mut args = args.to_vec();
    args.push("--show-managed-fields");
    server.json(&args)
}

fn ownership_and_conflicts(backend: Backend) {
    let server = TestServer::start(backend);
    let out = server.ok_stdin(
        &["apply", "--server-side", "--field-manager=alice", "-f", "-"],
        &configmap("  a: \"1\"\n  b: \"2\"\n"),
    );
    assert_eq!(out.trim(), "configmap/cfg serverside-applied");
    let cm = get_with_fields(&server, &["get", "cm", "cfg"]);
    assert_eq!(
        managers(&cm),
        vec![("alice".to_string(), "Apply".to_string())]
    );
    assert_eq!(
        cm["metadata"]["managedFields"][0]["fieldsV1"]["f:data"],
        json!({"f:a": {}, "f:b": {}})
    );

    // Another manager setting a different value conflicts, and kubectl explains what to do.
    let err = server.fails_stdin(
        &["apply", "--server-side", "--field-manager=bob", "-f", "-"],
        &configmap("  a: \"2\"\n"),
    );
    assert!(
        err.contains(r#"Apply failed with 1 conflict: conflict with "alice": .data.a"#)
            || err.contains(r#"conflict with "alice" using v1: .data.a"#),
        "{err}"
    );
    assert!(err.contains("--force-conflicts"), "{err}");
    assert_eq!(server.json(&["get", "cm", "cfg"])["data"]["a"], "1");

    // Forcing takes the field over.
    server.ok_stdin(
        &[
            "apply",
            "--server-side",
            "--field-manager=bob",
            "--force-conflicts",
            "-f",
            "-",
        ],
        &configmap("  a: \"2\"\n"),
    );
    let cm = get_with_fields(&server, &["get", "cm", "cfg"]);
    assert_eq!(cm["data"], json!({"a": "2", "b": "2"}));
    let alice = cm["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["manager"] == "alice")
        .unwrap()
        .clone();
    assert_eq!(alice["fieldsV1"]["f:data"], json!({"f:b": {}}));

    // A field a manager stops declaring is removed when nobody else owns it.
    server.ok_stdin(
        &["apply", "--server-side", "--field-manager=alice", "-f", "-"],
        &configmap("  c: \"3\"\n"),
    );
    assert_eq!(
        server.json(&["get", "cm", "cfg"])["data"],
        json!({"a": "2", "c": "3"})
    );

    // An ordinary update takes ownership of what it changed, so re-applying conflicts with it.
    server.ok(&[
        "patch",
        "cm",
        "cfg",
        "--type=merge",
        "--field-manager=editor",
        "-p",
        r#"{"data":{"c":"4"}}"#,
    ]);
    let err = server.fails_stdin(
        &["apply", "--server-side", "--field-manager=alice", "-f", "-"],
        &configmap("  c: \"3\"\n"),
    );
    assert!(
        err.contains(r#""editor""#) && err.contains(".data.c"),
        "{err}"
    );

    // Dry run changes nothing.
    server.ok_stdin(
        &[
            "apply",
            "--server-side",
            "--field-manager=alice",
            "--force-conflicts",
            "--dry-run=server",
            "-f",
            "-",
        ],
        &configmap("  c: \"5\"\n"),
    );
    assert_eq!(server.json(&["get", "cm", "cfg"])["data"]["c"], "4");
}

fn takes_over_from_client_side_apply(backend: Backend) {
    let server = TestServer::start(backend);
    let manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: legacy\n  namespace: default\n  labels: {app: web}\ndata:\n  a: \"1\"\n";
    assert_eq!(
        server.ok_stdin(&["apply", "-f", "-"], manifest).trim(),
        "configmap/legacy created"
    );
    let cm = get_with_fields(&server, &["get", "cm", "legacy"]);
    assert!(
        managers(&cm).contains(&(
            "kubectl-client-side-apply".to_string(),
            "Update".to_string()
        )),
        "{cm}"
    );
    // The same configuration applied server-side takes the fields over without a conflict.
    assert_eq!(
        server
            .ok_stdin(&["apply", "--server-side", "-f", "-"], manifest)
            .trim(),
        "configmap/legacy serverside-applied"
    );
    let cm = get_with_fields(&server, &["get", "cm", "legacy"]);
    let kubectl = cm["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["manager"] == "kubectl")
        .cloned()
        .unwrap_or_else(|| panic!("{cm}"));
    assert_eq!(kubectl["operation"], "Apply");
    assert_eq!(kubectl["fieldsV1"]["f:data"], json!({"f:a": {}}));
    // A changed value applied server-side after client-side apply works too.
    let changed = manifest.replace("a: \"1\"", "a: \"2\"");
    server.ok_stdin(&["apply", "--server-side", "-f", "-"], &changed);
    assert_eq!(server.json(&["get", "cm", "legacy"])["data"]["a"], "2");
}

fn custom_resource_lists_merge_by_key(backend: Backend) {
    let server = TestServer::start(backend);
    let crd = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: routes.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: routes, kind: Route}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              backends:
                type: array
                x-kubernetes-list-type: map
                x-kubernetes-list-map-keys: [name]
                items:
                  type: object
                  required: [name]
                  properties:
                    name: {type: string}
                    weight: {type: integer}
"#;
    server.ok_stdin(&["apply", "--server-side", "-f", "-"], crd);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !server.kubectl(&["get", "routes"]).status.success() {
        assert!(std::time::Instant::now() < deadline, "routes not served");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let route = |backend: &str, weight: u32| {
        format!(
            "apiVersion: example.com/v1\nkind: Route\nmetadata: {{name: r, namespace: default}}\nspec:\n  backends:\n  - {{name: {backend}, weight: {weight}}}\n"
        )
    };
    server.ok_stdin(
        &[
            "apply",
            "--server-side",
            "--field-manager=team-a",
            "-f",
            "-",
        ],
        &route("a", 1),
    );
    server.ok_stdin(
        &[
            "apply",
            "--server-side",
            "--field-manager=team-b",
            "-f",
            "-",
        ],
        &route("b", 2),
    );
    let r = server.json(&["get", "routes", "r"]);
    assert_eq!(
        r["spec"]["backends"],
        json!([{"name": "a", "weight": 1}, {"name": "b", "weight": 2}]),
        "{r}"
    );
    // team-a withdraws its backend; team-b's stays.
    server.ok_stdin(&["apply", "--server-side", "--field-manager=team-a", "-f", "-"], "apiVersion: example.com/v1\nkind: Route\nmetadata: {name: r, namespace: default}\nspec: {}\n");
    let r = server.json(&["get", "routes", "r"]);
    assert_eq!(
        r["spec"]["backends"],
        json!([{"name": "b", "weight": 2}]),
        "{r}"
    );
}

fn builtin_lists_merge_by_key(backend: Backend) {
    let server = TestServer::start(backend);
    let app = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 0
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: app, image: "busybox:1", env: [{name: A, value: "1"}]}
"#;
    let sidecar = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  template:
    spec:
      containers:
      - {name: proxy, image: "busybox:2"}
"#;
    server.ok_stdin(
        &[
            "apply",
            "--server-side",
            "--field-manager=app-team",
            "-f",
            "-",
        ],
        app,
    );
    server.ok_stdin(
        &["apply", "--server-side", "--field-manager=mesh", "-f", "-"],
        sidecar,
    );
    let names = |d: &serde_json::Value| -> Vec<String> {
        d["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    };
    let d = server.json(&["get", "deploy", "web"]);
    assert_eq!(names(&d), ["app", "proxy"], "{d}");
    // The app team changes its own container; the sidecar is untouched.
    server.ok_stdin(
        &[
            "apply",
            "--server-side",
            "--field-manager=app-team",
            "-f",
            "-",
        ],
        &app.replace("busybox:1", "busybox:3"),
    );
    let d = server.json(&["get", "deploy", "web"]);
    let containers = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(containers[0]["image"], "busybox:3");
    assert_eq!(containers[1]["image"], "busybox:2");
    // The mesh withdraws its sidecar.
    server.ok_stdin(
        &["apply", "--server-side", "--field-manager=mesh", "-f", "-"],
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: default}\n",
    );
    assert_eq!(names(&server.json(&["get", "deploy", "web"])), ["app"]);
}

fn apply_errors(backend: Backend) {
    let server = TestServer::start(backend);
    let path = "/api/v1/namespaces/default/configmaps/x?fieldManager=m";
    let (status, body) = server.raw(
        http::Method::PATCH,
        path,
        "application/apply-patch+yaml",
        "data: [unclosed",
    );
    assert_eq!(status.as_u16(), 400, "{body}");
    let (status, body) = server.raw(
        http::Method::PATCH,
        "/api/v1/namespaces/default/configmaps/x",
        "application/apply-patch+yaml",
        "{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\"}",
    );
    assert_eq!(status.as_u16(), 422, "{body}");
    assert!(body.contains("fieldManager: Required value"), "{body}");
    let (status, body) = server.raw(
        http::Method::PATCH,
        path,
        "application/apply-patch+yaml",
        "{\"data\":{\"a\":\"b\"}}",
    );
    assert_eq!(status.as_u16(), 400, "{body}");
    assert!(body.contains("apiVersion must be set"), "{body}");
    let (status, body) = server.raw(
        http::Method::PATCH,
        path,
        "application/apply-patch+yaml",
        "{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"other\"}}",
    );
    assert_eq!(status.as_u16(), 400, "{body}");
    assert!(
        body.contains("does not match the name on the URL"),
        "{body}"
    );
}
