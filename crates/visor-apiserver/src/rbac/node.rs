//! The node authorizer and node restriction: what a host's agent (`system:node:NAME` in group
//! `system:nodes`, from the certificate it got at `POST /join`) may do, as upstream's Node
//! authorizer and NodeRestriction admission plugin.
//!
//! A node may:
//! - get, list and watch nodes, pods, services and endpoints (it needs the whole picture to
//!   run pods and their networking);
//! - create its own Node, and get/update/patch it and its status — no other node's;
//! - get, create, update and patch its own Lease `kube-node-lease/NAME`;
//! - update and patch the status of pods bound to it (`spec.nodeName`), and delete them (a
//!   pod that no longer exists may be "deleted" too, so the answer is its `404`);
//! - get (or list/watch by name) the secrets, config maps and persistent volume claims that
//!   pods bound to it reference — volumes, projected sources, `env[].valueFrom`, `envFrom`,
//!   image pull secrets;
//! - create `serviceaccounts/token` for service accounts of pods bound to it (the token
//!   request itself must be bound to such a pod, see `auth::serviceaccount`);
//! - create and patch events.
//!
//! Anything else gets no opinion here and falls through to RBAC, which by default grants
//! nodes nothing more. Requests naming no object (a create) are admitted by [`admit`] once
//! the object is known, like NodeRestriction: a node cannot create another node's Node or
//! Lease.
//!
//! The decision reads an index of pods by node, kept from the watch cache: for each node the
//! set of `(resource, namespace, name)` its pods reference, with counts so that two pods
//! referencing one secret keep it reachable until both are gone.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use serde_json::Value;
use visor_store::cache::{CacheEventKind, WatchItem};

use super::{Attributes, Decision};
use crate::auth::Identity;
use crate::errors::{ApiError, ApiResult};
use crate::registry::{Registry, Scope};

pub const NODE_USER_PREFIX: &str = "system:node:";
pub const NODES_GROUP: &str = "system:nodes";
const PODS_PREFIX: &str = "/registry/core/pods/";
const LEASE_NAMESPACE: &str = "kube-node-lease";

/// What a pod bound to a node gives it access to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct PodRefs {
    node: String,
    namespace: String,
    /// `(resource, name)`: secrets, configmaps, persistentvolumeclaims, serviceaccounts.
    refs: Vec<(&'static str, String)>,
}

impl PodRefs {
    fn parse(pod: &Value) -> Option<PodRefs> {
        let node = pod.pointer("/spec/nodeName")?.as_str()?.to_string();
        if node.is_empty() {
            return None;
        }
        let spec = &pod["spec"];
        let mut refs: Vec<(&'static str, String)> = Vec::new();
        let mut add = |resource: &'static str, name: Option<&str>| {
            if let Some(name) = name.filter(|n| !n.is_empty()) {
                let entry = (resource, name.to_string());
                if !refs.contains(&entry) {
                    refs.push(entry);
                }
            }
        };
        let str_at = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_string);
        add(
            "serviceaccounts",
            str_at(spec, "/serviceAccountName")
                .or_else(|| str_at(spec, "/serviceAccount"))
                .as_deref()
                .or(Some("default")),
        );
        for secret in spec["imagePullSecrets"].as_array().into_iter().flatten() {
            add("secrets", secret["name"].as_str());
        }
        for volume in spec["volumes"].as_array().into_iter().flatten() {
            add(
                "secrets",
                volume.pointer("/secret/secretName").and_then(Value::as_str),
            );
            add(
                "configmaps",
                volume.pointer("/configMap/name").and_then(Value::as_str),
            );
            add(
                "persistentvolumeclaims",
                volume
                    .pointer("/persistentVolumeClaim/claimName")
                    .and_then(Value::as_str),
            );
            for source in volume
                .pointer("/projected/sources")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                add(
                    "secrets",
                    source.pointer("/secret/name").and_then(Value::as_str),
                );
                add(
                    "configmaps",
                    source.pointer("/configMap/name").and_then(Value::as_str),
                );
            }
            // Volume plugins that name a secret for their credentials.
            for pointer in [
                "/cephfs/secretRef/name",
                "/rbd/secretRef/name",
                "/iscsi/secretRef/name",
                "/flexVolume/secretRef/name",
                "/csi/nodePublishSecretRef/name",
                "/azureFile/secretName",
                "/scaleIO/secretRef/name",
                "/storageos/secretRef/name",
            ] {
                add("secrets", volume.pointer(pointer).and_then(Value::as_str));
            }
        }
        let containers = ["containers", "initContainers", "ephemeralContainers"]
            .into_iter()
            .flat_map(|field| spec[field].as_array().into_iter().flatten());
        for container in containers {
            for env in container["env"].as_array().into_iter().flatten() {
                add(
                    "secrets",
                    env.pointer("/valueFrom/secretKeyRef/name")
                        .and_then(Value::as_str),
                );
                add(
                    "configmaps",
                    env.pointer("/valueFrom/configMapKeyRef/name")
                        .and_then(Value::as_str),
                );
            }
            for from in container["envFrom"].as_array().into_iter().flatten() {
                add(
                    "secrets",
                    from.pointer("/secretRef/name").and_then(Value::as_str),
                );
                add(
                    "configmaps",
                    from.pointer("/configMapRef/name").and_then(Value::as_str),
                );
            }
        }
        Some(PodRefs {
            node,
            namespace: crate::object::namespace(pod).to_string(),
            refs,
        })
    }
}

