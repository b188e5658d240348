//! CustomResourceDefinitions: making a CRD object serve a new kind.
//!
//! Flow, driven by [`run`], which follows the CRDs in the watch cache:
//! 1. a new or changed CRD becomes one [`ResourceDef`] per served version, added to the
//!    catalog — from then on discovery, OpenAPI and every verb serve the kind;
//! 2. its status is set: `acceptedNames`, `storedVersions`, and the conditions
//!    `NamesAccepted` and `Established`;
//! 3. a CRD being deleted has its objects deleted first (the `customresourcecleanup`
//!    finalizer holds it), then its kinds leave the catalog.
//!
//! Guarantees: a kind is served only while its CRD exists and accepts the names; objects of a
//! deleted CRD are gone before the CRD is. Objects are stored in the storage version and
//! served in the version asked for (conversion strategy `None`: only `apiVersion` changes).

pub mod schema;

use std::sync::Arc;

use futures::StreamExt;
use serde_json::{Value, json};
use visor_store::cache::{CacheEventKind, WatchItem};

use crate::kinds::{CellSource, Column, FieldError, ResourceDef, Subresource};
use crate::object;
use crate::registry::{DeleteOptions, Registry, Scope};
use crate::request::Query;
use schema::StructuralSchema;

/// The finalizer that holds a CRD until its objects are deleted.
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";
const CRD_PREFIX: &str = "/registry/apiextensions.k8s.io/customresourcedefinitions/";

