//! Unit tests of the authorizer's index, request attributes, messages and escalation checks.

use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::kinds::Catalog;

fn who(user: &str, groups: &[&str]) -> Identity {
    Identity {
        user: user.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

fn key(resource: &str, ns: &str, name: &str) -> String {
    if ns.is_empty() {
        format!("{RBAC_PREFIX}{resource}/{name}")
    } else {
        format!("{RBAC_PREFIX}{resource}/{ns}/{name}")
    }
}

fn role(authz: &Authorizer, resource: &str, ns: &str, name: &str, rules: Value) {
    let obj = json!({ "metadata": { "name": name, "namespace": ns }, "rules": rules });
    authz.apply(&key(resource, ns, name), Some(&obj));
}

fn binding(
    authz: &Authorizer,
    resource: &str,
    ns: &str,
    name: &str,
    role_kind: &str,
    role: &str,
    subjects: Value,
) {
    let obj = json!({
        "metadata": { "name": name, "namespace": ns },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role },
        "subjects": subjects,
    });
    authz.apply(&key(resource, ns, name), Some(&obj));
}

fn can(authz: &Authorizer, id: &Identity, verb: &str, resource: &str, ns: &str) -> bool {
    authz
        .authorize(id, &Attributes::resource(verb, "", resource, ns, ""))
        .allowed
}

fn setup() -> Authorizer {
    let authz = Authorizer::new();
    role(
        &authz,
        "clusterroles",
        "",
        "cm-edit",
        json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["*"]}]),
    );
    role(
        &authz,
        "roles",
        "team-a",
        "pod-reader",
        json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]),
    );
    authz
}

#[test]
fn role_binding_to_cluster_role_is_scoped_to_its_namespace() {
    let authz = setup();
    binding(
        &authz,
        "rolebindings",
        "team-a",
        "alice-cm",
        "ClusterRole",
        "cm-edit",
        json!([{"kind": "User", "name": "alice"}]),
    );
    let alice = who("alice", &["system:authenticated"]);
    assert!(can(&authz, &alice, "create", "configmaps", "team-a"));
    assert!(!can(&authz, &alice, "create", "configmaps", "team-b"));
    assert!(
        !can(&authz, &alice, "list", "configmaps", ""),
        "no cluster-wide grant"
    );
    let decision = authz.authorize(
        &alice,
        &Attributes::resource("get", "", "configmaps", "team-a", "x"),
    );
    assert_eq!(
        decision.reason,
        r#"RBAC: allowed by RoleBinding "alice-cm/team-a" of ClusterRole "cm-edit" to User "alice""#
    );
}

#[test]
fn roles_bindings_and_cluster_bindings() {
    let authz = setup();
    binding(
        &authz,
        "rolebindings",
        "team-a",
        "readers",
        "Role",
        "pod-reader",
        json!([{"kind": "Group", "name": "devs"}]),
    );
    binding(
        &authz,
        "clusterrolebindings",
        "",
        "ops",
        "ClusterRole",
        "cm-edit",
        json!([{"kind": "Group", "name": "ops"}]),
    );
    let dev = who("bob", &["devs"]);
    assert!(can(&authz, &dev, "list", "pods", "team-a"));
    assert!(!can(&authz, &dev, "delete", "pods", "team-a"));
    assert!(!can(&authz, &dev, "list", "pods", "team-b"));
    let op = who("carol", &["ops"]);
    assert!(can(&authz, &op, "delete", "configmaps", "anywhere"));
    assert!(can(&authz, &op, "list", "configmaps", ""));
    // A role changing is seen at once; a deleted binding stops granting.
    role(
        &authz,
        "roles",
        "team-a",
        "pod-reader",
        json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["delete"]}]),
    );
    assert!(can(&authz, &dev, "delete", "pods", "team-a"));
    authz.apply(&key("rolebindings", "team-a", "readers"), None);
    assert!(!can(&authz, &dev, "delete", "pods", "team-a"));
    // A binding to a missing role grants nothing.
    binding(
        &authz,
        "rolebindings",
        "team-a",
        "dangling",
        "Role",
        "missing",
        json!([{"kind": "User", "name": "dan"}]),
    );
    assert!(!can(&authz, &who("dan", &[]), "get", "pods", "team-a"));
}

#[test]
fn service_account_subjects() {
    let authz = setup();
    binding(
        &authz,
        "rolebindings",
        "team-a",
        "sa",
        "ClusterRole",
        "cm-edit",
        json!([{"kind": "ServiceAccount", "name": "builder"}]),
    );
    binding(
        &authz,
        "rolebindings",
        "team-b",
        "all-sa",
        "ClusterRole",
        "cm-edit",
        json!([{"kind": "Group", "name": "system:serviceaccounts:team-a"}]),
    );
    let sa = who("system:serviceaccount:team-a:builder", &[]);
    assert!(
        can(&authz, &sa, "get", "configmaps", "team-a"),
        "namespace defaults to the binding's"
    );
    assert!(
        can(&authz, &sa, "get", "configmaps", "team-b"),
        "SA users are in system:serviceaccounts:NS"
    );
    let other = who("system:serviceaccount:team-c:builder", &[]);
    assert!(!can(&authz, &other, "get", "configmaps", "team-a"));
    assert!(!can(&authz, &other, "get", "configmaps", "team-b"));
}

