//! Strategic merge patch (`application/strategic-merge-patch+json`) for the built-in kinds,
//! with upstream's semantics, so that `kubectl apply`, `edit`, `patch`, `cordon`, `set image`
//! and `rollout restart` change exactly what they mean to.
//!
//! A strategic merge patch is a JSON merge patch that knows the object's types: objects merge
//! key by key and `null` deletes a key, as in a merge patch, but a list whose field is tagged
//! `merge` (see [`keys`]) merges with the stored list instead of replacing it — lists of objects
//! element by element, matched on the field's merge key, lists of scalars as a set union. The
//! types come from the generated protobuf schema ([`graph`]).
//!
//! Directives carried inside the patch:
//! - `$patch: replace` in an object replaces the object; as a list element, the whole list.
//! - `$patch: delete` in an object empties it; as a list element, removes the stored elements
//!   with that element's merge key.
//! - `$retainKeys: [..]` in an object drops every stored key not listed (a patch key that is
//!   not listed is an error).
//! - `$setElementOrder/FIELD: [..]` gives the order of a merged list: listed elements in that
//!   order, elements only on the server kept near their stored neighbours.
//! - `$deleteFromPrimitiveList/FIELD: [..]` removes values from a merged list of scalars.
//!
//! Errors carry upstream's messages. Upstream answers most of them (a missing merge key, an
//! unknown directive) with a 500 because they are not API status errors; here they are `400`,
//! as the request is what is wrong, and the two upstream reports as `422` stay `422`.

pub mod apply_types;
mod graph;
pub mod keys;

use std::fmt::Write;

use serde_json::{Map, Value};

use graph::Node;
use keys::Strategy;

type Object = Map<String, Value>;

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";

/// Why a strategic merge patch could not be applied, with the HTTP status it deserves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StrategicError {
    /// 400 for a malformed patch, 422 for one that contradicts itself, 415 for a kind with no
    /// built-in type.
    pub code: u16,
    pub message: String,
}

impl StrategicError {
    fn bad(message: impl Into<String>) -> Self {
        StrategicError {
            code: 400,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        StrategicError {
            code: 422,
            message: message.into(),
        }
    }

    fn no_merge_key(item: &Object, key: &str) -> Self {
        Self::bad(format!(
            "map: {} does not contain declared merge key: {key}",
            go_map(item)
        ))
    }

    fn bad_patch_type(directive: &Value, item: &Object) -> Self {
        Self::bad(format!(
            "unknown patch type: {} in map: {}",
            go_value(directive),
            go_map(item)
        ))
    }

    fn bad_arg_type(expected: &str, actual: &Value) -> Self {
        Self::bad(format!(
            "expected a {expected}, but received a {}",
            go_type(actual)
        ))
    }
}

impl std::fmt::Display for StrategicError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StrategicError {}

/// Whether objects of this apiVersion and kind have a built-in type, and so can take a
/// strategic merge patch. Custom resources cannot: upstream answers them with `415`.
pub fn has_schema(api_version: &str, kind: &str) -> bool {
    graph::top_level(api_version, kind).is_some()
}

/// Applies a strategic merge patch to an object of the given apiVersion and kind and returns
/// the patched object. Neither input is changed.
pub fn strategic_merge(
    original: &Value,
    patch: &Value,
    api_version: &str,
    kind: &str,
) -> Result<Value, StrategicError> {
    let Some(node) = graph::top_level(api_version, kind) else {
        return Err(StrategicError {
            code: 415,
            message: format!(
                "strategic merge patch is not supported for {kind} in {api_version}: it has no built-in type"
            ),
        });
    };
    let patch = match patch {
        Value::Object(patch) => patch.clone(),
        // Go decodes a JSON null into an empty map: a patch that changes nothing.
        Value::Null => Object::new(),
        other => {
            return Err(StrategicError::bad(format!(
                "json: cannot unmarshal {} into Go value of type map[string]interface {{}}",
                json_kind(other)
            )));
        }
    };
    let Value::Object(original) = original else {
        return Err(StrategicError::bad("invalid JSON document"));
    };
    merge_map(original.clone(), patch, node).map(Value::Object)
}

/// The strategy and merge key of the field `key` of a value at `node`, and its own node.
fn field_meta(node: Node, key: &str) -> (Node, Option<Strategy>, &'static str) {
    match graph::child(node, key) {
        Some(found) => match keys::lookup(found.owner, key) {
            Some((strategy, merge_key)) => (found.node, Some(strategy), merge_key),
            None => (found.node, None, ""),
        },
        // A field the schema does not know (an unpruned extra, a key inside raw JSON) merges
        // like a merge patch: objects key by key, lists replaced.
        None => (Node::Opaque, None, ""),
    }
}

/// Merges a patch object into an object at `node`.
fn merge_map(
    mut original: Object,
    mut patch: Object,
    node: Node,
) -> Result<Object, StrategicError> {
    if let Some(directive) = patch.get(DIRECTIVE) {
        return match directive.as_str() {
            Some("replace") => {
                patch.remove(DIRECTIVE);
                Ok(clean_object(patch))
            }
            // Upstream leaves an empty object behind rather than removing the key.
            Some("delete") => Ok(Object::new()),
            _ => Err(StrategicError::bad_patch_type(directive, &patch)),
        };
    }
    apply_retain_keys(&mut original, &mut patch)?;
    apply_element_orders(&mut original, &mut patch, node)?;
    // Removals from primitive lists come after the additions so that a value both added and
    // removed by one patch ends up removed.
    let mut deletions = Vec::new();
    for (key, value) in patch {
        match key.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) {
            Some(field) => deletions.push((field.to_string(), value)),
            None => merge_field(&mut original, key, value, node, false)?,
        }
    }
    for (field, value) in deletions {
        merge_field(&mut original, field, value, node, true)?;
    }
    Ok(original)
}

