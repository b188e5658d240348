//! The placement core: a cache of hosts and of what is placed on them, and [`Cluster::place`],
//! which picks a host for a workload or says why none fits.
//!
//! Pure and synchronous: no I/O, no clock, no randomness, so it is unit-tested directly and
//! benchmarked in-process. The scheduler loop ([`crate::runner`]) feeds it from watches.
//!
//! How a placement is made, as upstream's scheduling cycle:
//! 1. *Pre-filter*: what depends on the whole cluster is computed once per attempt — domains
//!    holding workloads that the new one's (anti-)affinity terms match, domains excluded by
//!    existing workloads' anti-affinity, spread counts per domain.
//! 2. *Filter*: hosts are visited round-robin from where the last attempt stopped; each is
//!    checked, cheapest check first (Ready and schedulable, the namespace's zones, taints,
//!    node selector and affinity, resources, inter-workload affinity, spread). In a large
//!    cluster the visit stops once enough feasible hosts are found (upstream's
//!    `percentageOfNodesToScore`), which keeps an attempt's cost flat as the cluster grows.
//!    The few least-loaded hosts of the whole cluster are checked too (kept in an index by
//!    load): without them, once most hosts are equally full the sample may hold none of the
//!    emptier ones and a host gets one workload more than the rest.
//! 3. *Score*: each feasible host gets least-allocated, balanced-resources, spreading,
//!    preferred-affinity and taint scores, normalised across the feasible hosts and weighted;
//!    the best wins (ties: the first visited, and visiting rotates).
//!
//! Scores are floating point rather than upstream's integers 0–100: with small workloads on
//! large hosts, integer scores tie and pile work onto the first host visited.
//!
//! Guarantees: a host is never chosen if the workload's requests exceed its allocatable minus
//! what is placed or assumed on it (and what is nominated there for workloads of higher or
//! equal priority) — no over-commit, whatever the order of calls.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;

use crate::model::{
    AffinityTerm, HOSTNAME_LABEL, HostInfo, Namespaces, Resources, Selector, TaintEffect,
    WhenUnsatisfiable, Workload, ZONE_LABEL, tolerated,
};

/// Upstream's defaults for a container without requests, used by the scores only (so that
/// workloads without requests still spread).
const DEFAULT_SCORE_CPU_MILLIS: i64 = 100;
const DEFAULT_SCORE_MEMORY: i64 = 200 * 1024 * 1024;

/// Below this many hosts every host is considered; above it, a share of them.
const MIN_FEASIBLE_TO_FIND: usize = 100;
/// The least-loaded hosts checked in every attempt besides the round-robin sample.
const LEAST_LOADED_CANDIDATES: usize = 8;

/// The share of `allocatable` that `used` takes, at most 1 (a host with nothing allocatable is
/// full).
fn allocated_share(used: i64, allocatable: i64) -> f64 {
    if allocatable <= 0 {
        1.0
    } else {
        (used as f64 / allocatable as f64).min(1.0)
    }
}

/// Score weights, as upstream's default plugin weights.
const WEIGHT_LEAST_ALLOCATED: f64 = 1.0;
const WEIGHT_BALANCED: f64 = 1.0;
const WEIGHT_SPREAD: f64 = 2.0;
const WEIGHT_NODE_AFFINITY: f64 = 2.0;
const WEIGHT_POD_AFFINITY: f64 = 2.0;
const WEIGHT_TAINTS: f64 = 3.0;

/// Why a workload fits no host: the message, as users read it in `PodScheduled`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Unschedulable {
    pub message: String,
    /// Whether some host failed only for lack of resources, so that preemption could help.
    pub resources_only_somewhere: bool,
}

/// Victims to remove from `host` so that a higher-priority workload fits there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preemption {
    pub host: String,
    /// Keys of the workloads to evict, lowest priority first.
    pub victims: Vec<String>,
}

/// A host's state as the balancer and zone reports read it.
#[derive(Clone, Debug)]
pub struct HostUsage {
    pub name: String,
    pub zone: Option<String>,
    pub allocatable: Resources,
    pub allocated: Resources,
    pub ready: bool,
    pub schedulable: bool,
}

struct Host {
    info: HostInfo,
    /// False for a host known only because a workload names it, or one that was removed.
    present: bool,
    zone: Option<u32>,
    allocated: Resources,
    /// This host's key in [`Cluster::by_load`] while present.
    load: u64,
    placed: Vec<u32>,
    /// Workloads nominated to run here once preemption victims leave: key, priority, requests.
    nominated: Vec<(String, i32, Resources)>,
}

impl Host {
    fn hostname(&self) -> &str {
        self.info
            .labels
            .get(HOSTNAME_LABEL)
            .map(String::as_str)
            .unwrap_or(&self.info.name)
    }
}

