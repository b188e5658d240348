//! OpenAPI with the real `kubectl`: `apply` under kubectl's default validation (which relies
//! on the server's `fieldValidation` support, found in the OpenAPI v3 document), the
//! server's strict, warning and ignoring modes, and `kubectl explain`.

mod common;

use common::{Backend, TestServer};

backend_tests!(
    apply_with_default_validation,
    unknown_fields_under_each_validation_mode,
);

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: NS
spec:
  replicas: 2
EXTRA  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: nginx:1.27
        ports:
        - containerPort: 80
"#;

fn manifest(namespace: &str, extra: &str) -> String {
    DEPLOYMENT.replace("NS", namespace).replace("EXTRA", extra)
}

fn apply_with_default_validation(backend: Backend) {
    let server = TestServer::start(backend);
    server.ok(&["create", "namespace", "declared"]);
    let out = server.ok_stdin(&["apply", "-f", "-"], &manifest("declared", ""));
    assert_eq!(out.trim(), "deployment.apps/web created");
    let deployment = server.json(&["get", "deployment", "web", "-n", "declared"]);
    assert_eq!(deployment["spec"]["replicas"], 2);
    // Applying the same manifest again changes nothing.
    let out = server.ok_stdin(&["apply", "-f", "-"], &manifest("declared", ""));
    assert_eq!(out.trim(), "deployment.apps/web unchanged");
    // Re-applying with an undeclared field is a patch, and the server refuses it too.
    let err = server.fails_stdin(&["apply", "-f", "-"], &manifest("declared", "  foo: bar\n"));
    assert!(
        err.contains(r#"strict decoding error: unknown field "spec.foo""#),
        "{err}"
    );
    // With validation off the field is dropped, as upstream's typed decoding drops it.
    server.ok_stdin(
        &["apply", "--validate=false", "-f", "-"],
        &manifest("declared", "  foo: bar\n"),
    );
    let deployment = server.json(&["get", "deployment", "web", "-n", "declared"]);
    assert!(deployment["spec"].get("foo").is_none(), "{deployment}");
}

fn unknown_fields_under_each_validation_mode(backend: Backend) {
    let server = TestServer::start(backend);
    server.ok(&["create", "namespace", "strict"]);
    let bad = manifest("strict", "  foo: bar\n");

    // kubectl's default is --validate=strict, done by the server when it supports it.
    let err = server.fails_stdin(&["apply", "-f", "-"], &bad);
    assert!(
        err.contains(r#"Deployment in version "v1" cannot be handled as a Deployment: strict decoding error: unknown field "spec.foo""#),
        "{err}"
    );
    assert!(err.contains("Error from server (BadRequest)"), "{err}");
    let out = server.kubectl(&["get", "deployments", "-n", "strict", "-o", "name"]);
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty());

    // --validate=warn: accepted, with the server's warning shown.
    let out = server.kubectl_with_stdin(&["create", "--validate=warn", "-f", "-"], Some(&bad));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(r#"Warning: unknown field "spec.foo""#),
        "{stderr}"
    );

    // --validate=false: accepted silently; the unknown field is dropped.
    server.ok(&["delete", "deployment", "web", "-n", "strict"]);
    let out = server.kubectl_with_stdin(&["apply", "--validate=false", "-f", "-"], Some(&bad));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("unknown field"), "{stderr}");

    // Repeated keys in a JSON body are caught too (kubectl never sends them; raw requests can).
    let body = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"dup"},"data":{"a":"1"},"data":{"b":"2"}}"#;
    let (status, text) = server.raw(
        http::Method::POST,
        "/api/v1/namespaces/strict/configmaps?fieldValidation=Strict",
        "application/json",
        body,
    );
    assert_eq!(status, 400, "{text}");
    assert!(text.contains(r#"duplicate field \"data\""#), "{text}");
}

#[test]
fn explain_describes_fields() {
    let server = TestServer::start(Backend::Sqlite);
    let out = server.ok(&["explain", "pods"]);
    assert!(out.contains("KIND:       Pod"), "{out}");
    assert!(out.contains("Pod is a collection of containers"), "{out}");
    assert!(out.contains("spec\t<PodSpec>"), "{out}");

    let out = server.ok(&["explain", "deployment.spec.template.spec.containers"]);
    assert!(out.contains("GROUP:      apps"), "{out}");
    assert!(out.contains("FIELD: containers <[]Container>"), "{out}");
    assert!(out.contains("image\t<string>"), "{out}");

    let out = server.ok(&["explain", "--recursive", "configmap"]);
    for field in ["binaryData", "data", "immutable", "metadata", "annotations"] {
        assert!(out.contains(field), "{field} missing:\n{out}");
    }
}

#[test]
fn openapi_v3_index_lists_group_versions() {
    let server = TestServer::start(Backend::Sqlite);
    let index: serde_json::Value =
        serde_json::from_str(&server.ok(&["get", "--raw", "/openapi/v3"])).unwrap();
    let paths = index["paths"].as_object().unwrap();
    for gv in [
        "api/v1",
        "apis/apps/v1",
        "apis/batch/v1",
        "apis/rbac.authorization.k8s.io/v1",
    ] {
        let url = paths[gv]["serverRelativeURL"].as_str().unwrap();
        assert!(url.starts_with(&format!("/openapi/v3/{gv}?hash=")), "{url}");
    }
    let url = paths["apis/apps/v1"]["serverRelativeURL"].as_str().unwrap();
    let doc: serde_json::Value = serde_json::from_str(&server.ok(&["get", "--raw", url])).unwrap();
    assert!(doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"].is_object());
    let v2: serde_json::Value =
        serde_json::from_str(&server.ok(&["get", "--raw", "/openapi/v2"])).unwrap();
    assert_eq!(v2["swagger"], "2.0");
    assert!(v2["definitions"]["io.k8s.api.core.v1.Pod"].is_object());
}
