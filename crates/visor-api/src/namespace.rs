//! Namespaces as resource boundaries: the admin kind that configures one, the templates that
//! let a group create its own, and the requests through which they do.
//!
//! - [`SupervisorNamespace`] (cluster-scoped): the object named N configures namespace N — its
//!   CPU, memory and storage limits, object counts, the VM classes, images, storage classes and
//!   zones it may use, the defaults its containers get, and who may do what in it. The name is
//!   the seeds' own ("Supervisor namespace"): what an admin reading them looks for, and
//!   distinct from the core `Namespace` it manages. The tenancy controller materialises it as
//!   the Namespace, a ResourceQuota, a LimitRange and RoleBindings, and reports usage in its
//!   status.
//! - [`NamespaceTemplate`] (cluster-scoped): a preset configuration and the groups allowed to
//!   create namespaces from it (the seeds' namespace self-service).
//! - [`NamespaceRequest`] (cluster-scoped): what a member of such a group creates to get a
//!   namespace from a template. It is a kind of its own so that RBAC can grant `create` on it
//!   to a group without granting the power to write arbitrary limits; the server records who
//!   asked, and that user becomes the namespace's `owner`.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The label on every object the tenancy controller makes for a SupervisorNamespace (the
/// Namespace itself, its quota, limit range and bindings): the SupervisorNamespace's name.
pub const SUPERVISOR_NAMESPACE_LABEL: &str = "visor.dev/supervisor-namespace";
/// The finalizer that holds a SupervisorNamespace until its Namespace and everything in it
/// are gone.
pub const CLEANUP_FINALIZER: &str = "visor.dev/namespace-cleanup";
/// Namespace annotation: the VM classes its VMs may use (comma-separated; absent = any).
pub const ALLOWED_VM_CLASSES_ANNOTATION: &str = "visor.dev/allowed-vm-classes";
/// Namespace annotation: the VM images its VMs may use (comma-separated; absent = any).
pub const ALLOWED_IMAGES_ANNOTATION: &str = "visor.dev/allowed-images";
/// Namespace annotation: the storage classes its claims may use (comma-separated; absent =
/// any). The API server refuses a PersistentVolumeClaim naming another class.
pub const ALLOWED_STORAGE_CLASSES_ANNOTATION: &str = "visor.dev/allowed-storage-classes";
/// The name of the ResourceQuota the tenancy controller keeps in a managed namespace.
pub const QUOTA_NAME: &str = "visor-limits";
/// The name of the LimitRange the tenancy controller keeps in a managed namespace.
pub const LIMIT_RANGE_NAME: &str = "visor-defaults";
/// The quota key counting VirtualMachines (VM Service).
pub const VM_COUNT_KEY: &str = "count/virtualmachines.vmoperator.vmware.com";
/// The quota key counting Kubernetes clusters (Cluster API).
pub const CLUSTER_COUNT_KEY: &str = "count/clusters.cluster.x-k8s.io";
/// At most this many zones per namespace.
pub const MAX_ZONES: usize = 3;

/// The configuration of one namespace: the object named N configures namespace N.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "visor.dev",
    version = "v1alpha1",
    kind = "SupervisorNamespace",
    plural = "supervisornamespaces",
    shortname = "svns",
    category = "visor",
    status = "SupervisorNamespaceStatus",
    printcolumn = r#"{"name":"CPU","type":"string","description":"CPU (limits) used / allowed","jsonPath":".status.summary.cpu"}"#,
    printcolumn = r#"{"name":"Memory","type":"string","description":"Memory (limits) used / allowed","jsonPath":".status.summary.memory"}"#,
    printcolumn = r#"{"name":"Storage","type":"string","description":"Storage requested / allowed","jsonPath":".status.summary.storage"}"#,
    printcolumn = r#"{"name":"Pods","type":"string","description":"Pods / allowed","jsonPath":".status.summary.pods"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SupervisorNamespaceSpec {
    /// Compute and storage limits of the whole namespace. Absent limits are unlimited.
    #[serde(default)]
    pub limits: Limits,
    /// The storage classes (the seeds' storage policies) claims may use, each with an optional
    /// limit on the storage requested through it. Empty means any class.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub storage_classes: Vec<StorageClassAllowance>,
    /// Limits on how many objects of some kinds the namespace may hold.
    #[serde(default)]
    pub counts: Counts,
    /// The VirtualMachineClasses VMs may use. Empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vm_classes: Vec<String>,
    /// The VirtualMachineImages VMs may boot from. Empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
    /// The zones workloads may be placed in (at most three). Empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    pub zones: Vec<String>,
    /// Requests and limits containers get when they name none (a LimitRange).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_defaults: Option<ContainerDefaults>,
    /// Who may do what in the namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permissions: Vec<Permission>,
}

