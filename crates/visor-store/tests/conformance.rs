//! The one store contract, checked against both backends: SQLite in a temporary directory and a
//! real etcd started for each test. Checks rely only on the order of and relations between
//! revisions, never on their absolute values (etcd starts at 1, SQLite at 0).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use visor_store::{
    DynStore, Event, KeyValue, RangeRequest, StoreError, TxnWrite, WatchStream, Watched,
};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn next_event(stream: &mut WatchStream) -> Event {
    match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(other) => panic!("watch ended or failed: {other:?}"),
        Err(_) => panic!("no watch event within 10 s"),
    }
}

/// Asserts that nothing more arrives on the stream for a short while.
async fn assert_quiet(stream: &mut WatchStream) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(300), stream.next()).await {
        panic!("unexpected watch item: {item:?}");
    }
}

fn put_of(event: &Event) -> &KeyValue {
    match event {
        Event::Put { kv } => kv,
        other => panic!("expected a put, got {other:?}"),
    }
}

async fn create_and_already_exists(store: DynStore) {
    let before = store.current_revision().await.unwrap();
    let rev = store.create("/t/a", b("one")).await.unwrap();
    assert!(rev > before, "create moves the revision forward");
    match store.create("/t/a", b("two")).await {
        Err(StoreError::AlreadyExists(key)) => assert_eq!(key, "/t/a"),
        other => panic!("second create must fail with AlreadyExists, got {other:?}"),
    }
    assert_eq!(
        store.current_revision().await.unwrap(),
        rev,
        "a failed create writes nothing"
    );
    let (kv, at) = store.get("/t/a", None).await.unwrap();
    let kv = kv.expect("created key is readable");
    assert_eq!(kv.value, b("one"));
    assert_eq!((kv.create_revision, kv.mod_revision), (rev, rev));
    assert_eq!(at, rev);
    // A key can be created again once deleted, as a new incarnation.
    let (deleted_at, _) = store.delete("/t/a", None).await.unwrap();
    let again = store.create("/t/a", b("three")).await.unwrap();
    assert!(again > deleted_at);
    let (kv, _) = store.get("/t/a", None).await.unwrap();
    assert_eq!(kv.unwrap().create_revision, again);
}

async fn update_compare_and_swap(store: DynStore) {
    let created = store.create("/t/u", b("v1")).await.unwrap();
    let updated = store.update("/t/u", b("v2"), created).await.unwrap();
    assert!(updated > created);
    let (kv, _) = store.get("/t/u", None).await.unwrap();
    let kv = kv.unwrap();
    assert_eq!(kv.value, b("v2"));
    assert_eq!(
        kv.create_revision, created,
        "update keeps the create revision"
    );
    assert_eq!(kv.mod_revision, updated);

    match store.update("/t/u", b("stale"), created).await {
        Err(StoreError::Conflict {
            key,
            expected,
            current,
        }) => {
            assert_eq!(key, "/t/u");
            assert_eq!(expected, created);
            let current = current.expect("conflict carries the current value");
            assert_eq!(current.value, b("v2"));
            assert_eq!(current.mod_revision, updated);
        }
        other => panic!("stale update must conflict, got {other:?}"),
    }
    match store.update("/t/missing", b("x"), updated).await {
        Err(StoreError::NotFound(key)) => assert_eq!(key, "/t/missing"),
        other => panic!("update of a missing key must be NotFound, got {other:?}"),
    }
    match store.update("/t/missing", b("x"), 0).await {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("update with revision 0 must not create the key, got {other:?}"),
    }
    assert_eq!(
        store.get("/t/u", None).await.unwrap().0.unwrap().value,
        b("v2")
    );
}

