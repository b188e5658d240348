//! Namespaces as resource boundaries, end to end with the real kubectl: a SupervisorNamespace
//! becomes a Namespace with its quota, limit range and role bindings; quota and limit range
//! admission refuse what does not fit with upstream's messages, exactly under concurrency,
//! and a write that fails charges nothing;
//! usage shows in `kubectl get` and `describe`; edits take effect; deletion removes the
//! namespace and its contents; a group member creates a namespace from a template; invalid
//! configurations are 422 with a field path.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Backend, TestServer, eventually};
use http::Method;

const TEAM: &str = r#"
apiVersion: visor.dev/v1alpha1
kind: SupervisorNamespace
metadata:
  name: team-a
spec:
  limits:
    cpu: "2"
    memory: 2Gi
    storage: 20Gi
  storageClasses:
  - name: gold
    limit: 5Gi
  - name: silver
  counts:
    pods: 8
    persistentVolumeClaims: 4
  zones: [zone-a, zone-b]
  vmClasses: [best-effort-small]
  containerDefaults:
    requests: {cpu: 100m, memory: 64Mi}
    limits: {cpu: 250m, memory: 128Mi}
  permissions:
  - {subject: User, name: alice, role: edit}
  - {subject: Group, name: auditors, role: view}
"#;

fn wait_ready(server: &TestServer, name: &str) {
    eventually(
        &format!("supervisornamespace {name} ready"),
        Duration::from_secs(30),
        || {
            let sn = server.json(&["get", "supervisornamespace", name]);
            let ready = sn["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            ready.then_some(())
        },
    );
}

fn pod(name: &str, cpu_limit: Option<&str>) -> String {
    let resources = match cpu_limit {
        Some(cpu) => format!(r#""resources": {{"limits": {{"cpu": "{cpu}"}}}}"#),
        None => r#""resources": {}"#.to_string(),
    };
    format!(
        r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "{name}"}},
            "spec": {{"containers": [{{"name": "app", "image": "busybox", {resources}}}]}}}}"#
    )
}

crate::backend_tests!(racing_charged_creates_are_counted_exactly);

