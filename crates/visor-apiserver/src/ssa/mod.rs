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

/// Records a non-apply write: `ctx.manager` gets the fields that changed between `old` and
/// `new` (every field when creating), and the other managers lose them. Fields that
/// disappeared leave every manager.
///
/// The entries start from `new`'s own `managedFields` (the caller puts the current ones there
/// unless the client replaced them).
pub fn track_update(old: Option<&Value>, new: &mut Value, ctx: &WriteContext, ty: &dyn TypeInfo) {
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
}