struct Placed {
    key: String,
    namespace: String,
    labels: crate::model::Labels,
    requests: Resources,
    priority: i32,
    host: u32,
    anti_affinity: Vec<AffinityTerm>,
    group: Option<String>,
    terminating: bool,
}

/// Counts of workloads per topology domain, for one topology key.
enum DomainCounts {
    Host(HashMap<u32, i32>),
    Zone(Vec<i32>),
    Label(String, HashMap<String, i32>),
}

impl DomainCounts {
    fn new(cluster: &Cluster, key: &str) -> DomainCounts {
        match key {
            HOSTNAME_LABEL => DomainCounts::Host(HashMap::new()),
            ZONE_LABEL => DomainCounts::Zone(vec![0; cluster.zones.len()]),
            other => DomainCounts::Label(other.to_string(), HashMap::new()),
        }
    }

    /// The count in `host`'s domain; None when the host has no value for the key.
    fn get(&self, host_id: u32, host: &Host) -> Option<i32> {
        match self {
            DomainCounts::Host(counts) => Some(counts.get(&host_id).copied().unwrap_or(0)),
            DomainCounts::Zone(counts) => host.zone.map(|z| counts[z as usize]),
            DomainCounts::Label(key, counts) => host
                .info
                .labels
                .get(key)
                .map(|v| counts.get(v).copied().unwrap_or(0)),
        }
    }

    fn add(&mut self, host_id: u32, host: &Host, n: i32) {
        match self {
            DomainCounts::Host(counts) => *counts.entry(host_id).or_insert(0) += n,
            DomainCounts::Zone(counts) => {
                if let Some(z) = host.zone {
                    counts[z as usize] += n;
                }
            }
            DomainCounts::Label(key, counts) => {
                if let Some(v) = host.info.labels.get(key.as_str()) {
                    *counts.entry(v.clone()).or_insert(0) += n;
                }
            }
        }
    }
}

/// What one attempt precomputes from the whole cluster.
struct PreFilter {
    /// Per required affinity term: counts of matching workloads per domain; None when no
    /// workload matches anywhere and the workload matches its own term (the first of a group
    /// may go anywhere).
    affinity: Vec<Option<DomainCounts>>,
    /// Per required anti-affinity term: domains holding matching workloads.
    anti_affinity: Vec<DomainCounts>,
    /// Domains where an existing workload's anti-affinity rejects this one.
    existing_anti: Vec<DomainCounts>,
    /// Per DoNotSchedule spread constraint.
    spread: Vec<SpreadCheck>,
    /// Per ScheduleAnyway spread constraint: counts.
    soft_spread: Vec<DomainCounts>,
    preferred_affinity: Vec<(f64, DomainCounts)>,
    allowed_zones: Option<Vec<u32>>,
    group_hosts: Option<HashMap<u32, i32>>,
    group_zones: Option<Vec<i32>>,
    /// Hosts where nominated workloads of at least this priority hold resources.
    any_nominated: bool,
}

/// A DoNotSchedule spread constraint, ready to check hosts against.
struct SpreadCheck {
    max_skew: i32,
    counts: DomainCounts,
    /// The smallest count over eligible domains.
    min: i32,
    /// 1 when the workload matches the constraint's own selector (it counts itself).
    own: i32,
}

/// Reasons a host was rejected, counted for the unschedulable message.
#[derive(Default)]
struct Rejections {
    not_ready: usize,
    unschedulable: usize,
    zone: usize,
    node_affinity: usize,
    cpu: usize,
    memory: usize,
    pods: usize,
    affinity: usize,
    anti_affinity: usize,
    existing_anti_affinity: usize,
    spread: usize,
    taints: HashMap<String, usize>,
    resources_only: bool,
}

enum Verdict {
    Fits,
    Rejected,
}

/// The cache of hosts and placements. See the module documentation.
#[derive(Default)]
pub struct Cluster {
    hosts: Vec<Host>,
    host_ids: HashMap<String, u32>,
    present_hosts: usize,
    zones: Vec<String>,
    zone_ids: HashMap<String, u32>,
    placed: Vec<Option<Placed>>,
    free_slots: Vec<u32>,
    placed_ids: HashMap<String, u32>,
    /// label key → value → placed workloads carrying it.
    label_index: HashMap<String, HashMap<String, HashSet<u32>>>,
    by_namespace: HashMap<String, HashSet<u32>>,
    /// Placed workloads with required anti-affinity terms.
    with_anti_affinity: HashSet<u32>,
    groups: HashMap<String, (HashMap<u32, i32>, Vec<i32>)>,
    namespace_zones: HashMap<String, Vec<String>>,
    next_start: usize,
    scratch: Vec<(u32, [f64; 7])>,
    /// Present hosts by load (the share of CPU and memory allocated), least first.
    by_load: BTreeSet<(u64, u32)>,
}

