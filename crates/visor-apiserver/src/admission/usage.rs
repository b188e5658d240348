//! What an object costs against a ResourceQuota: upstream's quota evaluators, as pure
//! functions of the object's JSON, shared by quota admission and the quota controller.
//!
//! Keys follow upstream: `pods`, `requests.cpu` (and its alias `cpu`), `limits.memory`,
//! `requests.storage`, `<class>.storageclass.storage.k8s.io/requests.storage`,
//! `persistentvolumeclaims`, `services.loadbalancers`, `services.nodeports`, `configmaps`,
//! `secrets`, and `count/<resource>[.<group>]` for every kind.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::kinds::validation::{Quantity, QuantityFormat, parse_quantity};

/// Usage by quota key.
pub type ResourceList = BTreeMap<String, Quantity>;

/// The storage-class key suffix of a per-class storage request.
pub const STORAGE_CLASS_SUFFIX: &str = ".storageclass.storage.k8s.io/";

/// Compute resources upstream insists a pod names explicitly when a quota constrains them.
const POD_REQUIRED: [&str; 6] = [
    "cpu",
    "memory",
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
];

/// One whole unit (a count of one object).
pub fn one() -> Quantity {
    count(1)
}

/// A count as a quantity.
pub fn count(n: i64) -> Quantity {
    Quantity {
        nanos: i128::from(n) * 1_000_000_000,
        format: QuantityFormat::DecimalSI,
    }
}

/// `a + b`, keeping `a`'s format (upstream's `Quantity.Add`).
pub fn add(a: Quantity, b: Quantity) -> Quantity {
    Quantity {
        nanos: a.nanos.saturating_add(b.nanos),
        format: if a.nanos == 0 { b.format } else { a.format },
    }
}

/// Adds every entry of `b` into `a`.
pub fn add_all(a: &mut ResourceList, b: &ResourceList) {
    for (k, v) in b {
        let sum = match a.get(k) {
            Some(x) => add(*x, *v),
            None => *v,
        };
        a.insert(k.clone(), sum);
    }
}

/// The count key of a resource: `count/pods`, `count/deployments.apps`.
pub fn count_key(group: &str, resource: &str) -> String {
    if group.is_empty() {
        format!("count/{resource}")
    } else {
        format!("count/{resource}.{group}")
    }
}

/// Whether a resource's usage includes this quota key, whatever the object: used to know
/// which keys a recount must compute for a resource and which quotas a write touches.
pub fn resource_covers(group: &str, resource: &str, key: &str) -> bool {
    if key == count_key(group, resource) {
        return true;
    }
    match (group, resource) {
        ("", "pods") => {
            key == "pods"
                || key.starts_with("requests.")
                || key.starts_with("limits.")
                || matches!(key, "cpu" | "memory" | "ephemeral-storage")
        }
        ("", "persistentvolumeclaims") => {
            key == "persistentvolumeclaims"
                || key == "requests.storage"
                || key.contains(STORAGE_CLASS_SUFFIX)
        }
        ("", "services") => matches!(
            key,
            "services" | "services.loadbalancers" | "services.nodeports"
        ),
        ("", r @ ("configmaps" | "secrets" | "replicationcontrollers" | "resourcequotas")) => {
            key == r
        }
        _ => false,
    }
}

/// The resources whose objects a quota key counts, as (group, resource); `None` for a key no
/// evaluator produces (an extended resource's `requests.*` is counted on pods).
pub fn key_resource(key: &str) -> Option<(String, String)> {
    if let Some(rest) = key.strip_prefix("count/") {
        return Some(match rest.split_once('.') {
            Some((resource, group)) => (group.to_string(), resource.to_string()),
            None => (String::new(), rest.to_string()),
        });
    }
    let core = |r: &str| Some((String::new(), r.to_string()));
    match key {
        "pods" | "cpu" | "memory" | "ephemeral-storage" => core("pods"),
        k if k.starts_with("requests.") && k != "requests.storage" => core("pods"),
        k if k.starts_with("limits.") => core("pods"),
        "persistentvolumeclaims" | "requests.storage" => core("persistentvolumeclaims"),
        k if k.contains(STORAGE_CLASS_SUFFIX) => core("persistentvolumeclaims"),
        "services" | "services.loadbalancers" | "services.nodeports" => core("services"),
        "configmaps" | "secrets" | "replicationcontrollers" | "resourcequotas" => core(key),
        _ => None,
    }
}