/// Merges one patch key into the object. `deletion` marks a `$deleteFromPrimitiveList` list,
/// whose values are removed instead of added.
fn merge_field(
    original: &mut Object,
    key: String,
    value: Value,
    node: Node,
    deletion: bool,
) -> Result<(), StrategicError> {
    if value.is_null() {
        original.remove(&key);
        return Ok(());
    }
    let Some(current) = original.get_mut(&key) else {
        if !deletion && let Some(value) = clean(value) {
            original.insert(key, value);
        }
        return Ok(());
    };
    match (current, value) {
        (Value::Object(current), Value::Object(value)) => {
            let (child, strategy, _) = field_meta(node, &key);
            let stored = std::mem::take(current);
            *current = if strategy == Some(Strategy::Replace) {
                clean_object(value)
            } else {
                merge_map(stored, value, child)?
            };
        }
        (Value::Array(current), Value::Array(value)) => {
            let (child, strategy, merge_key) = field_meta(node, &key);
            let stored = std::mem::take(current);
            *current = if deletion || strategy.is_some_and(Strategy::merges_lists) {
                merge_list(stored, value, child, merge_key, deletion)?
            } else {
                clean_list(value)
            };
        }
        (current, value) => {
            if !deletion && let Some(value) = clean(value) {
                *current = value;
            }
        }
    }
    Ok(())
}

/// `$retainKeys`: drop every stored key the list does not name.
fn apply_retain_keys(original: &mut Object, patch: &mut Object) -> Result<(), StrategicError> {
    let Some(retain) = patch.remove(RETAIN_KEYS) else {
        return Ok(());
    };
    let Value::Array(retain) = retain else {
        return Err(StrategicError::bad("invalid patch format of retainKeys"));
    };
    let retained = |key: &str| retain.iter().any(|k| k.as_str() == Some(key));
    for (key, value) in patch.iter() {
        if value.is_null()
            || key.starts_with(DELETE_FROM_PRIMITIVE_LIST)
            || key.starts_with(SET_ELEMENT_ORDER)
        {
            continue;
        }
        if !retained(key) {
            return Err(StrategicError::invalid(
                "patch content doesn't match retainKeys list",
            ));
        }
    }
    original.retain(|key, _| retained(key));
    Ok(())
}

