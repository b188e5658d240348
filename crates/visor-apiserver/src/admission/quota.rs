//! ResourceQuota admission: a write that adds usage in a namespace with quotas is charged to
//! every quota it touches before the object is stored, or refused with upstream's 403.
//!
//! Flow, per write: (1) the quotas of the namespace come from the watch cache — none, and the
//! write goes on at once; (2) the object's usage, minus the old object's on updates, is the
//! charge; (3) for each quota that constrains a charged key: a pod that leaves a constrained
//! compute resource unnamed is refused (`failed quota: …: must specify …`), a key the quota
//! controller has not counted yet is refused (`status unknown for quota`), and a charge that
//! would pass `spec.hard` is refused (`exceeded quota: …, requested: …, used: …, limited: …`);
//! (4) otherwise the write joins its namespace's queue of charged writes ([`write`]). Whoever
//! finds the queue idle starts a batch: it takes every write waiting, checks their charges
//! again one after another against the quotas as they will stand, and stores each touched
//! quota's new `status.used` — compare-and-swap on the revision it was read at — together with
//! every admitted object in one store transaction. A lost race re-reads the quotas from the
//! store and evaluates the batch again; a write the store refuses (a name taken, a stale
//! update) leaves the batch with its error and the rest is evaluated again without it.
//!
//! Guarantees: no quota's `status.used` ever passes its `spec.hard` through admission, and
//! two writes never both spend the same units, whichever API server (sharing one store)
//! admits them — the store's compare-and-swap orders them. Because charges and objects are
//! one transaction, a write that fails charges nothing. Concurrent writes to one namespace
//! share one quota update per batch (as upstream's quota evaluator batches them), so a quota
//! does not serialise a namespace's writers behind one commit each. Deletes release nothing
//! here: the quota controller recounts after them. Limits come from `spec.hard` directly, so
//! an edited limit binds the next write even before the controller copies it to `status.hard`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};

use serde_json::{Value, json};
use tokio::sync::oneshot;
use visor_store::cache::WatchCache;
use visor_store::{DynStore, Revision, StoreError, TxnWrite};

use super::usage::{self, ResourceList};
use crate::errors::{ApiError, ApiResult, qualified};
use crate::kinds::validation::Quantity;
use crate::object::{self, CachedObject};
use crate::registry::{Registry, Scope};

type QuotaCache = WatchCache<CachedObject>;

/// How often a batch is evaluated again after other writers changed its quotas first.
const CHARGE_RETRIES: usize = 64;
/// The most writes stored in one batch.
const BATCH_LIMIT: usize = 256;

/// A namespace's queue of charged writes, and its quotas as this server last wrote them (the
/// watch cache may lag behind its own writes).
#[derive(Default)]
struct Queue {
    waiting: Vec<Pending>,
    /// Whether a batch is being stored; the writer of a batch takes the next one after it.
    busy: bool,
    written: HashMap<String, (Revision, Arc<Value>)>,
}

/// A charged write waiting for its batch.
struct Pending {
    charge: Charge,
    write: TxnWrite,
    done: Option<oneshot::Sender<ApiResult<Result<Revision, StoreError>>>>,
}

impl Pending {
    fn answer(&mut self, outcome: ApiResult<Result<Revision, StoreError>>) {
        if let Some(done) = self.done.take() {
            // The writer may have gone (its client did): the write stands all the same.
            let _ = done.send(outcome);
        }
    }
}

static QUEUES: LazyLock<Mutex<HashMap<String, Arc<Mutex<Queue>>>>> =
    LazyLock::new(Default::default);

fn queue(prefix: &str) -> Arc<Mutex<Queue>> {
    QUEUES
        .lock()
        .expect("quota queue map")
        .entry(prefix.to_string())
        .or_default()
        .clone()
}

/// Each namespace's quotas as last parsed from the watch cache, by key, with the revision
/// parsed: every charged write reads them, and they change far less often than that.
type Parsed = HashMap<String, (Revision, Arc<Value>)>;

