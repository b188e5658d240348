//! Turning a request's path and query into what it asks for.
//!
//! Follows upstream's `RequestInfoFactory`: `/api/v1/...` is the legacy core group,
//! `/apis/GROUP/VERSION/...` the named groups; `namespaces/NS/` scopes a request; a legacy
//! `watch/` segment turns a list into a watch; `namespaces/NAME/status|finalize` are
//! subresources of the namespace itself.

use crate::errors::{ApiError, ApiResult};

/// What a request path addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `/api`: the legacy group's versions.
    LegacyVersions,
    /// `/apis`: every named group.
    Groups,
    /// `/apis/GROUP`.
    Group(String),
    /// `/api/v1` or `/apis/GROUP/VERSION`: the resources of one group-version.
    ResourceList { group: String, version: String },
    /// Anything under a group-version naming a resource.
    Resource(ResourcePath),
}

/// A path naming a resource, and possibly one object and a subresource of it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResourcePath {
    pub group: String,
    pub version: String,
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
    /// The deprecated `/watch/` path form was used.
    pub legacy_watch: bool,
}

/// Parses the path of an API request (without the query string).
pub fn parse_path(path: &str) -> ApiResult<Target> {
    let segments: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let mut parts: &[String] = &segments;
    let (group, version) = match parts.first().map(String::as_str) {
        Some("api") => {
            if parts.len() == 1 {
                return Ok(Target::LegacyVersions);
            }
            let version = parts[1].clone();
            parts = &parts[2..];
            (String::new(), version)
        }
        Some("apis") => match parts.len() {
            1 => return Ok(Target::Groups),
            2 => return Ok(Target::Group(parts[1].clone())),
            _ => {
                let (group, version) = (parts[1].clone(), parts[2].clone());
                parts = &parts[3..];
                (group, version)
            }
        },
        _ => return Err(ApiError::no_route()),
    };
    if parts.is_empty() {
        return Ok(Target::ResourceList { group, version });
    }
    let mut request = ResourcePath {
        group,
        version,
        ..Default::default()
    };
    if parts[0] == "watch" {
        request.legacy_watch = true;
        parts = &parts[1..];
    }
    if parts.first().map(String::as_str) == Some("namespaces") && parts.len() > 1 {
        let is_namespace_subresource =
            parts.len() > 2 && matches!(parts[2].as_str(), "status" | "finalize");
        if parts.len() == 2 || is_namespace_subresource {
            // The namespace object itself: /namespaces/NAME[/status|/finalize].
            request.resource = "namespaces".into();
            request.name = Some(parts[1].clone());
            request.subresource = parts.get(2).cloned();
            if parts.len() > 3 {
                return Err(ApiError::no_route());
            }
            return Ok(Target::Resource(request));
        }
        request.namespace = Some(parts[1].clone());
        parts = &parts[2..];
    }
    match parts {
        [resource] => request.resource = resource.clone(),
        [resource, name] => {
            request.resource = resource.clone();
            request.name = Some(name.clone());
        }
        [resource, name, subresource] => {
            request.resource = resource.clone();
            request.name = Some(name.clone());
            request.subresource = Some(subresource.clone());
        }
        _ => return Err(ApiError::no_route()),
    }
    if request.legacy_watch && request.subresource.is_some() {
        return Err(ApiError::no_route());
    }
    Ok(Target::Resource(request))
}

/// The query parameters the API understands, parsed once.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
    pub watch: bool,
    pub allow_watch_bookmarks: bool,
    pub send_initial_events: Option<bool>,
    pub timeout_seconds: Option<u64>,
    pub dry_run: bool,
    pub field_manager: Option<String>,
    pub field_validation: Option<String>,
    pub propagation_policy: Option<String>,
    pub grace_period_seconds: Option<i64>,
    pub include_object: Option<String>,
    pub pretty: bool,
    /// This create carries an applied configuration whose `managedFields` are already set.
    pub apply: bool,
    /// `force` on an apply: take over fields other managers own.
    pub force: bool,
    /// The client's User-Agent, from which a field manager is named when none is given.
    pub user_agent: Option<String>,
    /// Every parameter, for subresources with parameters of their own (logs, exec).
    pub raw: Vec<(String, String)>,
}

