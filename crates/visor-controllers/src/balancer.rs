//! The balancer (the seeds' DRS load balancing): watches how loaded each host is and, when the
//! busiest and the idlest host of a zone drift too far apart, recommends moves or makes them.
//!
//! Load is allocation, as placement sees it: a host's utilisation is the larger of its CPU and
//! memory requests over its allocatable, in percent. Only Ready, schedulable hosts take part;
//! hosts are compared within their zone (hosts without a zone label form one group).
//!
//! Every interval, per zone: if `busiest − idlest` exceeds the threshold (percentage points),
//! the balancer looks for *movable* pods on the busiest host — owned by a controller that will
//! recreate them (not a DaemonSet's, whose pods belong to their host), running, not being
//! deleted — and, with the placement core on a copy of the cluster, asks where each would go
//! if placed again. A move is worth it when the pod would land on another host and the spread
//! would shrink. Up to `rate` moves are chosen per interval, each applied to the copy before
//! the next is sought.
//!
//! - `manual`: each move is recorded as an Event on the pod (`MoveRecommended`) and listed in
//!   the Zone's `status.balance.recommendations`.
//! - `automatic`: each moving pod is *evicted* through the eviction subresource, so its
//!   PodDisruptionBudget is honoured (a `429` skips it); its controller creates a replacement,
//!   which the scheduler places — on a less loaded host, since least-allocated scoring prefers
//!   it. Events `Rebalanced` record what was done.
//! - `off`: the balancer does not run.
//!
//! Configuration is by `visor server` flags (`--balancer`, `--balancer-threshold`,
//! `--balancer-rate`, `--balancer-interval`): the policy of the cluster's operator, fixed for
//! the server's run, like upstream's descheduler policy file.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, EvictParams, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::Notify;
use visor_api::zone::{Move, ZONE_LABEL, Zone, ZoneBalance};
use visor_scheduler::convert::{node_host, pod_workload};
use visor_scheduler::{Cluster, HostUsage, Workload};

use crate::informers::{self, Informers};
use crate::shared::Recorder;

/// What the balancer does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Off,
    Manual,
    Automatic,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Manual => "manual",
            Mode::Automatic => "automatic",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "off" => Ok(Mode::Off),
            "manual" => Ok(Mode::Manual),
            "automatic" => Ok(Mode::Automatic),
            other => Err(format!(
                "unknown balancer mode {other:?}: expected off, manual or automatic"
            )),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub mode: Mode,
    /// The largest tolerated spread between the busiest and the idlest host, in percentage
    /// points of utilisation.
    pub threshold_percent: i64,
    /// At most this many moves per zone per interval.
    pub rate: usize,
    pub interval: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            mode: Mode::Manual,
            threshold_percent: 20,
            rate: 2,
            interval: Duration::from_secs(60),
        }
    }
}

/// A host's utilisation in percent: the larger of CPU and memory.
pub fn utilisation(u: &HostUsage) -> i64 {
    let pct = |used: i64, total: i64| {
        if total <= 0 { 0 } else { used * 100 / total }
    };
    pct(u.allocated.cpu_millis, u.allocatable.cpu_millis)
        .max(pct(u.allocated.memory_bytes, u.allocatable.memory_bytes))
}

/// The busiest and idlest of `hosts` (name, utilisation).
fn extremes(hosts: &[HostUsage]) -> Option<((String, i64), (String, i64))> {
    let busiest = hosts
        .iter()
        .max_by_key(|u| (utilisation(u), std::cmp::Reverse(u.name.clone())))?;
    let idlest = hosts
        .iter()
        .min_by_key(|u| (utilisation(u), u.name.clone()))?;
    Some((
        (busiest.name.clone(), utilisation(busiest)),
        (idlest.name.clone(), utilisation(idlest)),
    ))
}

/// A pod the balancer may move: its controller recreates it elsewhere.
pub fn movable(pod: &Pod) -> bool {
    let owned = pod
        .owner_references()
        .iter()
        .any(|r| r.controller == Some(true) && r.kind != "DaemonSet" && r.kind != "Node");
    owned && pod.metadata.deletion_timestamp.is_none() && crate::shared::phase(pod) == "Running"
}

/// The planned moves for one zone and the balance status to show.
pub struct Plan {
    pub balance: ZoneBalance,
    /// (pod key, from, to)
    pub moves: Vec<(String, String, String)>,
}

