//! PATCH: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and, for built-in kinds,
//! strategic merge patch ([`crate::strategic`]), applied to the latest stored object inside the
//! registry's compare-and-swap loop, so concurrent patches never lose each other's changes.

use serde_json::Value;

use crate::errors::{ApiError, ApiResult};
use crate::kinds::Subresource;
use crate::object;
use crate::registry::{Registry, Scope};
use crate::request::Query;

/// The patch formats, by content type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
}

impl PatchType {
    pub fn from_content_type(content_type: &str) -> ApiResult<Self> {
        match content_type.split(';').next().unwrap_or("").trim() {
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
            _ => Err(ApiError::unsupported_media_type(content_type)),
        }
    }
}

/// Applies a patch document to an object. `type_of` is the (apiVersion, kind) the object is
/// presented as, which a strategic merge patch needs to know the object's types.
pub fn apply_patch(
    kind: PatchType,
    current: &Value,
    patch: &Value,
    type_of: (&str, &str),
) -> ApiResult<Value> {
    let mut doc = current.clone();
    match kind {
        PatchType::Strategic => {
            let (api_version, kind) = type_of;
            doc = crate::strategic::strategic_merge(current, patch, api_version, kind).map_err(
                |e| match e.code {
                    415 => strategic_unsupported(),
                    422 => ApiError::new(422, "Invalid", e.message),
                    _ => ApiError::bad_request(e.message),
                },
            )?;
        }
        PatchType::Merge => {
            if !patch.is_object() {
                return Err(ApiError::bad_request(
                    "error decoding patch: a merge patch must be a JSON object",
                ));
            }
            json_patch::merge(&mut doc, patch);
        }
        PatchType::Json => {
            let operations: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            json_patch::patch(&mut doc, &operations).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the server rejected our request due to an error in our request: {e}"),
                )
            })?;
        }
    }
    if !doc.is_object() {
        return Err(ApiError::bad_request(
            "the patched object is not a JSON object",
        ));
    }
    Ok(doc)
}

/// Upstream's answer to a strategic merge patch on a kind without a built-in type.
fn strategic_unsupported() -> ApiError {
    ApiError::new(
        415,
        "UnsupportedMediaType",
        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
    )
}

