//! Writes that start from a stale watch cache: the registry serves a store whose objects
//! moved on while its cache still holds their older versions, and every write must still
//! decide on the store's word.

use std::sync::Arc;

use serde_json::{Value, json};
use visor_store::sqlite::SqliteStore;
use visor_store::{DynStore, Revision};

use super::{DeleteOptions, Registry, Scope};
use crate::kinds::Catalog;
use crate::object::{self, CachedObject};
use crate::request::Query;
use visor_store::cache::WatchCache;

struct Stale {
    registry: Registry,
    _dirs: [tempfile::TempDir; 2],
}

fn open_store(dir: &tempfile::TempDir) -> DynStore {
    Arc::new(SqliteStore::open(&dir.path().join("state.db")).unwrap())
}

/// A registry over a store holding `now` at each key, whose cache holds `before` at the
/// revision the store had for it one write earlier.
async fn stale_registry(objects: &[(&str, Value, Value)]) -> (Stale, Vec<Revision>) {
    let catalog = Arc::new(Catalog::builtin());
    let (live_dir, old_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (live, old) = (open_store(&live_dir), open_store(&old_dir));
    // The same creates on both stores give the same revisions.
    for (key, before, _) in objects {
        let bytes = object::to_storage_bytes(before);
        let a = live.create(key, bytes.clone()).await.unwrap();
        let b = old.create(key, bytes).await.unwrap();
        assert_eq!(a, b);
    }
    let mut revisions = Vec::new();
    for (key, _, now) in objects {
        let (kv, _) = live.get(key, None).await.unwrap();
        let revision = live
            .update(key, object::to_storage_bytes(now), kv.unwrap().mod_revision)
            .await
            .unwrap();
        revisions.push(revision);
    }
    let decode_catalog = catalog.clone();
    let cache: Arc<WatchCache<CachedObject>> = WatchCache::start(
        old,
        "/registry/",
        move |kv| object::decode_for_cache(&decode_catalog, kv),
        100,
    )
    .await
    .unwrap();
    let registry = Registry {
        catalog,
        store: live,
        cache,
    };
    (
        Stale {
            registry,
            _dirs: [live_dir, old_dir],
        },
        revisions,
    )
}

fn scope(registry: &Registry, plural: &str) -> Scope {
    Scope {
        def: registry.catalog.lookup("", "v1", plural).unwrap(),
        namespace: Some("default".into()),
    }
}

fn config_map(data: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "cm", "namespace": "default", "uid": "u-cm"},
        "data": {"k": data},
    })
}

const CM: &str = "/registry/core/configmaps/default/cm";

#[tokio::test]
async fn an_update_with_the_stores_resource_version_succeeds() {
    let (stale, revisions) = stale_registry(&[(CM, config_map("old"), config_map("new"))]).await;
    let r = &stale.registry;
    let mut body = config_map("newer");
    object::set_resource_version(&mut body, revisions[0]);
    let written = r
        .update(&scope(r, "configmaps"), "cm", None, body, &Query::default())
        .await
        .unwrap_or_else(|e| panic!("refused on the cache's word: {e:?}"));
    assert_eq!(written.object["data"]["k"], "newer");
    let (kv, _) = r.store.get(CM, None).await.unwrap();
    assert!(kv.unwrap().mod_revision > revisions[0]);
}

#[tokio::test]
async fn a_change_that_is_a_no_op_only_against_the_cache_is_written() {
    let (stale, revisions) = stale_registry(&[(CM, config_map("old"), config_map("new"))]).await;
    let r = &stale.registry;
    // Setting the value the cache still shows must change the stored object back.
    let written = r
        .update(
            &scope(r, "configmaps"),
            "cm",
            None,
            config_map("old"),
            &Query::default(),
        )
        .await
        .unwrap();
    assert_eq!(written.object["data"]["k"], "old");
    let (kv, _) = r.store.get(CM, None).await.unwrap();
    let kv = kv.unwrap();
    assert!(kv.mod_revision > revisions[0], "no write was made");
    let stored: Value = serde_json::from_slice(&kv.value).unwrap();
    assert_eq!(stored["data"]["k"], "old");
}

#[tokio::test]
async fn a_delete_with_the_stores_resource_version_succeeds() {
    let (stale, revisions) = stale_registry(&[(CM, config_map("old"), config_map("new"))]).await;
    let r = &stale.registry;
    let options = DeleteOptions {
        precondition_resource_version: Some(revisions[0].to_string()),
        ..DeleteOptions::default()
    };
    let gone = r
        .delete(&scope(r, "configmaps"), "cm", &options)
        .await
        .unwrap_or_else(|e| panic!("refused on the cache's word: {e:?}"));
    assert_eq!(
        gone["data"]["k"], "new",
        "the delete returns what was stored"
    );
    assert!(r.store.get(CM, None).await.unwrap().0.is_none());
}

#[tokio::test]
async fn a_pod_bound_since_the_cache_saw_it_is_not_bound_again() {
    let pod = |node: Option<&str>| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "default", "uid": "u-p"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}], "nodeName": node},
            "status": {"phase": "Pending"},
        })
    };
    let key = "/registry/core/pods/default/p";
    let (stale, revisions) = stale_registry(&[(key, pod(None), pod(Some("host-a")))]).await;
    let r = &stale.registry;
    let binding =
        json!({"kind": "Binding", "metadata": {"name": "p"}, "target": {"name": "host-b"}});
    let refusal = r
        .bind_pod(&scope(r, "pods"), "p", binding)
        .await
        .expect_err("bound twice");
    assert_eq!(refusal.code, 409, "{}", refusal.message);
    let (kv, _) = r.store.get(key, None).await.unwrap();
    let kv = kv.unwrap();
    assert_eq!(kv.mod_revision, revisions[0]);
    let stored: Value = serde_json::from_slice(&kv.value).unwrap();
    assert_eq!(stored["spec"]["nodeName"], "host-a");
}
