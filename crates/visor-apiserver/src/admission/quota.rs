//! ResourceQuota admission: a write that adds usage in a namespace with quotas is charged to
//! every quota it touches before the object is stored, or refused with upstream's 403.
//!
//! Flow, per write: (1) the quotas of the namespace come from the watch cache — none, and the
//! write goes on at once; (2) the object's usage, minus the old object's on updates, is the
//! charge; (3) for each quota that constrains a charged key: a pod that leaves a constrained
//! compute resource unnamed is refused (`failed quota: …: must specify …`), a key the quota
//! controller has not counted yet is refused (`status unknown for quota`), and a charge that
//! would pass `spec.hard` is refused (`exceeded quota: …, requested: …, used: …, limited: …`);
//! (4) otherwise each touched quota's `status.used` is written with compare-and-swap on the
//! revision it was read at, in one store transaction with the object itself; a lost race
//! re-reads the quotas from the store and starts again.
//!
//! Guarantees: no quota's `status.used` ever passes its `spec.hard` through admission, and
//! two writes never both spend the same units, whichever API server (sharing one store)
//! admits them — the store's compare-and-swap orders them. Within one server, charges to a
//! namespace are also serialised by a lock, so concurrent creates queue instead of retrying.
//!
//! Because charge and object are one transaction, a write that fails (a name taken, a stale
//! update) charges nothing, and a create costs one commit, not two. Deletes release nothing here:
//! the quota controller recounts after them. Limits come from `spec.hard` directly, so an
//! edited limit binds the next write even before the controller copies it to `status.hard`.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use serde_json::{Value, json};
use tokio::sync::OwnedMutexGuard;
use visor_store::{Revision, TxnWrite};

use super::usage::{self, ResourceList};
use crate::errors::{ApiError, ApiResult, qualified};
use crate::object;
use crate::registry::{Registry, Scope};

/// The quotas of a namespace as this server last wrote them (the watch cache may lag behind
/// its own writes), behind the lock that serialises this server's charges to them.
type Charged = HashMap<String, (Revision, Arc<Value>)>;

static NAMESPACE_LOCKS: LazyLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<Charged>>>>> =
    LazyLock::new(Default::default);

fn namespace_lock(prefix: &str) -> Arc<tokio::sync::Mutex<Charged>> {
    NAMESPACE_LOCKS
        .lock()
        .expect("quota lock map")
        .entry(prefix.to_string())
        .or_default()
        .clone()
}

/// Each namespace's quotas as last parsed from the watch cache, by key, with the revision
/// parsed: every charged write reads them, and they change far less often than that.
type Parsed = HashMap<String, (Revision, Arc<Value>)>;

static PARSED: LazyLock<Mutex<HashMap<String, Parsed>>> = LazyLock::new(Default::default);

/// The namespace's quotas from the watch cache, each parsed once per revision.
fn cached_quotas(registry: &Registry, prefix: &str) -> Vec<(String, Revision, Arc<Value>)> {
    let (cached, _) = registry.cache.list(prefix);
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
            // A charge this server stored is kept parsed until the cache catches up with it.
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

/// The storage prefix of a namespace's ResourceQuotas.
fn quota_prefix(namespace: &str) -> String {
    format!("/registry/core/resourcequotas/{namespace}/")
}

/// A write's charge to the quotas of its namespace, admitted but not yet stored: the quotas
/// with the charge added, each with the revision it was read at. The registry stores them in
/// one transaction with the object ([`Charge::writes`]), so a quota is charged exactly when the
/// object is written. Holding a charge holds this server's lock on the namespace's quotas.
pub(crate) struct Charge {
    charged: OwnedMutexGuard<Charged>,
    /// The storage prefix of the namespace's quotas.
    prefix: String,
    updates: Vec<(String, Revision, Value)>,
}

/// What a write needs to redo its charge against newer quotas.
pub(crate) struct ChargeRequest<'a> {
    pub scope: &'a Scope,
    pub old: Option<&'a Value>,
    pub new: &'a Value,
}

impl Charge {
    /// The compare-and-swap writes of the charged quotas, to store with the object.
    pub(crate) fn writes(&self) -> impl Iterator<Item = TxnWrite> + '_ {
        self.updates
            .iter()
            .map(|(key, revision, quota)| TxnWrite::Update {
                key: key.clone(),
                value: object::to_storage_bytes(quota),
                expected: *revision,
            })
    }

    /// Whether `key` is one of the quotas this charge writes.
    pub(crate) fn writes_key(&self, key: &str) -> bool {
        self.updates.iter().any(|(k, _, _)| k == key)
    }

    /// Records the charge as stored, at `revisions` (one per [`Charge::writes`], in order), so
    /// that this server's next charge builds on it even before the watch cache has it.
    pub(crate) fn stored(mut self, revisions: &[Revision]) {
        let mut parsed = PARSED.lock().expect("parsed quota map");
        for ((key, _, quota), revision) in self.updates.drain(..).zip(revisions) {
            let quota = Arc::new(quota);
            // The watch cache will hold this revision next: it need not be parsed again.
            parsed
                .entry(self.prefix.clone())
                .or_default()
                .insert(key.clone(), (*revision, quota.clone()));
            self.charged.insert(key, (*revision, quota));
        }
    }

    /// Evaluates the charge again after another writer changed a quota first: the quotas are
    /// read from the store this time. Counts as one of the write's attempts.
    pub(crate) async fn recharge(
        mut self,
        registry: &Registry,
        request: &ChargeRequest<'_>,
    ) -> ApiResult<Option<Charge>> {
        for (key, _, _) in &self.updates {
            self.charged.remove(key);
        }
        evaluate_all(registry, request, self.charged, Quotas::FromStore).await
    }
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
    let cached = cached_quotas(registry, &prefix);
    if cached.is_empty() {
        return Ok(None);
    }
    let (group, resource) = (scope.def.group.as_str(), scope.def.plural.as_str());
    if (group, resource) == ("", "resourcequotas") {
        // A quota's own writes (and the status writes below) are not charged to quotas.
        return Ok(None);
    }
    // Quotas that constrain nothing this write charges are not touched (nor locked).
    let relevant = cached.iter().any(|(_, _, quota)| {
        hard_keys(quota)
            .iter()
            .any(|k| usage::resource_covers(group, resource, k))
    });
    if !relevant || delta(request).is_empty() {
        return Ok(None);
    }
    let lock = namespace_lock(&prefix);
    let (charged, cached) = match lock.clone().try_lock_owned() {
        Ok(charged) => (charged, cached),
        // Another charge went first: the quotas it wrote may be in the cache by now.
        Err(_) => {
            let charged = lock.lock_owned().await;
            (charged, cached_quotas(registry, &prefix))
        }
    };
    let charge = evaluate_all(registry, request, charged, Quotas::Cached(cached)).await?;
    Ok(charge.filter(|_| !dry_run))
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