static PARSED: LazyLock<Mutex<HashMap<String, Parsed>>> = LazyLock::new(Default::default);

/// The namespace's quotas from the watch cache, each parsed once per revision.
fn cached_quotas(cache: &QuotaCache, prefix: &str) -> Vec<(String, Revision, Arc<Value>)> {
    let (cached, _) = cache.list(prefix);
    if cached.is_empty() {
        return Vec::new();
    }
    let mut parsed = PARSED.lock().expect("parsed quota map");
    let known = parsed.remove(prefix).unwrap_or_default();
    let mut current = Parsed::with_capacity(cached.len());
    let quotas = cached
        .iter()
        .map(|(key, obj)| {
            let known = known.get(&**key);
            let value = match known {
                Some((revision, value)) if *revision == obj.revision => value.clone(),
                _ => Arc::new(obj.value()),
            };
            // A quota this server wrote is kept parsed until the cache catches up with it.
            let keep = match known {
                Some((revision, newer)) if *revision > obj.revision => (*revision, newer.clone()),
                _ => (obj.revision, value.clone()),
            };
            current.insert(key.to_string(), keep);
            (key.to_string(), obj.revision, value)
        })
        .collect();
    parsed.insert(prefix.to_string(), current);
    quotas
}

/// Remembers quotas this server wrote as parsed, for when the watch cache brings them.
fn remember_parsed(prefix: &str, written: &[(String, (Revision, Arc<Value>))]) {
    let mut parsed = PARSED.lock().expect("parsed quota map");
    let parsed = parsed.entry(prefix.to_string()).or_default();
    for (key, written) in written {
        parsed.insert(key.clone(), written.clone());
    }
}

/// The storage prefix of a namespace's ResourceQuotas.
fn quota_prefix(namespace: &str) -> String {
    format!("/registry/core/resourcequotas/{namespace}/")
}

/// A write's charge to the quotas of its namespace, admitted against the quotas as they stood
/// at admission. [`write`] stores the write with the charge, checked again then.
#[derive(Clone)]
pub(crate) struct Charge {
    /// The storage prefix of the namespace's quotas.
    prefix: String,
    /// The namespace's queue of charged writes.
    queue: Arc<Mutex<Queue>>,
    group: String,
    resource: String,
    /// The object's name, for refusals.
    name: String,
    delta: ResourceList,
}

/// What a write needs to have its charge evaluated.
pub(crate) struct ChargeRequest<'a> {
    pub scope: &'a Scope,
    pub old: Option<&'a Value>,
    pub new: &'a Value,
}

/// Charges a create (`old` None) or update of `new` to the quotas of its namespace, or
/// refuses it. `None` when no quota constrains what the write adds; with `dry_run` the checks
/// run and `None` is returned.
pub(crate) async fn charge(
    registry: &Registry,
    request: &ChargeRequest<'_>,
    dry_run: bool,
) -> ApiResult<Option<Charge>> {
    let scope = request.scope;
    let Some(namespace) = scope.namespace.as_deref().filter(|_| scope.def.namespaced) else {
        return Ok(None);
    };
    let prefix = quota_prefix(namespace);
    let cached = cached_quotas(&registry.cache, &prefix);
    if cached.is_empty() {
        return Ok(None);
    }
    let (group, resource) = (scope.def.group.as_str(), scope.def.plural.as_str());
    if (group, resource) == ("", "resourcequotas") {
        // A quota's own writes (and the status writes below) are not charged to quotas.
        return Ok(None);
    }
    // Quotas that constrain nothing this write charges are not evaluated.
    let relevant = cached.iter().any(|(_, _, quota)| {
        hard_keys(quota)
            .iter()
            .any(|k| usage::resource_covers(group, resource, k))
    });
    let delta = delta(request);
    if !relevant || delta.is_empty() {
        return Ok(None);
    }
    // Refuse now what the quotas refuse as they stand; the batch checks the amounts again.
    let queue = queue(&prefix);
    let written = queue.lock().expect("quota queue").written.clone();
    let mut charges = false;
    for (_, _, quota) in newest(cached, &written) {
        charges |= evaluate(group, resource, request.new, request.old, &delta, &quota)?;
    }
    Ok((charges && !dry_run).then(|| Charge {
        prefix,
        queue,
        group: group.to_string(),
        resource: resource.to_string(),
        name: object::name(request.new).to_string(),
        delta,
    }))
}

