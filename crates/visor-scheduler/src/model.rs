//! What placement reasons about, independent of the API types: resources, labels and
//! selectors, taints and tolerations, affinity terms, spread constraints, the [`Workload`] to
//! place and the [`HostInfo`] a host reports.
//!
//! A workload is anything with requests — a pod today, a VM tomorrow — so nothing here names a
//! Pod; [`crate::convert`] turns API objects into these forms.

use std::collections::BTreeMap;

/// The label naming a host's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// The label naming a host itself.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// Amounts of the resources placement accounts for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU in thousandths of a core.
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    /// How many workloads; a host's allocatable says how many it may run.
    pub pods: i64,
}

impl Resources {
    pub fn new(cpu_millis: i64, memory_bytes: i64, pods: i64) -> Resources {
        Resources {
            cpu_millis,
            memory_bytes,
            pods,
        }
    }

    pub fn add(&mut self, other: &Resources) {
        self.cpu_millis += other.cpu_millis;
        self.memory_bytes += other.memory_bytes;
        self.pods += other.pods;
    }

    pub fn sub(&mut self, other: &Resources) {
        self.cpu_millis -= other.cpu_millis;
        self.memory_bytes -= other.memory_bytes;
        self.pods -= other.pods;
    }
}

/// How a label requirement compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
    /// The label's value, read as an integer, is greater than the single given value.
    Gt,
    /// The label's value, read as an integer, is less than the single given value.
    Lt,
}

/// One `key op values` requirement, as in label selectors and node selector terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: Vec<String>,
}

impl Requirement {
    /// Whether a label value (None: the label is absent) satisfies the requirement.
    pub fn matches(&self, value: Option<&str>) -> bool {
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.iter().any(|x| x == v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.iter().any(|x| x == v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::Gt | Operator::Lt => {
                let (Some(v), Some(bound)) = (value, self.values.first()) else {
                    return false;
                };
                let (Ok(v), Ok(bound)) = (v.parse::<i64>(), bound.parse::<i64>()) else {
                    return false;
                };
                if self.operator == Operator::Gt {
                    v > bound
                } else {
                    v < bound
                }
            }
        }
    }
}

/// Labels, sorted by key.
pub type Labels = BTreeMap<String, String>;

/// A label selector: every `match_labels` pair and every expression must hold. An empty
/// selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    pub match_labels: Vec<(String, String)>,
    pub expressions: Vec<Requirement>,
}

impl Selector {
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|x| x == v))
            && self
                .expressions
                .iter()
                .all(|r| r.matches(labels.get(&r.key).map(String::as_str)))
    }

    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.expressions.is_empty()
    }
}

/// One term of a node affinity: its expressions on labels and on fields (only
/// `metadata.name`, as upstream) must all hold. A term with neither matches no host, as
/// upstream's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeTerm {
    pub expressions: Vec<Requirement>,
    pub fields: Vec<Requirement>,
}

impl NodeTerm {
    pub fn matches(&self, name: &str, labels: &Labels) -> bool {
        if self.expressions.is_empty() && self.fields.is_empty() {
            return false;
        }
        self.expressions
            .iter()
            .all(|r| r.matches(labels.get(&r.key).map(String::as_str)))
            && self.fields.iter().all(|r| {
                let value = (r.key == "metadata.name").then_some(name);
                r.matches(value)
            })
    }
}

/// Which namespaces an inter-workload affinity term looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Namespaces {
    /// Those named (upstream: `namespaces`, defaulting to the workload's own).
    Named(Vec<String>),
    /// Every namespace (upstream: an empty `namespaceSelector`).
    All,
}

impl Namespaces {
    pub fn contains(&self, namespace: &str) -> bool {
        match self {
            Namespaces::Named(names) => names.iter().any(|n| n == namespace),
            Namespaces::All => true,
        }
    }
}

/// An inter-workload (pod) affinity or anti-affinity term.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AffinityTerm {
    pub selector: Selector,
    pub namespaces: Namespaces,
    /// The host label whose value names the domain ("same host", "same zone").
    pub topology_key: String,
}

impl AffinityTerm {
    pub fn matches(&self, namespace: &str, labels: &Labels) -> bool {
        self.namespaces.contains(namespace) && self.selector.matches(labels)
    }
}

/// What a taint does to workloads that do not tolerate it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

impl TaintEffect {
    pub fn parse(effect: &str) -> Option<TaintEffect> {
        Some(match effect {
            "NoSchedule" => TaintEffect::NoSchedule,
            "PreferNoSchedule" => TaintEffect::PreferNoSchedule,
            "NoExecute" => TaintEffect::NoExecute,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            TaintEffect::NoSchedule => "NoSchedule",
            TaintEffect::PreferNoSchedule => "PreferNoSchedule",
            TaintEffect::NoExecute => "NoExecute",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Taint {
    pub key: String,
    pub value: String,
    pub effect: TaintEffect,
}

/// A toleration, as upstream: an empty key with `Exists` tolerates everything; no effect
/// tolerates every effect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Toleration {
    pub key: String,
    /// `Exists` (true) or `Equal` (false).
    pub exists: bool,
    pub value: String,
    pub effect: Option<TaintEffect>,
    /// For `NoExecute`: how long the workload may stay once tainted; None is forever.
    pub seconds: Option<i64>,
}

impl Toleration {
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if self.effect.is_some_and(|e| e != taint.effect) {
            return false;
        }
        if self.key.is_empty() {
            return self.exists;
        }
        self.key == taint.key && (self.exists || self.value == taint.value)
    }
}

/// Whether `tolerations` tolerate `taint`.
pub fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| t.tolerates(taint))
}

