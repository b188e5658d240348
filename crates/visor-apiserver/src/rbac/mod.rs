//! Authorisation: Kubernetes RBAC as upstream defines it.
//!
//! - [`Authorizer`] answers "may this identity do this?" from Roles, ClusterRoles, RoleBindings
//!   and ClusterRoleBindings. It follows the watch cache and keeps an index — subject →
//!   bindings per namespace, role → parsed rules — so a decision looks only at the bindings of
//!   the requester's user and groups in the request's namespace and at cluster scope, never at
//!   every binding. Members of `system:masters` are allowed everything, as upstream's
//!   superuser group.
//! - [`admit`] is the request filter: impersonation (`Impersonate-User`/`-Group`), then the
//!   request's attributes, then the decision; a denial is upstream's 403.
//! - [`escalation`] refuses Roles and bindings that grant more than their author holds.
//! - [`bootstrap`] writes the default roles and bindings and runs the ClusterRole aggregation.
//! - [`review`] answers the access reviews kubectl uses (`auth can-i`, `auth whoami`).
//!
//! The requester of the request being served travels as a task-local ([`Requester`]), as
//! upstream carries it in the request context, so that admission deep in the registry (the
//! escalation check after a patch is applied) and the access reviews see who is asking.

pub mod bootstrap;
pub mod escalation;
pub mod node;
pub mod review;
pub mod rules;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use http::{HeaderMap, Method, Request};
use serde_json::{Value, json};
use visor_store::cache::{CacheEventKind, WatchItem};

use crate::auth::Identity;
use crate::errors::{ApiError, ApiResult, qualified};
use crate::registry::Registry;
use crate::request::{Target, parse_path};
use rules::Rule;

/// Upstream's superuser group.
pub const SYSTEM_MASTERS: &str = "system:masters";
const RBAC_PREFIX: &str = "/registry/rbac.authorization.k8s.io/";
const SA_USER_PREFIX: &str = "system:serviceaccount:";

/// What a request asks to do, as upstream's `authorizer.Attributes`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attributes {
    /// get, list, watch, create, update, patch, delete, deletecollection (or impersonate,
    /// bind, escalate…); for non-resource requests the HTTP method in lower case.
    pub verb: String,
    pub resource_request: bool,
    pub api_group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// The URL path of a non-resource request.
    pub path: String,
}

impl Attributes {
    pub fn resource(verb: &str, group: &str, resource: &str, namespace: &str, name: &str) -> Self {
        Attributes {
            verb: verb.into(),
            resource_request: true,
            api_group: group.into(),
            resource: resource.into(),
            namespace: namespace.into(),
            name: name.into(),
            ..Attributes::default()
        }
    }

    pub fn non_resource(verb: &str, path: &str) -> Self {
        Attributes {
            verb: verb.into(),
            path: path.into(),
            ..Attributes::default()
        }
    }