/// Plans up to `rate` moves in the group of hosts `names` (see the module documentation).
/// `candidates` are the movable pods per host, as workloads.
pub fn plan(
    cluster: &mut Cluster,
    names: &[String],
    candidates: &BTreeMap<String, Vec<Workload>>,
    config: &Config,
) -> Option<Plan> {
    let usage_of = |cluster: &Cluster| -> Vec<HostUsage> {
        cluster
            .usage()
            .into_iter()
            .filter(|u| u.ready && u.schedulable && names.contains(&u.name))
            .collect()
    };
    let ((busiest, high), (idlest, low)) = extremes(&usage_of(cluster))?;
    let initial_spread = high - low;
    let mut moves = Vec::new();
    let mut moved: Vec<String> = Vec::new();
    let mut spread = initial_spread;
    while moves.len() < config.rate && spread > config.threshold_percent {
        let hosts = usage_of(cluster);
        let Some(((from, _), _)) = extremes(&hosts) else {
            break;
        };
        let mut best: Option<(i64, Workload, String)> = None;
        for w in candidates.get(&from).into_iter().flatten() {
            if moved.contains(&w.key) {
                continue;
            }
            cluster.forget(&w.key);
            let target = cluster.place(w);
            let outcome = match target {
                Ok(to) if to != from => {
                    cluster.assume(w, &to);
                    let after = extremes(&usage_of(cluster)).map(|((_, h), (_, l))| h - l);
                    cluster.forget(&w.key);
                    after.map(|a| (a, to))
                }
                _ => None,
            };
            cluster.assume(w, &from);
            if let Some((after, to)) = outcome
                && after < spread
                && best.as_ref().is_none_or(|(b, _, _)| after < *b)
            {
                best = Some((after, w.clone(), to));
            }
        }
        let Some((after, w, to)) = best else { break };
        cluster.forget(&w.key);
        cluster.assume(&w, &to);
        moved.push(w.key.clone());
        moves.push((w.key.clone(), from.clone(), to));
        spread = after;
    }
    let summary = if initial_spread <= config.threshold_percent {
        format!("balanced (spread {initial_spread}%)")
    } else if moves.is_empty() {
        format!(
            "spread {initial_spread}% > {}%: no move helps",
            config.threshold_percent
        )
    } else {
        let verb = if config.mode == Mode::Automatic {
            "moving"
        } else {
            "recommended"
        };
        format!(
            "spread {initial_spread}% > {}%: {} move(s) {verb}",
            config.threshold_percent,
            moves.len()
        )
    };
    Some(Plan {
        balance: ZoneBalance {
            mode: config.mode.name().into(),
            busiest_host: busiest,
            busiest_percent: high,
            idlest_host: idlest,
            idlest_percent: low,
            summary,
            recommendations: moves
                .iter()
                .map(|(pod, from, to)| Move {
                    pod: pod.clone(),
                    from_host: from.clone(),
                    to_host: to.clone(),
                })
                .collect(),
        },
        moves,
    })
}