impl Cluster {
    pub fn new() -> Cluster {
        Cluster::default()
    }

    /// How many hosts are registered.
    pub fn host_count(&self) -> usize {
        self.present_hosts
    }

    /// How many workloads are placed or assumed.
    pub fn placed_count(&self) -> usize {
        self.placed_ids.len()
    }

    fn zone_id(&mut self, zone: &str) -> u32 {
        if let Some(id) = self.zone_ids.get(zone) {
            return *id;
        }
        let id = self.zones.len() as u32;
        self.zones.push(zone.to_string());
        self.zone_ids.insert(zone.to_string(), id);
        for (_, zones) in self.groups.values_mut() {
            zones.push(0);
        }
        id
    }

    fn host_id(&mut self, name: &str) -> u32 {
        if let Some(id) = self.host_ids.get(name) {
            return *id;
        }
        let id = self.hosts.len() as u32;
        self.hosts.push(Host {
            info: HostInfo {
                name: name.to_string(),
                ..HostInfo::default()
            },
            present: false,
            zone: None,
            allocated: Resources::default(),
            load: 0,
            placed: Vec::new(),
            nominated: Vec::new(),
        });
        self.host_ids.insert(name.to_string(), id);
        id
    }

    /// Adds a host or replaces what is known of it. Workloads placed on it stay.
    ///
    /// Caveat: a host that changes zone keeps its workloads counted in the old zone for
    /// spreading until they are placed again; hosts do not move between zones in practice.
    pub fn upsert_host(&mut self, info: HostInfo) {
        let zone = info.labels.get(ZONE_LABEL).cloned();
        let zone = zone.map(|z| self.zone_id(&z));
        let id = self.host_id(&info.name);
        let host = &mut self.hosts[id as usize];
        if !host.present {
            self.present_hosts += 1;
        }
        host.present = true;
        host.zone = zone;
        host.info = info;
        self.reindex_load(id);
    }

    /// Files host `id` under its current load in [`Cluster::by_load`] (present hosts only).
    fn reindex_load(&mut self, id: u32) {
        let host = &mut self.hosts[id as usize];
        self.by_load.remove(&(host.load, id));
        if !host.present {
            return;
        }
        let (a, used) = (&host.info.allocatable, &host.allocated);
        let load = allocated_share(used.cpu_millis, a.cpu_millis)
            + allocated_share(used.memory_bytes, a.memory_bytes);
        host.load = (load * 1e9) as u64;
        self.by_load.insert((host.load, id));
    }

    /// Forgets a host. Workloads still placed on it stay accounted until they are removed.
    pub fn remove_host(&mut self, name: &str) {
        if let Some(&id) = self.host_ids.get(name) {
            let host = &mut self.hosts[id as usize];
            if host.present {
                self.present_hosts -= 1;
            }
            host.present = false;
            self.reindex_load(id);
        }
    }

    /// Sets the zones a namespace's workloads may use; None allows every zone.
    pub fn set_namespace_zones(&mut self, namespace: &str, zones: Option<Vec<String>>) {
        match zones {
            Some(zones) => {
                self.namespace_zones.insert(namespace.to_string(), zones);
            }
            None => {
                self.namespace_zones.remove(namespace);
            }
        }
    }

    /// Whether `key` is placed or assumed, and where.
    pub fn host_of(&self, key: &str) -> Option<&str> {
        let id = *self.placed_ids.get(key)?;
        let placed = self.placed[id as usize].as_ref()?;
        Some(&self.hosts[placed.host as usize].info.name)
    }

    /// Accounts `workload` on `host` — a placement just made (assumed until the binding is
    /// stored) or one read from the API. Replaces an earlier placement of the same key.
    pub fn assume(&mut self, workload: &Workload, host: &str) {
        self.place_on(workload, host, false);
    }

