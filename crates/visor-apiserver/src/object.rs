//! Objects as the server holds them: JSON values with metadata helpers, and the compact form
//! kept in the watch cache.
//!
//! The store keeps each object's JSON without `metadata.resourceVersion` (the store's mod
//! revision is the version, as in upstream's etcd storage). The cache keeps the bytes a client
//! receives — with the version filled in — plus the few fields selectors need, so a list of a
//! thousand objects is a concatenation of ready bytes rather than a thousand serialisations.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value};
use visor_store::{KeyValue, Revision};

use crate::kinds::{Catalog, printers};

/// An object in the watch cache.
#[derive(Debug)]
pub struct CachedObject {
    /// The object as served, `metadata.resourceVersion` included.
    pub json: Bytes,
    pub labels: Box<[(Box<str>, Box<str>)]>,
    /// `metadata.name`, `metadata.namespace` and the kind's selectable fields.
    pub fields: Box<[(Box<str>, Box<str>)]>,
    pub revision: Revision,
}

impl CachedObject {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| &**k == key)
            .map(|(_, v)| &**v)
    }

    pub fn field(&self, field: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| &**k == field)
            .map(|(_, v)| &**v)
    }

    pub fn value(&self) -> Value {
        serde_json::from_slice(&self.json).unwrap_or(Value::Null)
    }
}

/// Just the `metadata` of an object, borrowed from its JSON text without parsing the rest.
#[derive(serde::Deserialize)]
struct MetadataView<'a> {
    #[serde(borrow)]
    metadata: Option<&'a serde_json::value::RawValue>,
}

/// The parts of metadata the cache indexes.
#[derive(serde::Deserialize, Default)]
struct IndexedMetadata {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
}

/// The raw `metadata` of an object's JSON, and where it starts in the text.
fn raw_metadata(json: &[u8]) -> Option<(&str, usize)> {
    let view: MetadataView = serde_json::from_slice(json).ok()?;
    let raw = view.metadata?.get();
    // The raw value borrows from `json`, so its offset is where the metadata object begins.
    let offset = (raw.as_ptr() as usize).checked_sub(json.as_ptr() as usize)?;
    Some((raw, offset))
}

/// `PartialObjectMetadata` of an object, made from its JSON text without parsing the rest —
/// what metadata-only lists and watches (the garbage collector's) send for every object.
pub fn partial_metadata_bytes(json: &[u8]) -> Option<Vec<u8>> {
    let (raw, _) = raw_metadata(json)?;
    let mut out = Vec::with_capacity(raw.len() + 80);
    out.extend_from_slice(
        br#"{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1","metadata":"#,
    );
    out.extend_from_slice(raw.as_bytes());
    out.push(b'}');
    Some(out)
}

/// The cache's form of an object whose kind has no selectable fields beyond name and
/// namespace: the stored text with `resourceVersion` spliced into its metadata, which the
/// store's form never contains.
fn decode_spliced(kv: &KeyValue) -> Option<CachedObject> {
    let (raw, offset) = raw_metadata(&kv.value)?;
    let indexed: IndexedMetadata = serde_json::from_str(raw).ok()?;
    let trimmed = raw.trim();
    if !trimmed.starts_with('{') || !trimmed.ends_with('}') {
        return None;
    }
    let open = offset + (raw.len() - raw.trim_start().len());
    let version = format!("\"resourceVersion\":\"{}\"", kv.mod_revision);
    let mut json = Vec::with_capacity(kv.value.len() + version.len() + 1);
    json.extend_from_slice(&kv.value[..=open]);
    json.extend_from_slice(version.as_bytes());
    if trimmed != "{}" {
        json.push(b',');
    }
    json.extend_from_slice(&kv.value[open + 1..]);
    let labels = indexed
        .labels
        .into_iter()
        .map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str()))
        .collect();
    let fields: Box<[(Box<str>, Box<str>)]> = Box::new([
        ("metadata.name".into(), indexed.name.into_boxed_str()),
        (
            "metadata.namespace".into(),
            indexed.namespace.into_boxed_str(),
        ),
    ]);
    Some(CachedObject {
        json: Bytes::from(json),
        labels,
        fields,
        revision: kv.mod_revision,
    })
}

