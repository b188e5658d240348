//! What upstream hard-codes for pods beyond graceful deletion: the `binding` and `eviction`
//! subresources, and the priority admission that turns `priorityClassName` into
//! `spec.priority`.
//!
//! - **Binding** (`POST pods/NAME/binding`): the scheduler's write. Sets `spec.nodeName` —
//!   which a pod update may not change — and the `PodScheduled=True` condition, in one
//!   compare-and-swap. A pod already bound, or being deleted, is a `409`.
//! - **Eviction** (`POST pods/NAME/eviction`): a deletion that asks the pod's
//!   PodDisruptionBudget first, as upstream's eviction REST. With no budget the pod is deleted;
//!   with one whose `disruptionsAllowed` is 0 the answer is `429 TooManyRequests`; otherwise
//!   the budget's status is updated first (`disruptionsAllowed` decremented, the pod recorded
//!   in `disruptedPods`, so concurrent evictions cannot overrun it — the budget write is a
//!   compare-and-swap) and then the pod is deleted with the eviction's delete options.
//!   Pods that are terminating, finished or still pending are evicted without asking, as
//!   upstream does.
//! - **Priority**: a pod naming a PriorityClass gets its value as `spec.priority` (and its
//!   preemption policy); a pod naming none gets the global default class's, if there is one;
//!   an unknown class is `403`. The two system classes exist without objects.

use serde_json::{Value, json};
use visor_store::StoreError;

use super::{ReadFrom, Registry, Scope};
use crate::errors::{ApiError, ApiResult};
use crate::kinds::FieldError;
use crate::object::{self, meta_mut};
use crate::selectors::parse_label_selector;

/// Upstream's built-in priority classes, which need no object.
const SYSTEM_PRIORITY_CLASSES: [(&str, i64); 2] = [
    ("system-node-critical", 2_000_001_000),
    ("system-cluster-critical", 2_000_000_000),
];

const PDB_PREFIX: &str = "/registry/policy/poddisruptionbudgets/";
const PRIORITY_CLASS_PREFIX: &str = "/registry/scheduling.k8s.io/priorityclasses/";

/// How many times a binding or eviction retries after losing a compare-and-swap race.
const RETRIES: usize = 16;

fn status_success(code: u16) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "code": code,
    })
}

fn pod_condition(pod: &mut Value, type_: &str, status: &str) {
    let now = object::now_rfc3339();
    let conditions = pod["status"]
        .as_object_mut()
        .map(|s| s.entry("conditions").or_insert_with(|| json!([])));
    let Some(Value::Array(conditions)) = conditions else {
        pod["status"] = json!({"conditions": [{"type": type_, "status": status, "lastProbeTime": null, "lastTransitionTime": now}]});
        return;
    };
    match conditions
        .iter_mut()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
    {
        Some(c) => {
            if c.get("status").and_then(Value::as_str) != Some(status) {
                c["lastTransitionTime"] = json!(now);
            }
            c["status"] = json!(status);
            if let Some(c) = c.as_object_mut() {
                c.remove("reason");
                c.remove("message");
            }
        }
        None => conditions.push(json!({
            "type": type_, "status": status, "lastProbeTime": null, "lastTransitionTime": now,
        })),
    }
}

/// Why a pod cannot be bound as it is, in upstream's words.
fn binding_refusal(pod: &Value, name: &str, uid: Option<&str>) -> Option<ApiError> {
    if let Some(uid) = uid
        && object::meta_str(pod, "uid") != Some(uid)
    {
        return Some(ApiError::conflict(
            "",
            "pods",
            name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                object::meta_str(pod, "uid").unwrap_or("")
            ),
        ));
    }
    if object::is_deleting(pod) {
        return Some(ApiError::conflict(
            "",
            "pods",
            name,
            &format!("pod {name} is being deleted, cannot be assigned to a host"),
        ));
    }
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())?;
    Some(ApiError::conflict(
        "",
        "pods",
        name,
        &format!("pod {name} is already assigned to node {node:?}"),
    ))
}