    /// [`Cluster::assume`] for a workload that is terminating: it still holds its resources
    /// but is not chosen as a preemption victim again.
    pub fn place_on(&mut self, workload: &Workload, host: &str, terminating: bool) {
        if let Some(current) = self.host_of(&workload.key) {
            if current == host {
                let id = self.placed_ids[&workload.key];
                if let Some(p) = self.placed[id as usize].as_mut() {
                    p.terminating = terminating;
                }
                return;
            }
            self.forget(&workload.key);
        }
        self.clear_nomination(&workload.key);
        let host_id = self.host_id(host);
        let slot = match self.free_slots.pop() {
            Some(slot) => slot,
            None => {
                self.placed.push(None);
                (self.placed.len() - 1) as u32
            }
        };
        let h = &mut self.hosts[host_id as usize];
        h.allocated.add(&workload.requests);
        h.placed.push(slot);
        let zone = h.zone;
        self.reindex_load(host_id);
        for (k, v) in &workload.labels {
            self.label_index
                .entry(k.clone())
                .or_default()
                .entry(v.clone())
                .or_default()
                .insert(slot);
        }
        self.by_namespace
            .entry(workload.namespace.clone())
            .or_default()
            .insert(slot);
        if !workload.anti_affinity.is_empty() {
            self.with_anti_affinity.insert(slot);
        }
        if let Some(group) = &workload.group {
            let zone_count = self.zones.len();
            let (hosts, zones) = self
                .groups
                .entry(group.clone())
                .or_insert_with(|| (HashMap::new(), vec![0; zone_count]));
            *hosts.entry(host_id).or_insert(0) += 1;
            if let Some(z) = zone {
                zones[z as usize] += 1;
            }
        }
        self.placed[slot as usize] = Some(Placed {
            key: workload.key.clone(),
            namespace: workload.namespace.clone(),
            labels: workload.labels.clone(),
            requests: workload.requests,
            priority: workload.priority,
            host: host_id,
            anti_affinity: workload.anti_affinity.clone(),
            group: workload.group.clone(),
            terminating,
        });
        self.placed_ids.insert(workload.key.clone(), slot);
    }

    /// Removes a placement (the workload finished, was deleted, or its binding failed).
    pub fn forget(&mut self, key: &str) {
        let Some(slot) = self.placed_ids.remove(key) else {
            return;
        };
        let Some(placed) = self.placed[slot as usize].take() else {
            return;
        };
        self.free_slots.push(slot);
        let host = &mut self.hosts[placed.host as usize];
        host.allocated.sub(&placed.requests);
        host.placed.retain(|s| *s != slot);
        let zone = host.zone;
        self.reindex_load(placed.host);
        for (k, v) in &placed.labels {
            if let Some(values) = self.label_index.get_mut(k)
                && let Some(set) = values.get_mut(v)
            {
                set.remove(&slot);
                if set.is_empty() {
                    values.remove(v);
                }
            }
        }
        if let Some(set) = self.by_namespace.get_mut(&placed.namespace) {
            set.remove(&slot);
        }
        self.with_anti_affinity.remove(&slot);
        if let Some(group) = &placed.group
            && let Some((hosts, zones)) = self.groups.get_mut(group)
        {
            if let Some(n) = hosts.get_mut(&placed.host) {
                *n -= 1;
                if *n == 0 {
                    hosts.remove(&placed.host);
                }
            }
            if let Some(z) = zone {
                zones[z as usize] -= 1;
            }
            if hosts.is_empty() {
                self.groups.remove(group);
            }
        }
    }

    /// Reserves `workload`'s requests on `host` against workloads of lower priority, while
    /// the victims of its preemption leave.
    pub fn nominate(&mut self, workload: &Workload, host: &str) {
        self.clear_nomination(&workload.key);
        let id = self.host_id(host);
        self.hosts[id as usize].nominated.push((
            workload.key.clone(),
            workload.priority,
            workload.requests,
        ));
    }

    pub fn clear_nomination(&mut self, key: &str) {
        for host in &mut self.hosts {
            if !host.nominated.is_empty() {
                host.nominated.retain(|(k, _, _)| k != key);
            }
        }
    }

    /// Every registered host's usage, for reports.
    pub fn usage(&self) -> Vec<HostUsage> {
        self.hosts
            .iter()
            .filter(|h| h.present)
            .map(|h| HostUsage {
                name: h.info.name.clone(),
                zone: h.zone.map(|z| self.zones[z as usize].clone()),
                allocatable: h.info.allocatable,
                allocated: h.allocated,
                ready: h.info.ready,
                schedulable: !h.info.unschedulable,
            })
            .collect()
    }

    /// Visits placed workloads that `selector` may match in `namespaces`, using the label
    /// index when the selector names a label value, else the namespace index.
    fn for_each_candidate(
        &self,
        namespaces: &Namespaces,
        selector: &Selector,
        mut f: impl FnMut(&Placed),
    ) {
        let mut visit = |slot: &u32| {
            if let Some(p) = self.placed[*slot as usize].as_ref()
                && namespaces.contains(&p.namespace)
                && selector.matches(&p.labels)
            {
                f(p)
            }
        };
        if let Some((k, v)) = selector.match_labels.first() {
            if let Some(set) = self.label_index.get(k).and_then(|vs| vs.get(v)) {
                set.iter().for_each(&mut visit);
            }
            return;
        }
        match namespaces {
            Namespaces::Named(names) => {
                for ns in names {
                    if let Some(set) = self.by_namespace.get(ns) {
                        set.iter().for_each(&mut visit);
                    }
                }
            }
            Namespaces::All => {
                for p in self.placed.iter().flatten() {
                    if selector.matches(&p.labels) {
                        f(p);
                    }
                }
            }
        }
    }

