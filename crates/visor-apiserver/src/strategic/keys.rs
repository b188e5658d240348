//! Strategic-merge metadata of the built-in kinds, as data.
//!
//! Upstream keeps how each list or map field merges as Go struct tags (`patchStrategy`,
//! `patchMergeKey`) on the k8s.io/api types; neither the protobuf definitions nor the OpenAPI
//! types this server is built from carry them. This table restates every tagged field of the
//! served API groups: the message that declares the field (its full name as in the generated
//! protobuf schema), the field's JSON name, its strategy and, for lists of objects, the key that
//! identifies an element. Fields not listed are atomic: a patch replaces a list whole and merges
//! a map key by key.

/// How a field merges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Lists merge: objects by their merge key, scalars as a set union.
    Merge,
    /// As `Merge`, and each element's patch may carry `$retainKeys`.
    MergeRetainKeys,
    /// The object may carry `$retainKeys` (it is otherwise merged key by key).
    RetainKeys,
    /// The patch replaces the value whole, even an object.
    Replace,
}

impl Strategy {
    /// Whether lists of this field merge rather than being replaced.
    pub fn merges_lists(self) -> bool {
        matches!(self, Strategy::Merge | Strategy::MergeRetainKeys)
    }
}

/// (declaring message, JSON field, strategy, merge key), sorted by message then field for
/// binary search. An empty merge key marks a list of scalars.
pub static PATCH_KEYS: &[(&str, &str, Strategy, &str)] = &[
    (
        "k8s.io.api.admissionregistration.v1.MutatingWebhook",
        "matchConditions",
        Strategy::Merge,
        "name",
    ),
    (
        "k8s.io.api.admissionregistration.v1.MutatingWebhookConfiguration",
        "webhooks",
        Strategy::Merge,
        "name",
    ),
    (
        "k8s.io.api.admissionregistration.v1.ValidatingAdmissionPolicySpec",
        "matchConditions",
        Strategy::Merge,
        "name",
    ),
    (
        "k8s.io.api.admissionregistration.v1.ValidatingAdmissionPolicySpec",
        "variables",
        Strategy::Merge,
        "name",
    ),
    (
        "k8s.io.api.admissionregistration.v1.ValidatingWebhook",
        "matchConditions",
        Strategy::Merge,
        "name",
    ),
    (
        "k8s.io.api.admissionregistration.v1.ValidatingWebhookConfiguration",
        "webhooks",
        Strategy::Merge,
        "name",
    ),
    (
        "k8s.io.api.admissionregistration.v1alpha1.MutatingAdmissionPolicySpec",
        "matchConditions",
        Strategy::Merge,
        "name",
    ),
    (
        "k8s.io.api.admissionregistration.v1alpha1.ValidatingAdmissionPolicySpec",
        "matchConditions",
        Strategy::Merge,
        "name",
    ),
    (
        "k8s.io.api.admissionregistration.v1alpha1.ValidatingAdmissionPolicySpec",
        "variables",
        Strategy::Merge,
        "name",
    ),
    (
        "k8s.io.api.admissionregistration.v1beta1.MutatingAdmissionPolicySpec",
        "matchConditions",
        Strategy::Merge,
        "name",
    ),
    (
        "k8s.io.api.admissionregistration.v1beta1.MutatingWebhook",
        "matchConditions",
        Strategy::Merge,
        "name",
    ),
    (
        "k8s.io.api.admissionregistration.v1beta1.MutatingWebhookConfiguration",
        "webhooks",
        Strategy::Merge,
        "name",
    ),
    (
        "k8s.io.api.admissionregistration.v1beta1.ValidatingAdmissionPolicySpec",
        "matchConditions",
        Strategy::Merge,
        "name",
    ),
    (
        "k8s.io.api.admissionregistration.v1beta1.ValidatingAdmissionPolicySpec",
        "variables",
        Strategy::Merge,
        "name",
    ),
    (
        "k8s.io.api.admissionregistration.v1beta1.ValidatingWebhook",
        "matchConditions",
        Strategy::Merge,
        "name",
    ),
    (
        "k8s.io.api.admissionregistration.v1beta1.ValidatingWebhookConfiguration",
        "webhooks",
        Strategy::Merge,
        "name",
    ),
    (
        "k8s.io.api.apps.v1.DaemonSetStatus",
        "conditions",
        Strategy::Merge,
        "type",
    ),
    (
        "k8s.io.api.apps.v1.DeploymentSpec",
        "strategy",
        Strategy::RetainKeys,
        "",
    ),
    (
        "k8s.io.api.apps.v1.DeploymentStatus",
        "conditions",
        Strategy::Merge,
        "type",
    ),
    (
        "k8s.io.api.apps.v1.ReplicaSetStatus",
        "conditions",
        Strategy::Merge,
        "type",
    ),
    (
        "k8s.io.api.apps.v1.StatefulSetStatus",
        "conditions",
        Strategy::Merge,
        "type",
    ),
    (
        "k8s.io.api.apps.v1beta1.DeploymentSpec",
        "strategy",
        Strategy::RetainKeys,
        "",
    ),
    (
        "k8s.io.api.apps.v1beta1.DeploymentStatus",
        "conditions",
        Strategy::Merge,
        "type",
    ),
    (
        "k8s.io.api.apps.v1beta1.StatefulSetStatus",
        "conditions",
        Strategy::Merge,
        "type",
    ),
    (
        "k8s.io.api.apps.v1beta2.DaemonSetStatus",
        "conditions",
        Strategy::Merge,
        "type",
    ),
    (
        "k8s.io.api.apps.v1beta2.DeploymentSpec",
        "strategy",
        Strategy::RetainKeys,
        "",
    ),
    (
        "k8s.io.api.apps.v1beta2.DeploymentStatus",
        "conditions",
        Strategy::Merge,
        "type",
    ),
    (
        "k8s.io.api.apps.v1beta2.ReplicaSetStatus",
        "conditions",
        Strategy::Merge,
        "type",
    ),
    (
        "k8s.io.api.apps.v1beta2.StatefulSetStatus",
        "conditions",
        Strategy::Merge,
        "type",
    ),
    (
        "k8s.io.api.autoscaling.v2.HorizontalPodAutoscalerStatus",
        "conditions",
        Strategy::Merge,
        "type",
    ),
    (
        "k8s.io.api.batch.v1.JobStatus",
        "conditions",
        Strategy::Merge,
        "type",
    ),
    (
        "k8s.io.api.core.v1.ComponentStatus",
        "conditions",
        Strategy::Merge,
        "type",
    ),
    (
        "k8s.io.api.core.v1.Container",
        "env",
        Strategy::Merge,
        "name",
    ),
    (
        "k8s.io.api.core.v1.Container",
        "ports",
        Strategy::Merge,
        "containerPort",
    ),
    (
        "k8s.io.api.core.v1.Container",
        "volumeDevices",
        Strategy::Merge,
        "devicePath",
    ),
    (
        "k8s.io.api.core.v1.Container",
        "volumeMounts",
        Strategy::Merge,
        "mountPath",
    ),
    (
        "k8s.io.api.core.v1.ContainerStatus",
        "allocatedResourcesStatus",
        Strategy::Merge,
        "name",
    ),
    (
        "k8s.io.api.core.v1.ContainerStatus",
        "volumeMounts",
        Strategy::Merge,
        "mountPath",
    ),
    (
        "k8s.io.api.core.v1.EphemeralContainerCommon",
        "env",
        Strategy::Merge,
        "name",
    ),
    (
        "k8s.io.api.core.v1.EphemeralContainerCommon",
        "ports",
        Strategy::Merge,
        "containerPort",
    ),
    (
        "k8s.io.api.core.v1.EphemeralContainerCommon",
        "volumeDevices",
        Strategy::Merge,
        "devicePath",
    ),
    (
        "k8s.io.api.core.v1.EphemeralContainerCommon",
        "volumeMounts",
        Strategy::Merge,
        "mountPath",
    ),
    (
        "k8s.io.api.core.v1.NamespaceStatus",
        "conditions",
        Strategy::Merge,
        "type",
    ),
    (
        "k8s.io.api.core.v1.NodeSpec",
        "podCIDRs",
        Strategy::Merge,
        "",
    ),
    (
        "k8s.io.api.core.v1.NodeStatus",
        "addresses",
        Strategy::Merge,
        "type",
    ),
    (
        "k8s.io.api.core.v1.NodeStatus",
        "conditions",
        Strategy::Merge,
        "type",
    ),
    (
        "k8s.io.api.core.v1.PersistentVolumeClaimStatus",
        "conditions",
        Strategy::Merge,
        "type",
    ),
    (
        "k8s.io.api.core.v1.PodSpec",
        "containers",
        Strategy::Merge,
        "name",
    ),
    (
        "k8s.io.api.core.v1.PodSpec",
        "ephemeralContainers",
        Strategy::Merge,
        "name",
    ),
    (
        "k8s.io.api.core.v1.PodSpec",
        "hostAliases",
        Strategy::Merge,
        "ip",
    ),
    (
        "k8s.io.api.core.v1.PodSpec",
        "imagePullSecrets",
        Strategy::Merge,
        "name",
    ),
    (
        "k8s.io.api.core.v1.PodSpec",
        "initContainers",
        Strategy::Merge,
        "name",
    ),
    (
        "k8s.io.api.core.v1.PodSpec",
        "resourceClaims",
        Strategy::MergeRetainKeys,
        "name",
    ),
    (
        "k8s.io.api.core.v1.PodSpec",
        "schedulingGates",
        Strategy::Merge,
        "name",
    ),
    (
        "k8s.io.api.core.v1.PodSpec",
        "topologySpreadConstraints",
        Strategy::Merge,
        "topologyKey",
    ),
    (
        "k8s.io.api.core.v1.PodSpec",
        "volumes",
        Strategy::MergeRetainKeys,
        "name",
    ),
    (
        "k8s.io.api.core.v1.PodStatus",
        "conditions",
        Strategy::Merge,
        "type",
    ),
    (
        "k8s.io.api.core.v1.PodStatus",
        "hostIPs",
        Strategy::Merge,
        "ip",
    ),
    (
        "k8s.io.api.core.v1.PodStatus",
        "podIPs",
        Strategy::Merge,
        "ip",
    ),
    (
        "k8s.io.api.core.v1.PodStatus",
        "resourceClaimStatuses",
        Strategy::MergeRetainKeys,
        "name",
    ),
    (
        "k8s.io.api.core.v1.ReplicationControllerStatus",
        "conditions",
        Strategy::Merge,
        "type",
    ),
    (
        "k8s.io.api.core.v1.ServiceAccount",
        "secrets",
        Strategy::Merge,
        "name",
    ),
    (
        "k8s.io.api.core.v1.ServiceSpec",
        "ports",
        Strategy::Merge,
        "port",
    ),
    (
        "k8s.io.api.core.v1.ServiceStatus",
        "conditions",
        Strategy::Merge,
        "type",
    ),
    (
        "k8s.io.api.extensions.v1beta1.DaemonSetStatus",
        "conditions",
        Strategy::Merge,
        "type",
    ),
    (
        "k8s.io.api.extensions.v1beta1.DeploymentSpec",
        "strategy",
        Strategy::RetainKeys,
        "",
    ),
    (
        "k8s.io.api.extensions.v1beta1.DeploymentStatus",
        "conditions",
        Strategy::Merge,
        "type",
    ),
    (
        "k8s.io.api.extensions.v1beta1.ReplicaSetStatus",
        "conditions",
        Strategy::Merge,
        "type",
    ),
    (
        "k8s.io.api.flowcontrol.v1.FlowSchemaStatus",
        "conditions",
        Strategy::Merge,
        "type",
    ),
    (
        "k8s.io.api.flowcontrol.v1.PriorityLevelConfigurationStatus",
        "conditions",
        Strategy::Merge,
        "type",
    ),
    (
        "k8s.io.api.flowcontrol.v1beta1.FlowSchemaStatus",
        "conditions",
        Strategy::Merge,
        "type",
    ),
    (
        "k8s.io.api.flowcontrol.v1beta1.PriorityLevelConfigurationStatus",
        "conditions",
        Strategy::Merge,
        "type",
    ),
    (
        "k8s.io.api.flowcontrol.v1beta2.FlowSchemaStatus",
        "conditions",
        Strategy::Merge,
        "type",
    ),
    (
        "k8s.io.api.flowcontrol.v1beta2.PriorityLevelConfigurationStatus",
        "conditions",
        Strategy::Merge,
        "type",
    ),
    (
        "k8s.io.api.flowcontrol.v1beta3.FlowSchemaStatus",
        "conditions",
        Strategy::Merge,
        "type",
    ),
    (
        "k8s.io.api.flowcontrol.v1beta3.PriorityLevelConfigurationStatus",
        "conditions",
        Strategy::Merge,
        "type",
    ),
    (
        "k8s.io.api.networking.v1.ServiceCIDRStatus",
        "conditions",
        Strategy::Merge,
        "type",
    ),
    (
        "k8s.io.api.networking.v1beta1.ServiceCIDRStatus",
        "conditions",
        Strategy::Merge,
        "type",
    ),
    (
        "k8s.io.api.policy.v1.PodDisruptionBudgetSpec",
        "selector",
        Strategy::Replace,
        "",
    ),
    (
        "k8s.io.api.policy.v1.PodDisruptionBudgetStatus",
        "conditions",
        Strategy::Merge,
        "type",
    ),
    (
        "k8s.io.api.policy.v1beta1.PodDisruptionBudgetSpec",
        "selector",
        Strategy::Replace,
        "",
    ),
    (
        "k8s.io.api.policy.v1beta1.PodDisruptionBudgetStatus",
        "conditions",
        Strategy::Merge,
        "type",
    ),
    (
        "k8s.io.api.resource.v1.ResourceClaimStatus",
        "reservedFor",
        Strategy::Merge,
        "uid",
    ),
    (
        "k8s.io.api.resource.v1beta1.ResourceClaimStatus",
        "reservedFor",
        Strategy::Merge,
        "uid",
    ),
    (
        "k8s.io.api.resource.v1beta2.ResourceClaimStatus",
        "reservedFor",
        Strategy::Merge,
        "uid",
    ),
    (
        "k8s.io.api.storage.v1.CSINodeSpec",
        "drivers",
        Strategy::Merge,
        "name",
    ),
    (
        "k8s.io.api.storage.v1beta1.CSINodeSpec",
        "drivers",
        Strategy::Merge,
        "name",
    ),
    (
        "k8s.io.api.storagemigration.v1beta1.StorageVersionMigrationStatus",
        "conditions",
        Strategy::Merge,
        "type",
    ),
    (
        "k8s.io.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "finalizers",
        Strategy::Merge,
        "",
    ),
    (
        "k8s.io.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "ownerReferences",
        Strategy::Merge,
        "uid",
    ),
];