/// Stores `write` with its charge: in the namespace's next batch, or refused (403) if the
/// quotas no longer have room by then. The store's errors about the object itself come back
/// as they are (`Ok(Err(..))`); the charge still holds for another attempt at the same write.
pub(crate) async fn write(
    registry: &Registry,
    charge: &Charge,
    write: TxnWrite,
) -> ApiResult<Result<Revision, StoreError>> {
    let queue = charge.queue.clone();
    let (done, outcome) = oneshot::channel();
    let pending = Pending {
        charge: charge.clone(),
        write,
        done: Some(done),
    };
    let start = {
        let mut queue = queue.lock().expect("quota queue");
        queue.waiting.push(pending);
        !std::mem::replace(&mut queue.busy, true)
    };
    if start {
        // The batches go on in a task of their own: a writer whose request is abandoned does
        // not strand the writes queued behind it.
        tokio::spawn(store_batches(
            registry.store.clone(),
            registry.cache.clone(),
            charge.prefix.clone(),
            queue,
        ));
    }
    outcome
        .await
        .map_err(|_| ApiError::internal("the quota batch was abandoned"))?
}

/// Stores the namespace's waiting writes, batch after batch, until none is left.
async fn store_batches(
    store: DynStore,
    cache: Arc<QuotaCache>,
    prefix: String,
    queue: Arc<Mutex<Queue>>,
) {
    loop {
        let (mut batch, written) = {
            let mut queue = queue.lock().expect("quota queue");
            if queue.waiting.is_empty() {
                queue.busy = false;
                return;
            }
            (take_batch(&mut queue.waiting), queue.written.clone())
        };
        let stored = store_batch(&store, &cache, &prefix, &mut batch, written).await;
        let mut queue = queue.lock().expect("quota queue");
        match stored {
            Ok(quotas) => {
                remember_parsed(&prefix, &quotas);
                queue.written.extend(quotas);
            }
            Err(e) => {
                for mut pending in batch {
                    pending.answer(Err(e.clone()));
                }
            }
        }
    }
}

/// Up to [`BATCH_LIMIT`] waiting writes, in order, no two of the same key (the later waits
/// for the next batch).
fn take_batch(waiting: &mut Vec<Pending>) -> Vec<Pending> {
    let mut keys = HashSet::new();
    let mut batch = Vec::new();
    let mut rest = Vec::new();
    for pending in waiting.drain(..) {
        if batch.len() < BATCH_LIMIT && keys.insert(write_key(&pending.write).to_string()) {
            batch.push(pending);
        } else {
            rest.push(pending);
        }
    }
    *waiting = rest;
    batch
}

fn write_key(write: &TxnWrite) -> &str {
    match write {
        TxnWrite::Create { key, .. } | TxnWrite::Update { key, .. } => key,
    }
}

