//! Structural schemas of custom resources: pruning, defaulting and validation.
//!
//! A CustomResourceDefinition version carries an `openAPIV3Schema`. Objects written to that
//! version go through the same three steps as upstream's apiextensions server, in this order:
//! unknown fields are pruned (unless `x-kubernetes-preserve-unknown-fields`), `default`s are
//! filled in for absent fields, and the result is validated — types, `required`, `enum`,
//! `pattern`, bounds, lengths, item counts and the `x-kubernetes-list-type` set/map rules.
//! Error messages follow upstream's wording (`spec.replicas in body must be of type integer`).

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use crate::kinds::FieldError;

/// Fields every object has, which a schema need not declare.
const OBJECT_META_ROOT: &[&str] = &["apiVersion", "kind", "metadata"];

/// A version's schema, ready to apply to objects.
#[derive(Debug, Clone)]
pub struct StructuralSchema {
    root: Value,
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn type_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn flag(schema: &Value, name: &str) -> bool {
    schema.get(name).and_then(Value::as_bool).unwrap_or(false)
}

impl StructuralSchema {
    pub fn new(root: Value) -> Self {
        StructuralSchema { root }
    }

    pub fn root(&self) -> &Value {
        &self.root
    }

    /// Removes fields the schema does not declare. `apiVersion`, `kind` and `metadata` at the
    /// root are always kept (metadata is validated as ObjectMeta by the registry).
    pub fn prune(&self, obj: &mut Value) {
        prune(&self.root, obj, true);
    }

    /// Fills in `default` values for absent fields, recursively.
    pub fn apply_defaults(&self, obj: &mut Value) {
        apply_defaults(&self.root, obj, true);
    }

    /// Validates an object against the schema.
    pub fn validate(&self, obj: &Value) -> Vec<FieldError> {
        let mut errors = Vec::new();
        validate(&self.root, obj, "", true, &mut errors);
        errors
    }
}

fn prune(schema: &Value, value: &mut Value, root: bool) {
    if flag(schema, "x-kubernetes-preserve-unknown-fields") && schema.get("properties").is_none() {
        return;
    }
    match value {
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields");
            let embedded = flag(schema, "x-kubernetes-embedded-resource");
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let keep_meta = (root || embedded) && OBJECT_META_ROOT.contains(&key.as_str());
                if let Some(sub) = properties.and_then(|p| p.get(&key)) {
                    if let Some(child) = map.get_mut(&key) {
                        prune(sub, child, false);
                    }
                } else if let Some(sub) = additional {
                    if let Some(child) = map.get_mut(&key) {
                        prune(sub, child, false);
                    }
                } else if !keep_meta
                    && !preserve
                    && schema.get("additionalProperties") != Some(&Value::Bool(true))
                {
                    map.remove(&key);
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for item in items {
                    prune(sub, item, false);
                }
            }
        }
        _ => {}
    }
}

fn apply_defaults(schema: &Value, value: &mut Value, root: bool) {
    match value {
        Value::Object(map) => {
            if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
                for (name, sub) in properties {
                    if root && name == "metadata" {
                        continue;
                    }
                    match map.get_mut(name) {
                        Some(child) if !child.is_null() => apply_defaults(sub, child, false),
                        Some(child) => {
                            // An explicit null takes the default only when the field may not be null.
                            if let Some(default) =
                                sub.get("default").filter(|_| !flag(sub, "nullable"))
                            {
                                *child = default.clone();
                                apply_defaults(sub, child, false);
                            }
                        }
                        None => {
                            if let Some(default) = sub.get("default") {
                                let mut filled = default.clone();
                                apply_defaults(sub, &mut filled, false);
                                map.insert(name.clone(), filled);
                            }
                        }
                    }
                }
            }
            if let Some(additional) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for (_, child) in map.iter_mut() {
                    apply_defaults(additional, child, false);
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for item in items {
                    apply_defaults(sub, item, false);
                }
            }
        }
        _ => {}
    }
}

