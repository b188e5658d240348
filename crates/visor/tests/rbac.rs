//! RBAC end to end with the real kubectl: an admin grants roles, users with their own client
//! certificates are allowed or refused as upstream would, escalation is refused, and
//! `kubectl auth can-i` / `kubectl auth whoami` answer from the server.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Backend, TestServer};

use common::users::CertUser as User;

/// Retries `check` for up to 10 s: grants reach the authorizer through the watch cache.
fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not true after 10 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn rbac(backend: Backend) {
    let server = TestServer::start(backend);
    for ns in ["team-a", "team-b", "team-c"] {
        server.ok(&["create", "namespace", ns]);
    }
    // The default roles exist and `edit` has been aggregated.
    let edit = server.json(&["get", "clusterrole", "edit"]);
    assert!(
        edit["rules"].as_array().is_some_and(|r| !r.is_empty()),
        "edit has aggregated rules: {edit}"
    );
    server.ok(&[
        "get",
        "clusterrole",
        "cluster-admin",
        "admin",
        "view",
        "system:discovery",
        "system:basic-user",
    ]);
    server.ok(&[
        "get",
        "clusterrolebinding",
        "cluster-admin",
        "system:discovery",
        "system:basic-user",
    ]);

    let alice = User::new(&server, "alice", &["developers"]);
    server.ok(&[
        "create",
        "rolebinding",
        "alice-edit",
        "--clusterrole=edit",
        "--user=alice",
        "-n",
        "team-a",
    ]);
    server.ok(&[
        "create",
        "rolebinding",
        "alice-admin",
        "--clusterrole=admin",
        "--user=alice",
        "-n",
        "team-c",
    ]);
    eventually("alice can create configmaps in team-a", || {
        alice.can_i(&["create", "configmaps", "-n", "team-a"]) == "yes"
    });

    // Allowed where granted.
    alice.ok(&[
        "create",
        "configmap",
        "settings",
        "--from-literal=a=b",
        "-n",
        "team-a",
    ]);
    alice.ok(&[
        "run",
        "web",
        "--image=nginx",
        "--restart=Never",
        "-n",
        "team-a",
    ]);
    assert!(
        alice
            .ok(&["get", "configmaps", "-n", "team-a"])
            .contains("settings")
    );
    // Forbidden elsewhere, in upstream's words.
    let err = alice.fails(&["get", "configmaps", "-n", "team-b"]);
    assert!(
        err.contains(r#"Error from server (Forbidden): configmaps is forbidden: User "alice" cannot list resource "configmaps" in API group "" in the namespace "team-b""#),
        "{err}"
    );
    let err = alice.fails(&["get", "configmap", "settings", "-n", "team-b", "-o", "json"]);
    assert!(
        err.contains(
            r#"configmaps "settings" is forbidden: User "alice" cannot get resource "configmaps""#
        ),
        "{err}"
    );
    let err = alice.fails(&["get", "namespaces"]);
    assert!(
        err.contains(r#"cannot list resource "namespaces" in API group "" at the cluster scope"#),
        "{err}"
    );
    // `edit` does not change quotas or grant roles.
    let err = alice.fails(&["create", "quota", "q", "--hard=pods=1", "-n", "team-a"]);
    assert!(err.contains("forbidden"), "{err}");

    // Escalation: with `admin` on team-c alice may bind what she holds, but not cluster-admin.
    alice.ok(&[
        "create",
        "rolebinding",
        "carol-edit",
        "--clusterrole=edit",
        "--user=carol",
        "-n",
        "team-c",
    ]);
    let err = alice.fails(&[
        "create",
        "rolebinding",
        "grab",
        "--clusterrole=cluster-admin",
        "--user=alice",
        "-n",
        "team-c",
    ]);
    assert!(
        err.contains(r#"rolebindings.rbac.authorization.k8s.io "grab" is forbidden: user "alice" (groups=["developers" "system:authenticated"]) is attempting to grant RBAC permissions not currently held:"#),
        "{err}"
    );
    assert!(
        err.contains(r#"{APIGroups:["*"], Resources:["*"], Verbs:["*"]}"#),
        "{err}"
    );
    let role = "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: secrets-all\n  namespace: team-c\nrules:\n- apiGroups: [\"\"]\n  resources: [\"nodes\"]\n  verbs: [\"get\"]\n";
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&alice.kubeconfig)
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(role.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("attempting to grant RBAC permissions not currently held"),
        "{err}"
    );

    // can-i answers from the same rules.
    assert_eq!(alice.can_i(&["create", "pods", "-n", "team-a"]), "yes");
    assert_eq!(alice.can_i(&["create", "pods", "-n", "team-b"]), "no");
    assert_eq!(
        alice.can_i(&["update", "resourcequotas", "-n", "team-a"]),
        "no"
    );
    let list = alice.ok(&["auth", "can-i", "--list", "-n", "team-a"]);
    let row = list
        .lines()
        .find(|l| l.starts_with("configmaps "))
        .unwrap_or_else(|| panic!("{list}"));
    for verb in [
        "create", "delete", "get", "list", "patch", "update", "watch",
    ] {
        assert!(row.contains(verb), "{row}");
    }
    assert!(
        list.lines()
            .any(|l| l.starts_with("selfsubjectaccessreviews.authorization.k8s.io")),
        "{list}"
    );
    assert!(
        !list
            .lines()
            .any(|l| l.starts_with("rolebindings.rbac.authorization.k8s.io")),
        "{list}"
    );
    let list_b = alice.ok(&["auth", "can-i", "--list", "-n", "team-b"]);
    assert!(
        !list_b.lines().any(|l| l.starts_with("configmaps ")),
        "{list_b}"
    );
    // whoami.
    let whoami = alice.ok(&["auth", "whoami"]);
    assert!(
        whoami.contains("alice") && whoami.contains("[developers system:authenticated]"),
        "{whoami}"
    );

    // A viewer reads but does not write.
    let bob = User::new(&server, "bob", &[]);
    server.ok(&[
        "create",
        "rolebinding",
        "bob-view",
        "--clusterrole=view",
        "--user=bob",
        "-n",
        "team-a",
    ]);
    eventually("bob can list configmaps", || {
        bob.kubectl(&["get", "configmaps", "-n", "team-a"])
            .status
            .success()
    });
    assert!(
        bob.ok(&["get", "configmap", "settings", "-n", "team-a"])
            .contains("settings")
    );
    let err = bob.fails(&["create", "configmap", "mine", "-n", "team-a"]);
    assert!(err.contains(r#"User "bob" cannot create resource "configmaps" in API group "" in the namespace "team-a""#), "{err}");
    assert!(
        bob.fails(&["get", "secrets", "-n", "team-a"])
            .contains("forbidden")
    );
    // The admin may ask on bob's behalf (impersonation); alice may not.
    assert_eq!(
        server
            .ok(&[
                "auth",
                "can-i",
                "get",
                "configmaps",
                "-n",
                "team-a",
                "--as=bob"
            ])
            .trim(),
        "yes"
    );
    let out = server.kubectl(&[
        "auth",
        "can-i",
        "create",
        "configmaps",
        "-n",
        "team-a",
        "--as=bob",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no");
    let err = alice.fails(&["get", "pods", "-n", "team-a", "--as=bob"]);
    assert!(
        err.contains(
            r#"users "bob" is forbidden: User "alice" cannot impersonate resource "users""#
        ),
        "{err}"
    );

    // Aggregation: a new ClusterRole labelled for `view` joins it, and bob gains its rules.
    server.ok(&[
        "create",
        "clusterrole",
        "secret-reader",
        "--verb=get,list,watch",
        "--resource=secrets",
    ]);
    server.ok(&[
        "label",
        "clusterrole",
        "secret-reader",
        "rbac.authorization.k8s.io/aggregate-to-view=true",
    ]);
    eventually("view aggregates secret-reader", || {
        server.json(&["get", "clusterrole", "view"])["rules"]
            .as_array()
            .is_some_and(|rules| {
                rules
                    .iter()
                    .any(|r| r["resources"] == serde_json::json!(["secrets"]))
            })
    });
    eventually("bob can list secrets", || {
        bob.kubectl(&["get", "secrets", "-n", "team-a"])
            .status
            .success()
    });
    // Removing the label takes the rules away again.
    server.ok(&[
        "label",
        "clusterrole",
        "secret-reader",
        "rbac.authorization.k8s.io/aggregate-to-view-",
    ]);
    eventually("bob loses secrets", || {
        !bob.kubectl(&["get", "secrets", "-n", "team-a"])
            .status
            .success()
    });

    // Discovery lists access reviews with only `create`.
    let resources = server.ok(&[
        "api-resources",
        "--api-group=authorization.k8s.io",
        "-o",
        "wide",
    ]);
    let row = resources
        .lines()
        .find(|l| l.starts_with("selfsubjectaccessreviews"))
        .unwrap_or_else(|| panic!("{resources}"));
    let verbs: Vec<&str> = row.split_whitespace().skip(4).collect();
    assert_eq!(verbs, ["create"], "{row}");
}

backend_tests!(rbac);