/// Evaluates and stores one batch. Each write leaves `batch` with its answer; `Ok` carries
/// the quotas as written, `Err` an error for every write still in the batch.
async fn store_batch(
    store: &DynStore,
    cache: &QuotaCache,
    prefix: &str,
    batch: &mut Vec<Pending>,
    written: HashMap<String, (Revision, Arc<Value>)>,
) -> ApiResult<Vec<(String, (Revision, Arc<Value>))>> {
    let mut quotas = newest(cached_quotas(cache, prefix), &written);
    let mut races = 0;
    while races < CHARGE_RETRIES {
        // Each write's charge on top of those before it; a refused one is answered now.
        let mut next: Vec<Option<Arc<Value>>> = vec![None; quotas.len()];
        batch.retain_mut(|pending| {
            let charge = &pending.charge;
            let mut added = Vec::new();
            for (i, (_, _, stored)) in quotas.iter().enumerate() {
                let quota = next[i].as_deref().unwrap_or(stored);
                match add_charge(charge, quota) {
                    Ok(Some(charged)) => added.push((i, charged)),
                    Ok(None) => {}
                    Err(refused) => {
                        pending.answer(Err(refused));
                        return false;
                    }
                }
            }
            for (i, charged) in added {
                next[i] = Some(Arc::new(charged));
            }
            true
        });
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let changed: Vec<(String, Revision, Arc<Value>)> = quotas
            .iter()
            .zip(&next)
            .filter_map(|((key, revision, _), next)| Some((key.clone(), *revision, next.clone()?)))
            .collect();
        let writes = changed
            .iter()
            .map(|(key, revision, quota)| TxnWrite::Update {
                key: key.clone(),
                value: object::to_storage_bytes(quota),
                expected: *revision,
            })
            .chain(batch.iter().map(|pending| pending.write.clone()))
            .collect();
        match store.transact(writes).await {
            Ok(revisions) => {
                tracing::debug!(%prefix, writes = batch.len(), "stored a batch of charged writes");
                let (quota_revisions, object_revisions) = revisions.split_at(changed.len());
                for (mut pending, revision) in batch.drain(..).zip(object_revisions) {
                    pending.answer(Ok(Ok(*revision)));
                }
                return Ok(changed
                    .into_iter()
                    .zip(quota_revisions)
                    .map(|((key, _, quota), revision)| (key, (*revision, quota)))
                    .collect());
            }
            Err(StoreError::Conflict { key, .. } | StoreError::NotFound(key))
                if changed.iter().any(|(k, _, _)| *k == key) =>
            {
                races += 1;
                quotas = read_stored_quotas(store, prefix).await?;
            }
            Err(e) => {
                // The store names the write it refused: that one is answered, the rest retried.
                let refused = store_error_key(&e)
                    .and_then(|key| batch.iter().position(|p| write_key(&p.write) == key));
                let Some(position) = refused else {
                    // Not about one write (the store failed): every write gets the error.
                    for mut pending in batch.drain(..) {
                        pending.answer(Ok(Err(e.clone())));
                    }
                    return Ok(Vec::new());
                };
                batch.remove(position).answer(Ok(Err(e)));
                if batch.is_empty() {
                    return Ok(Vec::new());
                }
            }
        }
    }
    Err(ApiError::conflict(
        "",
        "resourcequotas",
        "",
        "too many concurrent quota updates; try again",
    ))
}
/// The key a store error is about, for errors about one write of a transaction.
fn store_error_key(e: &StoreError) -> Option<&str> {
    match e {
        StoreError::AlreadyExists(key)
        | StoreError::NotFound(key)
        | StoreError::Conflict { key, .. } => Some(key),
        _ => None,
    }
}

/// The cache's quotas, each replaced by this server's own later write of it, if any.
fn newest(
    cached: Vec<(String, Revision, Arc<Value>)>,
    written: &HashMap<String, (Revision, Arc<Value>)>,
) -> Vec<(String, Revision, Arc<Value>)> {
    cached
        .into_iter()
        .map(|(key, cached_revision, cached)| match written.get(&key) {
            Some((revision, value)) if *revision > cached_revision => {
                (key, *revision, value.clone())
            }
            _ => (key, cached_revision, cached),
        })
        .collect()
}

/// What the write adds: its usage, less the old object's on updates (only growth is charged;
/// what an update frees is returned by the recount).
fn delta(request: &ChargeRequest<'_>) -> ResourceList {
    let (group, resource) = (
        request.scope.def.group.as_str(),
        request.scope.def.plural.as_str(),
    );
    let mut delta = usage::usage(group, resource, request.new);
    if let Some(old) = request.old {
        let before = usage::usage(group, resource, old);
        delta.retain(|k, v| {
            let was = before.get(k).map_or(0, |b| b.nanos);
            v.nanos -= was;
            v.nanos > 0
        });
    }
    delta
}

