//! The disruption controller: keeps every PodDisruptionBudget's status current, so the
//! eviction subresource (and through it `kubectl drain` and the balancer) knows how many pods
//! may go.
//!
//! For each budget, from the pods its selector matches in its namespace:
//! - `expectedPods`: with an integer `minAvailable`, the number of matching pods; otherwise
//!   (a percentage, or `maxUnavailable`) the replicas the pods' controllers want — the sum of
//!   `spec.replicas` over their distinct controlling ReplicaSets, StatefulSets or
//!   ReplicationControllers (a pod without such a controller counts as one), as upstream;
//! - `currentHealthy`: matching pods that are Ready, not terminating, and not already in
//!   `disruptedPods` (evicted a moment ago, not yet gone);
//! - `desiredHealthy`: `minAvailable` (scaled, rounding up), or `expectedPods` minus
//!   `maxUnavailable` (scaled, rounding up);
//! - `disruptionsAllowed`: `currentHealthy − desiredHealthy`, at least 0;
//! - `disruptedPods`: entries are dropped once their pod is gone or terminating, or after two
//!   minutes (upstream's deletion timeout);
//! - `observedGeneration`, and the `DisruptionAllowed` condition.
//!
//! The status write carries the resource version it was computed from, so it never undoes a
//! concurrent eviction's charge: on a conflict the budget is recomputed from the newer state.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use kube::core::SelectorExt;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tokio::sync::Notify;

use crate::informers::{self, Informers};
use crate::shared::{self, pod_ready, scaled_value};

/// How long an evicted pod stays in `disruptedPods` if it does not go.
const DISRUPTED_TIMEOUT: SignedDuration = SignedDuration::from_secs(120);
/// Recompute at least this often (for `disruptedPods` expiry).
const RESYNC: Duration = Duration::from_secs(10);
/// Changes arriving within this window are handled together.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Runs the controller until the task is dropped.
pub async fn run(client: Client, informers: Arc<Informers>) {
    let changed = Arc::new(Notify::new());
    let budgets: Store<PodDisruptionBudget> = informers.store(
        Api::all(client.clone()),
        watcher::Config::default(),
        changed.clone(),
    );
    let pods: Store<Pod> = informers.store(
        Api::all(client.clone()),
        watcher::Config::default(),
        changed.clone(),
    );
    if !(informers::ready(&budgets).await && informers::ready(&pods).await) {
        return;
    }
    loop {
        let all_budgets = budgets.state();
        if !all_budgets.is_empty() {
            let all_pods = pods.state();
            let mut by_namespace: HashMap<String, Vec<&Pod>> = HashMap::new();
            for pod in &all_pods {
                by_namespace
                    .entry(pod.namespace().unwrap_or_default())
                    .or_default()
                    .push(pod);
            }
            let mut scales = ScaleCache::default();
            for budget in &all_budgets {
                let ns = budget.namespace().unwrap_or_default();
                let pods = by_namespace.get(&ns).map(Vec::as_slice).unwrap_or(&[]);
                if let Err(error) = reconcile(&client, budget, pods, &mut scales).await {
                    tracing::debug!(%error, budget = %budget.name_any(), "updating a disruption budget");
                }
            }
        }
        tokio::select! {
            _ = changed.notified() => tokio::time::sleep(DEBOUNCE).await,
            _ = tokio::time::sleep(RESYNC) => {}
        }
    }
}

/// Controllers' wanted replicas, read once per pass.
#[derive(Default)]
struct ScaleCache {
    replicas: HashMap<(String, String, String), Option<i32>>,
}

impl ScaleCache {
    async fn replicas(&mut self, client: &Client, ns: &str, kind: &str, name: &str) -> Option<i32> {
        let key = (ns.to_string(), kind.to_string(), name.to_string());
        if let Some(r) = self.replicas.get(&key) {
            return *r;
        }
        let r = match kind {
            "ReplicaSet" => {
                wanted_replicas::<ReplicaSet>(client, ns, name, |o| o.spec?.replicas).await
            }
            "StatefulSet" => {
                wanted_replicas::<StatefulSet>(client, ns, name, |o| o.spec?.replicas).await
            }
            "ReplicationController" => {
                wanted_replicas::<ReplicationController>(client, ns, name, |o| o.spec?.replicas)
                    .await
            }
            _ => None,
        };
        self.replicas.insert(key, r);
        r
    }
}

/// The replicas controller `ns/name` of kind `K` wants (1 when its spec leaves it unset, as the
/// API defaults it); None when it is gone or cannot be read.
async fn wanted_replicas<K>(
    client: &Client,
    ns: &str,
    name: &str,
    spec_replicas: impl FnOnce(K) -> Option<i32>,
) -> Option<i32>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    Api::<K>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .map(|o| spec_replicas(o).unwrap_or(1))
}

/// The figures of a budget's status, from its spec and pods.
#[derive(Debug, PartialEq, Eq)]
pub struct Figures {
    pub expected: i32,
    pub current_healthy: i32,
    pub desired_healthy: i32,
    pub disruptions_allowed: i32,
}