fn shown(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn invalid(path: &str, value: &Value, detail: String) -> FieldError {
    FieldError {
        reason: "FieldValueInvalid",
        field: path.to_string(),
        message: format!("Invalid value: {}: {detail}", shown(value)),
    }
}

fn body_path(path: &str) -> String {
    if path.is_empty() {
        "body".to_string()
    } else {
        format!("{path} in body")
    }
}

fn validate(schema: &Value, value: &Value, path: &str, root: bool, errors: &mut Vec<FieldError>) {
    if value.is_null() {
        if !flag(schema, "nullable") && schema.get("type").is_some() {
            errors.push(invalid(
                path,
                value,
                format!(
                    "{} must be of type {}: \"null\"",
                    body_path(path),
                    schema["type"].as_str().unwrap_or("object")
                ),
            ));
        }
        return;
    }
    let int_or_string = flag(schema, "x-kubernetes-int-or-string");
    if int_or_string {
        if !matches!(value, Value::String(_)) && type_of(value) != "integer" {
            errors.push(invalid(
                path,
                value,
                format!(
                    "{} must be of type integer or string: {:?}",
                    body_path(path),
                    type_of(value)
                ),
            ));
        }
    } else if let Some(expected) = schema.get("type").and_then(Value::as_str) {
        let actual = type_of(value);
        let ok = actual == expected || (expected == "number" && actual == "integer");
        if !ok {
            errors.push(invalid(
                path,
                value,
                format!("{} must be of type {expected}: {actual:?}", body_path(path)),
            ));
            return;
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        let supported: Vec<String> = options.iter().map(shown).collect();
        errors.push(FieldError {
            reason: "FieldValueNotSupported",
            field: path.to_string(),
            message: format!(
                "Unsupported value: {}: supported values: {}",
                shown(value),
                supported.join(", ")
            ),
        });
    }
    match value {
        Value::String(s) => validate_string(schema, s, value, path, errors),
        Value::Number(n) => {
            validate_number(schema, n.as_f64().unwrap_or_default(), value, path, errors)
        }
        Value::Array(items) => validate_array(schema, items, value, path, errors),
        Value::Object(map) => validate_object(schema, map, path, root, errors),
        _ => {}
    }
}

fn validate_string(
    schema: &Value,
    s: &str,
    value: &Value,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    let length = s.chars().count() as u64;
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
        && length > max
    {
        errors.push(FieldError {
            reason: "FieldValueTooLong",
            field: path.to_string(),
            message: format!("Too long: may not be more than {max} bytes"),
        });
    }
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
        && length < min
    {
        errors.push(invalid(
            path,
            value,
            format!("{} should be at least {min} chars long", body_path(path)),
        ));
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
        match regex::Regex::new(pattern) {
            Ok(re) if !re.is_match(s) => {
                errors.push(invalid(
                    path,
                    value,
                    format!("{} should match '{pattern}'", body_path(path)),
                ));
            }
            Ok(_) => {}
            Err(_) => errors.push(invalid(
                path,
                value,
                format!("the schema's pattern '{pattern}' is not a valid regular expression"),
            )),
        }
    }
}

fn validate_number(
    schema: &Value,
    n: f64,
    value: &Value,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
        let exclusive = flag(schema, "exclusiveMaximum");
        if n > max || (exclusive && n >= max) {
            let how = if exclusive {
                "less than"
            } else {
                "less than or equal to"
            };
            errors.push(invalid(
                path,
                value,
                format!("{} should be {how} {}", body_path(path), schema["maximum"]),
            ));
        }
    }
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
        let exclusive = flag(schema, "exclusiveMinimum");
        if n < min || (exclusive && n <= min) {
            let how = if exclusive {
                "greater than"
            } else {
                "greater than or equal to"
            };
            errors.push(invalid(
                path,
                value,
                format!("{} should be {how} {}", body_path(path), schema["minimum"]),
            ));
        }
    }
    if let Some(multiple) = schema.get("multipleOf").and_then(Value::as_f64)
        && multiple > 0.0
        && (n / multiple).fract().abs() > f64::EPSILON
    {
        errors.push(invalid(
            path,
            value,
            format!(
                "{} should be a multiple of {}",
                body_path(path),
                schema["multipleOf"]
            ),
        ));
    }
}