fn hard_keys(quota: &Value) -> Vec<String> {
    quota
        .pointer("/spec/hard")
        .and_then(Value::as_object)
        .map(|h| h.keys().cloned().collect())
        .unwrap_or_default()
}

async fn read_stored_quotas(
    store: &DynStore,
    prefix: &str,
) -> ApiResult<Vec<(String, Revision, Arc<Value>)>> {
    let result = store
        .range(visor_store::RangeRequest {
            prefix,
            start_after: None,
            limit: 0,
            revision: None,
        })
        .await
        .map_err(|e| ApiError::from_store(e, "", "resourcequotas", ""))?;
    Ok(result
        .kvs
        .iter()
        .filter_map(|kv| {
            Some((
                kv.key.clone(),
                kv.mod_revision,
                Arc::new(object::from_kv(kv)?),
            ))
        })
        .collect())
}

/// Checks one quota against a write at admission: whether the quota constrains anything the
/// write charges, or the refusal.
fn evaluate(
    group: &str,
    resource: &str,
    new: &Value,
    old: Option<&Value>,
    delta: &ResourceList,
    quota: &Value,
) -> ApiResult<bool> {
    let keys = constrained_keys(group, resource, quota);
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    if (group, resource) == ("", "pods")
        && old.is_none()
        && let Some(missing) = usage::pod_missing(new, &keys)
    {
        return Err(refusal(
            group,
            resource,
            object::name(new),
            format!(
                "failed quota: {}: must specify {missing}",
                object::name(quota)
            ),
        ));
    }
    Ok(room(group, resource, object::name(new), delta, quota)?.is_some())
}

/// `quota` with an admitted charge added to `status.used` (`None` if it constrains nothing
/// charged), or the refusal if it no longer has room: [`evaluate`]'s check of the amounts,
/// as a batch repeats it.
fn add_charge(charge: &Charge, quota: &Value) -> ApiResult<Option<Value>> {
    let Some(totals) = room(
        &charge.group,
        &charge.resource,
        &charge.name,
        &charge.delta,
        quota,
    )?
    else {
        return Ok(None);
    };
    let mut next = quota.clone();
    let used: serde_json::Map<String, Value> = quota
        .pointer("/status/used")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .chain(
            totals
                .into_iter()
                .map(|(key, total)| (key, json!(total.canonical()))),
        )
        .collect();
    next["status"]["used"] = Value::Object(used);
    Ok(Some(next))
}

/// The keys of `quota`'s `spec.hard` that this kind's writes count against.
fn constrained_keys(group: &str, resource: &str, quota: &Value) -> Vec<String> {
    hard_keys(quota)
        .into_iter()
        .filter(|k| usage::resource_covers(group, resource, k))
        .collect()
}

fn refusal(group: &str, resource: &str, name: &str, message: String) -> ApiError {
    ApiError::forbidden(format!(
        "{} \"{name}\" is forbidden: {message}",
        qualified(group, resource),
    ))
}

