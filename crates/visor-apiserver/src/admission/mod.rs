//! Admission plugins that need more than one object: LimitRange defaults and limits,
//! ResourceQuota charging, and the checks of Visor's tenancy kinds.
//!
//! The registry calls two hooks on every create and update, in upstream's order:
//! [`mutate`] before defaulting and validation (LimitRange defaults; stamping a
//! NamespaceRequest), and [`validate`] after them, just before the object is written
//! (tenancy validation, LimitRange checks, allowed storage classes, and last the quota
//! charge, which is written in one store transaction with the object).

pub mod limitrange;
pub mod quota;
mod tenancy;
pub mod usage;

use serde_json::Value;

use crate::errors::{ApiError, ApiResult, qualified};
use crate::object;
use crate::registry::{Registry, Scope};

/// The namespace annotation listing the storage classes claims may use (comma-separated).
const ALLOWED_STORAGE_CLASSES_ANNOTATION: &str = "visor.dev/allowed-storage-classes";

fn is_core(scope: &Scope, resource: &str) -> bool {
    scope.def.group.is_empty() && scope.def.plural == resource
}

/// The namespace's LimitRanges, from the watch cache.
fn limit_ranges(registry: &Registry, namespace: &str) -> Vec<Value> {
    let (ranges, _) = registry
        .cache
        .list(&format!("/registry/core/limitranges/{namespace}/"));
    ranges.iter().map(|(_, r)| r.value()).collect()
}

/// Mutating admission: runs before defaulting and validation. `old` is the stored object on
/// updates.
pub(crate) async fn mutate(
    registry: &Registry,
    scope: &Scope,
    obj: &mut Value,
    old: Option<&Value>,
) -> ApiResult<()> {
    if old.is_none()
        && is_core(scope, "pods")
        && let Some(ns) = scope.namespace.as_deref()
    {
        let ranges = limit_ranges(registry, ns);
        if !ranges.is_empty() {
            limitrange::apply_pod_defaults(&ranges, obj);
        }
    }
    tenancy::admit(registry, scope, obj, old)
}

/// Validating admission: runs after validation, right before the write. Answers the write's
/// quota charge, which the registry stores together with the object; with `dry_run` the
/// checks run but there is no charge.
pub(crate) async fn validate(
    registry: &Registry,
    scope: &Scope,
    obj: &Value,
    old: Option<&Value>,
    dry_run: bool,
) -> ApiResult<Option<quota::Charge>> {
    let Some(ns) = scope.namespace.as_deref().filter(|_| scope.def.namespaced) else {
        return Ok(None);
    };
    let forbidden = |why: String| {
        ApiError::forbidden(format!(
            "{} \"{}\" is forbidden: {why}",
            qualified(&scope.def.group, &scope.def.plural),
            object::name(obj)
        ))
    };
    if old.is_none() && is_core(scope, "pods") {
        let ranges = limit_ranges(registry, ns);
        if let Some(why) = limitrange::check_pod(&ranges, obj) {
            return Err(forbidden(why));
        }
    }
    if is_core(scope, "persistentvolumeclaims") {
        let ranges = limit_ranges(registry, ns);
        if let Some(why) = limitrange::check_claim(&ranges, obj) {
            return Err(forbidden(why));
        }
        if old.is_none()
            && let Some(namespace) = registry
                .cache
                .get(&format!("/registry/core/namespaces/{ns}"))
            && let Some(allowed) = namespace
                .value()
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(ALLOWED_STORAGE_CLASSES_ANNOTATION))
                .and_then(Value::as_str)
        {
            let allowed: Vec<&str> = allowed.split(',').filter(|c| !c.is_empty()).collect();
            let class = usage::claim_class(obj).unwrap_or("");
            if !allowed.is_empty() && !allowed.contains(&class) {
                return Err(forbidden(format!(
                    "storage class \"{class}\" is not allowed in namespace {ns}; allowed: {}",
                    allowed.join(", ")
                )));
            }
        }
    }
    let request = quota::ChargeRequest {
        scope,
        old,
        new: obj,
    };
    quota::charge(registry, &request, dry_run).await
}
