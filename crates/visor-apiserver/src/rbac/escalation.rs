//! Escalation prevention for Roles, ClusterRoles, RoleBindings and ClusterRoleBindings.
//!
//! As upstream: a user may create or change a role only if they hold every permission it
//! grants, or have the `escalate` verb on it; and a binding only if they hold every permission
//! of the role it references, or have the `bind` verb on that role. Members of
//! `system:masters`, and the server's own writes (no requester), are exempt.
//!
//! The check runs in the registry's admission step on the object about to be stored, so a
//! patch or an apply is judged by its result, exactly like a create or an update.

use serde_json::{Value, json};

use crate::errors::{ApiError, ApiResult, qualified};
use crate::object;
use crate::registry::Scope;

use super::rules::{Rule, covers};
use super::{Attributes, Requester, SYSTEM_MASTERS};

const GROUP: &str = "rbac.authorization.k8s.io";

fn forbidden(resource: &str, name: &str, why: &str) -> ApiError {
    let mut err = ApiError::forbidden(format!(
        "{} {name:?} is forbidden: {why}",
        qualified(GROUP, resource)
    ));
    err.details = Some(json!({ "name": name, "group": GROUP, "kind": resource }));
    err
}

/// Whether an update changes only what the garbage collector may change (owner references
/// and finalizers): upstream lets those through without an escalation check.
fn only_gc_fields_changed(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            for field in [
                "ownerReferences",
                "finalizers",
                "resourceVersion",
                "managedFields",
                "generation",
            ] {
                m.remove(field);
            }
        }
        v
    };
    strip(old) == strip(new)
}

/// The admission check; see the module documentation.
pub fn check(scope: &Scope, obj: &Value, old: Option<&Value>) -> ApiResult<()> {
    // NodeRestriction rides on this admission step: nodes write only their own objects.
    super::node::admit(scope, obj, old)?;
    if scope.def.group != GROUP {
        return Ok(());
    }
    let Some(Requester {
        identity,
        authorizer,
    }) = Requester::current()
    else {
        return Ok(());
    };
    if identity.groups.iter().any(|g| g == SYSTEM_MASTERS) {
        return Ok(());
    }
    if old.is_some_and(|old| only_gc_fields_changed(old, obj)) {
        return Ok(());
    }
    let resource = scope.def.plural.as_str();
    let name = object::name(obj);
    let namespace = if scope.def.namespaced {
        object::namespace(obj)
    } else {
        ""
    };
    let granted = match resource {
        "roles" | "clusterroles" => {
            let escalate = Attributes::resource("escalate", GROUP, resource, namespace, name);
            if authorizer.authorize(&identity, &escalate).allowed {
                return Ok(());
            }
            let aggregation_changed = obj.get("aggregationRule").is_some_and(|a| !a.is_null())
                && old.is_none_or(|old| old.get("aggregationRule") != obj.get("aggregationRule"));
            if resource == "clusterroles" && aggregation_changed {
                return Err(forbidden(
                    resource,
                    name,
                    "must have cluster-admin privileges to use the aggregationRule",
                ));
            }
            Rule::all_from(obj)
        }
        "rolebindings" | "clusterrolebindings" => {
            let role_name = obj
                .pointer("/roleRef/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let (role_resource, role_namespace) =
                match obj.pointer("/roleRef/kind").and_then(Value::as_str) {
                    Some("Role") => ("roles", namespace),
                    _ => ("clusterroles", ""),
                };
            let bind = Attributes::resource("bind", GROUP, role_resource, namespace, role_name);
            if authorizer.authorize(&identity, &bind).allowed {
                return Ok(());
            }
            match authorizer.role_rules(role_namespace, role_name) {
                Some(rules) => rules,
                None => {
                    let missing = format!(
                        "{} {role_name:?} not found",
                        qualified(GROUP, role_resource)
                    );
                    return Err(forbidden(resource, name, &missing));
                }
            }
        }
        _ => return Ok(()),
    };
    let held = authorizer.rules_for(&identity, namespace);
    if let Err(missing) = covers(&held, &granted) {
        let mut lines: Vec<String> = missing.iter().map(Rule::compact_string).collect();
        lines.sort();
        lines.dedup();
        let groups: Vec<String> = identity.groups.iter().map(|g| format!("{g:?}")).collect();
        let why = format!(
            "user {:?} (groups=[{}]) is attempting to grant RBAC permissions not currently held:\n{}",
            identity.user,
            groups.join(" "),
            lines.join("\n")
        );
        return Err(forbidden(resource, name, &why));
    }
    Ok(())
}
