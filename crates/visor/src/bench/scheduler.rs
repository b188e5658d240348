//! `visor bench scheduler`: the placement core in-process, as upstream's `scheduler_perf`:
//! a cluster of simulated hosts (5,000 by default, across three zones) and a stream of pods
//! (10,000) placed one after another — each placement sees every earlier one, as in the
//! scheduler loop — in four workloads:
//!
//! - `basic`: equal pods with requests;
//! - `node-affinity`: pods that require a label half the hosts carry;
//! - `pod-anti-affinity`: pods in groups of 1,000 whose members must not share a host;
//! - `zone-spread`: pods with a zone `topologySpreadConstraint` (maxSkew 1, DoNotSchedule).
//!
//! Reported per workload: pods placed per second. Checked: no host is ever over-committed,
//! every pod is placed, and for `basic` the busiest host is at most 10 % above the idlest.
//! The API is not involved: this measures placement itself. With `--end-to-end` the bench
//! instead goes through the API with simulated hosts ([`end_to_end`]).

use std::time::Instant;

use anyhow::bail;
use clap::Args;
use visor_scheduler::model::{
    AffinityTerm, HOSTNAME_LABEL, Labels, Namespaces, NodeTerm, Operator, Requirement, Selector,
    SpreadConstraint, WhenUnsatisfiable, ZONE_LABEL,
};
use visor_scheduler::{Cluster, HostInfo, Resources, Workload};

use super::report::Metric;

mod end_to_end;

#[derive(Debug, Args)]
pub struct SchedulerArgs {
    /// Simulated hosts.
    #[arg(long, default_value_t = 5000)]
    pub hosts: usize,
    /// Pods placed per workload.
    #[arg(long, default_value_t = 10000)]
    pub pods: usize,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Measure through the API instead: pods created → all Running → all deleted, on simulated
    /// hosts. Without --kubeconfig the bench starts a server and three simulated zones itself.
    #[arg(long)]
    pub end_to_end: bool,
    /// With --end-to-end: a running server whose cluster already has at least --hosts Ready
    /// (simulated) hosts, instead of a cluster of the bench's own.
    #[arg(long, requires = "end_to_end")]
    pub kubeconfig: Option<std::path::PathBuf>,
}

const ZONES: usize = 3;
const GI: i64 = 1 << 30;

fn cluster(hosts: usize) -> Cluster {
    let mut c = Cluster::new();
    for i in 0..hosts {
        let name = format!("host-{i:05}");
        let mut labels = Labels::new();
        labels.insert(HOSTNAME_LABEL.into(), name.clone());
        labels.insert(ZONE_LABEL.into(), format!("zone-{}", i % ZONES));
        if i % 2 == 0 {
            labels.insert("disk".into(), "ssd".into());
        }
        c.upsert_host(HostInfo {
            name,
            labels,
            taints: Vec::new(),
            allocatable: Resources::new(32_000, 128 * GI, 110),
            ready: true,
            unschedulable: false,
        });
    }
    c
}

fn base_pod(i: usize) -> Workload {
    let mut labels = Labels::new();
    labels.insert("app".into(), "bench".into());
    Workload {
        key: format!("bench/pod-{i}"),
        namespace: "bench".into(),
        labels,
        requests: Resources::new(100, 256 << 20, 1),
        ..Workload::default()
    }
}

fn workload(kind: &str, i: usize) -> Workload {
    let mut w = base_pod(i);
    match kind {
        "node-affinity" => w.required_node_terms.push(NodeTerm {
            expressions: vec![Requirement {
                key: "disk".into(),
                operator: Operator::In,
                values: vec!["ssd".into()],
            }],
            fields: Vec::new(),
        }),
        "pod-anti-affinity" => {
            let group = format!("g{}", i / 1000);
            w.labels.insert("group".into(), group.clone());
            w.anti_affinity.push(AffinityTerm {
                selector: Selector {
                    match_labels: vec![("group".into(), group)],
                    expressions: Vec::new(),
                },
                namespaces: Namespaces::Named(vec!["bench".into()]),
                topology_key: HOSTNAME_LABEL.into(),
            });
        }
        "zone-spread" => w.spread.push(SpreadConstraint {
            max_skew: 1,
            topology_key: ZONE_LABEL.into(),
            when_unsatisfiable: WhenUnsatisfiable::DoNotSchedule,
            selector: Selector {
                match_labels: vec![("app".into(), "bench".into())],
                expressions: Vec::new(),
            },
        }),
        _ => {}
    }
    w
}

/// The outcome of one workload.
struct Outcome {
    pods_per_second: f64,
    /// Busiest host's allocated CPU over the idlest's, minus one, in percent.
    imbalance_percent: f64,
}

