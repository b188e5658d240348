//! What the workload controllers share: the context they run with, owner references, label
//! selectors, pod health, `IntOrString` arithmetic, template hashes, events and status writes.
//!
//! Assumptions every workload controller makes, and why they hold here:
//! - Reads through the API see every acknowledged write (the server serves reads from a watch
//!   cache only after it has caught up with the store). So a reconciler that lists its pods
//!   afresh never misses the pods it created a moment ago, and needs none of upstream's
//!   "expectations" bookkeeping to avoid creating twice.
//! - Objects carry `metadata.uid` and `metadata.name` once the server has stored them; an object
//!   without them is skipped rather than trusted.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event as CoreEvent, EventSource, Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, ObjectMeta, OwnerReference, Time,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::{Selector, SelectorExt};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// The name controllers report themselves by, in events and elsewhere.
pub const MANAGER: &str = "visor-controller-manager";

/// What every workload reconciler is given.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
}

impl Context {
    pub fn new(client: Client) -> Arc<Context> {
        let recorder = Recorder::new(client.clone());
        Arc::new(Context { client, recorder })
    }

    /// Records an event about `object` (see [`Recorder::record`]).
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        self.recorder.record(object, warning, reason, note).await;
    }
}

/// Writes core/v1 Events, reported by [`MANAGER`].
///
/// `kube`'s own recorder folds every event with the same reason about the same object into
/// one series that keeps the first note, so "Created pod: a", "Created pod: b" would show as
/// one event. People read these notes, so here, as in upstream's recorder, the note is part of
/// what makes two events the same: a repeat of the very same event raises its `count` and
/// `lastTimestamp`; a different note is a new event.
///
/// An event is for people, not for correctness: failing to write one is logged and otherwise
/// ignored, so that it never fails a reconcile.
pub struct Recorder {
    client: Client,
    /// (namespace, object uid, type, reason, note) → (event name, count, when last written).
    seen: Mutex<HashMap<EventKey, (String, i32, Instant)>>,
}

type EventKey = (String, String, &'static str, String, String);

/// How long a written event may be counted up rather than written anew (upstream's
/// aggregation window).
const EVENT_WINDOW: Duration = Duration::from_secs(600);

impl Recorder {
    pub fn new(client: Client) -> Recorder {
        Recorder {
            client,
            seen: Mutex::new(HashMap::new()),
        }
    }

    pub async fn record<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let reference = object.object_ref(&());
        // Events about cluster-scoped objects live in `default`, as upstream's do.
        let namespace = reference
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let type_ = if warning { "Warning" } else { "Normal" };
        let key: EventKey = (
            namespace.clone(),
            reference.uid.clone().unwrap_or_default(),
            type_,
            reason.to_string(),
            note.clone(),
        );
        let api: Api<CoreEvent> = Api::namespaced(self.client.clone(), &namespace);
        let now = now();
        let repeat = self.seen.lock().ok().and_then(|mut seen| {
            seen.retain(|_, (_, _, at)| at.elapsed() < EVENT_WINDOW);
            seen.get(&key)
                .map(|(name, count, _)| (name.clone(), *count))
        });
        if let Some((name, count)) = repeat {
            let patch = serde_json::json!({ "count": count + 1, "lastTimestamp": now });
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    if let Ok(mut seen) = self.seen.lock() {
                        seen.insert(key, (name, count + 1, Instant::now()));
                    }
                    return;
                }
                // Gone (events expire): write it afresh below.
                Err(error) => tracing::debug!(%error, reason, "counting up an event"),
            }
        }
        let base = reference.name.clone().unwrap_or_else(|| MANAGER.into());
        let name = format!("{base}.{:x}", Timestamp::now().as_nanosecond());
        let event = CoreEvent {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace),
                ..ObjectMeta::default()
            },
            involved_object: reference,
            type_: Some(type_.into()),
            reason: Some(reason.into()),
            message: Some(note),
            source: Some(EventSource {
                component: Some(MANAGER.into()),
                host: None,
            }),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            reporting_component: Some(MANAGER.into()),
            reporting_instance: Some(MANAGER.into()),
            ..CoreEvent::default()
        };
        match api.create(&kube::api::PostParams::default(), &event).await {
            Ok(_) => {
                if let Ok(mut seen) = self.seen.lock() {
                    seen.insert(key, (name, 1, Instant::now()));
                }
            }
            Err(error) => tracing::debug!(%error, reason, "recording an event"),
        }
    }
}