async fn evaluate_all(
    registry: &Registry,
    request: &ChargeRequest<'_>,
    charged: OwnedMutexGuard<Charged>,
    quotas: Quotas,
) -> ApiResult<Option<Charge>> {
    let scope = request.scope;
    let (group, resource) = (scope.def.group.as_str(), scope.def.plural.as_str());
    let namespace = scope.namespace.as_deref().unwrap_or_default();
    let delta = delta(request);
    let prefix = quota_prefix(namespace);
    let quotas = read_quotas(registry, &prefix, &charged, quotas).await?;
    let mut updates = Vec::new();
    for (key, revision, quota) in quotas {
        if let Some(next) = evaluate(group, resource, request.new, request.old, &delta, &quota)? {
            updates.push((key, revision, next));
        }
    }
    Ok((!updates.is_empty()).then_some(Charge {
        charged,
        prefix,
        updates,
    }))
}

fn hard_keys(quota: &Value) -> Vec<String> {
    quota
        .pointer("/spec/hard")
        .and_then(Value::as_object)
        .map(|h| h.keys().cloned().collect())
        .unwrap_or_default()
}

/// Where a charge reads the namespace's quotas.
enum Quotas {
    /// The watch cache's copies (as [`cached_quotas`] returned them).
    Cached(Vec<(String, Revision, Arc<Value>)>),
    /// The store, after a lost race.
    FromStore,
}

/// The namespace's quotas with the revisions to compare against: from the store after a lost
/// race, else the newer of the cache's copy and this server's last write.
async fn read_quotas(
    registry: &Registry,
    prefix: &str,
    charged: &Charged,
    quotas: Quotas,
) -> ApiResult<Vec<(String, Revision, Arc<Value>)>> {
    let cached = match quotas {
        Quotas::Cached(cached) => cached,
        Quotas::FromStore => return read_stored_quotas(registry, prefix).await,
    };
    Ok(cached
        .into_iter()
        .map(|(key, cached_revision, cached)| match charged.get(&key) {
            Some((revision, value)) if *revision > cached_revision => {
                (key, *revision, value.clone())
            }
            _ => (key, cached_revision, cached),
        })
        .collect())
}

async fn read_stored_quotas(
    registry: &Registry,
    prefix: &str,
) -> ApiResult<Vec<(String, Revision, Arc<Value>)>> {
    let result = registry
        .store
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

/// Checks one quota against a charge. `Ok(Some(quota))` is the quota with the charge added
/// to `status.used`; `Ok(None)` means the quota constrains nothing charged.
fn evaluate(
    group: &str,
    resource: &str,
    new: &Value,
    old: Option<&Value>,
    delta: &ResourceList,
    quota: &Value,
) -> ApiResult<Option<Value>> {
    let name = object::name(quota).to_string();
    let hard = usage::parse_list(quota.pointer("/spec/hard"));
    let keys: Vec<&str> = hard
        .keys()
        .map(String::as_str)
        .filter(|k| usage::resource_covers(group, resource, k))
        .collect();
    if keys.is_empty() {
        return Ok(None);
    }
    let forbidden = |message: String| {
        ApiError::forbidden(format!(
            "{} \"{}\" is forbidden: {message}",
            qualified(group, resource),
            object::name(new)
        ))
    };
    if (group, resource) == ("", "pods")
        && old.is_none()
        && let Some(missing) = usage::pod_missing(new, &keys)
    {
        return Err(forbidden(format!(
            "failed quota: {name}: must specify {missing}"
        )));
    }
    let charged: Vec<&str> = keys
        .iter()
        .copied()
        .filter(|k| delta.get(*k).is_some_and(|q| q.nanos > 0))
        .collect();
    if charged.is_empty() {
        return Ok(None);
    }
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
    let mut next_used = used.clone();
    let mut exceeded = Vec::new();
    for key in &charged {
        let total = usage::add(used[*key], delta[*key]);
        if total > hard[*key] {
            exceeded.push(key.to_string());
        }
        next_used.insert(key.to_string(), total);
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
    let mut next = quota.clone();
    let used_json: serde_json::Map<String, Value> = quota
        .pointer("/status/used")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .chain(
            charged
                .iter()
                .map(|k| (k.to_string(), json!(next_used[*k].canonical()))),
        )
        .collect();
    next["status"]["used"] = Value::Object(used_json);
    Ok(Some(next))
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

    fn check(quota: &Value, pod: &Value) -> ApiResult<Option<Value>> {
        let delta = usage::usage("", "pods", pod);
        evaluate("", "pods", pod, None, &delta, quota)
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
