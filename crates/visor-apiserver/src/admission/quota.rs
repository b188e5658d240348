//! ResourceQuota admission: a write that adds usage in a namespace with quotas is charged to
//! every quota it touches before the object is stored, or refused with upstream's 403.
//!
//! Flow, per write: (1) the quotas of the namespace come from the watch cache — none, and the
//! write goes on at once; (2) the object's usage, minus the old object's on updates, is the
//! charge; (3) for each quota that constrains a charged key: a pod that leaves a constrained
//! compute resource unnamed is refused (`failed quota: …: must specify …`), a key the quota
//! controller has not counted yet is refused (`status unknown for quota`), and a charge that
//! would pass `spec.hard` is refused (`exceeded quota: …, requested: …, used: …, limited: …`);
//! (4) otherwise the write is stored with its charge ([`write`]): a write that finds its
//! namespace's queue of charged writes idle is stored by its own request, and the writes that
//! arrive meanwhile wait in the queue for a batch task. A batch takes every write waiting,
//! checks their charges again one after another against the quotas as they will stand, and
//! stores each touched quota's new `status.used` — compare-and-swap on the revision it was
//! read at — together with every admitted object in one store transaction. A lost race
//! re-reads the quotas from the store and evaluates the batch again; a write the store refuses
//! (a name taken, a stale update) leaves the batch with its error and the rest is evaluated
//! again without it.
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

/// A quota as admission reads it: its stored form, and the limits and usage in it parsed
/// once per revision (every charged write checks them; they change once per batch).
struct Quota {
    key: String,
    revision: Revision,
    /// The quota as read; its `status.used` is out of date once this server charged it.
    value: Arc<Value>,
    /// `status.used` as this server last wrote it, when it did.
    written_used: Option<Value>,
    name: String,
    hard: ResourceList,
    used: ResourceList,
}

impl Quota {
    fn parse(key: String, revision: Revision, value: Value) -> Quota {
        Quota {
            name: object::name(&value).to_string(),
            hard: usage::parse_list(value.pointer("/spec/hard")),
            used: usage::parse_list(value.pointer("/status/used")),
            key,
            revision,
            value: Arc::new(value),
            written_used: None,
        }
    }