/// `$setElementOrder/FIELD`: merges FIELD's patch list (if any) and orders the result.
fn apply_element_orders(
    original: &mut Object,
    patch: &mut Object,
    node: Node,
) -> Result<(), StrategicError> {
    let fields: Vec<String> = patch
        .keys()
        .filter_map(|k| k.strip_prefix(SET_ELEMENT_ORDER))
        .map(str::to_string)
        .collect();
    for field in fields {
        let order = patch
            .remove(&format!("{SET_ELEMENT_ORDER}{field}"))
            .unwrap_or(Value::Null);
        let Value::Array(order) = order else {
            return Err(StrategicError::bad_arg_type("[]interface {}", &order));
        };
        let stored = match original.get(&field) {
            None => None,
            Some(Value::Array(list)) => Some(list.clone()),
            Some(other) => return Err(StrategicError::bad_arg_type("[]interface {}", other)),
        };
        let patched = match patch.remove(&field) {
            None => None,
            Some(Value::Array(list)) => Some(list),
            Some(other) => return Err(StrategicError::bad_arg_type("[]interface {}", &other)),
        };
        let (child, strategy, merge_key) = field_meta(node, &field);
        validate_element_order(patched.as_deref().unwrap_or(&[]), &order, merge_key)?;
        let stored_list = stored.clone().unwrap_or_default();
        let patch_list = patched.clone().unwrap_or_default();
        let merged = match (stored, patched) {
            (Some(stored), None) => stored,
            (None, Some(patched)) => clean_list(patched),
            (Some(stored), Some(patched)) => {
                if strategy.is_some_and(Strategy::merges_lists) {
                    merge_list(stored, patched, child, merge_key, false)?
                } else {
                    clean_list(patched)
                }
            }
            (None, None) => continue,
        };
        let Some(kind) = element_kind(&stored_list, &patch_list)? else {
            // Nothing on either side to order; upstream fails here, an empty list is harmless.
            original.insert(field, Value::Array(merged));
            continue;
        };
        let (listed, server_only) = partition(merged, &order, merge_key, kind)?;
        let ordered = order_elements(listed, server_only, &order, &stored_list, merge_key, kind)?;
        original.insert(field, Value::Array(ordered));
    }
    Ok(())
}

/// The patch list must follow the `$setElementOrder` list: the same relative order, and no
/// element the order list lacks (elements being deleted aside).
fn validate_element_order(
    patch: &[Value],
    order: &[Value],
    merge_key: &str,
) -> Result<(), StrategicError> {
    if patch.is_empty() || order.is_empty() {
        return Ok(());
    }
    let kept: Vec<&Value> = if merge_key.is_empty() {
        patch.iter().collect()
    } else {
        patch
            .iter()
            .filter(|item| item.get(DIRECTIVE).and_then(Value::as_str) != Some("delete"))
            .collect()
    };
    let (mut p, mut o) = (0, 0);
    while p < kept.len() && o < order.len() {
        if kept[p].get(DIRECTIVE).is_some() {
            p += 1;
            continue;
        }
        if merge_key_equal(kept[p], &order[o], merge_key)? {
            p += 1;
        }
        o += 1;
    }
    if p < kept.len() && o >= order.len() {
        return Err(StrategicError::bad(format!(
            "The order in patch list:\n{}\n doesn't match {SET_ELEMENT_ORDER} list:\n{}\n",
            go_list(patch),
            go_list(order)
        )));
    }
    Ok(())
}

fn merge_key_equal(left: &Value, right: &Value, merge_key: &str) -> Result<bool, StrategicError> {
    if merge_key.is_empty() {
        return Ok(left == right);
    }
    let left = left
        .as_object()
        .ok_or_else(|| StrategicError::bad_arg_type("map[string]interface {}", left))?;
    let right = right
        .as_object()
        .ok_or_else(|| StrategicError::bad_arg_type("map[string]interface {}", right))?;
    let l = left
        .get(merge_key)
        .ok_or_else(|| StrategicError::no_merge_key(left, merge_key))?;
    let r = right
        .get(merge_key)
        .ok_or_else(|| StrategicError::no_merge_key(right, merge_key))?;
    Ok(l == r)
}

