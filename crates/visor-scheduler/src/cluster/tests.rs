//! Unit tests of the placement core: each filter, each score, the messages, preemption.

use super::*;
use crate::model::*;

const GI: i64 = 1024 * 1024 * 1024;

fn host(name: &str, zone: &str, cpu: i64, mem_gi: i64) -> HostInfo {
    let mut labels = Labels::new();
    labels.insert(ZONE_LABEL.into(), zone.into());
    labels.insert(HOSTNAME_LABEL.into(), name.into());
    HostInfo {
        name: name.into(),
        labels,
        taints: Vec::new(),
        allocatable: Resources::new(cpu, mem_gi * GI, 110),
        ready: true,
        unschedulable: false,
    }
}

fn pod(name: &str, cpu: i64, mem_gi: i64) -> Workload {
    Workload {
        key: format!("ns/{name}"),
        namespace: "ns".into(),
        requests: Resources::new(cpu, mem_gi * GI, 1),
        ..Workload::default()
    }
}

fn labelled(mut w: Workload, k: &str, v: &str) -> Workload {
    w.labels.insert(k.into(), v.into());
    w
}

fn term(k: &str, v: &str, topology: &str) -> AffinityTerm {
    AffinityTerm {
        selector: Selector {
            match_labels: vec![(k.into(), v.into())],
            expressions: vec![],
        },
        namespaces: Namespaces::Named(vec!["ns".into()]),
        topology_key: topology.into(),
    }
}

fn cluster(hosts: &[HostInfo]) -> Cluster {
    let mut c = Cluster::new();
    for h in hosts {
        c.upsert_host(h.clone());
    }
    c
}

/// Places and assumes, returning the host.
fn schedule(c: &mut Cluster, w: &Workload) -> Result<String, Unschedulable> {
    let host = c.place(w)?;
    c.assume(w, &host);
    Ok(host)
}

#[test]
fn resources_never_over_commit_and_the_message_counts_per_reason() {
    let mut c = cluster(&[
        host("a", "z1", 4000, 4),
        host("b", "z1", 4000, 4),
        host("c", "z2", 1000, 16),
    ]);
    for i in 0..2 {
        schedule(&mut c, &pod(&format!("p{i}"), 3000, 3)).unwrap();
    }
    let err = schedule(&mut c, &pod("big", 2000, 2)).unwrap_err();
    // A host short of both counts under both.
    assert_eq!(
        err.message,
        "0/3 hosts are available: 3 Insufficient cpu, 2 Insufficient memory."
    );
    let err = schedule(&mut c, &pod("huge", 500, 20)).unwrap_err();
    assert_eq!(
        err.message,
        "0/3 hosts are available: 3 Insufficient memory."
    );
    assert!(err.resources_only_somewhere);
    // What fits goes where there is room.
    assert_eq!(schedule(&mut c, &pod("small", 500, 1)).unwrap(), "c");
    for u in c.usage() {
        assert!(u.allocated.cpu_millis <= u.allocatable.cpu_millis, "{u:?}");
        assert!(
            u.allocated.memory_bytes <= u.allocatable.memory_bytes,
            "{u:?}"
        );
    }
}

#[test]
fn pod_count_is_a_resource() {
    let mut h = host("a", "z1", 4000, 4);
    h.allocatable.pods = 1;
    let mut c = cluster(&[h]);
    schedule(&mut c, &pod("p1", 0, 0)).unwrap();
    let err = schedule(&mut c, &pod("p2", 0, 0)).unwrap_err();
    assert_eq!(err.message, "0/1 hosts are available: 1 Too many pods.");
    c.forget("ns/p1");
    assert_eq!(schedule(&mut c, &pod("p2", 0, 0)).unwrap(), "a");
}

#[test]
fn not_ready_and_cordoned_hosts_take_no_work() {
    let mut not_ready = host("a", "z1", 4000, 4);
    not_ready.ready = false;
    let mut cordoned = host("b", "z1", 4000, 4);
    cordoned.unschedulable = true;
    let mut c = cluster(&[not_ready, cordoned.clone(), host("c", "z1", 100, 1)]);
    let err = schedule(&mut c, &pod("p", 1000, 1)).unwrap_err();
    assert_eq!(
        err.message,
        "0/3 hosts are available: 1 Insufficient cpu, 1 host(s) were not ready, 1 host(s) were unschedulable."
    );
    cordoned.unschedulable = false;
    c.upsert_host(cordoned);
    assert_eq!(schedule(&mut c, &pod("p", 1000, 1)).unwrap(), "b");
}

