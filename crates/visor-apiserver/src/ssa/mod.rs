//! Server-side apply and field ownership (`metadata.managedFields`).
//!
//! Every write records which manager set which fields. An *apply* (`PATCH` with
//! `application/apply-patch+yaml`) declares a manager's whole intent: the fields in the applied
//! configuration become the manager's, fields it applied before and now omits are removed
//! (unless another manager also owns them), and a field another manager owns with a different
//! value is a conflict — refused with 409 naming the managers and fields, or taken over with
//! `force=true`. Any other write (create, update, patch) gives its manager the fields it
//! changed and takes them from the others.
//!
//! Lists are merged by their type: associative lists by their key fields, sets by value,
//! atomic lists as a whole ([`TypeInfo`] says which). Client-side apply hands over to
//! server-side apply as upstream: a conflict with `kubectl-client-side-apply` over a field
//! whose value in the `last-applied-configuration` annotation equals the applied value is a
//! takeover, not a conflict; and the annotation is kept in step with what was applied.

pub mod fieldset;
pub mod types;

use serde_json::{Map, Value, json};

use fieldset::{Element, FieldSet, Path, display_path};
pub use types::{ListType, TypeInfo};

/// The manager kubectl uses for client-side apply.
pub const CLIENT_SIDE_APPLY_MANAGER: &str = "kubectl-client-side-apply";
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// Metadata fields managers may own; the rest are the system's.
const OWNED_METADATA: &[&str] = &["labels", "annotations", "finalizers", "ownerReferences"];

/// One entry of `metadata.managedFields`.
#[derive(Clone, Debug)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: String,
    subresource: String,
    fields: FieldSet,
}

impl Entry {
    fn parse(v: &Value) -> Option<Entry> {
        Some(Entry {
            manager: v.get("manager")?.as_str()?.to_string(),
            operation: v
                .get("operation")
                .and_then(Value::as_str)
                .unwrap_or("Update")
                .to_string(),
            api_version: v
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            time: v
                .get("time")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            subresource: v
                .get("subresource")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            fields: v
                .get("fieldsV1")
                .map(FieldSet::from_fields_v1)
                .unwrap_or_default(),
        })
    }

    /// The manager, operation and subresource, read as [`Entry::parse`] reads them.
    fn header(v: &Value) -> Option<(&str, &str, &str)> {
        let text = |name: &str, default: &'static str| {
            v.get(name).and_then(Value::as_str).unwrap_or(default)
        };
        Some((
            v.get("manager")?.as_str()?,
            text("operation", "Update"),
            text("subresource", ""),
        ))
    }

    fn render(&self) -> Value {
        let mut v = json!({
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": self.fields.to_fields_v1(),
        });
        if !self.subresource.is_empty() {
            v["subresource"] = json!(self.subresource);
        }
        v
    }

    fn is(&self, manager: &str, operation: &str, subresource: &str) -> bool {
        self.manager == manager && self.operation == operation && self.subresource == subresource
    }
}

fn read_entries(obj: Option<&Value>) -> Vec<Entry> {
    obj.and_then(|o| o.pointer("/metadata/managedFields"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Entry::parse).collect())
        .unwrap_or_default()
}

fn write_entries(obj: &mut Value, entries: Vec<Entry>) {
    let rendered: Vec<Value> = entries
        .into_iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| e.render())
        .collect();
    let meta = crate::object::meta_mut(obj);
    if rendered.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(rendered));
    }
}

/// A field another manager owns with a different value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub manager: String,
    pub api_version: String,
    pub field: String,
}

/// What a write is: the manager, and where it came in.
pub struct WriteContext<'a> {
    pub manager: &'a str,
    pub api_version: &'a str,
    /// `status` for writes through the status subresource, else empty.
    pub subresource: &'a str,
    pub now: &'a str,
}

/// The compact JSON key of an associative list item.
fn item_key(item: &Value, keys: &[String]) -> Option<String> {
    let mut m = Map::new();
    for k in keys {
        m.insert(k.clone(), item.get(k)?.clone());
    }
    Some(Value::Object(m).to_string())
}

/// Collects the paths `value` sets, as a manager owning it would own them.
fn collect(value: &Value, ty: &dyn TypeInfo, path: &mut Path, out: &mut FieldSet) {
    match value {
        Value::Object(map) if !ty.map_is_atomic() && !map.is_empty() => {
            for (k, v) in map {
                path.push(Element::Field(k.clone()));
                collect(v, ty.field(k).as_ref(), path, out);
                path.pop();
            }
        }
        Value::Array(items) => match ty.list_type() {
            ListType::Atomic => out.insert(path),
            ListType::Set => {
                if items.is_empty() {
                    out.insert(path);
                }
                for item in items {
                    path.push(Element::Value(item.to_string()));
                    out.insert(path);
                    path.pop();
                }
            }
            ListType::Map(keys) => {
                if items.is_empty() {
                    out.insert(path);
                }
                let item_type = ty.items();
                for item in items {
                    let Some(key) = item_key(item, &keys) else {
                        // An item without its keys cannot be addressed; own the list whole.
                        out.insert(path);
                        continue;
                    };
                    path.push(Element::Key(key));
                    out.insert(path);
                    collect(item, item_type.as_ref(), path, out);
                    path.pop();
                }
            }
        },
        _ => out.insert(path),
    }
}

