//! Service-account tokens, as upstream's bound tokens: signed JWTs naming
//! `system:serviceaccount:NS:NAME`, an audience, an expiry, and — when bound — the pod they
//! were issued for. They are issued by the `serviceaccounts/token` subresource (a
//! `TokenRequest`, what `kubectl create token` and the agents' projected volumes use).
//!
//! On every request the token's service account must still exist with the uid it was issued
//! for, and so must the bound pod: deleting either revokes the token at once, as upstream.

use serde::Deserialize;
use serde_json::{Value, json};

use super::keys::{Claims, KubernetesClaim, ObjectRef};
use super::{API_AUDIENCE, AUTHENTICATED, Authenticator, ISSUER, Identity};
use crate::errors::{ApiError, ApiResult};
use crate::kinds::FieldError;
use crate::registry::Registry;

const SA_PREFIX: &str = "system:serviceaccount:";
/// Upstream's default and minimum `expirationSeconds`.
const DEFAULT_EXPIRATION: i64 = 3600;
const MIN_EXPIRATION: i64 = 600;
/// Upstream refuses more than 2^32 seconds.
const MAX_EXPIRATION: i64 = 1 << 32;

#[derive(Deserialize)]
struct UidOnly<'a> {
    #[serde(borrow)]
    metadata: UidMeta<'a>,
}

#[derive(Deserialize)]
struct UidMeta<'a> {
    #[serde(default)]
    uid: &'a str,
}

/// The uid of the cached object at `key`, read without parsing the whole object.
fn cached_uid(registry: &Registry, key: &str) -> Option<String> {
    let object = registry.cache.get(key)?;
    let view: UidOnly = serde_json::from_slice(&object.json).ok()?;
    Some(view.metadata.uid.to_string())
}

/// The identity of a verified service-account token, if its service account (and bound pod)
/// still exist with the uids it names.
pub fn identity(
    registry: &Registry,
    subject: &str,
    claim: &KubernetesClaim,
) -> Result<Identity, String> {
    let namespace = &claim.namespace;
    let name = &claim.serviceaccount.name;
    if subject != format!("{SA_PREFIX}{namespace}:{name}") {
        return Err("subject and service account disagree".into());
    }
    let sa_key = format!("/registry/core/serviceaccounts/{namespace}/{name}");
    if cached_uid(registry, &sa_key).as_deref() != Some(claim.serviceaccount.uid.as_str()) {
        return Err("the service account no longer exists".into());
    }
    if let Some(pod) = &claim.pod {
        let pod_key = format!("/registry/core/pods/{namespace}/{}", pod.name);
        if cached_uid(registry, &pod_key).as_deref() != Some(pod.uid.as_str()) {
            return Err("the pod the token is bound to no longer exists".into());
        }
    }
    Ok(Identity {
        user: subject.to_string(),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{namespace}"),
            AUTHENTICATED.into(),
        ],
    })
}

fn invalid(field: &str, value: &Value, detail: &str) -> ApiError {
    ApiError::invalid(
        "authentication.k8s.io",
        "TokenRequest",
        "",
        &[FieldError::invalid(field, value, detail)],
    )
}