async fn delete_with_and_without_expected(store: DynStore) {
    let a = store.create("/t/d/a", b("a")).await.unwrap();
    let (rev, prev) = store.delete("/t/d/a", None).await.unwrap();
    assert!(rev > a);
    assert_eq!(prev.value, b("a"));
    assert_eq!(prev.mod_revision, a);
    assert!(store.get("/t/d/a", None).await.unwrap().0.is_none());
    match store.delete("/t/d/a", None).await {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("deleting a missing key must be NotFound, got {other:?}"),
    }

    let b1 = store.create("/t/d/b", b("b1")).await.unwrap();
    let b2 = store.update("/t/d/b", b("b2"), b1).await.unwrap();
    match store.delete("/t/d/b", Some(b1)).await {
        Err(StoreError::Conflict {
            current, expected, ..
        }) => {
            assert_eq!(expected, b1);
            assert_eq!(current.unwrap().mod_revision, b2);
        }
        other => panic!("delete with a stale revision must conflict, got {other:?}"),
    }
    assert!(
        store.get("/t/d/b", None).await.unwrap().0.is_some(),
        "a failed delete deletes nothing"
    );
    let (rev, prev) = store.delete("/t/d/b", Some(b2)).await.unwrap();
    assert!(rev > b2);
    assert_eq!(prev.value, b("b2"));
    assert_eq!(prev.create_revision, b1);
    match store.delete("/t/d/b", Some(b2)).await {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("conditional delete of a missing key must be NotFound, got {other:?}"),
    }
}

async fn get_at_past_revision(store: DynStore) {
    let r1 = store.create("/t/g", b("first")).await.unwrap();
    let r2 = store.update("/t/g", b("second"), r1).await.unwrap();
    let (r3, _) = store.delete("/t/g", None).await.unwrap();
    let r4 = store.create("/t/later", b("x")).await.unwrap();

    let (kv, at) = store.get("/t/g", Some(r1)).await.unwrap();
    assert_eq!(at, r1);
    assert_eq!(kv.unwrap().value, b("first"));
    let (kv, _) = store.get("/t/g", Some(r2)).await.unwrap();
    let kv = kv.unwrap();
    assert_eq!(
        (kv.value.clone(), kv.create_revision, kv.mod_revision),
        (b("second"), r1, r2)
    );
    assert!(
        store.get("/t/g", Some(r3)).await.unwrap().0.is_none(),
        "deleted at r3"
    );
    assert!(store.get("/t/g", None).await.unwrap().0.is_none());
    assert!(
        store.get("/t/later", Some(r3)).await.unwrap().0.is_none(),
        "not yet created at r3"
    );
    assert!(store.get("/t/later", Some(r4)).await.unwrap().0.is_some());
    match store.get("/t/g", Some(r4 + 10)).await {
        Err(StoreError::FutureRevision { requested, current }) => {
            assert_eq!(requested, r4 + 10);
            assert_eq!(current, r4);
        }
        other => panic!("a read in the future must fail, got {other:?}"),
    }
}