/// The fields of a whole object a manager can own: everything but system metadata, and
/// `status` only through the status subresource.
pub fn owned_fields(obj: &Value, ty: &dyn TypeInfo, subresource: &str) -> FieldSet {
    let mut out = FieldSet::default();
    let Some(map) = obj.as_object() else {
        return out;
    };
    let mut path = Vec::new();
    for (k, v) in map {
        match k.as_str() {
            "apiVersion" | "kind" => continue,
            "status" if subresource != "status" => continue,
            "metadata" => {
                for field in OWNED_METADATA {
                    if let Some(v) = v.get(*field) {
                        path.push(Element::Field("metadata".into()));
                        path.push(Element::Field((*field).into()));
                        collect(
                            v,
                            types::ObjectMetaType.field(field).as_ref(),
                            &mut path,
                            &mut out,
                        );
                        path.clear();
                    }
                }
                continue;
            }
            _ => {}
        }
        path.push(Element::Field(k.clone()));
        collect(v, ty.field(k).as_ref(), &mut path, &mut out);
        path.clear();
    }
    out
}

/// The value at a path, if present.
fn value_at<'a>(obj: &'a Value, path: &[Element]) -> Option<&'a Value> {
    let mut current = obj;
    for element in path {
        current = match element {
            Element::Field(f) => current.get(f)?,
            Element::Key(k) => {
                let wanted: Map<String, Value> = serde_json::from_str(k).ok()?;
                current
                    .as_array()?
                    .iter()
                    .find(|item| wanted.iter().all(|(k, v)| item.get(k) == Some(v)))?
            }
            Element::Value(v) => {
                let wanted: Value = serde_json::from_str(v).ok()?;
                current.as_array()?.iter().find(|item| **item == wanted)?
            }
            Element::Index(i) => current.as_array()?.get(*i)?,
        };
    }
    Some(current)
}

/// Removes the value at a path; returns whether something was removed.
fn remove_at(obj: &mut Value, path: &[Element]) -> bool {
    let Some((last, parent_path)) = path.split_last() else {
        return false;
    };
    let mut parent = obj;
    for element in parent_path {
        let next = match element {
            Element::Field(f) => parent.get_mut(f),
            Element::Key(k) => {
                let Ok(wanted) = serde_json::from_str::<Map<String, Value>>(k) else {
                    return false;
                };
                parent.as_array_mut().and_then(|a| {
                    a.iter_mut()
                        .find(|item| wanted.iter().all(|(k, v)| item.get(k) == Some(v)))
                })
            }
            Element::Value(v) => {
                let Ok(wanted) = serde_json::from_str::<Value>(v) else {
                    return false;
                };
                parent
                    .as_array_mut()
                    .and_then(|a| a.iter_mut().find(|item| **item == wanted))
            }
            Element::Index(i) => parent.as_array_mut().and_then(|a| a.get_mut(*i)),
        };
        match next {
            Some(n) => parent = n,
            None => return false,
        }
    }
    match last {
        Element::Field(f) => parent
            .as_object_mut()
            .is_some_and(|m| m.remove(f).is_some()),
        Element::Key(k) => {
            let Ok(wanted) = serde_json::from_str::<Map<String, Value>>(k) else {
                return false;
            };
            let Some(items) = parent.as_array_mut() else {
                return false;
            };
            let before = items.len();
            items.retain(|item| !wanted.iter().all(|(k, v)| item.get(k) == Some(v)));
            items.len() != before
        }
        Element::Value(v) => {
            let Ok(wanted) = serde_json::from_str::<Value>(v) else {
                return false;
            };
            let Some(items) = parent.as_array_mut() else {
                return false;
            };
            let before = items.len();
            items.retain(|item| *item != wanted);
            items.len() != before
        }
        Element::Index(i) => parent.as_array_mut().is_some_and(|a| {
            if *i < a.len() {
                a.remove(*i);
                true
            } else {
                false
            }
        }),
    }
}