#[test]
fn superusers_are_allowed_everything() {
    let authz = Authorizer::new();
    let admin = who("admin", &["system:masters"]);
    assert!(
        authz
            .authorize(&admin, &Attributes::non_resource("delete", "/anything"))
            .allowed
    );
    assert!(
        !authz
            .authorize(&who("x", &[]), &Attributes::non_resource("get", "/apis"))
            .allowed
    );
}

#[test]
fn request_attributes() {
    let a = Attributes::from_request(
        &Method::GET,
        "/api/v1/namespaces/team-b/configmaps",
        Some("limit=500"),
    );
    assert_eq!(
        (a.verb.as_str(), a.resource.as_str(), a.namespace.as_str()),
        ("list", "configmaps", "team-b")
    );
    let a = Attributes::from_request(
        &Method::GET,
        "/api/v1/namespaces/x/pods",
        Some("watch=true&fieldSelector=metadata.name%3Dweb"),
    );
    assert_eq!((a.verb.as_str(), a.name.as_str()), ("watch", "web"));
    let a = Attributes::from_request(
        &Method::DELETE,
        "/apis/apps/v1/namespaces/x/deployments",
        None,
    );
    assert_eq!(
        (a.verb.as_str(), a.api_group.as_str()),
        ("deletecollection", "apps")
    );
    let a = Attributes::from_request(
        &Method::PUT,
        "/apis/apps/v1/namespaces/x/deployments/d/scale",
        None,
    );
    assert_eq!(
        (a.verb.as_str(), a.subresource.as_str(), a.name.as_str()),
        ("update", "scale", "d")
    );
    let a = Attributes::from_request(&Method::GET, "/api/v1/namespaces/team-a", None);
    assert_eq!(
        (a.verb.as_str(), a.namespace.as_str(), a.name.as_str()),
        ("get", "team-a", "team-a")
    );
    for path in [
        "/api",
        "/apis",
        "/api/v1",
        "/apis/apps/v1",
        "/openapi/v2",
        "/healthz/etcd",
    ] {
        let a = Attributes::from_request(&Method::GET, path, None);
        assert!(!a.resource_request, "{path}");
        assert_eq!(a.path, path);
    }
    assert_eq!(
        Attributes::from_request(&Method::POST, "/apis", None).verb,
        "post"
    );
}