#[test]
fn taints_need_tolerations() {
    let mut tainted = host("a", "z1", 4000, 4);
    tainted.taints.push(Taint {
        key: "dedicated".into(),
        value: "db".into(),
        effect: TaintEffect::NoSchedule,
    });
    let mut c = cluster(&[tainted]);
    let err = schedule(&mut c, &pod("p", 100, 1)).unwrap_err();
    assert_eq!(
        err.message,
        "0/1 hosts are available: 1 host(s) had untolerated taint {dedicated: db}."
    );
    let mut tolerant = pod("q", 100, 1);
    tolerant.tolerations.push(Toleration {
        key: "dedicated".into(),
        exists: false,
        value: "db".into(),
        effect: Some(TaintEffect::NoSchedule),
        seconds: None,
    });
    assert_eq!(schedule(&mut c, &tolerant).unwrap(), "a");
}

#[test]
fn prefer_no_schedule_taints_only_lower_the_score() {
    let mut soft = host("a", "z1", 4000, 4);
    soft.taints.push(Taint {
        key: "k".into(),
        value: String::new(),
        effect: TaintEffect::PreferNoSchedule,
    });
    let mut c = cluster(&[soft, host("b", "z1", 4000, 4)]);
    assert_eq!(schedule(&mut c, &pod("p", 100, 1)).unwrap(), "b");
    // Still usable when nothing else fits.
    assert_eq!(schedule(&mut c, &pod("q", 3950, 1)).unwrap(), "a");
}

#[test]
fn node_selector_and_every_affinity_operator() {
    let mut a = host("a", "z1", 4000, 4);
    a.labels.insert("disk".into(), "ssd".into());
    a.labels.insert("gen".into(), "5".into());
    let mut b = host("b", "z2", 4000, 4);
    b.labels.insert("gen".into(), "3".into());
    let mut c = cluster(&[a, b]);
    let mut w = pod("sel", 100, 0);
    w.node_selector.push(("disk".into(), "ssd".into()));
    assert_eq!(c.place(&w).unwrap(), "a");
    w.node_selector = vec![("disk".into(), "hdd".into())];
    assert_eq!(
        c.place(&w).unwrap_err().message,
        "0/2 hosts are available: 2 host(s) didn't match Pod's node affinity/selector."
    );
    let cases: Vec<(Requirement, &str)> = vec![
        (
            Requirement {
                key: "disk".into(),
                operator: Operator::In,
                values: vec!["ssd".into()],
            },
            "a",
        ),
        (
            Requirement {
                key: "disk".into(),
                operator: Operator::NotIn,
                values: vec!["ssd".into()],
            },
            "b",
        ),
        (
            Requirement {
                key: "disk".into(),
                operator: Operator::Exists,
                values: vec![],
            },
            "a",
        ),
        (
            Requirement {
                key: "disk".into(),
                operator: Operator::DoesNotExist,
                values: vec![],
            },
            "b",
        ),
        (
            Requirement {
                key: "gen".into(),
                operator: Operator::Gt,
                values: vec!["4".into()],
            },
            "a",
        ),
        (
            Requirement {
                key: "gen".into(),
                operator: Operator::Lt,
                values: vec!["4".into()],
            },
            "b",
        ),
    ];
    for (req, expected) in cases {
        let mut w = pod("aff", 100, 0);
        w.required_node_terms.push(NodeTerm {
            expressions: vec![req.clone()],
            fields: vec![],
        });
        assert_eq!(c.place(&w).unwrap(), expected, "{req:?}");
    }
    // Terms are ORed; metadata.name fields work.
    let mut w = pod("or", 100, 0);
    w.required_node_terms.push(NodeTerm {
        expressions: vec![Requirement {
            key: "none".into(),
            operator: Operator::Exists,
            values: vec![],
        }],
        fields: vec![],
    });
    w.required_node_terms.push(NodeTerm {
        expressions: vec![],
        fields: vec![Requirement {
            key: "metadata.name".into(),
            operator: Operator::In,
            values: vec!["b".into()],
        }],
    });
    assert_eq!(c.place(&w).unwrap(), "b");
}