/// Merges an applied configuration into the live object, by type.
fn merge(live: &Value, applied: &Value, ty: &dyn TypeInfo) -> Value {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) if !ty.map_is_atomic() => {
            let mut out = l.clone();
            for (k, v) in a {
                let merged = match l.get(k) {
                    Some(existing) => merge(existing, v, ty.field(k).as_ref()),
                    None => v.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (Value::Array(l), Value::Array(a)) => match ty.list_type() {
            ListType::Atomic => applied.clone(),
            ListType::Set => {
                let mut out = l.clone();
                for item in a {
                    if !out.contains(item) {
                        out.push(item.clone());
                    }
                }
                Value::Array(out)
            }
            ListType::Map(keys) => {
                let item_type = ty.items();
                let mut out = l.clone();
                for item in a {
                    let key = item_key(item, &keys);
                    match key.and_then(|key| {
                        out.iter()
                            .position(|x| item_key(x, &keys).as_deref() == Some(key.as_str()))
                    }) {
                        Some(i) => out[i] = merge(&out[i], item, item_type.as_ref()),
                        None => out.push(item.clone()),
                    }
                }
                Value::Array(out)
            }
        },
        _ => applied.clone(),
    }
}

/// Whether a path ends at a leaf of the applied configuration (a value, not a container).
fn is_leaf(obj: &Value, path: &[Element]) -> bool {
    match value_at(obj, path) {
        Some(Value::Object(m)) => m.is_empty(),
        Some(_) => true,
        None => false,
    }
}

/// Applies `config` as `ctx.manager`. `live` is the current object (None when creating).
/// Returns the object to store, managedFields included, or the conflicts.
pub fn apply(
    live: Option<&Value>,
    config: &Value,
    ctx: &WriteContext,
    force: bool,
    ty: &dyn TypeInfo,
) -> Result<Value, Vec<Conflict>> {
    let mut entries = read_entries(live);
    let empty = json!({});
    let live_value = live.unwrap_or(&empty);
    let applied = owned_fields(config, ty, ctx.subresource);
    let last_applied: Option<Value> = live
        .and_then(|l| {
            l.pointer("/metadata/annotations")
                .and_then(|a| a.get(LAST_APPLIED))
        })
        .and_then(Value::as_str)
        .and_then(|s| serde_json::from_str(s).ok());

    let mut conflicts = Vec::new();
    let mut taken: Vec<(usize, Path)> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        if entry.is(ctx.manager, "Apply", ctx.subresource) {
            continue;
        }
        for path in applied.paths() {
            if !entry.fields.contains(&path) || !is_leaf(config, &path) {
                continue;
            }
            if value_at(live_value, &path) == value_at(config, &path) {
                continue;
            }
            let takeover = entry.manager == CLIENT_SIDE_APPLY_MANAGER
                && last_applied
                    .as_ref()
                    .is_some_and(|la| value_at(la, &path) == value_at(config, &path));
            if force || takeover {
                taken.push((i, path));
            } else {
                conflicts.push(Conflict {
                    manager: entry.manager.clone(),
                    api_version: entry.api_version.clone(),
                    field: display_path(&path),
                });
            }
        }
    }
    if !conflicts.is_empty() {
        return Err(conflicts);
    }
    for (i, path) in taken {
        entries[i].fields.remove(&path);
    }
    // A client-side apply that is taken over loses the fields the new applier now declares.
    if last_applied.is_some() {
        for entry in entries
            .iter_mut()
            .filter(|e| e.manager == CLIENT_SIDE_APPLY_MANAGER)
        {
            for path in applied.paths() {
                if last_applied
                    .as_ref()
                    .is_some_and(|la| value_at(la, &path).is_some())
                {
                    entry.fields.remove(&path);
                }
            }
        }
    }

    let mut object = merge(live_value, config, ty);
    let previous = entries
        .iter()
        .find(|e| e.is(ctx.manager, "Apply", ctx.subresource))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let others: Vec<&Entry> = entries
        .iter()
        .filter(|e| !e.is(ctx.manager, "Apply", ctx.subresource))
        .collect();
    let mut dropped: Vec<Path> = previous
        .difference(&applied)
        .paths()
        .into_iter()
        .filter(|p| !others.iter().any(|e| e.fields.has_under(p)))
        .collect();
    // Removing an item or map removes what lies beneath it; removing the children first
    // would strip a list item of the key fields it is found by.
    dropped.sort_by_key(Vec::len);
    let mut roots: Vec<Path> = Vec::new();
    for path in dropped {
        if !roots.iter().any(|r| path.starts_with(r)) {
            roots.push(path);
        }
    }
    for path in &roots {
        remove_at(&mut object, path);
    }

    entries.retain(|e| !e.is(ctx.manager, "Apply", ctx.subresource));
    entries.push(Entry {
        manager: ctx.manager.to_string(),
        operation: "Apply".into(),
        api_version: ctx.api_version.to_string(),
        time: ctx.now.to_string(),
        subresource: ctx.subresource.to_string(),
        fields: applied,
    });
    if last_applied.is_some() {
        // Keep client-side apply's record in step, so a later `kubectl apply` diffs correctly.
        let mut recorded = config.clone();
        if let Some(m) = recorded.get_mut("metadata").and_then(Value::as_object_mut) {
            if let Some(a) = m.get_mut("annotations").and_then(Value::as_object_mut) {
                a.remove(LAST_APPLIED);
            }
            m.remove("managedFields");
        }
        if let Some(text) = serde_json::to_string(&recorded).ok()
            && let Some(annotations) = object
                .pointer_mut("/metadata/annotations")
                .and_then(Value::as_object_mut)
        {
            annotations.insert(LAST_APPLIED.into(), Value::String(text));
        }
    }
    write_entries(&mut object, entries);
    Ok(object)
}