/// Runs the balancer until the task is dropped; returns at once in mode `off`.
pub async fn run(client: Client, config: Config, informers: Arc<Informers>) {
    if config.mode == Mode::Off {
        return;
    }
    let changed = Arc::new(Notify::new());
    let nodes: Store<Node> = informers.store(
        Api::all(client.clone()),
        watcher::Config::default(),
        changed.clone(),
    );
    let pods: Store<Pod> = informers.store(
        Api::all(client.clone()),
        watcher::Config::default().fields("spec.nodeName!="),
        changed.clone(),
    );
    if !(informers::ready(&nodes).await && informers::ready(&pods).await) {
        return;
    }
    let recorder = Recorder::new(client.clone());
    let zones: Api<Zone> = Api::all(client.clone());
    let mut interval = tokio::time::interval(config.interval);
    interval.tick().await;
    loop {
        interval.tick().await;
        let node_list = nodes.state();
        let pod_list = pods.state();
        let mut cluster = Cluster::new();
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for node in &node_list {
            let host = node_host(node);
            groups
                .entry(host.labels.get(ZONE_LABEL).cloned().unwrap_or_default())
                .or_default()
                .push(host.name.clone());
            cluster.upsert_host(host);
        }
        let mut candidates: BTreeMap<String, Vec<Workload>> = BTreeMap::new();
        let mut by_key: BTreeMap<String, Arc<Pod>> = BTreeMap::new();
        for pod in &pod_list {
            let Some(host) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
                continue;
            };
            if matches!(crate::shared::phase(pod), "Succeeded" | "Failed") {
                continue;
            }
            let w = pod_workload(pod, &|_| Vec::new());
            cluster.place_on(&w, &host, pod.metadata.deletion_timestamp.is_some());
            if movable(pod) {
                by_key.insert(w.key.clone(), pod.clone());
                candidates.entry(host).or_default().push(w);
            }
        }
        for (zone, names) in &groups {
            let Some(plan) = plan(&mut cluster, names, &candidates, &config) else {
                continue;
            };
            for (key, from, to) in &plan.moves {
                let Some(pod) = by_key.get(key) else { continue };
                match config.mode {
                    Mode::Automatic => {
                        let api: Api<Pod> =
                            Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
                        match api.evict(&pod.name_any(), &EvictParams::default()).await {
                            Ok(_) => {
                                tracing::info!(pod = %key, %from, %to, "rebalancing: pod evicted");
                                recorder
                                    .record(
                                        pod.as_ref(),
                                        false,
                                        "Rebalanced",
                                        format!("Evicted from busy host {from} to be placed again (expected on {to})"),
                                    )
                                    .await;
                            }
                            Err(kube::Error::Api(s)) if s.code == 429 => {
                                tracing::info!(pod = %key, "rebalancing: disruption budget says no");
                            }
                            Err(error) => {
                                tracing::warn!(%error, pod = %key, "rebalancing eviction")
                            }
                        }
                    }
                    Mode::Manual => {
                        recorder
                            .record(
                                pod.as_ref(),
                                false,
                                "MoveRecommended",
                                format!(
                                    "Moving this pod from {from} to {to} would narrow zone {zone:?}'s load spread"
                                ),
                            )
                            .await;
                    }
                    Mode::Off => {}
                }
            }
            if zone.is_empty() {
                continue;
            }
            let patch = json!({"status": {"balance": plan.balance}});
            match zones
                .patch_status(zone, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(error) => tracing::debug!(%error, %zone, "writing balance status"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use visor_scheduler::{HostInfo, Resources};

    fn host(name: &str) -> HostInfo {
        HostInfo {
            name: name.into(),
            allocatable: Resources::new(4000, 8 << 30, 110),
            ready: true,
            ..HostInfo::default()
        }
    }

    fn pod(name: &str, cpu: i64) -> Workload {
        Workload {
            key: format!("ns/{name}"),
            namespace: "ns".into(),
            requests: Resources::new(cpu, 0, 1),
            ..Workload::default()
        }
    }

    #[test]
    fn moves_narrow_the_spread_up_to_the_rate() {
        let mut cluster = Cluster::new();
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        for n in &names {
            cluster.upsert_host(host(n));
        }
        let mut candidates = BTreeMap::new();
        for i in 0..6 {
            let w = pod(&format!("p{i}"), 500);
            cluster.assume(&w, "a");
            candidates
                .entry("a".to_string())
                .or_insert_with(Vec::new)
                .push(w);
        }
        // a: 75%, b and c: 0% — spread 75.
        let config = Config {
            mode: Mode::Automatic,
            threshold_percent: 20,
            rate: 3,
            interval: Duration::from_secs(1),
        };
        let plan = plan(&mut cluster, &names, &candidates, &config).unwrap();
        assert_eq!(plan.balance.busiest_host, "a");
        assert_eq!(plan.balance.busiest_percent, 75);
        assert_eq!(plan.moves.len(), 3);
        assert!(
            plan.moves
                .iter()
                .all(|(_, from, to)| from == "a" && to != "a")
        );
        assert!(
            plan.balance
                .summary
                .starts_with("spread 75% > 20%: 3 move(s)"),
            "{}",
            plan.balance.summary
        );
        // A balanced group needs nothing.
        let mut even = Cluster::new();
        for n in &names {
            even.upsert_host(host(n));
            even.assume(&pod(n, 1000), n);
        }
        let plan = super::plan(&mut even, &names, &BTreeMap::new(), &config).unwrap();
        assert!(plan.moves.is_empty());
        assert_eq!(plan.balance.summary, "balanced (spread 0%)");
    }

    #[test]
    fn modes_parse() {
        assert_eq!("automatic".parse::<Mode>(), Ok(Mode::Automatic));
        assert!("sometimes".parse::<Mode>().is_err());
    }
}
