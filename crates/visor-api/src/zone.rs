//! Zones: groups of hosts that fail independently (the seeds' vSphere Zones).
//!
//! A host belongs to zone Z when its Node carries the label `topology.kubernetes.io/zone=Z`
//! (the agent's `--zone`). The zone controller creates a [`Zone`] for every zone label it sees
//! (an admin may also create one ahead of its hosts) and keeps its status current: hosts ready
//! and total, capacity, what is allocated (the requests of the pods placed there) and what is
//! free. The balancer adds its view of how evenly the zone's hosts are loaded and the moves it
//! recommends.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The label naming a host's zone, as upstream's well-known topology label.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The label the zone controller puts on Zones it created itself (rather than an admin).
pub const AUTO_CREATED_LABEL: &str = "visor.dev/auto-created";

/// A zone of hosts.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "visor.dev",
    version = "v1alpha1",
    kind = "Zone",
    plural = "zones",
    shortname = "zn",
    status = "ZoneStatus",
    printcolumn = r#"{"name":"Hosts","type":"string","description":"Hosts ready / total","jsonPath":".status.hosts"}"#,
    printcolumn = r#"{"name":"CPU","type":"string","description":"CPU allocated / capacity","jsonPath":".status.summary.cpu"}"#,
    printcolumn = r#"{"name":"Memory","type":"string","description":"Memory allocated / capacity","jsonPath":".status.summary.memory"}"#,
    printcolumn = r#"{"name":"Free CPU","type":"string","jsonPath":".status.free.cpu"}"#,
    printcolumn = r#"{"name":"Free Memory","type":"string","jsonPath":".status.free.memory"}"#,
    printcolumn = r#"{"name":"Balance","type":"string","description":"Spread between the busiest and the idlest host","jsonPath":".status.balance.summary","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ZoneSpec {
    /// What the zone is, for people (a room, a rack, a site).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// CPU and memory amounts, as Kubernetes quantities (`"12"`, `"3500m"`, `"64Gi"`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ZoneResources {
    pub cpu: String,
    pub memory: String,
}

/// What `kubectl get zones` shows: allocated / capacity with the percentage.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ZoneSummary {
    /// e.g. `"3500m/16 (21%)"`.
    pub cpu: String,
    /// e.g. `"6Gi/64Gi (9%)"`.
    pub memory: String,
}

/// A move the balancer recommends (manual mode) or made (automatic mode).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Move {
    /// `namespace/name` of the pod.
    pub pod: String,
    pub from_host: String,
    /// Where placement would put it now; empty when no host would take it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub to_host: String,
}

/// The balancer's view of the zone's hosts.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ZoneBalance {
    /// `off`, `manual` or `automatic`.
    pub mode: String,
    /// Utilisation (the larger of CPU and memory, percent) of the busiest host.
    pub busiest_host: String,
    pub busiest_percent: i64,
    pub idlest_host: String,
    pub idlest_percent: i64,
    /// e.g. `"spread 42% > 20%: 2 moves recommended"` or `"balanced (spread 4%)"`.
    pub summary: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recommendations: Vec<Move>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ZoneStatus {
    /// `"ready/total"`, e.g. `"2/3"`.
    pub hosts: String,
    pub hosts_ready: i32,
    pub hosts_total: i32,
    /// Sum of the hosts' allocatable.
    pub capacity: ZoneResources,
    /// Sum of the requests of the pods placed on the zone's hosts.
    pub allocated: ZoneResources,
    /// Capacity minus allocated, over Ready and schedulable hosts only: what new work can use.
    pub free: ZoneResources,
    pub summary: ZoneSummary,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<ZoneBalance>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The CRDs of this module's kinds.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![Zone::crd()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_zone_crd_is_cluster_scoped_with_status_and_columns() {
        let crd = Zone::crd();
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(crd.spec.names.plural, "zones");
        let version = &crd.spec.versions[0];
        assert!(version.subresources.as_ref().unwrap().status.is_some());
        let columns: Vec<&str> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            columns,
            [
                "Hosts",
                "CPU",
                "Memory",
                "Free CPU",
                "Free Memory",
                "Balance",
                "Age"
            ]
        );
    }
}