/// The name and namespace of an object the server has stored, or why it can't be handled.
pub fn identity<K: Resource>(object: &K) -> Option<(String, String, String)> {
    let meta = object.meta();
    Some((
        meta.name.clone()?,
        meta.namespace.clone().unwrap_or_default(),
        meta.uid.clone()?,
    ))
}

/// The owner reference a controller puts on what it creates: `controller` and
/// `blockOwnerDeletion` both true, as upstream's controllers do, so that foreground deletion of
/// the owner waits for it.
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> Option<OwnerReference> {
    Some(OwnerReference {
        block_owner_deletion: Some(true),
        ..owner.controller_owner_ref(&())?
    })
}

/// Whether `meta` names `uid` as its controlling owner.
pub fn controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.uid == uid)
}

/// A workload's label selector in the form a list request takes. An absent selector selects
/// nothing: upstream's validation requires one, and selecting everything would let a workload
/// claim pods that are not its own.
pub fn selector(selector: Option<&LabelSelector>) -> Option<Selector> {
    let selector = Selector::try_from(selector?.clone()).ok()?;
    (!selector.selects_all()).then_some(selector)
}

/// Lists the objects of kind `K` in `namespace` that match `selector` and are controlled by
/// `uid`.
pub async fn owned<K>(
    client: &Client,
    namespace: &str,
    selector: &Selector,
    uid: &str,
) -> Result<Vec<K>, kube::Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let list = api
        .list(&ListParams::default().labels_from(selector))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|o| controlled_by(o.meta(), uid) && selector.matches(o.labels()))
        .collect())
}

/// The phase of a pod, or the empty string.
pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// A pod that counts toward a workload's replicas: not being deleted and not finished.
pub fn pod_active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase(pod), "Succeeded" | "Failed")
}

/// When the pod's `Ready` condition became true, if it is true.
fn ready_since(pod: &Pod) -> Option<Option<Timestamp>> {
    let condition = pod
        .status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    Some(condition.last_transition_time.as_ref().map(|t| t.0))
}

/// A pod whose `Ready` condition is `True`.
pub fn pod_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// A pod that has been ready for at least `min_ready_seconds`. A ready condition without a
/// transition time counts as ready long enough: nothing says otherwise.
pub fn pod_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    match ready_since(pod) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(None) => true,
        Some(Some(since)) => since + SignedDuration::from_secs(min_ready_seconds.into()) <= now,
    }
}

/// Resolves a `maxSurge`/`maxUnavailable`-style value against `total`. Percentages round up
/// or down as asked; malformed values count as zero (validation rejects them on write).
pub fn scaled_value(value: Option<&IntOrString>, total: i32, round_up: bool) -> i32 {
    match value {
        None => 0,
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => {
            let Some(percent) = s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) else {
                return 0;
            };
            let product = percent * i64::from(total);
            let value = if round_up {
                (product + 99).div_euclid(100)
            } else {
                product.div_euclid(100)
            };
            i32::try_from(value).unwrap_or(i32::MAX)
        }
    }
}