    fn count_matching(&self, term: &AffinityTerm) -> DomainCounts {
        let mut counts = DomainCounts::new(self, &term.topology_key);
        self.for_each_candidate(&term.namespaces, &term.selector, |p| {
            counts.add(p.host, &self.hosts[p.host as usize], 1)
        });
        counts
    }

    fn prefilter(&self, w: &Workload) -> PreFilter {
        let affinity = w
            .affinity
            .iter()
            .map(|term| {
                let counts = self.count_matching(term);
                let any = match &counts {
                    DomainCounts::Host(c) => c.values().any(|n| *n > 0),
                    DomainCounts::Zone(c) => c.iter().any(|n| *n > 0),
                    DomainCounts::Label(_, c) => c.values().any(|n| *n > 0),
                };
                let self_match = term.matches(&w.namespace, &w.labels);
                (any || !self_match).then_some(counts)
            })
            .collect();
        let anti_affinity = w
            .anti_affinity
            .iter()
            .map(|t| self.count_matching(t))
            .collect();
        // Existing workloads whose anti-affinity the new one would break.
        let mut existing: HashMap<&str, DomainCounts> = HashMap::new();
        for slot in &self.with_anti_affinity {
            let Some(p) = self.placed[*slot as usize].as_ref() else {
                continue;
            };
            for term in &p.anti_affinity {
                if term.matches(&w.namespace, &w.labels) {
                    existing
                        .entry(term.topology_key.as_str())
                        .or_insert_with(|| DomainCounts::new(self, &term.topology_key))
                        .add(p.host, &self.hosts[p.host as usize], 1);
                }
            }
        }
        let constrained_hosts = !w.node_selector.is_empty() || !w.required_node_terms.is_empty();
        let mut spread = Vec::new();
        let mut soft_spread = Vec::new();
        for c in &w.spread {
            let mut counts = DomainCounts::new(self, &c.topology_key);
            self.for_each_candidate(
                &Namespaces::Named(vec![w.namespace.clone()]),
                &c.selector,
                |p| counts.add(p.host, &self.hosts[p.host as usize], 1),
            );
            match c.when_unsatisfiable {
                WhenUnsatisfiable::ScheduleAnyway => soft_spread.push(counts),
                WhenUnsatisfiable::DoNotSchedule => {
                    let min = self.min_over_eligible(w, &counts, constrained_hosts);
                    let own = i32::from(c.selector.matches(&w.labels));
                    spread.push(SpreadCheck {
                        max_skew: c.max_skew.max(1),
                        counts,
                        min,
                        own,
                    });
                }
            }
        }
        let preferred_affinity = w
            .preferred_affinity
            .iter()
            .map(|(weight, t)| (f64::from(*weight), self.count_matching(t)))
            .chain(
                w.preferred_anti_affinity
                    .iter()
                    .map(|(weight, t)| (-f64::from(*weight), self.count_matching(t))),
            )
            .collect();
        let allowed_zones = self.namespace_zones.get(&w.namespace).map(|zones| {
            zones
                .iter()
                .filter_map(|z| self.zone_ids.get(z))
                .copied()
                .collect()
        });
        let (group_hosts, group_zones) = match w.group.as_ref().and_then(|g| self.groups.get(g)) {
            Some((hosts, zones)) => (Some(hosts.clone()), Some(zones.clone())),
            None => (None, None),
        };
        PreFilter {
            affinity,
            anti_affinity,
            existing_anti: existing.into_values().collect(),
            spread,
            soft_spread,
            preferred_affinity,
            allowed_zones,
            group_hosts,
            group_zones,
            any_nominated: self.hosts.iter().any(|h| !h.nominated.is_empty()),
        }
    }

    /// The smallest count over domains of hosts the workload could use by its node
    /// constraints (upstream's eligible domains for `maxSkew`).
    fn min_over_eligible(&self, w: &Workload, counts: &DomainCounts, constrained: bool) -> i32 {
        let mut min = i32::MAX;
        for (id, host) in self.hosts.iter().enumerate() {
            if !host.present || (constrained && !node_constraints_hold(w, host)) {
                continue;
            }
            if let Some(n) = counts.get(id as u32, host) {
                min = min.min(n);
                if min == 0 {
                    break;
                }
            }
        }
        if min == i32::MAX { 0 } else { min }
    }

