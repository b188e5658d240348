//! The default RBAC policy and ClusterRole aggregation.
//!
//! At start the server makes sure upstream's default roles and bindings exist — `cluster-admin`,
//! the user-facing `admin`, `edit` and `view`, the `system:aggregate-to-*` pieces they are
//! assembled from, and the discovery, basic-user and public-info roles every authenticated user
//! needs. Existing defaults gain rules they lack unless annotated
//! `rbac.authorization.kubernetes.io/autoupdate: "false"`, as upstream's reconciliation.
//!
//! Aggregation: a ClusterRole with an `aggregationRule` has its `rules` set to the union of
//! the rules of every other ClusterRole its selectors match; [`run_aggregation`] keeps that
//! true as ClusterRoles change.

use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use serde_json::{Value, json};

use crate::object;
use crate::registry::{Registry, Scope};
use crate::request::Query;

use super::rules::selector_matches;

const GROUP: &str = "rbac.authorization.k8s.io";
const CLUSTER_ROLE_PREFIX: &str = "/registry/rbac.authorization.k8s.io/clusterroles/";
const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";
const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const ALL: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({ "apiGroups": groups, "resources": resources, "verbs": verbs })
}

fn url_rule(urls: &[&str], verbs: &[&str]) -> Value {
    json!({ "nonResourceURLs": urls, "verbs": verbs })
}

fn cluster_role(
    name: &str,
    labels: Value,
    rules: Vec<Value>,
    aggregate_from: Option<&str>,
) -> Value {
    let mut labels = labels;
    labels["kubernetes.io/bootstrapping"] = json!("rbac-defaults");
    let mut role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": { "name": name, "labels": labels, "annotations": { AUTOUPDATE: "true" } },
        "rules": rules,
    });
    if let Some(label) = aggregate_from {
        role["aggregationRule"] =
            json!({ "clusterRoleSelectors": [{ "matchLabels": { label: "true" } }] });
    }
    role
}

fn cluster_binding(name: &str, role: &str, groups: &[&str]) -> Value {
    let subjects: Vec<Value> = groups
        .iter()
        .map(|g| json!({ "kind": "Group", "apiGroup": GROUP, "name": g }))
        .collect();
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {
            "name": name,
            "labels": { "kubernetes.io/bootstrapping": "rbac-defaults" },
            "annotations": { AUTOUPDATE: "true" },
        },
        "roleRef": { "apiGroup": GROUP, "kind": "ClusterRole", "name": role },
        "subjects": subjects,
    })
}

fn aggregate_label(to: &str) -> String {
    format!("rbac.authorization.k8s.io/aggregate-to-{to}")
}