#[test]
fn preferred_node_affinity_wins_over_emptiness() {
    let mut a = host("a", "z1", 4000, 4);
    a.labels.insert("fast".into(), "yes".into());
    let mut c = cluster(&[host("b", "z1", 4000, 4), a]);
    // Make "a" the busier host, so least-allocated alone would pick "b".
    c.assume(&pod("filler", 1000, 1), "a");
    let mut w = pod("p", 100, 0);
    w.preferred_node_terms.push((
        100,
        NodeTerm {
            expressions: vec![Requirement {
                key: "fast".into(),
                operator: Operator::In,
                values: vec!["yes".into()],
            }],
            fields: vec![],
        },
    ));
    assert_eq!(c.place(&w).unwrap(), "a");
    assert_eq!(c.place(&pod("q", 100, 0)).unwrap(), "b");
}

#[test]
fn least_allocated_and_balanced_resources() {
    let mut c = cluster(&[host("a", "z1", 4000, 8), host("b", "z1", 4000, 8)]);
    c.assume(&pod("x", 2000, 0), "a");
    assert_eq!(c.place(&pod("p", 100, 0)).unwrap(), "b");
    // Balanced: "a" is CPU-heavy, "b" memory-heavy by as much; a memory-heavy workload goes
    // to "a", where it evens out the two resources.
    let mut c = cluster(&[host("a", "z1", 4000, 4), host("b", "z1", 4000, 4)]);
    c.assume(&pod("cpu", 2000, 0), "a");
    c.assume(&pod("mem", 0, 2), "b");
    assert_eq!(c.place(&pod("p", 0, 2)).unwrap(), "a");
}

#[test]
fn anti_affinity_keeps_replicas_apart_by_host_and_by_zone() {
    let mut c = cluster(&[
        host("a", "z1", 4000, 4),
        host("b", "z1", 4000, 4),
        host("c", "z2", 4000, 4),
    ]);
    let replica = |i: usize, topology: &str| {
        let mut w = labelled(pod(&format!("r{i}"), 100, 0), "app", "web");
        w.anti_affinity.push(term("app", "web", topology));
        w
    };
    let mut seen = Vec::new();
    for i in 0..3 {
        seen.push(schedule(&mut c, &replica(i, HOSTNAME_LABEL)).unwrap());
    }
    seen.sort();
    assert_eq!(seen, ["a", "b", "c"]);
    assert_eq!(
        schedule(&mut c, &replica(3, HOSTNAME_LABEL))
            .unwrap_err()
            .message,
        "0/3 hosts are available: 3 host(s) didn't match pod anti-affinity rules."
    );
    // By zone: two zones hold at most two replicas.
    let mut c = cluster(&[
        host("a", "z1", 4000, 4),
        host("b", "z1", 4000, 4),
        host("c", "z2", 4000, 4),
    ]);
    let zones: Vec<String> = (0..2)
        .map(|i| schedule(&mut c, &replica(i, ZONE_LABEL)).unwrap())
        .collect();
    assert!(zones.contains(&"c".to_string()));
    assert!(schedule(&mut c, &replica(2, ZONE_LABEL)).is_err());
}

#[test]
fn existing_anti_affinity_is_symmetric() {
    let mut c = cluster(&[host("a", "z1", 4000, 4), host("b", "z1", 4000, 4)]);
    let mut loner = pod("loner", 100, 0);
    loner.anti_affinity.push(term("app", "web", HOSTNAME_LABEL));
    c.assume(&loner, "a");
    let web = labelled(pod("web", 100, 0), "app", "web");
    // "a" is the emptier host by nothing; web must still avoid it.
    c.assume(&pod("filler", 1000, 1), "b");
    assert_eq!(c.place(&web).unwrap(), "b");
    c.upsert_host(HostInfo {
        ready: false,
        ..host("b", "z1", 4000, 4)
    });
    assert_eq!(
        c.place(&web).unwrap_err().message,
        "0/2 hosts are available: 1 host(s) didn't satisfy existing pods anti-affinity rules, 1 host(s) were not ready."
    );
}

