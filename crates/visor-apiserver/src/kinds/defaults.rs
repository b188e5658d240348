//! Defaulting of the built-in kinds, as upstream's `pkg/apis/*/v1/defaults.go` does it, plus
//! the few defaults upstream applies elsewhere before validation: registry
//! `PrepareForCreate` (namespace phase and finalizer, job selectors), the
//! `DefaultTolerationSeconds`, `ServiceAccount` and `Priority` admission plugins, the service
//! IP-family fields, and the v1 → internal conversions that fold one field into another
//! (`stringData`, `serviceAccount`).
//!
//! Guarantees: every defaulter only fills in what is missing, so running it again changes
//! nothing (the tests check this for each kind). Cluster IPs and node ports are not
//! allocated here.
//!
//! Also here: the conversion between events.k8s.io/v1 and core/v1 events, which share
//! storage.

use serde_json::{Map, Value, json};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// The object at `key`, created (or replaced, if it is not an object) when needed.
fn child<'a>(v: &'a mut Value, key: &str) -> &'a mut Value {
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    let m = v.as_object_mut().expect("just made an object");
    let entry = m
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    entry
}

/// Sets `key` to `value` when it is missing or null.
fn default(v: &mut Value, key: &str, value: Value) {
    if let Some(m) = v.as_object_mut() {
        let slot = m.entry(key.to_string()).or_insert(Value::Null);
        if slot.is_null() {
            *slot = value;
        }
    }
}

/// Sets `key` to `value` when it is missing, null or the empty string (Go's zero value for
/// string enums, which upstream's defaulting treats as unset).
fn default_str(v: &mut Value, key: &str, value: &str) {
    if let Some(m) = v.as_object_mut() {
        let slot = m.entry(key.to_string()).or_insert(Value::Null);
        if slot.is_null() || slot.as_str() == Some("") {
            *slot = Value::from(value);
        }
    }
}

fn str_at<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn for_each_in(v: &mut Value, key: &str, mut f: impl FnMut(&mut Value)) {
    if let Some(list) = v.get_mut(key).and_then(Value::as_array_mut) {
        list.iter_mut().for_each(&mut f);
    }
}

// ---------------------------------------------------------------------------------------
// Namespaces, Secrets, storage
// ---------------------------------------------------------------------------------------

/// Namespace defaults: the `kubernetes.io/metadata.name` label always; on create, the
/// `kubernetes` finalizer and phase `Active`, as upstream's `PrepareForCreate` sets them.
///
/// Caveat: the finalizer may be removed over the namespace's life (the namespace controller
/// does so through `/finalize`), so it must not come back on updates. A defaulter cannot be
/// told which verb it serves; an object without `metadata.resourceVersion` is taken to be
/// one being created, as upstream refuses creates that carry one.
pub fn namespace(obj: &mut Value) {
    let meta = obj.get("metadata").cloned().unwrap_or(Value::Null);
    let name = str_at(&meta, "name").to_string();
    if !name.is_empty() {
        let labels = child(child(obj, "metadata"), "labels");
        if let Some(l) = labels.as_object_mut() {
            // Upstream keeps this label equal to the name, whatever the user wrote.
            l.insert("kubernetes.io/metadata.name".into(), Value::from(name));
        }
    }
    if !str_at(&meta, "resourceVersion").is_empty() {
        return;
    }
    let spec = child(obj, "spec");
    default(spec, "finalizers", json!([]));
    if let Some(f) = spec.get_mut("finalizers").and_then(Value::as_array_mut)
        && !f.iter().any(|x| x == "kubernetes")
    {
        f.push(Value::from("kubernetes"));
    }
    default_str(child(obj, "status"), "phase", "Active");
}

/// Secret defaults: type `Opaque`, and `stringData` folded into `data` (base64) as
/// upstream's conversion does, `stringData` winning over `data` for the same key.
pub fn secret(obj: &mut Value) {
    default_str(obj, "type", "Opaque");
    let Some(string_data) = obj.as_object_mut().and_then(|m| m.remove("stringData")) else {
        return;
    };
    use base64::Engine;
    let data = child(obj, "data");
    if let (Some(data), Some(sd)) = (data.as_object_mut(), string_data.as_object()) {
        for (k, v) in sd {
            let encoded = base64::engine::general_purpose::STANDARD
                .encode(v.as_str().unwrap_or("").as_bytes());
            data.insert(k.clone(), Value::from(encoded));
        }
    }
}

/// PersistentVolume defaults: reclaim policy `Retain`, volume mode `Filesystem`, phase
/// `Pending`, and an unset hostPath type.
pub fn persistentvolume(obj: &mut Value) {
    let spec = child(obj, "spec");
    default_str(spec, "persistentVolumeReclaimPolicy", "Retain");
    default_str(spec, "volumeMode", "Filesystem");
    if let Some(host_path) = spec.get_mut("hostPath").filter(|h| h.is_object()) {
        default(host_path, "type", Value::from(""));
    }
    default_str(child(obj, "status"), "phase", "Pending");
}