    /// The keys of `spec.hard` that writes of this kind count against.
    fn constrained_keys<'a>(
        &'a self,
        group: &'a str,
        resource: &'a str,
    ) -> impl Iterator<Item = &'a str> + 'a {
        self.hard
            .keys()
            .map(String::as_str)
            .filter(move |k| usage::resource_covers(group, resource, k))
    }

    /// This quota with `used` as its usage, to be stored (its revision is the one it
    /// replaces until the store assigns the new one). Entries that did not change keep
    /// their text as stored.
    fn with_used(&self, used: ResourceList) -> Quota {
        let mut stored = self
            .written_used
            .as_ref()
            .or_else(|| self.value.pointer("/status/used"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for (key, quantity) in &used {
            if self.used.get(key).map(|q| q.nanos) != Some(quantity.nanos) {
                stored.insert(key.clone(), json!(quantity.canonical()));
            }
        }
        Quota {
            key: self.key.clone(),
            revision: self.revision,
            value: self.value.clone(),
            written_used: Some(Value::Object(stored)),
            name: self.name.clone(),
            hard: self.hard.clone(),
            used,
        }
    }

    /// The quota as stored.
    fn storage_bytes(&self) -> bytes::Bytes {
        match &self.written_used {
            Some(used) => object::to_storage_bytes_with_status(&self.value, "used", used),
            None => object::to_storage_bytes(&self.value),
        }
    }
}

/// A namespace's queue of charged writes.
#[derive(Default)]
struct Queue {
    waiting: Vec<Pending>,
    /// Whether a batch is being stored; the writer of a batch takes the next one after it.
    busy: bool,
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
    let mut queues = QUEUES.lock().expect("quota queue map");
    if let Some(queue) = queues.get(prefix) {
        return queue.clone();
    }
    queues.entry(prefix.to_string()).or_default().clone()
}

/// A namespace's quotas as last parsed, by key: from the watch cache, or as this server last
/// wrote them while the cache (which may lag behind its own writes) has not caught up.
type Parsed = HashMap<String, Arc<Quota>>;

/// Each namespace's [`Parsed`] quotas, by storage prefix.
static PARSED: LazyLock<Mutex<HashMap<String, Parsed>>> = LazyLock::new(Default::default);

/// The namespace's quotas: the watch cache's, each parsed once per revision, or this
/// server's later write of it.
fn cached_quotas(cache: &QuotaCache, prefix: &str) -> Vec<Arc<Quota>> {
    let (cached, _) = cache.list(prefix);
    if cached.is_empty() {
        // Every write in a namespace without quotas comes here: it takes no lock. What was
        // parsed for quotas since deleted stays until the namespace has quotas again.
        return Vec::new();
    }
    let mut parsed = PARSED.lock().expect("parsed quota map");
    if !parsed.contains_key(prefix) {
        parsed.insert(prefix.to_string(), HashMap::new());
    }
    let known = parsed.get_mut(prefix).expect("inserted above");
    let quotas: Vec<Arc<Quota>> = cached
        .iter()
        .map(|(key, obj)| match known.get(&**key) {
            Some(quota) if quota.revision >= obj.revision => quota.clone(),
            _ => {
                let quota = Arc::new(Quota::parse(key.to_string(), obj.revision, obj.value()));
                known.insert(key.to_string(), quota.clone());
                quota
            }
        })
        .collect();
    // Every cached quota is known now: anything more was deleted.
    if known.len() > cached.len() {
        known.retain(|key, _| cached.iter().any(|(cached, _)| **cached == **key));
    }
    quotas
}

/// Remembers quotas this server wrote, for the writes after them.
fn remember(prefix: &str, written: &[Arc<Quota>]) {
    let mut parsed = PARSED.lock().expect("parsed quota map");
    let known = parsed.entry(prefix.to_string()).or_default();
    for quota in written {
        if known
            .get(&quota.key)
            .is_none_or(|known| known.revision < quota.revision)
        {
            known.insert(quota.key.clone(), quota.clone());
        }
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

impl Charge {
    fn view(&self) -> ChargeView<'_> {
        ChargeView {
            group: &self.group,
            resource: &self.resource,
            name: &self.name,
            delta: &self.delta,
        }
    }
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
    let (group, resource) = (scope.def.group.as_str(), scope.def.plural.as_str());
    if (group, resource) == ("", "resourcequotas") {
        // A quota's own writes (and the status writes below) are not charged to quotas.
        return Ok(None);
    }
    let prefix = quota_prefix(namespace);
    let quotas = cached_quotas(&registry.cache, &prefix);
    // Quotas that constrain nothing this write charges are not evaluated.
    if !quotas
        .iter()
        .any(|q| q.constrained_keys(group, resource).next().is_some())
    {
        return Ok(None);
    }
    let delta = delta(request);
    if delta.is_empty() {
        return Ok(None);
    }
    // Refuse now what the quotas refuse as they stand; the batch checks the amounts again.
    let mut charges = false;
    for quota in &quotas {
        charges |= evaluate(group, resource, request.new, request.old, &delta, quota)?;
    }
    Ok((charges && !dry_run).then(|| Charge {
        queue: queue(&prefix),
        prefix,
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
    let alone = {
        let mut state = queue.lock().expect("quota queue");
        if state.busy {
            state.waiting.push(pending);
            None
        } else {
            state.busy = true;
            Some(pending)
        }
    };
    if let Some(pending) = alone {
        // Nobody is storing this namespace's charged writes: this one is stored from its own
        // task, which saves handing it to a batch task and the answer back (two thread
        // wake-ups, a tenth of a lone create's time). Writes that arrive meanwhile wait for a
        // batch task, which `Storing` starts when this is done or abandoned.
        let storing = Storing {
            store: registry.store.clone(),
            cache: registry.cache.clone(),
            prefix: charge.prefix.clone(),
            queue,
        };
        store_and_answer(
            &storing.store,
            &storing.cache,
            &storing.prefix,
            vec![pending],
        )
        .await;
    }
    outcome
        .await
        .map_err(|_| ApiError::internal("the quota batch was abandoned"))?
}

/// A request storing its own charged write while the namespace's queue is marked busy. When
/// it is done, or abandoned halfway, the writes that queued meanwhile go on in a batch task
/// of their own; with none, the queue is idle again.
struct Storing {
    store: DynStore,
    cache: Arc<QuotaCache>,
    prefix: String,
    queue: Arc<Mutex<Queue>>,
}

impl Drop for Storing {
    fn drop(&mut self) {
        let mut state = self.queue.lock().expect("quota queue");
        let runtime = tokio::runtime::Handle::try_current();
        match runtime {
            Ok(runtime) if !state.waiting.is_empty() => {
                runtime.spawn(store_batches(
                    self.store.clone(),
                    self.cache.clone(),
                    self.prefix.clone(),
                    self.queue.clone(),
                ));
            }
            // Without a runtime (shutting down) the next write starts the batches.
            _ => state.busy = false,
        }
    }
}

/// Stores the namespace's waiting writes, batch after batch, until none is left.
async fn store_batches(
    store: DynStore,
    cache: Arc<QuotaCache>,
    prefix: String,
    queue: Arc<Mutex<Queue>>,
) {
    loop {
        let batch = {
            let mut queue = queue.lock().expect("quota queue");
            if queue.waiting.is_empty() {
                queue.busy = false;
                return;
            }
            take_batch(&mut queue.waiting)
        };
        store_and_answer(&store, &cache, &prefix, batch).await;
    }
}

/// Stores one batch, answers each of its writes and remembers the quotas it wrote.
async fn store_and_answer(
    store: &DynStore,
    cache: &QuotaCache,
    prefix: &str,
    mut batch: Vec<Pending>,
) {
    match store_batch(store, cache, prefix, &mut batch).await {
        Ok(written) => remember(prefix, &written),
        Err(e) => {
            for mut pending in batch {
                pending.answer(Err(e.clone()));
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
) -> ApiResult<Vec<Arc<Quota>>> {
    let mut quotas = cached_quotas(cache, prefix);
    let mut races = 0;
    while races < CHARGE_RETRIES {
        // Each write's charge on top of those before it; a refused one is answered now.
        let mut used: Vec<Option<ResourceList>> = vec![None; quotas.len()];
        batch.retain_mut(|pending| {
            let charge = &pending.charge;
            let mut added = Vec::new();
            for (i, quota) in quotas.iter().enumerate() {
                let current = used[i].as_ref().unwrap_or(&quota.used);
                match charge.view().room(quota, current) {
                    Ok(Some(totals)) => added.push((i, totals)),
                    Ok(None) => {}
                    Err(refused) => {
                        pending.answer(Err(refused));
                        return false;
                    }
                }
            }
            for (i, totals) in added {
                used[i]
                    .get_or_insert_with(|| quotas[i].used.clone())
                    .extend(totals);
            }
            true
        });
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut changed: Vec<Quota> = quotas
            .iter()
            .zip(used)
            .filter_map(|(quota, used)| Some(quota.with_used(used?)))
            .collect();
        let writes = changed
            .iter()
            .map(|quota| TxnWrite::Update {
                key: quota.key.clone(),
                value: quota.storage_bytes(),
                expected: quota.revision,
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
                for (quota, revision) in changed.iter_mut().zip(quota_revisions) {
                    quota.revision = *revision;
                }
                return Ok(changed.into_iter().map(Arc::new).collect());
            }
            Err(StoreError::Conflict { key, .. } | StoreError::NotFound(key))
                if changed.iter().any(|quota| quota.key == key) =>
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

async fn read_stored_quotas(store: &DynStore, prefix: &str) -> ApiResult<Vec<Arc<Quota>>> {
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
            let value = object::from_kv(kv)?;
            Some(Arc::new(Quota::parse(
                kv.key.clone(),
                kv.mod_revision,
                value,
            )))
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
    quota: &Quota,
) -> ApiResult<bool> {
    if (group, resource) == ("", "pods") && old.is_none() {
        let keys: Vec<&str> = quota.constrained_keys(group, resource).collect();
        if let Some(missing) = usage::pod_missing(new, &keys) {
            return Err(refusal(
                group,
                resource,
                object::name(new),
                format!("failed quota: {}: must specify {missing}", quota.name),
            ));
        }
    }
    let charge = ChargeView {
        group,
        resource,
        name: object::name(new),
        delta,
    };
    Ok(charge.room(quota, &quota.used)?.is_some())
}

/// A charge as [`ChargeView::room`] checks it: a queued [`Charge`]'s, or a write's at
/// admission.
struct ChargeView<'a> {
    group: &'a str,
    resource: &'a str,
    /// The object's name, for refusals.
    name: &'a str,
    delta: &'a ResourceList,
}

fn refusal(group: &str, resource: &str, name: &str, message: String) -> ApiError {
    ApiError::forbidden(format!(
        "{} \"{name}\" is forbidden: {message}",
        qualified(group, resource),
    ))
}

impl ChargeView<'_> {
    /// The new totals of the keys of `quota` this charge adds to (`None` if it adds to
    /// none), given the quota's usage `used`, or the refusal when the quota has not counted a
    /// charged key yet or has no room left.
    fn room(
        &self,
        quota: &Quota,
        used: &ResourceList,
    ) -> ApiResult<Option<Vec<(String, Quantity)>>> {
        let (group, resource, delta) = (self.group, self.resource, self.delta);
        let charged: Vec<&str> = quota
            .constrained_keys(group, resource)
            .filter(|k| delta.get(*k).is_some_and(|q| q.nanos > 0))
            .collect();
        if charged.is_empty() {
            return Ok(None);
        }
        let forbidden = |message: String| refusal(group, resource, self.name, message);
        let unknown: Vec<&str> = charged
            .iter()
            .copied()
            .filter(|k| !used.contains_key(*k))
            .collect();
        if !unknown.is_empty() {
            return Err(forbidden(format!(
                "status unknown for quota: {}, resources: {}",
                quota.name,
                unknown.join(",")
            )));
        }
        let mut totals = Vec::with_capacity(charged.len());
        let mut exceeded = Vec::new();
        for key in &charged {
            let total = usage::add(used[*key], delta[*key]);
            if total > quota.hard[*key] {
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
                "exceeded quota: {}, requested: {}, used: {}, limited: {}",
                quota.name,
                usage::pretty(&mask(delta)),
                usage::pretty(&mask(used)),
                usage::pretty(&mask(&quota.hard)),
            )));
        }
        Ok(Some(totals))
    }
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

    /// Admission's check, then the batch's: the quota as the batch would store it.
    fn check(quota: &Value, pod: &Value) -> ApiResult<Option<Value>> {
        let quota = Quota::parse("/q".into(), 1, quota.clone());
        let delta = usage::usage("", "pods", pod);
        if !evaluate("", "pods", pod, None, &delta, &quota)? {
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
        let Some(totals) = charge.view().room(&quota, &quota.used)? else {
            return Ok(None);
        };
        let mut used = quota.used.clone();
        used.extend(totals);
        Ok(Some(
            serde_json::from_slice(&quota.with_used(used).storage_bytes()).unwrap(),
        ))
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
