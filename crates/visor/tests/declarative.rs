//! Declarative work with the real kubectl, beyond apply itself: `kubectl diff`, each patch
//! type through `kubectl patch --type`, `kubectl explain` on a custom resource's nested field,
//! a finalizer holding a deletion until it is removed, and a pod's grace period holding its
//! deletion through status updates until its host deletes it.

mod common;

use std::time::{Duration, Instant};

use common::{Backend, TestServer};

backend_tests!(
    diff_shows_what_apply_would_change,
    every_patch_type,
    explain_a_custom_resource,
    finalizer_holds_deletion,
    grace_period_holds_pod_through_status_updates
);

const CONFIGMAP: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: default\ndata:\n  mode: fast\n";

fn diff_shows_what_apply_would_change(backend: Backend) {
    let server = TestServer::start(backend);
    server.ok_stdin(&["apply", "-f", "-"], CONFIGMAP);
    // No difference: exit status 0 and no output.
    let same = server.kubectl_with_stdin(&["diff", "-f", "-"], Some(CONFIGMAP));
    assert_eq!(
        same.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&same.stderr)
    );
    assert!(same.stdout.is_empty());
    // A change: exit status 1 and a diff naming the field's old and new values.
    let changed = CONFIGMAP.replace("mode: fast", "mode: safe");
    let out = server.kubectl_with_stdin(&["diff", "-f", "-"], Some(&changed));
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("-  mode: fast") && text.contains("+  mode: safe"),
        "{text}"
    );
    // diff is a dry run: nothing changed.
    assert_eq!(
        server.json(&["get", "cm", "settings"])["data"]["mode"],
        "fast"
    );
}

fn every_patch_type(backend: Backend) {
    let server = TestServer::start(backend);
    server.ok_stdin(&["apply", "-f", "-"], CONFIGMAP);
    server.ok(&[
        "patch",
        "cm",
        "settings",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/data/level","value":"3"}]"#,
    ]);
    server.ok(&[
        "patch",
        "cm",
        "settings",
        "--type=merge",
        "-p",
        r#"{"data":{"mode":null,"owner":"ops"}}"#,
    ]);
    server.ok(&[
        "patch",
        "cm",
        "settings",
        "--type=strategic",
        "-p",
        r#"{"metadata":{"labels":{"tier":"gold"}}}"#,
    ]);
    let cm = server.json(&["get", "cm", "settings"]);
    assert_eq!(
        cm["data"],
        serde_json::json!({"level": "3", "owner": "ops"}),
        "{cm}"
    );
    assert_eq!(cm["metadata"]["labels"]["tier"], "gold");
    // A JSON patch whose test fails is refused and changes nothing.
    let err = server.fails(&[
        "patch",
        "cm",
        "settings",
        "--type=json",
        "-p",
        r#"[{"op":"test","path":"/data/level","value":"9"},{"op":"remove","path":"/data/owner"}]"#,
    ]);
    assert!(
        err.contains("The request is invalid") && err.contains("value did not match"),
        "{err}"
    );
    assert_eq!(
        server.json(&["get", "cm", "settings"])["data"]["owner"],
        "ops"
    );
    // A malformed patch document is a 400 with kubectl's usual report.
    let err = server.fails(&[
        "patch",
        "cm",
        "settings",
        "--type=json",
        "-p",
        r#"{"op":"add"}"#,
    ]);
    assert!(
        err.contains("BadRequest") || err.contains("unable to") || err.contains("error"),
        "{err}"
    );
}

fn explain_a_custom_resource(backend: Backend) {
    let server = TestServer::start(backend);
    let crd = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: caches.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: caches, kind: Cache}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        description: A cache in front of a service.
        properties:
          spec:
            type: object
            properties:
              size:
                type: object
                description: How much the cache may hold.
                properties:
                  entries: {type: integer, description: The most entries kept at once.}
"#;
    server.ok_stdin(&["apply", "-f", "-"], crd);
    // The kind is served once the CRD is established; explain follows from OpenAPI.
    let explain = |field: &str, wanted: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = server.kubectl(&["explain", field]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && text.contains(wanted) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "explain {field} never said {wanted:?}:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let text = explain("caches.spec.size.entries", "The most entries kept at once.");
    assert!(text.contains("FIELD: entries <integer>"), "{text}");
    explain("caches.spec.size", "How much the cache may hold.");
}

fn finalizer_holds_deletion(backend: Backend) {
    let server = TestServer::start(backend);
    let held = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n  namespace: default\n  finalizers: [example.com/hold]\n";
    server.ok_stdin(&["apply", "-f", "-"], held);
    server.ok(&["delete", "cm", "held", "--wait=false"]);
    let cm = server.json(&["get", "cm", "held"]);
    assert!(cm["metadata"]["deletionTimestamp"].is_string(), "{cm}");
    // No finalizer may be added while deleting.
    let err = server.fails(&[
        "patch",
        "cm",
        "held",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/metadata/finalizers/-","value":"example.com/other"}]"#,
    ]);
    assert!(
        err.contains("no new finalizers can be added if the object is being deleted"),
        "{err}"
    );
    // Removing the finalizer completes the deletion.
    server.ok(&[
        "patch",
        "cm",
        "held",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    let err = server.fails(&["get", "cm", "held"]);
    assert!(err.contains(r#"configmaps "held" not found"#), "{err}");
}

fn grace_period_holds_pod_through_status_updates(backend: Backend) {
    let server = TestServer::start(backend);
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: graceful\n  namespace: default\nspec:\n  nodeName: host-a\n  containers: [{name: c, image: busybox}]\n";
    server.ok_stdin(&["apply", "-f", "-"], pod);
    server.ok(&["delete", "pod", "graceful", "--wait=false"]);
    let deleting = server.json(&["get", "pod", "graceful"]);
    assert_eq!(
        deleting["metadata"]["deletionGracePeriodSeconds"], 30,
        "{deleting}"
    );
    // The host reports the containers stopping; the pod stays until the host deletes it.
    server.ok(&[
        "patch",
        "pod",
        "graceful",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Succeeded"}}"#,
    ]);
    let stopped = server.json(&["get", "pod", "graceful"]);
    assert_eq!(stopped["status"]["phase"], "Succeeded", "{stopped}");
    server.ok(&["delete", "pod", "graceful", "--grace-period=0", "--force"]);
    let err = server.fails(&["get", "pod", "graceful"]);
    assert!(err.contains(r#"pods "graceful" not found"#), "{err}");
}
