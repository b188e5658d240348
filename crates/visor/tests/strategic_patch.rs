//! Strategic merge patch end to end: the kubectl commands that send one (`apply`, `patch`,
//! `edit`, `cordon`, `set image`, `rollout`) against a real server, on each backend.
//! A custom resource has no built-in type to take merge keys from, so a strategic merge patch
//! on one is refused with `415`, as upstream does.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Backend, TestServer};
use http::{Method, StatusCode};
use serde_json::{Value, json};

backend_tests!(
    apply_merges_three_ways,
    patch_defaults_to_strategic_and_takes_directives,
    bad_strategic_patches_are_refused,
    cordon_and_uncordon_a_node,
    set_image_rollout_label_and_annotate,
    edit_sends_a_strategic_patch,
    custom_resources_refuse_strategic_patches,
);

fn namespace(server: &TestServer, name: &str) {
    server.ok(&["create", "namespace", name]);
}

/// A Deployment manifest with container `c` (env A and, if `with_b`, B) and optionally `d`.
fn deployment(ns: &str, with_b: bool, with_d: bool) -> String {
    let mut env = vec![json!({"name": "A", "value": "1"})];
    if with_b {
        env.push(json!({"name": "B", "value": "2"}));
    }
    let mut containers = vec![json!({"name": "c", "image": "busybox:1", "env": env})];
    if with_d {
        containers.push(json!({"name": "d", "image": "nginx:1"}));
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": containers},
            },
        },
    })
    .to_string()
}

fn containers(server: &TestServer, ns: &str) -> Vec<Value> {
    let deploy = server.json(&["get", "deployment", "web", "-n", ns]);
    deploy["spec"]["template"]["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no containers: {deploy}"))
}

fn container<'a>(list: &'a [Value], name: &str) -> &'a Value {
    list.iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name} in {list:?}"))
}

fn names(list: &[Value]) -> Vec<&str> {
    list.iter().filter_map(|c| c["name"].as_str()).collect()
}

fn apply(server: &TestServer, manifest: &str) -> String {
    server
        .ok_stdin(&["apply", "--validate=false", "-f", "-"], manifest)
        .trim()
        .to_string()
}

fn apply_merges_three_ways(backend: Backend) {
    let server = TestServer::start(backend);
    let ns = "threeway";
    namespace(&server, ns);
    assert_eq!(
        apply(&server, &deployment(ns, true, false)),
        "deployment.apps/web created"
    );
    // A change made on the server, outside the manifest, survives later applies.
    server.ok(&["annotate", "deployment", "web", "-n", ns, "owner=ops"]);

    // Env B removed, container d added.
    assert_eq!(
        apply(&server, &deployment(ns, false, true)),
        "deployment.apps/web configured"
    );
    let list = containers(&server, ns);
    assert_eq!(names(&list), ["c", "d"]);
    assert_eq!(
        container(&list, "c")["env"],
        json!([{"name": "A", "value": "1"}])
    );
    assert_eq!(container(&list, "d")["image"], "nginx:1");
    let deploy = server.json(&["get", "deployment", "web", "-n", ns]);
    assert_eq!(deploy["metadata"]["annotations"]["owner"], "ops");

    // Container d removed again, env B back.
    assert_eq!(
        apply(&server, &deployment(ns, true, false)),
        "deployment.apps/web configured"
    );
    let list = containers(&server, ns);
    assert_eq!(names(&list), ["c"]);
    assert_eq!(
        container(&list, "c")["env"],
        json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}])
    );
    assert_eq!(
        apply(&server, &deployment(ns, true, false)),
        "deployment.apps/web unchanged"
    );
}

