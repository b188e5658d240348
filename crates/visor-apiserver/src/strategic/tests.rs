//! Cases after upstream's strategic merge patch tests: what each directive and each merge
//! strategy does to a stored object.

use serde_json::{Value, json};

use super::*;

fn pod(spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec})
}

fn merge_pod(original: Value, patch: Value) -> Value {
    strategic_merge(&original, &patch, "v1", "Pod").unwrap()
}

fn pod_error(original: Value, patch: Value) -> StrategicError {
    strategic_merge(&original, &patch, "v1", "Pod").unwrap_err()
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect()
}

#[test]
fn containers_merge_by_name() {
    let original = pod(json!({"containers": [
        {"name": "a", "image": "a:1", "args": ["x"]},
        {"name": "b", "image": "b:1"},
    ]}));
    let patched = merge_pod(
        original,
        json!({"spec": {"containers": [{"name": "a", "image": "a:2"}, {"name": "c", "image": "c:1"}]}}),
    );
    // Without `$setElementOrder`, an element the server did not have goes before the
    // server-only elements that follow it (upstream's ordering; kubectl apply sends an order).
    assert_eq!(
        patched["spec"]["containers"],
        json!([
            {"name": "a", "image": "a:2", "args": ["x"]},
            {"name": "c", "image": "c:1"},
            {"name": "b", "image": "b:1"},
        ])
    );
}

#[test]
fn new_elements_without_an_order_go_before_server_only_ones() {
    let original = pod(json!({"containers": [{"name": "a"}, {"name": "b"}]}));
    let patched = merge_pod(
        original.clone(),
        json!({"spec": {"containers": [{"name": "n"}]}}),
    );
    assert_eq!(names(&patched["spec"]["containers"]), ["n", "a", "b"]);
    // Patched existing elements keep their stored places.
    let patched = merge_pod(
        original,
        json!({"spec": {"containers": [{"name": "b", "image": "x"}, {"name": "n"}]}}),
    );
    assert_eq!(names(&patched["spec"]["containers"]), ["a", "b", "n"]);
}

#[test]
fn env_ports_and_mounts_merge_by_their_keys() {
    let original = pod(json!({"containers": [{
        "name": "a",
        "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}],
        "ports": [{"containerPort": 80, "name": "http"}, {"containerPort": 443}],
        "volumeMounts": [{"mountPath": "/data", "name": "d"}],
    }]}));
    let patched = merge_pod(
        original,
        json!({"spec": {"containers": [{
            "name": "a",
            "env": [{"name": "Y", "value": "3"}, {"name": "Z", "value": "4"}],
            "ports": [{"containerPort": 80, "protocol": "TCP"}],
            "volumeMounts": [{"mountPath": "/data", "readOnly": true}],
        }]}}),
    );
    let c = &patched["spec"]["containers"][0];
    assert_eq!(
        c["env"],
        json!([{"name": "X", "value": "1"}, {"name": "Y", "value": "3"}, {"name": "Z", "value": "4"}])
    );
    assert_eq!(
        c["ports"],
        json!([{"containerPort": 80, "name": "http", "protocol": "TCP"}, {"containerPort": 443}])
    );
    assert_eq!(
        c["volumeMounts"],
        json!([{"mountPath": "/data", "name": "d", "readOnly": true}])
    );
}

#[test]
fn lists_without_a_strategy_are_replaced() {
    let original = pod(json!({
        "tolerations": [{"key": "a", "operator": "Exists"}],
        "containers": [{"name": "a", "args": ["1", "2"], "command": ["sh"]}],
    }));
    let patched = merge_pod(
        original,
        json!({"spec": {
            "tolerations": [{"key": "b", "operator": "Exists"}],
            "containers": [{"name": "a", "args": ["3"]}],
        }}),
    );
    assert_eq!(
        patched["spec"]["tolerations"],
        json!([{"key": "b", "operator": "Exists"}])
    );
    assert_eq!(
        patched["spec"]["containers"],
        json!([{"name": "a", "args": ["3"], "command": ["sh"]}])
    );
}

#[test]
fn null_deletes_and_maps_merge() {
    let original = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "c", "labels": {"a": "1", "b": "2"}}, "data": {"k": "v"}});
    let patched = strategic_merge(
        &original,
        &json!({"metadata": {"labels": {"a": null, "c": "3"}}, "data": null}),
        "v1",
        "ConfigMap",
    )
    .unwrap();
    assert_eq!(
        patched,
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "labels": {"b": "2", "c": "3"}}})
    );
}