impl Registry {
    /// `POST pods/NAME/binding`: binds a pending pod to a node. Returns the Status to send
    /// (201).
    ///
    /// Guarantees: a pod is bound at most once — the write is a compare-and-swap on the pod
    /// read, and a pod whose `spec.nodeName` is set is refused with upstream's `409` message.
    pub async fn bind_pod(&self, scope: &Scope, name: &str, binding: Value) -> ApiResult<Value> {
        let kind = binding.get("kind").and_then(Value::as_str).unwrap_or("");
        // A body without a kind is one, as upstream decodes it with the endpoint's kind.
        if !kind.is_empty() && kind != "Binding" {
            return Err(ApiError::bad_request(format!(
                "expected a Binding, got kind {kind:?}"
            )));
        }
        let body_name = object::name(&binding);
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        let target = binding
            .pointer("/target/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        if target.is_empty() {
            return Err(ApiError::invalid(
                "",
                "Binding",
                name,
                &[FieldError::required("target.name", "")],
            ));
        }
        let uid = object::meta_str(&binding, "uid").filter(|u| !u.is_empty());
        let key = scope.def.key(scope.namespace.as_deref(), name);
        let mut from = ReadFrom::Cache;
        for _ in 0..RETRIES {
            let (mut pod, revision, cached) = self.current_for_write(scope, name, from).await?;
            from = ReadFrom::Store;
            if let Some(refusal) = binding_refusal(&pod, name, uid) {
                // A cached copy may be stale: refuse only on the store's word.
                if cached {
                    continue;
                }
                return Err(refusal);
            }
            pod["spec"]["nodeName"] = json!(target);
            pod_condition(&mut pod, "PodScheduled", "True");
            if let Some(status) = pod["status"].as_object_mut() {
                status.remove("nominatedNodeName");
            }
            match self
                .store
                .update(&key, object::to_storage_bytes(&pod), revision)
                .await
            {
                Ok(_) => return Ok(status_success(201)),
                Err(StoreError::Conflict {
                    current: Some(present),
                    ..
                }) => from = ReadFrom::Known(present),
                Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(ApiError::from_store(e, "", "pods", name)),
            }
        }
        Err(ApiError::conflict(
            "",
            "pods",
            name,
            "too many concurrent updates; try again",
        ))
    }