    /// Checks one host. `check_resources` false skips the resource check (preemption asks
    /// whether anything but resources stands in the way).
    fn filter(
        &self,
        w: &Workload,
        pre: &PreFilter,
        id: u32,
        check_resources: bool,
        rejections: &mut Rejections,
    ) -> Verdict {
        let host = &self.hosts[id as usize];
        if !host.info.ready {
            rejections.not_ready += 1;
            return Verdict::Rejected;
        }
        if host.info.unschedulable {
            rejections.unschedulable += 1;
            return Verdict::Rejected;
        }
        if let Some(allowed) = &pre.allowed_zones
            && !host.zone.is_some_and(|z| allowed.contains(&z))
        {
            rejections.zone += 1;
            return Verdict::Rejected;
        }
        for taint in &host.info.taints {
            if taint.effect != TaintEffect::PreferNoSchedule && !tolerated(&w.tolerations, taint) {
                let text = format!(
                    "host(s) had untolerated taint {{{}: {}}}",
                    taint.key, taint.value
                );
                *rejections.taints.entry(text).or_insert(0) += 1;
                return Verdict::Rejected;
            }
        }
        if !node_constraints_hold(w, host) {
            rejections.node_affinity += 1;
            return Verdict::Rejected;
        }
        if check_resources {
            let mut used = host.allocated;
            if pre.any_nominated {
                for (key, priority, requests) in &host.nominated {
                    if *priority >= w.priority && *key != w.key {
                        used.add(requests);
                    }
                }
            }
            let free = |alloc: i64, used: i64| alloc - used;
            let a = &host.info.allocatable;
            let (cpu, mem, pods) = (
                w.requests.cpu_millis > free(a.cpu_millis, used.cpu_millis),
                w.requests.memory_bytes > free(a.memory_bytes, used.memory_bytes),
                w.requests.pods > free(a.pods, used.pods),
            );
            if cpu || mem || pods {
                rejections.cpu += usize::from(cpu);
                rejections.memory += usize::from(mem);
                rejections.pods += usize::from(pods);
                if self.fits_otherwise(pre, id) {
                    rejections.resources_only = true;
                }
                return Verdict::Rejected;
            }
        }
        if !self.inter_workload_fits(pre, id, rejections) {
            return Verdict::Rejected;
        }
        Verdict::Fits
    }

    fn fits_otherwise(&self, pre: &PreFilter, id: u32) -> bool {
        let mut ignored = Rejections::default();
        self.inter_workload_fits(pre, id, &mut ignored)
    }

    fn inter_workload_fits(&self, pre: &PreFilter, id: u32, rejections: &mut Rejections) -> bool {
        let host = &self.hosts[id as usize];
        for counts in pre.affinity.iter().flatten() {
            if counts.get(id, host).unwrap_or(0) == 0 {
                rejections.affinity += 1;
                return false;
            }
        }
        for counts in &pre.anti_affinity {
            if counts.get(id, host).unwrap_or(0) > 0 {
                rejections.anti_affinity += 1;
                return false;
            }
        }
        for counts in &pre.existing_anti {
            if counts.get(id, host).unwrap_or(0) > 0 {
                rejections.existing_anti_affinity += 1;
                return false;
            }
        }
        for check in &pre.spread {
            // A host without the topology key cannot be placed on under DoNotSchedule.
            let Some(n) = check.counts.get(id, host) else {
                rejections.spread += 1;
                return false;
            };
            if n + check.own - check.min > check.max_skew {
                rejections.spread += 1;
                return false;
            }
        }
        true
    }

    /// How many feasible hosts to find before scoring (upstream's adaptive percentage).
    fn feasible_to_find(&self) -> usize {
        let n = self.present_hosts;
        if n <= MIN_FEASIBLE_TO_FIND {
            return n;
        }
        let percent = (50usize.saturating_sub(n / 125)).max(5);
        (n * percent / 100).max(MIN_FEASIBLE_TO_FIND)
    }

    /// Picks a host for `workload`, or says why none fits. Does not account the workload:
    /// call [`Cluster::assume`] with the result.
    pub fn place(&mut self, w: &Workload) -> Result<String, Unschedulable> {
        let pre = self.prefilter(w);
        let total = self.hosts.len();
        let wanted = self.feasible_to_find();
        let mut rejections = Rejections::default();
        let mut feasible = std::mem::take(&mut self.scratch);
        feasible.clear();
        let start = if total == 0 {
            0
        } else {
            self.next_start % total
        };
        let mut visited = 0;
        for offset in 0..total {
            if feasible.len() >= wanted {
                break;
            }
            let id = ((start + offset) % total) as u32;
            visited += 1;
            if !self.hosts[id as usize].present {
                continue;
            }
            if let Verdict::Fits = self.filter(w, &pre, id, true, &mut rejections) {
                feasible.push((id, self.raw_scores(w, &pre, id)));
            }
        }
        self.next_start = start + visited;
        if visited < total {
            let sampled = |id: u32| (id as usize + total - start) % total < visited;
            let least = self
                .by_load
                .iter()
                .map(|&(_, id)| id)
                .filter(|&id| !sampled(id))
                .take(LEAST_LOADED_CANDIDATES);
            for id in least {
                if let Verdict::Fits = self.filter(w, &pre, id, true, &mut rejections) {
                    feasible.push((id, self.raw_scores(w, &pre, id)));
                }
            }
        }
        if feasible.is_empty() {
            self.scratch = feasible;
            return Err(self.unschedulable(rejections));
        }
        let best = best_of(&mut feasible);
        self.scratch = feasible;
        Ok(self.hosts[best as usize].info.name.clone())
    }