#[test]
fn added_values_lose_nulls_and_directives() {
    let patched = merge_pod(
        pod(json!({})),
        json!({"spec": {"nodeSelector": {"a": "1", "b": null},
            "containers": [{"name": "a", "image": null, "$patch": "merge"}]}}),
    );
    assert_eq!(patched["spec"]["nodeSelector"], json!({"a": "1"}));
    assert_eq!(patched["spec"]["containers"], json!([{"name": "a"}]));
}

#[test]
fn delete_directive_in_a_list_removes_by_merge_key() {
    let original = pod(json!({"containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}));
    let patched = merge_pod(
        original,
        json!({"spec": {"containers": [{"name": "b", "$patch": "delete"}]}}),
    );
    assert_eq!(names(&patched["spec"]["containers"]), ["a", "c"]);
}

#[test]
fn replace_directive_in_a_list_replaces_it() {
    let original = pod(json!({"containers": [{"name": "a", "image": "x"}, {"name": "b"}]}));
    let patched = merge_pod(
        original,
        json!({"spec": {"containers": [{"name": "c", "image": "y"}, {"$patch": "replace"}]}}),
    );
    assert_eq!(
        patched["spec"]["containers"],
        json!([{"name": "c", "image": "y"}])
    );
}

#[test]
fn replace_and_delete_directives_in_maps() {
    let original =
        pod(json!({"nodeSelector": {"a": "1", "b": "2"}, "securityContext": {"runAsUser": 1}}));
    let patched = merge_pod(
        original,
        json!({"spec": {
            "nodeSelector": {"$patch": "replace", "c": "3"},
            "securityContext": {"$patch": "delete"},
        }}),
    );
    assert_eq!(patched["spec"]["nodeSelector"], json!({"c": "3"}));
    assert_eq!(patched["spec"]["securityContext"], json!({}));
}

#[test]
fn merge_directive_in_a_list_and_unknown_directives_are_refused() {
    let original = pod(json!({"containers": [{"name": "a"}]}));
    let err = pod_error(
        original.clone(),
        json!({"spec": {"containers": [{"$patch": "merge"}]}}),
    );
    assert_eq!(err.code, 400);
    assert_eq!(
        err.message,
        "merging lists cannot yet be specified in the patch"
    );
    let err = pod_error(original.clone(), json!({"spec": {"$patch": "explode"}}));
    assert_eq!(err.code, 400);
    assert_eq!(
        err.message,
        "unknown patch type: explode in map: map[$patch:explode]"
    );
    let err = pod_error(
        original,
        json!({"spec": {"containers": [{"name": "a", "$patch": "shrink"}]}}),
    );
    assert!(
        err.message.starts_with("unknown patch type: shrink"),
        "{err}"
    );
}

#[test]
fn a_list_element_without_its_merge_key_is_refused() {
    let err = pod_error(
        pod(json!({"containers": [{"name": "a"}]})),
        json!({"spec": {"containers": [{"image": "busybox"}]}}),
    );
    assert_eq!(err.code, 400);
    assert_eq!(
        err.message,
        "map: map[image:busybox] does not contain declared merge key: name"
    );
    let err = pod_error(
        pod(json!({"containers": [{"name": "a"}]})),
        json!({"spec": {"containers": [{"$patch": "delete", "image": "x"}]}}),
    );
    assert!(
        err.message
            .ends_with("does not contain declared merge key: name"),
        "{err}"
    );
}

#[test]
fn set_element_order_orders_the_merged_list() {
    let original = pod(json!({"containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}));
    let patched = merge_pod(
        original,
        json!({"spec": {
            "$setElementOrder/containers": [{"name": "c"}, {"name": "a"}, {"name": "b"}],
            "containers": [{"name": "a", "image": "new"}],
        }}),
    );
    assert_eq!(names(&patched["spec"]["containers"]), ["c", "a", "b"]);
    assert_eq!(patched["spec"]["containers"][1]["image"], "new");
    assert!(patched["spec"].get("$setElementOrder/containers").is_none());
}

#[test]
fn set_element_order_keeps_server_only_elements_near_their_neighbours() {
    let original = pod(json!({"containers": [{"name": "a"}, {"name": "s"}, {"name": "b"}]}));
    // The patch knows a and b (and adds n between them); s exists only on the server.
    let patched = merge_pod(
        original,
        json!({"spec": {
            "$setElementOrder/containers": [{"name": "a"}, {"name": "n"}, {"name": "b"}],
            "containers": [{"name": "n"}],
        }}),
    );
    assert_eq!(names(&patched["spec"]["containers"]), ["a", "n", "s", "b"]);
}

#[test]
fn set_element_order_without_a_patch_list_reorders() {
    let original = pod(json!({"containers": [{"name": "a"}, {"name": "b"}]}));
    let patched = merge_pod(
        original,
        json!({"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}]}}),
    );
    assert_eq!(names(&patched["spec"]["containers"]), ["b", "a"]);
}

#[test]
fn set_element_order_that_contradicts_the_patch_is_refused() {
    let err = pod_error(
        pod(json!({"containers": [{"name": "a"}, {"name": "b"}]})),
        json!({"spec": {
            "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
            "containers": [{"name": "b"}, {"name": "a"}],
        }}),
    );
    assert_eq!(err.code, 400);
    assert!(
        err.message
            .starts_with("The order in patch list:\n[map[name:b] map[name:a]]"),
        "{err}"
    );
}

#[test]
fn three_way_patch_removing_an_env_var_and_adding_a_container() {
    // What kubectl apply sends when env B was removed from container c and container d added.
    let original = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox",
            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}]}}}});
    let patch = json!({"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "c"}, {"name": "d"}],
        "containers": [
            {"$setElementOrder/env": [{"name": "A"}], "env": [{"$patch": "delete", "name": "B"}], "name": "c"},
            {"image": "nginx", "name": "d"},
        ],
    }}}});
    let patched = strategic_merge(&original, &patch, "apps/v1", "Deployment").unwrap();
    assert_eq!(
        patched["spec"]["template"]["spec"]["containers"],
        json!([
            {"name": "c", "image": "busybox", "env": [{"name": "A", "value": "1"}]},
            {"image": "nginx", "name": "d"},
        ])
    );
}