/// Serves `POST .../namespaces/NS/serviceaccounts/NAME/token` (already authorised for the
/// requester): checks the service account and the bound object, signs a token and returns
/// the TokenRequest with its `status`.
///
/// `requester` is the user asking; a node (`system:node:NAME`) may only ask for tokens bound
/// to pods it runs, as upstream's NodeRestriction.
pub fn token_request(
    auth: &Authenticator,
    requester: &str,
    namespace: &str,
    name: &str,
    mut request: Value,
) -> ApiResult<Value> {
    let registry = auth.registry();
    if request["kind"]
        .as_str()
        .is_some_and(|k| k != "TokenRequest")
    {
        return Err(ApiError::bad_request(format!(
            "expected a TokenRequest, got {}",
            request["kind"]
        )));
    }
    let sa_key = format!("/registry/core/serviceaccounts/{namespace}/{name}");
    let sa_uid = cached_uid(registry, &sa_key)
        .ok_or_else(|| ApiError::not_found("", "serviceaccounts", name))?;
    let spec = request.get("spec").cloned().unwrap_or(Value::Null);
    let audiences: Vec<String> = match spec.get("audiences").and_then(Value::as_array) {
        Some(list) if !list.is_empty() => list
            .iter()
            .map(|a| {
                a.as_str()
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .ok_or_else(|| invalid("spec.audiences", a, "must be non-empty strings"))
            })
            .collect::<ApiResult<_>>()?,
        _ => vec![API_AUDIENCE.to_string()],
    };
    let expiration = match spec.get("expirationSeconds") {
        None | Some(Value::Null) => DEFAULT_EXPIRATION,
        Some(v) => v
            .as_i64()
            .ok_or_else(|| invalid("spec.expirationSeconds", v, "must be an integer"))?,
    };
    if !(MIN_EXPIRATION..=MAX_EXPIRATION).contains(&expiration) {
        return Err(invalid(
            "spec.expirationSeconds",
            &json!(expiration),
            "may not specify a duration less than 10 minutes or more than 2^32 seconds",
        ));
    }
    let bound = spec.get("boundObjectRef").filter(|b| !b.is_null());
    let pod = match bound {
        None => None,
        Some(bound) => {
            let kind = bound["kind"].as_str().unwrap_or_default();
            if kind != "Pod" {
                return Err(invalid(
                    "spec.boundObjectRef.kind",
                    &bound["kind"],
                    "only a Pod may be bound",
                ));
            }
            let pod_name = bound["name"].as_str().unwrap_or_default();
            let key = format!("/registry/core/pods/{namespace}/{pod_name}");
            let stored = registry
                .cache
                .get(&key)
                .ok_or_else(|| ApiError::not_found("", "pods", pod_name))?
                .value();
            let uid = crate::object::meta_str(&stored, "uid")
                .unwrap_or_default()
                .to_string();
            if let Some(wanted) = bound["uid"].as_str().filter(|u| !u.is_empty())
                && wanted != uid
            {
                return Err(ApiError::conflict(
                    "",
                    "pods",
                    pod_name,
                    &format!(
                        "the UID in the bound object reference ({wanted}) does not match the UID in record ({uid}); the object might have been deleted and then recreated"
                    ),
                ));
            }
            if let Some(node) = requester.strip_prefix(super::join::NODE_USER_PREFIX)
                && stored.pointer("/spec/nodeName").and_then(Value::as_str) != Some(node)
            {
                return Err(ApiError::forbidden(format!(
                    "serviceaccounts {name:?} is forbidden: node {node:?} can only request tokens bound to pods scheduled to it"
                )));
            }
            Some(ObjectRef {
                name: pod_name.to_string(),
                uid,
            })
        }
    };
    if pod.is_none() && requester.starts_with(super::join::NODE_USER_PREFIX) {
        return Err(ApiError::forbidden(format!(
            "serviceaccounts {name:?} is forbidden: a node may only request tokens bound to a pod it runs"
        )));
    }
    let now = jiff::Timestamp::now().as_second();
    let claims = Claims {
        iss: ISSUER.into(),
        sub: format!("{SA_PREFIX}{namespace}:{name}"),
        aud: audiences.clone(),
        exp: now + expiration,
        nbf: now,
        iat: now,
        jti: uuid::Uuid::new_v4().to_string(),
        kubernetes: Some(KubernetesClaim {
            namespace: namespace.to_string(),
            serviceaccount: ObjectRef {
                name: name.to_string(),
                uid: sa_uid,
            },
            pod,
        }),
        visor: None,
    };
    let token = auth.sign(&claims)?;
    let expires = jiff::Timestamp::from_second(claims.exp)
        .map(|t| t.to_string())
        .unwrap_or_default();
    request["apiVersion"] = json!("authentication.k8s.io/v1");
    request["kind"] = json!("TokenRequest");
    let metadata = crate::object::meta_mut(&mut request);
    metadata.insert("name".into(), json!(name));
    metadata.insert("namespace".into(), json!(namespace));
    metadata.insert("creationTimestamp".into(), Value::Null);
    request["spec"]["audiences"] = json!(audiences);
    request["spec"]["expirationSeconds"] = json!(expiration);
    request["status"] = json!({ "token": token, "expirationTimestamp": expires });
    Ok(request)
}
