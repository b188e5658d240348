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
//! revision it was read at; a lost race re-reads the quota from the store and starts again.
//!
//! Guarantees: no quota's `status.used` ever passes its `spec.hard` through admission, and
//! two writes never both spend the same units, whichever API server (sharing one store)
//! admits them — the store's compare-and-swap orders them. Within one server, charges to a
//! namespace are also serialised by a lock, so concurrent creates queue instead of retrying.
//!
//! Caveats, as upstream: the charge is written before the object; if the object's write then
//! fails, the charge stays until the quota controller recounts. Deletes release nothing here:
//! the quota controller recounts after them. Limits come from `spec.hard` directly, so an
//! edited limit binds the next write even before the controller copies it to `status.hard`.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use serde_json::{Value, json};
use visor_store::{Revision, StoreError};

use super::usage::{self, ResourceList};
use crate::errors::{ApiError, ApiResult, qualified};
use crate::object;
use crate::registry::{Registry, Scope};

/// How often a charge re-reads its quotas after losing a race to another writer.
const CHARGE_RETRIES: usize = 64;

/// The quotas of a namespace as this server last wrote them (the watch cache may lag behind
/// its own writes), behind the lock that serialises this server's charges to them.
type Charged = HashMap<String, (Revision, Value)>;

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

/// The storage prefix of a namespace's ResourceQuotas.
fn quota_prefix(namespace: &str) -> String {
    format!("/registry/core/resourcequotas/{namespace}/")
}

/// Charges a create (`old` None) or update of `new` to the quotas of its namespace, or
/// refuses it. With `dry_run` the checks run but nothing is written.
pub(crate) async fn charge(
    registry: &Registry,
    scope: &Scope,
    old: Option<&Value>,
    new: &Value,
    dry_run: bool,
) -> ApiResult<()> {
    let Some(namespace) = scope.namespace.as_deref().filter(|_| scope.def.namespaced) else {
        return Ok(());
    };
    let prefix = quota_prefix(namespace);
    let (cached, _) = registry.cache.list(&prefix);
    if cached.is_empty() {
        return Ok(());
    }
    let (group, resource) = (scope.def.group.as_str(), scope.def.plural.as_str());
    if (group, resource) == ("", "resourcequotas") {
        // A quota's own writes (and the status writes below) are not charged to quotas.
        return Ok(());
    }
    let mut delta = usage::usage(group, resource, new);
    if let Some(old) = old {
        let before = usage::usage(group, resource, old);
        // Only growth is charged; what an update frees is returned by the recount.
        delta.retain(|k, v| {
            let was = before.get(k).map_or(0, |b| b.nanos);
            v.nanos -= was;
            v.nanos > 0
        });
        if delta.is_empty() {
            return Ok(());
        }
    }
    // Quotas that constrain nothing this write charges are not touched (nor locked).
    let relevant = cached.iter().any(|(_, q)| {
        let quota = q.value();
        hard_keys(&quota)
            .iter()
            .any(|k| usage::resource_covers(group, resource, k))
    });
    if !relevant {
        return Ok(());
    }
    let lock = namespace_lock(&prefix);
    let mut charged = lock.lock().await;
    let mut from_store = false;
    for _ in 0..CHARGE_RETRIES {
        let quotas = read_quotas(registry, &prefix, &charged, from_store).await?;
        let mut updates = Vec::new();
        for (key, revision, quota) in quotas {
            if let Some(next) = evaluate(group, resource, new, old, &delta, &quota)? {
                updates.push((key, revision, next));
            }
        }
        if dry_run {
            return Ok(());
        }
        let mut lost_race = false;
        for (key, revision, quota) in updates {
            match registry
                .store
                .update(&key, object::to_storage_bytes(&quota), revision)
                .await
            {
                Ok(written) => {
                    charged.insert(key, (written, quota));
                }
                Err(StoreError::Conflict { .. }) | Err(StoreError::NotFound(_)) => {
                    charged.remove(&key);
                    lost_race = true;
                    break;
                }
                Err(e) => return Err(ApiError::from_store(e, "", "resourcequotas", "")),
            }
        }
        if !lost_race {
            return Ok(());
        }
        from_store = true;
    }
    Err(ApiError::conflict(
        "",
        "resourcequotas",
        "",
        "too many concurrent quota updates; try again",
    ))
}

fn hard_keys(quota: &Value) -> Vec<String> {
    quota
        .pointer("/spec/hard")
        .and_then(Value::as_object)
        .map(|h| h.keys().cloned().collect())
        .unwrap_or_default()
}

/// The namespace's quotas with the revisions to compare against: from the store after a lost
/// race, else the newer of the cache's copy and this server's last write.
async fn read_quotas(
    registry: &Registry,
    prefix: &str,
    charged: &Charged,
    from_store: bool,
) -> ApiResult<Vec<(String, Revision, Value)>> {
    if from_store {
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
        return Ok(result
            .kvs
            .iter()
            .filter_map(|kv| Some((kv.key.clone(), kv.mod_revision, object::from_kv(kv)?)))
            .collect());
    }
    let (cached, _) = registry.cache.list(prefix);
    Ok(cached
        .iter()
        .map(|(key, obj)| match charged.get(&**key) {
            Some((revision, value)) if *revision > obj.revision => {
                (key.to_string(), *revision, value.clone())
            }
            _ => (key.to_string(), obj.revision, obj.value()),
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