    /// The attributes of an HTTP request, following upstream's `RequestInfoFactory`: paths
    /// outside `/api/VERSION/…` and `/apis/GROUP/VERSION/…` (discovery, OpenAPI, health) are
    /// non-resource URLs; verbs come from the method, `watch` and whether a name is given.
    pub fn from_request(method: &Method, path: &str, query: Option<&str>) -> Self {
        let segments = path.split('/').filter(|s| !s.is_empty()).count();
        let target = if segments < 3 {
            None
        } else {
            parse_path(path).ok()
        };
        let Some(Target::Resource(r)) = target else {
            let verb = if method == Method::HEAD {
                "get".to_string()
            } else {
                method.as_str().to_ascii_lowercase()
            };
            return Attributes::non_resource(&verb, path);
        };
        let mut watch = r.legacy_watch;
        let mut selected_name = None;
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*key {
                "watch" => {
                    watch = matches!(&*value, "" | "true" | "1" | "True" | "TRUE" | "t" | "T")
                }
                // A list or watch of one object by field selector is authorised for that name.
                "fieldSelector" => {
                    selected_name = value
                        .split(',')
                        .find_map(|req| req.strip_prefix("metadata.name="))
                        .map(|n| n.trim_start_matches('=').to_string())
                }
                _ => {}
            }
        }
        let verb = match (method, r.name.is_some()) {
            (&Method::GET | &Method::HEAD, _) if watch => "watch",
            (&Method::GET | &Method::HEAD, true) => "get",
            (&Method::GET | &Method::HEAD, false) => "list",
            (&Method::POST, _) => "create",
            (&Method::PUT, _) => "update",
            (&Method::PATCH, _) => "patch",
            (&Method::DELETE, true) => "delete",
            (&Method::DELETE, false) => "deletecollection",
            (other, _) => {
                return Attributes::non_resource(&other.as_str().to_ascii_lowercase(), path);
            }
        };
        let mut name = r.name.unwrap_or_default();
        if name.is_empty() && matches!(verb, "list" | "watch") {
            name = selected_name.unwrap_or_default();
        }
        // Upstream: a namespace object's path names the namespace too.
        let namespace = match r.namespace {
            Some(ns) => ns,
            None if r.group.is_empty() && r.resource == "namespaces" => name.clone(),
            None => String::new(),
        };
        Attributes {
            verb: verb.into(),
            resource_request: true,
            api_group: r.group,
            resource: r.resource,
            subresource: r.subresource.unwrap_or_default(),
            namespace,
            name,
            path: String::new(),
        }
    }

    /// Upstream's denial message and `Status` details.
    pub fn forbidden(&self, user: &str) -> ApiError {
        if !self.resource_request {
            return ApiError::forbidden(format!(
                "forbidden: User {user:?} cannot {} path {:?}",
                self.verb, self.path
            ));
        }
        let mut resource = self.resource.clone();
        if !self.subresource.is_empty() {
            resource = format!("{resource}/{}", self.subresource);
        }
        let scope = if self.namespace.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace {:?}", self.namespace)
        };
        let why = format!(
            "User {user:?} cannot {} resource {resource:?} in API group {:?} {scope}",
            self.verb, self.api_group
        );
        let what = qualified(&self.api_group, &self.resource);
        let message = if self.name.is_empty() {
            format!("{what} is forbidden: {why}")
        } else {
            format!("{what} {:?} is forbidden: {why}", self.name)
        };
        let mut details = json!({ "kind": self.resource });
        if !self.name.is_empty() {
            details["name"] = json!(self.name);
        }
        if !self.api_group.is_empty() {
            details["group"] = json!(self.api_group);
        }
        let mut err = ApiError::forbidden(message);
        err.details = Some(details);
        err
    }
}

/// An authorisation decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Which binding allowed the request (empty for superusers and denials).
    pub reason: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RoleKind {
    Role,
    ClusterRole,
}

/// A RoleBinding (namespace set) or ClusterRoleBinding (namespace empty), parsed.
#[derive(Debug)]
struct Binding {
    key: String,
    namespace: String,
    name: String,
    role_kind: RoleKind,
    role_name: String,
    /// Subjects as (is_group, name); service accounts become their user names.
    subjects: Vec<(bool, String)>,
}