/// FNV-1a, 32 bits: the hash upstream names pod templates by. Stable across runs and
/// versions, which a template hash must be.
pub fn fnv32a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |hash, b| {
        (hash ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// A short name-safe hash of a pod template (and a collision count, to step past a clash): the
/// decimal hash spelled in consonants and digits that cannot form words, like upstream's.
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut bytes = serde_json::to_vec(template).unwrap_or_default();
    // No collisions and a zero count name the same template: a status that gains
    // `collisionCount: 0` must not change the hash (and so make every pod look outdated).
    if let Some(count) = collision_count.filter(|c| *c != 0) {
        bytes.extend_from_slice(&count.to_le_bytes());
    }
    fnv32a(&bytes)
        .to_string()
        .bytes()
        .map(|b| char::from(ALPHABET[usize::from(b) % ALPHABET.len()]))
        .collect()
}

/// A pod built from a workload's template: the template's labels plus `labels`, its
/// annotations and spec, owned by `owner`. `name` is either a fixed name or, when
/// `generate` is true, a prefix the server completes.
pub fn pod_from_template(
    template: &PodTemplateSpec,
    owner: OwnerReference,
    name: &str,
    generate: bool,
    labels: BTreeMap<String, String>,
) -> Pod {
    let template_meta = template.metadata.clone().unwrap_or_default();
    let mut all_labels = template_meta.labels.unwrap_or_default();
    all_labels.extend(labels);
    Pod {
        metadata: ObjectMeta {
            name: (!generate).then(|| name.to_string()),
            generate_name: generate.then(|| format!("{name}-")),
            labels: Some(all_labels),
            annotations: template_meta.annotations,
            finalizers: template_meta.finalizers,
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// The current time as an API timestamp.
pub fn now() -> Time {
    Time(Timestamp::now())
}

/// Writes `new` as the status of `name` if it differs from `old`, by JSON merge patch through
/// the status subresource. Fields present in `old` but absent from `new` are sent as `null` so
/// that the merge removes them (a merge patch keeps what it does not mention).
pub async fn write_status<K, S>(
    api: &Api<K>,
    name: &str,
    old: Option<&S>,
    new: &S,
) -> Result<bool, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if old == Some(new) {
        return Ok(false);
    }
    let mut patch = match serde_json::to_value(new) {
        Ok(Value::Object(map)) => map,
        Ok(_) | Err(_) => Map::new(),
    };
    if let Some(Ok(Value::Object(previous))) = old.map(serde_json::to_value) {
        for key in previous.keys() {
            patch.entry(key.clone()).or_insert(Value::Null);
        }
    }
    let body = serde_json::json!({ "status": patch });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&body))
        .await?;
    Ok(true)
}

/// Creates `object` and treats "already exists" as done: a reconciler that retries after a
/// lost response must not fail on its own earlier success.
pub async fn create_idempotent<K>(api: &Api<K>, object: &K) -> Result<Option<K>, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    match api.create(&kube::api::PostParams::default(), object).await {
        Ok(created) => Ok(Some(created)),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
        Err(e) => Err(e),
    }
}

/// Deletes `name` (in the background), treating "not found" as done.
pub async fn delete_idempotent<K>(api: &Api<K>, name: &str) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api
        .delete(name, &kube::api::DeleteParams::background())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether an API error means the namespace is going away (creating in a terminating
/// namespace is refused with 403), in which case a controller stops creating there.
pub fn namespace_terminating(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(e) if e.code == 403 || e.code == 404)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_as_asked() {
        let pct = IntOrString::String("25%".into());
        assert_eq!(scaled_value(Some(&pct), 3, true), 1);
        assert_eq!(scaled_value(Some(&pct), 3, false), 0);
        assert_eq!(scaled_value(Some(&pct), 10, true), 3);
        assert_eq!(scaled_value(Some(&pct), 10, false), 2);
        assert_eq!(scaled_value(Some(&IntOrString::Int(2)), 10, false), 2);
        assert_eq!(
            scaled_value(Some(&IntOrString::String("x".into())), 10, true),
            0
        );
        assert_eq!(scaled_value(None, 10, true), 0);
    }

    #[test]
    fn template_hash_is_stable_and_name_safe() {
        let template = PodTemplateSpec::default();
        let a = template_hash(&template, None);
        assert_eq!(a, template_hash(&template, None));
        assert_ne!(a, template_hash(&template, Some(1)));
        assert_eq!(a, template_hash(&template, Some(0)));
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
        assert_eq!(fnv32a(b""), 0x811c_9dc5);
        assert_eq!(fnv32a(b"a"), 0xe40c_292c);
    }
}