#[test]
fn primitive_lists_with_merge_take_the_union() {
    let original = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "c", "finalizers": ["a", "b"]}});
    let patched = strategic_merge(
        &original,
        &json!({"metadata": {"finalizers": ["b", "c"]}}),
        "v1",
        "ConfigMap",
    )
    .unwrap();
    assert_eq!(patched["metadata"]["finalizers"], json!(["a", "b", "c"]));
}

#[test]
fn delete_from_primitive_list_removes_values() {
    let original = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "c", "finalizers": ["a", "b", "c"]}});
    let patched = strategic_merge(
        &original,
        &json!({"metadata": {
            "$setElementOrder/finalizers": ["c", "b", "d"],
            "$deleteFromPrimitiveList/finalizers": ["a"],
            "finalizers": ["d"],
        }}),
        "v1",
        "ConfigMap",
    )
    .unwrap();
    assert_eq!(patched["metadata"]["finalizers"], json!(["c", "b", "d"]));
    // Deleting from a list that is not there changes nothing.
    let plain = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
    let patched = strategic_merge(
        &plain,
        &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
        "v1",
        "ConfigMap",
    )
    .unwrap();
    assert_eq!(patched, plain);
}

#[test]
fn pod_cidrs_merge_as_a_set() {
    let original = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"},
        "spec": {"podCIDRs": ["10.0.0.0/24"]}});
    let patched = strategic_merge(
        &original,
        &json!({"spec": {"podCIDRs": ["10.0.0.0/24", "fd00::/64"], "unschedulable": true}}),
        "v1",
        "Node",
    )
    .unwrap();
    assert_eq!(
        patched["spec"],
        json!({"podCIDRs": ["10.0.0.0/24", "fd00::/64"], "unschedulable": true})
    );
}