#[derive(Default)]
struct Index {
    /// Pod storage key → what it contributed.
    pods: HashMap<String, PodRefs>,
    /// Node → "resource/namespace/name" → how many of its pods reference it. Pods themselves
    /// are entered as "pods/namespace/name".
    by_node: HashMap<String, HashMap<String, u32>>,
    /// Storage keys of every pod, bound or not: a node's delete of a pod that no longer
    /// exists is let through to its `404` rather than refused.
    existing: HashSet<String>,
}

fn entry_key(resource: &str, namespace: &str, name: &str) -> String {
    format!("{resource}/{namespace}/{name}")
}

impl Index {
    fn entries(key: &str, refs: &PodRefs) -> Vec<String> {
        let name = key.rsplit('/').next().unwrap_or_default();
        let mut entries = vec![entry_key("pods", &refs.namespace, name)];
        entries.extend(
            refs.refs
                .iter()
                .map(|(resource, n)| entry_key(resource, &refs.namespace, n)),
        );
        entries
    }

    fn remove(&mut self, key: &str) {
        let Some(old) = self.pods.remove(key) else {
            return;
        };
        if let Some(counts) = self.by_node.get_mut(&old.node) {
            for entry in Self::entries(key, &old) {
                if let Some(count) = counts.get_mut(&entry) {
                    *count -= 1;
                    if *count == 0 {
                        counts.remove(&entry);
                    }
                }
            }
            if counts.is_empty() {
                self.by_node.remove(&old.node);
            }
        }
    }

    fn apply(&mut self, key: &str, pod: Option<&Value>) {
        if pod.is_some() {
            if !self.existing.contains(key) {
                self.existing.insert(key.to_string());
            }
        } else {
            self.existing.remove(key);
        }
        let refs = pod.and_then(PodRefs::parse);
        if self.pods.get(key) == refs.as_ref() {
            return;
        }
        self.remove(key);
        if let Some(refs) = refs {
            let counts = self.by_node.entry(refs.node.clone()).or_default();
            for entry in Self::entries(key, &refs) {
                *counts.entry(entry).or_default() += 1;
            }
            self.pods.insert(key.to_string(), refs);
        }
    }

    fn has(&self, node: &str, resource: &str, namespace: &str, name: &str) -> bool {
        self.by_node
            .get(node)
            .is_some_and(|counts| counts.contains_key(&entry_key(resource, namespace, name)))
    }
}