/// The JSON type of list elements, compared as Go compares decoded values' types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ElementKind {
    Null,
    Bool,
    Int,
    Float,
    String,
    List,
    Object,
}

fn kind_of(value: &Value) -> ElementKind {
    match value {
        Value::Null => ElementKind::Null,
        Value::Bool(_) => ElementKind::Bool,
        Value::Number(n) if n.is_f64() => ElementKind::Float,
        Value::Number(_) => ElementKind::Int,
        Value::String(_) => ElementKind::String,
        Value::Array(_) => ElementKind::List,
        Value::Object(_) => ElementKind::Object,
    }
}

/// The one element type of both lists; `None` when both are empty. Mixed types and lists of
/// lists cannot be merged.
fn element_kind(
    original: &[Value],
    patch: &[Value],
) -> Result<Option<ElementKind>, StrategicError> {
    let mut kind = None;
    for value in original.iter().chain(patch) {
        let this = kind_of(value);
        match kind {
            None if this == ElementKind::List => {
                return Err(StrategicError::invalid("lists of lists are not supported"));
            }
            None => kind = Some(this),
            Some(k) if k != this => {
                return Err(StrategicError::bad(format!(
                    "list element types are not identical: [{} {}]",
                    go_list(original),
                    go_list(patch)
                )));
            }
            Some(_) => {}
        }
    }
    Ok(kind)
}

/// Merges a patch list into a stored list of a field with the merge strategy (or removes a
/// `$deleteFromPrimitiveList` list's values), then orders the result: the patch's elements in
/// the patch's order, the server's others near their stored neighbours.
fn merge_list(
    original: Vec<Value>,
    patch: Vec<Value>,
    node: Node,
    merge_key: &str,
    deletion: bool,
) -> Result<Vec<Value>, StrategicError> {
    if original.is_empty() && patch.is_empty() {
        return Ok(original);
    }
    let Some(kind) = element_kind(&original, &patch)? else {
        return Ok(original);
    };
    let (original, patch, merged) = if kind != ElementKind::Object {
        if deletion {
            return Ok(original
                .into_iter()
                .filter(|item| !patch.contains(item))
                .collect());
        }
        let mut merged: Vec<Value> = Vec::with_capacity(original.len() + patch.len());
        for item in original.iter().chain(&patch) {
            if !merged.contains(item) {
                merged.push(item.clone());
            }
        }
        (original, patch, merged)
    } else {
        if merge_key.is_empty() {
            return Err(StrategicError::bad(format!(
                "cannot merge lists without merge key for {}",
                graph::message_name(node).unwrap_or("")
            )));
        }
        let (original, patch) = apply_list_directives(original, patch, merge_key)?;
        let merged = merge_by_key(original.clone(), &patch, merge_key, node)?;
        (original, patch, merged)
    };
    let (listed, server_only) = partition(merged, &patch, merge_key, kind)?;
    order_elements(listed, server_only, &patch, &original, merge_key, kind)
}

/// Handles `$patch` elements of a patch list of objects: `delete` removes the stored elements
/// with that merge key, `replace` makes the other patch elements the whole list. Returns the
/// stored list and the patch elements still to merge.
fn apply_list_directives(
    mut original: Vec<Value>,
    patch: Vec<Value>,
    merge_key: &str,
) -> Result<(Vec<Value>, Vec<Value>), StrategicError> {
    let mut rest = Vec::with_capacity(patch.len());
    let mut replace = false;
    for item in patch {
        let Value::Object(map) = &item else {
            rest.push(item);
            continue;
        };
        let Some(directive) = map.get(DIRECTIVE) else {
            rest.push(item);
            continue;
        };
        match directive.as_str() {
            Some("delete") => {
                let value = map
                    .get(merge_key)
                    .ok_or_else(|| StrategicError::no_merge_key(map, merge_key))?;
                original.retain(|stored| stored.get(merge_key) != Some(value));
            }
            // Keep going: the other `$patch` elements still have to be left out.
            Some("replace") => replace = true,
            Some("merge") => {
                return Err(StrategicError::bad(
                    "merging lists cannot yet be specified in the patch",
                ));
            }
            _ => return Err(StrategicError::bad_patch_type(directive, map)),
        }
    }
    if replace {
        return Ok((clean_list(rest), Vec::new()));
    }
    Ok((original, rest))
}