/// What a write did to the owned fields: the paths it set anew or to a different value, and the
/// paths it removed.
#[derive(Default)]
struct Delta {
    changed: FieldSet,
    gone: FieldSet,
}

impl Delta {
    /// The delta between two whole objects. Subtrees that are equal are skipped without
    /// collecting their paths, so a write costs in proportion to what it changed.
    fn between(old: Option<&Value>, new: &Value, ty: &dyn TypeInfo, subresource: &str) -> Delta {
        let mut delta = Delta::default();
        let (Some(old), Some(new_map)) = (old, new.as_object()) else {
            delta.changed = owned_fields(new, ty, subresource);
            return delta;
        };
        let Some(old_map) = old.as_object() else {
            delta.changed = owned_fields(new, ty, subresource);
            delta.gone = owned_fields(old, ty, subresource);
            return delta;
        };
        let mut path = Vec::new();
        let removed = old_map.keys().filter(|k| !new_map.contains_key(*k));
        for key in new_map.keys().chain(removed) {
            match key.as_str() {
                "apiVersion" | "kind" => {}
                "status" if subresource != "status" => {}
                "metadata" => {
                    for field in OWNED_METADATA {
                        path.push(Element::Field("metadata".into()));
                        path.push(Element::Field((*field).into()));
                        delta.walk(
                            old_map.get(key).and_then(|m| m.get(*field)),
                            new_map.get(key).and_then(|m| m.get(*field)),
                            types::ObjectMetaType.field(field).as_ref(),
                            &mut path,
                        );
                        path.clear();
                    }
                }
                _ => {
                    path.push(Element::Field(key.clone()));
                    delta.walk(
                        old_map.get(key),
                        new_map.get(key),
                        ty.field(key).as_ref(),
                        &mut path,
                    );
                    path.clear();
                }
            }
        }
        delta
    }

    /// Whether a stored `managedFields` entry loses or gains fields by this delta: it owns a
    /// field that is gone, or one that changed if it is another manager's; the writer's own
    /// entry gains the changes (the first such entry, until `recorded`).
    fn touches(&self, raw: &Value, ctx: &WriteContext, recorded: bool) -> bool {
        let mine = Entry::header(raw)
            .is_some_and(|(m, o, s)| m == ctx.manager && o == "Update" && s == ctx.subresource);
        let fields = raw.get("fieldsV1").unwrap_or(&Value::Null);
        owns_any(fields, &self.gone)
            || (!mine && owns_any(fields, &self.changed))
            || (mine && !recorded && !self.changed.is_empty())
    }

    /// Adds the delta of the values at `path`, descending through maps and keyed lists present
    /// on both sides.
    fn walk(
        &mut self,
        old: Option<&Value>,
        new: Option<&Value>,
        ty: &dyn TypeInfo,
        path: &mut Path,
    ) {
        if old == new {
            return;
        }
        match (old, new) {
            (Some(Value::Object(o)), Some(Value::Object(n)))
                if !ty.map_is_atomic() && !o.is_empty() && !n.is_empty() =>
            {
                let removed = o.keys().filter(|k| !n.contains_key(*k));
                for key in n.keys().chain(removed) {
                    path.push(Element::Field(key.clone()));
                    self.walk(o.get(key), n.get(key), ty.field(key).as_ref(), path);
                    path.pop();
                }
            }
            (Some(Value::Array(o)), Some(Value::Array(n))) if !o.is_empty() && !n.is_empty() => {
                let ListType::Map(keys) = ty.list_type() else {
                    return self.compare(old, new, ty, path);
                };
                let (Some(old_items), Some(new_items)) = (keyed(o, &keys), keyed(n, &keys)) else {
                    return self.compare(old, new, ty, path);
                };
                let item_type = ty.items();
                for (key, item) in &new_items {
                    path.push(Element::Key(key.clone()));
                    match old_items.iter().find(|(k, _)| k == key) {
                        Some((_, old_item)) => {
                            self.walk(Some(old_item), Some(item), item_type.as_ref(), path)
                        }
                        None => {
                            self.changed.insert(path);
                            collect(item, item_type.as_ref(), path, &mut self.changed);
                        }
                    }
                    path.pop();
                }
                for (key, item) in &old_items {
                    if new_items.iter().all(|(k, _)| k != key) {
                        path.push(Element::Key(key.clone()));
                        self.gone.insert(path);
                        collect(item, item_type.as_ref(), path, &mut self.gone);
                        path.pop();
                    }
                }
            }
            _ => self.compare(old, new, ty, path),
        }
    }

