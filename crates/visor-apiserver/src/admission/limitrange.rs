//! LimitRange admission, as upstream's `LimitRanger`: new pods get the namespace's default
//! requests and limits for containers that name none (mutating), then pods and claims are
//! checked against every range's `min`, `max` and `maxLimitRequestRatio` (validating, 403 with
//! upstream's messages).
//!
//! Caveat: defaults apply before the pod's own defaulting, as upstream's decoding defaults
//! requests from limits first: a container that names a limit but no request keeps the limit
//! as its request rather than the range's default request.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::kinds::validation::{Quantity, parse_quantity};

fn quantities(v: Option<&Value>) -> BTreeMap<String, Quantity> {
    super::usage::parse_list(v)
}

/// Items of the given `type` across the namespace's LimitRanges.
fn items<'a>(ranges: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    ranges
        .iter()
        .filter_map(|r| r.pointer("/spec/limits").and_then(Value::as_array))
        .flatten()
        .filter(move |i| i.get("type").and_then(Value::as_str) == Some(kind))
}

/// Fills each container's missing requests and limits from the ranges' `Container` defaults.
/// A resource missing from `defaultRequest` falls back to `default`, as upstream's LimitRange
/// defaulting makes it.
pub fn apply_pod_defaults(ranges: &[Value], pod: &mut Value) {
    let mut default_limits = Map::new();
    let mut default_requests = Map::new();
    for item in items(ranges, "Container") {
        let limits = item.get("default").and_then(Value::as_object);
        let requests = item.get("defaultRequest").and_then(Value::as_object);
        for (k, v) in limits.into_iter().flatten() {
            default_limits.entry(k.clone()).or_insert(v.clone());
        }
        for (k, v) in requests.into_iter().flatten() {
            default_requests.entry(k.clone()).or_insert(v.clone());
        }
        // Upstream defaults each missing `defaultRequest` entry to the `default` one.
        for (k, v) in limits.into_iter().flatten() {
            default_requests.entry(k.clone()).or_insert(v.clone());
        }
    }
    if default_limits.is_empty() && default_requests.is_empty() {
        return;
    }
    for field in ["containers", "initContainers"] {
        let Some(containers) = pod
            .pointer_mut(&format!("/spec/{field}"))
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        for c in containers.iter_mut().filter(|c| c.is_object()) {
            let resources = c
                .as_object_mut()
                .expect("checked")
                .entry("resources")
                .or_insert_with(|| json!({}));
            if !resources.is_object() {
                continue;
            }
            let user_limits: Vec<String> = resources
                .get("limits")
                .and_then(Value::as_object)
                .map(|l| l.keys().cloned().collect())
                .unwrap_or_default();
            for (k, v) in &default_requests {
                // A named limit is the request upstream's decoding already set.
                if user_limits.contains(k) {
                    continue;
                }
                let requests = resources
                    .as_object_mut()
                    .expect("checked")
                    .entry("requests")
                    .or_insert_with(|| json!({}));
                if let Some(r) = requests.as_object_mut() {
                    r.entry(k.clone()).or_insert(v.clone());
                }
            }
            for (k, v) in &default_limits {
                let limits = resources
                    .as_object_mut()
                    .expect("checked")
                    .entry("limits")
                    .or_insert_with(|| json!({}));
                if let Some(l) = limits.as_object_mut() {
                    l.entry(k.clone()).or_insert(v.clone());
                }
            }
        }
    }
}

/// Checks one set of requests and limits against one range item, upstream's
/// `minConstraint`, `maxConstraint` and `limitRequestRatioConstraint`.
fn check(
    item: &Value,
    kind: &str,
    requests: &BTreeMap<String, Quantity>,
    limits: &BTreeMap<String, Quantity>,
    errors: &mut Vec<String>,
) {
    for (resource, min) in quantities(item.get("min")) {
        match requests.get(&resource) {
            None => errors.push(format!(
                "minimum {resource} usage per {kind} is {}.  No request is specified",
                min.canonical()
            )),
            Some(r) if *r < min => errors.push(format!(
                "minimum {resource} usage per {kind} is {}, but request is {}",
                min.canonical(),
                r.canonical()
            )),
            _ => {}
        }
    }
    for (resource, max) in quantities(item.get("max")) {
        match limits.get(&resource) {
            None => errors.push(format!(
                "maximum {resource} usage per {kind} is {}.  No limit is specified",
                max.canonical()
            )),
            Some(l) if *l > max => errors.push(format!(
                "maximum {resource} usage per {kind} is {}, but limit is {}",
                max.canonical(),
                l.canonical()
            )),
            _ => {}
        }
    }
    for (resource, ratio) in quantities(item.get("maxLimitRequestRatio")) {
        let request = requests.get(&resource).filter(|r| r.nanos > 0);
        let limit = limits.get(&resource);
        match (request, limit) {
            (None, _) => errors.push(format!(
                "{resource} max limit to request ratio per {kind} is {}, but no request is specified or request is 0",
                ratio.canonical()
            )),
            (Some(_), None) => errors.push(format!(
                "{resource} max limit to request ratio per {kind} is {}, but no limit is specified",
                ratio.canonical()
            )),
            (Some(r), Some(l)) => {
                let actual = l.nanos as f64 / r.nanos as f64;
                if actual > ratio.nanos as f64 / 1e9 {
                    errors.push(format!(
                        "{resource} max limit to request ratio per {kind} is {}, but provided ratio is {actual:.6}",
                        ratio.canonical()
                    ));
                }
            }
        }
    }
}