/// Patches an object, its status, or (through its scale view) its replicas.
pub async fn patch(
    registry: &Registry,
    scope: &Scope,
    name: &str,
    subresource: Option<Subresource>,
    content_type: &str,
    body: &[u8],
    query: &Query,
) -> ApiResult<Value> {
    let kind = PatchType::from_content_type(content_type)?;
    let def = scope.def.clone();
    let field_validation =
        crate::openapi::FieldValidation::parse(query.field_validation.as_deref(), "PatchOptions")?;
    // The (apiVersion, kind) the patch applies to: the Scale view for the scale subresource.
    let api_version = if def.group.is_empty() {
        def.version.clone()
    } else {
        format!("{}/{}", def.group, def.version)
    };
    let type_of = match subresource {
        Some(Subresource::Scale) => ("autoscaling/v1".to_string(), "Scale".to_string()),
        _ => (api_version, def.kind.clone()),
    };
    // Strategic merge needs the built-in type's merge keys; custom resources have none.
    if kind == PatchType::Strategic && !crate::strategic::has_schema(&type_of.0, &type_of.1) {
        return Err(strategic_unsupported());
    }
    let document: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: invalid JSON: {e}")))?;
    // A resourceVersion in a merge patch is a precondition, as upstream treats it.
    let precondition = document
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .map(|rv| {
            rv.parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version {rv:?}")))
        })
        .transpose()?;
    let result = registry
        .guaranteed_update_by(
            scope,
            name,
            precondition,
            query.dry_run,
            Some(&crate::registry::Writer::new(query, subresource)),
            |current| {
                let presented = match subresource {
                    Some(Subresource::Scale) => registry.scale_of(&def, current),
                    _ => registry.present(&def, current.clone()),
                };
                let mut patched =
                    apply_patch(kind, &presented, &document, (&type_of.0, &type_of.1))?;
                if subresource == Some(Subresource::Scale) {
                    let replicas = patched
                        .pointer("/spec/replicas")
                        .cloned()
                        .unwrap_or(Value::Null);
                    let Some(replicas) = replicas.as_i64().filter(|r| *r >= 0) else {
                        return Err(ApiError::invalid(
                            "autoscaling",
                            "Scale",
                            name,
                            &[crate::kinds::FieldError::invalid(
                                "spec.replicas",
                                &replicas,
                                "must be greater than or equal to 0",
                            )],
                        ));
                    };
                    let mut next = current.clone();
                    crate::registry::set_replicas(&def, &mut next, replicas);
                    return Ok(next);
                }
                // The stored object has no undeclared fields, so any the result has came from the patch.
                crate::openapi::validate_fields(
                    &registry.catalog,
                    &def,
                    None,
                    &patched,
                    field_validation,
                )?;
                patched = registry.to_storage(&def, patched);
                if object::name(&patched) != name {
                    return Err(ApiError::bad_request(
                        "the patch may not change the object's name",
                    ));
                }
                crate::registry::merge_for_update(&def, subresource, current, &mut patched);
                Ok(patched)
            },
        )
        .await?;
    Ok(result.object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CM: (&str, &str) = ("v1", "ConfigMap");

    #[test]
    fn merge_patch_sets_and_removes() {
        let current =
            json!({"metadata": {"name": "a", "labels": {"x": "1", "y": "2"}}, "data": {"k": "v"}});
        let patched = apply_patch(
            PatchType::Merge,
            &current,
            &json!({"metadata": {"labels": {"x": null, "z": "3"}}}),
            CM,
        )
        .unwrap();
        assert_eq!(patched["metadata"]["labels"], json!({"y": "2", "z": "3"}));
        assert!(apply_patch(PatchType::Merge, &current, &json!([1]), CM).is_err());
    }

    #[test]
    fn json_patch_ops_and_errors() {
        let current = json!({"data": {"k": "v"}});
        let patched = apply_patch(
            PatchType::Json,
            &current,
            &json!([{"op": "add", "path": "/data/n", "value": "w"}]),
            CM,
        )
        .unwrap();
        assert_eq!(patched["data"]["n"], "w");
        let err = apply_patch(
            PatchType::Json,
            &current,
            &json!([{"op": "remove", "path": "/data/missing"}]),
            CM,
        )
        .unwrap_err();
        assert_eq!(err.code, 422);
        let err = apply_patch(PatchType::Json, &current, &json!({"op": "add"}), CM).unwrap_err();
        assert_eq!(err.code, 400);
        let err = apply_patch(
            PatchType::Json,
            &current,
            &json!([{"op": "test", "path": "/data/k", "value": "other"}]),
            CM,
        )
        .unwrap_err();
        assert_eq!(err.code, 422);
    }

    #[test]
    fn strategic_patch_types_and_errors() {
        assert_eq!(
            PatchType::from_content_type("application/strategic-merge-patch+json").unwrap(),
            PatchType::Strategic
        );
        let current = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "finalizers": ["x"]}});
        let patched = apply_patch(
            PatchType::Strategic,
            &current,
            &json!({"metadata": {"finalizers": ["y"]}}),
            CM,
        )
        .unwrap();
        assert_eq!(patched["metadata"]["finalizers"], json!(["y", "x"]));
        let err =
            apply_patch(PatchType::Strategic, &current, &json!({"$patch": "x"}), CM).unwrap_err();
        assert_eq!((err.code, err.reason), (400, "BadRequest"));
        let err = apply_patch(
            PatchType::Strategic,
            &current,
            &json!({"metadata": {"$retainKeys": ["finalizers"], "name": "a"}}),
            CM,
        )
        .unwrap_err();
        assert_eq!((err.code, err.reason), (422, "Invalid"));
        let err = apply_patch(
            PatchType::Strategic,
            &current,
            &json!({}),
            ("example.com/v1", "Widget"),
        )
        .unwrap_err();
        assert_eq!((err.code, err.reason), (415, "UnsupportedMediaType"));
    }
}