/// The node of a node identity: `system:node:NAME` in group `system:nodes`.
pub fn node_name(identity: &Identity) -> Option<&str> {
    let name = identity.user.strip_prefix(NODE_USER_PREFIX)?;
    (!name.is_empty() && identity.groups.iter().any(|g| g == NODES_GROUP)).then_some(name)
}

/// Node decisions; see the module documentation.
#[derive(Default)]
pub struct NodeAuthorizer {
    index: RwLock<Index>,
}

fn allow(why: &str) -> Option<Decision> {
    Some(Decision {
        allowed: true,
        reason: format!("node authorizer: {why}"),
    })
}

impl NodeAuthorizer {
    /// Applies a stored pod (or its deletion) at storage key `key`.
    pub fn apply(&self, key: &str, pod: Option<&Value>) {
        self.index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .apply(key, pod);
    }

    /// Allows what a node may do; `None` is no opinion (RBAC decides).
    pub fn authorize(&self, node: &str, attrs: &Attributes) -> Option<Decision> {
        if !attrs.resource_request {
            return None;
        }
        let verb = attrs.verb.as_str();
        let read = matches!(verb, "get" | "list" | "watch");
        let group = attrs.api_group.as_str();
        let sub = attrs.subresource.as_str();
        match (group, attrs.resource.as_str()) {
            ("", "nodes") => {
                let own = attrs.name == node;
                match (verb, sub) {
                    (_, "") | (_, "status") if read => allow("nodes are readable"),
                    // The name is checked on the object by `admit`.
                    ("create", "") => allow("a node may register itself"),
                    ("update" | "patch", "" | "status") if own => allow("its own Node"),
                    _ => None,
                }
            }
            ("", "pods" | "services" | "endpoints") if read && sub.is_empty() => {
                allow("cluster state is readable")
            }
            ("discovery.k8s.io", "endpointslices") if read => allow("cluster state is readable"),
            ("", "pods") => {
                let bound = || self.bound(node, "pods", &attrs.namespace, &attrs.name);
                match (verb, sub) {
                    ("update" | "patch", "status") if bound() => allow("a pod bound to it"),
                    ("delete", "") if bound() => allow("a pod bound to it"),
                    ("delete", "") if !self.pod_exists(&attrs.namespace, &attrs.name) => {
                        allow("the pod does not exist (the request ends in 404)")
                    }
                    ("get", "status") if bound() => allow("a pod bound to it"),
                    _ => None,
                }
            }
            ("", resource @ ("secrets" | "configmaps" | "persistentvolumeclaims"))
                if read && sub.is_empty() && !attrs.name.is_empty() =>
            {
                self.bound(node, resource, &attrs.namespace, &attrs.name)
                    .then(|| allow("referenced by a pod bound to it"))
                    .flatten()
            }
            ("", "serviceaccounts")
                if verb == "create"
                    && sub == "token"
                    && self.bound(node, "serviceaccounts", &attrs.namespace, &attrs.name) =>
            {
                allow("the service account of a pod bound to it")
            }
            ("coordination.k8s.io", "leases") if attrs.namespace == LEASE_NAMESPACE => match verb {
                "create" => allow("a node may create its Lease"),
                "get" | "update" | "patch" if attrs.name == node => allow("its own Lease"),
                _ => None,
            },
            ("" | "events.k8s.io", "events") if matches!(verb, "create" | "patch" | "update") => {
                allow("nodes record events")
            }
            _ => None,
        }
    }

    fn bound(&self, node: &str, resource: &str, namespace: &str, name: &str) -> bool {
        !name.is_empty()
            && self
                .index
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .has(node, resource, namespace, name)
    }

    fn pod_exists(&self, namespace: &str, name: &str) -> bool {
        self.index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .existing
            .contains(&format!("{PODS_PREFIX}{namespace}/{name}"))
    }