async fn range_prefix_limit_pagination(store: DynStore) {
    let mut revs = BTreeMap::new();
    for name in ["c", "a", "e", "b", "d"] {
        let key = format!("/t/r/{name}");
        revs.insert(key.clone(), store.create(&key, b(name)).await.unwrap());
    }
    store.create("/t/rx", b("outside")).await.unwrap();
    store.create("/t/q", b("outside")).await.unwrap();

    let all = store
        .range(RangeRequest {
            prefix: "/t/r/",
            ..Default::default()
        })
        .await
        .unwrap();
    let keys: Vec<_> = all.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/t/r/a", "/t/r/b", "/t/r/c", "/t/r/d", "/t/r/e"]);
    assert!(!all.more);
    assert_eq!(all.revision, store.current_revision().await.unwrap());
    for kv in &all.kvs {
        assert_eq!(kv.mod_revision, revs[&kv.key]);
    }

    let page = store
        .range(RangeRequest {
            prefix: "/t/r/",
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.kvs.len(), 2);
    assert!(page.more);
    let mut seen: Vec<String> = page.kvs.iter().map(|kv| kv.key.clone()).collect();
    let mut after = seen.last().cloned();
    loop {
        let page = store
            .range(RangeRequest {
                prefix: "/t/r/",
                limit: 2,
                start_after: after.as_deref(),
                revision: Some(all.revision),
            })
            .await
            .unwrap();
        assert_eq!(page.revision, all.revision);
        seen.extend(page.kvs.iter().map(|kv| kv.key.clone()));
        after = seen.last().cloned();
        if !page.more {
            break;
        }
    }
    assert_eq!(seen, keys, "pagination returns every key once, in order");
    let exact = store
        .range(RangeRequest {
            prefix: "/t/r/",
            limit: 5,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(exact.kvs.len(), 5);
    assert!(
        !exact.more,
        "a limit equal to the count leaves nothing more"
    );

    // A range at a past revision sees the keys as they were.
    let old = all.revision;
    let c = revs["/t/r/c"];
    store.update("/t/r/c", b("c2"), c).await.unwrap();
    store.delete("/t/r/a", None).await.unwrap();
    store.create("/t/r/f", b("f")).await.unwrap();
    let past = store
        .range(RangeRequest {
            prefix: "/t/r/",
            revision: Some(old),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(past.revision, old);
    let past_keys: Vec<_> = past
        .kvs
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.clone()))
        .collect();
    assert_eq!(
        past_keys,
        [
            ("/t/r/a", b("a")),
            ("/t/r/b", b("b")),
            ("/t/r/c", b("c")),
            ("/t/r/d", b("d")),
            ("/t/r/e", b("e"))
        ]
    );
    let past_page = store
        .range(RangeRequest {
            prefix: "/t/r/",
            revision: Some(old),
            limit: 2,
            start_after: Some("/t/r/b"),
        })
        .await
        .unwrap();
    let past_page: Vec<_> = past_page.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(past_page, ["/t/r/c", "/t/r/d"]);
    let now = store
        .range(RangeRequest {
            prefix: "/t/r/",
            ..Default::default()
        })
        .await
        .unwrap();
    let now_keys: Vec<_> = now
        .kvs
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.clone()))
        .collect();
    assert_eq!(
        now_keys,
        [
            ("/t/r/b", b("b")),
            ("/t/r/c", b("c2")),
            ("/t/r/d", b("d")),
            ("/t/r/e", b("e")),
            ("/t/r/f", b("f"))
        ]
    );
    let everything = store
        .range(RangeRequest {
            prefix: "",
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(everything.kvs.len(), 7, "the empty prefix covers every key");
}

async fn revisions_are_monotonic(store: DynStore) {
    let mut last = store.current_revision().await.unwrap();
    let mut rev = 0;
    for i in 0..20 {
        let key = format!("/t/m/{}", i % 4);
        rev = if i < 4 {
            store.create(&key, b("x")).await.unwrap()
        } else {
            let (kv, _) = store.get(&key, None).await.unwrap();
            store
                .update(&key, b("y"), kv.unwrap().mod_revision)
                .await
                .unwrap()
        };
        assert!(rev > last, "revision {rev} after {last}");
        last = rev;
    }
    assert_eq!(store.current_revision().await.unwrap(), rev);
    let (_, read_at) = store.get("/t/m/0", None).await.unwrap();
    assert_eq!(read_at, rev, "a read is made at the current revision");
}

async fn watch_live_events(store: DynStore) {
    let from = store.current_revision().await.unwrap() + 1;
    let mut watch = store.watch("/t/w/", from).await.unwrap();
    let c = store.create("/t/w/a", b("1")).await.unwrap();
    store.create("/t/other", b("ignored")).await.unwrap();
    let u = store.update("/t/w/a", b("2"), c).await.unwrap();
    let (d, _) = store.delete("/t/w/a", Some(u)).await.unwrap();

    let e = next_event(&mut watch).await;
    let kv = put_of(&e);
    assert_eq!(
        (
            kv.key.as_str(),
            kv.value.clone(),
            kv.mod_revision,
            kv.create_revision
        ),
        ("/t/w/a", b("1"), c, c)
    );
    let e = next_event(&mut watch).await;
    let kv = put_of(&e);
    assert_eq!(
        (kv.value.clone(), kv.mod_revision, kv.create_revision),
        (b("2"), u, c),
        "an update keeps the key's create revision"
    );
    match next_event(&mut watch).await {
        Event::Delete { prev, revision } => {
            assert_eq!(revision, d);
            assert_eq!(
                (prev.key.as_str(), prev.value.clone(), prev.mod_revision),
                ("/t/w/a", b("2"), u)
            );
        }
        other => panic!("expected a delete, got {other:?}"),
    }
    assert_quiet(&mut watch).await;
}

async fn watch_replays_then_follows(store: DynStore) {
    let mut expected = Vec::new();
    let first = store.create("/t/h/a", b("a1")).await.unwrap();
    expected.push(("/t/h/a".to_string(), first));
    let r = store.update("/t/h/a", b("a2"), first).await.unwrap();
    expected.push(("/t/h/a".to_string(), r));
    store.create("/t/elsewhere", b("x")).await.unwrap();
    for i in 0..30 {
        let key = format!("/t/h/{i:02}");
        expected.push((key.clone(), store.create(&key, b("v")).await.unwrap()));
    }
    let (r, _) = store.delete("/t/h/a", None).await.unwrap();
    expected.push(("/t/h/a".to_string(), r));

    let mut watch = store.watch("/t/h/", first).await.unwrap();
    // Writes racing with the replay must appear once, after it.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..30 {
                let key = format!("/t/h/live{i:02}");
                revs.push((key.clone(), store.create(&key, b("live")).await.unwrap()));
            }
            revs
        })
    };
    let live = writer.await.unwrap();
    expected.extend(live);

    let mut got = Vec::new();
    let mut deletes = 0;
    while got.len() < expected.len() {
        let event = next_event(&mut watch).await;
        if let Event::Delete { prev, .. } = &event {
            deletes += 1;
            assert_eq!(
                prev.value,
                b("a2"),
                "replayed delete carries the last value"
            );
        }
        if let Event::Put { kv } = &event
            && kv.mod_revision == r
        {
            assert_eq!(
                (kv.value.clone(), kv.create_revision),
                (b("a2"), first),
                "a replayed update carries its value and the key's create revision"
            );
        }
        got.push((event.key().to_string(), event.revision()));
    }
    assert_eq!(
        got, expected,
        "replay then live, in order, with no gap and no duplicate"
    );
    assert_eq!(deletes, 1);
    assert_quiet(&mut watch).await;

    let current = store.current_revision().await.unwrap();
    match store.watch("/t/h/", current + 5).await {
        Err(StoreError::FutureRevision { .. }) => {}
        Err(e) => panic!("watch in the far future must fail with FutureRevision, got {e:?}"),
        Ok(_) => panic!("watch in the far future must fail"),
    }
}