fn patch_defaults_to_strategic_and_takes_directives(backend: Backend) {
    let server = TestServer::start(backend);
    let ns = "patching";
    namespace(&server, ns);
    apply(&server, &deployment(ns, true, true));

    // kubectl patch's default type is strategic: only container c's image changes.
    let out = server.ok(&[
        "patch",
        "deployment",
        "web",
        "-n",
        ns,
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"c","image":"busybox:2"}]}}}}"#,
    ]);
    assert_eq!(out.trim(), "deployment.apps/web patched");
    let list = containers(&server, ns);
    assert_eq!(names(&list), ["c", "d"]);
    assert_eq!(container(&list, "c")["image"], "busybox:2");
    assert_eq!(
        container(&list, "c")["env"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(container(&list, "d")["image"], "nginx:1");

    // `$patch: delete` removes one container by its name; `$patch: delete` in env one variable.
    server.ok(&[
        "patch",
        "deployment",
        "web",
        "-n",
        ns,
        "--type",
        "strategic",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"d","$patch":"delete"},{"name":"c","env":[{"name":"A","$patch":"delete"}]}]}}}}"#,
    ]);
    let list = containers(&server, ns);
    assert_eq!(names(&list), ["c"]);
    assert_eq!(
        container(&list, "c")["env"],
        json!([{"name": "B", "value": "2"}])
    );

    // `$retainKeys` on the rollout strategy drops rollingUpdate when switching to Recreate.
    server.ok(&[
        "patch",
        "deployment",
        "web",
        "-n",
        ns,
        "-p",
        r#"{"spec":{"strategy":{"type":"RollingUpdate","rollingUpdate":{"maxSurge":2}}}}"#,
    ]);
    server.ok(&[
        "patch",
        "deployment",
        "web",
        "-n",
        ns,
        "-p",
        r#"{"spec":{"strategy":{"$retainKeys":["type"],"type":"Recreate"}}}"#,
    ]);
    let deploy = server.json(&["get", "deployment", "web", "-n", ns]);
    assert_eq!(deploy["spec"]["strategy"], json!({"type": "Recreate"}));

    // Finalizers merge as a set; `$deleteFromPrimitiveList` removes one.
    server.ok(&["create", "configmap", "cm", "-n", ns]);
    for patch in [
        r#"{"metadata":{"finalizers":["example.com/a"]}}"#,
        r#"{"metadata":{"finalizers":["example.com/b"]}}"#,
        r#"{"metadata":{"$deleteFromPrimitiveList/finalizers":["example.com/a"]}}"#,
    ] {
        server.ok(&["patch", "configmap", "cm", "-n", ns, "-p", patch]);
    }
    let cm = server.json(&["get", "configmap", "cm", "-n", ns]);
    assert_eq!(cm["metadata"]["finalizers"], json!(["example.com/b"]));
    server.ok(&[
        "patch",
        "configmap",
        "cm",
        "-n",
        ns,
        "--type",
        "merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
}

fn bad_strategic_patches_are_refused(backend: Backend) {
    let server = TestServer::start(backend);
    let ns = "badpatch";
    namespace(&server, ns);
    apply(&server, &deployment(ns, false, false));

    let stderr = server.fails(&[
        "patch",
        "deployment",
        "web",
        "-n",
        ns,
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"image":"busybox:3"}]}}}}"#,
    ]);
    assert!(
        stderr.contains(
            "(BadRequest): map: map[image:busybox:3] does not contain declared merge key: name"
        ),
        "{stderr}"
    );
    let stderr = server.fails(&[
        "patch",
        "deployment",
        "web",
        "-n",
        ns,
        "-p",
        r#"{"spec":{"$patch":"explode"}}"#,
    ]);
    assert!(
        stderr.contains("(BadRequest): unknown patch type: explode in map: map[$patch:explode]"),
        "{stderr}"
    );
    // Nothing was changed by the refused patches.
    assert_eq!(
        container(&containers(&server, ns), "c")["image"],
        "busybox:1"
    );

    let path = format!("/apis/apps/v1/namespaces/{ns}/deployments/web");
    let (status, body) = server.raw(
        Method::PATCH,
        &path,
        "application/strategic-merge-patch+json",
        "[1, 2]",
    );
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let status_body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status_body["reason"], "BadRequest", "{body}");
    assert!(
        status_body["message"]
            .as_str()
            .is_some_and(|m| m.contains("cannot unmarshal array")),
        "{body}"
    );
    let (status, body) = server.raw(
        Method::PATCH,
        &path,
        "application/strategic-merge-patch+json",
        r#"{"metadata":{"$retainKeys":["name"],"labels":{"a":"b"}}}"#,
    );
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body.contains("patch content doesn't match retainKeys list"),
        "{body}"
    );
}