    fn raw_scores(&self, w: &Workload, pre: &PreFilter, id: u32) -> [f64; 7] {
        let host = &self.hosts[id as usize];
        let a = &host.info.allocatable;
        let cpu_req = if w.requests.cpu_millis == 0 {
            DEFAULT_SCORE_CPU_MILLIS
        } else {
            w.requests.cpu_millis
        };
        let mem_req = if w.requests.memory_bytes == 0 {
            DEFAULT_SCORE_MEMORY
        } else {
            w.requests.memory_bytes
        };
        let cpu = allocated_share(host.allocated.cpu_millis + cpu_req, a.cpu_millis);
        let mem = allocated_share(host.allocated.memory_bytes + mem_req, a.memory_bytes);
        let least = (2.0 - cpu - mem) * 50.0;
        let balanced = (1.0 - (cpu - mem).abs()) * 100.0;
        // Spreading: the workload's group, then its soft spread constraints; lower is better.
        let mut crowding = 0.0;
        if let Some(hosts) = &pre.group_hosts {
            crowding += f64::from(hosts.get(&id).copied().unwrap_or(0));
        }
        if let (Some(zones), Some(z)) = (&pre.group_zones, host.zone) {
            crowding += 2.0 * f64::from(zones[z as usize]);
        }
        for counts in &pre.soft_spread {
            crowding += f64::from(counts.get(id, host).unwrap_or(0));
        }
        let mut node_affinity = 0.0;
        for (weight, term) in &w.preferred_node_terms {
            if term.matches(&host.info.name, &host.info.labels) {
                node_affinity += f64::from(*weight);
            }
        }
        let mut pod_affinity = 0.0;
        for (weight, counts) in &pre.preferred_affinity {
            pod_affinity += weight * f64::from(counts.get(id, host).unwrap_or(0));
        }
        let untolerated = host
            .info
            .taints
            .iter()
            .filter(|t| t.effect == TaintEffect::PreferNoSchedule && !tolerated(&w.tolerations, t))
            .count() as f64;
        [
            least,
            balanced,
            crowding,
            node_affinity,
            pod_affinity,
            untolerated,
            0.0,
        ]
    }

    fn unschedulable(&self, r: Rejections) -> Unschedulable {
        if self.present_hosts == 0 {
            return Unschedulable {
                message: "no hosts available to schedule pods".into(),
                resources_only_somewhere: false,
            };
        }
        let mut parts: Vec<(usize, String)> = Vec::new();
        let mut push = |n: usize, text: &str| {
            if n > 0 {
                parts.push((n, text.to_string()));
            }
        };
        push(r.not_ready, "host(s) were not ready");
        push(r.unschedulable, "host(s) were unschedulable");
        push(r.zone, "not in the namespace's zones");
        push(
            r.node_affinity,
            "host(s) didn't match Pod's node affinity/selector",
        );
        push(r.cpu, "Insufficient cpu");
        push(r.memory, "Insufficient memory");
        push(r.pods, "Too many pods");
        push(r.affinity, "host(s) didn't match pod affinity rules");
        push(
            r.anti_affinity,
            "host(s) didn't match pod anti-affinity rules",
        );
        push(
            r.existing_anti_affinity,
            "host(s) didn't satisfy existing pods anti-affinity rules",
        );
        push(
            r.spread,
            "host(s) didn't match pod topology spread constraints",
        );
        for (text, n) in &r.taints {
            push(*n, text);
        }
        parts.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let mut message = format!("0/{} hosts are available: ", self.present_hosts);
        for (i, (n, text)) in parts.iter().enumerate() {
            if i > 0 {
                message.push_str(", ");
            }
            let _ = write!(message, "{n} {text}");
        }
        message.push('.');
        Unschedulable {
            message,
            resources_only_somewhere: r.resources_only,
        }
    }