    /// `POST pods/NAME/eviction`: deletes a pod if its PodDisruptionBudget allows. Returns
    /// the Status to send (201). See the module documentation for the rules.
    pub async fn evict_pod(&self, scope: &Scope, name: &str, eviction: Value) -> ApiResult<Value> {
        let kind = eviction.get("kind").and_then(Value::as_str).unwrap_or("");
        // A body without a kind is one, as upstream decodes it with the endpoint's kind.
        if !kind.is_empty() && kind != "Eviction" {
            return Err(ApiError::bad_request(format!(
                "expected an Eviction, got kind {kind:?}"
            )));
        }
        let body_name = object::name(&eviction);
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(
                "name in URL does not match name in Eviction object",
            ));
        }
        let options = match eviction.get("deleteOptions") {
            Some(o) if o.is_object() => {
                let body = serde_json::to_vec(o).expect("JSON serialises");
                super::DeleteOptions::from_request(
                    &body,
                    "application/json",
                    &crate::request::Query::default(),
                )?
            }
            _ => super::DeleteOptions::default(),
        };
        let namespace = scope.namespace.clone().unwrap_or_default();
        for _ in 0..RETRIES {
            let (pod, _) = self.get_current(scope, name).await?;
            let phase = pod
                .pointer("/status/phase")
                .and_then(Value::as_str)
                .unwrap_or("");
            let ignore_budget =
                object::is_deleting(&pod) || matches!(phase, "Succeeded" | "Failed" | "Pending");
            if ignore_budget {
                self.delete(scope, name, &options).await?;
                return Ok(status_success(201));
            }
            let budgets = self.budgets_for(&namespace, &pod)?;
            let budget = match budgets.as_slice() {
                [] => {
                    self.delete(scope, name, &options).await?;
                    return Ok(status_success(201));
                }
                [one] => one,
                _ => {
                    return Err(ApiError::internal(
                        "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                    ));
                }
            };
            match self.charge_budget(&namespace, budget, name).await? {
                Charged::Done => {
                    self.delete(scope, name, &options).await?;
                    return Ok(status_success(201));
                }
                Charged::Raced => continue,
            }
        }
        Err(ApiError::conflict(
            "",
            "pods",
            name,
            "too many concurrent updates; try again",
        ))
    }

    /// The PodDisruptionBudgets in `namespace` whose selector matches `pod`, with the
    /// revision each was read at.
    fn budgets_for(&self, namespace: &str, pod: &Value) -> ApiResult<Vec<(Value, i64)>> {
        let labels = pod.pointer("/metadata/labels").and_then(Value::as_object);
        let (budgets, _) = self.cache.list(&format!("{PDB_PREFIX}{namespace}/"));
        let mut matching = Vec::new();
        for (_, cached) in budgets.iter() {
            let budget = cached.value();
            let Some(selector) = budget.pointer("/spec/selector") else {
                // A null selector selects nothing.
                continue;
            };
            let selector = parse_label_selector(&super::selector_string(selector))?;
            if selector.matches(|k| labels.and_then(|l| l.get(k)).and_then(Value::as_str)) {
                matching.push((budget, cached.revision));
            }
        }
        Ok(matching)
    }

    /// Takes one disruption from a budget, or says `429` why not.
    async fn charge_budget(
        &self,
        namespace: &str,
        (budget, revision): &(Value, i64),
        pod: &str,
    ) -> ApiResult<Charged> {
        let budget_name = object::name(budget).to_string();
        let generation = object::meta(budget)
            .and_then(|m| m.get("generation"))
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let observed = budget
            .pointer("/status/observedGeneration")
            .and_then(Value::as_i64)
            .unwrap_or(-1);
        let refuse = |message: String, cause: Option<String>| {
            let mut error = ApiError::new(429, "TooManyRequests", message);
            if let Some(cause) = cause {
                error.details = Some(json!({
                    "causes": [{"reason": "DisruptionBudget", "message": cause}],
                }));
            }
            error
        };
        if observed < generation {
            return Err(refuse(
                format!(
                    "Cannot evict pod as it would violate the pod's disruption budget. The disruption budget {budget_name} is still being processed by the server."
                ),
                None,
            ));
        }
        let already = budget
            .pointer("/status/disruptedPods")
            .and_then(Value::as_object)
            .is_some_and(|d| d.contains_key(pod));
        if already {
            return Ok(Charged::Done);
        }
        let allowed = budget
            .pointer("/status/disruptionsAllowed")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if allowed <= 0 {
            let desired = budget
                .pointer("/status/desiredHealthy")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            let current = budget
                .pointer("/status/currentHealthy")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            return Err(refuse(
                "Cannot evict pod as it would violate the pod's disruption budget.".into(),
                Some(format!(
                    "The disruption budget {budget_name} needs {desired} healthy pods and has {current} currently"
                )),
            ));
        }
        let mut next = budget.clone();
        next["status"]["disruptionsAllowed"] = json!(allowed - 1);
        let disrupted = next["status"]
            .as_object_mut()
            .map(|s| s.entry("disruptedPods").or_insert_with(|| json!({})));
        match disrupted {
            Some(Value::Object(d)) => {
                d.insert(pod.into(), json!(object::now_rfc3339()));
            }
            _ => next["status"]["disruptedPods"] = json!({ pod: object::now_rfc3339() }),
        }
        meta_mut(&mut next).remove("resourceVersion");
        let key = format!("{PDB_PREFIX}{namespace}/{budget_name}");
        match self
            .store
            .update(&key, object::to_storage_bytes(&next), *revision)
            .await
        {
            Ok(_) => Ok(Charged::Done),
            Err(StoreError::Conflict { .. }) => {
                // Someone else changed the budget: wait until the cache shows it, then retry.
                self.sync().await?;
                Ok(Charged::Raced)
            }
            Err(e) => Err(ApiError::from_store(
                e,
                "policy",
                "poddisruptionbudgets",
                &budget_name,
            )),
        }
    }

    /// Priority admission for a new pod (see the module documentation).
    pub(crate) fn admit_pod_priority(&self, pod: &mut Value) -> ApiResult<()> {
        let name = object::name(pod).to_string();
        let requested = pod
            .pointer("/spec/priorityClassName")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .map(str::to_string);
        let resolved: Option<(String, i64, Option<String>)> = match &requested {
            Some(class) => {
                if let Some((_, value)) = SYSTEM_PRIORITY_CLASSES.iter().find(|(n, _)| n == class) {
                    Some((class.clone(), *value, None))
                } else {
                    let cached = self
                        .cache
                        .get(&format!("{PRIORITY_CLASS_PREFIX}{class}"))
                        .ok_or_else(|| {
                            ApiError::forbidden(format!(
                                "pods \"{name}\" is forbidden: no PriorityClass with name {class} was found"
                            ))
                        })?;
                    let pc = cached.value();
                    Some((
                        class.clone(),
                        pc.get("value").and_then(Value::as_i64).unwrap_or(0),
                        pc.get("preemptionPolicy")
                            .and_then(Value::as_str)
                            .map(str::to_string),
                    ))
                }
            }
            None => {
                let (classes, _) = self.cache.list(PRIORITY_CLASS_PREFIX);
                classes
                    .iter()
                    .map(|(_, c)| c.value())
                    .filter(|pc| pc.get("globalDefault").and_then(Value::as_bool) == Some(true))
                    .map(|pc| {
                        (
                            object::name(&pc).to_string(),
                            pc.get("value").and_then(Value::as_i64).unwrap_or(0),
                            pc.get("preemptionPolicy")
                                .and_then(Value::as_str)
                                .map(str::to_string),
                        )
                    })
                    .min_by_key(|(_, value, _)| *value)
            }
        };
        let (class, value, policy) = match resolved {
            Some((class, value, policy)) => (Some(class), value, policy),
            None => (None, 0, None),
        };
        if let Some(given) = pod.pointer("/spec/priority").and_then(Value::as_i64)
            && given != value
        {
            return Err(ApiError::forbidden(format!(
                "pods \"{name}\" is forbidden: the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"
            )));
        }
        let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
            return Ok(());
        };
        if let Some(class) = class {
            spec.insert("priorityClassName".into(), json!(class));
        }
        spec.insert("priority".into(), json!(value));
        spec.entry("preemptionPolicy")
            .or_insert_with(|| json!(policy.unwrap_or_else(|| "PreemptLowerPriority".into())));
        Ok(())
    }
}

enum Charged {
    Done,
    /// The budget changed under us; read it again.
    Raced,
}
