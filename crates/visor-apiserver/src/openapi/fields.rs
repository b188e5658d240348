//! Server-side field validation (`fieldValidation=Strict|Warn|Ignore`): finding fields a
//! kind's schema does not declare, and keys a JSON body repeats.
//!
//! serde_json keeps the last of repeated keys, so duplicates are found by scanning the raw
//! body; unknown fields by walking the decoded object against a compact form of the schema
//! (only structure is kept: property names, list items, map values, and where unknown fields
//! are allowed). Messages are upstream's strict-decoding texts (`unknown field "spec.foo"`,
//! `duplicate field "spec.replicas"`), with the path from the object's root.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

/// The structure of one schema, as far as finding unknown fields needs it.
#[derive(Debug, Clone)]
pub enum Shape {
    /// Anything goes: scalars, free-form objects, preserved unknown fields.
    Any,
    /// Another definition, by name (schemas are recursive, e.g. JSONSchemaProps).
    Ref(String),
    Object {
        properties: HashMap<String, Shape>,
        /// Keys besides `properties` are allowed (`x-kubernetes-preserve-unknown-fields`).
        preserve_unknown: bool,
    },
    /// A map: every value has the same shape.
    Map(Box<Shape>),
    Array(Box<Shape>),
}

impl Shape {
    /// Compiles a JSON schema (v2 or v3 form, `$ref`s to `#/definitions/` or
    /// `#/components/schemas/`).
    pub fn compile(schema: &Value) -> Shape {
        let Some(s) = schema.as_object() else {
            return Shape::Any;
        };
        if let Some(reference) = s.get("$ref").and_then(Value::as_str) {
            let name = reference.rsplit('/').next().unwrap_or(reference);
            return Shape::Ref(name.to_string());
        }
        if let Some([only]) = s.get("allOf").and_then(Value::as_array).map(Vec::as_slice) {
            return Shape::compile(only);
        }
        let preserve_unknown = s
            .get("x-kubernetes-preserve-unknown-fields")
            .and_then(Value::as_bool)
            == Some(true);
        if let Some(properties) = s.get("properties").and_then(Value::as_object) {
            return Shape::Object {
                properties: properties
                    .iter()
                    .map(|(k, v)| (k.clone(), Shape::compile(v)))
                    .collect(),
                preserve_unknown,
            };
        }
        if preserve_unknown {
            return Shape::Any;
        }
        if let Some(values @ Value::Object(_)) = s.get("additionalProperties") {
            return Shape::Map(Box::new(Shape::compile(values)));
        }
        if let Some(items) = s.get("items") {
            return Shape::Array(Box::new(Shape::compile(items)));
        }
        Shape::Any
    }
}

/// Every definition of a document in compiled form.
#[derive(Default)]
pub struct FieldSchemas {
    pub(crate) shapes: HashMap<String, Shape>,
}