    /// Adds the delta of two values by collecting every path of both: a path of `new` changed
    /// when `old` lacks it or, at a leaf, holds another value; a path only `old` has is gone.
    fn compare(
        &mut self,
        old: Option<&Value>,
        new: Option<&Value>,
        ty: &dyn TypeInfo,
        path: &mut Path,
    ) {
        let depth = path.len();
        let mut old_fields = FieldSet::default();
        if let Some(old) = old {
            collect(old, ty, path, &mut old_fields);
        }
        let mut new_fields = FieldSet::default();
        if let Some(new) = new {
            collect(new, ty, path, &mut new_fields);
        }
        for full in new_fields.paths() {
            let relative = &full[depth..];
            let differs = !old_fields.contains(&full)
                || new.is_some_and(|new| is_leaf(new, relative))
                    && old.and_then(|o| value_at(o, relative))
                        != new.and_then(|n| value_at(n, relative));
            if differs {
                self.changed.insert(&full);
            }
        }
        for full in old_fields.paths() {
            if !new_fields.contains(&full) {
                self.gone.insert(&full);
            }
        }
    }
}

/// The items of an associative list by their keys, when every item has its keys and no key
/// repeats; otherwise the list is compared whole.
fn keyed<'a>(items: &'a [Value], keys: &[String]) -> Option<Vec<(String, &'a Value)>> {
    let mut out: Vec<(String, &Value)> = Vec::with_capacity(items.len());
    for item in items {
        let key = item_key(item, keys)?;
        if out.iter().any(|(k, _)| *k == key) {
            return None;
        }
        out.push((key, item));
    }
    Some(out)
}

/// Whether a `FieldsV1` tree has any member of `set` as a member.
fn owns_any(fields_v1: &Value, set: &FieldSet) -> bool {
    let Some(map) = fields_v1.as_object() else {
        return false;
    };
    if set.is_member() && (map.is_empty() || map.contains_key(".")) {
        return true;
    }
    set.children().any(|(element, child)| {
        map.get(&element.encode())
            .is_some_and(|v| owns_any(v, child))
    })
}

/// Records a non-apply write: `ctx.manager` gets the fields that changed between `old` and
/// `new` (every field when creating), and the other managers lose them. Fields that
/// disappeared leave every manager.
///
/// The entries start from `new`'s own `managedFields` (the caller puts the current ones there
/// unless the client replaced them). Entries the write does not touch are kept as they are
/// when they are the current ones, which the server rendered; entries a client sent are all
/// read and rendered anew.
pub fn track_update(old: Option<&Value>, new: &mut Value, ctx: &WriteContext, ty: &dyn TypeInfo) {
    let delta = Delta::between(old, new, ty, ctx.subresource);
    let current = old.and_then(|o| o.pointer("/metadata/managedFields"));
    let rendered_by_server = current.is_some() && current == new.pointer("/metadata/managedFields");
    let sent = match crate::object::meta_mut(new).remove("managedFields") {
        Some(Value::Array(entries)) => entries,
        _ => Vec::new(),
    };
    let mut kept = Vec::with_capacity(sent.len() + 1);
    let mut recorded = false;
    let gone = delta.gone.paths();
    let changed = delta.changed.paths();
    for raw in sent {
        if rendered_by_server && !delta.touches(&raw, ctx, recorded) {
            if Entry::header(&raw).is_some() {
                kept.push(raw);
            }
            continue;
        }
        let Some(mut entry) = Entry::parse(&raw) else {
            continue;
        };
        for path in &gone {
            entry.fields.remove(path);
        }
        if entry.is(ctx.manager, "Update", ctx.subresource) {
            if !recorded && !delta.changed.is_empty() {
                entry.fields.union(&delta.changed);
                entry.time = ctx.now.to_string();
                entry.api_version = ctx.api_version.to_string();
                recorded = true;
            }
        } else {
            for path in &changed {
                entry.fields.remove(path);
            }
        }
        if !entry.fields.is_empty() {
            kept.push(entry.render());
        }
    }
    if !recorded && !delta.changed.is_empty() {
        kept.push(
            Entry {
                manager: ctx.manager.to_string(),
                operation: "Update".into(),
                api_version: ctx.api_version.to_string(),
                time: ctx.now.to_string(),
                subresource: ctx.subresource.to_string(),
                fields: delta.changed,
            }
            .render(),
        );
    }
    if !kept.is_empty() {
        crate::object::meta_mut(new).insert("managedFields".into(), Value::Array(kept));
    }
}