#[test]
fn retain_keys_on_deployment_strategy() {
    let original = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
        "spec": {"strategy": {"type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}}});
    let patched = strategic_merge(
        &original,
        &json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
        "apps/v1",
        "Deployment",
    )
    .unwrap();
    assert_eq!(patched["spec"]["strategy"], json!({"type": "Recreate"}));
}

#[test]
fn retain_keys_on_volumes() {
    let original = pod(json!({"volumes": [
        {"name": "v", "emptyDir": {}},
        {"name": "w", "secret": {"secretName": "s"}},
    ]}));
    let patched = merge_pod(
        original,
        json!({"spec": {"volumes": [
            {"$retainKeys": ["configMap", "name"], "name": "v", "configMap": {"name": "cm"}},
        ]}}),
    );
    assert_eq!(
        patched["spec"]["volumes"],
        json!([
            {"name": "v", "configMap": {"name": "cm"}},
            {"name": "w", "secret": {"secretName": "s"}},
        ])
    );
}

#[test]
fn retain_keys_errors() {
    let original = pod(json!({"volumes": [{"name": "v", "emptyDir": {}}]}));
    let err = pod_error(
        original.clone(),
        json!({"spec": {"volumes": [
            {"$retainKeys": ["name"], "name": "v", "configMap": {"name": "cm"}},
        ]}}),
    );
    assert_eq!(err.code, 422);
    assert_eq!(err.message, "patch content doesn't match retainKeys list");
    let err = pod_error(
        original,
        json!({"spec": {"volumes": [{"$retainKeys": "name", "name": "v"}]}}),
    );
    assert_eq!(err.code, 400);
    assert_eq!(err.message, "invalid patch format of retainKeys");
}

#[test]
fn volume_source_fields_are_found_through_the_inline_struct() {
    let original = pod(json!({"volumes": [{"name": "v",
        "configMap": {"name": "cm", "items": [{"key": "a", "path": "a"}]}}]}));
    let patched = merge_pod(
        original,
        json!({"spec": {"volumes": [{"name": "v", "configMap": {"items": [{"key": "b", "path": "b"}]}}]}}),
    );
    // ConfigMapVolumeSource.items has no merge strategy: replaced, while the map merges.
    assert_eq!(
        patched["spec"]["volumes"][0]["configMap"],
        json!({"name": "cm", "items": [{"key": "b", "path": "b"}]})
    );
}

#[test]
fn ephemeral_container_fields_merge_through_the_inline_struct() {
    let original = pod(json!({"ephemeralContainers": [{"name": "dbg",
        "env": [{"name": "A", "value": "1"}]}]}));
    let patched = merge_pod(
        original,
        json!({"spec": {"ephemeralContainers": [{"name": "dbg", "env": [{"name": "B", "value": "2"}]}]}}),
    );
    assert_eq!(
        patched["spec"]["ephemeralContainers"][0]["env"],
        json!([{"name": "B", "value": "2"}, {"name": "A", "value": "1"}])
    );
}

#[test]
fn owner_references_merge_by_uid_and_service_ports_by_port() {
    let original = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "s", "ownerReferences": [{"uid": "1", "name": "a"}]},
        "spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443}]}});
    let patched = strategic_merge(
        &original,
        &json!({"metadata": {"ownerReferences": [{"uid": "2", "name": "b"}]},
            "spec": {"ports": [{"port": 80, "targetPort": 9090}]}}),
        "v1",
        "Service",
    )
    .unwrap();
    assert_eq!(
        patched["metadata"]["ownerReferences"],
        json!([{"uid": "2", "name": "b"}, {"uid": "1", "name": "a"}])
    );
    assert_eq!(
        patched["spec"]["ports"],
        json!([{"port": 80, "targetPort": 9090}, {"port": 443}])
    );
}

#[test]
fn node_conditions_merge_by_type() {
    let original = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"},
        "status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "DiskPressure", "status": "False"}],
            "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}});
    let patched = strategic_merge(
        &original,
        &json!({"status": {"conditions": [{"type": "Ready", "status": "True"}],
            "addresses": [{"type": "Hostname", "address": "n"}]}}),
        "v1",
        "Node",
    )
    .unwrap();
    assert_eq!(
        patched["status"]["conditions"],
        json!([{"type": "Ready", "status": "True"}, {"type": "DiskPressure", "status": "False"}])
    );
    assert_eq!(
        patched["status"]["addresses"],
        json!([{"type": "Hostname", "address": "n"}, {"type": "InternalIP", "address": "10.0.0.1"}])
    );
}

#[test]
fn replace_strategy_replaces_a_map() {
    let original = json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "p"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"a": "1"}}}});
    let patched = strategic_merge(
        &original,
        &json!({"spec": {"selector": {"matchLabels": {"b": "2"}}}}),
        "policy/v1",
        "PodDisruptionBudget",
    )
    .unwrap();
    assert_eq!(
        patched["spec"],
        json!({"minAvailable": 1, "selector": {"matchLabels": {"b": "2"}}})
    );
}