async fn watch_reports_progress(store: DynStore) {
    let from = store.current_revision().await.unwrap() + 1;
    let mut watch = store.watch_progress("/t/p/", from).await.unwrap();
    let rev = store.create("/t/not-watched", b("x")).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        store.request_progress().await.unwrap();
        match tokio::time::timeout(Duration::from_millis(200), watch.next()).await {
            Ok(Some(Ok(Watched::Progress(r)))) if r >= rev => break,
            Ok(Some(Ok(Watched::Progress(_)))) | Err(_) => {}
            Ok(other) => panic!("expected only progress, got {other:?}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no progress past revision {rev}"
        );
    }
    let rev = store.create("/t/p/a", b("x")).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), watch.next()).await {
            Ok(Some(Ok(Watched::Event(e)))) => {
                assert_eq!((e.key(), e.revision()), ("/t/p/a", rev));
                break;
            }
            Ok(Some(Ok(Watched::Progress(r)))) => {
                assert!(r < rev, "progress {r} before the event at {rev}")
            }
            other => panic!("expected the event, got {other:?}"),
        }
    }
}

async fn compaction(store: DynStore) {
    let r1 = store.create("/t/c/a", b("a1")).await.unwrap();
    let r2 = store.update("/t/c/a", b("a2"), r1).await.unwrap();
    let rb = store.create("/t/c/b", b("b1")).await.unwrap();
    let (rd, _) = store.delete("/t/c/b", None).await.unwrap();
    let r3 = store.update("/t/c/a", b("a3"), r2).await.unwrap();
    let rk = store.create("/t/c/keep", b("k")).await.unwrap();
    let r4 = store.update("/t/c/a", b("a4"), r3).await.unwrap();

    store.compact(r3).await.unwrap();
    assert_eq!(store.compacted_revision().await.unwrap(), r3);
    for old in [r1, r2, rb, rd] {
        match store.get("/t/c/a", Some(old)).await {
            Err(StoreError::Compacted {
                requested,
                compacted,
            }) => assert_eq!((requested, compacted), (old, r3)),
            other => panic!("read at compacted {old} must fail, got {other:?}"),
        }
        match store
            .range(RangeRequest {
                prefix: "/t/c/",
                revision: Some(old),
                ..Default::default()
            })
            .await
        {
            Err(StoreError::Compacted { .. }) => {}
            other => panic!("range at compacted {old} must fail, got {other:?}"),
        }
        match store.watch("/t/c/", old).await {
            Err(StoreError::Compacted { compacted, .. }) => assert_eq!(compacted, r3),
            Err(e) => panic!("watch from compacted {old} must fail with Compacted, got {e:?}"),
            Ok(_) => panic!("watch from compacted {old} must fail"),
        }
    }
    // At and after the compact revision everything is still there.
    let at = store
        .range(RangeRequest {
            prefix: "/t/c/",
            revision: Some(r3),
            ..Default::default()
        })
        .await
        .unwrap();
    let at: Vec<_> = at
        .kvs
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.clone()))
        .collect();
    assert_eq!(at, [("/t/c/a", b("a3"))]);
    let (kv, _) = store.get("/t/c/keep", Some(rk)).await.unwrap();
    assert_eq!(kv.unwrap().value, b("k"));
    let now = store
        .range(RangeRequest {
            prefix: "/t/c/",
            ..Default::default()
        })
        .await
        .unwrap();
    let now: Vec<_> = now
        .kvs
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.clone()))
        .collect();
    assert_eq!(now, [("/t/c/a", b("a4")), ("/t/c/keep", b("k"))]);

    let mut watch = store.watch("/t/c/", r3).await.unwrap();
    let e = next_event(&mut watch).await;
    assert_eq!((e.key(), e.revision()), ("/t/c/a", r3));
    let e = next_event(&mut watch).await;
    assert_eq!((e.key(), e.revision()), ("/t/c/keep", rk));
    let e = next_event(&mut watch).await;
    let kv = put_of(&e);
    assert_eq!((kv.value.clone(), kv.mod_revision), (b("a4"), r4));

    // Compacting again to the same revision changes nothing; the future is refused.
    store.compact(r3).await.unwrap();
    match store.compact(r4 + 100).await {
        Err(StoreError::FutureRevision { .. }) => {}
        other => panic!("compacting the future must fail, got {other:?}"),
    }
    // Compacting to the current revision keeps the latest values.
    store.compact(r4).await.unwrap();
    let now = store
        .range(RangeRequest {
            prefix: "/t/c/",
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(now.kvs.len(), 2);
    assert_eq!(
        store
            .get("/t/c/a", Some(r4))
            .await
            .unwrap()
            .0
            .unwrap()
            .value,
        b("a4")
    );
    let r5 = store.update("/t/c/a", b("a5"), r4).await.unwrap();
    assert!(r5 > r4);
}

async fn concurrent_creates_one_winner(store: DynStore) {
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .create("/t/race", Bytes::from(format!("writer{i}")))
                    .await
            })
        })
        .collect();
    let mut winners = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.unwrap() {
            Ok(rev) => winners.push((i, rev)),
            Err(StoreError::AlreadyExists(_)) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one create wins: {winners:?}");
    let (kv, _) = store.get("/t/race", None).await.unwrap();
    assert_eq!(
        kv.unwrap().value,
        Bytes::from(format!("writer{}", winners[0].0))
    );
}