/// The manager name upstream derives from a User-Agent when no `fieldManager` is given:
/// the part before the first `/`.
pub fn manager_from_user_agent(user_agent: Option<&str>) -> String {
    let agent = user_agent
        .unwrap_or("")
        .split('/')
        .next()
        .unwrap_or("")
        .trim();
    if agent.is_empty() {
        "unknown".into()
    } else {
        agent.chars().take(128).collect()
    }
}

/// The 409 message upstream sends for apply conflicts.
pub fn conflict_message(conflicts: &[Conflict]) -> String {
    let n = conflicts.len();
    let noun = if n == 1 { "conflict" } else { "conflicts" };
    if n == 1 {
        let c = &conflicts[0];
        return format!(
            "Apply failed with 1 conflict: conflict with \"{}\" using {}: {}",
            c.manager, c.api_version, c.field
        );
    }
    let lines: Vec<String> = conflicts
        .iter()
        .map(|c| {
            format!(
                "- conflict with \"{}\" using {}: {}",
                c.manager, c.api_version, c.field
            )
        })
        .collect();
    format!("Apply failed with {n} {noun}:\n{}", lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use types::Deduced;

    fn ctx<'a>(manager: &'a str) -> WriteContext<'a> {
        WriteContext {
            manager,
            api_version: "v1",
            subresource: "",
            now: "2026-01-01T00:00:00Z",
        }
    }

    fn cm(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": data})
    }

    #[test]
    fn apply_owns_and_removes_what_it_no_longer_declares() {
        let first = apply(
            None,
            &cm(json!({"a": "1", "b": "2"})),
            &ctx("alice"),
            false,
            &Deduced,
        )
        .unwrap();
        assert_eq!(
            first["metadata"]["managedFields"][0]["fieldsV1"],
            json!({"f:data": {"f:a": {}, "f:b": {}}})
        );
        let second = apply(
            Some(&first),
            &cm(json!({"a": "1"})),
            &ctx("alice"),
            false,
            &Deduced,
        )
        .unwrap();
        assert_eq!(second["data"], json!({"a": "1"}));
    }

    #[test]
    fn conflicts_name_the_manager_and_field_and_force_takes_over() {
        let first = apply(None, &cm(json!({"a": "1"})), &ctx("alice"), false, &Deduced).unwrap();
        let conflicts = apply(
            Some(&first),
            &cm(json!({"a": "2"})),
            &ctx("bob"),
            false,
            &Deduced,
        )
        .unwrap_err();
        assert_eq!(
            conflict_message(&conflicts),
            "Apply failed with 1 conflict: conflict with \"alice\" using v1: .data.a"
        );
        // The same value is shared, not a conflict.
        let shared = apply(
            Some(&first),
            &cm(json!({"a": "1"})),
            &ctx("bob"),
            false,
            &Deduced,
        )
        .unwrap();
        assert_eq!(
            shared["metadata"]["managedFields"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        let forced = apply(
            Some(&first),
            &cm(json!({"a": "2"})),
            &ctx("bob"),
            true,
            &Deduced,
        )
        .unwrap();
        assert_eq!(forced["data"]["a"], "2");
        let managers: Vec<&str> = forced["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["manager"].as_str().unwrap())
            .collect();
        assert_eq!(managers, vec!["bob"]);
        // A field another manager still owns survives its removal from one manager's config.
        let both = apply(Some(&shared), &cm(json!({})), &ctx("bob"), false, &Deduced).unwrap();
        assert_eq!(both["data"]["a"], "1");
    }

    #[test]
    fn updates_take_changed_fields_from_others() {
        let applied = apply(
            None,
            &cm(json!({"a": "1", "b": "2"})),
            &ctx("alice"),
            false,
            &Deduced,
        )
        .unwrap();
        let mut edited = applied.clone();
        edited["data"]["a"] = json!("9");
        // The caller carries the current entries over.
        track_update(Some(&applied), &mut edited, &ctx("kubectl-edit"), &Deduced);
        let entries = edited["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0]["fieldsV1"], json!({"f:data": {"f:b": {}}}));
        assert_eq!(entries[1]["manager"], "kubectl-edit");
        assert_eq!(entries[1]["operation"], "Update");
        assert_eq!(entries[1]["fieldsV1"], json!({"f:data": {"f:a": {}}}));
        // Now alice re-applying her old value conflicts with the editor.
        let conflicts = apply(
            Some(&edited),
            &cm(json!({"a": "1", "b": "2"})),
            &ctx("alice"),
            false,
            &Deduced,
        )
        .unwrap_err();
        assert_eq!(conflicts[0].manager, "kubectl-edit");
    }

    #[test]
    fn client_side_apply_is_taken_over() {
        let config = cm(json!({"a": "1"}));
        let mut live = config.clone();
        live["metadata"]["annotations"] = json!({ LAST_APPLIED: config.to_string() });
        track_update(None, &mut live, &ctx(CLIENT_SIDE_APPLY_MANAGER), &Deduced);
        let mut changed = cm(json!({"a": "2"}));
        changed["metadata"]["annotations"] = json!({});
        // The new value differs from last-applied: still a conflict.
        assert!(apply(Some(&live), &changed, &ctx("kubectl"), false, &Deduced).is_err());
        // Re-declaring the same configuration server-side takes the fields over quietly.
        let taken = apply(Some(&live), &config, &ctx("kubectl"), false, &Deduced).unwrap();
        let entries = taken["metadata"]["managedFields"].as_array().unwrap();
        let kubectl = entries.iter().find(|e| e["manager"] == "kubectl").unwrap();
        assert_eq!(kubectl["fieldsV1"]["f:data"], json!({"f:a": {}}));
        assert!(
            taken["metadata"]["annotations"][LAST_APPLIED]
                .as_str()
                .unwrap()
                .contains("\"a\":\"1\"")
        );
    }

    #[test]
    fn associative_lists_merge_by_key() {
        struct Containers;
        impl TypeInfo for Containers {
            fn field(&self, name: &str) -> Box<dyn TypeInfo> {
                if name == "spec" || name == "containers" {
                    Box::new(Containers)
                } else {
                    Box::new(Deduced)
                }
            }
            fn items(&self) -> Box<dyn TypeInfo> {
                Box::new(Deduced)
            }
            fn list_type(&self) -> ListType {
                ListType::Map(vec!["name".into()])
            }
        }
        let obj = |containers: Value| json!({"spec": {"containers": containers}});
        let a = apply(
            None,
            &obj(json!([{"name": "a", "image": "x"}])),
            &ctx("alice"),
            false,
            &Containers,
        )
        .unwrap();
        let b = apply(
            Some(&a),
            &obj(json!([{"name": "b", "image": "y"}])),
            &ctx("bob"),
            false,
            &Containers,
        )
        .unwrap();
        assert_eq!(
            b["spec"]["containers"],
            json!([{"name": "a", "image": "x"}, {"name": "b", "image": "y"}])
        );
        let a2 = apply(Some(&b), &obj(json!([])), &ctx("alice"), false, &Containers).unwrap();
        assert_eq!(
            a2["spec"]["containers"],
            json!([{"name": "b", "image": "y"}])
        );
    }

    /// The straightforward form of [`track_update`]: both objects' fields collected whole and
    /// every entry read and rendered.
    fn reference_track_update(
        old: Option<&Value>,
        new: &mut Value,
        ctx: &WriteContext,
        ty: &dyn TypeInfo,
    ) {
        let mut entries = read_entries(Some(new));
        let new_fields = owned_fields(new, ty, ctx.subresource);
        let old_fields = old
            .map(|o| owned_fields(o, ty, ctx.subresource))
            .unwrap_or_default();
        let mut changed = FieldSet::default();
        for path in new_fields.paths() {
            let differs = match old {
                Some(o) => {
                    !old_fields.contains(&path)
                        || (is_leaf(new, &path) && value_at(o, &path) != value_at(new, &path))
                }
                None => true,
            };
            if differs {
                changed.insert(&path);
            }
        }
        let gone = old_fields.difference(&new_fields);
        for entry in entries.iter_mut() {
            for path in gone.paths() {
                entry.fields.remove(&path);
            }
            if !entry.is(ctx.manager, "Update", ctx.subresource) {
                for path in changed.paths() {
                    entry.fields.remove(&path);
                }
            }
        }
        if !changed.is_empty() {
            match entries
                .iter_mut()
                .find(|e| e.is(ctx.manager, "Update", ctx.subresource))
            {
                Some(entry) => {
                    entry.fields.union(&changed);
                    entry.time = ctx.now.to_string();
                    entry.api_version = ctx.api_version.to_string();
                }
                None => entries.push(Entry {
                    manager: ctx.manager.to_string(),
                    operation: "Update".into(),
                    api_version: ctx.api_version.to_string(),
                    time: ctx.now.to_string(),
                    subresource: ctx.subresource.to_string(),
                    fields: changed,
                }),
            }
        }
        write_entries(new, entries);
    }

    fn mutate(pod: &mut Value, op: u8, r: u32) {
        let labels = ["a", "b", "c"];
        if !pod["status"].is_object() && matches!(op, 2 | 3 | 4 | 14 | 19) {
            pod["status"] = json!({});
        }
        if matches!(op, 5 | 11 | 12)
            && pod["spec"]["containers"]
                .as_array()
                .is_none_or(Vec::is_empty)
        {
            pod["spec"]["containers"] = json!([{"name": "c0"}]);
        }
        match op {
            0 => pod["metadata"]["labels"][labels[r as usize % 3]] = json!(format!("v{r}")),
            1 => {
                if let Some(m) = pod["metadata"]["labels"].as_object_mut() {
                    m.remove(labels[r as usize % 3]);
                }
            }
            2 => pod["status"]["phase"] = json!(["Pending", "Running"][r as usize % 2]),
            3 | 4 => {
                let kind = format!("T{}", r % 3);
                let mut items: Vec<Value> = pod["status"]["conditions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                items.retain(|c| c["type"] != json!(kind));
                if op == 3 {
                    items.push(json!({"type": kind, "status": r.is_multiple_of(2).to_string()}));
                }
                pod["status"]["conditions"] = json!(items);
            }
            5 => pod["spec"]["containers"][0]["image"] = json!(format!("img{}", r % 3)),
            6 => {
                if let Some(a) = pod["spec"]["containers"].as_array_mut() {
                    a.push(json!({"name": format!("c{}", r % 3), "image": "x"}));
                }
            }
            7 => {
                if let Some(a) = pod["spec"]["containers"].as_array_mut()
                    && !a.is_empty()
                {
                    let i = r as usize % a.len();
                    a.remove(i);
                }
            }
            8 => pod["spec"]["nodeName"] = json!(format!("n{}", r % 2)),
            9 => {
                if let Some(m) = pod["spec"].as_object_mut() {
                    m.remove("nodeName");
                }
            }
            10 => pod["metadata"]["finalizers"] = json!([format!("f{}", r % 2), "g"]),
            11 => {
                pod["spec"]["containers"][0]["ports"] =
                    json!([{"containerPort": r % 3, "protocol": "TCP"}])
            }
            12 => pod["spec"]["containers"][0]["env"] = json!([{"name": "E"}, {"name": "E"}]),
            13 => pod["metadata"]["annotations"] = json!({}),
            14 => pod["status"]["containerStatuses"] = json!([]),
            15 => pod["spec"]["tolerations"] = json!([{"key": format!("k{}", r % 2)}]),
            16 => pod["spec"]["containers"] = json!([]),
            17 => pod["status"] = json!("odd"),
            18 => {
                if let Some(a) = pod["spec"]["containers"].as_array_mut() {
                    a.push(json!({"image": "keyless"}));
                }
            }
            _ => {
                pod["status"]["containerStatuses"] =
                    json!([{"name": "c0", "ready": r.is_multiple_of(2), "restartCount": r % 3}])
            }
        }
    }

    fn pod() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "labels": {"a": "1"}},
            "spec": {"containers": [{"name": "c0", "image": "img0"}]},
            "status": {"phase": "Pending", "conditions": [{"type": "T0", "status": "False"}]},
        })
    }

    proptest::proptest! {
        /// Walking only what differs records exactly what collecting both objects whole does.
        #[test]
        fn tracking_matches_collecting_everything(
            first in proptest::collection::vec((0u8..20, 0u32..1000), 0..8),
            second in proptest::collection::vec((0u8..20, 0u32..1000), 0..8),
            third in proptest::collection::vec((0u8..20, 0u32..1000), 0..8),
            managers in proptest::collection::vec(0usize..3, 3),
            status in proptest::collection::vec(proptest::bool::ANY, 3),
        ) {
            let ty = crate::strategic::apply_types::for_kind("v1", "Pod").unwrap();
            let names = ["alice", "bob", "carol"];
            let context = |i: usize| WriteContext {
                manager: names[managers[i]],
                api_version: "v1",
                subresource: if status[i] { "status" } else { "" },
                now: if i == 2 { "2026-01-02T00:00:00Z" } else { "2026-01-01T00:00:00Z" },
            };
            let mut created = pod();
            for (op, r) in &first {
                mutate(&mut created, *op, *r);
            }
            let mut expected = created.clone();
            track_update(None, &mut created, &context(0), &ty);
            reference_track_update(None, &mut expected, &context(0), &ty);
            proptest::prop_assert_eq!(&created, &expected);
            let mut current = created;
            for (step, ops) in [(1, &second), (2, &third)] {
                let mut next = current.clone();
                for (op, r) in ops {
                    mutate(&mut next, *op, *r);
                }
                let mut expected = next.clone();
                track_update(Some(&current), &mut next, &context(step), &ty);
                reference_track_update(Some(&current), &mut expected, &context(step), &ty);
                proptest::prop_assert_eq!(&next, &expected);
                current = next;
            }
        }
    }
}
