//! The zone controller: a [`Zone`] for every zone hosts are in, and each zone's status kept
//! current — hosts ready / total, capacity, allocated and free CPU and memory — so that
//! `kubectl get zones` shows the inventory at a glance.
//!
//! A host is in zone Z when its Node has the label `topology.kubernetes.io/zone=Z`. Zones are
//! created for every such value seen (labelled `visor.dev/auto-created=true`); an admin may
//! create one before its hosts join, and deleting a Zone whose hosts remain brings it back.
//! A label value that is not a valid object name gets no Zone (logged).
//!
//! Figures: capacity is the sum of the hosts' allocatable; allocated is the sum of the
//! requests of the pods placed on them (not finished); free counts only Ready, schedulable
//! hosts — what new work can use. The status is written with a merge patch that leaves the
//! balancer's part (`status.balance`) alone.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tokio::sync::Notify;
use visor_api::zone::{AUTO_CREATED_LABEL, ZONE_LABEL, Zone, ZoneResources, ZoneSpec, ZoneSummary};
use visor_scheduler::Resources;
use visor_scheduler::convert::{node_host, pod_requests};

use crate::informers::{self, Informers};

const RESYNC: Duration = Duration::from_secs(15);
/// Zone figures are for people, and each recount walks every host and placed pod (about 16 ms
/// at 5,000 hosts and 10,000 pods), so changes are gathered for this long before one.
const DEBOUNCE: Duration = Duration::from_secs(2);

/// One zone's figures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ZoneFigures {
    pub hosts_ready: i32,
    pub hosts_total: i32,
    pub capacity: Resources,
    pub allocated: Resources,
    pub free: Resources,
}

/// Computes every zone's figures from nodes and the pods placed on them.
pub fn zone_figures(nodes: &[Arc<Node>], pods: &[Arc<Pod>]) -> BTreeMap<String, ZoneFigures> {
    let mut per_host: HashMap<String, Resources> = HashMap::new();
    for pod in pods {
        let Some(spec) = pod.spec.as_ref() else {
            continue;
        };
        let Some(host) = spec.node_name.as_deref().filter(|h| !h.is_empty()) else {
            continue;
        };
        // Terminating pods still hold their resources; finished ones do not.
        if matches!(crate::shared::phase(pod), "Succeeded" | "Failed") {
            continue;
        }
        per_host
            .entry(host.to_string())
            .or_default()
            .add(&pod_requests(spec));
    }
    let mut zones: BTreeMap<String, ZoneFigures> = BTreeMap::new();
    for node in nodes {
        let Some(zone) = node.labels().get(ZONE_LABEL) else {
            continue;
        };
        let host = node_host(node);
        let allocated = per_host.get(&host.name).copied().unwrap_or_default();
        let z = zones.entry(zone.clone()).or_default();
        z.hosts_total += 1;
        z.capacity.add(&host.allocatable);
        z.allocated.add(&allocated);
        if host.ready {
            z.hosts_ready += 1;
            if !host.unschedulable {
                z.free.cpu_millis += (host.allocatable.cpu_millis - allocated.cpu_millis).max(0);
                z.free.memory_bytes +=
                    (host.allocatable.memory_bytes - allocated.memory_bytes).max(0);
                z.free.pods += (host.allocatable.pods - allocated.pods).max(0);
            }
        }
    }
    zones
}

/// CPU in the shortest quantity form: `"4"` or `"3500m"`.
pub fn cpu_text(millis: i64) -> String {
    if millis % 1000 == 0 {
        (millis / 1000).to_string()
    } else {
        format!("{millis}m")
    }
}