/// Builds the cache's form of a stored key-value.
pub fn decode_for_cache(catalog: &Catalog, kv: &KeyValue) -> Option<CachedObject> {
    let def = catalog.for_key(&kv.key);
    if def.as_ref().is_some_and(|d| d.selectable_fields.is_empty())
        && let Some(cached) = decode_spliced(kv)
    {
        return Some(cached);
    }
    let mut value: Value = match serde_json::from_slice(&kv.value) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(key = %kv.key, error = %e, "stored object is not JSON; skipping it");
            return None;
        }
    };
    set_resource_version(&mut value, kv.mod_revision);
    let labels: Box<[(Box<str>, Box<str>)]> = meta(&value)
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .map(|l| {
            l.iter()
                .map(|(k, v)| (k.as_str().into(), v.as_str().unwrap_or_default().into()))
                .collect()
        })
        .unwrap_or_default();
    let mut fields: Vec<(Box<str>, Box<str>)> = vec![
        ("metadata.name".into(), name(&value).into()),
        ("metadata.namespace".into(), namespace(&value).into()),
    ];
    if let Some(def) = def {
        for field in &def.selectable_fields {
            if let Some(v) = printers::field_value(&value, field) {
                fields.push((field.as_str().into(), v.into()));
            }
        }
    }
    let json = Bytes::from(serde_json::to_vec(&value).ok()?);
    Some(CachedObject {
        json,
        labels,
        fields: fields.into_boxed_slice(),
        revision: kv.mod_revision,
    })
}

pub type SharedObject = Arc<CachedObject>;

pub fn meta(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

/// The object's metadata, created if missing.
pub fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = Value::Object(Map::new());
    }
    obj["metadata"]
        .as_object_mut()
        .expect("metadata is an object")
}

pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    meta(obj).and_then(|m| m.get(field)).and_then(Value::as_str)
}

pub fn name(obj: &Value) -> &str {
    meta_str(obj, "name").unwrap_or_default()
}

pub fn namespace(obj: &Value) -> &str {
    meta_str(obj, "namespace").unwrap_or_default()
}

pub fn set_resource_version(obj: &mut Value, revision: Revision) {
    if obj.is_object() {
        meta_mut(obj).insert(
            "resourceVersion".into(),
            Value::String(revision.to_string()),
        );
    }
}

pub fn finalizers(obj: &Value) -> Vec<String> {
    meta(obj)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|f| {
            f.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

pub fn is_deleting(obj: &Value) -> bool {
    meta(obj).is_some_and(|m| m.get("deletionTimestamp").is_some_and(|t| !t.is_null()))
}

/// The current time in the RFC 3339 form Kubernetes uses (second precision, `Z`).
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A time `seconds` from now, in the same form.
pub fn rfc3339_in(seconds: i64) -> String {
    let t = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(seconds);
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Serialises a value for the store: without `resourceVersion`, which the store's revision
/// replaces.
pub fn to_storage_bytes(obj: &Value) -> Bytes {
    storage_bytes(&StorageForm {
        object: obj,
        status_field: None,
    })
}

/// [`to_storage_bytes`] of `obj` with `status.<field>` set to `value`, without copying the
/// object to change one field.
pub fn to_storage_bytes_with_status(obj: &Value, field: &str, value: &Value) -> Bytes {
    storage_bytes(&StorageForm {
        object: obj,
        status_field: Some((field, value)),
    })
}

fn storage_bytes(form: &StorageForm<'_>) -> Bytes {
    Bytes::from(serde_json::to_vec(form).expect("a JSON value serialises"))
}

/// An object as stored: `metadata.resourceVersion` left out while serialising, so a write
/// need not copy the whole object to drop one field; `status_field` replaces (or adds) one
/// field of `status`.
struct StorageForm<'a> {
    object: &'a Value,
    status_field: Option<(&'a str, &'a Value)>,
}

impl serde::Serialize for StorageForm<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let Value::Object(fields) = self.object else {
            return self.object.serialize(serializer);
        };
        let adds_status = self.status_field.is_some() && !fields.contains_key("status");
        let mut map = serializer.serialize_map(Some(fields.len() + usize::from(adds_status)))?;
        let empty = serde_json::Map::new();
        for (name, value) in fields {
            match (name.as_str(), value) {
                ("metadata", Value::Object(metadata)) => {
                    map.serialize_entry(name, &WithoutVersion(metadata))?
                }
                ("status", status) if self.status_field.is_some() => {
                    let status = status.as_object().unwrap_or(&empty);
                    map.serialize_entry(name, &Replacing(status, self.status_field))?
                }
                _ => map.serialize_entry(name, value)?,
            }
        }
        if adds_status {
            map.serialize_entry("status", &Replacing(&empty, self.status_field))?;
        }
        map.end()
    }
}

