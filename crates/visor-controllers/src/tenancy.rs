//! The tenancy controller: makes each SupervisorNamespace real, and turns NamespaceRequests
//! into SupervisorNamespaces from their templates.
//!
//! SupervisorNamespace N, flow: (1) hold it with the cleanup finalizer; (2) apply (server-side
//! apply, field manager `visor-tenancy`) the Namespace N — labelled back to N and annotated
//! with the zones, VM classes, images and storage classes it may use — its ResourceQuota
//! `visor-limits` (upstream's keys from the limits), its LimitRange `visor-defaults` (the
//! container defaults), and one RoleBinding per grant (`view`→`view`, `edit`→`edit`,
//! `owner`→`admin`); quota and limit range are deleted when nothing is limited, bindings
//! whose grant was removed are deleted; (3) report usage from the quota's status, a `used/limit`
//! summary for `kubectl get`, and `Ready` once the quota has been counted.
//! Deleting N deletes Namespace N (with everything in it, through the namespace
//! controller) and releases N's finalizer only once the Namespace is gone.
//!
//! NamespaceRequest R, flow: create SupervisorNamespace R from R's template, owned by R, with
//! R's requester added as `owner`; then mirror its `Ready` condition. Deleting R deletes the
//! SupervisorNamespace through the garbage collector.
//!
//! Guarantees: idempotent; every object is applied whole, so manual edits to managed fields
//! are put back on the next reconcile. Caveats: a Namespace N that existed before the
//! SupervisorNamespace is adopted (labelled and annotated), and deleted with it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota};
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use visor_api::ALLOWED_ZONES_ANNOTATION;
use visor_api::namespace::{
    ALLOWED_IMAGES_ANNOTATION, ALLOWED_STORAGE_CLASSES_ANNOTATION, ALLOWED_VM_CLASSES_ANNOTATION,
    CLEANUP_FINALIZER, LIMIT_RANGE_NAME, NamespaceRequest, NamespaceTemplate, Permission,
    QUOTA_NAME, Role, SUPERVISOR_NAMESPACE_LABEL, SubjectKind, SupervisorNamespace,
    SupervisorNamespaceStatus, Usage, UsageSummary,
};

use crate::{ERROR_REQUEUE, shared};

const MANAGER: &str = "visor-tenancy";
/// The label marking RoleBindings made for grants.
const PERMISSION_LABEL: &str = "visor.dev/permission";
/// How often a ready namespace's usage is refreshed without events.
const RESYNC: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} for namespace {namespace}: {source}")]
    Api {
        what: &'static str,
        namespace: String,
        source: kube::Error,
    },
}

fn api_error<'a>(what: &'static str, namespace: &'a str) -> impl FnOnce(kube::Error) -> Error + 'a {
    move |source| Error::Api {
        what,
        namespace: namespace.to_string(),
        source,
    }
}

struct Context {
    client: Client,
}

/// Runs both controllers until their watches end.
pub async fn run(client: Client) {
    futures::join!(run_namespaces(client.clone()), run_requests(client));
}

fn back_to_owner<K: Resource>(obj: K) -> Option<ObjectRef<SupervisorNamespace>> {
    obj.meta()
        .labels
        .as_ref()?
        .get(SUPERVISOR_NAMESPACE_LABEL)
        .map(|n| ObjectRef::new(n))
}

async fn run_namespaces(client: Client) {
    let labelled = || watcher::Config::default().labels(SUPERVISOR_NAMESPACE_LABEL);
    Controller::new(
        Api::<SupervisorNamespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<Namespace>::all(client.clone()),
        labelled(),
        back_to_owner,
    )
    .watches(
        Api::<ResourceQuota>::all(client.clone()),
        labelled(),
        back_to_owner,
    )
    .watches(
        Api::<LimitRange>::all(client.clone()),
        labelled(),
        back_to_owner,
    )
    .watches(
        Api::<RoleBinding>::all(client.clone()),
        labelled(),
        back_to_owner,
    )
    .run(reconcile, error_policy, Arc::new(Context { client }))
    .for_each(|result| async move {
        if let Err(error) = result {
            tracing::debug!(%error, "supervisor namespace reconcile");
        }
    })
    .await;
}

fn error_policy(_: Arc<SupervisorNamespace>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(%error, "supervisor namespace; retrying");
    Action::requeue(ERROR_REQUEUE)
}