    fn replace_all(&self, objects: &[(String, Value)]) {
        let mut index = Index::default();
        for (key, pod) in objects {
            index.apply(key, Some(pod));
        }
        *self.index.write().unwrap_or_else(|e| e.into_inner()) = index;
    }

    /// Fills the index from the watch cache and keeps it current; the initial fill has
    /// happened when this returns.
    pub fn follow(self: &Arc<Self>, registry: &Arc<Registry>) -> tokio::task::JoinHandle<()> {
        let fill = |registry: &Registry, authorizer: &NodeAuthorizer| {
            let (snapshot, _, watch) = registry.cache.snapshot_and_watch(PODS_PREFIX);
            let objects: Vec<(String, Value)> = snapshot
                .iter()
                .map(|(k, o)| (k.to_string(), o.value()))
                .collect();
            authorizer.replace_all(&objects);
            watch
        };
        let watch = fill(registry, self);
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
                tracing::debug!("node authorizer watch ended; re-listing");
                watch = fill(&registry, &authorizer);
            }
        })
    }
}

/// NodeRestriction on the object being written, for what the authorizer could not judge by
/// name (creates): a node may create only its own Node and its own Lease, and a pod status it
/// writes must keep the pod on that node. No-op for everyone but nodes.
pub fn admit(scope: &Scope, obj: &Value, old: Option<&Value>) -> ApiResult<()> {
    let Some(requester) = super::Requester::current() else {
        return Ok(());
    };
    let Some(node) = node_name(&requester.identity) else {
        return Ok(());
    };
    let def = &scope.def;
    let name = crate::object::name(obj);
    let forbidden = |what: &str| {
        ApiError::forbidden(format!(
            "{} {name:?} is forbidden: node {node:?} is not allowed to modify {what} {name:?}",
            crate::errors::qualified(&def.group, &def.plural)
        ))
    };
    match (def.group.as_str(), def.plural.as_str()) {
        ("", "nodes") if name != node => Err(forbidden("node")),
        ("coordination.k8s.io", "leases")
            if scope.namespace.as_deref() == Some(LEASE_NAMESPACE) && name != node =>
        {
            Err(forbidden("lease"))
        }
        ("", "pods") => {
            let now = obj.pointer("/spec/nodeName").and_then(Value::as_str);
            let before = old.and_then(|o| o.pointer("/spec/nodeName").and_then(Value::as_str));
            if now == Some(node) && before.is_none_or(|b| b == node) {
                Ok(())
            } else {
                Err(forbidden("pod"))
            }
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, node: &str, secret: &str) -> Value {
        json!({
            "metadata": { "name": name, "namespace": "team" },
            "spec": {
                "nodeName": node,
                "serviceAccountName": "runner",
                "imagePullSecrets": [{ "name": "pull" }],
                "volumes": [
                    { "name": "s", "secret": { "secretName": secret } },
                    { "name": "p", "projected": { "sources": [{ "configMap": { "name": "proj-cm" } }] } },
                    { "name": "c", "persistentVolumeClaim": { "claimName": "data" } },
                ],
                "containers": [{
                    "name": "c",
                    "env": [{ "name": "X", "valueFrom": { "configMapKeyRef": { "name": "env-cm", "key": "k" } } }],
                    "envFrom": [{ "secretRef": { "name": "env-secret" } }],
                }],
            },
        })
    }

    fn get(resource: &str, name: &str) -> Attributes {
        Attributes::resource("get", "", resource, "team", name)
    }

    #[test]
    fn a_node_reaches_only_what_its_pods_use() {
        let authz = NodeAuthorizer::default();
        authz.apply("/registry/core/pods/team/a", Some(&pod("a", "n1", "s-a")));
        authz.apply("/registry/core/pods/team/b", Some(&pod("b", "n2", "s-b")));
        for (resource, name) in [
            ("secrets", "s-a"),
            ("secrets", "pull"),
            ("secrets", "env-secret"),
            ("configmaps", "proj-cm"),
            ("configmaps", "env-cm"),
            ("persistentvolumeclaims", "data"),
        ] {
            assert!(
                authz.authorize("n1", &get(resource, name)).is_some(),
                "{resource}/{name}"
            );
        }
        assert!(authz.authorize("n1", &get("secrets", "s-b")).is_none());
        assert!(authz.authorize("n2", &get("secrets", "s-a")).is_none());
        assert!(authz.authorize("n1", &get("secrets", "")).is_none());
        let list = Attributes::resource("list", "", "secrets", "team", "");
        assert!(authz.authorize("n1", &list).is_none());

        let mut status = Attributes::resource("patch", "", "pods", "team", "a");
        status.subresource = "status".into();
        assert!(authz.authorize("n1", &status).is_some());
        assert!(authz.authorize("n2", &status).is_none());
        let token = Attributes {
            subresource: "token".into(),
            ..Attributes::resource("create", "", "serviceaccounts", "team", "runner")
        };
        assert!(authz.authorize("n1", &token).is_some());
        assert!(authz.authorize("n3", &token).is_none());

        let own = Attributes::resource("update", "", "nodes", "", "n1");
        assert!(authz.authorize("n1", &own).is_some());
        assert!(authz.authorize("n2", &own).is_none());
        let lease = Attributes::resource(
            "update",
            "coordination.k8s.io",
            "leases",
            "kube-node-lease",
            "n1",
        );
        assert!(authz.authorize("n1", &lease).is_some());
        assert!(authz.authorize("n2", &lease).is_none());
        assert!(
            authz
                .authorize("n1", &Attributes::resource("delete", "", "nodes", "", "n1"))
                .is_none()
        );
        assert!(
            authz
                .authorize(
                    "n1",
                    &Attributes::resource("create", "", "namespaces", "", "")
                )
                .is_none()
        );

        // Moving a pod away removes what it gave; a shared secret stays until both are gone.
        authz.apply("/registry/core/pods/team/a2", Some(&pod("a2", "n1", "s-a")));
        authz.apply("/registry/core/pods/team/a", None);
        assert!(authz.authorize("n1", &get("secrets", "s-a")).is_some());
        authz.apply("/registry/core/pods/team/a2", Some(&pod("a2", "n2", "s-a")));
        assert!(authz.authorize("n1", &get("secrets", "s-a")).is_none());
        assert!(authz.authorize("n2", &get("secrets", "s-a")).is_some());
    }

    #[test]
    fn a_node_deletes_its_own_pods_and_learns_when_one_is_gone() {
        let authz = NodeAuthorizer::default();
        authz.apply(
            "/registry/core/pods/team/mine",
            Some(&pod("mine", "n1", "s")),
        );
        authz.apply(
            "/registry/core/pods/team/theirs",
            Some(&pod("theirs", "n2", "s")),
        );
        let mut unbound = pod("pending", "n1", "s");
        unbound["spec"]["nodeName"] = Value::Null;
        authz.apply("/registry/core/pods/team/pending", Some(&unbound));
        let delete = |name: &str| Attributes::resource("delete", "", "pods", "team", name);
        assert!(authz.authorize("n1", &delete("mine")).is_some());
        assert!(authz.authorize("n1", &delete("theirs")).is_none());
        assert!(authz.authorize("n1", &delete("pending")).is_none());
        // Gone already: the request goes on to its 404 instead of a misleading 403.
        assert!(authz.authorize("n1", &delete("never-was")).is_some());
        authz.apply("/registry/core/pods/team/theirs", None);
        assert!(authz.authorize("n1", &delete("theirs")).is_some());
    }

    #[test]
    fn node_identities_need_the_group() {
        let node = Identity {
            user: "system:node:n1".into(),
            groups: vec![NODES_GROUP.into()],
        };
        assert_eq!(node_name(&node), Some("n1"));
        let pretender = Identity {
            user: "system:node:n1".into(),
            groups: vec![],
        };
        assert_eq!(node_name(&pretender), None);
    }
}