/// Many writers racing for one quota's last units, with names taken twice, so that batches of
/// charged writes hold writes the store refuses: exactly the quota's room is admitted and the
/// quota counts exactly what was stored.
fn racing_charged_creates_are_counted_exactly(backend: Backend) {
    const ROOM: usize = 120;
    const WRITERS: usize = 16;
    const EACH: usize = 20;
    let server = TestServer::start(backend);
    server.ok(&["create", "namespace", "race"]);
    server.ok(&[
        "create",
        "quota",
        "room",
        "-n",
        "race",
        &format!("--hard=count/configmaps={ROOM}"),
    ]);
    eventually("the quota counted", Duration::from_secs(20), || {
        let quota = server.json(&["get", "resourcequota", "room", "-n", "race"]);
        quota["status"]["used"]["count/configmaps"]
            .as_str()
            .map(str::to_string)
    });
    let before = server
        .ok(&["get", "configmaps", "-n", "race", "--no-headers"])
        .lines()
        .count();
    let server = Arc::new(server);
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let server = server.clone();
            std::thread::spawn(move || {
                (0..EACH)
                    .map(|i| {
                        // Every fourth name is also another writer's.
                        let n = writer * EACH + i;
                        let name = if n.is_multiple_of(4) {
                            n % (WRITERS * EACH / 2)
                        } else {
                            n
                        };
                        let body = format!(
                            r#"{{"apiVersion": "v1", "kind": "ConfigMap",
                                "metadata": {{"name": "cm-{name}"}}}}"#
                        );
                        server
                            .raw(
                                Method::POST,
                                "/api/v1/namespaces/race/configmaps",
                                "application/json",
                                body,
                            )
                            .0
                            .as_u16()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let codes: Vec<u16> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    let created = codes.iter().filter(|&&c| c == 201).count();
    let refused = codes.iter().filter(|&&c| c == 403 || c == 409).count();
    assert_eq!(created + before, ROOM, "{codes:?}");
    assert_eq!(created + refused, WRITERS * EACH, "{codes:?}");
    let stored = server
        .ok(&["get", "configmaps", "-n", "race", "--no-headers"])
        .lines()
        .count();
    assert_eq!(stored, ROOM);
    let quota = server.json(&["get", "resourcequota", "room", "-n", "race"]);
    assert_eq!(
        quota["status"]["used"]["count/configmaps"],
        ROOM.to_string(),
        "{quota}"
    );
}

#[test]
fn supervisor_namespace_enforces_its_limits() {
    let server = TestServer::start(Backend::Sqlite);
    server.ok_stdin(&["apply", "-f", "-"], TEAM);
    wait_ready(&server, "team-a");

    // The namespace, labelled back and annotated with what it may use.
    let ns = server.json(&["get", "namespace", "team-a"]);
    assert_eq!(
        ns["metadata"]["labels"]["visor.dev/supervisor-namespace"],
        "team-a"
    );
    assert_eq!(
        ns["metadata"]["annotations"]["visor.dev/allowed-zones"],
        "zone-a,zone-b"
    );
    assert_eq!(
        ns["metadata"]["annotations"]["visor.dev/allowed-storage-classes"],
        "gold,silver"
    );
    let quota = server.json(&["get", "resourcequota", "visor-limits", "-n", "team-a"]);
    assert_eq!(quota["spec"]["hard"]["limits.cpu"], "2");
    assert_eq!(
        quota["spec"]["hard"]["gold.storageclass.storage.k8s.io/requests.storage"],
        "5Gi"
    );
    assert_eq!(quota["status"]["used"]["pods"], "0");
    let range = server.json(&["get", "limitrange", "visor-defaults", "-n", "team-a"]);
    assert_eq!(range["spec"]["limits"][0]["default"]["cpu"], "250m");
    let bindings = server.ok(&[
        "get",
        "rolebindings",
        "-n",
        "team-a",
        "-o",
        "custom-columns=ROLE:.roleRef.name,SUBJECT:.subjects[0].name",
    ]);
    assert!(
        bindings.contains("edit") && bindings.contains("alice"),
        "{bindings}"
    );
    assert!(
        bindings.contains("view") && bindings.contains("auditors"),
        "{bindings}"
    );

    // A pod without resources gets the defaults and is charged.
    server.ok_stdin(&["create", "-n", "team-a", "-f", "-"], &pod("small", None));
    let small = server.json(&["get", "pod", "small", "-n", "team-a"]);
    assert_eq!(
        small["spec"]["containers"][0]["resources"]["limits"]["cpu"],
        "250m"
    );
    assert_eq!(
        small["spec"]["containers"][0]["resources"]["requests"]["memory"],
        "64Mi"
    );

    // A create that fails in the store (the name is taken) charges nothing: the charge and
    // the object are one transaction.
    let err = server.fails_stdin(&["create", "-n", "team-a", "-f", "-"], &pod("small", None));
    assert!(
        err.contains("AlreadyExists") || err.contains("already exists"),
        "{err}"
    );
    let quota = server.json(&["get", "resourcequota", "visor-limits", "-n", "team-a"]);
    assert_eq!(quota["status"]["used"]["pods"], "1", "{quota}");
    assert_eq!(quota["status"]["used"]["limits.cpu"], "250m", "{quota}");

    // A pod over the CPU limit: upstream's message.
    let err = server.fails_stdin(
        &["create", "-n", "team-a", "-f", "-"],
        &pod("big", Some("3")),
    );
    assert!(
        err.contains(r#"pods "big" is forbidden: exceeded quota: visor-limits, requested: limits.cpu=3, used: limits.cpu=250m, limited: limits.cpu=2"#),
        "{err}"
    );

    // A claim over its storage class's limit, and one of a class the namespace may not use.
    let claim = |name: &str, class: &str, size: &str| {
        format!(
            r#"{{"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {{"name": "{name}"}},
                "spec": {{"storageClassName": "{class}", "accessModes": ["ReadWriteOnce"],
                          "resources": {{"requests": {{"storage": "{size}"}}}}}}}}"#
        )
    };
    server.ok_stdin(
        &["create", "-n", "team-a", "-f", "-"],
        &claim("data", "gold", "4Gi"),
    );
    let err = server.fails_stdin(
        &["create", "-n", "team-a", "-f", "-"],
        &claim("more", "gold", "2Gi"),
    );
    assert!(
        err.contains(r#"persistentvolumeclaims "more" is forbidden: exceeded quota: visor-limits, requested: gold.storageclass.storage.k8s.io/requests.storage=2Gi, used: gold.storageclass.storage.k8s.io/requests.storage=4Gi, limited: gold.storageclass.storage.k8s.io/requests.storage=5Gi"#),
        "{err}"
    );
    let err = server.fails_stdin(
        &["create", "-n", "team-a", "-f", "-"],
        &claim("cheap", "bronze", "1Gi"),
    );
    assert!(
        err.contains(r#"storage class "bronze" is not allowed"#),
        "{err}"
    );

    // Usage in kubectl get (the columns) and describe.
    eventually("usage in the status", Duration::from_secs(20), || {
        let out = server.ok(&["get", "supervisornamespace", "team-a"]);
        (out.contains("250m/2") && out.contains("1/8")).then_some(out)
    });
    let described = server.ok(&["describe", "resourcequota", "visor-limits", "-n", "team-a"]);
    assert!(
        described.contains("limits.cpu") && described.contains("250m"),
        "{described}"
    );
    let described = server.ok(&["describe", "supervisornamespace", "team-a"]);
    assert!(described.contains("limits.cpu"), "{described}");

    // 50 racing creates for the last 7 pod slots, ten of them names another request also
    // takes: exactly 7 are admitted, and the quota counts exactly what was stored.
    let server = Arc::new(server);
    let threads: Vec<_> = (0..50)
        .map(|i| {
            let server = server.clone();
            std::thread::spawn(move || {
                server.raw(
                    Method::POST,
                    "/api/v1/namespaces/team-a/pods",
                    "application/json",
                    pod(&format!("race-{}", i % 40), Some("10m")),
                )
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let created = results.iter().filter(|(s, _)| s.as_u16() == 201).count();
    let refused: Vec<_> = results.iter().filter(|(s, _)| s.as_u16() == 403).collect();
    let taken = results.iter().filter(|(s, _)| s.as_u16() == 409).count();
    assert_eq!(created, 7, "{results:?}");
    assert_eq!(refused.len() + taken, 43, "{results:?}");
    assert!(
        refused
            .iter()
            .all(|(_, body)| body.contains("exceeded quota: visor-limits"))
    );
    let pods = server.ok(&["get", "pods", "-n", "team-a", "--no-headers"]);
    assert_eq!(pods.lines().count(), 8);
    let quota = server.json(&["get", "resourcequota", "visor-limits", "-n", "team-a"]);
    assert_eq!(quota["status"]["used"]["pods"], "8", "{quota}");

    // Editing a limit takes effect; deleting pods releases their usage after the recount.
    server.ok(&[
        "patch",
        "supervisornamespace",
        "team-a",
        "--type=merge",
        "-p",
        r#"{"spec":{"counts":{"pods":9}}}"#,
    ]);
    eventually("the new pod limit", Duration::from_secs(20), || {
        let q = server.json(&["get", "resourcequota", "visor-limits", "-n", "team-a"]);
        (q["spec"]["hard"]["pods"] == "9").then_some(())
    });
    server.ok_stdin(
        &["create", "-n", "team-a", "-f", "-"],
        &pod("ninth", Some("10m")),
    );
    let err = server.fails_stdin(
        &["create", "-n", "team-a", "-f", "-"],
        &pod("tenth", Some("10m")),
    );
    assert!(
        err.contains(
            "exceeded quota: visor-limits, requested: pods=1, used: pods=9, limited: pods=9"
        ),
        "{err}"
    );
    server.ok(&[
        "delete",
        "pod",
        "ninth",
        "small",
        "-n",
        "team-a",
        "--grace-period=0",
    ]);
    eventually(
        "usage released by the recount",
        Duration::from_secs(30),
        || {
            let q = server.json(&["get", "resourcequota", "visor-limits", "-n", "team-a"]);
            (q["status"]["used"]["pods"] == "7").then_some(())
        },
    );
    server.ok_stdin(
        &["create", "-n", "team-a", "-f", "-"],
        &pod("tenth", Some("10m")),
    );

    // Deleting the object removes the namespace and everything in it.
    server.ok(&["delete", "supervisornamespace", "team-a", "--wait=false"]);
    eventually("namespace team-a gone", Duration::from_secs(60), || {
        let out = server.kubectl(&["get", "namespace", "team-a"]);
        (!out.status.success()).then_some(())
    });
    eventually(
        "supervisornamespace team-a gone",
        Duration::from_secs(30),
        || {
            let out = server.kubectl(&["get", "supervisornamespace", "team-a"]);
            (!out.status.success()).then_some(())
        },
    );
}

#[test]
fn invalid_configurations_are_422_with_a_field_path() {
    let server = TestServer::start(Backend::Sqlite);
    let cases = [
        (
            r#"{"zones": ["a", "b", "c", "d"]}"#,
            "spec.zones: Too many: 4: must have at most 3 items",
        ),
        (
            r#"{"limits": {"cpu": "-1"}}"#,
            r#"spec.limits.cpu: Invalid value: "-1": must be greater than or equal to 0"#,
        ),
        (
            r#"{"limits": {"memory": "lots"}}"#,
            r#"spec.limits.memory: Invalid value: "lots": quantities must match the regular expression"#,
        ),
        (
            r#"{"permissions": [{"subject": "User", "name": "bob", "role": "boss"}]}"#,
            r#"spec.permissions[0].role: Unsupported value: "boss""#,
        ),
    ];
    for (spec, expected) in cases {
        let body = format!(
            r#"{{"apiVersion": "visor.dev/v1alpha1", "kind": "SupervisorNamespace", "metadata": {{"name": "bad"}}, "spec": {spec}}}"#
        );
        let (status, text) = server.raw(
            Method::POST,
            "/apis/visor.dev/v1alpha1/supervisornamespaces",
            "application/json",
            body.clone(),
        );
        assert_eq!(status.as_u16(), 422, "{spec}: {text}");
        let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(message.contains(expected), "{spec}: {text}");
        let err = server.fails_stdin(&["create", "--validate=false", "-f", "-"], &body);
        assert!(
            err.contains("is invalid") && err.contains(expected),
            "{err}"
        );
    }
}

use common::users::CertUser as User;

#[test]
fn a_group_member_creates_a_namespace_from_a_template() {
    let server = TestServer::start(Backend::Sqlite);
    server.ok_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: visor.dev/v1alpha1
kind: NamespaceTemplate
metadata:
  name: small
spec:
  groups: [devs]
  namespace:
    limits: {cpu: "1", memory: 1Gi}
    counts: {pods: 3}
    zones: [zone-a]
    containerDefaults:
      limits: {cpu: 100m, memory: 64Mi}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: namespace-self-service
rules:
- apiGroups: [visor.dev]
  resources: [namespacerequests, namespacetemplates]
  verbs: [get, list, watch, create, delete]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: namespace-self-service
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: namespace-self-service}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: system:authenticated}
"#,
    );
    let dana = User::new(&server, "dana", &["devs"]);
    let eve = User::new(&server, "eve", &["testers"]);
    let request = |name: &str| {
        format!(
            "apiVersion: visor.dev/v1alpha1\nkind: NamespaceRequest\nmetadata:\n  name: {name}\nspec:\n  template: small\n  requester: someone-else\n"
        )
    };

    let out = eve.kubectl_stdin(&["create", "-f", "-"], &request("eve-space"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(r#"user "eve" is not in a group allowed to use namespace template "small""#),
        "{err}"
    );

    let out = dana.kubectl_stdin(&["create", "-f", "-"], &request("dana-space"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let req = server.json(&["get", "namespacerequest", "dana-space"]);
    assert_eq!(
        req["spec"]["requester"], "dana",
        "the server records who asked"
    );

    wait_ready(&server, "dana-space");
    let sn = server.json(&["get", "supervisornamespace", "dana-space"]);
    assert_eq!(sn["spec"]["limits"]["cpu"], "1");
    assert_eq!(sn["spec"]["permissions"][0]["name"], "dana");
    assert_eq!(sn["spec"]["permissions"][0]["role"], "owner");
    eventually("the request is ready", Duration::from_secs(30), || {
        let req = server.json(&["get", "namespacerequest", "dana-space"]);
        let ready = req["status"]["conditions"][0]["status"] == "True";
        ready.then_some(())
    });

    // dana owns the namespace: she can work in it and grant roles; eve cannot see it.
    let out = dana.kubectl_stdin(
        &[
            "auth",
            "can-i",
            "create",
            "rolebindings",
            "-n",
            "dana-space",
        ],
        "",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "yes");
    let out = dana.kubectl_stdin(
        &[
            "create",
            "configmap",
            "settings",
            "-n",
            "dana-space",
            "--from-literal=a=b",
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = eve.kubectl_stdin(&["get", "configmaps", "-n", "dana-space"], "");
    assert!(!out.status.success());

    // Deleting the request removes the namespace.
    let out = dana.kubectl_stdin(
        &["delete", "namespacerequest", "dana-space", "--wait=false"],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("namespace dana-space gone", Duration::from_secs(60), || {
        let out = server.kubectl(&["get", "namespace", "dana-space"]);
        (!out.status.success()).then_some(())
    });
}