/// The strategy and merge key of `field` as declared in `message`, if it is tagged.
pub fn lookup(message: &str, field: &str) -> Option<(Strategy, &'static str)> {
    let i = PATCH_KEYS
        .binary_search_by(|(m, f, _, _)| (*m, *f).cmp(&(message, field)))
        .ok()?;
    PATCH_KEYS.get(i).map(|(_, _, s, k)| (*s, *k))
}

#[cfg(test)]
mod tests {
    use super::super::graph::{self, Node};
    use super::*;

    #[test]
    fn table_is_sorted_and_unique() {
        for pair in PATCH_KEYS.windows(2) {
            assert!(
                (pair[0].0, pair[0].1) < (pair[1].0, pair[1].1),
                "{pair:?} out of order"
            );
        }
    }

    /// Every entry names a real field of a real message, and every merge key is a field of the
    /// list's elements, so a typo or a schema change cannot silently disable a merge.
    #[test]
    fn every_entry_matches_the_schema() {
        for (message, field, strategy, key) in PATCH_KEYS {
            let node = graph::message_node_by_name(message)
                .unwrap_or_else(|| panic!("{message} is not in the schema"));
            let found = graph::child(node, field)
                .unwrap_or_else(|| panic!("{message} has no field {field}"));
            assert_eq!(
                found.owner, *message,
                "{message}.{field} is declared elsewhere"
            );
            if key.is_empty() {
                continue;
            }
            assert!(
                strategy.merges_lists(),
                "{message}.{field}: key without merge"
            );
            assert!(
                matches!(found.node, Node::Message(_)),
                "{message}.{field} does not hold objects"
            );
            assert!(
                graph::child(found.node, key).is_some(),
                "{message}.{field} elements have no {key}"
            );
        }
    }

    #[test]
    fn common_fields_are_tagged() {
        assert_eq!(
            lookup("k8s.io.api.core.v1.PodSpec", "containers"),
            Some((Strategy::Merge, "name"))
        );
        assert_eq!(
            lookup("k8s.io.api.core.v1.Container", "ports"),
            Some((Strategy::Merge, "containerPort"))
        );
        assert_eq!(
            lookup(
                "k8s.io.apimachinery.pkg.apis.meta.v1.ObjectMeta",
                "finalizers"
            ),
            Some((Strategy::Merge, ""))
        );
        assert_eq!(lookup("k8s.io.api.core.v1.PodSpec", "tolerations"), None);
    }
}