/// The new totals of the keys of `quota` that `delta` charges (`None` if it charges none), or
/// the refusal when the quota has not counted a charged key yet or has no room left.
fn room(
    group: &str,
    resource: &str,
    object_name: &str,
    delta: &ResourceList,
    quota: &Value,
) -> ApiResult<Option<Vec<(String, Quantity)>>> {
    let name = object::name(quota);
    let hard = usage::parse_list(quota.pointer("/spec/hard"));
    let charged: Vec<&str> = hard
        .keys()
        .map(String::as_str)
        .filter(|k| usage::resource_covers(group, resource, k))
        .filter(|k| delta.get(*k).is_some_and(|q| q.nanos > 0))
        .collect();
    if charged.is_empty() {
        return Ok(None);
    }
    let forbidden = |message: String| refusal(group, resource, object_name, message);
    let used = usage::parse_list(quota.pointer("/status/used"));
    let unknown: Vec<&str> = charged
        .iter()
        .copied()
        .filter(|k| !used.contains_key(*k))
        .collect();
    if !unknown.is_empty() {
        return Err(forbidden(format!(
            "status unknown for quota: {name}, resources: {}",
            unknown.join(",")
        )));
    }
    let mut totals = Vec::with_capacity(charged.len());
    let mut exceeded = Vec::new();
    for key in &charged {
        let total = usage::add(used[*key], delta[*key]);
        if total > hard[*key] {
            exceeded.push(key.to_string());
        }
        totals.push((key.to_string(), total));
    }
    if !exceeded.is_empty() {
        let mask = |list: &ResourceList| -> ResourceList {
            list.iter()
                .filter(|(k, _)| exceeded.contains(k))
                .map(|(k, v)| (k.clone(), *v))
                .collect()
        };
        return Err(forbidden(format!(
            "exceeded quota: {name}, requested: {}, used: {}, limited: {}",
            usage::pretty(&mask(delta)),
            usage::pretty(&mask(&used)),
            usage::pretty(&mask(&hard)),
        )));
    }
    Ok(Some(totals))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn quota(hard: Value, used: Value) -> Value {
        json!({"metadata": {"name": "compute"}, "spec": {"hard": hard}, "status": {"hard": hard, "used": used}})
    }

    fn pod(cpu: &str) -> Value {
        json!({"metadata": {"name": "web"}, "spec": {"containers": [
            {"name": "app", "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}, "limits": {"cpu": cpu, "memory": "64Mi"}}}
        ]}})
    }

    /// Admission's check, then the batch's.
    fn check(quota: &Value, pod: &Value) -> ApiResult<Option<Value>> {
        let delta = usage::usage("", "pods", pod);
        if !evaluate("", "pods", pod, None, &delta, quota)? {
            return Ok(None);
        }
        let prefix = quota_prefix("default");
        let charge = Charge {
            queue: queue(&prefix),
            prefix,
            group: String::new(),
            resource: "pods".into(),
            name: object::name(pod).into(),
            delta,
        };
        add_charge(&charge, quota)
    }

    #[test]
    fn a_charge_that_fits_adds_to_used() {
        let q = quota(
            json!({"cpu": "2", "pods": "10"}),
            json!({"cpu": "1500m", "pods": "3"}),
        );
        let next = check(&q, &pod("500m")).unwrap().unwrap();
        assert_eq!(next["status"]["used"], json!({"cpu": "2", "pods": "4"}));
    }

    #[test]
    fn an_exceeding_charge_gets_upstreams_message() {
        let q = quota(
            json!({"cpu": "2", "pods": "10"}),
            json!({"cpu": "1500m", "pods": "3"}),
        );
        let err = check(&q, &pod("600m")).unwrap_err();
        assert_eq!(err.code, 403);
        assert_eq!(
            err.message,
            r#"pods "web" is forbidden: exceeded quota: compute, requested: cpu=600m, used: cpu=1500m, limited: cpu=2"#
        );
    }

    #[test]
    fn a_pod_must_name_what_the_quota_constrains() {
        let q = quota(json!({"limits.cpu": "2"}), json!({"limits.cpu": "0"}));
        let bare = json!({"metadata": {"name": "web"}, "spec": {"containers": [{"name": "app"}]}});
        let err = check(&q, &bare).unwrap_err();
        assert_eq!(
            err.message,
            r#"pods "web" is forbidden: failed quota: compute: must specify limits.cpu for: app"#
        );
    }

    #[test]
    fn an_uncounted_quota_refuses_until_the_controller_counts_it() {
        let q = json!({"metadata": {"name": "compute"}, "spec": {"hard": {"pods": "10"}}});
        let err = check(&q, &pod("1")).unwrap_err();
        assert_eq!(
            err.message,
            r#"pods "web" is forbidden: status unknown for quota: compute, resources: pods"#
        );
    }

    #[test]
    fn quotas_on_other_resources_are_not_touched() {
        let q = quota(json!({"configmaps": "1"}), json!({"configmaps": "1"}));
        assert!(check(&q, &pod("1")).unwrap().is_none());
    }
}
