//! What server-side apply needs to know about a kind's shape: how each list merges and whether a
//! map is owned field by field or as a whole.
//!
//! Custom resources say it in their schema (`x-kubernetes-list-type`, `-list-map-keys`,
//! `-map-type`); built-in kinds through the merge keys their types declare; anything unknown
//! is treated as upstream treats a deduced schema: maps by field, lists atomic.

use serde_json::Value;

/// How a list merges and is owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListType {
    /// Replaced and owned as a whole.
    Atomic,
    /// A set of scalars: each member owned on its own.
    Set,
    /// Items identified by these key fields, each owned on its own.
    Map(Vec<String>),
}

/// A position in a kind's type, from which fields and items can be looked up.
pub trait TypeInfo: Send + Sync {
    fn field(&self, name: &str) -> Box<dyn TypeInfo>;
    fn items(&self) -> Box<dyn TypeInfo>;
    fn list_type(&self) -> ListType;
    fn map_is_atomic(&self) -> bool {
        false
    }
}

/// No type information: maps are granular, lists atomic.
pub struct Deduced;

impl TypeInfo for Deduced {
    fn field(&self, _: &str) -> Box<dyn TypeInfo> {
        Box::new(Deduced)
    }

    fn items(&self) -> Box<dyn TypeInfo> {
        Box::new(Deduced)
    }

    fn list_type(&self) -> ListType {
        ListType::Atomic
    }
}

/// The type information for a resource: its schema for custom resources, the built-in type's
/// merge keys for built-in kinds, else deduced.
pub fn for_resource(def: &crate::kinds::ResourceDef) -> Box<dyn TypeInfo> {
    if let Some(custom) = &def.custom {
        return Box::new(SchemaType(custom.schema.root().clone()));
    }
    match crate::strategic::apply_types::for_kind(&def.api_version(), &def.kind) {
        Some(builtin) => Box::new(builtin),
        None => Box::new(Deduced),
    }
}

/// A position in a structural (OpenAPI v3) schema, as custom resources have.
pub struct SchemaType(pub Value);

impl TypeInfo for SchemaType {
    fn field(&self, name: &str) -> Box<dyn TypeInfo> {
        let schema = &self.0;
        let sub = schema
            .pointer(&format!(
                "/properties/{}",
                name.replace('~', "~0").replace('/', "~1")
            ))
            .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()));
        match sub {
            Some(s) => Box::new(SchemaType(s.clone())),
            // `metadata` is ObjectMeta, whose lists (finalizers, ownerReferences) are known.
            None if name == "metadata" => Box::new(ObjectMetaType),
            None => Box::new(Deduced),
        }
    }

    fn items(&self) -> Box<dyn TypeInfo> {
        match self.0.get("items") {
            Some(s) => Box::new(SchemaType(s.clone())),
            None => Box::new(Deduced),
        }
    }

    fn list_type(&self) -> ListType {
        match self.0.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("set") => ListType::Set,
            Some("map") => ListType::Map(
                self.0
                    .get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .map(|k| {
                        k.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            _ => ListType::Atomic,
        }
    }

    fn map_is_atomic(&self) -> bool {
        self.0.get("x-kubernetes-map-type").and_then(Value::as_str) == Some("atomic")
    }
}

/// ObjectMeta's shape: finalizers are a set, ownerReferences keyed by uid.
pub struct ObjectMetaType;

impl TypeInfo for ObjectMetaType {
    fn field(&self, name: &str) -> Box<dyn TypeInfo> {
        match name {
            "finalizers" => Box::new(FixedList(ListType::Set)),
            "ownerReferences" => Box::new(FixedList(ListType::Map(vec!["uid".into()]))),
            _ => Box::new(Deduced),
        }
    }

    fn items(&self) -> Box<dyn TypeInfo> {
        Box::new(Deduced)
    }

    fn list_type(&self) -> ListType {
        ListType::Atomic
    }
}

/// A list of a known type whose items have no further structure of interest.
pub struct FixedList(pub ListType);

impl TypeInfo for FixedList {
    fn field(&self, _: &str) -> Box<dyn TypeInfo> {
        Box::new(Deduced)
    }

    fn items(&self) -> Box<dyn TypeInfo> {
        Box::new(Deduced)
    }

    fn list_type(&self) -> ListType {
        self.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn schema_extensions_decide_list_types() {
        let schema = SchemaType(
            json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
                "ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["port", "protocol"], "items": {"type": "object"}},
                "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
                "args": {"type": "array", "items": {"type": "string"}},
                "selector": {"type": "object", "x-kubernetes-map-type": "atomic"}
            }}}}),
        );
        let spec = schema.field("spec");
        assert_eq!(
            spec.field("ports").list_type(),
            ListType::Map(vec!["port".into(), "protocol".into()])
        );
        assert_eq!(spec.field("tags").list_type(), ListType::Set);
        assert_eq!(spec.field("args").list_type(), ListType::Atomic);
        assert!(spec.field("selector").map_is_atomic());
        assert_eq!(
            schema.field("metadata").field("finalizers").list_type(),
            ListType::Set
        );
    }
}