/// A map with one field replaced, or added at its end.
struct Replacing<'a>(
    &'a serde_json::Map<String, Value>,
    Option<(&'a str, &'a Value)>,
);

impl serde::Serialize for Replacing<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let Replacing(fields, replaced) = *self;
        let adds = replaced.is_some_and(|(field, _)| !fields.contains_key(field));
        let mut map = serializer.serialize_map(Some(fields.len() + usize::from(adds)))?;
        for (name, value) in fields {
            match replaced {
                Some((field, new)) if field == name => map.serialize_entry(name, new)?,
                _ => map.serialize_entry(name, value)?,
            }
        }
        if let Some((field, new)) = replaced.filter(|_| adds) {
            map.serialize_entry(field, new)?;
        }
        map.end()
    }
}

struct WithoutVersion<'a>(&'a serde_json::Map<String, Value>);

impl serde::Serialize for WithoutVersion<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let len = self.0.len() - usize::from(self.0.contains_key("resourceVersion"));
        let mut map = serializer.serialize_map(Some(len))?;
        for (name, value) in self.0.iter().filter(|(name, _)| *name != "resourceVersion") {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// The value stored at a key-value, with its resource version set.
pub fn from_kv(kv: &KeyValue) -> Option<Value> {
    let mut value: Value = serde_json::from_slice(&kv.value).ok()?;
    set_resource_version(&mut value, kv.mod_revision);
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_field_is_replaced_or_added_while_storing() {
        let obj = serde_json::json!({
            "metadata": {"name": "q", "resourceVersion": "7"},
            "spec": {"hard": {"pods": "2"}},
            "status": {"hard": {"pods": "2"}, "used": {"pods": "0"}}
        });
        let used = serde_json::json!({"pods": "1"});
        let stored = to_storage_bytes_with_status(&obj, "used", &used);
        assert_eq!(
            std::str::from_utf8(&stored).unwrap(),
            r#"{"metadata":{"name":"q"},"spec":{"hard":{"pods":"2"}},"status":{"hard":{"pods":"2"},"used":{"pods":"1"}}}"#
        );
        let bare = serde_json::json!({"metadata": {"name": "q"}});
        let stored = to_storage_bytes_with_status(&bare, "used", &used);
        assert_eq!(
            std::str::from_utf8(&stored).unwrap(),
            r#"{"metadata":{"name":"q"},"status":{"used":{"pods":"1"}}}"#
        );
    }

    fn kv(json: &str, revision: i64) -> KeyValue {
        KeyValue {
            key: "/registry/core/configmaps/default/a".into(),
            value: Bytes::from(json.to_string()),
            create_revision: 1,
            mod_revision: revision,
        }
    }

    #[test]
    fn the_stored_form_leaves_out_only_the_resource_version() {
        let obj = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "resourceVersion": "7", "labels": {"resourceVersion": "x"}},
            "data": {"resourceVersion": "kept"},
        });
        let stored: Value = serde_json::from_slice(&to_storage_bytes(&obj)).unwrap();
        let mut want = obj.clone();
        want["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("resourceVersion");
        assert_eq!(stored, want);
        assert_eq!(to_storage_bytes(&serde_json::json!([1])), "[1]");
    }

    #[test]
    fn splicing_the_version_matches_a_full_decode() {
        let catalog = Catalog::builtin();
        for json in [
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a","namespace":"default","labels":{"x":"1"}},"data":{"k":"v"}}"#,
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{},"data":{"metadata":"not this one"}}"#,
        ] {
            let cached = decode_for_cache(&catalog, &kv(json, 42)).unwrap();
            let mut expected: Value = serde_json::from_str(json).unwrap();
            set_resource_version(&mut expected, 42);
            assert_eq!(cached.value(), expected);
            assert_eq!(cached.revision, 42);
        }
        let cached = decode_for_cache(
            &catalog,
            &kv(r#"{"metadata":{"name":"a","labels":{"x":"1"}}}"#, 7),
        )
        .unwrap();
        assert_eq!(cached.label("x"), Some("1"));
        assert_eq!(cached.field("metadata.name"), Some("a"));
    }

    #[test]
    fn partial_metadata_keeps_only_metadata() {
        let bytes = partial_metadata_bytes(br#"{"kind":"ConfigMap","metadata":{"name":"a","resourceVersion":"3"},"data":{"k":"v"}}"#).unwrap();
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": {"name": "a", "resourceVersion": "3"}})
        );
    }
}
