//! Policy rules: parsing them from Role and ClusterRole objects, matching them against a
//! request, and deciding whether one set of rules covers another (escalation prevention).
//!
//! Matching follows upstream's RBAC semantics: `*` matches any verb, group or resource;
//! `*/SUB` matches subresource SUB of any resource; an empty `resourceNames` matches every
//! name; a non-resource URL ending in `*` matches by prefix.

use serde_json::{Value, json};

use super::Attributes;

/// One parsed `PolicyRule`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub verbs: Vec<String>,
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub resource_names: Vec<String>,
    pub non_resource_urls: Vec<String>,
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn has(list: &[String], item: &str) -> bool {
    list.iter().any(|s| s == item)
}

impl Rule {
    pub fn from_value(rule: &Value) -> Rule {
        Rule {
            verbs: strings(&rule["verbs"]),
            api_groups: strings(&rule["apiGroups"]),
            resources: strings(&rule["resources"]),
            resource_names: strings(&rule["resourceNames"]),
            non_resource_urls: strings(&rule["nonResourceURLs"]),
        }
    }

    /// The rules of a Role or ClusterRole object.
    pub fn all_from(role: &Value) -> Vec<Rule> {
        role["rules"]
            .as_array()
            .map(|rules| rules.iter().map(Rule::from_value).collect())
            .unwrap_or_default()
    }

    /// The rule in its API form, fields empty upstream omits left out.
    pub fn to_value(&self) -> Value {
        let mut rule = json!({ "verbs": self.verbs });
        if !self.api_groups.is_empty() {
            rule["apiGroups"] = json!(self.api_groups);
        }
        if !self.resources.is_empty() {
            rule["resources"] = json!(self.resources);
        }
        if !self.resource_names.is_empty() {
            rule["resourceNames"] = json!(self.resource_names);
        }
        if !self.non_resource_urls.is_empty() {
            rule["nonResourceURLs"] = json!(self.non_resource_urls);
        }
        rule
    }

    fn verb_matches(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == "*" || v == verb)
    }

    fn group_matches(&self, group: &str) -> bool {
        self.api_groups.iter().any(|g| g == "*" || g == group)
    }

    fn resource_matches(&self, resource: &str, subresource: &str) -> bool {
        self.resources.iter().any(|r| {
            if r == "*" {
                return true;
            }
            if subresource.is_empty() {
                return r == resource;
            }
            // `resource/subresource` without building the combined string per request.
            let combined = r.len() == resource.len() + 1 + subresource.len()
                && r.starts_with(resource)
                && r.as_bytes()[resource.len()] == b'/'
                && r.ends_with(subresource);
            combined || r.strip_prefix("*/") == Some(subresource)
        })
    }

    fn name_matches(&self, name: &str) -> bool {
        self.resource_names.is_empty() || has(&self.resource_names, name)
    }

    fn url_matches(&self, path: &str) -> bool {
        self.non_resource_urls.iter().any(|u| {
            u == "*"
                || u == path
                || u.strip_suffix('*')
                    .is_some_and(|prefix| path.starts_with(prefix))
        })
    }

    /// Whether this rule allows the request.
    pub fn allows(&self, attrs: &Attributes) -> bool {
        if !self.verb_matches(&attrs.verb) {
            return false;
        }
        if attrs.resource_request {
            self.group_matches(&attrs.api_group)
                && self.resource_matches(&attrs.resource, &attrs.subresource)
                && self.name_matches(&attrs.name)
        } else {
            self.url_matches(&attrs.path)
        }
    }

    /// Splits the rule into rules of one verb, group, resource and name (or one verb and URL)
    /// each, so coverage can be checked piece by piece as upstream does.
    fn breakdown(&self) -> Vec<Rule> {
        let mut out = Vec::new();
        let one = |s: &String| vec![s.clone()];
        for verb in &self.verbs {
            for group in &self.api_groups {
                for resource in &self.resources {
                    if self.resource_names.is_empty() {
                        out.push(Rule {
                            verbs: one(verb),
                            api_groups: one(group),
                            resources: one(resource),
                            ..Rule::default()
                        });
                    }
                    for name in &self.resource_names {
                        out.push(Rule {
                            verbs: one(verb),
                            api_groups: one(group),
                            resources: one(resource),
                            resource_names: one(name),
                            ..Rule::default()
                        });
                    }
                }
            }
            for url in &self.non_resource_urls {
                out.push(Rule {
                    verbs: one(verb),
                    non_resource_urls: one(url),
                    ..Rule::default()
                });
            }
        }
        out
    }

    /// Whether this rule grants everything `atom` (one piece of [`Rule::breakdown`]) grants.
    /// A wildcard in `atom` is covered only by the same wildcard.
    fn covers(&self, atom: &Rule) -> bool {
        let verbs = atom
            .verbs
            .iter()
            .all(|v| has(&self.verbs, "*") || has(&self.verbs, v));
        if !verbs {
            return false;
        }
        if !atom.non_resource_urls.is_empty() {
            return atom.non_resource_urls.iter().all(|url| {
                self.non_resource_urls.iter().any(|own| {
                    own == "*"
                        || own == url
                        || own.strip_suffix('*').is_some_and(|p| url.starts_with(p))
                })
            });
        }
        let groups = atom
            .api_groups
            .iter()
            .all(|g| has(&self.api_groups, "*") || has(&self.api_groups, g));
        let resources = atom.resources.iter().all(|r| {
            has(&self.resources, "*")
                || has(&self.resources, r)
                || r.split_once('/').is_some_and(|(_, sub)| {
                    self.resources
                        .iter()
                        .any(|own| own.strip_prefix("*/") == Some(sub))
                })
        });
        let names = self.resource_names.is_empty()
            || (!atom.resource_names.is_empty()
                && atom
                    .resource_names
                    .iter()
                    .all(|n| has(&self.resource_names, n)));
        groups && resources && names
    }

    /// Upstream's compact form for escalation messages:
    /// `{APIGroups:["apps"], Resources:["deployments"], Verbs:["create"]}`.
    pub fn compact_string(&self) -> String {
        let quoted = |list: &[String]| {
            let items: Vec<String> = list.iter().map(|s| format!("{s:?}")).collect();
            format!("[{}]", items.join(" "))
        };
        let mut parts = Vec::new();
        for (label, list) in [
            ("APIGroups", &self.api_groups),
            ("Resources", &self.resources),
            ("NonResourceURLs", &self.non_resource_urls),
            ("ResourceNames", &self.resource_names),
            ("Verbs", &self.verbs),
        ] {
            if !list.is_empty() {
                parts.push(format!("{label}:{}", quoted(list)));
            }
        }
        format!("{{{}}}", parts.join(", "))
    }
}