const NODE: &str = r#"
apiVersion: v1
kind: Node
metadata:
  name: worker-1
  labels:
    kubernetes.io/hostname: worker-1
spec:
  podCIDR: 10.244.1.0/24
"#;

fn cordon_and_uncordon_a_node(backend: Backend) {
    let server = TestServer::start(backend);
    server.ok_stdin(&["create", "--validate=false", "-f", "-"], NODE);

    let out = server.ok(&["cordon", "worker-1"]);
    assert_eq!(out.trim(), "node/worker-1 cordoned");
    let node = server.json(&["get", "node", "worker-1"]);
    assert_eq!(node["spec"]["unschedulable"], true, "{node}");
    assert_eq!(node["spec"]["podCIDR"], "10.244.1.0/24");
    let out = server.ok(&["cordon", "worker-1"]);
    assert_eq!(out.trim(), "node/worker-1 already cordoned");

    let out = server.ok(&["uncordon", "worker-1"]);
    assert_eq!(out.trim(), "node/worker-1 uncordoned");
    let node = server.json(&["get", "node", "worker-1"]);
    assert!(
        node["spec"]["unschedulable"].is_null() || node["spec"]["unschedulable"] == false,
        "{node}"
    );
    assert_eq!(node["spec"]["podCIDR"], "10.244.1.0/24");
}

fn set_image_rollout_label_and_annotate(backend: Backend) {
    let server = TestServer::start(backend);
    let ns = "rollouts";
    namespace(&server, ns);
    apply(&server, &deployment(ns, true, true));

    let out = server.ok(&["set", "image", "deployment/web", "-n", ns, "c=busybox:3"]);
    assert_eq!(out.trim(), "deployment.apps/web image updated");
    let list = containers(&server, ns);
    assert_eq!(container(&list, "c")["image"], "busybox:3");
    assert_eq!(container(&list, "d")["image"], "nginx:1");

    let out = server.ok(&["rollout", "restart", "deployment/web", "-n", ns]);
    assert_eq!(out.trim(), "deployment.apps/web restarted");
    let deploy = server.json(&["get", "deployment", "web", "-n", ns]);
    let template = &deploy["spec"]["template"]["metadata"];
    assert!(
        template["annotations"]["kubectl.kubernetes.io/restartedAt"].is_string(),
        "{deploy}"
    );
    assert_eq!(template["labels"]["app"], "web");

    let out = server.ok(&["rollout", "pause", "deployment/web", "-n", ns]);
    assert_eq!(out.trim(), "deployment.apps/web paused");
    let deploy = server.json(&["get", "deployment", "web", "-n", ns]);
    assert_eq!(deploy["spec"]["paused"], true);
    let out = server.ok(&["rollout", "resume", "deployment/web", "-n", ns]);
    assert_eq!(out.trim(), "deployment.apps/web resumed");
    let deploy = server.json(&["get", "deployment", "web", "-n", ns]);
    assert!(deploy["spec"]["paused"].is_null() || deploy["spec"]["paused"] == false);

    let out = server.ok(&["label", "deployment", "web", "-n", ns, "tier=front"]);
    assert_eq!(out.trim(), "deployment.apps/web labeled");
    let out = server.ok(&["annotate", "deployment", "web", "-n", ns, "note=hi"]);
    assert_eq!(out.trim(), "deployment.apps/web annotated");
    let out = server.ok(&["label", "deployment", "web", "-n", ns, "tier-"]);
    assert_eq!(out.trim(), "deployment.apps/web unlabeled");
    let deploy = server.json(&["get", "deployment", "web", "-n", ns]);
    assert!(
        deploy["metadata"]["labels"].get("tier").is_none(),
        "{deploy}"
    );
    assert_eq!(deploy["metadata"]["annotations"]["note"], "hi");
    // Everything above left the containers' other fields alone.
    let list = containers(&server, ns);
    assert_eq!(names(&list), ["c", "d"]);
    assert_eq!(
        container(&list, "c")["env"].as_array().map(Vec::len),
        Some(2)
    );
}