#[test]
fn deployment_template_containers_merge() {
    let original = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
        "spec": {"replicas": 1, "template": {"metadata": {"labels": {"app": "x"}},
            "spec": {"containers": [{"name": "c", "image": "busybox:1"}, {"name": "d", "image": "nginx"}]}}}});
    let patched = strategic_merge(
        &original,
        &json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox:2"}]}}}}),
        "apps/v1",
        "Deployment",
    )
    .unwrap();
    assert_eq!(
        patched["spec"]["template"]["spec"]["containers"],
        json!([{"name": "c", "image": "busybox:2"}, {"name": "d", "image": "nginx"}])
    );
    assert_eq!(patched["spec"]["replicas"], 1);
}

#[test]
fn mismatched_types_replace_and_bad_lists_are_refused() {
    let original = pod(json!({"containers": [{"name": "a"}]}));
    // A scalar where a list was replaces it, as a merge patch would.
    let patched = merge_pod(original.clone(), json!({"spec": {"containers": "none"}}));
    assert_eq!(patched["spec"]["containers"], "none");
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "c", "finalizers": ["a"]}});
    let err = strategic_merge(
        &cm,
        &json!({"metadata": {"finalizers": [["b"]]}}),
        "v1",
        "ConfigMap",
    )
    .unwrap_err();
    assert_eq!(err.code, 400, "{err}");
    let err = strategic_merge(
        &cm,
        &json!({"metadata": {"finalizers": [1]}}),
        "v1",
        "ConfigMap",
    )
    .unwrap_err();
    assert_eq!(err.code, 400);
    assert!(
        err.message
            .starts_with("list element types are not identical"),
        "{err}"
    );
    let err = strategic_merge(
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "finalizers": []}}),
        &json!({"metadata": {"finalizers": [["b"]]}}),
        "v1",
        "ConfigMap",
    )
    .unwrap_err();
    assert_eq!(err.code, 422);
    assert_eq!(err.message, "lists of lists are not supported");
}

#[test]
fn patch_must_be_an_object_and_the_kind_built_in() {
    let original = pod(json!({}));
    let err = pod_error(original.clone(), json!([1]));
    assert_eq!(err.code, 400);
    assert_eq!(
        err.message,
        "json: cannot unmarshal array into Go value of type map[string]interface {}"
    );
    assert_eq!(merge_pod(original.clone(), Value::Null), original);
    let err = strategic_merge(&original, &json!({}), "example.com/v1", "Widget").unwrap_err();
    assert_eq!(err.code, 415);
    assert!(has_schema("apps/v1", "Deployment"));
    assert!(!has_schema("example.com/v1", "Widget"));
}

#[test]
fn whole_object_directives() {
    let original = pod(json!({"containers": [{"name": "a"}]}));
    let replaced = merge_pod(
        original.clone(),
        json!({"$patch": "replace", "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}),
    );
    assert_eq!(
        replaced,
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}})
    );
    assert_eq!(merge_pod(original, json!({"$patch": "delete"})), json!({}));
}

#[test]
fn topology_spread_constraints_merge_by_topology_key() {
    let original = pod(json!({"topologySpreadConstraints": [
        {"topologyKey": "zone", "maxSkew": 1, "whenUnsatisfiable": "DoNotSchedule"},
    ]}));
    let patched = merge_pod(
        original,
        json!({"spec": {"topologySpreadConstraints": [
            {"topologyKey": "zone", "maxSkew": 2},
            {"topologyKey": "host", "maxSkew": 1, "whenUnsatisfiable": "ScheduleAnyway"},
        ]}}),
    );
    assert_eq!(
        patched["spec"]["topologySpreadConstraints"],
        json!([
            {"topologyKey": "zone", "maxSkew": 2, "whenUnsatisfiable": "DoNotSchedule"},
            {"topologyKey": "host", "maxSkew": 1, "whenUnsatisfiable": "ScheduleAnyway"},
        ])
    );
}

#[test]
fn rollout_restart_annotation_lands_in_the_template() {
    let original = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
        "spec": {"template": {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c"}]}}}});
    let patched = strategic_merge(
        &original,
        &json!({"spec": {"template": {"metadata": {"annotations": {
            "kubectl.kubernetes.io/restartedAt": "2024-01-01T00:00:00Z"}}}}}),
        "apps/v1",
        "Deployment",
    )
    .unwrap();
    assert_eq!(
        patched["spec"]["template"]["metadata"],
        json!({"labels": {"app": "x"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2024-01-01T00:00:00Z"}})
    );
}