async fn concurrent_writers_lose_nothing(store: DynStore) {
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..60 {
                    let key = format!("/t/many/{w}/{i:03}");
                    let rev = store
                        .create(&key, Bytes::from(format!("{w}-{i}")))
                        .await
                        .unwrap();
                    acked.push((key, rev));
                }
                // Contended compare-and-swap on one shared counter.
                let mut increments = 0;
                while increments < 10 {
                    let (kv, _) = store.get("/t/many-counter", None).await.unwrap();
                    let result = match kv {
                        None => store.create("/t/many-counter", b("1")).await.map(|_| ()),
                        Some(kv) => {
                            let n: u64 = std::str::from_utf8(&kv.value).unwrap().parse().unwrap();
                            store
                                .update(
                                    "/t/many-counter",
                                    Bytes::from((n + 1).to_string()),
                                    kv.mod_revision,
                                )
                                .await
                                .map(|_| ())
                        }
                    };
                    match result {
                        Ok(()) => increments += 1,
                        Err(StoreError::Conflict { .. } | StoreError::AlreadyExists(_)) => {}
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                }
                acked
            })
        })
        .collect();
    let mut revisions = HashSet::new();
    let mut acked = Vec::new();
    for writer in writers {
        for (key, rev) in writer.await.unwrap() {
            assert!(revisions.insert(rev), "revision {rev} handed out twice");
            acked.push((key, rev));
        }
    }
    let all = store
        .range(RangeRequest {
            prefix: "/t/many/",
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.kvs.len(), acked.len());
    let stored: BTreeMap<_, _> = all
        .kvs
        .iter()
        .map(|kv| (kv.key.clone(), kv.mod_revision))
        .collect();
    for (key, rev) in &acked {
        assert_eq!(
            stored.get(key),
            Some(rev),
            "acknowledged write {key} at {rev}"
        );
    }
    let (counter, _) = store.get("/t/many-counter", None).await.unwrap();
    assert_eq!(
        counter.unwrap().value,
        b("80"),
        "every acknowledged increment counted once"
    );
}