impl Binding {
    fn parse(key: &str, obj: &Value) -> Option<Binding> {
        let namespace = crate::object::namespace(obj).to_string();
        let role_kind = match obj.pointer("/roleRef/kind").and_then(Value::as_str) {
            Some("ClusterRole") => RoleKind::ClusterRole,
            // A ClusterRoleBinding can only reference ClusterRoles.
            Some("Role") if !namespace.is_empty() => RoleKind::Role,
            _ => return None,
        };
        let subjects = obj["subjects"]
            .as_array()
            .map(|subjects| {
                subjects
                    .iter()
                    .filter_map(|s| {
                        let name = s["name"].as_str()?;
                        match s["kind"].as_str()? {
                            "User" => Some((false, name.to_string())),
                            "Group" => Some((true, name.to_string())),
                            "ServiceAccount" => {
                                let ns = s["namespace"]
                                    .as_str()
                                    .filter(|n| !n.is_empty())
                                    .unwrap_or(&namespace);
                                Some((false, format!("{SA_USER_PREFIX}{ns}:{name}")))
                            }
                            _ => None,
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(Binding {
            key: key.to_string(),
            namespace,
            name: crate::object::name(obj).to_string(),
            role_kind,
            role_name: obj
                .pointer("/roleRef/name")
                .and_then(Value::as_str)?
                .to_string(),
            subjects,
        })
    }

    fn describe(&self, subject: (bool, &str)) -> String {
        let kind = match self.role_kind {
            RoleKind::Role => "Role",
            RoleKind::ClusterRole => "ClusterRole",
        };
        let who = match subject {
            (true, name) => format!("Group {name:?}"),
            (false, name) if name.starts_with(SA_USER_PREFIX) => format!("ServiceAccount {name:?}"),
            (false, name) => format!("User {name:?}"),
        };
        if self.namespace.is_empty() {
            format!(
                "RBAC: allowed by ClusterRoleBinding {:?} of {kind} {:?} to {who}",
                self.name, self.role_name
            )
        } else {
            format!(
                "RBAC: allowed by RoleBinding \"{}/{}\" of {kind} {:?} to {who}",
                self.name, self.namespace, self.role_name
            )
        }
    }
}

type ByNamespace = HashMap<String, Vec<Arc<Binding>>>;

/// The index the authorizer decides from; see the module documentation.
#[derive(Default)]
struct Index {
    /// Namespace ("" for ClusterRoles) → name → rules.
    roles: HashMap<String, HashMap<String, Arc<[Rule]>>>,
    /// Storage key → binding, to undo a binding's index entries when it changes.
    bindings: HashMap<String, Arc<Binding>>,
    /// User → namespace ("" for ClusterRoleBindings) → bindings naming that user.
    users: HashMap<String, ByNamespace>,
    groups: HashMap<String, ByNamespace>,
}

impl Index {
    fn subjects_map(&mut self, is_group: bool) -> &mut HashMap<String, ByNamespace> {
        if is_group {
            &mut self.groups
        } else {
            &mut self.users
        }
    }

    fn remove_binding(&mut self, key: &str) {
        let Some(old) = self.bindings.remove(key) else {
            return;
        };
        for (is_group, name) in &old.subjects {
            let map = self.subjects_map(*is_group);
            if let Some(by_ns) = map.get_mut(name) {
                if let Some(list) = by_ns.get_mut(&old.namespace) {
                    list.retain(|b| b.key != key);
                    if list.is_empty() {
                        by_ns.remove(&old.namespace);
                    }
                }
                if by_ns.is_empty() {
                    map.remove(name);
                }
            }
        }
    }

    fn add_binding(&mut self, binding: Binding) {
        let binding = Arc::new(binding);
        self.bindings.insert(binding.key.clone(), binding.clone());
        let mut seen: Vec<&(bool, String)> = Vec::new();
        for subject in &binding.subjects {
            if seen.contains(&subject) {
                continue;
            }
            seen.push(subject);
            let (is_group, name) = subject;
            self.subjects_map(*is_group)
                .entry(name.clone())
                .or_default()
                .entry(binding.namespace.clone())
                .or_default()
                .push(binding.clone());
        }
    }

    /// Applies one stored object (or its deletion) under `/registry/rbac.authorization.k8s.io/`.
    fn apply(&mut self, key: &str, obj: Option<&Value>) {
        let Some(rest) = key.strip_prefix(RBAC_PREFIX) else {
            return;
        };
        let mut parts = rest.split('/');
        let resource = parts.next().unwrap_or_default();
        let (namespace, name) = match (parts.next(), parts.next()) {
            (Some(ns), Some(name)) => (ns, name),
            (Some(name), None) => ("", name),
            _ => return,
        };
        match resource {
            "roles" | "clusterroles" => match obj {
                Some(obj) => {
                    let rules: Arc<[Rule]> = Rule::all_from(obj).into();
                    self.roles
                        .entry(namespace.to_string())
                        .or_default()
                        .insert(name.to_string(), rules);
                }
                None => {
                    if let Some(by_name) = self.roles.get_mut(namespace) {
                        by_name.remove(name);
                    }
                }
            },
            "rolebindings" | "clusterrolebindings" => {
                self.remove_binding(key);
                if let Some(binding) = obj.and_then(|o| Binding::parse(key, o)) {
                    self.add_binding(binding);
                }
            }
            _ => {}
        }
    }

    fn rules_of(&self, binding: &Binding) -> Option<&Arc<[Rule]>> {
        let namespace = match binding.role_kind {
            RoleKind::Role => binding.namespace.as_str(),
            RoleKind::ClusterRole => "",
        };
        self.roles.get(namespace)?.get(&binding.role_name)
    }

    /// Calls `visit` with each binding that applies to the subject in `namespace` (cluster
    /// bindings first, as upstream) and the subject it matched, until `visit` returns true.
    fn visit(
        &self,
        user: &str,
        groups: &[Cow<'_, str>],
        namespace: &str,
        mut visit: impl FnMut(&Binding, (bool, &str)) -> bool,
    ) -> bool {
        let scopes: &[&str] = if namespace.is_empty() {
            &[""]
        } else {
            &["", namespace]
        };
        for scope in scopes {
            let by_user = self.users.get(user).and_then(|m| m.get(*scope));
            for binding in by_user.into_iter().flatten() {
                if visit(binding, (false, user)) {
                    return true;
                }
            }
            for group in groups {
                let by_group = self.groups.get(group.as_ref()).and_then(|m| m.get(*scope));
                for binding in by_group.into_iter().flatten() {
                    if visit(binding, (true, group.as_ref())) {
                        return true;
                    }
                }
            }
        }
        false
    }
}

/// The groups a decision considers: the identity's, plus the service-account groups upstream
/// gives every `system:serviceaccount:NS:NAME` user.
fn effective_groups(identity: &Identity) -> Vec<Cow<'_, str>> {
    let mut groups: Vec<Cow<'_, str>> = identity
        .groups
        .iter()
        .map(|g| Cow::Borrowed(g.as_str()))
        .collect();
    if let Some(rest) = identity.user.strip_prefix(SA_USER_PREFIX)
        && let Some((ns, _)) = rest.split_once(':')
    {
        for group in [
            "system:serviceaccounts".to_string(),
            format!("system:serviceaccounts:{ns}"),
        ] {
            if !groups.iter().any(|g| *g == group) {
                groups.push(Cow::Owned(group));
            }
        }
    }
    groups
}

/// RBAC decisions from an index that follows the stored policy.
#[derive(Default)]
pub struct Authorizer {
    index: RwLock<Index>,
    /// The node authorizer, consulted first for node identities (set by [`start`]).
    nodes: std::sync::OnceLock<Arc<node::NodeAuthorizer>>,
}

impl Authorizer {
    pub fn new() -> Self {
        Authorizer::default()
    }

    /// Applies a stored RBAC object (`Some`) or its deletion (`None`) at storage key `key`.
    pub fn apply(&self, key: &str, obj: Option<&Value>) {
        self.index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .apply(key, obj);
    }

    fn replace_all(&self, objects: &[(String, Value)]) {
        let mut index = Index::default();
        for (key, obj) in objects {
            index.apply(key, Some(obj));
        }
        *self.index.write().unwrap_or_else(|e| e.into_inner()) = index;
    }

    /// Decides a request: the node authorizer first for hosts' agents (upstream's
    /// `Node,RBAC` chain), then RBAC.
    pub fn authorize(&self, identity: &Identity, attrs: &Attributes) -> Decision {
        if let Some(node) = node::node_name(identity)
            && let Some(nodes) = self.nodes.get()
            && let Some(decision) = nodes.authorize(node, attrs)
        {
            return decision;
        }
        if identity.groups.iter().any(|g| g == SYSTEM_MASTERS) {
            return Decision {
                allowed: true,
                reason: String::new(),
            };
        }
        let groups = effective_groups(identity);
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        let mut reason = String::new();
        let allowed = index.visit(
            &identity.user,
            &groups,
            &attrs.namespace,
            |binding, subject| {
                let hit = index
                    .rules_of(binding)
                    .is_some_and(|rules| rules.iter().any(|r| r.allows(attrs)));
                if hit {
                    reason = binding.describe(subject);
                }
                hit
            },
        );
        Decision { allowed, reason }
    }

    /// Every rule granted to the identity in `namespace` (cluster-wide grants included), as
    /// upstream's rule resolver: for rules reviews and escalation checks.
    pub fn rules_for(&self, identity: &Identity, namespace: &str) -> Vec<Rule> {
        let groups = effective_groups(identity);
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<Rule> = Vec::new();
        let mut seen: Vec<String> = Vec::new();
        index.visit(&identity.user, &groups, namespace, |binding, _| {
            if seen.contains(&binding.key) {
                return false;
            }
            seen.push(binding.key.clone());
            if let Some(rules) = index.rules_of(binding) {
                out.extend(rules.iter().cloned());
            }
            false
        });
        out
    }

    /// The rules of a Role (`namespace` set) or ClusterRole, if it exists.
    pub fn role_rules(&self, namespace: &str, name: &str) -> Option<Vec<Rule>> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        index.roles.get(namespace)?.get(name).map(|r| r.to_vec())
    }

    /// Fills the index from the watch cache and keeps it current. The initial fill has happened
    /// when this returns; the returned task follows later changes.
    pub fn follow(self: &Arc<Self>, registry: &Arc<Registry>) -> tokio::task::JoinHandle<()> {
        let (snapshot, _, watch) = registry.cache.snapshot_and_watch(RBAC_PREFIX);
        self.replace_all(
            &snapshot
                .iter()
                .map(|(k, o)| (k.to_string(), o.value()))
                .collect::<Vec<_>>(),
        );
        let authorizer = self.clone();
        let registry = registry.clone();
        tokio::spawn(async move {
            let mut watch = watch;
            loop {
                while let Some(item) = watch.next().await {
                    if let WatchItem::Event(event) = item {
                        match event.kind {
                            CacheEventKind::Deleted => authorizer.apply(&event.key, None),
                            _ => authorizer.apply(&event.key, Some(&event.object.value())),
                        }
                    }
                }
                // The cache ended the watch (this follower fell behind): start over.
                tracing::debug!("RBAC watch ended; re-listing");
                let (snapshot, _, next) = registry.cache.snapshot_and_watch(RBAC_PREFIX);
                authorizer.replace_all(
                    &snapshot
                        .iter()
                        .map(|(k, o)| (k.to_string(), o.value()))
                        .collect::<Vec<_>>(),
                );
                watch = next;
            }
        })
    }
}

// ------------------------------------------------------------------------------------------
// The request filter

/// Who is making the request being served, with the authorizer that judged it.
#[derive(Clone)]
pub struct Requester {
    pub identity: Identity,
    pub authorizer: Arc<Authorizer>,
}

tokio::task_local! {
    static REQUESTER: Requester;
}

impl Requester {
    /// Runs `future` (the rest of the request) with this requester as the current one.
    pub async fn scope<F: Future>(self, future: F) -> F::Output {
        REQUESTER.scope(self, future).await
    }

    /// The requester of the request being served, if any (internal writes have none).
    pub fn current() -> Option<Requester> {
        REQUESTER.try_with(Clone::clone).ok()
    }
}

const IMPERSONATE_USER: &str = "impersonate-user";
const IMPERSONATE_GROUP: &str = "impersonate-group";
const IMPERSONATE_UID: &str = "impersonate-uid";
const IMPERSONATE_EXTRA: &str = "impersonate-extra-";

/// Applies impersonation headers, as upstream's impersonation filter: the requester needs the
/// `impersonate` verb on each user (or service account) and group it asks to act as.
fn impersonate(
    authorizer: &Authorizer,
    identity: Identity,
    headers: &HeaderMap,
) -> ApiResult<Identity> {
    let user = headers
        .get(IMPERSONATE_USER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let groups: Vec<String> = headers
        .get_all(IMPERSONATE_GROUP)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect();
    let other = headers.contains_key(IMPERSONATE_UID)
        || headers
            .keys()
            .any(|k| k.as_str().starts_with(IMPERSONATE_EXTRA));
    let Some(user) = user.filter(|u| !u.is_empty()) else {
        if !groups.is_empty() || other {
            return Err(ApiError::bad_request(
                "requested impersonation, but no user name was given (Impersonate-User is required)",
            ));
        }
        return Ok(identity);
    };
    let mut checks = Vec::new();
    match user
        .strip_prefix(SA_USER_PREFIX)
        .and_then(|rest| rest.split_once(':'))
    {
        Some((ns, name)) => checks.push(Attributes::resource(
            "impersonate",
            "",
            "serviceaccounts",
            ns,
            name,
        )),
        None => checks.push(Attributes::resource("impersonate", "", "users", "", &user)),
    }
    for group in &groups {
        checks.push(Attributes::resource("impersonate", "", "groups", "", group));
    }
    if headers.contains_key(IMPERSONATE_UID) {
        let uid = headers
            .get(IMPERSONATE_UID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        checks.push(Attributes::resource(
            "impersonate",
            "authentication.k8s.io",
            "uids",
            "",
            uid,
        ));
    }
    for attrs in &checks {
        if !authorizer.authorize(&identity, attrs).allowed {
            return Err(attrs.forbidden(&identity.user));
        }
    }
    let mut groups = groups;
    if user != "system:anonymous" && !groups.iter().any(|g| g == "system:authenticated") {
        groups.push("system:authenticated".into());
    }
    Ok(Identity { user, groups })
}

/// The request filter: impersonation, then authorisation of the request as it will be served.
/// Returns the requester the rest of the request runs as, or upstream's 403.
pub fn admit<B>(
    authorizer: &Arc<Authorizer>,
    identity: Identity,
    request: &Request<B>,
) -> ApiResult<Requester> {
    let identity = impersonate(authorizer, identity, request.headers())?;
    let uri = request.uri();
    let attrs = Attributes::from_request(request.method(), uri.path(), uri.query());
    let decision = authorizer.authorize(&identity, &attrs);
    if !decision.allowed {
        return Err(attrs.forbidden(&identity.user));
    }
    Ok(Requester {
        identity,
        authorizer: authorizer.clone(),
    })
}

/// Starts RBAC for a server: fills the authorizer's index, writes the bootstrap policy,
/// aggregates ClusterRoles once, and returns the authorizer with its background tasks (index
/// follower, aggregation controller) for the caller to stop at shutdown.
pub async fn start(
    registry: &Arc<Registry>,
) -> anyhow::Result<(Arc<Authorizer>, Vec<tokio::task::JoinHandle<()>>)> {
    let authorizer = Arc::new(Authorizer::new());
    let follower = authorizer.follow(registry);
    let nodes = Arc::new(node::NodeAuthorizer::default());
    let node_follower = nodes.follow(registry);
    let _ = authorizer.nodes.set(nodes);
    bootstrap::ensure_policy(registry).await?;
    bootstrap::aggregate_all(registry).await;
    let aggregation = tokio::spawn(bootstrap::run_aggregation(registry.clone()));
    Ok((authorizer, vec![follower, node_follower, aggregation]))
}

// ------------------------------------------------------------------------------------------
// Benchmark

/// Loads `bindings` RoleBindings (spread over 1,000 namespaces and as many users, each bound to
/// `edit`-like rules) plus the bootstrap policy into a fresh authorizer, then times
/// `authorize()` for a user with a binding in the request's namespace. Returns the p50 and p99
/// of `iterations` decisions.
pub fn bench_authorize(bindings: usize, iterations: usize) -> (Duration, Duration) {
    let authorizer = bench_authorizer(bindings);
    let identity = Identity {
        user: "user-1".into(),
        groups: vec!["dev".into(), "system:authenticated".into()],
    };
    let attrs = Attributes::resource("list", "", "configmaps", "ns-1", "");
    assert!(
        authorizer.authorize(&identity, &attrs).allowed,
        "the benchmark measures an allowed request"
    );
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        let decision = authorizer.authorize(&identity, &attrs);
        samples.push(started.elapsed());
        std::hint::black_box(decision);
    }
    samples.sort();
    let at = |q: f64| {
        samples
            .get(((samples.len() as f64 * q) as usize).min(samples.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    (at(0.5), at(0.99))
}

/// The authorizer [`bench_authorize`] measures: the bootstrap policy (aggregated) and
/// `bindings` RoleBindings of `edit` over 1,000 namespaces; `user-1` may list configmaps in
/// `ns-1`.
pub fn bench_authorizer(bindings: usize) -> Authorizer {
    let authorizer = Authorizer::new();
    let mut policy = bootstrap::policy_objects();
    // Aggregate as the controller would (view into edit into admin) before loading.
    for _ in 0..3 {
        let roles: Vec<Value> = policy
            .iter()
            .filter(|(k, _)| *k == "clusterroles")
            .map(|(_, o)| o.clone())
            .collect();
        for (_, obj) in policy.iter_mut() {
            if let Some(rules) = bootstrap::aggregated_rules(obj, &roles) {
                obj["rules"] = Value::Array(rules);
            }
        }
    }
    for (kind, obj) in &policy {
        let name = crate::object::name(obj).to_string();
        authorizer.apply(&format!("{RBAC_PREFIX}{kind}/{name}"), Some(obj));
    }
    for i in 0..bindings {
        let (ns, user) = (
            format!("ns-{}", i % 1000),
            format!("user-{}", i % 1000 + (i / 1000) * 1000),
        );
        let binding = json!({
            "metadata": { "name": format!("rb-{i}"), "namespace": ns },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit" },
            "subjects": [{ "kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io" }],
        });
        authorizer.apply(
            &format!("{RBAC_PREFIX}rolebindings/{ns}/rb-{i}"),
            Some(&binding),
        );
    }
    authorizer
}

#[cfg(test)]
mod tests;
