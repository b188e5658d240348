//! From API objects to placement's own forms: a Pod becomes a [`Workload`], a Node a
//! [`HostInfo`].

use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodAffinityTerm, PodSpec,
    WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use crate::model::{
    AffinityTerm, HostInfo, Labels, Namespaces, NodeTerm, Operator, Requirement, Resources,
    Selector, SpreadConstraint, Taint, TaintEffect, Toleration, WhenUnsatisfiable, Workload,
};
use crate::quantity;

/// The key placement knows a pod by.
pub fn pod_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

fn operator(op: &str) -> Option<Operator> {
    Some(match op {
        "In" => Operator::In,
        "NotIn" => Operator::NotIn,
        "Exists" => Operator::Exists,
        "DoesNotExist" => Operator::DoesNotExist,
        "Gt" => Operator::Gt,
        "Lt" => Operator::Lt,
        _ => return None,
    })
}

/// A requirement no label satisfies: what an unknown operator or a null selector means.
fn impossible() -> Requirement {
    Requirement {
        key: String::new(),
        operator: Operator::In,
        values: Vec::new(),
    }
}

fn label_requirement(r: &LabelSelectorRequirement) -> Requirement {
    match operator(&r.operator) {
        Some(op @ (Operator::In | Operator::NotIn | Operator::Exists | Operator::DoesNotExist)) => {
            Requirement {
                key: r.key.clone(),
                operator: op,
                values: r.values.clone().unwrap_or_default(),
            }
        }
        _ => impossible(),
    }
}

/// A label selector; None (null) selects nothing, as upstream's affinity terms.
pub fn selector(selector: Option<&LabelSelector>) -> Selector {
    let Some(selector) = selector else {
        return Selector {
            match_labels: Vec::new(),
            expressions: vec![impossible()],
        };
    };
    Selector {
        match_labels: selector
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        expressions: selector
            .match_expressions
            .iter()
            .flatten()
            .map(label_requirement)
            .collect(),
    }
}

fn node_requirement(r: &NodeSelectorRequirement) -> Requirement {
    match operator(&r.operator) {
        Some(op) => Requirement {
            key: r.key.clone(),
            operator: op,
            values: r.values.clone().unwrap_or_default(),
        },
        None => impossible(),
    }
}

fn node_term(t: &NodeSelectorTerm) -> NodeTerm {
    NodeTerm {
        expressions: t
            .match_expressions
            .iter()
            .flatten()
            .map(node_requirement)
            .collect(),
        fields: t
            .match_fields
            .iter()
            .flatten()
            .map(node_requirement)
            .collect(),
    }
}

fn quantity_of(q: Option<&Quantity>, milli: bool) -> i64 {
    q.and_then(|q| quantity::parse(&q.0, milli))
        .unwrap_or(0)
        .max(0)
}

/// What a pod spec asks for, as upstream computes it: the sum over containers, or the largest
/// init container if that is more, plus the pod overhead. A container without a request
/// asks for its limit, if it has one.
pub fn pod_requests(spec: &PodSpec) -> Resources {
    let container = |c: &k8s_openapi::api::core::v1::Container| {
        let r = c.resources.as_ref();
        let get = |name: &str, milli: bool| {
            let request = r
                .and_then(|r| r.requests.as_ref())
                .and_then(|m| m.get(name));
            let limit = r.and_then(|r| r.limits.as_ref()).and_then(|m| m.get(name));
            quantity_of(request.or(limit), milli)
        };
        (get("cpu", true), get("memory", false))
    };
    let (mut cpu, mut memory) = (0, 0);
    for c in &spec.containers {
        let (c, m) = container(c);
        cpu += c;
        memory += m;
    }
    for c in spec.init_containers.iter().flatten() {
        let (c, m) = container(c);
        cpu = cpu.max(c);
        memory = memory.max(m);
    }
    if let Some(overhead) = &spec.overhead {
        cpu += quantity_of(overhead.get("cpu"), true);
        memory += quantity_of(overhead.get("memory"), false);
    }
    Resources::new(cpu, memory, 1)
}

