//! Metadata-only watches that skip field ownership: [`LeanMeta<K>`] is requested like kube's
//! `PartialObjectMeta<K>` (the server sends each object's metadata alone) but decodes
//! without `metadata.managedFields`.
//!
//! Why: the garbage collector and the quota controller watch the metadata of every object
//! written, and field ownership is most of what a metadata event carries — decoding it into
//! typed entries (each a JSON tree) cost more than the rest of the event. Neither controller
//! reads it; serde skips it here without building anything.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::marker::PhantomData;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::Resource;
use serde::Deserialize;

/// An object's metadata, without `managedFields`, for metadata-only requests of `K`.
#[derive(Clone, Debug, Deserialize)]
#[serde(bound = "")]
pub struct LeanMeta<K> {
    #[serde(default, deserialize_with = "without_managed_fields")]
    pub metadata: ObjectMeta,
    #[serde(skip)]
    kind: PhantomData<fn() -> K>,
}

impl<K> LeanMeta<K> {
    #[cfg(test)]
    pub fn new(metadata: ObjectMeta) -> LeanMeta<K> {
        LeanMeta {
            metadata,
            kind: PhantomData,
        }
    }
}

/// Every field of `ObjectMeta` but `managedFields`, which serde skips unread.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetaFields {
    annotations: Option<BTreeMap<String, String>>,
    creation_timestamp: Option<Time>,
    deletion_grace_period_seconds: Option<i64>,
    deletion_timestamp: Option<Time>,
    finalizers: Option<Vec<String>>,
    generate_name: Option<String>,
    generation: Option<i64>,
    labels: Option<BTreeMap<String, String>>,
    name: Option<String>,
    namespace: Option<String>,
    owner_references: Option<Vec<OwnerReference>>,
    resource_version: Option<String>,
    self_link: Option<String>,
    uid: Option<String>,
}

fn without_managed_fields<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<ObjectMeta, D::Error> {
    let m = MetaFields::deserialize(deserializer)?;
    Ok(ObjectMeta {
        annotations: m.annotations,
        creation_timestamp: m.creation_timestamp,
        deletion_grace_period_seconds: m.deletion_grace_period_seconds,
        deletion_timestamp: m.deletion_timestamp,
        finalizers: m.finalizers,
        generate_name: m.generate_name,
        generation: m.generation,
        labels: m.labels,
        managed_fields: None,
        name: m.name,
        namespace: m.namespace,
        owner_references: m.owner_references,
        resource_version: m.resource_version,
        self_link: m.self_link,
        uid: m.uid,
    })
}

impl<K: Resource> Resource for LeanMeta<K> {
    type DynamicType = K::DynamicType;
    type Scope = K::Scope;

    fn metadata_api() -> bool {
        true
    }

    fn kind(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::version(dt)
    }

    fn plural(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use serde_json::json;

    use super::*;

    #[test]
    fn metadata_decodes_without_field_ownership() {
        let event = json!({
            "apiVersion": "meta.k8s.io/v1",
            "kind": "PartialObjectMetadata",
            "metadata": {
                "name": "c", "namespace": "n", "uid": "u", "resourceVersion": "7",
                "generation": 2, "labels": {"a": "b"}, "finalizers": ["f"],
                "deletionTimestamp": "2026-01-01T00:00:00Z",
                "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "o"}],
                "managedFields": [{"manager": "kubectl", "operation": "Update",
                    "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {"f:x": {}}}}]
            }
        });
        let lean: LeanMeta<ConfigMap> = serde_json::from_value(event).unwrap();
        let m = &lean.metadata;
        assert_eq!(m.name.as_deref(), Some("c"));
        assert_eq!(m.namespace.as_deref(), Some("n"));
        assert_eq!(m.uid.as_deref(), Some("u"));
        assert_eq!(m.resource_version.as_deref(), Some("7"));
        assert_eq!(m.generation, Some(2));
        assert_eq!(m.labels.as_ref().unwrap()["a"], "b");
        assert_eq!(m.finalizers.as_deref(), Some(&["f".to_string()][..]));
        assert!(m.deletion_timestamp.is_some());
        assert_eq!(m.owner_references.as_ref().unwrap()[0].uid, "o");
        assert!(m.managed_fields.is_none());
        assert!(LeanMeta::<ConfigMap>::metadata_api());
        assert_eq!(LeanMeta::<ConfigMap>::plural(&()), "configmaps");
    }
}