fn validate_array(
    schema: &Value,
    items: &[Value],
    value: &Value,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
        && items.len() as u64 > max
    {
        errors.push(FieldError {
            reason: "FieldValueTooMany",
            field: path.to_string(),
            message: format!("Too many: {}: must have at most {max} items", items.len()),
        });
    }
    if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
        && (items.len() as u64) < min
    {
        errors.push(invalid(
            path,
            value,
            format!("{} should have at least {min} items", body_path(path)),
        ));
    }
    if let Some(sub) = schema.get("items") {
        for (i, item) in items.iter().enumerate() {
            validate(sub, item, &format!("{path}[{i}]"), false, errors);
        }
    }
    match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => {
            let mut seen = Vec::new();
            for (i, item) in items.iter().enumerate() {
                if seen.contains(&item) {
                    errors.push(FieldError {
                        reason: "FieldValueDuplicate",
                        field: format!("{path}[{i}]"),
                        message: format!("Duplicate value: {}", shown(item)),
                    });
                }
                seen.push(item);
            }
        }
        Some("map") => {
            let keys: Vec<String> = schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|k| {
                    k.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            let mut seen: BTreeSet<String> = BTreeSet::new();
            for (i, item) in items.iter().enumerate() {
                let key: Map<String, Value> = keys
                    .iter()
                    .map(|k| (k.clone(), item.get(k).cloned().unwrap_or(Value::Null)))
                    .collect();
                let rendered = Value::Object(key).to_string();
                if !seen.insert(rendered.clone()) {
                    errors.push(FieldError {
                        reason: "FieldValueDuplicate",
                        field: format!("{path}[{i}]"),
                        message: format!("Duplicate value: {rendered}"),
                    });
                }
            }
        }
        _ => {}
    }
}

fn validate_object(
    schema: &Value,
    map: &Map<String, Value>,
    path: &str,
    root: bool,
    errors: &mut Vec<FieldError>,
) {
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for field in required.iter().filter_map(Value::as_str) {
            if !map.contains_key(field) {
                errors.push(FieldError::required(join(path, field), ""));
            }
        }
    }
    if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
        && map.len() as u64 > max
    {
        errors.push(FieldError {
            reason: "FieldValueTooMany",
            field: path.to_string(),
            message: format!("Too many: {}: must have at most {max} items", map.len()),
        });
    }
    if let Some(min) = schema.get("minProperties").and_then(Value::as_u64)
        && (map.len() as u64) < min
    {
        errors.push(invalid(
            path,
            &Value::Object(map.clone()),
            format!("{} should have at least {min} properties", body_path(path)),
        ));
    }
    let properties = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    for (key, child) in map {
        if root && key == "metadata" {
            continue;
        }
        let child_path = join(path, key);
        if let Some(sub) = properties.and_then(|p| p.get(key)) {
            validate(sub, child, &child_path, false, errors);
        } else if let Some(sub) = additional {
            validate(sub, child, &child_path, false, errors);
        }
    }
}