/// Where a custom resource's scale subresource reads and writes.
#[derive(Debug, Clone)]
pub struct ScalePaths {
    /// JSON pointer of the desired replicas, e.g. `/spec/replicas`.
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

/// What the registry needs to serve one version of a custom resource.
#[derive(Debug, Clone)]
pub struct CustomResource {
    pub schema: StructuralSchema,
    /// The version objects are stored in.
    pub storage_version: String,
    pub scale: Option<ScalePaths>,
}

impl CustomResource {
    /// The `apiVersion` objects are stored with.
    pub fn storage_api_version(&self, group: &str) -> String {
        format!("{group}/{}", self.storage_version)
    }
}

/// A `.spec.replicas`-style JSON path from a CRD turned into a JSON pointer.
fn pointer(path: &str) -> String {
    path.trim_start_matches('.')
        .split('.')
        .fold(String::new(), |acc, part| format!("{acc}/{part}"))
}

/// Kubernetes' version priority: GA before beta before alpha, higher numbers first, then the
/// rest alphabetically.
fn version_priority(version: &str) -> (u8, i64, i64, String) {
    let parse = |s: &str| -> Option<(u8, i64, i64)> {
        let rest = s.strip_prefix('v')?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let major: i64 = digits.parse().ok()?;
        let tail = &rest[digits.len()..];
        if tail.is_empty() {
            return Some((0, -major, 0));
        }
        for (stage, rank) in [("beta", 1u8), ("alpha", 2u8)] {
            if let Some(n) = tail.strip_prefix(stage) {
                let minor: i64 = n.parse().ok()?;
                return Some((rank, -major, -minor));
            }
        }
        None
    };
    match parse(version) {
        Some((rank, major, minor)) => (rank, major, minor, String::new()),
        None => (3, 0, 0, version.to_string()),
    }
}

/// The resources a CRD serves, one per served version, preferred version first.
pub fn resource_defs(crd: &Value) -> Vec<ResourceDef> {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default();
    let names = &spec["names"];
    let kind = names["kind"].as_str().unwrap_or_default();
    let plural = names["plural"].as_str().unwrap_or_default();
    let singular = names["singular"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_ascii_lowercase());
    let namespaced = spec["scope"].as_str() != Some("Cluster");
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let versions: Vec<&Value> = spec["versions"]
        .as_array()
        .map(|v| v.iter().collect())
        .unwrap_or_default();
    let storage_version = versions
        .iter()
        .find(|v| v["storage"].as_bool() == Some(true))
        .and_then(|v| v["name"].as_str())
        .unwrap_or_default()
        .to_string();
    let mut served: Vec<&Value> = versions
        .into_iter()
        .filter(|v| v["served"].as_bool() == Some(true))
        .collect();
    served.sort_by_key(|v| version_priority(v["name"].as_str().unwrap_or_default()));
    served
        .iter()
        .enumerate()
        .map(|(index, version)| {
            let name = version["name"].as_str().unwrap_or_default();
            let mut def = ResourceDef::new(group, name, kind, plural, namespaced);
            def.singular = singular.clone();
            if let Some(list_kind) = names["listKind"].as_str() {
                def.list_kind = list_kind.to_string();
            }
            def.short_names = strings(&names["shortNames"]);
            def.categories = strings(&names["categories"]);
            def.tracks_generation = true;
            def.preferred = index == 0;
            let subresources = &version["subresources"];
            if subresources.get("status").is_some() {
                def.subresources.push(Subresource::Status);
            }
            let scale = subresources.get("scale").map(|s| ScalePaths {
                spec_replicas: pointer(s["specReplicasPath"].as_str().unwrap_or(".spec.replicas")),
                status_replicas: pointer(
                    s["statusReplicasPath"]
                        .as_str()
                        .unwrap_or(".status.replicas"),
                ),
                label_selector: s["labelSelectorPath"].as_str().map(pointer),
            });
            if scale.is_some() {
                def.subresources.push(Subresource::Scale);
            }
            let mut columns = vec![Column::name()];
            let printer_columns = version["additionalPrinterColumns"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut has_age = false;
            for c in &printer_columns {
                let type_ = match c["type"].as_str().unwrap_or("string") {
                    "integer" => "integer",
                    "number" => "number",
                    "boolean" => "boolean",
                    "date" => "date",
                    _ => "string",
                };
                let path = c["jsonPath"].as_str().unwrap_or_default();
                let source = if path == ".metadata.creationTimestamp" {
                    has_age = true;
                    CellSource::Age
                } else {
                    CellSource::Path(path.to_string())
                };
                let mut column = Column::new(
                    c["name"].as_str().unwrap_or_default(),
                    type_,
                    c["priority"].as_i64().unwrap_or(0) as i32,
                    source,
                );
                column.description = c["description"].as_str().unwrap_or_default().to_string();
                columns.push(column);
            }
            if !has_age {
                columns.push(Column::age());
            }
            def.columns = columns;
            def.selectable_fields = version["selectableFields"]
                .as_array()
                .map(|f| {
                    f.iter()
                        .filter_map(|f| f["jsonPath"].as_str())
                        .map(|p| p.trim_start_matches('.').to_string())
                        .collect()
                })
                .unwrap_or_default();
            let schema = version
                .pointer("/schema/openAPIV3Schema")
                .cloned()
                .unwrap_or_else(
                    || json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
                );
            def.openapi_schema = Some(schema.clone());
            def.custom = Some(Arc::new(CustomResource {
                schema: StructuralSchema::new(schema),
                storage_version: storage_version.clone(),
                scale,
            }));
            def
        })
        .collect()
}

fn dns_label(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !value.starts_with('-')
        && !value.ends_with('-')
}

/// Validates a CustomResourceDefinition as upstream does for the rules that matter to serving.
pub fn validate(crd: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default();
    let plural = spec
        .pointer("/names/plural")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let name = object::name(crd);
    if group.is_empty() {
        errors.push(FieldError::required("spec.group", ""));
    } else if !group.contains('.') {
        errors.push(FieldError::invalid(
            "spec.group",
            &json!(group),
            "should be a domain with at least one dot",
        ));
    }
    if plural.is_empty() {
        errors.push(FieldError::required("spec.names.plural", ""));
    } else if !dns_label(plural) {
        errors.push(FieldError::invalid(
            "spec.names.plural",
            &json!(plural),
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'",
        ));
    }
    if !group.is_empty() && !plural.is_empty() && name != format!("{plural}.{group}") {
        errors.push(FieldError::invalid(
            "metadata.name",
            &json!(name),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    let kind = spec
        .pointer("/names/kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if kind.is_empty() {
        errors.push(FieldError::required("spec.names.kind", ""));
    }
    if let Some(list_kind) = spec.pointer("/names/listKind").and_then(Value::as_str)
        && list_kind == kind
    {
        errors.push(FieldError::invalid(
            "spec.names.listKind",
            &json!(list_kind),
            "kind and listKind may not be the same",
        ));
    }
    match spec["scope"].as_str() {
        Some("Namespaced") | Some("Cluster") => {}
        Some(other) => errors.push(FieldError::not_supported(
            "spec.scope",
            &json!(other),
            &["Cluster", "Namespaced"],
        )),
        None => errors.push(FieldError::required("spec.scope", "")),
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        errors.push(FieldError::required(
            "spec.versions",
            "must have exactly one version marked as storage version",
        ));
    }
    let storage = versions
        .iter()
        .filter(|v| v["storage"].as_bool() == Some(true))
        .count();
    if !versions.is_empty() && storage != 1 {
        errors.push(FieldError::invalid(
            "spec.versions",
            &json!(
                versions
                    .iter()
                    .map(|v| v["name"].clone())
                    .collect::<Vec<_>>()
            ),
            "must have exactly one version marked as storage version",
        ));
    }
    let mut seen = Vec::new();
    for (i, v) in versions.iter().enumerate() {
        let version = v["name"].as_str().unwrap_or_default();
        if !dns_label(version) {
            errors.push(FieldError::invalid(
                format!("spec.versions[{i}].name"),
                &v["name"],
                "a DNS-1035 label must consist of lower case alphanumeric characters or '-'",
            ));
        }
        if seen.contains(&version) {
            errors.push(FieldError::duplicate(
                format!("spec.versions[{i}].name"),
                &v["name"],
            ));
        }
        seen.push(version);
        match v.pointer("/schema/openAPIV3Schema") {
            Some(s) => schema::check_schema(
                s,
                &format!("spec.versions[{i}].schema.openAPIV3Schema"),
                &mut errors,
            ),
            None => errors.push(FieldError::required(
                format!("spec.versions[{i}].schema.openAPIV3Schema"),
                "schemas are required",
            )),
        }
    }
    if !versions.iter().any(|v| v["served"].as_bool() == Some(true)) && !versions.is_empty() {
        errors.push(FieldError::invalid(
            "spec.versions",
            &json!(seen),
            "must have at least one served version",
        ));
    }
    if let Some(old) = old {
        for field in ["group", "scope"] {
            if old["spec"][field] != spec[field] {
                errors.push(FieldError::invalid(
                    format!("spec.{field}"),
                    &spec[field],
                    "field is immutable",
                ));
            }
        }
    }
    errors
}

/// Serves every CRD that exists now (called once at start, before the server reports ready).
pub async fn serve_existing(registry: &Arc<Registry>) {
    let (snapshot, _) = registry.cache.list(CRD_PREFIX);
    for (_, cached) in snapshot {
        reconcile(registry, cached.value()).await;
    }
}

/// Serves the CRDs in the store and follows their changes.
pub async fn run(registry: Arc<Registry>) {
    loop {
        let (snapshot, _, mut watch) = registry.cache.snapshot_and_watch(CRD_PREFIX);
        for (_, cached) in snapshot {
            reconcile(&registry, cached.value()).await;
        }
        while let Some(item) = watch.next().await {
            match item {
                WatchItem::Event(event) => match event.kind {
                    CacheEventKind::Deleted => {
                        let crd = event.object.value();
                        remove(&registry, &crd);
                    }
                    _ => reconcile(&registry, event.object.value()).await,
                },
                WatchItem::Progress(_) => {}
            }
        }
        // The cache ended this watch (it fell behind); start again from a fresh snapshot.
        tracing::debug!("CRD watch ended; re-listing");
    }
}

fn remove(registry: &Registry, crd: &Value) {
    let group = crd
        .pointer("/spec/group")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let plural = crd
        .pointer("/spec/names/plural")
        .and_then(Value::as_str)
        .unwrap_or_default();
    registry.catalog.remove(group, plural);
    tracing::info!(crd = object::name(crd), "stopped serving custom resource");
}

fn crd_scope(registry: &Registry) -> Option<Scope> {
    let def = registry
        .catalog
        .lookup("apiextensions.k8s.io", "v1", "customresourcedefinitions")?;
    Some(Scope {
        def,
        namespace: None,
    })
}

pub(crate) async fn reconcile(registry: &Arc<Registry>, crd: Value) {
    let name = object::name(&crd).to_string();
    if object::is_deleting(&crd) {
        if object::finalizers(&crd)
            .iter()
            .any(|f| f == CLEANUP_FINALIZER)
        {
            let registry = registry.clone();
            // Cleanup may take a while (objects with finalizers); don't hold up other CRDs.
            tokio::spawn(async move { cleanup(&registry, crd).await });
        }
        return;
    }
    let group = crd
        .pointer("/spec/group")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let plural = crd
        .pointer("/spec/names/plural")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let defs = resource_defs(&crd);
    let conflict = registry
        .catalog
        .all()
        .iter()
        .any(|d| d.group == group && d.plural == plural && d.custom.is_none());
    if !conflict {
        registry.catalog.remove(&group, &plural);
        for def in defs {
            registry.catalog.upsert(def);
        }
        tracing::info!(crd = %name, "serving custom resource");
    }
    let Some(scope) = crd_scope(registry) else {
        return;
    };
    let storage = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .and_then(|v| v.iter().find(|v| v["storage"].as_bool() == Some(true)))
        .and_then(|v| v["name"].as_str())
        .unwrap_or_default()
        .to_string();
    let now = object::now_rfc3339();
    let result = registry
        .guaranteed_update(&scope, &name, None, false, |current| {
            let mut next = current.clone();
            let mut finalizers = object::finalizers(&next);
            if !finalizers.iter().any(|f| f == CLEANUP_FINALIZER) && !object::is_deleting(&next) {
                finalizers.push(CLEANUP_FINALIZER.into());
                object::meta_mut(&mut next).insert("finalizers".into(), json!(finalizers));
            }
            let mut stored: Vec<String> = next
                .pointer("/status/storedVersions")
                .and_then(Value::as_array)
                .map(|v| v.iter().filter_map(Value::as_str).map(str::to_string).collect())
                .unwrap_or_default();
            if !stored.contains(&storage) {
                stored.push(storage.clone());
            }
            let accepted = if conflict { "False" } else { "True" };
            let conditions = vec![
                condition(current, "NamesAccepted", accepted, if conflict { "ConflictingNames" } else { "NoConflicts" }, if conflict { "the plural name is already served by a built-in resource" } else { "no conflicts found" }, &now),
                condition(current, "Established", accepted, if conflict { "NotAccepted" } else { "InitialNamesAccepted" }, if conflict { "not all names are accepted" } else { "the initial names have been accepted" }, &now),
            ];
            let accepted_names = if conflict { json!({"plural": "", "kind": ""}) } else { current["spec"]["names"].clone() };
            next["status"] = json!({ "acceptedNames": accepted_names, "storedVersions": stored, "conditions": conditions });
            Ok(next)
        })
        .await;
    if let Err(e) = result {
        tracing::warn!(crd = %name, error = %e, "updating CRD status");
    }
}

/// A condition, keeping its transition time when its status did not change.
fn condition(
    current: &Value,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: &str,
) -> Value {
    let previous = current
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == type_));
    let since = match previous {
        Some(p) if p["status"] == status => p["lastTransitionTime"].clone(),
        _ => json!(now),
    };
    json!({ "type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": since })
}

/// Deletes every object of a CRD that is being deleted, then releases the CRD.
async fn cleanup(registry: &Arc<Registry>, crd: Value) {
    let name = object::name(&crd).to_string();
    let group = crd
        .pointer("/spec/group")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let plural = crd
        .pointer("/spec/names/plural")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    loop {
        let def = registry
            .catalog
            .all()
            .into_iter()
            .find(|d| d.group == group && d.plural == plural && d.custom.is_some());
        let remaining = match def {
            Some(def) => {
                let scope = Scope {
                    def,
                    namespace: None,
                };
                match registry
                    .delete_collection(&scope, &Query::default(), &DeleteOptions::default())
                    .await
                {
                    Ok(_) => registry
                        .list(&scope, &Query::default())
                        .await
                        .map(|l| l.items.len())
                        .unwrap_or(1),
                    Err(e) => {
                        tracing::warn!(crd = %name, error = %e, "deleting custom resources");
                        1
                    }
                }
            }
            None => 0,
        };
        if remaining == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    registry.catalog.remove(&group, &plural);
    let Some(scope) = crd_scope(registry) else {
        return;
    };
    let result = registry
        .guaranteed_update(&scope, &name, None, false, |current| {
            let mut next = current.clone();
            let finalizers: Vec<String> = object::finalizers(current)
                .into_iter()
                .filter(|f| f != CLEANUP_FINALIZER)
                .collect();
            object::meta_mut(&mut next).insert("finalizers".into(), json!(finalizers));
            Ok(next)
        })
        .await;
    match result {
        Ok(_) => tracing::info!(crd = %name, "custom resources deleted; CRD released"),
        Err(e) if e.code == 404 => {}
        Err(e) => tracing::warn!(crd = %name, error = %e, "releasing CRD"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd() -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com",
                "scope": "Namespaced",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"], "categories": ["all"]},
                "versions": [
                    {"name": "v1beta1", "served": true, "storage": false, "schema": {"openAPIV3Schema": {"type": "object"}}},
                    {"name": "v1", "served": true, "storage": true,
                     "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object", "properties": {"replicas": {"type": "integer"}}}}}},
                     "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}},
                     "additionalPrinterColumns": [{"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"}]}
                ]
            }
        })
    }

    #[test]
    fn served_versions_become_resources_preferred_first() {
        let defs = resource_defs(&crd());
        assert_eq!(defs.len(), 2);
        assert_eq!((defs[0].version.as_str(), defs[0].preferred), ("v1", true));
        assert_eq!(
            (defs[1].version.as_str(), defs[1].preferred),
            ("v1beta1", false)
        );
        assert_eq!(defs[0].short_names, vec!["wd"]);
        assert!(defs[0].has(Subresource::Status) && defs[0].has(Subresource::Scale));
        assert!(!defs[1].has(Subresource::Status));
        let names: Vec<&str> = defs[0].columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, vec!["Name", "Replicas", "Age"]);
        assert_eq!(defs[1].custom.as_ref().unwrap().storage_version, "v1");
    }

    #[test]
    fn crd_validation_catches_common_mistakes() {
        assert!(
            validate(&crd(), None).is_empty(),
            "{:?}",
            validate(&crd(), None)
        );
        let mut bad = crd();
        bad["metadata"]["name"] = json!("widgets.other.com");
        bad["spec"]["versions"][0]["storage"] = json!(true);
        bad["spec"]["scope"] = json!("Global");
        let fields: Vec<String> = validate(&bad, None).into_iter().map(|e| e.field).collect();
        assert!(fields.contains(&"metadata.name".to_string()), "{fields:?}");
        assert!(fields.contains(&"spec.versions".to_string()), "{fields:?}");
        assert!(fields.contains(&"spec.scope".to_string()), "{fields:?}");
    }

    #[test]
    fn version_priority_orders_like_kubernetes() {
        let mut versions = vec![
            "v1alpha1", "foo", "v2beta1", "v1", "v2", "v1beta2", "v1beta1",
        ];
        versions.sort_by_key(|v| version_priority(v));
        assert_eq!(
            versions,
            vec![
                "v2", "v1", "v2beta1", "v1beta2", "v1beta1", "v1alpha1", "foo"
            ]
        );
    }
}