fn create_write(key: &str, value: &str) -> TxnWrite {
    TxnWrite::Create {
        key: key.into(),
        value: b(value),
    }
}

fn update_write(key: &str, value: &str, expected: i64) -> TxnWrite {
    TxnWrite::Update {
        key: key.into(),
        value: b(value),
        expected,
    }
}

async fn transactions_write_all_or_nothing(store: DynStore) {
    let counter = store.create("/x/counter", b("0")).await.unwrap();
    let mut watch = store.watch("/x/", counter + 1).await.unwrap();

    // Both writes land, in order, each visible to readers and watchers.
    let revisions = store
        .transact(vec![
            update_write("/x/counter", "1", counter),
            create_write("/x/a", "a"),
        ])
        .await
        .unwrap();
    assert_eq!(revisions.len(), 2);
    assert!(revisions[0] > counter && revisions[1] >= revisions[0]);
    let (kv, _) = store.get("/x/counter", None).await.unwrap();
    let counter_kv = kv.unwrap();
    assert_eq!(
        (counter_kv.value.clone(), counter_kv.mod_revision),
        (b("1"), revisions[0])
    );
    let (kv, _) = store.get("/x/a", None).await.unwrap();
    assert_eq!(kv.unwrap().create_revision, revisions[1]);
    let mut seen = [next_event(&mut watch).await, next_event(&mut watch).await];
    seen.sort_by(|x, y| x.key().cmp(y.key()));
    assert_eq!(
        seen.iter().map(Event::key).collect::<Vec<_>>(),
        ["/x/a", "/x/counter"]
    );
    let kv = put_of(&seen[1]);
    assert_eq!(kv.value, b("1"));

    // A stale update refuses the whole transaction: the create beside it is not written.
    let before = store.current_revision().await.unwrap();
    match store
        .transact(vec![
            create_write("/x/b", "b"),
            update_write("/x/counter", "2", counter),
        ])
        .await
    {
        Err(StoreError::Conflict {
            key,
            expected,
            current,
        }) => {
            assert_eq!((key.as_str(), expected), ("/x/counter", counter));
            assert_eq!(current.unwrap().mod_revision, revisions[0]);
        }
        other => panic!("a stale update must fail the transaction, got {other:?}"),
    }
    assert_eq!(store.get("/x/b", None).await.unwrap().0, None);
    assert_eq!(store.current_revision().await.unwrap(), before);

    // The first failing precondition is the one reported.
    match store
        .transact(vec![
            update_write("/x/missing", "m", 1),
            create_write("/x/a", "again"),
        ])
        .await
    {
        Err(StoreError::NotFound(key)) => assert_eq!(key, "/x/missing"),
        other => panic!("an update of a missing key must fail, got {other:?}"),
    }
    match store
        .transact(vec![
            update_write("/x/counter", "2", revisions[0]),
            create_write("/x/a", "again"),
        ])
        .await
    {
        Err(StoreError::AlreadyExists(key)) => assert_eq!(key, "/x/a"),
        other => panic!("creating an existing key must fail, got {other:?}"),
    }
    let (kv, _) = store.get("/x/counter", None).await.unwrap();
    assert_eq!(
        kv.unwrap().value,
        b("1"),
        "nothing of a failed transaction is written"
    );

    // One key twice is refused before anything is tried.
    assert!(matches!(
        store
            .transact(vec![create_write("/x/c", "1"), create_write("/x/c", "2"),])
            .await,
        Err(StoreError::Backend(_))
    ));
    assert_quiet(&mut watch).await;
}

/// Declares one test per check and backend.
macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $check() { crate::common::with_sqlite(super::$check); })*
        }
        mod etcd {
            $(#[test] fn $check() { crate::common::with_etcd(super::$check); })*
        }
    };
}

conformance!(
    create_and_already_exists,
    update_compare_and_swap,
    delete_with_and_without_expected,
    get_at_past_revision,
    range_prefix_limit_pagination,
    revisions_are_monotonic,
    watch_live_events,
    watch_replays_then_follows,
    watch_reports_progress,
    compaction,
    concurrent_creates_one_winner,
    concurrent_writers_lose_nothing,
    transactions_write_all_or_nothing,
);