/// Upstream's aggregate of several errors: one as itself, more as `[a, b]`.
fn aggregate(errors: Vec<String>) -> Option<String> {
    match errors.len() {
        0 => None,
        1 => errors.into_iter().next(),
        _ => Some(format!("[{}]", errors.join(", "))),
    }
}

/// The reason a pod breaks a range (`Container` and `Pod` items), if it does.
pub fn check_pod(ranges: &[Value], pod: &Value) -> Option<String> {
    let mut errors = Vec::new();
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|f| pod.pointer(&format!("/spec/{f}")).and_then(Value::as_array))
        .flatten()
        .collect();
    for item in items(ranges, "Container") {
        for c in &containers {
            check(
                item,
                "Container",
                &quantities(c.pointer("/resources/requests")),
                &quantities(c.pointer("/resources/limits")),
                &mut errors,
            );
        }
    }
    for item in items(ranges, "Pod") {
        // A pod's total: its app containers summed (upstream's pod-level LimitRange check).
        let mut requests = BTreeMap::new();
        let mut limits = BTreeMap::new();
        for c in pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            super::usage::add_all(&mut requests, &quantities(c.pointer("/resources/requests")));
            super::usage::add_all(&mut limits, &quantities(c.pointer("/resources/limits")));
        }
        check(item, "Pod", &requests, &limits, &mut errors);
    }
    aggregate(errors)
}

/// The reason a claim breaks a range (`PersistentVolumeClaim` items), if it does.
pub fn check_claim(ranges: &[Value], claim: &Value) -> Option<String> {
    let mut errors = Vec::new();
    let requests = quantities(claim.pointer("/spec/resources/requests"));
    let limits = quantities(claim.pointer("/spec/resources/limits"));
    for item in items(ranges, "PersistentVolumeClaim") {
        // Claims have no limit but their request; `max` bounds the request.
        let bound = if limits.is_empty() {
            &requests
        } else {
            &limits
        };
        check(item, "PersistentVolumeClaim", &requests, bound, &mut errors);
    }
    aggregate(errors)
}

/// Parses a quantity the way ranges are compared (for tests and callers outside this module).
pub fn quantity(s: &str) -> Option<Quantity> {
    parse_quantity(s).ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn range() -> Vec<Value> {
        vec![json!({"spec": {"limits": [{
            "type": "Container",
            "default": {"cpu": "500m", "memory": "256Mi"},
            "defaultRequest": {"cpu": "100m"},
            "min": {"cpu": "50m"},
            "max": {"cpu": "2"},
            "maxLimitRequestRatio": {"cpu": "10"},
        }]}})]
    }

    #[test]
    fn defaults_fill_only_what_containers_leave_out() {
        let mut pod = json!({"spec": {"containers": [
            {"name": "a"},
            {"name": "b", "resources": {"limits": {"cpu": "1"}}},
        ]}});
        apply_pod_defaults(&range(), &mut pod);
        assert_eq!(
            pod["spec"]["containers"][0]["resources"],
            json!({"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}})
        );
        // b named a CPU limit: its request comes from the limit, not the range.
        assert_eq!(
            pod["spec"]["containers"][1]["resources"],
            json!({"limits": {"cpu": "1", "memory": "256Mi"}, "requests": {"memory": "256Mi"}})
        );
        // The pod's own defaulting (which runs before the checks) sets b's request from its limit.
        pod["spec"]["containers"][1]["resources"]["requests"]["cpu"] = json!("1");
        assert_eq!(check_pod(&range(), &pod), None);
    }

    #[test]
    fn min_max_and_ratio_use_upstream_messages() {
        let over = json!({"spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "4"}}}]}});
        assert_eq!(
            check_pod(&range(), &over).as_deref(),
            Some("maximum cpu usage per Container is 2, but limit is 4")
        );
        let under = json!({"spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": "10m"}, "limits": {"cpu": "1"}}}]}});
        assert_eq!(
            check_pod(&range(), &under).as_deref(),
            Some(
                "[minimum cpu usage per Container is 50m, but request is 10m, cpu max limit to request ratio per Container is 10, but provided ratio is 100.000000]"
            )
        );
    }

    #[test]
    fn claims_are_bounded_by_their_request() {
        let ranges = vec![
            json!({"spec": {"limits": [{"type": "PersistentVolumeClaim", "max": {"storage": "10Gi"}}]}}),
        ];
        let claim = json!({"spec": {"resources": {"requests": {"storage": "20Gi"}}}});
        assert_eq!(
            check_claim(&ranges, &claim).as_deref(),
            Some("maximum storage usage per PersistentVolumeClaim is 10Gi, but limit is 20Gi")
        );
    }
}
