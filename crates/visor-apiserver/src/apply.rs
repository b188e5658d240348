//! Server-side apply requests (`PATCH` with `application/apply-patch+yaml`).
//!
//! The body is the manager's applied configuration. When the object does not exist it is
//! created from it; otherwise [`crate::ssa::apply`] merges it into the latest object inside the
//! registry's compare-and-swap loop. Conflicts become upstream's 409 with one
//! `FieldManagerConflict` cause per field, which kubectl turns into its familiar advice.

use serde_json::{Value, json};

use crate::errors::{ApiError, ApiResult};
use crate::kinds::{FieldError, Subresource};
use crate::object;
use crate::registry::{Registry, Scope, decode_body, merge_for_update};
use crate::request::Query;
use crate::ssa::{self, Conflict, WriteContext};

pub const APPLY_CONTENT_TYPE: &str = "application/apply-patch+yaml";

pub fn is_apply(content_type: &str) -> bool {
    content_type.split(';').next().map(str::trim) == Some(APPLY_CONTENT_TYPE)
}

fn conflict_error(group: &str, resource: &str, name: &str, conflicts: &[Conflict]) -> ApiError {
    let mut err = ApiError::new(409, "Conflict", ssa::conflict_message(conflicts));
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|c| json!({ "reason": "FieldManagerConflict", "message": format!("conflict with \"{}\" using {}", c.manager, c.api_version), "field": c.field }))
        .collect();
    let mut details = json!({ "name": name, "kind": resource, "causes": causes });
    if !group.is_empty() {
        details["group"] = json!(group);
    }
    err.details = Some(details);
    err
}

/// Handles an apply. Returns the object and whether it was created.
pub async fn apply(
    registry: &Registry,
    scope: &Scope,
    name: &str,
    subresource: Option<Subresource>,
    body: &[u8],
    query: &Query,
) -> ApiResult<(Value, bool)> {
    let def = scope.def.clone();
    let manager = query
        .field_manager
        .clone()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            ApiError::invalid(
                "meta.k8s.io",
                "PatchOptions",
                "",
                &[FieldError::required(
                    "fieldManager",
                    "is required for apply patch",
                )],
            )
        })?;
    // JSON is YAML, so one decoder reads both forms clients send.
    let mut config = decode_body(body, "application/yaml")?;
    for field in ["apiVersion", "kind"] {
        if config
            .get(field)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(ApiError::bad_request(format!(
                "invalid object: {field} must be set in an applied configuration"
            )));
        }
    }
    match object::meta_str(&config, "name") {
        None | Some("") => {
            object::meta_mut(&mut config).insert("name".into(), json!(name));
        }
        Some(n) if n != name => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        Some(_) => {}
    }
    let api_version = def.api_version();
    let now = object::now_rfc3339();
    let sub = if subresource == Some(Subresource::Status) {
        "status"
    } else {
        ""
    };
    let ctx = WriteContext {
        manager: &manager,
        api_version: &api_version,
        subresource: sub,
        now: &now,
    };
    let ty = ssa::types::for_resource(&def);

    let exists = registry
        .get(
            scope,
            name,
            &Query {
                resource_version: Some("0".into()),
                ..Default::default()
            },
        )
        .await
        .is_ok();
    if !exists && subresource.is_none() {
        let created = ssa::apply(None, &config, &ctx, query.force, ty.as_ref())
            .map_err(|c| conflict_error(&def.group, &def.plural, name, &c))?;
        let mut create_query = query.clone();
        create_query.apply = true;
        match registry.create(scope, created, &create_query).await {
            Ok(result) => return Ok((result.object, true)),
            // Created by someone else meanwhile: apply to it like any existing object.
            Err(e) if e.code == 409 && e.reason == "AlreadyExists" => {}
            Err(e) => return Err(e),
        }
    }
    let result = registry
        .guaranteed_update_by(scope, name, None, query.dry_run, None, |current| {
            let presented = registry.present(&def, current.clone());
            let mut next = ssa::apply(Some(&presented), &config, &ctx, query.force, ty.as_ref())
                .map_err(|c| conflict_error(&def.group, &def.plural, name, &c))?;
            next = registry.to_storage(&def, next);
            merge_for_update(&def, subresource, current, &mut next);
            Ok(next)
        })
        .await?;
    Ok((result.object, false))
}
