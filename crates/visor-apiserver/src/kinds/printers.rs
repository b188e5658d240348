//! Table columns for `kubectl get`, as upstream's printers define them.
//!
//! kube-apiserver answers `kubectl get` with a `meta.k8s.io/v1` Table whose columns and cells
//! come from `pkg/printers/internalversion/printers.go`; this module describes the same
//! columns as data ([`Column`]) with one plain cell function per computed cell. Cell values
//! keep upstream's JSON types: integers where upstream puts an `int64` in the cell, strings
//! elsewhere, whatever the column's declared type says.
//!
//! Upstream always prints tables with `Wide: true` on the server side (kubectl hides the
//! priority-1 columns itself), so no cell here depends on whether `-o wide` was asked for.
//!
//! Kinds without an upstream printer (roles, limit ranges, CRDs) use upstream's default
//! table: `Name` and `Created At`.
//!
//! Also here: upstream's duration formatting ([`human_duration`], [`age`]), the JSONPath
//! subset used by printer columns ([`eval_path`]) and field-selector values
//! ([`field_value`]).

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Map, Value};

use super::{CellSource, Column};

// ---------------------------------------------------------------------------------------
// Durations and ages
// ---------------------------------------------------------------------------------------

/// Upstream's `duration.HumanDuration`: about two significant figures (`45s`, `3m20s`,
/// `15m`, `5h30m`, `2d3h`, `400d`, `3y20d`).
pub fn human_duration(d: Duration) -> String {
    human_duration_nanos(d.as_nanos().min(i128::MAX as u128) as i128)
}

