//! `meta.k8s.io/v1` Table responses: what `kubectl get` prints.
//!
//! kubectl asks for a Table in its Accept header and prints the columns it receives, so the
//! columns a kind declares are exactly what users see. Each row carries the object (by default
//! only its metadata) so kubectl can add the NAMESPACE column for `-A` and LABELS for
//! `--show-labels`.

use serde_json::{Map, Value, json};

use crate::kinds::{CellSource, ResourceDef, printers};

/// How much of each object a row carries (`includeObject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IncludeObject {
    None,
    #[default]
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        match value {
            None | Some("") | Some("Metadata") => Ok(IncludeObject::Metadata),
            Some("None") => Ok(IncludeObject::None),
            Some("Object") => Ok(IncludeObject::Object),
            Some(other) => Err(format!(
                "includeObject: Unsupported value: {other:?}: supported values: \"Metadata\", \"None\", \"Object\""
            )),
        }
    }
}

fn column_definitions(def: &ResourceDef) -> Value {
    Value::Array(
        def.table_columns()
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "type": c.type_,
                    "format": c.format,
                    "description": c.description,
                    "priority": c.priority,
                })
            })
            .collect(),
    )
}

fn cell(source: &CellSource, obj: &Value) -> Value {
    match source {
        CellSource::Name => obj
            .pointer("/metadata/name")
            .cloned()
            .unwrap_or(Value::Null),
        CellSource::Age => {
            let created = obj
                .pointer("/metadata/creationTimestamp")
                .and_then(Value::as_str)
                .unwrap_or("");
            Value::String(printers::age(created))
        }
        CellSource::Path(path) => printers::eval_path(obj, path).unwrap_or(Value::Null),
        CellSource::Printer(f) => f(obj),
    }
}

/// An object reduced to its metadata, as `PartialObjectMetadata`.
pub fn partial_metadata(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or(Value::Object(Map::new())),
    })
}

/// One table row for an object.
pub fn row(def: &ResourceDef, obj: &Value, include: IncludeObject) -> Value {
    let cells: Vec<Value> = def
        .table_columns()
        .iter()
        .map(|c| cell(&c.source, obj))
        .collect();
    let mut row = json!({ "cells": cells });
    match include {
        IncludeObject::None => {}
        IncludeObject::Object => row["object"] = obj.clone(),
        IncludeObject::Metadata => row["object"] = partial_metadata(obj),
    }
    row
}

/// A Table of objects, with list metadata.
pub fn table(
    def: &ResourceDef,
    objects: &[Value],
    list_meta: Value,
    include: IncludeObject,
    with_columns: bool,
) -> Value {
    let rows: Vec<Value> = objects.iter().map(|o| row(def, o, include)).collect();
    let mut table = json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "rows": rows,
    });
    if with_columns {
        table["columnDefinitions"] = column_definitions(def);
    } else {
        table["columnDefinitions"] = Value::Null;
    }
    table
}
