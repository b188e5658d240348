//! API discovery: which groups, versions and resources the server serves.
//!
//! Both forms upstream offers are generated from the catalog: the legacy documents
//! (`APIVersions`, `APIGroupList`, `APIGroup`, `APIResourceList`) and the aggregated
//! `apidiscovery.k8s.io/v2` `APIGroupDiscoveryList` that kubectl requests first, which lets it
//! learn everything in two requests instead of one per group-version.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::kinds::{Catalog, ResourceDef};

pub fn legacy_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": server_address }],
    })
}

fn group_entry(group: &str, versions: &[(String, Vec<Arc<ResourceDef>>)]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|(v, _)| json!({ "groupVersion": format!("{group}/{v}"), "version": v }))
        .collect();
    json!({ "name": group, "versions": versions, "preferredVersion": versions[0].clone() })
}

pub fn group_list(catalog: &Catalog) -> Value {
    let groups: Vec<Value> = catalog
        .groups()
        .iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, versions)| group_entry(g, versions))
        .collect();
    json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups })
}

pub fn group(catalog: &Catalog, name: &str) -> Option<Value> {
    catalog
        .groups()
        .iter()
        .find(|(g, _)| g == name && !g.is_empty())
        .map(|(g, versions)| {
            let mut entry = group_entry(g, versions);
            entry["kind"] = json!("APIGroup");
            entry["apiVersion"] = json!("v1");
            entry
        })
}

pub fn resource_list(catalog: &Catalog, group: &str, version: &str) -> Option<Value> {
    let groups = catalog.groups();
    let (_, versions) = groups.iter().find(|(g, _)| g == group)?;
    let (_, defs) = versions.iter().find(|(v, _)| v == version)?;
    let mut resources = Vec::new();
    for def in defs {
        let mut entry = json!({
            "name": def.plural,
            "singularName": def.singular,
            "namespaced": def.namespaced,
            "kind": def.kind,
            "verbs": def.verbs,
        });
        if !def.short_names.is_empty() {
            entry["shortNames"] = json!(def.short_names);
        }
        if !def.categories.is_empty() {
            entry["categories"] = json!(def.categories);
        }
        resources.push(entry);
        for sub in &def.subresources {
            let (verbs, kind) = sub.discovery();
            let mut entry = json!({
                "name": format!("{}/{}", def.plural, sub.name()),
                "singularName": "",
                "namespaced": def.namespaced,
                "kind": kind.map(|k| k.2).unwrap_or(&def.kind),
                "verbs": verbs,
            });
            if let Some((g, v, _)) = kind
                && (g != def.group || v != def.version)
            {
                entry["group"] = json!(g);
                entry["version"] = json!(v);
            }
            resources.push(entry);
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({ "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources }),
    )
}

fn aggregated_resource(def: &ResourceDef) -> Value {
    let mut entry = json!({
        "resource": def.plural,
        "responseKind": { "group": def.group, "version": def.version, "kind": def.kind },
        "scope": if def.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": def.singular,
        "verbs": def.verbs,
    });
    if !def.short_names.is_empty() {
        entry["shortNames"] = json!(def.short_names);
    }
    if !def.categories.is_empty() {
        entry["categories"] = json!(def.categories);
    }
    let subresources: Vec<Value> = def
        .subresources
        .iter()
        .map(|sub| {
            let (verbs, kind) = sub.discovery();
            let (group, version, kind) = kind.unwrap_or((&def.group, &def.version, &def.kind));
            json!({
                "subresource": sub.name(),
                "responseKind": { "group": group, "version": version, "kind": kind },
                "verbs": verbs,
            })
        })
        .collect();
    if !subresources.is_empty() {
        entry["subresources"] = Value::Array(subresources);
    }
    entry
}

/// The aggregated discovery document for the legacy group (`legacy` true, served at `/api`)
/// or for every named group (served at `/apis`).
pub fn aggregated(catalog: &Catalog, legacy: bool, api_version: &str) -> Value {
    let items: Vec<Value> = catalog
        .groups()
        .iter()
        .filter(|(g, _)| g.is_empty() == legacy)
        .map(|(g, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|(v, defs)| {
                    let resources: Vec<Value> =
                        defs.iter().map(|d| aggregated_resource(d)).collect();
                    json!({ "version": v, "resources": resources, "freshness": "Current" })
                })
                .collect();
            let mut metadata = json!({ "creationTimestamp": null });
            if !g.is_empty() {
                metadata["name"] = json!(g);
            }
            json!({ "metadata": metadata, "versions": versions })
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": api_version,
        "metadata": {},
        "items": items,
    })
}