async fn reconcile(sn: Arc<SupervisorNamespace>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = sn.name_any();
    let client = &ctx.client;
    let sns: Api<SupervisorNamespace> = Api::all(client.clone());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let has_finalizer = sn.finalizers().iter().any(|f| f == CLEANUP_FINALIZER);
    match (sn.meta().deletion_timestamp.is_some(), has_finalizer) {
        // Deleting, and ours to clean: the Namespace goes first, then the finalizer.
        (true, true) => {
            match namespaces
                .get_opt(&name)
                .await
                .map_err(api_error("reading the namespace", &name))?
            {
                Some(ns) => {
                    if ns.metadata.deletion_timestamp.is_none() {
                        shared::delete_idempotent(&namespaces, &name)
                            .await
                            .map_err(api_error("deleting the namespace", &name))?;
                    }
                    // The Namespace's deletion event wakes us; poll as well in case it is missed.
                    Ok(Action::requeue(Duration::from_secs(2)))
                }
                None => {
                    let keep: Vec<String> = sn
                        .finalizers()
                        .iter()
                        .filter(|f| *f != CLEANUP_FINALIZER)
                        .cloned()
                        .collect();
                    let patch = json!({"metadata": {"finalizers": keep, "resourceVersion": sn.resource_version()}});
                    sns.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                        .await
                        .map_err(api_error("releasing the finalizer", &name))?;
                    Ok(Action::await_change())
                }
            }
        }
        // Deleting and already released: nothing left to do.
        (true, false) => Ok(Action::await_change()),
        // Not held yet: add the finalizer first, so nothing is made that cleanup would miss.
        (false, false) => {
            let mut finalizers = sn.finalizers().to_vec();
            finalizers.push(CLEANUP_FINALIZER.into());
            let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": sn.resource_version()}});
            sns.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map_err(api_error("adding the finalizer", &name))?;
            Ok(Action::await_change())
        }
        // Live and held: bring everything in line with the spec.
        (false, true) => apply(&sn, &ctx).await,
    }
}

fn joined(values: &[String]) -> Option<String> {
    (!values.is_empty()).then(|| values.join(","))
}

async fn apply(sn: &SupervisorNamespace, ctx: &Context) -> Result<Action, Error> {
    let name = sn.name_any();
    let client = &ctx.client;
    let spec = &sn.spec;
    let params = PatchParams::apply(MANAGER).force();
    let labels = json!({ SUPERVISOR_NAMESPACE_LABEL: name });

    let mut annotations = serde_json::Map::new();
    let classes: Vec<String> = spec
        .storage_classes
        .iter()
        .map(|c| c.name.clone())
        .collect();
    for (key, value) in [
        (ALLOWED_ZONES_ANNOTATION, joined(&spec.zones)),
        (ALLOWED_VM_CLASSES_ANNOTATION, joined(&spec.vm_classes)),
        (ALLOWED_IMAGES_ANNOTATION, joined(&spec.images)),
        (ALLOWED_STORAGE_CLASSES_ANNOTATION, joined(&classes)),
    ] {
        if let Some(v) = value {
            annotations.insert(key.into(), json!(v));
        }
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": { "name": name, "labels": labels, "annotations": annotations },
    });
    match namespaces.patch(&name, &params, &Patch::Apply(&ns)).await {
        Ok(ns) if ns.metadata.deletion_timestamp.is_some() => {
            // A namespace deleted behind our back must finish terminating before it returns.
            return Ok(Action::requeue(Duration::from_secs(2)));
        }
        Ok(_) => {}
        Err(e) if shared::namespace_terminating(&e) => {
            return Ok(Action::requeue(Duration::from_secs(2)));
        }
        Err(e) => return Err(api_error("applying the namespace", &name)(e)),
    }

    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), &name);
    let hard = spec.quota_hard();
    if hard.is_empty() {
        shared::delete_idempotent(&quotas, QUOTA_NAME)
            .await
            .map_err(api_error("deleting the quota", &name))?;
    } else {
        let quota = json!({
            "apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": { "name": QUOTA_NAME, "namespace": name, "labels": labels },
            "spec": { "hard": hard },
        });
        quotas
            .patch(QUOTA_NAME, &params, &Patch::Apply(&quota))
            .await
            .map_err(api_error("applying the quota", &name))?;
    }

    let ranges: Api<LimitRange> = Api::namespaced(client.clone(), &name);
    match spec
        .container_defaults
        .as_ref()
        .filter(|d| !d.limits.is_empty() || !d.requests.is_empty())
    {
        None => shared::delete_idempotent(&ranges, LIMIT_RANGE_NAME)
            .await
            .map_err(api_error("deleting the limit range", &name))?,
        Some(defaults) => {
            let mut item = json!({ "type": "Container" });
            if !defaults.limits.is_empty() {
                item["default"] = json!(defaults.limits);
            }
            // Requests default to the limits where none are given, as upstream defaults them.
            let mut requests = defaults.limits.clone();
            requests.extend(defaults.requests.clone());
            item["defaultRequest"] = json!(requests);
            let range = json!({
                "apiVersion": "v1", "kind": "LimitRange",
                "metadata": { "name": LIMIT_RANGE_NAME, "namespace": name, "labels": labels },
                "spec": { "limits": [item] },
            });
            ranges
                .patch(LIMIT_RANGE_NAME, &params, &Patch::Apply(&range))
                .await
                .map_err(api_error("applying the limit range", &name))?;
        }
    }

    sync_bindings(client, &name, &spec.permissions).await?;

    let quota = if hard.is_empty() {
        None
    } else {
        quotas
            .get_opt(QUOTA_NAME)
            .await
            .map_err(api_error("reading the quota", &name))?
    };
    let status = status_of(sn, quota.as_ref());
    let ready = status
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if sn.status.as_ref() != Some(&status) {
        let sns: Api<SupervisorNamespace> = Api::all(client.clone());
        sns.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .map_err(api_error("writing the status", &name))?;
    }
    Ok(Action::requeue(if ready {
        RESYNC
    } else {
        Duration::from_secs(1)
    }))
}