/// PersistentVolumeClaim defaults: volume mode `Filesystem`, phase `Pending`.
pub fn persistentvolumeclaim(obj: &mut Value) {
    default_str(child(obj, "spec"), "volumeMode", "Filesystem");
    default_str(child(obj, "status"), "phase", "Pending");
}

/// StorageClass defaults: reclaim policy `Delete`, binding mode `Immediate`.
pub fn storageclass(obj: &mut Value) {
    default_str(obj, "reclaimPolicy", "Delete");
    default_str(obj, "volumeBindingMode", "Immediate");
}

// ---------------------------------------------------------------------------------------
// Pods
// ---------------------------------------------------------------------------------------

/// Pod defaults: the pod spec defaults shared with templates, then what upstream's admission
/// plugins add to pods only (the `default` service account, priority 0, tolerations of
/// not-ready and unreachable nodes for 300s), and phase `Pending` with a QoS class.
pub fn pod(obj: &mut Value) {
    let spec = child(obj, "spec");
    pod_spec(spec);
    default_str(spec, "serviceAccountName", "default");
    sync_deprecated_service_account(spec);
    default(spec, "priority", Value::from(0));
    default_str(spec, "preemptionPolicy", "PreemptLowerPriority");
    default_not_ready_tolerations(spec);
    let qos = qos_class(spec);
    let status = child(obj, "status");
    default_str(status, "phase", "Pending");
    default_str(status, "qosClass", qos);
}

/// The deprecated `serviceAccount` field mirrors `serviceAccountName`, and names the account
/// when only it was given, as upstream's conversion arranges.
fn sync_deprecated_service_account(spec: &mut Value) {
    let name = str_at(spec, "serviceAccountName").to_string();
    if name.is_empty() {
        let deprecated = str_at(spec, "serviceAccount").to_string();
        if !deprecated.is_empty()
            && let Some(m) = spec.as_object_mut()
        {
            m.insert("serviceAccountName".into(), Value::from(deprecated));
        }
    } else if let Some(m) = spec.as_object_mut() {
        m.insert("serviceAccount".into(), Value::from(name));
    }
}

/// The `DefaultTolerationSeconds` admission plugin: tolerate `not-ready` and `unreachable`
/// NoExecute taints for 300 seconds unless the pod already tolerates them.
fn default_not_ready_tolerations(spec: &mut Value) {
    let existing: Vec<(String, String)> = spec
        .get("tolerations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|t| {
            (
                str_at(t, "key").to_string(),
                str_at(t, "effect").to_string(),
            )
        })
        .collect();
    let tolerates = |key: &str| {
        existing
            .iter()
            .any(|(k, e)| (k == key || k.is_empty()) && (e == "NoExecute" || e.is_empty()))
    };
    let mut added = Vec::new();
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        if !tolerates(key) {
            added.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
        }
    }
    if added.is_empty() {
        return;
    }
    default(spec, "tolerations", json!([]));
    if let Some(list) = spec.get_mut("tolerations").and_then(Value::as_array_mut) {
        list.extend(added);
    }
}

/// Upstream's QoS class: BestEffort without any requests or limits, Guaranteed when every
/// container limits CPU and memory and requests exactly that, Burstable otherwise.
fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|k| spec.get(*k).and_then(Value::as_array).into_iter().flatten())
        .collect();
    let section = |c: &Value, s: &str| {
        c.get("resources")
            .and_then(|r| r.get(s))
            .and_then(Value::as_object)
            .cloned()
    };
    let relevant = |m: &Map<String, Value>| {
        m.iter()
            .filter(|(k, _)| k.as_str() == "cpu" || k.as_str() == "memory")
            .filter_map(|(k, v)| {
                let q = super::validation::parse_quantity(v.as_str().unwrap_or(""));
                q.ok().filter(|q| q.nanos != 0).map(|q| (k.clone(), q))
            })
            .collect::<Vec<_>>()
    };
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let requests = section(c, "requests")
            .map(|m| relevant(&m))
            .unwrap_or_default();
        let limits = section(c, "limits")
            .map(|m| relevant(&m))
            .unwrap_or_default();
        any |= !requests.is_empty() || !limits.is_empty();
        let limited = |r: &str| limits.iter().any(|(k, _)| k == r);
        if !limited("cpu") || !limited("memory") {
            guaranteed = false;
        }
        // Requests default to limits, so only an explicit different request breaks it.
        for (k, q) in &requests {
            if limits
                .iter()
                .find(|(lk, _)| lk == k)
                .is_none_or(|(_, lq)| lq != q)
            {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// The defaults of a pod spec, shared by pods and every pod template (upstream's
/// `SetDefaults_PodSpec` and the defaults of what it contains).
pub fn pod_spec(spec: &mut Value) {
    default_str(spec, "dnsPolicy", "ClusterFirst");
    default_str(spec, "restartPolicy", "Always");
    default(spec, "terminationGracePeriodSeconds", Value::from(30));
    default_str(spec, "schedulerName", "default-scheduler");
    default(spec, "securityContext", json!({}));
    default(spec, "enableServiceLinks", Value::Bool(true));
    let host_network = spec.get("hostNetwork").and_then(Value::as_bool) == Some(true);
    for key in ["initContainers", "containers", "ephemeralContainers"] {
        for_each_in(spec, key, |c| container(c, host_network));
    }
    for_each_in(spec, "volumes", volume);
    // Templates name their service account through the deprecated field too.
    if !str_at(spec, "serviceAccountName").is_empty() {
        sync_deprecated_service_account(spec);
    }
}

/// Upstream's image pull policy default: `Always` for `:latest` or an untagged image
/// without a digest, `IfNotPresent` otherwise.
fn pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    // A tag follows the last colon after the last slash (a colon before it is a port).
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, tag)) if tag != "latest" => "IfNotPresent",
        _ => "Always",
    }
}