/// Limits on the namespace's total consumption.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// The CPU all containers together may be limited to (`limits.cpu`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// The memory all containers together may be limited to (`limits.memory`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// The storage all claims together may request (`requests.storage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Quantity>,
}

/// A storage class the namespace may use, with an optional limit.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageClassAllowance {
    /// The StorageClass name.
    pub name: String,
    /// The storage claims of this class may request together
    /// (`<class>.storageclass.storage.k8s.io/requests.storage`). Absent is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<Quantity>,
}

/// Object count limits. Absent counts are unlimited.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub pods: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub virtual_machines: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub clusters: Option<i64>,
    /// Services of type LoadBalancer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub load_balancers: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub persistent_volume_claims: Option<i64>,
}

/// Requests and limits a container gets when it names none.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerDefaults {
    /// Default requests, by resource (`cpu`, `memory`, `ephemeral-storage`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, Quantity>,
    /// Default limits, by resource.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, Quantity>,
}

/// A grant: a user or group and its role in the namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Permission {
    /// Whether `name` is a user or a group.
    pub subject: SubjectKind,
    /// The user or group name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// `view` (read), `edit` (read and write workloads) or `owner` (also manage roles).
    pub role: Role,
}

/// Who a permission is for.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub enum SubjectKind {
    User,
    Group,
}

/// The roles a namespace grants, each bound to one of upstream's default ClusterRoles.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    View,
    Edit,
    Owner,
}

impl Role {
    /// The role's name as written in the spec.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::View => "view",
            Role::Edit => "edit",
            Role::Owner => "owner",
        }
    }

    /// The ClusterRole a RoleBinding grants for this role.
    pub fn cluster_role(self) -> &'static str {
        match self {
            Role::View => "view",
            Role::Edit => "edit",
            Role::Owner => "admin",
        }
    }
}

impl SubjectKind {
    /// The RBAC subject kind.
    pub fn rbac_kind(self) -> &'static str {
        match self {
            SubjectKind::User => "User",
            SubjectKind::Group => "Group",
        }
    }
}

/// What the tenancy controller reports about a SupervisorNamespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SupervisorNamespaceStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Usage against every limit, by quota key (`limits.cpu`, `pods`,
    /// `gold.storageclass.storage.k8s.io/requests.storage`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub usage: BTreeMap<String, Usage>,
    /// The headline usage as `used/limit` texts, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<UsageSummary>,
    /// `Ready`: the namespace, its quota, limit range and bindings match the spec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One limit and what is used of it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Usage {
    pub used: Quantity,
    pub limit: Quantity,
}

/// `used/limit` texts (`-` when unlimited) for the printer columns.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct UsageSummary {
    pub cpu: String,
    pub memory: String,
    pub storage: String,
    pub pods: String,
}

impl SupervisorNamespaceSpec {
    /// The ResourceQuota `spec.hard` these limits mean, with upstream's keys: `limits.cpu`,
    /// `limits.memory`, `requests.storage`, `<class>.storageclass.storage.k8s.io/requests.storage`,
    /// `pods`, `persistentvolumeclaims`, `services.loadbalancers`, and `count/…` keys for VMs
    /// and clusters. Empty when nothing is limited.
    pub fn quota_hard(&self) -> BTreeMap<String, Quantity> {
        let mut hard = BTreeMap::new();
        let mut put = |key: String, value: &Option<Quantity>| {
            if let Some(v) = value {
                hard.insert(key, v.clone());
            }
        };
        put("limits.cpu".into(), &self.limits.cpu);
        put("limits.memory".into(), &self.limits.memory);
        put("requests.storage".into(), &self.limits.storage);
        for class in &self.storage_classes {
            put(
                format!(
                    "{}.storageclass.storage.k8s.io/requests.storage",
                    class.name
                ),
                &class.limit,
            );
        }
        let count = |n: Option<i64>| n.map(|n| Quantity(n.to_string()));
        put("pods".into(), &count(self.counts.pods));
        put(
            "persistentvolumeclaims".into(),
            &count(self.counts.persistent_volume_claims),
        );
        put(
            "services.loadbalancers".into(),
            &count(self.counts.load_balancers),
        );
        put(VM_COUNT_KEY.into(), &count(self.counts.virtual_machines));
        put(CLUSTER_COUNT_KEY.into(), &count(self.counts.clusters));
        hard
    }
}