#[test]
fn pod_affinity_follows_matching_workloads() {
    let mut c = cluster(&[
        host("a", "z1", 4000, 4),
        host("b", "z2", 4000, 4),
        host("c", "z2", 4000, 4),
    ]);
    let mut follower = pod("f", 100, 0);
    follower.affinity.push(term("app", "db", ZONE_LABEL));
    assert_eq!(
        c.place(&follower).unwrap_err().message,
        "0/3 hosts are available: 3 host(s) didn't match pod affinity rules."
    );
    c.assume(&labelled(pod("db", 100, 0), "app", "db"), "b");
    let placed = c.place(&follower).unwrap();
    assert!(placed == "b" || placed == "c", "{placed}");
    // The first of a self-affine group may go anywhere.
    let mut first = labelled(pod("g", 100, 0), "app", "cache");
    first.affinity.push(term("app", "cache", HOSTNAME_LABEL));
    assert!(c.place(&first).is_ok());
}

#[test]
fn preferred_pod_affinity_and_anti_affinity_score() {
    let mut c = cluster(&[host("a", "z1", 4000, 4), host("b", "z1", 4000, 4)]);
    c.assume(&labelled(pod("db", 1000, 1), "app", "db"), "a");
    let mut near = pod("near", 100, 0);
    near.preferred_affinity
        .push((100, term("app", "db", HOSTNAME_LABEL)));
    assert_eq!(c.place(&near).unwrap(), "a");
    let mut far = pod("far", 100, 0);
    far.preferred_anti_affinity
        .push((100, term("app", "db", HOSTNAME_LABEL)));
    assert_eq!(c.place(&far).unwrap(), "b");
}