/// What a spread constraint does when it cannot be met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenUnsatisfiable {
    DoNotSchedule,
    ScheduleAnyway,
}

/// A topology spread constraint: the workloads its selector matches may differ in count
/// between any two domains by at most `max_skew`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpreadConstraint {
    pub max_skew: i32,
    pub topology_key: String,
    pub when_unsatisfiable: WhenUnsatisfiable,
    pub selector: Selector,
}

/// Something to place: a pod, later a VM.
#[derive(Clone, Debug, Default)]
pub struct Workload {
    /// Unique among workloads: `namespace/name` for pods.
    pub key: String,
    pub namespace: String,
    pub labels: Labels,
    pub requests: Resources,
    /// Higher preempts lower.
    pub priority: i32,
    /// Required label values on the host (`nodeSelector`).
    pub node_selector: Vec<(String, String)>,
    /// Any one must match (required node affinity); empty means no constraint.
    pub required_node_terms: Vec<NodeTerm>,
    pub preferred_node_terms: Vec<(i32, NodeTerm)>,
    pub affinity: Vec<AffinityTerm>,
    pub anti_affinity: Vec<AffinityTerm>,
    pub preferred_affinity: Vec<(i32, AffinityTerm)>,
    pub preferred_anti_affinity: Vec<(i32, AffinityTerm)>,
    pub tolerations: Vec<Toleration>,
    pub spread: Vec<SpreadConstraint>,
    /// Workloads of one group (a pod's controlling owner) are spread across hosts and zones
    /// by the scores, as upstream's default spreading does.
    pub group: Option<String>,
}

/// What a host reports: the form [`crate::Cluster::upsert_host`] takes.
#[derive(Clone, Debug, Default)]
pub struct HostInfo {
    pub name: String,
    pub labels: Labels,
    pub taints: Vec<Taint>,
    pub allocatable: Resources,
    /// The `Ready` condition is `True`.
    pub ready: bool,
    /// Cordoned (`spec.unschedulable`): takes no new work.
    pub unschedulable: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(key: &str, operator: Operator, values: &[&str]) -> Requirement {
        Requirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn requirements_follow_upstream_operators() {
        assert!(req("a", Operator::In, &["x", "y"]).matches(Some("y")));
        assert!(!req("a", Operator::In, &["x"]).matches(None));
        assert!(req("a", Operator::NotIn, &["x"]).matches(None));
        assert!(!req("a", Operator::NotIn, &["x"]).matches(Some("x")));
        assert!(req("a", Operator::Exists, &[]).matches(Some("")));
        assert!(req("a", Operator::DoesNotExist, &[]).matches(None));
        assert!(req("a", Operator::Gt, &["5"]).matches(Some("6")));
        assert!(!req("a", Operator::Gt, &["5"]).matches(Some("5")));
        assert!(!req("a", Operator::Gt, &["5"]).matches(Some("six")));
        assert!(req("a", Operator::Lt, &["5"]).matches(Some("-1")));
        assert!(!req("a", Operator::Lt, &["5"]).matches(None));
    }

    #[test]
    fn tolerations_match_like_upstream() {
        let taint = Taint {
            key: "k".into(),
            value: "v".into(),
            effect: TaintEffect::NoSchedule,
        };
        let equal = Toleration {
            key: "k".into(),
            exists: false,
            value: "v".into(),
            effect: None,
            seconds: None,
        };
        assert!(equal.tolerates(&taint));
        let wrong_value = Toleration {
            value: "w".into(),
            ..equal.clone()
        };
        assert!(!wrong_value.tolerates(&taint));
        let wrong_effect = Toleration {
            effect: Some(TaintEffect::NoExecute),
            ..equal.clone()
        };
        assert!(!wrong_effect.tolerates(&taint));
        let everything = Toleration {
            key: String::new(),
            exists: true,
            value: String::new(),
            effect: None,
            seconds: None,
        };
        assert!(everything.tolerates(&taint));
    }

    #[test]
    fn an_empty_node_term_matches_nothing() {
        let labels = Labels::new();
        assert!(!NodeTerm::default().matches("h", &labels));
        let by_name = NodeTerm {
            expressions: vec![],
            fields: vec![req("metadata.name", Operator::In, &["h"])],
        };
        assert!(by_name.matches("h", &labels));
        assert!(!by_name.matches("g", &labels));
    }
}