/// The default policy as (resource plural, object), ClusterRoles first.
pub fn policy_objects() -> Vec<(&'static str, Value)> {
    let to = |names: &[&str]| {
        let mut labels = json!({});
        for n in names {
            labels[aggregate_label(n)] = json!("true");
        }
        labels
    };
    let view_rules = vec![
        rule(
            &[""],
            &[
                "configmaps",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "pods",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/status",
            ],
            READ,
        ),
        rule(
            &[""],
            &[
                "bindings",
                "events",
                "limitranges",
                "namespaces/status",
                "pods/log",
                "pods/status",
                "replicationcontrollers/status",
                "resourcequotas",
                "resourcequotas/status",
            ],
            READ,
        ),
        rule(&[""], &["namespaces"], READ),
        rule(&["discovery.k8s.io"], &["endpointslices"], READ),
        rule(
            &["apps"],
            &[
                "controllerrevisions",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "statefulsets",
                "statefulsets/scale",
                "statefulsets/status",
            ],
            READ,
        ),
        rule(
            &["autoscaling"],
            &[
                "horizontalpodautoscalers",
                "horizontalpodautoscalers/status",
            ],
            READ,
        ),
        rule(
            &["batch"],
            &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
            READ,
        ),
        rule(&["events.k8s.io"], &["events"], READ),
        rule(
            &["policy"],
            &["poddisruptionbudgets", "poddisruptionbudgets/status"],
            READ,
        ),
        rule(
            &["networking.k8s.io"],
            &["ingresses", "ingresses/status", "networkpolicies"],
            READ,
        ),
        rule(&["coordination.k8s.io"], &["leases"], READ),
    ];
    let edit_rules = vec![
        rule(
            &[""],
            &[
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
                "secrets",
                "services/proxy",
            ],
            READ,
        ),
        rule(&[""], &["serviceaccounts"], &["impersonate"]),
        rule(
            &[""],
            &[
                "pods",
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
            ],
            WRITE,
        ),
        rule(&[""], &["pods/eviction"], &["create"]),
        rule(
            &[""],
            &[
                "configmaps",
                "events",
                "persistentvolumeclaims",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "secrets",
                "serviceaccounts",
                "services",
                "services/proxy",
            ],
            WRITE,
        ),
        rule(&[""], &["serviceaccounts/token"], &["create"]),
        rule(
            &["apps"],
            &[
                "daemonsets",
                "deployments",
                "deployments/rollback",
                "deployments/scale",
                "replicasets",
                "replicasets/scale",
                "statefulsets",
                "statefulsets/scale",
            ],
            WRITE,
        ),
        rule(&["autoscaling"], &["horizontalpodautoscalers"], WRITE),
        rule(&["batch"], &["cronjobs", "jobs"], WRITE),
        rule(&["policy"], &["poddisruptionbudgets"], WRITE),
        rule(
            &["networking.k8s.io"],
            &["ingresses", "networkpolicies"],
            WRITE,
        ),
        rule(&["coordination.k8s.io"], &["leases"], WRITE),
    ];
    let admin_rules = vec![
        rule(
            &["authorization.k8s.io"],
            &["localsubjectaccessreviews"],
            &["create"],
        ),
        rule(&[GROUP], &["rolebindings", "roles"], ALL),
    ];
    let discovery_urls = [
        "/api",
        "/api/*",
        "/apis",
        "/apis/*",
        "/healthz",
        "/livez",
        "/openapi",
        "/openapi/*",
        "/readyz",
        "/version",
        "/version/",
    ];
    let public_urls = ["/healthz", "/livez", "/readyz", "/version", "/version/"];
    vec![
        (
            "clusterroles",
            cluster_role(
                "cluster-admin",
                json!({}),
                vec![rule(&["*"], &["*"], &["*"]), url_rule(&["*"], &["*"])],
                None,
            ),
        ),
        (
            "clusterroles",
            cluster_role("admin", json!({}), vec![], Some(&aggregate_label("admin"))),
        ),
        (
            "clusterroles",
            cluster_role(
                "edit",
                to(&["admin"]),
                vec![],
                Some(&aggregate_label("edit")),
            ),
        ),
        (
            "clusterroles",
            cluster_role(
                "view",
                to(&["edit"]),
                vec![],
                Some(&aggregate_label("view")),
            ),
        ),
        (
            "clusterroles",
            cluster_role(
                "system:aggregate-to-admin",
                to(&["admin"]),
                admin_rules,
                None,
            ),
        ),
        (
            "clusterroles",
            cluster_role("system:aggregate-to-edit", to(&["edit"]), edit_rules, None),
        ),
        (
            "clusterroles",
            cluster_role("system:aggregate-to-view", to(&["view"]), view_rules, None),
        ),
        (
            "clusterroles",
            cluster_role(
                "system:discovery",
                json!({}),
                vec![url_rule(&discovery_urls, &["get"])],
                None,
            ),
        ),
        (
            "clusterroles",
            cluster_role(
                "system:basic-user",
                json!({}),
                vec![
                    rule(
                        &["authorization.k8s.io"],
                        &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                        &["create"],
                    ),
                    rule(
                        &["authentication.k8s.io"],
                        &["selfsubjectreviews"],
                        &["create"],
                    ),
                ],
                None,
            ),
        ),
        (
            "clusterroles",
            cluster_role(
                "system:public-info-viewer",
                json!({}),
                vec![url_rule(&public_urls, &["get"])],
                None,
            ),
        ),
        (
            "clusterrolebindings",
            cluster_binding("cluster-admin", "cluster-admin", &[super::SYSTEM_MASTERS]),
        ),
        (
            "clusterrolebindings",
            cluster_binding(
                "system:discovery",
                "system:discovery",
                &["system:authenticated"],
            ),
        ),
        (
            "clusterrolebindings",
            cluster_binding(
                "system:basic-user",
                "system:basic-user",
                &["system:authenticated"],
            ),
        ),
        (
            "clusterrolebindings",
            cluster_binding(
                "system:public-info-viewer",
                "system:public-info-viewer",
                &["system:authenticated", "system:unauthenticated"],
            ),
        ),
    ]
}

