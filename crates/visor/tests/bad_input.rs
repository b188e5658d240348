//! Bad input gets a Kubernetes `Status` with upstream's code and reason — never a 500, a panic
//! or a hang — and the server keeps serving afterwards.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{Backend, TestServer};
use http::{Method, StatusCode};

backend_tests!(
    bad_requests_get_upstream_status_codes,
    invalid_objects_are_422_with_causes,
    kubectl_reports_bad_input
);

const CONFIGMAPS: &str = "/api/v1/namespaces/default/configmaps";
const THREE_MIB: usize = 3 * 1024 * 1024;

/// Asserts `body` is a `Status` object with `code` and `reason`, and returns it.
#[track_caller]
fn status(code: StatusCode, body: &str, expected: StatusCode, reason: &str) -> serde_json::Value {
    assert_eq!(code, expected, "body: {body}");
    let status: serde_json::Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("{expected}: body is not a JSON Status ({e}): {body}"));
    assert_eq!(status["kind"], "Status", "{status}");
    assert_eq!(status["apiVersion"], "v1", "{status}");
    assert_eq!(status["status"], "Failure", "{status}");
    assert_eq!(status["code"], expected.as_u16(), "{status}");
    assert_eq!(status["reason"], reason, "{status}");
    assert!(
        status["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{status}"
    );
    status
}

fn configmap(name: &str, namespace: &str) -> String {
    serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace}})
        .to_string()
}

fn bad_requests_get_upstream_status_codes(backend: Backend) {
    let server = TestServer::start(backend);
    let json = "application/json";

    // 400: malformed JSON, malformed YAML, a body that is not an object, an unknown kind, a kind
    // that does not belong at this endpoint, a namespace that contradicts the URL.
    for (content_type, body) in [
        (
            json,
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"#,
        ),
        (json, "[]"),
        (json, "\"just a string\""),
        (
            "application/yaml",
            "metadata: [unclosed\n  name: : x\n\t- ]",
        ),
        (
            json,
            r#"{"apiVersion":"v1","kind":"Frobnicator","metadata":{"name":"x"}}"#,
        ),
        (
            json,
            r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"x"}}"#,
        ),
        (json, &configmap("x", "kube-system")),
    ] {
        let (code, text) = server.raw(Method::POST, CONFIGMAPS, content_type, body.to_string());
        status(code, &text, StatusCode::BAD_REQUEST, "BadRequest");
    }

    // 404: unknown resources and groups, missing objects.
    for path in ["/api/v1/frobnicators", "/apis/nope.example.com/v1"] {
        let (code, text) = server.raw(Method::GET, path, json, "");
        status(code, &text, StatusCode::NOT_FOUND, "NotFound");
    }
    let (code, text) = server.raw(
        Method::GET,
        "/api/v1/namespaces/default/configmaps/absent",
        json,
        "",
    );
    let s = status(code, &text, StatusCode::NOT_FOUND, "NotFound");
    assert_eq!(s["details"]["name"], "absent", "{s}");
    assert_eq!(s["details"]["kind"], "configmaps", "{s}");

    // 405: a verb the resource does not have.
    let (code, text) = server.raw(
        Method::POST,
        &format!("{CONFIGMAPS}/x"),
        json,
        configmap("x", "default"),
    );
    status(
        code,
        &text,
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
    );

    // 415: a content type the API does not read.
    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let (code, text) = server.raw(
            Method::POST,
            CONFIGMAPS,
            content_type,
            configmap("x", "default"),
        );
        status(
            code,
            &text,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
        );
    }

    // Bytes that are not TLS at all: the connection is dropped, nothing else happens.
    let mut plain = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut sink = Vec::new();
    let _ = plain.read_to_end(&mut sink);

    // 413: a body over 3 MiB. Last, because an HTTP/1.1 client is still sending the body when
    // the answer is due: the server must let the client read it (as upstream does, by
    // half-closing and lingering) rather than reset the connection under it.
    let big = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"big"}},"data":{{"x":"{}"}}}}"#,
        "a".repeat(THREE_MIB)
    );
    let (code, text) = server.raw(Method::POST, CONFIGMAPS, json, big.clone());
    status(
        code,
        &text,
        StatusCode::PAYLOAD_TOO_LARGE,
        "RequestEntityTooLarge",
    );

    // None of it hurt the server.
    assert_eq!(server.ok(&["get", "--raw", "/healthz"]).trim(), "ok");
    let stderr = server.stderr();
    assert!(
        !stderr.contains("panicked"),
        "the server panicked:\n{stderr}"
    );
    let (code, text) = server.raw(
        Method::GET,
        "/api/v1/namespaces/default/configmaps/x",
        json,
        "",
    );
    status(code, &text, StatusCode::NOT_FOUND, "NotFound");
}

fn invalid_objects_are_422_with_causes(backend: Backend) {
    let server = TestServer::start(backend);
    for (name, field) in [
        ("Bad_Name", "metadata.name"),
        ("-leading-dash", "metadata.name"),
        ("", "metadata.name"),
    ] {
        let (code, text) = server.raw(
            Method::POST,
            CONFIGMAPS,
            "application/json",
            configmap(name, "default"),
        );
        let s = status(code, &text, StatusCode::UNPROCESSABLE_ENTITY, "Invalid");
        assert_eq!(s["details"]["kind"], "ConfigMap", "{s}");
        let causes = s["details"]["causes"]
            .as_array()
            .unwrap_or_else(|| panic!("no causes: {s}"));
        assert!(
            causes.iter().any(|c| c["field"] == field),
            "no cause for {field}: {s}"
        );
    }
    // Namespace names are DNS-1123 labels: no dots.
    let body =
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a.b"}})
            .to_string();
    let (code, text) = server.raw(Method::POST, "/api/v1/namespaces", "application/json", body);
    status(code, &text, StatusCode::UNPROCESSABLE_ENTITY, "Invalid");
}

fn kubectl_reports_bad_input(backend: Backend) {
    let server = TestServer::start(backend);
    let stderr = server.fails(&["create", "configmap", "Bad_Name"]);
    assert!(
        stderr.contains(r#"ConfigMap "Bad_Name" is invalid"#),
        "{stderr}"
    );
    assert!(
        stderr.contains(r#"metadata.name: Invalid value: "Bad_Name""#),
        "{stderr}"
    );

    let stderr = server.fails(&["create", "namespace", "Bad"]);
    assert!(stderr.contains(r#"Namespace "Bad" is invalid"#), "{stderr}");

    let stderr = server.fails_stdin(
        &["apply", "--validate=false", "-f", "-"],
        "apiVersion: v1\nkind: Frobnicator\nmetadata:\n  name: x\n",
    );
    assert!(
        stderr.contains(r#"no matches for kind "Frobnicator" in version "v1""#),
        "{stderr}"
    );

    let stderr = server.fails(&["get", "frobnicators"]);
    assert!(
        stderr.contains(r#"the server doesn't have a resource type "frobnicators""#),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.txt");
    std::fs::write(&big, "a".repeat(THREE_MIB + 1024)).unwrap();
    let stderr = server.fails(&[
        "create",
        "configmap",
        "big",
        &format!("--from-file={}", big.display()),
    ]);
    assert!(stderr.to_lowercase().contains("too large"), "{stderr}");

    assert_eq!(server.ok(&["get", "--raw", "/readyz"]).trim(), "ok");
}