fn run_workload(kind: &str, hosts: usize, pods: usize) -> anyhow::Result<Outcome> {
    let mut c = cluster(hosts);
    let workloads: Vec<Workload> = (0..pods).map(|i| workload(kind, i)).collect();
    let start = Instant::now();
    for w in &workloads {
        match c.place(w) {
            Ok(host) => c.assume(w, &host),
            Err(e) => bail!("{kind}: {} was not placed: {}", w.key, e.message),
        }
    }
    let elapsed = start.elapsed();
    let usage = c.usage();
    for u in &usage {
        if u.allocated.cpu_millis > u.allocatable.cpu_millis
            || u.allocated.memory_bytes > u.allocatable.memory_bytes
            || u.allocated.pods > u.allocatable.pods
        {
            bail!(
                "{kind}: host {} is over-committed: {:?}",
                u.name,
                u.allocated
            );
        }
    }
    if c.placed_count() != pods {
        bail!("{kind}: {} of {pods} pods placed", c.placed_count());
    }
    let max = usage
        .iter()
        .map(|u| u.allocated.cpu_millis)
        .max()
        .unwrap_or(0);
    let min = usage
        .iter()
        .map(|u| u.allocated.cpu_millis)
        .min()
        .unwrap_or(0);
    let imbalance_percent = if min == 0 {
        f64::INFINITY
    } else {
        (max as f64 / min as f64 - 1.0) * 100.0
    };
    Ok(Outcome {
        pods_per_second: pods as f64 / elapsed.as_secs_f64(),
        imbalance_percent,
    })
}

/// Upstream's CI thresholds at 5,000 nodes, times ten: Visor's targets.
fn target(kind: &str) -> Option<f64> {
    match kind {
        "basic" => Some(6800.0),
        "node-affinity" => Some(2200.0),
        "pod-anti-affinity" => Some(600.0),
        _ => None,
    }
}

pub async fn run(args: SchedulerArgs) -> anyhow::Result<()> {
    if args.hosts == 0 || args.pods == 0 {
        bail!("--hosts and --pods must be at least 1");
    }
    if args.end_to_end {
        return end_to_end::run(end_to_end::EndToEndOptions {
            kubeconfig: args.kubeconfig,
            hosts: args.hosts,
            pods: args.pods,
            json: args.json,
        })
        .await;
    }
    let (hosts, pods) = (args.hosts, args.pods);
    let kinds = ["basic", "node-affinity", "pod-anti-affinity", "zone-spread"];
    let outcomes = tokio::task::spawn_blocking(move || {
        kinds
            .iter()
            .map(|kind| run_workload(kind, hosts, pods).map(|o| (*kind, o)))
            .collect::<anyhow::Result<Vec<_>>>()
    })
    .await??;
    if !args.json {
        println!("placement core: {hosts} hosts in {ZONES} zones, {pods} pods per workload");
        println!("{:<20} {:>12} {:>12}", "workload", "pods/s", "target");
    }
    let mut failed = Vec::new();
    for (kind, o) in &outcomes {
        let goal = target(kind);
        if args.json {
            let metric = Metric {
                bench: "scheduler",
                metric: format!("{kind}_throughput"),
                value: o.pods_per_second,
                unit: "pods/s",
            };
            println!("{}", serde_json::to_string(&metric)?);
        } else {
            println!(
                "{kind:<20} {:>12.0} {:>12}",
                o.pods_per_second,
                goal.map(|g| format!("≥ {g:.0}"))
                    .unwrap_or_else(|| "—".into())
            );
        }
        if let Some(goal) = goal
            && hosts == 5000
            && o.pods_per_second < goal
        {
            failed.push(format!(
                "{kind}: {:.0} pods/s < {goal:.0}",
                o.pods_per_second
            ));
        }
    }
    let basic = &outcomes[0].1;
    if args.json {
        let metric = Metric {
            bench: "scheduler",
            metric: "basic_imbalance".into(),
            value: basic.imbalance_percent,
            unit: "%",
        };
        println!("{}", serde_json::to_string(&metric)?);
    } else {
        println!(
            "quality: no host over-committed; basic: busiest host {:.1}% above the idlest (≤ 10%)",
            basic.imbalance_percent
        );
    }
    if basic.imbalance_percent > 10.0 && pods >= hosts {
        failed.push(format!(
            "basic: busiest host {:.1}% above the idlest",
            basic.imbalance_percent
        ));
    }
    if !failed.is_empty() {
        bail!("targets missed: {}", failed.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_workload_places_everything_without_over_commit() {
        for kind in ["basic", "node-affinity", "pod-anti-affinity", "zone-spread"] {
            // Anti-affinity groups hold 1,000 pods, one per host: enough hosts for 900.
            let o = run_workload(kind, 1000, 900).unwrap();
            assert!(o.pods_per_second > 0.0);
        }
        // Equal pods on equal hosts: perfectly even.
        assert_eq!(
            run_workload("basic", 300, 900).unwrap().imbalance_percent,
            0.0
        );
    }
}