/// Checks that a schema is structural enough to serve: every level states a type (or preserves
/// unknown fields or is int-or-string), and patterns compile.
pub fn check_schema(schema: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let Some(obj) = schema.as_object() else {
        errors.push(FieldError::invalid(path, schema, "must be an object"));
        return;
    };
    let typed = obj.contains_key("type")
        || flag(schema, "x-kubernetes-preserve-unknown-fields")
        || flag(schema, "x-kubernetes-int-or-string");
    if !typed {
        errors.push(FieldError::required(
            join(path, "type"),
            "must not be empty for specified object fields",
        ));
    }
    if let Some(pattern) = obj.get("pattern").and_then(Value::as_str)
        && regex::Regex::new(pattern).is_err()
    {
        errors.push(FieldError::invalid(
            join(path, "pattern"),
            &Value::String(pattern.to_string()),
            "must be a valid regular expression",
        ));
    }
    if let Some(properties) = obj.get("properties").and_then(Value::as_object) {
        for (name, sub) in properties {
            check_schema(sub, &format!("{path}.properties[{name}]"), errors);
        }
    }
    if let Some(items) = obj.get("items") {
        check_schema(items, &join(path, "items"), errors);
    }
    if let Some(additional) = obj.get("additionalProperties").filter(|a| a.is_object()) {
        check_schema(additional, &join(path, "additionalProperties"), errors);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> StructuralSchema {
        StructuralSchema::new(json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["size"],
                    "properties": {
                        "size": { "type": "string", "enum": ["s", "m", "l"] },
                        "replicas": { "type": "integer", "minimum": 1, "maximum": 10, "default": 1 },
                        "name": { "type": "string", "pattern": "^[a-z]+$", "maxLength": 8 },
                        "tags": { "type": "array", "items": { "type": "string" }, "x-kubernetes-list-type": "set" },
                        "ports": {
                            "type": "array",
                            "x-kubernetes-list-type": "map",
                            "x-kubernetes-list-map-keys": ["port"],
                            "items": { "type": "object", "properties": { "port": { "type": "integer" }, "name": { "type": "string", "default": "http" } } }
                        },
                        "labels": { "type": "object", "additionalProperties": { "type": "string" } },
                        "extra": { "type": "object", "x-kubernetes-preserve-unknown-fields": true },
                        "port": { "x-kubernetes-int-or-string": true }
                    }
                },
                "status": { "type": "object", "properties": { "ready": { "type": "boolean" } } }
            }
        }))
    }

    #[test]
    fn prunes_unknown_fields_but_keeps_preserved_ones() {
        let mut obj = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "a"}, "spec": {"size": "s", "bogus": 1, "extra": {"anything": {"goes": true}}, "labels": {"a": "b"}}, "junk": 2});
        schema().prune(&mut obj);
        assert_eq!(
            obj,
            json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "a"}, "spec": {"size": "s", "extra": {"anything": {"goes": true}}, "labels": {"a": "b"}}})
        );
    }

    #[test]
    fn fills_defaults_recursively() {
        let mut obj = json!({"spec": {"size": "s", "ports": [{"port": 80}]}});
        schema().apply_defaults(&mut obj);
        assert_eq!(obj["spec"]["replicas"], 1);
        assert_eq!(obj["spec"]["ports"][0]["name"], "http");
    }

    #[test]
    fn reports_upstream_style_errors() {
        let obj = json!({"spec": {"size": "xl", "replicas": "three", "name": "ABC", "tags": ["a", "a"], "ports": [{"port": 1}, {"port": 1}], "port": true}});
        let errors = schema().validate(&obj);
        let text: Vec<String> = errors.iter().map(FieldError::render).collect();
        assert!(
            text.contains(
                &r#"spec.size: Unsupported value: "xl": supported values: "s", "m", "l""#
                    .to_string()
            ),
            "{text:?}"
        );
        assert!(text.contains(&r#"spec.replicas: Invalid value: "three": spec.replicas in body must be of type integer: "string""#.to_string()), "{text:?}");
        assert!(
            text.contains(
                &r#"spec.name: Invalid value: "ABC": spec.name in body should match '^[a-z]+$'"#
                    .to_string()
            ),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.starts_with("spec.tags[1]: Duplicate value")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.starts_with("spec.ports[1]: Duplicate value")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.starts_with("spec.port: Invalid value: true")),
            "{text:?}"
        );
        let missing = schema().validate(&json!({"spec": {}}));
        assert_eq!(missing[0].render(), "spec.size: Required value");
        let bounds = schema().validate(&json!({"spec": {"size": "s", "replicas": 20}}));
        assert_eq!(
            bounds[0].render(),
            "spec.replicas: Invalid value: 20: spec.replicas in body should be less than or equal to 10"
        );
        assert!(
            schema()
                .validate(&json!({"spec": {"size": "m", "replicas": 3, "port": "http"}}))
                .is_empty()
        );
    }

    #[test]
    fn non_structural_schemas_are_refused() {
        let mut errors = Vec::new();
        check_schema(
            &json!({"type": "object", "properties": {"a": {"description": "no type"}, "b": {"type": "string", "pattern": "("}}}),
            "spec.versions[0].schema.openAPIV3Schema",
            &mut errors,
        );
        assert_eq!(errors.len(), 2, "{errors:?}");
    }
}