/// A pod as a workload. `namespaces_matching` resolves an affinity term's non-empty
/// `namespaceSelector` to the namespaces it selects (the caller knows namespace labels).
pub fn pod_workload(pod: &Pod, namespaces_matching: &dyn Fn(&Selector) -> Vec<String>) -> Workload {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let labels: Labels = pod.metadata.labels.clone().unwrap_or_default();
    let group = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
        .map(|r| r.uid.clone());
    let mut w = Workload {
        key: pod_key(&namespace, &name),
        namespace: namespace.clone(),
        labels,
        group,
        ..Workload::default()
    };
    let Some(spec) = &pod.spec else {
        return w;
    };
    w.requests = pod_requests(spec);
    w.priority = spec.priority.unwrap_or(0);
    w.node_selector = spec
        .node_selector
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    w.tolerations = spec
        .tolerations
        .iter()
        .flatten()
        .map(|t| Toleration {
            key: t.key.clone().unwrap_or_default(),
            exists: t.operator.as_deref() == Some("Exists"),
            value: t.value.clone().unwrap_or_default(),
            effect: t
                .effect
                .as_deref()
                .filter(|e| !e.is_empty())
                .and_then(TaintEffect::parse),
            seconds: t.toleration_seconds,
        })
        .collect();
    let affinity_term = |t: &PodAffinityTerm| AffinityTerm {
        selector: selector(t.label_selector.as_ref()),
        namespaces: match (&t.namespaces, &t.namespace_selector) {
            (_, Some(ns_selector)) => {
                let ns_selector = self::selector(Some(ns_selector));
                if ns_selector.is_empty() {
                    Namespaces::All
                } else {
                    let mut names = namespaces_matching(&ns_selector);
                    names.extend(t.namespaces.iter().flatten().cloned());
                    Namespaces::Named(names)
                }
            }
            (Some(names), None) if !names.is_empty() => Namespaces::Named(names.clone()),
            _ => Namespaces::Named(vec![namespace.clone()]),
        },
        topology_key: t.topology_key.clone(),
    };
    if let Some(affinity) = &spec.affinity {
        if let Some(node) = &affinity.node_affinity {
            if let Some(required) = &node.required_during_scheduling_ignored_during_execution {
                w.required_node_terms =
                    required.node_selector_terms.iter().map(node_term).collect();
                // Upstream: a required node selector with no terms matches no node.
                if w.required_node_terms.is_empty() {
                    w.required_node_terms.push(NodeTerm::default());
                }
            }
            w.preferred_node_terms = node
                .preferred_during_scheduling_ignored_during_execution
                .iter()
                .flatten()
                .map(|p| (p.weight, node_term(&p.preference)))
                .collect();
        }
        // Affinity and anti-affinity carry the same two lists of terms.
        let required = |terms: &Option<Vec<PodAffinityTerm>>| -> Vec<AffinityTerm> {
            terms.iter().flatten().map(affinity_term).collect()
        };
        let preferred = |terms: &Option<Vec<WeightedPodAffinityTerm>>| -> Vec<(i32, AffinityTerm)> {
            terms
                .iter()
                .flatten()
                .map(|p| (p.weight, affinity_term(&p.pod_affinity_term)))
                .collect()
        };
        if let Some(pa) = &affinity.pod_affinity {
            w.affinity = required(&pa.required_during_scheduling_ignored_during_execution);
            w.preferred_affinity =
                preferred(&pa.preferred_during_scheduling_ignored_during_execution);
        }
        if let Some(anti) = &affinity.pod_anti_affinity {
            w.anti_affinity = required(&anti.required_during_scheduling_ignored_during_execution);
            w.preferred_anti_affinity =
                preferred(&anti.preferred_during_scheduling_ignored_during_execution);
        }
    }
    w.spread = spec
        .topology_spread_constraints
        .iter()
        .flatten()
        .map(|c| SpreadConstraint {
            max_skew: c.max_skew,
            topology_key: c.topology_key.clone(),
            when_unsatisfiable: if c.when_unsatisfiable == "ScheduleAnyway" {
                WhenUnsatisfiable::ScheduleAnyway
            } else {
                WhenUnsatisfiable::DoNotSchedule
            },
            selector: selector(c.label_selector.as_ref()),
        })
        .collect();
    w
}

/// Whether a Node's `Ready` condition is `True`.
pub fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// A Node as a host: its allocatable (else its capacity), labels, taints, readiness and
/// whether it is cordoned.
pub fn node_host(node: &Node) -> HostInfo {
    let status = node.status.as_ref();
    let resources = status
        .and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()))
        .cloned()
        .unwrap_or_default();
    let spec = node.spec.as_ref();
    HostInfo {
        name: node.metadata.name.clone().unwrap_or_default(),
        labels: node.metadata.labels.clone().unwrap_or_default(),
        taints: spec
            .and_then(|s| s.taints.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|t| {
                Some(Taint {
                    key: t.key.clone(),
                    value: t.value.clone().unwrap_or_default(),
                    effect: TaintEffect::parse(&t.effect)?,
                })
            })
            .collect(),
        allocatable: Resources::new(
            quantity_of(resources.get("cpu"), true),
            quantity_of(resources.get("memory"), false),
            quantity_of(resources.get("pods"), false),
        ),
        ready: node_ready(node),
        unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_sum_containers_and_respect_init_containers() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "a"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u1", "controller": true}]},
            "spec": {
                "priority": 7,
                "containers": [
                    {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
                    {"name": "b", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}
                ],
                "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2"}}}],
                "nodeSelector": {"disk": "ssd"},
                "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}],
                "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "a"}}, "topologyKey": "kubernetes.io/hostname"}
                ]}},
                "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                    "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "a"}}}]
            }
        }))
        .unwrap();
        let w = pod_workload(&pod, &|_| Vec::new());
        assert_eq!(w.key, "ns/p");
        assert_eq!(
            w.requests,
            Resources::new(2000, 64 * 1024 * 1024 + 1024 * 1024 * 1024, 1)
        );
        assert_eq!(w.priority, 7);
        assert_eq!(w.group.as_deref(), Some("u1"));
        assert_eq!(
            w.node_selector,
            vec![("disk".to_string(), "ssd".to_string())]
        );
        assert_eq!(w.tolerations[0].seconds, Some(5));
        assert_eq!(w.tolerations[0].effect, Some(TaintEffect::NoExecute));
        assert_eq!(w.anti_affinity.len(), 1);
        assert_eq!(
            w.anti_affinity[0].namespaces,
            Namespaces::Named(vec!["ns".into()])
        );
        assert_eq!(
            w.spread[0].when_unsatisfiable,
            WhenUnsatisfiable::DoNotSchedule
        );
    }

    #[test]
    fn nodes_report_allocatable_readiness_and_taints() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "h1", "labels": {"topology.kubernetes.io/zone": "z1"}},
            "spec": {"unschedulable": true, "taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]},
            "status": {
                "capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"},
                "allocatable": {"cpu": "7500m", "memory": "15Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}]
            }
        }))
        .unwrap();
        let host = node_host(&node);
        assert_eq!(
            host.allocatable,
            Resources::new(7500, 15 * 1024 * 1024 * 1024, 110)
        );
        assert!(host.ready && host.unschedulable);
        assert_eq!(host.taints[0].effect, TaintEffect::NoSchedule);
    }
}
