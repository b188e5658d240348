//! PATCH: JSON patch (RFC 6902) and JSON merge patch (RFC 7386), applied to the latest stored
//! object inside the registry's compare-and-swap loop, so concurrent patches never lose each
//! other's changes.

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
}

impl PatchType {
    pub fn from_content_type(content_type: &str) -> ApiResult<Self> {
        match content_type.split(';').next().unwrap_or("").trim() {
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/merge-patch+json" => Ok(PatchType::Merge),
            _ => Err(ApiError::unsupported_media_type(content_type)),
        }
    }
}

/// Applies a patch document to an object.
pub fn apply_patch(kind: PatchType, current: &Value, patch: &Value) -> ApiResult<Value> {
    let mut doc = current.clone();
    match kind {
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
    let document: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: invalid JSON: {e}")))?;
    let def = scope.def.clone();
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
        .guaranteed_update(scope, name, precondition, query.dry_run, |current| {
            let presented = match (&def.shared_storage, subresource) {
                (_, Some(Subresource::Scale)) => registry.scale_of(&def, current),
                (Some(shared), _) => (shared.from_storage)(current.clone()),
                (None, _) => current.clone(),
            };
            let mut patched = apply_patch(kind, &presented, &document)?;
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
                next["spec"]["replicas"] = Value::from(replicas);
                return Ok(next);
            }
            if let Some(shared) = &def.shared_storage {
                patched = (shared.to_storage)(patched);
            }
            if object::name(&patched) != name {
                return Err(ApiError::bad_request(
                    "the patch may not change the object's name",
                ));
            }
            crate::registry::merge_for_update(&def, subresource, current, &mut patched);
            Ok(patched)
        })
        .await?;
    Ok(result.object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_sets_and_removes() {
        let current =
            json!({"metadata": {"name": "a", "labels": {"x": "1", "y": "2"}}, "data": {"k": "v"}});
        let patched = apply_patch(
            PatchType::Merge,
            &current,
            &json!({"metadata": {"labels": {"x": null, "z": "3"}}}),
        )
        .unwrap();
        assert_eq!(patched["metadata"]["labels"], json!({"y": "2", "z": "3"}));
        assert!(apply_patch(PatchType::Merge, &current, &json!([1])).is_err());
    }

    #[test]
    fn json_patch_ops_and_errors() {
        let current = json!({"data": {"k": "v"}});
        let patched = apply_patch(
            PatchType::Json,
            &current,
            &json!([{"op": "add", "path": "/data/n", "value": "w"}]),
        )
        .unwrap();
        assert_eq!(patched["data"]["n"], "w");
        let err = apply_patch(
            PatchType::Json,
            &current,
            &json!([{"op": "remove", "path": "/data/missing"}]),
        )
        .unwrap_err();
        assert_eq!(err.code, 422);
        let err = apply_patch(PatchType::Json, &current, &json!({"op": "add"})).unwrap_err();
        assert_eq!(err.code, 400);
        let err = apply_patch(
            PatchType::Json,
            &current,
            &json!([{"op": "test", "path": "/data/k", "value": "other"}]),
        )
        .unwrap_err();
        assert_eq!(err.code, 422);
    }
}