/// A RoleBinding name for a grant: readable, and unique through a hash of the subject (user
/// names may hold characters object names may not).
fn binding_name(p: &Permission) -> String {
    let kind = match p.subject {
        SubjectKind::User => "user",
        SubjectKind::Group => "group",
    };
    let readable: String = p
        .name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    let hash = shared::fnv32a(format!("{kind}/{}", p.name).as_bytes());
    format!("visor-{kind}-{}-{hash:08x}", readable.trim_matches('-'))
}

async fn sync_bindings(
    client: &Client,
    namespace: &str,
    grants: &[Permission],
) -> Result<(), Error> {
    let api: Api<RoleBinding> = Api::namespaced(client.clone(), namespace);
    let params = PatchParams::apply(MANAGER).force();
    let mut wanted = BTreeMap::new();
    for p in grants {
        wanted.insert(binding_name(p), p);
    }
    let existing = api
        .list(&ListParams::default().labels(PERMISSION_LABEL))
        .await
        .map_err(api_error("listing role bindings", namespace))?;
    for binding in existing.items {
        let binding_name = binding.name_any();
        let role = &binding.role_ref.name;
        // A grant whose role changed needs a new binding: roleRef cannot be updated.
        let keep = wanted
            .get(&binding_name)
            .is_some_and(|p| p.role.cluster_role() == role);
        if !keep {
            shared::delete_idempotent(&api, &binding_name)
                .await
                .map_err(api_error("deleting a role binding", namespace))?;
        }
    }
    for (binding_name, p) in wanted {
        let binding = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {
                "name": binding_name, "namespace": namespace,
                "labels": { SUPERVISOR_NAMESPACE_LABEL: namespace, PERMISSION_LABEL: p.role.as_str() },
            },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": p.role.cluster_role() },
            "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": p.subject.rbac_kind(), "name": p.name }],
        });
        api.patch(&binding_name, &params, &Patch::Apply(&binding))
            .await
            .map_err(api_error("applying a role binding", namespace))?;
    }
    Ok(())
}