/// [`human_duration`] for a signed number of nanoseconds, so clock skew (a timestamp a
/// moment in the future) prints as upstream prints it.
fn human_duration_nanos(nanos: i128) -> String {
    const SEC: i128 = 1_000_000_000;
    // Go's `int(d.Seconds())` truncates toward zero.
    let seconds = nanos / SEC;
    if seconds < -1 {
        return "<invalid>".to_string();
    }
    if seconds < 0 {
        return "0s".to_string();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

fn parse_time(ts: &str) -> Option<jiff::Timestamp> {
    ts.parse().ok()
}

fn now_nanos() -> i128 {
    jiff::Timestamp::now().as_nanosecond()
}

/// Time since an RFC 3339 timestamp as the AGE column prints it; `<unknown>` when the
/// timestamp is missing or unreadable (upstream's `translateTimestampSince`).
pub fn age(created: &str) -> String {
    match parse_time(created) {
        Some(t) => human_duration_nanos(now_nanos() - t.as_nanosecond()),
        None => "<unknown>".to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// JSON helpers
// ---------------------------------------------------------------------------------------

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, key| cur.get(*key))
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    at(v, path).and_then(Value::as_str).unwrap_or("")
}

fn i(v: &Value, path: &[&str]) -> i64 {
    at(v, path).and_then(Value::as_i64).unwrap_or(0)
}

fn list<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    at(v, path)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn map<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Map<String, Value>> {
    at(v, path).and_then(Value::as_object)
}

fn text(s: impl Into<String>) -> Value {
    Value::String(s.into())
}

fn or_none(s: &str) -> Value {
    text(if s.is_empty() { "<none>" } else { s })
}

fn has_condition(conditions: &[Value], type_: &str) -> bool {
    // Upstream looks at the first condition of the type only.
    conditions
        .iter()
        .find(|c| s(c, &["type"]) == type_)
        .is_some_and(|c| s(c, &["status"]) == "True")
}

/// Upstream's `labels.FormatLabels`: sorted `k=v` pairs, `<none>` when empty.
fn format_labels(m: Option<&Map<String, Value>>) -> String {
    let mut pairs: Vec<String> = m
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    pairs.sort();
    if pairs.is_empty() {
        "<none>".to_string()
    } else {
        pairs.join(",")
    }
}

/// A label selector in upstream's `labels.Selector.String()` form: requirements sorted by
/// key, `k=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`. Empty for an empty or missing selector.
pub fn format_selector(sel: Option<&Value>) -> String {
    let Some(sel) = sel.filter(|v| v.is_object()) else {
        return String::new();
    };
    let mut reqs: Vec<(String, String)> = Vec::new();
    for (k, v) in map(sel, &["matchLabels"]).into_iter().flatten() {
        reqs.push((k.clone(), format!("{k}={}", v.as_str().unwrap_or(""))));
    }
    for e in list(sel, &["matchExpressions"]) {
        let key = s(e, &["key"]);
        let mut values: Vec<&str> = list(e, &["values"])
            .iter()
            .filter_map(Value::as_str)
            .collect();
        values.sort();
        values.dedup();
        let req = match s(e, &["operator"]) {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            _ => continue,
        };
        reqs.push((key.to_string(), req));
    }
    reqs.sort_by(|a, b| a.0.cmp(&b.0));
    reqs.into_iter()
        .map(|(_, r)| r)
        .collect::<Vec<_>>()
        .join(",")
}

/// Upstream's `metav1.FormatLabelSelector`: like [`format_selector`], `<none>` when empty.
fn format_label_selector(sel: Option<&Value>) -> String {
    let out = format_selector(sel);
    if out.is_empty() {
        "<none>".to_string()
    } else {
        out
    }
}

/// Container names and images joined with commas (upstream's `layoutContainerCells`).
fn containers_cells(pod_spec: Option<&Value>) -> (String, String) {
    let containers = pod_spec
        .and_then(|p| p.get("containers"))
        .and_then(Value::as_array);
    let (mut names, mut images) = (Vec::new(), Vec::new());
    for c in containers.into_iter().flatten() {
        names.push(s(c, &["name"]));
        images.push(s(c, &["image"]));
    }
    (names.join(","), images.join(","))
}

fn template_spec(obj: &Value) -> Option<&Value> {
    at(obj, &["spec", "template", "spec"])
}

/// A quantity as upstream prints it (canonical form), or as written if it does not parse.
fn quantity_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(q)) => {
            super::validation::canonical_quantity(q).unwrap_or_else(|| q.clone())
        }
        Some(Value::Number(n)) => n.to_string(),
        _ => "0".to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// Column constructors
// ---------------------------------------------------------------------------------------

fn col(
    name: &str,
    type_: &'static str,
    priority: i32,
    description: &str,
    f: fn(&Value) -> Value,
) -> Column {
    Column {
        description: description.to_string(),
        ..Column::printer(name, type_, priority, f)
    }
}

fn wide(name: &str, description: &str, f: fn(&Value) -> Value) -> Column {
    col(name, "string", 1, description, f)
}

fn created_at_cell(obj: &Value) -> Value {
    let ts = s(obj, &["metadata", "creationTimestamp"]);
    match parse_time(ts) {
        Some(t) => text(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
        None => Value::Null,
    }
}

/// Upstream's default `Created At` column (type `date`), used for kinds without a printer.
pub fn created_at() -> Column {
    Column {
        name: "Created At".into(),
        type_: "date",
        format: "",
        description: "CreationTimestamp is a timestamp representing the server time when this object was created."
            .into(),
        priority: 0,
        source: CellSource::Printer(created_at_cell),
    }
}

/// Upstream's default table (`Name`, `Created At`) for kinds without a printer.
pub fn default_columns() -> Vec<Column> {
    vec![Column::name(), created_at()]
}

const CONTAINERS_DESC: &str = "Names of each container in the template.";
const IMAGES_DESC: &str = "Images referenced by each container in the template.";

fn template_containers(obj: &Value) -> Value {
    text(containers_cells(template_spec(obj)).0)
}

fn template_images(obj: &Value) -> Value {
    text(containers_cells(template_spec(obj)).1)
}

fn selector_cell(obj: &Value) -> Value {
    text(format_label_selector(at(obj, &["spec", "selector"])))
}

fn workload_wide_columns(with_selector: bool) -> Vec<Column> {
    let mut cols = vec![
        wide("Containers", CONTAINERS_DESC, template_containers),
        wide("Images", IMAGES_DESC, template_images),
    ];
    if with_selector {
        cols.push(wide("Selector", "", selector_cell));
    }
    cols
}

// ---------------------------------------------------------------------------------------
// Namespaces, ConfigMaps, Secrets, ServiceAccounts, Endpoints, Leases
// ---------------------------------------------------------------------------------------

pub fn namespace() -> Vec<Column> {
    vec![
        Column::name(),
        col("Status", "string", 0, "The status of the namespace", |o| {
            text(s(o, &["status", "phase"]))
        }),
        Column::age(),
    ]
}

pub fn configmap() -> Vec<Column> {
    fn data(o: &Value) -> Value {
        let n = map(o, &["data"]).map_or(0, Map::len) + map(o, &["binaryData"]).map_or(0, Map::len);
        Value::from(n)
    }
    vec![
        Column::name(),
        col("Data", "string", 0, "", data),
        Column::age(),
    ]
}

pub fn secret() -> Vec<Column> {
    vec![
        Column::name(),
        col("Type", "string", 0, "", |o| text(s(o, &["type"]))),
        col("Data", "string", 0, "", |o| {
            Value::from(map(o, &["data"]).map_or(0, Map::len))
        }),
        Column::age(),
    ]
}

pub fn serviceaccount() -> Vec<Column> {
    vec![
        Column::name(),
        col("Secrets", "string", 0, "", |o| {
            Value::from(list(o, &["secrets"]).len())
        }),
        Column::age(),
    ]
}

/// Upstream's `formatEndpoints`: up to three `ip:port` entries and a count of the rest.
fn endpoints_cell(o: &Value) -> Value {
    let subsets = list(o, &["subsets"]);
    if subsets.is_empty() {
        return text("<none>");
    }
    const MAX: usize = 3;
    let (mut shown, mut count) = (Vec::new(), 0);
    for ss in subsets {
        let addresses = list(ss, &["addresses"]);
        let ports = list(ss, &["ports"]);
        if ports.is_empty() {
            // Headless services may have no ports.
            count += addresses.len();
            for a in addresses {
                if shown.len() < MAX {
                    shown.push(s(a, &["ip"]).to_string());
                }
            }
            continue;
        }
        for p in ports {
            count += addresses.len();
            for a in addresses {
                if shown.len() < MAX {
                    let ip = s(a, &["ip"]);
                    let port = i(p, &["port"]);
                    // net.JoinHostPort brackets IPv6 addresses.
                    shown.push(if ip.contains(':') {
                        format!("[{ip}]:{port}")
                    } else {
                        format!("{ip}:{port}")
                    });
                }
            }
        }
    }
    let joined = shown.join(",");
    if count > MAX {
        text(format!("{joined} + {} more...", count - MAX))
    } else {
        text(joined)
    }
}

pub fn endpoints() -> Vec<Column> {
    vec![
        Column::name(),
        col("Endpoints", "string", 0, "", endpoints_cell),
        Column::age(),
    ]
}

pub fn lease() -> Vec<Column> {
    vec![
        Column::name(),
        col("Holder", "string", 0, "", |o| {
            text(s(o, &["spec", "holderIdentity"]))
        }),
        Column::age(),
    ]
}

pub fn podtemplate() -> Vec<Column> {
    fn containers(o: &Value) -> Value {
        text(containers_cells(at(o, &["template", "spec"])).0)
    }
    fn images(o: &Value) -> Value {
        text(containers_cells(at(o, &["template", "spec"])).1)
    }
    fn labels(o: &Value) -> Value {
        text(format_labels(map(o, &["template", "metadata", "labels"])))
    }
    // Upstream's pod template table has no Age column.
    vec![
        Column::name(),
        col("Containers", "string", 0, CONTAINERS_DESC, containers),
        col("Images", "string", 0, IMAGES_DESC, images),
        col(
            "Pod Labels",
            "string",
            0,
            "The labels for the pod template.",
            labels,
        ),
    ]
}

pub fn limitrange() -> Vec<Column> {
    default_columns()
}

pub fn clusterrole() -> Vec<Column> {
    default_columns()
}

pub fn role() -> Vec<Column> {
    default_columns()
}

pub fn customresourcedefinition() -> Vec<Column> {
    default_columns()
}

// ---------------------------------------------------------------------------------------
// Pods
// ---------------------------------------------------------------------------------------

/// What the READY, STATUS and RESTARTS cells are computed from, together, as upstream's
/// `printPod` computes them in one pass.
struct PodSummary {
    ready: usize,
    total: usize,
    reason: String,
    restarts: i64,
    /// When the most recent restart's previous container finished (nanoseconds).
    last_restart: Option<i128>,
}

fn is_restartable_init(c: Option<&Value>) -> bool {
    c.is_some_and(|c| s(c, &["restartPolicy"]) == "Always")
}

fn finished_at(status: &Value) -> Option<i128> {
    parse_time(s(status, &["lastState", "terminated", "finishedAt"])).map(|t| t.as_nanosecond())
}

fn later(a: Option<i128>, b: Option<i128>) -> Option<i128> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn terminated_reason(t: &Value, prefix: &str) -> String {
    let reason = s(t, &["reason"]);
    if !reason.is_empty() {
        return format!("{prefix}{reason}");
    }
    let signal = i(t, &["signal"]);
    if signal != 0 {
        format!("{prefix}Signal:{signal}")
    } else {
        format!("{prefix}ExitCode:{}", i(t, &["exitCode"]))
    }
}

fn pod_summary(pod: &Value) -> PodSummary {
    let spec_init = list(pod, &["spec", "initContainers"]);
    let mut total = list(pod, &["spec", "containers"]).len();
    let mut ready = 0;
    let mut restarts = 0;
    let mut last_restart = None;
    let mut sidecar_restarts = 0;
    let mut sidecar_last_restart = None;

    let phase = s(pod, &["status", "phase"]);
    let mut reason = match s(pod, &["status", "reason"]) {
        "" => phase.to_string(),
        r => r.to_string(),
    };
    let conditions = list(pod, &["status", "conditions"]);
    if conditions
        .iter()
        .any(|c| s(c, &["type"]) == "PodScheduled" && s(c, &["reason"]) == "SchedulingGated")
    {
        reason = "SchedulingGated".to_string();
    }
    // Sidecars (init containers that keep running) count towards READY.
    total += spec_init
        .iter()
        .filter(|c| is_restartable_init(Some(c)))
        .count();

    let mut initializing = false;
    let init_statuses = list(pod, &["status", "initContainerStatuses"]);
    for (idx, st) in init_statuses.iter().enumerate() {
        let count = i(st, &["restartCount"]);
        restarts += count;
        last_restart = later(last_restart, finished_at(st));
        let spec = spec_init
            .iter()
            .find(|c| s(c, &["name"]) == s(st, &["name"]));
        let sidecar = is_restartable_init(spec);
        if sidecar {
            sidecar_restarts += count;
            sidecar_last_restart = later(sidecar_last_restart, finished_at(st));
        }
        let terminated = at(st, &["state", "terminated"]).filter(|v| v.is_object());
        let waiting = at(st, &["state", "waiting"]).filter(|v| v.is_object());
        if terminated.is_some_and(|t| i(t, &["exitCode"]) == 0) {
            continue;
        }
        if sidecar && st.get("started").and_then(Value::as_bool) == Some(true) {
            if st.get("ready").and_then(Value::as_bool) == Some(true) {
                ready += 1;
            }
            continue;
        }
        if let Some(t) = terminated {
            reason = terminated_reason(t, "Init:");
        } else if let Some(w) = waiting
            .filter(|w| !s(w, &["reason"]).is_empty() && s(w, &["reason"]) != "PodInitializing")
        {
            reason = format!("Init:{}", s(w, &["reason"]));
        } else {
            reason = format!("Init:{idx}/{}", spec_init.len());
        }
        initializing = true;
        break;
    }

    let initialized = has_condition(conditions, "Initialized");
    if !initializing || initialized {
        restarts = sidecar_restarts;
        last_restart = sidecar_last_restart;
        let mut has_running = false;
        for st in list(pod, &["status", "containerStatuses"]).iter().rev() {
            restarts += i(st, &["restartCount"]);
            last_restart = later(last_restart, finished_at(st));
            let waiting = at(st, &["state", "waiting"]).filter(|v| v.is_object());
            let terminated = at(st, &["state", "terminated"]).filter(|v| v.is_object());
            if let Some(w) = waiting.filter(|w| !s(w, &["reason"]).is_empty()) {
                reason = s(w, &["reason"]).to_string();
            } else if let Some(t) = terminated {
                reason = terminated_reason(t, "");
            } else if st.get("ready").and_then(Value::as_bool) == Some(true)
                && at(st, &["state", "running"]).is_some_and(Value::is_object)
            {
                has_running = true;
                ready += 1;
            }
        }
        // A pod with a container still running is not "Completed".
        if reason == "Completed" && has_running {
            reason = if has_condition(conditions, "Ready") {
                "Running".into()
            } else {
                "NotReady".into()
            };
        }
    }

    let deleting = at(pod, &["metadata", "deletionTimestamp"]).is_some_and(|v| !v.is_null());
    if deleting && s(pod, &["status", "reason"]) == "NodeLost" {
        reason = "Unknown".to_string();
    } else if deleting && phase != "Succeeded" && phase != "Failed" {
        reason = "Terminating".to_string();
    }
    PodSummary {
        ready,
        total,
        reason,
        restarts,
        last_restart,
    }
}

fn pod_ready(pod: &Value) -> Value {
    let sum = pod_summary(pod);
    text(format!("{}/{}", sum.ready, sum.total))
}

fn pod_status(pod: &Value) -> Value {
    text(pod_summary(pod).reason)
}

fn pod_restarts(pod: &Value) -> Value {
    let sum = pod_summary(pod);
    match sum.last_restart {
        Some(t) if sum.restarts != 0 => text(format!(
            "{} ({} ago)",
            sum.restarts,
            human_duration_nanos(now_nanos() - t)
        )),
        _ => text(sum.restarts.to_string()),
    }
}

fn pod_ip(pod: &Value) -> Value {
    let ip = list(pod, &["status", "podIPs"])
        .first()
        .map(|p| s(p, &["ip"]))
        .unwrap_or("");
    let ip = if ip.is_empty() {
        s(pod, &["status", "podIP"])
    } else {
        ip
    };
    or_none(ip)
}

fn pod_readiness_gates(pod: &Value) -> Value {
    let gates = list(pod, &["spec", "readinessGates"]);
    if gates.is_empty() {
        return text("<none>");
    }
    let conditions = list(pod, &["status", "conditions"]);
    let true_count = gates
        .iter()
        .filter(|g| {
            let wanted = s(g, &["conditionType"]);
            conditions
                .iter()
                .find(|c| s(c, &["type"]) == wanted)
                .is_some_and(|c| s(c, &["status"]) == "True")
        })
        .count();
    text(format!("{true_count}/{}", gates.len()))
}

pub fn pod() -> Vec<Column> {
    vec![
        Column::name(),
        col(
            "Ready",
            "string",
            0,
            "The aggregate readiness state of this pod for accepting traffic.",
            pod_ready,
        ),
        col(
            "Status",
            "string",
            0,
            "The aggregate status of the containers in this pod.",
            pod_status,
        ),
        col(
            "Restarts",
            "string",
            0,
            "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            pod_restarts,
        ),
        Column::age(),
        wide("IP", "", pod_ip),
        wide("Node", "", |o| or_none(s(o, &["spec", "nodeName"]))),
        wide("Nominated Node", "", |o| {
            or_none(s(o, &["status", "nominatedNodeName"]))
        }),
        wide("Readiness Gates", "", pod_readiness_gates),
    ]
}

// ---------------------------------------------------------------------------------------
// Nodes
// ---------------------------------------------------------------------------------------

fn node_status(node: &Value) -> Value {
    let conditions = list(node, &["status", "conditions"]);
    // Upstream keeps the last condition of each type.
    let ready = conditions.iter().rev().find(|c| s(c, &["type"]) == "Ready");
    let mut status = vec![match ready {
        Some(c) if s(c, &["status"]) == "True" => "Ready",
        Some(_) => "NotReady",
        None => "Unknown",
    }];
    if at(node, &["spec", "unschedulable"]).and_then(Value::as_bool) == Some(true) {
        status.push("SchedulingDisabled");
    }
    text(status.join(","))
}

fn node_roles(node: &Value) -> Value {
    let mut roles = BTreeSet::new();
    for (k, v) in map(node, &["metadata", "labels"]).into_iter().flatten() {
        if let Some(role) = k
            .strip_prefix("node-role.kubernetes.io/")
            .filter(|r| !r.is_empty())
        {
            roles.insert(role.to_string());
        } else if k == "kubernetes.io/role" && v.as_str().is_some_and(|v| !v.is_empty()) {
            roles.insert(v.as_str().unwrap_or_default().to_string());
        }
    }
    or_none(&roles.into_iter().collect::<Vec<_>>().join(","))
}

fn node_address(node: &Value, type_: &str) -> Value {
    let addr = list(node, &["status", "addresses"])
        .iter()
        .find(|a| s(a, &["type"]) == type_);
    or_none(addr.map(|a| s(a, &["address"])).unwrap_or(""))
}

fn or_unknown(v: &str) -> Value {
    text(if v.is_empty() { "<unknown>" } else { v })
}

pub fn node() -> Vec<Column> {
    vec![
        Column::name(),
        col("Status", "string", 0, "The status of the node", node_status),
        col("Roles", "string", 0, "The roles of the node", node_roles),
        Column::age(),
        col("Version", "string", 0, "", |o| {
            text(s(o, &["status", "nodeInfo", "kubeletVersion"]))
        }),
        wide("Internal-IP", "", |o| node_address(o, "InternalIP")),
        wide("External-IP", "", |o| node_address(o, "ExternalIP")),
        wide("OS-Image", "", |o| {
            or_unknown(s(o, &["status", "nodeInfo", "osImage"]))
        }),
        wide("Kernel-Version", "", |o| {
            or_unknown(s(o, &["status", "nodeInfo", "kernelVersion"]))
        }),
        wide("Container-Runtime", "", |o| {
            or_unknown(s(o, &["status", "nodeInfo", "containerRuntimeVersion"]))
        }),
    ]
}

// ---------------------------------------------------------------------------------------
// Services
// ---------------------------------------------------------------------------------------

fn service_type(o: &Value) -> Value {
    text(s(o, &["spec", "type"]))
}

fn service_cluster_ip(o: &Value) -> Value {
    let ip = list(o, &["spec", "clusterIPs"])
        .first()
        .and_then(Value::as_str)
        .unwrap_or("");
    // Objects written before dual-stack may carry only clusterIP.
    or_none(if ip.is_empty() {
        s(o, &["spec", "clusterIP"])
    } else {
        ip
    })
}

fn service_external_ip(o: &Value) -> Value {
    let external: Vec<&str> = list(o, &["spec", "externalIPs"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    match s(o, &["spec", "type"]) {
        "ClusterIP" | "NodePort" => or_none(&external.join(",")),
        "LoadBalancer" => {
            let mut lb = BTreeSet::new();
            for ing in list(o, &["status", "loadBalancer", "ingress"]) {
                let (ip, host) = (s(ing, &["ip"]), s(ing, &["hostname"]));
                if !ip.is_empty() {
                    lb.insert(ip);
                } else if !host.is_empty() {
                    lb.insert(host);
                }
            }
            let mut all: Vec<&str> = lb.into_iter().collect();
            all.extend(external);
            if all.is_empty() {
                text("<pending>")
            } else {
                text(all.join(","))
            }
        }
        "ExternalName" => text(s(o, &["spec", "externalName"])),
        _ => text("<unknown>"),
    }
}

fn service_ports(o: &Value) -> Value {
    let pieces: Vec<String> = list(o, &["spec", "ports"])
        .iter()
        .map(|p| {
            let (port, proto, node_port) =
                (i(p, &["port"]), s(p, &["protocol"]), i(p, &["nodePort"]));
            if node_port > 0 {
                format!("{port}:{node_port}/{proto}")
            } else {
                format!("{port}/{proto}")
            }
        })
        .collect();
    or_none(&pieces.join(","))
}

pub fn service() -> Vec<Column> {
    vec![
        Column::name(),
        col("Type", "string", 0, "", service_type),
        col("Cluster-IP", "string", 0, "", service_cluster_ip),
        col("External-IP", "string", 0, "", service_external_ip),
        col("Port(s)", "string", 0, "", service_ports),
        Column::age(),
        wide("Selector", "", |o| {
            text(format_labels(map(o, &["spec", "selector"])))
        }),
    ]
}

// ---------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------

/// The first-seen, last-seen and count cells of a core/v1 event, with upstream's fallbacks
/// for events written through events.k8s.io (eventTime, series).
fn event_times(e: &Value) -> (String, String, i64) {
    let first = s(e, &["firstTimestamp"]);
    let first_seen = if first.is_empty() {
        age(s(e, &["eventTime"]))
    } else {
        age(first)
    };
    let last = s(e, &["lastTimestamp"]);
    let mut last_seen = if last.is_empty() {
        first_seen.clone()
    } else {
        age(last)
    };
    let mut count = i(e, &["count"]);
    if let Some(series) = e.get("series").filter(|v| v.is_object()) {
        last_seen = age(s(series, &["lastObservedTime"]));
        count = i(series, &["count"]);
    } else if count == 0 {
        // Singleton events written through the new API carry no count.
        count = 1;
    }
    (first_seen, last_seen, count)
}

fn event_object(e: &Value) -> Value {
    let kind = s(e, &["involvedObject", "kind"]).to_lowercase();
    let name = s(e, &["involvedObject", "name"]);
    if name.is_empty() {
        text(kind)
    } else {
        text(format!("{kind}/{name}"))
    }
}

fn event_source(e: &Value) -> Value {
    let component = match s(e, &["source", "component"]) {
        "" => s(e, &["reportingComponent"]),
        c => c,
    };
    let host = match s(e, &["source", "host"]) {
        "" => s(e, &["reportingInstance"]),
        h => h,
    };
    if host.is_empty() {
        text(component)
    } else {
        text(format!("{component}, {host}"))
    }
}

fn event_columns(cells: [fn(&Value) -> Value; 10]) -> Vec<Column> {
    let [
        last_seen,
        type_,
        reason,
        object,
        subobject,
        source,
        message,
        first_seen,
        count,
        name,
    ] = cells;
    vec![
        col("Last Seen", "string", 0, "", last_seen),
        col("Type", "string", 0, "", type_),
        col("Reason", "string", 0, "", reason),
        col("Object", "string", 0, "", object),
        wide("Subobject", "", subobject),
        wide("Source", "", source),
        col("Message", "string", 0, "", message),
        wide("First Seen", "", first_seen),
        wide("Count", "", count),
        // Upstream shows the name last, and only with -o wide.
        Column {
            priority: 1,
            source: CellSource::Printer(name),
            ..Column::name()
        },
    ]
}

/// Core/v1 event columns. Unlike every other kind, the name is not the first column:
/// upstream puts it last, wide-only.
pub fn event() -> Vec<Column> {
    event_columns([
        |e| text(event_times(e).1),
        |e| text(s(e, &["type"])),
        |e| text(s(e, &["reason"])),
        event_object,
        |e| text(s(e, &["involvedObject", "fieldPath"])),
        event_source,
        |e| text(s(e, &["message"]).trim()),
        |e| text(event_times(e).0),
        |e| Value::from(event_times(e).2),
        |e| text(s(e, &["metadata", "name"])),
    ])
}

fn as_core(e: &Value) -> Value {
    super::defaults::event_v1_to_core(e.clone())
}

/// events.k8s.io/v1 event columns: upstream prints these through the core form, so the
/// columns are the same and each cell converts first.
pub fn event_v1() -> Vec<Column> {
    event_columns([
        |e| text(event_times(&as_core(e)).1),
        |e| text(s(e, &["type"])),
        |e| text(s(e, &["reason"])),
        |e| event_object(&as_core(e)),
        |e| text(s(e, &["regarding", "fieldPath"])),
        |e| event_source(&as_core(e)),
        |e| text(s(e, &["note"]).trim()),
        |e| text(event_times(&as_core(e)).0),
        |e| Value::from(event_times(&as_core(e)).2),
        |e| text(s(e, &["metadata", "name"])),
    ])
}

// ---------------------------------------------------------------------------------------
// Quotas and storage
// ---------------------------------------------------------------------------------------

fn quota_cells(o: &Value, limits: bool) -> Value {
    let mut names: Vec<&String> = map(o, &["status", "hard"])
        .into_iter()
        .flat_map(|m| m.keys())
        .collect();
    names.sort();
    let parts: Vec<String> = names
        .into_iter()
        .filter(|n| n.starts_with("limits.") == limits)
        .map(|n| {
            let used = quantity_text(at(o, &["status", "used", n]));
            let hard = quantity_text(at(o, &["status", "hard", n]));
            format!("{n}: {used}/{hard}")
        })
        .collect();
    text(parts.join(", "))
}

pub fn resourcequota() -> Vec<Column> {
    vec![
        Column::name(),
        col(
            "Request",
            "string",
            0,
            "Request represents a minimum amount of cpu/memory that a container may consume.",
            |o| quota_cells(o, false),
        ),
        col(
            "Limit",
            "string",
            0,
            "Limits control the maximum amount of cpu/memory that a container may use independent of contention on the node.",
            |o| quota_cells(o, true),
        ),
        Column::age(),
    ]
}

/// Upstream's `GetAccessModesAsString`: RWO, ROX, RWX, RWOP in that order.
fn access_modes(modes: &[Value]) -> String {
    let has = |m: &str| modes.iter().any(|v| v.as_str() == Some(m));
    [
        ("ReadWriteOnce", "RWO"),
        ("ReadOnlyMany", "ROX"),
        ("ReadWriteMany", "RWX"),
        ("ReadWriteOncePod", "RWOP"),
    ]
    .iter()
    .filter(|(m, _)| has(m))
    .map(|(_, short)| *short)
    .collect::<Vec<_>>()
    .join(",")
}

/// The storage class, from the beta annotation first as upstream reads it.
fn storage_class(o: &Value) -> String {
    match at(
        o,
        &[
            "metadata",
            "annotations",
            "volume.beta.kubernetes.io/storage-class",
        ],
    )
    .and_then(Value::as_str)
    {
        Some(c) => c.to_string(),
        None => s(o, &["spec", "storageClassName"]).to_string(),
    }
}

fn phase_or_terminating(o: &Value) -> Value {
    if at(o, &["metadata", "deletionTimestamp"]).is_some_and(|v| !v.is_null()) {
        text("Terminating")
    } else {
        text(s(o, &["status", "phase"]))
    }
}

fn or_unset(v: Option<&Value>) -> Value {
    text(v.and_then(Value::as_str).unwrap_or("<unset>"))
}

pub fn persistentvolume() -> Vec<Column> {
    fn claim(o: &Value) -> Value {
        match at(o, &["spec", "claimRef"]).filter(|c| c.is_object()) {
            Some(c) => text(format!("{}/{}", s(c, &["namespace"]), s(c, &["name"]))),
            None => text(""),
        }
    }
    vec![
        Column::name(),
        col("Capacity", "string", 0, "", |o| {
            text(quantity_text(at(o, &["spec", "capacity", "storage"])))
        }),
        col("Access Modes", "string", 0, "", |o| {
            text(access_modes(list(o, &["spec", "accessModes"])))
        }),
        col("Reclaim Policy", "string", 0, "", |o| {
            text(s(o, &["spec", "persistentVolumeReclaimPolicy"]))
        }),
        col("Status", "string", 0, "", phase_or_terminating),
        col("Claim", "string", 0, "", claim),
        col("StorageClass", "string", 0, "StorageClass of the pv", |o| {
            text(storage_class(o))
        }),
        col(
            "VolumeAttributesClass",
            "string",
            0,
            "VolumeAttributesClass of the pv",
            |o| or_unset(at(o, &["spec", "volumeAttributesClassName"])),
        ),
        col("Reason", "string", 0, "", |o| {
            text(s(o, &["status", "reason"]))
        }),
        Column::age(),
        wide("VolumeMode", "", |o| {
            or_unset(at(o, &["spec", "volumeMode"]))
        }),
    ]
}

pub fn persistentvolumeclaim() -> Vec<Column> {
    fn bound(o: &Value) -> bool {
        !s(o, &["spec", "volumeName"]).is_empty()
    }
    vec![
        Column::name(),
        col("Status", "string", 0, "", phase_or_terminating),
        col("Volume", "string", 0, "", |o| {
            text(s(o, &["spec", "volumeName"]))
        }),
        col("Capacity", "string", 0, "", |o| {
            // Capacity and access modes are only shown once the claim is bound.
            if bound(o) {
                text(quantity_text(at(o, &["status", "capacity", "storage"])))
            } else {
                text("")
            }
        }),
        col("Access Modes", "string", 0, "", |o| {
            if bound(o) {
                text(access_modes(list(o, &["status", "accessModes"])))
            } else {
                text("")
            }
        }),
        col(
            "StorageClass",
            "string",
            0,
            "StorageClass of the pvc",
            |o| text(storage_class(o)),
        ),
        col(
            "VolumeAttributesClass",
            "string",
            0,
            "VolumeAttributesClass of the pvc",
            |o| or_unset(at(o, &["spec", "volumeAttributesClassName"])),
        ),
        Column::age(),
        wide("VolumeMode", "", |o| {
            or_unset(at(o, &["spec", "volumeMode"]))
        }),
    ]
}

fn storageclass_name(o: &Value) -> Value {
    let annotations = map(o, &["metadata", "annotations"]);
    let is_default =
        |k: &str| annotations.and_then(|a| a.get(k)).and_then(Value::as_str) == Some("true");
    let name = s(o, &["metadata", "name"]);
    if is_default("storageclass.kubernetes.io/is-default-class")
        || is_default("storageclass.beta.kubernetes.io/is-default-class")
    {
        text(format!("{name} (default)"))
    } else {
        text(name)
    }
}

pub fn storageclass() -> Vec<Column> {
    vec![
        // The default class is marked in the name cell itself.
        Column {
            source: CellSource::Printer(storageclass_name),
            ..Column::name()
        },
        col("Provisioner", "string", 0, "", |o| {
            text(s(o, &["provisioner"]))
        }),
        col("ReclaimPolicy", "string", 0, "", |o| {
            text(
                o.get("reclaimPolicy")
                    .and_then(Value::as_str)
                    .unwrap_or("Delete"),
            )
        }),
        col("VolumeBindingMode", "string", 0, "", |o| {
            text(
                o.get("volumeBindingMode")
                    .and_then(Value::as_str)
                    .unwrap_or("Immediate"),
            )
        }),
        col("AllowVolumeExpansion", "string", 0, "", |o| {
            Value::Bool(
                o.get("allowVolumeExpansion")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            )
        }),
        Column::age(),
    ]
}

// ---------------------------------------------------------------------------------------
// Workloads
// ---------------------------------------------------------------------------------------

/// `spec.replicas`, which defaulting always sets; 1 if an object somehow lacks it.
fn desired_replicas(o: &Value) -> i64 {
    at(o, &["spec", "replicas"])
        .and_then(Value::as_i64)
        .unwrap_or(1)
}

pub fn deployment() -> Vec<Column> {
    let mut cols = vec![
        Column::name(),
        col(
            "Ready",
            "string",
            0,
            "Number of the pod with ready state",
            |o| {
                text(format!(
                    "{}/{}",
                    i(o, &["status", "readyReplicas"]),
                    desired_replicas(o)
                ))
            },
        ),
        col("Up-to-date", "string", 0, "", |o| {
            Value::from(i(o, &["status", "updatedReplicas"]))
        }),
        col("Available", "string", 0, "", |o| {
            Value::from(i(o, &["status", "availableReplicas"]))
        }),
        Column::age(),
    ];
    cols.extend(workload_wide_columns(false));
    // Deployments print the bare selector string, empty rather than <none>.
    cols.push(wide("Selector", "", |o| {
        text(format_selector(at(o, &["spec", "selector"])))
    }));
    cols
}

pub fn replicaset() -> Vec<Column> {
    let mut cols = vec![
        Column::name(),
        col("Desired", "integer", 0, "", |o| {
            Value::from(desired_replicas(o))
        }),
        col("Current", "integer", 0, "", |o| {
            Value::from(i(o, &["status", "replicas"]))
        }),
        col("Ready", "integer", 0, "", |o| {
            Value::from(i(o, &["status", "readyReplicas"]))
        }),
        Column::age(),
    ];
    cols.extend(workload_wide_columns(true));
    cols
}

pub fn daemonset() -> Vec<Column> {
    let mut cols = vec![
        Column::name(),
        col("Desired", "integer", 0, "", |o| {
            Value::from(i(o, &["status", "desiredNumberScheduled"]))
        }),
        col("Current", "integer", 0, "", |o| {
            Value::from(i(o, &["status", "currentNumberScheduled"]))
        }),
        col("Ready", "integer", 0, "", |o| {
            Value::from(i(o, &["status", "numberReady"]))
        }),
        col("Up-to-date", "integer", 0, "", |o| {
            Value::from(i(o, &["status", "updatedNumberScheduled"]))
        }),
        col("Available", "integer", 0, "", |o| {
            Value::from(i(o, &["status", "numberAvailable"]))
        }),
        col("Node Selector", "string", 0, "", |o| {
            text(format_labels(map(
                o,
                &["spec", "template", "spec", "nodeSelector"],
            )))
        }),
        Column::age(),
    ];
    cols.extend(workload_wide_columns(true));
    cols
}

pub fn statefulset() -> Vec<Column> {
    let mut cols = vec![
        Column::name(),
        col(
            "Ready",
            "string",
            0,
            "Number of the pod with ready state",
            |o| {
                text(format!(
                    "{}/{}",
                    i(o, &["status", "readyReplicas"]),
                    desired_replicas(o)
                ))
            },
        ),
        Column::age(),
    ];
    cols.extend(workload_wide_columns(false));
    cols
}

fn job_status(o: &Value) -> Value {
    let conditions = list(o, &["status", "conditions"]);
    let status = if has_condition(conditions, "Complete") {
        "Complete"
    } else if has_condition(conditions, "Failed") {
        "Failed"
    } else if at(o, &["metadata", "deletionTimestamp"]).is_some_and(|v| !v.is_null()) {
        "Terminating"
    } else if has_condition(conditions, "Suspended") {
        "Suspended"
    } else if has_condition(conditions, "FailureTarget") {
        "FailureTarget"
    } else {
        "Running"
    };
    text(status)
}

fn job_completions(o: &Value) -> Value {
    let succeeded = i(o, &["status", "succeeded"]);
    match at(o, &["spec", "completions"]).and_then(Value::as_i64) {
        Some(c) => text(format!("{succeeded}/{c}")),
        None => {
            let parallelism = i(o, &["spec", "parallelism"]);
            if parallelism > 1 {
                text(format!("{succeeded}/1 of {parallelism}"))
            } else {
                text(format!("{succeeded}/1"))
            }
        }
    }
}

fn job_duration(o: &Value) -> Value {
    let start = parse_time(s(o, &["status", "startTime"]));
    let end = parse_time(s(o, &["status", "completionTime"]));
    match (start, end) {
        (None, _) => text(""),
        (Some(st), None) => text(human_duration_nanos(now_nanos() - st.as_nanosecond())),
        (Some(st), Some(en)) => text(human_duration_nanos(
            en.as_nanosecond() - st.as_nanosecond(),
        )),
    }
}

pub fn job() -> Vec<Column> {
    let mut cols = vec![
        Column::name(),
        col("Status", "string", 0, "Status of the job.", job_status),
        col("Completions", "string", 0, "", job_completions),
        col(
            "Duration",
            "string",
            0,
            "Time required to complete the job.",
            job_duration,
        ),
        Column::age(),
    ];
    cols.extend(workload_wide_columns(true));
    cols
}

pub fn cronjob() -> Vec<Column> {
    fn suspend(o: &Value) -> Value {
        // Upstream's printBoolPtr.
        match at(o, &["spec", "suspend"]).and_then(Value::as_bool) {
            Some(true) => text("True"),
            Some(false) => text("False"),
            None => text("<unset>"),
        }
    }
    fn last_schedule(o: &Value) -> Value {
        match at(o, &["status", "lastScheduleTime"]).and_then(Value::as_str) {
            Some(t) => text(age(t)),
            None => text("<none>"),
        }
    }
    fn job_spec(o: &Value) -> Option<&Value> {
        at(o, &["spec", "jobTemplate", "spec"])
    }
    vec![
        Column::name(),
        col("Schedule", "string", 0, "", |o| {
            text(s(o, &["spec", "schedule"]))
        }),
        col("Timezone", "string", 0, "", |o| {
            text(
                at(o, &["spec", "timeZone"])
                    .and_then(Value::as_str)
                    .unwrap_or("<none>"),
            )
        }),
        col("Suspend", "boolean", 0, "", suspend),
        col("Active", "integer", 0, "", |o| {
            Value::from(list(o, &["status", "active"]).len())
        }),
        col("Last Schedule", "string", 0, "", last_schedule),
        Column::age(),
        wide("Containers", CONTAINERS_DESC, |o| {
            text(containers_cells(job_spec(o).and_then(|j| at(j, &["template", "spec"]))).0)
        }),
        wide("Images", IMAGES_DESC, |o| {
            text(containers_cells(job_spec(o).and_then(|j| at(j, &["template", "spec"]))).1)
        }),
        wide("Selector", "", |o| {
            text(format_label_selector(
                job_spec(o).and_then(|j| j.get("selector")),
            ))
        }),
    ]
}

// ---------------------------------------------------------------------------------------
// RBAC bindings
// ---------------------------------------------------------------------------------------

fn subjects(o: &Value, kind: &str) -> Value {
    let names: Vec<String> = list(o, &["subjects"])
        .iter()
        .filter(|sub| s(sub, &["kind"]) == kind)
        .map(|sub| {
            if kind == "ServiceAccount" {
                format!("{}/{}", s(sub, &["namespace"]), s(sub, &["name"]))
            } else {
                s(sub, &["name"]).to_string()
            }
        })
        .collect();
    text(names.join(", "))
}

fn binding_columns(noun: &str) -> Vec<Column> {
    let mut cols = vec![
        Column::name(),
        col("Role", "string", 0, "", |o| {
            text(format!(
                "{}/{}",
                s(o, &["roleRef", "kind"]),
                s(o, &["roleRef", "name"])
            ))
        }),
        Column::age(),
        wide("Users", "", |o| subjects(o, "User")),
        wide("Groups", "", |o| subjects(o, "Group")),
        wide("ServiceAccounts", "", |o| subjects(o, "ServiceAccount")),
    ];
    for (c, what) in cols[3..]
        .iter_mut()
        .zip(["Users", "Groups", "ServiceAccounts"])
    {
        c.description = format!("{what} in the {noun}");
    }
    cols
}

pub fn rolebinding() -> Vec<Column> {
    binding_columns("roleBinding")
}

pub fn clusterrolebinding() -> Vec<Column> {
    binding_columns("clusterRoleBinding")
}

// ---------------------------------------------------------------------------------------
// JSONPath
// ---------------------------------------------------------------------------------------

/// One step of a parsed path.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    /// `.*` or `[*]`: every element or value.
    All,
    Index(i64),
    Slice(Option<i64>, Option<i64>),
    Filter(Filter),
}

#[derive(Debug, Clone, PartialEq)]
struct Filter {
    path: Vec<Step>,
    /// `None` tests only that the path exists.
    test: Option<(String, Value)>,
}

/// Evaluates the JSONPath subset printer columns and `kubectl get -o jsonpath` use on one
/// object and returns the first match (a CRD column shows the first result only).
///
/// Supported: `.a.b`, `.a[0]`, `.a[-1]`, `.a[0:2]`, `.a[*].b`, `.a.*`, filters such as
/// `.a[?(@.type=="Ready")].status` (`==`, `!=`, `<`, `<=`, `>`, `>=`, or bare existence),
/// quoted keys `['app.kubernetes.io/name']` / `["…"]` and escaped dots
/// `.metadata.labels.app\.kubernetes\.io/name`. Surrounding `{…}` and a leading `$` are
/// accepted.
pub fn eval_path(obj: &Value, path: &str) -> Option<Value> {
    eval_path_all(obj, path).into_iter().next()
}

/// Like [`eval_path`], every match in document order. Empty for no match or a path that
/// does not parse.
pub fn eval_path_all(obj: &Value, path: &str) -> Vec<Value> {
    match parse_path(path) {
        Some(steps) => apply_steps(vec![obj], &steps)
            .into_iter()
            .cloned()
            .collect(),
        None => Vec::new(),
    }
}

fn apply_steps<'a>(mut current: Vec<&'a Value>, steps: &[Step]) -> Vec<&'a Value> {
    for step in steps {
        let mut next = Vec::new();
        for v in current {
            match step {
                Step::Field(name) => {
                    if let Some(x) = v.get(name.as_str()) {
                        next.push(x);
                    }
                }
                Step::All => match v {
                    Value::Array(a) => next.extend(a.iter()),
                    Value::Object(m) => next.extend(m.values()),
                    _ => {}
                },
                Step::Index(idx) => {
                    if let Some(a) = v.as_array() {
                        let idx = if *idx < 0 { a.len() as i64 + idx } else { *idx };
                        if let Some(x) = usize::try_from(idx).ok().and_then(|i| a.get(i)) {
                            next.push(x);
                        }
                    }
                }
                Step::Slice(from, to) => {
                    if let Some(a) = v.as_array() {
                        let len = a.len() as i64;
                        let norm = |x: i64| if x < 0 { (len + x).max(0) } else { x.min(len) };
                        let (from, to) = (norm(from.unwrap_or(0)), norm(to.unwrap_or(len)));
                        if from < to {
                            next.extend(a[from as usize..to as usize].iter());
                        }
                    }
                }
                Step::Filter(f) => {
                    let items: Vec<&Value> = match v {
                        Value::Array(a) => a.iter().collect(),
                        other => vec![other],
                    };
                    next.extend(items.into_iter().filter(|item| filter_matches(item, f)));
                }
            }
        }
        current = next;
    }
    current
}

fn filter_matches(item: &Value, f: &Filter) -> bool {
    let found = apply_steps(vec![item], &f.path);
    match &f.test {
        None => !found.is_empty(),
        Some((op, literal)) => found.iter().any(|v| compare(v, op, literal)),
    }
}

fn compare(v: &Value, op: &str, literal: &Value) -> bool {
    let ord = match (v, literal) {
        (Value::Number(a), Value::Number(b)) => a.as_f64().partial_cmp(&b.as_f64()),
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        (a, b) if op == "==" || op == "!=" => return (a == b) == (op == "=="),
        _ => None,
    };
    match (ord, op) {
        (Some(o), "==") => o.is_eq(),
        (Some(o), "!=") => o.is_ne(),
        (Some(o), "<") => o.is_lt(),
        (Some(o), "<=") => o.is_le(),
        (Some(o), ">") => o.is_gt(),
        (Some(o), ">=") => o.is_ge(),
        (None, "!=") => true,
        _ => false,
    }
}

fn parse_path(path: &str) -> Option<Vec<Step>> {
    let mut p = path.trim();
    if let Some(inner) = p.strip_prefix('{').and_then(|x| x.strip_suffix('}')) {
        p = inner.trim();
    }
    p = p.strip_prefix('$').unwrap_or(p);
    let chars: Vec<char> = p.chars().collect();
    let mut pos = 0;
    let steps = parse_steps(&chars, &mut pos, false)?;
    (pos == chars.len()).then_some(steps)
}

/// Parses steps until the end of input or, inside a filter, a closing parenthesis or an
/// operator.
fn parse_steps(c: &[char], pos: &mut usize, in_filter: bool) -> Option<Vec<Step>> {
    let mut steps = Vec::new();
    while *pos < c.len() {
        match c[*pos] {
            '.' => {
                *pos += 1;
                if c.get(*pos) == Some(&'*') {
                    *pos += 1;
                    steps.push(Step::All);
                    continue;
                }
                let mut name = String::new();
                while *pos < c.len() {
                    let ch = c[*pos];
                    if ch == '\\' && *pos + 1 < c.len() {
                        name.push(c[*pos + 1]);
                        *pos += 2;
                        continue;
                    }
                    if ch == '.' || ch == '[' || (in_filter && (ch == ')' || "=!<> ".contains(ch)))
                    {
                        break;
                    }
                    name.push(ch);
                    *pos += 1;
                }
                if !name.is_empty() {
                    steps.push(Step::Field(name));
                }
            }
            '[' => {
                *pos += 1;
                steps.push(parse_bracket(c, pos)?);
            }
            _ if in_filter => break,
            _ => return None,
        }
    }
    Some(steps)
}

fn parse_bracket(c: &[char], pos: &mut usize) -> Option<Step> {
    let step = match c.get(*pos)? {
        '\'' | '"' => {
            let key = parse_quoted(c, pos)?;
            Step::Field(key)
        }
        '*' => {
            *pos += 1;
            Step::All
        }
        '?' => {
            *pos += 1;
            if c.get(*pos) != Some(&'(') {
                return None;
            }
            *pos += 1;
            skip_spaces(c, pos);
            if c.get(*pos) != Some(&'@') {
                return None;
            }
            *pos += 1;
            let path = parse_steps(c, pos, true)?;
            skip_spaces(c, pos);
            let test = if c.get(*pos) == Some(&')') {
                None
            } else {
                let mut op = String::new();
                while *pos < c.len() && "=!<>".contains(c[*pos]) {
                    op.push(c[*pos]);
                    *pos += 1;
                }
                if !["==", "!=", "<", "<=", ">", ">="].contains(&op.as_str()) {
                    return None;
                }
                skip_spaces(c, pos);
                let literal = parse_literal(c, pos)?;
                skip_spaces(c, pos);
                Some((op, literal))
            };
            if c.get(*pos) != Some(&')') {
                return None;
            }
            *pos += 1;
            Step::Filter(Filter { path, test })
        }
        _ => {
            let start = *pos;
            while *pos < c.len() && c[*pos] != ']' {
                *pos += 1;
            }
            let inner: String = c[start..*pos].iter().collect();
            let inner = inner.trim();
            match inner.split_once(':') {
                Some((a, b)) => {
                    let bound = |x: &str| {
                        if x.trim().is_empty() {
                            Some(None)
                        } else {
                            x.trim().parse().ok().map(Some)
                        }
                    };
                    Step::Slice(bound(a)?, bound(b.split(':').next().unwrap_or(""))?)
                }
                None => Step::Index(inner.parse().ok()?),
            }
        }
    };
    if c.get(*pos) != Some(&']') {
        return None;
    }
    *pos += 1;
    Some(step)
}

fn skip_spaces(c: &[char], pos: &mut usize) {
    while c.get(*pos) == Some(&' ') {
        *pos += 1;
    }
}

fn parse_quoted(c: &[char], pos: &mut usize) -> Option<String> {
    let quote = c[*pos];
    *pos += 1;
    let mut out = String::new();
    while *pos < c.len() && c[*pos] != quote {
        // `\.` and `\'` inside quotes stand for the character itself.
        if c[*pos] == '\\' && *pos + 1 < c.len() {
            *pos += 1;
        }
        out.push(c[*pos]);
        *pos += 1;
    }
    if *pos >= c.len() {
        return None;
    }
    *pos += 1;
    Some(out)
}

fn parse_literal(c: &[char], pos: &mut usize) -> Option<Value> {
    match c.get(*pos)? {
        '\'' | '"' => parse_quoted(c, pos).map(Value::String),
        _ => {
            let start = *pos;
            while *pos < c.len() && c[*pos] != ')' && c[*pos] != ' ' {
                *pos += 1;
            }
            let word: String = c[start..*pos].iter().collect();
            match word.as_str() {
                "true" => Some(Value::Bool(true)),
                "false" => Some(Value::Bool(false)),
                "null" => Some(Value::Null),
                w => serde_json::from_str::<serde_json::Number>(w)
                    .ok()
                    .map(Value::Number),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Field selectors
// ---------------------------------------------------------------------------------------

fn render(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => other.to_string(),
    }
}

/// The value of a selectable field, as upstream's `*ToSelectableFields` functions compute it
/// for field selectors (`kubectl get pods --field-selector spec.nodeName=n1`).
///
/// Booleans and numbers are rendered as Go's `strconv` renders them, with upstream's
/// defaults for the unset Go zero values; a missing string field is the empty string.
/// events.k8s.io/v1 events answer with their core/v1 names (`source`, `involvedObject.*`).
pub fn field_value(obj: &Value, field: &str) -> Option<String> {
    let value = match field {
        "metadata.name" | "metadata.namespace" => {
            render(at(obj, &field.split('.').collect::<Vec<_>>()))
        }
        "spec.hostNetwork" | "spec.unschedulable" => {
            let key = &field["spec.".len()..];
            at(obj, &["spec", key])
                .and_then(Value::as_bool)
                .unwrap_or(false)
                .to_string()
        }
        "status.successful" => i(obj, &["status", "succeeded"]).to_string(),
        "status.replicas" => i(obj, &["status", "replicas"]).to_string(),
        "status.podIP" => {
            let first = list(obj, &["status", "podIPs"])
                .first()
                .map(|p| s(p, &["ip"]))
                .unwrap_or("");
            if first.is_empty() {
                s(obj, &["status", "podIP"]).to_string()
            } else {
                first.to_string()
            }
        }
        _ if obj.get("regarding").is_some() || obj.get("note").is_some() => {
            // An events.k8s.io/v1 event: answer with the core form's fields.
            return field_value(&super::defaults::event_v1_to_core(obj.clone()), field);
        }
        "source" => s(obj, &["source", "component"]).to_string(),
        _ => {
            let steps = parse_path(&format!(".{field}"))?;
            render(apply_steps(vec![obj], &steps).first().copied())
        }
    };
    Some(value)
}

/// PodDisruptionBudget: upstream's columns.
pub fn poddisruptionbudget() -> Vec<Column> {
    fn budget(o: &Value, field: &str) -> Value {
        match at(o, &["spec", field]) {
            Some(Value::Number(n)) => text(n.to_string()),
            Some(Value::String(s)) => text(s.clone()),
            _ => text("N/A"),
        }
    }
    vec![
        Column::name(),
        col(
            "Min Available",
            "string",
            0,
            "The minimum number of pods that must be available.",
            |o| budget(o, "minAvailable"),
        ),
        col(
            "Max Unavailable",
            "string",
            0,
            "The maximum number of pods that may be unavailable.",
            |o| budget(o, "maxUnavailable"),
        ),
        col(
            "Allowed Disruptions",
            "integer",
            0,
            "How many more pods may be disrupted right now.",
            |o| Value::from(i(o, &["status", "disruptionsAllowed"])),
        ),
        Column::age(),
    ]
}

/// PriorityClass: upstream's columns.
pub fn priorityclass() -> Vec<Column> {
    vec![
        Column::name(),
        col(
            "Value",
            "integer",
            0,
            "The priority of pods of this class.",
            |o| Value::from(i(o, &["value"])),
        ),
        col(
            "Global-Default",
            "boolean",
            0,
            "Whether pods naming no class get this one.",
            |o| {
                Value::from(
                    at(o, &["globalDefault"])
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                )
            },
        ),
        Column::age(),
        col(
            "PreemptionPolicy",
            "string",
            0,
            "Whether pods of this class may preempt others.",
            |o| or_none(s(o, &["preemptionPolicy"])),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ago(secs: i64) -> String {
        let t = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(secs);
        t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    }

    /// The cells of a row, as the table code would compute them.
    fn row(columns: &[Column], obj: &Value) -> Vec<Value> {
        columns
            .iter()
            .map(|c| match &c.source {
                CellSource::Name => text(s(obj, &["metadata", "name"])),
                CellSource::Age => text(age(s(obj, &["metadata", "creationTimestamp"]))),
                CellSource::Path(p) => eval_path(obj, p).unwrap_or(Value::Null),
                CellSource::Printer(f) => f(obj),
            })
            .collect()
    }

    fn headers(columns: &[Column]) -> Vec<(String, i32)> {
        columns
            .iter()
            .map(|c| (c.name.clone(), c.priority))
            .collect()
    }

    #[test]
    fn human_duration_follows_upstream() {
        let d = |s: u64| human_duration(Duration::from_secs(s));
        assert_eq!(d(0), "0s");
        assert_eq!(d(45), "45s");
        assert_eq!(d(119), "119s");
        assert_eq!(d(120), "2m");
        assert_eq!(d(200), "3m20s");
        assert_eq!(d(600), "10m");
        assert_eq!(d(179 * 60), "179m");
        assert_eq!(d(3 * 3600), "3h");
        assert_eq!(d(5 * 3600 + 30 * 60), "5h30m");
        assert_eq!(d(47 * 3600), "47h");
        assert_eq!(d(2 * 86400 + 3 * 3600), "2d3h");
        assert_eq!(d(8 * 86400), "8d");
        assert_eq!(d(400 * 86400), "400d");
        assert_eq!(d(3 * 365 * 86400 + 20 * 86400), "3y20d");
        assert_eq!(d(9 * 365 * 86400), "9y");
        assert_eq!(human_duration_nanos(-1_500_000_000), "0s");
        assert_eq!(human_duration_nanos(-3_000_000_000), "<invalid>");
        assert_eq!(age(""), "<unknown>");
        assert_eq!(age(&ago(300)), "5m");
    }

    #[test]
    fn crashlooping_pod() {
        let p = json!({
            "metadata": {"name": "web-1", "creationTimestamp": ago(3600)},
            "spec": {"nodeName": "n1", "containers": [{"name": "app"}, {"name": "side"}]},
            "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.5"}],
                "conditions": [{"type": "Initialized", "status": "True"}, {"type": "Ready", "status": "False"}],
                "containerStatuses": [
                    {"name": "app", "ready": false, "restartCount": 5,
                     "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                     "lastState": {"terminated": {"exitCode": 1, "finishedAt": ago(300)}}},
                    {"name": "side", "ready": true, "restartCount": 0, "state": {"running": {}}}]}
        });
        let cols = pod();
        assert_eq!(
            headers(&cols),
            vec![
                ("Name".into(), 0),
                ("Ready".into(), 0),
                ("Status".into(), 0),
                ("Restarts".into(), 0),
                ("Age".into(), 0),
                ("IP".into(), 1),
                ("Node".into(), 1),
                ("Nominated Node".into(), 1),
                ("Readiness Gates".into(), 1),
            ]
        );
        assert_eq!(
            row(&cols, &p),
            vec![
                json!("web-1"),
                json!("1/2"),
                json!("CrashLoopBackOff"),
                json!("5 (5m ago)"),
                json!("60m"),
                json!("10.0.0.5"),
                json!("n1"),
                json!("<none>"),
                json!("<none>"),
            ]
        );
    }

    #[test]
    fn init_waiting_pod() {
        let pod = json!({
            "metadata": {"name": "p"},
            "spec": {"initContainers": [{"name": "a"}, {"name": "b"}], "containers": [{"name": "c"}]},
            "status": {"phase": "Pending",
                "initContainerStatuses": [
                    {"name": "a", "restartCount": 0, "state": {"terminated": {"exitCode": 0}}},
                    {"name": "b", "restartCount": 0, "state": {"running": {}}}],
                "containerStatuses": [{"name": "c", "state": {"waiting": {"reason": "PodInitializing"}}}]}
        });
        assert_eq!(pod_status(&pod), json!("Init:1/2"));
        assert_eq!(pod_ready(&pod), json!("0/1"));
        let mut pulling = pod.clone();
        pulling["status"]["initContainerStatuses"][1]["state"] =
            json!({"waiting": {"reason": "ImagePullBackOff"}});
        assert_eq!(pod_status(&pulling), json!("Init:ImagePullBackOff"));
        let mut failed = pod.clone();
        failed["status"]["initContainerStatuses"][1]["state"] =
            json!({"terminated": {"exitCode": 2}});
        assert_eq!(pod_status(&failed), json!("Init:ExitCode:2"));
    }

    #[test]
    fn terminating_and_completed_pods() {
        let running = json!({
            "metadata": {"name": "p", "deletionTimestamp": ago(1)},
            "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": "Running", "containerStatuses": [{"name": "c", "ready": true, "state": {"running": {}}}]}
        });
        assert_eq!(pod_status(&running), json!("Terminating"));
        let done = json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": "Succeeded",
                "containerStatuses": [{"name": "c", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}
        });
        assert_eq!(pod_status(&done), json!("Completed"));
        assert_eq!(pod_restarts(&done), json!("0"));
        let creating = json!({"spec": {"containers": [{"name": "c"}]},
            "status": {"phase": "Pending", "containerStatuses": [{"name": "c", "state": {"waiting": {"reason": "ContainerCreating"}}}]}});
        assert_eq!(pod_status(&creating), json!("ContainerCreating"));
    }

    #[test]
    fn not_ready_node() {
        let n = json!({
            "metadata": {"name": "n1", "creationTimestamp": ago(86400 * 3),
                "labels": {"node-role.kubernetes.io/control-plane": "", "kubernetes.io/role": "edge"}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "False"}],
                "addresses": [{"type": "InternalIP", "address": "192.168.1.10"}],
                "nodeInfo": {"kubeletVersion": "v1.32.0", "osImage": "Debian"}}
        });
        assert_eq!(
            row(&node(), &n),
            vec![
                json!("n1"),
                json!("NotReady,SchedulingDisabled"),
                json!("control-plane,edge"),
                json!("3d"),
                json!("v1.32.0"),
                json!("192.168.1.10"),
                json!("<none>"),
                json!("Debian"),
                json!("<unknown>"),
                json!("<unknown>"),
            ]
        );
        assert_eq!(node_status(&json!({})), json!("Unknown"));
    }

    #[test]
    fn load_balancer_service() {
        let svc = json!({
            "metadata": {"name": "web", "creationTimestamp": ago(90)},
            "spec": {"type": "LoadBalancer", "clusterIPs": ["10.96.0.10"], "selector": {"app": "web", "tier": "fe"},
                "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}, {"port": 443, "protocol": "TCP"}]},
            "status": {"loadBalancer": {}}
        });
        let cols = service();
        assert_eq!(
            row(&cols, &svc),
            vec![
                json!("web"),
                json!("LoadBalancer"),
                json!("10.96.0.10"),
                json!("<pending>"),
                json!("80:30080/TCP,443/TCP"),
                json!("90s"),
                json!("app=web,tier=fe"),
            ]
        );
        let mut ready = svc.clone();
        ready["status"]["loadBalancer"] =
            json!({"ingress": [{"ip": "203.0.113.9"}, {"hostname": "lb.example"}]});
        assert_eq!(service_external_ip(&ready), json!("203.0.113.9,lb.example"));
        assert_eq!(
            service_external_ip(&json!({"spec": {"type": "ClusterIP"}})),
            json!("<none>")
        );
    }

    #[test]
    fn events_core_and_v1() {
        let ev = json!({
            "metadata": {"name": "web.17a"},
            "involvedObject": {"kind": "Pod", "name": "web", "fieldPath": "spec.containers{app}"},
            "reason": "BackOff", "type": "Warning", "message": " Back-off restarting \n",
            "source": {"component": "kubelet", "host": "n1"},
            "firstTimestamp": ago(600), "lastTimestamp": ago(30), "count": 7
        });
        let cols = event();
        assert_eq!(cols[0].name, "Last Seen");
        assert_eq!(
            cols.last().map(|c| (c.format, c.priority)),
            Some(("name", 1))
        );
        assert_eq!(
            row(&cols, &ev),
            vec![
                json!("30s"),
                json!("Warning"),
                json!("BackOff"),
                json!("pod/web"),
                json!("spec.containers{app}"),
                json!("kubelet, n1"),
                json!("Back-off restarting"),
                json!("10m"),
                json!(7),
                json!("web.17a"),
            ]
        );
        let v1 = super::super::defaults::event_core_to_v1(ev.clone());
        assert_eq!(row(&event_v1(), &v1), row(&cols, &ev));
    }

    #[test]
    fn workloads() {
        let d = json!({"metadata": {"name": "web"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                "template": {"spec": {"containers": [{"name": "a", "image": "nginx"}, {"name": "b", "image": "busybox"}]}}},
            "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}});
        let cells = row(&deployment(), &d);
        assert_eq!(cells[1..4], [json!("2/3"), json!(3), json!(2)]);
        assert_eq!(
            cells[5..],
            [json!("a,b"), json!("nginx,busybox"), json!("app=web")]
        );
        let j = json!({"spec": {"parallelism": 2}, "status": {"succeeded": 1,
            "startTime": "2024-01-01T00:00:00Z", "completionTime": "2024-01-01T00:02:05Z",
            "conditions": [{"type": "Complete", "status": "True"}]}});
        assert_eq!(job_status(&j), json!("Complete"));
        assert_eq!(job_completions(&j), json!("1/1 of 2"));
        assert_eq!(job_duration(&j), json!("2m5s"));
        let sel = json!({"matchLabels": {"b": "1"}, "matchExpressions": [
            {"key": "a", "operator": "In", "values": ["y", "x"]}, {"key": "c", "operator": "DoesNotExist"}]});
        assert_eq!(format_selector(Some(&sel)), "a in (x,y),b=1,!c");
        assert_eq!(selector_cell(&json!({})), json!("<none>"));
    }

    #[test]
    fn storage_and_quota() {
        let pvc = json!({"metadata": {"name": "data"},
            "spec": {"volumeName": "pv1", "storageClassName": "fast", "volumeMode": "Filesystem"},
            "status": {"phase": "Bound", "capacity": {"storage": "1024Mi"}, "accessModes": ["ReadWriteOnce", "ReadOnlyMany"]}});
        let cells = row(&persistentvolumeclaim(), &pvc);
        assert_eq!(
            cells[1..7],
            [
                json!("Bound"),
                json!("pv1"),
                json!("1Gi"),
                json!("RWO,ROX"),
                json!("fast"),
                json!("<unset>")
            ]
        );
        let quota = json!({"status": {"hard": {"pods": "10", "limits.cpu": "2", "requests.memory": "1Gi"},
            "used": {"pods": "3", "requests.memory": "512Mi"}}});
        assert_eq!(
            quota_cells(&quota, false),
            json!("pods: 3/10, requests.memory: 512Mi/1Gi")
        );
        assert_eq!(quota_cells(&quota, true), json!("limits.cpu: 0/2"));
        let sc = json!({"metadata": {"name": "std", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}}});
        assert_eq!(storageclass_name(&sc), json!("std (default)"));
        let role = json!({"metadata": {"name": "r", "creationTimestamp": "2024-05-01T10:00:00Z"}});
        assert_eq!(
            row(&role_columns_for_test(), &role),
            vec![json!("r"), json!("2024-05-01T10:00:00Z")]
        );
    }

    fn role_columns_for_test() -> Vec<Column> {
        role()
    }

    #[test]
    fn json_paths() {
        let pod = json!({"metadata": {"labels": {"app.kubernetes.io/name": "web"}},
            "spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Init", "status": "False"}]}});
        assert_eq!(
            eval_path(&pod, ".spec.containers[0].name"),
            Some(json!("a"))
        );
        assert_eq!(
            eval_path(&pod, ".spec.containers[-1].image"),
            Some(json!("y"))
        );
        assert_eq!(
            eval_path_all(&pod, ".spec.containers[*].name"),
            vec![json!("a"), json!("b")]
        );
        assert_eq!(
            eval_path(&pod, r#".status.conditions[?(@.type=="Ready")].status"#),
            Some(json!("True"))
        );
        assert_eq!(
            eval_path(&pod, ".status.conditions[?(@.status != 'True')].type"),
            Some(json!("Init"))
        );
        assert_eq!(
            eval_path(&pod, r".metadata.labels['app\.kubernetes\.io/name']"),
            Some(json!("web"))
        );
        assert_eq!(
            eval_path(&pod, r#"{.metadata.labels["app.kubernetes.io/name"]}"#),
            Some(json!("web"))
        );
        assert_eq!(
            eval_path(&pod, r".metadata.labels.app\.kubernetes\.io/name"),
            Some(json!("web"))
        );
        assert_eq!(
            eval_path_all(&pod, ".spec.containers[0:1].name"),
            vec![json!("a")]
        );
        assert_eq!(eval_path(&pod, ".spec.missing"), None);
        assert_eq!(eval_path(&pod, ".spec[bad"), None);
    }

    #[test]
    fn field_selector_values() {
        let pod = json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": {"nodeName": "n1"},
            "status": {"podIPs": [{"ip": "10.0.0.1"}]}});
        assert_eq!(field_value(&pod, "spec.nodeName").as_deref(), Some("n1"));
        assert_eq!(
            field_value(&pod, "spec.hostNetwork").as_deref(),
            Some("false")
        );
        assert_eq!(
            field_value(&pod, "status.podIP").as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(field_value(&pod, "spec.restartPolicy").as_deref(), Some(""));
        assert_eq!(
            field_value(&json!({}), "status.successful").as_deref(),
            Some("0")
        );
        assert_eq!(
            field_value(&json!({"status": {"replicas": 3}}), "status.replicas").as_deref(),
            Some("3")
        );
        let ev = json!({"source": {"component": "kubelet"}, "involvedObject": {"kind": "Pod"}});
        assert_eq!(field_value(&ev, "source").as_deref(), Some("kubelet"));
        assert_eq!(
            field_value(&ev, "involvedObject.kind").as_deref(),
            Some("Pod")
        );
        let v1 = json!({"apiVersion": "events.k8s.io/v1", "regarding": {"kind": "Node"},
            "deprecatedSource": {"component": "kubelet"}, "reportingController": "kubelet"});
        assert_eq!(
            field_value(&v1, "involvedObject.kind").as_deref(),
            Some("Node")
        );
        assert_eq!(field_value(&v1, "source").as_deref(), Some("kubelet"));
        assert_eq!(
            field_value(&v1, "reportingComponent").as_deref(),
            Some("kubelet")
        );
    }
}