fn container(c: &mut Value, host_network: bool) {
    let image = str_at(c, "image").to_string();
    default_str(c, "imagePullPolicy", pull_policy(&image));
    default_str(c, "terminationMessagePath", "/dev/termination-log");
    default_str(c, "terminationMessagePolicy", "File");
    default(c, "resources", json!({}));
    // Requests default to limits, as upstream's `SetDefaults_Pod` does.
    if let Some(r) = c.get_mut("resources").and_then(Value::as_object_mut)
        && let Some(limits) = r.get("limits").and_then(Value::as_object).cloned()
        && !limits.is_empty()
    {
        let requests = r.entry("requests").or_insert_with(|| json!({}));
        if let Some(req) = requests.as_object_mut() {
            for (k, v) in limits {
                req.entry(k).or_insert(v);
            }
        }
    }
    for_each_in(c, "ports", |p| {
        default_str(p, "protocol", "TCP");
        // Host-network pods listen on the node, so the host port is the container port.
        if host_network && p.get("hostPort").and_then(Value::as_i64).unwrap_or(0) == 0 {
            let port = p.get("containerPort").cloned().unwrap_or(Value::Null);
            if let Some(m) = p.as_object_mut() {
                m.insert("hostPort".into(), port);
            }
        }
    });
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe).filter(|p| p.is_object()) {
            default(p, "timeoutSeconds", Value::from(1));
            default(p, "periodSeconds", Value::from(10));
            default(p, "successThreshold", Value::from(1));
            default(p, "failureThreshold", Value::from(3));
            if let Some(h) = p.get_mut("httpGet").filter(|h| h.is_object()) {
                default_str(h, "path", "/");
                default_str(h, "scheme", "HTTP");
            }
            if let Some(g) = p.get_mut("grpc").filter(|g| g.is_object()) {
                default(g, "service", Value::from(""));
            }
        }
    }
    if let Some(lifecycle) = c.get_mut("lifecycle").filter(|l| l.is_object()) {
        for hook in ["postStart", "preStop"] {
            if let Some(h) = lifecycle
                .get_mut(hook)
                .and_then(|h| h.get_mut("httpGet"))
                .filter(|h| h.is_object())
            {
                default_str(h, "path", "/");
                default_str(h, "scheme", "HTTP");
            }
        }
    }
    for_each_in(c, "env", |e| {
        if let Some(f) = e
            .get_mut("valueFrom")
            .and_then(|v| v.get_mut("fieldRef"))
            .filter(|f| f.is_object())
        {
            default_str(f, "apiVersion", "v1");
        }
    });
}

fn volume(v: &mut Value) {
    if !super::validation::VOLUME_SOURCES
        .iter()
        .any(|s| v.get(*s).is_some_and(|x| !x.is_null()))
    {
        // A volume without a source is an empty directory.
        if let Some(m) = v.as_object_mut() {
            m.insert("emptyDir".into(), json!({}));
        }
    }
    for source in ["configMap", "secret", "downwardAPI", "projected"] {
        if let Some(s) = v.get_mut(source).filter(|s| s.is_object()) {
            default(s, "defaultMode", Value::from(420));
        }
    }
    if let Some(h) = v.get_mut("hostPath").filter(|h| h.is_object()) {
        default(h, "type", Value::from(""));
    }
    if let Some(d) = v.get_mut("downwardAPI") {
        for_each_in(d, "items", |item| {
            if let Some(f) = item.get_mut("fieldRef").filter(|f| f.is_object()) {
                default_str(f, "apiVersion", "v1");
            }
        });
    }
    if let Some(p) = v.get_mut("projected") {
        for_each_in(p, "sources", |src| {
            if let Some(token) = src.get_mut("serviceAccountToken").filter(|t| t.is_object()) {
                default(token, "expirationSeconds", Value::from(3600));
            }
            if let Some(d) = src.get_mut("downwardAPI") {
                for_each_in(d, "items", |item| {
                    if let Some(f) = item.get_mut("fieldRef").filter(|f| f.is_object()) {
                        default_str(f, "apiVersion", "v1");
                    }
                });
            }
        });
    }
    if let Some(claim) = v
        .get_mut("ephemeral")
        .and_then(|e| e.get_mut("volumeClaimTemplate"))
        .filter(|c| c.is_object())
    {
        default_str(child(claim, "spec"), "volumeMode", "Filesystem");
    }
}