    /// Finds lower-priority workloads whose removal lets `w` fit, as upstream's default
    /// preemption: on each host where only resources stand in the way, remove every
    /// lower-priority workload, then give back as many as still leave room, highest
    /// priority first. The host whose victims have the lowest top priority wins, then the one
    /// with the fewest victims.
    ///
    /// Caveat: only resources are freed this way; a host rejected for affinity, spread or
    /// taints is not made feasible by preemption. PodDisruptionBudgets are not consulted
    /// (upstream prefers, but does not require, hosts whose victims keep them).
    pub fn preempt(&self, w: &Workload) -> Option<Preemption> {
        let pre = self.prefilter(w);
        let mut best: Option<((i32, usize), u32, Vec<u32>)> = None;
        for (id, host) in self.hosts.iter().enumerate() {
            let id = id as u32;
            if !host.present {
                continue;
            }
            let mut ignored = Rejections::default();
            if let Verdict::Rejected = self.filter(w, &pre, id, false, &mut ignored) {
                continue;
            }
            let mut lower: Vec<u32> = host
                .placed
                .iter()
                .copied()
                .filter(|s| {
                    self.placed[*s as usize]
                        .as_ref()
                        .is_some_and(|p| p.priority < w.priority && !p.terminating)
                })
                .collect();
            let mut used = host.allocated;
            for (key, priority, requests) in &host.nominated {
                if *priority >= w.priority && *key != w.key {
                    used.add(requests);
                }
            }
            for s in &lower {
                used.sub(
                    &self.placed[*s as usize]
                        .as_ref()
                        .expect("filtered")
                        .requests,
                );
            }
            if !fits(&host.info.allocatable, &used, &w.requests) {
                continue;
            }
            // Reprieve the most important first.
            lower.sort_by_key(|s| {
                std::cmp::Reverse(
                    self.placed[*s as usize]
                        .as_ref()
                        .expect("filtered")
                        .priority,
                )
            });
            let mut victims = Vec::new();
            for s in lower {
                let p = self.placed[s as usize].as_ref().expect("filtered");
                let mut with = used;
                with.add(&p.requests);
                if fits(&host.info.allocatable, &with, &w.requests) {
                    used = with;
                } else {
                    victims.push(s);
                }
            }
            if victims.is_empty() {
                // Fits without preemption (resources freed by nominations or races).
                continue;
            }
            let top = victims
                .iter()
                .map(|s| {
                    self.placed[*s as usize]
                        .as_ref()
                        .expect("filtered")
                        .priority
                })
                .max()
                .unwrap_or(i32::MIN);
            let rank = (top, victims.len());
            if best.as_ref().is_none_or(|(r, _, _)| rank < *r) {
                best = Some((rank, id, victims));
            }
        }
        let (_, host, mut victims) = best?;
        victims.reverse();
        Some(Preemption {
            host: self.hosts[host as usize].info.name.clone(),
            victims: victims
                .iter()
                .map(|s| {
                    self.placed[*s as usize]
                        .as_ref()
                        .expect("filtered")
                        .key
                        .clone()
                })
                .collect(),
        })
    }
}

fn fits(allocatable: &Resources, used: &Resources, requests: &Resources) -> bool {
    requests.cpu_millis <= allocatable.cpu_millis - used.cpu_millis
        && requests.memory_bytes <= allocatable.memory_bytes - used.memory_bytes
        && requests.pods <= allocatable.pods - used.pods
}

fn node_constraints_hold(w: &Workload, host: &Host) -> bool {
    let labels = &host.info.labels;
    if !w.node_selector.iter().all(|(k, v)| match k.as_str() {
        HOSTNAME_LABEL => labels.get(k).map(String::as_str).unwrap_or(host.hostname()) == v,
        _ => labels.get(k).is_some_and(|x| x == v),
    }) {
        return false;
    }
    w.required_node_terms.is_empty()
        || w.required_node_terms
            .iter()
            .any(|t| t.matches(&host.info.name, labels))
}

/// Normalises each score across the feasible hosts and returns the best host.
fn best_of(feasible: &mut [(u32, [f64; 7])]) -> u32 {
    let mut min = [f64::MAX; 7];
    let mut max = [f64::MIN; 7];
    for (_, s) in feasible.iter() {
        for i in 0..7 {
            min[i] = min[i].min(s[i]);
            max[i] = max[i].max(s[i]);
        }
    }
    // Higher is better for least-allocated, balanced, node and pod affinity; lower is better
    // for crowding and untolerated soft taints.
    let normalise = |v: f64, i: usize, higher_better: bool| {
        let span = max[i] - min[i];
        if span <= f64::EPSILON {
            return 100.0;
        }
        let x = (v - min[i]) / span * 100.0;
        if higher_better { x } else { 100.0 - x }
    };
    let mut best = (feasible[0].0, f64::MIN);
    for (id, s) in feasible.iter() {
        // Resource scores are absolute (comparable across hosts as they are), the others
        // relative to the feasible set.
        let total = WEIGHT_LEAST_ALLOCATED * s[0]
            + WEIGHT_BALANCED * s[1]
            + WEIGHT_SPREAD * normalise(s[2], 2, false)
            + WEIGHT_NODE_AFFINITY * normalise(s[3], 3, true)
            + WEIGHT_POD_AFFINITY * normalise(s[4], 4, true)
            + WEIGHT_TAINTS * normalise(s[5], 5, false);
        if total > best.1 {
            best = (*id, total);
        }
    }
    best.0
}

#[cfg(test)]
mod tests;