/// What one object of `group`/`resource` costs. Upstream's rules: a pod counts its
/// containers' requests and limits (the sum of its containers, or the largest init container
/// if more, plus sidecars and the pod overhead) unless it has finished (Succeeded, Failed);
/// a claim counts its requested storage overall and per class; a service counts its
/// load-balancer and node ports; every object counts one towards `count/<resource>`.
pub fn usage(group: &str, resource: &str, obj: &Value) -> ResourceList {
    let mut list = ResourceList::new();
    list.insert(count_key(group, resource), one());
    if !group.is_empty() {
        return list;
    }
    match resource {
        "pods" => pod_usage(obj, &mut list),
        "persistentvolumeclaims" => claim_usage(obj, &mut list),
        "services" => service_usage(obj, &mut list),
        "configmaps" | "secrets" | "replicationcontrollers" | "resourcequotas" => {
            list.insert(resource.to_string(), one());
        }
        _ => {}
    }
    list
}

fn quantities(v: Option<&Value>) -> ResourceList {
    let mut out = ResourceList::new();
    for (k, q) in v.and_then(Value::as_object).into_iter().flatten() {
        let text = match q {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => continue,
        };
        if let Ok(q) = parse_quantity(&text) {
            out.insert(k.clone(), q);
        }
    }
    out
}

/// Whether a pod no longer uses its compute resources (upstream's `QuotaV1Pod` is false).
pub fn pod_is_terminal(pod: &Value) -> bool {
    matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    )
}

