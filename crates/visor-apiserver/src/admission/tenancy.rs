//! Admission for Visor's tenancy kinds (`visor.dev`): what their structural schemas cannot
//! say — quantities that parse and are not negative, zones and grants named once — is refused
//! with 422 and a field path; a NamespaceRequest is stamped with who made it and refused
//! (403) unless that user belongs to one of its template's groups.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::errors::{ApiError, ApiResult};
use crate::kinds::FieldError;
use crate::kinds::validation::parse_quantity;
use crate::object;
use crate::rbac::Requester;
use crate::registry::{Registry, Scope};

const GROUP: &str = "visor.dev";
const REQUESTER_GROUPS_ANNOTATION: &str = "visor.dev/requester-groups";

/// Validates a SupervisorNamespace or NamespaceTemplate spec (422), and on a
/// NamespaceRequest's create stamps the requester and checks the template (403); on its
/// update keeps the spec as it was created (422 if changed).
pub(crate) fn admit(
    registry: &Registry,
    scope: &Scope,
    obj: &mut Value,
    old: Option<&Value>,
) -> ApiResult<()> {
    if scope.def.group != GROUP {
        return Ok(());
    }
    let mut errors = Vec::new();
    if matches!(
        scope.def.kind.as_str(),
        "SupervisorNamespace" | "NamespaceRequest"
    ) {
        // The object names a namespace, so its name must be one.
        let name = object::name(obj);
        if let Some(why) = crate::kinds::validation::dns1123_label(name).first() {
            errors.push(FieldError::invalid("metadata.name", &json!(name), why));
        }
    }
    match scope.def.kind.as_str() {
        "SupervisorNamespace" => validate_spec(obj.get("spec"), "spec", &mut errors),
        "NamespaceTemplate" => validate_spec(
            obj.pointer("/spec/namespace"),
            "spec.namespace",
            &mut errors,
        ),
        "NamespaceRequest" => match old {
            None => stamp_request(registry, obj)?,
            Some(old) => {
                if old.get("spec") != obj.get("spec") {
                    errors.push(FieldError::invalid(
                        "spec",
                        obj.get("spec").unwrap_or(&Value::Null),
                        "field is immutable",
                    ));
                }
                // The stamp is the server's: it follows the stored object.
                let stamp = old
                    .pointer("/metadata/annotations")
                    .and_then(|a| a.get(REQUESTER_GROUPS_ANNOTATION))
                    .cloned();
                if let Some(stamp) = stamp {
                    object::meta_mut(obj)
                        .entry("annotations")
                        .or_insert_with(|| json!({}))[REQUESTER_GROUPS_ANNOTATION] = stamp;
                }
            }
        },
        _ => {}
    }
    if errors.is_empty() {
        return Ok(());
    }
    Err(ApiError::invalid(
        GROUP,
        &scope.def.kind,
        object::name(obj),
        &errors,
    ))
}

fn check_quantity(value: Option<&Value>, path: &str, errors: &mut Vec<FieldError>) {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return;
    };
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    match parse_quantity(&text) {
        Err(_) => errors.push(FieldError::invalid(
            path,
            value,
            "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
        )),
        Ok(q) if q.nanos < 0 => errors.push(FieldError::invalid(
            path,
            value,
            "must be greater than or equal to 0",
        )),
        Ok(_) => {}
    }
}

/// Checks a SupervisorNamespace spec at `path`.
fn validate_spec(spec: Option<&Value>, path: &str, errors: &mut Vec<FieldError>) {
    let Some(spec) = spec else { return };
    for field in ["cpu", "memory", "storage"] {
        check_quantity(
            spec.pointer(&format!("/limits/{field}")),
            &format!("{path}.limits.{field}"),
            errors,
        );
    }
    let mut names = BTreeSet::new();
    for (i, class) in spec
        .get("storageClasses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let name = class.get("name").and_then(Value::as_str).unwrap_or("");
        let p = format!("{path}.storageClasses[{i}]");
        if name.is_empty() {
            errors.push(FieldError::required(format!("{p}.name"), ""));
        } else if let Some(why) = crate::kinds::validation::dns1123_subdomain(name).first() {
            errors.push(FieldError::invalid(format!("{p}.name"), &json!(name), why));
        } else if !names.insert(name) {
            errors.push(FieldError::duplicate(format!("{p}.name"), &json!(name)));
        }
        check_quantity(class.get("limit"), &format!("{p}.limit"), errors);
    }
    for field in ["zones", "vmClasses", "images"] {
        let mut seen = BTreeSet::new();
        for (i, v) in spec
            .get(field)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let p = format!("{path}.{field}[{i}]");
            match v.as_str() {
                Some("") | None => errors.push(FieldError::required(p, "")),
                Some(s) if s.contains(',') => {
                    errors.push(FieldError::invalid(p, v, "must not contain ','"))
                }
                Some(s) if !seen.insert(s) => errors.push(FieldError::duplicate(p, v)),
                _ => {}
            }
        }
    }
    for which in ["requests", "limits"] {
        for (k, v) in spec
            .pointer(&format!("/containerDefaults/{which}"))
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            check_quantity(
                Some(v),
                &format!("{path}.containerDefaults.{which}[{k}]"),
                errors,
            );
        }
    }
    let mut grants = BTreeSet::new();
    for (i, p) in spec
        .get("permissions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let key = (
            p.get("subject").and_then(Value::as_str).unwrap_or(""),
            p.get("name").and_then(Value::as_str).unwrap_or(""),
        );
        if !grants.insert(key) {
            errors.push(FieldError::duplicate(
                format!("{path}.permissions[{i}]"),
                &json!(format!("{}/{}", key.0, key.1)),
            ));
        }
    }
}

/// Records the requesting user in `spec.requester` and their groups in an annotation, then
/// checks that the template exists and admits one of those groups.
fn stamp_request(registry: &Registry, obj: &mut Value) -> ApiResult<()> {
    // Writes the server makes itself have no requester; they keep what they wrote.
    let Some(requester) = Requester::current() else {
        return Ok(());
    };
    let identity = requester.identity;
    obj["spec"]["requester"] = json!(identity.user);
    object::meta_mut(obj)
        .entry("annotations")
        .or_insert_with(|| json!({}))[REQUESTER_GROUPS_ANNOTATION] =
        json!(identity.groups.join(","));
    let name = object::name(obj).to_string();
    let template = obj
        .pointer("/spec/template")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let forbidden = |why: String| {
        ApiError::forbidden(format!(
            "namespacerequests.{GROUP} \"{name}\" is forbidden: {why}"
        ))
    };
    let key = format!("/registry/{GROUP}/namespacetemplates/{template}");
    let Some(cached) = registry.cache.get(&key) else {
        return Err(forbidden(format!(
            "namespace template \"{template}\" not found"
        )));
    };
    let allowed: Vec<String> = cached
        .value()
        .pointer("/spec/groups")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    let member = identity.groups.iter().any(|g| allowed.contains(g))
        || identity.groups.iter().any(|g| g == "system:masters");
    if !member {
        return Err(forbidden(format!(
            "user \"{}\" is not in a group allowed to use namespace template \"{template}\"",
            identity.user
        )));
    }
    for existing in [
        format!("/registry/core/namespaces/{name}"),
        format!("/registry/{GROUP}/supervisornamespaces/{name}"),
    ] {
        if registry.cache.get(&existing).is_some() {
            return Err(forbidden(format!("namespace \"{name}\" already exists")));
        }
    }
    Ok(())
}