impl FieldSchemas {
    pub fn compile(definitions: &Map<String, Value>) -> Self {
        FieldSchemas {
            shapes: definitions
                .iter()
                .map(|(name, schema)| (name.clone(), Shape::compile(schema)))
                .collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Shape> {
        self.shapes.get(name)
    }
}

/// Upstream's strict-decoding messages for `obj` against `root`: unknown fields in document
/// order, then keys `raw_body` repeats (when it is JSON; other encodings are not scanned).
pub fn check_fields(
    schemas: &FieldSchemas,
    root: &Shape,
    obj: &Value,
    raw_body: Option<&[u8]>,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut path = String::new();
    unknown_fields(schemas, root, obj, &mut path, &mut out, 0);
    if let Some(raw) = raw_body {
        out.extend(
            duplicate_fields(raw)
                .into_iter()
                .map(|p| format!("duplicate field {p:?}")),
        );
    }
    out
}

/// Deeper than any body serde_json accepts (it stops at 128), so a cyclic `Ref` chain
/// cannot recurse without bound.
const MAX_DEPTH: usize = 256;

fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

fn unknown_fields(
    schemas: &FieldSchemas,
    shape: &Shape,
    value: &Value,
    path: &mut String,
    out: &mut Vec<String>,
    depth: usize,
) {
    if depth > MAX_DEPTH {
        return;
    }
    match (shape, value) {
        (Shape::Ref(name), _) => {
            if let Some(target) = schemas.get(name) {
                unknown_fields(schemas, target, value, path, out, depth + 1);
            }
        }
        (
            Shape::Object {
                properties,
                preserve_unknown,
            },
            Value::Object(fields),
        ) => {
            for (key, child) in fields {
                let len = path.len();
                push_key(path, key);
                match properties.get(key) {
                    Some(s) => unknown_fields(schemas, s, child, path, out, depth + 1),
                    None if !preserve_unknown => out.push(format!("unknown field {path:?}")),
                    None => {}
                }
                path.truncate(len);
            }
        }
        (Shape::Map(values), Value::Object(fields)) => {
            for (key, child) in fields {
                let len = path.len();
                push_key(path, key);
                unknown_fields(schemas, values, child, path, out, depth + 1);
                path.truncate(len);
            }
        }
        (Shape::Array(items), Value::Array(elements)) => {
            for (i, child) in elements.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                unknown_fields(schemas, items, child, path, out, depth + 1);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// Removes the fields `shape` does not declare, as upstream's typed decoding drops them.
pub fn prune_unknown(schemas: &FieldSchemas, shape: &Shape, value: &mut Value, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    match (shape, value) {
        (Shape::Ref(name), value) => {
            if let Some(target) = schemas.get(name) {
                prune_unknown(schemas, target, value, depth + 1);
            }
        }
        (
            Shape::Object {
                properties,
                preserve_unknown,
            },
            Value::Object(fields),
        ) => {
            if !preserve_unknown {
                fields.retain(|key, _| properties.contains_key(key));
            }
            for (key, child) in fields.iter_mut() {
                if let Some(s) = properties.get(key) {
                    prune_unknown(schemas, s, child, depth + 1);
                }
            }
        }
        (Shape::Map(values), Value::Object(fields)) => {
            for child in fields.values_mut() {
                prune_unknown(schemas, values, child, depth + 1);
            }
        }
        (Shape::Array(items), Value::Array(elements)) => {
            for child in elements {
                prune_unknown(schemas, items, child, depth + 1);
            }
        }
        _ => {}
    }
}

/// Paths of keys an object in the JSON text repeats. Not JSON (YAML, protobuf, or
/// malformed) yields nothing: those bodies are checked by their own decoders.
pub fn duplicate_fields(raw: &[u8]) -> Vec<String> {
    let mut scanner = Scanner {
        bytes: raw,
        at: 0,
        found: Vec::new(),
    };
    let mut path = String::new();
    match scanner.value(&mut path, 0) {
        Some(()) => scanner.found,
        None => Vec::new(),
    }
}

/// A minimal JSON reader that only tracks object keys and array indices.
struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
    found: Vec<String>,
}

impl Scanner<'_> {
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.bytes.get(self.at).copied()
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    fn value(&mut self, path: &mut String, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'{' => self.object(path, depth),
            b'[' => self.array(path, depth),
            b'"' => self.string().map(drop),
            _ => {
                // A number, true, false or null: up to the next delimiter.
                let start = self.at;
                while let Some(b) = self.bytes.get(self.at) {
                    if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.at += 1;
                }
                (self.at > start).then_some(())
            }
        }
    }

    fn object(&mut self, path: &mut String, depth: usize) -> Option<()> {
        self.expect(b'{')?;
        let mut seen = HashSet::new();
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(());
        }
        loop {
            let key = self.string()?;
            self.expect(b':')?;
            let len = path.len();
            push_key(path, &key);
            if !seen.insert(key) {
                self.found.push(path.clone());
            }
            self.value(path, depth + 1)?;
            path.truncate(len);
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn array(&mut self, path: &mut String, depth: usize) -> Option<()> {
        self.expect(b'[')?;
        if self.peek()? == b']' {
            self.at += 1;
            return Some(());
        }
        let mut index = 0;
        loop {
            let len = path.len();
            path.push_str(&format!("[{index}]"));
            self.value(path, depth + 1)?;
            path.truncate(len);
            index += 1;
            match self.peek()? {
                b',' => self.at += 1,
                b']' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Reads a string literal; serde_json decodes it to compare keys, so reuse it for escapes.
    fn string(&mut self) -> Option<String> {
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.at;
        self.at += 1;
        let mut escaped = false;
        loop {
            let b = *self.bytes.get(self.at)?;
            self.at += 1;
            match b {
                b'\\' => {
                    escaped = true;
                    // Skip the escaped byte; `\uXXXX` digits are plain bytes.
                    self.at += 1;
                }
                b'"' => break,
                _ => {}
            }
        }
        let literal = self.bytes.get(start..self.at)?;
        if escaped {
            serde_json::from_slice(literal).ok()
        } else {
            String::from_utf8(literal[1..literal.len() - 1].to_vec()).ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schemas() -> FieldSchemas {
        let defs = json!({
            "Root": {"type": "object", "properties": {
                "apiVersion": {"type": "string"},
                "spec": {"$ref": "#/definitions/Spec", "description": "d"},
            }},
            "Spec": {"type": "object", "properties": {
                "replicas": {"type": "integer"},
                "containers": {"type": "array", "items": {"$ref": "#/definitions/Container"}},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "ports": {"type": "object", "additionalProperties": {"$ref": "#/definitions/Container"}},
                "raw": {"type": "object"},
                "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                         "properties": {"known": {"$ref": "#/definitions/Container"}}},
                "json": {"x-kubernetes-preserve-unknown-fields": true},
                "v3": {"allOf": [{"$ref": "#/components/schemas/Container"}]},
            }},
            "Container": {"type": "object", "properties": {"name": {"type": "string"}}},
        });
        FieldSchemas::compile(defs.as_object().unwrap())
    }

    fn check(obj: Value) -> Vec<String> {
        let s = schemas();
        check_fields(&s, &Shape::Ref("Root".into()), &obj, None)
    }

    #[test]
    fn unknown_fields_have_full_paths() {
        let found = check(json!({
            "apiVersion": "v1",
            "foo": 1,
            "spec": {
                "replicas": 1,
                "bar": true,
                "containers": [{"name": "a"}, {"name": "b", "image2": "x"}],
                "labels": {"any": "thing"},
                "ports": {"http": {"name": "x", "port": 1}},
                "raw": {"whatever": {"deep": 1}},
                "open": {"extra": 1, "known": {"nope": 1}},
                "json": {"a": [1, {"b": 2}]},
                "v3": {"zzz": 1},
            },
        }));
        assert_eq!(
            found,
            [
                r#"unknown field "foo""#,
                r#"unknown field "spec.bar""#,
                r#"unknown field "spec.containers[1].image2""#,
                r#"unknown field "spec.ports.http.port""#,
                r#"unknown field "spec.open.known.nope""#,
                r#"unknown field "spec.v3.zzz""#,
            ]
        );
    }

    #[test]
    fn known_fields_pass() {
        assert!(check(json!({"apiVersion": "v1", "spec": {"replicas": 2}})).is_empty());
    }

    #[test]
    fn duplicates_in_nested_objects_and_lists() {
        let raw = br#"{"spec": {"replicas": 1, "replicas": 2,
            "containers": [{"name": "a"}, {"name": "b", "name": "c"}],
            "labels": {"a\u0062": "1", "ab": "2"}}, "kind": "X", "kind": "Y"}"#;
        assert_eq!(
            duplicate_fields(raw),
            [
                "spec.replicas",
                "spec.containers[1].name",
                "spec.labels.ab",
                "kind"
            ]
        );
        assert!(duplicate_fields(b"kind: X\nkind: Y\n").is_empty());
        assert!(duplicate_fields(br#"{"a": "x\"y", "b": [], "c": {}}"#).is_empty());
    }
}