#[test]
fn zone_spread_do_not_schedule_holds_max_skew() {
    let mut c = cluster(&[
        host("a1", "z1", 64000, 64),
        host("a2", "z1", 64000, 64),
        host("b1", "z2", 64000, 64),
        host("c1", "z3", 4000, 4),
    ]);
    let spread = |i: usize| {
        let mut w = labelled(pod(&format!("s{i}"), 1000, 1), "app", "s");
        w.spread.push(SpreadConstraint {
            max_skew: 1,
            topology_key: ZONE_LABEL.into(),
            when_unsatisfiable: WhenUnsatisfiable::DoNotSchedule,
            selector: Selector {
                match_labels: vec![("app".into(), "s".into())],
                expressions: vec![],
            },
        });
        w
    };
    let mut per_zone: HashMap<String, i32> = HashMap::new();
    for i in 0..12 {
        let h = schedule(&mut c, &spread(i)).unwrap();
        *per_zone.entry(h[..1].to_string()).or_default() += 1;
    }
    // z3 holds only four such pods; the others may then go at most one ahead of it.
    assert_eq!(per_zone["c"], 4);
    assert!(per_zone["a"] <= 5 && per_zone["b"] <= 5, "{per_zone:?}");
    let err = loop {
        match schedule(
            &mut c,
            &spread(100 + per_zone.values().sum::<i32>() as usize),
        ) {
            Ok(h) => *per_zone.entry(h[..1].to_string()).or_default() += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(
        err.message,
        "0/4 hosts are available: 3 host(s) didn't match pod topology spread constraints, 1 Insufficient cpu, 1 Insufficient memory."
    );
}

#[test]
fn schedule_anyway_spread_and_group_spread_prefer_empty_domains() {
    let mut c = cluster(&[
        host("a", "z1", 8000, 8),
        host("b", "z1", 8000, 8),
        host("c", "z2", 8000, 8),
    ]);
    let member = |i: usize| Workload {
        group: Some("rs-1".into()),
        ..pod(&format!("m{i}"), 100, 0)
    };
    let first = schedule(&mut c, &member(0)).unwrap();
    let second = schedule(&mut c, &member(1)).unwrap();
    // Two members of one group land in different zones.
    assert_ne!(&first[..1] == "c", &second[..1] == "c", "{first} {second}");
    let mut soft = labelled(pod("soft", 100, 0), "app", "x");
    c.assume(&labelled(pod("x1", 0, 0), "app", "x"), "a");
    c.assume(&labelled(pod("x2", 0, 0), "app", "x"), "b");
    soft.spread.push(SpreadConstraint {
        max_skew: 1,
        topology_key: HOSTNAME_LABEL.into(),
        when_unsatisfiable: WhenUnsatisfiable::ScheduleAnyway,
        selector: Selector {
            match_labels: vec![("app".into(), "x".into())],
            expressions: vec![],
        },
    });
    assert_eq!(c.place(&soft).unwrap(), "c");
}

#[test]
fn namespace_zones_limit_placement() {
    let mut c = cluster(&[
        host("a", "z1", 4000, 4),
        host("b", "z2", 4000, 4),
        host("c", "z3", 100, 1),
    ]);
    c.set_namespace_zones("ns", Some(vec!["z3".into()]));
    assert_eq!(
        c.place(&pod("p", 1000, 1)).unwrap_err().message,
        "0/3 hosts are available: 2 not in the namespace's zones, 1 Insufficient cpu."
    );
    c.set_namespace_zones("ns", Some(vec!["z2".into(), "z3".into()]));
    assert_eq!(c.place(&pod("p", 1000, 1)).unwrap(), "b");
    c.set_namespace_zones("ns", None);
    assert!(c.place(&pod("p", 1000, 1)).is_ok());
}

#[test]
fn no_hosts_says_so() {
    let mut c = Cluster::new();
    assert_eq!(
        c.place(&pod("p", 1, 1)).unwrap_err().message,
        "no hosts available to schedule pods"
    );
}

#[test]
fn preemption_picks_the_cheapest_victims_and_nominations_hold_room() {
    let mut c = cluster(&[host("a", "z1", 4000, 4), host("b", "z1", 4000, 4)]);
    let with_priority = |name: &str, cpu: i64, priority: i32| Workload {
        priority,
        ..pod(name, cpu, 0)
    };
    c.assume(&with_priority("a-low", 2000, 1), "a");
    c.assume(&with_priority("a-mid", 2000, 5), "a");
    c.assume(&with_priority("b-mid1", 2000, 5), "b");
    c.assume(&with_priority("b-mid2", 2000, 5), "b");
    let urgent = with_priority("urgent", 2000, 10);
    let err = c.place(&urgent).unwrap_err();
    assert!(err.resources_only_somewhere);
    let p = c.preempt(&urgent).unwrap();
    assert_eq!(
        p,
        Preemption {
            host: "a".into(),
            victims: vec!["ns/a-low".into()]
        }
    );
    // Nothing of lower priority to remove: no preemption.
    assert_eq!(c.preempt(&with_priority("meek", 2000, 1)), None);
    // Once nominated, the room freed is not given to a lower-priority workload.
    c.nominate(&urgent, "a");
    c.forget("ns/a-low");
    assert!(c.place(&with_priority("other", 2000, 3)).is_err());
    assert_eq!(c.place(&urgent).unwrap(), "a");
}

#[test]
fn large_clusters_sample_but_stay_even() {
    let hosts: Vec<HostInfo> = (0..1000)
        .map(|i| host(&format!("h{i}"), &format!("z{}", i % 3), 4000, 16))
        .collect();
    let mut c = cluster(&hosts);
    for i in 0..2000 {
        schedule(&mut c, &pod(&format!("p{i}"), 100, 0)).unwrap();
    }
    let usage = c.usage();
    let max = usage.iter().map(|u| u.allocated.pods).max().unwrap();
    let min = usage.iter().map(|u| u.allocated.pods).min().unwrap();
    assert_eq!((min, max), (2, 2));
}

#[test]
fn equal_workloads_fill_a_large_cluster_evenly_despite_failed_bindings() {
    // Above the sampling threshold each attempt checks only a share of the hosts; failed
    // bindings (placed, then forgotten) shift the round-robin, so near the end a sample can
    // miss every emptier host unless the least-loaded ones are checked as well.
    let hosts: Vec<HostInfo> = (0..1000)
        .map(|i| host(&format!("h{i:04}"), ["a", "b", "c"][i % 3], 4000, 16))
        .collect();
    let mut c = cluster(&hosts);
    let workload = |i: usize| Workload {
        requests: Resources::new(100, 256 * 1024 * 1024, 1),
        ..pod(&format!("p{i:05}"), 0, 0)
    };
    for i in 0..2000 {
        if i % 97 == 0 {
            let failed = workload(100_000 + i);
            schedule(&mut c, &failed).unwrap();
            c.forget(&failed.key);
        }
        schedule(&mut c, &workload(i)).unwrap();
    }
    let mut per_host: HashMap<String, usize> = HashMap::new();
    for i in 0..2000 {
        *per_host
            .entry(c.host_of(&workload(i).key).unwrap().to_string())
            .or_default() += 1;
    }
    let (fewest, most) = (per_host.values().min(), per_host.values().max());
    assert_eq!(
        (per_host.len(), fewest, most),
        (1000, Some(&2), Some(&2)),
        "pods per host"
    );
}