fn parse_bool(name: &str, value: &str) -> ApiResult<bool> {
    match value {
        "" | "true" | "1" | "True" | "TRUE" | "t" | "T" => Ok(true),
        "false" | "0" | "False" | "FALSE" | "f" | "F" => Ok(false),
        _ => Err(ApiError::bad_request(format!(
            "invalid value {value:?} for boolean parameter {name}"
        ))),
    }
}

fn parse_number<T: std::str::FromStr>(name: &str, value: &str) -> ApiResult<T> {
    value.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "invalid value {value:?} for parameter {name}: not a valid number"
        ))
    })
}

impl Query {
    pub fn parse(query: Option<&str>) -> ApiResult<Self> {
        let mut q = Query::default();
        let Some(query) = query else { return Ok(q) };
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let (key, value) = (key.into_owned(), value.into_owned());
            match key.as_str() {
                "labelSelector" => q.label_selector = Some(value.clone()),
                "fieldSelector" => q.field_selector = Some(value.clone()),
                "limit" => {
                    let limit: i64 = parse_number(&key, &value)?;
                    // Upstream treats a limit of 0 or less as "no limit".
                    q.limit = usize::try_from(limit).ok().filter(|l| *l > 0);
                }
                "continue" => q.continue_token = Some(value.clone()).filter(|v| !v.is_empty()),
                "resourceVersion" => {
                    q.resource_version = Some(value.clone()).filter(|v| !v.is_empty())
                }
                "resourceVersionMatch" => {
                    q.resource_version_match = Some(value.clone()).filter(|v| !v.is_empty())
                }
                "watch" => q.watch = parse_bool(&key, &value)?,
                "allowWatchBookmarks" => q.allow_watch_bookmarks = parse_bool(&key, &value)?,
                "sendInitialEvents" => q.send_initial_events = Some(parse_bool(&key, &value)?),
                "timeoutSeconds" => q.timeout_seconds = Some(parse_number(&key, &value)?),
                "dryRun" => {
                    q.dry_run = match value.as_str() {
                        "All" => true,
                        "" => false,
                        other => {
                            return Err(ApiError::bad_request(format!(
                                "Invalid dry run value: {other:?}; the only supported value is \"All\""
                            )));
                        }
                    }
                }
                "fieldManager" => q.field_manager = Some(value.clone()),
                "fieldValidation" => q.field_validation = Some(value.clone()),
                "propagationPolicy" => q.propagation_policy = Some(value.clone()),
                "gracePeriodSeconds" => q.grace_period_seconds = Some(parse_number(&key, &value)?),
                "includeObject" => q.include_object = Some(value.clone()),
                "pretty" => q.pretty = parse_bool(&key, &value)?,
                "force" => q.force = parse_bool(&key, &value)?,
                _ => {}
            }
            q.raw.push((key, value));
        }
        Ok(q)
    }

    /// The field manager a write is made as: `fieldManager`, else from the User-Agent.
    pub fn manager(&self) -> String {
        match self.field_manager.as_deref().filter(|m| !m.is_empty()) {
            Some(m) => m.to_string(),
            None => crate::ssa::manager_from_user_agent(self.user_agent.as_deref()),
        }
    }

    /// The first value of a parameter by name.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.raw
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(path: &str) -> ResourcePath {
        match parse_path(path).unwrap() {
            Target::Resource(r) => r,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn discovery_paths() {
        assert_eq!(parse_path("/api").unwrap(), Target::LegacyVersions);
        assert_eq!(parse_path("/apis").unwrap(), Target::Groups);
        assert_eq!(
            parse_path("/apis/apps").unwrap(),
            Target::Group("apps".into())
        );
        assert_eq!(
            parse_path("/api/v1").unwrap(),
            Target::ResourceList {
                group: String::new(),
                version: "v1".into()
            }
        );
        assert!(parse_path("/nope").is_err());
    }

    #[test]
    fn namespaced_and_cluster_paths() {
        let r = resource("/api/v1/namespaces/default/pods/web/status");
        assert_eq!(
            (r.namespace.as_deref(), r.resource.as_str()),
            (Some("default"), "pods")
        );
        assert_eq!(
            (r.name.as_deref(), r.subresource.as_deref()),
            (Some("web"), Some("status"))
        );
        let r = resource("/api/v1/namespaces");
        assert_eq!(
            (r.resource.as_str(), r.name.as_deref()),
            ("namespaces", None)
        );
        let r = resource("/api/v1/namespaces/team-a");
        assert_eq!(
            (
                r.resource.as_str(),
                r.name.as_deref(),
                r.namespace.as_deref()
            ),
            ("namespaces", Some("team-a"), None)
        );
        let r = resource("/api/v1/namespaces/team-a/finalize");
        assert_eq!(r.subresource.as_deref(), Some("finalize"));
        let r = resource("/apis/apps/v1/namespaces/x/deployments");
        assert_eq!(
            (r.group.as_str(), r.version.as_str(), r.resource.as_str()),
            ("apps", "v1", "deployments")
        );
        let r = resource("/api/v1/watch/namespaces/x/configmaps");
        assert!(r.legacy_watch);
        assert_eq!(r.namespace.as_deref(), Some("x"));
        assert!(parse_path("/api/v1/namespaces/x/pods/a/b/c").is_err());
    }

    #[test]
    fn query_parsing() {
        let q = Query::parse(Some(
            "labelSelector=app%3Dweb&limit=500&watch=1&timeoutSeconds=30",
        ))
        .unwrap();
        assert_eq!(q.label_selector.as_deref(), Some("app=web"));
        assert_eq!(q.limit, Some(500));
        assert!(q.watch);
        assert_eq!(q.timeout_seconds, Some(30));
        assert!(Query::parse(Some("limit=abc")).is_err());
        assert!(Query::parse(Some("watch=maybe")).is_err());
        assert_eq!(Query::parse(Some("limit=0")).unwrap().limit, None);
    }
}

#[cfg(test)]
mod fuzz {
    //! Property tests over arbitrary input: request decoding answers a 4xx or succeeds, and
    //! never panics.
    use super::*;
    use crate::registry::decode_body;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_path_parses_or_is_not_found(segments in proptest::collection::vec("[a-z0-9%./_-]{0,12}", 0..8)) {
            let path = format!("/{}", segments.join("/"));
            if let Err(e) = parse_path(&path) { prop_assert_eq!(e.code, 404); }
        }

        #[test]
        fn any_query_parses_or_is_bad_request(query in "[a-zA-Z=&%0-9,!()]{0,60}") {
            if let Err(e) = Query::parse(Some(&query)) { prop_assert_eq!(e.code, 400); }
        }

        #[test]
        fn any_json_body_decodes_or_is_bad_request(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Err(e) = decode_body(&body, "application/json") { prop_assert_eq!(e.code, 400); }
        }

        #[test]
        fn any_yaml_body_decodes_or_is_bad_request(body in "[ -~\n]{0,200}") {
            if let Err(e) = decode_body(body.as_bytes(), "application/yaml") { prop_assert_eq!(e.code, 400); }
        }

        #[test]
        fn structured_json_round_trips(name in "[a-z][a-z0-9-]{0,20}", data in proptest::collection::btree_map("[a-z]{1,8}", "[ -~]{0,20}", 0..5)) {
            let body = serde_json::to_vec(&serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data})).unwrap();
            let value = decode_body(&body, "application/json; charset=utf-8").unwrap();
            prop_assert_eq!(value["metadata"]["name"].as_str(), Some(name.as_str()));
        }
    }

    #[test]
    fn unsupported_media_types_are_415() {
        assert_eq!(
            decode_body(b"{}", "application/cbor").unwrap_err().code,
            415
        );
        assert_eq!(
            decode_body(b"{}", "application/vnd.kubernetes.protobuf")
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(decode_body(b"{}", "text/plain").unwrap_err().code, 415);
        assert_eq!(
            decode_body(b"[1,2]", "application/json").unwrap_err().code,
            400
        );
    }
}