/// Merges each patch element into the stored element with the same merge key, or appends it.
fn merge_by_key(
    mut original: Vec<Value>,
    patch: &[Value],
    merge_key: &str,
    node: Node,
) -> Result<Vec<Value>, StrategicError> {
    for item in patch {
        let Value::Object(map) = item else {
            return Err(StrategicError::bad_arg_type(
                "map[string]interface {}",
                item,
            ));
        };
        let value = map
            .get(merge_key)
            .ok_or_else(|| StrategicError::no_merge_key(map, merge_key))?;
        let mut found = None;
        for (i, stored) in original.iter().enumerate() {
            let Value::Object(stored) = stored else {
                return Err(StrategicError::bad(format!(
                    "value for key {i} is not a map"
                )));
            };
            if stored.get(merge_key) == Some(value) {
                found = Some(i);
                break;
            }
        }
        match found {
            Some(i) => {
                let stored = match std::mem::take(&mut original[i]) {
                    Value::Object(stored) => stored,
                    _ => Object::new(),
                };
                original[i] = Value::Object(merge_map(stored, map.clone(), node)?);
            }
            None => {
                if let Some(item) = clean(item.clone()) {
                    original.push(item);
                }
            }
        }
    }
    Ok(original)
}

/// Splits merged elements into those the patch (or order list) names and the server's others.
fn partition(
    merged: Vec<Value>,
    named: &[Value],
    merge_key: &str,
    kind: ElementKind,
) -> Result<(Vec<Value>, Vec<Value>), StrategicError> {
    let (mut listed, mut server_only) = (Vec::new(), Vec::new());
    for item in merged {
        let present = if kind == ElementKind::Object && !merge_key.is_empty() {
            let Value::Object(map) = &item else {
                return Err(StrategicError::bad_arg_type(
                    "map[string]interface {}",
                    &item,
                ));
            };
            let value = map
                .get(merge_key)
                .ok_or_else(|| StrategicError::no_merge_key(map, merge_key))?;
            named.iter().any(|n| n.get(merge_key) == Some(value))
        } else {
            named.contains(&item)
        };
        if present {
            listed.push(item);
        } else {
            server_only.push(item);
        }
    }
    Ok((listed, server_only))
}

/// Orders patch elements by `patch_order` and server-only elements by `server_order`, then
/// interleaves them: a server-only element goes before a patch element when both are stored
/// and it was stored first. The order given by the patch always wins over the stored order.
fn order_elements(
    listed: Vec<Value>,
    server_only: Vec<Value>,
    patch_order: &[Value],
    server_order: &[Value],
    merge_key: &str,
    kind: ElementKind,
) -> Result<Vec<Value>, StrategicError> {
    let listed = sort_by_order(listed, patch_order, merge_key, kind)?;
    let server_only = sort_by_order(server_only, server_order, merge_key, kind)?;
    let mut out = Vec::with_capacity(listed.len() + server_only.len());
    let mut left = server_only.into_iter().peekable();
    let mut right = listed.into_iter().peekable();
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (Some(l), Some(r)) => {
                match (
                    position(server_order, l, merge_key, kind),
                    position(server_order, r, merge_key, kind),
                ) {
                    (Some(li), Some(ri)) => li < ri,
                    _ => false,
                }
            }
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let next = if take_left { left.next() } else { right.next() };
        out.extend(next);
    }
    Ok(out)
}