#[test]
fn forbidden_messages_are_upstreams() {
    let list = Attributes::resource("list", "", "configmaps", "team-b", "");
    let err = list.forbidden("alice");
    assert_eq!(err.code, 403);
    assert_eq!(
        err.message,
        r#"configmaps is forbidden: User "alice" cannot list resource "configmaps" in API group "" in the namespace "team-b""#
    );
    assert_eq!(err.details, Some(json!({"kind": "configmaps"})));
    let get = Attributes::resource("get", "apps", "deployments", "", "web");
    assert_eq!(
        get.forbidden("bob").message,
        r#"deployments.apps "web" is forbidden: User "bob" cannot get resource "deployments" in API group "apps" at the cluster scope"#
    );
    assert_eq!(
        get.forbidden("bob").details,
        Some(json!({"kind": "deployments", "name": "web", "group": "apps"}))
    );
    let mut sub = Attributes::resource("update", "apps", "deployments", "ns", "web");
    sub.subresource = "scale".into();
    assert!(
        sub.forbidden("x")
            .message
            .contains(r#"cannot update resource "deployments/scale""#)
    );
    assert_eq!(
        Attributes::non_resource("get", "/apis")
            .forbidden("x")
            .message,
        r#"forbidden: User "x" cannot get path "/apis""#
    );
}

#[test]
fn impersonation_needs_the_impersonate_verb() {
    let authz = setup();
    role(
        &authz,
        "clusterroles",
        "",
        "impersonator",
        json!([{"apiGroups": [""], "resources": ["users"], "verbs": ["impersonate"], "resourceNames": ["bob"]}]),
    );
    binding(
        &authz,
        "clusterrolebindings",
        "",
        "imp",
        "ClusterRole",
        "impersonator",
        json!([{"kind": "User", "name": "alice"}]),
    );
    let mut headers = HeaderMap::new();
    headers.insert(IMPERSONATE_USER, "bob".parse().unwrap());
    let as_bob = impersonate(&authz, who("alice", &["system:authenticated"]), &headers).unwrap();
    assert_eq!(as_bob, who("bob", &["system:authenticated"]));
    headers.insert(IMPERSONATE_USER, "carol".parse().unwrap());
    let err = impersonate(&authz, who("alice", &["system:authenticated"]), &headers).unwrap_err();
    assert_eq!(
        err.message,
        r#"users "carol" is forbidden: User "alice" cannot impersonate resource "users" in API group "" at the cluster scope"#
    );
    headers.append(IMPERSONATE_GROUP, "admins".parse().unwrap());
    let admin = impersonate(&authz, who("root", &["system:masters"]), &headers).unwrap();
    assert_eq!(admin, who("carol", &["admins", "system:authenticated"]));
}

fn scope(plural: &str, ns: Option<&str>) -> crate::registry::Scope {
    let catalog = Catalog::builtin();
    crate::registry::Scope {
        def: catalog
            .lookup("rbac.authorization.k8s.io", "v1", plural)
            .unwrap(),
        namespace: ns.map(str::to_string),
    }
}

fn as_requester<T>(authz: &Arc<Authorizer>, id: Identity, f: impl FnOnce() -> T) -> T {
    let requester = Requester {
        identity: id,
        authorizer: authz.clone(),
    };
    REQUESTER.sync_scope(requester, f)
}

#[test]
fn escalation_is_refused_unless_held_or_bound() {
    let authz = Arc::new(setup());
    role(
        &authz,
        "clusterroles",
        "",
        "cluster-admin",
        json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}, {"nonResourceURLs": ["*"], "verbs": ["*"]}]),
    );
    binding(
        &authz,
        "rolebindings",
        "team-a",
        "alice-cm",
        "ClusterRole",
        "cm-edit",
        json!([{"kind": "User", "name": "alice"}]),
    );
    let alice = who("alice", &["system:authenticated"]);
    let rb = |role: &str| {
        json!({
            "metadata": { "name": "grant", "namespace": "team-a" },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role },
            "subjects": [{"kind": "User", "name": "mallory"}],
        })
    };
    let scope_rb = scope("rolebindings", Some("team-a"));
    // Holding every permission of the role is enough.
    as_requester(&authz, alice.clone(), || {
        escalation::check(&scope_rb, &rb("cm-edit"), None)
    })
    .unwrap();
    let err = as_requester(&authz, alice.clone(), || {
        escalation::check(&scope_rb, &rb("cluster-admin"), None)
    })
    .unwrap_err();
    assert_eq!(err.code, 403);
    assert_eq!(
        err.message,
        "rolebindings.rbac.authorization.k8s.io \"grant\" is forbidden: user \"alice\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"*\"], Resources:[\"*\"], Verbs:[\"*\"]}\n{NonResourceURLs:[\"*\"], Verbs:[\"*\"]}"
    );
    // The same role in another namespace is not held there.
    let mut other = rb("cm-edit");
    other["metadata"]["namespace"] = json!("team-b");
    assert!(
        as_requester(&authz, alice.clone(), || escalation::check(
            &scope("rolebindings", Some("team-b")),
            &other,
            None
        ))
        .is_err()
    );
    // `bind` on the role lets a user grant it without holding it.
    role(
        &authz,
        "clusterroles",
        "",
        "binder",
        json!([{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "verbs": ["bind"], "resourceNames": ["cluster-admin"]}]),
    );
    binding(
        &authz,
        "rolebindings",
        "team-a",
        "alice-bind",
        "ClusterRole",
        "binder",
        json!([{"kind": "User", "name": "alice"}]),
    );
    as_requester(&authz, alice.clone(), || {
        escalation::check(&scope_rb, &rb("cluster-admin"), None)
    })
    .unwrap();
    // Roles: rules must be held, or `escalate` granted.
    let scope_role = scope("roles", Some("team-a"));
    let r = |resource: &str| json!({"metadata": {"name": "r", "namespace": "team-a"}, "rules": [{"apiGroups": [""], "resources": [resource], "verbs": ["get"]}]});
    as_requester(&authz, alice.clone(), || {
        escalation::check(&scope_role, &r("configmaps"), None)
    })
    .unwrap();
    let err = as_requester(&authz, alice.clone(), || {
        escalation::check(&scope_role, &r("secrets"), None)
    })
    .unwrap_err();
    assert!(
        err.message
            .ends_with("{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"get\"]}"),
        "{}",
        err.message
    );
    // Superusers and the server's own writes are not checked.
    as_requester(&authz, who("root", &["system:masters"]), || {
        escalation::check(&scope_role, &r("secrets"), None)
    })
    .unwrap();
    escalation::check(&scope_role, &r("secrets"), None).unwrap();
}

#[test]
fn authorize_is_fast_with_ten_thousand_bindings() {
    let (p50, p99) = bench_authorize(10_000, 20_000);
    println!("authorize with 10,000 RoleBindings: p50 {p50:?}, p99 {p99:?}");
    // Generous bound for slow CI machines and debug builds; the release figure is far lower.
    assert!(p50 < Duration::from_micros(200), "p50 {p50:?}");
}