/// The effective requests or limits (`which`) of a pod.
fn pod_resources(pod: &Value, which: &str) -> ResourceList {
    let containers = |f: &str| {
        pod.pointer(&format!("/spec/{f}"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let of = |c: &Value| quantities(c.pointer(&format!("/resources/{which}")));
    let mut sum = ResourceList::new();
    for c in containers("containers") {
        add_all(&mut sum, &of(&c));
    }
    // Init containers run one after another before the app containers; sidecars (init
    // containers that restart always) keep running beside them, so they add up.
    let mut init_max = ResourceList::new();
    let mut sidecars = ResourceList::new();
    for c in containers("initContainers") {
        let res = of(&c);
        if c.get("restartPolicy").and_then(Value::as_str) == Some("Always") {
            add_all(&mut sidecars, &res);
            continue;
        }
        // A regular init container runs beside the sidecars started before it.
        let mut with_sidecars = sidecars.clone();
        add_all(&mut with_sidecars, &res);
        for (k, v) in with_sidecars {
            if init_max.get(&k).is_none_or(|m| v > *m) {
                init_max.insert(k, v);
            }
        }
    }
    add_all(&mut sum, &sidecars);
    for (k, v) in init_max {
        if sum.get(&k).is_none_or(|s| v > *s) {
            sum.insert(k, v);
        }
    }
    let overhead = quantities(pod.pointer("/spec/overhead"));
    for (k, v) in overhead {
        if let Some(s) = sum.get_mut(&k) {
            *s = add(*s, v);
        } else if which == "requests" {
            sum.insert(k, v);
        }
    }
    sum
}

fn pod_usage(pod: &Value, list: &mut ResourceList) {
    if pod_is_terminal(pod) {
        return;
    }
    list.insert("pods".into(), one());
    for (resource, q) in pod_resources(pod, "requests") {
        if matches!(resource.as_str(), "cpu" | "memory" | "ephemeral-storage") {
            list.insert(resource.clone(), q);
        }
        list.insert(format!("requests.{resource}"), q);
    }
    for (resource, q) in pod_resources(pod, "limits") {
        list.insert(format!("limits.{resource}"), q);
    }
}

/// A claim's storage class: `spec.storageClassName`, or the beta annotation.
pub fn claim_class(claim: &Value) -> Option<&str> {
    claim
        .pointer("/spec/storageClassName")
        .and_then(Value::as_str)
        .or_else(|| {
            claim
                .pointer("/metadata/annotations/volume.beta.kubernetes.io~1storage-class")
                .and_then(Value::as_str)
        })
        .filter(|c| !c.is_empty())
}

fn claim_usage(claim: &Value, list: &mut ResourceList) {
    list.insert("persistentvolumeclaims".into(), one());
    let class = claim_class(claim);
    if let Some(class) = class {
        list.insert(
            format!("{class}{STORAGE_CLASS_SUFFIX}persistentvolumeclaims"),
            one(),
        );
    }
    // A claim being expanded counts what it asks for or what it has, whichever is larger.
    let requested = quantities(claim.pointer("/spec/resources/requests"))
        .get("storage")
        .copied();
    let allocated = quantities(claim.pointer("/status/allocatedResources"))
        .get("storage")
        .copied();
    let storage = match (requested, allocated) {
        (Some(r), Some(a)) => Some(r.max(a)),
        (r, a) => r.or(a),
    };
    if let Some(storage) = storage {
        list.insert("requests.storage".into(), storage);
        if let Some(class) = class {
            list.insert(
                format!("{class}{STORAGE_CLASS_SUFFIX}requests.storage"),
                storage,
            );
        }
    }
}

fn service_usage(service: &Value, list: &mut ResourceList) {
    list.insert("services".into(), one());
    let kind = service
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    let ports = service
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .map_or(0, Vec::len) as i64;
    match kind {
        "LoadBalancer" => {
            list.insert("services.loadbalancers".into(), one());
            let allocate = service
                .pointer("/spec/allocateLoadBalancerNodePorts")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            if allocate {
                list.insert("services.nodeports".into(), count(ports));
            }
        }
        "NodePort" => {
            list.insert("services.nodeports".into(), count(ports));
        }
        _ => {}
    }
}

/// The compute keys a quota constrains that a pod's containers fail to name, as upstream's
/// message: `limits.cpu for: app; requests.memory for: app,sidecar`. `None` if every
/// container names every constrained resource, or the pod is terminal.
pub fn pod_missing(pod: &Value, hard_keys: &[&str]) -> Option<String> {
    if pod_is_terminal(pod) {
        return None;
    }
    let required: Vec<&str> = hard_keys
        .iter()
        .copied()
        .filter(|k| POD_REQUIRED.contains(k))
        .collect();
    if required.is_empty() {
        return None;
    }
    let mut missing: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for field in ["containers", "initContainers"] {
        for c in pod
            .pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let requests = quantities(c.pointer("/resources/requests"));
            let limits = quantities(c.pointer("/resources/limits"));
            let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
            for key in &required {
                let has = match *key {
                    "cpu" | "requests.cpu" => requests.contains_key("cpu"),
                    "memory" | "requests.memory" => requests.contains_key("memory"),
                    "limits.cpu" => limits.contains_key("cpu"),
                    _ => limits.contains_key("memory"),
                };
                if !has {
                    let names = missing.entry(key).or_default();
                    if !names.iter().any(|n| n == name) {
                        names.push(name.to_string());
                    }
                }
            }
        }
    }
    if missing.is_empty() {
        return None;
    }
    let parts: Vec<String> = missing
        .into_iter()
        .map(|(key, mut names)| {
            names.sort();
            format!("{key} for: {}", names.join(","))
        })
        .collect();
    Some(parts.join("; "))
}

/// Upstream's `prettyPrint` of a resource list: `k=v` pairs sorted by key, comma-joined,
/// values in canonical form.
pub fn pretty(list: &ResourceList) -> String {
    list.iter()
        .map(|(k, v)| format!("{k}={}", v.canonical()))
        .collect::<Vec<_>>()
        .join(",")
}

/// A quota's `spec.hard` or `status.used` as parsed quantities (unparsable entries skipped:
/// validation refuses them on write).
pub fn parse_list(v: Option<&Value>) -> ResourceList {
    quantities(v)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn q(s: &str) -> Quantity {
        parse_quantity(s).unwrap()
    }

    fn text(list: &ResourceList) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.clone(), v.canonical()))
            .collect()
    }

    #[test]
    fn pod_sums_containers_takes_the_largest_init_container_and_adds_overhead() {
        let pod = json!({"spec": {
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "500m"}}},
                {"name": "b", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "1"}}},
            ],
            "initContainers": [
                {"name": "init", "resources": {"requests": {"cpu": "2", "memory": "16Mi"}}},
            ],
            "overhead": {"cpu": "100m"},
        }});
        let u = usage("", "pods", &pod);
        assert_eq!(
            text(&u),
            [
                ("count/pods", "1"),
                ("cpu", "2100m"),
                ("limits.cpu", "1600m"),
                ("memory", "128Mi"),
                ("pods", "1"),
                ("requests.cpu", "2100m"),
                ("requests.memory", "128Mi"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }

    #[test]
    fn terminal_pods_only_count_as_objects() {
        let pod = json!({"spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}}}]},
                         "status": {"phase": "Succeeded"}});
        assert_eq!(
            text(&usage("", "pods", &pod)),
            [("count/pods".to_string(), "1".to_string())]
        );
    }

    #[test]
    fn sidecars_add_up_with_the_app_containers() {
        let pod = json!({"spec": {
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}}}],
            "initContainers": [
                {"name": "proxy", "restartPolicy": "Always", "resources": {"requests": {"cpu": "500m"}}},
                {"name": "setup", "resources": {"requests": {"cpu": "1"}}},
            ],
        }});
        assert_eq!(usage("", "pods", &pod)["requests.cpu"], q("1500m"));
    }

    #[test]
    fn claims_count_storage_per_class() {
        let claim = json!({"spec": {"storageClassName": "gold", "resources": {"requests": {"storage": "5Gi"}}}});
        let u = usage("", "persistentvolumeclaims", &claim);
        assert_eq!(
            u["gold.storageclass.storage.k8s.io/requests.storage"],
            q("5Gi")
        );
        assert_eq!(
            u["gold.storageclass.storage.k8s.io/persistentvolumeclaims"],
            one()
        );
        assert_eq!(u["requests.storage"], q("5Gi"));
        assert_eq!(u["persistentvolumeclaims"], one());
    }

    #[test]
    fn services_count_load_balancers_and_node_ports() {
        let lb = json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 80}, {"port": 443}]}});
        let u = usage("", "services", &lb);
        assert_eq!(u["services.loadbalancers"], one());
        assert_eq!(u["services.nodeports"], count(2));
        let plain = usage("", "services", &json!({"spec": {"ports": [{"port": 80}]}}));
        assert!(!plain.contains_key("services.nodeports"));
    }

    #[test]
    fn every_kind_counts_under_its_count_key() {
        let u = usage("apps", "deployments", &json!({}));
        assert_eq!(text(&u), [("count/deployments.apps".into(), "1".into())]);
        assert!(resource_covers(
            "apps",
            "deployments",
            "count/deployments.apps"
        ));
        assert!(!resource_covers("apps", "deployments", "pods"));
        assert_eq!(
            key_resource("count/virtualmachines.vmoperator.vmware.com"),
            Some(("vmoperator.vmware.com".into(), "virtualmachines".into()))
        );
        assert_eq!(
            key_resource("gold.storageclass.storage.k8s.io/requests.storage"),
            Some((String::new(), "persistentvolumeclaims".into()))
        );
    }

    #[test]
    fn missing_compute_resources_are_named_per_container() {
        let pod = json!({"spec": {"containers": [
            {"name": "web", "resources": {"requests": {"cpu": "1"}}},
            {"name": "log"},
        ]}});
        assert_eq!(
            pod_missing(&pod, &["limits.cpu", "requests.cpu", "pods"]).as_deref(),
            Some("limits.cpu for: log,web; requests.cpu for: log")
        );
        assert_eq!(pod_missing(&pod, &["pods", "requests.storage"]), None);
    }

    #[test]
    fn pretty_prints_sorted_canonical_pairs() {
        let mut list = ResourceList::new();
        list.insert("requests.memory".into(), q("1.5Gi"));
        list.insert("cpu".into(), q("0.5"));
        assert_eq!(pretty(&list), "cpu=500m,requests.memory=1536Mi");
    }
}