/// Whether `owner` rules grant everything `requested` rules grant. Returns the pieces not
/// covered, merged per group/resource/name so the message stays short.
pub fn covers(owner: &[impl AsRef<Rule>], requested: &[Rule]) -> Result<(), Vec<Rule>> {
    let mut missing: Vec<Rule> = Vec::new();
    for atom in requested.iter().flat_map(Rule::breakdown) {
        if owner.iter().any(|o| o.as_ref().covers(&atom)) {
            continue;
        }
        let same_target = missing.iter_mut().find(|m| {
            m.api_groups == atom.api_groups
                && m.resources == atom.resources
                && m.resource_names == atom.resource_names
                && m.non_resource_urls == atom.non_resource_urls
        });
        match same_target {
            Some(m) => {
                if !m.verbs.contains(&atom.verbs[0]) {
                    m.verbs.push(atom.verbs[0].clone());
                }
            }
            None => missing.push(atom),
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing)
    }
}

impl AsRef<Rule> for Rule {
    fn as_ref(&self) -> &Rule {
        self
    }
}

/// Whether a label set satisfies a `metav1.LabelSelector` (matchLabels and matchExpressions).
/// An empty selector matches everything, as upstream.
pub fn selector_matches(selector: &Value, labels: &serde_json::Map<String, Value>) -> bool {
    let label = |k: &str| labels.get(k).and_then(Value::as_str);
    if let Some(match_labels) = selector["matchLabels"].as_object()
        && match_labels.iter().any(|(k, v)| label(k) != v.as_str())
    {
        return false;
    }
    let expressions = selector["matchExpressions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    expressions.iter().all(|e| {
        let key = e["key"].as_str().unwrap_or_default();
        let values = strings(&e["values"]);
        match (e["operator"].as_str().unwrap_or_default(), label(key)) {
            ("In", Some(v)) => has(&values, v),
            ("NotIn", Some(v)) => !has(&values, v),
            ("NotIn", None) | ("DoesNotExist", None) | ("Exists", Some(_)) => true,
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(v: Value) -> Rule {
        Rule::from_value(&v)
    }

    fn res(verb: &str, group: &str, resource: &str, sub: &str, name: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            resource_request: true,
            api_group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: "ns".into(),
            name: name.into(),
            path: String::new(),
        }
    }

    fn url(verb: &str, path: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            path: path.into(),
            ..Attributes::default()
        }
    }

    #[test]
    fn wildcards_and_exact_matches() {
        let all = rule(json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}));
        assert!(all.allows(&res("delete", "apps", "deployments", "scale", "x")));
        assert!(!all.allows(&url("get", "/healthz")));
        let cm =
            rule(json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["configmaps"]}));
        assert!(cm.allows(&res("list", "", "configmaps", "", "")));
        assert!(!cm.allows(&res("create", "", "configmaps", "", "")));
        assert!(!cm.allows(&res("list", "apps", "configmaps", "", "")));
        assert!(!cm.allows(&res("list", "", "secrets", "", "")));
    }

    #[test]
    fn subresources() {
        let status =
            rule(json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods/status"]}));
        assert!(status.allows(&res("get", "", "pods", "status", "p")));
        assert!(!status.allows(&res("get", "", "pods", "", "p")));
        assert!(!status.allows(&res("get", "", "pods", "log", "p")));
        let pods = rule(json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}));
        assert!(!pods.allows(&res("get", "", "pods", "status", "p")));
        let any_scale =
            rule(json!({"verbs": ["update"], "apiGroups": ["apps"], "resources": ["*/scale"]}));
        assert!(any_scale.allows(&res("update", "apps", "deployments", "scale", "d")));
        assert!(!any_scale.allows(&res("update", "apps", "deployments", "", "d")));
        assert!(!any_scale.allows(&res("update", "apps", "deployments", "status", "d")));
    }

    #[test]
    fn resource_names() {
        let named = rule(
            json!({"verbs": ["get", "update"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["a", "b"]}),
        );
        assert!(named.allows(&res("get", "", "configmaps", "", "a")));
        assert!(!named.allows(&res("get", "", "configmaps", "", "c")));
        // A list has no name; resourceNames never allow it.
        assert!(!named.allows(&res("list", "", "configmaps", "", "")));
    }

    #[test]
    fn non_resource_urls() {
        let r = rule(json!({"verbs": ["get"], "nonResourceURLs": ["/healthz", "/apis/*"]}));
        assert!(r.allows(&url("get", "/healthz")));
        assert!(!r.allows(&url("get", "/healthz/etcd")));
        assert!(r.allows(&url("get", "/apis/apps/v1")));
        assert!(!r.allows(&url("get", "/apis")));
        assert!(!r.allows(&url("post", "/healthz")));
        assert!(!r.allows(&res("get", "", "healthz", "", "")));
        let star = rule(json!({"verbs": ["*"], "nonResourceURLs": ["*"]}));
        assert!(star.allows(&url("put", "/anything")));
    }

    #[test]
    fn coverage() {
        let owner = vec![
            rule(
                json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods", "configmaps"]}),
            ),
            rule(json!({"verbs": ["get"], "apiGroups": ["apps"], "resources": ["*/scale"]})),
            rule(json!({"verbs": ["get"], "nonResourceURLs": ["/apis/*"]})),
        ];
        assert!(
            covers(
                &owner,
                &[rule(
                    json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]})
                )]
            )
            .is_ok()
        );
        assert!(covers(&owner, &[rule(json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"], "resourceNames": ["x"]}))]).is_ok());
        assert!(covers(&owner, &[rule(json!({"verbs": ["get"], "apiGroups": ["apps"], "resources": ["deployments/scale"]}))]).is_ok());
        assert!(
            covers(
                &owner,
                &[rule(
                    json!({"verbs": ["get"], "nonResourceURLs": ["/apis/apps"]})
                )]
            )
            .is_ok()
        );
        // A wildcard is covered only by a wildcard.
        let missing = covers(
            &owner,
            &[rule(
                json!({"verbs": ["get", "create"], "apiGroups": [""], "resources": ["*"]}),
            )],
        )
        .unwrap_err();
        assert_eq!(missing.len(), 1);
        assert_eq!(
            missing[0].compact_string(),
            r#"{APIGroups:[""], Resources:["*"], Verbs:["get" "create"]}"#
        );
        // Named owner rules do not cover unnamed requests.
        let named = vec![rule(
            json!({"verbs": ["get"], "apiGroups": [""], "resources": ["secrets"], "resourceNames": ["a"]}),
        )];
        assert!(
            covers(
                &named,
                &[rule(
                    json!({"verbs": ["get"], "apiGroups": [""], "resources": ["secrets"]})
                )]
            )
            .is_err()
        );
    }

    #[test]
    fn label_selectors() {
        let labels = json!({"rbac.authorization.k8s.io/aggregate-to-view": "true", "tier": "x"});
        let labels = labels.as_object().unwrap();
        assert!(selector_matches(
            &json!({"matchLabels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}}),
            labels
        ));
        assert!(!selector_matches(
            &json!({"matchLabels": {"rbac.authorization.k8s.io/aggregate-to-edit": "true"}}),
            labels
        ));
        assert!(selector_matches(
            &json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["x", "y"]}]}),
            labels
        ));
        assert!(!selector_matches(
            &json!({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}),
            labels
        ));
    }
}