/// Stable sort of `items` by their position in `order`; items `order` lacks keep their place
/// after those it has.
fn sort_by_order(
    items: Vec<Value>,
    order: &[Value],
    merge_key: &str,
    kind: ElementKind,
) -> Result<Vec<Value>, StrategicError> {
    if kind == ElementKind::Object && !merge_key.is_empty() {
        for item in items.iter().chain(order) {
            let Value::Object(map) = item else {
                return Err(StrategicError::bad_arg_type(
                    "map[string]interface {}",
                    item,
                ));
            };
            if !map.contains_key(merge_key) {
                return Err(StrategicError::no_merge_key(map, merge_key));
            }
        }
    }
    let mut keyed: Vec<(usize, Value)> = items
        .into_iter()
        .map(|item| {
            (
                position(order, &item, merge_key, kind).unwrap_or(usize::MAX),
                item,
            )
        })
        .collect();
    keyed.sort_by_key(|(i, _)| *i);
    Ok(keyed.into_iter().map(|(_, item)| item).collect())
}

/// Where `item` is in `list`: by merge key for objects, by value otherwise.
fn position(list: &[Value], item: &Value, merge_key: &str, kind: ElementKind) -> Option<usize> {
    if kind == ElementKind::Object && !merge_key.is_empty() {
        let wanted = item.get(merge_key);
        list.iter().position(|v| v.get(merge_key) == wanted)
    } else {
        list.iter().position(|v| v == item)
    }
}

/// A patch value that lands in the object without being merged: directives and `null`s are
/// dropped (upstream's decode into the typed object drops them too), and an object marked
/// `$patch: delete` disappears.
fn clean(value: Value) -> Option<Value> {
    match value {
        Value::Object(map) => {
            if map.get(DIRECTIVE).and_then(Value::as_str) == Some("delete") {
                return None;
            }
            Some(Value::Object(clean_object(map)))
        }
        Value::Array(list) => Some(Value::Array(clean_list(list))),
        other => Some(other),
    }
}

fn clean_object(map: Object) -> Object {
    map.into_iter()
        .filter(|(key, value)| !value.is_null() && !is_directive(key, value))
        .filter_map(|(key, value)| clean(value).map(|value| (key, value)))
        .collect()
}

/// Whether an object entry is a patch directive rather than data. An unknown `$patch` value
/// is kept, as upstream keeps it.
fn is_directive(key: &str, value: &Value) -> bool {
    if key == DIRECTIVE {
        return matches!(value.as_str(), Some("replace" | "merge" | "delete"));
    }
    key == RETAIN_KEYS
        || key.starts_with(SET_ELEMENT_ORDER)
        || key.starts_with(DELETE_FROM_PRIMITIVE_LIST)
}

fn clean_list(list: Vec<Value>) -> Vec<Value> {
    list.into_iter().filter_map(clean).collect()
}

/// The Go type name of a decoded JSON value, for messages worded as upstream's.
fn go_type(value: &Value) -> &'static str {
    match kind_of(value) {
        ElementKind::Null => "<nil>",
        ElementKind::Bool => "bool",
        ElementKind::Int => "int64",
        ElementKind::Float => "float64",
        ElementKind::String => "string",
        ElementKind::List => "[]interface {}",
        ElementKind::Object => "map[string]interface {}",
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A value printed as Go's `%v` prints it: `map[k:v]` with sorted keys, `[a b]`, bare strings.
fn go_value(value: &Value) -> String {
    let mut out = String::new();
    write_go(&mut out, value);
    out
}

fn go_map(map: &Object) -> String {
    let mut out = String::new();
    write_go_map(&mut out, map);
    out
}

fn go_list(list: &[Value]) -> String {
    let mut out = String::from("[");
    for (i, item) in list.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        write_go(&mut out, item);
    }
    out.push(']');
    out
}

fn write_go(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("<nil>"),
        Value::Bool(b) => {
            let _ = write!(out, "{b}");
        }
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => out.push_str(s),
        Value::Array(list) => out.push_str(&go_list(list)),
        Value::Object(map) => write_go_map(out, map),
    }
}

fn write_go_map(out: &mut String, map: &Object) {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    out.push_str("map[");
    for (i, key) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(key);
        out.push(':');
        if let Some(value) = map.get(key) {
            write_go(out, value);
        }
    }
    out.push(']');
}

#[cfg(test)]
mod tests;