/// Defaults a pod template's spec (the template itself may be missing).
fn template(obj: &mut Value) {
    pod_spec(child(child(obj, "template"), "spec"));
}

// ---------------------------------------------------------------------------------------
// Services
// ---------------------------------------------------------------------------------------

/// Service defaults: type `ClusterIP`, session affinity `None`, port protocol `TCP` and
/// target port = port, traffic policies, and the single-stack IPv4 family fields the
/// allocator would set. No IPs or node ports are allocated here.
pub fn service(obj: &mut Value) {
    let spec = child(obj, "spec");
    default_str(spec, "type", "ClusterIP");
    default_str(spec, "sessionAffinity", "None");
    if str_at(spec, "sessionAffinity") == "None" {
        if let Some(m) = spec.as_object_mut() {
            m.remove("sessionAffinityConfig");
        }
    } else if str_at(spec, "sessionAffinity") == "ClientIP" {
        let client_ip = child(child(spec, "sessionAffinityConfig"), "clientIP");
        default(client_ip, "timeoutSeconds", Value::from(10800));
    }
    for_each_in(spec, "ports", |p| {
        default_str(p, "protocol", "TCP");
        let unset = match p.get("targetPort") {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s.is_empty(),
            Some(Value::Number(n)) => n.as_i64() == Some(0),
            _ => false,
        };
        if unset {
            let port = p.get("port").cloned().unwrap_or(Value::Null);
            if let Some(m) = p.as_object_mut() {
                m.insert("targetPort".into(), port);
            }
        }
    });
    let svc_type = str_at(spec, "type").to_string();
    let has_external_ips = spec
        .get("externalIPs")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    let externally_accessible = svc_type == "NodePort"
        || svc_type == "LoadBalancer"
        || (svc_type == "ClusterIP" && has_external_ips);
    if externally_accessible {
        default_str(spec, "externalTrafficPolicy", "Cluster");
    }
    if matches!(svc_type.as_str(), "ClusterIP" | "NodePort" | "LoadBalancer") {
        default_str(spec, "internalTrafficPolicy", "Cluster");
        // Headless services without a selector may be dual-stack; everything else is
        // single-stack in a single-stack cluster.
        let headless = str_at(spec, "clusterIP") == "None";
        let no_selector = spec
            .get("selector")
            .and_then(Value::as_object)
            .is_none_or(Map::is_empty);
        let policy = if headless && no_selector {
            "RequireDualStack"
        } else {
            "SingleStack"
        };
        default_str(spec, "ipFamilyPolicy", policy);
        default(spec, "ipFamilies", json!(["IPv4"]));
    }
    if svc_type == "LoadBalancer" {
        default(spec, "allocateLoadBalancerNodePorts", Value::Bool(true));
        // Load-balancer IPs default to the VIP mode.
        if let Some(ingress) = obj
            .get_mut("status")
            .and_then(|s| s.get_mut("loadBalancer"))
            .and_then(|l| l.get_mut("ingress"))
            && let Some(list) = ingress.as_array_mut()
        {
            for ing in list {
                if !str_at(ing, "ip").is_empty() {
                    default_str(ing, "ipMode", "VIP");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Workloads
// ---------------------------------------------------------------------------------------

/// Deployment defaults: 1 replica, a RollingUpdate strategy with 25% surge and
/// unavailability, 10 revisions of history, a 600s progress deadline, and pod spec defaults
/// on the template.
pub fn deployment(obj: &mut Value) {
    let spec = child(obj, "spec");
    default(spec, "replicas", Value::from(1));
    let strategy = child(spec, "strategy");
    default_str(strategy, "type", "RollingUpdate");
    if str_at(strategy, "type") == "RollingUpdate" {
        let ru = child(strategy, "rollingUpdate");
        default(ru, "maxUnavailable", Value::from("25%"));
        default(ru, "maxSurge", Value::from("25%"));
    }
    default(spec, "revisionHistoryLimit", Value::from(10));
    default(spec, "progressDeadlineSeconds", Value::from(600));
    template(spec);
}

/// ReplicaSet defaults: 1 replica and pod spec defaults on the template.
pub fn replicaset(obj: &mut Value) {
    let spec = child(obj, "spec");
    default(spec, "replicas", Value::from(1));
    template(spec);
}

/// DaemonSet defaults: a RollingUpdate strategy (1 unavailable, no surge), 10 revisions of
/// history, and pod spec defaults on the template.
pub fn daemonset(obj: &mut Value) {
    let spec = child(obj, "spec");
    let strategy = child(spec, "updateStrategy");
    default_str(strategy, "type", "RollingUpdate");
    if str_at(strategy, "type") == "RollingUpdate" {
        let ru = child(strategy, "rollingUpdate");
        default(ru, "maxUnavailable", Value::from(1));
        default(ru, "maxSurge", Value::from(0));
    }
    default(spec, "revisionHistoryLimit", Value::from(10));
    template(spec);
}

/// StatefulSet defaults: 1 replica, OrderedReady pod management, a RollingUpdate strategy
/// with partition 0, 10 revisions of history, Retain/Retain for claims, PVC defaults on the
/// claim templates and pod spec defaults on the template.
pub fn statefulset(obj: &mut Value) {
    let spec = child(obj, "spec");
    default_str(spec, "podManagementPolicy", "OrderedReady");
    let strategy = child(spec, "updateStrategy");
    if str_at(strategy, "type").is_empty() {
        default_str(strategy, "type", "RollingUpdate");
        default(strategy, "rollingUpdate", json!({}));
    }
    if str_at(strategy, "type") == "RollingUpdate"
        && let Some(ru) = strategy.get_mut("rollingUpdate").filter(|r| r.is_object())
    {
        default(ru, "partition", Value::from(0));
    }
    let retention = child(spec, "persistentVolumeClaimRetentionPolicy");
    default_str(retention, "whenDeleted", "Retain");
    default_str(retention, "whenScaled", "Retain");
    default(spec, "replicas", Value::from(1));
    default(spec, "revisionHistoryLimit", Value::from(10));
    for_each_in(spec, "volumeClaimTemplates", |claim| {
        default_str(claim, "apiVersion", "v1");
        default_str(claim, "kind", "PersistentVolumeClaim");
        persistentvolumeclaim(claim);
    });
    template(spec);
}

/// Job defaults: one completion and one pod at a time when neither is given, 6 retries,
/// NonIndexed completion, not suspended, replacement of terminating or failed pods, pod spec
/// defaults on the template, and, unless the selector is manual, the generated selector and
/// template labels upstream adds on create.
///
/// Assumption: `metadata.uid` is set before this runs on create, so the selector can name it.
/// Caveat: the template's restart policy is defaulted to `Always` like any pod spec's, so a
/// job that sets none fails validation with upstream's message.
pub fn job(obj: &mut Value) {
    let meta = obj.get("metadata").cloned().unwrap_or(Value::Null);
    let (name, uid) = (
        str_at(&meta, "name").to_string(),
        str_at(&meta, "uid").to_string(),
    );
    let spec = child(obj, "spec");
    let completions_unset = spec.get("completions").is_none_or(Value::is_null);
    if completions_unset && spec.get("parallelism").is_none_or(Value::is_null) {
        default(spec, "completions", Value::from(1));
    }
    default(spec, "parallelism", Value::from(1));
    let per_index = spec
        .get("backoffLimitPerIndex")
        .is_some_and(|v| !v.is_null());
    default(
        spec,
        "backoffLimit",
        Value::from(if per_index { i64::from(i32::MAX) } else { 6 }),
    );
    default_str(spec, "completionMode", "NonIndexed");
    default(spec, "suspend", Value::Bool(false));
    let has_failure_policy = spec.get("podFailurePolicy").is_some_and(|v| !v.is_null());
    default_str(
        spec,
        "podReplacementPolicy",
        if has_failure_policy {
            "Failed"
        } else {
            "TerminatingOrFailed"
        },
    );
    if let Some(rules) = spec
        .get_mut("podFailurePolicy")
        .and_then(|p| p.get_mut("rules"))
        .and_then(Value::as_array_mut)
    {
        for rule in rules {
            for_each_in(rule, "onPodConditions", |c| {
                default_str(c, "status", "True")
            });
        }
    }
    template(spec);

    // Upstream copies the template's labels to an unlabelled job. It does so while decoding,
    // before the selector labels exist, and again on every later read; copying user labels
    // first and generated ones only when there were none reproduces both.
    copy_template_labels_if_unlabelled(obj);
    let spec = child(obj, "spec");
    let manual = spec.get("manualSelector").and_then(Value::as_bool) == Some(true);
    if !manual && !uid.is_empty() {
        let labels = child(child(child(spec, "template"), "metadata"), "labels");
        for (key, value) in [
            ("batch.kubernetes.io/controller-uid", &uid),
            ("batch.kubernetes.io/job-name", &name),
            ("controller-uid", &uid),
            ("job-name", &name),
        ] {
            default(labels, key, Value::from(value.as_str()));
        }
        let match_labels = child(child(spec, "selector"), "matchLabels");
        default(
            match_labels,
            "batch.kubernetes.io/controller-uid",
            Value::from(uid.as_str()),
        );
    }
    copy_template_labels_if_unlabelled(obj);
}

fn copy_template_labels_if_unlabelled(obj: &mut Value) {
    let template_labels = obj
        .get("spec")
        .and_then(|s| s.get("template"))
        .and_then(|t| t.get("metadata"))
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .filter(|l| !l.is_empty())
        .cloned();
    let job_labels_empty = obj
        .get("metadata")
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .is_none_or(Map::is_empty);
    if let Some(labels) = template_labels
        && job_labels_empty
        && let Some(m) = child(obj, "metadata").as_object_mut()
    {
        m.insert("labels".into(), Value::Object(labels));
    }
}

/// CronJob defaults: concurrency `Allow`, not suspended, 3 successful and 1 failed job kept,
/// and pod spec defaults on the job template's pod template.
pub fn cronjob(obj: &mut Value) {
    let spec = child(obj, "spec");
    default_str(spec, "concurrencyPolicy", "Allow");
    default(spec, "suspend", Value::Bool(false));
    default(spec, "successfulJobsHistoryLimit", Value::from(3));
    default(spec, "failedJobsHistoryLimit", Value::from(1));
    template(child(child(spec, "jobTemplate"), "spec"));
}

// ---------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------

/// Field renames between events.k8s.io/v1 (left) and core/v1 (right). Fields with the same
/// name in both (`series`, `eventTime`, `action`, `reason`, `type`, `related`,
/// `reportingInstance`, `metadata`) pass through.
const EVENT_RENAMES: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
    ("reportingController", "reportingComponent"),
];

fn rename_fields(mut obj: Value, from_v1: bool, api_version: &str) -> Value {
    if let Some(m) = obj.as_object_mut() {
        for (v1, core) in EVENT_RENAMES {
            let (from, to) = if from_v1 { (v1, core) } else { (core, v1) };
            if let Some(value) = m.remove(*from) {
                m.insert((*to).to_string(), value);
            }
        }
        m.insert("apiVersion".into(), Value::from(api_version));
        m.insert("kind".into(), Value::from("Event"));
    }
    obj
}

/// Converts an events.k8s.io/v1 Event to the core/v1 form (how it is stored).
pub fn event_v1_to_core(obj: Value) -> Value {
    rename_fields(obj, true, "v1")
}

/// Converts a stored core/v1 Event to the events.k8s.io/v1 form.
pub fn event_core_to_v1(obj: Value) -> Value {
    rename_fields(obj, false, "events.k8s.io/v1")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies a defaulter twice and checks the second pass changes nothing.
    fn defaulted(f: fn(&mut Value), mut obj: Value) -> Value {
        f(&mut obj);
        let once = obj.clone();
        f(&mut obj);
        assert_eq!(obj, once, "defaulting is not idempotent");
        obj
    }

    #[test]
    fn namespace_finalizer_is_added_on_create_only() {
        let finalized = json!({"metadata": {"name": "a", "resourceVersion": "7"},
            "spec": {"finalizers": []}, "status": {"phase": "Terminating"}});
        let ns = defaulted(namespace, finalized);
        assert_eq!(ns["spec"]["finalizers"], json!([]));
        assert_eq!(ns["status"]["phase"], "Terminating");
    }

    #[test]
    fn namespace_defaults() {
        let ns = defaulted(namespace, json!({"metadata": {"name": "team-a"}}));
        assert_eq!(
            ns,
            json!({"metadata": {"name": "team-a", "labels": {"kubernetes.io/metadata.name": "team-a"}},
                "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
        );
    }

    #[test]
    fn pod_defaults() {
        let p = defaulted(
            pod,
            json!({"metadata": {"name": "p"}, "spec": {
                "containers": [{"name": "web", "image": "nginx",
                    "ports": [{"containerPort": 80}],
                    "readinessProbe": {"httpGet": {"port": 80}},
                    "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}],
                "initContainers": [{"name": "init", "image": "busybox:1.36"}],
                "volumes": [{"name": "scratch"}, {"name": "cfg", "configMap": {"name": "c"}}]}}),
        );
        let spec = &p["spec"];
        assert_eq!(spec["restartPolicy"], "Always");
        assert_eq!(spec["dnsPolicy"], "ClusterFirst");
        assert_eq!(spec["schedulerName"], "default-scheduler");
        assert_eq!(spec["terminationGracePeriodSeconds"], 30);
        assert_eq!(spec["securityContext"], json!({}));
        assert_eq!(spec["enableServiceLinks"], true);
        assert_eq!(spec["priority"], 0);
        assert_eq!(spec["preemptionPolicy"], "PreemptLowerPriority");
        assert_eq!(spec["serviceAccountName"], "default");
        assert_eq!(spec["serviceAccount"], "default");
        let web = &spec["containers"][0];
        assert_eq!(web["imagePullPolicy"], "Always");
        assert_eq!(web["terminationMessagePath"], "/dev/termination-log");
        assert_eq!(web["terminationMessagePolicy"], "File");
        assert_eq!(web["ports"][0]["protocol"], "TCP");
        assert_eq!(
            web["resources"]["requests"],
            json!({"cpu": "1", "memory": "1Gi"})
        );
        assert_eq!(
            web["readinessProbe"],
            json!({"httpGet": {"port": 80, "path": "/", "scheme": "HTTP"},
                "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3})
        );
        assert_eq!(spec["initContainers"][0]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(spec["initContainers"][0]["resources"], json!({}));
        assert_eq!(spec["volumes"][0]["emptyDir"], json!({}));
        assert_eq!(spec["volumes"][1]["configMap"]["defaultMode"], 420);
        assert_eq!(
            spec["tolerations"],
            json!([
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
            ])
        );
        assert_eq!(
            p["status"],
            json!({"phase": "Pending", "qosClass": "Burstable"})
        );
    }

    #[test]
    fn image_pull_policies() {
        assert_eq!(pull_policy("nginx"), "Always");
        assert_eq!(pull_policy("nginx:latest"), "Always");
        assert_eq!(pull_policy("nginx:1.27"), "IfNotPresent");
        assert_eq!(pull_policy("registry:5000/nginx"), "Always");
        assert_eq!(pull_policy("registry:5000/nginx:1"), "IfNotPresent");
        assert_eq!(pull_policy("nginx@sha256:abcd"), "IfNotPresent");
    }

    #[test]
    fn existing_tolerations_are_respected() {
        let p = defaulted(
            pod,
            json!({"spec": {"containers": [{"name": "a", "image": "x:1"}],
                "tolerations": [{"operator": "Exists"}]}}),
        );
        assert_eq!(p["spec"]["tolerations"], json!([{"operator": "Exists"}]));
        assert_eq!(p["status"]["qosClass"], "BestEffort");
    }

    #[test]
    fn service_defaults() {
        let svc = defaulted(
            service,
            json!({"spec": {"type": "LoadBalancer", "selector": {"app": "a"},
                "ports": [{"port": 80}, {"port": 443, "targetPort": "https", "protocol": "TCP"}]}}),
        );
        assert_eq!(
            svc["spec"],
            json!({"type": "LoadBalancer", "selector": {"app": "a"},
                "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80},
                          {"port": 443, "targetPort": "https", "protocol": "TCP"}],
                "sessionAffinity": "None", "externalTrafficPolicy": "Cluster", "internalTrafficPolicy": "Cluster",
                "ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv4"], "allocateLoadBalancerNodePorts": true})
        );
        let ext = defaulted(
            service,
            json!({"spec": {"type": "ExternalName", "externalName": "db.example"}}),
        );
        assert!(ext["spec"].get("ipFamilyPolicy").is_none());
        assert!(ext["spec"].get("clusterIP").is_none());
    }

    #[test]
    fn secret_and_storage_defaults() {
        let s = defaulted(
            secret,
            json!({"data": {"a": "eA=="}, "stringData": {"b": "hi", "a": "y"}}),
        );
        assert_eq!(
            s,
            json!({"type": "Opaque", "data": {"a": "eQ==", "b": "aGk="}})
        );
        let pv = defaulted(
            persistentvolume,
            json!({"spec": {"hostPath": {"path": "/d"}}}),
        );
        assert_eq!(
            pv,
            json!({"spec": {"hostPath": {"path": "/d", "type": ""}, "persistentVolumeReclaimPolicy": "Retain",
                "volumeMode": "Filesystem"}, "status": {"phase": "Pending"}})
        );
        let pvc = defaulted(persistentvolumeclaim, json!({}));
        assert_eq!(
            pvc,
            json!({"spec": {"volumeMode": "Filesystem"}, "status": {"phase": "Pending"}})
        );
        let sc = defaulted(storageclass, json!({"provisioner": "x"}));
        assert_eq!(
            sc,
            json!({"provisioner": "x", "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate"})
        );
    }

    #[test]
    fn workload_defaults() {
        let d = defaulted(
            deployment,
            json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x"}]}}}}),
        );
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(
            d["spec"]["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        );
        assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(d["spec"]["progressDeadlineSeconds"], 600);
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
        assert!(
            d["spec"]["template"]["spec"].get("tolerations").is_none(),
            "admission defaults are for pods only"
        );

        let recreate = defaulted(
            deployment,
            json!({"spec": {"strategy": {"type": "Recreate"}}}),
        );
        assert_eq!(recreate["spec"]["strategy"], json!({"type": "Recreate"}));

        let rs = defaulted(replicaset, json!({}));
        assert_eq!(rs["spec"]["replicas"], 1);

        let ds = defaulted(daemonset, json!({}));
        assert_eq!(
            ds["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
        );
        assert_eq!(ds["spec"]["revisionHistoryLimit"], 10);

        let sts = defaulted(
            statefulset,
            json!({"spec": {"volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {}}]}}),
        );
        assert_eq!(sts["spec"]["podManagementPolicy"], "OrderedReady");
        assert_eq!(
            sts["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
        );
        assert_eq!(
            sts["spec"]["persistentVolumeClaimRetentionPolicy"],
            json!({"whenDeleted": "Retain", "whenScaled": "Retain"})
        );
        assert_eq!(sts["spec"]["replicas"], 1);
        let claim = &sts["spec"]["volumeClaimTemplates"][0];
        assert_eq!(claim["kind"], "PersistentVolumeClaim");
        assert_eq!(claim["spec"]["volumeMode"], "Filesystem");
        assert_eq!(claim["status"]["phase"], "Pending");
    }

    #[test]
    fn job_defaults_generate_the_selector() {
        let j = defaulted(
            job,
            json!({"metadata": {"name": "pi", "uid": "u-1"},
                "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "pi", "image": "perl"}]}}}}),
        );
        let spec = &j["spec"];
        assert_eq!(spec["completions"], 1);
        assert_eq!(spec["parallelism"], 1);
        assert_eq!(spec["backoffLimit"], 6);
        assert_eq!(spec["completionMode"], "NonIndexed");
        assert_eq!(spec["suspend"], false);
        assert_eq!(spec["podReplacementPolicy"], "TerminatingOrFailed");
        assert_eq!(spec["template"]["spec"]["restartPolicy"], "Never");
        assert_eq!(
            spec["selector"],
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": "u-1"}})
        );
        let labels = json!({"batch.kubernetes.io/controller-uid": "u-1", "batch.kubernetes.io/job-name": "pi",
            "controller-uid": "u-1", "job-name": "pi"});
        assert_eq!(spec["template"]["metadata"]["labels"], labels);
        assert_eq!(j["metadata"]["labels"], labels);

        let parallel = defaulted(job, json!({"spec": {"parallelism": 3}}));
        assert!(parallel["spec"].get("completions").is_none());

        let own = defaulted(
            job,
            json!({"metadata": {"name": "pi", "uid": "u-1"}, "spec": {"template": {"metadata": {"labels": {"app": "pi"}}}}}),
        );
        assert_eq!(own["metadata"]["labels"], json!({"app": "pi"}));
    }

    #[test]
    fn cronjob_defaults() {
        let cj = defaulted(
            cronjob,
            json!({"spec": {"schedule": "@hourly",
            "jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x"}]}}}}}}),
        );
        assert_eq!(cj["spec"]["concurrencyPolicy"], "Allow");
        assert_eq!(cj["spec"]["suspend"], false);
        assert_eq!(cj["spec"]["successfulJobsHistoryLimit"], 3);
        assert_eq!(cj["spec"]["failedJobsHistoryLimit"], 1);
        assert_eq!(
            cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["dnsPolicy"],
            "ClusterFirst"
        );
        assert!(
            cj["spec"]["jobTemplate"]["spec"]
                .get("backoffLimit")
                .is_none()
        );
    }

    #[test]
    fn events_convert_both_ways() {
        let v1 = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e", "namespace": "default"},
            "regarding": {"kind": "Pod", "name": "p"}, "note": "hello", "reason": "Started", "type": "Normal",
            "reportingController": "kubelet", "reportingInstance": "n1", "action": "Start",
            "eventTime": "2024-01-01T00:00:00.000000Z", "deprecatedCount": 2,
            "deprecatedSource": {"component": "kubelet"},
            "deprecatedFirstTimestamp": "2024-01-01T00:00:00Z", "deprecatedLastTimestamp": "2024-01-01T00:01:00Z"});
        let core = event_v1_to_core(v1.clone());
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["involvedObject"]["name"], "p");
        assert_eq!(core["message"], "hello");
        assert_eq!(core["source"]["component"], "kubelet");
        assert_eq!(core["reportingComponent"], "kubelet");
        assert_eq!(core["reportingInstance"], "n1");
        assert_eq!(core["count"], 2);
        assert_eq!(core["firstTimestamp"], "2024-01-01T00:00:00Z");
        assert_eq!(core["lastTimestamp"], "2024-01-01T00:01:00Z");
        assert!(core.get("regarding").is_none());
        let back = event_core_to_v1(core);
        let mut sorted_back: Vec<_> = back
            .as_object()
            .map(|m| m.iter().collect())
            .unwrap_or_default();
        let mut sorted_v1: Vec<_> = v1
            .as_object()
            .map(|m| m.iter().collect())
            .unwrap_or_default();
        sorted_back.sort_by_key(|(k, _)| k.as_str());
        sorted_v1.sort_by_key(|(k, _)| k.as_str());
        assert_eq!(sorted_back, sorted_v1);
    }
}
