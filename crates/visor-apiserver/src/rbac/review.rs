//! Access reviews: create-only resources that answer a question and are never stored.
//!
//! - `authorization.k8s.io/v1` SelfSubjectAccessReview (`kubectl auth can-i VERB RESOURCE`),
//!   SubjectAccessReview (for another user or groups), LocalSubjectAccessReview (the same,
//!   limited to one namespace), SelfSubjectRulesReview (`kubectl auth can-i --list`);
//! - `authentication.k8s.io/v1` SelfSubjectReview (`kubectl auth whoami`).
//!
//! Each answer is the request object with `status` filled in, as upstream returns it.

use serde_json::{Value, json};

use crate::auth::Identity;
use crate::errors::{ApiError, ApiResult};
use crate::kinds::FieldError;

use super::{Attributes, Requester};

fn requester() -> ApiResult<Requester> {
    Requester::current().ok_or_else(|| ApiError::internal("no requester for an access review"))
}

fn str_at<'a>(v: &'a Value, field: &str) -> &'a str {
    v.get(field).and_then(Value::as_str).unwrap_or_default()
}

/// The attributes a review's spec asks about, or the field error upstream reports.
fn spec_attributes(spec: &Value) -> Result<Attributes, FieldError> {
    let resource = spec.get("resourceAttributes").filter(|v| v.is_object());
    let non_resource = spec.get("nonResourceAttributes").filter(|v| v.is_object());
    match (resource, non_resource) {
        (Some(r), None) => Ok(Attributes {
            verb: str_at(r, "verb").to_string(),
            resource_request: true,
            api_group: str_at(r, "group").to_string(),
            resource: str_at(r, "resource").to_string(),
            subresource: str_at(r, "subresource").to_string(),
            namespace: str_at(r, "namespace").to_string(),
            name: str_at(r, "name").to_string(),
            path: String::new(),
        }),
        (None, Some(n)) => Ok(Attributes::non_resource(
            str_at(n, "verb"),
            str_at(n, "path"),
        )),
        (Some(_), Some(_)) => Err(FieldError::invalid(
            "spec.nonResourceAttributes",
            &Value::String("resourceAttributes".into()),
            "cannot be specified in combination with resourceAttributes",
        )),
        (None, None) => Err(FieldError::required(
            "spec.resourceAttributes",
            "exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )),
    }
}

fn invalid(kind: &str, error: FieldError) -> ApiError {
    ApiError::invalid("authorization.k8s.io", kind, "", &[error])
}

fn answer(mut body: Value, kind: &str, group_version: &str, status: Value) -> Value {
    body["apiVersion"] = json!(group_version);
    body["kind"] = json!(kind);
    if !body.get("metadata").is_some_and(Value::is_object) {
        body["metadata"] = json!({});
    }
    body["metadata"]["creationTimestamp"] = Value::Null;
    body["status"] = status;
    body
}

fn decide(identity: &Identity, attrs: &Attributes, requester: &Requester) -> Value {
    let decision = requester.authorizer.authorize(identity, attrs);
    let mut status = json!({ "allowed": decision.allowed });
    if !decision.reason.is_empty() {
        status["reason"] = json!(decision.reason);
    }
    status
}

/// `SelfSubjectAccessReview`: may I do this?
pub fn self_subject_access_review(_namespace: Option<&str>, body: Value) -> ApiResult<Value> {
    let requester = requester()?;
    let kind = "SelfSubjectAccessReview";
    let attrs = spec_attributes(&body["spec"]).map_err(|e| invalid(kind, e))?;
    let status = decide(&requester.identity, &attrs, &requester);
    Ok(answer(body, kind, "authorization.k8s.io/v1", status))
}

fn subject_of(spec: &Value, kind: &str) -> ApiResult<Identity> {
    let user = str_at(spec, "user").to_string();
    let groups: Vec<String> = spec["groups"]
        .as_array()
        .map(|g| {
            g.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if user.is_empty() && groups.is_empty() {
        return Err(invalid(
            kind,
            FieldError::invalid(
                "spec.user",
                &Value::String(String::new()),
                "at least one of user or group must be specified",
            ),
        ));
    }
    Ok(Identity { user, groups })
}

/// `SubjectAccessReview`: may this user (and groups) do this?
pub fn subject_access_review(_namespace: Option<&str>, body: Value) -> ApiResult<Value> {
    let requester = requester()?;
    let kind = "SubjectAccessReview";
    let attrs = spec_attributes(&body["spec"]).map_err(|e| invalid(kind, e))?;
    let subject = subject_of(&body["spec"], kind)?;
    let status = decide(&subject, &attrs, &requester);
    Ok(answer(body, kind, "authorization.k8s.io/v1", status))
}

/// `LocalSubjectAccessReview`: a SubjectAccessReview confined to the request's namespace.
pub fn local_subject_access_review(namespace: Option<&str>, body: Value) -> ApiResult<Value> {
    let requester = requester()?;
    let kind = "LocalSubjectAccessReview";
    let namespace = namespace.unwrap_or_default();
    let mut attrs = spec_attributes(&body["spec"]).map_err(|e| invalid(kind, e))?;
    if !attrs.resource_request {
        return Err(invalid(
            kind,
            FieldError::invalid(
                "spec.nonResourceAttributes",
                &Value::Null,
                "disallowed on this kind of request",
            ),
        ));
    }
    if attrs.namespace.is_empty() {
        attrs.namespace = namespace.to_string();
    } else if attrs.namespace != namespace {
        return Err(ApiError::bad_request(format!(
            "spec.resourceAttributes.namespace must match namespace: {namespace}"
        )));
    }
    let subject = subject_of(&body["spec"], kind)?;
    let status = decide(&subject, &attrs, &requester);
    Ok(answer(body, kind, "authorization.k8s.io/v1", status))
}

/// `SelfSubjectRulesReview`: everything I may do in a namespace.
pub fn self_subject_rules_review(_namespace: Option<&str>, body: Value) -> ApiResult<Value> {
    let requester = requester()?;
    let namespace = str_at(&body["spec"], "namespace").to_string();
    let mut resource_rules = Vec::new();
    let mut non_resource_rules = Vec::new();
    for rule in requester
        .authorizer
        .rules_for(&requester.identity, &namespace)
    {
        if !rule.resources.is_empty() {
            let mut r = json!({ "verbs": rule.verbs, "apiGroups": rule.api_groups, "resources": rule.resources });
            if !rule.resource_names.is_empty() {
                r["resourceNames"] = json!(rule.resource_names);
            }
            resource_rules.push(r);
        }
        if !rule.non_resource_urls.is_empty() {
            non_resource_rules
                .push(json!({ "verbs": rule.verbs, "nonResourceURLs": rule.non_resource_urls }));
        }
    }
    let status = json!({
        "resourceRules": resource_rules,
        "nonResourceRules": non_resource_rules,
        "incomplete": false,
    });
    Ok(answer(
        body,
        "SelfSubjectRulesReview",
        "authorization.k8s.io/v1",
        status,
    ))
}

/// `SelfSubjectReview` (`authentication.k8s.io`): who am I?
pub fn self_subject_review(_namespace: Option<&str>, body: Value) -> ApiResult<Value> {
    let requester = requester()?;
    let status = json!({
        "userInfo": { "username": requester.identity.user, "groups": requester.identity.groups },
    });
    Ok(answer(
        body,
        "SelfSubjectReview",
        "authentication.k8s.io/v1",
        status,
    ))
}
