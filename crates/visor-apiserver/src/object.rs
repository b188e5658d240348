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

/// Builds the cache's form of a stored key-value.
pub fn decode_for_cache(catalog: &Catalog, kv: &KeyValue) -> Option<CachedObject> {
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
    if let Some(def) = catalog.for_key(&kv.key) {
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
    let mut obj = obj.clone();
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    Bytes::from(serde_json::to_vec(&obj).expect("a JSON value serialises"))
}

/// The value stored at a key-value, with its resource version set.
pub fn from_kv(kv: &KeyValue) -> Option<Value> {
    let mut value: Value = serde_json::from_slice(&kv.value).ok()?;
    set_resource_version(&mut value, kv.mod_revision);
    Some(value)
}