/// Computes the figures (see the module documentation). `expected_from_controllers` is the
/// replicas the matching pods' controllers want.
pub fn figures(
    min_available: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    matching: i32,
    expected_from_controllers: i32,
    current_healthy: i32,
) -> Figures {
    let (expected, desired) = match (min_available, max_unavailable) {
        (Some(IntOrString::Int(n)), _) => (matching, *n),
        (Some(min @ IntOrString::String(_)), _) => {
            let expected = expected_from_controllers;
            (expected, scaled_value(Some(min), expected, true))
        }
        (None, Some(max)) => {
            let expected = expected_from_controllers;
            (
                expected,
                (expected - scaled_value(Some(max), expected, true)).max(0),
            )
        }
        // Neither: nothing is required (upstream computes a desired count of 0 too).
        (None, None) => (matching, 0),
    };
    Figures {
        expected,
        current_healthy,
        desired_healthy: desired,
        disruptions_allowed: (current_healthy - desired).max(0),
    }
}

async fn reconcile(
    client: &Client,
    budget: &PodDisruptionBudget,
    pods: &[&Pod],
    scales: &mut ScaleCache,
) -> Result<(), kube::Error> {
    let ns = budget.namespace().unwrap_or_default();
    let spec = budget.spec.clone().unwrap_or_default();
    let selector = spec
        .selector
        .as_ref()
        .and_then(|s| kube::core::Selector::try_from(s.clone()).ok());
    let matching: Vec<&Pod> = match &selector {
        Some(selector) => pods
            .iter()
            .copied()
            .filter(|p| selector.matches(p.labels()))
            .collect(),
        None => Vec::new(),
    };
    let now = Timestamp::now();
    let old_status = budget.status.clone().unwrap_or_default();
    let present: HashSet<String> = matching
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| p.name_any())
        .collect();
    let disrupted: BTreeMap<String, Time> = old_status
        .disrupted_pods
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(pod, at)| present.contains(pod) && now.duration_since(at.0) < DISRUPTED_TIMEOUT)
        .collect();
    let healthy = matching
        .iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && pod_ready(p)
                && !disrupted.contains_key(&p.name_any())
        })
        .count() as i32;
    let mut controllers: HashSet<(String, String)> = HashSet::new();
    let mut uncontrolled = 0;
    for pod in &matching {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        match pod
            .owner_references()
            .iter()
            .find(|r| r.controller == Some(true))
        {
            Some(owner) => {
                controllers.insert((owner.kind.clone(), owner.name.clone()));
            }
            None => uncontrolled += 1,
        }
    }
    let mut from_controllers = uncontrolled;
    for (kind, name) in &controllers {
        from_controllers += scales.replicas(client, &ns, kind, name).await.unwrap_or(1);
    }
    let active = matching.iter().filter(|p| shared::pod_active(p)).count() as i32;
    let f = figures(
        spec.min_available.as_ref(),
        spec.max_unavailable.as_ref(),
        active,
        from_controllers,
        healthy,
    );
    let allowed = f.disruptions_allowed > 0;
    let condition_changed = old_status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "DisruptionAllowed")
        .is_none_or(|c| (c.status == "True") != allowed);
    let condition = Condition {
        type_: "DisruptionAllowed".into(),
        status: if allowed { "True" } else { "False" }.into(),
        reason: if allowed {
            "SufficientPods"
        } else {
            "InsufficientPods"
        }
        .into(),
        message: String::new(),
        observed_generation: budget.metadata.generation,
        last_transition_time: if condition_changed {
            Time(now)
        } else {
            old_status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "DisruptionAllowed")
                .map(|c| c.last_transition_time.clone())
                .unwrap_or(Time(now))
        },
    };
    let status = PodDisruptionBudgetStatus {
        current_healthy: f.current_healthy,
        desired_healthy: f.desired_healthy,
        expected_pods: f.expected,
        disruptions_allowed: f.disruptions_allowed,
        disrupted_pods: (!disrupted.is_empty()).then_some(disrupted),
        observed_generation: budget.metadata.generation,
        conditions: Some(vec![condition]),
    };
    if budget.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let mut next = budget.clone();
    next.status = Some(status);
    let api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    // replace_status carries the resource version read: a concurrent eviction's charge wins
    // (409) and the budget is recomputed from it.
    match api
        .replace_status(&budget.name_any(), &PostParams::default(), &next)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 || status.code == 404 => Ok(()),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_figures_follow_upstream() {
        let int = IntOrString::Int;
        let pct = |s: &str| IntOrString::String(s.into());
        // minAvailable 2 of 3 healthy: one may go.
        assert_eq!(figures(Some(&int(2)), None, 3, 3, 3).disruptions_allowed, 1);
        assert_eq!(figures(Some(&int(2)), None, 3, 3, 2).disruptions_allowed, 0);
        // minAvailable 50% of 3 wanted: 2 needed (rounded up).
        let f = figures(Some(&pct("50%")), None, 3, 3, 3);
        assert_eq!((f.desired_healthy, f.disruptions_allowed), (2, 1));
        // maxUnavailable 1 of 4 wanted: 3 needed.
        let f = figures(None, Some(&int(1)), 4, 4, 4);
        assert_eq!(
            (f.expected, f.desired_healthy, f.disruptions_allowed),
            (4, 3, 1)
        );
        // maxUnavailable 0: nothing may go.
        assert_eq!(figures(None, Some(&int(0)), 4, 4, 4).disruptions_allowed, 0);
        // maxUnavailable 25% of 5 wanted: rounds up to 2 → 3 needed.
        assert_eq!(figures(None, Some(&pct("25%")), 5, 5, 5).desired_healthy, 3);
    }
}