/// A preset namespace configuration that members of some groups may instantiate.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "visor.dev",
    version = "v1alpha1",
    kind = "NamespaceTemplate",
    plural = "namespacetemplates",
    shortname = "nstemplate",
    category = "visor",
    printcolumn = r#"{"name":"Groups","type":"string","jsonPath":".spec.groups"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceTemplateSpec {
    /// The groups whose members may create namespaces from this template.
    #[schemars(length(min = 1))]
    pub groups: Vec<String>,
    /// The configuration each namespace made from this template starts with. The requester
    /// is added to its permissions as `owner`.
    pub namespace: SupervisorNamespaceSpec,
}

/// A request, by a member of a template's groups, for a namespace made from the template.
/// The namespace takes the request's name.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "visor.dev",
    version = "v1alpha1",
    kind = "NamespaceRequest",
    plural = "namespacerequests",
    shortname = "nsreq",
    category = "visor",
    status = "NamespaceRequestStatus",
    printcolumn = r#"{"name":"Template","type":"string","jsonPath":".spec.template"}"#,
    printcolumn = r#"{"name":"Requester","type":"string","jsonPath":".spec.requester"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceRequestSpec {
    /// The NamespaceTemplate to create the namespace from.
    #[schemars(length(min = 1))]
    pub template: String,
    /// Who asked: set by the server from the authenticated user when the request is created;
    /// whatever a client sends here is replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester: Option<String>,
}

/// What became of a NamespaceRequest.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceRequestStatus {
    /// `Ready`: the SupervisorNamespace exists and is ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The annotation on a NamespaceRequest naming the groups the requester belonged to when
/// the request was created (set by the server, comma-separated).
pub const REQUESTER_GROUPS_ANNOTATION: &str = "visor.dev/requester-groups";

/// The CRDs of this module's kinds.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        SupervisorNamespace::crd(),
        NamespaceTemplate::crd(),
        NamespaceRequest::crd(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crds_are_cluster_scoped_with_bounded_zones() {
        let crd = serde_json::to_value(SupervisorNamespace::crd()).unwrap();
        assert_eq!(crd["spec"]["scope"], "Cluster");
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(spec["properties"]["zones"]["maxItems"], 3);
        assert_eq!(
            spec["properties"]["permissions"]["items"]["properties"]["role"]["enum"],
            serde_json::json!(["view", "edit", "owner"])
        );
        let columns = &crd["spec"]["versions"][0]["additionalPrinterColumns"];
        assert_eq!(columns[0]["jsonPath"], ".status.summary.cpu");
    }

    #[test]
    fn quota_keys_follow_upstream() {
        let spec = SupervisorNamespaceSpec {
            limits: Limits {
                cpu: Some(Quantity("4".into())),
                memory: None,
                storage: Some(Quantity("100Gi".into())),
            },
            storage_classes: vec![StorageClassAllowance {
                name: "gold".into(),
                limit: Some(Quantity("10Gi".into())),
            }],
            counts: Counts {
                pods: Some(10),
                virtual_machines: Some(2),
                ..Counts::default()
            },
            ..SupervisorNamespaceSpec::default()
        };
        let hard: Vec<(String, String)> = spec
            .quota_hard()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        assert_eq!(
            hard,
            [
                ("count/virtualmachines.vmoperator.vmware.com", "2"),
                ("gold.storageclass.storage.k8s.io/requests.storage", "10Gi"),
                ("limits.cpu", "4"),
                ("pods", "10"),
                ("requests.storage", "100Gi"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }
}