fn edit_sends_a_strategic_patch(backend: Backend) {
    let server = TestServer::start(backend);
    let ns = "editing";
    namespace(&server, ns);
    apply(&server, &deployment(ns, true, true));

    // The "editor" changes one image in the file kubectl hands it.
    let dir = tempfile::tempdir().unwrap();
    let editor = dir.path().join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nsed -i 's/busybox:1/busybox:7/' \"$1\"\n",
    )
    .unwrap();
    let chmod = Command::new("chmod")
        .arg("+x")
        .arg(&editor)
        .status()
        .unwrap();
    assert!(chmod.success());
    let output = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(server.kubeconfig())
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .args(["edit", "deployment", "web", "-n", ns])
        .env_remove("KUBECONFIG")
        .env("KUBE_EDITOR", &editor)
        .stdin(Stdio::null())
        .output()
        .expect("running kubectl edit");
    assert!(
        output.status.success(),
        "kubectl edit failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        server.stderr()
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "deployment.apps/web edited"
    );
    let list = containers(&server, ns);
    assert_eq!(names(&list), ["c", "d"]);
    assert_eq!(container(&list, "c")["image"], "busybox:7");
    assert_eq!(container(&list, "d")["image"], "nginx:1");
}

const GADGETS: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: gadgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: gadgets, singular: gadget, kind: Gadget}
  versions:
  - name: v1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
"#;

fn custom_resources_refuse_strategic_patches(backend: Backend) {
    let server = TestServer::start(backend);
    let ns = "custom";
    namespace(&server, ns);
    server.ok_stdin(&["apply", "--validate=false", "-f", "-"], GADGETS);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.kubectl(&["get", "gadgets", "-A"]).status.success() {
        assert!(Instant::now() < deadline, "gadgets not served within 10 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    server.ok_stdin(
        &["apply", "--validate=false", "-f", "-"],
        &format!("apiVersion: example.com/v1\nkind: Gadget\nmetadata: {{name: g, namespace: {ns}}}\nspec: {{items: [1]}}\n"),
    );
    let stderr = server.fails(&[
        "patch",
        "gadget",
        "g",
        "-n",
        ns,
        "-p",
        r#"{"spec":{"x":1}}"#,
    ]);
    // kubectl recognises the 415 and words it its own way around the server's message.
    assert!(
        stderr.contains("application/strategic-merge-patch+json is not supported by example.com/v1, Kind=Gadget: the body of the request was in an unknown format"),
        "{stderr}"
    );
    let (status, body) = server.raw(
        Method::PATCH,
        &format!("/apis/example.com/v1/namespaces/{ns}/gadgets/g"),
        "application/strategic-merge-patch+json",
        r#"{"spec":{"x":1}}"#,
    );
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    assert!(
        body.contains(r#""reason":"UnsupportedMediaType""#),
        "{body}"
    );
    // A merge patch works, and so does re-applying (kubectl sends custom resources a merge
    // patch).
    server.ok(&[
        "patch",
        "gadget",
        "g",
        "-n",
        ns,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"x":1}}"#,
    ]);
    server.ok_stdin(
        &["apply", "--validate=false", "-f", "-"],
        &format!("apiVersion: example.com/v1\nkind: Gadget\nmetadata: {{name: g, namespace: {ns}}}\nspec: {{items: [2]}}\n"),
    );
    let gadget = server.json(&["get", "gadget", "g", "-n", ns]);
    assert_eq!(gadget["spec"], json!({"items": [2], "x": 1}), "{gadget}");
}