fn scope(registry: &Registry, plural: &str) -> anyhow::Result<Scope> {
    let def = registry
        .catalog
        .lookup(GROUP, "v1", plural)
        .ok_or_else(|| anyhow::anyhow!("{plural}.{GROUP} is not served"))?;
    Ok(Scope {
        def,
        namespace: None,
    })
}

/// Creates the default policy where missing, and adds missing rules and subjects to defaults
/// that allow updates. Aggregated rules are left to aggregation.
pub async fn ensure_policy(registry: &Registry) -> anyhow::Result<()> {
    for (plural, wanted) in policy_objects() {
        let scope = scope(registry, plural)?;
        let name = object::name(&wanted).to_string();
        match registry
            .create(&scope, wanted.clone(), &Query::default())
            .await
        {
            Ok(_) => {
                tracing::debug!(%plural, %name, "created default RBAC object");
                continue;
            }
            Err(e) if e.code == 409 => {}
            Err(e) => anyhow::bail!("creating {plural} {name}: {e}"),
        }
        let field = if plural == "clusterroles" {
            "rules"
        } else {
            "subjects"
        };
        let aggregated = wanted.get("aggregationRule").is_some();
        let result = registry
            .guaranteed_update(&scope, &name, None, false, |current| {
                let mut next = current.clone();
                let annotations = object::meta(current).and_then(|m| m.get("annotations"));
                if annotations
                    .and_then(|a| a.get(AUTOUPDATE))
                    .and_then(Value::as_str)
                    == Some("false")
                {
                    return Ok(next);
                }
                if aggregated {
                    if next.get("aggregationRule").is_none() {
                        next["aggregationRule"] = wanted["aggregationRule"].clone();
                    }
                    return Ok(next);
                }
                let mut have = next[field].as_array().cloned().unwrap_or_default();
                for item in wanted[field].as_array().into_iter().flatten() {
                    if !have.contains(item) {
                        have.push(item.clone());
                    }
                }
                next[field] = Value::Array(have);
                if plural == "clusterrolebindings" {
                    next["roleRef"] = wanted["roleRef"].clone();
                }
                Ok(next)
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(%plural, %name, error = %e, "could not reconcile default RBAC object");
        }
    }
    Ok(())
}

/// The rules an aggregating ClusterRole should have: the rules of every other ClusterRole its
/// selectors match, in name order, each rule once.
pub fn aggregated_rules(target: &Value, roles: &[Value]) -> Option<Vec<Value>> {
    let selectors = target
        .pointer("/aggregationRule/clusterRoleSelectors")?
        .as_array()?;
    let target_name = object::name(target);
    let mut matched: Vec<&Value> = roles
        .iter()
        .filter(|r| object::name(r) != target_name)
        .filter(|r| {
            let empty = serde_json::Map::new();
            let labels = object::meta(r)
                .and_then(|m| m.get("labels"))
                .and_then(Value::as_object)
                .unwrap_or(&empty);
            selectors.iter().any(|s| selector_matches(s, labels))
        })
        .collect();
    matched.sort_by(|a, b| object::name(a).cmp(object::name(b)));
    let mut rules: Vec<Value> = Vec::new();
    for role in matched {
        for rule in role["rules"].as_array().into_iter().flatten() {
            if !rules.contains(rule) {
                rules.push(rule.clone());
            }
        }
    }
    Some(rules)
}

/// One aggregation pass over every ClusterRole in the cache. Returns how many roles changed.
pub async fn aggregate_all(registry: &Registry) -> usize {
    let Ok(scope) = scope(registry, "clusterroles") else {
        return 0;
    };
    // See our own and others' latest writes before deciding.
    if let Err(e) = registry
        .cache
        .sync(std::time::Duration::from_secs(10))
        .await
    {
        tracing::warn!(error = %e, "watch cache not in sync; aggregating from what it holds");
    }
    let (entries, _) = registry.cache.list(CLUSTER_ROLE_PREFIX);
    let roles: Vec<Value> = entries.iter().map(|(_, o)| o.value()).collect();
    let mut changed = 0;
    for target in &roles {
        let Some(rules) = aggregated_rules(target, &roles) else {
            continue;
        };
        if target["rules"]
            .as_array()
            .is_some_and(|have| *have == rules)
        {
            continue;
        }
        let name = object::name(target);
        let rules = Value::Array(rules);
        let result = registry
            .guaranteed_update(&scope, name, None, false, |current| {
                let mut next = current.clone();
                next["rules"] = rules.clone();
                Ok(next)
            })
            .await;
        match result {
            Ok(_) => changed += 1,
            Err(e) if e.code == 404 => {}
            Err(e) => {
                tracing::warn!(clusterrole = name, error = %e, "aggregating ClusterRole failed")
            }
        }
    }
    changed
}

/// The ClusterRole aggregation controller: after any ClusterRole changes, re-aggregate. A write
/// it makes is itself a change, so chains (`view` into `edit` into `admin`) settle in a few
/// passes; a pass that changes nothing writes nothing.
pub async fn run_aggregation(registry: Arc<Registry>) {
    loop {
        let (_, _, mut watch) = registry.cache.snapshot_and_watch(CLUSTER_ROLE_PREFIX);
        aggregate_all(&registry).await;
        while watch.next().await.is_some() {
            // Take every change already queued, then do one pass for all of them.
            while let Some(Some(_)) = watch.next().now_or_never() {}
            aggregate_all(&registry).await;
        }
        tracing::debug!("ClusterRole watch ended; re-listing");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregation_follows_labels_and_chains() {
        let objects: Vec<Value> = policy_objects()
            .into_iter()
            .filter(|(plural, _)| *plural == "clusterroles")
            .map(|(_, o)| o)
            .collect();
        let mut roles = objects.clone();
        // Aggregate until nothing changes, as the controller does.
        for _ in 0..4 {
            let snapshot = roles.clone();
            for role in roles.iter_mut() {
                if let Some(rules) = aggregated_rules(role, &snapshot) {
                    role["rules"] = Value::Array(rules);
                }
            }
        }
        let get = |name: &str| {
            roles
                .iter()
                .find(|r| object::name(r) == name)
                .unwrap()
                .clone()
        };
        let view = super::super::rules::Rule::all_from(&get("view"));
        let edit = super::super::rules::Rule::all_from(&get("edit"));
        let admin = super::super::rules::Rule::all_from(&get("admin"));
        let can = |rules: &[super::super::rules::Rule], verb: &str, group: &str, resource: &str| {
            let attrs = super::super::Attributes::resource(verb, group, resource, "ns", "");
            rules.iter().any(|r| r.allows(&attrs))
        };
        assert!(can(&view, "list", "", "configmaps"));
        assert!(!can(&view, "create", "", "configmaps"));
        assert!(!can(&view, "get", "", "secrets"));
        assert!(can(&edit, "create", "", "configmaps"));
        assert!(can(&edit, "list", "", "configmaps"), "view flows into edit");
        assert!(!can(&edit, "create", GROUP, "rolebindings"));
        assert!(!can(&edit, "update", "", "resourcequotas"));
        assert!(can(&admin, "create", GROUP, "rolebindings"));
        assert!(can(&admin, "create", "", "pods"), "edit flows into admin");
        // A new role labelled for view joins view.
        let mut extra = cluster_role(
            "widgets-view",
            to_label("view"),
            vec![rule(&["example.com"], &["widgets"], READ)],
            None,
        );
        extra["metadata"]["labels"] = to_label("view");
        let view_role = get("view");
        roles.push(extra);
        let rules = aggregated_rules(&view_role, &roles).unwrap();
        assert!(rules.iter().any(|r| r["resources"] == json!(["widgets"])));
        // An aggregating role never includes itself.
        assert!(
            aggregated_rules(&roles[0], &roles[..1]).is_none(),
            "cluster-admin does not aggregate"
        );
    }

    fn to_label(name: &str) -> Value {
        json!({ aggregate_label(name): "true" })
    }
}