/// The status a SupervisorNamespace shows for its quota (`None` when nothing is limited).
fn status_of(sn: &SupervisorNamespace, quota: Option<&ResourceQuota>) -> SupervisorNamespaceStatus {
    let hard = sn.spec.quota_hard();
    let used = quota
        .and_then(|q| q.status.as_ref())
        .and_then(|s| s.used.clone())
        .unwrap_or_default();
    let mut usage = BTreeMap::new();
    for (key, limit) in &hard {
        if let Some(u) = used.get(key) {
            usage.insert(
                key.clone(),
                Usage {
                    used: u.clone(),
                    limit: limit.clone(),
                },
            );
        }
    }
    let counted = hard.keys().all(|k| used.contains_key(k));
    let text = |key: &str| match usage.get(key) {
        Some(u) => format!("{}/{}", u.used.0, u.limit.0),
        None if hard.contains_key(key) => "?".to_string(),
        None => "-".to_string(),
    };
    let summary = UsageSummary {
        cpu: text("limits.cpu"),
        memory: text("limits.memory"),
        storage: text("requests.storage"),
        pods: text("pods"),
    };
    let previous = sn
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready").cloned());
    let (status, reason, message) = if counted {
        (
            "True",
            "Ready",
            "the namespace, its quota, limit range and bindings match the spec",
        )
    } else {
        (
            "False",
            "QuotaPending",
            "the quota's usage has not been counted yet",
        )
    };
    let generation = sn.metadata.generation;
    let condition = match previous {
        Some(c)
            if c.status == status && c.reason == reason && c.observed_generation == generation =>
        {
            c
        }
        _ => Condition {
            type_: "Ready".into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: generation,
            last_transition_time: shared::now(),
        },
    };
    SupervisorNamespaceStatus {
        observed_generation: generation,
        usage,
        summary: Some(summary),
        conditions: vec![condition],
    }
}

// ------------------------------------------------------------------------------------------
// Self-service

async fn run_requests(client: Client) {
    Controller::new(
        Api::<NamespaceRequest>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(
        Api::<SupervisorNamespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .run(
        reconcile_request,
        request_error_policy,
        Arc::new(Context { client }),
    )
    .for_each(|result| async move {
        if let Err(error) = result {
            tracing::debug!(%error, "namespace request reconcile");
        }
    })
    .await;
}

fn request_error_policy(_: Arc<NamespaceRequest>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(%error, "namespace request; retrying");
    Action::requeue(ERROR_REQUEUE)
}

async fn reconcile_request(req: Arc<NamespaceRequest>, ctx: Arc<Context>) -> Result<Action, Error> {
    if req.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let name = req.name_any();
    let client = &ctx.client;
    let requests: Api<NamespaceRequest> = Api::all(client.clone());
    let sns: Api<SupervisorNamespace> = Api::all(client.clone());
    let templates: Api<NamespaceTemplate> = Api::all(client.clone());
    let existing = sns
        .get_opt(&name)
        .await
        .map_err(api_error("reading the supervisor namespace", &name))?;
    let condition = match existing {
        Some(sn) => {
            let ours = sn
                .owner_references()
                .iter()
                .any(|o| Some(&o.uid) == req.meta().uid.as_ref());
            if ours {
                let ready = sn
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready").cloned());
                match ready {
                    Some(c) if c.status == "True" => {
                        ("True", "Ready", "the namespace is ready".to_string())
                    }
                    _ => (
                        "False",
                        "Provisioning",
                        "the namespace is being set up".to_string(),
                    ),
                }
            } else {
                (
                    "False",
                    "NameTaken",
                    format!("a SupervisorNamespace named {name} already exists"),
                )
            }
        }
        None => match templates
            .get_opt(&req.spec.template)
            .await
            .map_err(api_error("reading the template", &name))?
        {
            None => (
                "False",
                "TemplateNotFound",
                format!("namespace template {:?} does not exist", req.spec.template),
            ),
            Some(template) => {
                let mut spec = template.spec.namespace.clone();
                if let Some(requester) = &req.spec.requester {
                    spec.permissions
                        .retain(|p| !(p.subject == SubjectKind::User && &p.name == requester));
                    spec.permissions.push(Permission {
                        subject: SubjectKind::User,
                        name: requester.clone(),
                        role: Role::Owner,
                    });
                }
                let mut sn = SupervisorNamespace::new(&name, spec);
                sn.metadata.owner_references =
                    shared::controller_ref(req.as_ref()).map(|r| vec![r]);
                sns.create(&PostParams::default(), &sn)
                    .await
                    .map_err(api_error("creating the supervisor namespace", &name))?;
                (
                    "False",
                    "Provisioning",
                    "the namespace is being set up".to_string(),
                )
            }
        },
    };
    let (status, reason, message) = condition;
    let current = req
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    if current.is_none_or(|c| c.status != status || c.reason != reason) {
        let condition = Condition {
            type_: "Ready".into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: req.metadata.generation,
            last_transition_time: shared::now(),
        };
        requests
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": { "conditions": [condition] } })),
            )
            .await
            .map_err(api_error("writing the request status", &name))?;
    }
    Ok(if status == "True" {
        Action::await_change()
    } else {
        Action::requeue(Duration::from_secs(5))
    })
}