/// Memory in the largest binary unit that holds it exactly: `"64Gi"`, `"512Mi"`, `"1000"`.
pub fn memory_text(bytes: i64) -> String {
    const UNITS: [(&str, i64); 4] = [
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if bytes != 0 && bytes % size == 0 {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

fn percent(part: i64, whole: i64) -> i64 {
    if whole <= 0 { 0 } else { part * 100 / whole }
}

fn status_patch(f: &ZoneFigures) -> serde_json::Value {
    serde_json::json!({
        "status": {
            "hosts": format!("{}/{}", f.hosts_ready, f.hosts_total),
            "hostsReady": f.hosts_ready,
            "hostsTotal": f.hosts_total,
            "capacity": ZoneResources {
                cpu: cpu_text(f.capacity.cpu_millis),
                memory: memory_text(f.capacity.memory_bytes),
            },
            "allocated": ZoneResources {
                cpu: cpu_text(f.allocated.cpu_millis),
                memory: memory_text(f.allocated.memory_bytes),
            },
            "free": ZoneResources {
                cpu: cpu_text(f.free.cpu_millis),
                memory: memory_text(f.free.memory_bytes),
            },
            "summary": ZoneSummary {
                cpu: format!(
                    "{}/{} ({}%)",
                    cpu_text(f.allocated.cpu_millis),
                    cpu_text(f.capacity.cpu_millis),
                    percent(f.allocated.cpu_millis, f.capacity.cpu_millis)
                ),
                memory: format!(
                    "{}/{} ({}%)",
                    memory_text(f.allocated.memory_bytes),
                    memory_text(f.capacity.memory_bytes),
                    percent(f.allocated.memory_bytes, f.capacity.memory_bytes)
                ),
            },
        }
    })
}

/// Whether `name` is a valid object name (a DNS-1123 subdomain).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

/// Runs the controller until the task is dropped.
pub async fn run(client: Client, informers: Arc<Informers>) {
    let changed = Arc::new(Notify::new());
    let nodes: Store<Node> = informers.store(
        Api::all(client.clone()),
        watcher::Config::default(),
        changed.clone(),
    );
    let pods: Store<Pod> = informers.store(
        Api::all(client.clone()),
        watcher::Config::default().fields("spec.nodeName!="),
        changed.clone(),
    );
    let zones: Store<Zone> = informers.store(
        Api::all(client.clone()),
        watcher::Config::default(),
        changed.clone(),
    );
    if !(informers::ready(&nodes).await
        && informers::ready(&pods).await
        && informers::ready(&zones).await)
    {
        return;
    }
    let api: Api<Zone> = Api::all(client.clone());
    let mut invalid_reported: BTreeSet<String> = BTreeSet::new();
    loop {
        let figures = zone_figures(&nodes.state(), &pods.state());
        let existing: HashMap<String, Arc<Zone>> = zones
            .state()
            .into_iter()
            .map(|z| (z.name_any(), z))
            .collect();
        for name in figures.keys() {
            if existing.contains_key(name) {
                continue;
            }
            if !valid_name(name) {
                if invalid_reported.insert(name.clone()) {
                    tracing::warn!(zone = %name, "a zone label that is not a valid object name gets no Zone");
                }
                continue;
            }
            let zone = Zone {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    labels: Some([(AUTO_CREATED_LABEL.to_string(), "true".to_string())].into()),
                    ..ObjectMeta::default()
                },
                spec: ZoneSpec::default(),
                status: None,
            };
            match api.create(&PostParams::default(), &zone).await {
                Ok(_) => tracing::info!(zone = %name, "zone created for its hosts"),
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(error) => tracing::warn!(%error, zone = %name, "creating a zone"),
            }
        }
        for (name, zone) in &existing {
            let f = figures.get(name).cloned().unwrap_or_default();
            let patch = status_patch(&f);
            let current =
                serde_json::to_value(zone.status.clone().unwrap_or_default()).unwrap_or_default();
            let unchanged = patch["status"]
                .as_object()
                .is_some_and(|fields| fields.iter().all(|(k, v)| current.get(k) == Some(v)));
            if unchanged {
                continue;
            }
            if let Err(error) = api
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                tracing::debug!(%error, zone = %name, "writing zone status");
            }
        }
        tokio::select! {
            _ = changed.notified() => tokio::time::sleep(DEBOUNCE).await,
            _ = tokio::time::sleep(RESYNC) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantities_print_short() {
        assert_eq!(cpu_text(4000), "4");
        assert_eq!(cpu_text(3500), "3500m");
        assert_eq!(memory_text(64 << 30), "64Gi");
        assert_eq!(memory_text(512 << 20), "512Mi");
        assert_eq!(memory_text(1000), "1000");
        assert_eq!(memory_text(0), "0");
    }

    #[test]
    fn figures_count_ready_hosts_and_placed_requests() {
        let node = |name: &str, zone: &str, ready: &str, cordoned: bool| -> Arc<Node> {
            Arc::new(
                serde_json::from_value(json!({
                    "metadata": {"name": name, "labels": {ZONE_LABEL: zone}},
                    "spec": {"unschedulable": cordoned},
                    "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                        "conditions": [{"type": "Ready", "status": ready}]}
                }))
                .unwrap(),
            )
        };
        let pod = |host: &str, cpu: &str, phase: &str| -> Arc<Pod> {
            Arc::new(
                serde_json::from_value(json!({
                    "metadata": {"name": "p", "namespace": "ns"},
                    "spec": {"nodeName": host, "containers": [{"name": "c",
                        "resources": {"requests": {"cpu": cpu, "memory": "1Gi"}}}]},
                    "status": {"phase": phase}
                }))
                .unwrap(),
            )
        };
        let nodes = vec![
            node("a", "z1", "True", false),
            node("b", "z1", "Unknown", false),
            node("c", "z2", "True", true),
        ];
        let pods = vec![
            pod("a", "1500m", "Running"),
            pod("b", "1", "Running"),
            pod("a", "2", "Succeeded"),
        ];
        let f = zone_figures(&nodes, &pods);
        let z1 = &f["z1"];
        assert_eq!((z1.hosts_ready, z1.hosts_total), (1, 2));
        assert_eq!(z1.capacity.cpu_millis, 8000);
        assert_eq!(z1.allocated.cpu_millis, 2500);
        // Only the ready host's room is free.
        assert_eq!(z1.free.cpu_millis, 2500);
        assert_eq!(z1.free.memory_bytes, 7 << 30);
        // A cordoned host offers nothing.
        assert_eq!(f["z2"].free, Resources::default());
        let patch = status_patch(z1);
        assert_eq!(patch["status"]["hosts"], "1/2");
        assert_eq!(patch["status"]["summary"]["cpu"], "2500m/8 (31%)");
    }

    #[test]
    fn zone_names_must_be_object_names() {
        assert!(valid_name("us-east-1a"));
        assert!(!valid_name("Zone_A"));
        assert!(!valid_name(""));
    }
}
